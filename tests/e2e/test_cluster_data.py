"""Points over the ring with real processes: three nodes started with --replication-factor 3, one
collection created without a factor (so RF 3, W 2). Writes through every node are read back at
consistency=all from every node with identical bodies; payload edits through one node are seen
through another; kill -9 of one node under a write load through the other two fails no write
and loses no acknowledged point; deletes and overwrites made while it was down win once it is
back; bad consistency, timeout and write_consistency_factor values are 4xx naming the parameter,
with nothing written.

Every wait polls a condition with a deadline; nothing sleeps for a fixed time to synchronise.
"""
import re
import signal
import threading
import time

import vdtest
from vdtest import ClusterCase, agreed, wait_until

COLL = "pts"
DIM = 4


def vec(i, gen=0):
    return [float(i % 97), float(i // 97), float(gen), 1.0]


def point(i, gen=0, payload=None):
    p = {"id": i, "vector": vec(i, gen)}
    if payload is not None:
        p["payload"] = payload
    return p


def retrieve(node, ids, consistency=None):
    q = f"?consistency={consistency}" if consistency else ""
    return node.ok("POST", f"/collections/{COLL}/points{q}",
                   {"ids": ids, "with_payload": True, "with_vector": True})


def by_id(records):
    return {r["id"]: r for r in records}


class ClusterDataTest(ClusterCase):
    """One cluster for the whole class; tests run in name order and build on each other."""

    @classmethod
    def setUpClass(cls):
        # one HTTP thread: a read that waits for replicas must not hold it (test_07)
        cls.n1, cls.n2, cls.n3 = cls.start_cluster(
            3, args=["--replication-factor", "3", "--http-threads", "1"])
        cls.n1.create(COLL, DIM, "Dot")
        for n in cls.members:
            wait_until(lambda: n.request("GET", f"/collections/{COLL}")[0] == 200, 30,
                       f"the collection on the node on port {n.port}")

    def test_01_factors_from_the_flag(self):
        for n in self.members:
            params = n.ok("GET", f"/collections/{COLL}")["config"]["params"]
            self.assertEqual(params["replication_factor"], 3, params)
            self.assertEqual(params["write_consistency_factor"], 2, params)

    def test_02_writes_through_every_node_read_at_all_everywhere(self):
        ids = []
        for k, n in enumerate(self.members):
            pts = [point(1000 * (k + 1) + j, payload={"via": k, "j": j}) for j in range(25)]
            ids += [p["id"] for p in pts]
            r = n.ok("PUT", f"/collections/{COLL}/points?wait=true", {"points": pts})
            self.assertEqual(r["status"], "completed")
        # the batch form and wait=false (durable on W replicas all the same)
        r = self.n2.ok("PUT", f"/collections/{COLL}/points?wait=false",
                       {"batch": {"ids": [5000, 5001], "vectors": [vec(5000), vec(5001)],
                                  "payloads": [{"b": 1}, None]}})
        self.assertEqual(r["status"], "acknowledged")
        ids += [5000, 5001]
        bodies = []
        for n in self.members:
            got = retrieve(n, ids, "all")
            self.assertEqual(sorted(r["id"] for r in got), sorted(ids))
            bodies.append(sorted(got, key=lambda r: r["id"]))
            for r in got:
                self.assertEqual(r["vector"], vec(r["id"]), r)
        self.assertEqual(bodies[0], bodies[1])
        self.assertEqual(bodies[0], bodies[2])
        one = [n.ok("GET", f"/collections/{COLL}/points/2003?consistency=all")
               for n in self.members]
        self.assertEqual(one[0], one[1])
        self.assertEqual(one[0], one[2])
        self.assertEqual(one[0]["payload"], {"via": 1, "j": 3})
        st, j = self.n3.request("GET", f"/collections/{COLL}/points/999999?consistency=all")
        self.assertEqual(st, 404, j)

    def test_03_payload_edits_seen_through_another_node(self):
        ids = [1000, 1001, 1002]
        self.n1.ok("POST", f"/collections/{COLL}/points/payload?wait=true",
                   {"payload": {"color": "red"}, "points": ids})
        for r in retrieve(self.n2, ids, "all"):
            self.assertEqual(r["payload"]["color"], "red", r)
            self.assertEqual(r["payload"]["via"], 0, r)
            self.assertEqual(r["vector"], vec(r["id"]), r)  # the vector is kept
        self.n2.ok("POST", f"/collections/{COLL}/points/payload/delete?wait=true",
                   {"keys": ["via"], "points": ids})
        for r in retrieve(self.n3, ids, "all"):
            self.assertEqual(r["payload"], {"j": r["id"] - 1000, "color": "red"}, r)
        self.n3.ok("PUT", f"/collections/{COLL}/points/payload?wait=true",
                   {"payload": {"only": True}, "points": [1000]})
        self.n1.ok("POST", f"/collections/{COLL}/points/payload/clear?wait=true",
                   {"points": [1001]})
        got = by_id(retrieve(self.n2, ids, "all"))
        self.assertEqual(got[1000]["payload"], {"only": True})
        self.assertEqual(got[1001]["payload"], {})  # as a single node clears it
        self.assertEqual(got[1002]["payload"], {"j": 2, "color": "red"})
        # an edit of an absent id creates nothing
        self.n1.ok("POST", f"/collections/{COLL}/points/payload?wait=true",
                   {"payload": {"x": 1}, "points": [777777]})
        self.assertEqual(retrieve(self.n3, [777777], "all"), [])
        # a delete through one node is gone through the others
        self.n2.ok("POST", f"/collections/{COLL}/points/delete?wait=true", {"points": [1002]})
        for n in self.members:
            self.assertEqual(retrieve(n, [1002], "all"), [])

    def test_04_bad_values_are_refused_and_write_nothing(self):
        body = {"points": [point(424242)]}
        for bad in ("0", "-1", "abc", "4", "1.5"):
            for n in self.members:
                self.assertError(n.request("PUT", f"/collections/{COLL}/points?consistency={bad}",
                                           body), 400, "'consistency'")
                self.assertError(n.request("POST", f"/collections/{COLL}/points?consistency={bad}",
                                           {"ids": [1000]}), 400, "'consistency'")
                self.assertError(n.request(
                    "POST", f"/collections/{COLL}/points/delete?consistency={bad}",
                    {"points": [1000]}), 400, "'consistency'")
                self.assertError(n.request(
                    "POST", f"/collections/{COLL}/points/payload?consistency={bad}",
                    {"payload": {"bad": 1}, "points": [1000]}), 400, "'consistency'")
        for bad in ("0", "-1", "abc"):
            self.assertError(self.n1.request("PUT", f"/collections/{COLL}/points?timeout={bad}",
                                             body), 400, "'timeout'")
        self.assertEqual(retrieve(self.n2, [424242], "all"), [])
        r = by_id(retrieve(self.n3, [1000], "all"))[1000]
        self.assertNotIn("bad", r["payload"] or {})
        # the good values: a number, quorum, majority, all, and a timeout (the read at a level
        # that overlaps every write: R + W > RF)
        for good in ("1", "2", "3", "quorum", "majority", "all"):
            self.n2.ok("PUT", f"/collections/{COLL}/points?consistency={good}&timeout=5", body)
            self.assertEqual(len(retrieve(self.n1, [424242], "all")), 1)
            if good != "1":
                self.assertEqual(len(retrieve(self.n3, [424242], good)), 1)
        # write_consistency_factor and replication_factor at creation
        for extra, word in (({"write_consistency_factor": 0}, "write_consistency_factor"),
                            ({"write_consistency_factor": 4}, "write_consistency_factor"),
                            ({"replication_factor": 2, "write_consistency_factor": 3},
                             "write_consistency_factor"),
                            ({"replication_factor": 0}, "replication_factor"),
                            ({"replication_factor": 4}, "replication_factor")):
            b = {"vectors": {"size": DIM, "distance": "Dot"}}
            b.update(extra)
            self.assertError(self.n2.request("PUT", "/collections/refused", b), (400, 422), word)
        for n in self.members:
            st, j = n.request("GET", "/collections/refused/exists")
            self.assertEqual((st, j["result"]["exists"]), (200, False), j)
        self.assertTrue(self.n3.ok("PUT", "/collections/wcf3",
                                   {"vectors": {"size": DIM, "distance": "Dot"},
                                    "write_consistency_factor": 3}))
        for n in self.members:
            wait_until(lambda: n.request("GET", "/collections/wcf3")[0] == 200, 30, "wcf3")
            params = n.ok("GET", "/collections/wcf3")["config"]["params"]
            self.assertEqual((params["replication_factor"], params["write_consistency_factor"]),
                             (3, 3))

    def test_05_kill9_under_load_then_it_returns(self):
        acked = {}  # id -> generation acknowledged
        errors = []
        batches = [0, 0]
        stop = threading.Event()
        lock = threading.Lock()

        def writer(w, node):
            base = 100000 * (w + 1)
            b = 0
            while not stop.is_set():
                pts = [point(base + b * 10 + j) for j in range(10)]
                try:
                    st, j = node.request("PUT", f"/collections/{COLL}/points?wait=true",
                                         {"points": pts}, timeout=30)
                except OSError as e:
                    st, j = None, str(e)
                with lock:
                    if st == 200:
                        for p in pts:
                            acked[p["id"]] = 0
                        batches[w] += 1
                    else:
                        errors.append((w, b, st, j))
                b += 1

        threads = [threading.Thread(target=writer, args=(w, n))
                   for w, n in enumerate((self.n1, self.n2))]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: min(batches) >= 5, 60, "writes under way through two nodes")
            self.n3.kill9()
            after = list(batches)
            wait_until(lambda: min(b - a for a, b in zip(after, batches)) >= 15 or errors, 120,
                       "writes to go on with one node killed")
        finally:
            stop.set()
            for t in threads:
                t.join()
        self.assertEqual(errors, [], "writes failed with one node of three killed")
        ids = sorted(acked)
        got = by_id(retrieve(self.n1, ids, "2"))
        self.assertEqual(sorted(got), ids, "acknowledged points lost")
        for i in ids:
            self.assertEqual(got[i]["vector"], vec(i), i)

        # while it is down: deletes and overwrites at the collection's W (2 of the 3)
        deleted = ids[::7]
        overwritten = ids[3::7]
        self.n1.ok("POST", f"/collections/{COLL}/points/delete?wait=true", {"points": deleted})
        self.n2.ok("PUT", f"/collections/{COLL}/points?wait=true",
                   {"points": [point(i, gen=1) for i in overwritten]})
        self.n2.ok("POST", f"/collections/{COLL}/points/payload?wait=true",
                   {"payload": {"late": True}, "points": overwritten[:5]})

        # all three cannot answer: a 503 naming the numbers, at once or by the deadline given
        self.assertError(self.n1.request(
            "PUT", f"/collections/{COLL}/points?wait=true&consistency=all&timeout=2",
            {"points": [point(999001)]}), 503, "write needs 3 of 3 replicas")
        self.assertError(self.n2.request(
            "POST", f"/collections/{COLL}/points?consistency=all&timeout=2", {"ids": ids[:3]}),
            503, "needs 3 of 3 replicas")

        self.n3.start()
        wait_until(lambda: agreed(self.members, 3), 60, "the node back as a voter")
        gone = set(deleted)
        for n in self.members:
            got = by_id(retrieve(n, ids, "all"))
            self.assertEqual(sorted(got), sorted(set(ids) - gone))
            for i in overwritten:
                self.assertEqual(got[i]["vector"], vec(i, gen=1), i)
            for i in overwritten[:5]:
                self.assertEqual(got[i]["payload"], {"late": True}, i)

    def test_05b_search_scroll_count_through_every_node(self):
        name = "srch"
        self.assertTrue(self.n1.ok("PUT", f"/collections/{name}",
                                   {"vectors": {"size": DIM, "distance": "Euclid"},
                                    "replication_factor": 1}))
        for n in self.members:
            wait_until(lambda: n.request("GET", f"/collections/{name}")[0] == 200, 30, name)
        pts = [point(i, payload={"odd": i % 2}) for i in range(300)]
        self.n2.ok("PUT", f"/collections/{name}/points?wait=true", {"points": pts})
        q = [3.0, 1.0, 0.0, 1.0]
        want = sorted(range(300), key=lambda i: (sum((a - b) ** 2 for a, b in
                                                      zip(vec(i), q)), i))[:10]
        odd = {"must": [{"key": "odd", "match": {"value": 1}}]}
        for n in self.members:
            res = n.ok("POST", f"/collections/{name}/points/search",
                       {"vector": q, "limit": 10, "params": {"exact": True}})
            self.assertEqual([r["id"] for r in res][:3], want[:3], f"node on {n.port}")
            self.assertEqual(n.ok("POST", f"/collections/{name}/points/count",
                                  {"exact": True})["count"], 300)
            self.assertEqual(n.ok("POST", f"/collections/{name}/points/count",
                                  {"filter": odd})["count"], 150)
            seen, off = [], None
            while True:
                page = n.ok("POST", f"/collections/{name}/points/scroll",
                            {"limit": 64, "offset": off})
                seen += [r["id"] for r in page["points"]]
                off = page["next_page_offset"]
                if off is None:
                    break
            self.assertEqual(seen, list(range(300)), f"node on {n.port}")
        # a delete and a payload edit by filter reach every replica, wherever the points live
        self.n3.ok("POST", f"/collections/{name}/points/payload?wait=true",
                   {"payload": {"tag": "x"}, "filter": odd})
        self.n1.ok("POST", f"/collections/{name}/points/delete?wait=true",
                   {"filter": {"must_not": [{"key": "odd", "match": {"value": 1}}]}})
        for n in self.members:
            self.assertEqual(n.ok("POST", f"/collections/{name}/points/count", {})["count"], 150)
            got = n.ok("POST", f"/collections/{name}/points", {"ids": list(range(10))})
            self.assertEqual(sorted(r["id"] for r in got), [1, 3, 5, 7, 9])
            self.assertTrue(all(r["payload"]["tag"] == "x" for r in got), got)

    def test_06_write_at_all_right_after_create(self):
        # the replicas that have not applied the new collection yet are asked again until
        # they have, within the deadline, instead of counting as refusals
        for k, n in enumerate(self.members):
            name = f"fresh{k}"
            self.assertTrue(n.ok("PUT", f"/collections/{name}",
                                 {"vectors": {"size": DIM, "distance": "Dot"}}))
            n.ok("PUT", f"/collections/{name}/points?wait=true&consistency=all",
                 {"points": [point(i) for i in range(5)]})
            for m in self.members:
                got = m.ok("POST", f"/collections/{name}/points?consistency=all",
                           {"ids": list(range(5))})
                self.assertEqual(sorted(r["id"] for r in got), list(range(5)))

    def test_07_a_waiting_read_holds_no_thread(self):
        # n3 silent (no reset, no answer): reads at all wait for it until their deadline, while
        # the node's single HTTP thread goes on serving others
        slow = {"ids": [1000]}
        paths = [f"/collections/{COLL}/points?consistency=all&timeout=3",
                 f"/collections/{COLL}/points/scroll?consistency=all&timeout=3",
                 f"/collections/{COLL}/points/count?consistency=all&timeout=3",
                 f"/collections/{COLL}/points/search?consistency=all&timeout=3"]
        bodies = [slow, {}, {}, {"vector": vec(1), "limit": 1}]
        results = []

        def ask(path, body):
            results.append(self.n1.request("POST", path, body, timeout=30))

        def in_flight():
            st, text = self.n1.request("GET", "/metrics", raw=True, timeout=30)
            m = re.search(rb"^vectord_http_requests_in_flight (\d+)", text, re.M)
            return m and int(m.group(1)) >= len(paths) + 1  # the waiting reads and this one

        self.n3.proc.send_signal(signal.SIGSTOP)
        try:
            threads = [threading.Thread(target=ask, args=pb) for pb in zip(paths, bodies)]
            for t in threads:
                t.start()
            wait_until(in_flight, 2.5, "the waiting reads and /metrics in flight at once")
            t0 = time.monotonic()
            st, _ = self.n1.request("GET", "/healthz", raw=True)
            self.assertEqual(st, 200)
            self.assertLess(time.monotonic() - t0, 1.5)
            for t in threads:
                t.join()
        finally:
            self.n3.proc.send_signal(signal.SIGCONT)
        for st, j in results:
            self.assertError((st, j), 503, "3 of 3")


if __name__ == "__main__":
    vdtest.main()
