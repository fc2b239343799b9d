/* fuzz_challenge.c — the probe challenge's arithmetic on the inputs a
 * node's commitment and opening carry: parameters (checked by
 * challenge_params_check before anything is computed), the precision's
 * value range, the key chain, row leaves of arbitrary floats, and the hash
 * path check the server runs on each opened row (index, leaves and path
 * length all from the input). A path built from a real tree must verify;
 * the same path with a flipped byte must not. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "challenge.h"

static uint32_t rd32(const uint8_t **p, size_t *n)
{
	uint32_t v = 0;
	for (int i = 0; i < 4; i++) {
		v = v << 8 | (*n ? **p : 0);
		if (*n) {
			(*p)++;
			(*n)--;
		}
	}
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *p = data;
	size_t n = size;
	struct challenge_params cp = { rd32(&p, &n), rd32(&p, &n), rd32(&p, &n), rd32(&p, &n),
		                       rd32(&p, &n) };
	const char *why = NULL;
	int ok = challenge_params_check(&cp, &why);
	if (ok && !why)
		__builtin_trap(); /* a refusal names the field */
	(void)challenge_value_range(cp.k, (int)(rd32(&p, &n) % 16));

	uint8_t seed[CHALLENGE_SEED_BYTES] = { 0 }, key[CHALLENGE_HASH_BYTES];
	memcpy(seed, p, n < sizeof seed ? n : sizeof seed);
	char uuid[80] = "";
	size_t ul = n < 79 ? n : 79;
	memcpy(uuid, p, ul);
	uuid[ul] = '\0';
	challenge_first_key(seed, ((uint64_t)rd32(&p, &n) << 32) | rd32(&p, &n), uuid, key);

	/* a small product, when the parameters allow one */
	if (!ok && (uint64_t)cp.m * cp.n <= 4096 && (uint64_t)cp.k * cp.n <= 65536) {
		uint32_t rows[2] = { rd32(&p, &n) % cp.m, rd32(&p, &n) % cp.m };
		float *out = malloc(2 * (size_t)cp.n * sizeof *out);
		if (!out)
			abort();
		if (!challenge_rows(&cp, key, rows, 2, out)) {
			uint8_t leaf[CHALLENGE_HASH_BYTES];
			challenge_leaf(out, cp.n, leaf);
		}
		free(out);
	}

	/* a leaf of the input's floats */
	uint32_t nf = (uint32_t)(n / sizeof(float));
	if (nf > 4096)
		nf = 4096;
	float *row = malloc((nf ? nf : 1) * sizeof *row);
	if (!row)
		abort();
	memcpy(row, p, nf * sizeof *row);
	uint8_t leaf[CHALLENGE_HASH_BYTES];
	challenge_leaf(row, nf, leaf);
	free(row);

	/* the path check with arbitrary shape */
	uint32_t leaves = rd32(&p, &n), index = rd32(&p, &n);
	size_t npath = n / CHALLENGE_HASH_BYTES;
	uint8_t root[CHALLENGE_HASH_BYTES] = { 0 };
	if (npath) {
		memcpy(root, p, CHALLENGE_HASH_BYTES);
		(void)challenge_path_check(leaf, leaves, index,
		                           (const uint8_t(*)[CHALLENGE_HASH_BYTES])(p + 0),
		                           npath - 1, root);
	}
	(void)challenge_path_len(leaves, index);

	/* a real tree over a few leaves: its paths verify, a flipped one not */
	uint32_t nl = leaves % 33 + 1;
	uint8_t(*nodes)[CHALLENGE_HASH_BYTES] =
	    calloc(challenge_tree_size(nl), CHALLENGE_HASH_BYTES);
	uint8_t(*path)[CHALLENGE_HASH_BYTES] = calloc(64, CHALLENGE_HASH_BYTES);
	if (!nodes || !path)
		abort();
	for (uint32_t i = 0; i < nl; i++) {
		memcpy(nodes[i], leaf, CHALLENGE_HASH_BYTES);
		nodes[i][0] ^= (uint8_t)i;
	}
	challenge_tree_build(nodes, nl, root);
	uint32_t at = index % nl;
	uint32_t pl = challenge_path_len(nl, at);
	challenge_tree_path((const uint8_t(*)[CHALLENGE_HASH_BYTES])nodes, nl, at, path);
	uint8_t lf[CHALLENGE_HASH_BYTES];
	memcpy(lf, nodes[at], sizeof lf);
	if (challenge_path_check(lf, nl, at, (const uint8_t(*)[CHALLENGE_HASH_BYTES])path, pl,
	                         root))
		__builtin_trap();
	if (pl) {
		path[index % pl][size % CHALLENGE_HASH_BYTES] ^= 1;
		if (!challenge_path_check(lf, nl, at, (const uint8_t(*)[CHALLENGE_HASH_BYTES])path,
		                          pl, root))
			__builtin_trap();
	}
	free(nodes);
	free(path);
	return 0;
}
