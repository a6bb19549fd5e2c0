//! legate's HTTP/1.1 upstream client against an upstream that writes raw bytes: the response
//! framings RFC 9112 allows, connection reuse after each, an upstream closing an idle
//! pooled connection, an upstream answering before the request body has arrived, and how
//! each connection's end is counted.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::support::{Legate, bootstrap, raw_exchange, route_all_to, send, static_cluster};

/// What the scripted upstream does after writing a response.
#[derive(Clone, Copy)]
enum Then {
    KeepOpen,
    Close,
    /// Closes the connection this long after answering, unless another request came.
    CloseIdleAfter(Duration),
    /// Answers without reading the request body, then holds the connection open a while.
    AnswerEarly,
    /// Holds the connection until legate closes it.
    WaitForClose,
}

/// The scripted answer to a request: `(method, path)` → raw response bytes and what next.
fn script(method: &str, path: &str) -> (&'static [u8], Then) {
    match (method, path) {
        (_, "/close-delimited") => (b"HTTP/1.1 200 OK\r\nx-framing: close\r\n\r\nuntil the close", Then::Close),
        (_, "/continue") => {
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nafter", Then::KeepOpen)
        }
        (_, "/chunked") => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4;ext=1\r\nchun\r\n3\r\nked\r\n0\r\n\r\n",
            Then::KeepOpen,
        ),
        ("HEAD", "/head") => (b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n", Then::KeepOpen),
        (_, "/no-content") => (b"HTTP/1.1 204 No Content\r\n\r\n", Then::KeepOpen),
        (_, "/bye") => {
            (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nbye", Then::CloseIdleAfter(Duration::from_millis(100)))
        }
        (_, "/cut-mid-body") => (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part", Then::Close),
        (_, "/never") => (b"", Then::WaitForClose),
        (_, "/bad-status") => (b"HTTP/1.1 2x0 OK\r\ncontent-length: 2\r\n\r\nok", Then::WaitForClose),
        (_, "/bad-field") => (b"HTTP/1.1 200 OK\r\nno colon here\r\ncontent-length: 2\r\n\r\nok", Then::WaitForClose),
        (_, "/bad-chunk") => (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", Then::WaitForClose),
        (_, "/upload") => (
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big!",
            Then::AnswerEarly,
        ),
        _ => (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", Then::KeepOpen),
    }
}

/// Starts the scripted upstream on a loopback port.
async fn scripted_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    address
}

async fn serve(mut stream: TcpStream) {
    let mut pending = Vec::new();
    let mut idle_close = None;
    loop {
        let head_end = loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let read = match idle_close {
                Some(after) => match tokio::time::timeout(after, stream.read(&mut chunk)).await {
                    Ok(read) => read,
                    Err(_) => return,
                },
                None => stream.read(&mut chunk).await,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&pending[..head_end]).into_owned();
        pending.drain(..head_end);
        let mut request_line = head.split_whitespace();
        let (method, path) = (request_line.next().unwrap_or(""), request_line.next().unwrap_or(""));
        let (response, then) = script(method, path);
        if !matches!(then, Then::AnswerEarly) {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            while pending.len() < length {
                let mut chunk = [0u8; 65536];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&chunk[..n]),
                }
            }
            pending.drain(..length);
        }
        if stream.write_all(response).await.is_err() {
            return;
        }
        match then {
            Then::KeepOpen => {}
            Then::Close => return,
            Then::CloseIdleAfter(after) => idle_close = Some(after),
            Then::AnswerEarly => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                return;
            }
            Then::WaitForClose => {
                let mut chunk = [0u8; 4096];
                while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
                return;
            }
        }
    }
}

fn request(method: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder().method(method).uri(path).header("host", "example.com").body(Full::new(Bytes::new())).unwrap()
}

