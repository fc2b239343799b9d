/* sched-bench.c — cycle throughput and memory of the scheduling library on a
 * heterogeneous fleet scaled up from the Alibaba GPU trace, with a job mix
 * drawn from the trace's pods plus multi-GPU training gangs.
 *
 * Progress goes to stderr; the last line of stdout is one JSON object. Only
 * sched_cycle() is timed; building the fleet and the jobs is not. Every START
 * the library returns is checked against the job's hard constraints and
 * against GPUs already handed out, so a fast but wrong cycle does not pass. */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* clock_gettime, stat */
#endif
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "sched.h"
#include "trace.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MIB_PER_GIB  1024u
#define US_PER_S     INT64_C(1000000)
#define BENCH_NOW_US INT64_C(1700000000000000) /* Nov 2023, fixed for reruns */
#define NTENANTS     500u
#define NREGIONS     8u

/* ---- seeded RNG (xoshiro256**, seeded by splitmix64) -------------------- */

struct rng {
	uint64_t s[4];
};

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += UINT64_C(0x9e3779b97f4a7c15));
	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

static void rng_seed(struct rng *r, uint64_t seed)
{
	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix64(&seed);
}

static uint64_t rotl64(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(struct rng *r)
{
	uint64_t *s = r->s;
	uint64_t result = rotl64(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl64(s[3], 45);
	return result;
}

/* Uniform in [0, n); n > 0. */
static uint32_t rng_below(struct rng *r, uint32_t n)
{
	return (uint32_t)(((rng_next(r) >> 32) * (uint64_t)n) >> 32);
}

/* Uniform in [0, 1). */
static double rng_unit(struct rng *r)
{
	return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

static bool rng_chance(struct rng *r, double p)
{
	return rng_unit(r) < p;
}

static double rng_range(struct rng *r, double lo, double hi)
{
	return lo + (hi - lo) * rng_unit(r);
}

/* Index drawn with probability w[i] / sum(w). */
static uint32_t pick_w(struct rng *r, const uint32_t *w, size_t n)
{
	uint32_t total = 0;
	for (size_t i = 0; i < n; i++)
		total += w[i];
	uint32_t x = rng_below(r, total);
	for (size_t i = 0; i < n; i++) {
		if (x < w[i])
			return (uint32_t)i;
		x -= w[i];
	}
	return (uint32_t)(n - 1);
}

#define PICK_W(r, w) pick_w((r), (w), ARRAY_LEN(w))
#define PICK(r, arr) ((arr)[rng_below((r), (uint32_t)ARRAY_LEN(arr))])

/* ---- GPU models --------------------------------------------------------- */

enum link_style {
	LINK_NONE = 0, /* PCIe only */
	LINK_PAIRS,    /* NVLink bridges between pairs */
	LINK_ALL,      /* SXM baseboard: every GPU in one domain */
};

enum tier {
	TIER_PREMIUM = 0, /* modern datacenter */
	TIER_STANDARD,    /* the trace's own fleet */
	TIER_COMMUNITY,   /* GeForce boxes */
};

struct gpu_model {
	const char *name;
	const char *trace_name; /* model column of the trace; NULL if modern */
	uint32_t memory_mib;
	uint16_t compute_cap;                /* major*10 + minor */
	float peak_tflops[SCHED_PREC_COUNT]; /* datasheet, dense; 0 = absent */
	int64_t price_micros;                /* base price per GPU-hour */
	bool geforce;
	enum link_style link;
	uint32_t modern_weight; /* share among converted nodes; 0 = never */
	uint8_t sizes[4];       /* GPUs per converted node; 0 ends the list */
};

/* Figures from /work/shared/reference/gpu.md. GeForce BF16/FP16 are the
 * FP32-accumulate rates, half of the datacenter card on the same chip. G1-G3
 * are undisclosed in the trace; their rows are plausible stand-ins. */
static const struct gpu_model gpu_models[] = {
	{ "H200-SXM-141GB",
	  NULL,
	  144384,
	  90,
	  { 67.0f, 494.7f, 989.4f, 989.4f, 1978.9f },
	  3500000,
	  false,
	  LINK_ALL,
	  3,
	  { 8 } },
	{ "H100-SXM5-80GB",
	  NULL,
	  81920,
	  90,
	  { 67.0f, 494.7f, 989.4f, 989.4f, 1978.9f },
	  2500000,
	  false,
	  LINK_ALL,
	  10,
	  { 8 } },
	{ "H100-PCIe-80GB",
	  NULL,
	  81920,
	  90,
	  { 51.0f, 378.0f, 756.0f, 756.0f, 1513.0f },
	  2000000,
	  false,
	  LINK_PAIRS,
	  8,
	  { 1, 2, 4, 8 } },
	{ "A100-SXM4-80GB",
	  NULL,
	  81920,
	  80,
	  { 19.5f, 156.0f, 312.0f, 312.0f, 0.0f },
	  1600000,
	  false,
	  LINK_ALL,
	  10,
	  { 8 } },
	{ "A100-PCIe-80GB",
	  NULL,
	  81920,
	  80,
	  { 19.5f, 156.0f, 312.0f, 312.0f, 0.0f },
	  1300000,
	  false,
	  LINK_PAIRS,
	  7,
	  { 1, 2, 4, 8 } },
	{ "L40S-48GB",
	  NULL,
	  49152,
	  89,
	  { 91.6f, 183.0f, 362.0f, 362.0f, 733.0f },
	  950000,
	  false,
	  LINK_NONE,
	  12,
	  { 1, 2, 4, 8 } },
	{ "L4-24GB",
	  NULL,
	  24576,
	  89,
	  { 30.3f, 60.0f, 121.0f, 121.0f, 242.5f },
	  450000,
	  false,
	  LINK_NONE,
	  10,
	  { 1, 2, 4, 8 } },
	{ "A10-24GB",
	  "A10",
	  24576,
	  86,
	  { 31.2f, 62.5f, 125.0f, 125.0f, 0.0f },
	  600000,
	  false,
	  LINK_NONE,
	  4,
	  { 1, 2, 4 } },
	{ "RTX-4090-24GB",
	  NULL,
	  24576,
	  89,
	  { 82.6f, 82.6f, 165.2f, 165.2f, 330.0f },
	  350000,
	  true,
	  LINK_NONE,
	  15,
	  { 1, 2, 4, 8 } },
	{ "RTX-3090-24GB",
	  NULL,
	  24576,
	  86,
	  { 35.6f, 35.6f, 71.0f, 71.0f, 0.0f },
	  220000,
	  true,
	  LINK_NONE,
	  12,
	  { 1, 2, 4 } },
	{ "RTX-3060-12GB",
	  NULL,
	  12288,
	  86,
	  { 12.7f, 12.7f, 25.5f, 25.5f, 0.0f },
	  80000,
	  true,
	  LINK_NONE,
	  10,
	  { 1, 2 } },
	{ "T4-16GB",
	  "T4",
	  16384,
	  75,
	  { 8.1f, 0.0f, 65.0f, 0.0f, 0.0f },
	  250000,
	  false,
	  LINK_NONE,
	  0,
	  { 0 } },
	{ "V100-SXM2-32GB",
	  "V100M32",
	  32768,
	  70,
	  { 15.7f, 0.0f, 125.0f, 0.0f, 0.0f },
	  800000,
	  false,
	  LINK_ALL,
	  0,
	  { 0 } },
	{ "V100-SXM2-16GB",
	  "V100M16",
	  16384,
	  70,
	  { 15.7f, 0.0f, 125.0f, 0.0f, 0.0f },
	  600000,
	  false,
	  LINK_ALL,
	  0,
	  { 0 } },
	{ "P100-PCIe-16GB",
	  "P100",
	  16384,
	  60,
	  { 9.3f, 0.0f, 18.7f, 0.0f, 0.0f },
	  300000,
	  false,
	  LINK_NONE,
	  0,
	  { 0 } },
	/* Undisclosed: assumed Pascal-class 16 GB. */
	{ "G1",
	  "G1",
	  16384,
	  61,
	  { 11.0f, 0.0f, 0.2f, 0.0f, 0.0f },
	  200000,
	  false,
	  LINK_NONE,
	  0,
	  { 0 } },
	/* Undisclosed: assumed Turing-class 24 GB (Quadro RTX 6000-like). */
	{ "G2",
	  "G2",
	  24576,
	  75,
	  { 16.3f, 0.0f, 130.5f, 0.0f, 0.0f },
	  450000,
	  false,
	  LINK_PAIRS,
	  0,
	  { 0 } },
	/* Undisclosed: assumed Ampere-class 40 GB (A100 40GB-like). */
	{ "G3",
	  "G3",
	  40960,
	  80,
	  { 19.5f, 156.0f, 312.0f, 312.0f, 0.0f },
	  1100000,
	  false,
	  LINK_ALL,
	  0,
	  { 0 } },
};
#define NMODELS ((uint32_t)ARRAY_LEN(gpu_models))

static uint32_t model_precisions(const struct gpu_model *m)
{
	uint32_t mask = 0;
	for (int p = 0; p < SCHED_PREC_COUNT; p++)
		if (m->peak_tflops[p] > 0.0f)
			mask |= 1u << p;
	return mask;
}

static uint16_t nvlink_group(const struct gpu_model *m, uint32_t ngpus, uint32_t i)
{
	if (ngpus < 2 || m->geforce)
		return 0;
	switch (m->link) {
	case LINK_ALL:
		return 1;
	case LINK_PAIRS:
		return (uint16_t)(i / 2 + 1);
	case LINK_NONE:
		break;
	}
	return 0;
}

/* ---- regions, labels, taints, tolerations ------------------------------- */

static const char *const region_names[NREGIONS] = {
	"us-east",    "us-west",      "us-central",   "eu-west",
	"eu-central", "ap-northeast", "ap-southeast", "sa-east",
};
static const uint32_t region_weights[NREGIONS] = { 22, 16, 10, 16, 10, 10, 8, 8 };

enum label_key { LK_TIER = 0, LK_NET, LK_DISK, LK_ZONE, LK_COUNT };

static const char *const label_strs[LK_COUNT][3] = {
	{ "tier=premium", "tier=standard", "tier=community" },
	{ "net=ib", "net=eth", NULL },
	{ "disk=nvme", "disk=ssd", "disk=hdd" },
	{ "zone=a", "zone=b", "zone=c" },
};

#define SEL(key, value) ((uint8_t)((key)*4 + (value)))
#define SEL_KEY(s)      ((s) / 4)
#define SEL_VALUE(s)    ((s) % 4)

enum taint {
	TAINT_NONE = 0,
	TAINT_RESEARCH,  /* dedicated=research */
	TAINT_INFERENCE, /* dedicated=inference */
	TAINT_BURN_IN,   /* burn-in (key only): nobody tolerates it */
	TAINT_COUNT
};
static const char *const taint_strs[TAINT_COUNT] = {
	NULL,
	"dedicated=research",
	"dedicated=inference",
	"burn-in",
};

enum toleration {
	TOL_RESEARCH = 1u << 0,  /* dedicated=research */
	TOL_INFERENCE = 1u << 1, /* dedicated=inference */
	TOL_DEDICATED = 1u << 2, /* dedicated (any value) */
};

static bool tolerates(uint8_t taint, uint8_t tols)
{
	switch (taint) {
	case TAINT_NONE:
		return true;
	case TAINT_RESEARCH:
		return (tols & (TOL_RESEARCH | TOL_DEDICATED)) != 0;
	case TAINT_INFERENCE:
		return (tols & (TOL_INFERENCE | TOL_DEDICATED)) != 0;
	default:
		return false;
	}
}

/* ---- trace input -------------------------------------------------------- */

struct bench_tnode {
	uint8_t model; /* index into gpu_models */
	uint8_t ngpus;
};

struct trace_pod {
	uint8_t ngpus;       /* gpu_milli < 1000 counts as one GPU */
	bool best_effort;    /* qos BE */
	uint32_t lifetime_s; /* deletion_time - creation_time */
};

/* Splits a CSV line (no quoting in these files) in place. */
static int csv_split(char *line, char **fields, int max)
{
	int n = 0;
	char *p = line;
	while (n < max) {
		fields[n++] = p;
		char *comma = strchr(p, ',');
		if (!comma)
			break;
		*comma = '\0';
		p = comma + 1;
	}
	char *nl = strpbrk(fields[n - 1], "\r\n");
	if (nl)
		*nl = '\0';
	return n;
}

static bool file_exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

#define NODE_CSV "alibaba-gpu-v2023/openb_node_list_gpu_node.csv"
#define POD_CSV  "alibaba-gpu-v2023/openb_pod_list_default.csv"

static bool traces_present(const char *dir)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, NODE_CSV);
	if (!file_exists(path))
		return false;
	snprintf(path, sizeof path, "%s/%s", dir, POD_CSV);
	return file_exists(path);
}

/* The inventory is read by the simulator's trace reader (sim/trace.c), which
 * maps the trace's models to gpumatch names; here they become rows of
 * gpu_models by that name. */
static int load_trace_nodes(const char *dir, struct bench_tnode **out, uint32_t *nout)
{
	char path[4096], err[512];
	snprintf(path, sizeof path, "%s/%s", dir, NODE_CSV);
	struct trace_fleet fl;
	if (trace_read_nodes(path, &fl, err, sizeof err)) {
		fprintf(stderr, "sched-bench: %s\n", err);
		return -1;
	}
	struct bench_tnode *v = malloc(fl.nnodes * sizeof *v);
	if (!v) {
		trace_fleet_free(&fl);
		return -1;
	}
	uint32_t n = 0;
	for (uint32_t i = 0; i < fl.nnodes; i++) {
		const char *name = fl.models[fl.nodes[i].model].name;
		uint32_t m = NMODELS;
		for (uint32_t k = 0; k < NMODELS; k++)
			if (gpu_models[k].trace_name && strcmp(gpu_models[k].name, name) == 0)
				m = k;
		if (m == NMODELS) {
			fprintf(stderr,
			        "sched-bench: %s: GPU model '%s' has no bench row, skipped\n", path,
			        name);
			continue;
		}
		v[n].model = (uint8_t)m;
		v[n].ngpus = (uint8_t)fl.nodes[i].ngpus;
		n++;
	}
	trace_fleet_free(&fl);
	if (n == 0) {
		fprintf(stderr, "sched-bench: %s: no GPU nodes\n", path);
		free(v);
		return -1;
	}
	*out = v;
	*nout = n;
	return 0;
}

static int load_trace_pods(const char *dir, struct trace_pod **out, uint32_t *nout)
{
	char path[4096], line[1024];
	snprintf(path, sizeof path, "%s/%s", dir, POD_CSV);
	FILE *f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "sched-bench: cannot open %s: %s\n", path, strerror(errno));
		return -1;
	}
	uint32_t cap = 8192, n = 0;
	struct trace_pod *v = malloc(cap * sizeof *v);
	if (!v) {
		fclose(f);
		return -1;
	}
	bool header = true;
	while (fgets(line, sizeof line, f)) {
		char *fl[12];
		if (header) {
			header = false;
			continue;
		}
		if (csv_split(line, fl, 12) < 10)
			continue;
		long ngpus = strtol(fl[3], NULL, 10);
		long milli = strtol(fl[4], NULL, 10);
		if (ngpus <= 0)
			continue; /* CPU-only pod */
		if (milli < 1000)
			ngpus = 1;
		if (ngpus > 8)
			ngpus = 8;
		long long created = strtoll(fl[8], NULL, 10);
		long long deleted = strtoll(fl[9], NULL, 10);
		long long life = deleted - created;
		if (life < 60)
			life = 60; /* the trace has 0 s pods; no lease is that short */
		if (life > UINT32_MAX)
			life = UINT32_MAX;
		if (n == cap) {
			cap *= 2;
			struct trace_pod *nv = realloc(v, cap * sizeof *v);
			if (!nv) {
				free(v);
				fclose(f);
				return -1;
			}
			v = nv;
		}
		v[n].ngpus = (uint8_t)ngpus;
		v[n].best_effort = strcmp(fl[6], "BE") == 0;
		v[n].lifetime_s = (uint32_t)life;
		n++;
	}
	fclose(f);
	if (n == 0) {
		fprintf(stderr, "sched-bench: %s: no GPU pods\n", path);
		free(v);
		return -1;
	}
	*out = v;
	*nout = n;
	return 0;
}

