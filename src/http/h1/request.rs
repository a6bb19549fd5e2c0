//! Request heads, parsed off the front of the connection's read buffer. Header values and
//! the request target stay slices of the bytes read; only unusual header names allocate.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{Method, Request, StatusCode, Uri, Version};

use super::framing::{FieldSpans, FramingHeaders, MAX_HEADERS, header_map};

/// Request headers the proxy typically adds (`x-forwarded-for`, `x-forwarded-proto`,
/// `x-request-id`, `x-envoy-expected-rq-timeout-ms`), reserved when a head is parsed.
const REQUEST_HEADERS_ADDED: usize = 4;

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head and what the connection needs to know about it.
pub struct RequestHead {
    pub parts: http::request::Parts,
    pub body: BodyFraming,
    /// The connection may carry another request after this one.
    pub keep_alive: bool,
    /// `expect: 100-continue` was sent (and removed: legate answers it, as Envoy does
    /// unless `proxy_100_continue` is set).
    pub expect_continue: bool,
    /// `te: trailers`: the client takes trailers on a chunked response.
    pub trailers: bool,
}

/// A head the codec refuses, with Envoy's status and response code details for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadError {
    pub status: StatusCode,
    pub details: &'static str,
}

const BAD_REQUEST: HeadError = HeadError { status: StatusCode::BAD_REQUEST, details: "http1.codec_error" };
pub const HEADERS_TOO_LARGE: HeadError =
    HeadError { status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, details: "http1.headers_too_large" };

/// A target with `<`, `>` or a backtick, which Envoy's parser passes on and the `http`
/// crate's URI cannot hold: those escaped (as `normalize_path` would escape them).
fn uri_escaping_what_http_refuses(target: &[u8]) -> Option<Uri> {
    let mut escaped = Vec::with_capacity(target.len() + 8);
    for &byte in target {
        match byte {
            b'<' | b'>' | b'`' => crate::http::path::push_escaped(&mut escaped, byte),
            _ => escaped.push(byte),
        }
    }
    Uri::from_maybe_shared(Bytes::from(escaped)).ok()
}

/// Parses the request head at the front of `read` and takes it off (`None` until it is
/// all there). `fields` is scratch space kept by the connection.
pub fn parse(read: &mut BytesMut, fields: &mut FieldSpans) -> Result<Option<RequestHead>, HeadError> {
    // Left uninitialised: httparse writes the fields it finds (zeroing all 100 slots, 3 KiB,
    // cost more than parsing a short head).
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let length = match request.parse_with_uninit_headers(read, &mut headers) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HEADERS_TOO_LARGE),
        Err(_) => return Err(BAD_REQUEST),
    };
    let start = read.as_ptr() as usize;
    let method = Method::from_bytes(request.method.unwrap_or_default().as_bytes()).map_err(|_| BAD_REQUEST)?;
    let version = if request.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let target = request.path.unwrap_or_default();
    if !target.is_ascii() {
        // httparse takes UTF-8 in the request target; Envoy's parser refuses any byte
        // above 0x7F there.
        return Err(BAD_REQUEST);
    }
    let target = (target.as_ptr() as usize - start, target.len());
    fields.clear();
    let mut framing = FramingHeaders::default();
    let mut expect_continue = false;
    let mut trailers = false;
    for field in request.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| BAD_REQUEST)?;
        framing.note(&name, field.value).map_err(|_| BAD_REQUEST)?;
        if name == header::EXPECT && field.value.eq_ignore_ascii_case(b"100-continue") {
            expect_continue = true;
            continue;
        }
        if name == header::TE {
            trailers |= field.value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
        }
        let offset = field.value.as_ptr() as usize - start;
        fields.push((name, offset, offset + field.value.len()));
    }
    let body = if framing.transfer_encoding {
        // Envoy refuses both framings at once (a smuggling vector) unless
        // `allow_chunked_length` is set, and any transfer coding but a lone `chunked`.
        if framing.content_length.is_some() {
            return Err(HeadError {
                status: StatusCode::BAD_REQUEST,
                details: "http1.content_length_and_chunked_not_allowed",
            });
        }
        if !framing.only_chunked {
            return Err(HeadError { status: StatusCode::NOT_IMPLEMENTED, details: "http1.invalid_transfer_encoding" });
        }
        BodyFraming::Chunked
    } else {
        match framing.content_length {
            None | Some(0) => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
        }
    };
    let bytes = read.split_to(length).freeze();
    let target = bytes.slice(target.0..target.0 + target.1);
    let uri = match Uri::from_maybe_shared(target.clone()) {
        Ok(uri) => uri,
        Err(_) => uri_escaping_what_http_refuses(&target).ok_or(BAD_REQUEST)?,
    };
    // SAFETY: `fields` holds the value spans httparse (default configuration) parsed above.
    let map = unsafe { header_map(&bytes, fields, REQUEST_HEADERS_ADDED) };
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = map;
    let keep_alive = if version == Version::HTTP_10 { framing.keep_alive } else { !framing.close };
    Ok(Some(RequestHead {
        parts,
        body,
        keep_alive,
        expect_continue: expect_continue && version == Version::HTTP_11 && body != BodyFraming::None,
        trailers,
    }))
}
