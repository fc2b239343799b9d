/* http_guard.c — see http_guard.h.
 *
 * A connection's life here: evhttp accepts it and asks our bevcb for its
 * bufferevent; we make it (or the TLS layer does), watch its input buffer
 * and queue the connection for adoption. Adoption runs before the loop polls
 * again: it learns the evhttp connection (the bufferevent's callback
 * argument), the socket and the peer, counts the connection and refuses it
 * when a limit is reached. From then on every byte read passes the framing
 * checker before evhttp parses it, and a deadline runs while a head or a
 * body is awaited and no request of the connection is being answered.
 * Refusing means: stop evhttp from reading, write the Connect error, close
 * once it is sent (or after a short linger). */
#include "http_guard.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <event2/listener.h>

#include "http_frame.h"
#include "log.h"

#define ADDR_BUCKETS    1024
#define LINGER_MS       1000 /* a refused client that does not read: closed anyway */
#define FD_RESERVE      64   /* descriptors kept for the store, logs and refusals */
#define REFUSE_GRACE    32   /* connections past the limit that still get an answer */
#define OVER_HEAD_MS    1000 /* a connection past a limit: its head is due within this */
#define PAUSE_MIN_MS    50
#define PAUSE_MAX_MS    1000
#define LOG_INTERVAL_US 10000000 /* one line per kind per 10 s while it repeats */

enum refusal {
	REF_TOTAL,   /* too many connections */
	REF_CLIENT,  /* too many from one address */
	REF_DROPPED, /* past the grace: closed without an answer */
	REF_HEAD,    /* head deadline */
	REF_BODY,    /* body deadline */
	REF_FRAMING, /* http_frame refused the request */
	REF_N,
};

static const char *const refusal_names[REF_N] = {
	"max_connections", "max_per_client", "dropped", "header_timeout", "body_timeout", "framing",
};

struct addr_entry {
	struct addr_entry *next;
	int n;
	char key[INET6_ADDRSTRLEN];
};

enum timer_kind { T_NONE, T_HEAD, T_BODY, T_LINGER, T_REFUSE };

struct hconn {
	struct hguard *g;
	struct hconn *prev, *next;
	struct bufferevent *bev;
	struct evhttp_connection *evcon;
	struct addr_entry *addr;
	struct event *timer;
	enum timer_kind tk;
	int fd;
	int busy; /* requests handed to the RPC layer and not yet answered */
	bool adopted, killing;
	bool over;             /* past a limit: only GET /healthz is answered */
	enum refusal over_why; /* REF_TOTAL or REF_CLIENT */
	char over_msg[128];
	struct http_frame fr;
};

/* A message that may repeat many times a second under attack. */
struct rate_log {
	int64_t last_us;
	unsigned long suppressed;
};

struct hguard {
	struct event_base *base;
	struct evhttp *http;
	struct evconnlistener *lev;
	struct evhttp_bound_socket *bound;
	struct hguard_limits lim;
	int port;
	struct bufferevent *(*bevcb)(struct event_base *, void *);
	void *bevcb_arg;
	void (*close_hook)(struct evhttp_connection *, void *);
	void *close_hook_arg;
	struct hconn *pending; /* made, not yet adopted */
	struct hconn *conns;   /* adopted */
	struct hconn **by_fd;  /* adopted, indexed by socket */
	int by_fd_cap;
	struct event *adopt_ev;
	struct event *resume_ev;
	int pause_ms;
	bool paused;
	int n_open;
	struct addr_entry *addrs[ADDR_BUCKETS];
	unsigned long long refused[REF_N];
	unsigned long long accept_pauses;
	struct rate_log rl[REF_N];
	struct rate_log rl_accept;
	struct hguard *next_guard;
};

static int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);
	if (!p) {
		log_error("out of memory");
		abort();
	}
	return p;
}

/* True when this occurrence should be logged; *suppressed gets how many
 * were not since the last one. */
