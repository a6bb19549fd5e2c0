//! Route configuration (`envoy.config.route.v3.RouteConfiguration`) → [`RouteTable`], the
//! validated, immutable table the HTTP layer consults for every request.
//!
//! This module owns translation and validation: regexes are compiled, domains lowercased and
//! header names and values parsed here, so the request path (`crate::http::route`, which owns
//! matching, rewrites and header mutation) neither parses nor allocates for them. Every set
//! field legate does not implement is rejected with its field path, never ignored.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{HeaderValueOption, header_value_option::HeaderAppendAction};
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::google::protobuf::Duration as DurationProto;
use http::{HeaderName, HeaderValue, StatusCode};

/// The Envoy message a [`RouteTable`] is built from.
pub use envoy_types::pb::envoy::config::route::v3::RouteConfiguration as RouteConfigurationProto;

use super::error::{ConfigError, Result, join_path};
use super::proto;

#[cfg(test)]
mod tests;

/// `reject_fields!(path; field, ...)`: rejects the first set field among bindings named after the
/// proto fields, so the error path always spells the field as the config does.
macro_rules! reject_fields {
    ($path:expr; $($field:ident),+ $(,)?) => {
        reject_set($path, &[$((stringify!($field), IsSet::is_set($field))),+])
    };
}

mod hash;
mod retry;

pub use retry::{RetryOn, RetryPolicy};

/// Envoy's default upstream timeout for a route (`RouteAction.timeout` unset).
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// Envoy's default for `max_direct_response_body_size_bytes`.
const DEFAULT_MAX_DIRECT_RESPONSE_BODY: u32 = 4096;

/// A validated route configuration: virtual hosts indexed by domain, plus the
/// configuration-level header mutations.
#[derive(Debug)]
pub struct RouteTable {
    pub(crate) name: String,
    pub(crate) virtual_hosts: Vec<VirtualHost>,
    pub(crate) domains: DomainIndex,
    pub(crate) host_port: HostPortMatch,
    /// `vhost_header`: `None` means `:authority` (the `Host` header in HTTP/1).
    pub(crate) vhost_header: Option<HeaderName>,
    pub(crate) request_headers: HeaderMutations,
    pub(crate) response_headers: HeaderMutations,
    pub(crate) most_specific_header_mutations_wins: bool,
    pub(crate) validate_clusters: Option<bool>,
    pub(crate) clusters: BTreeSet<String>,
}

/// How the port of the request's host takes part in domain matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPortMatch {
    /// The port is part of the host (Envoy's default).
    Keep,
    /// Any port is ignored (`strip_any_host_port` or `ignore_port_in_host_matching`).
    StripAny,
    /// The port is ignored when it equals the listener's (`strip_matching_host_port`).
    StripMatching(u16),
}

/// Virtual host indexes by lowercased domain text.
pub(crate) type DomainMap = HashMap<Box<[u8]>, usize>;

/// Virtual hosts by lowercased domain, in Envoy's lookup order.
#[derive(Debug, Default)]
pub(crate) struct DomainIndex {
    pub(crate) exact: DomainMap,
    /// `*.foo.com` / `*-bar.com` keyed by the text after `*`, grouped by length, longest first.
    pub(crate) suffixes: Vec<(usize, DomainMap)>,
    /// `foo.*` keyed by the text before `*`, grouped by length, longest first.
    pub(crate) prefixes: Vec<(usize, DomainMap)>,
    /// The virtual host of the `*` domain.
    pub(crate) any: Option<usize>,
}

/// A virtual host: a set of domains and the ordered routes for them.
#[derive(Debug)]
pub struct VirtualHost {
    pub(crate) name: String,
    pub(crate) routes: Vec<Route>,
    pub(crate) request_headers: HeaderMutations,
    pub(crate) response_headers: HeaderMutations,
    /// `include_request_attempt_count`: `x-envoy-attempt-count` on each upstream attempt.
    pub(crate) attempt_count_to_upstream: bool,
    /// `include_attempt_count_in_response`: `x-envoy-attempt-count` on the response.
    pub(crate) attempt_count_in_response: bool,
    /// `include_is_timeout_retry_header`: `x-envoy-is-timeout-retry` on each retry.
    pub(crate) is_timeout_retry_header: bool,
}

/// One route: what requests it matches and what it does with them.
#[derive(Debug)]
pub struct Route {
    pub(crate) name: String,
    pub(crate) matcher: RouteMatch,
    pub(crate) action: RouteAction,
    pub(crate) request_headers: HeaderMutations,
    pub(crate) response_headers: HeaderMutations,
}

/// What a matched route does with the request.
#[derive(Debug)]
pub enum RouteAction {
    /// Forward to an upstream cluster.
    Forward(ForwardAction),
    /// Answer locally with `status` and an optional body.
    DirectResponse { status: StatusCode, body: Option<Bytes> },
    /// Answer with a redirect.
    Redirect(RedirectAction),
}

/// The `route` action: which cluster, how to rewrite the request, which timeouts.
#[derive(Debug)]
pub struct ForwardAction {
    pub(crate) cluster: ClusterSpecifier,
    pub(crate) cluster_not_found_status: StatusCode,
    pub(crate) path_rewrite: Option<PathRewrite>,
    pub(crate) host_rewrite: Option<HostRewrite>,
    pub(crate) auto_host_rewrite: bool,
    pub(crate) append_x_forwarded_host: bool,
    pub(crate) timeout: Option<Duration>,
    pub(crate) idle_timeout: IdleTimeout,
    /// The route's retry policy, else its virtual host's.
    pub(crate) retry: Option<Box<RetryPolicy>>,
    /// How a gRPC request's `grpc-timeout` sets its timeouts, when the route says.
    pub(crate) grpc_timeout: Option<GrpcTimeout>,
    /// What a request is hashed by, for ring hash load balancing.
    pub(crate) hash_policy: Box<[hash::HashPolicy]>,
}

/// What a route does with a gRPC request's `grpc-timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcTimeout {
    /// `max_stream_duration` (Envoy's "new timeouts"): the router keeps no timeout of its
    /// own (the route's `timeout` no longer applies), and a gRPC request's `grpc-timeout`,
    /// capped by `max` (zero: no cap) and less the offset, limits the stream's whole life;
    /// without `max` the header is not read.
    StreamDuration { max: Option<Duration>, offset: Option<Duration> },
    /// The deprecated `max_grpc_timeout` / `grpc_timeout_offset`: a gRPC request's router
    /// timeout is its `grpc-timeout` less the offset, capped by `max` (zero: no cap; no
    /// header: `max`), and the upstream request's `grpc-timeout` says what the router expects.
    Router { max: Duration, offset: Option<Duration> },
}

/// The per-route stream idle timeout (`RouteAction.idle_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleTimeout {
    /// Unset: the connection manager's `stream_idle_timeout` applies.
    Inherit,
    /// Zero: no idle timeout at all, not even the connection manager's.
    Disabled,
    /// Time out after this long without activity.
    After(Duration),
}

/// A cluster name as the proxy sees it: borrowed from the route table or from a request header.
pub type ClusterRef<'a> = &'a str;

/// Where a forwarded request's cluster comes from.
#[derive(Debug)]
pub(crate) enum ClusterSpecifier {
    Single(ClusterTarget),
    /// Targets with the running sum of weights (exclusive upper bound), and the total.
    Weighted {
        targets: Vec<(u64, ClusterTarget)>,
        total: u64,
    },
}

