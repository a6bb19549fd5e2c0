//! Per-worker connection pools: one per host per worker ("each worker thread maintains its
//! own connection pools for each cluster"), so the request path never locks. HTTP/1.1
//! keeps an idle set of connections (no pipelining); HTTP/2 keeps one multiplexed
//! connection. Everything here is `!Send` and lives on its worker's thread.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

// FNV-1a: the pool maps are keyed by cluster names and host addresses from config, not by
// anything a client sends, so they need no DoS-resistant (and slower) SipHash.
use fnv::FnvHashMap;
use futures_util::FutureExt;
use futures_util::future::{LocalBoxFuture, Shared};
use http::Response;
use http::request::Parts;
use http_body_util::Either;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::cluster::{Cluster, ClusterStats};
use super::h1_client::{H1Body, H1Connection};
use super::host::Host;
use super::lb::WorkerLb;
use super::manager::ClusterSnapshot;
use crate::clock;
use crate::http::body::{BodyError, RequestBody};
use crate::http::h2::client::H2Connection;
use crate::http::h2::stream::RecvBody;
use crate::http::headers;
use crate::transport::{self, Transport};

/// Why a request could not get a response from its upstream.
#[derive(Debug)]
pub enum UpstreamError {
    /// The TCP connect failed (refused, unreachable, ...).
    ConnectFailure(io::Error),
    /// The TCP connect did not finish within `connect_timeout`.
    ConnectTimeout,
    /// The connection or stream was reset before response headers arrived.
    ResetBeforeHeaders(BodyError),
    /// The upstream broke the protocol before the response head was through.
    ProtocolError,
    /// The upstream reset the stream before its response head; `refused`: it never
    /// processed it (REFUSED_STREAM, or beyond its GOAWAY).
    RemoteReset { refused: bool },
    /// A circuit breaker of the cluster refused the request (`max_pending_requests`,
    /// `max_requests`).
    Overflow,
}

impl UpstreamError {
    /// The same failure again, for every request that waited on one shared connect.
    fn duplicate(&self) -> UpstreamError {
        match self {
            UpstreamError::ConnectFailure(e) => UpstreamError::ConnectFailure(match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            }),
            UpstreamError::ConnectTimeout => UpstreamError::ConnectTimeout,
            UpstreamError::ResetBeforeHeaders(e) => UpstreamError::ResetBeforeHeaders(e.to_string().into()),
            UpstreamError::ProtocolError => UpstreamError::ProtocolError,
            UpstreamError::RemoteReset { refused } => UpstreamError::RemoteReset { refused: *refused },
            UpstreamError::Overflow => UpstreamError::Overflow,
        }
    }
}

/// A request's head as the upstream clients take it.
// Unboxed: it moves once, into the send future, as the whole request did before; a box
// would be an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Head<'a> {
    /// Given up: dropped, its header map kept for the worker's next head, once written (its
    /// values are slices of the downstream read buffer, reused once nothing refers to it).
    Owned(Parts),
    /// Lent by a request that keeps its head to send it again (a retry policy).
    Lent(&'a Parts),
}

impl Head<'_> {
    /// The head, whoever owns it.
    pub fn get(&self) -> &Parts {
        match self {
            Head::Owned(parts) => parts,
            Head::Lent(parts) => parts,
        }
    }

    /// The head is written (or encoded): an owned one is let go.
    pub fn written(self) {
        if let Head::Owned(parts) = self {
            headers::recycle_map(parts.headers);
        }
    }
}

/// A request on its way upstream.
pub struct UpstreamRequest<'a> {
    pub head: Head<'a>,
    pub body: RequestBody,
}

/// Why a request got no response on a connection.
pub enum SendError<'a> {
    /// Nothing of the request was taken (its head could not be written, or the connection
    /// takes no new streams): it can go out on another connection.
    Unsent(Box<UpstreamRequest<'a>>),
    Failed(BodyError),
    /// The upstream broke the protocol; the connection is closed.
    ProtocolError,
    /// The upstream reset the stream (`refused`: REFUSED_STREAM, or beyond its GOAWAY).
    RemoteReset {
        refused: bool,
    },
}

