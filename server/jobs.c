/* jobs.c — JobService: submit (group-committed), get, list, cancel,
 * explain. A submit is answered only after its Postgres transaction
 * commits: nothing acknowledged is lost. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "convert.h"
#include "gpumatch/v1/job_service.pb-c.h"
#include "ledger.h"
#include "log.h"
#include "pbjson.h"
#include "service.h"
#include "speeds.h"
#include "strbuf.h"

/* ---- building Job messages from rows -------------------------------------------- */

#define JOB_COLS                                                                            \
	"j.id, j.tenant_id, j.name, j.idempotency_key, j.spec_pb, j.state,"                 \
	" j.attempts - j.attempts_withdrawn,"                                               \
	" j.submitted_at_us, j.started_at_us, j.ended_at_us, j.updated_at_us,"              \
	" j.failure_reason, j.failure_message, j.exit_code, j.term_signal, j.failure_node," \
	" j.cost_micros + (SELECT coalesce(sum(l.posted_micros), 0) FROM leases l"          \
	"   WHERE l.job_id = j.id AND NOT l.ledger_settled)"
#define JOB_NCOLS 17

/* What a Job built from a row owns; freed after the reply. */
struct job_scratch {
	Gpumatch__V1__JobSpec *spec;
	Gpumatch__V1__JobFailure failure;
};

static void job_scratch_free(struct job_scratch *s)
{
	if (s->spec)
		protobuf_c_message_free_unpacked(&s->spec->base, NULL);
	s->spec = NULL;
}

/* Fills job from JOB_COLS at row; strings borrow from r. */
static int job_from_row(const PGresult *r, int row, Gpumatch__V1__Job *job, struct job_scratch *s)
{
	gpumatch__v1__job__init(job);
	memset(s, 0, sizeof *s);
	size_t len;
	uint8_t *raw = col_bytea(r, row, 4, &len);
	if (!raw)
		return -1;
	s->spec = gpumatch__v1__job_spec__unpack(NULL, len, raw);
	free(raw);
	if (!s->spec)
		return -1;
	job->id = col_u64(r, row, 0);
	job->tenant_id = col_u64(r, row, 1);
	job->name = PQgetvalue(r, row, 2);
	job->idempotency_key = PQgetvalue(r, row, 3);
	job->spec = s->spec;
	job->state = (Gpumatch__V1__JobState)col_i64(r, row, 5);
	job->attempts = (uint32_t)col_i64(r, row, 6);
	job->submitted_at_us = col_i64(r, row, 7);
	job->started_at_us = col_i64(r, row, 8);
	job->ended_at_us = col_i64(r, row, 9);
	job->updated_at_us = col_i64(r, row, 10);
	if (col_i64(r, row, 11)) {
		gpumatch__v1__job_failure__init(&s->failure);
		s->failure.reason = (Gpumatch__V1__FailureReason)col_i64(r, row, 11);
		s->failure.message = PQgetvalue(r, row, 12);
		s->failure.exit_code = (int32_t)col_i64(r, row, 13);
		s->failure.term_signal = (int32_t)col_i64(r, row, 14);
		s->failure.node_id = col_u64(r, row, 15);
		job->failure = &s->failure;
	}
	job->cost_micros = col_i64(r, row, 16);
	return 0;
}

/* Tenants see their own jobs; admins every job (tenant 0). Another
 * tenant's job is "not found" so that ids do not leak. */
static uint64_t scope_tenant(struct rpc_call *call)
{
	const struct principal *p = rpc_principal(call);
	return p->role == ROLE_TENANT ? p->tenant_id : 0;
}

/* Placement of the current attempt: node, mask, gang index, lease id. */
#define PLACE_SQL                                                                                \
	"(SELECT coalesce(string_agg(l.node_id || ':' || l.gpu_mask || ':' || l.gang_index ||  \
	 ':' || l.id || ':' || l.pulled_bytes || ':' || coalesce(nullif(l.phase, ''), '-') ||  \
	 ':' || coalesce(nullif(l.image_digest, ''), '-'), ',' ORDER BY l.gang_index), '')      \
	 FROM leases l" \
	" WHERE l.job_id = j.id AND l.attempt = j.attempts AND l.state BETWEEN 1 AND 4)"

struct placement_scratch {
	Gpumatch__V1__NodePlacement parts[SCHED_MAX_GANG_NODES];
	Gpumatch__V1__NodePlacement *ptrs[SCHED_MAX_GANG_NODES];
	uint32_t idx[SCHED_MAX_GANG_NODES][SCHED_MAX_GPUS_PER_NODE];
	char phase[SCHED_MAX_GANG_NODES][16];
	char digest[SCHED_MAX_GANG_NODES][80];
};

/* Every lease of the job, oldest first:
 * "attempt:node:mask:gang:lease:state:started:ended:exit:signal:node" joined
 * by ','. */
#define HISTORY_SQL \
	"(SELECT coalesce(string_agg(l.attempt || ':' || l.node_id || ':' || l.gpu_mask || ':' || \
	 l.gang_index || ':' || l.id || ':' || l.state || ':' || l.started_at_us || ':' ||         \
	 l.ended_at_us || ':' || l.exit_code || ':' || l.term_signal || ':' || l.node_id, ','     \
	 ORDER BY l.attempt, l.gang_index), '') FROM leases l WHERE l.job_id = j.id)"

#define MAX_HISTORY 32

struct history_scratch {
	Gpumatch__V1__JobAttempt att[MAX_HISTORY];
	Gpumatch__V1__JobFailure fail[MAX_HISTORY];
	Gpumatch__V1__JobAttempt *ptrs[MAX_HISTORY];
	Gpumatch__V1__NodePlacement parts[MAX_HISTORY][8];
	Gpumatch__V1__NodePlacement *pptrs[MAX_HISTORY][8];
	uint32_t idx[MAX_HISTORY][8][SCHED_MAX_GPUS_PER_NODE];
};