static bool rate_ok(struct rate_log *r, unsigned long *suppressed)
{
	int64_t now = mono_us();
	if (r->last_us && now - r->last_us < LOG_INTERVAL_US) {
		r->suppressed++;
		return false;
	}
	*suppressed = r->suppressed;
	r->suppressed = 0;
	r->last_us = now;
	return true;
}

/* ---- addresses ------------------------------------------------------------ */

static unsigned addr_hash(const char *s)
{
	unsigned h = 2166136261u;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h % ADDR_BUCKETS;
}

static struct addr_entry *addr_get(struct hguard *g, const char *key)
{
	unsigned h = addr_hash(key);
	for (struct addr_entry *a = g->addrs[h]; a; a = a->next)
		if (!strcmp(a->key, key))
			return a;
	struct addr_entry *a = xcalloc(1, sizeof *a);
	snprintf(a->key, sizeof a->key, "%s", key);
	a->next = g->addrs[h];
	g->addrs[h] = a;
	return a;
}

static void addr_put(struct hguard *g, struct addr_entry *a)
{
	if (--a->n > 0)
		return;
	struct addr_entry **pp = &g->addrs[addr_hash(a->key)];
	while (*pp && *pp != a)
		pp = &(*pp)->next;
	if (*pp)
		*pp = a->next;
	free(a);
}

static void peer_key(int fd, char *out, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	snprintf(out, len, "?");
	if (fd < 0 || getpeername(fd, (struct sockaddr *)&ss, &sl))
		return;
	if (ss.ss_family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, out, (socklen_t)len);
	else if (ss.ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, out, (socklen_t)len);
	else if (ss.ss_family == AF_UNIX)
		snprintf(out, len, "unix");
}

/* ---- limits --------------------------------------------------------------- */

int hguard_effective_max(const struct hguard *g)
{
	int max = g->lim.max_connections > 0 ? g->lim.max_connections : 1 << 30;
	struct rlimit rl;
	if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur != RLIM_INFINITY) {
		long room = (long)rl.rlim_cur - FD_RESERVE - REFUSE_GRACE;
		if (room < 8)
			room = 8;
		if (room < max)
			max = (int)room;
	}
	return max;
}

/* ---- connections ---------------------------------------------------------- */

static void timer_cb(evutil_socket_t fd, short what, void *arg);

static void arm(struct hconn *c, enum timer_kind k, int ms)
{
	if (ms <= 0 && k != T_LINGER && k != T_REFUSE) {
		event_del(c->timer);
		c->tk = T_NONE;
		return;
	}
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	c->tk = k;
	event_add(c->timer, &tv);
}

static void disarm(struct hconn *c)
{
	event_del(c->timer);
	c->tk = T_NONE;
}

static void kill_done(struct hconn *c)
{
	/* evhttp runs our close callback, which frees c */
	evhttp_connection_free(c->evcon);
}

static void kill_write_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	kill_done(arg);
}

static void kill_event_cb(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	(void)what;
	kill_done(arg);
}

static const char *reason_phrase(int status)
{
	switch (status) {
	case 400:
		return "Bad Request";
	case 405:
		return "Method Not Allowed";
	case 408:
		return "Request Timeout";
	case 413:
		return "Content Too Large";
	case 414:
		return "URI Too Long";
	case 417:
		return "Expectation Failed";
	case 431:
		return "Request Header Fields Too Large";
	case 501:
		return "Not Implemented";
	case 503:
		return "Service Unavailable";
	case 505:
		return "HTTP Version Not Supported";
	default:
		return "Error";
	}
}

/* Answers with a Connect error (msg is ours: plain ASCII, no quotes) and
 * closes once it is written. Takes the connection away from evhttp, which
 * then never reads it again. */
