/* sched_filter.c — the filters: which GPUs of which node a job may use, and
 * the first reason a node cannot host it. */
#include "sched_internal.h"

static inline uint64_t lowest_bits(uint64_t m, uint32_t n)
{
	uint64_t out = 0;
	while (n--) {
		uint64_t b = m & -m;
		out |= b;
		m ^= b;
	}
	return out;
}

uint64_t pick_gpus(const struct node *n, const struct part *p, const struct jclass *k,
                   uint64_t usable)
{
	usable &= p->mask;
	if (popcount64(usable) < k->gpus)
		return 0;
	if (!k->nvlink)
		return lowest_bits(usable, k->gpus);
	/* One NVLink group; the fullest-used group that still fits keeps
	 * whole groups free for later gangs. */
	uint16_t best_group = 0;
	uint32_t best_free = UINT32_MAX;
	uint64_t best_mask = 0;
	uint64_t seen = 0;
	for (uint64_t m = usable; m; m &= m - 1) {
		uint32_t i = (uint32_t)__builtin_ctzll(m);
		uint16_t g = n->gpus[i].nvlink_group;
		if (!g || (seen >> i & 1))
			continue;
		uint64_t gm = 0;
		for (uint64_t r = usable; r; r &= r - 1) {
			uint32_t q = (uint32_t)__builtin_ctzll(r);
			if (n->gpus[q].nvlink_group == g)
				gm |= 1ull << q;
		}
		seen |= gm;
		uint32_t f = popcount64(gm);
		if (f >= k->gpus && (f < best_free || (f == best_free && g < best_group))) {
			best_free = f;
			best_group = g;
			best_mask = gm;
		}
	}
	return best_mask ? lowest_bits(best_mask, k->gpus) : 0;
}

bool region_in(const uint32_t *regions, uint32_t n, uint32_t region)
{
	if (!n)
		return true;
	for (uint32_t i = 0; i < n; i++)
		if (regions[i] == region)
			return true;
	return false;
}

bool labels_match(const struct node *n, const struct jclass *k)
{
	/* both sorted: one merge pass */
	uint32_t i = 0;
	for (uint32_t s = 0; s < k->nselectors; s++) {
		while (i < n->nlabels && n->labels[i] < k->selectors[s])
			i++;
		if (i == n->nlabels || n->labels[i] != k->selectors[s])
			return false;
	}
	return true;
}

static bool toleration_matches(const char *tol, const char *taint)
{
	if (strchr(tol, '='))
		return strcmp(tol, taint) == 0;
	size_t n = strlen(tol);
	return strncmp(tol, taint, n) == 0 && (taint[n] == '\0' || taint[n] == '=');
}

bool taints_tolerated(const struct sched_cluster *c, uint32_t taintset, const uint32_t *tol,
                      uint32_t ntol)
{
	const struct idset *ts = &c->idsets[taintset];
	for (uint32_t i = 0; i < ts->n; i++) {
		const char *taint = c->strs.strs[ts->ids[i]];
		bool ok = false;
		for (uint32_t t = 0; t < ntol && !ok; t++)
			ok =
			    tol[t] == ts->ids[i] || toleration_matches(c->strs.strs[tol[t]], taint);
		if (!ok)
			return false;
	}
	return true;
}

static enum sched_reason part_type_reason(const struct sched_cluster *c, const struct part *p,
                                          const struct jclass *k)
{
	const struct gtype *g = &c->gtypes[p->gtype];
	if (g->memory_mib < k->min_mem)
		return SCHED_R_MEMORY;
	if (g->cc < k->min_cc)
		return SCHED_R_COMPUTE_CAP;
	if (!(g->precisions >> k->precision & 1))
		return SCHED_R_PRECISION;
	if (k->need_tflops > 0 && p->tflops[k->precision] < k->need_tflops)
		return SCHED_R_TFLOPS;
	return SCHED_R_COUNT;
}

