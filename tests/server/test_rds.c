/* test_rds.c — rds against a real Redis started by run_rds.sh: commands,
 * scripts, pipelining, NOSCRIPT reload, restart and crash, a stopped server,
 * and exactly-once callbacks through rds_free (also from inside callbacks). */
#include "rds.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static struct event_base *base;
static const char *host;
static int port;
static const char *redis_dir;
static const char *harness;
static int failures;

#define CHECK(c)                                                                              \
	do {                                                                                  \
		if (!(c)) {                                                                   \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c); \
			failures++;                                                           \
		}                                                                             \
	} while (0)

static const struct rds_script scripts[] = {
	{ "move", "local s = redis.call('ZSCORE', KEYS[1], ARGV[1])\n"
	          "if not s then return 0 end\n"
	          "redis.call('ZREM', KEYS[1], ARGV[1])\n"
	          "redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])\n"
	          "redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])\n"
	          "return redis.call('ZCARD', KEYS[2])\n" },
	{ "echo", "return ARGV[1]" },
	{ "fail", "return redis.error_reply('ERR boom')" },
	{ NULL, NULL },
};
enum { S_MOVE, S_ECHO, S_FAIL, NSCRIPTS };

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs the loop until *counter reaches target; false after timeout_ms. A
 * persistent 2 ms tick (see main) makes every EVLOOP_ONCE return soon. */
static bool run_until(const int *counter, int target, int timeout_ms)
{
	int64_t end = now_ms() + timeout_ms;
	while (*counter < target) {
		if (now_ms() > end)
			return false;
		event_base_loop(base, EVLOOP_ONCE);
	}
	return true;
}

static void run_for(int ms)
{
	int64_t end = now_ms() + ms;
	while (now_ms() < end)
		event_base_loop(base, EVLOOP_ONCE);
}

static void harness_do(const char *verb)
{
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "bash '%s' %s '%s' >/dev/null", harness, verb, redis_dir);
	int rc = system(cmd);
	if (rc != 0)
		fprintf(stderr, "harness %s failed rc=%d\n", verb, rc);
	CHECK(rc == 0);
}

static pid_t redis_pid(void)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/redis.pid", redis_dir);
	FILE *f = fopen(path, "r");
	long pid = 0;
	if (f) {
		if (fscanf(f, "%ld", &pid) != 1)
			pid = 0;
		fclose(f);
	}
	return (pid_t)pid;
}

/* What one callback saw. */
struct rec {
	int calls;
	bool early; /* ran before the call that asked for it returned */
	int type;   /* REDIS_REPLY_*, or -1 for reply NULL */
	long long integer;
	char str[128];
	size_t len;
	size_t elements;
	char elem[4][32];
	size_t elem_len[4];
	char err[64];
};

static bool in_call;

static void rec_cb(redisReply *reply, const char *err, void *arg)
{
	struct rec *rc = arg;
	rc->calls++;
	if (in_call)
		rc->early = true;
	if (!reply) {
		rc->type = -1;
		CHECK(err != NULL);
		snprintf(rc->err, sizeof(rc->err), "%s", err ? err : "");
		return;
	}
	CHECK(err == NULL);
	rc->type = reply->type;
	rc->integer = reply->integer;
	rc->len = 0;
	if (reply->str && reply->len < sizeof(rc->str)) {
		memcpy(rc->str, reply->str, reply->len);
		rc->len = reply->len;
	}
	rc->elements = reply->type == REDIS_REPLY_ARRAY ? reply->elements : 0;
	for (size_t i = 0; i < rc->elements && i < 4; i++) {
		redisReply *e = reply->element[i];
		rc->elem_len[i] = 0;
		if (e->type == REDIS_REPLY_INTEGER)
			rc->elem_len[i] =
			    (size_t)snprintf(rc->elem[i], sizeof(rc->elem[i]), "%lld", e->integer);
		else if (e->str && e->len < sizeof(rc->elem[i])) {
			memcpy(rc->elem[i], e->str, e->len);
			rc->elem_len[i] = e->len;
		}
	}
}