impl From<SendError<'_>> for UpstreamError {
    /// What a request that got no response head on a connection failed with; one that was
    /// never sent is a reset of a connection that takes no more.
    fn from(e: SendError<'_>) -> UpstreamError {
        match e {
            SendError::Unsent(_) => UpstreamError::ResetBeforeHeaders("connection takes no new streams".into()),
            SendError::Failed(e) => UpstreamError::ResetBeforeHeaders(e),
            SendError::ProtocolError => UpstreamError::ProtocolError,
            SendError::RemoteReset { refused } => UpstreamError::RemoteReset { refused },
        }
    }
}

/// Which wire protocol a request goes out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Http1,
    Http2,
}

/// A response body from upstream, as the protocol it came over delivers it.
pub type UpstreamBody = Either<H1Body, RecvBody>;

struct IdleH1 {
    connection: Box<H1Connection>,
    since: Instant,
}

/// An HTTP/2 connect in progress, awaited by every request that arrives before it is done.
type H2Connect = Shared<LocalBoxFuture<'static, Result<H2Connection, Rc<UpstreamError>>>>;

/// A host's HTTP/2 connection on one worker. As Envoy's pool does, requests that arrive
/// while it connects wait for that connection instead of each opening their own.
enum H2Slot {
    Empty,
    Connecting(H2Connect),
    Ready(H2Connection),
}

/// One host's connections on one worker.
pub struct HostPool {
    host: Arc<Host>,
    /// The host's outlier ejections when the pool was made: a pool older than the host's
    /// latest ejection is not carried into the next version of the cluster, which closes
    /// its idle connections (Envoy drains a host's pools when it is ejected).
    ejections: u32,
    idle_h1: RefCell<Vec<IdleH1>>,
    /// Wakes the task that closes idle connections the upstream closed (`watch_idle`), once
    /// it runs; every idle connection's read readiness is registered with it.
    idle_watcher: RefCell<Option<Waker>>,
    h2: RefCell<H2Slot>,
    /// HTTP/1.1 connections open or connecting to the host from this worker.
    h1_connections: Cell<usize>,
    /// Requests waiting for one of those to be released or closed, because the cluster is
    /// at `max_connections`; woken one at a time, oldest first, by `h1_freed`.
    h1_waiting: Cell<usize>,
    h1_freed: Notify,
}

impl HostPool {
    fn new(host: Arc<Host>) -> HostPool {
        HostPool {
            ejections: host.ejections(),
            host,
            idle_h1: RefCell::new(Vec::new()),
            idle_watcher: RefCell::new(None),
            h2: RefCell::new(H2Slot::Empty),
            h1_connections: Cell::new(0),
            h1_waiting: Cell::new(0),
            h1_freed: Notify::new(),
        }
    }

    /// Sends `request` to this host of `cluster` (whose current version sets timeouts and
    /// counts stats) over `wire`, calling `attached` (possibly more than once) when a
    /// connection takes it. An HTTP/1.1 connection comes back to the pool when the
    /// response body has been read to its end.
    pub async fn send(
        self: &Rc<Self>,
        cluster: &Arc<Cluster>,
        request: UpstreamRequest<'_>,
        wire: Wire,
        attached: &dyn Fn(),
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match wire {
            Wire::Http1 => self.send_h1(cluster, request, attached).await.map(|r| r.map(Either::Left)),
            Wire::Http2 => self.send_h2(cluster, request, attached).await.map(|r| r.map(Either::Right)),
        }
    }

