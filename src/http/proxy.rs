//! The request path: route, pick a cluster and host, forward through the worker's pool,
//! and stream the response back; or answer locally with Envoy's status, body and flags.
//! Each stage reads immutable snapshots; per-request state lives in `Exchange`, which
//! finishes the stream's accounting when the response body ends.

use std::borrow::Cow;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use tokio::time::Instant;

use super::access_log::{LogContext, request_head};
use super::body::{DownstreamBody, EndReason, RequestBody, ResponseBody, RetainedBody, StreamEnd, StreamState};
use super::flags::ResponseFlags;
use super::headers;
use super::path::{self, Normalized, Refused};
use super::retry::{Decision, Outcome, Retry};
use super::route::{IdleTimeout, RouteAction, is_grpc};
use crate::clock;
use crate::config::cluster::UpstreamProtocol;
use crate::config::route::GrpcTimeout;
use crate::listener::HttpChain;
use crate::upstream::outlier::{Detector, Observed};
use crate::upstream::pool::{ClusterPools, Head, UpstreamBody, UpstreamError, UpstreamRequest, Wire};
use crate::upstream::{Cluster, Host};
use crate::worker::{LentTimer, Worker};

/// What a connection knows that every request on it needs.
pub struct ConnContext {
    pub listener: Arc<HttpChain>,
    pub worker: Rc<Worker>,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// Whether the connection is TLS (`x-forwarded-proto: https`).
    pub secure: bool,
    /// Whether the connection's codec was counted (`downstream_cx_http1/2_total`); known
    /// only at the first request when the codec is detected from the preface.
    pub codec_counted: Cell<bool>,
    /// Streams in progress on this connection, for the connection idle timeout.
    pub active_streams: Cell<u32>,
    /// When the connection last had no stream in progress.
    pub idle_since: Cell<Instant>,
}

