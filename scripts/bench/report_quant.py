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
    ratios, dratios = [], []
    print("round  int8 QPS@0.95  int8-disk QPS@0.95  hnswlib QPS@0.95  int8/hnswlib  disk/hnswlib"
          "  (queries per CPU second, one thread)")
    for rd in rounds:
        q8 = next(r for r in rows if r["round"] == rd and r["impl"] == "vectord-int8")
        qd = next((r for r in rows if r["round"] == rd and r["impl"] == "vectord-int8-disk"), None)
        qh = next(r for r in rows if r["round"] == rd and r["impl"] == "hnswlib")
        a, b = qps_at(q8["search"], 0.95), qps_at(qh["search"], 0.95)
        d = qps_at(qd["search"], 0.95) if qd else None
        ratio = a / b if a and b else None
        dratio = d / b if d and b else None
        ratios.append(ratio)
        dratios.append(dratio)
        print(f"{rd:5}  {a or 0:13.0f}  {d or 0:18.0f}  {b or 0:16.0f}  {ratio or 0:12.2f}"
              f"  {dratio or 0:12.2f}")
    good = [x for x in ratios if x]
    print(f"median ratio int8/hnswlib: {st.median(good):.2f}" if good else "no ratio")
    good = [x for x in dratios if x]
    print(f"median ratio int8-disk/hnswlib: {st.median(good):.2f}" if good else "no disk ratio")
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
    qd = [r for r in rows if r["impl"] == "vectord-int8-disk"]
    if qd:
        print("\nint8 with the floats on disk: ef, recall rescored, codes only, cpu QPS rescored (medians)")
        for i, p in enumerate(qd[0]["search"]):
            print(f"{p['ef']:4} {st.median(r['search'][i]['recall'] for r in qd):8.4f}"
                  f" {st.median(r['search_codes'][i]['recall'] for r in qd):8.4f}"
                  f" {st.median(r['search'][i]['cpu_qps'] for r in qd):8.0f}")
        fl = qd[0]["float_vector_bytes"]
        for impl, rs in (("vectord-int8", q8), ("vectord-int8-disk", qd)):
            ld = [r["rss_load_delta_bytes"] for r in rs if "rss_load_delta_bytes" in r]
            vb = rs[0]["vector_bytes"]
            line = f"{impl}: vectors held {vb / 2**20:.1f} MiB = {vb / fl:.3f}x the float vectors"
            if ld:
                line += (f"; resident bytes a load adds (graph, ids, vectors): median "
                         f"{st.median(ld) / 2**20:.1f} MiB = {st.median(ld) / fl:.3f}x the floats")
            sa = [r["rss_search_anon_delta_bytes"] for r in rs if "rss_search_anon_delta_bytes" in r]
            sf = [r["rss_search_file_delta_bytes"] for r in rs if "rss_search_file_delta_bytes" in r]
            if sa:
                line += (f"; searches added heap {st.median(sa) / 2**20:.1f} MiB, "
                         f"mapped file pages {st.median(sf) / 2**20:.1f} MiB (medians)")
            print(line)
    for impl, rs in (("vectord-int8", q8), ("vectord-int8-disk", qd), ("hnswlib", qh)):
        b = [r for r in rs if "build_cpu_s" in r]
        if b:
            print(f"build ({impl}, 1 thread): {b[0]['build_cpu_s']:.1f} CPU s")


if __name__ == "__main__":
    main()
