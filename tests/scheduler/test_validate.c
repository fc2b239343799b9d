/* test_validate.c — bad node specs, job specs, policies and calls: each is
 * rejected with the expected error (and err.field naming what was wrong),
 * and the cluster is left exactly as it was. */
#include "fixture.h"

#include <math.h>

static char long_name[SCHED_MAX_STRING_BYTES + 2];  /* 129 bytes: too long */
static char max_name[SCHED_MAX_STRING_BYTES + 1];   /* 128 bytes: just fits */
static char long_label[SCHED_MAX_STRING_BYTES + 8]; /* "k=" + 129 bytes */
static const char *many[SCHED_MAX_STRINGS + 1];     /* 33 "k<i>=v" strings */

static void init_strings(void)
{
	static char buf[SCHED_MAX_STRINGS + 1][16];

	memset(long_name, 'x', SCHED_MAX_STRING_BYTES + 1);
	memset(max_name, 'y', SCHED_MAX_STRING_BYTES);
	memcpy(long_label, "k=", 2);
	memset(long_label + 2, 'z', SCHED_MAX_STRING_BYTES);
	for (int i = 0; i <= SCHED_MAX_STRINGS; i++) {
		snprintf(buf[i], sizeof buf[i], "k%d=v", i);
		many[i] = buf[i];
	}
}

/* want is "" for success, else the expected err.field; "a|b" accepts
 * either, and a trailing '*' accepts any field starting with the rest. */
static bool field_matches(const char *got, const char *want)
{
	char alt[96];
	const char *p = want;

	while (*p) {
		const char *bar = strchr(p, '|');
		size_t len = bar ? (size_t)(bar - p) : strlen(p);

		snprintf(alt, sizeof alt, "%.*s", (int)len, p);
		len = strlen(alt);
		if (len && alt[len - 1] == '*') {
			if (strncmp(got, alt, len - 1) == 0)
				return true;
		} else if (strcmp(got, alt) == 0) {
			return true;
		}
		p = bar ? bar + 1 : p + len;
	}
	return false;
}

/* want_field NULL: the call takes no err (nothing to check there). */
static void expect_result(int rc, const struct sched_error *err, int want_rc,
                          const char *want_field)
{
	if (rc != want_rc) {
		fx_fail(__FILE__, __LINE__, "returned %d (%s), want %d (%s); field \"%s\": %s", rc,
		        fx_errno_name(rc), want_rc, fx_errno_name(want_rc), err->field,
		        err->message);
		return;
	}
	if (want_rc == -EINVAL && want_field && *want_field &&
	    !field_matches(err->field, want_field))
		fx_fail(__FILE__, __LINE__, "err.field \"%s\", want \"%s\" (message: %s)",
		        err->field, want_field, err->message);
	if (want_rc == -EINVAL && want_field && err->message[0] == '\0')
		fx_fail(__FILE__, __LINE__, "err.message empty");
}

/* ---- the cluster every row starts from ---------------------------------- */

/* Nodes 1 (4xH100), 2 (2xA100 2xH100, region us-east), 3 (cordoned);
 * node 1 is tainted dedicated=ml, which jobs 10-12 tolerate; job 10 runs
 * on node 1 GPUs 0-1; jobs 11 (one GPU) and 12 (gang of two, one GPU each)
 * are pending; tenant 1 has shares 2 and some usage. */
static struct sched_cluster *setup(void)
{
	struct sched_cluster *c = fx_cluster(NULL);
	struct fx_node n;
	struct fx_job j;

	fx_node_init(&n, 1, "eu-west", "4xH100");
	fx_node_labels(&n, "tier=gold");
	fx_node_taints(&n, "dedicated=ml");
	fx_add_node(c, &n);
	fx_node_init(&n, 2, "us-east", "2xA100 2xH100");
	fx_add_node(c, &n);
	fx_node_init(&n, 3, "eu-west", "8xL4");
	n.spec.state = SCHED_NODE_CORDONED;
	fx_add_node(c, &n);
	fx_job_init(&j, 10, 2);
	fx_job_tolerations(&j, "dedicated");
	fx_run_job(c, &j, 1, 0x3, FX_S(10));
	fx_job_init(&j, 11, 1);
	fx_job_tolerations(&j, "dedicated");
	fx_add_job(c, &j);
	fx_job_init(&j, 12, 1);
	j.spec.node_count = 2;
	fx_job_tolerations(&j, "dedicated");
	fx_add_job(c, &j);
	if (sched_tenant_set_shares(c, 1, 2) != 0 ||
	    sched_tenant_set_usage(c, 1, 50, FX_S(20)) != 0)
		fx_fail(__FILE__, __LINE__, "tenant setup failed");
	return c;
}

/* ---- node specs --------------------------------------------------------- */

typedef void (*node_mut)(struct fx_node *n);

#define NODE_MUT(fn, body)                \
	static void fn(struct fx_node *n) \
	{                                 \
		body;                     \
	}

