/* test_speedup.c — heterogeneity awareness: a job's throughput profile
 * picks its GPU model (w_speedup), comparative advantage over the pending
 * jobs (comparative_advantage, which cannot cancel the job's own speed),
 * price per unit of work (w_cost_per_work), the TFLOPS fallback, profile validation naming
 * the field, profiles as part of the requirement class, the size and
 * duration priority factors, and allocation failures while adding a job
 * with a profile. */
#include "fixture.h"

#define NOW  FX_S(100)
#define A100 "A100-SXM4-80GB"
#define L4   "L4"

struct prof {
	const char *model; /* NULL ends; "" = by cc */
	uint16_t cc;
	float speed;
};

struct pjob {
	uint64_t id; /* 0 ends */
	struct prof prof[4];
	int64_t submit_s;
};

struct row {
	const char *name;
	const char *node1, *node2; /* one-GPU layouts, e.g. "1xA100" */
	double w_speedup, relative;
	struct pjob jobs[3];
	uint64_t want_node[3]; /* per job, in order */
};

static const struct row rows[] = {
	{ "profile beats TFLOPS: the job is faster on the L4",
	  "1xA100",
	  "1xL4",
	  10,
	  0,
	  { { 1, { { L4, 0, 2.0f }, { A100, 0, 1.0f } }, 0 } },
	  { 2 } },
	{ "without w_speedup the profile is ignored (lowest id)",
	  "1xA100",
	  "1xL4",
	  0,
	  0,
	  { { 1, { { L4, 0, 2.0f }, { A100, 0, 1.0f } }, 0 } },
	  { 1 } },
	{ "no profile: TFLOPS in the job's precision stand for speed",
	  "1xL4",
	  "1xA100",
	  10,
	  0,
	  { { 1, { { NULL, 0, 0 } }, 0 } },
	  { 2 } },
	{ "an entry by compute capability matches the L4 (8.9)",
	  "1xA100",
	  "1xL4",
	  10,
	  0,
	  { { 1, { { "", 89, 3.0f }, { A100, 0, 1.0f } }, 0 } },
	  { 2 } },
	{ "a model entry wins over a compute-capability entry",
	  "1xA100",
	  "1xL4",
	  10,
	  0,
	  { { 1, { { "", 89, 3.0f }, { L4, 0, 0.1f }, { A100, 0, 1.0f } }, 0 } },
	  { 1 } },
	{ "uncovered model estimated from TFLOPS against the covered one",
	  "1xL4",
	  "1xA100",
	  10,
	  0,
	  /* L4 estimate: 121 TFLOPS x (1.0 / 312) = 0.39 < 1.0 */
	  { { 1, { { A100, 0, 1.0f } }, 0 } },
	  { 2 } },
	{ "own speed only: the first job takes the A100 it barely needs",
	  "1xA100",
	  "1xL4",
	  10,
	  0,
	  { { 1, { { A100, 0, 1.0f }, { L4, 0, 0.9f } }, 0 },
	    { 2, { { A100, 0, 1.0f }, { L4, 0, 0.2f } }, 1 } },
	  { 1, 2 } },
	{ "comparative advantage: the A100 goes to the job that gains 5x there",
	  "1xA100",
	  "1xL4",
	  10,
	  1,
	  { { 1, { { A100, 0, 1.0f }, { L4, 0, 0.9f } }, 0 },
	    { 2, { { A100, 0, 1.0f }, { L4, 0, 0.2f } }, 1 } },
	  { 2, 1 } },
	{ "uniform speed-ups cannot cancel: with comparative advantage the first job "
	  "still takes the faster A100",
	  "1xL4",
	  "1xA100",
	  10,
	  1,
	  { { 1, { { A100, 0, 1.0f }, { L4, 0, 0.5f } }, 0 },
	    { 2, { { A100, 0, 1.0f }, { L4, 0, 0.5f } }, 1 } },
	  { 2, 1 } },
	{ "one pending job with comparative advantage: its own speed decides",
	  "1xL4",
	  "1xA100",
	  10,
	  1,
	  { { 1, { { A100, 0, 1.0f }, { L4, 0, 0.5f } }, 0 } },
	  { 2 } },
	{ "half comparative advantage: a 5x gain still outweighs the other job's 1.1x",
	  "1xA100",
	  "1xL4",
	  10,
	  0.5,
	  { { 1, { { A100, 0, 1.0f }, { L4, 0, 0.9f } }, 0 },
	    { 2, { { A100, 0, 1.0f }, { L4, 0, 0.2f } }, 1 } },
	  { 2, 1 } },
};