/* What an attempt ended as, from its leases' states (LeaseState values). */
static Gpumatch__V1__JobState attempt_outcome(int live, int ok, int failed, int expired,
                                              int cancelled, int preempted)
{
	if (live)
		return GPUMATCH__V1__JOB_STATE__JOB_STATE_UNSPECIFIED;
	if (cancelled)
		return GPUMATCH__V1__JOB_STATE__JOB_STATE_CANCELLED;
	if (failed)
		return GPUMATCH__V1__JOB_STATE__JOB_STATE_FAILED;
	if (expired)
		return GPUMATCH__V1__JOB_STATE__JOB_STATE_QUEUED; /* re-queued (node lost) */
	if (preempted)
		return GPUMATCH__V1__JOB_STATE__JOB_STATE_PREEMPTED;
	return ok ? GPUMATCH__V1__JOB_STATE__JOB_STATE_SUCCEEDED
	          : GPUMATCH__V1__JOB_STATE__JOB_STATE_UNSPECIFIED;
}

static void history_from_text(const char *s, Gpumatch__V1__Job *job, struct history_scratch *h)
{
	size_t n = 0;
	int cur = -1;
	int live = 0, ok = 0, failed = 0, expired = 0, cancelled = 0, preempted = 0;
	while (*s) {
		unsigned att, gang;
		unsigned long long node, mask, lease;
		int state, used = 0;
		long long started, ended;
		int exit_code, sig;
		unsigned long long fnode;
		if (sscanf(s, "%u:%llu:%llu:%u:%llu:%d:%lld:%lld:%d:%d:%llu%n", &att, &node, &mask,
		           &gang, &lease, &state, &started, &ended, &exit_code, &sig, &fnode,
		           &used) != 11)
			break;
		s += used;
		if (*s == ',')
			s++;
		if ((int)att != cur) {
			if (cur >= 0)
				h->att[n - 1].outcome = attempt_outcome(live, ok, failed, expired,
				                                        cancelled, preempted);
			if (n == MAX_HISTORY)
				break;
			cur = (int)att;
			live = ok = failed = expired = cancelled = preempted = 0;
			Gpumatch__V1__JobAttempt *a = &h->att[n];
			gpumatch__v1__job_attempt__init(a);
			a->attempt = att;
			a->placement = h->pptrs[n];
			h->ptrs[n] = a;
			n++;
		}
		Gpumatch__V1__JobAttempt *a = &h->att[n - 1];
		if (started && (!a->started_at_us || started < a->started_at_us))
			a->started_at_us = started;
		if (ended > a->ended_at_us)
			a->ended_at_us = ended;
		/* the first part that failed says why the attempt did */
		if (!a->failure && (state == 6 || state == 7)) {
			Gpumatch__V1__JobFailure *f = &h->fail[n - 1];
			gpumatch__v1__job_failure__init(f);
			f->node_id = fnode;
			if (state == 7) {
				f->reason = GPUMATCH__V1__FAILURE_REASON__FAILURE_REASON_NODE_LOST;
				f->message = "the node was lost or never took the lease";
			} else {
				f->reason =
				    sig ? GPUMATCH__V1__FAILURE_REASON__FAILURE_REASON_SIGNAL
				        : GPUMATCH__V1__FAILURE_REASON__FAILURE_REASON_EXIT_CODE;
				f->exit_code = exit_code;
				f->term_signal = sig;
				f->message = sig ? "killed by a signal" : "exited non-zero";
			}
			a->failure = f;
		}
		live += state >= 1 && state <= 4;
		ok += state == 5;
		failed += state == 6;
		expired += state == 7 || state == 20; /* interrupted: queued again */
		cancelled += state == 8;
		preempted += state == 9;
		if (a->n_placement < 8) {
			size_t p = a->n_placement++;
			Gpumatch__V1__NodePlacement *np = &h->parts[n - 1][p];
			gpumatch__v1__node_placement__init(np);
			np->node_id = node;
			np->lease_id = lease;
			np->gang_index = gang;
			size_t k = 0;
			for (unsigned i = 0; i < 64; i++)
				if (mask >> i & 1)
					h->idx[n - 1][p][k++] = i;
			np->n_gpu_indexes = k;
			np->gpu_indexes = h->idx[n - 1][p];
			h->pptrs[n - 1][p] = np;
		}
	}
	if (n && cur >= 0)
		h->att[n - 1].outcome =
		    attempt_outcome(live, ok, failed, expired, cancelled, preempted);
	job->n_attempt_history = n;
	job->attempt_history = h->ptrs;
}

static void placement_from_text(const char *s, Gpumatch__V1__Job *job, struct placement_scratch *ps)
{
	size_t n = 0;
	while (*s && n < SCHED_MAX_GANG_NODES) {
		unsigned long long node, mask, lease;
		unsigned gang;
		long long pulled;
		int used = 0;
		if (sscanf(s, "%llu:%llu:%u:%llu:%lld:%15[^:]:%79[^,]%n", &node, &mask, &gang,
		           &lease, &pulled, ps->phase[n], ps->digest[n], &used) != 7)
			break;
		Gpumatch__V1__NodePlacement *p = &ps->parts[n];
		gpumatch__v1__node_placement__init(p);
		if (strcmp(ps->phase[n], "-"))
			p->phase = ps->phase[n];
		if (strcmp(ps->digest[n], "-"))
			p->image_digest = ps->digest[n];
		p->pulled_bytes = pulled;
		p->node_id = node;
		p->lease_id = lease;
		p->gang_index = gang;
		size_t k = 0;
		for (unsigned i = 0; i < 64; i++)
			if (mask >> i & 1)
				ps->idx[n][k++] = i;
		p->n_gpu_indexes = k;
		p->gpu_indexes = ps->idx[n];
		ps->ptrs[n] = p;
		n++;
		s += used;
		if (*s == ',')
			s++;
	}
	job->n_placement = n;
	job->placement = ps->ptrs;
}

