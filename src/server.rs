//! Wiring: builds the live objects from a validated bootstrap, starts the workers and the
//! admin server, and runs the drain on SIGTERM or `/quitquitquit`.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use tokio::sync::{mpsc, watch};

use crate::admin;
use crate::cli::Options;
use crate::config::bootstrap::BootstrapSpec;
use crate::config::schema;
use crate::config::xds::{GrpcSource, GrpcTarget, SourceSpec};
use crate::listener::{ListenerManager, WorkerCommand, serve_listener};
use crate::stats::{HistogramUnit, Store};
use crate::upstream::ClusterManager;
use crate::upstream::tasks::{self, UpstreamTasks};
use crate::worker::Worker;
use crate::xds::AdsClient;

/// How long the config schema stays decoded after its last use (see `schema::pool`).
const SCHEMA_IDLE: Duration = Duration::from_secs(5);

/// How long startup waits for the static clusters' first DNS resolution and health checks:
/// beyond the resolver's own timeouts (5 s a try, two tries), so only a stuck resolver or a
/// health check with a longer timeout reaches it. Envoy waits without a limit.
const STATIC_WARM_WAIT: Duration = Duration::from_secs(15);

/// Envoy's `server.state` values: PRE_INITIALIZING while the static clusters warm,
/// INITIALIZING while xDS brings the first clusters and listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Live = 0,
    Draining = 1,
    PreInitializing = 2,
    Initializing = 3,
}

impl ServerState {
    /// The name Envoy prints (`/ready`, `/server_info`).
    pub fn name(self) -> &'static str {
        match self {
            ServerState::Live => "LIVE",
            ServerState::Draining => "DRAINING",
            ServerState::PreInitializing => "PRE_INITIALIZING",
            ServerState::Initializing => "INITIALIZING",
        }
    }
}

/// What the admin API and the drain need to know of a running server.
pub struct ServerShared {
    pub store: Store,
    pub clusters: Arc<ClusterManager>,
    pub listeners: Arc<ListenerManager>,
    /// The bootstrap without its static clusters and listeners, which live (once) in the
    /// cluster manager and listeners; `bootstrap()` puts them back for `/config_dump`.
    bootstrap_rest: Bootstrap,
    /// The node this server runs as (`node` with the CLI overrides applied).
    pub node: envoy_types::pb::envoy::config::core::v3::Node,
    /// Static cluster names in bootstrap order.
    static_cluster_order: Vec<String>,
    pub options: Options,
    pub concurrency: usize,
    pub started: Instant,
    pub started_at: SystemTime,
    /// Set once every worker is accepting.
    pub live: AtomicBool,
    /// Set until the static clusters are warm.
    pre_initializing: AtomicBool,
    /// `/healthcheck/fail` was called (cleared by `/healthcheck/ok`).
    pub health_check_failed: AtomicBool,
    drain: watch::Sender<bool>,
}

impl ServerShared {
    /// The state Envoy would report.
    pub fn state(&self) -> ServerState {
        if *self.drain.borrow() || self.health_check_failed.load(Ordering::Acquire) {
            ServerState::Draining
        } else if self.live.load(Ordering::Acquire) && self.clusters.is_initialized() && self.listeners.is_initialized()
        {
            ServerState::Live
        } else if self.pre_initializing.load(Ordering::Acquire) {
            ServerState::PreInitializing
        } else {
            ServerState::Initializing
        }
    }

    /// The effective bootstrap, static resources included, as `/config_dump` shows it.
    pub fn bootstrap(&self) -> Bootstrap {
        let mut bootstrap = self.bootstrap_rest.clone();
        if let Some(statics) = &mut bootstrap.static_resources {
            let snapshot = self.clusters.snapshot();
            statics.clusters = self
                .static_cluster_order
                .iter()
                .filter_map(|name| snapshot.get(name))
                .filter(|c| !c.added_via_api)
                .map(|c| c.proto.decode())
                .collect();
            statics.listeners = self
                .listeners
                .active()
                .iter()
                .filter(|l| !l.added_via_api)
                .map(|l| l.runtime.spec.proto.clone())
                .collect();
        }
        bootstrap
    }

