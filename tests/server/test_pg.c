/* test_pg.c — the Postgres pool against a real server that run_pg.sh starts
 * (GPUMATCH_PG, GPUMATCH_PG_DIR, GPUMATCH_PG_HARNESS): queries, errors,
 * concurrency, teardown with queries in flight, and the server stopped,
 * killed and stalled while a 10 ms timer keeps the loop turning. Nothing here
 * asserts a duration: "fails fast" is counted in turns of the loop (a failure
 * that waited for Postgres or for a timer takes many), and "the loop never
 * blocks" is shown by timer callbacks that run while Postgres is frozen (a
 * blocking call on a SIGSTOPped server never returns). */
#include "log.h"
#include "pg.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

static int failures;

#define CHECK(cond)                                                                              \
	do {                                                                                     \
		if (!(cond)) {                                                                   \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
			failures++;                                                              \
		}                                                                                \
	} while (0)

static struct event_base *base;
static const char *conninfo;
static const char *pg_dir;
static const char *pg_harness;

static const struct pg_stmt stmts[] = {
	{ "add", "SELECT $1::int + $2::int", 2 },
	{ "echo", "SELECT $1::text", 1 },
	{ "sleep", "SELECT pg_sleep($1::float8)", 1 },
	{ NULL, NULL, 0 },
};

static int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- the 10 ms tick: the loop always has something to turn for ---- */

#define TICK_US 10000

static struct event *tick_ev;
static int64_t tick_last_us;
static int64_t tick_max_gap_us; /* longest time between two ticks */
static long ticks;
static void (*tick_hook)(void);
static long turns; /* event_base_loop(EVLOOP_ONCE) calls so far */

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	int64_t now = mono_us();
	if (tick_last_us) {
		if (now - tick_last_us > tick_max_gap_us)
			tick_max_gap_us = now - tick_last_us;
		ticks++;
	}
	tick_last_us = now;
	if (tick_hook)
		tick_hook();
}

static void tick_reset(void)
{
	tick_last_us = 0;
	tick_max_gap_us = 0;
	ticks = 0;
}

static void turn(void)
{
	turns++;
	event_base_loop(base, EVLOOP_ONCE);
}

/* ---- results ---- */

struct result {
	int calls;
	enum pg_status st;
	char sqlstate[8];
	char val[64];
	char err[64];
	int ntuples;
	int64_t sent_us, done_us;
	long sent_turn, done_turn; /* the loop's turn at pg_exec and at the callback */
	int exec_in_cb;            /* pg_exec's return when called from the callback */
	struct pg_pool *pool;
};

static bool in_exec;

static void result_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                      void *arg)
{
	struct result *r = arg;
	CHECK(!in_exec); /* never before pg_exec returns */
	CHECK(sqlstate != NULL && err != NULL);
	r->calls++;
	r->st = st;
	r->done_us = mono_us();
	r->done_turn = turns;
	snprintf(r->sqlstate, sizeof r->sqlstate, "%s", sqlstate ? sqlstate : "");
	snprintf(r->err, sizeof r->err, "%s", err ? err : "");
	r->val[0] = '\0';
	r->ntuples = -1;
	switch (st) {
	case PG_OK:
		CHECK(res != NULL);
		CHECK(sqlstate && *sqlstate == '\0');
		if (!res)
			break;
		CHECK(PQresultStatus(res) == PGRES_TUPLES_OK ||
		      PQresultStatus(res) == PGRES_COMMAND_OK);
		r->ntuples = PQntuples(res);
		if (r->ntuples > 0 && PQnfields(res) > 0)
			snprintf(r->val, sizeof r->val, "%s",
			         PQgetisnull(res, 0, 0) ? "NULL" : PQgetvalue(res, 0, 0));
		break;
	case PG_ERROR:
		CHECK(res != NULL && PQresultStatus(res) == PGRES_FATAL_ERROR);
		CHECK(err && *err);
		break;
	case PG_UNAVAILABLE:
		CHECK(res == NULL);
		CHECK(sqlstate && *sqlstate == '\0');
		CHECK(err && *err);
		break;
	}
	if (r->pool)
		r->exec_in_cb =
		    pg_exec(r->pool, "echo", NULL, 1, (const char *const[]){ "x" }, result_cb, r);
}