static void send_cmd(struct rds *r, struct rec *rc, int argc, const char **argv, const size_t *lens)
{
	in_call = true;
	int ret = rds_cmd(r, rec_cb, rc, argc, argv, lens);
	in_call = false;
	CHECK(ret == 0);
}

static void send_script(struct rds *r, int idx, struct rec *rc, int numkeys, int argc,
                        const char **argv, const size_t *lens)
{
	in_call = true;
	int ret = rds_script(r, idx, rec_cb, rc, numkeys, argc, argv, lens);
	in_call = false;
	CHECK(ret == 0);
}

/* Sends one command and waits for its answer. */
static struct rec sync_cmd(struct rds *r, int argc, const char **argv, const size_t *lens)
{
	struct rec rc = { 0 };
	send_cmd(r, &rc, argc, argv, lens);
	CHECK(run_until(&rc.calls, 1, 3000));
	CHECK(rc.calls == 1 && !rc.early);
	return rc;
}

static bool rec_is(const struct rec *rc, int type, const char *str, size_t len)
{
	return rc->calls == 1 && rc->type == type && rc->len == len &&
	       memcmp(rc->str, str, len) == 0;
}

static int hooks;
static void count_hook(void *arg)
{
	(void)arg;
	hooks++;
}

static int own_hooks;
static void own_hook(void *arg)
{
	(void)arg;
	own_hooks++;
}

static void test_bad_args(void)
{
	CHECK(rds_new(NULL, "127.0.0.1", port, scripts) == NULL);
	CHECK(rds_new(base, NULL, port, scripts) == NULL);
	CHECK(rds_new(base, "127.0.0.1", 0, scripts) == NULL);
	rds_free(NULL);
	CHECK(!rds_ready(NULL));
	CHECK(rds_cmd(NULL, rec_cb, NULL, 1, (const char *[]){ "PING" }, NULL) == -1);
	printf("ok - bad arguments\n");
}

/* Before the connection is up commands fail on the next loop turn. */
static struct rds *test_connect(void)
{
	struct rds *r = rds_new(base, host, port, scripts);
	CHECK(r != NULL);
	rds_on_connect(r, count_hook, NULL);
	CHECK(!rds_ready(r));
	struct rec early = { 0 };
	send_cmd(r, &early, 1, (const char *[]){ "PING" }, NULL);
	CHECK(early.calls == 0);
	CHECK(run_until(&hooks, 1, 5000));
	CHECK(rds_ready(r));
	CHECK(early.calls == 1 && !early.early && early.type == -1);
	CHECK(strcmp(early.err, "redis unavailable") == 0);
	printf("ok - connect, scripts loaded, hook ran\n");
	return r;
}

