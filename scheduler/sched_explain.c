/* sched_explain.c — why a job is pending: per-filter node counts, and
 * whether the fleet could ever host it. */
#include "sched_internal.h"

#include <stdio.h>

static const char *const reason_text[SCHED_R_COUNT] = {
	[SCHED_R_NODE_STATE] = "node not ready (draining, cordoned or lost)",
	[SCHED_R_UNVERIFIED] = "node unverified",
	[SCHED_R_REGION] = "region not allowed",
	[SCHED_R_MEMORY] = "GPU memory below minimum",
	[SCHED_R_COMPUTE_CAP] = "compute capability below minimum",
	[SCHED_R_PRECISION] = "precision not supported",
	[SCHED_R_TFLOPS] = "TFLOPS below minimum",
	[SCHED_R_TAINT] = "taint not tolerated",
	[SCHED_R_PRICE] = "price above max",
	[SCHED_R_LABEL] = "label selector not matched",
	[SCHED_R_GPU_COUNT] = "too few matching GPUs even when idle",
	[SCHED_R_FREE_GPUS] = "too few free GPUs",
	[SCHED_R_INTERCONNECT] = "free GPUs not in one NVLink group",
	[SCHED_R_RESERVED] = "GPUs reserved for a higher-priority job",
};

const char *sched_reason_text(enum sched_reason r)
{
	return (unsigned)r < SCHED_R_COUNT ? reason_text[r] : "unknown reason";
}

/* Counts nodes per region in a small fixed table; regions past its size
 * are folded into the last row, which only makes gang counts conservative. */
struct region_count {
	uint32_t region;
	uint32_t count;
};

static void region_add(struct region_count *rc, uint32_t *n, uint32_t cap, uint32_t region)
{
	for (uint32_t i = 0; i < *n; i++) {
		if (rc[i].region == region) {
			rc[i].count++;
			return;
		}
	}
	if (*n < cap)
		rc[(*n)++] = (struct region_count){ region, 1 };
}

static uint32_t region_max(const struct region_count *rc, uint32_t n)
{
	uint32_t m = 0;
	for (uint32_t i = 0; i < n; i++)
		if (rc[i].count > m)
			m = rc[i].count;
	return m;
}

bool class_fleet_feasible(struct sched_cluster *c, struct jclass *k)
{
	if (k->fleet_gen == c->fleet_gen)
		return k->fleet_ok;
	struct region_count rc[256];
	uint32_t nrc = 0;
	uint32_t part;
	for (uint32_t s = 0; s < c->nnodes_slots; s++) {
		const struct node *n = &c->nodes[s];
		if (!n->id)
			continue;
		if (node_reason(c, n, k, NONE32, 0, true, true, &part) == SCHED_R_COUNT)
			region_add(rc, &nrc, 256, n->region);
	}
	k->fleet_ok = region_max(rc, nrc) >= k->nodes;
	k->fleet_gen = c->fleet_gen;
	return k->fleet_ok;
}

int sched_job_explain(const struct sched_cluster *c, uint64_t job_id, struct sched_explain *out)
{
	memset(out, 0, sizeof *out);
	uint32_t js = idmap_get(&c->job_map, job_id);
	if (js == NONE32)
		return -ENOENT;
	const struct job *j = &c->jobs[js];
	const struct jclass *k = &c->classes[j->cls];
	out->state = j->state;
	out->gang_nodes = k->nodes;
	out->total_nodes = c->nodes_live;
	if (j->resv_epoch == c->epoch && c->epoch) {
		out->reserved = true;
		out->reserved_start_us = j->resv_at_us;
	}
	int64_t end = c->last_cycle_us + j->max_dur_us;
	struct region_count fit[256], feasible[256];
	uint32_t nfit = 0, nfeasible = 0;
	for (uint32_t s = 0; s < c->nnodes_slots; s++) {
		const struct node *n = &c->nodes[s];
		if (!n->id)
			continue;
		uint32_t part;
		enum sched_reason r = node_reason(c, n, k, js, end, false, false, &part);
		if (r == SCHED_R_COUNT) {
			out->fit_nodes++;
			region_add(fit, &nfit, 256, n->region);
		} else {
			out->count[r]++;
		}
		if (node_reason(c, n, k, js, end, true, true, &part) == SCHED_R_COUNT)
			region_add(feasible, &nfeasible, 256, n->region);
	}
	out->best_region_fit = region_max(fit, nfit);
	out->fleet_feasible = region_max(feasible, nfeasible) >= k->nodes;
	return 0;
}

size_t sched_explain_format(const struct sched_explain *e, char *buf, size_t len)
{
	size_t used = 0;
#define PUT(...)                                                                \
	do {                                                                    \
		int w_ = snprintf(buf ? buf + (used < len ? used : len) : NULL, \
		                  used < len ? len - used : 0, __VA_ARGS__);    \
		if (w_ > 0)                                                     \
			used += (size_t)w_;                                     \
	} while (0)
	if (e->gang_nodes > 1)
		PUT("%u/%u nodes fit (gang of %u nodes in one region; best region has %u)",
		    e->fit_nodes, e->total_nodes, e->gang_nodes, e->best_region_fit);
	else
		PUT("%u/%u nodes fit", e->fit_nodes, e->total_nodes);
	bool done[SCHED_R_COUNT] = { false };
	bool first = true;
	for (;;) {
		int best = -1;
		for (int r = 0; r < SCHED_R_COUNT; r++)
			if (!done[r] && e->count[r] && (best < 0 || e->count[r] > e->count[best]))
				best = r;
		if (best < 0)
			break;
		done[best] = true;
		PUT("%s %u %s", first ? ":" : ",", e->count[best], reason_text[best]);
		first = false;
	}
	if (e->reserved)
		PUT("; holds a reservation");
	if (!e->fleet_feasible)
		PUT("; no node of the fleet could host it even when idle");
#undef PUT
	return used;
}
