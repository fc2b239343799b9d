/* simulate.c — AdminService.SimulatePolicy and ExportTrace: dry runs of
 * candidate policies on a snapshot of the live queue (built from Postgres
 * into private clusters, never the leader's), trace replays through the
 * simulator on a worker thread, and gpumatch's own history written in the
 * simulator's CSV format (docs/traces.md). Nothing here writes anything. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <threads.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "convert.h"
#include "gpumatch/v1/admin_service.pb-c.h"
#include "gpumatch/v1/node.pb-c.h"
#include "gpumatch/v1/policy.pb-c.h"
#include "log.h"
#include "service.h"
#include "sim.h"
#include "strbuf.h"
#include "trace.h"

#define MAX_CANDIDATES     8
#define MAX_DIFFS_DEFAULT  100
#define EXPORT_MAX_DEFAULT 100000
#define EXPORT_MAX_JOBS    1000000

/* Traces SimulatePolicy may replay by name, under cfg.traces_dir: job lists
 * replayed on the Alibaba v2023 GPU inventory with Gavel's job types. */
static const char *const shipped_traces[] = {
	"msr-itp/cluster01",
	"msr-itp/cluster02",
	"msr-itp/cluster03",
	"msr-itp/cluster04",
	"msr-itp/cluster05",
	"msr-itp/cluster06",
	"alibaba-gpu-v2023/openb_pod_list_default",
	"alibaba-gpu-v2023/openb_pod_list_gpuspec33",
};
#define TRACE_NODES "alibaba-gpu-v2023/openb_node_list_gpu_node.csv"
#define TRACE_TPUTS "gavel/isolated_throughputs_steps_per_sec.csv"
#define HISTORY     "history"
#define N_QUANTILES 21 /* 0 %, 5 %, ..., 100 % */

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- policies ---------------------------------------------------------------------- */

/* A candidate as the library takes it; answers invalid_argument naming the
 * field ("candidates[1].wPrice: ...") and returns -1 when it is not valid.
 * Enums must be set, as SetPolicy wants. */
static int candidate_policy(struct rpc_call *call, const Gpumatch__V1__Policy *m, size_t i,
                            struct sched_policy *out)
{
	if (!m) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "candidates[%zu]: required", i);
		return -1;
	}
	if (!m->fit_mode) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "candidates[%zu].fitMode: required (FIT_MODE_PACK or FIT_MODE_SPREAD)",
		          i);
		return -1;
	}
	if (!m->fairness) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "candidates[%zu].fairness: required (FAIRNESS_MODE_NONE or "
		          "FAIRNESS_MODE_FAIR_SHARE)",
		          i);
		return -1;
	}
	conv_policy_in(m, out);
	struct sched_error se;
	if (sched_policy_validate(out, &se)) {
		char camel[80];
		conv_camel(se.field, camel, sizeof camel);
		rpc_error(call, RPC_INVALID_ARGUMENT, "candidates[%zu].%s: %s", i, camel,
		          se.message);
		return -1;
	}
	return 0;
}

/* The active policy from its row (policy_pb), as the leader applies it. */
static void active_policy(const PGresult *res, struct sched_policy *p)
{
	sched_policy_recommended(p);
	p->allow_unverified = app_get()->cfg.allow_unverified;
	if (!res || PQntuples(res) != 1)
		return;
	size_t len;
	uint8_t *raw = col_bytea(res, 0, 0, &len);
	Gpumatch__V1__Policy *m = raw ? gpumatch__v1__policy__unpack(NULL, len, raw) : NULL;
	free(raw);
	if (!m)
		return;
	struct sched_policy q;
	conv_policy_in(m, &q);
	protobuf_c_message_free_unpacked(&m->base, NULL);
	if (sched_policy_validate(&q, NULL) == 0)
		*p = q;
}

/* ---- the request, shared by both sources ------------------------------------------------ */

struct simreq {
	struct rpc_call *call;
	const Gpumatch__V1__SimulatePolicyRequest *in;
	bool aborted;
	uint32_t n; /* policies: 0 = active */
	struct sched_policy pol[1 + MAX_CANDIDATES];
	uint32_t max_diffs;
	/* live */
	struct sched_cluster *c[1 + MAX_CANDIDATES];
	uint32_t nodes, jobs;
	/* trace */
	PGresult *hist_nodes; /* history: rows kept for the export */
	char *nodes_csv, *jobs_csv;
	bool trace;
	bool slot; /* holds the one trace replay slot */
	char trace_dir[512];
	char trace_name[128];
	int64_t win_start_us, win_end_us;
	uint64_t seed;
	double arrival_scale;
	bool all_preemptible; /* every trace job preemptible (MSR ITP only) */
	bool oracle_limits;   /* time limits equal run times */
	struct sim_result res[1 + MAX_CANDIDATES];
	double wall_s[1 + MAX_CANDIDATES];
	/* the distributions' quantiles (0 %, 5 %, ... 100 %), worked out on the
	 * replay's thread; n = 0 when no job completed or started */
	int64_t jct_q[1 + MAX_CANDIDATES][N_QUANTILES], wait_q[1 + MAX_CANDIDATES][N_QUANTILES];
	size_t n_jct_q[1 + MAX_CANDIDATES], n_wait_q[1 + MAX_CANDIDATES];
	uint32_t trace_jobs, trace_nodes;
	int rc;
	char err[512];
	int pipefd[2];
	struct event *done_ev;
	thrd_t thread;
};

static bool trace_running; /* one trace replay at a time */

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

/* Quantiles 0 %, 5 %, ..., 100 % of v[0..n) (sorted in place, nearest
 * rank); returns how many were written (0 when n is 0). */