NODE_MUT(n_ok, (void)n)
NODE_MUT(n_id0, n->spec.id = 0)
NODE_MUT(n_region_null, n->spec.region = NULL)
NODE_MUT(n_region_empty, n->spec.region = "")
NODE_MUT(n_region_long, n->spec.region = long_name)
NODE_MUT(n_region_max, n->spec.region = max_name)
NODE_MUT(n_state, n->spec.state = SCHED_NODE_STATE_COUNT)
NODE_MUT(n_price0, n->spec.price_micros = 0)
NODE_MUT(n_price_neg, n->spec.price_micros = -5)
NODE_MUT(n_rel_high, n->spec.reliability_ppm = 1000001)
NODE_MUT(n_rel_max, n->spec.reliability_ppm = 1000000)
NODE_MUT(n_ngpus0, n->spec.ngpus = 0)
NODE_MUT(n_ngpus65, fx_node_gpus(n, "64xH100"); n->spec.ngpus = 65)
NODE_MUT(n_ngpus64, fx_node_gpus(n, "32xH100@1 32xH100@2"))
NODE_MUT(n_model_null, n->gpus[1].model = NULL)
NODE_MUT(n_model_empty, n->gpus[1].model = "")
NODE_MUT(n_model_long, n->gpus[1].model = long_name)
NODE_MUT(n_mem0, n->gpus[2].memory_mib = 0)
NODE_MUT(n_cc_low, n->gpus[0].compute_cap = 29)
NODE_MUT(n_cc_high, n->gpus[0].compute_cap = 151)
NODE_MUT(n_cc_edges, n->gpus[0].compute_cap = 30; n->gpus[1].compute_cap = 150;
         n->gpus[2].compute_cap = 30; n->gpus[3].compute_cap = 150)
NODE_MUT(n_prec0, n->gpus[3].precisions = 0)
NODE_MUT(n_prec_unknown, n->gpus[3].precisions = FX_ALL_PREC | (1u << SCHED_PREC_COUNT))
NODE_MUT(n_tflops_neg, n->gpus[1].tflops[SCHED_PREC_FP16] = -1)
NODE_MUT(n_tflops_nan, n->gpus[1].tflops[SCHED_PREC_BF16] = NAN)
NODE_MUT(n_labels_many, n->spec.nlabels = SCHED_MAX_STRINGS + 1;
         memcpy(n->labels, many, sizeof many))
NODE_MUT(n_labels_max, n->spec.nlabels = SCHED_MAX_STRINGS;
         memcpy(n->labels, many, sizeof many[0] * SCHED_MAX_STRINGS))
NODE_MUT(n_label_null, fx_node_labels(n, "a=1,b=2"); n->labels[1] = NULL)
NODE_MUT(n_label_empty, fx_node_labels(n, "a=1"); n->labels[0] = "")
NODE_MUT(n_label_long, fx_node_labels(n, "a=1"); n->labels[0] = long_label)
NODE_MUT(n_label_noeq, fx_node_labels(n, "gold"))
NODE_MUT(n_taint_null, fx_node_taints(n, "a=1"); n->taints[0] = NULL)
NODE_MUT(n_taint_empty, fx_node_taints(n, "a=1,b"); n->taints[1] = "")
NODE_MUT(n_taints_many, n->spec.ntaints = SCHED_MAX_STRINGS + 1;
         memcpy(n->taints, many, sizeof many))

struct node_row {
	const char *name;
	node_mut mut;
	int want_rc;
	const char *want_field;
	const char *note; /* printed with the row's failures */
};

static const struct node_row node_rows[] = {
	{ "node: valid", n_ok, 0, "", NULL },
	{ "node: id 0", n_id0, -EINVAL, "id", NULL },
	{ "node: region missing", n_region_null, -EINVAL, "region", NULL },
	{ "node: region empty", n_region_empty, -EINVAL, "region", NULL },
	{ "node: region too long", n_region_long, -EINVAL, "region", NULL },
	{ "node: region of the maximum length", n_region_max, 0, "", NULL },
	{ "node: state out of range", n_state, -EINVAL, "state", NULL },
	{ "node: price zero", n_price0, -EINVAL, "price_micros", NULL },
	{ "node: price negative", n_price_neg, -EINVAL, "price_micros", NULL },
	{ "node: reliability above 1e6 ppm", n_rel_high, -EINVAL, "reliability_ppm", NULL },
	{ "node: reliability 1e6 ppm", n_rel_max, 0, "", NULL },
	{ "node: no GPUs", n_ngpus0, -EINVAL, "ngpus", NULL },
	{ "node: 65 GPUs", n_ngpus65, -EINVAL, "ngpus", NULL },
	{ "node: 64 GPUs", n_ngpus64, 0, "", NULL },
	{ "node: GPU model missing", n_model_null, -EINVAL, "gpus[1].model", NULL },
	{ "node: GPU model empty", n_model_empty, -EINVAL, "gpus[1].model", NULL },
	{ "node: GPU model too long", n_model_long, -EINVAL, "gpus[1].model", NULL },
	{ "node: GPU memory zero", n_mem0, -EINVAL, "gpus[2].memory_mib", NULL },
	{ "node: compute capability below 3.0", n_cc_low, -EINVAL, "gpus[0].compute_cap", NULL },
	{ "node: compute capability above 15.0", n_cc_high, -EINVAL, "gpus[0].compute_cap", NULL },
	{ "node: compute capability 3.0 and 15.0", n_cc_edges, 0, "", NULL },
	{ "node: no precisions", n_prec0, -EINVAL, "gpus[3].precisions", NULL },
	{ "node: unknown precision bit", n_prec_unknown, -EINVAL, "gpus[3].precisions", NULL },
	{ "node: negative TFLOPS", n_tflops_neg, -EINVAL, "gpus[1].tflops*", NULL },
	{ "node: NaN TFLOPS", n_tflops_nan, -EINVAL, "gpus[1].tflops*", NULL },
	{ "node: 33 labels", n_labels_many, -EINVAL, "labels|nlabels", NULL },
	{ "node: 32 labels", n_labels_max, 0, "", NULL },
	{ "node: label missing", n_label_null, -EINVAL, "labels[1]", NULL },
	{ "node: label empty", n_label_empty, -EINVAL, "labels[0]", NULL },
	{ "node: label too long", n_label_long, -EINVAL, "labels[0]", NULL },
	{ "node: label without '='", n_label_noeq, -EINVAL, "labels[0]", NULL },
	{ "node: taint missing", n_taint_null, -EINVAL, "taints[0]", NULL },
	{ "node: taint empty", n_taint_empty, -EINVAL, "taints[1]", NULL },
	{ "node: 33 taints", n_taints_many, -EINVAL, "taints|ntaints", NULL },
};

