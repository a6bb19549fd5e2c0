#!/usr/bin/env bash
# xDS scale: N EDS clusters x 10 endpoints pushed over ADS (state of the world) to legate and to
# the real Envoy, one proxy at a time, by the control plane + driver in examples/xds_scale.rs
# (what it measures and how is documented at the top of that file). Prints a table and saves
# it as bench/out/xds_scale/results.md; one JSON line per run is in results.jsonl, the proxies'
# bootstraps and logs beside it.
#
# Usage: bash bench/xds_scale.sh
# Knobs (environment):
#   XDS_SCALE_LEGATE_N   cluster counts for legate      (default "1000 10000 100000")
#   XDS_SCALE_ENVOY_N    cluster counts for Envoy       (default "1000 10000 100000")
#   XDS_SCALE_REPS       runs per proxy and N below 100 000 (default 3; the table shows the
#                        run with the median ready time, and the range); 100 000 runs once
#   XDS_SCALE_DEADLINE_S per-run bound for N < 100 000  (default 120; 100 000 gets 300)
#   XDS_SCALE_PIN        1 (default): driver on CPU 0, proxy on CPU 1 (taskset); 0: no pinning
#   XDS_SCALE_QUIET_WAIT seconds to wait, in all, for other work on the machine to stop
#                        before runs (default 120; each run waits at most 30 s)
#   LEGATE_BIN, ENVOY_BIN use these binaries instead of building / installing them
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/out/xds_scale
mkdir -p "$out"
started=$SECONDS

cargo build --release -j2 --example xds_scale
if [ -z "${LEGATE_BIN:-}" ]; then
  cargo build --release -j2 --bin legate
  LEGATE_BIN=target/release/legate
fi
ENVOY_BIN=${ENVOY_BIN:-$(bash interop/install-envoy.sh)}
driver=target/release/examples/xds_scale

legate_n=${XDS_SCALE_LEGATE_N:-"1000 10000 100000"}
envoy_n=${XDS_SCALE_ENVOY_N:-"1000 10000 100000"}
pin=${XDS_SCALE_PIN:-1}
[ "$(nproc)" -ge 2 ] || pin=0
quiet_budget=${XDS_SCALE_QUIET_WAIT:-120}
reps=${XDS_SCALE_REPS:-3}

busy_jiffies() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

# Waits (bounded) until the machine has been nearly idle (< 15 % of one CPU) for 2 s.
wait_quiet() {
  local waited=0 hz a b
  hz=$(getconf CLK_TCK)
  while [ "$waited" -lt 30 ] && [ "$quiet_budget" -gt 0 ]; do
    a=$(busy_jiffies); sleep 2; b=$(busy_jiffies)
    if [ $(( (b - a) * 100 / hz )) -lt 30 ]; then return; fi
    waited=$((waited + 2)); quiet_budget=$((quiet_budget - 2))
  done
  [ "$waited" -eq 0 ] || echo "xds_scale.sh: machine still busy after ${waited}s of waiting; running anyway" >&2
}

results="$out/results.jsonl"
: > "$results"
base_id=7400
run() { # proxy bin n
  local proxy=$1 bin=$2 n=$3 deadline=${XDS_SCALE_DEADLINE_S:-120}
  [ "$n" -lt 100000 ] || deadline=300
  wait_quiet
  local cmd=("$driver" --proxy "$proxy" --bin "$bin" --clusters "$n" --deadline-s "$deadline"
    --workdir "$out" --base-id "$base_id")
  base_id=$((base_id + 1))
  if [ "$pin" = 1 ]; then cmd=(taskset -c 0 "${cmd[@]}" --proxy-cpu 1); fi
  echo "== $proxy N=$n (bound ${deadline}s)" >&2
  # The driver enforces the deadline itself; timeout is the backstop.
  if ! timeout $((deadline + 60)) "${cmd[@]}" >> "$results" 2> "$out/${proxy}_${n}.driver.log"; then
    echo "{\"proxy\": \"$proxy\", \"clusters\": $n, \"error\": \"driver failed, see ${proxy}_${n}.driver.log\"}" >> "$results"
  fi
  # A driver that was killed leaves its proxy's pid behind: end that proxy.
  if [ -f "$out/${proxy}_${n}.pid" ]; then
    kill -KILL "$(cat "$out/${proxy}_${n}.pid")" 2>/dev/null || true
    rm -f "$out/${proxy}_${n}.pid"
  fi
  grep -E '^xds_scale: (legate|envoy) N=' "$out/${proxy}_${n}.driver.log" | cut -c1-200 >&2 || true
}

runs() { # proxy bin n...
  local proxy=$1 bin=$2 n i
  shift 2
  for n in "$@"; do
    if [ "$n" -ge 100000 ]; then run "$proxy" "$bin" "$n"; continue; fi
    for i in $(seq 1 "$reps"); do run "$proxy" "$bin" "$n"; done
  done
}