static size_t quantiles(int64_t *v, size_t n, int64_t *q)
{
	if (!n)
		return 0;
	qsort(v, n, sizeof *v, cmp_i64);
	for (size_t i = 0; i < N_QUANTILES; i++) {
		size_t k = (size_t)((double)(n - 1) * (double)i / (N_QUANTILES - 1) + 0.5);
		q[i] = v[k];
	}
	return N_QUANTILES;
}

/* The JCT (submit to end, finished jobs) and wait (submit to first start,
 * started jobs) distributions of one replay. */
static void trace_quantiles(struct simreq *s, uint32_t i)
{
	const struct sim_result *r = &s->res[i];
	int64_t *jct = calloc((size_t)r->jobs + 1, sizeof *jct);
	int64_t *wait = calloc((size_t)r->jobs + 1, sizeof *wait);
	size_t nj = 0, nw = 0;
	for (uint32_t k = 0; jct && wait && k < r->jobs; k++) {
		const struct sim_job_out *o = &r->per_job[k];
		if (o->finished)
			jct[nj++] = o->end_us - o->submit_us;
		if (o->started)
			wait[nw++] = o->first_start_us - o->submit_us;
	}
	s->n_jct_q[i] = jct ? quantiles(jct, nj, s->jct_q[i]) : 0;
	s->n_wait_q[i] = wait ? quantiles(wait, nw, s->wait_q[i]) : 0;
	free(jct);
	free(wait);
}

static void simreq_free(struct simreq *s)
{
	if (!s)
		return;
	if (s->slot)
		trace_running = false;
	for (uint32_t i = 0; i < s->n; i++) {
		sched_cluster_free(s->c[i]);
		sim_result_free(&s->res[i]);
	}
	if (s->hist_nodes)
		PQclear(s->hist_nodes);
	free(s->nodes_csv);
	free(s->jobs_csv);
	free(s);
}

static void simreq_abort_cb(struct rpc_call *call, void *arg)
{
	(void)call;
	struct simreq *s = arg;
	s->aborted = true;
}

/* After a query: false (and s freed, or left to the thread) when the call
 * is gone or the query failed (answered). */
static bool step_ok(struct simreq *s, enum pg_status st, const char *ss, const char *err)
{
	if (s->aborted) {
		simreq_free(s);
		return false;
	}
	if (st != PG_OK) {
		reply_pg_error(s->call, st, ss, err);
		simreq_free(s);
		return false;
	}
	return true;
}

static bool exec_step(struct simreq *s, const char *sql, int n, const char *const *params, pg_cb cb)
{
	if (pg_exec(app_get()->pg, NULL, sql, n, params, cb, s)) {
		rpc_error(s->call, RPC_UNAVAILABLE, "the record store is unavailable, retry later");
		simreq_free(s);
		return false;
	}
	return true;
}

/* ---- live: one cycle per policy on a snapshot ------------------------------------------- */

struct placed {
	uint64_t job;
	uint64_t nodes[SCHED_MAX_GANG_NODES];
	uint32_t nnodes;
};

static int cmp_placed(const void *a, const void *b)
{
	uint64_t x = ((const struct placed *)a)->job, y = ((const struct placed *)b)->job;
	return (x > y) - (x < y);
}

struct outcome {
	struct placed *v;
	uint32_t n;
	uint32_t preempted, unschedulable;
	int64_t cycle_us;
};

/* Runs one cycle on c at now and lists the placements by job id. */
static int live_cycle(struct sched_cluster *c, int64_t now, struct outcome *o)
{
	struct sched_actions acts = { 0 };
	memset(o, 0, sizeof *o);
	double t0 = mono_s();
	int rc = sched_cycle(c, now, &acts, NULL);
	o->cycle_us = (int64_t)((mono_s() - t0) * 1e6);
	if (rc) {
		sched_actions_free(c, &acts);
		return rc;
	}
	o->v = calloc(acts.len ? acts.len : 1, sizeof *o->v);
	if (!o->v) {
		sched_actions_free(c, &acts);
		return -ENOMEM;
	}
	for (size_t i = 0; i < acts.len; i++) {
		const struct sched_action *a = &acts.items[i];
		if (a->kind == SCHED_ACT_PREEMPT) {
			o->preempted++;
		} else if (a->kind == SCHED_ACT_UNSCHEDULABLE) {
			o->unschedulable++;
		} else if (a->kind == SCHED_ACT_START) {
			if (a->gang_index == 0)
				o->v[o->n++].job = a->job_id;
			struct placed *p = &o->v[o->n - 1];
			if (p->nnodes < SCHED_MAX_GANG_NODES)
				p->nodes[p->nnodes++] = a->node_id;
		}
	}
	sched_actions_free(c, &acts);
	qsort(o->v, o->n, sizeof *o->v, cmp_placed);
	return 0;
}

static const struct placed *find_placed(const struct outcome *o, uint64_t job)
{
	struct placed key = { .job = job };
	return bsearch(&key, o->v, o->n, sizeof *o->v, cmp_placed);
}

static bool same_place(const struct placed *a, const struct placed *b)
{
	if (!a || !b)
		return a == b;
	return a->nnodes == b->nnodes &&
	       !memcmp(a->nodes, b->nodes, a->nnodes * sizeof a->nodes[0]);
}

/* Response storage for one policy's result. */
struct result_out {
	Gpumatch__V1__PolicySimulationResult r;
	Gpumatch__V1__Policy policy;
	Gpumatch__V1__SimulationMetrics m;
	Gpumatch__V1__PlacementDiff *diffs;
	Gpumatch__V1__PlacementDiff **dptrs;
	uint64_t *ids; /* node ids of the diffs, two runs per diff */
};

