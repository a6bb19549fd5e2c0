//! `/clusters`: Envoy's per-cluster and per-host text lines, or `?format=json` as the
//! `envoy.admin.v3.Clusters` proto renders.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use envoy_types::pb::envoy::admin::v3::{
    ClusterStatus, Clusters, HostHealthStatus, HostStatus, SimpleMetric, simple_metric,
};
use envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality, RoutingPriority};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::UInt32Value;
use http::{Response, StatusCode};

use super::{AdminBody, AdminRequest, AdminState, TEXT, json, socket_address, streamed, text, with_headers};
use crate::config::cluster as config;
use crate::config::schema;
use crate::upstream::Cluster;
use crate::upstream::host::{Host, health_flag};
use crate::upstream::outlier::Origin;

/// Clusters written per chunk of streamed `/clusters` text (about 8 KB each with 10 hosts).
const CLUSTERS_PER_CHUNK: usize = 64;

/// A priority's circuit-breaker limits by the names `/clusters` gives them.
/// `in_flight`: the priority's requests active or pending, which a retry budget's limit
/// follows (Envoy shows the limit as of now).
fn limits(t: &config::Thresholds, in_flight: u64) -> [(&'static str, u64); 4] {
    [
        ("max_connections", u64::from(t.max_connections)),
        ("max_pending_requests", u64::from(t.max_pending_requests)),
        ("max_requests", u64::from(t.max_requests)),
        ("max_retries", t.retry_limit(in_flight)),
    ]
}

pub(super) fn clusters(state: &AdminState, request: &AdminRequest) -> Response<AdminBody> {
    let snapshot = state.clusters.snapshot();
    let mut clusters: Vec<_> = snapshot.clusters.values().collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    // Beyond Envoy: warming clusters are listed with what they wait for and since when,
    // so a cluster stuck warming explains itself.
    let warming = state.clusters.warming();
    match request.param("format") {
        Some("json") => {
            let mut body =
                schema::to_json(&Clusters { cluster_statuses: clusters.iter().map(|c| status(c)).collect() });
            if !warming.is_empty()
                && let Some(object) = body.as_object_mut()
            {
                let entries = warming
                    .iter()
                    .map(|(name, version, since, reason)| {
                        serde_json::json!({
                            "name": name,
                            "version_info": version,
                            "warming_since": httpdate::fmt_http_date(*since),
                            "waiting_for": reason,
                        })
                    })
                    .collect();
                object.insert("warming_clusters".into(), serde_json::Value::Array(entries));
            }
            json(&body)
        }
        None | Some("text") => {
            // Written a few clusters at a time as the client reads, from the snapshot taken
            // now: the whole text of 100 000 clusters would be about 1 GB.
            let mut clusters = clusters.into_iter().map(Arc::clone).collect::<Vec<_>>().into_iter();
            let mut warming = Some(warming);
            let chunks = std::iter::from_fn(move || {
                let mut out = String::new();
                for cluster in clusters.by_ref().take(CLUSTERS_PER_CHUNK) {
                    write_text(&mut out, &cluster);
                }
                if out.is_empty() {
                    for (name, version, since, reason) in warming.take()? {
                        let since = httpdate::fmt_http_date(since);
                        let _ = writeln!(out, "{name}::warming::{reason}, since {since} (version {version})");
                    }
                }
                Some(Bytes::from(out))
            });
            with_headers(StatusCode::OK, TEXT, streamed(chunks.filter(|chunk| !chunk.is_empty())))
        }
        Some(other) => text(StatusCode::BAD_REQUEST, format!("unsupported format '{other}': use text or json\n")),
    }
}

/// A host's stats in Envoy's `/clusters` text order (by name).
fn host_counters(host: &Host) -> [(&'static str, u64, simple_metric::Type); 9] {
    use simple_metric::Type::{Counter, Gauge};
    let s = &host.stats;
    let v = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    [
        ("cx_active", v(&s.cx_active), Gauge),
        ("cx_connect_fail", v(&s.cx_connect_fail), Counter),
        ("cx_total", v(&s.cx_total), Counter),
        ("rq_active", v(&s.rq_active), Gauge),
        ("rq_error", v(&s.rq_error), Counter),
        ("rq_pending_active", v(&s.rq_pending_active), Gauge),
        ("rq_success", v(&s.rq_success), Counter),
        ("rq_timeout", v(&s.rq_timeout), Counter),
        ("rq_total", v(&s.rq_total), Counter),
    ]
}

fn write_text(out: &mut String, cluster: &Cluster) {
    let name = &cluster.name;
    let _ = writeln!(out, "{name}::observability_name::{}", cluster.stat_name);
    if let Some(detector) = &cluster.outlier {
        for (origin, prefix) in [(Origin::External, ""), (Origin::Local, "local_origin_")] {
            let (average, threshold) = detector.success_rate(origin).unwrap_or((-1.0, -1.0));
            let _ = writeln!(out, "{name}::outlier::{prefix}success_rate_average::{}", format_g(average));
            let _ = writeln!(out, "{name}::outlier::{prefix}success_rate_ejection_threshold::{}", format_g(threshold));
        }
    }
    let breakers = &cluster.circuit_breakers;
    let in_flight = cluster.stats.in_flight();
    for (priority, thresholds, in_flight) in
        [("default_priority", &breakers.default, in_flight), ("high_priority", &breakers.high, 0)]
    {
        for (threshold, value) in limits(thresholds, in_flight) {
            let _ = writeln!(out, "{name}::{priority}::{threshold}::{value}");
        }
    }
    let _ = writeln!(out, "{name}::added_via_api::{}", cluster.added_via_api);
    for host in &cluster.hosts {
        let prefix = format!("{name}::{}", host.address);
        for (stat, value, _) in host_counters(host) {
            let _ = writeln!(out, "{prefix}::{stat}::{value}");
        }
        let _ = writeln!(out, "{prefix}::hostname::{}", host.hostname);
        let _ = writeln!(out, "{prefix}::health_flags::{}", host.health_flags_text());
        let _ = writeln!(out, "{prefix}::weight::{}", host.weight);
        let _ = writeln!(out, "{prefix}::region::{}", host.locality.region);
        let _ = writeln!(out, "{prefix}::zone::{}", host.locality.zone);
        let _ = writeln!(out, "{prefix}::sub_zone::{}", host.locality.sub_zone);
        let _ = writeln!(out, "{prefix}::canary::false");
        let _ = writeln!(out, "{prefix}::priority::{}", host.priority);
        for (origin, stat) in [(Origin::External, "success_rate"), (Origin::Local, "local_origin_success_rate")] {
            let rate = host.outlier_if_any().and_then(|monitor| monitor.success_rate(origin));
            let _ = writeln!(out, "{prefix}::{stat}::{}", format_g(rate.unwrap_or(-1.0)));
        }
    }
}

fn status(cluster: &Cluster) -> ClusterStatus {
    let in_flight = |priority: RoutingPriority| match priority {
        RoutingPriority::Default => cluster.stats.in_flight(),
        RoutingPriority::High => 0,
    };
    let thresholds = |priority: RoutingPriority, t: &config::Thresholds| Thresholds {
        priority: priority as i32,
        max_connections: Some(UInt32Value { value: t.max_connections }),
        max_pending_requests: Some(UInt32Value { value: t.max_pending_requests }),
        max_requests: Some(UInt32Value { value: t.max_requests }),
        max_retries: Some(UInt32Value { value: t.retry_limit(in_flight(priority)) as u32 }),
        ..Default::default()
    };
    let breakers = &cluster.circuit_breakers;
    // Envoy sets the thresholds only when positive.
    let threshold = |origin| {
        let threshold = cluster.outlier.as_ref().and_then(|d| d.success_rate(origin)).map(|(_, t)| t)?;
        (threshold > 0.0).then_some(Percent { value: threshold })
    };
    ClusterStatus {
        name: cluster.name.clone(),
        observability_name: cluster.stat_name.clone(),
        added_via_api: cluster.added_via_api,
        host_statuses: cluster.hosts.iter().map(|h| host_status(h)).collect(),
        success_rate_ejection_threshold: threshold(Origin::External),
        local_origin_success_rate_ejection_threshold: threshold(Origin::Local),
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![
                thresholds(RoutingPriority::Default, &breakers.default),
                thresholds(RoutingPriority::High, &breakers.high),
            ],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn host_status(host: &Host) -> HostStatus {
    let flags = host.health_flags();
    let success_rate = |origin| {
        let rate = host.outlier_if_any()?.success_rate(origin)?;
        Some(Percent { value: rate })
    };
    let eds_health_status = if flags & health_flag::FAILED_EDS_HEALTH != 0 {
        HealthStatus::Unhealthy
    } else if flags & health_flag::EDS_STATUS_DRAINING != 0 {
        HealthStatus::Draining
    } else if flags & health_flag::DEGRADED_EDS_HEALTH != 0 {
        HealthStatus::Degraded
    } else {
        HealthStatus::Healthy
    };
    HostStatus {
        address: Some(socket_address(host.address)),
        // Envoy's JSON lists the counters first, then the gauges.
        stats: {
            let mut stats: Vec<SimpleMetric> = host_counters(host)
                .into_iter()
                .map(|(name, value, kind)| SimpleMetric { r#type: kind as i32, value, name: name.to_owned() })
                .collect();
            stats.sort_by_key(|m| m.r#type);
            stats
        },
        health_status: Some(HostHealthStatus {
            failed_active_health_check: flags & health_flag::FAILED_ACTIVE_HC != 0,
            failed_outlier_check: flags & health_flag::FAILED_OUTLIER_CHECK != 0,
            failed_active_degraded_check: flags & health_flag::DEGRADED_ACTIVE_HC != 0,
            pending_dynamic_removal: flags & health_flag::PENDING_DYNAMIC_REMOVAL != 0,
            active_hc_timeout: flags & health_flag::ACTIVE_HC_TIMEOUT != 0,
            eds_health_status: eds_health_status as i32,
            ..Default::default()
        }),
        success_rate: success_rate(Origin::External),
        local_origin_success_rate: success_rate(Origin::Local),
        weight: host.weight,
        hostname: host.hostname.clone(),
        priority: host.priority,
        locality: Some(Locality {
            region: host.locality.region.clone(),
            zone: host.locality.zone.clone(),
            sub_zone: host.locality.sub_zone.clone(),
        }),
    }
}

/// A figure as Envoy's admin writes it (`{:g}`: six significant digits, no trailing zeros).
fn format_g(value: f64) -> String {
    if value == value.trunc() && value.abs() < 1e15 {
        return format!("{value:.0}");
    }
    let magnitude = value.abs().log10().floor() as i32;
    let decimals = (5 - magnitude).max(0) as usize;
    let text = format!("{value:.decimals$}");
    let text = text.trim_end_matches('0');
    text.trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn figures_are_written_as_envoy_writes_them() {
        for (value, text) in [(-1.0, "-1"), (90.0, "90"), (52.0, "52"), (66.666_666, "66.6667"), (0.5, "0.5")] {
            assert_eq!(super::format_g(value), text);
        }
    }
}
