"""Anti-entropy repair with real processes: three nodes, each in its own network namespace on one
veth to a bridge (netns.py), a collection with replication factor 3, hints that expire after one
second (--hint-window 1), so a node cut off misses writes that nothing but a repair brings back.

- Replicas that hold the same records: POST /cluster/repair?wait=true compares every range and
  sends no point data (its report and /metrics say 0 points sent).
- Node c cut off (its veth down); overwrites, deletes and new points through node a; a's hints for
  c expire and a marks c needs-repair (GET /cluster), and tells b, whose GET /cluster shows it
  too. Healed, c's own copy still differs.
- POST /cluster/repair?wait=true through a sends exactly the records c missed, clears the mark
  (on a, and on b once a stops telling it), and afterwards every node's own copy
  (GET /collections/{c}/cluster/local: read from that node's database alone, a digest over every
  stored record's bytes, tombstones included) is the same;
  a second repair sends nothing.
- Without wait the answer is 202 with the run's id and GET /cluster shows the run end.
- Bad input on the endpoint is a 4xx naming what is wrong; bad --repair-interval values stop
  vectord at start-up.

Needs root and iproute2 (netns.py); without them the test fails with the reason.
"""
import subprocess

import vdtest
from netns import NetCase
from vdtest import agreed, info, wait_until

DIM = 8
COLL = "rep"


def vec(i, gen):
    return [float((i * 5 + k * 3 + gen) % 13) - 6.0 for k in range(DIM)]


def metric(node, name):
    st, text = node.request("GET", "/metrics", raw=True, timeout=10)
    if st != 200:
        raise AssertionError(f"GET /metrics -> {st}")
    for line in text.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"/metrics has no {name}")


def hints_for(node, target):
    st, text = node.request("GET", "/metrics", raw=True, timeout=10)
    key = f'vectord_hints_pending{{target="{target}"}} '
    for line in text.decode().splitlines():
        if line.startswith(key):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def member(node, ident):
    for m in (info(node) or {}).get("nodes", []):
        if m["id"] == ident:
            return m
    return {}