static void run_node_row(const struct node_row *r)
{
	fx_note = r->note;
	/* As a new node (id 5) and as a replacement of node 2 (idle). */
	for (int replace = 0; replace <= 1; replace++) {
		struct sched_cluster *c = setup(), *ref = setup();
		struct sched_error err = { 0 };
		struct fx_node n;
		int rc;

		if (replace)
			fx_node_init(&n, 2, "us-east", "2xA100 2xH100");
		else
			fx_node_init(&n, 5, "eu-west", "4xH100");
		r->mut(&n);
		rc = sched_node_upsert(c, fx_node_spec(&n), &err);
		expect_result(rc, &err, r->want_rc, r->want_field);
		if (rc != 0)
			EXPECT_EQUAL(c, ref);
		EXPECT_CHECK(c);
		sched_cluster_free(c);
		sched_cluster_free(ref);
	}
	fx_note = NULL;
}

/* ---- job specs ---------------------------------------------------------- */

typedef void (*job_mut)(struct fx_job *j);

#define JOB_MUT(fn, body)                \
	static void fn(struct fx_job *j) \
	{                                \
		body;                    \
	}

JOB_MUT(j_ok, (void)j)
JOB_MUT(j_full, fx_job_regions(j, "eu-west,us-east"); fx_job_selectors(j, "tier=gold");
        fx_job_tolerations(j, "dedicated,x=y"); j->spec.preferred_region = "eu-west";
        j->spec.min_memory_mib = 1; j->spec.min_compute_cap = 90; j->spec.min_tflops_per_gpu = 1;
        j->spec.min_tflops_total = 2; j->spec.max_price_micros = 1; j->spec.require_nvlink = true;
        j->spec.gpus_per_node = 64; j->spec.node_count = 64; j->spec.priority_class = 4;
        j->spec.kind = SCHED_JOB_BATCH; j->spec.precision = SCHED_PREC_FP8)
JOB_MUT(j_id0, j->spec.id = 0)
JOB_MUT(j_tenant0, j->spec.tenant_id = 0)
JOB_MUT(j_kind, j->spec.kind = SCHED_JOB_KIND_COUNT)
JOB_MUT(j_gpn0, j->spec.gpus_per_node = 0)
JOB_MUT(j_gpn65, j->spec.gpus_per_node = 65)
JOB_MUT(j_nc0, j->spec.node_count = 0)
JOB_MUT(j_nc65, j->spec.node_count = 65)
JOB_MUT(j_prec, j->spec.precision = SCHED_PREC_COUNT)
JOB_MUT(j_tpg_neg, j->spec.min_tflops_per_gpu = -1)
JOB_MUT(j_tpg_nan, j->spec.min_tflops_per_gpu = NAN)
JOB_MUT(j_tt_neg, j->spec.min_tflops_total = -0.5f)
JOB_MUT(j_tt_nan, j->spec.min_tflops_total = NAN)
JOB_MUT(j_regions_many, j->spec.nregions = SCHED_MAX_STRINGS + 1;
        memcpy(j->regions, many, sizeof many); fx_job_spec(j))
JOB_MUT(j_regions_nullarr, fx_job_regions(j, "a"); j->spec.regions = NULL)
JOB_MUT(j_region_null, fx_job_regions(j, "a,b"); j->regions[0] = NULL)
JOB_MUT(j_region_empty, fx_job_regions(j, "a,b"); j->regions[1] = "")
JOB_MUT(j_region_long, fx_job_regions(j, "a"); j->regions[0] = long_name)
JOB_MUT(j_pref_long, j->spec.preferred_region = long_name)
JOB_MUT(j_sel_null, fx_job_selectors(j, "a=1"); j->selectors[0] = NULL)
JOB_MUT(j_sel_empty, fx_job_selectors(j, "a=1,b=2"); j->selectors[1] = "")
JOB_MUT(j_sels_many, j->spec.nselectors = SCHED_MAX_STRINGS + 1;
        memcpy(j->selectors, many, sizeof many); fx_job_spec(j))
JOB_MUT(j_tol_null, fx_job_tolerations(j, "a"); j->tolerations[0] = NULL)
JOB_MUT(j_tol_empty, fx_job_tolerations(j, "a,b"); j->tolerations[1] = "")
JOB_MUT(j_price_neg, j->spec.max_price_micros = -1)
JOB_MUT(j_dur0, j->spec.max_duration_us = 0)
JOB_MUT(j_dur_neg, j->spec.max_duration_us = -10)
JOB_MUT(j_class5, j->spec.priority_class = SCHED_PRIO_CLASSES)

struct job_row {
	const char *name;
	job_mut mut;
	int want_rc;
	const char *want_field;
};

