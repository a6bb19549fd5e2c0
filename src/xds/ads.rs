//! The ADS client, state of the world (`GRPC`) or incremental (`DELTA_GRPC`). One task on
//! the control thread owns the stream; it reconnects with jittered exponential backoff and
//! re-subscribes with the last accepted versions, while the last good state keeps serving.
//!
//! Both wires share one apply path: a delta response is folded into the set of resources
//! the client holds, and wildcard types (clusters, listeners) are applied as that whole
//! set, so the managers see state-of-the-world semantics either way.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener as ListenerProto;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient;
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_client::RouteDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use futures_util::stream::SelectAll;
use futures_util::{Stream, StreamExt};
use prost::Message;
use std::pin::Pin;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use super::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, decode_each};
use crate::config::Rejected;
use crate::config::xds::GrpcSource;
use crate::listener::ListenerManager;
use crate::stats::{Counter, Gauge, Store};
use crate::upstream::{CdsRemoval, ClusterManager};

/// gRPC's INVALID_ARGUMENT, the code Envoy puts in a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The resource types legate subscribes to, in the order Envoy starts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Cluster,
    Endpoint,
    Listener,
    Route,
}

const KINDS: [Kind; 4] = [Kind::Cluster, Kind::Endpoint, Kind::Listener, Kind::Route];

