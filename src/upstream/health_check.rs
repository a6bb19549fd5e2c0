//! Active health checking (a cluster's `health_checks`), as Envoy's works. Each host has a
//! session on the upstream thread that checks it over its own connection (never a pooled
//! one, and not counted in the cluster's connection stats), decides from the results in a
//! row whether its health changed, and sets `/failed_active_hc` on the host. A change of
//! health goes to the cluster manager, which publishes the cluster rebuilt, so the load
//! balancer only reads snapshots. A new checker's hosts start failed, and the cluster warms
//! until each has had its first check.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use super::cluster::ClusterStats;
use super::host::{Host, health_flag};
use super::manager::ClusterManager;
use super::tasks::UpstreamTasks;
use crate::config::cluster::{GrpcProbe, HealthCheckSpec, HttpProbe, Probe, TcpProbe};
use crate::config::tls::ClientTls;
use crate::stats::{CounterCell, GaugeCell, Member, StatGroup, Store};
use crate::transport::{self, TlsStats, Transport};

/// `cluster.<name>.health_check.*`, Envoy's names.
#[derive(Default)]
pub struct HealthCheckStats {
    attempt: CounterCell,
    success: CounterCell,
    failure: CounterCell,
    network_failure: CounterCell,
    /// Always 0: legate's workers report nothing to health checking (Envoy's
    /// `x-envoy-immediate-health-check-fail` from a proxied response).
    passive_failure: CounterCell,
    verify_cluster: CounterCell,
    pub healthy: GaugeCell,
    pub degraded: GaugeCell,
}

impl StatGroup for HealthCheckStats {
    fn members(&self, visit: &mut dyn FnMut(&str, Member<'_>)) {
        for (name, counter) in [
            ("attempt", &self.attempt),
            ("success", &self.success),
            ("failure", &self.failure),
            ("network_failure", &self.network_failure),
            ("passive_failure", &self.passive_failure),
            ("verify_cluster", &self.verify_cluster),
        ] {
            visit(name, Member::Counter(counter));
        }
        visit("healthy", Member::Gauge(&self.healthy));
        visit("degraded", Member::Gauge(&self.degraded));
    }
}

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed {
        degraded: bool,
    },
    /// The host answered wrongly: at once unhealthy, unless `retriable` (a retriable status).
    Failed {
        retriable: bool,
    },
    /// Connect failed, the connection broke, or the answer made no sense.
    Network,
    TimedOut,
}

/// Whether a check changed the host's health (Envoy's `HealthTransition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    /// Towards a change, short of its threshold.
    Pending,
    Changed,
}

/// A session's count of results in a row; the host's flags hold the verdict.
#[derive(Debug, Default)]
pub struct Streak {
    checked: bool,
    passes: u32,
    failures: u32,
}

impl Streak {
    /// Applies one outcome to `host`'s flags, as Envoy's session does: a first pass makes a
    /// host healthy at once, later ones after `healthy_threshold` in a row; a wrong answer
    /// fails a healthy host at once, network failures, timeouts and retriable statuses after
    /// `unhealthy_threshold` in a row.
    pub fn record(&mut self, spec: &HealthCheckSpec, host: &Host, outcome: Outcome) -> Transition {
        let failed = host.health_flags() & health_flag::FAILED_ACTIVE_HC != 0;
        let first = !self.checked;
        self.checked = true;
        let mut transition = Transition::Unchanged;
        match outcome {
            Outcome::Passed { degraded } => {
                self.failures = 0;
                if failed {
                    self.passes += 1;
                    if first || self.passes == spec.healthy_threshold {
                        host.set_flag(health_flag::FAILED_ACTIVE_HC | health_flag::ACTIVE_HC_TIMEOUT, false);
                        transition = Transition::Changed;
                    } else {
                        transition = Transition::Pending;
                    }
                }
                let was_degraded = host.health_flags() & health_flag::DEGRADED_ACTIVE_HC != 0;
                if degraded != was_degraded {
                    host.set_flag(health_flag::DEGRADED_ACTIVE_HC, degraded);
                    if transition == Transition::Unchanged {
                        transition = Transition::Changed;
                    }
                }
            }
            Outcome::Failed { .. } | Outcome::Network | Outcome::TimedOut => {
                self.passes = 0;
                if !failed {
                    let at_once = matches!(outcome, Outcome::Failed { retriable: false });
                    self.failures += 1;
                    if at_once || self.failures == spec.unhealthy_threshold {
                        host.set_flag(health_flag::FAILED_ACTIVE_HC, true);
                        transition = Transition::Changed;
                    } else {
                        transition = Transition::Pending;
                    }
                }
                // A failed host shows whether it now fails by timing out.
                let timed_out =
                    outcome == Outcome::TimedOut && host.health_flags() & health_flag::FAILED_ACTIVE_HC != 0;
                host.set_flag(health_flag::ACTIVE_HC_TIMEOUT, timed_out);
            }
        }
        transition
    }
}

