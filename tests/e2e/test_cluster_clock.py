"""Clock skew over real processes: a member whose wall clock is 5 s fast (the test-only
VECTORD_TEST_CLOCK_OFFSET_MS) still takes part in metadata, shows its offset in GET /cluster, and
answers data writes 503 (clock skew) while the others keep writing; a member 200 ms off works
normally.

Every wait polls a condition with a deadline; nothing sleeps for a fixed time to synchronise.
"""
import json
import re

import vdtest
from vdtest import ClusterCase, agreed, info, wait_until

MAX_OFFSET = 500  # the default --max-clock-offset
FAST = 5000
SLIGHT = 200


def skewed(ms):
    """The environment of a node whose wall clock runs ms ahead."""
    return {"VECTORD_TEST_CLOCK_OFFSET_MS": str(ms)}


def offset_seen(by, of_id):
    """The clock offset of member of_id as node `by` estimates it (ms), or None."""
    r = info(by)
    if r is None:
        return None
    for m in r["nodes"]:
        if m["id"] == of_id:
            return m.get("clock_offset_ms")
    return None


def point(i):
    return {"id": i, "vector": [1.0, float(i), 0.5, 0.25], "payload": {"i": i}}


class ClockSkewTest(ClusterCase):
    """One cluster for the class: n1 and n2 on the true clock, n3 5 s fast; later n4, 200 ms fast,
    joins. Tests run in name order and build on each other."""

    @classmethod
    def setUpClass(cls):
        cls.nodes = []
        cls.n1 = cls.make().start()
        wait_until(lambda: (info(cls.n1) or {}).get("raft_info", {}).get("role") == "Leader", 30,
                   "the first node to lead its one-node cluster")
        cls.n2 = cls.make(join=cls.n1).start()
        cls.n3 = cls.make(join=cls.n1, env=skewed(FAST)).start()
        wait_until(lambda: agreed([cls.n1, cls.n2, cls.n3], 3), 60,
                   "three voting members, all up")
        cls.ids = {n: info(n)["peer_id"] for n in (cls.n1, cls.n2, cls.n3)}

    def assertSkewRefused(self, st_j, what):
        st, j = st_j
        self.assertEqual(st, 503, f"{what}: {st} {j}")
        msg = j["status"]["error"]
        m = re.fullmatch(r"clock skew: this node's clock is (\d+) ms from the majority of members "
                         r"\(max-clock-offset (\d+) ms\)", msg)
        self.assertIsNotNone(m, f"{what}: {msg}")
        self.assertTrue(FAST - 1000 < int(m.group(1)) < FAST + 1000, msg)
        self.assertEqual(int(m.group(2)), MAX_OFFSET, msg)

    def wait_collection(self, name):
        for n in self.nodes:
            if n.proc is not None:
                wait_until(lambda: n.request("GET", f"/collections/{name}")[0] == 200, 30,
                           f"collection {name} on the node on port {n.port}")

    def test_1_offsets_in_cluster_status(self):
        fast = self.ids[self.n3]
        for by in (self.n1, self.n2):
            off = wait_until(lambda: offset_seen(by, fast), 30, "an estimate of the fast clock")
            self.assertTrue(FAST - 300 < off < FAST + 300, f"fast node's offset seen as {off}")
        for other in (self.n1, self.n2):
            off = wait_until(lambda: offset_seen(self.n3, self.ids[other]), 30,
                             "the fast node's estimate of a true clock")
            self.assertTrue(-FAST - 300 < off < -FAST + 300, f"true clock seen as {off}")
        # its own entry, and the two true clocks seen from each other
        self.assertEqual(offset_seen(self.n1, self.ids[self.n1]), 0)
        off = wait_until(lambda: offset_seen(self.n1, self.ids[self.n2]) is not None
                         and [offset_seen(self.n1, self.ids[self.n2])], 30, "an estimate")[0]
        self.assertLess(abs(off), 100, off)

    def test_2_metadata_through_the_fast_node(self):
        # n3 follows: the change is forwarded to the leader (a metadata call, not a data frame,
        # so its fast clock does not matter) and applied everywhere
        self.assertEqual(info(self.n3)["raft_info"]["role"], "Follower")
        # a replica on every member: writes through the true clocks reach W (2) without the
        # fast node, which refuses them
        self.n3.create("clk", 4, "Dot", replication_factor=3)
        self.wait_collection("clk")
        self.n3.ok("PUT", "/collections/clk/index", {"field_name": "i", "field_schema": "integer"})
        self.n3.ok("GET", "/collections/clk")

    def test_3_fast_node_refuses_writes(self):
        up = ("PUT", "/collections/clk/points?wait=true", {"points": [point(1)]})
        wait_until(lambda: self.n3.request(*up)[0] == 503, 30, "the fast node to refuse writes")
        self.assertSkewRefused(self.n3.request(*up), "upsert")
        self.assertSkewRefused(self.n3.request(
            "POST", "/collections/clk/points/delete?wait=true", {"points": [1]}), "delete")
        self.assertSkewRefused(self.n3.request(
            "POST", "/collections/clk/points/payload?wait=true",
            {"payload": {"k": 1}, "points": [1]}), "payload set")
        self.assertSkewRefused(self.n3.request(
            "POST", "/collections/clk/points/payload/clear?wait=true", {"points": [1]}),
            "payload clear")
        body = (json.dumps(point(2)) + "\n").encode()
        self.assertSkewRefused(self.n3.request(
            "POST", "/collections/clk/points/import", body,
            headers={"Content-Type": "application/x-ndjson"}), "import")
        # reads still work there, from its own replica (its peers refuse its data frames)
        self.assertEqual(self.n3.ok("POST", "/collections/clk/points/count?consistency=1",
                                    {})["count"], 0)
        self.assertIn("data writes are refused", self.n3.read_log())

    def test_4_true_clocks_write(self):
        for i, n in enumerate((self.n1, self.n2)):
            r = n.ok("PUT", "/collections/clk/points?wait=true", {"points": [point(10 + i)]})
            self.assertEqual(r["status"], "completed")
            n.ok("POST", "/collections/clk/points/payload?wait=true",
                 {"payload": {"k": i}, "points": [10 + i]})
            n.ok("POST", "/collections/clk/points/delete?wait=true", {"points": [10 + i]})
        # and they keep doing so while the fast node keeps refusing
        self.assertEqual(self.n3.request("PUT", "/collections/clk/points?wait=true",
                                         {"points": [point(3)]})[0], 503)
        self.n1.ok("PUT", "/collections/clk/points?wait=true", {"points": [point(12)]})

    def test_5_slight_offset_works(self):
        # a member joins only while no collection holds points (test_cluster_membership_data.py):
        # the points written so far go with their collection, which is made again once n4 is in
        self.n1.ok("DELETE", "/collections/clk")
        for n in (self.n1, self.n2, self.n3):
            wait_until(lambda n=n: info(n)["membership_changes"]["allowed"], 30,
                       "membership changes allowed")
        n4 = self.make(join=self.n1, env=skewed(SLIGHT)).start()
        members = [self.n1, self.n2, self.n3, n4]
        wait_until(lambda: agreed(members, 4), 60, "four voting members, all up")
        self.n1.create("clk", 4, "Dot", replication_factor=3)
        self.wait_collection("clk")
        me = info(n4)["peer_id"]
        # n4 has measured every other member, n1 has measured n4
        wait_until(lambda: all(offset_seen(n4, self.ids[o]) is not None
                               for o in (self.n1, self.n2, self.n3)), 30,
                   "the slight node's estimates of every member")
        off = wait_until(lambda: offset_seen(self.n1, me), 30, "an estimate of the slight clock")
        self.assertTrue(SLIGHT - 150 < off < SLIGHT + 150, f"slight clock seen as {off}")
        for i in range(5):
            r = n4.ok("PUT", "/collections/clk/points?wait=true", {"points": [point(20 + i)]})
            self.assertEqual(r["status"], "completed")
        n4.ok("POST", "/collections/clk/points/payload?wait=true",
              {"payload": {"k": 4}, "points": [20]})
        n4.ok("POST", "/collections/clk/points/delete?wait=true", {"points": [21]})
        body = (json.dumps(point(30)) + "\n").encode()
        st, j = n4.request("POST", "/collections/clk/points/import", body,
                           headers={"Content-Type": "application/x-ndjson"})
        self.assertEqual(st, 200, j)
        got = n4.ok("POST", "/collections/clk/points", {"ids": [20, 21, 22, 23, 24, 30]})
        self.assertEqual(sorted(r["id"] for r in got), [20, 22, 23, 24, 30])
        # the fast node is still far from the majority of four
        self.assertSkewRefused(self.n3.request("PUT", "/collections/clk/points?wait=true",
                                               {"points": [point(4)]}), "upsert among four")


if __name__ == "__main__":
    vdtest.main()
