//! The corpus: Envoy bootstraps under `interop/configs/` whose ports are `${...}`
//! placeholders, each with a request set `<name>.requests.yaml` beside it.
//!
//! Placeholders: `${admin}` and `${listener}`, `${listener_<x>}` are the proxy's own ports
//! (each proxy gets fresh ones); `${up:<name>}` and `${up:<name>:<n>}` are the ports of
//! test upstreams answering as `<name>` (shared by both proxies), `${tls_up:<name>}` the
//! same over TLS (the test server certificate); `${closed}` is a port
//! nothing listens on; `${dir}` is a directory of the proxy's own (access log files);
//! `${certs}` is the directory of the test certificates (`tests/certs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One config of the corpus with its request set.
pub struct Config {
    /// File stem, e.g. `03-edge-redirects`.
    pub name: String,
    pub path: PathBuf,
    pub template: String,
    pub spec: Spec,
}

/// What to do with a config besides validating it (`<name>.requests.yaml`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// What the config shows; printed with the config's new differences.
    #[serde(default)]
    pub description: String,
    /// Requests sent to both proxies, in order.
    #[serde(default)]
    pub requests: Vec<RequestSpec>,
    /// Access log files (under `${dir}`) whose lines are compared after shutdown.
    #[serde(default)]
    pub access_logs: Vec<String>,
    /// Regexes whose matches are masked in access log lines (timings, ids).
    #[serde(default)]
    pub access_log_masks: Vec<String>,
    /// Stats whose values are not compared (only that both have them): counts a race
    /// outside either proxy decides, each said why in a comment beside it.
    #[serde(default)]
    pub uncompared_stats: Vec<String>,
    /// Extra command-line flags for both proxies.
    #[serde(default)]
    pub flags: Vec<String>,
}

/// One request; sent over each of `protocols` (HTTP/1.1 and h2c unless said).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// A label for reports; defaults to `METHOD path`.
    pub name: Option<String>,
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default = "default_path")]
    pub path: String,
    /// The Host / `:authority`; `example.com` unless given.
    pub host: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    /// `h1`, `h2c`, or over TLS (trusting the test CA, SNI `legate.test`) `h1-tls`,
    /// `h2-tls` (ALPN `http/1.1`, `h2`); `h1` and `h2c` unless given.
    pub protocols: Option<Vec<String>>,
    /// Over TLS, the server name the client asks for (`legate.test` unless given; the test
    /// server certificate names `legate.test`, `*.legate.test` and `localhost`).
    pub sni: Option<String>,
    /// The listener placeholder to send to (`listener` unless given).
    pub listener: Option<String>,
    /// Raw HTTP/1.x bytes to write instead (`\r\n` line ends); the raw reply is compared.
    pub raw: Option<String>,
    /// How long to give the upstreams to notice a request after a local reply (a request
    /// the proxy gave up on reaches the test upstream's log only when it is reset); 60 ms
    /// unless given.
    pub settle_ms: Option<u64>,
}

fn default_method() -> String {
    "GET".into()
}

fn default_path() -> String {
    "/".into()
}

impl RequestSpec {
    /// The protocols this request goes over.
    pub fn protocols(&self) -> Vec<String> {
        if self.raw.is_some() {
            return vec!["raw".into()];
        }
        self.protocols.clone().unwrap_or_else(|| vec!["h1".into(), "h2c".into()])
    }

    /// The label used in reports.
    pub fn label(&self, protocol: &str) -> String {
        let base = self.name.clone().unwrap_or_else(|| format!("{} {}", self.method, self.path));
        format!("{base} [{protocol}]")
    }
}

/// The corpus configs, sorted by name. Panics with the file's name on a bad request set.
pub fn load(dir: &Path) -> Vec<Config> {
    let mut configs = Vec::new();
    for path in config_files(dir) {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let template = std::fs::read_to_string(&path).unwrap();
        let spec_path = dir.join(format!("{name}.requests.yaml"));
        let spec_text = std::fs::read_to_string(&spec_path)
            .unwrap_or_else(|e| panic!("{} has no request set {}: {e}", path.display(), spec_path.display()));
        let spec: Spec = serde_saphyr::from_str(&spec_text)
            .unwrap_or_else(|e| panic!("{}: bad request set: {e}", spec_path.display()));
        configs.push(Config { name, path, template, spec });
    }
    configs
}

/// The bootstrap files of a directory (request sets excluded), sorted.
pub fn config_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            (name.ends_with(".yaml") || name.ends_with(".json")) && !name.ends_with(".requests.yaml")
        })
        .collect();
    files.sort();
    files
}

fn placeholder() -> regex::Regex {
    regex::Regex::new(r"\$\{([A-Za-z0-9_:.-]+)\}").unwrap()
}

/// The placeholder names a template uses.
pub fn placeholders(template: &str) -> BTreeSet<String> {
    placeholder().captures_iter(template).map(|c| c[1].to_owned()).collect()
}

/// Replaces every placeholder; panics on one without a value.
pub fn fill(template: &str, values: &BTreeMap<String, String>) -> String {
    placeholder()
        .replace_all(template, |c: &regex::Captures| {
            values.get(&c[1]).cloned().unwrap_or_else(|| panic!("no value for placeholder ${{{}}}", &c[1]))
        })
        .into_owned()
}

/// The upstream name of an `up:<name>[:<n>]` or `tls_up:<name>[:<n>]` placeholder, and
/// whether it speaks TLS.
pub fn upstream_name(placeholder: &str) -> Option<(&str, bool)> {
    let (rest, tls) = match placeholder.strip_prefix("tls_up:") {
        Some(rest) => (rest, true),
        None => (placeholder.strip_prefix("up:")?, false),
    };
    Some((rest.split(':').next().unwrap_or(rest), tls))
}
