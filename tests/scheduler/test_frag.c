/* test_frag.c — fragmentation-aware packing (w_frag): small jobs go to
 * small nodes and to the leftovers of big ones while wider jobs wait, whole
 * nodes stay whole for them, the measure follows the pending mix, and the
 * weight is validated by name. */
#include "fixture.h"

#define NOW       FX_S(100)
#define MAX_NODES 4
#define MAX_JOBS  4

struct fnode {
	uint64_t id; /* 0 ends the list */
	const char *gpus;
	uint64_t busy; /* held by a running job started at 0 */
};

struct fjob {
	uint64_t id; /* 0 ends the list */
	uint32_t gpus;
	int64_t submit_s; /* older first: the default order */
};

struct row {
	const char *name;
	struct fnode nodes[MAX_NODES];
	struct fjob jobs[MAX_JOBS];
	double w_frag, w_fit;
	/* per job, in order: the node it starts on, 0 = stays pending */
	uint64_t want_node[MAX_JOBS];
};

static const struct row rows[] = {
	{ "without w_frag the 1-GPU job breaks the 8-GPU node (lowest id) and the 8-GPU job waits",
	  { { 1, "8xH100", 0 }, { 2, "2xL4", 0 } },
	  { { 1, 1, 0 }, { 2, 8, 1 } },
	  0,
	  0,
	  { 1, 0 } },
	{ "with w_frag the 1-GPU job takes the small node and the 8-GPU job starts too",
	  { { 1, "8xH100", 0 }, { 2, "2xL4", 0 } },
	  { { 1, 1, 0 }, { 2, 8, 1 } },
	  1,
	  0,
	  { 2, 1 } },
	{ "w_frag: the leftover of a busy big node before a whole one",
	  { { 1, "8xH100", 0 }, { 2, "8xH100", 0x7f } },
	  { { 1, 1, 0 }, { 2, 8, 1 } },
	  1,
	  0,
	  { 2, 1 } },
	{ "plain best fit agrees there: the fullest node",
	  { { 1, "8xH100", 0 }, { 2, "8xH100", 0x7f } },
	  { { 1, 1, 0 }, { 2, 8, 1 } },
	  0,
	  1,
	  { 2, 1 } },
	{ "best fit takes the 2-GPU node a pending 2-GPU job could fill whole",
	  { { 1, "2xL4", 0 }, { 2, "8xH100", 0x1f } },
	  { { 1, 1, 0 }, { 2, 2, 1 } },
	  0,
	  1,
	  { 1, 2 } },
	{ "w_frag puts the 1-GPU job in the big node's leftover instead (fragmented "
	  "for nothing pending) and keeps the 2-GPU node whole",
	  { { 1, "2xL4", 0 }, { 2, "8xH100", 0x1f } },
	  { { 1, 1, 0 }, { 2, 2, 1 } },
	  1,
	  0,
	  { 2, 1 } },
	{ "nothing wider pending: no node is fragmented, the lowest id wins",
	  { { 1, "8xH100", 0 }, { 2, "2xL4", 0 } },
	  { { 1, 1, 0 }, { 2, 1, 1 } },
	  1,
	  0,
	  { 1, 1 } },
};

static void run_row(const struct row *r)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct sched_policy p = *sched_get_policy(c);
	struct fx_cycle fc = { 0 };
	p.w_frag = r->w_frag;
	p.w_fit = r->w_fit;
	p.fit_mode = SCHED_FIT_PACK;
	if (sched_set_policy(c, &p, NULL) != 0) {
		fx_fail(__FILE__, __LINE__, "policy rejected");
		goto out;
	}
	for (int i = 0; i < MAX_NODES && r->nodes[i].id; i++) {
		struct fx_node n;
		fx_node_init(&n, r->nodes[i].id, "eu-west", r->nodes[i].gpus);
		if (!fx_add_node(c, &n))
			goto out;
	}
	for (int i = 0; i < MAX_NODES && r->nodes[i].id; i++) {
		if (!r->nodes[i].busy)
			continue;
		struct fx_job b;
		fx_job_init(&b, 100 + r->nodes[i].id, (uint32_t)fx_popcount(r->nodes[i].busy));
		b.spec.max_duration_us = FX_S(86400);
		if (!fx_run_job(c, &b, r->nodes[i].id, r->nodes[i].busy, 0))
			goto out;
	}
	for (int i = 0; i < MAX_JOBS && r->jobs[i].id; i++) {
		struct fx_job j;
		fx_job_init(&j, r->jobs[i].id, r->jobs[i].gpus);
		j.spec.submit_us = FX_S(r->jobs[i].submit_s);
		if (!fx_add_job(c, &j))
			goto out;
	}
	if (!fx_run_cycle(&fc, c, NOW))
		goto out;
	for (int i = 0; i < MAX_JOBS && r->jobs[i].id; i++) {
		const struct sched_action *a = fx_find(&fc.acts, SCHED_ACT_START, r->jobs[i].id);
		if (!r->want_node[i]) {
			EXPECT(a == NULL);
			continue;
		}
		EXPECT(a != NULL);
		if (a)
			EXPECT_INT(a->node_id, r->want_node[i]);
	}
	EXPECT_CHECK(c);
out:
	fx_cycle_done(&fc);
	sched_cluster_free(c);
}

static void validation(void)
{
	static const double bad[] = { -1, 1000.5, 1e9 };
	for (size_t i = 0; i < FX_ARRAY_LEN(bad); i++) {
		fx_row = "w_frag out of [0, 1000] is refused naming the field";
		struct sched_policy p;
		struct sched_error e;
		sched_policy_default(&p);
		p.w_frag = bad[i];
		EXPECT_INT(sched_policy_validate(&p, &e), -EINVAL);
		EXPECT_STR(e.field, "w_frag");
	}
	fx_row = "w_frag at its bounds is accepted";
	struct sched_policy p;
	sched_policy_default(&p);
	EXPECT_INT(p.w_frag == 0, 1);
	p.w_frag = 1000;
	EXPECT_INT(sched_policy_validate(&p, NULL), 0);
}

int main(void)
{
	for (size_t i = 0; i < FX_ARRAY_LEN(rows); i++) {
		fx_row = rows[i].name;
		run_row(&rows[i]);
	}
	validation();
	return fx_finish("test_frag");
}
