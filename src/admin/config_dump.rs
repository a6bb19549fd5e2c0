//! `/config_dump`: the `envoy.admin.v3.ConfigDump` JSON, with `?resource=`, `?mask=`,
//! `?name_regex=` and `?include_eds`, rendered through Envoy's own schema.

use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::admin::v3::{
    BootstrapConfigDump, ClustersConfigDump, ConfigDump, EndpointsConfigDump, ListenersConfigDump, RoutesConfigDump,
    ScopedRoutesConfigDump, SecretsConfigDump, clusters_config_dump, endpoints_config_dump, listeners_config_dump,
    routes_config_dump,
};
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints};
use envoy_types::pb::google::protobuf::{Any, Timestamp, UInt32Value};
use envoy_types::util::pack_any;
use http::{Response, StatusCode};
use serde_json::Value;

use super::{AdminBody, AdminRequest, AdminState, json, socket_address, text};
use crate::config::cluster::{Discovery, HostLocality};
use crate::config::hcm::RouteSpec;
use crate::config::schema;
use crate::listener::ActiveListener;
use crate::upstream::Cluster;
use crate::upstream::host::{Host, health_flag};

pub(super) fn config_dump(state: &AdminState, request: &AdminRequest) -> Response<AdminBody> {
    let name_regex = match request.param("name_regex").filter(|r| !r.is_empty()).map(regex::Regex::new) {
        Some(Ok(re)) => Some(re),
        Some(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("Error while parsing name_regex: {e}\n")),
        None => None,
    };
    let include_eds = request.params.contains_key("include_eds");
    let dump = schema::to_json(&ConfigDump { configs: configs(state, include_eds) });
    let mut configs = match dump {
        Value::Object(mut map) => match map.remove("configs") {
            Some(Value::Array(configs)) => configs,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    if let Some(resource) = request.param("resource").filter(|r| !r.is_empty()) {
        configs = match resources(configs, resource) {
            Some(found) => found,
            None => {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("The resource {resource} in the config dump was not found.\n"),
                );
            }
        };
        if let Some(re) = &name_regex {
            configs.retain(|c| resource_name(c).is_some_and(|n| re.is_match(&n)));
        }
    }
    if let Some(mask) = request.param("mask").filter(|m| !m.is_empty()) {
        let paths: Vec<Vec<&str>> = mask.split(',').map(|p| p.split('.').collect()).collect();
        for config in &mut configs {
            let mut trimmed = serde_json::Map::new();
            if let Some(t) = config.get("@type") {
                trimmed.insert("@type".into(), t.clone());
            }
            for path in &paths {
                copy_path(config, &mut trimmed, path);
            }
            *config = Value::Object(trimmed);
        }
    }
    json(&serde_json::json!({ "configs": configs }))
}

fn timestamp(at: SystemTime) -> Timestamp {
    let since = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: since.as_secs() as i64, nanos: since.subsec_nanos() as i32 }
}

