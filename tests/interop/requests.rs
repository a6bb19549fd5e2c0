//! One request through one proxy, reduced to what must match: status, body, response
//! headers, which upstream got it and what that upstream saw. Values that legitimately
//! differ per run (dates, timings, request ids, client ports) are masked, names kept.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::Full;

use crate::admin::{PortNames, normalize_text};
use crate::client;
use crate::corpus::{self, RequestSpec};
use crate::proxy::Proxy;
use crate::support::{Seen, Upstream};

/// Item → value; an item one side lacks reads as absent.
pub type Observation = BTreeMap<String, String>;

/// Response headers whose values are timing or per-request noise.
const MASKED_RESPONSE_HEADERS: &[&str] = &["date", "x-envoy-upstream-service-time", "x-request-id"];

/// Sends `spec` over `protocol` and observes the outcome. `upstreams` is keyed by
/// placeholder; several placeholders may share one upstream name.
pub async fn observe(
    proxy: &Proxy,
    port_names: &PortNames,
    spec: &RequestSpec,
    protocol: &str,
    upstreams: &BTreeMap<String, Upstream>,
) -> Observation {
    let seen = observe_unnormalized(proxy, spec, protocol, upstreams).await;
    seen.into_iter().map(|(item, value)| (item, normalize_text(&value, port_names))).collect()
}

/// `${name}` in a request's host, headers or raw bytes: the proxy's own port `name`.
fn with_ports(text: &str, proxy: &Proxy) -> String {
    let values = proxy.ports.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    corpus::fill(text, &values)
}

async fn observe_unnormalized(
    proxy: &Proxy,
    spec: &RequestSpec,
    protocol: &str,
    upstreams: &BTreeMap<String, Upstream>,
) -> Observation {
    let address = proxy.listener(spec.listener.as_deref().unwrap_or("listener"));
    let before: Vec<usize> = upstreams.values().map(proxied_count).collect();
    let mut seen = Observation::new();
    if let Some(raw) = &spec.raw {
        match client::raw(address, with_ports(raw, proxy).as_bytes()).await {
            Ok(bytes) => observe_raw(&bytes, &mut seen),
            Err(e) => {
                seen.insert("error".into(), e);
            }
        }
    } else {
        let mut request = Request::builder().method(spec.method.as_str()).uri(spec.path.as_str());
        request = request.header("host", with_ports(spec.host.as_deref().unwrap_or("example.com"), proxy));
        for (name, value) in &spec.headers {
            request = request.header(name.as_str(), with_ports(value, proxy));
        }
        let body = Bytes::from(spec.body.clone().unwrap_or_default());
        let request = request.body(Full::new(body)).expect("a valid request in the request set");
        let server_name = spec.sni.as_deref().unwrap_or("legate.test");
        match client::exchange(address, protocol, server_name, request).await {
            Ok(answer) => {
                seen.insert("status".into(), answer.status.as_u16().to_string());
                seen.insert("body".into(), String::from_utf8_lossy(&answer.body).into_owned());
                response_headers(&answer.headers, &mut seen);
            }
            Err(e) => {
                seen.insert("error".into(), e);
            }
        }
    }
    if !seen.contains_key("header x-upstream") {
        // Answered locally: an upstream may still be noticing a request the proxy gave up on.
        tokio::time::sleep(std::time::Duration::from_millis(spec.settle_ms.unwrap_or(60))).await;
    }
    if let Some(error) = seen.get_mut("error") {
        *error = error_class(error).to_owned();
    }
    let mut got = Vec::new();
    for ((_, upstream), before) in upstreams.iter().zip(before) {
        let count = proxied_count(upstream);
        if count > before {
            got.push((upstream, count - before));
        }
    }
    // Upstreams answer with their own name; several may share one.
    let names: Vec<&str> = got.iter().map(|(u, _)| u.name.as_str()).collect();
    seen.insert("upstream".into(), if names.is_empty() { "(none)".into() } else { names.join(",") });
    if let [(upstream, attempts)] = got.as_slice() {
        // Retries show as more than one request reaching the upstream.
        let attempts = *attempts;
        seen.insert("upstream requests".into(), attempts.to_string());
        let request = last_proxied(upstream);
        seen.insert("upstream method".into(), request.method);
        seen.insert("upstream path".into(), request.path);
        seen.insert("upstream authority".into(), request.authority);
        seen.insert("upstream version".into(), format!("{:?}", request.version));
        for (name, value) in request.headers {
            let value = match name.as_str() {
                // Whether the client's id was kept or replaced matters; the new id's value not.
                "x-request-id" if spec.headers.get("x-request-id") == Some(&value) => "<the client's>".to_owned(),
                "x-request-id" => "<generated>".to_owned(),
                "x-forwarded-for" => PORT_IN_XFF.replace_all(&value, "").into_owned(),
                // A retry's expected timeout is what is left of the route timeout by then;
                // after a retry from another host, a millisecond or two less.
                "x-envoy-expected-rq-timeout-ms" if attempts > 1 => "<time left>".to_owned(),
                "x-envoy-expected-rq-timeout-ms" => match value.parse::<u64>() {
                    Ok(ms) => format!("≈{}", (ms + 50) / 100 * 100),
                    Err(_) => value,
                },
                _ => value,
            };
            seen.insert(format!("upstream header {name}"), value);
        }
    }
    seen
}