static void test_plain(struct rds *r)
{
	struct rec flush = sync_cmd(r, 1, (const char *[]){ "FLUSHALL" }, NULL);
	CHECK(rec_is(&flush, REDIS_REPLY_STATUS, "OK", 2));

	/* Pipelined, binary keys and values. */
	struct rec set = { 0 }, get = { 0 }, zadd = { 0 }, zrange = { 0 }, fset = { 0 },
	           fget = { 0 }, bad = { 0 };
	const char *set_argv[] = { "SET", "bin\0key", "a\0b\r\nc" };
	const size_t set_lens[] = { 3, 7, 6 };
	send_cmd(r, &set, 3, set_argv, set_lens);
	send_cmd(r, &get, 2, (const char *[]){ "GET", "bin\0key" }, (const size_t[]){ 3, 7 });
	const char *zadd_argv[] = { "ZADD", "z", "2", "m\0two", "1", "m\r\none" };
	const size_t zadd_lens[] = { 4, 1, 1, 5, 1, 6 };
	send_cmd(r, &zadd, 6, zadd_argv, zadd_lens);
	send_cmd(r, &zrange, 4, (const char *[]){ "ZRANGE", "z", "0", "-1" }, NULL);
	in_call = true;
	CHECK(rds_cmdf(r, rec_cb, &fset, "SET %s %b", "fmt key", "x\0y", (size_t)3) == 0);
	CHECK(rds_cmdf(r, rec_cb, &fget, "GET %s", "fmt key") == 0);
	CHECK(rds_cmdf(r, rec_cb, &bad, "INCR %s", "fmt key") == 0);
	in_call = false;
	CHECK(run_until(&bad.calls, 1, 3000));

	CHECK(rec_is(&set, REDIS_REPLY_STATUS, "OK", 2));
	CHECK(rec_is(&get, REDIS_REPLY_STRING, "a\0b\r\nc", 6));
	CHECK(zadd.calls == 1 && zadd.type == REDIS_REPLY_INTEGER && zadd.integer == 2);
	CHECK(zrange.calls == 1 && zrange.type == REDIS_REPLY_ARRAY && zrange.elements == 2);
	CHECK(zrange.elem_len[0] == 6 && memcmp(zrange.elem[0], "m\r\none", 6) == 0);
	CHECK(zrange.elem_len[1] == 5 && memcmp(zrange.elem[1], "m\0two", 5) == 0);
	CHECK(rec_is(&fset, REDIS_REPLY_STATUS, "OK", 2));
	CHECK(rec_is(&fget, REDIS_REPLY_STRING, "x\0y", 3));
	/* An error reply is a reply, passed as is. */
	CHECK(bad.calls == 1 && bad.type == REDIS_REPLY_ERROR && bad.err[0] == '\0');
	CHECK(!set.early && !get.early && !zrange.early && !fget.early);
	printf("ok - plain commands, binary-safe, pipelined in order\n");
}

static void test_script(struct rds *r)
{
	struct rec zadd =
	    sync_cmd(r, 4, (const char *[]){ "ZADD", "q:pending", "5", "job1" }, NULL);
	CHECK(zadd.integer == 1);

	/* Moves job1 from pending to running and records its node, atomically. */
	const char *argv[] = { "q:pending", "q:running", "job:node", "job1", "7", "node\0A" };
	const size_t lens[] = { 9, 9, 8, 4, 1, 6 };
	struct rec mv1 = { 0 }, mv2 = { 0 };
	send_script(r, S_MOVE, &mv1, 3, 6, argv, lens);
	send_script(r, S_MOVE, &mv2, 3, 6, argv, lens); /* nothing left to move */
	CHECK(run_until(&mv2.calls, 1, 3000));
	CHECK(mv1.calls == 1 && mv1.type == REDIS_REPLY_INTEGER && mv1.integer == 1);
	CHECK(mv2.calls == 1 && mv2.type == REDIS_REPLY_INTEGER && mv2.integer == 0);
	CHECK(!mv1.early && !mv2.early);

	struct rec pend = sync_cmd(r, 2, (const char *[]){ "ZCARD", "q:pending" }, NULL);
	CHECK(pend.integer == 0);
	struct rec run = sync_cmd(r, 3, (const char *[]){ "ZSCORE", "q:running", "job1" }, NULL);
	CHECK(rec_is(&run, REDIS_REPLY_STRING, "7", 1));
	struct rec node = sync_cmd(r, 3, (const char *[]){ "HGET", "job:node", "job1" }, NULL);
	CHECK(rec_is(&node, REDIS_REPLY_STRING, "node\0A", 6));

	struct rec echo = { 0 }, fail = { 0 };
	send_script(r, S_ECHO, &echo, 0, 1, (const char *[]){ "e\0cho" }, (const size_t[]){ 5 });
	send_script(r, S_FAIL, &fail, 0, 0, NULL, NULL);
	CHECK(run_until(&fail.calls, 1, 3000));
	CHECK(rec_is(&echo, REDIS_REPLY_STRING, "e\0cho", 5));
	CHECK(fail.calls == 1 && fail.type == REDIS_REPLY_ERROR && strstr(fail.str, "boom"));

	/* Rejected without a callback. */
	struct rec none = { 0 };
	CHECK(rds_script(r, NSCRIPTS, rec_cb, &none, 0, 0, NULL, NULL) == -1);
	CHECK(rds_script(r, -1, rec_cb, &none, 0, 0, NULL, NULL) == -1);
	CHECK(rds_script(r, S_ECHO, rec_cb, &none, 2, 1, (const char *[]){ "k" }, NULL) == -1);
	run_for(20);
	CHECK(none.calls == 0);
	printf("ok - lua script: multi-key atomic move, binary args, error reply\n");
}

