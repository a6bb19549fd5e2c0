//! A cluster's `health_checks` → [`HealthCheckSpec`]: how often each host is checked, what
//! makes a check pass, and how many results in a row change a host's health, with Envoy's
//! defaults and its checks on the values.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::HealthCheck as HealthCheckProto;
use envoy_types::pb::envoy::config::core::v3::RequestMethod;
use envoy_types::pb::envoy::config::core::v3::health_check::payload::Payload as PayloadKind;
use envoy_types::pb::envoy::config::core::v3::health_check::{HealthChecker, HttpHealthCheck, Payload, TcpHealthCheck};
use envoy_types::pb::envoy::r#type::v3::{CodecClientType, Int64Range};
use envoy_types::pb::google::protobuf::Duration as DurationProto;
use http::Method;

use crate::config::error::{ConfigError, Result, join_path};
use crate::config::proto;
use crate::config::route::{HeaderMutations, StringMatch, header_additions, header_mutations, string_matcher};

/// Envoy's default `no_traffic_interval`.
const DEFAULT_NO_TRAFFIC_INTERVAL: Duration = Duration::from_secs(60);
/// Envoy's default `response_buffer_size`: how much of an HTTP check's body `receive` sees.
const DEFAULT_RESPONSE_BUFFER_SIZE: usize = 1024;

/// A validated health check.
#[derive(Debug)]
pub struct HealthCheckSpec {
    pub timeout: Duration,
    pub interval: Duration,
    /// Before a host's first check: a random wait below this.
    pub initial_jitter: Duration,
    /// Added to every wait: a random amount below this, and below this percent of the wait.
    pub interval_jitter: Duration,
    pub interval_jitter_percent: u32,
    /// Failures in a row (network failures, timeouts and retriable statuses) that make a
    /// healthy host unhealthy; any other failed check does at once.
    pub unhealthy_threshold: u32,
    /// Passes in a row that make an unhealthy host healthy; at its first check one does.
    pub healthy_threshold: u32,
    pub reuse_connection: bool,
    /// The waits, by the host's state, while the cluster has never opened an upstream
    /// connection (`no_traffic_*`) and after.
    pub no_traffic_interval: Duration,
    pub no_traffic_healthy_interval: Duration,
    pub unhealthy_interval: Duration,
    pub unhealthy_edge_interval: Duration,
    pub healthy_edge_interval: Duration,
    pub probe: Probe,
}

/// What a check sends and expects.
#[derive(Debug)]
pub enum Probe {
    Http(Box<HttpProbe>),
    Tcp(TcpProbe),
    Grpc(GrpcProbe),
}

/// `http_health_check`.
#[derive(Debug)]
pub struct HttpProbe {
    /// The `:authority`; empty means the cluster's name.
    pub host: String,
    pub path: String,
    pub method: Method,
    pub http2: bool,
    pub(crate) headers: HeaderMutations,
    pub send: Option<Bytes>,
    /// Byte strings the body's first `response_buffer_size` bytes must hold, in order.
    pub receive: Vec<Bytes>,
    pub response_buffer_size: usize,
    /// Statuses that pass; 200 alone by default.
    pub expected: Vec<Range<u16>>,
    /// Failing statuses that count towards `unhealthy_threshold` rather than fail at once.
    pub retriable: Vec<Range<u16>>,
    /// Matched against the answer's `x-envoy-upstream-healthchecked-cluster`.
    pub(crate) service_name: Option<StringMatch>,
}

/// `tcp_health_check`: with nothing to receive, a connect passes.
#[derive(Debug)]
pub struct TcpProbe {
    pub send: Option<Bytes>,
    pub receive: Vec<Bytes>,
}

/// `grpc_health_check`: `grpc.health.v1.Health/Check` over HTTP/2.
#[derive(Debug)]
pub struct GrpcProbe {
    /// The `service` asked about; empty asks about the server as a whole.
    pub service_name: String,
    /// The `:authority`; empty means the cluster's name.
    pub authority: String,
    pub(crate) metadata: HeaderMutations,
}

/// Fields of `HealthCheck` legate implements (the rest are refused by name).
const SUPPORTED_FIELDS: &[&str] = &[
    "timeout",
    "interval",
    "initial_jitter",
    "interval_jitter",
    "interval_jitter_percent",
    "unhealthy_threshold",
    "healthy_threshold",
    "reuse_connection",
    "no_traffic_interval",
    "no_traffic_healthy_interval",
    "unhealthy_interval",
    "unhealthy_edge_interval",
    "healthy_edge_interval",
    // Only the event logger writes what these ask for, and legate refuses it.
    "always_log_health_check_failures",
    "always_log_health_check_success",
    "http_health_check",
    "tcp_health_check",
    "grpc_health_check",
];

