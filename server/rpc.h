/* rpc.h — the Connect protocol's unary RPCs over HTTP/1.1 on evhttp:
 * POST /<package>.<Service>/<Method> with application/proto or
 * application/json bodies, Connect error codes as JSON error bodies, request
 * size limits, idle and request timeouts, keep-alive; plus plain GET routes
 * (/healthz, /readyz, /metrics). Authorization ("Bearer <token>") is resolved
 * by the application and checked here against each method's roles, in one
 * place, before any handler runs. */
#ifndef GPUMATCH_RPC_H
#define GPUMATCH_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <event2/http.h>
#include <protobuf-c/protobuf-c.h>

enum rpc_code {
	RPC_OK = 0,
	RPC_CANCELED,
	RPC_UNKNOWN,
	RPC_INVALID_ARGUMENT,
	RPC_DEADLINE_EXCEEDED,
	RPC_NOT_FOUND,
	RPC_ALREADY_EXISTS,
	RPC_PERMISSION_DENIED,
	RPC_RESOURCE_EXHAUSTED,
	RPC_FAILED_PRECONDITION,
	RPC_ABORTED,
	RPC_OUT_OF_RANGE,
	RPC_UNIMPLEMENTED,
	RPC_INTERNAL,
	RPC_UNAVAILABLE,
	RPC_DATA_LOSS,
	RPC_UNAUTHENTICATED,
	RPC_CODE_COUNT
};

/* "invalid_argument", ... as Connect spells them. */
const char *rpc_code_name(enum rpc_code c);
/* The HTTP status Connect maps the code to (e.g. invalid_argument 400). */
int rpc_code_http_status(enum rpc_code c);

enum rpc_role {
	ROLE_TENANT = 1u << 0,
	ROLE_OPERATOR = 1u << 1,
	ROLE_ADMIN = 1u << 2,
};

/* Who is calling, resolved from the bearer token. */
struct principal {
	uint64_t token_id;
	unsigned role;        /* one enum rpc_role bit */
	uint64_t tenant_id;   /* ROLE_TENANT */
	uint64_t operator_id; /* ROLE_OPERATOR */
	char name[64];        /* token name, for audit */
};

struct rpc_call;
struct rpc_server;

/* req is owned by the RPC layer and freed after the call is answered. The
 * handler answers exactly once, now or later, with rpc_reply or rpc_error. */
typedef void (*rpc_handler_fn)(struct rpc_call *call, const ProtobufCMessage *req);

struct rpc_method {
	const char *path; /* "/gpumatch.v1.JobService/SubmitJob" */
	const ProtobufCMessageDescriptor *in;
	const ProtobufCMessageDescriptor *out;
	unsigned roles;    /* enum rpc_role bits allowed */
	rpc_handler_fn fn; /* NULL answers unimplemented */
};

/* Resolves a bearer token (NUL-terminated, as sent) and calls done exactly
 * once, possibly later: ok = false means unauthenticated (unknown, revoked,
 * malformed); unavailable = true means the store could not be asked. */
typedef void (*rpc_auth_done)(struct rpc_call *call, bool ok, bool unavailable,
                              const struct principal *who);
typedef void (*rpc_auth_fn)(struct rpc_call *call, const char *token, rpc_auth_done done,
                            void *arg);

struct rpc_limits {
	size_t max_body_bytes;  /* larger requests: resource_exhausted (413) */
	int request_timeout_ms; /* a call not answered by then: deadline_exceeded */
	int idle_timeout_ms;    /* keep-alive connections idle this long are closed */
	int max_connections;    /* open at once, counted from accept (capped by RLIMIT_NOFILE) */
	int max_per_client;     /* open at once from one client address; 0 = no limit */
	int header_timeout_ms;  /* a request's head must arrive within this (0: 10 s) */
	int body_timeout_ms;    /* and its body within this after the head (0: 30 s) */
};

/* Binds host:port (port 0 = ephemeral; rpc_server_port tells which).
 * methods (static storage, terminated by {NULL}) must cover every method of
 * every service the server answers; paths not listed answer 404/unimplemented.
 * Returns NULL and fills err on failure. */
struct rpc_server *rpc_server_new(struct event_base *base, const char *host, int port,
                                  const struct rpc_method *methods, const struct rpc_limits *limits,
                                  rpc_auth_fn auth, void *auth_arg, char *err, size_t err_len);
int rpc_server_port(const struct rpc_server *s);
/* fn makes each accepted connection's bufferevent (fd -1; e.g. a TLS one)
 * instead of a plain socket bufferevent. Never call evhttp_set_bevcb: the
 * connection guard (http_guard.h) owns it and calls fn. */
struct bufferevent;
void rpc_server_set_bevcb(struct rpc_server *s,
                          struct bufferevent *(*fn)(struct event_base *, void *), void *arg);
void rpc_server_set_limits(struct rpc_server *s, const struct rpc_limits *limits);
/* Stops accepting; calls in flight may still answer. */
void rpc_server_stop_accepting(struct rpc_server *s);
size_t rpc_server_inflight(const struct rpc_server *s);
void rpc_server_free(struct rpc_server *s);

/* Every connection accepted from now on gets its bufferevent from fn (TLS:
 * a bufferevent_openssl in the accepting state, fd -1). */
void rpc_server_set_bevcb(struct rpc_server *s,
                          struct bufferevent *(*fn)(struct event_base *, void *), void *arg);

/* Runs once a call's token is resolved and its role may call the method,
 * before the handler: returns true to go on, or false with why (len bytes)
 * filled, and the call is refused with permission_denied. */
typedef bool (*rpc_peer_check_fn)(struct rpc_call *call, const struct principal *who, char *why,
                                  size_t len, void *arg);
void rpc_server_set_peer_check(struct rpc_server *s, rpc_peer_check_fn fn, void *arg);

/* GET route (e.g. "/healthz"): fn writes the whole answer with evhttp. A
 * path ending in '*' answers GET and HEAD for every path under that prefix
 * that no exact route or method takes. */
typedef void (*rpc_get_fn)(struct evhttp_request *req, void *arg);
void rpc_server_add_get(struct rpc_server *s, const char *path, rpc_get_fn fn, void *arg);

/* ---- inside a handler --------------------------------------------------- */

const struct principal *rpc_principal(const struct rpc_call *call);
const char *rpc_method_path(const struct rpc_call *call);
/* The call's connection's bufferevent (borrowed), or NULL once the client
 * is gone. */
struct bufferevent *rpc_call_bufferevent(const struct rpc_call *call);
/* Application data for the call's duration. */
void rpc_set_data(struct rpc_call *call, void *data);
void *rpc_get_data(const struct rpc_call *call);

/* Sends resp (not taken; the caller frees it after) encoded like the
 * request (binary or JSON). Ends the call. */
void rpc_reply(struct rpc_call *call, const ProtobufCMessage *resp);
/* Sends a Connect error {"code": ..., "message": ...}. Ends the call. */
void rpc_error(struct rpc_call *call, enum rpc_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Long polls: extends this call's deadline to ms from now. */
void rpc_set_timeout(struct rpc_call *call, int ms);
/* fn runs (once) if the call ends without an answer: client gone, timeout or
 * shutdown. After it the call must not be answered. */
void rpc_on_abort(struct rpc_call *call, void (*fn)(struct rpc_call *call, void *arg), void *arg);

/* Prometheus text for request counts by method and code and latency
 * histograms, appended to buf. */
void rpc_server_metrics(const struct rpc_server *s, struct evbuffer *buf);

#endif
