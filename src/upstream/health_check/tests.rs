use super::*;
use crate::config::cluster::{HostLocality, HostSpec, TcpProbe};
use envoy_types::pb::envoy::config::core::v3::HealthStatus;

fn spec(unhealthy_threshold: u32, healthy_threshold: u32) -> HealthCheckSpec {
    let second = Duration::from_secs(1);
    HealthCheckSpec {
        timeout: second,
        interval: Duration::from_secs(10),
        initial_jitter: Duration::ZERO,
        interval_jitter: Duration::ZERO,
        interval_jitter_percent: 0,
        unhealthy_threshold,
        healthy_threshold,
        reuse_connection: true,
        no_traffic_interval: Duration::from_secs(60),
        no_traffic_healthy_interval: Duration::from_secs(70),
        unhealthy_interval: Duration::from_secs(20),
        unhealthy_edge_interval: Duration::from_secs(2),
        healthy_edge_interval: Duration::from_secs(3),
        probe: Probe::Tcp(TcpProbe { send: None, receive: Vec::new() }),
    }
}

fn failed_host() -> Host {
    let host = Host::new(&HostSpec {
        address: "127.0.0.1:1".parse().unwrap(),
        weight: 1,
        priority: 0,
        locality: Arc::new(HostLocality::default()),
        health_status: HealthStatus::Healthy,
        hostname: String::new(),
    });
    host.set_flag(health_flag::FAILED_ACTIVE_HC, true);
    host
}

const PASS: Outcome = Outcome::Passed { degraded: false };

#[test]
fn a_first_pass_is_enough_then_the_thresholds_count() {
    let spec = spec(3, 2);
    let host = failed_host();
    let mut streak = Streak::default();
    assert_eq!(streak.record(&spec, &host, PASS), Transition::Changed);
    assert!(host.is_healthy());
    // Network failures and timeouts need three in a row; a pass in between starts again.
    assert_eq!(streak.record(&spec, &host, Outcome::Network), Transition::Pending);
    assert_eq!(streak.record(&spec, &host, Outcome::TimedOut), Transition::Pending);
    assert_eq!(streak.record(&spec, &host, PASS), Transition::Unchanged);
    assert_eq!(streak.record(&spec, &host, Outcome::Network), Transition::Pending);
    assert_eq!(streak.record(&spec, &host, Outcome::Network), Transition::Pending);
    assert_eq!(streak.record(&spec, &host, Outcome::TimedOut), Transition::Changed);
    assert_eq!(host.health_flags_text(), "/failed_active_hc/active_hc_timeout");
    // Back after two passes in a row, not one.
    assert_eq!(streak.record(&spec, &host, PASS), Transition::Pending);
    assert!(!host.is_healthy());
    assert_eq!(streak.record(&spec, &host, PASS), Transition::Changed);
    assert_eq!(host.health_flags_text(), "healthy");
}

#[test]
fn a_wrong_answer_fails_at_once_a_retriable_one_counts() {
    let spec = spec(2, 1);
    let host = failed_host();
    let mut streak = Streak::default();
    streak.record(&spec, &host, PASS);
    assert_eq!(streak.record(&spec, &host, Outcome::Failed { retriable: true }), Transition::Pending);
    assert!(host.is_healthy());
    assert_eq!(streak.record(&spec, &host, PASS), Transition::Unchanged);
    assert_eq!(streak.record(&spec, &host, Outcome::Failed { retriable: false }), Transition::Changed);
    assert_eq!(host.health_flags_text(), "/failed_active_hc");
}

#[test]
fn a_first_failure_leaves_a_new_host_failed() {
    let spec = spec(1, 1);
    let host = failed_host();
    let mut streak = Streak::default();
    assert_eq!(streak.record(&spec, &host, Outcome::Network), Transition::Unchanged);
    assert_eq!(host.health_flags_text(), "/failed_active_hc");
}

#[test]
fn degraded_answers_flag_the_host_and_keep_it_in() {
    let spec = spec(1, 1);
    let host = failed_host();
    let mut streak = Streak::default();
    assert_eq!(streak.record(&spec, &host, Outcome::Passed { degraded: true }), Transition::Changed);
    assert_eq!(host.health_flags_text(), "/degraded_active_hc");
    assert!(host.is_healthy());
    assert_eq!(streak.record(&spec, &host, Outcome::Passed { degraded: true }), Transition::Unchanged);
    assert_eq!(streak.record(&spec, &host, PASS), Transition::Changed);
    assert_eq!(host.health_flags_text(), "healthy");
}

