//! What both ends of an HTTP/2 connection do alike: read frames and answer the
//! connection-level ones (SETTINGS, PING, WINDOW_UPDATE, GOAWAY), keep flow control, join
//! header blocks across CONTINUATION frames and decode them, and write what the streams
//! queued. What a header block means (a new request, a response, trailers) is the `Role`'s.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use crate::transport::Transport;
use bytes::{Buf, Bytes, BytesMut};

use super::frame::{self, Head, Reason};
use super::head::{Fields, Kind};
use super::hpack;
use super::shared::{OUTPUT_LIMIT, Shared};
use crate::http::h1::framing::{MAX_HEAD_BYTES, ReadSize};

/// HTTP/2's connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The most a header block may take across CONTINUATION frames before the connection is
/// closed: more than any header list legate accepts could need.
const MAX_HEADER_BLOCK: usize = 2 * MAX_HEAD_BYTES;
/// Output beyond which the connection stops reading until its socket takes it: a peer that
/// sends requests (or pings) but does not read the answers.
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

pub fn fail(reason: Reason, what: &'static str) -> ConnectionError {
    ConnectionError { reason, what }
}

/// What one end of the connection makes of streams and header blocks.
pub trait Role {
    /// Whether `id` names a stream not opened yet: frames on it are a connection error.
    fn is_idle(&self, shared: &Shared, id: u32) -> bool;
    /// What a header block on stream `id` carries.
    fn block_kind(&self, shared: &Shared, id: u32) -> Kind;
    /// A decoded header block.
    fn on_block(
        &mut self,
        shared: &Rc<RefCell<Shared>>,
        id: u32,
        end_stream: bool,
        fields: Fields,
    ) -> Result<(), ConnectionError>;
    /// The peer's GOAWAY, with the last stream of ours it took.
    fn on_goaway(&mut self, shared: &mut Shared, last_stream: u32);
}

/// A header block arriving in CONTINUATION frames.
struct PartialBlock {
    stream: u32,
    end_stream: bool,
    block: BytesMut,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A server reads the client's preface first.
    Preface,
    /// The peer's first frame must be SETTINGS.
    Settings,
    Frames,
}

/// The socket, what was read of it, and the state shared with the streams.
pub struct Conn {
    io: Transport,
    read: BytesMut,
    read_size: ReadSize,
    pub shared: Rc<RefCell<Shared>>,
    decoder: hpack::Decoder,
    phase: Phase,
    partial: Option<PartialBlock>,
    /// The peer closed its side, or the socket failed.
    pub eof: bool,
    /// A connection error: GOAWAY is queued, and the connection ends once it is written.
    pub error: Option<ConnectionError>,
    /// `read` holds bytes no frame handling has seen (read to tell the protocol).
    unhandled: bool,
    /// Reading waits for the output to drain.
    read_paused: bool,
}

impl Conn {
    /// `server`: the peer starts with the connection preface.
    pub fn new(io: Transport, read: BytesMut, shared: Shared, server: bool) -> Conn {
        Conn {
            io,
            unhandled: !read.is_empty(),
            read,
            read_size: ReadSize::default(),
            shared: Rc::new(RefCell::new(shared)),
            decoder: hpack::Decoder::new(4096),
            phase: if server { Phase::Preface } else { Phase::Settings },
            partial: None,
            eof: false,
            error: None,
            read_paused: false,
        }
    }

