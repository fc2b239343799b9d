#!/usr/bin/env bash
# README command 1: install what is missing, build, start a private Postgres
# and Redis under a data directory, apply migrations, print an admin token
# and example calls, and run gpumatchd in the foreground. Ctrl-C stops
# everything this script started.
#
#   DATA=.gpumatch-data   where Postgres and Redis keep their files
#   PORT=7070             gpumatchd's HTTP port
#   BENCH=1               run the scheduler benchmark instead
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

./deploy/install-deps.sh

build=${GPUMATCH_BUILD:-build}
if [ ! -f "$build/build.ninja" ]; then
	meson setup "$build" --buildtype=release
fi
ninja -C "$build"

if [ "${BENCH:-0}" = 1 ]; then
	exec "$build/bench/sched-bench" --nodes "${NODES:-10000}" --jobs "${JOBS:-100000}"
fi

data=$(realpath -m "${DATA:-.gpumatch-data}")
port=${PORT:-7070}
mkdir -p "$data/pg" "$data/redis"

stop_all() {
	trap - EXIT INT TERM
	if [ -n "${gm_pid:-}" ] && kill -TERM "$gm_pid" 2>/dev/null; then
		wait "$gm_pid" 2>/dev/null || true
	fi
	tests/harness/redis.sh stop "$data/redis" >/dev/null 2>&1 || true
	tests/harness/pg.sh stop "$data/pg" >/dev/null 2>&1 || true
	echo "run-local: stopped gpumatchd, Redis and Postgres (data kept in $data)" >&2
}
trap stop_all EXIT INT TERM

eval "$(tests/harness/pg.sh start "$data/pg")"
eval "$(tests/harness/redis.sh start "$data/redis")"
gm="$build/server/gpumatchd"
flags=(--pg_conninfo="$GPUMATCH_PG" --redis_host="$GPUMATCH_REDIS_HOST"
	--redis_port="$GPUMATCH_REDIS_PORT" --listen_port="$port" --allow_unverified=true)
"$gm" migrate "${flags[@]}"
token_file="$data/admin-token"
if [ ! -s "$token_file" ]; then
	"$gm" create-admin-token --name=local-admin "${flags[@]}" 2>/dev/null | tail -n 1 >"$token_file"
	chmod 600 "$token_file"
fi
token=$(cat "$token_file")

cat <<MSG

gpumatchd is starting on http://127.0.0.1:$port (Postgres and Redis data in $data).
Admin token (also in $token_file):

  export GPUMATCH_URL=http://127.0.0.1:$port GPUMATCH_TOKEN=$token

Try:
  curl -s \$GPUMATCH_URL/readyz
  curl -s -X POST \$GPUMATCH_URL/gpumatch.v1.AdminService/CreateTenant \\
       -H "Authorization: Bearer \$GPUMATCH_TOKEN" -H 'Content-Type: application/json' \\
       -d '{"tenant":{"name":"acme"}}'
  curl -s -X POST \$GPUMATCH_URL/gpumatch.v1.AdminService/CreateToken \\
       -H "Authorization: Bearer \$GPUMATCH_TOKEN" -H 'Content-Type: application/json' \\
       -d '{"role":"ROLE_TENANT","tenantId":"1","name":"acme-cli"}'
  curl -s -X POST \$GPUMATCH_URL/gpumatch.v1.JobService/SubmitJob \\
       -H "Authorization: Bearer <tenant secret>" -H 'Content-Type: application/json' \\
       -d '{"idempotencyKey":"first","spec":{"gpusPerNode":1,"maxDurationUs":"3600000000","command":["nvidia-smi"]}}'

Ctrl-C stops gpumatchd, Redis and Postgres.

MSG
# its own session: Ctrl-C reaches this script, which stops it exactly once
setsid "$gm" "${flags[@]}" &
gm_pid=$!
wait "$gm_pid" || true
