/* pg.c — the Postgres connection pool: non-blocking libpq connections driven
 * by libevent, prepared statements per connection, a bounded FIFO of waiting
 * queries, reconnect with backoff. No libpq call here ever blocks the loop. */
#include "pg.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

#define PG_BACKOFF_MIN_MS        100
#define PG_BACKOFF_MAX_MS        5000
#define PG_CONNECT_TIMEOUT_MS    5000 /* libpq ignores connect_timeout in PQconnectPoll */
#define PG_QUEUE_MAX             10000
#define PG_QUEUE_TIMEOUT_DEFAULT 5000
#define PG_QUERY_TIMEOUT_DEFAULT 30000
#define PG_MAX_POOL              256
#define PG_ERR_MAX               512

struct pg_query {
	struct pg_query *next;
	char *name; /* prepared statement, or NULL for sql */
	char *sql;
	int nparams;
	char **params; /* copies; entries may be NULL (SQL NULL) */
	int *lengths;  /* NULL, or per parameter (binary ones) */
	int *formats;  /* NULL (all text), or 0 text / 1 binary per parameter */
	pg_cb cb;
	void *arg;
	int64_t queued_us; /* monotonic */
	char *fail_err;    /* reason, for a query failed through the deferred list */
};

struct pg_qlist {
	struct pg_query *head, *tail;
	int n;
};

enum pg_conn_state {
	CONN_DOWN,       /* closed; timer is the reconnect backoff */
	CONN_CONNECTING, /* PQconnectPoll in progress; timer is the connect timeout */
	CONN_PREPARING,  /* PQsendPrepare of stmts[stmt_next]; timer as connecting */
	CONN_IDLE,       /* up, no query */
	CONN_BUSY,       /* up, running q; timer is the query timeout */
};

struct pg_conn {
	struct pg_pool *pool;
	int id;
	enum pg_conn_state state;
	PGconn *pg;
	struct event *io; /* on PQsocket(pg); NULL while down */
	int io_fd;
	short io_what;
	struct event *timer;
	int backoff_ms;
	int failures;  /* consecutive failed attempts or losses */
	bool tried;    /* a first attempt has finished (either way) */
	int stmt_next; /* index into pool->stmts while preparing */
	bool flushing; /* PQflush returned 1: output still pending */
	struct pg_query *q;
	int64_t sent_us; /* monotonic: when q was sent */
	PGresult *res;   /* first result of the current command */
};

struct pg_pool {
	struct event_base *base;
	char *conninfo;
	const struct pg_stmt *stmts;
	int size;
	struct pg_conn *conns;
	struct pg_qlist queue;  /* waiting for a connection, oldest first */
	struct pg_qlist failed; /* failed fast: callbacks run from defer_ev */
	struct event *queue_timer;
	struct event *defer_ev;
	struct event *stall_ev; /* every 250 ms: the stall check */
	int queue_timeout_ms;
	int query_timeout_ms;
	int stall_timeout_ms; /* 0: off */
	int64_t progress_us;  /* monotonic: the last time Postgres answered anything */
	bool stalled;         /* queries waited stall_timeout_ms with no answer */
	uint64_t stalls;      /* stalls declared so far */
	int64_t checked_us;   /* monotonic: the last stall check */
	/* a fresh connection opened when queries wait with no answer: a busy
	 * Postgres (locks, long queries) still accepts it, a stalled one not */
	PGconn *probe;
	struct event *probe_ev;
	int nup;
	bool starting; /* no first attempt settled yet: queue instead of failing */
	bool closing;
	int in_cb; /* callbacks on the stack; the pool is freed when it drops to 0 */
};

static void conn_io_cb(evutil_socket_t fd, short what, void *arg);
static void pool_dispatch(struct pg_pool *p);
static bool conn_lost(struct pg_conn *c, const char *err);

/* Postgres answered: not stalled (any more). */
static void pool_progress(struct pg_pool *p);

static void *pg_oom(void)
{
	log_error("out of memory in postgres pool");
	abort();
}

static void *xcalloc(size_t n, size_t size)
{
	void *ptr = calloc(n ? n : 1, size ? size : 1);
	return ptr ? ptr : pg_oom();
}

static char *xstrdup(const char *s)
{
	char *d = strdup(s);
	return d ? d : pg_oom();
}