/// A cluster named in config or by a request header.
#[derive(Debug)]
pub(crate) enum ClusterTarget {
    Named(String),
    Header(HeaderName),
}

/// A path rewrite for forwarding or redirecting.
#[derive(Debug)]
pub(crate) enum PathRewrite {
    /// `prefix_rewrite`: the part the route matched is replaced with `replacement`.
    Prefix { matched: MatchedPart, replacement: String },
    /// `regex_rewrite`: every match in the path (without query) is substituted.
    Regex(RegexRewrite),
}

/// How much of the path a route's path matcher consumed, for `prefix_rewrite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MatchedPart {
    /// The first `n` bytes (a prefix match, case-insensitive or not).
    Prefix(usize),
    /// The whole path without the query (exact path and regex matches).
    WholePath,
}

/// A compiled `RegexMatchAndSubstitute`.
#[derive(Debug)]
pub(crate) struct RegexRewrite {
    pub(crate) regex: regex::Regex,
    pub(crate) substitution: Vec<Substitution>,
}

/// A piece of an RE2 substitution string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Substitution {
    Literal(String),
    Group(usize),
}

/// How the Host of a forwarded request is rewritten.
#[derive(Debug)]
pub(crate) enum HostRewrite {
    Literal(HeaderValue),
    Header(HeaderName),
    PathRegex(RegexRewrite),
}

/// The `redirect` action.
#[derive(Debug)]
pub struct RedirectAction {
    pub(crate) scheme: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) port: Option<u16>,
    pub(crate) path: RedirectPath,
    pub(crate) strip_query: bool,
    pub(crate) status: StatusCode,
}

/// The path part of a redirect.
#[derive(Debug)]
pub(crate) enum RedirectPath {
    /// The request's path.
    Keep,
    /// `path_redirect`; a query in it replaces the request's and survives `strip_query`.
    Replace { path: String, query: Option<String> },
    /// `prefix_rewrite` or `regex_rewrite` of the request's path.
    Rewrite(PathRewrite),
}

/// What a route requires of a request besides its host.
#[derive(Debug)]
pub(crate) struct RouteMatch {
    pub(crate) path: PathMatch,
    pub(crate) headers: Vec<HeaderMatch>,
    pub(crate) query: Vec<QueryMatch>,
    pub(crate) cookies: Vec<CookieMatch>,
    pub(crate) grpc: bool,
}

/// The path specifier of a route match; paths are compared without the query.
#[derive(Debug)]
pub(crate) enum PathMatch {
    Prefix {
        prefix: String,
        ignore_case: bool,
    },
    Exact {
        path: String,
        ignore_case: bool,
    },
    /// Anchored at both ends: the whole path must match.
    Regex(regex::Regex),
    /// `path_separated_prefix`: the prefix, then the end of the path or a `/`.
    Separated {
        prefix: String,
        ignore_case: bool,
    },
    /// `connect_matcher`: CONNECT requests only.
    Connect,
}

/// Where a header matcher reads its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderSource {
    Method,
    Authority,
    Path,
    Scheme,
    Header(HeaderName),
    /// `:status`, which only a response has.
    Status,
    /// A name Envoy never has in its request map (`host`, which it keeps as `:authority`).
    Absent,
}

/// A compiled `HeaderMatcher`.
#[derive(Debug)]
pub(crate) struct HeaderMatch {
    pub(crate) source: HeaderSource,
    pub(crate) rule: HeaderRule,
    pub(crate) invert: bool,
    pub(crate) missing_as_empty: bool,
}

/// What a header matcher checks.
#[derive(Debug)]
pub(crate) enum HeaderRule {
    /// Present (`true`) or absent (`false`).
    Present(bool),
    Value(StringMatch),
    /// `[start, end)` on a base-10 integer value.
    Range {
        start: i64,
        end: i64,
    },
}

/// A compiled `StringMatcher` over bytes (header values may be non-UTF-8).
#[derive(Debug)]
pub(crate) enum StringMatch {
    Exact {
        value: Box<[u8]>,
        ignore_case: bool,
    },
    Prefix {
        value: Box<[u8]>,
        ignore_case: bool,
    },
    Suffix {
        value: Box<[u8]>,
        ignore_case: bool,
    },
    Contains {
        value: Box<[u8]>,
        ignore_case: bool,
    },
    /// Anchored at both ends.
    Regex(regex::bytes::Regex),
}

/// A compiled `QueryParameterMatcher`; only the first value of a key counts.
#[derive(Debug)]
pub(crate) struct QueryMatch {
    pub(crate) name: String,
    pub(crate) rule: QueryRule,
}

/// What a query parameter matcher checks.
#[derive(Debug)]
pub(crate) enum QueryRule {
    Present(bool),
    Value(StringMatch),
}

/// A compiled `CookieMatcher`.
#[derive(Debug)]
pub(crate) struct CookieMatch {
    pub(crate) name: String,
    pub(crate) value: StringMatch,
    pub(crate) invert: bool,
}

/// The header removals and additions of one level (route, virtual host or route config).
#[derive(Debug, Default)]
pub(crate) struct HeaderMutations {
    pub(crate) remove: Vec<HeaderName>,
    pub(crate) add: Vec<HeaderAdd>,
    /// Whether an addition depends on the headers already present, so its decision must be
    /// taken before any addition of this level is applied.
    pub(crate) conditional: bool,
}

/// One header addition, its value already formatted.
#[derive(Debug)]
pub(crate) struct HeaderAdd {
    pub(crate) name: HeaderName,
    pub(crate) value: HeaderValue,
    pub(crate) action: AppendAction,
}

/// `HeaderValueOption.append_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

impl RouteTable {
    /// Translates and validates a route configuration; `host_port` says how the Host port takes
    /// part in domain matching (from the HCM's `strip_any_host_port` /
    /// `strip_matching_host_port` and the listener port).
    pub fn from_proto(proto: &RouteConfigurationProto, host_port: HostPortMatch) -> Result<RouteTable> {
        let RouteConfigurationProto {
            name,
            virtual_hosts,
            vhds,
            internal_only_headers,
            response_headers_to_add,
            response_headers_to_remove,
            request_headers_to_add,
            request_headers_to_remove,
            most_specific_header_mutations_wins,
            validate_clusters,
            max_direct_response_body_size_bytes,
            cluster_specifier_plugins,
            request_mirror_policies,
            ignore_port_in_host_matching,
            vhost_header,
            ignore_path_parameters_in_path_matching,
            typed_per_filter_config,
            metadata: _,
            route_specifiers,
        } = proto;
        reject_fields!(""; vhds, internal_only_headers, cluster_specifier_plugins,
            request_mirror_policies, ignore_path_parameters_in_path_matching,
            typed_per_filter_config, route_specifiers)?;
        let limits = Limits {
            max_body: max_direct_response_body_size_bytes.map_or(DEFAULT_MAX_DIRECT_RESPONSE_BODY, |v| v.value),
        };
        let host_port = if *ignore_port_in_host_matching { HostPortMatch::StripAny } else { host_port };
        let vhost_header = match vhost_header.as_str() {
            "" | ":authority" => None,
            header => Some(plain_header_name(header, "vhost_header")?),
        };

        let mut tables = Vec::with_capacity(virtual_hosts.len());
        let mut domains = DomainIndexBuilder::default();
        let mut clusters = BTreeSet::new();
        for (i, vh) in virtual_hosts.iter().enumerate() {
            let path = format!("virtual_hosts[{i}]");
            let vhost = virtual_host(vh, &path, &limits, &mut clusters)?;
            for (j, domain) in vh.domains.iter().enumerate() {
                domains.insert(domain, i).map_err(|message| {
                    ConfigError::invalid(format!("{path}.domains[{j}]"), format!("{message} in route '{name}'"))
                })?;
            }
            tables.push(vhost);
        }

        Ok(RouteTable {
            name: name.clone(),
            virtual_hosts: tables,
            domains: domains.build(),
            host_port,
            vhost_header,
            request_headers: header_mutations(request_headers_to_add, request_headers_to_remove, "", "request")?,
            response_headers: header_mutations(response_headers_to_add, response_headers_to_remove, "", "response")?,
            most_specific_header_mutations_wins: *most_specific_header_mutations_wins,
            validate_clusters: validate_clusters.map(|v| v.value),
            clusters,
        })
    }

