/* rds.c — one hiredis async connection on the libevent loop: scripts loaded
 * on every (re)connect and called by SHA, reconnection with backoff, and the
 * promise that every accepted command's callback runs exactly once. */
#include "rds.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "log.h"

#define RDS_BACKOFF_MIN_MS 100
#define RDS_BACKOFF_MAX_MS 5000
/* A connection that takes longer than this to connect and load its scripts,
 * or that answers nothing for this long while commands wait, is dropped (a
 * stopped or partitioned Redis never closes the socket by itself). */
#define RDS_STALL_MS    5000
#define RDS_WATCHDOG_MS 250

static const char err_unavailable[] = "redis unavailable";
static const char err_lost[] = "redis connection lost";
static const char err_shutdown[] = "redis shutting down";

enum rds_state {
	RDS_DOWN,       /* no connection; waiting for the backoff timer */
	RDS_CONNECTING, /* TCP connect in progress */
	RDS_LOADING,    /* connected, SCRIPT LOADs in flight */
	RDS_READY,
};

enum pend_kind {
	PEND_USER,   /* rds_cmd / rds_cmdf */
	PEND_SCRIPT, /* rds_script: keeps its EVALSHA for the NOSCRIPT retry */
	PEND_LOAD,   /* SCRIPT LOAD (or PING when there are no scripts) at connect */
};

/* One command the caller is owed a callback for (or an internal one). */
struct pend {
	struct rds *r; /* NULL once rds_free has answered it (hiredis still owes a call) */
	struct pend *prev, *next;
	enum pend_kind kind;
	rds_cb cb;
	void *arg;
	int idx;       /* PEND_SCRIPT, PEND_LOAD: script index (-1: PING) */
	char *cmd;     /* PEND_SCRIPT: formatted EVALSHA (redisFreeCommand) */
	int cmd_bytes; /* length of cmd */
	bool retried;  /* PEND_SCRIPT: NOSCRIPT seen once already */
};

struct pend_list {
	struct pend *head, *tail;
	int n;
};

struct rds {
	struct event_base *base;
	char *host;
	int port;
	char *unix_path; /* non-NULL: connect here instead (rds_tls's tunnel to host:port) */
	char *password;  /* NULL: no AUTH */
	const struct rds_script *scripts;
	int nscripts;
	char (*sha)[41]; /* per script, from SCRIPT LOAD */

	redisAsyncContext *ac; /* NULL while RDS_DOWN */
	enum rds_state state;
	int loads_left;       /* RDS_LOADING: SCRIPT LOAD replies still expected */
	int backoff_ms;       /* delay before the next connect attempt */
	int64_t attempt_us;   /* monotonic start of the current connect attempt */
	int64_t progress_us;  /* monotonic time of the last reply (or first send) */
	const char *drop_err; /* err for NULL replies of a connection we dropped */
	bool freeing;
	bool *dead; /* set while fail_cb runs: tells it rds_free happened */

	struct pend_list live; /* registered with hiredis, oldest first */
	struct pend_list fail; /* to be failed on the next loop turn */

	struct event *retry_ev;    /* backoff timer */
	struct event *fail_ev;     /* zero-timeout: runs the fail list */
	struct event *watchdog_ev; /* persistent: connect and reply stalls */

	void (*on_connect)(void *arg);
	void *on_connect_arg;
};

static void connect_start(struct rds *r);
static void reply_cb(redisAsyncContext *ac, void *reply, void *privdata);

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);
	if (!p) {
		log_error("out of memory bytes=%zu", n * size);
		abort();
	}
	return p;
}

static int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void list_push(struct pend_list *l, struct pend *p)
{
	p->prev = l->tail;
	p->next = NULL;
	if (l->tail)
		l->tail->next = p;
	else
		l->head = p;
	l->tail = p;
	l->n++;
}

static void list_unlink(struct pend_list *l, struct pend *p)
{
	if (p->prev)
		p->prev->next = p->next;
	else
		l->head = p->next;
	if (p->next)
		p->next->prev = p->prev;
	else
		l->tail = p->prev;
	p->prev = p->next = NULL;
	l->n--;
}

static void pend_free(struct pend *p)
{
	if (p->cmd)
		redisFreeCommand(p->cmd);
	free(p);
}

static struct pend *pend_new(struct rds *r, enum pend_kind kind, rds_cb cb, void *arg)
{
	struct pend *p = xcalloc(1, sizeof(*p));
	p->r = r;
	p->kind = kind;
	p->cb = cb;
	p->arg = arg;
	p->idx = -1;
	return p;
}

/* Registers p as waiting for hiredis. The stall clock starts when the first
 * command goes out on an idle connection. */
