/* trace.c — readers for node inventories, job lists and throughput tables
 * in the public traces' formats and in gpumatch's own CSV (docs/traces.md). */
#include "trace.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_FIELDS 32

/* Datasheet figures for the models of the Alibaba v2023 inventory (the same
 * stand-ins bench/sched-bench.c uses: G1-G3 are undisclosed in the trace). */
static const struct {
	const char *trace_name;
	struct trace_model m;
} alibaba_models[] = {
	{ "P100", { "P100-PCIe-16GB", 16384, 60, { 9.3f, 0, 18.7f, 0, 0 }, 300000, 0 } },
	{ "T4", { "T4-16GB", 16384, 75, { 8.1f, 0, 65.0f, 0, 0 }, 250000, 0 } },
	{ "V100M16", { "V100-SXM2-16GB", 16384, 70, { 15.7f, 0, 125.0f, 0, 0 }, 600000, 0 } },
	{ "V100M32", { "V100-SXM2-32GB", 32768, 70, { 15.7f, 0, 125.0f, 0, 0 }, 800000, 0 } },
	{ "A10", { "A10-24GB", 24576, 86, { 31.2f, 62.5f, 125.0f, 125.0f, 0 }, 600000, 0 } },
	{ "G1", { "G1", 16384, 61, { 11.0f, 0, 0.2f, 0, 0 }, 200000, 0 } },
	{ "G2", { "G2", 24576, 75, { 16.3f, 0, 130.5f, 0, 0 }, 450000, 0 } },
	{ "G3", { "G3", 40960, 80, { 19.5f, 156.0f, 312.0f, 312.0f, 0 }, 1100000, 0 } },
};

const struct trace_model *trace_alibaba_model(const char *trace_name)
{
	for (size_t i = 0; i < sizeof alibaba_models / sizeof alibaba_models[0]; i++)
		if (!strcmp(alibaba_models[i].trace_name, trace_name))
			return &alibaba_models[i].m;
	return NULL;
}

static void errf(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, len, fmt, ap);
	va_end(ap);
}

/* ---- files and lines ------------------------------------------------------ */

/* Reads a whole file into a NUL-terminated buffer the caller frees. */
static char *slurp(const char *path, char *err, size_t err_len)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		errf(err, err_len, "%s: cannot open: %s", path, strerror(errno));
		return NULL;
	}
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	while (buf) {
		size_t got = fread(buf + len, 1, cap - len - 1, f);
		len += got;
		if (len + 1 < cap)
			break;
		char *nb = realloc(buf, cap * 2);
		if (!nb) {
			free(buf);
			buf = NULL;
			break;
		}
		buf = nb;
		cap *= 2;
	}
	bool bad = ferror(f);
	fclose(f);
	if (!buf || bad) {
		free(buf);
		errf(err, err_len, "%s: cannot read%s", path, bad ? "" : ": out of memory");
		return NULL;
	}
	buf[len] = '\0';
	/* a UTF-8 byte-order mark (spreadsheet exports) is not part of the header */
	if (len >= 3 && !memcmp(buf, "\xef\xbb\xbf", 3))
		memmove(buf, buf + 3, len - 2);
	return buf;
}

/* Text given in memory may start with a UTF-8 byte-order mark too. */
static char *skip_bom(char *text)
{
	return text && !strncmp(text, "\xef\xbb\xbf", 3) ? text + 3 : text;
}

/* Cuts the next line off *p (in place); NULL at the end. */
static char *next_line(char **p)
{
	if (!*p || !**p)
		return NULL;
	char *line = *p;
	char *nl = strchr(line, '\n');
	if (nl) {
		*nl = '\0';
		*p = nl + 1;
	} else {
		*p = line + strlen(line);
	}
	size_t n = strlen(line);
	if (n && line[n - 1] == '\r')
		line[n - 1] = '\0';
	return line;
}

/* Splits a CSV line in place. Fields may be double-quoted ("" for a quote);
 * returns the number of fields. */
static int csv_split(char *line, char **f, int max)
{
	int n = 0;
	char *p = line;
	for (;;) {
		if (n == max)
			return n + 1; /* too many: callers reject */
		if (*p == '"') {
			char *w = ++p;
			f[n++] = w;
			for (;;) {
				if (*p == '"' && p[1] == '"') {
					*w++ = '"';
					p += 2;
				} else if (*p == '"' || !*p) {
					if (*p)
						p++;
					break;
				} else {
					*w++ = *p++;
				}
			}
			*w = '\0';
			if (*p == ',') {
				p++;
				continue;
			}
			return n;
		}
		f[n++] = p;
		char *comma = strchr(p, ',');
		if (!comma)
			return n;
		*comma = '\0';
		p = comma + 1;
	}
}

static bool blank(const char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	return !*s || *s == '#';
}

struct rd {
	const char *path;
	uint32_t line;
	char *err;
	size_t err_len;
};

