//! The upstream thread, `legate-upstream`: the cluster manager's timers and the work it is
//! handed from workers. It resolves DNS clusters' names on their schedules and runs outlier
//! detection (ejections reported by workers, each detector's interval) and the sessions of
//! active health checking. Everything it changes goes through the cluster manager, which
//! publishes rebuilt clusters.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::dns::{self, Resolvers, Watch};
use super::health_check::HealthChecker;
use super::host::Host;
use super::manager::ClusterManager;
use super::outlier::{self, Detector, Ejection};
use crate::config::cluster::DnsDiscovery;

/// Work for the upstream thread.
pub enum Task {
    /// Resolve a DNS cluster's names on its schedule.
    Resolve(Watch),
    /// Run a new detector's interval until its cluster no longer has it.
    OutlierInterval(Arc<Detector>),
    /// A worker saw a run of consecutive failures at `host`.
    OutlierConsecutive(Arc<Detector>, Arc<Host>, Ejection),
    /// Start checking a host the checker now has.
    HealthCheck(Arc<HealthChecker>, Arc<Host>),
    /// The server is gone: stop every timer and session.
    Stop,
}

/// Hands work to the upstream thread; cloned into the cluster manager and detectors.
#[derive(Clone)]
pub struct UpstreamTasks(mpsc::UnboundedSender<Task>);

impl UpstreamTasks {
    /// A handle, and the receiver [`start`] serves it from.
    pub fn new() -> (UpstreamTasks, mpsc::UnboundedReceiver<Task>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (UpstreamTasks(tx), rx)
    }

    /// Resolves `cluster`'s names now and then on its schedule, replacing any earlier
    /// schedule for the name.
    pub fn watch_dns(&self, cluster: &str, discovery: &Arc<DnsDiscovery>) {
        self.send(Task::Resolve(Watch { cluster: cluster.to_owned(), discovery: discovery.clone() }));
    }

    /// Runs `detector`'s interval.
    pub fn outlier_interval(&self, detector: &Arc<Detector>) {
        self.send(Task::OutlierInterval(detector.clone()));
    }

    /// Reports a run of consecutive failures for the detector to act on.
    pub fn outlier_consecutive(&self, detector: &Arc<Detector>, host: &Arc<Host>, kind: Ejection) {
        self.send(Task::OutlierConsecutive(detector.clone(), host.clone(), kind));
    }

    /// Starts checking `host`.
    pub fn health_check(&self, checker: &Arc<HealthChecker>, host: &Arc<Host>) {
        self.send(Task::HealthCheck(checker.clone(), host.clone()));
    }

    /// Ends the upstream thread.
    pub fn stop(&self) {
        self.send(Task::Stop);
    }

    fn send(&self, task: Task) {
        // The thread lives as long as the process; a send can only fail during shutdown.
        let _ = self.0.send(task);
    }
}

/// Starts the upstream thread, which serves `tasks` for `manager`.
pub fn start(manager: Weak<ClusterManager>, mut tasks: mpsc::UnboundedReceiver<Task>) -> std::io::Result<()> {
    std::thread::Builder::new().name("legate-upstream".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the upstream runtime");
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let resolvers = Rc::new(Resolvers::default());
            let mut schedules: HashMap<String, AbortHandle> = HashMap::new();
            while let Some(task) = tasks.recv().await {
                match task {
                    Task::Resolve(Watch { cluster, discovery }) => {
                        let refresh = dns::refresh(manager.clone(), resolvers.clone(), cluster.clone(), discovery);
                        let task = tokio::task::spawn_local(refresh);
                        if let Some(previous) = schedules.insert(cluster, task.abort_handle()) {
                            previous.abort();
                        }
                        schedules.retain(|_, task| !task.is_finished());
                    }
                    Task::OutlierInterval(detector) => {
                        tokio::task::spawn_local(outlier::run_interval(manager.clone(), detector));
                    }
                    Task::OutlierConsecutive(detector, host, kind) => {
                        if let Some(manager) = manager.upgrade() {
                            manager.outlier_consecutive(&detector, &host, kind);
                        }
                    }
                    Task::HealthCheck(checker, host) => checker.run(manager.clone(), &host),
                    Task::Stop => break,
                }
            }
        });
    })?;
    Ok(())
}
