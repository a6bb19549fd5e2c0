//! xDS scale benchmark for `bench/xds_scale.sh`: a standalone ADS control plane (state of the
//! world) plus a driver that starts one proxy (legate or Envoy), pushes N EDS clusters and
//! their assignments, and measures how long the proxy takes to take them in, what it costs,
//! and how it handles updates that move every endpoint.
//!
//! ```text
//! cargo run --release --example xds_scale -- --proxy legate|envoy --bin PATH --clusters N
//!     [--endpoints 10] [--deadline-s 300] [--workdir DIR] [--base-id ID] [--proxy-cpu CPU]
//!     [--log-level warning] [--stats-update-max 10000] [--perf FILE] [--load-only]
//!     [-- EXTRA PROXY ARGS...]
//! ```
//!
//! What a run does, in order (load times are from the moment the proxy opens its ADS stream):
//!
//! 1. Builds every resource up front: N clusters `cluster_<i>` (`type: EDS`, `eds_config:
//!    { ads: {}, resource_api_version: V3, initial_fetch_timeout: 0s }`) and four versions
//!    `e1`..`e4` of their `ClusterLoadAssignment`s, 10 endpoints each on 127.0.0.1 (nothing
//!    listens there; the proxies only hold the addresses). Version index `v` uses ports
//!    `10000 * (v + 1) + 10 * (i % 1000) + j`, so every endpoint changes between versions.
//! 2. Serves ADS on a loopback port and starts the proxy (`taskset -c CPU` when `--proxy-cpu`
//!    is given) with a bootstrap holding an admin port, a static HTTP/2 `xds` cluster and
//!    `dynamic_resources` (ads_config + cds_config). The first CDS request is answered with
//!    all N clusters; every EDS request whose names differ from the last answer is answered
//!    with the requested assignments. Request arrival, pushes, ACKs and NACKs are timed, and
//!    the proxy's CPU time and memory are read when its CDS ACK arrives.
//! 3. Load: polls `/ready` every 20 ms and `/stats?filter=cluster_manager.active_clusters`
//!    (adaptively: every max(20 ms, 10 × its last latency), so a slow `/stats` cannot eat
//!    the admin thread, which in Envoy is the thread applying xDS) until `/ready` is 200 and
//!    the EDS response is ACKed; then checks that `active_clusters` = N + 1 (the static `xds`
//!    cluster counts). Load time = first `/ready` 200. CPU = Δ(utime + stime) of the proxy
//!    from stream start to then; peak RSS = VmHWM then; RSS after = VmRSS one second later.
//! 4. Update (quiet, no admin polling): pushes `e2` to the names the proxy subscribed and
//!    waits for the ACK of that nonce. Time, CPU, VmHWM and VmRSS (one second later).
//! 5. Update `e3` with `/ready` polled back to back (20 ms apart) from 300 ms before the push
//!    until the ACK: max and median latency of the requests that overlapped the apply.
//! 6. For N ≤ `--stats-update-max`: update `e4` with `/ready` and `/stats?filter=cluster_manager`
//!    both polled that way (the two share the admin thread in both proxies).
//! 7. Spot check: streams `/clusters` and checks that `cluster_0`, `cluster_<N/2>` and
//!    `cluster_<N-1>` list exactly the 10 ports of the last version pushed.
//!
//! `--load-only` ends the run after step 3. `--perf FILE` attaches `perf record -e cpu-clock -F 499 --call-graph dwarf` to the proxy from
//! the moment its ADS stream opens to the end of the run (the figures then include perf's
//! overhead; it is for finding where the time goes). Thread names tell the phases apart in
//! `perf report --comms`: legate applies xDS on `legate-xds` and serves admin on its own thread.
//!
//! Prints one JSON object on stdout (progress to stderr) and kills the proxy; while it runs,
//! the proxy's pid is in `<workdir>/<proxy>_<N>.pid`. A phase that
//! misses `--deadline-s` (counted from the proxy's start) ends the run with `"error"` and the
//! figures gathered so far. The machine's busy CPU outside the proxy and this driver is
//! reported per phase (`outside_cpu_s`), to spot runs disturbed by other work.
//!
//! `--churn` runs the EDS churn benchmark instead of steps 4 to 7 (for `bench/eds_churn.sh`;
//! the phases, the load and what is reported are documented in `examples/xds_bench/churn.rs`):
//!
//! ```text
//! xds_scale --churn --proxy legate|envoy --bin PATH --upstream-bin PATH [--clusters 1000]
//!     [--upstreams 3] [--rate 5000] [--connections 10] [--phase-s 20] [--cycles 3]
//!     [--warmup-s 3] [--pushes-per-s 1] [--routed-steady] [--samples FILE] [... the flags above]
//! ```

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, Duration as ProtoDuration};
use futures_util::Stream;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use prost::{Message, Name};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINT_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Assignment versions built up front: the initial one and two updates.
const VERSIONS: usize = 4;

#[path = "xds_bench/churn.rs"]
mod churn;
#[path = "xds_bench/load.rs"]
mod load;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

// ---------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proxy {
    Legate,
    Envoy,
}

