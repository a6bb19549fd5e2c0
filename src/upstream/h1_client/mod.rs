//! HTTP/1.1 to upstreams, written for a proxy. hyper's client drives each connection in a
//! task of its own, hands it every request over a channel and answers through a oneshot:
//! two task hops, two allocations and a fresh read buffer per request (BENCHMARKS.md,
//! "Counts per request"). Here the request's own task writes the request and reads the
//! response head on the connection it checked out; the response body reads the rest and
//! gives the connection back to its pool once the response has ended. The read buffer
//! and the buffer the request head is written into stay with the connection.

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use crate::transport::Transport;
use bytes::{Bytes, BytesMut};
use http::{Method, Response};
use http_body::{Body, Frame, SizeHint};

use super::pool::{HostPool, LiveConnection, SendError, UpstreamRequest};
use crate::http::body::{BodyError, RequestBody};
use crate::http::h1::framing::{
    Chunk, Decoded, FieldSpans, MAX_HEAD_BYTES, ReadSize, closed_early, decode_chunked, is_protocol_error,
    protocol_error,
};
use crate::http::h1::outgoing::Outgoing;
use codec::{HeadFraming, RequestFraming, ResponseFraming, encode_head, parse_head};

mod codec;
#[cfg(test)]
mod tests;

/// One HTTP/1.1 connection to a host, idle or carrying one request.
pub struct H1Connection {
    io: Transport,
    /// Bytes read and not yet consumed; kept (and its allocation reused) across requests.
    read: BytesMut,
    read_size: ReadSize,
    /// What of the request is yet to be written.
    out: Outgoing,
    /// The request body still being sent; it streams while the response is read, as an
    /// upstream may answer (an echo, a stream) before the whole request arrived.
    sending: Option<RequestBody>,
    chunked: bool,
    /// A frame, or the end, of the request body was taken (it can no longer be resent).
    body_taken: bool,
    /// Writing the request failed; the response may still come.
    write_failed: bool,
    /// It carries its last request (`max_requests_per_connection`): closed once the
    /// response ends instead of going back to the pool.
    retiring: bool,
    /// Header names and value positions of the response head being parsed.
    fields: FieldSpans,
    /// Counted as an active connection, and how it ended when it drops.
    live: LiveConnection,
}

impl H1Connection {
    /// Boxed: it moves between the pool and response bodies, which stay small.
    pub fn new(io: Transport, live: LiveConnection) -> Box<H1Connection> {
        Box::new(H1Connection {
            io,
            read: BytesMut::new(),
            read_size: ReadSize::default(),
            out: Outgoing::default(),
            sending: None,
            chunked: false,
            body_taken: false,
            write_failed: false,
            retiring: false,
            fields: Vec::new(),
            live,
        })
    }

