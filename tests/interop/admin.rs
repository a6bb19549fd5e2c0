//! The admin API side by side: `/clusters` (text and JSON, counters masked), `/stats`
//! (legate's names ⊇ Envoy's for the families legate claims, and the values of the
//! counters the same traffic must move alike), `/config_dump` (static sections as JSON),
//! `/listeners`, `/ready` and `/server_info` keys. Ports are replaced by their
//! placeholder names first, so each proxy's own ports compare equal.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::proxy::Proxy;
use crate::report::Report;

/// Port number → placeholder name, per proxy.
pub type PortNames = BTreeMap<u16, String>;

static PORT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"([:_])(\d{2,5})\b").unwrap());

/// Replaces `:PORT` and `_PORT` (listener stat names) by `:${name}`.
pub fn normalize_text(text: &str, ports: &PortNames) -> String {
    PORT.replace_all(text, |c: &regex::Captures| {
        let port: u16 = c[2].parse().unwrap_or(0);
        match ports.get(&port) {
            Some(name) => format!("{}${{{name}}}", &c[1]),
            None => c[0].to_owned(),
        }
    })
    .into_owned()
}

/// `normalize_text` on every string, and port numbers (`port_value`, a filter chain's
/// `destination_port`) replaced by their names.
pub fn normalize_json(value: &mut Value, ports: &PortNames) {
    match value {
        Value::String(s) => *s = normalize_text(s, ports),
        Value::Array(items) => items.iter_mut().for_each(|v| normalize_json(v, ports)),
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if (key == "port_value" || key == "destination_port")
                    && let Some(port) = v.as_u64().and_then(|p| ports.get(&(p as u16)))
                {
                    *v = Value::String(format!("${{{port}}}"));
                } else if key == "last_updated" || key == "uptime_current_epoch" || key == "uptime_all_epochs" {
                    *v = Value::String("<time>".into());
                } else {
                    normalize_json(v, ports);
                }
            }
        }
        _ => {}
    }
}

/// Compares two JSON values, recording one difference per differing path. Arrays of
/// different lengths are one difference at the array's path.
pub fn diff_json(report: &mut Report, config: &str, check: &str, path: &str, legate: &Value, envoy: &Value) {
    match (legate, envoy) {
        (Value::Object(l), Value::Object(e)) => {
            let keys: BTreeSet<&String> = l.keys().chain(e.keys()).collect();
            for key in keys {
                let sub = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match (l.get(key), e.get(key)) {
                    (Some(lv), Some(ev)) => diff_json(report, config, check, &sub, lv, ev),
                    (lv, ev) => report.differ(config, check, &sub, &show(lv), &show(ev)),
                }
            }
        }
        (Value::Array(l), Value::Array(e)) if l.len() == e.len() => {
            for (i, (lv, ev)) in l.iter().zip(e).enumerate() {
                diff_json(report, config, check, &format!("{path}[{i}]"), lv, ev);
            }
        }
        _ => report.compare(config, check, path, &short(legate), &short(envoy)),
    }
    report.ran(config, check);
}

fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "(absent)".to_owned(), short)
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 400 { format!("{}…", text.chars().take(400).collect::<String>()) } else { text }
}

/// Runs every admin comparison for one config; the values of `uncompared_stats` are not
/// compared.
pub async fn compare(
    report: &mut Report,
    config: &str,
    uncompared_stats: &[String],
    legate: (&Proxy, &PortNames),
    envoy: (&Proxy, &PortNames),
) {
    clusters_text(report, config, legate, envoy).await;
    clusters_json(report, config, legate, envoy).await;
    stats(report, config, uncompared_stats, legate, envoy).await;
    prometheus(report, config, legate, envoy).await;
    config_dump(report, config, legate, envoy).await;
    listeners(report, config, legate, envoy).await;
    ready(report, config, legate.0, envoy.0).await;
    server_info(report, config, legate.0, envoy.0).await;
}

/// An admin GET with the proxy's ports and its own directory replaced by their names.
async fn get_normalized(proxy: (&Proxy, &PortNames), path: &str) -> (u16, String) {
    let (status, body) = proxy.0.admin_get(path).await;
    let body = body.replace(&proxy.0.dir.display().to_string(), "${dir}");
    (status.as_u16(), normalize_text(&body, proxy.1))
}