#[test]
fn waits_follow_envoys_intervals() {
    let spec = spec(2, 2);
    let secs = |s: u64| Duration::from_secs(s);
    // No upstream connection yet: the no-traffic intervals.
    assert_eq!(next_wait(&spec, false, true, Transition::Unchanged), secs(70));
    assert_eq!(next_wait(&spec, false, true, Transition::Pending), secs(60));
    assert_eq!(next_wait(&spec, false, false, Transition::Changed), secs(60));
    assert_eq!(next_wait(&spec, true, true, Transition::Unchanged), secs(10));
    assert_eq!(next_wait(&spec, true, true, Transition::Pending), secs(3));
    assert_eq!(next_wait(&spec, true, false, Transition::Unchanged), secs(20));
    assert_eq!(next_wait(&spec, true, false, Transition::Pending), secs(2));
}

#[test]
fn jitter_stays_below_its_bounds() {
    let mut spec = spec(1, 1);
    spec.interval_jitter = Duration::from_millis(500);
    spec.interval_jitter_percent = 10;
    for _ in 0..200 {
        let wait = next_wait(&spec, true, true, Transition::Unchanged);
        assert!(wait >= Duration::from_secs(10) && wait < Duration::from_millis(11_500), "{wait:?}");
    }
}

#[test]
fn payloads_match_in_order() {
    let segments = [Bytes::from_static(b"HTTP/1.1"), Bytes::from_static(b"200")];
    assert!(contains_in_order(b"HTTP/1.1 200 OK", &segments));
    assert!(!contains_in_order(b"200 HTTP/1.1", &segments));
    assert!(!contains_in_order(b"HTTP/1.1", &segments));
}

/// A static cluster of two hosts with a TCP check, and the rebuild after discovery dropped
/// the second host.
fn cluster_after_removal(ignore_health_on_host_removal: bool, second_failed: bool) -> crate::upstream::Cluster {
    use crate::config::cluster::ClusterSpec;
    use crate::upstream::cluster::{Cluster, ClusterContext};
    let json = serde_json::json!({
        "name": "c",
        "ignore_health_on_host_removal": ignore_health_on_host_removal,
        "load_assignment": { "cluster_name": "c", "endpoints": [{ "lb_endpoints": [
            { "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 1 } } } },
            { "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 2 } } } }
        ] }] },
        "health_checks": [{ "timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
                            "tcp_health_check": {} }]
    });
    let proto = crate::config::schema::parse(&json.to_string(), crate::config::schema::Format::Json).unwrap();
    let spec = ClusterSpec::from_proto(&proto, "", &Default::default()).unwrap();
    let (tasks, _work) = UpstreamTasks::new();
    let context = ClusterContext { store: Store::new(), tasks };
    let assignment = spec.assignment.clone();
    let first = Cluster::new(spec, &assignment, None, &context, false);
    for (i, host) in first.hosts.iter().enumerate() {
        host.set_flag(health_flag::FAILED_ACTIVE_HC, i == 1 && second_failed);
    }
    let mut fewer = assignment.clone();
    fewer.hosts.truncate(1);
    Cluster::new(first.spec(), &fewer, Some(&first), &context, false)
}

#[test]
fn a_removed_host_stays_while_it_passes_its_checks() {
    let rebuilt = cluster_after_removal(false, false);
    let flags: Vec<String> = rebuilt.hosts.iter().map(|h| h.health_flags_text()).collect();
    assert_eq!(flags, ["healthy", "/pending_dynamic_removal"]);
    assert!(rebuilt.hosts[1].is_healthy(), "a host pending removal still serves");
    // Once it fails a check, the next rebuild drops it.
    rebuilt.hosts[1].set_flag(health_flag::FAILED_ACTIVE_HC, true);
    let (tasks, _work) = UpstreamTasks::new();
    let context = crate::upstream::cluster::ClusterContext { store: Store::new(), tasks };
    assert_eq!(rebuilt.reassessed(&context).hosts.len(), 1);
}

#[test]
fn a_removed_host_goes_at_once_when_failed_or_told_to() {
    assert_eq!(cluster_after_removal(false, true).hosts.len(), 1);
    assert_eq!(cluster_after_removal(true, false).hosts.len(), 1);
}