static int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static struct timeval ms_tv(int64_t ms)
{
	if (ms < 0)
		ms = 0;
	return (struct timeval){ .tv_sec = (time_t)(ms / 1000),
		                 .tv_usec = (suseconds_t)(ms % 1000) * 1000 };
}

/* libpq messages span lines and may hold quotes; a log value must not. */
static void one_line(char *dst, size_t n, const char *src)
{
	size_t i = 0;
	for (; src && *src && i + 1 < n; src++) {
		char ch = *src;
		if (ch == '\n' || ch == '\r' || ch == '\t')
			ch = ' ';
		else if (ch == '"')
			ch = '\'';
		if (ch == ' ' && (i == 0 || dst[i - 1] == ' '))
			continue;
		dst[i++] = ch;
	}
	while (i > 0 && dst[i - 1] == ' ')
		i--;
	dst[i] = '\0';
}

static void qlist_push(struct pg_qlist *l, struct pg_query *q)
{
	q->next = NULL;
	if (l->tail)
		l->tail->next = q;
	else
		l->head = q;
	l->tail = q;
	l->n++;
}

static void qlist_push_front(struct pg_qlist *l, struct pg_query *q)
{
	q->next = l->head;
	l->head = q;
	if (!l->tail)
		l->tail = q;
	l->n++;
}

static struct pg_query *qlist_pop(struct pg_qlist *l)
{
	struct pg_query *q = l->head;
	if (!q)
		return NULL;
	l->head = q->next;
	if (!l->head)
		l->tail = NULL;
	l->n--;
	q->next = NULL;
	return q;
}

static void query_free(struct pg_query *q)
{
	if (!q)
		return;
	for (int i = 0; i < q->nparams; i++)
		free(q->params[i]);
	free(q->params);
	free(q->lengths);
	free(q->formats);
	free(q->name);
	free(q->sql);
	free(q->fail_err);
	free(q);
}

static void pool_destroy(struct pg_pool *p)
{
	free(p->conns);
	free(p->conninfo);
	free(p);
}

/* Runs q's callback, clears res and frees q. Returns false when the pool was
 * freed (or is being freed) meanwhile: the caller must then return without
 * touching the pool or its connections. */
static bool query_finish(struct pg_pool *p, struct pg_query *q, enum pg_status st, PGresult *res,
                         const char *sqlstate, const char *err)
{
	p->in_cb++;
	q->cb(st, res, st == PG_ERROR && sqlstate ? sqlstate : "", err ? err : "", q->arg);
	p->in_cb--;
	PQclear(res);
	query_free(q);
	if (p->closing) {
		if (p->in_cb == 0)
			pool_destroy(p);
		return false;
	}
	return true;
}

/* Queues q for a PG_UNAVAILABLE callback on the next loop turn, so that no
 * callback ever runs inside pg_exec. */
static void query_fail_later(struct pg_pool *p, struct pg_query *q, const char *err)
{
	if (!q->fail_err)
		q->fail_err = xstrdup(err);
	qlist_push(&p->failed, q);
	if (!evtimer_pending(p->defer_ev, NULL)) {
		struct timeval zero = { 0, 0 };
		evtimer_add(p->defer_ev, &zero);
	}
}

static void pool_fail_queue(struct pg_pool *p, const char *err)
{
	struct pg_query *q;
	while ((q = qlist_pop(&p->queue)))
		query_fail_later(p, q, err);
}

static void defer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pg_pool *p = arg;
	(void)fd;
	(void)what;
	/* Only those failed before this turn: a callback that retries at once
	 * and fails again is served on the next turn, not in a tight loop. */
	for (int n = p->failed.n; n > 0; n--) {
		struct pg_query *q = qlist_pop(&p->failed);
		if (!query_finish(p, q, PG_UNAVAILABLE, NULL, "", q->fail_err))
			return;
	}
}

static void queue_timer_arm(struct pg_pool *p)
{
	if (!p->queue.head) {
		evtimer_del(p->queue_timer);
		return;
	}
	int64_t due_us = p->queue.head->queued_us + (int64_t)p->queue_timeout_ms * 1000;
	if (p->stall_timeout_ms > 0 && !p->stalled) {
		int64_t from = p->queue.head->queued_us > p->progress_us ? p->queue.head->queued_us
		                                                         : p->progress_us;
		int64_t stall_due = from + (int64_t)p->stall_timeout_ms * 1000;
		if (stall_due < due_us)
			due_us = stall_due;
	}
	int64_t wait_ms = (due_us - mono_us() + 999) / 1000;
	struct timeval tv = ms_tv(wait_ms);
	evtimer_add(p->queue_timer, &tv);
}

