//! Virtual host and route matching. Nothing here allocates except for rare inputs: a host with
//! uppercase letters, or a header that appears several times.

use std::borrow::Cow;

use http::header::{CONTENT_TYPE, COOKIE, HOST, HeaderName};
use http::request::Parts;
use http::uri::Scheme;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::config::route::{
    CookieMatch, DomainIndex, HeaderMatch, HeaderRule, HeaderSource, HostPortMatch, PathMatch, QueryMatch, QueryRule,
    RouteMatch, RouteTable, StringMatch,
};

impl RouteTable {
    /// The index of the virtual host for the request's host (or `vhost_header`).
    pub(super) fn find_virtual_host(&self, req: &Parts) -> Option<usize> {
        let host = match &self.vhost_header {
            Some(name) => req.headers.get(name).map(HeaderValue::as_bytes),
            None => request_authority(req),
        };
        let host = strip_port(host.unwrap_or_default(), self.host_port);
        // Domains are stored lowercased; most hosts already are, so only fold when needed.
        let host: Cow<'_, [u8]> = if host.iter().any(u8::is_ascii_uppercase) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        self.domains.find(&host)
    }
}

/// The request's `:authority`: the URI's (HTTP/2, absolute-form HTTP/1) or the `Host` header.
pub(crate) fn request_authority(req: &Parts) -> Option<&[u8]> {
    if let Some(authority) = req.uri.authority() {
        let text = authority.as_str();
        // User info is not part of the host.
        let host = text.rsplit_once('@').map_or(text, |(_, host)| host);
        return Some(host.as_bytes());
    }
    req.headers.get(HOST).map(HeaderValue::as_bytes)
}

/// Splits `host:port` (`[v6]:port` for IPv6) into the host and the port digits.
pub(crate) fn split_port(host: &[u8]) -> (&[u8], Option<&[u8]>) {
    let colon = if host.first() == Some(&b'[') {
        host.iter().position(|&b| b == b']').map(|end| end + 1).filter(|&c| host.get(c) == Some(&b':'))
    } else if host.iter().filter(|&&b| b == b':').count() == 1 {
        host.iter().position(|&b| b == b':')
    } else {
        None
    };
    match colon {
        Some(c) if c + 1 < host.len() && host[c + 1..].iter().all(u8::is_ascii_digit) => {
            (&host[..c], Some(&host[c + 1..]))
        }
        _ => (host, None),
    }
}

/// `host` without its port when `mode` says the port goes.
pub(crate) fn strip_port(host: &[u8], mode: HostPortMatch) -> &[u8] {
    if mode == HostPortMatch::Keep {
        // Not split at all: this runs for every request, and most keep the port.
        return host;
    }
    match (mode, split_port(host)) {
        (HostPortMatch::Keep, _) | (_, (_, None)) => host,
        (HostPortMatch::StripAny, (bare, Some(_))) => bare,
        (HostPortMatch::StripMatching(listener), (bare, Some(port))) => {
            let port = std::str::from_utf8(port).ok().and_then(|p| p.parse::<u16>().ok());
            if port == Some(listener) { bare } else { host }
        }
    }
}

impl DomainIndex {
    /// Envoy's order: exact, longest suffix wildcard, longest prefix wildcard, then `*`.
    pub(crate) fn find(&self, host: &[u8]) -> Option<usize> {
        if let Some(&vhost) = self.exact.get(host) {
            return Some(vhost);
        }
        // A wildcard never matches the empty string, hence the strict length checks.
        let suffix = self.suffixes.iter().filter(|(len, _)| *len < host.len());
        for (len, group) in suffix {
            if let Some(&vhost) = group.get(&host[host.len() - len..]) {
                return Some(vhost);
            }
        }
        let prefix = self.prefixes.iter().filter(|(len, _)| *len < host.len());
        for (len, group) in prefix {
            if let Some(&vhost) = group.get(&host[..*len]) {
                return Some(vhost);
            }
        }
        self.any
    }
}

impl RouteMatch {
    /// Whether the request satisfies the path matcher and every other criterion.
    pub(crate) fn matches(&self, req: &Parts) -> bool {
        if !self.path.matches(req) {
            return false;
        }
        if self.grpc && !is_grpc(&req.headers) {
            return false;
        }
        if !self.headers.iter().all(|h| h.matches(req)) {
            return false;
        }
        let query = req.uri.query();
        self.query.iter().all(|q| q.matches(query)) && self.cookies.iter().all(|c| c.matches(&req.headers))
    }
}

impl PathMatch {
    fn matches(&self, req: &Parts) -> bool {
        if let PathMatch::Connect = self {
            return is_connect(req);
        }
        // An authority-form CONNECT request has no path, so no path matcher applies to it.
        let Some(path_and_query) = req.uri.path_and_query() else {
            return false;
        };
        let path = path_and_query.path();
        match self {
            PathMatch::Prefix { prefix, ignore_case } => starts_with(path, prefix, *ignore_case),
            PathMatch::Exact { path: exact, ignore_case } => bytes_eq(path.as_bytes(), exact.as_bytes(), *ignore_case),
            PathMatch::Regex(regex) => regex.is_match(path),
            PathMatch::Separated { prefix, ignore_case } => {
                starts_with(path, prefix, *ignore_case)
                    && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
            }
            PathMatch::Connect => false,
        }
    }
}

