//! The two halves of an HTTP/2 stream's body that both sides of the proxy use: sending a
//! body into a stream under flow control, and a received stream as a body.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http_body::{Body, Frame, SizeHint};

use super::body::BodyError;

/// Streams a body into an HTTP/2 stream under flow control: a request body upstream, or a
/// response body downstream. Resets the stream with `reset` if the body fails (a timeout,
/// the other side's reset).
pub struct SendBody<B> {
    body: B,
    stream: SendStream<Bytes>,
    /// A data frame waiting for send capacity.
    pending: Option<Bytes>,
    reset: h2::Reason,
}

impl<B> SendBody<B> {
    pub fn new(body: B, stream: SendStream<Bytes>, reset: h2::Reason) -> SendBody<B> {
        SendBody { body, stream, pending: None, reset }
    }
}

impl<B> Future for SendBody<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            if let Poll::Ready(reason) = this.stream.poll_reset(cx) {
                tracing::debug!(?reason, "the peer reset the stream while a body was being sent");
                return Poll::Ready(());
            }
            if let Some(data) = this.pending.take() {
                // h2 buffers what exceeds the window; waiting for some capacity first keeps
                // a fast downstream from filling that buffer ahead of a slow upstream.
                while this.stream.capacity() == 0 {
                    match this.stream.poll_capacity(cx) {
                        Poll::Pending => {
                            this.pending = Some(data);
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                    }
                }
                let end = this.body.is_end_stream();
                if this.stream.send_data(data, end).is_err() || end {
                    return Poll::Ready(());
                }
                continue;
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {
                        let end = this.body.is_end_stream();
                        if this.stream.send_data(data, end).is_err() || end {
                            return Poll::Ready(());
                        }
                    }
                    Ok(data) => {
                        this.stream.reserve_capacity(data.len());
                        this.pending = Some(data);
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let _ = this.stream.send_trailers(trailers);
                            return Poll::Ready(());
                        }
                    }
                },
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "body failed; resetting its stream");
                    this.stream.send_reset(this.reset);
                    return Poll::Ready(());
                }
                None => {
                    let _ = this.stream.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// A body received on an HTTP/2 stream (an upstream's response, a downstream's request):
/// data frames (each handed back to flow control as it is taken), then trailers if the
/// peer sent any.
pub struct H2Body {
    stream: RecvStream,
    /// What is left of a declared `content-length` (h2 rejects a body that disagrees).
    remaining: Option<u64>,
}

impl H2Body {
    /// The body of a message with `headers`, whose `content-length` becomes an exact size
    /// hint as hyper's bodies give it: it decides the framing of an HTTP/1.1 message the
    /// body is forwarded in.
    pub fn new(stream: RecvStream, headers: &http::HeaderMap) -> H2Body {
        let declared = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        H2Body { stream, remaining: declared }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(data) = ready!(this.stream.poll_data(cx)) {
            let data = data?;
            let _ = this.stream.flow_control().release_capacity(data.len());
            if let Some(remaining) = &mut this.remaining {
                *remaining = remaining.saturating_sub(data.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match ready!(this.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            _ if self.stream.is_end_stream() => SizeHint::with_exact(0),
            Some(remaining) => SizeHint::with_exact(remaining),
            None => SizeHint::default(),
        }
    }
}
