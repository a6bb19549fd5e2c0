//! The cluster manager: the only writer of cluster state. It publishes an immutable
//! `ClusterSnapshot` through one `ArcSwap`, so a request loads one consistent view with a
//! single atomic read and never locks.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::cluster::ClusterSpec;
use crate::stats::Store;

use super::cluster::Cluster;

/// Every active cluster, by name.
#[derive(Default)]
pub struct ClusterSnapshot {
    pub clusters: HashMap<String, Arc<Cluster>>,
}

impl ClusterSnapshot {
    /// The cluster named `name`, if active.
    pub fn get(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }
}

/// Owns cluster state and publishes snapshots.
pub struct ClusterManager {
    snapshot: ArcSwap<ClusterSnapshot>,
    store: Store,
}

impl ClusterManager {
    /// Builds the static clusters of the bootstrap.
    pub fn new(store: &Store, static_clusters: Vec<ClusterSpec>) -> ClusterManager {
        let added = store.counter("cluster_manager.cluster_added");
        let active_clusters = store.gauge("cluster_manager.active_clusters");
        store.gauge("cluster_manager.warming_clusters").set(0);
        for name in [
            "cluster_modified",
            "cluster_removed",
            "cluster_updated",
            "update_out_of_merge_window",
            "update_merge_cancelled",
        ] {
            store.counter(&format!("cluster_manager.{name}"));
        }
        let clusters: HashMap<String, Arc<Cluster>> = static_clusters
            .into_iter()
            .map(|spec| (spec.name.clone(), Arc::new(Cluster::new(spec, store, false))))
            .collect();
        added.add(clusters.len() as u64);
        active_clusters.set(clusters.len() as i64);
        ClusterManager { snapshot: ArcSwap::from_pointee(ClusterSnapshot { clusters }), store: store.clone() }
    }

    /// The current snapshot (one atomic load; cheap enough for every request).
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<ClusterSnapshot>> {
        self.snapshot.load()
    }

    /// The stats store clusters register in.
    pub fn store(&self) -> &Store {
        &self.store
    }
}
