//! The same control plane drives legate and the real Envoy: the same pushes must leave
//! both with the same clusters, the same routing and the same ACK/NACK verdicts.
//! Envoy comes from `ENVOY_BIN` or `interop/install-envoy.sh`; without it this test fails,
//! unless `LEGATE_SKIP_INTEROP=1`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::Version;

use crate::control_plane::{AdsStream, ControlPlane};
use crate::support::{Legate, Upstream, bootstrap, get, routes, send, static_cluster};
use crate::xds::{H2, assignment, dynamic_listener, eds_cluster};
use legate::xds::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE};

/// The Envoy binary, or None when the interop suites are skipped.
fn envoy_bin() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("ENVOY_BIN")
        && !path.is_empty()
    {
        return Some(PathBuf::from(path));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("bash").arg(root.join("interop/install-envoy.sh")).stderr(Stdio::inherit()).output();
    match output {
        Ok(out) if out.status.success() => {
            Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").trim()))
        }
        _ if std::env::var("LEGATE_SKIP_INTEROP").is_ok_and(|v| v == "1") => None,
        _ => panic!("the real Envoy is needed (ENVOY_BIN or interop/install-envoy.sh); LEGATE_SKIP_INTEROP=1 skips"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Envoy {
    child: Child,
    admin: std::net::SocketAddr,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    async fn admin_get(&self, path: &str) -> String {
        send(self.admin, Version::HTTP_11, get(path)).await.text()
    }

    /// The port Envoy bound for listener `name` (from `/listeners?format=json`).
    async fn listener_port(&self, name: &str) -> Option<u16> {
        let listeners: serde_json::Value =
            serde_json::from_str(&self.admin_get("/listeners?format=json").await).ok()?;
        listeners["listener_statuses"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == name)
            .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
            .map(|p| p as u16)
    }
}

/// The ADS part of a bootstrap for node `id`.
fn with_ads(yaml: String, id: &str) -> String {
    yaml.replacen(
        "static_resources:\n",
        &format!(
            "node: {{ id: {id}, cluster: test }}\ndynamic_resources:\n  ads_config: {{ api_type: GRPC, transport_api_version: V3, grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}] }}\n  cds_config: {{ ads: {{}}, resource_api_version: V3 }}\n  lds_config: {{ ads: {{}}, resource_api_version: V3 }}\nstatic_resources:\n"
        ),
        1,
    )
}

/// Takes the two streams the proxies open and tells them apart by node id.
async fn streams_by_node(control_plane: &ControlPlane) -> BTreeMap<String, AdsStream> {
    let mut streams = BTreeMap::new();
    for _ in 0..2 {
        let mut stream = control_plane.next_stream().await;
        let first = stream.next_keeping(CLUSTER_TYPE).await;
        streams.insert(first.node.expect("node on the first request").id, stream);
    }
    streams
}

/// `/clusters` lines of `cluster`, counters masked, hosts' order-free.
fn cluster_lines(text: &str, cluster: &str) -> std::collections::BTreeSet<String> {
    let prefix = format!("{cluster}::");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter(|l| {
            ["health_flags", "weight", "priority", "added_via_api", "canary", "region", "zone"]
                .iter()
                .any(|k| l.contains(&format!("::{k}::")))
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legate_and_envoy_end_up_with_the_same_state_from_the_same_pushes() {
    let Some(envoy_bin) = envoy_bin() else { return };
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let control_plane = ControlPlane::start().await;
    let base = bootstrap(
        "",
        &routes("              - match: { prefix: \"/\" }\n                direct_response: { status: 200 }\n"),
        &static_cluster("xds", &[(control_plane.address, 1)], H2),
    );
    let legate = Legate::start(&with_ads(base.clone(), "legate"));
    let admin_port = free_port();
    let config = std::env::temp_dir().join(format!("legate-xds-envoy-{}.yaml", std::process::id()));
    // Envoy gets the same bootstrap on its own ports.
    std::fs::write(&config, with_ads(base.replacen("port_value: 0", &format!("port_value: {admin_port}"), 1), "envoy"))
        .unwrap();
    let child = Command::new(envoy_bin)
        .arg("-c")
        .arg(&config)
        .args(["--concurrency", "1", "--disable-hot-restart", "-l", "error", "--base-id"])
        .arg(format!("{}", 100 + std::process::id() % 10_000))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Envoy starts");
    let envoy = Envoy { child, admin: format!("127.0.0.1:{admin_port}").parse().unwrap() };

    let mut streams = streams_by_node(&control_plane).await;
    for (node, stream) in &mut streams {
        stream.push("1", "c1", vec![eds_cluster("dyn")]);
        let ack = stream.next_keeping(CLUSTER_TYPE).await;
        assert_eq!((ack.version_info.as_str(), ack.error_detail.is_none()), ("1", true), "{node} ACKs CDS");
        assert_eq!(stream.next_keeping(ENDPOINT_TYPE).await.resource_names, ["dyn"], "{node} asks for dyn's endpoints");
        stream.push("e1", "e1", vec![assignment("dyn", &[a.address, b.address])]);
        assert_eq!(stream.next_keeping(ENDPOINT_TYPE).await.version_info, "e1", "{node} ACKs EDS");
        stream.next_keeping(LISTENER_TYPE).await;
        stream.push("l1", "l1", vec![dynamic_listener("dyn", "route: { cluster: dyn }")]);
        assert_eq!(stream.next_keeping(LISTENER_TYPE).await.version_info, "l1", "{node} ACKs LDS");
    }

    // Both are ready, and route to both hosts alike.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let envoy_port = loop {
        if let Some(port) = envoy.listener_port("dyn").await
            && send(envoy.admin, Version::HTTP_11, get("/ready")).await.status == 200
        {
            break port;
        }
        assert!(tokio::time::Instant::now() < deadline, "Envoy never got ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(legate.admin_get("/ready").await.0, 200);
    let targets = [("legate", legate.listener("dyn")), ("envoy", format!("127.0.0.1:{envoy_port}").parse().unwrap())];
    for (name, address) in targets {
        let (before_a, before_b) = (a.count(), b.count());
        let mut client = crate::support::Client::connect(address, Version::HTTP_11).await;
        for _ in 0..20 {
            assert_eq!(client.send(get("/")).await.status, 200, "{name}");
        }
        assert_eq!((a.count() - before_a, b.count() - before_b), (10, 10), "{name} balances over both hosts");
    }

    // The same clusters: host health, weight, priority, locality, added_via_api.
    let legate_clusters = cluster_lines(&legate.admin_get("/clusters").await.1, "dyn");
    let envoy_clusters = cluster_lines(&envoy.admin_get("/clusters").await, "dyn");
    assert!(!legate_clusters.is_empty());
    assert_eq!(legate_clusters, envoy_clusters);
    for proxy in ["legate", "envoy"] {
        let dump = match proxy {
            "legate" => legate.admin_get("/config_dump?resource=dynamic_active_clusters").await.1,
            _ => envoy.admin_get("/config_dump?resource=dynamic_active_clusters").await,
        };
        let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
        let names: Vec<(&str, &str)> = dump["configs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["cluster"]["name"].as_str().unwrap_or(""), c["version_info"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(names, [("dyn", "1")], "{proxy}'s dynamic clusters");
    }

    // The same verdict on a bad cluster, and both keep serving the old one.
    for (node, stream) in &mut streams {
        let mut bad = eds_cluster("dyn");
        bad.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration { seconds: 0, nanos: 0 });
        stream.push("2", "c2", vec![bad]);
        let nack = stream.next_keeping(CLUSTER_TYPE).await;
        assert_eq!(nack.version_info, "1", "{node} keeps the last good version");
        assert!(nack.error_detail.is_some(), "{node} NACKs with error_detail");
    }
    for (name, address) in
        [("legate", legate.listener("dyn")), ("envoy", format!("127.0.0.1:{envoy_port}").parse().unwrap())]
    {
        assert_eq!(send(address, Version::HTTP_11, get("/")).await.status, 200, "{name} still serves");
    }
    let _ = std::fs::remove_file(&config);
}
