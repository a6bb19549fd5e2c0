//! An in-process xDS control plane on tonic and envoy-types: a real ADS gRPC server that
//! hands each incoming stream to the test, which pushes responses and awaits requests.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::{
    ClusterDiscoveryService, ClusterDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::{
    EndpointDiscoveryService, EndpointDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_server::{
    ListenerDiscoveryService, ListenerDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::{
    RouteDiscoveryService, RouteDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use futures_util::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::{Message, Name};
use tokio::sync::{Mutex, mpsc};
use tonic::codegen::Service as _;
use tonic::{Request, Response, Status, Streaming};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One ADS stream as the control plane sees it.
pub struct AdsStream {
    requests: mpsc::UnboundedReceiver<DiscoveryRequest>,
    responses: mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>,
    /// Requests `next_keeping` passed over, oldest first.
    kept: std::collections::VecDeque<DiscoveryRequest>,
}

impl AdsStream {
    /// The next request legate sends on this stream (10 s at most).
    pub async fn next_request(&mut self) -> DiscoveryRequest {
        tokio::time::timeout(Duration::from_secs(10), self.requests.recv())
            .await
            .expect("legate sent a request in time")
            .expect("the stream is open")
    }

    /// The next request of `type_url`, skipping others.
    pub async fn next_of(&mut self, type_url: &str) -> DiscoveryRequest {
        loop {
            let request = self.next_request().await;
            if request.type_url == type_url {
                return request;
            }
        }
    }

    /// The next request of `type_url`, keeping the others for later calls (for peers that
    /// interleave types in their own order, like Envoy).
    pub async fn next_keeping(&mut self, type_url: &str) -> DiscoveryRequest {
        if let Some(at) = self.kept.iter().position(|r| r.type_url == type_url) {
            return self.kept.remove(at).expect("position is in range");
        }
        loop {
            let request = self.next_request().await;
            if request.type_url == type_url {
                return request;
            }
            self.kept.push_back(request);
        }
    }

    /// Pushes a response of `resources` (all of type `M`).
    pub fn push<M: Message + Name>(&self, version: &str, nonce: &str, resources: Vec<M>) {
        let response = DiscoveryResponse {
            version_info: version.to_owned(),
            resources: resources
                .into_iter()
                .map(|m| Any { type_url: M::type_url(), value: m.encode_to_vec() })
                .collect(),
            type_url: M::type_url(),
            nonce: nonce.to_owned(),
            ..Default::default()
        };
        let _ = self.responses.send(Ok(response));
    }

    /// Ends the stream from the control plane's side.
    pub fn close(self) {
        let _ = self.responses.send(Err(Status::unavailable("control plane going away")));
    }
}

/// One incremental (delta) ADS stream as the control plane sees it.
pub struct DeltaStream {
    requests: mpsc::UnboundedReceiver<DeltaDiscoveryRequest>,
    responses: mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>,
}

impl DeltaStream {
    /// The next request of `type_url` legate sends (10 s at most), skipping others.
    pub async fn next_of(&mut self, type_url: &str) -> DeltaDiscoveryRequest {
        loop {
            let request = tokio::time::timeout(Duration::from_secs(10), self.requests.recv())
                .await
                .expect("legate sent a delta request in time")
                .expect("the stream is open");
            if request.type_url == type_url {
                return request;
            }
        }
    }

    /// Pushes named resources (name, version, message) and removals.
    pub fn push<M: Message + Name>(
        &self,
        system_version: &str,
        nonce: &str,
        resources: Vec<(&str, &str, M)>,
        removed: &[&str],
    ) {
        let response = DeltaDiscoveryResponse {
            system_version_info: system_version.to_owned(),
            resources: resources
                .into_iter()
                .map(|(name, version, m)| Resource {
                    name: name.to_owned(),
                    version: version.to_owned(),
                    resource: Some(Any { type_url: M::type_url(), value: m.encode_to_vec() }),
                    ..Default::default()
                })
                .collect(),
            type_url: M::type_url(),
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            nonce: nonce.to_owned(),
            ..Default::default()
        };
        let _ = self.responses.send(Ok(response));
    }

    /// Ends the stream from the control plane's side.
    pub fn close(self) {
        let _ = self.responses.send(Err(Status::unavailable("control plane going away")));
    }
}

/// The control plane: its address, and the streams legate opens to it.
pub struct ControlPlane {
    pub address: SocketAddr,
    streams: Mutex<mpsc::UnboundedReceiver<AdsStream>>,
    delta_streams: Mutex<mpsc::UnboundedReceiver<DeltaStream>>,
    /// Per-type (non-aggregated) streams, by the type URL of their service.
    typed: std::collections::HashMap<&'static str, Mutex<mpsc::UnboundedReceiver<AdsStream>>>,
}

/// The per-type services and the type each serves.
const TYPED: [(&str, &str); 4] = [
    ("/envoy.service.cluster.v3.ClusterDiscoveryService/", "type.googleapis.com/envoy.config.cluster.v3.Cluster"),
    (
        "/envoy.service.endpoint.v3.EndpointDiscoveryService/",
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    ),
    ("/envoy.service.listener.v3.ListenerDiscoveryService/", "type.googleapis.com/envoy.config.listener.v3.Listener"),
    ("/envoy.service.route.v3.RouteDiscoveryService/", "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"),
];

type HttpResponse = http::Response<tonic::body::Body>;
type BoxFuture = Pin<Box<dyn std::future::Future<Output = Result<HttpResponse, std::convert::Infallible>> + Send>>;

impl ControlPlane {
    /// Starts a control plane on a loopback port, serving ADS and the per-type services.
    pub async fn start() -> ControlPlane {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (streams_tx, streams) = mpsc::unbounded_channel();
        let (delta_tx, delta_streams) = mpsc::unbounded_channel();
        let mut typed = std::collections::HashMap::new();
        let mut typed_tx = std::collections::HashMap::new();
        for (_, type_url) in TYPED {
            let (tx, rx) = mpsc::unbounded_channel();
            typed.insert(type_url, Mutex::new(rx));
            typed_tx.insert(type_url, tx);
        }
        let server = |streams: mpsc::UnboundedSender<AdsStream>| Ads { streams, delta_streams: delta_tx.clone() };
        let ads = AggregatedDiscoveryServiceServer::new(server(streams_tx))
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let cds = ClusterDiscoveryServiceServer::new(server(typed_tx[TYPED[0].1].clone()));
        let eds = EndpointDiscoveryServiceServer::new(server(typed_tx[TYPED[1].1].clone()));
        let lds = ListenerDiscoveryServiceServer::new(server(typed_tx[TYPED[2].1].clone()));
        let rds = RouteDiscoveryServiceServer::new(server(typed_tx[TYPED[3].1].clone()));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (ads, cds, eds, lds, rds) = (ads.clone(), cds.clone(), eds.clone(), lds.clone(), rds.clone());
                // Route by gRPC path to the service that owns it.
                let router = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let path = request.uri().path().to_owned();
                    let future: BoxFuture = if path.starts_with(TYPED[0].0) {
                        Box::pin(cds.clone().call(request))
                    } else if path.starts_with(TYPED[1].0) {
                        Box::pin(eds.clone().call(request))
                    } else if path.starts_with(TYPED[2].0) {
                        Box::pin(lds.clone().call(request))
                    } else if path.starts_with(TYPED[3].0) {
                        Box::pin(rds.clone().call(request))
                    } else {
                        Box::pin(ads.clone().call(request))
                    };
                    future
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), router)
                        .await;
                });
            }
        });
        ControlPlane { address, streams: Mutex::new(streams), delta_streams: Mutex::new(delta_streams), typed }
    }

    /// The next ADS stream legate opens (10 s at most).
    pub async fn next_stream(&self) -> AdsStream {
        tokio::time::timeout(Duration::from_secs(10), self.streams.lock().await.recv())
            .await
            .expect("legate opened an ADS stream in time")
            .expect("control plane running")
    }

    /// The next per-type stream legate opens for `type_url` (10 s at most).
    pub async fn next_typed_stream(&self, type_url: &str) -> AdsStream {
        tokio::time::timeout(Duration::from_secs(10), self.typed[type_url].lock().await.recv())
            .await
            .expect("legate opened a per-type stream in time")
            .expect("control plane running")
    }

    /// The next delta ADS stream legate opens (10 s at most).
    pub async fn next_delta_stream(&self) -> DeltaStream {
        tokio::time::timeout(Duration::from_secs(10), self.delta_streams.lock().await.recv())
            .await
            .expect("legate opened a delta ADS stream in time")
            .expect("control plane running")
    }
}

