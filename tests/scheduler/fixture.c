/* fixture.c — shared helpers for the scheduler unit tests. */
#include "fixture.h"

#include <stdarg.h>
#include <stdlib.h>

const char *fx_row = "(setup)";
int fx_failures;
const char *fx_note;

void fx_fail(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "FAIL row \"%s\" (%s:%d): ", fx_row, file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (fx_note)
		fprintf(stderr, " [%s]", fx_note);
	fputc('\n', stderr);
	fx_failures++;
}

const char *fx_errno_name(int rc)
{
	switch (rc) {
	case 0:
		return "ok";
	case -EINVAL:
		return "EINVAL";
	case -ENOMEM:
		return "ENOMEM";
	case -ENOENT:
		return "ENOENT";
	case -EEXIST:
		return "EEXIST";
	case -EBUSY:
		return "EBUSY";
	default:
		return "?";
	}
}

bool fx_check(const struct sched_cluster *c, const char *file, int line)
{
	char why[512] = "";
	int rc = sched_cluster_check(c, why, sizeof why);

	if (rc != 0) {
		fx_fail(file, line, "sched_cluster_check: %d (%s)", rc, why);
		return false;
	}
	return true;
}

bool fx_equal(const struct sched_cluster *a, const struct sched_cluster *b, const char *file,
              int line)
{
	char why[512] = "";

	if (!sched_cluster_equal(a, b, why, sizeof why)) {
		fx_fail(file, line, "clusters differ: %s", why);
		return false;
	}
	return true;
}

int fx_finish(const char *suite)
{
	if (fx_failures) {
		fprintf(stderr, "%s: %d failure(s)\n", suite, fx_failures);
		return 1;
	}
	printf("%s: ok\n", suite);
	return 0;
}

/* ---- strings ------------------------------------------------------------ */

/* Interned strings live in a list reachable from a global, so leak checkers
 * do not count them. */
struct fx_str {
	struct fx_str *next;
	size_t len;
	char s[];
};
static struct fx_str *fx_strings;

const char *fx_intern(const char *s, size_t len)
{
	struct fx_str *e;

	for (e = fx_strings; e; e = e->next)
		if (e->len == len && memcmp(e->s, s, len) == 0)
			return e->s;
	e = malloc(sizeof *e + len + 1);
	if (!e) {
		fprintf(stderr, "fixture: out of memory\n");
		exit(2);
	}
	memcpy(e->s, s, len);
	e->s[len] = '\0';
	e->len = len;
	e->next = fx_strings;
	fx_strings = e;
	return e->s;
}

/* Splits csv into out (NULL-terminated); returns the count. */
static uint32_t fx_split(const char *csv, const char **out, uint32_t max)
{
	uint32_t n = 0;

	while (csv && *csv && n < max) {
		const char *end = strchr(csv, ',');
		size_t len = end ? (size_t)(end - csv) : strlen(csv);

		out[n++] = fx_intern(csv, len);
		csv = end ? end + 1 : NULL;
	}
	out[n] = NULL;
	return n;
}

/* ---- GPUs --------------------------------------------------------------- */

const struct sched_gpu_spec fx_gpu_h100 = {
	.model = "H100-SXM5-80GB",
	.memory_mib = 81920,
	.compute_cap = 90,
	.precisions = FX_ALL_PREC,
	.tflops = { 67, 495, 990, 990, 1979 },
};
const struct sched_gpu_spec fx_gpu_a100 = {
	.model = "A100-SXM4-80GB",
	.memory_mib = 81920,
	.compute_cap = 80,
	.precisions = FX_ALL_PREC & ~FX_PREC(SCHED_PREC_FP8),
	.tflops = { 19.5f, 156, 312, 312, 0 },
};
const struct sched_gpu_spec fx_gpu_l4 = {
	.model = "L4",
	.memory_mib = 24576,
	.compute_cap = 89,
	.precisions = FX_ALL_PREC,
	.tflops = { 30, 60, 121, 121, 242 },
};
const struct sched_gpu_spec fx_gpu_3060 = {
	.model = "RTX-3060-12GB",
	.memory_mib = 12288,
	.compute_cap = 86,
	.precisions = FX_ALL_PREC & ~FX_PREC(SCHED_PREC_FP8),
	.tflops = { 12.7f, 12.7f, 25, 25, 0 },
};

