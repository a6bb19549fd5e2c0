//! The listener manager: the only writer of listener state. Adding a listener binds one
//! `SO_REUSEPORT` socket per worker and hands each worker its socket; updating one binds
//! the new version beside the old (same port, thanks to `SO_REUSEPORT`), then drains the
//! old one; removing one drains it. Draining stops accepting and closes connections
//! gracefully once their in-flight requests finish, as Envoy's listener drain does.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use envoy_types::pb::envoy::config::listener::v3::Listener as ListenerProto;
use tokio::sync::{mpsc, watch};

use super::{ListenerRuntime, bind_reuseport};
use crate::config::Rejected;
use crate::config::listener::ListenerSpec;
use crate::config::xds::XdsSources;
use crate::http::rds::RdsRegistry;
use crate::stats::{Counter, Gauge, Store};
use crate::upstream::ClusterManager;

/// What a worker is asked to do.
pub enum WorkerCommand {
    /// Accept on `socket` for `listener` until `drain` turns true.
    Serve { socket: std::net::TcpListener, listener: Arc<ListenerRuntime>, drain: watch::Receiver<bool> },
}

/// A listener that is accepting.
#[derive(Clone)]
pub struct ActiveListener {
    pub runtime: Arc<ListenerRuntime>,
    /// The address actually bound (port 0 resolved).
    pub bound: SocketAddr,
    pub added_via_api: bool,
    pub version_info: String,
    pub last_updated: SystemTime,
    drain: Arc<watch::Sender<bool>>,
    /// One bound socket per worker; workers accept on duplicates of them.
    sockets: Arc<Vec<std::net::TcpListener>>,
}

/// A listener waiting for its RDS route configuration before it binds.
struct WarmingListener {
    runtime: Arc<ListenerRuntime>,
    added_via_api: bool,
    version_info: String,
}

#[derive(Default)]
struct State {
    active: HashMap<String, ActiveListener>,
    warming: HashMap<String, WarmingListener>,
    /// Listener names in the order they were added (static first, in bootstrap order).
    order: Vec<String>,
    draining: bool,
}

struct ManagerStats {
    listener_added: Counter,
    listener_modified: Counter,
    listener_removed: Counter,
    total_listeners_active: Gauge,
}

/// Owns the listeners and the workers' command channels.
pub struct ListenerManager {
    store: Store,
    clusters: Arc<ClusterManager>,
    rds: Arc<RdsRegistry>,
    workers: Vec<mpsc::UnboundedSender<WorkerCommand>>,
    state: Mutex<State>,
    stats: ManagerStats,
    /// True once the initial LDS round is applied (or not configured, or timed out).
    initialized: watch::Sender<bool>,
    /// The management servers LDS listeners may name for RDS.
    sources: XdsSources,
    /// An HTTP connection manager was configured at some point: from then on `/config_dump`
    /// has route sections, as Envoy's has once its first connection manager made its route
    /// config provider manager.
    http_configured: AtomicBool,
}

impl ListenerManager {
    /// A manager that hands sockets to `workers`.
    /// `wait_for_lds` holds initialization until the first LDS round is applied.
    pub fn new(
        store: &Store,
        clusters: Arc<ClusterManager>,
        workers: Vec<mpsc::UnboundedSender<WorkerCommand>>,
        wait_for_lds: bool,
        sources: XdsSources,
    ) -> Self {
        let c = |s: &str| store.counter(&format!("listener_manager.{s}"));
        let g = |s: &str| store.gauge(&format!("listener_manager.{s}"));
        ListenerManager {
            stats: ManagerStats {
                listener_added: c("listener_added"),
                listener_modified: c("listener_modified"),
                listener_removed: c("listener_removed"),
                total_listeners_active: g("total_listeners_active"),
            },
            store: store.clone(),
            clusters,
            rds: Arc::default(),
            workers,
            state: Mutex::new(State::default()),
            initialized: watch::Sender::new(!wait_for_lds),
            sources,
            http_configured: AtomicBool::new(false),
        }
    }

    /// Whether the initial LDS round is over.
    pub fn is_initialized(&self) -> bool {
        *self.initialized.borrow()
    }

