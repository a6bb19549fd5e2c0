//! Cluster protos → `ClusterSpec`: discovery type, hosts, load balancing and the
//! upstream HTTP protocol.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds as ThresholdsProto;
use envoy_types::pb::envoy::config::cluster::v3::cluster::ring_hash_lb_config::HashFunction;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CommonLbConfig, DiscoveryType, DnsLookupFamily, LbConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthStatus, HttpProtocolOptions as CommonHttpOptions, RoutingPriority,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions as UpstreamHttpOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;

use super::error::{ConfigError, Result, join_path};
use super::proto::{self, Encoded, ensure_only};
use super::tls::{self, ClientTls};
use super::xds::{SourceSpec, XdsSources, config_source};

mod health_check;
mod outlier;

pub use health_check::{GrpcProbe, HealthCheckSpec, HttpProbe, Probe, TcpProbe};
pub use outlier::{Consecutive, IntervalDetector, OutlierSpec, Percent, outlier_detection};

/// Envoy's default `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's default upstream connection idle timeout (`common_http_protocol_options.idle_timeout`).
const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

const HTTP_PROTOCOL_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The HTTP protocol legate speaks to a cluster's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    /// Whatever the downstream request used (`use_downstream_protocol_config`).
    Downstream,
}

/// How a cluster picks a host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LbKind {
    RoundRobin,
    Random,
    LeastRequest(LeastRequest),
    RingHash(RingHash),
    Maglev(Maglev),
}

/// `maglev_lb_config`: the table's size, a prime (Envoy's default 65537).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Maglev {
    pub table_size: u64,
    /// Hash hosts by hostname rather than address (`consistent_hashing_lb_config`).
    pub by_hostname: bool,
}

/// The largest Maglev table Envoy builds.
const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;

/// `ring_hash_lb_config`, with Envoy's defaults: the ring holds at least `min_size`
/// entries (more when weights need them to stay whole), at most `max_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingHash {
    pub min_size: u64,
    pub max_size: u64,
    /// Hash hosts by hostname rather than address (`consistent_hashing_lb_config`).
    pub by_hostname: bool,
}

/// The largest ring Envoy builds (and its default maximum).
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

impl LbKind {
    /// Whether ring hash or Maglev keys hosts by hostname rather than address.
    pub fn hashes_by_hostname(self) -> bool {
        match self {
            LbKind::RingHash(ring) => ring.by_hostname,
            LbKind::Maglev(maglev) => maglev.by_hostname,
            LbKind::RoundRobin | LbKind::Random | LbKind::LeastRequest(_) => false,
        }
    }
}

/// `least_request_lb_config`, with Envoy's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeastRequest {
    /// How many random hosts a pick compares when all weights are equal.
    pub choice_count: u32,
    /// The exponent of `(active requests + 1)` that divides a host's weight when the
    /// weights differ.
    pub active_request_bias: f64,
}

impl Default for LeastRequest {
    fn default() -> LeastRequest {
        LeastRequest { choice_count: 2, active_request_bias: 1.0 }
    }
}

/// One routing priority's circuit-breaker limits, cluster-wide across workers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Connections open or connecting.
    pub max_connections: u32,
    /// Requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Requests on a connection.
    pub max_requests: u32,
    /// Retries in flight.
    pub max_retries: u32,
    /// `retry_budget`, which replaces `max_retries` when given.
    pub retry_budget: Option<RetryBudget>,
    /// Whether the `remaining_*` gauges are kept.
    pub track_remaining: bool,
}

/// `retry_budget`: retries in flight allowed as a share of the requests in flight (active and
/// pending), never fewer than a floor; Envoy's defaults 20 % and 3.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub percent: f64,
    pub min_concurrency: u32,
}

impl Thresholds {
    /// The retries allowed in flight while `in_flight` requests are active or pending.
    pub fn retry_limit(&self, in_flight: u64) -> u64 {
        match self.retry_budget {
            Some(budget) => ((budget.percent / 100.0 * in_flight as f64) as u64).max(u64::from(budget.min_concurrency)),
            None => u64::from(self.max_retries),
        }
    }
}

impl Default for Thresholds {
    /// Envoy's defaults.
    fn default() -> Thresholds {
        Thresholds {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
            track_remaining: false,
        }
    }
}

/// A cluster's circuit breakers by routing priority. Routes in legate are all of the
/// default priority (a route's `priority` is refused), so `high` is configured and shown
/// but never reached.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CircuitBreakers {
    pub default: Thresholds,
    pub high: Thresholds,
}

/// One configured endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    pub address: SocketAddr,
    /// `load_balancing_weight`, 1 when unset.
    pub weight: u32,
    pub priority: u32,
    pub locality: Arc<HostLocality>,
    /// EDS health status; STATIC hosts are HEALTHY unless the config says otherwise.
    pub health_status: HealthStatus,
    pub hostname: String,
}