/// A CONNECT request. Extended CONNECT (`:protocol`, RFC 8441) is not offered by the HTTP/2
/// server, so every CONNECT is a plain one; when it is, a websocket's is an upgrade to Envoy,
/// not a CONNECT.
fn is_connect(req: &Parts) -> bool {
    req.method == Method::CONNECT
}

/// gRPC's content types: `application/grpc` and `application/grpc+<codec>`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v == b"application/grpc" || v.starts_with(b"application/grpc+")
    })
}

fn starts_with(path: &str, prefix: &str, ignore_case: bool) -> bool {
    path.len() >= prefix.len() && bytes_eq(&path.as_bytes()[..prefix.len()], prefix.as_bytes(), ignore_case)
}

fn bytes_eq(a: &[u8], b: &[u8], ignore_case: bool) -> bool {
    if ignore_case { a.eq_ignore_ascii_case(b) } else { a == b }
}

impl HeaderMatch {
    /// Whether the request's header (or pseudo-header) matches, as Envoy's `HeaderMatcher`.
    pub(crate) fn matches(&self, req: &Parts) -> bool {
        self.matches_value(header_value(req, &self.source))
    }

    /// Whether a response's header (or `:status`) matches.
    pub(crate) fn matches_response(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let value = match &self.source {
            HeaderSource::Status => Some(Cow::Borrowed(status.as_str().as_bytes())),
            HeaderSource::Header(name) => joined_values(headers, name),
            _ => None,
        };
        self.matches_value(value)
    }

    fn matches_value(&self, value: Option<Cow<'_, [u8]>>) -> bool {
        if let HeaderRule::Present(want) = self.rule {
            return (value.is_some() == want) != self.invert;
        }
        // A missing header fails the matcher, inverted or not, unless it counts as empty.
        let value = match value {
            Some(value) => value,
            None if self.missing_as_empty => Cow::Borrowed(&b""[..]),
            None => return false,
        };
        let matched = match &self.rule {
            HeaderRule::Value(m) => m.matches(&value),
            HeaderRule::Range { start, end } => std::str::from_utf8(&value)
                .ok()
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|n| *start <= n && n < *end),
            HeaderRule::Present(_) => false,
        };
        matched != self.invert
    }
}

/// A header's value as Envoy's matchers see it: pseudo-headers from the request line, and
/// repeated headers joined with `,`.
fn header_value<'a>(req: &'a Parts, source: &HeaderSource) -> Option<Cow<'a, [u8]>> {
    let borrowed = |text: &'a str| Cow::Borrowed(text.as_bytes());
    match source {
        HeaderSource::Method => Some(borrowed(req.method.as_str())),
        HeaderSource::Authority => request_authority(req).map(Cow::Borrowed),
        HeaderSource::Path => req.uri.path_and_query().map(|pq| borrowed(pq.as_str())),
        HeaderSource::Scheme => {
            req.uri.scheme_str().or_else(|| req.extensions.get::<Scheme>().map(Scheme::as_str)).map(borrowed)
        }
        HeaderSource::Header(name) => joined_values(&req.headers, name),
        HeaderSource::Status | HeaderSource::Absent => None,
    }
}

/// A header's values joined with `,`, as Envoy's matchers see repeated headers.
fn joined_values<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<Cow<'a, [u8]>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(Cow::Borrowed(first.as_bytes()));
    };
    let mut joined = first.as_bytes().to_vec();
    for value in std::iter::once(second).chain(values) {
        joined.push(b',');
        joined.extend_from_slice(value.as_bytes());
    }
    Some(Cow::Owned(joined))
}

impl StringMatch {
    /// Matches `value`; case-insensitive patterns were lowercased at config time.
    pub(crate) fn matches(&self, value: &[u8]) -> bool {
        match self {
            StringMatch::Exact { value: want, ignore_case } => bytes_eq(value, want, *ignore_case),
            StringMatch::Prefix { value: want, ignore_case } => {
                value.len() >= want.len() && bytes_eq(&value[..want.len()], want, *ignore_case)
            }
            StringMatch::Suffix { value: want, ignore_case } => {
                value.len() >= want.len() && bytes_eq(&value[value.len() - want.len()..], want, *ignore_case)
            }
            StringMatch::Contains { value: want, ignore_case } => {
                want.is_empty() || value.windows(want.len()).any(|w| bytes_eq(w, want, *ignore_case))
            }
            StringMatch::Regex(regex) => regex.is_match(value),
        }
    }
}

impl QueryMatch {
    fn matches(&self, query: Option<&str>) -> bool {
        let value = query.and_then(|q| first_query_value(q, &self.name));
        match &self.rule {
            QueryRule::Present(want) => value.is_some() == *want,
            QueryRule::Value(m) => value.is_some_and(|v| m.matches(v.as_bytes())),
        }
    }
}

/// The first value of `name` in a raw (still percent-encoded) query string, as Envoy matches.
fn first_query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

impl CookieMatch {
    fn matches(&self, headers: &HeaderMap) -> bool {
        // An absent cookie does not match; inverting makes absence a match.
        let matched = cookie_value(headers, &self.name).is_some_and(|v| self.value.matches(v));
        matched != self.invert
    }
}

/// The first cookie called `name` in the `Cookie` headers, without surrounding quotes.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers.get_all(COOKIE).iter().find_map(|header| {
        header.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            if pair[..eq].trim_ascii() != name.as_bytes() {
                return None;
            }
            let value = pair[eq + 1..].trim_ascii();
            let unquoted = value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\""));
            Some(unquoted.unwrap_or(value))
        })
    })
}
