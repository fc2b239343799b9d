/* test_filters.c — one row per node filter (and the passing case): does the
 * job get placed, and does sched_job_explain count the node under the
 * expected first failing filter. */
#include "fixture.h"

#include <stdlib.h>

#define FITS       (-1)
#define NOW        FX_S(100)
#define BLOCKER_ID 800
#define HIGH_ID    900

struct row {
	const char *name;
	/* the node (id 1); NULL/0 fields take the fixture defaults */
	const char *gpus; /* layout; NULL = "8xH100@1" */
	const char *region;
	enum sched_node_state state;
	bool unverified;
	int64_t price_micros;
	const char *labels;
	const char *taints;
	uint64_t busy; /* GPUs held by a running job since 0, ends at 1000 s */
	/* the job (id 1) */
	uint32_t gpn; /* 0 = 1 */
	uint32_t min_memory_mib;
	uint16_t min_cc;
	const char *prec; /* NULL = FP16 */
	float min_tflops_per_gpu;
	float min_tflops_total;
	bool nvlink;
	const char *regions;
	const char *selectors;
	const char *tolerations;
	int64_t max_price_micros;
	int64_t duration_s; /* 0 = 3600 */
	/* policy */
	bool allow_unverified;
	/* a class-4 job wanting the whole node is queued too, with backfill */
	bool high_job;
	/* expected */
	int want;      /* FITS or enum sched_reason */
	uint64_t mask; /* the START's GPUs when FITS */
};