static int exec(struct pg_pool *p, const char *name, const char *sql, int n,
                const char *const *params, struct result *r)
{
	in_exec = true;
	r->sent_us = mono_us();
	r->sent_turn = turns;
	int rc = pg_exec(p, name, sql, n, params, result_cb, r);
	in_exec = false;
	return rc;
}

/* ---- loop helpers ---- */

static void run_for_ms(int ms)
{
	int64_t end = mono_us() + (int64_t)ms * 1000;
	while (mono_us() < end)
		turn();
}

static bool all_done(const struct result *r, int n)
{
	for (int i = 0; i < n; i++) {
		if (r[i].calls == 0)
			return false;
	}
	return true;
}

static bool wait_done(const struct result *r, int n, int timeout_ms)
{
	int64_t end = mono_us() + (int64_t)timeout_ms * 1000;
	while (!all_done(r, n)) {
		if (mono_us() > end)
			return false;
		turn();
	}
	return true;
}

/* Failed fast: the callback came within two turns of the loop after
 * pg_exec (the deferred failure runs on the next turn), not after a timer or
 * an answer from Postgres. Counted in turns, so the machine's load cannot
 * change the outcome. */
static bool failed_fast(const struct result *r)
{
	return r->calls == 1 && r->st == PG_UNAVAILABLE && r->done_turn - r->sent_turn <= 2;
}

/* Turns the loop until r[0..n) are done or max_turns have passed. */
static bool done_within_turns(const struct result *r, int n, int max_turns)
{
	for (int i = 0; i < max_turns && !all_done(r, n); i++)
		turn();
	return all_done(r, n);
}

static int pool_up(struct pg_pool *p)
{
	int up;
	pg_pool_stats(p, &up, NULL, NULL);
	return up;
}

static int pool_busy(struct pg_pool *p)
{
	int busy;
	pg_pool_stats(p, NULL, &busy, NULL);
	return busy;
}

/* Waits until pool_up(p) >= up (up > 0) or == 0 (up == 0). */
static bool wait_up(struct pg_pool *p, int up, int timeout_ms)
{
	int64_t end = mono_us() + (int64_t)timeout_ms * 1000;
	while (up > 0 ? pool_up(p) < up : pool_up(p) != 0) {
		if (mono_us() > end)
			return false;
		turn();
	}
	return true;
}

static bool wait_busy(struct pg_pool *p, int busy, int timeout_ms)
{
	int64_t end = mono_us() + (int64_t)timeout_ms * 1000;
	while (pool_busy(p) < busy) {
		if (mono_us() > end)
			return false;
		turn();
	}
	return true;
}

static void harness(const char *cmd)
{
	char line[1024];
	snprintf(line, sizeof line, "bash '%s' %s '%s' >/dev/null", pg_harness, cmd, pg_dir);
	int rc = system(line);
	if (rc != 0) {
		fprintf(stderr, "harness %s failed: %d\n", cmd, rc);
		failures++;
	}
}

/* ---- log.c ---- */

static void test_log(void)
{
	int fds[2];
	CHECK(pipe(fds) == 0);
	int saved = dup(2);
	dup2(fds[1], 2);
	enum log_level old = log_min_level;
	log_min_level = LOG_INFO;
	log_info("lease expired job=%d node=%d", 1, 2);
	log_debug("hidden x=%d", 1);
	log_warn("no keys \"here\"");
	log_error("multi\nline err=%s", "a\nb");
	log_min_level = old;
	dup2(saved, 2);
	close(saved);
	close(fds[1]);
	char buf[4096];
	size_t len = 0;
	ssize_t n;
	while ((n = read(fds[0], buf + len, sizeof buf - 1 - len)) > 0)
		len += (size_t)n;
	buf[len] = '\0';
	close(fds[0]);

	CHECK(strncmp(buf, "ts=", 3) == 0);
	/* ts=2026-11-22T03:00:00.123Z */
	CHECK(len > 27 && buf[13] == 'T' && buf[26] == 'Z' && buf[22] == '.');
	CHECK(strstr(buf, "Z level=info msg=\"lease expired\" job=1 node=2\n") != NULL);
	CHECK(strstr(buf, "hidden") == NULL);
	CHECK(strstr(buf, "level=warn msg=\"no keys \\\"here\\\"\"\n") != NULL);
	CHECK(strstr(buf, "level=error msg=\"multi line\" err=a b\n") != NULL);
	CHECK(log_parse_level("debug") == LOG_DEBUG);
	CHECK(log_parse_level("warn") == LOG_WARN);
	CHECK(log_parse_level("error") == LOG_ERROR);
	CHECK(log_parse_level("loud") == -1);
	CHECK(log_parse_level(NULL) == -1);
}

