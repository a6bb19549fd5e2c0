//! HTTP/1.1 framing both sides share (RFC 9112): the headers that decide a message's
//! framing, chunked bodies, and the numbers written into heads and chunk-size lines.

use std::cell::Cell;

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use http_body::Frame;

use crate::http::body::{BodyError, StreamError};
use crate::http::headers;

/// Envoy's defaults for message heads: `max_request_headers_kb` (and
/// `max_response_headers_kb`) 60, and at most 100 header fields.
pub const MAX_HEAD_BYTES: usize = 60 * 1024;
pub const MAX_HEADERS: usize = 100;
/// What a connection's first read asks the socket for.
const READ_SIZE: usize = 16 * 1024;
/// The most one read asks for, reached while reads keep filling the room they are given. A
/// connection keeps the buffer it grew, so this bounds what an idle one holds.
const MAX_READ: usize = 128 * 1024;
/// Below this much room, the read buffer grows even when that allocates.
const MIN_READ: usize = 4 * 1024;
/// A chunk-size line (with extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;

/// How much room a connection's reads get in its buffer. Reads that fill the room double it
/// (a large body streaming in is read, and forwarded, in fewer and larger pieces); one that
/// fills less than half halves it again.
pub struct ReadSize {
    want: Cell<usize>,
    /// The last read filled the room it had: more is likely waiting.
    filled: Cell<bool>,
}

impl Default for ReadSize {
    fn default() -> ReadSize {
        ReadSize { want: Cell::new(READ_SIZE), filled: Cell::new(false) }
    }
}

impl ReadSize {
    /// Makes room in `buffer` for the next read; returns how much there is. The buffer's
    /// space is reclaimed when that is free. While a message head or body frame just read
    /// still refers to it (as when the request is being served), the read goes into the
    /// room left, unless that is small or more data is waiting; only then does the buffer
    /// grow, which allocates.
    pub fn make_room(&self, buffer: &mut BytesMut) -> usize {
        let want = self.want.get();
        let room = buffer.capacity() - buffer.len();
        if room < want && !buffer.try_reclaim(want) && (room < MIN_READ || self.filled.get()) {
            buffer.reserve(want);
        }
        buffer.capacity() - buffer.len()
    }

    /// Notes that a read given `room` took `read` bytes.
    pub fn record(&self, room: usize, read: usize) {
        let want = self.want.get();
        self.filled.set(read >= room);
        if read >= room && room >= want {
            self.want.set((want * 2).min(MAX_READ));
        } else if read < want / 2 {
            self.want.set((want / 2).max(READ_SIZE));
        }
    }
}

/// A peer that broke HTTP/1.1 (its framing, a head's syntax).
pub fn protocol_error(what: &'static str) -> BodyError {
    Box::new(ProtocolViolation(what))
}

/// A peer that closed the connection before a message ended: no violation, but the end of
/// the exchange.
pub fn closed_early(what: &'static str) -> BodyError {
    Box::new(StreamError(what))
}

/// What `protocol_error` makes, told apart from other failures because an upstream's
/// protocol error is answered differently (Envoy's 502 and `UPE`, not a reset's 503).
#[derive(Debug)]
struct ProtocolViolation(&'static str);

impl std::fmt::Display for ProtocolViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ProtocolViolation {}

/// Whether `error` is a peer's protocol violation.
pub fn is_protocol_error(error: &BodyError) -> bool {
    error.is::<ProtocolViolation>()
}

/// Writes `{len:x}\r\n` at the end of `buf`; returns where it starts.
pub fn chunk_size_line(len: usize, buf: &mut [u8; 18]) -> usize {
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

/// Header field names of a head being parsed, and where their values lie in its bytes.
pub type FieldSpans = Vec<(HeaderName, usize, usize)>;

/// The header map of a head whose values lie at `fields` in `head`: slices of it, not copies
/// (`fields` is emptied). Room is left for `added` more entries, as growing a full map
/// re-hashes it.
///
/// # Safety
/// Every span in `fields` must be a header value httparse accepted with its default
/// configuration: it allows exactly the bytes `HeaderValue` does (HTAB, 0x20-0x7E,
/// 0x80-0xFF) and rejects obs-fold, so the values are not checked a second time (≈ 3
/// instructions a byte, every head both ways; hyper's HTTP/1.1 codec skips it likewise).
pub unsafe fn header_map(head: &Bytes, fields: &mut FieldSpans, added: usize) -> HeaderMap {
    let mut map = headers::spare_map(fields.len() + added);
    for (name, from, to) in fields.drain(..) {
        // SAFETY: the caller's promise above.
        map.append(name, unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(from..to)) });
    }
    map
}

/// What a message head says about its framing and connection.
#[derive(Default)]
pub struct FramingHeaders {
    pub content_length: Option<u64>,
    pub transfer_encoding: bool,
    /// `chunked` is the last transfer coding.
    pub chunked: bool,
    /// `chunked` is the only transfer coding.
    pub only_chunked: bool,
    pub close: bool,
    pub keep_alive: bool,
}

impl FramingHeaders {
    /// Notes one header field; fails on a malformed or conflicting `content-length`.
    pub fn note(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), BodyError> {
        if name == header::CONTENT_LENGTH {
            for item in value.split(|&b| b == b',') {
                let n = parse_decimal(item.trim_ascii()).ok_or_else(|| protocol_error("invalid content-length"))?;
                if self.content_length.is_some_and(|seen| seen != n) {
                    return Err(protocol_error("conflicting content-length values"));
                }
                self.content_length = Some(n);
            }
        } else if name == header::TRANSFER_ENCODING {
            self.only_chunked = !self.transfer_encoding && value.trim_ascii().eq_ignore_ascii_case(b"chunked");
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
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields up to an empty line.
    Trailers,
}

/// What decoding the buffered bytes gave.
pub enum Decoded {
    Frame(Frame<Bytes>),
    /// Progress without a frame (a size line, a CRLF); decode again.
    Again,
    /// The buffer holds too little; read more.
    NeedMore,
    /// The body ended (without trailers).
    End,
}

/// Decodes the next step of a chunked body from `read`.
pub fn decode_chunked(read: &mut BytesMut, chunk: &mut Chunk) -> Result<Decoded, BodyError> {
    match *chunk {
        Chunk::Size => {
            let Some(line_end) = read.iter().position(|&b| b == b'\n') else {
                if read.len() > MAX_CHUNK_LINE {
                    return Err(protocol_error("chunk-size line too long"));
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
                            return Err(protocol_error("malformed trailer"));
                        };
                        trailers.append(name, value);
                    }
                    (length, trailers)
                }
                Ok(httparse::Status::Partial) if read.len() <= MAX_HEAD_BYTES => return Ok(Decoded::NeedMore),
                _ => return Err(protocol_error("malformed trailers")),
            };
            read.advance(length);
            *chunk = Chunk::Size;
            Ok(Decoded::Frame(Frame::trailers(trailers)))
        }
    }
}
