"""cluster.py — a private gpumatch deployment for integration tests: a real
Postgres and a real Redis (started by pg.sh / redis.sh beside this file), the
real gpumatchd binary, and a Connect-protocol client for it (JSON or binary
protobuf). Standard library only, plus Debian's python3-protobuf and protoc
for the binary encoding.

    with Cluster(flags=["--allow_unverified=true"]) as c:
        status, body = c.call("AdminService", "ListTenants", {}, token=c.admin_token)

Everything a Cluster starts is torn down by close() (also on exceptions,
KeyboardInterrupt, SIGTERM through run.py, and at interpreter exit).
Environment:
    GPUMATCH_BUILD    build root holding server/gpumatchd (default <src>/build)
    GPUMATCH_SOURCE   source root (default: two levels above this file)
    GPUMATCH_KEEP=1   keep the temp dir (logs, data) after close
"""

import atexit
import collections
import contextlib
import copy
import ctypes
import http.client
import importlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get("GPUMATCH_SOURCE") or os.path.dirname(os.path.dirname(HERE))
BUILD = os.path.abspath(os.environ.get("GPUMATCH_BUILD") or os.path.join(SOURCE, "build"))

# Connect error code -> HTTP status (connectrpc.com/docs/protocol, current).
CONNECT_HTTP_STATUS = {
    "canceled": 499, "unknown": 500, "invalid_argument": 400,
    "deadline_exceeded": 504, "not_found": 404, "already_exists": 409,
    "permission_denied": 403, "resource_exhausted": 429,
    "failed_precondition": 400, "aborted": 409, "out_of_range": 400,
    "unimplemented": 501, "internal": 500, "unavailable": 503,
    "data_loss": 500, "unauthenticated": 401,
}


class HarnessError(Exception):
    """The harness itself could not do something (start a store, ...)."""


def gpumatchd_path():
    return os.path.join(BUILD, "server", "gpumatchd")


# ---- binary protobuf ------------------------------------------------------

_pb_lock = threading.Lock()
_pb_dir = None


def _import_protobuf():
    """google.protobuf, from Debian's python3-protobuf when the interpreter
    running us (e.g. a pyenv one) does not have it on its path."""
    try:
        import google.protobuf  # noqa: F401
        return
    except ImportError:
        pass
    for d in ("/usr/lib/python3/dist-packages",):
        if os.path.isdir(os.path.join(d, "google", "protobuf")) and d not in sys.path:
            # The C extension there is built for Debian's python3; the pure
            # Python implementation works on any interpreter.
            os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
            sys.path.append(d)
            for m in [m for m in sys.modules if m == "google" or m.startswith("google.")]:
                del sys.modules[m]
    import google.protobuf  # noqa: F401  (raises with a clear ImportError)


def proto_module(name):
    """gpumatch/v1/<name>.proto's generated Python module (protoc is run
    once per process into a temp dir)."""
    global _pb_dir
    with _pb_lock:
        if _pb_dir is None:
            _import_protobuf()
            if not shutil.which("protoc"):
                raise HarnessError("protoc not found (apt-get install protobuf-compiler)")
            d = tempfile.mkdtemp(prefix="gpumatch-pb-")
            atexit.register(shutil.rmtree, d, True)
            protos = sorted(os.path.join("gpumatch", "v1", f)
                            for f in os.listdir(os.path.join(SOURCE, "proto", "gpumatch", "v1"))
                            if f.endswith(".proto"))
            r = subprocess.run(["protoc", "--python_out=" + d, "-I", os.path.join(SOURCE, "proto")]
                               + [os.path.join(SOURCE, "proto", p) for p in protos],
                               capture_output=True, text=True)
            if r.returncode:
                raise HarnessError("protoc failed: " + r.stderr)
            sys.path.insert(0, d)
            _pb_dir = d
    return importlib.import_module("gpumatch.v1." + name + "_pb2")


def _method_types(service, method):
    """(request class, response class) of gpumatch.v1.<service>/<method>."""
    fname = re.sub(r"(?<!^)([A-Z])", r"_\1", service).lower()  # JobService -> job_service
    mod = proto_module(fname)
    sd = mod.DESCRIPTOR.services_by_name.get(service)
    if sd is None or method not in sd.methods_by_name:
        return None, None
    md = sd.methods_by_name[method]

    def cls(desc):
        m = proto_module(os.path.basename(desc.file.name)[:-len(".proto")])
        return getattr(m, desc.name)
    return cls(md.input_type), cls(md.output_type)


