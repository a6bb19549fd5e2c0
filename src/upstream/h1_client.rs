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

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use super::pool::{HostPool, LiveConnection};
use crate::http::body::{BodyError, RequestBody, StreamError};

/// Envoy's defaults for upstream response heads: `max_response_headers_kb` 60 and
/// `max_response_headers_count` 100.
const MAX_HEAD_BYTES: usize = 60 * 1024;
const MAX_HEADERS: usize = 100;
/// Response headers the proxy typically adds, reserved for when a head is parsed.
const RESPONSE_HEADERS_ADDED: usize = 4;
/// What one read asks the socket for.
const READ_SIZE: usize = 16 * 1024;
/// A chunk-size line (with extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;

/// An upstream that broke HTTP/1.1 framing, or closed the connection early.
fn protocol_error(what: &'static str) -> BodyError {
    Box::new(StreamError(what))
}

/// Why a request got no response on a connection.
pub enum SendError {
    /// Writing the request head failed, so nothing of the request was taken: it can go
    /// out on another connection (a pooled one the upstream had closed).
    Unsent(Box<Request<RequestBody>>),
    Failed(BodyError),
}

/// One HTTP/1.1 connection to a host, idle or carrying one request.
pub struct H1Connection {
    io: TcpStream,
    /// Bytes read and not yet consumed; kept (and its allocation reused) across requests.
    read: BytesMut,
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
    /// Header names and value positions of the response head being parsed.
    fields: Vec<(HeaderName, usize, usize)>,
    _live: LiveConnection,
}

impl H1Connection {
    /// Boxed: it moves between the pool and response bodies, which stay small.
    pub fn new(io: TcpStream, live: LiveConnection) -> Box<H1Connection> {
        Box::new(H1Connection {
            io,
            read: BytesMut::new(),
            out: Outgoing::default(),
            sending: None,
            chunked: false,
            body_taken: false,
            write_failed: false,
            fields: Vec::new(),
            _live: live,
        })
    }

    /// Whether the idle connection can still carry a request: false once the upstream
    /// closed it or sent bytes nobody asked for. Registers `cx` to be woken when that
    /// changes; a read is tried only when the reactor saw the socket become readable.
    pub fn is_alive(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            match self.io.poll_read_ready(cx) {
                Poll::Pending => return true,
                Poll::Ready(Err(_)) => return false,
                Poll::Ready(Ok(())) => match self.io.try_read_buf(&mut self.read) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    _ => return false,
                },
            }
        }
    }

    /// Sends `request` and reads the response head. The response body holds the
    /// connection (and sends what is left of the request body) and returns it to `pool`
    /// once the response has ended.
    pub async fn send(
        mut self: Box<Self>,
        request: Request<RequestBody>,
        pool: &Rc<HostPool>,
    ) -> Result<Response<H1Body>, SendError> {
        self.chunked = encode_head(&mut self.out.head, &request) == RequestFraming::Chunked;
        self.out.head_at = 0;
        self.body_taken = false;
        self.write_failed = false;
        let (parts, body) = request.into_parts();
        // Kept to give the request back if it could not be written at all.
        let bodiless = if body.is_end_stream() {
            Some(body)
        } else {
            self.sending = Some(body);
            None
        };
        let head_request = parts.method == Method::HEAD;
        // Held until the head is written, to hand the request back if it cannot be; then
        // dropped at once, as its header values are slices of the downstream codec's read
        // buffer, which is reused only once nothing refers to it.
        let mut unsent = Some(parts);
        let response = std::future::poll_fn(|cx| {
            if self.is_sending() {
                match self.poll_send(cx) {
                    Poll::Ready(Err(WriteFailure::Body(e))) => return Poll::Ready(Err(Some(e))),
                    Poll::Ready(Err(WriteFailure::Io)) if !self.body_taken && unsent.is_some() => {
                        return Poll::Ready(Err(None));
                    }
                    Poll::Ready(_) | Poll::Pending => {}
                }
                if self.out.head_at == self.out.head.len() {
                    unsent = None;
                }
            }
            self.poll_read_head(cx, head_request)
        })
        .await;
        let (head, framing) = match response {
            Ok(response) => response,
            Err(Some(e)) => return Err(SendError::Failed(e)),
            Err(None) => {
                let (Some(parts), Some(body)) = (unsent, bodiless.or_else(|| self.sending.take())) else {
                    unreachable!("a request is handed back only while its head and body are untouched");
                };
                return Err(SendError::Unsent(Box::new(Request::from_parts(parts, body))));
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
                            self.out.set_last_chunk();
                        }
                    }
                    Poll::Pending if self.out.is_empty() => return Poll::Pending,
                    Poll::Pending => {}
                }
            }
            if let Err(e) = ready!(self.out.poll_flush(&mut self.io, cx)) {
                tracing::debug!(error = %e, "writing the request upstream failed");
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
                return Poll::Ready(Err(Some(protocol_error("upstream closed the connection before a response"))));
            }
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read.reserve(READ_SIZE);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }
}

