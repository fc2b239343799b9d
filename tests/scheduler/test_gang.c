/* test_gang.c — gangs: a single-node job gets all its GPUs on one node from
 * one part (NVLink group when asked); a multi-node job gets gpus_per_node on
 * node_count distinct nodes of one region, all or nothing. */
#include "fixture.h"

#define NOW       FX_S(100)
#define MAX_NODES 8
#define MAX_PARTS 6

struct gnode {
	uint64_t id; /* 0 ends the list */
	const char *region;
	const char *gpus;
	uint64_t busy; /* held by a running job */
};

struct row {
	const char *name;
	struct gnode nodes[MAX_NODES];
	uint32_t gpn, nc; /* nc 0 = 1 */
	bool nvlink;
	const char *regions;
	uint16_t min_cc;
	float min_tflops_total;
	/* expected: the exact parts, or none placed */
	bool placed;
	struct sched_placement want[MAX_PARTS];
	uint32_t best_region_fit; /* multi-node, when not placed */
};

#define A4(id)                       \
	{                            \
		id, "a", "4xH100", 0 \
	}
#define B4(id)                       \
	{                            \
		id, "b", "4xH100", 0 \
	}

static const struct row rows[] = {
	/* single node */
	{ .name = "single-node: all GPUs on the one node that has them",
	  .nodes = { { 1, "a", "4xH100", 0x3 },
	             { 2, "a", "4xH100", 0x3 },
	             { 3, "a", "4xH100", 0x3 },
	             A4(4) },
	  .gpn = 4,
	  .placed = true,
	  .want = { { 4, 0xf } } },
	{ .name = "single-node: free GPUs spread over nodes do not add up",
	  .nodes = { { 1, "a", "4xH100", 0x3 },
	             { 2, "a", "4xH100", 0x3 },
	             { 3, "a", "4xH100", 0x3 } },
	  .gpn = 4,
	  .placed = false },
	{ .name = "parts: a job's GPUs come from one part",
	  .nodes = { { 1, "a", "2xA100 2xH100", 0 } },
	  .gpn = 3,
	  .placed = false },
	{ .name = "parts: the matching part",
	  .nodes = { { 1, "a", "2xA100 2xH100", 0 } },
	  .gpn = 2,
	  .min_cc = 90,
	  .placed = true,
	  .want = { { 1, 0xc } } },
	{ .name = "parts: busy GPUs of another part do not matter",
	  .nodes = { { 1, "a", "2xH100 2xA100 2xH100", 0x0c } },
	  .gpn = 4,
	  .min_cc = 90,
	  .placed = true,
	  .want = { { 1, 0x33 } } },

	/* NVLink */
	{ .name = "nvlink: fullest group that still fits",
	  .nodes = { { 1, "a", "4xH100@1 4xH100@2", 0x01 } },
	  .gpn = 3,
	  .nvlink = true,
	  .placed = true,
	  .want = { { 1, 0x0e } } },
	{ .name = "nvlink: next group when the first is too full",
	  .nodes = { { 1, "a", "4xH100@1 4xH100@2", 0x03 } },
	  .gpn = 3,
	  .nvlink = true,
	  .placed = true,
	  .want = { { 1, 0x70 } } },
	{ .name = "nvlink: equal groups, lowest group",
	  .nodes = { { 1, "a", "4xH100@1 4xH100@2", 0 } },
	  .gpn = 2,
	  .nvlink = true,
	  .placed = true,
	  .want = { { 1, 0x03 } } },
	{ .name = "nvlink: lowest group number, not lowest index",
	  .nodes = { { 1, "a", "4xH100@7 4xH100@3", 0 } },
	  .gpn = 2,
	  .nvlink = true,
	  .placed = true,
	  .want = { { 1, 0x30 } } },
	{ .name = "nvlink: no group has enough free",
	  .nodes = { { 1, "a", "4xH100@1 4xH100@2", 0x11 } },
	  .gpn = 4,
	  .nvlink = true,
	  .placed = false },
	{ .name = "nvlink: off, lowest indexes across groups",
	  .nodes = { { 1, "a", "4xH100@1 4xH100@2", 0x11 } },
	  .gpn = 4,
	  .placed = true,
	  .want = { { 1, 0x2e } } },
	{ .name = "nvlink: group 0 GPUs are never linked",
	  .nodes = { { 1, "a", "4xH100 4xH100@2", 0 } },
	  .gpn = 2,
	  .nvlink = true,
	  .placed = true,
	  .want = { { 1, 0x30 } } },
	{ .name = "nvlink: a node whose group fits beats one whose does not",
	  .nodes = { { 1, "a", "4xH100@1 4xH100@2", 0x11 }, { 2, "a", "8xH100@1", 0x0f } },
	  .gpn = 4,
	  .nvlink = true,
	  .placed = true,
	  .want = { { 2, 0xf0 } } },

	/* multi-node */
	{ .name = "multi-node: three nodes in the region that has them",
	  .nodes = { A4(1), A4(2), A4(3), B4(4), B4(5) },
	  .gpn = 4,
	  .nc = 3,
	  .placed = true,
	  .want = { { 1, 0xf }, { 2, 0xf }, { 3, 0xf } } },
	{ .name = "multi-node: four needed, 3+2 free, nothing placed",
	  .nodes = { A4(1), A4(2), A4(3), B4(4), B4(5) },
	  .gpn = 4,
	  .nc = 4,
	  .placed = false,
	  .best_region_fit = 3 },
	{ .name = "multi-node: the region with enough nodes",
	  .nodes = { A4(1), A4(2), B4(3), B4(4), B4(5) },
	  .gpn = 4,
	  .nc = 3,
	  .placed = true,
	  .want = { { 3, 0xf }, { 4, 0xf }, { 5, 0xf } } },
	{ .name = "multi-node: allowed region only",
	  .nodes = { A4(1), A4(2), A4(3), B4(4), B4(5) },
	  .gpn = 4,
	  .nc = 2,
	  .regions = "b",
	  .placed = true,
	  .want = { { 4, 0xf }, { 5, 0xf } } },
	{ .name = "multi-node: distinct nodes even when one could hold two parts",
	  .nodes = { { 1, "a", "8xH100", 0 }, A4(2) },
	  .gpn = 4,
	  .nc = 2,
	  .placed = true,
	  .want = { { 1, 0xf }, { 2, 0xf } } },
	{ .name = "multi-node: one big node is not two nodes",
	  .nodes = { { 1, "a", "8xH100", 0 }, B4(2) },
	  .gpn = 4,
	  .nc = 2,
	  .placed = false,
	  .best_region_fit = 1 },
	{ .name = "multi-node: a busy node does not count",
	  .nodes = { A4(1), { 2, "a", "4xH100", 0x3 }, A4(3), B4(4), B4(5) },
	  .gpn = 4,
	  .nc = 3,
	  .placed = false,
	  .best_region_fit = 2 },
	{ .name = "multi-node: ties go to the lowest ids",
	  .nodes = { A4(5), A4(4), A4(3), A4(2), A4(1) },
	  .gpn = 4,
	  .nc = 3,
	  .placed = true,
	  .want = { { 1, 0xf }, { 2, 0xf }, { 3, 0xf } } },
	{ .name = "multi-node: NVLink per node",
	  .nodes = { { 1, "a", "4xH100@1 4xH100@2", 0x01 }, { 2, "a", "4xH100@1 4xH100@2", 0x01 } },
	  .gpn = 3,
	  .nc = 2,
	  .nvlink = true,
	  .placed = true,
	  .want = { { 1, 0x0e }, { 2, 0x0e } } },
	{ .name = "multi-node: lowest free GPUs on each node",
	  .nodes = { { 1, "a", "4xH100", 0x3 }, { 2, "a", "4xH100", 0x1 } },
	  .gpn = 2,
	  .nc = 2,
	  .placed = true,
	  .want = { { 1, 0xc }, { 2, 0x6 } } },
	{ .name = "multi-node: total TFLOPS split over every GPU fits",
	  .nodes = { A4(1), A4(2) },
	  .gpn = 4,
	  .nc = 2,
	  .min_tflops_total = 7920,
	  .placed = true,
	  .want = { { 1, 0xf }, { 2, 0xf } } },
	{ .name = "multi-node: total TFLOPS split over every GPU too high",
	  .nodes = { A4(1), A4(2) },
	  .gpn = 4,
	  .nc = 2,
	  .min_tflops_total = 7921,
	  .placed = false,
	  .best_region_fit = 0 },
	{ .name = "multi-node: matching part on mixed nodes",
	  .nodes = { { 1, "a", "2xA100 2xH100", 0 }, { 2, "a", "2xH100 2xA100", 0 } },
	  .gpn = 2,
	  .nc = 2,
	  .min_cc = 90,
	  .placed = true,
	  .want = { { 1, 0xc }, { 2, 0x3 } } },
};