static const struct row rows[] = {
	/* passing */
	{ .name = "fits: one GPU, lowest index", .want = FITS, .mask = 0x1 },
	{ .name = "fits: four GPUs, lowest indexes", .gpn = 4, .want = FITS, .mask = 0xf },
	{ .name = "fits: whole node", .gpn = 8, .want = FITS, .mask = 0xff },

	/* node state */
	{ .name = "state: draining takes no work",
	  .state = SCHED_NODE_DRAINING,
	  .want = SCHED_R_NODE_STATE },
	{ .name = "state: cordoned takes no work",
	  .state = SCHED_NODE_CORDONED,
	  .want = SCHED_R_NODE_STATE },
	{ .name = "state: lost takes no work",
	  .state = SCHED_NODE_LOST,
	  .want = SCHED_R_NODE_STATE },

	/* verification */
	{ .name = "unverified: rejected by default",
	  .unverified = true,
	  .want = SCHED_R_UNVERIFIED },
	{ .name = "unverified: allowed by policy",
	  .unverified = true,
	  .allow_unverified = true,
	  .want = FITS,
	  .mask = 0x1 },

	/* region */
	{ .name = "region: not in the allowed list", .regions = "us-east", .want = SCHED_R_REGION },
	{ .name = "region: one of the allowed list",
	  .regions = "us-east,eu-west",
	  .want = FITS,
	  .mask = 0x1 },
	{ .name = "region: no allowed list means any",
	  .region = "ap-south",
	  .want = FITS,
	  .mask = 0x1 },

	/* memory */
	{ .name = "memory: equal to the minimum fits",
	  .min_memory_mib = 81920,
	  .want = FITS,
	  .mask = 0x1 },
	{ .name = "memory: one MiB short", .min_memory_mib = 81921, .want = SCHED_R_MEMORY },

	/* compute capability */
	{ .name = "cc: equal to the minimum fits", .min_cc = 90, .want = FITS, .mask = 0x1 },
	{ .name = "cc: A100 below 9.0",
	  .gpus = "8xA100@1",
	  .min_cc = 90,
	  .want = SCHED_R_COMPUTE_CAP },

	/* precision */
	{ .name = "precision: FP8 on H100 fits", .prec = "FP8", .want = FITS, .mask = 0x1 },
	{ .name = "precision: FP8 missing on A100",
	  .gpus = "8xA100@1",
	  .prec = "FP8",
	  .want = SCHED_R_PRECISION },

	/* throughput */
	{ .name = "tflops: per GPU equal fits",
	  .min_tflops_per_gpu = 990,
	  .want = FITS,
	  .mask = 0x1 },
	{ .name = "tflops: per GPU above the node",
	  .min_tflops_per_gpu = 991,
	  .want = SCHED_R_TFLOPS },
	{ .name = "tflops: total split over GPUs fits",
	  .gpn = 2,
	  .min_tflops_total = 1980,
	  .want = FITS,
	  .mask = 0x3 },
	{ .name = "tflops: total split over GPUs too high",
	  .gpn = 2,
	  .min_tflops_total = 1981,
	  .want = SCHED_R_TFLOPS },
	{ .name = "tflops: the larger of per-GPU and total share",
	  .gpn = 2,
	  .min_tflops_per_gpu = 100,
	  .min_tflops_total = 2000,
	  .want = SCHED_R_TFLOPS },
	{ .name = "tflops: figure of the job's precision",
	  .prec = "FP32",
	  .min_tflops_per_gpu = 68,
	  .want = SCHED_R_TFLOPS },

	/* taints */
	{ .name = "taint: not tolerated", .taints = "dedicated=ml", .want = SCHED_R_TAINT },
	{ .name = "taint: tolerated exactly",
	  .taints = "dedicated=ml",
	  .tolerations = "dedicated=ml",
	  .want = FITS,
	  .mask = 0x1 },
	{ .name = "taint: tolerated by key",
	  .taints = "dedicated=ml",
	  .tolerations = "dedicated",
	  .want = FITS,
	  .mask = 0x1 },
	{ .name = "taint: other value not tolerated",
	  .taints = "dedicated=ml",
	  .tolerations = "dedicated=web",
	  .want = SCHED_R_TAINT },
	{ .name = "taint: key-only taint tolerated by key",
	  .taints = "preview",
	  .tolerations = "preview",
	  .want = FITS,
	  .mask = 0x1 },
	{ .name = "taint: key-only taint not tolerated by key=value",
	  .taints = "preview",
	  .tolerations = "preview=yes",
	  .want = SCHED_R_TAINT },
	{ .name = "taint: every taint must be tolerated",
	  .taints = "dedicated=ml,preview",
	  .tolerations = "dedicated=ml",
	  .want = SCHED_R_TAINT },
	{ .name = "taint: several tolerated",
	  .taints = "dedicated=ml,preview",
	  .tolerations = "preview,dedicated",
	  .want = FITS,
	  .mask = 0x1 },

	/* price */
	{ .name = "price: equal to the cap fits",
	  .max_price_micros = 2000000,
	  .want = FITS,
	  .mask = 0x1 },
	{ .name = "price: one micro above the cap",
	  .max_price_micros = 1999999,
	  .want = SCHED_R_PRICE },
	{ .name = "price: zero cap means none",
	  .price_micros = 900000000,
	  .want = FITS,
	  .mask = 0x1 },

	/* labels */
	{ .name = "label: selector matched",
	  .labels = "tier=gold,zone=a",
	  .selectors = "tier=gold",
	  .want = FITS,
	  .mask = 0x1 },
	{ .name = "label: selector missing",
	  .labels = "zone=a",
	  .selectors = "tier=gold",
	  .want = SCHED_R_LABEL },
	{ .name = "label: selector value differs",
	  .labels = "tier=silver",
	  .selectors = "tier=gold",
	  .want = SCHED_R_LABEL },
	{ .name = "label: every selector must match",
	  .labels = "tier=gold",
	  .selectors = "tier=gold,zone=a",
	  .want = SCHED_R_LABEL },

	/* GPU count (idle) */
	{ .name = "count: more GPUs than the node has", .gpn = 9, .want = SCHED_R_GPU_COUNT },
	{ .name = "count: only matching GPUs count",
	  .gpus = "4xA100 4xH100",
	  .min_cc = 90,
	  .gpn = 5,
	  .want = SCHED_R_GPU_COUNT },
	{ .name = "count: matching part chosen on a mixed node",
	  .gpus = "4xA100 4xH100",
	  .min_cc = 90,
	  .gpn = 4,
	  .want = FITS,
	  .mask = 0xf0 },
	{ .name = "count: NVLink group smaller than the job",
	  .gpus = "4xH100@1 4xH100@2",
	  .gpn = 5,
	  .nvlink = true,
	  .want = SCHED_R_GPU_COUNT },
	{ .name = "count: without NVLink the groups do not matter",
	  .gpus = "4xH100@1 4xH100@2",
	  .gpn = 5,
	  .want = FITS,
	  .mask = 0x1f },
	{ .name = "count: group 0 cannot satisfy NVLink",
	  .gpus = "8xH100",
	  .gpn = 2,
	  .nvlink = true,
	  .want = SCHED_R_GPU_COUNT },
	{ .name = "count: NVLink irrelevant for one GPU",
	  .gpus = "8xH100",
	  .gpn = 1,
	  .nvlink = true,
	  .want = FITS,
	  .mask = 0x1 },

	/* free GPUs */
	{ .name = "free: too few free now", .busy = 0x7f, .gpn = 2, .want = SCHED_R_FREE_GPUS },
	{ .name = "free: the last free GPU", .busy = 0x7f, .want = FITS, .mask = 0x80 },
	{ .name = "free: lowest free indexes", .busy = 0x15, .gpn = 3, .want = FITS, .mask = 0x2a },

	/* interconnect */
	{ .name = "interconnect: free GPUs split across groups",
	  .gpus = "4xH100@1 4xH100@2",
	  .busy = 0x33,
	  .gpn = 3,
	  .nvlink = true,
	  .want = SCHED_R_INTERCONNECT },
	{ .name = "interconnect: equal groups, lowest group wins",
	  .gpus = "4xH100@1 4xH100@2",
	  .busy = 0x33,
	  .gpn = 2,
	  .nvlink = true,
	  .want = FITS,
	  .mask = 0x0c },
	{ .name = "interconnect: fullest group that still fits",
	  .gpus = "4xH100@1 4xH100@2",
	  .busy = 0x31,
	  .gpn = 2,
	  .nvlink = true,
	  .want = FITS,
	  .mask = 0xc0 },

	/* reservations (a class-4 job reserves the whole node for 1000 s) */
	{ .name = "reserved: long job may not use reserved GPUs",
	  .busy = 0x0f,
	  .high_job = true,
	  .want = SCHED_R_RESERVED },
	{ .name = "reserved: job ending exactly at the reservation backfills",
	  .busy = 0x0f,
	  .high_job = true,
	  .duration_s = 900,
	  .want = FITS,
	  .mask = 0x10 },
	{ .name = "reserved: job ending 1 s after the reservation",
	  .busy = 0x0f,
	  .high_job = true,
	  .duration_s = 901,
	  .want = SCHED_R_RESERVED },

	/* first failing filter wins */
	{ .name = "order: state before verification",
	  .state = SCHED_NODE_CORDONED,
	  .unverified = true,
	  .want = SCHED_R_NODE_STATE },
	{ .name = "order: verification before region",
	  .unverified = true,
	  .regions = "us-east",
	  .want = SCHED_R_UNVERIFIED },
	{ .name = "order: region before memory",
	  .regions = "us-east",
	  .min_memory_mib = 200000,
	  .want = SCHED_R_REGION },
	{ .name = "order: memory before compute capability",
	  .gpus = "8xA100@1",
	  .min_memory_mib = 90000,
	  .min_cc = 90,
	  .want = SCHED_R_MEMORY },
	{ .name = "order: compute capability before precision",
	  .gpus = "8xA100@1",
	  .min_cc = 90,
	  .prec = "FP8",
	  .want = SCHED_R_COMPUTE_CAP },
	{ .name = "order: precision before tflops",
	  .gpus = "8xA100@1",
	  .prec = "FP8",
	  .min_tflops_per_gpu = 5000,
	  .want = SCHED_R_PRECISION },
	{ .name = "order: tflops before taint",
	  .min_tflops_per_gpu = 5000,
	  .taints = "dedicated=ml",
	  .want = SCHED_R_TFLOPS },
	{ .name = "order: taint before price",
	  .taints = "dedicated=ml",
	  .max_price_micros = 1,
	  .want = SCHED_R_TAINT },
	{ .name = "order: price before label",
	  .max_price_micros = 1,
	  .selectors = "tier=gold",
	  .want = SCHED_R_PRICE },
	{ .name = "order: label before GPU count",
	  .selectors = "tier=gold",
	  .gpn = 9,
	  .want = SCHED_R_LABEL },
	{ .name = "order: GPU count before free GPUs",
	  .busy = 0xff,
	  .gpn = 9,
	  .want = SCHED_R_GPU_COUNT },
	{ .name = "order: free GPUs before interconnect",
	  .gpus = "4xH100@1 4xH100@2",
	  .busy = 0x77,
	  .gpn = 3,
	  .nvlink = true,
	  .want = SCHED_R_FREE_GPUS },
	{ .name = "order: state before free GPUs",
	  .state = SCHED_NODE_DRAINING,
	  .busy = 0xff,
	  .want = SCHED_R_NODE_STATE },
};