/// How long a session waits before its next check (Envoy's `interval()`): while the cluster
/// has never opened an upstream connection, the no-traffic intervals; then by the result
/// and whether a change is pending. Jitter is added, and the wait is at least 1 ms.
pub fn next_wait(spec: &HealthCheckSpec, traffic: bool, passed: bool, transition: Transition) -> Duration {
    let pending = transition == Transition::Pending;
    let base = match (traffic, passed) {
        (false, true) if !pending => spec.no_traffic_healthy_interval,
        (false, _) => spec.no_traffic_interval,
        (true, false) if pending => spec.unhealthy_edge_interval,
        (true, false) => spec.unhealthy_interval,
        (true, true) if pending => spec.healthy_edge_interval,
        (true, true) => spec.interval,
    };
    with_jitter(spec, base, spec.interval_jitter)
}

fn with_jitter(spec: &HealthCheckSpec, base: Duration, jitter: Duration) -> Duration {
    let base_ms = base.as_millis() as u64;
    let mut wait = base_ms;
    let percent = u64::from(spec.interval_jitter_percent) * base_ms / 100;
    if percent > 0 {
        wait += fastrand::u64(..percent);
    }
    let jitter_ms = jitter.as_millis() as u64;
    if jitter_ms > 0 {
        wait += fastrand::u64(..jitter_ms);
    }
    Duration::from_millis(wait.max(1))
}

/// The sessions a checker runs, by host (pointer), and the hosts whose first check the
/// cluster still waits for.
#[derive(Default)]
struct Sessions {
    /// `None` until the upstream thread started the session. The host is held so that its
    /// address, the key, cannot be another host's while the entry is here.
    running: HashMap<usize, (Arc<Host>, Option<AbortHandle>)>,
    first_round: HashSet<usize>,
}

/// A cluster's health checker: shared by the versions of the cluster that EDS, DNS and
/// health changes rebuild; a CDS change makes a new one (with new hosts), as Envoy's new
/// cluster has. Dropping the last version stops its sessions.
pub struct HealthChecker {
    pub spec: Arc<HealthCheckSpec>,
    /// The cluster it belongs to, to find it in the manager's state.
    pub cluster: String,
    /// HTTP checks' `:authority`: the configured host, or the cluster's name.
    authority: HeaderValue,
    pub stats: Arc<HealthCheckStats>,
    /// The cluster's stats: whether it ever opened an upstream connection.
    traffic: Arc<ClusterStats>,
    /// The cluster's TLS, which checks speak as Envoy's do (its `ssl.*` stats count them).
    tls: Option<(Arc<ClientTls>, Arc<TlsStats>)>,
    tasks: UpstreamTasks,
    sessions: Mutex<Sessions>,
}

fn host_key(host: &Arc<Host>) -> usize {
    Arc::as_ptr(host) as usize
}

