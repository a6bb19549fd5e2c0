#!/usr/bin/env bash
# Memory per idle STATIC cluster: RSS of legate with N clusters (one endpoint each) minus
# RSS with none, divided by N. Usage: bash bench/cluster_memory.sh [N...] (default 10000).
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("${@:-10000}")
cargo build --release -j2 --quiet 2>/dev/null || cargo build --release -j2
out=bench/out/cluster_memory
mkdir -p "$out"

write_config() { # n admin_port file
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
n, admin, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
clusters = [{
    "name": f"cluster_{i}", "type": "STATIC", "connect_timeout": "1s",
    "load_assignment": {"cluster_name": f"cluster_{i}", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
        "socket_address": {"address": "127.0.0.1", "port_value": 20000 + i % 10000}}}}]}]},
} for i in range(n)]
json.dump({"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
           "static_resources": {"clusters": clusters}}, open(path, "w"))
PY
}

rss_kib() { # n -> prints VmRSS in KiB once ready
  local n=$1 admin=$((19000 + RANDOM % 1000)) file="$out/clusters_$1.json"
  write_config "$n" "$admin" "$file"
  ./target/release/legate -c "$file" --concurrency 1 -l error &
  local pid=$!
  for _ in $(seq 1 600); do
    curl -sf "127.0.0.1:$admin/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  sleep 1 # let start-up allocations settle
  local rss; rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" || true
  echo "$rss"
}

base=$(rss_kib 0)
echo "baseline (0 clusters): ${base} KiB"
for n in "${counts[@]}"; do
  rss=$(rss_kib "$n")
  echo "clusters=$n rss=${rss} KiB per_cluster=$(( (rss - base) * 1024 / n )) bytes"
done