/// Serves one downstream request. Never fails: every error becomes Envoy's local reply.
pub async fn serve(
    ctx: Rc<ConnContext>,
    request: Request<DownstreamBody>,
) -> Result<Response<ResponseBody>, std::convert::Infallible> {
    let (mut parts, body) = request.into_parts();
    let mut exchange = begin(&ctx, parts.version, parts.method == http::Method::HEAD, is_grpc(&parts.headers));
    let listener = &ctx.listener;
    let stats = &listener.http_stats;
    // A bodiless request is complete at its headers; a body sets this when it ends.
    exchange.stream.request_done.set(http_body::Body::is_end_stream(&body));
    let hcm = &listener.hcm;
    if parts.version < Version::HTTP_11 {
        // Envoy refuses HTTP/1.0 and 0.9 unless `http_protocol_options.accept_http_10`, with
        // the status text as body, and closes the connection.
        let mut response = exchange.local_reply(
            StatusCode::UPGRADE_REQUIRED,
            Bytes::from_static(b"Upgrade Required"),
            ResponseFlags::NONE,
            "low_version",
        );
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(response);
    }
    if parts.version != Version::HTTP_2 && !parts.headers.contains_key(header::HOST) {
        // HTTP/1.1 requires Host (RFC 9112 §3.2); Envoy answers 400.
        return Ok(exchange.local_reply(
            StatusCode::BAD_REQUEST,
            Bytes::new(),
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            "missing_host_header",
        ));
    }
    if hcm.path_normalization.is_active() {
        match path::normalize_uri(&hcm.path_normalization, &mut parts.uri) {
            Ok(Normalized::Forward) => {}
            Ok(Normalized::Redirect(location)) if !exchange.grpc => {
                stats.downstream_rq_redirected_with_normalized_path.inc();
                let mut response = exchange.local_reply(
                    StatusCode::TEMPORARY_REDIRECT,
                    Bytes::new(),
                    ResponseFlags::NONE,
                    "path_normalization_failed",
                );
                if let Ok(location) = HeaderValue::try_from(location) {
                    response.headers_mut().insert(header::LOCATION, location);
                }
                return Ok(response);
            }
            // Envoy does not redirect gRPC; it refuses the request.
            Ok(Normalized::Redirect(_)) | Err(Refused) => {
                stats.downstream_rq_failed_path_normalization.inc();
                return Ok(exchange.local_reply(
                    StatusCode::BAD_REQUEST,
                    Bytes::new(),
                    ResponseFlags::NONE,
                    "path_normalization_failed",
                ));
            }
        }
    }
    headers::strip_host_port(&mut parts, hcm.strip_host_port);
    exchange.client = headers::set_forwarded(
        &mut parts.headers,
        ctx.remote,
        hcm.use_remote_address,
        hcm.xff_num_trusted_hops,
        ctx.secure,
    );
    if hcm.generate_request_id {
        // Edge requests (use_remote_address; every request is external) get a fresh id.
        headers::ensure_request_id(&mut parts.headers, hcm.use_remote_address);
    }
    if !listener.access_logs.is_empty() {
        exchange.logged_request = Some(request_head(&parts.method, &parts.uri, parts.version, &parts.headers));
    }
    // A listener goes live only once its routes are in, so `current` is there.
    let routes = listener.routes.current();
    let Some(selected) = routes.as_deref().and_then(|routes| routes.select(&parts)) else {
        stats.no_route.inc();
        return Ok(exchange.local_reply(
            StatusCode::NOT_FOUND,
            Bytes::new(),
            ResponseFlags::NO_ROUTE_FOUND,
            "route_not_found",
        ));
    };
    if !listener.access_logs.is_empty() && !selected.route.name().is_empty() {
        exchange.route_name = Some(selected.route.name().to_owned());
    }
    let forward = match selected.route.action() {
        RouteAction::DirectResponse { status, body } => {
            stats.rq_direct_response.inc();
            let body = body.clone().unwrap_or_default();
            let mut response = exchange.local_reply(*status, body, ResponseFlags::default(), "direct_response");
            selected.apply_response_headers(response.headers_mut());
            return Ok(response);
        }
        RouteAction::Redirect(redirect) => {
            stats.rq_redirect.inc();
            let scheme = parts.headers.get(&headers::X_FORWARDED_PROTO).and_then(|v| v.to_str().ok()).unwrap_or("http");
            let (status, location) = redirect.location(&parts, scheme);
            let mut response = exchange.local_reply(status, Bytes::new(), ResponseFlags::default(), "direct_response");
            response.headers_mut().insert(header::LOCATION, location);
            selected.apply_response_headers(response.headers_mut());
            return Ok(response);
        }
        RouteAction::Forward(forward) => forward,
    };
    stats.rq_total.inc();
    let snapshot = listener.clusters.snapshot();
    ctx.worker.pools.prune(&snapshot);
    let cluster = forward.cluster(&parts.headers).and_then(|name| snapshot.get(name).cloned());
    // The snapshot guard is not held across the awaits below.
    drop(snapshot);
    let Some(cluster) = cluster else {
        stats.no_cluster.inc();
        return Ok(exchange.local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::new(),
            ResponseFlags::NO_CLUSTER_FOUND,
            "cluster_not_found",
        ));
    };
    let pools = ctx.worker.pools.cluster(&cluster);
    let hash = forward.request_hash(&parts, ctx.remote);
    let picked = cluster.pick(&mut pools.lb.borrow_mut(), hash, 0);
    exchange.cluster = Some(cluster.clone());
    let Some(host_index) = picked else {
        cluster.stats.upstream_cx_none_healthy.inc();
        // Envoy's router charges its own 503 to the cluster's response codes.
        cluster.stats.record_response(503);
        cluster.stats.upstream_rq_completed.inc();
        return Ok(exchange.local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(b"no healthy upstream"),
            ResponseFlags::NO_HEALTHY_UPSTREAM,
            "no_healthy_upstream",
        ));
    };
    forward.rewrite_request_with(&mut parts, !hcm.suppress_envoy_headers);
    selected.apply_request_headers(&mut parts.headers);
    // A gRPC request's own deadline replaces the route timeout where the route says so.
    let grpc_timeout = forward.grpc_timeout();
    let (timeout, stream_limit) = match grpc_timeout {
        None => (forward.timeout(), None),
        Some(GrpcTimeout::Router { max, offset }) if exchange.grpc => {
            (router_grpc_timeout(max, offset, &parts.headers), None)
        }
        Some(GrpcTimeout::Router { .. }) => (forward.timeout(), None),
        Some(GrpcTimeout::StreamDuration { max, offset }) => {
            let limit = max.filter(|_| exchange.grpc).and_then(|max| stream_grpc_timeout(max, offset, &parts.headers));
            if let Some(limit) = limit {
                // The upstream learns the deadline the stream now has.
                parts.headers.insert(headers::GRPC_TIMEOUT.clone(), headers::grpc_timeout_value(limit));
            }
            (None, limit.map(|limit| exchange.start + limit))
        }
    };
    headers::remove_hop_by_hop(&mut parts.headers);
    let wire = match cluster.protocol {
        UpstreamProtocol::Http1 => Wire::Http1,
        UpstreamProtocol::Http2 => Wire::Http2,
        UpstreamProtocol::Downstream if parts.version == Version::HTTP_2 => Wire::Http2,
        UpstreamProtocol::Downstream => Wire::Http1,
    };
    let request_deadline = hcm.request_timeout.map(|t| exchange.start + t);
    // A route's idle_timeout overrides the connection manager's stream_idle_timeout.
    let idle_timeout = match forward.idle_timeout() {
        IdleTimeout::Inherit => hcm.stream_idle_timeout,
        IdleTimeout::Disabled => None,
        IdleTimeout::After(t) => Some(t),
    };
    let virtual_host = selected.virtual_host;

    // A request that may be retried keeps what each attempt sends again: its head, lent to
    // each attempt and edited in place between them (as Envoy edits the downstream
    // headers), and its body as far as the buffer limit. Boxed: most requests have no retry
    // policy, and this stays out of their future. Without one, the head is given up to the
    // one attempt.
    let policy = forward.retry_policy();
    let (mut body, mut resend, mut given) = match policy.filter(|policy| policy.retries(&parts)) {
        None => (RequestBody::new(body, exchange.stream.clone(), request_deadline), None, Some(parts)),
        Some(policy) => {
            let body = RequestBody::retained(
                body,
                exchange.stream.clone(),
                request_deadline,
                listener.spec.buffer_limit,
                cluster.stats.clone(),
            );
            let first = body.attempt().expect("a body no attempt has read is kept");
            let resend = Resend { retry: Retry::new(policy, host_index), head: parts, body };
            (first, Some(Box::new(resend)), None)
        }
    };
    // A per-try timeout no shorter than the whole request's is Envoy's to drop.
    let per_try = policy.and_then(|p| p.per_try_timeout).filter(|p| timeout.is_none_or(|t| *p < t));
    let mut attempt: u64 = 1;
    // The retry under way follows a per-try timeout.
    let mut timeout_retry = false;
    let mut host_index = host_index;
    let (result, host, upstream_start) = loop {
        let parts = match (resend.as_deref_mut(), given.as_mut()) {
            (Some(resend), _) => &mut resend.head,
            (None, Some(parts)) => parts,
            (None, None) => unreachable!("a request without a retry policy makes one attempt"),
        };
        let host = cluster.hosts[host_index].clone();
        exchange.host = Some(host.clone());
        // Envoy's auto_host_rewrite uses the host's hostname, which a STATIC endpoint has
        // only when its `hostname` is set.
        if forward.auto_host_rewrite()
            && !host.hostname.is_empty()
            && let Ok(value) = HeaderValue::from_str(&host.hostname)
        {
            forward.set_host(parts, value, !hcm.suppress_envoy_headers);
        }
        let expected = expected_timeout(timeout, per_try, attempt, &exchange.stream);
        if !hcm.suppress_envoy_headers
            && let Some(expected) = expected
        {
            parts.headers.insert(headers::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(), headers::decimal_value(expected));
        }
        if exchange.grpc
            && matches!(grpc_timeout, Some(GrpcTimeout::Router { .. }))
            && let Some(expected) = expected
        {
            let value = headers::grpc_timeout_value(std::time::Duration::from_millis(expected));
            parts.headers.insert(headers::GRPC_TIMEOUT.clone(), value);
        }
        if virtual_host.attempt_count_to_upstream() {
            parts.headers.insert(headers::X_ENVOY_ATTEMPT_COUNT.clone(), headers::decimal_value(attempt));
        }
        if attempt > 1 && virtual_host.is_timeout_retry_header() {
            let value = HeaderValue::from_static(if timeout_retry { "true" } else { "false" });
            parts.headers.insert(headers::X_ENVOY_IS_TIMEOUT_RETRY.clone(), value);
        }
        if attempt == 1 && !listener.access_logs.is_empty() {
            // Envoy's access log reads the request headers the router mutated in place: the
            // rewritten host and path, the added headers.
            exchange.logged_request = Some(request_head(&parts.method, &parts.uri, parts.version, &parts.headers));
        }
        let upstream_start = clock::now();
        let deadlines = Deadlines {
            route: timeout,
            request: request_deadline,
            idle: idle_timeout,
            per_try: per_try.map(|t| (upstream_start, t)),
            stream: stream_limit,
        };
        shape_for_wire(parts, &body, wire);
        let head = match (resend.as_deref(), given.take()) {
            (Some(resend), _) => Head::Lent(&resend.head),
            (None, Some(parts)) => Head::Owned(parts),
            (None, None) => unreachable!("a request without a retry policy makes one attempt"),
        };
        let request = UpstreamRequest { head, body };
        let result = send(&ctx, &cluster, &pools, host_index, &host, request, wire, &exchange.stream, deadlines).await;
        if let Some(detector) = &cluster.outlier {
            observe_outlier(detector, &host, &result, exchange.stream.upstream_attached.get(), exchange.grpc);
        }
        let Some(Resend { retry, body: retained, .. }) = resend.as_deref_mut() else {
            break (result, host, upstream_start);
        };
        if matches!(result, Err(Failure::PerTryTimeout)) {
            cluster.stats.upstream_rq_per_try_timeout.inc();
            host.stats.rq_timeout.fetch_add(1, Ordering::Relaxed);
        }
        if exchange.stream.upstream_attached.get() {
            retry.note_sent();
        }
        let outcome = match &result {
            Ok(response) => Outcome::Response(response.status(), response.headers()),
            Err(Failure::Upstream(e)) => Outcome::Failed(e),
            Err(Failure::PerTryTimeout) => Outcome::PerTryTimeout,
            // The connection manager's timeouts and the route timeout end the request.
            Err(_) => break (result, host, upstream_start),
        };
        let backoff = match retry.decide(&cluster, outcome, !retained.overflowed()) {
            Decision::Retry(backoff) => backoff,
            Decision::Final(flags) => {
                exchange.flags.insert(flags);
                break (result, host, upstream_start);
            }
        };
        let Some(next_host) = retry.next_host(&cluster, &mut pools.lb.borrow_mut(), hash) else {
            break (result, host, upstream_start);
        };
        let next_body = retained.attempt().expect("checked: the body stayed under the limit");
        // This attempt is over: Envoy charges a replaced response under `retry.`, and a 5xx
        // or a failure as the host's error.
        let failed = match &result {
            Ok(response) => {
                cluster.stats.record_retried_response(response.status().as_u16());
                response.status().is_server_error()
            }
            Err(_) => true,
        };
        if failed {
            host.stats.rq_error.fetch_add(1, Ordering::Relaxed);
        }
        if exchange.stream.upstream_attached.replace(false) {
            cluster.stats.upstream_rq_active.dec();
            host.stats.rq_active.fetch_sub(1, Ordering::Relaxed);
        }
        let after_per_try_timeout = matches!(result, Err(Failure::PerTryTimeout));
        drop(result);
        if !backoff.is_zero() && back_off(backoff, &exchange.stream, timeout).await.is_err() {
            break (Err(Failure::RouteTimeout), host, upstream_start);
        }
        cluster.stats.upstream_rq_retry.inc();
        cluster.stats.upstream_rq_retry_backoff_exponential.inc();
        attempt += 1;
        timeout_retry = after_per_try_timeout;
        host_index = next_host;
        body = next_body;
    };
    let retried = resend.as_ref().is_some_and(|resend| resend.retry.retried());
    if let Some(resend) = resend {
        // The retry's circuit-breaker place goes back with it, and the kept head's map to
        // the worker for the next head it parses (an attempt only borrowed it).
        headers::recycle_map(resend.head.headers);
    }
    let attempt_count = virtual_host.attempt_count_in_response().then(|| headers::decimal_value(attempt));
    match result {
        Ok(response) => {
            let (mut head, body) = response.into_parts();
            headers::remove_hop_by_hop(&mut head.headers);
            let upstream_ms = (clock::now() - upstream_start).as_millis() as u64;
            if !hcm.suppress_envoy_headers {
                head.headers
                    .insert(headers::X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), headers::decimal_value(upstream_ms));
            }
            if let Some(count) = attempt_count {
                head.headers.insert(headers::X_ENVOY_ATTEMPT_COUNT.clone(), count);
            }
            set_server(&mut head.headers, &hcm.server_name);
            selected.apply_response_headers(&mut head.headers);
            head.version = downstream_version(exchange.version);
            cluster.stats.upstream_rq_time.record(upstream_ms);
            cluster.stats.record_response(head.status.as_u16());
            exchange.status = head.status.as_u16();
            exchange.details = Cow::Borrowed("via_upstream");
            exchange.charged = true;
            if !listener.access_logs.is_empty() {
                exchange.logged_response = Some(head.headers.clone());
            }
            stats.downstream_rq_class[class_index(head.status)].inc();
            let route_timeout = timeout.map(|t| (t, exchange.stream.clone()));
            let mut body = ResponseBody::upstream(body, idle_timeout, route_timeout, &ctx.worker.timers);
            body.on_end(exchange);
            Ok(Response::from_parts(head, body))
        }
        Err(failure) => {
            let (status, body, flags, details) = failure_reply(&failure, &cluster, &host, stats);
            // The router charges its timeout and reset replies to the cluster; the connection
            // manager's own timeouts are not the upstream's.
            if matches!(failure, Failure::RouteTimeout | Failure::PerTryTimeout | Failure::Upstream(_)) {
                cluster.stats.record_response(status.as_u16());
                exchange.charged = true;
            }
            let body = match body.strip_prefix(RESET_PREFIX) {
                // Envoy says so when the reset it reports ended a retry.
                Some(reason) if retried => Bytes::from(format!("{RESET_PREFIX}retried and the latest {reason}")),
                _ => Bytes::from_static(body.as_bytes()),
            };
            if matches!(failure, Failure::StreamDuration) {
                exchange.grpc_status = Some(GRPC_DEADLINE_EXCEEDED);
            }
            let mut response = exchange.local_reply(status, body, flags, details);
            if let Some(count) = attempt_count {
                response.headers_mut().insert(headers::X_ENVOY_ATTEMPT_COUNT.clone(), count);
            }
            Ok(response)
        }
    }
}