static enum sched_precision prec_named(const char *s)
{
	static const char *const names[SCHED_PREC_COUNT] = { "FP32", "TF32", "FP16", "BF16",
		                                             "FP8" };

	if (!s)
		return SCHED_PREC_FP16;
	for (int i = 0; i < SCHED_PREC_COUNT; i++)
		if (strcmp(s, names[i]) == 0)
			return (enum sched_precision)i;
	fprintf(stderr, "unknown precision %s\n", s);
	exit(2);
}

/* The explanation of a one-node cluster: the node counted under want. */
static void expect_explained(const struct sched_cluster *c, const struct row *r)
{
	struct sched_explain e;

	if (!fx_explain(c, 1, &e))
		return;
	EXPECT_INT(e.state, SCHED_JOB_PENDING);
	EXPECT_INT(e.total_nodes, 1);
	EXPECT_INT(e.gang_nodes, 1);
	EXPECT_INT(e.fit_nodes, r->want == FITS ? 1 : 0);
	for (int i = 0; i < SCHED_R_COUNT; i++) {
		int want = i == r->want ? 1 : 0;

		if ((int)e.count[i] != want)
			fx_fail(__FILE__, __LINE__, "count[%s] = %u, want %d",
			        sched_reason_text((enum sched_reason)i), e.count[i], want);
	}
	if (r->want != FITS && r->want != SCHED_R_RESERVED && r->want != SCHED_R_FREE_GPUS &&
	    r->want != SCHED_R_INTERCONNECT && r->want != SCHED_R_NODE_STATE)
		EXPECT(!e.fleet_feasible);
	if (r->want == FITS || r->want == SCHED_R_FREE_GPUS || r->want == SCHED_R_INTERCONNECT ||
	    r->want == SCHED_R_RESERVED)
		EXPECT(e.fleet_feasible);
}

