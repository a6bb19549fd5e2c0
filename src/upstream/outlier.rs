//! Outlier detection (a cluster's `outlier_detection`), as Envoy's works. Workers report
//! each attempt's result on its host's monitor, in atomics; a run of consecutive failures
//! sends the host to the upstream thread, which ejects it. Every `interval` that thread
//! returns the ejected hosts whose time is up and runs the success-rate and
//! failure-percentage detectors over the interval's counts. Both change hosts' health
//! flags under the cluster manager's lock, which then publishes a rebuilt cluster, so the
//! load balancer only ever reads a snapshot.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::host::{Host, health_flag};
use super::manager::ClusterManager;
use super::tasks::UpstreamTasks;
use crate::config::cluster::{IntervalDetector, OutlierSpec, Percent};
use crate::stats::{CounterCell, GaugeCell, Member, StatGroup, Store};

/// What an attempt showed of its host (Envoy's `Outlier::Result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// A connection took the request.
    Connected,
    /// The upstream answered with this status (for gRPC, the `grpc-status` of a
    /// trailers-only answer, as HTTP).
    Answered(u16),
    /// The connect failed, or the connection was reset before the response head.
    ConnectFailed,
    /// No response head before the timeout.
    TimedOut,
}

/// Why a host is ejected; the order is that of `OutlierStats`' per-kind counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    SuccessRate,
    SuccessRateLocalOrigin,
    FailurePercentage,
    FailurePercentageLocalOrigin,
}

impl Ejection {
    const ALL: [Ejection; 7] = [
        Ejection::Consecutive5xx,
        Ejection::ConsecutiveGatewayFailure,
        Ejection::ConsecutiveLocalOriginFailure,
        Ejection::SuccessRate,
        Ejection::SuccessRateLocalOrigin,
        Ejection::FailurePercentage,
        Ejection::FailurePercentageLocalOrigin,
    ];

    /// Envoy's stat name part (`ejections_detected_<name>`).
    fn stat_name(self) -> &'static str {
        match self {
            Ejection::Consecutive5xx => "consecutive_5xx",
            Ejection::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            Ejection::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
            Ejection::SuccessRate => "success_rate",
            Ejection::SuccessRateLocalOrigin => "local_origin_success_rate",
            Ejection::FailurePercentage => "failure_percentage",
            Ejection::FailurePercentageLocalOrigin => "local_origin_failure_percentage",
        }
    }

    /// How often a detected outlier of this kind is ejected.
    fn enforcing(self, spec: &OutlierSpec) -> Percent {
        match self {
            Ejection::Consecutive5xx => spec.consecutive_5xx.enforcing,
            Ejection::ConsecutiveGatewayFailure => spec.consecutive_gateway_failure.enforcing,
            Ejection::ConsecutiveLocalOriginFailure => spec.consecutive_local_origin_failure.enforcing,
            Ejection::SuccessRate => spec.success_rate.enforcing,
            Ejection::SuccessRateLocalOrigin => spec.success_rate.enforcing_local_origin,
            Ejection::FailurePercentage => spec.failure_percentage.enforcing,
            Ejection::FailurePercentageLocalOrigin => spec.failure_percentage.enforcing_local_origin,
        }
    }
}

/// The two kinds of results a host's success rate is kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The upstream's answers (all results, without `split_external_local_origin_errors`).
    External = 0,
    /// Connects, resets and timeouts, with `split_external_local_origin_errors`.
    Local = 1,
}

/// Requests and successes in one interval.
#[derive(Debug, Default)]
struct Bucket {
    success: AtomicU64,
    total: AtomicU64,
}

/// One host's outlier state. The counters are written by every worker; the rest only by
/// the upstream thread (and read by the admin).
#[derive(Debug, Default)]
pub struct HostMonitor {
    consecutive_5xx: AtomicU32,
    consecutive_gateway_failure: AtomicU32,
    consecutive_local_origin_failure: AtomicU32,
    /// By origin, two buckets each: workers count in `current`, the interval reads the other.
    buckets: [[Bucket; 2]; 2],
    current: AtomicUsize,
    /// Times ejected: a worker drops the connections it pooled to the host before an
    /// ejection, as Envoy drains them.
    ejections: AtomicU32,
    ejection: Mutex<EjectionState>,
}

