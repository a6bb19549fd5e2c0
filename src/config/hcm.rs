//! The HTTP connection manager (`envoy.filters.network.http_connection_manager`) →
//! `HcmSpec`: codec, timeouts, header policy, path normalization, access logs and the inline
//! route table or its RDS name, and the HTTP filters (the router).

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions as Http2ProtocolOptionsProto;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router as RouterProto;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager as HcmProto;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, PathWithEscapedSlashesAction, RouteSpecifier, StripPortMode,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;

use super::access_log::AccessLogSpec;
use super::error::{ConfigError, Result, join_path};
use super::proto::{self, ensure_only};
use super::route::{HostPortMatch, RouteTable};
use super::xds::{XdsSources, config_source};

/// The filter's `@type`.
pub const HCM_TYPE: &str = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER_TYPE: &str = "envoy.extensions.filters.http.router.v3.Router";

/// Envoy's default HCM `stream_idle_timeout`.
const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Envoy's default downstream connection idle timeout.
const DEFAULT_CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Which HTTP codecs a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// HTTP/1.1 and HTTP/2 prior knowledge, detected from the connection preface.
    Auto,
    Http1,
    Http2,
}

/// Where an HCM's routes come from.
#[derive(Debug)]
pub enum RouteSpec {
    /// An inline `route_config`, and its proto for `/config_dump`.
    Inline(Arc<RouteTable>, Box<RouteConfiguration>),
    /// `rds`: the route configuration named `name`, from RDS over ADS. `host_port` is how
    /// this HCM matches Host ports, which a route table is built with.
    Rds { name: String, host_port: HostPortMatch },
}

/// A validated HTTP connection manager.
#[derive(Debug)]
pub struct HcmSpec {
    pub stat_prefix: String,
    pub codec: Codec,
    pub routes: RouteSpec,
    /// The `server` header value (validated at config time; cloning it does not allocate).
    pub server_name: http::HeaderValue,
    pub generate_request_id: bool,
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    pub stream_idle_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub access_logs: Vec<AccessLogSpec>,
    /// The router's `suppress_envoy_headers`: no `x-envoy-upstream-service-time`.
    pub suppress_envoy_headers: bool,
    /// `strip_any_host_port` / `strip_matching_host_port`: the port Envoy removes from the
    /// request's host before routing (the upstream sees the host without it too).
    pub strip_host_port: HostPortMatch,
    /// `normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action`.
    pub path_normalization: PathNormalization,
    pub http2: Http2Settings,
}

/// What `path_with_escaped_slashes_action` does with `%2F` and `%5C` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    #[default]
    Keep,
    /// 400 to a request whose path has one.
    Reject,
    /// Unescaped to `/` and `\` before the other steps.
    UnescapeAndForward,
    /// As `UnescapeAndForward`, then the client is redirected to the result.
    UnescapeAndRedirect,
}

/// The connection manager's path steps before routing (`crate::http::path` applies them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathNormalization {
    pub normalize: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl PathNormalization {
    /// Whether any step is on, so the common configuration costs one branch a request.
    pub fn is_active(&self) -> bool {
        *self != PathNormalization::default()
    }
}

/// The downstream HTTP/2 settings `http2_protocol_options` may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Settings {
    pub max_concurrent_streams: u32,
    pub initial_stream_window: u32,
    pub initial_connection_window: u32,
}

/// Unset, legate keeps the settings its HTTP/2 server has always had (hyper's: 200 streams,
/// 1 MiB windows) rather than Envoy's (2^31 - 1 streams, 256 MiB windows): a window is how
/// much request data a client may make legate buffer per stream.
impl Default for Http2Settings {
    fn default() -> Http2Settings {
        Http2Settings {
            max_concurrent_streams: 200,
            initial_stream_window: 1 << 20,
            initial_connection_window: 1 << 20,
        }
    }
}

impl Http2Settings {
    fn from_proto(proto: &Http2ProtocolOptionsProto, path: &str) -> Result<Http2Settings> {
        ensure_only(
            proto,
            &["max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size"],
            path,
        )?;
        // The bounds of Envoy's protocol.proto: each up to 2^31 - 1, from `min`.
        let ranged = |value: Option<u32>, field: &str, min: u32, default: u32| match value {
            None => Ok(default),
            Some(v) if (min..=0x7fff_ffff).contains(&v) => Ok(v),
            Some(_) => Err(ConfigError::invalid(
                join_path(path, field),
                format!("value must be inside range [{min}, 2147483647]"),
            )),
        };
        let defaults = Http2Settings::default();
        Ok(Http2Settings {
            max_concurrent_streams: ranged(
                proto.max_concurrent_streams.map(|v| v.value),
                "max_concurrent_streams",
                1,
                defaults.max_concurrent_streams,
            )?,
            initial_stream_window: ranged(
                proto.initial_stream_window_size.map(|v| v.value),
                "initial_stream_window_size",
                65_535,
                defaults.initial_stream_window,
            )?,
            initial_connection_window: ranged(
                proto.initial_connection_window_size.map(|v| v.value),
                "initial_connection_window_size",
                65_535,
                defaults.initial_connection_window,
            )?,
        })
    }
}