static void live_push(struct rds *r, struct pend *p)
{
	if (r->live.n == 0)
		r->progress_us = mono_us();
	list_push(&r->live, p);
}

/* Queues p to be answered with reply NULL on the next loop turn, so that no
 * callback ever runs before the call that asked for it has returned. A zero
 * timer rather than event_active: timers run once per loop iteration, after
 * polling, so a caller that resends from its callback cannot starve I/O. */
static void pend_fail_later(struct rds *r, struct pend *p)
{
	static const struct timeval zero = { 0, 0 };
	list_push(&r->fail, p);
	evtimer_add(r->fail_ev, &zero);
}

static void fail_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct rds *r = arg;
	bool dead = false;
	/* Only those queued before this turn: a callback that resends while
	 * Redis is down gets its answer on the next turn. */
	int n = r->fail.n;
	r->dead = &dead;
	while (n-- > 0 && r->fail.head) {
		struct pend *p = r->fail.head;
		list_unlink(&r->fail, p);
		if (p->cb)
			p->cb(NULL, err_unavailable, p->arg);
		pend_free(p);
		if (dead)
			return; /* rds_free ran inside the callback */
	}
	r->dead = NULL;
	if (r->fail.head) {
		static const struct timeval zero = { 0, 0 };
		evtimer_add(r->fail_ev, &zero);
	}
}

static void reconnect_later(struct rds *r)
{
	struct timeval tv = { r->backoff_ms / 1000, (r->backoff_ms % 1000) * 1000 };
	evtimer_add(r->retry_ev, &tv);
	r->backoff_ms *= 2;
	if (r->backoff_ms > RDS_BACKOFF_MAX_MS)
		r->backoff_ms = RDS_BACKOFF_MAX_MS;
}

/* Abandons the current connection: hiredis answers its commands with NULL
 * (now, or right after the hiredis callback we are in returns), and those
 * answers carry why. */
static void conn_drop(struct rds *r, const char *why)
{
	redisAsyncContext *ac = r->ac;
	log_warn("redis connection dropped host=%s port=%d reason=\"%s\" retry_ms=%d", r->host,
	         r->port, why, r->backoff_ms);
	r->ac = NULL;
	r->state = RDS_DOWN;
	r->drop_err = why;
	ac->data = NULL; /* disconnect_cb: nothing left to do */
	reconnect_later(r);
	/* Last: the callbacks it runs may call rds_free. */
	redisAsyncFree(ac);
}

