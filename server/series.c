/* series.c — the time series behind the console's charts and the fleet
 * summary behind its overview.
 *
 * The scheduler leader refreshes per-minute rollups (migration 0013,
 * gm_rollup) every rollup_interval_ms and prunes those older than
 * rollup_retention_hours once a minute. AdminService.GetFleetSeries,
 * NodeService.GetNodeSeries and JobService.GetSpendSeries read them with a
 * window and a step; AdminService.GetFleetSummary counts the fleet and the
 * queue live in one statement. */
#include "series.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpumatch/v1/admin_service.pb-c.h"
#include "gpumatch/v1/identity_service.pb-c.h"
#include "gpumatch/v1/job.pb-c.h"
#include "gpumatch/v1/job_service.pb-c.h"
#include "gpumatch/v1/node.pb-c.h"
#include "gpumatch/v1/node_service.pb-c.h"
#include "gpumatch/v1/series.pb-c.h"
#include "handlers.h"
#include "ledger.h"
#include "log.h"
#include "service.h"

#define MINUTE_US  60000000LL
#define MAX_STEPS  2000
#define DEF_WINDOW (3600LL * 1000000)
#define TICK_MS    100

static struct {
	struct app *a;
	struct event *tick_ev;
	bool busy;
	int64_t last_run_us, last_prune_minute;
	uint64_t runs_ok, runs_failed;
	int64_t last_ok_us;
	int inflight;
	/* the leader's gauges, from the newest rollup and the queue */
	bool have_gauges;
	int64_t gpus[5]; /* total, free, busy, unhealthy, unverified */
	double wait_p95_s, wait_max_s;
	/* the newest AuditLedger run on this replica */
	uint32_t audit_violations;
	int64_t audit_at_us;
} R;

static void *xcalloc(size_t n, size_t size);

static const char *const gauge_state[5] = { "total", "free", "busy", "unhealthy", "unverified" };

/* ---- the leader's rollup --------------------------------------------------------------- */

static void gauges_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                      void *arg)
{
	(void)arg;
	R.busy = false;
	R.inflight--;
	if (st != PG_OK || PQntuples(res) != 1) {
		log_warn("fleet gauges query failed sqlstate=%s err=\"%s\"", sqlstate, err);
		return;
	}
	for (int i = 0; i < 5; i++)
		R.gpus[i] = col_i64(res, 0, i);
	R.wait_p95_s = strtod(PQgetvalue(res, 0, 5), NULL) / 1e6;
	R.wait_max_s = strtod(PQgetvalue(res, 0, 6), NULL) / 1e6;
	R.have_gauges = true;
}

static void rollup_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                      void *arg)
{
	(void)res;
	int64_t *minute = arg;
	if (st != PG_OK) {
		R.busy = false;
		R.inflight--;
		R.runs_failed++;
		log_warn("rollup failed sqlstate=%s err=\"%s\"", sqlstate, err);
		free(minute);
		return;
	}
	R.runs_ok++;
	R.last_ok_us = now_us();
	/* the gauges /metrics exports for dashboards and alerts */
	struct numbuf n, m;
	const char *params[] = { fmt_i64(&n, R.last_ok_us), fmt_i64(&m, *minute) };
	free(minute);
	if (pg_exec(
	        R.a->pg, NULL,
	        "SELECT coalesce(sum(gpus_total), 0), coalesce(sum(gpus_free), 0),"
	        " coalesce(sum(gpus_busy), 0), coalesce(sum(gpus_unhealthy), 0),"
	        " coalesce(sum(gpus_unverified), 0),"
	        " (SELECT coalesce(percentile_cont(0.95) WITHIN GROUP"
	        "          (ORDER BY $1::bigint - submitted_at_us), 0) FROM jobs WHERE state = 1),"
	        " (SELECT coalesce(max($1::bigint - submitted_at_us), 0) FROM jobs WHERE state = 1)"
	        " FROM rollup_fleet_minute WHERE minute_us = $2::bigint",
	        2, params, gauges_cb, NULL)) {
		R.busy = false;
		R.inflight--;
	}
}

