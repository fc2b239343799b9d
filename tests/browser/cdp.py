"""cdp.py — drives the system's headless Chromium through the DevTools
protocol over a pipe (--remote-debugging-pipe: JSON messages ended by NUL on
fds 3 and 4), with nothing but the standard library. One Browser, one page;
console errors, uncaught exceptions and CSP reports are collected."""

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time


def find_chromium():
    for name in (os.environ.get("GPUMATCH_CHROMIUM", ""), "chromium", "chromium-browser",
                 "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class CdpError(Exception):
    pass


class Browser:
    def __init__(self, width=1280, height=800, chromium=None):
        exe = chromium or find_chromium()
        if not exe:
            raise CdpError("no chromium found (Debian package chromium; deploy/install-deps.sh)")
        self.profile = tempfile.mkdtemp(prefix="gm-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # move the child's ends out of the way, then onto 3 and 4 in the child
        hi_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 20)
        hi_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 20)
        os.close(to_child_r)
        os.close(from_child_w)

        def child():
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        args = [exe, "--headless=new", "--remote-debugging-pipe", "--no-sandbox",
                "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                "--disable-background-networking", "--disable-component-update",
                "--metrics-recording-only", "--mute-audio", "--hide-scrollbars",
                "--user-data-dir=" + self.profile, "--window-size=%d,%d" % (width, height),
                "about:blank"]
        self.proc = subprocess.Popen(args, preexec_fn=child, close_fds=False,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.profile, "stderr.log"), "wb"))
        os.close(hi_r)
        os.close(hi_w)
        self._id = 0
        self._lock = threading.Lock()
        self._waiting = {}
        self.events = []
        self.errors = []          # (kind, text)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session = None
        t = self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        s = self.send("Target.attachToTarget", {"targetId": t["targetId"], "flatten": True},
                      session=False)
        self.session = s["sessionId"]
        for m in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.send(m)
        self.set_viewport(width, height)

    # ---- transport ----

    def _read(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_child, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._lock:
                    for box in self._waiting.values():
                        box["error"] = "chromium exited"
                        box["ev"].set()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._lock:
                        box = self._waiting.pop(msg["id"], None)
                    if box:
                        box["msg"] = msg
                        box["ev"].set()
                else:
                    self._event(msg)

    def _event(self, msg):
        m, p = msg.get("method"), msg.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            self.errors.append(("console." + p["type"], text))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.errors.append(("exception", d.get("text", "") + " " +
                                str(d.get("exception", {}).get("description", ""))))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            self.errors.append(("log." + e.get("source", ""), e.get("text", "") + " " + e.get("url", "")))
        self.events.append(m)

    def send(self, method, params=None, session=True, timeout=60):
        with self._lock:
            self._id += 1
            mid = self._id
            box = {"ev": threading.Event()}
            self._waiting[mid] = box
        msg = {"id": mid, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        if not box["ev"].wait(timeout):
            raise CdpError("%s: no answer in %ss" % (method, timeout))
        if "error" in box:
            raise CdpError("%s: %s" % (method, box["error"]))
        if "error" in box["msg"]:
            raise CdpError("%s: %s" % (method, box["msg"]["error"]))
        return box["msg"].get("result", {})

    # ---- page ----

    def set_viewport(self, width, height, mobile=False):
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})

    def goto(self, url, timeout=30):
        self.send("Page.navigate", {"url": url})
        self.wait("document.readyState === 'complete' && !!window.GM", timeout, "page load")

    def eval(self, expr, timeout=60):
        r = self.send("Runtime.evaluate", {"expression": expr, "awaitPromise": True,
                                           "returnByValue": True}, timeout=timeout)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise CdpError("evaluate %r: %s %s" % (expr[:80], d.get("text"),
                                                   d.get("exception", {}).get("description", "")))
        return r.get("result", {}).get("value")

    def wait(self, expr, timeout=20, what=None):
        """Polls a JS expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                v = self.eval(expr)
                if v:
                    return v
            except CdpError as e:
                last = e
            time.sleep(0.1)
        raise AssertionError("waited %ss for %s%s" % (timeout, what or expr,
                                                      " (last error: %s)" % last if last else ""))

    def click(self, selector):
        self.eval("(() => { const e = document.querySelector(%s);"
                  " if (!e) throw new Error('no element ' + %s); e.click(); return true; })()"
                  % (json.dumps(selector), json.dumps(selector)))

    def fill(self, selector, value):
        self.eval("(() => { const e = document.querySelector(%s);"
                  " if (!e) throw new Error('no element ' + %s); e.value = %s;"
                  " e.dispatchEvent(new Event('input', {bubbles: true}));"
                  " e.dispatchEvent(new Event('change', {bubbles: true})); return true; })()"
                  % (json.dumps(selector), json.dumps(selector), json.dumps(value)))

    def text(self, selector):
        return self.eval("(() => { const e = document.querySelector(%s);"
                         " return e ? e.textContent : null; })()" % json.dumps(selector))

    def screenshot(self, path):
        r = self.send("Page.captureScreenshot", {"format": "png"})
        with open(path, "wb") as f:
            f.write(base64.b64decode(r["data"]))
        return path

    def close(self):
        try:
            self.send("Browser.close", session=False, timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)
