#!/usr/bin/env bash
# Runs a pg test executable against a private Postgres: starts one in a temp
# dir (tests/harness/pg.sh), exports GPUMATCH_PG (conninfo),
# GPUMATCH_PG_DIR and GPUMATCH_PG_HARNESS (so the test can stop, pause and
# restart the server), runs the test, and always stops the server and
# removes the dir. Exits with the test's status.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: run_pg.sh TEST-EXE [ARGS...]" >&2; exit 2; }

harness=$(cd "$(dirname "$0")/../harness" && pwd)/pg.sh
dir=$(mktemp -d "${TMPDIR:-/tmp}/gpumatch-pg.XXXXXX")
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
	bash "$harness" stop "$dir" || true
	if [ "${GPUMATCH_KEEP_PG:-}" = 1 ]; then
		echo "run_pg.sh: kept $dir" >&2
	else
		rm -rf "$dir"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

env_lines=$(bash "$harness" start "$dir")
set -a
eval "$env_lines"
set +a
export GPUMATCH_PG_DIR=$dir GPUMATCH_PG_HARNESS=$harness

rc=0
"$@" || rc=$?
if [ "$rc" -ne 0 ] && [ -f "$dir/pg.log" ]; then
	echo "run_pg.sh: test failed (rc=$rc); postgres log tail:" >&2
	tail -n 30 "$dir/pg.log" >&2 || true
fi
exit "$rc"