static void reply_job_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                         void *arg)
{
	struct rpc_call *call = arg;
	if (st != PG_OK) {
		reply_pg_error(call, st, sqlstate, err);
		return;
	}
	if (PQntuples(res) != 1) {
		rpc_error(call, RPC_NOT_FOUND, "job not found");
		return;
	}
	Gpumatch__V1__Job job;
	struct job_scratch s;
	struct placement_scratch *ps = malloc(sizeof *ps);
	struct history_scratch *hs = malloc(sizeof *hs);
	if (!ps || !hs || job_from_row(res, 0, &job, &s)) {
		free(ps);
		free(hs);
		rpc_error(call, RPC_INTERNAL, "stored job could not be read");
		return;
	}
	placement_from_text(PQgetvalue(res, 0, JOB_NCOLS), &job, ps);
	history_from_text(PQgetvalue(res, 0, JOB_NCOLS + 1), &job, hs);
	struct explain_out *ex = NULL;
	if (job.state == GPUMATCH__V1__JOB_STATE__JOB_STATE_QUEUED && (ex = malloc(sizeof *ex)) &&
	    schedloop_explain(app_get(), job.id, ex) == 0)
		job.explanation = &ex->msg;
	const char *path = rpc_method_path(call);
	if (strstr(path, "/GetJob")) {
		Gpumatch__V1__GetJobResponse resp = GPUMATCH__V1__GET_JOB_RESPONSE__INIT;
		resp.job = &job;
		rpc_reply(call, &resp.base);
	} else if (strstr(path, "/CancelJob")) {
		Gpumatch__V1__CancelJobResponse resp = GPUMATCH__V1__CANCEL_JOB_RESPONSE__INIT;
		resp.job = &job;
		rpc_reply(call, &resp.base);
	} else {
		Gpumatch__V1__SubmitJobResponse resp = GPUMATCH__V1__SUBMIT_JOB_RESPONSE__INIT;
		resp.job = &job;
		resp.created = false;
		rpc_reply(call, &resp.base);
	}
	job_scratch_free(&s);
	free(ps);
	free(hs);
	free(ex);
}

static void load_and_reply(struct rpc_call *call, uint64_t job_id, uint64_t tenant)
{
	struct numbuf a, b;
	const char *params[] = { fmt_u64(&a, job_id), fmt_u64(&b, tenant) };
	if (pg_exec(app_get()->pg, NULL,
	            "SELECT " JOB_COLS ", " PLACE_SQL ", " HISTORY_SQL " FROM jobs j"
	            " WHERE j.id = $1::bigint AND ($2::bigint = 0 OR j.tenant_id = $2::bigint)",
	            2, params, reply_job_cb, call))
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
}

/* ---- SubmitJob: group commit ----------------------------------------------------- */

struct submit {
	struct rpc_call *call;
	const Gpumatch__V1__SubmitJobRequest *req; /* owned by the RPC layer until answered */
	uint64_t tenant_id;
	uint8_t *spec_pb; /* the spec, packed: the job row's spec_pb */
	size_t spec_len;
	int prio;
	uint32_t gpus;
	int64_t t0_us;
	int retries;         /* batches this submit was carried over from */
	struct submit *dups; /* on the first of a key in a batch: later submits
	                        of the same key, answered from its row */
	/* the spec as validated, kept for the leader once the job has an id;
	 * its strings point into st and into req */
	struct sched_job_spec js;
	struct conv_strings *st;
	struct submit *next;
};

static struct {
	struct submit *head, *tail;
	int queued;
	int inflight; /* batch transactions being written */
	uint64_t batches, submits, created;
	uint64_t key_repeats; /* submits answered from an earlier one's row */
	uint64_t latency_bucket[12];
	double latency_sum_s;
} sub;

static const double latency_le_ms[] = { 0.5, 1, 2, 5, 10, 20, 50, 100, 250, 500, 1000 };

static void observe_latency(int64_t us)
{
	double ms = (double)us / 1000.0;
	sub.latency_sum_s += ms / 1000.0;
	size_t i = 0;
	while (i < sizeof latency_le_ms / sizeof latency_le_ms[0] && ms > latency_le_ms[i])
		i++;
	sub.latency_bucket[i]++;
}

static void flush_batch(void);

static void submit_free(struct submit *s)
{
	free(s->st);
	free(s->spec_pb);
	free(s);
}

struct batch {
	struct submit **items;
	int n;
	int64_t now_us;
	int *slot; /* open-addressing index of items by (tenant, key) */
	int nslots;
};

/* Retries of one submit whose key a concurrent batch held, before it is
 * failed: each retry sees that batch committed, so one is normal. */
#define SUBMIT_MAX_RETRIES 5

static uint64_t key_hash(uint64_t tenant, const char *key)
{
	uint64_t h = 1469598103934665603ULL ^ (tenant * 0x9e3779b97f4a7c15ULL);
	for (const unsigned char *p = (const unsigned char *)key; *p; p++)
		h = (h ^ *p) * 1099511628211ULL;
	return h;
}

/* The batch item for (tenant, key), or -1; with add, inserts item i when
 * absent (returns -1 then too). */
static int batch_find(struct batch *b, uint64_t tenant, const char *key, int add_i)
{
	size_t mask = (size_t)b->nslots - 1;
	for (size_t h = key_hash(tenant, key) & mask;; h = (h + 1) & mask) {
		int i = b->slot[h];
		if (i < 0) {
			if (add_i >= 0)
				b->slot[h] = add_i;
			return -1;
		}
		const struct submit *s = b->items[i];
		if (s && s->tenant_id == tenant && !strcmp(s->req->idempotency_key, key))
			return i;
	}
}

static void requeue_front(struct submit *s)
{
	s->next = sub.head;
	sub.head = s;
	if (!sub.tail)
		sub.tail = s;
	sub.queued++;
}

static bool same_spec(const struct submit *x, const struct submit *y)
{
	return x->spec_len == y->spec_len && !memcmp(x->spec_pb, y->spec_pb, x->spec_len);
}

/* No row for s: a concurrent batch held its key in a transaction this one
 * could not see; the next batch finds that job. */
