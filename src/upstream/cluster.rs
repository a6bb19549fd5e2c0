//! A live cluster: its hosts, the load-balancing schedule over the hosts that may take
//! traffic, and its Envoy-named stats. Immutable once built; health changes publish a
//! new cluster (later issues), so a request reads one consistent view.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;

use crate::config::cluster::{Assignment, ClusterSpec, Discovery, LbKind, UpstreamProtocol};
use crate::stats::{Counter, Gauge, Histogram, HistogramUnit, Store};

use super::host::Host;
use super::lb::{Candidate, HostSelector};

static NEXT_CLUSTER_ID: AtomicU64 = AtomicU64::new(1);

/// Counters for `upstream_rq_<code>` of one cluster, made on the first response so that
/// idle clusters cost nothing.
struct CodeCounters {
    by_code: Box<[OnceLock<Counter>]>,
}

/// The Envoy-named stats of a cluster (`cluster.<name>.*`).
pub struct ClusterStats {
    prefix: String,
    store: Store,
    pub upstream_cx_total: Counter,
    pub upstream_cx_active: Gauge,
    pub upstream_cx_http1_total: Counter,
    pub upstream_cx_http2_total: Counter,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_connect_timeout: Counter,
    pub upstream_cx_destroy: Counter,
    pub upstream_cx_none_healthy: Counter,
    pub upstream_rq_total: Counter,
    pub upstream_rq_active: Gauge,
    pub upstream_rq_completed: Counter,
    pub upstream_rq_timeout: Counter,
    pub upstream_rq_pending_total: Counter,
    pub upstream_rq_pending_active: Gauge,
    pub upstream_rq_time: Histogram,
    pub upstream_rq_class: [Counter; 5],
    pub lb_healthy_panic: Counter,
    pub membership_total: Gauge,
    pub membership_healthy: Gauge,
    pub membership_degraded: Gauge,
    pub membership_excluded: Gauge,
    pub membership_change: Counter,
    pub max_host_weight: Gauge,
    pub update_attempt: Counter,
    pub update_success: Counter,
    pub update_rejected: Counter,
    pub update_empty: Counter,
    codes: OnceLock<CodeCounters>,
}

impl ClusterStats {
    fn new(store: &Store, name: &str) -> ClusterStats {
        let prefix = format!("cluster.{name}.");
        let c = |s: &str| store.counter(&format!("{prefix}{s}"));
        let g = |s: &str| store.gauge(&format!("{prefix}{s}"));
        ClusterStats {
            upstream_cx_total: c("upstream_cx_total"),
            upstream_cx_active: g("upstream_cx_active"),
            upstream_cx_http1_total: c("upstream_cx_http1_total"),
            upstream_cx_http2_total: c("upstream_cx_http2_total"),
            upstream_cx_connect_fail: c("upstream_cx_connect_fail"),
            upstream_cx_connect_timeout: c("upstream_cx_connect_timeout"),
            upstream_cx_destroy: c("upstream_cx_destroy"),
            upstream_cx_none_healthy: c("upstream_cx_none_healthy"),
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_active: g("upstream_rq_active"),
            upstream_rq_completed: c("upstream_rq_completed"),
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_rq_pending_total: c("upstream_rq_pending_total"),
            upstream_rq_pending_active: g("upstream_rq_pending_active"),
            upstream_rq_time: store.histogram(&format!("{prefix}upstream_rq_time"), HistogramUnit::Milliseconds),
            upstream_rq_class: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| c(&format!("upstream_rq_{class}"))),
            lb_healthy_panic: c("lb_healthy_panic"),
            membership_total: g("membership_total"),
            membership_healthy: g("membership_healthy"),
            membership_degraded: g("membership_degraded"),
            membership_excluded: g("membership_excluded"),
            membership_change: c("membership_change"),
            max_host_weight: g("max_host_weight"),
            update_attempt: c("update_attempt"),
            update_success: c("update_success"),
            update_rejected: c("update_rejected"),
            update_empty: c("update_empty"),
            codes: OnceLock::new(),
            store: store.clone(),
            prefix,
        }
    }

    /// Counts a response by class and exact code (`upstream_rq_2xx`, `upstream_rq_200`).
    pub fn record_response(&self, status: u16) {
        if !(100..600).contains(&status) {
            return;
        }
        self.upstream_rq_class[usize::from(status / 100 - 1)].inc();
        let codes = self.codes.get_or_init(|| CodeCounters { by_code: (100..600).map(|_| OnceLock::new()).collect() });
        codes.by_code[usize::from(status - 100)]
            .get_or_init(|| self.store.counter(&format!("{}upstream_rq_{status}", self.prefix)))
            .inc();
    }
}