/* ---- queries ---- */

static void test_queries(struct pg_pool *p)
{
	struct result r[16] = { 0 };

	CHECK(exec(p, "add", NULL, 2, (const char *const[]){ "2", "3" }, &r[0]) == 0);
	CHECK(exec(p, NULL, "SELECT $1::text || '-' || $2::text", 2,
	           (const char *const[]){ "a", "b" }, &r[1]) == 0);
	CHECK(exec(p, NULL, "SELECT $1::text IS NULL", 1, (const char *const[]){ NULL }, &r[2]) ==
	      0);
	CHECK(exec(p, NULL, "SELECT g FROM generate_series(1, 10) g", 0, NULL, &r[3]) == 0);
	CHECK(exec(p, "echo", NULL, 1, (const char *const[]){ "héllo 'q'" }, &r[4]) == 0);
	CHECK(wait_done(r, 5, 10000));
	for (int i = 0; i < 5; i++)
		CHECK(r[i].calls == 1 && r[i].st == PG_OK);
	CHECK(strcmp(r[0].val, "5") == 0);
	CHECK(strcmp(r[1].val, "a-b") == 0);
	CHECK(strcmp(r[2].val, "t") == 0);
	CHECK(r[3].ntuples == 10 && strcmp(r[3].val, "1") == 0);
	CHECK(strcmp(r[4].val, "héllo 'q'") == 0);

	/* Bad arguments: -1 and no callback. */
	CHECK(pg_exec(p, "echo", NULL, 1, (const char *const[]){ "x" }, NULL, NULL) == -1);
	CHECK(pg_exec(p, NULL, NULL, 0, NULL, result_cb, &r[15]) == -1);
	CHECK(pg_exec(p, "echo", NULL, -1, NULL, result_cb, &r[15]) == -1);
	CHECK(pg_exec(p, "echo", NULL, 1, NULL, result_cb, &r[15]) == -1);
	CHECK(pg_exec(NULL, "echo", NULL, 0, NULL, result_cb, &r[15]) == -1);
	CHECK(pg_pool_new(NULL, conninfo, 1, NULL) == NULL);
	CHECK(pg_pool_new(base, conninfo, 0, NULL) == NULL);
	CHECK(pg_pool_new(base, "this is not = a conninfo '", 1, NULL) == NULL);
}