    async fn send_h1(
        self: &Rc<Self>,
        cluster: &Arc<Cluster>,
        mut request: UpstreamRequest<'_>,
        attached: &dyn Fn(),
    ) -> Result<Response<H1Body>, UpstreamError> {
        loop {
            // Requests waiting for a connection under `max_connections` get the released
            // ones first, in order.
            let idle = if self.h1_waiting.get() == 0 { self.checkout_idle_h1(cluster) } else { None };
            let (mut connection, pooled) = match idle {
                Some(connection) => (connection, true),
                None => {
                    admit_pending(cluster)?;
                    // Boxed: a connect (TCP, timeout) is a large state machine that would
                    // otherwise sit inline in every request's future, which is moved whole
                    // when its stream starts.
                    self.pending(cluster, Box::pin(self.new_h1_connection(cluster))).await?
                }
            };
            if !admit_request(cluster) {
                self.release_h1(connection);
                return Err(UpstreamError::Overflow);
            }
            if let Some(max) = cluster.max_requests_per_connection
                && connection.retire_at(max)
            {
                cluster.stats.upstream_cx_max_requests.inc();
            }
            attached();
            match connection.send(request, self).await {
                Ok(response) => return Ok(response),
                // A pooled connection may have been closed by the upstream while idle: a
                // request it could not take goes out on another one.
                Err(SendError::Unsent(unsent)) if pooled => request = *unsent,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A new connection, or, while the cluster is at `max_connections` and this worker
    /// has connections to the host, the first of them to be released (or a new one when
    /// one closes). With none here it connects anyway, as Envoy does, so that a request
    /// is never left waiting on connections that do not exist. The bool says whether
    /// the connection was pooled.
    async fn new_h1_connection(
        self: &Rc<Self>,
        cluster: &Arc<Cluster>,
    ) -> Result<(Box<H1Connection>, bool), UpstreamError> {
        /// Counts a request in `h1_waiting` until it stops waiting (woken or abandoned).
        struct Waiting<'a>(&'a Cell<usize>);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get() - 1);
            }
        }
        loop {
            if connection_allowed(cluster) || self.h1_connections.get() == 0 {
                return Ok((self.connect_h1(cluster).await?, false));
            }
            self.h1_waiting.set(self.h1_waiting.get() + 1);
            let _waiting = Waiting(&self.h1_waiting);
            self.h1_freed.notified().await;
            if let Some(connection) = self.checkout_idle_h1(cluster) {
                return Ok((connection, true));
            }
        }
    }

    fn checkout_idle_h1(&self, cluster: &Cluster) -> Option<Box<H1Connection>> {
        let mut idle = self.idle_h1.borrow_mut();
        while let Some(IdleH1 { mut connection, since }) = idle.pop() {
            if cluster.idle_timeout.is_some_and(|t| clock::now() - since >= t) {
                connection.close_idle();
            } else if connection.is_alive(&mut Context::from_waker(Waker::noop())) {
                return Some(connection);
            }
        }
        None
    }

    /// Takes back a connection whose response has ended, to be reused.
    pub fn release_h1(self: &Rc<Self>, mut connection: Box<H1Connection>) {
        let mut watcher = self.idle_watcher.borrow_mut();
        match watcher.as_ref() {
            Some(waker) => {
                if !connection.is_alive(&mut Context::from_waker(waker)) {
                    return;
                }
            }
            None => {
                // Until its first poll (which registers every connection idle by then) the
                // watcher is known by a waker that does nothing.
                *watcher = Some(Waker::noop().clone());
                tokio::task::spawn_local(watch_idle(Rc::downgrade(self)));
            }
        }
        drop(watcher);
        self.idle_h1.borrow_mut().push(IdleH1 { connection, since: clock::now() });
        self.wake_h1_waiter();
    }

    /// Wakes the longest-waiting request for a connection, if any waits.
    fn wake_h1_waiter(&self) {
        if self.h1_waiting.get() > 0 {
            self.h1_freed.notify_one();
        }
    }

    async fn send_h2(
        &self,
        cluster: &Arc<Cluster>,
        mut request: UpstreamRequest<'_>,
        attached: &dyn Fn(),
    ) -> Result<Response<RecvBody>, UpstreamError> {
        // A connection that stopped taking streams (a GOAWAY from the upstream) hands the
        // request back and is retired: the request goes out on a new connection, as in
        // Envoy's pool, which sends nothing more on a draining connection.
        let mut retried = false;
        loop {
            let connection = match self.h2_connection(cluster) {
                Ok(connection) => connection,
                Err(connect) => {
                    admit_pending(cluster)?;
                    let result = self.pending(cluster, connect.clone()).await;
                    let mut slot = self.h2.borrow_mut();
                    // The first waiter to see the outcome records it; a failed connect leaves
                    // the slot empty so that the next request tries again.
                    if matches!(&*slot, H2Slot::Connecting(c) if c.ptr_eq(&connect)) {
                        *slot = result.as_ref().map_or(H2Slot::Empty, |c| H2Slot::Ready(c.clone()));
                    }
                    result.map_err(|e| e.duplicate())?
                }
            };
            if !admit_request(cluster) {
                return Err(UpstreamError::Overflow);
            }
            let sent = connection.send(request, attached).await;
            if connection.is_spent() {
                // Let go of it, so that it closes when its last stream is done (as Envoy
                // closes a draining connection) rather than when the next request comes.
                let mut slot = self.h2.borrow_mut();
                if matches!(&*slot, H2Slot::Ready(c) if c.ptr_eq(&connection)) {
                    *slot = H2Slot::Empty;
                }
            }
            match sent {
                Ok(response) => return Ok(response),
                // A connection that opened its last stream (`max_requests_per_connection`)
                // is replaced by one that will take this request, however many came first.
                Err(SendError::Unsent(unsent)) if connection.is_spent() => request = *unsent,
                Err(SendError::Unsent(unsent)) if !retried => {
                    retried = true;
                    request = *unsent;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The open HTTP/2 connection, or the connect to wait for (started here if none is
    /// under way).
    fn h2_connection(&self, cluster: &Arc<Cluster>) -> Result<H2Connection, H2Connect> {
        let mut slot = self.h2.borrow_mut();
        match &*slot {
            H2Slot::Ready(connection) if !connection.is_closed() => return Ok(connection.clone()),
            H2Slot::Connecting(connect) => return Err(connect.clone()),
            _ => {}
        }
        // The pool has no connection to wait for: it connects even at `max_connections`, as
        // Envoy's does when it has none. (Envoy's also counts a connection draining after
        // GOAWAY and then waits for it to close; legate lets a draining one go at once.)
        connection_allowed(cluster);
        let connect = connect_h2(self.host.clone(), cluster.clone()).map(|r| r.map_err(Rc::new)).boxed_local().shared();
        *slot = H2Slot::Connecting(connect.clone());
        Err(connect)
    }

    /// Counts a request as pending while it waits for a new connection, as Envoy's
    /// `upstream_rq_pending_*` do: as cancelled (`upstream_rq_cancelled`) if it is abandoned
    /// before the connect ends (the client went away, a timeout), as failed
    /// (`upstream_rq_pending_failure_eject`) if the connect fails.
    async fn pending<C, E>(&self, cluster: &Cluster, connect: impl Future<Output = Result<C, E>>) -> Result<C, E> {
        struct Pending<'a> {
            stats: &'a ClusterStats,
            host_pending: &'a AtomicU64,
            waiting: bool,
        }
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                self.stats.upstream_rq_pending_active.dec();
                self.host_pending.fetch_sub(1, Ordering::Relaxed);
                if self.waiting {
                    self.stats.upstream_rq_cancelled.inc();
                }
            }
        }
        let stats = &cluster.stats;
        stats.upstream_rq_pending_total.inc();
        stats.upstream_rq_pending_active.inc();
        self.host.stats.rq_pending_active.fetch_add(1, Ordering::Relaxed);
        let mut pending = Pending { stats, host_pending: &self.host.stats.rq_pending_active, waiting: true };
        let connected = connect.await;
        pending.waiting = false;
        if connected.is_err() {
            stats.upstream_rq_pending_failure_eject.inc();
        }
        connected
    }

    /// A connection of its own for a TCP proxy's downstream connection, as Envoy's TCP pool
    /// hands out (its "stream" is the proxied connection): pending while it connects, under
    /// `max_pending_requests`, and counted as one request (`upstream_rq_total`) once
    /// connected. Offers only the cluster's own ALPN. The caller checks `max_connections`.
    pub async fn connect_tcp(&self, cluster: &Arc<Cluster>) -> Result<(Transport, LiveConnection), UpstreamError> {
        admit_pending(cluster)?;
        let slot = ConnectionSlot::new(cluster, Weak::new());
        let (stream, started) = self.pending(cluster, connect(&self.host, cluster, None)).await?;
        let mut live = LiveConnection::new(cluster, &self.host, started, slot);
        live.attach_request();
        Ok((stream, live))
    }

    async fn connect_h1(self: &Rc<Self>, cluster: &Arc<Cluster>) -> Result<Box<H1Connection>, UpstreamError> {
        let slot = ConnectionSlot::new(cluster, Rc::downgrade(self));
        let (stream, started) = connect(&self.host, cluster, Some(b"http/1.1")).await?;
        cluster.stats.upstream_cx_http1_total.inc();
        Ok(H1Connection::new(stream, LiveConnection::new(cluster, &self.host, started, slot)))
    }
}

/// Whether a request may wait for a connection under `max_pending_requests`; counts
/// `upstream_rq_pending_overflow` when not.
fn admit_pending(cluster: &Cluster) -> Result<(), UpstreamError> {
    let stats = &cluster.stats;
    if stats.upstream_rq_pending_active.value() < i64::from(cluster.circuit_breakers.default.max_pending_requests) {
        return Ok(());
    }
    stats.upstream_rq_pending_overflow.inc();
    Err(UpstreamError::Overflow)
}

/// Whether a request may go out on a connection under `max_requests`; counts
/// `upstream_rq_active_overflow` when not (Envoy 1.38 and later; earlier versions counted
/// these as pending overflows).
fn admit_request(cluster: &Cluster) -> bool {
    let stats = &cluster.stats;
    let admitted = stats.upstream_rq_active.value() < i64::from(cluster.circuit_breakers.default.max_requests);
    if !admitted {
        stats.upstream_rq_active_overflow.inc();
    }
    admitted
}

/// Whether another connection fits under `max_connections`; counts `upstream_cx_overflow`
/// when not.
pub fn connection_allowed(cluster: &Cluster) -> bool {
    let stats = &cluster.stats;
    let allowed =
        stats.connections.load(Ordering::Relaxed) < u64::from(cluster.circuit_breakers.default.max_connections);
    if !allowed {
        stats.upstream_cx_overflow.inc();
    }
    allowed
}

/// A connection's place under its cluster's `max_connections`, from the start of its
/// connect until it closes. An HTTP/1.1 connection is also counted in its worker's pool
/// for the host, whose waiting requests its close wakes.
struct ConnectionSlot {
    stats: Arc<ClusterStats>,
    h1_pool: Weak<HostPool>,
}

impl ConnectionSlot {
    fn new(cluster: &Cluster, h1_pool: Weak<HostPool>) -> ConnectionSlot {
        cluster.stats.connections.fetch_add(1, Ordering::Relaxed);
        if let Some(pool) = h1_pool.upgrade() {
            pool.h1_connections.set(pool.h1_connections.get() + 1);
        }
        ConnectionSlot { stats: cluster.stats.clone(), h1_pool }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.stats.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(pool) = self.h1_pool.upgrade() {
            pool.h1_connections.set(pool.h1_connections.get() - 1);
            pool.wake_h1_waiter();
        }
    }
}

/// The connected stream, and when its connect began (where Envoy starts a connection's
/// `upstream_cx_length_ms`). For a TLS cluster the connect is done once the handshake is,
/// offering `alpn` (the pool's protocol, if any) unless the cluster names its own, and a failed
/// handshake is a failed connect, within `connect_timeout`, as in Envoy.
async fn connect(
    host: &Host,
    cluster: &Cluster,
    alpn: Option<&'static [u8]>,
) -> Result<(Transport, Instant), UpstreamError> {
    let stats = &cluster.stats;
    stats.upstream_cx_total.inc();
    host.stats.cx_total.fetch_add(1, Ordering::Relaxed);
    let started = clock::now();
    let connecting = async {
        let tcp = TcpStream::connect(host.address).await?;
        // Small request/response exchanges must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        match &cluster.tls {
            Some((tls, tls_stats)) => transport::connect(tcp, tls, alpn, tls_stats).await,
            None => Ok(Transport::Plain(tcp)),
        }
    };
    let result = tokio::time::timeout(cluster.connect_timeout, connecting).await;
    let stream = match result {
        Ok(Ok(stream)) => {
            stats.upstream_cx_connect_ms.record((clock::now() - started).as_millis() as u64);
            stream
        }
        Ok(Err(e)) => {
            stats.upstream_cx_connect_fail.inc();
            host.stats.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
            return Err(UpstreamError::ConnectFailure(e));
        }
        Err(_) => {
            stats.upstream_cx_connect_fail.inc();
            stats.upstream_cx_connect_timeout.inc();
            host.stats.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
            return Err(UpstreamError::ConnectTimeout);
        }
    };
    Ok((stream, started))
}

