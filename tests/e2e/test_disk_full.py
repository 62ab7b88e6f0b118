"""A full disk: writes fail with 507 and a clear message, nothing acknowledged is lost or
corrupted, and writes resume without a restart once space is freed. Runs on a small tmpfs the
test mounts (as root); where it cannot mount one the test fails, since it would prove nothing."""
import os
import subprocess
import tempfile
import unittest

import vdtest
from vdtest import Node

DIM = 64


def points(start, n):
    pad = "x" * 2000  # payload bytes fill the disk faster than vectors
    return {"points": [{"id": i, "vector": [float((i * 7 + d) % 13) + 1.0 for d in range(DIM)],
                        "payload": {"i": i, "pad": pad}} for i in range(start, start + n)]}


class DiskFullTest(unittest.TestCase):
    def setUp(self):
        self.base = tempfile.mkdtemp(prefix="vectord-full-")
        self.mnt = os.path.join(self.base, "mnt")
        os.mkdir(self.mnt)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", self.mnt],
                           capture_output=True, text=True)
        if r.returncode != 0:
            self.fail(f"cannot mount a tmpfs (the test needs root): {r.stderr.strip()}")
        self.node = None

    def tearDown(self):
        if self.node:
            self.node.stop()
        subprocess.run(["umount", self.mnt])
        subprocess.run(["rm", "-rf", self.base])

    def test_full_disk_then_space_freed(self):
        # spare space the test gives back later, as an operator deleting files would
        filler = os.path.join(self.mnt, "filler")
        with open(filler, "wb") as f:
            f.write(b"\0" * (2 << 20))
        # the data directory is the mount itself: the log goes next to it, outside
        n = self.node = Node(data_dir=self.mnt).start()
        n.create("full", DIM, "Euclid")
        acked = 0
        status, body = 200, None
        for _ in range(500):
            status, body = n.request("PUT", "/collections/full/points?wait=true",
                                     points(acked, 50))
            if status != 200:
                break
            acked += 50
        self.assertIn(status, (503, 507), body)
        self.assertGreater(acked, 0)
        self.assertIn("full", body["status"]["error"].lower(), body)
        # reads still work and see every acknowledged point, and only those
        self.assertEqual(n.ok("POST", "/collections/full/points/count", {"exact": True})["count"],
                         acked)
        # still full: still refused, still clearly
        st, body = n.request("PUT", "/collections/full/points?wait=true", points(acked, 50))
        self.assertIn(st, (503, 507), body)

        os.unlink(filler)
        # the same process writes again
        n.ok("PUT", "/collections/full/points?wait=true", points(acked, 50))
        acked += 50
        self.assertEqual(n.ok("POST", "/collections/full/points/count", {"exact": True})["count"],
                         acked)
        got = n.ok("POST", "/collections/full/points", {"ids": [0, acked - 1], "with_payload": True})
        self.assertEqual(sorted(p["id"] for p in got), [0, acked - 1])

        # and a restart finds storage intact, every acknowledged point in it
        self.assertEqual(n.stop(), 0)
        n.start()
        self.assertEqual(n.ok("POST", "/collections/full/points/count", {"exact": True})["count"],
                         acked)
        res = n.ok("POST", "/collections/full/points/search",
                   {"vector": points(acked - 1, 1)["points"][0]["vector"], "limit": 1})
        self.assertEqual(res[0]["score"], 0.0)


if __name__ == "__main__":
    vdtest.main()
