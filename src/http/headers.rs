//! Header policy Envoy applies on the way through: hop-by-hop removal, `x-forwarded-*`,
//! `x-request-id`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
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
/// `x-envoy-is-timeout-retry`: whether a retry follows a per-try timeout.
pub static X_ENVOY_IS_TIMEOUT_RETRY: HeaderName = HeaderName::from_static("x-envoy-is-timeout-retry");
/// `x-envoy-attempt-count`: which attempt a request is, or how many a response took.
pub static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
/// `x-envoy-overloaded`, on a reply to a request a circuit breaker refused.
pub static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// A connection-specific header name (RFC 9110 §7.6.1), which HTTP/2 forbids (`te` but
/// for `te: trailers`).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::TE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// A field HTTP/2 forbids (RFC 9113 §8.2.2): a connection-specific one, `te` but for
/// `te: trailers`.
pub fn is_forbidden_in_http2(name: &HeaderName, value: &[u8]) -> bool {
    is_hop_by_hop(name) && !(name == header::TE && value == b"trailers")
}

/// Removes connection-specific headers, which never cross a proxy (RFC 9110 §7.6.1) and
/// which HTTP/2 forbids; `te: trailers` is the one value kept, as Envoy keeps it.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names (cheap comparisons of
    // standard names) spares the hashed removals below.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
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

/// `x-envoy-external-address`.
pub static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");

/// Headers only a trusted (internal) hop may set; Envoy removes them from external requests,
/// and with no `internal_address_config` (which legate does not implement) Envoy 1.40 treats
/// every request as external.
static INTERNAL_ONLY: [HeaderName; 15] = [
    HeaderName::from_static("x-envoy-internal"),
    HeaderName::from_static("x-envoy-retriable-status-codes"),
    HeaderName::from_static("x-envoy-retriable-header-names"),
    HeaderName::from_static("x-envoy-retry-on"),
    HeaderName::from_static("x-envoy-retry-grpc-on"),
    HeaderName::from_static("x-envoy-max-retries"),
    HeaderName::from_static("x-envoy-upstream-alt-stat-name"),
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms"),
    HeaderName::from_static("x-envoy-upstream-rq-timeout-alt-response"),
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-force-trace"),
    HeaderName::from_static("x-envoy-ip-tags"),
    HeaderName::from_static("x-envoy-original-url"),
    HeaderName::from_static("x-envoy-hedge-on-per-try-timeout"),
];

/// Removed as well at the edge (`use_remote_address`), where clients could inject them.
static EDGE_ONLY: [HeaderName; 3] = [
    HeaderName::from_static("x-envoy-decorator-operation"),
    HeaderName::from_static("x-envoy-downstream-service-cluster"),
    HeaderName::from_static("x-envoy-downstream-service-node"),
];

/// Envoy's request header sanitizing and forwarding headers, after the connection manager's
/// `mutateRequestHeaders`. With `use_remote_address` (an edge): the peer is appended to
/// `x-forwarded-for` (a loopback peer as this host's own address), `x-forwarded-proto` is set
/// from the connection unless a trusted hop sent one, and `x-envoy-external-address` names the
/// trusted client. Without it, XFF is left alone and XFP set only when absent. XFP is `https`
/// on a TLS connection. Every request
/// is external, so the internal-only `x-envoy-*` headers are removed. Returns the trusted
/// client address (`%DOWNSTREAM_REMOTE_ADDRESS%`).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    use_remote_address: bool,
    trusted_hops: u32,
    secure: bool,
) -> SocketAddr {
    let client = original_client(headers, peer, use_remote_address, trusted_hops);
    let proto = HeaderValue::from_static(if secure { "https" } else { "http" });
    // Every name removed below starts with `x-envoy-`; a request with none (nearly all)
    // skips the 18 hashed removals.
    let envoy_headers = headers.keys().any(|name| name.as_str().starts_with("x-envoy-"));
    if envoy_headers {
        for name in &INTERNAL_ONLY {
            headers.remove(name);
        }
    }
    if use_remote_address {
        if envoy_headers {
            for name in &EDGE_ONLY {
                headers.remove(name);
            }
        }
        let appended = if peer.ip().is_loopback() { local_address() } else { peer.ip() };
        let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(existing) if !existing.is_empty() => format!("{existing},{appended}"),
            _ => appended.to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(X_FORWARDED_FOR.clone(), value);
        }
        if trusted_hops == 0 {
            headers.insert(X_FORWARDED_PROTO.clone(), proto);
        } else {
            headers.entry(&X_FORWARDED_PROTO).or_insert(proto);
        }
        if let Ok(value) = HeaderValue::from_str(&client.ip().to_string()) {
            headers.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), value);
        }
    } else {
        headers.entry(&X_FORWARDED_PROTO).or_insert(proto);
    }
    client
}