/// Connects and hands the connection's driver to a task on this worker, counted as an
/// active connection until it ends. Owns what it uses: the connect is shared by the
/// requests that wait on it, and outlives any one of them.
async fn connect_h2(host: Arc<Host>, cluster: Arc<Cluster>) -> Result<H2Connection, UpstreamError> {
    let slot = ConnectionSlot::new(&cluster, Weak::new());
    let (stream, started) = connect(&host, &cluster, Some(b"h2")).await?;
    let (connection, driver) = H2Connection::start(stream, cluster.idle_timeout);
    connection.count_resets_in(cluster.stats.clone());
    if let Some(max) = cluster.max_requests_per_connection {
        connection.limit_streams(max);
    }
    cluster.stats.upstream_cx_http2_total.inc();
    let live = LiveConnection::new(&cluster, &host, started, slot);
    tokio::task::spawn_local(async move { live.ended(driver.await) });
    Ok(connection)
}

impl Drop for HostPool {
    fn drop(&mut self) {
        // Lets the watcher see the pool is gone and end.
        if let Some(watcher) = self.idle_watcher.take() {
            watcher.wake();
        }
    }
}

/// Closes the pool's idle HTTP/1.1 connections that the upstream closed (or wrote to out
/// of turn) as soon as the reactor reports them readable, so the active-connection gauges
/// and `/clusters` count only live ones, and those idle for `idle_timeout`, on a timer as
/// Envoy does. Ends with the pool.
///
/// One timer serves the pool: it is set for when the oldest idle connection expires, or,
/// with none idle, one timeout from now. A connection released meanwhile expires after
/// that, so releases never need to wake this task; the price is a spare wake-up per
/// timeout (an hour by default) while the pool has no idle connection. The timeout is
/// that of the oldest idle connection's cluster, kept while none is idle.
async fn watch_idle(pool: Weak<HostPool>) {
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    let mut timeout: Option<Duration> = None;
    std::future::poll_fn(|cx| {
        let Some(pool) = pool.upgrade() else { return Poll::Ready(()) };
        loop {
            let now = Instant::now();
            let mut idle = pool.idle_h1.borrow_mut();
            if let Some(oldest) = idle.first() {
                timeout = oldest.connection.idle_timeout();
            }
            // Oldest first (releases push at the end, checkouts pop from it), so the
            // expired ones lead.
            let fresh = idle.iter().position(|i| timeout.is_none_or(|t| now - i.since < t)).unwrap_or(idle.len());
            let expired: Vec<IdleH1> = idle.drain(..fresh).collect();
            idle.retain_mut(|i| i.connection.is_alive(cx));
            let next = timeout.map(|t| idle.first().map_or(now, |oldest| oldest.since) + t);
            drop(idle);
            expired.into_iter().for_each(|i| i.connection.close_idle());
            let Some(next) = next else { break };
            let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(next)));
            if timer.deadline() != next {
                timer.as_mut().reset(next);
            }
            if timer.as_mut().poll(cx).is_pending() {
                break;
            }
        }
        let mut watcher = pool.idle_watcher.borrow_mut();
        if !watcher.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *watcher = Some(cx.waker().clone());
        }
        Poll::Pending
    })
    .await
}

