//! A route's `hash_policy`: what a request is hashed by for ring hash load balancing, and
//! the hash itself, computed as Envoy computes it.

use std::io::Write as _;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy as HashPolicyProto;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use http::HeaderName;
use http::request::Parts;

use super::{ConfigError, Result, join_path};
use crate::upstream::consistent_hash::xxhash64;

/// One `hash_policy` entry.
#[derive(Debug)]
pub(crate) struct HashPolicy {
    by: HashBy,
    /// A hash found here ends the list.
    terminal: bool,
}

#[derive(Debug)]
enum HashBy {
    /// Every value of the header, sorted.
    Header(HeaderName),
    Cookie(String),
    SourceIp,
    /// The first value of the query parameter, as it is written.
    QueryParameter(String),
}

/// Translates a route's `hash_policy` list at `path`.
pub(crate) fn hash_policies(list: &[HashPolicyProto], path: &str) -> Result<Box<[HashPolicy]>> {
    let mut policies = Vec::with_capacity(list.len());
    for (i, proto) in list.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let by = match &proto.policy_specifier {
            Some(PolicySpecifier::Header(header)) => {
                if header.regex_rewrite.is_some() {
                    return Err(ConfigError::unsupported(join_path(&at, "header.regex_rewrite"), ""));
                }
                let field = join_path(&at, "header.header_name");
                if header.header_name.starts_with(':') {
                    return Err(ConfigError::unsupported(field, format!("hashing by {}", header.header_name)));
                }
                let name = HeaderName::from_bytes(header.header_name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| ConfigError::invalid(field, "invalid header name"))?;
                HashBy::Header(name)
            }
            Some(PolicySpecifier::Cookie(cookie)) => {
                if cookie.name.is_empty() {
                    return Err(ConfigError::invalid(join_path(&at, "cookie.name"), "value length must be at least 1"));
                }
                // With a ttl Envoy makes the cookie when the request lacks it.
                if cookie.ttl.is_some() {
                    return Err(ConfigError::unsupported(join_path(&at, "cookie.ttl"), "generated cookies"));
                }
                HashBy::Cookie(cookie.name.clone())
            }
            // Envoy adds nothing for `source_ip: false`.
            Some(PolicySpecifier::ConnectionProperties(properties)) if !properties.source_ip => continue,
            Some(PolicySpecifier::ConnectionProperties(_)) => HashBy::SourceIp,
            Some(PolicySpecifier::QueryParameter(query)) => {
                if query.name.is_empty() {
                    return Err(ConfigError::invalid(
                        join_path(&at, "query_parameter.name"),
                        "value length must be at least 1",
                    ));
                }
                HashBy::QueryParameter(query.name.clone())
            }
            Some(PolicySpecifier::FilterState(_)) => {
                return Err(ConfigError::unsupported(join_path(&at, "filter_state"), ""));
            }
            None => {
                return Err(ConfigError::invalid(
                    at,
                    "one of header, cookie, connection_properties, query_parameter or filter_state is required",
                ));
            }
        };
        policies.push(HashPolicy { by, terminal: proto.terminal });
    }
    Ok(policies.into_boxed_slice())
}

/// The request's hash under `policies`: each hash found is folded into the ones before
/// (rotated left by one, then xor), and a terminal policy that found one ends the list.
/// `None` when no policy found anything.
pub(crate) fn request_hash(policies: &[HashPolicy], parts: &Parts, remote: SocketAddr) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for policy in policies {
        if let Some(found) = policy.by.hash(parts, remote) {
            hash = Some(hash.map_or(0, |h| h.rotate_left(1)) ^ found);
        }
        if policy.terminal && hash.is_some() {
            break;
        }
    }
    hash
}