    /// The route configuration's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Cluster names routes name statically (`cluster`, `weighted_clusters`), each once, for the
    /// caller to check against the configured clusters when [`validate_clusters`] is true.
    ///
    /// [`validate_clusters`]: RouteTable::validate_clusters
    pub fn referenced_clusters(&self) -> impl Iterator<Item = &str> {
        self.clusters.iter().map(String::as_str)
    }

    /// Whether unknown clusters are a config error; Envoy's default for inline route configs
    /// (`validate_clusters` unset) is true.
    pub fn validate_clusters(&self) -> bool {
        self.validate_clusters.unwrap_or(true)
    }

    /// `validate_clusters` as configured: RDS callers default `None` to false, as Envoy does.
    pub fn validate_clusters_setting(&self) -> Option<bool> {
        self.validate_clusters
    }

    /// The virtual hosts in config order.
    pub fn virtual_hosts(&self) -> &[VirtualHost] {
        &self.virtual_hosts
    }
}

impl VirtualHost {
    /// The virtual host's name (used in stats).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The routes in config order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Whether each upstream attempt carries `x-envoy-attempt-count`.
    pub fn attempt_count_to_upstream(&self) -> bool {
        self.attempt_count_to_upstream
    }

    /// Whether the response carries `x-envoy-attempt-count`.
    pub fn attempt_count_in_response(&self) -> bool {
        self.attempt_count_in_response
    }

    /// Whether a retry carries `x-envoy-is-timeout-retry`.
    pub fn is_timeout_retry_header(&self) -> bool {
        self.is_timeout_retry_header
    }
}

impl Route {
    /// The route's name (may be empty).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the route does with a matched request.
    pub fn action(&self) -> &RouteAction {
        &self.action
    }
}

impl ForwardAction {
    /// The upstream timeout for the whole response; `None` means no timeout (configured as 0).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The per-route stream idle timeout.
    pub fn idle_timeout(&self) -> IdleTimeout {
        self.idle_timeout
    }

    /// The retry policy (the route's, else its virtual host's).
    pub fn retry_policy(&self) -> Option<&RetryPolicy> {
        self.retry.as_deref()
    }

    /// How a gRPC request's `grpc-timeout` sets its timeouts, if the route says.
    pub fn grpc_timeout(&self) -> Option<GrpcTimeout> {
        self.grpc_timeout
    }

    /// Whether the Host should become the chosen upstream host's hostname (applied by the proxy).
    pub fn auto_host_rewrite(&self) -> bool {
        self.auto_host_rewrite
    }

    /// The status for a request whose cluster does not exist (`cluster_not_found_response_code`).
    pub fn cluster_not_found_status(&self) -> StatusCode {
        self.cluster_not_found_status
    }

    /// The request's hash under the route's `hash_policy`, if it has one that finds any.
    pub fn request_hash(&self, parts: &http::request::Parts, remote: std::net::SocketAddr) -> Option<u64> {
        if self.hash_policy.is_empty() {
            return None;
        }
        hash::request_hash(&self.hash_policy, parts, remote)
    }
}

impl RedirectAction {
    /// The redirect's status code (301 unless configured).
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// Limits from the route configuration that nested translation needs.
struct Limits {
    max_body: u32,
}

/// Fails with `unsupported` at the first field of `fields` that is set.
fn reject_set(path: &str, fields: &[(&str, bool)]) -> Result<()> {
    match fields.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(ConfigError::unsupported(join_path(path, field), "")),
        None => Ok(()),
    }
}

/// Whether a proto field holds a value (proto3: a non-default one).
trait IsSet {
    fn is_set(&self) -> bool;
}

impl<T> IsSet for Option<T> {
    fn is_set(&self) -> bool {
        self.is_some()
    }
}

impl<T> IsSet for Vec<T> {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}

impl<K, V> IsSet for HashMap<K, V> {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}

impl IsSet for String {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}

impl IsSet for bool {
    fn is_set(&self) -> bool {
        *self
    }
}

/// Enums: the zero value is each enum's default (`NONE`, `DEFAULT`, ...).
impl IsSet for i32 {
    fn is_set(&self) -> bool {
        *self != 0
    }
}

/// Collects domains, rejecting duplicates as Envoy does (case-insensitively).
#[derive(Default)]
struct DomainIndexBuilder {
    index: DomainIndex,
    suffixes: HashMap<usize, DomainMap>,
    prefixes: HashMap<usize, DomainMap>,
}

impl DomainIndexBuilder {
    /// Adds one domain of virtual host `vhost`; the error is the message without a path.
    fn insert(&mut self, domain: &str, vhost: usize) -> std::result::Result<(), String> {
        if domain.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(format!("domain '{domain}' contains a control character"));
        }
        let lower = domain.to_ascii_lowercase().into_bytes();
        // A domain is one of four kinds by where its `*` is; a `*` elsewhere is a literal.
        let fresh = if lower == b"*" {
            self.index.any.replace(vhost).is_none()
        } else if let Some(suffix) = lower.strip_prefix(b"*") {
            let group = self.suffixes.entry(suffix.len()).or_default();
            group.insert(suffix.into(), vhost).is_none()
        } else if let Some(prefix) = lower.strip_suffix(b"*") {
            let group = self.prefixes.entry(prefix.len()).or_default();
            group.insert(prefix.into(), vhost).is_none()
        } else {
            self.index.exact.insert(lower.into_boxed_slice(), vhost).is_none()
        };
        if fresh {
            Ok(())
        } else {
            Err(format!("Only unique values for domains are permitted. Duplicate entry of domain {domain}"))
        }
    }

    /// Orders wildcard groups longest first: the longest wildcard wins.
    fn build(self) -> DomainIndex {
        let longest_first = |groups: HashMap<usize, DomainMap>| {
            let mut groups: Vec<_> = groups.into_iter().collect();
            groups.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
            groups
        };
        DomainIndex { suffixes: longest_first(self.suffixes), prefixes: longest_first(self.prefixes), ..self.index }
    }
}