/// Where an endpoint runs; one per locality group, shared by its hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostLocality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
    /// The group's `load_balancing_weight` (0 when unset). Only shown: without locality
    /// weighted balancing, which legate does not offer, Envoy does not use it either.
    pub weight: u32,
}

/// Envoy's default `healthy_panic_threshold`: a priority level with fewer than half its
/// hosts healthy balances over all of them.
const DEFAULT_HEALTHY_PANIC_THRESHOLD: u32 = 50;

/// Envoy's default `overprovisioning_factor` (140 %).
pub const DEFAULT_OVERPROVISIONING_FACTOR: u32 = 140;

/// A validated load assignment: the hosts and how priorities spill over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub hosts: Vec<HostSpec>,
    /// `policy.overprovisioning_factor`, in percent.
    pub overprovisioning_factor: u32,
}

impl Default for Assignment {
    fn default() -> Assignment {
        Assignment { hosts: Vec::new(), overprovisioning_factor: DEFAULT_OVERPROVISIONING_FACTOR }
    }
}

/// Where a cluster's hosts come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// `load_assignment` in the cluster itself.
    Static,
    /// `ClusterLoadAssignment`s named `service_name` from EDS.
    Eds { service_name: String, source: SourceSpec },
    /// The names in `load_assignment`, resolved by DNS.
    Dns(Arc<DnsDiscovery>),
}

/// A `STRICT_DNS` or `LOGICAL_DNS` cluster's names and how they are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsDiscovery {
    /// `LOGICAL_DNS`: one host, at the first address of the one name. `STRICT_DNS`: a host
    /// for every address of every name.
    pub logical: bool,
    pub targets: Vec<DnsTarget>,
    /// `dns_refresh_rate` (5 s by default).
    pub refresh_rate: Duration,
    /// `dns_failure_refresh_rate`: the backoff after a failed resolution (base, max); the
    /// refresh rate when unset.
    pub failure_refresh_rate: Option<(Duration, Duration)>,
    /// `respect_dns_ttl`: refresh when the answer's TTL runs out instead.
    pub respect_ttl: bool,
    pub family: LookupFamily,
    /// The load assignment's `policy.overprovisioning_factor`.
    pub overprovisioning_factor: u32,
}

/// One name to resolve, with what its hosts get: port, weight, priority, locality, health
/// status and hostname (the name itself unless the endpoint names one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTarget {
    pub name: String,
    /// A host of the target; its address has the port, and the IP only for an IP literal.
    pub host: HostSpec,
}

/// `dns_lookup_family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LookupFamily {
    /// IPv6 addresses, else IPv4 ones (Envoy's default).
    Auto,
    V4Only,
    V6Only,
    /// IPv4 addresses, else IPv6 ones.
    V4Preferred,
    /// Both.
    All,
}

/// Envoy's default `dns_refresh_rate`.
const DEFAULT_DNS_REFRESH_RATE: Duration = Duration::from_secs(5);

/// A validated cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: String,
    pub discovery: Discovery,
    pub connect_timeout: Duration,
    pub lb: LbKind,
    /// `common_lb_config.healthy_panic_threshold`, rounded to a whole percent as Envoy
    /// does; 0 turns panic mode off.
    pub healthy_panic_threshold: u32,
    pub protocol: UpstreamProtocol,
    /// How long an idle pooled upstream connection is kept.
    pub idle_timeout: Option<Duration>,
    /// Requests an upstream connection carries before it is closed (`None`: no limit).
    pub max_requests_per_connection: Option<u32>,
    pub circuit_breakers: CircuitBreakers,
    /// `outlier_detection`, shared by the cluster's rebuilds.
    pub outlier: Option<Arc<OutlierSpec>>,
    /// `health_checks` (Envoy runs one), shared by the cluster's rebuilds.
    pub health_check: Option<Arc<HealthCheckSpec>>,
    /// A host discovery removes goes at once, even while it passes its health checks.
    pub ignore_health_on_host_removal: bool,
    /// The hosts from `load_assignment` (empty for EDS clusters, whose come from EDS).
    pub assignment: Assignment,
    /// The name its stats go under: `alt_stat_name`, or the name.
    pub stat_name: String,
    /// `transport_socket` when it is TLS.
    pub tls: Option<Arc<ClientTls>>,
    /// The original proto, for `/config_dump` and change detection.
    pub proto: Encoded<ClusterProto>,
}

/// Fields of `Cluster` legate implements; any other set field is rejected as unsupported.
const SUPPORTED_CLUSTER_FIELDS: &[&str] = &[
    "name",
    "alt_stat_name",
    "type",
    "connect_timeout",
    "lb_policy",
    "least_request_lb_config",
    "ring_hash_lb_config",
    "maglev_lb_config",
    "common_lb_config",
    "load_assignment",
    "typed_extension_protocol_options",
    "http2_protocol_options",
    "common_http_protocol_options",
    "metadata",
    "per_connection_buffer_limit_bytes",
    "dns_lookup_family",
    "dns_refresh_rate",
    "dns_failure_refresh_rate",
    "respect_dns_ttl",
    "wait_for_warm_on_init",
    "eds_cluster_config",
    "circuit_breakers",
    "max_requests_per_connection",
    "outlier_detection",
    "health_checks",
    "ignore_health_on_host_removal",
    "transport_socket",
];

