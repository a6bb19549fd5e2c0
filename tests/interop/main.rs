//! The differential suite: every config under `interop/configs/` runs through legate and
//! through the real Envoy side by side (same config, each on its own ports, the same test
//! upstreams), and what clients, upstreams and the admin API see is compared; every
//! `tests/invalid/` file is validated by both. A difference fails the test unless
//! `interop/KNOWN_DIFFERENCES.md` documents it. The summary table goes to stderr.
//!
//! Envoy comes from `ENVOY_BIN` or `interop/install-envoy.sh`; without it the test fails,
//! unless `LEGATE_SKIP_INTEROP=1`.

mod admin;
mod client;
mod corpus;
mod misbehaving;
mod proxy;
mod report;
mod requests;
#[allow(dead_code)] // the integration helpers; the interop suite uses the upstreams
#[path = "../integration/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corpus::Config;
use proxy::{Binaries, Kind, Proxy, Verdict};
use report::Report;
use support::Upstream;

#[test]
fn legate_behaves_like_envoy() {
    let Some(envoy) = proxy::locate_envoy() else { return };
    let started = Instant::now();
    let root = proxy::root();
    let work = std::env::temp_dir().join(format!("legate-interop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let binaries = Binaries { legate: PathBuf::from(env!("CARGO_BIN_EXE_legate")), envoy, work: work.clone() };
    let mut report = Report::new(report::load_known(&root.join("interop/KNOWN_DIFFERENCES.md")));
    let mut configs = corpus::load(&root.join("interop/configs"));
    // While working on one config: `LEGATE_INTEROP_ONLY=41-` runs the configs whose name has
    // it, and not the invalid corpus.
    let only = std::env::var("LEGATE_INTEROP_ONLY").ok();
    if let Some(only) = &only {
        configs.retain(|config| config.name.contains(only.as_str()));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for config in &configs {
        runtime.block_on(run_config(&binaries, config, &mut report));
    }
    if only.is_none() {
        validate_invalid_corpus(&binaries, &root.join("tests/invalid"), &mut report);
    }
    let summary = report.render();
    proxy::note(&format!("{summary}interop took {:.1} s", started.elapsed().as_secs_f64()));
    let unknown = report.unknown();
    assert!(
        unknown.is_empty(),
        "{} difference(s) between legate and Envoy are neither fixed nor in interop/KNOWN_DIFFERENCES.md \
         (configs and logs of the run kept in {}):\n{}",
        unknown.len(),
        work.display(),
        unknown.iter().map(|d| d.key.as_str()).collect::<Vec<_>>().join("\n")
    );
    let _ = std::fs::remove_dir_all(&work);
}

fn verdict_text(verdict: &Verdict) -> String {
    if verdict.accepted { "accepted".into() } else { format!("rejected: {}", verdict.message) }
}

fn compare_verdicts(report: &mut Report, row: &str, legate: &Verdict, envoy: &Verdict) {
    if legate.accepted == envoy.accepted {
        report.ran(row, "validate");
    } else {
        report.differ(row, "validate", "verdict", &verdict_text(legate), &verdict_text(envoy));
    }
}

/// Both proxies validate every file of `tests/invalid/` (two at a time).
fn validate_invalid_corpus(binaries: &Binaries, dir: &Path, report: &mut Report) {
    let files = corpus::config_files(dir);
    let verdicts: Vec<(Verdict, Verdict)> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .map(|file| {
                let (legate, envoy) = (&binaries.legate, &binaries.envoy);
                scope.spawn(move || (proxy::validate(legate, file), proxy::validate(envoy, file)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (file, (legate, envoy)) in files.iter().zip(verdicts) {
        let row = format!("invalid/{}", file.file_stem().unwrap().to_string_lossy());
        compare_verdicts(report, &row, &legate, &envoy);
    }
}

/// One proxy's filled config and ports.
struct Side {
    kind: Kind,
    config: PathBuf,
    dir: PathBuf,
    ports: BTreeMap<String, u16>,
    port_names: admin::PortNames,
}

async fn run_config(binaries: &Binaries, config: &Config, report: &mut Report) {
    report.describe(&config.name, &config.spec.description);
    let names = corpus::placeholders(&config.template);
    let mut upstreams: BTreeMap<String, Upstream> = BTreeMap::new();
    let mut shared: BTreeMap<String, String> = BTreeMap::new();
    let mut shared_ports = admin::PortNames::new();
    for name in &names {
        if let Some((upstream, tls)) = corpus::upstream_name(name) {
            let upstream = if tls { Upstream::start_tls(upstream).await } else { Upstream::start(upstream).await };
            shared.insert(name.clone(), upstream.address.port().to_string());
            shared_ports.insert(upstream.address.port(), name.clone());
            upstreams.insert(name.clone(), upstream);
        }
    }
    for kind in misbehaving::KINDS {
        if names.contains(kind) {
            let port = misbehaving::start(kind).await.port();
            shared.insert(kind.into(), port.to_string());
            shared_ports.insert(port, kind.into());
        }
    }
    if names.contains("closed") {
        let port = proxy::free_ports(1)[0];
        shared.insert("closed".into(), port.to_string());
        shared_ports.insert(port, "closed".into());
    }
    let own: Vec<String> = names.iter().filter(|n| *n == "admin" || n.starts_with("listener")).cloned().collect();
    assert!(own.iter().any(|n| n == "admin"), "{}: the config needs an admin on ${{admin}}", config.name);
    // Both sides' ports from one batch, so that no two are the same; none of them the
    // "closed" port, which is free (not held) by design.
    let fresh_sides = || {
        let mut ports = proxy::free_ports(2 * own.len() + 1).into_iter().filter(|p| !shared_ports.contains_key(p));
        [Kind::Legate, Kind::Envoy].map(|kind| {
            let own_ports: Vec<u16> = ports.by_ref().take(own.len()).collect();
            side(binaries, config, kind, &own, &own_ports, &shared, &shared_ports)
        })
    };
    let mut sides = fresh_sides();

    let (lv, ev) = {
        let (l, e) = (binaries.legate.clone(), binaries.envoy.clone());
        let (lc, ec) = (sides[0].config.clone(), sides[1].config.clone());
        let lt = tokio::task::spawn_blocking(move || proxy::validate(&l, &lc));
        let et = tokio::task::spawn_blocking(move || proxy::validate(&e, &ec));
        (lt.await.unwrap(), et.await.unwrap())
    };
    compare_verdicts(report, &config.name, &lv, &ev);
    if !(lv.accepted && ev.accepted) {
        return;
    }

    let start = |side: &Side| {
        Proxy::start(binaries, side.kind, &side.config, side.ports.clone(), side.dir.clone(), &config.spec.flags)
    };
    // A port picked free may be taken by someone else before the proxy binds it: then both
    // start again on fresh ports.
    let mut attempt = 0;
    let (legate, envoy) = loop {
        let (mut legate, mut envoy) = (start(&sides[0]), start(&sides[1]));
        let (lr, er) = tokio::join!(legate.wait_ready(), envoy.wait_ready());
        if lr.is_ok() && er.is_ok() {
            break (legate, envoy);
        }
        tokio::join!(legate.stop(), envoy.stop());
        attempt += 1;
        if attempt == 3 {
            report.differ(&config.name, "requests", "startup", &format!("{lr:?}"), &format!("{er:?}"));
            return;
        }
        sides = fresh_sides();
    };
    let [legate_side, envoy_side] = &sides;

    for request in &config.spec.requests {
        for protocol in request.protocols() {
            let l = requests::observe(&legate, &legate_side.port_names, request, &protocol, &upstreams).await;
            let e = requests::observe(&envoy, &envoy_side.port_names, request, &protocol, &upstreams).await;
            let label = request.label(&protocol);
            let items: std::collections::BTreeSet<&String> = l.keys().chain(e.keys()).collect();
            for item in items {
                let absent = "(absent)".to_owned();
                let (lv, ev) = (l.get(item).unwrap_or(&absent), e.get(item).unwrap_or(&absent));
                report.compare(&config.name, "requests", &format!("{label} :: {item}"), lv, ev);
            }
        }
    }
    // Stream-end accounting may trail the last response by a moment.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let sides = ((&legate, &legate_side.port_names), (&envoy, &envoy_side.port_names));
    admin::compare(report, &config.name, &config.spec.uncompared_stats, sides.0, sides.1).await;
    tokio::join!(legate.stop(), envoy.stop());
    compare_access_logs(report, config, legate_side, envoy_side);
}

/// One proxy's filled config on ports of its own (`own` placeholders, given `own_ports`), the
/// shared upstream ports and its own directory.
fn side(
    binaries: &Binaries,
    config: &Config,
    kind: Kind,
    own: &[String],
    own_ports: &[u16],
    shared: &BTreeMap<String, String>,
    shared_ports: &admin::PortNames,
) -> Side {
    let dir = binaries.work.join(&config.name).join(kind.name());
    std::fs::create_dir_all(&dir).unwrap();
    let mut values = shared.clone();
    let mut ports = BTreeMap::new();
    let mut port_names = shared_ports.clone();
    for (name, &port) in own.iter().zip(own_ports) {
        values.insert(name.clone(), port.to_string());
        ports.insert(name.clone(), port);
        port_names.insert(port, name.clone());
    }
    values.insert("dir".into(), dir.display().to_string());
    values.insert("certs".into(), support::certs_dir().display().to_string());
    let extension = config.path.extension().unwrap().to_string_lossy();
    let path = dir.join(format!("config.{extension}"));
    std::fs::write(&path, corpus::fill(&config.template, &values)).unwrap();
    Side { kind, config: path, dir, ports, port_names }
}

/// Access log lines after shutdown (both flush then), masked and port-normalized.
fn compare_access_logs(report: &mut Report, config: &Config, legate: &Side, envoy: &Side) {
    let masks: Vec<regex::Regex> = config
        .spec
        .access_log_masks
        .iter()
        .map(|m| regex::Regex::new(m).unwrap_or_else(|e| panic!("{}: bad mask {m}: {e}", config.name)))
        .collect();
    let read = |side: &Side, file: &str| -> Vec<String> {
        let text = std::fs::read_to_string(side.dir.join(file)).unwrap_or_default();
        let text = text.replace(&side.dir.display().to_string(), "${dir}");
        text.lines()
            .map(|line| {
                let mut line = admin::normalize_text(line, &side.port_names);
                for mask in &masks {
                    line = apply_mask(mask, &line);
                }
                line
            })
            .collect()
    };
    for file in &config.spec.access_logs {
        let (l, e) = (read(legate, file), read(envoy, file));
        report.compare(
            &config.name,
            "access_log",
            &format!("{file} lines"),
            &l.len().to_string(),
            &e.len().to_string(),
        );
        for (i, (ll, el)) in l.iter().zip(&e).enumerate() {
            report.compare(&config.name, "access_log", &format!("{file} line {}", i + 1), ll, el);
        }
    }
}

/// Masks each match of `mask` in `line`: only its capture groups when it has any.
fn apply_mask(mask: &regex::Regex, line: &str) -> String {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for captures in mask.captures_iter(line) {
        let groups: Vec<_> = captures.iter().skip(1).flatten().map(|m| (m.start(), m.end())).collect();
        if groups.is_empty() {
            let whole = captures.get(0).unwrap();
            spans.push((whole.start(), whole.end()));
        } else {
            spans.extend(groups);
        }
    }
    let mut out = line.to_owned();
    for (start, end) in spans.into_iter().rev() {
        out.replace_range(start..end, "<masked>");
    }
    out
}
