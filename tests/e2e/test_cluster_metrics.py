"""GET /metrics and request ids on a three-node cluster (real processes, --log-level debug).

Metrics: every node's text parses as Prometheus exposition, every series has its TYPE; the Raft
series agree on one leader, every peer is up with a measured round trip, writes through a node
move its write counters, and each latency histogram is cumulative with its +Inf bucket equal to its
_count, which counts the requests made exactly.

Request ids: a write sent to node 0 with `X-Request-Id: abc-123` gets it back, and the id is in
node 0's log and in the log of the other replicas that served it; an unusable X-Request-Id (too
long, a control byte) is replaced by one of 16 hex digits, never echoed or logged.
"""
import json
import math
import re

import vdtest
from vdtest import wait_until

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse(text):
    """Prometheus text -> ({family: type}, [(name, {label: value}, float)]). Raises AssertionError
    on a line that is not a comment or a sample, a sample of a family without a TYPE, or a
    family whose samples are not one group."""
    types, samples, done, current = {}, [], set(), None
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, fam, typ = line.split(" ", 3)
            assert typ in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert fam not in types, f"two TYPE lines for {fam}"
            types[fam] = typ
            continue
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample: {line!r}"
        name, labels_text, value = m.groups()
        labels = {}
        if labels_text:
            pos = 0
            while pos < len(labels_text):
                lm = LABEL.match(labels_text, pos)
                assert lm, f"bad labels: {line!r}"
                labels[lm.group(1)] = lm.group(2)
                pos = lm.end()
        v = float(value)
        assert not math.isnan(v), line
        fam = name
        if fam not in types:
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and types.get(name[:-len(suffix)]) == "histogram":
                    fam = name[:-len(suffix)]
        assert fam in types, f"sample without a TYPE: {line!r}"
        if fam != current:  # a family's samples form one group
            assert fam not in done, f"samples of {fam} in two groups: {line!r}"
            if current:
                done.add(current)
            current = fam
        samples.append((name, labels, v))
    return types, samples


def scrape(node):
    st, body = node.request("GET", "/metrics", raw=True, timeout=30)
    assert st == 200, (st, body)
    return parse(body.decode())


def value(samples, name, **labels):
    """The value of the one sample of name with exactly these labels; None when absent."""
    found = [v for n, ls, v in samples if n == name and ls == labels]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def histograms(samples, family):
    """{(route, method): ([(le, cumulative)], sum, count)} of a histogram family."""
    out = {}
    for n, ls, v in samples:
        key = (ls.get("route"), ls.get("method"))
        h = out.setdefault(key, ([], None, None))
        if n == family + "_bucket":
            h[0].append((float(ls["le"]), v))
        elif n == family + "_sum":
            out[key] = (h[0], v, h[2])
        elif n == family + "_count":
            out[key] = (h[0], h[1], v)
    return {k: h for k, h in out.items() if h[0]}


