//! The EDS churn benchmark (`xds_scale --churn`, run by `bench/eds_churn.sh`; issue 5: "one
//! endpoint changing in each of 1 000 clusters per second must not raise request latency p99
//! by more than 10 % on the data path").
//!
//! Set-up, on top of the scale run's control plane and load phase (steps 1 to 3 in
//! `xds_scale.rs`):
//!
//! - `--upstreams U` (default 3) `bench_upstream` processes on free ports, started by the
//!   driver (so on its CPU). The proxy's bootstrap gains a static listener whose one route
//!   sends everything to `cluster_0` (`validate_clusters: false`: the cluster comes from CDS).
//! - The N clusters are the scale run's (10 endpoints on dead ports), except `cluster_0`,
//!   whose endpoints are U − 1 of the U upstreams.
//! - A change to a cluster moves one endpoint: for `cluster_i`, i ≥ 1, its `m`-th change
//!   moves endpoint `(m − 1) % 10` between two dead ports; for `cluster_0` the `m`-th change
//!   swaps the upstream left out (upstream `m % U` is the one not listed), so one endpoint
//!   moves from one live port to another and every request still has a live host.
//!   `--routed-steady` keeps `cluster_0` as it is (it is still in every push, unchanged), to
//!   tell the cost of applying the churn from the cost of a routed host changing.
//! - Churn: every 1 / `--pushes-per-s` seconds the control plane sends one SotW EDS response
//!   with the next batch: with the default of 1 push per second, all N assignments, each with
//!   one endpoint moved; with P pushes per second, the N / P clusters with `i % P` equal to the
//!   push's batch number. Either way every cluster changes once per second. A push goes out
//!   only once the previous one is ACKed (a tick that finds it unACKed is skipped and counted);
//!   any NACK ends the run with an error.
//!
//! Load: `load.rs`, an open-loop HTTP/1.1 generator at `--rate` requests per second (default
//! 5 000) over `--connections` keep-alive connections (default 10), `GET /` through the
//! listener, latency corrected for coordinated omission. It runs from before the first phase
//! to the end of the last, after `--warmup-s` seconds (default 3) of warm-up.
//!
//! Phases, each `--phase-s` seconds (default 20) after a 1 s unmeasured guard (so that a
//! churn phase's last apply is over before the next baseline starts): baseline, churn,
//! repeated `--cycles` times (default 3), and a last baseline. For each phase: requests, RPS,
//! latency p50 / p99 / p99.9 / max (every request that started in the phase), failed requests
//! and non-2xx answers (must be 0), the proxy's CPU (all threads, and per thread name), CPU
//! used outside the proxy and this driver and its upstreams, and for churn phases the pushes,
//! skipped ticks, time from each push to its ACK, and the latency of the requests that
//! overlapped an apply (push to ACK) against the others.
//!
//! Summary: the medians over baseline phases and over churn phases, the ratio of the churn
//! p99 median to the baseline p99 median (the target: ≤ 1.10), for each churn phase
//! its p99 over the mean of the two baselines around it, and the same percentiles over all
//! the requests of each kind of phase pooled (with their p99 ratio). A `/clusters` spot check at
//! the end checks `cluster_0` and two other clusters against the last push.
//!
//! With `--perf FILE`, `perf record` is attached to the proxy for the first churn phase only;
//! `--samples FILE` writes every request and push as CSV, to look at when the slow ones happen.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::load::{Generator, Sample};
use super::{
    Admin, Outside, Report, Resources, Run, any, cluster_name, eds_cluster, free_port, load_assignment, port, proc_cpu,
    round, spot_check, start_perf,
};

/// Unmeasured time before each phase, for the previous phase's last apply to finish.
const GUARD: Duration = Duration::from_secs(1);

/// The churn run's knobs (flags in `xds_scale.rs`'s usage).
pub struct ChurnArgs {
    pub upstream_bin: PathBuf,
    pub upstreams: usize,
    pub rate: u32,
    pub connections: usize,
    pub phase: Duration,
    pub cycles: usize,
    pub warmup: Duration,
    pub pushes_per_s: usize,
    pub routed_steady: bool,
    /// Writes every request (start µs, latency µs, status) and push (µs, ACK µs) here, as CSV.
    pub samples: Option<PathBuf>,
}

impl Default for ChurnArgs {
    fn default() -> ChurnArgs {
        ChurnArgs {
            upstream_bin: PathBuf::new(),
            upstreams: 3,
            rate: 5000,
            connections: 10,
            phase: Duration::from_secs(20),
            cycles: 3,
            warmup: Duration::from_secs(3),
            pushes_per_s: 1,
            routed_steady: false,
            samples: None,
        }
    }
}

