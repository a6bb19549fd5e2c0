//! Listeners: the shared, immutable runtime of each configured listener (HTTP, or a TCP
//! proxy), and the per-worker accept loops over `SO_REUSEPORT` sockets.

mod accept;
pub mod manager;
mod tcp_proxy;

pub use accept::{accept_failed, bind_reuseport, serve_listener};
pub use manager::{ActiveListener, ListenerManager, WorkerCommand};
pub use tcp_proxy::TcpProxyListener;

use std::sync::Arc;

use crate::config::listener::{HcmSpec, ListenerSpec, NetworkFilter, RouteSpec};
use crate::http::access_log::AccessLogger;
use crate::http::rds::{RdsRegistry, Routes};
use crate::stats::{Counter, Gauge, Histogram, HistogramUnit, Store};
use crate::transport::TlsStats;
use crate::upstream::ClusterManager;

/// `listener.<prefix>.*` stats.
pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_destroy: Counter,
    pub downstream_cx_length_ms: Histogram,
    /// `listener.<prefix>.<worker>.downstream_cx_total` / `_active`, by worker index
    /// (`worker_N`; the admin listener's one is `main_thread`).
    pub per_worker: Vec<(Counter, Gauge)>,
}

impl ListenerStats {
    /// The listener stats under `listener.<prefix>.`, with per-worker ones named `workers`.
    /// Envoy's connection limit, overload and transport-socket counters are registered
    /// too; legate has none of those mechanisms, so they stay 0.
    pub fn new(store: &Store, prefix: &str, workers: impl IntoIterator<Item = String>) -> ListenerStats {
        let name = |s: &str| format!("listener.{prefix}.{s}");
        for never in [
            "downstream_cx_overflow",
            "downstream_cx_overload_reject",
            "downstream_cx_transport_socket_connect_timeout",
        ] {
            store.counter(&name(never));
        }
        ListenerStats {
            downstream_cx_total: store.counter(&name("downstream_cx_total")),
            downstream_cx_active: store.gauge(&name("downstream_cx_active")),
            downstream_cx_destroy: store.counter(&name("downstream_cx_destroy")),
            downstream_cx_length_ms: store.histogram(&name("downstream_cx_length_ms"), HistogramUnit::Milliseconds),
            per_worker: workers
                .into_iter()
                .map(|w| {
                    (
                        store.counter(&name(&format!("{w}.downstream_cx_total"))),
                        store.gauge(&name(&format!("{w}.downstream_cx_active"))),
                    )
                })
                .collect(),
        }
    }

    /// A connection was accepted on worker `worker`.
    pub fn opened(&self, worker: usize) {
        self.downstream_cx_total.inc();
        self.downstream_cx_active.inc();
        if let Some((total, active)) = self.per_worker.get(worker) {
            total.inc();
            active.inc();
        }
    }

    /// A connection of worker `worker` closed after `length`.
    pub fn closed(&self, worker: usize, length: std::time::Duration) {
        self.downstream_cx_active.dec();
        self.downstream_cx_destroy.inc();
        self.downstream_cx_length_ms.record(length.as_millis() as u64);
        if let Some((_, active)) = self.per_worker.get(worker) {
            active.dec();
        }
    }
}

/// `http.<stat_prefix>.*` stats of a connection manager and its router.
pub struct HcmStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_http1_total: Counter,
    pub downstream_cx_http2_total: Counter,
    pub downstream_cx_destroy: Counter,
    pub downstream_rq_total: Counter,
    pub downstream_rq_active: Gauge,
    pub downstream_rq_http1_total: Counter,
    pub downstream_rq_http2_total: Counter,
    pub downstream_rq_completed: Counter,
    pub downstream_rq_class: [Counter; 5],
    pub downstream_rq_time: Histogram,
    pub no_route: Counter,
    pub no_cluster: Counter,
    pub rq_redirect: Counter,
    pub rq_direct_response: Counter,
    pub rq_total: Counter,
    pub downstream_rq_idle_timeout: Counter,
    pub downstream_rq_timeout: Counter,
    pub downstream_cx_idle_timeout: Counter,
    pub downstream_cx_length_ms: Histogram,
    pub downstream_rq_response_before_rq_complete: Counter,
    pub downstream_cx_protocol_error: Counter,
    pub downstream_rq_rx_reset: Counter,
    pub downstream_rq_failed_path_normalization: Counter,
    pub downstream_rq_redirected_with_normalized_path: Counter,
    pub downstream_rq_max_duration_reached: Counter,
}

/// `http.<prefix>.downstream_rq_*` counters of Envoy's that count what legate never does
/// (HTTP/3, WebSocket upgrades, header timeouts, overload, ...): they
/// exist, at 0, so dashboards and alerts written for Envoy find them.
const NEVER_COUNTED: &[&str] = &[
    "downstream_rq_header_timeout",
    "downstream_rq_http3_total",
    "downstream_rq_non_relative_path",
    "downstream_rq_overload_close",
    "downstream_rq_rejected_via_ip_detection",
    "downstream_rq_too_large",
    "downstream_rq_too_many_premature_resets",
    "downstream_rq_tx_reset",
    "downstream_rq_ws_on_non_ws_route",
];

