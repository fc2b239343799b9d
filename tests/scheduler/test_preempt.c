/* test_preempt.c — preemption: which running jobs may be evicted (only
 * preemptible, strictly lower class, on nodes passing the job's filters),
 * the smallest victim set, the PREEMPT actions, and the start of the
 * preempting job once its victims' leases end. */
#include "fixture.h"

#define NOW       FX_S(100)
#define GRACE     FX_S(30)
#define MAX_NODES 4
#define MAX_RUN   6

struct pnode {
	uint64_t id; /* 0 ends the list; added in list order */
	const char *region;
	const char *gpus;
};

struct vjob {
	uint64_t id;          /* 0 ends the list */
	uint64_t node, node2; /* node2: a second part, same mask (0 = none) */
	uint64_t mask;
	uint32_t cls;
	bool preemptible;
};

struct row {
	const char *name;
	struct pnode nodes[MAX_NODES];
	struct vjob running[MAX_RUN];
	uint32_t cls, gpn, nc; /* the job (id 1); nc 0 = 1 */
	const char *regions;
	bool no_preemption;
	/* expected: want_count victims, all from may[] */
	uint32_t want_count;
	uint64_t may[MAX_RUN];
	uint64_t target;      /* node the job starts on after the victims end */
	uint64_t target_mask; /* 0 = not checked */
};

#define N4(id)                    \
	{                         \
		id, "a", "4xH100" \
	}