/* ---- the bench's own record of nodes and jobs --------------------------- */

/* What the bench gave the library about a node, kept to check placements. */
struct node_rec {
	float tflops[SCHED_PREC_COUNT]; /* per GPU, as given to the library */
	int64_t price_micros;
	uint64_t busy; /* GPUs the bench saw handed out */
	uint8_t model;
	uint8_t region;
	uint8_t ngpus;
	uint8_t state; /* enum sched_node_state */
	uint8_t verified;
	uint8_t taint;           /* enum taint */
	uint8_t label[LK_COUNT]; /* value index per label key */
};

/* A job's hard constraints, kept to check placements and count classes. */
struct job_rec {
	uint32_t min_memory_mib;
	float min_tflops_per_gpu;
	float min_tflops_total;
	int64_t max_price_micros;
	uint16_t min_cc;
	uint8_t gpus_per_node;
	uint8_t node_count;
	uint8_t precision;
	uint8_t nvlink;
	uint8_t nregions;
	uint8_t regions[3]; /* sorted */
	uint8_t nselectors;
	uint8_t selectors[2]; /* SEL codes, sorted */
	uint8_t tolerations;  /* enum toleration bits */
	uint8_t parts_seen;   /* START actions seen for this job */
	uint8_t gang_region;  /* region of the first part seen */
};

struct options {
	uint32_t nodes;
	uint32_t jobs;
	uint64_t seed;
	const char *traces;
	bool no_backfill;
	int preemption;   /* -1 = policy default, 0 off, 1 on */
	bool recommended; /* sched_policy_recommended, not the library default */
	bool check;
	bool fill_only; /* stop after the fill cycle (for profiling) */
	uint32_t explain_samples;
	double fill_target; /* stop pre-filling at this free-GPU fraction */
	uint32_t templates; /* requirement templates jobs are drawn from */
	double fresh;       /* share of jobs with requirements of their own */
};

