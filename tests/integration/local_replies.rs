//! Local replies: Envoy's status, body and response flag for each failure, as clients and
//! the access log see them.

use std::time::Duration;

use http::Version;

use crate::support::{
    Legate, Upstream, bootstrap, closed_port, get, legate_to_one_upstream, raw_exchange, routes, send, static_cluster,
};

const ACCESS_LOG: &str = "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {path}\n              log_format: { text_format_source: { inline_string: \"%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %REQ(:PATH)% %RESPONSE_CODE_DETAILS%\\n\" } }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_gets_envoys_status_body_and_flag() {
    let upstream = Upstream::start("svc").await;
    let (_held, refused) = closed_port();
    let log_path = std::env::temp_dir().join(format!("legate-local-replies-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log_path);
    let clusters = format!(
        "{}{}  - name: empty\n    type: STATIC\n    load_assignment: {{ cluster_name: empty }}\n",
        static_cluster("svc", &[(upstream.address, 1)], ""),
        static_cluster("refused", &[(refused, 1)], ""),
    );
    let route = routes(concat!(
        "              - match: { prefix: \"/slow\" }\n                route: { cluster: svc, timeout: 0.2s, prefix_rewrite: \"/delay/3000\" }\n",
        "              - match: { prefix: \"/refused\" }\n                route: { cluster: refused }\n",
        "              - match: { prefix: \"/empty\" }\n                route: { cluster: empty }\n",
        "              - match: { prefix: \"/by-header\" }\n                route: { cluster_header: x-cluster }\n",
        "              - match: { prefix: \"/ok\" }\n                route: { cluster: svc }\n",
    ));
    let access_log = ACCESS_LOG.replace("{path}", &log_path.display().to_string());
    let legate = Legate::start(&bootstrap(&access_log, &route, &clusters));
    let address = legate.listener("main");

    for version in [Version::HTTP_11, Version::HTTP_2] {
        let cases: [(&str, u16, &str); 6] = [
            ("/nowhere", 404, ""),
            ("/by-header", 503, ""),
            ("/empty", 503, "no healthy upstream"),
            (
                "/refused",
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
            ),
            ("/slow", 504, "upstream request timeout"),
            ("/ok", 200, "svc"),
        ];
        for (path, status, body) in cases {
            let answer = send(address, version, get(path)).await;
            assert_eq!(answer.status, status, "{path} over {version:?}");
            assert_eq!(answer.text(), body, "{path} over {version:?}");
            if !body.is_empty() && status != 200 {
                assert_eq!(answer.header("content-type"), "text/plain");
            }
            // Envoy's HTTP/2 codec sends no content-length on an empty local reply.
            let length = if answer.body.is_empty() && version == Version::HTTP_2 {
                String::new()
            } else {
                answer.body.len().to_string()
            };
            assert_eq!(answer.header("content-length"), length, "{path} over {version:?}");
            assert_eq!(answer.header("server"), "envoy");
        }
    }
    assert_eq!(legate.stat("http.ingress_http.no_route").await, Some(2));
    assert_eq!(legate.stat("http.ingress_http.no_cluster").await, Some(2));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_timeout").await, Some(2));
    assert_eq!(legate.stat("cluster.refused.upstream_cx_connect_fail").await, Some(2));
    assert_eq!(legate.stat("cluster.refused.upstream_rq_pending_failure_eject").await, Some(2));
    // As Envoy: a request counts upstream once a connection takes it (a refused connect
    // never does), and the router charges its 503s and 504s to the cluster.
    assert_eq!(legate.stat("cluster.refused.upstream_rq_total").await, Some(0));
    assert_eq!(legate.stat("cluster.refused.upstream_rq_503").await, Some(2));
    assert_eq!(legate.stat("cluster.refused.upstream_rq_completed").await, Some(2));
    assert_eq!(legate.stat("cluster.empty.upstream_rq_503").await, Some(2));
    assert_eq!(legate.stat("cluster.empty.upstream_rq_completed").await, Some(2));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_504").await, Some(2));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_total").await, Some(4));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_active").await, Some(0));

    // The access log is flushed in the background; wait for all twelve lines.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.lines().count() >= 12 || tokio::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for expected in [
        "404 NR - /nowhere route_not_found",
        "503 NC - /by-header cluster_not_found",
        "503 UH empty /empty no_healthy_upstream",
        "503 UF refused /refused upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
        // Envoy logs the request as the router rewrote it.
        "504 UT svc /delay/3000 response_timeout",
        "200 - svc /ok via_upstream",
    ] {
        assert_eq!(log.lines().filter(|l| *l == expected).count(), 2, "{expected:?} twice in:\n{log}");
    }
    let _ = std::fs::remove_file(&log_path);
}