struct Args {
    proxy: Proxy,
    bin: PathBuf,
    clusters: usize,
    endpoints: usize,
    deadline: Duration,
    workdir: PathBuf,
    base_id: u32,
    proxy_cpu: Option<String>,
    log_level: String,
    /// The `/stats`-polled update runs only up to this many clusters.
    stats_update_max: usize,
    /// Records the proxy with `perf record -p` into this file for the whole run.
    perf: Option<PathBuf>,
    /// Ends the run after the load phase (for profiling the load alone).
    load_only: bool,
    /// `--churn`: the EDS churn benchmark instead of the updates.
    churn: Option<churn::ChurnArgs>,
    extra: Vec<String>,
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "xds_scale: {problem}\nusage: xds_scale --proxy legate|envoy --bin PATH --clusters N [--endpoints 10] \
         [--deadline-s 300] [--workdir DIR] [--base-id ID] [--proxy-cpu CPU] [--log-level LEVEL] [--stats-update-max N] [--perf FILE] [--load-only] [-- PROXY ARGS...]\n       \
         xds_scale --churn --proxy legate|envoy --bin PATH --upstream-bin PATH [--clusters 1000] [--upstreams 3] [--rate 5000] \
         [--connections 10] [--phase-s 20] [--cycles 3] [--warmup-s 3] [--pushes-per-s 1] [--routed-steady] [--samples FILE] [...]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        proxy: Proxy::Legate,
        bin: PathBuf::new(),
        clusters: 1000,
        endpoints: 10,
        deadline: Duration::from_secs(300),
        workdir: PathBuf::from("bench/out/xds_scale"),
        base_id: 0,
        proxy_cpu: None,
        log_level: "warning".into(),
        stats_update_max: 10_000,
        perf: None,
        load_only: false,
        churn: None,
        extra: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--" {
            args.extra = it.by_ref().collect();
            break;
        }
        if flag == "--load-only" {
            args.load_only = true;
            continue;
        }
        if flag == "--churn" || flag == "--routed-steady" {
            let churn = args.churn.get_or_insert_with(churn::ChurnArgs::default);
            churn.routed_steady |= flag == "--routed-steady";
            continue;
        }
        let value = it.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = |v: &str| v.parse::<u64>().unwrap_or_else(|_| usage(&format!("{flag}: not a number: {v}")));
        match flag.as_str() {
            "--proxy" => {
                args.proxy = match value.as_str() {
                    "legate" => Proxy::Legate,
                    "envoy" => Proxy::Envoy,
                    other => usage(&format!("unknown proxy {other}")),
                }
            }
            "--bin" => args.bin = value.into(),
            "--clusters" => args.clusters = number(&value) as usize,
            "--endpoints" => args.endpoints = number(&value) as usize,
            "--deadline-s" => args.deadline = Duration::from_secs(number(&value)),
            "--workdir" => args.workdir = value.into(),
            "--base-id" => args.base_id = number(&value) as u32,
            "--proxy-cpu" => args.proxy_cpu = Some(value),
            "--log-level" => args.log_level = value,
            "--stats-update-max" => args.stats_update_max = number(&value) as usize,
            "--perf" => args.perf = Some(value.into()),
            other => {
                let churn = args.churn.get_or_insert_with(churn::ChurnArgs::default);
                if !churn.flag(other, &value, &number) {
                    usage(&format!("unknown flag {other}"))
                }
            }
        }
    }
    if args.bin.as_os_str().is_empty() {
        usage("--bin is required");
    }
    if let Some(churn) = &args.churn
        && let Err(problem) = churn.check(args.clusters)
    {
        usage(&problem)
    }
    args
}

// ---------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------

fn cluster_name(i: usize) -> String {
    format!("cluster_{i}")
}

/// Port of endpoint `j` of cluster `i` in assignment version `v` (0-based).
fn port(v: usize, i: usize, j: usize) -> u32 {
    (10_000 * (v + 1) + 10 * (i % 1000) + j) as u32
}

fn any<M: Message + Name>(m: &M) -> Any {
    Any { type_url: M::type_url(), value: m.encode_to_vec() }
}