static int bad(struct rd *r, const char *col, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int bad(struct rd *r, const char *col, const char *fmt, ...)
{
	char msg[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	errf(r->err, r->err_len, "%s:%u: column %s: %s", r->path, r->line, col, msg);
	return -1;
}

static int get_i64(struct rd *r, const char *col, const char *s, int64_t lo, int64_t hi,
                   int64_t *out)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (end == s || *end || errno)
		return bad(r, col, "expected an integer, got \"%s\"", s);
	if (v < lo || v > hi)
		return bad(r, col, "must be between %" PRId64 " and %" PRId64 ", got %lld", lo, hi,
		           v);
	*out = v;
	return 0;
}

static int get_f64(struct rd *r, const char *col, const char *s, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (end == s || *end || errno || !isfinite(v))
		return bad(r, col, "expected a number, got \"%s\"", s);
	if (v < lo || v > hi)
		return bad(r, col, "must be between %g and %g, got %g", lo, hi, v);
	*out = v;
	return 0;
}

static int get_name(struct rd *r, const char *col, const char *s, bool required, char *out)
{
	size_t n = strlen(s);
	if (required && !n)
		return bad(r, col, "must not be empty");
	if (n >= TRACE_NAME_BYTES)
		return bad(r, col, "at most %d bytes, got %zu", TRACE_NAME_BYTES - 1, n);
	memcpy(out, s, n + 1);
	return 0;
}

/* ---- format detection -------------------------------------------------------- */

static enum trace_format detect_header(const char *text)
{
	if (!strncmp(text, "sn,cpu_milli,memory_mib,gpu,model", 33))
		return TRACE_FMT_ALIBABA_NODES;
	if (!strncmp(text, "name,cpu_milli,memory_mib,num_gpu,gpu_milli", 43))
		return TRACE_FMT_ALIBABA_PODS;
	if (!strncmp(text, "job_id,submission_time,duration,num_gpu", 39))
		return TRACE_FMT_MSR_JOBS;
	if (!strncmp(text, TRACE_GM_NODES_HEADER, strlen(TRACE_GM_NODES_HEADER)))
		return TRACE_FMT_GM_NODES;
	if (!strncmp(text, TRACE_GM_JOBS_HEADER, strlen(TRACE_GM_JOBS_HEADER)))
		return TRACE_FMT_GM_JOBS;
	if (!strncmp(text, "job_type,scale_factor,", 22))
		return TRACE_FMT_TPUTS_CSV;
	const char *p = text;
	while (isspace((unsigned char)*p))
		p++;
	if (*p == '{')
		return TRACE_FMT_TPUTS_GAVEL_JSON;
	return TRACE_FMT_UNKNOWN;
}

enum trace_format trace_detect(const char *path, char *err, size_t err_len)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		errf(err, err_len, "%s: cannot open: %s", path, strerror(errno));
		return TRACE_FMT_UNKNOWN;
	}
	char head[512];
	size_t n = fread(head, 1, sizeof head - 1, f);
	fclose(f);
	head[n] = '\0';
	enum trace_format fmt = detect_header(head);
	if (fmt == TRACE_FMT_UNKNOWN)
		errf(err, err_len, "%s: unknown format (header not recognised; see docs/traces.md)",
		     path);
	return fmt;
}

/* ---- nodes ---------------------------------------------------------------------- */

/* Two rows naming one model must agree on its figures (price is the
 * node's own); a model is defined by the first row that names it. */
static bool model_figures_equal(const struct trace_model *a, const struct trace_model *b)
{
	return a->memory_mib == b->memory_mib && a->compute_cap == b->compute_cap &&
	       !memcmp(a->tflops, b->tflops, sizeof a->tflops);
}

static int fleet_model(struct rd *r, struct trace_fleet *fl, const struct trace_model *m,
                       uint32_t *out)
{
	for (uint32_t i = 0; i < fl->nmodels; i++) {
		if (!strcmp(fl->models[i].name, m->name)) {
			if (!model_figures_equal(&fl->models[i], m))
				return bad(r, "model",
				           "GPU model \"%s\" has other figures (memory, compute "
				           "capability or TFLOPS) than on line %u",
				           m->name, fl->models[i].first_line);
			*out = i;
			return 0;
		}
	}
	struct trace_model *v = realloc(fl->models, (fl->nmodels + 1) * sizeof *v);
	if (!v)
		return -1;
	fl->models = v;
	v[fl->nmodels] = *m;
	v[fl->nmodels].first_line = r->line;
	*out = fl->nmodels++;
	return 0;
}

static int fleet_push(struct trace_fleet *fl, uint32_t *cap, const struct trace_node *n)
{
	if (fl->nnodes == *cap) {
		uint32_t nc = *cap ? *cap * 2 : 1024;
		struct trace_node *v = realloc(fl->nodes, nc * sizeof *v);
		if (!v)
			return -1;
		fl->nodes = v;
		*cap = nc;
	}
	fl->nodes[fl->nnodes++] = *n;
	fl->gpus += n->ngpus;
	return 0;
}

static int parse_alibaba_nodes(struct rd *r, char *text, struct trace_fleet *fl)
{
	uint32_t cap = 0;
	char *p = text, *line;
	next_line(&p);
	r->line = 1;
	while ((line = next_line(&p))) {
		r->line++;
		if (blank(line))
			continue;
		char *f[MAX_FIELDS];
		int nf = csv_split(line, f, MAX_FIELDS);
		if (nf != 5)
			return bad(r, "*", "expected 5 columns, got %d", nf);
		int64_t ngpus = 0;
		if (get_i64(r, "gpu", f[3], 0, SCHED_MAX_GPUS_PER_NODE, &ngpus))
			return -1;
		if (!ngpus)
			continue; /* CPU-only node */
		const struct trace_model *m = trace_alibaba_model(f[4]);
		if (!m)
			return bad(r, "model", "unknown GPU model \"%s\"", f[4]);
		struct trace_node n;
		memset(&n, 0, sizeof n);
		n.id = fl->nnodes + 1;
		snprintf(n.region, sizeof n.region, "default");
		n.ngpus = (uint32_t)ngpus;
		n.price_micros = m->price_micros;
		if (fleet_model(r, fl, m, &n.model))
			return -1;
		if (fleet_push(fl, &cap, &n))
			return bad(r, "*", "out of memory");
	}
	return 0;
}

