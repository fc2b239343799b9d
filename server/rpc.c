/* rpc.c — the Connect protocol's unary RPCs over evhttp: routing, bearer
 * authorization against each method's roles, binary/JSON codecs, deadlines,
 * client-gone detection, abort hooks and per-method metrics. */
#include "rpc.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "http_guard.h"
#include "log.h"
#include "pbcheck.h"
#include "pbjson.h"

#define MAX_HEADERS_BYTES (64 * 1024) /* evhttp's own backstop */
#define GUARD_HEAD_BYTES  (32 * 1024) /* what the guard lets through */
#define MAX_TOKEN_BYTES   1024
#define MSG_BYTES         1024

enum codec { CODEC_PROTO, CODEC_JSON };

enum abort_why {
	ABORT_DEADLINE, /* answered deadline_exceeded */
	ABORT_GONE,     /* the client closed its connection: we drop ours too */
	ABORT_DETACH,   /* evhttp dropped (or is about to drop) the request */
};

/* Latency histogram upper bounds in seconds; one more bucket for +Inf. */
static const double hist_le_s[] = { 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02,
	                            0.05,   0.1,   0.25,  0.5,   1.0 };
#define HIST_N (sizeof hist_le_s / sizeof hist_le_s[0])

struct method_stats {
	uint64_t by_code[RPC_CODE_COUNT];
	uint64_t bucket[HIST_N + 1]; /* not cumulative; last is +Inf */
	uint64_t count;
	double sum_s;
};

struct get_route {
	char *path;
	rpc_get_fn fn;
	void *arg;
	struct get_route *next;
};

/* One per open connection that has sent a request, indexed by its socket. */
struct conn_slot {
	struct evhttp_connection *evcon;
	struct rpc_call *call; /* the call it is waiting on, if any */
};

/* A call's lifetime. Three holders keep it: the HTTP side (until the answer
 * is sent, or the call is aborted by its deadline, the client leaving or
 * the server's end), the auth fn (until it calls done, even after an
 * abort) and the handler (from its start until it answers, or until its
 * abort hook returns). When none is left the call goes on a list freed
 * after the loop turn (or at once after rpc_server_free, whose calls live
 * on as orphans until their holders let go). So after an abort:
 *   - with a hook: the hook runs and may still look at the call (an answer
 *     there is a no-op); once it returns the handler must drop the call;
 *   - without one: the call stays valid and the handler's eventual answer
 *     is a no-op that releases it (one never answered is never freed). */
/* Binary request bodies unpack into a per-call arena: protobuf-c makes one
 * allocation per message, string and array, and a SubmitJob has dozens;
 * the arena takes them from blocks that are kept for the next call and
 * frees them all at once when the call ends. */
#define ARENA_BLOCK_BYTES 8192
#define ARENA_CACHE_MAX   256

struct arena_block {
	struct arena_block *next;
	size_t cap, used; /* bytes of data[] */
	max_align_t data[];
};

struct arena {
	ProtobufCAllocator pb; /* allocator_data points back here */
	struct arena_block *blocks;
};

static struct arena_block *arena_cache;
static int arena_cached;