static void refuse(struct hconn *c, enum refusal why, int status, const char *code, const char *msg)
{
	struct hguard *g = c->g;
	g->refused[why]++;
	unsigned long sup;
	if (rate_ok(&g->rl[why], &sup))
		log_warn("connection refused reason=%s client=%s msg=\"%s\" suppressed=%lu",
		         refusal_names[why], c->addr ? c->addr->key : "?", msg, sup);
	c->killing = true;
	bufferevent_setcb(c->bev, NULL, kill_write_cb, kill_event_cb, c);
	bufferevent_disable(c->bev, EV_READ);
	/* msg may quote a client's bytes (a method): escape for JSON, and keep
	 * it ASCII */
	char esc[600];
	size_t e = 0;
	for (const char *p = msg; *p && e + 7 < sizeof esc; p++) {
		unsigned char ch = (unsigned char)*p;
		if (ch == '"' || ch == '\\') {
			esc[e++] = '\\';
			esc[e++] = (char)ch;
		} else if (ch < 0x20 || ch >= 0x7f) {
			e += (size_t)snprintf(esc + e, sizeof esc - e, "\\u%04x", ch);
		} else {
			esc[e++] = (char)ch;
		}
	}
	esc[e] = '\0';
	char body[700];
	int bl = snprintf(body, sizeof body, "{\"code\":\"%s\",\"message\":\"%s\"}", code, esc);
	if (bl < 0 || (size_t)bl >= sizeof body)
		bl = snprintf(body, sizeof body, "{\"code\":\"%s\"}", code);
	struct evbuffer *out = bufferevent_get_output(c->bev);
	evbuffer_add_printf(out,
	                    "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
	                    "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
	                    status, reason_phrase(status), bl, body);
	bufferevent_enable(c->bev, EV_WRITE);
	arm(c, T_LINGER, LINGER_MS);
}

/* A connection past a limit asked GET /healthz: answered here as the
 * server's own /healthz answers ("ok"), then closed. Liveness probes must
 * see a live server even while its connections are all taken. */
static void answer_healthz(struct hconn *c)
{
	c->killing = true;
	bufferevent_setcb(c->bev, NULL, kill_write_cb, kill_event_cb, c);
	bufferevent_disable(c->bev, EV_READ);
	evbuffer_add_printf(bufferevent_get_output(c->bev),
	                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
	                    "Content-Length: 3\r\nConnection: close\r\n\r\nok\n");
	bufferevent_enable(c->bev, EV_WRITE);
	arm(c, T_LINGER, LINGER_MS);
}

/* Bytes of a connection past a limit: the framing checker (input_cb) has
 * seen them; evhttp never does. */
static void over_read_cb(struct bufferevent *bev, void *arg)
{
	(void)arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	evbuffer_drain(in, evbuffer_get_length(in));
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct hconn *c = arg;
	(void)fd;
	(void)what;
	enum timer_kind k = c->tk;
	c->tk = T_NONE;
	if (k == T_LINGER) {
		kill_done(c);
		return;
	}
	if (k == T_REFUSE) {
		if (!c->killing)
			refuse(c, REF_FRAMING, c->fr.err_status, c->fr.err_code, c->fr.err_msg);
		return;
	}
	if (c->killing || c->busy)
		return; /* the answer in progress re-arms it when sent */
	if (c->over) {
		refuse(c, c->over_why, 503, "unavailable", c->over_msg);
		return;
	}
	char msg[160];
	if (k == T_HEAD) {
		snprintf(msg, sizeof msg, "request headers not received within %d ms",
		         c->g->lim.header_timeout_ms);
		refuse(c, REF_HEAD, 408, "deadline_exceeded", msg);
	} else if (k == T_BODY) {
		snprintf(msg, sizeof msg, "request body not received within %d ms",
		         c->g->lim.body_timeout_ms);
		refuse(c, REF_BODY, 408, "deadline_exceeded", msg);
	}
}

/* Re-arms the deadline the framing state calls for (nothing while a
 * request of this connection is being answered). */
static void arm_for_state(struct hconn *c)
{
	if (c->killing)
		return;
	if (c->busy || !hf_in_request(&c->fr)) {
		if (c->tk == T_HEAD || c->tk == T_BODY)
			disarm(c);
		return;
	}
	if (hf_in_body(&c->fr)) {
		if (c->tk != T_BODY)
			arm(c, T_BODY, c->g->lim.body_timeout_ms);
	} else if (c->tk != T_HEAD) {
		arm(c, T_HEAD, c->g->lim.header_timeout_ms);
	}
}

