//! Binding and accepting: every worker has its own `SO_REUSEPORT` socket per listener, so
//! the kernel spreads connections and no accept queue is shared between threads.

use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use bytes::BytesMut;
use futures_util::task::AtomicWaker;
use socket2::{Domain, Socket, Type};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::inspect::{self, Inspected};
use super::{ChainRuntime, HttpChain, ListenerRuntime, tcp_proxy};
use crate::clock::{self, Ticking};
use crate::config::filter_chain::ConnectionFacts;
use crate::config::hcm::Codec;
use crate::config::listener::ListenerFilter;
use crate::http::body::BodyError;
use crate::http::h1::server::H1Server;
use crate::http::h2::PREFACE;
use crate::http::h2::server::H2Server;
use crate::http::h2::stream;
use crate::http::proxy::{self, ConnContext};
use crate::transport::{self, Transport};
use crate::worker::Worker;

/// How long a draining listener waits for a just-accepted connection's first request.
const FIRST_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Binds a listening socket with `SO_REUSEPORT`, so each worker can bind the same address.
pub fn bind_reuseport(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// After a failed accept (out of file descriptors and the like): backs off briefly before
/// the next, which would otherwise fail at once, over and over, while the connection that
/// could not be taken waits in the backlog.
pub async fn accept_failed(error: std::io::Error) {
    tracing::warn!(%error, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
}

/// Accepts on `socket` until `drain` turns true, serving each connection on this worker;
/// then asks open connections to close gracefully and waits for them.
/// A TCP proxy's connections are not closed by the drain, as Envoy's are not: they end
/// when either side closes, or with the process.
pub async fn serve_listener(
    socket: std::net::TcpListener,
    listener: Arc<ListenerRuntime>,
    worker: Rc<Worker>,
    drain: watch::Receiver<bool>,
) {
    let socket = match TcpListener::from_std(socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(listener = %listener.spec.name, error = %e, "cannot register listener socket");
            return;
        }
    };
    let mut drain_accept = drain.clone();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, remote)) => {
                    let accepted = serve_accepted(stream, remote, listener.clone(), worker.clone(), drain.clone());
                    connections.spawn_local(Ticking::new(accepted));
                }
                Err(e) => accept_failed(e).await,
            },
            _ = drain_accept.wait_for(|d| *d) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(socket);
    while connections.join_next().await.is_some() {}
}

/// Chooses an accepted connection's filter chain, after the listener filters (if any) have
/// read what they look for, and serves the connection with it; with no chain for it, closes
/// it (`no_filter_chain_match`), as Envoy does.
async fn serve_accepted(
    tcp: TcpStream,
    remote: SocketAddr,
    listener: Arc<ListenerRuntime>,
    worker: Rc<Worker>,
    drain: watch::Receiver<bool>,
) {
    let local = tcp.local_addr().unwrap_or(listener.spec.address);
    let inspected = if listener.spec.listener_filters.is_empty() {
        Inspected::default()
    } else {
        match inspect_within(&tcp, &listener).await {
            Some(inspected) => inspected,
            None => return,
        }
    };
    let facts = ConnectionFacts {
        local,
        remote,
        server_name: &inspected.server_name,
        transport_protocol: if inspected.tls { "tls" } else { "raw_buffer" },
        application_protocols: &inspected.alpn,
    };
    match listener.select(&facts) {
        Some(ChainRuntime::Http(chain)) => {
            let ctx = Rc::new(ConnContext {
                local,
                listener: chain.clone(),
                worker,
                remote,
                secure: chain.tls.is_some(),
                codec_counted: Default::default(),
                active_streams: Default::default(),
                idle_since: std::cell::Cell::new(clock::now()),
            });
            serve_connection(tcp, ctx, drain).await;
        }
        Some(ChainRuntime::TcpProxy(chain)) => {
            tcp_proxy::serve_connection(tcp, chain.clone(), worker, remote, local).await;
        }
        None => listener.stats.no_filter_chain_match.inc(),
    }
}