/// Sorts the array at `key` of every object in `items` by the string at `by` (a path of
/// keys): for lists whose order Envoy takes from a hash map.
fn sort_by(value: &mut Value, key: &str, by: &[&str]) {
    if let Some(items) = value.get_mut(key).and_then(Value::as_array_mut) {
        items.sort_by_cached_key(|item| {
            by.iter().try_fold(item, |v, k| v.get(k)).and_then(Value::as_str).unwrap_or("").to_owned()
        });
    }
}

async fn get_json(proxy: (&Proxy, &PortNames), path: &str) -> Value {
    let (_, body) = proxy.0.admin_get(path).await;
    let body = body.replace(&proxy.0.dir.display().to_string(), "${dir}");
    let mut value: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| Value::String(format!("not JSON ({e}): {body}")));
    normalize_json(&mut value, proxy.1);
    value
}

static HOST_COUNTER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(.+::(cx_active|cx_connect_fail|cx_total|rq_active|rq_error|rq_success|rq_timeout|rq_total))::\d+$")
        .unwrap()
});

/// `/clusters` lines keyed by everything before the last `::`, counter values masked.
fn cluster_lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let line = HOST_COUNTER.replace(line, "$1::#");
            match line.rsplit_once("::") {
                Some((key, value)) => (key.to_owned(), value.to_owned()),
                None => (line.into_owned(), String::new()),
            }
        })
        .collect()
}

async fn clusters_text(report: &mut Report, config: &str, legate: (&Proxy, &PortNames), envoy: (&Proxy, &PortNames)) {
    let (l_status, l_body) = get_normalized(legate, "/clusters").await;
    let (e_status, e_body) = get_normalized(envoy, "/clusters").await;
    report.compare(config, "clusters", "status", &l_status.to_string(), &e_status.to_string());
    let (l, e) = (cluster_lines(&l_body), cluster_lines(&e_body));
    let keys: BTreeSet<&String> = l.keys().chain(e.keys()).collect();
    for key in keys {
        let absent = || "(absent)".to_owned();
        let lv = l.get(key).cloned().unwrap_or_else(absent);
        let ev = e.get(key).cloned().unwrap_or_else(absent);
        report.compare(config, "clusters", &format!("line {key}"), &lv, &ev);
    }
}

/// The elements of the array under `key`; none when `value` is not an object holding one (an
/// answer that is not the expected JSON is a difference to report, where indexing would panic).
fn array_items<'a>(value: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    value.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten()
}

async fn clusters_json(report: &mut Report, config: &str, legate: (&Proxy, &PortNames), envoy: (&Proxy, &PortNames)) {
    let mask = |mut v: Value| {
        for cluster in array_items(&mut v, "cluster_statuses") {
            for host in array_items(cluster, "host_statuses") {
                for stat in array_items(host, "stats").filter_map(Value::as_object_mut) {
                    // Masked whether set or not: a zero value is left out of the JSON.
                    stat.insert("value".into(), Value::String("#".into()));
                }
            }
        }
        v
    };
    let get = |proxy| async move {
        let mut value = mask(get_json(proxy, "/clusters?format=json").await);
        sort_by(&mut value, "cluster_statuses", &["name"]);
        value
    };
    let (l, e) = (get(legate).await, get(envoy).await);
    diff_json(report, config, "clusters", "json", &l, &e);
}