struct pipe {
	int calls;
	int wrong; /* replies out of order or not integers */
};

static void pipe_cb(redisReply *reply, const char *err, void *arg)
{
	struct pipe *p = arg;
	p->calls++;
	if (!reply || err || reply->type != REDIS_REPLY_INTEGER || reply->integer != p->calls)
		p->wrong++;
}

static void test_pipeline(struct rds *r)
{
	enum { N = 10000 };
	struct pipe p = { 0 };
	sync_cmd(r, 2, (const char *[]){ "DEL", "counter" }, NULL);
	for (int i = 0; i < N; i++)
		CHECK(rds_cmd(r, pipe_cb, &p, 2, (const char *[]){ "INCR", "counter" }, NULL) == 0);
	CHECK(p.calls == 0);
	CHECK(run_until(&p.calls, N, 20000));
	run_for(50);
	CHECK(p.calls == N);
	CHECK(p.wrong == 0);
	struct rec get = sync_cmd(r, 2, (const char *[]){ "GET", "counter" }, NULL);
	CHECK(rec_is(&get, REDIS_REPLY_STRING, "10000", 5));
	printf("ok - %d pipelined commands, each answered once, in order\n", N);
}

static void test_noscript(struct rds *r)
{
	struct rec fl = sync_cmd(r, 2, (const char *[]){ "SCRIPT", "FLUSH" }, NULL);
	CHECK(rec_is(&fl, REDIS_REPLY_STATUS, "OK", 2));

	/* Each of these meets NOSCRIPT once and is retried transparently. */
	struct rec echo[5] = { 0 };
	const char *args[5] = { "a", "b", "c", "d", "e" };
	for (int i = 0; i < 5; i++)
		send_script(r, S_ECHO, &echo[i], 0, 1, &args[i], NULL);
	CHECK(run_until(&echo[4].calls, 1, 3000));
	run_for(20);
	for (int i = 0; i < 5; i++) {
		CHECK(rec_is(&echo[i], REDIS_REPLY_STRING, args[i], 1));
		CHECK(!echo[i].early);
	}
	struct rec err = { 0 };
	sync_cmd(r, 1, (const char *[]){ "PING" }, NULL);
	send_script(r, S_FAIL, &err, 0, 0, NULL, NULL);
	CHECK(run_until(&err.calls, 1, 3000));
	CHECK(err.type == REDIS_REPLY_ERROR && strstr(err.str, "boom"));
	printf("ok - SCRIPT FLUSH then rds_script reloads on NOSCRIPT\n");
}

/* SHA1 of each script, computed by Redis itself, for SCRIPT EXISTS. */
static void script_shas(struct rds *r, char sha[NSCRIPTS][41])
{
	for (int i = 0; i < NSCRIPTS; i++) {
		struct rec rc = sync_cmd(r, 4,
		                         (const char *[]){ "EVAL", "return redis.sha1hex(ARGV[1])",
		                                           "0", scripts[i].lua },
		                         NULL);
		CHECK(rc.type == REDIS_REPLY_STRING && rc.len == 40);
		memcpy(sha[i], rc.str, 40);
		sha[i][40] = '\0';
	}
	/* EVAL cached the helper only; make sure ours are not there by luck. */
	sync_cmd(r, 2, (const char *[]){ "SCRIPT", "FLUSH" }, NULL);
}

