//! An in-process xDS control plane on tonic and envoy-types: a real ADS gRPC server that
//! hands each incoming stream to the test, which pushes responses and awaits requests.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use futures_util::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use prost::{Message, Name};
use tokio::sync::{Mutex, mpsc};
use tonic::{Request, Response, Status, Streaming};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One ADS stream as the control plane sees it.
pub struct AdsStream {
    requests: mpsc::UnboundedReceiver<DiscoveryRequest>,
    responses: mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>,
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
}

impl ControlPlane {
    /// Starts a control plane on a loopback port.
    pub async fn start() -> ControlPlane {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (streams_tx, streams) = mpsc::unbounded_channel();
        let (delta_tx, delta_streams) = mpsc::unbounded_channel();
        let service = AggregatedDiscoveryServiceServer::new(Ads { streams: streams_tx, delta_streams: delta_tx })
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let service = TowerToHyperService::new(service.clone());
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ControlPlane { address, streams: Mutex::new(streams), delta_streams: Mutex::new(delta_streams) }
    }

    /// The next ADS stream legate opens (10 s at most).
    pub async fn next_stream(&self) -> AdsStream {
        tokio::time::timeout(Duration::from_secs(10), self.streams.lock().await.recv())
            .await
            .expect("legate opened an ADS stream in time")
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

struct Ads {
    streams: mpsc::UnboundedSender<AdsStream>,
    delta_streams: mpsc::UnboundedSender<DeltaStream>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (requests_tx, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(request)) = inbound.message().await {
                if requests_tx.send(request).is_err() {
                    return;
                }
            }
        });
        let (responses, responses_rx) = mpsc::unbounded_channel();
        let _ = self.streams.send(AdsStream { requests, responses });
        let outbound =
            futures_util::stream::unfold(responses_rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        Ok(Response::new(Box::pin(outbound)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (requests_tx, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(request)) = inbound.message().await {
                if requests_tx.send(request).is_err() {
                    return;
                }
            }
        });
        let (responses, responses_rx) = mpsc::unbounded_channel();
        let _ = self.delta_streams.send(DeltaStream { requests, responses });
        let outbound =
            futures_util::stream::unfold(responses_rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        Ok(Response::new(Box::pin(outbound)))
    }
}
