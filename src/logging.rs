//! Application logging with Envoy's level names and components, changeable at run time
//! through the admin `/logging` endpoint.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::reload;

/// Envoy's logger components that map onto legate modules.
const COMPONENTS: &[(&str, &str)] = &[
    ("admin", "legate::admin"),
    ("config", "legate::config"),
    ("connection", "legate::listener"),
    ("http", "legate::http"),
    ("main", "legate::server"),
    ("pool", "legate::upstream::pool"),
    ("router", "legate::http::proxy"),
    ("upstream", "legate::upstream"),
];

struct Control {
    levels: Mutex<BTreeMap<&'static str, &'static str>>,
    reload: Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Maps an Envoy level name to a tracing level (`warning` → `warn`, `critical` → `error`).
pub fn normalize_level(level: &str) -> Option<&'static str> {
    Some(match level {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" => "error",
        "critical" => "error",
        "off" => "off",
        _ => return None,
    })
}

fn envoy_name(level: &str) -> &'static str {
    match level {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" => "warning",
        "error" => "error",
        _ => "off",
    }
}

fn filter(levels: &BTreeMap<&'static str, &'static str>) -> EnvFilter {
    let directives: Vec<String> =
        COMPONENTS.iter().map(|(name, module)| format!("{module}={}", levels[name])).collect();
    EnvFilter::new(format!("warn,{}", directives.join(",")))
}

/// Installs the global subscriber with `--log-level` and `--component-log-level`
/// (`upstream:debug,http:trace`). Fails on an unknown level or component.
pub fn init(level: &str, component_levels: Option<&str>) -> Result<(), String> {
    let base = normalize_level(level).ok_or_else(|| format!("error: invalid log level specified '{level}'"))?;
    let mut levels: BTreeMap<&'static str, &'static str> = COMPONENTS.iter().map(|(name, _)| (*name, base)).collect();
    for pair in component_levels.unwrap_or_default().split(',').filter(|p| !p.is_empty()) {
        let (component, level) = pair
            .split_once(':')
            .ok_or_else(|| format!("error: component log level not correctly specified '{pair}'"))?;
        let level = normalize_level(level).ok_or_else(|| format!("error: invalid log level specified '{level}'"))?;
        // Envoy accepts every one of its many components; those legate has no module for change nothing.
        if let Some((name, _)) = COMPONENTS.iter().find(|(name, _)| *name == component) {
            levels.insert(name, level);
        }
    }
    let (layer, handle) = reload::Layer::new(filter(&levels));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(layer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .try_init()
        .map_err(|e| e.to_string())?;
    let _ = CONTROL.set(Control {
        levels: Mutex::new(levels),
        reload: Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
    });
    Ok(())
}

/// Envoy's `/logging` listing: `active loggers:` then `  name: level` lines.
pub fn listing() -> String {
    let mut out = String::from("active loggers:\n");
    match CONTROL.get() {
        Some(control) => {
            let levels = control.levels.lock().unwrap_or_else(|e| e.into_inner());
            for (name, level) in levels.iter() {
                out.push_str(&format!("  {name}: {}\n", envoy_name(level)));
            }
        }
        None => {
            for (name, _) in COMPONENTS {
                out.push_str(&format!("  {name}: info\n"));
            }
        }
    }
    out
}

/// Sets every component (`component` None) or one component to `level`.
pub fn set_level(component: Option<&str>, level: &str) -> Result<(), String> {
    let level = normalize_level(level).ok_or_else(|| format!("error: unknown logger level '{level}'"))?;
    let Some(control) = CONTROL.get() else { return Ok(()) };
    let mut levels = control.levels.lock().unwrap_or_else(|e| e.into_inner());
    match component {
        None => levels.values_mut().for_each(|l| *l = level),
        Some(name) => match levels.get_mut(name) {
            Some(l) => *l = level,
            None => return Err(format!("error: unknown logger name '{name}'")),
        },
    }
    (control.reload)(filter(&levels))
}
