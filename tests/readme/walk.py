#!/usr/bin/env python3
"""The README's first session, read from README.md itself and run against
`deploy/run-local.sh`, as a new user would: command 1 in one terminal, the
session's commands in another.

What is read: the first ```console block under "A first session". Lines
starting with "$ " are commands; the lines after one, up to the next, are
its documented output. What is substituted, and nothing else:
`<tenant token>` and `<admin token>` (the tokens run-local printed and
keeps in its data directory), `http://127.0.0.1:7070` (the port this test
picked), `.gpumatch-data/` (this test's data directory) and `$PWD/build/`
(the build under test).

What is checked, command by command: the exit status (0, or the `exit N` a
command echoes), and the output's shape — every documented line appears
with times, dates and node ids masked; tables have the documented header
exactly and the documented number of rows, compared with their digits
masked and their order ignored (node ids follow the order in which the
agents registered). States, headers, explanations and exit codes must be
as documented.

    GPUMATCH_BUILD=build-asan GPUMATCH_SOURCE=. python3 tests/readme/walk.py
"""

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time

SOURCE = os.path.abspath(os.environ.get("GPUMATCH_SOURCE")
                         or os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
BUILD = os.path.abspath(os.environ.get("GPUMATCH_BUILD") or os.path.join(SOURCE, "build"))
START_TIMEOUT = 600    # run-local: install check, ninja (nothing to do), stores, agents
CMD_TIMEOUT = 120


class WalkError(Exception):
    pass


def session_blocks(readme):
    """[(command, [documented output lines])] of the first session."""
    with open(readme) as f:
        text = f.read()
    at = text.find("A first session")
    if at < 0:
        raise WalkError("README.md has no \"A first session\" section")
    m = re.search(r"```console\n(.*?)```", text[at:], re.S)
    if not m:
        raise WalkError("README.md: no ```console block after \"A first session\"")
    steps = []
    for line in m.group(1).splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
        elif line.strip():
            raise WalkError("README.md: output before the first command: %r" % line)
    if len(steps) < 5:
        raise WalkError("README.md: the first session has only %d commands" % len(steps))
    return steps


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


TIME = re.compile(r"\b\d\d:\d\d:\d\d\b")
DATE = re.compile(r"\b\d{4}-\d\d-\d\d\b")
NODE = re.compile(r"\b(node|nodes)([ =])\d+")


def mask(line):
    line = DATE.sub("<date>", TIME.sub("<time>", line))
    return NODE.sub(lambda m: m.group(1) + m.group(2) + "<id>", line)


def is_header(line):
    cells = re.split(r"\s{2,}", line.strip())
    return len(cells) >= 2 and all(re.fullmatch(r"[A-Z][A-Z/ -]*", c) for c in cells)


def digits_masked(line):
    """Digits masked; an amount below a cent ("<0.01") reads as any amount."""
    return re.sub(r"\s+", " ", re.sub(r"<?\d+(\.\d+)?", "#", mask(line))).strip()


def split_tables(lines):
    """(plain lines, [(header, rows)])."""
    plain, tables, i = [], [], 0
    while i < len(lines):
        if is_header(lines[i]):
            rows, j = [], i + 1
            while j < len(lines) and lines[j].strip():
                rows.append(lines[j])
                j += 1
            tables.append((lines[i], rows))
            i = j
        else:
            plain.append(lines[i])
            i += 1
    return plain, tables


def check(cmd, want, got, rc):
    """Returns a list of differences (empty: as documented)."""
    errs = []
    got_lines = [l.rstrip() for l in got.splitlines()]
    echoed = [w for w in want if re.fullmatch(r"exit \d+", w.strip())]
    if echoed:
        if echoed[-1].strip() not in [g.strip() for g in got_lines]:
            errs.append("documented %r, got output %r" % (echoed[-1], got_lines[-3:]))
    elif rc != 0:
        errs.append("exit status %d, documented 0" % rc)
    want_plain, want_tables = split_tables([w.rstrip() for w in want])
    got_plain, got_tables = split_tables(got_lines)
    got_masked = [mask(g).strip() for g in got_plain]
    for w in want_plain:
        if not w.strip():
            continue
        if mask(w).strip() not in got_masked:
            errs.append("documented line not printed: %r" % w)
    for header, rows in want_tables:
        match = [t for t in got_tables if t[0].split() == header.split()]
        if not match:
            errs.append("no table with the header %r; got headers %r"
                        % (header, [t[0] for t in got_tables]))
            continue
        got_rows = match[0][1]
        if sorted(map(digits_masked, rows)) != sorted(map(digits_masked, got_rows)):
            errs.append("table %r: documented rows\n    %s\n  got\n    %s"
                        % (header.split()[0], "\n    ".join(rows), "\n    ".join(got_rows)))
    return errs


def substitute(cmd, subs):
    for k, v in subs.items():
        cmd = cmd.replace(k, v)
    return cmd


def wait_ready(proc, log_path, env_admin, url):
    """Until run-local says gpumatchd is running and three nodes are READY."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with open(log_path, errors="replace") as f:
            log = f.read()
        if "gpumatchd is running on " + url in log:
            break
        if proc.poll() is not None:
            raise WalkError("run-local exited %d before saying it was running:\n%s"
                            % (proc.returncode, log[-4000:]))
        if time.monotonic() > deadline:
            raise WalkError("run-local did not say it was running in %ds:\n%s"
                            % (START_TIMEOUT, log[-4000:]))
        time.sleep(0.5)
    gm = os.path.join(BUILD, "cli", "gpumatch")
    while True:
        r = subprocess.run([gm, "node", "list"], capture_output=True, text=True,
                           env=env_admin, timeout=CMD_TIMEOUT)
        if r.returncode == 0 and r.stdout.count(" READY ") >= 3:
            return log
        if time.monotonic() > deadline:
            raise WalkError("the three simulated nodes did not register:\n%s%s"
                            % (r.stdout, r.stderr))
        time.sleep(0.5)


def main():
    steps = session_blocks(os.path.join(SOURCE, "README.md"))
    tmp = tempfile.mkdtemp(prefix="gpumatch-readme-")
    os.chmod(tmp, 0o755)  # Postgres runs as the postgres user under root
    data = os.path.join(tmp, "data")
    port = free_port()
    url = "http://127.0.0.1:%d" % port
    log_path = os.path.join(tmp, "run-local.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUMATCH_")}
    env.update(GPUMATCH_BUILD=BUILD, DATA=data, PORT=str(port))
    log = open(log_path, "wb")
    # its own process group: the test stops it as Ctrl-C would
    proc = subprocess.Popen([os.path.join(SOURCE, "deploy", "run-local.sh")], cwd=SOURCE,
                            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True)
    failures = []
    try:
        admin = tenant = None
        deadline = time.monotonic() + START_TIMEOUT
        while not (admin and tenant):
            try:
                with open(os.path.join(data, "admin-token")) as f:
                    admin = f.read().strip()
                with open(os.path.join(data, "tenant-token")) as f:
                    tenant = f.read().strip()
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(log_path, errors="replace") as f:
                    raise WalkError("run-local made no tokens:\n%s" % f.read()[-4000:])
            time.sleep(0.5)
        shell_env = {k: v for k, v in os.environ.items() if not k.startswith("GPUMATCH_")}
        shell_env["GPUMATCH_CONFIG"] = os.path.join(tmp, "no-config")
        shell_env["PWD"] = SOURCE
        wait_ready(proc, log_path, dict(shell_env, GPUMATCH_URL=url, GPUMATCH_TOKEN=admin), url)
        printed = open(log_path, errors="replace").read()
        for t in (admin, tenant):
            if t not in printed:
                failures.append("run-local did not print the token %s..." % t[:6])
        subs = {"<tenant token>": tenant, "<admin token>": admin,
                "http://127.0.0.1:7070": url, ".gpumatch-data/": data + "/",
                "$PWD/build/": BUILD + "/"}
        for cmd, want in steps:
            real = substitute(cmd, subs)
            if real.startswith("export "):
                for word in shlex.split(real[len("export "):]):
                    k, _, v = word.partition("=")
                    shell_env[k] = os.path.expandvars(v.replace("$PWD", SOURCE)) \
                        if k == "PATH" else v
                print("$ %s" % cmd)
                continue
            r = subprocess.run(["bash", "-c", real], cwd=SOURCE, env=shell_env,
                               capture_output=True, text=True, timeout=CMD_TIMEOUT)
            print("$ %s\n%s%s" % (cmd, r.stdout, r.stderr), end="")
            errs = check(cmd, want, r.stdout + r.stderr, r.returncode)
            failures += ["`%s`: %s" % (cmd, e) for e in errs]
    finally:
        # Ctrl-C's path: run-local stops the agents, gpumatchd and the stores
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()
    with open(log_path, errors="replace") as f:
        tail = f.read()
    if "run-local: stopped" not in tail:
        failures.append("run-local did not say it stopped everything:\n%s" % tail[-2000:])
    if failures:
        print("\nREADME walk: %d difference(s) from README.md:" % len(failures))
        for f in failures:
            print("  - " + f)
        print("(run-local's log: %s)" % log_path)
        return 1
    subprocess.run(["rm", "-rf", tmp])
    print("\nREADME walk: %d commands as documented" % len(steps))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except WalkError as e:
        print("README walk: %s" % e)
        sys.exit(1)