struct bench {
	struct options opt;
	struct bench_tnode *tnodes;
	uint32_t ntnodes;
	struct trace_pod *pods;
	uint32_t npods;
	struct node_rec *nodes;
	uint32_t nnodes;
	struct job_rec *jobs; /* job id = index + 1 */
	uint32_t njobs;
	uint32_t jobs_cap;
	double tenant_cdf[NTENANTS];
	struct job_tmpl *tmpl; /* the template pool */
	double *tmpl_cdf;      /* Zipf(1) popularity over the pool */
	struct sched_cluster *c;
	struct sched_policy pol;
	struct rng rng;
	uint64_t violations;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* CPU time of this thread: a cycle's cost on a machine shared with other
 * work, where wall time measures the load as much as the cycle */
static int64_t cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static size_t cluster_bytes(const struct sched_cluster *c)
{
	struct sched_stats st;
	sched_get_stats(c, &st);
	return st.bytes;
}

/* ---- building the fleet ------------------------------------------------- */

static void make_node(struct bench *b, struct rng *r, uint32_t i, const struct bench_tnode *tn)
{
	struct node_rec *n = &b->nodes[i];
	memset(n, 0, sizeof *n);
	uint32_t model = tn->model;
	uint32_t ngpus = tn->ngpus;

	/* A seeded 40 % of the fleet is converted to modern models so the index
	 * sees what a marketplace holds: H100s next to RTX 3060s. */
	if (rng_chance(r, 0.40)) {
		uint32_t w[NMODELS];
		for (uint32_t m = 0; m < NMODELS; m++)
			w[m] = gpu_models[m].modern_weight;
		model = pick_w(r, w, NMODELS);
		const uint8_t *sizes = gpu_models[model].sizes;
		bool keep = false;
		uint32_t nsizes = 0;
		while (nsizes < 4 && sizes[nsizes]) {
			if (sizes[nsizes] == ngpus)
				keep = true;
			nsizes++;
		}
		if (!keep)
			ngpus = sizes[rng_below(r, nsizes)];
	}
	const struct gpu_model *m = &gpu_models[model];
	n->model = (uint8_t)model;
	n->ngpus = (uint8_t)ngpus;
	n->region = (uint8_t)PICK_W(r, region_weights);

	static const uint32_t state_w[SCHED_NODE_STATE_COUNT] = { 985, 5, 5, 5 };
	n->state = (uint8_t)PICK_W(r, state_w);
	n->verified = rng_chance(r, m->geforce ? 0.82 : 0.93);

	/* Verified nodes carry the probe's figure: HBM parts reach ~78-92 % of
	 * peak, GeForce cards boost past their rated clock (gpu.md). Claimed
	 * figures are the datasheet. */
	double scale = 1.0;
	if (n->verified) {
		scale = m->geforce ? rng_range(r, 0.95, 1.12) : rng_range(r, 0.78, 0.92);
		scale = round(scale * 200.0) / 200.0;
	}
	for (int p = 0; p < SCHED_PREC_COUNT; p++)
		n->tflops[p] = (float)(m->peak_tflops[p] * scale);

	double jitter = rng_range(r, -0.20, 0.20);
	n->price_micros =
	    (int64_t)llround((double)m->price_micros * (1.0 + jitter) / 1000.0) * 1000;
	if (n->price_micros <= 0)
		n->price_micros = 1000;

	bool modern_dc = m->trace_name == NULL && !m->geforce;
	n->label[LK_TIER] = (uint8_t)(m->geforce  ? TIER_COMMUNITY
	                              : modern_dc ? TIER_PREMIUM
	                                          : TIER_STANDARD);
	double ib = 0.0;
	if (!m->geforce)
		ib = (m->link == LINK_ALL && ngpus == 8) ? 0.85 : 0.15;
	n->label[LK_NET] = rng_chance(r, ib) ? 0 : 1;
	static const uint32_t disk_dc[] = { 50, 40, 10 }, disk_gf[] = { 30, 40, 30 };
	n->label[LK_DISK] = (uint8_t)(m->geforce ? PICK_W(r, disk_gf) : PICK_W(r, disk_dc));
	n->label[LK_ZONE] = (uint8_t)rng_below(r, 3);

	static const uint32_t taint_w[TAINT_COUNT] = { 950, 30, 15, 5 };
	n->taint = (uint8_t)PICK_W(r, taint_w);
}

static int upsert_node(struct bench *b, uint32_t i)
{
	const struct node_rec *n = &b->nodes[i];
	const struct gpu_model *m = &gpu_models[n->model];
	struct sched_gpu_spec gpus[SCHED_MAX_GPUS_PER_NODE];
	const char *labels[LK_COUNT];
	const char *taints[1];
	for (uint32_t g = 0; g < n->ngpus; g++) {
		gpus[g].model = m->name;
		gpus[g].memory_mib = m->memory_mib;
		gpus[g].compute_cap = m->compute_cap;
		gpus[g].precisions = model_precisions(m);
		gpus[g].nvlink_group = nvlink_group(m, n->ngpus, g);
		memcpy(gpus[g].tflops, n->tflops, sizeof gpus[g].tflops);
	}
	for (int k = 0; k < LK_COUNT; k++)
		labels[k] = label_strs[k][n->label[k]];
	struct sched_node_spec spec = {
		.id = (uint64_t)i + 1,
		.region = region_names[n->region],
		.state = (enum sched_node_state)n->state,
		.verified = n->verified,
		.price_micros = n->price_micros,
		.reliability_ppm = 0,
		.ngpus = n->ngpus,
		.gpus = gpus,
		.nlabels = LK_COUNT,
		.labels = labels,
		.ntaints = n->taint ? 1 : 0,
		.taints = taints,
	};
	taints[0] = taint_strs[n->taint];
	/* Community boxes fail more leases than datacenter ones. */
	uint32_t lo = m->geforce ? 900000 : m->trace_name ? 950000 : 970000;
	uint32_t hi = m->geforce ? 990000 : 1000000;
	spec.reliability_ppm = lo + rng_below(&b->rng, hi - lo + 1);
	struct sched_error err = { { 0 }, { 0 } };
	int rc = sched_node_upsert(b->c, &spec, &err);
	if (rc != 0)
		fprintf(stderr, "sched-bench: node_upsert id=%" PRIu64 ": %s (%s: %s)\n", spec.id,
		        strerror(-rc), err.field, err.message);
	return rc;
}

/* ---- the job mix -------------------------------------------------------- */

/* Base price of the cheapest model that meets the job's per-GPU needs (at a
 * typical verified 85 % of peak), or 0 when none does. */
static int64_t cheapest_price(const struct job_rec *j)
{
	int64_t best = 0;
	for (uint32_t i = 0; i < NMODELS; i++) {
		const struct gpu_model *m = &gpu_models[i];
		if (m->memory_mib < j->min_memory_mib || m->compute_cap < j->min_cc ||
		    m->peak_tflops[j->precision] <= 0.0f ||
		    m->peak_tflops[j->precision] * 0.85f < j->min_tflops_per_gpu)
			continue;
		if (j->nvlink && j->gpus_per_node > 1 &&
		    (m->geforce || m->link == LINK_NONE ||
		     (m->link == LINK_PAIRS && j->gpus_per_node > 2)))
			continue;
		if (best == 0 || m->price_micros < best)
			best = m->price_micros;
	}
	return best;
}

enum archetype { AR_INFERENCE, AR_DEV, AR_FINETUNE, AR_BATCH, AR_GANG, AR_MULTINODE };

/* A job's requirements, shared by every job submitted from it (replicas,
 * job arrays, a team's standard config). */
struct job_tmpl {
	struct job_rec req;
	uint32_t tenant;   /* index; tenant id = index + 1 */
	uint8_t archetype; /* enum archetype */
	uint8_t kind;      /* enum sched_job_kind */
	uint8_t priority_class;
	uint8_t preemptible;
	uint8_t preferred_region; /* 0xff = none */
};

struct job_strs {
	const char *regions[3];
	const char *selectors[2];
	const char *tolerations[3];
};

static const float tflops_steps[SCHED_PREC_COUNT][10] = {
	[SCHED_PREC_FP32] = { 5, 8, 10, 15, 20, 30, 40, 60 },
	[SCHED_PREC_TF32] = { 25, 50, 100, 130, 200, 300, 400 },
	[SCHED_PREC_FP16] = { 15, 30, 50, 60, 100, 120, 200, 300, 500, 700 },
	[SCHED_PREC_BF16] = { 20, 50, 100, 120, 200, 250, 300, 500, 700 },
	[SCHED_PREC_FP8] = { 150, 200, 300, 500, 800, 1200, 1500 },
};

/* A per-GPU TFLOPS floor from the [lo, hi) fraction of the precision's
 * steps: small jobs ask for little, training gangs for a lot. */
static float pick_tflops(struct rng *r, uint32_t prec, double lo, double hi)
{
	uint32_t n = 0;
	while (n < 10 && tflops_steps[prec][n] > 0.0f)
		n++;
	uint32_t a = (uint32_t)(lo * n), z = (uint32_t)(hi * n);
	if (z <= a)
		z = a + 1;
	if (z > n)
		z = n;
	return tflops_steps[prec][a + rng_below(r, z - a)];
}

/* Index i with cdf[i-1] <= u < cdf[i]; cdf[n-1] == 1. */
static uint32_t pick_cdf(const double *cdf, uint32_t n, double u)
{
	uint32_t lo = 0, hi = n - 1;
	while (lo < hi) {
		uint32_t mid = (lo + hi) / 2;
		if (cdf[mid] <= u)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Zipf(1) over n ranks: a few are drawn most of the time. */
static void zipf_cdf(double *cdf, uint32_t n)
{
	double sum = 0.0, acc = 0.0;
	for (uint32_t i = 0; i < n; i++)
		sum += 1.0 / (i + 1.0);
	for (uint32_t i = 0; i < n; i++) {
		acc += 1.0 / (i + 1.0) / sum;
		cdf[i] = acc;
	}
	cdf[n - 1] = 1.0;
}

static uint32_t pick_tenant(struct bench *b, struct rng *r)
{
	return pick_cdf(b->tenant_cdf, NTENANTS, rng_unit(r));
}

static void sort_u8(uint8_t *v, uint32_t n)
{
	for (uint32_t i = 1; i < n; i++)
		for (uint32_t j = i; j > 0 && v[j - 1] > v[j]; j--) {
			uint8_t t = v[j];
			v[j] = v[j - 1];
			v[j - 1] = t;
		}
}

/* Draws a job's requirements: one of six archetypes (trace-sized inference,
 * dev, fine-tune and batch pods; single-node and multi-node training gangs),
 * then regions, selectors and tolerations. Submit time and duration are
 * drawn per job in instantiate(). */
static void gen_template(struct bench *b, struct rng *r, struct job_tmpl *t)
{
	memset(t, 0, sizeof *t);
	struct job_rec *jr = &t->req;
	const struct trace_pod *pod = &b->pods[rng_below(r, b->npods)];
	double u = rng_unit(r);
	enum archetype ar;
	if (u < 0.03)
		ar = AR_MULTINODE;
	else if (u < 0.15)
		ar = AR_GANG;
	else if (pod->best_effort) {
		static const uint32_t w[] = { 0, 30, 20, 50 };
		ar = (enum archetype)PICK_W(r, w);
	} else {
		static const uint32_t w[] = { 45, 25, 30, 0 };
		ar = (enum archetype)PICK_W(r, w);
	}

	uint32_t prec = SCHED_PREC_FP32, gpn = pod->ngpus, nodes = 1, prio = 1;
	uint32_t mem_gib = 0, cc = 0;
	double p_tflops = 0.0, p_price = 0.0, p_preempt = 0.5;
	double tf_lo = 0.0, tf_hi = 0.5;
	enum sched_job_kind kind = SCHED_JOB_BATCH;
	bool want_ib = false;
	bool bargain = false; /* price cap near the cheapest matching model */

	switch (ar) {
	case AR_INFERENCE: {
		static const uint32_t pw[] = { 15, 0, 55, 15, 15 };
		static const uint32_t mems[] = { 0, 8, 12, 16, 20, 24, 40, 48 };
		static const uint32_t memw[] = { 20, 15, 10, 20, 5, 15, 10, 5 };
		static const uint32_t ccs[] = { 0, 70, 75, 80 };
		static const uint32_t ccw[] = { 60, 15, 15, 10 };
		prec = PICK_W(r, pw);
		mem_gib = mems[PICK_W(r, memw)];
		cc = prec == SCHED_PREC_FP8    ? 89
		     : prec == SCHED_PREC_BF16 ? 80
		                               : ccs[PICK_W(r, ccw)];
		p_tflops = 0.5;
		p_price = 0.5;
		p_preempt = 0.15;
		prio = 2 + rng_below(r, 2);
		kind = SCHED_JOB_INFERENCE;
		break;
	}
	case AR_DEV: {
		static const uint32_t pw[] = { 50, 10, 30, 10, 0 };
		static const uint32_t mems[] = { 0, 8, 12, 16, 24 };
		static const uint32_t ccs[] = { 0, 70, 75, 80, 86 };
		static const uint32_t ccw[] = { 70, 8, 8, 8, 6 };
		prec = PICK_W(r, pw);
		mem_gib = PICK(r, mems);
		cc = ccs[PICK_W(r, ccw)];
		p_tflops = 0.2;
		p_price = 0.4;
		bargain = true;
		p_preempt = 0.5;
		prio = 1 + rng_below(r, 2);
		break;
	}
	case AR_FINETUNE: {
		static const uint32_t pw[] = { 0, 10, 20, 70, 0 };
		static const uint32_t mems[] = { 24, 40, 48, 80 };
		static const uint32_t cc_bf[] = { 80, 80, 86, 89, 90 };
		static const uint32_t cc_fp[] = { 70, 75, 80 };
		prec = PICK_W(r, pw);
		mem_gib = PICK(r, mems);
		cc = prec == SCHED_PREC_FP16 ? PICK(r, cc_fp) : PICK(r, cc_bf);
		p_tflops = 0.6;
		tf_hi = 0.8;
		p_price = 0.3;
		p_preempt = 0.3;
		prio = 1 + rng_below(r, 3);
		kind = SCHED_JOB_TRAINING;
		break;
	}
	case AR_BATCH: {
		static const uint32_t pw[] = { 40, 20, 30, 10, 0 };
		static const uint32_t mems[] = { 0, 0, 8, 12, 16, 32 };
		static const uint32_t ccs[] = { 0, 0, 0, 70, 75 };
		prec = PICK_W(r, pw);
		mem_gib = PICK(r, mems);
		cc = PICK(r, ccs);
		p_tflops = 0.3;
		p_price = 0.7;
		bargain = true;
		p_preempt = 0.9;
		prio = rng_below(r, 2);
		break;
	}
	case AR_GANG: {
		static const uint32_t mem_bf[] = { 40, 80, 80, 141 };
		static const uint32_t mem_fp[] = { 16, 32, 40, 80 };
		static const uint32_t cc_bf[] = { 80, 80, 90 };
		static const uint32_t cc_fp[] = { 70, 75, 80 };
		gpn = rng_chance(r, 0.6) ? 8 : 4;
		prec = rng_chance(r, 0.7) ? SCHED_PREC_BF16 : SCHED_PREC_FP16;
		mem_gib = prec == SCHED_PREC_BF16 ? PICK(r, mem_bf) : PICK(r, mem_fp);
		cc = prec == SCHED_PREC_BF16 ? PICK(r, cc_bf) : PICK(r, cc_fp);
		jr->nvlink = rng_chance(r, 0.9);
		want_ib = rng_chance(r, 0.2);
		p_tflops = 0.4;
		tf_lo = 0.3;
		tf_hi = 1.0;
		p_price = 0.25;
		p_preempt = 0.35;
		prio = 1 + rng_below(r, 4);
		kind = SCHED_JOB_TRAINING;
		break;
	}
	case AR_MULTINODE: {
		static const uint32_t mems[] = { 40, 80, 80 };
		static const uint32_t ccs[] = { 80, 90 };
		gpn = 8;
		nodes = 2 + rng_below(r, 3);
		prec = rng_chance(r, 0.8) ? SCHED_PREC_BF16 : SCHED_PREC_FP16;
		mem_gib = PICK(r, mems);
		cc = PICK(r, ccs);
		jr->nvlink = rng_chance(r, 0.85);
		want_ib = rng_chance(r, 0.7);
		p_tflops = 0.3;
		tf_lo = 0.3;
		tf_hi = 0.8;
		p_price = 0.2;
		p_preempt = 0.2;
		prio = 2 + rng_below(r, 3);
		kind = SCHED_JOB_TRAINING;
		break;
	}
	}

	jr->gpus_per_node = (uint8_t)gpn;
	jr->node_count = (uint8_t)nodes;
	jr->precision = (uint8_t)prec;
	jr->min_memory_mib = mem_gib * MIB_PER_GIB;
	jr->min_cc = (uint16_t)cc;
	if (rng_chance(r, p_tflops))
		jr->min_tflops_per_gpu = pick_tflops(r, prec, tf_lo, tf_hi);
	if (gpn * nodes >= 2 && rng_chance(r, 0.08))
		jr->min_tflops_total = (float)(gpn * nodes) * pick_tflops(r, prec, 0.0, 0.5);
	if (rng_chance(r, p_price)) {
		/* Users cap the price near what the cheapest GPU that meets their
		 * other needs costs; bargain hunters set it tight. */
		static const double mult[] = { 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0 };
		int64_t base = cheapest_price(jr);
		double k = mult[rng_below(r, bargain ? 4 : (uint32_t)ARRAY_LEN(mult))];
		if (base > 0)
			jr->max_price_micros = (int64_t)llround((double)base * k / 10000.0) * 10000;
	}

	/* Allowed regions: most jobs go anywhere, some are pinned by data
	 * residency to one to three regions. */
	static const uint32_t nreg_w[] = { 55, 25, 12, 8 };
	uint32_t nreg = PICK_W(r, nreg_w);
	if (ar == AR_MULTINODE && nreg > 1 && rng_chance(r, 0.5))
		nreg = 1;
	for (uint32_t i = 0; i < nreg; i++) {
		uint8_t reg;
		bool dup;
		do {
			reg = (uint8_t)PICK_W(r, region_weights);
			dup = false;
			for (uint32_t k = 0; k < i; k++)
				dup |= jr->regions[k] == reg;
		} while (dup);
		jr->regions[i] = reg;
	}
	jr->nregions = (uint8_t)nreg;
	sort_u8(jr->regions, nreg);

	/* Label selectors. */
	uint8_t sel[2];
	uint32_t nsel = 0;
	if (want_ib)
		sel[nsel++] = SEL(LK_NET, 0);
	if (rng_chance(r, nsel ? 0.08 : 0.22)) {
		static const uint8_t choices[] = {
			SEL(LK_TIER, TIER_PREMIUM),
			SEL(LK_TIER, TIER_PREMIUM),
			SEL(LK_TIER, TIER_PREMIUM),
			SEL(LK_TIER, TIER_STANDARD),
			SEL(LK_TIER, TIER_COMMUNITY),
			SEL(LK_DISK, 0),
			SEL(LK_DISK, 0),
			SEL(LK_DISK, 1),
			SEL(LK_ZONE, 0),
			SEL(LK_ZONE, 1),
			SEL(LK_ZONE, 2),
		};
		uint8_t s = PICK(r, choices);
		if (nsel == 0 || SEL_KEY(s) != SEL_KEY(sel[0]))
			sel[nsel++] = s;
		if (nsel == 1 && rng_chance(r, 0.15)) {
			uint8_t s2 = PICK(r, choices);
			if (SEL_KEY(s2) != SEL_KEY(sel[0]))
				sel[nsel++] = s2;
		}
	}
	memcpy(jr->selectors, sel, nsel);
	jr->nselectors = (uint8_t)nsel;
	sort_u8(jr->selectors, nsel);

	/* Tolerations: research teams tolerate their dedicated nodes. */
	double tol = rng_unit(r);
	if (tol < 0.04)
		jr->tolerations = TOL_RESEARCH;
	else if (tol < 0.05)
		jr->tolerations = TOL_DEDICATED;
	else if (tol < 0.06 || (ar == AR_INFERENCE && tol < 0.10))
		jr->tolerations = TOL_INFERENCE;

	t->archetype = (uint8_t)ar;
	t->kind = (uint8_t)kind;
	t->priority_class = (uint8_t)prio;
	t->preemptible = rng_chance(r, p_preempt);
	t->tenant = pick_tenant(b, r);
	t->preferred_region = 0xff;
	if (rng_chance(r, 0.35))
		t->preferred_region = jr->nregions ? jr->regions[rng_below(r, jr->nregions)]
		                                   : (uint8_t)PICK_W(r, region_weights);
}

/* Turns a template into one job: its own id, submit time and duration
 * (the lifetime of a trace pod; Gavel's 60 x 10^U(2,4) s for gangs). The
 * strings in *st back the pointers in *js. */
static void instantiate(struct bench *b, struct rng *r, const struct job_tmpl *t, uint64_t id,
                        int64_t now_us, struct job_rec *jr, struct sched_job_spec *js,
                        struct job_strs *st)
{
	*jr = t->req;
	jr->parts_seen = 0;
	jr->gang_region = 0xff;
	memset(js, 0, sizeof *js);

	for (uint32_t i = 0; i < jr->nregions; i++)
		st->regions[i] = region_names[jr->regions[i]];
	for (uint32_t i = 0; i < jr->nselectors; i++)
		st->selectors[i] =
		    label_strs[SEL_KEY(jr->selectors[i])][SEL_VALUE(jr->selectors[i])];
	uint32_t ntol = 0;
	if (jr->tolerations & TOL_RESEARCH)
		st->tolerations[ntol++] = "dedicated=research";
	if (jr->tolerations & TOL_INFERENCE)
		st->tolerations[ntol++] = "dedicated=inference";
	if (jr->tolerations & TOL_DEDICATED)
		st->tolerations[ntol++] = "dedicated";

	int64_t dur_s;
	if (t->archetype == AR_GANG)
		dur_s = (int64_t)(60.0 * pow(10.0, rng_range(r, 2.0, 4.0)));
	else if (t->archetype == AR_MULTINODE)
		dur_s = (int64_t)(60.0 * pow(10.0, rng_range(r, 2.5, 4.0)));
	else
		dur_s = b->pods[rng_below(r, b->npods)].lifetime_s;
	/* Users ask for more time than they use: limit = 1.2-3x the run time,
	 * rounded up to 5 minutes, capped at two weeks. */
	int64_t limit_s = (int64_t)((double)dur_s * rng_range(r, 1.2, 3.0));
	limit_s = (limit_s + 299) / 300 * 300;
	if (limit_s > 14 * 86400)
		limit_s = 14 * 86400;

	js->id = id;
	js->tenant_id = (uint64_t)t->tenant + 1;
	js->kind = (enum sched_job_kind)t->kind;
	js->gpus_per_node = jr->gpus_per_node;
	js->node_count = jr->node_count;
	js->min_memory_mib = jr->min_memory_mib;
	js->min_compute_cap = jr->min_cc;
	js->precision = (enum sched_precision)jr->precision;
	js->min_tflops_per_gpu = jr->min_tflops_per_gpu;
	js->min_tflops_total = jr->min_tflops_total;
	js->require_nvlink = jr->nvlink;
	js->nregions = jr->nregions;
	js->regions = jr->nregions ? st->regions : NULL;
	js->preferred_region =
	    t->preferred_region == 0xff ? NULL : region_names[t->preferred_region];
	js->nselectors = jr->nselectors;
	js->selectors = jr->nselectors ? st->selectors : NULL;
	js->ntolerations = ntol;
	js->tolerations = ntol ? st->tolerations : NULL;
	js->max_price_micros = jr->max_price_micros;
	js->max_duration_us = limit_s * US_PER_S;
	js->priority_class = t->priority_class;
	js->preemptible = t->preemptible;
	js->submit_us = now_us - (int64_t)(rng_unit(r) * 3600.0 * (double)US_PER_S);
}

static uint64_t mix64(uint64_t h, uint64_t v)
{
	h ^= v + UINT64_C(0x9e3779b97f4a7c15) + (h << 6) + (h >> 2);
	return h * UINT64_C(0xff51afd7ed558ccd);
}

/* Hash of the constraints that decide which nodes can host a job. */
static uint64_t job_class_hash(const struct job_rec *j)
{
	uint64_t h = 1469598103934665603u;
	uint32_t tf, tt;
	memcpy(&tf, &j->min_tflops_per_gpu, sizeof tf);
	memcpy(&tt, &j->min_tflops_total, sizeof tt);
	h = mix64(h, j->min_memory_mib);
	h = mix64(h, tf);
	h = mix64(h, tt);
	h = mix64(h, (uint64_t)j->max_price_micros);
	h = mix64(h, j->min_cc);
	h = mix64(h, j->gpus_per_node | (uint64_t)j->node_count << 8 |
	                 (uint64_t)j->precision << 16 | (uint64_t)j->nvlink << 24 |
	                 (uint64_t)j->tolerations << 32);
	uint64_t reg = 0, sel = 0;
	for (uint32_t i = 0; i < j->nregions; i++)
		reg |= 1u << j->regions[i];
	for (uint32_t i = 0; i < j->nselectors; i++)
		sel |= UINT64_C(1) << j->selectors[i];
	h = mix64(h, reg);
	h = mix64(h, sel);
	return h ? h : 1;
}

/* Distinct requirement tuples among jobs [lo, hi). */
static uint32_t count_classes(const struct bench *b, uint32_t lo, uint32_t hi)
{
	size_t cap = 16;
	while (cap < 2 * (size_t)(hi - lo))
		cap *= 2;
	uint64_t *set = calloc(cap, sizeof *set);
	if (!set)
		return 0;
	uint32_t n = 0;
	for (uint32_t i = lo; i < hi; i++) {
		uint64_t h = job_class_hash(&b->jobs[i]);
		size_t k = h & (cap - 1);
		while (set[k] && set[k] != h)
			k = (k + 1) & (cap - 1);
		if (!set[k]) {
			set[k] = h;
			n++;
		}
	}
	free(set);
	return n;
}

static int grow_jobs(struct bench *b, uint32_t more)
{
	if (b->njobs + more <= b->jobs_cap)
		return 0;
	uint32_t cap = b->jobs_cap ? b->jobs_cap : 1024;
	while (cap < b->njobs + more)
		cap *= 2;
	struct job_rec *v = realloc(b->jobs, (size_t)cap * sizeof *v);
	if (!v)
		return -ENOMEM;
	b->jobs = v;
	b->jobs_cap = cap;
	return 0;
}

/* Adds count new pending jobs; their ids are njobs+1 .. njobs+count. */
static int add_jobs(struct bench *b, uint32_t count, int64_t now_us)
{
	if (grow_jobs(b, count) != 0)
		return -ENOMEM;
	for (uint32_t k = 0; k < count; k++) {
		struct sched_job_spec js;
		struct job_strs st;
		struct job_tmpl fresh;
		const struct job_tmpl *t = &fresh;
		if (b->opt.templates == 0 || rng_chance(&b->rng, b->opt.fresh))
			gen_template(b, &b->rng, &fresh);
		else
			t = &b->tmpl[pick_cdf(b->tmpl_cdf, b->opt.templates, rng_unit(&b->rng))];
		struct job_rec *jr = &b->jobs[b->njobs];
		instantiate(b, &b->rng, t, (uint64_t)b->njobs + 1, now_us, jr, &js, &st);
		struct sched_error err = { { 0 }, { 0 } };
		int rc = sched_job_add(b->c, &js, &err);
		if (rc != 0) {
			fprintf(stderr, "sched-bench: job_add id=%" PRIu64 ": %s (%s: %s)\n", js.id,
			        strerror(-rc), err.field, err.message);
			return rc;
		}
		b->njobs++;
	}
	return 0;
}

/* ---- checking placements ------------------------------------------------ */

static void violation(struct bench *b, const struct sched_action *a, const char *what)
{
	if (b->violations++ < 10)
		fprintf(stderr,
		        "sched-bench: VIOLATION job=%" PRIu64 " node=%" PRIu64 " mask=%#" PRIx64
		        ": %s\n",
		        a->job_id, a->node_id, a->gpu_mask, what);
}

static bool has_label(const struct node_rec *n, uint8_t sel)
{
	return n->label[SEL_KEY(sel)] == SEL_VALUE(sel);
}

/* Whether the node, idle and ready, meets every hard constraint of the job
 * (one gang part). The bench's own filter, independent of the library's. */
static bool node_could_host(const struct bench *b, const struct node_rec *n,
                            const struct job_rec *j)
{
	const struct gpu_model *m = &gpu_models[n->model];
	if (!n->verified && !b->pol.allow_unverified)
		return false;
	if (j->nregions) {
		bool ok = false;
		for (uint32_t i = 0; i < j->nregions; i++)
			ok |= j->regions[i] == n->region;
		if (!ok)
			return false;
	}
	if (m->memory_mib < j->min_memory_mib || m->compute_cap < j->min_cc ||
	    !(model_precisions(m) & (1u << j->precision)) ||
	    n->tflops[j->precision] < j->min_tflops_per_gpu)
		return false;
	if (j->min_tflops_total > 0.0f &&
	    (double)n->tflops[j->precision] * j->gpus_per_node * j->node_count <
	        (double)j->min_tflops_total)
		return false;
	if (!tolerates(n->taint, j->tolerations))
		return false;
	if (j->max_price_micros && n->price_micros > j->max_price_micros)
		return false;
	for (uint32_t i = 0; i < j->nselectors; i++)
		if (!has_label(n, j->selectors[i]))
			return false;
	if (n->ngpus < j->gpus_per_node)
		return false;
	if (j->nvlink && j->gpus_per_node > 1) {
		/* Every layout here is all-in-one, pairs, or none. */
		if (m->geforce || m->link == LINK_NONE)
			return false;
		if (m->link == LINK_PAIRS && j->gpus_per_node > 2)
			return false;
	}
	return true;
}

/* Whether an idle fleet could run the job: node_count hosts in one region. */
static bool fleet_could_host(const struct bench *b, const struct job_rec *j)
{
	uint32_t per_region[NREGIONS] = { 0 };
	for (uint32_t i = 0; i < b->nnodes; i++) {
		const struct node_rec *n = &b->nodes[i];
		if (n->state != SCHED_NODE_READY || !node_could_host(b, n, j))
			continue;
		if (++per_region[n->region] >= j->node_count)
			return true;
	}
	return false;
}

/* Prints the shape of jobs [lo, hi) and returns the share of a sample that
 * an idle fleet could run at all. */
static double describe_jobs(const struct bench *b, uint32_t lo, uint32_t hi)
{
	uint32_t by_gpus[4] = { 0 }, multi = 0, nvlink = 0, regions = 0, selectors = 0, tols = 0,
	         price = 0, tflops = 0, mem = 0;
	uint64_t gpus = 0;
	for (uint32_t i = lo; i < hi; i++) {
		const struct job_rec *j = &b->jobs[i];
		gpus += (uint64_t)j->gpus_per_node * j->node_count;
		if (j->node_count > 1)
			multi++;
		else
			by_gpus[j->gpus_per_node >= 8   ? 3
			        : j->gpus_per_node >= 4 ? 2
			        : j->gpus_per_node >= 2 ? 1
			                                : 0]++;
		nvlink += j->nvlink;
		regions += j->nregions > 0;
		selectors += j->nselectors > 0;
		tols += j->tolerations != 0;
		price += j->max_price_micros > 0;
		tflops += j->min_tflops_per_gpu > 0.0f || j->min_tflops_total > 0.0f;
		mem += j->min_memory_mib > 0;
	}
	uint32_t n = hi - lo, sample = n < 200 ? n : 200, feasible = 0;
	for (uint32_t k = 0; k < sample; k++)
		feasible += fleet_could_host(b, &b->jobs[lo + (uint64_t)k * n / sample]);
	double pct = 100.0 / (n ? n : 1);
	fprintf(stderr,
	        "sched-bench:   jobs=%" PRIu32 " gpus=%" PRIu64 " | 1 GPU %.1f%%, 2-3 %.1f%%,"
	        " 4-7 %.1f%%, 8 %.1f%%, multi-node %.1f%% | nvlink %.1f%%, regions %.1f%%,"
	        " selectors %.1f%%, tolerations %.1f%%, max price %.1f%%, min TFLOPS %.1f%%,"
	        " min memory %.1f%% | an idle fleet fits %" PRIu32 "/%" PRIu32 " sampled\n",
	        n, gpus, by_gpus[0] * pct, by_gpus[1] * pct, by_gpus[2] * pct, by_gpus[3] * pct,
	        multi * pct, nvlink * pct, regions * pct, selectors * pct, tols * pct, price * pct,
	        tflops * pct, mem * pct, feasible, sample);
	return sample ? (double)feasible / sample : 0.0;
}

/* Checks one START against the job's hard constraints and the GPUs already
 * handed out, then marks its GPUs busy. */
static void check_start(struct bench *b, const struct sched_action *a)
{
	if (a->job_id == 0 || a->job_id > b->njobs) {
		violation(b, a, "unknown job id");
		return;
	}
	if (a->node_id == 0 || a->node_id > b->nnodes) {
		violation(b, a, "unknown node id");
		return;
	}
	struct job_rec *j = &b->jobs[a->job_id - 1];
	struct node_rec *n = &b->nodes[a->node_id - 1];
	const struct gpu_model *m = &gpu_models[n->model];
	uint64_t all = n->ngpus == 64 ? ~UINT64_C(0) : (UINT64_C(1) << n->ngpus) - 1;

	if (a->gpu_mask & ~all)
		violation(b, a, "GPU index beyond the node");
	if (a->gpu_mask & n->busy)
		violation(b, a, "GPU already held by another job");
	n->busy |= a->gpu_mask & all;
	if ((uint32_t)__builtin_popcountll(a->gpu_mask) != j->gpus_per_node)
		violation(b, a, "wrong number of GPUs");
	if (a->gang_size != j->node_count || a->gang_index >= j->node_count)
		violation(b, a, "gang size/index disagree with node_count");
	if (n->state != SCHED_NODE_READY)
		violation(b, a, "node not ready");
	if (!n->verified && !b->pol.allow_unverified)
		violation(b, a, "unverified node");
	if (j->nregions) {
		bool ok = false;
		for (uint32_t i = 0; i < j->nregions; i++)
			ok |= j->regions[i] == n->region;
		if (!ok)
			violation(b, a, "region not allowed");
	}
	if (j->gang_region == 0xff)
		j->gang_region = n->region;
	else if (j->gang_region != n->region)
		violation(b, a, "gang spans regions");
	if (++j->parts_seen > j->node_count)
		violation(b, a, "more gang parts than node_count");
	if (m->memory_mib < j->min_memory_mib)
		violation(b, a, "memory below minimum");
	if (m->compute_cap < j->min_cc)
		violation(b, a, "compute capability below minimum");
	if (!(model_precisions(m) & (1u << j->precision)))
		violation(b, a, "precision not supported");
	if (n->tflops[j->precision] < j->min_tflops_per_gpu)
		violation(b, a, "TFLOPS per GPU below minimum");
	if (j->min_tflops_total > 0.0f) {
		double total = (double)n->tflops[j->precision] * j->gpus_per_node * j->node_count;
		if (total < (double)j->min_tflops_total * (1.0 - 1e-5))
			violation(b, a, "total TFLOPS below minimum");
	}
	if (!tolerates(n->taint, j->tolerations))
		violation(b, a, "untolerated taint");
	if (j->max_price_micros && n->price_micros > j->max_price_micros)
		violation(b, a, "price above maximum");
	for (uint32_t i = 0; i < j->nselectors; i++)
		if (!has_label(n, j->selectors[i]))
			violation(b, a, "label selector not matched");
	if (j->nvlink && j->gpus_per_node > 1) {
		uint16_t grp = 0;
		bool ok = true;
		for (uint32_t g = 0; g < n->ngpus; g++) {
			if (!(a->gpu_mask & (UINT64_C(1) << g)))
				continue;
			uint16_t x = nvlink_group(m, n->ngpus, g);
			if (x == 0 || (grp && x != grp))
				ok = false;
			grp = x;
		}
		if (!ok)
			violation(b, a, "GPUs not in one NVLink group");
	}
}

/* ---- cycles ------------------------------------------------------------- */

struct cycle_result {
	int64_t ns;      /* sched_cycle wall time */
	int64_t cpu_ns;  /* ... and CPU time */
	uint32_t placed; /* jobs started (gang_index 0) */
	uint64_t placed_gpus;
	uint32_t preempt_actions;
	uint32_t unschedulable;
	struct sched_cycle_stats st;
};

/* Runs one timed cycle, checks its actions, and stops (removes) preemption
 * victims the way a server would once their grace ends. */
static int run_cycle(struct bench *b, int64_t now_us, struct cycle_result *res)
{
	struct sched_actions out = { 0 };
	memset(res, 0, sizeof *res);
	int64_t t0 = mono_ns(), c0 = cpu_ns();
	int rc = sched_cycle(b->c, now_us, &out, &res->st);
	int64_t t1 = mono_ns(), c1 = cpu_ns();
	res->ns = t1 - t0;
	res->cpu_ns = c1 - c0;
	if (rc != 0) {
		fprintf(stderr, "sched-bench: sched_cycle: %s\n", strerror(-rc));
		sched_actions_free(b->c, &out);
		return rc;
	}
	for (size_t i = 0; i < out.len; i++) {
		const struct sched_action *a = &out.items[i];
		switch (a->kind) {
		case SCHED_ACT_START:
			if (a->gang_index == 0)
				res->placed++;
			res->placed_gpus += (uint64_t)__builtin_popcountll(a->gpu_mask);
			check_start(b, a);
			break;
		case SCHED_ACT_PREEMPT:
			res->preempt_actions++;
			break;
		case SCHED_ACT_UNSCHEDULABLE:
			res->unschedulable++;
			break;
		default:
			violation(b, a, "unknown action kind");
			break;
		}
	}
	for (size_t i = 0; i < out.len; i++) {
		const struct sched_action *a = &out.items[i];
		if (a->kind != SCHED_ACT_PREEMPT)
			continue;
		struct sched_placement pl[SCHED_MAX_GANG_NODES];
		int np = sched_job_placement(b->c, a->job_id, pl, SCHED_MAX_GANG_NODES);
		if (np < 0)
			continue; /* already stopped by an earlier action */
		if (sched_lease_end(b->c, a->job_id, now_us, false) != 0)
			continue;
		for (int k = 0; k < np && k < SCHED_MAX_GANG_NODES; k++)
			if (pl[k].node_id >= 1 && pl[k].node_id <= b->nnodes)
				b->nodes[pl[k].node_id - 1].busy &= ~pl[k].gpu_mask;
	}
	sched_actions_free(b->c, &out);
	return 0;
}

/* Removes the jobs of [lo, hi) still pending, so the next measured cycle
 * looks at exactly the jobs it is given. */
static uint32_t cancel_pending(struct bench *b, uint32_t lo, uint32_t hi, int64_t now_us)
{
	uint32_t n = 0;
	for (uint32_t i = lo; i < hi; i++) {
		uint64_t id = (uint64_t)i + 1;
		if (sched_job_state(b->c, id) == SCHED_JOB_PENDING &&
		    sched_job_cancel(b->c, id, now_us) == 0)
			n++;
	}
	return n;
}

static void print_cycle(const char *what, const struct cycle_result *r)
{
	fprintf(stderr,
	        "sched-bench: %s cycle %.2f ms: placed=%" PRIu32 " gpus=%" PRIu64
	        " preempt=%" PRIu32 " unschedulable=%" PRIu32 " | considered=%" PRIu32
	        " skipped_class=%" PRIu32 " blocked=%" PRIu32 " reserved=%" PRIu32
	        " nodes_visited=%" PRIu32 "\n",
	        what, (double)r->ns / 1e6, r->placed, r->placed_gpus, r->preempt_actions,
	        r->unschedulable, r->st.considered, r->st.skipped_class, r->st.blocked,
	        r->st.reserved, r->st.nodes_visited);
}

static void json_cycle_stats(const char *name, const struct sched_cycle_stats *s)
{
	printf("\"%s\":{\"considered\":%" PRIu32 ",\"placed\":%" PRIu32
	       ",\"skipped_class\":%" PRIu32 ",\"blocked\":%" PRIu32 ",\"reserved\":%" PRIu32
	       ",\"preempted\":%" PRIu32 ",\"unschedulable\":%" PRIu32 ",\"nodes_visited\":%" PRIu32
	       "}",
	       name, s->considered, s->placed, s->skipped_class, s->blocked, s->reserved,
	       s->preempted, s->unschedulable, s->nodes_visited);
}

/* ---- command line ------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: sched-bench --nodes N --jobs M [--seed S] [--traces DIR]\n"
	    "                   [--no-backfill] [--policy-preempt | --no-preempt] [--recommended]\n"
	    "                   [--templates K] [--fresh F] [--explain-samples K]\n"
	    "                   [--fill-target F] [--check] [--fill-only]\n"
	    "  --nodes N            nodes, scaled up from the Alibaba trace inventory\n"
	    "  --jobs M             pending jobs per measured cycle\n"
	    "  --seed S             RNG seed (default 1)\n"
	    "  --traces DIR         traces directory (default ../shared/traces from the\n"
	    "                       project root)\n"
	    "  --templates K        requirement templates, Zipf(1)-popular (4000;\n"
	    "                       0 = every job draws its own)\n"
	    "  --fresh F            share of jobs drawing their own requirements\n"
	    "                       instead of a template (0.05)\n"
	    "  --recommended        start from sched_policy_recommended (the shipped\n"
	    "                       default.json: heterogeneity scoring on)\n"
	    "  --no-backfill        policy.backfill = false\n"
	    "  --policy-preempt     policy.preemption = true (--no-preempt: false);\n"
	    "                       default: the library's default policy\n"
	    "  --explain-samples K  pending jobs explained after the steady cycle (100)\n"
	    "  --fill-target F      pre-fill until at most this fraction of GPUs is\n"
	    "                       free (default 0.05)\n"
	    "  --check              run sched_cluster_check after each phase\n"
	    "  --fill-only          stop after the fill cycle (for profiling it)\n");
}

static bool parse_u64(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-')
		return false;
	*out = v;
	return true;
}

static int parse_args(int argc, char **argv, struct options *o)
{
	memset(o, 0, sizeof *o);
	o->seed = 1;
	o->preemption = -1;
	o->explain_samples = 100;
	o->fill_target = 0.05;
	o->templates = 4000;
	o->fresh = 0.05;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		uint64_t x;
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			exit(0);
		} else if (strcmp(a, "--nodes") == 0 && v && parse_u64(v, &x) && x >= 1 &&
		           x <= 10000000) {
			o->nodes = (uint32_t)x;
			i++;
		} else if (strcmp(a, "--jobs") == 0 && v && parse_u64(v, &x) && x >= 1 &&
		           x <= 10000000) {
			o->jobs = (uint32_t)x;
			i++;
		} else if (strcmp(a, "--seed") == 0 && v && parse_u64(v, &x)) {
			o->seed = x;
			i++;
		} else if (strcmp(a, "--traces") == 0 && v) {
			o->traces = v;
			i++;
		} else if (strcmp(a, "--explain-samples") == 0 && v && parse_u64(v, &x) &&
		           x <= 1000000) {
			o->explain_samples = (uint32_t)x;
			i++;
		} else if (strcmp(a, "--fill-target") == 0 && v) {
			char *end;
			double f = strtod(v, &end);
			if (*end || !(f >= 0.0 && f <= 1.0)) {
				fprintf(stderr, "sched-bench: --fill-target wants 0..1, got '%s'\n",
				        v);
				return -1;
			}
			o->fill_target = f;
			i++;
		} else if (strcmp(a, "--templates") == 0 && v && parse_u64(v, &x) &&
		           x <= 10000000) {
			o->templates = (uint32_t)x;
			i++;
		} else if (strcmp(a, "--fresh") == 0 && v) {
			char *end;
			double f = strtod(v, &end);
			if (*end || !(f >= 0.0 && f <= 1.0)) {
				fprintf(stderr, "sched-bench: --fresh wants 0..1, got '%s'\n", v);
				return -1;
			}
			o->fresh = f;
			i++;
		} else if (strcmp(a, "--no-backfill") == 0) {
			o->no_backfill = true;
		} else if (strcmp(a, "--policy-preempt") == 0 || strcmp(a, "--preempt") == 0) {
			o->preemption = 1;
		} else if (strcmp(a, "--no-preempt") == 0) {
			o->preemption = 0;
		} else if (strcmp(a, "--recommended") == 0) {
			o->recommended = true;
		} else if (strcmp(a, "--check") == 0) {
			o->check = true;
		} else if (strcmp(a, "--fill-only") == 0) {
			o->fill_only = true;
		} else {
			fprintf(stderr, "sched-bench: bad argument '%s'%s\n", a,
			        v ? "" : " (missing value?)");
			usage(stderr);
			return -1;
		}
	}
	if (o->nodes == 0 || o->jobs == 0) {
		fprintf(stderr, "sched-bench: --nodes and --jobs are required\n");
		usage(stderr);
		return -1;
	}
	return 0;
}

/* Finds the traces: --traces, else <source root>/../shared/traces compiled
 * in, else ../shared/traces relative to the working directory. */
static const char *find_traces(const char *given)
{
	if (given) {
		if (traces_present(given))
			return given;
		fprintf(stderr, "sched-bench: traces not found under %s (need %s and %s)\n", given,
		        NODE_CSV, POD_CSV);
		return NULL;
	}
	static const char *const candidates[] = {
#ifdef GPUMATCH_SOURCE_ROOT
		GPUMATCH_SOURCE_ROOT "/../shared/traces",
#endif
		"../shared/traces",
	};
	for (size_t i = 0; i < ARRAY_LEN(candidates); i++)
		if (traces_present(candidates[i]))
			return candidates[i];
	fprintf(stderr, "sched-bench: traces not found; looked for %s and %s under:\n", NODE_CSV,
	        POD_CSV);
	for (size_t i = 0; i < ARRAY_LEN(candidates); i++)
		fprintf(stderr, "  %s\n", candidates[i]);
	fprintf(stderr, "sched-bench: run from the project root or pass --traces DIR\n");
	return NULL;
}

static int check_cluster(struct bench *b, const char *when)
{
	if (!b->opt.check)
		return 0;
	char why[512] = "";
	double t0 = now_s();
	int rc = sched_cluster_check(b->c, why, sizeof why);
	fprintf(stderr, "sched-bench: cluster_check after %s: %s%s (%.2f s)\n", when,
	        rc == 0 ? "ok" : "FAILED: ", rc == 0 ? "" : why, now_s() - t0);
	if (rc != 0)
		b->violations++;
	return rc;
}

/* ---- main --------------------------------------------------------------- */

int main(int argc, char **argv)
{
	struct bench b;
	memset(&b, 0, sizeof b);
	if (parse_args(argc, argv, &b.opt) != 0)
		return 1;
	const char *traces = find_traces(b.opt.traces);
	if (!traces)
		return 1;
	double t_start = now_s();
	if (load_trace_nodes(traces, &b.tnodes, &b.ntnodes) != 0 ||
	    load_trace_pods(traces, &b.pods, &b.npods) != 0)
		return 1;
	rng_seed(&b.rng, b.opt.seed);
	fprintf(stderr,
	        "sched-bench: traces=%s trace_nodes=%" PRIu32 " gpu_pods=%" PRIu32 " seed=%" PRIu64
	        "\n",
	        traces, b.ntnodes, b.npods, b.opt.seed);

	/* Shuffle the inventory once, then cycle through it: every full pass
	 * has the trace's exact model mix, a partial one a fair sample. */
	for (uint32_t i = b.ntnodes - 1; i > 0; i--) {
		uint32_t k = rng_below(&b.rng, i + 1);
		struct bench_tnode t = b.tnodes[i];
		b.tnodes[i] = b.tnodes[k];
		b.tnodes[k] = t;
	}

	/* Tenants: Zipf(1) over 500, as a few teams submit most jobs. */
	zipf_cdf(b.tenant_cdf, NTENANTS);

	/* Requirement templates: in the trace 7,064 GPU pods ask for only 135
	 * distinct resource shapes (450 with gpu_spec), the most common one for
	 * 11 % of pods. Jobs here come from a Zipf(1)-popular pool of templates,
	 * plus a share with requirements of their own: ~6.7 % of 100,000 jobs
	 * are distinct, about the gpuspec33 ratio, thousands of classes. */
	if (b.opt.templates) {
		b.tmpl = calloc(b.opt.templates, sizeof *b.tmpl);
		b.tmpl_cdf = calloc(b.opt.templates, sizeof *b.tmpl_cdf);
		if (!b.tmpl || !b.tmpl_cdf) {
			fprintf(stderr, "sched-bench: out of memory\n");
			return 2;
		}
		for (uint32_t i = 0; i < b.opt.templates; i++)
			gen_template(&b, &b.rng, &b.tmpl[i]);
		zipf_cdf(b.tmpl_cdf, b.opt.templates);
	}

	b.c = sched_cluster_new(NULL);
	if (!b.c) {
		fprintf(stderr, "sched-bench: sched_cluster_new: out of memory\n");
		return 2;
	}
	if (b.opt.recommended)
		sched_policy_recommended(&b.pol);
	else
		sched_policy_default(&b.pol);
	if (b.opt.no_backfill)
		b.pol.backfill = false;
	if (b.opt.preemption >= 0)
		b.pol.preemption = b.opt.preemption == 1;
	struct sched_error err = { { 0 }, { 0 } };
	if (sched_set_policy(b.c, &b.pol, &err) != 0) {
		fprintf(stderr, "sched-bench: set_policy: %s: %s\n", err.field, err.message);
		return 2;
	}
	int64_t now = BENCH_NOW_US;
	for (uint32_t t = 0; t < NTENANTS; t++) {
		uint64_t id = (uint64_t)t + 1;
		if (sched_tenant_set_shares(b.c, id, 1 + rng_below(&b.rng, 10)) != 0 ||
		    (rng_chance(&b.rng, 0.6) &&
		     sched_tenant_set_usage(b.c, id, rng_range(&b.rng, 0.0, 2e6), now) != 0)) {
			fprintf(stderr, "sched-bench: tenant setup failed for tenant %" PRIu64 "\n",
			        id);
			return 2;
		}
	}

	/* Nodes. */
	b.nnodes = b.opt.nodes;
	b.nodes = calloc(b.nnodes, sizeof *b.nodes);
	if (!b.nodes) {
		fprintf(stderr, "sched-bench: out of memory\n");
		return 2;
	}
	size_t bytes0 = cluster_bytes(b.c);
	uint32_t model_nodes[NMODELS] = { 0 };
	uint64_t total_gpus = 0;
	for (uint32_t i = 0; i < b.nnodes; i++) {
		make_node(&b, &b.rng, i, &b.tnodes[i % b.ntnodes]);
		if (upsert_node(&b, i) != 0)
			return 2;
		model_nodes[b.nodes[i].model]++;
		total_gpus += b.nodes[i].ngpus;
	}
	size_t bytes1 = cluster_bytes(b.c);
	double bytes_per_node = (double)(bytes1 - bytes0) / b.nnodes;
	uint32_t nmodels = 0;
	for (uint32_t m = 0; m < NMODELS; m++)
		if (model_nodes[m]) {
			nmodels++;
			fprintf(stderr, "sched-bench:   %-16s nodes=%" PRIu32 "\n",
			        gpu_models[m].name, model_nodes[m]);
		}
	fprintf(stderr,
	        "sched-bench: fleet nodes=%" PRIu32 " gpus=%" PRIu64 " models=%" PRIu32
	        " bytes_per_node=%.0f\n",
	        b.nnodes, total_gpus, nmodels, bytes_per_node);

	/* Phase 1: empty cluster, M pending jobs, one cycle. */
	uint32_t fill_lo = b.njobs;
	if (add_jobs(&b, b.opt.jobs, now) != 0)
		return 2;
	uint32_t fill_hi = b.njobs;
	size_t bytes2 = cluster_bytes(b.c);
	double bytes_per_job = (double)(bytes2 - bytes1) / b.opt.jobs;
	uint32_t fill_classes = count_classes(&b, fill_lo, fill_hi);
	struct sched_stats st;
	sched_get_stats(b.c, &st);
	fprintf(stderr,
	        "sched-bench: fill: jobs=%" PRIu32 " classes=%" PRIu32 " lib_classes=%" PRIu32
	        " bytes_per_job=%.0f setup=%.2f s\n",
	        b.opt.jobs, fill_classes, st.classes, bytes_per_job, now_s() - t_start);
	double setup_s = now_s() - t_start;

	struct cycle_result fill;
	if (run_cycle(&b, now, &fill) != 0)
		return 2;
	print_cycle("fill", &fill);
	double fill_rate = fill.ns > 0 ? fill.placed / ((double)fill.ns * 1e-9) : 0.0;
	double fill_cpu_rate = fill.cpu_ns > 0 ? fill.placed / ((double)fill.cpu_ns * 1e-9) : 0.0;
	check_cluster(&b, "fill");

	/* Pre-fill for the steady phase: more batches of the same mix until few
	 * GPUs are free or a round fills under 0.5 % of the fleet, leftovers
	 * cancelled after each so they do not pile up. Preemption is off while
	 * filling (it only churns running work; this is setup, not measured)
	 * and restored for the steady cycle. */
	if (b.opt.fill_only) {
		printf(
		    "{\"nodes\":%" PRIu32 ",\"gpus\":%" PRIu64 ",\"jobs\":%" PRIu32
		    ",\"classes\":%" PRIu32 ",\"fill_cycle_ms\":%.3f,\"fill_placed\":%" PRIu32
		    ",\"fill_placements_per_s\":%.0f,\"bytes_per_job\":%.1f,\"bytes_per_node\":%.1f"
		    ",\"violations\":%" PRIu64 ",",
		    b.nnodes, total_gpus, b.opt.jobs, fill_classes, (double)fill.ns / 1e6,
		    fill.placed, fill_rate, bytes_per_job, bytes_per_node, b.violations);
		json_cycle_stats("fill_stats", &fill.st);
		printf("}\n");
		sched_cluster_free(b.c);
		return b.violations ? 3 : 0;
	}
	cancel_pending(&b, fill_lo, fill_hi, now);
	double t_prefill = now_s();
	if (b.pol.preemption) {
		struct sched_policy quiet = b.pol;
		quiet.preemption = false;
		if (sched_set_policy(b.c, &quiet, &err) != 0) {
			fprintf(stderr, "sched-bench: set_policy: %s: %s\n", err.field,
			        err.message);
			return 2;
		}
	}
	int64_t tnow = now;
	uint32_t rounds = 0;
	for (; rounds < 40; rounds++) {
		sched_get_stats(b.c, &st);
		if (st.gpus_total == 0 ||
		    (double)st.gpus_free <= b.opt.fill_target * (double)st.gpus_total)
			break;
		uint32_t batch = (uint32_t)(st.gpus_free < 1000 ? 1000 : st.gpus_free);
		if (batch > 2 * b.opt.jobs)
			batch = 2 * b.opt.jobs;
		uint32_t lo = b.njobs;
		tnow += 10 * US_PER_S;
		if (add_jobs(&b, batch, tnow) != 0)
			return 2;
		struct cycle_result r;
		if (run_cycle(&b, tnow, &r) != 0)
			return 2;
		double t_cancel = now_s();
		uint32_t cancelled = cancel_pending(&b, lo, b.njobs, tnow);
		fprintf(stderr,
		        "sched-bench: pre-fill round %" PRIu32 ": batch=%" PRIu32
		        " free_before=%" PRIu64 " cycle %.1f ms placed=%" PRIu32 " preempt=%" PRIu32
		        " cancelled=%" PRIu32 " (%.2f s)\n",
		        rounds, batch, st.gpus_free, (double)r.ns / 1e6, r.placed,
		        r.preempt_actions, cancelled, now_s() - t_cancel);
		if ((double)r.placed_gpus < 0.005 * (double)st.gpus_total)
			break;
	}
	if (sched_set_policy(b.c, &b.pol, &err) != 0) {
		fprintf(stderr, "sched-bench: set_policy: %s: %s\n", err.field, err.message);
		return 2;
	}
	sched_get_stats(b.c, &st);
	uint64_t steady_free_before = st.gpus_free;
	fprintf(stderr,
	        "sched-bench: pre-fill: %" PRIu32 " rounds in %.2f s: running=%" PRIu32
	        " gpus_free=%" PRIu64 "/%" PRIu64 " (%.1f %%)\n",
	        rounds, now_s() - t_prefill, st.jobs_running, st.gpus_free, st.gpus_total,
	        st.gpus_total ? 100.0 * (double)st.gpus_free / (double)st.gpus_total : 0.0);
	check_cluster(&b, "pre-fill");

	/* Phase 2: M new jobs against the busy cluster, one cycle. */
	tnow += 600 * US_PER_S;
	size_t bytes3 = cluster_bytes(b.c);
	uint32_t steady_lo = b.njobs;
	if (add_jobs(&b, b.opt.jobs, tnow) != 0)
		return 2;
	uint32_t steady_hi = b.njobs;
	size_t bytes4 = cluster_bytes(b.c);
	double bytes_per_job_steady = ((double)bytes4 - (double)bytes3) / b.opt.jobs;
	uint32_t classes = count_classes(&b, steady_lo, steady_hi);
	double feasible_share = describe_jobs(&b, steady_lo, steady_hi);
	sched_get_stats(b.c, &st);
	uint32_t lib_classes = st.classes;
	uint32_t lib_pools = st.pools;
	uint32_t lib_egroups = st.egroups;
	uint32_t tenants = st.tenants;
	fprintf(stderr,
	        "sched-bench: steady: jobs=%" PRIu32 " classes=%" PRIu32 " lib_classes=%" PRIu32
	        " pools=%" PRIu32 " egroups=%" PRIu32 " pending=%" PRIu32 " bytes_per_job=%.0f\n",
	        b.opt.jobs, classes, lib_classes, lib_pools, lib_egroups, st.jobs_pending,
	        bytes_per_job_steady);

	struct cycle_result steady;
	if (run_cycle(&b, tnow, &steady) != 0)
		return 2;
	print_cycle("steady", &steady);
	double steady_rate = steady.ns > 0 ? b.opt.jobs / ((double)steady.ns * 1e-9) : 0.0;
	double steady_cpu_rate =
	    steady.cpu_ns > 0 ? b.opt.jobs / ((double)steady.cpu_ns * 1e-9) : 0.0;
	double ns_per_decision = (double)steady.ns / b.opt.jobs;
	check_cluster(&b, "steady");

	/* Explanations for a spread sample of the jobs left pending. */
	uint32_t pending = 0;
	for (uint32_t i = steady_lo; i < steady_hi; i++)
		if (sched_job_state(b.c, (uint64_t)i + 1) == SCHED_JOB_PENDING)
			pending++;
	uint32_t explained = 0, explain_failed = 0, lib_infeasible = 0, bench_infeasible = 0;
	int64_t explain_ns = 0;
	if (pending && b.opt.explain_samples) {
		uint32_t want = b.opt.explain_samples < pending ? b.opt.explain_samples : pending;
		uint32_t stride = pending / want, seen = 0;
		bool printed = false;
		for (uint32_t i = steady_lo; i < steady_hi && explained < want; i++) {
			uint64_t id = (uint64_t)i + 1;
			if (sched_job_state(b.c, id) != SCHED_JOB_PENDING)
				continue;
			if (seen++ % stride != 0)
				continue;
			struct sched_explain e;
			int64_t t0 = mono_ns();
			int rc = sched_job_explain(b.c, id, &e);
			explain_ns += mono_ns() - t0;
			if (rc != 0) {
				explain_failed++;
				continue;
			}
			explained++;
			if (!e.fleet_feasible)
				lib_infeasible++;
			if (!fleet_could_host(&b, &b.jobs[i]))
				bench_infeasible++;
			if (!printed) {
				char buf[1024];
				sched_explain_format(&e, buf, sizeof buf);
				fprintf(stderr, "sched-bench: explain job=%" PRIu64 ": %s\n", id,
				        buf);
				printed = true;
			}
		}
		fprintf(stderr,
		        "sched-bench: explained %" PRIu32 " pending jobs (%" PRIu32
		        " failed), %.1f us each; never fit an idle fleet: %" PRIu32
		        " by the library, %" PRIu32 " by the bench's filter\n",
		        explained, explain_failed,
		        explained ? (double)explain_ns / 1e3 / explained : 0.0, lib_infeasible,
		        bench_infeasible);
	}
	if (explain_failed)
		b.violations++;

	sched_get_stats(b.c, &st);
	double wall_s = now_s() - t_start;
	fprintf(stderr,
	        "sched-bench: fill %.0f placements/s, steady %.0f decisions/s"
	        " (%.0f ns each), %.0f B/job, %.0f B/node, violations=%" PRIu64 ", %.1f s total\n"
	        "sched-bench: per CPU second: fill %.0f placements, steady %.0f decisions\n",
	        fill_rate, steady_rate, ns_per_decision, bytes_per_job, bytes_per_node,
	        b.violations, wall_s, fill_cpu_rate, steady_cpu_rate);

	printf("{\"nodes\":%" PRIu32 ",\"gpus\":%" PRIu64 ",\"gpu_models\":%" PRIu32
	       ",\"regions\":%u,\"jobs\":%" PRIu32 ",\"classes\":%" PRIu32
	       ",\"lib_classes\":%" PRIu32 ",\"lib_pools\":%" PRIu32 ",\"lib_egroups\":%" PRIu32
	       ",\"fill_classes\":%" PRIu32 ",\"tenants\":%" PRIu32 ",\"seed\":%" PRIu64
	       ",\"backfill\":%s,\"preemption\":%s,",
	       b.nnodes, total_gpus, nmodels, NREGIONS, b.opt.jobs, classes, lib_classes, lib_pools,
	       lib_egroups, fill_classes, tenants, b.opt.seed, b.pol.backfill ? "true" : "false",
	       b.pol.preemption ? "true" : "false");
	printf("\"fill_cycle_ms\":%.3f,\"fill_placed\":%" PRIu32 ",\"fill_placed_gpus\":%" PRIu64
	       ",\"fill_unschedulable\":%" PRIu32 ",\"fill_placements_per_s\":%.0f,"
	       "\"fill_placements_per_cpu_s\":%.0f,",
	       (double)fill.ns / 1e6, fill.placed, fill.placed_gpus, fill.unschedulable, fill_rate,
	       fill_cpu_rate);
	json_cycle_stats("fill_stats", &fill.st);
	printf(",\"prefill_rounds\":%" PRIu32 ",\"steady_gpus_free_before\":%" PRIu64
	       ",\"steady_cycle_ms\":%.3f,\"steady_placed\":%" PRIu32
	       ",\"steady_placed_gpus\":%" PRIu64 ",\"steady_pending\":%" PRIu32
	       ",\"steady_preempt_actions\":%" PRIu32 ",\"steady_unschedulable\":%" PRIu32
	       ",\"steady_decisions_per_s\":%.0f,\"steady_decisions_per_cpu_s\":%.0f,"
	       "\"ns_per_decision\":%.1f,",
	       rounds, steady_free_before, (double)steady.ns / 1e6, steady.placed,
	       steady.placed_gpus, pending, steady.preempt_actions, steady.unschedulable,
	       steady_rate, steady_cpu_rate, ns_per_decision);
	json_cycle_stats("steady_stats", &steady.st);
	printf(",\"bytes_per_job\":%.1f,\"bytes_per_job_steady\":%.1f,\"bytes_per_node\":%.1f"
	       ",\"bytes_total\":%zu,\"feasible_share\":%.3f,\"explained\":%" PRIu32
	       ",\"explain_us_avg\":%.1f"
	       ",\"violations\":%" PRIu64 ",\"setup_s\":%.2f,\"wall_s\":%.2f}\n",
	       bytes_per_job, bytes_per_job_steady, bytes_per_node, st.bytes, feasible_share,
	       explained, explained ? (double)explain_ns / 1e3 / explained : 0.0, b.violations,
	       setup_s, wall_s);
	fflush(stdout);

	sched_cluster_free(b.c);
	free(b.nodes);
	free(b.jobs);
	free(b.pods);
	free(b.tmpl);
	free(b.tmpl_cdf);
	free(b.tnodes);
	return b.violations ? 3 : 0;
}
