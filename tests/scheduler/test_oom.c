/* test_oom.c — allocation failure: a scenario of single library calls runs
 * with an allocator that fails the Nth allocation (alloc or realloc), for
 * N = 1, 2, ... until the scenario completes without a failure. Every call
 * that returns -ENOMEM must leave the cluster consistent and equal to a
 * reference built without failures; the call then succeeds when retried;
 * at the end nothing leaks. A second pass keeps failing from N on and
 * frees the cluster at the first -ENOMEM. */
#include "fixture.h"

#include <stdlib.h>

enum step_kind {
	ST_POLICY,
	ST_NODE,
	ST_SHARES,
	ST_USAGE,
	ST_JOB,
	ST_CYCLE,
	ST_EXPLAIN,
	ST_END_RUNNING,    /* ends the lease of the arg-th running job (by id) */
	ST_END_PREEMPTING, /* ends the lease of the first preempting job */
	ST_CANCEL,
	ST_STATE,
	ST_REMOVE,
	ST_LEASE_START,
};

struct step {
	enum step_kind kind;
	uint64_t id;   /* node, job or tenant id; policy/spec index */
	int64_t now_s; /* time of the call */
	uint64_t arg;  /* requeue, state, nth, shares, GPU mask ... */
	uint64_t node; /* ST_LEASE_START */
};

#define MAX_JOB_ID 40

/* ---- the facts the scenario uses ---------------------------------------- */

static void make_node(struct fx_node *n, uint64_t idx)
{
	switch (idx) {
	case 1:
		fx_node_init(n, 1, "a", "4xH100@1 4xH100@2");
		break;
	case 2:
		fx_node_init(n, 2, "a", "8xH100@1");
		fx_node_labels(n, "tier=gold,zone=a1");
		break;
	case 3:
		fx_node_init(n, 3, "a", "2xA100 2xH100");
		n->spec.price_micros = 1500000;
		break;
	case 4:
		fx_node_init(n, 4, "b", "4xL4");
		fx_node_taints(n, "spot");
		n->spec.price_micros = 400000;
		break;
	case 5:
		fx_node_init(n, 5, "b", "4xL4");
		n->spec.verified = false;
		break;
	case 6:
		fx_node_init(n, 6, "c", "1x3060");
		break;
	case 7: /* node 3 again, with two more GPUs and a label */
		fx_node_init(n, 3, "a", "2xA100 2xH100 2xH100");
		fx_node_labels(n, "tier=silver");
		n->spec.price_micros = 1500000;
		break;
	case 8:
		fx_node_init(n, 8, "b", "8xH100@3");
		break;
	default:
		fprintf(stderr, "no node %llu\n", (unsigned long long)idx);
		exit(2);
	}
}

static void make_job(struct fx_job *j, uint64_t id)
{
	fx_job_init(j, id, 1);
	j->spec.tenant_id = 1 + id % 3;
	j->spec.submit_us = FX_S(id);
	j->spec.priority_class = (uint32_t)(id % 4);
	j->spec.preemptible = id % 2 == 0;
	j->spec.max_duration_us = FX_S(40 + 10 * (id % 5));
	switch (id % 8) {
	case 0:
		j->spec.gpus_per_node = 2;
		break;
	case 1:
		j->spec.gpus_per_node = 4;
		j->spec.require_nvlink = true;
		break;
	case 2:
		j->spec.gpus_per_node = 2;
		j->spec.node_count = 2;
		break;
	case 3:
		fx_job_selectors(j, "tier=gold");
		j->spec.gpus_per_node = 3;
		break;
	case 4:
		fx_job_tolerations(j, "spot");
		fx_job_regions(j, "b");
		break;
	case 5:
		j->spec.min_compute_cap = 90;
		j->spec.precision = SCHED_PREC_FP8;
		break;
	case 6:
		j->spec.max_price_micros = 1600000;
		j->spec.preferred_region = "b";
		break;
	case 7:
		j->spec.min_memory_mib = 40000;
		break;
	}
	if (id == 9) /* can never run anywhere */
		j->spec.gpus_per_node = 64;
	if (id == 30) /* started by hand with sched_lease_start */
		fx_job_init(j, 30, 1);
	if (id == 17) { /* a high-class job that has to preempt */
		j->spec.priority_class = 4;
		j->spec.gpus_per_node = 8;
		j->spec.preemptible = false;
	}
}

