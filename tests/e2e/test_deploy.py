"""The deployment in config/ and docs/deploy.md, checked as far as a machine without systemd as
PID 1 allows:

- `systemd-analyze verify` accepts config/vectord.service (its ExecStart pointed at the binary
  under test) without a word of warning, and the unit says what the deployment relies on
  (Type=notify, the data directory both writable and the configs' data_dir);
- config/vectord.json holds every key docs/configuration.md documents, and vectord accepts it
  and the three node configs of config/cluster/;
- three nodes started with the unit's ExecStart line and the three node configs (data dir,
  addresses, cluster secret and API key digests substituted, the configs written with mode
  0600 as the guide installs them), each in its own network namespace as on three hosts: they
  keep the configs' ports (6333, 6335), bind the wildcard address and reach each other over one
  veth each to a bridge. Each node has a NOTIFY_SOCKET of the test's own: the first datagram is
  READY=1, and /readyz answers 200 the moment it arrives (it is polled before and after); the
  three form a cluster of three voters (GET /cluster on every node), a collection created with
  replication_factor 3 as the guide does shows it on every node, and SIGTERM sends STOPPING=1
  before the node exits 0.

Network namespaces need root; without them, or without systemd-analyze, the test fails with the
reason (scripts/deps.sh --test installs systemd and iproute2).
"""
import hashlib
import json
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import vdtest
from netns import Net, run
from vdtest import SANITIZER_MARKS, agreed, wait_until

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
UNIT = os.path.join(ROOT, "config", "vectord.service")
EXAMPLE = os.path.join(ROOT, "config", "vectord.json")
NODE_CONFIGS = [os.path.join(ROOT, "config", "cluster", f"node{i}.json") for i in (1, 2, 3)]
CONFIG_DOC = os.path.join(ROOT, "docs", "configuration.md")
INSTALLED_CONFIG = "/etc/vectord/vectord.json"  # the config path the unit's ExecStart names
HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]    # the hosts the node configs are written for


