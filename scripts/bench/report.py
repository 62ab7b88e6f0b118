#!/usr/bin/python3
"""Summarises the index benchmark: medians over rounds of each implementation, our/hnswlib
ratios, QPS at recall@10 >= 0.95, bytes per vector against the memory target; writes
summary.json and recall_qps_<set>.png next to the raw .jsonl files.

Usage: report.py RESULTS_DIR
"""
import glob
import json
import os
import statistics as st
import sys

M = 16


def med(xs):
    xs = [x for x in xs if x is not None]
    return st.median(xs) if xs else None


def qps_at(curve, target, key):
    """Best QPS among ef points whose median recall reaches target (None if none does)."""
    ok = [p[key] for p in curve if p["recall"] >= target]
    return max(ok) if ok else None


def summarise(rows):
    out = {}
    for impl in ("vectord", "hnswlib"):
        r = [x for x in rows if x["impl"] == impl]
        if not r:
            continue
        s = {"rounds": len({x["round"] for x in r})}
        for th in (1, 2):
            b = [x for x in r if x["threads"] == th]
            s["build_s_t%d" % th] = med([x["build_s"] for x in b])
            s["build_cpu_s_t%d" % th] = med([x.get("build_cpu_s") for x in b])
        srch = [x for x in r if "search" in x]
        efs = sorted({p["ef"] for x in srch for p in x["search"]})
        curve = []
        for ef in efs:
            pts = [p for x in srch for p in x["search"] if p["ef"] == ef]
            curve.append({"ef": ef, "recall": med([p["recall"] for p in pts]),
                          "qps": med([p["qps"] for p in pts]),
                          "cpu_qps": med([p["cpu_qps"] for p in pts])})
        s["curve"] = curve
        s["exact_qps"] = med([x.get("exact_qps") for x in srch])
        s["exact_cpu_qps"] = med([x.get("exact_cpu_qps") for x in srch])
        s["exact_gb_s"] = med([x.get("exact_gb_s") for x in srch])
        s["mem_read_gb_s"] = med([x.get("mem_read_gb_s") for x in srch])
        n = srch[0]["n"] if srch else r[0]["n"]
        dim = r[0]["dim"]
        s["n"], s["dim"] = n, dim
        s["rss_bytes_per_vector"] = med([x["rss_delta_bytes"] for x in r if x["threads"] == 1]) / n
        if impl == "vectord":
            s["index_bytes_per_vector"] = med([x["index_bytes"] for x in r]) / n
            s["kernel"] = r[0].get("kernel")
        s["memory_target_bytes_per_vector"] = 1.25 * dim * 4 + 2 * M * 4
        s["qps_at_095"] = qps_at(curve, 0.95, "qps")
        s["cpu_qps_at_095"] = qps_at(curve, 0.95, "cpu_qps")
        out[impl] = s
    return out


def ratio(a, b):
    return a / b if a and b else None


def round_ratios(rows, key):
    """Ours/theirs QPS at recall >= 0.95 within each round: drift on a shared machine hits both
    runs of a round alike, so these ratios are steadier than a ratio of medians."""
    out = []
    for r in sorted({x["round"] for x in rows}):
        q = {}
        for impl in ("vectord", "hnswlib"):
            srch = [x for x in rows if x["round"] == r and x["impl"] == impl and "search" in x]
            q[impl] = qps_at(srch[0]["search"], 0.95, key) if srch else None
        out.append(ratio(q["vectord"], q["hnswlib"]))
    return [x for x in out if x is not None]


def fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def main():
    d = sys.argv[1]
    summary = {}
    for path in sorted(glob.glob(os.path.join(d, "*.jsonl"))):
        name = os.path.basename(path)[:-6]
        rows = [json.loads(l) for l in open(path) if l.startswith("{")]
        summary[name] = summarise(rows)
        summary[name]["round_ratios_cpu"] = round_ratios(rows, "cpu_qps")
        summary[name]["round_ratios_wall"] = round_ratios(rows, "qps")
    try:
        import hnswlib  # noqa: F401
        summary["python3_hnswlib"] = "installed (not measured by this script)"
    except ImportError:
        summary["python3_hnswlib"] = "not installed"
    for name, s in summary.items():
        if not isinstance(s, dict) or "vectord" not in s or "hnswlib" not in s:
            continue
        v, h = s["vectord"], s["hnswlib"]
        print("== %s: %d x %d, rounds %d (vectord kernels: %s)" % (name, v["n"], v["dim"], v["rounds"], v.get("kernel")))
        print("%-28s %12s %12s %8s" % ("", "vectord", "hnswlib", "ratio"))
        rows = []
        for th in (1, 2):
            rows.append(("build wall s, %d thread(s)" % th, v["build_s_t%d" % th], h["build_s_t%d" % th], True))
            rows.append(("build cpu s, %d thread(s)" % th, v["build_cpu_s_t%d" % th], h["build_cpu_s_t%d" % th], True))
        rows += [("QPS @recall>=0.95 (wall)", v["qps_at_095"], h["qps_at_095"], False),
                 ("QPS @recall>=0.95 (cpu)", v["cpu_qps_at_095"], h["cpu_qps_at_095"], False),
                 ("exact scan QPS (wall)", v["exact_qps"], h["exact_qps"], False),
                 ("exact scan QPS (cpu)", v["exact_cpu_qps"], h["exact_cpu_qps"], False),
                 ("exact scan GB/s (wall)", v["exact_gb_s"], h["exact_gb_s"], False),
                 ("RSS bytes/vector", v["rss_bytes_per_vector"], h["rss_bytes_per_vector"], True)]
        for label, a, b, lower_better in rows:
            # ratios are "vectord is this many times better": throughput ours/theirs, time theirs/ours
            r = ratio(b, a) if lower_better else ratio(a, b)
            print("%-28s %12s %12s %8s" % (label, fmt(a), fmt(b), fmt(r, ".2f")))
        for key in ("cpu", "wall"):
            rr = s["round_ratios_" + key]
            if rr:
                print("QPS @recall>=0.95 ratio per round (%s): %s; median %.2f" % (
                    key, " ".join("%.2f" % x for x in rr), med(rr)))
        if v.get("mem_read_gb_s"):
            print("exact scan reads vectors at %.1f GB/s; a plain streaming read of as many bytes: %.1f GB/s (%.2fx)" % (
                v["exact_gb_s"], v["mem_read_gb_s"], v["mem_read_gb_s"] / v["exact_gb_s"]))
        print("memory target bytes/vector %.0f; vectord index_bytes/vector %.0f" % (
            v["memory_target_bytes_per_vector"], v["index_bytes_per_vector"]))
        print("%6s | %8s %10s %10s | %8s %10s %10s" % ("ef", "recall", "qps", "cpu_qps", "recall", "qps", "cpu_qps"))
        hc = {p["ef"]: p for p in h["curve"]}
        for p in v["curve"]:
            q = hc.get(p["ef"], {})
            print("%6d | %8.4f %10.0f %10.0f | %8s %10s %10s" % (p["ef"], p["recall"], p["qps"], p["cpu_qps"],
                  fmt(q.get("recall"), ".4f"), fmt(q.get("qps"), ".0f"), fmt(q.get("cpu_qps"), ".0f")))
        print()
        s["ratios"] = {
            "qps_at_095_wall": ratio(v["qps_at_095"], h["qps_at_095"]),
            "qps_at_095_cpu": ratio(v["cpu_qps_at_095"], h["cpu_qps_at_095"]),
            "build_throughput_t1_wall": ratio(h["build_s_t1"], v["build_s_t1"]),
            "build_throughput_t2_wall": ratio(h["build_s_t2"], v["build_s_t2"]),
            "build_throughput_t1_cpu": ratio(h["build_cpu_s_t1"], v["build_cpu_s_t1"]),
            "build_throughput_t2_cpu": ratio(h["build_cpu_s_t2"], v["build_cpu_s_t2"]),
        }
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            fig, ax = plt.subplots(1, 2, figsize=(11, 4.5))
            for impl, style in (("vectord", "o-"), ("hnswlib", "s--")):
                c = s[impl]["curve"]
                ax[0].plot([p["recall"] for p in c], [p["qps"] for p in c], style, label=impl)
                ax[1].plot([p["recall"] for p in c], [p["cpu_qps"] for p in c], style, label=impl)
            for a, t in zip(ax, ("queries / wall second", "queries / CPU second")):
                a.set_yscale("log")
                a.set_xlabel("recall@10")
                a.set_ylabel(t)
                a.axvline(0.95, color="grey", lw=0.5)
                a.grid(True, which="both", lw=0.3)
                a.legend()
            fig.suptitle("%s (%d x %d), M=16, ef_construction=200, 1 thread" % (name, v["n"], v["dim"]))
            fig.tight_layout()
            fig.savefig(os.path.join(d, "recall_qps_%s.png" % name), dpi=110)
        except ImportError:
            pass
    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("python3-hnswlib:", summary["python3_hnswlib"])


if __name__ == "__main__":
    main()
