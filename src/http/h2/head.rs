//! A header block's fields gathered into a request head, a response head or trailers,
//! checked as RFC 9113 §8.2–8.3 require: a malformed message resets its stream with
//! PROTOCOL_ERROR.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, StatusCode, Uri, Version};

use super::hpack::{Field, Name};
use crate::http::h1::framing::{MAX_HEAD_BYTES, MAX_HEADERS};
use crate::http::headers;

/// What a header block carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
    Trailers,
}

/// Why a header block did not become a message head (or trailers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed(&'static str),
    /// More than Envoy's `max_request_headers_kb` (60 KiB) or `max_headers_count` (100).
    TooLarge,
}

/// The fields of one header block as they are decoded.
pub struct Fields {
    method: Option<Bytes>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    status: Option<Bytes>,
    pub headers: HeaderMap,
    pub content_length: Option<u64>,
    size: usize,
    count: usize,
    refusal: Option<Refusal>,
    /// A regular field was seen: pseudo-header fields must all come before.
    regular: bool,
    kind: Kind,
}

impl Fields {
    pub fn new(kind: Kind) -> Fields {
        Fields {
            method: None,
            scheme: None,
            authority: None,
            path: None,
            status: None,
            headers: headers::spare_map(16),
            content_length: None,
            size: 0,
            count: 0,
            refusal: None,
            regular: false,
            kind,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    fn refuse(&mut self, refusal: Refusal) {
        self.refusal.get_or_insert(refusal);
    }

    /// Takes one decoded field. Decoding goes on after a refusal (the HPACK table must stay
    /// in step), but nothing more is kept.
    pub fn add(&mut self, field: Field) {
        let Field { name, value, size, never_indexed } = field;
        self.size += size;
        self.count += 1;
        if self.size > MAX_HEAD_BYTES || self.count > MAX_HEADERS {
            self.refuse(Refusal::TooLarge);
        }
        if self.refusal.is_some() {
            return;
        }
        let slot = match name {
            Name::Header(name) => return self.add_regular(name, value, never_indexed),
            _ if self.regular => return self.refuse(Refusal::Malformed("pseudo-header field after a regular one")),
            Name::Malformed => return self.refuse(Refusal::Malformed("invalid field name")),
            // Extended CONNECT (RFC 8441) is not offered.
            Name::Protocol => return self.refuse(Refusal::Malformed(":protocol without extended CONNECT")),
            Name::Status if self.kind == Kind::Response => &mut self.status,
            Name::Method if self.kind == Kind::Request => &mut self.method,
            Name::Scheme if self.kind == Kind::Request => &mut self.scheme,
            Name::Authority if self.kind == Kind::Request => &mut self.authority,
            Name::Path if self.kind == Kind::Request => &mut self.path,
            _ => return self.refuse(Refusal::Malformed("pseudo-header field out of place")),
        };
        if slot.replace(value).is_some() {
            self.refuse(Refusal::Malformed("repeated pseudo-header field"));
        }
    }

    fn add_regular(&mut self, name: HeaderName, value: Bytes, never_indexed: bool) {
        self.regular = true;
        // Connection-specific fields make a message malformed in HTTP/2 (RFC 9113 §8.2.2).
        if headers::is_forbidden_in_http2(&name, &value) {
            return self.refuse(Refusal::Malformed("connection-specific header field"));
        }
        let Ok(mut value) = HeaderValue::from_maybe_shared(value) else {
            return self.refuse(Refusal::Malformed("invalid field value"));
        };
        // Kept out of the next hop's HPACK tables too (RFC 7541 §7.1.3).
        value.set_sensitive(never_indexed);
        if name == header::CONTENT_LENGTH && self.kind != Kind::Trailers {
            let length = value.to_str().ok().and_then(|v| v.parse().ok());
            match (length, self.content_length) {
                (Some(length), None) => self.content_length = Some(length),
                (Some(length), Some(seen)) if length == seen => {}
                _ => return self.refuse(Refusal::Malformed("invalid content-length")),
            }
        }
        // Split `cookie` fields are joined for the next hop (RFC 9113 §8.2.3), as Envoy's
        // codec joins them: an HTTP/1.1 upstream must see one.
        if name == header::COOKIE
            && let Some(cookie) = self.headers.get_mut(header::COOKIE)
        {
            let mut joined = BytesMut::with_capacity(cookie.len() + 2 + value.len());
            joined.extend_from_slice(cookie.as_bytes());
            joined.extend_from_slice(b"; ");
            joined.extend_from_slice(value.as_bytes());
            let sensitive = cookie.is_sensitive() || value.is_sensitive();
            if let Ok(value) = HeaderValue::from_maybe_shared(joined.freeze()) {
                *cookie = value;
                cookie.set_sensitive(sensitive);
            }
            return;
        }
        self.headers.append(name, value);
    }

    /// The trailers, unless the block was refused.
    pub fn into_trailers(self) -> Result<HeaderMap, Refusal> {
        match self.refusal {
            Some(refusal) => Err(refusal),
            None => Ok(self.headers),
        }
    }

    /// The body length the head declares. A head that ends its stream may declare none but 0
    /// (RFC 9113 §8.1.1).
    fn declared_length(&self, end_stream: bool) -> Result<Option<u64>, Refusal> {
        match self.content_length {
            Some(length) if end_stream && length > 0 => Err(Refusal::Malformed("content-length without a body")),
            length => Ok(length),
        }
    }

    /// The response head and the body length it declares, unless the block was refused;
    /// `end_stream`: the block ended the stream.
    pub fn into_response(self, end_stream: bool) -> Result<(http::response::Parts, Option<u64>), Refusal> {
        if let Some(refusal) = self.refusal {
            return Err(refusal);
        }
        let length = self.declared_length(end_stream)?;
        let status = self.status.ok_or(Refusal::Malformed("missing :status"))?;
        let status = StatusCode::from_bytes(&status).map_err(|_| Refusal::Malformed("invalid :status"))?;
        let mut response = http::Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = Version::HTTP_2;
        *response.headers_mut() = self.headers;
        Ok((response.into_parts().0, length))
    }

    /// The request head and the body length it declares, unless the block was refused;
    /// `end_stream`: the block ended the stream.
    pub fn into_request(self, end_stream: bool) -> Result<(http::request::Parts, Option<u64>), Refusal> {
        if let Some(refusal) = self.refusal {
            return Err(refusal);
        }
        let length = self.declared_length(end_stream)?;
        let method = self.method.ok_or(Refusal::Malformed("missing :method"))?;
        let method = Method::from_bytes(&method).map_err(|_| Refusal::Malformed("invalid :method"))?;
        let mut uri = http::uri::Parts::default();
        if let Some(authority) = self.authority {
            uri.authority =
                Some(Authority::from_maybe_shared(authority).map_err(|_| Refusal::Malformed("invalid :authority"))?);
        }
        if method == Method::CONNECT {
            if uri.authority.is_none() || self.scheme.is_some() || self.path.is_some() {
                return Err(Refusal::Malformed("CONNECT needs :authority alone"));
            }
        } else {
            let scheme = self.scheme.ok_or(Refusal::Malformed("missing :scheme"))?;
            let path = self.path.filter(|p| !p.is_empty()).ok_or(Refusal::Malformed("missing :path"))?;
            // A URI has a scheme only beside an authority; without `:authority` the request
            // names its host in `host`.
            if uri.authority.is_some() {
                uri.scheme = Some(Scheme::try_from(&scheme[..]).map_err(|_| Refusal::Malformed("invalid :scheme"))?);
            }
            uri.path_and_query =
                Some(PathAndQuery::from_maybe_shared(path).map_err(|_| Refusal::Malformed("invalid :path"))?);
        }
        let uri = Uri::from_parts(uri).map_err(|_| Refusal::Malformed("invalid request target"))?;
        let mut request = http::Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_2;
        *request.headers_mut() = self.headers;
        Ok((request.into_parts().0, length))
    }
}