static void *arena_alloc(void *data, size_t size)
{
	struct arena *a = data;
	size = (size + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
	struct arena_block *b = a->blocks;
	if (!b || b->cap - b->used < size) {
		if (size <= ARENA_BLOCK_BYTES && arena_cache) {
			b = arena_cache;
			arena_cache = b->next;
			arena_cached--;
		} else {
			size_t cap = size > ARENA_BLOCK_BYTES ? size : ARENA_BLOCK_BYTES;
			b = malloc(sizeof *b + cap);
			if (!b)
				return NULL;
			b->cap = cap;
		}
		b->used = 0;
		b->next = a->blocks;
		a->blocks = b;
	}
	void *p = (char *)b->data + b->used;
	b->used += size;
	return p;
}

static void arena_free_one(void *data, void *p)
{
	(void)data;
	(void)p; /* everything goes at once, in arena_release */
}

static void arena_init(struct arena *a)
{
	a->pb.alloc = arena_alloc;
	a->pb.free = arena_free_one;
	a->pb.allocator_data = a;
	a->blocks = NULL;
}

static void arena_release(struct arena *a)
{
	while (a->blocks) {
		struct arena_block *b = a->blocks;
		a->blocks = b->next;
		if (b->cap == ARENA_BLOCK_BYTES && arena_cached < ARENA_CACHE_MAX) {
			b->next = arena_cache;
			arena_cache = b;
			arena_cached++;
		} else {
			free(b);
		}
	}
}

struct rpc_call {
	struct rpc_server *srv; /* NULL once the server is freed (orphan) */
	struct rpc_call *prev, *next;
	struct evhttp_request *req; /* while the HTTP side is open */
	int fd;                     /* the connection's socket, or -1 */
	const struct rpc_method *m;
	size_t mi; /* index of m in srv->methods */
	enum codec codec;
	ProtobufCMessage *msg; /* decoded request */
	struct arena arena;    /* msg's memory when it came as binary */
	bool in_arena;
	struct principal who;
	void *data;
	void (*abort_fn)(struct rpc_call *call, void *arg);
	void *abort_arg;
	struct event *deadline_ev;
	struct event *watch_ev;
	int64_t start_us;           /* monotonic */
	int64_t client_deadline_us; /* monotonic; 0 = the client set none */
	char *token;                /* owned while the auth fn runs */
	/* The call is freed when none of these three holds it. */
	bool http_open;   /* the request waits for an answer */
	bool auth_ref;    /* the auth fn has not called done yet */
	bool handler_ref; /* the handler has neither answered nor been aborted */
	bool released;
};

struct rpc_server {
	struct event_base *base;
	struct evhttp *http;
	struct hguard *guard;
	const struct rpc_method *methods;
	size_t n_methods;
	struct method_stats *stats; /* n_methods + 1: the last counts unknown paths */
	struct rpc_limits limits;
	rpc_auth_fn auth;
	void *auth_arg;
	rpc_peer_check_fn peer_check;
	void *peer_arg;
	int port;
	bool stopped;
	struct get_route *gets;
	struct rpc_call *calls; /* live calls, doubly linked */
	struct rpc_call *reap;  /* released calls, freed after this loop turn */
	struct event *reap_ev;
	size_t inflight;
	struct conn_slot *conns; /* indexed by fd */
	int conns_cap;
	int n_conns;
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

/* ---- codes ---------------------------------------------------------------- */

static const struct {
	const char *name;
	int status;
} code_table[RPC_CODE_COUNT] = {
	[RPC_OK] = { "ok", 200 },
	[RPC_CANCELED] = { "canceled", 499 },
	[RPC_UNKNOWN] = { "unknown", 500 },
	[RPC_INVALID_ARGUMENT] = { "invalid_argument", 400 },
	[RPC_DEADLINE_EXCEEDED] = { "deadline_exceeded", 504 },
	[RPC_NOT_FOUND] = { "not_found", 404 },
	[RPC_ALREADY_EXISTS] = { "already_exists", 409 },
	[RPC_PERMISSION_DENIED] = { "permission_denied", 403 },
	[RPC_RESOURCE_EXHAUSTED] = { "resource_exhausted", 429 },
	[RPC_FAILED_PRECONDITION] = { "failed_precondition", 400 },
	[RPC_ABORTED] = { "aborted", 409 },
	[RPC_OUT_OF_RANGE] = { "out_of_range", 400 },
	[RPC_UNIMPLEMENTED] = { "unimplemented", 501 },
	[RPC_INTERNAL] = { "internal", 500 },
	[RPC_UNAVAILABLE] = { "unavailable", 503 },
	[RPC_DATA_LOSS] = { "data_loss", 500 },
	[RPC_UNAUTHENTICATED] = { "unauthenticated", 401 },
};

const char *rpc_code_name(enum rpc_code c)
{
	if ((unsigned)c >= RPC_CODE_COUNT)
		return "unknown";
	return code_table[c].name;
}

int rpc_code_http_status(enum rpc_code c)
{
	if ((unsigned)c >= RPC_CODE_COUNT)
		return 500;
	return code_table[c].status;
}

static const char *status_reason(int status)
{
	switch (status) {
	case 200:
		return "OK";
	case 400:
		return "Bad Request";
	case 401:
		return "Unauthorized";
	case 403:
		return "Forbidden";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	case 409:
		return "Conflict";
	case 413:
		return "Payload Too Large";
	case 415:
		return "Unsupported Media Type";
	case 429:
		return "Too Many Requests";
	case 499:
		return "Client Closed Request";
	case 501:
		return "Not Implemented";
	case 503:
		return "Service Unavailable";
	case 504:
		return "Gateway Timeout";
	default:
		return "Internal Server Error";
	}
}

static const char *role_name(unsigned role)
{
	switch (role) {
	case ROLE_TENANT:
		return "tenant";
	case ROLE_OPERATOR:
		return "operator";
	case ROLE_ADMIN:
		return "admin";
	default:
		return "unknown-role";
	}
}

static const char *http_method_name(enum evhttp_cmd_type t)
{
	switch (t) {
	case EVHTTP_REQ_GET:
		return "GET";
	case EVHTTP_REQ_POST:
		return "POST";
	case EVHTTP_REQ_HEAD:
		return "HEAD";
	case EVHTTP_REQ_PUT:
		return "PUT";
	case EVHTTP_REQ_DELETE:
		return "DELETE";
	case EVHTTP_REQ_OPTIONS:
		return "OPTIONS";
	case EVHTTP_REQ_TRACE:
		return "TRACE";
	case EVHTTP_REQ_CONNECT:
		return "CONNECT";
	case EVHTTP_REQ_PATCH:
		return "PATCH";
	default:
		return "?";
	}
}

/* ---- JSON error bodies ---------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p, or 0. Stops at a NUL. */
static size_t utf8_seq_len(const unsigned char *p)
{
	unsigned c = p[0];
	size_t n;
	uint32_t cp;
	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
		cp = c & 0x1f;
	} else if ((c & 0xf0) == 0xe0) {
		n = 3;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	if (n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff)))
		return 0;
	if (n == 4 && (cp < 0x10000 || cp > 0x10ffff))
		return 0;
	return n;
}

/* Messages may quote client input, so anything that is not valid UTF-8
 * becomes U+FFFD rather than an invalid JSON document. */
static void json_escape(struct evbuffer *b, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	while (*p) {
		if (*p == '"' || *p == '\\') {
			char e[2] = { '\\', (char)*p };
			evbuffer_add(b, e, 2);
			p++;
		} else if (*p < 0x20) {
			evbuffer_add_printf(b, "\\u%04x", *p);
			p++;
		} else if (*p < 0x80) {
			evbuffer_add(b, p, 1);
			p++;
		} else {
			size_t n = utf8_seq_len(p);
			if (n) {
				evbuffer_add(b, p, n);
				p += n;
			} else {
				evbuffer_add(b, "\\ufffd", 6);
				p++;
			}
		}
	}
}

static void error_body(struct evbuffer *b, enum rpc_code code, const char *msg)
{
	evbuffer_add_printf(b, "{\"code\":\"%s\"", rpc_code_name(code));
	if (msg && *msg) {
		evbuffer_add(b, ",\"message\":\"", 12);
		json_escape(b, msg);
		evbuffer_add(b, "\"", 1);
	}
	evbuffer_add(b, "}", 1);
}

/* ---- metrics -------------------------------------------------------------- */

#define NO_STATS SIZE_MAX

static void stats_note(struct rpc_server *s, size_t mi, enum rpc_code code, int64_t dur_us)
{
	if (!s || mi == NO_STATS || mi > s->n_methods)
		return;
	struct method_stats *st = &s->stats[mi];
	double sec = dur_us > 0 ? (double)dur_us / 1e6 : 0.0;
	size_t b = 0;
	while (b < HIST_N && sec > hist_le_s[b])
		b++;
	st->by_code[code]++;
	st->bucket[b]++;
	st->count++;
	st->sum_s += sec;
}

