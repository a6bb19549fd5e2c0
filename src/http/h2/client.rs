//! Upstream HTTP/2 on legate's own codec. The request's own task opens the stream, writes
//! its head into the connection's buffer and waits for the response head; one task per
//! connection reads and writes the socket; only a request body gets a task to stream it.
//! The h2 crate, which legate used before, cost ≈ 16 000 instructions more per request than
//! an HTTP/1.1 upstream (BENCHMARKS.md, "Counts per request").

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::transport::Transport;
use http::Response;
use http::header;
use http_body::Body;
use tokio::time::{Instant, Sleep};

use super::conn::{Conn, ConnectionError, PREFACE, Role, fail};
use super::frame::{self, Reason};
use super::head::{Fields, Kind, Refusal};
use super::hpack::{self, Encoder, Pseudo};
use super::shared::{self, Shared, register};
use super::stream::{RecvBody, SendStream};
use crate::http::h1::framing::MAX_HEAD_BYTES;
use crate::http::headers;
use crate::upstream::cluster::ClusterStats;
use crate::upstream::pool::{ConnectionEnd, SendError, UpstreamRequest};

// hyper's client defaults, which legate used before and Envoy's are no smaller than.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// The references a running driver holds to its connection's shared state: its `Conn`'s
/// and the one it polls through.
const DRIVER_REFS: usize = 2;

/// One HTTP/2 connection to a host: a handle to open streams on it.
#[derive(Clone)]
pub struct H2Connection {
    shared: Rc<RefCell<Shared>>,
    /// `:scheme` of its requests: that of the upstream connection, as Envoy sets it.
    scheme: &'static [u8],
}

impl H2Connection {
    /// Starts HTTP/2 on `stream` (the preface and SETTINGS go out first; requests need not
    /// wait for the server's, RFC 9113 §3.4); returns the connection and the future that
    /// drives it, to be spawned on the worker. The driver ends when the upstream closes or
    /// sends GOAWAY and its streams are done, when nothing refers to the connection, or
    /// after `idle_timeout` without a stream.
    pub fn start(
        stream: Transport,
        idle_timeout: Option<Duration>,
    ) -> (H2Connection, impl Future<Output = ConnectionEnd> + 'static) {
        let mut shared = Shared::new(true, STREAM_WINDOW, CONNECTION_WINDOW);
        shared.out.buf.extend_from_slice(PREFACE);
        frame::put_settings(
            &mut shared.out.buf,
            &[
                (frame::SETTINGS_ENABLE_PUSH, 0),
                (frame::SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (frame::SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEAD_BYTES as u32),
            ],
        );
        shared.grow_connection_window();
        let mut conn = Conn::new(stream, bytes::BytesMut::new(), shared, false);
        let scheme: &[u8] = if conn.is_tls() { b"https" } else { b"http" };
        let connection = H2Connection { shared: conn.shared.clone(), scheme };
        let mut idle = idle_timeout.map(IdleClose::new);
        let driver = async move {
            let shared = conn.shared.clone();
            std::future::poll_fn(|cx| shared::polling(&shared, cx, |cx| poll_client(&mut conn, &mut idle, cx))).await
        };
        (connection, driver)
    }

    /// Counts its streams' resets, and those its end cuts, in the cluster's stats.
    pub fn count_resets_in(&self, stats: Arc<ClusterStats>) {
        self.shared.borrow_mut().upstream_stats = Some(stats);
    }

    /// Lets the connection open `max` streams (`max_requests_per_connection`); it is
    /// replaced after the last, and closes once that stream is done.
    pub fn limit_streams(&self, max: u32) {
        let last = u64::from(max) * 2 - 1;
        self.shared.borrow_mut().last_stream = last.min(frame::MAX_WINDOW as u64) as u32;
    }

    /// Whether both handles are to the same connection.
    pub fn ptr_eq(&self, other: &H2Connection) -> bool {
        Rc::ptr_eq(&self.shared, &other.shared)
    }

    /// The connection opened the last stream it may.
    pub fn is_spent(&self) -> bool {
        self.shared.borrow().is_spent()
    }

    /// The connection takes no new streams (it closed, the upstream sent GOAWAY, or it
    /// opened its last): it is replaced.
    pub fn is_closed(&self) -> bool {
        let shared = self.shared.borrow();
        shared.closed || shared.goaway.is_some() || shared.is_spent()
    }

    /// Opens a stream for `request` once the upstream's stream limit has room, calling
    /// `attached` when it does, and waits for the response head. A connection that takes no
    /// more streams hands the request back: nothing of it was sent.
    pub async fn send<'a>(
        &self,
        request: UpstreamRequest<'a>,
        attached: &dyn Fn(),
    ) -> Result<Response<RecvBody>, SendError<'a>> {
        let Some(id) = std::future::poll_fn(|cx| self.shared.borrow_mut().poll_open(cx)).await else {
            return Err(SendError::Unsent(Box::new(request)));
        };
        attached();
        let UpstreamRequest { head, mut body } = request;
        let end = body.is_end_stream();
        let mut response_body = RecvBody::new(self.shared.clone(), id, None);
        let sender = SendStream::new(self.shared.clone(), id);
        self.shared
            .borrow_mut()
            .send_headers(id, end, |encoder, dst| encode_request(encoder, head.get(), self.scheme, dst));
        head.written();
        if !end {
            tokio::task::spawn_local(async move {
                let mut pending = None;
                std::future::poll_fn(|cx| sender.poll_body(&mut body, &mut pending, Reason::CANCEL, cx)).await;
            });
        }
        let (head, content_length) = std::future::poll_fn(|cx| self.shared.borrow_mut().poll_head(id, cx)).await?;
        response_body.expect_length(content_length);
        Ok(Response::from_parts(head, response_body))
    }
}