void series_note_audit(uint32_t count, int64_t at_us)
{
	R.audit_violations = count;
	R.audit_at_us = at_us;
}

static void tick_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	int64_t now = now_us();
	if (R.busy || !schedloop_is_leader(R.a) || R.a->draining)
		return;
	if (now - R.last_run_us < (int64_t)R.a->cfg.rollup_interval_ms * 1000)
		return;
	R.last_run_us = now;
	int64_t minute = now - now % MINUTE_US, prune = 0;
	if (minute != R.last_prune_minute) {
		R.last_prune_minute = minute;
		prune = now - (int64_t)R.a->cfg.rollup_retention_hours * 3600 * 1000000;
	}
	struct numbuf n, p;
	const char *params[] = { fmt_i64(&n, now), fmt_i64(&p, prune) };
	int64_t *m = xcalloc(1, sizeof *m);
	*m = minute;
	R.busy = true;
	R.inflight++;
	if (pg_exec(R.a->pg, NULL, "SELECT gm_rollup($1::bigint, $2::bigint)", 2, params, rollup_cb,
	            m)) {
		free(m);
		R.busy = false;
		R.inflight--;
	}
}

int series_start(struct app *a, char *err, size_t err_len)
{
	memset(&R, 0, sizeof R);
	R.a = a;
	R.tick_ev = event_new(a->base, -1, EV_PERSIST, tick_cb, NULL);
	if (!R.tick_ev) {
		snprintf(err, err_len, "out of memory");
		return -1;
	}
	struct timeval tv = { 0, TICK_MS * 1000 };
	event_add(R.tick_ev, &tv);
	return 0;
}

void series_stop(struct app *a)
{
	(void)a;
	if (R.tick_ev) {
		event_free(R.tick_ev);
		R.tick_ev = NULL;
	}
}

bool series_idle(struct app *a)
{
	(void)a;
	return R.inflight == 0;
}

void series_metrics(struct app *a, struct evbuffer *b)
{
	(void)a;
	evbuffer_add_printf(
	    b,
	    "# HELP gpumatch_rollup_runs_total Per-minute rollup refreshes by the leader.\n"
	    "# TYPE gpumatch_rollup_runs_total counter\n"
	    "gpumatch_rollup_runs_total{result=\"ok\"} %" PRIu64 "\n"
	    "gpumatch_rollup_runs_total{result=\"error\"} %" PRIu64 "\n"
	    "# HELP gpumatch_rollup_last_success_timestamp_seconds When this replica last "
	    "refreshed the rollups (0 = never).\n"
	    "# TYPE gpumatch_rollup_last_success_timestamp_seconds gauge\n"
	    "gpumatch_rollup_last_success_timestamp_seconds %.3f\n",
	    R.runs_ok, R.runs_failed, (double)R.last_ok_us / 1e6);
	evbuffer_add_printf(
	    b,
	    "# HELP gpumatch_ledger_audit_violations Violations the newest AuditLedger "
	    "run on this replica found.\n"
	    "# TYPE gpumatch_ledger_audit_violations gauge\n"
	    "gpumatch_ledger_audit_violations %u\n"
	    "# HELP gpumatch_ledger_audit_last_run_timestamp_seconds When AuditLedger "
	    "last ran on this replica (0 = never).\n"
	    "# TYPE gpumatch_ledger_audit_last_run_timestamp_seconds gauge\n"
	    "gpumatch_ledger_audit_last_run_timestamp_seconds %.3f\n",
	    R.audit_violations, (double)R.audit_at_us / 1e6);
	/* the fleet as the leader last rolled it up; only the leader has it */
	if (!R.have_gauges || !schedloop_is_leader(R.a))
		return;
	evbuffer_add_printf(b, "# HELP gpumatch_fleet_gpus GPUs by state at the newest rollup "
	                       "(leader only).\n"
	                       "# TYPE gpumatch_fleet_gpus gauge\n");
	for (int i = 0; i < 5; i++)
		evbuffer_add_printf(b, "gpumatch_fleet_gpus{state=\"%s\"} %" PRId64 "\n",
		                    gauge_state[i], R.gpus[i]);
	evbuffer_add_printf(b,
	                    "# HELP gpumatch_queue_wait_p95_seconds 95th percentile of how long "
	                    "queued jobs have waited so far (leader only).\n"
	                    "# TYPE gpumatch_queue_wait_p95_seconds gauge\n"
	                    "gpumatch_queue_wait_p95_seconds %.3f\n"
	                    "# HELP gpumatch_queue_wait_max_seconds The longest wait of a queued "
	                    "job so far (leader only).\n"
	                    "# TYPE gpumatch_queue_wait_max_seconds gauge\n"
	                    "gpumatch_queue_wait_max_seconds %.3f\n",
	                    R.wait_p95_s, R.wait_max_s);
}

