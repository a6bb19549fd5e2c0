//! TCP proxy listeners: bytes relayed both ways with half-closes passed on, connects tried
//! again up to `max_connect_attempts`, `max_connections`, the idle timeout, and LDS, as
//! clients, upstreams, `/stats` and the control plane see them.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use envoy_types::pb::envoy::config::listener::v3::Listener as ListenerProto;
use legate::config::schema::{self, Format};
use legate::xds::{CLUSTER_TYPE, LISTENER_TYPE};

use crate::control_plane::ControlPlane;
use crate::support::{Legate, bootstrap_with_filter, closed_port, static_cluster};
use crate::xds::{legate_with_ads_and_lds, static_type_cluster};

/// A bootstrap with one TCP proxy listener `main` (its `extra` fields indented for the
/// proxy's config) sending every connection to cluster `svc`.
fn tcp_bootstrap(extra: &str, clusters: &str) -> String {
    bootstrap_with_filter(
        &format!(
            r#"      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: db
          cluster: svc
{extra}"#
        ),
        clusters,
    )
}

/// An upstream that reads each connection to its end of stream (after a pause, so that a
/// large upload meets full socket buffers), then answers with what it read, reversed, and
/// closes: it answers only if the client's half-close reached it.
async fn reversing_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut read = Vec::new();
                if stream.read_to_end(&mut read).await.is_ok() {
                    read.reverse();
                    let _ = stream.write_all(&read).await;
                }
            });
        }
    });
    address
}

/// An upstream that accepts connections and holds them open without a byte either way;
/// returns its address and a receiver of how many bytes each connection read before it
/// ended.
async fn silent_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (ended, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let ended = ended.clone();
            tokio::spawn(async move {
                let mut read = Vec::new();
                let _ = stream.read_to_end(&mut read).await;
                let _ = ended.send(read.len());
            });
        }
    });
    (address, rx)
}