fn eds_cluster(i: usize) -> Cluster {
    Cluster {
        name: cluster_name(i),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        connect_timeout: Some(ProtoDuration { seconds: 1, nanos: 0 }),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ConfigSource {
                config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
                resource_api_version: ApiVersion::V3 as i32,
                initial_fetch_timeout: Some(ProtoDuration { seconds: 0, nanos: 0 }),
                ..Default::default()
            }),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

/// Assignment version `v` of cluster `i` in the scale runs: every endpoint moves between versions.
fn assignment(v: usize, i: usize, endpoints: usize) -> ClusterLoadAssignment {
    load_assignment(i, (0..endpoints).map(|j| port(v, i, j)))
}

/// Cluster `i`'s assignment: one locality with an endpoint on 127.0.0.1 for each port.
fn load_assignment(i: usize, ports: impl Iterator<Item = u32>) -> ClusterLoadAssignment {
    let lb_endpoints = ports
        .map(|port| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        address: "127.0.0.1".into(),
                        port_specifier: Some(PortSpecifier::PortValue(port)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster_name(i),
        endpoints: vec![LocalityLbEndpoints { lb_endpoints, ..Default::default() }],
        ..Default::default()
    }
}

/// Everything the control plane serves, encoded once before the proxy starts.
///
/// EDS pushes are numbered: step 0 is the initial push, each later step a new version of
/// the assignments. Step `s` changes the clusters `i` with `(s - 1) % batches == i % batches`
/// (every cluster when `batches` is 1, as in the scale runs), and cluster `i` after its
/// `m`-th change serves `assignments[m % len][i]` (or `routed[m % len]` for `cluster_0`).
struct Resources {
    clusters: Vec<Any>,
    /// `assignments[m][i]`: cluster `i` after `m` changes (modulo the table's length).
    assignments: Vec<Vec<Any>>,
    /// Churn: `cluster_0`'s versions (its endpoints are the live upstreams), by `m % len`.
    routed: Option<Vec<Any>>,
    /// Pushes that one round of changes (one change to every cluster) is spread over.
    batches: usize,
    index: HashMap<String, usize>,
}

impl Resources {
    fn build(n: usize, endpoints: usize) -> Resources {
        Resources {
            clusters: (0..n).map(|i| any(&eds_cluster(i))).collect(),
            assignments: (0..VERSIONS).map(|v| (0..n).map(|i| any(&assignment(v, i, endpoints))).collect()).collect(),
            routed: None,
            batches: 1,
            index: (0..n).map(|i| (cluster_name(i), i)).collect(),
        }
    }

    /// How many times cluster `i` has changed once step `step` is applied.
    fn changes(&self, step: usize, i: usize) -> usize {
        let batch = i % self.batches;
        if step > batch { (step - 1 - batch) / self.batches + 1 } else { 0 }
    }

    /// Cluster `i`'s assignment at step `step`.
    fn assignment(&self, step: usize, i: usize) -> &Any {
        let m = self.changes(step, i);
        match &self.routed {
            Some(routed) if i == 0 => &routed[m % routed.len()],
            _ => &self.assignments[m % self.assignments.len()][i],
        }
    }

    /// The ports of cluster `i`'s endpoints at step `step`.
    fn ports(&self, step: usize, i: usize) -> BTreeSet<u32> {
        let la = ClusterLoadAssignment::decode(self.assignment(step, i).value.as_slice()).expect("our own encoding");
        la.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .filter_map(|e| match &e.host_identifier {
                Some(HostIdentifier::Endpoint(Endpoint { address: Some(a), .. })) => match &a.address {
                    Some(AddressKind::SocketAddress(SocketAddress {
                        port_specifier: Some(PortSpecifier::PortValue(p)),
                        ..
                    })) => Some(*p),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    fn bytes(&self) -> (usize, usize) {
        let size = |v: &[Any]| v.iter().map(|a| a.value.len()).sum::<usize>();
        (size(&self.clusters), size(&self.assignments[0]))
    }
}

// ---------------------------------------------------------------------------------------
// Control plane
// ---------------------------------------------------------------------------------------

/// What the control plane has seen, for the driver (`watch`ed).
#[derive(Clone, Default)]
struct Progress {
    streams: u32,
    started: Option<Instant>,
    cpu_at_start: f64,
    first_cds_request: Option<Instant>,
    cds_pushed: Option<Instant>,
    cds_ack: Option<Instant>,
    /// The proxy's CPU seconds, VmRSS and VmHWM (KiB) when its CDS ACK arrived.
    at_cds_ack: Option<(f64, Option<u64>, Option<u64>)>,
    first_eds_request: Option<Instant>,
    first_eds_names: usize,
    eds_requests: u32,
    eds_pushes: u32,
    /// First push and ACK of each EDS step (by step; see [`Resources`]).
    eds_pushed: Vec<Option<Instant>>,
    eds_ack: Vec<Option<Instant>>,
    nacks: Vec<String>,
}

impl Progress {
    /// When step `step` was first pushed / ACKed.
    fn pushed(&self, step: usize) -> Option<Instant> {
        self.eds_pushed.get(step).copied().flatten()
    }

    fn acked(&self, step: usize) -> Option<Instant> {
        self.eds_ack.get(step).copied().flatten()
    }
}

/// Records `at` as the first time of `step` in `times`.
fn first_time(times: &mut Vec<Option<Instant>>, step: usize, at: Instant) {
    if times.len() <= step {
        times.resize(step + 1, None);
    }
    times[step].get_or_insert(at);
}

struct ControlPlane {
    resources: Arc<Resources>,
    progress: watch::Sender<Progress>,
    /// The EDS step the driver wants served.
    target: watch::Receiver<usize>,
    /// The proxy's pid, to read its CPU time when its stream starts.
    pid: Arc<AtomicU32>,
    /// How long a new stream waits before its requests are answered (lets `--perf` attach).
    hold: Duration,
}

/// The tonic service: a handle on the control plane.
#[derive(Clone)]
struct Ads(Arc<ControlPlane>);

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let now = Instant::now();
        let cpu = proc_cpu(self.0.pid.load(Ordering::Relaxed)).unwrap_or(0.0);
        self.0.progress.send_modify(|p| {
            p.streams += 1;
            if p.started.is_none() {
                p.started = Some(now);
                p.cpu_at_start = cpu;
            } else {
                eprintln!("xds_scale: the proxy opened ADS stream #{}", p.streams);
            }
        });
        let mut inbound = request.into_inner();
        let (requests_tx, requests) = mpsc::unbounded_channel();
        // Requests are timestamped as they arrive, whatever the stream task is doing.
        tokio::spawn(async move {
            while let Ok(Some(request)) = inbound.message().await {
                if requests_tx.send((Instant::now(), request)).is_err() {
                    return;
                }
            }
        });
        let (responses, responses_rx) = mpsc::unbounded_channel();
        let session = Session {
            cp: self.0.clone(),
            responses,
            nonce: 0,
            cds_nonce: String::new(),
            eds_nonce: String::new(),
            eds_step: 0,
            eds_names: Vec::new(),
            eds_pushed_names: None,
        };
        let hold = self.0.hold;
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            session.run(requests).await
        });
        let outbound =
            futures_util::stream::unfold(responses_rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        Ok(Response::new(Box::pin(outbound)))
    }

    async fn delta_aggregated_resources(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("xds_scale serves state-of-the-world ADS only"))
    }
}

/// One SotW ADS stream.
struct Session {
    cp: Arc<ControlPlane>,
    responses: mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>,
    nonce: u64,
    cds_nonce: String,
    eds_nonce: String,
    /// The EDS step last pushed.
    eds_step: usize,
    /// The names of the proxy's last EDS request.
    eds_names: Vec<String>,
    /// The names of the last EDS push (sorted), if any.
    eds_pushed_names: Option<Vec<String>>,
}

impl Session {
    async fn run(mut self, mut requests: mpsc::UnboundedReceiver<(Instant, DiscoveryRequest)>) {
        let mut target = self.cp.target.clone();
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    Some((at, request)) => self.on_request(at, request),
                    None => return,
                },
                changed = target.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let step = *target.borrow_and_update();
                    if self.eds_pushed_names.is_some() && step != self.eds_step {
                        self.push_eds(step, true);
                    }
                }
            }
        }
    }

    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        format!("n{}", self.nonce)
    }

    fn on_request(&mut self, at: Instant, request: DiscoveryRequest) {
        if let Some(error) = &request.error_detail {
            let message = format!("NACK of {} nonce {}: {}", request.type_url, request.response_nonce, error.message);
            eprintln!("xds_scale: {message}");
            self.cp.progress.send_modify(|p| p.nacks.push(message));
        }
        let acked = request.error_detail.is_none() && !request.response_nonce.is_empty();
        match request.type_url.as_str() {
            CLUSTER_TYPE => {
                if acked && request.response_nonce == self.cds_nonce {
                    let pid = self.cp.pid.load(Ordering::Relaxed);
                    let usage = (proc_cpu(pid).unwrap_or(0.0), proc_kib(pid, "VmRSS"), proc_kib(pid, "VmHWM"));
                    self.cp.progress.send_modify(|p| {
                        p.cds_ack.get_or_insert(at);
                        p.at_cds_ack.get_or_insert(usage);
                    });
                }
                if self.cds_nonce.is_empty() {
                    self.cp.progress.send_modify(|p| {
                        p.first_cds_request.get_or_insert(at);
                    });
                    self.cds_nonce = self.next_nonce();
                    let response = DiscoveryResponse {
                        version_info: "c1".into(),
                        resources: self.cp.resources.clusters.clone(),
                        type_url: CLUSTER_TYPE.into(),
                        nonce: self.cds_nonce.clone(),
                        ..Default::default()
                    };
                    let _ = self.responses.send(Ok(response));
                    let pushed = Instant::now();
                    self.cp.progress.send_modify(|p| {
                        p.cds_pushed.get_or_insert(pushed);
                    });
                }
            }
            ENDPOINT_TYPE => {
                let names = request.resource_names.len();
                self.cp.progress.send_modify(|p| {
                    p.eds_requests += 1;
                    if p.first_eds_request.is_none() {
                        p.first_eds_request = Some(at);
                        p.first_eds_names = names;
                    }
                });
                if acked
                    && request.response_nonce == self.eds_nonce
                    && request.version_info == format!("e{}", self.eds_step + 1)
                {
                    let step = self.eds_step;
                    self.cp.progress.send_modify(|p| first_time(&mut p.eds_ack, step, at));
                }
                let mut sorted = request.resource_names.clone();
                sorted.sort_unstable();
                self.eds_names = request.resource_names;
                if self.eds_pushed_names.as_ref() != Some(&sorted) {
                    let step = if self.eds_pushed_names.is_none() { *self.cp.target.borrow() } else { self.eds_step };
                    self.eds_pushed_names = Some(sorted);
                    self.push_eds(step, false);
                }
            }
            _ => {}
        }
    }

    /// Pushes step `step`'s assignments for the names last requested: all of them, or
    /// (`changed_only`) those that changed since the last push (SotW EDS responses need not
    /// repeat unchanged resources).
    fn push_eds(&mut self, step: usize, changed_only: bool) {
        let resources = &self.cp.resources;
        let last = self.eds_step;
        let batch: Vec<Any> = self
            .eds_names
            .iter()
            .filter_map(|name| resources.index.get(name))
            .filter(|&&i| !changed_only || resources.changes(step, i) != resources.changes(last, i))
            .map(|&i| resources.assignment(step, i).clone())
            .collect();
        self.eds_step = step;
        self.eds_nonce = self.next_nonce();
        let response = DiscoveryResponse {
            version_info: format!("e{}", step + 1),
            resources: batch,
            type_url: ENDPOINT_TYPE.into(),
            nonce: self.eds_nonce.clone(),
            ..Default::default()
        };
        let _ = self.responses.send(Ok(response));
        let pushed = Instant::now();
        self.cp.progress.send_modify(|p| {
            p.eds_pushes += 1;
            first_time(&mut p.eds_pushed, step, pushed);
        });
    }
}

