/* test_backfill.c — reservations for the top blocked jobs and backfill that
 * cannot delay them: the reserved start time, which jobs may use reserved
 * GPUs, greedy behaviour without backfill, reservation count and depth. */
#include "fixture.h"

#define NOW      FX_S(100)
#define MAX_JOBS 5
#define WHY(r)   ((r) + 1) /* 0 = no check */

/* The fleet, region "a": node 1 (4 GPUs) runs job 101 on GPUs 0-1 until
 * 1000 s; node 2 (4 GPUs) runs job 102 on all GPUs until 5000 s. Options
 * add node 3 (one spare GPU, "a") and node 4 (4 GPUs, "b", busy until
 * 500 s). Now is 100 s. */
struct bjob {
	uint64_t id;           /* 0 ends the list; added in order, all submitted at 0 */
	uint32_t cls, gpn, nc; /* nc 0 = 1 */
	int64_t dur_s;
	const char *regions;
	/* expected after the cycle */
	uint64_t node;      /* started there (first part), 0 = pending */
	uint64_t mask;      /* GPUs on that node */
	int64_t reserved_s; /* reserved with this start, 0 = not reserved */
	int why;            /* WHY(reason): explain counts at least one node there */
};

struct row {
	const char *name;
	bool spare, region_b;
	bool no_backfill;
	uint32_t reservations; /* 0 = 1 */
	bool zero_reservations;
	uint32_t depth;
	struct bjob jobs[MAX_JOBS];
	uint32_t want_reserved; /* cycle stats */
};

#define TOP                                                                 \
	{                                                                   \
		1, 4, 4, 1, 10000, NULL, 0, 0, 1000, WHY(SCHED_R_FREE_GPUS) \
	}

static const struct row rows[] = {
	{ .name = "reservation: top blocked job reserves at the earliest end",
	  .jobs = { TOP },
	  .want_reserved = 1 },
	{ .name = "backfill: short job uses a reserved GPU",
	  .jobs = { TOP, { 2, 0, 1, 1, 500, NULL, 1, 0x4, 0, 0 } },
	  .want_reserved = 1 },
	{ .name = "backfill: job ending exactly at the reserved start",
	  .jobs = { TOP, { 2, 0, 1, 1, 900, NULL, 1, 0x4, 0, 0 } },
	  .want_reserved = 1 },
	{ .name = "backfill: job ending after the reserved start is held",
	  .jobs = { TOP, { 2, 0, 1, 1, 901, NULL, 0, 0, 0, WHY(SCHED_R_RESERVED) } },
	  .want_reserved = 1 },
	{ .name = "backfill: long job held back",
	  .jobs = { TOP, { 2, 0, 1, 1, 5000, NULL, 0, 0, 0, WHY(SCHED_R_RESERVED) } },
	  .want_reserved = 1 },
	{ .name = "backfill: long job takes an unreserved GPU",
	  .spare = true,
	  .jobs = { TOP, { 2, 0, 1, 1, 5000, NULL, 3, 0x1, 0, 0 } },
	  .want_reserved = 1 },
	{ .name = "backfill: two short jobs fill both reserved GPUs",
	  .jobs = { TOP,
	            { 2, 1, 1, 1, 500, NULL, 1, 0x4, 0, 0 },
	            { 3, 0, 1, 1, 800, NULL, 1, 0x8, 0, 0 } },
	  .want_reserved = 1 },
	{ .name = "backfill: short job not skipped behind a long one of its shape",
	  .jobs = { TOP,
	            { 2, 0, 1, 1, 5000, NULL, 0, 0, 0, WHY(SCHED_R_RESERVED) },
	            { 3, 0, 1, 1, 500, NULL, 1, 0x4, 0, 0 } },
	  .want_reserved = 1 },
	{ .name = "backfill off: greedy, no reservation",
	  .no_backfill = true,
	  .jobs = { { 1, 4, 4, 1, 10000, NULL, 0, 0, 0, WHY(SCHED_R_FREE_GPUS) },
	            { 2, 0, 1, 1, 5000, NULL, 1, 0x4, 0, 0 } },
	  .want_reserved = 0 },
	{ .name = "reservations 0: greedy, no reservation",
	  .zero_reservations = true,
	  .jobs = { { 1, 4, 4, 1, 10000, NULL, 0, 0, 0, WHY(SCHED_R_FREE_GPUS) },
	            { 2, 0, 1, 1, 5000, NULL, 1, 0x4, 0, 0 } },
	  .want_reserved = 0 },
	{ .name = "reservations 1: second blocked job gets none",
	  .jobs = { TOP, { 2, 3, 4, 1, 10000, NULL, 0, 0, 0, WHY(SCHED_R_FREE_GPUS) } },
	  .want_reserved = 1 },
	{ .name = "reservations 2: second blocked job reserves the next node",
	  .reservations = 2,
	  .jobs = { TOP,
	            { 2, 3, 4, 1, 10000, NULL, 0, 0, 5000, 0 },
	            { 3, 0, 1, 1, 5000, NULL, 0, 0, 0, WHY(SCHED_R_RESERVED) } },
	  .want_reserved = 2 },
	{ .name = "reserved start counts jobs placed earlier in the cycle",
	  .jobs = { { 5, 4, 1, 1, 3600, NULL, 1, 0x4, 0, 0 },
	            { 1, 3, 4, 1, 10000, NULL, 0, 0, 3700, WHY(SCHED_R_FREE_GPUS) } },
	  .want_reserved = 1 },
	{ .name = "reservation only on nodes passing the filters",
	  .region_b = true,
	  .jobs = { { 1, 4, 4, 1, 10000, "a", 0, 0, 1000, WHY(SCHED_R_REGION) } },
	  .want_reserved = 1 },
	{ .name = "reservation on the node that frees first",
	  .region_b = true,
	  .jobs = { { 1, 4, 4, 1, 10000, NULL, 0, 0, 500, WHY(SCHED_R_FREE_GPUS) },
	            { 2, 0, 1, 1, 5000, NULL, 1, 0x4, 0, 0 } },
	  .want_reserved = 1 },
	{ .name = "depth 1: only one job tried after the blocked one",
	  .depth = 1,
	  .jobs = { TOP,
	            { 2, 1, 1, 1, 500, NULL, 1, 0x4, 0, 0 },
	            { 3, 0, 1, 1, 500, NULL, 0, 0, 0, 0 } },
	  .want_reserved = 1 },
	{ .name = "depth 0: every job tried",
	  .depth = 0,
	  .jobs = { TOP,
	            { 2, 1, 1, 1, 500, NULL, 1, 0x4, 0, 0 },
	            { 3, 0, 1, 1, 500, NULL, 1, 0x8, 0, 0 } },
	  .want_reserved = 1 },
	{ .name = "gang: reserved start when enough nodes are free",
	  .jobs = { { 1, 4, 4, 2, 10000, NULL, 0, 0, 5000, WHY(SCHED_R_FREE_GPUS) },
	            { 2, 0, 1, 1, 5000, NULL, 0, 0, 0, WHY(SCHED_R_RESERVED) },
	            { 3, 1, 1, 1, 4000, NULL, 1, 0x4, 0, 0 } },
	  .want_reserved = 1 },
};

