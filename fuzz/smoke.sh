#!/usr/bin/env bash
# fuzz/smoke.sh — CI's bounded fuzz run: builds the targets with clang and
# libFuzzer (build-fuzz), then runs every target for
# GPUMATCH_FUZZ_SECONDS seconds (default 20; 10 targets, about 4 minutes)
# after replaying its regression inputs. Fails on any crash, leak or
# sanitizer report. Skips (exit 0 with a message) only when clang's
# libFuzzer runtime is not installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
build=${GPUMATCH_FUZZ_BUILD:-$root/build-fuzz}
secs=${GPUMATCH_FUZZ_SECONDS:-20}
if ! command -v clang >/dev/null || ! echo 'int LLVMFuzzerTestOneInput(const char *d, long n){return 0;}' |
	clang -x c -fsanitize=fuzzer -o /dev/null - 2>/dev/null; then
	echo "fuzz/smoke.sh: clang with libFuzzer not installed; fuzz smoke not run" >&2
	exit 0
fi
if [ ! -f "$build/build.ninja" ]; then
	CC=clang meson setup "$build" "$root" -Dfuzz=true -Db_sanitize=address,undefined \
		-Db_lundef=false -Dwerror=false -Dprobe=disabled --buildtype=debugoptimized >/dev/null
fi
targets=$(sed -n "s/^  '\(fuzz_[a-z_]*\)' : .*/\1/p" "$here/meson.build")
ninja -C "$build" $(for t in $targets; do echo "fuzz/$t"; done)
export GPUMATCH_FUZZ_BUILD=$build
export GPUMATCH_FUZZ_WORK=${GPUMATCH_FUZZ_WORK:-$(mktemp -d /tmp/gpumatch-fuzz-smoke-XXXXXX)}
fail=0
for t in $targets; do
	if "$here/run.sh" "$t" "$secs" >"$GPUMATCH_FUZZ_WORK/$t.log" 2>&1; then
		echo "fuzz smoke $t: ok ($(grep -o 'stat::number_of_executed_units: [0-9]*' \
			"$GPUMATCH_FUZZ_WORK/$t.log" | grep -o '[0-9]*$') runs)"
	else
		echo "fuzz smoke $t: FAILED" >&2
		tail -60 "$GPUMATCH_FUZZ_WORK/$t.log" >&2
		fail=1
	fi
done
exit $fail
