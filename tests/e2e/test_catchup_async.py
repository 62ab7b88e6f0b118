"""A lookup miss in a cluster waits (at most 3 s) for a catch-up with the cluster before answering
404; that wait must not hold an HTTP pool thread. Two nodes, the leader killed: the survivor cannot catch
up (no leader), and with one HTTP thread it must still serve other requests meanwhile."""
import threading
import time
import unittest

import vdtest
from vdtest import Node, wait_until


def info(node):
    try:
        st, j = node.request("GET", "/cluster", timeout=5)
    except OSError:
        return None
    return j["result"] if st == 200 else None


class CatchUpDoesNotBlockTest(unittest.TestCase):
    def setUp(self):
        self.nodes = []

    def tearDown(self):
        for n in self.nodes:
            if n.proc is not None:
                n.stop()
            n.cleanup()

    def test_other_requests_served_during_a_slow_catch_up(self):
        a = Node(args=["--http-threads", "2"]).start()
        self.nodes.append(a)
        b = Node(args=["--http-threads", "1", "--join", f"127.0.0.1:{a.cluster_port}"]).start()
        self.nodes.append(b)

        def both_voting():
            r = info(b)
            return r and sum(1 for m in r["nodes"] if m["role"] == "voter") == 2 and \
                r["raft_info"]["is_voter"]
        wait_until(both_voting, 60, "the joining node to become a voter")
        a.create("c", 2, "Dot")
        wait_until(lambda: b.request("GET", "/collections/c")[0] == 200, 30,
                   "the collection to reach the second node")
        a.kill9()  # one of two voters left: no leader, so a catch-up cannot finish

        miss = {}

        def lookup_miss():
            t0 = time.monotonic()
            miss["reply"] = b.request("POST", "/collections/nope/points/search",
                                      {"vector": [1, 2], "limit": 1}, timeout=60)
            miss["secs"] = time.monotonic() - t0
        t = threading.Thread(target=lookup_miss)
        t.start()
        # while that miss waits for the cluster, the node's only HTTP thread serves others
        t_start = time.monotonic()
        served = []
        while t.is_alive() and time.monotonic() - t_start < 1.5:
            t0 = time.monotonic()
            st, _ = b.request("GET", "/collections/c", timeout=30)
            served.append((st, time.monotonic() - t0))
        t.join(60)
        self.assertFalse(t.is_alive())
        st, j = miss["reply"]
        self.assertEqual(st, 503, j)
        self.assertIn("could not confirm", j["status"]["error"])
        self.assertIn("within 3000 ms", j["status"]["error"])
        # the catch-up is bounded by its own 3 s, not the cluster's 10 s request deadline, so a
        # client with a 5 s timeout reads the 503
        self.assertGreater(miss["secs"], 2.5, "the miss did not wait for the cluster at all")
        self.assertLess(miss["secs"], 5.0, "the miss waited past its 3 s bound")
        self.assertGreater(len(served), 5, served)
        self.assertTrue(all(s == 200 for s, _ in served), served)
        worst = max(d for _, d in served)
        print(f"{len(served)} requests served while the miss waited {miss['secs']:.1f} s; "
              f"slowest {worst * 1000:.0f} ms")
        self.assertLess(worst, 0.5, served)
        # the streamed import's begin waits on its pool thread instead, with the same bound
        t0 = time.monotonic()
        st, j = b.request("POST", "/collections/nope/points/import",
                          b'{"id": 1, "vector": [1, 2]}\n', timeout=60)
        secs = time.monotonic() - t0
        self.assertEqual(st, 503, j)
        self.assertIn("could not confirm", j["status"]["error"])
        self.assertGreater(secs, 2.5)
        self.assertLess(secs, 5.0)


if __name__ == "__main__":
    vdtest.main()
