//! Outlier detection over real traffic: a host ejected by consecutive connect failures stops
//! getting requests and comes back when its ejection time is up; the success-rate detector
//! ejects the host answering worse than the rest; and what `/clusters` and `/stats` say
//! meanwhile. Envoy's verdicts on the same traffic (which ejections happen, the counters,
//! the `/clusters` lines) are compared with the real Envoy by interop config 41.

use std::time::{Duration, Instant};

use http::Version;

use crate::support::{Client, Legate, Upstream, bootstrap, closed_port, get, route_all_to, routes, static_cluster};

/// The `/clusters` line of `host` ending in `::<field>::…`.
async fn host_line(legate: &Legate, host: std::net::SocketAddr, field: &str) -> String {
    let (_, text) = legate.admin_get("/clusters").await;
    let prefix = format!("svc::{host}::{field}::");
    text.lines().find(|line| line.starts_with(&prefix)).unwrap_or_else(|| panic!("no {prefix} in:\n{text}")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_eject_a_host_until_its_ejection_time_is_up() {
    let live = Upstream::start("live").await;
    let (_held, refused) = closed_port();
    let outlier = concat!(
        "    outlier_detection:\n",
        "      consecutive_5xx: 3\n",
        "      interval: 0.1s\n",
        "      base_ejection_time: 1s\n",
        "      max_ejection_percent: 50\n",
    );
    let clusters = static_cluster("svc", &[(refused, 1), (live.address, 1)], outlier);
    // Connect failures are retried on the other host, so every client gets its answer.
    let route = routes(concat!(
        "              - match: { prefix: \"/\" }\n",
        "                route: { cluster: svc, retry_policy: { retry_on: connect-failure, num_retries: 1 } }\n",
    ));
    let legate = Legate::start_with(&bootstrap("", &route, &clusters), &["--concurrency", "1"]);
    let mut client = Client::connect(legate.listener("main"), Version::HTTP_11).await;
    // Round robin over two hosts: the refused one is tried every other pick, so six requests
    // make three connect failures in a row there.
    for _ in 0..6 {
        let answer = client.send(get("/")).await;
        assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "live"));
    }
    legate.wait_for_stat("cluster.svc.outlier_detection.ejections_active", 1).await;
    assert_eq!(legate.stat("cluster.svc.upstream_cx_connect_fail").await, Some(3));
    assert_eq!(legate.stat("cluster.svc.outlier_detection.ejections_detected_consecutive_5xx").await, Some(1));
    assert_eq!(legate.stat("cluster.svc.outlier_detection.ejections_enforced_consecutive_5xx").await, Some(1));
    assert_eq!(legate.stat("cluster.svc.outlier_detection.ejections_enforced_total").await, Some(1));
    assert_eq!(legate.stat("cluster.svc.membership_healthy").await, Some(1));
    assert_eq!(
        host_line(&legate, refused, "health_flags").await,
        format!("svc::{refused}::health_flags::/failed_outlier_check")
    );
    assert_eq!(
        host_line(&legate, live.address, "health_flags").await,
        format!("svc::{}::health_flags::healthy", live.address)
    );
    let (_, text) = legate.admin_get("/clusters").await;
    assert!(text.contains("svc::outlier::success_rate_average::-1\n"), "{text}");

    // While it is out, every request goes to the live host at the first try.
    let ejected_at = Instant::now();
    for _ in 0..10 {
        assert_eq!(client.send(get("/")).await.status, 200);
    }
    assert_eq!(legate.stat("cluster.svc.upstream_cx_connect_fail").await, Some(3));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_retry").await, Some(3));

    // Back at the first interval a second after the ejection.
    legate.wait_for_stat("cluster.svc.outlier_detection.ejections_active", 0).await;
    assert!(ejected_at.elapsed() >= Duration::from_millis(800), "back after {:?}", ejected_at.elapsed());
    assert_eq!(host_line(&legate, refused, "health_flags").await, format!("svc::{refused}::health_flags::healthy"));
    for _ in 0..2 {
        assert_eq!(client.send(get("/")).await.status, 200);
    }
    let connect_failures = legate.stat("cluster.svc.upstream_cx_connect_fail").await.unwrap();
    assert!(connect_failures > 3, "round robin reaches it again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_rate_ejects_the_host_that_fails_more_than_the_rest() {
    let mut upstreams = Vec::new();
    for name in ["h0", "h1", "h2", "h3", "h4"] {
        upstreams.push(Upstream::start(name).await);
    }
    let hosts: Vec<_> = upstreams.iter().map(|u| (u.address, 1)).collect();
    // Only the success-rate detector: consecutive 5xx off (a threshold of 0 is never met).
    let outlier = concat!(
        "    outlier_detection:\n",
        "      consecutive_5xx: 0\n",
        "      interval: 0.3s\n",
        "      success_rate_request_volume: 10\n",
        "      max_ejection_percent: 100\n",
    );
    let clusters = static_cluster("svc", &hosts, outlier);
    let legate = Legate::start_with(&bootstrap("", &route_all_to("svc"), &clusters), &["--concurrency", "1"]);
    let mut client = Client::connect(legate.listener("main"), Version::HTTP_2).await;
    // h0 answers 500, the others 200: rates 0, 100, 100, 100, 100 give a mean of 80 and a
    // deviation of 40, so a threshold of 80 - 1.9 × 40 = 4.
    let deadline = Instant::now() + Duration::from_secs(10);
    while legate.stat("cluster.svc.outlier_detection.ejections_active").await != Some(1) {
        assert!(Instant::now() < deadline, "no ejection");
        for _ in 0..50 {
            client.send(get("/fail-if/h0/500")).await;
        }
    }
    assert_eq!(legate.stat("cluster.svc.outlier_detection.ejections_enforced_success_rate").await, Some(1));
    assert_eq!(legate.stat("cluster.svc.outlier_detection.ejections_detected_success_rate").await, Some(1));
    assert_eq!(legate.stat("cluster.svc.outlier_detection.ejections_enforced_consecutive_5xx").await, Some(0));
    assert_eq!(host_line(&legate, upstreams[0].address, "health_flags").await, {
        format!("svc::{}::health_flags::/failed_outlier_check", upstreams[0].address)
    });
    let h0_seen = upstreams[0].count();
    for _ in 0..20 {
        let answer = client.send(get("/fail-if/h0/500")).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    assert_eq!(upstreams[0].count(), h0_seen, "the ejected host gets nothing");
}
