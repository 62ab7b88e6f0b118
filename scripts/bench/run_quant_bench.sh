#!/bin/sh
# int8 quantization benchmark, in process: vectord with scalar int8 quantization, with the float
# vectors in memory (always_ram true) and on disk (always_ram false: read from a memory map of
# the base file), against native hnswlib (float) on the 1536-d embedding-like set, same M,
# ef_construction and flags, interleaved rounds (the order rotates). Round 1 builds the three
# graphs with one thread and saves them; later rounds load them (the resident bytes a load adds
# are the memory figure) and only search. Writes build/bench/results/quant.jsonl and prints the
# summary of report_quant.py.
#
# Environment: ROUNDS (default 3), EFS (ef list), SMALL=1 (20k x 1536 instead of 100k),
# PYTHON (default /usr/bin/python3: needs numpy).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=$ROOT/build/bench
DATA=$B/data
OUT=$B/results
ROUNDS=${ROUNDS:-3}
EFS=${EFS:-10,16,24,32,48,64,96,128}
PY=${PYTHON:-/usr/bin/python3}
M=16
EFC=200

cmake -S "$ROOT" -B "$B" -G Ninja -DVD_BENCH=ON -DVD_NATIVE=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$B" --target bench_index bench_hnswlib >/dev/null
dir=$DATA/synth1536
if [ "${SMALL:-0}" = 1 ]; then
    "$PY" "$ROOT/scripts/bench/prepare_data.py" "$DATA" --small --sets synth1536
    dir=${dir}_20000
else
    "$PY" "$ROOT/scripts/bench/prepare_data.py" "$DATA" --sets synth1536
fi
mkdir -p "$OUT"
rm -f "$OUT/quant.jsonl" "$OUT/quant_int8.graph" "$OUT/quant_int8disk.graph" "$OUT/quant_hnswlib.graph"

run() { # name round driver-args...
    name=$1 r=$2
    shift 2
    "$@" --base "$dir/base.fvecs" --query "$dir/query.fvecs" --gt "$dir/gt.ivecs" --metric ip \
        --m $M --efc $EFC --threads 1 --efs "$EFS" --search --graph "$OUT/quant_$name.graph" |
        sed "s/^{/{\"set\":\"synth1536\",\"round\":$r,/" | tee -a "$OUT/quant.jsonl"
}

one() { # which round
    case $1 in
    0) run int8 $2 "$B/scripts/bench/bench_index" --quant ;;
    1) run int8disk $2 "$B/scripts/bench/bench_index" --disk ;;
    2) run hnswlib $2 "$B/scripts/bench/bench_hnswlib" ;;
    esac
}

r=1
while [ "$r" -le "$ROUNDS" ]; do
    echo "round $r, load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    one $((r % 3)) $r
    one $(((r + 1) % 3)) $r
    one $(((r + 2) % 3)) $r
    r=$((r + 1))
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" "$ROOT/scripts/bench/report_quant.py" "$OUT/quant.jsonl" | tee "$OUT/quant_summary.txt"
