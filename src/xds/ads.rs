//! The ADS client (state of the world). One task on the control thread owns the stream;
//! it reconnects with jittered exponential backoff and re-subscribes with the last
//! accepted versions, while the last good state keeps serving.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as ListenerProto;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use tokio::sync::mpsc;

use super::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use crate::config::xds::AdsSpec;
use crate::listener::ListenerManager;
use crate::stats::{Counter, Gauge, Store};
use crate::upstream::ClusterManager;

/// gRPC's INVALID_ARGUMENT, the code Envoy puts in a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the client remembers of one resource type across reconnects.
#[derive(Default)]
struct TypeState {
    /// The last version ACKed.
    version: String,
    /// The nonce of the last response seen.
    nonce: String,
    /// Subscribed names; empty for a wildcard subscription.
    names: BTreeSet<String>,
}

/// `<prefix>.update_*` stats of one subscription, Envoy's names.
struct SubscriptionStats {
    update_attempt: Counter,
    update_success: Counter,
    update_rejected: Counter,
    update_failure: Counter,
    version: Gauge,
}

impl SubscriptionStats {
    fn new(store: &Store, prefix: &str) -> SubscriptionStats {
        let c = |s: &str| store.counter(&format!("{prefix}.{s}"));
        SubscriptionStats {
            update_attempt: c("update_attempt"),
            update_success: c("update_success"),
            update_rejected: c("update_rejected"),
            update_failure: c("update_failure"),
            version: store.gauge(&format!("{prefix}.version")),
        }
    }
}

/// The ADS stream client.
pub struct AdsClient {
    spec: AdsSpec,
    node: Node,
    /// The ADS cluster's hosts; each (re)connect takes the next one.
    targets: Vec<SocketAddr>,
    clusters: Arc<ClusterManager>,
    listeners: Arc<ListenerManager>,
    cds: TypeState,
    eds: TypeState,
    lds: TypeState,
    rds: TypeState,
    cds_stats: SubscriptionStats,
    eds_stats: SubscriptionStats,
    lds_stats: SubscriptionStats,
    rds_stats: SubscriptionStats,
    /// LDS is configured; it is requested once the initial clusters are warm.
    lds_wanted: bool,
    lds_requested: bool,
    lds_received: bool,
    connected_state: Gauge,
    /// Set after the first CDS response has been applied.
    cds_received: bool,
}

/// Why a stream ended.
enum StreamEnd {
    Connect(String),
    Stream(tonic::Status),
    Closed,
}

impl std::fmt::Display for StreamEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamEnd::Connect(e) => write!(f, "connect failed: {e}"),
            StreamEnd::Stream(status) => write!(f, "stream failed: {status}"),
            StreamEnd::Closed => f.write_str("closed by the control plane"),
        }
    }
}

impl AdsClient {
    /// A client for `spec`, dialing `targets` (the ADS cluster's hosts).
    pub fn new(
        spec: AdsSpec,
        node: Node,
        targets: Vec<SocketAddr>,
        clusters: Arc<ClusterManager>,
        listeners: Arc<ListenerManager>,
        lds_wanted: bool,
    ) -> AdsClient {
        let store = clusters.store().clone();
        AdsClient {
            spec,
            node,
            targets,
            cds_stats: SubscriptionStats::new(&store, "cluster_manager.cds"),
            eds_stats: SubscriptionStats::new(&store, "cluster_manager.eds"),
            lds_stats: SubscriptionStats::new(&store, "listener_manager.lds"),
            rds_stats: SubscriptionStats::new(&store, "listener_manager.rds"),
            connected_state: store.gauge("control_plane.connected_state"),
            clusters,
            listeners,
            cds: TypeState::default(),
            eds: TypeState::default(),
            lds: TypeState::default(),
            rds: TypeState::default(),
            lds_wanted,
            lds_requested: false,
            lds_received: false,
            cds_received: false,
        }
    }

