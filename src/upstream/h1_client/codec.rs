//! HTTP/1.1 framing for the upstream client: the request head, response heads, and
//! chunked bodies, as pure functions over buffers.

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderName};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body::Body;

use crate::http::body::{BodyError, RequestBody};
use crate::http::h1::framing::{FieldSpans, FramingHeaders, MAX_HEADERS, header_map, protocol_error};

/// Response headers the proxy typically adds, reserved for when a head is parsed.
const RESPONSE_HEADERS_ADDED: usize = 4;

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
pub(super) fn encode_head(out: &mut Vec<u8>, head: &Parts, body: &RequestBody) -> RequestFraming {
    out.clear();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let uri = &head.uri;
    match uri.path_and_query() {
        _ if head.method == Method::CONNECT => {
            out.extend_from_slice(uri.authority().map_or("", |a| a.as_str()).as_bytes())
        }
        Some(target) => out.extend_from_slice(target.as_str().as_bytes()),
        None => out.push(b'/'),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &head.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = if body.is_end_stream() {
        RequestFraming::None
    } else if head.headers.contains_key(header::CONTENT_LENGTH) {
        RequestFraming::Length
    } else if let Some(length) = body.size_hint().exact() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
        out.extend_from_slice(b"\r\n");
        RequestFraming::Length
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        RequestFraming::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
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
    fields: &mut FieldSpans,
    head_request: bool,
) -> Result<Option<(http::response::Parts, HeadFraming)>, BodyError> {
    loop {
        // Uninitialised, as for requests (`http::h1::request::parse`).
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            read,
            &mut headers,
        ) {
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
        // SAFETY: `fields` holds the value spans httparse (default configuration) parsed above.
        let map = unsafe { header_map(&bytes, fields, RESPONSE_HEADERS_ADDED) };
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
