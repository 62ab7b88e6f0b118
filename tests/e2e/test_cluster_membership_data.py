"""Membership changes while collections hold points, over real processes: POST /cluster/nodes and
DELETE /cluster/nodes/{id} answer 409 naming the collection, a node started with --join is
refused and exits with that message, and the membership stays as it was; before any point, and
once the collection is deleted, the same changes go through. Also hinted handoff seen from
outside: a stopped node's hints pending in /metrics on the coordinator, drained once it returns,
after which it alone serves every point at consistency=1.

Every wait polls a condition with a deadline; nothing sleeps for a fixed time to synchronise.
"""
import unittest

import vdtest
from vdtest import ClusterCase, agreed, info, wait_until

REFUSAL_ADD = "cannot add a node while collection 'docs' holds points"
REFUSAL_REMOVE = "cannot remove a node while collection 'docs' holds points"


def upsert(node, n=20):
    pts = [{"id": i, "vector": [1.0 + i, 2.0, 3.0, 4.0], "payload": {"i": i}} for i in range(n)]
    node.ok("PUT", "/collections/docs/points?wait=true", {"points": pts})


def member_ids(node):
    return sorted(m["id"] for m in info(node)["nodes"])


def blocked_by(node):
    r = info(node)
    return r and r["membership_changes"]["blocked_by"]


def assert_join_refused(testcase, join):
    """A node started with --join to member `join` is refused and exits 1 with the message."""
    n = type(testcase).make(join=join)
    n.start(wait=False)
    wait_until(lambda: n.proc.poll() is not None, 30, "the refused --join node to exit")
    testcase.assertEqual(n.proc.returncode, 1, n.read_log())
    testcase.assertIn(REFUSAL_ADD, n.read_log())
    n.stop()


def metrics(node):
    st, body = node.request("GET", "/metrics", raw=True)
    assert st == 200, st
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


class OneNodeWithPoints(ClusterCase):
    """A one-node cluster whose collection holds points: neither an added node nor a --join."""

    @classmethod
    def setUpClass(cls):
        (cls.n1,) = cls.start_cluster(1)

    def test_1_metrics_and_status_before_points(self):
        m = metrics(self.n1)
        for name in ("vectord_hints_replayed_total", "vectord_hints_expired_total",
                     "vectord_hints_dropped_total"):
            self.assertEqual(m.get(name), 0.0, name)
        r = info(self.n1)
        self.assertEqual(r["membership_changes"], {"allowed": True, "blocked_by": None})
        self.assertFalse(r["nodes"][0]["needs_repair"])

    def test_2_refused_while_points(self):
        cls = type(self)
        self.n1.create("docs", 4, "Dot")
        upsert(self.n1)
        before = member_ids(self.n1)
        # a fresh node, alone: asked to be added, refused with the reason
        n2 = cls.make().start()
        self.assertError(self.n1.request("POST", "/cluster/nodes",
                                         {"address": f"127.0.0.1:{n2.cluster_port}"},
                                         timeout=60), 409, REFUSAL_ADD)
        wait_until(lambda: blocked_by(self.n1) == "docs", 10, "GET /cluster to say why")
        self.assertFalse(info(self.n1)["membership_changes"]["allowed"])
        # a node started with --join exits with the message
        assert_join_refused(self, self.n1)
        # nothing changed: one member here, n2 still alone in its own cluster
        self.assertEqual(member_ids(self.n1), before)
        self.assertEqual(len(member_ids(n2)), 1)
        self.assertNotEqual(member_ids(n2), before)
        self.assertEqual(self.n1.ok("POST", "/collections/docs/points/count",
                                    {"exact": True})["count"], 20)
        # a bad id is still a 400, an unknown one still a 404
        self.assertError(self.n1.request("DELETE", "/cluster/nodes/abc"), 400)


