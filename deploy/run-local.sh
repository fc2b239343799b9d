#!/usr/bin/env bash
# README command 1: install what is missing, build an optimized gpumatch and
# run it locally. Until gpumatchd lands this builds everything and runs the
# scheduler benchmark on the real Alibaba node inventory.
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/install-deps.sh

build=${GPUMATCH_BUILD:-build}
if [ ! -f "$build/build.ninja" ]; then
	meson setup "$build" --buildtype=release
fi
ninja -C "$build"

nodes=${NODES:-10000}
jobs=${JOBS:-100000}
echo "run-local: scheduler benchmark, $nodes nodes x $jobs jobs" >&2
exec "$build/bench/sched-bench" --nodes "$nodes" --jobs "$jobs"
