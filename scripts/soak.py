#!/usr/bin/env python3
"""Soak: one vectord node under mixed load from several clients for a long time.

Each client loops over upserts (small batches, some with wait=true), deletes, payload edits,
filtered searches and scrolls on one collection whose ids come from a fixed range, so the data
stays about the same size and memory should stay flat once the node is warm. By default every
client draws from the whole range, so writes to one point from different clients race (a
delete against an upsert or a filtered payload edit of the same point), as they do in real use;
--ids split gives each client its own ids, to tell such races apart from other faults. It checks
what comes back (every hit of a filtered search matches the filter, scroll pages are in id
order), and reports:
  - errors (any non-200 reply, malformed reply or connection failure): must be 0;
  - the node's resident memory (VmRSS) after the warm-up and at the end: its growth must stay
    under --max-growth; the anonymous part (heap, index) and the file-backed part (LMDB's
    mapped pages) are reported apart, as are their growths, to say where growth comes from;
  - per minute: operations, errors, p50 and p99 latency, RSS (total, anonymous, file-backed),
    and the data file: its size, its high-water mark and free-list part (/metrics) and the
    change-log entries, so a growing file-backed RSS can be told from a growing database;
  - the data file's size after the warm-up and at the end;
  - the node's exit status on SIGTERM and sanitizer reports in its log (run against an
    AddressSanitizer build, LeakSanitizer checks for leaks when the node exits).
Exit status 0 when every check passed.

  scripts/soak.py --binary build/rel/vectord                       # 30 minutes, 8 clients
  scripts/soak.py --binary build/asan/vectord --seconds 75 --warmup 20 --max-growth 0
"""
import argparse
import json
import math
import os
import random
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import vdtest  # noqa: E402
from vdtest import SANITIZER_MARKS, Node  # noqa: E402
COLL = "soak"
CATS = 10