async fn serve(cp: Arc<ControlPlane>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the control plane");
    let address = listener.local_addr().expect("local address");
    let service = AggregatedDiscoveryServiceServer::new(Ads(cp))
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .initial_stream_window_size(16 << 20)
                    .initial_connection_window_size(16 << 20)
                    .max_frame_size(1 << 20)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

// ---------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// utime + stime of `pid` (0: this process) in seconds, all threads.
fn proc_cpu(pid: u32) -> Option<f64> {
    let path = if pid == 0 { "/proc/self/stat".to_owned() } else { format!("/proc/{pid}/stat") };
    let stat = std::fs::read_to_string(path).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Busy CPU seconds of the whole machine (all CPUs), from `/proc/stat`.
fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return 0.0 };
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    busy / clock_ticks()
}

/// CPU used by everything but the proxy, this driver and its other children (the churn
/// runs' upstreams), for the noise column.
struct Outside {
    busy: f64,
    /// The processes that are ours (0: this driver), with their CPU seconds at the start.
    ours: Vec<(u32, f64)>,
}

impl Outside {
    fn start(proxy: u32) -> Outside {
        let mut ours = vec![proxy, 0];
        ours.extend(OURS.lock().unwrap().iter().copied());
        Outside { busy: machine_busy(), ours: ours.into_iter().map(|p| (p, proc_cpu(p).unwrap_or(0.0))).collect() }
    }

    fn seconds(&self) -> f64 {
        let ours: f64 = self.ours.iter().map(|&(pid, start)| proc_cpu(pid).unwrap_or(start) - start).sum();
        (machine_busy() - self.busy - ours).max(0.0)
    }
}