# shellcheck disable=SC2086 # word splitting of the N lists is intended
runs legate "$LEGATE_BIN" $legate_n
# shellcheck disable=SC2086
runs envoy "$ENVOY_BIN" $envoy_n

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src 2>/dev/null || commit="$commit (src modified)"
python3 - "$results" "$commit" "$("$ENVOY_BIN" --version | grep -o '[0-9]*\.[0-9]*\.[0-9]*/[A-Za-z]*' | head -1)" \
  > "$out/results.md" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
# Several runs per (proxy, N): show the one with the median ready time, and the ranges.
groups = {}
for r in runs:
    groups.setdefault((r["proxy"], r["clusters"]), []).append(r)
rows, ranges = [], {}
for key, group in groups.items():
    good = sorted((r for r in group if "load_ms" in r), key=lambda r: r["load_ms"])
    rows.append(good[len(good) // 2] if good else group[-1])
    ranges[key] = (len(group), good)
print(f"legate {sys.argv[2]}, Envoy {sys.argv[3]}; {rows[0].get('endpoints_per_cluster', 10) if rows else 10} endpoints per cluster\n")

def f(v, digits=2, scale=1.0):
    return "—" if v is None else f"{v * scale:.{digits}f}"

def get(r, *path):
    for p in path:
        if not isinstance(r, dict) or p not in r:
            return None
        r = r[p]
    return r

print("| proxy | N | runs | ready (s) | CDS ACK (s) | EDS ACK (s) | CPU (s) | peak RSS (MiB) | RSS after (MiB) | update (s) | update CPU (s) | RSS after update (MiB) | /ready max during update (ms) | /ready, /stats max during update with /stats polled (ms) | spot check | outside CPU (s) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
for r in rows:
    if "error" in r and "load_ms" not in r:
        so_far = ", ".join(f"{k}={r[k]}" for k in ("load_active_clusters_last", "load_cds_ack_ms", "load_eds_ack_ms", "proxy_cpu_s_so_far", "proxy_hwm_mib_so_far") if k in r)
        print(f"| {r['proxy']} | {r['clusters']} | {ranges[r['proxy'], r['clusters']][0]} | **{r['error']}** {so_far} |||||||||||||")
        continue
    t = r.get("load_timeline_ms", {})
    u, ur, us = r.get("update", {}), r.get("update_ready_polled", {}), r.get("update_stats_polled")
    stats_cell = "—" if not us else f"{f(get(us, 'ready', 'max_ms'), 0)}, {f(get(us, 'stats', 'max_ms'), 0)} (update {f(us.get('ms'), 2, 1e-3)} s; idle {f(get(us, 'stats_idle', 'max_ms'), 0)})"
    check = r.get("spot_check", {})
    outside = sum(x for x in [r.get("load_outside_cpu_s"), u.get("outside_cpu_s")] if x)
    count, good = ranges[r["proxy"], r["clusters"]]
    ready = f(r.get('load_ms'), 2, 1e-3)
    cpu = f(r.get('load_cpu_s'))
    if len(good) > 1:
        ready += f" ({f(good[0]['load_ms'], 2, 1e-3)}–{f(good[-1]['load_ms'], 2, 1e-3)})"
        cpus = sorted(g["load_cpu_s"] for g in good)
        cpu += f" ({f(cpus[0])}–{f(cpus[-1])})"
    runs_cell = f"{len(good)}" if len(good) == count else f"{len(good)} of {count}"
    print(f"| {r['proxy']} | {r['clusters']} | {runs_cell} | {ready} | {f(t.get('cds_ack'), 2, 1e-3)} | {f(t.get('eds_ack'), 2, 1e-3)} "
          f"| {cpu} | {f(r.get('load_hwm_mib'), 0)} | {f(r.get('load_rss_after_mib'), 0)} "
          f"| {f(u.get('ms'), 2, 1e-3)} | {f(u.get('cpu_s'))} | {f(u.get('rss_after_mib'), 0)} "
          f"| {f(get(ur, 'ready', 'max_ms'), 1)} (update {f(ur.get('ms'), 2, 1e-3)} s) | {stats_cell} "
          f"| {'ok' if check.get('ok') else check.get('error') or 'FAILED'} | {outside:.1f} |")

by = {(r["proxy"], r["clusters"]): r for r in rows if "load_ms" in r}
ns = sorted({n for (_, n) in by})
if any(("legate", n) in by and ("envoy", n) in by for n in ns):
    print("\nlegate ÷ Envoy (below 1: legate is faster / smaller)\n")
    print("| N | ready time | CPU | peak RSS | RSS after | update time | update CPU |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in ns:
        if ("legate", n) in by and ("envoy", n) in by:
            l, e = by["legate", n], by["envoy", n]
            def ratio(*path):
                a, b = get(l, *path), get(e, *path)
                return "—" if not a or not b else f"{a / b:.2f}"
            print(f"| {n} | {ratio('load_ms')} | {ratio('load_cpu_s')} | {ratio('load_hwm_mib')} | {ratio('load_rss_after_mib')} | {ratio('update', 'ms')} | {ratio('update', 'cpu_s')} |")
PY
cat "$out/results.md"
echo "xds_scale.sh: done in $((SECONDS - started)) s" >&2
