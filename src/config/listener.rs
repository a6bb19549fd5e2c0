//! Listener protos → `ListenerSpec`: the bound address, the listener filters, and the filter
//! chains (when each applies: `super::filter_chain`), each with its TLS and one network
//! filter, the HTTP connection manager (`super::hcm`) or a TCP proxy (`super::tcp_proxy`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::FilterChain as FilterChainProto;
use envoy_types::pb::envoy::config::listener::v3::Listener as ListenerProto;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector as HttpInspectorProto;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector as TlsInspectorProto;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager as HcmProto;

use super::cluster::socket_address;
use super::error::{ConfigError, Result, join_path};
use super::filter_chain::{self, ChainMatch};
use super::hcm::{HCM_TYPE, HcmSpec};
use super::proto::{self, ensure_only};
use super::tcp_proxy::{TCP_PROXY_TYPE, TcpProxySpec};
use super::tls::{self, ServerTls};
use super::xds::XdsSources;

/// A validated listener.
#[derive(Debug)]
pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
    /// The `listener.<prefix>.` stats prefix: `stat_prefix` or the address as Envoy writes it.
    pub stat_prefix: String,
    /// `filter_chains`, in order; `filter_chain::select` picks one for a connection.
    pub chains: Vec<FilterChainSpec>,
    /// `default_filter_chain`: for connections no chain matches.
    pub default_chain: Option<FilterChainSpec>,
    /// The listener filters, in order: they read a connection's first bytes (without taking
    /// them) for what its chain is chosen by.
    pub listener_filters: Vec<ListenerFilter>,
    /// `listener_filters_timeout` (Envoy: 15 s; 0 disables it): how long the listener
    /// filters may wait for the bytes they read.
    pub listener_filters_timeout: Option<Duration>,
    /// `continue_on_listener_filters_timeout`: on that timeout, choose a chain with what is
    /// known rather than close the connection.
    pub continue_on_listener_filters_timeout: bool,
    /// `per_connection_buffer_limit_bytes` (1 MiB by default): here, how much of a request
    /// body legate keeps to send again on a retry.
    pub buffer_limit: usize,
    /// The original proto, for `/config_dump` and `/listeners`.
    pub proto: ListenerProto,
}

/// A listener filter legate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerFilter {
    /// `envoy.filters.listener.tls_inspector`: the ClientHello's server name and ALPN, and
    /// transport protocol `tls`.
    TlsInspector,
    /// `envoy.filters.listener.http_inspector`: on a plaintext connection, the HTTP version
    /// of its first request line (or HTTP/2's preface) as its application protocol.
    HttpInspector,
}

/// A validated filter chain: when it applies, its TLS, and its one network filter.
#[derive(Debug)]
pub struct FilterChainSpec {
    pub matcher: ChainMatch,
    /// The `transport_socket` when it is TLS.
    pub tls: Option<Arc<ServerTls>>,
    pub filter: NetworkFilter,
}

impl ListenerSpec {
    /// Every chain, the default one last.
    pub fn all_chains(&self) -> impl Iterator<Item = &FilterChainSpec> {
        self.chains.iter().chain(&self.default_chain)
    }
}

/// A filter chain's one network filter, which serves its connections. Shared (`Arc`) with
/// the chain's runtime, which reads it on every request.
#[derive(Debug, Clone)]
pub enum NetworkFilter {
    Http(Arc<HcmSpec>),
    TcpProxy(Arc<TcpProxySpec>),
}

/// Envoy's default `per_connection_buffer_limit_bytes`.
const DEFAULT_BUFFER_LIMIT: usize = 1024 * 1024;

const SUPPORTED_LISTENER_FIELDS: &[&str] = &[
    "name",
    "address",
    "stat_prefix",
    "filter_chains",
    "default_filter_chain",
    "listener_filters",
    "listener_filters_timeout",
    "continue_on_listener_filters_timeout",
    "metadata",
    "per_connection_buffer_limit_bytes",
    "traffic_direction",
    "drain_type",
    "enable_reuse_port",
    "tcp_backlog_size",
    "bind_to_port",
];

/// Envoy's default `listener_filters_timeout`.
const DEFAULT_LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(15);

const TLS_INSPECTOR_TYPE: &str = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const HTTP_INSPECTOR_TYPE: &str = "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";