/// The listener filters, in order, under `listener_filters_timeout`. `None`: the connection
/// is to be closed (a filter said so, or the timeout passed without
/// `continue_on_listener_filters_timeout`).
async fn inspect_within(tcp: &TcpStream, listener: &ListenerRuntime) -> Option<Inspected> {
    let spec = &listener.spec;
    let stats = &listener.stats;
    stats.downstream_pre_cx_active.inc();
    let mut inspected = Inspected::default();
    let inspecting = async {
        for filter in &spec.listener_filters {
            let keep = match (filter, &listener.tls_inspector, &listener.http_inspector) {
                (ListenerFilter::TlsInspector, Some(tls), _) => inspect::inspect_tls(tcp, tls, &mut inspected).await,
                (ListenerFilter::HttpInspector, _, Some(http)) => {
                    inspect::inspect_http(tcp, http, &mut inspected).await
                }
                _ => Ok(true),
            };
            if !keep.unwrap_or(false) {
                return false;
            }
        }
        true
    };
    let keep = match spec.listener_filters_timeout {
        Some(timeout) => tokio::time::timeout(timeout, inspecting).await.unwrap_or_else(|_| {
            stats.downstream_pre_cx_timeout.inc();
            spec.continue_on_listener_filters_timeout
        }),
        None => inspecting.await,
    };
    stats.downstream_pre_cx_active.dec();
    keep.then_some(inspected)
}

async fn serve_connection(tcp: TcpStream, ctx: Rc<ConnContext>, mut drain: watch::Receiver<bool>) {
    let _ = tcp.set_nodelay(true);
    let listener = ctx.listener.clone();
    let opened = tokio::time::Instant::now();
    listener.stats.opened(ctx.worker.index);
    let http = &listener.http_stats;
    http.downstream_cx_total.inc();
    http.downstream_cx_active.inc();

    let negotiate = negotiate(tcp, &listener);
    tokio::pin!(negotiate);
    let idle = sleep_until_some(listener.hcm.idle_timeout.map(|t| ctx.idle_since.get() + t));
    let negotiated = tokio::select! {
        // First, so that a plaintext connection with a fixed codec sets no timer.
        biased;
        negotiated = &mut negotiate => negotiated.ok(),
        _ = idle => {
            http.downstream_cx_idle_timeout.inc();
            None
        }
        // A connection accepted just before the drain gets a moment to say what it is.
        _ = drain.wait_for(|d| *d) => tokio::time::timeout(FIRST_REQUEST_GRACE, negotiate).await.ok().and_then(Result::ok),
    };
    let result = match negotiated {
        Some((stream, Protocol::Http2, prefix)) => {
            let stream_ctx = ctx.clone();
            let server = H2Server::new(stream, prefix, ctx.clone(), listener.hcm.http2, move |request, responder| {
                stream::serve_stream(stream_ctx.clone(), request, responder)
            });
            drive(server, |server| server.get_mut().graceful_shutdown(), &ctx, drain).await.map_err(BodyError::from)
        }
        Some((stream, Protocol::Http1, prefix)) => {
            // No header read timeout: Envoy has none unless `request_headers_timeout` is set
            // (which legate does not implement); an idle keep-alive connection is closed by
            // the connection idle timeout, as Envoy closes it.
            let service_ctx = ctx.clone();
            let server =
                H1Server::new(stream, prefix, ctx.clone(), move |request| proxy::serve(service_ctx.clone(), request));
            drive(server, H1Server::graceful_shutdown, &ctx, drain).await.map_err(BodyError::from)
        }
        None => Ok(()),
    };
    if let Err(e) = result {
        tracing::debug!(remote = %ctx.remote, error = %e, "downstream connection ended with an error");
    }
    listener.stats.closed(ctx.worker.index, opened.elapsed());
    http.downstream_cx_active.dec();
    http.downstream_cx_destroy.inc();
    http.downstream_cx_length_ms.record(opened.elapsed().as_millis() as u64);
}

/// What a connection speaks.
enum Protocol {
    Http1,
    Http2,
}

/// The first read of a connection whose codec is detected: enough for a request head.
const SNIFF_READ: usize = 1024;