impl ClusterSpec {
    /// Translates and validates a cluster; `path` is where the cluster sits in the config,
    /// `sources` the management servers an EDS cluster may name.
    pub fn from_proto(proto: &ClusterProto, path: &str, sources: &XdsSources) -> Result<ClusterSpec> {
        ClusterSpec::from_proto_encoded(proto, Encoded::new(proto), path, sources)
    }

    /// As `from_proto`, for a proto whose encoding the caller already has (`proto` decoded
    /// from `encoded`'s bytes).
    pub fn from_proto_encoded(
        proto: &ClusterProto,
        encoded: Encoded<ClusterProto>,
        path: &str,
        sources: &XdsSources,
    ) -> Result<ClusterSpec> {
        ensure_only(proto, SUPPORTED_CLUSTER_FIELDS, path)?;
        if proto.name.is_empty() {
            return Err(ConfigError::invalid(join_path(path, "name"), "value length must be at least 1 characters"));
        }
        let discovery = match &proto.cluster_discovery_type {
            None => Discovery::Static,
            Some(ClusterDiscoveryType::Type(t)) => match DiscoveryType::try_from(*t) {
                Ok(DiscoveryType::Static) => Discovery::Static,
                Ok(DiscoveryType::Eds) => eds(proto, path, sources)?,
                Ok(DiscoveryType::StrictDns) => dns(proto, path, false)?,
                Ok(DiscoveryType::LogicalDns) => dns(proto, path, true)?,
                Ok(other) => {
                    return Err(ConfigError::unsupported(
                        join_path(path, "type"),
                        format!("cluster type {}", other.as_str_name()),
                    ));
                }
                Err(_) => return Err(ConfigError::invalid(join_path(path, "type"), format!("unknown value {t}"))),
            },
            Some(ClusterDiscoveryType::ClusterType(custom)) => {
                return Err(ConfigError::unsupported(join_path(path, "cluster_type"), custom.name.clone()));
            }
        };
        if proto.wait_for_warm_on_init.is_some_and(|wait| !wait.value) {
            return Err(ConfigError::unsupported(
                join_path(path, "wait_for_warm_on_init"),
                "a cluster always warms before it serves",
            ));
        }
        if !matches!(discovery, Discovery::Eds { .. }) && proto.eds_cluster_config.is_some() {
            return Err(ConfigError::invalid(
                join_path(path, "eds_cluster_config"),
                "eds_cluster_config is only valid for clusters of type EDS",
            ));
        }
        let connect_timeout = match &proto.connect_timeout {
            Some(d) => {
                let t = proto::duration(d, &join_path(path, "connect_timeout"))?;
                if t.is_zero() {
                    return Err(ConfigError::invalid(
                        join_path(path, "connect_timeout"),
                        "value must be greater than 0s",
                    ));
                }
                t
            }
            None => DEFAULT_CONNECT_TIMEOUT,
        };
        let lb = match LbPolicy::try_from(proto.lb_policy) {
            Ok(LbPolicy::RoundRobin) => LbKind::RoundRobin,
            Ok(LbPolicy::Random) => LbKind::Random,
            Ok(LbPolicy::LeastRequest) => LbKind::LeastRequest(least_request(proto, path)?),
            Ok(LbPolicy::RingHash) => LbKind::RingHash(ring_hash(proto, path)?),
            Ok(LbPolicy::Maglev) => LbKind::Maglev(maglev(proto, path)?),
            Ok(other) => {
                return Err(ConfigError::unsupported(join_path(path, "lb_policy"), other.as_str_name().to_owned()));
            }
            Err(_) => return Err(ConfigError::invalid(join_path(path, "lb_policy"), "unknown value")),
        };
        let healthy_panic_threshold = match &proto.common_lb_config {
            Some(common) => healthy_panic_threshold(common, &join_path(path, "common_lb_config"))?,
            None => DEFAULT_HEALTHY_PANIC_THRESHOLD,
        };
        let (protocol, common) = upstream_protocol(proto, path)?;
        let idle_timeout = match common.as_ref().and_then(|c| c.idle_timeout.as_ref()) {
            Some(d) => Some(proto::duration(d, &join_path(path, "common_http_protocol_options.idle_timeout"))?)
                .filter(|t| !t.is_zero()),
            None => Some(DEFAULT_UPSTREAM_IDLE_TIMEOUT),
        };
        // The typed options' value wins over the deprecated cluster field; 0 is no limit.
        #[allow(deprecated)]
        let max_requests_per_connection = common
            .as_ref()
            .and_then(|c| c.max_requests_per_connection)
            .or(proto.max_requests_per_connection)
            .map(|v| v.value)
            .filter(|&max| max > 0);
        // A DNS cluster's load assignment is its targets, resolved later.
        let hosts = match &proto.load_assignment {
            Some(la) if !matches!(discovery, Discovery::Dns(_)) => assignment(la, &join_path(path, "load_assignment"))?,
            _ => Assignment::default(),
        };
        let circuit_breakers = match &proto.circuit_breakers {
            Some(c) => circuit_breakers(c, &join_path(path, "circuit_breakers"))?,
            None => CircuitBreakers::default(),
        };
        let outlier = match &proto.outlier_detection {
            Some(o) => Some(Arc::new(outlier::outlier_detection(o, &join_path(path, "outlier_detection"))?)),
            None => None,
        };
        let health_check =
            health_check::health_checks(&proto.health_checks, &join_path(path, "health_checks"))?.map(Arc::new);
        if health_check.as_ref().is_some_and(|c| matches!(c.probe, Probe::Grpc(_)))
            && protocol == UpstreamProtocol::Http1
        {
            // Envoy's words for it.
            return Err(ConfigError::invalid(
                join_path(path, "health_checks[0].grpc_health_check"),
                format!("{} cluster must support HTTP/2 for gRPC healthchecking", proto.name),
            ));
        }
        let tls = tls::upstream(proto.transport_socket.as_ref(), &join_path(path, "transport_socket"))?;
        Ok(ClusterSpec {
            name: proto.name.clone(),
            discovery,
            connect_timeout,
            lb,
            healthy_panic_threshold,
            protocol,
            idle_timeout,
            max_requests_per_connection,
            circuit_breakers,
            outlier,
            health_check,
            ignore_health_on_host_removal: proto.ignore_health_on_host_removal,
            assignment: hosts,
            stat_name: if proto.alt_stat_name.is_empty() { &proto.name } else { &proto.alt_stat_name }.clone(),
            tls: tls.map(Arc::new),
            proto: encoded,
        })
    }
}