static const struct job_row job_rows[] = {
	{ "job: valid", j_ok, 0, "" },
	{ "job: every field at a valid extreme", j_full, 0, "" },
	{ "job: id 0", j_id0, -EINVAL, "id" },
	{ "job: tenant 0", j_tenant0, -EINVAL, "tenant_id" },
	{ "job: kind out of range", j_kind, -EINVAL, "kind" },
	{ "job: no GPUs", j_gpn0, -EINVAL, "gpus_per_node" },
	{ "job: 65 GPUs per node", j_gpn65, -EINVAL, "gpus_per_node" },
	{ "job: no nodes", j_nc0, -EINVAL, "node_count" },
	{ "job: 65 nodes", j_nc65, -EINVAL, "node_count" },
	{ "job: precision out of range", j_prec, -EINVAL, "precision" },
	{ "job: negative TFLOPS per GPU", j_tpg_neg, -EINVAL, "min_tflops_per_gpu" },
	{ "job: NaN TFLOPS per GPU", j_tpg_nan, -EINVAL, "min_tflops_per_gpu" },
	{ "job: negative total TFLOPS", j_tt_neg, -EINVAL, "min_tflops_total" },
	{ "job: NaN total TFLOPS", j_tt_nan, -EINVAL, "min_tflops_total" },
	{ "job: 33 regions", j_regions_many, -EINVAL, "regions|nregions" },
	{ "job: regions array missing", j_regions_nullarr, -EINVAL, "regions" },
	{ "job: region missing", j_region_null, -EINVAL, "regions[0]" },
	{ "job: region empty", j_region_empty, -EINVAL, "regions[1]" },
	{ "job: region too long", j_region_long, -EINVAL, "regions[0]" },
	{ "job: preferred region too long", j_pref_long, -EINVAL, "preferred_region" },
	{ "job: selector missing", j_sel_null, -EINVAL, "selectors[0]" },
	{ "job: selector empty", j_sel_empty, -EINVAL, "selectors[1]" },
	{ "job: 33 selectors", j_sels_many, -EINVAL, "selectors|nselectors" },
	{ "job: toleration missing", j_tol_null, -EINVAL, "tolerations[0]" },
	{ "job: toleration empty", j_tol_empty, -EINVAL, "tolerations[1]" },
	{ "job: negative price cap", j_price_neg, -EINVAL, "max_price_micros" },
	{ "job: zero duration", j_dur0, -EINVAL, "max_duration_us" },
	{ "job: negative duration", j_dur_neg, -EINVAL, "max_duration_us" },
	{ "job: class 5", j_class5, -EINVAL, "priority_class" },
};

static void run_job_row(const struct job_row *r)
{
	struct sched_cluster *c = setup(), *ref = setup();
	struct sched_error err = { 0 };
	struct fx_job j;
	int rc;

	fx_job_init(&j, 20, 1);
	r->mut(&j);
	rc = sched_job_add(c, &j.spec, &err);
	expect_result(rc, &err, r->want_rc, r->want_field);
	if (rc != 0)
		EXPECT_EQUAL(c, ref);
	else
		EXPECT_INT(sched_job_state(c, 20), SCHED_JOB_PENDING);
	EXPECT_CHECK(c);
	sched_cluster_free(c);
	sched_cluster_free(ref);
}

/* ---- policies ----------------------------------------------------------- */

static bool pol_eq(const struct sched_policy *a, const struct sched_policy *b)
{
	return a->w_price == b->w_price && a->w_perf_per_price == b->w_perf_per_price &&
	       a->w_perf == b->w_perf && a->w_fit == b->w_fit &&
	       a->w_reliability == b->w_reliability && a->w_locality == b->w_locality &&
	       a->fit_mode == b->fit_mode && a->score_nodes == b->score_nodes &&
	       a->w_prio_class == b->w_prio_class && a->w_age == b->w_age &&
	       a->w_fairshare == b->w_fairshare && a->age_max_us == b->age_max_us &&
	       a->fairness == b->fairness &&
	       a->fairshare_half_life_us == b->fairshare_half_life_us &&
	       a->allow_unverified == b->allow_unverified && a->backfill == b->backfill &&
	       a->reservations == b->reservations && a->backfill_depth == b->backfill_depth &&
	       a->preemption == b->preemption && a->preemption_grace_us == b->preemption_grace_us &&
	       a->infeasible_timeout_us == b->infeasible_timeout_us &&
	       a->preempt_shorter_factor == b->preempt_shorter_factor &&
	       a->preempt_min_run_us == b->preempt_min_run_us && a->w_frag == b->w_frag &&
	       a->hold_for_faster == b->hold_for_faster;
}

typedef void (*pol_mut)(struct sched_policy *p);

#define POL_MUT(fn, body)                      \
	static void fn(struct sched_policy *p) \
	{                                      \
		body;                          \
	}

POL_MUT(p_ok, (void)p)
POL_MUT(p_max, p->w_price = 1000; p->w_perf_per_price = 1000; p->w_perf = 1000; p->w_fit = 1000;
        p->w_reliability = 1000; p->w_locality = 1000; p->w_prio_class = 1e6; p->w_age = 1e6;
        p->w_fairshare = 1e6; p->score_nodes = 100000; p->reservations = 64;
        p->backfill_depth = 1000000; p->preemption_grace_us = 0;
        p->infeasible_timeout_us = FX_S(86400); p->fit_mode = SCHED_FIT_SPREAD;
        p->fairness = SCHED_FAIR_SHARE; p->preempt_shorter_factor = 1e6;
        p->preempt_min_run_us = FX_S(30 * 86400); p->w_frag = 1000)
POL_MUT(p_min, p->score_nodes = 1; p->reservations = 0; p->age_max_us = 1;
        p->fairshare_half_life_us = FX_S(1); p->preempt_shorter_factor = 1)
