//! Envoy's default tag extraction: a stat name becomes a tag-extracted name plus tags, which
//! `/stats/prometheus` prints as a metric family and labels.
//!
//! Each extractor is a regex run on the original name: group 1 is the text cut out of the
//! name, group 2 (or group 1 if absent) is the tag value. As in Envoy, extractors whose
//! pattern starts with a fixed first token only run on names with that first token, the
//! ones without a fixed token run first, and tags keep extraction order, which is the order
//! Envoy prints labels in. Only the extractors for stats legate emits are here.
//!
//! One deliberate difference: Envoy takes a single dot-free token as the cluster and
//! virtual host name, so `cluster.a.b.upstream_rq_total` yields cluster `a` and family
//! `cluster.b.upstream_rq_total` (envoyproxy/envoy#5239). Here the name runs up to the
//! known shape of what follows it (a single stat token, `circuit_breakers.<priority>.<stat>`,
//! ...), so dotted names stay whole; names without dots extract exactly as in Envoy.

use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;

/// A stat name split the Envoy way, rendered once for Prometheus.
#[derive(Debug)]
pub(super) struct TaggedName {
    /// The name with tag values cut out (Envoy's tag-extracted name); metric families group
    /// and sort by it.
    pub(super) extracted: String,
    /// The Prometheus metric family: `envoy_` plus the sanitized extracted name.
    pub(super) family: String,
    /// Prometheus labels `name="value",...` in extraction order; empty without tags.
    pub(super) labels: String,
}

impl TaggedName {
    pub(super) fn new(name: &str) -> TaggedName {
        let (extracted, tags) = extract(name);
        let family = format!("envoy_{}", sanitize(&extracted));
        let labels = tags
            .iter()
            .map(|(tag, value)| format!("{}=\"{}\"", sanitize(tag), escape_label_value(value)))
            .collect::<Vec<_>>()
            .join(",");
        TaggedName { extracted, family, labels }
    }
}

/// One of Envoy's default tag specifiers.
struct Extractor {
    /// Envoy's tag name, e.g. `envoy.cluster_name`.
    tag: &'static str,
    /// The first dot-separated token a name must have for this extractor to run.
    prefix: Option<&'static str>,
    /// Group 1: the text removed from the name; group 2, when present: the tag value.
    regex: Regex,
    /// A value that means "no tag" (Envoy's negative match), e.g. the admin listener.
    reject: Option<&'static str>,
}

impl Extractor {
    fn new(tag: &'static str, prefix: Option<&'static str>, pattern: &str) -> Extractor {
        Extractor {
            tag,
            prefix,
            // The patterns are constants covered by the tests below.
            regex: Regex::new(pattern).expect("tag extractor pattern is valid"),
            reject: None,
        }
    }
}

/// An IPv4 or bracketed IPv6 listener address with port, as Envoy writes it in stat names
/// (`0.0.0.0_10000`, `[__1]_443`).
const ADDRESS: &str = r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)";

/// What may follow `cluster.<name>.`: a single stat token, or one of the multi-token scopes
/// Envoy puts under a cluster, each with its fixed number of tokens. The cluster name is the
/// shortest prefix whose remainder fits, so dots in the name are kept.
const CLUSTER_REMAINDER: &str = r"(?:(?:outlier_detection|health_check|canary|internal|external|http1|http2|http3|retry|default|client_ssl_socket_factory)\.[^.]+|circuit_breakers\.[^.]+\.[^.]+|zone\.[^.]+\.[^.]+\.[^.]+|ssl\.(?:[^.]+\.)?[^.]+|grpc\.[^.]+\.(?:[^.]+\.)?[^.]+|[^.]+)";

