//! The cluster manager and everything behind it: clusters, hosts and their health,
//! load balancing and the per-worker connection pools. The cluster manager is the only
//! writer of cluster state; workers read published snapshots.

pub mod cluster;
pub mod consistent_hash;
pub mod dns;
mod h1_client;
pub mod health_check;
pub mod host;
pub mod lb;
pub mod manager;
pub mod outlier;
pub mod pool;
pub mod tasks;

pub use cluster::Cluster;
pub use host::Host;
pub use manager::{CdsRemoval, ClusterManager, ClusterSnapshot};