/// Handshakes TLS on a TLS listener, then settles the codec: the listener's, or for AUTO the
/// one ALPN chose, or else the one the first bytes (returned, to be parsed) show, as Envoy does.
async fn negotiate(tcp: TcpStream, listener: &HttpChain) -> std::io::Result<(Transport, Protocol, BytesMut)> {
    let mut stream = match &listener.tls {
        Some((tls, stats)) => transport::accept(tcp, tls, stats).await?,
        None => Transport::Plain(tcp),
    };
    let mut read = BytesMut::new();
    let protocol = match listener.hcm.codec {
        Codec::Http1 => Protocol::Http1,
        Codec::Http2 => Protocol::Http2,
        Codec::Auto => match stream.alpn() {
            Some(b"h2") => Protocol::Http2,
            Some(_) => Protocol::Http1,
            None => {
                read.reserve(SNIFF_READ);
                sniff(&mut stream, &mut read).await?
            }
        },
    };
    Ok((stream, protocol, read))
}

/// Reads until the first bytes tell HTTP/2's preface from anything else (HTTP/1.1).
async fn sniff(stream: &mut Transport, read: &mut BytesMut) -> std::io::Result<Protocol> {
    loop {
        if read.len() >= PREFACE.len() || !PREFACE.starts_with(read) {
            return Ok(if read.starts_with(PREFACE) { Protocol::Http2 } else { Protocol::Http1 });
        }
        if stream.read_buf(read).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Serves a connection until it ends, closing it gracefully (with `shutdown`) when the
/// listener drains or the connection idle timeout passes.
async fn drive<C, E>(
    connection: C,
    shutdown: impl Fn(Pin<&mut C>),
    ctx: &ConnContext,
    mut drain: watch::Receiver<bool>,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let http = &ctx.listener.http_stats;
    tokio::pin!(connection);
    let idle_timeout = ctx.listener.hcm.idle_timeout;
    let side = Arc::new(SideWake::default());
    let side_waker = Waker::from(side.clone());
    loop {
        // Envoy's connection idle timeout counts from the moment no stream is in progress.
        let idle_deadline = idle_timeout.map(|t| ctx.idle_since.get() + t);
        let drained = drain.wait_for(|d| *d);
        let idle = sleep_until_some(idle_deadline);
        tokio::pin!(drained, idle);
        side.rearm();
        // The connection is polled on every wake-up; the drain watch and the idle timer,
        // which wake it through `side`, only after one of them did (or fresh).
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                return Poll::Ready(ConnEvent::Done(result));
            }
            if side.woke(cx) {
                let mut side_cx = Context::from_waker(&side_waker);
                if drained.as_mut().poll(&mut side_cx).is_ready() {
                    return Poll::Ready(ConnEvent::Drain);
                }
                if idle.as_mut().poll(&mut side_cx).is_ready() {
                    return Poll::Ready(ConnEvent::Idle);
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            ConnEvent::Done(result) => return result,
            ConnEvent::Drain => {
                // A connection accepted just before the drain may not have sent its first
                // request yet; serve that request rather than close under it.
                if !ctx.codec_counted.get() {
                    tokio::select! {
                        result = connection.as_mut() => return result,
                        _ = tokio::time::sleep(FIRST_REQUEST_GRACE) => {}
                    }
                }
                shutdown(connection.as_mut());
                return connection.await;
            }
            ConnEvent::Idle => {
                if ctx.active_streams.get() == 0 && idle_deadline.is_some_and(|d| d <= clock::now()) {
                    http.downstream_cx_idle_timeout.inc();
                    shutdown(connection.as_mut());
                    return connection.await;
                }
                if ctx.active_streams.get() > 0 {
                    // Busy: look again one timeout from now.
                    ctx.idle_since.set(clock::now());
                }
            }
        }
    }
}

/// What ended a connection's wait.
enum ConnEvent<R> {
    Done(R),
    Drain,
    Idle,
}

/// The waker a connection's drain watch and idle timer get: it notes that one of them
/// woke before waking the connection's task, so the connection's other wake-ups (two or
/// more per request) do not poll them (a watch channel and a timer: ≈ 700 instructions
/// per request).
#[derive(Default)]
pub(super) struct SideWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl SideWake {
    /// The next `woke` says yes: for futures not polled yet.
    pub(super) fn rearm(&self) {
        self.woken.store(true, Ordering::Relaxed);
    }

    /// Whether a side future woke since the last call (or `rearm`), so it is to be polled
    /// (with this as its waker); the task of `cx` is the one woken.
    pub(super) fn woke(&self, cx: &Context<'_>) -> bool {
        self.task.register(cx.waker());
        self.woken.swap(false, Ordering::Acquire)
    }
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