fn virtual_host(
    proto: &route_pb::VirtualHost,
    path: &str,
    limits: &Limits,
    clusters: &mut BTreeSet<String>,
) -> Result<VirtualHost> {
    #[allow(deprecated)]
    let route_pb::VirtualHost {
        name,
        domains,
        routes,
        matcher,
        require_tls,
        virtual_clusters,
        rate_limits,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        cors,
        typed_per_filter_config,
        include_request_attempt_count,
        include_attempt_count_in_response,
        retry_policy,
        retry_policy_typed_config,
        hedge_policy,
        include_is_timeout_retry_header,
        per_request_buffer_limit_bytes,
        request_body_buffer_limit,
        request_mirror_policies,
        metadata: _,
        route_specifiers,
    } = proto;
    reject_fields!(path; matcher, require_tls, virtual_clusters, rate_limits, cors,
        typed_per_filter_config, retry_policy_typed_config, hedge_policy, per_request_buffer_limit_bytes,
        request_body_buffer_limit, request_mirror_policies, route_specifiers)?;
    if name.is_empty() {
        return Err(ConfigError::invalid(join_path(path, "name"), "value length must be at least 1"));
    }
    if domains.is_empty() {
        return Err(ConfigError::invalid(join_path(path, "domains"), "value must contain at least 1 item"));
    }
    let retry = retry_policy.as_ref().map(|p| retry::retry_policy(p, &join_path(path, "retry_policy"))).transpose()?;
    let routes = routes
        .iter()
        .enumerate()
        .map(|(j, r)| route(r, &format!("{path}.routes[{j}]"), limits, clusters, retry.as_ref()))
        .collect::<Result<_>>()?;
    Ok(VirtualHost {
        name: name.clone(),
        routes,
        request_headers: header_mutations(request_headers_to_add, request_headers_to_remove, path, "request")?,
        response_headers: header_mutations(response_headers_to_add, response_headers_to_remove, path, "response")?,
        attempt_count_to_upstream: *include_request_attempt_count,
        attempt_count_in_response: *include_attempt_count_in_response,
        is_timeout_retry_header: *include_is_timeout_retry_header,
    })
}

fn route(
    proto: &route_pb::Route,
    path: &str,
    limits: &Limits,
    clusters: &mut BTreeSet<String>,
    vhost_retry: Option<&RetryPolicy>,
) -> Result<Route> {
    #[allow(deprecated)]
    let route_pb::Route {
        name,
        r#match,
        metadata: _,
        decorator: _,
        typed_per_filter_config,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        tracing,
        per_request_buffer_limit_bytes,
        stat_prefix: _,
        request_body_buffer_limit,
        route_specifiers,
        action,
    } = proto;
    reject_fields!(path; typed_per_filter_config, tracing, per_request_buffer_limit_bytes,
        request_body_buffer_limit, route_specifiers)?;
    let match_path = join_path(path, "match");
    let matcher = match r#match {
        Some(m) => route_match(m, &match_path)?,
        None => return Err(ConfigError::invalid(match_path, "value is required")),
    };
    let matched = matched_part(&matcher.path);
    let action = match action {
        Some(route_pb::route::Action::Route(a)) => {
            let forward = forward_action(a, &join_path(path, "route"), matched, vhost_retry)?;
            forward.cluster.named(clusters);
            RouteAction::Forward(forward)
        }
        Some(route_pb::route::Action::Redirect(r)) => {
            RouteAction::Redirect(redirect_action(r, &join_path(path, "redirect"), matched)?)
        }
        Some(route_pb::route::Action::DirectResponse(d)) => {
            direct_response(d, &join_path(path, "direct_response"), limits)?
        }
        Some(route_pb::route::Action::FilterAction(_)) => {
            return Err(ConfigError::unsupported(join_path(path, "filter_action"), ""));
        }
        Some(route_pb::route::Action::NonForwardingAction(_)) => {
            return Err(ConfigError::unsupported(join_path(path, "non_forwarding_action"), ""));
        }
        None => {
            return Err(ConfigError::invalid(path, "a route needs one of route, redirect or direct_response"));
        }
    };
    Ok(Route {
        name: name.clone(),
        matcher,
        action,
        request_headers: header_mutations(request_headers_to_add, request_headers_to_remove, path, "request")?,
        response_headers: header_mutations(response_headers_to_add, response_headers_to_remove, path, "response")?,
    })
}

impl ClusterSpecifier {
    /// Adds the statically named clusters to `out`.
    fn named(&self, out: &mut BTreeSet<String>) {
        let mut add = |target: &ClusterTarget| {
            if let ClusterTarget::Named(name) = target {
                out.insert(name.clone());
            }
        };
        match self {
            ClusterSpecifier::Single(target) => add(target),
            ClusterSpecifier::Weighted { targets, .. } => targets.iter().for_each(|(_, t)| add(t)),
        }
    }
}

fn route_match(proto: &route_pb::RouteMatch, path: &str) -> Result<RouteMatch> {
    use route_pb::route_match::PathSpecifier;

    let route_pb::RouteMatch {
        case_sensitive,
        runtime_fraction,
        headers,
        query_parameters,
        cookies,
        grpc,
        tls_context,
        dynamic_metadata,
        filter_state,
        path_specifier,
    } = proto;
    reject_fields!(path; runtime_fraction, tls_context, dynamic_metadata, filter_state)?;
    // `case_sensitive` defaults to true and does not apply to regexes.
    let ignore_case = case_sensitive.is_some_and(|c| !c.value);
    let path_match = match path_specifier {
        Some(PathSpecifier::Prefix(prefix)) => PathMatch::Prefix { prefix: prefix.clone(), ignore_case },
        Some(PathSpecifier::Path(p)) => PathMatch::Exact { path: p.clone(), ignore_case },
        Some(PathSpecifier::SafeRegex(r)) => {
            PathMatch::Regex(full_match_regex(r, &join_path(path, "safe_regex"), regex::Regex::new)?)
        }
        Some(PathSpecifier::PathSeparatedPrefix(prefix)) => {
            // The proto's rule: no `?` or `#`, at least one character, no trailing `/`.
            if prefix.is_empty() || prefix.contains(['?', '#']) || prefix.ends_with('/') {
                return Err(ConfigError::invalid(
                    join_path(path, "path_separated_prefix"),
                    "value must be a path without '?' or '#' that does not end in '/'",
                ));
            }
            PathMatch::Separated { prefix: prefix.clone(), ignore_case }
        }
        Some(PathSpecifier::ConnectMatcher(_)) => PathMatch::Connect,
        Some(PathSpecifier::PathMatchPolicy(_)) => {
            return Err(ConfigError::unsupported(join_path(path, "path_match_policy"), ""));
        }
        None => {
            return Err(ConfigError::invalid(
                path,
                "one of prefix, path, safe_regex, path_separated_prefix or connect_matcher is required",
            ));
        }
    };
    Ok(RouteMatch {
        path: path_match,
        headers: headers
            .iter()
            .enumerate()
            .map(|(i, h)| header_matcher(h, &format!("{path}.headers[{i}]")))
            .collect::<Result<_>>()?,
        query: query_parameters
            .iter()
            .enumerate()
            .map(|(i, q)| query_matcher(q, &format!("{path}.query_parameters[{i}]")))
            .collect::<Result<_>>()?,
        cookies: cookies
            .iter()
            .enumerate()
            .map(|(i, c)| cookie_matcher(c, &format!("{path}.cookies[{i}]")))
            .collect::<Result<_>>()?,
        grpc: grpc.is_some(),
    })
}

/// What `prefix_rewrite` replaces for a route with this path matcher.
fn matched_part(path: &PathMatch) -> MatchedPart {
    match path {
        PathMatch::Prefix { prefix, .. } | PathMatch::Separated { prefix, .. } => MatchedPart::Prefix(prefix.len()),
        PathMatch::Exact { .. } | PathMatch::Regex(_) | PathMatch::Connect => MatchedPart::WholePath,
    }
}