    /// Starts the drain: workers stop accepting and close connections gracefully.
    pub fn begin_drain(&self) {
        self.listeners.drain_all();
        self.drain.send_replace(true);
    }
}

/// A running server.
pub struct Server {
    pub shared: Arc<ServerShared>,
    /// The admin address actually bound (port 0 resolved), if admin is configured.
    pub admin_address: Option<SocketAddr>,
    workers: Vec<JoinHandle<()>>,
    admin_thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Builds everything from a validated bootstrap and starts serving.
    pub fn start(spec: BootstrapSpec, options: Options) -> anyhow::Result<Server> {
        let initializing = Instant::now();
        let concurrency =
            options.concurrency.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
        let store = Store::new();
        register_server_stats(&store, concurrency);
        let static_cluster_order: Vec<String> = spec.clusters.iter().map(|c| c.name.clone()).collect();
        let mut bootstrap_rest = spec.proto;
        if let Some(statics) = &mut bootstrap_rest.static_resources {
            statics.clusters.clear();
            statics.listeners.clear();
        }
        let (upstream_tasks, upstream_work) = UpstreamTasks::new();
        let clusters = Arc::new(ClusterManager::new(
            &store,
            spec.clusters,
            spec.dynamic.cds.is_some(),
            spec.dynamic.sources.clone(),
            upstream_tasks,
        ));
        tasks::start(Arc::downgrade(&clusters), upstream_work)?;
        let (drain_tx, drain_rx) = watch::channel(false);
        let mut workers = Vec::with_capacity(concurrency);
        let mut commands = Vec::with_capacity(concurrency);
        for index in 0..concurrency {
            let (tx, rx) = mpsc::unbounded_channel();
            commands.push(tx);
            let drain = drain_rx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("wrk:worker_{index}"))
                .spawn(move || run_worker(index, rx, drain))?;
            workers.push(thread);
        }
        let listeners = Arc::new(ListenerManager::new(
            &store,
            clusters.clone(),
            commands,
            spec.dynamic.lds.is_some(),
            spec.dynamic.sources.clone(),
        ));
        let shared = Arc::new(ServerShared {
            store: store.clone(),
            clusters,
            listeners,
            bootstrap_rest,
            node: spec.node,
            static_cluster_order,
            options,
            concurrency,
            started: Instant::now(),
            started_at: SystemTime::now(),
            live: AtomicBool::new(false),
            pre_initializing: AtomicBool::new(true),
            health_check_failed: AtomicBool::new(false),
            drain: drain_tx,
        });
        store.gauge("listener_manager.workers_started").set(1);
        let (admin_address, admin_thread) = match &spec.admin {
            Some(admin) => {
                let (address, thread) = admin::start(admin, shared.clone())?;
                (Some(address), Some(thread))
            }
            None => (None, None),
        };
        // As Envoy's initialization does, listeners wait for the static clusters' first DNS
        // resolution (a failed one counts; the cluster then has no hosts until a later one)
        // and first health checks, while the admin API answers `PRE_INITIALIZING`.
        let warm_deadline = Instant::now() + STATIC_WARM_WAIT;
        while shared.clusters.is_warming() && Instant::now() < warm_deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        shared.pre_initializing.store(false, Ordering::Release);
        store.gauge("server.state").set(ServerState::Initializing as i64);
        for listener in spec.listeners {
            let name = listener.name.clone();
            shared
                .listeners
                .add_or_update(listener, false, "")
                .map_err(|e| anyhow::anyhow!("cannot start listener '{name}': {e}"))?;
        }
        // One management server: over ADS, or over per-type streams.
        let server = match (&spec.dynamic.sources.ads, &spec.dynamic.sources.grpc) {
            (Some(ads), _) => Some((ads.clone(), true)),
            (None, Some(grpc)) => Some((grpc.clone(), false)),
            (None, None) => None,
        };
        if let Some((source, aggregated)) = server {
            start_xds(source, aggregated, spec.dynamic.cds, spec.dynamic.lds, &shared)?;
        }
        store
            .histogram("server.initialization_time_ms", HistogramUnit::Milliseconds)
            .record(initializing.elapsed().as_millis() as u64);
        shared.live.store(true, Ordering::Release);
        store.gauge("server.state").set(ServerState::Live as i64);
        tracing::info!(concurrency, listeners = shared.listeners.active().len(), "legate started");
        Ok(Server { shared, admin_address, workers, admin_thread })
    }

    /// The bound address of the listener named `name`.
    pub fn listener_address(&self, name: &str) -> Option<SocketAddr> {
        self.shared.listeners.address(name)
    }

    /// Waits for a drain started elsewhere (signal, `/quitquitquit`) to finish, at most
    /// `drain_time` after it began.
    pub fn wait(mut self, drain_time: Duration) {
        let mut drain = self.shared.drain.subscribe();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            // The config schema is needed again only for xDS updates and admin JSON; held
            // while idle it would be most of legate's memory.
            schema::release_idle_pool(Duration::ZERO);
            let mut check = tokio::time::interval(SCHEMA_IDLE / 5);
            loop {
                tokio::select! {
                    _ = drain.wait_for(|d| *d) => break,
                    _ = check.tick() => schema::release_idle_pool(SCHEMA_IDLE),
                }
            }
        });
        self.shared.store.gauge("server.state").set(ServerState::Draining as i64);
        let deadline = Instant::now() + drain_time;
        for worker in std::mem::take(&mut self.workers) {
            while !worker.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        for listener in self.shared.listeners.active() {
            for log in listener.runtime.access_logs() {
                log.flush();
            }
        }
        // The admin server stops with the process; its thread is detached here.
        drop(self.admin_thread.take());
    }
}

