//! One downstream HTTP/2 connection: reads and answers frames, opens a stream per request
//! and runs it (the proxy, then the response) inside the connection's own task, in a
//! `FuturesUnordered` polled beside the socket, so a stream costs no task, and a response is
//! written by the same poll that produced it.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::Request;
use http_body_util::Either;
use tokio::net::TcpStream;

use super::frame::{self, Head, Reason};
use super::hpack;
use super::request::{Fields, Refusal};
use super::shared::{OUTPUT_LIMIT, Shared, register};
use super::stream::{RequestBody, Responder};
use crate::config::listener::Http2Settings;
use crate::http::body::DownstreamBody;
use crate::http::h1::framing::{MAX_HEAD_BYTES, ReadSize};
use crate::http::proxy::ConnContext;

/// HTTP/2's connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The most a header block may take across CONTINUATION frames before the connection is
/// closed: more than any header list legate accepts could need.
const MAX_HEADER_BLOCK: usize = 2 * MAX_HEAD_BYTES;
/// Output beyond which the connection stops reading until its socket takes it: a client
/// that sends requests (or pings) but does not read the answers.
const READ_PAUSE: usize = 2 * OUTPUT_LIMIT;

/// A failure that ends the connection, with the GOAWAY code it sent.
#[derive(Debug)]
pub struct ConnectionError {
    pub reason: Reason,
    pub what: &'static str,
}

impl std::fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP/2 connection error {:?}: {}", self.reason, self.what)
    }
}

impl std::error::Error for ConnectionError {}

fn fail(reason: Reason, what: &'static str) -> ConnectionError {
    ConnectionError { reason, what }
}

/// A header block arriving in CONTINUATION frames.
struct PartialBlock {
    stream: u32,
    end_stream: bool,
    block: BytesMut,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Preface,
    /// The client's first frame must be SETTINGS.
    Settings,
    Frames,
}

/// One downstream HTTP/2 connection and its streams; a future that ends with the connection.
pub struct H2Server<F, S> {
    io: TcpStream,
    read: BytesMut,
    read_size: ReadSize,
    shared: Rc<RefCell<Shared>>,
    decoder: hpack::Decoder,
    streams: FuturesUnordered<S>,
    serve: F,
    ctx: Rc<ConnContext>,
    phase: Phase,
    partial: Option<PartialBlock>,
    /// The highest stream id the client opened.
    last_stream: u32,
    max_concurrent_streams: u32,
    /// New streams are taken (no GOAWAY sent or received).
    accepting: bool,
    /// The client closed its side.
    eof: bool,
    /// `read` holds bytes no frame handling has seen: those read to tell the protocol.
    unhandled: bool,
    /// Reading waits for the output to drain.
    read_paused: bool,
    /// A connection error: GOAWAY is queued, and the connection ends once it is written.
    error: Option<ConnectionError>,
}

