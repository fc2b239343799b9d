/* sched_check.c — invariant checks and logical comparison of clusters, for
 * tests, fuzzers and the simulator. */
#include "sched_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>

static bool failf(char *why, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bool failf(char *why, size_t len, const char *fmt, ...)
{
	if (why && len) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(why, len, fmt, ap);
		va_end(ap);
	}
	return false;
}

#define FAIL(...) return (failf(why, why_len, __VA_ARGS__), -EINVAL)

int sched_cluster_check(const struct sched_cluster *c, char *why, size_t why_len)
{
	uint32_t by_state[SCHED_NODE_STATE_COUNT] = { 0 };
	uint64_t gpus = 0;
	uint32_t live = 0;
	for (uint32_t s = 0; s < c->nnodes_slots; s++) {
		const struct node *n = &c->nodes[s];
		if (!n->id)
			continue;
		live++;
		if (idmap_get(&c->node_map, n->id) != s)
			FAIL("node %llu: id map points elsewhere", (unsigned long long)n->id);
		by_state[n->state]++;
		gpus += n->ngpus;
		uint64_t all = n->ngpus == 64 ? ~0ull : (1ull << n->ngpus) - 1;
		uint64_t held = 0, parts = 0;
		for (uint32_t l = 0; l < n->nleases; l++) {
			const struct nlease *ls = &n->leases[l];
			if (held & ls->mask)
				FAIL("node %llu: GPUs 0x%llx given twice",
				     (unsigned long long)n->id,
				     (unsigned long long)(held & ls->mask));
			held |= ls->mask;
			const struct job *j = &c->jobs[ls->job];
			if (!j->id ||
			    (j->state != SCHED_JOB_RUNNING && j->state != SCHED_JOB_PREEMPTING))
				FAIL("node %llu: lease of a job that is not running",
				     (unsigned long long)n->id);
			const struct jclass *k = &c->classes[j->cls];
			bool found = false;
			for (uint32_t i = 0; i < k->nodes; i++)
				found |= j->place[i].node == s && j->place[i].mask == ls->mask;
			if (!found)
				FAIL("node %llu: lease not in job %llu's placement",
				     (unsigned long long)n->id, (unsigned long long)j->id);
		}
		if ((held | n->free_mask) != all || (held & n->free_mask))
			FAIL("node %llu: free 0x%llx and held 0x%llx do not partition its GPUs",
			     (unsigned long long)n->id, (unsigned long long)n->free_mask,
			     (unsigned long long)held);
		for (uint32_t i = 0; i < n->nparts; i++) {
			const struct part *p = &n->parts[i];
			if (parts & p->mask)
				FAIL("node %llu: parts overlap", (unsigned long long)n->id);
			parts |= p->mask;
			bool indexed = p->pool != NONE32;
			if (indexed != (n->state == SCHED_NODE_READY))
				FAIL("node %llu: part %u indexed=%d in state %u",
				     (unsigned long long)n->id, i, indexed, n->state);
			if (!indexed)
				continue;
			const struct pool *pl = &c->pools[p->pool];
			uint32_t f = popcount64(n->free_mask & p->mask);
			if (p->bfree != f || f >= pl->nb || p->bpos >= pl->b[f].len ||
			    pl->b[f].items[p->bpos] != PREF(s, i))
				FAIL("node %llu: part %u not in bucket %u of its pool",
				     (unsigned long long)n->id, i, f);
			if (pl->region != n->region || pl->taintset != n->taintset ||
			    pl->verified != n->verified || pl->gtype != p->gtype ||
			    pl->topo != p->max_group || n->price_micros < pl->price_lo ||
			    n->price_micros >= pl->price_hi)
				FAIL("node %llu: part %u in a pool with other facts",
				     (unsigned long long)n->id, i);
		}
		if (parts != all)
			FAIL("node %llu: parts do not cover its GPUs", (unsigned long long)n->id);
	}
	if (live != c->nodes_live || gpus != c->gpus_total ||
	    memcmp(by_state, c->nodes_by_state, sizeof by_state))
		FAIL("node counters disagree with the nodes");
	for (uint32_t p = 0; p < c->npools; p++) {
		const struct pool *pl = &c->pools[p];
		uint32_t members = 0;
		for (uint32_t f = 0; f < pl->nb; f++) {
			members += pl->b[f].len;
			if (f && ((pl->nonempty >> (f - 1) & 1) != (pl->b[f].len > 0)))
				FAIL("pool %u: nonempty bit %u wrong", p, f);
		}
		if (members != pl->members)
			FAIL("pool %u: %u members counted, %u recorded", p, members, pl->members);
		/* preemption counters agree with the members' leases */
		uint32_t victims[SCHED_PRIO_CLASSES] = { 0 }, stopping = 0;
		for (uint32_t f = 0; f < pl->nb; f++) {
			for (uint32_t i = 0; i < pl->b[f].len; i++) {
				const struct node *n = &c->nodes[PREF_NODE(pl->b[f].items[i])];
				const struct part *pt = &n->parts[PREF_PART(pl->b[f].items[i])];
				for (uint32_t l = 0; l < n->nleases; l++) {
					const struct job *j = &c->jobs[n->leases[l].job];
					const struct jclass *k = &c->classes[j->cls];
					uint32_t g = popcount64(n->leases[l].mask & pt->mask);
					if (j->state == SCHED_JOB_PREEMPTING)
						stopping += g;
					else if (k->preemptible)
						victims[k->prio] += g;
				}
			}
		}
		if (stopping != pl->stopping_gpus ||
		    memcmp(victims, pl->victim_gpus, sizeof victims))
			FAIL("pool %u: preemption counters disagree with its leases", p);
		/* label counts agree with the members */
		uint32_t labelled = 0;
		for (uint32_t f = 0; f < pl->nb; f++)
			for (uint32_t i = 0; i < pl->b[f].len; i++)
				labelled += c->nodes[PREF_NODE(pl->b[f].items[i])].nlabels;
		uint32_t counted = 0;
		for (uint32_t l = 0; l < pl->nlc; l++) {
			if (!pl->lc[l].count || (l && pl->lc[l - 1].label >= pl->lc[l].label))
				FAIL("pool %u: label counts unsorted or zero", p);
			uint32_t have = 0;
			for (uint32_t f = 0; f < pl->nb; f++)
				for (uint32_t i = 0; i < pl->b[f].len; i++) {
					const struct node *n =
					    &c->nodes[PREF_NODE(pl->b[f].items[i])];
					for (uint32_t q = 0; q < n->nlabels; q++)
						have += n->labels[q] == pl->lc[l].label;
				}
			if (have != pl->lc[l].count)
				FAIL("pool %u: label %u counted %u, recorded %u", p,
				     pl->lc[l].label, have, pl->lc[l].count);
			counted += have;
		}
		if (counted != labelled)
			FAIL("pool %u: %u member labels, %u counted", p, labelled, counted);
	}
	uint32_t running = 0;
	uint64_t pending_parts = 0;
	for (uint32_t s = 0; s < c->njob_slots; s++) {
		const struct job *j = &c->jobs[s];
		if (!j->id)
			continue;
		const struct jclass *k = &c->classes[j->cls];
		if (!k->refs)
			FAIL("job %llu: class without references", (unsigned long long)j->id);
		if (j->state == SCHED_JOB_PENDING) {
			if (j->pending_pos >= c->npending || c->pending[j->pending_pos] != s)
				FAIL("job %llu: not at its pending position",
				     (unsigned long long)j->id);
			pending_parts += k->nodes;
			continue;
		}
		running++;
		uint32_t region = NONE32;
		for (uint32_t i = 0; i < k->nodes; i++) {
			const struct node *n = &c->nodes[j->place[i].node];
			if (popcount64(j->place[i].mask) != k->gpus)
				FAIL("job %llu: part %u has %u GPUs, wants %u",
				     (unsigned long long)j->id, i, popcount64(j->place[i].mask),
				     k->gpus);
			if (region != NONE32 && n->region != region)
				FAIL("job %llu: gang spans regions", (unsigned long long)j->id);
			region = n->region;
			for (uint32_t q = 0; q < i; q++)
				if (j->place[q].node == j->place[i].node)
					FAIL("job %llu: gang uses node %llu twice",
					     (unsigned long long)j->id, (unsigned long long)n->id);
			bool found = false;
			for (uint32_t l = 0; l < n->nleases; l++)
				found |=
				    n->leases[l].job == s && n->leases[l].mask == j->place[i].mask;
			if (!found)
				FAIL("job %llu: node %llu has no lease for it",
				     (unsigned long long)j->id, (unsigned long long)n->id);
		}
	}
	if (running != c->nrunning || pending_parts != c->pending_parts)
		FAIL("job counters disagree with the jobs");
	for (uint32_t t = 0; t < c->ntenants; t++) {
		uint64_t g = 0;
		for (uint32_t s = 0; s < c->njob_slots; s++) {
			const struct job *j = &c->jobs[s];
			if (j->id && j->tenant == t && j->state != SCHED_JOB_PENDING) {
				const struct jclass *k = &c->classes[j->cls];
				g += (uint64_t)k->gpus * k->nodes;
			}
		}
		if (g != c->tenants[t].running_gpus)
			FAIL("tenant %llu: %llu GPUs running, %u recorded",
			     (unsigned long long)c->tenants[t].id, (unsigned long long)g,
			     c->tenants[t].running_gpus);
	}
	if (why && why_len)
		why[0] = '\0';
	return 0;
}

