/* test_priority.c — job order: priority class, age (saturating), fair share
 * with decayed usage, ties by submit time then order of add; and the
 * tenant usage accounting behind fair share. */
#include "fixture.h"

#include <math.h>

#define MAX_JOBS 6

struct pjob {
	uint64_t id; /* 0 ends the list; jobs are added in list order */
	uint64_t tenant;
	uint32_t cls;
	int64_t submit_s;
};

struct ptenant {
	uint64_t id;        /* 0 ends the list */
	uint32_t shares;    /* 0 = leave the default */
	double usage_gpu_s; /* < 0 = leave unset */
	int64_t usage_at_s;
};

struct row {
	const char *name;
	double w_class, w_age, w_fair;
	int64_t age_max_s; /* 0 = policy default */
	enum sched_fairness fairness;
	int64_t half_life_s; /* 0 = policy default */
	int64_t now_s;
	struct pjob jobs[MAX_JOBS];
	struct ptenant tenants[3];
	/* tenant 1 runs one job on this many GPUs since run_start_s (0 = none) */
	uint32_t run_gpus;
	int64_t run_start_s;
	uint64_t want[MAX_JOBS];
};

static const struct row rows[] = {
	{ .name = "class: higher class first",
	  .w_class = 1,
	  .now_s = 10,
	  .jobs = { { 1, 1, 0, 0 }, { 2, 1, 4, 0 }, { 3, 1, 2, 0 } },
	  .want = { 2, 3, 1 } },
	{ .name = "class: weighted above age",
	  .w_class = 10,
	  .w_age = 1,
	  .age_max_s = 1000,
	  .now_s = 1000,
	  .jobs = { { 1, 1, 0, 0 }, { 2, 1, 1, 1000 } },
	  .want = { 2, 1 } },
	{ .name = "age: older first",
	  .w_class = 0,
	  .w_age = 1,
	  .age_max_s = 10000,
	  .now_s = 10000,
	  .jobs = { { 1, 1, 2, 500 }, { 2, 1, 2, 100 }, { 3, 1, 2, 300 } },
	  .want = { 2, 3, 1 } },
	{ .name = "age and class add up",
	  .w_class = 1,
	  .w_age = 1,
	  .age_max_s = 1000,
	  .now_s = 1000,
	  .jobs = { { 1, 1, 4, 1000 }, { 2, 1, 0, 100 }, { 3, 1, 2, 300 } },
	  .want = { 3, 1, 2 } },
	{ .name = "age saturates at age_max",
	  .w_class = 1,
	  .w_age = 1,
	  .age_max_s = 100,
	  .now_s = 10000,
	  .jobs = { { 1, 1, 0, 0 }, { 2, 1, 2, 9940 } },
	  .want = { 2, 1 } },
	{ .name = "age: a younger job of a higher class waits less",
	  .w_class = 1,
	  .w_age = 1,
	  .age_max_s = 1000,
	  .now_s = 1000,
	  .jobs = { { 1, 1, 0, 0 }, { 2, 1, 4, 900 } },
	  .want = { 2, 1 } },
	{ .name = "fairshare: fresh tenant before heavy tenant",
	  .w_class = 0,
	  .w_fair = 1,
	  .fairness = SCHED_FAIR_SHARE,
	  .half_life_s = 86400,
	  .now_s = 1000,
	  .jobs = { { 1, 1, 2, 0 }, { 2, 2, 2, 10 } },
	  .tenants = { { 1, 0, 1000, 1000 } },
	  .want = { 2, 1 } },
	{ .name = "fairshare: shares weigh usage",
	  .w_class = 0,
	  .w_fair = 1,
	  .fairness = SCHED_FAIR_SHARE,
	  .half_life_s = 86400,
	  .now_s = 1000,
	  .jobs = { { 1, 2, 2, 0 }, { 2, 1, 2, 10 } },
	  .tenants = { { 1, 3, 100, 1000 }, { 2, 1, 100, 1000 } },
	  .want = { 2, 1 } },
	{ .name = "fairshare: off ignores usage",
	  .w_class = 0,
	  .w_fair = 1,
	  .fairness = SCHED_FAIR_NONE,
	  .half_life_s = 86400,
	  .now_s = 1000,
	  .jobs = { { 1, 1, 2, 0 }, { 2, 2, 2, 10 } },
	  .tenants = { { 1, 0, 1000, 1000 } },
	  .want = { 1, 2 } },
	{ .name = "fairshare: no usage anywhere, all equal",
	  .w_class = 0,
	  .w_fair = 1,
	  .fairness = SCHED_FAIR_SHARE,
	  .half_life_s = 86400,
	  .now_s = 1000,
	  .jobs = { { 1, 1, 2, 0 }, { 2, 2, 2, 10 } },
	  .want = { 1, 2 } },
	{ .name = "fairshare: decayed usage decides",
	  .w_class = 0,
	  .w_fair = 1,
	  .fairness = SCHED_FAIR_SHARE,
	  .half_life_s = 1000,
	  .now_s = 2000,
	  .jobs = { { 1, 2, 2, 0 }, { 2, 1, 2, 10 } },
	  .tenants = { { 1, 0, 1000, 0 }, { 2, 0, 300, 2000 } },
	  .want = { 2, 1 } },
	{ .name = "fairshare: running work accrues",
	  .w_class = 0,
	  .w_fair = 1,
	  .fairness = SCHED_FAIR_SHARE,
	  .half_life_s = 86400,
	  .now_s = 1000,
	  .jobs = { { 1, 1, 2, 0 }, { 2, 2, 2, 10 } },
	  .tenants = { { 2, 0, 500, 1000 } },
	  .run_gpus = 1,
	  .run_start_s = 0,
	  .want = { 2, 1 } },
	{ .name = "fairshare: heavy tenant's higher class still first",
	  .w_class = 1,
	  .w_fair = 1,
	  .fairness = SCHED_FAIR_SHARE,
	  .half_life_s = 86400,
	  .now_s = 1000,
	  .jobs = { { 1, 1, 4, 0 }, { 2, 2, 0, 10 } },
	  .tenants = { { 1, 0, 1000, 1000 } },
	  .want = { 1, 2 } },
	{ .name = "fairshare: weighted above class",
	  .w_class = 1,
	  .w_fair = 2,
	  .fairness = SCHED_FAIR_SHARE,
	  .half_life_s = 86400,
	  .now_s = 1000,
	  .jobs = { { 1, 1, 4, 0 }, { 2, 2, 0, 10 } },
	  .tenants = { { 1, 0, 1000, 1000 } },
	  .want = { 2, 1 } },
	{ .name = "tie: earlier submit first",
	  .w_class = 1,
	  .now_s = 100,
	  .jobs = { { 1, 1, 2, 30 }, { 2, 1, 2, 10 }, { 3, 1, 2, 20 } },
	  .want = { 2, 3, 1 } },
	{ .name = "tie: same submit, order of add (not id)",
	  .w_class = 1,
	  .now_s = 100,
	  .jobs = { { 3, 1, 2, 5 }, { 1, 1, 2, 5 }, { 2, 1, 2, 5 } },
	  .want = { 3, 1, 2 } },
	{ .name = "tie: order of add across tenants",
	  .w_class = 1,
	  .now_s = 100,
	  .jobs = { { 5, 2, 2, 5 }, { 4, 1, 2, 5 }, { 6, 3, 2, 5 } },
	  .want = { 5, 4, 6 } },
	{ .name = "tie: class first, then submit, then add",
	  .w_class = 1,
	  .now_s = 100,
	  .jobs = { { 1, 1, 1, 0 },
	            { 2, 1, 3, 50 },
	            { 3, 1, 3, 40 },
	            { 4, 1, 1, 0 },
	            { 5, 1, 3, 40 } },
	  .want = { 3, 5, 2, 1, 4 } },
};