static void probe_close(struct pg_pool *p)
{
	if (p->probe_ev) {
		event_free(p->probe_ev);
		p->probe_ev = NULL;
	}
	if (p->probe) {
		PQfinish(p->probe);
		p->probe = NULL;
	}
}

static void probe_cb(evutil_socket_t fd, short what, void *arg);

static void probe_watch(struct pg_pool *p, short what)
{
	if (p->probe_ev) {
		event_free(p->probe_ev);
		p->probe_ev = NULL;
	}
	int fd = PQsocket(p->probe);
	if (fd < 0 || !(p->probe_ev = event_new(p->base, fd, what, probe_cb, p)) ||
	    event_add(p->probe_ev, NULL))
		probe_close(p);
}

static void probe_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pg_pool *p = arg;
	(void)fd;
	(void)what;
	switch (PQconnectPoll(p->probe)) {
	case PGRES_POLLING_OK:
		/* Postgres answers: busy, not stalled */
		probe_close(p);
		pool_progress(p);
		break;
	case PGRES_POLLING_READING:
		probe_watch(p, EV_READ);
		break;
	case PGRES_POLLING_WRITING:
		probe_watch(p, EV_WRITE);
		break;
	default:
		probe_close(p);
		break;
	}
}

static void probe_start(struct pg_pool *p)
{
	if (p->probe)
		return;
	p->probe = PQconnectStart(p->conninfo);
	if (!p->probe || PQstatus(p->probe) == CONNECTION_BAD) {
		probe_close(p);
		return;
	}
	probe_watch(p, EV_WRITE);
}

/* True when a query has waited at least us for a connection or for its
 * answer. */
static bool pool_waited(const struct pg_pool *p, int64_t now, int64_t us)
{
	if (p->queue.head && now - p->queue.head->queued_us >= us)
		return true;
	for (int i = 0; i < p->size; i++)
		if (p->conns[i].state == CONN_BUSY && p->conns[i].q &&
		    now - p->conns[i].sent_us >= us)
			return true;
	return false;
}

static void queue_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pg_pool *p = arg;
	(void)fd;
	(void)what;
	int64_t now = mono_us();
	int64_t stall_us = (int64_t)p->stall_timeout_ms * 1000;
	/* this process itself was stopped (its loop came late): it could not
	 * see answers either, so that is not Postgres's stall */
	bool loop_late = p->checked_us && now - p->checked_us > 1000000;
	p->checked_us = now;
	/* half-way to a stall: ask Postgres for a new connection */
	if (stall_us > 0 && !p->stalled && !loop_late && pool_waited(p, now, stall_us / 2) &&
	    now - p->progress_us >= stall_us / 2)
		probe_start(p);
	if (stall_us > 0 && !p->stalled && !loop_late && pool_waited(p, now, stall_us) &&
	    now - p->progress_us >= stall_us) {
		/* A query waited stall_timeout_ms (for a connection or for its
		 * answer) and no connection got any answer meanwhile: Postgres is stalled (stopped, its host
		 * frozen). Fail fast until it answers again: the waiting queries,
		 * the ones on its connections (they may have run), new ones. */
		p->stalled = true;
		p->stalls++;
		log_warn("postgres is not answering: failing queries fast until it does "
		         "stall_timeout_ms=%d queued=%d",
		         p->stall_timeout_ms, p->queue.n);
		pool_fail_queue(p, "postgres is not answering");
		for (int i = 0; i < p->size; i++) {
			if (p->conns[i].state == CONN_BUSY &&
			    !conn_lost(&p->conns[i], "postgres is not answering"))
				return;
		}
		queue_timer_arm(p);
		return;
	}
	while (p->queue.head &&
	       p->queue.head->queued_us + (int64_t)p->queue_timeout_ms * 1000 <= now) {
		struct pg_query *q = qlist_pop(&p->queue);
		if (!query_finish(p, q, PG_UNAVAILABLE, NULL, "", "postgres queue timeout"))
			return;
	}
	queue_timer_arm(p);
}

