//! The TCP proxy (`envoy.filters.network.tcp_proxy`): each downstream connection gets an
//! upstream connection of its own to a host of its cluster, and bytes are relayed both ways
//! until both sides have finished, as Envoy's filter does: a connect that fails is tried
//! again up to `max_connect_attempts`, an end of stream from one side is passed on as a
//! half-close to the other, and the idle timeout closes both.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::accept::SideWake;
use super::{ChainBase, ListenerStats};
use crate::clock;
use crate::config::listener::ListenerSpec;
use crate::config::tcp_proxy::TcpProxySpec;
use crate::config::tls::ServerTls;
use crate::http::access_log::{AccessLogger, LogContext};
use crate::http::flags::ResponseFlags;
use crate::stats::{Counter, Gauge, Store};
use crate::transport::{self, TlsStats, Transport};
use crate::upstream::outlier::Observed;
use crate::upstream::pool::{self, ConnectionEnd, LiveConnection, UpstreamError};
use crate::upstream::{Cluster, ClusterManager, Host};
use crate::worker::Worker;

/// `tcp.<stat_prefix>.*`.
pub struct TcpProxyStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_no_route: Counter,
    pub downstream_cx_rx_bytes_total: Counter,
    pub downstream_cx_tx_bytes_total: Counter,
    pub idle_timeout: Counter,
}

/// Envoy's `tcp.<prefix>.*` stats for what legate's TCP proxy never does (closing on drain
/// or overload, flow control, early data, connection duration limits, delayed routing,
/// upstream flushing after the downstream closed):
/// registered at 0, so dashboards written for Envoy find them.
const NEVER_COUNTED: &[&str] = &[
    "downstream_cx_drain_close",
    "downstream_cx_overload_close",
    "downstream_flow_control_paused_reading_total",
    "downstream_flow_control_resumed_reading_total",
    "early_data_received_count_total",
    "max_downstream_connection_duration",
    "route_delayed_total",
    "upstream_flush_total",
];

/// Envoy's `tcp.<prefix>.*` gauges legate keeps at 0: it holds no bytes in a write buffer
/// beyond the one read in flight, and flushes nothing after a connection ends.
const NEVER_SET: &[&str] =
    &["downstream_cx_rx_bytes_buffered", "downstream_cx_tx_bytes_buffered", "upstream_flush_active"];

impl TcpProxyStats {
    fn new(store: &Store, prefix: &str) -> TcpProxyStats {
        let c = |s: &str| store.counter(&format!("tcp.{prefix}.{s}"));
        for never in NEVER_COUNTED {
            c(never);
        }
        for never in NEVER_SET {
            let _: Gauge = store.gauge(&format!("tcp.{prefix}.{never}"));
        }
        TcpProxyStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_no_route: c("downstream_cx_no_route"),
            downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
            downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
            idle_timeout: c("idle_timeout"),
        }
    }
}

/// The runtime of a filter chain whose filter is a TCP proxy.
pub struct TcpProxyChain {
    pub spec: Arc<ListenerSpec>,
    /// The chain's TCP proxy.
    pub proxy: Arc<TcpProxySpec>,
    pub stats: Arc<ListenerStats>,
    pub proxy_stats: TcpProxyStats,
    /// The chain's TLS context and `listener.<prefix>.ssl.*` stats.
    pub tls: Option<(Arc<ServerTls>, TlsStats)>,
    pub access_logs: Vec<AccessLogger>,
    pub clusters: Arc<ClusterManager>,
}

impl TcpProxyChain {
    pub(super) fn new(base: ChainBase, proxy: Arc<TcpProxySpec>, store: &Store) -> std::io::Result<TcpProxyChain> {
        let proxy_stats = TcpProxyStats::new(store, &proxy.stat_prefix);
        let access_logs = proxy.access_logs.iter().map(AccessLogger::new).collect::<std::io::Result<Vec<_>>>()?;
        let ChainBase { spec, stats, tls, clusters } = base;
        Ok(TcpProxyChain { spec, proxy, stats, proxy_stats, tls, access_logs, clusters })
    }
}