/// The extractors in Envoy's application order: first those without a fixed first token,
/// then per first token Envoy's regex specifiers before its tokenized ones.
static EXTRACTORS: LazyLock<Vec<Extractor>> = LazyLock::new(|| {
    vec![
        // *_rq(_<code>) → `upstream_rq_200` becomes `upstream_rq`.
        Extractor::new("envoy.response_code", None, r"_rq(_(\d{3}))$"),
        // *_rq_(<class>)xx → `upstream_rq_2xx` becomes `upstream_rq_xx`.
        Extractor::new("envoy.response_code_class", None, r"_rq_((\d))xx$"),
        // listener.<address>.worker_(<id>.)*, server.worker_(<id>.)*, listener_manager.worker_(<id>.)*
        Extractor::new(
            "envoy.worker_id",
            None,
            &format!(r"^(?:listener\.(?:{ADDRESS}|[^.]+)\.|server\.|listener_manager\.)worker_((\d+)\.)"),
        ),
        // listener.[<address>.]http.(<stat_prefix>.)*
        Extractor::new("envoy.http_conn_manager_prefix", Some("listener"), r"^listener\..*?\.http\.(([^.]+)\.)"),
        // listener.(<address|stat_prefix>.)* except the admin listener
        Extractor {
            reject: Some("admin"),
            ..Extractor::new("envoy.listener_address", Some("listener"), &format!(r"^listener\.(({ADDRESS}|[^.]+)\.)"))
        },
        // http.[<stat_prefix>.]rds.(<route_config_name>.)<stat>; route config names may have dots.
        Extractor::new("envoy.rds_route_config", Some("http"), r"^http\.[^.]+\.rds\.(([\w.-]+)\.)\w+?$"),
        // http.[<stat_prefix>.]user_agent.(<user_agent>.)*
        Extractor::new("envoy.http_user_agent", Some("http"), r"^http\.[^.]+\.user_agent\.(([^.]+)\.)"),
        // vhost.[<vhost>.]vcluster.(<vcluster>.)<stat>; both names may contain dots.
        Extractor::new("envoy.virtual_cluster", Some("vhost"), r"^vhost\..+?\.vcluster\.((.+)\.)[^.]+$"),
        // tcp.(<stat_prefix>.)*
        Extractor::new("envoy.tcp_prefix", Some("tcp"), r"^tcp\.(([^.]+)\.)"),
        // cluster.(<cluster_name>.)*
        Extractor::new("envoy.cluster_name", Some("cluster"), &format!(r"^cluster\.((.+?)\.){CLUSTER_REMAINDER}$")),
        // http.(<stat_prefix>.)*
        Extractor::new("envoy.http_conn_manager_prefix", Some("http"), r"^http\.(([^.]+)\.)"),
        // vhost.(<vhost>.)* up to `vcluster.`, `route.` or the last token.
        Extractor::new(
            "envoy.virtual_host",
            Some("vhost"),
            r"^vhost\.((.+?)\.)(?:(?:vcluster|route)\..+\.[^.]+|[^.]+)$",
        ),
    ]
});