static void submit_retry(struct submit *s)
{
	if (++s->retries <= SUBMIT_MAX_RETRIES) {
		requeue_front(s);
	} else {
		rpc_error(s->call, RPC_UNAVAILABLE,
		          "idempotencyKey: still being written by another request; retry");
		submit_free(s);
	}
}

static void reply_created(struct submit *s, uint64_t job_id, int64_t now, bool created)
{
	Gpumatch__V1__Job job = GPUMATCH__V1__JOB__INIT;
	job.id = job_id;
	job.tenant_id = s->tenant_id;
	job.name = s->req->name;
	job.idempotency_key = s->req->idempotency_key;
	job.spec = s->req->spec;
	job.state = GPUMATCH__V1__JOB_STATE__JOB_STATE_QUEUED;
	job.submitted_at_us = now;
	job.updated_at_us = now;
	Gpumatch__V1__SubmitJobResponse resp = GPUMATCH__V1__SUBMIT_JOB_RESPONSE__INIT;
	resp.job = &job;
	resp.created = created;
	rpc_reply(s->call, &resp.base);
	observe_latency(now_us() - s->t0_us);
}

static void reply_other_spec(struct submit *s, uint64_t job_id)
{
	rpc_error(s->call, RPC_FAILED_PRECONDITION,
	          "idempotencyKey: already used for job %" PRIu64 " with a different spec", job_id);
}

/* Answers the first submit of a key in the batch from its row, then the
 * repeats of that key that rode along with it. */
static void submit_finish(struct batch *b, struct submit *first, uint64_t job_id, bool created,
                          bool old_same_spec)
{
	struct app *a = app_get();
	struct submit *dups = first->dups;
	first->dups = NULL;
	if (created) {
		sub.created++;
		first->js.id = job_id;
		first->js.submit_us = b->now_us;
		schedloop_job_queued(a, &first->js);
		reply_created(first, job_id, b->now_us, true);
	} else if (!old_same_spec) {
		reply_other_spec(first, job_id);
	} else {
		/* the key was used before: answer with that job */
		load_and_reply(first->call, job_id, first->tenant_id);
	}
	for (struct submit *d = dups, *next; d; d = next) {
		next = d->dups;
		d->dups = NULL;
		bool same = same_spec(d, first);
		if (created && same)
			reply_created(d, job_id, b->now_us, false);
		else if (!created && old_same_spec && same)
			load_and_reply(d->call, job_id, d->tenant_id);
		else if (created || old_same_spec || same)
			reply_other_spec(d, job_id);
		else {
			submit_retry(d); /* unlike both; the next batch compares */
			continue;
		}
		submit_free(d);
	}
	submit_free(first);
}

static void batch_done_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                          void *arg)
{
	struct batch *b = arg;
	struct app *a = app_get();
	if (st != PG_OK) {
		for (int i = 0; i < b->n; i++) {
			for (struct submit *d = b->items[i]->dups, *next; d; d = next) {
				next = d->dups;
				reply_pg_error(d->call, st, sqlstate, err);
				submit_free(d);
			}
			reply_pg_error(b->items[i]->call, st, sqlstate, err);
			submit_free(b->items[i]);
		}
	} else {
		bool any_created = false;
		for (int row = 0; row < PQntuples(res); row++) {
			int i = batch_find(b, col_u64(res, row, 0), PQgetvalue(res, row, 1), -1);
			if (i < 0 || !b->items[i])
				continue;
			bool created = !strcmp(PQgetvalue(res, row, 3), "t");
			any_created |= created;
			submit_finish(b, b->items[i], col_u64(res, row, 2), created,
			              !strcmp(PQgetvalue(res, row, 4), "t"));
			b->items[i] = NULL;
		}
		for (int i = b->n - 1; i >= 0; i--) {
			struct submit *s = b->items[i];
			if (!s)
				continue;
			/* the repeats go back with it, in front of it */
			for (struct submit *d = s->dups, *next; d; d = next) {
				next = d->dups;
				d->dups = NULL;
				submit_retry(d);
			}
			s->dups = NULL;
			submit_retry(s);
		}
		if (any_created)
			outbox_kick(a);
	}
	free(b->items);
	free(b->slot);
	free(b);
	sub.inflight--;
	flush_batch();
}

/* A few batches may be written at once: each waits for its commit's WAL
 * flush, and Postgres flushes concurrent commits together. */
static int max_inflight(const struct app *a)
{
	/* One by default: while a batch commits the next gathers, so batches
	 * are as large as the load makes them and each submit pays the least
	 * Postgres and server CPU (bench/submit: about a quarter less than
	 * with two in flight, for a slightly longer wait when lightly loaded).
	 * Never all of the pool: other queries must get a connection. */
	int n = a->cfg.group_commit_inflight;
	return n < a->cfg.pg_pool_size ? n
	                               : (a->cfg.pg_pool_size > 1 ? a->cfg.pg_pool_size - 1 : 1);
}

static void write_batch(void);

/* Writes what is queued while fewer than max_inflight batches are being
 * written; the rest gathers for the next. */
static void flush_batch(void)
{
	struct app *a = app_get();
	while (sub.queued && sub.inflight < max_inflight(a))
		write_batch();
}