impl ChurnArgs {
    /// Takes a churn flag and its value; false if `flag` is not one.
    pub fn flag(&mut self, flag: &str, value: &str, number: &dyn Fn(&str) -> u64) -> bool {
        match flag {
            "--upstream-bin" => self.upstream_bin = value.into(),
            "--upstreams" => self.upstreams = number(value) as usize,
            "--rate" => self.rate = number(value) as u32,
            "--connections" => self.connections = number(value) as usize,
            "--phase-s" => self.phase = Duration::from_secs(number(value)),
            "--cycles" => self.cycles = number(value) as usize,
            "--warmup-s" => self.warmup = Duration::from_secs(number(value)),
            "--pushes-per-s" => self.pushes_per_s = number(value) as usize,
            "--samples" => self.samples = Some(value.into()),
            _ => return false,
        }
        true
    }

    pub fn check(&self, clusters: usize) -> Result<(), String> {
        if self.upstream_bin.as_os_str().is_empty() {
            return Err("--churn needs --upstream-bin".into());
        }
        if self.upstreams < 2 {
            return Err("--upstreams: at least 2 (cluster_0 lists all but one)".into());
        }
        if self.pushes_per_s == 0 || self.pushes_per_s > clusters {
            return Err(format!("--pushes-per-s: between 1 and the number of clusters ({clusters})"));
        }
        if self.rate == 0 || self.connections == 0 || self.cycles == 0 || self.phase.is_zero() {
            return Err("--rate, --connections, --cycles and --phase-s must be positive".into());
        }
        Ok(())
    }
}