/// Tells the cluster's outlier detector how an attempt went, as Envoy's router does: a
/// connection taking the request, then the response head's status (a trailers-only gRPC
/// answer's `grpc-status` as HTTP), a reset or a timeout while awaiting it. A circuit
/// breaker's overflow says nothing of the host, and the connection manager's own timeouts
/// are not the upstream's.
fn observe_outlier(
    detector: &Arc<Detector>,
    host: &Arc<Host>,
    result: &Result<Response<UpstreamBody>, Failure>,
    attached: bool,
    grpc: bool,
) {
    // Only a detector that counts local-origin results apart has use for the connect.
    if attached && detector.spec.split_local_origin {
        detector.observe(host, Observed::Connected);
    }
    let observed = match result {
        Ok(response) => {
            let grpc_status = grpc.then(|| response.headers().get(&headers::GRPC_STATUS)).flatten();
            Observed::Answered(match grpc_status {
                Some(value) => std::str::from_utf8(value.as_bytes())
                    .ok()
                    .and_then(|text| text.parse().ok())
                    .map_or(500, grpc_to_http),
                None => response.status().as_u16(),
            })
        }
        Err(Failure::Upstream(UpstreamError::Overflow)) => return,
        Err(Failure::Upstream(_)) => Observed::ConnectFailed,
        Err(Failure::PerTryTimeout | Failure::RouteTimeout) => Observed::TimedOut,
        Err(_) => return,
    };
    detector.observe(host, observed);
}