/// `common_lb_config`, of which legate takes `healthy_panic_threshold` (and
/// `consistent_hashing_lb_config`, read by `by_hostname`).
fn healthy_panic_threshold(common: &CommonLbConfig, path: &str) -> Result<u32> {
    ensure_only(common, &["healthy_panic_threshold", "consistent_hashing_lb_config"], path)?;
    let Some(percent) = &common.healthy_panic_threshold else {
        return Ok(DEFAULT_HEALTHY_PANIC_THRESHOLD);
    };
    if !(0.0..=100.0).contains(&percent.value) {
        return Err(ConfigError::invalid(
            join_path(path, "healthy_panic_threshold.value"),
            "value must be inside range [0, 100]",
        ));
    }
    Ok(percent.value.round() as u32)
}

/// `least_request_lb_config`. The bias is the `RuntimeDouble`'s default: legate has no
/// runtime layer to look its key up in, as Envoy finds nothing under a key no layer sets.
fn least_request(proto: &ClusterProto, path: &str) -> Result<LeastRequest> {
    let mut config = LeastRequest::default();
    let Some(LbConfig::LeastRequestLbConfig(given)) = &proto.lb_config else {
        return Ok(config);
    };
    let path = join_path(path, "least_request_lb_config");
    ensure_only(given, &["choice_count", "active_request_bias"], &path)?;
    if let Some(count) = given.choice_count {
        if count.value < 2 {
            return Err(ConfigError::invalid(
                join_path(&path, "choice_count"),
                "value must be greater than or equal to 2",
            ));
        }
        config.choice_count = count.value;
    }
    if let Some(bias) = &given.active_request_bias {
        // Envoy warns and uses 1.0 for a bias below 0 or not a number.
        if bias.default_value >= 0.0 {
            config.active_request_bias = bias.default_value;
        }
    }
    Ok(config)
}

/// `ring_hash_lb_config` and `common_lb_config.consistent_hashing_lb_config`.
fn ring_hash(proto: &ClusterProto, path: &str) -> Result<RingHash> {
    let mut config = RingHash { min_size: 1024, max_size: MAX_RING_SIZE, by_hostname: by_hostname(proto, path)? };
    if let Some(LbConfig::RingHashLbConfig(given)) = &proto.lb_config {
        let path = join_path(path, "ring_hash_lb_config");
        if given.hash_function == HashFunction::MurmurHash2 as i32 {
            return Err(ConfigError::unsupported(join_path(&path, "hash_function"), "MURMUR_HASH_2"));
        }
        for (field, value, target) in [
            ("minimum_ring_size", given.minimum_ring_size, &mut config.min_size),
            ("maximum_ring_size", given.maximum_ring_size, &mut config.max_size),
        ] {
            if let Some(value) = value {
                if value.value > MAX_RING_SIZE {
                    return Err(ConfigError::invalid(
                        join_path(&path, field),
                        format!("value must be less than or equal to {MAX_RING_SIZE}"),
                    ));
                }
                *target = value.value;
            }
        }
        if config.min_size > config.max_size {
            // Envoy's words for it.
            return Err(ConfigError::invalid(
                path,
                format!("ring hash: minimum_ring_size ({}) > maximum_ring_size ({})", config.min_size, config.max_size),
            ));
        }
    }
    Ok(config)
}

