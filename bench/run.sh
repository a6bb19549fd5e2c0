#!/usr/bin/env bash
# legate throughput benchmark: the same workloads against the upstream directly and through
# legate (--concurrency 1), pinned with taskset. Writes everything under bench/out/ and prints
# a results table (also saved as bench/out/results.md). See BENCHMARKS.md.
#
#   bash bench/run.sh
#
# Knobs (environment; defaults are what BENCHMARKS.md reports):
#   BENCH_DURATION=10   seconds per measured run
#   BENCH_WARMUP=2      seconds of warm-up before the measured runs of each (workload, target)
#   BENCH_REPS=3        measured runs per (workload, target); the table shows the median
#   BENCH_TARGETS="direct legate"   which targets to run; "envoy" and "haproxy" are reserved
#                       for the next issue (side-by-side) and are not implemented yet
#   BENCH_WORKLOADS="h1_small h1_16k h2c_small h2c_small_h1up h1_seq h1_seq_h2load"
#   BENCH_XCPU=1        also run the cross-CPU control (upstream alone on the proxy's CPU,
#                       h1_seq_h2load direct): what one client->server hop across the two
#                       vCPUs costs on this machine, without any proxy
#   BENCH_FOREIGN_MAX_PCT=3 BENCH_RETRIES=3 BENCH_QUIET_WAIT=60 BENCH_QUIET_BUDGET=300
#                       guard against other load on the box (see foreign_snapshot)
#   BENCH_SKIP_BUILD=1  use the existing target/release binaries
#
# CPU layout (the machine this was written for has 2 cores):
#   CPU 0: load generator (wrk -t1 / h2load -t1) + upstream (bench_upstream, 1 thread)
#   CPU 1: the proxy under test (legate, the whole process: worker + control thread)
# The same layout is used for the direct runs, so there CPU 1 is idle.
# All traffic is to 127.0.0.1.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="$ROOT/bench/out"
mkdir -p "$OUT"

DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
REPS="${BENCH_REPS:-3}"
TARGETS="${BENCH_TARGETS:-direct legate}"
WORKLOADS="${BENCH_WORKLOADS:-h1_small h1_16k h2c_small h2c_small_h1up h1_seq h1_seq_h2load}"

LG_CPU=0        # load generator
UP_CPU=0        # upstream
PROXY_CPU=1     # proxy under test

UP_PORT=18080           # bench_upstream (CPU 0)
XCPU_UP_PORT=18081      # control: a second bench_upstream on the proxy's CPU (see main)
LEGATE_H1UP_PORT=18000  # legate listener -> cluster "up_h1" (HTTP/1.1 upstream)
LEGATE_H2UP_PORT=18001  # legate listener -> cluster "up_h2" (HTTP/2 upstream)
LEGATE_ADMIN_PORT=19901
# Reserved for the next issue (Envoy / HAProxy side by side):
# ENVOY_H1UP_PORT=18100 ENVOY_H2UP_PORT=18101 ENVOY_ADMIN_PORT=19902
# HAPROXY_H1UP_PORT=18200 HAPROXY_H2UP_PORT=18201

LEGATE_BIN="$ROOT/target/release/legate"
UPSTREAM_BIN="$ROOT/target/release/examples/bench_upstream"
WRK_SCRIPT="$OUT/report.lua"

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools and builds
ensure_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v h2load >/dev/null || missing+=(nghttp2-client)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v curl >/dev/null || missing+=(curl)
    if ((${#missing[@]})); then
        log "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y "${missing[@]}"; then
            apt-get update
            apt-get install -y "${missing[@]}"
        fi
    fi
}

build() {
    if [[ "${BENCH_SKIP_BUILD:-0}" == 1 && -x "$LEGATE_BIN" && -x "$UPSTREAM_BIN" ]]; then
        log "BENCH_SKIP_BUILD=1: using existing binaries"
        return
    fi
    log "building legate and bench_upstream (release)"
    cargo build --release -j2 --bin legate --example bench_upstream
}

# ---------------------------------------------------------------- configs
write_wrk_script() {
    # Only a done() hook: no per-request Lua, so it costs wrk nothing while measuring.
    cat >"$WRK_SCRIPT" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d mean_us=%.1f max_us=%d " ..
    "connect_err=%d read_err=%d write_err=%d status_err=%d timeout_err=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
EOF
}

legate_listener() { # name port cluster
    cat <<EOF
  - name: $1
    address:
      socket_address: { address: 127.0.0.1, port_value: $2 }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          codec_type: AUTO
          route_config:
            name: $1_route
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: $3 }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
EOF
}

legate_cluster() { # name h1|h2
    cat <<EOF
  - name: $1
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
EOF
    if [[ "$2" == h2 ]]; then
        cat <<EOF
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
EOF
    fi
    cat <<EOF
    load_assignment:
      cluster_name: $1
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: $UP_PORT }
EOF
}