/// Other processes of this run whose CPU is not "outside" (the churn runs' upstreams).
static OURS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn mib(kib: Option<u64>) -> Value {
    kib.map_or(Value::Null, |k| json!(round(k as f64 / 1024.0, 1)))
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0, 1)
}

// ---------------------------------------------------------------------------------------
// Admin client
// ---------------------------------------------------------------------------------------

/// One keep-alive HTTP/1.1 connection to the admin port, reopened when it breaks.
struct Admin {
    address: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
}

impl Admin {
    fn new(address: SocketAddr) -> Admin {
        Admin { address, sender: None }
    }

    async fn connect(&mut self) -> Result<(), String> {
        let stream = tokio::net::TcpStream::connect(self.address).await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        self.sender = Some(sender);
        Ok(())
    }

    /// Sends `GET path`; the response head and body.
    async fn start(&mut self, path: &str) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.connect().await?;
        }
        let sender = self.sender.as_mut().expect("connected");
        if sender.ready().await.is_err() {
            self.connect().await?;
        }
        let request = http::Request::get(path)
            .header(http::header::HOST, self.address.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let sender = self.sender.as_mut().expect("connected");
        match sender.send_request(request).await {
            Ok(response) => Ok(response),
            Err(e) => {
                self.sender = None;
                Err(e.to_string())
            }
        }
    }

    /// `GET path`: status and whole body.
    async fn get(&mut self, path: &str) -> Result<(u16, Bytes), String> {
        let response = self.start(path).await?;
        let status = response.status().as_u16();
        match response.into_body().collect().await {
            Ok(body) => Ok((status, body.to_bytes())),
            Err(e) => {
                self.sender = None;
                Err(e.to_string())
            }
        }
    }
}

/// Latencies of admin requests: (start, latency) pairs.
#[derive(Default)]
struct Latencies(Vec<(Instant, Duration)>);

impl Latencies {
    /// Max and median of the requests that overlapped [from, to], and their count.
    fn summary(&self, from: Instant, to: Instant) -> Value {
        let mut window: Vec<Duration> =
            self.0.iter().filter(|(start, lat)| *start <= to && *start + *lat >= from).map(|(_, l)| *l).collect();
        window.sort();
        let max = window.last().copied().unwrap_or_default();
        let p50 = window.get(window.len() / 2).copied().unwrap_or_default();
        json!({ "count": window.len(), "max_ms": ms(max), "p50_ms": ms(p50) })
    }
}

/// Polls `path` back to back, `gap` apart (or `adaptive`: max(gap, 10 × last latency)), until
/// `stop`; `observe` sees each answer. Returns the latencies.
fn poll(
    address: SocketAddr,
    path: String,
    gap: Duration,
    adaptive: bool,
    stop: Arc<AtomicBool>,
    mut observe: impl FnMut(Instant, u16, &Bytes) + Send + 'static,
) -> tokio::task::JoinHandle<Latencies> {
    tokio::spawn(async move {
        let mut admin = Admin::new(address);
        let mut latencies = Latencies::default();
        while !stop.load(Ordering::Relaxed) {
            let start = Instant::now();
            let mut pause = gap;
            if let Ok((status, body)) = admin.get(&path).await {
                let latency = start.elapsed();
                latencies.0.push((start, latency));
                observe(Instant::now(), status, &body);
                if adaptive {
                    pause = pause.max(latency * 10);
                }
            }
            // Sleeps in short steps so that `stop` ends the poller promptly.
            let wake = Instant::now() + pause;
            while !stop.load(Ordering::Relaxed) && Instant::now() < wake {
                tokio::time::sleep(wake.saturating_duration_since(Instant::now()).min(Duration::from_millis(20))).await;
            }
        }
        latencies
    })
}

/// The value of a stat in a `/stats` text body.
fn stat_value(body: &[u8], name: &str) -> Option<i64> {
    std::str::from_utf8(body).ok()?.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok())
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

/// The bootstrap both proxies get; `listener`: a static listener on that port whose one route
/// sends everything to `cluster_0` (a CDS cluster, hence `validate_clusters: false`).
fn bootstrap(admin_port: u16, xds: SocketAddr, listener: Option<u16>) -> String {
    // YAML takes JSON as it is: the listener is built as a value and written on one line.
    let listeners = match listener {
        None => String::new(),
        Some(port) => {
            let hcm = json!({
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "ingress",
                "codec_type": "AUTO",
                "route_config": {
                    "name": "ingress",
                    "validate_clusters": false,
                    "virtual_hosts": [{
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster_name(0) } }],
                    }],
                },
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
                }],
            });
            let listener = json!({
                "name": "ingress",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
                "filter_chains": [{
                    "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm }],
                }],
            });
            format!("  listeners: [{listener}]\n")
        }
    };
    format!(
        r#"node: {{ id: xds-scale, cluster: xds-scale }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}]
  cds_config: {{ ads: {{}}, resource_api_version: V3, initial_fetch_timeout: 0s }}
static_resources:
{listeners}  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}
"#,
        xds.port()
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn start_proxy(args: &Args, config: &std::path::Path, log: &std::path::Path) -> Child {
    let mut proxy_args: Vec<String> =
        vec!["-c".into(), config.display().to_string(), "--concurrency".into(), "1".into()];
    proxy_args.extend(["-l".into(), args.log_level.clone()]);
    if args.proxy == Proxy::Envoy {
        proxy_args.extend([
            "--disable-hot-restart".into(),
            "--base-id".into(),
            args.base_id.to_string(),
            "--service-node".into(),
            "xds-scale".into(),
            "--service-cluster".into(),
            "xds-scale".into(),
        ]);
    }
    proxy_args.extend(args.extra.iter().cloned());
    let mut command = match &args.proxy_cpu {
        // taskset execs the proxy: the pid stays the proxy's.
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu).arg(&args.bin);
            c
        }
        None => Command::new(&args.bin),
    };
    let log = std::fs::File::create(log).expect("create the proxy log");
    command
        .args(&proxy_args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", args.bin.display()))
}

