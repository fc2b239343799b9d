/* sim.c — the replay loop: arrivals, scheduling cycles, completions and
 * preemptions in virtual time over the unchanged scheduling library, and
 * the metrics of the outcome. */
#include "sim.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Alibaba model names a reference throughput column may stand for, to find
 * the reference GPU's TFLOPS when the fleet has none of it. */
static const char *const builtin_models[] = { "V100M16", "V100M32", "P100", "T4",
	                                      "A10",     "G1",      "G2",   "G3" };

static void errf(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, len, fmt, ap);
	va_end(ap);
}

void sim_config_default(struct sim_config *c)
{
	memset(c, 0, sizeof *c);
	sched_policy_default(&c->policy);
	c->seed = 1;
	c->arrival_scale = 1.0;
	c->cycle_interval_us = 10 * 1000000LL;
	/* a training job that checkpoints every 10 minutes of run time */
	c->checkpoint_interval_us = 600 * 1000000LL;
	c->tenants = 8;
	c->precision = SCHED_PREC_FP32;
	c->declare_profiles = true;
	c->interpolate = true;
	c->limit_overestimate = SIM_LIMIT_OVERESTIMATE_DEFAULT;
}

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint32_t below(uint64_t *rng, uint32_t n)
{
	return (uint32_t)(splitmix64(rng) % n);
}

/* ---- state ------------------------------------------------------------------ */

struct spart {
	uint32_t node; /* fleet index */
	uint64_t mask;
};

struct sjob {
	const struct trace_job *tj;
	int64_t submit_us; /* scaled */
	uint64_t tenant;
	int32_t type;
	double remaining_us; /* reference-GPU time still to run */
	double run_speed;    /* of the current run */
	int64_t run_start_us;
	int64_t max_dur_us;
	uint32_t gen; /* bumps invalidate queued events */
	uint32_t nparts;
	struct spart *parts; /* node_count entries */
	enum { SJ_FUTURE, SJ_PENDING, SJ_RUNNING, SJ_DONE, SJ_GONE } state;
	struct sim_job_out *out;
};

/* EV_WAKE: a running job becomes a possible victim of the shorter-work
 * rule (preempt_min_run_us after its start); it only calls a cycle, as
 * gpumatchd's periodic cycle would. */
enum { EV_COMPLETE = 0, EV_STOP = 1, EV_WAKE = 2 };

struct ev {
	int64_t t;
	uint32_t job;
	uint32_t gen;
	uint32_t kind;
};

struct heap {
	struct ev *v;
	size_t n, cap;
};

static bool ev_less(const struct ev *a, const struct ev *b)
{
	if (a->t != b->t)
		return a->t < b->t;
	if (a->kind != b->kind)
		return a->kind < b->kind;
	return a->job < b->job;
}

static int heap_push(struct heap *h, struct ev e)
{
	if (h->n == h->cap) {
		size_t nc = h->cap ? h->cap * 2 : 1024;
		struct ev *v = realloc(h->v, nc * sizeof *v);
		if (!v)
			return -1;
		h->v = v;
		h->cap = nc;
	}
	size_t i = h->n++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!ev_less(&e, &h->v[p]))
			break;
		h->v[i] = h->v[p];
		i = p;
	}
	h->v[i] = e;
	return 0;
}

static struct ev heap_pop(struct heap *h)
{
	struct ev top = h->v[0];
	struct ev last = h->v[--h->n];
	size_t i = 0;
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		const struct ev *best = &last;
		if (l < h->n && ev_less(&h->v[l], best)) {
			m = l;
			best = &h->v[l];
		}
		if (r < h->n && ev_less(&h->v[r], best))
			m = r;
		if (m == i)
			break;
		h->v[i] = h->v[m];
		i = m;
	}
	if (h->n)
		h->v[i] = last;
	return top;
}

struct idx {
	uint64_t id;
	uint32_t i;
};

static int cmp_idx(const void *a, const void *b)
{
	const struct idx *x = a, *y = b;
	return (x->id > y->id) - (x->id < y->id);
}