/* ---- series queries -------------------------------------------------------------------- */

enum series_kind { SK_FLEET, SK_NODE, SK_SPEND };

struct series_q {
	struct rpc_call *call;
	enum series_kind kind;
	int64_t ws, we, step_us;
	size_t nsteps;
	bool check_owner; /* the first row says whether the node or tenant is the caller's */
};

/* Every source yields (minute_us, k, t, f, b, u, v, r, g) for minutes in
 * [$1, $2); $3 is the step; the rest are the kind's own. */
static const char *const series_src[] = {
	[SK_FLEET] = "SELECT minute_us,"
	             " CASE $4::integer WHEN 1 THEN gpu_model WHEN 2 THEN region ELSE '' END AS k,"
	             " gpus_total t, gpus_free f, gpus_busy b, gpus_unhealthy u, gpus_unverified v,"
	             " revenue_micros r, gpu_seconds g FROM rollup_fleet_minute"
	             " WHERE minute_us >= $1::bigint AND minute_us < $2::bigint",
	[SK_NODE] =
	    "SELECT minute_us, ''::text AS k, gpus_total t, gpus_free f, gpus_busy b,"
	    " gpus_unhealthy u, gpus_unverified v, revenue_micros r, gpu_seconds g"
	    " FROM rollup_node_minute WHERE minute_us >= $1::bigint AND minute_us < $2::bigint"
	    " AND ($4::bigint = 0 OR node_id = $4::bigint)"
	    " AND ($5::bigint = 0 OR operator_id = $5::bigint)",
	[SK_SPEND] = "SELECT minute_us, ''::text AS k, 0 t, 0 f, 0 b, 0 u, 0 v, spend_micros r,"
	             " gpu_seconds g FROM rollup_tenant_minute"
	             " WHERE minute_us >= $1::bigint AND minute_us < $2::bigint"
	             " AND tenant_id = $4::bigint",
};

/* The owner check row: for a node series, whether node $4 exists and
 * belongs to operator $5 (0 = any); for a spend series, whether tenant $4
 * exists. */
static const char *const series_owner[] = {
	[SK_FLEET] = "SELECT true",
	[SK_NODE] = "SELECT $4::bigint = 0 OR EXISTS (SELECT 1 FROM nodes WHERE id = $4::bigint"
	            " AND ($5::bigint = 0 OR operator_id = $5::bigint))",
	[SK_SPEND] = "SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $4::bigint)",
};

static void series_fill(const PGresult *r, int row, int64_t at, Gpumatch__V1__SeriesPoint *p)
{
	p->at_us = at;
	p->gpus_total = strtod(PQgetvalue(r, row, 2), NULL);
	p->gpus_free = strtod(PQgetvalue(r, row, 3), NULL);
	p->gpus_busy = strtod(PQgetvalue(r, row, 4), NULL);
	p->gpus_unhealthy = strtod(PQgetvalue(r, row, 5), NULL);
	p->gpus_unverified = strtod(PQgetvalue(r, row, 6), NULL);
	p->revenue_micros = col_i64(r, row, 7);
	p->gpu_seconds = col_i64(r, row, 8);
	p->samples = (uint32_t)col_u64(r, row, 9);
	int64_t busy = col_i64(r, row, 10), total = col_i64(r, row, 11);
	p->utilization_ppm = total > 0 ? (uint32_t)(busy * 1000000 / total) : 0;
}