/* Frees its rds from inside a NULL-reply callback (connection lost). */
struct self_free {
	struct rds *r;
	int calls;
};
static void self_free_cb(redisReply *reply, const char *err, void *arg)
{
	(void)err;
	struct self_free *sf = arg;
	sf->calls++;
	if (!reply) {
		rds_free(sf->r);
		sf->r = NULL;
	}
}

static void check_down_fails_fast(struct rds *r)
{
	struct rec c = { 0 }, s = { 0 }, f = { 0 };
	send_cmd(r, &c, 2, (const char *[]){ "GET", "persist" }, NULL);
	send_script(r, S_ECHO, &s, 0, 1, (const char *[]){ "x" }, NULL);
	in_call = true;
	CHECK(rds_cmdf(r, rec_cb, &f, "GET %s", "persist") == 0);
	in_call = false;
	CHECK(c.calls == 0 && s.calls == 0 && f.calls == 0);
	/* fast: within two turns of the loop (no timer, no answer waited for);
	 * counted in turns, so the machine's load cannot change the outcome */
	for (int turn = 0; turn < 2 && f.calls == 0; turn++)
		event_base_loop(base, EVLOOP_ONCE);
	CHECK(f.calls == 1);
	struct rec *all[] = { &c, &s, &f };
	for (int i = 0; i < 3; i++) {
		CHECK(all[i]->calls == 1 && !all[i]->early && all[i]->type == -1);
		CHECK(strcmp(all[i]->err, "redis unavailable") == 0);
	}
}

static void test_restart(struct rds *r)
{
	char sha[NSCRIPTS][41];
	script_shas(r, sha);
	struct rec set = sync_cmd(r, 3, (const char *[]){ "SET", "persist", "kept" }, NULL);
	CHECK(rec_is(&set, REDIS_REPLY_STATUS, "OK", 2));

	/* A second client that frees itself when its connection is lost. */
	struct self_free sf = { rds_new(base, host, port, scripts), 0 };
	own_hooks = 0;
	rds_on_connect(sf.r, own_hook, NULL);
	CHECK(run_until(&own_hooks, 1, 5000));
	CHECK(rds_cmd(sf.r, self_free_cb, &sf, 3, (const char *[]){ "BLPOP", "never", "0" },
	              NULL) == 0);

	/* In flight when Redis goes away: answered once, with NULL. */
	struct rec blpop = { 0 };
	send_cmd(r, &blpop, 3, (const char *[]){ "BLPOP", "never", "0" }, NULL);
	run_for(20);
	CHECK(blpop.calls == 0);
	int before = hooks;
	harness_do("stop");
	CHECK(run_until(&blpop.calls, 1, 3000));
	CHECK(run_until(&sf.calls, 1, 3000));
	CHECK(blpop.type == -1 && blpop.err[0] != '\0');
	CHECK(sf.calls == 1 && sf.r == NULL);
	CHECK(!rds_ready(r));
	check_down_fails_fast(r);
	run_for(400); /* a few refused reconnects, backoff growing */
	CHECK(!rds_ready(r));
	check_down_fails_fast(r);

	harness_do("start");
	CHECK(run_until(&hooks, before + 1, 10000));
	CHECK(rds_ready(r));
	CHECK(blpop.calls == 1);
	/* Loaded on connect, not waiting for NOSCRIPT. */
	struct rec ex =
	    sync_cmd(r, 5, (const char *[]){ "SCRIPT", "EXISTS", sha[0], sha[1], sha[2] }, NULL);
	CHECK(ex.type == REDIS_REPLY_ARRAY && ex.elements == 3);
	for (int i = 0; i < 3; i++)
		CHECK(ex.elem_len[i] == 1 && ex.elem[i][0] == '1');
	struct rec get = sync_cmd(r, 2, (const char *[]){ "GET", "persist" }, NULL);
	CHECK(rec_is(&get, REDIS_REPLY_STRING, "kept", 4));
	struct rec echo = { 0 };
	send_script(r, S_ECHO, &echo, 0, 1, (const char *[]){ "back" }, NULL);
	CHECK(run_until(&echo.calls, 1, 3000));
	CHECK(rec_is(&echo, REDIS_REPLY_STRING, "back", 4));
	printf("ok - redis stopped: in-flight NULL once, fail fast, reconnect, scripts, hook\n");

	/* restart in one step */
	harness_do("restart");
	CHECK(run_until(&hooks, before + 2, 10000));
	get = sync_cmd(r, 2, (const char *[]){ "GET", "persist" }, NULL);
	CHECK(rec_is(&get, REDIS_REPLY_STRING, "kept", 4));

	/* crash */
	harness_do("kill");
	struct rec down = { 0 };
	for (int i = 0; i < 200 && rds_ready(r); i++)
		run_for(10);
	CHECK(!rds_ready(r));
	send_cmd(r, &down, 1, (const char *[]){ "PING" }, NULL);
	CHECK(run_until(&down.calls, 1, 1000));
	CHECK(down.type == -1);
	harness_do("start");
	CHECK(run_until(&hooks, before + 3, 10000));
	echo = (struct rec){ 0 };
	send_script(r, S_ECHO, &echo, 0, 1, (const char *[]){ "again" }, NULL);
	CHECK(run_until(&echo.calls, 1, 3000));
	CHECK(rec_is(&echo, REDIS_REPLY_STRING, "again", 5));
	printf("ok - redis restarted and killed -9: reconnects by itself\n");
}

