#!/bin/sh
# int8 quantization benchmark, in process: vectord with scalar int8 quantization against native
# hnswlib (float) on the 1536-d embedding-like set, same M, ef_construction and flags, interleaved
# rounds (who goes first alternates). Round 1 builds both graphs with one thread and saves them;
# later rounds load them and only search. Writes build/bench/results/quant.jsonl and prints the
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
rm -f "$OUT/quant.jsonl" "$OUT/quant_int8.graph" "$OUT/quant_hnswlib.graph"

run() { # name round driver-args...
    name=$1 r=$2
    shift 2
    "$@" --base "$dir/base.fvecs" --query "$dir/query.fvecs" --gt "$dir/gt.ivecs" --metric ip \
        --m $M --efc $EFC --threads 1 --efs "$EFS" --search --graph "$OUT/quant_$name.graph" |
        sed "s/^{/{\"set\":\"synth1536\",\"round\":$r,/" | tee -a "$OUT/quant.jsonl"
}

r=1
while [ "$r" -le "$ROUNDS" ]; do
    if [ $((r % 2)) = 1 ]; then
        run int8 $r "$B/scripts/bench/bench_index" --quant
        run hnswlib $r "$B/scripts/bench/bench_hnswlib"
    else
        run hnswlib $r "$B/scripts/bench/bench_hnswlib"
        run int8 $r "$B/scripts/bench/bench_index" --quant
    fi
    r=$((r + 1))
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" "$ROOT/scripts/bench/report_quant.py" "$OUT/quant.jsonl" | tee "$OUT/quant_summary.txt"