/* Writes up to group_commit_max queued submits in one statement. */
static void write_batch(void)
{
	struct app *a = app_get();
	int max = a->cfg.group_commit_max;
	int n = sub.queued < max ? sub.queued : max;
	struct batch *b = calloc(1, sizeof *b);
	struct submit **items = calloc((size_t)n, sizeof *items);
	int nslots = 16;
	while (nslots < 2 * n)
		nslots *= 2;
	int *slot = malloc((size_t)nslots * sizeof *slot);
	/* arrays in Postgres's binary format: nothing to escape or parse */
	struct strbuf t = { 0 }, nm = { 0 }, k = { 0 }, sp = { 0 }, pr = { 0 }, gp = { 0 };
	if (!b || !items || !slot)
		goto oom;
	for (int i = 0; i < nslots; i++)
		slot[i] = -1;
	b->items = items;
	b->slot = slot;
	b->nslots = nslots;
	/* Each (tenant, key) once per batch: a repeat rides along with the
	 * first and is answered from its row. */
	int taken = 0;
	while (taken < n && sub.head) {
		struct submit *s = sub.head;
		sub.head = s->next;
		sub.queued--;
		s->next = NULL;
		items[taken] = s;
		int first = batch_find(b, s->tenant_id, s->req->idempotency_key, taken);
		if (first >= 0) {
			items[taken] = NULL;
			struct submit **p = &items[first]->dups;
			while (*p)
				p = &(*p)->dups;
			*p = s;
			sub.key_repeats++;
			continue;
		}
		taken++;
	}
	if (!sub.head)
		sub.tail = NULL;
	n = taken;
	b->n = n;
	b->now_us = now_us();
	sb_bin_array(&t, PG_OID_INT8, n);
	sb_bin_array(&nm, PG_OID_TEXT, n);
	sb_bin_array(&k, PG_OID_TEXT, n);
	sb_bin_array(&sp, PG_OID_BYTEA, n);
	sb_bin_array(&pr, PG_OID_INT2, n);
	sb_bin_array(&gp, PG_OID_INT4, n);
	for (int i = 0; i < n; i++) {
		const struct submit *it = items[i];
		sb_bin_i64(&t, (int64_t)it->tenant_id);
		sb_bin_elem(&nm, it->req->name, strlen(it->req->name));
		sb_bin_elem(&k, it->req->idempotency_key, strlen(it->req->idempotency_key));
		sb_bin_elem(&sp, it->spec_pb, it->spec_len);
		sb_bin_i16(&pr, (int16_t)it->prio);
		sb_bin_i32(&gp, (int32_t)it->gpus);
	}
	if (t.oom || nm.oom || k.oom || sp.oom || pr.oom || gp.oom)
		goto oom;
	struct numbuf now;
	const char *params[] = { t.s, nm.s, k.s, sp.s, pr.s, gp.s, fmt_i64(&now, b->now_us) };
	const int lengths[] = { (int)t.len,  (int)nm.len, (int)k.len, (int)sp.len,
		                (int)pr.len, (int)gp.len, 0 };
	const int formats[] = { 1, 1, 1, 1, 1, 1, 0 };
	sub.inflight++;
	sub.batches++;
	/* the statement "submit_jobs" is prepared on every connection (app.c) */
	if (pg_exec_bin(a->pg, "submit_jobs", NULL, 7, params, lengths, formats, batch_done_cb,
	                b)) {
		sub.inflight--;
		for (int i = 0; i < n; i++) {
			for (struct submit *d = items[i]->dups, *next; d; d = next) {
				next = d->dups;
				rpc_error(d->call, RPC_UNAVAILABLE, "shutting down");
				submit_free(d);
			}
			rpc_error(items[i]->call, RPC_UNAVAILABLE, "shutting down");
			submit_free(items[i]);
		}
		free(items);
		free(b->slot);
		free(b);
	}
	sb_free(&t);
	sb_free(&nm);
	sb_free(&k);
	sb_free(&sp);
	sb_free(&pr);
	sb_free(&gp);
	return;
oom:
	log_error("out of memory in submit batch");
	abort(); /* server: out-of-memory is fatal */
}

static void submit_admitted(void *arg)
{
	struct submit *s = arg;
	if (sub.tail)
		sub.tail->next = s;
	else
		sub.head = s;
	sub.tail = s;
	sub.queued++;
	sub.submits++;
	/* While one batch is being written, later submits gather for the next:
	 * the batch size follows the load with no added wait. */
	flush_batch();
}

static void submit_refused(void *arg)
{
	submit_free(arg);
}

static bool valid_label(const char *s, size_t max)
{
	size_t n = strlen(s);
	if (n > max || !pbjson_valid_utf8(s, n))
		return false;
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return false;
	return true;
}

static bool valid_key(const char *s)
{
	size_t n = strlen(s);
	if (n < 1 || n > 128)
		return false;
	for (; *s; s++)
		if (*s < 0x21 || *s > 0x7e)
			return false;
	return true;
}

/* Bounds on a spec's free-form strings and lists (docs/jobs.md), so that no
 * tenant can make the server store, page or hand out a job of many
 * megabytes. The scheduler's own lists (regions, labels, speeds) are
 * bounded in conv_job_spec. Returns 0, or -1 with field and why filled. */
#define SPEC_MAX_IMAGE_BYTES   1024
#define SPEC_MAX_WORKDIR_BYTES 1024
#define SPEC_MAX_ARGS          256
#define SPEC_MAX_ARG_BYTES     8192
#define SPEC_MAX_ENV           256
#define SPEC_MAX_ENV_KEY_BYTES 256
#define SPEC_MAX_ENV_VAL_BYTES 8192
#define SPEC_MAX_TOTAL_BYTES   (64 * 1024)