/* A 10 ms timer: how late did it ever fire? */
struct ticker {
	struct event *ev;
	int64_t last_ms;
	int64_t max_gap_ms;
	int ticks;
};

static void ticker_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct ticker *t = arg;
	int64_t now = now_ms();
	if (t->last_ms && now - t->last_ms > t->max_gap_ms)
		t->max_gap_ms = now - t->last_ms;
	t->last_ms = now;
	t->ticks++;
}

static void test_sigstop(struct rds *r)
{
	pid_t pid = redis_pid();
	CHECK(pid > 0);
	if (pid <= 0)
		return;
	struct ticker t = { 0 };
	t.ev = event_new(base, -1, EV_PERSIST, ticker_cb, &t);
	struct timeval ten = { 0, 10000 };
	event_add(t.ev, &ten);

	/* Stopped for a while: the command waits, the loop keeps ticking (a
	 * blocking call on a stopped Redis would never return). Counted in
	 * ticks, not time, so the machine's load cannot change the outcome. */
	CHECK(kill(pid, SIGSTOP) == 0);
	struct rec get = { 0 };
	send_cmd(r, &get, 2, (const char *[]){ "GET", "persist" }, NULL);
	int ticked = t.ticks;
	CHECK(run_until(&t.ticks, ticked + 5, 60000));
	CHECK(get.calls == 0);
	CHECK(kill(pid, SIGCONT) == 0);
	CHECK(run_until(&get.calls, 1, 3000));
	CHECK(rec_is(&get, REDIS_REPLY_STRING, "kept", 4));
	printf("ok - redis stopped 1.5 s: loop on time (max gap %lld ms), command waited\n",
	       (long long)t.max_gap_ms);

	/* Stopped for good: the command times out and the client reconnects. */
	int before = hooks;
	t.max_gap_ms = 0;
	CHECK(kill(pid, SIGSTOP) == 0);
	struct rec slow = { 0 };
	int64_t t0 = now_ms();
	ticked = t.ticks;
	send_cmd(r, &slow, 2, (const char *[]){ "GET", "persist" }, NULL);
	CHECK(run_until(&slow.calls, 1, 60000));
	int64_t waited = now_ms() - t0;
	CHECK(kill(pid, SIGCONT) == 0);
	/* failed by its own timer, while the loop kept ticking */
	CHECK(slow.type == -1 && strcmp(slow.err, "redis timeout") == 0);
	CHECK(t.ticks > ticked);
	CHECK(run_until(&hooks, before + 1, 10000));
	get = sync_cmd(r, 2, (const char *[]){ "GET", "persist" }, NULL);
	CHECK(rec_is(&get, REDIS_REPLY_STRING, "kept", 4));
	printf("ok - redis stopped for good: timeout after %lld ms (max gap %lld ms), reconnect\n",
	       (long long)waited, (long long)t.max_gap_ms);
	event_free(t.ev);
}

