//! A host: one upstream endpoint of a cluster, with health flags and per-host counters
//! that live in atomics, so they survive cluster rebuilds and need no lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::config::core::v3::HealthStatus;

use super::outlier::HostMonitor;
use crate::config::cluster::{HostLocality, HostSpec};

/// Health flags, as Envoy names them in `/clusters`.
pub mod health_flag {
    /// `/failed_active_hc`: failed active health checking.
    pub const FAILED_ACTIVE_HC: u32 = 1 << 0;
    /// `/failed_outlier_check`: ejected by outlier detection.
    pub const FAILED_OUTLIER_CHECK: u32 = 1 << 1;
    /// `/failed_eds_health`: the control plane (or static config) says unhealthy.
    pub const FAILED_EDS_HEALTH: u32 = 1 << 2;
    /// `/degraded_eds_health`: the control plane says degraded.
    pub const DEGRADED_EDS_HEALTH: u32 = 1 << 3;
    /// `/pending_dynamic_removal`.
    pub const PENDING_DYNAMIC_REMOVAL: u32 = 1 << 4;
    /// `/eds_status_draining`.
    pub const EDS_STATUS_DRAINING: u32 = 1 << 5;
    /// `/degraded_active_hc`: active health checking says degraded (`x-envoy-degraded`).
    pub const DEGRADED_ACTIVE_HC: u32 = 1 << 6;
    /// `/active_hc_timeout`: failed active health checking by timing out.
    pub const ACTIVE_HC_TIMEOUT: u32 = 1 << 7;
}

/// Per-host counters shown by `/clusters`.
#[derive(Debug, Default)]
pub struct HostStats {
    pub cx_active: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    pub cx_total: AtomicU64,
    pub rq_active: AtomicU64,
    pub rq_error: AtomicU64,
    /// Requests waiting for a new connection to this host.
    pub rq_pending_active: AtomicU64,
    pub rq_success: AtomicU64,
    pub rq_timeout: AtomicU64,
    pub rq_total: AtomicU64,
}

/// One upstream endpoint.
#[derive(Debug)]
pub struct Host {
    pub address: SocketAddr,
    pub hostname: String,
    pub weight: u32,
    pub priority: u32,
    pub locality: Arc<HostLocality>,
    health: AtomicU32,
    pub stats: HostStats,
    /// Outlier detection's state, made when a cluster with a detector first uses it (most
    /// hosts never have one).
    outlier: OnceLock<Box<HostMonitor>>,
}

impl Host {
    /// A host from its spec, with health flags from the configured health status.
    pub fn new(spec: &HostSpec) -> Host {
        let health = eds_flags(spec.health_status);
        Host {
            address: spec.address,
            hostname: spec.hostname.clone(),
            weight: spec.weight,
            priority: spec.priority,
            locality: spec.locality.clone(),
            health: AtomicU32::new(health),
            stats: HostStats::default(),
            outlier: OnceLock::new(),
        }
    }

    /// Whether this host is the endpoint `spec` describes, apart from its health, so a
    /// rebuilt cluster keeps the same `Host` (its pools and counters) for it.
    pub fn is_same_endpoint(&self, spec: &HostSpec) -> bool {
        self.address == spec.address
            && self.weight == spec.weight
            && self.priority == spec.priority
            && self.hostname == spec.hostname
            && self.locality == spec.locality
    }

    /// Sets the control plane's health verdict, keeping the flags other checkers own.
    pub fn set_eds_health(&self, status: HealthStatus) {
        let eds = eds_flags(status);
        let owned =
            health_flag::FAILED_EDS_HEALTH | health_flag::EDS_STATUS_DRAINING | health_flag::DEGRADED_EDS_HEALTH;
        let _ = self.health.fetch_update(Ordering::AcqRel, Ordering::Acquire, |flags| Some(flags & !owned | eds));
    }

    /// Sets or clears health flags owned by a checker (outlier detection, health checking).
    pub fn set_flag(&self, flag: u32, on: bool) {
        if on {
            self.health.fetch_or(flag, Ordering::AcqRel);
        } else {
            self.health.fetch_and(!flag, Ordering::AcqRel);
        }
    }

    /// The host's outlier detection state.
    pub fn outlier(&self) -> &HostMonitor {
        self.outlier.get_or_init(Box::default)
    }

    /// The host's outlier detection state, if a detector ever used it.
    pub fn outlier_if_any(&self) -> Option<&HostMonitor> {
        self.outlier.get().map(|m| &**m)
    }

    /// Times outlier detection ejected the host.
    pub fn ejections(&self) -> u32 {
        self.outlier_if_any().map_or(0, HostMonitor::ejections)
    }

    /// The current health flags (`health_flag::*`).
    pub fn health_flags(&self) -> u32 {
        self.health.load(Ordering::Acquire)
    }

    /// Whether the load balancer may pick this host outside panic mode. Degraded hosts are
    /// not "healthy" in Envoy's sense but still serve; legate treats them as healthy
    /// until priority/degraded handling lands. A host pending removal serves while it
    /// passes its health checks, as in Envoy.
    pub fn is_healthy(&self) -> bool {
        let serving =
            health_flag::DEGRADED_EDS_HEALTH | health_flag::DEGRADED_ACTIVE_HC | health_flag::PENDING_DYNAMIC_REMOVAL;
        self.health_flags() & !serving == 0
    }

    /// Envoy's `health_flags` text: `healthy` or the `/flag` list.
    pub fn health_flags_text(&self) -> String {
        let flags = self.health_flags();
        if flags == 0 {
            return "healthy".to_owned();
        }
        let names = [
            (health_flag::FAILED_ACTIVE_HC, "/failed_active_hc"),
            (health_flag::FAILED_OUTLIER_CHECK, "/failed_outlier_check"),
            (health_flag::FAILED_EDS_HEALTH, "/failed_eds_health"),
            (health_flag::DEGRADED_ACTIVE_HC, "/degraded_active_hc"),
            (health_flag::DEGRADED_EDS_HEALTH, "/degraded_eds_health"),
            (health_flag::PENDING_DYNAMIC_REMOVAL, "/pending_dynamic_removal"),
            (health_flag::ACTIVE_HC_TIMEOUT, "/active_hc_timeout"),
            (health_flag::EDS_STATUS_DRAINING, "/eds_status_draining"),
        ];
        names.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, name)| *name).collect()
    }
}

/// The health flags an EDS (or static) health status sets.
fn eds_flags(status: HealthStatus) -> u32 {
    match status {
        HealthStatus::Unhealthy | HealthStatus::Timeout => health_flag::FAILED_EDS_HEALTH,
        HealthStatus::Draining => health_flag::EDS_STATUS_DRAINING,
        HealthStatus::Degraded => health_flag::DEGRADED_EDS_HEALTH,
        HealthStatus::Unknown | HealthStatus::Healthy => 0,
    }
}