async fn legate_to_scripted_upstream() -> Legate {
    let upstream = scripted_upstream().await;
    let clusters = static_cluster("raw", &[(upstream, 1)], "");
    Legate::start_with(&bootstrap("", &route_all_to("raw"), &clusters), &["--concurrency", "1"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_framing_arrives_intact_and_keeps_the_connection_when_it_can() {
    let legate = legate_to_scripted_upstream().await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let answer = send(legate.listener("main"), version, request("GET", "/close-delimited")).await;
        assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "until the close"), "{version:?}");
        assert_eq!(answer.header("x-framing"), "close");

        let answer = send(legate.listener("main"), version, request("POST", "/continue")).await;
        assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "after"), "{version:?}");

        let answer = send(legate.listener("main"), version, request("GET", "/chunked")).await;
        assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "chunked"), "{version:?}");
        let answer = send(legate.listener("main"), version, request("HEAD", "/head")).await;
        assert_eq!(answer.status, 200, "{version:?}");
        assert_eq!(answer.header("content-length"), "1000", "a HEAD response keeps its declared length");
        assert!(answer.body.is_empty());

        let answer = send(legate.listener("main"), version, request("GET", "/no-content")).await;
        assert_eq!((answer.status.as_u16(), answer.body.len()), (204, 0), "{version:?}");
    }
    // Each close-delimited body ends its connection; every other response leaves it for the
    // next request: three connections for the ten requests.
    assert_eq!(legate.stat("cluster.raw.upstream_cx_total").await, Some(3));
    assert_eq!(legate.stat("cluster.raw.upstream_rq_total").await, Some(10));
    // The two closed ones carried one request (the first close-delimited) and five (the
    // next four, then the second close-delimited); the third is still open.
    let raw = r#"envoy_cluster_name="raw""#;
    assert_eq!(legate.histogram("envoy_cluster_upstream_rq_per_cx", raw).await, Some((2, 6)));
    // Three connects, two connection lengths (over loopback, each well under a second).
    let connects = legate.histogram("envoy_cluster_upstream_cx_connect_ms", raw).await.unwrap();
    let lengths = legate.histogram("envoy_cluster_upstream_cx_length_ms", raw).await.unwrap();
    assert_eq!((connects.0, lengths.0), (3, 2));
    assert!(connects.1 < 3000 && lengths.1 < 2000, "{connects:?} {lengths:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_the_upstream_closes_is_dropped_at_once_and_replaced() {
    let legate = legate_to_scripted_upstream().await;
    let answer = send(legate.listener("main"), Version::HTTP_11, request("GET", "/bye")).await;
    assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "bye"));
    // The upstream closes the pooled connection 100 ms later; legate notices without a
    // request having to stumble on it.
    legate.wait_for_stat("cluster.raw.upstream_cx_destroy", 1).await;
    assert_eq!(legate.stat("cluster.raw.upstream_cx_active").await, Some(0));
    assert_eq!(legate.stat("cluster.raw.upstream_cx_destroy_remote").await, Some(1));
    assert_eq!(legate.stat("cluster.raw.upstream_cx_destroy_with_active_rq").await, Some(0));

    let answer = send(legate.listener("main"), Version::HTTP_11, request("GET", "/bye")).await;
    assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "bye"));
    assert_eq!(legate.stat("cluster.raw.upstream_cx_total").await, Some(2));
    assert_eq!(legate.stat("cluster.raw.upstream_rq_200").await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_closed_each_upstream_connection_and_with_what_in_flight_is_counted_as_envoy_does() {
    let legate = legate_to_scripted_upstream().await;
    let main = legate.listener("main");
    // The upstream ends a close-delimited body by closing: remote, nothing in flight.
    let reply = raw_exchange(main, b"GET /close-delimited HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").await;
    assert!(reply.contains("until the close"), "{reply}");
    // The upstream closes in the middle of a body: remote, with the request in flight.
    let reply = raw_exchange(main, b"GET /cut-mid-body HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200") && reply.contains("only part"), "{reply}");
    legate.wait_for_stat("cluster.raw.upstream_cx_destroy", 2).await;
    // The client goes away while the upstream has not answered: legate closes the upstream
    // connection with the request in flight.
    let mut client = TcpStream::connect(main).await.unwrap();
    client.write_all(b"GET /never HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    legate.wait_for_stat("cluster.raw.upstream_rq_active", 1).await;
    drop(client);
    legate.wait_for_stat("cluster.raw.upstream_cx_destroy", 3).await;
    for (stat, value) in [
        ("upstream_cx_destroy_remote", 2),
        ("upstream_cx_destroy_remote_with_active_rq", 1),
        ("upstream_cx_destroy_local", 1),
        ("upstream_cx_destroy_local_with_active_rq", 1),
        ("upstream_cx_destroy_with_active_rq", 2),
        ("upstream_rq_cancelled", 0),
    ] {
        assert_eq!(legate.stat(&format!("cluster.raw.{stat}")).await, Some(value), "{stat}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_breaking_http1_gets_502_protocol_error_as_in_envoy() {
    let legate = legate_to_scripted_upstream().await;
    for path in ["/bad-status", "/bad-field"] {
        let reply = raw_exchange(
            legate.listener("main"),
            format!("GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{path}: {reply}");
        assert!(
            reply.ends_with("upstream connect error or disconnect/reset before headers. reset reason: protocol error"),
            "{path}: {reply}"
        );
    }
    // Past the head, the response has begun: the client gets the head, then the close.
    let reply = raw_exchange(legate.listener("main"), b"GET /bad-chunk HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.ends_with("\r\n\r\n"), "{reply}");
    legate.wait_for_stat("cluster.raw.upstream_cx_destroy", 3).await;
    assert_eq!(legate.stat("cluster.raw.upstream_cx_protocol_error").await, Some(3), "one a connection");
    assert_eq!(legate.stat("cluster.raw.upstream_rq_502").await, Some(2));
    assert_eq!(legate.stat("cluster.raw.upstream_cx_destroy_local_with_active_rq").await, Some(3));
}

/// A listener that never accepts, its accept queue full: a further connect to it gets no
/// answer to its SYN, so it stays under way (the kernel retries after a second).
fn unanswering_upstream() -> (SocketAddr, TcpListener, std::net::TcpStream) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = socket.local_addr().unwrap();
    let listener = socket.listen(0).unwrap();
    let filler = std::net::TcpStream::connect(address).unwrap();
    (address, listener, filler)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_given_up_while_its_connection_is_being_made_is_counted_cancelled() {
    let (upstream, _listener, _filler) = unanswering_upstream();
    let clusters = static_cluster("slow", &[(upstream, 1)], "");
    let legate = Legate::start_with(&bootstrap("", &route_all_to("slow"), &clusters), &["--concurrency", "1"]);
    let mut client = TcpStream::connect(legate.listener("main")).await.unwrap();
    client.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    legate.wait_for_stat("cluster.slow.upstream_rq_pending_active", 1).await;
    drop(client);
    legate.wait_for_stat("cluster.slow.upstream_rq_pending_active", 0).await;
    assert_eq!(legate.stat("cluster.slow.upstream_rq_cancelled").await, Some(1));
    assert_eq!(legate.stat("cluster.slow.upstream_cx_connect_fail").await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_sent_before_the_request_body_arrived_reaches_the_client() {
    let legate = legate_to_scripted_upstream().await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let upload = Request::post("/upload")
            .header("host", "example.com")
            .body(Full::new(Bytes::from(vec![1u8; 2 * 1024 * 1024])))
            .unwrap();
        let answer = send(legate.listener("main"), version, upload).await;
        assert_eq!((answer.status.as_u16(), answer.text().as_str()), (413, "too big!"), "{version:?}");
    }
    // The upstream said `connection: close`: neither connection is reused.
    let answer = send(legate.listener("main"), Version::HTTP_11, request("GET", "/no-content")).await;
    assert_eq!(answer.status, 204);
    assert_eq!(legate.stat("cluster.raw.upstream_cx_total").await, Some(3));
}
