//! The admin server: Envoy's admin API (paths, formats, JSON shapes and status codes),
//! one handler per endpoint. Handlers read snapshots and stats only; the mutating ones
//! (`/quitquitquit`, `/healthcheck/*`, `/logging`) require POST, as in Envoy.

mod clusters;
mod config_dump;
mod info;

use std::cell::Cell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use http::{Method, Request, Response, StatusCode, header};
use http_body::Body as _;
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;

use crate::config::bootstrap::AdminSpec;
use crate::http::access_log::{AccessLogger, LogContext, request_head};
use crate::http::flags::ResponseFlags;
use crate::listener::{HcmStats, ListenerStats, accept_failed, bind_reuseport};
use crate::server::ServerShared;
use crate::worker::LocalExec;

/// Shared state the handlers read.
pub type AdminState = Arc<ServerShared>;

/// An admin response body: whole, or made chunk by chunk while it is sent (`/clusters` of
/// 100 000 clusters is about 1 GB of text, which must not be held at once).
pub type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

/// A body of the chunks `chunks` yields, made as the client reads them.
pub fn streamed(chunks: impl Iterator<Item = Bytes> + Send + 'static) -> AdminBody {
    StreamBody::new(futures_util::stream::iter(chunks.map(|chunk| Ok(Frame::data(chunk))))).boxed_unsync()
}

/// Binds the admin address and serves it on its own thread (Envoy's main thread runs
/// admin; here the worker threads are never disturbed by admin work).
pub fn start(spec: &AdminSpec, state: AdminState) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let socket = bind_reuseport(spec.address)?;
    let address = socket.local_addr()?;
    let access_logs: Vec<AccessLogger> =
        spec.access_logs.iter().map(AccessLogger::new).collect::<std::io::Result<_>>()?;
    let thread = std::thread::Builder::new().name("legate-admin".into()).spawn(move || {
        crate::server::yield_to_workers(crate::server::ADMIN_NICE);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("admin runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, serve(socket, state, access_logs.into()));
    })?;
    Ok((address, thread))
}