static void test_errors(struct pg_pool *p)
{
	struct result r[12] = { 0 };

	CHECK(exec(p, NULL, "DROP TABLE IF EXISTS kv; ", 0, NULL, &r[0]) == 0);
	CHECK(wait_done(r, 1, 10000));
	CHECK(exec(p, NULL, "CREATE TABLE kv (k int PRIMARY KEY, v text)", 0, NULL, &r[1]) == 0);
	CHECK(wait_done(r, 2, 10000));
	CHECK(r[1].st == PG_OK && r[1].ntuples == 0);
	CHECK(exec(p, NULL, "INSERT INTO kv VALUES ($1, $2)", 2, (const char *const[]){ "1", "a" },
	           &r[2]) == 0);
	CHECK(wait_done(r, 3, 10000));
	CHECK(r[2].st == PG_OK);

	CHECK(exec(p, NULL, "INSERT INTO kv VALUES ($1, $2)", 2, (const char *const[]){ "1", "b" },
	           &r[3]) == 0);
	CHECK(exec(p, NULL, "SELEC 1", 0, NULL, &r[4]) == 0);
	CHECK(exec(p, "no_such_stmt", NULL, 0, NULL, &r[5]) == 0);
	CHECK(exec(p, NULL, "SELECT 1 / $1::int", 1, (const char *const[]){ "0" }, &r[6]) == 0);
	CHECK(exec(p, "add", NULL, 2, (const char *const[]){ "x", "1" }, &r[7]) == 0);
	CHECK(exec(p, NULL, "SELECT * FROM no_such_table", 0, NULL, &r[8]) == 0);
	CHECK(exec(p, NULL, "SELECT 1; SELECT 2", 0, NULL, &r[9]) == 0);
	CHECK(wait_done(r, 10, 10000));
	CHECK(r[3].st == PG_ERROR && strcmp(r[3].sqlstate, "23505") == 0);
	CHECK(r[4].st == PG_ERROR && strcmp(r[4].sqlstate, "42601") == 0);
	CHECK(r[5].st == PG_ERROR && strcmp(r[5].sqlstate, "26000") == 0);
	CHECK(r[6].st == PG_ERROR && strcmp(r[6].sqlstate, "22012") == 0);
	CHECK(r[7].st == PG_ERROR && strcmp(r[7].sqlstate, "22P02") == 0);
	CHECK(r[8].st == PG_ERROR && strcmp(r[8].sqlstate, "42P01") == 0);
	/* Extended protocol: one statement per query. */
	CHECK(r[9].st == PG_ERROR && strcmp(r[9].sqlstate, "42601") == 0);

	/* Errors leave the connections usable. */
	struct result ok[8] = { 0 };
	for (int i = 0; i < 8; i++)
		CHECK(exec(p, "add", NULL, 2, (const char *const[]){ "40", "2" }, &ok[i]) == 0);
	CHECK(wait_done(ok, 8, 10000));
	for (int i = 0; i < 8; i++)
		CHECK(ok[i].calls == 1 && ok[i].st == PG_OK && strcmp(ok[i].val, "42") == 0);
}

/* The backend under a query is terminated: PG_UNAVAILABLE, the other
 * connections carry on, and the pool refills by itself. */
static void test_terminated(struct pg_pool *p)
{
	struct result r[2] = { 0 };

	CHECK(wait_up(p, 4, 10000));
	CHECK(exec(p, NULL, "SELECT pg_terminate_backend(pg_backend_pid())", 0, NULL, &r[0]) == 0);
	CHECK(wait_done(r, 1, 5000));
	CHECK(r[0].calls == 1 && r[0].st == PG_UNAVAILABLE);
	CHECK(pg_pool_ready(p));
	CHECK(exec(p, "echo", NULL, 1, (const char *const[]){ "t" }, &r[1]) == 0);
	CHECK(wait_done(r, 2, 5000));
	CHECK(r[1].st == PG_OK && strcmp(r[1].val, "t") == 0);
	CHECK(wait_up(p, 4, 5000));
}

#define NCONC 1000

static struct result conc[NCONC];
static struct result chain[100];
static int chain_next;
static struct pg_pool *chain_pool;

static void chain_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                     void *arg)
{
	result_cb(st, res, sqlstate, err, arg);
	/* Issued from inside a callback: re-entrancy. */
	if (chain_next < 100) {
		struct result *r = &chain[chain_next++];
		r->sent_us = mono_us();
		CHECK(pg_exec(chain_pool, "echo", NULL, 1, (const char *const[]){ "c" }, chain_cb,
		              r) == 0);
	}
}

