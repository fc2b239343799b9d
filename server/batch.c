/* batch.c — group commit for per-call statements (see batch.h). A batch
 * that fails with an error (a deadlock with another writer, a constraint
 * one element broke) is written again in halves, so that each call gets its
 * own answer; a Postgres that is unavailable fails the whole batch as it
 * would have failed each call. */
#include <inttypes.h>
#include <stdlib.h>
#include <time.h>

#include "batch.h"

#include "log.h"

struct batch_run {
	struct pg_pool *pg;
	struct batch_kind *k;
	int n;
	struct batch_item *items[];
};

static void run_cb(enum pg_status st, PGresult *res, const char *ss, const char *err, void *arg);
static void flush(struct pg_pool *pg, struct batch_kind *k);

static void oom(void)
{
	log_error("out of memory in a batch");
	abort();
}

/* Writes the run's items in one statement; false when the pool refused
 * it (shutting down), after answering every item. */
static bool run_exec(struct batch_run *r)
{
	struct batch_kind *k = r->k;
	struct strbuf arr[BATCH_MAX_PARAMS] = { 0 };
	const char *params[BATCH_MAX_PARAMS];
	for (int p = 0; p < k->nparams; p++)
		sb_puts(&arr[p], "{");
	for (int i = 0; i < r->n; i++) {
		if (i)
			for (int p = 0; p < k->nparams; p++)
				sb_puts(&arr[p], ",");
		k->add(r->items[i], arr);
	}
	bool bad = false;
	for (int p = 0; p < k->nparams; p++) {
		sb_puts(&arr[p], "}");
		bad |= arr[p].oom;
		params[p] = arr[p].s;
	}
	if (bad)
		oom();
	int rc = pg_exec(r->pg, NULL, k->sql, k->nparams, params, run_cb, r);
	for (int p = 0; p < k->nparams; p++)
		sb_free(&arr[p]);
	if (!rc)
		return true;
	for (int i = 0; i < r->n; i++)
		k->done(r->items[i], PG_UNAVAILABLE, NULL, -1, "", "shutting down");
	free(r);
	return false;
}

static struct batch_run *run_new(struct pg_pool *pg, struct batch_kind *k, int n)
{
	struct batch_run *r = malloc(sizeof *r + (size_t)n * sizeof r->items[0]);
	if (!r)
		oom();
	r->pg = pg;
	r->k = k;
	r->n = n;
	return r;
}

static void run_cb(enum pg_status st, PGresult *res, const char *ss, const char *err, void *arg)
{
	struct batch_run *r = arg;
	struct batch_kind *k = r->k;
	struct pg_pool *pg = r->pg;
	if (st == PG_OK) {
		int *row = malloc((size_t)r->n * sizeof *row);
		if (!row)
			oom();
		for (int i = 0; i < r->n; i++)
			row[i] = -1;
		for (int t = 0; t < PQntuples(res); t++) {
			long i = strtol(PQgetvalue(res, t, 0), NULL, 10) - 1;
			if (i >= 0 && i < r->n && row[i] < 0)
				row[i] = t;
		}
		for (int i = 0; i < r->n; i++)
			k->done(r->items[i], PG_OK, res, row[i], "", "");
		free(row);
		k->retry_max = 0;
	} else if (st == PG_ERROR && r->n > 1) {
		/* Nothing of it was written (a deadlock with another writer, or
		 * one element's error): its items go back to the head of the
		 * queue and the next statement takes half of them, so a
		 * transient error costs one retry and an element that fails on
		 * its own is isolated in log2(n) statements and answered alone. */
		k->failed_batches++;
		log_warn("batch failed, writing it again in halves kind=%s n=%d err=\"%s\"",
		         k->name, r->n, err);
		for (int i = r->n - 1; i >= 0; i--) {
			r->items[i]->next = k->head;
			if (!k->head)
				k->tail = &r->items[i]->next;
			k->head = r->items[i];
		}
		k->queued += r->n;
		k->retry_max = r->n / 2;
	} else {
		for (int i = 0; i < r->n; i++)
			k->done(r->items[i], st, res, -1, ss, err);
		k->retry_max = 0;
	}
	k->busy = false;
	free(r);
	flush(pg, k);
}

