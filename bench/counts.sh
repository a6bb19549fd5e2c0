#!/usr/bin/env bash
# Load-independent counts per request on legate's data path (BENCHMARKS.md, "Counts per
# request"): legate --concurrency 1 under callgrind in front of bench_upstream; counters are
# zeroed after a warm-up, then a fixed number of requests is sent and the profile dumped.
# Prints instructions (Ir) and allocator calls (malloc, calloc, realloc, posix_memalign,
# aligned_alloc) per request for each workload, and syscalls per request (a second run, the
# proxy natively under `strace -c`, attached after the warm-up). Wall-clock figures on a
# shared VM move ±10-30 % with outside load; these do not, so data-path changes are compared
# with them.
# With COUNTS_PROXIES="legate haproxy" HAProxy (nbthread 1, bench/run.sh's config for it) is
# counted the same way, and the table adds legate's instructions as a fraction of HAProxy's:
# user-space work only; the kernel's share of a request (syscalls, loopback TCP) is not in
# the instructions, and the syscall column shows whether it differs.
#
#   bash bench/counts.sh            # all workloads
#   COUNTS_WORKLOADS="h2c" bash bench/counts.sh
#
# Knobs: COUNTS_WORKLOADS (h1 h1_16k h2c h2c_h1up h1_post64k; also h1_seq, one connection:
# every request parks and wakes the worker twice; tcp, HTTP/1.1 GET through a TCP proxy), COUNTS_PROXIES (legate), COUNTS_REQUESTS
# (20000), COUNTS_WARMUP (2000), COUNTS_SKIP_BUILD=1, COUNTS_PORT_BASE (19080).
# Installs valgrind, strace, nghttp2-client (h2load), bc and (when counted) haproxy from
# Debian if missing; the profiles stay in bench/out/counts/ for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/out/counts
mkdir -p "$out"
workloads=${COUNTS_WORKLOADS:-"h1 h1_16k h2c h2c_h1up h1_post64k"}
proxies=${COUNTS_PROXIES:-legate}
requests=${COUNTS_REQUESTS:-20000}
warmup=${COUNTS_WARMUP:-2000}
base=${COUNTS_PORT_BASE:-19080}
up_port=$base h1_port=$((base + 1)) h2_port=$((base + 2)) admin_port=$((base + 3)) tcp_port=$((base + 4))

missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v bc >/dev/null || missing+=(bc)
command -v strace >/dev/null || missing+=(strace)
if [[ " $proxies " == *" haproxy "* ]] && ! command -v haproxy >/dev/null && [[ ! -x /usr/sbin/haproxy ]]; then
  missing+=(haproxy)
fi
source bench/bootstrap.sh
install_debian_packages counts.sh "${missing[@]}"
[ -n "${COUNTS_SKIP_BUILD:-}" ] || cargo build --release -j2 --bin legate --example bench_upstream

# The side-by-side benchmark's bootstrap: "h1up" → the upstream over HTTP/1.1, "h2up" over h2c.
UP_PORT=$up_port
write_xds_config "$out/legate.yaml" "$h1_port" "$h2_port" "$admin_port" "$tcp_port"
write_haproxy_config "$out/haproxy.cfg" "$h1_port" "$h2_port" "$tcp_port"
head -c 65536 /dev/zero | tr '\0' x >"$out/post64k.body"

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
wait_up() { for _ in $(seq 1 600); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
target/release/examples/bench_upstream "$up_port" 1 >"$out/upstream.log" 2>&1 &
pids+=($!)
wait_up "http://127.0.0.1:$up_port/"

# Allocator calls in a callgrind profile: the `calls=` lines under a call to one of them.
alloc_calls() {
  python3 - "$1" <<'PY'
import re, sys
names, total, callee = {}, 0, None
alloc = {"malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc"}
for line in open(sys.argv[1], errors="replace"):
    if line.startswith("cfn="):
        m = re.match(r"cfn=\((\d+)\)(?: (.*))?", line.strip())
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2)
            callee = names.get(m.group(1))
        else:
            callee = line[4:].strip()
    elif line.startswith("calls=") and callee in alloc:
        total += int(line[6:].split()[0])
        callee = None
    elif line.startswith("fn="):
        m = re.match(r"fn=\((\d+)\) (.*)", line.strip())
        if m:
            names[m.group(1)] = m.group(2)
print(total)
PY
}