/* Every change to the input buffer; new bytes pass the framing checker
 * before evhttp's read callback sees them. */
static void input_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct hconn *c = arg;
	if (!info->n_added || c->killing || !c->adopted)
		return;
	size_t len = evbuffer_get_length(buf);
	if (info->n_added > len)
		return;
	struct evbuffer_ptr pos;
	if (evbuffer_ptr_set(buf, &pos, len - info->n_added, EVBUFFER_PTR_SET))
		return;
	struct evbuffer_iovec v[8];
	size_t left = info->n_added;
	while (left) {
		int nv = evbuffer_peek(buf, (ev_ssize_t)left, &pos, v, 8);
		if (nv <= 0)
			break;
		size_t got = 0;
		for (int i = 0; i < nv && i < 8 && left; i++) {
			size_t vl = v[i].iov_len < left ? v[i].iov_len : left;
			const unsigned char *p = v[i].iov_base;
			size_t off = 0;
			while (off < vl) {
				unsigned ev = 0;
				off += hf_feed(&c->fr, p + off, vl - off, &ev);
				if (ev & HF_EV_ERROR) {
					/* A request already handed over is answered
					 * first: the refusal waits for it (request_done_cb),
					 * and evhttp must never parse what was refused. */
					if (c->busy)
						evbuffer_drain(buf, evbuffer_get_length(buf));
					else
						refuse(c, REF_FRAMING, c->fr.err_status,
						       c->fr.err_code, c->fr.err_msg);
					return;
				}
				if (c->over && (ev & HF_EV_HEAD)) {
					if (c->fr.healthz)
						answer_healthz(c);
					else
						refuse(c, c->over_why, 503, "unavailable",
						       c->over_msg);
					return;
				}
				if (!c->over && (ev & (HF_EV_START | HF_EV_HEAD | HF_EV_DONE)))
					arm_for_state(c);
				if (ev == 0 && off < vl)
					break; /* cannot happen: hf_feed takes all or reports */
			}
			got += vl;
			left -= vl;
		}
		if (evbuffer_ptr_set(buf, &pos, got, EVBUFFER_PTR_ADD))
			break;
	}
}

static void close_cb(struct evhttp_connection *evcon, void *arg)
{
	struct hconn *c = arg;
	struct hguard *g = c->g;
	if (g->close_hook)
		g->close_hook(evcon, g->close_hook_arg);
	evbuffer_remove_cb(bufferevent_get_input(c->bev), input_cb, c);
	event_free(c->timer);
	if (c->prev)
		c->prev->next = c->next;
	else
		g->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	if (c->fd >= 0 && c->fd < g->by_fd_cap && g->by_fd[c->fd] == c)
		g->by_fd[c->fd] = NULL;
	if (c->addr)
		addr_put(g, c->addr);
	g->n_open--;
	free(c);
}