const SUPPORTED_HCM_FIELDS: &[&str] = &[
    "codec_type",
    "stat_prefix",
    "route_config",
    "rds",
    "http_filters",
    "server_name",
    "generate_request_id",
    "use_remote_address",
    "xff_num_trusted_hops",
    "stream_idle_timeout",
    "request_timeout",
    "common_http_protocol_options",
    "access_log",
    "strip_any_host_port",
    "strip_matching_host_port",
    "http_protocol_options",
    "http2_protocol_options",
    "normalize_path",
    "merge_slashes",
    "path_with_escaped_slashes_action",
];

impl HcmSpec {
    /// Translates an HCM; `listener_port` serves `strip_matching_host_port`.
    pub fn from_proto(proto: &HcmProto, listener_port: u16, path: &str, sources: &XdsSources) -> Result<HcmSpec> {
        ensure_only(proto, SUPPORTED_HCM_FIELDS, path)?;
        if proto.stat_prefix.is_empty() {
            return Err(ConfigError::invalid(
                join_path(path, "stat_prefix"),
                "value length must be at least 1 characters",
            ));
        }
        // Protocol options are accepted only at their defaults: each knob would change behaviour.
        if let Some(h1) = &proto.http_protocol_options {
            ensure_only(h1, &[], &join_path(path, "http_protocol_options"))?;
        }
        let http2 = match &proto.http2_protocol_options {
            Some(h2) => Http2Settings::from_proto(h2, &join_path(path, "http2_protocol_options"))?,
            None => Http2Settings::default(),
        };
        let codec = match CodecType::try_from(proto.codec_type) {
            Ok(CodecType::Auto) => Codec::Auto,
            Ok(CodecType::Http1) => Codec::Http1,
            Ok(CodecType::Http2) => Codec::Http2,
            Ok(CodecType::Http3) => return Err(ConfigError::unsupported(join_path(path, "codec_type"), "HTTP3")),
            Err(_) => return Err(ConfigError::invalid(join_path(path, "codec_type"), "unknown value")),
        };
        let host_port = match proto.strip_port_mode {
            Some(StripPortMode::StripAnyHostPort(true)) => HostPortMatch::StripAny,
            _ if proto.strip_matching_host_port => HostPortMatch::StripMatching(listener_port),
            _ => HostPortMatch::Keep,
        };
        let routes = match &proto.route_specifier {
            Some(RouteSpecifier::RouteConfig(rc)) => RouteSpec::Inline(
                Arc::new(
                    RouteTable::from_proto(rc, host_port).map_err(|e| e.within(&join_path(path, "route_config")))?,
                ),
                Box::new(rc.clone()),
            ),
            Some(RouteSpecifier::Rds(rds)) => {
                let rpath = join_path(path, "rds");
                ensure_only(rds, &["config_source", "route_config_name"], &rpath)?;
                let Some(source) = &rds.config_source else {
                    return Err(ConfigError::invalid(join_path(&rpath, "config_source"), "value is required"));
                };
                config_source(source, sources, &join_path(&rpath, "config_source"))?;
                if rds.route_config_name.is_empty() {
                    return Err(ConfigError::invalid(
                        join_path(&rpath, "route_config_name"),
                        "value length must be at least 1 characters",
                    ));
                }
                RouteSpec::Rds { name: rds.route_config_name.clone(), host_port }
            }
            Some(RouteSpecifier::ScopedRoutes(_)) => {
                return Err(ConfigError::unsupported(join_path(path, "scoped_routes"), ""));
            }
            None => {
                return Err(ConfigError::invalid(
                    path,
                    "route_specifier is required: one of route_config, rds, scoped_routes",
                ));
            }
        };
        let suppress_envoy_headers = http_filters(proto, path)?;
        let duration_or = |field: &Option<envoy_types::pb::google::protobuf::Duration>,
                           name: &str,
                           default: Option<Duration>|
         -> Result<Option<Duration>> {
            match field {
                // Envoy: 0 disables the timeout.
                Some(d) => Ok(Some(proto::duration(d, &join_path(path, name))?).filter(|t| !t.is_zero())),
                None => Ok(default),
            }
        };
        let stream_idle_timeout =
            duration_or(&proto.stream_idle_timeout, "stream_idle_timeout", Some(DEFAULT_STREAM_IDLE_TIMEOUT))?;
        let request_timeout = duration_or(&proto.request_timeout, "request_timeout", None)?;
        let idle_timeout = match &proto.common_http_protocol_options {
            Some(c) => {
                let cpath = join_path(path, "common_http_protocol_options");
                ensure_only(c, &["idle_timeout"], &cpath)?;
                match &c.idle_timeout {
                    Some(d) => Some(proto::duration(d, &join_path(&cpath, "idle_timeout"))?).filter(|t| !t.is_zero()),
                    None => Some(DEFAULT_CONNECTION_IDLE_TIMEOUT),
                }
            }
            None => Some(DEFAULT_CONNECTION_IDLE_TIMEOUT),
        };
        let access_logs = AccessLogSpec::from_protos(&proto.access_log, path)?;
        Ok(HcmSpec {
            stat_prefix: proto.stat_prefix.clone(),
            codec,
            routes,
            server_name: if proto.server_name.is_empty() {
                http::HeaderValue::from_static("envoy")
            } else {
                http::HeaderValue::from_str(&proto.server_name)
                    .map_err(|_| ConfigError::invalid(join_path(path, "server_name"), "not a valid header value"))?
            },
            generate_request_id: proto.generate_request_id.as_ref().is_none_or(|b| b.value),
            use_remote_address: proto.use_remote_address.as_ref().is_some_and(|b| b.value),
            xff_num_trusted_hops: proto.xff_num_trusted_hops,
            stream_idle_timeout,
            request_timeout,
            idle_timeout,
            access_logs,
            suppress_envoy_headers,
            strip_host_port: host_port,
            path_normalization: path_normalization(proto, path)?,
            http2,
        })
    }
}

