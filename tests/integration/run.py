#!/usr/bin/env python3
"""run.py — runs gpumatch's integration tests: every tests/integration/
test_*.py module (each starts its own Postgres, Redis and gpumatchd), or the
ones named. Prints each failure with the HTTP exchange and the gpumatchd log
written during the failed test; exits 0 only if all passed.

    GPUMATCH_BUILD=build python3 tests/integration/run.py [-v] [--quick]
        [test_jobs | test_jobs.JobTest | test_jobs.JobTest.test_submit ...]

--quick (or GPUMATCH_IT_QUICK=1) leaves out the slow modules (SLOW = True:
durability and failure tests). Modules with OWN_SUITE = True run only when
named (meson runs each as its own test, with its own timeout)."""

import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

import argparse  # noqa: E402
import importlib  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
import unittest  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "harness"))

import cluster  # noqa: E402


class LogResult(unittest.TextTestResult):
    """Appends the server log of the failed test to its report."""

    def _with_log(self, test, err):
        text = self._exc_info_to_string(err, test)
        c = None
        try:
            c = test.c
        except Exception:
            pass
        if c is not None and c.log_path:
            since = getattr(test, "log_offset", 0)
            text += "\n---- gpumatchd log during %s (%s) ----\n%s\n---- end of log ----\n" % (
                test.id(), c.log_path, c.log_tail(150, since=since))
        return text

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.failures[-1] = (test, self._with_log(test, err))

    def addError(self, test, err):
        super().addError(test, err)
        self.errors[-1] = (test, self._with_log(test, err))

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            lst = self.failures if issubclass(err[0], test.failureException) else self.errors
            if lst and lst[-1][0] is subtest:
                lst[-1] = (subtest, self._with_log(test, err))


def _sigterm(signum, frame):
    # meson's timeout sends SIGTERM: unwind so every cluster is torn down
    raise KeyboardInterrupt("SIGTERM")


def _shard_modules(names, k, n):
    """The modules of share k of n: the modules without a suite of their
    own, heaviest first (a module's COST, else 3 when SLOW, else 1), each
    to the share with the least cost so far."""
    mods = []
    for name in names:
        mod = importlib.import_module(name)
        if getattr(mod, "OWN_SUITE", False):
            continue
        cost = getattr(mod, "COST", 3 if getattr(mod, "SLOW", False) else 1)
        mods.append((-cost, name))
    load = [0] * n
    share = {}
    for negcost, name in sorted(mods):
        i = load.index(min(load))
        load[i] -= negcost
        share[name] = i + 1
    return {name for name, i in share.items() if i == k}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tests", nargs="*", help="modules or test ids (default: all)")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--quick", action="store_true", help="leave out SLOW modules")
    ap.add_argument("-f", "--failfast", action="store_true")
    ap.add_argument("--shard", metavar="K/N",
                    help="run only the K-th of N shares of the modules (1-based; each "
                         "meson test integration-K has its own time limit)")
    args = ap.parse_args(argv)
    shard = None
    if args.shard:
        try:
            k, n = (int(x) for x in args.shard.split("/"))
        except ValueError:
            k = n = 0
        if not 1 <= k <= n:
            ap.error("--shard: K/N with 1 <= K <= N, got %r" % args.shard)
        shard = (k, n)
    quick = args.quick or os.environ.get("GPUMATCH_IT_QUICK") == "1"
    signal.signal(signal.SIGTERM, _sigterm)

    if not os.access(cluster.gpumatchd_path(), os.X_OK):
        print("integration: gpumatchd not built at %s (set GPUMATCH_BUILD); skipping"
              % cluster.gpumatchd_path(), file=sys.stderr)
        return 77

    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    names = args.tests or sorted(f[:-3] for f in os.listdir(HERE)
                                 if f.startswith("test_") and f.endswith(".py"))
    mine = None  # with --shard: the modules of this share
    if shard and not args.tests:
        mine = _shard_modules(names, *shard)
    for name in names:
        modname = name.split(".")[0]
        mod = importlib.import_module(modname)
        if getattr(mod, "OWN_SUITE", False) and not args.tests:
            continue  # a meson test of its own runs it (OWN_SUITE = True)
        if mine is not None and modname not in mine:
            continue
        if quick and getattr(mod, "SLOW", False) and not args.tests:
            print("integration: --quick: leaving out %s (slow)" % modname, file=sys.stderr)
            continue
        if getattr(mod, "OWN_SUITE", False) and not args.tests:
            # run by its own meson test (its own timeout), when named
            continue
        if name == modname:
            suite.addTests(loader.loadTestsFromModule(mod))
        else:
            suite.addTests(loader.loadTestsFromName(name))

    runner = unittest.TextTestRunner(verbosity=2 if args.verbose else 1,
                                     resultclass=LogResult, failfast=args.failfast,
                                     stream=sys.stdout)
    t0 = time.monotonic()
    try:
        result = runner.run(suite)
    except KeyboardInterrupt:
        print("integration: interrupted; tearing down", file=sys.stderr)
        for c in cluster.live_clusters():
            c.close()
        return 130
    finally:
        for c in cluster.live_clusters():
            c.close()
    print("integration: %d run, %d failures, %d errors, %d skipped in %.0fs"
          % (result.testsRun, len(result.failures), len(result.errors), len(result.skipped),
             time.monotonic() - t0))
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