static void fill_job(struct fx_job *j, struct sched_speed *sp, const struct pjob *pj)
{
	fx_job_init(j, pj->id, 1);
	j->spec.submit_us = FX_S(pj->submit_s);
	uint32_t n = 0;
	for (; n < 4 && pj->prof[n].model; n++)
		sp[n] = (struct sched_speed){ *pj->prof[n].model ? pj->prof[n].model : NULL,
			                      pj->prof[n].cc, pj->prof[n].speed };
	j->spec.nspeeds = n;
	j->spec.speeds = n ? sp : NULL;
}

static void run_row(const struct row *r)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct sched_policy p;
	fx_policy(&p);
	p.w_speedup = r->w_speedup;
	p.comparative_advantage = r->relative;
	REQUIRE_OK(sched_set_policy(c, &p, NULL));
	struct fx_node n;
	fx_node_init(&n, 1, "eu", r->node1);
	fx_add_node(c, &n);
	fx_node_init(&n, 2, "eu", r->node2);
	fx_add_node(c, &n);
	struct sched_speed sp[3][4];
	for (int i = 0; i < 3 && r->jobs[i].id; i++) {
		struct fx_job j;
		fill_job(&j, sp[i], &r->jobs[i]);
		fx_add_job(c, &j);
	}
	struct fx_cycle fc = { 0 };
	fx_run_cycle(&fc, c, NOW);
	for (int i = 0; i < 3 && r->jobs[i].id; i++) {
		const struct sched_action *a = fx_find(&fc.acts, SCHED_ACT_START, r->jobs[i].id);
		EXPECT(a != NULL);
		if (a)
			EXPECT_INT(a->node_id, r->want_node[i]);
	}
	EXPECT_CHECK(c);
	fx_cycle_done(&fc);
	sched_cluster_free(c);
}

/* ---- validation -------------------------------------------------------------- */

static void validation(void)
{
	fx_row = "profile and policy errors name the field";
	struct fx_job j;
	struct sched_error e;
	struct sched_speed sp[2] = { { "L4", 0, 1.0f }, { NULL, 0, 1.0f } };
	fx_job_init(&j, 1, 1);
	j.spec.speeds = sp;
	j.spec.nspeeds = 2;
	EXPECT_INT(sched_job_validate(&j.spec, &e), -EINVAL);
	EXPECT_STR(e.field, "speeds[1].compute_cap");
	sp[1].compute_cap = 89;
	EXPECT_INT(sched_job_validate(&j.spec, &e), 0);
	sp[0].speed = 0;
	EXPECT_INT(sched_job_validate(&j.spec, &e), -EINVAL);
	EXPECT_STR(e.field, "speeds[0].speed");
	sp[0].speed = 1.0f;
	j.spec.nspeeds = SCHED_MAX_STRINGS + 1;
	EXPECT_INT(sched_job_validate(&j.spec, &e), -EINVAL);
	EXPECT_STR(e.field, "speeds");

	static const struct {
		const char *field;
		double w_speedup, relative, small, shortj;
	} pol[] = {
		{ "w_speedup", 1001, 0, 0, 0 },
		{ "w_speedup", -1, 0, 0, 0 },
		{ "comparative_advantage", 1, 1.5, 0, 0 },
		{ "w_small_jobs", 0, 0, 2e6, 0 },
		{ "w_short_jobs", 0, 0, 0, -1 },
	};
	for (size_t i = 0; i < FX_ARRAY_LEN(pol); i++) {
		struct sched_policy p;
		sched_policy_default(&p);
		p.w_speedup = pol[i].w_speedup;
		p.comparative_advantage = pol[i].relative;
		p.w_small_jobs = pol[i].small;
		p.w_short_jobs = pol[i].shortj;
		EXPECT_INT(sched_policy_validate(&p, &e), -EINVAL);
		EXPECT_STR(e.field, pol[i].field);
	}
}

