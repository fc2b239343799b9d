#!/usr/bin/env bash
# tests/harness/pg.sh — a private, throwaway Postgres for tests.
#
#   pg.sh start DIR    initdb into DIR/pg on first use, start on a free TCP port
#                      on 127.0.0.1 (unix socket in DIR), create database
#                      gpumatch, print shell-evaluable lines:
#                        PGHOST=… PGPORT=… PGUSER=… PGDATABASE=gpumatch
#                        GPUMATCH_PG='<conninfo>'
#                      (also written to DIR/env). A later start reuses the
#                      cluster and its port.
#   pg.sh stop DIR     fast shutdown (resumes a paused server first); no-op
#                      when not running
#   pg.sh kill DIR     kill -9 the postmaster and its children (a crash)
#   pg.sh restart DIR  stop, then start
#   pg.sh pause DIR    SIGSTOP the postmaster and its children (a stalled
#                      server: TCP still accepts, nothing answers)
#   pg.sh resume DIR   SIGCONT them
#
# Runs as a normal user, or as root (initdb refuses root: the server then
# runs as the postgres user and DIR is chowned to it). Durability settings
# (fsync, synchronous_commit) stay at their defaults. PG_EXTRA_CONF adds
# postgresql.conf lines at initdb (e.g. shared_buffers for benchmarks). Cleanup is the
# caller's: trap 'pg.sh stop DIR; rm -rf DIR' EXIT.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGUSER_NAME=postgres
DB=gpumatch

die() {
	echo "pg.sh: $*" >&2
	exit 1
}

usage() {
	die "usage: pg.sh start|stop|kill|restart|pause|resume DIR"
}

