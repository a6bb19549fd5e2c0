//! RDS route tables at run time. Every HCM with `rds` holds an `RdsSlot` for its route
//! configuration name; the registry fills all slots of a name when RDS delivers it (each
//! built with its HCM's Host-port rule) and swaps them atomically, so requests read one
//! consistent table without locking.

use std::collections::{BTreeSet, HashMap};
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use crate::config::Rejected;
use crate::config::route::{HostPortMatch, RouteTable};
use crate::stats::{Counter, Store};

/// One HCM's view of an RDS route configuration.
pub struct RdsSlot {
    pub name: String,
    host_port: HostPortMatch,
    table: ArcSwapOption<RouteTable>,
    stats: SlotStats,
}

/// `http.<stat_prefix>.rds.<route_config_name>.*`, Envoy's per-HCM RDS stats.
struct SlotStats {
    update_attempt: Counter,
    update_success: Counter,
    update_rejected: Counter,
    config_reload: Counter,
}

/// An HCM's routes: inline, or from RDS.
pub enum Routes {
    Static(Arc<RouteTable>),
    Rds(Arc<RdsSlot>),
}

/// A route table for one request: borrowed when inline, held when from RDS (which may be
/// swapped while the request runs).
pub enum RoutesRef<'a> {
    Borrowed(&'a RouteTable),
    Held(Arc<RouteTable>),
}

impl Deref for RoutesRef<'_> {
    type Target = RouteTable;

    fn deref(&self) -> &RouteTable {
        match self {
            RoutesRef::Borrowed(table) => table,
            RoutesRef::Held(table) => table,
        }
    }
}

impl Routes {
    /// The table to route a request with; None while RDS has not delivered it.
    pub fn current(&self) -> Option<RoutesRef<'_>> {
        match self {
            Routes::Static(table) => Some(RoutesRef::Borrowed(table)),
            Routes::Rds(slot) => slot.table.load_full().map(RoutesRef::Held),
        }
    }

    /// Whether a table is there (a listener warms until it is).
    pub fn is_ready(&self) -> bool {
        match self {
            Routes::Static(_) => true,
            Routes::Rds(slot) => slot.table.load().is_some(),
        }
    }
}

/// The last accepted version of a route configuration.
#[derive(Clone)]
pub struct RdsConfig {
    pub version_info: String,
    pub proto: Arc<RouteConfiguration>,
    pub last_updated: SystemTime,
}

#[derive(Default)]
struct State {
    slots: HashMap<String, Vec<Weak<RdsSlot>>>,
    configs: HashMap<String, RdsConfig>,
}

/// All RDS slots and the last accepted route configurations.
#[derive(Default)]
pub struct RdsRegistry {
    state: Mutex<State>,
}

impl RdsRegistry {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for `name` for the HCM with `stat_prefix`, filled at once when that
    /// configuration is already known.
    pub fn slot(&self, name: &str, host_port: HostPortMatch, store: &Store, stat_prefix: &str) -> Arc<RdsSlot> {
        let mut state = self.lock();
        let c = |s: &str| store.counter(&format!("http.{stat_prefix}.rds.{name}.{s}"));
        let stats = SlotStats {
            update_attempt: c("update_attempt"),
            update_success: c("update_success"),
            update_rejected: c("update_rejected"),
            config_reload: c("config_reload"),
        };
        let slot = Arc::new(RdsSlot { name: name.to_owned(), host_port, table: ArcSwapOption::empty(), stats });
        if let Some(config) = state.configs.get(name)
            && let Ok(table) = RouteTable::from_proto(&config.proto, host_port)
        {
            slot.table.store(Some(Arc::new(table)));
        }
        state.slots.entry(name.to_owned()).or_default().push(Arc::downgrade(&slot));
        slot
    }

    /// The names some live HCM needs.
    pub fn names(&self) -> BTreeSet<String> {
        let mut state = self.lock();
        state.slots.retain(|_, slots| {
            slots.retain(|s| s.strong_count() > 0);
            !slots.is_empty()
        });
        state.slots.keys().cloned().collect()
    }

    /// Applies route configurations: each valid one replaces its slots' tables; an invalid
    /// one changes nothing and is reported for the NACK.
    pub fn apply(&self, version_info: &str, configs: Vec<RouteConfiguration>) -> Result<(), Rejected> {
        let mut errors = Rejected::default();
        let mut state = self.lock();
        for proto in configs {
            let slots: Vec<Arc<RdsSlot>> =
                state.slots.get(&proto.name).into_iter().flatten().filter_map(Weak::upgrade).collect();
            // Build every table first, so an invalid configuration changes no slot.
            let tables: Result<Vec<RouteTable>, _> = if slots.is_empty() {
                RouteTable::from_proto(&proto, HostPortMatch::Keep).map(|_| Vec::new())
            } else {
                slots.iter().map(|slot| RouteTable::from_proto(&proto, slot.host_port)).collect()
            };
            for slot in &slots {
                slot.stats.update_attempt.inc();
            }
            match tables {
                Ok(tables) => {
                    for (slot, table) in slots.iter().zip(tables) {
                        slot.table.store(Some(Arc::new(table)));
                        slot.stats.update_success.inc();
                        slot.stats.config_reload.inc();
                    }
                    let config = RdsConfig {
                        version_info: version_info.to_owned(),
                        proto: Arc::new(proto),
                        last_updated: SystemTime::now(),
                    };
                    state.configs.insert(config.proto.name.clone(), config);
                }
                Err(e) => {
                    slots.iter().for_each(|slot| slot.stats.update_rejected.inc());
                    errors.push(&proto.name, format!("route configuration '{}': {e}", proto.name));
                }
            }
        }
        errors.into_result()
    }

    /// The accepted route configurations, by name, for `/config_dump`.
    pub fn configs(&self) -> Vec<RdsConfig> {
        let state = self.lock();
        let mut configs: Vec<RdsConfig> = state.configs.values().cloned().collect();
        configs.sort_by(|a, b| a.proto.name.cmp(&b.proto.name));
        configs
    }
}
