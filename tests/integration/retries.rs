//! Retries: the host a retry goes to (`previous_hosts`), request bodies sent again over
//! HTTP/1.1 and HTTP/2 upstreams, the buffer limit that turns retries off, and what
//! `/stats` says of each. Envoy's wire behaviour (statuses, bodies, flags, counters) is
//! compared with the real Envoy by interop config 38.

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::Full;

use crate::support::{Client, Legate, Upstream, bootstrap, closed_port, get, routes, static_cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_hosts_sends_a_retry_away_from_the_host_that_failed() {
    let upstream = Upstream::start("live").await;
    let (_held, refused) = closed_port();
    let clusters = static_cluster("svc", &[(refused, 1), (upstream.address, 1)], "    lb_policy: RANDOM\n");
    let route = routes(concat!(
        "              - match: { prefix: \"/\" }\n",
        "                route:\n",
        "                  cluster: svc\n",
        "                  retry_policy:\n",
        "                    retry_on: connect-failure\n",
        "                    retry_host_predicate: [{ name: envoy.retry_host_predicates.previous_hosts }]\n",
        "                    host_selection_retry_max_attempts: 40\n",
    ));
    let legate = Legate::start_with(&bootstrap("", &route, &clusters), &["--concurrency", "1"]);
    let mut client = Client::connect(legate.listener("main"), Version::HTTP_11).await;
    for _ in 0..16 {
        // One retry, and every pick but the last would have to land on the refused host
        // again for it to fail (2^-40).
        let answer = client.send(get("/")).await;
        assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "live"));
    }
    let connect_failures = legate.stat("cluster.svc.upstream_cx_connect_fail").await.unwrap();
    assert!(connect_failures > 0, "a random pick of two hosts lands on the refused one (1 - 2^-16)");
    assert_eq!(legate.stat("cluster.svc.upstream_rq_retry").await, Some(connect_failures));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_retry_success").await, Some(connect_failures));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_retry_limit_exceeded").await, Some(0));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_200").await, Some(16));
    assert_eq!(upstream.count(), 16);
    // No response was replaced, so no `retry.` codes were made.
    assert_eq!(legate.stat("cluster.svc.retry.upstream_rq_completed").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_is_sent_again_up_to_the_buffer_limit_and_past_it_not_retried() {
    let upstream = Upstream::start("svc").await;
    let clusters = format!(
        "{}{}",
        static_cluster(
            "h1",
            &[(upstream.address, 1)],
            "    circuit_breakers: { thresholds: [{ track_remaining: true }] }\n"
        ),
        static_cluster("h2", &[(upstream.address, 1)], "    http2_protocol_options: {}\n"),
    );
    let retry = "retry_policy: { retry_on: 5xx, num_retries: 2, retry_back_off: { base_interval: 0.001s } }";
    let route = routes(&format!(
        "              - match: {{ prefix: \"/h2/\" }}\n                route: {{ cluster: h2, regex_rewrite: {{ pattern: {{ regex: \"^/h2/\" }}, substitution: \"/\" }}, {retry} }}\n              - match: {{ prefix: \"/\" }}\n                route: {{ cluster: h1, {retry} }}\n"
    ));
    let config = bootstrap("", &route, &clusters).replacen(
        "  - name: main\n",
        "  - name: main\n    per_connection_buffer_limit_bytes: 1024\n",
        1,
    );
    let legate = Legate::start_with(&config, &["--concurrency", "1"]);
    let post = |path: &str, len: usize| {
        Request::post(path).header("host", "example.com").body(Full::new(Bytes::from(vec![b'x'; len]))).unwrap()
    };
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = Client::connect(legate.listener("main"), version).await;
        for prefix in ["", "/h2"] {
            // `/flaky/N` answers N to its first request and 200 to the next: within the
            // limit, the retry resends the whole body and gets the 200.
            let path = format!("{prefix}/flaky/500?{version:?}{prefix}");
            let seen_before = upstream.count();
            let answer = client.send(post(&path, 1000)).await;
            assert_eq!(answer.status, 200, "{path}");
            assert_eq!(upstream.count() - seen_before, 2, "{path}: the first attempt and one retry");
            assert_eq!(upstream.last().body_len, 1000, "{path}: the retry sent the whole body");

            // Past the limit the body is not kept, so the 503 is the answer.
            let path = format!("{prefix}/flaky/503?{version:?}{prefix}");
            let seen_before = upstream.count();
            let answer = client.send(post(&path, 4096)).await;
            assert_eq!(answer.status, 503, "{path}");
            assert_eq!(upstream.count() - seen_before, 1, "{path}: sent once");
            assert_eq!(upstream.last().body_len, 4096, "{path}: the body still went through whole");
        }
    }
    for cluster in ["h1", "h2"] {
        let stat = |name: &str| format!("cluster.{cluster}.{name}");
        assert_eq!(legate.stat(&stat("upstream_rq_retry")).await, Some(2), "{cluster}");
        assert_eq!(legate.stat(&stat("retry_or_shadow_abandoned")).await, Some(2), "{cluster}");
        assert_eq!(legate.stat(&stat("retry.upstream_rq_500")).await, Some(2), "{cluster}");
        // The final responses only: the two 200s after a retry and the two 503s not retried.
        assert_eq!(legate.stat(&stat("upstream_rq_200")).await, Some(2), "{cluster}");
        assert_eq!(legate.stat(&stat("upstream_rq_503")).await, Some(2), "{cluster}");
        assert_eq!(legate.stat(&stat("upstream_rq_500")).await, None, "{cluster}");
    }
    // Retries hold their circuit-breaker place only while in flight.
    assert_eq!(legate.stat("cluster.h1.circuit_breakers.default.remaining_retries").await, Some(3));
    assert_eq!(legate.stat("cluster.h1.circuit_breakers.default.rq_retry_open").await, Some(0));
}
