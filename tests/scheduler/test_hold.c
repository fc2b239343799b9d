/* test_hold.c — waiting for a faster GPU (hold_for_faster): a job whose
 * best free GPU is much slower than its fastest type waits while a faster
 * GPU frees soon enough (by its running lease's deadline) and it has not
 * yet waited its share of the run time the slower GPU would add; it is
 * held, not blocked (no reservation), the cycle says until when, jobs
 * held before it count on the GPUs that free, a multi-GPU job waits only
 * for GPUs that free together on one node, and the validation names the
 * field.
 *
 * Fleet: node 1 = one A100, node 2 = one L4. Job 1 runs 4 GPU-hours of
 * work in its limit at speed 1 on the A100 and 0.25 on the L4: the limit
 * read as its run time on the L4, the L4 adds 4 h x 0.25 x (1/0.25 - 1) =
 * 3 h, so with hold_for_faster 0.5 it waits up to 1.5 h after submission. */
#include "fixture.h"

#define NOW  FX_S(100000)
#define HOUR FX_S(3600)
#define A100 "A100-SXM4-80GB"
#define L4   "L4"

struct row {
	const char *name;
	double hold;           /* policy hold_for_faster */
	int64_t busy_end;      /* the A100's running lease ends at NOW + this; 0 = idle A100 */
	int64_t waited;        /* job 1 was submitted this long before NOW */
	float l4_speed;        /* job 1's speed on the L4 (A100: 1) */
	bool profile;          /* job 1 declares a profile */
	bool second;           /* job 2, the same as job 1, submitted at NOW */
	uint64_t want1, want2; /* node each job starts on; 0 = stays pending */
	uint32_t held;
	int64_t hold_until; /* stats.hold_until_us (absolute), 0 = none */
};

static const struct row rows[] = {
	{ "off: the job takes the slow L4 at once", 0, HOUR, 0, 0.25f, true, false, 2, 0, 0, 0 },
	{ "the A100 frees within the wait (1 h < 1.5 h): held, and the cycle says until when", 0.5,
	  HOUR, 0, 0.25f, true, false, 0, 0, 1, NOW + 3 * HOUR / 2 },
	{ "the A100 frees too late (10 h): no faster GPU in time, the L4 now", 0.5, 10 * HOUR, 0,
	  0.25f, true, false, 2, 0, 0, 0 },
	{ "waited past its share (2 h > 1.5 h): the L4 now", 0.5, HOUR, 2 * HOUR, 0.25f, true,
	  false, 2, 0, 0, 0 },
	{ "waited 1 h of its 1.5 h: still held, until 30 min from now", 0.5, HOUR / 4, HOUR, 0.25f,
	  true, false, 0, 0, 1, NOW + HOUR / 2 },
	{ "a twice larger factor waits twice as long (3 h)", 1, HOUR, 2 * HOUR, 0.25f, true, false,
	  0, 0, 1, NOW + HOUR },
	{ "as fast on the L4 as on the A100: nothing to wait for", 0.5, HOUR, 0, 1.0f, true, false,
	  2, 0, 0, 0 },
	{ "no profile: nothing known to wait for", 0.5, HOUR, 0, 0.25f, false, false, 2, 0, 0, 0 },
	{ "the A100 is free: it is taken, nothing held", 0.5, 0, 0, 0.25f, true, false, 1, 0, 0,
	  0 },
	{ "one A100 frees for two waiting jobs: the first counts on it, the second takes the "
	  "L4",
	  0.5, HOUR, FX_S(60), 0.25f, true, true, 0, 2, 1, NOW - FX_S(60) + 3 * HOUR / 2 },
};

static void add_job(struct sched_cluster *c, uint64_t id, const struct row *r, int64_t submit,
                    struct sched_speed *sp)
{
	struct fx_job j;
	fx_job_init(&j, id, 1);
	j.spec.submit_us = submit;
	j.spec.max_duration_us = 4 * HOUR;
	sp[0] = (struct sched_speed){ A100, 0, 1.0f };
	sp[1] = (struct sched_speed){ L4, 0, r->l4_speed };
	j.spec.speeds = r->profile ? sp : NULL;
	j.spec.nspeeds = r->profile ? 2 : 0;
	fx_add_job(c, &j);
}

/* Sets a policy that scores speed and holds for faster GPUs (hold x the
 * run time a slower GPU adds); sched_set_policy's result. */
