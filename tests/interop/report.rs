//! Outcomes of the comparisons: every difference keyed `config :: check :: item`, matched
//! against the documented ones in `interop/KNOWN_DIFFERENCES.md`, and the summary table.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// The checks, in the summary table's column order.
pub const CHECKS: &[&str] =
    &["validate", "requests", "access_log", "clusters", "stats", "config_dump", "listeners", "ready", "server_info"];

/// One documented difference: a glob over difference keys (`*` matches anything).
pub struct KnownEntry {
    pub pattern: String,
    regex: regex::Regex,
    /// `unsupported` (legate rejects with `not supported by legate`), `stricter` (a
    /// documented stricter check), `behaviour` or `format`.
    pub kind: String,
    pub reason: String,
    hits: usize,
}

/// Reads the table rows of KNOWN_DIFFERENCES.md whose first cell is a backquoted pattern.
pub fn load_known(path: &Path) -> Vec<KnownEntry> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut entries = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let Some(rest) = line.strip_prefix("| `") else { continue };
        let Some((pattern, rest)) = rest.split_once('`') else { continue };
        let cells: Vec<&str> = rest.split('|').map(str::trim).collect();
        let (kind, reason) = match cells.as_slice() {
            [_, kind, reason @ ..] => (kind.to_string(), reason.join("|").trim().to_owned()),
            _ => panic!("{}:{}: a known difference needs kind and reason cells", path.display(), number + 1),
        };
        assert!(
            ["unsupported", "stricter", "behaviour", "format"].contains(&kind.as_str()),
            "{}:{}: unknown kind {kind:?}",
            path.display(),
            number + 1
        );
        assert!(!reason.is_empty(), "{}:{}: a known difference needs a reason", path.display(), number + 1);
        let regex = format!("^{}$", pattern.split('*').map(regex::escape).collect::<Vec<_>>().join(".*"));
        entries.push(KnownEntry {
            pattern: pattern.to_owned(),
            regex: regex::Regex::new(&regex).unwrap(),
            kind,
            reason,
            hits: 0,
        });
    }
    entries
}

/// One observed difference.
pub struct Diff {
    pub key: String,
    pub config: String,
    pub check: String,
    pub legate: String,
    pub envoy: String,
    /// Index of the known entry that documents it.
    pub known: Option<usize>,
}

/// Everything the run observed.
pub struct Report {
    known: Vec<KnownEntry>,
    rows: Vec<String>,
    ran: BTreeMap<(String, String), usize>,
    diffs: Vec<Diff>,
    descriptions: BTreeMap<String, String>,
}

impl Report {
    pub fn new(known: Vec<KnownEntry>) -> Report {
        Report { known, rows: Vec::new(), ran: BTreeMap::new(), diffs: Vec::new(), descriptions: BTreeMap::new() }
    }

    /// What a config shows, printed with its new differences.
    pub fn describe(&mut self, config: &str, description: &str) {
        self.descriptions.insert(config.to_owned(), description.to_owned());
    }

    /// Records that `check` ran for `config` (one more item compared).
    pub fn ran(&mut self, config: &str, check: &str) {
        debug_assert!(CHECKS.contains(&check), "unknown check {check}");
        if !self.rows.iter().any(|r| r == config) {
            self.rows.push(config.to_owned());
        }
        *self.ran.entry((config.to_owned(), check.to_owned())).or_default() += 1;
    }

    /// Compares one item; records a difference when the texts differ.
    pub fn compare(&mut self, config: &str, check: &str, item: &str, legate: &str, envoy: &str) {
        self.ran(config, check);
        if legate != envoy {
            self.differ(config, check, item, legate, envoy);
        }
    }

    /// Records a difference.
    pub fn differ(&mut self, config: &str, check: &str, item: &str, legate: &str, envoy: &str) {
        self.ran(config, check);
        let key = format!("{config} :: {check} :: {item}");
        let known = self.known.iter().position(|k| {
            k.regex.is_match(&key) && (k.kind != "unsupported" || legate.contains("not supported by legate"))
        });
        if let Some(i) = known {
            self.known[i].hits += 1;
        }
        self.diffs.push(Diff {
            key,
            config: config.to_owned(),
            check: check.to_owned(),
            legate: legate.to_owned(),
            envoy: envoy.to_owned(),
            known,
        });
    }

    /// The differences nobody documented.
    pub fn unknown(&self) -> Vec<&Diff> {
        self.diffs.iter().filter(|d| d.known.is_none()).collect()
    }

    fn cell(&self, config: &str, check: &str) -> &'static str {
        if !self.ran.contains_key(&(config.to_owned(), check.to_owned())) {
            return "-";
        }
        let mut diffs = self.diffs.iter().filter(|d| d.config == config && d.check == check).peekable();
        if diffs.peek().is_none() {
            return "same";
        }
        if diffs.any(|d| d.known.is_none()) { "DIFFERS" } else { "known" }
    }

    /// The summary table, the known differences seen, and every new difference in full.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let width = self.rows.iter().map(String::len).max().unwrap_or(6).max(6);
        let _ =
            write!(out, "\ninterop summary: legate vs Envoy (same / known / DIFFERS / - not run)\n{:width$}", "config");
        for check in CHECKS {
            let _ = write!(out, " {check:>11}");
        }
        out.push('\n');
        for row in &self.rows {
            let _ = write!(out, "{row:width$}");
            for check in CHECKS {
                let _ = write!(out, " {:>11}", self.cell(row, check));
            }
            out.push('\n');
        }
        let items: usize = self.ran.values().sum();
        let known = self.diffs.len() - self.unknown().len();
        let _ = writeln!(
            out,
            "{} configs, {items} items compared, {known} known differences, {} new differences",
            self.rows.len(),
            self.unknown().len()
        );
        for entry in &self.known {
            if entry.hits == 0 {
                let _ = writeln!(out, "note: known difference not seen in this run: `{}`", entry.pattern);
            } else {
                let _ = writeln!(out, "known ({}x, {}): `{}`: {}", entry.hits, entry.kind, entry.pattern, entry.reason);
            }
        }
        let mut described = std::collections::BTreeSet::new();
        for diff in self.unknown() {
            if let Some(text) = self.descriptions.get(&diff.config)
                && described.insert(diff.config.clone())
            {
                let _ = writeln!(out, "{}: {text}", diff.config);
            }
            let _ =
                writeln!(out, "NEW DIFFERENCE {}\n    legate: {}\n    envoy:  {}", diff.key, diff.legate, diff.envoy);
        }
        out
    }
}
