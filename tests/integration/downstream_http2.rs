//! Downstream HTTP/2 as clients see it: many streams and large bodies under flow control
//! (through the h2 crate's client, an independent implementation), trailers both ways, and
//! the frames legate answers a raw client with (its settings, PING, refused and malformed
//! streams, connection errors).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Legate, Upstream, bootstrap, routes, static_cluster};

const H2_UPSTREAM: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }\n";

/// Legate with `/h1` routed to an HTTP/1.1 cluster and everything else to an HTTP/2 one, both
/// over the same upstream, and the given `http2_protocol_options` on its listener.
async fn legate_with_http2_options(options: &str) -> (Legate, Upstream) {
    let upstream = Upstream::start("svc").await;
    let clusters = format!(
        "{}{}",
        static_cluster("h1", &[(upstream.address, 1)], ""),
        static_cluster("h2", &[(upstream.address, 1)], H2_UPSTREAM)
    );
    let route = routes(
        "              - match: { prefix: \"/h1\" }\n                route: { cluster: h1, prefix_rewrite: \"/\" }\n              - match: { prefix: \"/\" }\n                route: { cluster: h2 }\n",
    );
    let hcm = format!("          http2_protocol_options: {options}");
    (Legate::start(&bootstrap(&hcm, &route, &clusters)), upstream)
}

async fn h2_client(address: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let stream = TcpStream::connect(address).await.unwrap();
    // The client's default 64 KiB windows: legate must wait for its WINDOW_UPDATEs.
    let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(connection);
    client
}

