#!/usr/bin/env python3
"""Filtered search with and without a payload index, over HTTP on one node.

    scripts/bench_filter.py [--binary build/release/vectord] [--n 100000] [--dim 1536]

Loads N embedding-like vectors (Cosine) whose payload "bucket" is id % 1000 and "tag" is
"t<id % 1000>", then measures searches (limit 10, hnsw_ef 128, one client) filtered to 50, 10, 1
and 0.1 % of the points: first with no index, then after PUT /collections/bench/index on
"bucket" (integer) and "tag" (keyword). Recall@10 is against the exact filtered top 10. Also
times filtered count. Prints a table and writes JSON to --out.
"""
import argparse
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse

import numpy as np

from bench_api import embedding_like, pct  # the same data generator and percentiles


class Client:
    def __init__(self, host, port, key=None):
        self.host, self.port, self.key = host, port, key
        self.c = http.client.HTTPConnection(host, port, timeout=600)

    def req(self, method, path, body=None):
        h = {"Content-Type": "application/json"}
        if self.key:
            h["api-key"] = self.key
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        try:
            self.c.request(method, path, body=body, headers=h)
            r = self.c.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            self.c.close()
            self.c = http.client.HTTPConnection(self.host, self.port, timeout=600)
            self.c.request(method, path, body=body, headers=h)
            r = self.c.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
        return json.loads(data)["result"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(os.path.dirname(__file__), "..", "build",
                                                     "release", "vectord"))
    ap.add_argument("--url", help="use a running node instead of starting one")
    ap.add_argument("--api-key")
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--ef", type=int, default=128)
    ap.add_argument("--out", default="bench_filter.json")
    a = ap.parse_args()

    proc = tmp = None
    if a.url:
        u = urllib.parse.urlparse(a.url)
        host, port = u.hostname, u.port or 6333
    else:
        tmp = tempfile.mkdtemp(prefix="vectord-bench-")
        host, port = "127.0.0.1", 16343
        proc = subprocess.Popen([a.binary, "--data-dir", tmp, "--port", str(port),
                                 "--cluster-port", "16345", "--log-level", "warn"])
        for _ in range(600):
            try:
                Client(host, port).req("GET", "/readyz")
                break
            except Exception:
                time.sleep(0.05)
    try:
        rng = np.random.default_rng(42)
        data = np.round(embedding_like(rng, a.n + a.queries, a.dim), 5).astype(np.float32)
        base, queries = data[:a.n], data[a.n:]
        c = Client(host, port, a.api_key)
        coll = "bench"
        try:
            c.req("DELETE", f"/collections/{coll}")
        except RuntimeError:
            pass
        c.req("PUT", f"/collections/{coll}", {"vectors": {"size": a.dim, "distance": "Cosine"}})
        t0 = time.perf_counter()
        for s in range(0, a.n, a.batch):
            pts = [{"id": i, "vector": base[i].tolist(),
                    "payload": {"bucket": i % 1000, "tag": f"t{i % 1000}"}}
                   for i in range(s, min(a.n, s + a.batch))]
            c.req("PUT", f"/collections/{coll}/points?wait=true", {"points": pts})
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        while c.req("GET", f"/collections/{coll}")["status"] != "green":
            time.sleep(0.5)
        settle_s = time.perf_counter() - t0

        sims = queries @ base.T
        buckets = np.arange(a.n) % 1000
        # the unfiltered search first, as the baseline each filtered row is read against
        cases = [("no filter", None, np.argsort(-sims, axis=1)[:, :10], a.n)]
        for frac, b in (("50%", 500), ("10%", 100), ("1%", 10), ("0.1%", 1)):
            masked = np.where(buckets[None, :] < b, sims, -np.inf)
            truth = np.argsort(-masked, axis=1)[:, :10]
            cases.append((f"range {frac}", {"must": [{"key": "bucket", "range": {"lt": b}}]},
                          truth, int((buckets < b).sum())))
        masked = np.where(buckets[None, :] == 7, sims, -np.inf)
        cases.append(("keyword 0.1%", {"must": [{"key": "tag", "match": {"value": "t7"}}]},
                      np.argsort(-masked, axis=1)[:, :10], int((buckets == 7).sum())))
        del sims

        def run(flt, truth, matches):
            bodies = [json.dumps({"vector": q.tolist(), "limit": 10, "filter": flt,
                                  "params": {"hnsw_ef": a.ef}}).encode() for q in queries]
            lat, hits = [], 0
            for i, b in enumerate(bodies):
                t = time.perf_counter()
                r = c.req("POST", f"/collections/{coll}/points/search", b)
                lat.append(time.perf_counter() - t)
                hits += len({p["id"] for p in r} & set(truth[i][:min(10, matches)].tolist()))
            cnt = []
            for _ in range(20):
                t = time.perf_counter()
                c.req("POST", f"/collections/{coll}/points/count", {"filter": flt})
                cnt.append(time.perf_counter() - t)
            return {"p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
                    "recall@10": hits / (min(10, matches) * len(bodies)), "count_p50_ms": pct(cnt, 50) * 1e3}

        results = {"n": a.n, "dim": a.dim, "ef": a.ef, "load_s": load_s, "settle_s": settle_s,
                   "cases": {}}
        for name, flt, truth, matches in cases:
            results["cases"][name] = {"matches": matches, "no_index": run(flt, truth, matches)}
        t0 = time.perf_counter()
        c.req("PUT", f"/collections/{coll}/index?wait=true",
              {"field_name": "bucket", "field_schema": "integer"})
        c.req("PUT", f"/collections/{coll}/index?wait=true",
              {"field_name": "tag", "field_schema": "keyword"})
        results["index_build_s"] = time.perf_counter() - t0
        for name, flt, truth, matches in cases:
            results["cases"][name]["index"] = run(flt, truth, matches)

        print(f"\nfiltered search over HTTP, {a.n} x {a.dim} (Cosine), limit 10, hnsw_ef {a.ef}, "
              f"1 client; two indexes built in {results['index_build_s']:.2f} s")
        print(f"{'filter':<14}{'matches':>9} | {'p50 ms':>8}{'p99 ms':>8}{'recall':>8}{'count ms':>9}"
              f" | {'p50 ms':>8}{'p99 ms':>8}{'recall':>8}{'count ms':>9}")
        print(f"{'':<14}{'':>9} | {'without index':^33} | {'with index':^33}")
        for name, r in results["cases"].items():
            row = f"{name:<14}{r['matches']:>9}"
            for k in ("no_index", "index"):
                v = r[k]
                row += (f" | {v['p50_ms']:>8.2f}{v['p99_ms']:>8.2f}{v['recall@10']:>8.3f}"
                        f"{v['count_p50_ms']:>9.2f}")
            print(row)
        with open(a.out, "w") as f:
            json.dump(results, f, indent=2)
    finally:
        if proc:
            proc.terminate()
            proc.wait()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
