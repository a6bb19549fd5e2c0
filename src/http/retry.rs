//! The router's retries under a route's `retry_policy`: whether an attempt's outcome is
//! retried, the retry budget (`num_retries`, the cluster's `max_retries` circuit breaker),
//! the jittered backoff, and the host of the next attempt (`previous_hosts`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

use super::flags::ResponseFlags;
use crate::config::route::{RetryOn, RetryPolicy};
use crate::upstream::Cluster;
use crate::upstream::cluster::ClusterStats;
use crate::upstream::lb::WorkerLb;
use crate::upstream::pool::UpstreamError;

static X_ENVOY_RATELIMITED: http::HeaderName = http::HeaderName::from_static("x-envoy-ratelimited");

/// How an attempt ended, as far as retrying goes.
pub enum Outcome<'a> {
    /// Response headers arrived.
    Response(StatusCode, &'a HeaderMap),
    /// The upstream failed before response headers.
    Failed(&'a UpstreamError),
    /// The attempt's per-try timeout passed.
    PerTryTimeout,
}

/// What to do after an attempt.
pub enum Decision {
    /// Retry after this backoff.
    Retry(Duration),
    /// This outcome is the request's; the flags say why it was not retried (`URX`, `UO`).
    Final(ResponseFlags),
}

/// One request's retry state.
pub struct Retry<'p> {
    policy: &'p RetryPolicy,
    retries_left: u32,
    /// The upper bound of the next backoff (Envoy's jittered exponential backoff).
    backoff_ceiling: Duration,
    /// The first attempt's host, and the hosts attempted once a retry is picked (for
    /// `previous_hosts`; filled then, so that a request never retried allocates nothing).
    first_host: usize,
    tried: Vec<usize>,
    /// A retry was made.
    retried: bool,
    /// Some attempt reached an upstream connection (`reset-before-request` no longer applies).
    sent: bool,
    /// The `max_retries` place of the retry in progress, held until the next decision.
    slot: Option<RetrySlot>,
    /// `previous_priorities`: made at the first retry.
    priorities: Option<AvoidedPriorities>,
}

/// What the `previous_priorities` retry priority keeps, as Envoy's does: the priorities of
/// the hosts attempted, those excluded so far, and the loads by priority that leaves.
struct AvoidedPriorities {
    attempted: Vec<u32>,
    excluded: u64,
    loads: Option<Box<[u32]>>,
}

