//! Listeners: the shared, immutable runtime of each configured listener, and the
//! per-worker accept loops over `SO_REUSEPORT` sockets.

mod accept;
pub mod manager;

pub use accept::{bind_reuseport, serve_listener};
pub use manager::{ActiveListener, ListenerManager, WorkerCommand};

use std::sync::Arc;

use crate::config::listener::{ListenerSpec, RouteSpec};
use crate::http::access_log::AccessLogger;
use crate::http::rds::{RdsRegistry, Routes};
use crate::stats::{Counter, Gauge, Histogram, HistogramUnit, Store};
use crate::upstream::ClusterManager;

/// `listener.<prefix>.*` stats.
pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_destroy: Counter,
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
    pub downstream_rq_response_before_rq_complete: Counter,
}

impl HcmStats {
    fn new(store: &Store, prefix: &str) -> HcmStats {
        let c = |s: &str| store.counter(&format!("http.{prefix}.{s}"));
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
            downstream_rq_response_before_rq_complete: c("downstream_rq_response_before_rq_complete"),
        }
    }
}

/// A listener's runtime, shared by all workers.
pub struct HttpListener {
    pub spec: ListenerSpec,
    pub stats: ListenerStats,
    pub http_stats: HcmStats,
    pub access_logs: Vec<AccessLogger>,
    pub clusters: Arc<ClusterManager>,
    pub routes: Routes,
}

impl HttpListener {
    /// Builds a listener's runtime: stats and access log writers.
    pub fn new(
        spec: ListenerSpec,
        store: &Store,
        clusters: Arc<ClusterManager>,
        rds: &RdsRegistry,
    ) -> std::io::Result<HttpListener> {
        let prefix = format!("listener.{}.", spec.stat_prefix);
        let stats = ListenerStats {
            downstream_cx_total: store.counter(&format!("{prefix}downstream_cx_total")),
            downstream_cx_active: store.gauge(&format!("{prefix}downstream_cx_active")),
            downstream_cx_destroy: store.counter(&format!("{prefix}downstream_cx_destroy")),
        };
        let http_stats = HcmStats::new(store, &spec.hcm.stat_prefix);
        let access_logs = spec.hcm.access_logs.iter().map(AccessLogger::new).collect::<std::io::Result<Vec<_>>>()?;
        let routes = match &spec.hcm.routes {
            RouteSpec::Inline(table, _) => Routes::Static(table.clone()),
            RouteSpec::Rds { name, host_port } => Routes::Rds(rds.slot(name, *host_port, store, &spec.hcm.stat_prefix)),
        };
        Ok(HttpListener { spec, stats, http_stats, access_logs, clusters, routes })
    }
}
