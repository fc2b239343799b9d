/* test_scores.c — node scoring: each weight alone picks its node, pack vs
 * spread, min-max normalization (scale invariance), ties to the lowest id. */
#include "fixture.h"

#define NOW       FX_S(100)
#define MAX_NODES 5

struct snode {
	uint64_t id; /* 0 ends the list; nodes are added last to first */
	const char *gpus;
	int64_t price_micros;
	uint32_t reliability_ppm;
	const char *region;
	uint64_t busy;                  /* held by a running job */
	float tflops[SCHED_PREC_COUNT]; /* all zero = the template's */
};

struct row {
	const char *name;
	struct snode nodes[MAX_NODES];
	double w_price, w_perf_per_price, w_perf, w_fit, w_reliability, w_locality;
	enum sched_fit_mode fit_mode;
	int64_t price_scale;       /* multiplies every price; 0 = 1 */
	uint32_t gpn;              /* 0 = 1 */
	enum sched_precision prec; /* FP32 is 0: rows set it explicitly */
	const char *preferred_region;
	const char *regions;
	uint64_t want_node;
	uint64_t want_mask;
};

/* A mixed fleet: H100 (fastest, dearest, us-east), A100 (most reliable),
 * L4 (best TFLOPS per dollar), 3060 (cheapest, ap-south). FP16 figures:
 * 990, 312, 121, 25; per dollar: 247.5, 312, 403, 125. */
#define FLEET                                                              \
	{                                                                  \
		{ 1, "8xH100", 4000000, 950000, "us-east", 0, { 0 } },     \
		    { 2, "8xA100", 1000000, 999000, "eu-west", 0, { 0 } }, \
		    { 3, "8xL4", 300000, 900000, "eu-west", 0, { 0 } },    \
		{                                                          \
			4, "8x3060", 200000, 800000, "ap-south", 0,        \
			{                                                  \
				0                                          \
			}                                                  \
		}                                                          \
	}

/* Three equal H100 nodes with 2, 4 and 8 GPUs free. */
#define FILLING                                                               \
	{                                                                     \
		{ 1, "8xH100", 2000000, 990000, "eu-west", 0x3f, { 0 } },     \
		    { 2, "8xH100", 2000000, 990000, "eu-west", 0x0f, { 0 } }, \
		{                                                             \
			3, "8xH100", 2000000, 990000, "eu-west", 0,           \
			{                                                     \
				0                                             \
			}                                                     \
		}                                                             \
	}