static const struct row rows[] = {
	{ .name = "victim: lower-class preemptible job",
	  .nodes = { N4(1) },
	  .running = { { 11, 1, 0, 0xf, 0, true } },
	  .cls = 2,
	  .gpn = 4,
	  .want_count = 1,
	  .may = { 11 },
	  .target = 1,
	  .target_mask = 0xf },
	{ .name = "victim: class just below",
	  .nodes = { N4(1) },
	  .running = { { 11, 1, 0, 0xf, 3, true } },
	  .cls = 4,
	  .gpn = 4,
	  .want_count = 1,
	  .may = { 11 },
	  .target = 1,
	  .target_mask = 0xf },
	{ .name = "no victim: not preemptible",
	  .nodes = { N4(1) },
	  .running = { { 11, 1, 0, 0xf, 0, false } },
	  .cls = 2,
	  .gpn = 4,
	  .want_count = 0 },
	{ .name = "no victim: same class",
	  .nodes = { N4(1) },
	  .running = { { 11, 1, 0, 0xf, 2, true } },
	  .cls = 2,
	  .gpn = 4,
	  .want_count = 0 },
	{ .name = "no victim: higher class",
	  .nodes = { N4(1) },
	  .running = { { 11, 1, 0, 0xf, 3, true } },
	  .cls = 2,
	  .gpn = 4,
	  .want_count = 0 },
	{ .name = "no victim: class-0 job cannot preempt",
	  .nodes = { N4(1) },
	  .running = { { 11, 1, 0, 0xf, 0, true } },
	  .cls = 0,
	  .gpn = 4,
	  .want_count = 0 },
	{ .name = "no victim: preemption off",
	  .no_preemption = true,
	  .nodes = { N4(1) },
	  .running = { { 11, 1, 0, 0xf, 0, true } },
	  .cls = 2,
	  .gpn = 4,
	  .want_count = 0 },
	{ .name = "fewest victims beats fewest GPUs",
	  .nodes = { N4(1), N4(2) },
	  .running = { { 11, 1, 0, 0x1, 0, true },
	               { 12, 1, 0, 0x2, 0, true },
	               { 13, 1, 0, 0x4, 0, true },
	               { 14, 1, 0, 0x8, 0, true },
	               { 21, 2, 0, 0xf, 0, true } },
	  .cls = 2,
	  .gpn = 4,
	  .want_count = 1,
	  .may = { 21 },
	  .target = 2,
	  .target_mask = 0xf },
	{ .name = "equal victims: fewest victim GPUs",
	  .nodes = { { 1, "a", "8xH100" }, N4(2) },
	  .running = { { 11, 1, 0, 0x3f, 0, true }, { 21, 2, 0, 0xf, 0, true } },
	  .cls = 2,
	  .gpn = 4,
	  .want_count = 1,
	  .may = { 21 },
	  .target = 2,
	  .target_mask = 0xf },
	{ .name = "full tie: lowest node id",
	  .nodes = { N4(2), N4(1) },
	  .running = { { 21, 2, 0, 0xf, 0, true }, { 11, 1, 0, 0xf, 0, true } },
	  .cls = 2,
	  .gpn = 4,
	  .want_count = 1,
	  .may = { 11 },
	  .target = 1,
	  .target_mask = 0xf },
	{ .name = "free GPUs count towards the need",
	  .nodes = { N4(1), N4(2) },
	  .running = { { 11, 1, 0, 0x3, 0, true },
	               { 21, 2, 0, 0x3, 0, true },
	               { 22, 2, 0, 0xc, 0, true } },
	  .cls = 2,
	  .gpn = 4,
	  .want_count = 1,
	  .may = { 11 },
	  .target = 1,
	  .target_mask = 0xf },
	{ .name = "a non-preemptible job rules its node out",
	  .nodes = { N4(1), N4(2) },
	  .running = { { 11, 1, 0, 0x3, 0, false },
	               { 12, 1, 0, 0xc, 0, true },
	               { 21, 2, 0, 0x3, 0, true },
	               { 22, 2, 0, 0xc, 0, true } },
	  .cls = 2,
	  .gpn = 4,
	  .want_count = 2,
	  .may = { 21, 22 },
	  .target = 2,
	  .target_mask = 0xf },
	{ .name = "a same-class job rules its node out",
	  .nodes = { N4(1), N4(2) },
	  .running = { { 11, 1, 0, 0x3, 2, true },
	               { 12, 1, 0, 0xc, 0, true },
	               { 21, 2, 0, 0x3, 0, true },
	               { 22, 2, 0, 0xc, 1, true } },
	  .cls = 2,
	  .gpn = 4,
	  .want_count = 2,
	  .may = { 21, 22 },
	  .target = 2,
	  .target_mask = 0xf },
	{ .name = "several victims on one node, no more than needed",
	  .nodes = { N4(1) },
	  .running = { { 11, 1, 0, 0x1, 0, true },
	               { 12, 1, 0, 0x2, 0, true },
	               { 13, 1, 0, 0x4, 0, true },
	               { 14, 1, 0, 0x8, 0, true } },
	  .cls = 2,
	  .gpn = 3,
	  .want_count = 3,
	  .may = { 11, 12, 13, 14 },
	  .target = 1 },
	{ .name = "only nodes passing the job's filters",
	  .nodes = { { 1, "b", "4xH100" }, N4(2) },
	  .running = { { 11, 1, 0, 0x1, 0, true }, { 21, 2, 0, 0xf, 0, true } },
	  .cls = 2,
	  .gpn = 4,
	  .regions = "a",
	  .want_count = 1,
	  .may = { 21 },
	  .target = 2,
	  .target_mask = 0xf },
	{ .name = "node too small even idle is not a candidate",
	  .nodes = { { 1, "a", "2xH100" }, N4(2) },
	  .running = { { 11, 1, 0, 0x3, 0, true },
	               { 21, 2, 0, 0x3, 0, true },
	               { 22, 2, 0, 0xc, 0, true } },
	  .cls = 2,
	  .gpn = 4,
	  .want_count = 2,
	  .may = { 21, 22 },
	  .target = 2,
	  .target_mask = 0xf },
	{ .name = "gang: fewest victims over the node set",
	  .nodes = { N4(1), N4(2), N4(3) },
	  .running = { { 31, 3, 0, 0x3, 0, true },
	               { 32, 3, 0, 0xc, 0, true },
	               { 11, 1, 0, 0xf, 0, true },
	               { 21, 2, 0, 0xf, 0, true } },
	  .cls = 2,
	  .gpn = 4,
	  .nc = 2,
	  .want_count = 2,
	  .may = { 11, 21 },
	  .target = 1,
	  .target_mask = 0xf },
	{ .name = "gang victim: one PREEMPT for all its parts",
	  .nodes = { N4(1), N4(2) },
	  .running = { { 11, 1, 2, 0xf, 0, true } },
	  .cls = 2,
	  .gpn = 4,
	  .want_count = 1,
	  .may = { 11 },
	  .target = 1,
	  .target_mask = 0xf },
};

static bool in_list(const uint64_t *l, size_t n, uint64_t id)
{
	for (size_t i = 0; i < n && l[i]; i++)
		if (l[i] == id)
			return true;
	return false;
}