/// The path steps before routing. `normalize_path` unset is Envoy's runtime default, off.
fn path_normalization(proto: &HcmProto, path: &str) -> Result<PathNormalization> {
    let escaped_slashes = match PathWithEscapedSlashesAction::try_from(proto.path_with_escaped_slashes_action) {
        Ok(
            PathWithEscapedSlashesAction::ImplementationSpecificDefault | PathWithEscapedSlashesAction::KeepUnchanged,
        ) => EscapedSlashes::Keep,
        Ok(PathWithEscapedSlashesAction::RejectRequest) => EscapedSlashes::Reject,
        Ok(PathWithEscapedSlashesAction::UnescapeAndForward) => EscapedSlashes::UnescapeAndForward,
        Ok(PathWithEscapedSlashesAction::UnescapeAndRedirect) => EscapedSlashes::UnescapeAndRedirect,
        Err(_) => {
            return Err(ConfigError::invalid(join_path(path, "path_with_escaped_slashes_action"), "unknown value"));
        }
    };
    Ok(PathNormalization {
        normalize: proto.normalize_path.as_ref().is_some_and(|b| b.value),
        merge_slashes: proto.merge_slashes,
        escaped_slashes,
    })
}

/// Checks the HTTP filter chain: the router last (with its `typed_config`, which Envoy
/// 1.40 requires), optional unknown filters skipped with a warning, anything else
/// unsupported. Returns the router's `suppress_envoy_headers`.
fn http_filters(proto: &HcmProto, path: &str) -> Result<bool> {
    let mut router = None;
    for (i, filter) in proto.http_filters.iter().enumerate() {
        let fpath = format!("{path}.http_filters[{i}]");
        if router.is_some() {
            return Err(ConfigError::invalid(
                &fpath,
                format!(
                    "Error: terminal filter named envoy.filters.http.router of type {ROUTER_TYPE} must be the last filter in a http filter chain."
                ),
            ));
        }
        let any = match &filter.config_type {
            Some(HttpFilterConfig::TypedConfig(any)) => any,
            Some(HttpFilterConfig::ConfigDiscovery(_)) => {
                return Err(ConfigError::unsupported(format!("{fpath}.config_discovery"), ""));
            }
            None if filter.is_optional => {
                tracing::warn!(filter = %filter.name, "skipping optional http filter without typed_config");
                continue;
            }
            None => {
                return Err(ConfigError::invalid(&fpath, format!("filter '{}' requires a typed_config", filter.name)));
            }
        };
        if proto::type_name(&any.type_url) == ROUTER_TYPE {
            let config: RouterProto = proto::unpack(any, &fpath)?;
            let tpath = format!("{fpath}.typed_config");
            ensure_only(&config, &["suppress_envoy_headers", "dynamic_stats", "start_child_span"], &tpath)?;
            router = Some(config.suppress_envoy_headers);
        } else if filter.disabled {
            continue;
        } else if filter.is_optional {
            tracing::warn!(filter = %filter.name, type_url = %any.type_url, "skipping optional http filter legate does not implement");
        } else {
            return Err(proto::unexpected_type(any, &fpath));
        }
    }
    router.ok_or_else(|| {
        ConfigError::invalid(
            join_path(path, "http_filters"),
            "the router filter (envoy.filters.http.router) must be the last http filter",
        )
    })
}