class Repair(NetCase):
    def local(self, node):
        st, j = node.request("GET", f"/collections/{COLL}/cluster/local", timeout=30)
        self.assertEqual(st, 200, j)
        return j["result"]

    def repair(self, node, body=None):
        st, j = node.request("POST", "/cluster/repair?wait=true", body, timeout=300)
        self.assertEqual(st, 200, j)
        return j["result"]

    def write(self, node, method, path, body):
        st, j = node.request(method, f"/collections/{COLL}{path}?wait=true", body, timeout=60)
        self.assertEqual(st, 200, f"{method} {path} through {node.host}: {j}")

    def test_drift_converges_after_repair(self):
        a, b, c = self.start_nodes(3, ["--hint-window", "1", "--repair-interval", "0"])
        wait_until(lambda: agreed(self.nodes, 3), 60, "three voters up")
        a.create(COLL, DIM, distance="Dot", replication_factor=3)
        for n in self.nodes:
            wait_until(lambda: n.request("GET", f"/collections/{COLL}")[0] == 200, 30,
                       f"the collection on {n.host}")
        ids = {n: info(n)["peer_id"] for n in self.nodes}

        pts = [{"id": i, "vector": vec(i, 0), "payload": {"gen": 0}} for i in range(1, 241)]
        for k in range(0, len(pts), 80):
            self.write(a, "PUT", "/points", {"points": pts[k:k + 80]})
        wait_until(lambda: len({self.local(n)["digest"] for n in self.nodes}) == 1, 30,
                   "the three copies equal after writes at W 2")

        # identical replicas: every range compared, no point data sent
        r = self.repair(a)
        print(f"repair of identical replicas: {r}")
        self.assertEqual((r["ranges_failed"], r["leaves_differing"], r["points_sent"]), (0, 0, 0))
        self.assertEqual(r["ranges"], 64 * 3)
        self.assertEqual(metric(a, "vectord_repair_points_sent_total"), 0.0)
        self.assertEqual(metric(a, "vectord_repair_ranges_total"), 64 * 3)

        # c cut off; once a sees it down, writes through a: overwrites, deletes, new points
        self.net.cut(2)
        wait_until(lambda: member(a, ids[c]).get("state") == "down", 30, "a sees c down")
        over = [{"id": i, "vector": vec(i, 1), "payload": {"gen": 1}} for i in range(1, 31)]
        new = [{"id": i, "vector": vec(i, 0), "payload": {"gen": 0}} for i in range(241, 281)]
        self.write(a, "PUT", "/points", {"points": over})
        self.write(a, "POST", "/points/delete", {"points": list(range(31, 51))})
        self.write(a, "PUT", "/points", {"points": new})
        missed = len(over) + 20 + len(new)
        # a's hints for c pass the one-second window: dropped, and c marked needs-repair
        wait_until(lambda: member(a, ids[c]).get("needs_repair") is True, 60,
                   "c marked needs-repair on a")
        wait_until(lambda: hints_for(a, ids[c]) == 0, 60, "a's hints for c expired")
        # a tells b: b too shows c needs-repair (and asks it last)
        wait_until(lambda: member(b, ids[c]).get("needs_repair") is True, 10,
                   "a's mark known on b")
        self.assertGreaterEqual(metric(a, "vectord_hints_expired_total"), 1)

        self.net.heal(2)
        wait_until(lambda: agreed(self.nodes, 3), 60, "three voters up after healing")
        la, lb, lc = (self.local(n) for n in self.nodes)
        self.assertEqual(la["digest"], lb["digest"])
        self.assertNotEqual(la["digest"], lc["digest"], "c's copy should have drifted")
        self.assertEqual((la["points"], la["tombstones"]), (260, 20))
        self.assertEqual((lc["points"], lc["tombstones"]), (240, 0))

        r = self.repair(a)
        print(f"repair after drift: {r}")
        self.assertEqual(r["ranges_failed"], 0)
        self.assertGreater(r["leaves_differing"], 0)
        self.assertEqual(r["points_sent"], missed)
        self.assertEqual(metric(a, "vectord_repair_points_sent_total"), missed)
        wait_until(lambda: member(a, ids[c]).get("needs_repair") is False, 10,
                   "c's mark cleared on a")
        wait_until(lambda: member(b, ids[c]).get("needs_repair") is False, 10,
                   "c's mark forgotten on b")
        copies = [self.local(n) for n in self.nodes]
        self.assertEqual(len({x["digest"] for x in copies}), 1,
                         f"copies differ after repair: {copies}")
        self.assertEqual((copies[2]["points"], copies[2]["tombstones"]), (260, 20))
        # c alone returns the newest versions (its own copy, at consistency 1)
        st, j = c.request("POST", f"/collections/{COLL}/points?consistency=1",
                          {"ids": [1, 31, 260], "with_payload": True}, timeout=30)
        self.assertEqual(st, 200, j)
        self.assertEqual({p["id"]: p["payload"]["gen"] for p in j["result"]}, {1: 1, 260: 0})

        # a second repair, through another node and of the one collection: nothing to send
        r = self.repair(b, {"collection": COLL})
        self.assertEqual((r["ranges_failed"], r["leaves_differing"], r["points_sent"]), (0, 0, 0))

        # without wait: 202 with the run's id, and GET /cluster shows it end
        st, j = a.request("POST", "/cluster/repair", {"collection": COLL}, timeout=30)
        self.assertEqual(st, 202, j)
        rid = j["result"]["repair_id"]
        wait_until(lambda: (info(a) or {}).get("repair", {}).get("last_finished", {})
                   and info(a)["repair"]["last_finished"]["id"] == rid, 60,
                   "the queued run finished")
        rep = info(a)["repair"]
        self.assertEqual(rep["state"], "idle")
        self.assertEqual(rep["ranges_done"], 64 * 3)
        self.assertEqual(rep["last_finished"]["points_sent"], 0)

        # bad input: 4xx naming what is wrong, nothing started
        runs = metric(a, "vectord_repair_runs_total")
        for path, body, status, frag in (
                ("/cluster/repair?wait=maybe", None, 400, "wait"),
                ("/cluster/repair", {"collection": 5}, 400, "collection"),
                ("/cluster/repair", {"collection": "nope"}, 404, "nope"),
                ("/cluster/repair", {"collection": "bad name!"}, 422, "collection name"),
                ("/cluster/repair", {"collections": COLL}, 400, "collections"),
                ("/cluster/repair", [COLL], 400, "JSON object")):
            with self.subTest(path=path, body=body):
                st, j = a.request("POST", path, body, timeout=30)
                self.assertEqual(st, status, j)
                if frag:
                    self.assertIn(frag, j["status"]["error"])
        st, j = a.request("GET", f"/collections/{COLL}/cluster/local?records=maybe", timeout=30)
        self.assertEqual(st, 400, j)
        st, j = a.request("GET", "/collections/nope/cluster/local", timeout=30)
        self.assertEqual(st, 404, j)
        self.assertEqual(metric(a, "vectord_repair_runs_total"), runs)

    def test_bad_repair_interval_is_a_startup_error(self):
        for value in ("abc", "-1", "31536001", "", "1.5"):
            with self.subTest(value=value):
                p = subprocess.run([vdtest.BINARY, "--repair-interval", value],
                                   capture_output=True, timeout=30)
                self.assertNotEqual(p.returncode, 0)
                self.assertIn("--repair-interval", p.stderr.decode())


class RepairAuth(vdtest.KeyedNodeTest):
    """POST /cluster/repair is an admin's; GET .../cluster/local a reader's. One node alone has no
    replica to compare with: its run compares nothing."""

    def test_roles(self):
        n = self.node
        for role, status in (("ro", 403), ("rw", 403)):
            with self.subTest(role=role):
                st, j = n.request("POST", "/cluster/repair?wait=true", key=self.keys[role])
                self.assertEqual(st, status, j)
        st, j = n.request("POST", "/cluster/repair?wait=true", key="")
        self.assertEqual(st, 401, j)
        st, j = n.request("POST", "/cluster/repair?wait=true", {"collection": "a"},
                          key=self.keys["admin"])
        self.assertEqual(st, 200, j)
        self.assertEqual((j["result"]["ranges"], j["result"]["points_sent"]), (0, 0))
        st, j = n.request("GET", "/collections/a/cluster/local", key=self.keys["ro"])
        self.assertEqual(st, 200, j)
        self.assertEqual((j["result"]["points"], j["result"]["tombstones"]), (0, 0))


if __name__ == "__main__":
    vdtest.main()
