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
pub async fn run_interval(manager: Weak<ClusterManager>, detector: Arc<Detector>) {
    let mut next = Instant::now() + detector.spec.interval;
    loop {
        tokio::time::sleep_until(next).await;
        next += detector.spec.interval;
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
            let mut state = monitor.state();
            let ejected_for = state.ejected_at.map_or(Duration::MAX, |at| now - at);
            let ejection = (spec.base_ejection_time * state.backoff).min(spec.max_ejection_time) + state.jitter;
            if ejection <= ejected_for {
                state.returned_at = Some(now);
                drop(state);
                for kind in [
                    Ejection::Consecutive5xx,
                    Ejection::ConsecutiveGatewayFailure,
                    Ejection::ConsecutiveLocalOriginFailure,
                ] {
                    monitor.consecutive(kind).store(0, Ordering::Relaxed);
                }
                host.set_flag(health_flag::FAILED_OUTLIER_CHECK, false);
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

/// The HTTP status Envoy's outlier detection takes for a `grpc-status`
/// (`Grpc::Utility::grpcToHttpStatus`).
pub fn grpc_to_http(status: u32) -> u16 {
    match status {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// A figure as Envoy's admin writes it (`{:g}`: six significant digits, no trailing zeros).
pub fn format_g(value: f64) -> String {
    if value == value.trunc() && value.abs() < 1e15 {
        return format!("{value:.0}");
    }
    let magnitude = value.abs().log10().floor() as i32;
    let decimals = (5 - magnitude).max(0) as usize;
    let text = format!("{value:.decimals$}");
    let text = text.trim_end_matches('0');
    text.trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::HealthStatus;
    use tokio::sync::mpsc;

    use super::*;
    use crate::config::cluster::{Consecutive, HostSpec};
    use crate::upstream::tasks::Task;

    fn spec(edit: impl FnOnce(&mut OutlierSpec)) -> Arc<OutlierSpec> {
        let proto = crate::config::schema::parse("{}", crate::config::schema::Format::Json).unwrap();
        let mut spec = crate::config::cluster::outlier_detection(&proto, "outlier_detection").unwrap();
        edit(&mut spec);
        Arc::new(spec)
    }

    fn new_detector(spec: Arc<OutlierSpec>) -> (Arc<Detector>, mpsc::UnboundedReceiver<Task>) {
        let (tasks, mut rx) = UpstreamTasks::new();
        let detector = Detector::start(spec, "c", "c", &Store::new(), &tasks);
        assert!(matches!(rx.try_recv(), Ok(Task::OutlierInterval(_))), "a new detector starts its interval");
        (detector, rx)
    }

    fn hosts(n: u16) -> Vec<Arc<Host>> {
        (0..n)
            .map(|i| {
                Arc::new(Host::new(&HostSpec {
                    address: ([127, 0, 0, 1], 1000 + i).into(),
                    weight: 1,
                    priority: 0,
                    locality: Default::default(),
                    health_status: HealthStatus::Healthy,
                    hostname: String::new(),
                }))
            })
            .collect()
    }

    /// The kinds of consecutive-failure reports sent so far.
    fn reports(rx: &mut mpsc::UnboundedReceiver<Task>) -> Vec<Ejection> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|task| match task {
                Task::OutlierConsecutive(_, _, kind) => Some(kind),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_fifth_5xx_in_a_row_is_reported_once() {
        let (detector, mut rx) = new_detector(spec(|_| {}));
        let host = &hosts(1)[0];
        for _ in 0..4 {
            detector.observe(host, Observed::Answered(500));
        }
        detector.observe(host, Observed::Answered(200));
        for _ in 0..4 {
            detector.observe(host, Observed::Answered(500));
        }
        assert!(reports(&mut rx).is_empty(), "a success in between starts the run again");
        for _ in 0..3 {
            detector.observe(host, Observed::Answered(503));
        }
        // 5xx reached 5 at the first 503; the gateway run (503s only) reaches 5 later.
        assert_eq!(reports(&mut rx), [Ejection::Consecutive5xx]);
        detector.observe(host, Observed::Answered(502));
        detector.observe(host, Observed::Answered(504));
        assert_eq!(reports(&mut rx), [Ejection::ConsecutiveGatewayFailure]);
    }

    #[test]
    fn local_failures_count_as_5xx_unless_split() {
        let (detector, mut rx) = new_detector(spec(|s| s.consecutive_5xx.threshold = 2));
        let host = &hosts(1)[0];
        detector.observe(host, Observed::ConnectFailed);
        detector.observe(host, Observed::TimedOut);
        assert_eq!(reports(&mut rx), [Ejection::Consecutive5xx]);

        let (detector, mut rx) = detector_split();
        let host = &hosts(1)[0];
        detector.observe(host, Observed::ConnectFailed);
        detector.observe(host, Observed::TimedOut);
        assert_eq!(reports(&mut rx), [Ejection::ConsecutiveLocalOriginFailure]);
        // A connection taking a request ends the local run; an answer counts apart.
        detector.observe(host, Observed::ConnectFailed);
        detector.observe(host, Observed::Connected);
        detector.observe(host, Observed::ConnectFailed);
        detector.observe(host, Observed::Answered(500));
        detector.observe(host, Observed::Answered(500));
        assert_eq!(reports(&mut rx), [Ejection::Consecutive5xx]);
    }

    fn detector_split() -> (Arc<Detector>, mpsc::UnboundedReceiver<Task>) {
        new_detector(spec(|s| {
            s.split_local_origin = true;
            s.consecutive_5xx.threshold = 2;
            s.consecutive_local_origin_failure = Consecutive { threshold: 2, enforcing: s.consecutive_5xx.enforcing };
        }))
    }

    fn ejected(hosts: &[Arc<Host>]) -> Vec<bool> {
        hosts.iter().map(|h| is_ejected(h)).collect()
    }

    #[test]
    fn ejections_stop_at_max_ejection_percent() {
        let (detector, _rx) = new_detector(spec(|s| s.max_ejection_percent = percent(50)));
        let hosts = hosts(4);
        let now = Instant::now();
        assert!(on_consecutive(&detector, &hosts, &hosts[0], Ejection::Consecutive5xx, now));
        assert!(!on_consecutive(&detector, &hosts, &hosts[0], Ejection::Consecutive5xx, now), "already out");
        assert!(on_consecutive(&detector, &hosts, &hosts[1], Ejection::Consecutive5xx, now));
        assert!(!on_consecutive(&detector, &hosts, &hosts[2], Ejection::Consecutive5xx, now), "75 % > 50 %");
        assert_eq!(ejected(&hosts), [true, true, false, false]);
        let stats = &detector.stats;
        assert_eq!(stats.detected[Ejection::Consecutive5xx as usize].value(), 3);
        assert_eq!(stats.enforced[Ejection::Consecutive5xx as usize].value(), 2);
        assert_eq!(stats.ejections_overflow.value(), 1);
        assert_eq!(stats.ejections_enforced_total.value(), 2);
    }

    #[test]
    fn the_default_limit_ejects_nothing_from_a_small_cluster_unless_one_host_is_always_allowed() {
        let (detector, _rx) = new_detector(spec(|_| {}));
        let hosts = hosts(2);
        assert!(!on_consecutive(&detector, &hosts, &hosts[0], Ejection::Consecutive5xx, Instant::now()));
        assert_eq!(detector.stats.ejections_overflow.value(), 1);
        let (detector, _rx) = new_detector(spec(|s| s.always_eject_one_host = true));
        assert!(on_consecutive(&detector, &hosts, &hosts[0], Ejection::Consecutive5xx, Instant::now()));
        assert!(!on_consecutive(&detector, &hosts, &hosts[1], Ejection::Consecutive5xx, Instant::now()));
    }

    #[test]
    fn unenforced_detections_are_only_counted() {
        // consecutive_gateway_failure is enforced 0 % of the time by default.
        let (detector, _rx) = new_detector(spec(|s| s.max_ejection_percent = percent(100)));
        let hosts = hosts(1);
        assert!(!on_consecutive(&detector, &hosts, &hosts[0], Ejection::ConsecutiveGatewayFailure, Instant::now()));
        assert_eq!(detector.stats.detected[Ejection::ConsecutiveGatewayFailure as usize].value(), 1);
        assert_eq!(detector.stats.ejections_enforced_total.value(), 0);
    }

    fn percent(value: u32) -> Percent {
        let json = format!(r#"{{"max_ejection_percent": {value}}}"#);
        let proto = crate::config::schema::parse(&json, crate::config::schema::Format::Json).unwrap();
        crate::config::cluster::outlier_detection(&proto, "").unwrap().max_ejection_percent
    }

    #[test]
    fn an_ejection_lasts_the_base_time_times_the_backoff() {
        let base = Duration::from_secs(30);
        let interval = Duration::from_secs(10);
        let (detector, _rx) = new_detector(spec(|s| s.max_ejection_percent = percent(100)));
        let hosts = hosts(1);
        let start = Instant::now();
        assert!(on_consecutive(&detector, &hosts, &hosts[0], Ejection::Consecutive5xx, start));
        assert!(!on_interval(&detector, &hosts, start + base - interval));
        assert!(on_interval(&detector, &hosts, start + base), "back after one base ejection time");
        assert_eq!(ejected(&hosts), [false]);
        // Ejected again at once: the backoff is now 2.
        let again = start + base;
        assert!(on_consecutive(&detector, &hosts, &hosts[0], Ejection::Consecutive5xx, again));
        assert!(!on_interval(&detector, &hosts, again + base));
        assert!(on_interval(&detector, &hosts, again + 2 * base));
        // Each interval it stays in lowers the backoff by one: two intervals later, one
        // base ejection time again.
        let back = again + 2 * base;
        assert!(!on_interval(&detector, &hosts, back + interval));
        assert!(!on_interval(&detector, &hosts, back + 2 * interval));
        assert!(on_consecutive(&detector, &hosts, &hosts[0], Ejection::Consecutive5xx, back + 2 * interval));
        assert!(on_interval(&detector, &hosts, back + 2 * interval + base));
        assert_eq!(detector.stats.enforced[Ejection::Consecutive5xx as usize].value(), 3);
    }

    /// Counts `total` requests of which `success` succeeded at `host`.
    fn answers(detector: &Arc<Detector>, host: &Arc<Host>, success: u32, total: u32) {
        for i in 0..total {
            detector.observe(host, Observed::Answered(if i < success { 200 } else { 500 }));
        }
    }

    #[test]
    fn success_rate_ejects_below_the_mean_less_the_deviations() {
        // Envoy's example: rates {50, 100, 100, 100, 100} have mean 90 and deviation 20, so
        // with a factor of 1.9 the threshold is 52.
        let (detector, _rx) = new_detector(spec(|s| {
            s.max_ejection_percent = percent(100);
            s.consecutive_5xx.threshold = 0;
        }));
        let hosts = hosts(5);
        let now = Instant::now();
        answers(&detector, &hosts[0], 50, 100);
        for host in &hosts[1..] {
            answers(&detector, host, 100, 100);
        }
        assert!(on_interval(&detector, &hosts, now));
        assert_eq!(ejected(&hosts), [true, false, false, false, false]);
        let (mean, threshold) = detector.success_rate(Origin::External).unwrap();
        assert!((mean - 90.0).abs() < 1e-9 && (threshold - 52.0).abs() < 1e-9, "{mean} {threshold}");
        assert_eq!(hosts[0].outlier().success_rate(Origin::External), Some(50.0));
        assert_eq!(detector.stats.enforced[Ejection::SuccessRate as usize].value(), 1);
        assert_eq!(detector.stats.ejections_success_rate.value(), 1);
        // The next interval's counts are its own: too few hosts with the volume, so no
        // verdict and no figures.
        answers(&detector, &hosts[1], 99, 99);
        assert!(!on_interval(&detector, &hosts, now + Duration::from_secs(10)));
        assert_eq!(hosts[1].outlier().success_rate(Origin::External), Some(100.0), "99 ≥ the 50 of failure percentage");
        assert_eq!(detector.success_rate(Origin::External), None);
    }

    #[test]
    fn failure_percentage_ejects_at_the_threshold_when_enforced() {
        let (detector, _rx) = new_detector(spec(|s| {
            s.max_ejection_percent = percent(100);
            s.consecutive_5xx.threshold = 0;
            s.failure_percentage.minimum_hosts = 2;
            s.failure_percentage.enforcing = percent(100);
        }));
        let hosts = hosts(3);
        let now = Instant::now();
        answers(&detector, &hosts[0], 15, 100);
        answers(&detector, &hosts[1], 16, 100);
        answers(&detector, &hosts[2], 0, 49);
        assert!(on_interval(&detector, &hosts, now));
        assert_eq!(ejected(&hosts), [true, false, false], "85 % failed, 84 % failed, too few requests");
        assert_eq!(detector.stats.enforced[Ejection::FailurePercentage as usize].value(), 1);
    }

    #[test]
    fn a_new_detector_forgets_the_old_ones_ejections() {
        let (detector, _rx) = new_detector(spec(|s| s.max_ejection_percent = percent(100)));
        let hosts = hosts(2);
        assert!(on_consecutive(&detector, &hosts, &hosts[0], Ejection::Consecutive5xx, Instant::now()));
        assert_eq!(hosts[0].ejections(), 1);
        forget(&hosts);
        assert_eq!(ejected(&hosts), [false, false]);
    }

    #[test]
    fn figures_are_written_as_envoy_writes_them() {
        for (value, text) in [(-1.0, "-1"), (90.0, "90"), (52.0, "52"), (66.666_666, "66.6667"), (0.5, "0.5")] {
            assert_eq!(format_g(value), text);
        }
        assert_eq!(grpc_to_http(14), 503);
        assert_eq!(grpc_to_http(99), 500);
    }
}