static void run_row(const struct row *r)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct sched_policy p = *sched_get_policy(c);
	struct fx_node n;
	struct fx_job j, blocker, high;
	struct fx_cycle fc = { 0 };
	const struct sched_action *a;
	char buf[512];

	p.allow_unverified = r->allow_unverified;
	p.backfill = r->high_job;
	if (sched_set_policy(c, &p, NULL) != 0)
		fx_fail(__FILE__, __LINE__, "policy rejected");

	fx_node_init(&n, 1, r->region ? r->region : "eu-west", r->gpus ? r->gpus : "8xH100@1");
	n.spec.state = r->state;
	n.spec.verified = !r->unverified;
	if (r->price_micros)
		n.spec.price_micros = r->price_micros;
	fx_node_labels(&n, r->labels);
	fx_node_taints(&n, r->taints);
	if (!fx_add_node(c, &n))
		goto out;

	if (r->busy) {
		fx_job_init(&blocker, BLOCKER_ID, (uint32_t)fx_popcount(r->busy));
		blocker.spec.max_duration_us = FX_S(1000);
		if (!fx_run_job(c, &blocker, 1, r->busy, 0))
			goto out;
	}
	if (r->high_job) {
		fx_job_init(&high, HIGH_ID, n.spec.ngpus);
		high.spec.priority_class = 4;
		if (!fx_add_job(c, &high))
			goto out;
	}

	fx_job_init(&j, 1, r->gpn ? r->gpn : 1);
	j.spec.min_memory_mib = r->min_memory_mib;
	j.spec.min_compute_cap = r->min_cc;
	j.spec.precision = prec_named(r->prec);
	j.spec.min_tflops_per_gpu = r->min_tflops_per_gpu;
	j.spec.min_tflops_total = r->min_tflops_total;
	j.spec.require_nvlink = r->nvlink;
	j.spec.max_price_micros = r->max_price_micros;
	if (r->duration_s)
		j.spec.max_duration_us = FX_S(r->duration_s);
	fx_job_regions(&j, r->regions);
	fx_job_selectors(&j, r->selectors);
	fx_job_tolerations(&j, r->tolerations);
	if (!fx_add_job(c, &j))
		goto out;

	/* Reservations exist only after a cycle. */
	if (!r->high_job)
		expect_explained(c, r);

	if (!fx_run_cycle(&fc, c, NOW))
		goto out;
	EXPECT_CHECK(c);
	a = fx_find(&fc.acts, SCHED_ACT_START, 1);
	if (r->want == FITS) {
		if (!a) {
			fx_fail(__FILE__, __LINE__, "job not started");
		} else {
			EXPECT_INT(a->node_id, 1);
			EXPECT_HEX(a->gpu_mask, r->mask);
			EXPECT_INT(a->gang_index, 0);
			EXPECT_INT(a->gang_size, 1);
			EXPECT_INT(a->deadline_us, NOW + j.spec.max_duration_us);
		}
		EXPECT_INT(sched_job_state(c, 1), SCHED_JOB_RUNNING);
	} else {
		EXPECT(a == NULL);
		EXPECT_INT(sched_job_state(c, 1), SCHED_JOB_PENDING);
		expect_explained(c, r);
		struct sched_explain e;

		if (fx_explain(c, 1, &e)) {
			sched_explain_format(&e, buf, sizeof buf);
			if (!strstr(buf, sched_reason_text((enum sched_reason)r->want)))
				fx_fail(__FILE__, __LINE__, "format \"%s\" lacks \"%s\"", buf,
				        sched_reason_text((enum sched_reason)r->want));
			if (strncmp(buf, "0/1 nodes fit", 13) != 0)
				fx_fail(__FILE__, __LINE__, "format \"%s\"", buf);
		}
	}
	if (r->high_job) {
		struct sched_explain e;

		EXPECT(fx_find(&fc.acts, SCHED_ACT_START, HIGH_ID) == NULL);
		if (fx_explain(c, HIGH_ID, &e)) {
			EXPECT(e.reserved);
			EXPECT_INT(e.reserved_start_us, FX_S(1000));
		}
	}
