//! The stats store: counters, gauges and histograms under Envoy's stat names, rendered as
//! Envoy's admin `/stats`, `/stats?format=json` and `/stats/prometheus` render them.
//!
//! Design: a stat is registered once by name, under a mutex, at config time; the caller
//! keeps the returned handle, and registering the same name again returns the same stat.
//! A handle is an `Arc` to atomics, so the hot path (`inc`, `set`, `record`) takes no lock:
//! one relaxed atomic op, plus a "used" mark written only the first time. Envoy's tag
//! extraction (stat name to Prometheus family and labels, see `tags`) runs once at
//! registration and is cached beside the atomics; the renderers only read. Histograms count
//! into Envoy's default fixed buckets and estimate quantiles from them.
//!
//! Stats that come in fixed sets per object, many objects at a time (a cluster's
//! `cluster.<name>.*`, tens of thousands of clusters under xDS), register as one
//! [`StatGroup`]: a struct of cells under one name prefix, one map entry and one allocation
//! instead of one per stat, and the owner keeps it across rebuilds of the object.
//!
//! Parsing admin query parameters and serving HTTP is left to `admin`.

mod format;
mod metric;
mod tags;
#[cfg(test)]
mod tests;

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use regex::Regex;

use format::Snapshot;
use metric::Stat;
pub use metric::{Counter, CounterCell, Gauge, GaugeCell, Histogram, HistogramCell, HistogramUnit};