impl Kind {
    fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => CLUSTER_TYPE,
            Kind::Endpoint => ENDPOINT_TYPE,
            Kind::Listener => LISTENER_TYPE,
            Kind::Route => ROUTE_TYPE,
        }
    }

    fn from_url(type_url: &str) -> Option<Kind> {
        KINDS.into_iter().find(|k| k.type_url() == type_url)
    }

    /// Wildcard types get every resource; named ones only those subscribed.
    fn is_wildcard(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// `<prefix>.update_*` stats of one subscription, Envoy's names.
struct SubscriptionStats {
    update_attempt: Counter,
    update_success: Counter,
    update_rejected: Counter,
    version: Gauge,
    update_time: Gauge,
}

impl SubscriptionStats {
    fn new(store: &Store, prefix: &str) -> SubscriptionStats {
        let c = |s: &str| store.counter(&format!("{prefix}.{s}"));
        SubscriptionStats {
            update_attempt: c("update_attempt"),
            update_success: c("update_success"),
            update_rejected: c("update_rejected"),
            version: store.gauge(&format!("{prefix}.version")),
            update_time: store.gauge(&format!("{prefix}.update_time")),
        }
    }
}

/// What the client remembers of one resource type across reconnects.
struct TypeState {
    /// Subscribed (a request was sent on some stream).
    active: bool,
    /// The last version accepted (`version_info`, or delta's `system_version_info`).
    version: String,
    /// The nonce of the last response seen on the current stream.
    nonce: String,
    /// Subscribed names of a named type.
    names: BTreeSet<String>,
    /// Delta: the resources held, by name, with their versions.
    held: BTreeMap<String, (String, Any)>,
    stats: SubscriptionStats,
}

/// A subscription change to announce.
struct Change {
    kind: Kind,
    subscribe: Vec<String>,
    unsubscribe: Vec<String>,
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

/// The xDS client: one ADS stream, or one stream per resource type to the same server.
pub struct AdsClient {
    spec: GrpcSource,
    /// ADS (one stream for every type) rather than per-type streams.
    aggregated: bool,
    node: Node,
    /// The ADS cluster's hosts; each (re)connect takes the next one.
    targets: Vec<String>,
    clusters: Arc<ClusterManager>,
    listeners: Arc<ListenerManager>,
    types: [TypeState; 4],
    connected_state: Gauge,
    update_failure: Counter,
    /// LDS is configured; it is requested once the initial clusters are warm.
    lds_wanted: bool,
    cds_received: bool,
    lds_received: bool,
}

impl AdsClient {
    /// A client for `spec`, dialing `targets` (`http://` URIs: the ADS cluster's hosts, or `google_grpc`'s target).
    pub fn new(
        spec: GrpcSource,
        aggregated: bool,
        node: Node,
        targets: Vec<String>,
        clusters: Arc<ClusterManager>,
        listeners: Arc<ListenerManager>,
        lds_wanted: bool,
    ) -> AdsClient {
        let store = clusters.store().clone();
        // Envoy's other control-plane stats; legate neither rate-limits nor queues its
        // requests, so they are registered and stay zero.
        store.counter("control_plane.rate_limit_enforced");
        store.gauge("control_plane.pending_requests");
        let state = |prefix: &str, active: bool| TypeState {
            active,
            version: String::new(),
            nonce: String::new(),
            names: BTreeSet::new(),
            held: BTreeMap::new(),
            stats: SubscriptionStats::new(&store, prefix),
        };
        AdsClient {
            types: [
                state("cluster_manager.cds", true),
                state("cluster_manager.eds", false),
                state("listener_manager.lds", false),
                state("listener_manager.rds", false),
            ],
            connected_state: store.gauge("control_plane.connected_state"),
            update_failure: store.counter("cluster_manager.cds.update_failure"),
            spec,
            aggregated,
            node,
            targets,
            clusters,
            listeners,
            lds_wanted,
            cds_received: false,
            lds_received: false,
        }
    }

    fn state(&mut self, kind: Kind) -> &mut TypeState {
        &mut self.types[kind.index()]
    }

    /// Runs forever: connect, stream, and on any failure back off and reconnect.
    pub async fn run(mut self) {
        let mut attempt: u32 = 0;
        let mut target = 0;
        loop {
            let Some(address) = self.targets.get(target % self.targets.len().max(1)).cloned() else {
                tracing::error!("the ADS cluster has no hosts");
                return;
            };
            target += 1;
            // Nonces belong to a stream: a new stream's first requests carry none, or a
            // control plane would take them for stale responses' ACKs.
            for state in &mut self.types {
                state.nonce.clear();
            }
            let started = tokio::time::Instant::now();
            let end = match self.connect(&address).await {
                Ok(channel) if self.spec.delta => self.stream_delta(channel).await,
                Ok(channel) => self.stream_sotw(channel).await,
                Err(e) => e,
            };
            self.connected_state.set(0);
            tracing::warn!(%address, %end, "ADS stream ended");
            if !matches!(end, StreamEnd::Closed) {
                self.update_failure.inc();
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

    async fn connect(&self, uri: &str) -> Result<Channel, StreamEnd> {
        let endpoint = tonic::transport::Endpoint::from_shared(uri.to_owned())
            .map_err(|e| StreamEnd::Connect(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        endpoint.connect().await.map_err(|e| StreamEnd::Connect(e.to_string()))
    }

    /// The link (stream) a type's requests go on: the one ADS stream, or the type's own.
    fn link(&self, kind: Kind) -> usize {
        if self.aggregated { 0 } else { kind.index() }
    }

    /// Whether a request carries the node: the stream's first, or all of them unless
    /// `set_node_on_first_message_only`.
    fn node_for(&self, first: &mut bool) -> Option<Node> {
        let send = *first || !self.spec.set_node_on_first_message_only;
        *first = false;
        send.then(|| self.node.clone())
    }

    async fn stream_sotw(&mut self, channel: Channel) -> StreamEnd {
        let links = Links::new(self.aggregated);
        let mut first = vec![true; links.senders.len()];
        for kind in KINDS {
            let state = &self.types[kind.index()];
            if state.active && (kind.is_wildcard() || !state.names.is_empty()) {
                let link = self.link(kind);
                let request = self.sotw_request(kind, None, &mut first[link]);
                links.send(link, request);
            }
        }
        let opened = open_links!(
            links,
            channel,
            self.aggregated,
            stream_aggregated_resources,
            stream_clusters,
            stream_endpoints,
            stream_listeners,
            stream_routes
        );
        let (links, mut inbound) = match opened {
            Ok(opened) => opened,
            Err(status) => return StreamEnd::Stream(status),
        };
        self.connected_state.set(1);
        let mut settled = self.clusters.settled();
        loop {
            let next: Option<DiscoveryResponse> = match next_event(&mut inbound, &mut settled).await {
                Ok(next) => next,
                Err(end) => return end,
            };
            let mut ok = true;
            if let Some(response) = next {
                let Some(kind) = Kind::from_url(&response.type_url) else {
                    tracing::warn!(type_url = %response.type_url, "ignoring a response of a type legate did not ask for");
                    continue;
                };
                self.state(kind).nonce = response.nonce.clone();
                let result = self.apply(kind, &response.version_info, &response.resources, None);
                let error = self.record(kind, &response.version_info, result);
                let link = self.link(kind);
                ok = links.send(link, self.sotw_request(kind, error, &mut first[link]));
            }
            for change in self.follow_ups() {
                let link = self.link(change.kind);
                ok &= links.send(link, self.sotw_request(change.kind, None, &mut first[link]));
            }
            if !ok {
                return StreamEnd::Closed;
            }
        }
    }

    fn sotw_request(&self, kind: Kind, error: Option<String>, first: &mut bool) -> DiscoveryRequest {
        let state = &self.types[kind.index()];
        DiscoveryRequest {
            version_info: state.version.clone(),
            node: self.node_for(first),
            resource_names: state.names.iter().cloned().collect(),
            type_url: kind.type_url().to_owned(),
            response_nonce: state.nonce.clone(),
            error_detail: error.map(nack_status),
            ..Default::default()
        }
    }

    async fn stream_delta(&mut self, channel: Channel) -> StreamEnd {
        let links = Links::new(self.aggregated);
        let mut first = vec![true; links.senders.len()];
        for kind in KINDS {
            let state = &self.types[kind.index()];
            if state.active && (kind.is_wildcard() || !state.names.is_empty()) {
                let link = self.link(kind);
                // A new stream re-subscribes and says what it holds, so the server sends
                // only what changed.
                let request = DeltaDiscoveryRequest {
                    node: self.node_for(&mut first[link]),
                    type_url: kind.type_url().to_owned(),
                    resource_names_subscribe: if kind.is_wildcard() {
                        vec!["*".to_owned()]
                    } else {
                        state.names.iter().cloned().collect()
                    },
                    initial_resource_versions: state.held.iter().map(|(n, (v, _))| (n.clone(), v.clone())).collect(),
                    ..Default::default()
                };
                links.send(link, request);
            }
        }
        let opened = open_links!(
            links,
            channel,
            self.aggregated,
            delta_aggregated_resources,
            delta_clusters,
            delta_endpoints,
            delta_listeners,
            delta_routes
        );
        let (links, mut inbound) = match opened {
            Ok(opened) => opened,
            Err(status) => return StreamEnd::Stream(status),
        };
        self.connected_state.set(1);
        let mut settled = self.clusters.settled();
        loop {
            let next: Option<DeltaDiscoveryResponse> = match next_event(&mut inbound, &mut settled).await {
                Ok(next) => next,
                Err(end) => return end,
            };
            let mut ok = true;
            if let Some(response) = next {
                let Some(kind) = Kind::from_url(&response.type_url) else {
                    tracing::warn!(type_url = %response.type_url, "ignoring a response of a type legate did not ask for");
                    continue;
                };
                let error =
                    self.on_delta(kind, response.resources, response.removed_resources, &response.system_version_info);
                let link = self.link(kind);
                ok = links.send(
                    link,
                    DeltaDiscoveryRequest {
                        node: self.node_for(&mut first[link]),
                        type_url: kind.type_url().to_owned(),
                        response_nonce: response.nonce,
                        error_detail: error.map(nack_status),
                        ..Default::default()
                    },
                );
            }
            for change in self.follow_ups() {
                let link = self.link(change.kind);
                ok &= links.send(
                    link,
                    DeltaDiscoveryRequest {
                        node: self.node_for(&mut first[link]),
                        type_url: change.kind.type_url().to_owned(),
                        resource_names_subscribe: if change.kind.is_wildcard() && change.subscribe.is_empty() {
                            vec!["*".to_owned()]
                        } else {
                            change.subscribe
                        },
                        resource_names_unsubscribe: change.unsubscribe,
                        ..Default::default()
                    },
                );
            }
            if !ok {
                return StreamEnd::Closed;
            }
        }
    }

    /// Folds a delta response into the held set and applies it. Rejected resources keep
    /// their previous version (or stay absent); the rest are held from now on.
    fn on_delta(
        &mut self,
        kind: Kind,
        resources: Vec<envoy_types::pb::envoy::service::discovery::v3::Resource>,
        removed: Vec<String>,
        system_version: &str,
    ) -> Option<String> {
        let mut held = std::mem::take(&mut self.state(kind).held);
        // What each change replaced, to put back for the resources the manager rejects
        // (not a copy of the whole held set: with 10 000 clusters that would be most of
        // the cost of a one-resource update).
        let mut replaced = Vec::with_capacity(resources.len() + removed.len());
        let mut updated = Vec::with_capacity(resources.len());
        for resource in resources {
            let any = resource.resource.unwrap_or_default();
            updated.push(any.clone());
            let old = held.insert(resource.name.clone(), (resource.version, any));
            replaced.push((resource.name, old));
        }
        for name in &removed {
            let old = held.remove(name);
            replaced.push((name.clone(), old));
        }
        // Clusters apply as the change itself (at 10 000 clusters, re-applying the whole
        // held set would cost a full CDS update per changed cluster). Listeners, the other
        // wildcard type, apply as the whole held set (removal is absence); named types
        // apply just what changed.
        let result = match kind {
            Kind::Cluster => self.apply(kind, system_version, &updated, Some(&removed)),
            Kind::Listener => {
                let batch: Vec<Any> = held.values().map(|(_, any)| any.clone()).collect();
                self.apply(kind, system_version, &batch, None)
            }
            Kind::Endpoint | Kind::Route => self.apply(kind, system_version, &updated, None),
        };
        if let Err(rejected) = &result {
            let rejected: BTreeSet<&str> = rejected.0.iter().map(|(name, _)| name.as_str()).collect();
            // Newest first, so a name changed twice in one response ends at its old value.
            for (name, old) in replaced.into_iter().rev().filter(|(name, _)| rejected.contains(name.as_str())) {
                match old {
                    Some(old) => held.insert(name, old),
                    None => held.remove(&name),
                };
            }
        }
        self.state(kind).held = held;
        self.record(kind, system_version, result)
    }

    /// Hands a batch to the manager that owns the type. `removed` is a delta update's
    /// removed clusters; without it, a CDS batch is the state of the world.
    fn apply(
        &mut self,
        kind: Kind,
        version: &str,
        resources: &[Any],
        removed: Option<&[String]>,
    ) -> Result<(), Rejected> {
        self.state(kind).stats.update_attempt.inc();
        let result = match kind {
            Kind::Cluster => {
                self.clusters.apply_cds(version, resources, removed.map_or(CdsRemoval::Unnamed, CdsRemoval::Named))
            }
            Kind::Endpoint => self.clusters.apply_eds(resources),
            Kind::Listener => decode_all(resources, LISTENER_TYPE)
                .and_then(|l: Vec<ListenerProto>| self.listeners.apply_lds(version, l)),
            Kind::Route => decode_all(resources, ROUTE_TYPE)
                .and_then(|r: Vec<RouteConfiguration>| self.listeners.rds().apply(version, r)),
        };
        match kind {
            Kind::Cluster => self.cds_received = true,
            // Envoy's init counts the first LDS response, accepted or not.
            Kind::Listener => self.lds_received = true,
            Kind::Route => {
                if let Err(e) = self.listeners.promote_warm() {
                    tracing::error!(error = %e, "cannot start a listener whose routes arrived");
                }
            }
            Kind::Endpoint => {}
        }
        result
    }

    /// Advances the version on success and counts the outcome; returns the NACK message.
    fn record(&mut self, kind: Kind, version: &str, result: Result<(), Rejected>) -> Option<String> {
        let state = self.state(kind);
        match result {
            Ok(()) => {
                state.version = version.to_owned();
                state.stats.update_success.inc();
                state.stats.version.set(version_hash(version));
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                state.stats.update_time.set(now.as_millis() as i64);
                None
            }
            Err(rejected) => {
                let message = rejected.to_string();
                tracing::warn!(type_url = kind.type_url(), version, %message, "rejecting xDS update");
                state.stats.update_rejected.inc();
                Some(message)
            }
        }
    }

    /// What changes after an update: EDS and RDS names follow the clusters and listeners;
    /// initialization advances (clusters, then LDS, then listeners), in Envoy's order.
    fn follow_ups(&mut self) -> Vec<Change> {
        let mut changes = Vec::new();
        for (kind, wanted) in
            [(Kind::Endpoint, self.clusters.eds_service_names()), (Kind::Route, self.listeners.rds().names())]
        {
            let state = self.state(kind);
            if wanted != state.names {
                let subscribe = wanted.difference(&state.names).cloned().collect();
                let unsubscribe = state.names.difference(&wanted).cloned().collect();
                state.names = wanted;
                state.active = true;
                changes.push(Change { kind, subscribe, unsubscribe });
            }
        }
        if self.cds_received && !self.clusters.is_warming() {
            self.clusters.mark_initialized();
            if self.lds_wanted && !self.types[Kind::Listener.index()].active {
                self.state(Kind::Listener).active = true;
                changes.push(Change { kind: Kind::Listener, subscribe: Vec::new(), unsubscribe: Vec::new() });
            }
        }
        if self.lds_received && !self.listeners.is_warming() {
            self.listeners.mark_initialized();
        }
        changes
    }
}

/// Lifts gRPC's message size limits on a client: xDS responses can be tens of MB.
macro_rules! limits {
    ($client:expr) => {
        $client.max_decoding_message_size(usize::MAX).max_encoding_message_size(usize::MAX)
    };
}
use limits;

/// Opens a session's links: the ADS method on one stream, or each type's own service
/// method (`$cds`, `$eds`, `$lds`, `$rds`) on its stream.
macro_rules! open_links {
    ($links:expr, $channel:expr, $aggregated:expr, $ads:ident, $cds:ident, $eds:ident, $lds:ident, $rds:ident) => {{
        let (channel, aggregated) = ($channel, $aggregated);
        $links
            .open(|link, outbound| {
                let channel = channel.clone();
                async move {
                    let response = match (aggregated, link) {
                        (true, _) => limits!(AggregatedDiscoveryServiceClient::new(channel)).$ads(outbound).await,
                        (false, 0) => limits!(ClusterDiscoveryServiceClient::new(channel)).$cds(outbound).await,
                        (false, 1) => limits!(EndpointDiscoveryServiceClient::new(channel)).$eds(outbound).await,
                        (false, 2) => limits!(ListenerDiscoveryServiceClient::new(channel)).$lds(outbound).await,
                        (false, _) => limits!(RouteDiscoveryServiceClient::new(channel)).$rds(outbound).await,
                    };
                    response.map(tonic::Response::into_inner)
                }
            })
            .await
    }};
}
use open_links;

type Inbound<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// The outbound halves of a session's streams: one for ADS, one per type otherwise.
/// Requests queue before the streams open, so each stream's first request is ready.
struct Links<Req> {
    senders: Vec<mpsc::UnboundedSender<Req>>,
    receivers: Vec<mpsc::UnboundedReceiver<Req>>,
}

impl<Req: Send + 'static> Links<Req> {
    fn new(aggregated: bool) -> Links<Req> {
        let (senders, receivers) =
            (0..if aggregated { 1 } else { KINDS.len() }).map(|_| mpsc::unbounded_channel()).unzip();
        Links { senders, receivers }
    }

    /// Queues a request on a link; false once the stream is gone.
    fn send(&self, link: usize, request: Req) -> bool {
        self.senders[link].send(request).is_ok()
    }

    /// Opens every link with `call` (link index, outbound requests) and merges the replies.
    async fn open<Resp, F, Fut>(mut self, mut call: F) -> Result<(Links<Req>, SelectAll<Inbound<Resp>>), tonic::Status>
    where
        F: FnMut(usize, futures_util::stream::BoxStream<'static, Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Streaming<Resp>, tonic::Status>>,
        Resp: Send + 'static,
    {
        let mut inbound: Vec<Inbound<Resp>> = Vec::with_capacity(self.receivers.len());
        for (link, rx) in std::mem::take(&mut self.receivers).into_iter().enumerate() {
            let outbound = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
            inbound.push(Box::pin(call(link, Box::pin(outbound)).await?));
        }
        Ok((self, futures_util::stream::select_all(inbound)))
    }
}

/// The next response of the stream, or `None` when a cluster finished warming between
/// updates (initialization may then go on).
async fn next_event<R>(
    inbound: &mut SelectAll<Inbound<R>>,
    settled: &mut watch::Receiver<u64>,
) -> Result<Option<R>, StreamEnd> {
    tokio::select! {
        next = inbound.next() => match next {
            Some(Ok(response)) => Ok(Some(response)),
            None => Err(StreamEnd::Closed),
            Some(Err(status)) => Err(StreamEnd::Stream(status)),
        },
        Ok(()) = settled.changed() => Ok(None),
    }
}

fn nack_status(message: String) -> Status {
    Status { code: INVALID_ARGUMENT, message, details: Vec::new() }
}

/// Decodes every resource of a response as `M`; one that fails rejects the response.
fn decode_all<M: Message + Default>(resources: &[Any], type_url: &str) -> Result<Vec<M>, Rejected> {
    let mut out = Vec::with_capacity(resources.len());
    decode_each(resources, type_url, |m, _| out.push(m)).map(|()| out)
}

/// Envoy's `version` gauge holds a hash of the accepted `version_info` (FNV-1a here,
/// kept positive for the signed gauge).
fn version_hash(version: &str) -> i64 {
    let mut hasher = fnv::FnvHasher::default();
    std::hash::Hasher::write(&mut hasher, version.as_bytes());
    (std::hash::Hasher::finish(&hasher) >> 1) as i64
}
