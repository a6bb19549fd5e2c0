//! A minimal, fast upstream for `bench/run.sh`.
//!
//! `cargo run --release --example bench_upstream -- <port> [threads]` serves HTTP/1.1 and
//! h2c (prior knowledge, detected by hyper-util's auto builder) on 127.0.0.1:<port>:
//!
//! - `GET /`      → 200, `ok\n`
//! - `GET /16k`   → 200, 16 KiB body
//! - `POST /post` → reads the request body fully, then 200, `ok\n`
//! - `GET /_accepted` → 200, the number of connections accepted so far (including the one
//!   asking), in decimal: `bench/run.sh` reads it before and after a run to show how many
//!   connections a proxy opened to the upstream during it
//! - anything else → 404
//!
//! With `threads` = 1 (the default) it runs on a current-thread runtime, which is what the
//! benchmark uses: the upstream shares one pinned CPU with the load generator, so extra
//! threads would only add scheduling. With more threads it uses a multi-thread runtime.
//! No logging: errors on a connection just close it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;

static SMALL: &[u8] = b"ok\n";
static BIG: [u8; 16 * 1024] = [b'x'; 16 * 1024];
static ACCEPTED: AtomicU64 = AtomicU64::new(0);

fn respond(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => respond(StatusCode::OK, Bytes::from_static(SMALL)),
        (&Method::GET, "/16k") => respond(StatusCode::OK, Bytes::from_static(&BIG)),
        (&Method::GET, "/_accepted") => {
            respond(StatusCode::OK, Bytes::from(ACCEPTED.load(Ordering::Relaxed).to_string()))
        }
        (&Method::POST, "/post") => match req.into_body().collect().await {
            Ok(_) => respond(StatusCode::OK, Bytes::from_static(SMALL)),
            Err(_) => respond(StatusCode::BAD_REQUEST, Bytes::new()),
        },
        _ => respond(StatusCode::NOT_FOUND, Bytes::new()),
    };
    Ok(resp)
}

async fn serve(port: u16) -> std::io::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = TcpListener::bind(addr).await?;
    let builder = Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => continue,
        };
        ACCEPTED.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let _ = builder.serve_connection(TokioIo::new(stream), service_fn(handle)).await;
        });
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: bench_upstream <port> [threads]");
        std::process::exit(2);
    });
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);

    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
    .expect("tokio runtime");

    if let Err(e) = rt.block_on(serve(port)) {
        eprintln!("bench_upstream: {e}");
        std::process::exit(1);
    }
}