/// The dump in Envoy's order: bootstrap, clusters, (endpoints), listeners, scoped routes,
/// routes, secrets. Secrets are empty: legate has no TLS secrets yet, so nothing needs
/// redacting.
fn configs(state: &AdminState, include_eds: bool) -> Vec<Any> {
    let updated = Some(timestamp(state.started_at));
    let snapshot = state.clusters.snapshot();
    let mut clusters: Vec<_> = snapshot.clusters.values().collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = vec![
        pack_any(BootstrapConfigDump { bootstrap: Some(state.bootstrap()), last_updated: updated }),
        pack_any(ClustersConfigDump {
            static_clusters: clusters
                .iter()
                .filter(|c| !c.added_via_api)
                .map(|c| clusters_config_dump::StaticCluster {
                    cluster: Some(pack_any(c.proto.decode())),
                    last_updated: updated,
                })
                .collect(),
            dynamic_active_clusters: clusters
                .iter()
                .filter(|c| c.added_via_api)
                .map(|c| {
                    let info = state.clusters.dynamic_info(&c.name);
                    clusters_config_dump::DynamicCluster {
                        version_info: info.as_ref().map(|i| i.version_info.to_string()).unwrap_or_default(),
                        cluster: Some(pack_any(c.proto.decode())),
                        last_updated: info.map(|i| timestamp(i.last_updated)),
                        ..Default::default()
                    }
                })
                .collect(),
            dynamic_warming_clusters: state
                .clusters
                .warming_protos()
                .into_iter()
                .map(|(version_info, proto, since)| clusters_config_dump::DynamicCluster {
                    version_info,
                    cluster: Some(pack_any(proto)),
                    last_updated: Some(timestamp(since)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    ];
    // Envoy leaves the section out when there is no active cluster.
    if include_eds && !clusters.is_empty() {
        let (dynamic, fixed): (Vec<&Arc<Cluster>>, Vec<_>) = clusters.iter().partition(|c| c.added_via_api);
        out.push(pack_any(EndpointsConfigDump {
            static_endpoint_configs: fixed
                .iter()
                .map(|c| endpoints_config_dump::StaticEndpointConfig {
                    endpoint_config: Some(pack_any(load_assignment(c))),
                    last_updated: None,
                })
                .collect(),
            dynamic_endpoint_configs: dynamic
                .iter()
                .map(|c| endpoints_config_dump::DynamicEndpointConfig {
                    endpoint_config: Some(pack_any(load_assignment(c))),
                    ..Default::default()
                })
                .collect(),
        }));
    }
    let listeners = state.listeners.active();
    out.push(pack_any(ListenersConfigDump {
        static_listeners: listeners
            .iter()
            .filter(|l| !l.added_via_api)
            .map(|l| listeners_config_dump::StaticListener {
                listener: Some(pack_any(l.runtime.spec.proto.clone())),
                last_updated: updated,
            })
            .collect(),
        dynamic_listeners: listeners
            .iter()
            .filter(|l| l.added_via_api)
            .map(|l| listeners_config_dump::DynamicListener {
                name: l.runtime.spec.name.clone(),
                active_state: Some(listeners_config_dump::DynamicListenerState {
                    version_info: l.version_info.clone(),
                    listener: Some(pack_any(l.runtime.spec.proto.clone())),
                    last_updated: Some(timestamp(l.last_updated)),
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }));
    if state.listeners.http_configured() {
        route_sections(state, &listeners, updated, &mut out);
    }
    out.push(pack_any(SecretsConfigDump::default()));
    out
}

/// The scoped and plain route sections: the inline route configs of the HTTP listeners, and
/// those RDS delivered.
fn route_sections(state: &AdminState, listeners: &[ActiveListener], updated: Option<Timestamp>, out: &mut Vec<Any>) {
    out.push(pack_any(ScopedRoutesConfigDump::default()));
    out.push(pack_any(RoutesConfigDump {
        static_route_configs: listeners
            .iter()
            .flat_map(|l| l.runtime.http_chains())
            .filter_map(|http| match &http.hcm.routes {
                RouteSpec::Inline(_, proto) => Some(routes_config_dump::StaticRouteConfig {
                    route_config: Some(pack_any((**proto).clone())),
                    last_updated: updated,
                }),
                RouteSpec::Rds { .. } => None,
            })
            .collect(),
        dynamic_route_configs: state
            .listeners
            .rds()
            .configs()
            .into_iter()
            .map(|config| routes_config_dump::DynamicRouteConfig {
                version_info: config.version_info,
                route_config: Some(pack_any((*config.proto).clone())),
                last_updated: Some(timestamp(config.last_updated)),
                ..Default::default()
            })
            .collect(),
    }));
}

/// The hosts a cluster balances over now, as the `ClusterLoadAssignment` Envoy's
/// `?include_eds` shows: rebuilt from the live hosts (by priority, then locality group), so
/// it says what legate uses, not what it was sent.
fn load_assignment(cluster: &Cluster) -> ClusterLoadAssignment {
    let mut hosts: Vec<&Arc<Host>> = cluster.hosts.iter().collect();
    hosts.sort_by_key(|h| h.priority);
    let mut endpoints: Vec<LocalityLbEndpoints> = Vec::new();
    let mut group: Option<(&Arc<HostLocality>, u32)> = None;
    // Envoy's DNS clusters give the endpoints they make from resolved addresses an empty
    // metadata message.
    let metadata = matches!(cluster.discovery, Discovery::Dns(_)).then(Metadata::default);
    for host in hosts {
        if group.is_none_or(|(locality, priority)| !Arc::ptr_eq(locality, &host.locality) || priority != host.priority)
        {
            let locality = &host.locality;
            endpoints.push(LocalityLbEndpoints {
                locality: Some(Locality {
                    region: locality.region.clone(),
                    zone: locality.zone.clone(),
                    sub_zone: locality.sub_zone.clone(),
                }),
                priority: host.priority,
                load_balancing_weight: Some(UInt32Value { value: locality.weight }),
                ..Default::default()
            });
            group = Some((locality, host.priority));
        }
        let flags = host.health_flags();
        let health_status = if !host.is_healthy() {
            HealthStatus::Unhealthy
        } else if flags & health_flag::DEGRADED_EDS_HEALTH != 0 {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        };
        let endpoint = Endpoint {
            address: Some(socket_address(host.address)),
            hostname: host.hostname.clone(),
            health_check_config: Some(Default::default()),
            ..Default::default()
        };
        endpoints.last_mut().expect("a group was opened above").lb_endpoints.push(LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(endpoint)),
            health_status: health_status as i32,
            load_balancing_weight: Some(UInt32Value { value: host.weight }),
            metadata: metadata.clone(),
        });
    }
    ClusterLoadAssignment {
        cluster_name: cluster.eds_service_name().unwrap_or(&cluster.name).to_owned(),
        endpoints,
        policy: Some(Policy {
            overprovisioning_factor: Some(UInt32Value { value: cluster.overprovisioning_factor() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The items of field `resource` across the configs, each tagged with its own `@type`
/// (`...ClustersConfigDump.StaticCluster`), as Envoy returns them for `?resource=`.
fn resources(configs: Vec<Value>, resource: &str) -> Option<Vec<Value>> {
    let mut found = None;
    for config in configs {
        let Some(type_url) = config.get("@type").and_then(Value::as_str) else { continue };
        let message = schema::pool().get_message_by_name(type_url.rsplit('/').next().unwrap_or(type_url))?;
        let Some(field) = message.get_field_by_name(resource) else { continue };
        let item_type = match field.kind() {
            prost_reflect::Kind::Message(m) => m.full_name().to_owned(),
            _ => continue,
        };
        let items = found.get_or_insert_with(Vec::new);
        if let Some(Value::Array(values)) = config.get(resource) {
            for value in values {
                let mut item = serde_json::Map::new();
                item.insert("@type".into(), Value::String(format!("type.googleapis.com/{item_type}")));
                if let Value::Object(fields) = value {
                    item.extend(fields.clone());
                }
                items.push(Value::Object(item));
            }
        }
    }
    found
}

/// The name of a resource item (its cluster, listener or route config name).
fn resource_name(item: &Value) -> Option<String> {
    let object = item.as_object()?;
    object
        .iter()
        .filter(|(k, _)| *k != "@type")
        .find_map(|(_, v)| v.get("name").or_else(|| v.get("cluster_name")).and_then(Value::as_str).map(str::to_owned))
}

/// Copies the value at `path` from `source` into `target`, applying the rest of the path
/// to each element of a repeated field, as a proto field mask does.
fn copy_path(source: &Value, target: &mut serde_json::Map<String, Value>, path: &[&str]) {
    let Some((first, rest)) = path.split_first() else { return };
    let Some(value) = source.get(*first) else { return };
    if rest.is_empty() {
        target.insert((*first).to_owned(), value.clone());
        return;
    }
    match value {
        Value::Array(items) => {
            let existing = target
                .entry(*first)
                .or_insert_with(|| Value::Array(items.iter().map(|_| Value::Object(Default::default())).collect()));
            if let Value::Array(out_items) = existing {
                for (item, out) in items.iter().zip(out_items.iter_mut()) {
                    if let Value::Object(out) = out {
                        copy_path(item, out, rest);
                    }
                }
            }
        }
        Value::Object(_) => {
            let existing = target.entry(*first).or_insert_with(|| Value::Object(Default::default()));
            if let Value::Object(out) = existing {
                copy_path(value, out, rest);
            }
        }
        _ => {}
    }
}