/// What a request with a retry policy keeps for its next attempt.
struct Resend<'p> {
    retry: Retry<'p>,
    /// The head every attempt is lent, as the last one left it.
    head: Parts,
    body: RetainedBody,
}

/// The part of a reset's local reply before its reason.
const RESET_PREFIX: &str = "upstream connect error or disconnect/reset before headers. ";

/// One attempt: sends the request through the host's pool and waits for response headers
/// under the deadlines. Counts the request against the cluster and host once a connection
/// takes it (a failed connect counts neither).
#[allow(clippy::too_many_arguments)]
async fn send(
    ctx: &ConnContext,
    cluster: &Arc<Cluster>,
    pools: &ClusterPools,
    host_index: usize,
    host: &Arc<Host>,
    request: UpstreamRequest<'_>,
    wire: Wire,
    stream: &StreamState,
    deadlines: Deadlines,
) -> Result<Response<UpstreamBody>, Failure> {
    let pool = pools.host(cluster, host_index);
    let attached = || {
        if !stream.upstream_attached.replace(true) {
            cluster.stats.upstream_rq_total.inc();
            cluster.stats.upstream_rq_active.inc();
            host.stats.rq_total.fetch_add(1, Ordering::Relaxed);
            host.stats.rq_active.fetch_add(1, Ordering::Relaxed);
        }
    };
    let sent = pool.send(cluster, request, wire, &attached);
    // Boxed for the same reason: the send future is ≈ 1.3 KB.
    let sent = Box::pin(sent);
    await_response(sent, stream, deadlines, ctx.worker.timers.lend()).await
}

/// Waits out a retry's backoff; `Err` when the route timeout passes first.
async fn back_off(
    backoff: std::time::Duration,
    stream: &StreamState,
    route_timeout: Option<std::time::Duration>,
) -> Result<(), ()> {
    let until = clock::now() + backoff;
    let route_deadline = route_timeout.filter(|_| stream.request_done.get()).map(|t| stream.last_activity.get() + t);
    match route_deadline {
        Some(deadline) if deadline <= until => {
            tokio::time::sleep_until(deadline).await;
            Err(())
        }
        _ => {
            tokio::time::sleep_until(until).await;
            Ok(())
        }
    }
}

/// `x-envoy-expected-rq-timeout-ms` for an attempt, in ms: the per-try timeout if set, else
/// the route timeout; on a retry no more than what is left of the route timeout (at least
/// 1 ms). `None` with neither timeout.
fn expected_timeout(
    route: Option<std::time::Duration>,
    per_try: Option<std::time::Duration>,
    attempt: u64,
    stream: &StreamState,
) -> Option<u64> {
    let expected = per_try.or(route)?.as_millis() as u64;
    let Some(route) = route.filter(|_| attempt > 1) else {
        return Some(expected);
    };
    let elapsed = (clock::now() - stream.last_activity.get()).as_millis() as u64;
    Some(expected.min((route.as_millis() as u64).saturating_sub(elapsed).max(1)))
}

/// A gRPC request's router timeout under the deprecated `max_grpc_timeout`: its
/// `grpc-timeout` less the offset (when shorter), capped by the maximum unless that is zero;
/// without the header, the maximum. `None` (zero) is no timeout.
fn router_grpc_timeout(
    max: std::time::Duration,
    offset: Option<std::time::Duration>,
    headers: &HeaderMap,
) -> Option<std::time::Duration> {
    let mut timeout = headers.get(&headers::GRPC_TIMEOUT).and_then(headers::parse_grpc_timeout).unwrap_or_default();
    if let Some(offset) = offset.filter(|offset| *offset < timeout) {
        timeout -= offset;
    }
    if !max.is_zero() && (timeout.is_zero() || timeout > max) {
        timeout = max;
    }
    Some(timeout).filter(|t| !t.is_zero())
}

