//! `RetryPolicy` (route or virtual host) → [`RetryPolicy`]: which upstream outcomes the
//! router retries, how often, with what backoff and per-try timeout.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;

use envoy_types::pb::envoy::config::route::v3::{RetryPolicy as RetryPolicyProto, retry_policy};
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;

use super::{HeaderMatch, IsSet, header_matcher, reject_set};
use crate::config::error::{ConfigError, Result, join_path};
use crate::config::proto;

/// The retry predicate legate implements: reselect a host tried before.
const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
const PREVIOUS_HOSTS_TYPE: &str = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";
const PREVIOUS_PRIORITIES_TYPE: &str =
    "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig";

/// Envoy's backoff when `retry_back_off` is unset: 25 ms base, ten times that at most.
const DEFAULT_BASE_INTERVAL: Duration = Duration::from_millis(25);

/// The `retry_on` conditions, as bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(u32);

impl RetryOn {
    pub const FIVE_XX: RetryOn = RetryOn(1);
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    pub const RESET: RetryOn = RetryOn(1 << 2);
    pub const RESET_BEFORE_REQUEST: RetryOn = RetryOn(1 << 3);
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 4);
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 5);
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 6);
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 7);
    pub const ENVOY_RATELIMITED: RetryOn = RetryOn(1 << 8);
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 9);
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 10);
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 11);
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 12);
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 13);
    pub const RETRIABLE_HEADERS: RetryOn = RetryOn(1 << 14);

    /// Envoy's tokens for each bit. `http3-post-connect-failure` is skipped like an unknown
    /// token (as Envoy skips those): legate has no HTTP/3.
    const TOKENS: [(&'static str, RetryOn); 15] = [
        ("5xx", RetryOn::FIVE_XX),
        ("gateway-error", RetryOn::GATEWAY_ERROR),
        ("reset", RetryOn::RESET),
        ("reset-before-request", RetryOn::RESET_BEFORE_REQUEST),
        ("connect-failure", RetryOn::CONNECT_FAILURE),
        ("retriable-4xx", RetryOn::RETRIABLE_4XX),
        ("refused-stream", RetryOn::REFUSED_STREAM),
        ("retriable-status-codes", RetryOn::RETRIABLE_STATUS_CODES),
        ("envoy-ratelimited", RetryOn::ENVOY_RATELIMITED),
        ("cancelled", RetryOn::GRPC_CANCELLED),
        ("deadline-exceeded", RetryOn::GRPC_DEADLINE_EXCEEDED),
        ("resource-exhausted", RetryOn::GRPC_RESOURCE_EXHAUSTED),
        ("internal", RetryOn::GRPC_INTERNAL),
        ("unavailable", RetryOn::GRPC_UNAVAILABLE),
        ("retriable-headers", RetryOn::RETRIABLE_HEADERS),
    ];

    /// Parses a comma-separated `retry_on`, trimming each token and skipping unknown ones.
    pub fn parse(text: &str) -> RetryOn {
        text.split(',')
            .map(str::trim)
            .filter_map(|token| RetryOn::TOKENS.iter().find(|(name, _)| *name == token))
            .fold(RetryOn::default(), |on, (_, bit)| on | *bit)
    }

    /// Whether any of `other`'s conditions is set.
    pub fn any(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = RetryOn;
    fn bitor(self, other: RetryOn) -> RetryOn {
        RetryOn(self.0 | other.0)
    }
}

/// A validated retry policy.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub on: RetryOn,
    pub num_retries: u32,
    /// Each attempt's limit for its response headers; `None` leaves only the route timeout.
    pub per_try_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    /// Jittered exponential backoff between attempts.
    pub base_interval: Duration,
    pub max_interval: Duration,
    /// The `previous_hosts` predicate: a retry avoids the hosts already tried.
    pub avoid_previous_hosts: bool,
    /// How many times a retry's host pick may be redone to avoid a tried host.
    pub host_selection_max_attempts: u32,
    /// The `previous_priorities` retry priority's `update_frequency`: after every so many
    /// attempts, the priorities attempted take no more load.
    pub avoid_previous_priorities: Option<u32>,
    /// `retriable_request_headers`: when set, only a request matching one of them is retried.
    pub(crate) retriable_request_headers: Arc<[HeaderMatch]>,
    /// `retriable_headers`: under `retriable-headers`, a response matching one is retried.
    pub(crate) retriable_headers: Arc<[HeaderMatch]>,
}

