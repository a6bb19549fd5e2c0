//! The small endpoints: help, readiness, server info, listeners, stats, health-check
//! toggles, logging and quit.

use std::sync::atomic::Ordering;

use envoy_types::pb::envoy::admin::v3::{CommandLineOptions, ListenerStatus, Listeners, ServerInfo};
use envoy_types::pb::google::protobuf::Duration as DurationProto;
use http::{Response, StatusCode};

use super::{AdminBody, AdminRequest, AdminState, DrainAfterResponse, help_text, json, socket_address, text};
use crate::config::schema;
use crate::logging;
use crate::server::ServerState;
use crate::transport;

/// The version string in Envoy's shape: `<revision>/<version>/<status>/<build>/<tls>`.
pub const VERSION: &str = concat!("legate/", env!("CARGO_PKG_VERSION"), "/Clean/RELEASE/rustls");

pub(super) fn help(_: &AdminState, _: &AdminRequest) -> Response<AdminBody> {
    text(StatusCode::OK, format!("admin commands are:\n{}", help_text()))
}

pub(super) fn ready(state: &AdminState, _: &AdminRequest) -> Response<AdminBody> {
    let server_state = state.state();
    let status = if server_state == ServerState::Live { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    text(status, format!("{}\n", server_state.name()))
}

pub(super) fn server_info(state: &AdminState, _: &AdminRequest) -> Response<AdminBody> {
    let options = &state.options;
    let uptime = DurationProto { seconds: state.started.elapsed().as_secs() as i64, nanos: 0 };
    let seconds = |s: u64| Some(DurationProto { seconds: s as i64, nanos: 0 });
    let info = ServerInfo {
        version: VERSION.to_owned(),
        state: state.state() as i32,
        uptime_current_epoch: Some(uptime),
        uptime_all_epochs: Some(uptime),
        hot_restart_version: "disabled".to_owned(),
        command_line_options: Some(CommandLineOptions {
            base_id: u64::from(options.base_id),
            concurrency: state.concurrency as u32,
            config_path: options.config_path.clone().unwrap_or_default(),
            config_yaml: options.config_yaml.clone().unwrap_or_default(),
            allow_unknown_static_fields: options.allow_unknown_static_fields,
            log_level: options.log_level.clone(),
            component_log_level: options.component_log_level.clone().unwrap_or_default(),
            log_format: options.log_format.clone().unwrap_or_default(),
            log_path: options.log_path.clone().unwrap_or_default(),
            service_cluster: options.service_cluster.clone().unwrap_or_default(),
            service_node: options.service_node.clone().unwrap_or_default(),
            service_zone: options.service_zone.clone().unwrap_or_default(),
            drain_time: seconds(options.drain_time_s),
            // legate's access log writers flush on their own interval (no flag sets it).
            file_flush_interval: seconds(crate::http::access_log::FLUSH_INTERVAL.as_secs()),
            parent_shutdown_time: seconds(options.parent_shutdown_time_s),
            disable_hot_restart: options.disable_hot_restart,
            mode: match options.mode {
                crate::cli::Mode::Serve => 0,
                crate::cli::Mode::Validate => 1,
            },
            ..Default::default()
        }),
        node: Some(state.node.clone()),
        hot_restart_initializing: false,
    };
    json(&schema::to_json_with_defaults(&info))
}

pub(super) fn listeners(state: &AdminState, request: &AdminRequest) -> Response<AdminBody> {
    let active = state.listeners.active();
    let statuses = active.iter().map(|l| (&l.runtime, &l.bound)).map(|(l, bound)| ListenerStatus {
        name: l.spec.name.clone(),
        local_address: Some(socket_address(*bound)),
        ..Default::default()
    });
    if request.wants_json() {
        return json(&schema::to_json(&Listeners { listener_statuses: statuses.collect() }));
    }
    let mut out = String::new();
    for (listener, bound) in active.iter().map(|l| (&l.runtime, &l.bound)) {
        out.push_str(&format!("{}::{}\n", listener.spec.name, bound));
    }
    text(StatusCode::OK, out)
}

/// Refreshes the gauges that are read, not pushed: uptime, memory and the days until the
/// first TLS certificate expires.
fn refresh_server_gauges(state: &AdminState) {
    let store = &state.store;
    store.gauge("server.uptime").set(state.started.elapsed().as_secs() as i64);
    // RSS stands in for allocator bytes: legate does not wrap its allocator.
    store.gauge("server.memory_allocated").set(resident_bytes() as i64);
    store.gauge("server.state").set(state.state() as i64);
    let listeners = state.listeners.active();
    let clusters = state.clusters.snapshot();
    let contexts = listeners
        .iter()
        .flat_map(|l| {
            l.runtime.spec.all_chains().filter_map(|chain| chain.tls.as_ref()).map(|tls| &tls.certificates[..])
        })
        .chain(clusters.clusters.values().filter_map(|c| c.tls.as_ref().map(|(tls, _)| &tls.certificates[..])));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = transport::days_until_first_expiry(contexts, now);
    store.gauge("server.days_until_first_cert_expiring").set(i64::from(days));
}

/// Resident set size from `/proc/self/statm`.
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

fn stats_filter(request: &AdminRequest) -> Result<Option<regex::Regex>, Box<Response<AdminBody>>> {
    match request.param("filter").filter(|f| !f.is_empty()) {
        Some(f) => regex::Regex::new(f)
            .map(Some)
            .map_err(|e| Box::new(text(StatusCode::BAD_REQUEST, format!("Invalid re2 regex: {e}\n")))),
        None => Ok(None),
    }
}

pub(super) fn stats(state: &AdminState, request: &AdminRequest) -> Response<AdminBody> {
    refresh_server_gauges(state);
    let filter = match stats_filter(request) {
        Ok(f) => f,
        Err(response) => return *response,
    };
    let used_only = request.params.contains_key("usedonly");
    match request.param("format") {
        None | Some("text") => text(StatusCode::OK, state.store.text(filter.as_ref(), used_only)),
        Some("json") => json(&state.store.json(filter.as_ref(), used_only)),
        Some("prometheus") => text(StatusCode::OK, state.store.prometheus(filter.as_ref(), used_only)),
        Some(other) => text(
            StatusCode::BAD_REQUEST,
            format!("usage: /stats?format=(json|prometheus|text): unknown format '{other}'\n"),
        ),
    }
}

pub(super) fn stats_prometheus(state: &AdminState, request: &AdminRequest) -> Response<AdminBody> {
    refresh_server_gauges(state);
    let filter = match stats_filter(request) {
        Ok(f) => f,
        Err(response) => return *response,
    };
    text(StatusCode::OK, state.store.prometheus(filter.as_ref(), request.params.contains_key("usedonly")))
}

pub(super) fn healthcheck_fail(state: &AdminState, _: &AdminRequest) -> Response<AdminBody> {
    state.health_check_failed.store(true, Ordering::Release);
    text(StatusCode::OK, "OK\n")
}

pub(super) fn healthcheck_ok(state: &AdminState, _: &AdminRequest) -> Response<AdminBody> {
    state.health_check_failed.store(false, Ordering::Release);
    text(StatusCode::OK, "OK\n")
}

/// Answers, then exits: the drain begins once the answer is written (`DrainAfterResponse`).
pub(super) fn quit(_: &AdminState, _: &AdminRequest) -> Response<AdminBody> {
    let mut response = text(StatusCode::OK, "OK\n");
    response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    response.extensions_mut().insert(DrainAfterResponse);
    response
}

pub(super) fn logging(_: &AdminState, request: &AdminRequest) -> Response<AdminBody> {
    for (key, value) in &request.params {
        let result =
            if key == "level" { logging::set_level(None, value) } else { logging::set_level(Some(key), value) };
        if let Err(e) = result {
            return text(StatusCode::NOT_FOUND, format!("{e}\n{}", logging::listing()));
        }
    }
    text(StatusCode::OK, logging::listing())
}