/// A gRPC request's stream limit under `max_stream_duration.grpc_timeout_header_max`: its
/// `grpc-timeout` capped by the maximum (zero: no cap), then less the offset (Envoy's
/// connection manager caps first, unlike the router above). `None`: no header, no limit.
fn stream_grpc_timeout(
    max: std::time::Duration,
    offset: Option<std::time::Duration>,
    headers: &HeaderMap,
) -> Option<std::time::Duration> {
    let mut timeout = headers.get(&headers::GRPC_TIMEOUT).and_then(headers::parse_grpc_timeout)?;
    if !max.is_zero() && timeout > max {
        timeout = max;
    }
    if let Some(offset) = offset.filter(|_| !timeout.is_zero()) {
        timeout = timeout.saturating_sub(offset);
    }
    Some(timeout).filter(|t| !t.is_zero())
}

/// gRPC's DEADLINE_EXCEEDED, for a stream past its `grpc-timeout`.
const GRPC_DEADLINE_EXCEEDED: &str = "4";
static GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");

/// The HTTP status Envoy's outlier detection takes for a `grpc-status`
/// (`Grpc::Utility::grpcToHttpStatus`).
fn grpc_to_http(status: u32) -> u16 {
    match status {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// The gRPC status Envoy gives a local reply's HTTP status (gRPC's HTTP-to-gRPC mapping).
fn grpc_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "13",                   // INTERNAL
        401 => "16",                   // UNAUTHENTICATED
        403 => "7",                    // PERMISSION_DENIED
        404 => "12",                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => "14", // UNAVAILABLE
        _ => "2",                      // UNKNOWN
    }
}

/// A local reply's body as a `grpc-message`: percent-encoded as gRPC wants (bytes outside
/// printable ASCII, and `%`; a trailing newline too, as Envoy 1.40 keeps it).
fn grpc_message(body: &[u8]) -> HeaderValue {
    let mut encoded = Vec::with_capacity(body.len());
    for &byte in body {
        if (b' '..=b'~').contains(&byte) && byte != b'%' {
            encoded.push(byte);
        } else {
            path::push_escaped(&mut encoded, byte);
        }
    }
    HeaderValue::from_bytes(&encoded).expect("printable ASCII")
}

/// Counts a new stream and opens its exchange.
fn begin(ctx: &Rc<ConnContext>, version: Version, head: bool, grpc: bool) -> Box<Exchange> {
    let stats = &ctx.listener.http_stats;
    stats.downstream_rq_total.inc();
    stats.downstream_rq_active.inc();
    let is_http2 = version == Version::HTTP_2;
    if is_http2 {
        stats.downstream_rq_http2_total.inc();
    } else {
        stats.downstream_rq_http1_total.inc();
    }
    if !ctx.codec_counted.replace(true) {
        if is_http2 { stats.downstream_cx_http2_total.inc() } else { stats.downstream_cx_http1_total.inc() }
    }
    ctx.active_streams.set(ctx.active_streams.get() + 1);
    let start = clock::now();
    // Boxed from the start (the response body's end hook owns it in the end anyway): it is
    // large, and inline it would make the request's future larger, which is moved whole
    // when its stream starts (into the HTTP/1.1 connection's stage, the HTTP/2 server's set).
    Box::new(Exchange {
        ctx: ctx.clone(),
        start,
        version,
        head,
        grpc,
        grpc_status: None,
        status: 0,
        flags: ResponseFlags::default(),
        charged: false,
        details: Cow::Borrowed(""),
        route_name: None,
        cluster: None,
        host: None,
        stream: Rc::new(StreamState::new(start)),
        done: false,
        client: ctx.remote,
        logged_request: None,
        logged_response: None,
    })
}

/// A request the HTTP/1.1 codec refused (malformed, too large, an unsupported transfer
/// coding): as in Envoy, a local reply with the status text as body, counted as a request,
/// and the connection closes after it.
pub fn codec_error(ctx: &Rc<ConnContext>, status: StatusCode, details: &'static str) -> Response<ResponseBody> {
    ctx.listener.http_stats.downstream_cx_protocol_error.inc();
    let body = Bytes::from_static(status.canonical_reason().unwrap_or_default().as_bytes());
    unfinished_head_reply(ctx, status, body, ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR, details)
}

/// A request head still incomplete when the stream idle timeout passed: Envoy opens the
/// stream at the head's first byte, so its idle timeout answers `408 stream timeout`.
pub fn head_timeout(ctx: &Rc<ConnContext>) -> Response<ResponseBody> {
    ctx.listener.http_stats.downstream_rq_idle_timeout.inc();
    let body = Bytes::from_static(b"stream timeout");
    unfinished_head_reply(
        ctx,
        StatusCode::REQUEST_TIMEOUT,
        body,
        ResponseFlags::STREAM_IDLE_TIMEOUT,
        "stream_idle_timeout",
    )
}