POL_MUT(p_hl1us, p->fairshare_half_life_us = 1)
POL_MUT(p_price_neg, p->w_price = -1)
POL_MUT(p_price_big, p->w_price = 1000.5)
POL_MUT(p_price_nan, p->w_price = NAN)
POL_MUT(p_ppp_big, p->w_perf_per_price = 1001)
POL_MUT(p_perf_neg, p->w_perf = -0.001)
POL_MUT(p_fit_inf, p->w_fit = INFINITY)
POL_MUT(p_rel_neg, p->w_reliability = -3)
POL_MUT(p_loc_big, p->w_locality = 2000)
POL_MUT(p_fitmode, p->fit_mode = (enum sched_fit_mode)2)
POL_MUT(p_score0, p->score_nodes = 0)
POL_MUT(p_score_big, p->score_nodes = 100001)
POL_MUT(p_class_neg, p->w_prio_class = -1)
POL_MUT(p_class_big, p->w_prio_class = 1e6 + 1)
POL_MUT(p_age_nan, p->w_age = NAN)
POL_MUT(p_fair_big, p->w_fairshare = 2e6)
POL_MUT(p_agemax0, p->age_max_us = 0)
POL_MUT(p_agemax_neg, p->age_max_us = -1)
POL_MUT(p_fairness, p->fairness = (enum sched_fairness)2)
POL_MUT(p_hl0, p->fairshare_half_life_us = 0)
POL_MUT(p_res65, p->reservations = 65)
POL_MUT(p_grace_neg, p->preemption_grace_us = -1)
POL_MUT(p_infeasible_neg, p->infeasible_timeout_us = -1)
POL_MUT(p_shorter_below1, p->preempt_shorter_factor = 0.5)
POL_MUT(p_shorter_neg, p->preempt_shorter_factor = -1)
POL_MUT(p_shorter_big, p->preempt_shorter_factor = 2e6)
POL_MUT(p_shorter_nan, p->preempt_shorter_factor = NAN)
POL_MUT(p_minrun_neg, p->preempt_min_run_us = -1)
POL_MUT(p_minrun_big, p->preempt_min_run_us = FX_S(30 * 86400) + 1)
POL_MUT(p_frag_big, p->w_frag = 1001)

struct pol_row {
	const char *name;
	pol_mut mut;
	const char *want_field; /* "" = valid */
	const char *note;       /* printed with the row's failures */
};

static const struct pol_row pol_rows[] = {
	{ "policy: default", p_ok, "", NULL },
	{ "policy: every field at its maximum", p_max, "", NULL },
	{ "policy: every field at its minimum", p_min, "", NULL },
	{ "policy: half-life of 1 us", p_hl1us, "fairshare_half_life_us", NULL },
	{ "policy: negative price weight", p_price_neg, "w_price", NULL },
	{ "policy: price weight above 1000", p_price_big, "w_price", NULL },
	{ "policy: NaN price weight", p_price_nan, "w_price", NULL },
	{ "policy: perf-per-price weight above 1000", p_ppp_big, "w_perf_per_price", NULL },
	{ "policy: negative perf weight", p_perf_neg, "w_perf", NULL },
	{ "policy: infinite fit weight", p_fit_inf, "w_fit", NULL },
	{ "policy: negative reliability weight", p_rel_neg, "w_reliability", NULL },
	{ "policy: locality weight above 1000", p_loc_big, "w_locality", NULL },
	{ "policy: unknown fit mode", p_fitmode, "fit_mode", NULL },
	{ "policy: score no nodes", p_score0, "score_nodes", NULL },
	{ "policy: score over 100000 nodes", p_score_big, "score_nodes", NULL },
	{ "policy: negative class weight", p_class_neg, "w_prio_class", NULL },
	{ "policy: class weight above 1e6", p_class_big, "w_prio_class", NULL },
	{ "policy: NaN age weight", p_age_nan, "w_age", NULL },
	{ "policy: fair-share weight above 1e6", p_fair_big, "w_fairshare", NULL },
	{ "policy: age_max zero", p_agemax0, "age_max_us", NULL },
	{ "policy: age_max negative", p_agemax_neg, "age_max_us", NULL },
	{ "policy: unknown fairness", p_fairness, "fairness", NULL },
	{ "policy: half-life zero", p_hl0, "fairshare_half_life_us", NULL },
	{ "policy: 65 reservations", p_res65, "reservations", NULL },
	{ "policy: negative grace", p_grace_neg, "preemption_grace_us", NULL },
	{ "policy: negative infeasible timeout", p_infeasible_neg, "infeasible_timeout_us", NULL },
	{ "policy: shorter-work factor below 1", p_shorter_below1, "preempt_shorter_factor", NULL },
	{ "policy: negative shorter-work factor", p_shorter_neg, "preempt_shorter_factor", NULL },
	{ "policy: shorter-work factor above 1e6", p_shorter_big, "preempt_shorter_factor", NULL },
	{ "policy: NaN shorter-work factor", p_shorter_nan, "preempt_shorter_factor", NULL },
	{ "policy: negative minimum run", p_minrun_neg, "preempt_min_run_us", NULL },
	{ "policy: minimum run above 30 days", p_minrun_big, "preempt_min_run_us", NULL },
	{ "policy: fragmentation weight above 1000", p_frag_big, "w_frag", NULL },
};