static void result_init(struct result_out *o, uint32_t index, const struct sched_policy *p)
{
	memset(o, 0, sizeof *o);
	gpumatch__v1__policy_simulation_result__init(&o->r);
	gpumatch__v1__policy__init(&o->policy);
	gpumatch__v1__simulation_metrics__init(&o->m);
	conv_policy_out(p, &o->policy);
	o->r.candidate_index = index;
	o->r.policy = &o->policy;
	o->r.metrics = &o->m;
}

static void result_free(struct result_out *o)
{
	free(o->diffs);
	free(o->dptrs);
	free(o->ids);
}

/* Diffs of cand against base over every job either placed, at most max. */
static int live_diff(const struct outcome *base, const struct outcome *cand, int64_t now,
                     uint32_t max, struct result_out *o)
{
	uint32_t cap = base->n + cand->n;
	o->diffs = calloc(cap ? cap : 1, sizeof *o->diffs);
	o->dptrs = calloc(cap ? cap : 1, sizeof *o->dptrs);
	o->ids = calloc(cap ? (size_t)cap * 2 * SCHED_MAX_GANG_NODES : 1, sizeof *o->ids);
	if (!o->diffs || !o->dptrs || !o->ids)
		return -1;
	uint32_t count = 0, shown = 0;
	/* walk both sorted lists */
	uint32_t i = 0, j = 0;
	while (i < base->n || j < cand->n) {
		uint64_t job;
		if (j >= cand->n || (i < base->n && base->v[i].job < cand->v[j].job))
			job = base->v[i].job;
		else
			job = cand->v[j].job;
		const struct placed *a = find_placed(base, job), *b = find_placed(cand, job);
		if (a && a->job == job)
			i++;
		if (b && b->job == job)
			j++;
		if (same_place(a, b))
			continue;
		count++;
		if (shown >= max)
			continue;
		Gpumatch__V1__PlacementDiff *d = &o->diffs[shown];
		gpumatch__v1__placement_diff__init(d);
		d->job_id = job;
		uint64_t *ids = &o->ids[(size_t)shown * 2 * SCHED_MAX_GANG_NODES];
		if (a) {
			memcpy(ids, a->nodes, a->nnodes * sizeof *ids);
			d->baseline_node_ids = ids;
			d->n_baseline_node_ids = a->nnodes;
			d->baseline_start_us = now;
		}
		if (b) {
			memcpy(ids + SCHED_MAX_GANG_NODES, b->nodes, b->nnodes * sizeof *ids);
			d->candidate_node_ids = ids + SCHED_MAX_GANG_NODES;
			d->n_candidate_node_ids = b->nnodes;
			d->candidate_start_us = now;
		}
		o->dptrs[shown++] = d;
	}
	o->r.diffs = o->dptrs;
	o->r.n_diffs = shown;
	o->r.diff_count = count;
	return 0;
}

static void live_metrics(const struct outcome *o, uint32_t pending, struct result_out *r)
{
	r->m.jobs_total = pending;
	r->m.jobs_placed = o->n;
	r->m.jobs_unschedulable = o->unschedulable;
	r->m.jobs_pending = pending - o->n - o->unschedulable;
	r->m.preemptions = o->preempted;
	r->m.cycles = 1;
	r->m.cycle_time_mean_us = o->cycle_us;
}

static void live_finish(struct simreq *s)
{
	int64_t now = now_us();
	struct sched_stats st;
	sched_get_stats(s->c[0], &st);
	uint32_t pending = st.jobs_pending;
	struct outcome oc[1 + MAX_CANDIDATES];
	struct result_out ro[1 + MAX_CANDIDATES];
	Gpumatch__V1__PolicySimulationResult *cptrs[MAX_CANDIDATES];
	memset(oc, 0, sizeof oc);
	uint32_t done = 0;
	bool failed = false;
	for (; done < s->n; done++) {
		if (live_cycle(s->c[done], now, &oc[done])) {
			failed = true;
			break;
		}
	}
	for (uint32_t i = 0; !failed && i < s->n; i++) {
		result_init(&ro[i], i ? i - 1 : 0, &s->pol[i]);
		live_metrics(&oc[i], pending, &ro[i]);
		if (i && live_diff(&oc[0], &oc[i], now, s->max_diffs, &ro[i]))
			failed = true;
		if (i)
			cptrs[i - 1] = &ro[i].r;
	}
	if (failed) {
		rpc_error(s->call, RPC_INTERNAL, "out of memory");
	} else {
		Gpumatch__V1__SimulatePolicyResponse out =
		    GPUMATCH__V1__SIMULATE_POLICY_RESPONSE__INIT;
		out.baseline = &ro[0].r;
		out.candidates = cptrs;
		out.n_candidates = s->n - 1;
		out.jobs_simulated = pending;
		out.nodes_simulated = st.nodes;
		out.simulated_at_us = now;
		log_info("policy simulated source=live candidates=%u jobs=%u nodes=%u by=%" PRIu64,
		         s->n - 1, pending, st.nodes, rpc_principal(s->call)->token_id);
		rpc_reply(s->call, &out.base);
	}
	for (uint32_t i = 0; i < s->n; i++) {
		free(oc[i].v);
		if (!failed)
			result_free(&ro[i]);
	}
	simreq_free(s);
}

static void live_queued_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                           void *arg)
{
	struct simreq *s = arg;
	if (!step_ok(s, st, ss, err))
		return;
	for (int i = 0; i < PQntuples(res); i++)
		for (uint32_t k = 0; k < s->n; k++)
			schedloop_add_job_row(s->c[k], res, i, 0, 1, 2, 3);
	live_finish(s);
}

