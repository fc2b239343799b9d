/* test_property.c — randomized invariants over thousands of small generated
 * fleets and queues, with random interleavings of node and job changes,
 * cycles and lease ends. The test keeps its own model of every fact and
 * placement and checks the library against it after each step.
 *
 * Usage: test_property [seed [cases]]. Every failure prints the seed of its
 * case; `test_property SEED 1` replays that case alone. */
#include "fixture.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>

#define DEFAULT_SEED     20250101u
#define DEFAULT_CASES    2000
#define MAX_NODES        40
#define MAX_JOBS         256
#define MAX_NC           3
#define NTENANTS         4
#define MAX_FAILED_CASES 5

static const char *const regions[] = { "r0", "r1", "r2" };
static const char *const label_pool[] = { "tier=gold", "tier=silver", "zone=a", "zone=b",
	                                  "nic=ib" };
static const char *const taint_pool[] = { "spot", "gpu=dedicated", "gpu=shared" };
static const char *const toleration_pool[] = { "spot", "gpu", "gpu=dedicated", "gpu=shared",
	                                       "other" };
static const struct sched_gpu_spec *const templates[] = { &fx_gpu_h100, &fx_gpu_a100, &fx_gpu_l4,
	                                                  &fx_gpu_3060 };

struct mnode {
	bool live;
	struct fx_node n;
	uint64_t used;                            /* GPUs held, by our own count */
	uint64_t holder[SCHED_MAX_GPUS_PER_NODE]; /* job id per held GPU */
};

struct mjob {
	bool live;
	struct fx_job j;
	int state;
	uint32_t nparts;
	struct sched_placement parts[MAX_NC];
	int64_t start_us;
	uint64_t seq; /* order of add */
};

struct model {
	struct sched_cluster *c;
	struct sched_policy pol;
	struct mnode nodes[MAX_NODES + 1]; /* index = node id */
	struct mjob jobs[MAX_JOBS + 1];    /* index = job id */
	uint64_t next_job, seq;
	int64_t now;
	uint32_t shares[NTENANTS + 1];
	uint64_t rng;
	uint64_t seed;
	int step;
	const char *op;
	bool failed;
};

/* What the cases exercised, summed over all of them. */
static struct {
	uint64_t cycles, starts, preempts, shorter_preempts, unschedulable, reservations_checked,
	    fresh_compared, ebusy, lease_starts, clamped_grace;
} cov;

static char row_buf[160];

#define PFAIL(m, ...)                                     \
	do {                                              \
		fx_fail(__FILE__, __LINE__, __VA_ARGS__); \
		(m)->failed = true;                       \
	} while (0)

/* ---- random ------------------------------------------------------------- */