static void run_row(const struct row *r)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct sched_policy p = *sched_get_policy(c);
	struct fx_cycle fc = { 0 };
	struct fx_job j;
	uint64_t before[MAX_NODES] = { 0 };
	uint64_t victims[MAX_RUN] = { 0 };
	size_t nn = 0, nv = 0;
	const struct sched_action *a;

	p.preemption = !r->no_preemption;
	p.preemption_grace_us = GRACE;
	REQUIRE_OK(sched_set_policy(c, &p, NULL));
	for (; nn < MAX_NODES && r->nodes[nn].id; nn++) {
		struct fx_node n;

		fx_node_init(&n, r->nodes[nn].id, r->nodes[nn].region, r->nodes[nn].gpus);
		if (!fx_add_node(c, &n))
			goto out;
	}
	for (size_t i = 0; i < MAX_RUN && r->running[i].id; i++) {
		const struct vjob *v = &r->running[i];
		struct sched_placement pl[2] = { { v->node, v->mask }, { v->node2, v->mask } };
		struct sched_error err = { 0 };

		fx_job_init(&j, v->id, (uint32_t)fx_popcount(v->mask));
		j.spec.priority_class = v->cls;
		j.spec.preemptible = v->preemptible;
		j.spec.node_count = v->node2 ? 2 : 1;
		j.spec.max_duration_us = FX_S(100000);
		if (!fx_add_job(c, &j))
			goto out;
		if (sched_lease_start(c, v->id, pl, v->node2 ? 2 : 1, 0, &err) != 0) {
			fx_fail(__FILE__, __LINE__, "lease_start %llu: %s",
			        (unsigned long long)v->id, err.field);
			goto out;
		}
	}
	for (size_t i = 0; i < nn; i++)
		before[i] = fx_free(c, r->nodes[i].id);
	fx_job_init(&j, 1, r->gpn);
	j.spec.priority_class = r->cls;
	j.spec.node_count = r->nc ? r->nc : 1;
	fx_job_regions(&j, r->regions);
	if (!fx_add_job(c, &j) || !fx_run_cycle(&fc, c, NOW))
		goto out;
	EXPECT_CHECK(c);

	/* Cycle 1: PREEMPT actions only; victims keep their GPUs. */
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_START, 1), 0);
	EXPECT_INT(sched_job_state(c, 1), SCHED_JOB_PENDING);
	for (size_t i = 0; i < fc.acts.len; i++) {
		a = &fc.acts.items[i];
		if (a->kind != SCHED_ACT_PREEMPT) {
			fx_fail(__FILE__, __LINE__, "unexpected action kind %d for job %llu",
			        a->kind, (unsigned long long)a->job_id);
			continue;
		}
		if (!in_list(r->may, MAX_RUN, a->job_id) || in_list(victims, nv, a->job_id)) {
			fx_fail(__FILE__, __LINE__, "unexpected or repeated victim %llu",
			        (unsigned long long)a->job_id);
			continue;
		}
		victims[nv++] = a->job_id;
		EXPECT_INT(a->for_job_id, 1);
		EXPECT_INT(a->deadline_us, NOW + GRACE);
		EXPECT_INT(sched_job_state(c, a->job_id), SCHED_JOB_PREEMPTING);
	}
	EXPECT_INT(nv, r->want_count);
	EXPECT_INT(fc.stats.preempted, r->want_count);
	for (size_t i = 0; i < nn; i++)
		EXPECT_HEX(fx_free(c, r->nodes[i].id), before[i]);
	for (size_t i = 0; i < MAX_RUN && r->running[i].id; i++)
		if (!in_list(victims, nv, r->running[i].id))
			EXPECT_INT(sched_job_state(c, r->running[i].id), SCHED_JOB_RUNNING);
	if (nv == 0 || nv != r->want_count)
		goto out;

	/* Cycle 2, victims still stopping: nothing new. */
	if (!fx_run_cycle(&fc, c, NOW + FX_S(10)))
		goto out;
	EXPECT_INT(fc.acts.len, 0);
	EXPECT_INT(fc.stats.preempted, 0);
	for (size_t i = 0; i < nv; i++)
		EXPECT_INT(sched_job_state(c, victims[i]), SCHED_JOB_PREEMPTING);

	/* The victims stop; the job starts on the freed GPUs. */
	for (size_t i = 0; i < nv; i++)
		EXPECT_INT(sched_lease_end(c, victims[i], NOW + FX_S(20), false), 0);
	if (!fx_run_cycle(&fc, c, NOW + FX_S(20)))
		goto out;
	EXPECT_CHECK(c);
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_START, 1), r->nc ? r->nc : 1);
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_PREEMPT, 0) +
	               fx_count(&fc.acts, SCHED_ACT_UNSCHEDULABLE, 0),
	           0);
	a = fx_find(&fc.acts, SCHED_ACT_START, 1);
	if (a && r->target) {
		bool found = false;

		for (size_t i = 0; i < fc.acts.len; i++) {
			const struct sched_action *s = &fc.acts.items[i];

			if (s->kind == SCHED_ACT_START && s->job_id == 1 &&
			    s->node_id == r->target) {
				found = true;
				if (r->target_mask)
					EXPECT_HEX(s->gpu_mask, r->target_mask);
			}
		}
		if (!found)
			fx_fail(__FILE__, __LINE__, "job did not start on node %llu",
			        (unsigned long long)r->target);
	}
	EXPECT_INT(sched_job_state(c, 1), SCHED_JOB_RUNNING);