static void live_leases_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                           void *arg)
{
	struct simreq *s = arg;
	if (!step_ok(s, st, ss, err))
		return;
	/* rows: job_id, node_id, gpu_mask, assigned_at_us, tenant, spec, submitted */
	int rows = PQntuples(res);
	for (int i = 0; i < rows;) {
		uint64_t job = col_u64(res, i, 0);
		struct sched_placement pl[SCHED_MAX_GANG_NODES];
		uint32_t n = 0;
		int j = i;
		for (; j < rows && col_u64(res, j, 0) == job; j++)
			if (n < SCHED_MAX_GANG_NODES)
				pl[n++] = (struct sched_placement){ col_u64(res, j, 1),
					                            col_u64(res, j, 2) };
		for (uint32_t k = 0; k < s->n; k++) {
			if (schedloop_add_job_row(s->c[k], res, i, 0, 4, 5, 6) == 0) {
				struct sched_error se;
				if (sched_lease_start(s->c[k], job, pl, n, col_i64(res, i, 3), &se))
					sched_job_cancel(s->c[k], job, now_us());
			}
		}
		i = j;
	}
	exec_step(s,
	          "SELECT id, tenant_id, spec_pb, submitted_at_us FROM jobs WHERE state = 1 "
	          "ORDER BY id",
	          0, NULL, live_queued_cb);
}

static void live_nodes_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                          void *arg)
{
	struct simreq *s = arg;
	if (!step_ok(s, st, ss, err))
		return;
	for (int i = 0; i < PQntuples(res); i++)
		for (uint32_t k = 0; k < s->n; k++)
			schedloop_upsert_node_row(s->c[k], res, i);
	exec_step(
	    s,
	    "SELECT l.job_id, l.node_id, l.gpu_mask, l.assigned_at_us, j.tenant_id, j.spec_pb,"
	    " j.submitted_at_us FROM leases l JOIN jobs j ON j.id = l.job_id"
	    " WHERE l.state BETWEEN 1 AND 4 ORDER BY l.job_id, l.gang_index",
	    0, NULL, live_leases_cb);
}

static void live_tenants_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                            void *arg)
{
	struct simreq *s = arg;
	if (!step_ok(s, st, ss, err))
		return;
	for (int i = 0; i < PQntuples(res); i++)
		for (uint32_t k = 0; k < s->n; k++)
			sched_tenant_set_shares(s->c[k], col_u64(res, i, 0),
			                        (uint32_t)col_i64(res, i, 1));
	exec_step(s, "SELECT " SCHEDLOOP_NODE_COLS " FROM nodes WHERE state <> 6", 0, NULL,
	          live_nodes_cb);
}

static void live_start(struct simreq *s)
{
	for (uint32_t k = 0; k < s->n; k++) {
		struct sched_error se;
		s->c[k] = sched_cluster_new(NULL);
		if (!s->c[k] || sched_set_policy(s->c[k], &s->pol[k], &se)) {
			rpc_error(s->call, RPC_INTERNAL, "out of memory");
			simreq_free(s);
			return;
		}
	}
	exec_step(s, "SELECT id, fair_share_weight FROM tenants", 0, NULL, live_tenants_cb);
}

/* ---- history export ------------------------------------------------------------------------- */

/* Appends s as a CSV field: quoted when it holds a comma, quote or newline;
 * control characters dropped. */
static void csv_field(struct strbuf *b, const char *s)
{
	bool quote = strpbrk(s, ",\"\n\r") != NULL;
	if (!quote) {
		sb_puts(b, s);
		return;
	}
	sb_puts(b, "\"");
	for (const char *p = s; *p; p++) {
		if (*p == '"')
			sb_puts(b, "\"\"");
		else if ((unsigned char)*p >= 0x20)
			sb_printf(b, "%c", *p);
	}
	sb_puts(b, "\"");
}

#define EXPORT_NODE_SQL                                                             \
	"SELECT id, region, price_micros, verification_status, facts_pb FROM nodes" \
	" WHERE state <> 6 ORDER BY id"
#define EXPORT_JOB_SQL                                                                      \
	"SELECT id, tenant_id, submitted_at_us, spec_pb, state, started_at_us, ended_at_us" \
	" FROM jobs WHERE submitted_at_us >= $1::bigint AND submitted_at_us < $2::bigint"   \
	" ORDER BY submitted_at_us, id LIMIT $3::bigint"

/* Node rows as gpumatch's nodes CSV: one line per node, the first GPU's
 * model and figures (verified when the node is, else claimed). */
static uint32_t export_nodes(const PGresult *res, struct strbuf *b)
{
	uint32_t n = 0;
	sb_puts(b, TRACE_GM_NODES_HEADER "\n");
	for (int i = 0; i < PQntuples(res); i++) {
		size_t len;
		uint8_t *raw = col_bytea(res, i, 4, &len);
		Gpumatch__V1__Node *node = raw ? gpumatch__v1__node__unpack(NULL, len, raw) : NULL;
		free(raw);
		if (!node)
			continue;
		if (node->n_gpus && node->n_gpus <= SCHED_MAX_GPUS_PER_NODE &&
		    node->gpus[0]->model && *node->gpus[0]->model) {
			const Gpumatch__V1__Gpu *g = node->gpus[0];
			bool verified =
			    col_i64(res, i, 3) ==
			    GPUMATCH__V1__VERIFICATION_STATUS__VERIFICATION_STATUS_VERIFIED;
			const Gpumatch__V1__Throughput *t =
			    verified && g->verified ? g->verified : g->claimed;
			uint32_t cc =
			    g->compute_capability_major * 10 + g->compute_capability_minor;
			sb_printf(b, "%" PRIu64 ",", col_u64(res, i, 0));
			csv_field(b, *PQgetvalue(res, i, 1) ? PQgetvalue(res, i, 1) : "default");
			sb_puts(b, ",");
			csv_field(b, g->model);
			sb_printf(b, ",%zu,%u,%u,%g,%g,%g,%g,%g,%" PRId64 "\n", node->n_gpus,
			          g->memory_mib ? g->memory_mib : 1,
			          cc < 30    ? 30
			          : cc > 150 ? 150
			                     : cc,
			          t ? t->fp32_tflops : 0, t ? t->tf32_tflops : 0,
			          t ? t->fp16_tflops : 0, t ? t->bf16_tflops : 0,
			          t ? t->fp8_tflops : 0,
			          col_i64(res, i, 2) > 0 ? col_i64(res, i, 2) : 1);
			n++;
		}
		protobuf_c_message_free_unpacked(&node->base, NULL);
	}
	return n;
}