static void test_concurrency(struct pg_pool *p)
{
	char vals[NCONC][12];
	int max_queued = 0, up, busy, queued;

	CHECK(wait_up(p, 4, 10000));
	memset(conc, 0, sizeof conc);
	int64_t t0 = mono_us();
	for (int i = 0; i < NCONC; i++) {
		snprintf(vals[i], sizeof vals[i], "%d", i);
		const char *params[] = { vals[i] };
		if (i % 2)
			CHECK(exec(p, "echo", NULL, 1, params, &conc[i]) == 0);
		else
			CHECK(exec(p, NULL, "SELECT $1::int", 1, params, &conc[i]) == 0);
	}
	pg_pool_stats(p, &up, &busy, &queued);
	CHECK(up == 4 && busy == 4 && queued == NCONC - 4);
	max_queued = queued;
	CHECK(wait_done(conc, NCONC, 20000));
	int64_t t1 = mono_us();
	int bad = 0;
	for (int i = 0; i < NCONC; i++) {
		char want[12];
		snprintf(want, sizeof want, "%d", i);
		if (conc[i].calls != 1 || conc[i].st != PG_OK || strcmp(conc[i].val, want) != 0)
			bad++;
	}
	CHECK(bad == 0);
	run_for_ms(20);
	for (int i = 0; i < NCONC; i++)
		bad += conc[i].calls != 1;
	CHECK(bad == 0);
	pg_pool_stats(p, &up, &busy, &queued);
	CHECK(busy == 0 && queued == 0);
	printf("measured: %d queries over 4 connections in %.1f ms (max queued %d)\n", NCONC,
	       (double)(t1 - t0) / 1000.0, max_queued);

	chain_pool = p;
	chain_next = 1;
	memset(chain, 0, sizeof chain);
	CHECK(pg_exec(p, "echo", NULL, 1, (const char *const[]){ "c" }, chain_cb, &chain[0]) == 0);
	CHECK(wait_done(chain, 100, 10000));
	for (int i = 0; i < 100; i++)
		CHECK(chain[i].calls == 1 && chain[i].st == PG_OK &&
		      strcmp(chain[i].val, "c") == 0);
}

/* The queue holds 10,000 waiting queries; one more fails fast. */
#define NFULL (4 + 10000 + 1)

static struct result full[NFULL];

static void test_queue_full(struct pg_pool *p)
{
	/* Each of the 10,000 must wait its turn, however slow this machine is
	 * today: the queue timeout is not what this test is about. */
	pg_pool_set_queue_timeout(p, 600000);
	CHECK(wait_up(p, 4, 10000));
	memset(full, 0, sizeof full);
	for (int i = 0; i < NFULL; i++)
		CHECK(exec(p, "echo", NULL, 1, (const char *const[]){ "f" }, &full[i]) == 0);
	CHECK(full[NFULL - 1].calls == 0);
	CHECK(done_within_turns(&full[NFULL - 1], 1, 2));
	CHECK(failed_fast(&full[NFULL - 1]));
	CHECK(strstr(full[NFULL - 1].err, "queue full") != NULL);
	CHECK(full[NFULL - 2].calls == 0);
	CHECK(wait_done(full, NFULL, 600000));
	int bad = 0;
	for (int i = 0; i < NFULL - 1; i++)
		bad += full[i].calls != 1 || full[i].st != PG_OK;
	CHECK(bad == 0);
	pg_pool_set_queue_timeout(p, 5000); /* the pool's default again */
}

/* pg_pool_free with queries in flight, queued and failed-fast: each
 * callback exactly once, inside pg_pool_free, and pg_exec from them gets -1. */
static struct pg_pool *self_free_pool;

static void self_free_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                         void *arg)
{
	result_cb(st, res, sqlstate, err, arg);
	if (self_free_pool) {
		struct pg_pool *p = self_free_pool;
		self_free_pool = NULL;
		pg_pool_free(p); /* from inside one of its own callbacks */
	}
}

