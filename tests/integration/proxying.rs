//! Proxying: protocol combinations, load balancing, streaming, pooling and the headers
//! legate adds on the way.

use std::collections::HashMap;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};

use crate::support::{
    Client, Legate, Upstream, bootstrap, get, raw_exchange, route_all_to, routes, send, static_cluster,
};

const H2_UPSTREAM: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_protocol_combinations_reach_the_upstream_with_the_configured_protocol() {
    let upstream = Upstream::start("svc").await;
    let clusters = format!(
        "{}{}{}",
        static_cluster("h1", &[(upstream.address, 1)], ""),
        static_cluster("h2", &[(upstream.address, 1)], H2_UPSTREAM),
        // The deprecated cluster-level field Envoy still honours.
        static_cluster("h2legacy", &[(upstream.address, 1)], "    http2_protocol_options: {}\n"),
    );
    let route = routes(
        "              - match: { prefix: \"/h1\" }\n                route: { cluster: h1 }\n              - match: { prefix: \"/h2legacy\" }\n                route: { cluster: h2legacy }\n              - match: { prefix: \"/h2\" }\n                route: { cluster: h2 }\n",
    );
    let legate = Legate::start(&bootstrap("", &route, &clusters));
    for downstream in [Version::HTTP_11, Version::HTTP_2] {
        for (path, upstream_version) in
            [("/h1", Version::HTTP_11), ("/h2", Version::HTTP_2), ("/h2legacy", Version::HTTP_2)]
        {
            let answer = send(legate.listener("main"), downstream, get(path)).await;
            assert_eq!(answer.status, 200, "{downstream:?} → {path}");
            assert_eq!(answer.text(), "svc");
            assert_eq!(answer.version, downstream);
            let seen = upstream.last();
            assert_eq!(seen.version, upstream_version, "{downstream:?} → {path}");
            assert_eq!(seen.path, path);
            assert_eq!(seen.authority, "example.com");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_honours_load_balancing_weight() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let clusters = static_cluster("weighted", &[(a.address, 3), (b.address, 1)], "");
    // One worker, so one round-robin cursor sees every request.
    let legate = Legate::start_with(&bootstrap("", &route_all_to("weighted"), &clusters), &["--concurrency", "1"]);
    let mut client = Client::connect(legate.listener("main"), Version::HTTP_11).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        let answer = client.send(get("/")).await;
        *counts.entry(answer.text()).or_default() += 1;
    }
    assert_eq!(counts.get("a"), Some(&300), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&100), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_weights_spread_evenly_across_workers_too() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let clusters = static_cluster("even", &[(a.address, 1), (b.address, 1)], "");
    let legate = Legate::start(&bootstrap("", &route_all_to("even"), &clusters));
    let mut client = Client::connect(legate.listener("main"), Version::HTTP_2).await;
    for _ in 0..100 {
        assert_eq!(client.send(get("/")).await.status, 200);
    }
    assert_eq!(a.count(), 50);
    assert_eq!(b.count(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_new_requests_away_from_a_host_busy_with_a_slow_one() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    // 64 draws of two hosts: the idle one is among them but for a chance of 2^-64.
    let extra = "    lb_policy: LEAST_REQUEST\n    least_request_lb_config: { choice_count: 64 }\n";
    let clusters = static_cluster("svc", &[(a.address, 1), (b.address, 1)], extra);
    let legate = Legate::start(&bootstrap("", &route_all_to("svc"), &clusters));
    let (address, request) = (legate.listener("main"), get("/delay/2000"));
    let slow = tokio::spawn(async move { send(address, Version::HTTP_11, request).await });
    legate.wait_for_stat("cluster.svc.upstream_rq_active", 1).await;
    let busy = if a.count() == 1 { "a" } else { "b" };
    let mut client = Client::connect(legate.listener("main"), Version::HTTP_2).await;
    for _ in 0..20 {
        let answer = client.send(get("/quick")).await;
        assert_eq!(answer.status, 200);
        assert_ne!(answer.text(), busy, "a quick request went to the host busy with the slow one");
    }
    assert_eq!(slow.await.unwrap().text(), busy);
    // With both idle again, the first draw stands: both hosts take requests.
    for _ in 0..40 {
        client.send(get("/idle")).await;
    }
    let idle_to = |u: &Upstream| u.seen.lock().unwrap().iter().filter(|s| s.path == "/idle").count();
    assert!(idle_to(&a) > 0 && idle_to(&b) > 0, "a {} / b {}", idle_to(&a), idle_to(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_over_unequal_weights_follows_the_weights_when_hosts_are_idle() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let clusters = static_cluster("svc", &[(a.address, 4), (b.address, 1)], "    lb_policy: LEAST_REQUEST\n");
    // One worker, so one schedule sees every request.
    let legate = Legate::start_with(&bootstrap("", &route_all_to("svc"), &clusters), &["--concurrency", "1"]);
    let mut client = Client::connect(legate.listener("main"), Version::HTTP_11).await;
    for _ in 0..500 {
        assert_eq!(client.send(get("/")).await.status, 200);
    }
    assert_eq!((a.count(), b.count()), (400, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_over_each_protocol() {
    let upstream = Upstream::start("echo").await;
    for extra in ["", H2_UPSTREAM] {
        let clusters = static_cluster("echo", &[(upstream.address, 1)], extra);
        let legate = Legate::start(&bootstrap("", &route_all_to("echo"), &clusters));
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let payload: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
            let request = Request::post("/echo")
                .header("host", "example.com")
                .body(Full::new(Bytes::from(payload.clone())))
                .unwrap();
            let answer = send(legate.listener("main"), version, request).await;
            assert_eq!(answer.status, 200);
            assert_eq!(answer.body.len(), payload.len());
            assert!(answer.body == payload, "echoed body differs ({version:?}, upstream h2: {})", !extra.is_empty());

            let upload = Request::post("/upload")
                .header("host", "example.com")
                .body(Full::new(Bytes::from(vec![7u8; 65536])))
                .unwrap();
            assert_eq!(send(legate.listener("main"), version, upload).await.status, 200);
            let seen = upstream.last();
            assert_eq!((seen.method.as_str(), seen.body_len), ("POST", 65536));

            let mut client = Client::connect(legate.listener("main"), version).await;
            let response = client.send_streaming(get("/stream/256")).await;
            assert_eq!(response.status(), 200);
            let mut body = response.into_body();
            let mut frames = 0;
            let mut total = 0;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    frames += 1;
                    total += data.len();
                }
            }
            assert_eq!(total, 256 * 1024);
            assert!(frames > 1, "the response arrived in one piece: it was buffered, not streamed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled_and_reused() {
    let upstream = Upstream::start("svc").await;
    let clusters = static_cluster("svc", &[(upstream.address, 1)], "");
    let legate = Legate::start_with(&bootstrap("", &route_all_to("svc"), &clusters), &["--concurrency", "1"]);
    let mut client = Client::connect(legate.listener("main"), Version::HTTP_11).await;
    for _ in 0..20 {
        assert_eq!(client.send(get("/")).await.status, 200);
    }
    assert_eq!(upstream.count(), 20);
    assert_eq!(
        legate.stat("cluster.svc.upstream_cx_total").await,
        Some(1),
        "one pooled connection serves sequential requests"
    );
    assert_eq!(legate.stat("cluster.svc.upstream_rq_pending_total").await, Some(1), "only the first request waited");
    assert_eq!(legate.stat("cluster.svc.upstream_rq_pending_active").await, Some(0));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_total").await, Some(20));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_200").await, Some(20));
    assert_eq!(legate.stat("http.ingress_http.downstream_rq_2xx").await, Some(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_idle_past_idle_timeout_is_closed_without_waiting_for_a_request() {
    let upstream = Upstream::start("svc").await;
    for protocol in ["", H2_UPSTREAM] {
        let idle = format!("{protocol}    common_http_protocol_options: {{ idle_timeout: 1s }}\n");
        let clusters = static_cluster("svc", &[(upstream.address, 1)], &idle);
        let legate = Legate::start_with(&bootstrap("", &route_all_to("svc"), &clusters), &["--concurrency", "1"]);
        let mut client = Client::connect(legate.listener("main"), Version::HTTP_11).await;
        for _ in 0..2 {
            assert_eq!(client.send(get("/")).await.status, 200);
        }
        assert_eq!(legate.stat("cluster.svc.upstream_cx_total").await, Some(1), "reused within the idle timeout");
        let http2 = legate.stat("cluster.svc.upstream_cx_http2_total").await;
        assert_eq!(http2, Some(i64::from(protocol == H2_UPSTREAM)));
        legate.wait_for_stat("cluster.svc.upstream_cx_idle_timeout", 1).await;
        assert_eq!(legate.stat("cluster.svc.upstream_cx_active").await, Some(0));
        assert_eq!(legate.stat("cluster.svc.upstream_cx_destroy_local").await, Some(1));
        assert_eq!(client.send(get("/")).await.status, 200, "a new connection replaces the closed one");
        assert_eq!(legate.stat("cluster.svc.upstream_cx_total").await, Some(2));
    }
}

/// Sends `n` GETs as streams of one h2c connection in one write, so that legate takes
/// them all in before it has any upstream connection; returns their statuses.
async fn h2_burst(legate: &Legate, n: usize) -> Vec<http::StatusCode> {
    let stream = tokio::net::TcpStream::connect(legate.listener("main")).await.unwrap();
    let (mut sender, connection) = h2::client::handshake(stream).await.unwrap();
    let responses: Vec<_> = (0..n)
        .map(|_| {
            let request = Request::get("http://example.com/").body(()).unwrap();
            sender.send_request(request, true).unwrap().0
        })
        .collect();
    tokio::spawn(connection);
    futures_util::future::join_all(responses).await.into_iter().map(|r| r.unwrap().status()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_while_an_http2_upstream_connects_share_that_one_connection() {
    let upstream = Upstream::start("svc").await;
    let clusters = static_cluster("svc", &[(upstream.address, 1)], H2_UPSTREAM);
    let legate = Legate::start_with(&bootstrap("", &route_all_to("svc"), &clusters), &["--concurrency", "1"]);
    for status in h2_burst(&legate, 20).await {
        assert_eq!(status, 200);
    }
    assert_eq!(upstream.count(), 20);
    assert_eq!(legate.stat("cluster.svc.upstream_cx_total").await, Some(1), "one connection, not one per request");
    assert_eq!(legate.stat("cluster.svc.upstream_cx_http2_total").await, Some(1));
    assert!(legate.stat("cluster.svc.upstream_rq_pending_total").await.unwrap() >= 1);
    assert_eq!(legate.stat("cluster.svc.upstream_rq_pending_active").await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_upstream_connection_closes_after_max_requests_per_connection() {
    let upstream = Upstream::start("svc").await;
    let options = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        common_http_protocol_options: { max_requests_per_connection: 2 }\n        explicit_http_config: { http_protocol_options: {} }\n";
    let clusters = static_cluster("svc", &[(upstream.address, 1)], options);
    let legate = Legate::start_with(&bootstrap("", &route_all_to("svc"), &clusters), &["--concurrency", "1"]);
    let mut client = Client::connect(legate.listener("main"), Version::HTTP_11).await;
    for _ in 0..5 {
        assert_eq!(client.send(get("/")).await.status, 200);
    }
    assert_eq!(legate.stat("cluster.svc.upstream_cx_total").await, Some(3), "two requests a connection");
    assert_eq!(legate.stat("cluster.svc.upstream_cx_max_requests").await, Some(2));
    assert_eq!(legate.stat("cluster.svc.upstream_cx_destroy_local").await, Some(2), "legate closed the spent ones");
    assert_eq!(legate.stat("cluster.svc.upstream_cx_active").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_get_a_stream_when_http2_connections_carry_one_request() {
    let upstream = Upstream::start("svc").await;
    let clusters =
        static_cluster("svc", &[(upstream.address, 1)], &format!("{H2_UPSTREAM}    max_requests_per_connection: 1\n"));
    let legate = Legate::start_with(&bootstrap("", &route_all_to("svc"), &clusters), &["--concurrency", "1"]);
    for status in h2_burst(&legate, 10).await {
        assert_eq!(status, 200, "a request that found its connection spent goes out on a new one");
    }
    assert_eq!(upstream.count(), 10);
    assert_eq!(legate.stat("cluster.svc.upstream_cx_total").await, Some(10), "one connection a request");
    assert_eq!(legate.stat("cluster.svc.upstream_cx_max_requests").await, Some(10));
    legate.wait_for_stat("cluster.svc.upstream_cx_active", 0).await;
}

/// An HTTP/2 upstream that answers `/hold` with headers and a first chunk, sends GOAWAY (a
/// graceful shutdown: the held stream stays open for a second), and answers anything else
/// at once.
async fn draining_h2_upstream() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(stream).await else { return };
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    let hold = request.uri().path() == "/hold";
                    let mut body = respond.send_response(http::Response::new(()), false).unwrap();
                    if hold {
                        body.send_data(Bytes::from_static(b"held"), false).unwrap();
                        connection.graceful_shutdown();
                        tokio::spawn(async move {
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            let _ = body.send_data(Bytes::new(), true);
                        });
                    } else {
                        body.send_data(Bytes::from_static(b"ok"), true).unwrap();
                    }
                }
            });
        }
    });
    (address, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_an_http2_upstreams_goaway_goes_out_on_a_new_connection() {
    let (address, connections) = draining_h2_upstream().await;
    let clusters = static_cluster("svc", &[(address, 1)], H2_UPSTREAM);
    let legate = Legate::start_with(&bootstrap("", &route_all_to("svc"), &clusters), &["--concurrency", "1"]);
    let mut held = Client::connect(legate.listener("main"), Version::HTTP_11).await;
    let response = held.send_streaming(get("/hold")).await;
    assert_eq!(response.status(), 200);
    // The GOAWAY is in; the first connection still carries the held stream.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let answer = send(legate.listener("main"), Version::HTTP_11, get("/next")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "ok");
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(legate.stat("cluster.svc.upstream_cx_total").await, Some(2));
    let held_body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(held_body, "held", "the draining connection finished its stream");
    // The upstream's GOAWAY ended it once its last stream was done.
    legate.wait_for_stat("cluster.svc.upstream_cx_destroy_remote", 1).await;
    assert_eq!(legate.stat("cluster.svc.upstream_cx_destroy_local").await, Some(0));
    assert_eq!(legate.stat("cluster.svc.upstream_cx_destroy_with_active_rq").await, Some(0));
    // The connection that ended carried the held stream only.
    let per_connection = legate.histogram("envoy_cluster_upstream_rq_per_cx", r#"envoy_cluster_name="svc""#).await;
    assert_eq!(per_connection, Some((1, 1)));
}

/// An HTTP/2 upstream that resets `/reset`, holds `/hold` open (headers sent, no end) and
/// drops the whole connection after the headers of `/cut`.
async fn resetting_h2_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(stream).await else { return };
                let mut held = Vec::new();
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    match request.uri().path() {
                        "/reset" => respond.send_reset(h2::Reason::INTERNAL_ERROR),
                        "/cut" => {
                            let _body = respond.send_response(http::Response::new(()), false).unwrap();
                            // Gives legate the headers before the connection goes.
                            tokio::time::timeout(std::time::Duration::from_millis(100), connection.accept()).await.ok();
                            return;
                        }
                        _ => held.push(respond.send_response(http::Response::new(()), false).unwrap()),
                    }
                }
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstream_stream_resets_and_a_cut_connection_are_counted_as_envoy_does() {
    let address = resetting_h2_upstream().await;
    let clusters = static_cluster("svc", &[(address, 1)], H2_UPSTREAM);
    let legate = Legate::start_with(&bootstrap("", &route_all_to("svc"), &clusters), &["--concurrency", "1"]);
    let main = legate.listener("main");
    // The upstream resets the stream: upstream_rq_rx_reset.
    let reply = raw_exchange(main, b"GET /reset HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.ends_with("reset reason: remote reset"), "as Envoy words it: {reply}");
    assert_eq!(legate.stat("cluster.svc.upstream_rq_rx_reset").await, Some(1));
    // The client goes away mid-response: legate resets the upstream stream (tx_reset); the
    // connection stays.
    let mut client = tokio::net::TcpStream::connect(main).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut client, b"GET /hold HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    legate.wait_for_stat("cluster.svc.upstream_rq_active", 1).await;
    drop(client);
    legate.wait_for_stat("cluster.svc.upstream_rq_tx_reset", 1).await;
    assert_eq!(legate.stat("cluster.svc.upstream_cx_destroy").await, Some(0));
    // The upstream drops the connection under a response: the stream it cut is counted as
    // Envoy's pools count it, and the connection as closed by the upstream mid-request.
    let reply = raw_exchange(main, b"GET /cut HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    legate.wait_for_stat("cluster.svc.upstream_cx_destroy_remote_with_active_rq", 1).await;
    assert_eq!(legate.stat("cluster.svc.upstream_rq_pending_failure_eject").await, Some(1));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_rx_reset").await, Some(1));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_tx_reset").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upstream_breaking_the_protocol_is_counted_and_its_connection_closed() {
    // After its SETTINGS, the upstream sends DATA on stream 0, which HTTP/2 forbids.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let settings = [0, 0, 0, 4, 0, 0, 0, 0, 0];
        let data_on_stream_0 = [0, 0, 1, 0, 0, 0, 0, 0, 0, b'x'];
        tokio::io::AsyncWriteExt::write_all(&mut stream, &[&settings[..], &data_on_stream_0].concat()).await.unwrap();
        let mut sink = vec![0; 4096];
        while tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await.is_ok_and(|n| n > 0) {}
    });
    let clusters = static_cluster("svc", &[(address, 1)], H2_UPSTREAM);
    let legate = Legate::start_with(&bootstrap("", &route_all_to("svc"), &clusters), &["--concurrency", "1"]);
    let answer = send(legate.listener("main"), Version::HTTP_11, get("/")).await;
    assert_eq!(answer.status, 502);
    assert_eq!(
        answer.text(),
        "upstream connect error or disconnect/reset before headers. reset reason: protocol error"
    );
    legate.wait_for_stat("cluster.svc.upstream_cx_protocol_error", 1).await;
    assert_eq!(legate.stat("cluster.svc.upstream_cx_destroy_local").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_request_and_response_headers_are_added() {
    let upstream = Upstream::start("svc").await;
    let clusters = static_cluster("svc", &[(upstream.address, 1)], "");
    let legate = Legate::start(&bootstrap("          use_remote_address: true\n", &route_all_to("svc"), &clusters));
    let request = Request::get("/")
        .header("host", "example.com")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-envoy-internal", "true")
        .header("x-envoy-expected-rq-timeout-ms", "5")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send(legate.listener("main"), Version::HTTP_11, request).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("server"), "envoy");
    assert!(answer.header("x-envoy-upstream-service-time").parse::<u64>().is_ok());
    assert!(!answer.header("date").is_empty());
    let seen = upstream.last();
    assert_eq!(seen.method, "GET");
    // A loopback peer is appended as this host's own address, as Envoy does.
    let xff = &seen.headers["x-forwarded-for"];
    assert!(xff.starts_with("203.0.113.9,") && xff.split(',').count() == 2, "{xff}");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-envoy-external-address"], "127.0.0.1");
    assert_eq!(seen.headers["x-request-id"].len(), 36);
    assert_eq!(seen.headers["x-envoy-expected-rq-timeout-ms"], "15000");
    assert!(!seen.headers.contains_key("x-hop"), "headers named in Connection are hop-by-hop");
    assert!(!seen.headers.contains_key("x-envoy-internal"), "every request is external");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_trailers_pass_through() {
    let upstream = Upstream::start("svc").await;
    for extra in ["", H2_UPSTREAM] {
        let clusters = static_cluster("svc", &[(upstream.address, 1)], extra);
        let legate = Legate::start(&bootstrap("", &route_all_to("svc"), &clusters));
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let mut client = Client::connect(legate.listener("main"), version).await;
            // HTTP/1.1 carries trailers only to clients that say they accept them.
            let request = Request::get("/trailers").header("host", "example.com").header("te", "trailers");
            let response = client.send_streaming(request.body(Full::new(Bytes::new())).unwrap()).await;
            let collected = response.into_body().collect().await.unwrap();
            let trailers = collected.trailers().cloned().unwrap_or_default();
            assert_eq!(collected.to_bytes(), "payload");
            assert_eq!(
                trailers.get("x-checksum").map(|v| v.to_str().unwrap()),
                Some("abc123"),
                "{version:?}, upstream h2: {}",
                !extra.is_empty()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bodiless_post_reaches_an_http1_upstream_with_content_length_zero() {
    let (legate, upstream) = crate::support::legate_to_one_upstream().await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let post = Request::post("/p").header("host", "example.com").body(Full::new(Bytes::new())).unwrap();
        assert_eq!(send(legate.listener("main"), version, post).await.status, 200);
        assert_eq!(upstream.last().headers.get("content-length").map(String::as_str), Some("0"), "{version:?}");
        assert_eq!(send(legate.listener("main"), version, get("/g")).await.status, 200);
        assert_eq!(upstream.last().headers.get("content-length"), None, "GET has no body to frame");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_the_client_resets_is_abandoned_and_the_connection_serves_on() {
    let (legate, _upstream) = crate::support::legate_to_one_upstream().await;
    let mut client = Client::connect(legate.listener("main"), Version::HTTP_2).await;
    // Dropping the response future makes hyper's client send RST_STREAM (CANCEL).
    let abandoned =
        tokio::time::timeout(std::time::Duration::from_millis(200), client.send_streaming(get("/delay/3000")));
    assert!(abandoned.await.is_err(), "the slow upstream answered within 200 ms");
    let mut accounted = false;
    for _ in 0..100 {
        if legate.stat("http.ingress_http.downstream_rq_rx_reset").await == Some(1)
            && legate.stat("http.ingress_http.downstream_rq_active").await == Some(0)
        {
            accounted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(accounted, "the reset stream was not accounted as a downstream reset");
    // The other streams of the connection are untouched; a response carries what hyper's
    // HTTP/2 server used to add.
    let answer = client.send(get("/")).await;
    assert_eq!((answer.status.as_u16(), answer.version), (200, Version::HTTP_2));
    assert_eq!(answer.text(), "svc");
    assert_eq!(answer.header("content-length"), "3");
    assert!(httpdate::parse_http_date(answer.header("date")).is_ok(), "{}", answer.header("date"));
    assert_eq!(legate.stat("http.ingress_http.downstream_rq_http2_total").await, Some(2));
    assert_eq!(legate.stat("http.ingress_http.downstream_cx_http2_total").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_arriving_in_pieces_streams_to_an_http2_upstream_as_it_comes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start("echo").await;
    let clusters = static_cluster("echo", &[(upstream.address, 1)], H2_UPSTREAM);
    let legate = Legate::start(&bootstrap("", &route_all_to("echo"), &clusters));
    let mut stream = tokio::net::TcpStream::connect(legate.listener("main")).await.unwrap();
    let mut received = Vec::new();
    // Each piece is sent only once the one before came back through the upstream's echo:
    // nothing but the piece itself moves the HTTP/2 connection to send it.
    for (i, piece) in [&b"5\r\nfirst\r\n"[..], b"6\r\nsecond\r\n", b"5\r\nthird\r\n0\r\n\r\n"].iter().enumerate() {
        if i == 0 {
            stream
                .write_all(b"POST /echo HTTP/1.1\r\nhost: example.com\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
        }
        stream.write_all(piece).await.unwrap();
        let word = ["first", "second", "third"][i];
        let arrived = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !String::from_utf8_lossy(&received).contains(word) {
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "legate closed the connection");
                received.extend_from_slice(&buf[..n]);
            }
        });
        assert!(arrived.await.is_ok(), "{word:?} did not come back: {}", String::from_utf8_lossy(&received));
    }
    assert!(String::from_utf8_lossy(&received).starts_with("HTTP/1.1 200 OK\r\n"));
}
