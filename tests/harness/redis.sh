#!/usr/bin/env bash
# redis.sh — a private redis-server for tests, living in one directory.
#   start DIR    start on a free 127.0.0.1 port (the port DIR already used, if
#                any) and print GPUMATCH_REDIS_HOST= / GPUMATCH_REDIS_PORT= lines
#   stop DIR     graceful shutdown (the AOF is flushed); no-op when not running
#   kill DIR     SIGKILL, as a crash would
#   restart DIR  stop, then start on the same port with the same data
# DIR holds redis.conf, redis.pid, redis.log, port and the AOF. Works as root
# and as any other user; needs redis-server and redis-cli (Debian redis-server).
set -euo pipefail

usage() {
	echo "usage: $0 start|stop|kill|restart DIR" >&2
	exit 2
}

[ $# -eq 2 ] || usage
cmd=$1
case $cmd in
start | restart) mkdir -p "$2" ;;
stop | kill) [ -d "$2" ] || exit 0 ;;
*) usage ;;
esac
dir=$(cd "$2" && pwd)

# The pid from the pidfile when that process is alive (zombies count as gone:
# in a container nothing may reap a daemon that exited).
live_pid() {
	local pid stat
	[ -s "$dir/redis.pid" ] || return 1
	pid=$(<"$dir/redis.pid")
	[ -r "/proc/$pid/stat" ] || return 1
	stat=$(<"/proc/$pid/stat") || return 1
	stat=${stat##*) }
	[ "${stat%% *}" != Z ] || return 1
	echo "$pid"
}

wait_gone() {
	local i
	for ((i = 0; i < 200; i++)); do
		live_pid >/dev/null || return 0
		sleep 0.05
	done
	return 1
}

pong() {
	[ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]
}

# Starts redis-server on port $1 and waits for PONG; fails when it exits
# (port taken) or does not answer within 10 s.
try_port() {
	local port=$1 i pid
	rm -f "$dir/redis.pid"
	cat >"$dir/redis.conf" <<CONF
bind 127.0.0.1
port $port
protected-mode no
daemonize yes
pidfile "$dir/redis.pid"
logfile "$dir/redis.log"
dir "$dir"
appendonly yes
appendfsync everysec
maxmemory-policy noeviction
save ""
CONF
	redis-server "$dir/redis.conf" || return 1
	for ((i = 0; i < 200; i++)); do
		if pong "$port"; then
			echo "$port" >"$dir/port"
			return 0
		fi
		# The daemon writes its pidfile once it runs; it may exit right
		# after (bind failure).
		if [ $i -gt 40 ] && ! live_pid >/dev/null; then
			return 1
		fi
		sleep 0.05
	done
	return 1
}

port_in_use() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
	local port tries
	if pid=$(live_pid); then
		echo "redis.sh: already running in $dir (pid $pid)" >&2
		return 1
	fi
	if [ -s "$dir/port" ]; then
		port=$(<"$dir/port")
		try_port "$port" || {
			echo "redis.sh: cannot restart on port $port; see $dir/redis.log" >&2
			return 1
		}
	else
		for ((tries = 0; ; tries++)); do
			if [ $tries -ge 20 ]; then
				echo "redis.sh: no free port found; see $dir/redis.log" >&2
				return 1
			fi
			port=$((20000 + RANDOM % 40000))
			port_in_use "$port" && continue
			try_port "$port" && break
			stop_pid
		done
	fi
	echo "GPUMATCH_REDIS_HOST=127.0.0.1"
	echo "GPUMATCH_REDIS_PORT=$port"
}

stop_pid() {
	local pid
	pid=$(live_pid) || return 0
	kill -CONT "$pid" 2>/dev/null || true # a SIGSTOPped server ignores TERM
	kill -TERM "$pid" 2>/dev/null || true
	wait_gone && return 0
	kill -KILL "$pid" 2>/dev/null || true
	wait_gone
}

case $cmd in
start) start ;;
stop) stop_pid ;;
kill)
	if pid=$(live_pid); then
		kill -KILL "$pid"
		wait_gone
	fi
	rm -f "$dir/redis.pid"
	;;
restart)
	stop_pid
	start
	;;
*) usage ;;
esac
