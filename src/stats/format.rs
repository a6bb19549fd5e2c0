//! Renders a snapshot of stats in Envoy's three admin formats: `/stats` text,
//! `/stats?format=json` and `/stats/prometheus` (text exposition 0.0.4).
//!
//! Histograms keep no flush intervals, so each quantile's "interval" value is the
//! cumulative one; Envoy would show the values since the last stats flush there.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::{Value, json};

use super::metric::{CounterCell, GaugeCell, HistogramCell, HistogramSnapshot, SUPPORTED_PERCENTILES, Stat};
use super::tags::TaggedName;

/// The stats selected for one admin request; histograms sorted by name (the renderers
/// sort counters and gauges together).
pub(super) struct Snapshot {
    pub(super) counters: Vec<Arc<Stat<CounterCell>>>,
    pub(super) gauges: Vec<Arc<Stat<GaugeCell>>>,
    pub(super) histograms: Vec<Arc<Stat<HistogramCell>>>,
}

/// A counter or gauge value, so both can share one sorted list as Envoy prints them.
#[derive(Clone, Copy)]
enum Number {
    Unsigned(u64),
    Signed(i64),
}

impl Number {
    fn push_to(self, out: &mut String) {
        match self {
            Number::Unsigned(v) => out.push_str(itoa::Buffer::new().format(v)),
            Number::Signed(v) => out.push_str(itoa::Buffer::new().format(v)),
        }
    }

    fn to_json(self) -> Value {
        match self {
            Number::Unsigned(v) => Value::from(v),
            Number::Signed(v) => Value::from(v),
        }
    }
}

impl Snapshot {
    /// Counters and gauges merged and sorted by name, the order of Envoy's text and JSON.
    fn numbers(&self) -> Vec<(&str, Number)> {
        let counters = self.counters.iter().map(|s| (s.name.as_str(), Number::Unsigned(s.cell.value())));
        let gauges = self.gauges.iter().map(|s| (s.name.as_str(), Number::Signed(s.cell.value())));
        let mut all: Vec<_> = counters.chain(gauges).collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }

    /// Envoy's `/stats` text: `name: value` lines, then one line per histogram.
    pub(super) fn text(&self) -> String {
        let mut out = String::new();
        for (name, value) in self.numbers() {
            out.push_str(name);
            out.push_str(": ");
            value.push_to(&mut out);
            out.push('\n');
        }
        for stat in &self.histograms {
            out.push_str(&stat.name);
            out.push_str(": ");
            push_quantile_summary(&mut out, &stat.cell.snapshot());
            out.push('\n');
        }
        out
    }

    /// Envoy's `/stats?format=json`.
    pub(super) fn json(&self) -> Value {
        let mut stats: Vec<Value> =
            self.numbers().into_iter().map(|(name, value)| json!({"name": name, "value": value.to_json()})).collect();
        // Envoy adds the histograms object only when at least one histogram is shown.
        if !self.histograms.is_empty() {
            let computed: Vec<Value> = self
                .histograms
                .iter()
                .map(|stat| {
                    let snap = stat.cell.snapshot();
                    let values: Vec<Value> = SUPPORTED_PERCENTILES
                        .iter()
                        .map(|p| {
                            let v = json_number(snap.quantile(p / 100.0));
                            json!({"interval": v.clone(), "cumulative": v})
                        })
                        .collect();
                    json!({"name": stat.name, "values": values})
                })
                .collect();
            let supported: Vec<Value> = SUPPORTED_PERCENTILES.iter().map(|&p| json_number(p)).collect();
            stats.push(json!({"histograms": {
                "supported_quantiles": supported,
                "computed_quantiles": computed,
            }}));
        }
        json!({ "stats": stats })
    }

