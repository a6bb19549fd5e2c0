//! Downstream timeouts: the stream idle timeout (before and during the response),
//! `request_timeout`, and the connection idle timeout.

use std::time::Duration;

use http::Version;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    Client, Legate, Upstream, bootstrap, get, raw_exchange, route_all_to, routes, send, static_cluster,
};

async fn legate_with(hcm_extra: &str) -> (Legate, Upstream) {
    let upstream = Upstream::start("svc").await;
    let clusters = static_cluster("svc", &[(upstream.address, 1)], "");
    let route = routes(concat!(
        "              - match: { prefix: \"/idle\" }\n                route: { cluster: svc, timeout: 0s, idle_timeout: 0.3s, prefix_rewrite: \"/delay/3000\" }\n",
        "              - match: { prefix: \"/trickle\" }\n                route: { cluster: svc, idle_timeout: 0.3s, prefix_rewrite: \"/trickle/1500\" }\n",
        "              - match: { prefix: \"/slow-body\" }\n                route: { cluster: svc, timeout: 0.3s, prefix_rewrite: \"/trickle/1500\" }\n",
        "              - match: { prefix: \"/\" }\n                route: { cluster: svc }\n",
    ));
    (Legate::start(&bootstrap(hcm_extra, &route, &clusters)), upstream)
}

/// Gets `path` (an upstream `/trickle`: a chunk, a pause, a chunk): the headers and the first
/// chunk arrive, then the body is reset by a timeout instead of completing.
async fn assert_first_chunk_then_reset(legate: &Legate, version: Version, path: &str) {
    let mut client = Client::connect(legate.listener("main"), version).await;
    let response = client.send_streaming(get(path)).await;
    assert_eq!(response.status(), 200, "{version:?} {path}: headers arrive before the body stalls");
    let mut body = response.into_body();
    let first = body.frame().await.expect("a first frame").expect("first chunk arrives");
    assert_eq!(first.into_data().unwrap(), "first");
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect()).await.expect("the reset came in time");
    assert!(rest.is_err(), "{version:?} {path}: the body was reset, not completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_timeout_before_and_during_the_response() {
    let (legate, _upstream) = legate_with("").await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        // The whole request arrived: the wait is on the upstream, and Envoy says 504.
        let answer = send(legate.listener("main"), version, get("/idle")).await;
        assert_eq!(answer.status, 504);
        assert_eq!(answer.text(), "stream timeout");

        assert_first_chunk_then_reset(&legate, version, "/trickle").await;
    }
    assert!(legate.stat("http.ingress_http.downstream_rq_idle_timeout").await >= Some(4));
    // The connection manager's timeout is not charged to the cluster, as in Envoy.
    assert_eq!(legate.stat("cluster.svc.upstream_rq_504").await, None);
    assert_eq!(legate.stat("cluster.svc.upstream_rq_active").await, Some(0));
}

/// Envoy's route timeout runs until the response has ended, not only until its headers: a
/// body still streaming when it passes is reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_resets_a_response_body_that_outlasts_it() {
    let (legate, _upstream) = legate_with("").await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        assert_first_chunk_then_reset(&legate, version, "/slow-body").await;
    }
    assert_eq!(legate.stat("cluster.svc.upstream_rq_timeout").await, Some(2));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_active").await, Some(0));
    assert_eq!(legate.stat("http.ingress_http.downstream_rq_idle_timeout").await, Some(0));
}