static void make_policy(struct sched_policy *p, uint64_t idx)
{
	fx_policy(p);
	p->backfill = true;
	p->reservations = 2;
	p->preemption = true;
	p->preemption_grace_us = FX_S(5);
	p->fairness = SCHED_FAIR_SHARE;
	p->w_fairshare = 1;
	p->w_age = 1;
	p->age_max_us = FX_S(100);
	p->infeasible_timeout_us = FX_S(50);
	p->w_price = 1;
	p->w_perf = 1;
	p->w_fit = 2;
	p->w_locality = 1;
	p->score_nodes = 64; /* every node; keeps the cycle's scratch small */
	if (idx == 2) {
		p->fit_mode = SCHED_FIT_SPREAD;
		p->allow_unverified = true;
		p->backfill_depth = 3;
		p->reservations = 1;
	}
}

static const struct step scenario[] = {
	{ ST_POLICY, 1, 0, 0, 0 },
	{ ST_NODE, 1, 0, 0, 0 },
	{ ST_NODE, 2, 0, 0, 0 },
	{ ST_NODE, 3, 0, 0, 0 },
	{ ST_NODE, 4, 0, 0, 0 },
	{ ST_NODE, 5, 0, 0, 0 },
	{ ST_NODE, 6, 0, 0, 0 },
	{ ST_SHARES, 1, 0, 2, 0 },
	{ ST_SHARES, 2, 0, 1, 0 },
	{ ST_USAGE, 1, 0, 100, 0 },
	{ ST_JOB, 1, 1, 0, 0 },
	{ ST_JOB, 2, 2, 0, 0 },
	{ ST_JOB, 3, 3, 0, 0 },
	{ ST_JOB, 4, 4, 0, 0 },
	{ ST_JOB, 5, 5, 0, 0 },
	{ ST_JOB, 6, 6, 0, 0 },
	{ ST_JOB, 7, 7, 0, 0 },
	{ ST_JOB, 8, 8, 0, 0 },
	{ ST_JOB, 9, 9, 0, 0 },
	{ ST_JOB, 10, 10, 0, 0 },
	{ ST_JOB, 11, 11, 0, 0 },
	{ ST_JOB, 12, 12, 0, 0 },
	{ ST_JOB, 16, 12, 0, 0 },
	{ ST_JOB, 24, 12, 0, 0 },
	{ ST_CYCLE, 0, 15, 0, 0 },
	{ ST_EXPLAIN, 1, 15, 0, 0 },
	{ ST_EXPLAIN, 9, 15, 0, 0 },
	{ ST_EXPLAIN, 2, 15, 0, 0 },
	{ ST_END_RUNNING, 0, 16, 1, 0 },
	{ ST_END_RUNNING, 1, 17, 0, 0 },
	{ ST_JOB, 13, 18, 0, 0 },
	{ ST_JOB, 14, 18, 0, 0 },
	{ ST_JOB, 15, 18, 0, 0 },
	{ ST_JOB, 17, 18, 0, 0 },
	{ ST_JOB, 18, 18, 0, 0 },
	{ ST_CYCLE, 0, 20, 0, 0 },
	{ ST_CYCLE, 0, 22, 0, 0 },
	{ ST_END_PREEMPTING, 0, 24, 1, 0 },
	{ ST_END_PREEMPTING, 0, 24, 0, 0 },
	{ ST_CYCLE, 0, 25, 0, 0 },
	{ ST_CANCEL, 10, 26, 0, 0 },
	{ ST_CANCEL, 3, 26, 0, 0 },
	{ ST_STATE, 2, 27, SCHED_NODE_DRAINING, 0 },
	{ ST_NODE, 7, 27, 0, 0 },
	{ ST_NODE, 8, 27, 0, 0 },
	{ ST_REMOVE, 6, 27, 0, 0 },
	{ ST_JOB, 30, 28, 0, 0 },
	{ ST_LEASE_START, 30, 28, 0x01, 8 },
	{ ST_POLICY, 2, 29, 0, 0 },
	{ ST_CYCLE, 0, 70, 0, 0 },
	{ ST_EXPLAIN, 17, 70, 0, 0 },
	{ ST_STATE, 2, 71, SCHED_NODE_READY, 0 },
	{ ST_END_RUNNING, 0, 72, 1, 0 },
	{ ST_END_RUNNING, 0, 72, 0, 0 },
	{ ST_END_RUNNING, 1, 72, 1, 0 },
	{ ST_CYCLE, 0, 80, 0, 0 },
	{ ST_CANCEL, 30, 81, 0, 0 },
	{ ST_CYCLE, 0, 200, 0, 0 },
};