/* Node 1 ("pend", one GPU) hosts the queue one job at a time; node 2
 * ("run") holds tenant 1's running job. Each cycle must start exactly one
 * job; its lease ends at once (no usage), and the next cycle goes on. */
static void run_row(const struct row *r)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct sched_policy p = *sched_get_policy(c);
	struct fx_cycle fc = { 0 };
	struct fx_node n;
	struct fx_job j;
	int64_t now = FX_S(r->now_s);
	size_t njobs = 0;

	p.w_prio_class = r->w_class;
	p.w_age = r->w_age;
	p.w_fairshare = r->w_fair;
	p.fairness = r->fairness;
	if (r->age_max_s)
		p.age_max_us = FX_S(r->age_max_s);
	if (r->half_life_s)
		p.fairshare_half_life_us = FX_S(r->half_life_s);
	REQUIRE_OK(sched_set_policy(c, &p, NULL));

	fx_node_init(&n, 1, "pend", "1xH100");
	if (!fx_add_node(c, &n))
		goto out;
	if (r->run_gpus) {
		fx_node_init(&n, 2, "run", "8xH100");
		n.spec.ngpus = r->run_gpus;
		if (!fx_add_node(c, &n))
			goto out;
		fx_job_init(&j, 99, r->run_gpus);
		j.spec.tenant_id = 1;
		j.spec.max_duration_us = FX_S(1000000);
		if (!fx_run_job(c, &j, 2, (1ull << r->run_gpus) - 1, FX_S(r->run_start_s)))
			goto out;
	}
	for (size_t i = 0; i < FX_ARRAY_LEN(r->tenants) && r->tenants[i].id; i++) {
		const struct ptenant *t = &r->tenants[i];

		if (t->shares)
			EXPECT_INT(sched_tenant_set_shares(c, t->id, t->shares), 0);
		if (t->usage_gpu_s >= 0)
			EXPECT_INT(
			    sched_tenant_set_usage(c, t->id, t->usage_gpu_s, FX_S(t->usage_at_s)),
			    0);
	}
	for (; njobs < MAX_JOBS && r->jobs[njobs].id; njobs++) {
		const struct pjob *pj = &r->jobs[njobs];

		fx_job_init(&j, pj->id, 1);
		j.spec.tenant_id = pj->tenant;
		j.spec.priority_class = pj->cls;
		j.spec.submit_us = FX_S(pj->submit_s);
		fx_job_regions(&j, "pend");
		if (!fx_add_job(c, &j))
			goto out;
	}

	for (size_t k = 0; k < njobs; k++) {
		const struct sched_action *a;

		if (!fx_run_cycle(&fc, c, now))
			goto out;
		if (fc.acts.len != 1 || fc.acts.items[0].kind != SCHED_ACT_START) {
			fx_fail(__FILE__, __LINE__, "cycle %zu: %zu actions, want one START", k,
			        fc.acts.len);
			goto out;
		}
		a = &fc.acts.items[0];
		if (a->job_id != r->want[k]) {
			fx_fail(__FILE__, __LINE__, "position %zu: job %llu started, want %llu", k,
			        (unsigned long long)a->job_id, (unsigned long long)r->want[k]);
			goto out;
		}
		EXPECT_INT(sched_lease_end(c, a->job_id, now, false), 0);
	}
	EXPECT_CHECK(c);
