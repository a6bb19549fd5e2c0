//! The two halves of an HTTP/2 stream as the proxy sees them: the body received on it (a
//! downstream request's, an upstream response's), and the sending side, which streams a
//! body out under flow control (a response downstream, a request body upstream).

use std::cell::RefCell;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header;
use http::{HeaderMap, Request};
use http_body::{Body, Frame, SizeHint};

use super::frame::Reason;
use super::hpack;
use super::shared::{Shared, register};
use crate::http::body::{BodyError, DownstreamBody, StreamError};
use crate::http::headers;
use crate::http::proxy::{self, ConnContext};

/// A body received on an HTTP/2 stream: data as it arrives (each piece handed back to flow
/// control as it is taken), then trailers if the peer sent any.
pub struct RecvBody {
    shared: Rc<RefCell<Shared>>,
    id: u32,
    /// What is left of a declared `content-length`: an exact size hint, which decides the
    /// framing of an HTTP/1.1 message the body is forwarded in.
    remaining: Option<u64>,
    ended: bool,
}

impl RecvBody {
    pub fn new(shared: Rc<RefCell<Shared>>, id: u32, content_length: Option<u64>) -> RecvBody {
        RecvBody { shared, id, remaining: content_length, ended: false }
    }

    /// Takes the size a response head declares (the body exists before its head arrives).
    pub fn expect_length(&mut self, content_length: Option<u64>) {
        self.remaining = content_length;
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        let mut shared = this.shared.borrow_mut();
        let closed = shared.closed;
        let Some(stream) = shared.streams.get_mut(&this.id) else { return Poll::Ready(None) };
        if let Some(data) = stream.recv.pop_front() {
            if let Some(remaining) = &mut this.remaining {
                *remaining = remaining.saturating_sub(data.len() as u64);
            }
            shared.release(this.id, data.len());
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        // A body received to its end stays whole whatever happens to the stream after.
        if stream.recv_closed {
            this.ended = true;
            return Poll::Ready(stream.trailers.take().map(|trailers| Ok(Frame::trailers(trailers))));
        }
        if stream.reset.is_some() || closed {
            this.ended = true;
            return Poll::Ready(Some(Err(Box::new(StreamError("the stream was reset")))));
        }
        register(&mut stream.reader, cx);
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.ended
            || self
                .shared
                .borrow()
                .streams
                .get(&self.id)
                .is_some_and(|stream| stream.recv_closed && stream.recv.is_empty() && stream.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            _ if self.is_end_stream() => SizeHint::with_exact(0),
            Some(remaining) => SizeHint::with_exact(remaining),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        self.shared.borrow_mut().drop_reader(self.id);
    }
}

/// The sending side of a stream: a message head, its body and trailers.
pub struct SendStream {
    pub(super) shared: Rc<RefCell<Shared>>,
    pub(super) id: u32,
}

impl SendStream {
    pub fn new(shared: Rc<RefCell<Shared>>, id: u32) -> SendStream {
        SendStream { shared, id }
    }

    fn poll_reset(&self, cx: &Context<'_>) -> Poll<Reason> {
        self.shared.borrow_mut().poll_reset(self.id, cx)
    }

    /// Streams `body` out: each frame once the windows allow, then trailers or an empty
    /// DATA frame with END_STREAM. Stops when the peer resets the stream; a body that fails
    /// resets it with `on_error`.
    pub fn poll_body<B>(
        &self,
        body: &mut B,
        pending: &mut Option<Bytes>,
        on_error: Reason,
        cx: &mut Context<'_>,
    ) -> Poll<()>
    where
        B: Body<Data = Bytes, Error = BodyError> + Unpin,
    {
        loop {
            if let Some(mut data) = pending.take() {
                let capacity = match self.shared.borrow_mut().poll_capacity(self.id, cx) {
                    Poll::Ready(Ok(capacity)) => capacity,
                    Poll::Ready(Err(reason)) => {
                        tracing::debug!(?reason, "the stream was reset while a body was being sent");
                        return Poll::Ready(());
                    }
                    Poll::Pending => {
                        *pending = Some(data);
                        return Poll::Pending;
                    }
                };
                let rest = (data.len() > capacity).then(|| data.split_off(capacity));
                let end = rest.is_none() && body.is_end_stream();
                self.shared.borrow_mut().send_data(self.id, data, end);
                if end {
                    return Poll::Ready(());
                }
                *pending = rest;
                continue;
            }
            if let Poll::Ready(reason) = self.poll_reset(cx) {
                tracing::debug!(?reason, "the stream was reset while a body was being sent");
                return Poll::Ready(());
            }
            match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {
                        if body.is_end_stream() {
                            self.shared.borrow_mut().send_data(self.id, data, true);
                            return Poll::Ready(());
                        }
                    }
                    Ok(data) => *pending = Some(data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.shared
                                .borrow_mut()
                                .send_headers(self.id, true, |encoder, dst| encode_fields(encoder, &trailers, dst));
                            return Poll::Ready(());
                        }
                    }
                },
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "a body being sent failed; resetting its stream");
                    self.shared.borrow_mut().reset(self.id, on_error);
                    return Poll::Ready(());
                }
                None => {
                    self.shared.borrow_mut().send_data(self.id, Bytes::new(), true);
                    return Poll::Ready(());
                }
            }
        }
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        let mut shared = self.shared.borrow_mut();
        // A message cut short without a reset of its own (the proxy's future dropped with
        // the connection still up) must not leave the peer waiting.
        if !shared.closed && shared.streams.get(&self.id).is_some_and(|stream| !stream.send_closed) {
            shared.reset(self.id, Reason::CANCEL);
        }
        shared.drop_handle(self.id);
    }
}

/// Serves one HTTP/2 stream: the request through the proxy, the response back under flow
/// control. A client that resets the stream while legate waits for the upstream ends it.
pub async fn serve_stream(ctx: Rc<ConnContext>, request: Request<DownstreamBody>, responder: SendStream) {
    let mut serve = pin!(proxy::serve(ctx, request));
    let response = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = serve.as_mut().poll(cx) {
            return Poll::Ready(Some(result.unwrap_or_else(|never| match never {})));
        }
        responder.poll_reset(cx).map(|_| None)
    })
    .await;
    let Some(response) = response else {
        tracing::debug!("the client reset the stream before its response");
        return;
    };
    let (mut head, mut body) = response.into_parts();
    // What hyper's server did: no connection-specific fields (HTTP/2 forbids them), a
    // `date`, and a `content-length` when the body's size is known.
    headers::remove_hop_by_hop(&mut head.headers);
    if !head.headers.contains_key(header::DATE) {
        head.headers.insert(header::DATE, headers::date_value());
    }
    let end = body.is_end_stream();
    if !end
        && let Some(length) = body.size_hint().exact()
        && !head.headers.contains_key(header::CONTENT_LENGTH)
    {
        head.headers.insert(header::CONTENT_LENGTH, headers::decimal_value(length));
    }
    responder.shared.borrow_mut().send_headers(responder.id, end, |encoder, dst| {
        hpack::encode_status(head.status.as_u16(), dst);
        encode_fields(encoder, &head.headers, dst);
    });
    headers::recycle_map(head.headers);
    if !end {
        let mut pending = None;
        std::future::poll_fn(|cx| responder.poll_body(&mut body, &mut pending, Reason::INTERNAL_ERROR, cx)).await;
    }
}

pub fn encode_fields(encoder: &mut hpack::Encoder, fields: &HeaderMap, dst: &mut bytes::BytesMut) {
    for (name, value) in fields {
        encoder.field(name, value, dst);
    }
}