/// A live cluster.
pub struct Cluster {
    /// Unique per built cluster: workers key their pools and cursors by it.
    pub id: u64,
    pub name: String,
    pub connect_timeout: Duration,
    pub protocol: UpstreamProtocol,
    pub idle_timeout: Option<Duration>,
    pub discovery: Discovery,
    lb: LbKind,
    pub hosts: Vec<Arc<Host>>,
    /// Picks over `hosts` across priorities (healthy ones, or all of a level in panic).
    selector: HostSelector,
    overprovisioning_factor: u32,
    pub stats: ClusterStats,
    /// The cluster's config as given, for `/config_dump`.
    pub proto: ClusterProto,
    /// Whether the cluster came from `static_resources` (false: added via API).
    pub added_via_api: bool,
}

impl Cluster {
    /// Builds a cluster from its spec and host list (the spec's own, or an EDS
    /// assignment's), registering its stats in `store`. Hosts that `previous` already had
    /// are kept (same `Host`, so their pools and counters carry over).
    pub fn new(
        spec: ClusterSpec,
        assignment: &Assignment,
        previous: Option<&Cluster>,
        store: &Store,
        added_via_api: bool,
    ) -> Cluster {
        let hosts: Vec<Arc<Host>> = assignment
            .hosts
            .iter()
            .map(|h| match previous.and_then(|p| p.hosts.iter().find(|old| old.is_same_endpoint(h))) {
                Some(old) => {
                    old.set_eds_health(h.health_status);
                    old.clone()
                }
                None => Arc::new(Host::new(h)),
            })
            .collect();
        // Envoy names a cluster's stats by `alt_stat_name` when it is set.
        let stat_name = if spec.proto.alt_stat_name.is_empty() { &spec.name } else { &spec.proto.alt_stat_name };
        let stats = ClusterStats::new(store, stat_name);
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
        let selector = HostSelector::new(spec.lb, &candidates, assignment.overprovisioning_factor);
        stats.membership_total.set(hosts.len() as i64);
        stats.membership_healthy.set(hosts.iter().filter(|h| h.is_healthy()).count() as i64);
        stats.max_host_weight.set(hosts.iter().map(|h| i64::from(h.weight)).max().unwrap_or(0));
        Cluster {
            id: NEXT_CLUSTER_ID.fetch_add(1, Ordering::Relaxed),
            name: spec.name,
            connect_timeout: spec.connect_timeout,
            protocol: spec.protocol,
            idle_timeout: spec.idle_timeout,
            discovery: spec.discovery,
            lb: spec.lb,
            hosts,
            selector,
            overprovisioning_factor: assignment.overprovisioning_factor,
            stats,
            proto: spec.proto,
            added_via_api,
        }
    }

    /// The EDS service name, for an EDS cluster.
    pub fn eds_service_name(&self) -> Option<&str> {
        match &self.discovery {
            Discovery::Eds { service_name, .. } => Some(service_name),
            Discovery::Static => None,
        }
    }

    /// The spec this cluster was built from (without hosts), to rebuild it with new ones.
    pub fn spec(&self) -> ClusterSpec {
        ClusterSpec {
            name: self.name.clone(),
            discovery: self.discovery.clone(),
            connect_timeout: self.connect_timeout,
            lb: self.lb,
            protocol: self.protocol,
            idle_timeout: self.idle_timeout,
            assignment: Assignment { hosts: Vec::new(), overprovisioning_factor: self.overprovisioning_factor },
            proto: self.proto.clone(),
        }
    }

    /// Picks a host (an index into `hosts`) with the calling worker's cursor; `None`
    /// means no healthy upstream.
    pub fn pick(&self, cursor: &mut u64) -> Option<usize> {
        let (index, panic) = self.selector.pick(cursor)?;
        if panic {
            self.stats.lb_healthy_panic.inc();
        }
        Some(index as usize)
    }
}
