//! xDS over a real gRPC stream from the in-process control plane: warming, ACK/NACK with
//! `error_detail`, EDS updates under the data path, static-cluster protection, removal
//! and reconnection with the last accepted versions.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use http::{StatusCode, Version};
use legate::config::schema::{self, Format};
use legate::xds::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};

use crate::control_plane::{AdsStream, ControlPlane};
use crate::support::{Legate, Upstream, bootstrap, get, routes, send, static_cluster};

pub(crate) const H2: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }\n";

pub(crate) fn eds_cluster(name: &str) -> ClusterProto {
    schema::parse(
        &format!(
            "name: {name}\ntype: EDS\nconnect_timeout: 1s\neds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}"
        ),
        Format::Yaml,
    )
    .unwrap()
}

pub(crate) fn assignment(name: &str, hosts: &[SocketAddr]) -> ClusterLoadAssignment {
    let endpoints: Vec<String> = hosts
        .iter()
        .map(|a| {
            format!(
                "{{ endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }} }}",
                a.ip(),
                a.port()
            )
        })
        .collect();
    schema::parse(
        &format!("cluster_name: {name}\nendpoints: [{{ lb_endpoints: [{}] }}]", endpoints.join(", ")),
        Format::Yaml,
    )
    .unwrap()
}

/// legate with an ADS stream to `control_plane` and a listener routing `/` to cluster `dyn`.
fn legate_with_ads(control_plane: &ControlPlane) -> Legate {
    legate_with_ads_and_flags(control_plane, &["--concurrency", "2"])
}

fn legate_with_ads_and_flags(control_plane: &ControlPlane, flags: &[&str]) -> Legate {
    let route = format!(
        "            validate_clusters: false\n{}",
        routes("              - match: { prefix: \"/\" }\n                route: { cluster: dyn }\n")
    );
    let clusters = static_cluster("xds", &[(control_plane.address, 1)], H2);
    let yaml = bootstrap("", &route, &clusters).replacen(
        "static_resources:\n",
        "node: { id: legate-test, cluster: test }\ndynamic_resources:\n  ads_config: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] }\n  cds_config: { ads: {}, resource_api_version: V3, initial_fetch_timeout: 0s }\nstatic_resources:\n",
        1,
    );
    Legate::start_with(&yaml, flags)
}

/// legate with ADS carrying CDS and LDS (its static listener answers directly).
pub fn legate_with_ads_and_lds(control_plane: &ControlPlane) -> Legate {
    let clusters = static_cluster("xds", &[(control_plane.address, 1)], H2);
    let direct = routes("              - match: { prefix: \"/\" }\n                direct_response: { status: 200 }\n");
    let yaml = bootstrap("", &direct, &clusters).replacen(
        "static_resources:\n",
        "node: { id: legate-test, cluster: test }\ndynamic_resources:\n  ads_config: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] }\n  cds_config: { ads: {}, resource_api_version: V3 }\n  lds_config: { ads: {}, resource_api_version: V3 }\nstatic_resources:\n",
        1,
    );
    Legate::start(&yaml)
}

