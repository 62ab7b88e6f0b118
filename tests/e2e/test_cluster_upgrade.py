"""Upgrading a cluster whose nodes were written before points were replicated.

data/local-writes-3node.tar.gz holds the data directories of three nodes (127.0.0.31-33, REST
port 16333, cluster port 16335) written by the last vectord that kept every point on the node it
was written through: collections `rf1` (replication factor 1, Dot) and `rf3` (replication factor
3, Cosine); through node i (1..3), points 1000*i + k for k < 100 in both, payload {"node": i,
"k": k}, vector [k % 7 + 1, i, k % 3 + 0.5, 2]; then in `rf3` point 1000*i + 99 deleted and point
1000*i overwritten with vector [9, 9, 9, 9] and payload {"node": i, "k": 0, "v": 2}.

Started on those directories, every node places what it holds on the ring (GET /cluster shows
`points_placement` done) and drops its copies of points it is no replica of, so each node's
store holds only what the ring gives it (the local points_count of GET /collections/{c}/cluster,
summed over the nodes, is the replication factor times the points: 1 x 300 for `rf1`, where
every node held 100 before and owns about a third, and 3 x 297 for `rf3`); after which every
point is found through every node at consistency `all` with its payload and vector, the deleted
ones stay deleted, and counts are exact.
"""
import math
import os
import shutil
import tarfile
import tempfile
import unittest

import vdtest
from vdtest import agreed, info, stop_nodes, wait_until

HOSTS = ["127.0.0.31", "127.0.0.32", "127.0.0.33"]
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                       "local-writes-3node.tar.gz")


def expected():
    """{collection: {id: (payload, vector as stored)}} of the fixture."""
    out = {"rf1": {}, "rf3": {}}
    for i in (1, 2, 3):
        for k in range(100):
            v = [float(k % 7 + 1), float(i), float(k % 3) + 0.5, 2.0]
            out["rf1"][1000 * i + k] = ({"node": i, "k": k}, v)
            norm = math.sqrt(sum(x * x for x in v))
            out["rf3"][1000 * i + k] = ({"node": i, "k": k}, [x / norm for x in v])
        del out["rf3"][1000 * i + 99]
        out["rf3"][1000 * i] = ({"node": i, "k": 0, "v": 2}, [0.5, 0.5, 0.5, 0.5])
    return out


class Upgrade(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="vectord-upgrade-")
        with tarfile.open(FIXTURE) as t:
            t.extractall(self.tmp)
        self.nodes = []

    def tearDown(self):
        try:
            stop_nodes(self.nodes)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def test_points_written_before_replication_are_found_through_every_node(self):
        for i, h in enumerate(HOSTS):
            n = vdtest.Node(data_dir=os.path.join(self.tmp, f"node{i + 1}"), host=h, port=16333,
                            cluster_port=16335)
            self.nodes.append(n)
            n.start(wait=False)
        for n in self.nodes:
            n.wait_ready()
        wait_until(lambda: agreed(self.nodes, 3), 60, "three voters up")

        def placed():
            states = [(info(n) or {}).get("points_placement", {}) for n in self.nodes]
            return all(s.get("state") == "done" for s in states) and states
        states = wait_until(placed, 120, "every node done placing its points")
        for s in states:
            self.assertGreaterEqual(s["records_placed"], 100, states)

        want = expected()
        rf = {"rf1": 1, "rf3": 3}
        for s in states:
            self.assertIn("copies_dropped", s, states)

        def local_counts(coll):
            return [n.ok("GET", f"/collections/{coll}/cluster")["local_shards"][0]["points_count"]
                    for n in self.nodes]
        for coll, points in want.items():
            # rf3 at W 2 may leave a replica to its hint for a moment: poll
            wait_until(lambda: sum(local_counts(coll)) == rf[coll] * len(points), 60,
                       f"{coll}: the nodes to hold {rf[coll]} x {len(points)} points")
            for count in local_counts(coll):
                self.assertLessEqual(count, len(points), coll)
        # RF 1 on 3 nodes: each holds a part, none all (the ring spreads 300 points)
        self.assertTrue(all(0 < k < 300 for k in local_counts("rf1")), local_counts("rf1"))
        # rf1: every node held its 100 writes, most of them another node's to keep
        self.assertGreater(sum(s["copies_dropped"] for s in states), 0, states)
        every = list(range(1000, 3100))
        for coll, points in want.items():
            for n in self.nodes:
                st, j = n.request("POST", f"/collections/{coll}/points?consistency=all",
                                  {"ids": every, "with_payload": True, "with_vector": True})
                self.assertEqual(st, 200, j)
                got = {p["id"]: (p["payload"], p["vector"]) for p in j["result"]}
                self.assertEqual(sorted(got), sorted(points),
                                 f"{coll} through {n.host}: ids differ")
                for pid, (payload, vec) in points.items():
                    self.assertEqual(got[pid][0], payload, f"{coll} {pid} through {n.host}")
                    for a, b in zip(got[pid][1], vec):
                        self.assertAlmostEqual(a, b, places=5, msg=f"{coll} {pid} vector")
                st, j = n.request("POST", f"/collections/{coll}/points/count", {"exact": True})
                self.assertEqual(st, 200, j)
                self.assertEqual(j["result"]["count"], len(points), f"{coll} count via {n.host}")


if __name__ == "__main__":
    vdtest.main()