/// Translates a cluster's `health_checks` at `path`: Envoy runs one health checker a cluster.
pub fn health_checks(checks: &[HealthCheckProto], path: &str) -> Result<Option<HealthCheckSpec>> {
    match checks {
        [] => Ok(None),
        [check] => health_check(check, &format!("{path}[0]")).map(Some),
        // Envoy 1.40 runs several when each has a `name`, a field of a later schema than the
        // one legate reads.
        _ => Err(ConfigError::invalid(path, "more than one health check: Envoy needs each named, and legate runs one")),
    }
}

fn health_check(proto: &HealthCheckProto, path: &str) -> Result<HealthCheckSpec> {
    proto::ensure_only(proto, SUPPORTED_FIELDS, path)?;
    let field = |name: &str| join_path(path, name);
    let duration = |d: &Option<DurationProto>, name: &str| -> Result<Option<Duration>> {
        d.as_ref().map(|d| proto::duration(d, &field(name))).transpose()
    };
    let positive = |d: &Option<DurationProto>, name: &str| -> Result<Option<Duration>> {
        match duration(d, name)? {
            Some(value) if value.is_zero() => Err(ConfigError::invalid(field(name), "value must be greater than 0s")),
            value => Ok(value),
        }
    };
    let required = |value: Option<Duration>, name: &str| {
        value.ok_or_else(|| ConfigError::invalid(field(name), "value is required"))
    };
    let timeout = required(positive(&proto.timeout, "timeout")?, "timeout")?;
    let interval = required(positive(&proto.interval, "interval")?, "interval")?;
    let threshold =
        |value: Option<u32>, name: &str| value.ok_or_else(|| ConfigError::invalid(field(name), "value is required"));
    let unhealthy_threshold = threshold(proto.unhealthy_threshold.map(|v| v.value), "unhealthy_threshold")?;
    let healthy_threshold = threshold(proto.healthy_threshold.map(|v| v.value), "healthy_threshold")?;
    let no_traffic_interval = positive(&proto.no_traffic_interval, "no_traffic_interval")?;
    let no_traffic_interval = no_traffic_interval.unwrap_or(DEFAULT_NO_TRAFFIC_INTERVAL);
    let unhealthy_interval = positive(&proto.unhealthy_interval, "unhealthy_interval")?.unwrap_or(interval);
    let probe = match &proto.health_checker {
        Some(HealthChecker::HttpHealthCheck(http)) => {
            Probe::Http(Box::new(http_probe(http, &field("http_health_check"))?))
        }
        Some(HealthChecker::TcpHealthCheck(tcp)) => Probe::Tcp(tcp_probe(tcp, &field("tcp_health_check"))?),
        Some(HealthChecker::GrpcHealthCheck(grpc)) => Probe::Grpc(GrpcProbe {
            service_name: grpc.service_name.clone(),
            authority: grpc.authority.clone(),
            metadata: header_additions(
                &grpc.initial_metadata,
                &join_path(&field("grpc_health_check"), "initial_metadata"),
            )?,
        }),
        Some(HealthChecker::CustomHealthCheck(custom)) => {
            return Err(ConfigError::unsupported(field("custom_health_check"), custom.name.clone()));
        }
        None => {
            return Err(ConfigError::invalid(
                path,
                "one of http_health_check, tcp_health_check or grpc_health_check is required",
            ));
        }
    };
    Ok(HealthCheckSpec {
        timeout,
        interval,
        initial_jitter: duration(&proto.initial_jitter, "initial_jitter")?.unwrap_or_default(),
        interval_jitter: duration(&proto.interval_jitter, "interval_jitter")?.unwrap_or_default(),
        interval_jitter_percent: proto.interval_jitter_percent,
        unhealthy_threshold,
        healthy_threshold,
        reuse_connection: proto.reuse_connection.is_none_or(|v| v.value),
        no_traffic_interval,
        no_traffic_healthy_interval: positive(&proto.no_traffic_healthy_interval, "no_traffic_healthy_interval")?
            .unwrap_or(no_traffic_interval),
        unhealthy_interval,
        unhealthy_edge_interval: positive(&proto.unhealthy_edge_interval, "unhealthy_edge_interval")?
            .unwrap_or(unhealthy_interval),
        healthy_edge_interval: positive(&proto.healthy_edge_interval, "healthy_edge_interval")?.unwrap_or(interval),
        probe,
    })
}

