//! The admin API as Envoy's tools read it: paths, formats, JSON shapes and status codes.

use http::Version;
use serde_json::Value;

use crate::support::{Legate, Upstream, bootstrap, get, route_all_to, send, static_cluster};

async fn started() -> (Legate, Upstream) {
    let upstream = Upstream::start("svc").await;
    let clusters = static_cluster("svc", &[(upstream.address, 2)], "");
    let legate = Legate::start(&bootstrap("", &route_all_to("svc"), &clusters));
    for _ in 0..3 {
        assert_eq!(send(legate.listener("main"), Version::HTTP_11, get("/")).await.status, 200);
    }
    (legate, upstream)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_server_info_and_health_check_toggles() {
    let (legate, _up) = started().await;
    assert_eq!(legate.admin_get("/ready").await, (http::StatusCode::OK, "LIVE\n".to_owned()));
    let (status, body) = legate.admin_get("/server_info").await;
    assert_eq!(status, 200);
    let info = json(&body);
    for key in [
        "version",
        "state",
        "command_line_options",
        "uptime_current_epoch",
        "uptime_all_epochs",
        "node",
        "hot_restart_version",
    ] {
        assert!(info.get(key).is_some(), "server_info lacks {key}: {body}");
    }
    assert_eq!(info["state"], "LIVE");
    assert_eq!(info["command_line_options"]["concurrency"], 2);
    assert_eq!(info["command_line_options"]["file_flush_interval"], "1s");

    assert_eq!(legate.admin_get("/healthcheck/fail").await.0, 405, "mutating endpoints want POST");
    assert_eq!(legate.admin_post("/healthcheck/fail").await, (http::StatusCode::OK, "OK\n".to_owned()));
    assert_eq!(legate.admin_get("/ready").await, (http::StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n".to_owned()));
    assert_eq!(legate.admin_post("/healthcheck/ok").await.0, 200);
    assert_eq!(legate.admin_get("/ready").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_text_and_json() {
    let (legate, upstream) = started().await;
    let host = upstream.address.to_string();
    let (status, text) = legate.admin_get("/clusters").await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = text.lines().collect();
    for expected in [
        "svc::observability_name::svc".to_owned(),
        "svc::default_priority::max_connections::1024".to_owned(),
        "svc::high_priority::max_retries::3".to_owned(),
        "svc::added_via_api::false".to_owned(),
        format!("svc::{host}::rq_total::3"),
        format!("svc::{host}::rq_success::3"),
        format!("svc::{host}::rq_error::0"),
        format!("svc::{host}::rq_pending_active::0"),
        format!("svc::{host}::health_flags::healthy"),
        format!("svc::{host}::weight::2"),
        format!("svc::{host}::region::"),
        format!("svc::{host}::priority::0"),
    ] {
        assert!(lines.contains(&expected.as_str()), "missing {expected:?} in:\n{text}");
    }
    // One pooled connection per worker at most: two workers, three requests.
    let cx_total = lines.iter().find_map(|l| l.strip_prefix(&format!("svc::{host}::cx_total::"))).unwrap();
    assert!(matches!(cx_total, "1" | "2"), "cx_total {cx_total}");
    let (_, body) = legate.admin_get("/clusters?format=json").await;
    let statuses = json(&body);
    let cluster = &statuses["cluster_statuses"][0];
    assert_eq!(cluster["name"], "svc");
    let host_status = &cluster["host_statuses"][0];
    assert_eq!(host_status["address"]["socket_address"]["port_value"], upstream.address.port());
    assert_eq!(host_status["health_status"]["eds_health_status"], "HEALTHY");
    assert_eq!(host_status["weight"], 2);
    let rq_total = host_status["stats"].as_array().unwrap().iter().find(|s| s["name"] == "rq_total").unwrap();
    assert_eq!(rq_total["value"], "3");
    // Envoy lists the counters first, then the gauges, each by name.
    let names: Vec<&str> =
        host_status["stats"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "cx_connect_fail",
            "cx_total",
            "rq_error",
            "rq_success",
            "rq_timeout",
            "rq_total",
            "cx_active",
            "rq_active",
            "rq_pending_active"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clusters_observability_name_is_its_alt_stat_name() {
    let upstream = crate::support::Upstream::start("svc").await;
    let clusters = crate::support::static_cluster("svc", &[(upstream.address, 1)], "    alt_stat_name: service\n");
    let legate =
        crate::support::Legate::start(&crate::support::bootstrap("", &crate::support::route_all_to("svc"), &clusters));
    let (_, text) = legate.admin_get("/clusters").await;
    assert!(text.lines().any(|l| l == "svc::observability_name::service"), "{text}");
    let (_, body) = legate.admin_get("/clusters?format=json").await;
    assert_eq!(json(&body)["cluster_statuses"][0]["observability_name"], "service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_text_and_json() {
    let (legate, _up) = started().await;
    let address = legate.listener("main");
    assert_eq!(legate.admin_get("/listeners").await.1, format!("main::{address}\n"));
    let listeners = json(&legate.admin_get("/listeners?format=json").await.1);
    assert_eq!(listeners["listener_statuses"][0]["name"], "main");
    assert_eq!(listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"], address.port());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_in_every_format() {
    let (legate, _up) = started().await;
    let (_, text) = legate.admin_get("/stats").await;
    for line in [
        "cluster.svc.upstream_rq_total: 3",
        "cluster.svc.upstream_rq_2xx: 3",
        "cluster.svc.upstream_rq_200: 3",
        "http.ingress_http.downstream_rq_total: 3",
        "cluster_manager.active_clusters: 1",
        "listener_manager.total_listeners_active: 1",
        "server.concurrency: 2",
        "server.state: 0",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?}");
    }
    let (_, filtered) = legate.admin_get("/stats?filter=upstream_rq_2xx").await;
    assert_eq!(filtered.trim(), "cluster.svc.upstream_rq_2xx: 3");
    let (_, used) = legate.admin_get("/stats?usedonly&filter=^cluster\\.svc\\.upstream_cx_connect_").await;
    // The connects succeeded: their histogram shows, the failure counters do not.
    assert!(used.starts_with("cluster.svc.upstream_cx_connect_ms: P0("), "{used}");
    assert_eq!(used.lines().count(), 1, "unused counters are hidden by usedonly: {used}");
    assert_eq!(legate.admin_get("/stats?filter=(").await.0, 400);

    let stats = json(&legate.admin_get("/stats?format=json").await.1);
    let entries = stats["stats"].as_array().unwrap();
    assert!(entries.iter().any(|s| s["name"] == "cluster.svc.upstream_rq_total" && s["value"] == 3));

    let (status, prometheus) = legate.admin_get("/stats/prometheus").await;
    assert_eq!(status, 200);
    assert!(prometheus.contains("# TYPE envoy_cluster_upstream_rq_total counter"), "{prometheus}");
    assert!(prometheus.lines().any(|l| l == "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"svc\"} 3"));
    assert!(prometheus.lines().any(|l| {
        l.starts_with("envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"2\",envoy_cluster_name=\"svc\"} 3")
    }));
    assert!(prometheus.lines().any(|l| l.starts_with("envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"ingress_http\"} 3")));
}

/// The stats Envoy always has for listeners, connection managers (the admin's included) and
/// the server exist in legate too, where dashboards written for Envoy look for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_listener_admin_and_server_stats_exist() {
    let (legate, _up) = started().await;
    let (_, text) = legate.admin_get("/stats").await;
    let value = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(": "))).map(str::to_owned)
    };
    for (name, expected) in [
        ("server.hot_restart_epoch", "0"),
        ("server.days_until_first_cert_expiring", "4294967295"),
        ("http.ingress_http.downstream_rq_ws_on_non_ws_route", "0"),
        ("http.ingress_http.downstream_rq_rx_reset", "0"),
        ("listener.admin.main_thread.downstream_cx_active", "1"),
        ("http.admin.downstream_rq_active", "1"),
    ] {
        assert_eq!(value(name).as_deref(), Some(expected), "{name}");
    }
    assert!(value("server.initialization_time_ms").is_some_and(|v| v.starts_with("P0(")), "a histogram");
    assert!(value("http.admin.downstream_rq_2xx").is_some());
    // Three connections, spread over the two workers.
    let per_worker: u64 = text
        .lines()
        .filter(|l| l.starts_with("listener.") && l.contains(".worker_") && l.contains(".downstream_cx_total: "))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(per_worker, 3, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_sections_resource_mask_and_name_regex() {
    let (legate, _up) = started().await;
    let dump = json(&legate.admin_get("/config_dump").await.1);
    let types: Vec<&str> = dump["configs"].as_array().unwrap().iter().map(|c| c["@type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ScopedRoutesConfigDump",
            "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
        ]
    );
    let clusters = &dump["configs"][1]["static_clusters"][0]["cluster"];
    assert_eq!(clusters["@type"], "type.googleapis.com/envoy.config.cluster.v3.Cluster");
    assert_eq!(clusters["name"], "svc");
    assert_eq!(dump["configs"][2]["static_listeners"][0]["listener"]["name"], "main");
    assert_eq!(dump["configs"][4]["static_route_configs"][0]["route_config"]["name"], "local_route");

    let resources = json(&legate.admin_get("/config_dump?resource=static_clusters").await.1);
    assert_eq!(resources["configs"][0]["@type"], "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster");
    assert_eq!(resources["configs"][0]["cluster"]["name"], "svc");
    let none = json(&legate.admin_get("/config_dump?resource=static_clusters&name_regex=^nomatch$").await.1);
    assert_eq!(none["configs"].as_array().unwrap().len(), 0);
    let masked = json(&legate.admin_get("/config_dump?resource=static_clusters&mask=cluster.name").await.1);
    assert_eq!(masked["configs"][0]["cluster"], serde_json::json!({ "name": "svc" }));
    assert_eq!(legate.admin_get("/config_dump?resource=nonsense").await.0, 404);
    let with_eds = json(&legate.admin_get("/config_dump?include_eds").await.1);
    assert!(
        with_eds["configs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_logging_unknown_paths_and_quit() {
    let (legate, _up) = started().await;
    let (status, help) = legate.admin_get("/help").await;
    assert_eq!(status, 200);
    assert!(help.contains("/config_dump"));
    assert_eq!(legate.admin_get("/no_such_thing").await.0, 404);
    let (status, loggers) = legate.admin_get("/logging").await;
    assert_eq!(status, 200);
    assert!(loggers.starts_with("active loggers:"), "{loggers}");
    assert_eq!(legate.admin_post("/logging?level=nonsense").await.0, 404);
    assert_eq!(legate.admin_get("/quitquitquit").await.0, 405);
    assert_eq!(legate.admin_post("/quitquitquit").await.0, 200);
    assert_eq!(legate.admin_get("/ready").await.1, "DRAINING\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_access_log_records_admin_requests() {
    let upstream = Upstream::start("svc").await;
    let log_path = std::env::temp_dir().join(format!("legate-admin-log-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log_path);
    let clusters = static_cluster("svc", &[(upstream.address, 1)], "");
    let yaml = bootstrap("", &route_all_to("svc"), &clusters)
        .replacen(
            "admin:\n",
            &format!(
                "admin:\n  access_log:\n  - name: envoy.access_loggers.file\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n      path: {}\n",
                log_path.display()
            ),
            1,
        );
    let legate = Legate::start(&yaml);
    assert_eq!(legate.admin_get("/ready").await.0, 200);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if !log.is_empty() || tokio::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(log.contains("\"GET /ready HTTP/1.1\" 200 - 0 5 "), "{log}");
    let _ = std::fs::remove_file(&log_path);
}