out:
	fx_cycle_done(&fc);
	sched_cluster_free(c);
}

/* ---- usage accounting --------------------------------------------------- */

struct decay_row {
	const char *name;
	double usage;
	int64_t at_s, half_life_s, query_s;
	double want;
};

static const struct decay_row decay_rows[] = {
	{ "decay: none at the time set", 1000, 0, 100, 0, 1000 },
	{ "decay: halves after one half-life", 1000, 0, 100, 100, 500 },
	{ "decay: quarter after two half-lives", 1000, 0, 100, 200, 250 },
	{ "decay: half a half-life", 1000, 0, 100, 50, 707.10678 },
	{ "decay: set later, measured from then", 800, 5000, 1000, 6000, 400 },
	{ "decay: zero stays zero", 0, 0, 100, 1000, 0 },
};

static void run_decay_row(const struct decay_row *r)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct sched_policy p = *sched_get_policy(c);
	double got;

	p.fairness = SCHED_FAIR_SHARE;
	p.w_fairshare = 1;
	p.fairshare_half_life_us = FX_S(r->half_life_s);
	if (sched_set_policy(c, &p, NULL) != 0) {
		fx_fail(__FILE__, __LINE__, "policy rejected");
	} else {
		EXPECT_INT(sched_tenant_set_usage(c, 7, r->usage, FX_S(r->at_s)), 0);
		got = sched_tenant_usage(c, 7, FX_S(r->query_s));
		EXPECT_NEAR(got, r->want, 1e-3 * (r->want > 1 ? r->want : 1));
		EXPECT(sched_tenant_usage(c, 8, FX_S(r->query_s)) < 0);
	}
	sched_cluster_free(c);
}

