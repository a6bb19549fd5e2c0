//! Body types on the request path: the downstream request body forwarded upstream, and
//! the response body sent downstream (streamed from upstream, or a local reply). Both
//! stream frame by frame; nothing buffers a whole body. They also carry the stream's
//! timers: `request_timeout` on the request body, the stream idle timeout on the response.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Either;
use tokio::time::{Instant, Sleep};

use super::h1::server::H1RequestBody;
use super::h2;
use crate::clock;
use crate::upstream::cluster::ClusterStats;
use crate::upstream::pool::UpstreamBody;
use crate::worker::{LentTimer, TimerPool};

/// The error type of both bodies: a codec's, or one of legate's timeouts.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// What the request and response sides of one stream share.
#[derive(Debug)]
pub struct StreamState {
    /// Request body bytes received so far.
    pub received: Cell<u64>,
    /// When the request body last moved (or the stream started): for the stream idle
    /// timeout, and, once the request is done, the start of the route timeout.
    pub last_activity: Cell<Instant>,
    /// The downstream request body has ended.
    pub request_done: Cell<bool>,
    /// `request_timeout` expired before the request body ended.
    pub request_timed_out: Cell<bool>,
    /// The request was handed to an upstream connection (Envoy counts `upstream_rq_total`
    /// and `upstream_rq_active` from then on, so a failed connect counts neither).
    pub upstream_attached: Cell<bool>,
}

impl StreamState {
    /// A stream that starts now.
    pub fn new(now: Instant) -> StreamState {
        StreamState {
            received: Cell::new(0),
            last_activity: Cell::new(now),
            request_done: Cell::new(false),
            request_timed_out: Cell::new(false),
            upstream_attached: Cell::new(false),
        }
    }
}

/// Why a response body stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Sent to its end.
    Complete,
    /// Cut short: the upstream or downstream went away.
    Reset,
    /// No data moved for the stream idle timeout.
    IdleTimeout,
    /// The route timeout passed before the response ended.
    RouteTimeout,
}

