#!/usr/bin/env bash
# EDS churn (issue 5): one endpoint changing in each of 1 000 clusters per second, under a
# fixed-rate HTTP/1.1 load routed to cluster_0, against legate and the real Envoy, one proxy
# at a time, by `xds_scale --churn` (examples/xds_scale.rs; phases, load and figures are
# documented in examples/xds_bench/churn.rs). Prints a markdown table and saves it as
# bench/out/eds_churn/results.md; one JSON line per run is in results.jsonl, the proxies'
# bootstraps and logs beside it.
#
# Usage: bash bench/eds_churn.sh
# Knobs (environment):
#   EDS_CHURN_PROXIES       which proxies, in order      (default "legate envoy")
#   EDS_CHURN_CLUSTERS      clusters                     (default 1000)
#   EDS_CHURN_RATE          requests per second offered  (default 5000)
#   EDS_CHURN_CONNECTIONS   client connections           (default 10)
#   EDS_CHURN_PHASE_S       seconds per phase            (default 10)
#   EDS_CHURN_CYCLES        baseline+churn cycles, then a last baseline (default 12: this
#                           VM's own p99 drifts ±30 % between phases, and many short
#                           alternations average that out where 3 long ones did not)
#   EDS_CHURN_PUSHES_PER_S  EDS responses per second the 1 000 changes are spread over (default 1)
#   EDS_CHURN_ARGS          more driver flags (e.g. --routed-steady; --perf FILE)
#   EDS_CHURN_PIN           1 (default): driver, load and upstreams on CPU 0, proxy on CPU 1
#   EDS_CHURN_QUIET_WAIT    seconds to wait at most before each run for the machine to be
#                           nearly idle (default 120)
#   EDS_CHURN_OUTSIDE_MAX_PCT, EDS_CHURN_RETRIES  a run in which other work used more than
#                           this % of a CPU during some phase (default 10) is repeated, up to
#                           this many times (default 2); the least disturbed run is kept. The
#                           kernel's softirq time for the benchmark's own loopback traffic
#                           counts as other work: 3-6 % on a quiet machine
#   LEGATE_BIN, ENVOY_BIN   use these binaries instead of building / installing them
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/out/eds_churn
mkdir -p "$out"
started=$SECONDS

cargo build --release -j2 --example xds_scale --example bench_upstream
if [ -z "${LEGATE_BIN:-}" ]; then
  cargo build --release -j2 --bin legate
  LEGATE_BIN=target/release/legate
fi
ENVOY_BIN=${ENVOY_BIN:-$(bash interop/install-envoy.sh)}
command -v taskset >/dev/null || { echo "eds_churn.sh: taskset (util-linux) is needed" >&2; exit 1; }

proxies=${EDS_CHURN_PROXIES:-"legate envoy"}
phase_s=${EDS_CHURN_PHASE_S:-10}
cycles=${EDS_CHURN_CYCLES:-12}
pin=${EDS_CHURN_PIN:-1}
[ "$(nproc)" -ge 2 ] || pin=0
read -r -a extra <<< "${EDS_CHURN_ARGS:-}"

