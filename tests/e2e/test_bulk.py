"""Filters, scroll, count, payload edits and streamed NDJSON import/export over HTTP."""
import http.client
import json
import random
import struct
import threading

import vdtest
from vdtest import NodeTest


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def ndjson(points):
    return ("\n".join(json.dumps(p) for p in points) + "\n").encode()


def chunked_post(node, path, chunks):
    """POST with Transfer-Encoding: chunked, sending the given byte chunks."""
    c = http.client.HTTPConnection(node.host, node.port, timeout=300)
    c.putrequest("POST", path)
    c.putheader("Transfer-Encoding", "chunked")
    c.putheader("Content-Type", "application/x-ndjson")
    c.endheaders()
    for ch in chunks:
        c.send(b"%x\r\n%s\r\n" % (len(ch), ch))
    c.send(b"0\r\n\r\n")
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data)


class FilterTest(NodeTest):
    COLORS = ["red", "green", "blue", None]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        n = cls.node
        n.create("f", 3, "Euclid")
        rnd = random.Random(42)
        cls.points = []
        for i in range(400):
            p = {}
            c = rnd.choice(cls.COLORS)
            if c is not None:
                p["color"] = c
            if rnd.random() < 0.8:
                p["price"] = rnd.choice([rnd.randint(0, 100), rnd.random() * 100])
            if rnd.random() < 0.5:
                p["tags"] = rnd.sample(["a", "b", "c", "d"], rnd.randint(0, 3))
            if rnd.random() < 0.3:
                p["meta"] = {"level": rnd.randint(1, 3), "ok": rnd.random() < 0.5}
            if rnd.random() < 0.1:
                p["color"] = None
            if rnd.random() < 0.4:
                p["cities"] = [{"pop": rnd.randint(0, 12)} for _ in range(rnd.randint(0, 3))]
            cls.points.append({"id": i, "vector": [rnd.random(), rnd.random(), rnd.random()],
                               "payload": p})
        n.ok("PUT", "/collections/f/points?wait=true", {"points": cls.points})

    @staticmethod
    def values(payload, key):
        """The values a key yields, by Qdrant's rules: a name reads from an object only (not
        from the elements of an array), "[]" takes every element of an array, and an array at
        the end of the path stands for its elements."""
        cur = [payload]
        for part in key.replace("[]", ".[]").split("."):
            nxt = []
            for c in cur:
                if part == "[]":
                    nxt.extend(c if isinstance(c, list) else [])
                elif isinstance(c, dict) and part in c:
                    nxt.append(c[part])
            cur = nxt
        out = []
        for v in cur:
            out.extend(v if isinstance(v, list) else [v])
        return out

    def check(self, flt, expect_fn):
        n = self.node
        want = sorted(p["id"] for p in self.points if expect_fn(p["payload"], p["id"]))
        got = n.ok("POST", "/collections/f/points/scroll",
                   {"filter": flt, "limit": 1000, "with_payload": False})
        self.assertEqual(sorted(r["id"] for r in got["points"]), want, flt)
        cnt = n.ok("POST", "/collections/f/points/count", {"filter": flt})["count"]
        self.assertEqual(cnt, len(want), flt)
        res = n.ok("POST", "/collections/f/points/search",
                   {"vector": [0.5, 0.5, 0.5], "limit": 1000, "filter": flt})
        self.assertEqual(sorted(r["id"] for r in res), want, flt)

    def test_operators(self):
        V = self.values
        self.check({"must": [{"key": "color", "match": {"value": "red"}}]},
                   lambda p, i: "red" in V(p, "color"))
        self.check({"must_not": [{"key": "color", "match": {"value": "red"}}]},
                   lambda p, i: "red" not in V(p, "color"))
        self.check({"should": [{"key": "color", "match": {"value": "red"}},
                               {"key": "tags", "match": {"value": "a"}}]},
                   lambda p, i: "red" in V(p, "color") or "a" in V(p, "tags"))
        self.check({"must": [{"key": "tags", "match": {"any": ["a", "b"]}}]},
                   lambda p, i: any(t in ("a", "b") for t in V(p, "tags")))
        self.check({"must": [{"key": "price", "range": {"gte": 20, "lt": 60}}]},
                   lambda p, i: any(isinstance(x, (int, float)) and not isinstance(x, bool)
                                    and 20 <= x < 60 for x in V(p, "price")))
        self.check({"must": [{"key": "meta.level", "match": {"value": 2}}]},
                   lambda p, i: 2 in V(p, "meta.level"))
        self.check({"must": [{"key": "meta.ok", "match": {"value": True}}]},
                   lambda p, i: True in [x for x in V(p, "meta.ok") if isinstance(x, bool)])
        self.check({"must": [{"has_id": [1, 5, 9, 1000]}]}, lambda p, i: i in (1, 5, 9))
        self.check({"must": [{"key": "price", "range": {"gt": 10}}],
                    "must_not": [{"has_id": [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]}]},
                   lambda p, i: any(isinstance(x, (int, float)) and x > 10 for x in V(p, "price"))
                   and i not in range(3, 13))
        self.check({"must": [{"is_empty": {"key": "tags"}}]},
                   lambda p, i: not [x for x in V(p, "tags") if x is not None])
        self.check({"must": [{"is_null": {"key": "color"}}]},
                   lambda p, i: "color" in p and p["color"] is None)
        # a plain name does not look inside an array of objects; "[]" does (Qdrant's rule)
        self.check({"must": [{"key": "cities.pop", "range": {"gte": 9}}]}, lambda p, i: False)
        self.check({"must": [{"key": "cities[].pop", "range": {"gte": 9}}]},
                   lambda p, i: any(x >= 9 for x in V(p, "cities[].pop")))
        self.check({"must": [{"is_empty": {"key": "cities.pop"}}]}, lambda p, i: True)
        self.check({"must": [{"is_empty": {"key": "cities[].pop"}}]},
                   lambda p, i: not V(p, "cities[].pop"))
        self.check({"must": [{"must": [{"key": "color", "match": {"value": "blue"}}]},
                             {"should": [{"key": "tags", "match": {"value": "c"}}]}]},
                   lambda p, i: "blue" in V(p, "color") and "c" in V(p, "tags"))

    def test_bad_filters(self):
        n = self.node
        for flt in ({"must": 5}, {"must": [{"key": 5, "match": {"value": 1}}]},
                    {"must": [{"key": "a", "range": {"gt": "x"}}]},
                    {"must": [{"key": "a", "match": {}}]}, {"must": [{"unknown": 1}]},
                    {"must": [{"has_id": ["nope"]}]}):
            with self.subTest(flt=flt):
                self.assertError(n.request("POST", "/collections/f/points/scroll", {"filter": flt}), 400)
                self.assertError(n.request("POST", "/collections/f/points/count", {"filter": flt}), 400)
                self.assertError(n.request("POST", "/collections/f/points/export", {"filter": flt}), 400)
                self.assertError(n.request("POST", "/collections/f/points/search",
                                           {"vector": [0, 0, 0], "limit": 1, "filter": flt}), 400)
                self.assertError(n.request("POST", "/collections/f/points/delete", {"filter": flt}), 400)
        self.assertError(n.request("POST", "/collections/f/points/export", b"{oops"), 400)
        self.assertError(n.request("GET", "/collections/none/points/export"), 404)