def unit_settings(path=UNIT):
    """The unit's settings as {key: [values]} (a key may be given more than once)."""
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;[":
                continue
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


class UnitAndConfigs(unittest.TestCase):
    def test_systemd_analyze_verify(self):
        tool = shutil.which("systemd-analyze")
        self.assertIsNotNone(tool, "systemd-analyze is missing (Debian package systemd; "
                                   "scripts/deps.sh --test installs it)")
        s = unit_settings()
        exec_start = shlex.split(s["ExecStart"][0])
        with tempfile.TemporaryDirectory() as d:
            unit = os.path.join(d, "vectord.service")
            with open(UNIT) as f:
                text = f.read()
            with open(unit, "w") as f:
                f.write(text.replace(exec_start[0], os.path.abspath(vdtest.BINARY)))
            p = run([tool, "verify", unit], check=False)
            self.assertEqual(p.returncode, 0, p.stdout)
            # unknown keys, bad values and the like are warnings with status 0: none is allowed
            self.assertEqual(p.stdout.strip(), "", "systemd-analyze verify warned")

            # the check can fail: a misspelt setting is reported
            with open(unit, "w") as f:
                f.write(text.replace(exec_start[0], os.path.abspath(vdtest.BINARY))
                        .replace("NoNewPrivileges=", "NoNewPrivilege="))
            self.assertIn("NoNewPrivilege", run([tool, "verify", unit], check=False).stdout)

    def test_unit_settings(self):
        s = unit_settings()
        self.assertEqual(s.get("Type"), ["notify"])
        self.assertEqual(s.get("Restart"), ["on-failure"])
        self.assertIn("LimitNOFILE", s)
        self.assertTrue(s.get("User") and s["User"][0] not in ("root", "0"), s.get("User"))
        self.assertEqual(s.get("StateDirectory"), ["vectord"])
        self.assertEqual(s.get("ProtectSystem"), ["strict"])
        self.assertEqual(s.get("NoNewPrivileges"), ["yes"])
        self.assertEqual(s.get("PrivateTmp"), ["yes"])
        # vectord has no reload (no SIGHUP handling): a reload line would do something else
        self.assertNotIn("ExecReload", s)
        writable = " ".join(s.get("ReadWritePaths", [])).split()
        for path in [EXAMPLE] + NODE_CONFIGS:
            with open(path) as f:
                data_dir = json.load(f)["data_dir"]
            self.assertIn(data_dir, writable, f"{path}: data_dir is not in ReadWritePaths")
            self.assertEqual(data_dir, "/var/lib/" + s["StateDirectory"][0])
        self.assertIn(INSTALLED_CONFIG, shlex.split(s["ExecStart"][0]))

    def test_example_config_has_every_documented_key(self):
        documented = set()
        with open(CONFIG_DOC) as f:
            for line in f:
                cols = [c.strip() for c in line.split("|")]
                if len(cols) > 3 and re.fullmatch(r"`[a-z_]+`", cols[2]):
                    documented.add(cols[2].strip("`"))
        self.assertGreater(len(documented), 15, "the key table of configuration.md was not read")
        with open(EXAMPLE) as f:
            example = json.load(f)
        self.assertEqual(set(example), documented)
        for path in NODE_CONFIGS:
            with open(path) as f:
                self.assertLessEqual(set(json.load(f)), documented, path)

    def test_vectord_accepts_the_configs(self):
        # --version exits 0 only after the config file loaded and validated
        for path in [EXAMPLE] + NODE_CONFIGS:
            p = run([vdtest.BINARY, "--config", path, "--version"], check=False)
            self.assertEqual(p.returncode, 0, f"{path}: {p.stdout}")
        # and the check can fail: an unknown key is refused, naming it
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            with open(EXAMPLE) as e:
                j = json.load(e)
            j["replication_factr"] = 3
            json.dump(j, f)
            f.flush()
            p = run([vdtest.BINARY, "--config", f.name, "--version"], check=False)
            self.assertEqual(p.returncode, 2, p.stdout)
            self.assertIn("replication_factr", p.stdout)


class DeployedNode:
    """A node started from the unit's ExecStart line inside its namespace; request() and conn()
    are vdtest.Node's, so vdtest.agreed() reads its GET /cluster."""
    request = vdtest.Node.request
    conn = vdtest.Node.conn

    def __init__(self, argv, netns, host, port, notify_path, log_path, api_key):
        self.host, self.port, self.api_key = host, port, api_key
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(notify_path)
        self.log_path = log_path
        self.log = open(log_path, "ab")
        env = dict(os.environ, NOTIFY_SOCKET=notify_path)
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns] + argv, stdout=self.log,
                                     stderr=self.log, env=env)

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def readyz(self):
        try:
            st, _ = self.request("GET", "/readyz", raw=True, timeout=5)
            return st
        except OSError:
            return None

    def next_notification(self, timeout, between=None):
        """The next datagram on the node's NOTIFY_SOCKET as a list of lines; between() is called
        each time 50 ms pass without one."""
        deadline = time.monotonic() + timeout
        while True:
            r, _, _ = select.select([self.notify], [], [], 0.05)
            if r:
                return self.notify.recv(4096).decode().split("\n")
            if self.proc.poll() is not None:
                raise AssertionError(f"vectord exited with {self.proc.returncode} before "
                                     f"notifying:\n{self.read_log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no notification within {timeout} s:\n{self.read_log()}")
            if between:
                between()

    def wait_ready(self, testcase):
        """Waits for READY=1, polling /readyz meanwhile; /readyz must answer 200 right after."""
        before = []
        msg = self.next_notification(120, lambda: before.append(self.readyz()))
        testcase.assertIn("READY=1", msg, f"first notification is not READY=1: {msg}")
        testcase.assertTrue(any(l.startswith("STATUS=") and str(self.port) in l for l in msg), msg)
        after = self.readyz()
        testcase.assertEqual(after, 200, f"READY=1 sent while /readyz answers {after}")
        # until READY=1, /readyz was unreachable (storage still opening) or already 200
        testcase.assertTrue(all(st in (None, 200) for st in before), before)
        return before

    def stop(self, testcase):
        """SIGTERM: STOPPING=1 arrives, then the node exits 0."""
        self.proc.send_signal(signal.SIGTERM)
        msg = self.next_notification(60) if self.proc.poll() is None else []
        rc = self.proc.wait(timeout=60)
        self.log.close()
        self.notify.close()
        log = self.read_log()
        testcase.assertIn("STOPPING=1", msg, log)
        testcase.assertEqual(rc, 0, log)
        for bad in SANITIZER_MARKS:
            testcase.assertNotIn(bad, log)


