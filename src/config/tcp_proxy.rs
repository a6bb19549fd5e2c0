//! The TCP proxy network filter (`envoy.filters.network.tcp_proxy`) → `TcpProxySpec`: which
//! cluster a connection goes to, how often its connect is tried, its idle timeout and its
//! access logs. `crate::listener::tcp_proxy` serves it.

use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy as TcpProxyProto;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;

use super::access_log::AccessLogSpec;
use super::error::{ConfigError, Result, join_path};
use super::proto::{self, ensure_only};

/// The filter's `@type`.
pub const TCP_PROXY_TYPE: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// Envoy's default `idle_timeout` for a proxied connection.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where a proxied connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpCluster {
    /// `cluster`: one cluster, by name.
    Single(String),
    /// `weighted_clusters`: one of these, drawn by weight for each connection; the weights'
    /// sum (above zero, each weight being at least 1) is kept beside them.
    Weighted { clusters: Vec<(String, u32)>, total: u64 },
}

impl TcpCluster {
    /// The cluster a new connection goes to.
    pub fn pick(&self) -> &str {
        match self {
            TcpCluster::Single(name) => name,
            TcpCluster::Weighted { clusters, total } => {
                let mut draw = fastrand::u64(..*total);
                for (name, weight) in clusters {
                    match draw.checked_sub(u64::from(*weight)) {
                        Some(rest) => draw = rest,
                        None => return name,
                    }
                }
                // Unreachable: the draw is below the weights' sum.
                &clusters[clusters.len() - 1].0
            }
        }
    }
}

/// A validated TCP proxy.
#[derive(Debug)]
pub struct TcpProxySpec {
    /// The `tcp.<stat_prefix>.` stats prefix.
    pub stat_prefix: String,
    pub cluster: TcpCluster,
    /// No data either way for this long closes both connections (Envoy: one hour unless
    /// set; 0 disables it).
    pub idle_timeout: Option<Duration>,
    /// How many upstream connects a connection gets before it is closed (at least 1).
    pub max_connect_attempts: u32,
    pub access_logs: Vec<AccessLogSpec>,
}

const SUPPORTED_FIELDS: &[&str] =
    &["stat_prefix", "cluster", "weighted_clusters", "idle_timeout", "max_connect_attempts", "access_log"];

impl TcpProxySpec {
    /// Translates and validates a TCP proxy at `path` (its `typed_config`). The cluster is
    /// looked up per connection, as Envoy does: a name no cluster has is not a config error.
    pub fn from_proto(proto: &TcpProxyProto, path: &str) -> Result<TcpProxySpec> {
        ensure_only(proto, SUPPORTED_FIELDS, path)?;
        let min_len = |value: &str, field: &str| {
            if value.is_empty() {
                Err(ConfigError::invalid(field, "value length must be at least 1 characters"))
            } else {
                Ok(())
            }
        };
        min_len(&proto.stat_prefix, &join_path(path, "stat_prefix"))?;
        let cluster = match &proto.cluster_specifier {
            Some(ClusterSpecifier::Cluster(name)) => {
                min_len(name, &join_path(path, "cluster"))?;
                TcpCluster::Single(name.clone())
            }
            Some(ClusterSpecifier::WeightedClusters(weighted)) => {
                let wpath = join_path(path, "weighted_clusters");
                ensure_only(weighted, &["clusters"], &wpath)?;
                if weighted.clusters.is_empty() {
                    return Err(ConfigError::invalid(
                        join_path(&wpath, "clusters"),
                        "value must contain at least 1 item(s)",
                    ));
                }
                let mut clusters = Vec::with_capacity(weighted.clusters.len());
                for (i, entry) in weighted.clusters.iter().enumerate() {
                    let epath = format!("{wpath}.clusters[{i}]");
                    ensure_only(entry, &["name", "weight"], &epath)?;
                    min_len(&entry.name, &join_path(&epath, "name"))?;
                    if entry.weight == 0 {
                        return Err(ConfigError::invalid(
                            join_path(&epath, "weight"),
                            "value must be greater than or equal to 1",
                        ));
                    }
                    clusters.push((entry.name.clone(), entry.weight));
                }
                let total = clusters.iter().map(|(_, weight)| u64::from(*weight)).sum();
                TcpCluster::Weighted { clusters, total }
            }
            None => {
                return Err(ConfigError::invalid(
                    path,
                    "cluster_specifier is required: one of cluster, weighted_clusters",
                ));
            }
        };
        let idle_timeout = match &proto.idle_timeout {
            Some(d) => Some(proto::duration(d, &join_path(path, "idle_timeout"))?).filter(|t| !t.is_zero()),
            None => Some(DEFAULT_IDLE_TIMEOUT),
        };
        let max_connect_attempts = match proto.max_connect_attempts {
            None => 1,
            Some(attempts) if attempts.value >= 1 => attempts.value,
            Some(_) => {
                return Err(ConfigError::invalid(
                    join_path(path, "max_connect_attempts"),
                    "value must be greater than or equal to 1",
                ));
            }
        };
        let access_logs = AccessLogSpec::from_protos(&proto.access_log, path)?;
        Ok(TcpProxySpec {
            stat_prefix: proto.stat_prefix.clone(),
            cluster,
            idle_timeout,
            max_connect_attempts,
            access_logs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ErrorKind;
    use crate::config::schema::{self, Format};

    fn parse(yaml: &str) -> Result<TcpProxySpec> {
        let proto: TcpProxyProto = schema::parse(yaml, Format::Yaml).expect("a TcpProxy in YAML");
        TcpProxySpec::from_proto(&proto, "tcp")
    }

    #[test]
    fn defaults_follow_envoy() {
        let spec = parse("stat_prefix: db\ncluster: postgres").unwrap();
        assert_eq!(spec.cluster, TcpCluster::Single("postgres".into()));
        assert_eq!(spec.idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(spec.max_connect_attempts, 1);
        let spec = parse("stat_prefix: db\ncluster: postgres\nidle_timeout: 0s\nmax_connect_attempts: 3").unwrap();
        assert_eq!((spec.idle_timeout, spec.max_connect_attempts), (None, 3));
    }

    #[test]
    fn weighted_clusters_are_drawn_by_weight() {
        let spec = parse("stat_prefix: w\nweighted_clusters: {clusters: [{name: a, weight: 1}, {name: b, weight: 3}]}")
            .unwrap();
        let b = (0..4000).filter(|_| spec.cluster.pick() == "b").count();
        assert!((2700..3300).contains(&b), "b drawn {b} times of 4000 at weight 3 of 4");
    }

    #[test]
    fn invalid_fields_are_named() {
        for (yaml, path) in [
            ("cluster: a", "tcp.stat_prefix"),
            ("stat_prefix: s", "tcp"),
            ("stat_prefix: s\nweighted_clusters: {clusters: []}", "tcp.weighted_clusters.clusters"),
            (
                "stat_prefix: s\nweighted_clusters: {clusters: [{name: a, weight: 0}]}",
                "tcp.weighted_clusters.clusters[0].weight",
            ),
            ("stat_prefix: s\ncluster: a\nmax_connect_attempts: 0", "tcp.max_connect_attempts"),
        ] {
            let e = parse(yaml).expect_err(yaml);
            assert_eq!((e.kind, e.path.as_str()), (ErrorKind::Invalid, path), "{yaml}");
        }
        let e = parse("stat_prefix: s\ncluster: a\nhash_policy: [{source_ip: {}}]").expect_err("hash policy");
        assert_eq!((e.kind, e.path.as_str()), (ErrorKind::Unsupported, "tcp.hash_policy"));
    }
}
