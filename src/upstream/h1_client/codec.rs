//! HTTP/1.1 framing for the upstream client: the request head, response heads, and
//! chunked bodies, as pure functions over buffers.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};

use crate::http::body::{BodyError, RequestBody, StreamError};

/// Envoy's defaults for upstream response heads: `max_response_headers_kb` 60 and
/// `max_response_headers_count` 100.
pub(super) const MAX_HEAD_BYTES: usize = 60 * 1024;
const MAX_HEADERS: usize = 100;
/// Response headers the proxy typically adds, reserved for when a head is parsed.
const RESPONSE_HEADERS_ADDED: usize = 4;
/// A chunk-size line (with extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;

/// An upstream that broke HTTP/1.1 framing, or closed the connection early.
pub(super) fn protocol_error(what: &'static str) -> BodyError {
    Box::new(StreamError(what))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestFraming {
    None,
    Length,
    Chunked,
}

/// Writes the request line and headers into `out`, adding the framing header the body
/// needs: a known length becomes `content-length`, an unknown one `transfer-encoding:
/// chunked` (the proxy removed the downstream's framing headers as hop-by-hop, but keeps
/// a `content-length`).
pub(super) fn encode_head(out: &mut Vec<u8>, request: &Request<RequestBody>) -> RequestFraming {
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

pub(super) fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
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
pub(super) fn chunk_size_line(len: usize, buf: &mut [u8; 18]) -> usize {
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
pub(super) enum ResponseFraming {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

pub(super) struct HeadFraming {
    pub(super) body: ResponseFraming,
    /// The connection may carry another request once this response has ended.
    pub(super) keep_alive: bool,
}

/// Parses the final response head off the front of `read` (`None` until it is all there),
/// consuming informational responses before it.
pub(super) fn parse_head(
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
pub(super) enum Chunk {
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
pub(super) enum Decoded {
    Frame(Frame<Bytes>),
    /// Progress without a frame (a size line, a CRLF); decode again.
    Again,
    /// The buffer holds too little; read more.
    NeedMore,
    /// The body ended (without trailers).
    End,
}

/// Decodes the next step of a chunked body from `read`.
pub(super) fn decode_chunked(read: &mut BytesMut, chunk: &mut Chunk) -> Result<Decoded, BodyError> {
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