static int spec_bounds(const Gpumatch__V1__JobSpec *sp, char *field, size_t flen, char *why,
                       size_t wlen)
{
	if (sp->image && strlen(sp->image) > SPEC_MAX_IMAGE_BYTES) {
		snprintf(field, flen, "spec.image");
		snprintf(why, wlen, "at most %d bytes", SPEC_MAX_IMAGE_BYTES);
		return -1;
	}
	if (sp->working_dir && strlen(sp->working_dir) > SPEC_MAX_WORKDIR_BYTES) {
		snprintf(field, flen, "spec.workingDir");
		snprintf(why, wlen, "at most %d bytes", SPEC_MAX_WORKDIR_BYTES);
		return -1;
	}
	if (sp->n_command > SPEC_MAX_ARGS) {
		snprintf(field, flen, "spec.command");
		snprintf(why, wlen, "at most %d arguments, got %zu", SPEC_MAX_ARGS, sp->n_command);
		return -1;
	}
	for (size_t i = 0; i < sp->n_command; i++)
		if (strlen(sp->command[i]) > SPEC_MAX_ARG_BYTES) {
			snprintf(field, flen, "spec.command[%zu]", i);
			snprintf(why, wlen, "at most %d bytes", SPEC_MAX_ARG_BYTES);
			return -1;
		}
	if (sp->n_env > SPEC_MAX_ENV) {
		snprintf(field, flen, "spec.env");
		snprintf(why, wlen, "at most %d variables, got %zu", SPEC_MAX_ENV, sp->n_env);
		return -1;
	}
	for (size_t i = 0; i < sp->n_env; i++) {
		const char *k = sp->env[i]->key ? sp->env[i]->key : "";
		const char *v = sp->env[i]->value ? sp->env[i]->value : "";
		bool ok = *k && strlen(k) <= SPEC_MAX_ENV_KEY_BYTES && !(*k >= '0' && *k <= '9');
		for (const char *p = k; ok && *p; p++)
			ok = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
			     (*p >= '0' && *p <= '9') || *p == '_';
		if (!ok) {
			snprintf(field, flen, "spec.env[%.64s]", k);
			snprintf(why, wlen,
			         "variable names are 1 to %d of A-Z a-z 0-9 _, not starting with a "
			         "digit",
			         SPEC_MAX_ENV_KEY_BYTES);
			return -1;
		}
		if (strlen(v) > SPEC_MAX_ENV_VAL_BYTES) {
			snprintf(field, flen, "spec.env[%.64s]", k);
			snprintf(why, wlen, "at most %d bytes", SPEC_MAX_ENV_VAL_BYTES);
			return -1;
		}
	}
	size_t total = protobuf_c_message_get_packed_size(&sp->base);
	if (total > SPEC_MAX_TOTAL_BYTES) {
		snprintf(field, flen, "spec");
		snprintf(why, wlen, "at most %d bytes encoded, got %zu", SPEC_MAX_TOTAL_BYTES,
		         total);
		return -1;
	}
	return 0;
}

void jobs_submit(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__SubmitJobRequest *req = (const Gpumatch__V1__SubmitJobRequest *)msg;
	const struct principal *who = rpc_principal(call);
	if (who->role != ROLE_TENANT) {
		rpc_error(call, RPC_PERMISSION_DENIED, "jobs are submitted with a tenant's token");
		return;
	}
	if (!req->spec) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "spec: required");
		return;
	}
	if (!valid_label(req->name, 128)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "name: at most 128 bytes of UTF-8, no control characters");
		return;
	}
	if (!valid_key(req->idempotency_key)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "idempotencyKey: required, 1..128 printable ASCII characters");
		return;
	}
	struct sched_job_spec js;
	struct conv_strings *st = malloc(sizeof *st);
	char field[256], why[256];
	if (!st) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	if (spec_bounds(req->spec, field, sizeof field, why, sizeof why)) {
		free(st);
		rpc_error(call, RPC_INVALID_ARGUMENT, "%s: %s", field, why);
		return;
	}
	int64_t t0 = now_us();
	if (conv_job_spec(req->spec, 1, who->tenant_id, t0, &js, st, field, sizeof field, why,
	                  sizeof why)) {
		free(st);
		rpc_error(call, RPC_INVALID_ARGUMENT, "%s: %s", field, why);
		return;
	}
	if (jobspec_check(req->spec, &app_get()->cfg, field, sizeof field, why, sizeof why)) {
		free(st);
		rpc_error(call, RPC_INVALID_ARGUMENT, "%s: %s", field, why);
		return;
	}
	speeds_apply(req->spec->job_type, &js, st);
	struct sched_error se;
	if (sched_job_validate(&js, &se)) {
		free(st);
		conv_job_field(se.field, field, sizeof field);
		rpc_error(call, RPC_INVALID_ARGUMENT, "%s: %s", field, se.message);
		return;
	}
	struct submit *s = calloc(1, sizeof *s);
	if (s) {
		s->spec_len = protobuf_c_message_get_packed_size(&req->spec->base);
		s->spec_pb = malloc(s->spec_len ? s->spec_len : 1);
		if (s->spec_pb)
			protobuf_c_message_pack(&req->spec->base, s->spec_pb);
	}
	if (!s || !s->spec_pb) {
		free(s);
		free(st);
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	s->js = js;
	s->st = st;
	s->call = call;
	s->req = req;
	s->tenant_id = who->tenant_id;
	s->prio = (int)js.priority_class;
	s->gpus = js.gpus_per_node * js.node_count;
	s->t0_us = t0;
	/* the tenant must afford the job's worst case: checked in memory */
	ledger_admit(call, who->tenant_id, js.max_price_micros, s->gpus, js.max_duration_us,
	             submit_admitted, submit_refused, s);
}

/* ---- GetJob / ListJobs / CancelJob / ExplainJob ----------------------------------- */

void jobs_get(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__GetJobRequest *req = (const Gpumatch__V1__GetJobRequest *)msg;
	if (!req->job_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "jobId: required");
		return;
	}
	load_and_reply(call, req->job_id, scope_tenant(call));
}

struct list_ctx {
	struct rpc_call *call;
	int page_size;
};