impl HcmStats {
    /// The connection manager stats under `http.<prefix>.`.
    pub fn new(store: &Store, prefix: &str) -> HcmStats {
        let c = |s: &str| store.counter(&format!("http.{prefix}.{s}"));
        for never in NEVER_COUNTED {
            c(never);
        }
        let g = |s: &str| store.gauge(&format!("http.{prefix}.{s}"));
        HcmStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_http1_total: c("downstream_cx_http1_total"),
            downstream_cx_http2_total: c("downstream_cx_http2_total"),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_active: g("downstream_rq_active"),
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_http2_total: c("downstream_rq_http2_total"),
            downstream_rq_completed: c("downstream_rq_completed"),
            downstream_rq_class: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| c(&format!("downstream_rq_{class}"))),
            downstream_rq_time: store
                .histogram(&format!("http.{prefix}.downstream_rq_time"), HistogramUnit::Milliseconds),
            no_route: c("no_route"),
            no_cluster: c("no_cluster"),
            rq_redirect: c("rq_redirect"),
            rq_direct_response: c("rq_direct_response"),
            rq_total: c("rq_total"),
            downstream_rq_idle_timeout: c("downstream_rq_idle_timeout"),
            downstream_rq_timeout: c("downstream_rq_timeout"),
            downstream_cx_idle_timeout: c("downstream_cx_idle_timeout"),
            downstream_cx_length_ms: store
                .histogram(&format!("http.{prefix}.downstream_cx_length_ms"), HistogramUnit::Milliseconds),
            downstream_rq_response_before_rq_complete: c("downstream_rq_response_before_rq_complete"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_rq_rx_reset: c("downstream_rq_rx_reset"),
            downstream_rq_failed_path_normalization: c("downstream_rq_failed_path_normalization"),
            downstream_rq_redirected_with_normalized_path: c("downstream_rq_redirected_with_normalized_path"),
            downstream_rq_max_duration_reached: c("downstream_rq_max_duration_reached"),
        }
    }
}

/// A listener's runtime, shared by all workers, by the network filter that serves it.
#[derive(Clone)]
pub enum ListenerRuntime {
    Http(Arc<HttpListener>),
    TcpProxy(Arc<TcpProxyListener>),
}

impl ListenerRuntime {
    /// Builds the runtime `spec`'s filter needs: stats (per-worker ones for `workers`
    /// workers) and access log writers.
    pub fn new(
        spec: ListenerSpec,
        store: &Store,
        clusters: Arc<ClusterManager>,
        rds: &RdsRegistry,
        workers: usize,
    ) -> std::io::Result<ListenerRuntime> {
        Ok(match spec.filter.clone() {
            NetworkFilter::Http(hcm) => {
                ListenerRuntime::Http(Arc::new(HttpListener::new(spec, hcm, store, clusters, rds, workers)?))
            }
            NetworkFilter::TcpProxy(proxy) => {
                ListenerRuntime::TcpProxy(Arc::new(TcpProxyListener::new(spec, proxy, store, clusters, workers)?))
            }
        })
    }

    /// The listener's validated config.
    pub fn spec(&self) -> &ListenerSpec {
        match self {
            ListenerRuntime::Http(listener) => &listener.spec,
            ListenerRuntime::TcpProxy(listener) => &listener.spec,
        }
    }

    /// Its access log writers.
    pub fn access_logs(&self) -> &[AccessLogger] {
        match self {
            ListenerRuntime::Http(listener) => &listener.access_logs,
            ListenerRuntime::TcpProxy(listener) => &listener.access_logs,
        }
    }

    /// Whether it can serve: an HTTP listener on RDS waits for its routes.
    pub fn is_ready(&self) -> bool {
        match self {
            ListenerRuntime::Http(listener) => listener.routes.is_ready(),
            ListenerRuntime::TcpProxy(_) => true,
        }
    }
}

/// The runtime of a listener whose filter is the HTTP connection manager.
pub struct HttpListener {
    pub spec: ListenerSpec,
    /// The connection manager of `spec.filter`, read without a match on every request.
    pub hcm: Arc<HcmSpec>,
    pub stats: ListenerStats,
    pub http_stats: HcmStats,
    /// `listener.<prefix>.ssl.*`, for a TLS listener.
    pub tls_stats: Option<TlsStats>,
    pub access_logs: Vec<AccessLogger>,
    pub clusters: Arc<ClusterManager>,
    pub routes: Routes,
}

impl HttpListener {
    fn new(
        spec: ListenerSpec,
        hcm: Arc<HcmSpec>,
        store: &Store,
        clusters: Arc<ClusterManager>,
        rds: &RdsRegistry,
        workers: usize,
    ) -> std::io::Result<HttpListener> {
        let stats = ListenerStats::new(store, &spec.stat_prefix, (0..workers).map(|i| format!("worker_{i}")));
        let http_stats = HcmStats::new(store, &hcm.stat_prefix);
        let tls_stats = listener_tls_stats(&spec, store);
        let access_logs = hcm.access_logs.iter().map(AccessLogger::new).collect::<std::io::Result<Vec<_>>>()?;
        let routes = match &hcm.routes {
            RouteSpec::Inline(table, _) => Routes::Static(table.clone()),
            RouteSpec::Rds { name, host_port } => Routes::Rds(rds.slot(name, *host_port, store, &hcm.stat_prefix)),
        };
        Ok(HttpListener { spec, hcm, stats, http_stats, tls_stats, access_logs, clusters, routes })
    }
}

/// `listener.<prefix>.ssl.*`, for a TLS listener.
fn listener_tls_stats(spec: &ListenerSpec, store: &Store) -> Option<TlsStats> {
    spec.tls.as_ref().map(|tls| TlsStats::new(store, &format!("listener.{}.", spec.stat_prefix), &tls.certificates))
}