/// Starts the upstreams on free ports (one thread each) and waits until they accept.
pub fn start_upstreams(churn: &ChurnArgs, workdir: &Path) -> Vec<(Child, u16)> {
    let upstreams: Vec<(Child, u16)> = (0..churn.upstreams)
        .map(|k| {
            let port = free_port();
            let log = std::fs::File::create(workdir.join(format!("upstream_{k}.log"))).expect("create a log");
            let child = Command::new(&churn.upstream_bin)
                .args([port.to_string(), "1".into()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", churn.upstream_bin.display()));
            (child, port)
        })
        .collect();
    for (_, port) in &upstreams {
        let address = SocketAddr::from(([127, 0, 0, 1], *port));
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(address).is_err() {
            assert!(Instant::now() < until, "the upstream on port {port} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    upstreams
}

impl Resources {
    /// The churn run's resources: the scale run's clusters and endpoints, with change `m` of
    /// `cluster_i` moving endpoint `(m - 1) % endpoints` between two dead ports (so the table
    /// repeats after `2 × endpoints` changes), and `cluster_0` on the live upstreams `live`.
    pub fn churn(n: usize, endpoints: usize, live: &[u16], churn: &ChurnArgs) -> Resources {
        // How many times endpoint j has moved after m changes.
        let moves = |m: usize, j: usize| if m > j { (m - 1 - j) / endpoints + 1 } else { 0 };
        let assignments = (0..2 * endpoints)
            .map(|m| {
                (0..n).map(|i| any(&load_assignment(i, (0..endpoints).map(|j| port(moves(m, j) % 2, i, j))))).collect()
            })
            .collect();
        let without = |left_out: usize| {
            let ports = live.iter().enumerate().filter(|&(k, _)| k != left_out).map(|(_, &p)| u32::from(p));
            any(&load_assignment(0, ports))
        };
        let routed = if churn.routed_steady { vec![without(0)] } else { (0..live.len()).map(without).collect() };
        Resources {
            clusters: (0..n).map(|i| any(&eds_cluster(i))).collect(),
            assignments,
            routed: Some(routed),
            batches: churn.pushes_per_s,
            index: (0..n).map(|i| (cluster_name(i), i)).collect(),
        }
    }
}

/// utime + stime (s) of each of `pid`'s threads, summed by thread name.
fn thread_cpu(pid: u32) -> BTreeMap<String, f64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return by_name };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
        *by_name.entry(name).or_insert(0.0) += ticks / super::clock_ticks();
    }
    by_name
}

/// A phase being measured.
struct Phase {
    churn: bool,
    from: Instant,
    cpu: f64,
    threads: BTreeMap<String, f64>,
    outside: Outside,
}

/// A measured phase, before its requests are counted.
struct Measured {
    churn: bool,
    from: Instant,
    to: Instant,
    cpu: f64,
    threads: BTreeMap<String, f64>,
    outside: f64,
    /// The steps pushed in it.
    steps: Vec<usize>,
    skipped: usize,
}

impl Phase {
    fn start(pid: u32, churn: bool) -> Phase {
        Phase {
            churn,
            from: Instant::now(),
            cpu: proc_cpu(pid).unwrap_or(0.0),
            threads: thread_cpu(pid),
            outside: Outside::start(pid),
        }
    }

    fn end(self, pid: u32, steps: Vec<usize>, skipped: usize) -> Measured {
        let to = Instant::now();
        let threads = thread_cpu(pid)
            .into_iter()
            .map(|(name, cpu)| {
                let before = self.threads.get(&name).copied().unwrap_or(0.0);
                (name, cpu - before)
            })
            .filter(|(_, cpu)| *cpu > 0.0)
            .collect();
        Measured {
            churn: self.churn,
            from: self.from,
            to,
            cpu: proc_cpu(pid).unwrap_or(self.cpu) - self.cpu,
            threads,
            outside: self.outside.seconds(),
            steps,
            skipped,
        }
    }
}

/// Latency percentiles of `latencies` (ns, sorted), in µs.
fn percentiles(latencies: &[u64]) -> Value {
    let at = |q: f64| {
        if latencies.is_empty() {
            return Value::Null;
        }
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        json!(round(latencies[rank - 1] as f64 / 1000.0, 1))
    };
    json!({ "p50_us": at(0.50), "p99_us": at(0.99), "p999_us": at(0.999), "max_us": at(1.0) })
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// The churn run, once the proxy is ready: warm-up, phases, summary and spot check.
pub async fn run(
    setup: &mut Run<'_>,
    churn: &ChurnArgs,
    report: &mut Report,
    perf: &mut Option<Child>,
) -> Result<(), String> {
    let pid = setup.pid;
    let listener = setup.listener.expect("a churn run has a listener");
    let label = report.0["proxy"].as_str().unwrap_or_default().to_owned();

    // The route works before anything is measured (both proxies open their listeners once
    // the initial clusters are in, which /ready already waited for; this allows for a lag).
    let mut client = Admin::new(listener);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match client.get("/").await {
            Ok((200, body)) if &body[..] == b"ok\n" => break,
            other if Instant::now() > until => {
                return Err(format!("GET / through the listener: {:?}", other.map(|(s, _)| s)));
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    drop(client);

    report.set(
        "churn_setup",
        json!({
            "upstreams": churn.upstreams,
            "rate": churn.rate,
            "connections": churn.connections,
            "phase_s": churn.phase.as_secs(),
            "cycles": churn.cycles,
            "warmup_s": churn.warmup.as_secs(),
            "pushes_per_s": churn.pushes_per_s,
            "clusters_per_push": setup.resources.clusters.len().div_ceil(churn.pushes_per_s),
            "routed_steady": churn.routed_steady,
        }),
    );
    let generator = Generator::start(listener, churn.rate, churn.connections);
    tokio::time::sleep(churn.warmup).await;

    let plan: Vec<bool> = (0..churn.cycles).flat_map(|_| [false, true]).chain([false]).collect();
    let period = Duration::from_secs(1) / churn.pushes_per_s as u32;
    let ticks = (churn.phase.as_secs_f64() * churn.pushes_per_s as f64).round() as usize;
    let mut step = 0;
    let mut measured = Vec::new();
    let mut failure = None;
    for (index, &churning) in plan.iter().enumerate() {
        tokio::time::sleep(GUARD).await;
        if churning
            && measured.iter().all(|m: &Measured| !m.churn)
            && let Some(file) = &setup.args.perf
        {
            *perf = Some(start_perf(file, pid));
        }
        let phase = Phase::start(pid, churning);
        let (mut steps, mut skipped) = (Vec::new(), 0);
        if churning {
            for tick in 0..ticks {
                tokio::time::sleep_until((phase.from + period * tick as u32).into()).await;
                let (acked, nacks) = {
                    let p = setup.progress.borrow();
                    (p.acked(step).is_some(), p.nacks.len())
                };
                if nacks > 0 {
                    failure = Some(format!("NACK during the churn: {:?}", setup.progress.borrow().nacks));
                    break;
                }
                if !acked {
                    skipped += 1;
                    continue;
                }
                step += 1;
                setup.target.send_replace(step);
                steps.push(step);
            }
        }
        tokio::time::sleep_until((phase.from + churn.phase).into()).await;
        let m = phase.end(pid, steps, skipped);
        eprintln!(
            "xds_scale: {label}: phase {index} ({}) {:.1} s, proxy CPU {:.2} s, pushes {}, skipped {}, outside CPU {:.2} s",
            if churning { "churn" } else { "baseline" },
            m.to.duration_since(m.from).as_secs_f64(),
            m.cpu,
            m.steps.len(),
            m.skipped,
            m.outside
        );
        if churning && let Some(mut perf) = perf.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
            let _ = perf.wait();
        }
        measured.push(m);
        if failure.is_some() {
            break;
        }
    }
    let t0 = generator.t0;
    let samples = generator.stop();
    let progress = setup.progress.borrow().clone();

    if let Some(file) = &churn.samples {
        write_samples(file, &samples, t0, &progress).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    let phases: Vec<Value> = measured.iter().map(|m| phase_report(m, &samples, t0, &progress)).collect();
    report.set("phases", phases.clone());
    report.set("load_requests", samples.len());
    let mut summary = summary(&phases);
    // Every request of every phase of a kind together: more samples than any one phase, for
    // a second look at the ratio (the medians above resist one disturbed phase; this does not).
    let pooled = |churning: bool| {
        let all: Vec<&Sample> =
            measured.iter().filter(|m| m.churn == churning).flat_map(|m| in_phase(m, &samples, t0)).collect();
        latency(&all)
    };
    let (baseline, churning) = (pooled(false), pooled(true));
    summary["p99_ratio_pooled"] = match (churning["p99_us"].as_f64(), baseline["p99_us"].as_f64()) {
        (Some(c), Some(b)) if b > 0.0 => json!(round(c / b, 3)),
        _ => Value::Null,
    };
    summary["pooled"] = json!({ "baseline": baseline, "churn": churning });
    report.set("summary", summary);
    report.set("eds_pushes", progress.eds_pushes);
    report.set("nacks", progress.nacks.clone());
    report.set("streams", progress.streams);
    if let Some(failure) = failure {
        return Err(failure);
    }
    let check = tokio::time::timeout(Duration::from_secs(30), spot_check(setup.admin, &setup.resources, step))
        .await
        .unwrap_or_else(|_| json!({ "ok": false, "error": "timeout" }));
    eprintln!("xds_scale: {label}: /clusters spot check {check}");
    report.set("spot_check", check);
    Ok(())
}

/// The requests that started in phase `m` (`samples` are in order of start).
fn in_phase<'a>(m: &Measured, samples: &'a [Sample], t0: Instant) -> &'a [Sample] {
    let (from, to) = (offset(t0, m.from), offset(t0, m.to));
    let first = samples.partition_point(|s| u64::from(s.start_us) < from);
    let last = samples.partition_point(|s| u64::from(s.start_us) < to);
    &samples[first..last]
}

/// µs from `t0` to `t`.
fn offset(t0: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(t0).as_micros() as u64
}

/// Latency summary of some samples: count and percentiles.
fn latency(samples: &[&Sample]) -> Value {
    let mut latencies: Vec<u64> = samples.iter().map(|s| s.latency_ns).collect();
    latencies.sort_unstable();
    let mut out = percentiles(&latencies);
    out["requests"] = json!(samples.len());
    out
}

/// What one phase measured: its requests (those that started in it), the proxy's CPU and,
/// for a churn phase, its pushes.
fn phase_report(m: &Measured, samples: &[Sample], t0: Instant, progress: &super::Progress) -> Value {
    let (from, to) = (offset(t0, m.from), offset(t0, m.to));
    let seconds = m.to.duration_since(m.from).as_secs_f64();
    let selected: Vec<&Sample> = in_phase(m, samples, t0).iter().collect();
    let errors = selected.iter().filter(|s| s.status == 0).count();
    let non_2xx = selected.iter().filter(|s| s.status != 0 && !(200..300).contains(&s.status)).count();
    let mut out = json!({
        "kind": if m.churn { "churn" } else { "baseline" },
        "seconds": round(seconds, 2),
        "requests": selected.len(),
        "rps": round(selected.len() as f64 / seconds, 0),
        "errors": errors,
        "non_2xx": non_2xx,
        "latency": latency(&selected),
        "proxy_cpu_s": round(m.cpu, 2),
        "proxy_cpu_pct": round(m.cpu / seconds * 100.0, 1),
        "threads_cpu_s": m.threads.iter().map(|(k, v)| (k.clone(), json!(round(*v, 2)))).collect::<serde_json::Map<_, _>>(),
        "outside_cpu_s": round(m.outside, 2),
    });
    if m.churn {
        // Apply windows: each push to its ACK (to the phase's end if it never came).
        let windows: Vec<(u64, u64)> = m
            .steps
            .iter()
            .filter_map(|&step| {
                let pushed = progress.pushed(step)?;
                let acked = progress.acked(step).unwrap_or(m.to);
                Some((offset(t0, pushed), offset(t0, acked)))
            })
            .collect();
        let ack_ms: Vec<f64> = windows.iter().map(|&(a, b)| (b - a) as f64 / 1000.0).collect();
        let applying: u64 = windows.iter().map(|&(a, b)| b - a).sum();
        let overlaps = |s: &&Sample| windows.iter().any(|&(a, b)| u64::from(s.start_us) <= b && s.end_us() >= a);
        let (during, between): (Vec<&Sample>, Vec<&Sample>) = selected.iter().partition(|s| overlaps(s));
        out["pushes"] = json!(m.steps.len());
        out["skipped_ticks"] = json!(m.skipped);
        out["ack_ms"] = json!({
            "p50": median(ack_ms.clone()).map(|v| round(v, 1)),
            "max": ack_ms.iter().copied().reduce(f64::max).map(|v| round(v, 1)),
        });
        out["applying_pct"] = json!(round(applying as f64 / (to - from) as f64 * 100.0, 1));
        out["during_apply"] = latency(&during);
        out["between_applies"] = latency(&between);
    }
    out
}

/// Medians over the baseline and the churn phases, and the p99 ratios.
fn summary(phases: &[Value]) -> Value {
    let of = |kind: &str, f: &dyn Fn(&Value) -> Option<f64>| {
        median(phases.iter().filter(|p| p["kind"] == kind).filter_map(f).collect()).map(|v| round(v, 1))
    };
    let side = |kind: &str| {
        json!({
            "phases": phases.iter().filter(|p| p["kind"] == kind).count(),
            "p50_us": of(kind, &|p| p["latency"]["p50_us"].as_f64()),
            "p99_us": of(kind, &|p| p["latency"]["p99_us"].as_f64()),
            "p999_us": of(kind, &|p| p["latency"]["p999_us"].as_f64()),
            "rps": of(kind, &|p| p["rps"].as_f64()),
            "proxy_cpu_pct": of(kind, &|p| p["proxy_cpu_pct"].as_f64()),
            "outside_cpu_s_max": phases.iter().filter(|p| p["kind"] == kind)
                .filter_map(|p| p["outside_cpu_s"].as_f64()).reduce(f64::max),
        })
    };
    let (baseline, churn) = (side("baseline"), side("churn"));
    let ratio = match (churn["p99_us"].as_f64(), baseline["p99_us"].as_f64()) {
        (Some(c), Some(b)) if b > 0.0 => Some(round(c / b, 3)),
        _ => None,
    };
    // Each churn phase against the mean of the baselines just before and after it.
    let p99 = |p: &Value| p["latency"]["p99_us"].as_f64();
    let pairs: Vec<f64> = phases
        .iter()
        .enumerate()
        .filter(|(_, p)| p["kind"] == "churn")
        .filter_map(|(i, p)| {
            let around: Vec<f64> = [i.checked_sub(1), Some(i + 1)]
                .into_iter()
                .flatten()
                .filter_map(|j| phases.get(j))
                .filter(|q| q["kind"] == "baseline")
                .filter_map(p99)
                .collect();
            let mean = around.iter().sum::<f64>() / around.len() as f64;
            Some(round(p99(p)? / mean, 3))
        })
        .collect();
    let count = |field: &str| phases.iter().filter_map(|p| p[field].as_u64()).sum::<u64>();
    json!({
        "baseline": baseline,
        "churn": churn,
        "p99_ratio": ratio,
        "p99_ratio_per_cycle": pairs,
        "p99_ratio_per_cycle_median": median(pairs.clone()).map(|v| round(v, 3)),
        "target_met": ratio.map(|r| r <= 1.10),
        "errors": count("errors"),
        "non_2xx": count("non_2xx"),
        "skipped_ticks": count("skipped_ticks"),
    })
}

/// `--samples`: one line per request (`request,<start µs>,<latency µs>,<status>`) and per
/// push (`push,<pushed µs>,<ACK µs>,<step>`), times from the generator's `t0`.
fn write_samples(file: &Path, samples: &[Sample], t0: Instant, progress: &super::Progress) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    for s in samples {
        writeln!(out, "request,{},{:.1},{}", s.start_us, s.latency_ns as f64 / 1000.0, s.status)?;
    }
    for (step, pushed) in progress.eds_pushed.iter().enumerate().skip(1) {
        if let (Some(pushed), Some(acked)) = (pushed, progress.acked(step)) {
            writeln!(out, "push,{},{},{step}", offset(t0, *pushed), offset(t0, acked))?;
        }
    }
    out.flush()
}