static void conn_timer_ms(struct pg_conn *c, int ms)
{
	if (ms <= 0) {
		evtimer_del(c->timer);
		return;
	}
	struct timeval tv = ms_tv(ms);
	evtimer_add(c->timer, &tv);
}

/* Watches the connection's socket for what (EV_READ and/or EV_WRITE). The
 * event is rebuilt whenever libpq may have replaced the socket (during
 * connect it can close one and open another with the same number). */
static int conn_watch(struct pg_conn *c, short what, bool rebuild)
{
	int fd = PQsocket(c->pg);
	if (fd < 0)
		return -1;
	if (c->io && !rebuild && c->io_fd == fd && c->io_what == what)
		return 0;
	if (c->io)
		event_free(c->io);
	c->io = event_new(c->pool->base, fd, what | EV_PERSIST, conn_io_cb, c);
	if (!c->io)
		pg_oom();
	c->io_fd = fd;
	c->io_what = what;
	event_add(c->io, NULL);
	return 0;
}

static void conn_close(struct pg_conn *c)
{
	/* The event goes first, while its descriptor is still open. */
	if (c->io) {
		event_free(c->io);
		c->io = NULL;
	}
	PQclear(c->res);
	c->res = NULL;
	if (c->pg) {
		PQfinish(c->pg); /* sends Terminate without waiting: non-blocking mode */
		c->pg = NULL;
	}
	c->flushing = false;
}

static void pool_check_started(struct pg_pool *p)
{
	if (!p->starting)
		return;
	for (int i = 0; i < p->size; i++) {
		if (!p->conns[i].tried)
			return;
	}
	p->starting = false;
}

/* Closes c and schedules its reconnect. Runs no callback: queued queries
 * that can no longer run go to the deferred list. c->q must be NULL. */
static void conn_drop(struct pg_conn *c, const char *err)
{
	struct pg_pool *p = c->pool;
	char msg[PG_ERR_MAX];
	bool was_up = c->state == CONN_IDLE || c->state == CONN_BUSY;

	one_line(msg, sizeof msg, err);
	conn_close(c);
	c->state = CONN_DOWN;
	c->failures++;
	c->tried = true;
	if (was_up) {
		p->nup--;
		log_warn("postgres connection lost conn=%d up=%d retry_ms=%d err=\"%s\"", c->id,
		         p->nup, c->backoff_ms, msg);
	} else if (c->failures == 1) {
		log_warn("postgres connect failed conn=%d retry_ms=%d err=\"%s\"", c->id,
		         c->backoff_ms, msg);
	} else {
		log_debug("postgres connect failed conn=%d failures=%d retry_ms=%d err=\"%s\"",
		          c->id, c->failures, c->backoff_ms, msg);
	}
	conn_timer_ms(c, c->backoff_ms);
	c->backoff_ms =
	    c->backoff_ms * 2 > PG_BACKOFF_MAX_MS ? PG_BACKOFF_MAX_MS : c->backoff_ms * 2;
	pool_check_started(p);
	if (p->nup == 0 && !p->starting)
		pool_fail_queue(p, "postgres unavailable");
}

/* conn_drop, then the in-flight query (if any) fails with PG_UNAVAILABLE:
 * it may or may not have run. Returns false when the pool is gone. */
static bool conn_lost(struct pg_conn *c, const char *err)
{
	struct pg_pool *p = c->pool;
	struct pg_query *q = c->q;
	char msg[PG_ERR_MAX];

	one_line(msg, sizeof msg, err);
	c->q = NULL;
	conn_drop(c, msg);
	if (!q)
		return true;
	return query_finish(p, q, PG_UNAVAILABLE, NULL, "", msg);
}

