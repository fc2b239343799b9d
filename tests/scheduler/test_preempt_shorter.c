/* test_preempt_shorter.c — preemption for much shorter work
 * (preempt_shorter_factor, preempt_min_run_us): which running jobs a
 * blocked job may evict (preemptible, same or lower class, remaining lease
 * at least factor x its max duration, run at least the minimum, ranked
 * below it in the queue or able to restart elsewhere at once), the victim
 * set that evicts the fewest GPUs, and
 * no eviction back once the evicted job is queued again. Rows rank by
 * class first, then w_short_jobs (shorter time limit first). */
#include "fixture.h"

#define NOW       FX_S(10000)
#define GRACE     FX_S(30)
#define MAX_NODES 3
#define MAX_RUN   6

struct pnode {
	uint64_t id; /* 0 ends the list */
	const char *gpus;
};

struct vjob {
	uint64_t id; /* 0 ends the list */
	uint64_t node;
	uint64_t mask;
	uint32_t cls;
	bool preemptible;
	int64_t start_s; /* lease start */
	int64_t max_s;   /* max duration: remaining at NOW = start + max - NOW */
};

struct row {
	const char *name;
	double factor;
	int64_t min_run_s;
	bool class_rule; /* policy.preemption too */
	bool fifo;       /* no w_short_jobs: equal classes rank by submit time */
	struct pnode nodes[MAX_NODES];
	struct vjob running[MAX_RUN];
	uint32_t cls, gpus; /* the blocked job (id 1) */
	int64_t max_s;
	/* expected: want_count victims, exactly the ids in want[] */
	uint32_t want_count;
	uint64_t want[MAX_RUN];
	uint64_t target;      /* node the job starts on after the victims end */
	uint64_t target_mask; /* 0 = not checked */
};

/* A preemptible class-2 job on node 1 with 90,000 s of lease left at NOW. */
#define LONG4(id)                              \
	{                                      \
		id, 1, 0xf, 2, true, 0, 100000 \
	}