/// Runs the extractors over `name`, returning the tag-extracted name and the tags in order.
fn extract(name: &str) -> (String, Vec<(&'static str, String)>) {
    let first_token = name.find('.').map(|dot| &name[..dot]);
    let mut removed: Vec<Range<usize>> = Vec::new();
    let mut tags: Vec<(&'static str, String)> = Vec::new();
    for extractor in EXTRACTORS.iter() {
        if extractor.prefix.is_some() && extractor.prefix != first_token {
            continue;
        }
        // Envoy keeps the first value when two specifiers share a tag name.
        if tags.iter().any(|(tag, _)| *tag == extractor.tag) {
            continue;
        }
        let Some(caps) = extractor.regex.captures(name) else {
            continue;
        };
        let Some(cut) = caps.get(1) else {
            continue;
        };
        let value = caps.get(2).unwrap_or(cut).as_str();
        if extractor.reject == Some(value) {
            continue;
        }
        removed.push(cut.range());
        tags.push((extractor.tag, value.to_owned()));
    }
    removed.sort_by_key(|range| range.start);
    let mut extracted = String::with_capacity(name.len());
    let mut pos = 0;
    for range in removed {
        if range.start > pos {
            extracted.push_str(&name[pos..range.start]);
        }
        pos = pos.max(range.end);
    }
    extracted.push_str(&name[pos..]);
    (extracted, tags)
}

/// Replaces every character Prometheus forbids in names with `_`, as Envoy does.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// Escapes a label value per the Prometheus text format (backslash, quote, newline).
fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prom(name: &str) -> String {
        let t = TaggedName::new(name);
        format!("{}{{{}}}", t.family, t.labels)
    }

    #[test]
    fn all_patterns_compile() {
        assert_eq!(EXTRACTORS.len(), 12);
    }

    #[test]
    fn envoy_default_tags() {
        let cases = [
            ("cluster.foo.upstream_rq_total", r#"envoy_cluster_upstream_rq_total{envoy_cluster_name="foo"}"#),
            (
                "cluster.foo.upstream_rq_2xx",
                r#"envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="foo"}"#,
            ),
            (
                "cluster.foo.upstream_rq_200",
                r#"envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="foo"}"#,
            ),
            (
                "cluster.foo.outlier_detection.ejections_active",
                r#"envoy_cluster_outlier_detection_ejections_active{envoy_cluster_name="foo"}"#,
            ),
            (
                "cluster.foo.circuit_breakers.default.cx_open",
                r#"envoy_cluster_circuit_breakers_default_cx_open{envoy_cluster_name="foo"}"#,
            ),
            (
                "cluster.foo.internal.upstream_rq_503",
                r#"envoy_cluster_internal_upstream_rq{envoy_response_code="503",envoy_cluster_name="foo"}"#,
            ),
            (
                "http.ingress_http.downstream_rq_total",
                r#"envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress_http"}"#,
            ),
            (
                "http.ingress_http.downstream_rq_5xx",
                r#"envoy_http_downstream_rq_xx{envoy_response_code_class="5",envoy_http_conn_manager_prefix="ingress_http"}"#,
            ),
            (
                "http.admin.downstream_rq_total",
                r#"envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="admin"}"#,
            ),
            (
                "http.ingress_http.rds.local.route.config_reload",
                r#"envoy_http_rds_config_reload{envoy_rds_route_config="local.route",envoy_http_conn_manager_prefix="ingress_http"}"#,
            ),
            (
                "http.ingress_http.user_agent.ios.downstream_rq_total",
                r#"envoy_http_user_agent_downstream_rq_total{envoy_http_user_agent="ios",envoy_http_conn_manager_prefix="ingress_http"}"#,
            ),
            (
                "listener.0.0.0.0_10000.downstream_cx_total",
                r#"envoy_listener_downstream_cx_total{envoy_listener_address="0.0.0.0_10000"}"#,
            ),
            (
                "listener.[__1]_443.downstream_cx_total",
                r#"envoy_listener_downstream_cx_total{envoy_listener_address="[__1]_443"}"#,
            ),
            (
                "listener.0.0.0.0_10000.http.ingress_http.downstream_rq_2xx",
                r#"envoy_listener_http_downstream_rq_xx{envoy_response_code_class="2",envoy_http_conn_manager_prefix="ingress_http",envoy_listener_address="0.0.0.0_10000"}"#,
            ),
            (
                "listener.0.0.0.0_10000.worker_1.downstream_cx_active",
                r#"envoy_listener_worker_downstream_cx_active{envoy_worker_id="1",envoy_listener_address="0.0.0.0_10000"}"#,
            ),
            (
                "listener.admin.http.admin.downstream_rq_total",
                r#"envoy_listener_admin_http_downstream_rq_total{envoy_http_conn_manager_prefix="admin"}"#,
            ),
            ("listener.admin.downstream_cx_total", "envoy_listener_admin_downstream_cx_total{}"),
            (
                "vhost.backend.vcluster.other.upstream_rq_200",
                r#"envoy_vhost_vcluster_upstream_rq{envoy_response_code="200",envoy_virtual_cluster="other",envoy_virtual_host="backend"}"#,
            ),
            ("tcp.egress.downstream_cx_total", r#"envoy_tcp_downstream_cx_total{envoy_tcp_prefix="egress"}"#),
            (
                "listener_manager.worker_0.dispatcher.loop_duration_us",
                r#"envoy_listener_manager_worker_dispatcher_loop_duration_us{envoy_worker_id="0"}"#,
            ),
            ("server.uptime", "envoy_server_uptime{}"),
            ("cluster_manager.active_clusters", "envoy_cluster_manager_active_clusters{}"),
            ("listener_manager.total_listeners_active", "envoy_listener_manager_total_listeners_active{}"),
        ];
        for (name, want) in cases {
            assert_eq!(prom(name), want, "{name}");
        }
    }

    #[test]
    fn dotted_names_stay_whole() {
        let cases = [
            (
                "cluster.foo.example.com.upstream_rq_total",
                r#"envoy_cluster_upstream_rq_total{envoy_cluster_name="foo.example.com"}"#,
            ),
            (
                "cluster.outbound|443||api.example.com.upstream_rq_2xx",
                r#"envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="outbound|443||api.example.com"}"#,
            ),
            (
                "cluster.a.b.circuit_breakers.high.rq_open",
                r#"envoy_cluster_circuit_breakers_high_rq_open{envoy_cluster_name="a.b"}"#,
            ),
            (
                "cluster.a.b.outlier_detection.ejections_total",
                r#"envoy_cluster_outlier_detection_ejections_total{envoy_cluster_name="a.b"}"#,
            ),
            (
                // `internal` followed by two tokens is not the internal scope, so it is name.
                "cluster.api.internal.corp.upstream_rq_total",
                r#"envoy_cluster_upstream_rq_total{envoy_cluster_name="api.internal.corp"}"#,
            ),
            (
                "vhost.www.example.com.vcluster.api.v1.upstream_rq_total",
                r#"envoy_vhost_vcluster_upstream_rq_total{envoy_virtual_cluster="api.v1",envoy_virtual_host="www.example.com"}"#,
            ),
        ];
        for (name, want) in cases {
            assert_eq!(prom(name), want, "{name}");
        }
    }

    #[test]
    fn labels_and_names_are_sanitized() {
        assert_eq!(
            prom("cluster.a\"b\\c.upstream_cx_total"),
            r#"envoy_cluster_upstream_cx_total{envoy_cluster_name="a\"b\\c"}"#
        );
        assert_eq!(prom("weird-stat:name.x"), "envoy_weird_stat_name_x{}");
    }
}