static int parse_gm_nodes(struct rd *r, char *text, struct trace_fleet *fl)
{
	static const char *const prec_cols[SCHED_PREC_COUNT] = { "fp32_tflops", "tf32_tflops",
		                                                 "fp16_tflops", "bf16_tflops",
		                                                 "fp8_tflops" };
	uint32_t cap = 0;
	char *p = text, *line;
	next_line(&p);
	r->line = 1;
	while ((line = next_line(&p))) {
		r->line++;
		if (blank(line))
			continue;
		char *f[MAX_FIELDS];
		int nf = csv_split(line, f, MAX_FIELDS);
		if (nf != 12)
			return bad(r, "*", "expected 12 columns, got %d", nf);
		struct trace_node n;
		struct trace_model m;
		memset(&n, 0, sizeof n);
		memset(&m, 0, sizeof m);
		int64_t v = 0;
		if (get_i64(r, "node_id", f[0], 1, INT64_MAX, &v))
			return -1;
		n.id = (uint64_t)v;
		if (get_name(r, "region", f[1], true, n.region) ||
		    get_name(r, "model", f[2], true, m.name))
			return -1;
		if (get_i64(r, "gpus", f[3], 1, SCHED_MAX_GPUS_PER_NODE, &v))
			return -1;
		n.ngpus = (uint32_t)v;
		if (get_i64(r, "memory_mib", f[4], 1, UINT32_MAX, &v))
			return -1;
		m.memory_mib = (uint32_t)v;
		if (get_i64(r, "compute_cap", f[5], 30, 150, &v))
			return -1;
		m.compute_cap = (uint16_t)v;
		for (int q = 0; q < SCHED_PREC_COUNT; q++) {
			double t;
			if (get_f64(r, prec_cols[q], f[6 + q], 0, 1e6, &t))
				return -1;
			m.tflops[q] = (float)t;
		}
		if (get_i64(r, "price_per_gpu_hour_micros", f[11], 1, (int64_t)1e15, &v))
			return -1;
		n.price_micros = v;
		m.price_micros = v;
		for (uint32_t i = 0; i < fl->nnodes; i++)
			if (fl->nodes[i].id == n.id)
				return bad(r, "node_id", "duplicate node id %" PRIu64, n.id);
		if (fleet_model(r, fl, &m, &n.model))
			return -1;
		if (fleet_push(fl, &cap, &n))
			return bad(r, "*", "out of memory");
	}
	return 0;
}

void trace_fleet_free(struct trace_fleet *f)
{
	if (!f)
		return;
	free(f->models);
	free(f->nodes);
	memset(f, 0, sizeof *f);
}

static int nodes_from_text(const char *name, char *text, struct trace_fleet *out, char *err,
                           size_t err_len, bool gm_only)
{
	memset(out, 0, sizeof *out);
	struct rd r = { name, 0, err, err_len };
	text = skip_bom(text);
	enum trace_format fmt = detect_header(text);
	int rc;
	if (fmt == TRACE_FMT_GM_NODES)
		rc = parse_gm_nodes(&r, text, out);
	else if (fmt == TRACE_FMT_ALIBABA_NODES && !gm_only)
		rc = parse_alibaba_nodes(&r, text, out);
	else {
		errf(err, err_len, "%s: not a node inventory (header must be \"%s\"%s)", name,
		     TRACE_GM_NODES_HEADER, gm_only ? "" : " or Alibaba's node list");
		rc = -1;
	}
	if (!rc && !out->nnodes) {
		errf(err, err_len, "%s: no GPU nodes", name);
		rc = -1;
	}
	if (rc)
		trace_fleet_free(out);
	return rc;
}

int trace_parse_nodes(const char *name, char *text, struct trace_fleet *out, char *err,
                      size_t err_len)
{
	return nodes_from_text(name, text, out, err, err_len, true);
}

int trace_read_nodes(const char *path, struct trace_fleet *out, char *err, size_t err_len)
{
	memset(out, 0, sizeof *out);
	char *text = slurp(path, err, err_len);
	if (!text)
		return -1;
	int rc = nodes_from_text(path, text, out, err, err_len, false);
	free(text);
	return rc;
}

/* ---- jobs ------------------------------------------------------------------------- */

static int jobs_push(struct trace_jobs *js, uint32_t *cap, const struct trace_job *j)
{
	if (js->n == *cap) {
		uint32_t nc = *cap ? *cap * 2 : 4096;
		struct trace_job *v = realloc(js->v, nc * sizeof *v);
		if (!v)
			return -1;
		js->v = v;
		*cap = nc;
	}
	js->v[js->n++] = *j;
	return 0;
}

/* A job of g GPUs: up to 8 on one node, wider ones as gangs of 8-GPU nodes
 * (the widest nodes of the public inventories). */
