/* sched_cycle.c — one scheduling cycle: order pending jobs by multifactor
 * priority, find feasible nodes through the index, score a sample of them,
 * place gangs all-or-nothing, reserve for blocked jobs, backfill, preempt.
 *
 * Everything that can allocate happens in cycle_prepare(); once placement
 * starts nothing can fail, so a cycle either fully happens or not at all. */
#include "sched_internal.h"

#include <math.h>
#include <stdlib.h>

enum { C_PRICE, C_PPP, C_PERF, C_FIT, C_REL, C_LOC, C_FRAG, C_COUNT, C_SPEED = C_COUNT, C_RAW };

struct cand {
	uint32_t node;
	uint32_t part;
	uint32_t region;
	uint32_t pad;
	uint64_t mask;
	uint64_t node_id;
	double raw[C_RAW];
	double adv; /* comparative advantage */
	double score;
	double price; /* per GPU-hour, micro-units */
	uint32_t gtype;
	uint32_t pad2;
};

/* One node's answer to "when / at what cost could this job run here". */
struct slotinfo {
	int64_t t;          /* reservation: start time; preemption: victims
	                       (GPUs evicted with preempt_shorter_factor) */
	uint64_t cost_gpus; /* preemption: GPUs evicted (victims with
	                       preempt_shorter_factor) */
	uint64_t node_id;
	uint32_t node;
	uint32_t part;
	uint32_t region;
	uint32_t pad;
	uint64_t mask; /* GPUs the job would get */
};

/* hold_for_faster: GPUs of one type (on one node part, pref) that free by
 * t at the latest (their lease deadline); cum = GPUs of the type freeing
 * by then, this entry's included (in the by-time order) */
struct free_ev {
	int64_t t;
	uint32_t gtype;
	uint32_t gpus;
	uint64_t cum;
	uint32_t pref;
	uint32_t pad;
};

struct okey {
	double prio;
	int64_t submit_us;
	uint64_t seq;
	uint32_t job;
	uint32_t pad;
};

struct cycle {
	struct sched_cluster *c;
	const struct sched_policy *pol;
	int64_t now;
	struct sched_actions *out;
	struct sched_cycle_stats st;
	struct okey *order;
	double *tenant_factor;
	bool fair;          /* tenant_factor is filled (fair share on) */
	double *gtype_mean; /* pending jobs' mean relative speed per GPU type;
	                       0 = no profiled job covers it */
	uint32_t *class_pending;
	struct cand *cands;
	uint32_t cand_cap;
	const struct jclass *cur_class; /* of the job being scored */
	struct slotinfo *slots;
	uint32_t slot_cap;
	uint32_t *room; /* pools with room for the current job */
	uint32_t nresv; /* reservations made under policy.reservations */
	bool resv_hit;  /* the current job was kept off reserved GPUs */
	/* preempt_shorter_factor: per class, the longest remaining lease time
	 * of a running preemptible job past preempt_min_run_us, taken once per
	 * cycle on first use (only shrinks during the cycle: a bound) */
	bool rem_ready;
	int64_t rem_max[SCHED_PRIO_CLASSES];
	/* > 0 while a preemption search can find victims only by the shorter
	 * rule: the least remaining lease a victim needs (nodes without such a
	 * lease, free or stopping GPUs are skipped) */
	int64_t need_rem_us;
	/* w_frag: share of pending jobs that need more than f GPUs on one node,
	 * f = 0..SCHED_MAX_GPUS_PER_NODE (the workload fragmentation is judged
	 * against) */
	double frag_wider[SCHED_MAX_GPUS_PER_NODE + 1];
	/* hold_for_faster: running GPUs by type and lease deadline (built on
	 * first use in a cycle), per type [frees_at[t], frees_at[t + 1]) of
	 * frees (pfrees: the same by node part, then deadline); GPUs of each
	 * type that held jobs count on; for the job being decided, its
	 * eligible types and the GPUs of each it could still count on */
	bool frees_ready;
	struct free_ev *frees;
	struct free_ev *pfrees;
	uint32_t *frees_at;
	double *claimed;
	double *spare;
	uint8_t *type_ok;
};

/* ---- eligibility cache ------------------------------------------------------ */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

/* Region and price are decided by the (type, region) lists; the rest here. */
static bool pool_eligible(const struct sched_cluster *c, const struct pool *p,
                          const struct egroup *g)
{
	if (!p->verified && !c->policy.allow_unverified)
		return false;
	if (g->need_tflops > 0 && p->tflops_max[g->precision] < g->need_tflops)
		return false;
	return taints_tolerated(c, p->taintset, g->tolerations, g->ntolerations);
}

static bool gtype_eligible(const struct gtype *t, const struct egroup *g)
{
	return t->memory_mib >= g->min_mem && t->cc >= g->min_cc &&
	       (t->precisions >> g->precision & 1);
}

/* Lists every eligible pool into keys (when not NULL); returns how many. */
static uint32_t egroup_scan(const struct sched_cluster *c, const struct egroup *g, uint64_t *keys)
{
	uint32_t m = 0;
	for (uint32_t t = 0; t < c->ngtypes; t++) {
		if (!gtype_eligible(&c->gtypes[t], g))
			continue;
		const struct gpools *gp = &c->gtype_pools[t];
		for (uint32_t r = 0; r < gp->nr; r++) {
			const struct rpools *rp = &gp->r[r];
			if (!region_in(g->regions, g->nregions, rp->region))
				continue;
			for (uint32_t q = 0; q < rp->n; q++) {
				const struct pool *p = &c->pools[rp->ids[q]];
				if (g->max_price && g->max_price < p->price_lo)
					break; /* sorted by price */
				if (!pool_eligible(c, p, g))
					continue;
				if (keys)
					keys[m] = (uint64_t)p->region << 40 |
					          (uint64_t)p->price_band << 24 | rp->ids[q];
				m++;
			}
		}
	}
	return m;
}

int egroup_refresh(struct sched_cluster *c, struct egroup *g)
{
	if (g->elig_gen == c->pool_gen)
		return 0;
	uint32_t n = egroup_scan(c, g, NULL);
	uint64_t *keys = mem_alloc(c, (size_t)(n ? n : 1) * sizeof *keys);
	if (!keys)
		return -ENOMEM;
	if (n > g->elig_cap) {
		uint32_t *e = mem_realloc(c, g->elig, (size_t)g->elig_cap * 4, (size_t)n * 4);
		if (!e) {
			mem_free(c, keys, (size_t)(n ? n : 1) * sizeof *keys);
			return -ENOMEM;
		}
		g->elig = e;
		g->elig_cap = n;
	}
	/* grouped by region (gangs stay in one), cheaper bands first */
	uint32_t m = egroup_scan(c, g, keys);
	qsort(keys, m, sizeof *keys, cmp_u64);
	for (uint32_t i = 0; i < m; i++)
		g->elig[i] = (uint32_t)(keys[i] & 0xffffff);
	g->nelig = m;
	g->elig_gen = c->pool_gen;
	mem_free(c, keys, (size_t)(n ? n : 1) * sizeof *keys);
	return 0;
}

/* ---- preparation ---------------------------------------------------------------- */