/// A body error legate raises itself (a timeout, an upstream breaking its framing), which
/// makes hyper reset the stream.
#[derive(Debug)]
pub struct StreamError(pub &'static str);

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for StreamError {}

/// A downstream request body as its codec delivers it.
pub type DownstreamBody = Either<H1RequestBody, h2::stream::RecvBody>;

/// What polling a body for its next frame gives.
type PolledFrame = Poll<Option<Result<Frame<Bytes>, BodyError>>>;

/// The downstream request body as sent upstream.
pub struct RequestBody {
    source: RequestSource,
    state: Rc<StreamState>,
    /// `request_timeout`: the whole request must have arrived by then.
    deadline: Option<Pin<Box<Sleep>>>,
}

enum RequestSource {
    /// Forwarded frame by frame as it arrives.
    Direct(DownstreamBody),
    /// One attempt of a request that may be retried: the frames before `next` were sent
    /// by this attempt.
    Retained { body: Rc<RefCell<Retained>>, next: usize },
}

/// The downstream body of a request that may be retried, shared by its attempts: each
/// attempt resends what earlier ones took from downstream, then reads on.
struct Retained {
    body: DownstreamBody,
    frames: Vec<RetainedFrame>,
    bytes: usize,
    /// Envoy's buffer limit for retries; past it, retries are off for the request.
    limit: usize,
    /// Frames taken from downstream so far (the retained ones unless it overflowed).
    taken: usize,
    /// The downstream body returned its end.
    ended: bool,
    overflowed: bool,
    /// Where the overflow is counted (`retry_or_shadow_abandoned`).
    stats: Arc<ClusterStats>,
}

enum RetainedFrame {
    Data(Bytes),
    Trailers(http::HeaderMap),
}

impl RetainedFrame {
    fn to_frame(&self) -> Frame<Bytes> {
        match self {
            RetainedFrame::Data(data) => Frame::data(data.clone()),
            RetainedFrame::Trailers(trailers) => Frame::trailers(trailers.clone()),
        }
    }

    fn len(&self) -> usize {
        match self {
            RetainedFrame::Data(data) => data.len(),
            RetainedFrame::Trailers(_) => 0,
        }
    }
}

impl Retained {
    fn keep(&mut self, frame: &Frame<Bytes>) {
        self.taken += 1;
        if self.overflowed {
            return;
        }
        let kept = if let Some(data) = frame.data_ref() {
            RetainedFrame::Data(data.clone())
        } else if let Some(trailers) = frame.trailers_ref() {
            RetainedFrame::Trailers(trailers.clone())
        } else {
            return;
        };
        self.bytes += kept.len();
        if self.bytes > self.limit {
            self.overflowed = true;
            self.frames = Vec::new();
            self.stats.retry_or_shadow_abandoned.inc();
            return;
        }
        self.frames.push(kept);
    }
}

/// The handle to a retried request's body that makes each attempt's body.
pub struct RetainedBody {
    body: Rc<RefCell<Retained>>,
    state: Rc<StreamState>,
    deadline: Option<Instant>,
}

impl RetainedBody {
    /// The body for one more attempt, or `None` when the body outgrew the limit and
    /// cannot be sent again.
    pub fn attempt(&self) -> Option<RequestBody> {
        if self.body.borrow().overflowed {
            return None;
        }
        let source = RequestSource::Retained { body: self.body.clone(), next: 0 };
        Some(RequestBody::with_source(source, self.state.clone(), self.deadline))
    }

    /// Whether the body outgrew the limit (retries are off).
    pub fn overflowed(&self) -> bool {
        self.body.borrow().overflowed
    }
}

impl RequestBody {
    /// Wraps a downstream body; `deadline` is when `request_timeout` expires, if set.
    pub fn new(inner: DownstreamBody, state: Rc<StreamState>, deadline: Option<Instant>) -> RequestBody {
        RequestBody::with_source(RequestSource::Direct(inner), state, deadline)
    }

    /// A body kept for retries, up to `limit` bytes (past it, retries are off and the
    /// cluster's `retry_or_shadow_abandoned` counts it). Attempts get their bodies from the
    /// handle.
    pub fn retained(
        inner: DownstreamBody,
        state: Rc<StreamState>,
        deadline: Option<Instant>,
        limit: usize,
        stats: Arc<ClusterStats>,
    ) -> RetainedBody {
        let body = Retained {
            body: inner,
            frames: Vec::new(),
            bytes: 0,
            limit,
            taken: 0,
            ended: false,
            overflowed: false,
            stats,
        };
        RetainedBody { body: Rc::new(RefCell::new(body)), state, deadline }
    }

    fn with_source(source: RequestSource, state: Rc<StreamState>, deadline: Option<Instant>) -> RequestBody {
        let body = RequestBody { source, state, deadline: None };
        if body.downstream_done() {
            body.state.request_done.set(true);
        }
        let deadline =
            deadline.filter(|_| !body.state.request_done.get()).map(|at| Box::pin(tokio::time::sleep_until(at)));
        RequestBody { deadline, ..body }
    }

    /// Whether the downstream body has ended.
    fn downstream_done(&self) -> bool {
        match &self.source {
            RequestSource::Direct(inner) => inner.is_end_stream(),
            RequestSource::Retained { body, .. } => {
                let body = body.borrow();
                body.ended || body.body.is_end_stream()
            }
        }
    }

    /// The next frame: from downstream (kept for later attempts when retained), or, for a
    /// later attempt, one an earlier attempt took (then `false` comes with it).
    fn poll_source(&mut self, cx: &mut Context<'_>) -> (PolledFrame, bool) {
        match &mut self.source {
            RequestSource::Direct(inner) => (Pin::new(inner).poll_frame(cx), true),
            RequestSource::Retained { body, next } => {
                let mut body = body.borrow_mut();
                if *next < body.taken {
                    // Gone only past the limit, for an attempt that lost the downstream body
                    // to a later one (no attempt starts after an overflow).
                    let Some(frame) = body.frames.get(*next).map(RetainedFrame::to_frame) else {
                        return (Poll::Ready(Some(Err(Box::new(StreamError("request body not retained"))))), false);
                    };
                    *next += 1;
                    return (Poll::Ready(Some(Ok(frame))), false);
                }
                if body.ended {
                    return (Poll::Ready(None), false);
                }
                let polled = Pin::new(&mut body.body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        body.keep(frame);
                        *next += 1;
                    }
                    Poll::Ready(None) => body.ended = true,
                    _ => {}
                }
                (polled, true)
            }
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> PolledFrame {
        let this = &mut *self;
        let (polled, from_downstream) = this.poll_source(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if from_downstream {
                    if let Some(data) = frame.data_ref() {
                        this.state.received.set(this.state.received.get() + data.len() as u64);
                    }
                    this.state.last_activity.set(clock::now());
                    if this.downstream_done() {
                        this.state.request_done.set(true);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                if from_downstream {
                    this.state.request_done.set(true);
                    this.state.last_activity.set(clock::now());
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Pending => {
                let expired = this.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    this.state.request_timed_out.set(true);
                    return Poll::Ready(Some(Err(Box::new(StreamError("request timeout")))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            RequestSource::Direct(inner) => inner.is_end_stream(),
            RequestSource::Retained { body, next } => {
                let body = body.borrow();
                *next == body.taken && (body.ended || body.body.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            RequestSource::Direct(inner) => inner.size_hint(),
            RequestSource::Retained { body, next } => {
                let body = body.borrow();
                let resent: usize = body.frames.get(*next..).unwrap_or_default().iter().map(RetainedFrame::len).sum();
                let rest = body.body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + resent as u64);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + resent as u64);
                }
                hint
            }
        }
    }
}

/// Called once when a response body ends (fully sent, or dropped early), with the byte
/// count and why. It finishes the stream's accounting: stats, access log and returning
/// the upstream connection to its pool.
pub trait StreamEnd {
    /// The response body is done.
    fn finish(self: Box<Self>, bytes_sent: u64, reason: EndReason);
}

/// The timeouts that still run while a response body streams: the stream idle timeout, and
/// the route timeout, which Envoy applies until the response has ended (counted from the end
/// of the request). Their one timer is lent by the worker and armed only when the body first
/// has to wait (most responses end in their first poll); frames only note the time, and a
/// timer that fires early is re-armed from there.
struct BodyTimer {
    idle: Option<Duration>,
    last_activity: Instant,
    /// The route timeout, and the stream whose request's end starts it.
    route: Option<(Duration, Rc<StreamState>)>,
    timer: LentTimer,
}

impl BodyTimer {
    /// Which timeout has passed, if one has (registering a wake-up if not).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<EndReason> {
        loop {
            let idle = self.idle.map(|t| self.last_activity + t);
            // While the request body still arrives, only a time to look again.
            let route = self.route.as_ref().map(|(t, stream)| (stream.last_activity.get() + *t, stream));
            let next = [idle, route.map(|(at, _)| at)].into_iter().flatten().min()?;
            if self.timer.until(next).poll(cx).is_pending() {
                return None;
            }
            let now = clock::now();
            if route.is_some_and(|(at, stream)| at <= now && stream.request_done.get()) {
                return Some(EndReason::RouteTimeout);
            }
            if idle.is_some_and(|at| at <= now) {
                return Some(EndReason::IdleTimeout);
            }
        }
    }
}

enum Source {
    Upstream { body: UpstreamBody, timer: Option<BodyTimer> },
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

    /// A body streamed from upstream, reset when no data moves for `idle_timeout` or when
    /// the route timeout (`route_timeout` after the end of `stream`'s request) passes.
    pub fn upstream(
        body: UpstreamBody,
        idle_timeout: Option<Duration>,
        route_timeout: Option<(Duration, Rc<StreamState>)>,
        timers: &Rc<TimerPool>,
    ) -> ResponseBody {
        let timer = (idle_timeout.is_some() || route_timeout.is_some()).then(|| BodyTimer {
            idle: idle_timeout,
            last_activity: clock::now(),
            route: route_timeout,
            timer: timers.lend(),
        });
        ResponseBody { source: Source::Upstream { body, timer }, sent: 0, end: None }
    }

    /// Sets what runs when the body ends.
    pub fn on_end(&mut self, end: Box<dyn StreamEnd>) {
        self.end = Some(end);
    }

    fn finish(&mut self, reason: EndReason) {
        if let Some(end) = self.end.take() {
            end.finish(self.sent, reason);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.source {
            Source::Upstream { body, timer } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(timer) = timer {
                        timer.last_activity = clock::now();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => {
                    let Some(reason) = timer.as_mut().and_then(|timer| timer.expired(cx)) else {
                        return Poll::Pending;
                    };
                    this.finish(reason);
                    let what = if reason == EndReason::IdleTimeout { "stream idle timeout" } else { "route timeout" };
                    return Poll::Ready(Some(Err(Box::new(StreamError(what)))));
                }
            },
            Source::Local(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(EndReason::Complete);
                }
            }
            Poll::Ready(None) => this.finish(EndReason::Complete),
            Poll::Ready(Some(Err(_))) => this.finish(EndReason::Reset),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Upstream { body, .. } => body.is_end_stream(),
            Source::Local(body) => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Upstream { body, .. } => body.size_hint(),
            Source::Local(body) => SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper drops a body it never polls (HEAD, 204, 304) or one cut short by a reset.
        let reason = if self.is_end_stream() { EndReason::Complete } else { EndReason::Reset };
        self.finish(reason);
    }
}