static uint32_t idx_find(const struct idx *v, uint32_t n, uint64_t id)
{
	uint32_t lo = 0, hi = n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (v[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && v[lo].id == id ? v[lo].i : UINT32_MAX;
}

struct sim {
	const struct sim_config *cfg;
	struct sched_cluster *c;
	struct sjob *jobs;
	uint32_t njobs;
	uint32_t *order; /* jobs by scaled submit time */
	struct idx *job_ids, *node_ids;
	int32_t *col_of;                    /* fleet model -> throughput column, -1 = none */
	const struct speed_gpu **model_gpu; /* fleet model -> speed model GPU */
	const struct speed_gpu *ref_gpu;    /* the reference column's GPU */
	double *col_tflops;                 /* per throughput column, FP32; 0 = unknown */
	double ref_tflops;
	uint64_t *busy; /* shadow of GPUs in use, per fleet node */
	struct heap h;
	uint32_t npending;
	double busy_gpu_s;
	double busy_window_gpu_s; /* inside [first, last arrival] */
	double lost_gpu_s;        /* thrown away by preemption */
	double lost_window_gpu_s; /* the same inside [first, last arrival] */
	double work_gpu_s;        /* kept work, reference-GPU-seconds */
	double work_window_gpu_s; /* the same inside [first, last arrival] */
	int64_t first_arrival_us, last_arrival_us;
	double cost_micros;
	struct sim_result *res;
	char *err;
	size_t err_len;
};

/* FP32 TFLOPS of the GPU kinds public throughput tables use as columns, for
 * interpolating models the table does not cover. */
static const struct {
	const char *kind;
	double fp32_tflops;
} col_tflops[] = {
	{ "k80", 4.37 }, /* one GK210 die, as Gavel measured */
	{ "p100", 9.3 }, { "v100", 15.7 }, { "t4", 8.1 }, { "a100", 19.5 },
};

/* Measured speed of the job on each column, by column FP32 TFLOPS, then
 * linear interpolation at the model's FP32 TFLOPS (proportional beyond the
 * measured range). Returns 0 when nothing can be said. */
static double interp_speed(const struct sim *s, const struct sjob *j, double tflops)
{
	const struct trace_tputs *tp = s->cfg->tputs;
	uint32_t gpus = j->tj->gpus_per_node * j->tj->node_count;
	double lo_t = 0, lo_s = 0, hi_t = INFINITY, hi_s = 0;
	double min_t = INFINITY, min_s = 0, max_t = 0, max_s = 0;
	for (uint32_t c = 0; c < tp->ncols; c++) {
		double ct = s->col_tflops[c];
		double v = trace_tput_speed(tp, (uint32_t)j->type, gpus, c);
		if (!(ct > 0) || !(v > 0))
			continue;
		if (ct <= tflops && ct > lo_t) {
			lo_t = ct;
			lo_s = v;
		}
		if (ct >= tflops && ct < hi_t) {
			hi_t = ct;
			hi_s = v;
		}
		if (ct < min_t) {
			min_t = ct;
			min_s = v;
		}
		if (ct > max_t) {
			max_t = ct;
			max_s = v;
		}
	}
	if (lo_t > 0 && hi_t < INFINITY)
		return hi_t > lo_t ? lo_s + (hi_s - lo_s) * (tflops - lo_t) / (hi_t - lo_t) : lo_s;
	if (lo_t > 0)
		return max_s * tflops / max_t;
	if (hi_t < INFINITY)
		return min_s * tflops / min_t;
	return 0;
}

/* The job's speed on a fleet model relative to its reference GPU (column
 * 0): measured when the table has the model, interpolated by FP32 TFLOPS
 * between the table's GPU kinds when it does not, else by TFLOPS in the
 * job's precision against the reference GPU's. */
static double job_speed(const struct sim *s, const struct sjob *j, uint32_t model)
{
	const struct sim_config *cfg = s->cfg;
	const struct trace_model *m = &cfg->fleet->models[model];
	if (j->type >= 0) {
		uint32_t gpus = j->tj->gpus_per_node * j->tj->node_count;
		float ref = trace_tput_speed(cfg->tputs, (uint32_t)j->type, gpus, 0);
		if (!(ref > 0))
			for (uint32_t c = 0; c < cfg->tputs->ncols; c++) {
				float x = trace_tput_speed(cfg->tputs, (uint32_t)j->type, gpus, c);
				if (x > ref)
					ref = x;
			}
		double v = 0;
		if (s->col_of[model] >= 0)
			v = trace_tput_speed(cfg->tputs, (uint32_t)j->type, gpus,
			                     (uint32_t)s->col_of[model]);
		if (!(v > 0) && cfg->model && s->ref_gpu && s->model_gpu[model]) {
			const struct speed_row *w =
			    speed_model_row(cfg->model, cfg->tputs->types[j->type], gpus);
			if (w) {
				double r = speed_model_rel(w, s->model_gpu[model], s->ref_gpu);
				if (!(r > 0))
					return 0; /* does not fit in the model's memory */
				float meas =
				    trace_tput_speed(cfg->tputs, (uint32_t)j->type, gpus, 0);
				if (meas > 0 && ref > 0)
					return r * meas / ref;
			}
		}
		if (!(v > 0) && cfg->interpolate)
			v = interp_speed(s, j, m->tflops[SCHED_PREC_FP32]);
		if (v > 0 && ref > 0)
			return v / ref;
	}
	double t = m->tflops[cfg->precision];
	if (s->ref_tflops > 0 && t > 0)
		return t / s->ref_tflops;
	return 1.0;
}

/* ---- setup ------------------------------------------------------------------------ */

static int setup_models(struct sim *s)
{
	const struct sim_config *cfg = s->cfg;
	const struct trace_fleet *fl = cfg->fleet;
	s->col_of = malloc((fl->nmodels ? fl->nmodels : 1) * sizeof *s->col_of);
	s->model_gpu = calloc(fl->nmodels ? fl->nmodels : 1, sizeof *s->model_gpu);
	if (!s->col_of || !s->model_gpu)
		return -1;
	if (cfg->model && cfg->tputs && cfg->tputs->ncols)
		s->ref_gpu = speed_model_gpu(cfg->model, cfg->tputs->cols[0]);
	for (uint32_t m = 0; m < fl->nmodels; m++) {
		s->model_gpu[m] = speed_model_gpu(cfg->model, fl->models[m].name);
		s->col_of[m] = -1;
		for (uint32_t c = 0; cfg->tputs && c < cfg->tputs->ncols; c++) {
			if (trace_col_matches(cfg->tputs->cols[c], fl->models[m].name)) {
				s->col_of[m] = (int32_t)c;
				break;
			}
		}
	}
	uint32_t ncols = cfg->tputs ? cfg->tputs->ncols : 0;
	s->col_tflops = calloc(ncols ? ncols : 1, sizeof *s->col_tflops);
	if (!s->col_tflops)
		return -1;
	for (uint32_t c = 0; c < ncols; c++) {
		for (uint32_t m = 0; m < fl->nmodels && !(s->col_tflops[c] > 0); m++)
			if (s->col_of[m] == (int32_t)c)
				s->col_tflops[c] = fl->models[m].tflops[SCHED_PREC_FP32];
		for (size_t k = 0;
		     !(s->col_tflops[c] > 0) && k < sizeof col_tflops / sizeof col_tflops[0]; k++)
			if (!strcasecmp(cfg->tputs->cols[c], col_tflops[k].kind))
				s->col_tflops[c] = col_tflops[k].fp32_tflops;
	}
	/* the reference GPU's TFLOPS: a fleet model of column 0, else a known one */
	s->ref_tflops = 0;
	for (uint32_t m = 0; m < fl->nmodels && !(s->ref_tflops > 0); m++)
		if (s->col_of[m] == 0)
			s->ref_tflops = fl->models[m].tflops[cfg->precision];
	for (size_t i = 0; cfg->tputs && !(s->ref_tflops > 0) &&
	                   i < sizeof builtin_models / sizeof builtin_models[0];
	     i++) {
		const struct trace_model *bm = trace_alibaba_model(builtin_models[i]);
		if (bm && trace_col_matches(cfg->tputs->cols[0], bm->name))
			s->ref_tflops = bm->tflops[cfg->precision];
	}
	return 0;
}

static int setup_nodes(struct sim *s)
{
	const struct trace_fleet *fl = s->cfg->fleet;
	s->node_ids = malloc(fl->nnodes * sizeof *s->node_ids);
	s->busy = calloc(fl->nnodes, sizeof *s->busy);
	if (!s->node_ids || !s->busy)
		return -1;
	for (uint32_t i = 0; i < fl->nnodes; i++) {
		const struct trace_node *n = &fl->nodes[i];
		const struct trace_model *m = &fl->models[n->model];
		struct sched_gpu_spec gpus[SCHED_MAX_GPUS_PER_NODE];
		uint32_t prec = 0;
		for (int q = 0; q < SCHED_PREC_COUNT; q++)
			if (m->tflops[q] > 0)
				prec |= 1u << q;
		for (uint32_t g = 0; g < n->ngpus; g++) {
			memset(&gpus[g], 0, sizeof gpus[g]);
			gpus[g].model = m->name;
			gpus[g].memory_mib = m->memory_mib;
			gpus[g].compute_cap = m->compute_cap;
			gpus[g].precisions = prec;
			memcpy(gpus[g].tflops, m->tflops, sizeof gpus[g].tflops);
		}
		struct sched_node_spec spec;
		memset(&spec, 0, sizeof spec);
		spec.id = n->id;
		spec.region = n->region;
		spec.state = SCHED_NODE_READY;
		spec.verified = true;
		spec.price_micros = n->price_micros;
		spec.reliability_ppm = 1000000;
		spec.ngpus = n->ngpus;
		spec.gpus = gpus;
		struct sched_error se = { "", "" };
		int rc = sched_node_upsert(s->c, &spec, &se);
		if (rc) {
			errf(s->err, s->err_len, "node %" PRIu64 ": %s: %s", n->id, se.field,
			     rc == -ENOMEM ? "out of memory" : se.message);
			return -2;
		}
		s->node_ids[i] = (struct idx){ n->id, i };
	}
	qsort(s->node_ids, fl->nnodes, sizeof *s->node_ids, cmp_idx);
	return 0;
}

static int cmp_order(const void *a, const void *b, void *arg)
{
	const struct sjob *jobs = arg;
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	if (jobs[x].submit_us != jobs[y].submit_us)
		return jobs[x].submit_us < jobs[y].submit_us ? -1 : 1;
	return (x > y) - (x < y);
}

static int setup_jobs(struct sim *s)
{
	const struct sim_config *cfg = s->cfg;
	const struct trace_jobs *tj = cfg->jobs;
	s->njobs = tj->n;
	s->jobs = calloc(tj->n ? tj->n : 1, sizeof *s->jobs);
	s->order = malloc((tj->n ? tj->n : 1) * sizeof *s->order);
	s->job_ids = malloc((tj->n ? tj->n : 1) * sizeof *s->job_ids);
	s->res->per_job = calloc(tj->n ? tj->n : 1, sizeof *s->res->per_job);
	if (!s->jobs || !s->order || !s->job_ids || !s->res->per_job)
		return -1;
	int64_t first = INT64_MAX;
	for (uint32_t i = 0; i < tj->n; i++)
		if (tj->v[i].submit_us < first)
			first = tj->v[i].submit_us;
	uint64_t rng = cfg->seed;
	/* time-limit overestimates: a stream of their own, so that the type
	 * and tenant draws are the same with or without them */
	uint64_t lrng = cfg->seed ^ 0x6c696d6974ull;
	for (uint32_t i = 0; i < tj->n; i++) {
		struct sjob *j = &s->jobs[i];
		j->tj = &tj->v[i];
		j->submit_us = first + (int64_t)llround((double)(j->tj->submit_us - first) *
		                                        cfg->arrival_scale);
		/* one draw of each kind per job, in trace order, whether used or
		 * not: a job's draws do not depend on the others' fields */
		uint32_t type_draw = cfg->tputs ? below(&rng, cfg->tputs->ntypes) : 0;
		uint32_t tenant_draw = below(&rng, cfg->tenants);
		j->type = -1;
		if (cfg->tputs) {
			j->type = (int32_t)type_draw;
			if (j->tj->type[0]) {
				j->type = -1;
				for (uint32_t t = 0; t < cfg->tputs->ntypes; t++)
					if (!strcmp(cfg->tputs->types[t], j->tj->type))
						j->type = (int32_t)t;
				if (j->type < 0) {
					errf(s->err, s->err_len,
					     "job %" PRIu64 ": job_type \"%s\" is not in the "
					     "throughput table",
					     j->tj->id, j->tj->type);
					return -2;
				}
			}
		}
		j->tenant = j->tj->tenant ? j->tj->tenant : 1 + tenant_draw;
		j->remaining_us = (double)j->tj->duration_us;
		j->parts = calloc(j->tj->node_count, sizeof *j->parts);
		if (!j->parts)
			return -1;
		/* the lease cap: the reference duration on the slowest model */
		double slowest = INFINITY;
		for (uint32_t m = 0; m < cfg->fleet->nmodels; m++) {
			double v = job_speed(s, j, m);
			if (v > 0 && v < slowest)
				slowest = v;
		}
		double cap = (double)j->tj->duration_us / (slowest < INFINITY ? slowest : 1.0);
		double u = (double)(splitmix64(&lrng) >> 11) / 9007199254740992.0;
		if (cfg->limit_overestimate > 1)
			cap *= pow(cfg->limit_overestimate, u);
		double max_cap = 366.0 * 86400 * 1e6;
		j->max_dur_us = (int64_t)ceil(cap < max_cap ? cap : max_cap);
		j->out = &s->res->per_job[i];
		j->out->id = j->tj->id;
		j->out->tenant = j->tenant;
		j->out->type = j->type;
		j->out->gpus = j->tj->gpus_per_node * j->tj->node_count;
		j->out->submit_us = j->submit_us;
		j->out->ref_duration_us = j->tj->duration_us;
		s->order[i] = i;
		s->job_ids[i] = (struct idx){ j->tj->id, i };
	}
	qsort_r(s->order, tj->n, sizeof *s->order, cmp_order, s->jobs);
	qsort(s->job_ids, tj->n, sizeof *s->job_ids, cmp_idx);
	return 0;
}

/* ---- events ------------------------------------------------------------------------- */

static int job_arrive(struct sim *s, uint32_t ji)
{
	const struct sim_config *cfg = s->cfg;
	struct sjob *j = &s->jobs[ji];
	struct sched_speed speeds[SCHED_MAX_STRINGS];
	uint32_t nspeeds = 0;
	if (cfg->declare_profiles && j->type >= 0) {
		/* what the job knows: its measured speeds, and with interpolation
		 * the estimates for the other models (as a learned profile would) */
		for (uint32_t m = 0; m < cfg->fleet->nmodels && nspeeds < SCHED_MAX_STRINGS; m++) {
			if (s->col_of[m] < 0 && !cfg->interpolate)
				continue;
			double v = job_speed(s, j, m);
			if (v > 0)
				speeds[nspeeds++] =
				    (struct sched_speed){ cfg->fleet->models[m].name, 0, (float)v };
		}
	}
	struct sched_job_spec spec;
	memset(&spec, 0, sizeof spec);
	spec.id = j->tj->id;
	spec.tenant_id = j->tenant;
	spec.kind = SCHED_JOB_TRAINING;
	spec.gpus_per_node = j->tj->gpus_per_node;
	spec.node_count = j->tj->node_count;
	spec.precision = cfg->precision;
	if (cfg->model && j->type >= 0) {
		const struct speed_row *w =
		    speed_model_row(cfg->model, cfg->tputs->types[j->type],
		                    j->tj->gpus_per_node * j->tj->node_count);
		if (w && w->mem_gib > 0)
			spec.min_memory_mib = (uint32_t)ceil(w->mem_gib * 1024);
	}
	spec.max_duration_us = j->max_dur_us;
	spec.priority_class = j->tj->priority_class;
	spec.preemptible = j->tj->preemptible;
	spec.submit_us = j->submit_us;
	spec.nspeeds = nspeeds;
	spec.speeds = speeds;
	struct sched_error se = { "", "" };
	int rc = sched_job_add(s->c, &spec, &se);
	if (rc) {
		errf(s->err, s->err_len, "job %" PRIu64 ": %s: %s", j->tj->id, se.field,
		     rc == -ENOMEM ? "out of memory" : se.message);
		return -2;
	}
	j->state = SJ_PENDING;
	s->npending++;
	return 0;
}

/* Seconds of [a, b) inside [first, last arrival]. */
static double window_s(const struct sim *s, int64_t a, int64_t b)
{
	int64_t w0 = a > s->first_arrival_us ? a : s->first_arrival_us;
	int64_t w1 = b < s->last_arrival_us ? b : s->last_arrival_us;
	return w1 > w0 ? (double)(w1 - w0) / 1e6 : 0;
}

/* Ends the current run at t: GPUs released in the shadow, usage counted.
 * preempted: the run keeps only the work up to its last checkpoint (one
 * every checkpoint_interval_us of run time since its start; the stop
 * request itself writes none), the rest is lost. */
static void run_close(struct sim *s, struct sjob *j, int64_t t, bool preempted)
{
	const struct trace_fleet *fl = s->cfg->fleet;
	int64_t ran = t - j->run_start_us, kept = ran;
	int64_t ckpt = s->cfg->checkpoint_interval_us;
	if (preempted && ckpt > 0)
		kept = ran / ckpt * ckpt;
	double secs = (double)ran / 1e6;
	double wsecs = window_s(s, j->run_start_us, t);
	double lost_s = (double)(ran - kept) / 1e6;
	double lost_wsecs = window_s(s, j->run_start_us + kept, t);
	double kept_wsecs = window_s(s, j->run_start_us, j->run_start_us + kept);
	for (uint32_t p = 0; p < j->nparts; p++) {
		const struct spart *sp = &j->parts[p];
		double g = (double)__builtin_popcountll(sp->mask);
		s->busy[sp->node] &= ~sp->mask;
		s->busy_gpu_s += g * secs;
		s->busy_window_gpu_s += g * wsecs;
		s->lost_gpu_s += g * lost_s;
		s->lost_window_gpu_s += g * lost_wsecs;
		s->work_gpu_s += g * (double)kept / 1e6 * j->run_speed;
		s->work_window_gpu_s += g * kept_wsecs * j->run_speed;
		s->cost_micros += (double)fl->nodes[sp->node].price_micros * g * secs / 3600.0;
	}
	j->remaining_us -= (double)kept * j->run_speed;
	if (j->remaining_us < 1)
		j->remaining_us = 1;
	j->nparts = 0;
	j->gen++;
}

static int handle_event(struct sim *s, const struct ev *e)
{
	struct sjob *j = &s->jobs[e->job];
	if (e->gen != j->gen || j->state != SJ_RUNNING)
		return 0; /* superseded */
	int rc = sched_lease_end(s->c, j->tj->id, e->t, e->kind == EV_STOP);
	if (rc) {
		errf(s->err, s->err_len, "job %" PRIu64 ": lease end failed (%d)", j->tj->id, rc);
		return -2;
	}
	run_close(s, j, e->t, e->kind == EV_STOP);
	if (e->kind == EV_COMPLETE) {
		j->state = SJ_DONE;
		j->out->finished = true;
		j->out->end_us = e->t;
	} else {
		j->state = SJ_PENDING;
		j->out->preemptions++;
		s->res->preemptions++;
		s->npending++;
	}
	return 0;
}

static int apply_start(struct sim *s, const struct sched_action *a, int64_t now)
{
	uint32_t ji = idx_find(s->job_ids, s->njobs, a->job_id);
	uint32_t ni = idx_find(s->node_ids, s->cfg->fleet->nnodes, a->node_id);
	if (ji == UINT32_MAX || ni == UINT32_MAX) {
		errf(s->err, s->err_len, "start of unknown job %" PRIu64 " or node %" PRIu64,
		     a->job_id, a->node_id);
		return -2;
	}
	struct sjob *j = &s->jobs[ji];
	const struct trace_node *n = &s->cfg->fleet->nodes[ni];
	uint64_t all = n->ngpus >= 64 ? ~0ull : (1ull << n->ngpus) - 1;
	if ((s->busy[ni] & a->gpu_mask) || (a->gpu_mask & ~all))
		s->res->overcommits++;
	s->busy[ni] |= a->gpu_mask;
	if (a->gang_index == 0)
		j->nparts = 0;
	if (j->nparts < j->tj->node_count)
		j->parts[j->nparts++] = (struct spart){ ni, a->gpu_mask };
	if (a->gang_index + 1 < a->gang_size)
		return 0;
	/* the whole gang is placed: it runs at the pace of its slowest GPU */
	double speed = INFINITY;
	for (uint32_t p = 0; p < j->nparts; p++) {
		double v = job_speed(s, j, s->cfg->fleet->nodes[j->parts[p].node].model);
		if (v < speed)
			speed = v;
	}
	if (!(speed > 0))
		speed = 1.0;
	j->run_speed = speed;
	j->run_start_us = now;
	j->state = SJ_RUNNING;
	s->npending--;
	if (!j->out->started) {
		j->out->started = true;
		j->out->first_start_us = now;
	}
	j->out->node_id = a->node_id;
	int64_t run = (int64_t)ceil(j->remaining_us / speed);
	if (run < 1)
		run = 1;
	if (heap_push(&s->h, (struct ev){ now + run, ji, j->gen, EV_COMPLETE }))
		return -1;
	const struct sched_policy *pol = &s->cfg->policy;
	if (pol->preempt_shorter_factor > 0 && j->tj->preemptible && pol->preempt_min_run_us > 0 &&
	    pol->preempt_min_run_us < run &&
	    heap_push(&s->h, (struct ev){ now + pol->preempt_min_run_us, ji, j->gen, EV_WAKE }))
		return -1;
	return 0;
}

static int apply_actions(struct sim *s, const struct sched_actions *acts, int64_t now)
{
	for (size_t i = 0; i < acts->len; i++) {
		const struct sched_action *a = &acts->items[i];
		uint32_t ji = idx_find(s->job_ids, s->njobs, a->job_id);
		int rc = 0;
		switch (a->kind) {
		case SCHED_ACT_START:
			rc = apply_start(s, a, now);
			break;
		case SCHED_ACT_PREEMPT:
			if (ji != UINT32_MAX)
				rc = heap_push(
				    &s->h, (struct ev){ a->deadline_us > now ? a->deadline_us : now,
				                        ji, s->jobs[ji].gen, EV_STOP });
			break;
		case SCHED_ACT_UNSCHEDULABLE:
			if (ji != UINT32_MAX) {
				s->jobs[ji].state = SJ_GONE;
				s->npending--;
			}
			break;
		}
		if (rc)
			return rc;
	}
	return 0;
}

/* ---- the loop ------------------------------------------------------------------------ */

static int run_loop(struct sim *s, int64_t *end_us, int64_t *first_us)
{
	const struct sim_config *cfg = s->cfg;
	struct sched_actions acts = { 0 };
	uint32_t next_arr = 0;
	int rc = 0;
	if (!s->njobs) {
		*end_us = *first_us = 0;
		return 0;
	}
	int64_t first = s->jobs[s->order[0]].submit_us;
	s->first_arrival_us = first;
	s->last_arrival_us = s->jobs[s->order[s->njobs - 1]].submit_us;
	int64_t horizon = cfg->horizon_us > 0 ? first + cfg->horizon_us : INT64_MAX;
	int64_t now = first, last_cycle = INT64_MIN, last_event = first;
	int64_t hold_until = 0; /* hold_for_faster: a held job stops waiting */
	bool dirty = false;
	*first_us = first;
	for (;;) {
		while (s->h.n && s->h.v[0].t <= now) {
			struct ev e = heap_pop(&s->h);
			if (e.kind == EV_WAKE) {
				const struct sjob *wj = &s->jobs[e.job];
				if (e.gen == wj->gen && wj->state == SJ_RUNNING)
					dirty = true;
				continue;
			}
			if ((rc = handle_event(s, &e)))
				goto out;
			last_event = e.t;
			dirty = true;
		}
		while (next_arr < s->njobs && s->jobs[s->order[next_arr]].submit_us <= now) {
			if ((rc = job_arrive(s, s->order[next_arr++])))
				goto out;
			dirty = true;
		}
		if (hold_until > 0 && hold_until <= now) {
			hold_until = 0;
			dirty = true;
		}
		if (dirty && s->npending &&
		    (last_cycle == INT64_MIN || now - last_cycle >= cfg->cycle_interval_us)) {
			acts.len = 0;
			struct sched_cycle_stats cst;
			rc = sched_cycle(s->c, now, &acts, &cst);
			if (rc) {
				errf(s->err, s->err_len, "scheduling cycle failed (%d)", rc);
				rc = rc == -ENOMEM ? -1 : -2;
				goto out;
			}
			s->res->cycles++;
			last_cycle = now;
			dirty = false;
			/* jobs waiting for a faster GPU stop waiting then, as
			 * gpumatchd's periodic cycle would see */
			hold_until = cst.hold_until_us;
			if ((rc = apply_actions(s, &acts, now)))
				goto out;
			if (cfg->check) {
				char why[256];
				if (sched_cluster_check(s->c, why, sizeof why))
					s->res->check_failures++;
			}
		}
		int64_t next = INT64_MAX;
		if (s->h.n)
			next = s->h.v[0].t;
		if (next_arr < s->njobs && s->jobs[s->order[next_arr]].submit_us < next)
			next = s->jobs[s->order[next_arr]].submit_us;
		if (hold_until > now && s->npending && hold_until < next)
			next = hold_until;
		if (dirty && s->npending && last_cycle + cfg->cycle_interval_us < next)
			next = last_cycle + cfg->cycle_interval_us;
		if (next == INT64_MAX)
			break;
		if (next > horizon) {
			now = horizon;
			last_event = horizon;
			break;
		}
		now = next;
	}
	/* work still running at the horizon counts up to it */
	for (uint32_t i = 0; i < s->njobs; i++)
		if (s->jobs[i].state == SJ_RUNNING)
			run_close(s, &s->jobs[i], now, false);
	*end_us = last_event;
out:
	sched_actions_free(s->c, &acts);
	return rc;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double pct(const double *v, uint32_t n, double p)
{
	if (!n)
		return 0;
	double r = ceil(p * n);
	uint32_t i = r < 1 ? 0 : (uint32_t)r - 1;
	return v[i < n ? i : n - 1];
}

static int metrics(struct sim *s, int64_t first, int64_t end)
{
	struct sim_result *r = s->res;
	double *jct = malloc((s->njobs ? s->njobs : 1) * sizeof *jct);
	struct tsum {
		uint64_t tenant;
		double sum;
		uint32_t n;
	} *ts = calloc(s->njobs ? s->njobs : 1, sizeof *ts);
	if (!jct || !ts) {
		free(jct);
		free(ts);
		return -1;
	}
	uint32_t nts = 0, started = 0;
	double wait_sum = 0, jct_sum = 0;
	int64_t last_done = first;
	r->jobs = s->njobs;
	for (uint32_t i = 0; i < s->njobs; i++) {
		const struct sjob *j = &s->jobs[i];
		if (j->out->started) {
			started++;
			wait_sum += (double)(j->out->first_start_us - j->submit_us) / 1e6;
		}
		if (j->state == SJ_GONE) {
			r->unschedulable++;
			continue;
		}
		if (j->state != SJ_DONE) {
			r->unfinished++;
			continue;
		}
		double x = (double)(j->out->end_us - j->submit_us) / 1e6;
		jct[r->completed++] = x;
		jct_sum += x;
		if (j->out->end_us > last_done)
			last_done = j->out->end_us;
		uint32_t t = 0;
		while (t < nts && ts[t].tenant != j->tenant)
			t++;
		if (t == nts)
			ts[nts++].tenant = j->tenant;
		ts[t].sum += x > 0 ? ((double)j->tj->duration_us / 1e6) / x : 1.0;
		ts[t].n++;
	}
	qsort(jct, r->completed, sizeof *jct, cmp_double);
	r->avg_jct_s = r->completed ? jct_sum / r->completed : 0;
	r->p50_jct_s = pct(jct, r->completed, 0.50);
	r->p99_jct_s = pct(jct, r->completed, 0.99);
	r->avg_wait_s = started ? wait_sum / started : 0;
	int64_t span_end = r->unfinished ? end : last_done;
	r->makespan_s = (double)(span_end - first) / 1e6;
	double cap = (double)s->cfg->fleet->gpus * r->makespan_s;
	r->gpu_utilization_makespan = cap > 0 ? s->busy_gpu_s / cap : 0;
	int64_t w1 = s->last_arrival_us < end ? s->last_arrival_us : end;
	double wcap = (double)s->cfg->fleet->gpus * (double)(w1 - first) / 1e6;
	r->gpu_utilization = wcap > 0 ? s->busy_window_gpu_s / wcap : r->gpu_utilization_makespan;
	r->gpu_utilization_useful = wcap > 0
	                                ? (s->busy_window_gpu_s - s->lost_window_gpu_s) / wcap
	                                : (cap > 0 ? (s->busy_gpu_s - s->lost_gpu_s) / cap : 0);
	r->lost_gpu_s = s->lost_gpu_s;
	r->effective_throughput_makespan = cap > 0 ? s->work_gpu_s / cap : 0;
	r->effective_throughput =
	    wcap > 0 ? s->work_window_gpu_s / wcap : r->effective_throughput_makespan;
	double a = 0, b = 0;
	for (uint32_t t = 0; t < nts; t++) {
		double x = ts[t].sum / ts[t].n;
		a += x;
		b += x * x;
	}
	r->jain_fairness = nts && b > 0 ? a * a / (nts * b) : 1.0;
	r->cost_micros = (int64_t)llround(s->cost_micros);
	r->sim_seconds = (double)(end - first) / 1e6;
	free(jct);
	free(ts);
	return 0;
}

int sim_run(const struct sim_config *cfg, struct sim_result *out, char *err, size_t err_len)
{
	memset(out, 0, sizeof *out);
	if (!cfg->fleet || !cfg->jobs) {
		errf(err, err_len, "a node inventory and a job list are required");
		return -1;
	}
	if (!(cfg->arrival_scale > 0 && cfg->arrival_scale <= 1e6)) {
		errf(err, err_len, "arrival_scale: must be greater than 0 and at most 1e6, got %g",
		     cfg->arrival_scale);
		return -1;
	}
	if (!(cfg->limit_overestimate >= 1 && cfg->limit_overestimate <= 1000)) {
		errf(err, err_len, "limit_overestimate: must be between 1 and 1000, got %g",
		     cfg->limit_overestimate);
		return -1;
	}
	if (cfg->tenants < 1 || cfg->cycle_interval_us < 0 || cfg->horizon_us < 0 ||
	    cfg->checkpoint_interval_us < 0) {
		errf(err, err_len, "%s: must be %s",
		     cfg->tenants < 1                  ? "tenants"
		     : cfg->horizon_us < 0             ? "horizon"
		     : cfg->checkpoint_interval_us < 0 ? "checkpoint_interval"
		                                       : "cycle_interval",
		     cfg->tenants < 1 ? "at least 1" : "0 or positive");
		return -1;
	}
	struct sched_error se = { "", "" };
	if (sched_policy_validate(&cfg->policy, &se)) {
		errf(err, err_len, "policy: %s: %s", se.field, se.message);
		return -1;
	}
	struct sim s;
	memset(&s, 0, sizeof s);
	s.cfg = cfg;
	s.res = out;
	s.err = err;
	s.err_len = err_len;
	int rc = -1;
	int64_t first = 0, end = 0;
	s.c = sched_cluster_new(NULL);
	if (!s.c)
		goto oom;
	if (sched_set_policy(s.c, &cfg->policy, &se))
		goto oom;
	for (uint32_t i = 0; i < cfg->jobs->n; i++) {
		uint64_t t = cfg->jobs->v[i].tenant;
		if (t && sched_tenant_set_shares(s.c, t, 1))
			goto oom;
	}
	if ((rc = setup_models(&s)) || (rc = setup_nodes(&s)) || (rc = setup_jobs(&s)) ||
	    (rc = run_loop(&s, &end, &first)) || (rc = metrics(&s, first, end)))
		goto fail;
	rc = 0;
	goto done;
oom:
	rc = -1;
fail:
	if (rc == -1)
		errf(err, err_len, "out of memory");
	sim_result_free(out);
	rc = -1;
done:
	for (uint32_t i = 0; s.jobs && i < s.njobs; i++)
		free(s.jobs[i].parts);
	free(s.jobs);
	free(s.order);
	free(s.job_ids);
	free(s.node_ids);
	free(s.col_of);
	free(s.model_gpu);
	free(s.col_tflops);
	free(s.busy);
	free(s.h.v);
	sched_cluster_free(s.c);
	return rc;
}

void sim_result_free(struct sim_result *r)
{
	if (!r)
		return;
	free(r->per_job);
	r->per_job = NULL;
}

size_t sim_result_json(const struct sim_result *r, double wall_s, double cpu_s, char *buf,
                       size_t len)
{
	char wall[320] = "";
	if (wall_s >= 0 && cpu_s >= 0)
		snprintf(wall, sizeof wall,
		         ",\"wall_s\":%.3f,\"sim_seconds_per_wall_second\":%.0f,\"cpu_s\":%.3f,"
		         "\"sim_seconds_per_cpu_second\":%.0f",
		         wall_s, wall_s > 0 ? r->sim_seconds / wall_s : 0.0, cpu_s,
		         cpu_s > 0 ? r->sim_seconds / cpu_s : 0.0);
	else if (wall_s >= 0)
		snprintf(wall, sizeof wall, ",\"wall_s\":%.3f,\"sim_seconds_per_wall_second\":%.0f",
		         wall_s, wall_s > 0 ? r->sim_seconds / wall_s : 0.0);
	int n = snprintf(
	    buf, len,
	    "{\"jobs\":%u,\"completed\":%u,\"unfinished\":%u,\"unschedulable\":%u,"
	    "\"avg_jct_s\":%.3f,\"p50_jct_s\":%.3f,\"p99_jct_s\":%.3f,\"avg_wait_s\":%.3f,"
	    "\"makespan_s\":%.3f,\"gpu_utilization\":%.6f,\"gpu_utilization_makespan\":%.6f,"
	    "\"jain_fairness\":%.6f,"
	    "\"cost_micros\":%" PRId64 ",\"preemptions\":%u,\"lost_gpu_s\":%.3f,"
	    "\"gpu_utilization_useful\":%.6f,\"useful_utilization\":%.6f,"
	    "\"effective_throughput\":%.6f,\"effective_throughput_makespan\":%.6f,"
	    "\"cycles\":%" PRIu64 ",\"overcommits\":%" PRIu64 ",\"check_failures\":%" PRIu64
	    ",\"sim_seconds\":%.3f%s}",
	    r->jobs, r->completed, r->unfinished, r->unschedulable, r->avg_jct_s, r->p50_jct_s,
	    r->p99_jct_s, r->avg_wait_s, r->makespan_s, r->gpu_utilization,
	    r->gpu_utilization_makespan, r->jain_fairness, r->cost_micros, r->preemptions,
	    r->lost_gpu_s, r->gpu_utilization_useful, r->gpu_utilization_useful,
	    r->effective_throughput, r->effective_throughput_makespan, r->cycles, r->overcommits,
	    r->check_failures, r->sim_seconds, wall);
	return n < 0 ? 0 : (size_t)n;
}