out:
	fx_cycle_done(&fc);
	sched_cluster_free(c);
}

/* Counts over several nodes, and the one-line message built from them. */
static void test_explain_format(void)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct fx_node n;
	struct fx_job j, b;
	struct sched_explain e;
	char buf[512], small[12];
	size_t len, len2;
	const char *p3, *p2, *p1;
	char want3[96], want2[96], want1[96];

	fx_row = "explain: counts over six nodes and the message";
	/* nodes 1-3: busy; 4-5: 3060 (12 GiB); 6: too expensive; 7-8: fit */
	for (uint64_t id = 1; id <= 8; id++) {
		fx_node_init(&n, id, "eu-west", id == 4 || id == 5 ? "4x3060" : "4xH100");
		if (id == 6)
			n.spec.price_micros = 50000000;
		if (!fx_add_node(c, &n))
			goto out;
	}
	for (uint64_t id = 1; id <= 3; id++) {
		fx_job_init(&b, 100 + id, 4);
		if (!fx_run_job(c, &b, id, 0xf, 0))
			goto out;
	}
	fx_job_init(&j, 1, 2);
	j.spec.min_memory_mib = 40960;
	j.spec.max_price_micros = 10000000;
	if (!fx_add_job(c, &j) || !fx_explain(c, 1, &e))
		goto out;
	EXPECT_INT(e.total_nodes, 8);
	EXPECT_INT(e.fit_nodes, 2);
	EXPECT_INT(e.count[SCHED_R_FREE_GPUS], 3);
	EXPECT_INT(e.count[SCHED_R_MEMORY], 2);
	EXPECT_INT(e.count[SCHED_R_PRICE], 1);
	EXPECT(e.fleet_feasible);
	EXPECT(!e.reserved);

	/* Make the two fitting nodes busy too: 0/8 fit. */
	for (uint64_t id = 7; id <= 8; id++) {
		fx_job_init(&b, 100 + id, 4);
		if (!fx_run_job(c, &b, id, 0xf, 0))
			goto out;
	}
	if (!fx_explain(c, 1, &e))
		goto out;
	EXPECT_INT(e.fit_nodes, 0);
	EXPECT_INT(e.count[SCHED_R_FREE_GPUS], 5);

	len = sched_explain_format(&e, buf, sizeof buf);
	EXPECT_INT(len, strlen(buf));
	if (strncmp(buf, "0/8 nodes fit", 13) != 0)
		fx_fail(__FILE__, __LINE__, "format \"%s\" does not start with 0/8", buf);
	snprintf(want3, sizeof want3, "5 %s", sched_reason_text(SCHED_R_FREE_GPUS));
	snprintf(want2, sizeof want2, "2 %s", sched_reason_text(SCHED_R_MEMORY));
	snprintf(want1, sizeof want1, "1 %s", sched_reason_text(SCHED_R_PRICE));
	p3 = strstr(buf, want3);
	p2 = strstr(buf, want2);
	p1 = strstr(buf, want1);
	if (!p3 || !p2 || !p1 || !(p3 < p2 && p2 < p1))
		fx_fail(__FILE__, __LINE__,
		        "format \"%s\": want \"%s\", \"%s\", \"%s\" "
		        "in that order",
		        buf, want3, want2, want1);
	if (!strstr(buf, "5 too few free GPUs"))
		fx_fail(__FILE__, __LINE__, "format \"%s\" lacks \"5 too few free GPUs\"", buf);

	/* snprintf-like: truncates, terminates, reports the full length. */
	memset(small, 'x', sizeof small);
	len2 = sched_explain_format(&e, small, sizeof small);
	EXPECT_INT(len2, len);
	EXPECT_INT(small[sizeof small - 1], '\0');
	EXPECT(strncmp(small, buf, sizeof small - 1) == 0);
	EXPECT_INT(sched_explain_format(&e, NULL, 0), len);

	EXPECT_INT(sched_job_explain(c, 4242, &e), -ENOENT);