/* ---- logical equality ------------------------------------------------------------ */

/* Same strings in two id lists of two clusters? */
static bool same_strings(const struct sched_cluster *a, const uint32_t *x, uint32_t nx,
                         const struct sched_cluster *b, const uint32_t *y, uint32_t ny)
{
	if (nx != ny)
		return false;
	for (uint32_t i = 0; i < nx; i++) {
		uint32_t id = strtab_find(&b->strs, a->strs.strs[x[i]]);
		bool found = false;
		for (uint32_t q = 0; q < ny && !found; q++)
			found = y[q] == id;
		if (!found)
			return false;
	}
	return true;
}

static const char *str_or_empty(const struct sched_cluster *c, uint32_t id)
{
	return id == NONE32 ? "" : c->strs.strs[id];
}

/* Profiles are sorted by string id, which differs between clusters: compare
 * each entry of x with its match in y by model name. */
static bool same_speeds(const struct sched_cluster *a, const struct jclass *x,
                        const struct sched_cluster *b, const struct jclass *y)
{
	if (x->nspeeds != y->nspeeds)
		return false;
	for (uint32_t i = 0; i < x->nspeeds; i++) {
		const struct kspeed *e = &x->speeds[i];
		bool found = false;
		for (uint32_t j = 0; j < y->nspeeds && !found; j++) {
			const struct kspeed *f = &y->speeds[j];
			found = e->cc == f->cc && e->speed == f->speed &&
			        !strcmp(str_or_empty(a, e->model), str_or_empty(b, f->model));
		}
		if (!found)
			return false;
	}
	return true;
}

