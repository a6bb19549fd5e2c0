//! The cluster manager: the only writer of cluster state. It publishes an immutable
//! `ClusterSnapshot` through one `ArcSwap`, so a request loads one consistent view with a
//! single atomic read and never locks. Updates (CDS, EDS) are converted and validated
//! before the writer lock is taken, and a batch is published at once.
//!
//! Warming follows Envoy: a new or changed EDS cluster stays out of the snapshot (the old
//! version keeps serving) until its first `ClusterLoadAssignment` is in, and a cluster with
//! a new health checker until each of its hosts had its first check; then it swaps in
//! atomically. Static clusters cannot be changed or removed by CDS.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::protobuf::Any;
use fnv::FnvHashMap;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Rejected;
use crate::config::cluster::{Assignment, ClusterSpec, Discovery, DnsDiscovery, HostSpec, assignment};
use crate::config::proto::Encoded;
use crate::config::xds::XdsSources;
use crate::stats::{Counter, Gauge, Store};
use crate::xds::{CLUSTER_TYPE, ENDPOINT_TYPE, decode_each};

use super::cluster::{Cluster, ClusterContext};
use super::health_check::HealthChecker;
use super::host::{Host, health_flag};
use super::outlier::{self, Detector, Ejection};
use super::tasks::UpstreamTasks;

/// Every active cluster, by name.
#[derive(Default)]
pub struct ClusterSnapshot {
    /// FNV, not SipHash: looked up on every request, keyed by names from the config and
    /// the control plane, which are trusted.
    pub clusters: FnvHashMap<String, Arc<Cluster>>,
    /// Increases with every publish, so workers notice removed clusters cheaply.
    pub generation: u64,
}

impl ClusterSnapshot {
    /// The cluster named `name`, if active.
    pub fn get(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }
}

/// A cluster that waits: added or changed by CDS, or static, before its endpoints are in (a
/// DNS cluster's first resolution) or their first health checks done.
struct WarmingCluster {
    waiting: Waiting,
    /// Shared by every cluster of the same CDS update.
    version_info: Arc<str>,
    since: SystemTime,
    added_via_api: bool,
}

/// What a warming cluster waits for.
enum Waiting {
    Endpoints(Box<ClusterSpec>),
    /// Built, with its health checker running the first checks.
    HealthChecks(Arc<Cluster>),
}

impl WarmingCluster {
    /// What it waits for, shown by `/clusters` so a stuck cluster explains itself.
    fn reason(&self) -> String {
        if let Waiting::HealthChecks(cluster) = &self.waiting {
            let left = cluster.health.as_ref().map_or(0, |checker| checker.first_round_left());
            return format!("waiting for the first health check of {left} of its {} hosts", cluster.hosts.len());
        }
        match self.discovery() {
            Discovery::Eds { service_name, .. } => {
                format!("waiting for the first ClusterLoadAssignment '{service_name}' from EDS")
            }
            Discovery::Dns(dns) => {
                let names: Vec<&str> = dns.targets.iter().map(|t| t.name.as_str()).collect();
                format!("waiting for the first DNS resolution of {}", names.join(", "))
            }
            Discovery::Static => String::new(),
        }
    }

    fn discovery(&self) -> &Discovery {
        match &self.waiting {
            Waiting::Endpoints(spec) => &spec.discovery,
            Waiting::HealthChecks(cluster) => &cluster.discovery,
        }
    }

    fn proto(&self) -> &Encoded<ClusterProto> {
        match &self.waiting {
            Waiting::Endpoints(spec) => &spec.proto,
            Waiting::HealthChecks(cluster) => &cluster.proto,
        }
    }

    /// The spec to build the cluster from, the version built so far (the one waiting for
    /// its health checks, whose checker and hosts a rebuild keeps) and when it was added.
    fn into_parts(self) -> (ClusterSpec, Option<Arc<Cluster>>, Warm) {
        let warm = Warm { version_info: self.version_info, since: self.since, added_via_api: self.added_via_api };
        match self.waiting {
            Waiting::Endpoints(spec) => (*spec, None, warm),
            Waiting::HealthChecks(cluster) => (cluster.spec(), Some(cluster), warm),
        }
    }
}