static void run_pol_row(const struct pol_row *r)
{
	struct sched_cluster *c = setup(), *ref = setup();
	struct sched_policy p, before = *sched_get_policy(c);
	struct sched_error err = { 0 };
	bool valid = r->want_field[0] == '\0';
	int rc;

	fx_note = r->note;
	sched_policy_default(&p);
	r->mut(&p);
	rc = sched_policy_validate(&p, &err);
	expect_result(rc, &err, valid ? 0 : -EINVAL, r->want_field);
	EXPECT_INT(sched_policy_validate(&p, NULL), valid ? 0 : -EINVAL);
	memset(&err, 0, sizeof err);
	rc = sched_set_policy(c, &p, &err);
	expect_result(rc, &err, valid ? 0 : -EINVAL, r->want_field);
	if (rc != 0) {
		EXPECT(pol_eq(sched_get_policy(c), &before));
		EXPECT_EQUAL(c, ref);
	} else {
		EXPECT(pol_eq(sched_get_policy(c), &p));
	}
	sched_cluster_free(c);
	sched_cluster_free(ref);
	fx_note = NULL;
}

/* ---- other calls -------------------------------------------------------- */

typedef int (*call_fn)(struct sched_cluster *c, struct sched_error *err);
typedef void (*prep_fn)(struct sched_cluster *c);

static int lease(struct sched_cluster *c, struct sched_error *err, uint64_t job, uint64_t n1,
                 uint64_t m1, uint64_t n2, uint64_t m2)
{
	struct sched_placement pl[2] = { { n1, m1 }, { n2, m2 } };

	return sched_lease_start(c, job, pl, n2 ? 2 : 1, FX_S(30), err);
}

/* Job 20, added to both the cluster and its reference before the call. */
#define PREP(fn, body)                          \
	static void fn(struct sched_cluster *c) \
	{                                       \
		struct fx_job j;                \
		body;                           \
		fx_add_job(c, &j);              \
	}

PREP(prep_two_gpus, fx_job_init(&j, 20, 2))
PREP(prep_cc90, fx_job_init(&j, 20, 1); j.spec.min_compute_cap = 90)
PREP(prep_no_toleration, fx_job_init(&j, 20, 1))
PREP(prep_gang, fx_job_init(&j, 20, 1); j.spec.node_count = 2; fx_job_tolerations(&j, "dedicated"))
PREP(prep_mem, fx_job_init(&j, 20, 1); j.spec.min_memory_mib = 100000)
PREP(prep_fp8, fx_job_init(&j, 20, 1); j.spec.precision = SCHED_PREC_FP8)
PREP(prep_selector, fx_job_init(&j, 20, 1); fx_job_selectors(&j, "tier=gold"))
PREP(prep_tflops, fx_job_init(&j, 20, 1); j.spec.min_tflops_per_gpu = 500)
PREP(prep_price_cap, fx_job_init(&j, 20, 1); j.spec.max_price_micros = 1)
PREP(prep_nvlink, fx_job_init(&j, 20, 2); j.spec.require_nvlink = true)
PREP(prep_unverified, fx_job_init(&j, 20, 1); struct fx_node n;
     fx_node_init(&n, 4, "eu-west", "2xH100"); n.spec.verified = false; fx_add_node(c, &n))

#define CALL(fn, body)                                                  \
	static int fn(struct sched_cluster *c, struct sched_error *err) \
	{                                                               \
		(void)err;                                              \
		body;                                                   \
	}

CALL(c_dup_pending, struct fx_job j; fx_job_init(&j, 11, 1);
     return sched_job_add(c, fx_job_spec(&j), err))
CALL(c_dup_running, struct fx_job j; fx_job_init(&j, 10, 3);
     return sched_job_add(c, fx_job_spec(&j), err))
CALL(c_shares0, return sched_tenant_set_shares(c, 1, 0))
CALL(c_shares_big, return sched_tenant_set_shares(c, 1, 1000001))
CALL(c_shares_t0, return sched_tenant_set_shares(c, 0, 3))
CALL(c_usage_neg, return sched_tenant_set_usage(c, 1, -1, FX_S(30)))
CALL(c_usage_nan, return sched_tenant_set_usage(c, 1, NAN, FX_S(30)))
CALL(c_usage_t0, return sched_tenant_set_usage(c, 0, 5, FX_S(30)))
CALL(c_state_unknown, return sched_node_set_state(c, 99, SCHED_NODE_DRAINING))
CALL(c_state_bad, return sched_node_set_state(c, 1, SCHED_NODE_STATE_COUNT))
CALL(c_remove_unknown, return sched_node_remove(c, 99))
CALL(c_remove_busy, return sched_node_remove(c, 1))
CALL(c_upsert_drops_held, struct fx_node n; fx_node_init(&n, 1, "eu-west", "1xH100");
     fx_node_labels(&n, "tier=gold"); fx_node_taints(&n, "dedicated=ml");
     return sched_node_upsert(c, fx_node_spec(&n), err))
CALL(c_upsert_changes_held, struct fx_node n; fx_node_init(&n, 1, "eu-west", "1xH100 3xA100");
     fx_node_labels(&n, "tier=gold"); fx_node_taints(&n, "dedicated=ml");
     return sched_node_upsert(c, fx_node_spec(&n), err))