static int cycle_prepare(struct cycle *cy)
{
	struct sched_cluster *c = cy->c;
	if (c->npools >= (1u << 24))
		return -ENOMEM;
	for (uint32_t i = 0; i < c->neg_slots; i++)
		if (c->egroups[i].refs && egroup_refresh(c, &c->egroups[i]))
			return -ENOMEM;

	uint32_t max_gang = 1, regions = 1;
	for (uint32_t i = 0; i < c->nclass_slots; i++)
		if (c->classes[i].refs && c->classes[i].nodes > max_gang)
			max_gang = c->classes[i].nodes;
	uint32_t members = 0;
	for (uint32_t i = 0; i < c->npools; i++) {
		members += c->pools[i].members;
		if (i == 0 || c->pools[i].region > regions)
			regions = c->pools[i].region + 1;
	}
	uint64_t rcap = max_gang > 1 ? 2 * max_gang : 0;
	if (rcap && rcap < cy->pol->score_nodes)
		rcap = cy->pol->score_nodes;
	uint64_t cand_cap = (uint64_t)cy->pol->score_nodes + 2ull * c->npools + rcap * regions + 1;
	uint64_t slot_cap = (uint64_t)members + 1;
	if (cand_cap > UINT32_MAX / 2 || slot_cap > UINT32_MAX / 2)
		return -ENOMEM;

	size_t need = (size_t)c->npools * sizeof(uint32_t) +
	              (size_t)c->npending * sizeof(struct okey) +
	              (size_t)c->ntenants * sizeof(double) + (size_t)c->ngtypes * sizeof(double) +
	              (size_t)c->nclass_slots * sizeof(uint32_t) + cand_cap * sizeof(struct cand) +
	              slot_cap * sizeof(struct slotinfo) + 64;
	bool hold = cy->pol->hold_for_faster > 0;
	if (hold)
		need += 2 * (c->gpus_total + 1) * sizeof(struct free_ev) +
		        (size_t)(c->ngtypes + 1) * (sizeof(uint32_t) + 2 * sizeof(double) + 1) + 16;
	if (need > c->scratch_bytes) {
		size_t grow = need + need / 2;
		void *p = mem_realloc(c, c->scratch, c->scratch_bytes, grow);
		if (!p)
			return -ENOMEM;
		c->scratch = p;
		c->scratch_bytes = grow;
	}
	char *p = c->scratch;
	cy->order = (struct okey *)p;
	p += (size_t)c->npending * sizeof(struct okey);
	cy->cands = (struct cand *)p;
	cy->cand_cap = (uint32_t)cand_cap;
	p += cand_cap * sizeof(struct cand);
	cy->slots = (struct slotinfo *)p;
	cy->slot_cap = (uint32_t)slot_cap;
	p += slot_cap * sizeof(struct slotinfo);
	cy->tenant_factor = (double *)p;
	p += (size_t)c->ntenants * sizeof(double);
	cy->gtype_mean = (double *)p;
	p += (size_t)c->ngtypes * sizeof(double);
	cy->class_pending = (uint32_t *)p;
	p += (size_t)c->nclass_slots * sizeof(uint32_t);
	cy->room = (uint32_t *)p;
	p += (size_t)c->npools * sizeof(uint32_t);
	if (hold) {
		p = (char *)(((uintptr_t)p + 7) & ~(uintptr_t)7);
		cy->frees = (struct free_ev *)p;
		p += (c->gpus_total + 1) * sizeof(struct free_ev);
		cy->pfrees = (struct free_ev *)p;
		p += (c->gpus_total + 1) * sizeof(struct free_ev);
		cy->claimed = (double *)p;
		p += (size_t)(c->ngtypes + 1) * sizeof(double);
		cy->spare = (double *)p;
		p += (size_t)(c->ngtypes + 1) * sizeof(double);
		cy->frees_at = (uint32_t *)p;
		p += (size_t)(c->ngtypes + 1) * sizeof(uint32_t);
		cy->type_ok = (uint8_t *)p;
	}

	/* every pending job may start (one action per gang node), every running
	 * one may be preempted, every pending one may be given up */
	size_t want = cy->out->len + c->pending_parts + c->nrunning + c->npending;
	if (want > cy->out->cap) {
		size_t ncap = cy->out->cap ? cy->out->cap : 64;
		while (ncap < want)
			ncap *= 2;
		struct sched_action *a =
		    mem_realloc(c, cy->out->items, cy->out->cap * sizeof *a, ncap * sizeof *a);
		if (!a)
			return -ENOMEM;
		cy->out->items = a;
		cy->out->cap = ncap;
	}
	return 0;
}

/* ---- priority ------------------------------------------------------------------- */

static int cmp_okey(const void *a, const void *b)
{
	const struct okey *x = a, *y = b;
	if (x->prio != y->prio)
		return x->prio > y->prio ? -1 : 1;
	if (x->submit_us != y->submit_us)
		return x->submit_us < y->submit_us ? -1 : 1;
	return (x->seq > y->seq) - (x->seq < y->seq);
}

/* A job's priority now (pending, or running as if queued again); tenant
 * factors come from cycle_order. */
static double job_prio(const struct cycle *cy, const struct job *j)
{
	const struct sched_policy *pol = cy->pol;
	const struct jclass *k = &cy->c->classes[j->cls];
	double age = (double)(cy->now - j->submit_us) / (double)pol->age_max_us;
	age = age < 0 ? 0 : age > 1 ? 1 : age;
	double prio = pol->w_prio_class * k->prio / (SCHED_PRIO_CLASSES - 1) + pol->w_age * age;
	if (cy->fair)
		prio += pol->w_fairshare * cy->tenant_factor[j->tenant];
	if (pol->w_small_jobs > 0)
		prio += pol->w_small_jobs / ((double)k->gpus * k->nodes);
	if (pol->w_short_jobs > 0)
		prio += pol->w_short_jobs / (1.0 + (double)j->max_dur_us / 3600e6);
	return prio;
}

static void cycle_order(struct cycle *cy)
{
	struct sched_cluster *c = cy->c;
	const struct sched_policy *pol = cy->pol;
	bool fair = pol->fairness == SCHED_FAIR_SHARE && pol->w_fairshare > 0;
	if (fair) {
		double total_usage = 0, total_shares = 0;
		for (uint32_t t = 0; t < c->ntenants; t++) {
			cy->tenant_factor[t] = tenant_usage_at(c, &c->tenants[t], cy->now);
			total_usage += cy->tenant_factor[t];
			total_shares += c->tenants[t].shares;
		}
		for (uint32_t t = 0; t < c->ntenants; t++) {
			double share = c->tenants[t].shares / total_shares;
			cy->tenant_factor[t] =
			    total_usage > 0 ? exp2(-(cy->tenant_factor[t] / total_usage) / share)
			                    : 1.0;
		}
	}
	cy->fair = fair;
	for (uint32_t i = 0; i < c->npending; i++) {
		const struct job *j = &c->jobs[c->pending[i]];
		cy->order[i] =
		    (struct okey){ job_prio(cy, j), j->submit_us, j->seq, c->pending[i], 0 };
	}
	qsort(cy->order, c->npending, sizeof *cy->order, cmp_okey);
}

/* Gavel's "relative to others": for each GPU type, the mean over pending
 * jobs with a throughput profile of their speed there relative to their
 * best type. A job whose relative speed on a type beats this mean gains
 * more there than the others would. */
static void cycle_speed_means(struct cycle *cy)
{
	struct sched_cluster *c = cy->c;
	if (!(cy->pol->w_speedup > 0 && cy->pol->comparative_advantage > 0))
		return;
	memset(cy->class_pending, 0, (size_t)c->nclass_slots * sizeof *cy->class_pending);
	for (uint32_t i = 0; i < c->npending; i++)
		cy->class_pending[c->jobs[c->pending[i]].cls]++;
	double *sum = cy->gtype_mean;
	memset(sum, 0, (size_t)c->ngtypes * sizeof *sum);
	/* weights (pending jobs) per type ride in the candidate buffer: it is
	 * not in use until placement starts */
	double *cnt = (double *)cy->cands;
	if ((size_t)cy->cand_cap * sizeof(struct cand) < (size_t)c->ngtypes * sizeof(double))
		return;
	memset(cnt, 0, (size_t)c->ngtypes * sizeof *cnt);
	for (uint32_t k = 0; k < c->nclass_slots; k++) {
		const struct jclass *kc = &c->classes[k];
		if (!kc->refs || !kc->nspeeds || !cy->class_pending[k])
			continue;
		double best = 0;
		for (uint32_t t = 0; t < c->ngtypes; t++) {
			double v = class_speed(c, kc, t);
			if (v > best)
				best = v;
		}
		if (!(best > 0))
			continue;
		for (uint32_t t = 0; t < c->ngtypes; t++) {
			double v = class_speed(c, kc, t);
			if (v > 0) {
				sum[t] += cy->class_pending[k] * v / best;
				cnt[t] += cy->class_pending[k];
			}
		}
	}
	for (uint32_t t = 0; t < c->ngtypes; t++)
		sum[t] = cnt[t] > 0 ? sum[t] / cnt[t] : 0;
}

/* w_frag: the pending jobs' mix of per-node GPU counts, once per cycle. A
 * job counts once whatever its width: what matters is how many of the jobs
 * waiting could use a node's free GPUs (the fragmentation measure of
 * Weng et al., ATC'23, with GPU counts for their fractional shares). */
static void cycle_frag_mix(struct cycle *cy)
{
	struct sched_cluster *c = cy->c;
	if (!(cy->pol->w_frag > 0))
		return;
	uint32_t hist[SCHED_MAX_GPUS_PER_NODE + 1] = { 0 };
	for (uint32_t i = 0; i < c->npending; i++)
		hist[c->classes[c->jobs[c->pending[i]].cls].gpus]++;
	uint32_t wider = c->npending;
	for (uint32_t f = 0; f <= SCHED_MAX_GPUS_PER_NODE; f++) {
		wider -= hist[f];
		cy->frag_wider[f] = c->npending ? (double)wider / c->npending : 0;
	}
}

/* Fragmented GPUs of a node with `free` GPUs free: those the pending jobs
 * that need more than `free` GPUs on one node cannot use, weighted by how
 * many such jobs there are. */
static inline double frag_of(const struct cycle *cy, uint32_t free)
{
	return free * cy->frag_wider[free];
}

/* ---- candidates and scores ------------------------------------------------------- */