/// A local reply to HEAD keeps the headers a GET would get and sends no body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_to_head_requests_keep_their_headers_without_a_body() {
    let clusters = "  - name: empty\n    type: STATIC\n    load_assignment: { cluster_name: empty }\n";
    let route = routes("              - match: { prefix: \"/empty\" }\n                route: { cluster: empty }\n");
    let legate = Legate::start(&bootstrap("", &route, clusters));
    let head = |path: &str| {
        http::Request::head(path)
            .header("host", "example.com")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let answer = send(legate.listener("main"), version, head("/empty")).await;
        assert_eq!((answer.status.as_u16(), answer.text().as_str()), (503, ""), "{version:?}");
        assert_eq!(answer.header("content-length"), "19", "{version:?}");
        assert_eq!(answer.header("content-type"), "text/plain", "{version:?}");
        let answer = send(legate.listener("main"), version, head("/nowhere")).await;
        assert_eq!((answer.status.as_u16(), answer.text().as_str()), (404, ""), "{version:?}");
        assert_eq!(answer.header("content-length"), "", "{version:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_gets_envoys_400_and_is_counted() {
    let (legate, upstream) = legate_to_one_upstream().await;
    let reply = raw_exchange(legate.listener("main"), b"GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    for header in
        ["connection: close\r\n", "content-type: text/plain\r\n", "content-length: 11\r\n", "server: envoy\r\n"]
    {
        assert!(reply.contains(header), "{header:?} in {reply}");
    }
    assert!(reply.ends_with("\r\n\r\nBad Request"), "{reply}");
    assert_eq!(upstream.count(), 0);
    assert_eq!(legate.stat("http.ingress_http.downstream_rq_4xx").await, Some(1));
    assert_eq!(legate.stat("http.ingress_http.downstream_cx_protocol_error").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_is_refused_with_426_as_envoy_does_by_default() {
    let (legate, upstream) = legate_to_one_upstream().await;
    let reply = raw_exchange(legate.listener("main"), b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await;
    // Envoy's codec writes an HTTP/1.1 status line whatever the request's version.
    assert!(reply.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{reply}");
    let head = reply.to_ascii_lowercase();
    for header in ["connection: close\r\n", "content-type: text/plain\r\n", "content-length: 16\r\n"] {
        assert!(head.contains(header), "{header:?} in {reply}");
    }
    assert!(reply.ends_with("\r\n\r\nUpgrade Required"), "{reply}");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_to_an_undefined_cluster_answers_503_when_validate_clusters_is_off() {
    let upstream = Upstream::start("svc").await;
    let clusters = static_cluster("svc", &[(upstream.address, 1)], "");
    let route = format!(
        "            validate_clusters: false\n{}",
        routes("              - match: { prefix: \"/\" }\n                route: { cluster: ghost }\n")
    );
    let legate = Legate::start(&bootstrap("", &route, &clusters));
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let answer = send(legate.listener("main"), version, get("/")).await;
        assert_eq!(answer.status, 503);
        assert_eq!(answer.text(), "");
    }
    assert_eq!(legate.stat("http.ingress_http.no_cluster").await, Some(2));
}

/// A local reply sent before the request body was read closes an HTTP/1 connection, as
/// Envoy's does, instead of reading and discarding the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_reply_before_the_request_body_closes_the_connection() {
    let route = routes(
        "              - match: { prefix: \"/\" }\n                direct_response: { status: 200, body: { inline_string: \"ok\" } }\n",
    );
    let legate = Legate::start(&bootstrap("", &route, ""));
    let reply =
        raw_exchange(legate.listener("main"), b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 12\r\n\r\nignored body")
            .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{reply}");
    assert_eq!(legate.stat("http.ingress_http.downstream_rq_response_before_rq_complete").await, Some(1));
}