/// `perf record` on `pid` into `file` (its messages in `file`.log).
fn start_perf(file: &std::path::Path, pid: u32) -> Child {
    Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf,16384", "-o"])
        .arg(file)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(file.with_extension("log")).expect("create the perf log"))
        .spawn()
        .expect("start perf record")
}

/// Waits until `progress` satisfies `f`, or the deadline.
async fn wait_progress(
    rx: &mut watch::Receiver<Progress>,
    deadline: Instant,
    f: impl FnMut(&Progress) -> bool,
) -> Result<Progress, ()> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(remaining, rx.wait_for(f)).await {
        Ok(Ok(p)) => Ok(p.clone()),
        _ => Err(()),
    }
}

/// Results accumulate here; printed whatever happens.
struct Report(serde_json::Map<String, Value>);

impl Report {
    fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.0.insert(key.into(), value.into());
    }
}

/// `t - start` in ms, or null.
fn since(start: Option<Instant>, t: Option<Instant>) -> Value {
    match (start, t) {
        (Some(s), Some(t)) => json!(ms(t.saturating_duration_since(s))),
        _ => Value::Null,
    }
}

/// Streams `/clusters` and checks the sampled clusters list exactly step `step`'s ports.
async fn spot_check(admin: SocketAddr, resources: &Resources, step: usize) -> Value {
    let n = resources.clusters.len();
    let samples: Vec<usize> = BTreeSet::from([0, n / 2, n - 1]).into_iter().collect();
    let mut seen: HashMap<String, BTreeSet<u32>> =
        samples.iter().map(|&i| (cluster_name(i), BTreeSet::new())).collect();
    let started = Instant::now();
    let mut client = Admin::new(admin);
    let mut bytes = 0usize;
    let result: Result<(), String> = async {
        let response = client.start("/clusters").await?;
        let mut body = response.into_body();
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            let Some(data) = frame.data_ref() else { continue };
            bytes += data.len();
            pending.extend_from_slice(data);
            let cut = pending.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
            for line in pending[..cut].split(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(line);
                let mut parts = line.split("::");
                let (Some(cluster), Some(host)) = (parts.next(), parts.next()) else { continue };
                if let Some(ports) = seen.get_mut(cluster)
                    && let Some(p) = host.strip_prefix("127.0.0.1:").and_then(|p| p.parse().ok())
                {
                    ports.insert(p);
                }
            }
            pending.drain(..cut);
        }
        Ok(())
    }
    .await;
    let ok = result.is_ok() && samples.iter().all(|&i| seen[&cluster_name(i)] == resources.ports(step, i));
    json!({
        "ok": ok,
        "error": result.err(),
        "ms": ms(started.elapsed()),
        "bytes": bytes,
        "sampled": samples.iter().map(|&i| cluster_name(i)).collect::<Vec<_>>(),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let n = args.clusters;
    let label = match args.proxy {
        Proxy::Legate => "legate",
        Proxy::Envoy => "envoy",
    };
    let mut report = Report(serde_json::Map::new());
    report.set("proxy", label);
    report.set("clusters", n);
    report.set("endpoints_per_cluster", args.endpoints);

    std::fs::create_dir_all(&args.workdir).expect("create the work directory");
    // Churn: the upstreams behind cluster_0, started first (their ports go into the resources).
    let mut upstreams = Vec::new();
    if let Some(churn) = &args.churn {
        upstreams = churn::start_upstreams(churn, &args.workdir);
        OURS.lock().unwrap().extend(upstreams.iter().map(|(child, _)| child.id()));
    }
    let upstream_ports: Vec<u16> = upstreams.iter().map(|&(_, port)| port).collect();

    let built = Instant::now();
    let resources = Arc::new(match &args.churn {
        None => Resources::build(n, args.endpoints),
        Some(churn) => Resources::churn(n, args.endpoints, &upstream_ports, churn),
    });
    let (cds_bytes, eds_bytes) = resources.bytes();
    eprintln!(
        "xds_scale: {label} N={n}: built resources in {:.0} ms (CDS {:.1} MiB, EDS {:.1} MiB per version)",
        ms(built.elapsed()),
        cds_bytes as f64 / 1048576.0,
        eds_bytes as f64 / 1048576.0
    );
    report.set("cds_mib", round(cds_bytes as f64 / 1048576.0, 2));
    report.set("eds_mib", round(eds_bytes as f64 / 1048576.0, 2));

    let (progress_tx, progress) = watch::channel(Progress::default());
    let (target_tx, target) = watch::channel(0usize);
    let pid_cell = Arc::new(AtomicU32::new(0));
    let hold = if args.perf.is_some() { Duration::from_secs(1) } else { Duration::ZERO };
    let cp = Arc::new(ControlPlane {
        resources: resources.clone(),
        progress: progress_tx,
        target,
        pid: pid_cell.clone(),
        hold,
    });
    let xds = serve(cp).await;

    let admin_port = free_port();
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let listener = args.churn.as_ref().map(|_| free_port());
    let config = args.workdir.join(format!("{label}_{n}.yaml"));
    let log = args.workdir.join(format!("{label}_{n}.log"));
    std::fs::write(&config, bootstrap(admin_port, xds, listener)).expect("write the bootstrap");

    let spawned = Instant::now();
    let mut child = start_proxy(&args, &config, &log);
    let pid = child.id();
    pid_cell.store(pid, Ordering::Relaxed);
    // For the caller's clean-up, should this driver be killed before it kills the proxy (and
    // the upstreams, on the next lines).
    let pid_file = args.workdir.join(format!("{label}_{n}.pid"));
    let pids: String =
        std::iter::once(pid).chain(OURS.lock().unwrap().iter().copied()).map(|p| format!("{p}\n")).collect();
    std::fs::write(&pid_file, pids).expect("write the pid file");
    let deadline = spawned + args.deadline;
    let mut perf = None;
    let outside = Outside::start(pid);

    let mut setup = Run {
        args: &args,
        admin,
        pid,
        deadline,
        progress: progress.clone(),
        target: &target_tx,
        resources,
        listener: listener.map(|port| SocketAddr::from(([127, 0, 0, 1], port))),
    };
    let result = run(&mut setup, spawned, &mut report, &mut perf).await;
    if let Err(e) = &result {
        eprintln!("xds_scale: {label} N={n}: {e}");
        report.set("error", e.as_str());
        let p = progress.borrow().clone();
        report.set("nacks", p.nacks.clone());
    }
    report.set("outside_cpu_s", round(outside.seconds(), 2));
    report.set("proxy_cpu_total_s", proc_cpu(pid).map(|c| round(c, 2)));
    report.set("proxy_hwm_end_mib", mib(proc_kib(pid, "VmHWM")));
    if let Some(mut perf) = perf {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
        let _ = perf.wait();
    }
    let _ = child.kill();
    let _ = child.wait();
    for (mut upstream, _) in upstreams {
        let _ = upstream.kill();
        let _ = upstream.wait();
    }
    let _ = std::fs::remove_file(&pid_file);
    println!("{}", Value::Object(report.0));
}

/// What the driver needs during a run.
struct Run<'a> {
    args: &'a Args,
    admin: SocketAddr,
    pid: u32,
    deadline: Instant,
    progress: watch::Receiver<Progress>,
    target: &'a watch::Sender<usize>,
    resources: Arc<Resources>,
    /// Churn: the proxy's listener (routes to `cluster_0`).
    listener: Option<SocketAddr>,
}