static void cand_fill(struct cycle *cy, struct cand *cd, const struct node *n, const struct part *p,
                      const struct jclass *k)
{
	const struct sched_policy *pol = cy->pol;
	double price = (double)n->price_micros;
	double perf = p->tflops[k->precision];
	uint32_t nfree = popcount64(n->free_mask);
	double left = (double)nfree - (double)k->gpus;
	cd->raw[C_PRICE] = -price;
	cd->raw[C_PPP] = perf / price;
	cd->raw[C_PERF] = perf;
	cd->raw[C_FIT] = pol->fit_mode == SCHED_FIT_PACK ? -left : left;
	cd->raw[C_REL] = n->reliability_ppm;
	cd->raw[C_LOC] = k->pref_region != NONE32 && n->region == k->pref_region;
	/* how much the placement lowers the node's fragmentation: taking GPUs
	 * no wider job could use scores high, breaking up a whole node low */
	cd->raw[C_FRAG] = pol->w_frag > 0 && k->gpus <= nfree
	                      ? frag_of(cy, nfree) - frag_of(cy, nfree - k->gpus)
	                      : 0;
	cd->raw[C_SPEED] =
	    pol->w_speedup > 0 || pol->w_cost_per_work > 0 ? class_speed(cy->c, k, p->gtype) : -1.0;
	cd->price = price;
	cd->gtype = p->gtype;
	cd->node_id = n->id;
	cd->region = n->region;
}

/* Heterogeneity awareness. Fills each candidate's speed (profile; models
 * it does not cover: TFLOPS x the profile's speed per TFLOPS over the
 * covered candidates; no profile at all: TFLOPS), then adds
 *   w_speedup x (speed / best speed) x (adv / best adv)^comparative_advantage
 * (expected completion: run time = work / speed, so the shortest run scores
 * w_speedup; adv as in cycle_speed_means, 1 where no pending job says
 * anything) and w_cost_per_work x the min-max normalized price / speed. */
static void cands_score_speed(const struct cycle *cy, struct cand *cands, uint32_t n)
{
	const struct sched_policy *pol = cy->pol;
	double sum_speed = 0, sum_perf = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (cands[i].raw[C_SPEED] > 0) {
			sum_speed += cands[i].raw[C_SPEED];
			sum_perf += cands[i].raw[C_PERF];
		}
	}
	double per_tflops = sum_speed > 0 ? (sum_perf > 0 ? sum_speed / sum_perf : 0) : 1.0;
	double best = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (!(cands[i].raw[C_SPEED] > 0))
			cands[i].raw[C_SPEED] = cands[i].raw[C_PERF] * per_tflops;
		if (cands[i].raw[C_SPEED] > best)
			best = cands[i].raw[C_SPEED];
	}
	if (!(best > 0))
		return;
	if (pol->w_cost_per_work > 0) {
		double lo = INFINITY, hi = -INFINITY;
		for (uint32_t i = 0; i < n; i++) {
			double v = cands[i].raw[C_SPEED] > 0
			               ? cands[i].price / cands[i].raw[C_SPEED]
			               : INFINITY;
			cands[i].adv = v;
			if (v < lo)
				lo = v;
			if (v > hi && v < INFINITY)
				hi = v;
		}
		for (uint32_t i = 0; i < n; i++) {
			double v = cands[i].adv;
			cands[i].score += pol->w_cost_per_work * (v == INFINITY ? 0
			                                          : hi > lo ? (hi - v) / (hi - lo)
			                                                    : 1.0);
		}
	}
	double w = pol->w_speedup;
	if (!(w > 0))
		return;
	double r = pol->comparative_advantage;
	if (!(r > 0)) {
		for (uint32_t i = 0; i < n; i++)
			cands[i].score += w * cands[i].raw[C_SPEED] / best;
		return;
	}
	/* comparative advantage: the job's speed on the type relative to its
	 * best type, over the pending jobs' mean of that (1 where none says) */
	const struct jclass *k = cy->cur_class;
	double own_best = 0;
	for (uint32_t t = 0; k && t < cy->c->ngtypes; t++) {
		double v = class_speed(cy->c, k, t);
		if (v > own_best)
			own_best = v;
	}
	double best_adv = 0;
	for (uint32_t i = 0; i < n; i++) {
		double mean = cy->gtype_mean[cands[i].gtype];
		double rel = own_best > 0 ? class_speed(cy->c, k, cands[i].gtype) / own_best : 0;
		double adv = rel > 0 && mean > 0 ? rel / mean : 1.0;
		cands[i].adv = adv;
		if (adv > best_adv)
			best_adv = adv;
	}
	double top = 0;
	for (uint32_t i = 0; i < n; i++) {
		cands[i].adv = cands[i].raw[C_SPEED] / best * pow(cands[i].adv / best_adv, r);
		if (cands[i].adv > top)
			top = cands[i].adv;
	}
	for (uint32_t i = 0; i < n; i++)
		cands[i].score += w * (top > 0 ? cands[i].adv / top : 0);
}

/* Min-max normalizes each component over cands[0..n) and sets scores. */
static void cands_score(struct cycle *cy, struct cand *cands, uint32_t n)
{
	const struct sched_policy *pol = cy->pol;
	const double w[C_COUNT] = { pol->w_price, pol->w_perf_per_price, pol->w_perf,
		                    pol->w_fit,   pol->w_reliability,    pol->w_locality,
		                    pol->w_frag };
	double lo[C_COUNT], span[C_COUNT];
	for (int q = 0; q < C_COUNT; q++) {
		double mn = INFINITY, mx = -INFINITY;
		for (uint32_t i = 0; i < n; i++) {
			if (cands[i].raw[q] < mn)
				mn = cands[i].raw[q];
			if (cands[i].raw[q] > mx)
				mx = cands[i].raw[q];
		}
		lo[q] = mn;
		span[q] = mx - mn;
	}
	for (uint32_t i = 0; i < n; i++) {
		double s = 0;
		for (int q = 0; q < C_COUNT; q++)
			if (w[q] > 0)
				s += w[q] *
				     (span[q] > 0 ? (cands[i].raw[q] - lo[q]) / span[q] : 1.0);
		cands[i].score = s;
	}
	if (pol->w_speedup > 0 || pol->w_cost_per_work > 0)
		cands_score_speed(cy, cands, n);
}

static bool cand_better(const struct cand *a, const struct cand *b)
{
	if (a->score != b->score)
		return a->score > b->score;
	return a->node_id < b->node_id;
}

static inline uint64_t mask_at_least(uint32_t n)
{
	return n > 64 ? 0 : ~0ull << (n - 1);
}

/* Scans up to want fitting parts of one pool; adds them to cy->cands from
 * *ncand. Gangs want distinct nodes (stamped). */
static uint32_t pool_collect(struct cycle *cy, const struct pool *pool, const struct jclass *k,
                             uint32_t job_slot, int64_t end_us, uint32_t want, bool distinct,
                             uint32_t *ncand)
{
	struct sched_cluster *c = cy->c;
	uint64_t m = pool->nonempty & mask_at_least(k->gpus);
	bool spread = cy->pol->fit_mode == SCHED_FIT_SPREAD;
	bool price_partial = k->max_price && pool->price_hi - 1 > k->max_price;
	uint32_t taken = 0;
	while (m && taken < want && *ncand < cy->cand_cap) {
		uint32_t f =
		    spread ? 64 - (uint32_t)__builtin_clzll(m) : (uint32_t)__builtin_ctzll(m) + 1;
		m &= ~(1ull << (f - 1));
		const struct bucket *b = &pool->b[f];
		for (uint32_t i = 0; i < b->len && taken < want && *ncand < cy->cand_cap; i++) {
			uint32_t ns = PREF_NODE(b->items[i]), pi = PREF_PART(b->items[i]);
			struct node *n = &c->nodes[ns];
			const struct part *p = &n->parts[pi];
			cy->st.nodes_visited++;
			if (distinct && n->stamp == c->stamp)
				continue;
			if (k->need_tflops > 0 && p->tflops[k->precision] < k->need_tflops)
				continue;
			if (price_partial && n->price_micros > k->max_price)
				continue;
			if (k->nselectors && !labels_match(n, k))
				continue;
			uint64_t usable = usable_mask(c, n, p, job_slot, end_us);
			uint64_t g = pick_gpus(n, p, k, usable);
			if (!g) {
				/* would a shorter job have fit? then members of this
				 * class with shorter durations must still be tried */
				if (!cy->resv_hit && usable != (n->free_mask & p->mask) &&
				    pick_gpus(n, p, k, n->free_mask))
					cy->resv_hit = true;
				continue;
			}
			struct cand *cd = &cy->cands[(*ncand)++];
			cd->node = ns;
			cd->part = pi;
			cd->mask = g;
			cand_fill(cy, cd, n, p, k);
			if (distinct)
				n->stamp = c->stamp;
			taken++;
		}
	}
	return taken;
}