#[allow(deprecated)]
fn header_matcher(proto: &route_pb::HeaderMatcher, path: &str) -> Result<HeaderMatch> {
    use route_pb::header_matcher::HeaderMatchSpecifier as Spec;

    let route_pb::HeaderMatcher { name, invert_match, treat_missing_header_as_empty, header_match_specifier } = proto;
    let source = header_source(name, &join_path(path, "name"))?;
    let non_empty = |value: &str, field: &str| -> Result<Box<[u8]>> {
        if value.is_empty() {
            return Err(ConfigError::invalid(join_path(path, field), "value length must be at least 1"));
        }
        Ok(value.as_bytes().into())
    };
    let rule = match header_match_specifier {
        // Without a specifier the header only has to be present.
        None => HeaderRule::Present(true),
        Some(Spec::PresentMatch(present)) => HeaderRule::Present(*present),
        Some(Spec::ExactMatch(v)) => {
            HeaderRule::Value(StringMatch::Exact { value: v.as_bytes().into(), ignore_case: false })
        }
        Some(Spec::PrefixMatch(v)) => {
            HeaderRule::Value(StringMatch::Prefix { value: non_empty(v, "prefix_match")?, ignore_case: false })
        }
        Some(Spec::SuffixMatch(v)) => {
            HeaderRule::Value(StringMatch::Suffix { value: non_empty(v, "suffix_match")?, ignore_case: false })
        }
        Some(Spec::ContainsMatch(v)) => {
            HeaderRule::Value(StringMatch::Contains { value: non_empty(v, "contains_match")?, ignore_case: false })
        }
        Some(Spec::SafeRegexMatch(r)) => HeaderRule::Value(StringMatch::Regex(full_match_regex(
            r,
            &join_path(path, "safe_regex_match"),
            regex::bytes::Regex::new,
        )?)),
        Some(Spec::RangeMatch(r)) => HeaderRule::Range { start: r.start, end: r.end },
        Some(Spec::StringMatch(m)) => HeaderRule::Value(string_matcher(m, &join_path(path, "string_match"))?),
    };
    Ok(HeaderMatch { source, rule, invert: *invert_match, missing_as_empty: *treat_missing_header_as_empty })
}

/// Resolves a matcher's header name to where hyper keeps that value.
fn header_source(name: &str, path: &str) -> Result<HeaderSource> {
    if name.is_empty() {
        return Err(ConfigError::invalid(path, "value length must be at least 1"));
    }
    let lower = name.to_ascii_lowercase();
    Ok(match lower.as_str() {
        ":method" => HeaderSource::Method,
        ":authority" => HeaderSource::Authority,
        ":path" => HeaderSource::Path,
        ":scheme" => HeaderSource::Scheme,
        ":status" => HeaderSource::Status,
        // Envoy keeps the HTTP/1 Host header as `:authority`, so a `host` matcher never sees a
        // value there; matching the same way keeps configs behaving identically.
        "host" => HeaderSource::Absent,
        other if other.starts_with(':') => {
            return Err(ConfigError::unsupported(path, format!("header {other}")));
        }
        other => HeaderSource::Header(
            HeaderName::from_bytes(other.as_bytes())
                .map_err(|_| ConfigError::invalid(path, format!("invalid header name '{name}'")))?,
        ),
    })
}

fn query_matcher(proto: &route_pb::QueryParameterMatcher, path: &str) -> Result<QueryMatch> {
    use route_pb::query_parameter_matcher::QueryParameterMatchSpecifier as Spec;

    let route_pb::QueryParameterMatcher { name, query_parameter_match_specifier } = proto;
    if name.is_empty() || name.len() > 1024 {
        return Err(ConfigError::invalid(join_path(path, "name"), "value length must be between 1 and 1024 bytes"));
    }
    let rule = match query_parameter_match_specifier {
        None => QueryRule::Present(true),
        Some(Spec::PresentMatch(present)) => QueryRule::Present(*present),
        Some(Spec::StringMatch(m)) => QueryRule::Value(string_matcher(m, &join_path(path, "string_match"))?),
    };
    Ok(QueryMatch { name: name.clone(), rule })
}

fn cookie_matcher(proto: &route_pb::CookieMatcher, path: &str) -> Result<CookieMatch> {
    let route_pb::CookieMatcher { name, string_match, invert_match } = proto;
    if name.is_empty() || name.len() > 1024 {
        return Err(ConfigError::invalid(join_path(path, "name"), "value length must be between 1 and 1024 bytes"));
    }
    let value_path = join_path(path, "string_match");
    let value = match string_match {
        Some(m) => string_matcher(m, &value_path)?,
        None => return Err(ConfigError::invalid(value_path, "value is required")),
    };
    Ok(CookieMatch { name: name.clone(), value, invert: *invert_match })
}

/// Compiles a `StringMatcher`; `ignore_case` lowercases the pattern once here.
pub(crate) fn string_matcher(proto: &StringMatcher, path: &str) -> Result<StringMatch> {
    let StringMatcher { ignore_case, match_pattern } = proto;
    let ignore_case = *ignore_case;
    let pattern = |value: &str, field: &str| -> Result<Box<[u8]>> {
        if value.is_empty() {
            return Err(ConfigError::invalid(join_path(path, field), "value length must be at least 1"));
        }
        Ok(fold_case(value, ignore_case))
    };
    Ok(match match_pattern {
        Some(MatchPattern::Exact(v)) => StringMatch::Exact { value: fold_case(v, ignore_case), ignore_case },
        Some(MatchPattern::Prefix(v)) => StringMatch::Prefix { value: pattern(v, "prefix")?, ignore_case },
        Some(MatchPattern::Suffix(v)) => StringMatch::Suffix { value: pattern(v, "suffix")?, ignore_case },
        Some(MatchPattern::Contains(v)) => StringMatch::Contains { value: pattern(v, "contains")?, ignore_case },
        // `ignore_case` has no effect on regexes (the proto says so).
        Some(MatchPattern::SafeRegex(r)) => {
            StringMatch::Regex(full_match_regex(r, &join_path(path, "safe_regex"), regex::bytes::Regex::new)?)
        }
        Some(MatchPattern::Custom(_)) => {
            return Err(ConfigError::unsupported(join_path(path, "custom"), ""));
        }
        None => {
            return Err(ConfigError::invalid(path, "one of exact, prefix, suffix, contains or safe_regex is required"));
        }
    })
}

fn fold_case(value: &str, ignore_case: bool) -> Box<[u8]> {
    if ignore_case { value.to_ascii_lowercase().into_bytes().into() } else { value.as_bytes().into() }
}

/// Compiles a `RegexMatcher` that must match the whole input (RE2 semantics).
fn full_match_regex<R>(
    proto: &RegexMatcher,
    path: &str,
    compile: impl FnOnce(&str) -> std::result::Result<R, regex::Error>,
) -> Result<R> {
    // `google_re2` is the only engine; its `max_program_size` is deprecated and advisory.
    let RegexMatcher { regex, engine_type: _ } = proto;
    if regex.is_empty() {
        return Err(ConfigError::invalid(join_path(path, "regex"), "value length must be at least 1"));
    }
    compile(&format!("^(?:{regex})$")).map_err(|e| regex_error(&join_path(path, "regex"), regex, &e))
}

fn regex_error(path: &str, regex: &str, error: &regex::Error) -> ConfigError {
    // regex's parse errors span several lines (pattern, caret, message); keep the message.
    let text = error.to_string();
    let message = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().trim();
    let message = message.strip_prefix("error: ").unwrap_or(message);
    ConfigError::invalid(path, format!("invalid regex '{regex}': {message}"))
}

