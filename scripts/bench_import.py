#!/usr/bin/env python3
"""Streams a large NDJSON import into one vectord node and reports the import rate and the
server's peak resident memory against the bytes of vectors it stores.

    scripts/bench_import.py [--binary build/release/vectord] [--gb 1.0] [--dim 1536]

The body is generated on the fly (never held whole in memory on either side) and sent with
chunked transfer encoding, as `curl --data-binary @file` of a file that size would. The peak RSS
is the kernel's high-water mark (VmHWM) of the server process.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import struct
import subprocess
import tempfile
import time


def vm(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(os.path.dirname(__file__), "..", "build", "release", "vectord"))
    ap.add_argument("--gb", type=float, default=1.0, help="size of the NDJSON body in GB")
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--port", type=int, default=16433)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="vectord-import-")
    proc = subprocess.Popen([a.binary, "--data-dir", tmp, "--port", str(a.port), "--cluster-port",
                             str(a.port + 2), "--log-level", "warn"])
    try:
        for _ in range(300):
            try:
                c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=5)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=3600)
        c.request("PUT", "/collections/imp", body=json.dumps({"vectors": {"size": a.dim, "distance": "Cosine"}}),
                  headers={"Content-Type": "application/json"})
        assert c.getresponse().read()
        rss0 = vm(proc.pid, "VmRSS")
        # one template line per 64 points, varied by id and a rotating offset, so generation is cheap
        rnd = random.Random(1)
        pool = [[round(rnd.uniform(-1, 1), 7) for _ in range(a.dim)] for _ in range(64)]
        texts = [json.dumps(v) for v in pool]
        target = int(a.gb * 1e9)
        c.putrequest("POST", "/collections/imp/points/import")
        c.putheader("Transfer-Encoding", "chunked")
        c.putheader("Content-Type", "application/x-ndjson")
        c.endheaders()
        sent = n = 0
        t0 = time.perf_counter()
        while sent < target:
            buf = []
            for _ in range(64):
                buf.append('{"id":%d,"vector":%s,"payload":{"document":"chunk %d"}}\n' % (n, texts[n % 64], n))
                n += 1
            chunk = "".join(buf).encode()
            c.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        c.send(b"0\r\n\r\n")
        r = c.getresponse()
        body = json.loads(r.read())
        dt = time.perf_counter() - t0
        res = body["result"]
        peak = vm(proc.pid, "VmHWM")
        vec_bytes = res["imported"] * a.dim * 4
        print(f"imported {res['imported']:,} points ({sent / 1e9:.2f} GB of NDJSON) in {dt:.1f} s: "
              f"{res['imported'] / dt:,.0f} points/s, {sent / dt / 1e6:.1f} MB/s; failed {res['failed']}")
        print(f"server RSS before {rss0 / 1e6:.0f} MB, peak {peak / 1e6:.0f} MB; stored vectors "
              f"{vec_bytes / 1e6:.0f} MB; peak/vectors = {peak / vec_bytes:.2f}")
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
