"""Connection limits over raw sockets: a cap on open connections, a budget for request bodies
buffered at once, and a deadline for a request's headers (slowloris)."""
import json
import socket
import time

import vdtest
from vdtest import NodeTest, wait_until


def raw(node):
    s = socket.create_connection((node.host, node.port), timeout=10)
    return s


def read_reply(s):
    """Reads one HTTP reply (status, JSON body) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a reply: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, json.loads(body) if body else None


def get(s, path="/collections"):
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return read_reply(s)


def closed_by_server(s):
    """True when the server closed (or reset) the connection."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


class ConnectionLimitTest(NodeTest):
    node_args = ["--max-connections", "4", "--http-threads", "2"]

    def test_past_the_limit_503_then_served_again(self):
        def open_served():
            # a connection the client closed a moment ago may still count until the server has
            # seen it close: retry until this one is served
            s = raw(self.node)
            if get(s)[0] == 200:
                return s
            s.close()
            return None
        held = [wait_until(open_served, 10, "a connection to be served") for _ in range(4)]
        extra = []

        def refused():
            s = raw(self.node)
            extra.append(s)
            st, j = get(s)
            return (st, j) if st == 503 else None
        st, j = wait_until(refused, 10, "a request past the connection limit to be refused")
        self.assertIn("too many connections", j["status"]["error"])
        self.assertIn("4", j["status"]["error"])
        for s in extra:
            s.close()
        # room again once connections close
        held.pop().close()
        held.pop().close()

        def served():
            with raw(self.node) as s:
                return get(s)[0] == 200
        wait_until(served, 10, "a request to be served once connections closed")
        for s in held:
            s.close()


def gauge(node, name):
    """The value of a gauge in GET /metrics."""
    st, text = node.request("GET", "/metrics", raw=True)
    if st != 200:
        raise AssertionError(f"GET /metrics -> {st}: {text[:200]!r}")
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    raise AssertionError(f"no {name} in GET /metrics")


def put_points(node, body, chunked=False):
    """PUT /collections/b/points with a body on its own connection; returns (status, JSON)."""
    with raw(node) as s:
        head = (b"PUT /collections/b/points?wait=true HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\n")
        if chunked:
            s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
            s.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        else:
            s.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body))
            s.sendall(body)
        return read_reply(s)


class BodyBudgetTest(NodeTest):
    node_args = ["--max-inflight-body-bytes", "1000000"]
    IN_FLIGHT = "vectord_http_body_bytes_in_flight"

    def test_bodies_over_the_budget_503(self):
        n = self.node
        n.create("b", 2, "Dot")
        # a body is held until its request completes, a moment after its reply went out
        wait_until(lambda: gauge(n, self.IN_FLIGHT) == 0, 10, "the create's body to be released")
        # one client announces 900 kB and sends it slowly: that much is reserved
        slow = raw(n)
        slow.sendall(b"PUT /collections/b/points?wait=true HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 900000\r\n\r\n{")
        # The others go only once the server holds the slow body's reservation: sent at once,
        # one of them could be read first, and then the slow one would be the body refused.
        wait_until(lambda: gauge(n, self.IN_FLIGHT) >= 900000, 10,
                   "the slow body to be counted against the budget")
        body = json.dumps({"points": [{"id": 1, "vector": [1.0, 2.0]}]}).encode()
        padded = body + b" " * (200000 - len(body))
        st, j = put_points(n, padded)
        self.assertEqual(st, 503, j)
        self.assertIn("budget", j["status"]["error"])
        self.assertIn("1000000", j["status"]["error"])
        # a chunked body is held to the budget as it arrives
        st, j = put_points(n, padded, chunked=True)
        self.assertEqual(st, 503, j)
        self.assertIn("budget", j["status"]["error"])
        # the slow client was never answered, and gives up: its reservation is returned
        slow.settimeout(0)
        with self.assertRaises(BlockingIOError, msg="the slow client got a reply"):
            slow.recv(1)
        slow.close()
        wait_until(lambda: gauge(n, self.IN_FLIGHT) == 0, 10,
                   "the slow body's reservation to be returned")
        st, j = put_points(n, padded)
        self.assertEqual(st, 200, j)
        self.assertEqual(n.ok("POST", "/collections/b/points/count", {"exact": True})["count"], 1)


class HeaderTimeoutTest(NodeTest):
    node_args = ["--header-timeout-seconds", "2"]

    def test_trickled_headers_are_cut(self):
        s = raw(self.node)
        s.settimeout(0.3)
        s.sendall(b"GET /collections HTTP/1.1\r\n")
        t0 = time.monotonic()
        cut = False
        # a header byte every 0.3 s would keep an idle timeout from ever firing
        while time.monotonic() - t0 < 15:
            try:
                s.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            if closed_by_server(s):
                cut = True
                break
        took = time.monotonic() - t0
        s.close()
        self.assertTrue(cut, "a client trickling its headers was never disconnected")
        self.assertLess(took, 8.0)
        print(f"trickling client disconnected after {took:.1f} s (header timeout 2 s)")
        # an ordinary client on another connection is unaffected, also across keep-alive requests
        with raw(self.node) as k:
            self.assertEqual(get(k)[0], 200)
            self.assertEqual(get(k)[0], 200)


if __name__ == "__main__":
    vdtest.main()