/// Which dynamic clusters a CDS update removes.
pub enum CdsRemoval<'a> {
    /// State of the world: every dynamic cluster the update does not name.
    Unnamed,
    /// Delta: the named ones.
    Named(&'a [String]),
}

/// When and at which version a dynamic cluster was last accepted.
#[derive(Clone)]
pub struct DynamicInfo {
    /// Shared by every cluster of the same CDS update.
    pub version_info: Arc<str>,
    pub last_updated: SystemTime,
}

/// The writer's state; only the control thread takes this lock.
#[derive(Default)]
struct State {
    active: FnvHashMap<String, Arc<Cluster>>,
    warming: HashMap<String, WarmingCluster>,
    dynamic: HashMap<String, DynamicInfo>,
    /// The last accepted assignment of each EDS service name, kept encoded: it is read
    /// again only when a cluster using it is re-created.
    assignments: HashMap<String, Encoded<ClusterLoadAssignment>>,
}

/// `cluster_manager.*` stats, and the `cds.` subscription's.
struct ManagerStats {
    cluster_added: Counter,
    cluster_modified: Counter,
    cluster_removed: Counter,
    active_clusters: Gauge,
    warming_clusters: Gauge,
}

/// Owns cluster state and publishes snapshots.
pub struct ClusterManager {
    snapshot: ArcSwap<ClusterSnapshot>,
    /// The stats store and the upstream thread (DNS, outlier detection).
    context: ClusterContext,
    state: Mutex<State>,
    stats: ManagerStats,
    /// True once the initial CDS round (and its clusters' warming) is done or timed out.
    initialized: watch::Sender<bool>,
    /// The management servers CDS clusters may name for EDS.
    sources: XdsSources,
    /// Bumped when a cluster finishes warming outside an xDS update (its first DNS
    /// resolution or health checks), so the xDS client can take initialization further.
    settled: watch::Sender<u64>,
}

impl ClusterManager {
    /// Builds the static clusters of the bootstrap. `wait_for_cds` holds initialization
    /// until the first CDS round is applied.
    pub fn new(
        store: &Store,
        static_clusters: Vec<ClusterSpec>,
        wait_for_cds: bool,
        sources: XdsSources,
        tasks: UpstreamTasks,
    ) -> ClusterManager {
        let stats = ManagerStats {
            cluster_added: store.counter("cluster_manager.cluster_added"),
            cluster_modified: store.counter("cluster_manager.cluster_modified"),
            cluster_removed: store.counter("cluster_manager.cluster_removed"),
            active_clusters: store.gauge("cluster_manager.active_clusters"),
            warming_clusters: store.gauge("cluster_manager.warming_clusters"),
        };
        for name in ["cluster_updated", "update_out_of_merge_window", "update_merge_cancelled"] {
            store.counter(&format!("cluster_manager.{name}"));
        }
        let context = ClusterContext { store: store.clone(), tasks };
        let mut state = State::default();
        for mut spec in static_clusters {
            let name = spec.name.clone();
            // A DNS cluster warms until its names are first resolved, as in Envoy.
            if let Discovery::Dns(discovery) = &spec.discovery {
                context.tasks.watch_dns(&name, discovery);
                let since = SystemTime::now();
                let warming = WarmingCluster {
                    waiting: Waiting::Endpoints(Box::new(spec)),
                    version_info: "".into(),
                    since,
                    added_via_api: false,
                };
                state.warming.insert(name, warming);
                continue;
            }
            let assignment = std::mem::take(&mut spec.assignment);
            let cluster = Cluster::new(spec, &assignment, None, &context, false);
            place(
                &mut state,
                cluster,
                Warm { version_info: "".into(), since: SystemTime::now(), added_via_api: false },
            );
        }
        stats.cluster_added.add(state.active.len() as u64);
        let manager = ClusterManager {
            snapshot: ArcSwap::from_pointee(ClusterSnapshot::default()),
            context,
            state: Mutex::new(State::default()),
            stats,
            initialized: watch::Sender::new(!wait_for_cds),
            sources,
            settled: watch::Sender::new(0),
        };
        manager.publish(&mut state);
        *manager.lock() = state;
        manager
    }

    /// The current snapshot (one atomic load; cheap enough for every request).
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<ClusterSnapshot>> {
        self.snapshot.load()
    }