static void notice_cb(void *arg, const PGresult *res)
{
	struct pg_conn *c = arg;
	const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	char msg[PG_ERR_MAX];

	one_line(msg, sizeof msg, PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
	if (sev && (strcmp(sev, "WARNING") == 0 || strcmp(sev, "ERROR") == 0 ||
	            strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0)) {
		log_warn("postgres notice conn=%d severity=%s sqlstate=%s err=\"%s\"", c->id, sev,
		         state ? state : "", msg);
	} else {
		log_debug("postgres notice conn=%d severity=%s sqlstate=%s err=\"%s\"", c->id,
		          sev ? sev : "", state ? state : "", msg);
	}
}

/* Starts sending what libpq has buffered. Returns -1 when the connection
 * failed (the caller handles the loss). */
static int conn_flush(struct pg_conn *c)
{
	int r = PQflush(c->pg);
	if (r < 0)
		return -1;
	c->flushing = r == 1;
	/* Reading stays on even while flushing: the server may need us to
	 * drain its output before it reads ours (PQflush docs). */
	return conn_watch(c, (short)(EV_READ | (c->flushing ? EV_WRITE : 0)), false);
}

static void conn_connect(struct pg_conn *c)
{
	struct pg_pool *p = c->pool;

	c->pg = PQconnectStart(p->conninfo);
	if (!c->pg)
		pg_oom();
	PQsetNoticeReceiver(c->pg, notice_cb, c);
	if (PQstatus(c->pg) == CONNECTION_BAD) {
		conn_drop(c, PQerrorMessage(c->pg));
		return;
	}
	c->state = CONN_CONNECTING;
	conn_timer_ms(c, PG_CONNECT_TIMEOUT_MS);
	/* Just after PQconnectStart, behave as if PQconnectPoll said WRITING. */
	if (conn_watch(c, EV_WRITE, true) < 0)
		conn_drop(c, PQerrorMessage(c->pg));
}

static void pool_progress(struct pg_pool *p)
{
	p->progress_us = mono_us();
	probe_close(p);
	if (p->stalled) {
		p->stalled = false;
		log_info("postgres answers again");
	}
}

static void conn_up(struct pg_conn *c)
{
	struct pg_pool *p = c->pool;

	pool_progress(p);
	c->state = CONN_IDLE;
	evtimer_del(c->timer);
	p->nup++;
	p->starting = false;
	if (c->failures > 0)
		log_info("postgres connected conn=%d up=%d after_failures=%d", c->id, p->nup,
		         c->failures);
	else
		log_info("postgres connected conn=%d up=%d", c->id, p->nup);
	c->failures = 0;
	c->tried = true;
	c->backoff_ms = PG_BACKOFF_MIN_MS;
	/* Postgres is back: the others need not sit out their backoff. */
	for (int i = 0; i < p->size; i++) {
		struct pg_conn *d = &p->conns[i];
		if (d->state == CONN_DOWN) {
			d->backoff_ms = PG_BACKOFF_MIN_MS;
			struct timeval zero = { 0, 0 };
			evtimer_add(d->timer, &zero);
		}
	}
	pool_dispatch(p);
}

static void conn_prepare_next(struct pg_conn *c)
{
	const struct pg_stmt *s = c->pool->stmts;

	if (!s || !s[c->stmt_next].name) {
		conn_up(c);
		return;
	}
	s += c->stmt_next;
	if (!PQsendPrepare(c->pg, s->name, s->sql, s->nparams, NULL) || conn_flush(c) < 0)
		conn_drop(c, PQerrorMessage(c->pg));
}

static void conn_poll(struct pg_conn *c)
{
	switch (PQconnectPoll(c->pg)) {
	case PGRES_POLLING_READING:
		if (conn_watch(c, EV_READ, true) < 0)
			conn_drop(c, PQerrorMessage(c->pg));
		return;
	case PGRES_POLLING_WRITING:
		if (conn_watch(c, EV_WRITE, true) < 0)
			conn_drop(c, PQerrorMessage(c->pg));
		return;
	case PGRES_POLLING_OK:
		break;
	default:
		conn_drop(c, PQerrorMessage(c->pg));
		return;
	}
	if (PQsetnonblocking(c->pg, 1) != 0) {
		conn_drop(c, PQerrorMessage(c->pg));
		return;
	}
	c->state = CONN_PREPARING;
	c->stmt_next = 0;
	conn_prepare_next(c);
}

/* Sends q on the idle connection c. When libpq refuses the command because
 * the connection is gone, q goes back to the head of the queue (it never left
 * this process). When sending fails later, q may be partly sent, so it fails
 * on the next turn rather than being retried. Either way c is dropped. */
static void conn_send(struct pg_conn *c, struct pg_query *q)
{
	struct pg_pool *p = c->pool;
	const char *const *params = (const char *const *)q->params;
	char msg[PG_ERR_MAX];
	int ok;

	if (q->name)
		ok = PQsendQueryPrepared(c->pg, q->name, q->nparams, params, q->lengths, q->formats,
		                         0);
	else
		ok = PQsendQueryParams(c->pg, q->sql, q->nparams, NULL, params, q->lengths,
		                       q->formats, 0);
	c->state = CONN_BUSY;
	if (!ok && PQstatus(c->pg) == CONNECTION_BAD) {
		one_line(msg, sizeof msg, PQerrorMessage(c->pg));
		qlist_push_front(&p->queue, q);
		conn_drop(c, msg);
		return;
	}
	if (!ok || conn_flush(c) < 0) {
		one_line(msg, sizeof msg, PQerrorMessage(c->pg));
		query_fail_later(p, q, msg);
		conn_drop(c, msg);
		return;
	}
	c->q = q;
	c->sent_us = mono_us();
	conn_timer_ms(c, p->query_timeout_ms);
}

static bool sqlstate_unavailable(const char *s)
{
	/* Connection exceptions, and the server shutting down under us. */
	return s && (strncmp(s, "08", 2) == 0 || strcmp(s, "57P01") == 0 ||
	             strcmp(s, "57P02") == 0 || strcmp(s, "57P03") == 0);
}

/* The current command finished (PQgetResult returned NULL). */
static void conn_command_done(struct pg_conn *c)
{
	struct pg_pool *p = c->pool;
	PGresult *res = c->res;
	c->res = NULL;

	if (c->state == CONN_PREPARING) {
		const struct pg_stmt *s = &p->stmts[c->stmt_next];
		if (PQresultStatus(res) != PGRES_COMMAND_OK) {
			char msg[PG_ERR_MAX];
			one_line(msg, sizeof msg, res ? PQresultErrorMessage(res) : "no result");
			if (c->failures == 0) /* once per outage; retries log at debug */
				log_error("postgres prepare failed conn=%d stmt=%s err=\"%s\"",
				          c->id, s->name, msg);
			PQclear(res);
			conn_drop(c, msg);
			return;
		}
		PQclear(res);
		c->stmt_next++;
		conn_prepare_next(c);
		return;
	}

	struct pg_query *q = c->q;
	c->q = NULL;
	c->state = CONN_IDLE;
	evtimer_del(c->timer);
	pool_progress(p);

	enum pg_status st;
	const char *sqlstate = "";
	const char *err = "";
	char msg[PG_ERR_MAX];
	ExecStatusType es = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	if (es == PGRES_COMMAND_OK || es == PGRES_TUPLES_OK) {
		st = PG_OK;
	} else {
		if (res) {
			sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
			err = PQresultErrorMessage(res);
			if (!*err)
				err = PQresStatus(es);
		} else {
			err = PQerrorMessage(c->pg);
		}
		if (!sqlstate)
			sqlstate = "";
		st = PG_ERROR;
		if (!res || PQstatus(c->pg) == CONNECTION_BAD || sqlstate_unavailable(sqlstate))
			st = PG_UNAVAILABLE;
	}
	one_line(msg, sizeof msg, err);
	if (st == PG_UNAVAILABLE) {
		/* The server is closing this connection (or has): no query
		 * should be sent on it meanwhile. */
		PQclear(res);
		res = NULL;
		sqlstate = "";
		conn_drop(c, msg);
	}
	if (!query_finish(p, q, st, res, sqlstate, msg))
		return;
	pool_dispatch(p);
}

static void conn_io_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pg_conn *c = arg;
	(void)fd;

	if (c->state == CONN_CONNECTING) {
		conn_poll(c);
		return;
	}
	if ((what & EV_READ) && !PQconsumeInput(c->pg)) {
		conn_lost(c, PQerrorMessage(c->pg));
		return;
	}
	if (c->flushing && conn_flush(c) < 0) {
		conn_lost(c, PQerrorMessage(c->pg));
		return;
	}
	PGnotify *n;
	while ((n = PQnotifies(c->pg)))
		PQfreemem(n);
	if (c->state == CONN_IDLE) {
		/* Nothing is expected: this is the server closing on us (shutdown,
		 * terminate), seen as EOF. */
		if (PQstatus(c->pg) == CONNECTION_BAD)
			conn_lost(c, PQerrorMessage(c->pg));
		return;
	}
	while (!PQisBusy(c->pg)) {
		PGresult *r = PQgetResult(c->pg);
		if (!r) {
			conn_command_done(c);
			return;
		}
		ExecStatusType es = PQresultStatus(r);
		if (es == PGRES_COPY_IN || es == PGRES_COPY_OUT || es == PGRES_COPY_BOTH) {
			/* PQgetResult would repeat this forever: give the
			 * connection up. */
			PQclear(r);
			conn_lost(c, "COPY is not supported by the pool");
			return;
		}
		/* One statement gives one result; should more come, the first
		 * error wins, else the first result. */
		if (!c->res) {
			c->res = r;
		} else if (es == PGRES_FATAL_ERROR && PQresultStatus(c->res) != PGRES_FATAL_ERROR) {
			PQclear(c->res);
			c->res = r;
		} else {
			PQclear(r);
		}
	}
	if (PQstatus(c->pg) == CONNECTION_BAD)
		conn_lost(c, PQerrorMessage(c->pg));
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pg_conn *c = arg;
	(void)fd;
	(void)what;

	switch (c->state) {
	case CONN_DOWN:
		conn_connect(c);
		break;
	case CONN_CONNECTING:
	case CONN_PREPARING:
		conn_lost(c, "connect timed out");
		break;
	case CONN_BUSY:
		log_warn("postgres query timed out conn=%d timeout_ms=%d", c->id,
		         c->pool->query_timeout_ms);
		conn_lost(c, "query timed out");
		break;
	case CONN_IDLE:
		break;
	}
}

