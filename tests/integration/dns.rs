//! DNS clusters: names resolved through the system's resolver (`/etc/hosts` here), the
//! hosts and hostnames `/clusters` shows, and the Host a LOGICAL_DNS cluster's name gives
//! with `auto_host_rewrite`. Interop config 39 compares the same shapes with Envoy.

use http::Version;

use crate::support::{Legate, Upstream, bootstrap, get, routes, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_clusters_serve_the_addresses_their_names_resolve_to() {
    let (strict, logical) = (Upstream::start("strict").await, Upstream::start("logical").await);
    let cluster = |name: &str, kind: &str, port: u16| {
        format!(
            "  - name: {name}\n    type: {kind}\n    dns_lookup_family: V4_ONLY\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: localhost, port_value: {port} }} }} }}\n"
        )
    };
    let clusters = format!(
        "{}{}",
        cluster("strict", "STRICT_DNS", strict.address.port()),
        cluster("logical", "LOGICAL_DNS", logical.address.port())
    );
    let route = routes(concat!(
        "              - match: { prefix: \"/logical\" }\n                route: { cluster: logical, auto_host_rewrite: true }\n",
        "              - match: { prefix: \"/\" }\n                route: { cluster: strict }\n",
    ));
    let legate = Legate::start(&bootstrap("", &route, &clusters));
    // Listeners start after the static DNS clusters' first resolution, so the first
    // request finds the hosts.
    let answer = send(legate.listener("main"), Version::HTTP_11, get("/")).await;
    assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "strict"));
    let answer = send(legate.listener("main"), Version::HTTP_2, get("/logical")).await;
    assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "logical"));
    assert_eq!(logical.last().authority, "localhost", "auto_host_rewrite takes the DNS name");

    let (_, clusters) = legate.admin_get("/clusters").await;
    for (name, upstream) in [("strict", &strict), ("logical", &logical)] {
        let host = format!("{name}::127.0.0.1:{}", upstream.address.port());
        assert!(clusters.contains(&format!("{host}::hostname::localhost")), "{clusters}");
        assert!(clusters.contains(&format!("{host}::health_flags::healthy")), "{clusters}");
        assert!(legate.stat(&format!("cluster.{name}.update_success")).await.unwrap() >= 1);
        assert_eq!(legate.stat(&format!("cluster.{name}.update_failure")).await, Some(0));
    }
    assert_eq!(legate.stat("cluster_manager.warming_clusters").await, Some(0));
    assert_eq!(legate.stat("cluster_manager.active_clusters").await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_leaves_its_cluster_without_hosts() {
    // `.invalid` is reserved (RFC 2606): no name server knows it.
    let clusters = "  - name: missing\n    type: STRICT_DNS\n    load_assignment:\n      cluster_name: missing\n      endpoints:\n      - lb_endpoints:\n        - endpoint: { address: { socket_address: { address: nonexistent.invalid, port_value: 80 } } }\n";
    let legate = Legate::start(&bootstrap(
        "",
        &routes("              - match: { prefix: \"/\" }\n                route: { cluster: missing }\n"),
        clusters,
    ));
    // The failed first round ends the cluster's warming, as in Envoy: it serves, with no host.
    let answer = send(legate.listener("main"), Version::HTTP_11, get("/")).await;
    assert_eq!((answer.status.as_u16(), answer.text().as_str()), (503, "no healthy upstream"));
    assert!(legate.stat("cluster.missing.update_failure").await.unwrap() >= 1);
    assert_eq!(legate.stat("cluster.missing.update_success").await, Some(0));
    assert_eq!(legate.stat("cluster.missing.membership_total").await, Some(0));
}
