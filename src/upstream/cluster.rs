//! A live cluster: its hosts, the load-balancing schedule over the hosts that may take
//! traffic, its outlier detector, its health checker and its Envoy-named stats. Immutable
//! once built; health changes publish a new cluster, so a request reads one consistent view.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;

use crate::config::cluster::{Assignment, CircuitBreakers, ClusterSpec, Discovery, LbKind, UpstreamProtocol};
use crate::config::proto::Encoded;
use crate::config::tls::ClientTls;
use crate::stats::{CounterCell, GaugeCell, HistogramCell, HistogramUnit, Member, StatGroup, Store};
use crate::transport::TlsStats;

use super::health_check::HealthChecker;
use super::host::{Host, health_flag};
use super::lb::{Candidate, HostSelector, WorkerLb};
use super::outlier::{self, Detector};
use super::tasks::UpstreamTasks;

static NEXT_CLUSTER_ID: AtomicU64 = AtomicU64::new(1);

/// Declares `ClusterStats` from the lists of its counters, gauges and histograms (with their
/// units), so each stat's name and its field are written once.
macro_rules! cluster_stats {
    (
        counters: [$($counter:ident),* $(,)?],
        gauges: [$($gauge:ident),* $(,)?],
        histograms: [$($histogram:ident: $unit:ident),* $(,)?] $(,)?
    ) => {
        /// The Envoy-named stats of a cluster (`cluster.<stat name>.*`), registered as one
        /// stat group: a rebuilt cluster (EDS update, CDS change) keeps them, so an update
        /// touches no stat registry.
        pub struct ClusterStats {
            $(pub $counter: CounterCell,)*
            $(pub $gauge: GaugeCell,)*
            $(pub $histogram: HistogramCell,)*
            /// `upstream_rq_<class>xx` and `upstream_rq_<code>` of the responses sent on.
            codes: ResponseCodes,
            /// `retry.upstream_rq_*`: the responses a retry replaced.
            retried_codes: ResponseCodes,
            /// `retry.upstream_rq_completed`.
            retried_completed: CounterCell,
            /// Connections open or connecting, counted against `max_connections`
            /// (`upstream_cx_active` counts them once connected).
            pub connections: AtomicU64,
            /// Retries scheduled and not yet decided, counted against `max_retries`.
            pub retries: AtomicU64,
            /// The circuit breakers of the cluster's latest build, for the
            /// `circuit_breakers.*` gauges, worked out when the stats are read rather than
            /// kept up to date on every request.
            breakers: Mutex<CircuitBreakers>,
        }

        impl ClusterStats {
            fn new() -> ClusterStats {
                ClusterStats {
                    $($counter: CounterCell::default(),)*
                    $($gauge: GaugeCell::default(),)*
                    $($histogram: HistogramCell::new(HistogramUnit::$unit),)*
                    codes: ResponseCodes::default(),
                    retried_codes: ResponseCodes::default(),
                    retried_completed: CounterCell::default(),
                    connections: AtomicU64::new(0),
                    retries: AtomicU64::new(0),
                    breakers: Mutex::default(),
                }
            }
        }

        impl StatGroup for ClusterStats {
            fn members(&self, visit: &mut dyn FnMut(&str, Member<'_>)) {
                $(visit(stringify!($counter), Member::Counter(&self.$counter));)*
                $(visit(stringify!($gauge), Member::Gauge(&self.$gauge));)*
                $(visit(stringify!($histogram), Member::Histogram(&self.$histogram));)*
                let mut name = String::new();
                self.codes.visit("", &mut name, visit);
                // Made on first use in Envoy: shown once a retry replaced a response.
                if self.retried_completed.value() > 0 {
                    self.retried_codes.visit("retry.", &mut name, visit);
                    visit("retry.upstream_rq_completed", Member::Counter(&self.retried_completed));
                }
                self.visit_circuit_breakers(&mut name, visit);
            }
        }
    };
}

cluster_stats! {
    counters: [
        upstream_cx_total,
        upstream_cx_http1_total,
        upstream_cx_http2_total,
        upstream_cx_connect_fail,
        upstream_cx_connect_timeout,
        // A TCP proxy's connection that used up its `max_connect_attempts`.
        upstream_cx_connect_attempts_exceeded,
        upstream_cx_destroy,
        upstream_cx_destroy_local,
        upstream_cx_destroy_remote,
        upstream_cx_destroy_with_active_rq,
        upstream_cx_destroy_local_with_active_rq,
        upstream_cx_destroy_remote_with_active_rq,
        upstream_cx_none_healthy,
        upstream_cx_overflow,
        upstream_cx_max_requests,
        upstream_cx_idle_timeout,
        upstream_cx_protocol_error,
        upstream_rq_total,
        upstream_rq_completed,
        upstream_rq_timeout,
        upstream_rq_pending_total,
        upstream_rq_pending_failure_eject,
        upstream_rq_pending_overflow,
        upstream_rq_active_overflow,
        upstream_rq_cancelled,
        upstream_rq_tx_reset,
        upstream_rq_rx_reset,
        upstream_rq_retry,
        upstream_rq_retry_success,
        upstream_rq_retry_overflow,
        upstream_rq_retry_limit_exceeded,
        upstream_rq_retry_backoff_exponential,
        // Always 0, as in Envoy for every config legate takes: it refuses
        // `rate_limited_retry_back_off` and `per_try_idle_timeout`.
        upstream_rq_retry_backoff_ratelimited,
        upstream_rq_per_try_idle_timeout,
        upstream_rq_per_try_timeout,
        retry_or_shadow_abandoned,
        lb_healthy_panic,
        membership_change,
        update_attempt,
        update_success,
        update_failure,
        update_rejected,
        update_empty,
    ],
    gauges: [
        upstream_cx_active,
        upstream_rq_active,
        upstream_rq_pending_active,
        membership_total,
        membership_healthy,
        membership_degraded,
        membership_excluded,
        max_host_weight,
    ],
    // Recorded when a response ends (`upstream_rq_time`), when a connect succeeds
    // (`upstream_cx_connect_ms`), and when a connection closes (the other two).
    histograms: [
        upstream_rq_time: Milliseconds,
        upstream_cx_connect_ms: Milliseconds,
        upstream_cx_length_ms: Milliseconds,
        upstream_rq_per_cx: Unspecified,
    ],
}

impl ClusterStats {
    /// Envoy's `circuit_breakers.<priority>.*` gauges: whether each limit is reached
    /// (`*_open`) and, with `track_remaining`, what is left of it (`remaining_*`). Only the
    /// default priority has traffic in legate; legate keeps no limit on connection pools.
    fn visit_circuit_breakers(&self, name: &mut String, visit: &mut dyn FnMut(&str, Member<'_>)) {
        let breakers = *self.breakers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let in_use = [
            self.connections.load(Ordering::Relaxed),
            self.upstream_rq_pending_active.value().max(0) as u64,
            self.upstream_rq_active.value().max(0) as u64,
            self.retries.load(Ordering::Relaxed),
        ];
        for (priority, limits, [connections, pending, requests, retries]) in
            [("default", breakers.default, in_use), ("high", breakers.high, [0; 4])]
        {
            let retry_limit = limits.retry_limit(pending + requests);
            let limited = [
                ("cx", connections, u64::from(limits.max_connections)),
                ("cx_pool", 0, u64::from(u32::MAX)),
                ("rq_pending", pending, u64::from(limits.max_pending_requests)),
                ("rq", requests, u64::from(limits.max_requests)),
                ("rq_retry", retries, retry_limit),
            ];
            for (resource, used, max) in limited {
                let gauge = GaugeCell::default();
                // A limit of 0 shows as open only while something is counted against it
                // (Envoy's gauge, set at each count change, stays open once anything was).
                let mut open = used > 0 && used >= max;
                if resource == "rq_retry" && priority == "default" && limits.retry_budget.is_some() {
                    // Under a budget Envoy's gauge still follows `max_retries`, at each retry's
                    // start and end: open once a retry was counted, if that limit is reached.
                    open = (used > 0 || self.upstream_rq_retry.value() > 0) && used >= u64::from(limits.max_retries);
                }
                gauge.set(i64::from(open));
                name.clear();
                let _ = write!(name, "circuit_breakers.{priority}.{resource}_open");
                visit(name, Member::Gauge(&gauge));
            }
            if limits.track_remaining {
                // Envoy keeps `remaining_retries` at 0 under a retry budget, which moves with
                // the requests in flight.
                let retries_left = if limits.retry_budget.is_some() { 0 } else { retry_limit };
                let remaining = [
                    ("cx", connections, u64::from(limits.max_connections)),
                    ("cx_pools", 0, u64::from(u32::MAX)),
                    ("pending", pending, u64::from(limits.max_pending_requests)),
                    ("retries", retries.min(retries_left), retries_left),
                    ("rq", requests, u64::from(limits.max_requests)),
                ];
                for (resource, used, max) in remaining {
                    let gauge = GaugeCell::default();
                    gauge.set(max.saturating_sub(used) as i64);
                    name.clear();
                    let _ = write!(name, "circuit_breakers.{priority}.remaining_{resource}");
                    visit(name, Member::Gauge(&gauge));
                }
            }
        }
    }

    /// Requests active or waiting for a connection, which a retry budget is a share of.
    pub fn in_flight(&self) -> u64 {
        (self.upstream_rq_active.value().max(0) + self.upstream_rq_pending_active.value().max(0)) as u64
    }

    /// Counts a response by class and exact code (`upstream_rq_2xx`, `upstream_rq_200`).
    pub fn record_response(&self, status: u16) {
        self.codes.record(status);
    }

    /// Counts a response a retry replaced, under `retry.` (`retry.upstream_rq_503`), with
    /// its `retry.upstream_rq_completed`.
    pub fn record_retried_response(&self, status: u16) {
        self.retried_codes.record(status);
        self.retried_completed.inc();
    }
}

/// Response counters by class and exact code.
#[derive(Default)]
struct ResponseCodes {
    /// `upstream_rq_1xx` … `upstream_rq_5xx`.
    class: [CounterCell; 5],
    /// `upstream_rq_<code>` by class, made on the class's first response (as Envoy makes
    /// these counters on first use) so that idle clusters cost nothing.
    codes: [OnceLock<Box<[CounterCell; 100]>>; 5],
}

impl ResponseCodes {
    fn record(&self, status: u16) {
        if !(100..600).contains(&status) {
            return;
        }
        let class = usize::from(status / 100 - 1);
        self.class[class].inc();
        let codes = self.codes[class].get_or_init(|| Box::new(std::array::from_fn(|_| CounterCell::default())));
        codes[usize::from(status % 100)].inc();
    }

    /// Visits the class counters, and the code counters that counted something.
    fn visit(&self, prefix: &str, name: &mut String, visit: &mut dyn FnMut(&str, Member<'_>)) {
        for (class, counter) in self.class.iter().enumerate() {
            name.clear();
            let _ = write!(name, "{prefix}upstream_rq_{}xx", class + 1);
            visit(name, Member::Counter(counter));
        }
        for (class, codes) in self.codes.iter().enumerate() {
            for (code, counter) in codes.get().into_iter().flat_map(|c| c.iter().enumerate()) {
                if counter.value() > 0 {
                    name.clear();
                    let _ = write!(name, "{prefix}upstream_rq_{}", (class + 1) * 100 + code);
                    visit(name, Member::Counter(counter));
                }
            }
        }
    }
}

/// What building a cluster needs beyond its spec: where its stats register, and the
/// upstream thread its outlier detector reports to.
#[derive(Clone)]
pub struct ClusterContext {
    pub store: Store,
    pub tasks: UpstreamTasks,
}

/// A live cluster.
pub struct Cluster {
    /// Unique per built cluster: workers key their pools and balancing state by it.
    pub id: u64,
    pub name: String,
    pub connect_timeout: Duration,
    pub protocol: UpstreamProtocol,
    pub idle_timeout: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
    pub circuit_breakers: CircuitBreakers,
    pub discovery: Discovery,
    /// Its outlier detector, with `outlier_detection`.
    pub outlier: Option<Arc<Detector>>,
    /// Its health checker, with `health_checks`.
    pub health: Option<Arc<HealthChecker>>,
    ignore_health_on_host_removal: bool,
    lb: LbKind,
    healthy_panic_threshold: u32,
    pub hosts: Vec<Arc<Host>>,
    /// Picks over `hosts` across priorities (healthy ones, or all of a level in panic).
    selector: HostSelector,
    overprovisioning_factor: u32,
    pub stats: Arc<ClusterStats>,
    /// The name its stats go under: `alt_stat_name`, or the name.
    pub stat_name: String,
    /// Its TLS, with the `cluster.<name>.ssl.*` stats its handshakes count in.
    pub tls: Option<(Arc<ClientTls>, Arc<TlsStats>)>,
    /// The cluster's config as given, for `/config_dump` and change detection.
    pub proto: Encoded<ClusterProto>,
    /// Whether the cluster came from `static_resources` (false: added via API).
    pub added_via_api: bool,
}

impl Cluster {
    /// Builds a cluster from its spec and host list (the spec's own, or an EDS
    /// assignment's). Hosts that `previous` already had are kept (same `Host`, so their
    /// pools and counters carry over), and so are its stats; a new cluster registers its
    /// stats in the context's store. A new health checker gets new hosts, failed until
    /// checked, as Envoy's new cluster has: the previous version's checker keeps setting
    /// the health of its own until that version is gone.
    pub fn new(
        spec: ClusterSpec,
        assignment: &Assignment,
        previous: Option<&Cluster>,
        context: &ClusterContext,
        added_via_api: bool,
    ) -> Cluster {
        let same_checks = match (previous.and_then(|p| p.health.as_ref()), &spec.health_check) {
            (Some(checker), Some(spec)) => Arc::ptr_eq(&checker.spec, spec),
            (None, None) => true,
            _ => false,
        };
        let kept = previous.filter(|_| same_checks);
        let mut hosts: Vec<Arc<Host>> = assignment
            .hosts
            .iter()
            .map(|h| match kept.and_then(|p| p.hosts.iter().find(|old| old.is_same_endpoint(h))) {
                Some(old) => {
                    old.set_eds_health(h.health_status);
                    old.set_flag(health_flag::PENDING_DYNAMIC_REMOVAL, false);
                    old.clone()
                }
                None => {
                    let host = Host::new(h);
                    host.set_flag(health_flag::FAILED_ACTIVE_HC, spec.health_check.is_some());
                    Arc::new(host)
                }
            })
            .collect();
        // As Envoy does, a host discovery removed stays while it passes its health checks,
        // until it fails one (`reassessed` drops it then).
        if let Some(previous) = kept.filter(|p| p.health.is_some() && !spec.ignore_health_on_host_removal) {
            let failed = health_flag::FAILED_ACTIVE_HC | health_flag::FAILED_EDS_HEALTH;
            for old in &previous.hosts {
                if old.health_flags() & failed == 0 && !hosts.iter().any(|h| Arc::ptr_eq(h, old)) {
                    old.set_flag(health_flag::PENDING_DYNAMIC_REMOVAL, true);
                    hosts.push(old.clone());
                }
            }
        }
        Cluster::assemble(spec, hosts, assignment.overprovisioning_factor, previous, context, added_via_api)
    }

    /// This cluster again with the same hosts, after their health changed; a host kept
    /// for its passing health checks after discovery removed it goes once it fails one.
    pub fn reassessed(&self, context: &ClusterContext) -> Cluster {
        let removed = health_flag::PENDING_DYNAMIC_REMOVAL | health_flag::FAILED_ACTIVE_HC;
        let hosts = self.hosts.iter().filter(|h| h.health_flags() & removed != removed).cloned().collect();
        Cluster::assemble(self.spec(), hosts, self.overprovisioning_factor, Some(self), context, self.added_via_api)
    }

    fn assemble(
        spec: ClusterSpec,
        hosts: Vec<Arc<Host>>,
        overprovisioning_factor: u32,
        previous: Option<&Cluster>,
        context: &ClusterContext,
        added_via_api: bool,
    ) -> Cluster {
        let stats = match previous {
            Some(previous) if previous.stat_name == spec.stat_name => previous.stats.clone(),
            _ => context.store.group(&format!("cluster.{}.", spec.stat_name), ClusterStats::new),
        };
        // A rebuild keeps the detector of the spec it was made with; a changed spec (or a
        // new cluster) starts afresh, as Envoy's new cluster object does.
        let kept = previous
            .and_then(|p| p.outlier.as_ref())
            .filter(|detector| spec.outlier.as_ref().is_some_and(|outlier| Arc::ptr_eq(&detector.spec, outlier)));
        let detector = match (kept, &spec.outlier) {
            (Some(kept), _) => Some(kept.clone()),
            (None, outlier) => {
                if previous.is_some_and(|p| p.outlier.is_some()) {
                    outlier::forget(&hosts);
                }
                outlier.as_ref().map(|outlier| {
                    Detector::start(outlier.clone(), &spec.name, &spec.stat_name, &context.store, &context.tasks)
                })
            }
        };
        let tls = spec.tls.map(|tls| {
            let kept = previous.filter(|p| p.stat_name == spec.stat_name).and_then(|p| p.tls.as_ref());
            let stats = match kept {
                Some((_, stats)) => stats.clone(),
                None => {
                    Arc::new(TlsStats::new(&context.store, &format!("cluster.{}.", spec.stat_name), &tls.certificates))
                }
            };
            (tls, stats)
        });
        let kept_checker = previous
            .and_then(|p| p.health.as_ref())
            .filter(|checker| spec.health_check.as_ref().is_some_and(|spec| Arc::ptr_eq(&checker.spec, spec)));
        let health = match (kept_checker, &spec.health_check) {
            (Some(kept), _) => {
                kept.track(&hosts);
                Some(kept.clone())
            }
            (None, Some(checks)) => Some(HealthChecker::start(
                checks.clone(),
                &spec.name,
                &spec.stat_name,
                (&context.store, &context.tasks),
                &stats,
                tls.as_ref(),
                &hosts,
            )),
            (None, None) => None,
        };
        if let Some(checker) = &health {
            checker.count(&hosts);
        }
        let candidates: Vec<Candidate> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| Candidate {
                index: i as u32,
                priority: h.priority,
                weight: h.weight,
                healthy: h.is_healthy(),
            })
            .collect();
        let by_hostname = spec.lb.hashes_by_hostname();
        let key = |index: u32| {
            let host = &hosts[index as usize];
            if by_hostname { host.hostname.clone() } else { host.address.to_string() }
        };
        let selector =
            HostSelector::new(spec.lb, &candidates, overprovisioning_factor, spec.healthy_panic_threshold, &key);
        stats.membership_total.set(hosts.len() as i64);
        stats.membership_healthy.set(candidates.iter().filter(|c| c.healthy).count() as i64);
        stats.max_host_weight.set(hosts.iter().map(|h| i64::from(h.weight)).max().unwrap_or(0));
        if let Some(detector) = &detector {
            let ejected = hosts.iter().filter(|h| h.health_flags() & health_flag::FAILED_OUTLIER_CHECK != 0).count();
            detector.stats.ejections_active.set(ejected as i64);
        }
        *stats.breakers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = spec.circuit_breakers;
        Cluster {
            id: NEXT_CLUSTER_ID.fetch_add(1, Ordering::Relaxed),
            name: spec.name,
            connect_timeout: spec.connect_timeout,
            protocol: spec.protocol,
            idle_timeout: spec.idle_timeout,
            max_requests_per_connection: spec.max_requests_per_connection,
            circuit_breakers: spec.circuit_breakers,
            discovery: spec.discovery,
            outlier: detector,
            health,
            ignore_health_on_host_removal: spec.ignore_health_on_host_removal,
            lb: spec.lb,
            healthy_panic_threshold: spec.healthy_panic_threshold,
            hosts,
            selector,
            overprovisioning_factor,
            stats,
            stat_name: spec.stat_name,
            tls,
            proto: spec.proto,
            added_via_api,
        }
    }

    /// `policy.overprovisioning_factor` of its assignment, in percent.
    pub fn overprovisioning_factor(&self) -> u32 {
        self.overprovisioning_factor
    }

    /// The loads by priority with the `excluded` priorities taking none (see
    /// `HostSelector::loads_without`).
    pub fn loads_without(&self, excluded: u64) -> Option<Box<[u32]>> {
        self.selector.loads_without(excluded)
    }

    /// The EDS service name, for an EDS cluster.
    pub fn eds_service_name(&self) -> Option<&str> {
        match &self.discovery {
            Discovery::Eds { service_name, .. } => Some(service_name),
            Discovery::Static | Discovery::Dns(_) => None,
        }
    }

    /// The spec this cluster was built from (without hosts), to rebuild it with new ones.
    pub fn spec(&self) -> ClusterSpec {
        ClusterSpec {
            name: self.name.clone(),
            discovery: self.discovery.clone(),
            connect_timeout: self.connect_timeout,
            lb: self.lb,
            healthy_panic_threshold: self.healthy_panic_threshold,
            protocol: self.protocol,
            idle_timeout: self.idle_timeout,
            max_requests_per_connection: self.max_requests_per_connection,
            circuit_breakers: self.circuit_breakers,
            outlier: self.outlier.as_ref().map(|detector| detector.spec.clone()),
            health_check: self.health.as_ref().map(|checker| checker.spec.clone()),
            ignore_health_on_host_removal: self.ignore_health_on_host_removal,
            assignment: Assignment { hosts: Vec::new(), overprovisioning_factor: self.overprovisioning_factor },
            stat_name: self.stat_name.clone(),
            tls: self.tls.as_ref().map(|(tls, _)| tls.clone()),
            proto: self.proto.clone(),
        }
    }

    /// Picks a host (an index into `hosts`) with the calling worker's state and the
    /// request's hash (ring hash, Maglev), `attempt` the picks of that hash before; `None`
    /// means no healthy upstream.
    pub fn pick(&self, state: &mut WorkerLb, hash: Option<u64>, attempt: u32) -> Option<usize> {
        self.pick_with_loads(state, hash, attempt, None)
    }

    /// `pick` with the loads by priority a retry worked out (`previous_priorities`).
    pub fn pick_with_loads(
        &self,
        state: &mut WorkerLb,
        hash: Option<u64>,
        attempt: u32,
        loads: Option<&[u32]>,
    ) -> Option<usize> {
        let active = |index: u32| self.hosts[index as usize].stats.rq_active.load(Ordering::Relaxed);
        let (index, panic) = self.selector.pick(state, &active, (hash, attempt), loads);
        if panic {
            self.stats.lb_healthy_panic.inc();
        }
        index.map(|index| index as usize)
    }
}