/* Job rows as gpumatch's jobs CSV. Duration: the time the job ran when it
 * ran (succeeded, failed, preempted: ended - started); its max duration
 * while queued or running (an upper bound); jobs cancelled before they
 * started are left out. */
static uint32_t export_jobs(const PGresult *res, struct strbuf *b)
{
	uint32_t n = 0;
	sb_puts(b, TRACE_GM_JOBS_HEADER "\n");
	for (int i = 0; i < PQntuples(res); i++) {
		size_t len;
		uint8_t *raw = col_bytea(res, i, 3, &len);
		Gpumatch__V1__JobSpec *spec =
		    raw ? gpumatch__v1__job_spec__unpack(NULL, len, raw) : NULL;
		free(raw);
		if (!spec)
			continue;
		int state = (int)col_i64(res, i, 4);
		int64_t started = col_i64(res, i, 5), ended = col_i64(res, i, 6);
		int64_t dur = 0;
		if (started > 0 && ended > started)
			dur = ended - started;
		else if (state == GPUMATCH__V1__JOB_STATE__JOB_STATE_QUEUED ||
		         state == GPUMATCH__V1__JOB_STATE__JOB_STATE_RUNNING ||
		         state == GPUMATCH__V1__JOB_STATE__JOB_STATE_STOPPING)
			dur = spec->max_duration_us;
		uint32_t nodes = spec->node_count ? spec->node_count : 1;
		if (dur > 0 && spec->gpus_per_node >= 1 &&
		    spec->gpus_per_node <= SCHED_MAX_GPUS_PER_NODE &&
		    nodes <= SCHED_MAX_GANG_NODES) {
			if (dur > (int64_t)366 * 86400 * 1000000)
				dur = (int64_t)366 * 86400 * 1000000;
			uint32_t prio = spec->priority_class ? spec->priority_class - 1 : 2;
			char type[TRACE_NAME_BYTES];
			snprintf(type, sizeof type, "%s", spec->job_type ? spec->job_type : "");
			sb_printf(b, "%" PRIu64 ",%" PRIu64 ",%" PRId64 ",%" PRId64 ",%u,%u,%u,%d,",
			          col_u64(res, i, 0), col_u64(res, i, 1), col_i64(res, i, 2), dur,
			          spec->gpus_per_node, nodes, prio > 4 ? 4 : prio,
			          spec->preemptible);
			csv_field(b, type);
			sb_puts(b, "\n");
			n++;
		}
		protobuf_c_message_free_unpacked(&spec->base, NULL);
	}
	return n;
}

struct exportq {
	struct rpc_call *call;
	bool aborted;
	PGresult *nodes; /* kept until the jobs arrive */
	uint32_t limit;
	int64_t start_us, end_us;
	struct simreq *sim; /* SimulatePolicy on "history"; NULL for ExportTrace */
};

static bool export_gone(const struct exportq *q)
{
	return q->sim ? q->sim->aborted : q->aborted;
}

static void export_abort_cb(struct rpc_call *call, void *arg)
{
	(void)call;
	((struct exportq *)arg)->aborted = true;
}

static void trace_start_thread(struct simreq *s);

static void export_jobs_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                           void *arg)
{
	struct exportq *q = arg;
	struct simreq *sim = q->sim;
	bool gone = export_gone(q);
	if (gone || st != PG_OK) {
		if (!gone)
			reply_pg_error(q->call, st, ss, err);
		PQclear(q->nodes);
		if (sim)
			simreq_free(sim);
		free(q);
		return;
	}
	if ((uint32_t)PQntuples(res) > q->limit) {
		rpc_error(q->call, RPC_FAILED_PRECONDITION,
		          "window: more than %u jobs were submitted in it; narrow the window or "
		          "raise maxJobs",
		          q->limit);
		PQclear(q->nodes);
		if (sim)
			simreq_free(sim);
		free(q);
		return;
	}
	struct strbuf nb = { 0 }, jb = { 0 };
	uint32_t nn = export_nodes(q->nodes, &nb);
	uint32_t nj = export_jobs(res, &jb);
	PQclear(q->nodes);
	if (nb.oom || jb.oom) {
		rpc_error(q->call, RPC_INTERNAL, "out of memory");
		sb_free(&nb);
		sb_free(&jb);
		if (sim)
			simreq_free(sim);
		free(q);
		return;
	}
	if (sim) {
		sim->nodes_csv = nb.s;
		sim->jobs_csv = jb.s;
		free(q);
		trace_start_thread(sim);
		return;
	}
	Gpumatch__V1__ExportTraceResponse out = GPUMATCH__V1__EXPORT_TRACE_RESPONSE__INIT;
	out.nodes_csv = nb.s ? nb.s : "";
	out.jobs_csv = jb.s ? jb.s : "";
	out.nodes = nn;
	out.jobs = nj;
	out.exported_at_us = now_us();
	log_info("trace exported nodes=%u jobs=%u by=%" PRIu64, nn, nj,
	         rpc_principal(q->call)->token_id);
	rpc_reply(q->call, &out.base);
	sb_free(&nb);
	sb_free(&jb);
	free(q);
}

