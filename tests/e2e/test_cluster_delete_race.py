"""A collection deleted while data requests are in flight, with real processes: three nodes, RF 3.
Clients keep writing, reading, searching, scrolling and counting through every node while the
collection is deleted through one of them. Raft applies the deletion on each node at its own
moment, so a request that began on a node still holding the collection reaches replicas that
have deleted it; they answer gone, and the client must hear 404 with Qdrant's not-found JSON,
never a 503 (too few replicas) or a 500. Several rounds of create, load, delete make the window
likely to be hit; every answer is checked, so one wrong one fails the test.

Every wait polls a condition with a deadline; nothing sleeps for a fixed time to synchronise.
"""
import threading
import time

import vdtest
from vdtest import ClusterCase, wait_until

COLL = "race"
DIM = 4
ROUNDS = 6


def vec(i):
    return [float(i % 7) + 1.0, float(i % 5), 1.0, float(i % 3)]


def ops(coll):
    """The data endpoints a client keeps calling: (name, method, path, body)."""
    base = f"/collections/{coll}/points"
    return [
        ("upsert", "PUT", f"{base}?wait=true",
         {"points": [{"id": i, "vector": vec(i), "payload": {"k": i % 3}} for i in range(8)]}),
        ("get", "GET", f"{base}/3", None),
        ("retrieve", "POST", base, {"ids": [1, 2, 3, 4], "with_payload": True}),
        ("search", "POST", f"{base}/search", {"vector": vec(5), "limit": 5}),
        ("scroll", "POST", f"{base}/scroll", {"limit": 10, "with_payload": True}),
        ("count", "POST", f"{base}/count", {"exact": True}),
        ("delete", "POST", f"{base}/delete?wait=true", {"points": [7]}),
        ("payload", "POST", f"{base}/payload?wait=true", {"payload": {"x": 1}, "points": [2]}),
    ]


class DeleteRaceTest(ClusterCase):
    @classmethod
    def setUpClass(cls):
        cls.start_cluster(3, args=["--replication-factor", "3"])

    def wait_everywhere(self, present):
        for n in self.members:
            wait_until(lambda: (n.request("GET", f"/collections/{COLL}")[0] == 200) == present,
                       30, f"collection {'on' if present else 'gone from'} port {n.port}")

    def test_delete_under_load_answers_404_never_503(self):
        seen = {}  # (op, status) -> count
        bad = []
        lock = threading.Lock()
        for rnd in range(ROUNDS):
            self.members[0].create(COLL, DIM, "Dot")
            self.wait_everywhere(True)
            self.members[rnd % 3].ok("PUT", f"/collections/{COLL}/points?wait=true",
                                    {"points": [{"id": i, "vector": vec(i)} for i in range(40)]})
            stop = threading.Event()
            answered = [0]

            def client(node, op):
                name, method, path, body = op
                gone_in_row = 0
                while not stop.is_set() and gone_in_row < 3:
                    try:
                        st, j = node.request(method, path, body, timeout=30)
                    except Exception as e:  # a reset or a hang is as wrong as a 503
                        with lock:
                            bad.append((name, node.port, "no answer", repr(e)))
                        return
                    with lock:
                        seen[(name, st)] = seen.get((name, st), 0) + 1
                        answered[0] += 1
                        if st == 404:
                            err = (j or {}).get("status", {})
                            msg = err.get("error", "") if isinstance(err, dict) else ""
                            if "not found" not in msg.lower() or COLL not in msg:
                                bad.append((name, node.port, st, j))
                        elif st != 200:
                            bad.append((name, node.port, st, j))
                    gone_in_row = gone_in_row + 1 if st == 404 else 0

            threads = [threading.Thread(target=client, args=(n, op), daemon=True)
                       for n in self.members for op in ops(COLL)]
            for t in threads:
                t.start()
            # the load runs before the deletion: at least one answer per client
            wait_until(lambda: answered[0] >= 2 * len(threads), 60, "the load to run")
            st, j = self.members[(rnd + 1) % 3].request("DELETE", f"/collections/{COLL}")
            self.assertEqual(st, 200, j)
            deadline = time.monotonic() + 60
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            stop.set()
            for t in threads:
                t.join(30)
            self.assertFalse(any(t.is_alive() for t in threads), "a client hangs")
            self.wait_everywhere(False)
        print("answers (endpoint, status): count:", sorted(seen.items()))
        self.assertEqual(bad, [], f"wrong answers around a deletion: {bad[:10]}")
        # every endpoint both worked and was told the collection is gone
        for name, _, _, _ in ops(COLL):
            self.assertGreater(seen.get((name, 200), 0), 0, name)
            self.assertGreater(seen.get((name, 404), 0), 0, name)


if __name__ == "__main__":
    vdtest.main()
