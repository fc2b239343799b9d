#!/usr/bin/env python3
"""run_browser.py — the console's suite: tests/browser/test_*.py (the series
RPCs and metrics, and the browser walk),
run like the integration tests (each module starts its own Postgres, Redis
and gpumatchd) with headless Chromium driven over the DevTools protocol.

    GPUMATCH_BUILD=build python3 tests/browser/run_browser.py [-v] [test_console ...]

Screenshots go to $GPUMATCH_CONSOLE_SHOTS (default <build>/console-screenshots)."""

import os
import sys

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
sys.path.insert(0, HERE)

import run as itrun  # noqa: E402  (tests/integration/run.py)

itrun.HERE = HERE
if __name__ == "__main__":
    sys.exit(itrun.main())
