"""POST /collections/{c}/points/batch and the vector updates, as Qdrant 1.19's OpenAPI document
shapes them (UpdateOperations, UpdateVectors, DeleteVectors; a list of UpdateResult back).

A batch is checked whole before anything is written: every malformed operation is a 4xx naming
it, and the collection is then exactly as before. A good batch is applied in order, each
operation seeing what the ones before it wrote. The same batches run through a cluster of three
nodes (replication factor 3) are read back at consistency=all from the other nodes.

Every wait polls a condition with a deadline; nothing sleeps to synchronise.
"""
import itertools

import vdtest
from vdtest import ClusterCase, NodeTest, wait_until

DIM = 4
_names = itertools.count()


def state(node, coll, consistency=None):
    """Every point of coll (id -> (payload, vector)), through one full scroll."""
    q = f"?consistency={consistency}" if consistency else ""
    got = node.ok("POST", f"/collections/{coll}/points/scroll{q}",
                  {"limit": 10000, "with_payload": True, "with_vector": True})
    assert got["next_page_offset"] is None, got
    return {p["id"]: (p["payload"], p["vector"]) for p in got["points"]}


def batch(node, coll, ops, query="?wait=true"):
    return node.request("POST", f"/collections/{coll}/points/batch{query}", {"operations": ops})


# One batch exercising every applicable operation, each later one depending on an earlier one,
# and what the collection holds after it (from empty).
ORDERED_OPS = [
    {"upsert": {"points": [
        {"id": 1, "vector": [1, 0, 0, 0], "payload": {"a": 1, "keep": "x"}},
        {"id": 2, "vector": [0, 1, 0, 0], "payload": {"b": 1}},
        {"id": 3, "vector": [0, 0, 1, 0], "payload": {"c": 1, "d": 2}}]}},
    # set_payload on a point the same batch just wrote
    {"set_payload": {"payload": {"a": 2, "new": True}, "points": [1]}},
    {"overwrite_payload": {"payload": {"only": "this"}, "points": [2]}},
    {"delete_payload": {"keys": ["c"], "points": [3]}},
    # delete, then upsert the same id again: it is back with the new vector and payload
    {"delete": {"points": [2]}},
    {"upsert": {"batch": {"ids": [2, 4], "vectors": [[0, 2, 0, 0], [0, 0, 0, 4]],
                          "payloads": [{"again": 1}, {"tag": "t"}]}}},
    # a filter sees the payloads written above: 4 is the only point tagged
    {"set_payload": {"payload": {"seen": 1}, "filter": {"must": [{"key": "tag", "match":
                                                                  {"value": "t"}}]}}},
    {"update_vectors": {"points": [{"id": 1, "vector": [0, 0, 0, 9]}]}},
    {"clear_payload": {"points": [3]}},
    # deleting by a filter on a key set two operations ago
    {"delete": {"filter": {"must": [{"key": "seen", "match": {"value": 1}}]}}},
]
ORDERED_RESULT = {
    1: ({"a": 2, "keep": "x", "new": True}, [0.0, 0.0, 0.0, 9.0]),
    2: ({"again": 1}, [0.0, 2.0, 0.0, 0.0]),
    3: ({}, [0.0, 0.0, 1.0, 0.0]),
}

# Batches that must be refused whole: (operations, HTTP status, a fragment of the error). Each
# begins with a good upsert that would change the collection if anything were written.
GOOD = {"upsert": {"points": [{"id": 1, "vector": [5, 5, 5, 5], "payload": {"w": "rong"}},
                              {"id": 77, "vector": [7, 7, 7, 7]}]}}
