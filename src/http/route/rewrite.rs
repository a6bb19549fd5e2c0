//! What a matched route does to the request: the cluster choice, path and host rewrites, and
//! the `Location` of redirects.

use std::borrow::Cow;
use std::fmt::Write as _;

use http::header::{HOST, HeaderName};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Uri};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::matching::{request_authority, split_port};
use crate::config::route::{
    ClusterRef, ClusterSpecifier, ClusterTarget, ForwardAction, HostRewrite, MatchedPart, PathRewrite, RedirectAction,
    RedirectPath, RegexRewrite, Substitution,
};

/// Envoy's header for the path before a rewrite.
static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
/// Envoy's header for the host before a rewrite.
static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
/// The forwarded-host header `append_x_forwarded_host` extends.
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

impl ForwardAction {
    /// The cluster for this request: the configured name, the value of `cluster_header`, or a
    /// weighted pick (a fresh random draw per call, so call it once per request). `None` means
    /// the header is missing or not text; the caller answers with `cluster_not_found_status()`.
    pub fn cluster<'a>(&'a self, headers: &'a HeaderMap) -> Option<ClusterRef<'a>> {
        let target = match &self.cluster {
            ClusterSpecifier::Single(target) => target,
            ClusterSpecifier::Weighted { targets, total } => pick(targets, fastrand::u64(0..*total))?,
        };
        target.resolve(headers)
    }

    /// Applies the path rewrite (keeping the query) and the host rewrite, recording the
    /// originals in `x-envoy-original-path` / `x-envoy-original-host` as Envoy's router does.
    pub fn rewrite_request(&self, parts: &mut Parts) {
        self.rewrite_request_with(parts, true);
    }

    /// [`rewrite_request`](Self::rewrite_request), with `envoy_headers` false when the router
    /// has `suppress_envoy_headers` set.
    pub fn rewrite_request_with(&self, parts: &mut Parts, envoy_headers: bool) {
        // The host rewrite comes first: `host_rewrite_path_regex` reads the path as received.
        if let Some(host) = self.new_host(parts) {
            self.set_host(parts, host, envoy_headers);
        }
        let Some(rewrite) = &self.path_rewrite else {
            return;
        };
        let Some(original) = parts.uri.path_and_query().cloned() else {
            return;
        };
        let mut path = rewrite.apply(original.path());
        if path.is_empty() {
            path.push('/');
        }
        if let Some(query) = original.query() {
            path.push('?');
            path.push_str(query);
        }
        let Ok(rewritten) = PathAndQuery::try_from(path) else {
            tracing::debug!(path = original.as_str(), "path rewrite produced an invalid path; left unchanged");
            return;
        };
        let Some(uri) = with_parts(&parts.uri, |uri| uri.path_and_query = Some(rewritten)) else {
            return;
        };
        parts.uri = uri;
        if envoy_headers && let Ok(value) = HeaderValue::from_str(original.as_str()) {
            parts.headers.insert(&X_ENVOY_ORIGINAL_PATH, value);
        }
    }

    fn new_host(&self, parts: &Parts) -> Option<HeaderValue> {
        match self.host_rewrite.as_ref()? {
            HostRewrite::Literal(host) => Some(host.clone()),
            // An empty header leaves the host alone (the proto says so).
            HostRewrite::Header(name) => parts.headers.get(name).filter(|v| !v.is_empty()).cloned(),
            HostRewrite::PathRegex(rewrite) => {
                let host = rewrite.apply(parts.uri.path());
                HeaderValue::try_from(host).ok().filter(|v| !v.is_empty())
            }
        }
    }

    /// Sets the Host header and, when the request carries one, the URI's authority; keeps the
    /// original in `x-envoy-original-host` (and `x-forwarded-host` when asked), as Envoy's
    /// router does for every host rewrite.
    pub fn set_host(&self, parts: &mut Parts, host: HeaderValue, envoy_headers: bool) {
        if let Some(original) = request_authority(parts).and_then(|h| HeaderValue::from_bytes(h).ok()) {
            if self.append_x_forwarded_host {
                let forwarded = match parts.headers.get(&X_FORWARDED_HOST) {
                    Some(existing) => {
                        let mut joined = existing.as_bytes().to_vec();
                        joined.push(b',');
                        joined.extend_from_slice(original.as_bytes());
                        HeaderValue::from_bytes(&joined).unwrap_or_else(|_| original.clone())
                    }
                    None => original.clone(),
                };
                parts.headers.insert(&X_FORWARDED_HOST, forwarded);
            }
            if envoy_headers {
                parts.headers.insert(&X_ENVOY_ORIGINAL_HOST, original);
            }
        }
        if parts.uri.authority().is_some()
            && let Ok(authority) = Authority::try_from(host.as_bytes())
            && let Some(uri) = with_parts(&parts.uri, |uri| uri.authority = Some(authority))
        {
            parts.uri = uri;
        }
        parts.headers.insert(HOST, host);
    }
}