impl ListenerSpec {
    /// Translates and validates a listener at `path`.
    pub fn from_proto(proto: &ListenerProto, path: &str, sources: &XdsSources) -> Result<ListenerSpec> {
        ensure_only(proto, SUPPORTED_LISTENER_FIELDS, path)?;
        if proto.bind_to_port.as_ref().is_some_and(|b| !b.value) {
            return Err(ConfigError::unsupported(join_path(path, "bind_to_port"), ""));
        }
        let address = socket_address(proto.address.as_ref(), &join_path(path, "address"))?;
        let stat_prefix = if proto.stat_prefix.is_empty() {
            format!("{}_{}", address.ip(), address.port())
        } else {
            proto.stat_prefix.clone()
        };
        let name = if proto.name.is_empty() { format!("{address}") } else { proto.name.clone() };
        let chains_path = join_path(path, "filter_chains");
        if proto.filter_chains.is_empty() && proto.default_filter_chain.is_none() {
            return Err(ConfigError::invalid(&chains_path, "no filter chains specified"));
        }
        let chains = proto
            .filter_chains
            .iter()
            .enumerate()
            .map(|(i, chain)| FilterChainSpec::from_proto(chain, &format!("{chains_path}[{i}]"), address, sources))
            .collect::<Result<Vec<_>>>()?;
        let matchers: Vec<ChainMatch> = chains.iter().map(|c| c.matcher.clone()).collect();
        filter_chain::ensure_distinct(&matchers, &chains_path, &address.to_string())?;
        let default_chain = proto
            .default_filter_chain
            .as_ref()
            .map(|chain| FilterChainSpec::from_proto(chain, &join_path(path, "default_filter_chain"), address, sources))
            .transpose()?;
        let listener_filters = listener_filters(proto, path)?;
        let listener_filters_timeout = match &proto.listener_filters_timeout {
            Some(d) => Some(proto::duration(d, &join_path(path, "listener_filters_timeout"))?).filter(|t| !t.is_zero()),
            None => Some(DEFAULT_LISTENER_FILTERS_TIMEOUT),
        };
        let buffer_limit = proto.per_connection_buffer_limit_bytes.map_or(DEFAULT_BUFFER_LIMIT, |l| l.value as usize);
        Ok(ListenerSpec {
            name,
            address,
            stat_prefix,
            chains,
            default_chain,
            listener_filters,
            listener_filters_timeout,
            continue_on_listener_filters_timeout: proto.continue_on_listener_filters_timeout,
            buffer_limit,
            proto: proto.clone(),
        })
    }
}

/// Checks the listener filters: the TLS and HTTP inspectors (at their defaults) are
/// implemented.
fn listener_filters(proto: &ListenerProto, path: &str) -> Result<Vec<ListenerFilter>> {
    let mut filters = Vec::with_capacity(proto.listener_filters.len());
    for (i, filter) in proto.listener_filters.iter().enumerate() {
        let fpath = format!("{path}.listener_filters[{i}]");
        ensure_only(filter, &["name", "typed_config"], &fpath)?;
        let Some(ListenerFilterConfig::TypedConfig(any)) = &filter.config_type else {
            return Err(ConfigError::invalid(&fpath, format!("listener filter '{}' has no typed_config", filter.name)));
        };
        let config_path = format!("{fpath}.typed_config");
        filters.push(match proto::type_name(&any.type_url) {
            TLS_INSPECTOR_TYPE => {
                let inspector: TlsInspectorProto = proto::unpack(any, &fpath)?;
                ensure_only(&inspector, &[], &config_path)?;
                ListenerFilter::TlsInspector
            }
            HTTP_INSPECTOR_TYPE => {
                let inspector: HttpInspectorProto = proto::unpack(any, &fpath)?;
                ensure_only(&inspector, &[], &config_path)?;
                ListenerFilter::HttpInspector
            }
            _ => return Err(proto::unexpected_type(any, &fpath)),
        });
    }
    Ok(filters)
}

impl FilterChainSpec {
    /// Translates a filter chain at `path` of the listener bound to `address` (which names
    /// the listener in Envoy's messages).
    fn from_proto(
        chain: &FilterChainProto,
        path: &str,
        address: SocketAddr,
        sources: &XdsSources,
    ) -> Result<FilterChainSpec> {
        ensure_only(chain, &["filters", "name", "metadata", "transport_socket", "filter_chain_match"], path)?;
        let matcher = ChainMatch::from_proto(
            chain.filter_chain_match.as_ref(),
            &join_path(path, "filter_chain_match"),
            &address.to_string(),
        )?;
        let tls = tls::downstream(chain.transport_socket.as_ref(), &join_path(path, "transport_socket"))?.map(Arc::new);
        let filter = match chain.filters.as_slice() {
            [filter] => filter,
            [] => return Err(ConfigError::invalid(join_path(path, "filters"), "no network filters specified")),
            _ => {
                return Err(ConfigError::unsupported(format!("{path}.filters[1]"), "more than one network filter"));
            }
        };
        let filter_path = format!("{path}.filters[0]");
        let any = match &filter.config_type {
            Some(FilterConfig::TypedConfig(any)) => any,
            Some(FilterConfig::ConfigDiscovery(_)) => {
                return Err(ConfigError::unsupported(format!("{filter_path}.config_discovery"), ""));
            }
            None => {
                return Err(ConfigError::invalid(
                    &filter_path,
                    format!("filter '{}' has no typed_config", filter.name),
                ));
            }
        };
        let config_path = format!("{filter_path}.typed_config");
        let filter = match proto::type_name(&any.type_url) {
            HCM_TYPE => {
                let hcm_proto: HcmProto = proto::unpack(any, &filter_path)?;
                NetworkFilter::Http(Arc::new(HcmSpec::from_proto(&hcm_proto, address.port(), &config_path, sources)?))
            }
            TCP_PROXY_TYPE => {
                let tcp_proto = proto::unpack(any, &filter_path)?;
                NetworkFilter::TcpProxy(Arc::new(TcpProxySpec::from_proto(&tcp_proto, &config_path)?))
            }
            _ => return Err(proto::unexpected_type(any, &filter_path)),
        };
        Ok(FilterChainSpec { matcher, tls, filter })
    }
}
