"""Helpers for end-to-end tests: start real vectord processes and talk to them over HTTP.

Only the Python standard library (and numpy where a test says so) is used.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

BINARY = os.environ.get("VECTORD_BIN", "")
SCALE_SMALL = os.environ.get("VD_TEST_SCALE") == "small"


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(cond, timeout=30.0, what="condition"):
    """Polls cond() until it returns a true value; fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class Node:
    """One vectord process with its own data directory."""

    def __init__(self, data_dir=None, args=(), env=None, host="127.0.0.1", port=None,
                 cluster_port=None):
        self.own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="vectord-e2e-")
        self.host = host
        self.port = port or free_port(host)
        self.cluster_port = cluster_port or free_port(host)
        self.args = list(args)
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.log_path = os.path.join(self.data_dir, "..", os.path.basename(self.data_dir) + ".log")
        self.api_key = None
        self.prefix = []  # a command the process runs under (e.g. ip netns exec NS)

    def start(self, wait=True):
        cmd = self.prefix + [BINARY, "--data-dir", self.data_dir, "--bind", self.host, "--port", str(self.port),
               "--cluster-port", str(self.cluster_port), "--log-level", "warn"] + self.args
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=self.env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=60):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"vectord exited with {self.proc.returncode}:\n{self.read_log()}")
            try:
                st, _ = self.request("GET", "/readyz", raw=True)
                return st == 200
            except OSError:
                return False
        wait_until(ready, timeout, "vectord to become ready")

    def read_log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("vectord did not stop within %ss" % timeout)
        rc = self.proc.returncode if self.proc else 0
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
        return rc

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        self.log.close()

    def cleanup(self):
        if self.proc:
            self.stop()
        if self.own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            try:
                os.unlink(self.log_path)
            except OSError:
                pass

    def conn(self, timeout=60):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, raw=False, key=None, timeout=120):
        """Returns (status, parsed JSON or raw bytes)."""
        c = self.conn(timeout)
        h = {}
        if body is not None and not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        k = key if key is not None else self.api_key
        if k:
            h["api-key"] = k
        h.update(headers or {})
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
        finally:
            c.close()
        if raw:
            return r.status, data
        try:
            return r.status, json.loads(data) if data else None
        except ValueError:
            raise AssertionError(f"{method} {path}: reply is not JSON: {data[:200]!r}")

    # conveniences that assert success
    def ok(self, method, path, body=None, **kw):
        st, j = self.request(method, path, body, **kw)
        if st != 200:
            raise AssertionError(f"{method} {path} -> {st}: {j}")
        assert j["status"] == "ok", j
        return j["result"]

    def create(self, name, size, distance="Cosine", **extra):
        body = {"vectors": {"size": size, "distance": distance}}
        body.update(extra)
        return self.ok("PUT", f"/collections/{name}", body)


SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "ThreadSanitizer")


def stop_nodes(nodes):
    """Stops every node still running (SIGTERM) and removes every node's data; then fails if one
    did not exit with 0 or its log holds a sanitizer report."""
    problems = []
    for n in nodes:
        if n.proc is None:
            n.cleanup()
            continue
        rc = n.stop()
        log = n.read_log()
        if rc != 0:
            problems.append(f"node on {n.port} exited with {rc} on SIGTERM:\n{log}")
        if any(b in log for b in SANITIZER_MARKS):
            problems.append(f"sanitizer report in the log of the node on {n.port}:\n{log}")
        n.cleanup()
    if problems:
        raise AssertionError("\n".join(problems))


class NodeTest(unittest.TestCase):
    """A test case with one fresh node per test class."""
    node_args = ()
    node_env = None

    @classmethod
    def setUpClass(cls):
        cls.node = Node(args=cls.node_args, env=cls.node_env).start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.node.stop()
        log = cls.node.read_log()
        cls.node.cleanup()
        if rc != 0:
            raise AssertionError(f"vectord exited with {rc} on SIGTERM:\n{log}")
        for bad in SANITIZER_MARKS:
            if bad in log:
                raise AssertionError(f"sanitizer report in the server log:\n{log}")

    def assertError(self, st_j, status, fragment=None):
        st, j = st_j
        self.assertEqual(st, status, j)
        self.assertIsInstance(j, dict, j)
        self.assertIn("status", j)
        self.assertIsInstance(j["status"], dict, j)
        self.assertIn("error", j["status"])
        if fragment:
            self.assertIn(fragment.lower(), j["status"]["error"].lower())


