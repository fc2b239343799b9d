#!/usr/bin/env python3
"""run.py — runs the fault-injection suite (tests/chaos/test_*.py) with the
integration suite's runner: real Postgres, Redis, gpumatchd replicas and
agents; each failure is printed with the gpumatchd log written during it.

    GPUMATCH_BUILD=build-asan python3 tests/chaos/run.py [-v]
        [test_faults | test_faults.ChaosTest.test_07_postgres_stopped_20s ...]

GPUMATCH_CHAOS_SEED picks the moments of the repeated kills (default fixed)."""

import os
import sys

sys.dont_write_bytecode = True

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TESTS, "integration"))
sys.path.insert(0, HERE)

import importlib.util  # noqa: E402

_spec = importlib.util.spec_from_file_location("integration_run",
                                               os.path.join(TESTS, "integration", "run.py"))
integration_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(integration_run)


def main(argv):
    names = [a for a in argv if not a.startswith("-")]
    flags = [a for a in argv if a.startswith("-")]
    if not names:
        names = sorted(f[:-3] for f in os.listdir(HERE)
                       if f.startswith("test_") and f.endswith(".py"))
    return integration_run.main(flags + names)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