static void run_row(const struct row *r)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct sched_policy p = *sched_get_policy(c);
	struct fx_cycle fc = { 0 };
	struct fx_node n;
	struct fx_job j;

	p.backfill = !r->no_backfill;
	p.reservations = r->zero_reservations ? 0 : r->reservations ? r->reservations : 1;
	p.backfill_depth = r->depth;
	REQUIRE_OK(sched_set_policy(c, &p, NULL));

	fx_node_init(&n, 1, "a", "4xH100");
	fx_add_node(c, &n);
	fx_node_init(&n, 2, "a", "4xH100");
	fx_add_node(c, &n);
	if (r->spare) {
		fx_node_init(&n, 3, "a", "1xH100");
		fx_add_node(c, &n);
	}
	if (r->region_b) {
		fx_node_init(&n, 4, "b", "4xH100");
		fx_add_node(c, &n);
	}
	fx_job_init(&j, 101, 2);
	j.spec.max_duration_us = FX_S(1000);
	if (!fx_run_job(c, &j, 1, 0x3, 0))
		goto out;
	fx_job_init(&j, 102, 4);
	j.spec.max_duration_us = FX_S(5000);
	if (!fx_run_job(c, &j, 2, 0xf, 0))
		goto out;
	if (r->region_b) {
		fx_job_init(&j, 104, 4);
		j.spec.max_duration_us = FX_S(500);
		if (!fx_run_job(c, &j, 4, 0xf, 0))
			goto out;
	}
	for (size_t i = 0; i < MAX_JOBS && r->jobs[i].id; i++) {
		const struct bjob *b = &r->jobs[i];

		fx_job_init(&j, b->id, b->gpn);
		j.spec.priority_class = b->cls;
		j.spec.node_count = b->nc ? b->nc : 1;
		j.spec.max_duration_us = FX_S(b->dur_s);
		fx_job_regions(&j, b->regions);
		if (!fx_add_job(c, &j))
			goto out;
	}

	if (!fx_run_cycle(&fc, c, NOW))
		goto out;
	EXPECT_CHECK(c);
	EXPECT_INT(fc.stats.reserved, r->want_reserved);
	for (size_t i = 0; i < MAX_JOBS && r->jobs[i].id; i++) {
		const struct bjob *b = &r->jobs[i];
		const struct sched_action *a = fx_find(&fc.acts, SCHED_ACT_START, b->id);
		struct sched_explain e;

		if (b->node) {
			if (!a) {
				fx_fail(__FILE__, __LINE__, "job %llu not started",
				        (unsigned long long)b->id);
				continue;
			}
			EXPECT_INT(a->node_id, b->node);
			EXPECT_HEX(a->gpu_mask, b->mask);
			continue;
		}
		if (a) {
			fx_fail(__FILE__, __LINE__, "job %llu started on node %llu",
			        (unsigned long long)b->id, (unsigned long long)a->node_id);
			continue;
		}
		if (!fx_explain(c, b->id, &e))
			continue;
		EXPECT_INT(e.state, SCHED_JOB_PENDING);
		if (e.reserved != (b->reserved_s != 0))
			fx_fail(__FILE__, __LINE__, "job %llu: reserved = %d, want %d",
			        (unsigned long long)b->id, e.reserved, b->reserved_s != 0);
		else if (b->reserved_s)
			EXPECT_INT(e.reserved_start_us, FX_S(b->reserved_s));
		if (b->why && e.count[b->why - 1] == 0)
			fx_fail(__FILE__, __LINE__, "job %llu: no node counted under \"%s\"",
			        (unsigned long long)b->id,
			        sched_reason_text((enum sched_reason)(b->why - 1)));
	}