/// The local reply to a request whose head never became a request; the connection closes.
fn unfinished_head_reply(
    ctx: &Rc<ConnContext>,
    status: StatusCode,
    body: Bytes,
    flags: ResponseFlags,
    details: &'static str,
) -> Response<ResponseBody> {
    let exchange = begin(ctx, Version::HTTP_11, false, false);
    exchange.stream.request_done.set(true);
    let mut response = exchange.local_reply(status, body, flags, details);
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Why a forwarded request got no upstream response.
enum Failure {
    Upstream(UpstreamError),
    /// The route timeout passed before response headers.
    RouteTimeout,
    /// Nothing moved on the stream for the stream idle timeout; whether the whole request
    /// had arrived by then.
    StreamIdle {
        request_complete: bool,
    },
    /// `request_timeout` passed before the whole request arrived.
    RequestTimeout,
    /// The retry policy's `per_try_timeout` passed before this attempt's response headers.
    PerTryTimeout,
    /// The stream's limit from its `grpc-timeout` (`max_stream_duration`) passed.
    StreamDuration,
}

/// The deadlines a stream waits for its response headers under.
struct Deadlines {
    /// The route timeout. Envoy's runs from the end of the downstream request (an upload
    /// slower than it is not cut), which is the request body's last activity once it is done.
    route: Option<std::time::Duration>,
    /// `request_timeout`: the whole request must have arrived by then.
    request: Option<Instant>,
    /// The stream idle timeout (request body activity counts).
    idle: Option<std::time::Duration>,
    /// The attempt's start and its per-try timeout, which runs from the later of that
    /// start and the end of the request.
    per_try: Option<(Instant, std::time::Duration)>,
    /// When the stream's life must end (`max_stream_duration`).
    stream: Option<Instant>,
}

/// Waits for the upstream's response headers under the route timeout, the stream idle
/// timeout and `request_timeout`, on one timer lent by the worker (which may fire early;
/// each wake-up re-checks the deadlines against the clock).
async fn await_response<F, T>(
    sent: F,
    stream: &StreamState,
    deadlines: Deadlines,
    mut timer: LentTimer,
) -> Result<T, Failure>
where
    F: Future<Output = Result<T, UpstreamError>>,
{
    let Deadlines {
        route: route_timeout,
        request: request_deadline,
        idle: idle_timeout,
        per_try,
        stream: stream_limit,
    } = deadlines;
    tokio::pin!(sent);
    loop {
        let idle_deadline = idle_timeout.map(|t| stream.last_activity.get() + t);
        let request_deadline = request_deadline.filter(|_| !stream.request_done.get());
        // Both run from the end of the request. While the body is still arriving, these are
        // only times to look again (a full timeout from now: no deadline can pass earlier).
        let request_end = if stream.request_done.get() {
            stream.last_activity.get()
        } else {
            clock::now().max(stream.last_activity.get())
        };
        let route_deadline = route_timeout.map(|t| request_end + t);
        let per_try_deadline = per_try.map(|(start, t)| start.max(request_end) + t);
        let wake = [route_deadline, idle_deadline, request_deadline, per_try_deadline, stream_limit]
            .into_iter()
            .flatten()
            .min();
        let Some(wake) = wake else {
            return sent.await.map_err(Failure::Upstream);
        };
        tokio::select! {
            biased;
            result = &mut sent => {
                return result.map_err(|e| {
                    if stream.request_timed_out.get() { Failure::RequestTimeout } else { Failure::Upstream(e) }
                });
            }
            _ = timer.until(wake) => {
                let now = clock::now();
                if stream_limit.is_some_and(|limit| limit <= now) {
                    return Err(Failure::StreamDuration);
                }
                if stream.request_done.get() && route_timeout.is_some_and(|t| stream.last_activity.get() + t <= now) {
                    return Err(Failure::RouteTimeout);
                }
                if stream.request_done.get() && per_try_deadline.is_some_and(|d| d <= now) {
                    return Err(Failure::PerTryTimeout);
                }
                if request_deadline.is_some_and(|d| d <= now) && !stream.request_done.get() {
                    return Err(Failure::RequestTimeout);
                }
                // Request body activity may have moved the idle deadline; re-check it.
                if idle_timeout.is_some_and(|t| stream.last_activity.get() + t <= now) {
                    return Err(Failure::StreamIdle { request_complete: stream.request_done.get() });
                }
            }
        }
    }
}

/// Envoy's status, body, flag and details for a request that got no upstream response.
fn failure_reply(
    failure: &Failure,
    cluster: &Cluster,
    host: &Host,
    stats: &crate::listener::HcmStats,
) -> (StatusCode, &'static str, ResponseFlags, Cow<'static, str>) {
    let upstream = match failure {
        Failure::StreamDuration => {
            stats.downstream_rq_max_duration_reached.inc();
            return (
                StatusCode::REQUEST_TIMEOUT,
                "downstream duration timeout",
                ResponseFlags::DURATION_TIMEOUT,
                Cow::Borrowed("max_duration_timeout"),
            );
        }
        // Counted when it passed, retried or not.
        Failure::PerTryTimeout => {
            return (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout",
                ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
                Cow::Borrowed("upstream_per_try_timeout"),
            );
        }
        Failure::RouteTimeout => {
            cluster.stats.upstream_rq_timeout.inc();
            host.stats.rq_timeout.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout",
                ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
                Cow::Borrowed("response_timeout"),
            );
        }
        Failure::StreamIdle { request_complete } => {
            stats.downstream_rq_idle_timeout.inc();
            // Envoy: 504 once the whole request arrived (the wait is on the upstream), else 408.
            let status = if *request_complete { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::REQUEST_TIMEOUT };
            return (
                status,
                "stream timeout",
                ResponseFlags::STREAM_IDLE_TIMEOUT,
                Cow::Borrowed("stream_idle_timeout"),
            );
        }
        Failure::RequestTimeout => {
            stats.downstream_rq_timeout.inc();
            return (
                StatusCode::REQUEST_TIMEOUT,
                "request timeout",
                ResponseFlags::NONE,
                Cow::Borrowed("request_overall_timeout"),
            );
        }
        Failure::Upstream(e) => e,
    };
    /// Envoy's reply to an upstream reset before the response head: the reason in words in
    /// the body, and as a token in the details.
    macro_rules! reset {
        ($status:ident, $flag:ident, $reason:literal, $token:literal) => {
            (
                StatusCode::$status,
                concat!("upstream connect error or disconnect/reset before headers. reset reason: ", $reason),
                ResponseFlags::$flag,
                Cow::Borrowed(concat!("upstream_reset_before_response_started{", $token, "}")),
            )
        };
    }
    match upstream {
        // Envoy 1.40 keeps the transport failure reason out of the body and puts it in the
        // details: `{remote_connection_failure|delayed_connect_error:_Connection_refused}`.
        UpstreamError::ConnectFailure(e) => {
            let (status, body, flags, _) = reset!(
                SERVICE_UNAVAILABLE,
                UPSTREAM_CONNECTION_FAILURE,
                "remote connection failure",
                "remote_connection_failure"
            );
            let details = match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                // Envoy's frame around the TLS library's reason; the reason is rustls's words,
                // not BoringSSL's error codes.
                Some(tls) => Cow::Owned(format!(
                    "upstream_reset_before_response_started{{remote_connection_failure|TLS_error:|{}:TLS_error_end}}",
                    tls.to_string().replace(' ', "_")
                )),
                None => Cow::Owned(format!(
                    "upstream_reset_before_response_started{{remote_connection_failure|delayed_connect_error:_{}}}",
                    os_error_text(e).replace(' ', "_")
                )),
            };
            (status, body, flags, details)
        }
        UpstreamError::ConnectTimeout => {
            reset!(SERVICE_UNAVAILABLE, UPSTREAM_CONNECTION_FAILURE, "connection timeout", "connection_timeout")
        }
        UpstreamError::ResetBeforeHeaders(_) => reset!(
            SERVICE_UNAVAILABLE,
            UPSTREAM_CONNECTION_TERMINATION,
            "connection termination",
            "connection_termination"
        ),
        UpstreamError::ProtocolError => {
            reset!(BAD_GATEWAY, UPSTREAM_PROTOCOL_ERROR, "protocol error", "protocol_error")
        }
        UpstreamError::RemoteReset { refused: false } => {
            reset!(SERVICE_UNAVAILABLE, UPSTREAM_REMOTE_RESET, "remote reset", "remote_reset")
        }
        UpstreamError::RemoteReset { refused: true } => reset!(
            SERVICE_UNAVAILABLE,
            UPSTREAM_REMOTE_RESET,
            "remote refused stream reset",
            "remote_refused_stream_reset"
        ),
        UpstreamError::Overflow => reset!(SERVICE_UNAVAILABLE, UPSTREAM_OVERFLOW, "overflow", "overflow"),
    }
}