impl RetryPolicy {
    /// Whether retries apply to this request (Envoy turns every `retry_on` condition off for
    /// a request matching none of `retriable_request_headers`; the per-try timeout stays).
    pub fn retries(&self, request: &Parts) -> bool {
        self.retriable_request_headers.is_empty() || self.retriable_request_headers.iter().any(|m| m.matches(request))
    }
}

/// Translates a `RetryPolicy` at `path`.
pub fn retry_policy(proto: &RetryPolicyProto, path: &str) -> Result<RetryPolicy> {
    let RetryPolicyProto {
        retry_on,
        num_retries,
        per_try_timeout,
        per_try_idle_timeout,
        retry_priority,
        retry_host_predicate,
        retry_options_predicates,
        host_selection_retry_max_attempts,
        retriable_status_codes,
        retry_back_off,
        rate_limited_retry_back_off,
        retriable_headers,
        retriable_request_headers,
        refresh_cluster_on_retry,
    } = proto;
    reject_fields!(path; per_try_idle_timeout, retry_options_predicates,
        rate_limited_retry_back_off, refresh_cluster_on_retry)?;
    let avoid_previous_priorities = match retry_priority {
        Some(priority) => Some(previous_priorities(priority, &join_path(path, "retry_priority"))?),
        None => None,
    };
    let mut avoid_previous_hosts = false;
    for (i, predicate) in retry_host_predicate.iter().enumerate() {
        let field = format!("{path}.retry_host_predicate[{i}]");
        if predicate.name.is_empty() {
            return Err(ConfigError::invalid(join_path(&field, "name"), "value length must be at least 1"));
        }
        // The typed config names the extension when there is one; the name otherwise.
        let type_name = match &predicate.config_type {
            Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(any)) => proto::type_name(&any.type_url),
            None => "",
        };
        if type_name != PREVIOUS_HOSTS_TYPE && (!type_name.is_empty() || predicate.name != PREVIOUS_HOSTS) {
            return Err(ConfigError::unsupported(
                field,
                format!("only the {PREVIOUS_HOSTS} retry host predicate is implemented"),
            ));
        }
        avoid_previous_hosts = true;
    }
    let per_try_timeout = match per_try_timeout {
        Some(d) => Some(proto::duration(d, &join_path(path, "per_try_timeout"))?).filter(|d| !d.is_zero()),
        None => None,
    };
    let (base_interval, max_interval) = match retry_back_off {
        None => (DEFAULT_BASE_INTERVAL, DEFAULT_BASE_INTERVAL * 10),
        Some(back_off) => back_off_intervals(back_off, &join_path(path, "retry_back_off"))?,
    };
    let retriable_status_codes = retriable_status_codes
        .iter()
        .enumerate()
        .map(|(i, &code)| {
            u16::try_from(code).map_err(|_| {
                ConfigError::invalid(format!("{path}.retriable_status_codes[{i}]"), "not an HTTP status code")
            })
        })
        .collect::<Result<_>>()?;
    Ok(RetryPolicy {
        on: RetryOn::parse(retry_on),
        num_retries: num_retries.map_or(1, |n| n.value),
        per_try_timeout,
        retriable_status_codes,
        base_interval,
        max_interval,
        avoid_previous_hosts,
        host_selection_max_attempts: u32::try_from(*host_selection_retry_max_attempts).unwrap_or(0).max(1),
        avoid_previous_priorities,
        retriable_request_headers: header_matchers(retriable_request_headers, path, "retriable_request_headers")?,
        retriable_headers: header_matchers(retriable_headers, path, "retriable_headers")?,
    })
}

/// The `previous_priorities` retry priority (the only one Envoy has): its `update_frequency`.
fn previous_priorities(proto: &retry_policy::RetryPriority, path: &str) -> Result<u32> {
    let Some(retry_policy::retry_priority::ConfigType::TypedConfig(any)) = &proto.config_type else {
        return Err(ConfigError::invalid(join_path(path, "typed_config"), "value is required"));
    };
    if proto::type_name(&any.type_url) != PREVIOUS_PRIORITIES_TYPE {
        return Err(proto::unexpected_type(any, &join_path(path, "typed_config")));
    }
    let config: PreviousPrioritiesConfig = proto::unpack(any, &join_path(path, "typed_config"))?;
    u32::try_from(config.update_frequency).ok().filter(|&f| f > 0).ok_or_else(|| {
        ConfigError::invalid(join_path(path, "typed_config.update_frequency"), "value must be greater than 0")
    })
}