class ClusterMetrics(vdtest.ClusterCase):
    @classmethod
    def setUpClass(cls):
        # debug: the replicas log each data request they serve with its id
        cls.start_cluster(3, args=["--log-level", "debug"])

    def node_id(self, samples):
        ids = [ls["node"] for n, ls, _ in samples if n == "vectord_cluster_node_info"]
        self.assertEqual(len(ids), 1)
        return ids[0]

    def test_raft_and_peers_on_every_node(self):
        ids, leaders, leading = [], set(), []
        for n in self.members:
            _, s = scrape(n)
            ids.append(self.node_id(s))
        for n in self.members:
            def measured():
                _, s = scrape(n)
                me = self.node_id(s)
                return all(value(s, "vectord_peer_up", peer=p) == 1 and
                           (value(s, "vectord_peer_rtt_seconds", peer=p) or 0) > 0 and
                           value(s, "vectord_peer_rtt_max_seconds", peer=p) >=
                           value(s, "vectord_peer_rtt_seconds", peer=p)
                           for p in ids if p != me)
            wait_until(measured, 10, "every peer up with a round trip measured")
            types, s = scrape(n)
            me = self.node_id(s)
            self.assertIsNone(value(s, "vectord_peer_up", peer=me))
            self.assertGreaterEqual(value(s, "vectord_raft_term"), 1)
            self.assertGreaterEqual(value(s, "vectord_raft_commit_index"), 1)
            self.assertGreaterEqual(value(s, "vectord_raft_applied_index"), 1)
            self.assertEqual(value(s, "vectord_raft_has_leader"), 1)
            self.assertGreaterEqual(value(s, "vectord_raft_leader_changes_total"), 1)
            self.assertEqual(types["vectord_raft_leader_changes_total"], "counter")
            leaders |= {ls["node"] for name, ls, _ in s if name == "vectord_raft_leader_info"}
            if value(s, "vectord_raft_role", role="leader") == 1:
                leading.append(me)
            self.assertEqual(value(s, "vectord_cluster_members", state="up"), 3)
            self.assertEqual(value(s, "vectord_cluster_members", state="down"), 0)
            self.assertEqual(value(s, "vectord_cluster_members_by_role", role="voter"), 3)
            self.assertIsNotNone(value(s, "vectord_hints_replayed_total"))
        self.assertEqual(len(leaders), 1, leaders)
        self.assertEqual(leading, list(leaders))

    def test_write_counters_and_histograms(self):
        n0, n1 = self.members[0], self.members[1]
        n0.create("m", 4, "Dot", replication_factor=3)
        _, before = scrape(n0)
        ok0 = value(before, "vectord_cluster_writes_total", outcome="ok")
        for k in range(3):
            n0.ok("PUT", "/collections/m/points?wait=true",
                  {"points": [{"id": k, "vector": [1, 2, 3, k]}]})
        _, after = scrape(n0)
        self.assertGreaterEqual(value(after, "vectord_cluster_writes_total", outcome="ok"), ok0 + 3)
        for outcome in ("unavailable", "timeout"):
            self.assertEqual(value(after, "vectord_cluster_writes_total", outcome=outcome), 0)

        # requests of one route on node 1, counted by its histogram exactly
        key = ("/collections/{name}", "GET")
        made = 7
        for _ in range(made):
            n1.ok("GET", "/collections/m")

        def counted():
            _, s = scrape(n1)
            h = histograms(s, "vectord_http_request_duration_seconds").get(key)
            return h is not None and h[2] == made and h
        buckets, total, count = wait_until(counted, 10, f"{made} requests in the histogram")
        types, s = scrape(n1)
        self.assertEqual(types["vectord_http_request_duration_seconds"], "histogram")
        for k, (bs, sm, cnt) in histograms(s, "vectord_http_request_duration_seconds").items():
            les = [le for le, _ in bs]
            self.assertEqual(les, sorted(les), k)
            self.assertEqual(les[-1], math.inf, k)
            cum = [c for _, c in bs]
            self.assertEqual(cum, sorted(cum), f"buckets of {k} not cumulative")
            self.assertEqual(cum[-1], cnt, k)
            self.assertIsNotNone(sm, k)
            self.assertGreaterEqual(sm, 0, k)
        self.assertEqual(histograms(s, "vectord_http_request_duration_seconds")[key][2], made)
        self.assertGreater(total, 0)

    def put_with_id(self, node, coll, rid, k):
        """PUT one point through node with X-Request-Id rid; returns the reply's X-Request-Id."""
        c = node.conn(30)
        try:
            body = json.dumps({"points": [{"id": k, "vector": [1, 2, 3, k]}]}).encode()
            c.putrequest("PUT", f"/collections/{coll}/points?wait=true")
            c.putheader("Content-Type", "application/json")
            c.putheader("Content-Length", str(len(body)))
            c.putheader("X-Request-Id", rid)
            c.endheaders(body)
            r = c.getresponse()
            r.read()
            self.assertEqual(r.status, 200)
            return r.getheader("X-Request-Id")
        finally:
            c.close()

    @staticmethod
    def full_log(node):
        with open(node.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def test_request_id_across_nodes(self):
        n0 = self.members[0]
        n0.create("r", 4, "Dot", replication_factor=3)
        self.assertEqual(self.put_with_id(n0, "r", "abc-123", 1), "abc-123")
        self.assertIn("rid=abc-123", self.full_log(n0))

        def on_a_replica():
            return [i for i, n in enumerate(self.members[1:], 1)
                    if re.search(r"replica: write of collection 'r' .*rid=abc-123",
                                 self.full_log(n))]
        # the write was acknowledged at W 2: the second replica may answer just after
        seen = wait_until(on_a_replica, 10, "abc-123 in another node's log")
        self.assertTrue(seen)
        # the coordinator's own line for the write, at debug as it succeeded
        self.assertRegex(self.full_log(n0), r"cluster: write of collection 'r': ok rid=abc-123")

        for bad in ("x" * 65, "ab\x01cd", "ab\x1b[31mcd"):
            got = self.put_with_id(n0, "r", bad, 2)
            self.assertRegex(got, r"^[0-9a-f]{16}$")
            self.assertNotIn(bad, self.full_log(n0))
            wait_until(lambda: any(f"rid={got}" in self.full_log(n)
                                   for n in self.members[1:]), 10,
                       f"the replacement id {got} on another node")


if __name__ == "__main__":
    vdtest.main()