enum WriteFailure {
    /// Writing to the upstream failed (logged; the response may still come).
    Io,
    /// The downstream request body failed (a reset, `request_timeout`).
    Body(BodyError),
}

/// What of a request is left to write: the rest of its head, then the current body frame
/// (with its chunk-size line and CRLF when chunked). Written with one vectored write, and
/// no copy of the data.
struct Outgoing {
    head: Vec<u8>,
    head_at: usize,
    line: [u8; 18],
    line_at: usize,
    data: Bytes,
    /// Bytes of the frame's closing CRLF left.
    crlf: usize,
}

impl Default for Outgoing {
    fn default() -> Outgoing {
        Outgoing { head: Vec::new(), head_at: 0, line: [0; 18], line_at: 18, data: Bytes::new(), crlf: 0 }
    }
}

impl Outgoing {
    fn frame_is_empty(&self) -> bool {
        self.line_at == self.line.len() && self.data.is_empty() && self.crlf == 0
    }

    fn is_empty(&self) -> bool {
        self.head_at == self.head.len() && self.frame_is_empty()
    }

    fn set_frame(&mut self, data: Bytes, chunked: bool) {
        if data.is_empty() {
            return;
        }
        if chunked {
            self.line_at = chunk_size_line(data.len(), &mut self.line);
            self.crlf = 2;
        }
        self.data = data;
    }

    fn set_last_chunk(&mut self) {
        self.line_at = chunk_size_line(0, &mut self.line);
        self.crlf = 2;
    }