static uint64_t rng_next(struct model *m)
{
	uint64_t z = (m->rng += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint32_t rnd(struct model *m, uint32_t n)
{
	return n ? (uint32_t)(rng_next(m) % n) : 0;
}

static bool chance(struct model *m, uint32_t pct)
{
	return rnd(m, 100) < pct;
}

/* ---- generation --------------------------------------------------------- */

static void gen_gpus(struct model *m, struct fx_node *n)
{
	uint32_t nparts = chance(m, 30) ? 2 : 1, idx = 0;
	int prev = -1;

	for (uint32_t p = 0; p < nparts; p++) {
		static const uint32_t counts[] = { 1, 2, 4, 8, 8 };
		int t;
		uint32_t count = counts[rnd(m, FX_ARRAY_LEN(counts))];
		float f = 0.7f + (float)rnd(m, 31) / 100.0f;
		bool nvlink = chance(m, 50);
		uint32_t gsize = 2u << rnd(m, 3);

		do
			t = (int)rnd(m, FX_ARRAY_LEN(templates));
		while (t == prev);
		prev = t;
		for (uint32_t i = 0; i < count; i++, idx++) {
			n->gpus[idx] = *templates[t];
			for (int k = 0; k < SCHED_PREC_COUNT; k++)
				n->gpus[idx].tflops[k] = roundf(templates[t]->tflops[k] * f);
			n->gpus[idx].nvlink_group = nvlink ? (uint16_t)(1 + p * 10 + i / gsize) : 0;
		}
	}
	n->spec.ngpus = idx;
}

static void gen_node(struct model *m, uint64_t id, struct fx_node *n)
{
	const char *labels[SCHED_MAX_STRINGS + 1];
	const char *taints[SCHED_MAX_STRINGS + 1];
	uint32_t nl = 0, nt = 0;

	fx_node_init(n, id, regions[rnd(m, FX_ARRAY_LEN(regions))], "1xH100");
	gen_gpus(m, n);
	n->spec.state = chance(m, 85) ? SCHED_NODE_READY : (enum sched_node_state)(1 + rnd(m, 3));
	n->spec.verified = chance(m, 85);
	n->spec.price_micros = (int64_t)(1 + rnd(m, 50)) * 100000;
	n->spec.reliability_ppm = rnd(m, 1000001);
	for (size_t i = 0; i < FX_ARRAY_LEN(label_pool); i++)
		if (chance(m, 30))
			labels[nl++] = label_pool[i];
	for (size_t i = 0; i < FX_ARRAY_LEN(taint_pool); i++)
		if (chance(m, 10))
			taints[nt++] = taint_pool[i];
	memcpy(n->labels, labels, nl * sizeof *labels);
	memcpy(n->taints, taints, nt * sizeof *taints);
	n->spec.nlabels = nl;
	n->spec.ntaints = nt;
	fx_node_spec(n);
}

static void gen_job(struct model *m, uint64_t id, struct fx_job *j)
{
	static const uint32_t gpns[] = { 1, 1, 1, 2, 2, 4, 8 };
	static const uint32_t mems[] = { 16384, 40960, 81920 };
	static const uint16_t ccs[] = { 80, 86, 89, 90 };
	static const float per_gpu[] = { 10, 50, 100, 300 };
	static const float totals[] = { 100, 500, 2000 };

	fx_job_init(j, id, gpns[rnd(m, FX_ARRAY_LEN(gpns))]);
	j->spec.node_count = chance(m, 15) ? 2 + rnd(m, MAX_NC - 1) : 1;
	j->spec.tenant_id = 1 + rnd(m, NTENANTS);
	j->spec.kind = (enum sched_job_kind)rnd(m, SCHED_JOB_KIND_COUNT);
	j->spec.precision = (enum sched_precision)rnd(m, SCHED_PREC_COUNT);
	if (chance(m, 20))
		j->spec.min_memory_mib = mems[rnd(m, FX_ARRAY_LEN(mems))];
	if (chance(m, 15))
		j->spec.min_compute_cap = ccs[rnd(m, FX_ARRAY_LEN(ccs))];
	if (chance(m, 15))
		j->spec.min_tflops_per_gpu = per_gpu[rnd(m, FX_ARRAY_LEN(per_gpu))];
	if (chance(m, 10))
		j->spec.min_tflops_total = totals[rnd(m, FX_ARRAY_LEN(totals))];
	j->spec.require_nvlink = chance(m, 20);
	if (chance(m, 20)) {
		uint32_t a = rnd(m, 3), b = rnd(m, 3);

		j->regions[0] = regions[a];
		j->spec.nregions = 1;
		if (b != a)
			j->regions[j->spec.nregions++] = regions[b];
	}
	if (chance(m, 30))
		j->spec.preferred_region = regions[rnd(m, 3)];
	if (chance(m, 15)) {
		j->selectors[0] = label_pool[rnd(m, FX_ARRAY_LEN(label_pool))];
		j->spec.nselectors = 1;
	}
	if (chance(m, 25)) {
		j->tolerations[0] = toleration_pool[rnd(m, FX_ARRAY_LEN(toleration_pool))];
		j->spec.ntolerations = 1;
		if (chance(m, 50))
			j->tolerations[j->spec.ntolerations++] =
			    toleration_pool[rnd(m, FX_ARRAY_LEN(toleration_pool))];
	}
	if (chance(m, 20))
		j->spec.max_price_micros = (int64_t)(5 + rnd(m, 40)) * 100000;
	j->spec.max_duration_us = FX_S(10 + rnd(m, 500));
	j->spec.priority_class = rnd(m, SCHED_PRIO_CLASSES);
	j->spec.preemptible = chance(m, 50);
	j->spec.submit_us = m->now;
	fx_job_spec(j);
}

static void gen_policy(struct model *m)
{
	struct sched_policy *p = &m->pol;

	memset(p, 0, sizeof *p); /* padding too: clusters compare policies bytewise */
	fx_policy(p);
	p->w_price = chance(m, 50) ? rnd(m, 5) : 0;
	p->w_perf_per_price = chance(m, 50) ? rnd(m, 5) : 0;
	p->w_perf = chance(m, 50) ? rnd(m, 5) : 0;
	p->w_fit = chance(m, 50) ? rnd(m, 5) : 0;
	p->w_reliability = chance(m, 50) ? rnd(m, 5) : 0;
	p->w_locality = chance(m, 50) ? rnd(m, 5) : 0;
	p->fit_mode = (enum sched_fit_mode)rnd(m, 2);
	/* The library sizes a per-cycle scratch by score_nodes: 100000 costs
	 * megabytes per cluster, so it is drawn rarely. */
	p->score_nodes = chance(m, 20) ? 1 + rnd(m, 4) : chance(m, 5) ? 100000 : 64;
	p->w_prio_class = rnd(m, 3);
	p->w_age = rnd(m, 2);
	p->w_fairshare = rnd(m, 3);
	p->age_max_us = FX_S(1 + rnd(m, 600));
	p->fairness = (enum sched_fairness)rnd(m, 2);
	p->fairshare_half_life_us = FX_S(10 + rnd(m, 1000));
	p->allow_unverified = chance(m, 30);
	p->backfill = chance(m, 60);
	p->reservations = rnd(m, 4);
	p->backfill_depth = chance(m, 30) ? 1 + rnd(m, 3) : 0;
	p->preemption = chance(m, 40);
	p->preemption_grace_us = FX_S(rnd(m, 20));
	if (chance(m, 40)) {
		p->preempt_shorter_factor = 1 + rnd(m, 4);
		p->preempt_min_run_us = FX_S(rnd(m, 30));
	}
	p->infeasible_timeout_us = chance(m, 30) ? FX_S(1 + rnd(m, 200)) : 0;
}

/* ---- reference filters -------------------------------------------------- */

static bool has_string(const char *const *list, uint32_t n, const char *s)
{
	for (uint32_t i = 0; i < n; i++)
		if (strcmp(list[i], s) == 0)
			return true;
	return false;
}

static bool taint_tolerated(const char *taint, const struct sched_job_spec *s)
{
	for (uint32_t i = 0; i < s->ntolerations; i++) {
		const char *t = s->tolerations[i];
		size_t len = strlen(t);

		if (strcmp(t, taint) == 0)
			return true;
		if (!strchr(t, '=') && strncmp(taint, t, len) == 0 && taint[len] == '=')
			return true;
	}
	return false;
}

/* Node-level hard constraints (no GPUs, no state). */
static bool node_facts_ok(const struct sched_node_spec *n, const struct sched_job_spec *s,
                          bool check_price)
{
	if (s->nregions && !has_string(s->regions, s->nregions, n->region))
		return false;
	for (uint32_t i = 0; i < n->ntaints; i++)
		if (!taint_tolerated(n->taints[i], s))
			return false;
	if (check_price && s->max_price_micros > 0 && n->price_micros > s->max_price_micros)
		return false;
	for (uint32_t i = 0; i < s->nselectors; i++)
		if (!has_string(n->labels, n->nlabels, s->selectors[i]))
			return false;
	return true;
}

static double need_tflops(const struct sched_job_spec *s)
{
	double total = (double)s->min_tflops_total / ((double)s->gpus_per_node * s->node_count);

	return total > s->min_tflops_per_gpu ? total : s->min_tflops_per_gpu;
}

/* The generated TFLOPS figures are integers and the minimums are never
 * within rounding of them unless exactly equal, so no tolerance is needed. */
static bool gpu_ok(const struct sched_gpu_spec *g, const struct sched_job_spec *s)
{
	if (g->memory_mib < s->min_memory_mib || g->compute_cap < s->min_compute_cap)
		return false;
	if (!(g->precisions & (1u << s->precision)))
		return false;
	return (double)g->tflops[s->precision] >= need_tflops(s);
}

static bool same_part(const struct sched_gpu_spec *a, const struct sched_gpu_spec *b)
{
	return strcmp(a->model, b->model) == 0 && a->memory_mib == b->memory_mib &&
	       a->compute_cap == b->compute_cap && a->precisions == b->precisions;
}

/* The sets of GPUs a job could take together on a node: one part, and one
 * NVLink group of it when the job needs NVLink. Returns how many sets were
 * written to sets[]. */
static int gpu_sets(const struct fx_node *n, const struct sched_job_spec *s, uint64_t *sets)
{
	int nsets = 0;
	uint64_t seen = 0;
	bool link = s->require_nvlink && s->gpus_per_node > 1;

	for (uint32_t i = 0; i < n->spec.ngpus; i++) {
		uint64_t set = 0;

		if (seen >> i & 1)
			continue;
		for (uint32_t k = i; k < n->spec.ngpus; k++) {
			if (!same_part(&n->gpus[i], &n->gpus[k]))
				continue;
			if (link && n->gpus[k].nvlink_group != n->gpus[i].nvlink_group)
				continue;
			set |= 1ull << k;
		}
		seen |= set;
		if (link && n->gpus[i].nvlink_group == 0)
			continue;
		if (!gpu_ok(&n->gpus[i], s))
			continue;
		if ((uint32_t)fx_popcount(set) >= s->gpus_per_node)
			sets[nsets++] = set;
	}
	return nsets;
}

static bool node_takes_work(const struct model *m, const struct fx_node *n)
{
	return n->spec.state == SCHED_NODE_READY && (n->spec.verified || m->pol.allow_unverified);
}

/* Could this node host the job if it were idle? */
static bool node_could_host(const struct model *m, const struct fx_node *n,
                            const struct sched_job_spec *s)
{
	uint64_t sets[SCHED_MAX_GPUS_PER_NODE];

	return node_takes_work(m, n) && node_facts_ok(&n->spec, s, true) &&
	       gpu_sets(n, s, sets) > 0;
}

/* ---- diagnostics -------------------------------------------------------- */

static void dump_job(const struct mjob *mj)
{
	const struct sched_job_spec *s = &mj->j.spec;

	fprintf(stderr,
	        "  job %" PRIu64 ": state %d tenant %" PRIu64 " %ux%u prec %d mem %u cc %u"
	        " tflops %g/%g nvlink %d price<=%" PRId64 " class %u%s dur %" PRId64 "s"
	        " submit %" PRId64 "s",
	        s->id, mj->state, s->tenant_id, s->node_count, s->gpus_per_node, s->precision,
	        s->min_memory_mib, s->min_compute_cap, (double)s->min_tflops_per_gpu,
	        (double)s->min_tflops_total, s->require_nvlink, s->max_price_micros,
	        s->priority_class, s->preemptible ? " preemptible" : "",
	        s->max_duration_us / 1000000, s->submit_us / 1000000);
	for (uint32_t i = 0; i < s->nregions; i++)
		fprintf(stderr, " region=%s", s->regions[i]);
	for (uint32_t i = 0; i < s->nselectors; i++)
		fprintf(stderr, " sel=%s", s->selectors[i]);
	for (uint32_t i = 0; i < s->ntolerations; i++)
		fprintf(stderr, " tol=%s", s->tolerations[i]);
	fputc('\n', stderr);
}

static void dump_node(const struct mnode *mn)
{
	const struct sched_node_spec *s = &mn->n.spec;

	fprintf(stderr,
	        "  node %" PRIu64 ": %s state %d verified %d price %" PRId64 " used %#" PRIx64
	        " gpus:",
	        s->id, s->region, s->state, s->verified, s->price_micros, mn->used);
	for (uint32_t g = 0; g < s->ngpus; g++)
		fprintf(stderr, " %s/%u/%u/%#x/nvl%u/%g", s->gpus[g].model, s->gpus[g].memory_mib,
		        s->gpus[g].compute_cap, s->gpus[g].precisions, s->gpus[g].nvlink_group,
		        (double)s->gpus[g].tflops[SCHED_PREC_FP16]);
	for (uint32_t i = 0; i < s->nlabels; i++)
		fprintf(stderr, " label=%s", s->labels[i]);
	for (uint32_t i = 0; i < s->ntaints; i++)
		fprintf(stderr, " taint=%s", s->taints[i]);
	fputc('\n', stderr);
}

/* ---- model updates ------------------------------------------------------ */

static int nparts_of(const struct mjob *mj)
{
	return (int)mj->j.spec.node_count;
}

static void model_release(struct model *m, struct mjob *mj)
{
	for (uint32_t i = 0; i < mj->nparts; i++) {
		struct mnode *mn = &m->nodes[mj->parts[i].node_id];

		mn->used &= ~mj->parts[i].gpu_mask;
		for (uint32_t g = 0; g < SCHED_MAX_GPUS_PER_NODE; g++)
			if (mj->parts[i].gpu_mask >> g & 1)
				mn->holder[g] = 0;
	}
	mj->nparts = 0;
}

static void model_place(struct model *m, struct mjob *mj, const struct sched_placement *pl,
                        uint32_t npl, int64_t start_us)
{
	for (uint32_t i = 0; i < npl; i++) {
		struct mnode *mn = &m->nodes[pl[i].node_id];

		mj->parts[i] = pl[i];
		mn->used |= pl[i].gpu_mask;
		for (uint32_t g = 0; g < SCHED_MAX_GPUS_PER_NODE; g++)
			if (pl[i].gpu_mask >> g & 1)
				mn->holder[g] = mj->j.spec.id;
	}
	mj->nparts = npl;
	mj->state = SCHED_JOB_RUNNING;
	mj->start_us = start_us;
}

static uint64_t full_mask(const struct fx_node *n)
{
	return n->spec.ngpus == 64 ? ~0ull : (1ull << n->spec.ngpus) - 1;
}

/* ---- checks after every step -------------------------------------------- */

static bool same_placement(const struct sched_placement *a, uint32_t na,
                           const struct sched_placement *b, uint32_t nb)
{
	if (na != nb)
		return false;
	for (uint32_t i = 0; i < na; i++) {
		bool found = false;

		for (uint32_t k = 0; k < nb && !found; k++)
			found = a[i].node_id == b[k].node_id && a[i].gpu_mask == b[k].gpu_mask;
		if (!found)
			return false;
	}
	return true;
}

static void verify_state(struct model *m)
{
	struct sched_stats st;
	uint32_t nodes = 0, by_state[SCHED_NODE_STATE_COUNT] = { 0 }, pending = 0, running = 0;
	uint64_t total = 0, free_ready = 0;

	if (!EXPECT_CHECK(m->c)) {
		m->failed = true;
		return;
	}
	for (uint64_t id = 1; id <= MAX_NODES; id++) {
		struct mnode *mn = &m->nodes[id];
		uint64_t fm = 0;
		int rc = sched_node_free_mask(m->c, id, &fm);

		if (!mn->live) {
			if (rc != -ENOENT)
				PFAIL(m, "node %" PRIu64 " removed but free_mask says %d", id, rc);
			continue;
		}
		nodes++;
		by_state[mn->n.spec.state]++;
		total += mn->n.spec.ngpus;
		if (rc != 0 || fm != (full_mask(&mn->n) & ~mn->used)) {
			PFAIL(m,
			      "node %" PRIu64 ": free mask %#" PRIx64 " (rc %d), model %#" PRIx64,
			      id, fm, rc, full_mask(&mn->n) & ~mn->used);
			return;
		}
		if (mn->n.spec.state == SCHED_NODE_READY)
			free_ready += (uint64_t)fx_popcount(fm);
	}
	for (uint64_t id = 1; id < m->next_job; id++) {
		struct mjob *mj = &m->jobs[id];
		int state = sched_job_state(m->c, id);

		if (!mj->live) {
			if (state != -ENOENT)
				PFAIL(m, "job %" PRIu64 " gone but state %d", id, state);
			continue;
		}
		if (state != mj->state) {
			PFAIL(m, "job %" PRIu64 ": state %d, model %d", id, state, mj->state);
			return;
		}
		if (mj->state == SCHED_JOB_PENDING) {
			pending++;
		} else {
			struct sched_placement pl[SCHED_MAX_GANG_NODES];
			int n = sched_job_placement(m->c, id, pl, SCHED_MAX_GANG_NODES);

			running++;
			if (n < 0 || !same_placement(pl, (uint32_t)n, mj->parts, mj->nparts)) {
				PFAIL(m,
				      "job %" PRIu64
				      ": placement differs from the model (%d parts)",
				      id, n);
				return;
			}
		}
	}
	sched_get_stats(m->c, &st);
	if (st.nodes != nodes || st.gpus_total != total || st.gpus_free != free_ready ||
	    st.jobs_pending != pending || st.jobs_running != running)
		PFAIL(m,
		      "stats: nodes %u/%u gpus %" PRIu64 "/%" PRIu64 " free %" PRIu64 "/%" PRIu64
		      " pending %u/%u running %u/%u",
		      st.nodes, nodes, st.gpus_total, total, st.gpus_free, free_ready,
		      st.jobs_pending, pending, st.jobs_running, running);
	for (int s = 0; s < SCHED_NODE_STATE_COUNT; s++)
		if (st.nodes_by_state[s] != by_state[s])
			PFAIL(m, "stats: %u nodes in state %d, model %u", st.nodes_by_state[s], s,
			      by_state[s]);
}

/* Does the part on this node satisfy every constraint of the job? */
static void check_start_part(struct model *m, const struct mjob *mj, const struct sched_action *a)
{
	const struct sched_job_spec *s = &mj->j.spec;
	const struct mnode *mn;
	const struct fx_node *n;
	int first = -1;

	if (a->node_id == 0 || a->node_id > MAX_NODES || !m->nodes[a->node_id].live) {
		PFAIL(m, "START job %" PRIu64 " on unknown node %" PRIu64, a->job_id, a->node_id);
		return;
	}
	mn = &m->nodes[a->node_id];
	n = &mn->n;
	if (a->gpu_mask & ~full_mask(n)) {
		PFAIL(m, "START job %" PRIu64 ": GPUs %#" PRIx64 " beyond node %" PRIu64, a->job_id,
		      a->gpu_mask, a->node_id);
		return;
	}
	if (a->gpu_mask & mn->used)
		PFAIL(m,
		      "START job %" PRIu64 ": GPUs %#" PRIx64 " of node %" PRIu64
		      " already held (by job %" PRIu64 ")",
		      a->job_id, a->gpu_mask & mn->used, a->node_id,
		      mn->holder[__builtin_ctzll(a->gpu_mask & mn->used)]);
	if ((uint32_t)fx_popcount(a->gpu_mask) != s->gpus_per_node)
		PFAIL(m, "START job %" PRIu64 ": %d GPUs, wants %u", a->job_id,
		      fx_popcount(a->gpu_mask), s->gpus_per_node);
	if (n->spec.state != SCHED_NODE_READY)
		PFAIL(m, "START job %" PRIu64 " on node %" PRIu64 " in state %d", a->job_id,
		      a->node_id, n->spec.state);
	if (!n->spec.verified && !m->pol.allow_unverified)
		PFAIL(m, "START job %" PRIu64 " on unverified node %" PRIu64, a->job_id,
		      a->node_id);
	if (!node_facts_ok(&n->spec, s, true))
		PFAIL(m,
		      "START job %" PRIu64 " on node %" PRIu64
		      ": region, taint, price or label violated",
		      a->job_id, a->node_id);
	for (uint32_t g = 0; g < n->spec.ngpus; g++) {
		if (!(a->gpu_mask >> g & 1))
			continue;
		if (first < 0)
			first = (int)g;
		if (!same_part(&n->gpus[first], &n->gpus[g]))
			PFAIL(m, "START job %" PRIu64 " mixes parts on node %" PRIu64, a->job_id,
			      a->node_id);
		if (!gpu_ok(&n->gpus[g], s))
			PFAIL(m,
			      "START job %" PRIu64 ": GPU %u of node %" PRIu64
			      " below memory/cc/precision/TFLOPS",
			      a->job_id, g, a->node_id);
		if (s->require_nvlink && s->gpus_per_node > 1 &&
		    (n->gpus[g].nvlink_group == 0 ||
		     n->gpus[g].nvlink_group != n->gpus[first].nvlink_group))
			PFAIL(m,
			      "START job %" PRIu64
			      ": GPUs not in one NVLink group on node %" PRIu64,
			      a->job_id, a->node_id);
	}
	if (a->deadline_us != m->now + s->max_duration_us)
		PFAIL(m, "START job %" PRIu64 ": deadline %" PRId64 ", want %" PRId64, a->job_id,
		      a->deadline_us, m->now + s->max_duration_us);
}

/* Earliest time the job could start, by brute force over the running jobs'
 * deadlines on nodes passing its filters; INT64_MAX if never. */
static int64_t reference_start(const struct model *m, const struct sched_job_spec *s)
{
	int64_t best = INT64_MAX;

	for (int r = 0; r < (int)FX_ARRAY_LEN(regions); r++) {
		int64_t t_nodes[MAX_NODES];
		int nt = 0;

		for (uint64_t id = 1; id <= MAX_NODES; id++) {
			const struct mnode *mn = &m->nodes[id];
			uint64_t sets[SCHED_MAX_GPUS_PER_NODE];
			int nsets;
			int64_t t_node = INT64_MAX;

			if (!mn->live || strcmp(mn->n.spec.region, regions[r]) != 0 ||
			    !node_takes_work(m, &mn->n) || !node_facts_ok(&mn->n.spec, s, true))
				continue;
			nsets = gpu_sets(&mn->n, s, sets);
			for (int k = 0; k < nsets; k++) {
				int64_t times[SCHED_MAX_GPUS_PER_NODE];
				int nfree = 0;

				for (uint32_t g = 0; g < mn->n.spec.ngpus; g++) {
					int64_t t = m->now;

					if (!(sets[k] >> g & 1))
						continue;
					if (mn->used >> g & 1) {
						const struct mjob *h = &m->jobs[mn->holder[g]];
						int64_t end =
						    h->start_us + h->j.spec.max_duration_us;

						t = end > m->now ? end : m->now;
					}
					times[nfree++] = t;
				}
				/* the gpn-th smallest */
				for (int a = 0; a < nfree; a++)
					for (int b = a + 1; b < nfree; b++)
						if (times[b] < times[a]) {
							int64_t x = times[a];

							times[a] = times[b];
							times[b] = x;
						}
				if (times[s->gpus_per_node - 1] < t_node)
					t_node = times[s->gpus_per_node - 1];
			}
			if (t_node != INT64_MAX)
				t_nodes[nt++] = t_node;
		}
		if ((uint32_t)nt < s->node_count)
			continue;
		for (int a = 0; a < nt; a++)
			for (int b = a + 1; b < nt; b++)
				if (t_nodes[b] < t_nodes[a]) {
					int64_t x = t_nodes[a];

					t_nodes[a] = t_nodes[b];
					t_nodes[b] = x;
				}
		if (t_nodes[s->node_count - 1] < best)
			best = t_nodes[s->node_count - 1];
	}
	return best;
}

static bool any_preempting(const struct model *m)
{
	for (uint64_t id = 1; id < m->next_job; id++)
		if (m->jobs[id].live && m->jobs[id].state == SCHED_JOB_PREEMPTING)
			return true;
	return false;
}

/* Explanations of pending jobs after a cycle: counts add up; reservations
 * are not later than the brute-force reference; greedy cycles leave no
 * pending single-node job that fits now. */
static void verify_pending(struct model *m)
{
	uint32_t nodes = 0;
	bool preempting = any_preempting(m);
	bool conserving = m->pol.backfill_depth == 0;

	for (uint64_t id = 1; id <= MAX_NODES; id++)
		nodes += m->nodes[id].live;
	for (uint64_t id = 1; id < m->next_job && !m->failed; id++) {
		struct mjob *mj = &m->jobs[id];
		struct sched_explain e;
		uint32_t sum = 0;

		if (!mj->live || mj->state != SCHED_JOB_PENDING)
			continue;
		if (!fx_explain(m->c, id, &e)) {
			m->failed = true;
			return;
		}
		for (int r = 0; r < SCHED_R_COUNT; r++)
			sum += e.count[r];
		if (e.state != SCHED_JOB_PENDING || e.total_nodes != nodes ||
		    e.fit_nodes + sum != nodes || e.gang_nodes != mj->j.spec.node_count)
			PFAIL(m,
			      "explain job %" PRIu64 ": state %d total %u (model %u) fit %u + %u",
			      id, e.state, e.total_nodes, nodes, e.fit_nodes, sum);
		if (conserving && mj->j.spec.node_count == 1 && e.fit_nodes != 0)
			PFAIL(m, "job %" PRIu64 " left pending though %u node(s) fit it now", id,
			      e.fit_nodes);
		if (e.reserved && !preempting) {
			int64_t ref = reference_start(m, &mj->j.spec);
			int64_t rep = e.reserved_start_us > m->now ? e.reserved_start_us : m->now;

			cov.reservations_checked++;
			if (ref > rep) {
				PFAIL(m,
				      "job %" PRIu64 " reserved for %" PRId64
				      " but cannot start before %" PRId64 " (delayed by backfill?)",
				      id, e.reserved_start_us, ref);
				dump_job(mj);
				for (uint64_t nid = 1; nid <= MAX_NODES; nid++)
					if (m->nodes[nid].live)
						dump_node(&m->nodes[nid]);
			}
		}
	}
}

/* ---- operations --------------------------------------------------------- */

static uint64_t random_job(struct model *m, int want_state)
{
	uint64_t ids[MAX_JOBS];
	uint32_t n = 0;

	for (uint64_t id = 1; id < m->next_job; id++)
		if (m->jobs[id].live && (want_state == 0 || m->jobs[id].state == want_state))
			ids[n++] = id;
	return n ? ids[rnd(m, n)] : 0;
}

static uint64_t random_node(struct model *m)
{
	uint64_t ids[MAX_NODES];
	uint32_t n = 0;

	for (uint64_t id = 1; id <= MAX_NODES; id++)
		if (m->nodes[id].live)
			ids[n++] = id;
	return n ? ids[rnd(m, n)] : 0;
}

static void expect_rc(struct model *m, int rc, int want, const char *what,
                      const struct sched_error *err)
{
	if (rc != want)
		PFAIL(m, "%s returned %d (%s), want %d (%s)%s%s", what, rc, fx_errno_name(rc), want,
		      fx_errno_name(want), err && err->field[0] ? "; field " : "",
		      err && err->field[0] ? err->field : "");
}

static void op_add_job(struct model *m)
{
	struct sched_error err = { 0 };
	struct mjob *mj;

	if (m->next_job > MAX_JOBS)
		return;
	if (m->next_job > 1 && chance(m, 3)) {
		uint64_t id = random_job(m, 0);
		struct fx_job dup;

		if (id) {
			gen_job(m, id, &dup);
			expect_rc(m, sched_job_add(m->c, &dup.spec, &err), -EEXIST, "duplicate add",
			          &err);
			return;
		}
	}
	mj = &m->jobs[m->next_job];
	gen_job(m, m->next_job, &mj->j);
	expect_rc(m, sched_job_add(m->c, &mj->j.spec, &err), 0, "sched_job_add", &err);
	mj->live = true;
	mj->state = SCHED_JOB_PENDING;
	mj->seq = m->seq++;
	m->next_job++;
}

static void op_cancel(struct model *m)
{
	uint64_t id = random_job(m, 0);

	if (!id || chance(m, 5)) {
		expect_rc(m, sched_job_cancel(m->c, MAX_JOBS + 7, m->now), -ENOENT,
		          "cancel unknown", NULL);
		return;
	}
	expect_rc(m, sched_job_cancel(m->c, id, m->now), 0, "sched_job_cancel", NULL);
	model_release(m, &m->jobs[id]);
	m->jobs[id].live = false;
}

static void end_lease(struct model *m, uint64_t id, bool requeue)
{
	struct mjob *mj = &m->jobs[id];

	expect_rc(m, sched_lease_end(m->c, id, m->now, requeue), 0, "sched_lease_end", NULL);
	model_release(m, mj);
	if (requeue)
		mj->state = SCHED_JOB_PENDING;
	else
		mj->live = false;
}

static void op_lease_end(struct model *m)
{
	uint64_t id = random_job(m, chance(m, 50) ? SCHED_JOB_PREEMPTING : SCHED_JOB_RUNNING);

	if (!id)
		id = random_job(m, SCHED_JOB_RUNNING);
	if (!id) {
		id = random_job(m, SCHED_JOB_PENDING);
		if (id)
			expect_rc(m, sched_lease_end(m->c, id, m->now, true), -EINVAL,
			          "lease_end of a pending job", NULL);
		return;
	}
	end_lease(m, id, chance(m, 50));
}

static void op_node_new(struct model *m)
{
	struct sched_error err = { 0 };
	uint64_t id = 1 + rnd(m, MAX_NODES);

	for (int tries = 0; tries < MAX_NODES && m->nodes[id].live; tries++)
		id = id % MAX_NODES + 1;
	if (m->nodes[id].live)
		return;
	memset(&m->nodes[id], 0, sizeof m->nodes[id]);
	gen_node(m, id, &m->nodes[id].n);
	expect_rc(m, sched_node_upsert(m->c, fx_node_spec(&m->nodes[id].n), &err), 0,
	          "sched_node_upsert (new)", &err);
	m->nodes[id].live = true;
}

static void op_node_replace(struct model *m)
{
	struct sched_error err = { 0 };
	uint64_t id = random_node(m);
	struct mnode *mn;
	struct fx_node n;

	if (!id)
		return;
	mn = &m->nodes[id];
	if (!mn->used) {
		gen_node(m, id, &n);
	} else {
		/* Busy: keep every GPU and the facts running jobs rely on. */
		n = mn->n;
		fx_node_spec(&n);
		if (chance(m, 10)) {
			/* Drop the highest held GPU: must be refused. */
			n.spec.ngpus = 63u - (uint32_t)__builtin_clzll(mn->used);
			if (n.spec.ngpus == 0)
				return; /* only GPU 0 held: a node needs a GPU */
			if (sched_node_upsert(m->c, fx_node_spec(&n), &err) == -EBUSY) {
				cov.ebusy++;
				return;
			}
			PFAIL(m,
			      "upsert dropping held GPUs of node %" PRIu64 " not refused"
			      " (used %#" PRIx64 ", ngpus now %u)",
			      id, mn->used, n.spec.ngpus);
			return;
		}
		if (chance(m, 50) && n.spec.ngpus < 56) {
			uint32_t add = 1 + rnd(m, 8);

			for (uint32_t i = 0; i < add; i++)
				n.gpus[n.spec.ngpus + i] = n.gpus[n.spec.ngpus - 1];
			n.spec.ngpus += add;
		}
		if (chance(m, 30))
			n.spec.state = (enum sched_node_state)rnd(m, SCHED_NODE_STATE_COUNT);
		if (chance(m, 30))
			n.spec.verified = !n.spec.verified;
		if (chance(m, 30) && n.spec.price_micros > 100000)
			n.spec.price_micros -= 100000;
		n.spec.reliability_ppm = rnd(m, 1000001);
	}
	expect_rc(m, sched_node_upsert(m->c, fx_node_spec(&n), &err), 0,
	          "sched_node_upsert (replace)", &err);
	mn->n = n;
	fx_node_spec(&mn->n);
}

static void op_node_state(struct model *m)
{
	uint64_t id = random_node(m);
	enum sched_node_state st = (enum sched_node_state)rnd(m, SCHED_NODE_STATE_COUNT);

	if (!id)
		return;
	expect_rc(m, sched_node_set_state(m->c, id, st), 0, "sched_node_set_state", NULL);
	m->nodes[id].n.spec.state = st;
}

static void op_node_remove(struct model *m)
{
	uint64_t id = random_node(m);

	if (!id)
		return;
	if (m->nodes[id].used) {
		expect_rc(m, sched_node_remove(m->c, id), -EBUSY, "remove busy node", NULL);
		return;
	}
	expect_rc(m, sched_node_remove(m->c, id), 0, "sched_node_remove", NULL);
	m->nodes[id].live = false;
}

static void op_policy(struct model *m)
{
	struct sched_error err = { 0 };

	gen_policy(m);
	expect_rc(m, sched_set_policy(m->c, &m->pol, &err), 0, "sched_set_policy", &err);
}

static void op_shares(struct model *m)
{
	uint64_t t = 1 + rnd(m, NTENANTS);
	uint32_t sh = 1 + rnd(m, 10);

	expect_rc(m, sched_tenant_set_shares(m->c, t, sh), 0, "sched_tenant_set_shares", NULL);
	m->shares[t] = sh;
}

/* Restores a lease by hand on GPUs our reference picks (all constraints,
 * price included, so the call must succeed). */
static void op_lease_start(struct model *m)
{
	uint64_t id = random_job(m, SCHED_JOB_PENDING);
	struct mjob *mj;
	struct sched_error err = { 0 };

	if (!id || m->jobs[id].j.spec.node_count != 1)
		return;
	mj = &m->jobs[id];
	for (uint64_t nid = 1; nid <= MAX_NODES; nid++) {
		struct mnode *mn = &m->nodes[nid];
		uint64_t sets[SCHED_MAX_GPUS_PER_NODE];
		int nsets;

		if (!mn->live || !node_facts_ok(&mn->n.spec, &mj->j.spec, true))
			continue;
		nsets = gpu_sets(&mn->n, &mj->j.spec, sets);
		for (int k = 0; k < nsets; k++) {
			uint64_t free_set = sets[k] & ~mn->used, mask = 0;
			struct sched_placement pl;
			int64_t start = m->now - FX_S(rnd(m, 30));

			if ((uint32_t)fx_popcount(free_set) < mj->j.spec.gpus_per_node)
				continue;
			for (uint32_t c = 0; c < mj->j.spec.gpus_per_node; c++) {
				uint64_t low = free_set & -free_set;

				mask |= low;
				free_set &= ~low;
			}
			if (start < 0)
				start = 0;
			pl = (struct sched_placement){ nid, mask };
			expect_rc(m, sched_lease_start(m->c, id, &pl, 1, start, &err), 0,
			          "sched_lease_start", &err);
			model_place(m, mj, &pl, 1, start);
			cov.lease_starts++;
			return;
		}
	}
}

static void op_cycle(struct model *m)
{
	struct sched_actions acts = { 0 };
	struct sched_cycle_stats st;
	uint64_t started[MAX_JOBS + 1];
	uint32_t nstarted = 0;
	int rc;

	m->now += FX_S(1 + rnd(m, 60));
	/* The agents end most leases that ran out. */
	for (uint64_t id = 1; id < m->next_job && !m->failed; id++) {
		struct mjob *mj = &m->jobs[id];

		if (mj->live && mj->state != SCHED_JOB_PENDING &&
		    mj->start_us + mj->j.spec.max_duration_us <= m->now && chance(m, 70))
			end_lease(m, id, chance(m, 20));
	}
	if (m->failed)
		return;
	verify_state(m);
	if (m->failed)
		return;

	rc = sched_cycle(m->c, m->now, &acts, &st);
	cov.cycles++;
	if (rc != 0) {
		PFAIL(m, "sched_cycle: %d", rc);
		sched_actions_free(m->c, &acts);
		return;
	}
	/* STARTs first: all parts of a job appear in one cycle. */
	for (size_t i = 0; i < acts.len && !m->failed; i++) {
		const struct sched_action *a = &acts.items[i];
		struct mjob *mj;

		if (a->kind != SCHED_ACT_START)
			continue;
		if (a->job_id == 0 || a->job_id >= m->next_job || !m->jobs[a->job_id].live) {
			PFAIL(m, "START of unknown job %" PRIu64, a->job_id);
			break;
		}
		mj = &m->jobs[a->job_id];
		if (mj->state == SCHED_JOB_PENDING && mj->nparts == 0)
			started[nstarted++] = a->job_id;
		else if (mj->state != SCHED_JOB_PENDING) {
			PFAIL(m, "START of job %" PRIu64 " in state %d", a->job_id, mj->state);
			break;
		}
		if (a->gang_size != mj->j.spec.node_count || a->gang_index >= a->gang_size)
			PFAIL(m, "START job %" PRIu64 ": gang %u of %u, node_count %u", a->job_id,
			      a->gang_index, a->gang_size, mj->j.spec.node_count);
		check_start_part(m, mj, a);
		if (mj->nparts >= MAX_NC) {
			PFAIL(m, "START job %" PRIu64 ": too many parts", a->job_id);
			break;
		}
		for (uint32_t p = 0; p < mj->nparts; p++) {
			if (mj->parts[p].node_id == a->node_id)
				PFAIL(m, "gang job %" PRIu64 " twice on node %" PRIu64, a->job_id,
				      a->node_id);
			if (strcmp(m->nodes[mj->parts[p].node_id].n.spec.region,
			           m->nodes[a->node_id].n.spec.region) != 0)
				PFAIL(m, "gang job %" PRIu64 " spans regions", a->job_id);
		}
		/* Account the GPUs now so that a later START cannot reuse them. */
		mj->parts[mj->nparts] = (struct sched_placement){ a->node_id, a->gpu_mask };
		m->nodes[a->node_id].used |= a->gpu_mask;
		for (uint32_t g = 0; g < SCHED_MAX_GPUS_PER_NODE; g++)
			if (a->gpu_mask >> g & 1)
				m->nodes[a->node_id].holder[g] = a->job_id;
		mj->nparts++;
		cov.starts++;
	}
	for (uint32_t i = 0; i < nstarted; i++) {
		struct mjob *mj = &m->jobs[started[i]];
		bool seen[MAX_NC] = { false };

		if ((int)mj->nparts != nparts_of(mj))
			PFAIL(m, "job %" PRIu64 " got %u of %u nodes (not all or nothing)",
			      started[i], mj->nparts, mj->j.spec.node_count);
		for (size_t k = 0; k < acts.len; k++) {
			const struct sched_action *a = &acts.items[k];

			if (a->kind == SCHED_ACT_START && a->job_id == started[i] &&
			    a->gang_index < MAX_NC) {
				if (seen[a->gang_index])
					PFAIL(m, "job %" PRIu64 ": gang_index %u twice", started[i],
					      a->gang_index);
				seen[a->gang_index] = true;
			}
		}
		mj->state = SCHED_JOB_RUNNING;
		mj->start_us = m->now;
	}
	for (size_t i = 0; i < acts.len && !m->failed; i++) {
		const struct sched_action *a = &acts.items[i];
		struct mjob *v, *j;
		bool on_candidate = false;

		if (a->kind == SCHED_ACT_UNSCHEDULABLE) {
			if (a->job_id == 0 || a->job_id >= m->next_job ||
			    !m->jobs[a->job_id].live ||
			    m->jobs[a->job_id].state != SCHED_JOB_PENDING) {
				PFAIL(m, "UNSCHEDULABLE for job %" PRIu64 " not pending",
				      a->job_id);
				break;
			}
			j = &m->jobs[a->job_id];
			if (m->pol.infeasible_timeout_us <= 0 ||
			    m->now - j->j.spec.submit_us < m->pol.infeasible_timeout_us)
				PFAIL(m,
				      "job %" PRIu64 " given up after %" PRId64
				      " us (timeout %" PRId64 ")",
				      a->job_id, m->now - j->j.spec.submit_us,
				      m->pol.infeasible_timeout_us);
			for (size_t r = 0; r < FX_ARRAY_LEN(regions); r++) {
				uint32_t hosts = 0;
				uint64_t last = 0;

				for (uint64_t nid = 1; nid <= MAX_NODES; nid++)
					if (m->nodes[nid].live &&
					    strcmp(m->nodes[nid].n.spec.region, regions[r]) == 0 &&
					    node_could_host(m, &m->nodes[nid].n, &j->j.spec)) {
						hosts++;
						last = nid;
					}
				if (hosts >= j->j.spec.node_count) {
					PFAIL(m,
					      "job %" PRIu64
					      " given up though %u node(s) of %s could"
					      " host it",
					      a->job_id, hosts, regions[r]);
					dump_job(j);
					dump_node(&m->nodes[last]);
				}
			}
			j->live = false;
			cov.unschedulable++;
			continue;
		}
		if (a->kind != SCHED_ACT_PREEMPT)
			continue;
		if (a->job_id == 0 || a->job_id >= m->next_job || !m->jobs[a->job_id].live ||
		    a->for_job_id == 0 || a->for_job_id >= m->next_job ||
		    !m->jobs[a->for_job_id].live) {
			PFAIL(m, "PREEMPT %" PRIu64 " for %" PRIu64 ": unknown job", a->job_id,
			      a->for_job_id);
			break;
		}
		v = &m->jobs[a->job_id];
		j = &m->jobs[a->for_job_id];
		if (v->state != SCHED_JOB_RUNNING)
			PFAIL(m, "PREEMPT job %" PRIu64 " in state %d", a->job_id, v->state);
		if (!v->j.spec.preemptible)
			PFAIL(m, "PREEMPT of non-preemptible job %" PRIu64, a->job_id);
		/* the class rule, or the shorter-work rule (same or lower class,
		 * run long enough, lease left >= factor x the job's limit) */
		bool by_class =
		    m->pol.preemption && v->j.spec.priority_class < j->j.spec.priority_class;
		bool by_shorter =
		    m->pol.preempt_shorter_factor > 0 &&
		    v->j.spec.priority_class <= j->j.spec.priority_class && v->start_us < m->now &&
		    m->now - v->start_us >= m->pol.preempt_min_run_us &&
		    (double)(v->start_us + v->j.spec.max_duration_us - m->now) >=
		        m->pol.preempt_shorter_factor * (double)j->j.spec.max_duration_us;
		if (!by_class && !by_shorter)
			PFAIL(m,
			      "PREEMPT job %" PRIu64 " (class %u, started %" PRId64
			      ") for job %" PRIu64 " (class %u): neither rule allows it",
			      a->job_id, v->j.spec.priority_class, v->start_us, a->for_job_id,
			      j->j.spec.priority_class);
		if (by_shorter && !by_class)
			cov.shorter_preempts++;
		if (j->state != SCHED_JOB_PENDING)
			PFAIL(m, "PREEMPT for job %" PRIu64 " that is not pending", a->for_job_id);
		/* the grace never extends a victim past its own deadline */
		if (a->deadline_us == v->start_us + v->j.spec.max_duration_us &&
		    a->deadline_us < m->now + m->pol.preemption_grace_us) {
			cov.clamped_grace++;
		} else if (a->deadline_us != m->now + m->pol.preemption_grace_us)
			PFAIL(m,
			      "PREEMPT deadline %" PRId64 ", want now + grace = %" PRId64
			      " (victim's own deadline %" PRId64 ")",
			      a->deadline_us, m->now + m->pol.preemption_grace_us,
			      v->start_us + v->j.spec.max_duration_us);
		for (uint32_t p = 0; p < v->nparts; p++)
			on_candidate |=
			    node_could_host(m, &m->nodes[v->parts[p].node_id].n, &j->j.spec);
		if (!on_candidate)
			PFAIL(m,
			      "PREEMPT job %" PRIu64 ": none of its nodes could host job %" PRIu64,
			      a->job_id, a->for_job_id);
		v->state = SCHED_JOB_PREEMPTING;
		cov.preempts++;
	}
	sched_actions_free(m->c, &acts);
	if (m->failed)
		return;
	verify_state(m);
	if (!m->failed)
		verify_pending(m);
}

/* ---- incremental == fresh ----------------------------------------------- */

static void compare_fresh(struct model *m)
{
	struct sched_cluster *f = sched_cluster_new(NULL);
	struct sched_error err = { 0 };
	uint64_t order[MAX_JOBS];
	uint32_t n = 0;

	if (!f) {
		PFAIL(m, "sched_cluster_new");
		return;
	}
	cov.fresh_compared++;
	expect_rc(m, sched_set_policy(f, &m->pol, &err), 0, "fresh: policy", &err);
	for (uint64_t id = 1; id <= MAX_NODES; id++)
		if (m->nodes[id].live)
			expect_rc(m, sched_node_upsert(f, fx_node_spec(&m->nodes[id].n), &err), 0,
			          "fresh: node", &err);
	for (uint64_t t = 1; t <= NTENANTS; t++)
		if (m->shares[t])
			expect_rc(m, sched_tenant_set_shares(f, t, m->shares[t]), 0,
			          "fresh: shares", NULL);
	for (uint64_t id = 1; id < m->next_job; id++)
		if (m->jobs[id].live)
			order[n++] = id;
	for (uint32_t a = 0; a < n; a++) /* by order of add */
		for (uint32_t b = a + 1; b < n; b++)
			if (m->jobs[order[b]].seq < m->jobs[order[a]].seq) {
				uint64_t x = order[a];

				order[a] = order[b];
				order[b] = x;
			}
	for (uint32_t i = 0; i < n && !m->failed; i++) {
		struct mjob *mj = &m->jobs[order[i]];

		expect_rc(m, sched_job_add(f, fx_job_spec(&mj->j), &err), 0, "fresh: job", &err);
		if (mj->state != SCHED_JOB_PENDING)
			expect_rc(m,
			          sched_lease_start(f, order[i], mj->parts, mj->nparts,
			                            mj->start_us, &err),
			          0, "fresh: lease_start", &err);
	}
	for (uint64_t t = 1; t <= NTENANTS && !m->failed; t++) {
		double u = sched_tenant_usage(m->c, t, m->now);

		if (u >= 0)
			expect_rc(m, sched_tenant_set_usage(f, t, u, m->now), 0, "fresh: usage",
			          NULL);
	}
	if (!m->failed && !EXPECT_EQUAL(m->c, f))
		m->failed = true;
	sched_cluster_free(f);
}

/* ---- one case ----------------------------------------------------------- */

static const char *const op_names[] = { "cycle",    "add job",      "cancel",     "lease end",
	                                "new node", "replace node", "node state", "remove node",
	                                "policy",   "shares",       "lease start" };

static void step(struct model *m, int op)
{
	m->op = op_names[op];
	snprintf(row_buf, sizeof row_buf, "seed %" PRIu64 " step %d (%s)", m->seed, m->step, m->op);
	fx_row = row_buf;
	switch (op) {
	case 0:
		op_cycle(m);
		return;
	case 1:
		op_add_job(m);
		break;
	case 2:
		op_cancel(m);
		break;
	case 3:
		op_lease_end(m);
		break;
	case 4:
		op_node_new(m);
		break;
	case 5:
		op_node_replace(m);
		break;
	case 6:
		op_node_state(m);
		break;
	case 7:
		op_node_remove(m);
		break;
	case 8:
		op_policy(m);
		break;
	case 9:
		op_shares(m);
		break;
	case 10:
		op_lease_start(m);
		break;
	}
	if (!m->failed)
		verify_state(m);
}

static int pick_op(struct model *m)
{
	static const uint8_t weights[] = { 30, 20, 5, 15, 4, 6, 5, 3, 3, 2, 4 };
	uint32_t r = rnd(m, 97), acc = 0;

	for (int i = 0; i < (int)FX_ARRAY_LEN(weights); i++) {
		acc += weights[i];
		if (r < acc)
			return i;
	}
	return 0;
}

static bool run_case(uint64_t seed)
{
	static struct model mm;
	struct model *m = &mm;
	struct sched_error err = { 0 };
	uint32_t nnodes, njobs, nsteps;

	memset(m, 0, sizeof *m);
	m->seed = seed;
	m->rng = seed * 0x2545f4914f6cdd1dull + 1;
	m->next_job = 1;
	m->now = FX_S(1000);
	snprintf(row_buf, sizeof row_buf, "seed %" PRIu64 " setup", seed);
	fx_row = row_buf;
	m->c = sched_cluster_new(NULL);
	if (!m->c) {
		fx_fail(__FILE__, __LINE__, "sched_cluster_new");
		return false;
	}
	gen_policy(m);
	expect_rc(m, sched_set_policy(m->c, &m->pol, &err), 0, "sched_set_policy", &err);

	nnodes = 1 + (chance(m, 70) ? rnd(m, 10) : rnd(m, MAX_NODES));
	njobs = 1 + (chance(m, 70) ? rnd(m, 25) : rnd(m, 80));
	nsteps = 10 + rnd(m, 40);
	for (uint32_t i = 0; i < nnodes && !m->failed; i++)
		op_node_new(m);
	for (uint32_t i = 0; i < njobs && !m->failed; i++)
		op_add_job(m);
	if (!m->failed)
		verify_state(m);
	for (m->step = 0; m->step < (int)nsteps && !m->failed; m->step++) {
		step(m, pick_op(m));
		if (!m->failed && chance(m, 5) && !any_preempting(m))
			compare_fresh(m);
	}
	/* Let the stopping jobs stop, then compare with a fresh build. */
	snprintf(row_buf, sizeof row_buf, "seed %" PRIu64 " final", seed);
	for (uint64_t id = 1; id < m->next_job && !m->failed; id++)
		if (m->jobs[id].live && m->jobs[id].state == SCHED_JOB_PREEMPTING)
			end_lease(m, id, chance(m, 50));
	if (!m->failed)
		verify_state(m);
	if (!m->failed)
		compare_fresh(m);
	/* Cancelling everything frees every GPU. */
	for (uint64_t id = 1; id < m->next_job && !m->failed; id++)
		if (m->jobs[id].live) {
			expect_rc(m, sched_job_cancel(m->c, id, m->now), 0, "final cancel", NULL);
			model_release(m, &m->jobs[id]);
			m->jobs[id].live = false;
		}
	if (!m->failed)
		verify_state(m);
	sched_cluster_free(m->c);
	if (m->failed)
		fprintf(stderr, "  replay: test_property %" PRIu64 " 1\n", seed);
	return !m->failed;
}

int main(int argc, char **argv)
{
	uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : DEFAULT_SEED;
	long cases = argc > 2 ? strtol(argv[2], NULL, 0) : DEFAULT_CASES;
	const char *env = getenv("GPUMATCH_PROPERTY_CASES");
	int failed = 0;

	if (argc <= 2 && env)
		cases = strtol(env, NULL, 0);
	for (long i = 0; i < cases && failed < MAX_FAILED_CASES; i++)
		if (!run_case(seed + (uint64_t)i))
			failed++;
	printf("test_property: seed %" PRIu64 ", %ld cases: %" PRIu64 " cycles, %" PRIu64
	       " starts, %" PRIu64 " preemptions (%" PRIu64 " for shorter work), %" PRIu64
	       " unschedulable, %" PRIu64 " reservations checked, %" PRIu64
	       " fresh comparisons, %" PRIu64 " refused upserts, %" PRIu64 " lease starts\n",
	       seed, cases, cov.cycles, cov.starts, cov.preempts, cov.shorter_preempts,
	       cov.unschedulable, cov.reservations_checked, cov.fresh_compared, cov.ebusy,
	       cov.lease_starts);
	fx_row = "coverage";
	if (cases >= 100) {
		EXPECT(cov.starts > 0);
		EXPECT(cov.preempts > 0);
		EXPECT(cov.shorter_preempts > 0);
		EXPECT(cov.unschedulable > 0);
		EXPECT(cov.reservations_checked > 0);
		EXPECT(cov.fresh_compared > 0);
	}
	return fx_finish("test_property");
}