    /// The stats store clusters register in.
    pub fn store(&self) -> &Store {
        &self.context.store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each update is applied to a local copy of what it changes and published whole,
        // so a panic mid-update cannot leave half a state behind.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the initial CDS round is applied (or gave up).
    pub fn initialized(&self) -> watch::Receiver<bool> {
        self.initialized.subscribe()
    }

    /// Whether initialization is over.
    pub fn is_initialized(&self) -> bool {
        *self.initialized.borrow()
    }

    /// Stops the upstream thread: DNS refreshes, outlier detection and health checks.
    pub fn stop_upstream_tasks(&self) {
        self.context.tasks.stop();
    }

    /// Changes whenever a cluster finished warming outside an xDS update.
    pub fn settled(&self) -> watch::Receiver<u64> {
        self.settled.subscribe()
    }

    /// Ends initialization (first CDS round applied and warm, or its fetch timed out).
    pub fn mark_initialized(&self) {
        self.initialized.send_replace(true);
    }

    /// Applies a CDS update: the clusters in `resources` are added or updated, and
    /// `removal` says which go. Valid clusters apply even when others in the same update
    /// are invalid (as Envoy does); the error lists the invalid ones, for the NACK.
    pub fn apply_cds(&self, version_info: &str, resources: &[Any], removal: CdsRemoval<'_>) -> Result<(), Rejected> {
        let mut errors = Rejected::default();
        let mut specs = Vec::with_capacity(resources.len());
        let mut named = BTreeSet::new();
        decode_each(resources, CLUSTER_TYPE, |proto: ClusterProto, bytes| {
            match ClusterSpec::from_proto_encoded(&proto, Encoded::from_decoded(bytes), "", &self.sources) {
                Ok(spec) => specs.push(spec),
                Err(e) => errors.push(&proto.name, format!("cluster '{}': {e}", proto.name)),
            }
            named.insert(proto.name);
        })?;
        let version_info: Arc<str> = version_info.into();
        let now = SystemTime::now();
        let mut state = self.lock();
        // SotW: dynamic clusters missing from the update are removed. A cluster whose new
        // version is invalid is still named, and keeps its old version. Static clusters are
        // never in `dynamic`, so neither mode can remove them.
        let removed: Vec<String> = match removal {
            CdsRemoval::Unnamed => state.dynamic.keys().filter(|name| !named.contains(*name)).cloned().collect(),
            CdsRemoval::Named(names) => {
                names.iter().filter(|name| state.dynamic.contains_key(*name)).cloned().collect()
            }
        };
        for name in removed {
            state.dynamic.remove(&name);
            state.warming.remove(&name);
            if let Some(old) = state.active.remove(&name) {
                self.stats.cluster_removed.inc();
                self.context.store.remove_prefix(&format!("cluster.{}.", old.stat_name));
            }
        }
        for spec in specs {
            let name = spec.name.clone();
            if state.active.get(&name).is_some_and(|c| !c.added_via_api)
                || state.warming.get(&name).is_some_and(|w| !w.added_via_api)
            {
                errors.push(&name, format!("cluster '{name}': a static cluster cannot be added or updated by CDS"));
                continue;
            }
            let unchanged = state.active.get(&name).is_some_and(|c| c.proto.same_message(&spec.proto))
                || state.warming.get(&name).is_some_and(|w| w.proto().same_message(&spec.proto));
            if unchanged {
                continue;
            }
            state.dynamic.insert(name.clone(), DynamicInfo { version_info: version_info.clone(), last_updated: now });
            let ready = match &spec.discovery {
                Discovery::Static => Some(spec.assignment.clone()),
                Discovery::Eds { service_name, .. } => {
                    state.assignments.get(service_name).and_then(|la| assignment(&la.decode(), "").ok())
                }
                Discovery::Dns(discovery) => {
                    self.context.tasks.watch_dns(&name, discovery);
                    None
                }
            };
            let warm = Warm { version_info: version_info.clone(), since: now, added_via_api: true };
            match ready {
                Some(assigned) => {
                    state.warming.remove(&name);
                    self.activate(&mut state, spec, &assigned, warm, None);
                }
                None => {
                    let Warm { version_info, since, added_via_api } = warm;
                    let warming = WarmingCluster {
                        waiting: Waiting::Endpoints(Box::new(spec)),
                        version_info,
                        since,
                        added_via_api,
                    };
                    state.warming.insert(name, warming);
                }
            }
        }
        self.publish(&mut state);
        errors.into_result()
    }

    /// Applies EDS assignments: warming clusters that waited for them go active, active
    /// ones get the new hosts (keeping unchanged hosts and their pools).
    pub fn apply_eds(&self, resources: &[Any]) -> Result<(), Rejected> {
        let mut errors = Rejected::default();
        let mut valid = Vec::with_capacity(resources.len());
        decode_each(resources, ENDPOINT_TYPE, |la: ClusterLoadAssignment, bytes| match assignment(&la, "") {
            Ok(parsed) => valid.push((la.cluster_name, Encoded::from_decoded(bytes), parsed)),
            Err(e) => errors.push(&la.cluster_name, format!("ClusterLoadAssignment '{}': {e}", la.cluster_name)),
        })?;
        let mut state = self.lock();
        // Which clusters use which service, indexed once per update (not per assignment:
        // a 10 000-cluster update would otherwise scan every cluster for every assignment).
        let mut waiting_by_service: HashMap<String, Vec<String>> = HashMap::new();
        for (name, warm) in &state.warming {
            if let Discovery::Eds { service_name, .. } = warm.discovery() {
                waiting_by_service.entry(service_name.clone()).or_default().push(name.clone());
            }
        }
        let mut active_by_service: HashMap<String, Vec<Arc<Cluster>>> = HashMap::new();
        for cluster in state.active.values() {
            if let Some(service) = cluster.eds_service_name() {
                active_by_service.entry(service.to_owned()).or_default().push(cluster.clone());
            }
        }
        for (service, _) in &errors.0 {
            for cluster in active_by_service.get(service).into_iter().flatten() {
                cluster.stats.update_attempt.inc();
                cluster.stats.update_rejected.inc();
            }
        }
        for (service, encoded, assigned) in valid {
            state.assignments.insert(service.clone(), encoded);
            let mut updated = Vec::new();
            for name in waiting_by_service.remove(&service).unwrap_or_default() {
                if let Some(warm) = state.warming.remove(&name) {
                    let (spec, built, warm) = warm.into_parts();
                    self.activate(&mut state, spec, &assigned, warm, built);
                    updated.push(name);
                }
            }
            for cluster in active_by_service.remove(&service).unwrap_or_default() {
                let spec = cluster.spec();
                let rebuilt = Cluster::new(spec, &assigned, Some(&cluster), &self.context, cluster.added_via_api);
                rebuilt.stats.membership_change.inc();
                state.active.insert(cluster.name.clone(), Arc::new(rebuilt));
                updated.push(cluster.name.clone());
            }
            for cluster in updated.iter().filter_map(|name| state.active.get(name)) {
                cluster.stats.update_attempt.inc();
                cluster.stats.update_success.inc();
                if assigned.hosts.is_empty() {
                    cluster.stats.update_empty.inc();
                }
            }
        }
        self.publish(&mut state);
        errors.into_result()
    }

    /// Applies a DNS cluster's resolved hosts (`resolved`: every name resolved this round; a
    /// failed name keeps its earlier addresses): the cluster goes active after its first
    /// round, success or not, and is rebuilt when its hosts change. `false` when the cluster
    /// no longer has this discovery (changed or removed), which ends its schedule.
    pub fn apply_dns(&self, name: &str, discovery: &Arc<DnsDiscovery>, hosts: Vec<HostSpec>, resolved: bool) -> bool {
        let ours =
            |spec_discovery: &Discovery| matches!(spec_discovery, Discovery::Dns(d) if Arc::ptr_eq(d, discovery));
        let mut state = self.lock();
        let assigned = Assignment { hosts, overprovisioning_factor: discovery.overprovisioning_factor };
        if state.warming.get(name).is_some_and(|w| ours(w.discovery())) {
            let (spec, built, warm) = state.warming.remove(name).expect("checked above").into_parts();
            self.activate(&mut state, spec, &assigned, warm, built);
            if state.active.contains_key(name) {
                self.settled.send_modify(|n| *n += 1);
            }
        } else if let Some(cluster) = state.active.get(name).filter(|c| ours(&c.discovery)).cloned() {
            // Hosts kept only for their passing health checks are not the resolution's.
            let resolved: Vec<&Arc<Host>> =
                cluster.hosts.iter().filter(|h| h.health_flags() & health_flag::PENDING_DYNAMIC_REMOVAL == 0).collect();
            let same = resolved.len() == assigned.hosts.len()
                && resolved.iter().zip(&assigned.hosts).all(|(host, spec)| host.is_same_endpoint(spec));
            if !same {
                let rebuilt =
                    Cluster::new(cluster.spec(), &assigned, Some(&cluster), &self.context, cluster.added_via_api);
                rebuilt.stats.membership_change.inc();
                state.active.insert(name.to_owned(), Arc::new(rebuilt));
            }
        } else {
            return false;
        }
        if let Some(cluster) = state.active.get(name) {
            cluster.stats.update_attempt.inc();
            if resolved {
                cluster.stats.update_success.inc();
            } else {
                cluster.stats.update_failure.inc();
            }
        }
        self.publish(&mut state);
        true
    }

    /// Acts on a worker's report of consecutive failures at `host`, publishing the
    /// cluster again when the host was ejected.
    pub fn outlier_consecutive(&self, detector: &Arc<Detector>, host: &Arc<Host>, kind: Ejection) {
        self.outlier_update(detector, |cluster, now| {
            outlier::on_consecutive(detector, &cluster.hosts, host, kind, now)
        });
    }

    /// Runs one interval of `detector`; `false` when its cluster no longer has it (changed
    /// or removed), which ends its schedule.
    pub fn outlier_interval(&self, detector: &Arc<Detector>) -> bool {
        self.outlier_update(detector, |cluster, now| outlier::on_interval(detector, &cluster.hosts, now))
    }

    /// Runs `update` on the active cluster `detector` belongs to, under the lock, and
    /// publishes the cluster rebuilt when host health changed. `false` when no active
    /// cluster has the detector.
    fn outlier_update(&self, detector: &Arc<Detector>, update: impl FnOnce(&Cluster, Instant) -> bool) -> bool {
        let mut state = self.lock();
        let Some(cluster) = state.active.get(&detector.cluster) else { return false };
        if !cluster.outlier.as_ref().is_some_and(|d| Arc::ptr_eq(d, detector)) {
            return false;
        }
        if update(cluster, Instant::now()) {
            let rebuilt = Arc::new(cluster.reassessed(&self.context));
            state.active.insert(detector.cluster.clone(), rebuilt);
            self.publish(&mut state);
        }
        true
    }

    /// A cluster's first health checks are done, or a check changed a host's health
    /// (`changed`) or `passed` at a host: a cluster warming on them goes active, an active one
    /// is published rebuilt. A pass returns a host outlier detection ejected, unless the
    /// detector says otherwise (`successful_active_health_check_uneject_host`).
    pub fn health_checked(&self, checker: &Arc<HealthChecker>, changed: bool, passed: Option<&Arc<Host>>) {
        let owned = |cluster: &Cluster| cluster.health.as_ref().is_some_and(|c| Arc::ptr_eq(c, checker));
        let mut state = self.lock();
        let name = &checker.cluster;
        let warming = state
            .warming
            .get(name)
            .is_some_and(|w| matches!(&w.waiting, Waiting::HealthChecks(cluster) if owned(cluster)));
        if warming {
            if !checker.first_round_done() {
                return;
            }
            let (_, built, warm) = state.warming.remove(name).expect("checked above").into_parts();
            let cluster = built.expect("a cluster warming on health checks is built").reassessed(&self.context);
            self.count_activation(&state, name);
            place(&mut state, cluster, warm);
            self.settled.send_modify(|n| *n += 1);
        } else if let Some(cluster) = state.active.get(name).filter(|c| owned(c)) {
            let returned = passed.filter(|host| {
                host.health_flags() & (health_flag::FAILED_OUTLIER_CHECK | health_flag::FAILED_ACTIVE_HC)
                    == health_flag::FAILED_OUTLIER_CHECK
                    && cluster.outlier.as_ref().is_some_and(|d| d.spec.uneject_on_health_check)
            });
            if let Some(host) = returned {
                outlier::uneject(host, Instant::now());
            } else if !changed {
                return;
            }
            let rebuilt = Arc::new(cluster.reassessed(&self.context));
            state.active.insert(name.clone(), rebuilt);
        } else {
            return;
        }
        self.publish(&mut state);
    }

    /// Builds a cluster from `spec` and its hosts, over the version `built` so far (one
    /// waiting for its health checks) or the active one, and makes it active unless it must
    /// wait for its health checks.
    fn activate(
        &self,
        state: &mut State,
        spec: ClusterSpec,
        assignment: &Assignment,
        warm: Warm,
        built: Option<Arc<Cluster>>,
    ) {
        let previous = built.or_else(|| state.active.get(&spec.name).cloned());
        let cluster = Cluster::new(spec, assignment, previous.as_deref(), &self.context, warm.added_via_api);
        if !waits_for_health_checks(&cluster) {
            self.count_activation(state, &cluster.name);
        }
        place(state, cluster, warm);
    }

    fn count_activation(&self, state: &State, name: &str) {
        if state.active.contains_key(name) {
            self.stats.cluster_modified.inc();
        } else {
            self.stats.cluster_added.inc();
        }
    }

    /// The EDS service names the active and warming clusters need.
    pub fn eds_service_names(&self) -> BTreeSet<String> {
        let state = self.lock();
        let warming = state.warming.values().filter_map(|w| match w.discovery() {
            Discovery::Eds { service_name, .. } => Some(service_name.clone()),
            Discovery::Static | Discovery::Dns(_) => None,
        });
        state.active.values().filter_map(|c| c.eds_service_name().map(str::to_owned)).chain(warming).collect()
    }

    /// Whether any cluster is still warming.
    pub fn is_warming(&self) -> bool {
        !self.lock().warming.is_empty()
    }

    /// Warming clusters: name, version, since when and why.
    pub fn warming(&self) -> Vec<(String, String, SystemTime, String)> {
        let state = self.lock();
        let mut out: Vec<_> = state
            .warming
            .iter()
            .map(|(name, w)| (name.clone(), w.version_info.to_string(), w.since, w.reason()))
            .collect();
        out.sort();
        out
    }

    /// Version and update time of a dynamic cluster.
    pub fn dynamic_info(&self, name: &str) -> Option<DynamicInfo> {
        self.lock().dynamic.get(name).cloned()
    }

    /// The warming cluster's proto, for `/config_dump`'s `dynamic_warming_clusters`.
    pub fn warming_protos(&self) -> Vec<(String, ClusterProto, SystemTime)> {
        let state = self.lock();
        // A static DNS cluster warming for its first resolution is no dynamic cluster.
        let mut out: Vec<_> = state
            .warming
            .values()
            .filter(|w| w.added_via_api)
            .map(|w| (w.version_info.to_string(), w.proto().decode(), w.since))
            .collect();
        out.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        out
    }

    fn publish(&self, state: &mut State) {
        // A map keeps its table when emptied: after 10 000 clusters warmed, tens of MiB.
        if state.warming.is_empty() {
            state.warming.shrink_to_fit();
        }
        self.stats.active_clusters.set(state.active.len() as i64);
        self.stats.warming_clusters.set(state.warming.len() as i64);
        let generation = self.snapshot.load().generation + 1;
        self.snapshot.store(Arc::new(ClusterSnapshot { clusters: state.active.clone(), generation }));
    }
}

/// When and how a cluster was added, kept while it warms.
struct Warm {
    version_info: Arc<str>,
    since: SystemTime,
    added_via_api: bool,
}

fn waits_for_health_checks(cluster: &Cluster) -> bool {
    cluster.health.as_ref().is_some_and(|checker| !checker.first_round_done())
}

/// Makes `cluster` active, or keeps it warming while its health checker's first checks run.
fn place(state: &mut State, cluster: Cluster, warm: Warm) {
    let name = cluster.name.clone();
    if waits_for_health_checks(&cluster) {
        let Warm { version_info, since, added_via_api } = warm;
        let waiting = Waiting::HealthChecks(Arc::new(cluster));
        state.warming.insert(name, WarmingCluster { waiting, version_info, since, added_via_api });
    } else {
        state.active.insert(name, Arc::new(cluster));
    }
}
