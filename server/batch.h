/* batch.h — group commit for the calls of the placement hot path: calls
 * that arrive while a batch is being written gather for the next one, and
 * each batch is one statement over parameter arrays (one transaction, one
 * WAL flush). When idle a call goes out alone at once; under load the
 * batch size follows the load with no added wait. */
#ifndef GPUMATCH_BATCH_H
#define GPUMATCH_BATCH_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/buffer.h>
#include <libpq-fe.h>

#include "pg.h"
#include "strbuf.h"

#define BATCH_MAX_PARAMS 16

struct batch_item {
	struct batch_item *next;
	int64_t since_mono; /* when batch_add queued it (monotonic µs) */
};

/* One kind of batched call. The statement takes nparams arrays, element i
 * of each belonging to item i, and returns rows whose first column is the
 * item's 1-based position (WITH ORDINALITY); an item may have no row. */
struct batch_kind {
	const char *name; /* for /metrics: gpumatch_batch_*{kind="name"} */
	const char *sql;
	int nparams;
	int max; /* items per statement at most */
	/* Optional: items of one statement are written in the order of this
	 * key (stable: items with equal keys keep their order), so that
	 * batches of different kinds lock shared rows in the same order and
	 * cannot deadlock each other. */
	uint64_t (*key)(const struct batch_item *it);
	/* Appends the item's element (array literal syntax, no separator) to
	 * each of the nparams arrays. */
	void (*add)(struct batch_item *it, struct strbuf *arrays);
	/* The item's outcome, exactly once: st PG_OK with row its result row
	 * or -1 (no row); otherwise the failure (row -1, res may be NULL).
	 * May call batch_add. Owns the item from here. */
	void (*done)(struct batch_item *it, enum pg_status st, PGresult *res, int row,
	             const char *sqlstate, const char *err);
	/* state */
	struct batch_item *head, **tail;
	int queued;
	bool busy;               /* a batch statement is in flight */
	int64_t busy_since_mono; /* the oldest item of the statement in flight */
	int retry_max;           /* after a failed statement: the next one's size (halving) */
	uint64_t batches, items, failed_batches;
};

/* Queues an item; writes at once when no batch of its kind is in flight.
 * done runs exactly once for it, never before this returns. */
void batch_add(struct pg_pool *pg, struct batch_kind *k, struct batch_item *it);

/* True when nothing of this kind is queued or in flight. */
bool batch_idle(const struct batch_kind *k);

/* When the oldest item of this kind still queued or in flight was added
 * (monotonic µs), or 0 when none is: what callers told the server since
 * then is not in Postgres yet. */
int64_t batch_oldest_mono(const struct batch_kind *k);

/* Appends the kinds' counters in Prometheus text format (kinds ends with
 * NULL). */
void batch_metrics(const struct batch_kind *const *kinds, struct evbuffer *b);

#endif
