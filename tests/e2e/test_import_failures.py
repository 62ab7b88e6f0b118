"""Streamed NDJSON import when a batch fails to commit: the reply counts only committed points."""
import http.client
import json

import vdtest
from vdtest import NodeTest, wait_until

BATCH = 256  # the import's batch size: a chunk of exactly this many lines commits on its own


def lines(start, n):
    return "".join(json.dumps({"id": i, "vector": [float(i), 1.0]}) + "\n"
                   for i in range(start, start + n)).encode()


class ImportFailureTest(NodeTest):
    def test_failed_batch_is_not_counted(self):
        n = self.node
        n.create("imp", 2, "Euclid")
        c = http.client.HTTPConnection(n.host, n.port, timeout=60)
        c.putrequest("POST", "/collections/imp/points/import")
        c.putheader("Transfer-Encoding", "chunked")
        c.putheader("Content-Type", "application/x-ndjson")
        c.endheaders()

        def chunk(b):
            c.send(b"%x\r\n%s\r\n" % (len(b), b))

        chunk(lines(0, BATCH))
        wait_until(lambda: n.ok("GET", "/collections/imp")["points_count"] == BATCH, 30,
                   "the first batch to commit")
        # the collection goes away under the import: the next batch cannot commit
        n.ok("DELETE", "/collections/imp")
        chunk(lines(BATCH, BATCH))
        c.send(b"0\r\n\r\n")
        r = c.getresponse()
        body = json.loads(r.read())
        c.close()
        self.assertEqual(r.status, 404, body)
        msg = body["status"]["error"]
        self.assertIn(f"import stopped after {BATCH} points", msg)


if __name__ == "__main__":
    vdtest.main()