/// A list of header matchers at `path.field`.
fn header_matchers(
    protos: &[envoy_types::pb::envoy::config::route::v3::HeaderMatcher],
    path: &str,
    field: &str,
) -> Result<Arc<[HeaderMatch]>> {
    protos.iter().enumerate().map(|(i, m)| header_matcher(m, &format!("{path}.{field}[{i}]"))).collect()
}

/// `retry_back_off`: both intervals positive, at least 1 ms (Envoy rounds shorter ones up).
fn back_off_intervals(proto: &retry_policy::RetryBackOff, path: &str) -> Result<(Duration, Duration)> {
    proto::backoff_intervals(proto.base_interval.as_ref(), proto.max_interval.as_ref(), path, |d, field| {
        if d.is_zero() {
            return Err(ConfigError::invalid(field, "value must be greater than 0s"));
        }
        Ok(d.max(Duration::from_millis(1)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_tokens_are_trimmed_and_unknown_ones_skipped() {
        let on = RetryOn::parse("connect-failure, refused-stream,unavailable,,bogus ,5xx");
        for bit in [RetryOn::CONNECT_FAILURE, RetryOn::REFUSED_STREAM, RetryOn::GRPC_UNAVAILABLE, RetryOn::FIVE_XX] {
            assert!(on.any(bit));
        }
        assert!(!on.any(RetryOn::RESET | RetryOn::GATEWAY_ERROR | RetryOn::GRPC_CANCELLED));
        assert_eq!(RetryOn::parse("bogus"), RetryOn::default());
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = http::Request::builder().method(method).uri("/");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn retriable_request_headers_limit_retries_to_matching_requests() {
        let json = r#"{"retry_on": "5xx", "retriable_request_headers": [
            {"name": "x-retry-me", "string_match": {"exact": "yes"}}, {"name": ":method", "exact_match": "PUT"}]}"#;
        let proto: RetryPolicyProto = crate::config::schema::parse(json, crate::config::schema::Format::Json).unwrap();
        let policy = retry_policy(&proto, "retry_policy").unwrap();
        assert!(policy.retries(&request("GET", &[("x-retry-me", "yes")])));
        assert!(policy.retries(&request("PUT", &[])));
        assert!(!policy.retries(&request("GET", &[("x-retry-me", "no")])));
        let unlimited = retry_policy(&RetryPolicyProto::default(), "retry_policy").unwrap();
        assert!(unlimited.retries(&request("GET", &[])));
        let bad = r#"{"retriable_request_headers": [{"name": ""}]}"#;
        let proto: RetryPolicyProto = crate::config::schema::parse(bad, crate::config::schema::Format::Json).unwrap();
        let err = retry_policy(&proto, "retry_policy").unwrap_err();
        assert!(err.to_string().contains("retry_policy.retriable_request_headers[0].name"), "{err}");
    }

    #[test]
    fn retriable_headers_match_response_headers_and_status() {
        let json = r#"{"retry_on": "retriable-headers", "retriable_headers": [
            {"name": ":status", "string_match": {"exact": "418"}}, {"name": "x-retry", "present_match": true}]}"#;
        let proto: RetryPolicyProto = crate::config::schema::parse(json, crate::config::schema::Format::Json).unwrap();
        let policy = retry_policy(&proto, "retry_policy").unwrap();
        assert!(policy.on.any(RetryOn::RETRIABLE_HEADERS));
        let matches = |status: u16, headers: &[(&'static str, &'static str)]| {
            let headers: http::HeaderMap = headers
                .iter()
                .map(|(name, value)| (http::HeaderName::from_static(name), value.parse().unwrap()))
                .collect();
            let status = http::StatusCode::from_u16(status).unwrap();
            policy.retriable_headers.iter().any(|m| m.matches_response(status, &headers))
        };
        assert!(matches(418, &[]));
        assert!(matches(200, &[("x-retry", "1")]));
        assert!(!matches(503, &[("x-other", "1")]));
    }
}