impl Drop for Server {
    /// The upstream thread's timers (DNS, outlier detection, health checks) stop with the
    /// server, as they do when the process exits; an in-process server (tests) must not
    /// leave health checks running against ports others may be given.
    fn drop(&mut self) {
        self.shared.clusters.stop_upstream_tasks();
    }
}

/// The xDS thread's nice value: the lowest priority, so a worker that shares its CPU
/// preempts it as soon as a request arrives. Applying 1 000 endpoint updates would otherwise
/// hold the CPU for a scheduler slice while requests wait; requests that arrived during an
/// apply showed a p99 several times higher, and nice 10 still left the churn p99 ratio above
/// 1.10 where 19 met it (BENCHMARKS.md, EDS churn). The thread still gets every cycle the
/// workers leave, so updates land as fast when the workers are not saturated.
pub const XDS_NICE: i32 = 19;
/// The admin thread's nice value: below the workers, but high enough that `/ready` and
/// `/stats` still answer promptly while the workers saturate the CPU.
pub const ADMIN_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority to `nice`, for the control threads that
/// must not delay requests on a CPU they share with a worker.
pub fn yield_to_workers(nice: i32) {
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on the calling thread's own id changes only that thread's nice value.
    unsafe {
        let tid = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) != 0 {
            tracing::debug!("cannot lower the priority of a control thread");
        }
    }
}