/* For callbacks that try to send while rds_free runs. */
static struct rds *sending_to;
static int send_rc = 0;
static void resend_cb(redisReply *reply, const char *err, void *arg)
{
	rec_cb(reply, err, arg);
	send_rc = rds_cmd(sending_to, rec_cb, NULL, 1, (const char *[]){ "PING" }, NULL);
}

static void check_freed(struct rec *recs, int n, const char *err)
{
	for (int i = 0; i < n; i++) {
		CHECK(recs[i].calls == 1);
		CHECK(recs[i].type == -1);
		CHECK(strcmp(recs[i].err, err) == 0);
	}
}

/* A port nothing listens on. */
static int closed_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t len = sizeof(sa);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int p = 0;
	if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
		p = ntohs(sa.sin_port);
	if (fd >= 0)
		close(fd);
	return p;
}

static void free_hook(void *arg)
{
	struct rds **rp = arg;
	own_hooks++;
	rds_free(*rp);
	*rp = NULL;
}

struct free_in_cb {
	struct rds *r;
	struct rec rec[3];
};
static void free_first_cb(redisReply *reply, const char *err, void *arg)
{
	struct free_in_cb *f = arg;
	rec_cb(reply, err, &f->rec[0]);
	rds_free(f->r);
	f->r = NULL;
}