static const struct row rows[] = {
	{ .name = "a shorter job evicts a long-remaining job of its own class",
	  .factor = 4,
	  .nodes = { { 1, "4xH100" } },
	  .running = { LONG4(11) },
	  .cls = 2,
	  .gpus = 4,
	  .max_s = 3600,
	  .want_count = 1,
	  .want = { 11 },
	  .target = 1,
	  .target_mask = 0xf },
	{ .name = "factor 0: off",
	  .factor = 0,
	  .nodes = { { 1, "4xH100" } },
	  .running = { LONG4(11) },
	  .cls = 2,
	  .gpus = 4,
	  .max_s = 3600 },
	{ .name = "factor not met: 10,000 s left < 4 x 3,600 s",
	  .factor = 4,
	  .nodes = { { 1, "4xH100" } },
	  .running = { { 11, 1, 0xf, 2, true, 0, 20000 } },
	  .cls = 2,
	  .gpus = 4,
	  .max_s = 3600 },
	{ .name = "factor met exactly: 14,400 s left = 4 x 3,600 s",
	  .factor = 4,
	  .nodes = { { 1, "4xH100" } },
	  .running = { { 11, 1, 0xf, 2, true, 0, 24400 } },
	  .cls = 2,
	  .gpus = 4,
	  .max_s = 3600,
	  .want_count = 1,
	  .want = { 11 },
	  .target = 1 },
	{ .name = "never a job that is not preemptible",
	  .factor = 4,
	  .nodes = { { 1, "4xH100" } },
	  .running = { { 11, 1, 0xf, 2, false, 0, 100000 } },
	  .cls = 2,
	  .gpus = 4,
	  .max_s = 3600 },
	{ .name = "ran less than the minimum since its start",
	  .factor = 4,
	  .min_run_s = 10001,
	  .nodes = { { 1, "4xH100" } },
	  .running = { LONG4(11) },
	  .cls = 2,
	  .gpus = 4,
	  .max_s = 3600 },
	{ .name = "ran exactly the minimum",
	  .factor = 4,
	  .min_run_s = 10000,
	  .nodes = { { 1, "4xH100" } },
	  .running = { LONG4(11) },
	  .cls = 2,
	  .gpus = 4,
	  .max_s = 3600,
	  .want_count = 1,
	  .want = { 11 },
	  .target = 1 },
	{ .name = "never a job the queue ranks first and nothing else can take: it would come back",
	  .factor = 4,
	  .fifo = true,
	  .nodes = { { 1, "4xH100" } },
	  .running = { LONG4(11) },
	  .cls = 2,
	  .gpus = 4,
	  .max_s = 3600 },
	{ .name = "a job the queue ranks first goes when free GPUs elsewhere can take it now",
	  .factor = 4,
	  .fifo = true,
	  .nodes = { { 1, "4xH100" }, { 2, "4xH100" } },
	  .running = { { 11, 1, 0x3, 2, true, 0, 100000 },
	               { 12, 1, 0xc, 0, true, 0, 100000 },
	               { 21, 2, 0x3, 2, false, 0, 100000 } },
	  .cls = 2,
	  .gpus = 4,
	  .max_s = 3600,
	  .want_count = 2,
	  .want = { 11, 12 },
	  .target = 1,
	  .target_mask = 0xf },
	{ .name = "never a higher class for a lower one",
	  .factor = 4,
	  .nodes = { { 1, "4xH100" } },
	  .running = { { 11, 1, 0xf, 3, true, 0, 100000 } },
	  .cls = 2,
	  .gpus = 4,
	  .max_s = 3600 },
	{ .name = "a lower class, without the class rule, when the factor is met",
	  .factor = 4,
	  .nodes = { { 1, "4xH100" } },
	  .running = { { 11, 1, 0xf, 0, true, 0, 100000 } },
	  .cls = 2,
	  .gpus = 4,
	  .max_s = 3600,
	  .want_count = 1,
	  .want = { 11 },
	  .target = 1 },
	{ .name = "class 0 evicts class 0",
	  .factor = 4,
	  .nodes = { { 1, "4xH100" } },
	  .running = { { 11, 1, 0xf, 0, true, 0, 100000 } },
	  .cls = 0,
	  .gpus = 4,
	  .max_s = 3600,
	  .want_count = 1,
	  .want = { 11 },
	  .target = 1 },
	{ .name = "the class rule still needs no factor; the shorter rule adds its own class",
	  .factor = 4,
	  .class_rule = true,
	  .nodes = { { 1, "4xH100" } },
	  .running = { { 11, 1, 0x3, 0, true, 9000, 2000 }, { 12, 1, 0xc, 2, true, 0, 100000 } },
	  .cls = 2,
	  .gpus = 4,
	  .max_s = 3600,
	  .want_count = 2,
	  .want = { 11, 12 },
	  .target = 1,
	  .target_mask = 0xf },
	{ .name = "fewest GPUs evicted: a 1-GPU victim, not a 4-GPU one",
	  .factor = 4,
	  .nodes = { { 1, "4xH100" }, { 2, "4xH100" } },
	  .running = { LONG4(11),
	               { 21, 2, 0x1, 2, true, 0, 100000 },
	               { 22, 2, 0xe, 2, false, 0, 100000 } },
	  .cls = 2,
	  .gpus = 1,
	  .max_s = 3600,
	  .want_count = 1,
	  .want = { 21 },
	  .target = 2,
	  .target_mask = 0x1 },
	{ .name = "equal GPUs: the longest remaining lease goes",
	  .factor = 4,
	  .nodes = { { 1, "4xH100" } },
	  .running = { { 11, 1, 0x3, 2, true, 0, 60000 }, { 12, 1, 0xc, 2, true, 0, 100000 } },
	  .cls = 2,
	  .gpus = 2,
	  .max_s = 3600,
	  .want_count = 1,
	  .want = { 12 },
	  .target = 1,
	  .target_mask = 0xc },
	{ .name = "one 2-GPU victim rather than two 1-GPU ones",
	  .factor = 4,
	  .nodes = { { 1, "8xH100" } },
	  .running = { { 11, 1, 0x01, 2, true, 0, 100000 },
	               { 12, 1, 0x02, 2, true, 0, 100000 },
	               { 13, 1, 0x0c, 2, true, 0, 100000 },
	               { 14, 1, 0xf0, 2, true, 0, 100000 } },
	  .cls = 2,
	  .gpus = 2,
	  .max_s = 3600,
	  .want_count = 1,
	  .want = { 13 },
	  .target = 1,
	  .target_mask = 0x0c },
	{ .name = "no victim it does not need: 1-GPU ones dropped when the 4-GPU one is needed",
	  .factor = 4,
	  .nodes = { { 1, "8xH100" } },
	  .running = { { 11, 1, 0x01, 2, true, 0, 100000 },
	               { 12, 1, 0x02, 2, true, 0, 100000 },
	               { 13, 1, 0x04, 2, true, 0, 100000 },
	               { 14, 1, 0xf0, 2, true, 0, 100000 },
	               { 15, 1, 0x08, 2, false, 0, 100000 } },
	  .cls = 2,
	  .gpus = 4,
	  .max_s = 3600,
	  .want_count = 1,
	  .want = { 14 },
	  .target = 1,
	  .target_mask = 0xf0 },
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
	uint64_t victims[MAX_RUN] = { 0 };
	size_t nn = 0, nv = 0;
	const struct sched_action *a;

	p.preemption = r->class_rule;
	p.preemption_grace_us = GRACE;
	p.preempt_shorter_factor = r->factor;
	p.preempt_min_run_us = FX_S(r->min_run_s);
	p.w_prio_class = 1e6;
	p.w_short_jobs = r->fifo ? 0 : 1000;
	p.w_fit = 1; /* PACK: a moved victim takes the fullest node */
	REQUIRE_OK(sched_set_policy(c, &p, NULL));
	for (; nn < MAX_NODES && r->nodes[nn].id; nn++) {
		struct fx_node n;

		fx_node_init(&n, r->nodes[nn].id, "a", r->nodes[nn].gpus);
		if (!fx_add_node(c, &n))
			goto out;
	}
	for (size_t i = 0; i < MAX_RUN && r->running[i].id; i++) {
		const struct vjob *v = &r->running[i];

		fx_job_init(&j, v->id, (uint32_t)fx_popcount(v->mask));
		j.spec.priority_class = v->cls;
		j.spec.preemptible = v->preemptible;
		j.spec.max_duration_us = FX_S(v->max_s);
		if (!fx_run_job(c, &j, v->node, v->mask, FX_S(v->start_s)))
			goto out;
	}
	fx_job_init(&j, 1, r->gpus);
	j.spec.priority_class = r->cls;
	j.spec.max_duration_us = FX_S(r->max_s);
	j.spec.submit_us = NOW - FX_S(1);
	if (!fx_add_job(c, &j) || !fx_run_cycle(&fc, c, NOW))
		goto out;
	EXPECT_CHECK(c);

	/* Cycle 1: PREEMPT actions only; victims keep their GPUs. */
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_START, 1), 0);
	for (size_t i = 0; i < fc.acts.len; i++) {
		a = &fc.acts.items[i];
		if (a->kind != SCHED_ACT_PREEMPT) {
			fx_fail(__FILE__, __LINE__, "unexpected action kind %d for job %llu",
			        a->kind, (unsigned long long)a->job_id);
			continue;
		}
		if (!in_list(r->want, MAX_RUN, a->job_id) || in_list(victims, nv, a->job_id)) {
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
	for (size_t i = 0; i < MAX_RUN && r->running[i].id; i++)
		if (!in_list(victims, nv, r->running[i].id))
			EXPECT_INT(sched_job_state(c, r->running[i].id), SCHED_JOB_RUNNING);
	if (nv == 0 || nv != r->want_count)
		goto out;

	/* Cycle 2, victims still stopping: nothing new. */
	if (!fx_run_cycle(&fc, c, NOW + FX_S(10)))
		goto out;
	EXPECT_INT(fc.acts.len, 0);

	/* The victims stop and are queued again; the job starts on the freed
	 * GPUs, and no victim, now pending with its long max duration, evicts
	 * it back (its 3,600 s are far below factor x theirs). */
	for (size_t i = 0; i < nv; i++)
		EXPECT_INT(sched_lease_end(c, victims[i], NOW + FX_S(20), true), 0);
	if (!fx_run_cycle(&fc, c, NOW + FX_S(20)))
		goto out;
	EXPECT_CHECK(c);
	a = fx_find(&fc.acts, SCHED_ACT_START, 1);
	if (!a) {
		fx_fail(__FILE__, __LINE__, "preempting job not started");
		goto out;
	}
	if (r->target)
		EXPECT_INT(a->node_id, r->target);
	if (r->target_mask)
		EXPECT_HEX(a->gpu_mask, r->target_mask);
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_PREEMPT, 0), 0);
	for (int64_t t = 30; t <= 3000; t += 990)
		if (fx_run_cycle(&fc, c, NOW + FX_S(t)))
			EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_PREEMPT, 0), 0);
	EXPECT_INT(sched_job_state(c, 1), SCHED_JOB_RUNNING);
