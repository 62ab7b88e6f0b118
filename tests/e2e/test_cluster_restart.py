"""A cluster stopped whole (every node at once, as a power cut or a host reboot does) comes back
whole: started again on their data directories, the three nodes find each other from what their
Raft logs hold, elect a leader, and serve every point written before, through every node.
"""
import unittest

import vdtest
from vdtest import ClusterCase, agreed, wait_until


class WholeClusterRestart(ClusterCase):
    def test_stopped_together_started_together(self):
        nodes = self.start_cluster(3)
        a = nodes[0]
        a.create("r", 4, distance="Dot", replication_factor=3)
        for n in nodes:
            wait_until(lambda: n.request("GET", "/collections/r")[0] == 200, 30,
                       f"the collection on node {n.port}")
        pts = [{"id": i, "vector": [float(i), 1.0, 2.0, 3.0], "payload": {"i": i}}
               for i in range(1, 51)]
        a.ok("PUT", "/collections/r/points?wait=true", {"points": pts})
        for n in nodes:
            self.assertEqual(n.stop(), 0, n.read_log())
        for n in nodes:
            n.start(wait=False)
        for n in nodes:
            n.wait_ready()
        wait_until(lambda: agreed(nodes, 3), 60, "a leader and three voters after the restart")
        for n in nodes:
            got = n.ok("POST", "/collections/r/points?consistency=all",
                       {"ids": list(range(1, 51)), "with_payload": True})
            self.assertEqual(sorted(p["id"] for p in got), list(range(1, 51)), n.read_log())
            self.assertTrue(all(p["payload"] == {"i": p["id"]} for p in got), got)


if __name__ == "__main__":
    vdtest.main()