static const char *stats_label(const struct rpc_server *s, size_t mi)
{
	return mi < s->n_methods ? s->methods[mi].path : "unknown";
}

void rpc_server_metrics(const struct rpc_server *s, struct evbuffer *buf)
{
	evbuffer_add_printf(buf, "# HELP gpumatch_rpc_requests_total RPC calls answered or "
	                         "aborted, by method and Connect code.\n"
	                         "# TYPE gpumatch_rpc_requests_total counter\n");
	for (size_t i = 0; i <= s->n_methods; i++)
		for (int c = 0; c < RPC_CODE_COUNT; c++)
			if (s->stats[i].by_code[c])
				evbuffer_add_printf(
				    buf,
				    "gpumatch_rpc_requests_total{method=\"%s\",code=\"%s\"} %llu\n",
				    stats_label(s, i), rpc_code_name((enum rpc_code)c),
				    (unsigned long long)s->stats[i].by_code[c]);
	evbuffer_add_printf(buf, "# HELP gpumatch_rpc_duration_seconds Time from a request's "
	                         "arrival to its answer or abort, by method.\n"
	                         "# TYPE gpumatch_rpc_duration_seconds histogram\n");
	for (size_t i = 0; i <= s->n_methods; i++) {
		const struct method_stats *st = &s->stats[i];
		if (!st->count)
			continue;
		const char *m = stats_label(s, i);
		uint64_t cum = 0;
		for (size_t b = 0; b < HIST_N; b++) {
			cum += st->bucket[b];
			evbuffer_add_printf(
			    buf,
			    "gpumatch_rpc_duration_seconds_bucket{method=\"%s\",le=\"%g\"} "
			    "%llu\n",
			    m, hist_le_s[b], (unsigned long long)cum);
		}
		evbuffer_add_printf(
		    buf,
		    "gpumatch_rpc_duration_seconds_bucket{method=\"%s\",le=\"+Inf\"} %llu\n"
		    "gpumatch_rpc_duration_seconds_sum{method=\"%s\"} %.6f\n"
		    "gpumatch_rpc_duration_seconds_count{method=\"%s\"} %llu\n",
		    m, (unsigned long long)st->count, m, st->sum_s, m,
		    (unsigned long long)st->count);
	}
	evbuffer_add_printf(buf,
	                    "# HELP gpumatch_rpc_inflight RPC calls waiting for an answer.\n"
	                    "# TYPE gpumatch_rpc_inflight gauge\n"
	                    "gpumatch_rpc_inflight %zu\n"
	                    "# HELP gpumatch_rpc_connections Open client connections that have "
	                    "sent a request.\n"
	                    "# TYPE gpumatch_rpc_connections gauge\n"
	                    "gpumatch_rpc_connections %d\n",
	                    s->inflight, s->n_conns);
	hguard_metrics(s->guard, buf);
}

void rpc_server_set_bevcb(struct rpc_server *s,
                          struct bufferevent *(*fn)(struct event_base *, void *), void *arg)
{
	hguard_set_bevcb(s->guard, fn, arg);
}

/* ---- connections ---------------------------------------------------------- */

static int conn_fd(struct evhttp_connection *evcon)
{
	struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
	return bev ? (int)bufferevent_getfd(bev) : -1;
}

static struct conn_slot *conn_find(struct rpc_server *s, struct evhttp_connection *evcon, int fd)
{
	if (fd >= 0 && fd < s->conns_cap && s->conns[fd].evcon == evcon)
		return &s->conns[fd];
	for (int i = 0; i < s->conns_cap; i++)
		if (s->conns[i].evcon == evcon)
			return &s->conns[i];
	return NULL;
}

static void call_abort(struct rpc_call *c, enum abort_why why);

/* evhttp calls this just before it frees a connection we track. */
static void conn_close_cb(struct evhttp_connection *evcon, void *arg)
{
	struct rpc_server *s = arg;
	struct conn_slot *slot = conn_find(s, evcon, conn_fd(evcon));
	if (!slot)
		return;
	struct rpc_call *c = slot->call;
	slot->evcon = NULL;
	slot->call = NULL;
	s->n_conns--;
	if (c && c->http_open) {
		/* Not reached through our own paths (they detach the call first);
		 * kept so that a connection evhttp drops on its own never leaves a
		 * call pointing at a freed request. A request evhttp detached
		 * from the connection is ours to free; one still attached is
		 * freed with the connection. */
		struct evhttp_request *req = c->req;
		bool detached = evhttp_request_get_connection(req) == NULL;
		call_abort(c, ABORT_DETACH);
		if (detached)
			evhttp_request_free(req);
	}
}

/* Tracks the connection on its first request (the guard counts and limits
 * connections from accept; this table only finds a connection's call when
 * it closes). */
static bool conn_admit(struct rpc_server *s, struct evhttp_connection *evcon, int fd)
{
	if (fd < 0)
		return true;
	if (fd < s->conns_cap && s->conns[fd].evcon == evcon)
		return true;
	if (fd >= s->conns_cap) {
		int cap = s->conns_cap ? s->conns_cap : 64;
		while (cap <= fd)
			cap *= 2;
		struct conn_slot *n = realloc(s->conns, (size_t)cap * sizeof *n);
		if (!n) {
			log_error("out of memory");
			abort();
		}
		memset(n + s->conns_cap, 0, (size_t)(cap - s->conns_cap) * sizeof *n);
		s->conns = n;
		s->conns_cap = cap;
	}
	if (s->conns[fd].evcon) {
		/* a stale slot: that connection's close went unseen */
		s->conns[fd].evcon = NULL;
		s->conns[fd].call = NULL;
		s->n_conns--;
	}
	s->conns[fd].evcon = evcon;
	s->conns[fd].call = NULL;
	s->n_conns++;
	return true;
}