write_legate_config() {
    {
        cat <<EOF
# Generated by bench/run.sh. No access log, default stats.
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: $LEGATE_ADMIN_PORT }
static_resources:
  listeners:
EOF
        legate_listener bench_h1up "$LEGATE_H1UP_PORT" up_h1
        legate_listener bench_h2up "$LEGATE_H2UP_PORT" up_h2
        echo "  clusters:"
        legate_cluster up_h1 h1
        legate_cluster up_h2 h2
    } >"$OUT/legate.yaml"
}

# Hooks for the next issue: write_envoy_config / start_envoy and write_haproxy_config /
# start_haproxy, with the same two front ports (h1 upstream, h2 upstream) as legate, pinned
# to $PROXY_CPU with one worker (envoy --concurrency 1, haproxy nbthread 1).
write_envoy_config() { die "envoy target: not implemented yet (next issue)"; }
write_haproxy_config() { die "haproxy target: not implemented yet (next issue)"; }

# ---------------------------------------------------------------- processes
wait_http() { # url, seconds
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        if curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

start_upstream() {
    taskset -c "$UP_CPU" "$UPSTREAM_BIN" "$UP_PORT" 1 >"$OUT/upstream.log" 2>&1 &
    UPSTREAM_PID=$!
    PIDS+=("$UPSTREAM_PID")
    wait_http "http://127.0.0.1:$UP_PORT/" 10 || die "bench_upstream did not come up (see $OUT/upstream.log)"
}

LEGATE_PID=""
start_legate() {
    write_legate_config
    LEGATE_CMD=(taskset -c "$PROXY_CPU" "$LEGATE_BIN" -c "$OUT/legate.yaml" --concurrency 1)
    log "starting: ${LEGATE_CMD[*]}"
    "${LEGATE_CMD[@]}" >"$OUT/legate.stdout" 2>"$OUT/legate.stderr" &
    LEGATE_PID=$!
    PIDS+=("$LEGATE_PID")
    wait_http "http://127.0.0.1:$LEGATE_H1UP_PORT/" 15 || die "legate did not come up (see $OUT/legate.stderr)"
    wait_http "http://127.0.0.1:$LEGATE_H2UP_PORT/" 5 || die "legate h2-upstream listener did not answer"
    sleep 0.5
    LEGATE_RSS_IDLE_KB=$(proc_status_kb "$LEGATE_PID" VmRSS)
}

legate_alive() {
    [[ -n "$LEGATE_PID" ]] && kill -0 "$LEGATE_PID" 2>/dev/null
}

proc_cpu_ticks() { # utime+stime of the whole process (all threads), in clock ticks
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
proc_status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

# ---------------------------------------------------------------- other load on the machine
# The box may be shared (someone compiling in the same checkout). "Foreign" CPU is the
# utime+stime+cutime+cstime of every process that is not ours (this script, its children,
# the upstream, the proxy), summed over /proc; a run with more than BENCH_FOREIGN_MAX_PCT
# percent of one CPU of foreign load is discarded and repeated (up to BENCH_RETRIES times).
FOREIGN_MAX_PCT="${BENCH_FOREIGN_MAX_PCT:-3}"
RETRIES="${BENCH_RETRIES:-3}"
QUIET_WAIT="${BENCH_QUIET_WAIT:-60}"      # per call
QUIET_BUDGET="${BENCH_QUIET_BUDGET:-300}"  # over the whole script: past it, no waits, no retries
QUIET_WAITED=0
foreign_snapshot() { # prints "pid ticks" for processes not ours
    local ours=" $$ ${UPSTREAM_PID:-} ${LEGATE_PID:-} ${XCPU_UPSTREAM_PID:-} "
    # A process may exit between the glob and the read: cat then fails, which must not end
    # the script (pipefail).
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v ours="$ours" '{
        pid = $1; line = $0; sub(/^.*\) /, "", line); split(line, f, " ")
        if (index(ours, " " pid " ")) next
        print pid, f[12] + f[13] + f[14] + f[15] }'
}
foreign_delta() { # before-file after-file -> ticks used by foreign processes in between
    awk 'NR == FNR { b[$1] = $2; next } { d = $2 - (($1 in b) ? b[$1] : 0); if (d > 0) s += d } END { print s + 0 }' "$1" "$2"
}
# Wait (up to QUIET_WAIT s in total per call) until foreign load over 1 s is under the limit.
wait_quiet() {
    local waited=0 d
    while :; do
        ((QUIET_WAITED >= QUIET_BUDGET)) && return 1
        foreign_snapshot >"$OUT/.fg0"
        sleep 1
        foreign_snapshot >"$OUT/.fg1"
        d=$(foreign_delta "$OUT/.fg0" "$OUT/.fg1")
        if ((d * 100 <= FOREIGN_MAX_PCT * CLK_TCK)); then return 0; fi
        if ((waited == 0)); then log "  machine busy (foreign load $((d * 100 / CLK_TCK))% of a CPU), waiting up to ${QUIET_WAIT}s"; fi
        waited=$((waited + 1)); QUIET_WAITED=$((QUIET_WAITED + 1))
        if ((waited >= QUIET_WAIT)); then
            log "  WARNING: still busy after ${QUIET_WAIT}s; measuring anyway"
            return 1
        fi
    done
}