enum sched_reason node_static_reason(const struct sched_cluster *c, const struct node *n,
                                     const struct part *p, const struct jclass *k)
{
	(void)c;
	if (k->need_tflops > 0 && p->tflops[k->precision] < k->need_tflops)
		return SCHED_R_TFLOPS;
	if (k->max_price && n->price_micros > k->max_price)
		return SCHED_R_PRICE;
	if (k->nselectors && !labels_match(n, k))
		return SCHED_R_LABEL;
	return SCHED_R_COUNT;
}

bool pool_may_host(const struct pool *p, const struct jclass *k)
{
	if (k->nvlink && p->topo < k->gpus)
		return false;
	for (uint32_t s = 0; s < k->nselectors; s++) {
		uint32_t lo = 0, hi = p->nlc;
		while (lo < hi) {
			uint32_t mid = (lo + hi) / 2;
			if (p->lc[mid].label < k->selectors[s])
				lo = mid + 1;
			else
				hi = mid;
		}
		if (lo == p->nlc || p->lc[lo].label != k->selectors[s])
			return false;
	}
	return true;
}

enum sched_reason restore_reason(const struct sched_cluster *c, const struct node *n,
                                 const struct part *p, const struct jclass *k)
{
	if (!region_allowed(k, n->region))
		return SCHED_R_REGION;
	enum sched_reason r = part_type_reason(c, p, k);
	if (r != SCHED_R_COUNT)
		return r;
	if (!taints_tolerated(c, n->taintset, k->tolerations, k->ntolerations))
		return SCHED_R_TAINT;
	if (!labels_match(n, k))
		return SCHED_R_LABEL;
	return SCHED_R_COUNT;
}

static uint32_t part_capacity(const struct part *p, const struct jclass *k)
{
	return k->nvlink ? p->max_group : popcount64(p->mask);
}

enum sched_reason node_reason(const struct sched_cluster *c, const struct node *n,
                              const struct jclass *k, uint32_t job_slot, int64_t end_us,
                              bool ignore_use, bool ignore_state, uint32_t *best_part)
{
	*best_part = 0;
	if (!ignore_state && n->state != SCHED_NODE_READY)
		return SCHED_R_NODE_STATE;
	if (!n->verified && !c->policy.allow_unverified)
		return SCHED_R_UNVERIFIED;
	if (!region_allowed(k, n->region))
		return SCHED_R_REGION;
	/* GPU-type filters per part; the node counts under the part that got
	 * furthest down the chain */
	enum sched_reason best = SCHED_R_NODE_STATE;
	for (uint32_t i = 0; i < n->nparts; i++) {
		enum sched_reason r = part_type_reason(c, &n->parts[i], k);
		if (r > best || i == 0) {
			best = r;
			*best_part = i;
		}
	}
	if (best != SCHED_R_COUNT)
		return best;
	if (!taints_tolerated(c, n->taintset, k->tolerations, k->ntolerations))
		return SCHED_R_TAINT;
	if (k->max_price && n->price_micros > k->max_price)
		return SCHED_R_PRICE;
	if (!labels_match(n, k))
		return SCHED_R_LABEL;
	best = SCHED_R_NODE_STATE;
	for (uint32_t i = 0; i < n->nparts; i++) {
		const struct part *p = &n->parts[i];
		enum sched_reason r;
		if (part_type_reason(c, p, k) != SCHED_R_COUNT)
			continue;
		if (part_capacity(p, k) < k->gpus)
			r = SCHED_R_GPU_COUNT;
		else if (ignore_use)
			r = SCHED_R_COUNT;
		else if (popcount64(n->free_mask & p->mask) < k->gpus)
			r = SCHED_R_FREE_GPUS;
		else if (!pick_gpus(n, p, k, n->free_mask))
			r = SCHED_R_INTERCONNECT;
		else if (!pick_gpus(n, p, k, usable_mask(c, n, p, job_slot, end_us)))
			r = SCHED_R_RESERVED;
		else
			r = SCHED_R_COUNT;
		if (r > best) {
			best = r;
			*best_part = i;
		}
	}
	return best;
}