/* ---- sending -------------------------------------------------------------- */

static void send_http(struct rpc_server *s, struct evhttp_request *req, int status,
                      const char *ctype, struct evbuffer *body)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	if (ctype)
		evhttp_add_header(h, "Content-Type", ctype);
	/* while draining, send keep-alive clients elsewhere */
	if (s && s->stopped)
		evhttp_add_header(h, "Connection", "close");
	evhttp_send_reply(req, status, status_reason(status), body);
}

/* An error for a request that never became a call. hname/hval: one extra
 * header, or NULL. */
static void send_raw_error(struct rpc_server *s, struct evhttp_request *req, size_t mi,
                           int64_t start_us, enum rpc_code code, int status, const char *hname,
                           const char *hval, const char *fmt, ...)
    __attribute__((format(printf, 9, 10)));

static void send_raw_error(struct rpc_server *s, struct evhttp_request *req, size_t mi,
                           int64_t start_us, enum rpc_code code, int status, const char *hname,
                           const char *hval, const char *fmt, ...)
{
	char msg[MSG_BYTES];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	stats_note(s, mi, code, mono_us() - start_us);
	struct evbuffer *b = evbuffer_new();
	if (!b) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	error_body(b, code, msg);
	if (hname)
		evhttp_add_header(evhttp_request_get_output_headers(req), hname, hval);
	send_http(s, req, status, "application/json", b);
	evbuffer_free(b);
	log_debug("rpc refused uri=%s code=%s msg=\"%s\"", evhttp_request_get_uri(req),
	          rpc_code_name(code), msg);
}

/* ---- calls ---------------------------------------------------------------- */

static void call_free(struct rpc_call *c)
{
	if (c->msg && !c->in_arena)
		protobuf_c_message_free_unpacked(c->msg, NULL);
	arena_release(&c->arena);
	if (c->deadline_ev)
		event_free(c->deadline_ev);
	if (c->watch_ev)
		event_free(c->watch_ev);
	free(c->token);
	free(c);
}

static void call_unlink(struct rpc_server *s, struct rpc_call *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		s->calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->prev = c->next = NULL;
}

/* Frees the call once nothing holds it: never at once while the server
 * lives (a caller up the stack may still look at it this loop turn). */
static void call_maybe_release(struct rpc_call *c)
{
	if (c->http_open || c->auth_ref || c->handler_ref || c->released)
		return;
	c->released = true;
	struct rpc_server *s = c->srv;
	if (!s) {
		call_free(c);
		return;
	}
	call_unlink(s, c);
	c->next = s->reap;
	s->reap = c;
	event_active(s->reap_ev, EV_TIMEOUT, 0);
}

static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
	struct rpc_server *s = arg;
	(void)fd;
	(void)what;
	while (s->reap) {
		struct rpc_call *c = s->reap;
		s->reap = c->next;
		call_free(c);
	}
}

/* Ends the HTTP side's interest in the call: no more deadline or watching. */
static void call_close_http(struct rpc_call *c)
{
	struct rpc_server *s = c->srv;
	if (c->deadline_ev)
		event_del(c->deadline_ev);
	if (c->watch_ev)
		event_del(c->watch_ev);
	if (s && c->fd >= 0 && c->fd < s->conns_cap && s->conns[c->fd].call == c)
		s->conns[c->fd].call = NULL;
	c->req = NULL;
	c->http_open = false;
	if (s)
		s->inflight--;
}

static void call_send(struct rpc_call *c, enum rpc_code code, int status, const char *ctype,
                      struct evbuffer *body)
{
	struct evhttp_request *req = c->req;
	int64_t dur = mono_us() - c->start_us;
	stats_note(c->srv, c->mi, code, dur);
	log_debug("rpc method=%s code=%s ms=%.3f", c->m->path, rpc_code_name(code),
	          (double)dur / 1000.0);
	call_close_http(c);
	send_http(c->srv, req, status, ctype, body);
}

static void call_send_error(struct rpc_call *c, enum rpc_code code, const char *msg)
{
	struct evbuffer *b = evbuffer_new();
	if (!b) {
		log_error("out of memory");
		abort();
	}
	if (code == RPC_OK || (unsigned)code >= RPC_CODE_COUNT)
		code = RPC_INTERNAL;
	error_body(b, code, msg);
	call_send(c, code, rpc_code_http_status(code), "application/json", b);
	evbuffer_free(b);
}