/// The stat families legate claims, for the clusters (by observability name), HTTP and
/// TCP proxy stat prefixes Envoy reports: every name Envoy has there must be in legate's too.
fn families(envoy_stats: &BTreeMap<String, String>) -> Regex {
    let mut clusters = BTreeSet::new();
    let mut prefixes = BTreeSet::new();
    let mut tcp_prefixes = BTreeSet::new();
    for name in envoy_stats.keys() {
        if let Some(prefix) = name.strip_prefix("http.").and_then(|n| n.strip_suffix(".downstream_rq_total")) {
            prefixes.insert(regex::escape(prefix));
        }
        if let Some(prefix) = name.strip_prefix("tcp.").and_then(|n| n.strip_suffix(".downstream_cx_total")) {
            tcp_prefixes.insert(regex::escape(prefix));
        }
        if let Some(cluster) = name.strip_prefix("cluster.").and_then(|n| n.strip_suffix(".upstream_rq_total")) {
            if [".external", ".internal", ".canary"].iter().any(|scope| cluster.ends_with(scope)) {
                continue;
            }
            clusters.insert(regex::escape(cluster));
        }
    }
    let alternatives = |set: BTreeSet<String>| set.into_iter().collect::<Vec<_>>().join("|");
    Regex::new(&format!(
        r"^(cluster\.({})\.(upstream_(rq|cx)_|circuit_breakers\.|retry\.upstream_rq_|retry_or_shadow_abandoned|outlier_detection\.|health_check\.|lb_healthy_panic|ssl\.)|http\.({})\.downstream_rq_|tcp\.({})\.|listener\..+\.(downstream_cx_|downstream_pre_cx_|no_filter_chain_match|ssl\.)|(tls|http)_inspector\.|cluster_manager\.|server\.(live|state|uptime|concurrency|memory_allocated|total_connections|version|days_until_first_cert_expiring|hot_restart_epoch|initialization_time_ms)$)",
        alternatives(clusters),
        alternatives(prefixes),
        alternatives(tcp_prefixes)
    ))
    .unwrap()
}

/// Counters the same traffic moves alike in both proxies; their values are compared.
static DETERMINISTIC: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(cluster\..+\.(retry\.)?upstream_rq_([1-5]xx|\d{3}|total|completed|timeout|pending_overflow|active_overflow|retry|retry_success|retry_overflow|retry_limit_exceeded|per_try_timeout)|cluster\..+\.upstream_cx_(none_healthy|overflow|max_requests|protocol_error)|cluster\..+\.circuit_breakers\..+|cluster\..+\.outlier_detection\..+|cluster\..+\.health_check\..+|cluster\..+\.lb_healthy_panic|(cluster|listener)\..+\.ssl\.(handshake|connection_error|no_certificate|fail_verify_.+|session_reused|(ciphers|versions|curves|sigalgs)\..+|certificate\..+\.expiration_unix_time_seconds)|server\.days_until_first_cert_expiring|tcp\..+\.(downstream_cx_(total|no_route|rx_bytes_total|tx_bytes_total)|idle_timeout)|cluster\..+\.upstream_cx_connect_attempts_exceeded|listener\..+\.no_filter_chain_match|(tls|http)_inspector\.[a-z0-9_]+_(found|large|error)|http\..+\.(downstream_rq_([1-5]xx|total|http1_total|http2_total|completed)|no_route|no_cluster|rq_direct_response|rq_redirect|rq_total)|cluster_manager\.(active_clusters|warming_clusters|cluster_added|cluster_modified|cluster_removed))$",
    )
    .unwrap()
});

fn parse_stats(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once(": ")).map(|(n, v)| (n.to_owned(), v.to_owned())).collect()
}

async fn stats(
    report: &mut Report,
    config: &str,
    uncompared: &[String],
    legate: (&Proxy, &PortNames),
    envoy: (&Proxy, &PortNames),
) {
    let (l_status, l_body) = get_normalized(legate, "/stats").await;
    let (e_status, e_body) = get_normalized(envoy, "/stats").await;
    report.compare(config, "stats", "status", &l_status.to_string(), &e_status.to_string());
    let (l, e) = (parse_stats(&l_body), parse_stats(&e_body));
    let families = families(&e);
    for (name, value) in &e {
        if !families.is_match(name) {
            continue;
        }
        match l.get(name) {
            None => report.differ(config, "stats", &format!("missing {name}"), "(absent)", value),
            // The admin's own request counts depend on how often /ready was polled.
            Some(lv)
                if DETERMINISTIC.is_match(name) && !name.starts_with("http.admin.") && !uncompared.contains(name) =>
            {
                report.compare(config, "stats", &format!("value {name}"), lv, value)
            }
            Some(_) => report.ran(config, "stats"),
        }
    }
}