struct series_set {
	size_t n;
	Gpumatch__V1__Series *series;
	Gpumatch__V1__Series **sp;
	Gpumatch__V1__SeriesPoint *points; /* n * nsteps */
	Gpumatch__V1__SeriesPoint **pp;    /* n * nsteps */
};

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size);
	if (!p) {
		log_error("out of memory");
		abort();
	}
	return p;
}

/* Rows (after the owner row) come ordered by key then step. Every series
 * gets a point per step; steps without rows stay zero with samples 0. */
static void series_build(struct series_q *q, const PGresult *r, int first, struct series_set *s)
{
	int rows = PQntuples(r);
	size_t nkeys = 0;
	for (int i = first; i < rows; i++)
		if (i == first || strcmp(PQgetvalue(r, i, 0), PQgetvalue(r, i - 1, 0)))
			nkeys++;
	if (nkeys == 0 && q->kind != SK_FLEET)
		nkeys = 1; /* a node or tenant series always has its one series */
	s->n = nkeys;
	s->series = xcalloc(nkeys, sizeof *s->series);
	s->sp = xcalloc(nkeys, sizeof *s->sp);
	s->points = xcalloc(nkeys * q->nsteps, sizeof *s->points);
	s->pp = xcalloc(nkeys * q->nsteps, sizeof *s->pp);
	for (size_t k = 0; k < nkeys; k++) {
		gpumatch__v1__series__init(&s->series[k]);
		s->series[k].key = (char *)"";
		s->series[k].n_points = q->nsteps;
		s->series[k].points = &s->pp[k * q->nsteps];
		s->sp[k] = &s->series[k];
		for (size_t j = 0; j < q->nsteps; j++) {
			Gpumatch__V1__SeriesPoint *p = &s->points[k * q->nsteps + j];
			gpumatch__v1__series_point__init(p);
			p->at_us = q->ws + (int64_t)j * q->step_us;
			s->pp[k * q->nsteps + j] = p;
		}
	}
	size_t k = 0;
	for (int i = first; i < rows; i++) {
		if (i > first && strcmp(PQgetvalue(r, i, 0), PQgetvalue(r, i - 1, 0)))
			k++;
		s->series[k].key = PQgetvalue(r, i, 0);
		int64_t at = col_i64(r, i, 1);
		if (at < q->ws || at >= q->we)
			continue;
		size_t j = (size_t)((at - q->ws) / q->step_us);
		series_fill(r, i, at, &s->points[k * q->nsteps + j]);
	}
}

static void series_set_free(struct series_set *s)
{
	free(s->series);
	free(s->sp);
	free(s->points);
	free(s->pp);
}