/// Compiles a `RegexMatchAndSubstitute`: an unanchored pattern and an RE2 substitution string
/// (`\1` names a group, `\\` is a backslash).
fn regex_rewrite(proto: &RegexMatchAndSubstitute, path: &str) -> Result<RegexRewrite> {
    let RegexMatchAndSubstitute { pattern, substitution } = proto;
    let pattern_path = join_path(path, "pattern");
    let Some(RegexMatcher { regex: pattern, engine_type: _ }) = pattern else {
        return Err(ConfigError::invalid(pattern_path, "value is required"));
    };
    let regex_path = join_path(&pattern_path, "regex");
    if pattern.is_empty() {
        return Err(ConfigError::invalid(regex_path, "value length must be at least 1"));
    }
    let regex = regex::Regex::new(pattern).map_err(|e| regex_error(&regex_path, pattern, &e))?;
    let substitution = parse_substitution(substitution, regex.captures_len())
        .map_err(|message| ConfigError::invalid(join_path(path, "substitution"), message))?;
    Ok(RegexRewrite { regex, substitution })
}

/// Splits an RE2 rewrite string into literals and group references.
pub(crate) fn parse_substitution(text: &str, groups: usize) -> std::result::Result<Vec<Substitution>, String> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            literal.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => literal.push('\\'),
            Some(d @ '0'..='9') => {
                let group = d as usize - '0' as usize;
                if group >= groups {
                    return Err(format!(
                        "substitution '{text}' refers to group {group}, the pattern has {}",
                        groups - 1
                    ));
                }
                if !literal.is_empty() {
                    pieces.push(Substitution::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(Substitution::Group(group));
            }
            _ => {
                return Err(format!("invalid substitution '{text}': '\\' must be followed by a digit or '\\'"));
            }
        }
    }
    if !literal.is_empty() {
        pieces.push(Substitution::Literal(literal));
    }
    Ok(pieces)
}

#[allow(deprecated)]
fn forward_action(
    proto: &route_pb::RouteAction,
    path: &str,
    matched: MatchedPart,
    vhost_retry: Option<&RetryPolicy>,
) -> Result<ForwardAction> {
    use route_pb::route_action::{ClusterSpecifier as Spec, HostRewriteSpecifier as HostSpec};

    let route_pb::RouteAction {
        cluster_not_found_response_code,
        metadata_match,
        prefix_rewrite,
        regex_rewrite: regex_rewrite_proto,
        path_rewrite_policy,
        path_rewrite,
        append_x_forwarded_host,
        timeout,
        idle_timeout,
        flush_timeout,
        early_data_policy,
        retry_policy,
        retry_policy_typed_config,
        request_mirror_policies,
        priority,
        rate_limits,
        include_vh_rate_limits,
        hash_policy,
        cors,
        max_grpc_timeout,
        grpc_timeout_offset,
        upgrade_configs,
        internal_redirect_policy,
        internal_redirect_action,
        max_internal_redirects,
        hedge_policy,
        max_stream_duration,
        cluster_specifier,
        host_rewrite_specifier,
    } = proto;
    reject_fields!(path; metadata_match, path_rewrite_policy, path_rewrite, flush_timeout,
        early_data_policy, retry_policy_typed_config, request_mirror_policies,
        priority, rate_limits, include_vh_rate_limits, cors, upgrade_configs,
        internal_redirect_policy, internal_redirect_action, max_internal_redirects, hedge_policy)?;

    let cluster = match cluster_specifier {
        Some(Spec::Cluster(name)) => {
            if name.is_empty() {
                return Err(ConfigError::invalid(join_path(path, "cluster"), "value length must be at least 1"));
            }
            ClusterSpecifier::Single(ClusterTarget::Named(name.clone()))
        }
        Some(Spec::ClusterHeader(header)) => ClusterSpecifier::Single(ClusterTarget::Header(plain_header_name(
            header,
            &join_path(path, "cluster_header"),
        )?)),
        Some(Spec::WeightedClusters(w)) => weighted_clusters(w, &join_path(path, "weighted_clusters"))?,
        Some(Spec::ClusterSpecifierPlugin(_)) => {
            return Err(ConfigError::unsupported(join_path(path, "cluster_specifier_plugin"), ""));
        }
        Some(Spec::InlineClusterSpecifierPlugin(_)) => {
            return Err(ConfigError::unsupported(join_path(path, "inline_cluster_specifier_plugin"), ""));
        }
        None => {
            return Err(ConfigError::invalid(path, "one of cluster, cluster_header or weighted_clusters is required"));
        }
    };
    let cluster_not_found_status = match cluster_not_found_response_code {
        0 => StatusCode::SERVICE_UNAVAILABLE,
        1 => StatusCode::NOT_FOUND,
        2 => StatusCode::INTERNAL_SERVER_ERROR,
        other => {
            return Err(ConfigError::invalid(
                join_path(path, "cluster_not_found_response_code"),
                format!("unknown enum value {other}"),
            ));
        }
    };

    let path_rewrite = match (prefix_rewrite.as_str(), regex_rewrite_proto) {
        ("", None) => None,
        (prefix, None) => {
            header_value_text(prefix, &join_path(path, "prefix_rewrite"))?;
            Some(PathRewrite::Prefix { matched, replacement: prefix.to_owned() })
        }
        ("", Some(r)) => Some(PathRewrite::Regex(regex_rewrite(r, &join_path(path, "regex_rewrite"))?)),
        (_, Some(_)) => {
            return Err(ConfigError::invalid(
                join_path(path, "regex_rewrite"),
                "only one of prefix_rewrite, regex_rewrite, path_rewrite_policy or path_rewrite may be specified",
            ));
        }
    };

    let mut auto_host_rewrite = false;
    let host_rewrite = match host_rewrite_specifier {
        None => None,
        Some(HostSpec::HostRewriteLiteral(host)) if host.is_empty() => None,
        Some(HostSpec::HostRewriteLiteral(host)) => Some(HostRewrite::Literal(
            HeaderValue::from_str(host)
                .map_err(|_| ConfigError::invalid(join_path(path, "host_rewrite_literal"), "invalid header value"))?,
        )),
        Some(HostSpec::AutoHostRewrite(flag)) => {
            auto_host_rewrite = flag.value;
            None
        }
        Some(HostSpec::HostRewriteHeader(header)) if header.is_empty() => None,
        Some(HostSpec::HostRewriteHeader(header)) => {
            Some(HostRewrite::Header(plain_header_name(header, &join_path(path, "host_rewrite_header"))?))
        }
        Some(HostSpec::HostRewritePathRegex(r)) => {
            Some(HostRewrite::PathRegex(regex_rewrite(r, &join_path(path, "host_rewrite_path_regex"))?))
        }
        Some(HostSpec::HostRewrite(format)) => {
            let field = join_path(path, "host_rewrite");
            let value = literal_format(format.as_bytes(), &field)?;
            if value.is_empty() {
                // The proto: an empty rewrite result leaves the Host alone.
                None
            } else {
                Some(HostRewrite::Literal(
                    HeaderValue::from_bytes(&value).map_err(|_| ConfigError::invalid(field, "invalid header value"))?,
                ))
            }
        }
    };

    let timeout = match timeout {
        None => Some(DEFAULT_ROUTE_TIMEOUT),
        Some(d) => Some(proto::duration(d, &join_path(path, "timeout"))?).filter(|d| !d.is_zero()),
    };
    let idle_timeout = match idle_timeout {
        None => IdleTimeout::Inherit,
        Some(d) => match proto::duration(d, &join_path(path, "idle_timeout"))? {
            d if d.is_zero() => IdleTimeout::Disabled,
            d => IdleTimeout::After(d),
        },
    };

    // The route's policy replaces its virtual host's whole.
    let retry = match retry_policy {
        Some(p) => Some(retry::retry_policy(p, &join_path(path, "retry_policy"))?),
        None => vhost_retry.cloned(),
    };
    let grpc_timeout = grpc_timeout(max_stream_duration.as_ref(), *max_grpc_timeout, *grpc_timeout_offset, path)?;

    Ok(ForwardAction {
        cluster,
        cluster_not_found_status,
        path_rewrite,
        host_rewrite,
        auto_host_rewrite,
        append_x_forwarded_host: *append_x_forwarded_host,
        timeout,
        idle_timeout,
        retry: retry.map(Box::new),
        grpc_timeout,
        hash_policy: hash::hash_policies(hash_policy, &join_path(path, "hash_policy"))?,
    })
}

