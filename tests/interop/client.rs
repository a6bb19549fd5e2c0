//! Downstream clients that report failures instead of panicking (a proxy may reset a
//! stream or close a connection, and that is an observation to compare): HTTP/1.1, h2c
//! with prior knowledge, both over TLS, and raw bytes.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any one exchange may take.
const LIMIT: Duration = Duration::from_secs(10);

/// A response with its body read.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends `request` on a new connection over `protocol` (`h1`, `h2c`, `h1-tls`, `h2-tls`; over
/// TLS with SNI `server_name`).
pub async fn exchange(
    address: SocketAddr,
    protocol: &str,
    server_name: &str,
    request: Request<Full<Bytes>>,
) -> Result<Answer, String> {
    match tokio::time::timeout(LIMIT, exchange_inner(address, protocol, server_name, request)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no complete response within {LIMIT:?}")),
    }
}

async fn exchange_inner(
    address: SocketAddr,
    protocol: &str,
    server_name: &str,
    request: Request<Full<Bytes>>,
) -> Result<Answer, String> {
    let stream = TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
    let (http2, tls) = match protocol {
        "h2c" => (true, false),
        "h1-tls" => (false, true),
        "h2-tls" => (true, true),
        _ => (false, false),
    };
    if tls {
        let alpn: &[u8] = if http2 { b"h2" } else { b"http/1.1" };
        let stream = crate::support::tls_connect_to(stream, server_name, alpn, false)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        send(TokioIo::new(stream), http2, request).await
    } else {
        send(TokioIo::new(stream), http2, request).await
    }
}

async fn send<T>(io: TokioIo<T>, http2: bool, mut request: Request<Full<Bytes>>) -> Result<Answer, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let response = if http2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        // h2 carries the authority in the URI (`:authority`), not in a Host header.
        let host = request.headers_mut().remove("host").and_then(|h| h.to_str().ok().map(str::to_owned));
        let path = request.uri().path_and_query().map_or("/".to_owned(), |p| p.to_string());
        *request.uri_mut() = format!("http://{}{path}", host.as_deref().unwrap_or("example.com"))
            .parse()
            .map_err(|e| format!("bad uri: {e}"))?;
        *request.version_mut() = Version::HTTP_2;
        sender.send_request(request).await.map_err(|e| format!("h2 request: {e}"))?
    } else {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("h1 handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(request).await.map_err(|e| format!("h1 request: {e}"))?
    };
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| format!("response body: {e}"))?.to_bytes();
    Ok(Answer { status: parts.status, headers: parts.headers, body })
}

/// GET `path` (Host `admin`) over HTTP/1.1: status and body text.
pub async fn get(address: SocketAddr, path: &str) -> Result<(StatusCode, String), String> {
    let request = Request::get(path).header("host", "admin").body(Full::new(Bytes::new())).unwrap();
    let answer = exchange(address, "h1", "legate.test", request).await?;
    Ok((answer.status, String::from_utf8_lossy(&answer.body).into_owned()))
}

/// Writes raw bytes and reads until the peer closes or a complete response (by
/// `content-length`) has arrived.
pub async fn raw(address: SocketAddr, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
    stream.write_all(bytes).await.map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => reply.extend_from_slice(&buf[..n]),
            Ok(Err(e)) if reply.is_empty() => return Err(format!("read: {e}")),
            Ok(Err(_)) => break,
        }
        if complete(&reply) {
            break;
        }
    }
    Ok(reply)
}

/// Whether `reply` holds a head and a `content-length` body.
fn complete(reply: &[u8]) -> bool {
    let Some(end) = reply.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&reply[..end]).to_ascii_lowercase();
    let length =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
    length.is_some_and(|n| reply.len() >= end + 4 + n)
}
