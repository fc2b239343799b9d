/* speeds.c — throughput profiles learned from succeeded leases: one sample
 * per lease into learned_speeds (Postgres), the table kept in memory for
 * the scheduler, and AdminService.ListLearnedSpeeds. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpumatch/v1/admin_service.pb-c.h"
#include "handlers.h"
#include "log.h"
#include "service.h"
#include "speeds.h"
#include "trace.h"

/* The shipped speed model (data/speed-model.csv, data/gpu-roofline.csv):
 * read once at start; a job type with no learned profile gets one from it. */
static struct speed_model M;

int speeds_model_load(const char *rows_path, const char *gpus_path, char *err, size_t err_len)
{
	speed_model_free(&M);
	return speed_model_read(rows_path, gpus_path, &M, err, err_len);
}

/* The model's profile of a job type over the GPU models it knows, relative
 * to the fastest (only ratios matter). A job needing more memory than a
 * model has gets no entry there and its minimum memory raised to the need:
 * the model's hard limit. */
static uint32_t model_apply(const char *job_type, struct sched_job_spec *js,
                            struct conv_strings *st)
{
	const struct speed_row *w = speed_model_row(
	    &M, job_type, js->gpus_per_node * (js->node_count ? js->node_count : 1));
	if (!w || !M.ngpus)
		return 0;
	double best = 0;
	for (uint32_t i = 0; i < M.ngpus; i++) {
		double v = speed_model_rel(w, &M.gpus[i], &M.gpus[0]);
		if (v > best)
			best = v;
	}
	if (!(best > 0))
		return 0;
	uint32_t n = 0;
	for (uint32_t i = 0; i < M.ngpus && n < SCHED_MAX_STRINGS; i++) {
		double v = speed_model_rel(w, &M.gpus[i], &M.gpus[0]);
		if (!(v > 0))
			continue;
		snprintf(st->speed_models[n], sizeof st->speed_models[n], "%s", M.gpus[i].name);
		st->speeds[n] = (struct sched_speed){ st->speed_models[n], 0, (float)(v / best) };
		n++;
	}
	if (w->mem_gib > 0) {
		uint32_t need = (uint32_t)ceil(w->mem_gib * 1024);
		if (js->min_memory_mib < need)
			js->min_memory_mib = need;
	}
	js->nspeeds = n;
	js->speeds = n ? st->speeds : NULL;
	return n;
}

struct learned {
	char *job_type;
	char *model;
	double speed; /* work units per GPU-second */
};

/* Sorted by job_type, then speed descending (as the query returns it). */
static struct {
	struct learned *v;
	size_t n;
	bool loading;
	bool again;
	speeds_done_fn done; /* of the reload in flight */
	void *done_arg;
} S;

static void table_free(struct learned *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(v[i].job_type);
		free(v[i].model);
	}
	free(v);
}

/* ---- the in-memory table ------------------------------------------------------------------ */

static void reload_cb(enum pg_status st, PGresult *res, const char *ss, const char *err, void *arg)
{
	(void)ss;
	(void)arg;
	struct app *a = app_get();
	speeds_done_fn done = S.done;
	void *done_arg = S.done_arg;
	S.done = NULL;
	S.done_arg = NULL;
	S.loading = false;
	bool ok = st == PG_OK;
	if (!ok) {
		log_warn("learned speeds not loaded, keeping the previous ones err=\"%s\"", err);
	} else {
		size_t n = (size_t)PQntuples(res);
		struct learned *v = calloc(n ? n : 1, sizeof *v);
		if (!v) {
			log_error("out of memory");
			abort();
		}
		for (size_t i = 0; i < n; i++) {
			v[i].job_type = strdup(PQgetvalue(res, (int)i, 0));
			v[i].model = strdup(PQgetvalue(res, (int)i, 1));
			v[i].speed = strtod(PQgetvalue(res, (int)i, 2), NULL);
			if (!v[i].job_type || !v[i].model) {
				log_error("out of memory");
				abort();
			}
		}
		table_free(S.v, S.n);
		S.v = v;
		S.n = n;
	}
	if (S.again) {
		S.again = false;
		speeds_reload(a, NULL, NULL);
	}
	if (done)
		done(done_arg, ok);
}

void speeds_reload(struct app *a, speeds_done_fn done, void *arg)
{
	if (S.loading) {
		/* one in flight: it may have read the table before the change */
		S.again = true;
		if (done) {
			if (S.done) /* two waiters at once: the first one goes now */
				S.done(S.done_arg, true);
			S.done = done;
			S.done_arg = arg;
		}
		return;
	}
	S.loading = true;
	S.done = done;
	S.done_arg = arg;
	if (pg_exec(a->pg, NULL,
	            "SELECT job_type, gpu_model, speed FROM learned_speeds"
	            " ORDER BY job_type, speed DESC, gpu_model",
	            0, NULL, reload_cb, NULL)) {
		S.loading = false;
		S.done = NULL;
		S.done_arg = NULL;
		if (done)
			done(arg, false);
	}
}

void speeds_clear(void)
{
	table_free(S.v, S.n);
	memset(&S, 0, sizeof S);
	speed_model_free(&M);
}