    /// Reads what the socket has and handles the frames in it; true if anything was read.
    /// A connection error is handed back for the role to `raise`.
    pub fn poll_read(&mut self, role: &mut impl Role, cx: &mut Context<'_>) -> Result<bool, ConnectionError> {
        if std::mem::take(&mut self.unhandled) {
            self.handle_frames(role)?;
        }
        self.read_paused = self.shared.borrow().out.len() >= READ_PAUSE;
        if self.eof || self.error.is_some() || self.read_paused {
            return Ok(false);
        }
        let room = self.read_size.make_room(&mut self.read);
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read) {
            Poll::Ready(Ok(0)) => self.end(),
            Poll::Ready(Ok(n)) => {
                self.read_size.record(room, n);
                self.handle_frames(role)?;
                return Ok(true);
            }
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "reading an HTTP/2 connection failed");
                self.end();
            }
            Poll::Pending => {}
        }
        Ok(false)
    }

    pub fn is_tls(&self) -> bool {
        self.io.is_tls()
    }

    fn end(&mut self) {
        self.eof = true;
        self.shared.borrow_mut().close();
    }

    /// Writes what is queued. Ready with whether streams or reading waited for that, so
    /// the caller goes round again.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut shared = self.shared.borrow_mut();
        match shared.out.poll_write(&mut self.io, cx) {
            Poll::Ready(Ok(())) => Poll::Ready(shared.wake_output_waiters() | std::mem::take(&mut self.read_paused)),
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "writing an HTTP/2 connection failed");
                drop(shared);
                self.end();
                Poll::Ready(false)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Queues GOAWAY for a connection error (naming `last_stream`, the last stream the peer
    /// opened that legate took); the connection ends once it is written.
    pub fn raise(&mut self, e: ConnectionError, last_stream: u32) {
        tracing::debug!(error = %e, "closing an HTTP/2 connection");
        let mut shared = self.shared.borrow_mut();
        frame::put_goaway(&mut shared.out.buf, last_stream, e.reason);
        shared.broken = e.reason != Reason::NO_ERROR;
        shared.close();
        self.error = Some(e);
    }

    /// Handles the complete frames read.
    fn handle_frames(&mut self, role: &mut impl Role) -> Result<(), ConnectionError> {
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
            self.handle_frame(role, head, payload)?;
        }
        Ok(())
    }

    fn handle_frame(&mut self, role: &mut impl Role, head: Head, payload: Bytes) -> Result<(), ConnectionError> {
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
                self.on_header_block(role, stream, end_stream, block.freeze())?;
            }
            return Ok(());
        }
        if self.phase == Phase::Settings && head.kind != frame::SETTINGS {
            return Err(fail(Reason::PROTOCOL_ERROR, "the first frame was not SETTINGS"));
        }
        match head.kind {
            frame::DATA => self.on_data(role, head, payload),
            frame::HEADERS => self.on_headers(role, head, payload),
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
                if head.stream == 0 || role.is_idle(&self.shared.borrow(), head.stream) {
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
            // Servers may not push to legate: it offers no push (as a client) or is the server.
            frame::PUSH_PROMISE => Err(fail(Reason::PROTOCOL_ERROR, "PUSH_PROMISE")),
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
                if head.len < 8 {
                    return Err(fail(Reason::FRAME_SIZE_ERROR, "GOAWAY too short"));
                }
                role.on_goaway(&mut self.shared.borrow_mut(), frame::u31(&payload, 0));
                Ok(())
            }
            frame::WINDOW_UPDATE => self.on_window_update(role, head, &payload),
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
                frame::SETTINGS_MAX_CONCURRENT_STREAMS => {
                    shared.peer_max_streams = value;
                    for waiter in shared.stream_waiters.drain(..) {
                        waiter.wake();
                    }
                }
                frame::SETTINGS_MAX_FRAME_SIZE => {
                    if !(frame::DEFAULT_MAX_FRAME as u32..=0xff_ffff).contains(&value) {
                        return Err(fail(Reason::PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range"));
                    }
                    shared.peer_max_frame = value as usize;
                }
                frame::SETTINGS_HEADER_TABLE_SIZE => shared.encoder.set_peer_limit(value),
                _ => {}
            }
        }
        frame::put_settings_ack(&mut shared.out.buf);
        self.phase = Phase::Frames;
        Ok(())
    }

    fn on_window_update(&mut self, role: &impl Role, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
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
        if role.is_idle(&shared, head.stream) {
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

    fn on_data(&mut self, role: &impl Role, head: Head, payload: Bytes) -> Result<(), ConnectionError> {
        if head.stream == 0 {
            return Err(fail(Reason::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        if role.is_idle(&self.shared.borrow(), head.stream) {
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

    fn on_headers(&mut self, role: &mut impl Role, head: Head, payload: Bytes) -> Result<(), ConnectionError> {
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
            return self.on_header_block(role, head.stream, end_stream, block);
        }
        self.partial = Some(PartialBlock { stream: head.stream, end_stream, block: BytesMut::from(&block[..]) });
        Ok(())
    }

    /// A complete header block: decoded (always, to keep the HPACK table in step) and
    /// handed to the role.
    fn on_header_block(
        &mut self,
        role: &mut impl Role,
        id: u32,
        end_stream: bool,
        block: Bytes,
    ) -> Result<(), ConnectionError> {
        let mut fields = Fields::new(role.block_kind(&self.shared.borrow(), id));
        self.decoder.decode(&block, |field| fields.add(field)).map_err(|e| fail(Reason::COMPRESSION_ERROR, e.0))?;
        role.on_block(&self.shared, id, end_stream, fields)
    }
}