/* ---- waiting for a faster GPU (hold_for_faster) ----------------------------------- */

/* The class's profile speeds over the GPU types of the pools it may ever
 * use (free or not), once per cycle. */
static void class_span(struct cycle *cy, struct jclass *k)
{
	struct sched_cluster *c = cy->c;
	if (k->span_epoch == c->epoch)
		return;
	k->span_epoch = c->epoch;
	float lo = INFINITY, hi = 0;
	const struct egroup *eg = &c->egroups[k->eg];
	for (uint32_t e = 0; e < eg->nelig; e++) {
		const struct pool *p = &c->pools[eg->elig[e]];
		if (!p->members || p->nb <= k->gpus || !pool_may_host(p, k))
			continue;
		float v = class_speed(c, k, p->gtype);
		if (!(v > 0))
			continue;
		if (v < lo)
			lo = v;
		if (v > hi)
			hi = v;
	}
	k->span_min = hi > 0 ? lo : 0;
	k->span_max = hi;
}

static int cmp_free_ev(const void *a, const void *b)
{
	const struct free_ev *x = a, *y = b;
	if (x->gtype != y->gtype)
		return x->gtype < y->gtype ? -1 : 1;
	return (x->t > y->t) - (x->t < y->t);
}

static int cmp_free_ev_part(const void *a, const void *b)
{
	const struct free_ev *x = a, *y = b;
	if (x->gtype != y->gtype)
		return x->gtype < y->gtype ? -1 : 1;
	if (x->pref != y->pref)
		return x->pref < y->pref ? -1 : 1;
	return (x->t > y->t) - (x->t < y->t);
}

/* The running GPUs of every type by lease deadline, once per cycle. */
static void frees_build(struct cycle *cy)
{
	struct sched_cluster *c = cy->c;
	cy->frees_ready = true;
	uint64_t n = 0;
	for (uint32_t s = 0; s < c->nnodes_slots; s++) {
		const struct node *nd = &c->nodes[s];
		if (!nd->id)
			continue;
		for (uint32_t l = 0; l < nd->nleases; l++)
			for (uint32_t q = 0; q < nd->nparts; q++) {
				uint32_t g = popcount64(nd->leases[l].mask & nd->parts[q].mask);
				if (g && n < c->gpus_total)
					cy->frees[n++] = (struct free_ev){
						c->jobs[nd->leases[l].job].deadline_us,
						nd->parts[q].gtype,
						g,
						0,
						PREF(s, q),
						0
					};
			}
	}
	/* both orders keep the types' ranges (frees_at) the same */
	memcpy(cy->pfrees, cy->frees, n * sizeof *cy->frees);
	qsort(cy->pfrees, n, sizeof *cy->pfrees, cmp_free_ev_part);
	qsort(cy->frees, n, sizeof *cy->frees, cmp_free_ev);
	uint32_t t = 0;
	uint64_t cum = 0;
	for (uint64_t i = 0; i < n; i++) {
		while (t <= cy->frees[i].gtype) {
			cy->frees_at[t++] = (uint32_t)i;
			cum = 0;
		}
		cum += cy->frees[i].gpus;
		cy->frees[i].cum = cum;
	}
	while (t <= c->ngtypes)
		cy->frees_at[t++] = (uint32_t)n;
	memset(cy->claimed, 0, (size_t)c->ngtypes * sizeof *cy->claimed);
}

/* GPUs of type t whose leases end by `until` at the latest. */
static uint64_t frees_by(const struct cycle *cy, uint32_t t, int64_t until)
{
	uint32_t lo = cy->frees_at[t], hi = cy->frees_at[t + 1];
	uint32_t first = lo;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (cy->frees[mid].t <= until)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo > first ? cy->frees[lo - 1].cum : 0;
}

/* GPUs of type t usable by `width`-GPU members by `until`: a job that
 * needs several GPUs on one node waits for a node part where enough of
 * them free together (counted with the part's GPUs free now), not for the
 * same number of GPUs freeing across the fleet, which backfilled narrower
 * jobs take one by one. Only parts where some lease ends by then count. */
static uint64_t frees_by_width(const struct cycle *cy, uint32_t t, int64_t until, uint32_t width)
{
	if (width <= 1)
		return frees_by(cy, t, until);
	const struct sched_cluster *c = cy->c;
	uint64_t usable = 0;
	uint32_t i = cy->frees_at[t], hi = cy->frees_at[t + 1];
	while (i < hi) {
		uint32_t pref = cy->pfrees[i].pref;
		uint64_t freed = 0;
		for (; i < hi && cy->pfrees[i].pref == pref; i++)
			if (cy->pfrees[i].t <= until)
				freed += cy->pfrees[i].gpus;
		if (!freed)
			continue;
		const struct node *nd = &c->nodes[PREF_NODE(pref)];
		uint64_t avail =
		    freed + popcount64(nd->free_mask & nd->parts[PREF_PART(pref)].mask);
		usable += avail / width * width;
	}
	return usable;
}

/* Whether job js, whose placement now would run at profile speed `here`,
 * waits for a faster GPU type instead. Ski rental: until it has waited
 * hold_for_faster x the run time the slower GPU adds (the declared limit
 * read as the run time on its slowest eligible type), and only while
 * enough GPUs of faster types end their leases by then, at their
 * deadlines (for a multi-GPU job: enough together on a node part), that
 * jobs held before it (higher in the order) have not counted on. Notes
 * the earliest time a held job stops waiting. */
static bool hold_for_faster(struct cycle *cy, const struct job *j, struct jclass *k, double here)
{
	struct sched_cluster *c = cy->c;
	double f = cy->pol->hold_for_faster;
	if (!(f > 0) || !k->nspeeds || !(here > 0))
		return false;
	class_span(cy, k);
	double faster = here * (1 + 1e-6);
	if (!(k->span_max > faster))
		return false;
	double lo = k->span_min < here ? k->span_min : here;
	double extra = (double)j->max_dur_us * lo * (1.0 / here - 1.0 / k->span_max);
	double until_d = (double)j->submit_us + f * extra;
	if (!((double)cy->now < until_d))
		return false;
	int64_t until = until_d >= 9e18 ? INT64_MAX : (int64_t)ceil(until_d);
	/* the faster types this job may use */
	if (!cy->frees_ready)
		frees_build(cy);
	memset(cy->type_ok, 0, c->ngtypes);
	const struct egroup *eg = &c->egroups[k->eg];
	for (uint32_t e = 0; e < eg->nelig; e++) {
		const struct pool *p = &c->pools[eg->elig[e]];
		if (p->members && p->nb > k->gpus && !cy->type_ok[p->gtype] &&
		    class_speed(c, k, p->gtype) > faster && pool_may_host(p, k))
			cy->type_ok[p->gtype] = 1;
	}
	/* less what jobs held before it (higher in the order) count on, each
	 * type's count made once: counting on one type changes no other's */
	double need = (double)k->gpus * k->nodes, have = 0;
	for (uint32_t t = 0; t < c->ngtypes; t++)
		if (cy->type_ok[t]) {
			cy->spare[t] =
			    (double)frees_by_width(cy, t, until, k->gpus) - cy->claimed[t];
			if (cy->spare[t] > 0)
				have += cy->spare[t];
		}
	if (have < need)
		return false;
	/* count on them, fastest types first */
	while (need > 0) {
		uint32_t best = NONE32;
		for (uint32_t t = 0; t < c->ngtypes; t++)
			if (cy->type_ok[t] && cy->spare[t] > 0 &&
			    (best == NONE32 || class_speed(c, k, t) > class_speed(c, k, best)))
				best = t;
		if (best == NONE32)
			break;
		double v = cy->spare[best];
		double take = v < need ? v : need;
		cy->claimed[best] += take;
		need -= take;
		cy->type_ok[best] = 0;
	}
	if (!cy->st.hold_until_us || until < cy->st.hold_until_us)
		cy->st.hold_until_us = until;
	return true;
}

/* Placement found for the job, now: held for a faster GPU? Remembers the
 * fastest candidate free for its class this cycle (free GPUs only shrink
 * within a cycle, so a later member that would wait even there is skipped
 * without a search). */
static bool hold_placement(struct cycle *cy, uint32_t js, double here, uint32_t ncand)
{
	struct sched_cluster *c = cy->c;
	const struct job *j = &c->jobs[js];
	struct jclass *k = &c->classes[j->cls];
	if (!(cy->pol->hold_for_faster > 0) || !hold_for_faster(cy, j, k, here))
		return false;
	double top = 0;
	for (uint32_t i = 0; i < ncand; i++) {
		double v = class_speed(c, k, cy->cands[i].gtype);
		if (v > top)
			top = v;
	}
	k->hold_epoch = c->epoch;
	k->hold_speed = top;
	return true;
}