    /// Runs forever: connect, stream, and on any failure back off and reconnect.
    pub async fn run(mut self) {
        let mut attempt: u32 = 0;
        let mut target = 0;
        loop {
            let Some(address) = self.targets.get(target % self.targets.len().max(1)).copied() else {
                tracing::error!("the ADS cluster has no hosts");
                return;
            };
            target += 1;
            let started = tokio::time::Instant::now();
            let end = self.stream(address).await;
            self.connected_state.set(0);
            tracing::warn!(%address, %end, "ADS stream ended");
            if !matches!(end, StreamEnd::Closed) {
                self.cds_stats.update_failure.inc();
            }
            // A stream that lived a while resets the backoff.
            if started.elapsed() > BACKOFF_MAX {
                attempt = 0;
            }
            let ceiling = BACKOFF_BASE.saturating_mul(1 << attempt.min(6)).min(BACKOFF_MAX);
            attempt += 1;
            // Full jitter, as Envoy's JitteredExponentialBackOffStrategy.
            tokio::time::sleep(ceiling.mul_f64(fastrand::f64())).await;
        }
    }

    fn request(&self, type_url: &str, state: &TypeState, error: Option<String>, first: bool) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: state.version.clone(),
            node: (first || !self.spec.set_node_on_first_message_only).then(|| self.node.clone()),
            resource_names: state.names.iter().cloned().collect(),
            type_url: type_url.to_owned(),
            response_nonce: state.nonce.clone(),
            error_detail: error.map(|message| Status { code: INVALID_ARGUMENT, message, details: Vec::new() }),
            ..Default::default()
        }
    }

    async fn stream(&mut self, address: SocketAddr) -> StreamEnd {
        let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{address}")) {
            Ok(e) => e.connect_timeout(Duration::from_secs(5)).tcp_nodelay(true),
            Err(e) => return StreamEnd::Connect(e.to_string()),
        };
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(e) => return StreamEnd::Connect(e.to_string()),
        };
        // xDS responses can be large (tens of MB for big meshes): no small message limit.
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let (tx, rx) = mpsc::unbounded_channel();
        // Every stream starts with CDS (wildcard), and EDS when clusters already need it.
        let _ = tx.send(self.request(CLUSTER_TYPE, &self.cds, None, true));
        if !self.eds.names.is_empty() {
            let _ = tx.send(self.request(ENDPOINT_TYPE, &self.eds, None, false));
        }
        if self.lds_requested {
            let _ = tx.send(self.request(LISTENER_TYPE, &self.lds, None, false));
        }
        if !self.rds.names.is_empty() {
            let _ = tx.send(self.request(ROUTE_TYPE, &self.rds, None, false));
        }
        let outbound = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut inbound = match client.stream_aggregated_resources(outbound).await {
            Ok(response) => response.into_inner(),
            Err(status) => return StreamEnd::Stream(status),
        };
        self.connected_state.set(1);
        loop {
            let response = match inbound.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return StreamEnd::Closed,
                Err(status) => return StreamEnd::Stream(status),
            };
            let reply = match response.type_url.as_str() {
                CLUSTER_TYPE => self.on_clusters(response),
                ENDPOINT_TYPE => self.on_endpoints(response),
                LISTENER_TYPE => self.on_listeners(response),
                ROUTE_TYPE => self.on_routes(response),
                other => {
                    tracing::warn!(type_url = other, "ignoring a response of a type legate did not ask for");
                    continue;
                }
            };
            for request in reply {
                if tx.send(request).is_err() {
                    return StreamEnd::Closed;
                }
            }
        }
    }

    /// Applies a CDS response; replies with its ACK or NACK, then any EDS subscription change.
    fn on_clusters(&mut self, response: DiscoveryResponse) -> Vec<DiscoveryRequest> {
        self.cds_stats.update_attempt.inc();
        self.cds.nonce = response.nonce.clone();
        let result = decode_all::<ClusterProto>(&response.resources, CLUSTER_TYPE)
            .and_then(|clusters| self.clusters.apply_cds(&response.version_info, clusters));
        let mut out = vec![self.ack_or_nack(CLUSTER_TYPE, &response.version_info, result)];
        self.cds_received = true;
        let names = self.clusters.eds_service_names();
        if names != self.eds.names {
            self.eds.names = names;
            out.push(self.request(ENDPOINT_TYPE, &self.eds, None, false));
        }
        out.extend(self.check_initialized());
        out
    }

    /// Applies an EDS response; replies with its ACK or NACK.
    fn on_endpoints(&mut self, response: DiscoveryResponse) -> Vec<DiscoveryRequest> {
        self.eds_stats.update_attempt.inc();
        self.eds.nonce = response.nonce.clone();
        let result = decode_all::<ClusterLoadAssignment>(&response.resources, ENDPOINT_TYPE)
            .and_then(|assignments| self.clusters.apply_eds(assignments));
        let mut out = vec![self.ack_or_nack(ENDPOINT_TYPE, &response.version_info, result)];
        out.extend(self.check_initialized());
        out
    }

    /// Applies an LDS response; replies with its ACK or NACK.
    fn on_listeners(&mut self, response: DiscoveryResponse) -> Vec<DiscoveryRequest> {
        self.lds_stats.update_attempt.inc();
        self.lds.nonce = response.nonce.clone();
        let result = decode_all::<ListenerProto>(&response.resources, LISTENER_TYPE)
            .and_then(|listeners| self.listeners.apply_lds(&response.version_info, listeners));
        let mut out = vec![self.ack_or_nack(LISTENER_TYPE, &response.version_info, result)];
        self.lds_received = true;
        let names = self.listeners.rds().names();
        if names != self.rds.names {
            self.rds.names = names;
            out.push(self.request(ROUTE_TYPE, &self.rds, None, false));
        }
        self.check_listeners_initialized();
        out
    }

    /// Applies an RDS response; replies with its ACK or NACK, and starts listeners whose
    /// routes arrived.
    fn on_routes(&mut self, response: DiscoveryResponse) -> Vec<DiscoveryRequest> {
        self.rds_stats.update_attempt.inc();
        self.rds.nonce = response.nonce.clone();
        let result = decode_all::<RouteConfiguration>(&response.resources, ROUTE_TYPE)
            .and_then(|configs| self.listeners.rds().apply(&response.version_info, configs));
        let reply = self.ack_or_nack(ROUTE_TYPE, &response.version_info, result);
        if let Err(e) = self.listeners.promote_warm() {
            tracing::error!(error = %e, "cannot start a listener whose routes arrived");
        }
        self.check_listeners_initialized();
        vec![reply]
    }

    /// Listener initialization ends once the first LDS response is in (accepted or not,
    /// as Envoy's init manager counts it) and no listener waits for its routes.
    fn check_listeners_initialized(&self) {
        if self.lds_received && !self.listeners.is_warming() {
            self.listeners.mark_initialized();
        }
    }

    fn ack_or_nack(&mut self, type_url: &str, version: &str, result: Result<(), String>) -> DiscoveryRequest {
        let (state, stats) = match type_url {
            CLUSTER_TYPE => (&mut self.cds, &self.cds_stats),
            LISTENER_TYPE => (&mut self.lds, &self.lds_stats),
            ROUTE_TYPE => (&mut self.rds, &self.rds_stats),
            _ => (&mut self.eds, &self.eds_stats),
        };
        let error = match result {
            Ok(()) => {
                state.version = version.to_owned();
                stats.update_success.inc();
                stats.version.set(version_hash(version));
                None
            }
            Err(message) => {
                tracing::warn!(type_url, version, %message, "rejecting xDS update");
                stats.update_rejected.inc();
                Some(message)
            }
        };
        let state = match type_url {
            CLUSTER_TYPE => &self.cds,
            LISTENER_TYPE => &self.lds,
            ROUTE_TYPE => &self.rds,
            _ => &self.eds,
        };
        self.request(type_url, state, error, false)
    }

    /// Cluster initialization ends once the first CDS round is applied and nothing is
    /// warming; then, as Envoy orders it, LDS is requested.
    fn check_initialized(&mut self) -> Option<DiscoveryRequest> {
        if !self.cds_received || self.clusters.is_warming() {
            return None;
        }
        self.clusters.mark_initialized();
        if self.lds_wanted && !self.lds_requested {
            self.lds_requested = true;
            return Some(self.request(LISTENER_TYPE, &self.lds, None, false));
        }
        None
    }
}

/// Decodes every resource of a response as `M`; one that fails rejects the response.
fn decode_all<M: Message + Default>(resources: &[Any], type_url: &str) -> Result<Vec<M>, String> {
    resources
        .iter()
        .enumerate()
        .map(|(i, any)| {
            if any.type_url != type_url {
                return Err(format!("resources[{i}]: type {} in a response of type {type_url}", any.type_url));
            }
            M::decode(any.value.as_slice()).map_err(|e| format!("resources[{i}]: cannot decode: {e}"))
        })
        .collect()
}

/// Envoy's `version` gauge holds a hash of the accepted `version_info` (FNV-1a here,
/// kept positive for the signed gauge).
fn version_hash(version: &str) -> i64 {
    let hash = version.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (hash >> 1) as i64
}