BAD_BATCHES = [
    ([GOOD, {"insert": {"points": []}}], 400, "operations[1]: unknown update operation 'insert'"),
    ([GOOD, {"delete_points": {"points": [1]}}], 400, "operations[1]: unknown update operation"),
    ([GOOD, {"upsert": GOOD["upsert"], "delete": {"points": [1]}}], 400,
     "operations[1]: holds both"),
    ([GOOD, 5], 400, "operations[1]: must be an object"),
    ([GOOD, {"upsert": {"points": [{"id": 9, "vector": [1, 2, 3]}]}}], 400,
     "operations[1].upsert: points[0]: Vector dimension error: expected dim: 4, got 3"),
    ([GOOD, {"upsert": {"batch": {"ids": [9], "vectors": [[1, 2, 3, 4, 5]]}}}], 400,
     "operations[1].upsert: batch.vectors[0]: Vector dimension error"),
    ([GOOD, {"upsert": {"points": [{"id": -1, "vector": [1, 2, 3, 4]}]}}], 400,
     "operations[1].upsert: points[0]"),
    ([GOOD, {"upsert": {"points": [{"id": "not-a-uuid", "vector": [1, 2, 3, 4]}]}}], 400,
     "point id"),
    ([GOOD, {"upsert": {"points": [{"id": 9, "vector": [1, 2, "x", 4]}]}}], 400,
     "operations[1].upsert"),
    ([GOOD, {"upsert": {"points": []}}], 400, "operations[1].upsert: no points given"),
    ([GOOD, {"upsert": {"points": [{"id": 9, "vector": [1, 2, 3, 4]}],
                        "update_filter": {"must": [{"has_id": [9]}]}}}], 400, "update_filter"),
    ([GOOD, {"delete": {"points": [1, 2.5]}}], 400, "operations[1].delete: points[1]"),
    ([GOOD, {"delete": {}}], 400, "operations[1].delete: expected 'points'"),
    ([GOOD, {"delete": {"filter": {"must": [{"key": "a", "between": 1}]}}}], 422,
     "operations[1].delete: Validation error in JSON body: [filter.must[0]"),
    ([GOOD, {"set_payload": {"payload": [1], "points": [1]}}], 400,
     "operations[1].set_payload: 'payload' must be a JSON object"),
    ([GOOD, {"set_payload": {"payload": {"x": 1}, "points": [1], "key": "nested"}}], 400,
     "operations[1].set_payload: 'key' is not supported"),
    ([GOOD, {"overwrite_payload": {"payload": {"x": 1}}}], 400,
     "operations[1].overwrite_payload: expected 'points'"),
    ([GOOD, {"delete_payload": {"keys": "a", "points": [1]}}], 400,
     "operations[1].delete_payload: 'keys'"),
    ([GOOD, {"clear_payload": {"filter": {"must": {"key": 1}}}}], 400,
     "operations[1].clear_payload"),
    ([GOOD, {"update_vectors": {"points": [{"id": 1, "vector": [1, 2]}]}}], 400,
     "operations[1].update_vectors: points[0]: Vector dimension error: expected dim: 4, got 2"),
    ([GOOD, {"update_vectors": {"points": []}}], 400,
     "operations[1].update_vectors: no points given"),
    ([GOOD, {"update_vectors": {"points": [{"id": 1, "vector": {"named": [1, 2, 3, 4]}}]}}], 400,
     "named vectors are not supported"),
    ([GOOD, {"delete_vectors": {"points": [1], "vector": [""]}}], 400,
     "vectorless points are not supported yet"),
    ([GOOD, {"delete_vectors": {"points": [1], "vector": ["text"]}}], 400,
     "Not existing vector name error: text"),
    ([GOOD, {"delete_vectors": {"points": [1]}}], 400, "'vector' must be"),
    # a well-formed batch whose update_vectors names a point that does not exist: Qdrant's 404,
    # found before anything is written
    ([GOOD, {"update_vectors": {"points": [{"id": 1, "vector": [1, 1, 1, 1]},
                                           {"id": 404, "vector": [1, 1, 1, 1]}]}}], 404,
     "No point with id 404 found"),
]