async fn serve(socket: std::net::TcpListener, state: AdminState, access_logs: Rc<[AccessLogger]>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(socket) else {
        tracing::error!("cannot register the admin socket");
        return;
    };
    // Envoy's admin listener and connection manager stats: `listener.admin.*` (its one
    // thread is `main_thread`) and `http.admin.*`.
    let stats = Rc::new((
        ListenerStats::new(&state.store, "admin", ["main_thread".to_owned()]),
        HcmStats::new(&state.store, "admin"),
    ));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        let local = stream.local_addr().unwrap_or(remote);
        let (state, access_logs, stats) = (state.clone(), access_logs.clone(), stats.clone());
        tokio::task::spawn_local(async move {
            let opened = Instant::now();
            let drain_after = Rc::new(Cell::new(false));
            let (drain_state, drain_flag) = (state.clone(), drain_after.clone());
            stats.0.opened(0);
            stats.1.downstream_cx_total.inc();
            stats.1.downstream_cx_active.inc();
            let connection_stats = stats.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let (state, access_logs, stats) = (state.clone(), access_logs.clone(), connection_stats.clone());
                let drain_after = drain_after.clone();
                async move {
                    let start = (SystemTime::now(), Instant::now());
                    let http = &stats.1;
                    http.downstream_rq_total.inc();
                    http.downstream_rq_active.inc();
                    if request.version() == http::Version::HTTP_2 {
                        http.downstream_rq_http2_total.inc();
                    } else {
                        http.downstream_rq_http1_total.inc();
                    }
                    let logged = (!access_logs.is_empty())
                        .then(|| request_head(request.method(), request.uri(), request.version(), request.headers()));
                    let version = request.version();
                    let response = handle(&state, request);
                    if response.extensions().get::<DrainAfterResponse>().is_some() {
                        // HTTP/1.1: once the answer is written and the connection closed (the
                        // process may exit as soon as the drain ends, before a response still
                        // in this thread's buffers is sent). HTTP/2 keeps its connection: now.
                        if version == http::Version::HTTP_2 { state.begin_drain() } else { drain_after.set(true) }
                    }
                    http.downstream_rq_active.dec();
                    http.downstream_rq_completed.inc();
                    let class = usize::from((response.status().as_u16() / 100).clamp(1, 5) - 1);
                    http.downstream_rq_class[class].inc();
                    http.downstream_rq_time.record(start.1.elapsed().as_millis() as u64);
                    if let Some(head) = logged {
                        let context = LogContext {
                            start_time: start.0,
                            request: Some(&head),
                            response_headers: Some(response.headers()),
                            response_code: response.status().as_u16(),
                            response_flags: ResponseFlags::NONE,
                            response_code_details: "admin_filter_response",
                            bytes_received: 0,
                            bytes_sent: response.body().size_hint().exact().unwrap_or(0),
                            duration: start.1.elapsed(),
                            protocol: Some(head.version),
                            upstream_host: None,
                            upstream_cluster: None,
                            downstream_remote: remote,
                            downstream_local: local,
                            route_name: None,
                        };
                        access_logs.iter().for_each(|log| log.log(&context));
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = auto::Builder::new(LocalExec).serve_connection(TokioIo::new(stream), service).await;
            if drain_flag.get() {
                drain_state.begin_drain();
            }
            stats.0.closed(0, opened.elapsed());
            stats.1.downstream_cx_active.dec();
            stats.1.downstream_cx_destroy.inc();
            stats.1.downstream_cx_length_ms.record(opened.elapsed().as_millis() as u64);
        });
    }
}

/// Marks a response after which the server drains and exits (`/quitquitquit`).
#[derive(Clone, Copy)]
pub(super) struct DrainAfterResponse;

/// A parsed admin request: path and query parameters.
pub struct AdminRequest {
    pub method: Method,
    pub path: String,
    pub params: HashMap<String, String>,
}

impl AdminRequest {
    /// A query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// Whether `?format=json` was asked for.
    pub fn wants_json(&self) -> bool {
        self.param("format") == Some("json")
    }
}

/// One endpoint: path, help text, whether it changes server state (POST only).
struct Endpoint {
    path: &'static str,
    help: &'static str,
    mutates: bool,
    handler: fn(&AdminState, &AdminRequest) -> Response<AdminBody>,
}

const ENDPOINTS: &[Endpoint] = &[
    Endpoint { path: "/", help: "Admin home page", mutates: false, handler: info::help },
    Endpoint { path: "/clusters", help: "upstream cluster status", mutates: false, handler: clusters::clusters },
    Endpoint {
        path: "/config_dump",
        help: "dump current Envoy configs (experimental)",
        mutates: false,
        handler: config_dump::config_dump,
    },
    Endpoint {
        path: "/healthcheck/fail",
        help: "cause the server to fail health checks",
        mutates: true,
        handler: info::healthcheck_fail,
    },
    Endpoint {
        path: "/healthcheck/ok",
        help: "cause the server to pass health checks",
        mutates: true,
        handler: info::healthcheck_ok,
    },
    Endpoint { path: "/help", help: "print out list of admin commands", mutates: false, handler: info::help },
    Endpoint { path: "/listeners", help: "print listener info", mutates: false, handler: info::listeners },
    Endpoint { path: "/logging", help: "query/change logging levels", mutates: true, handler: info::logging },
    Endpoint { path: "/quitquitquit", help: "exit the server", mutates: true, handler: info::quit },
    Endpoint {
        path: "/ready",
        help: "print server state, return 200 if LIVE, otherwise return 503",
        mutates: false,
        handler: info::ready,
    },
    Endpoint {
        path: "/server_info",
        help: "print server version/status information",
        mutates: false,
        handler: info::server_info,
    },
    Endpoint { path: "/stats", help: "print server stats", mutates: false, handler: info::stats },
    Endpoint {
        path: "/stats/prometheus",
        help: "print server stats in prometheus format",
        mutates: false,
        handler: info::stats_prometheus,
    },
];

fn handle(state: &AdminState, request: Request<Incoming>) -> Response<AdminBody> {
    let path = request.uri().path().to_owned();
    let params = request
        .uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect()
        })
        .unwrap_or_default();
    let request = AdminRequest { method: request.method().clone(), path, params };
    let Some(endpoint) = ENDPOINTS.iter().find(|e| e.path == request.path) else {
        let mut body = String::from("invalid path. admin commands are:\n");
        body.push_str(&help_text());
        return text(StatusCode::NOT_FOUND, body);
    };
    if endpoint.mutates && request.method != Method::POST && !(endpoint.path == "/logging" && request.params.is_empty())
    {
        return text(StatusCode::METHOD_NOT_ALLOWED, format!("Method {} not allowed, POST required.", request.method));
    }
    (endpoint.handler)(state, &request)
}

fn help_text() -> String {
    let mut out = String::new();
    for e in ENDPOINTS.iter().filter(|e| e.path != "/") {
        out.push_str(&format!("  {}: {}\n", e.path, e.help));
    }
    out
}

/// The content type of text responses.
pub const TEXT: &str = "text/plain; charset=UTF-8";

/// An address as Envoy's admin protos show it.
pub fn socket_address(address: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(address.port()))),
            ..Default::default()
        })),
    }
}

/// A `text/plain` response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<AdminBody> {
    respond(status, TEXT, body.into())
}

/// An `application/json` response, pretty-printed as Envoy prints it.
pub fn json(value: &serde_json::Value) -> Response<AdminBody> {
    let body = serde_json::to_string_pretty(value).unwrap_or_default();
    respond(StatusCode::OK, "application/json", body.into())
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<AdminBody> {
    with_headers(status, content_type, Full::new(body).boxed_unsync())
}

/// A response of `body` with Envoy's admin headers.
pub fn with_headers(status: StatusCode, content_type: &'static str, body: AdminBody) -> Response<AdminBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache, max-age=0"));
    headers.insert("x-content-type-options", header::HeaderValue::from_static("nosniff"));
    response
}

/// Decodes `%XX` escapes and `+` in a query component.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        assert_eq!(super::percent_decode("a%2Eb+c%"), "a.b c%");
        assert_eq!(super::percent_decode("%zz%41"), "%zzA");
    }
}
