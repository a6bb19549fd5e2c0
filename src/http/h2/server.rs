//! One downstream HTTP/2 connection: opens a stream per request and runs it (the proxy,
//! then the response) inside the connection's own task, in a `FuturesUnordered` polled
//! beside the socket, so a stream costs no task, and a response is written by the same poll
//! that produced it.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use crate::transport::Transport;
use bytes::BytesMut;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::Request;
use http_body_util::Either;

use super::conn::{Conn, ConnectionError, Role, fail};
use super::frame::{self, Reason};
use super::head::{Fields, Kind};
use super::shared::{self, Shared};
use super::stream::{RecvBody, SendStream};
use crate::config::hcm::Http2Settings;
use crate::http::body::DownstreamBody;
use crate::http::h1::framing::MAX_HEAD_BYTES;
use crate::http::proxy::ConnContext;

/// One downstream HTTP/2 connection and its streams; a future that ends with the connection.
pub struct H2Server<F, S> {
    conn: Conn,
    server: Server<F, S>,
    ctx: Rc<ConnContext>,
}

/// The server's side of the streams.
struct Server<F, S> {
    streams: FuturesUnordered<S>,
    serve: F,
    /// The highest stream id the client opened.
    last_stream: u32,
    max_concurrent_streams: u32,
    /// New streams are taken (no GOAWAY sent or received).
    accepting: bool,
}

impl<F, S> H2Server<F, S>
where
    F: FnMut(Request<DownstreamBody>, SendStream) -> S + Unpin,
    S: Future<Output = ()>,
{
    /// Serves HTTP/2 on `io`, whose first bytes (read to tell the protocol) are `read`,
    /// each stream with `serve`.
    pub fn new(io: Transport, read: BytesMut, ctx: Rc<ConnContext>, settings: Http2Settings, serve: F) -> Self {
        let mut shared = Shared::new(false, settings.initial_stream_window, settings.initial_connection_window);
        frame::put_settings(
            &mut shared.out.buf,
            &[
                (frame::SETTINGS_MAX_CONCURRENT_STREAMS, settings.max_concurrent_streams),
                (frame::SETTINGS_INITIAL_WINDOW_SIZE, settings.initial_stream_window),
                (frame::SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEAD_BYTES as u32),
            ],
        );
        shared.grow_connection_window();
        H2Server {
            conn: Conn::new(io, read, shared, true),
            server: Server {
                streams: FuturesUnordered::new(),
                serve,
                last_stream: 0,
                max_concurrent_streams: settings.max_concurrent_streams,
                accepting: true,
            },
            ctx,
        }
    }

    /// Sends GOAWAY: streams in progress finish, no new ones start.
    pub fn graceful_shutdown(&mut self) {
        if self.server.accepting && self.conn.error.is_none() {
            self.server.accepting = false;
            let mut shared = self.conn.shared.borrow_mut();
            frame::put_goaway(&mut shared.out.buf, self.server.last_stream, Reason::NO_ERROR);
            shared.wake_task();
        }
    }

    fn poll_connection(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        // Responses that became ready since the last poll are written before more requests
        // are read and sent upstream: finishing work before taking more shortens the latency
        // tail (BENCHMARKS.md, "Responses before new requests"). A failed write ends the
        // connection, which the loop below sees.
        while let Poll::Ready(Some(())) = self.server.streams.poll_next_unpin(cx) {}
        let _ = self.conn.poll_flush(cx);
        loop {
            let mut progressed = self.conn.poll_read(&mut self.server, cx).unwrap_or_else(|e| {
                // Envoy counts a codec's protocol errors so.
                self.ctx.listener.http_stats.downstream_cx_protocol_error.inc();
                self.conn.raise(e, self.server.last_stream);
                self.server.accepting = false;
                false
            });
            // The streams next: what they send goes out in the write below.
            while let Poll::Ready(Some(())) = self.server.streams.poll_next_unpin(cx) {}
            let flushed = match self.conn.poll_flush(cx) {
                Poll::Ready(drained) => {
                    progressed |= drained;
                    true
                }
                Poll::Pending => false,
            };
            if self.conn.eof {
                return Poll::Ready(Ok(()));
            }
            if flushed && let Some(e) = self.conn.error.take() {
                return Poll::Ready(Err(e));
            }
            if flushed && !self.server.accepting && self.server.streams.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }
}

impl<F, S> Role for Server<F, S>
where
    F: FnMut(Request<DownstreamBody>, SendStream) -> S,
{
    fn is_idle(&self, _shared: &Shared, id: u32) -> bool {
        id > self.last_stream
    }

    fn block_kind(&self, _shared: &Shared, id: u32) -> Kind {
        if id > self.last_stream { Kind::Request } else { Kind::Trailers }
    }

    /// A new request, or the trailers of one in progress.
    fn on_block(
        &mut self,
        shared: &Rc<RefCell<Shared>>,
        id: u32,
        end_stream: bool,
        fields: Fields,
    ) -> Result<(), ConnectionError> {
        if id <= self.last_stream {
            shared.borrow_mut().recv_trailers(id, end_stream, fields.into_trailers());
            return Ok(());
        }
        if id.is_multiple_of(2) {
            return Err(fail(Reason::PROTOCOL_ERROR, "a client opened an even-numbered stream"));
        }
        if !self.accepting {
            // Past the GOAWAY: ignored (RFC 9113 §6.8); the client may retry it elsewhere.
            return Ok(());
        }
        self.last_stream = id;
        let mut state = shared.borrow_mut();
        if state.open >= self.max_concurrent_streams {
            frame::put_rst_stream(&mut state.out.buf, id, Reason::REFUSED_STREAM);
            return Ok(());
        }
        let (parts, content_length) = match fields.into_request(end_stream) {
            Ok(request) => request,
            Err(refusal) => {
                tracing::debug!(?refusal, stream = id, "refusing a malformed request");
                frame::put_rst_stream(&mut state.out.buf, id, Reason::PROTOCOL_ERROR);
                return Ok(());
            }
        };
        let stream = state.insert_stream(id);
        stream.recv_closed = end_stream;
        stream.content_left = content_length;
        drop(state);
        let body = RecvBody::new(shared.clone(), id, content_length);
        let request = Request::from_parts(parts, Either::Right(body));
        self.streams.push((self.serve)(request, SendStream::new(shared.clone(), id)));
        Ok(())
    }

    fn on_goaway(&mut self, _shared: &mut Shared, _last_stream: u32) {
        // The client opens no more streams; those in progress finish.
        self.accepting = false;
    }
}

impl<F, S> Future for H2Server<F, S>
where
    F: FnMut(Request<DownstreamBody>, SendStream) -> S + Unpin,
    S: Future<Output = ()>,
{
    type Output = Result<(), ConnectionError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let shared = this.conn.shared.clone();
        shared::polling(&shared, cx, |cx| this.poll_connection(cx))
    }
}
