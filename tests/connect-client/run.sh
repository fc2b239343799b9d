#!/usr/bin/env bash
# tests/connect-client/run.sh — drives gpumatchd with the official Connect
# client for Node (@connectrpc/connect-node), unmodified, in JSON and in
# binary mode, with descriptors loaded at run time from protoc's output (no
# generated code). Starts its own Postgres, Redis and gpumatchd like the
# benchmarks do. Needs node/npm and the npm registry (for `npm ci`), so it is
# run by hand, not by `meson test`:
#
#   GPUMATCH_BUILD=build tests/connect-client/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/stack.sh
build=${GPUMATCH_BUILD:-build}
stack_check_build "$build"
trap stack_stop EXIT INT TERM
here=tests/connect-client
(cd "$here" && npm ci --silent --no-audit --no-fund)
stack_start "$build" --log_level=warn
protoc --include_imports --descriptor_set_out="$STACK_DIR/set.bin" -I proto proto/gpumatch/v1/*.proto
out=$(cd "$here" && node client.mjs "$GM_URL" "$ADMIN_TOKEN" "$STACK_DIR/set.bin")
echo "$out"
# both encodings: a created, queued job; invalid_argument (3) naming the
# field; unauthenticated (16)
for mode in json binary; do
	grep -Eq "^$mode +tenant [0-9]+n job [0-9]+n created true state 1$" <<<"$out" ||
		die "$mode: no job created and read back"
	grep -Eq "^$mode +error code 3 message: spec.gpusPerNode: " <<<"$out" ||
		die "$mode: bad input not invalid_argument naming spec.gpusPerNode"
done
[ "$(grep -c 'unauth code 16' <<<"$out")" = 2 ] || die "a bad token was not unauthenticated"
say "ok: the Connect client works in JSON and binary mode"