/// A copy of `uri` with some parts changed; `None` if they no longer form a URI.
fn with_parts(uri: &Uri, change: impl FnOnce(&mut http::uri::Parts)) -> Option<Uri> {
    let mut parts = uri.clone().into_parts();
    change(&mut parts);
    Uri::from_parts(parts).ok()
}

/// The target whose running weight sum first exceeds `draw`.
fn pick(targets: &[(u64, ClusterTarget)], draw: u64) -> Option<&ClusterTarget> {
    let at = targets.partition_point(|(upper, _)| *upper <= draw);
    targets.get(at).map(|(_, target)| target)
}

impl ClusterTarget {
    fn resolve<'a>(&'a self, headers: &'a HeaderMap) -> Option<ClusterRef<'a>> {
        match self {
            ClusterTarget::Named(name) => Some(name),
            // Only the first value counts when the header repeats (Envoy's rule).
            ClusterTarget::Header(name) => headers.get(name)?.to_str().ok().filter(|v| !v.is_empty()),
        }
    }
}

impl PathRewrite {
    /// Rewrites a path without its query.
    pub(crate) fn apply(&self, path: &str) -> String {
        match self {
            PathRewrite::Prefix { matched, replacement } => {
                let cut = match *matched {
                    MatchedPart::Prefix(len) if path.is_char_boundary(len.min(path.len())) => len.min(path.len()),
                    MatchedPart::Prefix(_) | MatchedPart::WholePath => path.len(),
                };
                let mut out = String::with_capacity(replacement.len() + path.len() - cut);
                out.push_str(replacement);
                out.push_str(&path[cut..]);
                out
            }
            PathRewrite::Regex(rewrite) => rewrite.apply(path),
        }
    }
}

impl RegexRewrite {
    /// Replaces every match in `input` with the substitution (RE2's global replace).
    pub(crate) fn apply(&self, input: &str) -> String {
        let mut out = String::with_capacity(input.len());
        let mut copied = 0;
        for captures in self.regex.captures_iter(input) {
            let Some(whole) = captures.get(0) else {
                continue;
            };
            out.push_str(&input[copied..whole.start()]);
            for piece in &self.substitution {
                match piece {
                    Substitution::Literal(text) => out.push_str(text),
                    Substitution::Group(group) => out.push_str(captures.get(*group).map_or("", |m| m.as_str())),
                }
            }
            copied = whole.end();
        }
        out.push_str(&input[copied..]);
        out
    }
}

impl RedirectAction {
    /// The status and `Location` for a request; `scheme` is the request's scheme as the proxy
    /// sees it (`x-forwarded-proto`), kept unless the redirect changes it.
    pub fn location(&self, parts: &Parts, scheme: &str) -> (StatusCode, HeaderValue) {
        let new_scheme = self.scheme.as_deref().unwrap_or(scheme);
        let host = self.host(parts, scheme, new_scheme);
        let (path, query) = parts.uri.path_and_query().map_or(("", None), |pq| (pq.path(), pq.query()));
        let kept_query = query.filter(|_| !self.strip_query);
        let (path, query): (Cow<'_, str>, Option<&str>) = match &self.path {
            RedirectPath::Keep => (Cow::Borrowed(path), kept_query),
            // A query in `path_redirect` replaces the request's, even with `strip_query`.
            RedirectPath::Replace { path, query: Some(own) } => (Cow::Borrowed(path), Some(own)),
            RedirectPath::Replace { path, query: None } => (Cow::Borrowed(path), kept_query),
            RedirectPath::Rewrite(rewrite) => (Cow::Owned(rewrite.apply(path)), kept_query),
        };
        let mut location = format!("{new_scheme}://{host}");
        if let Some(port) = self.port {
            // Writing to a String cannot fail.
            let _ = write!(location, ":{port}");
        }
        location.push_str(&path);
        if let Some(query) = query {
            location.push('?');
            location.push_str(query);
        }
        let location = HeaderValue::try_from(location).unwrap_or_else(|_| HeaderValue::from_static("/"));
        (self.status, location)
    }

    /// The redirect's host without the port it will get from `port_redirect`.
    fn host<'a>(&'a self, parts: &'a Parts, scheme: &str, new_scheme: &str) -> &'a str {
        if let Some(host) = &self.host {
            return if self.port.is_some() { bare_host(host) } else { host };
        }
        let request_host = request_authority(parts).and_then(|h| std::str::from_utf8(h).ok()).unwrap_or("");
        let (bare, port) = split_port(request_host.as_bytes());
        let Some(port) = port else {
            return request_host;
        };
        // Envoy drops the request's port when `port_redirect` replaces it, or when the scheme
        // changes away from one whose default port the request spelled out.
        let default_port = (scheme == "http" && port == b"80") || (scheme == "https" && port == b"443");
        if self.port.is_some() || (new_scheme != scheme && default_port) {
            &request_host[..bare.len()]
        } else {
            request_host
        }
    }
}

fn bare_host(host: &str) -> &str {
    let bare = split_port(host.as_bytes()).0.len();
    &host[..bare]
}
