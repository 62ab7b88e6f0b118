"""A cluster member frozen with SIGSTOP for 30 s while clients keep working on the others, then
continued: the others serve every request meanwhile, and the frozen node rejoins (it reports
the leader again, every member votes) and catches up the collections created and deleted while
it was stopped.

Points with a frozen replica: writes at 2 of 3, reads and searches at a quorum through the two
others never fail, and none takes longer than the failure detector's time (2.5 s, after which the
frozen member is down) plus 100 ms; the latencies before and during the freeze are printed.

Every wait polls a condition with a deadline; the 30 s freeze is the fault being tested, not a
wait for something to happen.
"""
import signal
import threading
import time

import vdtest
from vdtest import ClusterCase, agreed, check_log, info, wait_until

# a replica on every member: writes reach W (2 of 3) without the frozen one
VEC = {"vectors": {"size": 4, "distance": "Dot"}, "replication_factor": 3}
FREEZE_S = 30
DOWN_AFTER_S = 2.5  # a member not heard from for this long is down (docs/cluster.md)


def names_on(node):
    return {c["name"] for c in node.ok("GET", "/collections", timeout=30)["collections"]}


class SigstopTest(ClusterCase):
    @classmethod
    def setUpClass(cls):
        # three voters first: before that a frozen member could be the one the cluster needs
        cls.start_cluster(3)

    def test_frozen_member_rejoins(self):
        leader_id, _ = wait_until(lambda: agreed(self.members, 3), 30, "three voters")
        victim = next(n for n in self.members if info(n)["peer_id"] != leader_id)
        victim_id = info(victim)["peer_id"]
        others = [n for n in self.members if n is not victim]

        stop = threading.Event()
        lock = threading.Lock()
        live, gone, errors = set(), set(), []
        ops = [0]

        def check(what, node, st_j):
            st, j = st_j
            if st != 200:
                errors.append(f"{what} via {node.port}: {st} {j}")
                return False
            return True

        def client():
            i = 0
            while not stop.is_set():
                node = others[i % 2]
                name = f"frz_{i}"
                try:
                    if check(f"create {name}", node,
                             node.request("PUT", f"/collections/{name}", VEC, timeout=30)):
                        with lock:
                            live.add(name)
                        pts = {"points": [{"id": k, "vector": [1, k, 0, 1]} for k in range(5)]}
                        check(f"upsert into {name}", node,
                              node.request("PUT", f"/collections/{name}/points?wait=true", pts,
                                           timeout=30))
                    if i % 3 == 2:  # every third round deletes a collection made earlier
                        old = f"frz_{i - 2}"
                        with lock:
                            known = old in live
                        if known and check(f"delete {old}", node,
                                           node.request("DELETE", f"/collections/{old}", timeout=30)):
                            with lock:
                                live.discard(old)
                                gone.add(old)
                except OSError as e:
                    errors.append(f"round {i} via {node.port}: {e}")
                i += 1
                with lock:
                    ops[0] += 1
                stop.wait(0.05)  # pacing: hundreds of rounds over the run, not thousands

        def rounds():
            with lock:
                return ops[0]

        t = threading.Thread(target=client)
        t.start()
        frozen_at = None
        try:
            wait_until(lambda: rounds() >= 5, 30, "the client to get going")
            victim.proc.send_signal(signal.SIGSTOP)
            frozen_at = time.monotonic()
            mark = rounds()
            # the others notice the silent member while it is frozen
            wait_until(lambda: any(m["id"] == victim_id and m["state"] != "up"
                                   for m in (info(others[0]) or {"nodes": []})["nodes"]),
                       FREEZE_S, "the others to see the frozen member as not up")
            stop.wait(max(0.0, FREEZE_S - (time.monotonic() - frozen_at)))
            during = rounds() - mark
            victim.proc.send_signal(signal.SIGCONT)
            frozen_at = None
            self.assertGreater(during, 20, "the client made little progress during the freeze")
            # it rejoins: it reports the same leader as the others, all three vote and are up
            wait_until(lambda: agreed(self.members, 3), 60, "the continued member to rejoin")
            mark = rounds()
            wait_until(lambda: rounds() >= mark + 10, 30, "the client to go on after the rejoin")
        finally:
            if frozen_at is not None:
                victim.proc.send_signal(signal.SIGCONT)
            stop.set()
            t.join(120)
        self.assertEqual(errors, [])
        r = info(victim)
        self.assertIsNotNone(r)
        self.assertEqual(r["raft_info"]["leader"],
                         wait_until(lambda: agreed(self.members, 3), 30, "three voters")[0])
        self.assertTrue(r["raft_info"]["is_voter"])
        # it caught up the collections: the same set as the others, created ones in, deleted out
        with lock:
            want_live, want_gone = set(live), set(gone)
        self.assertGreater(len(want_gone), 0)
        for n in self.members:
            wait_until(lambda: want_live <= (s := names_on(n)) and not (want_gone & s), 30,
                       f"the node on port {n.port} to hold exactly the live collections")
        print(f"\nfrozen {FREEZE_S}s: {during} client rounds meanwhile, {len(want_live)} "
              f"collections live and {len(want_gone)} deleted, no error; the member rejoined")
        for n in self.members:
            check_log(self, n)

    def test_points_with_a_frozen_replica(self):
        leader_id, _ = wait_until(lambda: agreed(self.members, 3), 60, "three voters")
        victim = next(n for n in self.members if info(n)["peer_id"] != leader_id)
        others = [n for n in self.members if n is not victim]
        others[0].create("frozen_pts", 4, distance="Dot", replication_factor=3)
        for n in self.members:
            wait_until(lambda: n.request("GET", "/collections/frozen_pts")[0] == 200, 30,
                       f"the collection on port {n.port}")
        others[0].ok("PUT", "/collections/frozen_pts/points?wait=true",
                     {"points": [{"id": k, "vector": [1, k, 0, 1]} for k in range(1, 101)]})

        def pct(v, p):
            v = sorted(v)
            return v[min(len(v) - 1, int(p / 100 * len(v)))] if v else 0.0

        def load(seconds):
            """Writes, reads and searches in turn through the two others for `seconds`; returns
            (latencies by kind, failures)."""
            lat = {"write": [], "read": [], "search": []}
            fails = []
            end = time.monotonic() + seconds
            i = 0
            while time.monotonic() < end:
                node = others[i % 2]
                k = 1 + i % 100
                reqs = {"write": ("PUT", "/collections/frozen_pts/points?wait=true",
                                  {"points": [{"id": k, "vector": [1, k, i % 7, 1]}]}),
                        "read": ("POST", "/collections/frozen_pts/points",
                                 {"ids": [k, 1 + (k + 50) % 100], "with_payload": True}),
                        "search": ("POST", "/collections/frozen_pts/points/search",
                                   {"vector": [1, k, 0, 1], "limit": 5})}
                for kind, (method, path, body) in reqs.items():
                    t0 = time.monotonic()
                    try:
                        st, j = node.request(method, path, body, timeout=30)
                    except OSError as e:
                        st, j = None, str(e)
                    lat[kind].append(time.monotonic() - t0)
                    if st != 200:
                        fails.append(f"{kind} via {node.port}: {st} {j}")
                i += 1
            return lat, fails

        before, fails = load(3)
        self.assertEqual(fails, [])
        victim.proc.send_signal(signal.SIGSTOP)
        try:
            # past the failure detector's time, so both sides of it are measured
            during, fails = load(DOWN_AFTER_S + 3)
        finally:
            victim.proc.send_signal(signal.SIGCONT)
        self.assertEqual(fails, [])
        for kind, v in during.items():
            print(f"\n{kind}: {len(v)} with a frozen replica, p50 {pct(v, 50) * 1e3:.1f} ms, "
                  f"p99 {pct(v, 99) * 1e3:.1f} ms, max {max(v) * 1e3:.1f} ms; before: p50 "
                  f"{pct(before[kind], 50) * 1e3:.1f} ms, p99 {pct(before[kind], 99) * 1e3:.1f} ms")
            self.assertLessEqual(max(v), DOWN_AFTER_S + 0.1,
                                 f"a {kind} took {max(v):.3f} s with a frozen replica")
        wait_until(lambda: agreed(self.members, 3), 60, "the continued member to rejoin")


if __name__ == "__main__":
    vdtest.main()