static void series_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                      void *arg)
{
	struct series_q *q = arg;
	if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
		free(q);
		return;
	}
	/* row 0: the owner check, key column 't' or 'f' */
	if (PQntuples(res) < 1 || strcmp(PQgetvalue(res, 0, 2), "1")) {
		if (q->kind == SK_SPEND)
			rpc_error(q->call, RPC_NOT_FOUND, "tenantId: no such tenant");
		else
			rpc_error(q->call, RPC_NOT_FOUND, "nodeId: no such node");
		free(q);
		return;
	}
	struct series_set s;
	series_build(q, res, 1, &s);
	Gpumatch__V1__TimeWindow w = GPUMATCH__V1__TIME_WINDOW__INIT;
	w.start_us = q->ws;
	w.end_us = q->we;
	int64_t step_s = q->step_us / 1000000;
	if (q->kind == SK_FLEET) {
		Gpumatch__V1__GetFleetSeriesResponse out =
		    GPUMATCH__V1__GET_FLEET_SERIES_RESPONSE__INIT;
		out.n_series = s.n;
		out.series = s.sp;
		out.window = &w;
		out.step_s = step_s;
		rpc_reply(q->call, &out.base);
	} else if (q->kind == SK_NODE) {
		Gpumatch__V1__GetNodeSeriesResponse out =
		    GPUMATCH__V1__GET_NODE_SERIES_RESPONSE__INIT;
		out.series = s.sp[0];
		out.window = &w;
		out.step_s = step_s;
		rpc_reply(q->call, &out.base);
	} else {
		Gpumatch__V1__GetSpendSeriesResponse out =
		    GPUMATCH__V1__GET_SPEND_SERIES_RESPONSE__INIT;
		out.series = s.sp[0];
		out.window = &w;
		out.step_s = step_s;
		rpc_reply(q->call, &out.base);
	}
	series_set_free(&s);
	free(q);
}

/* Resolves window and step: the window defaults to the last hour, is
 * clipped to the retention, and is widened to whole steps (aligned to the
 * epoch). Returns a query or NULL after answering the call. */
static struct series_q *series_new(struct rpc_call *call, enum series_kind kind,
                                   const Gpumatch__V1__TimeWindow *w, int64_t step_s)
{
	int64_t now = now_us(), ws, we;
	if (w) {
		if (w->start_us < 0 || w->end_us < 0) {
			rpc_error(call, RPC_INVALID_ARGUMENT, "window.%s: must not be negative",
			          w->start_us < 0 ? "startUs" : "endUs");
			return NULL;
		}
		ws = w->start_us;
		we = w->end_us ? w->end_us : now;
		if (we <= ws) {
			rpc_error(call, RPC_INVALID_ARGUMENT,
			          "window.endUs: must be after window.startUs");
			return NULL;
		}
	} else {
		we = now;
		ws = now - DEF_WINDOW;
	}
	if (step_s == 0)
		step_s = 60;
	if (step_s < 60 || step_s % 60 || step_s > 366LL * 86400) {
		rpc_error(
		    call, RPC_INVALID_ARGUMENT,
		    "stepS: must be a whole number of minutes (60, 120, ...), at most a year");
		return NULL;
	}
	int64_t keep = now - (int64_t)app_get()->cfg.rollup_retention_hours * 3600 * 1000000;
	if (ws < keep)
		ws = keep;
	if (we <= ws) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "window: ends before the rollups' retention (rollup_retention_hours)");
		return NULL;
	}
	int64_t step_us = step_s * 1000000;
	ws -= ws % step_us;
	if (we % step_us)
		we += step_us - we % step_us;
	int64_t nsteps = (we - ws) / step_us;
	if (nsteps > MAX_STEPS) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "stepS: the window would have %" PRId64
		          " steps; at most %d (take a longer "
		          "step or a shorter window)",
		          nsteps, MAX_STEPS);
		return NULL;
	}
	struct series_q *q = xcalloc(1, sizeof *q);
	q->call = call;
	q->kind = kind;
	q->ws = ws;
	q->we = we;
	q->step_us = step_us;
	q->nsteps = (size_t)nsteps;
	return q;
}