/// Polls until a request through `main` answers `status` with `body` (10 s at most).
async fn wait_for_answer(legate: &Legate, status: u16, body: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = send(legate.listener("main"), Version::HTTP_11, get("/")).await;
        if answer.status == status && answer.text() == body {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {} {:?}, want {status} {body:?}",
            answer.status,
            answer.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the initial exchange: CDS with `dyn` (EDS), EDS with `hosts`; returns the stream.
async fn warm_up(control_plane: &ControlPlane, legate: &Legate, hosts: &[SocketAddr]) -> AdsStream {
    warm_up_cluster(control_plane, legate, eds_cluster("dyn"), hosts).await
}

/// `warm_up` with `dyn` as given.
async fn warm_up_cluster(
    control_plane: &ControlPlane,
    legate: &Legate,
    dyn_cluster: ClusterProto,
    hosts: &[SocketAddr],
) -> AdsStream {
    let mut stream = control_plane.next_stream().await;
    let first = stream.next_of(CLUSTER_TYPE).await;
    assert!(first.node.is_some(), "the first request carries the node");
    assert_eq!((first.version_info.as_str(), first.response_nonce.as_str()), ("", ""));
    stream.push("1", "n1", vec![dyn_cluster]);
    let ack = stream.next_of(CLUSTER_TYPE).await;
    assert_eq!((ack.version_info.as_str(), ack.response_nonce.as_str()), ("1", "n1"));
    assert!(ack.error_detail.is_none());
    let eds = stream.next_of(ENDPOINT_TYPE).await;
    assert_eq!(eds.resource_names, ["dyn"]);
    // Warming: the cluster is not routable and the server not ready until EDS arrives.
    assert_eq!(legate.admin_get("/ready").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(send(legate.listener("main"), Version::HTTP_11, get("/")).await.status, 503);
    let (_, clusters) = legate.admin_get("/clusters").await;
    assert!(
        clusters.contains("dyn::warming::waiting for the first ClusterLoadAssignment 'dyn' from EDS"),
        "{clusters}"
    );
    stream.push("e1", "n2", vec![assignment("dyn", hosts)]);
    let ack = stream.next_of(ENDPOINT_TYPE).await;
    assert_eq!((ack.version_info.as_str(), ack.response_nonce.as_str()), ("e1", "n2"));
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cds_then_eds_warms_a_cluster_and_serves_it() {
    let a = Upstream::start("a").await;
    let control_plane = ControlPlane::start().await;
    let legate = legate_with_ads(&control_plane);
    let _stream = warm_up(&control_plane, &legate, &[a.address]).await;
    wait_for_answer(&legate, 200, "a").await;
    assert_eq!(legate.admin_get("/ready").await, (StatusCode::OK, "LIVE\n".to_owned()));
    let (_, clusters) = legate.admin_get("/clusters").await;
    assert!(clusters.lines().any(|l| l == "dyn::added_via_api::true"), "{clusters}");
    let dump: serde_json::Value =
        serde_json::from_str(&legate.admin_get("/config_dump?resource=dynamic_active_clusters").await.1).unwrap();
    assert_eq!(dump["configs"][0]["version_info"], "1");
    assert_eq!(dump["configs"][0]["cluster"]["name"], "dyn");
    // `?include_eds` shows the hosts the cluster balances over, among the dynamic configs.
    let dump: serde_json::Value =
        serde_json::from_str(&legate.admin_get("/config_dump?resource=dynamic_endpoint_configs&include_eds").await.1)
            .unwrap();
    let assignment = &dump["configs"][0]["endpoint_config"];
    assert_eq!(assignment["cluster_name"], "dyn");
    let endpoint = &assignment["endpoints"][0]["lb_endpoints"][0];
    assert_eq!(endpoint["endpoint"]["address"]["socket_address"]["port_value"], a.address.port());
    assert_eq!(endpoint["health_status"], "HEALTHY");
    assert_eq!(legate.stat("cluster_manager.cds.update_success").await, Some(1));
    assert_eq!(legate.stat("cluster.dyn.update_success").await, Some(1), "EDS updates count per cluster");
    assert_eq!(legate.stat("cluster_manager.warming_clusters").await, Some(0));
    assert_eq!(legate.stat("cluster_manager.active_clusters").await, Some(2));
    assert_eq!(legate.stat("control_plane.connected_state").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cluster_is_nacked_and_the_old_state_keeps_serving() {
    let a = Upstream::start("a").await;
    let control_plane = ControlPlane::start().await;
    let legate = legate_with_ads(&control_plane);
    let mut stream = warm_up(&control_plane, &legate, &[a.address]).await;
    wait_for_answer(&legate, 200, "a").await;

    // One valid new cluster and one invalid one: the valid one applies, the response is NACKed.
    let mut bad = eds_cluster("broken");
    bad.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration { seconds: 0, nanos: 0 });
    let mut static_clash = eds_cluster("xds");
    static_clash.name = "xds".into();
    stream.push("2", "n3", vec![eds_cluster("dyn"), eds_cluster("other"), bad, static_clash]);
    let nack = stream.next_of(CLUSTER_TYPE).await;
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("1", "n3"),
        "a NACK keeps the last good version"
    );
    let detail = nack.error_detail.expect("a NACK has error_detail").message;
    assert!(detail.contains("cluster 'broken'") && detail.contains("connect_timeout"), "{detail}");
    assert!(detail.contains("cluster 'xds'") && detail.contains("static cluster"), "{detail}");
    let eds = stream.next_of(ENDPOINT_TYPE).await;
    assert_eq!(eds.resource_names, ["dyn", "other"], "the valid new cluster was applied and subscribed");
    // The old cluster keeps serving throughout.
    wait_for_answer(&legate, 200, "a").await;
    assert_eq!(legate.stat("cluster_manager.cds.update_rejected").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_updates_move_traffic_and_cds_removal_stops_it() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let control_plane = ControlPlane::start().await;
    let legate = legate_with_ads(&control_plane);
    let mut stream = warm_up(&control_plane, &legate, &[a.address]).await;
    wait_for_answer(&legate, 200, "a").await;
    let served_by_a = legate.stat("cluster.dyn.upstream_rq_total").await.expect("registered");

    stream.push("e2", "n3", vec![assignment("dyn", &[b.address])]);
    assert_eq!(stream.next_of(ENDPOINT_TYPE).await.version_info, "e2");
    wait_for_answer(&legate, 200, "b").await;
    // The rebuilt cluster kept its stats: counts go on from where they were.
    assert!(legate.stat("cluster.dyn.upstream_rq_total").await.unwrap() > served_by_a);
    assert_eq!(legate.stat("cluster.dyn.update_success").await, Some(2));
    assert_eq!(legate.stat("cluster.dyn.membership_change").await, Some(1));

    // A bad assignment is NACKed; b keeps serving.
    let mut bad = assignment("dyn", &[a.address]);
    bad.endpoints[0].lb_endpoints[0].load_balancing_weight =
        Some(envoy_types::pb::google::protobuf::UInt32Value { value: 0 });
    stream.push("e3", "n4", vec![bad]);
    let nack = stream.next_of(ENDPOINT_TYPE).await;
    assert_eq!(nack.version_info, "e2");
    assert!(nack.error_detail.unwrap().message.contains("load_balancing_weight"));
    wait_for_answer(&legate, 200, "b").await;

    // SotW CDS without `dyn` removes it: the route's cluster is unknown again.
    stream.push::<ClusterProto>("3", "n5", vec![]);
    assert_eq!(stream.next_of(CLUSTER_TYPE).await.version_info, "3");
    wait_for_answer(&legate, 503, "").await;
    assert_eq!(legate.stat("cluster_manager.cluster_removed").await, Some(1));
    assert_eq!(legate.stat("cluster.dyn.upstream_rq_total").await, None, "a removed cluster's stats go");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_to_a_host_eds_removed_closes() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let control_plane = ControlPlane::start().await;
    let legate = legate_with_ads_and_flags(&control_plane, &["--concurrency", "1"]);
    let mut h2_cluster = eds_cluster("dyn");
    #[allow(deprecated)] // the cluster field Envoy still honours, shortest to set here
    {
        h2_cluster.http2_protocol_options = Some(Default::default());
    }
    let mut stream = warm_up_cluster(&control_plane, &legate, h2_cluster, &[a.address]).await;
    wait_for_answer(&legate, 200, "a").await;
    assert_eq!(legate.stat("cluster.dyn.upstream_cx_http2_total").await, Some(1));

    stream.push("e2", "n3", vec![assignment("dyn", &[b.address])]);
    assert_eq!(stream.next_of(ENDPOINT_TYPE).await.version_info, "e2");
    wait_for_answer(&legate, 200, "b").await;
    // The worker let go of a's pool; its connection closes, b's stays.
    legate.wait_for_stat("cluster.dyn.upstream_cx_destroy", 1).await;
    assert_eq!(legate.stat("cluster.dyn.upstream_cx_active").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_resubscribes_with_the_last_accepted_versions() {
    let a = Upstream::start("a").await;
    let control_plane = ControlPlane::start().await;
    let legate = legate_with_ads(&control_plane);
    let stream = warm_up(&control_plane, &legate, &[a.address]).await;
    wait_for_answer(&legate, 200, "a").await;
    stream.close();
    let mut again = control_plane.next_stream().await;
    let cds = again.next_of(CLUSTER_TYPE).await;
    assert_eq!(cds.version_info, "1");
    assert_eq!(cds.response_nonce, "", "nonces do not carry over to a new stream");
    assert!(cds.node.is_some(), "each new stream starts with the node");
    let eds = again.next_of(ENDPOINT_TYPE).await;
    assert_eq!((eds.version_info.as_str(), eds.resource_names.as_slice()), ("e1", ["dyn".to_owned()].as_slice()));
    // The last good state served while the control plane was away, and still does.
    wait_for_answer(&legate, 200, "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_updates_under_load_fail_no_request() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let control_plane = ControlPlane::start().await;
    let legate = legate_with_ads(&control_plane);
    let mut stream = warm_up(&control_plane, &legate, &[a.address]).await;
    wait_for_answer(&legate, 200, "a").await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let address = legate.listener("main");
    let load: Vec<_> = [Version::HTTP_11, Version::HTTP_2]
        .into_iter()
        .map(|version| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut client = crate::support::Client::connect(address, version).await;
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let answer = client.send(get("/")).await;
                    if answer.status == 200 {
                        ok += 1;
                    } else {
                        failed.push((answer.status, answer.text()));
                    }
                }
                (ok, failed)
            })
        })
        .collect();

    for i in 0..100u32 {
        // Alternate a cluster-level change (a rebuilt cluster) and an endpoint change.
        let mut cluster = eds_cluster("dyn");
        cluster.connect_timeout =
            Some(envoy_types::pb::google::protobuf::Duration { seconds: 2 + i64::from(i % 2), nanos: 0 });
        let version = format!("c{i}");
        stream.push(&version, &format!("cn{i}"), vec![cluster]);
        assert_eq!(stream.next_of(CLUSTER_TYPE).await.version_info, version);
        let hosts = if i % 2 == 0 { [b.address] } else { [a.address] };
        let version = format!("e{i}");
        stream.push(&version, &format!("en{i}"), vec![assignment("dyn", &hosts)]);
        assert_eq!(stream.next_of(ENDPOINT_TYPE).await.version_info, version);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        let (ok, failed) = task.await.unwrap();
        assert!(
            failed.is_empty(),
            "{} of {} requests failed: {:?}",
            failed.len(),
            ok as usize + failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(ok > 100, "the load kept going ({ok} requests)");
    }
    assert!(a.count() > 10 && b.count() > 10, "traffic followed the updates: a {} b {}", a.count(), b.count());
    assert_eq!(legate.stat("cluster_manager.cluster_modified").await, Some(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_fetch_timeout_lets_the_server_go_live_without_cds() {
    let control_plane = ControlPlane::start().await;
    let clusters = static_cluster("xds", &[(control_plane.address, 1)], H2);
    let yaml = bootstrap("", &routes("              - match: { prefix: \"/\" }\n                direct_response: { status: 200 }\n"), &clusters).replacen(
        "static_resources:\n",
        "node: { id: legate-test, cluster: test }\ndynamic_resources:\n  ads_config: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] }\n  cds_config: { ads: {}, resource_api_version: V3, initial_fetch_timeout: 0.3s }\nstatic_resources:\n",
        1,
    );
    let legate = Legate::start(&yaml);
    let mut stream = control_plane.next_stream().await;
    stream.next_of(CLUSTER_TYPE).await;
    assert_eq!(legate.admin_get("/ready").await.0, StatusCode::SERVICE_UNAVAILABLE, "waiting for CDS");
    // The control plane never answers; after initial_fetch_timeout legate goes live.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while legate.admin_get("/ready").await.0 != StatusCode::OK {
        assert!(tokio::time::Instant::now() < deadline, "not live after initial_fetch_timeout");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn static_type_cluster(name: &str, host: SocketAddr) -> ClusterProto {
    schema::parse(
        &format!(
            "name: {name}\ntype: STATIC\nconnect_timeout: 1s\nload_assignment: {{ cluster_name: {name}, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }} }}] }}] }}",
            host.ip(),
            host.port()
        ),
        Format::Yaml,
    )
    .unwrap()
}

pub(crate) fn dynamic_listener(
    name: &str,
    route_action: &str,
) -> envoy_types::pb::envoy::config::listener::v3::Listener {
    schema::parse(
        &format!(
            r#"
name: {name}
address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: {name}
      route_config:
        validate_clusters: false
        virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, {route_action} }}] }}]
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
        ),
        Format::Yaml,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lds_after_cds_adds_updates_and_removes_listeners() {
    let a = Upstream::start("a").await;
    let control_plane = ControlPlane::start().await;
    let legate = legate_with_ads_and_lds(&control_plane);
    let mut stream = control_plane.next_stream().await;
    stream.next_of(CLUSTER_TYPE).await;
    stream.push("c1", "n1", vec![static_type_cluster("backend", a.address)]);
    // CDS first; LDS is asked for only once the clusters are warm.
    let first = stream.next_request().await;
    assert_eq!((first.type_url.as_str(), first.version_info.as_str()), (CLUSTER_TYPE, "c1"));
    let lds = stream.next_request().await;
    assert_eq!(lds.type_url, LISTENER_TYPE);
    assert_eq!(legate.admin_get("/ready").await.0, StatusCode::SERVICE_UNAVAILABLE, "waiting for LDS");

    stream.push("l1", "n2", vec![dynamic_listener("dyn", "route: { cluster: backend }")]);
    let ack = stream.next_request().await;
    assert_eq!(
        (ack.type_url.as_str(), ack.version_info.as_str()),
        (LISTENER_TYPE, "l1"),
        "{:?} {}",
        ack.error_detail,
        ack.response_nonce
    );
    assert_eq!(legate.admin_get("/ready").await.0, StatusCode::OK);
    let address = legate.listener("dyn");
    let answer = send(address, Version::HTTP_2, get("/")).await;
    assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "a"));
    let (_, listeners) = legate.admin_get("/listeners").await;
    assert!(listeners.contains(&format!("dyn::{address}")), "{listeners}");

    // An update swaps the listener on the same port; a client on a new connection sees it.
    stream.push(
        "l2",
        "n3",
        vec![dynamic_listener("dyn", "direct_response: { status: 202, body: { inline_string: v2 } }")],
    );
    assert_eq!(stream.next_of(LISTENER_TYPE).await.version_info, "l2");
    assert_eq!(legate.listener("dyn"), address, "the update kept the port");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = send(address, Version::HTTP_11, get("/")).await;
        if answer.status == 202 {
            assert_eq!(answer.text(), "v2");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the update never took effect");
    }
    let dump: serde_json::Value =
        serde_json::from_str(&legate.admin_get("/config_dump?resource=dynamic_listeners").await.1).unwrap();
    assert_eq!(dump["configs"][0]["name"], "dyn");
    assert_eq!(dump["configs"][0]["active_state"]["version_info"], "l2");

    // A listener the update does not name is removed and stops accepting.
    stream.push::<envoy_types::pb::envoy::config::listener::v3::Listener>("l3", "n4", vec![]);
    assert_eq!(stream.next_of(LISTENER_TYPE).await.version_info, "l3");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(address).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the removed listener still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(legate.stat("listener_manager.listener_removed").await, Some(1));
}

fn route_configuration(
    name: &str,
    route_action: &str,
) -> envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
    schema::parse(
        &format!(
            "name: {name}\nvirtual_hosts: [{{ name: all, domains: [\"*\"], routes: [{{ match: {{ prefix: \"/\" }}, {route_action} }}] }}]"
        ),
        Format::Yaml,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_routes_warm_a_listener_and_swap_under_it() {
    let a = Upstream::start("a").await;
    let control_plane = ControlPlane::start().await;
    let legate = legate_with_ads_and_lds(&control_plane);
    let mut stream = control_plane.next_stream().await;
    stream.next_of(CLUSTER_TYPE).await;
    stream.push("c1", "n1", vec![static_type_cluster("backend", a.address)]);
    stream.next_of(LISTENER_TYPE).await;
    let mut listener = dynamic_listener("dyn", "route: { cluster: backend }");
    // Swap the inline routes for RDS.
    let hcm_yaml = r#"
"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
stat_prefix: dyn
rds: { route_config_name: r1, config_source: { ads: {}, resource_api_version: V3 } }
http_filters:
- name: envoy.filters.http.router
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"#;
    let hcm: envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager =
        schema::parse(hcm_yaml.replace("\"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n", "").as_str(), Format::Yaml).unwrap();
    listener.filter_chains[0].filters[0].config_type = Some(
        envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(envoy_types::util::pack_any(hcm)),
    );
    stream.push("l1", "n2", vec![listener]);
    let mut lds_ack = None;
    let mut rds_request = None;
    while lds_ack.is_none() || rds_request.is_none() {
        let request = stream.next_request().await;
        match request.type_url.as_str() {
            LISTENER_TYPE => lds_ack = Some(request),
            ROUTE_TYPE => rds_request = Some(request),
            _ => {}
        }
    }
    assert_eq!(lds_ack.unwrap().version_info, "l1");
    assert_eq!(rds_request.unwrap().resource_names, ["r1"]);
    // The listener warms until its routes arrive: not bound, server not ready.
    assert!(legate.try_listener("dyn").is_none());
    assert_eq!(legate.admin_get("/ready").await.0, StatusCode::SERVICE_UNAVAILABLE);

    stream.push("r1", "n3", vec![route_configuration("r1", "route: { cluster: backend }")]);
    assert_eq!(stream.next_of(ROUTE_TYPE).await.version_info, "r1");
    assert_eq!(legate.admin_get("/ready").await.0, StatusCode::OK);
    let address = legate.listener("dyn");
    assert_eq!(send(address, Version::HTTP_11, get("/")).await.text(), "a");

    // A new version swaps under the running listener, on the same connection too.
    let mut client = crate::support::Client::connect(address, Version::HTTP_2).await;
    assert_eq!(client.send(get("/")).await.status, 200);
    stream.push("r2", "n4", vec![route_configuration("r1", "direct_response: { status: 203 }")]);
    assert_eq!(stream.next_of(ROUTE_TYPE).await.version_info, "r2");
    assert_eq!(client.send(get("/")).await.status, 203);

    // A bad version is NACKed and the last good one keeps serving.
    let bad: envoy_types::pb::envoy::config::route::v3::RouteConfiguration = schema::parse(
        "name: r1\nvirtual_hosts: [{ name: all, domains: [\"*\"], routes: [{ match: { safe_regex: { regex: \"(\" } }, route: { cluster: backend } }] }]",
        Format::Yaml,
    )
    .unwrap();
    stream.push("r3", "n5", vec![bad]);
    let nack = stream.next_of(ROUTE_TYPE).await;
    assert_eq!(nack.version_info, "r2");
    assert!(nack.error_detail.unwrap().message.contains("route configuration 'r1'"));
    assert_eq!(client.send(get("/")).await.status, 203);
    let dump: serde_json::Value =
        serde_json::from_str(&legate.admin_get("/config_dump?resource=dynamic_route_configs").await.1).unwrap();
    assert_eq!(dump["configs"][0]["version_info"], "r2");
    assert_eq!(dump["configs"][0]["route_config"]["name"], "r1");
    assert_eq!(legate.stat("http.dyn.rds.r1.update_success").await, Some(2));
    assert_eq!(legate.stat("http.dyn.rds.r1.update_rejected").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_ads_subscribes_applies_removes_and_resumes_with_initial_versions() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let control_plane = ControlPlane::start().await;
    let route = format!(
        "            validate_clusters: false\n{}",
        routes("              - match: { prefix: \"/\" }\n                route: { cluster: dyn }\n")
    );
    let clusters = static_cluster("xds", &[(control_plane.address, 1)], H2);
    let yaml = bootstrap("", &route, &clusters).replacen(
        "static_resources:\n",
        "node: { id: legate-test, cluster: test }\ndynamic_resources:\n  ads_config: { api_type: DELTA_GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] }\n  cds_config: { ads: {}, resource_api_version: V3 }\nstatic_resources:\n",
        1,
    );
    let legate = Legate::start(&yaml);
    let mut stream = control_plane.next_delta_stream().await;
    let first = stream.next_of(CLUSTER_TYPE).await;
    assert!(first.node.is_some());
    assert_eq!(first.resource_names_subscribe, ["*"], "clusters are a wildcard subscription");

    stream.push("s1", "n1", vec![("dyn", "v1", eds_cluster("dyn")), ("spare", "v1", eds_cluster("spare"))], &[]);
    let ack = stream.next_of(CLUSTER_TYPE).await;
    assert_eq!(ack.response_nonce, "n1");
    assert!(ack.error_detail.is_none());
    let eds = stream.next_of(ENDPOINT_TYPE).await;
    assert_eq!(eds.resource_names_subscribe, ["dyn", "spare"]);
    stream.push(
        "s1",
        "n2",
        vec![("dyn", "e1", assignment("dyn", &[a.address])), ("spare", "e1", assignment("spare", &[b.address]))],
        &[],
    );
    assert!(stream.next_of(ENDPOINT_TYPE).await.error_detail.is_none());
    wait_for_answer(&legate, 200, "a").await;
    assert_eq!(legate.admin_get("/ready").await.0, StatusCode::OK);

    // Only changes travel: an endpoint update for `dyn`, then `spare` removed.
    stream.push("s2", "n3", vec![("dyn", "e2", assignment("dyn", &[b.address]))], &[]);
    stream.next_of(ENDPOINT_TYPE).await;
    wait_for_answer(&legate, 200, "b").await;
    stream.push::<ClusterProto>("s3", "n4", vec![], &["spare"]);
    assert!(stream.next_of(CLUSTER_TYPE).await.error_detail.is_none());
    let unsubscribe = stream.next_of(ENDPOINT_TYPE).await;
    assert_eq!(unsubscribe.resource_names_unsubscribe, ["spare"]);
    let (_, clusters) = legate.admin_get("/clusters").await;
    assert!(!clusters.contains("spare::"), "{clusters}");

    // A bad cluster is NACKed with error_detail and the held one keeps serving.
    let mut bad = eds_cluster("dyn");
    bad.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration { seconds: 0, nanos: 0 });
    stream.push("s4", "n5", vec![("dyn", "v2", bad)], &[]);
    let nack = stream.next_of(CLUSTER_TYPE).await;
    assert!(nack.error_detail.expect("NACK").message.contains("cluster 'dyn'"));
    wait_for_answer(&legate, 200, "b").await;

    // On a new stream legate says what it holds.
    stream.close();
    let mut again = control_plane.next_delta_stream().await;
    let resume = again.next_of(CLUSTER_TYPE).await;
    assert_eq!(
        resume.initial_resource_versions.get("dyn").map(String::as_str),
        Some("v1"),
        "the rejected v2 is not held"
    );
    assert!(!resume.initial_resource_versions.contains_key("spare"));
    let resume_eds = again.next_of(ENDPOINT_TYPE).await;
    assert_eq!(resume_eds.resource_names_subscribe, ["dyn"]);
    assert_eq!(resume_eds.initial_resource_versions.get("dyn").map(String::as_str), Some("e2"));
    wait_for_answer(&legate, 200, "b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_priorities_spill_over_by_health_and_overprovisioning() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let down = Upstream::start("down").await;
    let control_plane = ControlPlane::start().await;
    let legate = legate_with_ads(&control_plane);
    let mut stream = warm_up(&control_plane, &legate, &[a.address]).await;
    wait_for_answer(&legate, 200, "a").await;
    let endpoint = |address: SocketAddr, health: &str| {
        format!(
            "{{ endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}, health_status: {health} }}",
            address.ip(),
            address.port()
        )
    };
    // P0: one of two hosts healthy → worth 50 % × 1.4 = 70 %; P1 takes the other 30 %.
    let yaml = format!(
        "cluster_name: dyn\nendpoints:\n- priority: 0\n  lb_endpoints: [{}, {}]\n- priority: 1\n  lb_endpoints: [{}]\npolicy: {{ overprovisioning_factor: 140 }}",
        endpoint(a.address, "HEALTHY"),
        endpoint(down.address, "UNHEALTHY"),
        endpoint(b.address, "HEALTHY"),
    );
    let la: ClusterLoadAssignment = schema::parse(&yaml, Format::Yaml).unwrap();
    stream.push("e2", "n3", vec![la]);
    assert_eq!(stream.next_of(ENDPOINT_TYPE).await.version_info, "e2");
    let (before_a, before_b) = (a.count(), b.count());
    let mut client = crate::support::Client::connect(legate.listener("main"), Version::HTTP_2).await;
    for _ in 0..1000 {
        assert_eq!(client.send(get("/")).await.status, 200);
    }
    let (to_a, to_b) = (a.count() - before_a, b.count() - before_b);
    assert_eq!(down.count(), 0, "the unhealthy host gets nothing");
    assert_eq!(to_a + to_b, 1000);
    assert!((630..=770).contains(&to_a), "P0 took {to_a} of 1000, P1 {to_b}");
    let (_, clusters) = legate.admin_get("/clusters").await;
    assert!(clusters.contains(&format!("dyn::{}::health_flags::/failed_eds_health", down.address)), "{clusters}");
    assert!(clusters.contains(&format!("dyn::{}::priority::1", b.address)), "{clusters}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_cluster_lets_in_flight_requests_finish() {
    let a = Upstream::start("a").await;
    let control_plane = ControlPlane::start().await;
    let legate = legate_with_ads(&control_plane);
    let mut stream = warm_up(&control_plane, &legate, &[a.address]).await;
    wait_for_answer(&legate, 200, "a").await;
    let address = legate.listener("main");
    let in_flight = tokio::spawn(async move { send(address, Version::HTTP_2, get("/delay/600")).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !a.seen.lock().unwrap().iter().any(|s| s.path == "/delay/600") {
        assert!(tokio::time::Instant::now() < deadline, "the slow request did not reach the upstream");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stream.push::<ClusterProto>("2", "n3", vec![]);
    assert_eq!(stream.next_of(CLUSTER_TYPE).await.version_info, "2");
    assert_eq!(send(address, Version::HTTP_11, get("/")).await.status, 503, "new requests: unknown cluster");
    let answer = in_flight.await.unwrap();
    assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "a"), "the in-flight request finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_grpc_target_uri_reaches_the_control_plane() {
    let a = Upstream::start("a").await;
    let control_plane = ControlPlane::start().await;
    let route = format!(
        "            validate_clusters: false\n{}",
        routes("              - match: { prefix: \"/\" }\n                route: { cluster: dyn }\n")
    );
    let yaml = bootstrap("", &route, &static_cluster("unused", &[(a.address, 1)], "")).replacen(
        "static_resources:\n",
        &format!(
            "node: {{ id: legate-test, cluster: test }}\ndynamic_resources:\n  ads_config: {{ api_type: GRPC, transport_api_version: V3, grpc_services: [{{ google_grpc: {{ target_uri: \"{}\", stat_prefix: ads }} }}] }}\n  cds_config: {{ ads: {{}}, resource_api_version: V3 }}\nstatic_resources:\n",
            control_plane.address
        ),
        1,
    );
    let legate = Legate::start(&yaml);
    let _stream = warm_up(&control_plane, &legate, &[a.address]).await;
    wait_for_answer(&legate, 200, "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_type_streams_carry_cds_eds_and_lds_each_on_its_own_stream() {
    let a = Upstream::start("a").await;
    let control_plane = ControlPlane::start().await;
    let api = "{ api_config_source: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] }, resource_api_version: V3 }";
    let clusters = static_cluster("xds", &[(control_plane.address, 1)], H2);
    let yaml = bootstrap("", &routes("              - match: { prefix: \"/\" }\n                direct_response: { status: 200 }\n"), &clusters)
        .replacen(
            "static_resources:\n",
            &format!("node: {{ id: legate-test, cluster: test }}\ndynamic_resources:\n  cds_config: {api}\n  lds_config: {api}\nstatic_resources:\n"),
            1,
        );
    let legate = Legate::start(&yaml);
    let mut cds = control_plane.next_typed_stream(CLUSTER_TYPE).await;
    let first = cds.next_request().await;
    assert_eq!(first.type_url, CLUSTER_TYPE);
    assert!(first.node.is_some());
    let mut cluster = eds_cluster("dyn");
    // The cluster's EDS source is the same per-type server.
    let eds_source: envoy_types::pb::envoy::config::core::v3::ConfigSource = schema::parse(api, Format::Yaml).unwrap();
    cluster.eds_cluster_config.as_mut().unwrap().eds_config = Some(eds_source);
    cds.push("c1", "n1", vec![cluster]);
    assert_eq!(cds.next_request().await.version_info, "c1");

    let mut eds = control_plane.next_typed_stream(ENDPOINT_TYPE).await;
    let subscribe = eds.next_request().await;
    assert_eq!(subscribe.resource_names, ["dyn"]);
    assert!(subscribe.node.is_some(), "each stream's first request carries the node");
    eds.push("e1", "n1", vec![assignment("dyn", &[a.address])]);
    assert_eq!(eds.next_request().await.version_info, "e1");

    let mut lds = control_plane.next_typed_stream(LISTENER_TYPE).await;
    assert_eq!(lds.next_request().await.type_url, LISTENER_TYPE, "LDS follows once the clusters are warm");
    lds.push("l1", "n1", vec![dynamic_listener("dyn", "route: { cluster: dyn }")]);
    assert_eq!(lds.next_request().await.version_info, "l1");
    assert_eq!(legate.admin_get("/ready").await.0, StatusCode::OK);
    assert_eq!(send(legate.listener("dyn"), Version::HTTP_11, get("/")).await.text(), "a");
}

fn dns_cluster(name: &str, port: u16) -> ClusterProto {
    schema::parse(
        &format!(
            "name: {name}\ntype: STRICT_DNS\ndns_lookup_family: V4_ONLY\ndns_refresh_rate: 0.2s\nload_assignment: {{ cluster_name: {name}, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: localhost, port_value: {port} }} }} }} }}] }}] }}"
        ),
        Format::Yaml,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cds_dns_cluster_serves_its_resolved_name_and_a_changed_one_takes_over() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let control_plane = ControlPlane::start().await;
    let legate = legate_with_ads(&control_plane);
    let mut stream = control_plane.next_stream().await;
    stream.next_of(CLUSTER_TYPE).await;
    stream.push("1", "n1", vec![dns_cluster("dyn", a.address.port())]);
    let ack = stream.next_of(CLUSTER_TYPE).await;
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    wait_for_answer(&legate, 200, "a").await;
    let (_, clusters) = legate.admin_get("/clusters").await;
    assert!(clusters.contains(&format!("dyn::127.0.0.1:{}::hostname::localhost", a.address.port())), "{clusters}");

    // A changed cluster resolves on its own schedule; the old one's refreshes, every
    // 200 ms, must not bring its address back.
    stream.push("2", "n2", vec![dns_cluster("dyn", b.address.port())]);
    stream.next_of(CLUSTER_TYPE).await;
    wait_for_answer(&legate, 200, "b").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..5 {
        wait_for_answer(&legate, 200, "b").await;
    }
    assert!(legate.stat("cluster.dyn.update_success").await.unwrap() >= 2, "refreshed every 200 ms");

    // Removed, it stops serving (the route does not validate its cluster).
    stream.push("3", "n3", Vec::<ClusterProto>::new());
    stream.next_of(CLUSTER_TYPE).await;
    wait_for_answer(&legate, 503, "").await;
    assert_eq!(legate.stat("cluster_manager.active_clusters").await, Some(1));
}

/// `dyn` over EDS with outlier detection that ejects a host at its second 5xx in a row and
/// keeps it out for the test's length; `connect_timeout` tells versions apart.
fn outlier_cluster(connect_timeout: &str) -> ClusterProto {
    let mut cluster = eds_cluster("dyn");
    cluster.connect_timeout = schema::parse(&format!("\"{connect_timeout}\""), Format::Json).ok();
    cluster.outlier_detection = Some(
        schema::parse(
            "{ consecutive_5xx: 2, max_ejection_percent: 50, interval: 60s, base_ejection_time: 60s }",
            Format::Yaml,
        )
        .unwrap(),
    );
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eds_update_keeps_an_ejection_and_a_changed_cluster_starts_afresh() {
    let (a, b, c) = (Upstream::start("a").await, Upstream::start("b").await, Upstream::start("c").await);
    let control_plane = ControlPlane::start().await;
    let legate = legate_with_ads(&control_plane);
    let mut stream = warm_up_cluster(&control_plane, &legate, outlier_cluster("1s"), &[a.address, b.address]).await;
    wait_for_answer(&legate, 200, "a").await;
    let ejected = format!("dyn::{}::health_flags::/failed_outlier_check", a.address);
    // Host a answers 500, b 200; each worker alternates between them, so a few requests
    // give a its two 500s (b's answers do not end a's run).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while legate.stat("cluster.dyn.outlier_detection.ejections_active").await != Some(1) {
        assert!(tokio::time::Instant::now() < deadline, "a was not ejected");
        send(legate.listener("main"), Version::HTTP_11, get("/fail-if/a/500")).await;
    }
    assert!(legate.admin_get("/clusters").await.1.contains(&ejected));

    // New endpoints rebuild the cluster with the same detector: a stays out.
    stream.push("e2", "n3", vec![assignment("dyn", &[a.address, b.address, c.address])]);
    assert_eq!(stream.next_of(ENDPOINT_TYPE).await.version_info, "e2");
    legate.wait_for_stat("cluster.dyn.membership_total", 3).await;
    assert_eq!(legate.stat("cluster.dyn.outlier_detection.ejections_active").await, Some(1));
    assert!(legate.admin_get("/clusters").await.1.contains(&ejected));
    let a_seen = a.count();
    for _ in 0..6 {
        let answer = send(legate.listener("main"), Version::HTTP_11, get("/")).await;
        assert!(["b", "c"].contains(&answer.text().as_str()), "{}", answer.text());
    }
    assert_eq!(a.count(), a_seen);

    // A changed cluster is a new cluster to Envoy, with a new detector: a is back in.
    stream.push("2", "n4", vec![outlier_cluster("2s")]);
    assert_eq!(stream.next_of(CLUSTER_TYPE).await.version_info, "2");
    legate.wait_for_stat("cluster.dyn.outlier_detection.ejections_active", 0).await;
    assert!(legate.admin_get("/clusters").await.1.contains(&format!("dyn::{}::health_flags::healthy", a.address)));
    assert_eq!(legate.stat("cluster.dyn.outlier_detection.ejections_enforced_total").await, Some(1), "kept by name");
}