static void set_shape(struct trace_job *j, uint32_t g)
{
	if (g <= 8) {
		j->gpus_per_node = g;
		j->node_count = 1;
	} else {
		j->gpus_per_node = 8;
		j->node_count = (g + 7) / 8;
	}
}

static int parse_msr(struct rd *r, char *text, struct trace_jobs *js)
{
	uint32_t cap = 0;
	char *p = text, *line;
	next_line(&p);
	r->line = 1;
	while ((line = next_line(&p))) {
		r->line++;
		if (blank(line))
			continue;
		char *f[MAX_FIELDS];
		int nf = csv_split(line, f, MAX_FIELDS);
		if (nf != 4)
			return bad(r, "*", "expected 4 columns, got %d", nf);
		struct trace_job j;
		memset(&j, 0, sizeof j);
		int64_t sub = 0, dur = 0, g = 0;
		if (get_i64(r, "submission_time", f[1], 0, (int64_t)1e12, &sub) ||
		    get_i64(r, "duration", f[2], 0, (int64_t)1e10, &dur) ||
		    get_i64(r, "num_gpu", f[3], 1, 8 * SCHED_MAX_GANG_NODES, &g))
			return -1;
		j.id = js->n + 1;
		j.submit_us = sub * 1000000;
		j.duration_us = (dur < 1 ? 1 : dur) * 1000000;
		set_shape(&j, (uint32_t)g);
		if (jobs_push(js, &cap, &j))
			return bad(r, "*", "out of memory");
	}
	return 0;
}

static int parse_alibaba_pods(struct rd *r, char *text, struct trace_jobs *js)
{
	uint32_t cap = 0;
	char *p = text, *line;
	next_line(&p);
	r->line = 1;
	while ((line = next_line(&p))) {
		r->line++;
		if (blank(line))
			continue;
		char *f[MAX_FIELDS];
		int nf = csv_split(line, f, MAX_FIELDS);
		if (nf < 11)
			return bad(r, "*",
			           "expected 11 columns (with creation_time and "
			           "deletion_time), got %d",
			           nf);
		int64_t g = 0, milli = 0, created = 0, deleted = 0;
		if (get_i64(r, "num_gpu", f[3], 0, 8 * SCHED_MAX_GANG_NODES, &g) ||
		    get_i64(r, "gpu_milli", f[4], 0, 1000000, &milli))
			return -1;
		if (!g)
			continue; /* CPU-only pod */
		if (!*f[9])
			continue; /* never deleted: no duration to replay */
		if (get_i64(r, "creation_time", f[8], 0, (int64_t)1e12, &created) ||
		    get_i64(r, "deletion_time", f[9], 0, (int64_t)1e12, &deleted))
			return -1;
		struct trace_job j;
		memset(&j, 0, sizeof j);
		j.id = js->n + 1;
		j.submit_us = created * 1000000;
		int64_t life = deleted - created;
		j.duration_us = (life < 1 ? 1 : life) * 1000000;
		set_shape(&j, milli < 1000 ? 1 : (uint32_t)g);
		j.priority_class = !strcmp(f[6], "BE") ? 0 : 2;
		j.preemptible = !strcmp(f[6], "BE");
		if (jobs_push(js, &cap, &j))
			return bad(r, "*", "out of memory");
	}
	return 0;
}

static int parse_gm_jobs(struct rd *r, char *text, struct trace_jobs *js)
{
	uint32_t cap = 0;
	char *p = text, *line;
	next_line(&p);
	r->line = 1;
	while ((line = next_line(&p))) {
		r->line++;
		if (blank(line))
			continue;
		char *f[MAX_FIELDS];
		int nf = csv_split(line, f, MAX_FIELDS);
		if (nf != 9)
			return bad(r, "*", "expected 9 columns, got %d", nf);
		struct trace_job j;
		memset(&j, 0, sizeof j);
		int64_t v = 0;
		if (get_i64(r, "job_id", f[0], 1, INT64_MAX, &v))
			return -1;
		j.id = (uint64_t)v;
		if (get_i64(r, "tenant_id", f[1], 0, INT64_MAX, &v))
			return -1;
		j.tenant = (uint64_t)v;
		if (get_i64(r, "submit_us", f[2], 0, INT64_MAX / 4, &j.submit_us) ||
		    get_i64(r, "duration_us", f[3], 1, (int64_t)366 * 86400 * 1000000,
		            &j.duration_us))
			return -1;
		if (get_i64(r, "gpus_per_node", f[4], 1, SCHED_MAX_GPUS_PER_NODE, &v))
			return -1;
		j.gpus_per_node = (uint32_t)v;
		if (get_i64(r, "node_count", f[5], 1, SCHED_MAX_GANG_NODES, &v))
			return -1;
		j.node_count = (uint32_t)v;
		if (get_i64(r, "priority_class", f[6], 0, SCHED_PRIO_CLASSES - 1, &v))
			return -1;
		j.priority_class = (uint32_t)v;
		if (get_i64(r, "preemptible", f[7], 0, 1, &v))
			return -1;
		j.preemptible = v;
		if (get_name(r, "job_type", f[8], false, j.type))
			return -1;
		if (jobs_push(js, &cap, &j))
			return bad(r, "*", "out of memory");
	}
	return 0;
}

void trace_jobs_free(struct trace_jobs *j)
{
	if (!j)
		return;
	free(j->v);
	memset(j, 0, sizeof *j);
}