# /proc/<pid>/status fields: VmRSS is the resident memory the check is on; it is the sum of the
# other three (RssShmem: shared anonymous and tmpfs pages, none expected here).
RSS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def rss_kib(pid):
    """RSS_FIELDS of pid in KiB (None when the process is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in RSS_FIELDS:
                    out[k] = int(v.split()[0])
    except OSError:
        return None
    return out if len(out) == len(RSS_FIELDS) else None


# /metrics gauges of the data file sampled with the RSS: the file-backed RSS follows the part of
# LMDB's map that is touched, so a growing file shows there.
STORE_GAUGES = ("vectord_storage_used_bytes", "vectord_storage_free_bytes",
                "vectord_storage_change_log_entries")


def store_sample(node):
    """{"file": data.mdb size in bytes, gauge: value} (missing keys when unavailable)."""
    out = {}
    try:
        out["file"] = os.stat(os.path.join(node.data_dir, "data", "data.mdb")).st_size
    except OSError:
        pass
    try:
        st, body = node.request("GET", "/metrics", raw=True, timeout=30)
    except OSError:
        return out
    if st == 200:
        for line in body.decode(errors="replace").splitlines():
            name, _, val = line.partition(" ")
            if name in STORE_GAUGES:
                out[name] = float(val)
    return out


def growth_pct(before, after):
    return (after - before) / before * 100.0 if before else float("nan")


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))]


class Client(threading.Thread):
    """One load generator with its own keep-alive connection and random stream."""

    def __init__(self, soak, idx):
        super().__init__(daemon=True)
        self.soak = soak
        self.idx = idx
        self.rnd = random.Random(1000 + idx)
        self.conn = None

    def some_ids(self, lo, hi):
        """lo..hi ids for a write: from the whole range (--ids shared), or with --ids split only
        those equal to this client's index modulo the number of clients, so that no other
        client writes them. Searches and scrolls read every id either way."""
        k = self.rnd.randint(lo, hi)
        if self.soak.args.ids == "shared":
            return [self.rnd.randrange(self.soak.ids) for _ in range(k)]
        n = self.soak.args.clients
        return [self.rnd.randrange(self.soak.ids // n) * n + self.idx for _ in range(k)]

    def vec(self):
        return [self.rnd.uniform(-1, 1) for _ in range(self.soak.dim)]

    def payload(self, pid):
        return {"cat": f"c{pid % CATS}", "n": pid, "tag": "x" * self.rnd.randrange(0, 200)}

    def call(self, method, path, body):
        """(status, parsed reply); reconnects after a failed connection."""
        node = self.soak.node
        data = json.dumps(body).encode()
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = node.conn(timeout=60)
            try:
                self.conn.request(method, path, body=data,
                                  headers={"Content-Type": "application/json"})
                r = self.conn.getresponse()
                raw = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r.status, json.loads(raw) if raw else None
            except (OSError, ValueError) as e:
                self.conn.close()
                self.conn = None
                # a keep-alive connection the server closed between requests is retried once
                # on a new connection; any other failure, or a second one, is an error
                if attempt or not isinstance(e, (ConnectionResetError, BrokenPipeError)):
                    raise
                self.soak.reconnects += 1

    def op_upsert(self):
        ids = self.some_ids(1, 10)
        wait = "?wait=true" if self.rnd.random() < 0.5 else ""
        pts = [{"id": i, "vector": self.vec(), "payload": self.payload(i)} for i in ids]
        return self.call("PUT", f"/collections/{COLL}/points{wait}", {"points": pts}), None

    def op_delete(self):
        ids = self.some_ids(1, 5)
        return self.call("POST", f"/collections/{COLL}/points/delete", {"points": ids}), None

    def op_payload(self):
        ids = self.some_ids(1, 5)
        # by filter, so a point deleted earlier (by any client) is no error: by ids it would be
        # a 404. A delete racing the edit must not make it fail either.
        body = {"payload": {"tag": "y" * self.rnd.randrange(0, 300), "edited": True},
                "filter": {"must": [{"has_id": ids}]}}
        return self.call("POST", f"/collections/{COLL}/points/payload", body), None

    def op_search(self):
        cat = f"c{self.rnd.randrange(CATS)}"
        body = {"vector": self.vec(), "limit": 10, "with_payload": ["cat"],
                "filter": {"must": [{"key": "cat", "match": {"value": cat}}]}}
        st_j = self.call("POST", f"/collections/{COLL}/points/search", body)

        def check(j):
            for h in j["result"]:
                if h["payload"].get("cat") != cat:
                    return f"search for cat {cat} returned {h}"
            return None
        return st_j, check

    def op_scroll(self):
        lo = self.rnd.randrange(self.soak.ids)
        body = {"limit": 50, "offset": lo, "with_payload": False}
        if self.rnd.random() < 0.5:
            body["filter"] = {"must": [{"key": "n", "range": {"gte": lo, "lt": lo + 2000}}]}
        st_j = self.call("POST", f"/collections/{COLL}/points/scroll", body)

        def check(j):
            ids = [p["id"] for p in j["result"]["points"]]
            if ids != sorted(ids) or any(i < lo for i in ids):
                return f"scroll from {lo} returned ids out of order: {ids[:10]}"
            return None
        return st_j, check

    def run(self):
        ops = [(self.op_upsert, 30), (self.op_delete, 10), (self.op_payload, 10),
               (self.op_search, 35), (self.op_scroll, 15)]
        fns = [f for f, w in ops for _ in range(w)]
        s = self.soak
        while not s.stop.is_set():
            fn = self.rnd.choice(fns)
            name = fn.__name__[3:]
            t0 = time.monotonic()
            err = None
            try:
                (st, j), check = fn()
                if st != 200:
                    err = f"{name}: HTTP {st}: {j}"
                elif not isinstance(j, dict) or j.get("status") != "ok":
                    err = f"{name}: reply {j}"
                elif check:
                    err = check(j)
            except Exception as e:  # every failure counts; the loop goes on
                err = f"{name}: {type(e).__name__}: {e}"
            s.record(t0, time.monotonic() - t0, name, err)
        if self.conn:
            self.conn.close()


class Soak:
    def __init__(self, args):
        self.args = args
        self.dim = args.dim
        self.ids = args.points
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.minutes = {}  # minute -> {"lat": [...], "ops": n, "errors": n}
        self.errors = []
        self.n_errors = 0
        self.reconnects = 0
        self.rss = []  # (seconds since start, {VmRSS, RssAnon, RssFile})
        self.store = []  # (seconds since start, store_sample())
        self.t0 = None
        self.node = None

    def record(self, t0, dt, name, err):
        # an operation started in the moments between the end of the run and the clients seeing
        # it counts in the last minute, not in one of its own
        m = min(int((t0 - self.t0) // 60), max(0, math.ceil(self.args.seconds / 60) - 1))
        with self.lock:
            b = self.minutes.setdefault(m, {"lat": [], "ops": 0, "errors": 0})
            b["ops"] += 1
            b["lat"].append(dt)
            if err:
                b["errors"] += 1
                self.n_errors += 1
                if len(self.errors) < 20:
                    self.errors.append(err)

    def preload(self):
        n = self.node
        n.ok("PUT", f"/collections/{COLL}", {"vectors": {"size": self.dim, "distance": "Cosine"}})
        n.ok("PUT", f"/collections/{COLL}/index?wait=true", {"field_name": "cat",
                                                            "field_schema": "keyword"})
        n.ok("PUT", f"/collections/{COLL}/index?wait=true", {"field_name": "n",
                                                            "field_schema": "integer"})
        rnd = random.Random(1)
        for lo in range(0, self.ids, 500):
            pts = [{"id": i, "vector": [rnd.uniform(-1, 1) for _ in range(self.dim)],
                    "payload": {"cat": f"c{i % CATS}", "n": i, "tag": ""}}
                   for i in range(lo, min(lo + 500, self.ids))]
            n.ok("PUT", f"/collections/{COLL}/points?wait=true", {"points": pts})

    def sample_rss(self):
        n = 0
        while True:
            r = rss_kib(self.node.proc.pid)
            if r:
                with self.lock:
                    self.rss.append((time.monotonic() - self.t0, r))
            if n % 5 == 0:  # every 10 s: a /metrics request is one more operation on the node
                st = store_sample(self.node)
                with self.lock:
                    self.store.append((time.monotonic() - self.t0, st))
            n += 1
            if self.stop.wait(2.0):
                return

    @staticmethod
    def sample_at(samples, t):
        """The first sample taken at or after t seconds (else the last one)."""
        for s, r in samples:
            if s >= t:
                return r
        return samples[-1][1] if samples else None

    def rss_at(self, t):
        return self.sample_at(self.rss, t)

    def run(self):
        a = self.args
        vdtest.BINARY = a.binary
        self.node = Node(args=a.node_args)
        self.node.start()
        ok = True
        try:
            t = time.monotonic()
            self.preload()
            print(f"soak: {self.ids} points of {self.dim} dims loaded in {time.monotonic() - t:.1f}s; "
                  f"{a.clients} clients ({a.ids} ids) for {a.seconds}s (warm-up {a.warmup}s), "
                  f"node pid {self.node.proc.pid}", flush=True)
            self.t0 = time.monotonic()
            sampler = threading.Thread(target=self.sample_rss, daemon=True)
            sampler.start()
            clients = [Client(self, i) for i in range(a.clients)]
            for c in clients:
                c.start()
            last = 0
            # data: size of LMDB's data file; used/free: its pages in use and on LMDB's free
            # list (reusable); log: change-log entries (MiB and entries from /metrics)
            print(f"{'minute':>6} {'ops':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'RSS MiB':>8} "
                  f"{'anon':>8} {'file':>8} {'data MiB':>8} {'used':>8} {'free':>8} {'log':>8}",
                  flush=True)
            while True:
                el = time.monotonic() - self.t0
                if el >= a.seconds:
                    break
                time.sleep(min(1.0, a.seconds - el))
                m = int((time.monotonic() - self.t0) // 60)
                if m > last:  # print each minute once it is complete
                    self.print_minute(last)
                    last = m
            self.stop.set()
            for c in clients:
                c.join(120)
            sampler.join(10)
            for m in range(last, max(self.minutes, default=-1) + 1):
                self.print_minute(m)
            end = rss_kib(self.node.proc.pid)
            end_store = store_sample(self.node)
        finally:
            self.stop.set()
            rc = self.node.stop(timeout=120)
            log = self.node.read_log()
            self.node.cleanup()

        total_ops = sum(b["ops"] for b in self.minutes.values())
        lat = [x for b in self.minutes.values() for x in b["lat"]]
        print(f"soak: {total_ops} operations in {a.seconds}s ({total_ops / a.seconds:.0f}/s), "
              f"p50 {pct(lat, 50) * 1000:.2f} ms, p99 {pct(lat, 99) * 1000:.2f} ms")
        print(f"soak: errors {self.n_errors} (idle keep-alive connections reopened: {self.reconnects})")
        for e in self.errors:
            print(f"  {e}")
        if self.n_errors:
            ok = False
        warm = self.rss_at(a.warmup)
        if warm and end:
            growth = growth_pct(warm["VmRSS"], end["VmRSS"])
            print(f"soak: RSS after warm-up {warm['VmRSS'] / 1024:.1f} MiB, at the end "
                  f"{end['VmRSS'] / 1024:.1f} MiB: growth {growth:+.2f} %"
                  + (f" (limit {a.max_growth} %)" if a.max_growth > 0 else " (not checked)"))
            for k, what in (("RssAnon", "anonymous"), ("RssFile", "file-backed"),
                            ("RssShmem", "shared")):
                if not warm[k]:
                    print(f"soak:   {what:<11} {warm[k] / 1024:8.1f} -> {end[k] / 1024:8.1f} MiB")
                    continue
                print(f"soak:   {what:<11} {warm[k] / 1024:8.1f} -> {end[k] / 1024:8.1f} MiB "
                      f"({(end[k] - warm[k]) / 1024:+.1f} MiB, {growth_pct(warm[k], end[k]):+.2f} %, "
                      f"{(end[k] - warm[k]) / warm['VmRSS'] * 100.0:+.2f} points of the total)")
            if a.max_growth > 0 and growth >= a.max_growth:
                ok = False
        else:
            print("soak: no RSS samples")
            ok = False
        ws = self.sample_at(self.store, a.warmup) or {}
        if "file" in ws and "file" in end_store:
            print(f"soak: data file after warm-up {ws['file'] / 2**20:.1f} MiB, at the end "
                  f"{end_store['file'] / 2**20:.1f} MiB ({growth_pct(ws['file'], end_store['file']):+.2f} %)"
                  + "".join(f"; {k[len('vectord_storage_'):]} {ws[k]:.0f} -> {end_store[k]:.0f}"
                            for k in STORE_GAUGES if k in ws and k in end_store))
        print(f"soak: node exit status on SIGTERM {rc}")
        if rc != 0:
            ok = False
        marks = [m for m in SANITIZER_MARKS if m in log]
        if marks:
            print(f"soak: sanitizer report in the node's log:\n{log}")
            ok = False
        print("soak: PASSED" if ok else "soak: FAILED")
        return 0 if ok else 1

    def print_minute(self, m):
        b = self.minutes.get(m)
        if not b:
            return
        r = self.rss_at((m + 1) * 60) or dict.fromkeys(RSS_FIELDS, 0)
        st = self.sample_at(self.store, (m + 1) * 60) or {}

        def mib(k):
            return f"{st[k] / 2**20:>8.1f}" if k in st else f"{'-':>8}"
        log = st.get("vectord_storage_change_log_entries")
        print(f"{m + 1:>6} {b['ops']:>8} {b['errors']:>6} {pct(b['lat'], 50) * 1000:>8.2f} "
              f"{pct(b['lat'], 99) * 1000:>8.2f} {r['VmRSS'] / 1024:>8.1f} "
              f"{r['RssAnon'] / 1024:>8.1f} {r['RssFile'] / 1024:>8.1f} {mib('file')} "
              f"{mib('vectord_storage_used_bytes')} {mib('vectord_storage_free_bytes')} "
              f"{'-' if log is None else int(log):>8}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", required=True, help="the vectord executable")
    ap.add_argument("--minutes", type=float, default=30, help="length of the run (default 30)")
    ap.add_argument("--seconds", type=float, help="length of the run in seconds (overrides --minutes)")
    ap.add_argument("--warmup", type=float, help="seconds before the reference RSS sample "
                    "(default: a sixth of the run)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--points", type=int, default=20000, help="size of the id range")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--ids", choices=("shared", "split"), default="shared",
                    help="shared: every client writes any id, so writes to one point race "
                    "(default); split: each client writes its own ids")
    ap.add_argument("--max-growth", type=float, default=5.0,
                    help="RSS growth after warm-up that fails the run, in %% (0: report only)")
    ap.add_argument("--node-arg", action="append", dest="node_args", default=[],
                    help="extra vectord flag (repeatable)")
    a = ap.parse_args()
    if a.seconds is None:
        a.seconds = a.minutes * 60
    if a.warmup is None:
        a.warmup = a.seconds / 6
    if not os.path.exists(a.binary):
        print(f"soak: {a.binary} not found", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return Soak(a).run()


if __name__ == "__main__":
    sys.exit(main())
