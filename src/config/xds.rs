//! `dynamic_resources` → `DynamicSpec`: where cluster and listener state comes from.
//! Supported today: an ADS stream (`api_type: GRPC`, state of the world) to a static
//! cluster, with `cds_config`, `lds_config` and EDS clusters' `eds_config` set to `ads: {}`.

use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::DynamicResources;
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::config::core::v3::{ApiConfigSource, ApiVersion, ConfigSource};

use super::error::{ConfigError, Result, join_path};
use super::proto::{self, ensure_only};

/// Envoy's default `initial_fetch_timeout`.
const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a gRPC xDS service is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcTarget {
    /// `envoy_grpc.cluster_name`: a static cluster's hosts.
    Cluster(String),
    /// `google_grpc.target_uri` (`host:port`, optionally `dns:///` prefixed).
    Uri(String),
}

/// The aggregated discovery stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdsSpec {
    pub target: GrpcTarget,
    /// Send `node` only on a stream's first request.
    pub set_node_on_first_message_only: bool,
    /// Incremental xDS (`DELTA_GRPC`) instead of state of the world.
    pub delta: bool,
}

/// One resource type's config source (only `ads: {}` today).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceSpec {
    /// How long to wait for the first response before going on without it; None waits forever.
    pub initial_fetch_timeout: Option<Duration>,
}

/// Validated `dynamic_resources`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynamicSpec {
    pub ads: Option<AdsSpec>,
    pub cds: Option<SourceSpec>,
    pub lds: Option<SourceSpec>,
}

impl DynamicSpec {
    /// Translates `dynamic_resources` at `path`.
    pub fn from_proto(proto: &DynamicResources, path: &str) -> Result<DynamicSpec> {
        ensure_only(proto, &["ads_config", "cds_config", "lds_config"], path)?;
        let ads = match &proto.ads_config {
            Some(api) => Some(ads(api, &join_path(path, "ads_config"))?),
            None => None,
        };
        let cds = match &proto.cds_config {
            Some(source) => Some(ads_source(source, ads.is_some(), &join_path(path, "cds_config"))?),
            None => None,
        };
        let lds = match &proto.lds_config {
            Some(source) => Some(ads_source(source, ads.is_some(), &join_path(path, "lds_config"))?),
            None => None,
        };
        Ok(DynamicSpec { ads, cds, lds })
    }
}

#[allow(deprecated)] // refusing the deprecated V2 means naming it
fn ads(api: &ApiConfigSource, path: &str) -> Result<AdsSpec> {
    ensure_only(api, &["api_type", "transport_api_version", "grpc_services", "set_node_on_first_message_only"], path)?;
    let delta = match ApiType::try_from(api.api_type) {
        Ok(ApiType::Grpc) => false,
        Ok(ApiType::DeltaGrpc) => true,
        // Envoy 1.40 refuses the AGGREGATED_* values and REST in ads_config.
        _ => {
            return Err(ConfigError::invalid(
                join_path(path, "api_type"),
                "ads_config.api_type must be GRPC or DELTA_GRPC",
            ));
        }
    };
    // Envoy 1.40 takes AUTO (unset) as V3; only an explicit V2 is refused.
    if api.transport_api_version == ApiVersion::V2 as i32 {
        return Err(ConfigError::invalid(
            join_path(path, "transport_api_version"),
            "the V2 xDS transport protocol is no longer supported; use V3",
        ));
    }
    let service = match api.grpc_services.as_slice() {
        [service] => service,
        [] => return Err(ConfigError::invalid(join_path(path, "grpc_services"), "one grpc_service is required")),
        _ => {
            return Err(ConfigError::invalid(
                format!("{path}.grpc_services[1]"),
                "only singleton grpc_services are supported",
            ));
        }
    };
    let spath = format!("{path}.grpc_services[0]");
    ensure_only(service, &["envoy_grpc", "google_grpc", "timeout"], &spath)?;
    let target = match &service.target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(envoy)) => {
            let epath = format!("{spath}.envoy_grpc");
            ensure_only(envoy, &["cluster_name"], &epath)?;
            if envoy.cluster_name.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{epath}.cluster_name"),
                    "value length must be at least 1 characters",
                ));
            }
            GrpcTarget::Cluster(envoy.cluster_name.clone())
        }
        Some(TargetSpecifier::GoogleGrpc(google)) => {
            let gpath = format!("{spath}.google_grpc");
            // Plaintext only: channel credentials (TLS) come with TLS support.
            ensure_only(google, &["target_uri", "stat_prefix"], &gpath)?;
            for (field, value) in [("target_uri", &google.target_uri), ("stat_prefix", &google.stat_prefix)] {
                if value.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{gpath}.{field}"),
                        "value length must be at least 1 characters",
                    ));
                }
            }
            GrpcTarget::Uri(google.target_uri.trim_start_matches("dns:///").trim_start_matches("dns:").to_owned())
        }
        None => return Err(ConfigError::invalid(&spath, "target_specifier is required")),
    };
    Ok(AdsSpec { target, set_node_on_first_message_only: api.set_node_on_first_message_only, delta })
}

/// A config source that must be `ads: {}` with `resource_api_version: V3`.
#[allow(deprecated)] // refusing the deprecated V2 means naming it
pub fn ads_source(source: &ConfigSource, have_ads: bool, path: &str) -> Result<SourceSpec> {
    ensure_only(source, &["ads", "resource_api_version", "initial_fetch_timeout"], path)?;
    match &source.config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(_)) if have_ads => {}
        Some(ConfigSourceSpecifier::Ads(_)) => {
            return Err(ConfigError::invalid(
                join_path(path, "ads"),
                "Cannot initialize ADS: dynamic_resources.ads_config is not set",
            ));
        }
        Some(_) => return Err(ConfigError::unsupported(path, "config sources other than `ads: {}`")),
        None => return Err(ConfigError::invalid(path, "config_source_specifier is required")),
    }
    if source.resource_api_version == ApiVersion::V2 as i32 {
        return Err(ConfigError::invalid(
            join_path(path, "resource_api_version"),
            "V2 xDS resources are no longer supported; use V3",
        ));
    }
    let initial_fetch_timeout = match &source.initial_fetch_timeout {
        Some(d) => Some(proto::duration(d, &join_path(path, "initial_fetch_timeout"))?).filter(|t| !t.is_zero()),
        None => Some(DEFAULT_INITIAL_FETCH_TIMEOUT),
    };
    Ok(SourceSpec { initial_fetch_timeout })
}