static void list_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                    void *arg)
{
	struct list_ctx *lc = arg;
	if (st != PG_OK) {
		reply_pg_error(lc->call, st, sqlstate, err);
		free(lc);
		return;
	}
	int rows = PQntuples(res);
	int n = rows > lc->page_size ? lc->page_size : rows;
	Gpumatch__V1__Job *jobs = calloc((size_t)(n ? n : 1), sizeof *jobs);
	Gpumatch__V1__Job **ptrs = calloc((size_t)(n ? n : 1), sizeof *ptrs);
	struct job_scratch *sc = calloc((size_t)(n ? n : 1), sizeof *sc);
	char token[32] = "";
	if (!jobs || !ptrs || !sc) {
		rpc_error(lc->call, RPC_INTERNAL, "out of memory");
		goto out;
	}
	/* pages are bounded by bytes too: a page stops before the job that
	 * would take its answer past max_page_bytes (one job always fits) */
	size_t bytes = 0, max_bytes = (size_t)app_get()->cfg.max_page_bytes;
	bool cut = false;
	for (int i = 0; i < n; i++) {
		if (job_from_row(res, i, &jobs[i], &sc[i])) {
			rpc_error(lc->call, RPC_INTERNAL, "stored job could not be read");
			for (int q = 0; q < i; q++)
				job_scratch_free(&sc[q]);
			goto out;
		}
		size_t sz = protobuf_c_message_get_packed_size(&jobs[i].base);
		if (i > 0 && bytes + sz > max_bytes) {
			job_scratch_free(&sc[i]);
			n = i;
			cut = true;
			break;
		}
		bytes += sz;
		ptrs[i] = &jobs[i];
	}
	if ((rows > lc->page_size || cut) && n > 0)
		page_token_encode(jobs[n - 1].id, token, sizeof token);
	Gpumatch__V1__ListJobsResponse resp = GPUMATCH__V1__LIST_JOBS_RESPONSE__INIT;
	resp.n_jobs = (size_t)n;
	resp.jobs = ptrs;
	resp.next_page_token = token;
	rpc_reply(lc->call, &resp.base);
	for (int i = 0; i < n; i++)
		job_scratch_free(&sc[i]);
out:
	free(jobs);
	free(ptrs);
	free(sc);
	free(lc);
}

void jobs_list(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__ListJobsRequest *req = (const Gpumatch__V1__ListJobsRequest *)msg;
	const struct principal *who = rpc_principal(call);
	if (req->page_size < 0 || req->page_size > 1000) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "pageSize: must be between 0 and 1000, got %d", req->page_size);
		return;
	}
	uint64_t after;
	if (page_token_decode(req->page_token, &after)) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "pageToken: not a token this server issued");
		return;
	}
	if (who->role == ROLE_TENANT && req->tenant_id && req->tenant_id != who->tenant_id) {
		rpc_error(call, RPC_PERMISSION_DENIED,
		          "tenantId: tenants list their own jobs only");
		return;
	}
	struct strbuf states = { 0 };
	sb_puts(&states, "{");
	for (size_t i = 0; i < req->n_states; i++) {
		if (req->states[i] < 1 || req->states[i] > 7) {
			sb_free(&states);
			rpc_error(call, RPC_INVALID_ARGUMENT, "states[%zu]: not a job state", i);
			return;
		}
		sb_printf(&states, "%s%d", i ? "," : "", (int)req->states[i]);
	}
	sb_puts(&states, "}");
	uint64_t tenant = who->role == ROLE_TENANT ? who->tenant_id : req->tenant_id;
	int64_t from = req->submitted ? req->submitted->start_us : 0;
	int64_t until =
	    req->submitted && req->submitted->end_us ? req->submitted->end_us : INT64_MAX;
	struct list_ctx *lc = malloc(sizeof *lc);
	if (!lc || states.oom) {
		free(lc);
		sb_free(&states);
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	lc->call = call;
	lc->page_size = req->page_size ? req->page_size : 50;
	struct numbuf a, t, l, f, u;
	const char *params[] = { fmt_u64(&a, after), fmt_u64(&t, tenant),
		                 states.s,           fmt_i64(&l, lc->page_size + 1),
		                 fmt_i64(&f, from),  fmt_i64(&u, until) };
	if (pg_exec(app_get()->pg, NULL,
	            "SELECT " JOB_COLS " FROM jobs j WHERE ($1::bigint = 0 OR j.id < $1::bigint)"
	            " AND ($2::bigint = 0 OR j.tenant_id = $2::bigint)"
	            " AND (cardinality($3::smallint[]) = 0 OR j.state = ANY($3::smallint[]))"
	            " AND j.submitted_at_us >= $5::bigint AND j.submitted_at_us < $6::bigint"
	            " ORDER BY j.id DESC LIMIT $4::integer",
	            6, params, list_cb, lc)) {
		free(lc);
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
	}
	sb_free(&states);
}

struct cancel_ctx {
	struct rpc_call *call;
	uint64_t job_id, tenant;
};

static void cancel_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                      void *arg)
{
	struct cancel_ctx *cc = arg;
	if (st != PG_OK) {
		reply_pg_error(cc->call, st, sqlstate, err);
	} else if (PQntuples(res) != 1) {
		rpc_error(cc->call, RPC_NOT_FOUND, "job %" PRIu64 " not found", cc->job_id);
	} else {
		bool was_queued = !strcmp(PQgetvalue(res, 0, 1), "t");
		bool done = !strcmp(PQgetvalue(res, 0, 2), "t");
		struct app *a = app_get();
		if (was_queued)
			schedloop_job_cancelled(a, cc->job_id);
		else if (done)
			schedloop_job_ended(a, cc->job_id, false);
		outbox_kick(a);
		load_and_reply(cc->call, cc->job_id, cc->tenant);
	}
	free(cc);
}

void jobs_cancel(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__CancelJobRequest *req = (const Gpumatch__V1__CancelJobRequest *)msg;
	if (!req->job_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "jobId: required");
		return;
	}
	if (strlen(req->reason) > 512) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "reason: at most 512 bytes");
		return;
	}
	struct cancel_ctx *cc = malloc(sizeof *cc);
	if (!cc) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	cc->call = call;
	cc->job_id = req->job_id;
	cc->tenant = scope_tenant(call);
	const struct principal *who = rpc_principal(call);
	char reason[600];
	snprintf(reason, sizeof reason, "cancelled by %s%s%s",
	         who->role == ROLE_ADMIN ? "an admin" : "the tenant", *req->reason ? ": " : "",
	         req->reason);
	struct numbuf j, t, now, grace;
	const char *params[] = { fmt_u64(&j, req->job_id), fmt_u64(&t, cc->tenant),
		                 fmt_i64(&now, now_us()), fmt_i64(&grace, 30 * 1000000LL), reason };
	if (pg_exec(app_get()->pg, NULL,
	            "SELECT job_state, was_queued, job_done FROM gm_cancel_job($1::bigint,"
	            " $2::bigint, $3::bigint, $4::bigint, $5)",
	            5, params, cancel_cb, cc)) {
		free(cc);
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
	}
}