static void test_free(void)
{
	struct result r[16] = { 0 };
	struct pg_pool *p = pg_pool_new(base, conninfo, 2, stmts);
	CHECK(p != NULL);
	CHECK(wait_up(p, 2, 10000));
	for (int i = 0; i < 12; i++) {
		r[i].pool = p;
		if (i < 2)
			CHECK(exec(p, "sleep", NULL, 1, (const char *const[]){ "5" }, &r[i]) == 0);
		else
			CHECK(exec(p, "echo", NULL, 1, (const char *const[]){ "q" }, &r[i]) == 0);
	}
	CHECK(wait_busy(p, 2, 5000));
	pg_pool_free(p);
	for (int i = 0; i < 12; i++) {
		CHECK(r[i].calls == 1 && r[i].st == PG_UNAVAILABLE);
		CHECK(r[i].exec_in_cb == -1);
	}

	/* Nothing listens on port 1: queries fail fast (deferred), and
	 * pg_pool_free before the loop runs them still calls each once. */
	struct result f[3] = { 0 };
	struct pg_pool *down = pg_pool_new(base, "hostaddr=127.0.0.1 port=1 dbname=x", 2, stmts);
	CHECK(down != NULL);
	run_for_ms(50);
	CHECK(!pg_pool_ready(down));
	for (int i = 0; i < 3; i++)
		CHECK(exec(down, "echo", NULL, 1, (const char *const[]){ "q" }, &f[i]) == 0);
	for (int i = 0; i < 3; i++)
		CHECK(f[i].calls == 0);
	pg_pool_free(down);
	for (int i = 0; i < 3; i++)
		CHECK(f[i].calls == 1 && f[i].st == PG_UNAVAILABLE);
	pg_pool_free(NULL);

	/* Freed from inside its own callback. */
	struct result s[4] = { 0 };
	p = pg_pool_new(base, conninfo, 1, stmts);
	CHECK(wait_up(p, 1, 10000));
	self_free_pool = p;
	for (int i = 0; i < 4; i++) {
		in_exec = true;
		CHECK(pg_exec(p, "echo", NULL, 1, (const char *const[]){ "s" }, self_free_cb,
		              &s[i]) == 0);
		in_exec = false;
	}
	CHECK(wait_done(s, 4, 10000));
	CHECK(s[0].st == PG_OK);
	for (int i = 0; i < 4; i++)
		CHECK(s[i].calls == 1);
	for (int i = 1; i < 4; i++)
		CHECK(s[i].st == PG_UNAVAILABLE);
	run_for_ms(20);
	for (int i = 0; i < 4; i++)
		CHECK(s[i].calls == 1);
}

/* A statement that fails to prepare keeps the pool down, and then queries
 * fail fast instead of waiting. */
static void test_bad_stmt(void)
{
	static const struct pg_stmt bad[] = {
		{ "ok", "SELECT 1", 0 },
		{ "bad", "SELECT * FROM no_such_table", 0 },
		{ NULL, NULL, 0 },
	};
	struct result r[2] = { 0 };
	struct pg_pool *p = pg_pool_new(base, conninfo, 2, bad);
	CHECK(p != NULL);
	/* No timer may be what fails it: whatever the load, the query fails
	 * because the pool cannot come up, long before these. */
	pg_pool_set_queue_timeout(p, 600000);
	pg_pool_set_query_timeout(p, 600000);
	run_for_ms(300);
	CHECK(!pg_pool_ready(p));
	CHECK(exec(p, "ok", NULL, 0, NULL, &r[0]) == 0);
	CHECK(wait_done(r, 1, 60000));
	CHECK(r[0].st == PG_UNAVAILABLE);
	CHECK(strstr(r[0].err, "timeout") == NULL);
	/* Once the first attempt has settled, the next one fails fast. */
	CHECK(exec(p, "ok", NULL, 0, NULL, &r[1]) == 0);
	CHECK(done_within_turns(&r[1], 1, 2));
	CHECK(failed_fast(&r[1]));
	pg_pool_free(p);
}

/* ---- Postgres down, killed, stalled ---- */

#define NDOWN 150

static struct pg_pool *down_pool;
static struct result down_r[NDOWN];
static int down_n;

static void down_hook(void)
{
	if (down_n < NDOWN)
		CHECK(exec(down_pool, "echo", NULL, 1, (const char *const[]){ "d" },
		           &down_r[down_n++]) == 0);
}

/* On each of NDOWN ticks, a query: each must fail fast (within two turns of
 * the loop). Returns the worst pg_exec-to-callback latency in µs, printed as
 * a figure only. */
static int64_t fail_fast_window(struct pg_pool *p)
{
	memset(down_r, 0, sizeof down_r);
	down_n = 0;
	down_pool = p;
	tick_reset();
	tick_hook = down_hook;
	int64_t end = mono_us() + 120 * 1000000LL; /* generous: a count bounds it */
	while (down_n < NDOWN && mono_us() < end)
		turn();
	tick_hook = NULL;
	CHECK(down_n == NDOWN);
	CHECK(done_within_turns(down_r, down_n, 2));
	int64_t worst = 0;
	int bad = 0;
	for (int i = 0; i < down_n; i++) {
		if (!failed_fast(&down_r[i]))
			bad++;
		if (down_r[i].done_us - down_r[i].sent_us > worst)
			worst = down_r[i].done_us - down_r[i].sent_us;
	}
	CHECK(bad == 0);
	return worst;
}