/// A fixed set of stats held inline in one struct and registered under one prefix
/// (`cluster.<name>.`); see the module documentation.
pub trait StatGroup: Any + Send + Sync {
    /// Calls `visit` with each member's name after the prefix and its cell.
    fn members(&self, visit: &mut dyn FnMut(&str, Member<'_>));
}

/// One member of a [`StatGroup`].
pub enum Member<'a> {
    Counter(&'a CounterCell),
    Gauge(&'a GaugeCell),
    Histogram(&'a HistogramCell),
}

/// All stats of a legate instance; cloning shares the same store.
#[derive(Debug, Clone, Default)]
pub struct Store {
    registry: Arc<Mutex<Registry>>,
}

/// Stats by full name; one namespace per stat type, as in Envoy.
#[derive(Default)]
struct Registry {
    counters: BTreeMap<String, Arc<Stat<CounterCell>>>,
    gauges: BTreeMap<String, Arc<Stat<GaugeCell>>>,
    histograms: BTreeMap<String, Arc<Stat<HistogramCell>>>,
    /// Groups by prefix (with its trailing dot).
    groups: BTreeMap<Arc<str>, Arc<dyn StatGroup>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("counters", &self.counters.len())
            .field("gauges", &self.gauges.len())
            .field("histograms", &self.histograms.len())
            .field("groups", &self.groups.len())
            .finish()
    }
}

impl Registry {
    /// The group member with full name `name`, if any: a group's prefix ends at a dot.
    fn find_member<T>(&self, name: &str, pick: impl Fn(Member<'_>) -> Option<T>) -> Option<T> {
        let mut found = None;
        for (dot, _) in name.match_indices('.') {
            let Some(group) = self.groups.get(&name[..=dot]) else { continue };
            let suffix = &name[dot + 1..];
            group.members(&mut |member_name, member| {
                if found.is_none() && member_name == suffix {
                    found = pick(member);
                }
            });
        }
        found
    }
}

/// Returns the stat registered under `name`, registering it with `cell` first if needed.
fn get_or_register<C>(map: &mut BTreeMap<String, Arc<Stat<C>>>, name: &str, cell: impl FnOnce() -> C) -> Arc<Stat<C>> {
    if let Some(stat) = map.get(name) {
        return stat.clone();
    }
    let stat = Stat::new(name, cell());
    map.insert(name.to_owned(), stat.clone());
    stat
}

/// Whether a stat passes the admin filters: used (if asked) and matching `filter` anywhere
/// in the name, as Envoy's `filter` regex search does.
fn shown(name: &str, used: bool, filter: Option<&Regex>, used_only: bool) -> bool {
    (!used_only || used) && filter.is_none_or(|re| re.is_match(name))
}

/// Keeps the handles that pass the admin filters.
fn select<C>(
    stats: Vec<Arc<Stat<C>>>,
    filter: Option<&Regex>,
    used_only: bool,
    used: impl Fn(&C) -> bool,
) -> Vec<Arc<Stat<C>>> {
    stats.into_iter().filter(|s| shown(&s.name, used(&s.cell), filter, used_only)).collect()
}

impl Store {
    /// Creates an empty store.
    pub fn new() -> Store {
        Store::default()
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The registry is only ever inserted into or pruned whole, so a panic elsewhere while
        // holding the lock cannot leave it half-updated; keep serving.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the counter named `name`, registering it on first use.
    pub fn counter(&self, name: &str) -> Counter {
        Counter(get_or_register(&mut self.lock().counters, name, CounterCell::default))
    }

    /// Returns the gauge named `name`, registering it on first use.
    pub fn gauge(&self, name: &str) -> Gauge {
        Gauge(get_or_register(&mut self.lock().gauges, name, GaugeCell::default))
    }

    /// Returns the histogram named `name`, registering it with `unit` on first use; a later
    /// call with another unit gets the existing histogram unchanged.
    pub fn histogram(&self, name: &str, unit: HistogramUnit) -> Histogram {
        Histogram(get_or_register(&mut self.lock().histograms, name, || HistogramCell::new(unit)))
    }

    /// Returns the group registered under `prefix` (with its trailing dot), registering
    /// `make()` first if there is none of this type.
    pub fn group<G: StatGroup>(&self, prefix: &str, make: impl FnOnce() -> G) -> Arc<G> {
        let mut registry = self.lock();
        if let Some(existing) = registry.groups.get(prefix) {
            let existing: Arc<dyn Any + Send + Sync> = existing.clone();
            if let Ok(group) = existing.downcast::<G>() {
                return group;
            }
        }
        let group = Arc::new(make());
        registry.groups.insert(prefix.into(), group.clone());
        group
    }

    /// The current value of counter `name`, if registered.
    pub fn counter_value(&self, name: &str) -> Option<u64> {
        let registry = self.lock();
        registry.counters.get(name).map(|s| s.cell.value()).or_else(|| {
            registry.find_member(name, |m| match m {
                Member::Counter(c) => Some(c.value()),
                _ => None,
            })
        })
    }

    /// The current value of gauge `name`, if registered.
    pub fn gauge_value(&self, name: &str) -> Option<i64> {
        let registry = self.lock();
        registry.gauges.get(name).map(|s| s.cell.value()).or_else(|| {
            registry.find_member(name, |m| match m {
                Member::Gauge(g) => Some(g.value()),
                _ => None,
            })
        })
    }

    /// Unregisters every stat whose name starts with `prefix` (pass the trailing dot, e.g.
    /// `cluster.foo.`); handles still held keep working but are no longer shown.
    pub fn remove_prefix(&self, prefix: &str) {
        let mut registry = self.lock();
        registry.counters.retain(|name, _| !name.starts_with(prefix));
        registry.gauges.retain(|name, _| !name.starts_with(prefix));
        registry.histograms.retain(|name, _| !name.starts_with(prefix));
        registry.groups.retain(|name, _| !name.starts_with(prefix));
    }

    /// Envoy's `/stats` text output.
    pub fn text(&self, filter: Option<&Regex>, used_only: bool) -> String {
        self.snapshot(filter, used_only).text()
    }

    /// Envoy's `/stats?format=json` output.
    pub fn json(&self, filter: Option<&Regex>, used_only: bool) -> serde_json::Value {
        self.snapshot(filter, used_only).json()
    }

    /// Envoy's `/stats/prometheus` output.
    pub fn prometheus(&self, filter: Option<&Regex>, used_only: bool) -> String {
        self.snapshot(filter, used_only).prometheus()
    }

    /// Selects the stats to render. The lock is held only to clone handles: matching and
    /// formatting (slow with hundreds of thousands of stats) must not stall registration.
    fn snapshot(&self, filter: Option<&Regex>, used_only: bool) -> Snapshot {
        let (counters, gauges, histograms, groups) = {
            let registry = self.lock();
            (
                registry.counters.values().cloned().collect(),
                registry.gauges.values().cloned().collect(),
                registry.histograms.values().cloned().collect(),
                registry.groups.iter().map(|(prefix, group)| (prefix.clone(), group.clone())).collect::<Vec<_>>(),
            )
        };
        let mut snapshot = Snapshot {
            counters: select(counters, filter, used_only, CounterCell::used),
            gauges: select(gauges, filter, used_only, GaugeCell::used),
            histograms: select(histograms, filter, used_only, HistogramCell::used),
        };
        // Group members are copied out under their full names, so the renderers see them
        // like any other stat.
        let mut name = String::new();
        for (prefix, group) in groups {
            group.members(&mut |suffix, member| {
                name.clear();
                name.push_str(&prefix);
                name.push_str(suffix);
                match member {
                    Member::Counter(c) if shown(&name, c.used(), filter, used_only) => {
                        snapshot.counters.push(Stat::new(&name, c.copy()));
                    }
                    Member::Gauge(g) if shown(&name, g.used(), filter, used_only) => {
                        snapshot.gauges.push(Stat::new(&name, g.copy()));
                    }
                    Member::Histogram(h) if shown(&name, h.used(), filter, used_only) => {
                        snapshot.histograms.push(Stat::new(&name, h.copy()));
                    }
                    _ => {}
                }
            });
        }
        snapshot.histograms.sort_by(|a, b| a.name.cmp(&b.name));
        snapshot
    }
}