static size_t count_parts(const struct sched_placement *p)
{
	size_t n = 0;

	while (n < MAX_PARTS && p[n].node_id)
		n++;
	return n;
}

static bool has_part(const struct sched_placement *p, size_t n, uint64_t node, uint64_t mask)
{
	for (size_t i = 0; i < n; i++)
		if (p[i].node_id == node && p[i].gpu_mask == mask)
			return true;
	return false;
}

static void run_row(const struct row *r)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct fx_cycle fc = { 0 };
	struct fx_job j;
	uint32_t nc = r->nc ? r->nc : 1;
	uint64_t before[MAX_NODES] = { 0 };
	size_t nn = 0, nwant = count_parts(r->want);
	struct sched_placement got[SCHED_MAX_GANG_NODES];
	int ngot;

	for (; nn < MAX_NODES && r->nodes[nn].id; nn++) {
		struct fx_node n;

		fx_node_init(&n, r->nodes[nn].id, r->nodes[nn].region, r->nodes[nn].gpus);
		if (!fx_add_node(c, &n))
			goto out;
	}
	for (size_t i = 0; i < nn; i++) {
		struct fx_job b;

		if (r->nodes[i].busy) {
			fx_job_init(&b, 100 + r->nodes[i].id,
			            (uint32_t)fx_popcount(r->nodes[i].busy));
			if (!fx_run_job(c, &b, r->nodes[i].id, r->nodes[i].busy, 0))
				goto out;
		}
		before[i] = fx_free(c, r->nodes[i].id);
	}
	fx_job_init(&j, 1, r->gpn);
	j.spec.node_count = nc;
	j.spec.require_nvlink = r->nvlink;
	j.spec.min_compute_cap = r->min_cc;
	j.spec.min_tflops_total = r->min_tflops_total;
	fx_job_regions(&j, r->regions);
	if (!fx_add_job(c, &j) || !fx_run_cycle(&fc, c, NOW))
		goto out;
	EXPECT_CHECK(c);

	if (!r->placed) {
		struct sched_explain e;

		EXPECT_INT(fx_count(&fc.acts, 0, 1), 0);
		EXPECT_INT(sched_job_state(c, 1), SCHED_JOB_PENDING);
		for (size_t i = 0; i < nn; i++)
			EXPECT_HEX(fx_free(c, r->nodes[i].id), before[i]);
		if (fx_explain(c, 1, &e)) {
			EXPECT_INT(e.gang_nodes, nc);
			if (nc == 1)
				EXPECT_INT(e.fit_nodes, 0);
			else
				EXPECT_INT(e.best_region_fit, r->best_region_fit);
		}
		goto out;
	}

	/* Placed: exactly the wanted parts, one START per node, indexes 0..n-1. */
	EXPECT_INT(nwant, nc);
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_START, 1), nc);
	{
		bool seen[SCHED_MAX_GANG_NODES] = { false };

		for (size_t i = 0; i < fc.acts.len; i++) {
			const struct sched_action *a = &fc.acts.items[i];

			if (a->kind != SCHED_ACT_START || a->job_id != 1)
				continue;
			if (!has_part(r->want, nwant, a->node_id, a->gpu_mask))
				fx_fail(__FILE__, __LINE__, "unexpected part node %llu mask %#llx",
				        (unsigned long long)a->node_id,
				        (unsigned long long)a->gpu_mask);
			EXPECT_INT(a->gang_size, nc);
			if (a->gang_index >= nc || seen[a->gang_index])
				fx_fail(__FILE__, __LINE__, "bad or repeated gang_index %u",
				        a->gang_index);
			else
				seen[a->gang_index] = true;
			EXPECT_INT(a->deadline_us, NOW + j.spec.max_duration_us);
		}
	}
	EXPECT_INT(sched_job_state(c, 1), SCHED_JOB_RUNNING);
	ngot = sched_job_placement(c, 1, got, SCHED_MAX_GANG_NODES);
	EXPECT_INT(ngot, nc);
	for (int i = 0; i < ngot && i < SCHED_MAX_GANG_NODES; i++)
		if (!has_part(r->want, nwant, got[i].node_id, got[i].gpu_mask))
			fx_fail(__FILE__, __LINE__, "placement part %d: node %llu mask %#llx", i,
			        (unsigned long long)got[i].node_id,
			        (unsigned long long)got[i].gpu_mask);
	for (size_t i = 0; i < nwant; i++) {
		for (size_t k = 0; k < nn; k++)
			if (r->nodes[k].id == r->want[i].node_id)
				EXPECT_HEX(fx_free(c, r->want[i].node_id),
				           before[k] & ~r->want[i].gpu_mask);
	}
	/* A short copy reports the full count. */
	if (nc > 1)
		EXPECT_INT(sched_job_placement(c, 1, got, 1), nc);

	/* Ending the lease frees every part. */
	EXPECT_INT(sched_lease_end(c, 1, NOW + FX_S(10), true), 0);
	EXPECT_INT(sched_job_state(c, 1), SCHED_JOB_PENDING);
	EXPECT_INT(sched_job_placement(c, 1, got, SCHED_MAX_GANG_NODES), -EINVAL);
	for (size_t i = 0; i < nn; i++)
		EXPECT_HEX(fx_free(c, r->nodes[i].id), before[i]);
	EXPECT_CHECK(c);
out:
	fx_cycle_done(&fc);
	sched_cluster_free(c);
}

int main(void)
{
	for (size_t i = 0; i < FX_ARRAY_LEN(rows); i++) {
		fx_row = rows[i].name;
		run_row(&rows[i]);
	}
	return fx_finish("test_gang");
}
