#!/usr/bin/env bash
# Copies a collection between two vectord nodes: creates it on the destination with the source's
# vector size and distance, then streams an export into an import.
#   scripts/copy_collection.sh http://127.0.0.1:6333 http://10.0.0.2:6333 docs [API_KEY]
set -euo pipefail
src=${1:?source URL}; dst=${2:?destination URL}; name=${3:?collection}; key=${4:-${VECTORD_API_KEY:-}}
auth=(); [ -n "$key" ] && auth=(-H "api-key: $key")
params=$(curl -fsS "${auth[@]}" "$src/collections/$name" |
    python3 -c 'import json,sys; p=json.load(sys.stdin)["result"]["config"]["params"]["vectors"]; print(json.dumps({"vectors": p}))')
curl -fsS "${auth[@]}" -X PUT "$dst/collections/$name" -H 'Content-Type: application/json' -d "$params" >/dev/null
curl -fsS "${auth[@]}" "$src/collections/$name/points/export" |
    curl -fsS "${auth[@]}" -X POST -H 'Content-Type: application/x-ndjson' -T - "$dst/collections/$name/points/import"
echo