impl HashBy {
    fn hash(&self, parts: &Parts, remote: SocketAddr) -> Option<u64> {
        match self {
            HashBy::Header(name) => {
                let mut all = parts.headers.get_all(name).iter().map(|v| v.as_bytes());
                let first = all.next()?;
                let Some(second) = all.next() else { return Some(xxhash64(&[first])) };
                // The same hash whatever the order the values came in.
                let mut values: Vec<&[u8]> = [first, second].into_iter().chain(all).collect();
                values.sort_unstable();
                Some(xxhash64(&values))
            }
            HashBy::Cookie(name) => cookie(parts, name).map(|value| xxhash64(&[value.as_bytes()])),
            HashBy::SourceIp => {
                // The address as Envoy writes it (no brackets for IPv6), without allocating.
                let mut text = [0u8; 45];
                let mut cursor = std::io::Cursor::new(&mut text[..]);
                write!(cursor, "{}", remote.ip()).ok()?;
                let len = cursor.position() as usize;
                Some(xxhash64(&[&text[..len]]))
            }
            HashBy::QueryParameter(name) => {
                let query = parts.uri.query()?;
                let value = query.split('&').find_map(|pair| match pair.split_once('=') {
                    Some((key, value)) if key == name => Some(value),
                    None if pair == name => Some(""),
                    _ => None,
                })?;
                Some(xxhash64(&[value.as_bytes()]))
            }
        }
    }
}

/// The first non-empty value of cookie `name` in the `cookie` headers, without its quotes.
fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim_start().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value))
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = http::Request::builder().uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    fn policies(json: serde_json::Value) -> Box<[HashPolicy]> {
        let route = serde_json::json!({ "cluster": "c", "hash_policy": json });
        let proto: envoy_types::pb::envoy::config::route::v3::RouteAction =
            crate::config::schema::parse(&route.to_string(), crate::config::schema::Format::Json).unwrap();
        hash_policies(&proto.hash_policy, "hash_policy").unwrap()
    }

    const REMOTE: &str = "10.0.0.1:5000";

    #[test]
    fn hashes_fold_and_terminal_policies_stop() {
        let list = policies(serde_json::json!([
            { "header": { "header_name": "x-user" }, "terminal": true },
            { "query_parameter": { "name": "id" } }
        ]));
        let remote = REMOTE.parse().unwrap();
        let user = xxhash64(&[b"ann"]);
        let id = xxhash64(&[b"7"]);
        assert_eq!(request_hash(&list, &parts("/?id=7", &[("x-user", "ann")]), remote), Some(user));
        assert_eq!(request_hash(&list, &parts("/?id=7", &[]), remote), Some(id));
        assert_eq!(request_hash(&list, &parts("/", &[]), remote), None);
        let both = policies(serde_json::json!([
            { "header": { "header_name": "x-user" } },
            { "query_parameter": { "name": "id" } }
        ]));
        assert_eq!(
            request_hash(&both, &parts("/?a=1&id=7", &[("x-user", "ann")]), remote),
            Some(user.rotate_left(1) ^ id)
        );
    }

    #[test]
    fn header_values_hash_in_any_order_and_cookies_by_name() {
        let list = policies(serde_json::json!([{ "header": { "header_name": "x-k" } }]));
        let remote = REMOTE.parse().unwrap();
        let one = request_hash(&list, &parts("/", &[("x-k", "b"), ("x-k", "a")]), remote);
        assert_eq!(one, Some(xxhash64(&[b"a", b"b"])));
        assert_eq!(one, request_hash(&list, &parts("/", &[("x-k", "a"), ("x-k", "b")]), remote));
        let list = policies(serde_json::json!([{ "cookie": { "name": "session" } }]));
        let found = request_hash(&list, &parts("/", &[("cookie", "a=1; session=\"xyz\"")]), remote);
        assert_eq!(found, Some(xxhash64(&[b"xyz"])));
        let list = policies(serde_json::json!([{ "connection_properties": { "source_ip": true } }]));
        assert_eq!(request_hash(&list, &parts("/", &[]), remote), Some(xxhash64(&[b"10.0.0.1"])));
    }
}