enum usage_end { END_LEASE, END_REQUEUE, END_CANCEL, END_NONE };

struct usage_row {
	const char *name;
	uint32_t gpus, nodes;
	enum usage_end how;
	int64_t end_s, query_s;
	double want;
};

/* Half-life 10^6 s: ten seconds of use decay by 7e-6 (relative). */
static const struct usage_row usage_rows[] = {
	{ "usage: running job accrues GPU-seconds", 2, 1, END_NONE, 0, 10, 20 },
	{ "usage: ended lease charged", 2, 1, END_LEASE, 10, 10, 20 },
	{ "usage: ended lease then decays", 2, 1, END_LEASE, 10, 1000010, 10 },
	{ "usage: requeued lease charged", 4, 1, END_REQUEUE, 5, 5, 20 },
	{ "usage: cancelled running job charged", 3, 1, END_CANCEL, 10, 10, 30 },
	{ "usage: gang charges every node", 2, 3, END_LEASE, 10, 10, 60 },
	{ "usage: nothing after the end", 1, 1, END_LEASE, 10, 20, 10 },
};

static void run_usage_row(const struct usage_row *r)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct sched_policy p = *sched_get_policy(c);
	struct sched_placement pl[4];
	struct sched_error err = { 0 };
	struct fx_node n;
	struct fx_job j;
	int rc;

	p.fairness = SCHED_FAIR_SHARE;
	p.w_fairshare = 1;
	p.fairshare_half_life_us = FX_S(1000000);
	REQUIRE_OK(sched_set_policy(c, &p, NULL));
	for (uint32_t i = 0; i < r->nodes; i++) {
		fx_node_init(&n, i + 1, "eu-west", "8xH100");
		if (!fx_add_node(c, &n))
			goto out;
		pl[i].node_id = i + 1;
		pl[i].gpu_mask = (1ull << r->gpus) - 1;
	}
	fx_job_init(&j, 1, r->gpus);
	j.spec.tenant_id = 7;
	j.spec.node_count = r->nodes;
	if (!fx_add_job(c, &j))
		goto out;
	rc = sched_lease_start(c, 1, pl, r->nodes, 0, &err);
	if (rc != 0) {
		fx_fail(__FILE__, __LINE__, "lease_start: %s %s", fx_errno_name(rc), err.field);
		goto out;
	}
	EXPECT_NEAR(sched_tenant_usage(c, 7, 0), 0, 1e-9);
	switch (r->how) {
	case END_LEASE:
		rc = sched_lease_end(c, 1, FX_S(r->end_s), false);
		break;
	case END_REQUEUE:
		rc = sched_lease_end(c, 1, FX_S(r->end_s), true);
		EXPECT_INT(sched_job_state(c, 1), SCHED_JOB_PENDING);
		break;
	case END_CANCEL:
		rc = sched_job_cancel(c, 1, FX_S(r->end_s));
		EXPECT_INT(sched_job_state(c, 1), -ENOENT);
		break;
	case END_NONE:
		rc = 0;
		break;
	}
	EXPECT_INT(rc, 0);
	EXPECT_NEAR(sched_tenant_usage(c, 7, FX_S(r->query_s)), r->want, 1e-3 * r->want);
	EXPECT_CHECK(c);