impl HealthChecker {
    /// A checker for `cluster`'s `hosts`, whose stats go under `stat_name`; the cluster
    /// waits for the first check of each.
    pub fn start(
        spec: Arc<HealthCheckSpec>,
        cluster: &str,
        stat_name: &str,
        context: (&Store, &UpstreamTasks),
        traffic: &Arc<ClusterStats>,
        tls: Option<&(Arc<ClientTls>, Arc<TlsStats>)>,
        hosts: &[Arc<Host>],
    ) -> Arc<HealthChecker> {
        let (store, tasks) = context;
        let stats = store.group(&format!("cluster.{stat_name}.health_check."), HealthCheckStats::default);
        let authority = match &spec.probe {
            Probe::Http(http) if !http.host.is_empty() => &http.host,
            Probe::Grpc(grpc) if !grpc.authority.is_empty() => &grpc.authority,
            _ => cluster,
        };
        let checker = Arc::new(HealthChecker {
            authority: HeaderValue::from_str(authority).unwrap_or(HeaderValue::from_static("invalid")),
            spec,
            cluster: cluster.to_owned(),
            stats,
            traffic: traffic.clone(),
            tls: tls.cloned(),
            tasks: tasks.clone(),
            sessions: Mutex::new(Sessions {
                running: HashMap::new(),
                first_round: hosts.iter().map(host_key).collect(),
            }),
        });
        checker.track(hosts);
        checker
    }

