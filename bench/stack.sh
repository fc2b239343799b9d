# shellcheck shell=bash
# bench/stack.sh — sourced by bench/submit and bench/latency: starts a
# private Postgres, Redis and gpumatchd in a temp dir, calls the admin API
# with curl, samples CPU time, and stops everything (stack_stop, from a
# trap). Expects to run from the project root with `set -euo pipefail`.

STACK_DIR=
GM_PID=
GM_URL=
GM_LOG=
ADMIN_TOKEN=
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

say() {
	echo "$(basename "$0"): $*" >&2
}

die() {
	say "$*"
	exit 1
}

# Fails with the build command when the binaries are missing.
stack_check_build() {
	local build=$1 b
	for b in server/gpumatchd "${@:2}"; do
		[ -x "$build/$b" ] || die "$build/$b not built; build a release first:
  meson setup $build --buildtype=release && ninja -C $build
(or set GPUMATCH_BUILD to an existing release build)"
	done
	local bt
	bt=$(python3 -c 'import json, sys
print(next(o["value"] for o in json.load(open(sys.argv[1])) if o["name"] == "buildtype"))' \
		"$build/meson-info/intro-buildoptions.json" 2>/dev/null) || bt=unknown
	[ "$bt" = release ] || say "warning: $build is a '$bt' build, not release: figures will be low"
	BUILD_TYPE=$bt # read by the scripts that source this file
	export BUILD_TYPE
}

# Stops gpumatchd: SIGTERM drains, SIGKILL after 15 s. Safe to call twice.
gm_stop() {
	if [ -n "$GM_PID" ] && kill -0 "$GM_PID" 2>/dev/null; then
		kill -TERM "$GM_PID" 2>/dev/null || true
		local _
		for _ in $(seq 1 150); do
			kill -0 "$GM_PID" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$GM_PID" 2>/dev/null || true
		wait "$GM_PID" 2>/dev/null || true
	fi
	GM_PID=
}

# Stops gpumatchd, Redis and Postgres, then removes the temp dir (kept with
# BENCH_KEEP=1). Safe to call twice.
stack_stop() {
	gm_stop
	if [ -n "$STACK_DIR" ]; then
		tests/harness/redis.sh stop "$STACK_DIR/redis" >/dev/null 2>&1 || true
		tests/harness/pg.sh stop "$STACK_DIR/pg" >/dev/null 2>&1 || true
		if [ "${BENCH_KEEP:-0}" = 1 ]; then
			say "kept $STACK_DIR"
		else
			rm -rf "$STACK_DIR"
		fi
		STACK_DIR=
	fi
}

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# gpumatchd reads GPUMATCH_<KEY> from the environment as configuration:
# the caller's (GPUMATCH_BUILD, a stray GPUMATCH_LOG_LEVEL) must not leak in.
gm_env() {
	GM_ENV=(env)
	local v
	for v in $(compgen -e); do
		case $v in GPUMATCH_*) GM_ENV+=(-u "$v") ;; esac
	done
}

