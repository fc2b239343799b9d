/* http_guard.h — the listening socket and every connection's limits, in
 * front of evhttp: connections counted from accept() (in total and per client
 * address), a deadline for each request's head and one for its body, the
 * framing checks of http_frame.h on the raw bytes before evhttp reads them,
 * and accept paused (not spun) while descriptors run out. Whatever it
 * refuses is answered with a Connect error body and then closed.
 *
 * It sees each connection through the bufferevent it makes for evhttp
 * (evhttp_set_bevcb), so another layer (TLS) plugs in with hguard_set_bevcb
 * and sits under it: the guard reads the bufferevent's input and writes its
 * output, never the socket. */
#ifndef GPUMATCH_HTTP_GUARD_H
#define GPUMATCH_HTTP_GUARD_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>

struct hguard_limits {
	int max_connections;   /* open at once; also capped by the descriptor limit */
	int max_per_client;    /* open at once from one client address */
	int header_timeout_ms; /* a request's head must arrive within this */
	int body_timeout_ms;   /* and its body within this after the head */
	size_t max_head_bytes; /* request line + headers */
	size_t max_body_bytes; /* declared or chunked */
};

struct hguard;

/* Binds host:port (0: ephemeral) and hands accepted connections to http.
 * Returns NULL and fills err on failure. */
struct hguard *hguard_new(struct event_base *base, struct evhttp *http, const char *host, int port,
                          const struct hguard_limits *l, char *err, size_t err_len);
int hguard_port(const struct hguard *g);
void hguard_set_limits(struct hguard *g, const struct hguard_limits *l);
/* fn makes each new connection's bufferevent (with fd -1; evhttp sets it);
 * NULL: a plain socket bufferevent. */
void hguard_set_bevcb(struct hguard *g, struct bufferevent *(*fn)(struct event_base *, void *),
                      void *arg);
/* fn runs just before evhttp frees a connection (evhttp has one close
 * callback per connection, which the guard keeps for itself). */
void hguard_set_close_hook(struct hguard *g, void (*fn)(struct evhttp_connection *, void *),
                           void *arg);
/* The RPC layer calls this for every request evhttp hands it: the
 * connection is busy (no head deadline runs) until its answer is sent. */
void hguard_request_begin(struct hguard *g, struct evhttp_request *req);
/* Stops accepting (draining). */
void hguard_stop_accepting(struct hguard *g);
/* Prometheus text: open connections, refusals by reason, accept pauses. */
void hguard_metrics(const struct hguard *g, struct evbuffer *buf);
/* The effective total limit now (max_connections capped by RLIMIT_NOFILE). */
int hguard_effective_max(const struct hguard *g);
/* Frees the guard; connections still open stay evhttp's (evhttp_free
 * closes them; call this after it). */
void hguard_free(struct hguard *g);

#endif