static void export_nodes_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                            void *arg)
{
	struct exportq *q = arg;
	struct simreq *sim = q->sim;
	bool gone = export_gone(q);
	/* the pool clears res after this callback: keep a copy */
	if (!gone && st == PG_OK)
		q->nodes = PQcopyResult(res, PG_COPYRES_ATTRS | PG_COPYRES_TUPLES);
	if (gone || st != PG_OK || !q->nodes) {
		if (!gone && st != PG_OK)
			reply_pg_error(q->call, st, ss, err);
		else if (!gone)
			rpc_error(q->call, RPC_INTERNAL, "out of memory");
		if (sim)
			simreq_free(sim);
		free(q);
		return;
	}
	struct numbuf a, b, c;
	const char *params[] = { fmt_i64(&a, q->start_us), fmt_i64(&b, q->end_us),
		                 fmt_u64(&c, (uint64_t)q->limit + 1) };
	if (pg_exec(app_get()->pg, NULL, EXPORT_JOB_SQL, 3, params, export_jobs_cb, q)) {
		rpc_error(q->call, RPC_UNAVAILABLE, "the record store is unavailable, retry later");
		PQclear(q->nodes);
		if (sim)
			simreq_free(sim);
		free(q);
	}
}

/* Starts the export of the window; answers the call itself on failure. */
static void export_begin(struct rpc_call *call, const Gpumatch__V1__TimeWindow *w, uint32_t limit,
                         struct simreq *sim)
{
	struct exportq *q = calloc(1, sizeof *q);
	if (!q) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		if (sim)
			simreq_free(sim);
		return;
	}
	q->call = call;
	q->limit = limit;
	q->sim = sim;
	q->start_us = w ? w->start_us : 0;
	q->end_us = w && w->end_us ? w->end_us : now_us() + 1;
	if (!sim)
		rpc_on_abort(call, export_abort_cb, q);
	if (pg_exec(app_get()->pg, NULL, EXPORT_NODE_SQL, 0, NULL, export_nodes_cb, q)) {
		rpc_error(call, RPC_UNAVAILABLE, "the record store is unavailable, retry later");
		if (sim)
			simreq_free(sim);
		free(q);
	}
}

void simulate_export_trace(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__ExportTraceRequest *in = (const void *)req;
	if (in->window && in->window->end_us && in->window->end_us <= in->window->start_us) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "window.endUs: must be after window.startUs");
		return;
	}
	if (in->max_jobs > EXPORT_MAX_JOBS) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "maxJobs: must be at most %u, got %u",
		          EXPORT_MAX_JOBS, in->max_jobs);
		return;
	}
	export_begin(call, in->window, in->max_jobs ? in->max_jobs : EXPORT_MAX_DEFAULT, NULL);
}

/* ---- trace replays on a worker thread ------------------------------------------------------------ */

/* Reads the inputs and runs every policy; touches nothing of the server's
 * but s. */
static int trace_thread(void *arg)
{
	struct simreq *s = arg;
	struct trace_fleet fleet;
	struct trace_jobs jobs;
	struct trace_tputs tp;
	struct speed_model sm;
	bool have_tp = false;
	memset(&sm, 0, sizeof sm);
	memset(&fleet, 0, sizeof fleet);
	memset(&jobs, 0, sizeof jobs);
	memset(&tp, 0, sizeof tp);
	s->rc = -1;
	if (s->nodes_csv) {
		if (trace_parse_nodes("history nodes", s->nodes_csv, &fleet, s->err,
		                      sizeof s->err) ||
		    trace_parse_jobs("history jobs", s->jobs_csv, &jobs, s->err, sizeof s->err))
			goto out;
	} else {
		char path[1024];
		snprintf(path, sizeof path, "%s/%s", s->trace_dir, TRACE_NODES);
		if (trace_read_nodes(path, &fleet, s->err, sizeof s->err))
			goto out;
		snprintf(path, sizeof path, "%s/%s.csv", s->trace_dir, s->trace_name);
		if (trace_read_jobs(path, &jobs, s->err, sizeof s->err))
			goto out;
		snprintf(path, sizeof path, "%s/%s", s->trace_dir, TRACE_TPUTS);
		if (trace_read_tputs(path, &tp, s->err, sizeof s->err))
			goto out;
		have_tp = true;
		/* the window is an offset range from the trace's first arrival */
		int64_t first = INT64_MAX;
		for (uint32_t i = 0; i < jobs.n; i++)
			if (jobs.v[i].submit_us < first)
				first = jobs.v[i].submit_us;
		uint32_t m = 0;
		for (uint32_t i = 0; i < jobs.n; i++) {
			int64_t off = jobs.v[i].submit_us - first;
			if (off >= s->win_start_us && (!s->win_end_us || off < s->win_end_us))
				jobs.v[m++] = jobs.v[i];
		}
		jobs.n = m;
		for (uint32_t i = 0; s->all_preemptible && i < jobs.n; i++)
			jobs.v[i].preemptible = true;
	}
	s->trace_jobs = jobs.n;
	s->trace_nodes = fleet.nnodes;
	if (!jobs.n) {
		snprintf(s->err, sizeof s->err, "window: no jobs of the trace fall in it");
		goto out;
	}
	/* the shipped speed model: speeds on GPU models the throughput table
	 * does not measure (as gpumatch-sim uses it by default) */
	if (have_tp &&
	    speed_model_read(GPUMATCH_DATA_DIR "/speed-model.csv",
	                     GPUMATCH_DATA_DIR "/gpu-roofline.csv", &sm, s->err, sizeof s->err))
		goto out;
	for (uint32_t i = 0; i < s->n; i++) {
		struct sim_config cfg;
		sim_config_default(&cfg);
		cfg.fleet = &fleet;
		cfg.jobs = &jobs;
		cfg.tputs = have_tp ? &tp : NULL;
		cfg.model = have_tp ? &sm : NULL;
		if (s->oracle_limits)
			cfg.limit_overestimate = 1;
		cfg.policy = s->pol[i];
		cfg.seed = s->seed;
		cfg.arrival_scale = s->arrival_scale;
		double t0 = mono_s();
		if (sim_run(&cfg, &s->res[i], s->err, sizeof s->err))
			goto out;
		s->wall_s[i] = mono_s() - t0;
		trace_quantiles(s, i);
	}
	s->rc = 0;
out:
	trace_fleet_free(&fleet);
	trace_jobs_free(&jobs);
	trace_tputs_free(&tp);
	speed_model_free(&sm);
	ssize_t w;
	do
		w = write(s->pipefd[1], "x", 1);
	while (w < 0 && errno == EINTR);
	return 0;
}