static void adopt(struct hguard *g, struct hconn *c)
{
	void *cbarg = NULL;
	bufferevent_getcb(c->bev, NULL, NULL, NULL, &cbarg);
	c->evcon = cbarg;
	c->fd = (int)bufferevent_getfd(c->bev);
	if (!c->evcon) {
		/* evhttp gave up on it before adoption (it frees the bufferevent) */
		free(c);
		return;
	}
	char key[INET6_ADDRSTRLEN];
	peer_key(c->fd, key, sizeof key);
	c->addr = addr_get(g, key);
	c->addr->n++;
	c->adopted = true;
	g->n_open++;
	c->next = g->conns;
	if (g->conns)
		g->conns->prev = c;
	g->conns = c;
	if (c->fd >= 0) {
		if (c->fd >= g->by_fd_cap) {
			int cap = g->by_fd_cap ? g->by_fd_cap : 256;
			while (cap <= c->fd)
				cap *= 2;
			struct hconn **n = realloc(g->by_fd, (size_t)cap * sizeof *n);
			if (!n) {
				log_error("out of memory");
				abort();
			}
			memset(n + g->by_fd_cap, 0, (size_t)(cap - g->by_fd_cap) * sizeof *n);
			g->by_fd = n;
			g->by_fd_cap = cap;
		}
		g->by_fd[c->fd] = c;
	}
	evhttp_connection_set_closecb(c->evcon, close_cb, c);
	c->timer = evtimer_new(g->base, timer_cb, c);
	if (!c->timer) {
		log_error("out of memory");
		abort();
	}
	int max = hguard_effective_max(g);
	if (g->n_open > max + REFUSE_GRACE) {
		g->refused[REF_DROPPED]++;
		unsigned long sup;
		if (rate_ok(&g->rl[REF_DROPPED], &sup))
			log_warn("connection dropped reason=over_limit open=%d max=%d client=%s "
			         "suppressed=%lu",
			         g->n_open, max, key, sup);
		evhttp_connection_free(c->evcon);
		return;
	}
	/* Past a limit (within the grace): evhttp never reads it; its first
	 * head is read here, briefly, and answered with the refusal, except
	 * GET /healthz, which is answered. */
	if (g->n_open > max) {
		c->over_why = REF_TOTAL;
		snprintf(c->over_msg, sizeof c->over_msg,
		         "too many connections (%d); try again later", max);
	} else if (g->lim.max_per_client > 0 && c->addr->n > g->lim.max_per_client) {
		c->over_why = REF_CLIENT;
		snprintf(c->over_msg, sizeof c->over_msg,
		         "too many connections from this address (%d); try again later",
		         g->lim.max_per_client);
	}
	if (c->over_msg[0]) {
		c->over = true;
		bufferevent_setcb(c->bev, over_read_cb, NULL, kill_event_cb, c);
		bufferevent_enable(c->bev, EV_READ);
		int ms = g->lim.header_timeout_ms > 0 && g->lim.header_timeout_ms < OVER_HEAD_MS
		             ? g->lim.header_timeout_ms
		             : OVER_HEAD_MS;
		arm(c, T_HEAD, ms);
		return;
	}
	/* the first request's head is due within the header deadline of the
	 * accept (a TLS handshake counts against it too) */
	arm(c, T_HEAD, g->lim.header_timeout_ms);
}

static void adopt_cb(evutil_socket_t fd, short what, void *arg)
{
	struct hguard *g = arg;
	(void)fd;
	(void)what;
	while (g->pending) {
		struct hconn *c = g->pending;
		g->pending = c->next;
		c->next = NULL;
		adopt(g, c);
	}
}

static struct bufferevent *bev_cb(struct event_base *base, void *arg)
{
	struct hguard *g = arg;
	struct bufferevent *bev = g->bevcb
	                              ? g->bevcb(base, g->bevcb_arg)
	                              : bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (!bev)
		return NULL;
	struct hconn *c = xcalloc(1, sizeof *c);
	c->g = g;
	c->bev = bev;
	c->fd = -1;
	hf_init(&c->fr, g->lim.max_head_bytes, g->lim.max_body_bytes);
	if (!evbuffer_add_cb(bufferevent_get_input(bev), input_cb, c)) {
		log_error("out of memory");
		abort();
	}
	c->next = g->pending;
	g->pending = c;
	event_active(g->adopt_ev, EV_TIMEOUT, 0);
	return bev;
}

/* ---- answers -------------------------------------------------------------- */

static struct hconn *conn_of(struct hguard *g, struct evhttp_request *req)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
	int fd = bev ? (int)bufferevent_getfd(bev) : -1;
	if (fd < 0 || fd >= g->by_fd_cap || !g->by_fd[fd] || g->by_fd[fd]->evcon != evcon)
		return NULL;
	return g->by_fd[fd];
}

static void request_done_cb(struct evhttp_request *req, void *arg)
{
	struct hguard *g = arg;
	struct hconn *c = conn_of(g, req);
	if (!c || c->busy <= 0)
		return;
	c->busy--;
	if (c->busy)
		return;
	if (c->fr.st == HF_FAILED && !c->killing) {
		/* A pipelined request was refused while this one ran. evhttp is
		 * still finishing this answer (it resets the connection's
		 * callbacks next), so the refusal goes out on the next turn. */
		arm(c, T_REFUSE, 0);
		return;
	}
	arm_for_state(c);
}

