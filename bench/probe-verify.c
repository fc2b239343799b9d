/* probe-verify: what the probe challenge costs on a CPU — gpumatchd's
 * recomputation of one opened row (k * n multiply-adds plus generating B),
 * of several rows of one step together (B generated once), and one leaf
 * hash — for the sizes given. Prints one line per size; figures vary with the
 * machine and its load.
 *
 *   probe-verify [--dim D]... [--rows R]   (defaults: 1024 4096 8192, 4 rows)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "challenge.h"

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	uint32_t dims[16], ndims = 0, rows = 4;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--dim") && i + 1 < argc && ndims < 16)
			dims[ndims++] = (uint32_t)strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--rows") && i + 1 < argc)
			rows = (uint32_t)strtoul(argv[++i], NULL, 10);
		else {
			fprintf(stderr, "usage: probe-verify [--dim D]... [--rows R]\n");
			return 1;
		}
	}
	if (!ndims) {
		dims[ndims++] = 1024;
		dims[ndims++] = 4096;
		dims[ndims++] = 8192;
	}
	uint8_t seed[CHALLENGE_SEED_BYTES] = { 7 }, key[CHALLENGE_HASH_BYTES];
	challenge_first_key(seed, 1, "GPU-bench", key);
	for (uint32_t d = 0; d < ndims; d++) {
		struct challenge_params p = { dims[d], dims[d], dims[d], 1,
			                      challenge_value_range(dims[d], 3) };
		const char *why;
		if (!rows || challenge_params_check(&p, &why)) {
			fprintf(stderr, "probe-verify: dim %u: %s\n", dims[d],
			        rows ? why : "rows 0");
			return 1;
		}
		float *row = malloc((size_t)p.n * sizeof *row);
		if (!row)
			return 1;
		double t0 = mono_s();
		for (uint32_t r = 0; r < rows; r++)
			challenge_row(&p, key, r * 7919 % p.m, row);
		double per_row = (mono_s() - t0) / rows;
		uint32_t pick[64];
		float *many = malloc((size_t)rows * p.n * sizeof *many);
		for (uint32_t r = 0; r < rows && r < 64; r++)
			pick[r] = r * 7919 % p.m;
		t0 = mono_s();
		if (!many || challenge_rows(&p, key, pick, rows < 64 ? rows : 64, many))
			return 1;
		double shared = mono_s() - t0;
		free(many);
		uint8_t leaf[CHALLENGE_HASH_BYTES];
		t0 = mono_s();
		for (uint32_t r = 0; r < rows; r++)
			challenge_leaf(row, p.n, leaf);
		double per_leaf = (mono_s() - t0) / rows;
		printf("dim=%u range=%u row_recompute_ms=%.2f rows_of_one_step_together=%u "
		       "together_ms=%.2f leaf_hash_ms=%.3f\n",
		       dims[d], p.value_range, per_row * 1e3, rows < 64 ? rows : 64, shared * 1e3,
		       per_leaf * 1e3);
		free(row);
	}
	return 0;
}