static bool class_equal(const struct sched_cluster *a, const struct jclass *x,
                        const struct sched_cluster *b, const struct jclass *y)
{
	return x->kind == y->kind && x->precision == y->precision && x->prio == y->prio &&
	       x->preemptible == y->preemptible && x->nvlink == y->nvlink && x->gpus == y->gpus &&
	       x->nodes == y->nodes && x->min_mem == y->min_mem && x->min_cc == y->min_cc &&
	       x->min_tflops_gpu == y->min_tflops_gpu &&
	       x->min_tflops_total == y->min_tflops_total && x->max_price == y->max_price &&
	       !strcmp(str_or_empty(a, x->pref_region), str_or_empty(b, y->pref_region)) &&
	       same_strings(a, x->regions, x->nregions, b, y->regions, y->nregions) &&
	       same_strings(a, x->selectors, x->nselectors, b, y->selectors, y->nselectors) &&
	       same_strings(a, x->tolerations, x->ntolerations, b, y->tolerations,
	                    y->ntolerations) &&
	       same_speeds(a, x, b, y);
}

static bool gpu_equal(const struct sched_gpu_spec *x, const struct sched_gpu_spec *y)
{
	return !strcmp(x->model, y->model) && x->memory_mib == y->memory_mib &&
	       x->compute_cap == y->compute_cap && x->precisions == y->precisions &&
	       x->nvlink_group == y->nvlink_group &&
	       !memcmp(x->tflops, y->tflops, sizeof x->tflops);
}

#define DIFF(...) return failf(why, why_len, __VA_ARGS__)