/// Which admin pollers run during an update.
#[derive(Clone, Copy)]
enum Watch {
    Quiet,
    Ready,
    ReadyAndStats,
}

impl Run<'_> {
    /// Pushes assignment version `version`, waits for its ACK and reports time, CPU and
    /// memory; `watch` says which admin pollers run from 300 ms before the push to the ACK.
    async fn update(&mut self, version: usize, watch: Watch) -> Result<Value, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let gap = Duration::from_millis(20);
        let noop = |_: Instant, _: u16, _: &Bytes| {};
        let mut pollers = Vec::new();
        if !matches!(watch, Watch::Quiet) {
            pollers.push(("ready", poll(self.admin, "/ready".into(), gap, false, stop.clone(), noop)));
        }
        if matches!(watch, Watch::ReadyAndStats) {
            let path = "/stats?filter=cluster_manager".to_owned();
            pollers.push(("stats", poll(self.admin, path, gap, false, stop.clone(), noop)));
        }
        let idle_from = Instant::now();
        if !pollers.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let outside = Outside::start(self.pid);
        let cpu0 = proc_cpu(self.pid).unwrap_or(0.0);
        let pushed = Instant::now();
        self.target.send_replace(version);
        let nacks = self.progress.borrow().nacks.len();
        let p =
            wait_progress(&mut self.progress, self.deadline, |p| p.acked(version).is_some() || p.nacks.len() > nacks)
                .await;
        let cpu1 = proc_cpu(self.pid).unwrap_or(0.0);
        let outside = outside.seconds();
        stop.store(true, Ordering::Relaxed);
        let p = p.map_err(|()| format!("update to e{} not ACKed before the deadline", version + 1))?;
        let Some(acked) = p.acked(version) else { return Err(format!("update to e{} NACKed", version + 1)) };
        let mut out = json!({
            "ms": ms(acked.saturating_duration_since(pushed)),
            "cpu_s": round(cpu1 - cpu0, 2),
            "hwm_mib": mib(proc_kib(self.pid, "VmHWM")),
            "outside_cpu_s": round(outside, 2),
        });
        for (name, poller) in pollers {
            let latencies = poller.await.unwrap_or_default();
            out[name] = latencies.summary(pushed, acked);
            out[format!("{name}_idle")] = latencies.summary(idle_from, pushed);
        }
        Ok(out)
    }
}