# ---------------------------------------------------------------- workloads
# Each workload: a client (wrk or h2load), a path, and which legate port it goes through.
wl_desc() {
    case "$1" in
    h1_small) echo "HTTP/1.1 GET / (3 B), wrk -t1 -c50" ;;
    h1_16k) echo "HTTP/1.1 GET /16k (16 KiB), wrk -t1 -c50" ;;
    h2c_small) echo "h2c GET /, h2load -t1 -c10 -m10, h2 upstream" ;;
    h2c_small_h1up) echo "h2c GET /, h2load -t1 -c10 -m10, h1 upstream" ;;
    h1_seq) echo "HTTP/1.1 GET /, wrk -t1 -c1 (sequential)" ;;
    h1_seq_h2load) echo "HTTP/1.1 GET /, h2load --h1 -c1 -m1 (sequential)" ;;
    *) die "unknown workload $1" ;;
    esac
}
wl_path() { case "$1" in h1_16k) echo /16k ;; *) echo / ;; esac; }
wl_conns() { case "$1" in h1_small | h1_16k) echo 50 ;; h1_seq*) echo 1 ;; *) echo 10 ;; esac; }
wl_tool() { case "$1" in h2c_*) echo h2load ;; h1_seq_h2load) echo h2load-h1 ;; *) echo wrk ;; esac; }
# The direct baseline for a workload (h2c_small_h1up shares h2c_small's direct run).
wl_direct_key() { case "$1" in h2c_small_h1up) echo h2c_small ;; *) echo "$1" ;; esac; }

target_port() { # target workload
    case "$1" in
    direct) echo "$UP_PORT" ;;
    xcpu) echo "$XCPU_UP_PORT" ;;
    legate) case "$2" in h2c_small) echo "$LEGATE_H2UP_PORT" ;; *) echo "$LEGATE_H1UP_PORT" ;; esac ;;
    envoy | haproxy) die "$1 target: not implemented yet (next issue)" ;;
    *) die "unknown target $1" ;;
    esac
}

