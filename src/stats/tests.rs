use std::thread;

use regex::Regex;
use serde_json::json;

use super::*;

#[test]
fn same_name_gives_same_counter() {
    let store = Store::new();
    store.counter("cluster.foo.upstream_rq_total").inc();
    store.clone().counter("cluster.foo.upstream_rq_total").add(2);
    let handle = store.counter("cluster.foo.upstream_rq_total");
    assert_eq!(handle.value(), 3);
    assert_eq!(store.counter_value("cluster.foo.upstream_rq_total"), Some(3));
    assert_eq!(store.counter_value("cluster.bar.upstream_rq_total"), None);
    // Counters and gauges are separate namespaces.
    assert_eq!(store.gauge_value("cluster.foo.upstream_rq_total"), None);
}

#[test]
fn gauge_operations() {
    let store = Store::new();
    let g = store.gauge("server.live");
    g.set(10);
    g.inc();
    g.dec();
    g.dec();
    g.add(5);
    g.sub(20);
    assert_eq!(g.value(), -6);
    assert_eq!(store.gauge_value("server.live"), Some(-6));
}

#[test]
fn histogram_keeps_first_unit() {
    let store = Store::new();
    let h = store.histogram("cluster.foo.upstream_rq_time", HistogramUnit::Milliseconds);
    let again = store.histogram("cluster.foo.upstream_rq_time", HistogramUnit::Bytes);
    assert_eq!(again.unit(), HistogramUnit::Milliseconds);
    h.record(1);
    assert_ne!(store.text(None, true), "");
}

#[test]
fn used_only_shows_written_stats() {
    let store = Store::new();
    store.counter("c.unused");
    store.counter("c.zero").add(0);
    store.gauge("g.unused");
    store.gauge("g.zero").set(0);
    store.histogram("h.unused", HistogramUnit::Unspecified);
    store.histogram("h.used", HistogramUnit::Unspecified).record(1);

    assert_eq!(
        store.text(None, true),
        "c.zero: 0\ng.zero: 0\n\
         h.used: P0(1,1) P25(1,1) P50(1,1) P75(1,1) P90(1,1) P95(1,1) P99(1,1) P99.5(1,1) P99.9(1,1) P100(1,1)\n"
    );
    let all = store.text(None, false);
    for name in ["c.unused: 0", "g.unused: 0", "h.unused: No recorded values"] {
        assert!(all.contains(name), "{name} missing from\n{all}");
    }
    assert!(!store.prometheus(None, true).contains("unused"));
}

#[test]
fn filter_searches_anywhere_in_the_name() {
    let store = Store::new();
    store.counter("cluster.foo.upstream_rq_total").inc();
    store.counter("cluster.bar.upstream_rq_total").inc();
    store.gauge("cluster.foo.membership_total").set(1);
    store.counter("http.ingress_http.downstream_rq_total").inc();

    let foo = Regex::new(r"foo\.").unwrap();
    assert_eq!(store.text(Some(&foo), false), "cluster.foo.membership_total: 1\ncluster.foo.upstream_rq_total: 1\n");
    let rq = Regex::new("rq_total$").unwrap();
    let json = store.json(Some(&rq), false);
    let names: Vec<_> = json["stats"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["cluster.bar.upstream_rq_total", "cluster.foo.upstream_rq_total", "http.ingress_http.downstream_rq_total"]
    );
    let prom = store.prometheus(Some(&Regex::new("^http").unwrap()), false);
    assert_eq!(
        prom,
        "# TYPE envoy_http_downstream_rq_total counter\n\
         envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"ingress_http\"} 1\n"
    );
}

#[test]
fn text_sorts_counters_and_gauges_together_then_histograms() {
    let store = Store::new();
    store.histogram("a.first_histogram", HistogramUnit::Milliseconds);
    store.counter("server.watchdog_miss").add(2);
    store.gauge("server.live").set(1);
    store.counter("cluster.foo.upstream_rq_total").add(7);
    store.gauge("cluster.foo.membership_healthy").set(-3);
    let h = store.histogram("cluster.foo.upstream_rq_time", HistogramUnit::Milliseconds);
    h.record(0);
    h.record(10);

    assert_eq!(
        store.text(None, false),
        "cluster.foo.membership_healthy: -3\n\
         cluster.foo.upstream_rq_total: 7\n\
         server.live: 1\n\
         server.watchdog_miss: 2\n\
         a.first_histogram: No recorded values\n\
         cluster.foo.upstream_rq_time: P0(0,0) P25(0,0) P50(0,0) P75(8,8) P90(9.2,9.2) \
         P95(9.6,9.6) P99(9.92,9.92) P99.5(9.96,9.96) P99.9(9.992,9.992) P100(10,10)\n"
    );
}

