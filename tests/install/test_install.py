#!/usr/bin/env python3
"""gpumatch installed like a product.

1. `meson install --destdir` into an empty tree puts the binaries, the
   migrations, the data, the example configuration, the systemd units, the
   man pages and the completions where docs/design.md says; then the
   installed `gpumatchd migrate`, `create-admin-token` and `gpumatchd`
   (from a working directory outside the source tree) work against a
   private Postgres and Redis, and the installed `gpumatch` talks to it.
   A marker migration added only to the installed tree proves which
   migrations gpumatchd read.
2. The Debian package, where dpkg-buildpackage, debhelper and lintian are
   present: built offline from a copy of the tree, lintian reports no
   error, and the package unpacked into a scratch root runs
   `gpumatchd --version` (GPUMATCH_DEB=0 leaves this part out).

    GPUMATCH_BUILD=build-asan GPUMATCH_SOURCE=. python3 tests/install/test_install.py
"""

import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

SOURCE = os.path.abspath(os.environ.get("GPUMATCH_SOURCE")
                         or os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
BUILD = os.path.abspath(os.environ.get("GPUMATCH_BUILD") or os.path.join(SOURCE, "build"))
HARNESS = os.path.join(SOURCE, "tests", "harness")


def run(cmd, timeout=300, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode:
        raise AssertionError("%s: exit %d\n%s%s" % (" ".join(cmd), r.returncode,
                                                    r.stdout[-3000:], r.stderr[-3000:]))
    return r


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUMATCH_")}
    env.update(extra)
    return env


class InstallTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="gpumatch-install-")
        os.chmod(cls.tmp, 0o755)
        cls.stage = os.path.join(cls.tmp, "stage")
        run(["meson", "install", "-C", BUILD, "--no-rebuild", "--quiet", "--destdir",
             cls.stage], timeout=600)
        prefix = run(["meson", "introspect", "--buildoptions", BUILD]).stdout
        import json
        opts = {o["name"]: o["value"] for o in json.loads(prefix)}
        cls.prefix = opts["prefix"]
        cls.root = cls.stage + cls.prefix
        cls.sysconf = opts["sysconfdir"]
        if not os.path.isabs(cls.sysconf):
            cls.sysconf = os.path.join(cls.prefix, cls.sysconf)

    @classmethod
    def tearDownClass(cls):
        for what, d in (("redis", "redis"), ("pg", "pg")):
            subprocess.run([os.path.join(HARNESS, what + ".sh"), "stop",
                            os.path.join(cls.tmp, d)], capture_output=True, timeout=120)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def path(self, rel):
        return os.path.join(self.root, rel)

    def test_files_in_place(self):
        for rel in ("sbin/gpumatchd", "bin/gpumatch", "bin/gpu-probe", "bin/gpumatch-sim",
                    "share/gpumatch/migrations/0001_init.sql", "share/gpumatch/gpu-peaks.csv",
                    "share/gpumatch/fetch-traces.sh", "share/gpumatch/traces.sha256",
                    "lib/systemd/system/gpumatchd.service",
                    "lib/systemd/system/gpumatch-agent.service",
                    "share/man/man1/gpumatch.1", "share/man/man8/gpumatchd.8",
                    "share/man/man1/gpu-probe.1", "share/man/man1/gpumatch-sim.1",
                    "share/bash-completion/completions/gpumatch",
                    "share/zsh/vendor-completions/_gpumatch"):
            with self.subTest(path=rel):
                self.assertTrue(os.path.isfile(self.path(rel)), rel)
        conf = self.stage + os.path.join(self.sysconf, "gpumatch", "gpumatchd.conf")
        self.assertTrue(os.path.isfile(conf), conf)
        migrations = sorted(os.listdir(os.path.join(SOURCE, "migrations")))
        self.assertEqual(sorted(os.listdir(self.path("share/gpumatch/migrations"))), migrations)
        with open(self.path("lib/systemd/system/gpumatchd.service")) as f:
            unit = f.read()
        self.assertIn("ExecStartPre=%s/sbin/gpumatchd migrate" % self.prefix, unit)
        self.assertIn("ExecStart=%s/sbin/gpumatchd serve" % self.prefix, unit)
        self.assertNotIn("@", unit)

    def test_man_pages_and_completions_follow_the_command_table(self):
        table = run([os.path.join(BUILD, "cli", "gpumatch"), "__commands"]).stdout
        import json
        cmds = json.loads(table)["commands"]
        with open(self.path("share/man/man1/gpumatch.1")) as f:
            page = f.read()
        with open(self.path("share/bash-completion/completions/gpumatch")) as f:
            bash = f.read()
        self.assertTrue(page.startswith(".TH GPUMATCH 1"))
        for c in cmds:
            with self.subTest(cmd=c["words"]):
                self.assertIn('.SS "gpumatch %s' % c["words"].replace("-", "\\-"), page)
                self.assertIn('"%s")' % c["words"], bash)
        # the completion completes: "gpumatch admin ten<TAB>" -> tenants
        r = run(["bash", "-c", "source %s; COMP_WORDS=(gpumatch admin ten); COMP_CWORD=2; "
                 "_gpumatch; echo ${COMPREPLY[*]}"
                 % self.path("share/bash-completion/completions/gpumatch")])
        self.assertEqual(r.stdout.strip(), "tenants")
        with open(self.path("share/man/man8/gpumatchd.8")) as f:
            self.assertIn("pg_conninfo", f.read(), "gpumatchd(8) lists the configuration keys")

    def test_installed_server_runs_without_the_source_tree(self):
        gmd = self.path("sbin/gpumatchd")
        gm = self.path("bin/gpumatch")
        # a migration only the installed tree has: gpumatchd must read these
        marker = self.path("share/gpumatch/migrations/0999_installed_marker.sql")
        with open(marker, "w") as f:
            f.write("CREATE TABLE installed_marker (x int);\n")
        try:
            env = clean_env()
            os.makedirs(os.path.join(self.tmp, "pg"), exist_ok=True)
            os.makedirs(os.path.join(self.tmp, "redis"), exist_ok=True)
            pg = run([os.path.join(HARNESS, "pg.sh"), "start", os.path.join(self.tmp, "pg")],
                     timeout=180).stdout
            rd = run([os.path.join(HARNESS, "redis.sh"), "start",
                      os.path.join(self.tmp, "redis")], timeout=60).stdout
            kv = {}
            for line in (pg + rd).split():
                k, _, v = line.partition("=")
                kv[k] = v.strip("'\"")
            conninfo = [l.split("=", 1)[1].strip("'") for l in pg.splitlines()
                        if l.startswith("GPUMATCH_PG=")][0]
            flags = ["--pg_conninfo=" + conninfo, "--redis_host=" + kv["GPUMATCH_REDIS_HOST"],
                     "--redis_port=" + kv["GPUMATCH_REDIS_PORT"]]
            work = os.path.join(self.tmp, "cwd")
            os.makedirs(work, exist_ok=True)
            r = run([gmd, "migrate"] + flags, cwd=work, env=env)
            self.assertIn("schema at version 999", r.stderr)
            token = run([gmd, "create-admin-token"] + flags, cwd=work,
                        env=env).stdout.split()[-1]
            port = free_port()
            log = open(os.path.join(self.tmp, "gpumatchd.log"), "wb")
            p = subprocess.Popen([gmd, "--listen_host=127.0.0.1", "--listen_port=%d" % port]
                                 + flags, cwd=work, env=env, stdout=log, stderr=log)
            try:
                url = "http://127.0.0.1:%d" % port
                for _ in range(600):
                    try:
                        with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:
                            if resp.status == 200:
                                break
                    except OSError:
                        pass
                    self.assertIsNone(p.poll(), "installed gpumatchd exited")
                    time.sleep(0.2)
                else:
                    self.fail("installed gpumatchd never ready")
                r = run([gm, "admin", "tenants", "create", "--name", "installed"], cwd=work,
                        env=clean_env(GPUMATCH_URL=url, GPUMATCH_TOKEN=token,
                                      GPUMATCH_CONFIG=os.path.join(work, "none")))
                self.assertIn("installed", r.stdout)
                r = run([gm, "--version"], cwd=work, env=env)
                self.assertRegex(r.stdout, r"^gpumatch v0\.")
            finally:
                p.terminate()
                p.wait(60)
                log.close()
        finally:
            os.unlink(marker)


class ComposeTest(unittest.TestCase):
    """deploy/compose.yaml and deploy/Containerfile as far as this machine
    can check them without a registry: the file parses, its services are
    the documented ones, what it builds from exists, every gpumatchd key it
    sets is one gpumatchd knows, and the commands it runs exist."""

    def test_compose_file(self):
        import yaml
        with open(os.path.join(SOURCE, "deploy", "compose.yaml")) as f:
            doc = yaml.safe_load(f)
        svc = doc["services"]
        self.assertEqual(set(svc), {"postgres", "redis", "setup", "gpumatchd", "agent"})
        build = svc["setup"]["build"]
        ctx = os.path.normpath(os.path.join(SOURCE, "deploy", build["context"]))
        self.assertEqual(ctx, SOURCE)
        self.assertTrue(os.path.isfile(os.path.join(ctx, build["dockerfile"])))
        with open(os.path.join(ctx, build["dockerfile"])) as f:
            cf = f.read()
        self.assertIn("debian:12", cf)
        self.assertIn("meson install", cf)
        helptext = run([os.path.join(BUILD, "server", "gpumatchd"), "--help"]).stdout
        keys = set(re.findall(r"^\s+([a-z_0-9]+)\s", helptext, re.M))
        for name in ("setup", "gpumatchd"):
            for k in svc[name].get("environment", {}):
                with self.subTest(service=name, key=k):
                    self.assertTrue(k.startswith("GPUMATCH_"), k)
                    self.assertIn(k[len("GPUMATCH_"):].lower(), keys)
        self.assertEqual(svc["gpumatchd"]["depends_on"]["setup"]["condition"],
                         "service_completed_successfully")
        script = svc["setup"]["command"][0] + svc["agent"]["command"][0]
        for cmd in ("gpumatchd migrate", "gpumatchd create-admin-token",
                    "gpumatch admin operators create", "gpumatch admin tokens create",
                    "gpumatch agent --simulate"):
            self.assertIn(cmd, script)
        for words in ("admin operators create", "admin tokens create", "agent"):
            r = run([os.path.join(BUILD, "cli", "gpumatch")] + words.split() + ["--help"])
            self.assertIn("usage: gpumatch " + words, r.stdout)
        for v in svc["agent"]["volumes"]:
            src = v.split(":")[0]
            if src.startswith(".."):
                self.assertTrue(os.path.isfile(os.path.join(SOURCE, "deploy", src,
                                                            "rtx3090-x4.json")), v)


class InstallDepsTest(unittest.TestCase):
    """deploy/install-deps.sh waits for a held apt lock instead of failing
    and lets apt show its progress. apt-get and dpkg-query are stood in for
    by scripts on PATH that record how they were called (nothing is
    installed); one package is reported missing."""

    def test_waits_for_the_apt_lock_and_shows_progress(self):
        d = tempfile.mkdtemp(prefix="gpumatch-deps-")
        try:
            calls = os.path.join(d, "calls")
            with open(os.path.join(d, "dpkg-query"), "w") as f:
                f.write('#!/bin/sh\nfor a; do last=$a; done\n'
                        '[ "$last" = lintian ] && exit 1\n'
                        'printf "install ok installed"\n')
            with open(os.path.join(d, "apt-get"), "w") as f:
                f.write('#!/bin/sh\necho "$*" >> %s\necho "Setting up fake (1.0) ..."\n' % calls)
            for n in ("dpkg-query", "apt-get"):
                os.chmod(os.path.join(d, n), 0o755)
            env = dict(os.environ, PATH=d + ":" + os.environ["PATH"], APT_LOCK_TIMEOUT="900")
            if os.getuid() != 0:
                self.skipTest("install-deps.sh uses sudo when not root")
            r = subprocess.run([os.path.join(SOURCE, "deploy", "install-deps.sh")],
                               capture_output=True, text=True, timeout=60, env=env)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(calls) as f:
                lines = f.read().splitlines()
            self.assertEqual(len(lines), 2, lines)
            self.assertIn("update", lines[0])
            self.assertRegex(lines[1], r"install -y .*lintian")
            for line in lines:
                self.assertIn("DPkg::Lock::Timeout=900", line)
            self.assertIn("installing 1 packages: lintian", r.stderr)
            self.assertIn("Setting up fake", r.stderr, "apt's own progress is shown")
        finally:
            shutil.rmtree(d, ignore_errors=True)


def deb_tools():
    return all(shutil.which(t) for t in ("dpkg-buildpackage", "dh", "lintian", "fakeroot"))


@unittest.skipIf(os.environ.get("GPUMATCH_DEB") == "0", "GPUMATCH_DEB=0")
class DebTest(unittest.TestCase):
    def test_package_builds_is_lint_clean_and_runs(self):
        if not deb_tools():
            # install-deps.sh installs them; a machine without them cannot
            # check the package, and says so rather than passing quietly
            self.fail("dpkg-buildpackage, debhelper, lintian or fakeroot missing "
                      "(deploy/install-deps.sh installs them; GPUMATCH_DEB=0 skips)")
        tmp = tempfile.mkdtemp(prefix="gpumatch-deb-")
        try:
            src = os.path.join(tmp, "gpumatch")
            files = run(["git", "ls-files", "-co", "--exclude-standard"], cwd=SOURCE).stdout
            for rel in files.splitlines():
                if not os.path.isfile(os.path.join(SOURCE, rel)):
                    continue
                os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
                shutil.copy2(os.path.join(SOURCE, rel), os.path.join(src, rel))
            env = clean_env(DEB_BUILD_OPTIONS="nocheck parallel=2")
            run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, env=env, timeout=1500)
            debs = glob.glob(os.path.join(tmp, "gpumatch_*.deb"))
            self.assertEqual(len(debs), 1, os.listdir(tmp))
            lint = subprocess.run(["lintian", "--fail-on", "error", debs[0]],
                                  capture_output=True, text=True, timeout=600)
            errors = [l for l in lint.stdout.splitlines() if l.startswith("E:")]
            self.assertEqual(errors, [], lint.stdout)
            self.assertEqual(lint.returncode, 0, lint.stdout + lint.stderr)
            root = os.path.join(tmp, "root")
            run(["dpkg-deb", "-x", debs[0], root])
            r = run([os.path.join(root, "usr", "sbin", "gpumatchd"), "--version"])
            self.assertRegex(r.stdout, r"^gpumatchd v0\.")
            control = run(["dpkg-deb", "-e", debs[0], os.path.join(tmp, "ctl")])
            with open(os.path.join(tmp, "ctl", "postinst")) as f:
                post = f.read()
            self.assertIn("adduser --system", post)
            self.assertNotIn("systemctl enable", post.replace("deb-systemd-helper", ""))
            for unit in ("gpumatchd.service", "gpumatch-agent.service"):
                self.assertTrue(os.path.isfile(os.path.join(root, "lib", "systemd", "system",
                                                            unit)), unit)
            del control
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
