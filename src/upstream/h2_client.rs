//! HTTP/2 to upstreams on the h2 crate directly. hyper's HTTP/2 client hands every request
//! to the connection's task over a channel, spawns a task per response and answers through
//! a oneshot; a proxy that already runs one task per stream pays for two extra task hops
//! and ≈ 6 000 instructions per request for it (BENCHMARKS.md, "Counts per request").
//! Here the request's own task opens the stream and awaits the response; only a request
//! body that does not fit in the headers frame gets a task to stream it.

use std::cell::Cell;
use std::rc::Rc;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Request, Response};
use http_body::Body;
use tokio::net::TcpStream;

use super::pool::SendError;
use crate::http::body::RequestBody;
use crate::http::h2_body::{H2Body, SendBody};

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
    /// `attached` when it does, and waits for the response headers. A connection that can
    /// open no more streams (after a GOAWAY, or broken) is retired, even while its task still
    /// finishes the streams it has, and hands the request back: nothing of it was sent.
    pub async fn send(
        &self,
        request: Request<RequestBody>,
        attached: &dyn Fn(),
    ) -> Result<Response<H2Body>, SendError> {
        let mut sender = match self.sender.clone().ready().await {
            Ok(sender) => sender,
            Err(e) => {
                tracing::debug!(error = %e, "upstream HTTP/2 connection takes no new streams");
                self.closed.set(true);
                return Err(SendError::Unsent(Box::new(request)));
            }
        };
        attached();
        let (head, body) = request.into_parts();
        let end_of_stream = body.is_end_stream();
        let (response, send_stream) =
            sender.send_request(Request::from_parts(head, ()), end_of_stream).map_err(|e| {
                self.closed.set(true);
                SendError::Failed(e.into())
            })?;
        if !end_of_stream {
            tokio::task::spawn_local(SendBody::new(body, send_stream, h2::Reason::CANCEL));
        }
        let response = response.await.map_err(|e| SendError::Failed(e.into()))?;
        let (head, stream) = response.into_parts();
        let body = H2Body::new(stream, &head.headers);
        Ok(Response::from_parts(head, body))
    }
}
