#!/usr/bin/env python3
"""What replication costs: the same points and queries against (a) one node, (b) three nodes with
replication factor 3 read and written at a quorum, (c) the same cluster read at consistency 1,
and (d) three nodes with replication factor 1. For each: upsert points/s with one client, search
p50/p99/QPS with one client at the smallest hnsw_ef whose recall@10 reaches --target, the same
with --clients clients (on two cores that measures contention), and the CPU seconds per write
and per search summed over every node's process (from /proc: user + system time; a write's until
every node's graph has linked it), with the ratios to (a); for (b) also the searches with one node
stopped (SIGSTOP), from the moment it stops.

    scripts/bench_cluster.py --binary build/release/vectord [--n 100000] [--dim 768]

Every process runs on this machine on 127.0.0.1; the client talks to the first node only, so in
a cluster every request is coordinated there and reaches the others over the data transport.
Request bodies are encoded before the clock starts. Each figure line carries the 1-minute load
average (the machine may be shared). Writes JSON to --out.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_api import Client, embedding_like, loadavg, pct  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def ratio(x, y):
    """x / y, NaN when y is 0 (CPU time is counted in clock ticks)."""
    return x / y if y else float("nan")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


class Cluster:
    """count vectord processes on 127.0.0.1, the others joining the first."""

    def __init__(self, binary, count, port):
        self.tmp = tempfile.mkdtemp(prefix="vectord-bench-cluster-")
        self.procs, self.ports = [], []
        for i in range(count):
            http, peer = port + 10 * i, port + 10 * i + 1
            cmd = [binary, "--data-dir", os.path.join(self.tmp, f"n{i}"), "--port", str(http),
                   "--cluster-port", str(peer), "--log-level", "warn"]
            if i:
                cmd += ["--join", f"127.0.0.1:{port + 1}"]
            self.procs.append(subprocess.Popen(cmd))
            self.ports.append(http)
            self.wait(lambda: self.ready(i), f"node {i} ready", 60)
        self.wait(lambda: all(self.voters(i) == count for i in range(count)),
                  f"{count} voters up")

    def get(self, i, path):
        """The JSON reply of GET path on node i; None when it does not answer 200."""
        try:
            return json.loads(Client("127.0.0.1", self.ports[i]).req("GET", path, None) or "{}")
        except (OSError, RuntimeError, ValueError):
            return None

    def ready(self, i):
        try:
            Client("127.0.0.1", self.ports[i]).req("GET", "/readyz", None)
            return True
        except (OSError, RuntimeError):
            return False

    def voters(self, i):
        j = self.get(i, "/cluster")
        if not j:
            return 0
        return sum(1 for m in j["result"]["nodes"] if m["role"] == "voter" and m["state"] == "up")

    @staticmethod
    def wait(cond, what, timeout=600):
        t0 = time.monotonic()
        while not cond():
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def cpu(self):
        return cpu_seconds([p.pid for p in self.procs])

    def close(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def load(a, cl, rf, base):
    """Uploads base through node 0 and waits until every node's graph holds it; the write
    figures."""
    c = Client("127.0.0.1", cl.ports[0])
    spec = {"vectors": {"size": a.dim, "distance": "Cosine"}, "replication_factor": rf,
            "hnsw_config": {"m": a.m, "ef_construct": a.ef_construct}}
    c.req("PUT", "/collections/bench", json.dumps(spec))
    cl.wait(lambda: all(cl.get(i, "/collections/bench") for i in range(len(cl.ports))),
            "the collection on every node")
    bodies = []
    for s in range(0, a.n, a.batch):
        pts = [{"id": i, "vector": base[i].tolist(), "payload": {"n": i}}
               for i in range(s, min(a.n, s + a.batch))]
        bodies.append(json.dumps({"points": pts}).encode())
    cpu0, t0 = cl.cpu(), time.perf_counter()
    for b in bodies:
        c.req("PUT", "/collections/bench/points?wait=true", b)
    up_s = time.perf_counter() - t0
    cl.wait(lambda: all((cl.get(i, "/collections/bench") or {}).get("result", {}).get("status")
                        == "green" for i in range(len(cl.ports))), "every node green", 3600)
    # a write's CPU includes linking it into every replica's graph, which goes on after the ack
    return {"upsert_points_per_s": a.n / up_s, "cpu_s_per_write": (cl.cpu() - cpu0) / a.n,
            "green_s": time.perf_counter() - t0, "load1_upsert": loadavg()}


def quiet(cl):
    """Waits until the nodes use no CPU for a second (graph saves, hint replays, pings after
    the upload), so that a search round is charged for searches only."""
    def idle():
        c0 = cl.cpu()
        time.sleep(1.0)
        return cl.cpu() - c0 <= 0.05 * len(cl.procs)
    cl.wait(idle, "the nodes idle", 600)


def search(cl, ef, level, clients, queries, gt):
    """queries through node 0 with clients concurrent clients; latency, QPS, recall and the CPU
    seconds per search summed over every node."""
    qb = [json.dumps({"vector": q.tolist(), "limit": 10, "params": {"hnsw_ef": ef}}).encode()
          for q in queries]
    path = "/collections/bench/points/search" + (f"?consistency={level}" if level else "")
    lat, res = [], [None] * len(qb)

    def worker(mine):
        w = Client("127.0.0.1", cl.ports[0])
        for i in mine:
            t = time.perf_counter()
            res[i] = w.req("POST", path, qb[i])
            lat.append(time.perf_counter() - t)
    cpu1, t1 = cl.cpu(), time.perf_counter()
    th = [threading.Thread(target=worker, args=(list(range(k, len(qb), clients)),))
          for k in range(clients)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    wall = time.perf_counter() - t1
    hits = sum(len({p["id"] for p in json.loads(r)["result"]} & set(gt[i].tolist()))
               for i, r in enumerate(res))
    return {"ef": ef, "clients": clients, "p50_ms": pct(lat, 50) * 1e3,
            "p99_ms": pct(lat, 99) * 1e3, "qps": len(qb) / wall,
            "recall@10": hits / (10.0 * len(qb)),
            "cpu_s_per_search": (cl.cpu() - cpu1) / len(qb), "load1": loadavg()}


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(os.path.dirname(__file__), "..", "build",
                                                     "release", "vectord"))
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construct", type=int, default=200)
    ap.add_argument("--efs", default="32,64,96,128,192,256",
                    help="hnsw_ef values tried in order until recall@10 reaches --target")
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--clients", type=int, default=8, help="the concurrent-clients figure")
    ap.add_argument("--configs", default="a,b,d", help="a: one node; b: RF 3 (with c: "
                    "consistency 1 on the same cluster); d: RF 1 on three nodes")
    ap.add_argument("--port", type=int, default=17333)
    ap.add_argument("--rounds", type=int, default=5,
                    help="search rounds, alternating between the setups; figures are medians")
    ap.add_argument("--out", default="bench_cluster.json")
    a = ap.parse_args()
    a.efs = [int(x) for x in a.efs.split(",")]
    rng = np.random.default_rng(7)
    data = embedding_like(rng, a.n + a.queries, a.dim)
    base, queries = data[:a.n], data[a.n:]
    gt = np.argsort(-(queries @ base.T), axis=1)[:, :10]
    setups = {"a": (1, 1, [None]), "b": (3, 3, [None, "1"]), "d": (3, 1, [None])}
    results = {"n": a.n, "dim": a.dim, "batch": a.batch, "target": a.target,
               "rounds": a.rounds}
    clusters = {}
    try:
        # every setup stays up, so that search rounds can alternate between them: a machine
        # shared with other work then loads each setup alike, and the ratios are taken within
        # a round
        for i, name in enumerate(a.configs.split(",")):
            nodes, rf, _ = setups[name]
            clusters[name] = Cluster(a.binary, nodes, a.port + 100 * i)
            results[name] = load(a, clusters[name], rf, base)
            print(f"({name}) loaded: {results[name]['upsert_points_per_s']:,.0f} points/s",
                  flush=True)
        runs = [(name, level) for name in clusters for level in setups[name][2]]
        for name in clusters:
            quiet(clusters[name])
        efs = {}
        for name, level in runs:
            one = None
            for ef in a.efs:
                one = search(clusters[name], ef, level, 1, queries, gt)
                if one["recall@10"] >= a.target:
                    break
            efs[(name, level)] = one["ef"]
        ref = efs.get(("a", None))
        rounds = {run: [] for run in runs}
        at_ref = {run: [] for run in runs if ref and efs[run] != ref}
        for k in range(a.rounds):
            for run in runs:
                name, level = run
                rounds[run].append(search(clusters[name], efs[run], level, 1, queries, gt))
                if run in at_ref:
                    at_ref[run].append(search(clusters[name], ref, level, 1, queries, gt))
            print(f"round {k + 1} of {a.rounds} done", flush=True)
        for run in runs:
            name, level = run
            rs = rounds[run]
            one = {key: median([r[key] for r in rs]) for key in rs[0]}
            entry = {"one": one, "rounds": rs,
                     "many": search(clusters[name], efs[run], level, a.clients, queries, gt)}
            if "a" in clusters:
                base_rs = rounds[("a", None)]
                entry["ratio_cpu"] = median([r["cpu_s_per_search"] / b["cpu_s_per_search"]
                                             for r, b in zip(rs, base_rs)])
                entry["ratio_p99"] = median([r["p99_ms"] / b["p99_ms"]
                                             for r, b in zip(rs, base_rs)])
                if run in at_ref:
                    e = at_ref[run]
                    entry["at_ref_ef"] = {key: median([r[key] for r in e]) for key in e[0]}
                    entry["at_ref_ef"]["ratio_cpu"] = median(
                        [r["cpu_s_per_search"] / b["cpu_s_per_search"] for r, b in zip(e, base_rs)])
                    entry["at_ref_ef"]["ratio_p99"] = median(
                        [r["p99_ms"] / b["p99_ms"] for r, b in zip(e, base_rs)])
            results[name][level or "default"] = entry
        if "b" in clusters:
            # one replica stopped (SIGSTOP: no reset, as a hung host): the same searches through
            # node 0, from the moment it stops, so the failure detector's delay is in the figures
            cl, ef = clusters["b"], efs[("b", None)]
            cl.procs[2].send_signal(signal.SIGSTOP)
            try:
                results["b"]["stopped"] = {"one": search(cl, ef, None, 1, queries, gt),
                                           "many": search(cl, ef, None, a.clients, queries, gt)}
            finally:
                cl.procs[2].send_signal(signal.SIGCONT)
    finally:
        for cl in clusters.values():
            cl.close()
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)

    print(f"\nvectord, {a.n} x {a.dim} (Cosine), one upload client, batches of {a.batch}")
    print(f"{'setup':<28}{'upsert/s':>10}{'CPU ms/w':>10}{'ef':>5}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'QPS':>7}{'recall':>8}{'CPU ms/s':>10}{'QPS x' + str(a.clients):>9}{'load1':>7}")
    rows = []
    labels = {("a", "default"): "(a) one node", ("b", "default"): "(b) 3 nodes RF 3 quorum",
              ("b", "1"): "(c) 3 nodes RF 3 consistency 1",
              ("b", "stopped"): "(b) with one node stopped", ("d", "default"): "(d) 3 nodes RF 1"}
    for (name, level), label in labels.items():
        if name not in results:
            continue
        r = results[name]
        if level not in r:
            continue
        s, m = r[level]["one"], r[level]["many"]
        rows.append((name, level, r, s))
        print(f"{label:<28}{r['upsert_points_per_s']:>10,.0f}{r['cpu_s_per_write'] * 1e3:>10.3f}"
              f"{int(s['ef']):>5}{s['p50_ms']:>8.2f}{s['p99_ms']:>8.2f}{s['qps']:>7.0f}"
              f"{s['recall@10']:>8.3f}{s['cpu_s_per_search'] * 1e3:>10.3f}{m['qps']:>9.0f}"
              f"{s['load1']:>7.2f}")
    if "a" in results:
        base_r = results["a"]
        base_s = base_r["default"]["one"]
        print(f"\nratios to (a), with the targets (searches: median over {a.rounds} rounds of the "
              f"ratio within the round):")
        checks = []
        if "b" in results:
            b = results["b"]["default"]["one"]
            if "stopped" in results["b"]:
                st = results["b"]["stopped"]["one"]
                print(f"  (b) search p99 with one node stopped {st['p99_ms'] / b['p99_ms']:.2f}x "
                      f"(b)'s, {ratio(st['p99_ms'], base_s['p99_ms']):.2f}x (a)'s (no target)")
            bd, cd = results["b"]["default"], results["b"]["1"]
            checks += [("(b) search p99", bd["ratio_p99"], 3.0),
                       ("(b) CPU per search", bd["ratio_cpu"], 2.3),
                       ("(b) CPU per write", ratio(results["b"]["cpu_s_per_write"],
                              base_r["cpu_s_per_write"]), 3.5),
                       ("(c) CPU per search", cd["ratio_cpu"], 1.3)]
        if "d" in results:
            checks.append(("(d) CPU per write", ratio(results["d"]["cpu_s_per_write"],
                                 base_r["cpu_s_per_write"]), 1.3))
        for name, level in (("b", "default"), ("b", "1"), ("d", "default")):
            e = results.get(name, {}).get(level, {}).get("at_ref_ef")
            if e:
                print(f"  {labels[(name, level)]} at (a)'s ef {e['ef']}: recall {e['recall@10']:.3f},"
                      f" CPU per search {e['ratio_cpu']:.2f}x (a)'s, p99 {e['ratio_p99']:.2f}x")
        for what, r, limit in checks:
            if r != r:
                print(f"  {what:<22}   n/a  (too little CPU time to measure: use more points)")
                continue
            print(f"  {what:<22}{r:>6.2f}x  (target <= {limit}x: "
                  f"{'met' if r <= limit else 'MISSED'})")


if __name__ == "__main__":
    main()
