#!/usr/bin/env python3
"""Writes the data directory kept as tests/data/store_v1/data.mdb: points, payloads, payload edits,
tombstones and a deleted collection, written through the REST API of a vectord binary of storage
format 1 (before point records). test_store_migrate opens a copy with the current code.

Usage: make_store_v1.py VECTORD_BINARY OUT_DIR
"""
import http.client
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    binary, out = sys.argv[1], sys.argv[2]
    data = tempfile.mkdtemp(prefix="vectord-v1-")
    port = free_port()
    proc = subprocess.Popen([binary, "--data-dir", data, "--port", str(port), "--cluster-port",
                             str(free_port()), "--log-level", "warn", "--index-threads", "1"])

    def call(method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers={"content-type": "application/json"})
        r = c.getresponse()
        txt = r.read()
        c.close()
        if r.status != 200:
            raise SystemExit(f"{method} {path}: {r.status} {txt!r}")
        return json.loads(txt) if path != "/readyz" else None

    for _ in range(200):
        try:
            call("GET", "/readyz")
            break
        except (OSError, SystemExit):
            time.sleep(0.05)
    call("PUT", "/collections/gone", {"vectors": {"size": 2, "distance": "Dot"}})
    call("PUT", "/collections/gone/points?wait=true",
         {"points": [{"id": i, "vector": [i, 1]} for i in range(5)]})
    call("DELETE", "/collections/gone")
    call("PUT", "/collections/docs", {"vectors": {"size": 4, "distance": "Dot"}})
    call("PUT", "/collections/unit", {"vectors": {"size": 3, "distance": "Cosine"}})
    pts = []
    for i in range(40):
        p = {"id": i if i % 3 else f"00000000-0000-4000-8000-{i:012x}",
             "vector": [i * 0.1, -0.0 if i % 2 else 1e-38, 3.4e38 if i % 5 == 0 else -i / 7.0,
                        1.0 / (i + 3)]}
        if i % 4:
            p["payload"] = {"n": i, "tag": "t%d" % (i % 3), "s": "é\u2603"}
        pts.append(p)
    pts.append({"id": 18446744073709551615, "vector": [1, 2, 3, 4], "payload": {"max": True}})
    call("PUT", "/collections/docs/points?wait=true", {"points": pts})
    call("PUT", "/collections/unit/points?wait=true",
         {"points": [{"id": i, "vector": [i + 1, 2, -3]} for i in range(6)]})
    call("POST", "/collections/docs/points/delete?wait=true", {"points": [1, 2, 7, 1000]})
    call("POST", "/collections/docs/points/payload?wait=true",
         {"payload": {"edited": 1}, "points": [4, 5, 8]})
    call("POST", "/collections/docs/points/delete?wait=true", {"points": [5]})
    proc.terminate()
    proc.wait(timeout=30)
    shutil.copyfile(f"{data}/data/data.mdb", f"{out}/data.mdb")
    shutil.rmtree(data)


if __name__ == "__main__":
    main()