impl Drop for H2Connection {
    fn drop(&mut self) {
        // The last handle: the driver ends once no stream is left.
        if Rc::strong_count(&self.shared) == DRIVER_REFS + 1 {
            self.shared.borrow_mut().wake_task();
        }
    }
}

/// A request head as HEADERS: the pseudo-header fields from the request (`:authority` from
/// `host`, where a host rewrite lands), then the fields HTTP/2 allows.
fn encode_request(encoder: &mut Encoder, head: &http::request::Parts, scheme: &[u8], dst: &mut bytes::BytesMut) {
    hpack::encode_pseudo(Pseudo::Method, head.method.as_str().as_bytes(), dst);
    hpack::encode_pseudo(Pseudo::Scheme, scheme, dst);
    let authority = match head.headers.get(header::HOST) {
        Some(host) => host.as_bytes(),
        None => head.uri.authority().map_or(&b"localhost"[..], |a| a.as_str().as_bytes()),
    };
    encoder.authority(authority, dst);
    let path = head.uri.path_and_query().map_or(&b"/"[..], |p| p.as_str().as_bytes());
    hpack::encode_pseudo(Pseudo::Path, path, dst);
    for (name, value) in &head.headers {
        if !headers::is_forbidden_in_http2(name, value.as_bytes()) && name != header::HOST {
            encoder.field(name, value, dst);
        }
    }
}

/// The client's side of the connection's state: opening streams, and response heads.
impl Shared {
    /// Legate opened the last stream it may on the connection.
    fn is_spent(&self) -> bool {
        self.next_stream > self.last_stream
    }

    /// Opens a stream for a request once the peer's stream limit has room; `None` once the
    /// connection takes no more streams (closed, after the peer's GOAWAY, or past its last).
    pub fn poll_open(&mut self, cx: &Context<'_>) -> Poll<Option<u32>> {
        if self.closed || self.goaway.is_some() || self.is_spent() {
            return Poll::Ready(None);
        }
        if self.open >= self.peer_max_streams {
            self.stream_waiters.push(cx.waker().clone());
            return Poll::Pending;
        }
        let id = self.next_stream;
        self.next_stream += 2;
        self.insert_stream(id);
        if id == self.last_stream
            && id < frame::MAX_WINDOW as u32
            && let Some(stats) = &self.upstream_stats
        {
            stats.upstream_cx_max_requests.inc();
        }
        Poll::Ready(Some(id))
    }

