//! Downstream HTTP/1.1, written for a proxy. hyper's server reads each request into a
//! fresh buffer, passes the request body through a channel from its dispatcher, and adds
//! a layer of its own types around every request and response (BENCHMARKS.md, "Counts per
//! request"). Here one future per connection reads a request head, runs the proxy on it
//! and writes the response; the request body reads the socket itself when it is polled
//! (by the proxy, or by the upstream connection sending it), so nothing sits between the
//! two. The read buffer and the buffers heads are written into stay with the connection.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Either;
use pin_project_lite::pin_project;
use tokio::io::AsyncWrite;
use tokio::time::Instant;

use super::framing::{
    Chunk, Decoded, FieldSpans, MAX_HEAD_BYTES, ReadSize, closed_early, decode_chunked, protocol_error,
};
use super::outgoing::Outgoing;
use super::request::{self, BodyFraming, HEADERS_TOO_LARGE, HeadError};
use crate::clock;
use crate::http::body::{BodyError, DownstreamBody, ResponseBody};
use crate::http::headers;
use crate::http::proxy::{self, ConnContext};
use crate::transport::Transport;
use crate::worker::LentTimer;

pin_project! {
    /// One downstream HTTP/1.1 connection: a future that ends when the connection does.
    pub struct H1Server<F, S> {
        conn: Conn,
        serve: F,
        #[pin]
        stage: Stage<S>,
    }
}