    fn sessions(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks exactly `hosts` from now on: sessions start for new hosts (on the upstream
    /// thread) and stop for the ones gone.
    pub fn track(self: &Arc<Self>, hosts: &[Arc<Host>]) {
        let wanted: HashSet<usize> = hosts.iter().map(host_key).collect();
        let mut sessions = self.sessions();
        sessions.running.retain(|key, (_, handle)| {
            let keep = wanted.contains(key);
            if !keep && let Some(handle) = handle {
                handle.abort();
            }
            keep
        });
        sessions.first_round.retain(|key| wanted.contains(key));
        for host in hosts {
            if let std::collections::hash_map::Entry::Vacant(entry) = sessions.running.entry(host_key(host)) {
                entry.insert((host.clone(), None));
                self.tasks.health_check(self, host);
            }
        }
    }

    /// Starts `host`'s session, on the upstream thread, if the checker still checks it.
    pub fn run(self: &Arc<Self>, manager: Weak<ClusterManager>, host: &Arc<Host>) {
        let mut sessions = self.sessions();
        if let Some((_, handle @ None)) = sessions.running.get_mut(&host_key(host)) {
            let session = tokio::task::spawn_local(session(manager, Arc::downgrade(self), host.clone()));
            *handle = Some(session.abort_handle());
        }
    }

    /// Whether every host the cluster waited for has had its first check.
    pub fn first_round_done(&self) -> bool {
        self.sessions().first_round.is_empty()
    }

    /// How many hosts the cluster still waits for, for `/clusters`.
    pub fn first_round_left(&self) -> usize {
        self.sessions().first_round.len()
    }

    /// Sets the `healthy` and `degraded` gauges from the hosts' flags.
    pub fn count(&self, hosts: &[Arc<Host>]) {
        let flagged = |flag: u32| hosts.iter().filter(|h| h.health_flags() & flag != 0).count() as i64;
        self.stats.healthy.set(hosts.len() as i64 - flagged(health_flag::FAILED_ACTIVE_HC));
        self.stats.degraded.set(flagged(health_flag::DEGRADED_ACTIVE_HC));
    }

    /// Runs one check of `host`, within the timeout.
    async fn check(&self, host: &Host, connection: &mut Option<Connection>) -> Outcome {
        self.stats.attempt.inc();
        let probe = async {
            match &self.spec.probe {
                Probe::Http(http) => self.check_http(http, host, connection).await,
                Probe::Tcp(tcp) => self.check_tcp(tcp, host, connection).await,
                Probe::Grpc(grpc) => self.check_grpc(grpc, host, connection).await,
            }
        };
        let outcome = match tokio::time::timeout(self.spec.timeout, probe).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::TimedOut,
        };
        match outcome {
            Outcome::Passed { .. } => self.stats.success.inc(),
            Outcome::Failed { .. } => self.stats.failure.inc(),
            Outcome::Network | Outcome::TimedOut => {
                self.stats.failure.inc();
                self.stats.network_failure.inc();
            }
        }
        if !matches!(outcome, Outcome::Passed { .. }) || !self.spec.reuse_connection {
            *connection = None;
        }
        outcome
    }

    async fn check_http(&self, probe: &HttpProbe, host: &Host, connection: &mut Option<Connection>) -> Outcome {
        let Some(sender) = self.http_sender(host, probe.http2, connection).await else { return Outcome::Network };
        let mut request = Request::builder().method(probe.method.clone());
        request = if probe.http2 {
            request.uri(format!("http://{}{}", self.authority.to_str().unwrap_or(""), probe.path))
        } else {
            request.uri(&probe.path).header(header::HOST, self.authority.clone())
        };
        let body = probe.send.clone().unwrap_or_default();
        let Ok(mut request) = request.header(header::USER_AGENT, "Envoy/HC").body(Full::new(body)) else {
            return Outcome::Failed { retriable: false };
        };
        probe.headers.apply(request.headers_mut());
        let Ok(response) = sender.send(request).await else { return Outcome::Network };
        let (head, body) = response.into_parts();
        let Some(body) = read_body(body, probe).await else { return Outcome::Network };
        if head.headers.get(header::CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close")) {
            // The next check connects again; hyper closes this one after the response.
            sender.closing = true;
        }
        if !probe.receive.is_empty() && !contains_in_order(&body, &probe.receive) {
            return Outcome::Failed { retriable: false };
        }
        let status = head.status.as_u16();
        if !probe.expected.iter().any(|r| r.contains(&status)) {
            let retriable = probe.retriable.iter().any(|r| r.contains(&status));
            return Outcome::Failed { retriable };
        }
        let degraded = head.headers.contains_key("x-envoy-degraded");
        if let Some(matcher) = &probe.service_name {
            self.stats.verify_cluster.inc();
            let cluster = head.headers.get("x-envoy-upstream-healthchecked-cluster").map_or(&b""[..], |v| v.as_bytes());
            if !matcher.matches(cluster) {
                return Outcome::Failed { retriable: false };
            }
        }
        Outcome::Passed { degraded }
    }

    /// A gRPC check: `grpc.health.v1.Health/Check` must answer `SERVING` with status OK;
    /// any other answer fails the host at once, as in Envoy.
    async fn check_grpc(&self, probe: &GrpcProbe, host: &Host, connection: &mut Option<Connection>) -> Outcome {
        let Some(sender) = self.http_sender(host, true, connection).await else { return Outcome::Network };
        let uri = format!("http://{}/grpc.health.v1.Health/Check", self.authority.to_str().unwrap_or(""));
        let message = HealthCheckRequest { service: probe.service_name.clone() }.encode_to_vec();
        let mut frame = BytesMut::with_capacity(5 + message.len());
        frame.extend_from_slice(&[0]);
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        let request = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .header(header::USER_AGENT, "Envoy/HC")
            .header("grpc-timeout", format!("{}m", self.spec.timeout.as_millis()))
            .body(Full::new(frame.freeze()));
        let Ok(mut request) = request else { return Outcome::Failed { retriable: false } };
        probe.metadata.apply(request.headers_mut());
        let Ok(response) = sender.send(request).await else { return Outcome::Network };
        let (head, mut body) = response.into_parts();
        let grpc =
            head.headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if head.status != http::StatusCode::OK || !grpc {
            return Outcome::Failed { retriable: false };
        }
        let mut data = BytesMut::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return Outcome::Network };
            match frame.into_data() {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        // A trailers-only answer carries its status in the head.
        let status = trailers.as_ref().unwrap_or(&head.headers).get("grpc-status");
        let serving = status.is_some_and(|s| s == "0")
            && data.len() >= 5
            && data[0] == 0
            && u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize == data.len() - 5
            && HealthCheckResponse::decode(&data[5..]).is_ok_and(|r| r.status == SERVING);
        if serving { Outcome::Passed { degraded: false } } else { Outcome::Failed { retriable: false } }
    }
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`, whose `status` is `SERVING` when healthy.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

const SERVING: i32 = 1;

impl Drop for HealthChecker {
    fn drop(&mut self) {
        for (_, handle) in self.sessions().running.values() {
            if let Some(handle) = handle {
                handle.abort();
            }
        }
    }
}

/// A session's connection to its host, kept between checks with `reuse_connection`.
enum Connection {
    Http(HttpSender),
    Tcp(Transport),
}

impl Connection {
    fn http(&mut self) -> &mut HttpSender {
        match self {
            Connection::Http(sender) => sender,
            Connection::Tcp(_) => unreachable!("an HTTP check keeps an HTTP connection"),
        }
    }

    fn tcp(&mut self) -> &mut Transport {
        match self {
            Connection::Tcp(stream) => stream,
            Connection::Http(_) => unreachable!("a TCP check keeps a TCP connection"),
        }
    }
}

/// An HTTP/1.1 or HTTP/2 client connection (hyper's), driven by a task of its own.
struct HttpSender {
    sender: SendRequest,
    /// The upstream said `connection: close`.
    closing: bool,
    driver: AbortHandle,
}

enum SendRequest {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl HealthChecker {
    /// A new connection to `host`: TLS over TCP for a TLS cluster, offering no ALPN but the
    /// cluster's own (Envoy's checks take no pool's fallback).
    async fn connect(&self, host: &Host) -> Option<Transport> {
        let tcp = TcpStream::connect(host.address).await.ok()?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some((tls, stats)) => transport::connect(tcp, tls, None, stats).await.ok(),
            None => Some(Transport::Plain(tcp)),
        }
    }

    /// The session's HTTP connection, or a new one, once it can take a request.
    async fn http_sender<'c>(
        &self,
        host: &Host,
        http2: bool,
        connection: &'c mut Option<Connection>,
    ) -> Option<&'c mut HttpSender> {
        if !matches!(connection, Some(Connection::Http(sender)) if sender.usable()) {
            let stream = self.connect(host).await?;
            *connection = Some(Connection::Http(HttpSender::start(stream, http2).await?));
        }
        let sender = connection.as_mut()?.http();
        sender.ready().await.ok()?;
        Some(sender)
    }

    /// A TCP check: connect; with nothing to receive that passes (and the connection
    /// closes, without sending, as in Envoy); otherwise send and read until the expected
    /// bytes came.
    async fn check_tcp(&self, probe: &TcpProbe, host: &Host, connection: &mut Option<Connection>) -> Outcome {
        let stream = match connection {
            Some(Connection::Tcp(stream)) => stream,
            _ => match self.connect(host).await {
                Some(stream) => connection.insert(Connection::Tcp(stream)).tcp(),
                None => return Outcome::Network,
            },
        };
        if probe.receive.is_empty() {
            *connection = None;
            return Outcome::Passed { degraded: false };
        }
        if let Some(send) = &probe.send
            && stream.write_all(send).await.is_err()
        {
            return Outcome::Network;
        }
        let mut received = BytesMut::with_capacity(256);
        loop {
            match stream.read_buf(&mut received).await {
                Ok(0) | Err(_) => return Outcome::Network,
                Ok(_) if contains_in_order(&received, &probe.receive) => {
                    if !self.spec.reuse_connection {
                        *connection = None;
                    }
                    return Outcome::Passed { degraded: false };
                }
                Ok(_) => {}
            }
        }
    }
}

impl HttpSender {
    /// Speaks HTTP/1.1 or HTTP/2 on `stream`, its connection driven by a task of its own.
    async fn start(stream: Transport, http2: bool) -> Option<HttpSender> {
        let io = TokioIo::new(stream);
        let (sender, driver) = if http2 {
            let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.ok()?;
            (SendRequest::H2(sender), tokio::task::spawn_local(async move { drop(connection.await) }))
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await.ok()?;
            (SendRequest::H1(sender), tokio::task::spawn_local(async move { drop(connection.await) }))
        };
        Some(HttpSender { sender, closing: false, driver: driver.abort_handle() })
    }

    /// Whether a check may use it again.
    fn usable(&self) -> bool {
        !self.closing
            && match &self.sender {
                SendRequest::H1(s) => !s.is_closed(),
                SendRequest::H2(s) => !s.is_closed(),
            }
    }

    async fn ready(&mut self) -> hyper::Result<()> {
        match &mut self.sender {
            SendRequest::H1(s) => s.ready().await,
            SendRequest::H2(s) => s.ready().await,
        }
    }

    async fn send(&mut self, request: Request<Full<Bytes>>) -> hyper::Result<http::Response<Incoming>> {
        match &mut self.sender {
            SendRequest::H1(s) => s.send_request(request).await,
            SendRequest::H2(s) => s.send_request(request).await,
        }
    }
}

impl Drop for HttpSender {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Reads a response body to its end, keeping what `receive` looks at: the first
/// `response_buffer_size` bytes (all of it when that is 0). `None` when the body broke off.
async fn read_body(mut body: Incoming, probe: &HttpProbe) -> Option<BytesMut> {
    let mut kept = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if let Some(data) = frame.data_ref()
            && !probe.receive.is_empty()
        {
            let room = if probe.response_buffer_size == 0 {
                data.len()
            } else {
                probe.response_buffer_size.saturating_sub(kept.len()).min(data.len())
            };
            kept.extend_from_slice(&data[..room]);
        }
    }
    Some(kept)
}

/// Whether `buffer` holds each of `segments`, in order, not overlapping (Envoy's payload
/// matcher).
fn contains_in_order(buffer: &[u8], segments: &[Bytes]) -> bool {
    let mut from = 0;
    for segment in segments {
        let Some(at) = buffer[from..].windows(segment.len()).position(|w| w == &segment[..]) else {
            return false;
        };
        from += at + segment.len();
    }
    true
}

/// One host's checks, until its checker stops them (host gone, cluster changed or removed).
async fn session(manager: Weak<ClusterManager>, checker: Weak<HealthChecker>, host: Arc<Host>) {
    let Some(initial_jitter) = checker.upgrade().map(|c| c.spec.initial_jitter) else { return };
    if !initial_jitter.is_zero() {
        let wait = checker.upgrade().map(|c| with_jitter(&c.spec, Duration::ZERO, initial_jitter));
        tokio::time::sleep(wait.unwrap_or_default()).await;
    }
    let mut streak = Streak::default();
    let mut connection = None;
    loop {
        let Some(checker) = checker.upgrade() else { return };
        let outcome = checker.check(&host, &mut connection).await;
        let first = !streak.checked;
        let transition = streak.record(&checker.spec, &host, outcome);
        if first {
            checker.sessions().first_round.remove(&host_key(&host));
        }
        let passed = matches!(outcome, Outcome::Passed { .. });
        let ejected = passed && host.health_flags() & health_flag::FAILED_OUTLIER_CHECK != 0;
        if (first || ejected || transition == Transition::Changed)
            && let Some(manager) = manager.upgrade()
        {
            manager.health_checked(&checker, transition == Transition::Changed, Some(&host).filter(|_| passed));
        }
        let traffic = checker.traffic.upstream_cx_total.value() > 0;
        let wait = next_wait(&checker.spec, traffic, passed, transition);
        drop(checker);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests;