class KeyedNodeTest(NodeTest):
    """One node with an admin, an rw (stored as its SHA-256 digest) and an ro key from a config
    file; the node's requests use the admin key, and collection 'a' (2-d, Dot) exists."""
    keys = {"admin": "admin-key-123456", "rw": "rw-key-1234567", "ro": "ro-key-1234567"}

    @classmethod
    def setUpClass(cls):
        import hashlib
        cfg = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump({"api_keys": [
            {"key": cls.keys["admin"], "role": "admin"},
            {"key": "sha256:" + hashlib.sha256(cls.keys["rw"].encode()).hexdigest(), "role": "rw"},
            {"key": cls.keys["ro"], "role": "ro"}]}, cfg)
        cfg.close()
        cls.node_args = ["--config", cfg.name]
        super().setUpClass()
        cls.node.api_key = cls.keys["admin"]
        cls.node.create("a", 2, "Dot")


def info(node, timeout=2.0):
    """GET /cluster result of node, or None when it does not answer (down, starting)."""
    if node.proc is None:
        return None
    try:
        st, j = node.request("GET", "/cluster", timeout=timeout)
    except (OSError, AssertionError):
        return None
    return j["result"] if st == 200 else None


def agreed(nodes, voters):
    """When every node in nodes reports the same leader and term, that leader among nodes, and
    `voters` voting members all up: returns (leader_id, term), else None."""
    seen = []
    for n in nodes:
        r = info(n)
        if r is None:
            return None
        seen.append(r)
    leaders = {r["raft_info"]["leader"] for r in seen}
    terms = {r["raft_info"]["term"] for r in seen}
    if len(leaders) != 1 or len(terms) != 1 or None in leaders:
        return None
    leader = leaders.pop()
    if [r["raft_info"]["role"] for r in seen].count("Leader") != 1:
        return None
    if leader not in {r["peer_id"] for r in seen}:
        return None
    for r in seen:
        vs = [m for m in r["nodes"] if m["role"] == "voter"]
        if len(vs) != voters or any(m["state"] != "up" for m in vs):
            return None
        if not all(r["raft_info"]["is_voter"] for r in seen):
            return None
    return leader, terms.pop()


def check_log(testcase, node):
    log = node.read_log()
    for bad in SANITIZER_MARKS:
        testcase.assertNotIn(bad, log, f"sanitizer report in a server log:\n{log}")


class ClusterCase(unittest.TestCase):
    """Nodes started by a test class are stopped (SIGTERM, exit 0, clean log) at its end."""
    nodes = []

    @classmethod
    def make(cls, join=None, args=(), env=None):
        a = list(args)
        if join is not None:
            a += ["--join", f"127.0.0.1:{join.cluster_port}"]
        n = Node(args=a, env=env)
        cls.nodes.append(n)
        return n

    @classmethod
    def start_cluster(cls, count=3, args=()):
        """Starts count nodes, the others joining the first, as cls.members, and returns them once
        every one reports the same leader and count voting members up (GET /cluster): a joining
        node is a non-voter until it has caught up, and only then is the cluster fault-tolerant.
        When a node does not start or the cluster does not form, the nodes started so far are
        stopped before the failure is raised (tearDownClass does not run after setUpClass fails)."""
        cls.nodes = []
        try:
            first = cls.make(args=args).start()
            cls.members = [first] + [cls.make(join=first, args=args).start()
                                     for _ in range(count - 1)]
            wait_until(lambda: agreed(cls.members, count), 60,
                       f"{count} nodes to form a cluster of {count} voters")
        except BaseException:
            nodes, cls.nodes = cls.nodes, []
            try:
                stop_nodes(nodes)
            except AssertionError as e:  # the first failure is the one raised; this one is shown
                print(e, file=sys.stderr)
            raise
        return cls.members

    @classmethod
    def tearDownClass(cls):
        nodes, cls.nodes = cls.nodes, []
        stop_nodes(nodes)

    def by_id(self, nodes, ident):
        for n in nodes:
            if n.proc is not None and info(n) and info(n)["peer_id"] == ident:
                return n
        return None

    def assertError(self, st_j, statuses, fragment=None):
        st, j = st_j
        if isinstance(statuses, int):
            statuses = (statuses,)
        self.assertIn(st, statuses, j)
        self.assertIsInstance(j, dict, j)
        self.assertIsInstance(j.get("status"), dict, j)
        self.assertIn("error", j["status"])
        if fragment:
            self.assertIn(fragment.lower(), j["status"]["error"].lower())


def main():
    global BINARY
    args = sys.argv[1:]
    if "--binary" in args:
        i = args.index("--binary")
        BINARY = args[i + 1]
        del args[i:i + 2]
    if not BINARY or not os.path.exists(BINARY):
        print("vectord binary not found; pass --binary PATH or set VECTORD_BIN", file=sys.stderr)
        sys.exit(2)
    os.environ["VECTORD_BIN"] = BINARY
    prog = unittest.main(argv=[sys.argv[0]] + args, exit=False, verbosity=2)
    r = prog.result
    failed = len(r.failures) + len(r.errors)
    print(f"{r.testsRun - failed - len(r.skipped)} passed, {failed} failed, {len(r.skipped)} skipped")
    sys.exit(1 if failed or r.testsRun == 0 else 0)