/// What a proxied connection did, for its access log line.
#[derive(Default)]
struct Session {
    flags: ResponseFlags,
    cluster: Option<Arc<Cluster>>,
    host: Option<Arc<Host>>,
    bytes_received: u64,
    bytes_sent: u64,
}

/// Serves one accepted connection (from `remote`, to `local`) to its end. The upstream
/// connect starts at once, beside a TLS chain's handshake, as Envoy's filter connects on
/// the new connection.
pub async fn serve_connection(
    tcp: TcpStream,
    chain: Arc<TcpProxyChain>,
    worker: Rc<Worker>,
    remote: SocketAddr,
    local: SocketAddr,
) {
    let opened = clock::now();
    // As Envoy's connections: a small write goes out at once.
    let _ = tcp.set_nodelay(true);
    chain.stats.opened(worker.index);
    chain.proxy_stats.downstream_cx_total.inc();
    let mut session = Session::default();
    let setup = set_up(tcp, &chain, &worker, &mut session);
    // The idle timer runs from the accept, as Envoy's does: a client that never finishes its
    // handshake is closed by it too.
    let connected = match chain.proxy.idle_timeout {
        Some(timeout) => tokio::time::timeout(timeout, setup).await.unwrap_or_else(|_| {
            chain.proxy_stats.idle_timeout.inc();
            None
        }),
        None => setup.await,
    };
    if let Some((downstream, upstream, mut live)) = connected {
        let relayed = relay(downstream, upstream, chain.proxy.idle_timeout, &chain.proxy_stats).await;
        session.bytes_received = relayed.received;
        session.bytes_sent = relayed.sent;
        if relayed.idle_timed_out {
            chain.proxy_stats.idle_timeout.inc();
        }
        if relayed.upstream_reset {
            session.flags.insert(ResponseFlags::UPSTREAM_REMOTE_RESET);
        }
        // Closed by the upstream if its end of stream came, in either order: Envoy closes a
        // half-closed connection when the second end arrives, as a remote close.
        live.end =
            ConnectionEnd { remote: relayed.upstream_ended, with_active_rq: relayed.upstream_ended, requests: 1 };
    }
    let duration = clock::now() - opened;
    chain.stats.closed(worker.index, duration);
    if !chain.access_logs.is_empty() {
        log(&chain, &session, duration, remote, local);
    }
}

/// The downstream TLS handshake, if any, beside the upstream connect; the client is closed
/// as soon as either fails, and a connect still pending then is cancelled.
async fn set_up(
    tcp: TcpStream,
    chain: &TcpProxyChain,
    worker: &Worker,
    session: &mut Session,
) -> Option<(Transport, Transport, LiveConnection)> {
    let downstream = async {
        match &chain.tls {
            Some((tls, stats)) => transport::accept(tcp, tls, stats).await.ok(),
            None => Some(Transport::Plain(tcp)),
        }
    };
    let upstream = connect_upstream(chain, worker, session);
    tokio::pin!(downstream, upstream);
    let (downstream, (upstream, live)) = tokio::select! {
        biased;
        downstream = &mut downstream => (downstream?, upstream.await?),
        upstream = &mut upstream => {
            let upstream = upstream?;
            (downstream.await?, upstream)
        }
    };
    Some((downstream, upstream, live))
}