static const struct row rows[] = {
	{ .name = "no weights: lowest id",
	  .nodes = FLEET,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 1,
	  .want_mask = 0x1 },
	{ .name = "price alone: cheapest",
	  .nodes = FLEET,
	  .w_price = 1,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 4,
	  .want_mask = 0x1 },
	{ .name = "perf alone: fastest",
	  .nodes = FLEET,
	  .w_perf = 1,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 1,
	  .want_mask = 0x1 },
	{ .name = "perf per price alone: best value",
	  .nodes = FLEET,
	  .w_perf_per_price = 1,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 3,
	  .want_mask = 0x1 },
	{ .name = "reliability alone: most reliable",
	  .nodes = FLEET,
	  .w_reliability = 1,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 2,
	  .want_mask = 0x1 },
	{ .name = "locality alone: preferred region",
	  .nodes = FLEET,
	  .w_locality = 1,
	  .preferred_region = "ap-south",
	  .prec = SCHED_PREC_FP16,
	  .want_node = 4,
	  .want_mask = 0x1 },
	{ .name = "locality alone: two in the region, lowest id",
	  .nodes = FLEET,
	  .w_locality = 1,
	  .preferred_region = "eu-west",
	  .prec = SCHED_PREC_FP16,
	  .want_node = 2,
	  .want_mask = 0x1 },
	{ .name = "locality outweighs price",
	  .nodes = FLEET,
	  .w_locality = 1,
	  .w_price = 0.5,
	  .preferred_region = "us-east",
	  .prec = SCHED_PREC_FP16,
	  .want_node = 1,
	  .want_mask = 0x1 },
	{ .name = "price and perf 1:1 (normalized)",
	  .nodes = FLEET,
	  .w_price = 1,
	  .w_perf = 1,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 2,
	  .want_mask = 0x1 },
	{ .name = "price and perf 1:1, prices x1000",
	  .nodes = FLEET,
	  .w_price = 1,
	  .w_perf = 1,
	  .price_scale = 1000,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 2,
	  .want_mask = 0x1 },
	{ .name = "price and perf 1:1, prices x1000000",
	  .nodes = FLEET,
	  .w_price = 1,
	  .w_perf = 1,
	  .price_scale = 1000000,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 2,
	  .want_mask = 0x1 },
	{ .name = "price and perf 1:2",
	  .nodes = FLEET,
	  .w_price = 1,
	  .w_perf = 2,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 1,
	  .want_mask = 0x1 },
	{ .name = "price and perf 1:2, prices x1000",
	  .nodes = FLEET,
	  .w_price = 1,
	  .w_perf = 2,
	  .price_scale = 1000,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 1,
	  .want_mask = 0x1 },
	{ .name = "weights scale together",
	  .nodes = FLEET,
	  .w_price = 500,
	  .w_perf = 500,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 2,
	  .want_mask = 0x1 },
	{ .name = "perf per price in FP8: only FP8 nodes count",
	  .nodes = FLEET,
	  .w_perf_per_price = 1,
	  .prec = SCHED_PREC_FP8,
	  .want_node = 3,
	  .want_mask = 0x1 },
	{ .name = "equal component adds nothing (no NaN)",
	  .nodes = { { 1, "8xH100", 3000000, 990000, "eu-west", 0, { 0 } },
	             { 2, "8xH100", 1000000, 990000, "eu-west", 0, { 0 } },
	             { 3, "8xH100", 2000000, 990000, "eu-west", 0, { 0 } } },
	  .w_reliability = 5,
	  .w_perf = 5,
	  .w_price = 1,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 2,
	  .want_mask = 0x1 },
	{ .name = "single candidate scored alone",
	  .nodes = FLEET,
	  .w_price = 1,
	  .w_perf = 1,
	  .regions = "us-east",
	  .prec = SCHED_PREC_FP16,
	  .want_node = 1,
	  .want_mask = 0x1 },
	{ .name = "perf uses the job's precision (FP16)",
	  .nodes = { { 1, "8xH100", 2000000, 990000, "eu-west", 0, { 60, 400, 1000, 1000, 100 } },
	             { 2, "8xH100", 2000000, 990000, "eu-west", 0, { 60, 400, 500, 500, 800 } } },
	  .w_perf = 1,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 1,
	  .want_mask = 0x1 },
	{ .name = "perf uses the job's precision (FP8)",
	  .nodes = { { 1, "8xH100", 2000000, 990000, "eu-west", 0, { 60, 400, 1000, 1000, 100 } },
	             { 2, "8xH100", 2000000, 990000, "eu-west", 0, { 60, 400, 500, 500, 800 } } },
	  .w_perf = 1,
	  .prec = SCHED_PREC_FP8,
	  .want_node = 2,
	  .want_mask = 0x1 },
	{ .name = "ties: lowest id, not first added",
	  .nodes = { { 7, "8xH100", 2000000, 990000, "eu-west", 0, { 0 } },
	             { 3, "8xH100", 2000000, 990000, "eu-west", 0, { 0 } },
	             { 5, "8xH100", 2000000, 990000, "eu-west", 0, { 0 } } },
	  .w_price = 1,
	  .w_perf = 1,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 3,
	  .want_mask = 0x1 },

	/* fit */
	{ .name = "pack: one GPU to the fullest node",
	  .nodes = FILLING,
	  .w_fit = 1,
	  .fit_mode = SCHED_FIT_PACK,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 1,
	  .want_mask = 0x40 },
	{ .name = "spread: one GPU to the emptiest node",
	  .nodes = FILLING,
	  .w_fit = 1,
	  .fit_mode = SCHED_FIT_SPREAD,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 3,
	  .want_mask = 0x1 },
	{ .name = "pack: two GPUs fill a node",
	  .nodes = FILLING,
	  .w_fit = 1,
	  .fit_mode = SCHED_FIT_PACK,
	  .gpn = 2,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 1,
	  .want_mask = 0xc0 },
	{ .name = "pack: three GPUs to the fullest node that fits",
	  .nodes = FILLING,
	  .w_fit = 1,
	  .fit_mode = SCHED_FIT_PACK,
	  .gpn = 3,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 2,
	  .want_mask = 0x70 },
	{ .name = "spread: three GPUs",
	  .nodes = FILLING,
	  .w_fit = 1,
	  .fit_mode = SCHED_FIT_SPREAD,
	  .gpn = 3,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 3,
	  .want_mask = 0x7 },
	{ .name = "pack: counts GPUs left after placement, small node wins",
	  .nodes = { { 1, "8xH100", 2000000, 990000, "eu-west", 0, { 0 } },
	             { 2, "2xH100", 2000000, 990000, "eu-west", 0, { 0 } } },
	  .w_fit = 1,
	  .fit_mode = SCHED_FIT_PACK,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 2,
	  .want_mask = 0x1 },
	{ .name = "spread: big node wins",
	  .nodes = { { 1, "2xH100", 2000000, 990000, "eu-west", 0, { 0 } },
	             { 2, "8xH100", 2000000, 990000, "eu-west", 0, { 0 } } },
	  .w_fit = 1,
	  .fit_mode = SCHED_FIT_SPREAD,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 2,
	  .want_mask = 0x1 },
	{ .name = "pack outweighed by price",
	  .nodes = { { 1, "8xH100", 3000000, 990000, "eu-west", 0x3f, { 0 } },
	             { 2, "8xH100", 1000000, 990000, "eu-west", 0, { 0 } } },
	  .w_fit = 1,
	  .w_price = 2,
	  .fit_mode = SCHED_FIT_PACK,
	  .prec = SCHED_PREC_FP16,
	  .want_node = 2,
	  .want_mask = 0x1 },
};