static void emit_start(struct cycle *cy, const struct job *j, const struct jplace *pl, uint32_t npl)
{
	for (uint32_t i = 0; i < npl; i++) {
		struct sched_action *a = &cy->out->items[cy->out->len++];
		memset(a, 0, sizeof *a);
		a->kind = SCHED_ACT_START;
		a->job_id = j->id;
		a->node_id = cy->c->nodes[pl[i].node].id;
		a->gpu_mask = pl[i].mask;
		a->gang_index = i;
		a->gang_size = npl;
		a->deadline_us = j->deadline_us;
	}
}

/* 1: placed; 0: no room; -1: held for a faster GPU (hold_for_faster) */
static int place_single(struct cycle *cy, uint32_t js)
{
	struct sched_cluster *c = cy->c;
	struct job *j = &c->jobs[js];
	const struct jclass *k = &c->classes[j->cls];
	int64_t end = cy->now + j->max_dur_us;
	uint64_t need = mask_at_least(k->gpus);
	uint32_t with_room = 0;
	const struct egroup *eg = &c->egroups[k->eg];
	for (uint32_t e = 0; e < eg->nelig; e++) {
		const struct pool *pool = &c->pools[eg->elig[e]];
		if ((pool->nonempty & need) && pool_may_host(pool, k))
			cy->room[with_room++] = eg->elig[e];
	}
	if (!with_room)
		return 0;
	/* Sample across pools so that price, type and region all get a say.
	 * With more pools than candidates wanted, take score_nodes of them at an
	 * even stride from an offset that moves with every job (like the
	 * Kubernetes scheduler's rotating start index). */
	uint32_t want = cy->pol->score_nodes;
	uint32_t visit = with_room < want ? with_room : want;
	uint32_t per_pool = (want + visit - 1) / visit;
	uint32_t offset = with_room > want ? (uint32_t)(j->seq % with_room) : 0;
	uint32_t ncand = 0;
	for (uint32_t i = 0; i < visit && ncand < cy->cand_cap; i++) {
		uint32_t e = (uint32_t)((offset + (uint64_t)i * with_room / visit) % with_room);
		pool_collect(cy, &c->pools[cy->room[e]], k, js, end, per_pool, false, &ncand);
	}
	/* sampling must never leave pending a job that fits somewhere */
	for (uint32_t e = 0; !ncand && visit < with_room && e < with_room; e++)
		pool_collect(cy, &c->pools[cy->room[e]], k, js, end, 1, false, &ncand);
	if (!ncand)
		return 0;
	cy->cur_class = k;
	cands_score(cy, cy->cands, ncand);
	const struct cand *best = &cy->cands[0];
	for (uint32_t i = 1; i < ncand; i++)
		if (cand_better(&cy->cands[i], best))
			best = &cy->cands[i];
	if (hold_placement(cy, js, class_speed(c, k, best->gtype), ncand))
		return -1;
	struct jplace pl = { best->node, best->mask };
	job_apply_placement(c, js, &pl, 1, cy->now);
	emit_start(cy, j, &pl, 1);
	return 1;
}

static int cmp_cand_desc(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;
	if (cand_better(x, y))
		return -1;
	if (cand_better(y, x))
		return 1;
	return 0;
}

/* as place_single */
static int place_gang(struct cycle *cy, uint32_t js)
{
	struct sched_cluster *c = cy->c;
	struct job *j = &c->jobs[js];
	const struct jclass *k = &c->classes[j->cls];
	int64_t end = cy->now + j->max_dur_us;
	uint64_t need = mask_at_least(k->gpus);
	uint32_t rcap = 2 * k->nodes > cy->pol->score_nodes ? 2 * k->nodes : cy->pol->score_nodes;
	uint32_t ncand = 0;
	c->stamp++;
	/* region groups: [start, end) of candidates per region */
	const struct egroup *eg = &c->egroups[k->eg];
	uint32_t e = 0;
	while (e < eg->nelig) {
		uint32_t region = c->pools[eg->elig[e]].region;
		uint32_t first = ncand, got = 0;
		for (; e < eg->nelig && c->pools[eg->elig[e]].region == region; e++) {
			const struct pool *pool = &c->pools[eg->elig[e]];
			if ((pool->nonempty & need) && got < rcap && pool_may_host(pool, k))
				got += pool_collect(cy, pool, k, js, end, rcap - got, true, &ncand);
		}
		if (got < k->nodes)
			ncand = first; /* this region cannot hold the gang */
	}
	if (!ncand)
		return 0;
	cy->cur_class = k;
	cands_score(cy, cy->cands, ncand);
	uint32_t best_first = 0, best_n = 0;
	double best_score = -INFINITY;
	for (uint32_t a = 0; a < ncand;) {
		uint32_t b = a;
		while (b < ncand && cy->cands[b].region == cy->cands[a].region)
			b++;
		qsort(&cy->cands[a], b - a, sizeof *cy->cands, cmp_cand_desc);
		double s = 0;
		for (uint32_t i = a; i < a + k->nodes; i++)
			s += cy->cands[i].score;
		if (s > best_score) {
			best_score = s;
			best_first = a;
			best_n = b - a;
		}
		a = b;
	}
	(void)best_n;
	if (cy->pol->hold_for_faster > 0) {
		/* a gang runs at the pace of its slowest node */
		double here = INFINITY;
		for (uint32_t i = 0; i < k->nodes; i++) {
			double v = class_speed(c, k, cy->cands[best_first + i].gtype);
			if (v < here)
				here = v;
		}
		if (here < INFINITY && hold_placement(cy, js, here, ncand))
			return -1;
	}
	struct jplace pl[SCHED_MAX_GANG_NODES];
	for (uint32_t i = 0; i < k->nodes; i++)
		pl[i] = (struct jplace){ cy->cands[best_first + i].node,
			                 cy->cands[best_first + i].mask };
	job_apply_placement(c, js, pl, k->nodes, cy->now);
	emit_start(cy, j, pl, k->nodes);
	return 1;
}

/* ---- reservations ------------------------------------------------------------------ */

/* GPUs held by other jobs' reservations this cycle. */
static inline uint64_t reserved_by_others(const struct sched_cluster *c, const struct node *n,
                                          uint32_t js)
{
	return n->resv_epoch == c->epoch && n->resv_job != js ? n->resv_mask : 0;
}

struct ev {
	int64_t t;
	uint64_t mask;
};

/* Earliest time the part can give the job its GPUs if every running job ends
 * at its deadline; INT64_MAX if never. *mask gets the GPUs. */
static int64_t part_earliest(struct cycle *cy, const struct node *n, const struct part *p,
                             const struct jclass *k, uint32_t js, uint64_t *mask)
{
	struct sched_cluster *c = cy->c;
	uint64_t blocked = reserved_by_others(c, n, js);
	uint64_t avail = n->free_mask & p->mask & ~blocked;
	uint64_t g = pick_gpus(n, p, k, avail);
	if (g) {
		*mask = g;
		return cy->now;
	}
	struct ev ev[SCHED_MAX_GPUS_PER_NODE];
	uint32_t nev = 0;
	for (uint32_t l = 0; l < n->nleases; l++) {
		uint64_t m = n->leases[l].mask & p->mask;
		if (!m)
			continue;
		struct ev x = { c->jobs[n->leases[l].job].deadline_us, m };
		uint32_t i = nev++;
		while (i > 0 && ev[i - 1].t > x.t) {
			ev[i] = ev[i - 1];
			i--;
		}
		ev[i] = x;
	}
	for (uint32_t i = 0; i < nev; i++) {
		avail |= ev[i].mask & ~blocked;
		if (i + 1 < nev && ev[i + 1].t == ev[i].t)
			continue;
		g = pick_gpus(n, p, k, avail);
		if (g) {
			*mask = g;
			return ev[i].t > cy->now ? ev[i].t : cy->now;
		}
	}
	return INT64_MAX;
}

static void reserve_on(struct cycle *cy, uint32_t ns, uint64_t mask, int64_t t, uint32_t js)
{
	struct sched_cluster *c = cy->c;
	struct node *n = &c->nodes[ns];
	if (n->resv_epoch != c->epoch) {
		n->resv_epoch = c->epoch;
		n->resv_mask = 0;
		n->resv_job = js;
		n->resv_at_us = t;
	}
	n->resv_mask |= mask;
	if (t < n->resv_at_us)
		n->resv_at_us = t;
}

static int cmp_slot_t(const void *a, const void *b)
{
	const struct slotinfo *x = a, *y = b;
	if (x->region != y->region)
		return x->region < y->region ? -1 : 1;
	if (x->t != y->t)
		return x->t < y->t ? -1 : 1;
	if (x->cost_gpus != y->cost_gpus)
		return x->cost_gpus < y->cost_gpus ? -1 : 1;
	return (x->node_id > y->node_id) - (x->node_id < y->node_id);
}