    fn poll_flush(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut unsent = Buf::chain(&self.head[self.head_at..], &self.line[self.line_at..])
                .chain(&self.data[..])
                .chain(&b"\r\n"[2 - self.crlf..]);
            if !unsent.has_remaining() {
                return Poll::Ready(Ok(()));
            }
            let written = ready!(tokio_util::io::poll_write_buf(Pin::new(&mut *io), cx, &mut unsent))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consume(written);
        }
    }

    fn consume(&mut self, mut n: usize) {
        let head = n.min(self.head.len() - self.head_at);
        self.head_at += head;
        n -= head;
        let line = n.min(self.line.len() - self.line_at);
        self.line_at += line;
        n -= line;
        let data = n.min(self.data.len());
        self.data.advance(data);
        self.crlf -= n - data;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestFraming {
    None,
    Length,
    Chunked,
}

/// Writes the request line and headers into `out`, adding the framing header the body
/// needs: a known length becomes `content-length`, an unknown one `transfer-encoding:
/// chunked` (the proxy removed the downstream's framing headers as hop-by-hop, but keeps
/// a `content-length`).
fn encode_head(out: &mut Vec<u8>, request: &Request<RequestBody>) -> RequestFraming {
    out.clear();
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    let uri = request.uri();
    match uri.path_and_query() {
        _ if request.method() == Method::CONNECT => {
            out.extend_from_slice(uri.authority().map_or("", |a| a.as_str()).as_bytes())
        }
        Some(target) => out.extend_from_slice(target.as_str().as_bytes()),
        None => out.push(b'/'),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let body = request.body();
    let framing = if body.is_end_stream() {
        RequestFraming::None
    } else if request.headers().contains_key(header::CONTENT_LENGTH) {
        RequestFraming::Length
    } else if let Some(length) = body.size_hint().exact() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa_u64(length, &mut [0; 20]));
        out.extend_from_slice(b"\r\n");
        RequestFraming::Length
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        RequestFraming::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
}

fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Writes `{len:x}\r\n` at the end of `buf`; returns where it starts.
fn chunk_size_line(len: usize, buf: &mut [u8; 18]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut at = buf.len() - 2;
    buf[at..].copy_from_slice(b"\r\n");
    let mut n = len;
    loop {
        at -= 1;
        buf[at] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            return at;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseFraming {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

struct HeadFraming {
    body: ResponseFraming,
    /// The connection may carry another request once this response has ended.
    keep_alive: bool,
}

/// Parses the final response head off the front of `read` (`None` until it is all there),
/// consuming informational responses before it.
fn parse_head(
    read: &mut BytesMut,
    fields: &mut Vec<(HeaderName, usize, usize)>,
    head_request: bool,
) -> Result<Option<(http::response::Parts, HeadFraming)>, BodyError> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let length = match response.parse(read) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(protocol_error("too many upstream response headers")),
            Err(_) => return Err(protocol_error("malformed upstream response head")),
        };
        let code = response.code.unwrap_or_default();
        let http10 = response.version == Some(0);
        let start = read.as_ptr() as usize;
        fields.clear();
        let mut framing = FramingHeaders::default();
        for field in response.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| protocol_error("malformed upstream response header name"))?;
            framing.note(&name, field.value)?;
            let offset = field.value.as_ptr() as usize - start;
            fields.push((name, offset, offset + field.value.len()));
        }
        if (100..200).contains(&code) {
            if code == 101 {
                // legate does not proxy upgrades, so it never asked for one.
                return Err(protocol_error("unexpected 101 Switching Protocols from upstream"));
            }
            read.advance(length);
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| protocol_error("malformed upstream status code"))?;
        let bytes = read.split_to(length).freeze();
        // Room for what the proxy adds (`server`, `x-envoy-upstream-service-time`, ...):
        // growing a full map re-hashes it.
        let mut map = HeaderMap::with_capacity(fields.len() + RESPONSE_HEADERS_ADDED);
        for (name, from, to) in fields.drain(..) {
            let value = HeaderValue::from_maybe_shared(bytes.slice(from..to))
                .map_err(|_| protocol_error("malformed upstream response header value"))?;
            map.append(name, value);
        }
        let body = if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            ResponseFraming::Empty
        } else if framing.chunked {
            ResponseFraming::Chunked
        } else if framing.transfer_encoding {
            // A transfer coding other than chunked last: the body runs to the close.
            ResponseFraming::UntilClose
        } else {
            match framing.content_length {
                Some(0) => ResponseFraming::Empty,
                Some(n) => ResponseFraming::Length(n),
                None => ResponseFraming::UntilClose,
            }
        };
        let keep_alive = (if http10 { framing.keep_alive } else { !framing.close })
            && body != ResponseFraming::UntilClose
            // Both framings at once may be a smuggling attempt: never reuse (RFC 9112 §6.3).
            && !(framing.transfer_encoding && framing.content_length.is_some());
        let mut parts = Response::new(()).into_parts().0;
        parts.status = status;
        parts.headers = map;
        return Ok(Some((parts, HeadFraming { body, keep_alive })));
    }
}

/// What a response head says about its framing and connection.
#[derive(Default)]
struct FramingHeaders {
    content_length: Option<u64>,
    transfer_encoding: bool,
    /// `chunked` is the last transfer coding.
    chunked: bool,
    close: bool,
    keep_alive: bool,
}