static void call_fail(struct rpc_call *c, enum rpc_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void call_fail(struct rpc_call *c, enum rpc_code code, const char *fmt, ...)
{
	char msg[MSG_BYTES];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	call_send_error(c, code, msg);
}

static void call_abort(struct rpc_call *c, enum abort_why why)
{
	if (!c->http_open)
		return;
	struct evhttp_request *req = c->req;
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	switch (why) {
	case ABORT_DEADLINE:
		call_fail(c, RPC_DEADLINE_EXCEEDED, "%s did not finish within its deadline",
		          c->m->path);
		break;
	case ABORT_GONE:
		stats_note(c->srv, c->mi, RPC_CANCELED, mono_us() - c->start_us);
		log_debug("rpc client gone method=%s", c->m->path);
		call_close_http(c);
		/* Frees the request too; nothing is written to a dead peer. */
		if (evcon)
			evhttp_connection_free(evcon);
		break;
	case ABORT_DETACH:
		stats_note(c->srv, c->mi, RPC_CANCELED, mono_us() - c->start_us);
		call_close_http(c);
		break;
	}
	if (c->handler_ref && c->abort_fn) {
		void (*fn)(struct rpc_call *, void *) = c->abort_fn;
		c->abort_fn = NULL;
		fn(c, c->abort_arg);
		/* the hook released the handler's hold */
		c->handler_ref = false;
	}
	call_maybe_release(c);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	call_abort(arg, ABORT_DEADLINE);
}

/* Wakes when the client's socket turns readable while its call is open:
 * EOF or an error means the client is gone (evhttp 2.1 does not read, so
 * would not notice until it wrote the answer). Bytes waiting are left for
 * evhttp (a pipelined request, or under TLS a record that may be the
 * client's close_notify: TLS 1.3 hides an alert's type); from then on only
 * the peer's FIN is watched for, where the backend can (EV_CLOSED). */
static void watch_cb(evutil_socket_t fd, short what, void *arg)
{
	struct rpc_call *c = arg;
	char byte;
	if (what & EV_CLOSED) {
		call_abort(c, ABORT_GONE);
		return;
	}
	ssize_t n = recv(fd, &byte, 1, MSG_PEEK);
	if (n > 0) {
		struct event_base *base = event_get_base(c->watch_ev);
		if (event_base_get_features(base) & EV_FEATURE_EARLY_CLOSE) {
			event_free(c->watch_ev);
			c->watch_ev = event_new(base, fd, EV_CLOSED, watch_cb, c);
			if (c->watch_ev)
				event_add(c->watch_ev, NULL);
		}
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
		event_add(c->watch_ev, NULL);
		return;
	}
	call_abort(c, ABORT_GONE);
}

static void arm_deadline(struct rpc_call *c, int ms)
{
	int64_t now = mono_us();
	int64_t at = ms > 0 ? now + (int64_t)ms * 1000 : 0;
	if (c->client_deadline_us && (!at || c->client_deadline_us < at))
		at = c->client_deadline_us;
	if (!at) {
		event_del(c->deadline_ev);
		return;
	}
	int64_t left = at > now ? at - now : 0;
	struct timeval tv = { (time_t)(left / 1000000), (suseconds_t)(left % 1000000) };
	event_add(c->deadline_ev, &tv);
}

/* Decodes the body and runs the handler (or answers why not). */
static void call_run(struct rpc_call *c)
{
	const struct rpc_method *m = c->m;
	if (!m->fn) {
		call_fail(c, RPC_UNIMPLEMENTED, "%s is not implemented yet", m->path);
		return;
	}
	struct evbuffer *in = evhttp_request_get_input_buffer(c->req);
	size_t len = evbuffer_get_length(in);
	const char *data = len ? (const char *)evbuffer_pullup(in, -1) : "";
	char why[512] = "";
	if (c->codec == CODEC_PROTO) {
		if (pbcheck_wire(m->in, (const uint8_t *)data, len, why, sizeof why)) {
			call_fail(c, RPC_INVALID_ARGUMENT, "%s", why);
			return;
		}
		arena_init(&c->arena);
		c->in_arena = true;
		c->msg = protobuf_c_message_unpack(m->in, &c->arena.pb, len, (const uint8_t *)data);
		if (!c->msg) {
			call_fail(c, RPC_INVALID_ARGUMENT, "invalid protobuf body: not a valid %s",
			          m->in->name);
			return;
		}
	} else {
		char err[512] = "";
		/* no body at all reads as the empty message, as with binary */
		if (!len) {
			data = "{}";
			len = 2;
		}
		if (pbjson_decode(m->in, data, len, &c->msg, err, sizeof err)) {
			c->msg = NULL;
			call_fail(c, RPC_INVALID_ARGUMENT, "%s",
			          err[0] ? err : "invalid JSON body");
			return;
		}
	}
	if (pbcheck_message(c->msg, why, sizeof why)) {
		call_fail(c, RPC_INVALID_ARGUMENT, "%s", why);
		return;
	}
	c->handler_ref = true;
	m->fn(c, c->msg);
}

static void auth_done_cb(struct rpc_call *c, bool ok, bool unavailable, const struct principal *who)
{
	if (!c->auth_ref) {
		assert(!"rpc auth done called twice");
		return;
	}
	c->auth_ref = false;
	free(c->token);
	c->token = NULL;
	if (!c->http_open) {
		/* the call timed out, the client left or the server stopped */
		call_maybe_release(c);
		return;
	}
	if (unavailable)
		call_fail(c, RPC_UNAVAILABLE, "cannot check the bearer token now; try again");
	else if (!ok || !who)
		call_fail(c, RPC_UNAUTHENTICATED, "invalid, expired or revoked bearer token");
	else if (!(who->role & c->m->roles))
		call_fail(c, RPC_PERMISSION_DENIED, "a %s token may not call %s",
		          role_name(who->role), c->m->path);
	else {
		char why[256] = "";
		struct rpc_server *s = c->srv;
		if (s && s->peer_check && !s->peer_check(c, who, why, sizeof why, s->peer_arg)) {
			call_fail(c, RPC_PERMISSION_DENIED, "%s", why);
		} else {
			c->who = *who;
			call_run(c);
		}
	}
	call_maybe_release(c);
}

/* ---- request parsing ------------------------------------------------------ */

static bool is_space(char ch)
{
	return ch == ' ' || ch == '\t';
}

/* Trimmed, case-insensitive comparison of s[0..n) with lit. */
static bool token_eq(const char *s, size_t n, const char *lit)
{
	while (n && is_space(*s)) {
		s++;
		n--;
	}
	while (n && is_space(s[n - 1]))
		n--;
	return n == strlen(lit) && !strncasecmp(s, lit, n);
}

/* application/proto or application/json, parameters allowed; a charset
 * other than UTF-8 is refused. Returns -1 when unsupported. */
static int parse_codec(const char *ct, enum codec *out)
{
	if (!ct)
		return -1;
	const char *semi = strchr(ct, ';');
	size_t n = semi ? (size_t)(semi - ct) : strlen(ct);
	if (token_eq(ct, n, "application/proto"))
		*out = CODEC_PROTO;
	else if (token_eq(ct, n, "application/json"))
		*out = CODEC_JSON;
	else
		return -1;
	while (semi) {
		const char *p = semi + 1;
		semi = strchr(p, ';');
		size_t pn = semi ? (size_t)(semi - p) : strlen(p);
		const char *eq = memchr(p, '=', pn);
		if (!eq || !token_eq(p, (size_t)(eq - p), "charset"))
			continue;
		const char *v = eq + 1;
		size_t vn = pn - (size_t)(v - p);
		while (vn && is_space(*v)) {
			v++;
			vn--;
		}
		if (vn >= 2 && v[0] == '"') {
			v++;
			vn -= 2;
		}
		if (!token_eq(v, vn, "utf-8") && !token_eq(v, vn, "utf8"))
			return -1;
	}
	return 0;
}

/* The token of "Bearer <token>", or NULL when the header is missing or
 * malformed. */
static const char *bearer_token(const char *h, size_t *len)
{
	if (!h)
		return NULL;
	while (is_space(*h))
		h++;
	if (strncasecmp(h, "Bearer", 6) || !is_space(h[6]))
		return NULL;
	h += 6;
	while (is_space(*h))
		h++;
	const char *e = h;
	while (*e > 0x20 && *e < 0x7f)
		e++;
	const char *t = e;
	while (is_space(*t))
		t++;
	if (e == h || *t || (size_t)(e - h) > MAX_TOKEN_BYTES)
		return NULL;
	*len = (size_t)(e - h);
	return h;
}

/* Connect-Timeout-Ms: 1 to 10 digits. Returns -1 when malformed. */
static int64_t parse_timeout_ms(const char *v)
{
	int64_t ms = 0;
	size_t n = 0;
	for (; v[n]; n++) {
		if (v[n] < '0' || v[n] > '9' || n >= 10)
			return -1;
		ms = ms * 10 + (v[n] - '0');
	}
	return n ? ms : -1;
}

static size_t method_index(const struct rpc_server *s, const char *path)
{
	for (size_t i = 0; i < s->n_methods; i++)
		if (!strcmp(s->methods[i].path, path))
			return i;
	return s->n_methods;
}

static struct get_route *find_get(const struct rpc_server *s, const char *path, bool get)
{
	for (struct get_route *g = s->gets; g; g = g->next)
		if (!strcmp(g->path, path))
			return g;
	/* a route ending in '*' answers GETs under its prefix (the console) */
	for (struct get_route *g = s->gets; get && g; g = g->next) {
		size_t n = strlen(g->path);
		if (n && g->path[n - 1] == '*' && !strncmp(g->path, path, n - 1))
			return g;
	}
	return NULL;
}

static void request_cb(struct evhttp_request *req, void *arg)
{
	struct rpc_server *s = arg;
	int64_t start = mono_us();
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	enum evhttp_cmd_type type = evhttp_request_get_command(req);
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	int fd = conn_fd(evcon);

	if (!path || !*path)
		path = "/";
	size_t mi = method_index(s, path);
	struct get_route *g =
	    mi == s->n_methods
	        ? find_get(s, path, type == EVHTTP_REQ_GET || type == EVHTTP_REQ_HEAD)
	        : NULL;
	hguard_request_begin(s->guard, req);
	(void)conn_admit(s, evcon, fd);
	if (g && (type == EVHTTP_REQ_GET || type == EVHTTP_REQ_HEAD)) {
		g->fn(req, g->arg);
		return;
	}
	if (mi == s->n_methods) {
		if (g) {
			send_raw_error(s, req, NO_STATS, start, RPC_UNIMPLEMENTED, 405, "Allow",
			               "GET, HEAD", "%s answers GET, not %s", path,
			               http_method_name(type));
		} else if (type == EVHTTP_REQ_POST) {
			send_raw_error(s, req, s->n_methods, start, RPC_UNIMPLEMENTED, 404, NULL,
			               NULL, "no such method: %s", path);
		} else {
			send_raw_error(s, req, NO_STATS, start, RPC_NOT_FOUND, 404, NULL, NULL,
			               "not found: %s", path);
		}
		return;
	}

	const struct rpc_method *m = &s->methods[mi];
	if (type != EVHTTP_REQ_POST) {
		send_raw_error(s, req, mi, start, RPC_UNIMPLEMENTED, 405, "Allow", "POST",
		               "%s must be called with POST, not %s", path, http_method_name(type));
		return;
	}
	if (s->stopped) {
		send_raw_error(s, req, mi, start, RPC_UNAVAILABLE, 503, NULL, NULL,
		               "the server is shutting down; try again");
		return;
	}
	enum codec codec;
	const char *ct = evhttp_find_header(in, "Content-Type");
	if (parse_codec(ct, &codec)) {
		send_raw_error(s, req, mi, start, RPC_INVALID_ARGUMENT, 415, "Accept-Post",
		               "application/json, application/proto",
		               "unsupported content type \"%s\": use application/proto or "
		               "application/json",
		               ct ? ct : "");
		return;
	}
	const char *ce = evhttp_find_header(in, "Content-Encoding");
	if (ce && !token_eq(ce, strlen(ce), "identity")) {
		send_raw_error(s, req, mi, start, RPC_UNIMPLEMENTED, 501, "Accept-Encoding",
		               "identity", "unsupported content encoding \"%s\": send identity",
		               ce);
		return;
	}
	const char *pv = evhttp_find_header(in, "Connect-Protocol-Version");
	if (pv && strcmp(pv, "1")) {
		send_raw_error(s, req, mi, start, RPC_INVALID_ARGUMENT, 400, NULL, NULL,
		               "unsupported Connect-Protocol-Version \"%s\": want 1", pv);
		return;
	}
	int64_t client_ms = 0;
	const char *tv = evhttp_find_header(in, "Connect-Timeout-Ms");
	if (tv && (client_ms = parse_timeout_ms(tv)) < 0) {
		send_raw_error(s, req, mi, start, RPC_INVALID_ARGUMENT, 400, NULL, NULL,
		               "malformed Connect-Timeout-Ms \"%s\": want 1 to 10 digits", tv);
		return;
	}

	struct rpc_call *c = xcalloc(1, sizeof *c);
	c->srv = s;
	c->req = req;
	c->fd = fd;
	c->m = m;
	c->mi = mi;
	c->codec = codec;
	c->start_us = start;
	c->http_open = true;
	if (tv)
		c->client_deadline_us = start + client_ms * 1000;
	c->next = s->calls;
	if (s->calls)
		s->calls->prev = c;
	s->calls = c;
	s->inflight++;
	if (fd >= 0 && fd < s->conns_cap && s->conns[fd].evcon == evcon)
		s->conns[fd].call = c;

	c->deadline_ev = evtimer_new(s->base, deadline_cb, c);
	if (!c->deadline_ev) {
		log_error("out of memory");
		abort();
	}
	if (tv && client_ms == 0) {
		/* already past the client's deadline */
		call_abort(c, ABORT_DEADLINE);
		return;
	}
	arm_deadline(c, s->limits.request_timeout_ms);
	if (fd >= 0) {
		c->watch_ev = event_new(s->base, fd, EV_READ, watch_cb, c);
		if (c->watch_ev)
			event_add(c->watch_ev, NULL);
	}

	if (!m->roles) {
		call_run(c);
		call_maybe_release(c);
		return;
	}
	size_t tlen = 0;
	const char *tok = bearer_token(evhttp_find_header(in, "Authorization"), &tlen);
	if (!tok) {
		call_fail(c, RPC_UNAUTHENTICATED,
		          "missing or malformed Authorization header: want \"Bearer <token>\"");
		call_maybe_release(c);
		return;
	}
	if (!s->auth) {
		call_fail(c, RPC_INTERNAL, "no token resolver is configured");
		call_maybe_release(c);
		return;
	}
	c->token = strndup(tok, tlen);
	if (!c->token) {
		log_error("out of memory");
		abort();
	}
	c->auth_ref = true;
	s->auth(c, c->token, auth_done_cb, s->auth_arg);
	call_maybe_release(c);
}

/* ---- server --------------------------------------------------------------- */

static void guard_limits(const struct rpc_limits *l, struct hguard_limits *g)
{
	g->max_connections = l->max_connections;
	g->max_per_client = l->max_per_client;
	g->header_timeout_ms = l->header_timeout_ms > 0 ? l->header_timeout_ms : 10000;
	g->body_timeout_ms = l->body_timeout_ms > 0 ? l->body_timeout_ms : 30000;
	g->max_head_bytes = GUARD_HEAD_BYTES;
	g->max_body_bytes = l->max_body_bytes ? l->max_body_bytes : (size_t)1 << 40;
}

static void apply_limits(struct rpc_server *s)
{
	const struct rpc_limits *l = &s->limits;
	if (s->guard) {
		struct hguard_limits gl;
		guard_limits(l, &gl);
		hguard_set_limits(s->guard, &gl);
	}
	evhttp_set_max_body_size(s->http, l->max_body_bytes ? (ev_ssize_t)l->max_body_bytes : -1);
	if (l->idle_timeout_ms > 0) {
		struct timeval tv = { l->idle_timeout_ms / 1000,
			              (l->idle_timeout_ms % 1000) * 1000 };
		evhttp_set_timeout_tv(s->http, &tv);
	} else {
		evhttp_set_timeout_tv(s->http, NULL);
	}
}

struct rpc_server *rpc_server_new(struct event_base *base, const char *host, int port,
                                  const struct rpc_method *methods, const struct rpc_limits *limits,
                                  rpc_auth_fn auth, void *auth_arg, char *err, size_t err_len)
{
	struct rpc_server *s = NULL;
	if (!base || !host || !methods || !limits || port < 0 || port > 65535) {
		snprintf(err, err_len, "rpc_server_new: bad arguments");
		return NULL;
	}
	size_t n = 0;
	for (; methods[n].path; n++) {
		const struct rpc_method *m = &methods[n];
		if (m->path[0] != '/' || !m->in || !m->out) {
			snprintf(err, err_len,
			         "rpc method %s: path must start with / and name its "
			         "input and output messages",
			         m->path);
			return NULL;
		}
		if (m->roles && !auth) {
			snprintf(err, err_len,
			         "rpc method %s needs roles but no auth function is set", m->path);
			return NULL;
		}
	}
	s = xcalloc(1, sizeof *s);
	s->base = base;
	s->methods = methods;
	s->n_methods = n;
	s->stats = xcalloc(n + 1, sizeof *s->stats);
	s->limits = *limits;
	s->auth = auth;
	s->auth_arg = auth_arg;
	s->http = evhttp_new(base);
	s->reap_ev = event_new(base, -1, 0, reap_cb, s);
	if (!s->http || !s->reap_ev) {
		snprintf(err, err_len, "out of memory");
		goto fail;
	}
	/* every method reaches request_cb, which answers 405 itself */
	evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
	                                        EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
	                                        EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
	                                        EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
	evhttp_set_gencb(s->http, request_cb, s);
	/* read and drop the rest of an oversized body so the client sees 413 */
	evhttp_set_flags(s->http, EVHTTP_SERVER_LINGERING_CLOSE);
	evhttp_set_max_headers_size(s->http, MAX_HEADERS_BYTES);
	apply_limits(s);
	struct hguard_limits gl;
	guard_limits(&s->limits, &gl);
	s->guard = hguard_new(base, s->http, host, port, &gl, err, err_len);
	if (!s->guard)
		goto fail;
	hguard_set_close_hook(s->guard, conn_close_cb, s);
	s->port = hguard_port(s->guard);
	return s;
fail:
	if (s->http)
		evhttp_free(s->http);
	if (s->reap_ev)
		event_free(s->reap_ev);
	free(s->stats);
	free(s);
	return NULL;
}

int rpc_server_port(const struct rpc_server *s)
{
	return s->port;
}

void rpc_server_set_limits(struct rpc_server *s, const struct rpc_limits *limits)
{
	s->limits = *limits;
	apply_limits(s);
}

void rpc_server_stop_accepting(struct rpc_server *s)
{
	hguard_stop_accepting(s->guard);
	s->stopped = true;
}

size_t rpc_server_inflight(const struct rpc_server *s)
{
	return s->inflight;
}

void rpc_server_set_peer_check(struct rpc_server *s, rpc_peer_check_fn fn, void *arg)
{
	s->peer_check = fn;
	s->peer_arg = arg;
}

void rpc_server_add_get(struct rpc_server *s, const char *path, rpc_get_fn fn, void *arg)
{
	struct get_route *g = xcalloc(1, sizeof *g);
	g->path = strdup(path);
	if (!g->path) {
		log_error("out of memory");
		abort();
	}
	g->fn = fn;
	g->arg = arg;
	g->next = s->gets;
	s->gets = g;
}

void rpc_server_free(struct rpc_server *s)
{
	if (!s)
		return;
	/* Abort every open call while evhttp still owns its request. A hook may
	 * answer or release other calls, but nothing is freed before the
	 * reaping below, so the snapshot stays valid. */
	size_t n = 0;
	for (struct rpc_call *c = s->calls; c; c = c->next)
		n++;
	struct rpc_call **all = n ? xcalloc(n, sizeof *all) : NULL;
	n = 0;
	for (struct rpc_call *c = s->calls; c; c = c->next)
		all[n++] = c;
	for (size_t i = 0; i < n; i++)
		if (all[i]->http_open)
			call_abort(all[i], ABORT_DETACH);
	free(all);
	reap_cb(-1, 0, s);
	/* What an auth fn or a hook-less handler still holds lives on until
	 * released (done or an answer), which then frees it. */
	while (s->calls) {
		struct rpc_call *c = s->calls;
		call_unlink(s, c);
		c->srv = NULL;
		if (c->deadline_ev) {
			event_free(c->deadline_ev);
			c->deadline_ev = NULL;
		}
		if (c->watch_ev) {
			event_free(c->watch_ev);
			c->watch_ev = NULL;
		}
	}
	evhttp_free(s->http); /* runs conn_close_cb for every tracked connection */
	hguard_free(s->guard);
	event_free(s->reap_ev);
	while (s->gets) {
		struct get_route *g = s->gets;
		s->gets = g->next;
		free(g->path);
		free(g);
	}
	free(s->conns);
	free(s->stats);
	free(s);
}

/* ---- inside a handler ----------------------------------------------------- */

const struct principal *rpc_principal(const struct rpc_call *call)
{
	return &call->who;
}

const char *rpc_method_path(const struct rpc_call *call)
{
	return call->m->path;
}

struct bufferevent *rpc_call_bufferevent(const struct rpc_call *call)
{
	struct evhttp_connection *evcon =
	    call->req ? evhttp_request_get_connection(call->req) : NULL;
	return evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
}

void rpc_set_data(struct rpc_call *call, void *data)
{
	call->data = data;
}

void *rpc_get_data(const struct rpc_call *call)
{
	return call->data;
}

/* Takes the handler's hold for an answer; false when it has none (a second
 * answer, or one after the abort hook ran). */
static bool take_answer(struct rpc_call *c)
{
	if (!c->handler_ref) {
		assert(!"rpc call answered twice, or after its abort hook");
		return false;
	}
	c->handler_ref = false;
	return true;
}

void rpc_reply(struct rpc_call *call, const ProtobufCMessage *resp)
{
	struct rpc_call *c = call;
	if (!take_answer(c))
		return;
	if (c->http_open) {
		if (!resp || resp->descriptor != c->m->out) {
			log_error("rpc reply of the wrong type method=%s got=%s", c->m->path,
			          resp ? resp->descriptor->name : "NULL");
			assert(!"rpc_reply: response is not the method's output type");
			call_fail(c, RPC_INTERNAL, "internal error");
		} else {
			struct evbuffer *b = evbuffer_new();
			if (!b) {
				log_error("out of memory");
				abort();
			}
			if (c->codec == CODEC_PROTO) {
				size_t len = protobuf_c_message_get_packed_size(resp);
				struct evbuffer_iovec v;
				if (len && evbuffer_reserve_space(b, (ev_ssize_t)len, &v, 1) == 1) {
					v.iov_len = protobuf_c_message_pack(resp, v.iov_base);
					evbuffer_commit_space(b, &v, 1);
				}
				call_send(c, RPC_OK, 200, "application/proto", b);
			} else {
				size_t len = 0;
				char *json = pbjson_encode(resp, &len);
				if (json) {
					evbuffer_add(b, json, len);
					free(json);
					call_send(c, RPC_OK, 200, "application/json", b);
				} else {
					call_fail(c, RPC_INTERNAL, "cannot encode the response");
				}
			}
			evbuffer_free(b);
		}
	}
	call_maybe_release(c);
}

void rpc_error(struct rpc_call *call, enum rpc_code code, const char *fmt, ...)
{
	struct rpc_call *c = call;
	if (!take_answer(c))
		return;
	if (c->http_open) {
		char msg[MSG_BYTES];
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(msg, sizeof msg, fmt, ap);
		va_end(ap);
		assert(code != RPC_OK && (unsigned)code < RPC_CODE_COUNT);
		if (code == RPC_INTERNAL || code == RPC_UNKNOWN || code == RPC_DATA_LOSS)
			log_warn("rpc failed method=%s code=%s msg=\"%s\"", c->m->path,
			         rpc_code_name(code), msg);
		call_send_error(c, code, msg);
	}
	call_maybe_release(c);
}

void rpc_set_timeout(struct rpc_call *call, int ms)
{
	if (call->http_open)
		arm_deadline(call, ms);
}

void rpc_on_abort(struct rpc_call *call, void (*fn)(struct rpc_call *call, void *arg), void *arg)
{
	/* After an abort a hook would never run: the handler keeps the call
	 * until it answers (a no-op). */
	if (!call->http_open || !call->handler_ref)
		return;
	call->abort_fn = fn;
	call->abort_arg = arg;
}