/// Whether a request is an active health check (`user-agent: Envoy/HC`, which Envoy's HTTP
/// checks send and config 42's TCP check payload copies): each proxy checks the shared
/// upstreams on its own schedule, so checks are not requests the proxy forwarded.
fn is_health_check(seen: &Seen) -> bool {
    seen.headers.get("user-agent").is_some_and(|agent| agent == "Envoy/HC")
}

/// How many forwarded requests (health checks aside) `upstream` has seen.
fn proxied_count(upstream: &Upstream) -> usize {
    upstream.seen.lock().unwrap().iter().filter(|seen| !is_health_check(seen)).count()
}

/// The last forwarded request (health checks aside) `upstream` saw.
fn last_proxied(upstream: &Upstream) -> Seen {
    let seen = upstream.seen.lock().unwrap();
    seen.iter().rev().find(|seen| !is_health_check(seen)).cloned().expect("a request reached the upstream")
}

static PORT_IN_XFF: LazyLock<regex::Regex> = LazyLock::new(|| regex::Regex::new(r"(\d+\.\d+\.\d+\.\d+):\d+").unwrap());

fn response_headers(headers: &HeaderMap, seen: &mut Observation) {
    for name in headers.keys() {
        let values: Vec<String> =
            headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
        let value =
            if MASKED_RESPONSE_HEADERS.contains(&name.as_str()) { "<masked>".to_owned() } else { values.join(", ") };
        seen.insert(format!("header {name}"), value);
    }
}

/// A raw HTTP/1.x reply: status line, headers, body bytes as text.
fn observe_raw(bytes: &[u8], seen: &mut Observation) {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    seen.insert("status line".into(), lines.next().unwrap_or("").to_owned());
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        headers.entry(name.to_owned()).or_default().push(value.trim().to_owned());
    }
    for (name, values) in headers {
        let masked = MASKED_RESPONSE_HEADERS.contains(&name.to_ascii_lowercase().as_str());
        seen.insert(format!("header {name}"), if masked { "<masked>".into() } else { values.join(", ") });
    }
    seen.insert("body".into(), body.to_owned());
}

/// What a client can tell of a failed exchange; the wording of the client library's error
/// (which depends on how the peer closed) is not compared.
fn error_class(error: &str) -> &'static str {
    if error.starts_with("connect:") {
        "connection refused"
    } else if error.starts_with("no complete response") {
        "no response in time"
    } else {
        "connection closed without a response"
    }
}