/// Reads `stream` to its end, failing the test after 5 s.
async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply))
        .await
        .expect("the proxy ends the connection")
        .unwrap_or_default();
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_go_both_ways_and_a_half_close_is_passed_on() {
    let upstream = reversing_upstream().await;
    let legate = Legate::start(&tcp_bootstrap("", &static_cluster("svc", &[(upstream, 1)], "")));
    // Far more than the sockets hold while the upstream pauses: the relay is pushed back.
    let sent: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
    let client = TcpStream::connect(legate.listener("main")).await.unwrap();
    let (mut reader, mut writer) = client.into_split();
    let upload = sent.clone();
    tokio::spawn(async move {
        writer.write_all(&upload).await.unwrap();
        writer.shutdown().await.unwrap();
    });
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut reply))
        .await
        .expect("the proxy ends the connection")
        .unwrap();
    let mut expected = sent.clone();
    expected.reverse();
    assert!(reply == expected, "got {} bytes back, not the {} sent, reversed", reply.len(), sent.len());
    legate.wait_for_stat("listener.127.0.0.1_0.downstream_cx_active", 0).await;
    assert_eq!(legate.stat("tcp.db.downstream_cx_total").await, Some(1));
    assert_eq!(legate.stat("tcp.db.downstream_cx_rx_bytes_total").await, Some(8_000_000));
    assert_eq!(legate.stat("tcp.db.downstream_cx_tx_bytes_total").await, Some(8_000_000));
    assert_eq!(legate.stat("cluster.svc.upstream_cx_total").await, Some(1));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_total").await, Some(1));
    legate.wait_for_stat("cluster.svc.upstream_cx_active", 0).await;
    assert_eq!(legate.stat("cluster.svc.upstream_rq_active").await, Some(0));
    assert_eq!(legate.stat("cluster.svc.upstream_cx_destroy_remote").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_is_tried_again_up_to_max_connect_attempts_then_the_client_is_closed() {
    let (_held, refusing) = closed_port();
    let legate = Legate::start(&tcp_bootstrap(
        "          max_connect_attempts: 3",
        &static_cluster("svc", &[(refusing, 1)], ""),
    ));
    let mut client = TcpStream::connect(legate.listener("main")).await.unwrap();
    assert_eq!(read_to_end(&mut client).await, b"");
    legate.wait_for_stat("cluster.svc.upstream_cx_connect_attempts_exceeded", 1).await;
    assert_eq!(legate.stat("cluster.svc.upstream_cx_connect_fail").await, Some(3));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_pending_failure_eject").await, Some(3));
    assert_eq!(legate.stat("cluster.svc.upstream_rq_total").await, Some(0));
    assert_eq!(legate.stat("tcp.db.downstream_cx_total").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_closed_and_counted_as_overflow() {
    let (upstream, mut ended) = silent_upstream().await;
    let breakers = "    circuit_breakers: { thresholds: [{ max_connections: 1 }] }\n";
    let legate = Legate::start(&tcp_bootstrap("", &static_cluster("svc", &[(upstream, 1)], breakers)));
    let mut first = TcpStream::connect(legate.listener("main")).await.unwrap();
    legate.wait_for_stat("cluster.svc.upstream_cx_active", 1).await;
    let mut second = TcpStream::connect(legate.listener("main")).await.unwrap();
    assert_eq!(read_to_end(&mut second).await, b"", "the second connection is closed at once");
    assert_eq!(legate.stat("cluster.svc.upstream_cx_overflow").await, Some(1));
    assert_eq!(legate.stat("cluster.svc.upstream_cx_total").await, Some(1));
    // The first is still relayed.
    first.write_all(b"still here").await.unwrap();
    first.shutdown().await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), ended.recv()).await.expect("the upstream sees the end");
    assert_eq!(read, Some(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_closes_both_sides() {
    let (upstream, mut ended) = silent_upstream().await;
    let legate =
        Legate::start(&tcp_bootstrap("          idle_timeout: 0.2s", &static_cluster("svc", &[(upstream, 1)], "")));
    let mut client = TcpStream::connect(legate.listener("main")).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(read_to_end(&mut client).await, b"");
    assert!(started.elapsed() >= Duration::from_millis(150), "closed after {:?}", started.elapsed());
    let read = tokio::time::timeout(Duration::from_secs(5), ended.recv()).await.expect("the upstream is closed too");
    assert_eq!(read, Some(5));
    assert_eq!(legate.stat("tcp.db.idle_timeout").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_does_not_exist_closes_the_connection_as_no_route() {
    let (upstream, _) = silent_upstream().await;
    let legate = Legate::start(
        &tcp_bootstrap("", &static_cluster("other", &[(upstream, 1)], "")).replace("cluster: svc", "cluster: nowhere"),
    );
    let mut client = TcpStream::connect(legate.listener("main")).await.unwrap();
    assert_eq!(read_to_end(&mut client).await, b"");
    legate.wait_for_stat("tcp.db.downstream_cx_no_route", 1).await;
    assert_eq!(legate.stat("cluster.other.upstream_cx_total").await, Some(0));
}

/// A listener from LDS: a TCP proxy to `cluster`, over two filter chains when `overlapping`
/// (both matching anything, which Envoy refuses).
fn tcp_listener(cluster: &str, overlapping: bool) -> ListenerProto {
    let chain = format!(
        "- filters:\n  - name: envoy.filters.network.tcp_proxy\n    typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: lds, cluster: {cluster} }}\n"
    );
    let chains = if overlapping { chain.repeat(2) } else { chain };
    let yaml = format!(
        "name: tcp\naddress: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\nfilter_chains:\n{chains}"
    );
    schema::parse(&yaml, Format::Yaml).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_proxy_comes_by_lds_and_a_bad_update_is_nacked_while_it_keeps_serving() {
    let upstream = reversing_upstream().await;
    let control_plane = ControlPlane::start().await;
    let legate = legate_with_ads_and_lds(&control_plane);
    let mut stream = control_plane.next_stream().await;
    stream.next_of(CLUSTER_TYPE).await;
    stream.push("c1", "n1", vec![static_type_cluster("svc", upstream)]);
    stream.next_of(LISTENER_TYPE).await;
    stream.push("l1", "n2", vec![tcp_listener("svc", false)]);
    assert_eq!(stream.next_of(LISTENER_TYPE).await.version_info, "l1");
    let address = legate.listener("tcp");
    let relayed = |address| async move {
        let mut client = TcpStream::connect(address).await.unwrap();
        client.write_all(b"abc").await.unwrap();
        client.shutdown().await.unwrap();
        read_to_end(&mut client).await
    };
    assert_eq!(relayed(address).await, b"cba");

    stream.push("l2", "n3", vec![tcp_listener("svc", true)]);
    let nack = stream.next_of(LISTENER_TYPE).await;
    assert_eq!(nack.version_info, "l1", "the last good version");
    let detail = nack.error_detail.expect("a NACK").message;
    assert!(detail.contains("filter_chains[1].filter_chain_match"), "{detail}");
    assert!(detail.contains("overlapping matching rules"), "{detail}");
    assert_eq!(relayed(address).await, b"cba", "the listener of l1 still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_reaches_the_client_as_a_reset() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut first = [0u8; 5];
            let _ = stream.read_exact(&mut first).await;
            stream.set_zero_linger().unwrap();
            drop(stream);
        }
    });
    let legate = Legate::start(&tcp_bootstrap("", &static_cluster("svc", &[(upstream, 1)], "")));
    let mut client = TcpStream::connect(legate.listener("main")).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut reply)).await.unwrap();
    assert_eq!(read.map_err(|e| e.kind()), Err(std::io::ErrorKind::ConnectionReset), "not a plain close");
    legate.wait_for_stat("cluster.svc.upstream_cx_destroy_remote", 1).await;
}
