"""Cluster metadata over real processes: forming, collection changes through any node, leader
failover, restart and catch-up, membership changes under load, node identity, bad input, payload
index declarations reaching every node, and the cluster secret.

Every wait polls a condition with a deadline; nothing sleeps for a fixed time to synchronise.
"""
import hashlib
import hmac
import json
import os
import random
import socket
import struct
import tempfile
import threading
import time

import vdtest
from vdtest import ClusterCase, agreed, info, wait_until

VEC = {"vectors": {"size": 4, "distance": "Dot"}}


def eventually_found(testcase, node, path, timeout=30):
    """GET path on node until 200. A 503 (the node could not confirm yet) is retried; a 404 is a
    failure: a node must never report a committed collection missing."""
    def found():
        st, j = node.request("GET", path, timeout=10)
        testcase.assertIn(st, (200, 503), f"GET {path} on {node.port}: {st} {j}")
        return st == 200
    wait_until(found, timeout, f"GET {path} on the node on port {node.port}")


def peer_id(node):
    return info(node)["peer_id"]


class ThreeNodeTest(ClusterCase):
    """One cluster for the whole class; tests run in name order and build on each other."""

    @classmethod
    def setUpClass(cls):
        cls.n1, cls.n2, cls.n3 = cls.start_cluster(3)

    def live(self):
        return [n for n in self.members if n.proc is not None]

    def leader_and_followers(self):
        leader_id, _ = wait_until(lambda: agreed(self.live(), len(self.members)), 30,
                                  "the cluster to agree on a leader")
        leader = self.by_id(self.live(), leader_id)
        return leader, [n for n in self.live() if n is not leader]

    def test_01_formed(self):
        leader_id, term = wait_until(lambda: agreed(self.members, 3), 60,
                                     "three nodes to form a cluster")
        ids = set()
        for n in self.members:
            r = info(n)
            self.assertEqual(r["status"], "enabled")
            self.assertEqual(r["raft_info"]["leader"], leader_id)
            self.assertEqual(r["raft_info"]["term"], term)
            self.assertIn(r["raft_info"]["role"], ("Leader", "Follower"))
            self.assertEqual(r["consensus_thread_status"]["consensus_thread_status"], "working")
            self.assertEqual(len(r["peers"]), 3, r)
            for pid, p in r["peers"].items():
                self.assertTrue(p["uri"].startswith("http://127.0.0.1:"), p)
            self.assertEqual(len(r["nodes"]), 3, r)
            mine = [m for m in r["nodes"] if m["id"] == r["peer_id"]]
            self.assertEqual(len(mine), 1, r)
            self.assertEqual(mine[0]["rest_address"], f"127.0.0.1:{n.port}")
            self.assertEqual(mine[0]["address"], f"127.0.0.1:{n.cluster_port}")
            self.assertEqual([m["id"] for m in r["nodes"] if m["leader"]], [leader_id])
            ids.add(r["peer_id"])
        self.assertEqual(len(ids), 3)

    def test_02_create_through_follower(self):
        leader, followers = self.leader_and_followers()
        f = followers[0]
        self.assertTrue(f.ok("PUT", "/collections/via_follower", VEC))
        # the follower applied it before answering; the others catch up on a miss before a 404
        for n in self.members:
            info_ = n.ok("GET", "/collections/via_follower")
            self.assertEqual(info_["config"]["params"]["vectors"], {"size": 4, "distance": "Dot"})
            self.assertEqual(n.ok("GET", "/collections/via_follower/exists"), {"exists": True})
        # and it is listed everywhere once applied
        for n in self.members:
            wait_until(lambda: "via_follower" in
                       [c["name"] for c in n.ok("GET", "/collections")["collections"]],
                       10, "the collection to be listed on every node")
        # a collection nobody created is still 404 / false on every node
        for n in self.members:
            self.assertError(n.request("GET", "/collections/never_made"), 404, "not found")
            self.assertEqual(n.ok("GET", "/collections/never_made/exists"), {"exists": False})

    def test_03_conflict_through_another_node(self):
        leader, followers = self.leader_and_followers()
        followers[0].ok("PUT", "/collections/taken", VEC)
        for n in (leader, followers[-1]):
            self.assertError(n.request("PUT", "/collections/taken", VEC), 409, "exists")

    def test_03b_replication_factor_against_members(self):
        # every node knows the three members (test_01); a replication factor above them is a
        # 422 through any node and nothing is created; three is accepted and reported back
        leader, followers = self.leader_and_followers()
        for n in (leader, followers[0]):
            self.assertError(n.request("PUT", "/collections/too_many",
                                       dict(VEC, replication_factor=4)),
                             422, "replication_factor: value 4 invalid, the cluster has 3 members")
        for n in self.members:
            self.assertEqual(n.ok("GET", "/collections/too_many/exists"), {"exists": False})
        followers[-1].ok("PUT", "/collections/rf3", dict(VEC, replication_factor=3))
        for n in self.members:
            params = n.ok("GET", "/collections/rf3")["config"]["params"]
            self.assertEqual(params["replication_factor"], 3)
            self.assertEqual(params["write_consistency_factor"], 2)
        # where the collection lives, in Qdrant's shape: this node's copy is the local shard,
        # every other member a remote replica, all active
        ids = {peer_id(n) for n in self.members}
        for n in self.members:
            me = peer_id(n)
            r = n.ok("GET", "/collections/rf3/cluster")
            self.assertEqual(r["peer_id"], me)
            self.assertEqual(r["shard_count"], 1)
            self.assertEqual(r["local_shards"],
                             [{"shard_id": 0, "points_count": 0, "state": "Active"}])
            self.assertEqual(sorted(x["peer_id"] for x in r["remote_shards"]), sorted(ids - {me}))
            self.assertTrue(all(x["state"] == "Active" and x["shard_id"] == 0
                                for x in r["remote_shards"]), r)
            self.assertEqual(r["shard_transfers"], [])
            self.assertError(n.request("GET", "/collections/too_many/cluster"), 404)
        n = self.members[0]
        n.ok("PUT", "/collections/rf3/points?wait=true",
             {"points": [{"id": i, "vector": [1, 0, 0, 0]} for i in range(3)]})
        self.assertEqual(n.ok("GET", "/collections/rf3/cluster")["local_shards"][0]["points_count"],
                         3)

    def test_04_delete_through_follower(self):
        leader, followers = self.leader_and_followers()
        leader.ok("PUT", "/collections/doomed", VEC)
        self.assertTrue(followers[-1].ok("DELETE", "/collections/doomed"))
        for n in self.members:
            self.assertError(n.request("GET", "/collections/doomed"), 404)
            self.assertEqual(n.ok("GET", "/collections/doomed/exists"), {"exists": False})
        # gone everywhere: a second delete, through another node, answers false (as Qdrant)
        self.assertIs(followers[0].ok("DELETE", "/collections/doomed"), False)
        # the name is free again, through any node
        followers[0].ok("PUT", "/collections/doomed", VEC)
        for n in self.members:
            self.assertEqual(n.ok("GET", "/collections/doomed")["points_count"], 0)

    def test_05_bad_input(self):
        n = self.live()[0]
        bad_posts = [
            (b"", 400, None),
            (b"{", 400, None),
            (b"[]", 400, None),
            ({}, 400, "address"),
            ({"address": None}, 400, "address"),
            ({"address": 6335}, 400, "address"),
            ({"address": ["127.0.0.1:6335"]}, 400, "address"),
            ({"address": ""}, 400, "address"),
            ({"address": "127.0.0.1"}, 400, "port"),
            ({"address": "127.0.0.1:"}, 400, "port"),
            ({"address": ":6335"}, 400, "host"),
            ({"address": "127.0.0.1:0"}, 400, "port"),
            ({"address": "127.0.0.1:65536"}, 400, "port"),
            ({"address": "127.0.0.1:-1"}, 400, "port"),
            ({"address": "127.0.0.1:63a"}, 400, "port"),
            ({"address": "::1:6335"}, 400, "ipv6"),
            ({"address": "[::1:6335"}, 400, "ipv6"),
            ({"address": "[zz]:6335"}, 400, "ipv6"),
            ({"address": "bad host:6335"}, 400, "host"),
            ({"address": "a" * 300 + ":1"}, 400, "address"),
        ]
        for body, status, frag in bad_posts:
            with self.subTest(body=body):
                self.assertError(n.request("POST", "/cluster/nodes", body), status, frag)
        for ident in ("abc", "-1", "1.5", "18446744073709551616", "99999999999999999999",
                      "0x10", "%20", "01"):
            with self.subTest(id=ident):
                self.assertError(n.request("DELETE", f"/cluster/nodes/{ident}"), 400, "node id")
        # a well-formed id nobody has
        ids = {m["id"] for m in info(n)["nodes"]}
        ghost = next(i for i in (18446744073709551615, 1, 2, 3) if i not in ids)
        self.assertError(n.request("DELETE", f"/cluster/nodes/{ghost}"), 404)
        # adding an existing member is a conflict or a refusal, never a success
        st, j = n.request("POST", "/cluster/nodes",
                          {"address": f"127.0.0.1:{self.n2.cluster_port}"})
        self.assertIn(st, (400, 409), j)
        # wrong methods
        self.assertEqual(n.request("PUT", "/cluster")[0], 405)
        self.assertEqual(n.request("GET", "/cluster/nodes/1")[0], 405)
        # nothing changed
        wait_until(lambda: agreed(self.members, 3), 30, "the cluster to be unchanged")

    def test_06_failover_restart_and_identity(self):
        leader, followers = self.leader_and_followers()
        old_id = peer_id(leader)
        ids_before = {n.port: peer_id(n) for n in self.members}
        t0 = time.monotonic()
        leader.kill9()
        # a create sent while there is no leader waits through the election instead of failing
        during = {}
        th = threading.Thread(target=lambda: during.update(
            r=followers[0].request("PUT", "/collections/during_election", VEC, timeout=30)))
        th.start()

        def new_leader():
            seen = [info(n, timeout=0.5) for n in followers]
            if any(s is None for s in seen):
                return None
            leaders = {s["raft_info"]["leader"] for s in seen}
            if len(leaders) != 1 or None in leaders or old_id in leaders:
                return None
            lid = leaders.pop()
            if lid not in {s["peer_id"] for s in seen}:
                return None
            return lid

        new_id = wait_until(new_leader, 30, "a new leader after the old one was killed")
        failover = time.monotonic() - t0
        print(f"\nfailover: new leader agreed by both survivors {failover * 1000:.0f} ms "
              f"after kill -9 of the leader")
        self.assertLess(failover, 3.0)
        self.assertNotEqual(new_id, old_id)
        th.join(30)
        self.assertEqual(during["r"][0], 200, during)
        for n in followers:
            n.ok("GET", "/collections/during_election")

        # creates through either survivor keep working
        for i, n in enumerate(followers):
            n.ok("PUT", f"/collections/while_down_{i}", VEC)
        for n in followers:
            for i in range(len(followers)):
                n.ok("GET", f"/collections/while_down_{i}")
        # the killed node seen as down by the survivors, and as a dead replica
        wait_until(lambda: all(
            [m for m in info(n)["nodes"] if m["id"] == old_id][0]["state"] == "down"
            for n in followers), 30, "the killed node to be shown down")
        for n in followers:
            remote = {r["peer_id"]: r["state"]
                      for r in n.ok("GET", "/collections/while_down_0/cluster")["remote_shards"]}
            self.assertEqual(remote[old_id], "Dead", remote)

        # restart from its data dir: same identity, catches up with what it missed
        leader.start()
        self.assertEqual(peer_id(leader), old_id)
        for i in range(len(followers)):
            eventually_found(self, leader, f"/collections/while_down_{i}")
        wait_until(lambda: agreed(self.members, 3), 30, "the restarted node to rejoin")
        # every node keeps its id across a graceful restart too
        n = followers[0]
        self.assertEqual(n.stop(), 0)
        n.start()
        wait_until(lambda: agreed(self.members, 3), 30, "the cluster after a graceful restart")
        self.assertEqual({m.port: peer_id(m) for m in self.members}, ids_before)

    def test_07_membership_under_load(self):
        cls = type(self)
        leader, followers = self.leader_and_followers()
        # membership changes are refused while a collection holds points (see
        # test_cluster_membership_data.py): test_03b's points go with their collection
        leader.ok("DELETE", "/collections/rf3")
        for m in self.members:
            wait_until(lambda m=m: info(m)["membership_changes"]["allowed"], 30,
                       "membership changes allowed again")
        stop = threading.Event()
        lock = threading.Lock()
        targets = list(self.members)
        made, errors = [], []

        def client():
            rnd = random.Random(7)
            i = 0
            while not stop.is_set():
                with lock:
                    n = rnd.choice(targets)
                name = f"load_{i}"
                try:
                    st, j = n.request("PUT", f"/collections/{name}", VEC, timeout=30)
                except OSError as e:
                    errors.append(f"{name} via {n.port}: {e}")
                    continue
                if st != 200:
                    errors.append(f"{name} via {n.port}: {st} {j}")
                else:
                    made.append(name)
                i += 1
                stop.wait(0.02)  # pacing, so the run creates hundreds of collections, not more

        t = threading.Thread(target=client)
        t.start()
        try:
            wait_until(lambda: len(made) >= 3, 30, "the client to get going")
            # a fourth node through --join
            n4 = cls.make(join=followers[0]).start()
            self.members.append(n4)
            wait_until(lambda: agreed(self.members, 4), 60, "the fourth node to become a voter")
            with lock:
                targets.append(n4)
            # a fifth, fresh and alone, added through POST /cluster/nodes
            n5 = cls.make().start()
            # alone, it refuses to remove its only voter
            self.assertError(n5.request("DELETE", f"/cluster/nodes/{peer_id(n5)}"), 400, "last")
            st, j = leader.request("POST", "/cluster/nodes",
                                   {"address": f"127.0.0.1:{n5.cluster_port}"}, timeout=60)
            self.assertEqual(st, 200, j)
            self.members.append(n5)
            wait_until(lambda: agreed(self.members, 5), 60, "the fifth node to become a voter")
            with lock:
                targets.append(n5)
            mark = len(made)
            wait_until(lambda: len(made) >= mark + 3, 30, "creates to continue after the adds")
            # remove a follower (not the node we ask)
            lid, _ = agreed(self.members, 5) or wait_until(lambda: agreed(self.members, 5), 30,
                                                           "agreement")
            victim = next(n for n in self.members if peer_id(n) != lid and n is not leader)
            vid = peer_id(victim)
            with lock:
                targets.remove(victim)
            # let a request the client may have sent to the victim just before finish first
            mark = len(made) + len(errors)
            wait_until(lambda: len(made) + len(errors) >= mark + 2, 30, "in-flight creates")
            self.members.remove(victim)
            asked = next(n for n in self.members if peer_id(n) == lid)
            st, j = asked.request("DELETE", f"/cluster/nodes/{vid}", timeout=60)
            self.assertEqual(st, 200, j)
            wait_until(lambda: agreed(self.members, 4), 60, "four voters after the removal")
            # the removal is applied on the node asked before it answers, on the others soon
            wait_until(lambda: all(vid not in [m["id"] for m in info(n)["nodes"]] and
                                   str(vid) not in info(n)["peers"] for n in self.members),
                       30, "every member to forget the removed node")
            self.assertError(asked.request("DELETE", f"/cluster/nodes/{vid}"), 404)
            mark = len(made)
            wait_until(lambda: len(made) >= mark + 3, 30, "creates to continue after removal")
        finally:
            stop.set()
            t.join(120)
        self.assertEqual(errors, [])
        print(f"\nmembership changes: {len(made)} collections created meanwhile, no error")
        for n in self.members:
            names = {c["name"] for c in n.ok("GET", "/collections")["collections"]}
            for name in set(made) - names:  # not applied yet: a lookup catches up first
                eventually_found(self, n, f"/collections/{name}")


    def test_08_payload_index_through_follower(self):
        leader, followers = self.leader_and_followers()
        live = self.live()
        f, g = followers[0], followers[-1]
        f.ok("PUT", "/collections/pidx", dict(VEC, replication_factor=len(live)))
        rnd = random.Random(3)
        pts = [{"id": i, "vector": [rnd.random() for _ in range(4)],
                "payload": {"color": rnd.choice(["red", "blue"]), "n": i}} for i in range(60)]
        # one replica on every member, written at consistency=all: every node holds them all,
        # and each node's own index covers the same points
        for n in live:
            eventually_found(self, n, "/collections/pidx")
        f.ok("PUT", "/collections/pidx/points?wait=true&consistency=all", {"points": pts})
        red = sorted(p["id"] for p in pts if p["payload"]["color"] == "red")

        def schema(n):
            return n.ok("GET", "/collections/pidx")["payload_schema"]

        def check_search(n):
            flt = {"must": [{"key": "color", "match": {"value": "red"}}]}
            res = n.ok("POST", "/collections/pidx/points/search",
                       {"vector": [1, 1, 1, 1], "limit": 100, "filter": flt})
            self.assertEqual(sorted(r["id"] for r in res), red, f"node on {n.port}")
            self.assertEqual(n.ok("POST", "/collections/pidx/points/count",
                                  {"filter": flt, "exact": True})["count"], len(red))

        # declared through a follower: there at once, on every node once applied
        r = f.ok("PUT", "/collections/pidx/index", {"field_name": "color",
                                                     "field_schema": "keyword"})
        self.assertEqual(r["status"], "completed")
        self.assertEqual(schema(f), {"color": {"data_type": "keyword", "points": 60}})
        g.ok("PUT", "/collections/pidx/index",
             {"field_name": "n", "field_schema": {"type": "integer"}})
        want = {"color": {"data_type": "keyword", "points": 60},
                "n": {"data_type": "integer", "points": 60}}
        for n in live:
            try:
                wait_until(lambda: schema(n) == want, 20, f"the indexes on the node on {n.port}")
            except AssertionError:
                self.assertEqual(schema(n), want, f"node on {n.port}")
            check_search(n)
        # the same answers as a single node for bad declarations, whichever node is asked
        for n in (leader, f):
            self.assertError(n.request("PUT", "/collections/nope/index",
                                       {"field_name": "color", "field_schema": "keyword"}), 404)
            self.assertError(n.request("PUT", "/collections/pidx/index",
                                       {"field_name": "color", "field_schema": "geo"}), 400,
                             "field_schema")
            self.assertError(n.request("PUT", "/collections/pidx/index",
                                       {"field_name": "", "field_schema": "keyword"}), 400,
                             "field_name")
            self.assertError(n.request("PUT", "/collections/pidx/index",
                                       {"field_name": "x" * 501, "field_schema": "keyword"}), 422,
                             "field_name")
            self.assertError(n.request("DELETE", "/collections/pidx/index/absent"), 404, "absent")
        # dropped through another follower: gone everywhere, results unchanged
        r = g.ok("DELETE", "/collections/pidx/index/color")
        self.assertEqual(r["status"], "completed")
        self.assertEqual(set(schema(g)), {"n"})
        for n in live:
            wait_until(lambda: set(schema(n)) == {"n"}, 20, f"the drop on the node on {n.port}")
            check_search(n)
        leader.ok("DELETE", "/collections/pidx/index/n")
        for n in live:
            wait_until(lambda: schema(n) == {}, 20, f"the second drop on the node on {n.port}")