/// `/stats/prometheus`: the layout (Envoy writes no blank lines) and, for every family both
/// have, its `# TYPE`.
async fn prometheus(report: &mut Report, config: &str, legate: (&Proxy, &PortNames), envoy: (&Proxy, &PortNames)) {
    let (_, l) = get_normalized(legate, "/stats/prometheus").await;
    let (_, e) = get_normalized(envoy, "/stats/prometheus").await;
    let blank = |text: &str| text.lines().filter(|line| line.is_empty()).count().to_string();
    report.compare(config, "stats", "prometheus blank lines", &blank(&l), &blank(&e));
    let types = |text: &str| -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_once(' '))
            .map(|(family, kind)| (family.to_owned(), kind.to_owned()))
            .collect()
    };
    let (l, e) = (types(&l), types(&e));
    for (family, kind) in &e {
        if let Some(legate_kind) = l.get(family) {
            report.compare(config, "stats", &format!("prometheus type {family}"), legate_kind, kind);
        }
    }
}

/// The `/config_dump?include_eds` sections by `@type`, dynamic ones aside.
async fn config_dump(report: &mut Report, config: &str, legate: (&Proxy, &PortNames), envoy: (&Proxy, &PortNames)) {
    let sections = |v: Value| -> BTreeMap<String, Value> {
        v["configs"]
            .as_array()
            .map(|configs| {
                configs
                    .iter()
                    .map(|c| {
                        let ty = c["@type"].as_str().unwrap_or("?").rsplit('.').next().unwrap_or("?").to_owned();
                        let mut c = c.clone();
                        sort_by(&mut c, "static_route_configs", &["route_config", "name"]);
                        sort_by(&mut c, "static_clusters", &["cluster", "name"]);
                        sort_by(&mut c, "static_listeners", &["listener", "name"]);
                        sort_by(&mut c, "static_endpoint_configs", &["endpoint_config", "cluster_name"]);
                        (ty, c)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let l = sections(get_json(legate, "/config_dump?include_eds").await);
    let e = sections(get_json(envoy, "/config_dump?include_eds").await);
    let types: BTreeSet<&String> = l.keys().chain(e.keys()).collect();
    for ty in types {
        let null = Value::Null;
        diff_json(report, config, "config_dump", ty, l.get(ty).unwrap_or(&null), e.get(ty).unwrap_or(&null));
    }
}

async fn listeners(report: &mut Report, config: &str, legate: (&Proxy, &PortNames), envoy: (&Proxy, &PortNames)) {
    let (ls, lb) = get_normalized(legate, "/listeners").await;
    let (es, eb) = get_normalized(envoy, "/listeners").await;
    report.compare(config, "listeners", "text status", &ls.to_string(), &es.to_string());
    report.compare(config, "listeners", "text", &lb, &eb);
    let l = get_json(legate, "/listeners?format=json").await;
    let e = get_json(envoy, "/listeners?format=json").await;
    diff_json(report, config, "listeners", "json", &l, &e);
}

async fn ready(report: &mut Report, config: &str, legate: &Proxy, envoy: &Proxy) {
    let (ls, lb) = legate.admin_get("/ready").await;
    let (es, eb) = envoy.admin_get("/ready").await;
    report.compare(config, "ready", "status", ls.as_str(), es.as_str());
    report.compare(config, "ready", "body", &lb, &eb);
}

/// Every key path of a JSON object tree.
fn key_paths(value: &Value, path: &str, out: &mut BTreeSet<String>) {
    if let Value::Object(map) = value {
        for (key, v) in map {
            let sub = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            out.insert(sub.clone());
            key_paths(v, &sub, out);
        }
    }
}

async fn server_info(report: &mut Report, config: &str, legate: &Proxy, envoy: &Proxy) {
    let parse = |body: String| serde_json::from_str::<Value>(&body).unwrap_or(Value::Null);
    let l = parse(legate.admin_get("/server_info").await.1);
    let e = parse(envoy.admin_get("/server_info").await.1);
    let (mut lk, mut ek) = (BTreeSet::new(), BTreeSet::new());
    key_paths(&l, "", &mut lk);
    key_paths(&e, "", &mut ek);
    for key in lk.union(&ek) {
        let has = |set: &BTreeSet<String>| if set.contains(key) { "present" } else { "(absent)" };
        report.compare(config, "server_info", &format!("key {key}"), has(&lk), has(&ek));
    }
    report.compare(config, "server_info", "state", &l["state"].to_string(), &e["state"].to_string());
}