static void pool_dispatch(struct pg_pool *p)
{
	while (p->queue.head) {
		struct pg_conn *c = NULL;
		for (int i = 0; i < p->size; i++) {
			if (p->conns[i].state == CONN_IDLE) {
				c = &p->conns[i];
				break;
			}
		}
		if (!c)
			break;
		conn_send(c, qlist_pop(&p->queue));
	}
	queue_timer_arm(p);
}

struct pg_pool *pg_pool_new(struct event_base *base, const char *conninfo, int size,
                            const struct pg_stmt *stmts)
{
	if (!base || !conninfo || size < 1 || size > PG_MAX_POOL)
		return NULL;
	char *perr = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
	if (!opts) {
		PQfreemem(perr);
		return NULL;
	}
	PQconninfoFree(opts);

	struct pg_pool *p = xcalloc(1, sizeof *p);
	p->base = base;
	p->conninfo = xstrdup(conninfo);
	p->stmts = stmts;
	p->size = size;
	p->queue_timeout_ms = PG_QUEUE_TIMEOUT_DEFAULT;
	p->query_timeout_ms = PG_QUERY_TIMEOUT_DEFAULT;
	p->starting = true;
	p->conns = xcalloc((size_t)size, sizeof *p->conns);
	p->queue_timer = evtimer_new(base, queue_timer_cb, p);
	p->defer_ev = evtimer_new(base, defer_cb, p);
	p->stall_ev = event_new(base, -1, EV_PERSIST, queue_timer_cb, p);
	if (!p->queue_timer || !p->defer_ev || !p->stall_ev)
		pg_oom();
	struct timeval quarter = { 0, 250000 };
	event_add(p->stall_ev, &quarter);
	/* Connecting starts on the first loop turn, all connections at once. */
	struct timeval zero = { 0, 0 };
	for (int i = 0; i < size; i++) {
		struct pg_conn *c = &p->conns[i];
		c->pool = p;
		c->id = i;
		c->state = CONN_DOWN;
		c->io_fd = -1;
		c->backoff_ms = PG_BACKOFF_MIN_MS;
		c->timer = evtimer_new(base, conn_timer_cb, c);
		if (!c->timer)
			pg_oom();
		evtimer_add(c->timer, &zero);
	}
	return p;
}