/* Has running job v been running long enough to be evicted for shorter
 * work: started before this cycle and at least preempt_min_run_us ago? */
static bool past_min_run(const struct cycle *cy, const struct job *v)
{
	return v->start_us < cy->now && cy->now - v->start_us >= cy->pol->preempt_min_run_us;
}

/* Can the node offer nothing to a preemption search that needs victims
 * with cy->need_rem_us of lease left (the shorter rule alone)? Decided from
 * a per-cycle cache of the node's leases, which try_preempt keeps exact
 * (stopping GPUs added; a victim's remaining time only leaves the bound;
 * jobs started in the cycle cannot be victims). */
static bool node_no_victims(struct cycle *cy, struct node *n, const struct part *p)
{
	struct sched_cluster *c = cy->c;
	if (n->vc_epoch != c->epoch) {
		n->vc_epoch = c->epoch;
		n->vc_rem_us = INT64_MIN;
		n->vc_stop_mask = 0;
		for (uint32_t l = 0; l < n->nleases; l++) {
			const struct job *v = &c->jobs[n->leases[l].job];
			if (v->state == SCHED_JOB_PREEMPTING) {
				n->vc_stop_mask |= n->leases[l].mask;
				continue;
			}
			if (!c->classes[v->cls].preemptible || !past_min_run(cy, v))
				continue;
			if (v->deadline_us - cy->now > n->vc_rem_us)
				n->vc_rem_us = v->deadline_us - cy->now;
		}
	}
	return n->vc_rem_us < cy->need_rem_us && !((n->free_mask | n->vc_stop_mask) & p->mask);
}

/* Visits every part of every eligible pool that passes the node-level static
 * filters and could ever hold the job; fills cy->slots via fn. Returns the
 * number of slots, at most one per node for gangs. */
typedef bool (*slot_fn)(struct cycle *cy, const struct node *n, const struct part *p,
                        const struct jclass *k, uint32_t js, struct slotinfo *out);

/* Could preemption find anything in this pool for a job of class k, with
 * victims of the classes below below_cls? */
static bool pool_has_victims(const struct pool *p, const struct jclass *k, uint32_t below_cls)
{
	if (p->stopping_gpus || (p->nonempty & mask_at_least(k->gpus)))
		return true;
	for (uint32_t c = 0; c < below_cls && c < SCHED_PRIO_CLASSES; c++)
		if (p->victim_gpus[c])
			return true;
	return false;
}

/* limit: stop after that many slots for single-node jobs (sampling, as for
 * placement); 0 = visit all. victims_below: 0 = every pool; else only pools
 * with stopping work, free GPUs or preemptible work of the classes below
 * victims_below - 1. */
static uint32_t collect_slots(struct cycle *cy, uint32_t js, slot_fn fn, uint32_t limit,
                              uint32_t victims_below)
{
	struct sched_cluster *c = cy->c;
	const struct job *j = &c->jobs[js];
	const struct jclass *k = &c->classes[j->cls];
	const struct egroup *eg = &c->egroups[k->eg];
	uint32_t nslots = 0;
	c->stamp++;
	for (uint32_t e = 0; e < eg->nelig; e++) {
		const struct pool *pool = &c->pools[eg->elig[e]];
		if (!pool_may_host(pool, k) ||
		    (victims_below && !pool_has_victims(pool, k, victims_below - 1)))
			continue;
		if (limit && k->nodes == 1 && nslots >= limit)
			break;
		for (uint32_t f = 0; f < pool->nb; f++) {
			const struct bucket *b = &pool->b[f];
			for (uint32_t i = 0; i < b->len; i++) {
				uint32_t ns = PREF_NODE(b->items[i]), pi = PREF_PART(b->items[i]);
				struct node *n = &c->nodes[ns];
				const struct part *p = &n->parts[pi];
				cy->st.nodes_visited++;
				if ((k->nvlink ? p->max_group : popcount64(p->mask)) < k->gpus)
					continue;
				if (cy->need_rem_us > 0 && node_no_victims(cy, n, p))
					continue;
				if (node_static_reason(c, n, p, k) != SCHED_R_COUNT)
					continue;
				struct slotinfo si;
				if (!fn(cy, n, p, k, js, &si))
					continue;
				si.node = ns;
				si.part = pi;
				si.node_id = n->id;
				si.region = k->nodes > 1 ? n->region : 0;
				if (k->nodes > 1 && n->stamp == c->stamp) {
					/* keep the better part of a node already listed */
					for (uint32_t q = 0; q < nslots; q++) {
						if (cy->slots[q].node == ns) {
							if (cmp_slot_t(&si, &cy->slots[q]) < 0)
								cy->slots[q] = si;
							break;
						}
					}
					continue;
				}
				n->stamp = c->stamp;
				if (nslots < cy->slot_cap)
					cy->slots[nslots++] = si;
			}
		}
	}
	return nslots;
}

/* Picks the best single slot, or for gangs the region whose node_count best
 * slots are best (by their worst member). Returns the first index of the
 * chosen run in cy->slots (sorted) or NONE32. */
static uint32_t choose_slots(struct cycle *cy, uint32_t nslots, const struct jclass *k)
{
	if (!nslots)
		return NONE32;
	qsort(cy->slots, nslots, sizeof *cy->slots, cmp_slot_t);
	if (k->nodes == 1)
		return 0;
	uint32_t best = NONE32;
	for (uint32_t a = 0; a < nslots;) {
		uint32_t b = a;
		while (b < nslots && cy->slots[b].region == cy->slots[a].region)
			b++;
		if (b - a >= k->nodes) {
			const struct slotinfo *last = &cy->slots[a + k->nodes - 1];
			if (best == NONE32 || last->t < cy->slots[best + k->nodes - 1].t ||
			    (last->t == cy->slots[best + k->nodes - 1].t &&
			     last->cost_gpus < cy->slots[best + k->nodes - 1].cost_gpus))
				best = a;
		}
		a = b;
	}
	return best;
}

static bool slot_when(struct cycle *cy, const struct node *n, const struct part *p,
                      const struct jclass *k, uint32_t js, struct slotinfo *out)
{
	out->t = part_earliest(cy, n, p, k, js, &out->mask);
	out->cost_gpus = 0;
	return out->t != INT64_MAX;
}

static void make_reservation(struct cycle *cy, uint32_t js)
{
	struct sched_cluster *c = cy->c;
	struct job *j = &c->jobs[js];
	const struct jclass *k = &c->classes[j->cls];
	uint32_t first = choose_slots(cy, collect_slots(cy, js, slot_when, 0, 0), k);
	if (first == NONE32)
		return;
	int64_t t = cy->slots[first + k->nodes - 1].t;
	for (uint32_t i = first; i < first + k->nodes; i++)
		reserve_on(cy, cy->slots[i].node, cy->slots[i].mask, t, js);
	j->resv_at_us = t;
	j->resv_epoch = c->epoch;
	cy->st.reserved++;
}

/* ---- preemption -------------------------------------------------------------------- */

/* Could v start again now on free GPUs of a node other than not_node, so
 * that evicting it moves it rather than queues it? Single-node jobs only;
 * the first fit found answers. */
static bool victim_can_move(const struct cycle *cy, uint32_t vs, uint32_t not_node)
{
	struct sched_cluster *c = cy->c;
	const struct job *v = &c->jobs[vs];
	const struct jclass *k = &c->classes[v->cls];
	if (k->nodes != 1)
		return false;
	const struct egroup *eg = &c->egroups[k->eg];
	int64_t end = cy->now + v->max_dur_us;
	for (uint32_t e = 0; e < eg->nelig; e++) {
		const struct pool *pool = &c->pools[eg->elig[e]];
		uint64_t m = pool->nonempty & mask_at_least(k->gpus);
		if (!m || !pool_may_host(pool, k))
			continue;
		while (m) {
			uint32_t f = (uint32_t)__builtin_ctzll(m) + 1;
			m &= m - 1;
			const struct bucket *b = &pool->b[f];
			for (uint32_t i = 0; i < b->len; i++) {
				uint32_t ns = PREF_NODE(b->items[i]), pi = PREF_PART(b->items[i]);
				if (ns == not_node)
					continue;
				const struct node *n = &c->nodes[ns];
				const struct part *p = &n->parts[pi];
				if (node_static_reason(c, n, p, k) != SCHED_R_COUNT)
					continue;
				if (pick_gpus(n, p, k, usable_mask(c, n, p, vs, end)))
					return true;
			}
		}
	}
	return false;
}