pin_project! {
    #[project = StageProj]
    enum Stage<S> {
        /// Waiting for a request head.
        Head,
        /// The proxy works on a request.
        Serving { #[pin] future: S },
        /// Writing a response.
        Responding { response: Outbound },
        /// Closing the connection after the last response.
        Closing,
    }
}

/// Why a head did not become a request.
enum Refused {
    Codec(HeadError),
    /// It was still incomplete when the stream idle timeout passed.
    TimedOut,
}

/// What the connection keeps from request to request.
struct Conn {
    inbound: Rc<Inbound>,
    ctx: Rc<ConnContext>,
    out: Outgoing,
    /// Scratch space for parsing request heads.
    fields: FieldSpans,
    /// The current request's head said.
    keep_alive: bool,
    head_request: bool,
    trailers: bool,
    /// A graceful shutdown was asked for: no request after the current one.
    draining: bool,
    /// When a head that arrived in part must be complete (the stream idle timeout from its
    /// first bytes), and the timer for it; none while heads arrive whole.
    head_deadline: Option<(Instant, LentTimer)>,
}

/// The socket's read side, shared by the connection and the current request's body.
struct Inbound {
    /// Borrowed to read or write, never across a wait.
    stream: RefCell<Transport>,
    /// Bytes read and not yet consumed; kept (and its allocation reused) across requests.
    read: RefCell<BytesMut>,
    read_size: ReadSize,
    /// Where reading the current request's body stands.
    body: Cell<BodyProgress>,
    /// Which request `body` is about; a body handle of an earlier request reads nothing.
    request: Cell<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyProgress {
    Length(u64),
    Chunked(Chunk),
    Done,
    Failed,
}

/// A response being written.
struct Outbound {
    body: ResponseBody,
    /// The body is written as chunks (otherwise as it comes, or not at all).
    chunked: bool,
    /// Nothing more of the body is to be written.
    ended: bool,
    /// The connection closes after this response.
    close: bool,
}

impl<F, S> H1Server<F, S>
where
    F: FnMut(Request<DownstreamBody>) -> S,
    S: Future<Output = Result<Response<ResponseBody>, Infallible>>,
{
    /// Serves HTTP/1.1 on `stream`, whose first bytes (read to tell the protocol) are
    /// `read`, each request with `serve`.
    pub fn new(stream: Transport, read: BytesMut, ctx: Rc<ConnContext>, serve: F) -> H1Server<F, S> {
        let inbound = Inbound {
            stream: RefCell::new(stream),
            read: RefCell::new(read),
            read_size: ReadSize::default(),
            body: Cell::new(BodyProgress::Done),
            request: Cell::new(0),
        };
        H1Server {
            conn: Conn {
                inbound: Rc::new(inbound),
                ctx,
                out: Outgoing::default(),
                fields: Vec::new(),
                keep_alive: true,
                head_request: false,
                trailers: false,
                draining: false,
                head_deadline: None,
            },
            serve,
            stage: Stage::Head,
        }
    }

    /// The response in progress is the last: the connection closes after it (at once
    /// when there is none).
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        self.project().conn.draining = true;
    }
}

impl<F, S> Future for H1Server<F, S>
where
    F: FnMut(Request<DownstreamBody>) -> S,
    S: Future<Output = Result<Response<ResponseBody>, Infallible>>,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        let conn = this.conn;
        loop {
            match this.stage.as_mut().project() {
                StageProj::Head => match ready!(conn.poll_head(cx)) {
                    Some(Ok(request)) => this.stage.set(Stage::Serving { future: (this.serve)(request) }),
                    Some(Err(refused)) => {
                        let response = match refused {
                            Refused::Codec(e) => proxy::codec_error(&conn.ctx, e.status, e.details),
                            Refused::TimedOut => proxy::head_timeout(&conn.ctx),
                        };
                        conn.keep_alive = false;
                        let response = conn.start_response(response);
                        this.stage.set(Stage::Responding { response });
                    }
                    None => this.stage.set(Stage::Closing),
                },
                StageProj::Serving { future } => {
                    // A `100 Continue` goes out before anything else.
                    ready!(conn.out.poll_flush(&mut *conn.inbound.stream.borrow_mut(), cx))?;
                    match future.poll(cx) {
                        Poll::Ready(response) => {
                            let response = conn.start_response(response.unwrap_or_else(|never| match never {}));
                            this.stage.set(Stage::Responding { response });
                        }
                        Poll::Pending => {
                            if conn.inbound.client_gone(cx) {
                                tracing::debug!("the client closed the connection before its response");
                                return Poll::Ready(Ok(()));
                            }
                            return Poll::Pending;
                        }
                    }
                }
                StageProj::Responding { response } => {
                    let close = ready!(conn.poll_response(response, cx))?;
                    this.stage.set(if close || conn.draining { Stage::Closing } else { Stage::Head });
                }
                StageProj::Closing => {
                    // Half-close first so that the client reads the last response to its end
                    // (after TLS's close_notify).
                    let _ = ready!(Pin::new(&mut *conn.inbound.stream.borrow_mut()).poll_shutdown(cx));
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl Conn {
    /// Reads the next request head: `None` when the connection should close instead (the
    /// client closed it, or a shutdown was asked for).
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Request<DownstreamBody>, Refused>>> {
        loop {
            if self.draining {
                return Poll::Ready(None);
            }
            {
                let mut read = self.inbound.read.borrow_mut();
                if !read.is_empty() {
                    match request::parse(&mut read, &mut self.fields) {
                        Ok(Some(head)) => {
                            drop(read);
                            self.head_deadline = None;
                            return Poll::Ready(Some(Ok(self.start_request(head))));
                        }
                        Ok(None) if read.len() >= MAX_HEAD_BYTES => {
                            return Poll::Ready(Some(Err(Refused::Codec(HEADERS_TOO_LARGE))));
                        }
                        Ok(None) => {
                            if let Some(timeout) = self.ctx.listener.hcm.stream_idle_timeout
                                && self.head_deadline.is_none()
                            {
                                self.head_deadline = Some((clock::now() + timeout, self.ctx.worker.timers.lend()));
                            }
                        }
                        Err(refused) => return Poll::Ready(Some(Err(Refused::Codec(refused)))),
                    }
                }
            }
            match self.inbound.poll_read(cx) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => {
                    if let Some((deadline, timer)) = &mut self.head_deadline
                        && timer.until(*deadline).poll(cx).is_ready()
                        && clock::now() >= *deadline
                    {
                        self.head_deadline = None;
                        return Poll::Ready(Some(Err(Refused::TimedOut)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn start_request(&mut self, head: request::RequestHead) -> Request<DownstreamBody> {
        let inbound = &self.inbound;
        let request = inbound.request.get() + 1;
        inbound.request.set(request);
        inbound.body.set(match head.body {
            BodyFraming::None => BodyProgress::Done,
            BodyFraming::Length(n) => BodyProgress::Length(n),
            BodyFraming::Chunked => BodyProgress::Chunked(Chunk::Size),
        });
        self.keep_alive = head.keep_alive;
        self.head_request = head.parts.method == http::Method::HEAD;
        self.trailers = head.trailers;
        if head.expect_continue {
            self.out.start_head().extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let body = H1RequestBody { inbound: inbound.clone(), request };
        Request::from_parts(head.parts, Either::Left(body))
    }

    /// Writes the response head into `out` and decides the body's framing.
    fn start_response(&mut self, response: Response<ResponseBody>) -> Outbound {
        let (parts, body) = response.into_parts();
        let status = parts.status;
        let headers = &parts.headers;
        let bodiless_status = status.is_informational() || status == StatusCode::NO_CONTENT;
        let out = self.out.start_head();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
        out.extend_from_slice(b"\r\n");
        // What the head says of its framing is noted on the way through its fields, rather
        // than looked up in the map again (a hashed lookup each).
        let (mut has_length, mut has_date, mut connection) = (false, false, None);
        for (name, value) in headers {
            if name == header::CONNECTION {
                // The first value, as `HeaderMap::get` gives it.
                connection.get_or_insert(value);
                continue;
            }
            let is_length = name == header::CONTENT_LENGTH;
            has_length |= is_length;
            has_date |= name == header::DATE;
            if bodiless_status && (is_length || name == header::TRANSFER_ENCODING) {
                continue;
            }
            write_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        // An unread rest of the request body cannot be told from the next request: Envoy
        // closes the connection rather than read and discard it.
        let close = !self.keep_alive
            || self.draining
            || self.inbound.body.get() != BodyProgress::Done
            || connection.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if close {
            write_field(out, b"connection", b"close");
        }
        let mut chunked = false;
        let mut ended = true;
        if bodiless_status || status == StatusCode::NOT_MODIFIED {
            // No body, whatever the headers say (RFC 9112 §6.3); a 304 keeps its length.
        } else if self.head_request {
            // Envoy's codec announces chunked framing on a response to HEAD that has no
            // length, and sends no body either way.
            if !has_length {
                write_field(out, b"transfer-encoding", b"chunked");
            }
        } else if has_length {
            ended = false;
        } else if body.is_end_stream() {
            write_field(out, b"content-length", b"0");
        } else if let Some(length) = body.size_hint().exact() {
            write_field(out, b"content-length", itoa::Buffer::new().format(length).as_bytes());
            ended = false;
        } else {
            write_field(out, b"transfer-encoding", b"chunked");
            chunked = true;
            ended = false;
        }
        if !has_date {
            write_field(out, b"date", headers::date_value().as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        headers::recycle_map(parts.headers);
        Outbound { body, chunked, ended, close }
    }

    /// Writes the response body to its end; Ready(true) when the connection closes after it.
    fn poll_response(&mut self, response: &mut Outbound, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            if !response.ended && self.out.frame_is_empty() {
                match Pin::new(&mut response.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            self.out.set_frame(data, response.chunked);
                            // A length-framed body needs nothing after its last frame.
                            response.ended = !response.chunked && response.body.is_end_stream();
                        }
                        Err(frame) => {
                            // Trailers end the body; HTTP/1.1 carries them only in a chunked
                            // body to a client that said it takes them.
                            let trailers = frame.into_trailers().ok().filter(|_| self.trailers);
                            if response.chunked {
                                self.out.set_last_chunk(trailers.as_ref());
                            }
                            response.ended = true;
                        }
                    },
                    Poll::Ready(None) => {
                        if response.chunked {
                            self.out.set_last_chunk(None);
                        }
                        response.ended = true;
                    }
                    // The response cannot be finished: what is ready (the head at least) goes
                    // out as far as the socket takes it now, as Envoy's codec had sent it, and
                    // closing the connection tells the client the rest will not come.
                    Poll::Ready(Some(Err(e))) => {
                        let _ = self.out.poll_flush(&mut *self.inbound.stream.borrow_mut(), cx);
                        return Poll::Ready(Err(io::Error::other(e)));
                    }
                    Poll::Pending if self.out.is_empty() => {
                        if self.inbound.client_gone(cx) {
                            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
                        }
                        return Poll::Pending;
                    }
                    Poll::Pending => {}
                }
            }
            ready!(self.out.poll_flush(&mut *self.inbound.stream.borrow_mut(), cx))?;
            if response.ended && self.out.is_empty() {
                return Poll::Ready(Ok(response.close));
            }
        }
    }
}

impl Drop for Conn {
    /// A request body still held elsewhere (the task sending it to an HTTP/2 upstream) keeps
    /// the socket open: ending its read side wakes that reader with an end of stream, so it
    /// fails, resets its upstream stream, and lets the socket close.
    fn drop(&mut self) {
        if Rc::strong_count(&self.inbound) > 1 {
            let _ = socket2::SockRef::from(self.inbound.stream.borrow().tcp()).shutdown(std::net::Shutdown::Read);
        }
    }
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

impl Inbound {
    fn poll_read(&self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut read = self.read.borrow_mut();
        let room = self.read_size.make_room(&mut read);
        // Through `AsyncRead`, which notes a short read as the end of what the socket had,
        // so that the next read waits for the reactor instead of trying the socket.
        let mut stream = self.stream.borrow_mut();
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, &mut *read))?;
        self.read_size.record(room, n);
        Poll::Ready(Ok(n))
    }

    /// Whether the client closed the connection (Envoy resets its streams then), while
    /// the current request's body is not being read: bytes it sent ahead (pipelined
    /// requests) are kept, up to the size of a head.
    fn client_gone(&self, cx: &mut Context<'_>) -> bool {
        if !matches!(self.body.get(), BodyProgress::Done | BodyProgress::Failed) {
            return false;
        }
        while self.read.borrow().len() < MAX_HEAD_BYTES {
            match self.poll_read(cx) {
                Poll::Ready(Ok(0) | Err(_)) => return true,
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return false,
            }
        }
        false
    }
}

/// A request body, read from the connection as it is polled.
pub struct H1RequestBody {
    inbound: Rc<Inbound>,
    /// Which of the connection's requests this is the body of.
    request: u64,
}

impl H1RequestBody {
    fn progress(&self) -> BodyProgress {
        if self.inbound.request.get() == self.request { self.inbound.body.get() } else { BodyProgress::Done }
    }

    fn decode(&self) -> Result<Decoded, BodyError> {
        let inbound = &self.inbound;
        let mut read = inbound.read.borrow_mut();
        match self.progress() {
            BodyProgress::Done => Ok(Decoded::End),
            BodyProgress::Failed => Err(protocol_error("downstream request body failed")),
            _ if read.is_empty() => Ok(Decoded::NeedMore),
            BodyProgress::Length(left) => {
                let take = read.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - take as u64;
                inbound.body.set(if left == 0 { BodyProgress::Done } else { BodyProgress::Length(left) });
                Ok(Decoded::Frame(Frame::data(read.split_to(take).freeze())))
            }
            BodyProgress::Chunked(mut chunk) => {
                let decoded = decode_chunked(&mut read, &mut chunk)?;
                let done = match &decoded {
                    Decoded::End => true,
                    Decoded::Frame(frame) => frame.is_trailers(),
                    _ => false,
                };
                inbound.body.set(if done { BodyProgress::Done } else { BodyProgress::Chunked(chunk) });
                Ok(decoded)
            }
        }
    }

    fn fail(&self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.inbound.body.set(BodyProgress::Failed);
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for H1RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            match self.decode() {
                Ok(Decoded::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(Decoded::Again) => continue,
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
                Err(e) => return self.fail(e),
            }
            match ready!(self.inbound.poll_read(cx)) {
                Ok(0) => return self.fail(closed_early("downstream closed the connection mid-body")),
                Ok(_) => {}
                Err(e) => return self.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.progress() == BodyProgress::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.progress() {
            BodyProgress::Length(left) => SizeHint::with_exact(left),
            BodyProgress::Done => SizeHint::with_exact(0),
            BodyProgress::Chunked(_) | BodyProgress::Failed => SizeHint::default(),
        }
    }
}