/// An OS error as `strerror` words it (`Connection refused`), without Rust's
/// ` (os error N)` suffix.
fn os_error_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// Shapes the request head for the upstream's wire: HTTP/1.1 wants origin-form with
/// `Host`; the HTTP/2 client takes `:authority` from `host`, else from the URI. Shaping a
/// kept head again for a retry changes nothing.
fn shape_for_wire(parts: &mut Parts, body: &RequestBody, wire: Wire) {
    match wire {
        Wire::Http1 => {
            // Envoy's HTTP/1 codec frames a bodiless request whose method may carry a body
            // (POST, PUT, ...) with `content-length: 0`.
            // The method is checked first: the header lookups are hashed.
            if !matches!(
                parts.method,
                http::Method::GET
                    | http::Method::HEAD
                    | http::Method::DELETE
                    | http::Method::TRACE
                    | http::Method::CONNECT
            ) && http_body::Body::is_end_stream(body)
                && !parts.headers.contains_key(header::CONTENT_LENGTH)
                && !parts.headers.contains_key(header::TRANSFER_ENCODING)
            {
                parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            }
            // The common HTTP/1.1 → HTTP/1.1 case needs nothing more: origin-form URI, Host set.
            if parts.uri.authority().is_some() {
                if !parts.headers.contains_key(header::HOST)
                    && let Some(authority) = parts.uri.authority()
                    && let Ok(value) = HeaderValue::from_str(authority.as_str())
                {
                    parts.headers.insert(header::HOST, value);
                }
                let path_and_query = parts.uri.path_and_query().cloned();
                parts.uri = path_and_query.map_or_else(|| Uri::from_static("/"), Uri::from);
            }
            parts.version = Version::HTTP_11;
        }
        // The HTTP/2 client takes `:authority` from `host` (where host rewrites land), else
        // from the URI.
        Wire::Http2 => parts.version = Version::HTTP_2,
    }
}

fn downstream_version(request_version: Version) -> Version {
    if request_version == Version::HTTP_10 { Version::HTTP_10 } else { request_version }
}

fn class_index(status: StatusCode) -> usize {
    usize::from((status.as_u16() / 100).clamp(1, 5) - 1)
}

fn set_server(headers: &mut HeaderMap, server_name: &HeaderValue) {
    headers.insert(header::SERVER, server_name.clone());
}

fn empty_parts() -> Parts {
    Request::new(()).into_parts().0
}

/// One request's state from routing to the end of its response body.
struct Exchange {
    ctx: Rc<ConnContext>,
    start: Instant,
    version: Version,
    /// A HEAD request: local replies keep their headers and drop their body.
    head: bool,
    /// A gRPC request: local replies take gRPC's form.
    grpc: bool,
    /// The `grpc-status` of a local reply whose reason says it, rather than its HTTP status.
    grpc_status: Option<&'static str>,
    status: u16,
    flags: ResponseFlags,
    /// A response code was charged to the cluster (`upstream_rq_completed` at the end).
    charged: bool,
    details: Cow<'static, str>,
    route_name: Option<String>,
    cluster: Option<Arc<Cluster>>,
    host: Option<Arc<Host>>,
    stream: Rc<StreamState>,
    /// The accounting in `complete` has run.
    done: bool,
    /// The client address (`%DOWNSTREAM_REMOTE_ADDRESS%`), after XFF trusted hops.
    client: SocketAddr,
    logged_request: Option<Parts>,
    logged_response: Option<HeaderMap>,
}