#[test]
fn json_has_envoy_shape() {
    let store = Store::new();
    store.counter("b.counter").add(5);
    store.gauge("a.gauge").set(-1);
    store.histogram("h.unused", HistogramUnit::Unspecified);
    store.histogram("h.used", HistogramUnit::Unspecified).record(1);

    let nulls: Vec<_> = (0..10).map(|_| json!({"interval": null, "cumulative": null})).collect();
    let ones: Vec<_> = (0..10).map(|_| json!({"interval": 1, "cumulative": 1})).collect();
    assert_eq!(
        store.json(None, false),
        json!({"stats": [
            {"name": "a.gauge", "value": -1},
            {"name": "b.counter", "value": 5},
            {"histograms": {
                "supported_quantiles": [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100],
                "computed_quantiles": [
                    {"name": "h.unused", "values": nulls},
                    {"name": "h.used", "values": ones},
                ],
            }},
        ]})
    );
    // No histograms object when no histogram is shown.
    assert_eq!(
        store.json(Some(&Regex::new("counter").unwrap()), false),
        json!({"stats": [{"name": "b.counter", "value": 5}]})
    );
}

#[test]
fn prometheus_matches_envoy_output() {
    let store = Store::new();
    store.counter("cluster.foo.upstream_rq_total").add(3);
    store.counter("cluster.bar.upstream_rq_total").add(1);
    store.counter("cluster.foo.upstream_rq_2xx").add(2);
    store.counter("cluster.foo.upstream_rq_200").add(2);
    store.counter("http.ingress_http.downstream_rq_total").add(5);
    store.counter("http.ingress_http.downstream_rq_5xx").add(1);
    store.counter("http.admin.downstream_rq_total").add(4);
    store.counter("listener.admin.http.admin.downstream_rq_total").add(4);
    store.counter("listener.0.0.0.0_10000.downstream_cx_total").add(6);
    store.gauge("server.live").set(1);
    store.gauge("cluster_manager.active_clusters").set(2);
    let rq_time = store.histogram("cluster.foo.upstream_rq_time", HistogramUnit::Milliseconds);
    rq_time.record(1);
    rq_time.record(7);
    store.histogram("server.initialization_time_ms", HistogramUnit::Milliseconds).record(4_000_000);

    let want = r#"# TYPE envoy_cluster_upstream_rq counter
envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="foo"} 2
# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{envoy_cluster_name="bar"} 1
envoy_cluster_upstream_rq_total{envoy_cluster_name="foo"} 3
# TYPE envoy_cluster_upstream_rq_xx counter
envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="foo"} 2
# TYPE envoy_http_downstream_rq_total counter
envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="admin"} 4
envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress_http"} 5
# TYPE envoy_http_downstream_rq_xx counter
envoy_http_downstream_rq_xx{envoy_response_code_class="5",envoy_http_conn_manager_prefix="ingress_http"} 1
# TYPE envoy_listener_admin_http_downstream_rq_total counter
envoy_listener_admin_http_downstream_rq_total{envoy_http_conn_manager_prefix="admin"} 4
# TYPE envoy_listener_downstream_cx_total counter
envoy_listener_downstream_cx_total{envoy_listener_address="0.0.0.0_10000"} 6
# TYPE envoy_cluster_manager_active_clusters gauge
envoy_cluster_manager_active_clusters{} 2
# TYPE envoy_server_live gauge
envoy_server_live{} 1
# TYPE envoy_cluster_upstream_rq_time histogram
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="0.5"} 0
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="1"} 1
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="5"} 1
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="10"} 2
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="25"} 2
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="50"} 2
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="100"} 2
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="250"} 2
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="500"} 2
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="1000"} 2
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="2500"} 2
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="5000"} 2
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="10000"} 2
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="30000"} 2
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="60000"} 2
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="300000"} 2
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="600000"} 2
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="1800000"} 2
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="3600000"} 2
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="+Inf"} 2
envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="foo"} 8
envoy_cluster_upstream_rq_time_count{envoy_cluster_name="foo"} 2
# TYPE envoy_server_initialization_time_ms histogram
envoy_server_initialization_time_ms_bucket{le="0.5"} 0
envoy_server_initialization_time_ms_bucket{le="1"} 0
envoy_server_initialization_time_ms_bucket{le="5"} 0
envoy_server_initialization_time_ms_bucket{le="10"} 0
envoy_server_initialization_time_ms_bucket{le="25"} 0
envoy_server_initialization_time_ms_bucket{le="50"} 0
envoy_server_initialization_time_ms_bucket{le="100"} 0
envoy_server_initialization_time_ms_bucket{le="250"} 0
envoy_server_initialization_time_ms_bucket{le="500"} 0
envoy_server_initialization_time_ms_bucket{le="1000"} 0
envoy_server_initialization_time_ms_bucket{le="2500"} 0
envoy_server_initialization_time_ms_bucket{le="5000"} 0
envoy_server_initialization_time_ms_bucket{le="10000"} 0
envoy_server_initialization_time_ms_bucket{le="30000"} 0
envoy_server_initialization_time_ms_bucket{le="60000"} 0
envoy_server_initialization_time_ms_bucket{le="300000"} 0
envoy_server_initialization_time_ms_bucket{le="600000"} 0
envoy_server_initialization_time_ms_bucket{le="1800000"} 0
envoy_server_initialization_time_ms_bucket{le="3600000"} 0
envoy_server_initialization_time_ms_bucket{le="+Inf"} 1
envoy_server_initialization_time_ms_sum{} 4000000
envoy_server_initialization_time_ms_count{} 1
"#;
    assert_eq!(store.prometheus(None, false), want);
}