void hguard_request_begin(struct hguard *g, struct evhttp_request *req)
{
	struct hconn *c = conn_of(g, req);
	if (!c)
		return;
	c->busy++;
	if (c->tk == T_HEAD || c->tk == T_BODY)
		disarm(c);
	evhttp_request_set_on_complete_cb(req, request_done_cb, g);
}

/* ---- accepting ------------------------------------------------------------ */

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct hguard *g = arg;
	(void)fd;
	(void)what;
	if (g->paused && g->lev) {
		g->paused = false;
		evconnlistener_enable(g->lev);
	}
}

/* accept() failed in a way that retrying at once would only repeat (no
 * descriptors, no memory): stop listening for a moment instead of spinning,
 * backing off while it lasts. Connections wait in the kernel's backlog. */
/* The listener's callback argument is evhttp's, so the error callback finds
 * its guard here. */
static struct hguard *all_guards;

static void accept_error_cb(struct evconnlistener *lev, void *arg)
{
	int err = EVUTIL_SOCKET_ERROR();
	(void)arg;
	struct hguard *g = all_guards;
	while (g && g->lev != lev)
		g = g->next_guard;
	if (!g) {
		evconnlistener_disable(lev);
		return;
	}
	g->accept_pauses++;
	if (g->paused)
		g->pause_ms = g->pause_ms * 2 > PAUSE_MAX_MS ? PAUSE_MAX_MS : g->pause_ms * 2;
	else
		g->pause_ms = PAUSE_MIN_MS;
	unsigned long sup;
	if (rate_ok(&g->rl_accept, &sup))
		log_warn("accept paused err=\"%s\" pause_ms=%d open=%d suppressed=%lu",
		         strerror(err), g->pause_ms, g->n_open, sup);
	g->paused = true;
	evconnlistener_disable(g->lev);
	struct timeval tv = { g->pause_ms / 1000, (g->pause_ms % 1000) * 1000 };
	event_add(g->resume_ev, &tv);
}