static void test_stopped(struct pg_pool *p)
{
	struct result r[4] = { 0 };

	CHECK(wait_up(p, 4, 10000));
	/* Baseline: the same loop with Postgres up and idle. */
	tick_reset();
	run_for_ms(500);
	printf("measured: baseline (postgres up, idle): %ld ticks, max tick gap %.2f ms\n", ticks,
	       (double)tick_max_gap_us / 1000.0);
	CHECK(exec(p, "sleep", NULL, 1, (const char *const[]){ "30" }, &r[0]) == 0);
	CHECK(exec(p, "sleep", NULL, 1, (const char *const[]){ "30" }, &r[1]) == 0);
	CHECK(wait_busy(p, 2, 5000));
	harness("stop");
	int64_t t0 = mono_us();
	/* Fast shutdown terminated the backends: in-flight queries fail. */
	CHECK(wait_done(r, 2, 5000));
	CHECK(r[0].st == PG_UNAVAILABLE && r[1].st == PG_UNAVAILABLE);
	CHECK(wait_up(p, 0, 5000));
	CHECK(!pg_pool_ready(p));
	printf("measured: pool saw postgres stop in %.1f ms\n", (double)(mono_us() - t0) / 1000.0);

	int64_t worst = fail_fast_window(p);
	printf("measured: postgres stopped: %d queries failed fast, worst latency %.2f ms; "
	       "%ld ticks, max tick gap %.2f ms\n",
	       down_n, (double)worst / 1000.0, ticks, (double)tick_max_gap_us / 1000.0);

	harness("start");
	t0 = mono_us();
	CHECK(wait_up(p, 1, 10000));
	printf("measured: pool recovered %.1f ms after postgres came back\n",
	       (double)(mono_us() - t0) / 1000.0);
	CHECK(wait_up(p, 4, 5000));
	/* Statements are prepared again on the new connections. */
	CHECK(exec(p, "add", NULL, 2, (const char *const[]){ "1", "1" }, &r[2]) == 0);
	CHECK(wait_done(r, 3, 5000));
	CHECK(r[2].st == PG_OK && strcmp(r[2].val, "2") == 0);
}

static void test_killed(struct pg_pool *p)
{
	struct result r[2] = { 0 };

	CHECK(wait_up(p, 4, 10000));
	CHECK(exec(p, "sleep", NULL, 1, (const char *const[]){ "30" }, &r[0]) == 0);
	CHECK(wait_busy(p, 1, 5000));
	harness("kill");
	CHECK(wait_done(r, 1, 5000));
	CHECK(r[0].st == PG_UNAVAILABLE);
	CHECK(wait_up(p, 0, 5000));
	int64_t worst = fail_fast_window(p);
	printf("measured: postgres killed: worst fail-fast latency %.2f ms, max tick gap "
	       "%.2f ms\n",
	       (double)worst / 1000.0, (double)tick_max_gap_us / 1000.0);
	harness("start"); /* crash recovery */
	CHECK(wait_up(p, 4, 10000));
	CHECK(exec(p, "echo", NULL, 1, (const char *const[]){ "back" }, &r[1]) == 0);
	CHECK(wait_done(r, 2, 5000));
	CHECK(r[1].st == PG_OK && strcmp(r[1].val, "back") == 0);
}