out:
	fx_cycle_done(&fc);
	sched_cluster_free(c);
}

/* While some victims still stop, the GPUs already freed stay reserved for
 * the preempting job: a lower job may not take them. */
static void test_target_reserved(void)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct sched_policy p = *sched_get_policy(c);
	struct fx_cycle fc = { 0 };
	struct fx_node n;
	struct fx_job j;
	const struct sched_action *a;

	fx_row = "target GPUs stay reserved while victims stop";
	p.preemption = true;
	p.preemption_grace_us = GRACE;
	REQUIRE_OK(sched_set_policy(c, &p, NULL));
	fx_node_init(&n, 1, "a", "4xH100");
	fx_add_node(c, &n);
	for (uint64_t id = 11; id <= 12; id++) {
		fx_job_init(&j, id, 2);
		j.spec.priority_class = 0;
		j.spec.preemptible = true;
		fx_run_job(c, &j, 1, id == 11 ? 0x3 : 0xc, 0);
	}
	fx_job_init(&j, 1, 4);
	j.spec.priority_class = 3;
	fx_add_job(c, &j);
	if (!fx_run_cycle(&fc, c, NOW))
		goto out;
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_PREEMPT, 11), 1);
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_PREEMPT, 12), 1);

	/* A class-0 job (cannot preempt class 0) arrives; one victim stops. */
	fx_job_init(&j, 2, 1);
	j.spec.priority_class = 0;
	j.spec.submit_us = NOW;
	fx_add_job(c, &j);
	EXPECT_INT(sched_lease_end(c, 11, NOW + FX_S(5), true), 0);
	if (!fx_run_cycle(&fc, c, NOW + FX_S(5)))
		goto out;
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_START, 2), 0);
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_START, 11), 0);
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_START, 1), 0);
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_PREEMPT, 0), 0);
	EXPECT_HEX(fx_free(c, 1), 0x3);

	/* The second victim stops: the job gets the whole node. */
	EXPECT_INT(sched_lease_end(c, 12, NOW + FX_S(8), true), 0);
	if (!fx_run_cycle(&fc, c, NOW + FX_S(8)))
		goto out;
	a = fx_find(&fc.acts, SCHED_ACT_START, 1);
	if (a) {
		EXPECT_INT(a->node_id, 1);
		EXPECT_HEX(a->gpu_mask, 0xf);
	} else {
		fx_fail(__FILE__, __LINE__, "preempting job not started");
	}
	EXPECT_INT(sched_job_state(c, 11), SCHED_JOB_PENDING);
	EXPECT_INT(sched_job_state(c, 12), SCHED_JOB_PENDING);
	EXPECT_INT(sched_job_state(c, 2), SCHED_JOB_PENDING);
	EXPECT_CHECK(c);
out:
	fx_cycle_done(&fc);
	sched_cluster_free(c);
}

/* A job that fits without preemption never preempts. */
static void test_fits_without(void)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct sched_policy p = *sched_get_policy(c);
	struct fx_cycle fc = { 0 };
	struct fx_node n;
	struct fx_job j;

	fx_row = "a job that fits does not preempt";
	p.preemption = true;
	REQUIRE_OK(sched_set_policy(c, &p, NULL));
	fx_node_init(&n, 1, "a", "4xH100");
	fx_add_node(c, &n);
	fx_node_init(&n, 2, "a", "4xH100");
	fx_add_node(c, &n);
	fx_job_init(&j, 11, 4);
	j.spec.priority_class = 0;
	j.spec.preemptible = true;
	fx_run_job(c, &j, 1, 0xf, 0);
	fx_job_init(&j, 1, 4);
	j.spec.priority_class = 4;
	fx_add_job(c, &j);
	if (fx_run_cycle(&fc, c, NOW)) {
		const struct sched_action *a = fx_find(&fc.acts, SCHED_ACT_START, 1);

		EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_PREEMPT, 0), 0);
		EXPECT(a && a->node_id == 2);
	}
	fx_cycle_done(&fc);
	sched_cluster_free(c);
}

int main(void)
{
	for (size_t i = 0; i < FX_ARRAY_LEN(rows); i++) {
		fx_row = rows[i].name;
		run_row(&rows[i]);
	}
	test_target_reserved();
	test_fits_without();
	return fx_finish("test_preempt");
}
