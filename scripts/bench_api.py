#!/usr/bin/env python3
"""Measures one vectord node over HTTP: upsert throughput (points/s, batches of 256) and exact
and graph search latency (p50/p95/p99) at N x DIM, with 1 and several concurrent clients.

    scripts/bench_api.py [--binary build/release/vectord] [--n 10000] [--dim 1536]
    scripts/bench_api.py --data build/bench/data/synth1536 --ef-construct 200 --digits 7 \
        --efs 16,24,32,48,64 --search-clients 1 --no-filters --repeat 2

Starts its own node on a temporary data directory (or uses --url of a running one). Request
bodies are encoded before the clock starts, so the figures are the server's, not Python's JSON
encoder's. Prints a table and writes JSON to --out.

--data DIR takes base.fvecs, query.fvecs and gt.ivecs from scripts/bench/prepare_data.py, so the
HTTP figures and the in-process index benchmark (scripts/bench/run_index_bench.sh, M=16,
ef_construction=200) are measured on the same vectors and can be set side by side. The report
names the smallest hnsw_ef whose recall@10 reaches --target (0.95) and its latency; each latency
line carries the 1-minute load average taken when it was measured, since the machine is shared.
"""
import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import numpy as np


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


class Client:
    def __init__(self, host, port, key=None):
        self.c = http.client.HTTPConnection(host, port, timeout=600)
        self.key = key

    def req(self, method, path, body):
        h = {"Content-Type": "application/json"}
        if self.key:
            h["api-key"] = self.key
        try:
            self.c.request(method, path, body=body, headers=h)
            r = self.c.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            # the server closes connections idle for longer than its timeout: reconnect once
            self.c.close()
            self.c.request(method, path, body=body, headers=h)
            r = self.c.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
        return data