#[derive(Debug, Default)]
struct EjectionState {
    /// Envoy's ejection-time backoff: an ejection lasts this many base ejection times; up
    /// by one at each ejection, down by one each interval the host stays in.
    backoff: u32,
    ejected_at: Option<Instant>,
    returned_at: Option<Instant>,
    jitter: Duration,
    /// The last interval's success rate by origin, for `/clusters`.
    success_rate: [Option<f64>; 2],
}

impl HostMonitor {
    fn state(&self) -> std::sync::MutexGuard<'_, EjectionState> {
        self.ejection.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Times the host was ejected.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// The last interval's success rate (percent) of one origin, when it had the volume.
    pub fn success_rate(&self, origin: Origin) -> Option<f64> {
        self.state().success_rate[origin as usize]
    }

    fn count(&self, origin: Origin, success: bool) {
        let bucket = &self.buckets[origin as usize][self.current.load(Ordering::Relaxed)];
        bucket.total.fetch_add(1, Ordering::Relaxed);
        if success {
            bucket.success.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn consecutive(&self, kind: Ejection) -> &AtomicU32 {
        match kind {
            Ejection::ConsecutiveGatewayFailure => &self.consecutive_gateway_failure,
            Ejection::ConsecutiveLocalOriginFailure => &self.consecutive_local_origin_failure,
            _ => &self.consecutive_5xx,
        }
    }

    /// Starts a new interval's counts; returns the finished interval's (successes, total)
    /// by origin.
    fn next_interval(&self) -> [(u64, u64); 2] {
        let finished = self.current.load(Ordering::Relaxed);
        for origin in &self.buckets {
            origin[1 - finished].success.store(0, Ordering::Relaxed);
            origin[1 - finished].total.store(0, Ordering::Relaxed);
        }
        self.current.store(1 - finished, Ordering::Relaxed);
        self.buckets.each_ref().map(|origin| {
            (origin[finished].success.load(Ordering::Relaxed), origin[finished].total.load(Ordering::Relaxed))
        })
    }

    /// Forgets everything: the host starts afresh under a new detector.
    fn reset(&self) {
        for kind in
            [Ejection::Consecutive5xx, Ejection::ConsecutiveGatewayFailure, Ejection::ConsecutiveLocalOriginFailure]
        {
            self.consecutive(kind).store(0, Ordering::Relaxed);
        }
        *self.state() = EjectionState::default();
    }
}

/// `cluster.<name>.outlier_detection.*`, Envoy's names.
pub struct OutlierStats {
    detected: [CounterCell; 7],
    enforced: [CounterCell; 7],
    ejections_enforced_total: CounterCell,
    ejections_overflow: CounterCell,
    /// Deprecated in Envoy, still counted: consecutive-5xx detections, success-rate
    /// detections, and ejections of either kind within the limit.
    ejections_consecutive_5xx: CounterCell,
    ejections_success_rate: CounterCell,
    ejections_total: CounterCell,
    /// Always 0: legate refuses `detect_degraded_hosts`.
    ejections_detected_degradation: CounterCell,
    pub ejections_active: GaugeCell,
}

impl OutlierStats {
    fn new() -> OutlierStats {
        OutlierStats {
            detected: Default::default(),
            enforced: Default::default(),
            ejections_enforced_total: CounterCell::default(),
            ejections_overflow: CounterCell::default(),
            ejections_consecutive_5xx: CounterCell::default(),
            ejections_success_rate: CounterCell::default(),
            ejections_total: CounterCell::default(),
            ejections_detected_degradation: CounterCell::default(),
            ejections_active: GaugeCell::default(),
        }
    }
}

impl StatGroup for OutlierStats {
    fn members(&self, visit: &mut dyn FnMut(&str, Member<'_>)) {
        let mut name = String::new();
        for (kind, (detected, enforced)) in Ejection::ALL.iter().zip(self.detected.iter().zip(&self.enforced)) {
            for (verb, counter) in [("detected", detected), ("enforced", enforced)] {
                name.clear();
                let _ = write!(name, "ejections_{verb}_{}", kind.stat_name());
                visit(&name, Member::Counter(counter));
            }
        }
        visit("ejections_enforced_total", Member::Counter(&self.ejections_enforced_total));
        visit("ejections_overflow", Member::Counter(&self.ejections_overflow));
        visit("ejections_consecutive_5xx", Member::Counter(&self.ejections_consecutive_5xx));
        visit("ejections_success_rate", Member::Counter(&self.ejections_success_rate));
        visit("ejections_total", Member::Counter(&self.ejections_total));
        visit("ejections_detected_degradation", Member::Counter(&self.ejections_detected_degradation));
        visit("ejections_active", Member::Gauge(&self.ejections_active));
    }
}

/// A cluster's outlier detector: shared by the versions of the cluster that EDS, DNS and
/// health changes rebuild; a CDS change makes a new one, as Envoy's new cluster has.
pub struct Detector {
    pub spec: Arc<OutlierSpec>,
    /// The cluster it belongs to, to find it in the manager's state.
    pub cluster: String,
    pub stats: Arc<OutlierStats>,
    tasks: UpstreamTasks,
    /// The last interval's success-rate mean and ejection threshold by origin, for
    /// `/clusters`; none when too few hosts had the volume.
    success_rates: Mutex<[Option<(f64, f64)>; 2]>,
}

impl Detector {
    /// A detector for `cluster`, whose stats go under `stat_name`; its interval starts on
    /// the upstream thread.
    pub fn start(
        spec: Arc<OutlierSpec>,
        cluster: &str,
        stat_name: &str,
        store: &Store,
        tasks: &UpstreamTasks,
    ) -> Arc<Detector> {
        let stats = store.group(&format!("cluster.{stat_name}.outlier_detection."), OutlierStats::new);
        let detector = Arc::new(Detector {
            spec,
            cluster: cluster.to_owned(),
            stats,
            tasks: tasks.clone(),
            success_rates: Mutex::new([None; 2]),
        });
        tasks.outlier_interval(&detector);
        detector
    }

    /// The last interval's success-rate (mean, ejection threshold) of one origin.
    pub fn success_rate(&self, origin: Origin) -> Option<(f64, f64)> {
        self.success_rates.lock().unwrap_or_else(PoisonError::into_inner)[origin as usize]
    }

    /// Records what an attempt showed of `host` (Envoy's `putResult`): without
    /// `split_external_local_origin_errors` a failed connect counts as a 503 and a timeout
    /// as a 504; with it, both count apart, as local-origin failures.
    pub fn observe(self: &Arc<Self>, host: &Arc<Host>, observed: Observed) {
        let monitor = host.outlier();
        if self.spec.split_local_origin {
            match observed {
                Observed::Connected => {
                    monitor.count(Origin::Local, true);
                    monitor.consecutive_local_origin_failure.store(0, Ordering::Relaxed);
                }
                Observed::ConnectFailed | Observed::TimedOut => {
                    monitor.count(Origin::Local, false);
                    self.count_consecutive(host, monitor, Ejection::ConsecutiveLocalOriginFailure);
                }
                Observed::Answered(status) => self.answered(host, monitor, status),
            }
        } else {
            match observed {
                Observed::Connected => {}
                // As Envoy maps them when local-origin results are not counted apart.
                Observed::ConnectFailed => self.answered(host, monitor, 503),
                Observed::TimedOut => self.answered(host, monitor, 504),
                Observed::Answered(status) => self.answered(host, monitor, status),
            }
        }
    }

    /// Envoy's `putHttpResponseCode`: a 5xx counts towards consecutive 5xx, a 502–504 also
    /// towards consecutive gateway failures; anything else resets both.
    fn answered(self: &Arc<Self>, host: &Arc<Host>, monitor: &HostMonitor, status: u16) {
        let failed = (500..600).contains(&status);
        monitor.count(Origin::External, !failed);
        if !failed {
            monitor.consecutive_5xx.store(0, Ordering::Relaxed);
            monitor.consecutive_gateway_failure.store(0, Ordering::Relaxed);
            return;
        }
        if (502..=504).contains(&status) {
            self.count_consecutive(host, monitor, Ejection::ConsecutiveGatewayFailure);
        } else {
            monitor.consecutive_gateway_failure.store(0, Ordering::Relaxed);
        }
        self.count_consecutive(host, monitor, Ejection::Consecutive5xx);
    }

    /// Counts one more failure in a row; the one that reaches the threshold (exactly, as in
    /// Envoy, so 0 never does) is reported to the upstream thread.
    fn count_consecutive(self: &Arc<Self>, host: &Arc<Host>, monitor: &HostMonitor, kind: Ejection) {
        let threshold = match kind {
            Ejection::ConsecutiveGatewayFailure => self.spec.consecutive_gateway_failure.threshold,
            Ejection::ConsecutiveLocalOriginFailure => self.spec.consecutive_local_origin_failure.threshold,
            _ => self.spec.consecutive_5xx.threshold,
        };
        if monitor.consecutive(kind).fetch_add(1, Ordering::Relaxed) + 1 == threshold {
            self.tasks.outlier_consecutive(self, host, kind);
        }
    }
}

/// Runs `detector`'s interval on the upstream thread until its cluster no longer has it.
/// As Envoy's timer, each wait starts when the last run ended, so a late run is not made
/// up for with a short interval.
pub async fn run_interval(manager: Weak<ClusterManager>, detector: Arc<Detector>) {
    loop {
        tokio::time::sleep(detector.spec.interval).await;
        let Some(manager) = manager.upgrade() else { return };
        if !manager.outlier_interval(&detector) {
            return;
        }
    }
}

/// A new detector's start: the hosts a cluster keeps from a version with another
/// detector (or none) lose that one's ejections and counts.
pub fn forget(hosts: &[Arc<Host>]) {
    for host in hosts {
        if let Some(monitor) = host.outlier_if_any() {
            monitor.reset();
        }
        host.set_flag(health_flag::FAILED_OUTLIER_CHECK, false);
    }
}

/// Acts on a reported run of consecutive failures at `host` of a cluster with these
/// `hosts`; true when it ejected the host.
pub fn on_consecutive(
    detector: &Detector,
    hosts: &[Arc<Host>],
    host: &Arc<Host>,
    kind: Ejection,
    now: Instant,
) -> bool {
    // The host may have left the cluster, or been ejected, since the report was sent.
    if !hosts.iter().any(|h| Arc::ptr_eq(h, host)) || is_ejected(host) {
        return false;
    }
    detector.stats.detected[kind as usize].inc();
    let ejected = eject(detector, hosts, host, kind, now);
    if kind == Ejection::Consecutive5xx {
        detector.stats.ejections_consecutive_5xx.inc();
    }
    // So that the next run is counted from here, whether or not the host went.
    host.outlier().consecutive(kind).store(0, Ordering::Relaxed);
    ejected
}

/// One interval of a cluster with these `hosts`: returns the ejected hosts whose time is up,
/// runs the success-rate and failure-percentage detectors, and lowers the backoff of hosts
/// that stayed in. True when a host's health changed.
pub fn on_interval(detector: &Detector, hosts: &[Arc<Host>], now: Instant) -> bool {
    let spec = &detector.spec;
    let mut changed = false;
    let mut finished = Vec::with_capacity(hosts.len());
    for host in hosts {
        let monitor = host.outlier();
        if is_ejected(host) {
            let state = monitor.state();
            let ejected_for = state.ejected_at.map_or(Duration::MAX, |at| now - at);
            let ejection = (spec.base_ejection_time * state.backoff).min(spec.max_ejection_time) + state.jitter;
            if ejection <= ejected_for {
                drop(state);
                uneject(host, now);
                changed = true;
            }
        }
        finished.push(monitor.next_interval());
        monitor.state().success_rate = [None; 2];
    }
    for origin in [Origin::External, Origin::Local] {
        let counts: Vec<(u64, u64)> = finished.iter().map(|by_origin| by_origin[origin as usize]).collect();
        changed |= rate_ejections(detector, hosts, &counts, origin, now);
    }
    for host in hosts.iter().filter(|h| !is_ejected(h)) {
        let mut state = host.outlier().state();
        if state.returned_at.is_some_and(|at| now - at >= spec.interval) {
            state.backoff = state.backoff.saturating_sub(1);
        }
    }
    changed
}

/// Returns an ejected host, its runs of consecutive failures counted afresh.
pub fn uneject(host: &Host, now: Instant) {
    let monitor = host.outlier();
    monitor.state().returned_at = Some(now);
    for kind in [Ejection::Consecutive5xx, Ejection::ConsecutiveGatewayFailure, Ejection::ConsecutiveLocalOriginFailure]
    {
        monitor.consecutive(kind).store(0, Ordering::Relaxed);
    }
    host.set_flag(health_flag::FAILED_OUTLIER_CHECK, false);
}

/// The success-rate and failure-percentage detectors over one origin's finished interval
/// (`counts`: successes and total by host). True when a host was ejected.
fn rate_ejections(
    detector: &Detector,
    hosts: &[Arc<Host>],
    counts: &[(u64, u64)],
    origin: Origin,
    now: Instant,
) -> bool {
    let (rate, percentage) = (&detector.spec.success_rate, &detector.spec.failure_percentage);
    let mut success_rates = detector.success_rates.lock().unwrap_or_else(PoisonError::into_inner);
    success_rates[origin as usize] = None;
    let enough = |d: &IntervalDetector, n: usize| n > 0 && n >= d.minimum_hosts as usize;
    if hosts.len() < rate.minimum_hosts as usize && hosts.len() < percentage.minimum_hosts as usize {
        return false;
    }
    let mut rated = Vec::new();
    let mut failing = Vec::new();
    for (host, &(success, total)) in hosts.iter().zip(counts) {
        if is_ejected(host) || total == 0 {
            continue;
        }
        let success_rate = success as f64 * 100.0 / total as f64;
        if total >= u64::from(rate.request_volume.min(percentage.request_volume)) {
            host.outlier().state().success_rate[origin as usize] = Some(success_rate);
        }
        if total >= u64::from(rate.request_volume) {
            rated.push((host, success_rate));
        }
        if total >= u64::from(percentage.request_volume) {
            failing.push((host, success_rate));
        }
    }
    let mut changed = false;
    if enough(rate, rated.len()) {
        let mean = rated.iter().map(|(_, r)| r).sum::<f64>() / rated.len() as f64;
        let variance = rated.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / rated.len() as f64;
        let threshold = mean - rate.factor * variance.sqrt();
        success_rates[origin as usize] = Some((mean, threshold));
        let kind = if origin == Origin::External { Ejection::SuccessRate } else { Ejection::SuccessRateLocalOrigin };
        for (host, _) in rated.iter().filter(|(_, r)| *r < threshold) {
            detector.stats.ejections_success_rate.inc();
            detector.stats.detected[kind as usize].inc();
            changed |= eject(detector, hosts, host, kind, now);
        }
    }
    if enough(percentage, failing.len()) {
        let kind = if origin == Origin::External {
            Ejection::FailurePercentage
        } else {
            Ejection::FailurePercentageLocalOrigin
        };
        // A host the success-rate detector just ejected is not ejected twice.
        for (host, _) in failing.iter().filter(|(h, r)| 100.0 - r >= percentage.factor && !is_ejected(h)) {
            detector.stats.detected[kind as usize].inc();
            changed |= eject(detector, hosts, host, kind, now);
        }
    }
    changed
}

/// Envoy's `ejectHost`: ejects `host` unless that would take the cluster past
/// `max_ejection_percent` (counted over all its hosts), and then only as often as the
/// kind's `enforcing_*` says. True when it did.
fn eject(detector: &Detector, hosts: &[Arc<Host>], host: &Host, kind: Ejection, now: Instant) -> bool {
    let spec = &detector.spec;
    let stats = &detector.stats;
    let active = hosts.iter().filter(|h| is_ejected(h)).count();
    let percent_after = 100.0 * (active + 1) as f64 / hosts.len() as f64;
    let within =
        percent_after <= f64::from(spec.max_ejection_percent.get()) || (spec.always_eject_one_host && active == 0);
    if !within {
        stats.ejections_overflow.inc();
        return false;
    }
    if matches!(kind, Ejection::Consecutive5xx | Ejection::SuccessRate) {
        stats.ejections_total.inc();
    }
    if !kind.enforcing(spec).roll() {
        return false;
    }
    stats.ejections_enforced_total.inc();
    stats.enforced[kind as usize].inc();
    host.set_flag(health_flag::FAILED_OUTLIER_CHECK, true);
    let monitor = host.outlier();
    monitor.ejections.fetch_add(1, Ordering::Relaxed);
    let mut state = monitor.state();
    state.ejected_at = Some(now);
    // Hosts ejected together come back apart, so that they do not all reconnect at once.
    let jitter_ms = spec.max_ejection_jitter.as_millis() as u64;
    state.jitter = Duration::from_millis(fastrand::u64(0..=jitter_ms));
    if spec.base_ejection_time * state.backoff < spec.max_ejection_time + spec.base_ejection_time {
        state.backoff += 1;
    }
    tracing::debug!(cluster = detector.cluster, host = %host.address, ?kind, "outlier detection ejected a host");
    true
}

fn is_ejected(host: &Host) -> bool {
    host.health_flags() & health_flag::FAILED_OUTLIER_CHECK != 0
}

#[cfg(test)]
mod tests;