static void trace_metrics(const struct sim_result *r, double wall_s,
                          Gpumatch__V1__SimulationMetrics *m)
{
	m->jobs_total = r->jobs;
	m->jobs_completed = r->completed;
	m->jobs_pending = r->unfinished;
	m->jobs_unschedulable = r->unschedulable;
	uint32_t started = 0;
	for (uint32_t i = 0; i < r->jobs; i++)
		started += r->per_job[i].started;
	m->jobs_placed = started;
	m->preemptions = r->preemptions;
	m->wait_mean_us = (int64_t)(r->avg_wait_s * 1e6);
	m->gpu_utilization_ppm = (uint32_t)(r->gpu_utilization * 1e6);
	m->fairness_jain_ppm = (uint32_t)(r->jain_fairness * 1e6);
	m->cycles = (uint32_t)(r->cycles > UINT32_MAX ? UINT32_MAX : r->cycles);
	m->revenue_micros = r->cost_micros;
	m->cost_micros = r->cost_micros;
	m->jct_mean_us = (int64_t)(r->avg_jct_s * 1e6);
	m->jct_p50_us = (int64_t)(r->p50_jct_s * 1e6);
	m->jct_p99_us = (int64_t)(r->p99_jct_s * 1e6);
	m->makespan_us = (int64_t)(r->makespan_s * 1e6);
	m->sim_seconds_per_wall_second = wall_s > 0 ? r->sim_seconds / wall_s : 0;
	m->effective_throughput_ppm =
	    (uint32_t)(r->effective_throughput * 1e6 < 2e9 ? r->effective_throughput * 1e6 : 2e9);
	m->useful_utilization_ppm = (uint32_t)(r->gpu_utilization_useful * 1e6);
}

static void trace_done_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)ev;
	struct simreq *s = arg;
	char c;
	while (read(fd, &c, 1) < 0 && errno == EINTR)
		;
	thrd_join(s->thread, NULL);
	event_free(s->done_ev);
	close(s->pipefd[0]);
	close(s->pipefd[1]);
	if (s->aborted) {
		simreq_free(s);
		return;
	}
	if (s->rc) {
		rpc_error(s->call,
		          strstr(s->err, "cannot open") ? RPC_FAILED_PRECONDITION
		                                        : RPC_INVALID_ARGUMENT,
		          "%s", s->err);
		simreq_free(s);
		return;
	}
	struct result_out ro[1 + MAX_CANDIDATES];
	Gpumatch__V1__PolicySimulationResult *cptrs[MAX_CANDIDATES];
	for (uint32_t i = 0; i < s->n; i++) {
		result_init(&ro[i], i ? i - 1 : 0, &s->pol[i]);
		trace_metrics(&s->res[i], s->wall_s[i], &ro[i].m);
		ro[i].m.n_jct_quantiles_us = s->n_jct_q[i];
		ro[i].m.jct_quantiles_us = s->jct_q[i];
		ro[i].m.n_wait_quantiles_us = s->n_wait_q[i];
		ro[i].m.wait_quantiles_us = s->wait_q[i];
		if (i)
			cptrs[i - 1] = &ro[i].r;
	}
	Gpumatch__V1__SimulatePolicyResponse out = GPUMATCH__V1__SIMULATE_POLICY_RESPONSE__INIT;
	out.baseline = &ro[0].r;
	out.candidates = cptrs;
	out.n_candidates = s->n - 1;
	out.jobs_simulated = s->trace_jobs;
	out.nodes_simulated = s->trace_nodes;
	out.simulated_at_us = now_us();
	log_info("policy simulated source=trace trace=%s candidates=%u jobs=%u by=%" PRIu64,
	         s->trace_name, s->n - 1, s->trace_jobs, rpc_principal(s->call)->token_id);
	rpc_reply(s->call, &out.base);
	simreq_free(s);
}