static void test_stalled(struct pg_pool *p)
{
	struct result r[12] = { 0 };

	CHECK(wait_up(p, 4, 10000));
	pg_pool_set_queue_timeout(p, 500);
	pg_pool_set_query_timeout(p, 1000);
	harness("pause");
	tick_reset();
	int64_t t0 = mono_us();
	/* 4 go to the (stalled) connections, 6 wait in the queue. */
	for (int i = 0; i < 10; i++)
		CHECK(exec(p, "echo", NULL, 1, (const char *const[]){ "s" }, &r[i]) == 0);
	CHECK(pool_busy(p) == 4);
	/* Postgres stays frozen until every one has failed: only the pool's
	 * timers, run by a loop that keeps turning, can fail them (a blocking
	 * call would wait for the frozen server forever). Generous: a loaded
	 * machine may run those timers late. */
	CHECK(wait_done(r, 10, 60000));
	int64_t q_min = INT64_MAX, q_max = 0, f_min = INT64_MAX, f_max = 0;
	for (int i = 0; i < 10; i++) {
		CHECK(r[i].calls == 1 && r[i].st == PG_UNAVAILABLE);
		int64_t d = r[i].done_us - t0;
		if (i < 4) {
			/* in flight: the query timeout dropped its connection */
			CHECK(strstr(r[i].err, "query timed out") != NULL);
			f_min = d < f_min ? d : f_min;
			f_max = d > f_max ? d : f_max;
		} else {
			/* queued: the queue timeout (no connection freed meanwhile) */
			CHECK(strstr(r[i].err, "queue timeout") != NULL);
			q_min = d < q_min ? d : q_min;
			q_max = d > q_max ? d : q_max;
		}
	}
	CHECK(ticks > 0); /* the tick ran while Postgres was frozen */
	/* The connections were dropped; reconnecting hangs on the stalled
	 * server (TCP accepts, nothing answers), so new queries fail fast. */
	CHECK(wait_up(p, 0, 60000));
	CHECK(exec(p, "echo", NULL, 1, (const char *const[]){ "s" }, &r[10]) == 0);
	CHECK(done_within_turns(&r[10], 1, 2));
	CHECK(failed_fast(&r[10]));
	run_for_ms(500);
	printf("measured: postgres stalled (SIGSTOP): queued failed at %.0f-%.0f ms, in-flight "
	       "at %.0f-%.0f ms, %ld ticks, max tick gap %.2f ms\n",
	       (double)q_min / 1000.0, (double)q_max / 1000.0, (double)f_min / 1000.0,
	       (double)f_max / 1000.0, ticks, (double)tick_max_gap_us / 1000.0);

	harness("resume");
	t0 = mono_us();
	CHECK(wait_up(p, 4, 10000));
	printf("measured: pool recovered %.1f ms after SIGCONT\n",
	       (double)(mono_us() - t0) / 1000.0);
	pg_pool_set_queue_timeout(p, 5000);
	pg_pool_set_query_timeout(p, 30000);
	CHECK(exec(p, "echo", NULL, 1, (const char *const[]){ "ok" }, &r[11]) == 0);
	CHECK(wait_done(r, 12, 5000));
	CHECK(r[11].st == PG_OK && strcmp(r[11].val, "ok") == 0);
}

int main(void)
{
	conninfo = getenv("GPUMATCH_PG");
	pg_dir = getenv("GPUMATCH_PG_DIR");
	pg_harness = getenv("GPUMATCH_PG_HARNESS");
	if (!conninfo || !pg_dir || !pg_harness) {
		fprintf(stderr, "test_pg: run through run_pg.sh (GPUMATCH_PG, GPUMATCH_PG_DIR, "
		                "GPUMATCH_PG_HARNESS)\n");
		return 1;
	}
	const char *lvl = getenv("GPUMATCH_LOG_LEVEL");
	if (lvl && log_parse_level(lvl) >= 0)
		log_min_level = (enum log_level)log_parse_level(lvl);
	setvbuf(stdout, NULL, _IOLBF, 0);

	test_log();

	base = event_base_new();
	tick_ev = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
	struct timeval tv = { 0, TICK_US };
	event_add(tick_ev, &tv);

	/* Queries issued before any connection is up wait for the first ones. */
	struct pg_pool *p = pg_pool_new(base, conninfo, 4, stmts);
	CHECK(p != NULL);
	test_queries(p);
	test_errors(p);
	test_terminated(p);
	test_concurrency(p);
	test_queue_full(p);
	test_free();
	test_bad_stmt();
	test_stopped(p);
	test_killed(p);
	test_stalled(p);

	pg_pool_free(p);
	event_free(tick_ev);
	event_base_free(base);
	libevent_global_shutdown();

	if (failures) {
		fprintf(stderr, "test_pg: %d check(s) failed\n", failures);
		return 1;
	}
	printf("test_pg: ok\n");
	return 0;
}