/// The route's gRPC timeout settings: `max_stream_duration`'s, else the deprecated fields'.
/// A `max_stream_duration` itself (a limit on every stream's life) is refused unless zero.
fn grpc_timeout(
    stream: Option<&route_pb::route_action::MaxStreamDuration>,
    legacy_max: Option<DurationProto>,
    legacy_offset: Option<DurationProto>,
    path: &str,
) -> Result<Option<GrpcTimeout>> {
    let duration =
        |d: Option<DurationProto>, field: &str| d.map(|d| proto::duration(&d, &join_path(path, field))).transpose();
    if let Some(stream) = stream {
        let field = "max_stream_duration.max_stream_duration";
        if duration(stream.max_stream_duration, field)?.is_some_and(|d| !d.is_zero()) {
            return Err(ConfigError::unsupported(join_path(path, field), "only 0 (no limit)"));
        }
        let max = duration(stream.grpc_timeout_header_max, "max_stream_duration.grpc_timeout_header_max")?;
        let offset = duration(stream.grpc_timeout_header_offset, "max_stream_duration.grpc_timeout_header_offset")?;
        return Ok(Some(GrpcTimeout::StreamDuration { max, offset }));
    }
    let max = duration(legacy_max, "max_grpc_timeout")?;
    let offset = duration(legacy_offset, "grpc_timeout_offset")?;
    Ok(max.map(|max| GrpcTimeout::Router { max, offset }))
}

#[allow(deprecated)]
fn weighted_clusters(proto: &route_pb::WeightedCluster, path: &str) -> Result<ClusterSpecifier> {
    use route_pb::weighted_cluster::RandomValueSpecifier;

    // `total_weight` is deprecated: the proto says clients use the sum of the weights.
    let route_pb::WeightedCluster { clusters, total_weight: _, runtime_key_prefix, random_value_specifier } = proto;
    reject_fields!(path; runtime_key_prefix)?;
    // Name the oneof member that is set, as the config spells it.
    match random_value_specifier {
        Some(RandomValueSpecifier::HeaderName(_)) => reject_set(path, &[("header_name", true)])?,
        Some(RandomValueSpecifier::UseHashPolicy(_)) => reject_set(path, &[("use_hash_policy", true)])?,
        None => {}
    }
    if clusters.is_empty() {
        return Err(ConfigError::invalid(join_path(path, "clusters"), "value must contain at least 1 item"));
    }
    let mut total = 0u64;
    let mut targets = Vec::with_capacity(clusters.len());
    for (i, c) in clusters.iter().enumerate() {
        let cpath = format!("{path}.clusters[{i}]");
        let route_pb::weighted_cluster::ClusterWeight {
            name,
            cluster_header,
            weight,
            metadata_match,
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
            typed_per_filter_config,
            host_rewrite_specifier,
        } = c;
        reject_fields!(&cpath; metadata_match, request_headers_to_add, request_headers_to_remove,
            response_headers_to_add, response_headers_to_remove, typed_per_filter_config)?;
        // The oneof's only member.
        reject_set(&cpath, &[("host_rewrite_literal", host_rewrite_specifier.is_some())])?;
        let target = match (name.is_empty(), cluster_header.is_empty()) {
            (false, true) => ClusterTarget::Named(name.clone()),
            (true, false) => {
                ClusterTarget::Header(plain_header_name(cluster_header, &join_path(&cpath, "cluster_header"))?)
            }
            (true, true) => {
                return Err(ConfigError::invalid(cpath, "one of name or cluster_header must be specified"));
            }
            (false, false) => {
                return Err(ConfigError::invalid(cpath, "only one of name or cluster_header may be specified"));
            }
        };
        total += u64::from(weight.map_or(0, |w| w.value));
        targets.push((total, target));
    }
    if total == 0 {
        return Err(ConfigError::invalid(
            join_path(path, "clusters"),
            "sum of weights in the weighted_cluster must be greater than 0",
        ));
    }
    if total > u64::from(u32::MAX) {
        return Err(ConfigError::invalid(
            join_path(path, "clusters"),
            format!("sum of weights in the weighted_cluster must not exceed {}", u32::MAX),
        ));
    }
    Ok(ClusterSpecifier::Weighted { targets, total })
}

fn redirect_action(proto: &route_pb::RedirectAction, path: &str, matched: MatchedPart) -> Result<RedirectAction> {
    use route_pb::redirect_action::{PathRewriteSpecifier as PathSpec, SchemeRewriteSpecifier as SchemeSpec};

    let route_pb::RedirectAction {
        host_redirect,
        port_redirect,
        response_code,
        strip_query,
        scheme_rewrite_specifier,
        path_rewrite_specifier,
    } = proto;
    let status = match response_code {
        0 => StatusCode::MOVED_PERMANENTLY,
        1 => StatusCode::FOUND,
        2 => StatusCode::SEE_OTHER,
        3 => StatusCode::TEMPORARY_REDIRECT,
        4 => StatusCode::PERMANENT_REDIRECT,
        other => {
            return Err(ConfigError::invalid(join_path(path, "response_code"), format!("unknown enum value {other}")));
        }
    };
    let scheme = match scheme_rewrite_specifier {
        None | Some(SchemeSpec::HttpsRedirect(false)) => None,
        Some(SchemeSpec::HttpsRedirect(true)) => Some("https".to_owned()),
        Some(SchemeSpec::SchemeRedirect(s)) if s.is_empty() => None,
        Some(SchemeSpec::SchemeRedirect(s)) => {
            let valid = s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            if !valid {
                return Err(ConfigError::invalid(join_path(path, "scheme_redirect"), format!("invalid scheme '{s}'")));
            }
            Some(s.to_ascii_lowercase())
        }
    };
    let host = match host_redirect.as_str() {
        "" => None,
        host => {
            header_value_text(host, &join_path(path, "host_redirect"))?;
            Some(host.to_owned())
        }
    };
    let port = match *port_redirect {
        0 => None,
        p => Some(
            u16::try_from(p)
                .map_err(|_| ConfigError::invalid(join_path(path, "port_redirect"), "value must be a port number"))?,
        ),
    };
    let redirect_path = match path_rewrite_specifier {
        None => RedirectPath::Keep,
        Some(PathSpec::PathRedirect(p)) if p.is_empty() => RedirectPath::Keep,
        Some(PathSpec::PathRedirect(p)) => {
            header_value_text(p, &join_path(path, "path_redirect"))?;
            match p.split_once('?') {
                Some((p, q)) => RedirectPath::Replace { path: p.to_owned(), query: Some(q.to_owned()) },
                None => RedirectPath::Replace { path: p.clone(), query: None },
            }
        }
        Some(PathSpec::PrefixRewrite(p)) if p.is_empty() => RedirectPath::Keep,
        Some(PathSpec::PrefixRewrite(p)) => {
            header_value_text(p, &join_path(path, "prefix_rewrite"))?;
            RedirectPath::Rewrite(PathRewrite::Prefix { matched, replacement: p.clone() })
        }
        Some(PathSpec::RegexRewrite(r)) => {
            RedirectPath::Rewrite(PathRewrite::Regex(regex_rewrite(r, &join_path(path, "regex_rewrite"))?))
        }
        Some(PathSpec::PathRewrite(_)) => {
            return Err(ConfigError::unsupported(join_path(path, "path_rewrite"), ""));
        }
    };
    Ok(RedirectAction { scheme, host, port, path: redirect_path, strip_query: *strip_query, status })
}

