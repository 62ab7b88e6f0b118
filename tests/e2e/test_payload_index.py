"""Payload indexes over HTTP: PUT/DELETE /collections/{c}/index, payload_schema in collection
info, bad input on every endpoint, roles, persistence across a restart, and filtered results that
are the same with and without the indexes."""
import json
import random

import vdtest
from vdtest import KeyedNodeTest, NodeTest

COLORS = ["red", "green", "blue", "Red", ""]


def make_points(n, seed):
    rnd = random.Random(seed)
    pts = []
    for i in range(n):
        p = {}
        r = rnd.random()
        if r < 0.6:
            p["color"] = rnd.choice(COLORS)
        elif r < 0.7:
            p["color"] = [rnd.choice(COLORS) for _ in range(rnd.randint(0, 3))]
        elif r < 0.75:
            p["color"] = rnd.choice([None, 5, True])  # null and values of other types
        if rnd.random() < 0.8:
            p["price"] = rnd.choice([rnd.randint(-5, 100), round(rnd.random() * 100, 2), "12",
                                     [rnd.randint(0, 100), rnd.random() * 100]])
        if rnd.random() < 0.5:
            p["meta"] = {"level": rnd.randint(1, 3), "ok": rnd.random() < 0.5}
        if rnd.random() < 0.2:
            p["meta"] = [{"level": rnd.randint(1, 3)}, {"ok": rnd.random() < 0.5}]
        pts.append({"id": i, "vector": [rnd.random() for _ in range(4)], "payload": p})
    return pts


def filters():
    return [
        {"must": [{"key": "color", "match": {"value": "red"}}]},
        {"must": [{"key": "color", "match": {"any": ["green", "", "Red"]}}]},
        {"must": [{"key": "color", "match": {"value": 5}}]},
        {"must": [{"key": "color", "match": {"except": ["red"]}}]},
        {"must": [{"key": "price", "range": {"gte": 10, "lt": 20}}]},
        {"must": [{"key": "price", "range": {"gt": 99.5}}]},
        {"must": [{"key": "price", "match": {"any": [1, 2, 3, 50]}}]},
        {"must": [{"key": "meta.level", "match": {"value": 2}},
                  {"key": "meta.ok", "match": {"value": True}}]},
        {"must": [{"key": "color", "match": {"value": "blue"}},
                  {"key": "price", "range": {"lte": 50}}]},
        {"should": [{"key": "color", "match": {"value": "blue"}},
                    {"key": "price", "range": {"gte": 90}}]},
        {"should": [{"key": "color", "match": {"value": "blue"}}, {"is_empty": {"key": "price"}}]},
        {"must": [{"key": "color", "match": {"value": "green"}}],
         "must_not": [{"key": "price", "range": {"gt": 30}}]},
        {"must": [{"has_id": [1, 5, 7, 300]}, {"key": "price", "range": {"gte": 0}}]},
        {"must": [{"key": "color", "match": {"value": "nothing"}}]},
        {"must": [{"must": [{"key": "price", "range": {"gte": 5, "lte": 5.5}}]}]},
    ]


INDEXES = [("color", "keyword"), ("price", {"type": "float"}), ("meta.level", "integer"),
           ("meta.ok", "bool")]