class SecretTest(ClusterCase):
    @classmethod
    def setUpClass(cls):
        cls.nodes = []
        secret = ["--cluster-secret", "correct horse battery"]
        cls.a = cls.make(args=secret).start()
        cls.b = cls.make(join=cls.a, args=secret).start()

    def test_same_secret_forms_a_cluster(self):
        wait_until(lambda: agreed([self.a, self.b], 2), 60, "two nodes with one secret to form")
        self.a.ok("PUT", "/collections/secret_ok", VEC)
        self.b.ok("GET", "/collections/secret_ok")

    def test_wrong_secret_cannot_join(self):
        wait_until(lambda: agreed([self.a, self.b], 2), 60, "two nodes with one secret to form")
        # by --join: the stranger never becomes a member and says why in its log
        c = self.make(join=self.a, args=["--cluster-secret", "wrong secret value"]).start()
        wait_until(lambda: "wrong cluster secret" in (self.a.read_log() + c.read_log()), 30,
                   "the refused join to be logged")
        for n in (self.a, self.b):
            self.assertEqual(len(info(n)["nodes"]), 2, info(n))
        cid = peer_id(c)
        self.assertNotIn(cid, [m["id"] for m in info(self.a)["nodes"]])
        # by POST /cluster/nodes: the add fails with an error
        d = self.make(args=["--cluster-secret", "another wrong one"]).start()
        # (an invited node has 10 s to answer: a refused one never does)
        t0 = time.monotonic()
        st, j = self.a.request("POST", "/cluster/nodes",
                               {"address": f"127.0.0.1:{d.cluster_port}"}, timeout=120)
        self.assertEqual(st, 503, j)
        self.assertIn("cluster secret", j["status"]["error"])
        self.assertLess(time.monotonic() - t0, 30)
        print(f"\nadd with a wrong secret: {st} {j['status']['error']}")
        for n in (self.a, self.b):
            self.assertEqual(len(info(n)["nodes"]), 2, info(n))


