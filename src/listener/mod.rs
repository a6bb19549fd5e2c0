//! Listeners: the shared, immutable runtime of each configured listener (HTTP, or a TCP
//! proxy), and the per-worker accept loops over `SO_REUSEPORT` sockets.

mod accept;
mod inspect;
pub mod manager;
mod tcp_proxy;

pub use accept::{accept_failed, bind_reuseport, serve_listener};
pub use inspect::{HttpInspectorStats, TlsInspectorStats};
pub use manager::{ActiveListener, ListenerManager, WorkerCommand};
pub use tcp_proxy::TcpProxyChain;

use std::sync::Arc;

use crate::config::filter_chain::{self, ChainMatch, ConnectionFacts};
use crate::config::hcm::{HcmSpec, RouteSpec};
use crate::config::listener::{FilterChainSpec, ListenerFilter, ListenerSpec, NetworkFilter};
use crate::config::tls::ServerTls;
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
    /// Connections no filter chain matched, closed.
    pub no_filter_chain_match: Counter,
    /// Connections the listener filters are reading.
    pub downstream_pre_cx_active: Gauge,
    /// Connections the listener filter timeout ended.
    pub downstream_pre_cx_timeout: Counter,
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
            no_filter_chain_match: store.counter(&name("no_filter_chain_match")),
            downstream_pre_cx_active: store.gauge(&name("downstream_pre_cx_active")),
            downstream_pre_cx_timeout: store.counter(&name("downstream_pre_cx_timeout")),
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

/// A listener's runtime, shared by all workers: its spec, its stats, and a runtime for each of
/// its filter chains, one of which serves each connection.
pub struct ListenerRuntime {
    pub spec: Arc<ListenerSpec>,
    pub stats: Arc<ListenerStats>,
    /// The runtimes of `spec.chains`, in their order.
    chains: Vec<ChainRuntime>,
    default_chain: Option<ChainRuntime>,
    matchers: Vec<ChainMatch>,
    /// `tls_inspector.*`, with the TLS inspector.
    pub tls_inspector: Option<TlsInspectorStats>,
    /// `http_inspector.*`, with the HTTP inspector.
    pub http_inspector: Option<HttpInspectorStats>,
}

/// The runtime of one filter chain, by its network filter.
pub enum ChainRuntime {
    Http(Arc<HttpChain>),
    TcpProxy(Arc<TcpProxyChain>),
}

/// What a filter chain's runtime shares with its listener, and its own TLS.
pub struct ChainBase {
    pub spec: Arc<ListenerSpec>,
    pub stats: Arc<ListenerStats>,
    /// The chain's TLS context, with the `listener.<prefix>.ssl.*` stats its handshakes count in.
    pub tls: Option<(Arc<ServerTls>, TlsStats)>,
    pub clusters: Arc<ClusterManager>,
}

impl ListenerRuntime {
    /// Builds the runtimes `spec`'s chains need: stats (per-worker ones for `workers`
    /// workers) and access log writers.
    pub fn new(
        spec: ListenerSpec,
        store: &Store,
        clusters: Arc<ClusterManager>,
        rds: &RdsRegistry,
        workers: usize,
    ) -> std::io::Result<ListenerRuntime> {
        let spec = Arc::new(spec);
        let stats = Arc::new(ListenerStats::new(store, &spec.stat_prefix, (0..workers).map(|i| format!("worker_{i}"))));
        let build = |chain: &FilterChainSpec| -> std::io::Result<ChainRuntime> {
            let tls = chain.tls.clone().map(|tls| {
                let tls_stats = TlsStats::new(store, &format!("listener.{}.", spec.stat_prefix), &tls.certificates);
                (tls, tls_stats)
            });
            let base = ChainBase { spec: spec.clone(), stats: stats.clone(), tls, clusters: clusters.clone() };
            Ok(match &chain.filter {
                NetworkFilter::Http(hcm) => {
                    ChainRuntime::Http(Arc::new(HttpChain::new(base, hcm.clone(), store, rds)?))
                }
                NetworkFilter::TcpProxy(proxy) => {
                    ChainRuntime::TcpProxy(Arc::new(TcpProxyChain::new(base, proxy.clone(), store)?))
                }
            })
        };
        let chains = spec.chains.iter().map(build).collect::<std::io::Result<Vec<_>>>()?;
        let default_chain = spec.default_chain.as_ref().map(build).transpose()?;
        Ok(ListenerRuntime {
            matchers: spec.chains.iter().map(|c| c.matcher.clone()).collect(),
            tls_inspector: spec
                .listener_filters
                .contains(&ListenerFilter::TlsInspector)
                .then(|| TlsInspectorStats::new(store)),
            http_inspector: spec
                .listener_filters
                .contains(&ListenerFilter::HttpInspector)
                .then(|| HttpInspectorStats::new(store)),
            chains,
            default_chain,
            stats,
            spec,
        })
    }

