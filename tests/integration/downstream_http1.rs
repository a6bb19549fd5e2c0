//! legate's HTTP/1.1 codec towards clients, on raw sockets: what Envoy's codec does with
//! `Expect: 100-continue`, pipelined requests, and a client that leaves mid-request.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::legate_to_one_upstream;

/// Reads from `stream` until `reply` ends with `end`, or 5 s pass.
async fn read_until(stream: &mut TcpStream, reply: &mut Vec<u8>, end: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(reply).ends_with(end) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => reply.extend_from_slice(&buf[..n]),
            _ => panic!("no {end:?} in {}", String::from_utf8_lossy(reply)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_and_not_forwarded() {
    let (legate, upstream) = legate_to_one_upstream().await;
    let mut stream = TcpStream::connect(legate.listener("main")).await.unwrap();
    stream
        .write_all(b"PUT /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    read_until(&mut stream, &mut reply, "\r\n\r\n").await;
    assert_eq!(String::from_utf8_lossy(&reply), "HTTP/1.1 100 Continue\r\n\r\n", "before any body byte was sent");
    stream.write_all(b"hello").await.unwrap();
    reply.clear();
    read_until(&mut stream, &mut reply, "\r\n\r\nsvc").await;
    assert!(reply.starts_with(b"HTTP/1.1 200 OK\r\n"), "{}", String::from_utf8_lossy(&reply));
    let seen = upstream.last();
    assert_eq!(seen.body_len, 5);
    assert!(!seen.headers.contains_key("expect"), "legate answered the expectation itself: {:?}", seen.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (legate, upstream) = legate_to_one_upstream().await;
    let mut stream = TcpStream::connect(legate.listener("main")).await.unwrap();
    stream
        .write_all(
            b"GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\nPOST /status/202 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
              GET /status/203 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    let statuses: Vec<&str> = reply.match_indices("HTTP/1.1 ").map(|(at, _)| &reply[at + 9..at + 12]).collect();
    assert_eq!(statuses, ["201", "202", "203"], "{reply}");
    assert_eq!(upstream.count(), 3);
    assert_eq!(legate.stat("http.ingress_http.downstream_cx_total").await, Some(1));
}

/// Envoy closes the connection, and resets its streams, when the client closes it: the
/// request waiting on a slow upstream is abandoned and counted as reset, not answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_while_waiting_abandons_its_request() {
    let (legate, _upstream) = legate_to_one_upstream().await;
    let mut stream = TcpStream::connect(legate.listener("main")).await.unwrap();
    stream.write_all(b"GET /delay/3000 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while legate.stat("http.ingress_http.downstream_rq_rx_reset").await != Some(1) {
        assert!(tokio::time::Instant::now() < deadline, "the abandoned request was not reset");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(legate.stat("http.ingress_http.downstream_rq_active").await, Some(0));
    assert_eq!(legate.stat("http.ingress_http.downstream_cx_active").await, Some(0));
}