    /// Ends initialization (first LDS round applied, or its fetch timed out).
    pub fn mark_initialized(&self) {
        self.initialized.send_replace(true);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether an HTTP connection manager was ever configured.
    pub fn http_configured(&self) -> bool {
        self.http_configured.load(Ordering::Relaxed)
    }

    /// The RDS route configurations listeners use.
    pub fn rds(&self) -> &Arc<RdsRegistry> {
        &self.rds
    }

    /// Adds or replaces the listener `spec` describes; an unchanged one is left alone. A
    /// listener whose RDS routes are not in yet warms (the old version, if any, keeps
    /// serving) until `promote_warm` finds them.
    pub fn add_or_update(&self, spec: ListenerSpec, added_via_api: bool, version_info: &str) -> Result<(), String> {
        let mut state = self.lock();
        if state.draining {
            return Err("the server is draining".to_owned());
        }
        let name = spec.name.clone();
        if let Some(previous) = state.active.get(&name) {
            if !previous.added_via_api && added_via_api {
                return Err(format!("listener '{name}': a static listener cannot be updated by LDS"));
            }
            if previous.runtime.spec.proto == spec.proto {
                state.warming.remove(&name);
                return Ok(());
            }
        }
        if state.warming.get(&name).is_some_and(|w| w.runtime.spec.proto == spec.proto) {
            return Ok(());
        }
        let runtime = Arc::new(
            ListenerRuntime::new(spec, &self.store, self.clusters.clone(), &self.rds, self.workers.len())
                .map_err(|e| format!("listener '{name}': {e}"))?,
        );
        if runtime.http_chains().next().is_some() {
            self.http_configured.store(true, Ordering::Relaxed);
        }
        if !runtime.is_ready() {
            state
                .warming
                .insert(name, WarmingListener { runtime, added_via_api, version_info: version_info.to_owned() });
            return Ok(());
        }
        state.warming.remove(&name);
        self.start(&mut state, runtime, added_via_api, version_info)
    }

    /// Starts listeners whose routes have arrived.
    pub fn promote_warm(&self) -> Result<(), String> {
        let mut state = self.lock();
        let ready: Vec<String> =
            state.warming.iter().filter(|(_, w)| w.runtime.is_ready()).map(|(n, _)| n.clone()).collect();
        let mut errors = Vec::new();
        for name in ready {
            if let Some(warm) = state.warming.remove(&name)
                && let Err(e) = self.start(&mut state, warm.runtime, warm.added_via_api, &warm.version_info)
            {
                errors.push(e);
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }

    /// Whether a listener waits for its routes.
    pub fn is_warming(&self) -> bool {
        !self.lock().warming.is_empty()
    }

    /// Binds a listener on every worker and drains the version it replaces.
    fn start(
        &self,
        state: &mut State,
        runtime: Arc<ListenerRuntime>,
        added_via_api: bool,
        version_info: &str,
    ) -> Result<(), String> {
        let name = runtime.spec.name.clone();
        let previous = state.active.get(&name).cloned();
        // An update on the same address takes over the old version's sockets, as Envoy
        // does: connections waiting in the accept queue are served by the new version
        // instead of being reset when the old one closes its sockets.
        let (sockets, bound) = match &previous {
            Some(p) if p.runtime.spec.address == runtime.spec.address => (p.sockets.clone(), p.bound),
            _ => {
                let address = runtime.spec.address;
                let first =
                    bind_reuseport(address).map_err(|e| format!("listener '{name}': cannot bind {address}: {e}"))?;
                let bound = first.local_addr().map_err(|e| e.to_string())?;
                let mut sockets = vec![first];
                for _ in 1..self.workers.len() {
                    sockets.push(
                        bind_reuseport(bound).map_err(|e| format!("listener '{name}': cannot bind {bound}: {e}"))?,
                    );
                }
                (Arc::new(sockets), bound)
            }
        };
        let (drain, drain_rx) = watch::channel(false);
        for (worker, socket) in self.workers.iter().zip(sockets.iter()) {
            let socket = socket.try_clone().map_err(|e| format!("listener '{name}': {e}"))?;
            let _ = worker.send(WorkerCommand::Serve { socket, listener: runtime.clone(), drain: drain_rx.clone() });
        }
        let active = ActiveListener {
            runtime,
            bound,
            added_via_api,
            version_info: version_info.to_owned(),
            last_updated: SystemTime::now(),
            drain: Arc::new(drain),
            sockets,
        };
        match state.active.insert(name.clone(), active) {
            Some(old) => {
                self.stats.listener_modified.inc();
                self.drain(old);
            }
            None => {
                self.stats.listener_added.inc();
                state.order.push(name);
            }
        }
        self.stats.total_listeners_active.set(state.active.len() as i64);
        Ok(())
    }

    /// State-of-the-world LDS: applies every valid listener, removes dynamic listeners
    /// not named, and reports the invalid ones.
    pub fn apply_lds(&self, version_info: &str, resources: Vec<ListenerProto>) -> Result<(), Rejected> {
        let mut errors = Rejected::default();
        let mut named = BTreeSet::new();
        for proto in &resources {
            named.insert(proto.name.clone());
            let result = ListenerSpec::from_proto(proto, "", &self.sources)
                .map_err(|e| format!("listener '{}': {e}", proto.name))
                .and_then(|spec| self.add_or_update(spec, true, version_info));
            if let Err(e) = result {
                errors.push(&proto.name, e);
            }
        }
        let removed: Vec<String> = {
            let state = self.lock();
            state
                .active
                .iter()
                .filter(|(n, l)| l.added_via_api && !named.contains(*n))
                .map(|(n, _)| n.clone())
                .collect()
        };
        for name in removed {
            self.remove(&name);
        }
        errors.into_result()
    }

    /// Removes a listener, draining it.
    pub fn remove(&self, name: &str) {
        let mut state = self.lock();
        state.warming.remove(name);
        if let Some(old) = state.active.remove(name) {
            state.order.retain(|n| n != name);
            self.stats.listener_removed.inc();
            self.stats.total_listeners_active.set(state.active.len() as i64);
            self.drain(old);
        }
    }

    fn drain(&self, listener: ActiveListener) {
        listener.drain.send_replace(true);
    }

    /// Drains every listener and refuses new ones (server shutdown).
    pub fn drain_all(&self) {
        let mut state = self.lock();
        state.draining = true;
        for listener in state.active.values() {
            listener.drain.send_replace(true);
        }
    }

    /// The active listeners in the order they were added.
    pub fn active(&self) -> Vec<ActiveListener> {
        let state = self.lock();
        state.order.iter().filter_map(|n| state.active.get(n).cloned()).collect()
    }

    /// The bound address of listener `name`.
    pub fn address(&self, name: &str) -> Option<SocketAddr> {
        self.lock().active.get(name).map(|l| l.bound)
    }
}