out:
	sched_cluster_free(c);
}

static void test_reason_texts(void)
{
	fx_row = "reason texts: named, distinct";
	EXPECT_STR(sched_reason_text(SCHED_R_FREE_GPUS), "too few free GPUs");
	for (int i = 0; i < SCHED_R_COUNT; i++) {
		const char *a = sched_reason_text((enum sched_reason)i);

		if (!a || !*a) {
			fx_fail(__FILE__, __LINE__, "reason %d has no text", i);
			continue;
		}
		for (int k = 0; k < i; k++)
			if (strcmp(a, sched_reason_text((enum sched_reason)k)) == 0)
				fx_fail(__FILE__, __LINE__, "reasons %d and %d share \"%s\"", k, i,
				        a);
	}
}

/* ---- jobs no node of the fleet could ever host ------------------------- */

struct infeasible_row {
	const char *name;
	uint32_t gpn; /* on 8-GPU H100 nodes */
	uint32_t min_memory_mib;
	const char *regions;
	bool busy; /* every GPU of the fleet held */
	int64_t timeout_s, now_s;
	bool want_removed;
	enum sched_reason want_reason;
};

static const struct infeasible_row infeasible_rows[] = {
	{ "infeasible: given up at the timeout", 9, 0, NULL, false, 100, 100, true,
	  SCHED_R_GPU_COUNT },
	{ "infeasible: kept before the timeout", 9, 0, NULL, false, 100, 99, false,
	  SCHED_R_GPU_COUNT },
	{ "infeasible: timeout 0 never gives up", 9, 0, NULL, false, 0, 100000, false,
	  SCHED_R_GPU_COUNT },
	{ "infeasible: busy fleet is not infeasible", 2, 0, NULL, true, 100, 1000, false,
	  SCHED_R_GPU_COUNT },
	{ "infeasible: reason is the filter ruling out most nodes", 1, 100000, NULL, false, 100,
	  200, true, SCHED_R_MEMORY },
	{ "infeasible: region rules out every node", 1, 0, "nowhere", false, 100, 200, true,
	  SCHED_R_REGION },
};