fn http_probe(proto: &HttpHealthCheck, path: &str) -> Result<HttpProbe> {
    let field = |name: &str| join_path(path, name);
    if proto.path.is_empty() {
        return Err(ConfigError::invalid(field("path"), "value length must be at least 1 characters"));
    }
    let http2 = match CodecClientType::try_from(proto.codec_client_type) {
        Ok(CodecClientType::Http1) => false,
        Ok(CodecClientType::Http2) => true,
        Ok(CodecClientType::Http3) => return Err(ConfigError::unsupported(field("codec_client_type"), "HTTP3")),
        Err(_) => return Err(ConfigError::invalid(field("codec_client_type"), "unknown value")),
    };
    let method = match RequestMethod::try_from(proto.method) {
        Ok(RequestMethod::MethodUnspecified | RequestMethod::Get) => Method::GET,
        Ok(RequestMethod::Head) => Method::HEAD,
        Ok(RequestMethod::Post) => Method::POST,
        Ok(RequestMethod::Put) => Method::PUT,
        Ok(RequestMethod::Delete) => Method::DELETE,
        Ok(RequestMethod::Options) => Method::OPTIONS,
        Ok(RequestMethod::Trace) => Method::TRACE,
        Ok(RequestMethod::Patch) => Method::PATCH,
        Ok(RequestMethod::Connect) | Err(_) => {
            return Err(ConfigError::invalid(field("method"), "value must not be in list [CONNECT]"));
        }
    };
    let send = proto.send.as_ref().map(|p| payload(p, &field("send"))).transpose()?.filter(|b| !b.is_empty());
    if send.is_some() && [Method::GET, Method::HEAD, Method::DELETE, Method::TRACE].contains(&method) {
        return Err(ConfigError::invalid(
            field("send"),
            format!("HTTP health check cannot specify a request payload with method '{method}'"),
        ));
    }
    let receive = payloads(&proto.receive, &field("receive"))?;
    let response_buffer_size = proto.response_buffer_size.map_or(DEFAULT_RESPONSE_BUFFER_SIZE, |v| v.value as usize);
    let wanted: usize = receive.iter().map(Bytes::len).sum();
    if response_buffer_size != 0 && wanted > response_buffer_size {
        return Err(ConfigError::invalid(
            field("receive"),
            format!(
                "the expected response length '{wanted}' is over the http health response buffer size \
                 '{response_buffer_size}'"
            ),
        ));
    }
    let mut expected = status_ranges(&proto.expected_statuses, &field("expected_statuses"), "expected")?;
    if expected.is_empty() {
        expected.push(200..201);
    }
    Ok(HttpProbe {
        host: proto.host.clone(),
        path: proto.path.clone(),
        method,
        http2,
        headers: header_mutations(&proto.request_headers_to_add, &proto.request_headers_to_remove, path, "request")?,
        send,
        receive,
        response_buffer_size,
        expected,
        retriable: status_ranges(&proto.retriable_statuses, &field("retriable_statuses"), "retriable")?,
        service_name: proto
            .service_name_matcher
            .as_ref()
            .map(|m| string_matcher(m, &field("service_name_matcher")))
            .transpose()?,
    })
}

fn tcp_probe(proto: &TcpHealthCheck, path: &str) -> Result<TcpProbe> {
    if proto.proxy_protocol_config.is_some() {
        return Err(ConfigError::unsupported(join_path(path, "proxy_protocol_config"), ""));
    }
    Ok(TcpProbe {
        send: proto.send.as_ref().map(|p| payload(p, &join_path(path, "send"))).transpose()?.filter(|b| !b.is_empty()),
        receive: payloads(&proto.receive, &join_path(path, "receive"))?,
    })
}

/// Status ranges (`[start, end)`), checked as Envoy checks them.
fn status_ranges(ranges: &[Int64Range], path: &str, kind: &str) -> Result<Vec<Range<u16>>> {
    ranges
        .iter()
        .enumerate()
        .map(|(i, range)| {
            let at = format!("{path}[{i}]");
            let (start, end) = (range.start, range.end);
            if start >= end {
                return Err(ConfigError::invalid(
                    at,
                    format!(
                        "Invalid http {kind} status range: expecting start < end, but found start={start} and end={end}"
                    ),
                ));
            }
            if start < 100 {
                return Err(ConfigError::invalid(
                    at,
                    format!("Invalid http {kind} status range: expecting start >= 100, but found start={start}"),
                ));
            }
            if end > 600 {
                return Err(ConfigError::invalid(
                    at,
                    format!("Invalid http {kind} status range: expecting end <= 600, but found end={end}"),
                ));
            }
            Ok(start as u16..end as u16)
        })
        .collect()
}