# stack_start BUILD [gpumatchd flags...]: Postgres, Redis, migrations (then
# the SQL file $STACK_SQL, if set), an admin token and gpumatchd on a free
# port, ready. Sets STACK_DIR, GM_URL,
# GM_PID, GM_LOG, ADMIN_TOKEN and exports PGHOST/PGPORT/PGUSER/PGDATABASE.
stack_start() {
	local build=$1
	shift
	GM_BIN=$build/server/gpumatchd
	STACK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gpumatch-bench.XXXXXX")
	# as root, Postgres runs as the postgres user and must reach its dir
	chmod 755 "$STACK_DIR"
	mkdir -p "$STACK_DIR/pg" "$STACK_DIR/redis"
	say "starting Postgres and Redis in $STACK_DIR"
	local envs
	# Sized as a production server would be for the benchmarks (pgbench
	# runs on the same one): the tests' 32 MB of shared buffers would make
	# every run evict and write pages back. Durability settings (fsync,
	# synchronous_commit, full_page_writes) stay at their defaults.
	envs=$(PG_EXTRA_CONF=${BENCH_PG_CONF:-"shared_buffers = 1GB
wal_buffers = 64MB
max_wal_size = 8GB
checkpoint_timeout = 15min"} tests/harness/pg.sh start "$STACK_DIR/pg") || die "Postgres did not start"
	eval "$envs"
	export PGHOST PGPORT PGUSER PGDATABASE
	envs=$(tests/harness/redis.sh start "$STACK_DIR/redis") || die "Redis did not start"
	eval "$envs"
	local port
	port=$(free_port)
	local base=(--pg_conninfo="$GPUMATCH_PG" --redis_host="$GPUMATCH_REDIS_HOST"
		--redis_port="$GPUMATCH_REDIS_PORT")
	gm_env
	"${GM_ENV[@]}" "$GM_BIN" migrate "${base[@]}" 2>"$STACK_DIR/migrate.log" ||
		{ cat "$STACK_DIR/migrate.log" >&2; die "migrate failed"; }
	if [ -n "${STACK_SQL:-}" ]; then
		say "applying $STACK_SQL"
		"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -f "$STACK_SQL" >/dev/null ||
			die "$STACK_SQL failed"
	fi
	ADMIN_TOKEN=$("${GM_ENV[@]}" "$GM_BIN" create-admin-token --name=bench-admin "${base[@]}" 2>/dev/null | tail -n 1)
	[ -n "$ADMIN_TOKEN" ] || die "create-admin-token failed"
	GM_LOG=$STACK_DIR/gpumatchd.log
	say "starting gpumatchd on 127.0.0.1:$port: $*"
	# env execs gpumatchd: $! is its pid
	"${GM_ENV[@]}" "$GM_BIN" "${base[@]}" --listen_host=127.0.0.1 --listen_port="$port" "$@" \
		>"$GM_LOG" 2>&1 &
	GM_PID=$!
	GM_URL=http://127.0.0.1:$port
	local _
	for _ in $(seq 1 300); do
		if ! kill -0 "$GM_PID" 2>/dev/null; then
			tail -n 30 "$GM_LOG" >&2
			die "gpumatchd exited at start-up"
		fi
		curl -sf -o /dev/null "$GM_URL/readyz" && return 0
		sleep 0.1
	done
	tail -n 30 "$GM_LOG" >&2
	die "gpumatchd not ready after 30 s"
}

# api TOKEN Service Method JSON: prints the reply body; fails on non-200.
api() {
	local out status
	out=$(curl -s -w '\n%{http_code}' -X POST "$GM_URL/gpumatch.v1.$2/$3" \
		-H "Authorization: Bearer $1" -H 'Content-Type: application/json' -d "$4") ||
		die "$2/$3: curl failed"
	status=${out##*$'\n'}
	out=${out%$'\n'*}
	[ "$status" = 200 ] || die "$2/$3: HTTP $status $out"
	printf '%s\n' "$out"
}

# json_get FIELD.PATH: reads JSON on stdin, prints the value.
json_get() {
	python3 -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[k]
print(v)' "$1"
}

# new_tenant NAME: creates a tenant funded with 10^15 micro-units (submits
# must afford their worst case) and a tenant token; prints the secret.
new_tenant() {
	local id
	id=$(api "$ADMIN_TOKEN" AdminService CreateTenant "{\"tenant\":{\"name\":\"$1\"}}" |
		json_get tenant.id)
	api "$ADMIN_TOKEN" AdminService TopUpTenant \
		"{\"tenantId\":\"$id\",\"amountMicros\":\"1000000000000000\",\"idempotencyId\":\"bench-$1\"}" >/dev/null
	api "$ADMIN_TOKEN" AdminService CreateToken \
		"{\"role\":\"ROLE_TENANT\",\"tenantId\":\"$id\",\"name\":\"$1-bench\"}" | json_get secret
}

# new_operator NAME [NODE_LIMIT]: creates an operator (node limit 100 by
# default) and an operator token; prints the secret.
new_operator() {
	local id
	id=$(api "$ADMIN_TOKEN" AdminService CreateOperator \
		"{\"operatorRecord\":{\"name\":\"$1\",\"nodeLimit\":${2:-100}}}" | json_get operatorRecord.id)
	api "$ADMIN_TOKEN" AdminService CreateToken \
		"{\"role\":\"ROLE_OPERATOR\",\"operatorId\":\"$id\",\"name\":\"$1-bench\"}" |
		json_get secret
}

# CPU seconds (user + system) a process and its reaped children used.
cpu_ticks() {
	local f
	[ -r "/proc/$1/stat" ] || {
		echo 0
		return
	}
	f=$(<"/proc/$1/stat")
	f=${f##*) }
	# fields after "(comm) ": 12 utime, 13 stime, 14 cutime, 15 cstime (0-based from state)
	awk '{ print $12 + $13 + $14 + $15 }' <<<"$f"
}

# CPU ticks of the Postgres server: the postmaster (whose children's
# times it reaped) plus its live children.
pg_cpu_ticks() {
	local pm total=0 p
	pm=$(head -n 1 "$STACK_DIR/pg/pg/postmaster.pid" 2>/dev/null) || {
		echo 0
		return
	}
	total=$(cpu_ticks "$pm")
	for p in $(pgrep -P "$pm" 2>/dev/null); do
		total=$((total + $(cpu_ticks "$p")))
	done
	echo "$total"
}

CLK_TCK=$(getconf CLK_TCK)

ticks_to_s() {
	awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }'
}
