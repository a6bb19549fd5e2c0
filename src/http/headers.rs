//! Header policy Envoy applies on the way through: hop-by-hop removal, `x-forwarded-*`,
//! `x-request-id`.

use std::net::SocketAddr;

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::Authority;
use http::{HeaderMap, Uri};

use crate::config::route::HostPortMatch;
use crate::http::route::strip_port;

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-forwarded-proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-forwarded-for`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-envoy-upstream-service-time`.
pub static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");
/// `x-envoy-expected-rq-timeout-ms`.
pub static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-envoy-expected-rq-timeout-ms");

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes connection-specific headers, which never cross a proxy (RFC 9110 §7.6.1) and
/// which HTTP/2 forbids; `te: trailers` is the one value kept, as Envoy keeps it.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(listed) = headers.remove(header::CONNECTION)
        && let Ok(listed) = listed.to_str()
    {
        for name in listed.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                headers.remove(name);
            }
        }
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::UPGRADE);
    if let Some(te) = headers.get(header::TE)
        && !te.as_bytes().eq_ignore_ascii_case(b"trailers")
    {
        headers.remove(header::TE);
    }
}

/// Envoy's `x-forwarded-for`/`x-forwarded-proto` handling: with `use_remote_address`
/// the connection's peer is appended to XFF and XFP is set from the connection; without
/// it XFF is left alone and XFP is set only when absent.
pub fn set_forwarded(headers: &mut HeaderMap, remote: SocketAddr, use_remote_address: bool) {
    let proto = HeaderValue::from_static("http");
    if use_remote_address {
        headers.insert(X_FORWARDED_PROTO.clone(), proto);
        let ip = remote.ip().to_string();
        let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(existing) if !existing.is_empty() => format!("{existing},{ip}"),
            _ => ip,
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(X_FORWARDED_FOR.clone(), value);
        }
    } else if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), proto);
    }
}

/// The client address as Envoy determines it: the connection's peer with
/// `use_remote_address`, otherwise the XFF entry `xff_num_trusted_hops` places from the
/// right (the peer when XFF has no usable entry there).
pub fn original_client(
    headers: &HeaderMap,
    peer: SocketAddr,
    use_remote_address: bool,
    trusted_hops: u32,
) -> SocketAddr {
    if use_remote_address {
        return peer;
    }
    let Some(xff) = headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) else { return peer };
    xff.rsplit(',')
        .nth(trusted_hops as usize)
        .and_then(|entry| entry.trim().parse::<std::net::IpAddr>().ok())
        .map_or(peer, |ip| SocketAddr::new(ip, 0))
}

/// Envoy's `strip_any_host_port` / `strip_matching_host_port`: removes the port from the
/// request's host (the `Host` header and the URI authority) before routing, so the upstream
/// and the access log see the host without it.
pub fn strip_host_port(parts: &mut Parts, mode: HostPortMatch) {
    if mode == HostPortMatch::Keep {
        return;
    }
    if let Some(host) = parts.headers.get(header::HOST) {
        let stripped = strip_port(host.as_bytes(), mode);
        if stripped.len() != host.len()
            && let Ok(value) = HeaderValue::from_bytes(stripped)
        {
            parts.headers.insert(header::HOST, value);
        }
    }
    if let Some(authority) = parts.uri.authority() {
        let text = authority.as_str();
        let stripped = strip_port(text.as_bytes(), mode);
        if stripped.len() != text.len()
            && let Ok(authority) = Authority::try_from(stripped)
        {
            let mut uri = parts.uri.clone().into_parts();
            uri.authority = Some(authority);
            if let Ok(uri) = Uri::from_parts(uri) {
                parts.uri = uri;
            }
        }
    }
}

/// Adds a random UUID v4 `x-request-id` when the request has none.
pub fn ensure_request_id(headers: &mut HeaderMap) {
    if headers.contains_key(&X_REQUEST_ID) {
        return;
    }
    let bits = fastrand::u128(..) & !(0xf000 << 64) & !(0xc000 << 48) | (0x4000 << 64) | (0x8000 << 48);
    let mut text = [0u8; 36];
    let hex = b"0123456789abcdef";
    let mut nibble = 0;
    for (i, slot) in text.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *slot = b'-';
            continue;
        }
        *slot = hex[((bits >> (124 - 4 * nibble)) & 0xf) as usize];
        nibble += 1;
    }
    if let Ok(value) = HeaderValue::from_bytes(&text) {
        headers.insert(X_REQUEST_ID.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_including_connection_listed_ones() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert!(h.get("x-private").is_none() && h.get("keep-alive").is_none() && h.get(header::CONNECTION).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn forwarded_for_appends_peer_only_with_use_remote_address() {
        let peer: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        set_forwarded(&mut h, peer, false);
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        set_forwarded(&mut h, peer, true);
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1,10.1.2.3");
    }

    #[test]
    fn host_ports_are_stripped_from_the_header_and_the_authority() {
        let (mut parts, ()) = http::Request::get("http://api.example.com:8443/x?y=1")
            .header("host", "api.example.com:8443")
            .body(())
            .unwrap()
            .into_parts();
        strip_host_port(&mut parts, HostPortMatch::StripMatching(9999));
        assert_eq!(parts.headers[header::HOST], "api.example.com:8443");
        strip_host_port(&mut parts, HostPortMatch::StripMatching(8443));
        assert_eq!(parts.headers[header::HOST], "api.example.com");
        assert_eq!(parts.uri.to_string(), "http://api.example.com/x?y=1");
        let (mut parts, ()) = http::Request::get("/").header("host", "[::1]:80").body(()).unwrap().into_parts();
        strip_host_port(&mut parts, HostPortMatch::StripAny);
        assert_eq!(parts.headers[header::HOST], "[::1]");
    }

    #[test]
    fn original_client_follows_trusted_hops() {
        let peer: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.7, 192.0.2.1,10.0.0.9"));
        assert_eq!(original_client(&h, peer, false, 0).ip().to_string(), "10.0.0.9");
        assert_eq!(original_client(&h, peer, false, 2).ip().to_string(), "198.51.100.7");
        assert_eq!(original_client(&h, peer, false, 3), peer);
        assert_eq!(original_client(&h, peer, true, 0), peer);
    }

    #[test]
    fn request_id_is_a_v4_uuid_and_kept_when_present() {
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let id = h[&X_REQUEST_ID].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        ensure_request_id(&mut h);
        assert_eq!(h[&X_REQUEST_ID], id.as_str());
    }
}
