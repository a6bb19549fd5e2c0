#!/usr/bin/env bash
# A/B of two proxies on one h2load workload, in the side-by-side benchmark's layout: one proxy
# process at a time, started fresh for every run (pinned to CPU 1; h2load and bench_upstream on
# CPU 0), warmed up, measured, stopped. The two alternate in pairs and swap order every pair, so
# neither always runs first or second; percentiles come from h2load's per-request log
# (BENCHMARKS.md, "A/B runs").
#
#   bash bench/ab.sh A B              # A, B: a legate binary, "haproxy" or "direct"
#   AB_WORKLOAD=h2c AB_PAIRS=12 bash bench/ab.sh /tmp/legate.before target/release/legate
#
# Knobs: AB_WORKLOAD (h2c_h1up: h2c -c10 -m10 through the HTTP/1.1 upstream; h2c: through the
# h2c upstream; h1: HTTP/1.1 -c50; h1_seq: HTTP/1.1, one connection, one request at a time),
# AB_PAIRS (8), AB_DURATION (6 s measured), AB_WARMUP (2 s), AB_PORT_BASE (19280),
# AB_KEEP_AWAKE (1: a SCHED_IDLE busy loop on each of the two CPUs for the whole session, so
# that neither vCPU halts when idle; any runnable task preempts it. It takes the hypervisor's
# wake-up of a halted vCPU out of the latencies, see BENCHMARKS.md "Added latency and halted
# vCPUs"). "direct" sends the load to the upstream itself (h1 workloads). Installs h2load (nghttp2-client) and HAProxy from Debian if missing;
# needs the bench_upstream example built (cargo build --release --example bench_upstream).
# Prints one line a pair and a summary (B against A).
#
# Why not two processes side by side: with two legates holding pooled connections to the same
# upstream, one of them often settled for a whole session into a state where some downstream
# connections got up to 2.5x the others' rate and p99 doubled, which never happened with one
# process at a time; and an A/A run of one binary twice favoured the second slot by 4-10 % in
# rate.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -eq 2 ]] || { sed -n '2,15p' "$0" >&2; exit 2; }
a=$1 b=$2
workload=${AB_WORKLOAD:-h2c_h1up} pairs=${AB_PAIRS:-8}
duration=${AB_DURATION:-6} warmup=${AB_WARMUP:-2} base=${AB_PORT_BASE:-19280}
up_port=$base h1_port=$((base + 1)) h2_port=$((base + 2)) admin_port=$((base + 3))
out=bench/out/ab
mkdir -p "$out"
missing=()
command -v h2load >/dev/null || missing+=(nghttp2-client)
if [[ "$a $b" == *haproxy* ]] && ! command -v haproxy >/dev/null && [[ ! -x /usr/sbin/haproxy ]]; then
  missing+=(haproxy)
fi
source bench/bootstrap.sh
install_debian_packages ab.sh "${missing[@]}"
upstream=target/release/examples/bench_upstream
[[ -x "$upstream" ]] || { echo "ab.sh: build $upstream first" >&2; exit 1; }

UP_PORT=$up_port
write_xds_config "$out/legate.yaml" "$h1_port" "$h2_port" "$admin_port"
write_haproxy_config "$out/haproxy.cfg" "$h1_port" "$h2_port"

case $workload in
  h2c_h1up) load=(-c10 -m10) url=http://127.0.0.1:$h1_port/ ;;
  h2c) load=(-c10 -m10) url=http://127.0.0.1:$h2_port/ ;;
  h1) load=(--h1 -c50 -m1) url=http://127.0.0.1:$h1_port/ ;;
  h1_seq) load=(--h1 -c1 -m1) url=http://127.0.0.1:$h1_port/ ;;
  *) echo "ab.sh: unknown workload $workload" >&2; exit 1 ;;
esac

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
wait_up() { for _ in $(seq 1 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.05; done; return 1; }
taskset -c 0 "$upstream" "$up_port" 1 >"$out/upstream.log" 2>&1 &
pids+=($!)
wait_up "http://127.0.0.1:$up_port/"
if [[ ${AB_KEEP_AWAKE:-0} == 1 ]]; then
  for cpu in 0 1; do
    taskset -c $cpu chrt -i 0 sh -c 'while :; do :; done' &
    pids+=($!)
  done
fi

# One run of `proxy` (fresh process); its per-request log goes to `log`.
run() { # proxy log
  local proxy=$1 log=$2 pid ready
  if [[ "$proxy" == direct ]]; then
    [[ $workload == h1* ]] || { echo "ab.sh: direct is for the h1 workloads" >&2; exit 1; }
    measure "http://127.0.0.1:$up_port/" "$log"
    return
  elif [[ "$proxy" == haproxy ]]; then
    taskset -c 1 "$(command -v haproxy || echo /usr/sbin/haproxy)" -db -f "$out/haproxy.cfg" >"$out/proxy.log" 2>&1 &
    ready=$url
  else
    taskset -c 1 "$proxy" -c "$out/legate.yaml" --concurrency 1 --log-level error >"$out/proxy.log" 2>&1 &
    ready=http://127.0.0.1:$admin_port/ready
  fi
  pid=$!
  pids+=($pid)
  wait_up "$ready" || { echo "ab.sh: $proxy did not start" >&2; exit 1; }
  measure "$url" "$log"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# Warms up, then measures the load against `url` into h2load's per-request `log`.
measure() { # url log
  taskset -c 0 h2load -t1 "${load[@]}" -D "$warmup" "$1" >/dev/null
  rm -f "$2"  # h2load appends to its log file
  taskset -c 0 h2load -t1 "${load[@]}" -D "$duration" --log-file="$2" "$1" >"$2.txt"
}

for ((i = 1; i <= pairs; i++)); do
  order=(a b)
  ((i % 2)) || order=(b a)
  for side in "${order[@]}"; do
    proxy=$a
    [[ $side == b ]] && proxy=$b
    run "$proxy" "$out/$workload.$side.$i.log"
  done
done

python3 - "$out/$workload" "$pairs" "$duration" "$a" "$b" <<'PY'
import statistics, sys
prefix, pairs, duration, name_a, name_b = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]

def stats(path):
    # h2load --log-file: start time, status, latency (µs); percentiles of the 2xx responses
    rows = [line.split() for line in open(path)]
    v = sorted(int(f[2]) for f in rows if f[1].startswith("2"))
    if len(v) < len(rows):
        print(f"{path}: {len(rows) - len(v)} of {len(rows)} responses not 2xx", file=sys.stderr)
    n = len(v)
    return {"rate": n / duration, "p50": v[n // 2], "p99": v[int(n * .99)], "p99.9": v[int(n * .999)]}

a = [stats(f"{prefix}.a.{i}.log") for i in range(1, pairs + 1)]
b = [stats(f"{prefix}.b.{i}.log") for i in range(1, pairs + 1)]
for i, (x, y) in enumerate(zip(a, b), 1):
    print(f"pair {i}: A {x['rate']:.0f}/s p50 {x['p50']} p99 {x['p99']} µs | B {y['rate']:.0f}/s p50 {y['p50']} p99 {y['p99']} µs")
lower = sum(y["p99"] < x["p99"] for x, y in zip(a, b))
med = lambda runs, key: statistics.median(r[key] for r in runs)
print(f"A = {name_a}, B = {name_b}: B's p99 lower in {lower} of {pairs} pairs; medians A -> B:",
      ", ".join(f"{k} {med(a, k):.0f} -> {med(b, k):.0f}" for k in ("rate", "p50", "p99", "p99.9")))
PY