impl<F, S> H2Server<F, S>
where
    F: FnMut(Request<DownstreamBody>, Responder) -> S + Unpin,
    S: Future<Output = ()>,
{
    /// Serves HTTP/2 on `io`, whose first bytes (read to tell the protocol) are `read`,
    /// each stream with `serve`.
    pub fn new(io: TcpStream, read: BytesMut, ctx: Rc<ConnContext>, settings: Http2Settings, serve: F) -> Self {
        let mut shared = Shared::new(settings.initial_stream_window, settings.initial_connection_window);
        frame::put_settings(
            &mut shared.out.buf,
            &[
                (frame::SETTINGS_MAX_CONCURRENT_STREAMS, settings.max_concurrent_streams),
                (frame::SETTINGS_INITIAL_WINDOW_SIZE, settings.initial_stream_window),
                (frame::SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEAD_BYTES as u32),
            ],
        );
        let grow = settings.initial_connection_window.saturating_sub(frame::DEFAULT_WINDOW as u32);
        if grow > 0 {
            frame::put_window_update(&mut shared.out.buf, 0, grow);
        }
        H2Server {
            io,
            read,
            read_size: ReadSize::default(),
            shared: Rc::new(RefCell::new(shared)),
            decoder: hpack::Decoder::new(4096),
            streams: FuturesUnordered::new(),
            serve,
            ctx,
            phase: Phase::Preface,
            partial: None,
            last_stream: 0,
            max_concurrent_streams: settings.max_concurrent_streams,
            accepting: true,
            eof: false,
            unhandled: true,
            read_paused: false,
            error: None,
        }
    }

    /// Sends GOAWAY: streams in progress finish, no new ones start.
    pub fn graceful_shutdown(&mut self) {
        if self.accepting && self.error.is_none() {
            self.accepting = false;
            let mut shared = self.shared.borrow_mut();
            frame::put_goaway(&mut shared.out.buf, self.last_stream, Reason::NO_ERROR);
            shared.wake_task();
        }
    }

    fn poll_connection(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        if std::mem::take(&mut self.unhandled)
            && let Err(e) = self.handle_frames()
        {
            self.raise(e);
        }
        loop {
            let mut progressed = false;
            self.read_paused = self.shared.borrow().out.len() >= READ_PAUSE;
            if !self.eof && self.error.is_none() && !self.read_paused {
                let room = self.read_size.make_room(&mut self.read);
                match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read) {
                    Poll::Ready(Ok(0)) => {
                        self.eof = true;
                        self.shared.borrow_mut().close();
                    }
                    Poll::Ready(Ok(n)) => {
                        self.read_size.record(room, n);
                        progressed = true;
                        if let Err(e) = self.handle_frames() {
                            self.raise(e);
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(error = %e, "reading the HTTP/2 connection failed");
                        self.eof = true;
                        self.shared.borrow_mut().close();
                    }
                    Poll::Pending => {}
                }
            }
            // The streams next: what they send goes out in the write below.
            while let Poll::Ready(Some(())) = self.streams.poll_next_unpin(cx) {}
            let flushed = {
                let mut shared = self.shared.borrow_mut();
                match shared.out.poll_write(&mut self.io, cx) {
                    Poll::Ready(Ok(())) => {
                        // Streams that waited for room, or reading paused for the output, go
                        // on now: by whichever write drained it, not only one that started full.
                        progressed |= shared.wake_output_waiters() | std::mem::take(&mut self.read_paused);
                        true
                    }
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(error = %e, "writing the HTTP/2 connection failed");
                        shared.close();
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Pending => false,
                }
            };
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            if flushed && let Some(e) = self.error.take() {
                return Poll::Ready(Err(e));
            }
            if flushed && !self.accepting && self.streams.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }

    /// Queues GOAWAY for a connection error; the connection ends once it is written.
    fn raise(&mut self, e: ConnectionError) {
        tracing::debug!(error = %e, "closing the HTTP/2 connection");
        if e.reason != Reason::NO_ERROR {
            self.ctx.listener.http_stats.downstream_cx_protocol_error.inc();
        }
        let mut shared = self.shared.borrow_mut();
        frame::put_goaway(&mut shared.out.buf, self.last_stream, e.reason);
        shared.close();
        self.accepting = false;
        self.error = Some(e);
    }

    /// Handles the complete frames read.
    fn handle_frames(&mut self) -> Result<(), ConnectionError> {
        if self.phase == Phase::Preface {
            if self.read.len() < PREFACE.len() {
                if !PREFACE.starts_with(&self.read) {
                    return Err(fail(Reason::PROTOCOL_ERROR, "no connection preface"));
                }
                return Ok(());
            }
            if !self.read.starts_with(PREFACE) {
                return Err(fail(Reason::PROTOCOL_ERROR, "no connection preface"));
            }
            self.read.advance(PREFACE.len());
            self.phase = Phase::Settings;
        }
        while self.read.len() >= frame::HEADER_LEN {
            let head = Head::parse(&self.read);
            if head.len > frame::DEFAULT_MAX_FRAME {
                return Err(fail(Reason::FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE"));
            }
            if self.read.len() < frame::HEADER_LEN + head.len {
                break;
            }
            self.read.advance(frame::HEADER_LEN);
            let payload = self.read.split_to(head.len).freeze();
            self.handle_frame(head, payload)?;
            if self.error.is_some() {
                break;
            }
        }
        Ok(())
    }

    fn handle_frame(&mut self, head: Head, payload: Bytes) -> Result<(), ConnectionError> {
        if let Some(partial) = &mut self.partial {
            if head.kind != frame::CONTINUATION || head.stream != partial.stream {
                return Err(fail(Reason::PROTOCOL_ERROR, "expected CONTINUATION"));
            }
            partial.block.extend_from_slice(&payload);
            if partial.block.len() > MAX_HEADER_BLOCK {
                return Err(fail(Reason::ENHANCE_YOUR_CALM, "header block too large"));
            }
            if head.has(frame::END_HEADERS) {
                let PartialBlock { stream, end_stream, block } = self.partial.take().expect("checked above");
                self.on_header_block(stream, end_stream, block.freeze())?;
            }
            return Ok(());
        }
        if self.phase == Phase::Settings && head.kind != frame::SETTINGS {
            return Err(fail(Reason::PROTOCOL_ERROR, "the first frame was not SETTINGS"));
        }
        match head.kind {
            frame::DATA => self.on_data(head, payload),
            frame::HEADERS => self.on_headers(head, payload),
            frame::PRIORITY => {
                if head.stream == 0 {
                    return Err(fail(Reason::PROTOCOL_ERROR, "PRIORITY on stream 0"));
                }
                if head.len != 5 {
                    self.shared.borrow_mut().reset(head.stream, Reason::FRAME_SIZE_ERROR);
                }
                Ok(())
            }
            frame::RST_STREAM => {
                if head.stream == 0 || head.stream > self.last_stream {
                    return Err(fail(Reason::PROTOCOL_ERROR, "RST_STREAM on an idle stream"));
                }
                if head.len != 4 {
                    return Err(fail(Reason::FRAME_SIZE_ERROR, "RST_STREAM of the wrong size"));
                }
                let reason = Reason(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]));
                self.shared.borrow_mut().peer_reset(head.stream, reason);
                Ok(())
            }
            frame::SETTINGS => self.on_settings(head, &payload),
            frame::PUSH_PROMISE => Err(fail(Reason::PROTOCOL_ERROR, "PUSH_PROMISE from a client")),
            frame::PING => {
                if head.stream != 0 {
                    return Err(fail(Reason::PROTOCOL_ERROR, "PING on a stream"));
                }
                if head.len != 8 {
                    return Err(fail(Reason::FRAME_SIZE_ERROR, "PING of the wrong size"));
                }
                if !head.has(frame::ACK) {
                    frame::put_ping_ack(&mut self.shared.borrow_mut().out.buf, &payload);
                }
                Ok(())
            }
            frame::GOAWAY => {
                if head.stream != 0 {
                    return Err(fail(Reason::PROTOCOL_ERROR, "GOAWAY on a stream"));
                }
                // The client opens no more streams; those in progress finish.
                self.accepting = false;
                Ok(())
            }
            frame::WINDOW_UPDATE => self.on_window_update(head, &payload),
            frame::CONTINUATION => Err(fail(Reason::PROTOCOL_ERROR, "CONTINUATION without HEADERS")),
            // Unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    fn on_settings(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        if head.stream != 0 {
            return Err(fail(Reason::PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if head.has(frame::ACK) {
            return match head.len {
                0 => Ok(()),
                _ => Err(fail(Reason::FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")),
            };
        }
        if !head.len.is_multiple_of(6) {
            return Err(fail(Reason::FRAME_SIZE_ERROR, "SETTINGS of the wrong size"));
        }
        let mut shared = self.shared.borrow_mut();
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match id {
                frame::SETTINGS_ENABLE_PUSH if value > 1 => {
                    return Err(fail(Reason::PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH not 0 or 1"));
                }
                frame::SETTINGS_INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > frame::MAX_WINDOW {
                        return Err(fail(Reason::FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large"));
                    }
                    // Every stream's window moves by the change (RFC 9113 §6.9.2).
                    let delta = value - shared.peer_initial_window;
                    shared.peer_initial_window = value;
                    for stream in shared.streams.values_mut() {
                        stream.send_window += delta;
                        if stream.send_window > frame::MAX_WINDOW {
                            return Err(fail(Reason::FLOW_CONTROL_ERROR, "a stream window overflowed"));
                        }
                        if let Some(waker) = stream.sender.take() {
                            waker.wake();
                        }
                    }
                }
                frame::SETTINGS_MAX_FRAME_SIZE => {
                    if !(frame::DEFAULT_MAX_FRAME as u32..=0xff_ffff).contains(&value) {
                        return Err(fail(Reason::PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range"));
                    }
                    shared.peer_max_frame = value as usize;
                }
                // The header table size only bounds an encoder's dynamic table, which
                // legate's encoder does not use; the rest concern a client's own streams.
                _ => {}
            }
        }
        frame::put_settings_ack(&mut shared.out.buf);
        self.phase = Phase::Frames;
        Ok(())
    }

    fn on_window_update(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        if head.len != 4 {
            return Err(fail(Reason::FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size"));
        }
        let increment = i64::from(frame::u31(payload, 0));
        let mut shared = self.shared.borrow_mut();
        if head.stream == 0 {
            if increment == 0 {
                return Err(fail(Reason::PROTOCOL_ERROR, "WINDOW_UPDATE of 0"));
            }
            shared.send_window += increment;
            if shared.send_window > frame::MAX_WINDOW {
                return Err(fail(Reason::FLOW_CONTROL_ERROR, "the connection window overflowed"));
            }
            shared.wake_window_waiters();
            return Ok(());
        }
        if head.stream > self.last_stream {
            return Err(fail(Reason::PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream"));
        }
        let Some(stream) = shared.streams.get_mut(&head.stream) else { return Ok(()) };
        stream.send_window += increment;
        if let Some(waker) = stream.sender.take() {
            waker.wake();
        }
        if increment == 0 {
            shared.reset(head.stream, Reason::PROTOCOL_ERROR);
        } else if stream.send_window > frame::MAX_WINDOW {
            shared.reset(head.stream, Reason::FLOW_CONTROL_ERROR);
        }
        Ok(())
    }

    fn on_data(&mut self, head: Head, payload: Bytes) -> Result<(), ConnectionError> {
        if head.stream == 0 {
            return Err(fail(Reason::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        if head.stream > self.last_stream {
            return Err(fail(Reason::PROTOCOL_ERROR, "DATA on an idle stream"));
        }
        let mut shared = self.shared.borrow_mut();
        if head.len as i64 > shared.recv_window {
            return Err(fail(Reason::FLOW_CONTROL_ERROR, "DATA beyond the connection window"));
        }
        shared.recv_window -= head.len as i64;
        let data = match head.has(frame::PADDED) {
            true => frame::unpad(payload).ok_or_else(|| fail(Reason::PROTOCOL_ERROR, "padding too long"))?,
            false => payload,
        };
        shared.recv_data(head.stream, data, head.len, head.has(frame::END_STREAM));
        Ok(())
    }

    fn on_headers(&mut self, head: Head, payload: Bytes) -> Result<(), ConnectionError> {
        if head.stream == 0 {
            return Err(fail(Reason::PROTOCOL_ERROR, "HEADERS on stream 0"));
        }
        let mut block = match head.has(frame::PADDED) {
            true => frame::unpad(payload).ok_or_else(|| fail(Reason::PROTOCOL_ERROR, "padding too long"))?,
            false => payload,
        };
        if head.has(frame::PRIORITY_FLAG) {
            if block.len() < 5 {
                return Err(fail(Reason::FRAME_SIZE_ERROR, "HEADERS too short for its priority"));
            }
            block.advance(5);
        }
        let end_stream = head.has(frame::END_STREAM);
        if head.has(frame::END_HEADERS) {
            return self.on_header_block(head.stream, end_stream, block);
        }
        self.partial = Some(PartialBlock { stream: head.stream, end_stream, block: BytesMut::from(&block[..]) });
        Ok(())
    }

    /// A complete header block: a new request, or the trailers of one in progress.
    fn on_header_block(&mut self, id: u32, end_stream: bool, block: Bytes) -> Result<(), ConnectionError> {
        let new = id > self.last_stream;
        let mut fields = Fields::new(!new);
        self.decoder.decode(&block, |field| fields.add(field)).map_err(|e| fail(Reason::COMPRESSION_ERROR, e.0))?;
        if !new {
            self.shared.borrow_mut().recv_trailers(id, end_stream, fields.into_trailers());
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
        let mut shared = self.shared.borrow_mut();
        if shared.open >= self.max_concurrent_streams {
            frame::put_rst_stream(&mut shared.out.buf, id, Reason::REFUSED_STREAM);
            return Ok(());
        }
        let content_length = fields.content_length;
        let parts = match fields.into_request() {
            Ok(_) if end_stream && content_length.is_some_and(|length| length > 0) => {
                Err(Refusal::Malformed("content-length without a body"))
            }
            parts => parts,
        };
        let parts = match parts {
            Ok(parts) => parts,
            Err(refusal) => {
                tracing::debug!(?refusal, stream = id, "refusing a malformed request");
                frame::put_rst_stream(&mut shared.out.buf, id, Reason::PROTOCOL_ERROR);
                return Ok(());
            }
        };
        shared.open_stream(id, end_stream, content_length);
        drop(shared);
        let body = RequestBody::new(self.shared.clone(), id, content_length);
        let request = Request::from_parts(parts, Either::Right(body));
        let responder = Responder::new(self.shared.clone(), id);
        self.streams.push((self.serve)(request, responder));
        Ok(())
    }
}

impl<F, S> Future for H2Server<F, S>
where
    F: FnMut(Request<DownstreamBody>, Responder) -> S + Unpin,
    S: Future<Output = ()>,
{
    type Output = Result<(), ConnectionError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.shared.borrow_mut().polling = true;
        let result = this.poll_connection(cx);
        let mut shared = this.shared.borrow_mut();
        shared.polling = false;
        if result.is_pending() {
            register(&mut shared.task, cx);
        }
        result
    }
}
