/* challenge.c — the probe challenge's arithmetic: SHA-256 (FIPS 180-4),
 * key derivation, rows and products of a step, the hash tree. Shared by
 * gpu-probe and gpumatchd; see challenge.h for the construction. */
#include "challenge.h"

#include <stdlib.h>
#include <string.h>

/* ---- SHA-256 ---------------------------------------------------------- */

const uint32_t challenge_sha256_k[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
	0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
	0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
	0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
	0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
	0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
	0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
	0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
	0xc67178f2,
};

static void sha_block(uint32_t h[8], const uint8_t *p)
{
	challenge_sha256_compress(h, p, challenge_sha256_k);
}

void challenge_sha256_init(struct challenge_sha256 *s)
{
	static const uint32_t iv[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
		                        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
	memcpy(s->h, iv, sizeof iv);
	s->bytes = 0;
	s->fill = 0;
}

void challenge_sha256_update(struct challenge_sha256 *s, const void *data, size_t len)
{
	const uint8_t *p = data;
	s->bytes += len;
	if (s->fill) {
		size_t take = 64 - s->fill < len ? 64 - s->fill : len;
		memcpy(s->buf + s->fill, p, take);
		s->fill += take;
		p += take;
		len -= take;
		if (s->fill < 64)
			return;
		sha_block(s->h, s->buf);
		s->fill = 0;
	}
	for (; len >= 64; p += 64, len -= 64)
		sha_block(s->h, p);
	memcpy(s->buf, p, len);
	s->fill = len;
}

void challenge_sha256_final(struct challenge_sha256 *s, uint8_t out[CHALLENGE_HASH_BYTES])
{
	uint64_t bits = s->bytes * 8;
	uint8_t pad[72] = { 0x80 };
	size_t padlen = (s->fill < 56 ? 56 : 120) - s->fill;
	for (int i = 0; i < 8; i++)
		pad[padlen + (size_t)i] = (uint8_t)(bits >> (56 - 8 * i));
	challenge_sha256_update(s, pad, padlen + 8);
	for (int i = 0; i < 8; i++) {
		out[4 * i] = (uint8_t)(s->h[i] >> 24);
		out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
		out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
		out[4 * i + 3] = (uint8_t)s->h[i];
	}
}

void challenge_sha256(const void *data, size_t len, uint8_t out[CHALLENGE_HASH_BYTES])
{
	struct challenge_sha256 s;
	challenge_sha256_init(&s);
	challenge_sha256_update(&s, data, len);
	challenge_sha256_final(&s, out);
}

/* ---- parameters and keys ---------------------------------------------------------- */

int challenge_params_check(const struct challenge_params *p, const char **why)
{
	if (p->m < 1 || p->m > CHALLENGE_MAX_DIM) {
		*why = "m: must be 1..65536";
		return -1;
	}
	if (p->n < 1 || p->n > CHALLENGE_MAX_DIM) {
		*why = "n: must be 1..65536";
		return -1;
	}
	if (p->k < 1 || p->k > CHALLENGE_MAX_DIM) {
		*why = "k: must be 1..65536";
		return -1;
	}
	if (p->chain < 1 || p->chain > CHALLENGE_MAX_CHAIN) {
		*why = "chain_length: must be 1..100000";
		return -1;
	}
	/* R < 4096 first: k * R * R would wrap around 2^64 for a huge R */
	if (p->value_range < 1 || p->value_range >= 4096 ||
	    (uint64_t)p->k * p->value_range * p->value_range >= (1ull << 24)) {
		*why = "value_range: must be >= 1 with k * value_range^2 < 2^24";
		return -1;
	}
	return 0;
}

uint32_t challenge_value_range(uint32_t k, int precision)
{
	/* FP8 E4M3 holds integers to 16, but FP8 tensor cores (Hopper) keep
	 * only ~14 bits in their partial sums between promotions to FP32:
	 * |values| <= 4 keeps a 128-deep partial sum within 2^11 */
	uint32_t cap = precision == 5 ? 4 : precision == 4 ? 256 : 2048;
	uint32_t r = 0;
	while (r < cap && (uint64_t)k * (r + 1) * (r + 1) < (1ull << 24))
		r++;
	return r;
}

void challenge_first_key(const uint8_t seed[CHALLENGE_SEED_BYTES], uint64_t node_id,
                         const char *uuid, uint8_t key[CHALLENGE_HASH_BYTES])
{
	static const char tag[] = "gpumatch-probe-v1";
	uint8_t nid[8];
	for (int i = 0; i < 8; i++)
		nid[i] = (uint8_t)(node_id >> (8 * i));
	struct challenge_sha256 s;
	challenge_sha256_init(&s);
	challenge_sha256_update(&s, tag, sizeof tag - 1);
	challenge_sha256_update(&s, seed, CHALLENGE_SEED_BYTES);
	challenge_sha256_update(&s, nid, sizeof nid);
	size_t ulen = 0;
	while (ulen < CHALLENGE_MAX_UUID && uuid[ulen])
		ulen++;
	challenge_sha256_update(&s, uuid, ulen);
	challenge_sha256_final(&s, key);
}

void challenge_next_key(const uint8_t key[CHALLENGE_HASH_BYTES],
                        const uint8_t root[CHALLENGE_HASH_BYTES],
                        uint8_t next[CHALLENGE_HASH_BYTES])
{
	uint8_t both[2 * CHALLENGE_HASH_BYTES];
	memcpy(both, key, CHALLENGE_HASH_BYTES);
	memcpy(both + CHALLENGE_HASH_BYTES, root, CHALLENGE_HASH_BYTES);
	challenge_sha256(both, sizeof both, next);
}

/* ---- rows and products --------------------------------------------------------------- */

void challenge_row(const struct challenge_params *p, const uint8_t key[CHALLENGE_HASH_BYTES],
                   uint32_t row, float *out)
{
	struct challenge_gen_key g = challenge_gen_key_of(key);
	for (uint32_t j = 0; j < p->n; j++) {
		int64_t acc = 0;
		for (uint32_t t = 0; t < p->k; t++)
			acc += (int64_t)challenge_elem(g, CHALLENGE_A, row, t, p->value_range) *
			       challenge_elem(g, CHALLENGE_B, t, j, p->value_range);
		out[j] = (float)acc;
	}
}

int challenge_rows(const struct challenge_params *p, const uint8_t key[CHALLENGE_HASH_BYTES],
                   const uint32_t *rows, size_t nrows, float *out)
{
	if (!nrows)
		return 0;
	int64_t *a = malloc(nrows * p->k * sizeof *a), *acc = calloc(nrows * p->n, sizeof *acc);
	if (!a || !acc) {
		free(a);
		free(acc);
		return -1;
	}
	struct challenge_gen_key g = challenge_gen_key_of(key);
	for (size_t r = 0; r < nrows; r++)
		for (uint32_t t = 0; t < p->k; t++)
			a[r * p->k + t] =
			    challenge_elem(g, CHALLENGE_A, rows[r], t, p->value_range);
	for (uint32_t t = 0; t < p->k; t++)
		for (uint32_t j = 0; j < p->n; j++) {
			int64_t b = challenge_elem(g, CHALLENGE_B, t, j, p->value_range);
			for (size_t r = 0; r < nrows; r++)
				acc[r * p->n + j] += a[r * p->k + t] * b;
		}
	for (size_t x = 0; x < nrows * p->n; x++)
		out[x] = (float)acc[x];
	free(a);
	free(acc);
	return 0;
}

void challenge_product(const struct challenge_params *p, const uint8_t key[CHALLENGE_HASH_BYTES],
                       float *c, int32_t *scratch)
{
	if (!scratch) {
		for (uint32_t i = 0; i < p->m; i++)
			challenge_row(p, key, i, c + (size_t)i * p->n);
		return;
	}
	struct challenge_gen_key g = challenge_gen_key_of(key);
	for (uint32_t t = 0; t < p->k; t++)
		for (uint32_t j = 0; j < p->n; j++)
			scratch[(size_t)t * p->n + j] =
			    challenge_elem(g, CHALLENGE_B, t, j, p->value_range);
	for (uint32_t i = 0; i < p->m; i++) {
		float *row = c + (size_t)i * p->n;
		/* int32 accumulation is exact: |sum| < 2^24 */
		for (uint32_t j = 0; j < p->n; j++)
			row[j] = 0;
		for (uint32_t t = 0; t < p->k; t++) {
			int32_t a = challenge_elem(g, CHALLENGE_A, i, t, p->value_range);
			const int32_t *b = scratch + (size_t)t * p->n;
			for (uint32_t j = 0; j < p->n; j++)
				row[j] += (float)(a * b[j]);
		}
	}
}

/* ---- the hash tree ----------------------------------------------------------------------- */

/* SHA-256(tag || floats as little-endian float32), through the streaming
 * API: an implementation apart from challenge_sha256_tagged's. */
static void hash_floats(uint8_t tag, const float *f, uint32_t count,
                        uint8_t out[CHALLENGE_HASH_BYTES])
{
	struct challenge_sha256 s;
	uint8_t buf[256];
	size_t fill = 0;
	challenge_sha256_init(&s);
	challenge_sha256_update(&s, &tag, 1);
	for (uint32_t j = 0; j < count; j++) {
		uint32_t bits;
		memcpy(&bits, &f[j], 4);
		for (int b = 0; b < 4; b++)
			buf[fill++] = (uint8_t)(bits >> (8 * b));
		if (fill == sizeof buf) {
			challenge_sha256_update(&s, buf, fill);
			fill = 0;
		}
	}
	challenge_sha256_update(&s, buf, fill);
	challenge_sha256_final(&s, out);
}

void challenge_leaf(const float *row, uint32_t n, uint8_t out[CHALLENGE_HASH_BYTES])
{
	struct challenge_sha256 s;
	uint8_t tag = 0, chunk[CHALLENGE_HASH_BYTES];
	challenge_sha256_init(&s);
	challenge_sha256_update(&s, &tag, 1);
	for (uint32_t first = 0; first < n; first += CHALLENGE_CHUNK) {
		uint32_t count = n - first < CHALLENGE_CHUNK ? n - first : CHALLENGE_CHUNK;
		hash_floats(2, row + first, count, chunk);
		challenge_sha256_update(&s, chunk, sizeof chunk);
	}
	challenge_sha256_final(&s, out);
}

void challenge_inner(const uint8_t l[CHALLENGE_HASH_BYTES], const uint8_t r[CHALLENGE_HASH_BYTES],
                     uint8_t out[CHALLENGE_HASH_BYTES])
{
	uint8_t buf[1 + 2 * CHALLENGE_HASH_BYTES];
	buf[0] = 1;
	memcpy(buf + 1, l, CHALLENGE_HASH_BYTES);
	memcpy(buf + 1 + CHALLENGE_HASH_BYTES, r, CHALLENGE_HASH_BYTES);
	challenge_sha256(buf, sizeof buf, out);
}

size_t challenge_tree_size(uint32_t leaves)
{
	size_t total = 0;
	for (uint32_t w = leaves;; w = (w + 1) / 2) {
		total += w;
		if (w == 1)
			break;
	}
	return total;
}

uint32_t challenge_path_len(uint32_t leaves, uint32_t index)
{
	uint32_t len = 0;
	for (uint32_t w = leaves; w > 1; w = (w + 1) / 2, index /= 2)
		if ((index ^ 1) < w)
			len++;
	return len;
}

void challenge_tree_build(uint8_t (*nodes)[CHALLENGE_HASH_BYTES], uint32_t leaves,
                          uint8_t root[CHALLENGE_HASH_BYTES])
{
	size_t base = 0;
	for (uint32_t w = leaves; w > 1; w = (w + 1) / 2) {
		size_t up = base + w;
		for (uint32_t i = 0; i < w; i += 2) {
			if (i + 1 < w)
				challenge_inner(nodes[base + i], nodes[base + i + 1],
				                nodes[up + i / 2]);
			else
				memcpy(nodes[up + i / 2], nodes[base + i], CHALLENGE_HASH_BYTES);
		}
		base = up;
	}
	memcpy(root, nodes[base], CHALLENGE_HASH_BYTES);
}

void challenge_tree_path(const uint8_t (*nodes)[CHALLENGE_HASH_BYTES], uint32_t leaves,
                         uint32_t index, uint8_t (*path)[CHALLENGE_HASH_BYTES])
{
	size_t base = 0, k = 0;
	for (uint32_t w = leaves; w > 1; base += w, w = (w + 1) / 2, index /= 2)
		if ((index ^ 1) < w)
			memcpy(path[k++], nodes[base + (index ^ 1)], CHALLENGE_HASH_BYTES);
}

int challenge_path_check(const uint8_t leaf[CHALLENGE_HASH_BYTES], uint32_t leaves, uint32_t index,
                         const uint8_t (*path)[CHALLENGE_HASH_BYTES], size_t npath,
                         const uint8_t root[CHALLENGE_HASH_BYTES])
{
	if (index >= leaves || npath != challenge_path_len(leaves, index))
		return -1;
	uint8_t cur[CHALLENGE_HASH_BYTES];
	memcpy(cur, leaf, sizeof cur);
	size_t k = 0;
	for (uint32_t w = leaves; w > 1; w = (w + 1) / 2, index /= 2) {
		if ((index ^ 1) >= w)
			continue;
		if (index & 1)
			challenge_inner(path[k], cur, cur);
		else
			challenge_inner(cur, path[k], cur);
		k++;
	}
	return memcmp(cur, root, sizeof cur) ? -1 : 0;
}