CALL(c_cancel_unknown, return sched_job_cancel(c, 99, FX_S(30)))
CALL(c_end_unknown, return sched_lease_end(c, 99, FX_S(30), false))
CALL(c_end_pending, return sched_lease_end(c, 11, FX_S(30), true))
CALL(c_lease_unknown_job, return lease(c, err, 99, 1, 0x4, 0, 0))
CALL(c_lease_unknown_node, return lease(c, err, 11, 99, 0x1, 0, 0))
CALL(c_lease_busy, return lease(c, err, 11, 1, 0x2, 0, 0))
CALL(c_lease_beyond, return lease(c, err, 11, 1, 0x10, 0, 0))
CALL(c_lease_zero_mask, return lease(c, err, 11, 1, 0, 0, 0))
CALL(c_lease_count, return lease(c, err, 11, 1, 0xc, 0, 0))
CALL(c_lease_parts, return lease(c, err, 11, 3, 0x1, 2, 0x1))
CALL(c_lease_gang_short, return lease(c, err, 12, 3, 0x1, 0, 0))
CALL(c_lease_gang_same_node, return lease(c, err, 12, 3, 0x1, 3, 0x2))
CALL(c_lease_gang_regions, return lease(c, err, 20, 1, 0x4, 2, 0x4))
CALL(c_lease_mixed_part, return lease(c, err, 20, 2, 0x6, 0, 0))
CALL(c_lease_constraint, return lease(c, err, 20, 2, 0x1, 0, 0))
CALL(c_lease_taint, return lease(c, err, 20, 1, 0x4, 0, 0))
CALL(c_lease_node2_h100, return lease(c, err, 20, 2, 0x4, 0, 0))
CALL(c_lease_node2_a100, return lease(c, err, 20, 2, 0x1, 0, 0))
CALL(c_lease_node3, return lease(c, err, 20, 3, 0x1, 0, 0))
CALL(c_lease_node3_pair, return lease(c, err, 20, 3, 0x3, 0, 0))
CALL(c_lease_node4, return lease(c, err, 20, 4, 0x1, 0, 0))
CALL(c_lease_running, return lease(c, err, 10, 1, 0x4, 0, 0))
CALL(c_lease_cordoned_ok, return lease(c, err, 11, 3, 0x80, 0, 0))
CALL(c_lease_gang_ok, return lease(c, err, 20, 1, 0x4, 3, 0x1))
CALL(c_placement_pending, struct sched_placement pl; return sched_job_placement(c, 11, &pl, 1))
CALL(c_placement_unknown, struct sched_placement pl; return sched_job_placement(c, 99, &pl, 1))
CALL(c_free_unknown, uint64_t m; return sched_node_free_mask(c, 99, &m))
CALL(c_state_of_unknown, return sched_job_state(c, 99))
CALL(c_explain_unknown, struct sched_explain e; return sched_job_explain(c, 99, &e))

struct call_row {
	const char *name;
	prep_fn prep; /* applied to the cluster and its reference; may be NULL */
	call_fn fn;
	int want_rc;
	int alt_rc;       /* also accepted when non-zero (the header allows either) */
	const char *note; /* printed with the row's failures */
};

static const struct call_row call_rows[] = {
	{ "add: duplicate of a pending job", NULL, c_dup_pending, -EEXIST, 0, NULL },
	{ "add: duplicate of a running job", NULL, c_dup_running, -EEXIST, 0, NULL },
	{ "tenant: zero shares", NULL, c_shares0, -EINVAL, 0, NULL },
	{ "tenant: shares above 1e6", NULL, c_shares_big, -EINVAL, 0, NULL },
	{ "tenant: id 0 shares", NULL, c_shares_t0, -EINVAL, 0, NULL },
	{ "tenant: negative usage", NULL, c_usage_neg, -EINVAL, 0, NULL },
	{ "tenant: NaN usage", NULL, c_usage_nan, -EINVAL, 0, NULL },
	{ "tenant: id 0 usage", NULL, c_usage_t0, -EINVAL, 0, NULL },
	{ "node state: unknown node", NULL, c_state_unknown, -ENOENT, 0, NULL },
	{ "node state: out of range", NULL, c_state_bad, -EINVAL, 0, NULL },
	{ "node remove: unknown", NULL, c_remove_unknown, -ENOENT, 0, NULL },
	{ "node remove: jobs running", NULL, c_remove_busy, -EBUSY, 0, NULL },
	{ "node upsert: drops a held GPU", NULL, c_upsert_drops_held, -EBUSY, 0, NULL },
	{ "node upsert: turns a held H100 into an A100", NULL, c_upsert_changes_held, -EBUSY, 0,
	  NULL },
	{ "cancel: unknown job", NULL, c_cancel_unknown, -ENOENT, 0, NULL },
	{ "lease end: unknown job", NULL, c_end_unknown, -ENOENT, 0, NULL },
	{ "lease end: pending job", NULL, c_end_pending, -EINVAL, 0, NULL },
	{ "lease start: unknown job", NULL, c_lease_unknown_job, -ENOENT, 0, NULL },
	{ "lease start: unknown node", NULL, c_lease_unknown_node, -ENOENT, 0, NULL },
	{ "lease start: GPU busy", NULL, c_lease_busy, -EBUSY, 0, NULL },
	{ "lease start: GPU beyond the node", NULL, c_lease_beyond, -EINVAL, 0, NULL },
	{ "lease start: empty mask", NULL, c_lease_zero_mask, -EINVAL, 0, NULL },
	{ "lease start: wrong GPU count", NULL, c_lease_count, -EINVAL, 0, NULL },
	{ "lease start: more parts than nodes", NULL, c_lease_parts, -EINVAL, 0, NULL },
	{ "lease start: gang short of nodes", NULL, c_lease_gang_short, -EINVAL, 0, NULL },
	{ "lease start: gang twice on one node", NULL, c_lease_gang_same_node, -EINVAL, 0, NULL },
	{ "lease start: gang across regions", prep_gang, c_lease_gang_regions, -EINVAL, 0, NULL },
	{ "lease start: GPUs from two parts", prep_two_gpus, c_lease_mixed_part, -EINVAL, 0, NULL },
	{ "lease start: part below the job's cc", prep_cc90, c_lease_constraint, -EINVAL, 0, NULL },
	{ "lease start: taint not tolerated", prep_no_toleration, c_lease_taint, -EINVAL, 0, NULL },
	{ "lease start: memory below the job's minimum", prep_mem, c_lease_node2_h100, -EINVAL, 0,
	  NULL },
	{ "lease start: precision missing", prep_fp8, c_lease_node2_a100, -EINVAL, 0, NULL },
	{ "lease start: TFLOPS below the minimum", prep_tflops, c_lease_node2_a100, -EINVAL, 0,
	  NULL },
	{ "lease start: label selector not matched", prep_selector, c_lease_node3, -EINVAL, 0,
	  NULL },
	{ "lease start: NVLink required, none", prep_nvlink, c_lease_node3_pair, -EINVAL, 0, NULL },
	{ "lease start: price above the cap allowed", prep_price_cap, c_lease_node3, 0, 0, NULL },
	{ "lease start: unverified node allowed", prep_unverified, c_lease_node4, 0, 0, NULL },
	{ "lease start: job already running", NULL, c_lease_running, -EBUSY, -EINVAL, NULL },
	{ "lease start: cordoned node allowed", NULL, c_lease_cordoned_ok, 0, 0, NULL },
	{ "lease start: gang on two nodes of one region", prep_gang, c_lease_gang_ok, 0, 0, NULL },
	{ "placement: pending job", NULL, c_placement_pending, -EINVAL, 0, NULL },
	{ "placement: unknown job", NULL, c_placement_unknown, -ENOENT, 0, NULL },
	{ "free mask: unknown node", NULL, c_free_unknown, -ENOENT, 0, NULL },
	{ "state: unknown job", NULL, c_state_of_unknown, -ENOENT, 0, NULL },
	{ "explain: unknown job", NULL, c_explain_unknown, -ENOENT, 0, NULL },
};