static void series_run(struct series_q *q, const char *a4, const char *a5)
{
	char sql[2048];
	snprintf(
	    sql, sizeof sql,
	    "WITH src AS (%s),"
	    " m AS (SELECT minute_us, k, sum(t) t, sum(f) f, sum(b) b, sum(u) u, sum(v) v,"
	    "         sum(r) r, sum(g) g FROM src GROUP BY minute_us, k)"
	    " SELECT 'owner', 0::bigint, (%s)::integer::text, '0', '0', '0', '0', 0::bigint,"
	    "        0::bigint, 0::bigint, 0::bigint, 0::bigint"
	    " UNION ALL (SELECT k, $1::bigint + (minute_us - $1::bigint) / $3::bigint * $3::bigint,"
	    "        avg(t)::text, avg(f)::text, avg(b)::text, avg(u)::text, avg(v)::text,"
	    "        sum(r)::bigint, sum(g)::bigint, count(*), sum(b)::bigint, sum(t)::bigint"
	    "   FROM m GROUP BY 1, 2 ORDER BY 1, 2)",
	    series_src[q->kind], series_owner[q->kind]);
	struct numbuf ws, we, st;
	const char *params[] = { fmt_i64(&ws, q->ws), fmt_i64(&we, q->we), fmt_i64(&st, q->step_us),
		                 a4, a5 };
	int n = q->kind == SK_NODE ? 5 : 4;
	if (pg_exec(app_get()->pg, NULL, sql, n, params, series_cb, q)) {
		rpc_error(q->call, RPC_UNAVAILABLE, "shutting down");
		free(q);
	}
}

void series_fleet(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__GetFleetSeriesRequest *req = (const void *)msg;
	if (req->group_by < 0 || req->group_by > GPUMATCH__V1__SERIES_GROUP__SERIES_GROUP_REGION) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "groupBy: unknown value %d",
		          (int)req->group_by);
		return;
	}
	struct series_q *q = series_new(call, SK_FLEET, req->window, req->step_s);
	if (!q)
		return;
	char g[8];
	snprintf(g, sizeof g, "%d", (int)req->group_by);
	series_run(q, g, NULL);
}

void series_node(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__GetNodeSeriesRequest *req = (const void *)msg;
	const struct principal *who = rpc_principal(call);
	uint64_t op = req->operator_id;
	if (who->role == ROLE_OPERATOR) {
		if (op && op != who->operator_id) {
			rpc_error(call, RPC_PERMISSION_DENIED,
			          "operatorId: an operator sees its own nodes only");
			return;
		}
		op = who->operator_id;
	}
	if (req->node_id > INT64_MAX || op > INT64_MAX) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "%s: out of range",
		          req->node_id > INT64_MAX ? "nodeId" : "operatorId");
		return;
	}
	struct series_q *q = series_new(call, SK_NODE, req->window, req->step_s);
	if (!q)
		return;
	struct numbuf n, o;
	series_run(q, fmt_u64(&n, req->node_id), fmt_u64(&o, op));
}

void series_spend(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__GetSpendSeriesRequest *req = (const void *)msg;
	uint64_t tenant = ledger_spend_tenant(call, req->tenant_id);
	if (!tenant)
		return;
	if (tenant > INT64_MAX) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "tenantId: out of range");
		return;
	}
	struct series_q *q = series_new(call, SK_SPEND, req->window, req->step_s);
	if (!q)
		return;
	struct numbuf t;
	series_run(q, fmt_u64(&t, tenant), NULL);
}

/* ---- fleet summary --------------------------------------------------------------------- */

static const double wait_le_s[] = { 10, 30, 60, 300, 900, 3600, 14400, 86400, 0 };
#define N_WAIT (sizeof wait_le_s / sizeof wait_le_s[0])

/* GPU counts come from the newest fleet rollup (the leader refreshes it every
 * rollup_interval_ms), not from classifying every GPU again per call; jobs
 * are counted in their active states only (terminal ones grow without
 * bound), through jobs_state_id. */
