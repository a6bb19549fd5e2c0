//! The discovery client: ADS or per-type gRPC streams, state of the world or delta,
//! carrying CDS, EDS, LDS and RDS. Protocol only: per type URL it keeps `version_info`,
//! the last nonce and the subscribed names, ACKs after applying and NACKs with
//! `error_detail`; what the resources mean is the cluster and listener managers' business.

mod ads;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::config::Rejected;

pub use ads::AdsClient;

/// `envoy.config.cluster.v3.Cluster`.
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `envoy.config.listener.v3.Listener`.
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `envoy.config.route.v3.RouteConfiguration`.
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// `envoy.config.endpoint.v3.ClusterLoadAssignment`.
pub const ENDPOINT_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// Decodes a response's resources as `M` one at a time, handing each to `each` with its
/// encoding. One at a time because a whole decoded batch would be an update's peak memory
/// (10 000 decoded `ClusterLoadAssignment`s of 10 endpoints take about 70 MiB). A resource
/// of another type, or one that fails to decode, rejects the response; resources before it
/// have been handed over by then, so callers apply nothing until this returns `Ok`.
pub fn decode_each<M: Message + Default>(
    resources: &[Any],
    type_url: &str,
    mut each: impl FnMut(M, &[u8]),
) -> Result<(), Rejected> {
    let mut rejected = Rejected::default();
    for (i, any) in resources.iter().enumerate() {
        if any.type_url != type_url {
            rejected.push("", format!("resources[{i}]: type {} in a response of type {type_url}", any.type_url));
            continue;
        }
        match M::decode(any.value.as_slice()) {
            Ok(m) => each(m, &any.value),
            Err(e) => rejected.push("", format!("resources[{i}]: cannot decode: {e}")),
        }
    }
    rejected.into_result()
}