async fn run(
    setup: &mut Run<'_>,
    spawned: Instant,
    report: &mut Report,
    perf: &mut Option<Child>,
) -> Result<(), String> {
    let (args, admin, pid, deadline) = (setup.args, setup.admin, setup.pid, setup.deadline);
    let mut progress = setup.progress.clone();
    let progress = &mut progress;
    let n = args.clusters;
    let label = report.0["proxy"].as_str().unwrap_or_default().to_owned();
    let want_active = n as i64 + 1;

    // ---- load: pollers from the proxy's start ----
    let ready_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let active_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let last_active: Arc<Mutex<i64>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let ready_poller = {
        let ready_at = ready_at.clone();
        poll(admin, "/ready".into(), Duration::from_millis(20), false, stop.clone(), move |at, status, _| {
            if status == 200 {
                ready_at.lock().unwrap().get_or_insert(at);
            }
        })
    };
    let stats_poller = {
        let (active_at, last_active) = (active_at.clone(), last_active.clone());
        poll(
            admin,
            "/stats?filter=cluster_manager.active_clusters".into(),
            Duration::from_millis(20),
            true,
            stop.clone(),
            move |at, _, body| {
                if let Some(v) = stat_value(body, "cluster_manager.active_clusters") {
                    *last_active.lock().unwrap() = v;
                    if v == want_active {
                        active_at.lock().unwrap().get_or_insert(at);
                    }
                }
            },
        )
    };
    let p = wait_progress(progress, deadline, |p| p.started.is_some())
        .await
        .map_err(|()| "no ADS stream before the deadline".to_owned())?;
    let start = p.started.expect("started");
    if let Some(file) = &args.perf
        && args.churn.is_none()
    {
        // Attached once the stream is open: `perf record -p` follows the threads that exist
        // when it attaches, and by now the proxy has started all of its own. The control
        // plane holds the stream's first answer back 1 s meanwhile (load times then include
        // that second).
        *perf = Some(start_perf(file, pid));
    }
    let outside = Outside::start(pid);
    report.set("stream_open_ms", ms(start - spawned));
    // Ready = /ready answered 200 (both proxies hold it until every cluster has warmed);
    // the EDS ACK must be in too. active_clusters is confirmed right after.
    let (p, ready) = loop {
        let p = progress.borrow().clone();
        let ready = *ready_at.lock().unwrap();
        if let (Some(r), Some(_)) = (ready, p.acked(0)) {
            break (p, r);
        }
        if Instant::now() > deadline {
            report.set("load_active_clusters_last", *last_active.lock().unwrap());
            report.set("load_ready", ready.is_some());
            report.set("load_eds_ack_ms", since(Some(start), p.acked(0)));
            report.set("load_cds_ack_ms", since(Some(start), p.cds_ack));
            report.set("proxy_cpu_s_so_far", proc_cpu(pid).map(|c| round(c - p.cpu_at_start, 2)));
            report.set("proxy_hwm_mib_so_far", mib(proc_kib(pid, "VmHWM")));
            return Err("not ready before the deadline".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let cpu_ready = proc_cpu(pid).unwrap_or(0.0);
    let hwm_ready = proc_kib(pid, "VmHWM");
    report.set("load_outside_cpu_s", round(outside.seconds(), 2));
    stop.store(true, Ordering::Relaxed);
    let ready_lat = ready_poller.await.unwrap_or_default();
    let stats_lat = stats_poller.await.unwrap_or_default();
    let mut check = Admin::new(admin);
    let checked = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        check.get("/stats?filter=cluster_manager.active_clusters"),
    )
    .await;
    let active =
        checked.ok().and_then(Result::ok).and_then(|(_, body)| stat_value(&body, "cluster_manager.active_clusters"));
    if active != Some(want_active) {
        return Err(format!("/ready is 200 but active_clusters is {active:?}, want {want_active}"));
    }
    report.set("load_ms", ms(ready.saturating_duration_since(start)));
    report.set("load_active_poll_ms", since(Some(start), *active_at.lock().unwrap()));
    report.set("load_cpu_s", round(cpu_ready - p.cpu_at_start, 2));
    report.set("load_hwm_mib", mib(hwm_ready));
    let (cds_cpu, cds_rss, cds_hwm) = p.at_cds_ack.unwrap_or_default();
    report.set(
        "load_timeline_ms",
        json!({
            "cds_request": since(Some(start), p.first_cds_request),
            "cds_pushed": since(Some(start), p.cds_pushed),
            "eds_request": since(Some(start), p.first_eds_request),
            "eds_request_names": p.first_eds_names,
            "cds_ack": since(Some(start), p.cds_ack),
            "eds_pushed": since(Some(start), p.pushed(0)),
            "eds_ack": since(Some(start), p.acked(0)),
            "eds_requests": p.eds_requests,
            "eds_pushes": p.eds_pushes,
        }),
    );
    report.set(
        "at_cds_ack",
        json!({ "cpu_s": round(cds_cpu - p.cpu_at_start, 2), "rss_mib": mib(cds_rss), "hwm_mib": mib(cds_hwm) }),
    );
    report.set(
        "load_admin",
        json!({ "ready": ready_lat.summary(start, ready), "stats": stats_lat.summary(start, ready) }),
    );
    eprintln!(
        "xds_scale: {label} N={n}: ready {} ms after the stream opened (CDS ACK {}, EDS ACK {}), {:.2} CPU s, HWM {} MiB",
        report.0["load_ms"],
        since(Some(start), p.cds_ack),
        since(Some(start), p.acked(0)),
        cpu_ready - p.cpu_at_start,
        report.0["load_hwm_mib"],
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    report.set("load_rss_after_mib", mib(proc_kib(pid, "VmRSS")));
    if args.load_only {
        return Ok(());
    }
    if let Some(churn) = &args.churn {
        return churn::run(setup, churn, report, perf).await;
    }

    let run = setup;
    // ---- update 1: quiet ----
    let mut update = run.update(1, Watch::Quiet).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    update["rss_after_mib"] = mib(proc_kib(pid, "VmRSS"));
    eprintln!("xds_scale: {label} N={n}: update (quiet) {update}");
    report.set("update", update);

    // ---- update 2: /ready polled ----
    let update = run.update(2, Watch::Ready).await?;
    eprintln!("xds_scale: {label} N={n}: update (/ready polled) {update}");
    report.set("update_ready_polled", update);
    let mut last = 2;

    // ---- update 3: /ready and /stats?filter=cluster_manager polled ----
    if n <= run.args.stats_update_max {
        let update = run.update(3, Watch::ReadyAndStats).await?;
        eprintln!("xds_scale: {label} N={n}: update (/ready + /stats polled) {update}");
        report.set("update_stats_polled", update);
        last = 3;
    }

    // ---- spot check ----
    let check = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        spot_check(admin, &run.resources, last),
    )
    .await
    .unwrap_or_else(|_| json!({ "ok": false, "error": "deadline" }));
    eprintln!("xds_scale: {label} N={n}: /clusters spot check {check}");
    report.set("spot_check", check);
    let p = progress.borrow().clone();
    report.set("nacks", p.nacks.clone());
    report.set("streams", p.streams);
    Ok(())
}