def load_vecs(path, dtype):
    """Reads .fvecs / .ivecs (int32 dimension, then the values, per row)."""
    raw = np.fromfile(path, dtype=np.int32)
    d = int(raw[0])
    return raw.reshape(-1, d + 1)[:, 1:].copy().view(dtype)


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def embedding_like(rng, n, dim, latent=32):
    z = rng.standard_normal((n, latent)).astype(np.float32)
    proj = np.random.default_rng(1234).standard_normal((latent, dim)).astype(np.float32)
    x = z @ proj + 0.1 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def upload(a, c, host, port, coll, base, text):
    """(Re)creates the collection and uploads base with a.clients connections; returns
    (seconds, MB of JSON sent)."""
    try:
        c.req("DELETE", f"/collections/{coll}", None)
    except RuntimeError:
        pass
    spec = {"vectors": {"size": a.dim, "distance": "Cosine"}}
    hnsw = {k: v for k, v in (("m", a.m), ("ef_construct", a.ef_construct)) if v}
    if hnsw:
        spec["hnsw_config"] = hnsw
    c.req("PUT", f"/collections/{coll}", json.dumps(spec))
    bodies = []
    for s in range(0, a.n, a.batch):
        pts = [{"id": i, "vector": text(base[i]), "payload": {"document": f"chunk {i}", "bucket": i % 1000}}
               for i in range(s, min(a.n, s + a.batch))]
        bodies.append(json.dumps({"points": pts}).encode())
    mb = sum(len(b) for b in bodies) / 1e6
    # upload with several connections
    lock = threading.Lock()
    todo = list(range(len(bodies)))

    def up():
        cl = Client(host, port, a.api_key)
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            cl.req("PUT", f"/collections/{coll}/points?wait=true", bodies[i])
    t0 = time.perf_counter()
    th = [threading.Thread(target=up) for _ in range(a.clients)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    return time.perf_counter() - t0, mb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(os.path.dirname(__file__), "..", "build", "release", "vectord"))
    ap.add_argument("--url", help="use a running node instead of starting one")
    ap.add_argument("--api-key")
    ap.add_argument("--port", type=int, default=16333, help="REST port of the node started (cluster port + 2)")
    ap.add_argument("--n", type=int, default=0, help="points (default 10000, or all of --data)")
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--clients", type=int, default=4, help="concurrent upload connections")
    ap.add_argument("--digits", type=int, default=0,
                    help="round vector values to this many decimals in the request bodies (0 = "
                         "shortest float64 text, as most clients send); smaller bodies for big runs")
    ap.add_argument("--efs", default="64,128", help="hnsw_ef values to measure, comma-separated")
    ap.add_argument("--data", help="directory with base.fvecs, query.fvecs, gt.ivecs (prepare_data.py)")
    ap.add_argument("--m", type=int, default=0, help="collection hnsw_config.m (0 = server default)")
    ap.add_argument("--ef-construct", type=int, default=0,
                    help="collection hnsw_config.ef_construct (0 = server default)")
    ap.add_argument("--search-clients", default="1,8", help="concurrent search clients, comma-separated")
    ap.add_argument("--no-filters", action="store_true", help="skip the filtered searches")
    ap.add_argument("--no-exact", action="store_true", help="skip the exact search")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure every hnsw_ef this many times (rounds interleaved)")
    ap.add_argument("--reuse", action="store_true",
                    help="with --url: keep collection 'bench' if it already holds --n points (no upload)")
    ap.add_argument("--target", type=float, default=0.95, help="recall@10 the report looks for")
    ap.add_argument("--out", default="bench_api.json")
    a = ap.parse_args()

    proc = tmp = None
    if a.url:
        u = urllib.parse.urlparse(a.url)
        host, port = u.hostname, u.port or 6333
    else:
        tmp = tempfile.mkdtemp(prefix="vectord-bench-")
        host, port = "127.0.0.1", a.port
        proc = subprocess.Popen([a.binary, "--data-dir", tmp, "--port", str(port), "--cluster-port", str(port + 2),
                                 "--log-level", "warn"])
        for _ in range(300):
            try:
                Client(host, port).req("GET", "/readyz", None)
                break
            except Exception:
                time.sleep(0.05)
    try:
        gt = None
        if a.data:
            base = load_vecs(os.path.join(a.data, "base.fvecs"), np.float32)
            queries = load_vecs(os.path.join(a.data, "query.fvecs"), np.float32)[:a.queries]
            if 0 < a.n < len(base):
                base = base[:a.n]
            else:
                gt = load_vecs(os.path.join(a.data, "gt.ivecs"), np.int32)[:len(queries), :10]
            a.n, a.dim = len(base), base.shape[1]
        else:
            a.n = a.n or 10000
            rng = np.random.default_rng(42)
            data = embedding_like(rng, a.n + a.queries, a.dim)
            if a.digits:
                data = np.round(data, a.digits).astype(np.float32)
            base, queries = data[:a.n], data[a.n:]

        def text(v):
            # Rounded in float64: a rounded float32 prints as its full 17-digit float64 value, so
            # rounding in float32 would leave the bodies as long as unrounded ones.
            return np.round(v.astype(np.float64), a.digits).tolist() if a.digits else v.tolist()

        c = Client(host, port, a.api_key)
        coll = "bench"
        reuse = False
        if a.reuse:
            try:
                info = json.loads(c.req("GET", f"/collections/{coll}", None))["result"]
                reuse = info["points_count"] == a.n
            except RuntimeError:
                pass
        mb = up_s = up_rate = 0.0
        if not reuse:
            up_s, mb = upload(a, c, host, port, coll, base, text)
            up_rate = a.n / up_s
        # ground truth (given with --data when the whole base set is used)
        if gt is None:
            gt = np.argsort(-(queries @ base.T), axis=1)[:, :10]

        def run(params, clients=1, flt=None, truth=None):
            lat = []
            hits = 0
            truth = gt if truth is None else truth
            extra = {"filter": flt} if flt else {}
            qb = [json.dumps(dict({"vector": text(q), "limit": 10, "params": params}, **extra)).encode()
                  for q in queries]
            idx = list(range(len(qb)))
            res = [None] * len(qb)

            def worker(my):
                cl = Client(host, port, a.api_key)
                for i in my:
                    t = time.perf_counter()
                    r = cl.req("POST", f"/collections/{coll}/points/search", qb[i])
                    lat.append(time.perf_counter() - t)
                    res[i] = r
            t0 = time.perf_counter()
            th = [threading.Thread(target=worker, args=(idx[k::clients],)) for k in range(clients)]
            for t in th:
                t.start()
            for t in th:
                t.join()
            wall = time.perf_counter() - t0
            for i, r in enumerate(res):
                ids = [p["id"] for p in json.loads(r)["result"]]
                hits += len(set(ids) & set(truth[i].tolist()))
            return {"p50_ms": pct(lat, 50) * 1e3, "p95_ms": pct(lat, 95) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
                    "qps": len(qb) / wall, "recall@10": hits / (10.0 * len(qb)), "load1": loadavg()}

        # wait for the background graph build so the graph figures are the graph's
        t0 = time.perf_counter()
        while True:
            info = json.loads(c.req("GET", f"/collections/{coll}", None))["result"]
            if info["status"] == "green" or time.perf_counter() - t0 > 1800:
                break
            time.sleep(0.2)
        index_wait = time.perf_counter() - t0
        info = json.loads(c.req("GET", f"/collections/{coll}", None))["result"]
        results = {"n": a.n, "dim": a.dim, "batch": a.batch, "upload_clients": a.clients,
                   "data": a.data or "embedding_like", "hnsw_config": info["config"].get("hnsw_config"),
                   "upsert_points_per_s": up_rate, "upsert_mb_per_s": mb / up_s if up_s else 0.0,
                   "index_settle_s": index_wait}
        if not a.no_exact:
            results["exact_1"] = run({"exact": True}, 1)
        efs = [int(x) for x in a.efs.split(",")]
        ncl = [int(x) for x in a.search_clients.split(",")]
        for rep in range(a.repeat):
            sfx = f"_r{rep + 1}" if a.repeat > 1 else ""
            for ef in efs:
                for cl in ncl:
                    results[f"hnsw_ef{ef}{sfx}_{cl}"] = run({"hnsw_ef": ef}, cl)
        # filtered search: "bucket" is id % 1000, so bucket < b keeps b/1000 of the points
        sims = queries @ base.T
        buckets = np.arange(a.n) % 1000
        for frac, b in () if a.no_filters else (("50%", 500), ("10%", 100), ("1%", 10), ("0.1%", 1)):
            masked = np.where(buckets[None, :] < b, sims, -np.inf)
            truth = np.argsort(-masked, axis=1)[:, :10]
            flt = {"must": [{"key": "bucket", "range": {"lt": b}}]}
            results[f"filter{frac}_1"] = run({"hnsw_ef": 128}, 1, flt, truth)
        print(f"\nvectord over HTTP, {a.n} x {a.dim} (Cosine)")
        if reuse:
            print("upsert: skipped (--reuse: collection already loaded)")
        else:
            print(f"upsert: {up_rate:,.0f} points/s ({mb / up_s:.1f} MB/s of JSON), batches of {a.batch}, "
                  f"{a.clients} connections; graph settled {index_wait:.1f} s after the last ack")
        print(f"data {results['data']}, hnsw_config {results['hnsw_config']}")
        print(f"{'search':<16}{'clients':>8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'QPS':>10}{'recall@10':>11}"
              f"{'load1':>7}")
        for k, v in results.items():
            if isinstance(v, dict) and "p50_ms" in v:
                name, cl = k.rsplit("_", 1)
                print(f"{name:<16}{cl:>8}{v['p50_ms']:>10.2f}{v['p95_ms']:>10.2f}{v['p99_ms']:>10.2f}"
                      f"{v['qps']:>10.0f}{v['recall@10']:>11.3f}{v['load1']:>7.2f}")
        # the smallest ef whose recall (first round, one client) reaches the target
        hit = [ef for ef in efs if results[f"hnsw_ef{ef}{'_r1' if a.repeat > 1 else ''}_{ncl[0]}"]["recall@10"]
               >= a.target]
        if hit:
            ef = min(hit)
            rows = [results[k] for k in results if k.startswith(f"hnsw_ef{ef}_") and k.endswith(f"_{ncl[0]}")]
            results["at_target"] = {"ef": ef, "target": a.target, "rounds": rows}
            for r in rows:
                print(f"recall@10 >= {a.target}: hnsw_ef {ef}, {ncl[0]} client(s): p50 {r['p50_ms']:.2f} ms, "
                      f"p99 {r['p99_ms']:.2f} ms, recall {r['recall@10']:.3f} (load {r['load1']:.2f})")
        else:
            print(f"no measured hnsw_ef reaches recall@10 {a.target}")
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