static int hold_policy(struct sched_cluster *c, double hold)
{
	struct sched_policy p;
	fx_policy(&p);
	p.w_speedup = 100;
	p.hold_for_faster = hold;
	p.backfill = true;
	return sched_set_policy(c, &p, NULL);
}

static void run_row(const struct row *r)
{
	struct sched_cluster *c = fx_cluster(NULL);
	REQUIRE_OK(hold_policy(c, r->hold));
	struct fx_node n;
	fx_node_init(&n, 1, "eu", "1xA100");
	fx_add_node(c, &n);
	fx_node_init(&n, 2, "eu", "1xL4");
	fx_add_node(c, &n);
	if (r->busy_end) {
		struct fx_job busy;
		fx_job_init(&busy, 9, 1);
		busy.spec.max_duration_us = 20 * HOUR;
		busy.spec.submit_us = NOW + r->busy_end - 20 * HOUR;
		fx_run_job(c, &busy, 1, 1, NOW + r->busy_end - 20 * HOUR);
	}
	struct sched_speed sp[2][2];
	add_job(c, 1, r, NOW - r->waited, sp[0]);
	if (r->second)
		add_job(c, 2, r, NOW, sp[1]);
	struct fx_cycle fc = { 0 };
	fx_run_cycle(&fc, c, NOW);
	uint64_t want[2] = { r->want1, r->want2 };
	for (uint64_t id = 1; id <= (r->second ? 2u : 1u); id++) {
		const struct sched_action *a = fx_find(&fc.acts, SCHED_ACT_START, id);
		if (!want[id - 1]) {
			EXPECT(a == NULL);
			EXPECT_INT(sched_job_state(c, id), SCHED_JOB_PENDING);
		} else {
			EXPECT(a != NULL);
			if (a)
				EXPECT_INT(a->node_id, want[id - 1]);
		}
	}
	EXPECT_INT(fc.stats.held, r->held);
	EXPECT_INT(fc.stats.hold_until_us, r->hold_until);
	/* held is not blocked: no reservation is made for it */
	EXPECT_INT(fc.stats.reserved, 0);
	EXPECT_CHECK(c);
	fx_cycle_done(&fc);
	sched_cluster_free(c);
}

/* The held job takes the L4 at the time the cycle named, if the A100 is
 * still busy then (its lease ran to the end of a long limit). */
static void wakes(void)
{
	fx_row = "at hold_until_us the held job stops waiting and takes the L4";
	struct sched_cluster *c = fx_cluster(NULL);
	REQUIRE_OK(hold_policy(c, 0.5));
	struct fx_node n;
	fx_node_init(&n, 1, "eu", "1xA100");
	fx_add_node(c, &n);
	fx_node_init(&n, 2, "eu", "1xL4");
	fx_add_node(c, &n);
	struct fx_job busy;
	fx_job_init(&busy, 9, 1);
	busy.spec.max_duration_us = 2 * HOUR;
	busy.spec.submit_us = NOW - HOUR;
	fx_run_job(c, &busy, 1, 1, NOW - HOUR);
	static const struct row r = { "", 0.5, 0, 0, 0.25f, true, false, 0, 0, 0, 0 };
	struct sched_speed sp[2];
	add_job(c, 1, &r, NOW, sp);
	struct fx_cycle fc = { 0 };
	fx_run_cycle(&fc, c, NOW);
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_START, 1), 0);
	int64_t until = fc.stats.hold_until_us;
	EXPECT_INT(until, NOW + 3 * HOUR / 2);
	fx_run_cycle(&fc, c, until - 1);
	EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_START, 1), 0);
	EXPECT_INT(fc.stats.held, 1);
	fx_run_cycle(&fc, c, until);
	const struct sched_action *a = fx_find(&fc.acts, SCHED_ACT_START, 1);
	EXPECT(a != NULL);
	if (a)
		EXPECT_INT(a->node_id, 2);
	EXPECT_INT(fc.stats.held, 0);
	EXPECT_INT(fc.stats.hold_until_us, 0);
	EXPECT_CHECK(c);
	fx_cycle_done(&fc);
	sched_cluster_free(c);
}

/* A 2-GPU job (on one node) on a fleet of two busy 2xA100 nodes and an
 * idle 2xL4 node. Two A100s free within the hour: on different nodes,
 * where the other GPU stays busy for a day, they never
 * make room for it (narrower jobs would take them one by one), so it takes
 * the L4s now; on one node it waits for them. */