/// A worker: serves the listeners the listener manager hands it until the server drains
/// and every listener it served has finished draining.
fn run_worker(index: usize, mut commands: mpsc::UnboundedReceiver<WorkerCommand>, mut drain: watch::Receiver<bool>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    let worker = Rc::new(Worker { index, ..Worker::default() });
    // The control loop is a task of its own: the future `block_on` runs is polled again every
    // time any task of the set is woken (every socket event), and a select over the command
    // channel, the task set and the drain watch cost ≈ 1 000 instructions a request at one
    // connection; a task's join handle is one atomic read.
    let control = local.spawn_local(async move {
        let mut tasks = tokio::task::JoinSet::new();
        let mut draining = false;
        loop {
            tokio::select! {
                Some(command) = commands.recv(), if !draining => match command {
                    WorkerCommand::Serve { socket, listener, drain } => {
                        tasks.spawn_local(serve_listener(socket, listener, worker.clone(), drain));
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                    if draining && tasks.is_empty() {
                        return;
                    }
                }
                _ = drain.wait_for(|d| *d), if !draining => {
                    draining = true;
                    if tasks.is_empty() {
                        return;
                    }
                }
            }
        }
    });
    if let Err(e) = local.block_on(&runtime, control)
        && e.is_panic()
    {
        // As when the loop ran inline: the panic goes on up the worker thread.
        std::panic::resume_unwind(e.into_panic());
    }
}

fn register_server_stats(store: &Store, concurrency: usize) {
    store.gauge("server.concurrency").set(concurrency as i64);
    store.gauge("server.live").set(1);
    store.gauge("server.state").set(ServerState::PreInitializing as i64);
    store.gauge("server.version").set(0);
    store.gauge("server.uptime").set(0);
    store.gauge("server.memory_allocated").set(0);
    store.gauge("server.total_connections").set(0);
    // No hot restart. The days until a certificate expires are set as `/stats` is read;
    // until then, Envoy's value without any (u32::MAX).
    store.gauge("server.hot_restart_epoch").set(0);
    store.gauge("server.days_until_first_cert_expiring").set(i64::from(u32::MAX));
    store.gauge("listener_manager.total_listeners_warming").set(0);
    store.gauge("listener_manager.total_listeners_draining").set(0);
}

/// Starts the xDS client on its own control thread, and the initial-fetch timers that
/// let the server go live without CDS or LDS when the control plane does not answer in time.
fn start_xds(
    ads: GrpcSource,
    aggregated: bool,
    cds: Option<SourceSpec>,
    lds: Option<SourceSpec>,
    shared: &Arc<ServerShared>,
) -> anyhow::Result<()> {
    // Each (re)connect dials the next target: the ADS cluster's hosts, or the URI.
    let targets: Vec<String> = match &ads.target {
        GrpcTarget::Cluster(cluster) => shared
            .clusters
            .snapshot()
            .get(cluster)
            .map(|c| c.hosts.iter().map(|h| format!("http://{}", h.address)).collect())
            .unwrap_or_default(),
        GrpcTarget::Uri(uri) => vec![format!("http://{uri}")],
    };
    let clusters = shared.clusters.clone();
    let listeners = shared.listeners.clone();
    let clusters_for_lds = shared.clusters.clone();
    let client = AdsClient::new(
        ads,
        aggregated,
        shared.node.clone(),
        targets,
        clusters.clone(),
        listeners.clone(),
        lds.is_some(),
    );
    let cds_timeout = cds.and_then(|c| c.initial_fetch_timeout);
    let lds_timeout = lds.and_then(|l| l.initial_fetch_timeout);
    std::thread::Builder::new().name("legate-xds".into()).spawn(move || {
        yield_to_workers(XDS_NICE);
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the xDS runtime");
                return;
            }
        };
        runtime.block_on(async move {
            if let Some(timeout) = cds_timeout {
                tokio::spawn(async move {
                    tokio::time::sleep(timeout).await;
                    if !clusters.is_initialized() {
                        tracing::warn!(?timeout, "CDS initial fetch timed out; going on without it");
                        clusters.mark_initialized();
                    }
                });
            }
            if let Some(timeout) = lds_timeout {
                tokio::spawn(async move {
                    // LDS starts once CDS is initialized; its own timeout counts from then.
                    let _ = clusters_for_lds.initialized().wait_for(|done| *done).await;
                    tokio::time::sleep(timeout).await;
                    if !listeners.is_initialized() {
                        tracing::warn!(?timeout, "LDS initial fetch timed out; going on without it");
                        listeners.mark_initialized();
                    }
                });
            }
            client.run().await;
        });
    })?;
    Ok(())
}
