"""Single-node REST API: Qdrant-shaped endpoints, ids, scores, and every kind of bad input."""
import json
import math
import random
import uuid

import vdtest
from vdtest import KeyedNodeTest, NodeTest


class CollectionsTest(NodeTest):
    def test_root_and_health(self):
        r = self.node.ok_raw = None
        st, j = self.node.request("GET", "/")
        self.assertEqual(st, 200)
        self.assertEqual(j["title"], "vectord")
        self.assertIn("version", j)
        for p in ("/healthz", "/livez", "/readyz"):
            st, _ = self.node.request("GET", p, raw=True)
            self.assertEqual(st, 200, p)

    def test_lifecycle(self):
        n = self.node
        self.assertTrue(n.create("life", 4, "Dot"))
        self.assertEqual(n.ok("GET", "/collections/life/exists"), {"exists": True})
        self.assertEqual(n.ok("GET", "/collections/nope/exists"), {"exists": False})
        names = [c["name"] for c in n.ok("GET", "/collections")["collections"]]
        self.assertIn("life", names)
        info = n.ok("GET", "/collections/life")
        self.assertEqual(info["config"]["params"]["vectors"], {"size": 4, "distance": "Dot"})
        self.assertEqual(info["points_count"], 0)
        self.assertEqual(info["config"]["hnsw_config"]["m"], 16)
        self.assertError(n.request("PUT", "/collections/life",
                                   {"vectors": {"size": 4, "distance": "Dot"}}), 409, "exists")
        n.ok("PUT", "/collections/life/points?wait=true",
             {"points": [{"id": 1, "vector": [1, 2, 3, 4]}]})
        self.assertEqual(n.ok("GET", "/collections/life")["points_count"], 1)
        self.assertTrue(n.ok("DELETE", "/collections/life"))
        self.assertError(n.request("GET", "/collections/life"), 404, "not found")
        # re-created: starts empty
        n.create("life", 4, "Dot")
        self.assertEqual(n.ok("GET", "/collections/life")["points_count"], 0)
        self.assertEqual(n.ok("POST", "/collections/life/points", {"ids": [1]}), [])
        n.ok("DELETE", "/collections/life")

    def test_bad_collection_requests(self):
        n = self.node
        cases = [
            ({"vectors": {"size": 0, "distance": "Cosine"}}, 422, "size"),
            ({"vectors": {"size": 65537, "distance": "Cosine"}}, 422, "size"),
            ({"vectors": {"size": -3, "distance": "Cosine"}}, 400, "size"),
            ({"vectors": {"size": 2.5, "distance": "Cosine"}}, 400, "size"),
            ({"vectors": {"size": "4", "distance": "Cosine"}}, 400, "size"),
            ({"vectors": {"size": 4, "distance": "Hamming"}}, 400, "distance"),
            ({"vectors": {"size": 4}}, 400, "distance"),
            ({"vectors": {"distance": "Dot"}}, 400, "size"),
            ({}, 400, "vectors"),
            ({"vectors": 5}, 400, "vectors"),
            ({"vectors": {"size": 4, "distance": "Dot"}, "hnsw_config": {"m": "x"}}, 400, "m"),
        ]
        for body, status, frag in cases:
            with self.subTest(body=body):
                self.assertError(n.request("PUT", "/collections/badc", body), status, frag)
        self.assertError(n.request("GET", "/collections/badc"), 404)
        for name in ("a" * 256, "has%2Fslash", "..", "sp%20ace", "%2E%2E"):
            with self.subTest(name=name):
                st, j = n.request("PUT", f"/collections/{name}",
                                  {"vectors": {"size": 4, "distance": "Dot"}})
                self.assertIn(st, (404, 422), j)
                self.assertIn("error", j["status"])
        st, j = n.request("PUT", "/collections/", {"vectors": {"size": 4, "distance": "Dot"}})
        self.assertIn(st, (404, 405, 422))
        # malformed bodies
        for body in (b"{", b"{\"vectors\": ", b"[1,2]", b"nul", b"{\"a\":1}x",
                     b"{\"vectors\":{\"size\":4,\"distance\":\"Dot\"},\"x\":NaN}",
                     b"{\"vectors\":{\"size\":04,\"distance\":\"Dot\"}}",
                     b"\xff\xfe{}", b"[" * 5000 + b"]" * 5000):
            with self.subTest(body=body[:30]):
                self.assertError(n.request("PUT", "/collections/badc", body), 400)
        self.assertError(n.request("GET", "/collections/badc"), 404)
        # unknown fields are ignored
        self.assertTrue(n.ok("PUT", "/collections/extra", {"vectors": {"size": 2, "distance": "Dot"},
                                                           "shard_number": 1, "whatever": {"x": 1}}))
        # Qdrant's answer for a collection that is not there: 200 with result false
        self.assertIs(n.ok("DELETE", "/collections/never-was"), False)
        # one node: a replication factor above 1 cannot be met
        self.assertError(n.request("PUT", "/collections/rf2", {"vectors": {"size": 2, "distance":
                                   "Dot"}, "replication_factor": 2}), 422,
                         "replication_factor: value 2 invalid, the cluster has 1 member")
        self.assertEqual(n.ok("GET", "/collections/rf2/exists"), {"exists": False})


