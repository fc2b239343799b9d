/* cpu.c — gpu-probe's CPU reference backend: the challenge arithmetic on the
 * host, exactly as the server checks it, and a small FP32 GEMM measurement.
 * It proves nothing about a GPU; it is what the tests and machines without
 * a GPU run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"

static int cpu_open(uint32_t *count, char *err, size_t err_len)
{
	(void)err;
	(void)err_len;
	*count = 1;
	return 0;
}

static int cpu_identity(uint32_t dev, struct probe_identity *out, char *err, size_t err_len)
{
	if (dev != 0) {
		snprintf(err, err_len, "the CPU backend has one device, index 0");
		return -1;
	}
	memset(out, 0, sizeof *out);
	char host[64] = "";
	gethostname(host, sizeof host - 1);
	snprintf(out->name, sizeof out->name, "CPU reference (%s)", host);
	uint8_t h[CHALLENGE_HASH_BYTES];
	challenge_sha256(host, strlen(host), h);
	snprintf(out->uuid, sizeof out->uuid, "CPU-%02x%02x%02x%02x-%02x%02x", h[0], h[1], h[2],
	         h[3], h[4], h[5]);
	long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
	out->memory_bytes = pages > 0 && psize > 0 ? (uint64_t)pages * (uint64_t)psize : 0;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	out->sm_count = cpus > 0 ? (uint32_t)cpus : 0;
	return 0;
}

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static int cpu_bench(uint32_t dev, int quick, struct probe_bench *out, char *err, size_t err_len)
{
	(void)dev;
	memset(out, 0, sizeof *out);
	uint32_t d = quick ? 64 : 256;
	struct challenge_params p = { d, d, d, 1, challenge_value_range(d, 1) };
	float *c = malloc((size_t)d * d * sizeof *c);
	int32_t *scratch = malloc((size_t)d * d * sizeof *scratch);
	if (!c || !scratch) {
		free(c);
		free(scratch);
		snprintf(err, err_len, "out of memory for a %ux%u CPU GEMM", d, d);
		return -1;
	}
	uint8_t key[CHALLENGE_HASH_BYTES] = { 1 };
	enum { RUNS = 5, WARMUP = 1 };
	double t[RUNS];
	for (int r = 0; r < WARMUP + RUNS; r++) {
		double t0 = mono_s();
		challenge_product(&p, key, c, scratch);
		double dt = mono_s() - t0;
		if (r >= WARMUP)
			t[r - WARMUP] = 2.0 * d * d * d / (dt > 0 ? dt : 1e-9) / 1e12;
	}
	qsort(t, RUNS, sizeof t[0], cmp_double);
	struct probe_gemm *g = &out->gemm[out->ngemm++];
	g->precision = 1;
	g->m = g->n = g->k = d;
	g->tflops_min = t[0];
	g->tflops_median = t[RUNS / 2];
	g->tflops_max = t[RUNS - 1];
	g->runs = RUNS;
	g->warmup_runs = WARMUP;
	free(c);
	free(scratch);
	return 0;
}

static int cpu_step(uint32_t dev, const struct challenge_params *p, int precision,
                    const uint8_t key[CHALLENGE_HASH_BYTES],
                    uint8_t (*leaves)[CHALLENGE_HASH_BYTES], char *err, size_t err_len)
{
	(void)dev;
	(void)precision; /* the inputs are integers every precision holds exactly */
	float *c = malloc((size_t)p->m * p->n * sizeof *c);
	int32_t *scratch = malloc((size_t)p->k * p->n * sizeof *scratch);
	if (!c || !scratch) {
		free(c);
		free(scratch);
		snprintf(err, err_len, "out of memory for a %ux%u result", p->m, p->n);
		return -1;
	}
	challenge_product(p, key, c, scratch);
	for (uint32_t i = 0; i < p->m; i++)
		challenge_leaf(c + (size_t)i * p->n, p->n, leaves[i]);
	free(c);
	free(scratch);
	return 0;
}

static void cpu_close(void)
{
}

const struct probe_backend probe_cpu_backend = {
	.name = "cpu",
	.open = cpu_open,
	.identity = cpu_identity,
	.bench = cpu_bench,
	.step = cpu_step,
	.close = cpu_close,
};