/* The shorter-work rule (preempt_shorter_factor): v (slot vs, on node
 * slot node) has run long enough since its last start (and did not start
 * in this very cycle), its remaining lease time is at least factor times
 * j's max duration, and queued again it would rank below j, or it could
 * start again at once on free GPUs of another node (it moves, and the
 * whole node goes to the wider job). Otherwise it would take its GPUs back
 * at the next cycle and be evicted again. The remaining time is what the
 * scheduler knows: the declared limit, not the work left. Several victims
 * may count on the same free GPUs; one that finds none waits in the
 * queue, protected by preempt_min_run_us when it runs again. */
static bool shorter_victim(const struct cycle *cy, const struct job *j, const struct job *v,
                           uint32_t vs, uint32_t node)
{
	double f = cy->pol->preempt_shorter_factor;
	if (!(f > 0) || !past_min_run(cy, v) ||
	    (double)(v->deadline_us - cy->now) < f * (double)j->max_dur_us)
		return false;
	struct okey a = { job_prio(cy, j), j->submit_us, j->seq, 0, 0 };
	struct okey b = { job_prio(cy, v), v->submit_us, v->seq, 0, 0 };
	return cmp_okey(&a, &b) < 0 || victim_can_move(cy, vs, node);
}

/* Never a job that is not preemptible, never one of a higher class; a lower
 * class under `preemption`, the job's own or a lower one under the
 * shorter-work rule. */
static bool victim_ok(const struct cycle *cy, const struct jclass *k, const struct job *j,
                      const struct job *v, uint32_t vs, uint32_t node)
{
	const struct jclass *vk = &cy->c->classes[v->cls];
	if (v->state != SCHED_JOB_RUNNING || !vk->preemptible || vk->prio > k->prio)
		return false;
	if (cy->pol->preemption && vk->prio < k->prio)
		return true;
	return shorter_victim(cy, j, v, vs, node);
}

static uint32_t job_gpus(const struct sched_cluster *c, const struct job *v)
{
	const struct jclass *vk = &c->classes[v->cls];
	return vk->gpus * vk->nodes;
}

/* Victim order for least waste: lower class first, then fewest GPUs of the
 * whole job (all of them stop), then the longest remaining lease, then the
 * lower job id. */
static bool waste_before(const struct sched_cluster *c, const struct job *x, const struct job *y)
{
	uint32_t px = c->classes[x->cls].prio, py = c->classes[y->cls].prio;
	if (px != py)
		return px < py;
	uint32_t gx = job_gpus(c, x), gy = job_gpus(c, y);
	if (gx != gy)
		return gx < gy;
	if (x->deadline_us != y->deadline_us)
		return x->deadline_us > y->deadline_us;
	return x->id < y->id;
}

/* With preempt_shorter_factor the victims may be work of the job's own
 * class, so what counts is the work thrown away (GPUs evicted), not the
 * number of victims. Two answers, the one evicting fewer GPUs wins (the
 * single victim on a tie): the first candidate that frees enough alone,
 * and the greedy prefix of the order above with every victim it does not
 * need dropped again (last added first). cand is sorted here. Returns the
 * number of victims or -1. */
static int victims_least_waste(const struct cycle *cy, const struct node *n, const struct part *p,
                               const struct jclass *k, uint64_t avail, uint64_t blocked,
                               uint32_t *cand, uint32_t ncand, uint32_t *victims, uint64_t *mask,
                               uint64_t *gpus)
{
	const struct sched_cluster *c = cy->c;
	for (uint32_t a = 1; a < ncand; a++) {
		uint32_t x = cand[a], b = a;
		while (b > 0 && waste_before(c, &c->jobs[n->leases[x].job],
		                             &c->jobs[n->leases[cand[b - 1]].job])) {
			cand[b] = cand[b - 1];
			b--;
		}
		cand[b] = x;
	}
	uint32_t keep[SCHED_MAX_GPUS_PER_NODE], nkeep = 0;
	uint64_t acc = avail;
	bool fits = false;
	for (uint32_t a = 0; a < ncand && !fits; a++) {
		acc |= n->leases[cand[a]].mask & p->mask & ~blocked;
		keep[nkeep++] = cand[a];
		fits = pick_gpus(n, p, k, acc) != 0;
	}
	if (!fits)
		return -1;
	for (uint32_t d = nkeep; d-- > 0;) {
		uint64_t without = avail;
		for (uint32_t i = 0; i < nkeep; i++)
			if (i != d)
				without |= n->leases[keep[i]].mask & p->mask & ~blocked;
		if (pick_gpus(n, p, k, without)) {
			memmove(&keep[d], &keep[d + 1], (nkeep - d - 1) * sizeof *keep);
			nkeep--;
		}
	}
	uint64_t keep_gpus = 0;
	for (uint32_t i = 0; i < nkeep; i++)
		keep_gpus += job_gpus(c, &c->jobs[n->leases[keep[i]].job]);
	for (uint32_t a = 0; a < ncand; a++) {
		uint64_t g1 = job_gpus(c, &c->jobs[n->leases[cand[a]].job]);
		if (g1 > keep_gpus)
			continue;
		if (pick_gpus(n, p, k, avail | (n->leases[cand[a]].mask & p->mask & ~blocked))) {
			keep[0] = cand[a];
			nkeep = 1;
			keep_gpus = g1;
			break;
		}
	}
	acc = avail;
	for (uint32_t i = 0; i < nkeep; i++) {
		victims[i] = keep[i];
		acc |= n->leases[keep[i]].mask & p->mask & ~blocked;
	}
	*mask = pick_gpus(n, p, k, acc);
	*gpus = keep_gpus;
	return (int)nkeep;
}

/* Greedy victim choice on one node: already-stopping work is free, then the
 * largest eligible victims first (fewest victims to cover the gap; with
 * preempt_shorter_factor, victims_least_waste). Returns the number of new
 * victims or -1; fills victims[] with lease indexes. */
static int node_victims(struct cycle *cy, const struct node *n, const struct part *p,
                        const struct jclass *k, uint32_t js, uint32_t *victims, uint64_t *mask,
                        uint64_t *gpus)
{
	const struct sched_cluster *c = cy->c;
	const struct job *j = &c->jobs[js];
	uint64_t blocked = reserved_by_others(c, n, js);
	uint64_t avail = n->free_mask & p->mask & ~blocked;
	uint32_t cand[SCHED_MAX_GPUS_PER_NODE], ncand = 0;
	for (uint32_t l = 0; l < n->nleases; l++) {
		const struct job *v = &c->jobs[n->leases[l].job];
		if (!(n->leases[l].mask & p->mask))
			continue;
		if (v->state == SCHED_JOB_PREEMPTING)
			avail |= n->leases[l].mask & p->mask & ~blocked;
		else if (victim_ok(cy, k, j, v, n->leases[l].job, (uint32_t)(n - c->nodes)))
			cand[ncand++] = l;
	}
	*gpus = 0;
	uint64_t g = pick_gpus(n, p, k, avail);
	if (g) {
		*mask = g;
		return 0;
	}
	if (cy->pol->preempt_shorter_factor > 0)
		return victims_least_waste(cy, n, p, k, avail, blocked, cand, ncand, victims, mask,
		                           gpus);
	/* largest share of this part first; ties by lower job id */
	for (uint32_t a = 1; a < ncand; a++) {
		uint32_t x = cand[a], b = a;
		uint32_t gx = popcount64(n->leases[x].mask & p->mask);
		while (b > 0) {
			uint32_t y = cand[b - 1];
			uint32_t gy = popcount64(n->leases[y].mask & p->mask);
			if (gy > gx || (gy == gx && c->jobs[n->leases[y].job].id <
			                                c->jobs[n->leases[x].job].id))
				break;
			cand[b] = y;
			b--;
		}
		cand[b] = x;
	}
	for (uint32_t a = 0; a < ncand; a++) {
		const struct nlease *l = &n->leases[cand[a]];
		avail |= l->mask & p->mask & ~blocked;
		victims[a] = cand[a];
		*gpus += job_gpus(c, &c->jobs[l->job]);
		g = pick_gpus(n, p, k, avail);
		if (g) {
			*mask = g;
			return (int)a + 1;
		}
	}
	return -1;
}

static bool slot_cost(struct cycle *cy, const struct node *n, const struct part *p,
                      const struct jclass *k, uint32_t js, struct slotinfo *out)
{
	uint32_t victims[SCHED_MAX_GPUS_PER_NODE];
	uint64_t gpus;
	int nv = node_victims(cy, n, p, k, js, victims, &out->mask, &gpus);
	if (nv < 0)
		return false;
	/* slots sort by t, then cost_gpus */
	bool waste = cy->pol->preempt_shorter_factor > 0;
	out->t = waste ? (int64_t)gpus : nv;
	out->cost_gpus = waste ? (uint64_t)nv : gpus;
	return true;
}

/* May the shorter-work rule find a victim anywhere for j (class k)? From
 * the per-class longest remaining lease, taken once per cycle. */
