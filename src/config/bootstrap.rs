//! The bootstrap: reading it (file, `--config-yaml`, CLI overrides) and translating it
//! into `BootstrapSpec` with every cross-reference checked.

use std::collections::HashSet;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use prost::Message;

use super::access_log::AccessLogSpec;
use super::cluster::{ClusterSpec, socket_address};
use super::error::{ConfigError, Result};
use super::hcm::RouteSpec;
use super::listener::{ListenerSpec, NetworkFilter};
use super::proto::ensure_only;
use super::schema::{self, Format};
use super::xds::{DynamicSpec, GrpcSource, GrpcTarget};
use crate::cli::Options;

/// The admin interface's config.
#[derive(Debug)]
pub struct AdminSpec {
    pub address: SocketAddr,
    pub access_logs: Vec<AccessLogSpec>,
}

/// A validated bootstrap.
#[derive(Debug)]
pub struct BootstrapSpec {
    pub node: Node,
    pub admin: Option<AdminSpec>,
    pub listeners: Vec<ListenerSpec>,
    pub clusters: Vec<ClusterSpec>,
    pub dynamic: DynamicSpec,
    /// The effective bootstrap (after merges and overrides), for `/config_dump`.
    pub proto: Bootstrap,
}

/// Reads the bootstrap the CLI names: the file, then `--config-yaml` merged over it with
/// proto merge semantics (as Envoy does), then the `--service-*` overrides.
pub fn load(options: &Options) -> Result<Bootstrap> {
    let mut bootstrap = match &options.config_path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::invalid("", format!("unable to read file: {path}: {e}")))?;
            schema::parse_with::<Bootstrap>(&text, Format::from_path(path), options.allow_unknown_static_fields)?
        }
        None => Bootstrap::default(),
    };
    if let Some(yaml) = &options.config_yaml {
        let overlay: Bootstrap = schema::parse_with(yaml, Format::Yaml, options.allow_unknown_static_fields)
            .map_err(|e| ConfigError { message: format!("{} (in --config-yaml)", e.message), ..e })?;
        bootstrap
            .merge(overlay.encode_to_vec().as_slice())
            .map_err(|e| ConfigError::invalid("", format!("merging --config-yaml: {e}")))?;
    }
    if options.config_path.is_none() && options.config_yaml.is_none() {
        return Err(ConfigError::invalid(
            "",
            "At least one of --config-path or --config-yaml or Options::configProto() should be non-empty",
        ));
    }
    let node = bootstrap.node.get_or_insert_with(Node::default);
    if let Some(cluster) = &options.service_cluster {
        node.cluster = cluster.clone();
    }
    if let Some(id) = &options.service_node {
        node.id = id.clone();
    }
    if let Some(zone) = &options.service_zone {
        node.locality.get_or_insert_with(Locality::default).zone = zone.clone();
    }
    Ok(bootstrap)
}

const SUPPORTED_BOOTSTRAP_FIELDS: &[&str] =
    &["node", "static_resources", "dynamic_resources", "admin", "layered_runtime", "stats_flush_interval"];

impl BootstrapSpec {
    /// Translates and cross-checks a bootstrap.
    pub fn from_proto(proto: Bootstrap) -> Result<BootstrapSpec> {
        ensure_only(&proto, SUPPORTED_BOOTSTRAP_FIELDS, "")?;
        if let Some(runtime) = &proto.layered_runtime {
            // An empty runtime (or only static layers without keys legate reads) changes nothing.
            ensure_only(runtime, &["layers"], "layered_runtime")?;
        }
        let admin = match &proto.admin {
            Some(admin) => {
                ensure_only(admin, &["address", "access_log", "access_log_path", "profile_path"], "admin")?;
                match &admin.address {
                    Some(_) => {
                        let address = socket_address(admin.address.as_ref(), "admin.address")?;
                        let access_logs = AccessLogSpec::from_protos(&admin.access_log, "admin")?;
                        Some(AdminSpec { address, access_logs })
                    }
                    None => None,
                }
            }
            None => None,
        };
        let dynamic = match &proto.dynamic_resources {
            Some(d) => DynamicSpec::from_proto(d, "dynamic_resources")?,
            None => DynamicSpec::default(),
        };
        let node = proto.node.clone().unwrap_or_default();
        if (dynamic.sources.ads.is_some() || dynamic.cds.is_some() || dynamic.lds.is_some())
            && (node.id.is_empty() || node.cluster.is_empty())
        {
            // Envoy needs both to identify itself to a control plane.
            return Err(ConfigError::invalid(
                "node",
                "node 'id' and 'cluster' are required. Set it either in 'node' config or via --service-node and --service-cluster options.",
            ));
        }
        let statics = proto.static_resources.clone().unwrap_or_default();
        ensure_only(&statics, &["listeners", "clusters"], "static_resources")?;
        let mut clusters = Vec::with_capacity(statics.clusters.len());
        let mut cluster_names = HashSet::new();
        for (i, cluster) in statics.clusters.iter().enumerate() {
            let path = format!("static_resources.clusters[{i}]");
            let spec = ClusterSpec::from_proto(cluster, &path, &dynamic.sources)?;
            if !cluster_names.insert(spec.name.clone()) {
                return Err(ConfigError::invalid(
                    format!("{path}.name"),
                    format!("cluster manager: duplicate cluster '{}' found", spec.name),
                ));
            }
            clusters.push(spec);
        }
        let mut listeners = Vec::with_capacity(statics.listeners.len());
        let mut listener_names = HashSet::new();
        for (i, listener) in statics.listeners.iter().enumerate() {
            let path = format!("static_resources.listeners[{i}]");
            let spec = ListenerSpec::from_proto(listener, &path, &dynamic.sources)?;
            if !listener_names.insert(spec.name.clone()) {
                return Err(ConfigError::invalid(
                    format!("{path}.name"),
                    format!("error adding listener named '{}': listener with same name already exists", spec.name),
                ));
            }
            let default_chain = spec.default_chain.iter().map(|chain| (chain, format!("{path}.default_filter_chain")));
            let chains = spec.chains.iter().enumerate().map(|(i, chain)| (chain, format!("{path}.filter_chains[{i}]")));
            for (chain, chain_path) in chains.chain(default_chain) {
                if let NetworkFilter::Http(hcm) = &chain.filter
                    && let RouteSpec::Inline(routes, _) = &hcm.routes
                    && routes.validate_clusters()
                    && let Some(missing) = routes.referenced_clusters().find(|name| !cluster_names.contains(*name))
                {
                    return Err(ConfigError::invalid(
                        format!("{chain_path}.filters[0].typed_config.route_config"),
                        format!("route: unknown cluster '{missing}'"),
                    ));
                }
            }
            listeners.push(spec);
        }
        for (source, path) in [
            (&dynamic.sources.ads, "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name"),
            (
                &dynamic.sources.grpc,
                "dynamic_resources.cds_config.api_config_source.grpc_services[0].envoy_grpc.cluster_name",
            ),
        ] {
            if let Some(GrpcSource { target: GrpcTarget::Cluster(cluster), .. }) = source {
                match clusters.iter().find(|c| &c.name == cluster) {
                    None => {
                        return Err(ConfigError::invalid(path, format!("Unknown gRPC client cluster '{cluster}'")));
                    }
                    // The xDS client dials the cluster's hosts in plaintext.
                    Some(c) if c.tls.is_some() => {
                        return Err(ConfigError::unsupported(path, format!("a TLS cluster ('{cluster}') for xDS")));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(BootstrapSpec { node, admin, listeners, clusters, dynamic, proto })
    }
}