#[derive(Clone)]
struct Ads {
    streams: mpsc::UnboundedSender<AdsStream>,
    delta_streams: mpsc::UnboundedSender<DeltaStream>,
}

impl Ads {
    /// Hands a state-of-the-world stream to the test.
    fn sotw(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream<DiscoveryResponse>>, Status> {
        let requests = forward(request.into_inner());
        let (responses, responses_rx) = mpsc::unbounded_channel();
        let _ = self.streams.send(AdsStream { requests, responses, kept: Default::default() });
        Ok(Response::new(Box::pin(futures_util::stream::unfold(responses_rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        }))))
    }

    /// Hands a delta stream to the test.
    fn delta(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<ResponseStream<DeltaDiscoveryResponse>>, Status> {
        let requests = forward(request.into_inner());
        let (responses, responses_rx) = mpsc::unbounded_channel();
        let _ = self.delta_streams.send(DeltaStream { requests, responses });
        Ok(Response::new(Box::pin(futures_util::stream::unfold(responses_rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        }))))
    }
}

/// Forwards a stream's requests into a channel the test reads.
fn forward<T: Send + 'static>(mut inbound: Streaming<T>) -> mpsc::UnboundedReceiver<T> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(request)) = inbound.message().await {
            if tx.send(request).is_err() {
                return;
            }
        }
    });
    rx
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.sotw(request)
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.delta(request)
    }
}