const struct sched_gpu_spec *fx_gpu_named(const char *name)
{
	if (strcmp(name, "H100") == 0)
		return &fx_gpu_h100;
	if (strcmp(name, "A100") == 0)
		return &fx_gpu_a100;
	if (strcmp(name, "L4") == 0)
		return &fx_gpu_l4;
	if (strcmp(name, "3060") == 0)
		return &fx_gpu_3060;
	return NULL;
}

/* ---- nodes -------------------------------------------------------------- */

void fx_node_gpus(struct fx_node *n, const char *layout)
{
	const char *p = layout;
	uint32_t ngpus = 0;

	while (*p) {
		char model[32];
		unsigned count = 0, group = 0;
		int used = 0;
		const struct sched_gpu_spec *tpl;

		while (*p == ' ')
			p++;
		if (!*p)
			break;
		if (sscanf(p, "%ux%31[A-Za-z0-9]%n", &count, model, &used) != 2) {
			fprintf(stderr, "fixture: bad GPU layout \"%s\"\n", layout);
			exit(2);
		}
		p += used;
		if (*p == '@') {
			if (sscanf(p, "@%u%n", &group, &used) != 1) {
				fprintf(stderr, "fixture: bad group in \"%s\"\n", layout);
				exit(2);
			}
			p += used;
		}
		tpl = fx_gpu_named(model);
		if (!tpl || ngpus + count > SCHED_MAX_GPUS_PER_NODE) {
			fprintf(stderr, "fixture: bad GPU layout \"%s\"\n", layout);
			exit(2);
		}
		for (unsigned i = 0; i < count; i++) {
			n->gpus[ngpus] = *tpl;
			n->gpus[ngpus].nvlink_group = (uint16_t)group;
			ngpus++;
		}
	}
	n->spec.ngpus = ngpus;
}

void fx_node_init(struct fx_node *n, uint64_t id, const char *region, const char *gpus)
{
	memset(n, 0, sizeof *n);
	n->spec.id = id;
	n->spec.region = region ? fx_intern(region, strlen(region)) : NULL;
	n->spec.state = SCHED_NODE_READY;
	n->spec.verified = true;
	n->spec.price_micros = 2000000;
	n->spec.reliability_ppm = 990000;
	fx_node_gpus(n, gpus);
	fx_node_spec(n);
}

void fx_node_labels(struct fx_node *n, const char *csv)
{
	n->spec.nlabels = fx_split(csv, n->labels, SCHED_MAX_STRINGS);
	fx_node_spec(n);
}

void fx_node_taints(struct fx_node *n, const char *csv)
{
	n->spec.ntaints = fx_split(csv, n->taints, SCHED_MAX_STRINGS);
	fx_node_spec(n);
}

const struct sched_node_spec *fx_node_spec(struct fx_node *n)
{
	n->spec.gpus = n->gpus;
	n->spec.labels = n->spec.nlabels ? n->labels : NULL;
	n->spec.taints = n->spec.ntaints ? n->taints : NULL;
	return &n->spec;
}

/* ---- jobs --------------------------------------------------------------- */

void fx_job_init(struct fx_job *j, uint64_t id, uint32_t gpus)
{
	memset(j, 0, sizeof *j);
	j->spec.id = id;
	j->spec.tenant_id = 1;
	j->spec.kind = SCHED_JOB_TRAINING;
	j->spec.gpus_per_node = gpus;
	j->spec.node_count = 1;
	j->spec.precision = SCHED_PREC_FP16;
	j->spec.max_duration_us = FX_S(3600);
	j->spec.priority_class = 2;
	fx_job_spec(j);
}