uint32_t speeds_apply(const char *job_type, struct sched_job_spec *js, struct conv_strings *st)
{
	if (js->nspeeds || !job_type || !*job_type)
		return 0;
	size_t lo = 0, hi = S.n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (strcmp(S.v[mid].job_type, job_type) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	/* only ratios matter to the scheduler: relative to the type's fastest
	 * model (first, the rows are by speed descending), so that any unit of
	 * work fits the library's range */
	double best = 0;
	uint32_t n = 0;
	for (size_t i = lo; i < S.n && !strcmp(S.v[i].job_type, job_type); i++) {
		if (n == SCHED_MAX_STRINGS)
			break;
		if (!(best > 0))
			best = S.v[i].speed;
		float rel = best > 0 ? (float)(S.v[i].speed / best) : 0;
		if (!(rel > 0) || strlen(S.v[i].model) > SCHED_MAX_STRING_BYTES || !*S.v[i].model)
			continue;
		snprintf(st->speed_models[n], sizeof st->speed_models[n], "%s", S.v[i].model);
		st->speeds[n] = (struct sched_speed){ st->speed_models[n], 0, rel };
		n++;
	}
	js->nspeeds = n;
	js->speeds = n ? st->speeds : NULL;
	/* nothing learned for the type yet: the speed model's estimate */
	return n ? n : model_apply(job_type, js, st);
}

/* ---- learning from a succeeded lease ---------------------------------------------------------- */

struct learn_ctx {
	uint64_t lease_id;
	double work_done;
	char job_type[SCHED_MAX_STRING_BYTES + 1];
	char model[SCHED_MAX_STRING_BYTES + 1];
	double sample;
};

static void learned_cb(enum pg_status st, PGresult *res, const char *ss, const char *err, void *arg)
{
	(void)ss;
	struct learn_ctx *lc = arg;
	if (st != PG_OK || PQntuples(res) != 1) {
		log_warn("learned speed not recorded lease=%" PRIu64 " err=\"%s\"", lc->lease_id,
		         err);
	} else {
		log_info("learned speed job_type=\"%s\" model=\"%s\" sample=%.6g speed=%s",
		         lc->job_type, lc->model, lc->sample, PQgetvalue(res, 0, 0));
		schedloop_speeds_changed(app_get());
	}
	free(lc);
}

static void lease_cb(enum pg_status st, PGresult *res, const char *ss, const char *err, void *arg)
{
	(void)ss;
	struct learn_ctx *lc = arg;
	if (st != PG_OK || PQntuples(res) != 1) {
		if (st != PG_OK)
			log_warn("learned speed: lease not read lease=%" PRIu64 " err=\"%s\"",
			         lc->lease_id, err);
		free(lc);
		return;
	}
	size_t len;
	uint8_t *raw = col_bytea(res, 0, 0, &len);
	Gpumatch__V1__JobSpec *spec = raw ? gpumatch__v1__job_spec__unpack(NULL, len, raw) : NULL;
	free(raw);
	double work = 0;
	if (spec) {
		work = lc->work_done > 0 ? lc->work_done : spec->work_units;
		if (spec->job_type && strlen(spec->job_type) <= SCHED_MAX_STRING_BYTES)
			snprintf(lc->job_type, sizeof lc->job_type, "%s", spec->job_type);
		protobuf_c_message_free_unpacked(&spec->base, NULL);
	}
	int64_t gpus = col_i64(res, 0, 1);
	int64_t started = col_i64(res, 0, 2), ended = col_i64(res, 0, 4);
	if (!started)
		started = col_i64(res, 0, 3); /* never reported RUNNING: from assignment */
	const char *model = PQgetvalue(res, 0, 5);
	double wall_s = (double)(ended - started) / 1e6;
	/* nothing to learn: no type, no declared work, no model, no time */
	if (!lc->job_type[0] || !(work > 0) || gpus <= 0 || !(wall_s > 0) || !*model ||
	    strlen(model) > SCHED_MAX_STRING_BYTES) {
		free(lc);
		return;
	}
	snprintf(lc->model, sizeof lc->model, "%s", model);
	/* per GPU: jobs of a type differ in width, and wider ones do more per
	 * second (assumes the work scales with the GPUs; documented) */
	lc->sample = work / wall_s / (double)gpus;
	if (!isfinite(lc->sample) || !(lc->sample > 0)) {
		free(lc);
		return;
	}
	char sample[40];
	snprintf(sample, sizeof sample, "%.17g", lc->sample);
	struct numbuf now;
	const char *params[] = { lc->job_type, lc->model, sample, fmt_i64(&now, now_us()) };
	if (pg_exec(app_get()->pg, NULL, "SELECT gm_learn_speed($1, $2, $3::float8, $4::bigint)", 4,
	            params, learned_cb, lc))
		free(lc);
}

void speeds_learn(struct app *a, uint64_t lease_id, double work_done)
{
	struct learn_ctx *lc = calloc(1, sizeof *lc);
	if (!lc) {
		log_error("out of memory");
		abort();
	}
	lc->lease_id = lease_id;
	lc->work_done = work_done;
	struct numbuf l;
	const char *params[] = { fmt_u64(&l, lease_id) };
	/* the lease's GPU model: its lowest GPU's (a node's GPUs are one
	 * model in practice) */
	if (pg_exec(a->pg, NULL,
	            "SELECT j.spec_pb, j.gpus, l.started_at_us, l.assigned_at_us, l.ended_at_us,"
	            " coalesce((SELECT g.model FROM gpus g WHERE g.node_id = l.node_id"
	            "   AND (l.gpu_mask >> g.idx) & 1 = 1 ORDER BY g.idx LIMIT 1), '')"
	            " FROM leases l JOIN jobs j ON j.id = l.job_id"
	            " WHERE l.id = $1::bigint AND l.state = 5 AND l.ended_at_us > 0",
	            1, params, lease_cb, lc))
		free(lc);
}

/* ---- AdminService.ListLearnedSpeeds ----------------------------------------------------------- */

struct list_speeds {
	struct rpc_call *call;
	size_t page_size, offset;
};

/* Pages of this small table are numbered by offset ("o<hex>"): its order
 * (type, then speed) has no key to continue from. */
static int offset_token_decode(const char *tok, size_t *offset)
{
	*offset = 0;
	if (!tok || !*tok)
		return 0;
	char *end;
	errno = 0;
	unsigned long long v = tok[0] == 'o' && tok[1] ? strtoull(tok + 1, &end, 16) : 0;
	if (tok[0] != 'o' || !tok[1] || *end || errno || tok[1] == '-' || v > 1000000000ULL)
		return -1;
	*offset = (size_t)v;
	return 0;
}

static void list_cb(enum pg_status st, PGresult *res, const char *ss, const char *err, void *arg)
{
	struct list_speeds *ls = arg;
	struct rpc_call *call = ls->call;
	size_t page_size = ls->page_size, offset = ls->offset;
	free(ls);
	if (st != PG_OK) {
		reply_pg_error(call, st, ss, err);
		return;
	}
	size_t rows = (size_t)PQntuples(res);
	size_t n = rows > page_size ? page_size : rows;
	Gpumatch__V1__LearnedSpeed *items = calloc(n ? n : 1, sizeof *items);
	Gpumatch__V1__LearnedSpeed **ptrs = calloc(n ? n : 1, sizeof *ptrs);
	if (!items || !ptrs) {
		free(items);
		free(ptrs);
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	for (size_t i = 0; i < n; i++) {
		Gpumatch__V1__LearnedSpeed *e = &items[i];
		gpumatch__v1__learned_speed__init(e);
		e->job_type = PQgetvalue(res, (int)i, 0);
		e->gpu_model = PQgetvalue(res, (int)i, 1);
		e->speed = strtod(PQgetvalue(res, (int)i, 2), NULL);
		e->samples = col_u64(res, (int)i, 3);
		e->last_speed = strtod(PQgetvalue(res, (int)i, 4), NULL);
		e->updated_at_us = col_i64(res, (int)i, 5);
		ptrs[i] = e;
	}
	size_t shown = page_fit((const void *const *)ptrs, n);
	char next[32] = "";
	if (rows > n || shown < n)
		snprintf(next, sizeof next, "o%zx", offset + shown);
	Gpumatch__V1__ListLearnedSpeedsResponse resp =
	    GPUMATCH__V1__LIST_LEARNED_SPEEDS_RESPONSE__INIT;
	resp.n_speeds = shown;
	resp.speeds = ptrs;
	resp.next_page_token = next;
	rpc_reply(call, &resp.base);
	free(items);
	free(ptrs);
}

void admin_list_learned_speeds(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__ListLearnedSpeedsRequest *in = (const void *)req;
	const char *type = in->job_type ? in->job_type : "";
	if (strlen(type) > SCHED_MAX_STRING_BYTES) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "jobType: must be at most %d bytes",
		          SCHED_MAX_STRING_BYTES);
		return;
	}
	if (in->page_size < 0 || in->page_size > 1000) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "pageSize: must be between 0 and 1000, got %d", in->page_size);
		return;
	}
	struct list_speeds *ls = malloc(sizeof *ls);
	if (!ls) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	ls->call = call;
	ls->page_size = in->page_size ? (size_t)in->page_size : 1000;
	if (offset_token_decode(in->page_token, &ls->offset)) {
		free(ls);
		rpc_error(call, RPC_INVALID_ARGUMENT, "pageToken: not a token this server issued");
		return;
	}
	struct numbuf lim, off;
	const char *params[] = { type, fmt_u64(&lim, ls->page_size + 1),
		                 fmt_u64(&off, ls->offset) };
	if (pg_exec(app_get()->pg, NULL,
	            "SELECT job_type, gpu_model, speed, samples, last_speed, updated_at_us"
	            " FROM learned_speeds WHERE $1 = '' OR job_type = $1"
	            " ORDER BY job_type, speed DESC, gpu_model LIMIT $2::bigint OFFSET $3::bigint",
	            3, params, list_cb, ls)) {
		free(ls);
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
	}
}