out:
	fx_cycle_done(&fc);
	sched_cluster_free(c);
}

/* A gang victim stops on every node; the GPUs it frees on a node the job
 * does not use are free for others once it ends. */
static void test_gang_victim(void)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct sched_policy p = *sched_get_policy(c);
	struct fx_cycle fc = { 0 };
	struct fx_node n;
	struct fx_job j;
	struct sched_placement pl[2] = { { 1, 0xf }, { 2, 0xf } };

	fx_row = "gang victim: one PREEMPT for all its parts";
	p.preempt_shorter_factor = 4;
	p.preemption_grace_us = GRACE;
	p.w_prio_class = 1e6;
	p.w_short_jobs = 1000;
	REQUIRE_OK(sched_set_policy(c, &p, NULL));
	for (uint64_t id = 1; id <= 2; id++) {
		fx_node_init(&n, id, "a", "4xH100");
		fx_add_node(c, &n);
	}
	fx_job_init(&j, 11, 4);
	j.spec.node_count = 2;
	j.spec.preemptible = true;
	j.spec.max_duration_us = FX_S(100000);
	fx_add_job(c, &j);
	REQUIRE_OK(sched_lease_start(c, 11, pl, 2, 0, NULL));
	fx_job_init(&j, 1, 4);
	j.spec.max_duration_us = FX_S(3600);
	fx_add_job(c, &j);
	fx_job_init(&j, 2, 4);
	j.spec.max_duration_us = FX_S(3600);
	j.spec.submit_us = FX_S(1);
	fx_add_job(c, &j);
	if (!fx_run_cycle(&fc, c, NOW))
		goto out;
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_PREEMPT, 11), 1);
	EXPECT_INT(fc.stats.preempted, 1);
	EXPECT_CHECK(c);
	EXPECT_INT(sched_lease_end(c, 11, NOW + FX_S(30), true), 0);
	if (!fx_run_cycle(&fc, c, NOW + FX_S(30)))
		goto out;
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_START, 1), 1);
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_START, 2), 1);
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_PREEMPT, 0), 0);
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
	test_gang_victim();
	return fx_finish("test_preempt_shorter");
}
