"""Network namespaces for end-to-end tests that need separate hosts: a bridge in this namespace
and one namespace per node on a veth to it. Taking a node's veth down cuts it off from the others
without a TCP reset (a partition as a switch or a cable makes it); setting it up heals it.

Namespaces need root and iproute2 (scripts/deps.sh --test installs it); without them the test
fails with the reason, it does not skip.
"""
import os
import secrets
import shutil
import subprocess
import tempfile
import unittest

import vdtest


def run(cmd, check=True):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stdout}")
    return p


class Net:
    """A bridge in this namespace and one network namespace per node on a veth to it, on a /24
    of 10.0.0.0/8 that no interface here uses yet."""

    def __init__(self, count):
        if os.geteuid() != 0:
            raise AssertionError("network namespaces need root (the test does not skip)")
        if shutil.which("ip") is None:
            raise AssertionError("ip is missing (Debian package iproute2)")
        tag = str(os.getpid())
        used = run(["ip", "-4", "-o", "addr", "show"]).stdout
        for k in range(200):
            n = (os.getpid() + k) % 200
            prefix = f"10.{55 + n // 250 % 200}.{n % 250}"
            if f" {prefix}." not in used:
                break
        self.prefix = prefix
        self.bridge = f"vdbr{tag}"[:15]
        self.names = [f"vectord-{tag}-n{i}" for i in range(1, count + 1)]
        self.addrs = [f"{prefix}.{10 + i}" for i in range(1, count + 1)]
        self.created = []
        self.hosts = []  # the bridge side of each node's veth
        try:
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
            self.created.append(("link", self.bridge))
            run(["ip", "addr", "add", f"{prefix}.1/24", "dev", self.bridge])
            run(["ip", "link", "set", self.bridge, "up"])
            for i, (ns, addr) in enumerate(zip(self.names, self.addrs), 1):
                host, peer = f"vdv{tag}h{i}"[:15], f"vdv{tag}p{i}"[:15]
                self.hosts.append(host)
                run(["ip", "netns", "add", ns])
                self.created.append(("netns", ns))
                run(["ip", "link", "add", host, "type", "veth", "peer", "name", peer])
                self.created.append(("link", host))
                run(["ip", "link", "set", peer, "netns", ns])
                run(["ip", "link", "set", host, "master", self.bridge])
                run(["ip", "link", "set", host, "up"])
                run(["ip", "netns", "exec", ns, "ip", "addr", "add", f"{addr}/24", "dev", peer])
                run(["ip", "netns", "exec", ns, "ip", "link", "set", peer, "up"])
                run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise

    def close(self):
        for kind, name in reversed(self.created):
            if kind == "netns":
                run(["ip", "netns", "del", name], check=False)
            else:
                run(["ip", "link", "del", name], check=False)
        self.created = []

    def cut(self, i):
        """Node i (0-based) loses its link: its packets go nowhere, no connection is reset."""
        run(["ip", "link", "set", self.hosts[i], "down"])

    def heal(self, i):
        run(["ip", "link", "set", self.hosts[i], "up"])


class NsNode(vdtest.Node):
    """A vdtest.Node whose process runs in network namespace `netns`, bound to host:port with
    its cluster port beside it (fixed ports: each namespace has its own)."""

    def __init__(self, netns, host, port=6333, cluster_port=6335, **kw):
        super().__init__(host=host, port=port, cluster_port=cluster_port, **kw)
        self.netns = netns
        self.prefix = ["ip", "netns", "exec", netns]


class NetCase(unittest.TestCase):
    """A test whose nodes run in network namespaces (start_nodes): nodes, namespaces and data
    directories are gone after each test, whatever happened."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="vectord-netns-")
        self.net = None
        self.nodes = []

    def tearDown(self):
        try:
            vdtest.stop_nodes(self.nodes)
        finally:
            if self.net:
                self.net.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def start_nodes(self, count, args=()):
        """count nodes, each in its own namespace, with a fresh cluster secret, the others joining
        the first; returns them (also in self.nodes) once started, not yet agreed."""
        self.net = Net(count)
        secret = secrets.token_hex(16)
        first = f"{self.net.addrs[0]}:6335"
        for i, (ns, addr) in enumerate(zip(self.net.names, self.net.addrs)):
            a = ["--cluster-secret", secret, "--insecure"] + list(args)
            if i:
                a += ["--join", first]
            n = NsNode(ns, addr, data_dir=tempfile.mkdtemp(dir=self.tmp), args=a)
            self.nodes.append(n)
            n.start()
        return self.nodes
