//! Stat handles and the atomics behind them.
//!
//! A handle is an `Arc` to a [`Stat`]: the name, its cached tag extraction and the cell of
//! atomics. Every write is lock-free; all orderings are `Relaxed` because each atomic is an
//! independent number and readers (admin) only need eventually-visible values, not a
//! consistent cut across stats, which Envoy does not give either.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

/// Envoy's default histogram bucket upper bounds (`supported_buckets`).
pub(super) const BUCKET_BOUNDS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// One count per bound plus an overflow bucket for values above the last bound.
const BUCKETS: usize = BUCKET_BOUNDS.len() + 1;

/// Envoy's default supported quantiles, as the percentages it prints (`P99.5`, `99.5`).
pub(super) const SUPPORTED_PERCENTILES: [f64; 10] = [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 100.0];

/// A registered stat: its full name and its atomics.
#[derive(Debug)]
pub(super) struct Stat<C> {
    pub(super) name: String,
    pub(super) cell: C,
}

impl<C> Stat<C> {
    pub(super) fn new(name: &str, cell: C) -> Arc<Stat<C>> {
        Arc::new(Stat { name: name.to_owned(), cell })
    }
}

/// Marks a stat as written, for Envoy's `usedonly`.
fn mark_used(used: &AtomicBool) {
    // Load before storing: after the first write every call only reads, so the flag's cache
    // line stays shared between cores instead of being dirtied on every increment.
    if !used.load(Relaxed) {
        used.store(true, Relaxed);
    }
}

/// The atomics of a counter: what a [`Counter`] handle points to, or a member of a
/// [`StatGroup`](super::StatGroup) held inline.
#[derive(Debug, Default)]
pub struct CounterCell {
    value: AtomicU64,
    used: AtomicBool,
}

impl CounterCell {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `amount`; like Envoy, adding zero still marks the counter used.
    pub fn add(&self, amount: u64) {
        self.value.fetch_add(amount, Relaxed);
        mark_used(&self.used);
    }

    /// The current count.
    pub fn value(&self) -> u64 {
        self.value.load(Relaxed)
    }

    pub(super) fn used(&self) -> bool {
        self.used.load(Relaxed)
    }

    /// A copy of the current value, for a render snapshot.
    pub(super) fn copy(&self) -> CounterCell {
        CounterCell { value: AtomicU64::new(self.value()), used: AtomicBool::new(self.used()) }
    }
}

/// The atomics of a gauge: what a [`Gauge`] handle points to, or a group member.
#[derive(Debug, Default)]
pub struct GaugeCell {
    value: AtomicI64,
    used: AtomicBool,
}

impl GaugeCell {
    /// Replaces the value.
    pub fn set(&self, value: i64) {
        self.value.store(value, Relaxed);
        mark_used(&self.used);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.sub(1);
    }

    /// Adds `amount`.
    pub fn add(&self, amount: i64) {
        self.value.fetch_add(amount, Relaxed);
        mark_used(&self.used);
    }

    /// Subtracts `amount`.
    pub fn sub(&self, amount: i64) {
        self.value.fetch_sub(amount, Relaxed);
        mark_used(&self.used);
    }

    /// The current value.
    pub fn value(&self) -> i64 {
        self.value.load(Relaxed)
    }

    pub(super) fn used(&self) -> bool {
        self.used.load(Relaxed)
    }

    /// A copy of the current value, for a render snapshot.
    pub(super) fn copy(&self) -> GaugeCell {
        GaugeCell { value: AtomicI64::new(self.value()), used: AtomicBool::new(self.used()) }
    }
}

/// What a histogram's values measure; Envoy's `Histogram::Unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistogramUnit {
    /// No particular unit.
    Unspecified,
    /// Sizes in bytes.
    Bytes,
    /// Durations in milliseconds.
    Milliseconds,
}

/// The atomics of a histogram: per-bucket counts, the sum and the observed extremes; what a
/// [`Histogram`] handle points to, or a group member.
#[derive(Debug)]
pub struct HistogramCell {
    unit: HistogramUnit,
    /// Disjoint counts: bucket `i` holds values in `(BUCKET_BOUNDS[i-1], BUCKET_BOUNDS[i]]`.
    buckets: [AtomicU64; BUCKETS],
    sum: AtomicU64,
    /// `u64::MAX` until the first record.
    min: AtomicU64,
    max: AtomicU64,
}

impl HistogramCell {
    /// An empty histogram of values in `unit`.
    pub fn new(unit: HistogramUnit) -> HistogramCell {
        HistogramCell {
            unit,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
        }
    }

    /// Whether anything was ever recorded.
    pub(super) fn used(&self) -> bool {
        self.buckets.iter().any(|b| b.load(Relaxed) > 0)
    }

    /// Records one value.
    pub fn record(&self, value: u64) {
        self.buckets[bucket_index(value)].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
        // Read first: extremes rarely change, so most records only load these.
        if value < self.min.load(Relaxed) {
            self.min.fetch_min(value, Relaxed);
        }
        if value > self.max.load(Relaxed) {
            self.max.fetch_max(value, Relaxed);
        }
    }

    /// The unit the histogram was registered with, for sinks that label values.
    pub fn unit(&self) -> HistogramUnit {
        self.unit
    }

    /// A copy of the current values, for a render snapshot.
    pub(super) fn copy(&self) -> HistogramCell {
        let load = |a: &AtomicU64| AtomicU64::new(a.load(Relaxed));
        HistogramCell {
            unit: self.unit,
            buckets: std::array::from_fn(|i| load(&self.buckets[i])),
            sum: load(&self.sum),
            min: load(&self.min),
            max: load(&self.max),
        }
    }