[ $# -eq 2 ] || usage
cmd=$1
[ -d "$2" ] || die "$2: not a directory"
dir=$(cd "$2" && pwd)
data=$dir/pg
log=$dir/pg.log

# Runs a server-side command as the cluster's owner. The cwd moves to DIR:
# root's cwd is often unreadable to postgres.
as_owner() {
	if [ "$(id -u)" -eq 0 ]; then
		(cd "$dir" && runuser -u "$PGUSER_NAME" -- "$@")
	else
		(cd "$dir" && "$@")
	fi
}

# True when PID runs. A zombie (left unreaped where the container's init
# does not reap) counts as gone.
alive() {
	local st
	st=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${st#Z}" = "$st" ]
}

postmaster_pid() {
	local pid
	[ -f "$data/postmaster.pid" ] || return 1
	pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null) || return 1
	[ -n "$pid" ] && alive "$pid" || return 1
	echo "$pid"
}

# The postmaster and its children, postmaster first.
server_pids() {
	local pm
	pm=$(postmaster_pid) || return 0
	echo "$pm"
	pgrep -P "$pm" 2>/dev/null || true
}

conf_port() {
	sed -n 's/^port = \([0-9]*\).*/\1/p' "$data/postgresql.conf" | tail -n 1
}

port_free() {
	! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

init_cluster() {
	if [ "$(id -u)" -eq 0 ]; then
		id "$PGUSER_NAME" >/dev/null 2>&1 || die "running as root needs a '$PGUSER_NAME' user"
		chown "$PGUSER_NAME" "$dir"
		runuser -u "$PGUSER_NAME" -- test -w "$dir" ||
			die "$dir: not reachable by $PGUSER_NAME (a parent directory is private?)"
	fi
	as_owner "$PGBIN/initdb" -D "$data" -U "$PGUSER_NAME" --auth=trust \
		--encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
		{ cat "$dir/initdb.log" >&2; die "initdb failed"; }
	cat >>"$data/postgresql.conf" <<CONF

# tests/harness/pg.sh
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 200
shared_buffers = 32MB
logging_collector = off
log_line_prefix = '%m [%p] '
CONF
	# PG_EXTRA_CONF: more postgresql.conf lines (benchmarks size the server)
	if [ -n "${PG_EXTRA_CONF:-}" ]; then
		printf '%s\n' "$PG_EXTRA_CONF" >>"$data/postgresql.conf"
	fi
}

pg_start() {
	as_owner "$PGBIN/pg_ctl" -D "$data" -l "$log" -w -t 60 -o "-c port=$1" start >/dev/null 2>&1
}

cmd_start() {
	local port
	if postmaster_pid >/dev/null; then
		die "already running (pid $(postmaster_pid))"
	fi
	if [ ! -f "$data/PG_VERSION" ]; then
		init_cluster
		# A free port is a guess until bind succeeds: retry on conflict.
		for _ in 1 2 3 4 5 6 7 8; do
			port=$((20000 + RANDOM % 40000))
			port_free "$port" || continue
			echo "port = $port" >>"$data/postgresql.conf"
			if pg_start "$port"; then
				break
			fi
			port=
			sed -i '/^port = /d' "$data/postgresql.conf"
		done
		[ -n "${port:-}" ] || { tail -n 20 "$log" >&2 || true; die "could not start postgres"; }
	else
		port=$(conf_port)
		[ -n "$port" ] || die "$data: no port in postgresql.conf"
		pg_start "$port" || { tail -n 20 "$log" >&2 || true; die "could not start postgres on port $port"; }
	fi

	local i
	for i in $(seq 1 100); do
		"$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U "$PGUSER_NAME" -d postgres && break
		[ "$i" -lt 100 ] || die "postgres not ready on port $port"
		sleep 0.1
	done
	local psql=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$PGUSER_NAME")
	if [ -z "$("${psql[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" ]; then
		"${psql[@]}" -d postgres -c "CREATE DATABASE $DB" >/dev/null
	fi

	{
		echo "PGHOST=127.0.0.1"
		echo "PGPORT=$port"
		echo "PGUSER=$PGUSER_NAME"
		echo "PGDATABASE=$DB"
		echo "GPUMATCH_PG='hostaddr=127.0.0.1 port=$port user=$PGUSER_NAME dbname=$DB'"
	} | tee "$dir/env"
}

cmd_stop() {
	local pids
	postmaster_pid >/dev/null || return 0
	# A paused server would never see the shutdown signal.
	mapfile -t pids < <(server_pids)
	[ "${#pids[@]}" -eq 0 ] || kill -CONT "${pids[@]}" 2>/dev/null || true
	as_owner "$PGBIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null 2>&1 || {
		postmaster_pid >/dev/null || return 0
		die "pg_ctl stop failed"
	}
}

cmd_kill() {
	local pids
	mapfile -t pids < <(server_pids)
	[ "${#pids[@]}" -gt 0 ] || return 0
	kill -9 "${pids[@]}" 2>/dev/null || true
	# Orphaned backends would keep the shared memory busy and block the
	# next start: wait until they are all gone.
	local p
	for _ in $(seq 1 100); do
		local left=0
		for p in "${pids[@]}"; do
			alive "$p" && left=1
		done
		if [ "$left" -eq 0 ]; then
			# Postgres refuses to start while the PID in a lock file
			# answers kill -0, which a zombie postmaster does. All are
			# dead, so the lock files are stale.
			rm -f "$data/postmaster.pid" "$dir/.s.PGSQL.$(conf_port).lock"
			return 0
		fi
		sleep 0.05
	done
	die "processes survived kill -9: ${pids[*]}"
}

cmd_signal() {
	local pids
	mapfile -t pids < <(server_pids)
	[ "${#pids[@]}" -gt 0 ] || die "not running"
	kill "-$1" "${pids[@]}"
}

case "$cmd" in
start) cmd_start ;;
stop) cmd_stop ;;
kill) cmd_kill ;;
restart)
	cmd_stop
	cmd_start
	;;
pause) cmd_signal STOP ;;
resume) cmd_signal CONT ;;
*) usage ;;
esac