    /// Envoy's `/stats/prometheus`: counters, gauges, then histograms, each as families sorted
    /// by tag-extracted name with one `# TYPE` line each (Envoy 1.40 writes no blank lines).
    pub(super) fn prometheus(&self) -> String {
        let mut out = String::new();
        push_families(&mut out, &self.counters, "counter", |out, stat, tagged| {
            push_sample(out, tagged, Number::Unsigned(stat.cell.value()));
        });
        push_families(&mut out, &self.gauges, "gauge", |out, stat, tagged| {
            push_sample(out, tagged, Number::Signed(stat.cell.value()));
        });
        push_families(&mut out, &self.histograms, "histogram", push_histogram);
        out
    }
}

/// `P0(interval,cumulative) P25(...) ...`, or Envoy's marker for a histogram never recorded.
fn push_quantile_summary(out: &mut String, snap: &HistogramSnapshot) {
    if snap.count() == 0 {
        out.push_str("No recorded values");
        return;
    }
    for (i, p) in SUPPORTED_PERCENTILES.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let v = snap.quantile(p / 100.0);
        // Writing to a String cannot fail.
        let _ = write!(out, "P{p}({},{})", Float(v), Float(v));
    }
}

/// Formats a float like Envoy's fmt `{}`: shortest round-trip digits, `nan` for NaN.
struct Float(f64);

impl std::fmt::Display for Float {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_nan() { f.write_str("nan") } else { write!(f, "{}", self.0) }
    }
}

/// A JSON number the way Envoy's JSON prints it: integral values without `.0`, NaN as null.
fn json_number(v: f64) -> Value {
    if v.is_nan() {
        Value::Null
    } else if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::from(v as i64)
    } else {
        Value::from(v)
    }
}

/// Orders dotted names token by token, as Envoy's symbol table compares stat names.
fn token_cmp(a: &str, b: &str) -> Ordering {
    a.split('.').cmp(b.split('.'))
}

/// Writes one Prometheus family per tag-extracted name, samples sorted by full stat name.
///
/// Tags are extracted here, per render, rather than cached per stat: a cache would cost
/// three strings for every stat of every cluster, for an endpoint that is read rarely.
fn push_families<C>(
    out: &mut String,
    stats: &[Arc<Stat<C>>],
    kind: &str,
    mut push: impl FnMut(&mut String, &Stat<C>, &TaggedName),
) {
    let mut sorted: Vec<(TaggedName, &Stat<C>)> = stats.iter().map(|s| (TaggedName::new(&s.name), &**s)).collect();
    sorted.sort_by(|(a_tags, a), (b_tags, b)| {
        token_cmp(&a_tags.extracted, &b_tags.extracted).then_with(|| token_cmp(&a.name, &b.name))
    });
    let mut family: Option<&str> = None;
    for (tagged, stat) in &sorted {
        if family != Some(tagged.extracted.as_str()) {
            family = Some(&tagged.extracted);
            out.push_str("# TYPE ");
            out.push_str(&tagged.family);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
        }
        push(out, stat, tagged);
    }
}

/// `family{labels} value`; Envoy keeps the braces even without labels.
fn push_sample(out: &mut String, tagged: &TaggedName, value: Number) {
    out.push_str(&tagged.family);
    out.push('{');
    out.push_str(&tagged.labels);
    out.push_str("} ");
    value.push_to(out);
    out.push('\n');
}

/// Cumulative `_bucket` lines for every default bound and `+Inf`, then `_sum` and `_count`.
fn push_histogram(out: &mut String, stat: &Stat<HistogramCell>, tagged: &TaggedName) {
    let snap = stat.cell.snapshot();
    let family = &tagged.family;
    let labels = &tagged.labels;
    let sep = if labels.is_empty() { "" } else { "," };
    let count = snap.count();
    // Writing to a String cannot fail.
    for (bound, below) in snap.cumulative_buckets() {
        let _ = writeln!(out, "{family}_bucket{{{labels}{sep}le=\"{bound}\"}} {below}");
    }
    let _ = writeln!(out, "{family}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{family}_sum{{{labels}}} {}", snap.sum);
    let _ = writeln!(out, "{family}_count{{{labels}}} {count}");
}