impl<'p> Retry<'p> {
    pub fn new(policy: &'p RetryPolicy, first_host: usize) -> Retry<'p> {
        Retry {
            policy,
            retries_left: policy.num_retries,
            backoff_ceiling: policy.base_interval,
            first_host,
            tried: Vec::new(),
            retried: false,
            sent: false,
            slot: None,
            priorities: None,
        }
    }

    /// Whether a retry was made: the failure reply then says "retried and the latest".
    pub fn retried(&self) -> bool {
        self.retried
    }

    /// Notes that an attempt was handed to an upstream connection.
    pub fn note_sent(&mut self) {
        self.sent = true;
    }

    /// Decides on an attempt's outcome, counting Envoy's retry stats. `body_kept`: the
    /// request body can be sent again (it stayed under the buffer limit).
    pub fn decide(&mut self, cluster: &Cluster, outcome: Outcome<'_>, body_kept: bool) -> Decision {
        self.slot = None;
        if !body_kept {
            // Envoy drops a request's retry state when its body outgrows the buffer.
            return Decision::Final(ResponseFlags::NONE);
        }
        let stats = &cluster.stats;
        if !self.retriable(&outcome) {
            if self.retried {
                stats.upstream_rq_retry_success.inc();
            }
            return Decision::Final(ResponseFlags::NONE);
        }
        if self.retries_left == 0 {
            stats.upstream_rq_retry_limit_exceeded.inc();
            return Decision::Final(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        }
        self.retries_left -= 1;
        let Some(slot) = RetrySlot::take(cluster) else {
            stats.upstream_rq_retry_overflow.inc();
            return Decision::Final(ResponseFlags::UPSTREAM_OVERFLOW);
        };
        self.slot = Some(slot);
        self.retried = true;
        Decision::Retry(self.next_backoff())
    }

    /// Whether the policy retries this outcome (Envoy's `wouldRetryFromHeaders` and
    /// `wouldRetryFromReset`).
    fn retriable(&self, outcome: &Outcome<'_>) -> bool {
        let on = self.policy.on;
        match *outcome {
            Outcome::Response(status, headers) => {
                // A rate-limited answer is retried only under `envoy-ratelimited`.
                if headers.contains_key(&X_ENVOY_RATELIMITED) {
                    return on.any(RetryOn::ENVOY_RATELIMITED);
                }
                let code = status.as_u16();
                (on.any(RetryOn::FIVE_XX) && status.is_server_error())
                    || (on.any(RetryOn::GATEWAY_ERROR) && (502..=504).contains(&code))
                    || (on.any(RetryOn::RETRIABLE_4XX) && code == 409)
                    || (on.any(RetryOn::RETRIABLE_STATUS_CODES) && self.policy.retriable_status_codes.contains(&code))
                    || (on.any(RetryOn::RETRIABLE_HEADERS)
                        && self.policy.retriable_headers.iter().any(|m| m.matches_response(status, headers)))
                    || grpc_retriable(on, headers)
            }
            Outcome::PerTryTimeout => on.any(RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET),
            Outcome::Failed(UpstreamError::Overflow) => false,
            Outcome::Failed(error) => {
                let any_reset = RetryOn::RESET | RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR;
                let specific = match error {
                    UpstreamError::ConnectFailure(_) | UpstreamError::ConnectTimeout => RetryOn::CONNECT_FAILURE,
                    UpstreamError::RemoteReset { refused: true } => RetryOn::REFUSED_STREAM,
                    _ => RetryOn::default(),
                };
                on.any(any_reset | specific) || (on.any(RetryOn::RESET_BEFORE_REQUEST) && !self.sent)
            }
        }
    }

    /// A random wait below the ceiling, which doubles up to `max_interval`.
    fn next_backoff(&mut self) -> Duration {
        let ceiling = self.backoff_ceiling.as_millis().max(1) as u64;
        let max = self.policy.max_interval;
        self.backoff_ceiling = if self.backoff_ceiling < max / 2 { self.backoff_ceiling * 2 } else { max };
        Duration::from_millis(fastrand::u64(0..ceiling))
    }

    /// The host of the next attempt: with `previous_hosts`, picks again (up to
    /// `host_selection_retry_max_attempts` times) while the pick was tried before, keeping
    /// the last pick if all were; with a request's `hash` (ring hash, Maglev) each pick again
    /// looks further, as Envoy's does.
    pub fn next_host(&mut self, cluster: &Cluster, lb: &mut WorkerLb, hash: Option<u64>) -> Option<usize> {
        // The loads stay in the state between picks; taken out for this one.
        let loads = self.priority_loads(cluster);
        let picked = self.pick_avoiding_hosts(cluster, lb, hash, loads.as_deref());
        if let Some(priorities) = &mut self.priorities {
            priorities.loads = loads;
            if let Some(picked) = picked {
                priorities.attempted.push(cluster.hosts[picked].priority);
            }
        }
        picked
    }

    /// The loads by priority for the next attempt under `previous_priorities` (`None`: the
    /// cluster's own), taken out of the state. Every `update_frequency` attempts, the
    /// priorities of the hosts attempted so far take no more load; when that leaves nothing
    /// healthy, the cluster's loads stand.
    fn priority_loads(&mut self, cluster: &Cluster) -> Option<Box<[u32]>> {
        let frequency = self.policy.avoid_previous_priorities?;
        let first = cluster.hosts.get(self.first_host).map_or(0, |h| h.priority);
        let avoided = self.priorities.get_or_insert_with(|| AvoidedPriorities {
            attempted: vec![first],
            excluded: 0,
            loads: None,
        });
        let attempts = avoided.attempted.len() as u32;
        if attempts < frequency {
            return None;
        }
        if attempts.is_multiple_of(frequency) {
            for &priority in &avoided.attempted {
                avoided.excluded |= 1u64.checked_shl(priority).unwrap_or(0);
            }
            match cluster.loads_without(avoided.excluded) {
                Some(loads) => avoided.loads = Some(loads),
                None => {
                    avoided.attempted.clear();
                    return None;
                }
            }
        }
        avoided.loads.take()
    }

    fn pick_avoiding_hosts(
        &mut self,
        cluster: &Cluster,
        lb: &mut WorkerLb,
        hash: Option<u64>,
        loads: Option<&[u32]>,
    ) -> Option<usize> {
        let mut picked = cluster.pick_with_loads(lb, hash, 0, loads)?;
        if self.policy.avoid_previous_hosts {
            if self.tried.is_empty() {
                self.tried.push(self.first_host);
            }
            for attempt in 1..=self.policy.host_selection_max_attempts {
                if !self.tried.contains(&picked) {
                    break;
                }
                picked = cluster.pick_with_loads(lb, hash, attempt, loads)?;
            }
            self.tried.push(picked);
        }
        Some(picked)
    }
}

/// A gRPC status in the response headers (a trailers-only response) that the policy
/// retries.
fn grpc_retriable(on: RetryOn, headers: &HeaderMap) -> bool {
    let grpc = RetryOn::GRPC_CANCELLED
        | RetryOn::GRPC_DEADLINE_EXCEEDED
        | RetryOn::GRPC_RESOURCE_EXHAUSTED
        | RetryOn::GRPC_INTERNAL
        | RetryOn::GRPC_UNAVAILABLE;
    if !on.any(grpc) {
        return false;
    }
    let condition = match headers.get(&super::headers::GRPC_STATUS).map(http::HeaderValue::as_bytes) {
        Some(b"1") => RetryOn::GRPC_CANCELLED,
        Some(b"4") => RetryOn::GRPC_DEADLINE_EXCEEDED,
        Some(b"8") => RetryOn::GRPC_RESOURCE_EXHAUSTED,
        Some(b"13") => RetryOn::GRPC_INTERNAL,
        Some(b"14") => RetryOn::GRPC_UNAVAILABLE,
        _ => return false,
    };
    on.any(condition)
}

/// A place under the cluster's `max_retries` circuit breaker, given back on drop.
struct RetrySlot(Arc<ClusterStats>);

impl RetrySlot {
    fn take(cluster: &Cluster) -> Option<RetrySlot> {
        let limit = cluster.circuit_breakers.default.retry_limit(cluster.stats.in_flight());
        let retries = &cluster.stats.retries;
        let mut current = retries.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                return None;
            }
            match retries.compare_exchange_weak(current, current + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(RetrySlot(cluster.stats.clone())),
                Err(now) => current = now,
            }
        }
    }
}

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retry_on: &str) -> RetryPolicy {
        RetryPolicy {
            on: RetryOn::parse(retry_on),
            num_retries: 1,
            per_try_timeout: None,
            retriable_status_codes: vec![418],
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
            avoid_previous_hosts: false,
            host_selection_max_attempts: 1,
            avoid_previous_priorities: None,
            retriable_request_headers: Arc::new([]),
            retriable_headers: Arc::new([]),
        }
    }

    fn response(status: u16, headers: &[(&'static str, &'static str)]) -> (StatusCode, HeaderMap) {
        let headers = headers.iter().map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap())).collect();
        (StatusCode::from_u16(status).unwrap(), headers)
    }

    fn retries_response(retry_on: &str, status: u16, headers: &[(&'static str, &'static str)]) -> bool {
        let policy = policy(retry_on);
        let (status, headers) = response(status, headers);
        Retry::new(&policy, 0).retriable(&Outcome::Response(status, &headers))
    }

    #[test]
    fn response_conditions() {
        assert!(retries_response("5xx", 500, &[]) && retries_response("5xx", 503, &[]));
        assert!(!retries_response("5xx", 409, &[]));
        assert!(retries_response("gateway-error", 504, &[]) && !retries_response("gateway-error", 500, &[]));
        assert!(retries_response("retriable-4xx", 409, &[]) && !retries_response("retriable-4xx", 404, &[]));
        assert!(retries_response("retriable-status-codes", 418, &[]));
        assert!(!retries_response("retriable-status-codes", 503, &[]));
        // A rate-limited answer is retried only under envoy-ratelimited, whatever its status.
        assert!(!retries_response("5xx", 503, &[("x-envoy-ratelimited", "true")]));
        assert!(retries_response("envoy-ratelimited", 429, &[("x-envoy-ratelimited", "true")]));
        // gRPC statuses come from a trailers-only response's headers.
        assert!(retries_response("unavailable", 200, &[("grpc-status", "14")]));
        assert!(!retries_response("unavailable", 200, &[("grpc-status", "13")]));
        assert!(retries_response("internal,cancelled", 200, &[("grpc-status", "1")]));
        assert!(!retries_response("5xx", 200, &[("grpc-status", "14")]));
    }

    #[test]
    fn failure_conditions() {
        let refused = UpstreamError::ConnectFailure(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let cases: [(&str, &UpstreamError, bool); 9] = [
            ("connect-failure", &refused, true),
            ("connect-failure", &UpstreamError::ConnectTimeout, true),
            ("connect-failure", &UpstreamError::RemoteReset { refused: false }, false),
            ("refused-stream", &UpstreamError::RemoteReset { refused: true }, true),
            ("refused-stream", &UpstreamError::RemoteReset { refused: false }, false),
            ("reset", &UpstreamError::ProtocolError, true),
            ("gateway-error", &refused, true),
            // An overflow is never retried.
            ("5xx,reset,connect-failure", &UpstreamError::Overflow, false),
            ("retriable-4xx", &refused, false),
        ];
        for (retry_on, error, expected) in cases {
            let policy = policy(retry_on);
            assert_eq!(Retry::new(&policy, 0).retriable(&Outcome::Failed(error)), expected, "{retry_on} {error:?}");
        }
        let policy = policy("5xx");
        assert!(Retry::new(&policy, 0).retriable(&Outcome::PerTryTimeout));
        let policy = self::policy("connect-failure");
        assert!(!Retry::new(&policy, 0).retriable(&Outcome::PerTryTimeout));
    }

    #[test]
    fn reset_before_request_holds_only_until_an_attempt_reaches_a_connection() {
        let policy = policy("reset-before-request");
        let mut retry = Retry::new(&policy, 0);
        let reset = UpstreamError::RemoteReset { refused: false };
        assert!(retry.retriable(&Outcome::Failed(&reset)));
        retry.note_sent();
        assert!(!retry.retriable(&Outcome::Failed(&reset)));
    }

    #[test]
    fn backoff_is_jittered_below_a_doubling_ceiling() {
        let policy = policy("5xx");
        let mut retry = Retry::new(&policy, 0);
        // Envoy's defaults: below 25 ms, then 50, 100, 200, and 250 from then on.
        for ceiling in [25, 50, 100, 200, 250, 250] {
            assert_eq!(retry.backoff_ceiling, Duration::from_millis(ceiling));
            assert!(retry.next_backoff() < Duration::from_millis(ceiling));
        }
        assert_eq!(retry.backoff_ceiling, Duration::from_millis(250));
    }
}