/* ---- price per unit of work ------------------------------------------------------ */

/* A100 at 8/GPU-hour, L4 at 1: w_cost_per_work prefers the L4 for a job
 * only half as fast there (2 per unit of work against 8) and the A100 for
 * one ten times slower on the L4 (10 against 8); w_price alone would take
 * the L4 both times. */
static void cost_per_work(void)
{
	static const struct {
		const char *name;
		float l4_speed;
		double w_cost, w_price;
		uint64_t want;
	} cases[] = {
		{ "cost per work: the L4 at half speed is 4x cheaper per unit", 0.5f, 10, 0, 2 },
		{ "cost per work: the L4 at a tenth of the speed costs more per unit", 0.1f, 10, 0,
		  1 },
		{ "price per GPU-hour alone takes the cheap L4 however slow", 0.1f, 0, 10, 2 },
	};
	for (size_t i = 0; i < FX_ARRAY_LEN(cases); i++) {
		fx_row = cases[i].name;
		struct sched_cluster *c = fx_cluster(NULL);
		struct sched_policy p;
		fx_policy(&p);
		p.w_cost_per_work = cases[i].w_cost;
		p.w_price = cases[i].w_price;
		REQUIRE_OK(sched_set_policy(c, &p, NULL));
		struct fx_node n;
		fx_node_init(&n, 1, "eu", "1xA100");
		n.spec.price_micros = 8000000;
		fx_add_node(c, &n);
		fx_node_init(&n, 2, "eu", "1xL4");
		n.spec.price_micros = 1000000;
		fx_add_node(c, &n);
		struct sched_speed sp[2] = { { A100, 0, 1.0f }, { L4, 0, cases[i].l4_speed } };
		struct fx_job j;
		fx_job_init(&j, 1, 1);
		j.spec.speeds = sp;
		j.spec.nspeeds = 2;
		fx_add_job(c, &j);
		struct fx_cycle fc = { 0 };
		fx_run_cycle(&fc, c, NOW);
		const struct sched_action *a = fx_find(&fc.acts, SCHED_ACT_START, 1);
		EXPECT(a != NULL);
		if (a)
			EXPECT_INT(a->node_id, cases[i].want);
		fx_cycle_done(&fc);
		sched_cluster_free(c);
	}
}

/* ---- classes ----------------------------------------------------------------- */

static void classes(void)
{
	fx_row = "the same profile in another order is one class; another profile is not";
	struct sched_cluster *c = fx_cluster(NULL);
	struct sched_speed a[2] = { { "L4", 0, 2.0f }, { "A100-SXM4-80GB", 0, 1.0f } };
	struct sched_speed b[2] = { { "A100-SXM4-80GB", 0, 1.0f }, { "L4", 0, 2.0f } };
	struct sched_speed d[2] = { { "A100-SXM4-80GB", 0, 1.0f }, { "L4", 0, 3.0f } };
	struct sched_speed *ps[3] = { a, b, d };
	for (int i = 0; i < 3; i++) {
		struct fx_job j;
		fx_job_init(&j, (uint64_t)i + 1, 1);
		j.spec.speeds = ps[i];
		j.spec.nspeeds = 2;
		fx_add_job(c, &j);
	}
	struct sched_stats st;
	sched_get_stats(c, &st);
	EXPECT_INT(st.classes, 2);
	EXPECT_CHECK(c);
	sched_cluster_free(c);
}