#[test]
fn remove_prefix_drops_only_matching_stats() {
    let store = Store::new();
    let removed = store.counter("cluster.foo.upstream_rq_total");
    store.gauge("cluster.foo.membership_total").set(1);
    store.histogram("cluster.foo.upstream_rq_time", HistogramUnit::Milliseconds);
    store.counter("cluster.foobar.upstream_rq_total").inc();

    store.remove_prefix("cluster.foo.");
    assert_eq!(store.counter_value("cluster.foo.upstream_rq_total"), None);
    assert_eq!(store.gauge_value("cluster.foo.membership_total"), None);
    assert_eq!(store.text(None, false), "cluster.foobar.upstream_rq_total: 1\n");
    // A held handle keeps working; re-registering starts a fresh stat.
    removed.inc();
    assert_eq!(store.counter("cluster.foo.upstream_rq_total").value(), 0);
}

#[test]
fn concurrent_increments_are_exact() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 25_000;
    let store = Store::new();
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let store = store.clone();
            thread::spawn(move || {
                let counter = store.counter("server.requests");
                let gauge = store.gauge("server.active");
                let histogram = store.histogram("server.latency", HistogramUnit::Milliseconds);
                for i in 0..PER_THREAD {
                    counter.inc();
                    gauge.inc();
                    gauge.dec();
                    histogram.record(i % 100);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(store.counter_value("server.requests"), Some(THREADS * PER_THREAD));
    assert_eq!(store.gauge_value("server.active"), Some(0));
    let prom = store.prometheus(None, false);
    let count_line = format!("envoy_server_latency_count{{}} {}\n", THREADS * PER_THREAD);
    assert!(prom.contains(&count_line), "{prom}");
}

/// A group like a cluster's: two counters and a histogram under one prefix.
struct Pair {
    sent: CounterCell,
    open: GaugeCell,
    time: HistogramCell,
}

impl StatGroup for Pair {
    fn members(&self, visit: &mut dyn FnMut(&str, Member<'_>)) {
        visit("sent", Member::Counter(&self.sent));
        visit("open", Member::Gauge(&self.open));
        visit("time", Member::Histogram(&self.time));
    }
}

fn pair() -> Pair {
    Pair {
        sent: CounterCell::default(),
        open: GaugeCell::default(),
        time: HistogramCell::new(HistogramUnit::Milliseconds),
    }
}

#[test]
fn group_members_render_and_read_like_single_stats() {
    let store = Store::new();
    let group = store.group("cluster.a.", pair);
    group.sent.add(3);
    group.open.set(2);
    group.time.record(7);
    store.counter("cluster.a.single").inc();
    // The same prefix and type gives the same group.
    assert!(Arc::ptr_eq(&group, &store.group("cluster.a.", pair)));

    assert_eq!(store.counter_value("cluster.a.sent"), Some(3));
    assert_eq!(store.gauge_value("cluster.a.open"), Some(2));
    assert_eq!(store.counter_value("cluster.a.open"), None);
    assert_eq!(store.counter_value("cluster.b.sent"), None);

    let text = store.text(None, false);
    assert!(text.contains("cluster.a.open: 2\ncluster.a.sent: 3\ncluster.a.single: 1\n"), "{text}");
    assert!(text.contains("cluster.a.time: P0(7,7)"), "{text}");
    let filtered = store.text(Some(&Regex::new("sent").unwrap()), false);
    assert_eq!(filtered, "cluster.a.sent: 3\n");
    let prometheus = store.prometheus(None, false);
    assert!(prometheus.contains("envoy_cluster_sent{envoy_cluster_name=\"a\"} 3\n"), "{prometheus}");
    assert!(prometheus.contains("envoy_cluster_time_count{envoy_cluster_name=\"a\"} 1\n"), "{prometheus}");

    store.remove_prefix("cluster.a.");
    assert_eq!(store.counter_value("cluster.a.sent"), None);
    assert_eq!(store.text(None, false), "");
    // A handle kept after removal still counts, unseen.
    group.sent.inc();
    assert!(!Arc::ptr_eq(&group, &store.group("cluster.a.", pair)));
}

#[test]
fn unused_group_members_are_left_out_of_usedonly() {
    let store = Store::new();
    let group = store.group("cluster.a.", pair);
    group.sent.add(0);
    assert_eq!(store.text(None, true), "cluster.a.sent: 0\n");
}
