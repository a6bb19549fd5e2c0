//! Listeners with several filter chains: the TLS inspector's server name choosing the chain
//! (a ClientHello in pieces included), connections no chain matches, and the listener filter
//! timeout with and without `continue_on_listener_filters_timeout`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Version;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Client, Legate, Upstream, bootstrap_with_chains, certs_dir, get, static_cluster, tls_connect_to};

/// A chain for `server_name` terminating TLS with the test server certificate and sending
/// every request to cluster `cluster`.
fn tls_chain(server_name: &str, cluster: &str) -> String {
    let certs = certs_dir().display().to_string();
    format!(
        r#"    - filter_chain_match: {{ server_names: [{server_name}] }}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: {certs}/server.pem }}
              private_key: {{ filename: {certs}/server-key.pem }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {cluster}
          route_config:
            virtual_hosts:
            - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: {cluster} }} }}] }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    )
}

/// A bootstrap with one listener `main` with the TLS inspector (and `listener_extra`
/// fields), the given chains and clusters.
fn inspecting_bootstrap(listener_extra: &str, chains: &str, clusters: &str) -> String {
    let inspector = "    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n      typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }\n";
    bootstrap_with_chains(&format!("{listener_extra}{inspector}"), chains, clusters)
}

/// GET `/` over TLS with SNI `server_name`: the body, or `None` if the connection was closed.
async fn get_with_sni(address: SocketAddr, server_name: &str) -> Option<String> {
    let tcp = TcpStream::connect(address).await.unwrap();
    let tls = tls_connect_to(tcp, server_name, b"http/1.1", false).await.ok()?;
    Some(Client::over(tls, Version::HTTP_11).await.send(get("/")).await.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_name_chooses_the_chain_and_a_name_no_chain_has_is_closed() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let clusters = [static_cluster("a", &[(a.address, 1)], ""), static_cluster("b", &[(b.address, 1)], "")].concat();
    let chains = [tls_chain("a.legate.test", "a"), tls_chain("\"*.legate.test\"", "b")].concat();
    let legate = Legate::start(&inspecting_bootstrap("", &chains, &clusters));
    let main = legate.listener("main");
    assert_eq!(get_with_sni(main, "a.legate.test").await.as_deref(), Some("a"));
    assert_eq!(get_with_sni(main, "www.legate.test").await.as_deref(), Some("b"));
    assert_eq!(get_with_sni(main, "localhost").await, None, "no chain for localhost, no default chain");
    legate.wait_for_stat("listener.127.0.0.1_0.no_filter_chain_match", 1).await;
    assert_eq!(legate.stat("tls_inspector.sni_found").await, Some(3));
    assert_eq!(legate.stat("listener.127.0.0.1_0.ssl.handshake").await, Some(2));

    // A ClientHello that arrives in two pieces is read whole before the chain is chosen.
    let answer = tokio::task::spawn_blocking(move || split_hello_get(main, "a.legate.test")).await.unwrap();
    assert!(answer.ends_with("\r\n\r\na"), "answered by a: {answer:?}");
}

/// GET `/` over TLS with SNI `server_name`, on a blocking socket, the ClientHello written in
/// two pieces 50 ms apart; returns the raw response.
fn split_hello_get(address: SocketAddr, server_name: &str) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(certs_dir().join("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = std::net::TcpStream::connect(address).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    let (first, rest) = hello.split_at(20);
    tcp.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    tcp.write_all(rest).unwrap();
    let mut tls = rustls::StreamOwned::new(client, tcp);
    tls.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_filter_timeout_closes_a_silent_client_or_lets_a_server_speak_first() {
    // A server-first protocol (SMTP, MySQL): the upstream greets before the client sends.
    let banner = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let banner_address = banner.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = banner.accept().await {
            let _ = stream.write_all(b"220 ready\r\n").await;
        }
    });
    let raw_chain = "    - filter_chain_match: { transport_protocol: raw_buffer }\n      filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: smtp\n          cluster: smtp\n";
    let clusters = static_cluster("smtp", &[(banner_address, 1)], "");
    for (continue_on_timeout, greeted) in [(false, ""), (true, "220 ready\r\n")] {
        let extra = format!(
            "    listener_filters_timeout: 0.2s\n    continue_on_listener_filters_timeout: {continue_on_timeout}\n"
        );
        let legate = Legate::start(&inspecting_bootstrap(&extra, raw_chain, &clusters));
        let mut client = TcpStream::connect(legate.listener("main")).await.unwrap();
        let mut read = Vec::new();
        let started = tokio::time::Instant::now();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut read)).await;
        assert_eq!(
            String::from_utf8_lossy(&read),
            greeted,
            "continue_on_listener_filters_timeout: {continue_on_timeout}"
        );
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(legate.stat("listener.127.0.0.1_0.downstream_pre_cx_timeout").await, Some(1));
        assert_eq!(legate.stat("tcp.smtp.downstream_cx_total").await, Some(u64::from(continue_on_timeout) as i64));
    }
}
