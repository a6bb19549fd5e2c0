//! Upstreams that break the protocol, for the replies a proxy makes when its upstream
//! fails after the connect: `${bad-h1}` answers HTTP/1.1 by path (`/bad-status`,
//! `/bad-field`, `/bad-chunk`, `/close`: a malformed status line, a malformed header
//! field, a chunked body whose first size is not hex, a close before any answer);
//! `${reset-h2}` resets every HTTP/2 stream (`/refuse`: REFUSED_STREAM, else
//! INTERNAL_ERROR); `${bad-h2}` sends DATA on stream 0 once the client's preface is in.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The placeholders this module serves.
pub const KINDS: [&str; 3] = ["bad-h1", "reset-h2", "bad-h2"];

/// Starts the upstream for placeholder `kind` (one of `KINDS`) on a loopback port.
pub async fn start(kind: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                match kind {
                    "bad-h1" => bad_h1(stream).await,
                    "reset-h2" => reset_h2(stream).await,
                    _ => bad_h2(stream).await,
                }
            });
        }
    });
    address
}

async fn bad_h1(mut stream: TcpStream) {
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let path = String::from_utf8_lossy(&head).split_whitespace().nth(1).unwrap_or("").to_owned();
    let answer: &[u8] = match path.as_str() {
        "/bad-status" => b"HTTP/1.1 2x0 OK\r\ncontent-length: 2\r\n\r\nok",
        "/bad-field" => b"HTTP/1.1 200 OK\r\nno colon here\r\ncontent-length: 2\r\n\r\nok",
        "/bad-chunk" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        "/close" => return,
        _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
    };
    let _ = stream.write_all(answer).await;
    drain(stream).await;
}

async fn reset_h2(stream: TcpStream) {
    let Ok(mut connection) = h2::server::handshake(stream).await else { return };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        let reason =
            if request.uri().path() == "/refuse" { h2::Reason::REFUSED_STREAM } else { h2::Reason::INTERNAL_ERROR };
        respond.send_reset(reason);
    }
}

async fn bad_h2(mut stream: TcpStream) {
    let mut preface = [0; 24];
    if stream.read_exact(&mut preface).await.is_err() {
        return;
    }
    let settings = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    let data_on_stream_0 = [0, 0, 1, 0, 0, 0, 0, 0, 0, b'x'];
    let _ = stream.write_all(&[&settings[..], &data_on_stream_0].concat()).await;
    drain(stream).await;
}

/// Reads until the proxy closes the connection.
async fn drain(mut stream: TcpStream) {
    let mut sink = [0; 4096];
    while stream.read(&mut sink).await.is_ok_and(|n| n > 0) {}
}
