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
//! Parsing admin query parameters and serving HTTP is left to `admin`.

mod format;
mod metric;
mod tags;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use regex::Regex;

use format::Snapshot;
pub use metric::{Counter, Gauge, Histogram, HistogramUnit};
use metric::{CounterCell, GaugeCell, HistogramCell, Stat};

/// All stats of a legate instance; cloning shares the same store.
#[derive(Debug, Clone, Default)]
pub struct Store {
    registry: Arc<Mutex<Registry>>,
}

/// Stats by full name; one namespace per stat type, as in Envoy.
#[derive(Debug, Default)]
struct Registry {
    counters: BTreeMap<String, Arc<Stat<CounterCell>>>,
    gauges: BTreeMap<String, Arc<Stat<GaugeCell>>>,
    histograms: BTreeMap<String, Arc<Stat<HistogramCell>>>,
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

/// Clones the handles that pass the admin filters: used (if asked) and matching `filter`
/// anywhere in the name, as Envoy's `filter` regex search does.
fn select<C>(
    map: &BTreeMap<String, Arc<Stat<C>>>,
    filter: Option<&Regex>,
    used_only: bool,
    used: impl Fn(&C) -> bool,
) -> Vec<Arc<Stat<C>>> {
    map.values()
        .filter(|s| !used_only || used(&s.cell))
        .filter(|s| filter.is_none_or(|re| re.is_match(&s.name)))
        .cloned()
        .collect()
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

    /// The current value of counter `name`, if registered.
    pub fn counter_value(&self, name: &str) -> Option<u64> {
        self.lock().counters.get(name).map(|s| s.cell.value())
    }

    /// The current value of gauge `name`, if registered.
    pub fn gauge_value(&self, name: &str) -> Option<i64> {
        self.lock().gauges.get(name).map(|s| s.cell.value())
    }

    /// Unregisters every stat whose name starts with `prefix` (pass the trailing dot, e.g.
    /// `cluster.foo.`); handles still held keep working but are no longer shown.
    pub fn remove_prefix(&self, prefix: &str) {
        let mut registry = self.lock();
        registry.counters.retain(|name, _| !name.starts_with(prefix));
        registry.gauges.retain(|name, _| !name.starts_with(prefix));
        registry.histograms.retain(|name, _| !name.starts_with(prefix));
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

    /// Selects the stats to render; the lock is released before any formatting.
    fn snapshot(&self, filter: Option<&Regex>, used_only: bool) -> Snapshot {
        let registry = self.lock();
        Snapshot {
            counters: select(&registry.counters, filter, used_only, CounterCell::used),
            gauges: select(&registry.gauges, filter, used_only, GaugeCell::used),
            histograms: select(&registry.histograms, filter, used_only, HistogramCell::used),
        }
    }
}
