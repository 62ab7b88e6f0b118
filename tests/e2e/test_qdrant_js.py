"""Qdrant's official JavaScript client (@qdrant/js-client-rest from npm) works against vectord
unchanged: create, upsert, retrieve, search, query, scroll, count, payload, delete."""
import os
import shutil
import subprocess

import vdtest
from vdtest import NodeTest

HERE = os.path.dirname(os.path.abspath(__file__))
JS = os.path.join(HERE, "js")


class QdrantJsClientTest(NodeTest):
    def test_client(self):
        node = shutil.which("node")
        self.assertIsNotNone(node, "node is not installed (scripts/deps.sh --test installs it)")
        self.assertTrue(os.path.isdir(os.path.join(JS, "node_modules", "@qdrant", "js-client-rest")),
                        "run: npm ci --prefix tests/e2e/js (scripts/deps.sh --test does)")
        url = f"http://{self.node.host}:{self.node.port}"
        p = subprocess.run([node, os.path.join(JS, "client.mjs"), url], capture_output=True,
                           timeout=300, text=True)
        print(p.stdout)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)


if __name__ == "__main__":
    vdtest.main()