static void trace_start_thread(struct simreq *s)
{
	if (pipe(s->pipefd)) {
		rpc_error(s->call, RPC_INTERNAL, "cannot start the simulation");
		simreq_free(s);
		return;
	}
	s->done_ev = event_new(app_get()->base, s->pipefd[0], EV_READ, trace_done_cb, s);
	if (!s->done_ev || event_add(s->done_ev, NULL) ||
	    thrd_create(&s->thread, trace_thread, s) != thrd_success) {
		if (s->done_ev)
			event_free(s->done_ev);
		close(s->pipefd[0]);
		close(s->pipefd[1]);
		rpc_error(s->call, RPC_INTERNAL, "cannot start the simulation");
		simreq_free(s);
	}
}

/* ---- the request ------------------------------------------------------------------------------ */

static void policy_row_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                          void *arg)
{
	struct simreq *s = arg;
	bool trace = s->trace;
	if (s->aborted || st != PG_OK) {
		if (!s->aborted)
			reply_pg_error(s->call, st, ss, err);
		simreq_free(s);
		return;
	}
	active_policy(res, &s->pol[0]);
	if (!trace) {
		live_start(s);
		return;
	}
	if (!strcmp(s->trace_name, HISTORY)) {
		export_begin(s->call, s->in->window, EXPORT_MAX_DEFAULT, s);
		return;
	}
	trace_start_thread(s);
}

void simulate_policy(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__SimulatePolicyRequest *in = (const void *)req;
	if (in->n_candidates < 1 || in->n_candidates > MAX_CANDIDATES) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "candidates: give 1 to %d policies, got %zu",
		          MAX_CANDIDATES, in->n_candidates);
		return;
	}
	bool trace = in->source == GPUMATCH__V1__SIMULATION_SOURCE__SIMULATION_SOURCE_TRACE;
	if (!trace && in->source != GPUMATCH__V1__SIMULATION_SOURCE__SIMULATION_SOURCE_LIVE) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "source: required (SIMULATION_SOURCE_LIVE or SIMULATION_SOURCE_TRACE)");
		return;
	}
	if (!trace && in->preemptible) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "preemptible: only with SIMULATION_SOURCE_TRACE (live jobs carry their "
		          "own flag)");
		return;
	}
	struct simreq *s = calloc(1, sizeof *s);
	if (!s) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	s->call = call;
	s->in = in;
	s->n = (uint32_t)in->n_candidates + 1;
	s->max_diffs = in->max_diffs ? in->max_diffs : MAX_DIFFS_DEFAULT;
	for (size_t i = 0; i < in->n_candidates; i++) {
		if (candidate_policy(call, in->candidates[i], i, &s->pol[i + 1])) {
			free(s);
			return;
		}
	}
	if (trace) {
		const char *name = in->trace_name ? in->trace_name : "";
		bool known = !strcmp(name, HISTORY);
		for (size_t i = 0; !known && i < sizeof shipped_traces / sizeof shipped_traces[0];
		     i++)
			known = !strcmp(name, shipped_traces[i]);
		if (!known) {
			rpc_error(call, *name ? RPC_NOT_FOUND : RPC_INVALID_ARGUMENT,
			          "traceName: %s; use \"history\" or one of msr-itp/cluster01.."
			          "msr-itp/cluster06, alibaba-gpu-v2023/openb_pod_list_default, "
			          "alibaba-gpu-v2023/openb_pod_list_gpuspec33",
			          *name ? "no such trace"
			                : "required with SIMULATION_SOURCE_TRACE");
			free(s);
			return;
		}
		const Gpumatch__V1__TimeWindow *w = in->window;
		if (w && (w->start_us < 0 || (w->end_us && w->end_us <= w->start_us))) {
			rpc_error(call, RPC_INVALID_ARGUMENT,
			          "window: startUs must be >= 0 and endUs after it (or 0)");
			free(s);
			return;
		}
		if (in->arrival_scale < 0 || in->arrival_scale > 1e6) {
			rpc_error(call, RPC_INVALID_ARGUMENT,
			          "arrivalScale: must be between 0 (= 1) and 1e6, got %g",
			          in->arrival_scale);
			free(s);
			return;
		}
		if (in->preemptible && strncmp(name, "msr-itp/", 8) != 0) {
			rpc_error(
			    call, RPC_INVALID_ARGUMENT,
			    "preemptible: only the msr-itp traces take it (%s carries its own "
			    "preemptible flag)",
			    name);
			free(s);
			return;
		}
		if (trace_running) {
			rpc_error(call, RPC_RESOURCE_EXHAUSTED,
			          "a trace simulation is already running; retry when it ends");
			free(s);
			return;
		}
		trace_running = true;
		s->slot = true;
		s->trace = true;
		snprintf(s->trace_name, sizeof s->trace_name, "%s", name);
		s->win_start_us = w ? w->start_us : 0;
		s->win_end_us = w ? w->end_us : 0;
		s->seed = in->seed ? in->seed : 1;
		s->arrival_scale = in->arrival_scale > 0 ? in->arrival_scale : 1.0;
		s->all_preemptible = in->preemptible;
		s->oracle_limits = in->oracle_limits;
		if (app_get()->cfg.traces_dir[0])
			snprintf(s->trace_dir, sizeof s->trace_dir, "%s",
			         app_get()->cfg.traces_dir);
		else
			share_path("traces", s->trace_dir, sizeof s->trace_dir);
	}
	/* a replay of a whole trace takes seconds to minutes of a worker
	 * thread; the event loop is not held meanwhile */
	if (trace)
		rpc_set_timeout(call, 600000);
	rpc_on_abort(call, simreq_abort_cb, s);
	if (pg_exec(app_get()->pg, NULL,
	            "SELECT policy_pb FROM policies ORDER BY version DESC LIMIT 1", 0, NULL,
	            policy_row_cb, s)) {
		rpc_error(call, RPC_UNAVAILABLE, "the record store is unavailable, retry later");
		simreq_free(s);
	}
}