impl Exchange {
    /// Envoy's local reply: status, `text/plain` body when there is one, `server`, and
    /// the response flag for the access log. To a gRPC request, as Envoy answers one: 200
    /// with no body, the status as a `grpc-status` and the body as its `grpc-message`.
    fn local_reply(
        mut self: Box<Self>,
        status: StatusCode,
        body: Bytes,
        flags: ResponseFlags,
        details: impl Into<Cow<'static, str>>,
    ) -> Response<ResponseBody> {
        let listener = &self.ctx.listener;
        let grpc_status = self.grpc_status.unwrap_or_else(|| grpc_status(status));
        let grpc = self.grpc.then(|| (grpc_status, (!body.is_empty() && !self.head).then(|| grpc_message(&body))));
        let (status, body) = if grpc.is_some() { (StatusCode::OK, Bytes::new()) } else { (status, body) };
        let body_len = body.len();
        let body = if self.head { Bytes::new() } else { body };
        let mut response = Response::new(ResponseBody::local(body));
        *response.status_mut() = status;
        *response.version_mut() = downstream_version(self.version);
        let headers = response.headers_mut();
        if let Some((grpc_status, message)) = grpc {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert(headers::GRPC_STATUS.clone(), HeaderValue::from_static(grpc_status));
            if let Some(message) = message {
                headers.insert(GRPC_MESSAGE.clone(), message);
            }
        }
        // Envoy's HTTP/2 codec ends the stream with the headers of an empty local reply and
        // sends no content-length; HTTP/1.1 says `content-length: 0`, except to HEAD, where
        // Envoy announces chunked framing (which hyper leaves out for a bodiless response).
        if body_len > 0 || (self.version != Version::HTTP_2 && !self.head) {
            headers.insert(header::CONTENT_LENGTH, super::headers::decimal_value(body_len as u64));
        }
        if body_len > 0 {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        set_server(headers, &listener.hcm.server_name);
        if flags.contains(ResponseFlags::UPSTREAM_OVERFLOW) && !listener.hcm.suppress_envoy_headers {
            headers.insert(super::headers::X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
        }
        if !self.stream.request_done.get() {
            // Answered before the request body arrived: Envoy closes an HTTP/1 connection
            // rather than read and discard the rest.
            listener.http_stats.downstream_rq_response_before_rq_complete.inc();
            if self.version != Version::HTTP_2 {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
        }
        listener.http_stats.downstream_rq_class[class_index(status)].inc();
        self.status = status.as_u16();
        self.flags.insert(flags);
        self.details = details.into();
        if !listener.access_logs.is_empty() {
            self.logged_response = Some(response.headers().clone());
        }
        response.body_mut().on_end(self);
        response
    }
}

impl StreamEnd for Exchange {
    fn finish(mut self: Box<Self>, bytes_sent: u64, reason: EndReason) {
        self.complete(bytes_sent, reason);
    }
}

impl Drop for Exchange {
    /// A stream dropped before its response began (the client went away while legate
    /// waited for the upstream) is accounted for here.
    fn drop(&mut self) {
        self.complete(0, EndReason::Reset);
    }
}

impl Exchange {
    /// Finishes the stream's accounting exactly once.
    fn complete(&mut self, bytes_sent: u64, reason: EndReason) {
        if self.done {
            return;
        }
        self.done = true;
        let this = self;
        let complete = reason == EndReason::Complete;
        let listener = &this.ctx.listener;
        let ctx = &this.ctx;
        ctx.active_streams.set(ctx.active_streams.get().saturating_sub(1));
        if ctx.active_streams.get() == 0 {
            ctx.idle_since.set(clock::now());
        }
        let duration = clock::now() - this.start;
        let stats = &listener.http_stats;
        stats.downstream_rq_active.dec();
        stats.downstream_rq_completed.inc();
        stats.downstream_rq_time.record(duration.as_millis() as u64);
        if let (Some(cluster), Some(host)) = (&this.cluster, &this.host) {
            if this.stream.upstream_attached.get() {
                cluster.stats.upstream_rq_active.dec();
                host.stats.rq_active.fetch_sub(1, Ordering::Relaxed);
            }
            if this.charged {
                cluster.stats.upstream_rq_completed.inc();
            }
            if this.details == "via_upstream" && complete && this.status < 500 {
                host.stats.rq_success.fetch_add(1, Ordering::Relaxed);
            } else {
                host.stats.rq_error.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut flags = this.flags;
        match reason {
            EndReason::Complete => {}
            EndReason::RouteTimeout => {
                // Envoy's router resets a response still streaming when its timeout passes.
                if let (Some(cluster), Some(host)) = (&this.cluster, &this.host) {
                    cluster.stats.upstream_rq_timeout.inc();
                    host.stats.rq_timeout.fetch_add(1, Ordering::Relaxed);
                }
                flags.insert(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
                this.details = Cow::Borrowed("response_timeout");
            }
            EndReason::IdleTimeout => {
                stats.downstream_rq_idle_timeout.inc();
                flags.insert(ResponseFlags::STREAM_IDLE_TIMEOUT);
            }
            EndReason::Reset => {
                stats.downstream_rq_rx_reset.inc();
                flags.insert(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
            }
        }
        if listener.access_logs.is_empty() {
            return;
        }
        let empty = empty_parts();
        let context = LogContext {
            // The wall time at the start, as far back as the monotonic clock measured: read
            // only for access logs, not on every request.
            start_time: SystemTime::now().checked_sub(duration).unwrap_or(SystemTime::UNIX_EPOCH),
            request: Some(this.logged_request.as_ref().unwrap_or(&empty)),
            response_headers: this.logged_response.as_ref(),
            response_code: this.status,
            response_flags: flags,
            response_code_details: &this.details,
            bytes_received: this.stream.received.get(),
            bytes_sent,
            duration,
            protocol: Some(this.version),
            upstream_host: this.host.as_ref().map(|h| h.address),
            upstream_cluster: this.cluster.as_ref().map(|c| c.name.as_str()),
            downstream_remote: this.client,
            downstream_local: this.ctx.local,
            route_name: this.route_name.as_deref(),
        };
        for logger in &listener.access_logs {
            logger.log(&context);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn grpc_statuses_map_to_envoys_http_statuses() {
        for (grpc, http) in [(0, 200), (1, 499), (4, 504), (8, 429), (10, 409), (14, 503), (16, 401), (99, 500)] {
            assert_eq!(super::grpc_to_http(grpc), http, "grpc-status {grpc}");
        }
    }
}