/// `maglev_lb_config` and `common_lb_config.consistent_hashing_lb_config`.
fn maglev(proto: &ClusterProto, path: &str) -> Result<Maglev> {
    let mut config = Maglev { table_size: 65537, by_hostname: by_hostname(proto, path)? };
    if let Some(LbConfig::MaglevLbConfig(given)) = &proto.lb_config
        && let Some(size) = given.table_size
    {
        let field = join_path(path, "maglev_lb_config.table_size");
        if size.value > MAX_MAGLEV_TABLE_SIZE {
            return Err(ConfigError::invalid(
                field,
                format!("value must be less than or equal to {MAX_MAGLEV_TABLE_SIZE}"),
            ));
        }
        if !is_prime(size.value) {
            // Envoy's words for it.
            return Err(ConfigError::invalid(field, "The table size of maglev must be prime number"));
        }
        config.table_size = size.value;
    }
    Ok(config)
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// `common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing`, which Envoy
/// takes only on a `STRICT_DNS` cluster, whose hosts have names to hash.
fn by_hostname(proto: &ClusterProto, path: &str) -> Result<bool> {
    let Some(consistent) = proto.common_lb_config.as_ref().and_then(|c| c.consistent_hashing_lb_config.as_ref()) else {
        return Ok(false);
    };
    let path = join_path(path, "common_lb_config.consistent_hashing_lb_config");
    if consistent.hash_balance_factor.is_some() {
        return Err(ConfigError::unsupported(join_path(&path, "hash_balance_factor"), ""));
    }
    let discovery = match &proto.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t).unwrap_or(DiscoveryType::Static),
        _ => DiscoveryType::Static,
    };
    if consistent.use_hostname_for_hashing && discovery != DiscoveryType::StrictDns {
        // Envoy's words for it.
        return Err(ConfigError::invalid(
            join_path(&path, "use_hostname_for_hashing"),
            format!(
                "Cannot use hostname for consistent hashing loadbalancing for cluster of type: 'envoy.cluster.{}'",
                discovery.as_str_name().to_ascii_lowercase()
            ),
        ));
    }
    Ok(consistent.use_hostname_for_hashing)
}

/// The thresholds by priority; as in Envoy, the first entry of a priority counts and a
/// limit left unset keeps its default.
fn circuit_breakers(
    proto: &envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers,
    path: &str,
) -> Result<CircuitBreakers> {
    ensure_only(proto, &["thresholds"], path)?;
    let mut breakers = CircuitBreakers::default();
    let mut seen = [false; 2];
    for (i, t) in proto.thresholds.iter().enumerate() {
        let tpath = format!("{path}.thresholds[{i}]");
        ensure_only(
            t,
            &[
                "priority",
                "max_connections",
                "max_pending_requests",
                "max_requests",
                "max_retries",
                "retry_budget",
                "track_remaining",
            ],
            &tpath,
        )?;
        let (slot, seen) = match RoutingPriority::try_from(t.priority) {
            Ok(RoutingPriority::Default) => (&mut breakers.default, &mut seen[0]),
            Ok(RoutingPriority::High) => (&mut breakers.high, &mut seen[1]),
            Err(_) => {
                return Err(ConfigError::invalid(
                    join_path(&tpath, "priority"),
                    format!("value must be one of the defined enum values, not {}", t.priority),
                ));
            }
        };
        if !std::mem::replace(seen, true) {
            *slot = thresholds(t, &tpath)?;
        }
    }
    Ok(breakers)
}

fn thresholds(t: &ThresholdsProto, path: &str) -> Result<Thresholds> {
    let d = Thresholds::default();
    let retry_budget = match &t.retry_budget {
        Some(budget) => {
            let percent = budget.budget_percent.as_ref().map_or(20.0, |p| p.value);
            if !(0.0..=100.0).contains(&percent) {
                return Err(ConfigError::invalid(
                    join_path(path, "retry_budget.budget_percent.value"),
                    "value must be inside range [0, 100]",
                ));
            }
            Some(RetryBudget { percent, min_concurrency: budget.min_retry_concurrency.map_or(3, |v| v.value) })
        }
        None => None,
    };
    Ok(Thresholds {
        max_connections: t.max_connections.map_or(d.max_connections, |v| v.value),
        max_pending_requests: t.max_pending_requests.map_or(d.max_pending_requests, |v| v.value),
        max_requests: t.max_requests.map_or(d.max_requests, |v| v.value),
        max_retries: t.max_retries.map_or(d.max_retries, |v| v.value),
        retry_budget,
        track_remaining: t.track_remaining,
    })
}