class PointsTest(NodeTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.node.create("p", 4, "Cosine")
        cls.node.create("e", 3, "Euclid")

    def test_ids_round_trip(self):
        n = self.node
        big = 18446744073709551615
        u = "550E8400-E29B-41D4-A716-446655440000"
        pts = [{"id": big, "vector": [1, 0, 0, 0], "payload": {"n": 1}},
               {"id": 0, "vector": [0, 1, 0, 0]},
               {"id": 9007199254740993, "vector": [0, 0, 1, 0]},
               {"id": u, "vector": [0, 0, 0, 1], "payload": {"doc": "héllo ✓", "big": 12345678901234567890}}]
        r = n.ok("PUT", "/collections/p/points?wait=true", {"points": pts})
        self.assertEqual(r["status"], "completed")
        self.assertIsInstance(r["operation_id"], int)
        st, raw = n.request("POST", "/collections/p/points",
                            {"ids": [big, 9007199254740993, u.lower(), 424242], "with_payload": True},
                            raw=True)
        self.assertEqual(st, 200)
        text = raw.decode()
        self.assertIn('"id":18446744073709551615', text)
        self.assertIn('"id":9007199254740993', text)
        self.assertIn('"id":"550e8400-e29b-41d4-a716-446655440000"', text)
        self.assertIn('12345678901234567890', text)
        got = json.loads(text)["result"]
        self.assertEqual(len(got), 3)  # missing ids are skipped
        rec = n.ok("GET", f"/collections/p/points/{u}")
        self.assertEqual(rec["payload"]["doc"], "héllo ✓")
        self.assertEqual(len(rec["vector"]), 4)
        self.assertError(n.request("GET", "/collections/p/points/77777"), 404)
        self.assertError(n.request("GET", "/collections/p/points/not-an-id"), 400)

    def test_batch_form_and_search_scores(self):
        n = self.node
        n.ok("PUT", "/collections/e/points?wait=true",
             {"batch": {"ids": [1, 2, 3], "vectors": [[0, 0, 0], [3, 4, 0], [1, 0, 0]],
                        "payloads": [{"k": "a"}, None, {"k": "c"}]}})
        res = n.ok("POST", "/collections/e/points/search",
                   {"vector": [0, 0, 0], "limit": 3, "with_payload": True})
        self.assertEqual([r["id"] for r in res], [1, 3, 2])
        self.assertAlmostEqual(res[0]["score"], 0.0, places=5)
        self.assertAlmostEqual(res[1]["score"], 1.0, places=5)
        self.assertAlmostEqual(res[2]["score"], 5.0, places=5)  # Euclidean distance, not squared
        self.assertEqual(res[0]["payload"], {"k": "a"})
        # score_threshold: for Euclid a maximum distance
        res = n.ok("POST", "/collections/e/points/search",
                   {"vector": [0, 0, 0], "limit": 3, "score_threshold": 1.5})
        self.assertEqual([r["id"] for r in res], [1, 3])
        res = n.ok("POST", "/collections/e/points/search",
                   {"vector": [0, 0, 0], "limit": 1, "offset": 1, "with_vector": True,
                    "params": {"exact": True}})
        self.assertEqual(res[0]["id"], 3)
        self.assertEqual(res[0]["vector"], [1.0, 0.0, 0.0])
        # query API
        q = n.ok("POST", "/collections/e/points/query", {"query": [3, 4, 0], "limit": 1})
        self.assertEqual(q["points"][0]["id"], 2)
        q = n.ok("POST", "/collections/e/points/query", {"query": {"nearest": [3, 4, 0]}, "limit": 2})
        self.assertEqual([p["id"] for p in q["points"]], [2, 3])
        q = n.ok("POST", "/collections/e/points/query", {"query": 2, "limit": 1})
        self.assertEqual(q["points"][0]["id"], 3)  # the point itself is not a result
        q = n.ok("POST", "/collections/e/points/query", {"limit": 2})
        self.assertEqual([p["id"] for p in q["points"]], [1, 2])
        b = n.ok("POST", "/collections/e/points/search/batch",
                 {"searches": [{"vector": [0, 0, 0], "limit": 1}, {"vector": [3, 4, 0], "limit": 1}]})
        self.assertEqual([[r["id"] for r in x] for x in b], [[1], [2]])
        qb = n.ok("POST", "/collections/e/points/query/batch",
                  {"searches": [{"query": [0, 0, 0], "limit": 1}, {"query": [3, 4, 0], "limit": 1}]})
        self.assertEqual([[r["id"] for r in x["points"]] for x in qb], [[1], [2]])
        # delete by ids
        n.ok("POST", "/collections/e/points/delete?wait=true", {"points": [1]})
        res = n.ok("POST", "/collections/e/points/search", {"vector": [0, 0, 0], "limit": 3})
        self.assertEqual([r["id"] for r in res], [3, 2])

    def test_cosine_and_dot_scores(self):
        n = self.node
        n.create("d", 2, "Dot")
        n.ok("PUT", "/collections/d/points?wait=true",
             {"points": [{"id": 1, "vector": [2, 0]}, {"id": 2, "vector": [1, 1]}]})
        res = n.ok("POST", "/collections/d/points/search", {"vector": [3, 0], "limit": 2})
        self.assertEqual(res[0]["id"], 1)
        self.assertAlmostEqual(res[0]["score"], 6.0, places=4)
        n.create("c", 2, "Cosine")
        n.ok("PUT", "/collections/c/points?wait=true",
             {"points": [{"id": 1, "vector": [2, 0]}, {"id": 2, "vector": [1, 1]}]})
        res = n.ok("POST", "/collections/c/points/search", {"vector": [3, 0], "limit": 2})
        self.assertAlmostEqual(res[0]["score"], 1.0, places=4)
        self.assertAlmostEqual(res[1]["score"], math.sqrt(0.5), places=4)
        self.assertError(n.request("PUT", "/collections/c/points",
                                   {"points": [{"id": 3, "vector": [0, 0]}]}), 400, "zero")

    def test_bad_points(self):
        n = self.node
        before = n.ok("GET", "/collections/p")["points_count"]
        good = {"id": 100, "vector": [1, 2, 3, 4]}
        cases = [
            ({"points": [good, {"id": 101, "vector": [1, 2, 3]}]}, 400,
             "points[1]: Vector dimension error: expected dim: 4, got 3"),
            ({"points": [good, {"id": 101, "vector": [1, 2, 3, 4, 5]}]}, 400,
             "Vector dimension error: expected dim: 4, got 5"),
            ({"points": [good, {"id": 101, "vector": []}]}, 400, None),
            ({"points": [good, {"id": -1, "vector": [1, 2, 3, 4]}]}, 400, "id"),
            ({"points": [good, {"id": 1.5, "vector": [1, 2, 3, 4]}]}, 400, "id"),
            ({"points": [good, {"id": "not-a-uuid", "vector": [1, 2, 3, 4]}]}, 400, "id"),
            ({"points": [good, {"id": 18446744073709551616, "vector": [1, 2, 3, 4]}]}, 400, "id"),
            ({"points": [good, {"id": True, "vector": [1, 2, 3, 4]}]}, 400, "id"),
            ({"points": [good, {"vector": [1, 2, 3, 4]}]}, 400, "id"),
            ({"points": [good, {"id": 101}]}, 400, "vector"),
            ({"points": [good, {"id": 101, "vector": [1, 2, "3", 4]}]}, 400, None),
            ({"points": [good, {"id": 101, "vector": [1, 2, 3, 1e39]}]}, 400, None),
            ({"points": [good, {"id": 101, "vector": [1, 2, 3, 4], "payload": [1]}]}, 400, "payload"),
            ({"points": "x"}, 400, "points"),
            ({"batch": {"ids": [1, 2], "vectors": [[1, 2, 3, 4]]}}, 400, None),
            ({}, 400, "points"),
        ]
        for body, status, frag in cases:
            with self.subTest(body=str(body)[:80]):
                self.assertError(n.request("PUT", "/collections/p/points", body), status, frag)
        for raw in (b'{"points":[{"id":1,"vector":[1,2,3,NaN]}]}',
                    b'{"points":[{"id":1,"vector":[1,2,3,Infinity]}]}',
                    b'{"points":[{"id":1,"vector":[1,2,3,1e999]}]}',
                    b'{"points":[{"id":1,"vector":[1,2,3,4]}',
                    b'{"points":[{"id":01,"vector":[1,2,3,4]}]}'):
            with self.subTest(raw=raw):
                self.assertError(n.request("PUT", "/collections/p/points", raw), 400)
        # nothing of a rejected batch was written
        self.assertEqual(n.ok("GET", "/collections/p")["points_count"], before)
        self.assertEqual(n.ok("POST", "/collections/p/points", {"ids": [100, 101]}), [])
        self.assertError(n.request("PUT", "/collections/missing/points", {"points": [good]}), 404)
        # search input
        for body, status in (({"vector": [1, 2, 3], "limit": 1}, 400),
                             ({"vector": [1, 2, 3, 4], "limit": -1}, 400),
                             ({"vector": [1, 2, 3, 4], "limit": 10001}, 422),
                             ({"vector": [1, 2, 3, 4], "limit": "ten"}, 400),
                             ({"vector": [1, 2, 3, 4]}, 400),
                             ({"limit": 3}, 400),
                             ({"vector": [1, 2, 3, 4], "limit": 3, "with_payload": 7}, 400),
                             ({"vector": [1, 2, 3, 4], "limit": 3, "params": {"hnsw_ef": -5}}, 400),
                             ({"vector": [1, 2, 3, 4], "limit": 3, "filter": {"must": 5}}, 400)):
            with self.subTest(search=body):
                self.assertError(n.request("POST", "/collections/p/points/search", body), status)
        self.assertError(n.request("POST", "/collections/missing/points/search",
                                   {"vector": [1, 2, 3, 4], "limit": 1}), 404)
        self.assertError(n.request("POST", "/collections/p/points/query", {"query": 987654}), 404)
        self.assertError(n.request("POST", "/collections/p/points/delete", {"points": ["zz"]}), 400)
        self.assertError(n.request("POST", "/collections/p/points/delete", {}), 400)
        # the server still serves
        self.assertEqual(n.ok("GET", "/collections/p/exists"), {"exists": True})

    def test_body_limit(self):
        n = vdtest.Node(args=["--max-body-bytes", "4096"]).start()
        try:
            n.create("s", 4)
            body = b'{"points":[' + b",".join(
                b'{"id":%d,"vector":[1,2,3,4]}' % i for i in range(400)) + b"]}"
            self.assertGreater(len(body), 4096)
            st, j = n.request("PUT", "/collections/s/points", body)
            self.assertEqual(st, 413, j)
            self.assertIn("error", j["status"])
            self.assertEqual(n.ok("GET", "/collections/s")["points_count"], 0)
        finally:
            n.cleanup()


class AuthTest(KeyedNodeTest):
    def test_matrix(self):
        n = self.node
        upsert = ("PUT", "/collections/a/points", {"points": [{"id": 1, "vector": [1, 2]}]})
        search = ("POST", "/collections/a/points/search", {"vector": [1, 2], "limit": 1})
        create = ("PUT", "/collections/a2", {"vectors": {"size": 2, "distance": "Dot"}})
        drop = ("DELETE", "/collections/a2", None)
        expect = {  # role -> statuses for upsert, search, create, drop
            None: (401, 401, 401, 401),
            "wrong": (401, 401, 401, 401),
            "ro": (403, 200, 403, 403),
            "rw": (200, 200, 403, 403),
            "admin": (200, 200, 200, 200),
        }
        for role, statuses in expect.items():
            key = "" if role is None else self.keys.get(role, "wrong-key-0000")
            for (m, p, b), want in zip((upsert, search, create, drop), statuses):
                with self.subTest(role=role, path=p, method=m):
                    st, j = n.request(m, p, b, key=key)
                    self.assertEqual(st, want, j)
                    if want != 200:
                        self.assertIn("error", j["status"])
        # Bearer form
        st, _ = n.request(*search, key="", headers={"Authorization": "Bearer " + self.keys["ro"]})
        self.assertEqual(st, 200)
        # open endpoints
        for p in ("/", "/healthz", "/livez", "/readyz"):
            st, _ = n.request("GET", p, key="", raw=True)
            self.assertEqual(st, 200, p)
        st, _ = n.request("GET", "/metrics", key="", raw=True)
        self.assertEqual(st, 401)
        st, text = n.request("GET", "/metrics", key=self.keys["ro"], raw=True)
        self.assertEqual(st, 200)
        self.assertIn(b"vectord_collection_points", text)


class StartupTest(NodeTest):
    def test_bad_flags(self):
        import subprocess
        for args, frag in ((["--port", "abc"], "--port"), (["--bogus"], "--bogus"),
                           (["--bind", "0.0.0.0"], "--bind"), (["--log-level", "loud"], "--log-level"),
                           (["--data-dir"], "--data-dir")):
            with self.subTest(args=args):
                p = subprocess.run([vdtest.BINARY] + args, capture_output=True, timeout=30)
                self.assertNotEqual(p.returncode, 0)
                err = p.stderr.decode()
                self.assertIn(frag, err)
                self.assertEqual(len(err.strip().splitlines()), 1, err)
        p = subprocess.run([vdtest.BINARY, "--help"], capture_output=True, timeout=30)
        self.assertEqual(p.returncode, 0)
        self.assertIn(b"--data-dir", p.stdout)

    def test_second_process_refused(self):
        other = vdtest.Node(data_dir=self.node.data_dir)
        other.start(wait=False)
        rc = other.proc.wait(30)
        self.assertNotEqual(rc, 0)
        self.assertIn("lock", other.read_log().lower())


if __name__ == "__main__":
    vdtest.main()