static void test_free(void)
{
	enum { N = 100 };
	static struct rec recs[N];

	/* Live commands: some on the wire (BLPOP), most still in the buffer. */
	own_hooks = 0;
	struct rds *r = rds_new(base, host, port, scripts);
	rds_on_connect(r, own_hook, NULL);
	CHECK(run_until(&own_hooks, 1, 5000));
	send_cmd(r, &recs[0], 3, (const char *[]){ "BLPOP", "never", "0" }, NULL);
	run_for(20);
	for (int i = 1; i < N - 1; i++)
		send_cmd(r, &recs[i], 2, (const char *[]){ "GET", "persist" }, NULL);
	sending_to = r;
	send_rc = 0;
	in_call = true;
	CHECK(rds_script(r, S_ECHO, resend_cb, &recs[N - 1], 0, 1, (const char *[]){ "x" }, NULL) ==
	      0);
	in_call = false;
	rds_free(r);
	check_freed(recs, N, "redis shutting down");
	CHECK(send_rc == -1);
	run_for(100);
	check_freed(recs, N, "redis shutting down");
	printf("ok - rds_free with commands in flight: each callback once\n");

	/* Never connected: queued failures answered by rds_free. */
	memset(recs, 0, sizeof(recs));
	r = rds_new(base, host, closed_port(), scripts);
	for (int i = 0; i < 10; i++)
		send_cmd(r, &recs[i], 1, (const char *[]){ "PING" }, NULL);
	rds_free(r);
	check_freed(recs, 10, "redis shutting down");
	run_for(50);
	check_freed(recs, 10, "redis shutting down");

	/* Freed from a fail-fast callback with more queued behind it. */
	memset(recs, 0, sizeof(recs));
	struct free_in_cb f = { rds_new(base, host, closed_port(), scripts), { { 0 } } };
	CHECK(rds_cmd(f.r, free_first_cb, &f, 1, (const char *[]){ "PING" }, NULL) == 0);
	for (int i = 1; i < 3; i++)
		send_cmd(f.r, &f.rec[i], 1, (const char *[]){ "PING" }, NULL);
	CHECK(run_until(&f.rec[0].calls, 1, 1000));
	run_for(50);
	CHECK(f.r == NULL);
	CHECK(f.rec[0].calls == 1 && strcmp(f.rec[0].err, "redis unavailable") == 0);
	check_freed(&f.rec[1], 2, "redis shutting down");

	/* Freed from a reply callback with more in flight behind it. */
	own_hooks = 0;
	memset(&f, 0, sizeof(f));
	f.r = rds_new(base, host, port, scripts);
	rds_on_connect(f.r, own_hook, NULL);
	CHECK(run_until(&own_hooks, 1, 5000));
	CHECK(rds_cmd(f.r, free_first_cb, &f, 1, (const char *[]){ "PING" }, NULL) == 0);
	for (int i = 1; i < 3; i++)
		send_cmd(f.r, &f.rec[i], 1, (const char *[]){ "PING" }, NULL);
	CHECK(run_until(&f.rec[0].calls, 1, 3000));
	run_for(50);
	CHECK(f.r == NULL);
	CHECK(rec_is(&f.rec[0], REDIS_REPLY_STATUS, "PONG", 4));
	check_freed(&f.rec[1], 2, "redis shutting down");

	/* Freed from the on_connect hook. */
	own_hooks = 0;
	struct rds *hr = rds_new(base, host, port, scripts);
	rds_on_connect(hr, free_hook, &hr);
	CHECK(run_until(&own_hooks, 1, 5000));
	run_for(50);
	CHECK(hr == NULL);

	/* No scripts at all: readiness comes from a PING. */
	static const struct rds_script none[] = { { NULL, NULL } };
	own_hooks = 0;
	r = rds_new(base, host, port, none);
	rds_on_connect(r, own_hook, NULL);
	CHECK(run_until(&own_hooks, 1, 5000));
	struct rec pong = sync_cmd(r, 1, (const char *[]){ "PING" }, NULL);
	CHECK(rec_is(&pong, REDIS_REPLY_STATUS, "PONG", 4));
	CHECK(rds_script(r, 0, rec_cb, &pong, 0, 0, NULL, NULL) == -1);
	rds_free(r);
	printf("ok - rds_free from callbacks and hooks; no scripts\n");
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

int main(void)
{
	const char *p = getenv("GPUMATCH_REDIS_PORT");
	host = getenv("GPUMATCH_REDIS_HOST");
	redis_dir = getenv("GPUMATCH_REDIS_DIR");
	harness = getenv("GPUMATCH_REDIS_HARNESS");
	if (!p || !host || !redis_dir || !harness) {
		fprintf(stderr, "test_rds: run through tests/server/run_rds.sh\n");
		return 77;
	}
	port = atoi(p);
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IONBF, 0);
	base = event_base_new();
	struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
	struct timeval two = { 0, 2000 };
	event_add(tick, &two);

	int64_t t0 = now_ms();
	test_bad_args();
	struct rds *r = test_connect();
	test_plain(r);
	test_script(r);
	test_pipeline(r);
	test_noscript(r);
	test_restart(r);
	test_sigstop(r);
	test_free();
	rds_free(r);
	run_for(20);

	event_free(tick);
	event_base_free(base);
	printf("%s - test_rds (%d failures, %.1f s)\n", failures ? "FAIL" : "PASS", failures,
	       (double)(now_ms() - t0) / 1000.0);
	return failures ? 1 : 0;
}