out:
	sched_cluster_free(c);
}

/* ---- equivalence classes ------------------------------------------------ */

/* Jobs equal but for id, tenant and submit time form a class; once one is
 * blocked in a cycle, the later ones are skipped. Node 1 has free_gpus of
 * its 4 GPUs free; jobs 1-3 want one GPU each, job 4 wants two. */
struct class_row {
	const char *name;
	uint32_t free_gpus;
	bool vary_tenant;   /* jobs 1-3 of different tenants */
	bool vary_duration; /* jobs 1-3 differ in max duration: three classes */
	uint32_t want_placed, want_blocked, want_skipped, want_classes;
	const char *note; /* printed with the row's failures */
};

static const struct class_row class_rows[] = {
	{ "classes: later members skipped once one is blocked", 0, false, false, 0, 2, 2, 2, NULL },
	{ "classes: tenants differ, still one class", 0, true, false, 0, 2, 2, 2, NULL },
	/* durations matter only for backfill, which the class tracks itself */
	{ "classes: durations differ, still one class", 0, false, true, 0, 2, 2, 2, NULL },
	{ "classes: placed member, then blocked, then skipped", 1, false, false, 1, 2, 1, 2, NULL },
	{ "classes: all members placed", 3, false, false, 3, 1, 0, 2, NULL },
};

static void run_class_row(const struct class_row *r)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct fx_cycle fc = { 0 };
	struct sched_stats st;
	struct fx_node n;
	struct fx_job j;

	fx_note = r->note;
	fx_node_init(&n, 1, "eu-west", "4xH100");
	fx_add_node(c, &n);
	if (r->free_gpus < 4) {
		fx_job_init(&j, 100, 4 - r->free_gpus);
		j.spec.precision = SCHED_PREC_FP32; /* never in the rows' classes */
		fx_run_job(c, &j, 1, 0xfu & ~((1u << r->free_gpus) - 1), 0);
	}
	for (uint64_t id = 1; id <= 3; id++) {
		fx_job_init(&j, id, 1);
		j.spec.submit_us = FX_S(id);
		if (r->vary_tenant)
			j.spec.tenant_id = id;
		if (r->vary_duration)
			j.spec.max_duration_us = FX_S(100 * id);
		fx_add_job(c, &j);
	}
	fx_job_init(&j, 4, 2);
	j.spec.submit_us = FX_S(4);
	fx_add_job(c, &j);
	sched_get_stats(c, &st);
	/* the running job's class counts too */
	EXPECT_INT(st.classes, r->want_classes + (r->free_gpus < 4 ? 1 : 0));
	if (fx_run_cycle(&fc, c, FX_S(10))) {
		EXPECT_INT(fc.stats.placed, r->want_placed);
		EXPECT_INT(fc.stats.blocked, r->want_blocked);
		EXPECT_INT(fc.stats.skipped_class, r->want_skipped);
		for (uint64_t id = 1; id <= r->want_placed; id++)
			EXPECT_INT(fx_count(&fc.acts, SCHED_ACT_START, id), 1);
	}
	EXPECT_CHECK(c);
	fx_cycle_done(&fc);
	sched_cluster_free(c);
	fx_note = NULL;
}

int main(void)
{
	for (size_t i = 0; i < FX_ARRAY_LEN(rows); i++) {
		fx_row = rows[i].name;
		run_row(&rows[i]);
	}
	for (size_t i = 0; i < FX_ARRAY_LEN(class_rows); i++) {
		fx_row = class_rows[i].name;
		run_class_row(&class_rows[i]);
	}
	for (size_t i = 0; i < FX_ARRAY_LEN(decay_rows); i++) {
		fx_row = decay_rows[i].name;
		run_decay_row(&decay_rows[i]);
	}
	for (size_t i = 0; i < FX_ARRAY_LEN(usage_rows); i++) {
		fx_row = usage_rows[i].name;
		run_usage_row(&usage_rows[i]);
	}
	return fx_finish("test_priority");
}