out:
	fx_cycle_done(&fc);
	sched_cluster_free(c);
}

/* Over several cycles: the reservation holds while a long job waits, the
 * short job ends, and the top job starts on the reserved node at T. */
static void test_reservation_over_time(void)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct sched_policy p = *sched_get_policy(c);
	struct fx_cycle fc = { 0 };
	struct fx_node n;
	struct fx_job j;
	struct sched_explain e;
	const struct sched_action *a;

	fx_row = "over time: reservation holds, top job starts at T";
	p.backfill = true;
	REQUIRE_OK(sched_set_policy(c, &p, NULL));
	for (uint64_t id = 1; id <= 2; id++) {
		fx_node_init(&n, id, "a", "4xH100");
		fx_add_node(c, &n);
	}
	fx_job_init(&j, 101, 2);
	j.spec.max_duration_us = FX_S(1000);
	fx_run_job(c, &j, 1, 0x3, 0);
	fx_job_init(&j, 102, 4);
	j.spec.max_duration_us = FX_S(5000);
	fx_run_job(c, &j, 2, 0xf, 0);
	fx_job_init(&j, 1, 4);
	j.spec.priority_class = 4;
	fx_add_job(c, &j);
	fx_job_init(&j, 2, 1);
	j.spec.priority_class = 0;
	j.spec.max_duration_us = FX_S(500);
	fx_add_job(c, &j);

	if (!fx_run_cycle(&fc, c, NOW))
		goto out;
	EXPECT(fx_find(&fc.acts, SCHED_ACT_START, 2) != NULL);

	/* A long job arriving later is still held back by the reservation. */
	fx_job_init(&j, 3, 1);
	j.spec.priority_class = 0;
	j.spec.max_duration_us = FX_S(5000);
	j.spec.submit_us = FX_S(150);
	fx_add_job(c, &j);
	if (!fx_run_cycle(&fc, c, FX_S(200)))
		goto out;
	EXPECT_INT(fc.acts.len, 0);
	if (fx_explain(c, 1, &e)) {
		EXPECT(e.reserved);
		EXPECT_INT(e.reserved_start_us, FX_S(1000));
	}
	if (fx_explain(c, 3, &e)) {
		EXPECT(!e.reserved);
		EXPECT_INT(e.count[SCHED_R_RESERVED], 1);
	}

	/* The short job ends; the long one still may not take its GPU. */
	EXPECT_INT(sched_lease_end(c, 2, FX_S(600), false), 0);
	if (!fx_run_cycle(&fc, c, FX_S(600)))
		goto out;
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_START, 3), 0);

	/* Job 101 ends on time: the top job starts where it reserved. */
	EXPECT_INT(sched_lease_end(c, 101, FX_S(1000), false), 0);
	if (!fx_run_cycle(&fc, c, FX_S(1000)))
		goto out;
	a = fx_find(&fc.acts, SCHED_ACT_START, 1);
	if (a) {
		EXPECT_INT(a->node_id, 1);
		EXPECT_HEX(a->gpu_mask, 0xf);
	} else {
		fx_fail(__FILE__, __LINE__, "top job not started at T");
	}
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_START, 3), 0);
	EXPECT_CHECK(c);
out:
	fx_cycle_done(&fc);
	sched_cluster_free(c);
}

/* A running job past its deadline is assumed to end now, not in the past. */
static void test_overdue_job(void)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct sched_policy p = *sched_get_policy(c);
	struct fx_cycle fc = { 0 };
	struct fx_node n;
	struct fx_job j;
	struct sched_explain e;

	fx_row = "overdue running job: reservation not before now";
	p.backfill = true;
	REQUIRE_OK(sched_set_policy(c, &p, NULL));
	fx_node_init(&n, 1, "a", "4xH100");
	fx_add_node(c, &n);
	fx_job_init(&j, 101, 2);
	j.spec.max_duration_us = FX_S(50);
	fx_run_job(c, &j, 1, 0x3, 0);
	fx_job_init(&j, 1, 4);
	j.spec.priority_class = 4;
	fx_add_job(c, &j);
	if (fx_run_cycle(&fc, c, NOW) && fx_explain(c, 1, &e)) {
		EXPECT(e.reserved);
		EXPECT(e.reserved_start_us >= NOW);
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
	test_reservation_over_time();
	test_overdue_job();
	return fx_finish("test_backfill");
}