/// An EDS cluster's source (ADS or the per-type server); the service name defaults to
/// the cluster's name.
fn eds(proto: &ClusterProto, path: &str, sources: &XdsSources) -> Result<Discovery> {
    let epath = join_path(path, "eds_cluster_config");
    let Some(config) = &proto.eds_cluster_config else {
        return Err(ConfigError::invalid(&epath, "EDS clusters need eds_cluster_config"));
    };
    ensure_only(config, &["eds_config", "service_name"], &epath)?;
    let Some(source) = &config.eds_config else {
        return Err(ConfigError::invalid(join_path(&epath, "eds_config"), "value is required"));
    };
    let source = config_source(source, sources, &join_path(&epath, "eds_config"))?;
    let service_name = if config.service_name.is_empty() { proto.name.clone() } else { config.service_name.clone() };
    Ok(Discovery::Eds { service_name, source })
}

/// A `STRICT_DNS` or `LOGICAL_DNS` cluster's targets and resolution settings.
#[allow(deprecated)] // the cluster's own DNS fields, which Envoy 1.40 still honours
fn dns(proto: &ClusterProto, path: &str, logical: bool) -> Result<Discovery> {
    let family = match DnsLookupFamily::try_from(proto.dns_lookup_family) {
        Ok(DnsLookupFamily::Auto) => LookupFamily::Auto,
        Ok(DnsLookupFamily::V4Only) => LookupFamily::V4Only,
        Ok(DnsLookupFamily::V6Only) => LookupFamily::V6Only,
        Ok(DnsLookupFamily::V4Preferred) => LookupFamily::V4Preferred,
        Ok(DnsLookupFamily::All) => LookupFamily::All,
        Err(_) => return Err(ConfigError::invalid(join_path(path, "dns_lookup_family"), "unknown value")),
    };
    // PGV: both rates above 1 ms.
    let above_1ms = |d: Duration, field: &str| -> Result<Duration> {
        if d <= Duration::from_millis(1) {
            return Err(ConfigError::invalid(field, "value must be greater than 1ms"));
        }
        Ok(d)
    };
    let refresh_rate = match &proto.dns_refresh_rate {
        Some(d) => {
            let field = join_path(path, "dns_refresh_rate");
            above_1ms(proto::duration(d, &field)?, &field)?
        }
        None => DEFAULT_DNS_REFRESH_RATE,
    };
    let failure_refresh_rate = proto
        .dns_failure_refresh_rate
        .as_ref()
        .map(|rate| {
            let rpath = join_path(path, "dns_failure_refresh_rate");
            proto::backoff_intervals(rate.base_interval.as_ref(), rate.max_interval.as_ref(), &rpath, above_1ms)
        })
        .transpose()?;
    let (targets, overprovisioning_factor) = match &proto.load_assignment {
        Some(la) => {
            let lpath = join_path(path, "load_assignment");
            let Assignment { overprovisioning_factor, .. } = assignment_policy(la, &lpath)?;
            (endpoints(la, &lpath, true)?, overprovisioning_factor)
        }
        None => (Vec::new(), DEFAULT_OVERPROVISIONING_FACTOR),
    };
    let endpoint_count: usize =
        proto.load_assignment.iter().flat_map(|la| &la.endpoints).map(|e| e.lb_endpoints.len()).sum();
    if logical && (proto.load_assignment.as_ref().is_none_or(|la| la.endpoints.len() != 1) || endpoint_count != 1) {
        return Err(ConfigError::invalid(
            join_path(path, "load_assignment"),
            "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint",
        ));
    }
    let targets = targets
        .into_iter()
        .map(|(host, name)| DnsTarget { name: name.expect("DNS endpoints are named"), host })
        .collect();
    Ok(Discovery::Dns(Arc::new(DnsDiscovery {
        logical,
        targets,
        refresh_rate,
        failure_refresh_rate,
        respect_ttl: proto.respect_dns_ttl,
        family,
        overprovisioning_factor,
    })))
}