bool sched_cluster_equal(const struct sched_cluster *a, const struct sched_cluster *b, char *why,
                         size_t why_len)
{
	if (memcmp(&a->policy, &b->policy, sizeof a->policy))
		DIFF("policies differ");
	if (a->nodes_live != b->nodes_live)
		DIFF("%u nodes vs %u", a->nodes_live, b->nodes_live);
	for (uint32_t s = 0; s < a->nnodes_slots; s++) {
		const struct node *x = &a->nodes[s];
		if (!x->id)
			continue;
		uint32_t t = idmap_get(&b->node_map, x->id);
		if (t == NONE32)
			DIFF("node %llu missing", (unsigned long long)x->id);
		const struct node *y = &b->nodes[t];
		if (strcmp(a->strs.strs[x->region], b->strs.strs[y->region]) ||
		    x->state != y->state || x->verified != y->verified ||
		    x->price_micros != y->price_micros ||
		    x->reliability_ppm != y->reliability_ppm || x->ngpus != y->ngpus)
			DIFF("node %llu: facts differ", (unsigned long long)x->id);
		for (uint32_t i = 0; i < x->ngpus; i++)
			if (!gpu_equal(&x->gpus[i], &y->gpus[i]))
				DIFF("node %llu: GPU %u differs", (unsigned long long)x->id, i);
		const struct idset *tx = &a->idsets[x->taintset], *ty = &b->idsets[y->taintset];
		if (!same_strings(a, x->labels, x->nlabels, b, y->labels, y->nlabels) ||
		    !same_strings(a, tx->ids, tx->n, b, ty->ids, ty->n))
			DIFF("node %llu: labels or taints differ", (unsigned long long)x->id);
		if (x->free_mask != y->free_mask)
			DIFF("node %llu: free GPUs 0x%llx vs 0x%llx", (unsigned long long)x->id,
			     (unsigned long long)x->free_mask, (unsigned long long)y->free_mask);
	}
	if (a->job_map.live != b->job_map.live || a->npending != b->npending)
		DIFF("%u jobs (%u pending) vs %u (%u)", a->job_map.live, a->npending,
		     b->job_map.live, b->npending);
	for (uint32_t s = 0; s < a->njob_slots; s++) {
		const struct job *x = &a->jobs[s];
		if (!x->id)
			continue;
		uint32_t t = idmap_get(&b->job_map, x->id);
		if (t == NONE32)
			DIFF("job %llu missing", (unsigned long long)x->id);
		const struct job *y = &b->jobs[t];
		const struct jclass *kx = &a->classes[x->cls], *ky = &b->classes[y->cls];
		if (x->state != y->state || x->submit_us != y->submit_us ||
		    x->max_dur_us != y->max_dur_us ||
		    a->tenants[x->tenant].id != b->tenants[y->tenant].id)
			DIFF("job %llu: state, submit time or tenant differ",
			     (unsigned long long)x->id);
		if (!class_equal(a, kx, b, ky))
			DIFF("job %llu: requirements differ", (unsigned long long)x->id);
		if (x->state == SCHED_JOB_PENDING)
			continue;
		if (x->start_us != y->start_us || x->deadline_us != y->deadline_us ||
		    x->preempt_for != y->preempt_for)
			DIFF("job %llu: lease times differ", (unsigned long long)x->id);
		for (uint32_t i = 0; i < kx->nodes; i++) {
			bool found = false;
			for (uint32_t q = 0; q < ky->nodes && !found; q++)
				found = a->nodes[x->place[i].node].id ==
				            b->nodes[y->place[q].node].id &&
				        x->place[i].mask == y->place[q].mask;
			if (!found)
				DIFF("job %llu: placement differs", (unsigned long long)x->id);
		}
	}
	for (uint32_t t = 0; t < a->ntenants; t++) {
		const struct tenant *x = &a->tenants[t];
		uint32_t u = idmap_get(&b->tenant_map, x->id);
		if (u == NONE32) {
			if (x->usage == 0 && x->running_gpus == 0 && x->shares == 1)
				continue; /* a tenant that never mattered */
			DIFF("tenant %llu missing", (unsigned long long)x->id);
		}
		const struct tenant *y = &b->tenants[u];
		int64_t at = x->usage_at > y->usage_at ? x->usage_at : y->usage_at;
		double ux = tenant_usage_at(a, x, at), uy = tenant_usage_at(b, y, at);
		if (x->shares != y->shares || x->running_gpus != y->running_gpus ||
		    fabs(ux - uy) > 1e-6 * (1 + fabs(ux)))
			DIFF("tenant %llu: shares, running GPUs or usage differ (%g vs %g)",
			     (unsigned long long)x->id, ux, uy);
	}
	if (why && why_len)
		why[0] = '\0';
	return true;
}