# run_load tool url conns seconds outfile -> prints "requests rps p50_us p99_us errors non2xx note"
run_load() {
    local tool=$1 url=$2 conns=$3 secs=$4 out=$5 cmd
    if [[ "$tool" == wrk ]]; then
        cmd=(taskset -c "$LG_CPU" wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$WRK_SCRIPT" "$url")
        echo "# ${cmd[*]}" >"$out"
        "${cmd[@]}" >>"$out" 2>&1 || true
        awk '
            /^BENCH / {
                for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                errs = v["connect_err"] + v["read_err"] + v["write_err"] + v["timeout_err"]
                rps = v["duration_us"] > 0 ? v["requests"] / (v["duration_us"] / 1e6) : 0
                printf "%d %.0f %d %d %d %d p50\n", v["requests"], rps, v["p50_us"], v["p99_us"], errs, v["status_err"]
                found = 1
            }
            END { if (!found) print "0 0 0 0 -1 -1 wrk-failed" }' "$out"
    else
        local logf="${out%.txt}.reqlog"
        if [[ "$tool" == h2load-h1 ]]; then
            cmd=(taskset -c "$LG_CPU" h2load --h1 -t1 -c"$conns" -m1 -D "$secs" --log-file="$logf" "$url")
        else
            cmd=(taskset -c "$LG_CPU" h2load -t1 -c"$conns" -m10 -D "$secs" --log-file="$logf" "$url")
        fi
        echo "# ${cmd[*]}" >"$out"
        "${cmd[@]}" >>"$out" 2>&1 || true
        # h2load's log file: start time (us since epoch), status, duration (us) per request.
        local pct
        pct=$(awk -F'\t' '$2 >= 200 && $2 < 300 { print $3 }' "$logf" 2>/dev/null | sort -n |
            awk '{ a[NR] = $1 } END {
                if (NR == 0) { print "0 0"; exit }
                i50 = int(NR * 0.50 + 0.5); if (i50 < 1) i50 = 1
                i99 = int(NR * 0.99 + 0.5); if (i99 < 1) i99 = 1
                print a[i50], a[i99] }')
        awk -v pct="$pct" '
            /^finished in/ { for (i = 1; i <= NF; i++) if ($(i) ~ /req\/s/) { rps = $(i-1); sub(/,$/, "", rps) } }
            /^requests:/ { total = $2; succ = $8; failed = $10; errored = $12; timeout = $14 }
            /^status codes:/ { c2 = $3 }
            END {
                split(pct, p, " ")
                if (total == "") { print "0 0 0 0 -1 -1 h2load-failed"; exit }
                printf "%d %.0f %d %d %d %d p50\n", c2 + 0, rps, p[1], p[2], failed + errored + timeout, total - c2
            }' "$out"
    fi
}

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR ? a[int((NR + 1) / 2)] : 0) }'; }

# results: RES[<target>.<key>.<field>] = median
declare -A RES

