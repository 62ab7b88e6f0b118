#!/bin/sh
# Index benchmark: vectord's HNSW against hnswlib (same M, ef_construction, flags), interleaved
# rounds, medians. Builds build/bench, prepares data under build/bench/data, writes raw JSON lines
# and summary.json / summary.txt / recall_qps_*.png under build/bench/results.
#
# Environment: ROUNDS (default 3), ROUNDS_SYNTH (rounds for the 1536-d sets; default ROUNDS), EFS (ef list),
# SETS (default "fashion synth1536"; "gauss1536" is the HTTP benchmark's own generated set),
# SMALL=1 (20k x 1536 instead of 100k), PYTHON (default /usr/bin/python3: needs numpy, matplotlib).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=$ROOT/build/bench
DATA=$B/data
OUT=$B/results
ROUNDS=${ROUNDS:-3}
EFS=${EFS:-10,16,24,32,48,64,96,128,192,256,384,512}
SETS=${SETS:-"fashion synth1536"}
PY=${PYTHON:-/usr/bin/python3}
M=16
EFC=200

cmake -S "$ROOT" -B "$B" -G Ninja -DVD_BENCH=ON -DVD_NATIVE=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$B" --target bench_index bench_hnswlib >/dev/null
SETS_CSV=$(echo $SETS | tr ' ' ',')
if [ "${SMALL:-0}" = 1 ]; then
    "$PY" "$ROOT/scripts/bench/prepare_data.py" "$DATA" --small --sets "$SETS_CSV"
else
    "$PY" "$ROOT/scripts/bench/prepare_data.py" "$DATA" --sets "$SETS_CSV"
fi
mkdir -p "$OUT"
for set in $SETS; do rm -f "$OUT/$set.jsonl"; done

run() { # impl set threads round extra...
    impl=$1 set=$2 th=$3 r=$4
    shift 4
    dir=$DATA/$set
    [ "${SMALL:-0}" = 1 ] && [ "$set" != fashion ] && dir=${dir}_20000
    metric=l2
    case $set in synth* | gauss*) metric=ip ;; esac
    "$B/scripts/bench/bench_$impl" --base "$dir/base.fvecs" --query "$dir/query.fvecs" \
        --gt "$dir/gt.ivecs" --metric $metric --m $M --efc $EFC --threads "$th" --efs "$EFS" "$@" |
        sed "s/^{/{\"set\":\"$set\",\"round\":$r,/" | tee -a "$OUT/$set.jsonl"
}

for set in $SETS; do
    rounds=$ROUNDS
    case $set in synth* | gauss*) rounds=${ROUNDS_SYNTH:-$ROUNDS} ;; esac
    r=1
    while [ $r -le "$rounds" ]; do
        # alternate who goes first so drift on a shared machine favours neither
        if [ $((r % 2)) = 1 ]; then first=index second=hnswlib; else first=hnswlib second=index; fi
        run $first "$set" 1 $r --search --exact
        run $second "$set" 1 $r --search --exact
        run $first "$set" 2 $r
        run $second "$set" 2 $r
        r=$((r + 1))
    done
done
"$PY" "$ROOT/scripts/bench/report.py" "$OUT" | tee "$OUT/summary.txt"
