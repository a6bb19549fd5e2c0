//! HTTP/2 to upstreams on the h2 crate directly. hyper's HTTP/2 client hands every request
//! to the connection's task over a channel, spawns a task per response and answers through
//! a oneshot; a proxy that already runs one task per stream pays for two extra task hops
//! and ≈ 6 000 instructions per request for it (BENCHMARKS.md, "Counts per request").
//! Here the request's own task opens the stream and awaits the response; only a request
//! body that does not fit in the headers frame gets a task to stream it.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use crate::http::body::{BodyError, RequestBody};

// hyper's client defaults, which legate used before and Envoy's are no smaller than.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// One HTTP/2 connection to a host: a handle to open streams on it, and whether it can take
/// no more (its task ended, or it refused a stream); such a connection is replaced.
#[derive(Clone)]
pub struct H2Connection {
    sender: SendRequest<Bytes>,
    closed: Rc<Cell<bool>>,
}

impl H2Connection {
    /// Runs the HTTP/2 handshake on `stream`; returns the connection and the future that
    /// drives it, to be spawned on the worker.
    pub async fn handshake(stream: TcpStream) -> Result<(H2Connection, impl Future<Output = ()> + 'static), h2::Error> {
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST)
            .enable_push(false)
            .handshake(stream)
            .await?;
        let closed = Rc::new(Cell::new(false));
        let driver = {
            let closed = closed.clone();
            async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                }
                closed.set(true);
            }
        };
        Ok((H2Connection { sender, closed }, driver))
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Opens a stream for `request` once the connection has room for one, calling
    /// `attached` when it does, and waits for the response headers.
    pub async fn send(
        &self,
        request: Request<RequestBody>,
        attached: &dyn Fn(),
    ) -> Result<Response<H2Body>, h2::Error> {
        // A connection that cannot open a stream (GOAWAY received, broken) is not offered
        // again, even while its task still finishes the streams it has.
        let retire = |e: h2::Error| {
            self.closed.set(true);
            e
        };
        let mut sender = self.sender.clone().ready().await.map_err(retire)?;
        attached();
        let (head, body) = request.into_parts();
        let end_of_stream = body.is_end_stream();
        let (response, send_stream) =
            sender.send_request(Request::from_parts(head, ()), end_of_stream).map_err(retire)?;
        if !end_of_stream {
            tokio::task::spawn_local(SendBody { body, stream: send_stream, pending: None });
        }
        let response = response.await?;
        // hyper's bodies report a declared length as an exact size hint, which decides the
        // framing of a downstream HTTP/1.1 response; an HTTP/2 body does the same.
        let declared = response.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        Ok(response.map(|stream| H2Body { stream, remaining: declared }))
    }
}

/// Streams a request body into its HTTP/2 stream under flow control; resets the stream
/// if the downstream body fails (a timeout, a downstream reset).
struct SendBody {
    body: RequestBody,
    stream: SendStream<Bytes>,
    /// A data frame waiting for send capacity.
    pending: Option<Bytes>,
}

impl Future for SendBody {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            if let Poll::Ready(reason) = this.stream.poll_reset(cx) {
                tracing::debug!(?reason, "upstream reset the stream while the request body was being sent");
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
                    tracing::debug!(error = %e, "request body failed; resetting the upstream stream");
                    this.stream.send_reset(h2::Reason::CANCEL);
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

/// A response body received on an HTTP/2 stream: data frames (each handed back to flow
/// control as it is taken), then trailers if the upstream sent any.
pub struct H2Body {
    stream: RecvStream,
    /// What is left of a declared `content-length` (h2 rejects a body that disagrees).
    remaining: Option<u64>,
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