bench_one() { # target workload
    local target=$1 wl=$2 port tool path conns url r line
    port=$(target_port "$target" "$wl")
    tool=$(wl_tool "$wl")
    path=$(wl_path "$wl")
    conns=$(wl_conns "$wl")
    url="http://127.0.0.1:$port$path"
    log "$target / $wl: $(wl_desc "$wl")  ($url)"
    run_load "$tool" "$url" "$conns" "$WARMUP" "$OUT/$target.$wl.warmup.txt" >/dev/null
    local rps=() p50=() p99=() errs=() non2xx=() cpu=() c0 c1 req
    local attempt=0 fticks fmax=$((FOREIGN_MAX_PCT * DURATION * CLK_TCK / 100))
    for ((r = 1; r <= REPS; r++)); do
        wait_quiet || true
        [[ "$target" == legate ]] && { legate_alive || die "legate exited (see $OUT/legate.stderr)"; c0=$(proc_cpu_ticks "$LEGATE_PID"); }
        foreign_snapshot >"$OUT/.fr0"
        line=$(run_load "$tool" "$url" "$conns" "$DURATION" "$OUT/$target.$wl.run$r.txt")
        foreign_snapshot >"$OUT/.fr1"
        fticks=$(foreign_delta "$OUT/.fr0" "$OUT/.fr1")
        read -r req rps_r p50_r p99_r err_r non_r _ <<<"$line"
        log "  run $r: requests=$req rps=$rps_r p50=${p50_r}us p99=${p99_r}us errors=$err_r non2xx=$non_r foreign_cpu=$((fticks * 1000 / CLK_TCK))ms"
        if [[ "$err_r" != 0 || "$non_r" != 0 ]]; then
            log "  WARNING: $target/$wl run $r had errors=$err_r non2xx=$non_r (see $OUT/$target.$wl.run$r.txt)"
        fi
        if [[ "$target" == legate ]]; then
            legate_alive || die "legate exited during $wl run $r (see $OUT/legate.stderr)"
            c1=$(proc_cpu_ticks "$LEGATE_PID")
        fi
        if ((fticks > fmax && attempt < RETRIES && QUIET_WAITED < QUIET_BUDGET)); then
            attempt=$((attempt + 1))
            log "  discarding run $r: other processes used $((fticks * 1000 / CLK_TCK)) ms of CPU during it (retry $attempt/$RETRIES)"
            RES[discarded]=$((${RES[discarded]:-0} + 1))
            r=$((r - 1))
            continue
        fi
        ((fticks > fmax)) && RES[contaminated]="${RES[contaminated]:-} $target.$wl.run$r"
        if [[ "$target" == legate ]] && ((req > 0)); then
            cpu+=("$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$req" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')")
        fi
        rps+=("$rps_r"); p50+=("$p50_r"); p99+=("$p99_r"); errs+=("$err_r"); non2xx+=("$non_r")
    done
    local k="$target.$wl"
    RES[$k.rps]=$(printf '%s\n' "${rps[@]}" | median)
    RES[$k.p50]=$(printf '%s\n' "${p50[@]}" | median)
    RES[$k.p99]=$(printf '%s\n' "${p99[@]}" | median)
    RES[$k.errs]=$(printf '%s\n' "${errs[@]}" | awk '{ s += $1 } END { print s + 0 }')
    RES[$k.non2xx]=$(printf '%s\n' "${non2xx[@]}" | awk '{ s += $1 } END { print s + 0 }')
    RES[$k.rps_all]="${rps[*]}"
    if ((${#cpu[@]})); then RES[$k.cpu]=$(printf '%s\n' "${cpu[@]}" | median); fi
}

# ---------------------------------------------------------------- main
main() {
    local t0=$SECONDS
    CLK_TCK=$(getconf CLK_TCK)
    {
        echo "command: bash bench/run.sh  (BENCH_DURATION=$DURATION BENCH_WARMUP=$WARMUP BENCH_REPS=$REPS BENCH_TARGETS=\"$TARGETS\")"
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "machine: nproc=$(nproc), cpu=\"$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)\", kernel=$(uname -r)"
        echo "layout: load generator CPU $LG_CPU, upstream CPU $UP_CPU, proxy CPU $PROXY_CPU"
    } | tee "$OUT/machine.txt"

    ensure_tools
    build
    {
        echo "tools: $(wrk -v 2>&1 | head -1 | awk '{ print $1, $2 }'); $(h2load --version 2>&1 | head -1); $(rustc --version)"
        echo "legate: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- src build.rs Cargo.toml 2>/dev/null || echo ' + uncommitted changes in src/build.rs/Cargo.toml')"
    } | tee -a "$OUT/machine.txt"
    write_wrk_script

    for t in $TARGETS; do
        case "$t" in direct | legate) ;; envoy | haproxy) die "$t target: not implemented yet (next issue)" ;; *) die "unknown target $t" ;; esac
    done

    start_upstream
    local wl t
    if [[ " $TARGETS " == *" legate "* ]]; then start_legate; fi
    for wl in $WORKLOADS; do
        for t in $TARGETS; do
            if [[ "$t" == direct && "$(wl_direct_key "$wl")" != "$wl" ]]; then continue; fi
            bench_one "$t" "$wl"
        done
    done
    if [[ "${BENCH_XCPU:-1}" == 1 && " $WORKLOADS " == *" h1_seq_h2load "* ]]; then
        taskset -c "$PROXY_CPU" "$UPSTREAM_BIN" "$XCPU_UP_PORT" 1 >"$OUT/upstream_xcpu.log" 2>&1 &
        XCPU_UPSTREAM_PID=$!
        PIDS+=("$XCPU_UPSTREAM_PID")
        wait_http "http://127.0.0.1:$XCPU_UP_PORT/" 10 || die "control upstream did not come up"
        bench_one xcpu h1_seq_h2load
        kill "$XCPU_UPSTREAM_PID" 2>/dev/null || true
    fi
    local rss_peak=""
    if legate_alive; then
        rss_peak=$(proc_status_kb "$LEGATE_PID" VmHWM)
        LEGATE_RSS_END_KB=$(proc_status_kb "$LEGATE_PID" VmRSS)
    fi

    # ------------------------------------------------------------ table
    {
        echo
        echo "| workload | direct RPS | legate RPS | ratio | p50 direct | p50 legate | p99 direct | p99 legate | legate CPU/req | errors / non-2xx (legate) |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for wl in $WORKLOADS; do
            local dk d l ratio
            dk="direct.$(wl_direct_key "$wl")"
            l="legate.$wl"
            ratio=$(awk -v a="${RES[$l.rps]:-0}" -v b="${RES[$dk.rps]:-0}" 'BEGIN { if (b > 0 && a > 0) printf "%.2f", a / b; else print "-" }')
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s |\n' \
                "$(wl_desc "$wl")" "${RES[$dk.rps]:--}" "${RES[$l.rps]:--}" "$ratio" \
                "$(fmt_us "${RES[$dk.p50]:-}")" "$(fmt_us "${RES[$l.p50]:-}")" \
                "$(fmt_us "${RES[$dk.p99]:-}")" "$(fmt_us "${RES[$l.p99]:-}")" \
                "${RES[$l.cpu]:+${RES[$l.cpu]} µs}" "${RES[$l.errs]:--}" "${RES[$l.non2xx]:--}"
        done
        echo
        if [[ -n "${RES[direct.h1_seq.p50]:-}" && -n "${RES[legate.h1_seq.p50]:-}" ]]; then
            echo "added latency (wrk -c1): p50 legate - p50 direct = $((RES[legate.h1_seq.p50] - RES[direct.h1_seq.p50])) µs"
        fi
        if [[ -n "${RES[direct.h1_seq_h2load.p50]:-}" && -n "${RES[legate.h1_seq_h2load.p50]:-}" ]]; then
            echo "added latency (h2load --h1 -c1 -m1, raw per-request times): p50 legate - p50 direct = $((RES[legate.h1_seq_h2load.p50] - RES[direct.h1_seq_h2load.p50])) µs"
        fi
        if [[ -n "${RES[xcpu.h1_seq_h2load.rps]:-}" ]]; then
            echo "control, no proxy, upstream alone on CPU $PROXY_CPU (h2load --h1 -c1 -m1): RPS ${RES[xcpu.h1_seq_h2load.rps]}, p50 $(fmt_us "${RES[xcpu.h1_seq_h2load.p50]}"), p99 $(fmt_us "${RES[xcpu.h1_seq_h2load.p99]}")"
        fi
        echo "runs discarded for foreign load and repeated: ${RES[discarded]:-0}; kept despite foreign load: ${RES[contaminated]:-none}"
        if [[ -n "${LEGATE_RSS_IDLE_KB:-}" ]]; then
            echo "legate RSS: idle ${LEGATE_RSS_IDLE_KB} KiB, peak (VmHWM) ${rss_peak:-?} KiB, at end ${LEGATE_RSS_END_KB:-?} KiB"
        fi
        echo "RPS per run:"
        for wl in $WORKLOADS; do
            for t in $TARGETS xcpu; do
                [[ -n "${RES[$t.$wl.rps_all]:-}" ]] && echo "  $t $wl: ${RES[$t.$wl.rps_all]}"
            done
        done
        echo "medians of $REPS runs of ${DURATION}s after ${WARMUP}s warm-up; each column's median is taken on its own."
        echo "wrk latency percentiles are wrk's own, which include its coordinated-omission correction"
        echo "(stats_correct adds synthetic samples for requests slower than twice the mean interval);"
        echo "h2load percentiles are raw, from its per-request --log-file (2xx only)."
        echo "legate CPU/req = (utime+stime of the legate process over the run) / requests, all threads."
        echo "total time: $((SECONDS - t0)) s"
    } | tee "$OUT/results.md"
    if [[ -n "$LEGATE_PID" ]] && [[ -s "$OUT/legate.stderr" ]]; then
        log "legate stderr (last 20 lines of $OUT/legate.stderr):"
        tail -n 20 "$OUT/legate.stderr" >&2
    fi
}

fmt_us() { # microseconds -> "123 µs" / "1.23 ms"
    [[ -z "$1" ]] && { echo "-"; return; }
    awk -v u="$1" 'BEGIN { if (u >= 1000) printf "%.2f ms", u / 1000; else printf "%d µs", u }'
}

main "$@"
