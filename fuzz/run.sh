#!/usr/bin/env bash
# fuzz/run.sh TARGET SECONDS [libFuzzer flags...]
#
# Runs one fuzz target (fuzz_rpc_http, fuzz_pbjson, ...) for SECONDS: first
# every checked-in regression input once (each must pass), then libFuzzer
# from the checked-in seeds plus a work corpus kept across runs in
# $GPUMATCH_FUZZ_WORK (default /tmp/gpumatch-fuzz-work). Crashes, leaks and
# sanitizer reports stop it with a non-zero status and leave the input in
# the work directory (crash-*, leak-*, timeout-*): copy it to
# fuzz/regressions/TARGET/ once fixed. Needs the clang build:
#   CC=clang meson setup build-fuzz -Dfuzz=true -Db_sanitize=address,undefined \
#       -Db_lundef=false -Dprobe=disabled && ninja -C build-fuzz
# (GPUMATCH_FUZZ_BUILD names another build directory.) Use -runs=N instead of
# a time bound by passing SECONDS=0 and -runs=N.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
if [ $# -lt 2 ]; then
	echo "usage: fuzz/run.sh TARGET SECONDS [libFuzzer flags...]" >&2
	exit 2
fi
target=$1
secs=$2
shift 2
build=${GPUMATCH_FUZZ_BUILD:-$root/build-fuzz}
exe=$build/fuzz/$target
if [ ! -x "$exe" ]; then
	echo "fuzz/run.sh: $exe not built (see the header of this script)" >&2
	exit 2
fi
work=${GPUMATCH_FUZZ_WORK:-/tmp/gpumatch-fuzz-work}/$target
mkdir -p "$work"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

case $target in
fuzz_http_frame | fuzz_rpc_http) dict=$here/dict/http.dict ;;
fuzz_spec) dict=$here/dict/yaml.dict ;;
fuzz_challenge | fuzz_proto_request | fuzz_agent_reply) dict= ;;
*) dict=$here/dict/json.dict ;;
esac

if [ -d "$here/regressions/$target" ] && [ -n "$(ls -A "$here/regressions/$target")" ]; then
	"$exe" -runs=1 "$here/regressions/$target"/* >"$work/regressions.log" 2>&1 || {
		cat "$work/regressions.log" >&2
		echo "fuzz/run.sh: $target: a regression input fails again" >&2
		exit 1
	}
fi

time_arg=()
if [ "$secs" != 0 ]; then
	time_arg=(-max_total_time="$secs")
fi
exec "$exe" "${time_arg[@]}" -max_len=16384 -timeout=20 -rss_limit_mb=2048 \
	-print_final_stats=1 -artifact_prefix="$work/" ${dict:+-dict="$dict"} "$@" \
	"$work" "$here/corpus/$target"