# Until the machine has used under 15 % of one CPU for 10 s in a row (2 s samples), for at
# most EDS_CHURN_QUIET_WAIT s.
settle() {
  local limit=${EDS_CHURN_QUIET_WAIT:-120} t=0 calm=0 hz idle0 idle1 all0 all1
  hz=$(getconf CLK_TCK)
  while [ "$t" -lt "$limit" ]; do
    read -r idle0 all0 < <(awk '/^cpu / {print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
    sleep 2
    read -r idle1 all1 < <(awk '/^cpu / {print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
    t=$((t + 2))
    if (( (all1 - all0 - idle1 + idle0) * 100 < 30 * hz )); then calm=$((calm + 2)); else calm=0; fi
    [ "$calm" -lt 10 ] || return 0
  done
  echo "eds_churn.sh: the machine is still busy after ${limit}s; running anyway (see outside CPU)" >&2
}

# The highest CPU share used by other work during any phase of a run (% of one CPU).
outside_pct() {
  python3 -c 'import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
print(round(max((p["outside_cpu_s"] / p["seconds"] * 100 for p in r.get("phases", [])), default=0)))' "$1"
}

results="$out/results.jsonl"
: > "$results"
base_id=7480
for proxy in $proxies; do
  case "$proxy" in
    legate) bin=$LEGATE_BIN ;;
    envoy) bin=$ENVOY_BIN ;;
    *) echo "eds_churn.sh: unknown proxy $proxy" >&2; exit 2 ;;
  esac
  best="" best_pct=""
  for attempt in $(seq 1 $((1 + ${EDS_CHURN_RETRIES:-2}))); do
    settle
    run="$out/$proxy.run$attempt.json"
    cmd=(target/release/examples/xds_scale --churn --proxy "$proxy" --bin "$bin"
      --upstream-bin target/release/examples/bench_upstream --clusters "${EDS_CHURN_CLUSTERS:-1000}"
      --rate "${EDS_CHURN_RATE:-5000}" --connections "${EDS_CHURN_CONNECTIONS:-10}" --phase-s "$phase_s"
      --cycles "$cycles" --pushes-per-s "${EDS_CHURN_PUSHES_PER_S:-1}" --workdir "$out" --base-id "$base_id"
      "${extra[@]}")
    base_id=$((base_id + 1))
    if [ "$pin" = 1 ]; then cmd=(taskset -c 0 "${cmd[@]}" --proxy-cpu 1); fi
    echo "== $proxy (attempt $attempt): ${cmd[*]}" >&2
    # About (2 × cycles + 1) × (phase + 1 s) plus start-up; timeout is the backstop.
    bound=$(( (2 * cycles + 1) * (phase_s + 1) + 180 ))
    if ! timeout "$bound" "${cmd[@]}" > "$run" 2> "$out/$proxy.driver.log"; then
      echo "{\"proxy\": \"$proxy\", \"error\": \"driver failed, see $proxy.driver.log\"}" >> "$run"
    fi
    # A driver that was killed leaves its proxy and upstreams behind (their pids, one a line).
    for pid_file in "$out/${proxy}"_*.pid; do
      [ -f "$pid_file" ] || continue
      while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done < "$pid_file"
      rm -f "$pid_file"
    done
    grep -E '^xds_scale: ' "$out/$proxy.driver.log" | cut -c1-200 >&2 || true
    pct=$(outside_pct "$run")
    if [ -z "$best" ] || [ "$pct" -lt "$best_pct" ]; then best=$run best_pct=$pct; fi
    [ "$pct" -gt "${EDS_CHURN_OUTSIDE_MAX_PCT:-10}" ] || break
    echo "eds_churn.sh: $proxy: other work used up to $pct % of a CPU during a phase" >&2
  done
  echo "eds_churn.sh: $proxy: keeping $best (other work at most $best_pct % of a CPU in a phase)" >&2
  tail -n 1 "$best" >> "$results"
done

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src 2>/dev/null || commit="$commit (src modified)"
envoy_version=$("$ENVOY_BIN" --version | grep -o '/[0-9]\+\.[0-9]\+\.[0-9]\+/' | tr -d / | head -1)
python3 - "$results" "$commit" "$envoy_version" "$(nproc)" > "$out/results.md" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ok = [r for r in runs if "summary" in r]
setup = ok[0]["churn_setup"] if ok else {}

def f(v, digits=0):
    return "—" if v is None else f"{v:,.{digits}f}".replace(",", " ")

if setup:
    print(f"legate {sys.argv[2]}, Envoy {sys.argv[3]}; {ok[0]['clusters']} EDS clusters × "
          f"{ok[0]['endpoints_per_cluster']} endpoints; churn: one endpoint moved in every cluster each second, "
          f"{setup['pushes_per_s']} SotW EDS response(s) a second, each with {setup['clusters_per_push']} changed assignments; "
          f"load: {setup['rate']} req/s open loop over {setup['connections']} HTTP/1.1 connections to cluster_0 "
          f"({setup['upstreams']} upstreams, {setup['upstreams'] - 1} listed at a time"
          f"{', not changed' if setup['routed_steady'] else ', one moved at each push'}); "
          f"{setup['phase_s']} s phases, medians over the phases of each kind\n")
