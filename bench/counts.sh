#!/usr/bin/env bash
# Load-independent counts per request on legate's data path (BENCHMARKS.md, "Counts per
# request"): legate --concurrency 1 under callgrind in front of bench_upstream; counters are
# zeroed after a warm-up, then a fixed number of requests is sent and the profile dumped.
# Prints instructions (Ir) and allocator calls (malloc, calloc, realloc, posix_memalign,
# aligned_alloc) per request for each workload. Wall-clock figures on a shared VM move
# ±10-30 % with outside load; these do not, so data-path changes are compared with them.
#
#   bash bench/counts.sh            # all workloads
#   COUNTS_WORKLOADS="h2c" bash bench/counts.sh
#
# Knobs: COUNTS_WORKLOADS (h1 h1_16k h2c h2c_h1up h1_post64k; also h1_seq, one connection:
# every request parks and wakes the worker twice), COUNTS_REQUESTS (20000),
# COUNTS_WARMUP (2000), COUNTS_SKIP_BUILD=1, COUNTS_PORT_BASE (19080).
# Installs valgrind, nghttp2-client (h2load) and bc from Debian if missing; the profiles stay
# in bench/out/counts/ for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/out/counts
mkdir -p "$out"
workloads=${COUNTS_WORKLOADS:-"h1 h1_16k h2c h2c_h1up h1_post64k"}
requests=${COUNTS_REQUESTS:-20000}
warmup=${COUNTS_WARMUP:-2000}
base=${COUNTS_PORT_BASE:-19080}
up_port=$base h1_port=$((base + 1)) h2_port=$((base + 2)) admin_port=$((base + 3))

missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v bc >/dev/null || missing+=(bc)
if ((${#missing[@]})); then
  echo "counts.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y "${missing[@]}" >/dev/null || { apt-get update >/dev/null && apt-get install -y "${missing[@]}" >/dev/null; }
fi
[ -n "${COUNTS_SKIP_BUILD:-}" ] || cargo build --release -j2 --bin legate --example bench_upstream

# The side-by-side benchmark's bootstrap: "h1up" → the upstream over HTTP/1.1, "h2up" over h2c.
UP_PORT=$up_port
source bench/bootstrap.sh
write_xds_config "$out/legate.yaml" "$h1_port" "$h2_port" "$admin_port"
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

printf '| workload | Ir/request | allocator calls/request |\n|---|---:|---:|\n' | tee "$out/results.md"
for w in $workloads; do
  case $w in
    h1) load=(--h1 -c10 -m1); url=http://127.0.0.1:$h1_port/ ;;
    h1_seq) load=(--h1 -c1 -m1); url=http://127.0.0.1:$h1_port/ ;;
    h1_16k) load=(--h1 -c10 -m1); url=http://127.0.0.1:$h1_port/16k ;;
    h2c) load=(-c10 -m10); url=http://127.0.0.1:$h2_port/ ;;
    h2c_h1up) load=(-c10 -m10); url=http://127.0.0.1:$h1_port/ ;;
    h1_post64k) load=(--h1 -c10 -m1 -d "$out/post64k.body"); url=http://127.0.0.1:$h1_port/post ;;
    *) echo "counts.sh: unknown workload $w" >&2; exit 1 ;;
  esac
  profile=$out/callgrind.$w.out
  rm -f "$profile"*
  valgrind --tool=callgrind --callgrind-out-file="$profile" \
    target/release/legate -c "$out/legate.yaml" --concurrency 1 --log-level error >"$out/legate.$w.log" 2>&1 &
  legate=$!
  pids+=($legate)
  wait_up "http://127.0.0.1:$admin_port/ready"
  h2load -t1 "${load[@]}" -n "$warmup" "$url" >/dev/null
  callgrind_control -z "$legate" >/dev/null 2>&1
  h2load -t1 "${load[@]}" -n "$requests" "$url" | grep -q "$requests succeeded" \
    || { echo "counts.sh: $w: not every request succeeded" >&2; exit 1; }
  callgrind_control -d "$legate" >/dev/null 2>&1
  kill "$legate"; wait "$legate" 2>/dev/null || true
  dump=$(ls -t "$profile".* | head -1)
  ir=$(awk '/^summary:/ {print $2}' "$dump")
  allocs=$(alloc_calls "$dump")
  printf '| %s | %d | %.1f |\n' "$w" $((ir / requests)) "$(echo "$allocs / $requests" | bc -l)" | tee -a "$out/results.md"
done