/// Sends `body` (in 16 KiB pieces, waiting for window) while reading the response (an echo
/// answers before the request ends), and returns the response's status, body and trailers.
async fn exchange(
    client: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    body: Bytes,
    trailers: Option<HeaderMap>,
) -> (u16, Bytes, Option<HeaderMap>) {
    let request = Request::post(format!("http://example.com{path}")).body(()).unwrap();
    let (response, mut send) = client.clone().ready().await.unwrap().send_request(request, false).unwrap();
    let sending = async move {
        let mut rest = body;
        while !rest.is_empty() {
            send.reserve_capacity(rest.len().min(16 * 1024));
            let capacity = std::future::poll_fn(|cx| send.poll_capacity(cx)).await.unwrap().unwrap();
            let piece = rest.split_to(capacity.min(rest.len()));
            send.send_data(piece, rest.is_empty() && trailers.is_none()).unwrap();
        }
        if let Some(trailers) = trailers {
            send.send_trailers(trailers).unwrap();
        }
    };
    let receiving = async {
        let response = response.await.expect("response");
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut received = BytesMut::new();
        while let Some(data) = body.data().await {
            let data = data.expect("response data");
            body.flow_control().release_capacity(data.len()).unwrap();
            received.extend_from_slice(&data);
        }
        let trailers = body.trailers().await.expect("response trailers");
        (status, received.freeze(), trailers)
    };
    tokio::join!(sending, receiving).1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_with_large_bodies_round_trip_under_both_windows() {
    // Legate's windows at the minimum, the client's at the default: 300 KiB bodies each way
    // move only as WINDOW_UPDATEs come, on 16 streams at once.
    let (legate, _upstream) =
        legate_with_http2_options("{ initial_stream_window_size: 65535, initial_connection_window_size: 65535 }").await;
    let client = h2_client(legate.listener("main")).await;
    let mut exchanges = Vec::new();
    for i in 0..16u8 {
        let mut client = client.clone();
        exchanges.push(tokio::spawn(async move {
            let body = Bytes::from((0..300 * 1024).map(|j| (j as u8).wrapping_mul(i + 1)).collect::<Vec<u8>>());
            let path = if i % 2 == 0 { "/echo" } else { "/h1echo" };
            let (status, echoed, _) = exchange(&mut client, path, body.clone(), None).await;
            assert_eq!(status, 200, "{path}");
            assert_eq!(echoed.len(), body.len(), "{path}");
            assert!(echoed == body, "{path}: the echoed body differs");
        }));
    }
    for exchange in exchanges {
        exchange.await.unwrap();
    }
    assert_eq!(legate.stat("http.ingress_http.downstream_rq_http2_total").await, Some(16));
    assert_eq!(legate.stat("http.ingress_http.downstream_cx_http2_total").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_reach_an_http2_upstream_and_come_back() {
    let (legate, _upstream) = legate_with_http2_options("{}").await;
    let mut client = h2_client(legate.listener("main")).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let (status, body, echoed) = exchange(&mut client, "/echo", Bytes::from_static(b"ping"), Some(trailers)).await;
    assert_eq!((status, &body[..]), (200, &b"ping"[..]));
    let echoed = echoed.expect("trailers");
    assert_eq!(echoed.get("grpc-status").unwrap(), "0");
    assert_eq!(echoed.get("x-checksum").unwrap(), "abc");
}

/// A client speaking raw frames.
struct RawClient {
    stream: TcpStream,
    read: BytesMut,
}

#[derive(Debug)]
struct RawFrame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Bytes,
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM_AND_HEADERS: u8 = 0x5;

impl RawClient {
    /// Connects and sends the preface with an empty SETTINGS frame.
    async fn connect(address: SocketAddr) -> RawClient {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let mut client = RawClient { stream, read: BytesMut::new() };
        client.send(SETTINGS, 0, 0, &[]).await;
        client
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let mut frame = BytesMut::new();
        frame.put_uint(payload.len() as u64, 3);
        frame.put_u8(kind);
        frame.put_u8(flags);
        frame.put_u32(stream);
        frame.put_slice(payload);
        self.stream.write_all(&frame).await.unwrap();
    }

    /// Sends a GET for `path` on `stream`, adding the `extra` fields, all as HPACK literals
    /// without indexing and with literal names.
    async fn get(&mut self, stream: u32, path: &str, extra: &[(&str, &str)]) {
        let mut block = Vec::new();
        let fields = [(":method", "GET"), (":scheme", "http"), (":authority", "example.com"), (":path", path)];
        for (name, value) in fields.iter().chain(extra) {
            block.push(0x00);
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        self.send(HEADERS, END_STREAM_AND_HEADERS, stream, &block).await;
    }

    /// The next frame, or `None` once legate closed the connection.
    async fn next(&mut self) -> Option<RawFrame> {
        loop {
            if self.read.len() >= 9 {
                let len =
                    (usize::from(self.read[0]) << 16) | (usize::from(self.read[1]) << 8) | usize::from(self.read[2]);
                if self.read.len() >= 9 + len {
                    let mut head = self.read.split_to(9);
                    head.advance(3);
                    let (kind, flags, stream) = (head.get_u8(), head.get_u8(), head.get_u32());
                    return Some(RawFrame { kind, flags, stream, payload: self.read.split_to(len).freeze() });
                }
            }
            let read = tokio::time::timeout(Duration::from_secs(5), self.stream.read_buf(&mut self.read));
            if read.await.expect("legate answered within 5 s").unwrap() == 0 {
                return None;
            }
        }
    }

    /// The next frame of `kind` (and on `stream`, for stream frames), skipping others.
    async fn next_of(&mut self, kind: u8, stream: u32) -> RawFrame {
        loop {
            let frame = self.next().await.expect("the connection is open");
            if frame.kind == kind && frame.stream == stream {
                return frame;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_settings_are_advertised_and_streams_beyond_the_limit_refused() {
    let (legate, upstream) = legate_with_http2_options("{ max_concurrent_streams: 1 }").await;
    let mut client = RawClient::connect(legate.listener("main")).await;
    let settings = client.next_of(SETTINGS, 0).await;
    let values: Vec<(u16, u32)> = settings
        .payload
        .chunks(6)
        .map(|s| (u16::from_be_bytes([s[0], s[1]]), u32::from_be_bytes([s[2], s[3], s[4], s[5]])))
        .collect();
    assert!(values.contains(&(0x3, 1)), "MAX_CONCURRENT_STREAMS: {values:?}");
    assert!(values.contains(&(0x4, 1 << 20)), "INITIAL_WINDOW_SIZE: {values:?}");
    client.get(1, "/delay/300", &[]).await;
    client.get(3, "/", &[]).await;
    let refused = client.next_of(RST_STREAM, 3).await;
    assert_eq!(&refused.payload[..], &7u32.to_be_bytes(), "REFUSED_STREAM");
    let response = client.next_of(HEADERS, 1).await;
    assert_eq!(response.payload[0], 0x88, "`:status 200` as the static table's entry 8");
    assert_eq!(upstream.count(), 1, "the refused stream never reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_resets_its_stream_and_the_connection_serves_on() {
    let (legate, upstream) = legate_with_http2_options("{}").await;
    let mut client = RawClient::connect(legate.listener("main")).await;
    // Uppercase field names and connection-specific fields make a request malformed
    // (RFC 9113 §8.2).
    client.get(1, "/", &[("X-Upper", "1")]).await;
    client.get(3, "/", &[("connection", "keep-alive")]).await;
    client.get(5, "/", &[]).await;
    for stream in [1, 3] {
        let reset = client.next_of(RST_STREAM, stream).await;
        assert_eq!(&reset.payload[..], &1u32.to_be_bytes(), "stream {stream}: PROTOCOL_ERROR");
    }
    client.next_of(HEADERS, 5).await;
    assert_eq!(upstream.count(), 1);
    // Cookies split across fields reach the (HTTP/1.1) upstream as one (RFC 9113 §8.2.3).
    client.get(7, "/h1", &[("cookie", "a=1"), ("cookie", "b=2")]).await;
    client.next_of(HEADERS, 7).await;
    assert_eq!(upstream.last().headers.get("cookie").map(String::as_str), Some("a=1; b=2"));
    // PING is answered with the same payload.
    client.send(PING, 0, 0, b"12345678").await;
    let pong = client.next_of(PING, 0).await;
    assert_eq!((pong.flags, &pong.payload[..]), (0x1, &b"12345678"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_error_closes_the_connection_with_goaway() {
    let (legate, _upstream) = legate_with_http2_options("{}").await;
    let mut client = RawClient::connect(legate.listener("main")).await;
    client.get(1, "/", &[]).await;
    client.next_of(HEADERS, 1).await;
    // Stream ids a client opens are odd.
    client.get(2, "/", &[]).await;
    let goaway = client.next_of(GOAWAY, 0).await;
    assert_eq!(&goaway.payload[..4], &1u32.to_be_bytes(), "last stream processed");
    assert_eq!(&goaway.payload[4..8], &1u32.to_be_bytes(), "PROTOCOL_ERROR");
    while client.next().await.is_some() {}
    assert_eq!(legate.stat("http.ingress_http.downstream_cx_protocol_error").await, Some(1));
}