void fx_job_regions(struct fx_job *j, const char *csv)
{
	j->spec.nregions = fx_split(csv, j->regions, SCHED_MAX_STRINGS);
	fx_job_spec(j);
}

void fx_job_selectors(struct fx_job *j, const char *csv)
{
	j->spec.nselectors = fx_split(csv, j->selectors, SCHED_MAX_STRINGS);
	fx_job_spec(j);
}

void fx_job_tolerations(struct fx_job *j, const char *csv)
{
	j->spec.ntolerations = fx_split(csv, j->tolerations, SCHED_MAX_STRINGS);
	fx_job_spec(j);
}

const struct sched_job_spec *fx_job_spec(struct fx_job *j)
{
	j->spec.regions = j->spec.nregions ? j->regions : NULL;
	j->spec.selectors = j->spec.nselectors ? j->selectors : NULL;
	j->spec.tolerations = j->spec.ntolerations ? j->tolerations : NULL;
	return &j->spec;
}

/* ---- policy ------------------------------------------------------------- */

void fx_policy(struct sched_policy *p)
{
	sched_policy_default(p);
	p->w_price = 0;
	p->w_perf_per_price = 0;
	p->w_perf = 0;
	p->w_fit = 0;
	p->w_reliability = 0;
	p->w_locality = 0;
	p->fit_mode = SCHED_FIT_PACK;
	p->score_nodes = 100000;
	p->w_prio_class = 1;
	p->w_age = 0;
	p->w_fairshare = 0;
	p->fairness = SCHED_FAIR_NONE;
	p->allow_unverified = false;
	p->backfill = false;
	p->reservations = 1;
	p->backfill_depth = 0;
	p->preemption = false;
	p->infeasible_timeout_us = 0;
}

/* ---- allocator ---------------------------------------------------------- */

static bool fx_alloc_should_fail(struct fx_alloc *fa)
{
	fa->calls++;
	if (fa->fail_at > 0 &&
	    (fa->calls == fa->fail_at || (fa->fail_all && fa->calls > fa->fail_at))) {
		fa->failures++;
		return true;
	}
	return false;
}

static void *fx_alloc_alloc(void *ctx, size_t bytes)
{
	struct fx_alloc *fa = ctx;
	void *p;

	if (fx_alloc_should_fail(fa))
		return NULL;
	p = malloc(bytes ? bytes : 1);
	if (p)
		fa->live++;
	return p;
}

static void *fx_alloc_realloc(void *ctx, void *old, size_t bytes)
{
	struct fx_alloc *fa = ctx;
	void *p;

	if (fx_alloc_should_fail(fa))
		return NULL;
	p = realloc(old, bytes ? bytes : 1);
	if (p && !old)
		fa->live++;
	return p;
}

static void fx_alloc_free(void *ctx, void *p)
{
	struct fx_alloc *fa = ctx;

	if (p) {
		fa->live--;
		free(p);
	}
}

void fx_alloc_init(struct fx_alloc *fa)
{
	memset(fa, 0, sizeof *fa);
	fa->a.alloc = fx_alloc_alloc;
	fa->a.realloc = fx_alloc_realloc;
	fa->a.free = fx_alloc_free;
	fa->a.ctx = fa;
}

/* ---- clusters and cycles ------------------------------------------------ */

struct sched_cluster *fx_cluster(const struct sched_alloc *alloc)
{
	struct sched_cluster *c = sched_cluster_new(alloc);
	struct sched_policy p;
	struct sched_error err = { 0 };
	int rc;

	if (!c) {
		fprintf(stderr, "fixture: sched_cluster_new failed\n");
		exit(2);
	}
	fx_policy(&p);
	rc = sched_set_policy(c, &p, &err);
	if (rc != 0) {
		fprintf(stderr, "fixture: test policy rejected: %d %s: %s\n", rc, err.field,
		        err.message);
		exit(2);
	}
	return c;
}