/// Connects to a host of the connection's cluster, trying again (another pick) after a
/// failed connect up to `max_connect_attempts`, as Envoy does; records in `session` why
/// it gave up.
async fn connect_upstream(
    chain: &TcpProxyChain,
    worker: &Worker,
    session: &mut Session,
) -> Option<(Transport, LiveConnection)> {
    let proxy = &chain.proxy;
    // Envoy picks a weighted cluster once per connection, then looks it up per attempt.
    let name = proxy.cluster.pick();
    for attempt in 1..=proxy.max_connect_attempts {
        let snapshot = chain.clusters.snapshot();
        worker.pools.prune(&snapshot);
        let cluster = snapshot.get(name).cloned();
        drop(snapshot);
        let Some(cluster) = cluster else {
            chain.proxy_stats.downstream_cx_no_route.inc();
            session.flags.insert(ResponseFlags::NO_CLUSTER_FOUND);
            return None;
        };
        session.cluster = Some(cluster.clone());
        let pools = worker.pools.cluster(&cluster);
        // Checked here, as Envoy's filter does: the pool would queue the connection.
        if !pool::connection_allowed(&cluster) {
            session.flags.insert(ResponseFlags::UPSTREAM_OVERFLOW);
            return None;
        }
        let Some(index) = cluster.pick(&mut pools.lb.borrow_mut(), None, 0) else {
            cluster.stats.upstream_cx_none_healthy.inc();
            session.flags.insert(ResponseFlags::NO_HEALTHY_UPSTREAM);
            return None;
        };
        let host = cluster.hosts[index].clone();
        session.host = Some(host.clone());
        let failed = match pools.host(&cluster, index).connect_tcp(&cluster).await {
            Ok(connected) => {
                if let Some(detector) = cluster.outlier.as_ref().filter(|d| d.spec.split_local_origin) {
                    detector.observe(&host, Observed::Connected);
                }
                return Some(connected);
            }
            // Over `max_pending_requests`: a failed attempt that says nothing of the host.
            Err(UpstreamError::Overflow) => None,
            Err(UpstreamError::ConnectTimeout) => Some(Observed::TimedOut),
            Err(_) => Some(Observed::ConnectFailed),
        };
        if let Some(observed) = failed {
            session.flags.insert(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
            if let Some(detector) = &cluster.outlier {
                detector.observe(&host, observed);
            }
        }
        if attempt == proxy.max_connect_attempts {
            session.flags.insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
            cluster.stats.upstream_cx_connect_attempts_exceeded.inc();
        }
    }
    None
}

/// How a relay ended.
struct Relayed {
    /// Bytes read from downstream.
    received: u64,
    /// Bytes written downstream.
    sent: u64,
    /// The upstream ended its stream.
    upstream_ended: bool,
    /// The upstream reset its connection (the client's was reset too).
    upstream_reset: bool,
    idle_timed_out: bool,
}

/// One direction of a relay. Bytes are read into the worker's scratch buffer and written on
/// at once; only what the other side cannot take yet is kept, in `pending`, so an idle or
/// flowing connection holds no buffer of its own (Envoy and HAProxy hold theirs only while
/// they have data too).
#[derive(Default)]
struct Half {
    /// Read and not yet written, from `start` on; empty (and unallocated) unless the writing
    /// side pushed back.
    pending: Vec<u8>,
    start: usize,
    /// The reading side ended its stream.
    eof: bool,
    /// The end of stream was passed on (the writing side shut down).
    done: bool,
    /// The reading side reset its connection.
    reset: bool,
    /// Bytes read so far.
    moved: u64,
}

/// The most read at once: Envoy reads up to 16 KiB from a socket at a time too.
const READ_SIZE: usize = 16 * 1024;

thread_local! {
    /// Each worker's read buffer for its relays: a relay reads and writes within one poll,
    /// and a worker polls one task at a time.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SIZE].into_boxed_slice());
}

impl Half {
    /// Moves bytes from `from` to `to` until one of them would block, or until the end of
    /// stream is passed on. `progress` is set if a byte moved either way.
    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut Transport,
        to: &mut Transport,
        progress: &mut bool,
    ) -> Poll<std::io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.start < self.pending.len() {
                let written = ready!(Pin::new(&mut *to).poll_write(cx, &self.pending[self.start..]))?;
                if written == 0 {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                self.start += written;
                *progress = true;
            }
            if self.start > 0 {
                // Written out: the connection holds no buffer again.
                (self.pending, self.start) = (Vec::new(), 0);
            }
            // A TLS side holds written bytes in its records until flushed.
            ready!(Pin::new(&mut *to).poll_flush(cx))?;
            if self.eof {
                if !self.done {
                    ready!(to.poll_end_stream(cx))?;
                    self.done = true;
                }
                return Poll::Ready(Ok(()));
            }
            ready!(SCRATCH.with_borrow_mut(|scratch| self.poll_read_through(cx, from, to, scratch)))?;
            *progress = true;
        }
    }

    /// Reads once into `scratch` and writes what was read to `to`, keeping in `pending`
    /// what `to` does not take.
    fn poll_read_through(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut Transport,
        to: &mut Transport,
        scratch: &mut [u8],
    ) -> Poll<std::io::Result<()>> {
        let mut read = ReadBuf::new(scratch);
        if let Err(e) = ready!(Pin::new(&mut *from).poll_read(cx, &mut read)) {
            self.reset = e.kind() == std::io::ErrorKind::ConnectionReset;
            return Poll::Ready(Err(e));
        }
        let read = read.filled();
        self.moved += read.len() as u64;
        self.eof = read.is_empty();
        let written = match Pin::new(&mut *to).poll_write(cx, read) {
            Poll::Ready(Ok(written)) => written,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => 0,
        };
        self.pending.extend_from_slice(&read[written..]);
        Poll::Ready(Ok(()))
    }
}

