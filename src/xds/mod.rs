//! The discovery client: ADS or per-type gRPC streams, state of the world or delta,
//! carrying CDS, EDS, LDS and RDS. Protocol only: per type URL it keeps `version_info`,
//! the last nonce and the subscribed names, ACKs after applying and NACKs with
//! `error_detail`; what the resources mean is the cluster and listener managers' business.

mod ads;

pub use ads::AdsClient;

/// `envoy.config.cluster.v3.Cluster`.
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `envoy.config.listener.v3.Listener`.
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `envoy.config.route.v3.RouteConfiguration`.
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// `envoy.config.endpoint.v3.ClusterLoadAssignment`.
pub const ENDPOINT_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
