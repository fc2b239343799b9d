#!/usr/bin/env bash
# README command 1: install what is missing, build, start a private Postgres
# and Redis under a data directory, apply migrations, print an admin token
# and example calls, and run gpumatchd in the foreground. Ctrl-C stops
# everything this script started.
#
#   DATA=.gpumatch-data   where Postgres and Redis keep their files
#   PORT=7070             gpumatchd's HTTP port
#   AGENTS=1              also start three simulated node agents (examples/
#                         nodes/: 4x RTX 3090 in eu-west, 8x A100 and 8x H100
#                         in us-east) and make a demo tenant; AGENTS=0: none
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

agent_pids=()
stop_all() {
	trap - EXIT INT TERM
	for p in "${agent_pids[@]}"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	for p in "${agent_pids[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	if [ -n "${gm_pid:-}" ] && kill -TERM "$gm_pid" 2>/dev/null; then
		wait "$gm_pid" 2>/dev/null || true
	fi
	tests/harness/redis.sh stop "$data/redis" >/dev/null 2>&1 || true
	tests/harness/pg.sh stop "$data/pg" >/dev/null 2>&1 || true
	echo "run-local: stopped ${agent_pids:+the agents, }gpumatchd, Redis and Postgres (data kept in $data)" >&2
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

# its own session: Ctrl-C reaches this script, which stops it exactly once
setsid "$gm" "${flags[@]}" &
gm_pid=$!
url=http://127.0.0.1:$port
if [ -n "${GPUMATCH_TLS_CERT_FILE:-}" ]; then
	# gpumatchd reads GPUMATCH_TLS_CERT_FILE / _KEY_FILE itself; the
	# clients below verify it against the same certificate
	url=https://127.0.0.1:$port
	export GPUMATCH_CA_FILE=${GPUMATCH_CA_FILE:-$GPUMATCH_TLS_CERT_FILE}
fi
cli="$build/cli/gpumatch"
for _ in $(seq 1 100); do
	if GPUMATCH_URL=$url GPUMATCH_TOKEN=$token "$cli" admin tenants list >/dev/null 2>&1; then
		break
	fi
	kill -0 "$gm_pid" 2>/dev/null || { echo "run-local: gpumatchd exited" >&2; exit 1; }
	sleep 0.2
done

if [ "${AGENTS:-1}" = 1 ]; then
	# a demo operator with three simulated nodes and a demo tenant, made
	# once per data directory; their tokens are kept beside the admin's
	export GPUMATCH_URL=$url GPUMATCH_TOKEN=$token
	if [ ! -s "$data/operator-token" ]; then
		op=$("$cli" admin operators create --name demo-operator --node-limit 10 |
			awk '$1 == "ID" { print $2 }')
		"$cli" admin tokens create --role operator --operator "$op" --name demo-agents \
			2>/dev/null >"$data/operator-token"
		tn=$("$cli" admin tenants create --name demo --credit-limit 1000 |
			awk '$1 == "ID" { print $2 }')
		# enough prepaid credit for the README's first session: submit
		# admission holds a job's worst case (price cap x GPUs x max duration)
		"$cli" admin topup "$tn" 20000 --idempotency-id run-local-demo \
			--comment "run-local demo credit" >/dev/null
		"$cli" admin tokens create --role tenant --tenant "$tn" --name demo-cli \
			2>/dev/null >"$data/tenant-token"
		chmod 600 "$data/operator-token" "$data/tenant-token"
	fi
	unset GPUMATCH_URL GPUMATCH_TOKEN
	mkdir -p "$data/agents"
	for f in examples/nodes/*.json; do
		n=$(basename "$f" .json)
		setsid env GPUMATCH_URL="$url" GPUMATCH_TOKEN_FILE="$data/operator-token" \
			"$cli" agent --simulate "$f" --state-dir "$data/agents/$n" --grace 5s \
			>>"$data/agents/$n.log" 2>&1 &
		agent_pids+=($!)
	done
fi

cat <<MSG

gpumatchd is running on $url (Postgres and Redis data in $data).
Admin token (also in $token_file):

  export GPUMATCH_URL=$url GPUMATCH_TOKEN=$token

MSG
if [ "${AGENTS:-1}" = 1 ]; then
	cat <<MSG
Three simulated nodes are running jobs for real (agents' logs in $data/agents/).
As the demo tenant, in another terminal:

  export GPUMATCH_URL=$url GPUMATCH_TOKEN=$(cat "$data/tenant-token")
  $cli submit examples/jobs/hello.yaml --watch
  $cli submit examples/jobs/batch-price-cap.json
  $cli list
  GPUMATCH_TOKEN=$token $cli node list

MSG
fi
cat <<MSG
With curl:
  curl -s \$GPUMATCH_URL/readyz
  curl -s -X POST \$GPUMATCH_URL/gpumatch.v1.AdminService/ListTenants \\
       -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d '{}'

This is plaintext HTTP on loopback only. To serve TLS (anything off this
machine; docs/security.md), give gpumatchd a certificate and key, e.g. a
self-made test pair:

  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \\
      -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost \\
      -keyout $data/tls.key -out $data/tls.pem
  GPUMATCH_TLS_CERT_FILE=$data/tls.pem GPUMATCH_TLS_KEY_FILE=$data/tls.key $0
  export GPUMATCH_URL=https://127.0.0.1:$port GPUMATCH_CA_FILE=$data/tls.pem

Ctrl-C stops ${agent_pids:+the agents, }gpumatchd, Redis and Postgres.

MSG
wait "$gm_pid" || true
