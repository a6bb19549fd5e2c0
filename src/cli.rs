//! Command-line options, spelled as Envoy spells them so existing launch scripts work.

use clap::{Parser, ValueEnum};

/// What the process does with the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Serve traffic.
    Serve,
    /// Validate the config and exit.
    Validate,
}

/// Envoy's command-line options (the subset legate acts on, plus ones it accepts for
/// compatibility and ignores because they concern hot restart or Envoy internals).
#[derive(Debug, Clone, Parser)]
#[command(name = "legate", version, about = "An Envoy-compatible xDS data-plane proxy")]
pub struct Options {
    /// Path to the bootstrap config (YAML, or JSON by its `.json` extension).
    #[arg(short = 'c', long = "config-path", value_name = "PATH")]
    pub config_path: Option<String>,

    /// Bootstrap YAML merged over the file's config, as Envoy merges it.
    #[arg(long = "config-yaml", value_name = "YAML")]
    pub config_yaml: Option<String>,

    /// `serve` (default) or `validate`.
    #[arg(long, value_enum, default_value = "serve")]
    pub mode: Mode,

    /// Number of worker threads (default: the number of CPUs).
    #[arg(long)]
    pub concurrency: Option<usize>,

    /// Local service cluster name (overrides `node.cluster`).
    #[arg(long = "service-cluster")]
    pub service_cluster: Option<String>,

    /// Local service node name (overrides `node.id`).
    #[arg(long = "service-node")]
    pub service_node: Option<String>,

    /// Local service zone (overrides `node.locality.zone`).
    #[arg(long = "service-zone")]
    pub service_zone: Option<String>,

    /// Log level: trace, debug, info, warning/warn, error, critical, off.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    pub log_level: String,

    /// Per-component log levels (`upstream:debug,connection:trace`); accepted, applied as
    /// an overall filter refinement where a component maps to a legate module.
    #[arg(long = "component-log-level")]
    pub component_log_level: Option<String>,

    /// Seconds to drain connections on shutdown.
    #[arg(long = "drain-time-s", default_value_t = 600)]
    pub drain_time_s: u64,

    /// Seconds before the parent is shut down in a hot restart (accepted; no hot restart).
    #[arg(long = "parent-shutdown-time-s", default_value_t = 900)]
    pub parent_shutdown_time_s: u64,

    /// Hot-restart base id (accepted; no hot restart).
    #[arg(long = "base-id", default_value_t = 0)]
    pub base_id: u32,

    /// Disables hot restart (accepted; legate never hot-restarts).
    #[arg(long = "disable-hot-restart")]
    pub disable_hot_restart: bool,

    /// Log format (accepted for compatibility; legate's log lines have their own format).
    #[arg(long = "log-format")]
    pub log_format: Option<String>,

    /// Log file path (default: stderr).
    #[arg(long = "log-path")]
    pub log_path: Option<String>,

    /// Allow unknown fields in static config (rejected: legate always checks).
    #[arg(long = "allow-unknown-static-fields")]
    pub allow_unknown_static_fields: bool,
}