static int cmp_job_id(const void *a, const void *b)
{
	uint64_t x = (*(const struct trace_job *const *)a)->id;
	uint64_t y = (*(const struct trace_job *const *)b)->id;
	return (x > y) - (x < y);
}

static int jobs_from_text(const char *name, char *text, struct trace_jobs *out, char *err,
                          size_t err_len, bool gm_only)
{
	memset(out, 0, sizeof *out);
	struct rd r = { name, 0, err, err_len };
	text = skip_bom(text);
	enum trace_format fmt = detect_header(text);
	int rc;
	if (fmt == TRACE_FMT_GM_JOBS)
		rc = parse_gm_jobs(&r, text, out);
	else if (fmt == TRACE_FMT_MSR_JOBS && !gm_only)
		rc = parse_msr(&r, text, out);
	else if (fmt == TRACE_FMT_ALIBABA_PODS && !gm_only)
		rc = parse_alibaba_pods(&r, text, out);
	else {
		errf(err, err_len, "%s: not a job list (header must be \"%s\"%s)", name,
		     TRACE_GM_JOBS_HEADER,
		     gm_only ? "" : ", an MSR ITP cluster CSV or an Alibaba pod list");
		rc = -1;
	}
	if (!rc && out->n) {
		/* ids must be unique: they become scheduler job ids */
		const struct trace_job **v = malloc(out->n * sizeof *v);
		if (!v) {
			errf(err, err_len, "%s: out of memory", name);
			rc = -1;
		} else {
			for (uint32_t i = 0; i < out->n; i++)
				v[i] = &out->v[i];
			qsort(v, out->n, sizeof *v, cmp_job_id);
			for (uint32_t i = 1; i < out->n && !rc; i++) {
				if (v[i]->id == v[i - 1]->id) {
					errf(err, err_len,
					     "%s: column job_id: duplicate job id %" PRIu64, name,
					     v[i]->id);
					rc = -1;
				}
			}
			free(v);
		}
	}
	if (rc)
		trace_jobs_free(out);
	return rc;
}

int trace_parse_jobs(const char *name, char *text, struct trace_jobs *out, char *err,
                     size_t err_len)
{
	return jobs_from_text(name, text, out, err, err_len, true);
}

int trace_read_jobs(const char *path, struct trace_jobs *out, char *err, size_t err_len)
{
	memset(out, 0, sizeof *out);
	char *text = slurp(path, err, err_len);
	if (!text)
		return -1;
	int rc = jobs_from_text(path, text, out, err, err_len, false);
	free(text);
	return rc;
}

/* ---- throughputs -------------------------------------------------------------------- */

static int tputs_type(struct trace_tputs *t, const char *name, uint32_t *out)
{
	for (uint32_t i = 0; i < t->ntypes; i++) {
		if (!strcmp(t->types[i], name)) {
			*out = i;
			return 0;
		}
	}
	char(*v)[TRACE_NAME_BYTES] = realloc(t->types, (t->ntypes + 1) * sizeof *v);
	if (!v)
		return -1;
	t->types = v;
	snprintf(v[t->ntypes], TRACE_NAME_BYTES, "%s", name);
	*out = t->ntypes++;
	return 0;
}

static int tputs_col(struct trace_tputs *t, const char *name, uint32_t *out)
{
	for (uint32_t i = 0; i < t->ncols; i++) {
		if (!strcmp(t->cols[i], name)) {
			*out = i;
			return 0;
		}
	}
	char(*v)[TRACE_NAME_BYTES] = realloc(t->cols, (t->ncols + 1) * sizeof *v);
	if (!v)
		return -1;
	t->cols = v;
	snprintf(v[t->ncols], TRACE_NAME_BYTES, "%s", name);
	*out = t->ncols++;
	return 0;
}

/* The row for (type, scale), created with ncols zero speeds when absent. */
static struct trace_tput_row *tputs_row(struct trace_tputs *t, uint32_t type, uint32_t scale,
                                        uint32_t ncols)
{
	for (uint32_t i = 0; i < t->nrows; i++)
		if (t->rows[i].type == type && t->rows[i].scale == scale)
			return &t->rows[i];
	struct trace_tput_row *v = realloc(t->rows, (t->nrows + 1) * sizeof *v);
	if (!v)
		return NULL;
	t->rows = v;
	float *sp = calloc(ncols ? ncols : 1, sizeof *sp);
	if (!sp)
		return NULL;
	v[t->nrows] = (struct trace_tput_row){ type, scale, sp };
	return &v[t->nrows++];
}