    /// Its cluster's `idle_timeout` (as of its connect).
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.live.cluster().idle_timeout
    }

    /// Closes the connection for idling past its `idle_timeout`, counted as Envoy does.
    pub fn close_idle(self: Box<Self>) {
        self.live.cluster().stats.upstream_cx_idle_timeout.inc();
    }

    /// Counts `upstream_cx_protocol_error` if `error`, which ends the connection, is the
    /// upstream's violation of HTTP/1.1; returns whether it is.
    fn counted_as_protocol_error(&self, error: &BodyError) -> bool {
        let violation = is_protocol_error(error);
        if violation {
            self.live.cluster().stats.upstream_cx_protocol_error.inc();
        }
        violation
    }

    /// Makes the next request the connection's last if it has carried `max` - 1 already;
    /// true if it did.
    pub fn retire_at(&mut self, max: u32) -> bool {
        self.retiring = self.live.end.requests + 1 >= u64::from(max);
        self.retiring
    }

    /// Whether the idle connection can still carry a request: false once the upstream
    /// closed it or sent bytes nobody asked for. Registers `cx` to be woken when that
    /// changes; a read is tried only when the reactor saw the socket become readable.
    pub fn is_alive(&mut self, cx: &mut Context<'_>) -> bool {
        let closed_by_upstream = match self.io.poll_read_idle(cx, &mut self.read) {
            Poll::Pending => return true,
            // Bytes nobody asked for: legate closes it.
            Poll::Ready(Ok(n)) => n == 0,
            Poll::Ready(Err(_)) => true,
        };
        self.live.end.remote = closed_by_upstream;
        false
    }

    /// Sends `request` and reads the response head. The response body holds the
    /// connection (and sends what is left of the request body) and returns it to `pool`
    /// once the response has ended.
    pub async fn send<'a>(
        mut self: Box<Self>,
        request: UpstreamRequest<'a>,
        pool: &Rc<HostPool>,
    ) -> Result<Response<H1Body>, SendError<'a>> {
        let UpstreamRequest { head, body } = request;
        self.chunked = encode_head(self.out.start_head(), head.get(), &body) == RequestFraming::Chunked;
        self.live.end.with_active_rq = true;
        self.body_taken = false;
        self.write_failed = false;
        // Kept to give the request back if it could not be written at all.
        let bodiless = if body.is_end_stream() {
            Some(body)
        } else {
            self.sending = Some(body);
            None
        };
        let head_request = head.get().method == Method::HEAD;
        // Held until the head is written, to hand the request back if it cannot be.
        let mut unsent = Some(head);
        let response = std::future::poll_fn(|cx| {
            if self.is_sending() {
                match self.poll_send(cx) {
                    Poll::Ready(Err(WriteFailure::Body(e))) => return Poll::Ready(Err(Some(e))),
                    Poll::Ready(Err(WriteFailure::Io)) if !self.body_taken && unsent.is_some() => {
                        return Poll::Ready(Err(None));
                    }
                    Poll::Ready(_) | Poll::Pending => {}
                }
                if self.out.head_is_written()
                    && let Some(head) = unsent.take()
                {
                    // Written, so carried: a request handed back goes out on another one.
                    self.live.end.requests += 1;
                    head.written();
                }
            }
            self.poll_read_head(cx, head_request)
        })
        .await;
        let (head, framing) = match response {
            Ok(response) => response,
            Err(Some(e)) if self.counted_as_protocol_error(&e) => return Err(SendError::ProtocolError),
            Err(Some(e)) => return Err(SendError::Failed(e)),
            Err(None) => {
                let (Some(head), Some(body)) = (unsent, bodiless.or_else(|| self.sending.take())) else {
                    unreachable!("a request is handed back only while its head and body are untouched");
                };
                return Err(SendError::Unsent(Box::new(UpstreamRequest { head, body })));
            }
        };
        let state = match framing.body {
            ResponseFraming::Empty => BodyState::Done,
            ResponseFraming::Length(n) => BodyState::Length(n),
            ResponseFraming::Chunked => BodyState::Chunked(Chunk::Size),
            ResponseFraming::UntilClose => BodyState::UntilClose,
        };
        let mut body = H1Body { connection: Some(self), pool: pool.clone(), state, keep_alive: framing.keep_alive };
        if body.state == BodyState::Done {
            body.end();
        }
        Ok(Response::from_parts(head, body))
    }

    /// The request is not all written yet, and writing has not failed.
    fn is_sending(&self) -> bool {
        !self.write_failed && (self.sending.is_some() || !self.out.is_empty())
    }

    /// Writes what is left of the request: Ready once it is all written (or failed). The
    /// head waits for the body's first data when that is already there, to go in the same
    /// write.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriteFailure>> {
        let result = loop {
            if let Some(body) = &mut self.sending
                && self.out.frame_is_empty()
            {
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        self.body_taken = true;
                        // Request trailers are dropped, as Envoy's HTTP/1 codec drops them.
                        if let Ok(data) = frame.into_data() {
                            self.out.set_frame(data, self.chunked);
                        }
                    }
                    Poll::Ready(Some(Err(e))) => break Err(WriteFailure::Body(e)),
                    Poll::Ready(None) => {
                        self.body_taken = true;
                        self.sending = None;
                        if self.chunked {
                            self.out.set_last_chunk(None);
                        }
                    }
                    Poll::Pending if self.out.is_empty() => return Poll::Pending,
                    Poll::Pending => {}
                }
            }
            if let Err(e) = ready!(self.out.poll_flush(&mut self.io, cx)) {
                tracing::debug!(error = %e, "writing the request upstream failed");
                // A write fails on a connection the upstream closed or reset.
                self.live.end.remote = true;
                break Err(WriteFailure::Io);
            }
            if self.sending.is_none() {
                return Poll::Ready(Ok(()));
            }
        };
        // The body stays (unpolled): an untouched one goes out again on another connection.
        self.write_failed = true;
        Poll::Ready(result)
    }

    /// Reads until a final (non-1xx) response head is parsed; informational responses
    /// (100 Continue, 103 Early Hints) are skipped, as Envoy does by default.
    fn poll_read_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
    ) -> Poll<Result<(http::response::Parts, HeadFraming), Option<BodyError>>> {
        loop {
            if !self.read.is_empty()
                && let Some(parsed) = parse_head(&mut self.read, &mut self.fields, head_request)?
            {
                return Poll::Ready(Ok(parsed));
            }
            if self.read.len() >= MAX_HEAD_BYTES {
                return Poll::Ready(Err(Some(protocol_error("upstream response headers too large"))));
            }
            if ready!(self.poll_read(cx)).map_err(|e| Some(e.into()))? == 0 {
                return Poll::Ready(Err(Some(closed_early("upstream closed the connection before a response"))));
            }
        }
    }

    /// Reads more; the end of the stream or a read error marks the connection as closed by
    /// the upstream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let room = self.read_size.make_room(&mut self.read);
        let read = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read));
        if !matches!(read, Ok(n) if n > 0) {
            self.live.end.remote = true;
        }
        let read = read?;
        self.read_size.record(room, read);
        Poll::Ready(Ok(read))
    }
}

