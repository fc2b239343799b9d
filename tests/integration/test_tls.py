"""TLS and secrets against the real gpumatchd, CLI, agent and gpu-probe,
with certificates made at test time by `openssl` (tlscerts.py): https with
verification for every client, the bad-certificate cases (unknown CA,
expired, wrong host) failing with exit 3 and their reason, plaintext and TLS
crossed, SIGHUP certificate rotation, client certificates bound to
operators, the job environment and user, the plaintext-listener refusal, a
password-protected Redis, and no secret in any log."""

import copy
import glob
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import common
from clitools import GPUMATCH, cli_env, wait_jobs
from cluster import Cluster, _clean_env, _pdeathsig, gpumatchd_path
from common import ItCase, node_req, ok
from tlscerts import CertSet

# meson runs this module as its own test (integration-tls)
OWN_SUITE = True

CERTS = None
_certs_dir = None


def gpu_probe_path():
    return os.path.join(os.path.dirname(os.path.dirname(gpumatchd_path())), "gpu-probe",
                        "gpu-probe")


def setUpModule():
    global CERTS, _certs_dir
    _certs_dir = tempfile.mkdtemp(prefix="gpumatch-it-tls-")
    os.chmod(_certs_dir, 0o755)
    CERTS = CertSet(_certs_dir)
    sans = ["IP:127.0.0.1", "DNS:localhost"]
    CERTS.issue("server", "127.0.0.1", sans)
    CERTS.issue("server2", "gpumatchd rotated", sans)
    CERTS.issue("expired", "127.0.0.1", sans, expired=True)
    CERTS.issue("otherhost", "other.example", ["DNS:other.example"])
    CERTS.issue("unknown", "127.0.0.1", sans, ca="ca2")
    # the live pair the server reads, rotated by the SIGHUP test
    shutil.copy(CERTS.path("server.pem"), CERTS.path("live.pem"))
    shutil.copy(CERTS.path("server.key"), CERTS.path("live.key"))
    os.chmod(CERTS.path("live.key"), 0o600)
    c = Cluster(flags=["--tls_cert_file=" + CERTS.path("live.pem"),
                       "--tls_key_file=" + CERTS.path("live.key"),
                       "--tls_client_ca_file=" + CERTS.path("ca.pem"),
                       "--metrics_listen=127.0.0.1:0",
                       "--cycle_interval_ms=200", "--allow_unverified=true",
                       "--heartbeat_interval_ms=500", "--long_poll_max_ms=5000",
                       "--probe_dim=24", "--probe_chain_length=3", "--probe_open_rows=4"],
                name="tls")
    c.ssl_context = ssl.create_default_context(cafile=CERTS.path("ca.pem"))
    c.ca_file = CERTS.path("ca.pem")
    common._clusters[__name__] = c.start()