static int parse_tputs_csv(struct rd *r, char *text, struct trace_tputs *t)
{
	char *p = text, *line = next_line(&p);
	char *f[MAX_FIELDS];
	int nf = csv_split(line, f, MAX_FIELDS);
	r->line = 1;
	if (nf < 3 || nf > MAX_FIELDS)
		return bad(r, "*", "expected job_type,scale_factor and 1 to %d GPU columns",
		           MAX_FIELDS - 2);
	/* Gavel's file repeats each GPU as <gpu>_unconsolidated (placement
	 * across servers): only the consolidated columns are read. */
	int ncols = 0;
	int colmap[MAX_FIELDS];
	for (int i = 2; i < nf; i++) {
		colmap[i] = -1;
		if (strstr(f[i], "_unconsolidated"))
			continue;
		uint32_t c;
		if (!*f[i] || strlen(f[i]) >= TRACE_NAME_BYTES)
			return bad(r, "header", "GPU column %d must be a name of 1 to %d bytes",
			           i + 1, TRACE_NAME_BYTES - 1);
		if (tputs_col(t, f[i], &c))
			return bad(r, "*", "out of memory");
		colmap[i] = (int)c;
		ncols++;
	}
	(void)ncols;
	while ((line = next_line(&p))) {
		r->line++;
		if (blank(line))
			continue;
		int n = csv_split(line, f, MAX_FIELDS);
		if (n != nf)
			return bad(r, "*", "expected %d columns, got %d", nf, n);
		char name[TRACE_NAME_BYTES];
		int64_t scale = 0;
		uint32_t type;
		if (get_name(r, "job_type", f[0], true, name) ||
		    get_i64(r, "scale_factor", f[1], 1, 8 * SCHED_MAX_GANG_NODES, &scale))
			return -1;
		if (tputs_type(t, name, &type))
			return bad(r, "*", "out of memory");
		struct trace_tput_row *row = tputs_row(t, type, (uint32_t)scale, t->ncols);
		if (!row)
			return bad(r, "*", "out of memory");
		for (int i = 2; i < nf; i++) {
			if (colmap[i] < 0)
				continue;
			double v = 0;
			if (*f[i] && get_f64(r, t->cols[colmap[i]], f[i], 0, 1e9, &v))
				return -1;
			row->speed[colmap[i]] = (float)v;
		}
	}
	return 0;
}

/* "('ResNet-18 (batch size 16)', 1)" -> name, scale. */
static bool parse_gavel_key(const char *key, char *name, uint32_t *scale)
{
	const char *a = strchr(key, '\'');
	const char *b = a ? strrchr(key, '\'') : NULL;
	if (!a || b == a || (size_t)(b - a - 1) >= TRACE_NAME_BYTES)
		return false;
	memcpy(name, a + 1, (size_t)(b - a - 1));
	name[b - a - 1] = '\0';
	const char *comma = strchr(b, ',');
	if (!comma)
		return false;
	long s = strtol(comma + 1, NULL, 10);
	if (s < 1 || s > 8 * SCHED_MAX_GANG_NODES)
		return false;
	*scale = (uint32_t)s;
	return true;
}

static int parse_gavel_json(struct rd *r, const char *text, struct trace_tputs *t)
{
	json_error_t je;
	json_t *root = json_loads(text, 0, &je);
	if (!root || !json_is_object(root)) {
		errf(r->err, r->err_len, "%s:%d: %s", r->path, je.line,
		     root ? "expected a JSON object of GPU types" : je.text);
		json_decref(root);
		return -1;
	}
	/* columns first (sorted, so the order does not depend on the file's),
	 * with v100 as the reference when present */
	const char *gpu;
	json_t *per_gpu;
	const char *names[MAX_FIELDS];
	int ng = 0;
	json_object_foreach(root, gpu, per_gpu)
	{
		if (ng == MAX_FIELDS || !json_is_object(per_gpu)) {
			/* gpu belongs to root: the message first */
			int e = bad(r, gpu, "expected at most %d GPU objects", MAX_FIELDS);
			json_decref(root);
			return e;
		}
		names[ng++] = gpu;
	}
	for (int i = 1; i < ng; i++)
		for (int j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
			const char *x = names[j];
			names[j] = names[j - 1];
			names[j - 1] = x;
		}
	for (int i = 0; i < ng; i++)
		if (!strcmp(names[i], "v100"))
			for (int j = i; j > 0; j--) {
				const char *x = names[j];
				names[j] = names[j - 1];
				names[j - 1] = x;
			}
	for (int i = 0; i < ng; i++) {
		uint32_t c;
		if (tputs_col(t, names[i], &c)) {
			json_decref(root);
			return bad(r, "*", "out of memory");
		}
	}
	/* rows: keys sorted for a stable type order */
	for (uint32_t c = 0; c < t->ncols; c++) {
		json_t *obj = json_object_get(root, t->cols[c]);
		const char *key;
		json_t *entry;
		json_object_foreach(obj, key, entry)
		{
			char name[TRACE_NAME_BYTES];
			uint32_t scale, type;
			json_t *alone = json_object_get(entry, "null");
			if (!parse_gavel_key(key, name, &scale) || !json_is_number(alone)) {
				/* key belongs to root: the message first */
				int e = bad(r, t->cols[c],
				            "entry \"%s\": expected a key \"('type', "
				            "scale)\" with a \"null\" number",
				            key);
				json_decref(root);
				return e;
			}
			struct trace_tput_row *row;
			if (tputs_type(t, name, &type) ||
			    !(row = tputs_row(t, type, scale, t->ncols))) {
				json_decref(root);
				return bad(r, "*", "out of memory");
			}
			row->speed[c] = (float)json_number_value(alone);
		}
	}
	json_decref(root);
	/* types in name order, so that seeded draws do not depend on JSON order */
	for (uint32_t i = 1; i < t->ntypes; i++) {
		for (uint32_t j = i; j > 0 && strcmp(t->types[j - 1], t->types[j]) > 0; j--) {
			char tmp[TRACE_NAME_BYTES];
			memcpy(tmp, t->types[j], TRACE_NAME_BYTES);
			memcpy(t->types[j], t->types[j - 1], TRACE_NAME_BYTES);
			memcpy(t->types[j - 1], tmp, TRACE_NAME_BYTES);
			for (uint32_t q = 0; q < t->nrows; q++) {
				if (t->rows[q].type == j)
					t->rows[q].type = j - 1;
				else if (t->rows[q].type == j - 1)
					t->rows[q].type = j;
			}
		}
	}
	return 0;
}