/* ---- priority factors ----------------------------------------------------------- */

static void priority(void)
{
	static const struct {
		const char *name;
		double small, shortj;
		uint64_t want; /* the job that gets the one free GPU */
	} prow[] = {
		{ "no size or duration factor: the older job first", 0, 0, 1 },
		{ "w_small_jobs: the 1-GPU job before the older 2-GPU one (which would take both)",
		  1000, 0, 2 },
		{ "w_short_jobs: the 10-minute job before the older 10-hour one", 0, 1000, 3 },
	};
	for (size_t i = 0; i < FX_ARRAY_LEN(prow); i++) {
		fx_row = prow[i].name;
		struct sched_cluster *c = fx_cluster(NULL);
		struct sched_policy p;
		fx_policy(&p);
		p.w_age = 1;
		p.w_small_jobs = prow[i].small;
		p.w_short_jobs = prow[i].shortj;
		REQUIRE_OK(sched_set_policy(c, &p, NULL));
		struct fx_node n;
		fx_node_init(&n, 1, "eu", "2xA100");
		fx_add_node(c, &n);
		bool wide = prow[i].small > 0;
		if (!wide) {
			/* one GPU free: jobs 1, 2, 3 ask one each */
			struct fx_job busy;
			fx_job_init(&busy, 9, 1);
			fx_run_job(c, &busy, 1, 1, 0);
		}
		/* job 1: oldest, 10 h (with w_small_jobs: asks both GPUs); job 2:
		 * one GPU, 10 h, newer; job 3: one GPU, 10 min, newest */
		struct fx_job j;
		fx_job_init(&j, 1, wide ? 2 : 1);
		j.spec.max_duration_us = FX_S(36000);
		j.spec.submit_us = FX_S(0);
		fx_add_job(c, &j);
		fx_job_init(&j, 2, 1);
		j.spec.max_duration_us = FX_S(36000);
		j.spec.submit_us = FX_S(10);
		fx_add_job(c, &j);
		if (!wide) {
			fx_job_init(&j, 3, 1);
			j.spec.max_duration_us = FX_S(600);
			j.spec.submit_us = FX_S(20);
			fx_add_job(c, &j);
		}
		struct fx_cycle fc = { 0 };
		fx_run_cycle(&fc, c, NOW);
		EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_START, prow[i].want), 1);
		EXPECT_INT(fc.acts.len, 1);
		fx_cycle_done(&fc);
		sched_cluster_free(c);
	}
}

/* ---- allocation failures ---------------------------------------------------------- */

static void oom(void)
{
	fx_row = "adding a job with a profile: every failed allocation leaves nothing behind";
	for (long n = 1; n < 64; n++) {
		struct fx_alloc fa;
		fx_alloc_init(&fa);
		struct sched_cluster *c = sched_cluster_new(&fa.a);
		REQUIRE(c != NULL);
		struct sched_speed sp[2] = { { "Model-X", 0, 2.0f }, { NULL, 75, 1.0f } };
		struct fx_job j;
		fx_job_init(&j, 1, 1);
		j.spec.speeds = sp;
		j.spec.nspeeds = 2;
		fa.fail_at = fa.calls + n;
		int rc = sched_job_add(c, &j.spec, NULL);
		fa.fail_at = 0;
		EXPECT(rc == 0 || rc == -ENOMEM);
		EXPECT_INT(sched_job_state(c, 1), rc == 0 ? SCHED_JOB_PENDING : -ENOENT);
		EXPECT_CHECK(c);
		sched_cluster_free(c);
		EXPECT_INT(fa.live, 0);
		if (rc == 0)
			break;
	}
}

int main(void)
{
	for (size_t i = 0; i < FX_ARRAY_LEN(rows); i++) {
		fx_row = rows[i].name;
		run_row(&rows[i]);
	}
	validation();
	cost_per_work();
	classes();
	priority();
	oom();
	return fx_finish("test_speedup");
}