class PointsEditTest(NodeTest):
    def test_scroll_pages_and_payload_edits(self):
        n = self.node
        n.create("s", 2, "Dot")
        pts = [{"id": i, "vector": [1, i], "payload": {"i": i, "keep": True}} for i in range(1, 251)]
        pts.append({"id": "00000000-0000-0000-0000-000000000001", "vector": [1, 1]})
        n.ok("PUT", "/collections/s/points?wait=true", {"points": pts})
        seen, off = [], None
        while True:
            body = {"limit": 64}
            if off is not None:
                body["offset"] = off
            page = n.ok("POST", "/collections/s/points/scroll", body)
            seen += [p["id"] for p in page["points"]]
            off = page["next_page_offset"]
            if off is None:
                break
        self.assertEqual(seen, list(range(1, 251)) + ["00000000-0000-0000-0000-000000000001"])
        n.ok("POST", "/collections/s/points/payload?wait=true",
             {"payload": {"color": "red"}, "points": [1, 2]})
        n.ok("PUT", "/collections/s/points/payload?wait=true",
             {"payload": {"only": 1}, "points": [3]})
        n.ok("POST", "/collections/s/points/payload/delete?wait=true", {"keys": ["keep"], "points": [1]})
        n.ok("POST", "/collections/s/points/payload/clear?wait=true", {"points": [4]})
        got = {r["id"]: r["payload"] for r in n.ok("POST", "/collections/s/points", {"ids": [1, 2, 3, 4]})}
        self.assertEqual(got[1], {"i": 1, "color": "red"})
        self.assertEqual(got[2], {"i": 2, "keep": True, "color": "red"})
        self.assertEqual(got[3], {"only": 1})
        self.assertEqual(got[4], {})
        self.assertEqual(n.ok("POST", "/collections/s/points/count",
                              {"filter": {"must": [{"key": "color", "match": {"value": "red"}}]}})["count"], 2)
        n.ok("POST", "/collections/s/points/payload?wait=true",
             {"payload": {"big": True}, "filter": {"must": [{"key": "i", "range": {"gte": 200}}]}})
        self.assertEqual(n.ok("POST", "/collections/s/points/count",
                              {"filter": {"must": [{"key": "big", "match": {"value": True}}]}})["count"], 51)
        n.ok("POST", "/collections/s/points/delete?wait=true",
             {"filter": {"must": [{"key": "i", "range": {"lt": 101}}]}})
        # ids 3 and 4 no longer carry "i" (overwritten, cleared): they stay
        self.assertEqual(n.ok("POST", "/collections/s/points/count", {})["count"], 153)
        self.assertError(n.request("POST", "/collections/s/points/payload", {"payload": 5, "points": [1]}), 400)
        self.assertError(n.request("POST", "/collections/s/points/payload/delete", {"keys": "x", "points": [1]}), 400)

    def test_scroll_complete_under_concurrent_writes(self):
        n = self.node
        n.create("sc", 2, "Dot")
        n.ok("PUT", "/collections/sc/points?wait=true",
             {"points": [{"id": i, "vector": [1, 0]} for i in range(0, 3000, 2)]})
        stop = threading.Event()

        def churn():
            i = 1
            while not stop.is_set():  # odd ids come and go; even ids stay
                n.request("PUT", "/collections/sc/points", {"points": [{"id": i, "vector": [0, 1]}]})
                n.request("POST", "/collections/sc/points/delete", {"points": [i]})
                i = (i + 2) % 3000
        t = threading.Thread(target=churn)
        t.start()
        try:
            seen, off = [], None
            while True:
                body = {"limit": 100, "with_payload": False}
                if off is not None:
                    body["offset"] = off
                page = n.ok("POST", "/collections/sc/points/scroll", body)
                seen += [p["id"] for p in page["points"]]
                off = page["next_page_offset"]
                if off is None:
                    break
        finally:
            stop.set()
            t.join()
        self.assertEqual(len(seen), len(set(seen)), "a point was visited twice")
        self.assertEqual(sorted(i for i in seen if i % 2 == 0), list(range(0, 3000, 2)))