/// How an upstream connection ended, for Envoy's `upstream_cx_destroy_*` counters and its
/// `upstream_rq_per_cx` histogram.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionEnd {
    /// The upstream closed it (end of stream, a reset, GOAWAY); otherwise legate did.
    pub remote: bool,
    /// A request was in flight on it.
    pub with_active_rq: bool,
    /// The requests it carried.
    pub requests: u64,
}

/// Counts an upstream connection in the active gauges from its connect until it is
/// dropped, then as destroyed, the way `end` says.
pub struct LiveConnection {
    cluster: Arc<Cluster>,
    host: Arc<Host>,
    opened: Instant,
    pub end: ConnectionEnd,
    /// A request is counted active on it until it drops (`attach_request`).
    attached: bool,
    /// Released when the connection drops, after the stats above are counted.
    _slot: ConnectionSlot,
}

impl LiveConnection {
    fn new(cluster: &Arc<Cluster>, host: &Arc<Host>, opened: Instant, slot: ConnectionSlot) -> LiveConnection {
        cluster.stats.upstream_cx_active.inc();
        host.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        LiveConnection {
            cluster: cluster.clone(),
            host: host.clone(),
            opened,
            end: ConnectionEnd::default(),
            attached: false,
            _slot: slot,
        }
    }

