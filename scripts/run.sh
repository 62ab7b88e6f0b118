#!/usr/bin/env bash
# Installs what is missing, builds vectord (Release) and runs one node in the foreground on the
# embedded default configuration (data in ./data, REST on 127.0.0.1:6333). Extra arguments are
# passed to vectord, e.g. scripts/run.sh --port 7000.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/deps.sh"
cmake -S "$root" -B "$root/build/release" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$root/build/release" --target vectord
exec "$root/build/release/vectord" "$@"