static void run_call_row(const struct call_row *r)
{
	struct sched_cluster *c = setup(), *ref = setup();
	struct sched_error err = { 0 };
	int rc;

	fx_note = r->note;
	if (r->prep) {
		r->prep(c);
		r->prep(ref);
	}
	rc = r->fn(c, &err);
	if (r->alt_rc && rc == r->alt_rc)
		rc = r->want_rc;
	expect_result(rc, &err, r->want_rc, NULL);
	if (r->want_rc != 0)
		EXPECT_EQUAL(c, ref);
	EXPECT_CHECK(c);
	sched_cluster_free(c);
	sched_cluster_free(ref);
	fx_note = NULL;
}

/* Strings are copied: changing the caller's buffers afterwards changes
 * nothing. */
static void test_strings_copied(void)
{
	struct sched_cluster *c = setup(), *ref = setup();
	char region[16] = "ap-south", label[16] = "zone=b", taint[16] = "spot";
	char model[32] = "L4", tol[16] = "spot", sel[16] = "zone=b";
	const char *labels[1] = { label }, *taints[1] = { taint };
	const char *tols[1] = { tol }, *sels[1] = { sel }, *regs[1] = { region };
	struct fx_node n;
	struct fx_job j;

	fx_row = "strings are copied";
	fx_node_init(&n, 7, "ap-south", "2xL4");
	fx_node_labels(&n, "zone=b");
	fx_node_taints(&n, "spot");
	fx_add_node(ref, &n);
	fx_job_init(&j, 30, 1);
	fx_job_regions(&j, "ap-south");
	fx_job_selectors(&j, "zone=b");
	fx_job_tolerations(&j, "spot");
	j.spec.preferred_region = "ap-south";
	fx_add_job(ref, &j);

	fx_node_spec(&n);
	n.spec.region = region;
	n.gpus[0].model = model;
	n.gpus[1].model = model;
	n.spec.labels = labels;
	n.spec.taints = taints;
	EXPECT_INT(sched_node_upsert(c, &n.spec, NULL), 0);
	fx_job_spec(&j);
	j.spec.regions = regs;
	j.spec.selectors = sels;
	j.spec.tolerations = tols;
	j.spec.preferred_region = region;
	EXPECT_INT(sched_job_add(c, &j.spec, NULL), 0);
	EXPECT_EQUAL(c, ref);
	memset(region, 'q', sizeof region - 1);
	memset(label, 'q', sizeof label - 1);
	memset(taint, 'q', sizeof taint - 1);
	memset(model, 'q', sizeof model - 1);
	memset(tol, 'q', sizeof tol - 1);
	memset(sel, 'q', sizeof sel - 1);
	EXPECT_EQUAL(c, ref);
	EXPECT_CHECK(c);
	sched_cluster_free(c);
	sched_cluster_free(ref);
}

int main(void)
{
	init_strings();
	for (size_t i = 0; i < FX_ARRAY_LEN(node_rows); i++) {
		fx_row = node_rows[i].name;
		run_node_row(&node_rows[i]);
	}
	for (size_t i = 0; i < FX_ARRAY_LEN(job_rows); i++) {
		fx_row = job_rows[i].name;
		run_job_row(&job_rows[i]);
	}
	for (size_t i = 0; i < FX_ARRAY_LEN(pol_rows); i++) {
		fx_row = pol_rows[i].name;
		run_pol_row(&pol_rows[i]);
	}
	for (size_t i = 0; i < FX_ARRAY_LEN(call_rows); i++) {
		fx_row = call_rows[i].name;
		run_call_row(&call_rows[i]);
	}
	test_strings_copied();
	return fx_finish("test_validate");
}
