"""Replication factor 1 on three nodes spreads the points: each node stores 15 % to 55 % of them
(GET /collections/{c}/cluster, local_shards), every point exactly once; GET /collections/{c}
reports the collection's point count through every node within 10 % (it scales the node's own
by the share of the ring it replicates); graph searches through every node keep recall@10 of at
least 0.95 against a brute force.
"""
import random
import unittest

import vdtest
from vdtest import ClusterCase, wait_until

N = 3000
DIM = 8


class Spread(ClusterCase):
    def test_rf1_spreads_and_counts(self):
        nodes = self.start_cluster(3)
        rng = random.Random(11)
        vecs = [[rng.uniform(-1, 1) for _ in range(DIM)] for _ in range(N)]
        nodes[0].create("spread", DIM, distance="Dot", replication_factor=1)
        for n in nodes:
            wait_until(lambda: n.request("GET", "/collections/spread")[0] == 200, 30,
                       f"the collection on port {n.port}")
        for s in range(0, N, 500):
            nodes[s // 500 % 3].ok("PUT", "/collections/spread/points?wait=true",
                                   {"points": [{"id": i, "vector": vecs[i]}
                                               for i in range(s, min(N, s + 500))]})
        held = []
        for n in nodes:
            c = n.ok("GET", "/collections/spread/cluster")
            held.append(sum(s["points_count"] for s in c["local_shards"]))
        self.assertEqual(sum(held), N, held)
        for h in held:
            self.assertTrue(0.15 * N <= h <= 0.55 * N, f"points per node {held}")
        counts = [n.ok("GET", "/collections/spread")["points_count"] for n in nodes]
        for c in counts:
            self.assertLessEqual(abs(c - N), 0.10 * N, f"points_count through each node {counts}")
        print(f"\npoints per node {held}; points_count reported through each node {counts}")

        queries = [[rng.uniform(-1, 1) for _ in range(DIM)] for _ in range(30)]
        for n in nodes:
            wait_until(lambda: n.ok("GET", "/collections/spread")["status"] == "green", 60,
                       f"the index of port {n.port}")
        for n in nodes:
            hits = 0
            for q in queries:
                truth = sorted(range(N), key=lambda i: -sum(a * b for a, b in zip(vecs[i], q)))
                got = n.ok("POST", "/collections/spread/points/search",
                           {"vector": q, "limit": 10, "params": {"hnsw_ef": 64}})
                hits += len({r["id"] for r in got} & set(truth[:10]))
            recall = hits / (10 * len(queries))
            self.assertGreaterEqual(recall, 0.95, f"recall@10 through port {n.port}")


if __name__ == "__main__":
    vdtest.main()
