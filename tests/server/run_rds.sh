#!/usr/bin/env bash
# run_rds.sh TEST-EXE — runs the rds test against a private Redis in a temp
# dir (tests/harness/redis.sh), then stops it and removes the dir whatever
# happened. Exits with the test's status; 77 (skip) without redis-server.
set -uo pipefail

[ $# -ge 1 ] || {
	echo "usage: $0 TEST-EXE [ARGS...]" >&2
	exit 2
}
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
	echo "run_rds: redis-server/redis-cli not installed; skipping" >&2
	exit 77
fi

harness=$(cd "$(dirname "$0")/../harness" && pwd)/redis.sh
dir=$(mktemp -d "${TMPDIR:-/tmp}/gpumatch-rds.XXXXXX") || exit 1
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
	bash "$harness" stop "$dir" >/dev/null 2>&1 || bash "$harness" kill "$dir" >/dev/null 2>&1
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! out=$(bash "$harness" start "$dir"); then
	echo "run_rds: could not start redis" >&2
	cat "$dir/redis.log" >&2 2>/dev/null
	exit 1
fi
while IFS='=' read -r key value; do
	case $key in
	GPUMATCH_REDIS_HOST | GPUMATCH_REDIS_PORT) export "$key=$value" ;;
	esac
done <<<"$out"
export GPUMATCH_REDIS_DIR=$dir
export GPUMATCH_REDIS_HARNESS=$harness

"$@"
rc=$?
if [ $rc -ne 0 ] && [ -f "$dir/redis.log" ]; then
	echo "run_rds: test failed (rc=$rc); redis.log tail:" >&2
	tail -n 20 "$dir/redis.log" >&2
fi
exit $rc