/* ExplainJob on a replica that is not the leader: the leader answers. */
struct explain_remote {
	struct rpc_call *call;
	struct explain_ask *ask;
	uint64_t job_id;
	Gpumatch__V1__JobState state;
};

static void explain_remote_cb(const Gpumatch__V1__Explanation *ex, int rc, void *arg)
{
	struct explain_remote *r = arg;
	if (rc == -ETIMEDOUT) {
		rpc_error(r->call, RPC_UNAVAILABLE,
		          "no answer from the scheduler leader (none elected yet?); retry");
	} else {
		Gpumatch__V1__ExplainJobResponse resp = GPUMATCH__V1__EXPLAIN_JOB_RESPONSE__INIT;
		resp.job_id = r->job_id;
		resp.state = r->state;
		resp.explanation = rc == 0 ? (Gpumatch__V1__Explanation *)ex : NULL;
		rpc_reply(r->call, &resp.base);
	}
	free(r);
}

static void explain_remote_abort(struct rpc_call *call, void *arg)
{
	(void)call;
	struct explain_remote *r = arg;
	schedloop_explain_ask_cancel(r->ask);
	free(r);
}

static void explain_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                       void *arg)
{
	struct rpc_call *call = arg;
	if (st != PG_OK) {
		reply_pg_error(call, st, sqlstate, err);
		return;
	}
	if (PQntuples(res) != 1) {
		rpc_error(call, RPC_NOT_FOUND, "job not found");
		return;
	}
	Gpumatch__V1__ExplainJobResponse resp = GPUMATCH__V1__EXPLAIN_JOB_RESPONSE__INIT;
	resp.job_id = col_u64(res, 0, 0);
	resp.state = (Gpumatch__V1__JobState)col_i64(res, 0, 1);
	struct explain_out ex;
	if (resp.state == GPUMATCH__V1__JOB_STATE__JOB_STATE_QUEUED) {
		int rc = schedloop_explain(app_get(), resp.job_id, &ex);
		struct explain_remote *r =
		    rc == -EAGAIN && !schedloop_is_leader(app_get()) ? calloc(1, sizeof *r) : NULL;
		if (r) {
			r->call = call;
			r->job_id = resp.job_id;
			r->state = resp.state;
			r->ask =
			    schedloop_explain_ask(app_get(), resp.job_id, explain_remote_cb, r);
			if (r->ask) {
				rpc_on_abort(call, explain_remote_abort, r);
				return;
			}
			free(r);
		}
		if (rc == -EAGAIN) {
			rpc_error(call, RPC_UNAVAILABLE,
			          "the scheduler is not running on this replica yet; retry");
			return;
		}
		if (rc == 0)
			resp.explanation = &ex.msg;
	}
	rpc_reply(call, &resp.base);
}

void jobs_explain(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__ExplainJobRequest *req = (const Gpumatch__V1__ExplainJobRequest *)msg;
	if (!req->job_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "jobId: required");
		return;
	}
	struct numbuf j, t;
	const char *params[] = { fmt_u64(&j, req->job_id), fmt_u64(&t, scope_tenant(call)) };
	if (pg_exec(app_get()->pg, NULL,
	            "SELECT id, state FROM jobs WHERE id = $1::bigint"
	            " AND ($2::bigint = 0 OR tenant_id = $2::bigint)",
	            2, params, explain_cb, call))
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
}

/* ---- lifecycle and metrics --------------------------------------------------------- */

int jobs_start(struct app *a, char *err, size_t err_len)
{
	(void)a;
	(void)err;
	(void)err_len;
	memset(&sub, 0, sizeof sub);
	return 0;
}

void jobs_stop(struct app *a)
{
	(void)a;
	while (sub.head) {
		struct submit *s = sub.head;
		sub.head = s->next;
		rpc_error(s->call, RPC_UNAVAILABLE, "shutting down");
		submit_free(s);
	}
	sub.tail = NULL;
	sub.queued = 0;
}

bool jobs_idle(struct app *a)
{
	(void)a;
	return !sub.inflight && !sub.queued;
}

void jobs_metrics(struct app *a, struct evbuffer *b)
{
	(void)a;
	evbuffer_add_printf(b,
	                    "# HELP gpumatch_submits_total SubmitJob calls accepted for writing.\n"
	                    "# TYPE gpumatch_submits_total counter\ngpumatch_submits_total %" PRIu64
	                    "\n# HELP gpumatch_jobs_created_total Jobs created.\n"
	                    "# TYPE gpumatch_jobs_created_total counter\n"
	                    "gpumatch_jobs_created_total %" PRIu64 "\n"
	                    "# HELP gpumatch_submit_batches_total Group-commit transactions.\n"
	                    "# TYPE gpumatch_submit_batches_total counter\n"
	                    "gpumatch_submit_batches_total %" PRIu64 "\n"
	                    "# HELP gpumatch_submit_key_repeats_total Submits answered from an "
	                    "earlier submit of the same key in the same batch.\n"
	                    "# TYPE gpumatch_submit_key_repeats_total counter\n"
	                    "gpumatch_submit_key_repeats_total %" PRIu64 "\n"
	                    "# HELP gpumatch_submit_latency_seconds Submit to durable reply.\n"
	                    "# TYPE gpumatch_submit_latency_seconds histogram\n",
	                    sub.submits, sub.created, sub.batches, sub.key_repeats);
	uint64_t cum = 0;
	size_t nb = sizeof latency_le_ms / sizeof latency_le_ms[0];
	for (size_t i = 0; i < nb; i++) {
		cum += sub.latency_bucket[i];
		evbuffer_add_printf(
		    b, "gpumatch_submit_latency_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
		    latency_le_ms[i] / 1000.0, cum);
	}
	cum += sub.latency_bucket[nb];
	evbuffer_add_printf(b,
	                    "gpumatch_submit_latency_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n"
	                    "gpumatch_submit_latency_seconds_sum %.6f\n"
	                    "gpumatch_submit_latency_seconds_count %" PRIu64 "\n",
	                    cum, sub.latency_sum_s, cum);
}
