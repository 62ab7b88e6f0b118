#!/usr/bin/python3
"""Summarises run_quant_bench.sh: per round and as medians, queries per CPU second at
recall@10 >= 0.95 for vectord int8 (codes walked, beam rescored) against hnswlib (float), recall
at equal ef for the float walk, the rescored int8 walk and the codes alone on the same graph, and
the bytes of vectors the index holds.

Usage: report_quant.py quant.jsonl
"""
import json
import statistics as st
import sys


def qps_at(curve, target, key="cpu_qps"):
    ok = [p[key] for p in curve if p["recall"] >= target]
    return max(ok) if ok else None


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    rounds = sorted({r["round"] for r in rows})
    ratios = []
    print("round  int8 QPS@0.95  hnswlib QPS@0.95  ratio  (queries per CPU second, one thread)")
    for rd in rounds:
        q8 = next(r for r in rows if r["round"] == rd and r["impl"] == "vectord-int8")
        qh = next(r for r in rows if r["round"] == rd and r["impl"] == "hnswlib")
        a, b = qps_at(q8["search"], 0.95), qps_at(qh["search"], 0.95)
        ratio = a / b if a and b else None
        ratios.append(ratio)
        print(f"{rd:5}  {a or 0:13.0f}  {b or 0:16.0f}  {ratio or 0:5.2f}")
    good = [x for x in ratios if x]
    print(f"median ratio int8/hnswlib: {st.median(good):.2f}" if good else "no ratio")
    q8 = [r for r in rows if r["impl"] == "vectord-int8"]
    qh = [r for r in rows if r["impl"] == "hnswlib"]
    print("\nef   recall float walk  int8 rescored  int8 codes only  hnswlib   "
          "cpu QPS: float walk  int8 rescored  hnswlib (medians)")
    for i, p in enumerate(q8[0]["search"]):
        def m(rs, key, field):
            return st.median(r[key][i][field] for r in rs)
        print(f"{p['ef']:4} {m(q8, 'search_float', 'recall'):18.4f} {m(q8, 'search', 'recall'):14.4f}"
              f" {m(q8, 'search_codes', 'recall'):16.4f} {m(qh, 'search', 'recall'):8.4f}"
              f" {m(q8, 'search_float', 'cpu_qps'):21.0f} {m(q8, 'search', 'cpu_qps'):14.0f}"
              f" {m(qh, 'search', 'cpu_qps'):8.0f}")
    r0 = q8[0]
    print(f"\nvectors held: {r0['vector_bytes'] / 2**20:.1f} MiB (floats {r0['float_vector_bytes'] / 2**20:.1f}"
          f" MiB + codes): {r0['vector_bytes'] / r0['float_vector_bytes']:.2f}x the floats; "
          f"code kernel {r0['code_kernel']}, float kernel {r0['kernel']}")
    for impl, rs in (("vectord-int8", q8), ("hnswlib", qh)):
        b = [r for r in rs if "build_cpu_s" in r]
        if b:
            print(f"build ({impl}, 1 thread): {b[0]['build_cpu_s']:.1f} CPU s")


if __name__ == "__main__":
    main()
