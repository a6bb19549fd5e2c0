//! TLS: listeners that terminate it (ALPN, client certificates) and clusters that originate
//! it (client certificates, trusted CAs), with the test certificates of `tests/certs`.

use http::Version;
use tokio::net::TcpStream;

use crate::support::{
    Client, Legate, Upstream, bootstrap, certs_dir, get, route_all_to, routes, send, static_cluster, tls_connect,
};

/// `yaml` (from `bootstrap`) with its listener terminating TLS with the test server
/// certificate, ALPN h2 and http/1.1, and `validation` (YAML under `common_tls_context`).
fn tls_listener(yaml: &str, require_client_certificate: bool, validation: &str) -> String {
    let certs = certs_dir().display().to_string();
    let context = format!(
        "    - transport_socket:\n        name: envoy.transport_sockets.tls\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n          require_client_certificate: {require_client_certificate}\n          common_tls_context:\n            alpn_protocols: [h2, http/1.1]\n            tls_certificates:\n            - certificate_chain: {{ filename: {certs}/server.pem }}\n              private_key: {{ filename: {certs}/server-key.pem }}\n{validation}      filters:\n"
    );
    let tls = yaml.replacen("    filter_chains:\n    - filters:\n", &format!("    filter_chains:\n{context}"), 1);
    assert_ne!(tls, yaml, "the bootstrap has a filter chain to put TLS on");
    tls
}

/// A cluster's `transport_socket` trusting `ca` (a file of `tests/certs`) and presenting the
/// test client certificate if `client_certificate`.
fn upstream_tls(ca: &str, client_certificate: bool) -> String {
    let certs = certs_dir().display().to_string();
    let certificate = if client_certificate {
        format!(
            "          tls_certificates:\n          - certificate_chain: {{ filename: {certs}/client.pem }}\n            private_key: {{ filename: {certs}/client-key.pem }}\n"
        )
    } else {
        String::new()
    };
    format!(
        "    transport_socket:\n      name: envoy.transport_sockets.tls\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n        sni: legate.test\n        common_tls_context:\n{certificate}          validation_context:\n            trusted_ca: {{ filename: {certs}/{ca} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_listener_serves_http1_and_http2_by_alpn_and_tells_the_upstream_it_was_https() {
    let upstream = Upstream::start("svc").await;
    let clusters = static_cluster("svc", &[(upstream.address, 1)], "");
    let legate = Legate::start(&tls_listener(&bootstrap("", &route_all_to("svc"), &clusters), false, ""));
    for (alpn, version) in [(&b"http/1.1"[..], Version::HTTP_11), (b"h2", Version::HTTP_2)] {
        let tcp = TcpStream::connect(legate.listener("main")).await.unwrap();
        let tls = tls_connect(tcp, alpn, false).await.expect("handshake with the test CA's server certificate");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        let answer = Client::over(tls, version).await.send(get("/a")).await;
        assert_eq!(answer.status, 200, "{version:?}");
        assert_eq!(answer.version, version);
        assert_eq!(answer.text(), "svc");
        let seen = upstream.last();
        assert_eq!(seen.headers.get("x-forwarded-proto").map(String::as_str), Some("https"), "{version:?}");
    }
    // A plaintext request on the TLS port is no handshake.
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        crate::support::raw_exchange(legate.listener("main"), b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"),
    )
    .await
    .expect("the connection is closed");
    assert!(!answer.starts_with("HTTP/1.1 200"), "plaintext was served on a TLS listener");
    legate.wait_for_stat("listener.127.0.0.1_0.ssl.connection_error", 1).await;
    assert_eq!(legate.stat("listener.127.0.0.1_0.ssl.handshake").await, Some(2));
    assert_eq!(legate.stat("listener.127.0.0.1_0.ssl.versions.TLSv1.3").await, Some(2));
    assert_eq!(legate.stat("listener.127.0.0.1_0.ssl.no_certificate").await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_speaks_mutual_tls_and_a_certificate_it_cannot_verify_fails_the_connect() {
    let upstream = Upstream::start("svc").await;
    let back = Legate::start(&tls_listener(
        &bootstrap("", &route_all_to("svc"), &static_cluster("svc", &[(upstream.address, 1)], "")),
        true,
        &format!(
            "            validation_context:\n              trusted_ca: {{ filename: {}/ca.pem }}\n",
            certs_dir().display()
        ),
    ));
    let target = [(back.listener("main"), 1)];
    let clusters = [
        static_cluster("mtls", &target, &upstream_tls("ca.pem", true)),
        static_cluster("wrong-ca", &target, &upstream_tls("other-ca.pem", true)),
        static_cluster("no-cert", &target, &upstream_tls("ca.pem", false)),
    ]
    .concat();
    let route = |cluster: &str| {
        format!(
            "              - match: {{ prefix: \"/{cluster}/\" }}\n                route: {{ cluster: {cluster} }}\n"
        )
    };
    let front = Legate::start(&bootstrap("", &routes(&["mtls", "wrong-ca", "no-cert"].map(route).concat()), &clusters));

    let answer = send(front.listener("main"), Version::HTTP_11, get("/mtls/a")).await;
    assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "svc"));
    assert_eq!(upstream.last().path, "/mtls/a");
    assert_eq!(front.stat("cluster.mtls.ssl.handshake").await, Some(1));
    // Envoy's client default: TLS 1.2 at most.
    assert_eq!(front.stat("cluster.mtls.ssl.versions.TLSv1.2").await, Some(1));

    let answer = send(front.listener("main"), Version::HTTP_2, get("/wrong-ca/a")).await;
    assert_eq!(answer.status, 503);
    assert_eq!(
        answer.text(),
        "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
    );
    assert_eq!(front.stat("cluster.wrong-ca.ssl.fail_verify_error").await, Some(1));
    assert_eq!(front.stat("cluster.wrong-ca.upstream_cx_connect_fail").await, Some(1));

    let answer = send(front.listener("main"), Version::HTTP_11, get("/no-cert/a")).await;
    assert_eq!(answer.status, 503);
    back.wait_for_stat("listener.127.0.0.1_0.ssl.fail_verify_no_cert", 1).await;
    assert_eq!(front.stat("cluster.no-cert.ssl.connection_error").await, Some(1));
    assert_eq!(upstream.count(), 1, "only the request with a client certificate got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_of_a_tls_cluster_speak_its_tls() {
    let upstream = Upstream::start_tls("secure").await;
    // No panic mode: with its only host failed, the cluster has none to route to.
    let checks = "    common_lb_config: { healthy_panic_threshold: { value: 0 } }\n    health_checks:\n    - { timeout: 1s, interval: 0.05s, no_traffic_interval: 0.05s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: { path: /health } }\n";
    let extra = format!("{checks}{}", upstream_tls("ca.pem", false));
    let clusters = static_cluster("secure", &[(upstream.address, 1)], &extra);
    let legate = Legate::start(&bootstrap("", &route_all_to("secure"), &clusters));
    let answer = send(legate.listener("main"), Version::HTTP_11, get("/a")).await;
    assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "secure"));
    assert!(upstream.health_checks() >= 1, "the check reached the TLS upstream");

    upstream.set_health(503);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let answer = send(legate.listener("main"), Version::HTTP_11, get("/a")).await;
        if answer.status == 503 {
            assert_eq!(answer.text(), "no healthy upstream");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the failing check never took the host out");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let handshakes = legate.stat("cluster.secure.ssl.handshake").await.unwrap_or(0);
    assert!(handshakes >= 3, "checks and the request each handshake ({handshakes})");
}