struct keyed {
	uint64_t key;
	int pos;
	struct batch_item *it;
};

static int keyed_cmp(const void *a, const void *b)
{
	const struct keyed *x = a, *y = b;
	if (x->key != y->key)
		return x->key < y->key ? -1 : 1;
	return (x->pos > y->pos) - (x->pos < y->pos);
}

static void sort_items(struct batch_kind *k, struct batch_run *r)
{
	struct keyed *v = malloc((size_t)r->n * sizeof *v);
	if (!v)
		oom();
	for (int i = 0; i < r->n; i++)
		v[i] = (struct keyed){ k->key(r->items[i]), i, r->items[i] };
	qsort(v, (size_t)r->n, sizeof *v, keyed_cmp);
	for (int i = 0; i < r->n; i++)
		r->items[i] = v[i].it;
	free(v);
}

static void flush(struct pg_pool *pg, struct batch_kind *k)
{
	if (k->busy || !k->head)
		return;
	int max = k->retry_max ? k->retry_max : k->max;
	int n = k->queued < max ? k->queued : max;
	struct batch_run *r = run_new(pg, k, n);
	for (int i = 0; i < n; i++) {
		r->items[i] = k->head;
		k->head = k->head->next;
	}
	if (!k->head)
		k->tail = &k->head;
	k->queued -= n;
	int64_t oldest = 0;
	for (int i = 0; i < n; i++)
		if (!oldest || r->items[i]->since_mono < oldest)
			oldest = r->items[i]->since_mono;
	k->busy_since_mono = oldest;
	if (k->key && n > 1)
		sort_items(k, r);
	k->batches++;
	k->items += (uint64_t)n;
	k->busy = true;
	if (!run_exec(r)) {
		k->busy = false;
		flush(pg, k);
	}
}

void batch_add(struct pg_pool *pg, struct batch_kind *k, struct batch_item *it)
{
	if (!k->tail)
		k->tail = &k->head;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	it->since_mono = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
	it->next = NULL;
	*k->tail = it;
	k->tail = &it->next;
	k->queued++;
	flush(pg, k);
}

bool batch_idle(const struct batch_kind *k)
{
	return !k->busy && !k->head;
}

int64_t batch_oldest_mono(const struct batch_kind *k)
{
	int64_t oldest = k->busy ? k->busy_since_mono : 0;
	/* the queue is in arrival order, but a failed statement's items go
	 * back to its head: look at every queued item */
	for (const struct batch_item *it = k->head; it; it = it->next)
		if (!oldest || it->since_mono < oldest)
			oldest = it->since_mono;
	return oldest;
}

void batch_metrics(const struct batch_kind *const *kinds, struct evbuffer *b)
{
	static const char *const what[][2] = {
		{ "statements", "Batch statements written (group commit of node calls)." },
		{ "calls", "Calls written in batch statements." },
		{ "failed", "Batch statements that failed and were written again call by call." },
	};
	for (int m = 0; m < 3; m++) {
		evbuffer_add_printf(b,
		                    "# HELP gpumatch_batch_%s_total %s\n"
		                    "# TYPE gpumatch_batch_%s_total counter\n",
		                    what[m][0], what[m][1], what[m][0]);
		for (const struct batch_kind *const *k = kinds; *k; k++) {
			uint64_t v = m == 0   ? (*k)->batches
			             : m == 1 ? (*k)->items
			                      : (*k)->failed_batches;
			evbuffer_add_printf(b, "gpumatch_batch_%s_total{kind=\"%s\"} %" PRIu64 "\n",
			                    what[m][0], (*k)->name, v);
		}
	}
}
