#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds with
# AddressSanitizer + UndefinedBehaviorSanitizer and -Werror, runs every test.
# This is README command 2 and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/install-deps.sh

build=${GPUMATCH_TEST_BUILD:-build-asan}
if [ ! -f "$build/build.ninja" ]; then
	meson setup "$build" \
		--buildtype=debugoptimized \
		-Dwerror=true \
		-Db_sanitize=address,undefined \
		-Db_lundef=false \
		-Dc_args=-fno-sanitize-recover=all
fi
ninja -C "$build"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
meson test -C "$build" --print-errorlogs --num-processes "$(nproc)" "$@"

# The bounded fuzz run (fuzz/smoke.sh) after the whole suite; not when only
# some tests were asked for, or with GPUMATCH_FUZZ_SMOKE=0.
if [ $# -eq 0 ] && [ "${GPUMATCH_FUZZ_SMOKE:-1}" != 0 ]; then
	./fuzz/smoke.sh
fi