/// The non-empty payloads of a list, in order.
fn payloads(list: &[Payload], path: &str) -> Result<Vec<Bytes>> {
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let bytes = payload(p, &format!("{path}[{i}]"))?;
        if !bytes.is_empty() {
            out.push(bytes);
        }
    }
    Ok(out)
}

/// A payload's bytes: `text` is hex, `binary` as it is.
fn payload(p: &Payload, path: &str) -> Result<Bytes> {
    match &p.payload {
        Some(PayloadKind::Text(text)) => {
            let decoded = hex(text);
            match decoded {
                Some(bytes) if !bytes.is_empty() => Ok(bytes.into()),
                _ => Err(ConfigError::invalid(join_path(path, "text"), format!("invalid hex string '{text}'"))),
            }
        }
        Some(PayloadKind::Binary(bytes)) => Ok(Bytes::copy_from_slice(bytes)),
        None => Err(ConfigError::invalid(path, "one of text or binary is required")),
    }
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<Option<HealthCheckSpec>> {
        let text = serde_json::json!({ "name": "c", "health_checks": json }).to_string();
        let proto: envoy_types::pb::envoy::config::cluster::v3::Cluster =
            crate::config::schema::parse(&text, crate::config::schema::Format::Json).unwrap();
        health_checks(&proto.health_checks, "clusters[0].health_checks")
    }

    fn http(extra: serde_json::Value) -> serde_json::Value {
        let mut check = serde_json::json!({
            "timeout": "1s", "interval": "5s", "unhealthy_threshold": 2, "healthy_threshold": 3,
            "http_health_check": { "path": "/healthz" }
        });
        check.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::json!([check])
    }

    #[test]
    fn defaults_are_envoys() {
        let spec = parse(http(serde_json::json!({}))).unwrap().unwrap();
        assert_eq!(spec.no_traffic_interval, Duration::from_secs(60));
        assert_eq!(spec.no_traffic_healthy_interval, Duration::from_secs(60));
        assert_eq!(spec.unhealthy_interval, Duration::from_secs(5));
        assert_eq!(spec.unhealthy_edge_interval, Duration::from_secs(5));
        assert_eq!(spec.healthy_edge_interval, Duration::from_secs(5));
        assert!(spec.reuse_connection);
        let Probe::Http(probe) = spec.probe else { panic!("an HTTP probe") };
        assert_eq!(probe.expected, vec![200..201]);
        assert_eq!(probe.method, Method::GET);
        assert!(!probe.http2);
    }

    #[test]
    fn tcp_payloads_are_hex() {
        let check = serde_json::json!([{
            "timeout": "1s", "interval": "5s", "unhealthy_threshold": 1, "healthy_threshold": 1,
            "tcp_health_check": { "send": { "text": "50494e47" }, "receive": [{ "text": "504f4e47" }] }
        }]);
        let Probe::Tcp(probe) = parse(check).unwrap().unwrap().probe else { panic!("a TCP probe") };
        assert_eq!(probe.send.as_deref(), Some(&b"PING"[..]));
        assert_eq!(probe.receive, vec![Bytes::from_static(b"PONG")]);
    }

    #[test]
    fn bad_values_name_their_field() {
        let two = {
            let mut list = http(serde_json::json!({}));
            let first = list[0].clone();
            list.as_array_mut().unwrap().push(first);
            list
        };
        for (json, field) in [
            (two, "clusters[0].health_checks`: more than one health check"),
            (http(serde_json::json!({ "timeout": null })), "health_checks[0].timeout`: value is required"),
            (http(serde_json::json!({ "interval": "0s" })), "health_checks[0].interval"),
            (
                http(
                    serde_json::json!({ "http_health_check": { "path": "/", "expected_statuses": [{ "start": 300, "end": 200 }] } }),
                ),
                "health_checks[0].http_health_check.expected_statuses[0]`: Invalid http expected status range",
            ),
            (http(serde_json::json!({ "http_health_check": {} })), "http_health_check.path"),
            (
                http(serde_json::json!({ "http_health_check": { "path": "/", "send": { "text": "zz" } } })),
                "http_health_check.send.text",
            ),
            (
                http(serde_json::json!({ "http_health_check": null, "custom_health_check": { "name": "redis" } })),
                "health_checks[0].custom_health_check",
            ),
            (http(serde_json::json!({ "event_log_path": "/dev/null" })), "health_checks[0].event_log_path"),
        ] {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
    }
}