    /// Counts the connection as destroyed, the way `end` says.
    fn ended(mut self, end: ConnectionEnd) {
        self.end = end;
    }

    /// The cluster version the connection was made for.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Counts one request on the connection from now until it drops: a TCP proxy's whole
    /// proxied connection.
    fn attach_request(&mut self) {
        let (stats, host) = (&self.cluster.stats, &self.host.stats);
        stats.upstream_rq_total.inc();
        stats.upstream_rq_active.inc();
        host.rq_total.fetch_add(1, Ordering::Relaxed);
        host.rq_active.fetch_add(1, Ordering::Relaxed);
        self.end.requests = 1;
        self.attached = true;
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        let stats = &self.cluster.stats;
        if self.attached {
            stats.upstream_rq_active.dec();
            self.host.stats.rq_active.fetch_sub(1, Ordering::Relaxed);
        }
        stats.upstream_cx_active.dec();
        stats.upstream_cx_destroy.inc();
        stats.upstream_rq_per_cx.record(self.end.requests);
        stats.upstream_cx_length_ms.record((clock::now() - self.opened).as_millis() as u64);
        let (destroyed, destroyed_with_active_rq) = if self.end.remote {
            (&stats.upstream_cx_destroy_remote, &stats.upstream_cx_destroy_remote_with_active_rq)
        } else {
            (&stats.upstream_cx_destroy_local, &stats.upstream_cx_destroy_local_with_active_rq)
        };
        destroyed.inc();
        if self.end.with_active_rq {
            destroyed_with_active_rq.inc();
            stats.upstream_cx_destroy_with_active_rq.inc();
        }
        self.host.stats.cx_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker's state for one version of a cluster: its load-balancing state and host pools.
pub struct ClusterPools {
    /// Which cluster version this is for.
    cluster_id: u64,
    pub lb: RefCell<WorkerLb>,
    /// By host address, holding the `Host` the pool was made for.
    hosts: RefCell<FnvHashMap<SocketAddr, Rc<HostPool>>>,
    /// The same pools by index in this cluster version's `hosts` (fixed for a version), so
    /// a request finds its pool without hashing the address.
    by_index: RefCell<Vec<Option<Rc<HostPool>>>>,
}

impl ClusterPools {
    /// The pool for the host at `index` of `cluster.hosts`.
    pub fn host(&self, cluster: &Cluster, index: usize) -> Rc<HostPool> {
        debug_assert_eq!(cluster.id, self.cluster_id);
        let mut by_index = self.by_index.borrow_mut();
        if let Some(Some(pool)) = by_index.get(index) {
            return pool.clone();
        }
        let host = &cluster.hosts[index];
        let pool =
            self.hosts.borrow_mut().entry(host.address).or_insert_with(|| Rc::new(HostPool::new(host.clone()))).clone();
        if by_index.len() < cluster.hosts.len() {
            by_index.resize(cluster.hosts.len(), None);
        }
        by_index[index] = Some(pool.clone());
        pool
    }
}

/// All of one worker's pools, by cluster name.
#[derive(Default)]
pub struct WorkerPools {
    clusters: RefCell<FnvHashMap<String, Rc<ClusterPools>>>,
    /// The snapshot generation the pools were last pruned against.
    generation: Cell<u64>,
}

impl WorkerPools {
    /// This worker's state for `cluster`, created on first use. When the cluster was
    /// rebuilt (an update), the pools of hosts it kept carry over; pools of hosts it
    /// dropped, or that were ejected since the pool was made, are closed.
    pub fn cluster(&self, cluster: &Cluster) -> Rc<ClusterPools> {
        let mut clusters = self.clusters.borrow_mut();
        if let Some(pools) = clusters.get(&cluster.name)
            && pools.cluster_id == cluster.id
        {
            return pools.clone();
        }
        let previous = clusters.remove(&cluster.name);
        let mut hosts = FnvHashMap::default();
        if let Some(previous) = &previous {
            for (address, pool) in previous.hosts.borrow_mut().drain() {
                if cluster.hosts.iter().any(|h| Arc::ptr_eq(h, &pool.host)) && pool.ejections == pool.host.ejections() {
                    hosts.insert(address, pool);
                }
            }
        }
        let lb = previous.map_or_else(WorkerLb::default, |p| p.lb.borrow().carried_over());
        let pools = Rc::new(ClusterPools {
            cluster_id: cluster.id,
            lb: RefCell::new(lb),
            hosts: RefCell::new(hosts),
            by_index: RefCell::new(Vec::new()),
        });
        clusters.insert(cluster.name.clone(), pools.clone());
        pools
    }

    /// Drops the pools of clusters no longer in `snapshot` (removed by CDS); a no-op
    /// unless the snapshot changed since the last call.
    pub fn prune(&self, snapshot: &ClusterSnapshot) {
        if self.generation.replace(snapshot.generation) != snapshot.generation {
            self.clusters.borrow_mut().retain(|name, _| snapshot.clusters.contains_key(name));
        }
    }
}
