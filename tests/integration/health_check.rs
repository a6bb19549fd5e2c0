//! Active health checking over real sockets: an HTTP check takes a host out after
//! `unhealthy_threshold` retriable failures (at once for any other status) and brings it
//! back after `healthy_threshold` passes, with no second check before the cluster's first
//! upstream connection (`no_traffic_interval`); a TCP check fails a host whose port closed;
//! startup waits for the first checks before listeners serve; and a CDS cluster warms until
//! its hosts' first checks are done, initialization going on without another xDS update,
//! while a host an EDS update adds is `/failed_active_hc` until its first check passes.
//! What the checker decides is compared with the real Envoy by interop config 42.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;
use http::{StatusCode, Version};
use legate::config::schema::{self, Format};
use legate::xds::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE};

use crate::control_plane::ControlPlane;
use crate::support::{Client, Legate, Upstream, bootstrap, closed_port, get, route_all_to, send, static_cluster};
use crate::xds::{assignment, dynamic_listener, eds_cluster, legate_with_ads_and_lds};

const FAILED: &str = "/failed_active_hc";

/// The `health_flags` `/clusters` shows for `host` of `cluster`.
async fn flags(legate: &Legate, cluster: &str, host: SocketAddr) -> String {
    let (_, text) = legate.admin_get("/clusters").await;
    let prefix = format!("{cluster}::{host}::health_flags::");
    let line = text.lines().find_map(|line| line.strip_prefix(&prefix));
    line.unwrap_or_else(|| panic!("no {prefix} in:\n{text}")).to_owned()
}

