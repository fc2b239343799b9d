/* pg.h — a small pool of non-blocking libpq connections driven by libevent.
 * Queries are single statements with text parameters; each completes through
 * a callback on the loop. While Postgres is unreachable, queries fail at once
 * with PG_UNAVAILABLE and the pool reconnects with backoff by itself. */
#ifndef GPUMATCH_PG_H
#define GPUMATCH_PG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <libpq-fe.h>

struct pg_pool;

enum pg_status {
	PG_OK = 0,      /* res is the result (PGRES_COMMAND_OK or TUPLES_OK) */
	PG_ERROR,       /* the statement failed: res holds the error; sqlstate set */
	PG_UNAVAILABLE, /* no connection could run it (down, queue timeout), or the
	                 * connection was lost or timed out under it: it may have run */
};

/* res is borrowed for the callback's duration (the pool clears it after).
 * sqlstate is "" unless status is PG_ERROR. err is a human message or "". */
typedef void (*pg_cb)(enum pg_status status, PGresult *res, const char *sqlstate, const char *err,
                      void *arg);

/* Prepared statements every connection gets after connecting. */
struct pg_stmt {
	const char *name;
	const char *sql;
	int nparams;
};

/* Creates the pool and starts connecting (non-blocking). stmts (may be NULL,
 * terminated by a {NULL} entry, static storage) are prepared on each new
 * connection before it takes queries; one that fails to prepare makes the
 * connection retry with backoff. Until every connection's first attempt has
 * settled, queries wait in the queue rather than fail. conninfo should name
 * an address (hostaddr=) or a socket directory: a host name is resolved
 * with a blocking lookup. Returns NULL on bad arguments (size outside
 * 1..256, conninfo that does not parse). */
struct pg_pool *pg_pool_new(struct event_base *base, const char *conninfo, int size,
                            const struct pg_stmt *stmts);

/* Closes every connection; every pending query's callback runs here, once,
 * with PG_UNAVAILABLE (pg_exec from them returns -1). Accepts NULL. May be
 * called from one of the pool's own callbacks: the memory then goes when
 * that callback returns. */
void pg_pool_free(struct pg_pool *p);

/* Runs a prepared statement (name from stmts) or, when name is NULL, the SQL
 * text sql with PQsendQueryParams. params are copied. Queued when every
 * connection is busy (bounded queue; a query queued longer than
 * queue_timeout_ms fails with PG_UNAVAILABLE). The callback always runs
 * exactly once, never before this returns. Returns 0, or -1 when the pool is
 * shutting down or on bad arguments (no cb, neither name nor sql, nparams
 * outside 0..65535, params NULL with nparams > 0): then no callback. */
int pg_exec(struct pg_pool *p, const char *name, const char *sql, int nparams,
            const char *const *params, pg_cb cb, void *arg);

/* As pg_exec, with per-parameter lengths and formats (0 text, 1 binary;
 * lengths matter for binary ones only), as PQsendQueryParams takes them.
 * lengths and formats may be NULL together (all text). Binary values are
 * copied. Results come back as text. */
int pg_exec_bin(struct pg_pool *p, const char *name, const char *sql, int nparams,
                const char *const *params, const int *lengths, const int *formats, pg_cb cb,
                void *arg);

/* True when at least one connection is up. */
bool pg_pool_ready(const struct pg_pool *p);

/* True while Postgres is stalled: a query waited the stall timeout for a
 * connection and no connection got any answer meanwhile. Queries then fail
 * at once with PG_UNAVAILABLE (those on its connections too: they may have
 * run) until a connection answers again. stalls (may be NULL) counts the
 * stalls declared so far. */
bool pg_pool_stalled(const struct pg_pool *p, uint64_t *stalls);

/* The stall timeout (default 0: off). */
void pg_pool_set_stall_timeout(struct pg_pool *p, int ms);

/* Connections up, busy, queued queries (for /metrics). */
void pg_pool_stats(const struct pg_pool *p, int *up, int *busy, int *queued);

/* How long a query may wait for a connection (default 5000 ms), counted
 * from its pg_exec; applies to queries already queued too. */
void pg_pool_set_queue_timeout(struct pg_pool *p, int ms);

/* A query running longer than ms on its connection (default 30000; 0: no
 * limit) fails with PG_UNAVAILABLE and its connection is dropped and
 * reconnected: a stalled server then costs a bounded wait, never a stuck
 * caller. The statement may or may not have committed. */
void pg_pool_set_query_timeout(struct pg_pool *p, int ms);

#endif
