//! `dynamic_resources` → `DynamicSpec`: where cluster and listener state comes from.
//! Supported: one management server, reached either over ADS (`ads_config`, with sources
//! set to `ads: {}`) or over per-type streams (sources with an `api_config_source`), in
//! state-of-the-world (`GRPC`) or incremental (`DELTA_GRPC`) mode, through `envoy_grpc`
//! (a static cluster) or `google_grpc` (a target URI).

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

/// A gRPC management server and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcSource {
    pub target: GrpcTarget,
    /// Send `node` only on a stream's first request.
    pub set_node_on_first_message_only: bool,
    /// Incremental xDS (`DELTA_GRPC`) instead of state of the world.
    pub delta: bool,
}

/// How one resource type is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// The ADS stream (`ads: {}`).
    Ads,
    /// Its own stream to this server (`api_config_source`).
    Grpc(GrpcSource),
}

/// One resource type's config source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    pub via: Via,
    /// How long to wait for the first response before going on without it; None waits forever.
    pub initial_fetch_timeout: Option<Duration>,
}

/// The management servers a resource may name as its source: EDS sources of clusters
/// and RDS sources of listeners must be the ones the bootstrap set up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XdsSources {
    pub ads: Option<GrpcSource>,
    /// The per-type server (from `cds_config`/`lds_config`).
    pub grpc: Option<GrpcSource>,
}

/// Validated `dynamic_resources`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynamicSpec {
    pub sources: XdsSources,
    pub cds: Option<SourceSpec>,
    pub lds: Option<SourceSpec>,
}

impl DynamicSpec {
    /// Translates `dynamic_resources` at `path`.
    pub fn from_proto(proto: &DynamicResources, path: &str) -> Result<DynamicSpec> {
        ensure_only(proto, &["ads_config", "cds_config", "lds_config"], path)?;
        let mut sources = XdsSources::default();
        if let Some(api) = &proto.ads_config {
            sources.ads = Some(grpc_source(api, &join_path(path, "ads_config"), true)?);
        }
        let mut parse = |source: &Option<ConfigSource>, field: &str| -> Result<Option<SourceSpec>> {
            let Some(source) = source else { return Ok(None) };
            let spath = join_path(path, field);
            // The first per-type source defines the server; the others must name the same one.
            if let Some(ConfigSourceSpecifier::ApiConfigSource(api)) = &source.config_source_specifier
                && sources.grpc.is_none()
            {
                sources.grpc = Some(grpc_source(api, &join_path(&spath, "api_config_source"), false)?);
            }
            config_source(source, &sources, &spath).map(Some)
        };
        let cds = parse(&proto.cds_config, "cds_config")?;
        let lds = parse(&proto.lds_config, "lds_config")?;
        if sources.ads.is_some() && sources.grpc.is_some() {
            return Err(ConfigError::unsupported(path, "ADS together with per-type xDS streams"));
        }
        Ok(DynamicSpec { sources, cds, lds })
    }
}

/// An `ApiConfigSource` for gRPC: `ads_config` (`aggregated`) or a per-type source.
#[allow(deprecated)] // refusing the deprecated V2 means naming it
fn grpc_source(api: &ApiConfigSource, path: &str, aggregated: bool) -> Result<GrpcSource> {
    ensure_only(api, &["api_type", "transport_api_version", "grpc_services", "set_node_on_first_message_only"], path)?;
    let delta = match ApiType::try_from(api.api_type) {
        Ok(ApiType::Grpc) => false,
        Ok(ApiType::DeltaGrpc) => true,
        Ok(ApiType::Rest) if !aggregated => {
            return Err(ConfigError::unsupported(join_path(path, "api_type"), "REST"));
        }
        // Envoy 1.40 refuses the AGGREGATED_* values (and REST in ads_config).
        _ => {
            return Err(ConfigError::invalid(join_path(path, "api_type"), "api_type must be GRPC or DELTA_GRPC"));
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
    Ok(GrpcSource { target, set_node_on_first_message_only: api.set_node_on_first_message_only, delta })
}

/// A resource type's config source: `ads: {}` when ADS is set up, or an
/// `api_config_source` naming the per-type server the bootstrap set up.
#[allow(deprecated)] // refusing the deprecated V2 means naming it
pub fn config_source(source: &ConfigSource, sources: &XdsSources, path: &str) -> Result<SourceSpec> {
    ensure_only(source, &["ads", "api_config_source", "resource_api_version", "initial_fetch_timeout"], path)?;
    let via = match &source.config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(_)) if sources.ads.is_some() => Via::Ads,
        Some(ConfigSourceSpecifier::Ads(_)) => {
            return Err(ConfigError::invalid(
                join_path(path, "ads"),
                "Cannot initialize ADS: dynamic_resources.ads_config is not set",
            ));
        }
        Some(ConfigSourceSpecifier::ApiConfigSource(api)) => {
            let apath = join_path(path, "api_config_source");
            let grpc = grpc_source(api, &apath, false)?;
            if sources.grpc.as_ref() != Some(&grpc) {
                return Err(ConfigError::unsupported(
                    apath,
                    "a management server other than the one cds_config/lds_config name",
                ));
            }
            Via::Grpc(grpc)
        }
        Some(_) => return Err(ConfigError::unsupported(path, "path and self config sources")),
        None => return Err(ConfigError::invalid(path, "config_source_specifier is required")),
    };
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
    Ok(SourceSpec { via, initial_fetch_timeout })
}
