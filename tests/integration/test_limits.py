"""Connection limits that hold against clients without a token: slow
senders are answered 408 and closed at the header deadline while other
clients' RPCs keep answering; more connections than the descriptor limit
allows (lowered with prlimit) leave /healthz and a real RPC answering with a
bounded log; framing the server will not read (conflicting Content-Length,
over-limit declared or chunked bodies, unknown methods, CONNECT, unfinished
bodies) is answered with a Connect error and closed.

Outcomes are asserted, never speeds: a slow sender must be cut off before it
runs out of bytes to send (its budget is many times the deadline)."""

import json
import re
import socket
import subprocess
import threading
import time

import common
from common import ItCase

HEADER_MS = 1500
BODY_MS = 1500
PER_CLIENT = 40
MAX_BODY = 65536


# its own meson test: `meson test hostile` (tests/integration/meson.build)
OWN_SUITE = "hostile"


def setUpModule():
    common.setup_module(__name__, [
        "--header_timeout_ms=%d" % HEADER_MS, "--body_timeout_ms=%d" % BODY_MS,
        "--max_connections_per_client=%d" % PER_CLIENT, "--max_body_bytes=%d" % MAX_BODY,
    ])


def tearDownModule():
    common.teardown_module(__name__)


def connect_from(c, src, timeout=30):
    """A socket to the server from source address src (127.0.0.x), so that
    one test's crowd is a different client than the test's own calls."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((src, 0))
    s.connect((c.host, c.port))
    return s


def read_all(s, limit=1 << 16):
    """Reads until EOF, reset or timeout; (bytes, closed_by_peer)."""
    data = b""
    try:
        while len(data) < limit:
            b = s.recv(4096)
            if not b:
                return data, True
            data += b
    except ConnectionResetError:
        return data, True
    except socket.timeout:
        return data, False
    return data, False


def connect_error(raw):
    """(status, Connect code, message) of a raw HTTP answer."""
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", raw)
    if not m:
        return None, None, None
    body = raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else b""
    try:
        j = json.loads(body)
    except ValueError:
        return int(m.group(1)), None, body
    return int(m.group(1)), j.get("code"), j.get("message")


class SlowClientTest(ItCase):
    N_SLOW = 30

    def test_slow_headers_are_cut_off_while_others_answer(self):
        _, tok = self.c.new_tenant()
        budget = 400  # bytes each slow client would send, one per 50 ms (20 s)
        results = [None] * self.N_SLOW

        def slow(i):
            s = connect_from(self.c, "127.0.0.2")
            sent = 0
            head = (b"POST /gpumatch.v1.JobService/ListJobs HTTP/1.1\r\nHost: x\r\n"
                    b"X-Slow: " + b"a" * budget)
            cut = False
            try:
                for ch in head[:budget]:
                    try:
                        s.send(bytes([ch]))
                    except (BrokenPipeError, ConnectionResetError):
                        cut = True
                        break
                    sent += 1
                    s.settimeout(0.05)
                    try:
                        if s.recv(1, socket.MSG_PEEK) is not None:
                            cut = True
                            break
                    except socket.timeout:
                        pass
                    except ConnectionResetError:
                        cut = True
                        break
                s.settimeout(30)
                raw, closed = read_all(s)
                results[i] = (sent, cut, raw, closed)
            finally:
                s.close()

        threads = [threading.Thread(target=slow, args=(i,)) for i in range(self.N_SLOW)]
        for t in threads:
            t.start()
        # meanwhile a client with a token keeps calling, on fresh connections
        answered = 0
        for _ in range(20):
            r = self.c.call("JobService", "ListJobs", {}, token=tok)
            self.assertOk(r)
            answered += 1
            st, _, _ = self.c.http("GET", "/healthz")
            self.assertEqual(st, 200)
        for t in threads:
            t.join(60)
        self.assertEqual(answered, 20)
        for i, res in enumerate(results):
            self.assertIsNotNone(res, "slow client %d did not finish" % i)
            sent, cut, raw, closed = res
            self.assertTrue(cut, "slow client %d sent all %d bytes without being cut off"
                            % (i, sent))
            self.assertLess(sent, budget)
            st, code, msg = connect_error(raw)
            self.assertEqual((st, code), (408, "deadline_exceeded"), raw[:300])
            self.assertIn("headers not received within %d ms" % HEADER_MS, msg)
            self.assertTrue(closed, "slow client %d: the connection stayed open" % i)

    def test_unfinished_body_is_answered_then_closed(self):
        s = connect_from(self.c, "127.0.0.4")
        try:
            s.sendall(b"POST /gpumatch.v1.JobService/ListJobs HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            raw, closed = read_all(s)
        finally:
            s.close()
        st, code, msg = connect_error(raw)
        self.assertEqual((st, code), (408, "deadline_exceeded"), raw[:300])
        self.assertIn("body not received", msg)
        self.assertTrue(closed)

    def test_unfinished_chunked_body_is_answered_then_closed(self):
        s = connect_from(self.c, "127.0.0.4")
        try:
            s.sendall(b"POST /gpumatch.v1.JobService/ListJobs HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"2\r\n{}\r\n")
            raw, closed = read_all(s)
        finally:
            s.close()
        st, code, _ = connect_error(raw)
        self.assertEqual((st, code), (408, "deadline_exceeded"), raw[:300])
        self.assertTrue(closed)


class FramingTest(ItCase):
    """Requests evhttp would read loosely or answer in HTML: each gets a
    Connect error naming the problem, then the connection is closed."""

    PATH = b"/gpumatch.v1.JobService/ListJobs"

    def exchange(self, data):
        s = connect_from(self.c, "127.0.0.5")
        try:
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            raw, closed = read_all(s)
        finally:
            s.close()
        return connect_error(raw) + (closed, raw)

    def check(self, data, status, code, words):
        st, c, msg, closed, raw = self.exchange(data)
        self.assertEqual((st, c), (status, code), raw[:400])
        self.assertIn(words, msg or "", raw[:400])
        self.assertTrue(closed, "connection left open after %r" % data[:60])

    def head(self, extra, method=b"POST", version=b"HTTP/1.1"):
        return (method + b" " + self.PATH + b" " + version + b"\r\nHost: x\r\n"
                b"Content-Type: application/json\r\n" + extra + b"\r\n")

    def test_declared_length_over_limit_refused_before_reading(self):
        self.check(self.head(b"Content-Length: %d\r\n" % (MAX_BODY + 1)), 413,
                   "resource_exhausted", "exceeds the limit of %d bytes" % MAX_BODY)
        self.check(self.head(b"Content-Length: 99999999999999999\r\n"), 413,
                   "resource_exhausted", "exceeds the limit")

    def test_chunked_over_limit_refused(self):
        data = self.head(b"Transfer-Encoding: chunked\r\n") + b"%x\r\n" % (MAX_BODY + 1)
        self.check(data, 413, "resource_exhausted", "chunked request body exceeds")
        # many small chunks add up
        data = self.head(b"Transfer-Encoding: chunked\r\n") + (b"400\r\n" + b"a" * 1024 +
                                                               b"\r\n") * 65
        self.check(data, 413, "resource_exhausted", "chunked request body exceeds")

    def test_conflicting_content_length(self):
        self.check(self.head(b"Content-Length: 2\r\nContent-Length: 3\r\n") + b"{}",
                   400, "invalid_argument", "conflicting Content-Length")
        self.check(self.head(b"Content-Length: 2, 2\r\n") + b"{}", 400, "invalid_argument",
                   "malformed Content-Length")
        self.check(self.head(b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n") + b"{}",
                   400, "invalid_argument", "both Content-Length and Transfer-Encoding")

    def test_unknown_methods_and_connect(self):
        self.check(self.head(b"Content-Length: 0\r\n", method=b"BREW"), 501, "unimplemented",
                   "unknown HTTP method")
        self.check(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405,
                   "unimplemented", "CONNECT is not supported")
        self.check(self.head(b"", version=b"HTTP/2.0"), 505, "unimplemented",
                   "unsupported HTTP version")

    def test_malformed_heads(self):
        self.check(self.head(b"Bad Header: x\r\n"), 400, "invalid_argument", "header name")
        self.check(self.head(b"X-A: 1\r\n folded\r\n"), 400, "invalid_argument", "folding")
        self.check(self.head(b"X-A: 1\x00\r\n"), 400, "invalid_argument", "control byte")
        self.check(self.head(b"Transfer-Encoding: gzip\r\n"), 501, "unimplemented",
                   "Transfer-Encoding")
        self.check(self.head(b"".join(b"X-%d: y\r\n" % i for i in range(101))), 431,
                   "resource_exhausted", "header fields")
        self.check(self.head(b"X-Big: " + b"y" * 40000 + b"\r\n"), 431,
                   "resource_exhausted", "")

    def test_good_request_on_the_same_path_still_works(self):
        st, _, body = self.c.http("POST", self.PATH.decode(), b"{}",
                                  {"Content-Type": "application/json"})
        self.assertEqual(st, 401, body)  # framing passed; no token


class DescriptorExhaustionTest(ItCase):
    """Lowers gpumatchd's descriptor limit with prlimit and holds more
    connections than it allows from two addresses."""

    NOFILE = 256
    CROWD = 2 * 200

    def setUp(self):
        super().setUp()
        self.pid = self.c.pid
        out = subprocess.run(["prlimit", "--pid", str(self.pid), "--nofile", "--raw",
                              "--noheadings", "--output=SOFT,HARD"],
                             capture_output=True, text=True, check=True).stdout.split()
        self.old = (out[0], out[1])
        subprocess.run(["prlimit", "--pid", str(self.pid),
                        "--nofile=%d:%s" % (self.NOFILE, self.old[1])], check=True)

    def tearDown(self):
        subprocess.run(["prlimit", "--pid", str(self.pid),
                        "--nofile=%s:%s" % self.old], check=False)
        super().tearDown()

    def test_crowd_beyond_the_descriptor_limit(self):
        _, tok = self.c.new_tenant()
        crowd = []
        try:
            for i in range(self.CROWD):
                src = "127.0.0.%d" % (6 + i % 2)
                try:
                    crowd.append(connect_from(self.c, src, timeout=5))
                except OSError:
                    pass  # the backlog may fill while accept is paused
            self.assertGreater(len(crowd), self.NOFILE,
                               "the test must hold more connections than the limit")
            # a fresh client still gets answers while the crowd is held. The
            # crowd's connections past a limit are answered or cut within a
            # second of their accept, and those still in the listen backlog
            # are accepted as room frees; until then a new connection may
            # be dropped at accept, as a liveness probe's would: it tries
            # again, a bounded number of times.
            def answered(fn, ok):
                last = None
                for _ in range(60):
                    try:
                        last = fn()
                        if ok(last):
                            return last
                    except OSError as e:  # dropped at accept
                        last = e
                    time.sleep(0.5)
                self.fail("no answer in 60 tries while the crowd is held; last: %r" % (last,))
            st, _, body = answered(lambda: self.c.http("GET", "/healthz", timeout=30),
                                   lambda r: r[0] == 200)
            self.assertEqual(st, 200, body)
            r = answered(lambda: self.c.call("JobService", "ListJobs", {}, token=tok, timeout=30),
                         lambda r: r.status != 503)
            self.assertOk(r)
            st, _, text = answered(lambda: self.c.http("GET", "/metrics", timeout=30),
                                   lambda r: r[0] == 200)
            self.assertEqual(st, 200)
            m = re.search(rb"(?m)^gpumatch_http_connections_limit (\d+)", text)
            self.assertTrue(m, text[:500])
            self.assertLess(int(m.group(1)), self.NOFILE)
            refused = sum(int(x) for x in re.findall(
                rb"(?m)^gpumatch_http_refused_total\{reason=\"(?:max_per_client|"
                rb"max_connections|dropped)\"\} (\d+)", text))
            self.assertGreater(refused, 0, "nobody was refused: the crowd did not reach "
                               "the limits")
        finally:
            for s in crowd:
                s.close()
        # the log stays bounded: refusals are logged at most once per kind
        # per 10 s, and accept never spins
        log = self.c.log_since(self.log_offset)
        self.assertNotIn("Error from accept() call", log)
        noisy = [ln for ln in log.splitlines()
                 if "connection refused" in ln or "connection dropped" in ln
                 or "accept paused" in ln]
        self.assertLess(len(noisy), 40, "\n".join(noisy[:50]))
        st, _, _ = self.c.http("GET", "/healthz")
        self.assertEqual(st, 200)