void trace_tputs_free(struct trace_tputs *t)
{
	if (!t)
		return;
	for (uint32_t i = 0; i < t->nrows; i++)
		free(t->rows[i].speed);
	free(t->rows);
	free(t->types);
	free(t->cols);
	memset(t, 0, sizeof *t);
}

int trace_read_tputs(const char *path, struct trace_tputs *out, char *err, size_t err_len)
{
	memset(out, 0, sizeof *out);
	char *text = slurp(path, err, err_len);
	if (!text)
		return -1;
	struct rd r = { path, 0, err, err_len };
	enum trace_format fmt = detect_header(text);
	int rc;
	if (fmt == TRACE_FMT_TPUTS_CSV)
		rc = parse_tputs_csv(&r, text, out);
	else if (fmt == TRACE_FMT_TPUTS_GAVEL_JSON)
		rc = parse_gavel_json(&r, text, out);
	else {
		errf(err, err_len,
		     "%s: not a throughput table (header must start with "
		     "\"job_type,scale_factor,\", or Gavel's JSON)",
		     path);
		rc = -1;
	}
	free(text);
	if (!rc && (!out->ncols || !out->ntypes)) {
		errf(err, err_len, "%s: no job types or no GPU columns", path);
		rc = -1;
	}
	if (rc)
		trace_tputs_free(out);
	return rc;
}

float trace_tput_speed(const struct trace_tputs *t, uint32_t type, uint32_t gpus, uint32_t col)
{
	const struct trace_tput_row *best = NULL;
	for (uint32_t i = 0; i < t->nrows; i++) {
		const struct trace_tput_row *r = &t->rows[i];
		if (r->type != type || (r->scale > gpus && r->scale != 1))
			continue;
		if (!best || r->scale > best->scale)
			best = r;
	}
	return best ? best->speed[col] : 0.0f;
}

bool trace_col_matches(const char *col, const char *model)
{
	if (!strcasecmp(col, model))
		return true;
	size_t n = strlen(col);
	if (n < 2 || n > 8 || strncasecmp(col, model, n))
		return false;
	/* "v100" matches "V100-SXM2-16GB" but "a10" must not match "A100-..." */
	char next = model[n];
	return next == '\0' || next == '-' || next == '_' || next == ' ';
}

/* ---- the speed model ------------------------------------------------------------- */

/* Splits the first non-comment line (the header) of a model file and checks
 * it names exactly cols. */
static int model_header(struct rd *r, char **p, const char *const *cols, int ncols)
{
	char *line;
	while ((line = next_line(p))) {
		r->line++;
		if (!blank(line))
			break;
	}
	if (!line)
		return bad(r, "*", "no header line");
	char *f[MAX_FIELDS];
	int nf = csv_split(line, f, MAX_FIELDS);
	for (int i = 0; i < ncols; i++)
		if (i >= nf || strcmp(f[i], cols[i]))
			return bad(r, "*", "header must start with column %d \"%s\"", i + 1,
			           cols[i]);
	return 0;
}

static int parse_speed_gpus(struct rd *r, char *text, struct speed_model *m)
{
	static const char *const cols[] = { "model",       "fp32_tflops", "tf32_tflops",
		                            "fp16_tflops", "bf16_tflops", "fp8_tflops",
		                            "mem_bw_gbps", "memory_gib" };
	char *p = text, *line;
	if (model_header(r, &p, cols, 8))
		return -1;
	uint32_t cap = 0;
	while ((line = next_line(&p))) {
		r->line++;
		if (blank(line))
			continue;
		char *f[MAX_FIELDS];
		int nf = csv_split(line, f, MAX_FIELDS);
		if (nf != 8)
			return bad(r, "*", "expected 8 columns, got %d", nf);
		struct speed_gpu g;
		memset(&g, 0, sizeof g);
		if (get_name(r, "model", f[0], true, g.name))
			return -1;
		double v;
		for (int q = 0; q < SCHED_PREC_COUNT; q++) {
			if (get_f64(r, cols[1 + q], f[1 + q], 0, 1e6, &v))
				return -1;
			g.peak[q] = (float)v;
		}
		if (!(g.peak[SCHED_PREC_FP32] > 0))
			return bad(r, "fp32_tflops", "must be greater than 0");
		if (get_f64(r, "mem_bw_gbps", f[6], 1e-3, 1e7, &v))
			return -1;
		g.mem_bw_gbps = (float)v;
		if (get_f64(r, "memory_gib", f[7], 0, 1e6, &v))
			return -1;
		g.memory_gib = (float)v;
		g.line = r->line;
		for (uint32_t i = 0; i < m->ngpus; i++)
			if (!strcasecmp(m->gpus[i].name, g.name))
				return bad(r, "model", "GPU model \"%s\" is already on line %u",
				           g.name, m->gpus[i].line);
		if (m->ngpus == cap) {
			cap = cap ? cap * 2 : 32;
			struct speed_gpu *nv = realloc(m->gpus, cap * sizeof *nv);
			if (!nv)
				return bad(r, "*", "out of memory");
			m->gpus = nv;
		}
		m->gpus[m->ngpus++] = g;
	}
	if (!m->ngpus)
		return bad(r, "*", "no GPU models");
	return 0;
}