class PayloadIndexTest(NodeTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        n = cls.node
        cls.points = make_points(600, 7)
        for name in ("ix", "plain"):
            n.create(name, 4, "Euclid")
            n.ok("PUT", f"/collections/{name}/points?wait=true", {"points": cls.points})

    def create_indexes(self, coll="ix"):
        for field, schema in INDEXES:
            r = self.node.ok("PUT", f"/collections/{coll}/index?wait=true",
                             {"field_name": field, "field_schema": schema})
            self.assertEqual(r["status"], "completed")
            self.assertIsInstance(r["operation_id"], int)

    def results(self, coll, f, exact):
        n = self.node
        out = {"count": n.ok("POST", f"/collections/{coll}/points/count",
                             {"filter": f, "exact": True})["count"]}
        ids, offset = [], None
        while True:
            body = {"filter": f, "limit": 37, "with_payload": False}
            if offset is not None:
                body["offset"] = offset
            r = n.ok("POST", f"/collections/{coll}/points/scroll", body)
            ids += [p["id"] for p in r["points"]]
            offset = r["next_page_offset"]
            if offset is None:
                break
        out["scroll"] = ids
        rnd = random.Random(json.dumps(f))
        out["search"] = []
        for _ in range(3):
            q = [rnd.random() for _ in range(4)]
            hits = n.ok("POST", f"/collections/{coll}/points/search",
                        {"vector": q, "limit": 10, "filter": f, "with_payload": True,
                         "params": {"exact": exact}})
            out["search"].append([(h["id"], h["score"], json.dumps(h["payload"], sort_keys=True))
                                  for h in hits])
        return out

    def check_same(self):
        matched = 0
        for f in filters():
            with self.subTest(filter=f):
                a = self.results("ix", f, False)
                b = self.results("plain", f, True)
                self.assertEqual(a, b)
                matched += a["count"] > 0
        self.assertGreater(matched, 8)  # the filters do select something

    def test_1_indexes_change_nothing_but_speed(self):
        n = self.node
        self.create_indexes()
        info = n.ok("GET", "/collections/ix")
        schema = info["payload_schema"]
        self.assertEqual(set(schema), {"color", "price", "meta.level", "meta.ok"})
        self.assertEqual(schema["color"]["data_type"], "keyword")
        self.assertEqual(schema["price"]["data_type"], "float")
        self.assertEqual(schema["meta.level"]["data_type"], "integer")
        self.assertEqual(schema["meta.ok"]["data_type"], "bool")
        want_color = sum(1 for p in self.points
                         if isinstance(p["payload"].get("color"), str) or
                         (isinstance(p["payload"].get("color"), list) and p["payload"]["color"]))
        self.assertEqual(schema["color"]["points"], want_color)
        self.assertEqual(n.ok("GET", "/collections/plain")["payload_schema"], {})
        self.check_same()
        # writes after the indexes exist: overwrite, delete, payload edits, delete by filter
        rnd = random.Random(3)
        more = make_points(700, 11)[500:]
        for name in ("ix", "plain"):
            n.ok("PUT", f"/collections/{name}/points?wait=true", {"points": more})
            n.ok("POST", f"/collections/{name}/points/delete?wait=true",
                 {"points": list(range(0, 600, 7))})
            n.ok("POST", f"/collections/{name}/points/payload?wait=true",
                 {"payload": {"color": "red", "price": 5.25}, "points": list(range(1, 300, 5))})
            n.ok("PUT", f"/collections/{name}/points/payload?wait=true",
                 {"payload": {"meta": {"level": 2, "ok": True}},
                  "filter": {"must": [{"key": "color", "match": {"value": "blue"}}]}})
            n.ok("POST", f"/collections/{name}/points/payload/delete?wait=true",
                 {"keys": ["price"], "points": list(range(2, 300, 9))})
            n.ok("POST", f"/collections/{name}/points/payload/clear?wait=true",
                 {"points": list(range(3, 300, 11))})
            n.ok("POST", f"/collections/{name}/points/delete?wait=true",
                 {"filter": {"must": [{"key": "price", "range": {"gt": 95}}]}})
        rnd.random()
        self.check_same()

    def test_2_restart_keeps_indexes(self):
        n = self.node
        before = n.ok("GET", "/collections/ix")["payload_schema"]
        self.assertEqual(len(before), 4)
        self.assertEqual(n.stop(), 0)
        n.start()
        after = n.ok("GET", "/collections/ix")["payload_schema"]
        self.assertEqual(after, before)
        self.check_same()
        # drop one; it stays dropped across a restart
        r = n.ok("DELETE", "/collections/ix/index/meta.ok?wait=true")
        self.assertEqual(r["status"], "completed")
        self.assertError(n.request("DELETE", "/collections/ix/index/meta.ok"), 404, "meta.ok")
        self.assertEqual(n.stop(), 0)
        n.start()
        self.assertEqual(set(n.ok("GET", "/collections/ix")["payload_schema"]),
                         {"color", "price", "meta.level"})
        self.check_same()

    def test_3_bad_input(self):
        n = self.node
        p = "/collections/ix/index"
        cases = [
            ({"field_schema": "keyword"}, 400, "field_name"),
            ({"field_name": 5, "field_schema": "keyword"}, 400, "field_name"),
            ({"field_name": None, "field_schema": "keyword"}, 400, "field_name"),
            ({"field_name": "x"}, 400, "field_schema"),
            ({"field_name": "x", "field_schema": "geo"}, 400, "geo"),
            ({"field_name": "x", "field_schema": "Keyword"}, 400, "field_schema"),
            ({"field_name": "x", "field_schema": 3}, 400, "field_schema"),
            ({"field_name": "x", "field_schema": {"kind": "keyword"}}, 400, "field_schema.type"),
            ({"field_name": "x", "field_schema": {"type": 1}}, 400, "field_schema"),
            ({"field_name": "", "field_schema": "keyword"}, 400, "field_name"),
            ({"field_name": "a..b", "field_schema": "keyword"}, 400, "a..b"),
            ({"field_name": "a" * 501, "field_schema": "keyword"}, 422, "field_name"),
            ([1, 2], 400, None),
        ]
        for body, status, frag in cases:
            with self.subTest(body=body):
                self.assertError(n.request("PUT", p, body), status, frag)
        self.assertError(n.request("PUT", p, b"{not json", headers={"Content-Type":
                                                                     "application/json"}), 400)
        self.assertError(n.request("PUT", p, b""), 400)
        self.assertError(n.request("PUT", "/collections/missing/index",
                                   {"field_name": "x", "field_schema": "keyword"}), 404, "missing")
        self.assertError(n.request("PUT", "/collections/bad!name/index",
                                   {"field_name": "x", "field_schema": "keyword"}), 422)
        self.assertError(n.request("DELETE", "/collections/missing/index/x"), 404, "missing")
        self.assertError(n.request("DELETE", "/collections/ix/index/nope"), 404, "nope")
        # the longest name is fine, also through the URL of DELETE
        long = "b" * 500
        n.ok("PUT", p, {"field_name": long, "field_schema": "keyword"})
        self.assertIn(long, n.ok("GET", "/collections/ix")["payload_schema"])
        n.ok("DELETE", f"/collections/ix/index/{long}")
        # re-creating the same index answers completed; retyping replaces it
        n.ok("PUT", p, {"field_name": "zz", "field_schema": "keyword"})
        n.ok("PUT", p, {"field_name": "zz", "field_schema": "keyword"})
        n.ok("PUT", p, {"field_name": "zz", "field_schema": "integer"})
        self.assertEqual(n.ok("GET", "/collections/ix")["payload_schema"]["zz"]["data_type"],
                         "integer")
        n.ok("DELETE", "/collections/ix/index/zz")
        # a field name needing URL escapes
        n.ok("PUT", p, {"field_name": "\"a/b\".c", "field_schema": "bool"})
        n.ok("DELETE", "/collections/ix/index/%22a%2Fb%22.c")

    def test_4_collection_recreate_drops_indexes(self):
        n = self.node
        n.create("tmp", 2, "Dot")
        n.ok("PUT", "/collections/tmp/index", {"field_name": "a", "field_schema": "keyword"})
        n.ok("DELETE", "/collections/tmp")
        n.create("tmp", 2, "Dot")
        self.assertEqual(n.ok("GET", "/collections/tmp")["payload_schema"], {})
        n.ok("DELETE", "/collections/tmp")


class PayloadIndexAuthTest(KeyedNodeTest):
    def test_roles(self):
        n = self.node
        body = {"field_name": "x", "field_schema": "keyword"}
        for role, want in ((None, 401), ("ro", 403), ("rw", 200), ("admin", 200)):
            key = "" if role is None else self.keys[role]
            with self.subTest(role=role):
                st, j = n.request("PUT", "/collections/a/index", body, key=key)
                self.assertEqual(st, want, j)
                st, j = n.request("DELETE", "/collections/a/index/x", key=key)
                self.assertEqual(st, want, j)
                if want != 200:
                    self.assertIn("error", j["status"])


if __name__ == "__main__":
    vdtest.main()