/* The arg-th (0-based) job of the wanted state, by id; 0 if none. */
static uint64_t nth_job(const struct sched_cluster *c, int state, uint64_t nth)
{
	for (uint64_t id = 1; id <= MAX_JOB_ID; id++)
		if (sched_job_state(c, id) == state && nth-- == 0)
			return id;
	return 0;
}

/* Runs one step: exactly one library call that may allocate. */
static int run_step(struct sched_cluster *c, struct sched_actions *acts, const struct step *s)
{
	int64_t now = FX_S(s->now_s);
	struct sched_error err = { 0 };

	switch (s->kind) {
	case ST_POLICY: {
		struct sched_policy p;

		make_policy(&p, s->id);
		return sched_set_policy(c, &p, &err);
	}
	case ST_NODE: {
		struct fx_node n;

		make_node(&n, s->id);
		return sched_node_upsert(c, fx_node_spec(&n), &err);
	}
	case ST_SHARES:
		return sched_tenant_set_shares(c, s->id, (uint32_t)s->arg);
	case ST_USAGE:
		return sched_tenant_set_usage(c, s->id, (double)s->arg, now);
	case ST_JOB: {
		struct fx_job j;

		make_job(&j, s->id);
		j.spec.submit_us = now;
		return sched_job_add(c, fx_job_spec(&j), &err);
	}
	case ST_CYCLE:
		return sched_cycle(c, now, acts, NULL);
	case ST_EXPLAIN: {
		struct sched_explain e;
		char buf[256];
		int rc = sched_job_explain(c, s->id, &e);

		if (rc == 0)
			sched_explain_format(&e, buf, sizeof buf);
		return rc == -ENOENT ? 0 : rc;
	}
	case ST_END_RUNNING: {
		uint64_t id = nth_job(c, SCHED_JOB_RUNNING, s->id);

		return id ? sched_lease_end(c, id, now, s->arg != 0) : 0;
	}
	case ST_END_PREEMPTING: {
		uint64_t id = nth_job(c, SCHED_JOB_PREEMPTING, 0);

		return id ? sched_lease_end(c, id, now, s->arg != 0) : 0;
	}
	case ST_CANCEL: {
		int rc = sched_job_cancel(c, s->id, now);

		return rc == -ENOENT ? 0 : rc;
	}
	case ST_STATE:
		return sched_node_set_state(c, s->id, (enum sched_node_state)s->arg);
	case ST_REMOVE:
		return sched_node_remove(c, s->id);
	case ST_LEASE_START: {
		struct sched_placement pl = { s->node, s->arg };

		return sched_lease_start(c, s->id, &pl, 1, now, &err);
	}
	}
	return -1;
}

static bool actions_equal(const struct sched_actions *a, size_t from_a,
                          const struct sched_actions *b, size_t from_b)
{
	if (a->len - from_a != b->len - from_b)
		return false;
	for (size_t i = 0; i < a->len - from_a; i++) {
		const struct sched_action *x = &a->items[from_a + i], *y = &b->items[from_b + i];

		if (x->kind != y->kind || x->job_id != y->job_id || x->node_id != y->node_id ||
		    x->gpu_mask != y->gpu_mask || x->for_job_id != y->for_job_id ||
		    x->deadline_us != y->deadline_us || x->gang_index != y->gang_index ||
		    x->gang_size != y->gang_size ||
		    (x->kind == SCHED_ACT_UNSCHEDULABLE && x->reason != y->reason))
			return false;
	}
	return true;
}

/* One run with the Nth allocation failing (once, or from then on). Returns
 * true when no failure was injected: the scenario is exhausted. */
