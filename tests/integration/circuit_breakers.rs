//! Circuit breakers: a cluster's `max_connections`, `max_pending_requests` and
//! `max_requests`, what a refused request gets, and what `/stats` and `/clusters` say.

use http::Version;

use crate::support::{Answer, Legate, Upstream, bootstrap, get, route_all_to, send, static_cluster};

/// Legate (one worker) routing everything to cluster `svc` over one HTTP/1.1 upstream,
/// with these thresholds for the default priority.
async fn limited(thresholds: &str) -> (Legate, Upstream) {
    let upstream = Upstream::start("svc").await;
    let extra = format!("    circuit_breakers:\n      thresholds: [{{ {thresholds} }}]\n");
    let clusters = static_cluster("svc", &[(upstream.address, 1)], &extra);
    let legate = Legate::start_with(&bootstrap("", &route_all_to("svc"), &clusters), &["--concurrency", "1"]);
    (legate, upstream)
}

/// Starts a request for `path` on a connection of its own and returns its handle.
fn start(legate: &Legate, path: &str) -> tokio::task::JoinHandle<Answer> {
    let (address, request) = (legate.listener("main"), get(path));
    tokio::spawn(async move { send(address, Version::HTTP_11, request).await })
}

/// Envoy's reply to a request a circuit breaker refused.
fn assert_overflow_reply(answer: &Answer) {
    assert_eq!(answer.status, 503);
    assert_eq!(answer.text(), "upstream connect error or disconnect/reset before headers. reset reason: overflow");
    assert_eq!(answer.header("x-envoy-overloaded"), "true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_requests_wait_for_a_pooled_connection_instead_of_opening_more() {
    let (legate, upstream) = limited("max_connections: 1").await;
    let first = start(&legate, "/delay/1500");
    legate.wait_for_stat("cluster.svc.upstream_rq_active", 1).await;
    let waiting = [start(&legate, "/delay/10"), start(&legate, "/delay/10")];
    legate.wait_for_stat("cluster.svc.upstream_rq_pending_active", 2).await;
    assert_eq!(legate.stat("cluster.svc.circuit_breakers.default.cx_open").await, Some(1));
    assert_eq!(legate.stat("cluster.svc.circuit_breakers.default.rq_pending_open").await, Some(0));
    assert_eq!(first.await.unwrap().status, 200);
    for request in waiting {
        assert_eq!(request.await.unwrap().status, 200, "a waiting request is served once the connection is free");
    }
    assert_eq!(upstream.count(), 3);
    assert_eq!(legate.stat("cluster.svc.upstream_cx_total").await, Some(1), "one connection carried all three");
    assert!(legate.stat("cluster.svc.upstream_cx_overflow").await.unwrap() >= 2, "each waiting request overflowed");
    assert_eq!(legate.stat("cluster.svc.upstream_rq_pending_overflow").await, Some(0));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_pending_active").await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_beyond_max_pending_requests_gets_503_overflow_at_once() {
    let (legate, upstream) = limited("max_connections: 1, max_pending_requests: 1").await;
    let first = start(&legate, "/delay/2000");
    legate.wait_for_stat("cluster.svc.upstream_rq_active", 1).await;
    let second = start(&legate, "/delay/10");
    legate.wait_for_stat("cluster.svc.upstream_rq_pending_active", 1).await;
    assert_eq!(legate.stat("cluster.svc.circuit_breakers.default.rq_pending_open").await, Some(1));

    let refused = start(&legate, "/refused").await.unwrap();
    assert!(!first.is_finished(), "refused without waiting for the busy connection");
    assert_overflow_reply(&refused);
    assert_eq!(legate.stat("cluster.svc.upstream_rq_pending_overflow").await, Some(1));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_503").await, Some(1));

    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(second.await.unwrap().status, 200);
    assert!(upstream.seen.lock().unwrap().iter().all(|seen| seen.path != "/refused"), "the refused request never left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_beyond_max_requests_gets_503_and_counts_an_active_overflow() {
    let (legate, upstream) = limited("max_requests: 1").await;
    let first = start(&legate, "/delay/2000");
    legate.wait_for_stat("cluster.svc.upstream_rq_active", 1).await;
    assert_eq!(legate.stat("cluster.svc.circuit_breakers.default.rq_open").await, Some(1));

    let refused = start(&legate, "/refused").await.unwrap();
    assert!(!first.is_finished(), "refused while the first request was active");
    assert_overflow_reply(&refused);
    assert_eq!(legate.stat("cluster.svc.upstream_rq_active_overflow").await, Some(1));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_pending_overflow").await, Some(0));

    assert_eq!(first.await.unwrap().status, 200);
    legate.wait_for_stat("cluster.svc.upstream_rq_active", 0).await;
    assert_eq!(legate.stat("cluster.svc.circuit_breakers.default.rq_open").await, Some(0));
    // The connection opened for the refused request went back to the pool and serves on.
    assert_eq!(send(legate.listener("main"), Version::HTTP_11, get("/")).await.status, 200);
    assert_eq!(upstream.count(), 2);
    assert_eq!(legate.stat("cluster.svc.upstream_cx_total").await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_thresholds_show_in_clusters_and_remaining_gauges() {
    let (legate, _upstream) =
        limited("max_connections: 7, max_pending_requests: 8, max_requests: 9, max_retries: 2, track_remaining: true")
            .await;
    let (_, clusters) = legate.admin_get("/clusters").await;
    for line in [
        "svc::default_priority::max_connections::7",
        "svc::default_priority::max_pending_requests::8",
        "svc::default_priority::max_requests::9",
        "svc::default_priority::max_retries::2",
        "svc::high_priority::max_connections::1024",
        "svc::high_priority::max_retries::3",
    ] {
        assert!(clusters.lines().any(|l| l == line), "{line} in:\n{clusters}");
    }
    assert_eq!(send(legate.listener("main"), Version::HTTP_11, get("/")).await.status, 200);
    assert_eq!(legate.stat("cluster.svc.circuit_breakers.default.remaining_cx").await, Some(6));
    assert_eq!(legate.stat("cluster.svc.circuit_breakers.default.remaining_rq").await, Some(9));
    assert_eq!(legate.stat("cluster.svc.circuit_breakers.default.remaining_pending").await, Some(8));
    assert_eq!(legate.stat("cluster.svc.circuit_breakers.high.cx_open").await, Some(0));
    assert_eq!(legate.stat("cluster.svc.circuit_breakers.high.remaining_cx").await, None, "high does not track");
}