static const char summary_sql[] =
    "WITH lm AS (SELECT max(minute_us) AS m FROM rollup_fleet_minute),"
    " g AS (SELECT gpu_model AS model, sum(gpus_total) t, sum(gpus_free) f, sum(gpus_busy) b,"
    "         sum(gpus_unhealthy) u, sum(gpus_unverified) v"
    "         FROM rollup_fleet_minute, lm WHERE minute_us = lm.m"
    "        GROUP BY gpu_model HAVING sum(gpus_total) > 0),"
    " q AS (SELECT priority_class, greatest($1::bigint - submitted_at_us, 0) / 1e6 AS w"
    "         FROM jobs WHERE state = 1)"
    " SELECT 'g', model, t, f, b, u, v, t - f - b - u - v FROM g"
    " UNION ALL SELECT 'm', '', coalesce(max(m), 0), 0, 0, 0, 0, 0 FROM lm"
    " UNION ALL SELECT 'n', state::text, count(*), 0, 0, 0, 0, 0 FROM nodes GROUP BY state"
    " UNION ALL SELECT 'j', state::text, count(*), 0, 0, 0, 0, 0 FROM jobs"
    "   WHERE state IN (1, 2, 3) GROUP BY state"
    " UNION ALL SELECT 'c', priority_class::text, count(*), 0, 0, 0, 0, 0 FROM q"
    "   GROUP BY priority_class"
    " UNION ALL SELECT 'w', b::text, count(*), 0, 0, 0, 0, 0 FROM"
    "   (SELECT CASE WHEN w <= 10 THEN 0 WHEN w <= 30 THEN 1 WHEN w <= 60 THEN 2"
    "                WHEN w <= 300 THEN 3 WHEN w <= 900 THEN 4 WHEN w <= 3600 THEN 5"
    "                WHEN w <= 14400 THEN 6 WHEN w <= 86400 THEN 7 ELSE 8 END AS b FROM q) x"
    "   GROUP BY b"
    " UNION ALL SELECT 'p', coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY w), 0)::text,"
    "   (coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY w), 0) * 1000)::bigint,"
    "   0, 0, 0, 0, 0 FROM q"
    " ORDER BY 1, 2";

static char *enum_name(const ProtobufCEnumDescriptor *d, int v, char *buf, size_t len)
{
	const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(d, v);
	if (ev)
		return (char *)ev->name;
	snprintf(buf, len, "%d", v);
	return buf;
}