def to_binary(service, method, body):
    """The request dict (proto3 JSON form) as binary protobuf."""
    req_cls, _ = _method_types(service, method)  # imports protobuf first
    if req_cls is None:
        return b""
    from google.protobuf import json_format
    return json_format.ParseDict(body, req_cls()).SerializeToString()


def from_binary(service, method, data):
    """A binary response as the dict its JSON form would be."""
    _, resp_cls = _method_types(service, method)
    from google.protobuf import json_format
    msg = resp_cls()
    msg.ParseFromString(data)
    return json_format.MessageToDict(msg)


# ---- replies --------------------------------------------------------------

class Reply(collections.namedtuple("Reply", "status body")):
    """(http_status, parsed body). Also .raw (bytes), .headers (dict,
    lower-case names), .what ("POST /path") for messages."""

    def __str__(self):
        return "%s -> HTTP %s %s" % (getattr(self, "what", "?"), self.status,
                                     _short(getattr(self, "raw", b"")))

    @property
    def code(self):
        """Connect error code, or None."""
        if isinstance(self.body, dict) and self.status != 200:
            return self.body.get("code")
        return None

    @property
    def message(self):
        if isinstance(self.body, dict):
            return self.body.get("message", "")
        return ""


def _short(raw, limit=2000):
    if isinstance(raw, bytes):
        try:
            raw = raw.decode()
        except UnicodeDecodeError:
            raw = repr(raw)
    return raw if len(raw) <= limit else raw[:limit] + "...(%d bytes)" % len(raw)


def _make_reply(status, headers, raw, what, decode=None):
    body = None
    ctype = headers.get("content-type", "")
    if status == 200 and decode is not None:
        try:
            body = decode(raw)
        except Exception as e:  # a broken response is a test failure, shown
            body = {"_undecodable": repr(e)}
    elif raw:
        if "json" in ctype or raw[:1] in (b"{", b"["):
            try:
                body = json.loads(raw)
            except ValueError:
                body = {"_raw": _short(raw)}
        else:
            body = {"_raw": _short(raw)}
    else:
        body = {}
    r = Reply(status, body)
    r.raw, r.headers, r.what = raw, headers, what
    return r


# ---- helpers for processes ------------------------------------------------