static void load_done(struct rds *r, redisAsyncContext *ac, int idx, redisReply *reply)
{
	if (!reply || ac != r->ac || r->state != RDS_LOADING)
		return; /* the connection is going away; reconnecting will load again */
	const char *what = idx >= 0 ? r->scripts[idx].name : "ping";
	if (reply->type == REDIS_REPLY_ERROR ||
	    (idx >= 0 && (reply->type != REDIS_REPLY_STRING || reply->len != 40))) {
		/* e.g. LOADING while Redis reads its AOF after a restart */
		log_warn("redis script load failed script=%s err=\"%s\"", what,
		         reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
		conn_drop(r, err_lost);
		return;
	}
	if (idx >= 0) {
		memcpy(r->sha[idx], reply->str, 40);
		r->sha[idx][40] = '\0';
	}
	if (--r->loads_left > 0)
		return;
	r->state = RDS_READY;
	r->backoff_ms = RDS_BACKOFF_MIN_MS;
	log_info("redis connected host=%s port=%d scripts=%d", r->host, r->port, r->nscripts);
	/* Last: the hook may call rds_free (safe here: hiredis defers the
	 * context's free until this callback returns). */
	if (r->on_connect)
		r->on_connect(r->on_connect_arg);
}

static bool is_noscript(const redisReply *reply)
{
	return reply->type == REDIS_REPLY_ERROR && reply->len >= 8 &&
	       strncmp(reply->str, "NOSCRIPT", 8) == 0;
}

/* Pipelines SCRIPT LOAD then the same EVALSHA again: Redis runs them in
 * order, so the retry finds the script. The load's own reply is not needed
 * (a failed load shows as NOSCRIPT again, passed to the caller). */
static bool script_retry(struct rds *r, struct pend *p)
{
	const struct rds_script *s = &r->scripts[p->idx];
	const char *argv[] = { "SCRIPT", "LOAD", s->lua };
	p->retried = true;
	if (redisAsyncCommandArgv(r->ac, NULL, NULL, 3, argv, NULL) != REDIS_OK)
		return false;
	if (redisAsyncFormattedCommand(r->ac, reply_cb, p, p->cmd, (size_t)p->cmd_bytes) !=
	    REDIS_OK)
		return false;
	live_push(r, p);
	log_debug("redis script reloaded script=%s", s->name);
	return true;
}

/* Every command's one hiredis callback: with a reply, or with NULL when the
 * context goes away (error, drop, rds_free). */
static void reply_cb(redisAsyncContext *ac, void *reply_v, void *privdata)
{
	struct pend *p = privdata;
	redisReply *reply = reply_v;
	struct rds *r = p->r;

	if (!r) {
		pend_free(p); /* rds_free already answered it */
		return;
	}
	list_unlink(&r->live, p);
	if (reply)
		r->progress_us = mono_us();
	else if (ac == r->ac)
		r->state = RDS_DOWN; /* hiredis is tearing the connection down */

	if (p->kind == PEND_LOAD) {
		int idx = p->idx;
		pend_free(p);
		load_done(r, ac, idx, reply);
		return;
	}
	if (p->kind == PEND_SCRIPT && reply && is_noscript(reply) && !p->retried && ac == r->ac &&
	    r->state == RDS_READY && script_retry(r, p))
		return;

	const char *err = reply ? NULL : (r->drop_err ? r->drop_err : err_lost);
	rds_cb cb = p->cb;
	void *arg = p->arg;
	pend_free(p);
	/* Last: the callback may send more or call rds_free. */
	if (cb)
		cb(reply, err, arg);
}

static void auth_cb(redisAsyncContext *ac, void *reply_v, void *privdata)
{
	redisReply *reply = reply_v;
	struct rds *r = ac->data;
	(void)privdata;
	if (r && reply && reply->type == REDIS_REPLY_ERROR)
		log_error("redis refused the password from redis_password_file host=%s port=%d "
		          "err=\"%s\"",
		          r->host, r->port, reply->str);
}

static void connect_cb(const redisAsyncContext *cac, int status)
{
	struct rds *r = cac->data;
	if (!r || r->ac != cac)
		return;
	redisAsyncContext *ac = r->ac;
	if (status != REDIS_OK) {
		log_warn("redis connect failed host=%s port=%d err=\"%s\" retry_ms=%d", r->host,
		         r->port, cac->errstr, r->backoff_ms);
		r->ac = NULL;
		r->state = RDS_DOWN;
		reconnect_later(r); /* hiredis frees the context when we return */
		return;
	}
	/* No user code and no free here: hiredis goes on using the context
	 * after this returns, outside any callback guard. */
	r->state = RDS_LOADING;
	if (!r->unix_path) /* the tunnel keeps its own TCP side alive */
		redisEnableKeepAlive(&ac->c);
	if (r->password) {
		/* Redis runs commands in order: AUTH first, then the loads
		 * below, which fail (and drop the connection) if it refused */
		const char *argv[2] = { "AUTH", r->password };
		if (redisAsyncCommandArgv(ac, auth_cb, NULL, 2, argv, NULL) != REDIS_OK)
			return;
	}
	/* With no scripts a PING stands in, so that readiness (and the hook)
	 * always comes from a reply callback. */
	r->loads_left = r->nscripts > 0 ? r->nscripts : 1;
	for (int i = 0; i < r->loads_left; i++) {
		struct pend *p = pend_new(r, PEND_LOAD, NULL, NULL);
		const char *argv[3] = { "PING", NULL, NULL };
		int argc = 1;
		if (r->nscripts > 0) {
			p->idx = i;
			argv[0] = "SCRIPT";
			argv[1] = "LOAD";
			argv[2] = r->scripts[i].lua;
			argc = 3;
		}
		if (redisAsyncCommandArgv(ac, reply_cb, p, argc, argv, NULL) != REDIS_OK) {
			/* Out of memory: the watchdog drops the connection. */
			pend_free(p);
			return;
		}
		live_push(r, p);
	}
}

static void disconnect_cb(const redisAsyncContext *cac, int status)
{
	struct rds *r = cac->data;
	if (!r || r->ac != cac)
		return;
	log_warn("redis disconnected host=%s port=%d err=\"%s\" retry_ms=%d", r->host, r->port,
	         status == REDIS_OK || !cac->errstr ? "closed" : cac->errstr, r->backoff_ms);
	r->ac = NULL;
	r->state = RDS_DOWN;
	reconnect_later(r);
}

static void connect_start(struct rds *r)
{
	r->drop_err = NULL;
	r->attempt_us = mono_us();
	/* Non-blocking connect; a numeric host never waits on getaddrinfo. */
	redisAsyncContext *ac = r->unix_path ? redisAsyncConnectUnix(r->unix_path)
	                                     : redisAsyncConnect(r->host, r->port);
	if (!ac || ac->err || redisLibeventAttach(ac, r->base) != REDIS_OK) {
		log_warn("redis connect failed host=%s port=%d err=\"%s\" retry_ms=%d", r->host,
		         r->port, ac && ac->err ? ac->errstr : "out of memory", r->backoff_ms);
		if (ac)
			redisAsyncFree(ac);
		reconnect_later(r);
		return;
	}
	ac->data = r;
	redisAsyncSetConnectCallback(ac, connect_cb);
	redisAsyncSetDisconnectCallback(ac, disconnect_cb);
	r->ac = ac;
	r->state = RDS_CONNECTING;
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	connect_start(arg);
}

/* A stopped or unreachable Redis keeps the socket open and says nothing;
 * without this, connects and commands would wait forever. */
static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct rds *r = arg;
	int64_t stall_us = (int64_t)RDS_STALL_MS * 1000;
	int64_t now = mono_us();
	if ((r->state == RDS_CONNECTING || r->state == RDS_LOADING) &&
	    now - r->attempt_us > stall_us)
		conn_drop(r, "redis connect timeout");
	else if (r->state == RDS_READY && r->live.n > 0 && now - r->progress_us > stall_us)
		conn_drop(r, "redis timeout");
}