/// The address Envoy appends to XFF for a loopback peer: this host's first non-loopback
/// IPv4 address (the source of its default route here), or 127.0.0.1 without one.
fn local_address() -> std::net::IpAddr {
    static LOCAL: std::sync::OnceLock<std::net::IpAddr> = std::sync::OnceLock::new();
    *LOCAL.get_or_init(|| {
        // Connecting a UDP socket sends nothing; it only picks the route's source address.
        std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|socket| socket.connect("203.0.113.1:9").map(|()| socket))
            .and_then(|socket| socket.local_addr())
            .map(|address| address.ip())
            .ok()
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
    })
}

/// The client address as Envoy determines it: with `use_remote_address`, the XFF entry
/// `xff_num_trusted_hops - 1` places from the right when there are trusted hops, else the
/// connection's peer; without it, the XFF entry `xff_num_trusted_hops` places from the right
/// (the peer when XFF has no usable entry there).
pub fn original_client(
    headers: &HeaderMap,
    peer: SocketAddr,
    use_remote_address: bool,
    trusted_hops: u32,
) -> SocketAddr {
    let from_right = match (use_remote_address, trusted_hops) {
        (true, 0) => return peer,
        (true, hops) => hops - 1,
        (false, hops) => hops,
    };
    let Some(xff) = headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) else { return peer };
    xff.rsplit(',')
        .nth(from_right as usize)
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

/// How many request ids one allocation holds.
const IDS_PER_ARENA: usize = 64;

thread_local! {
    static ID_ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Adds a random UUID v4 `x-request-id` when the request has none, or always when `replace`
/// (Envoy regenerates it for edge requests, where the client's id is not trusted).
pub fn ensure_request_id(headers: &mut HeaderMap, replace: bool) {
    // One hashed lookup of the name for both the check and the insertion.
    let entry = match headers.entry(&X_REQUEST_ID) {
        header::Entry::Occupied(_) if !replace => return,
        entry => entry,
    };
    let bits = fastrand::u128(..) & !(0xf000 << 64) & !(0xc000 << 48) | (0x4000 << 64) | (0x8000 << 48);
    // Where each byte's two hex digits go in `8-4-4-4-12`.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    // Both digits of a byte from one lookup.
    const HEX_PAIRS: [[u8; 2]; 256] = {
        let hex = b"0123456789abcdef";
        let mut pairs = [[0; 2]; 256];
        let mut byte = 0;
        while byte < 256 {
            pairs[byte] = [hex[byte >> 4], hex[byte & 0xf]];
            byte += 1;
        }
        pairs
    };
    let mut text = *b"00000000-0000-0000-0000-000000000000";
    for (byte, at) in bits.to_be_bytes().into_iter().zip(AT) {
        text[at..at + 2].copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    // Ids are cut from a per-worker buffer that holds many, so that one costs no allocation
    // of its own; a buffer is freed once the last id cut from it is.
    let id = ID_ARENA.with_borrow_mut(|arena| {
        if arena.capacity() - arena.len() < text.len() {
            *arena = BytesMut::with_capacity(IDS_PER_ARENA * text.len());
        }
        arena.extend_from_slice(&text);
        arena.split().freeze()
    });
    // SAFETY: hex digits and dashes, all visible ASCII; not checked again byte by byte.
    let mut value = unsafe { HeaderValue::from_maybe_shared_unchecked(id) };
    // A fresh id never repeats: an HTTP/2 upstream's HPACK encoder would add every one to
    // its dynamic table, evicting the entries that do repeat (a full turnover of the 4 KiB
    // table every ~50 requests). Never-indexed, it is sent as a literal.
    value.set_sensitive(true);
    match entry {
        header::Entry::Occupied(mut existing) => {
            existing.insert(value);
        }
        header::Entry::Vacant(vacant) => {
            vacant.insert(value);
        }
    }
}

/// `grpc-timeout`.
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// `grpc-status`.
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The gRPC protocol's largest timeout value: eight digits.
const GRPC_TIMEOUT_DIGITS_MAX: u64 = 99_999_999;

/// A `grpc-timeout` value (up to eight digits and a unit: `H`, `M`, `S`, `m`, `u`, `n`), in
/// whole milliseconds; `None` when malformed.
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let bytes = value.as_bytes();
    let (&unit, digits) = bytes.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let exact = match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    };
    Some(Duration::from_millis(exact.as_millis() as u64))
}