fn direct_response(proto: &route_pb::DirectResponseAction, path: &str, limits: &Limits) -> Result<RouteAction> {
    let route_pb::DirectResponseAction { status, body, body_format } = proto;
    reject_fields!(path; body_format)?;
    let status = u16::try_from(*status)
        .ok()
        .filter(|s| (200..600).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| ConfigError::invalid(join_path(path, "status"), "value must be inside range [200, 600)"))?;
    let body = match body {
        Some(source) => proto::data_source(source, &join_path(path, "body"), "response body", Some(limits.max_body))?,
        None => None,
    };
    Ok(RouteAction::DirectResponse { status, body: body.filter(|b| !b.is_empty()) })
}

/// Checks text that ends up in a header value (no control characters but tab).
fn header_value_text(value: &str, path: &str) -> Result<()> {
    HeaderValue::from_str(value).map(drop).map_err(|_| ConfigError::invalid(path, "value contains a control character"))
}

/// Parses a regular header name (`cluster_header`, `vhost_header`, ...): lowercased and valid.
fn plain_header_name(name: &str, path: &str) -> Result<HeaderName> {
    if name.is_empty() {
        return Err(ConfigError::invalid(path, "value length must be at least 1"));
    }
    if name.starts_with(':') {
        return Err(ConfigError::unsupported(path, format!("pseudo-header {name}")));
    }
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| ConfigError::invalid(path, format!("invalid header name '{name}'")))
}

/// Parses a header name a mutation may touch: Envoy forbids `:`-prefixed names and `host`.
fn mutable_header_name(name: &str, path: &str) -> Result<HeaderName> {
    if name.is_empty() {
        return Err(ConfigError::invalid(path, "value length must be at least 1"));
    }
    if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
        return Err(ConfigError::invalid(path, ":-prefixed or host headers may not be modified"));
    }
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| ConfigError::invalid(path, format!("invalid header name '{name}'")))
}

/// Translates one level's `{kind}_headers_to_add` / `{kind}_headers_to_remove` (`kind` is
/// `request` or `response`).
pub(crate) fn header_mutations(
    add: &[HeaderValueOption],
    remove: &[String],
    path: &str,
    kind: &str,
) -> Result<HeaderMutations> {
    let remove_field = join_path(path, &format!("{kind}_headers_to_remove"));
    let remove = remove
        .iter()
        .enumerate()
        .map(|(i, name)| mutable_header_name(name, &format!("{remove_field}[{i}]")))
        .collect::<Result<_>>()?;
    let mutations = header_additions(add, &join_path(path, &format!("{kind}_headers_to_add")))?;
    Ok(HeaderMutations { remove, ..mutations })
}

/// Translates a list of header additions at `field` (no removals).
pub(crate) fn header_additions(add: &[HeaderValueOption], field: &str) -> Result<HeaderMutations> {
    let mut adds = Vec::with_capacity(add.len());
    for (i, option) in add.iter().enumerate() {
        if let Some(a) = header_add(option, &format!("{field}[{i}]"))? {
            adds.push(a);
        }
    }
    let conditional = adds
        .iter()
        .any(|a: &HeaderAdd| matches!(a.action, AppendAction::AddIfAbsent | AppendAction::OverwriteIfExists));
    Ok(HeaderMutations { remove: Vec::new(), add: adds, conditional })
}

/// Translates one `HeaderValueOption`; `None` when its value is empty and not kept.
#[allow(deprecated)]
fn header_add(option: &HeaderValueOption, path: &str) -> Result<Option<HeaderAdd>> {
    let HeaderValueOption { header, append, append_action, keep_empty_value } = option;
    let header_path = join_path(path, "header");
    let Some(header) = header else {
        return Err(ConfigError::invalid(header_path, "value is required"));
    };
    let name = mutable_header_name(&header.key, &join_path(&header_path, "key"))?;
    let (raw, field) = match (header.value.is_empty(), header.raw_value.is_empty()) {
        (false, false) => {
            return Err(ConfigError::invalid(header_path, "only one of value or raw_value can be set"));
        }
        (true, false) => (header.raw_value.as_slice(), "raw_value"),
        _ => (header.value.as_bytes(), "value"),
    };
    let value_path = join_path(&header_path, field);
    let value = literal_format(raw, &value_path)?;
    if value.is_empty() && !keep_empty_value {
        // Envoy drops custom headers whose value is empty unless told to keep them.
        return Ok(None);
    }
    let value =
        HeaderValue::from_bytes(&value).map_err(|_| ConfigError::invalid(value_path, "invalid header value"))?;
    let action = match (append, append_action) {
        (Some(_), a) if *a != HeaderAppendAction::AppendIfExistsOrAdd as i32 => {
            return Err(ConfigError::invalid(path, "both append and append_action are set and it's not allowed"));
        }
        (Some(append), _) if append.value => AppendAction::AppendIfExistsOrAdd,
        (Some(_), _) => AppendAction::OverwriteIfExistsOrAdd,
        (None, a) => match HeaderAppendAction::try_from(*a) {
            Ok(HeaderAppendAction::AppendIfExistsOrAdd) => AppendAction::AppendIfExistsOrAdd,
            Ok(HeaderAppendAction::AddIfAbsent) => AppendAction::AddIfAbsent,
            Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => AppendAction::OverwriteIfExistsOrAdd,
            Ok(HeaderAppendAction::OverwriteIfExists) => AppendAction::OverwriteIfExists,
            Err(_) => {
                return Err(ConfigError::invalid(join_path(path, "append_action"), format!("unknown enum value {a}")));
            }
        },
    };
    Ok(Some(HeaderAdd { name, value, action }))
}

/// Formats a header value that may only hold literal text: `%%` is a `%`, and any
/// `%COMMAND%` substitution is not supported.
pub(crate) fn literal_format(text: &[u8], path: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.iter().position(|&b| b == b'%') {
        out.extend_from_slice(&rest[..at]);
        let after = &rest[at + 1..];
        if after.first() == Some(&b'%') {
            out.push(b'%');
            rest = &after[1..];
            continue;
        }
        return match after.iter().position(|&b| b == b'%') {
            Some(end) => Err(ConfigError::unsupported(
                path,
                format!("header value substitution %{}%", String::from_utf8_lossy(&after[..end])),
            )),
            None => Err(ConfigError::invalid(
                path,
                format!("'{}': a '%' must be escaped as '%%'", String::from_utf8_lossy(text)),
            )),
        };
    }
    out.extend_from_slice(rest);
    Ok(out)
}
