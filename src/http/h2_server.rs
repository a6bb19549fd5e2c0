//! Downstream HTTP/2 on the h2 crate directly. hyper's server spawns a task per stream and
//! wraps every request and response in its own types; here a connection's streams run
//! inside the connection's task (a `FuturesUnordered` polled next to the connection), so a
//! stream costs no task spawn, and a response is written by the same poll that produced it.

use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use h2::RecvStream;
use h2::server::{Connection, Handshake, SendResponse};
use http::header;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Either;
use tokio::io::{AsyncRead, AsyncWrite};

use super::h2_body::{H2Body, SendBody};
use super::headers;
use super::proxy::{self, ConnContext};

// hyper's server defaults, which legate used before.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
const MAX_CONCURRENT_STREAMS: u32 = 200;
const MAX_SEND_BUFFER: usize = 400 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// One downstream HTTP/2 connection and the streams in progress on it; a future that ends
/// when the connection does.
pub struct H2Server<T, F, S> {
    state: State<T>,
    streams: FuturesUnordered<S>,
    serve: F,
    /// The connection still takes new streams.
    accepting: bool,
    /// `graceful_shutdown` was asked for during the handshake.
    shutdown: bool,
}

enum State<T> {
    Handshaking(Handshake<T, Bytes>),
    Serving(Connection<T, Bytes>),
}

impl<T, F, S> H2Server<T, F, S>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<RecvStream>, SendResponse<Bytes>) -> S + Unpin,
    S: Future<Output = ()>,
{
    /// Serves HTTP/2 on `io`, each stream with `serve`.
    pub fn new(io: T, serve: F) -> H2Server<T, F, S> {
        let handshake = h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .handshake(io);
        H2Server {
            state: State::Handshaking(handshake),
            streams: FuturesUnordered::new(),
            serve,
            accepting: true,
            shutdown: false,
        }
    }

    /// Sends GOAWAY: streams in progress finish, no new ones start.
    pub fn graceful_shutdown(&mut self) {
        match &mut self.state {
            State::Handshaking(_) => self.shutdown = true,
            State::Serving(connection) => connection.graceful_shutdown(),
        }
    }
}

impl<T, F, S> Future for H2Server<T, F, S>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<RecvStream>, SendResponse<Bytes>) -> S + Unpin,
    S: Future<Output = ()>,
{
    type Output = Result<(), h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let State::Handshaking(handshake) = &mut this.state {
            let mut connection = ready!(Pin::new(handshake).poll(cx))?;
            if this.shutdown {
                connection.graceful_shutdown();
            }
            this.state = State::Serving(connection);
        }
        let State::Serving(connection) = &mut this.state else { unreachable!("the handshake is done") };
        loop {
            // The streams first: the connection then writes what they sent in this same poll.
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
            if !this.accepting {
                // The connection closes once its last stream has (after a GOAWAY); a stream
                // future left then has nothing more to send.
                return connection.poll_closed(cx);
            }
            match ready!(connection.poll_accept(cx)) {
                Some(Ok((request, respond))) => this.streams.push((this.serve)(request, respond)),
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => this.accepting = false,
            }
        }
    }
}

/// Serves one HTTP/2 stream: the request through the proxy, the response back under flow
/// control. A client that resets the stream while legate waits for the upstream ends it.
pub async fn serve_stream(ctx: Rc<ConnContext>, request: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let (head, stream) = request.into_parts();
    let body = Either::Right(H2Body::new(stream, &head.headers));
    let mut serve = pin!(proxy::serve(ctx, Request::from_parts(head, body)));
    let response = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = serve.as_mut().poll(cx) {
            return Poll::Ready(Some(result.unwrap_or_else(|never| match never {})));
        }
        respond.poll_reset(cx).map(|_| None)
    })
    .await;
    let Some(response) = response else {
        tracing::debug!("the client reset the stream before its response");
        return;
    };
    let (mut head, body) = response.into_parts();
    // What hyper's server did: no connection-specific fields (HTTP/2 forbids them), a
    // `date`, and a `content-length` when the body's size is known.
    headers::remove_hop_by_hop(&mut head.headers);
    if !head.headers.contains_key(header::DATE) {
        head.headers.insert(header::DATE, headers::date_value());
    }
    let end_of_stream = body.is_end_stream();
    if !end_of_stream
        && let Some(length) = body.size_hint().exact()
        && !head.headers.contains_key(header::CONTENT_LENGTH)
    {
        head.headers.insert(header::CONTENT_LENGTH, headers::decimal_value(length));
    }
    match respond.send_response(Response::from_parts(head, ()), end_of_stream) {
        Ok(stream) if !end_of_stream => SendBody::new(body, stream, h2::Reason::INTERNAL_ERROR).await,
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "sending the response headers failed"),
    }
}