/// A timeout as `grpc-timeout`: milliseconds, or the first coarser unit (seconds, minutes,
/// hours) whose value fits eight digits, the largest hours value at most.
pub fn grpc_timeout_value(timeout: Duration) -> HeaderValue {
    let mut value = timeout.as_millis() as u64;
    let mut unit = 'm';
    for (coarser, divisor) in [('S', 1000), ('M', 60), ('H', 60)] {
        if value <= GRPC_TIMEOUT_DIGITS_MAX {
            break;
        }
        value /= divisor;
        unit = coarser;
    }
    let text = format!("{}{unit}", value.min(GRPC_TIMEOUT_DIGITS_MAX));
    HeaderValue::try_from(text).expect("digits and a letter")
}

/// A decimal header value (`x-envoy-upstream-service-time`, `...-expected-rq-timeout-ms`)
/// without allocating: values under 1000 come from a static table, others from a
/// per-thread cache of the last one made (a route timeout repeats on every request).
pub fn decimal_value(n: u64) -> HeaderValue {
    const SMALL: usize = 1000;
    static TABLE: std::sync::OnceLock<Box<[HeaderValue]>> = std::sync::OnceLock::new();
    if n < SMALL as u64 {
        let table = TABLE.get_or_init(|| {
            // One string holding every number, so each value is a static slice of it and
            // cloning one is a copy, with no reference count.
            let mut digits = String::new();
            let mut ends = Vec::with_capacity(SMALL);
            for i in 0..SMALL {
                digits.push_str(itoa::Buffer::new().format(i));
                ends.push(digits.len());
            }
            let digits: &'static str = Box::leak(digits.into_boxed_str());
            let mut start = 0;
            ends.into_iter()
                .map(|end| {
                    let value = &digits[start..end];
                    start = end;
                    HeaderValue::from_static(value)
                })
                .collect()
        });
        return table[n as usize].clone();
    }
    thread_local! {
        static LAST: std::cell::RefCell<(u64, HeaderValue)> =
            const { std::cell::RefCell::new((0, HeaderValue::from_static("0"))) };
    }
    LAST.with_borrow_mut(|(last, value)| {
        if *last != n {
            *last = n;
            *value = HeaderValue::from(n);
        }
        value.clone()
    })
}

/// The `date` header's value, formatted at most once a second on each worker.
pub fn date_value() -> HeaderValue {
    thread_local! {
        static CACHED: RefCell<(u64, HeaderValue)> = const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(cached_second, value)| {
        if *cached_second != second {
            *cached_second = second;
            *value =
                HeaderValue::from_str(&httpdate::fmt_http_date(now)).unwrap_or_else(|_| HeaderValue::from_static(""));
        }
        value.clone()
    })
}

/// How many cleared header maps a worker keeps for the next message heads.
const SPARE_MAPS: usize = 64;
/// The room a kept map must have: enough for a typical head and what the proxy adds (smaller
/// maps, as the h2 crate builds them, would only be dropped by `spare_map`); a map grown past
/// the upper bound (an unusual message) is not kept either.
const SPARE_MAP_CAPACITY: std::ops::RangeInclusive<usize> = 12..=64;

