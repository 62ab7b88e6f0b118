#!/usr/bin/env bash
# Installs the Debian packages vectord needs. Idempotent: installs only what is missing.
#   scripts/deps.sh          build and run dependencies
#   scripts/deps.sh --test   plus what the test suite and benchmarks use
set -euo pipefail

pkgs=(build-essential cmake ninja-build pkg-config libmicrohttpd-dev libcjson-dev liblmdb-dev
      libuv1-dev libsodium-dev libcmocka-dev)
if [ "${1:-}" = "--test" ]; then
    pkgs+=(clang libclang-rt-dev python3 python3-numpy curl iproute2 systemd)
    command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)
fi
if [ "${1:-}" = "--bench" ]; then
    pkgs+=(clang g++ libhnswlib-dev dataset-fashion-mnist python3 python3-numpy python3-matplotlib
           python3-hnswlib curl)
fi

root=$(cd "$(dirname "$0")/.." && pwd)
# Qdrant's JavaScript client, for the compatibility test (from the npm registry, pinned by the lock file).
js_deps() {
    [ "${1:-}" = "--test" ] || return 0
    [ -d "$root/tests/e2e/js/node_modules/@qdrant/js-client-rest" ] && return 0
    npm ci --prefix "$root/tests/e2e/js" --no-audit --no-fund --loglevel=error
}

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    js_deps "${1:-}"
    exit 0
fi

cmd=(apt-get install -y --no-install-recommends "${missing[@]}")
if [ "$(id -u)" -eq 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${cmd[@]}"
elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -q
    sudo DEBIAN_FRONTEND=noninteractive "${cmd[@]}"
else
    echo "vectord needs these packages; run as root: apt-get update && ${cmd[*]}" >&2
    exit 1
fi
js_deps "${1:-}"