struct rds *rds_new(struct event_base *base, const char *host, int port,
                    const struct rds_script *scripts)
{
	return rds_new_via(base, host, port, NULL, scripts);
}

struct rds *rds_new_via(struct event_base *base, const char *host, int port, const char *unix_path,
                        const struct rds_script *scripts)
{
	if (!base || !host || port <= 0 || port > 65535)
		return NULL;
	int n = 0;
	while (scripts && scripts[n].name) {
		if (!scripts[n].lua)
			return NULL;
		n++;
	}

	struct rds *r = xcalloc(1, sizeof(*r));
	r->base = base;
	r->port = port;
	r->scripts = scripts;
	r->nscripts = n;
	r->backoff_ms = RDS_BACKOFF_MIN_MS;
	r->host = strdup(host);
	r->unix_path = unix_path ? strdup(unix_path) : NULL;
	r->sha = xcalloc(n > 0 ? (size_t)n : 1, sizeof(*r->sha));
	r->retry_ev = evtimer_new(base, retry_cb, r);
	r->fail_ev = evtimer_new(base, fail_cb, r);
	r->watchdog_ev = event_new(base, -1, EV_PERSIST, watchdog_cb, r);
	if (!r->host || (unix_path && !r->unix_path) || !r->retry_ev || !r->fail_ev ||
	    !r->watchdog_ev) {
		log_error("out of memory in rds_new");
		abort();
	}
	struct timeval tick = { 0, RDS_WATCHDOG_MS * 1000 };
	evtimer_add(r->watchdog_ev, &tick);
	connect_start(r);
	return r;
}

void rds_set_password(struct rds *r, const char *password)
{
	if (r->password) {
		explicit_bzero(r->password, strlen(r->password));
		free(r->password);
	}
	r->password = password && *password ? strdup(password) : NULL;
	if (password && *password && !r->password) {
		log_error("out of memory");
		abort();
	}
}

int rds_check_auth(const char *host, int port, const char *password, char *err, size_t err_len)
{
	struct timeval tv = { 3, 0 };
	redisContext *c = redisConnectWithTimeout(host, port, tv);
	if (!c || c->err) {
		log_warn("redis not reachable at start-up host=%s port=%d err=\"%s\"", host, port,
		         c ? c->errstr : "out of memory");
		if (c)
			redisFree(c);
		return 0;
	}
	redisSetTimeout(c, tv);
	int rc = 0;
	redisReply *rep;
	if (password && *password) {
		const char *argv[2] = { "AUTH", password };
		rep = redisCommandArgv(c, 2, argv, NULL);
		if (rep && rep->type == REDIS_REPLY_ERROR) {
			snprintf(err, err_len,
			         "redis at %s:%d refused the password in redis_password_file: %s",
			         host, port, rep->str);
			rc = -1;
		}
		if (rep)
			freeReplyObject(rep);
	}
	if (!rc) {
		rep = redisCommand(c, "PING");
		if (rep && rep->type == REDIS_REPLY_ERROR) {
			bool noauth = !strncmp(rep->str, "NOAUTH", 6);
			snprintf(
			    err, err_len, "redis at %s:%d refused PING: %s%s", host, port, rep->str,
			    noauth ? " (it requires a password: set redis_password_file)" : "");
			rc = -1;
		}
		if (rep)
			freeReplyObject(rep);
	}
	redisFree(c);
	return rc;
}