# The load for a workload: sets LOAD (h2load's options) and URL.
workload_load() { # workload
  case $1 in
    h1) LOAD=(--h1 -c10 -m1); URL=http://127.0.0.1:$h1_port/ ;;
    h1_seq) LOAD=(--h1 -c1 -m1); URL=http://127.0.0.1:$h1_port/ ;;
    h1_16k) LOAD=(--h1 -c10 -m1); URL=http://127.0.0.1:$h1_port/16k ;;
    h2c) LOAD=(-c10 -m10); URL=http://127.0.0.1:$h2_port/ ;;
    h2c_h1up) LOAD=(-c10 -m10); URL=http://127.0.0.1:$h1_port/ ;;
    h1_post64k) LOAD=(--h1 -c10 -m1 -d "$out/post64k.body"); URL=http://127.0.0.1:$h1_port/post ;;
    tcp) LOAD=(--h1 -c10 -m1); URL=http://127.0.0.1:$tcp_port/ ;;
    *) echo "counts.sh: unknown workload $1" >&2; exit 1 ;;
  esac
}

# How to run a proxy: sets CMD and READY (a URL that answers once it serves).
proxy_cmd() { # proxy
  case $1 in
    legate)
      CMD=(target/release/legate -c "$out/legate.yaml" --concurrency 1 --log-level error)
      READY=http://127.0.0.1:$admin_port/ready ;;
    haproxy)
      CMD=("$(command -v haproxy || echo /usr/sbin/haproxy)" -db -f "$out/haproxy.cfg")
      READY=http://127.0.0.1:$h1_port/ ;;
    *) echo "counts.sh: unknown proxy $1" >&2; exit 1 ;;
  esac
}

# Starts `proxy` (under `tool...`, if any), waits for it and sends the warm-up; sets PID.
start_warm() { # proxy workload tool...
  local proxy=$1 w=$2
  shift 2
  "$@" "${CMD[@]}" >"$out/$proxy.$w.log" 2>&1 &
  PID=$!
  pids+=($PID)
  wait_up "$READY"
  h2load -t1 "${LOAD[@]}" -n "$warmup" "$URL" >/dev/null
}

send_measured() { # proxy workload
  h2load -t1 "${LOAD[@]}" -n "$requests" "$URL" | grep -q "$requests succeeded" \
    || { echo "counts.sh: $1 $2: not every request succeeded" >&2; exit 1; }
}

# Counts `proxy` on `workload`; sets IR and ALLOCS (instructions and allocator calls per
# request, under callgrind) and SYSCALLS (per request, the proxy running natively with strace
# attached after the warm-up).
count() { # proxy workload
  local proxy=$1 w=$2 profile dump trace tracer
  workload_load "$w"
  proxy_cmd "$proxy"
  profile=$out/callgrind.$proxy.$w.out
  rm -f "$profile"*
  start_warm "$proxy" "$w" valgrind --tool=callgrind --callgrind-out-file="$profile"
  callgrind_control -z "$PID" >/dev/null 2>&1
  send_measured "$proxy" "$w"
  callgrind_control -d "$PID" >/dev/null 2>&1
  kill "$PID"; wait "$PID" 2>/dev/null || true
  dump=$(ls -t "$profile".* | head -1)
  IR=$(($(awk '/^summary:/ {print $2}' "$dump") / requests))
  ALLOCS=$(printf '%.1f' "$(echo "$(alloc_calls "$dump") / $requests" | bc -l)")

  trace=$out/strace.$proxy.$w.txt
  start_warm "$proxy" "$w"
  strace -c -f -p "$PID" -o "$trace" 2>/dev/null &
  tracer=$!
  sleep 1  # strace attaches to every thread before the measured requests start
  send_measured "$proxy" "$w"
  kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
  kill "$PID"; wait "$PID" 2>/dev/null || true
  SYSCALLS=$(awk -v n="$requests" '$NF == "total" { printf "%.2f", $4 / n }' "$trace")
}

header="| workload |" rule="|---|"
for p in $proxies; do header+=" $p Ir/request | $p allocator calls/request | $p syscalls/request |"; rule+="---:|---:|---:|"; done
if [[ " $proxies " == *" legate "* && " $proxies " == *" haproxy "* ]]; then header+=" legate/haproxy Ir |"; rule+="---:|"; fi
printf '%s\n%s\n' "$header" "$rule" | tee "$out/results.md"
for w in $workloads; do
  row="| $w |"
  declare -A ir_of=()
  for p in $proxies; do
    count "$p" "$w"
    ir_of[$p]=$IR
    row+=" $IR | $ALLOCS | $SYSCALLS |"
  done
  if [[ -n "${ir_of[legate]:-}" && -n "${ir_of[haproxy]:-}" ]]; then
    row+=" $(printf '%.2f' "$(echo "${ir_of[legate]} / ${ir_of[haproxy]}" | bc -l)") |"
  fi
  echo "$row" | tee -a "$out/results.md"
done
