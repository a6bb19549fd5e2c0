//! The detector's decisions, with time given explicitly.

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