class TwoNodes(ClusterCase):
    """Two members formed before any point: removal and addition refused once points exist,
    through either node; allowed again once the collection is deleted."""

    @classmethod
    def setUpClass(cls):
        cls.n1, cls.n2 = cls.start_cluster(2)

    def test_1_refused_then_allowed(self):
        cls = type(self)
        self.n1.create("docs", 4, "Dot", replication_factor=2)
        upsert(self.n1)
        # the flag reaches every member through the state machine
        for n in (self.n1, self.n2):
            wait_until(lambda n=n: blocked_by(n) == "docs", 30, f"the flag on {n.port}")
        ids = member_ids(self.n1)
        n3 = cls.make().start()
        for asked in (self.n1, self.n2):
            for victim in ids:
                self.assertError(asked.request("DELETE", f"/cluster/nodes/{victim}", timeout=60),
                                 409, REFUSAL_REMOVE)
            self.assertError(asked.request("POST", "/cluster/nodes",
                                           {"address": f"127.0.0.1:{n3.cluster_port}"},
                                           timeout=60), 409, REFUSAL_ADD)
        assert_join_refused(self, self.n2)
        for n in (self.n1, self.n2):
            self.assertEqual(member_ids(n), ids)
        self.assertTrue(agreed([self.n1, self.n2], 2))
        # deleting the collection lifts the refusal
        self.n1.ok("DELETE", "/collections/docs")
        for n in (self.n1, self.n2):
            wait_until(lambda n=n: info(n)["membership_changes"]["allowed"], 30,
                       f"membership changes allowed again on {n.port}")
        self.n2.ok("POST", "/cluster/nodes", {"address": f"127.0.0.1:{n3.cluster_port}"},
                   timeout=60)
        wait_until(lambda: agreed([self.n1, self.n2, n3], 3), 60, "three voters")


class HintsDrain(ClusterCase):
    """Three nodes at replication factor 3; one stops, writes go on at W 2 through another, whose
    hints for it drain (pending back to 0, replayed counted) once it returns."""

    @classmethod
    def setUpClass(cls):
        cls.n1, cls.n2, cls.n3 = cls.start_cluster(3)

    def test_1_hints_drain_to_the_returning_node(self):
        n1, n2, n3 = self.n1, self.n2, self.n3
        n1.create("hinted", 4, "Dot", replication_factor=3)
        for n in (n1, n2, n3):
            wait_until(lambda n=n: n.request("GET", "/collections/hinted")[0] == 200, 30,
                       "the collection on every node")
        id3 = info(n3)["peer_id"]
        gauge = f'vectord_hints_pending{{target="{id3}"}}'
        self.assertEqual(metrics(n1).get(gauge, 0.0), 0.0)
        self.assertEqual(n3.stop(), 0)
        ids = list(range(1, 51))
        pts = [{"id": i, "vector": [float(i), 1.0, 2.0, 3.0]} for i in ids]
        r = n1.ok("PUT", "/collections/hinted/points?wait=true", {"points": pts}, timeout=60)
        self.assertEqual(r["status"], "completed")
        wait_until(lambda: metrics(n1).get(gauge) == len(ids), 30,
                   "a hint pending on node 1 for each point node 3 missed")
        replayed = metrics(n1)["vectord_hints_replayed_total"]
        n3.start()
        wait_until(lambda: agreed([n1, n2, n3], 3), 60, "node 3 back as a voter")
        wait_until(lambda: metrics(n1).get(gauge) == 0.0, 60, "node 1's hints for node 3 drained")
        m = metrics(n1)
        self.assertGreaterEqual(m["vectord_hints_replayed_total"] - replayed, len(ids))
        self.assertEqual(m["vectord_hints_expired_total"], 0.0)
        self.assertFalse(next(x for x in info(n1)["nodes"] if x["id"] == id3)["needs_repair"])
        # node 3 alone: it holds every point it missed
        self.assertEqual(n1.stop(), 0)
        self.assertEqual(n2.stop(), 0)
        got = n3.ok("POST", "/collections/hinted/points?consistency=1",
                    {"ids": ids, "with_vector": True}, timeout=60)
        self.assertEqual(sorted(p["id"] for p in got), ids)
        for p in got:
            self.assertEqual(p["vector"], [float(p["id"]), 1.0, 2.0, 3.0])


if __name__ == "__main__":
    vdtest.main()