class BulkTest(NodeTest):
    node_args = ["--max-body-bytes", "65536"]

    def test_export_import_round_trip_bit_exact(self):
        n = self.node
        n.create("src", 16, "Cosine")
        rnd = random.Random(1)
        pts = []
        for i in range(1000):
            v = [f32(rnd.uniform(-1, 1)) for _ in range(16)]
            pid = i if i % 3 else str(__import__("uuid").UUID(int=rnd.getrandbits(128)))
            pts.append({"id": pid, "vector": v,
                        "payload": {"doc": f"text {i} ✓", "n": i, "f": 0.1 * i, "nested": {"a": [1, None, "x"]},
                                    "big": 18446744073709551615}})
        for s in range(0, len(pts), 100):
            n.ok("PUT", "/collections/src/points?wait=true", {"points": pts[s:s + 100]})
        st, raw = n.request("GET", "/collections/src/points/export", raw=True)
        self.assertEqual(st, 200)
        lines = raw.decode().splitlines()
        self.assertEqual(len(lines), 1000)
        self.assertIn("18446744073709551615", raw.decode())
        n.create("dst", 16, "Cosine")
        res = chunked_post(n, "/collections/dst/points/import", [raw[i:i + 7777] for i in range(0, len(raw), 7777)])
        self.assertEqual(res[0], 200, res)
        self.assertEqual(res[1]["result"]["imported"], 1000)
        self.assertEqual(res[1]["result"]["failed"], 0)
        st, raw2 = n.request("GET", "/collections/dst/points/export", raw=True)
        self.assertEqual(raw2, raw)  # ids, vectors bit for bit, payloads
        # filtered export
        st, raw3 = n.request("POST", "/collections/src/points/export",
                             {"filter": {"must": [{"key": "n", "range": {"lt": 10}}]}}, raw=True)
        self.assertEqual(st, 200)
        self.assertEqual(len(raw3.decode().splitlines()), 10)

    def test_import_larger_than_body_limit_and_bad_lines(self):
        n = self.node
        n.create("big", 32, "Euclid")
        rnd = random.Random(2)
        lines = []
        for i in range(3000):
            lines.append(json.dumps({"id": i, "vector": [rnd.random() for _ in range(32)],
                                     "payload": {"i": i}}))
        lines[10] = "{not json"
        lines[20] = json.dumps({"id": 20, "vector": [1, 2]})
        lines[30] = json.dumps({"id": -5, "vector": [0.0] * 32})
        lines[40] = ""
        body = ("\n".join(lines) + "\n").encode()
        self.assertGreater(len(body), 10 * 65536)
        st, j = n.request("POST", "/collections/big/points/import", body)
        self.assertEqual(st, 200, j)
        r = j["result"]
        self.assertEqual(r["imported"], 2996)
        self.assertEqual(r["failed"], 3)
        self.assertEqual([e["line"] for e in r["errors"]], [11, 21, 31])
        self.assertIn("Vector dimension error: expected dim: 32, got 2", r["errors"][1]["error"])
        self.assertEqual(n.ok("POST", "/collections/big/points/count", {})["count"], 2996)
        # abort mode: nothing after the first bad line
        n.create("ab", 32, "Euclid")
        st, j = n.request("POST", "/collections/ab/points/import?on_error=abort", body)
        self.assertEqual(st, 200, j)
        self.assertTrue(j["result"]["aborted"])
        self.assertEqual(n.ok("POST", "/collections/ab/points/count", {})["count"], 10)
        self.assertError(n.request("POST", "/collections/ab/points/import?on_error=maybe", b""), 400)
        self.assertError(n.request("POST", "/collections/none/points/import", b"{}"), 404)


if __name__ == "__main__":
    vdtest.main()