    /// A response head on a stream legate opened, with the body length it declares.
    pub fn recv_head(&mut self, id: u32, end: bool, head: Result<(http::response::Parts, Option<u64>), Refusal>) {
        let Some(stream) = self.streams.get_mut(&id) else { return };
        if stream.reset.is_some() {
            return;
        }
        match head {
            Ok((head, content_length)) => {
                stream.head = Some((head, content_length));
                stream.head_seen = true;
                stream.content_left = content_length;
                stream.recv_closed = end;
                if let Some(waker) = stream.reader.take() {
                    waker.wake();
                }
                if end {
                    self.note_closed(id);
                }
            }
            Err(_) => self.reset(id, Reason::PROTOCOL_ERROR),
        }
    }

    /// The response head and its declared body length once it came; why not if the stream
    /// or the connection ended first.
    pub fn poll_head(
        &mut self,
        id: u32,
        cx: &Context<'_>,
    ) -> Poll<Result<(http::response::Parts, Option<u64>), SendError<'static>>> {
        let ended = |what: &'static str| Poll::Ready(Err(SendError::Failed(what.into())));
        let (closed, broken) = (self.closed, self.broken);
        let Some(stream) = self.streams.get_mut(&id) else { return ended("upstream stream gone") };
        if let Some(head) = stream.head.take() {
            return Poll::Ready(Ok(head));
        }
        match stream.reset {
            Some(reason) if stream.reset_by_peer => {
                Poll::Ready(Err(SendError::RemoteReset { refused: reason == Reason::REFUSED_STREAM }))
            }
            // Legate resets a stream whose response head breaks the protocol.
            Some(Reason::PROTOCOL_ERROR) => Poll::Ready(Err(SendError::ProtocolError)),
            Some(_) => ended("upstream stream reset"),
            None if broken => Poll::Ready(Err(SendError::ProtocolError)),
            None if closed => ended("upstream connection closed"),
            None => {
                register(&mut stream.reader, cx);
                Poll::Pending
            }
        }
    }
}

/// Closes a connection that had no stream for its cluster's `idle_timeout`, with GOAWAY,
/// as Envoy's pools do. Its one timer moves only when it fires (to when the connection
/// will have idled long enough), so a connection that goes idle and busy again on every
/// request costs a clock reading, not a timer update; while busy it is not looked at.
struct IdleClose {
    timeout: Duration,
    /// Since when the connection has had no stream.
    since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
}

impl IdleClose {
    fn new(timeout: Duration) -> IdleClose {
        IdleClose { timeout, since: None, timer: Box::pin(tokio::time::sleep(timeout)) }
    }

    /// Notes whether the connection is idle; true once it has been for the timeout.
    fn expired(&mut self, idle: bool, cx: &mut Context<'_>) -> bool {
        if !idle {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        while self.timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= since + self.timeout {
                return true;
            }
            self.timer.as_mut().reset(since + self.timeout);
        }
        false
    }
}

