"""Membership changes while collections hold points, over real processes: POST /cluster/nodes and
DELETE /cluster/nodes/{id} answer 409 naming the collection, a node started with --join is
refused and exits with that message, and the membership stays as it was; before any point, and
once the collection is deleted, the same changes go through. Also: the hint series in /metrics
and needs_repair in GET /cluster.

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


if __name__ == "__main__":
    vdtest.main()