class BatchTest(NodeTest):
    def coll(self, distance="Dot"):
        name = f"b{next(_names)}"
        self.node.create(name, DIM, distance)
        return name

    def test_operations_apply_in_order(self):
        c = self.coll()
        st, j = batch(self.node, c, ORDERED_OPS)
        self.assertEqual(st, 200, j)
        self.assertEqual(j["status"], "ok")
        self.assertEqual(len(j["result"]), len(ORDERED_OPS), j)
        for r in j["result"]:
            self.assertEqual(set(r), {"operation_id", "status"}, r)
            self.assertEqual(r["status"], "completed")
            self.assertIsInstance(r["operation_id"], int)
        self.assertEqual(state(self.node, c), ORDERED_RESULT)
        # the writes' operation ids grow along the batch
        ids = [r["operation_id"] for r in j["result"] if r["operation_id"]]
        self.assertEqual(ids, sorted(ids), j)

    def test_every_malformed_batch_writes_nothing(self):
        c = self.coll()
        self.node.ok("PUT", f"/collections/{c}/points?wait=true", {"points": [
            {"id": 1, "vector": [1, 0, 0, 0], "payload": {"a": 1}},
            {"id": 2, "vector": [0, 1, 0, 0]}]})
        before = state(self.node, c)
        for ops, status, fragment in BAD_BATCHES:
            with self.subTest(ops=ops[1]):
                self.assertError(batch(self.node, c, ops), status, fragment)
                self.assertEqual(state(self.node, c), before)
        # the request itself
        for body, fragment in [({}, "missing field 'operations'"),
                               ({"operations": {"upsert": {}}}, "'operations' must be an array"),
                               ({"operations": [GOOD, {"upsert": None}]},
                                "operations[1].upsert: must be a JSON object")]:
            self.assertError(self.node.request("POST", f"/collections/{c}/points/batch", body),
                             400, fragment)
        self.assertError(self.node.request("POST", f"/collections/{c}/points/batch",
                                           b"{\"operations\": [", {"Content-Type":
                                                                    "application/json"}), 400)
        for q, fragment in [("?ordering=fastest", "query parameter 'ordering'"),
                            ("?consistency=2", "query parameter 'consistency'"),
                            ("?wait=maybe", "query parameter 'wait'"),
                            ("?timeout=0", "query parameter 'timeout'")]:
            self.assertError(batch(self.node, c, [GOOD], q), 400, fragment)
        self.assertError(batch(self.node, "no_such_collection", [GOOD]), 404, "not found")
        self.assertEqual(state(self.node, c), before)

    def test_failure_while_applying_names_the_operation(self):
        # a delete by filter leaves unknown which points it removes: an update_vectors of a
        # point it removed fails when the batch comes to it, and what came before stays
        c = self.coll()
        self.node.ok("PUT", f"/collections/{c}/points?wait=true", {"points": [
            {"id": 1, "vector": [1, 0, 0, 0], "payload": {"gone": True}},
            {"id": 2, "vector": [0, 1, 0, 0]}]})
        ops = [{"set_payload": {"payload": {"first": 1}, "points": [2]}},
               {"delete": {"filter": {"must": [{"key": "gone", "match": {"value": True}}]}}},
               {"update_vectors": {"points": [{"id": 1, "vector": [1, 1, 1, 1]}]}},
               {"set_payload": {"payload": {"never": 1}, "points": [2]}}]
        self.assertError(batch(self.node, c, ops), 404,
                         "operations[2].update_vectors: No point with id 1 found")
        self.assertEqual(state(self.node, c), {2: ({"first": 1}, [0.0, 1.0, 0.0, 0.0])})

    def test_full_range_and_uuid_ids(self):
        c = self.coll()
        big, u = 18446744073709551615, "550e8400-e29b-41d4-a716-446655440000"
        body = (b'{"operations": [{"upsert": {"points": [{"id": 18446744073709551615, '
                b'"vector": [1, 2, 3, 4]}, {"id": "550E8400E29B41D4A716446655440000", '
                b'"vector": [4, 3, 2, 1]}]}}, {"update_vectors": {"points": [{"id": '
                b'18446744073709551615, "vector": [9, 9, 9, 9]}]}}, {"set_payload": '
                b'{"payload": {"u": 1}, "points": ["550e8400-e29b-41d4-a716-446655440000"]}}]}')
        st, j = self.node.request("POST", f"/collections/{c}/points/batch?wait=true", body,
                                  {"Content-Type": "application/json"})
        self.assertEqual(st, 200, j)
        self.assertEqual(state(self.node, c), {big: ({}, [9.0, 9.0, 9.0, 9.0]),
                                               u: ({"u": 1}, [4.0, 3.0, 2.0, 1.0])})

    def test_zero_vector_under_cosine_writes_nothing(self):
        c = self.coll("Cosine")
        self.node.ok("PUT", f"/collections/{c}/points?wait=true",
                     {"points": [{"id": 1, "vector": [1, 0, 0, 0]}]})
        before = state(self.node, c)
        for op in [{"upsert": {"points": [{"id": 2, "vector": [0, 0, 0, 0]}]}},
                   {"update_vectors": {"points": [{"id": 1, "vector": [0, 0, 0, 0]}]}}]:
            self.assertError(batch(self.node, c, [GOOD, op]), 400, "zero vector")
            self.assertEqual(state(self.node, c), before)

    def test_query_parameters_and_empty_batch(self):
        c = self.coll()
        for q, word in [("", "completed"), ("?wait=true&ordering=weak", "completed"),
                        ("?wait=false&ordering=medium", "acknowledged"),
                        ("?ordering=strong&consistency=all&timeout=5", "completed")]:
            st, j = batch(self.node, c, [GOOD, GOOD], q)
            self.assertEqual(st, 200, j)
            # wait=false answers Qdrant's "acknowledged" (a node started alone is a cluster of
            # one), once the writes are durable all the same
            self.assertEqual([r["status"] for r in j["result"]], [word, word], j)
        st, j = batch(self.node, c, [])
        self.assertEqual((st, j["result"]), (200, []), j)

    def test_wait_true_makes_every_point_searchable(self):
        c = self.coll()
        n = 300
        pts = [{"id": i, "vector": [float(i), 1.0, float(i % 7), 2.0], "payload": {"i": i}}
               for i in range(n)]
        ops = [{"upsert": {"points": pts[:150]}}, {"upsert": {"points": pts[150:]}},
               {"set_payload": {"payload": {"late": True}, "points": list(range(0, n, 3))}}]
        st, j = batch(self.node, c, ops)
        self.assertEqual(st, 200, j)
        self.assertEqual(self.node.ok("POST", f"/collections/{c}/points/count", {})["count"], n)
        late = self.node.ok("POST", f"/collections/{c}/points/count",
                            {"filter": {"must": [{"key": "late", "match": {"value": True}}]}})
        self.assertEqual(late["count"], len(range(0, n, 3)))
        # the last point, written by the second operation and edited by the third, is the best
        # match for the first axis, in the graph as it stands when the reply came
        hits = self.node.ok("POST", f"/collections/{c}/points/search",
                            {"vector": [1, 0, 0, 0], "limit": 1, "with_payload": True})
        self.assertEqual(hits[0]["id"], n - 1, hits)
        self.assertEqual(hits[0]["payload"], {"i": n - 1})
        hits = self.node.ok("POST", f"/collections/{c}/points/search",
                            {"vector": [1, 0, 0, 0], "limit": 1, "with_payload": True,
                             "filter": {"must": [{"key": "late", "match": {"value": True}}]}})
        self.assertEqual((hits[0]["id"], hits[0]["payload"]), (297, {"i": 297, "late": True}))

    def test_update_vectors_endpoint(self):
        c = self.coll()
        self.node.ok("PUT", f"/collections/{c}/points?wait=true", {"points": [
            {"id": i, "vector": [1, float(i), 0, 0], "payload": {"i": i}} for i in range(1, 21)]})
        # nothing points along the 4th axis yet: after the update, 7 is the best match
        r = self.node.ok("PUT", f"/collections/{c}/points/vectors?wait=true&ordering=weak",
                         {"points": [{"id": 7, "vector": [0, 0, 0, 3]}]})
        self.assertEqual(r["status"], "completed")
        self.assertIsInstance(r["operation_id"], int)
        hits = self.node.ok("POST", f"/collections/{c}/points/search",
                            {"vector": [0, 0, 0, 1], "limit": 1, "with_payload": True,
                             "with_vector": True})
        self.assertEqual(hits[0]["id"], 7, hits)
        self.assertEqual(hits[0]["score"], 3.0)
        self.assertEqual(hits[0]["payload"], {"i": 7})  # the payload is kept
        self.assertEqual(hits[0]["vector"], [0.0, 0.0, 0.0, 3.0])
        exact = self.node.ok("POST", f"/collections/{c}/points/search",
                             {"vector": [0, 0, 0, 1], "limit": 1, "params": {"exact": True}})
        self.assertEqual(exact[0]["id"], 7, exact)
        # the old vector is gone from the index: [1, 7, 0, 0] no longer scores 1 + 7*7
        hits = self.node.ok("POST", f"/collections/{c}/points/search",
                            {"vector": [1, 7, 0, 0], "limit": 3})
        self.assertNotIn(7, [h["id"] for h in hits], hits)
        # the same id twice: the last one given wins; a UUID id works as any other
        u = "5c56c793-69f3-4fbf-87e6-c4bf54c28c26"
        self.node.ok("PUT", f"/collections/{c}/points?wait=true",
                     {"points": [{"id": u, "vector": [1, 1, 1, 1]}]})
        self.node.ok("PUT", f"/collections/{c}/points/vectors?wait=true", {"points": [
            {"id": 8, "vector": [8, 0, 0, 0]}, {"id": u.upper(), "vector": [2, 2, 2, 2]},
            {"id": 8, "vector": [0, 8, 0, 0]}]})
        got = {p["id"]: p["vector"] for p in self.node.ok(
            "POST", f"/collections/{c}/points", {"ids": [8, u], "with_vector": True})}
        self.assertEqual(got, {8: [0.0, 8.0, 0.0, 0.0], u: [2.0, 2.0, 2.0, 2.0]})

        # a missing point is a 404 and nothing is updated, not even the points that exist
        before = state(self.node, c)
        self.assertError(self.node.request("PUT", f"/collections/{c}/points/vectors", {
            "points": [{"id": 1, "vector": [9, 9, 9, 9]}, {"id": 999, "vector": [9, 9, 9, 9]}]}),
            404, "No point with id 999 found")
        self.node.ok("POST", f"/collections/{c}/points/delete?wait=true", {"points": [2]})
        before = state(self.node, c)
        self.assertError(self.node.request("PUT", f"/collections/{c}/points/vectors", {
            "points": [{"id": 2, "vector": [9, 9, 9, 9]}]}), 404, "No point with id 2 found")
        for body, fragment in [
                ({"points": [{"id": 1, "vector": [1, 2, 3]}]}, "expected dim: 4, got 3"),
                ({"points": [{"id": 1}]}, "points[0]: missing field 'vector'"),
                ({"points": [{"vector": [1, 2, 3, 4]}]}, "points[0]: missing field 'id'"),
                ({"points": []}, "no points given"),
                ({}, "missing field 'points'"),
                ({"points": [{"id": 1, "vector": [1, 2, 3, 4]}],
                  "update_filter": {"must": [{"has_id": [1]}]}}, "update_filter")]:
            self.assertError(self.node.request("PUT", f"/collections/{c}/points/vectors", body),
                             400, fragment)
        self.assertEqual(state(self.node, c), before)
        self.assertError(self.node.request("PUT", "/collections/nope/points/vectors",
                                           {"points": [{"id": 1, "vector": [1, 2, 3, 4]}]}), 404)

    def test_single_endpoints_refuse_what_they_do_not_implement(self):
        c = self.coll()
        self.node.ok("PUT", f"/collections/{c}/points?wait=true&ordering=strong",
                     {"points": [{"id": 1, "vector": [1, 2, 3, 4], "payload": {"k": 1}}]})
        before = state(self.node, c)
        p = [{"id": 1, "vector": [4, 3, 2, 1]}]
        for method, path, body, fragment in [
                ("PUT", "points?ordering=fastest", {"points": p}, "query parameter 'ordering'"),
                ("PUT", "points", {"points": p, "update_filter": {"must": [{"has_id": [1]}]}},
                 "'update_filter' is not supported"),
                ("PUT", "points", {"points": p, "update_mode": "update_only"},
                 "'update_mode' is not supported"),
                ("POST", "points/payload", {"payload": {"x": 1}, "points": [1], "key": "a"},
                 "'key' is not supported"),
                ("POST", "points/delete?ordering=x", {"points": [1]}, "ordering")]:
            self.assertError(self.node.request(method, f"/collections/{c}/{path}", body), 400,
                             fragment)
        self.assertEqual(state(self.node, c), before)

    def test_delete_vectors_endpoint(self):
        c = self.coll()
        self.node.ok("PUT", f"/collections/{c}/points?wait=true",
                     {"points": [{"id": 1, "vector": [1, 2, 3, 4], "payload": {"k": 1}}]})
        before = state(self.node, c)
        path = f"/collections/{c}/points/vectors/delete?wait=true"
        for body, fragment in [({"points": [1], "vector": [""]},
                                "vectorless points are not supported yet"),
                               ({"filter": {"must": [{"has_id": [1]}]}, "vector": [""]},
                                "vectorless points are not supported yet"),
                               ({"points": [1], "vector": ["image"]},
                                "Not existing vector name error: image"),
                               ({"points": [1], "vector": []}, "'vector' must be"),
                               ({"vector": [""]}, "expected 'points'")]:
            self.assertError(self.node.request("POST", path, body), 400, fragment)
        self.assertEqual(state(self.node, c), before)