static void run_row(const struct row *r)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct sched_policy p = *sched_get_policy(c);
	struct fx_cycle fc = { 0 };
	struct fx_job j;
	const struct sched_action *a;
	int nn = 0;
	int64_t scale = r->price_scale ? r->price_scale : 1;

	p.w_price = r->w_price;
	p.w_perf_per_price = r->w_perf_per_price;
	p.w_perf = r->w_perf;
	p.w_fit = r->w_fit;
	p.w_reliability = r->w_reliability;
	p.w_locality = r->w_locality;
	p.fit_mode = r->fit_mode;
	if (sched_set_policy(c, &p, NULL) != 0) {
		fx_fail(__FILE__, __LINE__, "policy rejected");
		goto out;
	}

	while (nn < MAX_NODES && r->nodes[nn].id)
		nn++;
	for (int i = nn - 1; i >= 0; i--) {
		const struct snode *s = &r->nodes[i];
		struct fx_node n;
		bool custom = false;

		fx_node_init(&n, s->id, s->region, s->gpus);
		n.spec.price_micros = s->price_micros * scale;
		n.spec.reliability_ppm = s->reliability_ppm;
		for (int k = 0; k < SCHED_PREC_COUNT; k++)
			custom |= s->tflops[k] != 0;
		for (uint32_t g = 0; custom && g < n.spec.ngpus; g++)
			memcpy(n.gpus[g].tflops, s->tflops, sizeof s->tflops);
		if (!fx_add_node(c, &n))
			goto out;
	}
	for (int i = 0; i < nn; i++) {
		struct fx_job b;

		if (!r->nodes[i].busy)
			continue;
		fx_job_init(&b, 100 + r->nodes[i].id, (uint32_t)fx_popcount(r->nodes[i].busy));
		if (!fx_run_job(c, &b, r->nodes[i].id, r->nodes[i].busy, 0))
			goto out;
	}

	fx_job_init(&j, 1, r->gpn ? r->gpn : 1);
	j.spec.precision = r->prec;
	j.spec.preferred_region = r->preferred_region;
	fx_job_regions(&j, r->regions);
	if (!fx_add_job(c, &j) || !fx_run_cycle(&fc, c, NOW))
		goto out;
	EXPECT_CHECK(c);
	a = fx_find(&fc.acts, SCHED_ACT_START, 1);
	if (!a) {
		fx_fail(__FILE__, __LINE__, "job not started");
		goto out;
	}
	EXPECT_INT(a->node_id, r->want_node);
	EXPECT_HEX(a->gpu_mask, r->want_mask);
	EXPECT_INT(fx_count(&fc.acts, 0, 1), 1);
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
	return fx_finish("test_scores");
}