def _pdeathsig():
    """Child dies with us even if we are killed hard (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _kv_lines(text):
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line.strip())
        if m:
            v = m.group(2)
            if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
                v = v[1:-1]
            out[m.group(1)] = v
    return out


def traces_flags():
    """--traces_dir for the tests' gpumatchd: GPUMATCH_TRACES, else the
    source tree's traces/ (deploy/fetch-traces.sh), else the shared copy
    beside the source tree; nothing when none exists (gpumatchd's default)."""
    for d in (os.environ.get("GPUMATCH_TRACES"), os.path.join(SOURCE, "traces"),
              os.path.join(SOURCE, "..", "shared", "traces")):
        if d and os.path.isdir(os.path.join(d, "msr-itp")):
            return ["--traces_dir=" + os.path.abspath(d)]
    return []


def _clean_env():
    """Our environment minus GPUMATCH_* but GPUMATCH_MIGRATIONS (gpumatchd
    reads GPUMATCH_<KEY> as configuration; the tests pass it all as flags)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("GPUMATCH_") or k == "GPUMATCH_MIGRATIONS"}


@contextlib.contextmanager
def _signals_deferred():
    """SIGINT/SIGTERM that arrive inside the block take effect when it ends,
    so that starting or stopping a store is never cut in half (leaving a
    server running). Handlers, not the signal mask: children must not
    inherit blocked signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got = []

    def hold(signum, frame):
        got.append(signum)
    old = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if got:
            h = old[got[0]]
            if callable(h):
                h(got[0], None)
            elif got[0] == signal.SIGINT and h == signal.default_int_handler:
                raise KeyboardInterrupt
            elif h == signal.SIG_DFL:
                os.kill(os.getpid(), got[0])


_live = []  # clusters not yet closed, for atexit and run.py


def live_clusters():
    return list(_live)


@atexit.register
def _close_all():
    for c in list(_live):
        try:
            c.close()
        except Exception as e:
            print("cluster: close at exit failed: %r" % e, file=sys.stderr)


class Cluster:
    """Postgres + Redis + gpumatchd in a fresh temp dir. flags: extra
    gpumatchd flags ("--key=value"). name: for the temp dir and messages."""

    def __init__(self, flags=(), name="it", start_timeout=60):
        self.flags = list(flags)
        self.name = name
        self.start_timeout = start_timeout
        self.dir = None
        self.pg = {}       # KEY=VALUE lines pg.sh printed
        self.redis = {}    # KEY=VALUE lines redis.sh printed
        self.pg_conninfo = None
        self.redis_host = None
        self.redis_port = None
        self.admin_token = None
        self.proc = None
        self.host = "127.0.0.1"
        self.port = None
        self.ssl_context = None  # an ssl.SSLContext: gpumatchd serves https
        self.ca_file = None  # the CA that signed gpumatchd's certificate (for the CLI)
        self.secrets = []  # every token made here: none may show up in a log
        self.log_path = None
        self._log = None
        self._pg_up = self._redis_up = False
        self._serial = 0
        self._lock = threading.Lock()
        self._replicas = []    # more gpumatchd processes on the same stores

    # ---- lifecycle ----

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False

    def start(self):
        if not os.access(gpumatchd_path(), os.X_OK):
            raise HarnessError("gpumatchd not built: %s (set GPUMATCH_BUILD to the build root)"
                               % gpumatchd_path())
        _live.append(self)
        try:
            self.dir = tempfile.mkdtemp(prefix="gpumatch-%s-" % self.name)
            # Postgres runs as the postgres user when we are root: it must be
            # able to reach its data directory below this one.
            os.chmod(self.dir, 0o755)
            self.log_path = os.path.join(self.dir, "gpumatchd.log")
            self._log = open(self.log_path, "ab", buffering=0)
            self.start_pg()
            self.start_redis()
            self._gpumatchd_cmd("migrate")
            out = self._gpumatchd_cmd("create-admin-token", "--name=it-admin")
            lines = [l.strip() for l in out.splitlines() if l.strip()]
            if not lines:
                raise HarnessError("create-admin-token printed nothing on stdout")
            self.admin_token = lines[-1]
            self.start_gpumatchd()
        except BaseException:
            self._dump_on_error()
            self.close()
            raise
        return self

    def close(self):
        """Stops everything (idempotent) and removes the temp dir. SIGINT and
        SIGTERM wait until it is done (they are delivered afterwards)."""
        with _signals_deferred():
            self._close()

    def _close(self):
        try:
            for r in self._replicas:
                r.stop_gpumatchd()
                if r._log:
                    r._log.close()
                    r._log = None
            self._replicas = []
            self.stop_gpumatchd()
        finally:
            try:
                if self._redis_up:
                    self._script("redis.sh", "stop", check=False)
                    self._redis_up = False
            finally:
                try:
                    if self._pg_up:
                        self._script("pg.sh", "stop", check=False)
                        self._pg_up = False
                finally:
                    if self._log:
                        self._log.close()
                        self._log = None
                    if self in _live:
                        _live.remove(self)
                    if self.dir and os.environ.get("GPUMATCH_KEEP") != "1":
                        shutil.rmtree(self.dir, ignore_errors=True)
                    elif self.dir:
                        print("cluster: kept %s" % self.dir, file=sys.stderr)

    def _dump_on_error(self):
        if self.log_path and os.path.exists(self.log_path):
            print("---- gpumatchd log (%s) ----\n%s\n---- end ----"
                  % (self.log_path, self.log_tail(80)), file=sys.stderr)

    # ---- stores ----

    def _script(self, script, verb, check=True, timeout=120):
        path = os.path.join(HERE, script)
        sub = os.path.join(self.dir, script.split(".")[0])
        os.makedirs(sub, exist_ok=True)
        if not os.path.exists(path):
            raise HarnessError("%s missing (expected beside cluster.py)" % path)
        with _signals_deferred():
            if verb == "start":
                setattr(self, "_%s_up" % script.split(".")[0], True)
            r = subprocess.run(["bash", path, verb, sub], capture_output=True, text=True,
                               timeout=timeout, env=dict(os.environ))
        if check and r.returncode:
            raise HarnessError("%s %s %s: exit %d\nstdout:\n%s\nstderr:\n%s"
                               % (script, verb, sub, r.returncode, r.stdout, r.stderr))
        return r.stdout

    def start_pg(self):
        """Starts (or starts again) the private Postgres; same conninfo."""
        kv = _kv_lines(self._script("pg.sh", "start"))
        conninfo = kv.get("GPUMATCH_PG") or kv.get("GPUMATCH_PG_CONNINFO")
        if not conninfo:
            raise HarnessError("pg.sh start printed no GPUMATCH_PG=: %r" % kv)
        if self.pg_conninfo and conninfo != self.pg_conninfo:
            raise HarnessError("Postgres came back with another conninfo: %s (was %s)"
                               % (conninfo, self.pg_conninfo))
        self.pg, self.pg_conninfo = kv, conninfo

    def stop_pg(self):
        self._script("pg.sh", "stop")

    def kill_pg(self):
        """kill -9 Postgres (a crash); start_pg() brings it back."""
        self._script("pg.sh", "kill")

    def pause_pg(self):
        """SIGSTOP Postgres: TCP still accepts, nothing answers."""
        self._script("pg.sh", "pause")

    def resume_pg(self):
        self._script("pg.sh", "resume")

    def start_redis(self):
        kv = _kv_lines(self._script("redis.sh", "start"))
        host, port = kv.get("GPUMATCH_REDIS_HOST"), kv.get("GPUMATCH_REDIS_PORT")
        if not host or not port:
            raise HarnessError("redis.sh start printed no GPUMATCH_REDIS_HOST/PORT: %r" % kv)
        self.redis, self.redis_host, self.redis_port = kv, host, int(port)

    def stop_redis(self):
        self._script("redis.sh", "stop")

    def kill_redis(self):
        self._script("redis.sh", "kill")

    def redis_cli(self, *args):
        """Runs redis-cli against the private Redis; returns stdout (str)."""
        r = subprocess.run(["redis-cli", "-h", self.redis_host, "-p", str(self.redis_port)]
                           + [str(a) for a in args], capture_output=True, text=True, timeout=30)
        if r.returncode:
            raise HarnessError("redis-cli %s: %s%s" % (args, r.stdout, r.stderr))
        return r.stdout.strip()

    def psql(self, sql):
        """Runs sql through psql with gpumatchd's conninfo; returns rows as
        lists of strings ('|'-separated columns, unaligned, no headers)."""
        r = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                            "-d", self.pg_conninfo, "-c", sql],
                           capture_output=True, text=True, timeout=60, env=_clean_env())
        if r.returncode:
            raise HarnessError("psql %r: exit %d: %s" % (sql, r.returncode, r.stderr))
        return [line.split("|") for line in r.stdout.splitlines() if line != ""]

    def psql_value(self, sql):
        rows = self.psql(sql)
        return rows[0][0] if rows else None

    def count(self, table, where="true"):
        return int(self.psql_value("SELECT count(*) FROM %s WHERE %s" % (table, where)))

    # ---- gpumatchd ----

    def _base_flags(self):
        return ["--pg_conninfo=" + self.pg_conninfo]

    def _gpumatchd_cmd(self, *args):
        cmd = [gpumatchd_path(), args[0]] + self._base_flags() + list(args[1:])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_clean_env())
        self._log.write(("$ %s\n%s%s" % (" ".join(cmd), r.stderr, "")).encode())
        if r.returncode:
            raise HarnessError("%s: exit %d\nstderr:\n%s" % (" ".join(cmd), r.returncode, r.stderr))
        return r.stdout

    def start_gpumatchd(self, extra_flags=()):
        """Starts gpumatchd on a free port and waits for /healthz and
        /readyz. extra_flags are added for this start only."""
        if self.proc and self.proc.poll() is None:
            raise HarnessError("gpumatchd already running")
        cmd = ([gpumatchd_path(), "--listen_host=127.0.0.1", "--listen_port=0",
                "--redis_host=" + self.redis_host, "--redis_port=%d" % self.redis_port,
                "--log_level=debug"] + self._base_flags() + traces_flags() + self.flags
               + list(extra_flags))
        self._log.write(("$ %s\n" % " ".join(cmd)).encode())
        start_off = os.path.getsize(self.log_path)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, env=_clean_env(), preexec_fn=_pdeathsig)
        self.port = None
        deadline = time.monotonic() + self.start_timeout
        while self.port is None:
            if self.proc.poll() is not None:
                raise HarnessError("gpumatchd exited with %s at start-up; log:\n%s"
                                   % (self.proc.returncode, self.log_since(start_off)))
            if time.monotonic() > deadline:
                raise HarnessError("gpumatchd logged no 'listening addr=HOST:PORT' in %ds; log:\n%s"
                                   % (self.start_timeout, self.log_since(start_off)))
            m = re.search(r"listening.*?\baddr=\"?([^\s\"]+):(\d+)", self.log_since(start_off))
            if m:
                self.port = int(m.group(2))
            else:
                time.sleep(0.05)
        self.wait_http("/healthz", deadline)
        self.wait_http("/readyz", deadline)
        return self

    def replica(self, extra_flags=(), name="b"):
        """Starts another gpumatchd on this cluster's Postgres and Redis and
        returns a view of the cluster that talks to it (call, http, metrics,
        kill9, stop_gpumatchd act on that process; its log is
        gpumatchd-NAME.log). close() of this cluster stops it too."""
        r = copy.copy(self)
        r.proc = None
        r.port = None
        r._replicas = []
        r.log_path = os.path.join(self.dir, "gpumatchd-%s.log" % name)
        r._log = open(r.log_path, "ab", buffering=0)
        self._replicas.append(r)
        return r.start_gpumatchd(extra_flags)

    def metric(self, name):
        """The value of an unlabelled metric on /metrics (None if absent)."""
        st, _, body = self.http("GET", "/metrics", timeout=10)
        if st != 200:
            return None
        for line in body.decode().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == name:
                return float(parts[1])
        return None

    def wait_http(self, path, deadline, want=200):
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError("gpumatchd exited with %s; log:\n%s"
                                   % (self.proc.returncode, self.log_tail(60)))
            try:
                st, _, body = self.http("GET", path, timeout=5)
                last = "HTTP %d %s" % (st, _short(body, 300))
                if st == want:
                    return
            except OSError as e:
                last = repr(e)
            time.sleep(0.1)
        raise HarnessError("GET %s never answered %d (last: %s); log:\n%s"
                           % (path, want, last, self.log_tail(60)))

    def stop_gpumatchd(self, sig=signal.SIGTERM, timeout=10):
        """SIGTERM (drain) and wait; SIGKILL if it does not exit in time.
        Returns the exit status (None if it was not running)."""
        p, self.proc = self.proc, None
        if p is None:
            return None
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode

    def kill9(self):
        """kill -9 gpumatchd (no drain)."""
        return self.stop_gpumatchd(sig=signal.SIGKILL)

    def restart(self, extra_flags=()):
        """Stops gpumatchd gracefully if it runs, then starts it again (on a
        new port)."""
        self.stop_gpumatchd()
        return self.start_gpumatchd(extra_flags)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # ---- the server log ----

    def log_offset(self):
        return os.path.getsize(self.log_path) if self.log_path else 0

    def log_since(self, offset):
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def log_tail(self, lines=100, since=0):
        if not self.log_path or not os.path.exists(self.log_path):
            return "(no log)"
        text = self.log_since(since).splitlines()
        cut = text[-lines:]
        head = "... (%d earlier lines in %s)\n" % (len(text) - len(cut), self.log_path) \
            if len(text) > len(cut) else ""
        return head + "\n".join(cut)

    def sanitizer_report(self, lines=60):
        """The first AddressSanitizer/LeakSanitizer/UBSan report in the
        gpumatchd log (all of its runs), or "" when there is none."""
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        text = self.log_since(0).splitlines()
        for i, line in enumerate(text):
            if re.search(r"ERROR: \w+Sanitizer|runtime error:|SUMMARY: \w+Sanitizer", line):
                return "\n".join(text[i:i + lines])
        return ""

    # ---- HTTP ----

    @property
    def url(self):
        """gpumatchd's base URL for clients (https:// when it serves TLS)."""
        return "%s://%s:%d" % ("https" if self.ssl_context else "http", self.host, self.port)

    def http(self, method, path, body=b"", headers=None, timeout=30):
        """One request on a fresh connection: (status, headers, body bytes)."""
        if self.ssl_context is not None:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=self.ssl_context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body if body else None, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def raw_request(self, data, timeout=30):
        """Writes raw bytes to the server and reads until it closes or the
        timeout; for requests http.client will not make (oversize bodies the
        server stops reading). Returns (status or None, raw response)."""
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        resp = b""
        try:
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            while True:
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, socket.timeout):
                    break
                if not chunk:
                    break
                resp += chunk
                if b"\r\n\r\n" in resp and len(resp) > 1 << 20:
                    break
        finally:
            s.close()
        m = re.match(rb"HTTP/1\.[01] (\d{3})", resp)
        return (int(m.group(1)) if m else None), resp

    def call(self, service, method, body=None, token=None, binary=False, headers=None,
             timeout=30, raw_body=None):
        """POST /gpumatch.v1.<service>/<method>. body: a dict in proto3 JSON
        form (lowerCamelCase, enum names, 64-bit ints as strings), sent as
        JSON or, with binary=True, encoded as application/proto. token: bearer
        secret, None = no Authorization header. raw_body: bytes sent as is
        (JSON unless binary). Returns Reply(status, body dict); a binary
        response is decoded to the same dict shape as JSON."""
        if "." not in service:
            service_path = "gpumatch.v1." + service
        else:
            service_path = service
        svc = service_path.rsplit(".", 1)[-1]
        path = "/%s/%s" % (service_path, method)
        h = {"Connect-Protocol-Version": "1"}
        if token is not None:
            h["Authorization"] = "Bearer " + token
        body = {} if body is None else body
        if binary:
            h["Content-Type"] = "application/proto"
            data = raw_body if raw_body is not None else to_binary(svc, method, body)

            def decode(raw):
                return from_binary(svc, method, raw)
        else:
            h["Content-Type"] = "application/json"
            data = raw_body if raw_body is not None else json.dumps(body).encode()
            decode = json.loads
        h.update(headers or {})
        status, rh, raw = self.http("POST", path, data, h, timeout)
        if status == 200 and binary and "json" in rh.get("content-type", ""):
            decode = json.loads  # let the test see what came back
        return _make_reply(status, rh, raw, "POST " + path + (" (proto)" if binary else ""),
                           decode)

    def secrets_in_logs(self):
        """[(log path, token name)] for every token made through this
        cluster (and the admin token) found in a *.log file under its dir."""
        secrets = [s for s in self.secrets + [self.admin_token] if s]
        found = []
        for root, _, files in os.walk(self.dir or "/nonexistent"):
            for fn in files:
                if not fn.endswith(".log"):
                    continue
                path = os.path.join(root, fn)
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                for i, s in enumerate(secrets):
                    if s.encode() in data:
                        found.append((path, "token #%d (%s...)" % (i, s[:6])))
        return found

    def unique(self, prefix="x"):
        with self._lock:
            self._serial += 1
            return "%s-%d-%d" % (prefix, os.getpid(), self._serial)

    # ---- identities through AdminService ----

    def must(self, reply):
        """reply's body if it is HTTP 200, else HarnessError with details."""
        if reply.status != 200:
            raise HarnessError("%s\nserver log:\n%s" % (reply, self.log_tail(40)))
        return reply.body

    def admin(self, method, body=None, **kw):
        return self.call("AdminService", method, body, token=self.admin_token, **kw)

    def create_tenant(self, name=None, **fields):
        t = dict(fields, name=name or self.unique("tenant"))
        return self.must(self.admin("CreateTenant", {"tenant": t}))["tenant"]

    def create_operator(self, name=None, node_limit=100, **fields):
        o = dict(fields, name=name or self.unique("operator"), nodeLimit=node_limit)
        return self.must(self.admin("CreateOperator", {"operatorRecord": o}))["operatorRecord"]

    def create_token(self, role, tenant_id=0, operator_id=0, name=None):
        """Returns (secret, Token dict)."""
        req = {"role": role, "name": name or self.unique("token")}
        if tenant_id:
            req["tenantId"] = str(tenant_id)
        if operator_id:
            req["operatorId"] = str(operator_id)
        b = self.must(self.admin("CreateToken", req))
        self.secrets.append(b["secret"])
        return b["secret"], b["token"]

    def new_tenant(self, name=None, funds_micros=10**15, **fields):
        """A tenant and a tenant token: (tenant dict, secret). The tenant is
        topped up with funds_micros (0: none), so that its submits can
        afford their worst case."""
        t = self.create_tenant(name, **fields)
        if funds_micros:
            self.must(self.admin("TopUpTenant", {
                "tenantId": str(t["id"]), "amountMicros": str(funds_micros),
                "idempotencyId": "harness-funds-%s" % t["id"]}))
        secret, _ = self.create_token("ROLE_TENANT", tenant_id=t["id"])
        return t, secret

    def new_operator(self, name=None, node_limit=100, **fields):
        """An operator and an operator token: (operator dict, secret)."""
        o = self.create_operator(name, node_limit, **fields)
        secret, _ = self.create_token("ROLE_OPERATOR", operator_id=o["id"])
        return o, secret