COLL = "bc"


class BatchClusterTest(ClusterCase):
    """The same batches through a cluster of three nodes, replication factor 3 (W 2)."""

    @classmethod
    def setUpClass(cls):
        cls.n1, cls.n2, cls.n3 = cls.start_cluster(3, args=["--replication-factor", "3"])
        cls.n1.create(COLL, DIM, "Dot")
        for n in cls.members:
            wait_until(lambda: n.request("GET", f"/collections/{COLL}")[0] == 200, 30,
                       f"the collection on the node on port {n.port}")

    def test_01_ordered_batch_read_back_at_all(self):
        st, j = batch(self.n1, COLL, ORDERED_OPS, "?wait=true&ordering=strong")
        self.assertEqual(st, 200, j)
        self.assertEqual([r["status"] for r in j["result"]], ["completed"] * len(ORDERED_OPS))
        for n in (self.n2, self.n3):
            self.assertEqual(state(n, COLL, "all"), ORDERED_RESULT)

    def test_02_bad_batches_write_nothing(self):
        before = state(self.n2, COLL, "all")
        for ops, status, fragment in BAD_BATCHES:
            with self.subTest(ops=ops[1]):
                self.assertError(batch(self.n3, COLL, ops), status, fragment)
        for n in self.members:
            self.assertEqual(state(n, COLL, "all"), before)

    def test_03_update_vectors_then_search_elsewhere(self):
        r = self.n2.ok("PUT", f"/collections/{COLL}/points/vectors?wait=true",
                       {"points": [{"id": 3, "vector": [0, 0, 0, 50]}]})
        self.assertEqual(r["status"], "completed")
        for n in self.members:
            hits = n.ok("POST", f"/collections/{COLL}/points/search?consistency=all",
                        {"vector": [0, 0, 0, 1], "limit": 1, "with_payload": True,
                         "with_vector": True})
            self.assertEqual((hits[0]["id"], hits[0]["vector"], hits[0]["payload"]),
                             (3, [0.0, 0.0, 0.0, 50.0], {}), hits)
        self.assertError(self.n3.request("PUT", f"/collections/{COLL}/points/vectors",
                                         {"points": [{"id": 12345, "vector": [1, 1, 1, 1]}]}),
                         404, "No point with id 12345 found")

    def test_04_weak_write_consistency_and_wait_false(self):
        # at W 1 the reads of the batch (update_vectors, the filter) still see its earlier
        # writes: they ask enough replicas to overlap every acknowledged one
        ops = [{"upsert": {"points": [{"id": 50, "vector": [1, 1, 1, 1], "payload": {"g": 5}}]}},
               {"update_vectors": {"points": [{"id": 50, "vector": [5, 0, 0, 5]}]}},
               {"set_payload": {"payload": {"h": 6},
                                "filter": {"must": [{"key": "g", "match": {"value": 5}}]}}}]
        st, j = batch(self.n3, COLL, ops, "?wait=false&consistency=1")
        self.assertEqual(st, 200, j)
        self.assertEqual([r["status"] for r in j["result"]], ["acknowledged"] * 3, j)
        for n in self.members:
            wait_until(lambda: state(n, COLL, "all").get(50) ==
                       ({"g": 5, "h": 6}, [5.0, 0.0, 0.0, 5.0]), 30,
                       f"point 50 through the node on port {n.port}")


if __name__ == "__main__":
    vdtest.main()