/// Envoy opens a stream at a request's first byte: a head that stops arriving halfway gets
/// the stream idle timeout's 408, and the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_stops_halfway_gets_408_at_the_stream_idle_timeout() {
    let (legate, upstream) = legate_with("          stream_idle_timeout: 0.3s\n").await;
    let started = std::time::Instant::now();
    let reply = raw_exchange(legate.listener("main"), b"GET / HTTP/1.1\r\nhost: x\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{reply}");
    assert!(reply.contains("\r\nconnection: close\r\n"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nstream timeout"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(3), "answered at the timeout, not at the client's");
    assert_eq!(upstream.count(), 0);
    assert_eq!(legate.stat("http.ingress_http.downstream_rq_idle_timeout").await, Some(1));
    assert_eq!(legate.stat("http.ingress_http.downstream_rq_4xx").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_timeout_while_the_request_body_stalls_answers_408() {
    let (legate, _upstream) = legate_with("").await;
    let reply = raw_exchange(
        legate.listener("main"),
        b"POST /idle HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.ends_with("stream timeout"), "{reply}");
}

/// After the 408 for a stalled request body, the part of the request already forwarded to an
/// HTTP/2 upstream is reset (Envoy resets the upstream stream), even while the client keeps
/// its connection (HTTP/1.1) or its stream (HTTP/2) open: the upstream sees its request end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_abandoned_at_the_stream_idle_timeout_is_reset_upstream() {
    let upstream = Upstream::start("svc").await;
    let h2 = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }\n";
    let clusters = static_cluster("svc", &[(upstream.address, 1)], h2);
    let legate = Legate::start(&bootstrap("          stream_idle_timeout: 0.3s\n", &route_all_to("svc"), &clusters));
    let mut stream = tokio::net::TcpStream::connect(legate.listener("main")).await.unwrap();
    stream.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789").await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    // The client keeps its socket open; the upstream still learns the request is over.
    let upstream_saw_the_end = async |requests: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while upstream.count() < requests {
            assert!(std::time::Instant::now() < deadline, "the upstream stream was left open");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(upstream.last().body_len, 0, "the body did not complete: it was reset");
    };
    upstream_saw_the_end(1).await;
    drop(stream);

    // An HTTP/2 client's stream is reset after the 408 (RST_STREAM NO_ERROR: the response is
    // complete), which ends the body's reads and resets the upstream stream.
    let stream = tokio::net::TcpStream::connect(legate.listener("main")).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("http://x/upload").header("content-length", "100").body(()).unwrap();
    let (response, mut body) = client.ready().await.unwrap().send_request(request, false).unwrap();
    body.send_data(bytes::Bytes::from_static(b"0123456789"), false).unwrap();
    assert_eq!(response.await.unwrap().status(), 408);
    upstream_saw_the_end(2).await;
    drop(body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_answers_408_when_the_body_is_late() {
    let (legate, upstream) = legate_with("          request_timeout: 0.3s\n").await;
    let reply = raw_exchange(
        legate.listener("main"),
        b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.ends_with("request timeout"), "{reply}");
    // A request that arrives in time is unaffected.
    assert_eq!(send(legate.listener("main"), Version::HTTP_11, get("/")).await.status, 200);
    assert!(upstream.count() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let (legate, _upstream) = legate_with("          common_http_protocol_options: { idle_timeout: 0.3s }\n").await;
    let mut stream = tokio::net::TcpStream::connect(legate.listener("main")).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Keep-alive: the connection stays open after the response until it has idled 0.3 s.
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("closed in time");
    assert_eq!(closed.unwrap(), 0, "the server closed the idle connection");
    assert_eq!(legate.stat("http.ingress_http.downstream_cx_idle_timeout").await, Some(1));
}

/// Sends a 30-byte POST body in three parts 300 ms apart and returns the start of the reply.
async fn slow_upload(address: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 30\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A proxy that answers early closes the connection under the rest of the body.
        if stream.write_all(b"0123456789").await.is_err() {
            break;
        }
    }
    let mut reply = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut reply)).await.unwrap().unwrap();
    String::from_utf8_lossy(&reply[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_runs_from_the_end_of_the_request() {
    // Envoy's route timeout spans from the end of the downstream request to the response, so
    // an upload slower than the timeout is not cut by it; a response slower than it still is.
    let upstream = Upstream::start("svc").await;
    let clusters = static_cluster("svc", &[(upstream.address, 1)], "");
    let route = routes(concat!(
        "              - match: { prefix: \"/late\" }\n                route: { cluster: svc, timeout: 0.5s, prefix_rewrite: \"/delay/3000\" }\n",
        "              - match: { prefix: \"/\" }\n                route: { cluster: svc, timeout: 0.5s }\n",
    ));
    let legate = Legate::start(&bootstrap("", &route, &clusters));
    let reply = slow_upload(legate.listener("main"), "/upload").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(upstream.last().body_len, 30);
    let reply = slow_upload(legate.listener("main"), "/late").await;
    assert!(reply.starts_with("HTTP/1.1 504"), "{reply}");
    assert!(reply.ends_with("upstream request timeout"), "{reply}");
}