    /// The chain that serves a connection, as Envoy chooses it; `None`: no chain matches and
    /// there is no default one.
    pub fn select(&self, facts: &ConnectionFacts<'_>) -> Option<&ChainRuntime> {
        match filter_chain::select(&self.matchers, facts) {
            Some(index) => self.chains.get(index),
            None => self.default_chain.as_ref(),
        }
    }

    fn all_chains(&self) -> impl Iterator<Item = &ChainRuntime> {
        self.chains.iter().chain(&self.default_chain)
    }

    /// Its chains' access log writers.
    pub fn access_logs(&self) -> impl Iterator<Item = &AccessLogger> {
        self.all_chains().flat_map(|chain| match chain {
            ChainRuntime::Http(http) => http.access_logs.iter(),
            ChainRuntime::TcpProxy(proxy) => proxy.access_logs.iter(),
        })
    }

    /// Whether it can serve: an HTTP chain on RDS waits for its routes.
    pub fn is_ready(&self) -> bool {
        self.all_chains().all(|chain| match chain {
            ChainRuntime::Http(http) => http.routes.is_ready(),
            ChainRuntime::TcpProxy(_) => true,
        })
    }

    /// The HTTP chains, for their route configurations.
    pub fn http_chains(&self) -> impl Iterator<Item = &HttpChain> {
        self.all_chains().filter_map(|chain| match chain {
            ChainRuntime::Http(http) => Some(&**http),
            ChainRuntime::TcpProxy(_) => None,
        })
    }
}

/// The runtime of a filter chain whose filter is the HTTP connection manager.
pub struct HttpChain {
    pub spec: Arc<ListenerSpec>,
    /// The chain's connection manager, read on every request.
    pub hcm: Arc<HcmSpec>,
    pub stats: Arc<ListenerStats>,
    pub http_stats: HcmStats,
    /// The chain's TLS context and `listener.<prefix>.ssl.*` stats.
    pub tls: Option<(Arc<ServerTls>, TlsStats)>,
    pub access_logs: Vec<AccessLogger>,
    pub clusters: Arc<ClusterManager>,
    pub routes: Routes,
}

impl HttpChain {
    fn new(base: ChainBase, hcm: Arc<HcmSpec>, store: &Store, rds: &RdsRegistry) -> std::io::Result<HttpChain> {
        let http_stats = HcmStats::new(store, &hcm.stat_prefix);
        let access_logs = hcm.access_logs.iter().map(AccessLogger::new).collect::<std::io::Result<Vec<_>>>()?;
        let routes = match &hcm.routes {
            RouteSpec::Inline(table, _) => Routes::Static(table.clone()),
            RouteSpec::Rds { name, host_port } => Routes::Rds(rds.slot(name, *host_port, store, &hcm.stat_prefix)),
        };
        let ChainBase { spec, stats, tls, clusters } = base;
        Ok(HttpChain { spec, hcm, stats, http_stats, tls, access_logs, clusters, routes })
    }
}
