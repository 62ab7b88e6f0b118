"""A partition, as hosts on a network see one: three nodes, each in its own network namespace on
one veth to a bridge, a collection with replication factor 3 (writes at 2 of 3, reads at a quorum).
One node is cut off by taking its veth down (its packets vanish; no connection is reset):

- for the two others it is a dead node: every write and read through them succeeds, and reads
  through them return what was written;
- the others keep a hint for every record it missed; after healing, its hints delivered
  (/metrics: none pending anywhere), every replica holds the
  same records: each node, asked alone (consistency 1), returns exactly the acknowledged points,
  overwrites and deletes made while it was cut off included.

Needs root and iproute2 (netns.py); without them the test fails with the reason.
"""
import time

import vdtest
from netns import NetCase
from vdtest import agreed, info, wait_until

DIM = 8
COLL = "part"


def vec(i, gen):
    return [float((i * 7 + k * 3 + gen) % 11) - 5.0 for k in range(DIM)]


def hints_pending(node):
    """The hints node still keeps for others: the sum of its vectord_hints_pending gauges, one per
    target that has any."""
    st, text = node.request("GET", "/metrics", raw=True, timeout=10)
    if st != 200:
        raise AssertionError(f"GET /metrics -> {st}")
    text = text.decode()
    if "# TYPE vectord_hints_pending gauge" not in text:
        raise AssertionError("/metrics has no vectord_hints_pending")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vectord_hints_pending"))


class Partition(NetCase):
    def wait(self, cond, what):
        """wait_until, failing with what every node says of its members and hints."""
        try:
            wait_until(cond, 120, what)
        except AssertionError as e:
            state = []
            for n in self.nodes:
                c = info(n) or {}
                members = [(m["id"], m["state"], m["role"]) for m in c.get("nodes", [])]
                try:
                    pending = hints_pending(n)
                except (OSError, AssertionError) as why:
                    pending = f"unknown ({why})"
                state.append(f"{n.host}: members {members}, hints pending {pending}")
            raise AssertionError(f"{e}\n" + "\n".join(state)) from None

    def points(self, node, ids, consistency):
        st, j = node.request("POST", f"/collections/{COLL}/points?consistency={consistency}",
                             {"ids": ids, "with_payload": True, "with_vector": True}, timeout=30)
        self.assertEqual(st, 200, j)
        return {p["id"]: (p["payload"], p["vector"]) for p in j["result"]}

    def write(self, node, method, path, body):
        t0 = time.monotonic()
        st, j = node.request(method, f"/collections/{COLL}{path}?wait=true", body, timeout=30)
        self.assertEqual(st, 200, f"{method} {path} through {node.host}: {j}")
        return time.monotonic() - t0

    def test_cut_off_node_is_a_dead_node_and_converges_after_healing(self):
        a, b, c = self.start_nodes(3)
        wait_until(lambda: agreed(self.nodes, 3), 60, "three voters up")
        a.create(COLL, DIM, distance="Dot", replication_factor=3)
        for n in self.nodes:
            wait_until(lambda: n.request("GET", f"/collections/{COLL}")[0] == 200, 30,
                       f"the collection on {n.host}")

        # before: 300 points through a, acknowledged at 2 of 3
        expect = {}
        pts = [{"id": i, "vector": vec(i, 0), "payload": {"gen": 0}} for i in range(1, 301)]
        for k in range(0, len(pts), 100):
            self.write(a, "PUT", "/points", {"points": pts[k:k + 100]})
        for p in pts:
            expect[p["id"]] = (p["payload"], p["vector"])

        # c cut off: overwrites, deletes and new points through a and b all succeed
        self.net.cut(2)
        over = [{"id": i, "vector": vec(i, 1), "payload": {"gen": 1}} for i in range(1, 51)]
        new = [{"id": i, "vector": vec(i, 0), "payload": {"gen": 0}} for i in range(301, 401)]
        slowest = 0.0
        slowest = max(slowest, self.write(a, "PUT", "/points", {"points": over}))
        slowest = max(slowest, self.write(b, "POST", "/points/delete",
                                          {"points": list(range(51, 81))}))
        slowest = max(slowest, self.write(b, "PUT", "/points", {"points": new}))
        for p in over + new:
            expect[p["id"]] = (p["payload"], p["vector"])
        for i in range(51, 81):
            del expect[i]
        every = list(range(1, 401))
        for n in (a, b):
            self.assertEqual(self.points(n, every, "quorum"), expect,
                             f"reads through {n.host} while c is cut off")
        print(f"writes with one replica cut off: slowest {slowest * 1000:.0f} ms")
        # each record c missed is kept as one hint by the node that coordinated its write, once
        # c's part of the write has run out of time
        missed = len(over) + 30 + len(new)
        self.wait(lambda: hints_pending(a) + hints_pending(b) == missed,
                  f"{missed} hints kept for the node cut off")

        # healed: c back among the voters, every hint delivered, every replica the same
        self.net.heal(2)
        self.wait(lambda: agreed(self.nodes, 3), "three voters up after healing")
        self.wait(lambda: all(hints_pending(n) == 0 for n in self.nodes), "every hint delivered")
        for n in self.nodes:
            got = self.points(n, every, "1")
            missing = sorted(set(expect) - set(got))
            extra = sorted(set(got) - set(expect))
            wrong = sorted(i for i in expect if i in got and got[i] != expect[i])
            self.assertEqual((missing, extra, wrong), ([], [], []),
                             f"node {n.host} alone differs: missing {missing[:10]}, "
                             f"present after delete {extra[:10]}, stale {wrong[:10]}")


if __name__ == "__main__":
    vdtest.main()