enum WriteFailure {
    /// Writing to the upstream failed (logged; the response may still come).
    Io,
    /// The downstream request body failed (a reset, `request_timeout`).
    Body(BodyError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// A response body read from an HTTP/1.1 connection, which it owns until the body ends;
/// polling it also sends what is left of the request body.
pub struct H1Body {
    /// `None` once the body ended (the connection went back to the pool, or was closed).
    connection: Option<Box<H1Connection>>,
    pool: Rc<HostPool>,
    state: BodyState,
    /// The response lets the connection carry another request.
    keep_alive: bool,
}

impl H1Body {
    /// The body has ended: the connection goes back to the pool if the whole request went
    /// out, the response allows it and nothing beyond the response was read; otherwise it
    /// is closed (Envoy, too, resets an HTTP/1.1 request answered before it was sent).
    fn end(&mut self) {
        self.state = BodyState::Done;
        let Some(mut connection) = self.connection.take() else { return };
        // A request still being sent is in flight on a connection closed now.
        connection.live.end.with_active_rq = connection.is_sending();
        if self.keep_alive
            && !connection.retiring
            && !connection.write_failed
            && !connection.is_sending()
            && connection.read.is_empty()
        {
            self.pool.release_h1(connection);
        }
    }

    fn decode(&mut self) -> Result<Decoded, BodyError> {
        let Some(connection) = self.connection.as_mut() else { return Ok(Decoded::End) };
        let read = &mut connection.read;
        match &mut self.state {
            BodyState::Done => Ok(Decoded::End),
            _ if read.is_empty() => Ok(Decoded::NeedMore),
            BodyState::Length(left) => {
                let take = read.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= take as u64;
                Ok(Decoded::Frame(Frame::data(read.split_to(take).freeze())))
            }
            BodyState::UntilClose => Ok(Decoded::Frame(Frame::data(read.split().freeze()))),
            BodyState::Chunked(chunk) => match decode_chunked(read, chunk)? {
                // The trailers are the body's last frame.
                Decoded::Frame(frame) if frame.is_trailers() => {
                    self.state = BodyState::Done;
                    Ok(Decoded::Frame(frame))
                }
                decoded => Ok(decoded),
            },
        }
    }

    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(connection) = self.connection.take() {
            connection.counted_as_protocol_error(&error);
        }
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(connection) = this.connection.as_mut()
            && connection.is_sending()
            && let Poll::Ready(Err(WriteFailure::Body(e))) = connection.poll_send(cx)
        {
            // The downstream request failed mid-body: the upstream exchange cannot finish.
            return this.fail(e);
        }
        loop {
            match this.decode() {
                Ok(Decoded::Frame(frame)) => {
                    if this.state == BodyState::Done || this.state == BodyState::Length(0) {
                        this.end();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Decoded::Again) => continue,
                Ok(Decoded::End) => {
                    this.end();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => return this.fail(e),
            }
            let Some(connection) = this.connection.as_mut() else { return Poll::Ready(None) };
            match ready!(connection.poll_read(cx)) {
                Ok(0) if this.state == BodyState::UntilClose => {
                    this.keep_alive = false;
                    this.end();
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(closed_early("upstream closed the connection mid-body")),
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == BodyState::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Length(left) => SizeHint::with_exact(left),
            BodyState::Chunked(_) | BodyState::UntilClose => SizeHint::default(),
        }
    }
}