void pg_pool_free(struct pg_pool *p)
{
	if (!p || p->closing)
		return;
	p->closing = true;
	/* Held across the callbacks below so that none of them frees p. */
	p->in_cb++;
	for (int i = 0; i < p->size; i++) {
		struct pg_query *q = p->conns[i].q;
		p->conns[i].q = NULL;
		if (q)
			query_finish(p, q, PG_UNAVAILABLE, NULL, "", "postgres pool closing");
	}
	struct pg_query *q;
	while ((q = qlist_pop(&p->queue)))
		query_finish(p, q, PG_UNAVAILABLE, NULL, "", "postgres pool closing");
	while ((q = qlist_pop(&p->failed)))
		query_finish(p, q, PG_UNAVAILABLE, NULL, "", q->fail_err);
	for (int i = 0; i < p->size; i++) {
		struct pg_conn *c = &p->conns[i];
		conn_close(c);
		if (c->timer)
			event_free(c->timer);
		c->timer = NULL;
		c->state = CONN_DOWN;
	}
	event_free(p->queue_timer);
	event_free(p->defer_ev);
	event_free(p->stall_ev);
	p->queue_timer = p->defer_ev = p->stall_ev = NULL;
	probe_close(p);
	p->nup = 0;
	p->in_cb--;
	if (p->in_cb == 0)
		pool_destroy(p);
}