    /// Copies the atomics out so quantiles are computed from one set of numbers.
    pub(super) fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            sum: self.sum.load(Relaxed),
            min: self.min.load(Relaxed),
            max: self.max.load(Relaxed),
        }
    }
}

/// A point-in-time copy of a histogram, with Envoy's derived statistics.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct HistogramSnapshot {
    buckets: [u64; BUCKETS],
    pub(super) sum: u64,
    min: u64,
    max: u64,
}

impl HistogramSnapshot {
    /// Number of recorded values.
    pub(super) fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Cumulative counts per bound (values `<=` bound), as Prometheus `_bucket` wants them.
    pub(super) fn cumulative_buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        BUCKET_BOUNDS.iter().zip(&self.buckets).scan(0u64, |below, (&bound, &n)| {
            *below += n;
            Some((bound, *below))
        })
    }

    /// Estimates quantile `q` (0..=1) by linear interpolation inside the bucket that holds it;
    /// NaN when nothing was recorded, which Envoy prints as `nan` / JSON `null`.
    pub(super) fn quantile(&self, q: f64) -> f64 {
        let count = self.count();
        if count == 0 {
            return f64::NAN;
        }
        let rank = q * count as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (below + n) as f64 >= rank {
                let (lo, hi) = self.value_range(i);
                let fraction = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return lo as f64 + (hi - lo) as f64 * fraction;
            }
            below += n;
        }
        // Only reachable if `q > 1`; the largest value is the best answer then.
        self.max as f64
    }

    /// The integer values bucket `i` can hold, narrowed to the observed min and max so P0 and
    /// P100 are exact.
    fn value_range(&self, i: usize) -> (u64, u64) {
        // Recorded values are integers, so `(0.5, 1]` holds only 1 and `(1, 5]` holds 2..=5.
        let lower = if i == 0 { 0 } else { BUCKET_BOUNDS[i - 1] as u64 + 1 };
        let upper = BUCKET_BOUNDS.get(i).map_or(u64::MAX, |&b| b as u64);
        // A concurrent `record` may have bumped a bucket before min/max; keep `lo <= hi`.
        let lo = lower.max(self.min).min(upper);
        let hi = upper.min(self.max).max(lo);
        (lo, hi)
    }
}

/// Index of the bucket a value falls in: the first bound `>=` the value, else overflow.
fn bucket_index(value: u64) -> usize {
    BUCKET_BOUNDS.partition_point(|&bound| bound < value as f64)
}

/// A registered counter; cloning shares the same counter. Its operations are
/// [`CounterCell`]'s.
#[derive(Debug, Clone)]
pub struct Counter(pub(super) Arc<Stat<CounterCell>>);

/// A registered gauge; cloning shares the same gauge. Its operations are [`GaugeCell`]'s.
#[derive(Debug, Clone)]
pub struct Gauge(pub(super) Arc<Stat<GaugeCell>>);

/// A registered histogram in Envoy's default buckets; cloning shares the same histogram.
/// Its operations are [`HistogramCell`]'s.
#[derive(Debug, Clone)]
pub struct Histogram(pub(super) Arc<Stat<HistogramCell>>);

macro_rules! deref_to_cell {
    ($($handle:ident => $cell:ident),*) => {$(
        impl std::ops::Deref for $handle {
            type Target = $cell;
            fn deref(&self) -> &$cell {
                &self.0.cell
            }
        }
    )*};
}
deref_to_cell!(Counter => CounterCell, Gauge => GaugeCell, Histogram => HistogramCell);

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: &[u64]) -> HistogramSnapshot {
        let h = Histogram(Stat::new("h", HistogramCell::new(HistogramUnit::Unspecified)));
        for &v in values {
            h.record(v);
        }
        h.0.cell.snapshot()
    }

    #[test]
    fn values_land_in_envoy_buckets() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(1), 1);
        assert_eq!(bucket_index(2), 2);
        assert_eq!(bucket_index(5), 2);
        assert_eq!(bucket_index(6), 3);
        assert_eq!(bucket_index(3_600_000), 18);
        assert_eq!(bucket_index(3_600_001), 19);
    }

    #[test]
    fn quantiles_are_nan_without_values() {
        assert!(histogram(&[]).quantile(0.5).is_nan());
    }

    #[test]
    fn quantile_extremes_are_exact_and_middle_is_interpolated() {
        let snap = histogram(&[3, 7, 7, 9, 4000]);
        assert_eq!(snap.quantile(0.0), 3.0);
        assert_eq!(snap.quantile(1.0), 4000.0);
        // Rank 2.5 of 5 falls in (5, 10], which holds 3 values observed within 6..=10.
        let p50 = snap.quantile(0.5);
        assert!((6.0..=10.0).contains(&p50), "{p50}");
        assert_eq!(snap.count(), 5);
        assert_eq!(snap.sum, 4026);
    }

    #[test]
    fn a_single_repeated_value_gives_that_value_everywhere() {
        let snap = histogram(&[1, 1, 1]);
        for p in SUPPORTED_PERCENTILES {
            assert_eq!(snap.quantile(p / 100.0), 1.0, "P{p}");
        }
    }

    #[test]
    fn cumulative_buckets_count_values_at_or_below_each_bound() {
        let snap = histogram(&[0, 1, 5, 6, 9_000_000]);
        let buckets: Vec<_> = snap.cumulative_buckets().collect();
        assert_eq!(buckets.len(), 19);
        assert_eq!(&buckets[..4], &[(0.5, 1), (1.0, 2), (5.0, 3), (10.0, 4)]);
        assert_eq!(buckets[18], (3_600_000.0, 4));
        assert_eq!(snap.count(), 5);
    }
}