/// The upstream protocol and common HTTP options, from the typed extension options
/// (preferred) or the deprecated cluster fields.
#[allow(deprecated)] // reads the deprecated fields Envoy still honours
fn upstream_protocol(proto: &ClusterProto, path: &str) -> Result<(UpstreamProtocol, Option<CommonHttpOptions>)> {
    let mut protocol =
        if proto.http2_protocol_options.is_some() { UpstreamProtocol::Http2 } else { UpstreamProtocol::Http1 };
    let mut common = proto.common_http_protocol_options;
    for (key, any) in &proto.typed_extension_protocol_options {
        let field = format!("{path}.typed_extension_protocol_options[{key}]");
        if key != HTTP_PROTOCOL_OPTIONS_KEY && proto::type_name(&any.type_url) != HTTP_PROTOCOL_OPTIONS_KEY {
            return Err(proto::unexpected_type(any, &field));
        }
        let options: UpstreamHttpOptions = proto::unpack(any, &field)?;
        ensure_only(
            &options,
            &["common_http_protocol_options", "explicit_http_config", "use_downstream_protocol_config"],
            &field,
        )?;
        protocol = match &options.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) => match &explicit.protocol_config {
                Some(ProtocolConfig::HttpProtocolOptions(_)) => UpstreamProtocol::Http1,
                Some(ProtocolConfig::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
                Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                    return Err(ConfigError::unsupported(
                        format!("{field}.explicit_http_config.http3_protocol_options"),
                        "",
                    ));
                }
                None => {
                    return Err(ConfigError::invalid(
                        format!("{field}.explicit_http_config"),
                        "value is required: one of http_protocol_options, http2_protocol_options",
                    ));
                }
            },
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => UpstreamProtocol::Downstream,
            Some(UpstreamProtocolOptions::AutoConfig(_)) => {
                return Err(ConfigError::unsupported(format!("{field}.auto_config"), ""));
            }
            None => protocol,
        };
        if options.common_http_protocol_options.is_some() {
            common = options.common_http_protocol_options;
        }
    }
    if let Some(c) = &common {
        ensure_only(
            c,
            &["idle_timeout", "max_requests_per_connection"],
            &format!("{path}.common_http_protocol_options"),
        )?;
    }
    Ok((protocol, common))
}

/// A load assignment's hosts and policy (from a cluster, or from EDS).
pub fn assignment(la: &ClusterLoadAssignment, path: &str) -> Result<Assignment> {
    let policy = assignment_policy(la, path)?;
    let hosts = endpoints(la, path, false)?.into_iter().map(|(host, _)| host).collect();
    Ok(Assignment { hosts, ..policy })
}

/// A load assignment's policy, with no hosts.
fn assignment_policy(la: &ClusterLoadAssignment, path: &str) -> Result<Assignment> {
    // Checked field by field rather than by reflection: EDS delivers these by the
    // ten thousand (every field of ClusterLoadAssignment and its Policy is named here).
    if !la.named_endpoints.is_empty() {
        return Err(ConfigError::unsupported(join_path(path, "named_endpoints"), ""));
    }
    let overprovisioning_factor = match &la.policy {
        Some(policy) => {
            let ppath = join_path(path, "policy");
            if !policy.drop_overloads.is_empty() {
                return Err(ConfigError::unsupported(join_path(&ppath, "drop_overloads"), ""));
            }
            if policy.endpoint_stale_after.is_some() {
                return Err(ConfigError::unsupported(join_path(&ppath, "endpoint_stale_after"), ""));
            }
            match &policy.overprovisioning_factor {
                Some(f) if f.value == 0 => {
                    return Err(ConfigError::invalid(
                        join_path(&ppath, "overprovisioning_factor"),
                        "value must be greater than 0",
                    ));
                }
                Some(f) => f.value,
                None => DEFAULT_OVERPROVISIONING_FACTOR,
            }
        }
        None => DEFAULT_OVERPROVISIONING_FACTOR,
    };
    Ok(Assignment { hosts: Vec::new(), overprovisioning_factor })
}

