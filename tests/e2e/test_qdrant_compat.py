"""Answers whose exact shape or text Qdrant's clients and Qdrant's own REST tests rely on.

Each expectation is written from Qdrant 1.19's OpenAPI document and REST test suite: a change
here breaks a Qdrant client somewhere, so a failure is a compatibility bug, not a test to adjust.
"""
import datetime

import vdtest

COUNTRIES = [
    {"id": 1, "vector": [0.05, 0.61, 0.76, 0.74], "payload": {
        "country": {"name": "Germany", "capital": "Berlin", "code": "DE",
                    "cities": [{"name": "Berlin", "population": 3.7, "sightseeing": ["Zoo"]},
                               {"name": "Munich", "population": 1.5}]}}},
    {"id": 2, "vector": [0.19, 0.81, 0.75, 0.11], "payload": {
        "country": {"name": "Japan", "capital": "Tokyo", "code": "JP",
                    "cities": [{"name": "Tokyo", "population": 9.3},
                               {"name": "Osaka", "population": 2.7}]}}},
    {"id": 3, "vector": [0.36, 0.55, 0.47, 0.94], "payload": {
        "country": {"name": "Nauru", "capital": None, "cities": []}, "rank": 5}},
]


class QdrantCompatTest(vdtest.NodeTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.node.create("geo", 4, "Dot")
        cls.node.ok("PUT", "/collections/geo/points?wait=true", {"points": COUNTRIES})

    def payloads(self, with_payload):
        """id -> payload from scroll, retrieve, search and query alike (all must agree)."""
        n = self.node
        got = {}
        scroll = n.ok("POST", "/collections/geo/points/scroll",
                      {"limit": 10, "with_payload": with_payload})["points"]
        got["scroll"] = {p["id"]: p["payload"] for p in scroll}
        ret = n.ok("POST", "/collections/geo/points", {"ids": [1, 2, 3],
                                                       "with_payload": with_payload})
        got["retrieve"] = {p["id"]: p["payload"] for p in ret}
        res = n.ok("POST", "/collections/geo/points/search",
                   {"vector": [1, 1, 1, 1], "limit": 10, "with_payload": with_payload})
        got["search"] = {p["id"]: p["payload"] for p in res}
        res = n.ok("POST", "/collections/geo/points/query",
                   {"query": [1, 1, 1, 1], "limit": 10, "with_payload": with_payload})["points"]
        got["query"] = {p["id"]: p["payload"] for p in res}
        first = got["scroll"]
        for how, v in got.items():
            self.assertEqual(v, first, f"{how} differs from scroll for {with_payload}")
        return first

    # 1. DELETE of a missing collection
    def test_delete_missing_collection_is_false(self):
        n = self.node
        st, j = n.request("DELETE", "/collections/never_created")
        self.assertEqual(st, 200, j)
        self.assertIs(j["result"], False)
        self.assertEqual(j["status"], "ok")
        n.create("once", 4, "Dot")
        self.assertIs(n.ok("DELETE", "/collections/once"), True)
        self.assertIs(n.ok("DELETE", "/collections/once"), False)
        # a bad name is still an error, not a quiet false
        st, j = n.request("DELETE", "/collections/" + "x" * 256)
        self.assertIn(st, (400, 404, 422), j)
        self.assertIn("error", j["status"])

    # 4. with_payload include / exclude over nested keys
    def test_include_nested_keys_keeps_structure(self):
        p = self.payloads({"include": ["country.name", "country.capital"]})
        self.assertEqual(p[1], {"country": {"name": "Germany", "capital": "Berlin"}})
        self.assertEqual(p[2], {"country": {"name": "Japan", "capital": "Tokyo"}})
        self.assertEqual(p[3], {"country": {"name": "Nauru", "capital": None}})
        # the list form is an include
        self.assertEqual(self.payloads(["country.name", "country.capital"]), p)

    def test_include_over_arrays_of_objects(self):
        # a plain name does not reach into the elements of an array: the array comes back empty
        p = self.payloads({"include": ["country.cities.population"]})
        self.assertEqual(p[1], {"country": {"cities": []}})
        self.assertEqual(p[3], {"country": {"cities": []}})
        # with [] it does, keeping each element with just that key
        p = self.payloads({"include": ["country.cities[].population"]})
        self.assertEqual(p[1], {"country": {"cities": [{"population": 3.7},
                                                       {"population": 1.5}]}})
        self.assertEqual(p[2], {"country": {"cities": [{"population": 9.3},
                                                       {"population": 2.7}]}})
        # a whole subtree, and a top-level key beside it
        p = self.payloads({"include": ["country.cities", "rank"]})
        self.assertEqual(p[1], {"country": {"cities": COUNTRIES[0]["payload"]["country"]["cities"]}})
        self.assertEqual(p[3], {"country": {"cities": []}, "rank": 5})
        # a key that is not there selects nothing
        self.assertEqual(self.payloads({"include": ["nothing.here"]}), {1: {}, 2: {}, 3: {}})

    def test_exclude_nested_keys(self):
        p = self.payloads({"exclude": ["country.cities", "country.code"]})
        self.assertEqual(p[1], {"country": {"name": "Germany", "capital": "Berlin"}})
        self.assertEqual(p[3], {"country": {"name": "Nauru", "capital": None}, "rank": 5})
        # a plain name does not reach into array elements; [] does
        p = self.payloads({"exclude": ["country.cities.name"]})
        self.assertEqual(p[1], COUNTRIES[0]["payload"])
        p = self.payloads({"exclude": ["country.cities[].name", "country.cities[].sightseeing",
                                       "country.name", "country.capital", "country.code"]})
        self.assertEqual(p[2], {"country": {"cities": [{"population": 9.3},
                                                       {"population": 2.7}]}})

    def test_bad_payload_selector(self):
        n = self.node
        for sel in ({"include": ["a..b"]}, ["ok", "[0]"], {"exclude": ["a["]}, {"include": 5}):
            with self.subTest(sel=sel):
                self.assertError(n.request("POST", "/collections/geo/points/scroll",
                                           {"with_payload": sel}), 400)

    # 5. a plain a.b does not fan out over an array of objects
    def test_plain_key_does_not_fan_out(self):
        n = self.node

        def count(key, cond):
            return n.ok("POST", "/collections/geo/points/count",
                        {"filter": {"must": [dict(key=key, **cond)]}})["count"]
        self.assertEqual(count("country.cities.population", {"range": {"gte": 9}}), 0)
        self.assertEqual(count("country.cities[].population", {"range": {"gte": 9}}), 1)
        self.assertEqual(count("country.cities.name", {"match": {"value": "Tokyo"}}), 0)
        self.assertEqual(count("country.cities[].name", {"match": {"value": "Tokyo"}}), 1)
        self.assertEqual(count("country.cities[].sightseeing", {"match": {"value": "Zoo"}}), 1)
        self.assertEqual(count("country.name", {"match": {"value": "Japan"}}), 1)
        # the same holds with a payload index on either key
        n.ok("PUT", "/collections/geo/index?wait=true",
             {"field_name": "country.cities.population", "field_schema": "float"})
        n.ok("PUT", "/collections/geo/index?wait=true",
             {"field_name": "country.cities[].population", "field_schema": "float"})
        self.assertEqual(count("country.cities.population", {"range": {"gte": 9}}), 0)
        self.assertEqual(count("country.cities[].population", {"range": {"gte": 9}}), 1)
        res = n.ok("POST", "/collections/geo/points/search",
                   {"vector": [1, 1, 1, 1], "limit": 10, "filter": {"must": [
                       {"key": "country.cities.population", "range": {"gte": 0}}]}})
        self.assertEqual(res, [])

    # 6. error texts
    def test_vector_dimension_error_text(self):
        n = self.node
        st, j = n.request("PUT", "/collections/geo/points?wait=true",
                          {"points": [{"id": 9, "vector": [0.1, 0.2, 0.3]}]})
        self.assertEqual(st, 400, j)
        self.assertIn("Vector dimension error: expected dim: 4, got 3", j["status"]["error"])
        for path, body in (("/points/search", {"vector": [1, 2, 3], "limit": 1}),
                           ("/points/query", {"query": [1, 2, 3, 4, 5], "limit": 1}),
                           ("/points?wait=true", {"batch": {"ids": [9], "vectors": [[1, 2]]}})):
            with self.subTest(path=path):
                method = "PUT" if path.startswith("/points?") else "POST"
                st, j = n.request(method, "/collections/geo" + path, body)
                self.assertEqual(st, 400, j)
                self.assertRegex(j["status"]["error"],
                                 r"Vector dimension error: expected dim: 4, got \d+")

    def test_validation_error_texts(self):
        n = self.node
        st, j = n.request("PUT", "/collections/huge",
                          {"vectors": {"size": 65537, "distance": "Dot"}})
        self.assertEqual(st, 422, j)
        self.assertEqual(j["status"]["error"], "Validation error in JSON body: "
                         "[vectors.size: value 65537 invalid, must be from 1 to 65536]")
        st, j = n.request("PUT", "/collections/huge", {"vectors": {"size": 4, "distance": "Dot"},
                                                        "hnsw_config": {"ef_construct": 0}})
        self.assertEqual(st, 422, j)
        self.assertIn("Validation error", j["status"]["error"])
        self.assertIn("hnsw_config.ef_construct", j["status"]["error"])
        self.assertIs(n.ok("GET", "/collections/huge/exists")["exists"], False)

    def test_request_texts_matched_by_qdrant_tests(self):
        n = self.node
        st, j = n.request("POST", "/collections/geo/points/query",
                          {"query": [1, 1, 1, 1], "limit": 0})
        self.assertEqual(st, 422, j)
        self.assertEqual(j["status"]["error"], "Validation error in JSON body: "
                         "[internal.limit: value 0 invalid, must be 1 or larger]")
        st, j = n.request("POST", "/collections/geo/points/search",
                          {"vector": [1, 1, 1, 1], "limit": 0})
        self.assertEqual(st, 422, j)
        self.assertIn("Validation error in JSON body: [search_request.limit: value 0 invalid",
                      j["status"]["error"])
        st, j = n.request("POST", "/collections/geo/points/query",
                          {"query": [1, 1, 1, 1], "limit": 3, "params": {"hnsw_ef": 0}})
        self.assertEqual(st, 422, j)
        self.assertIn("Validation error", j["status"]["error"])
        self.assertIn("hnsw_ef", j["status"]["error"])
        st, j = n.request("POST", "/collections/geo/points/query", {"query": 424242, "limit": 3})
        self.assertEqual(st, 404, j)
        self.assertEqual(j["status"]["error"], "Not found: No point with id 424242 found")
        st, j = n.request("POST", "/collections/geo/points/query",
                          {"query": [1, 1, 1, 1], "limit": 3, "filter": {"must": [{"key": "city"}]}})
        self.assertEqual(st, 422, j)
        self.assertIn("Validation error in JSON body", j["status"]["error"])
        self.assertIn("At least one field condition must be specified", j["status"]["error"])

    def test_unsupported_parts_are_refused(self):
        """What vectord does not implement and would change results is a 400 naming it, and
        nothing is created; an empty or null form of it is accepted as Qdrant accepts it."""
        n = self.node
        cases = [
            ({"vectors": {"size": 4, "distance": "Dot"}, "sparse_vectors": {"text": {}}},
             "'sparse_vectors' is not supported"),
            ({"vectors": {"size": 4, "distance": "Dot",
                          "multivector_config": {"comparator": "max_sim"}}},
             "'vectors.multivector_config' is not supported"),
        ]
        for body, text in cases:
            st, j = n.request("PUT", "/collections/refused", body)
            self.assertEqual(st, 400, j)
            self.assertIn(text, j["status"]["error"])
            self.assertIs(n.ok("GET", "/collections/refused/exists")["exists"], False)
        for extra in ({"sparse_vectors": {}}, {"sparse_vectors": None}):
            body = {"vectors": {"size": 4, "distance": "Dot"}}
            body.update(extra)
            self.assertIs(n.ok("PUT", "/collections/accepted", body), True)
            self.assertIs(n.ok("DELETE", "/collections/accepted"), True)
        st, j = n.request("POST", "/collections/geo/points/scroll", {"order_by": "city"})
        self.assertEqual(st, 400, j)
        self.assertIn("'order_by' is not supported", j["status"]["error"])
        self.assertIn("points", n.ok("POST", "/collections/geo/points/scroll", {"order_by": None}))

    # 7. service endpoints
    def test_root(self):
        st, j = self.node.request("GET", "/")
        self.assertEqual(st, 200, j)
        self.assertEqual(set(j), {"title", "version", "commit", "vectord_version"})
        self.assertEqual(j["title"], "vectord")
        # the Qdrant API version followed, which Qdrant's clients compare with their own
        self.assertRegex(j["version"], r"^1\.19\.\d+$")
        self.assertRegex(j["commit"], r"^([0-9a-f]{40}|unknown)$")
        self.assertRegex(j["vectord_version"], r"^\d+\.\d+\.\d+")

    def test_health_texts(self):
        for path, text in (("/healthz", b"healthz check passed"),
                           ("/livez", b"healthz check passed"),
                           ("/readyz", b"all shards are ready")):
            with self.subTest(path=path):
                st, body = self.node.request("GET", path, raw=True)
                self.assertEqual((st, body), (200, text))

    def test_cluster_consensus_status(self):
        r = self.node.ok("GET", "/cluster")
        for k in ("status", "peer_id", "peers", "raft_info", "consensus_thread_status",
                  "message_send_failures"):
            self.assertIn(k, r)
        for k in ("term", "commit", "pending_operations", "is_voter"):
            self.assertIn(k, r["raft_info"])
        cts = r["consensus_thread_status"]
        self.assertEqual(cts["consensus_thread_status"], "working")
        self.assertRegex(cts["last_update"],
                         r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
        when = datetime.datetime.fromisoformat(cts["last_update"].replace("Z", "+00:00"))
        age = datetime.datetime.now(datetime.timezone.utc) - when
        # refreshed by the cluster loop while it runs
        self.assertLess(abs(age.total_seconds()), 60, cts)


if __name__ == "__main__":
    vdtest.main()