/// Relays bytes both ways until both directions have ended, either side fails, or nothing
/// moved for `idle_timeout`. Counts the downstream bytes in `stats` as they move.
async fn relay(
    mut downstream: Transport,
    mut upstream: Transport,
    idle_timeout: Option<Duration>,
    stats: &TcpProxyStats,
) -> Relayed {
    let (mut up, mut down) = (Half::default(), Half::default());
    // The timer is armed for the first possible expiry and, when it fires, moved to one
    // timeout after the last byte moved, if there was one since: re-arming it on every
    // move would take the timer wheel's lock twice a request/response exchange. It is
    // polled only when it woke (`SideWake`), not on every move.
    let mut idle = idle_timeout.map(|t| Box::pin(tokio::time::sleep_until(clock::now() + t)));
    let mut last_moved = clock::now();
    let side = Arc::new(SideWake::default());
    side.rearm();
    let side_waker = Waker::from(side.clone());
    let mut counted = (0, 0);
    let idle_timed_out = std::future::poll_fn(|cx| {
        let mut progress = false;
        let upward = up.poll_move(cx, &mut downstream, &mut upstream, &mut progress);
        let downward = down.poll_move(cx, &mut upstream, &mut downstream, &mut progress);
        if progress {
            last_moved = clock::now();
            let (received, sent) = (up.moved, down.moved - (down.pending.len() - down.start) as u64);
            stats.downstream_cx_rx_bytes_total.add(received - counted.0);
            stats.downstream_cx_tx_bytes_total.add(sent - counted.1);
            counted = (received, sent);
        }
        match (upward, downward) {
            // One side failed (a reset): Envoy closes the other at once.
            (Poll::Ready(Err(_)), _) | (_, Poll::Ready(Err(_))) => return Poll::Ready(false),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(false),
            _ => {}
        }
        if let (Some(timer), Some(timeout)) = (idle.as_mut(), idle_timeout)
            && side.woke(cx)
        {
            let mut side_cx = Context::from_waker(&side_waker);
            while timer.as_mut().poll(&mut side_cx).is_ready() {
                let expiry = last_moved + timeout;
                if expiry <= clock::now() {
                    return Poll::Ready(true);
                }
                timer.as_mut().reset(expiry);
            }
        }
        Poll::Pending
    })
    .await;
    if down.reset {
        // Passed on as a reset, as Envoy does: the client's close is an RST too.
        let _ = downstream.tcp().set_zero_linger();
    }
    let (upstream_ended, upstream_reset) = (down.eof || down.reset, down.reset);
    Relayed { received: counted.0, sent: counted.1, upstream_ended, upstream_reset, idle_timed_out }
}

/// Writes the connection's access log lines, with Envoy's TCP values: no request, response
/// code 0, no protocol.
fn log(chain: &TcpProxyChain, session: &Session, duration: Duration, remote: SocketAddr, local: SocketAddr) {
    let context = LogContext {
        start_time: SystemTime::now().checked_sub(duration).unwrap_or(SystemTime::UNIX_EPOCH),
        request: None,
        response_headers: None,
        response_code: 0,
        response_flags: session.flags,
        response_code_details: "",
        bytes_received: session.bytes_received,
        bytes_sent: session.bytes_sent,
        duration,
        protocol: None,
        upstream_host: session.host.as_ref().map(|h| h.address),
        upstream_cluster: session.cluster.as_ref().map(|c| c.name.as_str()),
        downstream_remote: remote,
        downstream_local: local,
        route_name: None,
    };
    for logger in &chain.access_logs {
        logger.log(&context);
    }
}