static void run_infeasible_row(const struct infeasible_row *r)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct sched_policy p = *sched_get_policy(c);
	struct fx_cycle fc = { 0 };
	struct fx_node n;
	struct fx_job j;
	struct sched_explain e;
	const struct sched_action *a;

	p.infeasible_timeout_us = FX_S(r->timeout_s);
	REQUIRE_OK(sched_set_policy(c, &p, NULL));
	for (uint64_t id = 1; id <= 3; id++) {
		fx_node_init(&n, id, "eu-west", "8xH100");
		fx_add_node(c, &n);
		if (r->busy) {
			fx_job_init(&j, 100 + id, 8);
			fx_run_job(c, &j, id, 0xff, 0);
		}
	}
	fx_job_init(&j, 1, r->gpn);
	j.spec.min_memory_mib = r->min_memory_mib;
	fx_job_regions(&j, r->regions);
	if (!fx_add_job(c, &j) || !fx_explain(c, 1, &e))
		goto out;
	EXPECT_INT(e.fleet_feasible, r->busy);
	if (!fx_run_cycle(&fc, c, FX_S(r->now_s)))
		goto out;
	a = fx_find(&fc.acts, SCHED_ACT_UNSCHEDULABLE, 1);
	if (r->want_removed) {
		if (!a) {
			fx_fail(__FILE__, __LINE__, "no UNSCHEDULABLE action");
			goto out;
		}
		EXPECT_INT(a->reason, r->want_reason);
		EXPECT_INT(fc.stats.unschedulable, 1);
		EXPECT_INT(sched_job_state(c, 1), -ENOENT);
	} else {
		EXPECT(a == NULL);
		EXPECT_INT(fc.stats.unschedulable, 0);
		EXPECT_INT(sched_job_state(c, 1), SCHED_JOB_PENDING);
	}
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
	for (size_t i = 0; i < FX_ARRAY_LEN(infeasible_rows); i++) {
		fx_row = infeasible_rows[i].name;
		run_infeasible_row(&infeasible_rows[i]);
	}
	test_explain_format();
	test_reason_texts();
	return fx_finish("test_filters");
}