impl FramingHeaders {
    fn note(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), BodyError> {
        if name == header::CONTENT_LENGTH {
            for item in value.split(|&b| b == b',') {
                let n = parse_decimal(item.trim_ascii())
                    .ok_or_else(|| protocol_error("invalid upstream content-length"))?;
                if self.content_length.is_some_and(|seen| seen != n) {
                    return Err(protocol_error("conflicting upstream content-length values"));
                }
                self.content_length = Some(n);
            }
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            self.chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name == header::CONNECTION {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        Ok(())
    }
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0')))
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields up to an empty line.
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// What decoding the buffered bytes gave.
enum Decoded {
    Frame(Frame<Bytes>),
    /// Progress without a frame (a size line, a CRLF); decode again.
    Again,
    /// The buffer holds too little; read more.
    NeedMore,
    /// The body ended (without trailers).
    End,
}

/// Decodes the next step of a chunked body from `read`.
fn decode_chunked(read: &mut BytesMut, chunk: &mut Chunk) -> Result<Decoded, BodyError> {
    match *chunk {
        Chunk::Size => {
            let Some(line_end) = read.iter().position(|&b| b == b'\n') else {
                if read.len() > MAX_CHUNK_LINE {
                    return Err(protocol_error("upstream chunk-size line too long"));
                }
                return Ok(Decoded::NeedMore);
            };
            let line =
                read[..line_end].strip_suffix(b"\r").ok_or_else(|| protocol_error("malformed chunk-size line"))?;
            let digits = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
            if digits.is_empty() || digits.len() > 15 {
                return Err(protocol_error("malformed chunk size"));
            }
            let size = u64::from_str_radix(std::str::from_utf8(digits).unwrap_or("-"), 16)
                .map_err(|_| protocol_error("malformed chunk size"))?;
            read.advance(line_end + 1);
            *chunk = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
            Ok(Decoded::Again)
        }
        Chunk::Data(left) => {
            if read.is_empty() {
                return Ok(Decoded::NeedMore);
            }
            let take = read.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let data = read.split_to(take).freeze();
            *chunk = if take as u64 == left { Chunk::DataEnd } else { Chunk::Data(left - take as u64) };
            Ok(Decoded::Frame(Frame::data(data)))
        }
        Chunk::DataEnd => {
            if read.len() < 2 {
                return Ok(Decoded::NeedMore);
            }
            if &read[..2] != b"\r\n" {
                return Err(protocol_error("chunk data not followed by CRLF"));
            }
            read.advance(2);
            *chunk = Chunk::Size;
            Ok(Decoded::Again)
        }
        Chunk::Trailers => {
            if read.starts_with(b"\r\n") {
                read.advance(2);
                return Ok(Decoded::End);
            }
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let (length, trailers) = match httparse::parse_headers(read, &mut fields) {
                Ok(httparse::Status::Complete((length, fields))) => {
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for field in fields.iter() {
                        let name = HeaderName::from_bytes(field.name.as_bytes());
                        let value = HeaderValue::from_bytes(field.value);
                        let (Ok(name), Ok(value)) = (name, value) else {
                            return Err(protocol_error("malformed upstream trailer"));
                        };
                        trailers.append(name, value);
                    }
                    (length, trailers)
                }
                Ok(httparse::Status::Partial) if read.len() <= MAX_HEAD_BYTES => return Ok(Decoded::NeedMore),
                _ => return Err(protocol_error("malformed upstream trailers")),
            };
            read.advance(length);
            *chunk = Chunk::Size;
            Ok(Decoded::Frame(Frame::trailers(trailers)))
        }
    }
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
        if let Some(connection) = self.connection.take()
            && self.keep_alive
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
        self.connection = None;
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
                Ok(0) => return this.fail(protocol_error("upstream closed the connection mid-body")),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8], head_request: bool) -> Result<Option<(http::response::Parts, HeadFraming)>, BodyError> {
        parse_head(&mut BytesMut::from(raw), &mut Vec::new(), head_request)
    }

    fn framing(raw: &[u8]) -> (ResponseFraming, bool) {
        let (_, framing) = head(raw, false).unwrap().unwrap();
        (framing.body, framing.keep_alive)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n"), (ResponseFraming::Length(3), true));
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"), (ResponseFraming::Empty, true));
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            (ResponseFraming::Chunked, true)
        );
        // Both framing headers: chunked wins, the connection is not reused.
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"),
            (ResponseFraming::Chunked, false)
        );
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\n\r\n"), (ResponseFraming::UntilClose, false));
        assert_eq!(framing(b"HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n"), (ResponseFraming::Empty, true));
        assert!(!framing(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n").1);
        assert!(!framing(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n").1);
        assert!(framing(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n").1);
        let (_, head_framing) = head(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", true).unwrap().unwrap();
        assert_eq!(head_framing.body, ResponseFraming::Empty);
    }

    #[test]
    fn bad_heads_are_protocol_errors() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(head(raw, false).is_err(), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn informational_responses_are_skipped() {
        let mut read =
            BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n"[..]);
        let (parts, _) = parse_head(&mut read, &mut Vec::new(), false).unwrap().unwrap();
        assert_eq!(parts.status, StatusCode::CREATED);
        assert!(read.is_empty());
        // An informational response alone is not the answer yet.
        let mut read = BytesMut::from(&b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200"[..]);
        assert!(parse_head(&mut read, &mut Vec::new(), false).unwrap().is_none());
        assert_eq!(&read[..], b"HTTP/1.1 200");
    }

    #[test]
    fn header_values_are_kept_byte_for_byte() {
        let (parts, _) =
            head(b"HTTP/1.1 200 OK\r\nx-a: one\r\nx-a: two\r\nServer:  nginx \r\ncontent-length: 0\r\n\r\n", false)
                .unwrap()
                .unwrap();
        let values: Vec<_> = parts.headers.get_all("x-a").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(values, ["one", "two"]);
        assert_eq!(parts.headers["server"], "nginx");
    }

    /// Decodes all of `wire`, fed `step` bytes at a time, into data and trailers.
    fn dechunk(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), BodyError> {
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut read = BytesMut::new();
        let mut chunk = Chunk::Size;
        let mut fed = 0;
        loop {
            match decode_chunked(&mut read, &mut chunk)? {
                Decoded::Frame(frame) => match frame.into_data() {
                    Ok(bytes) => data.extend_from_slice(&bytes),
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        return Ok((data, trailers));
                    }
                },
                Decoded::Again => {}
                Decoded::End => return Ok((data, trailers)),
                Decoded::NeedMore => {
                    if fed == wire.len() {
                        return Err(protocol_error("truncated"));
                    }
                    let next = (fed + step).min(wire.len());
                    read.extend_from_slice(&wire[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let wire = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        for step in [1, 2, 7, wire.len()] {
            let (data, trailers) = dechunk(wire, step).unwrap();
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz");
            assert!(trailers.is_none());
        }
        let (data, trailers) = dechunk(b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\n\r\n", 4).unwrap();
        assert_eq!(data, b"abc");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        for bad in [&b"x\r\n"[..], b"3\r\nabcXY", b"3\nabc\r\n", b"fffffffffffffffff\r\n"] {
            assert!(dechunk(bad, 1).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn chunk_size_lines_and_lengths_are_formatted() {
        let mut line = [0; 18];
        let at = chunk_size_line(0x1a2b, &mut line);
        assert_eq!(&line[at..], b"1a2b\r\n");
        assert_eq!(chunk_size_line(usize::MAX, &mut line), 0);
        assert_eq!(itoa_u64(0, &mut [0; 20]), b"0");
        assert_eq!(itoa_u64(u64::MAX, &mut [0; 20]), b"18446744073709551615");
    }
}