thread_local! {
    /// Header maps of messages whose heads were written, cleared: on an HTTP/1.1 to
    /// HTTP/1.1 exchange the request's map goes back once the upstream head is written and
    /// the response's once the downstream head is, so the next heads parsed need no new
    /// maps (four allocations per request).
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// A header map with room for `capacity` entries, reused when this worker has one spare
/// that large (growing a smaller one would re-hash it: dearer than a new map).
pub fn spare_map(capacity: usize) -> HeaderMap {
    match SPARE.with_borrow_mut(Vec::pop) {
        Some(map) if map.capacity() >= capacity => map,
        _ => HeaderMap::with_capacity(capacity),
    }
}

/// Keeps `map` (cleared) for a later `spare_map`.
pub fn recycle_map(mut map: HeaderMap) {
    if !SPARE_MAP_CAPACITY.contains(&map.capacity()) {
        return;
    }
    map.clear();
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < SPARE_MAPS {
            spare.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_by_unit_and_print_in_eight_digits() {
        let parse = |text: &'static str| parse_grpc_timeout(&HeaderValue::from_static(text));
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1M"), Some(Duration::from_secs(60)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        // Finer units truncate to whole milliseconds.
        assert_eq!(parse("150999u"), Some(Duration::from_millis(150)));
        assert_eq!(parse("999999n"), Some(Duration::ZERO));
        for bad in ["", "m", "1x", "123456789m", "-1m", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        let print = |timeout: Duration| grpc_timeout_value(timeout).to_str().unwrap().to_owned();
        assert_eq!(print(Duration::from_millis(150)), "150m");
        assert_eq!(print(Duration::from_millis(99_999_999)), "99999999m");
        assert_eq!(print(Duration::from_millis(100_000_000)), "100000S");
        assert_eq!(print(Duration::from_secs(100_000_000)), "1666666M");
        assert_eq!(print(Duration::from_secs(u64::MAX / 1000)), "99999999H");
    }

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
        set_forwarded(&mut h, peer, false, 0, false);
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert!(h.get(&X_ENVOY_EXTERNAL_ADDRESS).is_none());
        set_forwarded(&mut h, peer, true, 0, false);
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1,10.1.2.3");
        assert_eq!(h[&X_ENVOY_EXTERNAL_ADDRESS], "10.1.2.3");
    }

    #[test]
    fn a_loopback_peer_is_appended_as_this_hosts_address() {
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, "127.0.0.1:4000".parse().unwrap(), true, 0, false);
        assert_eq!(h[&X_FORWARDED_FOR], local_address().to_string().as_str());
        assert_eq!(h[&X_ENVOY_EXTERNAL_ADDRESS], "127.0.0.1");
    }

    #[test]
    fn a_trusted_hop_keeps_its_forwarded_proto_and_names_the_client() {
        let peer: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let client = set_forwarded(&mut h.clone(), peer, true, 0, false);
        assert_eq!(client, peer);
        let mut untrusted = h.clone();
        set_forwarded(&mut untrusted, peer, true, 0, false);
        assert_eq!(untrusted[&X_FORWARDED_PROTO], "http");
        let client = set_forwarded(&mut h, peer, true, 1, false);
        assert_eq!(client.ip().to_string(), "203.0.113.7");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_ENVOY_EXTERNAL_ADDRESS], "203.0.113.7");
    }

    #[test]
    fn internal_only_headers_are_removed_and_edge_ones_at_the_edge() {
        let peer: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let mut h = HeaderMap::new();
        for name in [
            "x-envoy-internal",
            "x-envoy-upstream-rq-timeout-ms",
            "x-envoy-downstream-service-node",
            "x-envoy-original-path",
        ] {
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
        }
        let mut inner = h.clone();
        set_forwarded(&mut inner, peer, false, 0, false);
        assert!(inner.get("x-envoy-internal").is_none() && inner.get("x-envoy-upstream-rq-timeout-ms").is_none());
        assert!(inner.get("x-envoy-downstream-service-node").is_some() && inner.get("x-envoy-original-path").is_some());
        set_forwarded(&mut h, peer, true, 0, false);
        assert!(h.get("x-envoy-downstream-service-node").is_none());
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
        assert_eq!(original_client(&h, peer, true, 1).ip().to_string(), "10.0.0.9");
    }

    #[test]
    fn removed_envoy_headers_all_share_the_prefix_the_fast_path_checks() {
        assert!(INTERNAL_ONLY.iter().chain(&EDGE_ONLY).all(|name| name.as_str().starts_with("x-envoy-")));
    }

    #[test]
    fn decimal_values_match_their_numbers() {
        for n in [0, 7, 10, 99, 100, 999, 1000, 15000, 15000, 15001, u64::MAX] {
            assert_eq!(decimal_value(n), HeaderValue::from(n), "{n}");
        }
    }

    #[test]
    fn request_id_is_a_v4_uuid_and_kept_when_present() {
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h, false);
        let id = h[&X_REQUEST_ID].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        for (at, c) in id.char_indices() {
            let dash = matches!(at, 8 | 13 | 18 | 23);
            assert!(if dash { c == '-' } else { matches!(c, '0'..='9' | 'a'..='f') }, "{id}");
        }
        ensure_request_id(&mut h, false);
        assert_eq!(h[&X_REQUEST_ID], id.as_str());
        ensure_request_id(&mut h, true);
        assert_ne!(h[&X_REQUEST_ID], id.as_str());
    }
}
