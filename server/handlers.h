/* handlers.h — what the per-service handler files (jobs.c, nodes.c,
 * admin.c) and the scheduling loop (schedloop.c) share: the handler table,
 * the Redis scripts, lifecycle hooks, and helpers for answering from
 * Postgres results. */
#ifndef GPUMATCH_HANDLERS_H
#define GPUMATCH_HANDLERS_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/buffer.h>
#include <libpq-fe.h>

#include "app.h"
#include "rpc.h"

/* The handler for "/gpumatch.v1.X/Y", or NULL (answers unimplemented). */
rpc_handler_fn handler_for(const char *path);

/* Lua scripts loaded into Redis; indexes are enum rds_script_id. */
enum rds_script_id {
	SCRIPT_ENQUEUE = 0,    /* KEYS: pending, events; ARGV: id, score per job */
	SCRIPT_DEQUEUE,        /* KEYS: pending; ARGV: id */
	SCRIPT_LEADER_ACQUIRE, /* KEYS: leader, fence; ARGV: instance, ttl_ms -> fence or nil */
	SCRIPT_LEADER_RENEW,   /* KEYS: leader; ARGV: instance, ttl_ms -> 1 or 0 */
	SCRIPT_COUNT
};
const struct rds_script *handler_scripts(void);

/* Redis keys. The {gm} hash tag keeps them in one Redis Cluster slot so the
 * scripts may touch several at once. */
#define RK_PENDING   "{gm}:pending"  /* ZSET job id by priority score */
#define RK_EVENTS    "{gm}:events"   /* STREAM: enqueue/node/policy changes */
#define RK_LEADER    "{gm}:leader"   /* STRING: instance holding the lock */
#define RK_FENCE     "{gm}:fence"    /* counter: fencing tokens */
#define RK_HEARTBEAT "{gm}:hb:"      /* STRING per node, expires */
#define RK_EXPLAIN   "{gm}:explain:" /* STRING per ask: the leader's answer */

int handlers_start(struct app *a, char *err, size_t err_len);
void handlers_stop(struct app *a);
void handlers_drain(struct app *a);  /* answer long polls, stop scheduling */
bool handlers_idle(struct app *a);   /* nothing of ours in flight */
void handlers_reload(struct app *a); /* SIGHUP: re-read the handlers' data files */
void handlers_metrics(struct app *a, struct evbuffer *b);

/* The process's app (there is one per process). */
struct app *app_get(void);

/* Answers a call from a failed Postgres query: PG_UNAVAILABLE ->
 * unavailable; unique violation -> already_exists; check / foreign key
 * violations -> failed_precondition; else internal (logged). */
void reply_pg_error(struct rpc_call *call, enum pg_status st, const char *sqlstate,
                    const char *err);

/* Number formatting for query parameters. */
struct numbuf {
	char s[24];
};
const char *fmt_u64(struct numbuf *b, uint64_t v);
const char *fmt_i64(struct numbuf *b, int64_t v);

/* Column helpers. */
uint64_t col_u64(const PGresult *r, int row, int col);
int64_t col_i64(const PGresult *r, int row, int col);

/* bytea columns come back as text "\x…": decodes into a malloc'd buffer.
 * Returns NULL on bad input. */
uint8_t *col_bytea(const PGresult *r, int row, int col, size_t *len);
/* Packs a message as a bytea text parameter "\x…" (malloc'd). */
char *pack_bytea_param(const ProtobufCMessage *m);

/* Opaque page tokens for keyset pagination: the last id seen. */
void page_token_encode(uint64_t last_id, char *out, size_t len);
/* 0 for "", -1 when malformed. */
int page_token_decode(const char *tok, uint64_t *last_id);

/* How many of the n messages items[0..n) one page of a List answer
 * carries: all of them, or those before the one that would take the page
 * past max_page_bytes encoded (config); always at least one, so a page
 * always moves on. The caller sets next_page_token after the last one it
 * carries when that is fewer than it has. */
size_t page_fit(const void *const *items, size_t n);

/* Triggers a scheduling cycle soon (coalesced). */
void schedloop_kick(struct app *a);
/* Tells waiting AcquireLease calls of a node to look again. */
void nodes_wake(uint64_t node_id);

#endif