# ---- a raw peer: speaks the cluster protocol from a plain socket ----------------------------

def _crc32c_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_CRC32C = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


FRAME_VERSION = 2
FRAME_CHALLENGE, FRAME_HELLO, FRAME_WELCOME, FRAME_CALL, FRAME_CALL_REPLY = 1, 2, 3, 17, 18
CALL_PROPOSE, CALL_JOIN = 1, 2


def derived_secret(admin_key):
    """The cluster secret a node derives from its admin API key when it has no --cluster-secret
    (docs/cluster.md): BLAKE2b keyed with SHA-256(key), over a fixed context, as hex."""
    digest = hashlib.sha256(admin_key.encode()).digest()
    return hashlib.blake2b(b"vectord cluster secret v1", key=digest, digest_size=32).hexdigest()


class RawPeer:
    """One TCP connection to a node's cluster port that runs the dialer's side of the handshake
    with or without a proof, then sends frames. recv_frame returns None once the node closed."""

    def __init__(self, port, node_id=0x1234567890ABCDEF, addr="127.0.0.1:1", secret=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.id, self.addr, self.secret = node_id, addr, secret
        self.buf = b""
        self.keys = None  # (send, receive) session keys once the handshake is done
        self.n_send = self.n_recv = 0

    def close(self):
        self.sock.close()

    def _tag(self, key, n, ftype, body):
        return hmac.new(key, struct.pack(">QB", n, ftype) + body, hashlib.sha256).digest()

    def send_frame(self, ftype, body):
        if ftype >= 16:
            # after the handshake a body starts with the sender's HLC (ms << 16 | counter)
            body = struct.pack(">Q", int(time.time() * 1000) << 16) + body
        if self.keys and ftype >= 16:
            body += self._tag(self.keys[0], self.n_send, ftype, body)
            self.n_send += 1
        hdr = struct.pack(">HBBI", 0x7664, FRAME_VERSION, ftype, len(body))
        self.sock.sendall(hdr + struct.pack(">I", crc32c(hdr + body)) + body)

    def recv_frame(self):
        while True:
            if len(self.buf) >= 12:
                magic, ver, ftype, n = struct.unpack(">HBBI", self.buf[:8])
                if len(self.buf) >= 12 + n:
                    body = self.buf[12:12 + n]
                    self.buf = self.buf[12 + n:]
                    if self.keys and ftype >= 16:
                        body, tag = body[:-32], body[-32:]
                        want = self._tag(self.keys[1], self.n_recv, ftype, body)
                        assert hmac.compare_digest(tag, want), "a frame from the node fails its MAC"
                        self.n_recv += 1
                    if ftype >= 16:
                        body = body[8:]  # the node's HLC
                    return ftype, body
            try:
                d = self.sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                return None
            if not d:
                return None
            self.buf += d

    def _proof(self, label, *parts):
        h = hmac.new(self.secret.encode(), label + b"\0", hashlib.sha256)
        for p in parts:
            h.update(p)
        return h.digest()

    def handshake(self):
        """Returns the node's id from WELCOME, or None when the node refused (closed)."""
        f = self.recv_frame()
        if f is None or f[0] != FRAME_CHALLENGE:
            return None
        challenge = f[1]
        ident = struct.pack(">QH", self.id, len(self.addr)) + self.addr.encode()
        nonce = os.urandom(32)
        body = ident + nonce
        if self.secret is not None:
            body += self._proof(b"vectord hello", challenge, body)
        self.send_frame(FRAME_HELLO, body)
        f = self.recv_frame()
        if f is None or f[0] != FRAME_WELCOME:
            return None
        if self.secret is not None:
            # session keys: per direction, over the acceptor's then the dialer's nonce
            send = self._proof(b"vectord session dialer->acceptor", challenge, nonce)
            recv = self._proof(b"vectord session acceptor->dialer", challenge, nonce)
            self.keys = (send, recv)
        return struct.unpack(">Q", f[1][:8])[0]

    def call(self, call_id, op, args):
        self.send_frame(FRAME_CALL, struct.pack(">QB", call_id, op) + args)

    def propose(self, call_id, origin, seq, command):
        self.call(call_id, CALL_PROPOSE, struct.pack(">QQ", origin, seq) + command.encode())

    def join(self, call_id, node_id, addr, http=""):
        def s(x):
            return struct.pack(">H", len(x)) + x.encode()
        self.call(call_id, CALL_JOIN, struct.pack(">Q", node_id) + s(addr) + s(http))

    def reply(self, call_id):
        """The status of the reply to call_id (0 or a negative code), None if the node closed."""
        while True:
            f = self.recv_frame()
            if f is None:
                return None
            if f[0] == FRAME_CALL_REPLY and struct.unpack(">Q", f[1][:8])[0] == call_id:
                return struct.unpack(">q", f[1][8:16])[0]


class KeyedPeerTest(ClusterCase):
    """A node with an API key and no cluster secret: the cluster port is no weaker than the REST
    port. A peer without the secret derived from the admin key is refused at the handshake; a
    peer with it that is not a member cannot propose, and a member speaks only for itself."""
    ADMIN = "cluster-admin-key-1"

    @classmethod
    def setUpClass(cls):
        cls.nodes = []
        cls.a = cls.make(args=["--api-key", cls.ADMIN])
        cls.a.api_key = cls.ADMIN
        cls.a.start()
        wait_until(lambda: info(cls.a) and info(cls.a)["raft_info"]["role"] == "Leader", 30,
                   "the keyed node to lead its one-node cluster")
        cls.a.ok("PUT", "/collections/victim", VEC)

    def delete_cmd(self):
        return json.dumps({"op": "delete_collection", "name": "victim"})

    def assertVictimSurvives(self):
        self.a.ok("GET", "/collections/victim")
        # a proposal that got through would be applied by now: one more change orders after it
        self.a.ok("PUT", "/collections/after_probe_" + str(random.randrange(1 << 30)), VEC)
        self.a.ok("GET", "/collections/victim")

    def test_keyless_peer_refused(self):
        p = RawPeer(self.a.cluster_port)
        try:
            got = p.handshake()
            if got is not None:
                # what an attacker does once in: propose a delete as the node itself
                p.propose(1, got, 1, self.delete_cmd())
                p.reply(1)
            self.assertIsNone(got, "a peer without a proof completed the handshake")
        finally:
            p.close()
        self.assertVictimSurvives()

    def test_non_member_cannot_propose(self):
        me = 0x0BADC0DE0BADC0DE
        p = RawPeer(self.a.cluster_port, node_id=me, secret=derived_secret(self.ADMIN))
        try:
            leader = p.handshake()
            self.assertIsNotNone(leader, "a peer with the derived secret was refused")
            p.propose(7, me, 1, self.delete_cmd())
            st = p.reply(7)
            self.assertIsNotNone(st, "the node closed instead of answering")
            self.assertNotEqual(st, 0, "a non-member's proposal was accepted")
            # nor may it speak for the leader itself
            p.propose(8, leader, 2, self.delete_cmd())
            st = p.reply(8)
            self.assertNotEqual(st, 0, "a proposal with another node as its origin was accepted")
            # a join must name the sender itself
            p.join(9, 0x1111222233334444, "127.0.0.1:2")
            st = p.reply(9)
            self.assertNotEqual(st, 0, "a join for another node id was accepted")
        finally:
            p.close()
        self.assertVictimSurvives()
        ids = [m["id"] for m in info(self.a)["nodes"]]
        self.assertNotIn(0x1111222233334444, ids)

    def test_member_speaks_only_for_itself(self):
        me = 0x0C0FFEE00C0FFEE0
        p = RawPeer(self.a.cluster_port, node_id=me, secret=derived_secret(self.ADMIN))
        try:
            leader = p.handshake()
            self.assertIsNotNone(leader, "a peer with the derived secret was refused")
            p.join(1, me, "127.0.0.1:3")
            self.assertEqual(p.reply(1), 0)
            wait_until(lambda: me in [m["id"] for m in info(self.a)["nodes"]], 20,
                       "the raw peer to be listed as a member")
            p.propose(2, leader, 5, self.delete_cmd())
            st = p.reply(2)
            self.assertNotEqual(st, 0, "a member's proposal in another node's name was accepted")
        finally:
            p.close()
        self.assertVictimSurvives()
        self.a.ok("DELETE", f"/cluster/nodes/{me}")


class NoAdminKeyTest(ClusterCase):
    """API keys but no admin key and no cluster secret: there is no secret to derive, so the node
    refuses every peer and says so once in its log."""

    @classmethod
    def setUpClass(cls):
        cls.nodes = []
        cfg = os.path.join(tempfile.mkdtemp(prefix="vectord-e2e-cfg-"), "c.json")
        with open(cfg, "w") as f:
            json.dump({"api_keys": [{"key": "read-only-key-1", "role": "ro"}]}, f)
        cls.a = cls.make(args=["--config", cfg])
        cls.a.api_key = "read-only-key-1"
        cls.a.start()

    def test_every_peer_refused(self):
        for secret in (None, "anything at all"):
            p = RawPeer(self.a.cluster_port, secret=secret)
            try:
                self.assertIsNone(p.handshake(), "a peer was accepted")
            finally:
                p.close()
        log = self.a.read_log()
        self.assertEqual(log.count("every peer is refused"), 1, log)


if __name__ == "__main__":
    vdtest.main()
