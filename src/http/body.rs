//! Body types on the request path: the downstream request body forwarded upstream, and
//! the response body sent downstream (streamed from upstream, or a local reply). Both
//! stream frame by frame; nothing buffers a whole body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The downstream request body as sent upstream, counting the bytes received.
pub struct RequestBody {
    inner: Incoming,
    received: u64,
    /// Shared with the response side, which logs the final count.
    counter: std::rc::Rc<std::cell::Cell<u64>>,
}

impl RequestBody {
    /// Wraps a downstream body; `counter` receives the running byte count.
    pub fn new(inner: Incoming, counter: std::rc::Rc<std::cell::Cell<u64>>) -> RequestBody {
        RequestBody { inner, received: 0, counter }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.received += data.len() as u64;
            self.counter.set(self.received);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Called once when a response body ends (fully sent, or dropped early), with the byte
/// count and whether it completed. It finishes the stream's accounting: stats, access
/// log and returning the upstream connection to its pool.
pub trait StreamEnd {
    /// The response body is done: `complete` is false when it was cut short.
    fn finish(self: Box<Self>, bytes_sent: u64, complete: bool);
}

enum Source {
    Upstream(Incoming),
    Local(Option<Bytes>),
}

/// The response body sent downstream.
pub struct ResponseBody {
    source: Source,
    sent: u64,
    end: Option<Box<dyn StreamEnd>>,
}

impl ResponseBody {
    /// A local reply body (may be empty).
    pub fn local(body: Bytes) -> ResponseBody {
        ResponseBody { source: Source::Local((!body.is_empty()).then_some(body)), sent: 0, end: None }
    }

    /// A body streamed from upstream.
    pub fn upstream(body: Incoming) -> ResponseBody {
        ResponseBody { source: Source::Upstream(body), sent: 0, end: None }
    }

    /// Sets what runs when the body ends.
    pub fn on_end(&mut self, end: Box<dyn StreamEnd>) {
        self.end = Some(end);
    }

    fn finish(&mut self, complete: bool) {
        if let Some(end) = self.end.take() {
            end.finish(self.sent, complete);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.source {
            Source::Upstream(body) => Pin::new(body).poll_frame(cx),
            Source::Local(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Upstream(body) => body.is_end_stream(),
            Source::Local(body) => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Upstream(body) => body.size_hint(),
            Source::Local(body) => SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper drops a body it never polls (HEAD, 204, 304) or one cut short by a reset.
        let complete = self.is_end_stream();
        self.finish(complete);
    }
}