bool fx_add_node(struct sched_cluster *c, struct fx_node *n)
{
	struct sched_error err = { 0 };
	int rc = sched_node_upsert(c, fx_node_spec(n), &err);

	if (rc != 0) {
		fx_fail(__FILE__, __LINE__, "sched_node_upsert(%llu): %s %s: %s",
		        (unsigned long long)n->spec.id, fx_errno_name(rc), err.field, err.message);
		return false;
	}
	return true;
}

bool fx_add_job(struct sched_cluster *c, struct fx_job *j)
{
	struct sched_error err = { 0 };
	int rc = sched_job_add(c, fx_job_spec(j), &err);

	if (rc != 0) {
		fx_fail(__FILE__, __LINE__, "sched_job_add(%llu): %s %s: %s",
		        (unsigned long long)j->spec.id, fx_errno_name(rc), err.field, err.message);
		return false;
	}
	return true;
}

bool fx_run_job(struct sched_cluster *c, struct fx_job *j, uint64_t node_id, uint64_t mask,
                int64_t start_us)
{
	struct sched_error err = { 0 };
	struct sched_placement pl = { .node_id = node_id, .gpu_mask = mask };
	int rc;

	if (!fx_add_job(c, j))
		return false;
	rc = sched_lease_start(c, j->spec.id, &pl, 1, start_us, &err);
	if (rc != 0) {
		fx_fail(__FILE__, __LINE__, "sched_lease_start(%llu): %s %s: %s",
		        (unsigned long long)j->spec.id, fx_errno_name(rc), err.field, err.message);
		return false;
	}
	return true;
}

bool fx_run_cycle(struct fx_cycle *fc, struct sched_cluster *c, int64_t now_us)
{
	if (fc->c)
		sched_actions_free(fc->c, &fc->acts);
	memset(fc, 0, sizeof *fc);
	fc->c = c;
	fc->rc = sched_cycle(c, now_us, &fc->acts, &fc->stats);
	if (fc->rc != 0) {
		fx_fail(__FILE__, __LINE__, "sched_cycle: %s", fx_errno_name(fc->rc));
		return false;
	}
	return true;
}

void fx_cycle_done(struct fx_cycle *fc)
{
	if (fc->c)
		sched_actions_free(fc->c, &fc->acts);
	memset(fc, 0, sizeof *fc);
}

size_t fx_count(const struct sched_actions *a, enum sched_action_kind kind, uint64_t job_id)
{
	size_t n = 0;

	for (size_t i = 0; i < a->len; i++)
		if ((kind == 0 || a->items[i].kind == kind) && a->items[i].job_id == job_id)
			n++;
	return n;
}

const struct sched_action *fx_find(const struct sched_actions *a, enum sched_action_kind kind,
                                   uint64_t job_id)
{
	for (size_t i = 0; i < a->len; i++)
		if ((kind == 0 || a->items[i].kind == kind) && a->items[i].job_id == job_id)
			return &a->items[i];
	return NULL;
}

bool fx_explain(const struct sched_cluster *c, uint64_t job_id, struct sched_explain *e)
{
	int rc;

	memset(e, 0, sizeof *e);
	rc = sched_job_explain(c, job_id, e);
	if (rc != 0) {
		fx_fail(__FILE__, __LINE__, "sched_job_explain(%llu): %s",
		        (unsigned long long)job_id, fx_errno_name(rc));
		return false;
	}
	return true;
}

uint64_t fx_free(const struct sched_cluster *c, uint64_t node_id)
{
	uint64_t m = 0;
	int rc = sched_node_free_mask(c, node_id, &m);

	if (rc != 0) {
		fx_fail(__FILE__, __LINE__, "sched_node_free_mask(%llu): %s",
		        (unsigned long long)node_id, fx_errno_name(rc));
		return ~0ull;
	}
	return m;
}