/// Samples `host`'s flags until they are `want` (5 s at most), reading `checks()` before
/// and after each: a sample is kept when no check began between the two reads (and it
/// differs from the one before). A check is counted before its result is recorded, so a
/// sample's count bounds how many results its flags can reflect. Returns the samples as
/// (checks, flags), the last one showing `want`.
async fn samples_until(
    legate: &Legate,
    cluster: &str,
    host: SocketAddr,
    want: &str,
    checks: impl AsyncFn() -> usize,
) -> Vec<(usize, String)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut samples: Vec<(usize, String)> = Vec::new();
    loop {
        let before = checks().await;
        let flags = flags(legate, cluster, host).await;
        if checks().await == before {
            let done = flags == want;
            if samples.last() != Some(&(before, flags.clone())) {
                samples.push((before, flags));
            }
            if done {
                return samples;
            }
        }
        assert!(Instant::now() < deadline, "{host} never showed {want:?}; samples (checks, flags): {samples:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `n` requests on `client` and returns the names of the upstreams that answered.
async fn answers(client: &mut Client, n: usize) -> Vec<String> {
    let mut names = Vec::with_capacity(n);
    for _ in 0..n {
        let answer = client.send(get("/")).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        names.push(answer.text());
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_check_takes_a_failing_host_out_and_brings_it_back() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    // 500 is retriable (three in a row fail a host), 503 fails it at once. A failed host is
    // checked every second, so a sample sees it right after the check that failed it.
    let checks = concat!(
        "    health_checks:\n",
        "    - timeout: 1s\n",
        "      interval: 0.1s\n",
        "      unhealthy_interval: 1s\n",
        "      unhealthy_edge_interval: 0.1s\n",
        "      no_traffic_interval: 1s\n",
        "      unhealthy_threshold: 3\n",
        "      healthy_threshold: 2\n",
        "      http_health_check: { path: /health, retriable_statuses: [{ start: 500, end: 501 }] }\n",
    );
    let clusters = static_cluster("svc", &[(a.address, 1), (b.address, 1)], checks);
    let legate = Legate::start_with(&bootstrap("", &route_all_to("svc"), &clusters), &["--concurrency", "1"]);
    // Started once each host had its first check, which made it healthy.
    assert_eq!(legate.stat("cluster.svc.health_check.attempt").await, Some(2));
    assert_eq!(legate.stat("cluster.svc.health_check.success").await, Some(2));
    assert_eq!(legate.stat("cluster.svc.health_check.healthy").await, Some(2));
    assert_eq!(flags(&legate, "svc", a.address).await, "healthy");
    assert_eq!(flags(&legate, "svc", b.address).await, "healthy");
    let check = a.last();
    assert_eq!((check.path.as_str(), check.authority.as_str()), ("/health", "svc"), "the cluster's name as host");
    assert_eq!(check.headers.get("user-agent").map(String::as_str), Some("Envoy/HC"));

    // Until the cluster opens an upstream connection, hosts are checked every
    // `no_traffic_interval` (1 s), not every 100 ms.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(legate.stat("cluster.svc.health_check.attempt").await, Some(2), "no check without traffic");
    let mut client = Client::connect(legate.listener("main"), Version::HTTP_11).await;
    let mut names = answers(&mut client, 4).await;
    names.sort();
    assert_eq!(names, ["a", "a", "b", "b"]);

    // Retriable 500s: a stays in until its third in a row.
    let before = a.set_health(500);
    let samples = samples_until(&legate, "svc", a.address, FAILED, async || a.health_checks() - before).await;
    for (failures, flags) in &samples {
        assert!(*failures >= 3 || flags == "healthy", "failed after {failures} failures: {samples:?}");
    }
    assert_eq!(samples.last().unwrap().0, 3, "failed at the third failure: {samples:?}");
    assert_eq!(legate.stat("cluster.svc.health_check.failure").await, Some(3));
    assert_eq!(legate.stat("cluster.svc.health_check.network_failure").await, Some(0));
    assert_eq!(legate.stat("cluster.svc.health_check.healthy").await, Some(1));
    assert_eq!(legate.stat("cluster.svc.membership_healthy").await, Some(1));
    let served_by_a = a.count() - a.health_checks();
    assert_eq!(answers(&mut client, 6).await, ["b"; 6]);
    assert_eq!(a.count() - a.health_checks(), served_by_a, "the failed host gets no requests");

    // Passing again, it is back after its second pass in a row (and checked every second
    // until its first).
    let before = a.set_health(200);
    let samples = samples_until(&legate, "svc", a.address, "healthy", async || a.health_checks() - before).await;
    for (passes, flags) in &samples {
        assert!(*passes >= 2 || flags == FAILED, "healthy after {passes} passes: {samples:?}");
    }
    assert_eq!(legate.stat("cluster.svc.health_check.healthy").await, Some(2));
    let mut names = answers(&mut client, 4).await;
    names.sort();
    assert_eq!(names, ["a", "a", "b", "b"], "it takes requests again");

    // A 503, not retriable, fails it at once.
    let before = a.set_health(503);
    let samples = samples_until(&legate, "svc", a.address, FAILED, async || a.health_checks() - before).await;
    assert_eq!(samples.last().unwrap().0, 1, "failed at the first 503: {samples:?}");
    assert_eq!(legate.stat("cluster.svc.health_check.failure").await, Some(4));
    assert_eq!(legate.stat("cluster.svc.health_check.healthy").await, Some(1));
    let (_, text) = legate.admin_get("/clusters").await;
    assert!(text.lines().any(|l| l == format!("svc::{}::health_flags::/failed_active_hc", a.address)), "{text}");
    assert!(text.lines().any(|l| l == format!("svc::{}::health_flags::healthy", b.address)), "{text}");
    assert_eq!(answers(&mut client, 4).await, ["b"; 4]);
}

/// A loopback socket bound to `address` (freed a moment ago) and not listening, so connects
/// there are refused while it is held.
fn hold_port(address: SocketAddr) -> socket2::Socket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.bind(&address.into()).unwrap_or_else(|e| panic!("cannot take {address} back: {e}"));
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_fails_a_host_whose_port_closed_after_the_threshold() {
    let live = Upstream::start("live").await;
    // A port the kernel accepts connections on (nothing reads them: a TCP check without
    // `receive` only connects), until it is closed.
    let (listening, closing) = closed_port();
    listening.listen(64).unwrap();
    // Nothing goes through legate before the port closes, so the checks run every
    // `no_traffic_interval`, set as short as `interval`.
    let checks = concat!(
        "    health_checks:\n",
        "    - timeout: 1s\n",
        "      interval: 0.1s\n",
        "      no_traffic_interval: 0.1s\n",
        "      unhealthy_threshold: 3\n",
        "      healthy_threshold: 2\n",
        "      tcp_health_check: {}\n",
    );
    let clusters = static_cluster("svc", &[(closing, 1), (live.address, 1)], checks);
    let legate = Legate::start_with(&bootstrap("", &route_all_to("svc"), &clusters), &["--concurrency", "1"]);
    assert_eq!(legate.stat("cluster.svc.health_check.healthy").await, Some(2));
    assert_eq!(flags(&legate, "svc", closing).await, "healthy");
    assert_eq!(live.count(), 0, "a TCP check sends nothing");

    drop(listening);
    let held = hold_port(closing);
    let network_failures = async || legate.stat("cluster.svc.health_check.network_failure").await.unwrap_or(0) as usize;
    let samples = samples_until(&legate, "svc", closing, FAILED, network_failures).await;
    for (failures, flags) in &samples {
        assert!(*failures >= 3 || flags == "healthy", "failed after {failures} refused connects: {samples:?}");
    }
    assert_eq!(
        legate.stat("cluster.svc.health_check.failure").await,
        legate.stat("cluster.svc.health_check.network_failure").await,
        "every failure was a network failure"
    );
    assert_eq!(legate.stat("cluster.svc.health_check.healthy").await, Some(1));
    // Every request goes to the live host: none tries the closed port.
    let mut client = Client::connect(legate.listener("main"), Version::HTTP_11).await;
    assert_eq!(answers(&mut client, 4).await, ["live"; 4]);
    assert_eq!(legate.stat("cluster.svc.upstream_cx_connect_fail").await, Some(0));

    // Listening again, it is back after two connects in a row.
    held.listen(64).unwrap();
    legate.wait_for_stat("cluster.svc.health_check.healthy", 2).await;
    assert_eq!(flags(&legate, "svc", closing).await, "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_waits_for_the_first_checks_before_listeners_serve() {
    let slow = Upstream::start("slow").await;
    let checks = concat!(
        "    health_checks:\n",
        "    - timeout: 2s\n",
        "      interval: 1s\n",
        "      unhealthy_threshold: 2\n",
        "      healthy_threshold: 2\n",
        "      http_health_check: { path: /delay/700 }\n",
    );
    let clusters = static_cluster("svc", &[(slow.address, 1)], checks);
    // A known admin port, to ask it while the server starts.
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let yaml = bootstrap("", &route_all_to("svc"), &clusters).replacen(
        "port_value: 0",
        &format!("port_value: {}", admin.port()),
        1,
    );
    let starting = Instant::now();
    // Starting blocks this thread until the first check is answered, 700 ms on.
    let legate = tokio::task::spawn_blocking(move || Legate::start(&yaml));
    // Meanwhile the admin API answers, not ready, as Envoy's does.
    let mut early = None;
    while early.is_none() && starting.elapsed() < Duration::from_millis(600) {
        if tokio::net::TcpStream::connect(admin).await.is_ok() {
            let answer = send(admin, Version::HTTP_11, get("/ready")).await;
            early = Some((answer.status, answer.text()));
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(early, Some((StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n".to_owned())));
    let legate = legate.await.unwrap();
    let took = starting.elapsed();
    assert!(took >= Duration::from_millis(700), "started after {took:?}, before the first check's answer");
    assert_eq!(slow.count(), 1, "the check, before any request");
    assert_eq!(slow.last().path, "/delay/700");
    // Then everything is up at once: ready, the host healthy, the listener serving.
    assert_eq!(legate.admin_get("/ready").await, (StatusCode::OK, "LIVE\n".to_owned()));
    assert_eq!(flags(&legate, "svc", slow.address).await, "healthy");
    assert_eq!(legate.stat("cluster_manager.warming_clusters").await, Some(0));
    let answer = send(legate.listener("main"), Version::HTTP_11, get("/")).await;
    assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "slow"));
    let (_, stats) = legate.admin_get("/stats?filter=^server.initialization_time_ms$").await;
    // `P100(interval,cumulative)`: the one sample, as the cumulative maximum.
    let p100 =
        stats.split("P100(").nth(1).and_then(|rest| rest.split([',', ')']).nth(1)).and_then(|v| v.parse::<f64>().ok());
    assert!(p100.is_some_and(|ms| ms >= 700.0), "initialization took at least the check: {stats}");
}

/// `dyn` over EDS, each check answered 500 ms after it is sent, the next one sent a second
/// after (once the cluster has had traffic; until then, a minute after).
fn checked_cluster() -> ClusterProto {
    let mut cluster = eds_cluster("dyn");
    cluster.health_checks = vec![
        schema::parse(
            "{ timeout: 2s, interval: 1s, unhealthy_threshold: 2, healthy_threshold: 2, http_health_check: { path: /delay/500 } }",
            Format::Yaml,
        )
        .unwrap(),
    ];
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cds_cluster_warms_until_its_first_checks_and_a_new_eds_host_until_its_own() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let control_plane = ControlPlane::start().await;
    let legate = legate_with_ads_and_lds(&control_plane);
    let mut stream = control_plane.next_stream().await;
    stream.next_of(CLUSTER_TYPE).await;
    stream.push("c1", "n1", vec![checked_cluster()]);
    assert!(stream.next_of(CLUSTER_TYPE).await.error_detail.is_none());
    assert_eq!(stream.next_of(ENDPOINT_TYPE).await.resource_names, ["dyn"]);
    stream.push("e1", "n2", vec![assignment("dyn", &[a.address])]);
    let assigned = Instant::now();
    assert_eq!(stream.next_of(ENDPOINT_TYPE).await.version_info, "e1");

    // With its hosts, the cluster still warms: its one host's first check takes 500 ms.
    let (_, clusters) = legate.admin_get("/clusters").await;
    assert!(clusters.contains("dyn::warming::waiting for the first health check of 1 of its 1 hosts"), "{clusters}");
    assert_eq!(legate.admin_get("/ready").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(legate.stat("cluster_manager.warming_clusters").await, Some(1));

    // The check done, initialization goes on by itself: LDS is asked for with no further
    // response from the control plane.
    let lds = tokio::time::timeout(Duration::from_secs(5), stream.next_of(LISTENER_TYPE))
        .await
        .expect("LDS asked for once the cluster is warm, with no further xDS response");
    assert!(assigned.elapsed() >= Duration::from_millis(500), "LDS asked for {:?} on", assigned.elapsed());
    assert!(lds.error_detail.is_none());
    assert_eq!(legate.stat("cluster_manager.warming_clusters").await, Some(0));
    assert_eq!(flags(&legate, "dyn", a.address).await, "healthy");
    assert_eq!(legate.admin_get("/ready").await.0, StatusCode::SERVICE_UNAVAILABLE, "listeners still to come");
    stream.push("l1", "n3", vec![dynamic_listener("dyn", "route: { cluster: dyn }")]);
    assert_eq!(stream.next_of(LISTENER_TYPE).await.version_info, "l1");
    assert_eq!(legate.admin_get("/ready").await, (StatusCode::OK, "LIVE\n".to_owned()));
    let listener = legate.listener("dyn");
    assert_eq!(send(listener, Version::HTTP_11, get("/")).await.text(), "a");

    // A host an EDS update adds is failed until its first check passes, 500 ms on, and
    // takes no request meanwhile; that one pass makes it healthy.
    stream.push("e2", "n4", vec![assignment("dyn", &[a.address, b.address])]);
    assert_eq!(stream.next_of(ENDPOINT_TYPE).await.version_info, "e2");
    assert_eq!(flags(&legate, "dyn", b.address).await, FAILED);
    assert_eq!(flags(&legate, "dyn", a.address).await, "healthy", "a kept host keeps its health");
    let checks_of_b = || b.seen.lock().unwrap().iter().filter(|s| s.path == "/delay/500").count();
    let mut while_failed = 0;
    loop {
        let answer = send(listener, Version::HTTP_11, get("/")).await;
        let checks = checks_of_b();
        let flags = flags(&legate, "dyn", b.address).await;
        if flags != FAILED {
            assert_eq!((flags.as_str(), checks), ("healthy", 1), "healthy at its first pass");
            break;
        }
        // Still failed after the answer, so failed when it was routed.
        assert_eq!(answer.text(), "a");
        while_failed += 1;
        assert!(while_failed < 1000, "b never passed its first check");
    }
    assert!(while_failed > 0, "no request went out while b was failed");
    assert_eq!(legate.stat("cluster.dyn.health_check.healthy").await, Some(2));
    let deadline = Instant::now() + Duration::from_secs(5);
    while send(listener, Version::HTTP_11, get("/")).await.text() != "b" {
        assert!(Instant::now() < deadline, "b never took a request");
    }
}