static void width(void)
{
	static const struct {
		const char *name;
		bool same_node; /* both GPUs that free within the hour are on node 1 */
		uint64_t want;  /* node job 1 starts on; 0 = held */
	} wrows[] = {
		{ "multi-GPU job: faster GPUs free within the wait but on different nodes: the "
		  "slow "
		  "node now",
		  false, 3 },
		{ "multi-GPU job: faster GPUs free together on one node within the wait: held",
		  true, 0 },
	};
	for (size_t i = 0; i < FX_ARRAY_LEN(wrows); i++) {
		fx_row = wrows[i].name;
		struct sched_cluster *c = fx_cluster(NULL);
		REQUIRE_OK(hold_policy(c, 0.5));
		struct fx_node n;
		fx_node_init(&n, 1, "eu", "2xA100");
		fx_add_node(c, &n);
		fx_node_init(&n, 2, "eu", "2xA100");
		fx_add_node(c, &n);
		fx_node_init(&n, 3, "eu", "2xL4");
		fx_add_node(c, &n);
		/* every A100 is busy; two free within the hour (one per node, or
		 * both of node 1), the others after a day */
		static const struct {
			uint64_t node, mask;
			int64_t end;
		} busy[2][4] = {
			{ { 1, 1, HOUR },
			  { 2, 2, HOUR },
			  { 1, 2, 24 * HOUR },
			  { 2, 1, 24 * HOUR } },
			{ { 1, 1, HOUR },
			  { 1, 2, HOUR },
			  { 2, 1, 24 * HOUR },
			  { 2, 2, 24 * HOUR } },
		};
		for (uint32_t b = 0; b < 4; b++) {
			const int same = wrows[i].same_node ? 1 : 0;
			struct fx_job bj;
			fx_job_init(&bj, 10 + b, 1);
			bj.spec.max_duration_us = 30 * HOUR;
			bj.spec.submit_us = NOW + busy[same][b].end - 30 * HOUR;
			fx_run_job(c, &bj, busy[same][b].node, busy[same][b].mask,
			           bj.spec.submit_us);
		}
		struct fx_job j;
		fx_job_init(&j, 1, 2);
		j.spec.submit_us = NOW;
		j.spec.max_duration_us = 4 * HOUR;
		struct sched_speed sp[2] = { { A100, 0, 1.0f }, { L4, 0, 0.25f } };
		j.spec.speeds = sp;
		j.spec.nspeeds = 2;
		fx_add_job(c, &j);
		struct fx_cycle fc = { 0 };
		fx_run_cycle(&fc, c, NOW);
		const struct sched_action *a = fx_find(&fc.acts, SCHED_ACT_START, 1);
		if (!wrows[i].want) {
			EXPECT(a == NULL);
			EXPECT_INT(fc.stats.held, 1);
			EXPECT_INT(fc.stats.hold_until_us, NOW + 3 * HOUR / 2);
		} else {
			EXPECT(a != NULL);
			if (a)
				EXPECT_INT(a->node_id, wrows[i].want);
			EXPECT_INT(fc.stats.held, 0);
		}
		EXPECT_CHECK(c);
		fx_cycle_done(&fc);
		sched_cluster_free(c);
	}
}

static void validation(void)
{
	static const double bad[] = { -0.5, 100.5 };
	for (size_t i = 0; i < FX_ARRAY_LEN(bad); i++) {
		fx_row = "hold_for_faster out of [0, 100] is refused naming the field";
		struct sched_policy p;
		struct sched_error e;
		sched_policy_default(&p);
		p.hold_for_faster = bad[i];
		EXPECT_INT(sched_policy_validate(&p, &e), -EINVAL);
		EXPECT_STR(e.field, "hold_for_faster");
	}
	fx_row = "hold_for_faster at its bounds is accepted; off by default, 0.5 recommended";
	struct sched_policy p;
	sched_policy_default(&p);
	EXPECT(p.hold_for_faster == 0);
	p.hold_for_faster = 100;
	EXPECT_INT(sched_policy_validate(&p, NULL), 0);
	sched_policy_recommended(&p);
	EXPECT(p.hold_for_faster == 0.5);
}

int main(void)
{
	for (size_t i = 0; i < FX_ARRAY_LEN(rows); i++) {
		fx_row = rows[i].name;
		run_row(&rows[i]);
	}
	wakes();
	width();
	validation();
	return fx_finish("test_hold");
}