void rds_free(struct rds *r)
{
	if (!r || r->freeing)
		return;
	r->freeing = true; /* from here on rds_cmd returns -1 */
	if (r->dead)
		*r->dead = true;
	event_free(r->retry_ev);
	event_free(r->fail_ev);
	event_free(r->watchdog_ev);

	/* Answer everything now, while the callers' args are surely alive. */
	struct pend *p;
	while ((p = r->fail.head)) {
		list_unlink(&r->fail, p);
		if (p->cb)
			p->cb(NULL, err_shutdown, p->arg);
		pend_free(p);
	}
	while ((p = r->live.head)) {
		/* hiredis still calls reply_cb for it: orphaned, it only frees. */
		list_unlink(&r->live, p);
		p->r = NULL;
		rds_cb cb = p->cb;
		p->cb = NULL;
		if (cb)
			cb(NULL, err_shutdown, p->arg);
	}
	if (r->ac) {
		r->ac->data = NULL;
		/* Immediate, or (inside a hiredis callback) right after it. */
		redisAsyncFree(r->ac);
	}
	free(r->sha);
	free(r->host);
	free(r->unix_path);
	if (r->password) {
		explicit_bzero(r->password, strlen(r->password));
		free(r->password);
	}
	free(r);
}

int rds_cmd(struct rds *r, rds_cb cb, void *arg, int argc, const char **argv, const size_t *lens)
{
	if (!r || r->freeing || argc <= 0 || !argv)
		return -1;
	struct pend *p = pend_new(r, PEND_USER, cb, arg);
	if (r->state == RDS_READY &&
	    redisAsyncCommandArgv(r->ac, reply_cb, p, argc, argv, lens) == REDIS_OK)
		live_push(r, p);
	else
		pend_fail_later(r, p);
	return 0;
}

int rds_cmdf(struct rds *r, rds_cb cb, void *arg, const char *fmt, ...)
{
	if (!r || r->freeing || !fmt)
		return -1;
	struct pend *p = pend_new(r, PEND_USER, cb, arg);
	int rc = REDIS_ERR;
	if (r->state == RDS_READY) {
		va_list ap;
		va_start(ap, fmt);
		rc = redisvAsyncCommand(r->ac, reply_cb, p, fmt, ap);
		va_end(ap);
	}
	if (rc == REDIS_OK)
		live_push(r, p);
	else
		pend_fail_later(r, p);
	return 0;
}

/* Formats EVALSHA sha numkeys argv... once; the NOSCRIPT retry resends it. */
static int script_format(struct rds *r, struct pend *p, int numkeys, int argc, const char **argv,
                         const size_t *lens)
{
	char nk[16];
	int n = argc + 3;
	const char **av = xcalloc((size_t)n, sizeof(*av));
	size_t *al = xcalloc((size_t)n, sizeof(*al));
	snprintf(nk, sizeof(nk), "%d", numkeys);
	av[0] = "EVALSHA";
	al[0] = 7;
	av[1] = r->sha[p->idx];
	al[1] = 40;
	av[2] = nk;
	al[2] = strlen(nk);
	for (int i = 0; i < argc; i++) {
		av[3 + i] = argv[i];
		al[3 + i] = lens ? lens[i] : strlen(argv[i]);
	}
	p->cmd_bytes = redisFormatCommandArgv(&p->cmd, n, av, al);
	free(av);
	free(al);
	if (p->cmd_bytes < 0) {
		p->cmd = NULL;
		return -1;
	}
	return 0;
}

int rds_script(struct rds *r, int idx, rds_cb cb, void *arg, int numkeys, int argc,
               const char **argv, const size_t *lens)
{
	if (!r || r->freeing || idx < 0 || idx >= r->nscripts || argc < 0 || numkeys < 0 ||
	    numkeys > argc || (argc > 0 && !argv))
		return -1;
	struct pend *p = pend_new(r, PEND_SCRIPT, cb, arg);
	p->idx = idx;
	if (r->state == RDS_READY && script_format(r, p, numkeys, argc, argv, lens) == 0 &&
	    redisAsyncFormattedCommand(r->ac, reply_cb, p, p->cmd, (size_t)p->cmd_bytes) ==
	        REDIS_OK)
		live_push(r, p);
	else
		pend_fail_later(r, p);
	return 0;
}

bool rds_ready(const struct rds *r)
{
	return r && !r->freeing && r->state == RDS_READY;
}

void rds_on_connect(struct rds *r, void (*fn)(void *arg), void *arg)
{
	if (!r)
		return;
	r->on_connect = fn;
	r->on_connect_arg = arg;
}