static void summary_cb(enum pg_status st, PGresult *r, const char *sqlstate, const char *err,
                       void *arg)
{
	struct rpc_call *call = arg;
	if (st != PG_OK) {
		reply_pg_error(call, st, sqlstate, err);
		return;
	}
	int rows = PQntuples(r);
	Gpumatch__V1__GpuStateCount *models = xcalloc((size_t)rows, sizeof *models);
	Gpumatch__V1__GpuStateCount **mp = xcalloc((size_t)rows, sizeof *mp);
	Gpumatch__V1__CountByName *counts = xcalloc((size_t)rows, sizeof *counts);
	Gpumatch__V1__CountByName **np = xcalloc((size_t)rows, sizeof *np);
	Gpumatch__V1__CountByName **jp = xcalloc((size_t)rows, sizeof *jp);
	Gpumatch__V1__CountByName **cp = xcalloc((size_t)rows, sizeof *cp);
	char(*names)[24] = xcalloc((size_t)rows, sizeof *names);
	Gpumatch__V1__WaitBucket wb[N_WAIT], *wp[N_WAIT];
	Gpumatch__V1__GetFleetSummaryResponse out = GPUMATCH__V1__GET_FLEET_SUMMARY_RESPONSE__INIT;
	Gpumatch__V1__GpuStateCount tot = GPUMATCH__V1__GPU_STATE_COUNT__INIT;
	tot.gpu_model = (char *)"";
	for (size_t i = 0; i < N_WAIT; i++) {
		gpumatch__v1__wait_bucket__init(&wb[i]);
		wb[i].le_s = wait_le_s[i];
		wp[i] = &wb[i];
	}
	size_t nm = 0, nn = 0, nj = 0, nc = 0, nb = 0;
	for (int i = 0; i < rows; i++) {
		const char *sec = PQgetvalue(r, i, 0), *key = PQgetvalue(r, i, 1);
		uint32_t c = (uint32_t)col_u64(r, i, 2);
		if (!strcmp(sec, "g")) {
			Gpumatch__V1__GpuStateCount *m = &models[nm];
			gpumatch__v1__gpu_state_count__init(m);
			m->gpu_model = (char *)key;
			m->total = c;
			m->free = (uint32_t)col_u64(r, i, 3);
			m->busy = (uint32_t)col_u64(r, i, 4);
			m->unhealthy = (uint32_t)col_u64(r, i, 5);
			m->unverified = (uint32_t)col_u64(r, i, 6);
			m->offline = (uint32_t)col_u64(r, i, 7);
			tot.total += m->total;
			tot.free += m->free;
			tot.busy += m->busy;
			tot.unhealthy += m->unhealthy;
			tot.unverified += m->unverified;
			tot.offline += m->offline;
			mp[nm++] = m;
		} else if (!strcmp(sec, "m")) {
			out.gpus_as_of_minute_us = col_i64(r, i, 2);
		} else if (!strcmp(sec, "p")) {
			out.queue_wait_p50_s = strtod(key, NULL);
			out.queue_wait_p95_s = (double)col_i64(r, i, 2) / 1000.0;
		} else if (!strcmp(sec, "w")) {
			long b = strtol(key, NULL, 10);
			if (b >= 0 && (size_t)b < N_WAIT)
				wb[b].count = c;
		} else {
			Gpumatch__V1__CountByName *cn = &counts[nb++];
			gpumatch__v1__count_by_name__init(cn);
			cn->count = c;
			int v = (int)strtol(key, NULL, 10);
			char *buf = names[nb - 1];
			if (!strcmp(sec, "n")) {
				cn->name =
				    enum_name(&gpumatch__v1__node_state__descriptor, v, buf, 24);
				np[nn++] = cn;
			} else if (!strcmp(sec, "j")) {
				cn->name =
				    enum_name(&gpumatch__v1__job_state__descriptor, v, buf, 24);
				jp[nj++] = cn;
			} else {
				cn->name = enum_name(
				    &gpumatch__v1__priority_class__descriptor,
				    v ? v : GPUMATCH__V1__PRIORITY_CLASS__PRIORITY_CLASS_NORMAL,
				    buf, 24);
				cp[nc++] = cn;
			}
		}
	}
	out.n_gpu_models = nm;
	out.gpu_models = mp;
	out.totals = &tot;
	out.n_nodes_by_state = nn;
	out.nodes_by_state = np;
	out.n_jobs_by_state = nj;
	out.jobs_by_state = jp;
	out.n_queued_by_class = nc;
	out.queued_by_class = cp;
	out.n_queue_wait = N_WAIT;
	out.queue_wait = wp;
	out.computed_at_us = now_us();
	rpc_reply(call, &out.base);
	free(models);
	free(mp);
	free(counts);
	free(np);
	free(jp);
	free(cp);
	free(names);
}

void series_fleet_summary(struct rpc_call *call, const ProtobufCMessage *msg)
{
	(void)msg;
	struct numbuf n;
	const char *params[] = { fmt_i64(&n, now_us()) };
	if (pg_exec(app_get()->pg, NULL, summary_sql, 1, params, summary_cb, call))
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
}

/* ---- identity ----------------------------------------------------------------------------- */

void series_identity(struct rpc_call *call, const ProtobufCMessage *msg)
{
	(void)msg;
	const struct principal *who = rpc_principal(call);
	Gpumatch__V1__GetIdentityResponse out = GPUMATCH__V1__GET_IDENTITY_RESPONSE__INIT;
	out.role = who->role == ROLE_ADMIN      ? GPUMATCH__V1__ROLE__ROLE_ADMIN
	           : who->role == ROLE_OPERATOR ? GPUMATCH__V1__ROLE__ROLE_OPERATOR
	                                        : GPUMATCH__V1__ROLE__ROLE_TENANT;
	out.tenant_id = who->role == ROLE_TENANT ? who->tenant_id : 0;
	out.operator_id = who->role == ROLE_OPERATOR ? who->operator_id : 0;
	out.token_id = who->token_id;
	out.token_name = (char *)who->name;
	rpc_reply(call, &out.base);
}