static int parse_speed_rows(struct rd *r, char *text, struct speed_model *m)
{
	static const char *const cols[] = { "job_type", "scale_factor", "precision",
		                            "compute_share", "mem_gib" };
	static const char *const precs[SCHED_PREC_COUNT] = { "fp32", "tf32", "fp16", "bf16",
		                                             "fp8" };
	char *p = text, *line;
	if (model_header(r, &p, cols, 5))
		return -1;
	uint32_t cap = 0;
	while ((line = next_line(&p))) {
		r->line++;
		if (blank(line))
			continue;
		char *f[MAX_FIELDS];
		int nf = csv_split(line, f, MAX_FIELDS);
		if (nf < 5)
			return bad(r, "*", "expected at least 5 columns, got %d", nf);
		struct speed_row w;
		memset(&w, 0, sizeof w);
		if (get_name(r, "job_type", f[0], true, w.type))
			return -1;
		int64_t sc = 0;
		if (get_i64(r, "scale_factor", f[1], 1,
		            SCHED_MAX_GPUS_PER_NODE * SCHED_MAX_GANG_NODES, &sc))
			return -1;
		w.scale = (uint32_t)sc;
		int q = 0;
		while (q < SCHED_PREC_COUNT && strcmp(f[2], precs[q]))
			q++;
		if (q == SCHED_PREC_COUNT)
			return bad(r, "precision",
			           "must be fp32, tf32, fp16, bf16 or fp8, got \"%s\"", f[2]);
		w.precision = (enum sched_precision)q;
		double v;
		if (get_f64(r, "compute_share", f[3], 0, 1, &v))
			return -1;
		w.compute_share = (float)v;
		if (get_f64(r, "mem_gib", f[4], 0, 1e6, &v))
			return -1;
		w.mem_gib = (float)v;
		w.line = r->line;
		for (uint32_t i = 0; i < m->nrows; i++)
			if (!strcmp(m->rows[i].type, w.type) && m->rows[i].scale == w.scale)
				return bad(r, "job_type",
				           "\"%s\" with scale_factor %u is already on line %u",
				           w.type, w.scale, m->rows[i].line);
		if (m->nrows == cap) {
			cap = cap ? cap * 2 : 64;
			struct speed_row *nv = realloc(m->rows, cap * sizeof *nv);
			if (!nv)
				return bad(r, "*", "out of memory");
			m->rows = nv;
		}
		m->rows[m->nrows++] = w;
	}
	return 0;
}

int speed_model_read(const char *rows_path, const char *gpus_path, struct speed_model *out,
                     char *err, size_t err_len)
{
	memset(out, 0, sizeof *out);
	char *text = slurp(gpus_path, err, err_len);
	if (!text)
		return -1;
	struct rd r = { gpus_path, 0, err, err_len };
	int rc = parse_speed_gpus(&r, text, out);
	free(text);
	if (!rc) {
		text = slurp(rows_path, err, err_len);
		if (!text) {
			rc = -1;
		} else {
			struct rd r2 = { rows_path, 0, err, err_len };
			rc = parse_speed_rows(&r2, text, out);
			free(text);
		}
	}
	if (rc)
		speed_model_free(out);
	return rc;
}

void speed_model_free(struct speed_model *m)
{
	if (!m)
		return;
	free(m->gpus);
	free(m->rows);
	memset(m, 0, sizeof *m);
}

const struct speed_gpu *speed_model_gpu(const struct speed_model *m, const char *model)
{
	if (!m || !model)
		return NULL;
	for (uint32_t i = 0; i < m->ngpus; i++)
		if (!strcasecmp(m->gpus[i].name, model))
			return &m->gpus[i];
	/* a short kind ("v100", "k80") names the first model it starts */
	for (uint32_t i = 0; i < m->ngpus; i++)
		if (trace_col_matches(model, m->gpus[i].name))
			return &m->gpus[i];
	return NULL;
}

const struct speed_row *speed_model_row(const struct speed_model *m, const char *type,
                                        uint32_t gpus)
{
	const struct speed_row *best = NULL;
	for (uint32_t i = 0; m && i < m->nrows; i++) {
		const struct speed_row *w = &m->rows[i];
		if (strcmp(w->type, type))
			continue;
		if ((w->scale <= gpus || w->scale == 1) && (!best || w->scale > best->scale))
			best = w;
	}
	return best;
}

/* The peak a job computing in prec gets: tf32 (and the half precisions)
 * fall back to FP32 where the GPU has no such path. */
static double model_peak(const struct speed_gpu *g, enum sched_precision prec)
{
	double v = g->peak[prec];
	return v > 0 ? v : g->peak[SCHED_PREC_FP32];
}

double speed_model_rel(const struct speed_row *w, const struct speed_gpu *g,
                       const struct speed_gpu *ref)
{
	if (!w || !g || !ref)
		return 0;
	if (w->mem_gib > 0 && g->memory_gib > 0 && g->memory_gib < w->mem_gib)
		return 0; /* does not fit: a hard limit */
	double f = w->compute_share;
	double t = f * model_peak(ref, w->precision) / model_peak(g, w->precision) +
	           (1 - f) * (double)ref->mem_bw_gbps / (double)g->mem_bw_gbps;
	return t > 0 ? 1.0 / t : 0;
}