int pg_exec(struct pg_pool *p, const char *name, const char *sql, int nparams,
            const char *const *params, pg_cb cb, void *arg)
{
	return pg_exec_bin(p, name, sql, nparams, params, NULL, NULL, cb, arg);
}

int pg_exec_bin(struct pg_pool *p, const char *name, const char *sql, int nparams,
                const char *const *params, const int *lengths, const int *formats, pg_cb cb,
                void *arg)
{
	if (!p || p->closing || !cb || (!name && !sql) || nparams < 0 || nparams > 65535 ||
	    (nparams > 0 && !params) || (!lengths != !formats))
		return -1;
	for (int i = 0; formats && i < nparams; i++)
		if ((formats[i] != 0 && formats[i] != 1) || (formats[i] && lengths[i] < 0))
			return -1;

	struct pg_query *q = xcalloc(1, sizeof *q);
	q->name = name ? xstrdup(name) : NULL;
	q->sql = name ? NULL : xstrdup(sql);
	q->nparams = nparams;
	q->params = xcalloc((size_t)nparams, sizeof *q->params);
	if (formats) {
		q->lengths = xcalloc((size_t)nparams ? (size_t)nparams : 1, sizeof *q->lengths);
		q->formats = xcalloc((size_t)nparams ? (size_t)nparams : 1, sizeof *q->formats);
	}
	for (int i = 0; i < nparams; i++) {
		if (!params[i])
			continue;
		if (formats && formats[i]) {
			q->params[i] = xcalloc(1, (size_t)lengths[i] + 1);
			memcpy(q->params[i], params[i], (size_t)lengths[i]);
			q->lengths[i] = lengths[i];
			q->formats[i] = 1;
		} else {
			q->params[i] = xstrdup(params[i]);
		}
	}
	q->cb = cb;
	q->arg = arg;
	q->queued_us = mono_us();

	if (p->nup == 0 && !p->starting) {
		query_fail_later(p, q, "postgres unavailable");
		return 0;
	}
	if (p->stalled) {
		query_fail_later(p, q, "postgres is not answering");
		return 0;
	}
	if (p->queue.n >= PG_QUEUE_MAX) {
		query_fail_later(p, q, "postgres queue full");
		return 0;
	}
	qlist_push(&p->queue, q);
	pool_dispatch(p);
	return 0;
}

bool pg_pool_ready(const struct pg_pool *p)
{
	return p && !p->closing && p->nup > 0 && !p->stalled;
}

bool pg_pool_stalled(const struct pg_pool *p, uint64_t *stalls)
{
	if (stalls)
		*stalls = p ? p->stalls : 0;
	return p && p->stalled;
}

void pg_pool_set_stall_timeout(struct pg_pool *p, int ms)
{
	if (!p || ms < 0)
		return;
	p->stall_timeout_ms = ms;
	if (!p->closing)
		queue_timer_arm(p);
}

void pg_pool_stats(const struct pg_pool *p, int *up, int *busy, int *queued)
{
	int nbusy = 0;
	for (int i = 0; p && i < p->size; i++) {
		if (p->conns[i].state == CONN_BUSY)
			nbusy++;
	}
	if (up)
		*up = p ? p->nup : 0;
	if (busy)
		*busy = nbusy;
	if (queued)
		*queued = p ? p->queue.n : 0;
}

void pg_pool_set_queue_timeout(struct pg_pool *p, int ms)
{
	if (!p || ms < 0)
		return;
	p->queue_timeout_ms = ms;
	if (!p->closing)
		queue_timer_arm(p);
}

void pg_pool_set_query_timeout(struct pg_pool *p, int ms)
{
	if (!p || ms < 0)
		return;
	p->query_timeout_ms = ms;
}