/// A load assignment's endpoints. With `names` (DNS clusters) an address may be a name to
/// resolve, which comes beside its host (whose address then has only the port).
fn endpoints(la: &ClusterLoadAssignment, path: &str, names: bool) -> Result<Vec<(HostSpec, Option<String>)>> {
    let mut out = Vec::new();
    for (i, locality_endpoints) in la.endpoints.iter().enumerate() {
        let lpath = format!("{path}.endpoints[{i}]");
        // Every LocalityLbEndpoints field is named here (see `assignment`).
        use envoy_types::pb::envoy::config::endpoint::v3::locality_lb_endpoints::LbConfig;
        #[allow(deprecated)] // naming the deprecated variant to refuse it
        let lb_config = match &locality_endpoints.lb_config {
            Some(LbConfig::LoadBalancerEndpoints(_)) => Some("load_balancer_endpoints"),
            Some(LbConfig::LedsClusterLocalityConfig(_)) => Some("leds_cluster_locality_config"),
            None => None,
        };
        for (field, set) in [
            ("metadata", locality_endpoints.metadata.is_some()),
            ("proximity", locality_endpoints.proximity.is_some()),
            (lb_config.unwrap_or_default(), lb_config.is_some()),
        ] {
            if set {
                return Err(ConfigError::unsupported(format!("{lpath}.{field}"), ""));
            }
        }
        let locality = locality_endpoints.locality.clone().unwrap_or_default();
        let locality = Arc::new(HostLocality {
            region: locality.region,
            zone: locality.zone,
            sub_zone: locality.sub_zone,
            weight: locality_endpoints.load_balancing_weight.map_or(0, |w| w.value),
        });
        for (j, lb_endpoint) in locality_endpoints.lb_endpoints.iter().enumerate() {
            let epath = format!("{lpath}.lb_endpoints[{j}]");
            // Endpoints come by the hundred thousand over EDS, so their fields are checked
            // directly rather than through `ensure_only`'s reflection. Every LbEndpoint field
            // is handled below; of Endpoint's, health_check_config and additional_addresses
            // are not.
            use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
            let endpoint = match &lb_endpoint.host_identifier {
                Some(HostIdentifier::Endpoint(e)) => e,
                Some(HostIdentifier::EndpointName(_)) => {
                    return Err(ConfigError::unsupported(format!("{epath}.endpoint_name"), ""));
                }
                None => return Err(ConfigError::invalid(epath, "endpoint is required")),
            };
            if endpoint.health_check_config.is_some() {
                return Err(ConfigError::unsupported(format!("{epath}.endpoint.health_check_config"), ""));
            }
            if !endpoint.additional_addresses.is_empty() {
                return Err(ConfigError::unsupported(format!("{epath}.endpoint.additional_addresses"), ""));
            }
            let apath = format!("{epath}.endpoint.address");
            // A DNS cluster's address is a name to resolve, or an IP literal that resolves to
            // itself; either way the text is the host's name.
            let (address, name) = match socket_parts(endpoint.address.as_ref(), &apath)? {
                (text, port) if names => {
                    let ip = text.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
                    (SocketAddr::new(ip, port), Some(text.to_owned()))
                }
                (text, port) => (ip_address(text, port, &apath)?, None),
            };
            let weight = match &lb_endpoint.load_balancing_weight {
                Some(w) if w.value == 0 => {
                    return Err(ConfigError::invalid(
                        format!("{epath}.load_balancing_weight"),
                        "value must be greater than or equal to 1",
                    ));
                }
                Some(w) => w.value,
                None => 1,
            };
            let health_status = HealthStatus::try_from(lb_endpoint.health_status).unwrap_or(HealthStatus::Unknown);
            // A DNS host's hostname is its name unless the endpoint gives one.
            let hostname = match (&name, endpoint.hostname.is_empty()) {
                (Some(name), true) => name.clone(),
                _ => endpoint.hostname.clone(),
            };
            let host = HostSpec {
                address,
                weight,
                priority: locality_endpoints.priority,
                locality: locality.clone(),
                health_status,
                hostname,
            };
            out.push((host, name));
        }
    }
    Ok(out)
}

/// A `socket_address` with an IP literal, as STATIC clusters and listeners need.
pub fn socket_address(address: Option<&Address>, path: &str) -> Result<SocketAddr> {
    let (text, port) = socket_parts(address, path)?;
    ip_address(text, port, path)
}

/// An IP literal and port as an address; `path` is the `Address`'s.
fn ip_address(text: &str, port: u16, path: &str) -> Result<SocketAddr> {
    let ip: std::net::IpAddr = text.parse().map_err(|_| {
        ConfigError::invalid(format!("{path}.socket_address.address"), format!("malformed IP address: {text}"))
    })?;
    Ok(SocketAddr::new(ip, port))
}

/// A `socket_address`'s address text (an IP or, for DNS clusters, a name) and port.
fn socket_parts<'a>(address: Option<&'a Address>, path: &str) -> Result<(&'a str, u16)> {
    use envoy_types::pb::envoy::config::core::v3::address::Address as Kind;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    let Some(address) = address else {
        return Err(ConfigError::invalid(path, "value is required"));
    };
    let socket = match &address.address {
        Some(Kind::SocketAddress(s)) => s,
        Some(Kind::Pipe(_)) => return Err(ConfigError::unsupported(format!("{path}.pipe"), "")),
        Some(Kind::EnvoyInternalAddress(_)) => {
            return Err(ConfigError::unsupported(format!("{path}.envoy_internal_address"), ""));
        }
        None => return Err(ConfigError::invalid(path, "value is required")),
    };
    let spath = format!("{path}.socket_address");
    // Checked directly (not by reflection): addresses are parsed for every endpoint.
    for (field, value) in
        [("resolver_name", &socket.resolver_name), ("network_namespace_filepath", &socket.network_namespace_filepath)]
    {
        if !value.is_empty() {
            return Err(ConfigError::unsupported(format!("{spath}.{field}"), ""));
        }
    }
    let port = match &socket.port_specifier {
        Some(PortSpecifier::PortValue(p)) if *p <= 65535 => *p as u16,
        Some(PortSpecifier::PortValue(_)) => {
            return Err(ConfigError::invalid(
                format!("{spath}.port_value"),
                "value must be less than or equal to 65535",
            ));
        }
        Some(PortSpecifier::NamedPort(_)) => return Err(ConfigError::unsupported(format!("{spath}.named_port"), "")),
        None => 0,
    };
    Ok((&socket.address, port))
}