/// The per-type services share the aggregated one's handling; `fetch` (REST-style) is not served.
macro_rules! per_type {
    ($service:path, $stream_ty:ident, $stream:ident, $delta_ty:ident, $delta:ident, $fetch:ident) => {
        #[tonic::async_trait]
        impl $service for Ads {
            type $stream_ty = ResponseStream<DiscoveryResponse>;
            type $delta_ty = ResponseStream<DeltaDiscoveryResponse>;

            async fn $stream(
                &self,
                request: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<Self::$stream_ty>, Status> {
                self.sotw(request)
            }

            async fn $delta(
                &self,
                request: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<Self::$delta_ty>, Status> {
                self.delta(request)
            }

            async fn $fetch(&self, _request: Request<DiscoveryRequest>) -> Result<Response<DiscoveryResponse>, Status> {
                Err(Status::unimplemented("fetch"))
            }
        }
    };
}

per_type!(
    ClusterDiscoveryService,
    StreamClustersStream,
    stream_clusters,
    DeltaClustersStream,
    delta_clusters,
    fetch_clusters
);
per_type!(
    EndpointDiscoveryService,
    StreamEndpointsStream,
    stream_endpoints,
    DeltaEndpointsStream,
    delta_endpoints,
    fetch_endpoints
);
per_type!(
    ListenerDiscoveryService,
    StreamListenersStream,
    stream_listeners,
    DeltaListenersStream,
    delta_listeners,
    fetch_listeners
);
per_type!(RouteDiscoveryService, StreamRoutesStream, stream_routes, DeltaRoutesStream, delta_routes, fetch_routes);