static bool run_with_failure(long fail_at, bool persistent, size_t *nomem_seen)
{
	struct fx_alloc fa;
	struct sched_cluster *c, *ref;
	struct sched_actions acts = { 0 }, ref_acts = { 0 };
	bool done;

	fx_alloc_init(&fa);
	fa.fail_at = fail_at;
	fa.fail_all = persistent;
	c = sched_cluster_new(&fa.a);
	if (!c) {
		EXPECT(fa.failures > 0);
		EXPECT_INT(fa.live, 0);
		return false;
	}
	ref = sched_cluster_new(NULL);
	if (!ref) {
		fx_fail(__FILE__, __LINE__, "reference cluster: out of memory");
		sched_cluster_free(c);
		return true;
	}
	if (!EXPECT_EQUAL(c, ref))
		goto out;

	for (size_t i = 0; i < FX_ARRAY_LEN(scenario); i++) {
		const struct step *s = &scenario[i];
		size_t len_before = acts.len, ref_len_before = ref_acts.len;
		long failures_before = fa.failures;
		int rc = run_step(c, &acts, s);
		int ref_rc;

		if (rc == -ENOMEM) {
			(*nomem_seen)++;
			if (fa.failures == failures_before)
				fx_fail(__FILE__, __LINE__,
				        "step %zu: -ENOMEM with no failed allocation", i);
			if (!EXPECT_CHECK(c) || !EXPECT_EQUAL(c, ref)) {
				fprintf(stderr, "  (N = %ld%s, step %zu)\n", fail_at,
				        persistent ? ", persistent" : "", i);
				goto out;
			}
			if (acts.len != len_before)
				fx_fail(__FILE__, __LINE__,
				        "step %zu: failed cycle left %zu actions", i,
				        acts.len - len_before);
			if (persistent)
				goto out;
			rc = run_step(c, &acts, s);
		}
		ref_rc = run_step(ref, &ref_acts, s);
		if (rc != ref_rc) {
			fx_fail(__FILE__, __LINE__, "step %zu (N = %ld): returned %d, reference %d",
			        i, fail_at, rc, ref_rc);
			goto out;
		}
		if (ref_rc != 0)
			fx_fail(__FILE__, __LINE__, "step %zu: the scenario itself fails: %d (%s)",
			        i, ref_rc, fx_errno_name(ref_rc));
		if (!actions_equal(&acts, len_before, &ref_acts, ref_len_before))
			fx_fail(__FILE__, __LINE__, "step %zu (N = %ld): actions differ", i,
			        fail_at);
		if (!EXPECT_CHECK(c) || !EXPECT_EQUAL(c, ref)) {
			fprintf(stderr, "  (N = %ld%s, after step %zu)\n", fail_at,
			        persistent ? ", persistent" : "", i);
			goto out;
		}
	}
out:
	done = fa.failures == 0;
	sched_actions_free(c, &acts);
	sched_actions_free(ref, &ref_acts);
	sched_cluster_free(c);
	sched_cluster_free(ref);
	if (fa.live != 0)
		fx_fail(__FILE__, __LINE__, "N = %ld%s: %ld allocation(s) leaked", fail_at,
		        persistent ? " (persistent)" : "", fa.live);
	return done;
}

static void run_pass(bool persistent)
{
	size_t nomem_seen = 0;
	long n;
	int start_failures = fx_failures;

	for (n = 1; n < 200000; n++) {
		if (run_with_failure(n, persistent, &nomem_seen))
			break;
		/* Stop after a few broken runs: the first ones say it all. */
		if (fx_failures - start_failures > 20)
			break;
	}
	printf("%s: %ld allocation points, %zu -ENOMEM returns\n", fx_row, n - 1, nomem_seen);
	EXPECT(nomem_seen > 0);
}

/* The scenario itself must run cleanly, and do what it is meant to. */
static void test_scenario_sane(void)
{
	struct fx_alloc fa;
	struct sched_cluster *c;
	struct sched_actions acts = { 0 };
	size_t starts = 0, preempts = 0, unsched = 0;

	fx_row = "scenario runs cleanly";
	fx_alloc_init(&fa);
	c = sched_cluster_new(&fa.a);
	REQUIRE(c != NULL);
	for (size_t i = 0; i < FX_ARRAY_LEN(scenario); i++) {
		int rc = run_step(c, &acts, &scenario[i]);

		if (rc != 0)
			fx_fail(__FILE__, __LINE__, "step %zu: %d (%s)", i, rc, fx_errno_name(rc));
	}
	for (size_t i = 0; i < acts.len; i++) {
		starts += acts.items[i].kind == SCHED_ACT_START;
		preempts += acts.items[i].kind == SCHED_ACT_PREEMPT;
		unsched += acts.items[i].kind == SCHED_ACT_UNSCHEDULABLE;
	}
	EXPECT(starts >= 5);
	EXPECT(preempts >= 1);
	EXPECT(unsched >= 1);
	EXPECT_CHECK(c);
	sched_actions_free(c, &acts);
	sched_cluster_free(c);
	EXPECT_INT(fa.live, 0);
}

int main(void)
{
	test_scenario_sane();
	fx_row = "fail the Nth allocation once";
	run_pass(false);
	fx_row = "fail every allocation from the Nth";
	run_pass(true);
	return fx_finish("test_oom");
}