/// Drives the connection; Ready with how it ended once it has.
fn poll_client(conn: &mut Conn, idle: &mut Option<IdleClose>, cx: &mut Context<'_>) -> Poll<ConnectionEnd> {
    loop {
        let mut progressed = conn.poll_read(&mut Client, cx).unwrap_or_else(|e| {
            conn.raise(e, 0);
            false
        });
        let flushed = match conn.poll_flush(cx) {
            Poll::Ready(drained) => {
                progressed |= drained;
                true
            }
            Poll::Pending => false,
        };
        let shared = conn.shared.borrow();
        // The end of the stream, a read or write error (`eof`) or a GOAWAY is the upstream's
        // doing; a connection error legate raised, or the pool letting go, is legate's. A
        // stream whose response had not all arrived was in flight, and is counted as Envoy's
        // pools count a stream cut by its connection's end (`upstream_rq_pending_failure_eject`).
        let ended = |remote| {
            let in_flight = shared.streams.values().filter(|s| !s.recv_closed && s.reset.is_none()).count();
            if let Some(stats) = &shared.upstream_stats {
                stats.upstream_rq_pending_failure_eject.add(in_flight as u64);
            }
            // Client streams take the odd ids from 1 up, one a request.
            let requests = u64::from(shared.next_stream / 2);
            ConnectionEnd { remote, with_active_rq: in_flight > 0, requests }
        };
        if conn.eof || (flushed && conn.error.is_some()) {
            // A connection error legate raised, but for closing an idle connection, is the
            // upstream's breach of HTTP/2.
            if conn.error.as_ref().is_some_and(|e| e.reason != Reason::NO_ERROR)
                && let Some(stats) = &shared.upstream_stats
            {
                stats.upstream_cx_protocol_error.inc();
            }
            return Poll::Ready(ended(conn.eof));
        }
        // Only the driver refers to the connection: the pool let it go, and no stream is left.
        let unused = Rc::strong_count(&conn.shared) == DRIVER_REFS;
        if flushed && shared.streams.is_empty() && (shared.goaway.is_some() || unused) {
            return Poll::Ready(ended(shared.goaway.is_some()));
        }
        if !progressed {
            let idle_too_long = idle.as_mut().is_some_and(|idle| idle.expired(shared.streams.is_empty(), cx));
            if !idle_too_long {
                return Poll::Pending;
            }
            if let Some(stats) = &shared.upstream_stats {
                stats.upstream_cx_idle_timeout.inc();
            }
            drop(shared);
            // No stream to name: GOAWAY with the last stream id 0, then the connection ends.
            conn.raise(fail(Reason::NO_ERROR, "idle timeout"), 0);
        }
    }
}

/// The client's side of the streams: responses to the requests legate sent.
struct Client;

impl Role for Client {
    fn is_idle(&self, shared: &Shared, id: u32) -> bool {
        // Servers open no streams (push is off).
        id.is_multiple_of(2) || id >= shared.next_stream
    }

    fn block_kind(&self, shared: &Shared, id: u32) -> Kind {
        match shared.streams.get(&id) {
            Some(stream) if !stream.head_seen => Kind::Response,
            _ => Kind::Trailers,
        }
    }

    fn on_block(
        &mut self,
        shared: &Rc<RefCell<Shared>>,
        id: u32,
        end_stream: bool,
        fields: Fields,
    ) -> Result<(), ConnectionError> {
        if self.is_idle(&shared.borrow(), id) {
            return Err(fail(Reason::PROTOCOL_ERROR, "HEADERS on a stream legate did not open"));
        }
        let mut shared = shared.borrow_mut();
        match fields.kind() {
            Kind::Response => match fields.into_response(end_stream) {
                // Informational responses (100 Continue, 103 Early Hints) are not forwarded;
                // one may not end the stream.
                Ok((head, _)) if head.status.is_informational() => {
                    if end_stream {
                        shared.reset(id, Reason::PROTOCOL_ERROR);
                    }
                }
                head => shared.recv_head(id, end_stream, head),
            },
            _ => shared.recv_trailers(id, end_stream, fields.into_trailers()),
        }
        Ok(())
    }

    fn on_goaway(&mut self, shared: &mut Shared, last_stream: u32) {
        shared.goaway = Some(last_stream);
        // Streams past the last one the server took were not processed.
        let refused: Vec<u32> = shared.streams.keys().copied().filter(|&id| id > last_stream).collect();
        for id in refused {
            shared.peer_reset(id, Reason::REFUSED_STREAM);
        }
        for waiter in shared.stream_waiters.drain(..) {
            waiter.wake();
        }
    }
}