static bool shorter_possible(struct cycle *cy, const struct job *j, const struct jclass *k)
{
	struct sched_cluster *c = cy->c;
	double f = cy->pol->preempt_shorter_factor;
	if (!(f > 0))
		return false;
	if (!cy->rem_ready) {
		for (int q = 0; q < SCHED_PRIO_CLASSES; q++)
			cy->rem_max[q] = INT64_MIN;
		for (uint32_t s = 0; s < c->njob_slots; s++) {
			const struct job *v = &c->jobs[s];
			if (!v->id || v->state != SCHED_JOB_RUNNING)
				continue;
			const struct jclass *vk = &c->classes[v->cls];
			if (!vk->preemptible || !past_min_run(cy, v))
				continue;
			if (v->deadline_us - cy->now > cy->rem_max[vk->prio])
				cy->rem_max[vk->prio] = v->deadline_us - cy->now;
		}
		cy->rem_ready = true;
	}
	for (uint32_t q = 0; q <= k->prio; q++)
		if (cy->rem_max[q] != INT64_MIN &&
		    (double)cy->rem_max[q] >= f * (double)j->max_dur_us)
			return true;
	return false;
}

/* Returns true when the job now holds GPUs that are being freed for it. */
static bool try_preempt(struct cycle *cy, uint32_t js)
{
	struct sched_cluster *c = cy->c;
	struct job *j = &c->jobs[js];
	const struct jclass *k = &c->classes[j->cls];
	/* victims come from the classes below victims_below - 1 */
	uint32_t victims_below = 1 + (shorter_possible(cy, j, k) ? k->prio + 1
	                              : cy->pol->preemption      ? k->prio
	                                                         : 0);
	if (victims_below == 1)
		return false; /* nothing is below the lowest class, no shorter rule */
	cy->need_rem_us = 0;
	if (!(cy->pol->preemption && k->prio > 0)) {
		double need = ceil(cy->pol->preempt_shorter_factor * (double)j->max_dur_us);
		cy->need_rem_us = need < 1 ? 1 : need > 9e18 ? INT64_MAX : (int64_t)need;
	}
	uint32_t first = choose_slots(
	    cy, collect_slots(cy, js, slot_cost, cy->pol->score_nodes, victims_below), k);
	cy->need_rem_us = 0;
	if (first == NONE32)
		return false;
	int64_t ready_at = cy->now;
	int64_t grace_end = cy->now + cy->pol->preemption_grace_us;
	for (uint32_t s = first; s < first + k->nodes; s++) {
		const struct slotinfo *si = &cy->slots[s];
		struct node *n = &c->nodes[si->node];
		uint32_t victims[SCHED_MAX_GPUS_PER_NODE];
		uint64_t mask, gpus;
		int nv = node_victims(cy, n, &n->parts[si->part], k, js, victims, &mask, &gpus);
		/* leases of already stopping jobs end by their deadline */
		for (uint32_t l = 0; l < n->nleases; l++) {
			const struct job *v = &c->jobs[n->leases[l].job];
			if ((n->leases[l].mask & mask) && v->deadline_us > ready_at)
				ready_at = v->deadline_us;
		}
		for (int v = 0; v < nv; v++) {
			uint32_t vs = n->leases[victims[v]].job;
			struct job *vj = &c->jobs[vs];
			if (vj->state != SCHED_JOB_RUNNING)
				continue;
			const struct jclass *vk = &c->classes[vj->cls];
			for (uint32_t q = 0; q < vk->nodes; q++)
				pool_count_lease(c, vj->place[q].node, vj->place[q].mask, vs, -1);
			vj->state = SCHED_JOB_PREEMPTING;
			for (uint32_t q = 0; q < vk->nodes; q++) {
				pool_count_lease(c, vj->place[q].node, vj->place[q].mask, vs, 1);
				/* a gang victim's other nodes get stopping GPUs no one
				 * reserved: keep the shorter rule's node cache exact */
				struct node *vn = &c->nodes[vj->place[q].node];
				if (vn->vc_epoch == c->epoch)
					vn->vc_stop_mask |= vj->place[q].mask;
			}
			vj->preempt_for = j->id;
			if (vj->deadline_us > grace_end)
				vj->deadline_us = grace_end;
			if (vj->deadline_us > ready_at)
				ready_at = vj->deadline_us;
			struct sched_action *a = &cy->out->items[cy->out->len++];
			memset(a, 0, sizeof *a);
			a->kind = SCHED_ACT_PREEMPT;
			a->job_id = vj->id;
			a->for_job_id = j->id;
			a->deadline_us = vj->deadline_us;
			cy->st.preempted++;
		}
		reserve_on(cy, si->node, mask, ready_at, js);
	}
	j->resv_at_us = ready_at;
	j->resv_epoch = c->epoch;
	return true;
}

/* ---- the cycle ------------------------------------------------------------------------ */

static void give_up(struct cycle *cy, uint32_t js)
{
	struct sched_cluster *c = cy->c;
	struct job *j = &c->jobs[js];
	struct sched_explain ex;
	sched_job_explain(c, j->id, &ex);
	enum sched_reason worst = SCHED_R_GPU_COUNT;
	for (int r = 0; r < SCHED_R_COUNT; r++)
		if (ex.count[r] > ex.count[worst])
			worst = (enum sched_reason)r;
	struct sched_action *a = &cy->out->items[cy->out->len++];
	memset(a, 0, sizeof *a);
	a->kind = SCHED_ACT_UNSCHEDULABLE;
	a->job_id = j->id;
	a->reason = worst;
	job_unqueue(c, js);
	job_destroy(c, js);
	cy->st.unschedulable++;
}

static bool should_give_up(struct cycle *cy, uint32_t js)
{
	struct sched_cluster *c = cy->c;
	const struct job *j = &c->jobs[js];
	int64_t timeout = cy->pol->infeasible_timeout_us;
	if (!timeout || cy->now - j->submit_us < timeout)
		return false;
	return !class_fleet_feasible(c, &c->classes[j->cls]);
}

int sched_cycle(struct sched_cluster *c, int64_t now_us, struct sched_actions *out,
                struct sched_cycle_stats *stats)
{
	struct cycle cy;
	memset(&cy, 0, sizeof cy);
	cy.c = c;
	cy.pol = &c->policy;
	cy.now = now_us;
	cy.out = out;
	int rc = cycle_prepare(&cy);
	if (rc)
		return rc;
	c->epoch++; /* last cycle's reservations lapse */
	c->last_cycle_us = now_us;
	cycle_order(&cy);
	cycle_speed_means(&cy);
	cycle_frag_mix(&cy);

	uint32_t n = c->npending; /* placements shrink the pending list */
	bool blocked_seen = false;
	uint32_t after_block = 0;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t js = cy.order[i].job;
		struct job *j = &c->jobs[js];
		struct jclass *k = &c->classes[j->cls];
		/* A blocked class stays blocked for the rest of the cycle: free GPUs
		 * only shrink and reservations only grow. With reservations in the
		 * way, only a shorter job (ending before them) can do better. */
		if (k->fail_epoch == c->epoch &&
		    (!k->fail_resv || j->max_dur_us >= k->fail_dur_us)) {
			cy.st.skipped_class++;
			if (should_give_up(&cy, js))
				give_up(&cy, js);
			continue;
		}
		if (blocked_seen && cy.pol->backfill_depth && after_block >= cy.pol->backfill_depth)
			break;
		if (blocked_seen)
			after_block++;
		/* a member of this class already waits for a faster GPU than
		 * any free now: so does this one if it would wait even there */
		if (k->hold_epoch == c->epoch && hold_for_faster(&cy, j, k, k->hold_speed)) {
			cy.st.held++;
			continue;
		}
		cy.st.considered++;
		cy.resv_hit = false;
		int placed = k->nodes == 1 ? place_single(&cy, js) : place_gang(&cy, js);
		if (placed > 0) {
			cy.st.placed++;
			continue;
		}
		if (placed < 0) {
			cy.st.held++;
			continue;
		}
		if (k->fail_epoch != c->epoch) {
			k->fail_epoch = c->epoch;
			k->fail_resv = cy.resv_hit;
			k->fail_dur_us = j->max_dur_us;
		} else {
			k->fail_resv = k->fail_resv && cy.resv_hit;
			if (j->max_dur_us < k->fail_dur_us)
				k->fail_dur_us = j->max_dur_us;
		}
		cy.st.blocked++;
		blocked_seen = true;
		if (should_give_up(&cy, js)) {
			give_up(&cy, js);
			continue;
		}
		if ((cy.pol->preemption || cy.pol->preempt_shorter_factor > 0) &&
		    try_preempt(&cy, js))
			continue;
		if (cy.pol->backfill && cy.nresv < cy.pol->reservations) {
			cy.nresv++;
			make_reservation(&cy, js);
		}
	}
	if (stats)
		*stats = cy.st;
	return 0;
}