struct hguard *hguard_new(struct event_base *base, struct evhttp *http, const char *host, int port,
                          const struct hguard_limits *l, char *err, size_t err_len)
{
	struct hguard *g = xcalloc(1, sizeof *g);
	g->base = base;
	g->http = http;
	g->lim = *l;
	g->adopt_ev = event_new(base, -1, 0, adopt_cb, g);
	g->resume_ev = evtimer_new(base, resume_cb, g);
	if (!g->adopt_ev || !g->resume_ev) {
		snprintf(err, err_len, "out of memory");
		goto fail;
	}
	struct evutil_addrinfo hints, *ai = NULL;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = EVUTIL_AI_PASSIVE | EVUTIL_AI_NUMERICHOST;
	char ps[16];
	snprintf(ps, sizeof ps, "%d", port);
	int gai = evutil_getaddrinfo(host, ps, &hints, &ai);
	if (gai) {
		snprintf(err, err_len, "cannot listen on %s:%d: %s", host, port,
		         evutil_gai_strerror(gai));
		goto fail;
	}
	g->lev = evconnlistener_new_bind(
	    base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, -1,
	    ai->ai_addr, (int)ai->ai_addrlen);
	evutil_freeaddrinfo(ai);
	if (!g->lev) {
		snprintf(err, err_len, "cannot listen on %s:%d: %s", host, port, strerror(errno));
		goto fail;
	}
	g->bound = evhttp_bind_listener(http, g->lev);
	if (!g->bound) {
		evconnlistener_free(g->lev);
		g->lev = NULL;
		snprintf(err, err_len, "out of memory");
		goto fail;
	}
	/* TLS writes evhttp's headers and body as separate records: without
	 * TCP_NODELAY the second waits for a delayed ACK. Accepted sockets
	 * inherit it. */
	int one = 1;
	setsockopt(evconnlistener_get_fd(g->lev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	/* after evhttp_bind_listener, which sets only the accept callback */
	evconnlistener_set_error_cb(g->lev, accept_error_cb);
	g->next_guard = all_guards;
	all_guards = g;
	evhttp_set_bevcb(http, bev_cb, g);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	if (getsockname(evconnlistener_get_fd(g->lev), (struct sockaddr *)&ss, &sl)) {
		snprintf(err, err_len, "getsockname: %s", strerror(errno));
		goto fail;
	}
	if (ss.ss_family == AF_INET)
		g->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	else if (ss.ss_family == AF_INET6)
		g->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	else
		g->port = port;
	return g;
fail:
	if (g->bound)
		evhttp_del_accept_socket(http, g->bound);
	if (g->adopt_ev)
		event_free(g->adopt_ev);
	if (g->resume_ev)
		event_free(g->resume_ev);
	free(g);
	return NULL;
}

int hguard_port(const struct hguard *g)
{
	return g->port;
}

void hguard_set_limits(struct hguard *g, const struct hguard_limits *l)
{
	g->lim = *l;
	/* connections keep the framing limits they started with */
}

void hguard_set_bevcb(struct hguard *g, struct bufferevent *(*fn)(struct event_base *, void *),
                      void *arg)
{
	g->bevcb = fn;
	g->bevcb_arg = arg;
}

void hguard_set_close_hook(struct hguard *g, void (*fn)(struct evhttp_connection *, void *),
                           void *arg)
{
	g->close_hook = fn;
	g->close_hook_arg = arg;
}

void hguard_stop_accepting(struct hguard *g)
{
	if (g->bound) {
		evhttp_del_accept_socket(g->http, g->bound); /* frees the listener */
		g->bound = NULL;
		g->lev = NULL;
	}
	event_del(g->resume_ev);
	g->paused = false;
}

void hguard_metrics(const struct hguard *g, struct evbuffer *buf)
{
	evbuffer_add_printf(buf,
	                    "# HELP gpumatch_http_connections_open Client connections open "
	                    "(counted from accept).\n"
	                    "# TYPE gpumatch_http_connections_open gauge\n"
	                    "gpumatch_http_connections_open %d\n"
	                    "# HELP gpumatch_http_connections_limit The connection limit in force "
	                    "(max_connections capped by the descriptor limit).\n"
	                    "# TYPE gpumatch_http_connections_limit gauge\n"
	                    "gpumatch_http_connections_limit %d\n"
	                    "# HELP gpumatch_http_refused_total Connections answered with an "
	                    "error and closed, by reason.\n"
	                    "# TYPE gpumatch_http_refused_total counter\n",
	                    g->n_open, hguard_effective_max(g));
	for (int i = 0; i < REF_N; i++)
		evbuffer_add_printf(buf, "gpumatch_http_refused_total{reason=\"%s\"} %llu\n",
		                    refusal_names[i], g->refused[i]);
	evbuffer_add_printf(buf,
	                    "# HELP gpumatch_http_accept_pauses_total Times accepting paused "
	                    "because accept() failed (descriptors or memory ran out).\n"
	                    "# TYPE gpumatch_http_accept_pauses_total counter\n"
	                    "gpumatch_http_accept_pauses_total %llu\n",
	                    g->accept_pauses);
}

void hguard_free(struct hguard *g)
{
	if (!g)
		return;
	for (struct hguard **pp = &all_guards; *pp; pp = &(*pp)->next_guard)
		if (*pp == g) {
			*pp = g->next_guard;
			break;
		}
	/* evhttp_free has run: every adopted connection's close callback too */
	while (g->pending) {
		struct hconn *c = g->pending;
		g->pending = c->next;
		free(c);
	}
	while (g->conns) {
		struct hconn *c = g->conns;
		g->conns = c->next;
		event_free(c->timer);
		free(c);
	}
	for (int i = 0; i < ADDR_BUCKETS; i++)
		while (g->addrs[i]) {
			struct addr_entry *a = g->addrs[i];
			g->addrs[i] = a->next;
			free(a);
		}
	event_free(g->adopt_ev);
	event_free(g->resume_ev);
	free(g->by_fd);
	free(g);
}