def tearDownModule():
    try:
        common.teardown_module(__name__)
    finally:
        if _certs_dir:
            shutil.rmtree(_certs_dir, True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class BadCertServer:
    """A TLS listener (Python's ssl, OpenSSL underneath) presenting a given
    certificate, for the clients' verification failures: the handshake is
    all that happens."""

    def __init__(self, cert, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            try:
                conn.settimeout(5)
                with self.ctx.wrap_socket(conn, server_side=True) as s:
                    s.recv(1)
            except (ssl.SSLError, OSError):
                pass
            finally:
                conn.close()

    def close(self):
        self.stop = True
        self.t.join(5)
        self.sock.close()


class TlsTest(ItCase):
    @classmethod
    def setUpClass(cls):
        c = common._clusters[__name__]
        cls.tenant, cls.ttok = c.new_tenant()
        cls.op, cls.otok = c.new_operator(node_limit=20)
        cls.op2, cls.otok2 = c.new_operator(node_limit=20)
        cls.op_cert = CERTS.issue("op1", "operator-%s" % cls.op["id"], client=True)
        cls.op2_cert = CERTS.issue("op2", "operator-%s" % cls.op2["id"], client=True)
        cls.stranger_cert = CERTS.issue("stranger", "operator-%s" % cls.op["id"], ca="ca2",
                                        client=True)
        cls.work = os.path.join(c.dir, "tls-jobs")
        os.makedirs(cls.work, exist_ok=True)
        # bare jobs run as an unprivileged user: let them reach the work dir
        os.chmod(c.dir, 0o711)
        os.chmod(cls.work, 0o777)
        cls.agents = []

    @classmethod
    def tearDownClass(cls):
        for p, _ in cls.agents:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def env(self, token=None, ca=True, client=None, **extra):
        e = cli_env(self.c, token)
        e.pop("GPUMATCH_CA_FILE", None)
        if ca:
            e["GPUMATCH_CA_FILE"] = CERTS.path("ca.pem")
        if client:
            e["GPUMATCH_CLIENT_CERT"], e["GPUMATCH_CLIENT_KEY"] = client
        e.update(extra)
        return e

    def gm(self, *args, env):
        return subprocess.run([GPUMATCH] + [str(a) for a in args], capture_output=True,
                              text=True, timeout=60, env=env)

    def as_operator(self, cert):
        """A view of the cluster whose Python client presents cert."""
        v = copy.copy(self.c)
        ctx = ssl.create_default_context(cafile=CERTS.path("ca.pem"))
        if cert:
            ctx.load_cert_chain(*cert)
        v.ssl_context = ctx
        return v

    def token_file(self, token, mode=0o600):
        fd, path = tempfile.mkstemp(prefix="token-", dir=self.c.dir)
        os.write(fd, (token + "\n").encode())
        os.close(fd)
        os.chmod(path, mode)
        return path

    def start_agent(self, name, extra=(), client=None, token_file=None):
        state = tempfile.mkdtemp(prefix="agent-%s-" % name, dir=self.c.dir)
        log = os.path.join(state, "agent.log")
        cmd = [GPUMATCH, "agent", "--simulate",
               os.path.join(os.environ.get("GPUMATCH_SOURCE", "."), "examples", "nodes",
                            "rtx3090-x4.json"),
               "--name", name, "--state-dir", state, "--poll", "5s", "--grace", "1s",
               "--label", "pool=" + name, "--heartbeat", "500ms"]
        cmd += ["--token-file", token_file or self.token_file(self.otok)]
        cmd += list(extra)
        env = self.env(client=client or self.op_cert)
        f = open(log, "ab")
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=env,
                             preexec_fn=_pdeathsig)
        f.close()
        self.agents.append((p, log))
        return p, log

    # ---- clients over https ----

    def test_cli_commands_work_over_https(self):
        self.assertTrue(self.c.url.startswith("https://"))
        env = self.env(self.ttok)
        r = self.gm("submit", "--label", "pool=none", "--duration", "1m", "--", "true", env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        jid = r.stdout.strip()
        for args in (["get", jid], ["list"], ["usage"], ["cancel", jid, "--reason", "t"]):
            r = self.gm(*args, "-o", "json", env=env)
            self.assertEqual(r.returncode, 0, "%s: %s" % (args, r.stderr))
        # --ca-file works as well as GPUMATCH_CA_FILE
        e = self.env(self.ttok, ca=False)
        r = self.gm("get", jid, "--ca-file", CERTS.path("ca.pem"), env=e)
        self.assertEqual(r.returncode, 0, r.stderr)
        # an operator with its certificate lists its nodes
        r = self.gm("node", "list", env=self.env(self.otok, client=self.op_cert))
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_bad_certificates_fail_with_exit_3_and_the_reason(self):
        cases = [("unknown", "unknown CA"), ("expired", "expired"),
                 ("otherhost", "wrong host")]
        for name, reason in cases:
            srv = BadCertServer(CERTS.path(name + ".pem"), CERTS.path(name + ".key"))
            try:
                url = "https://127.0.0.1:%d" % srv.port
                env = self.env(self.ttok, GPUMATCH_URL=url)
                r = self.gm("list", env=env)
                self.assertEqual(r.returncode, 3, "%s: %s%s" % (name, r.stdout, r.stderr))
                lines = r.stderr.strip().splitlines()
                self.assertEqual(len(lines), 1, r.stderr)
                self.assertIn(reason, lines[0], name)
                self.assertIn("TLS", lines[0])
                p = subprocess.run([gpu_probe_path(), "challenge", "--backend", "cpu",
                                    "--server", url, "--node-id", "1",
                                    "--ca-file", CERTS.path("ca.pem"),
                                    "--token-file", self.token_file(self.otok)],
                                   capture_output=True, text=True, timeout=60,
                                   env=_clean_env())
                self.assertEqual(p.returncode, 3, "%s: %s%s" % (name, p.stdout, p.stderr))
                self.assertIn(reason, p.stderr, name)
            finally:
                srv.close()
        # no --ca-file: the system store does not know the test CA
        r = self.gm("list", env=self.env(self.ttok, ca=False))
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("unknown CA", r.stderr)

    def test_plaintext_and_tls_crossed_give_clear_errors(self):
        env = self.env(self.ttok, GPUMATCH_URL="http://127.0.0.1:%d" % self.c.port)
        r = self.gm("list", env=env)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("https://", r.stderr)
        # the plaintext metrics side door is there, and TLS to it is refused
        # the latest start's (another test restarts gpumatchd)
        ports = re.findall(r"metrics_addr=127\.0\.0\.1:(\d+)", self.c.log_tail(100000))
        self.assertTrue(ports, "metrics endpoint logged")
        mport = int(ports[-1])
        import http.client
        h = http.client.HTTPConnection("127.0.0.1", mport, timeout=10)
        h.request("GET", "/metrics")
        resp = h.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertIn(b"gpumatch_up 1", resp.read())
        h.close()
        env = self.env(self.ttok, GPUMATCH_URL="https://127.0.0.1:%d" % mport)
        r = self.gm("list", env=env)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("does not speak TLS", r.stderr)
        # and /metrics, /healthz, /readyz answer on the TLS listener too
        for path in ("/metrics", "/healthz", "/readyz"):
            st, _, _ = self.c.http("GET", path)
            self.assertEqual(st, 200, path)

    # ---- client certificates bound to operators ----

    def test_node_rpcs_need_the_operators_client_certificate(self):
        req = node_req(self.c.unique("certnode"))
        good = self.as_operator(self.op_cert)
        r = good.call("NodeService", "RegisterNode", req, token=self.otok)
        self.assertEqual(r.status, 200, r)
        node_id = r.body["node"]["id"]
        hb = {"nodeId": node_id}
        for who, cert in (("no certificate", None), ("another operator's", self.op2_cert)):
            v = self.as_operator(cert)
            r = v.call("NodeService", "Heartbeat", hb, token=self.otok)
            self.assertEqual(r.status, 403, "%s: %s" % (who, r))
            self.assertEqual(r.code, "permission_denied", who)
        # a certificate from a CA the server does not trust fails the handshake
        v = self.as_operator(self.stranger_cert)
        with self.assertRaises((ssl.SSLError, OSError)):
            v.call("NodeService", "Heartbeat", hb, token=self.otok)
        # tenants need none
        r = self.c.call("JobService", "ListJobs", {}, token=self.ttok)
        self.assertEqual(r.status, 200, r)
        # the agent without a certificate is refused and says so
        state = tempfile.mkdtemp(prefix="agent-nocert-", dir=self.c.dir)
        env = self.env()
        p = subprocess.run([GPUMATCH, "agent", "--simulate",
                            os.path.join(os.environ.get("GPUMATCH_SOURCE", "."), "examples",
                                         "nodes", "rtx3090-x4.json"),
                            "--name", self.c.unique("nocert"), "--state-dir", state,
                            "--token-file", self.token_file(self.otok)],
                           capture_output=True, text=True, timeout=60, env=env)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("client certificate", p.stdout + p.stderr)

    # ---- the agent, its jobs, the probe ----

    def test_agent_over_tls_runs_jobs_with_a_minimal_environment_as_nobody_root(self):
        name = self.c.unique("tlsagent")
        p, log = self.start_agent(name)
        out = os.path.join(self.work, "env-" + name)
        r = self.gm("submit", "--label", "pool=" + name, "--duration", "5m",
                    "--env", "SPEC_VAR=from-spec", "--", "sh", "-c",
                    "env > %s.env; id -u > %s.uid" % (out, out), env=self.env(self.ttok))
        self.assertEqual(r.returncode, 0, r.stderr)
        jid = r.stdout.strip()
        j = wait_jobs(self.c, self.ttok, [jid], 90)[jid]
        with open(log) as f:
            agent_log = f.read()
        self.assertEqual(j["state"], "JOB_STATE_SUCCEEDED", "%s\nagent log:\n%s"
                         % (j, agent_log[-3000:]))
        with open(out + ".env") as f:
            env = dict(line.split("=", 1) for line in f.read().splitlines() if "=" in line)
        with open(out + ".uid") as f:
            uid = int(f.read().strip())
        allowed = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "CUDA_VISIBLE_DEVICES",
                   "GPUMATCH_JOB_ID", "GPUMATCH_LEASE_ID", "GPUMATCH_NODE_ID",
                   "GPUMATCH_GANG_INDEX", "GPUMATCH_GANG_SIZE", "GPUMATCH_GANG_PEERS",
                   "GPUMATCH_DEADLINE_US", "SPEC_VAR",
                   "PWD", "SHLVL", "_"}  # the last three: sh's own
        self.assertEqual(set(env) - allowed, set(), env)
        self.assertEqual(env.get("SPEC_VAR"), "from-spec")
        self.assertEqual(env.get("GPUMATCH_JOB_ID"), jid)
        for v in env.values():
            self.assertNotIn(self.otok, v)
        if os.geteuid() == 0:
            self.assertNotEqual(uid, 0, "a bare job ran as root")
            self.assertIn("job_user=", agent_log)
        # heartbeats arrived over TLS (the node is ready) and reports did
        # (the job's outcome is known): now the probe, over https
        node_id = json.loads(open(os.path.join(log.rsplit("/", 1)[0], "node.json")).read())[
            "nodeId"]
        pr = subprocess.run([gpu_probe_path(), "challenge", "--backend", "cpu",
                             "--server", self.c.url, "--node-id", str(node_id),
                             "--ca-file", CERTS.path("ca.pem"),
                             "--client-cert", self.op_cert[0], "--client-key", self.op_cert[1],
                             "--token-file", self.token_file(self.otok), "--timeout", "30"],
                            capture_output=True, text=True, timeout=120, env=_clean_env())
        self.assertIn(pr.returncode, (0, 3), pr.stdout + pr.stderr)
        verdict = json.loads(pr.stdout)
        self.assertIn(verdict.get("result"), ("PROBE_RESULT_PASS", "PROBE_RESULT_FAIL"),
                      verdict)
        self.assertNotIn("TLS", pr.stderr)

    def test_agent_reconnects_with_a_fresh_handshake_after_a_restart(self):
        """The agent's keep-alive TLS connections die with gpumatchd; the
        next calls must open new ones (a used TLS session cannot be
        reconnected) and the node must go on taking work."""
        name = self.c.unique("tlsrestart")
        p, log = self.start_agent(name)

        def run_one(tag):
            r = self.gm("submit", "--label", "pool=" + name, "--duration", "5m", "--",
                        "true", env=self.env(self.ttok))
            self.assertEqual(r.returncode, 0, r.stderr)
            jid = r.stdout.strip()
            j = wait_jobs(self.c, self.ttok, [jid], 90)[jid]
            with open(log) as f:
                tail = f.read()[-3000:]
            self.assertEqual(j["state"], "JOB_STATE_SUCCEEDED", "%s: %s\n%s" % (tag, j, tail))

        run_one("before")
        self.c.restart(["--listen_port=%d" % self.c.port])
        run_one("after the restart")
        self.assertIsNone(p.poll(), "the agent is still running")

    def test_token_file_mode_is_checked_and_root_jobs_need_consent(self):
        loose = self.token_file(self.otok, mode=0o644)
        p = subprocess.run([GPUMATCH, "agent", "--region", "eu", "--token-file", loose],
                           capture_output=True, text=True, timeout=30, env=self.env())
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("chmod 600", p.stderr)
        self.assertNotIn(self.otok, p.stdout + p.stderr)
        if os.geteuid() == 0:
            p = subprocess.run([GPUMATCH, "agent", "--region", "eu", "--run-as", "root",
                                "--token-file", self.token_file(self.otok)],
                               capture_output=True, text=True, timeout=30, env=self.env())
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn("--allow-root-jobs", p.stderr)
        # --help shows no secret even when one is in the environment
        h = subprocess.run([GPUMATCH, "agent", "--help"], capture_output=True, text=True,
                           timeout=30, env=self.env(self.otok))
        self.assertEqual(h.returncode, 0)
        self.assertNotIn(self.otok, h.stdout + h.stderr)

    # ---- certificate rotation ----

    def test_sighup_rotates_the_certificate_and_keeps_established_connections(self):
        import http.client

        def serial(ctx=None):
            s = socket.create_connection(("127.0.0.1", self.c.port), timeout=10)
            ctx = ctx or self.c.ssl_context
            with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
                return t.getpeercert()["subject"], t.version(), t.selected_alpn_protocol()

        before, version, _ = serial()
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        ctx = ssl.create_default_context(cafile=CERTS.path("ca.pem"))
        ctx.set_alpn_protocols(["http/1.1"])
        self.assertEqual(serial(ctx)[2], "http/1.1")
        # an established keep-alive connection
        keep = http.client.HTTPSConnection("127.0.0.1", self.c.port, timeout=10,
                                           context=self.c.ssl_context)
        keep.request("GET", "/healthz")
        self.assertEqual(keep.getresponse().read(), b"ok\n")
        try:
            shutil.copy(CERTS.path("server2.pem"), CERTS.path("live.pem"))
            shutil.copy(CERTS.path("server2.key"), CERTS.path("live.key"))
            off = self.c.log_offset()
            os.kill(self.c.pid, signal.SIGHUP)
            common.wait_for(lambda: "tls certificate and key reloaded" in self.c.log_since(off),
                            20, what="reload logged")
            after = serial()[0]
            self.assertNotEqual(before, after)
            self.assertIn((("commonName", "gpumatchd rotated"),), after)
            keep.request("GET", "/healthz")
            self.assertEqual(keep.getresponse().read(), b"ok\n")
            # a broken key: the old pair stays
            with open(CERTS.path("live.key"), "w") as f:
                f.write("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
            off = self.c.log_offset()
            os.kill(self.c.pid, signal.SIGHUP)
            common.wait_for(lambda: "tls reload failed" in self.c.log_since(off), 20,
                            what="failed reload logged")
            self.assertEqual(serial()[0], after)
            r = self.gm("list", env=self.env(self.ttok))
            self.assertEqual(r.returncode, 0, r.stderr)
        finally:
            keep.close()
            shutil.copy(CERTS.path("server.pem"), CERTS.path("live.pem"))
            shutil.copy(CERTS.path("server.key"), CERTS.path("live.key"))
            os.kill(self.c.pid, signal.SIGHUP)

    # ---- what other HTTP clients do on the wire ----

    def raw_tls(self):
        s = socket.create_connection(("127.0.0.1", self.c.port), timeout=30)
        return self.c.ssl_context.wrap_socket(s, server_hostname="127.0.0.1")

    @staticmethod
    def read_answers(t, n):
        """Reads n HTTP answers (each with a Content-Length) from t; returns
        [(status, body)]."""
        buf, out = b"", []
        while len(out) < n:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head = buf[:end].decode("latin-1")
                m = re.search(r"(?im)^content-length:\s*(\d+)", head)
                want = end + 4 + (int(m.group(1)) if m else 0)
                if len(buf) >= want:
                    out.append((int(head.split()[1]), buf[end + 4:want]))
                    buf = buf[want:]
                    continue
            chunk = t.recv(65536)
            if not chunk:
                raise AssertionError("connection closed after %d of %d answers" % (len(out), n))
            buf += chunk
        return out

    def test_requests_split_across_records_and_pipelined(self):
        """Headers and body written as separate TLS records, a body spanning
        several records, and requests pipelined in one record and in
        back-to-back records: every request gets its answer (none waits for
        bytes OpenSSL already holds)."""
        submit = "/gpumatch.v1.JobService/SubmitJob"
        req = {"idempotencyKey": "tls-split-1", "name": "tls-split",
               "spec": {"gpusPerNode": 1, "maxDurationUs": "60000000", "command": ["true"]}}
        body = json.dumps(req).encode()
        head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n"
                % (submit, self.ttok, len(body))).encode()
        with self.raw_tls() as t:
            t.sendall(head)  # one record
            t.sendall(body)  # another
            (status, answer), = self.read_answers(t, 1)
            self.assertEqual(status, 200, answer)
            self.assertIn(b'"job"', answer)
            # a 40 KB body: three records at least; refused whole, naming the field
            big = json.dumps(dict(req, idempotencyKey="tls-split-2", name="x" * 40000)).encode()
            t.sendall(head.replace(b"Content-Length: %d" % len(body),
                                   b"Content-Length: %d" % len(big)) + big)
            (status, answer), = self.read_answers(t, 1)
            self.assertEqual(status // 100, 4, answer)
            self.assertIn(b"name", answer)
            # pipelined: two requests in one record, then two records back to back
            get = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            t.sendall(get + get)
            self.assertEqual(self.read_answers(t, 2), [(200, b"ok\n")] * 2)
            t.sendall(get)
            t.sendall(get)
            t.sendall(get)
            self.assertEqual(self.read_answers(t, 3), [(200, b"ok\n")] * 3)

    # ---- start-up refusals, Redis password, secrets in logs ----

    def run_gpumatchd(self, *flags, wait_for_text=None, timeout=60):
        """Starts gpumatchd on this cluster's stores; returns (exit status or
        None if it was still running when wait_for_text showed, output)."""
        cmd = [gpumatchd_path(), "--pg_conninfo=" + self.c.pg_conninfo,
               "--redis_host=127.0.0.1", "--redis_port=%d" % self.c.redis_port,
               "--listen_port=0"] + list(flags)
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env=_clean_env(), preexec_fn=_pdeathsig)
        out = b""
        deadline = time.monotonic() + timeout
        os.set_blocking(p.stdout.fileno(), False)
        while time.monotonic() < deadline:
            chunk = p.stdout.read() or b""
            out += chunk
            if wait_for_text and wait_for_text.encode() in out:
                p.send_signal(signal.SIGTERM)
                p.wait(20)
                out += p.stdout.read() or b""
                return None, out.decode()
            if p.poll() is not None:
                out += p.stdout.read() or b""
                return p.returncode, out.decode()
            time.sleep(0.05)
        p.kill()
        p.wait()
        raise AssertionError("gpumatchd neither exited nor logged %r:\n%s"
                             % (wait_for_text, out.decode()))

    def start_gpumatchd(self, redis_port, *flags):
        """Starts gpumatchd on this cluster's Postgres and the Redis at
        redis_port; returns (process, read), read() giving all its output so
        far. The caller terminates the process."""
        gm = subprocess.Popen([gpumatchd_path(), "--pg_conninfo=" + self.c.pg_conninfo,
                               "--redis_host=127.0.0.1", "--redis_port=%d" % redis_port,
                               "--listen_port=0"] + list(flags),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=_clean_env(), preexec_fn=_pdeathsig)
        os.set_blocking(gm.stdout.fileno(), False)
        out = [b""]

        def read():
            out[0] += gm.stdout.read() or b""
            return out[0].decode(errors="replace")
        return gm, read

    def test_non_loopback_plaintext_is_refused_unless_allowed(self):
        rc, out = self.run_gpumatchd("--listen_host=0.0.0.0")
        self.assertEqual(rc, 1, out)
        self.assertIn("not a loopback address", out)
        rc, out = self.run_gpumatchd("--listen_host=0.0.0.0", "--allow_plaintext=true",
                                     wait_for_text="msg=\"listening\"")
        self.assertIsNone(rc, out)
        self.assertIn("unencrypted", out)
        rc, out = self.run_gpumatchd("--listen_host=0.0.0.0", "--metrics_listen=0.0.0.0:0",
                                     "--tls_cert_file=" + CERTS.path("server.pem"),
                                     "--tls_key_file=" + CERTS.path("server.key"))
        self.assertEqual(rc, 1, out)
        self.assertIn("metrics_listen", out)
        # a password in the conninfo never reaches the log
        rc, out = self.run_gpumatchd("--pg_conninfo=%s password=sekrit-pw-123"
                                     % self.c.pg_conninfo, wait_for_text="msg=\"listening\"")
        self.assertNotIn("sekrit-pw-123", out)
        self.assertIn("password=***", out)

    def test_redis_with_a_password(self):
        d = tempfile.mkdtemp(prefix="redis-pw-", dir=self.c.dir)
        port = free_port()
        secret = "redis-pw-%d" % os.getpid()
        rp = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--requirepass", secret, "--dir", d, "--save", "",
                               "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              preexec_fn=_pdeathsig)
        try:
            common.wait_for(lambda: subprocess.run(
                ["redis-cli", "-p", str(port), "--no-auth-warning", "-a", secret, "ping"],
                capture_output=True, text=True).stdout.strip() == "PONG", 20,
                what="redis with a password up")
            pwfile = os.path.join(d, "redis.pw")
            with open(pwfile, "w") as f:
                f.write(secret + "\n")
            os.chmod(pwfile, 0o600)
            base = ["--redis_port=%d" % port]
            rc, out = self.run_gpumatchd(*base)
            self.assertEqual(rc, 1, out)
            self.assertIn("redis_password_file", out)
            rc, out = self.run_gpumatchd(*base, "--redis_password_file=" + pwfile,
                                         wait_for_text="redis connected")
            self.assertIsNone(rc, out)
            self.assertNotIn(secret, out)
            os.chmod(pwfile, 0o644)
            rc, out = self.run_gpumatchd(*base, "--redis_password_file=" + pwfile)
            self.assertEqual(rc, 1, out)
            self.assertIn("chmod 600", out)
            self.assertNotIn(secret, out)
        finally:
            rp.terminate()
            rp.wait(20)

    def test_redis_password_rotates_on_sighup(self):
        """A new password in redis_password_file is used for the next
        connection after SIGHUP; a broken file keeps the old one."""
        d = tempfile.mkdtemp(prefix="redis-rot-", dir=self.c.dir)
        port = free_port()
        old, new = "redis-old-%d" % os.getpid(), "redis-new-%d" % os.getpid()
        rp = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--requirepass", old, "--dir", d, "--save", "",
                               "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              preexec_fn=_pdeathsig)

        def cli(pw, *args):
            return subprocess.run(["redis-cli", "-p", str(port), "--no-auth-warning",
                                   "-a", pw] + list(args),
                                  capture_output=True, text=True).stdout.strip()

        def write_pw(text):
            with open(pwfile, "w") as f:
                f.write(text)
            os.chmod(pwfile, 0o600)

        pwfile = os.path.join(d, "redis.pw")
        gm = None
        try:
            common.wait_for(lambda: cli(old, "ping") == "PONG", 20, what="redis up")
            write_pw(old + "\n")
            gm, read = self.start_gpumatchd(port, "--redis_password_file=" + pwfile)
            common.wait_for(lambda: read().count("redis connected") == 1, 60,
                            what="gpumatchd connected to redis")
            # a file gpumatchd may not use keeps the old password
            os.chmod(pwfile, 0o644)
            gm.send_signal(signal.SIGHUP)
            common.wait_for(lambda: "redis password reload failed" in read(), 30,
                            what="refused reload logged")
            self.assertIn("redis_password_file", read())
            # rotate: Redis first, then the file, then SIGHUP
            self.assertEqual(cli(old, "config", "set", "requirepass", new), "OK")
            write_pw(new + "\n")
            gm.send_signal(signal.SIGHUP)
            common.wait_for(lambda: read().count("configuration reloaded") == 2, 30,
                            what="second reload logged")
            # drop gpumatchd's connection: the reconnect must use the new password
            cli(new, "client", "kill", "type", "normal")
            common.wait_for(lambda: read().count("redis connected") >= 2, 60,
                            what="gpumatchd reconnected with the new password")
            text = read()
            self.assertNotIn("refused the password", text)
            self.assertNotIn(old, text)
            self.assertNotIn(new, text)
        finally:
            if gm is not None:
                gm.terminate()
                gm.wait(20)
            rp.terminate()
            rp.wait(20)

    def test_redis_over_tls(self):
        """redis_tls: gpumatchd reaches a TLS-only Redis that wants a client
        certificate and a password; a CA, a name or a missing client
        certificate that does not fit stops the start with the reason."""
        d = tempfile.mkdtemp(prefix="redis-tls-", dir=self.c.dir)
        port = free_port()
        secret = "redis-tls-pw-%d" % os.getpid()
        CERTS.issue("redisclient", "gpumatchd", client=True)
        os.chmod(CERTS.path("redisclient.key"), 0o600)
        rp = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port),
                               "--bind", "127.0.0.1",
                               "--tls-cert-file", CERTS.path("server.pem"),
                               "--tls-key-file", CERTS.path("server.key"),
                               "--tls-ca-cert-file", CERTS.path("ca.pem"),
                               "--tls-auth-clients", "yes",
                               "--requirepass", secret, "--dir", d, "--save", "",
                               "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              preexec_fn=_pdeathsig)
        try:
            common.wait_for(lambda: subprocess.run(
                ["redis-cli", "-p", str(port), "--tls", "--cacert", CERTS.path("ca.pem"),
                 "--cert", CERTS.path("redisclient.pem"), "--key", CERTS.path("redisclient.key"),
                 "--no-auth-warning", "-a", secret, "ping"],
                capture_output=True, text=True).stdout.strip() == "PONG", 20,
                what="redis with TLS up")
            pwfile = os.path.join(d, "redis.pw")
            with open(pwfile, "w") as f:
                f.write(secret + "\n")
            os.chmod(pwfile, 0o600)
            base = ["--redis_port=%d" % port, "--redis_tls=true",
                    "--redis_tls_ca_file=" + CERTS.path("ca.pem"),
                    "--redis_password_file=" + pwfile]
            client = ["--redis_tls_cert_file=" + CERTS.path("redisclient.pem"),
                      "--redis_tls_key_file=" + CERTS.path("redisclient.key")]
            # the scripts load through the tunnel, and /readyz (which asks
            # Redis) says ready: Redis answers over TLS
            gm, read = self.start_gpumatchd(port, *base, *client)
            try:
                common.wait_for(lambda: "redis connected" in read(), 60,
                                what="gpumatchd connected to redis over TLS")
                common.wait_for(lambda: re.search(r"listening\" addr=[^ ]*:(\d+)", read()), 60,
                                what="gpumatchd listening")
                gm_port = int(re.search(r"listening\" addr=[^ ]*:(\d+)", read()).group(1))

                def ready():
                    try:
                        return urllib.request.urlopen("http://127.0.0.1:%d/readyz" % gm_port,
                                                      timeout=10).status == 200
                    except (urllib.error.URLError, OSError):
                        return False
                common.wait_for(ready, 60, what="/readyz 200 with Redis over TLS")
                # the tunnel's socket serves gpumatchd alone
                sock_dir = glob.glob(os.path.join(os.environ.get("TMPDIR") or "/tmp",
                                                  "gpumatchd-redis-*"))
                self.assertTrue(sock_dir, "tunnel socket directory")
                self.assertEqual(os.stat(sock_dir[0]).st_mode & 0o777, 0o700)
                for path in sock_dir:
                    stranger = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    stranger.settimeout(30)
                    try:
                        stranger.connect(os.path.join(path, "redis.sock"))
                        stranger.sendall(b"PING\r\n")
                        self.assertEqual(stranger.recv(64), b"")
                    except (ConnectionError, FileNotFoundError):
                        pass
                    finally:
                        stranger.close()
                common.wait_for(lambda: "connection from another process refused" in read(),
                                30, what="stranger refused and logged")
            finally:
                gm.terminate()
                gm.wait(20)
            out = read()
            self.assertNotIn(secret, out)
            self.assertNotIn("redis tls connection failed", out)
            # killed without its exit path, gpumatchd leaves its tunnel
            # directory; the next start removes it once nobody listens there
            tmp = os.environ.get("TMPDIR") or "/tmp"
            before = set(glob.glob(os.path.join(tmp, "gpumatchd-redis-*")))
            gm, read = self.start_gpumatchd(port, *base, *client)
            try:
                common.wait_for(lambda: "redis connected" in read(), 60,
                                what="gpumatchd connected to redis over TLS")
                mine = set(glob.glob(os.path.join(tmp, "gpumatchd-redis-*"))) - before
                self.assertEqual(len(mine), 1, mine)
            finally:
                gm.kill()
                gm.wait(20)
            stale = mine.pop()
            self.assertTrue(os.path.isdir(stale))
            old = time.time() - 300  # older than the minute a start is given
            os.utime(stale, (old, old))
            # no client certificate: Redis ends the connection
            rc, out = self.run_gpumatchd(*base)
            self.assertEqual(rc, 1, out)
            self.assertIn("redis_tls_cert_file", out)
            self.assertFalse(os.path.exists(stale), out)
            self.assertIn("removed a stale redis tls tunnel directory", out)
            # Redis' certificate from a CA gpumatchd does not trust
            rc, out = self.run_gpumatchd(*base, *client,
                                         "--redis_tls_ca_file=" + CERTS.path("ca2.pem"))
            self.assertEqual(rc, 1, out)
            self.assertIn("certificate verify failed", out)
            # a name the certificate does not hold
            rc, out = self.run_gpumatchd(*base, *client, "--redis_tls_server_name=other.example")
            self.assertEqual(rc, 1, out)
            self.assertIn("certificate verify failed", out)
            # a certificate without its key is refused before any connection
            rc, out = self.run_gpumatchd(*base, client[0])
            self.assertEqual(rc, 1, out)
            self.assertIn("redis_tls_key_file", out)
            # plaintext to a TLS port gets no answer: not a silent success
            self.assertNotIn(secret, out)
        finally:
            rp.terminate()
            rp.wait(20)

    def test_zz_no_token_in_any_log(self):
        """Every token this module made, and the admin token, in no log."""
        secrets = [self.ttok, self.otok, self.otok2, self.c.admin_token]
        found = []
        for root, _, files in os.walk(self.c.dir):
            for fn in files:
                if not fn.endswith(".log"):
                    continue
                path = os.path.join(root, fn)
                with open(path, "rb") as f:
                    data = f.read()
                for s in secrets:
                    if s.encode() in data:
                        found.append(path)
        self.assertEqual(found, [])