print("| proxy | phases | RPS | p50 (µs) | p99 (µs; range) | p99.9 (µs) | errors / non-2xx | proxy CPU | non-worker threads | push → ACK p50 / max (ms) | outside CPU, max per phase (s) |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in runs:
    if "summary" not in r:
        print(f"| {r['proxy']} | **{r.get('error', 'failed')}** |||||||||")
        continue
    phases = r["phases"]
    for kind in ("baseline", "churn"):
        side = r["summary"][kind]
        mine = [p for p in phases if p["kind"] == kind]
        errors = sum(p["errors"] for p in mine)
        non2xx = sum(p["non_2xx"] for p in mine)
        # CPU of the threads other than the worker (where both proxies apply xDS), % of one CPU.
        other = sorted(sum(v for k, v in p["threads_cpu_s"].items() if not k.startswith("wrk:worker")) / p["seconds"] * 100 for p in mine)
        acks = [p["ack_ms"] for p in mine if "ack_ms" in p]
        ack = "—" if not acks else f"{f(sorted(a['p50'] for a in acks)[len(acks) // 2], 1)} / {f(max(a['max'] for a in acks), 1)}"
        p99s = sorted(p["latency"]["p99_us"] for p in mine if p["latency"]["p99_us"] is not None)
        p99 = f(side["p99_us"]) + (f" ({f(p99s[0])}–{f(p99s[-1])})" if len(p99s) > 1 else "")
        print(f"| {r['proxy']} | {kind} × {side['phases']} | {f(side['rps'])} | {f(side['p50_us'])} | {p99} "
              f"| {f(side['p999_us'])} | {errors} / {non2xx} | {f(side['proxy_cpu_pct'], 1)} % "
              f"| {f(other[len(other) // 2], 1)} % | {ack} | {f(side['outside_cpu_s_max'], 1)} |")

print("\n| proxy | p99 churn ÷ baseline (medians) | per cycle (churn ÷ mean of the baselines around it) | all requests pooled: p99 baseline → churn (µs) | p99 of requests during an apply / between applies (µs) | ≤ 1.10 |")
print("|---|---:|---|---:|---:|:---:|")
for r in ok:
    s = r["summary"]
    churn = [p for p in r["phases"] if p["kind"] == "churn"]
    during = sorted(p["during_apply"]["p99_us"] or 0 for p in churn)
    between = sorted(p["between_applies"]["p99_us"] or 0 for p in churn)
    mid = len(churn) // 2
    verdict = {True: "yes", False: "**no**", None: "—"}[s["target_met"]]
    pooled = s["pooled"]
    print(f"| {r['proxy']} | **{f(s['p99_ratio'], 2)}** | {', '.join(f(x, 2) for x in s['p99_ratio_per_cycle'])} "
          f"| {f(pooled['baseline']['p99_us'])} → {f(pooled['churn']['p99_us'])} ({f(s['p99_ratio_pooled'], 2)}) "
          f"| {f(during[mid] if churn else None)} / {f(between[mid] if churn else None)} | {verdict} |")
bad = [r["proxy"] for r in ok if r["summary"]["errors"] or r["summary"]["non_2xx"] or r["nacks"] or r["summary"]["skipped_ticks"]
       or not r.get("spot_check", {}).get("ok")]
print(f"\nfailed requests, NACKs, skipped pushes or a failed /clusters spot check: {', '.join(bad) if bad else 'none'}; "
      f"machine: {sys.argv[4]} CPUs, proxy pinned to CPU 1, everything else to CPU 0")
PY
cat "$out/results.md"
echo "eds_churn.sh: done in $((SECONDS - started)) s" >&2