class ThreeNodesFromTheConfigs(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="vectord-deploy-")
        self.net = None
        self.nodes = []

    def tearDown(self):
        for n in self.nodes:
            if n.proc.poll() is None:
                n.proc.kill()
                n.proc.wait()
        if self.net:
            self.net.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def node_config(self, i, secret, digests):
        """config/cluster/node<i>.json as the guide installs it: the addresses of this machine's
        namespaces for 10.0.0.x, the secret and the key digests in place of the placeholders,
        the data directory of the test; written with mode 0600."""
        with open(NODE_CONFIGS[i]) as f:
            cfg = json.load(f)
        hostmap = dict(zip(HOSTS, self.net.addrs))
        for k in ("advertise", "join"):
            if k in cfg:
                h, _, p = cfg[k].rpartition(":")
                cfg[k] = f"{hostmap[h]}:{p}"
        self.assertTrue(cfg["cluster_secret"].startswith("REPLACE"), "placeholder secret")
        cfg["cluster_secret"] = secret
        for k in cfg["api_keys"]:
            k["key"] = "sha256:" + digests[k["role"]]
        cfg["data_dir"] = os.path.join(self.tmp, f"node{i + 1}-data")
        path = os.path.join(self.tmp, f"node{i + 1}.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(cfg, f)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        return path, cfg

    def test_three_nodes_notify_and_form_a_cluster(self):
        self.net = Net(3)
        secret = secrets.token_hex(32)
        keys = {"admin": secrets.token_urlsafe(32), "ro": secrets.token_urlsafe(32)}
        digests = {r: hashlib.sha256(k.encode()).hexdigest() for r, k in keys.items()}
        exec_start = shlex.split(unit_settings()["ExecStart"][0])
        for i in range(3):
            path, cfg = self.node_config(i, secret, digests)
            argv = [path if a == INSTALLED_CONFIG else a for a in exec_start]
            argv[0] = os.path.abspath(vdtest.BINARY)
            self.assertIn(path, argv)
            node = DeployedNode(argv, self.net.names[i], self.net.addrs[i], cfg["port"],
                                os.path.join(self.tmp, f"node{i + 1}.notify"),
                                os.path.join(self.tmp, f"node{i + 1}.log"), keys["admin"])
            self.nodes.append(node)
            # one at a time, as the guide says: a node joins a member that answers
            node.wait_ready(self)

        wait_until(lambda: agreed(self.nodes, 3), 90, "three voting members on every node")
        for n in self.nodes:
            st, j = n.request("GET", "/cluster", key=keys["ro"])
            self.assertEqual(st, 200, j)
            self.assertEqual(sorted(m["address"] for m in j["result"]["nodes"]),
                             sorted(f"{a}:6335" for a in self.net.addrs))
            st, j = n.request("GET", "/cluster", key="")
            self.assertEqual(st, 401, j)

        # collections with replication factor 3, as the guide creates them, through a follower
        body = {"vectors": {"size": 4, "distance": "Cosine"}, "replication_factor": 3}
        st, j = self.nodes[2].request("PUT", "/collections/docs", body, key=keys["ro"])
        self.assertEqual(st, 403, j)
        st, j = self.nodes[2].request("PUT", "/collections/docs", body)
        self.assertEqual(st, 200, j)
        for n in self.nodes:
            st, j = n.request("GET", "/collections/docs")
            self.assertEqual(st, 200, j)
            self.assertEqual(j["result"]["config"]["params"]["replication_factor"], 3, j)

        for n in self.nodes:
            n.stop(self)


if __name__ == "__main__":
    vdtest.main()
