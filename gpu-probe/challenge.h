/* challenge.h — the probe challenge's arithmetic, shared by gpu-probe (every
 * backend) and gpumatchd: SHA-256, the per-step seeds, the counter-based
 * matrix generator, one row of a step's product, and the hash tree over a
 * result's rows. Pure C: no I/O, no allocation except where stated, no
 * CUDA or libevent. The element generator is also compiled into the CUDA
 * backend (CHALLENGE_HD marks what runs on the device).
 *
 * A challenge with seed S, bound to node N and GPU UUID U, is a chain of L
 * steps. Step 0's key is SHA-256("gpumatch-probe-v1" || S || N as u64 LE ||
 * U). Step i multiplies A_i (m x k) by B_i (k x n), both generated from key_i,
 * accumulating in FP32; the result's rows are the leaves of a hash tree
 * whose root is root_i, and key_{i+1} = SHA-256(key_i || root_i). The inputs
 * are integers in [-R, R] with k * R^2 < 2^24, so every partial sum is an
 * exact integer in FP32 and every correct backend produces the same bits. */
#ifndef GPUMATCH_CHALLENGE_H
#define GPUMATCH_CHALLENGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#define CHALLENGE_HD __host__ __device__ __forceinline__
#else
#define CHALLENGE_HD static inline
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define CHALLENGE_HASH_BYTES 32
#define CHALLENGE_SEED_BYTES 32
#define CHALLENGE_MAX_DIM    65536u
#define CHALLENGE_MAX_CHAIN  100000u
#define CHALLENGE_MAX_UUID   96

/* Which input matrix an element belongs to. */
enum challenge_matrix { CHALLENGE_A = 1, CHALLENGE_B = 2 };

/* ---- SHA-256 ---------------------------------------------------------- */

struct challenge_sha256 {
	uint32_t h[8];
	uint64_t bytes; /* total fed so far */
	uint8_t buf[64];
	size_t fill; /* bytes in buf */
};

void challenge_sha256_init(struct challenge_sha256 *s);
void challenge_sha256_update(struct challenge_sha256 *s, const void *data, size_t len);
void challenge_sha256_final(struct challenge_sha256 *s, uint8_t out[CHALLENGE_HASH_BYTES]);
/* One-shot SHA-256 of data. */
void challenge_sha256(const void *data, size_t len, uint8_t out[CHALLENGE_HASH_BYTES]);

/* ---- parameters ----------------------------------------------------------- */

struct challenge_params {
	uint32_t m, n, k;     /* result rows, columns, inner dimension */
	uint32_t chain;       /* steps */
	uint32_t value_range; /* R: inputs in [-R, R] */
};

/* 0 when p is usable: 1 <= m, n, k <= CHALLENGE_MAX_DIM, 1 <= chain <=
 * CHALLENGE_MAX_CHAIN, R >= 1 and k * R^2 < 2^24; otherwise -1 with why
 * naming the field. */
int challenge_params_check(const struct challenge_params *p, const char **why);

/* The largest R with k * R^2 < 2^24 that precision can hold exactly
 * (precision: the proto Precision value; FP8 at most 4 for its narrow
 * accumulators, BF16 up to 256, FP16/TF32 up to 2048). 0 when k is too
 * large. */
uint32_t challenge_value_range(uint32_t k, int precision);

/* Step 0's key for one GPU (uuid: NUL-terminated, at most
 * CHALLENGE_MAX_UUID bytes are used). */
void challenge_first_key(const uint8_t seed[CHALLENGE_SEED_BYTES], uint64_t node_id,
                         const char *uuid, uint8_t key[CHALLENGE_HASH_BYTES]);
/* key_{i+1} from key_i and root_i (next may alias key). */
void challenge_next_key(const uint8_t key[CHALLENGE_HASH_BYTES],
                        const uint8_t root[CHALLENGE_HASH_BYTES],
                        uint8_t next[CHALLENGE_HASH_BYTES]);

/* ---- the generator ---------------------------------------------------------- */

CHALLENGE_HD uint64_t challenge_mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

/* The two 64-bit words of a key the generator uses (little endian). */
struct challenge_gen_key {
	uint64_t w0, w1;
};

CHALLENGE_HD struct challenge_gen_key challenge_gen_key_of(const uint8_t *key)
{
	struct challenge_gen_key g = { 0, 0 };
	for (int i = 7; i >= 0; i--) {
		g.w0 = g.w0 << 8 | key[i];
		g.w1 = g.w1 << 8 | key[8 + i];
	}
	return g;
}

/* Element (row, col) of matrix `which` under key g: an integer in
 * [-range, range]. Addressable: any element costs the same, in any order. */
CHALLENGE_HD int32_t challenge_elem(struct challenge_gen_key g, int which, uint32_t row,
                                    uint32_t col, uint32_t range)
{
	uint64_t x = g.w0 ^ ((uint64_t)(uint32_t)which * 0x9e3779b97f4a7c15ull);
	x = challenge_mix(x ^ ((uint64_t)row << 32 | col));
	x = challenge_mix(x + g.w1);
	uint32_t span = 2 * range + 1;
	/* a 32-bit modulo: cheap on a GPU, same value */
	return (int32_t)((uint32_t)(x >> 32) % span) - (int32_t)range;
}

/* ---- leaf hashing as the devices do it ------------------------------------------ */

/* SHA-256's round constants (FIPS 180-4), the k of the functions below. */
extern const uint32_t challenge_sha256_k[64];

CHALLENGE_HD uint32_t challenge_ror(uint32_t x, int n)
{
	return x >> n | x << (32 - n);
}

/* One SHA-256 compression of the 64-byte block blk into h; k is the round
 * constant table (challenge_sha256_k, or a device copy of it). */
CHALLENGE_HD void challenge_sha256_compress(uint32_t h[8], const uint8_t *blk, const uint32_t *k)
{
	uint32_t w[64];
	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t)blk[4 * i] << 24 | (uint32_t)blk[4 * i + 1] << 16 |
		       (uint32_t)blk[4 * i + 2] << 8 | blk[4 * i + 3];
	for (int i = 16; i < 64; i++) {
		uint32_t s0 =
		    challenge_ror(w[i - 15], 7) ^ challenge_ror(w[i - 15], 18) ^ w[i - 15] >> 3;
		uint32_t s1 =
		    challenge_ror(w[i - 2], 17) ^ challenge_ror(w[i - 2], 19) ^ w[i - 2] >> 10;
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
	for (int i = 0; i < 64; i++) {
		uint32_t t1 = hh +
		              (challenge_ror(e, 6) ^ challenge_ror(e, 11) ^ challenge_ror(e, 25)) +
		              ((e & f) ^ (~e & g)) + k[i] + w[i];
		uint32_t t2 = (challenge_ror(a, 2) ^ challenge_ror(a, 13) ^ challenge_ror(a, 22)) +
		              ((a & b) ^ (a & c) ^ (b & c));
		hh = g;
		g = f;
		f = e;
		e = d + t1;
		d = c;
		c = b;
		b = a;
		a = t1 + t2;
	}
	h[0] += a;
	h[1] += b;
	h[2] += c;
	h[3] += d;
	h[4] += e;
	h[5] += f;
	h[6] += g;
	h[7] += hh;
}

/* SHA-256(tag || payload) with the padded message built block by block, as
 * a device thread does it: payload is the count little-endian float32 of f
 * when f is non-NULL, else count bytes of b. No buffer beyond one block. */
CHALLENGE_HD void challenge_sha256_tagged(uint8_t tag, const float *f, const uint8_t *b,
                                          uint32_t count, const uint32_t *k,
                                          uint8_t out[CHALLENGE_HASH_BYTES])
{
	uint32_t h[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
		          0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
	uint64_t len = 1 + (f ? 4 * (uint64_t)count : count); /* message bytes */
	uint64_t total = (len + 8 + 64) / 64 * 64;
	uint64_t bits = len * 8;
	uint8_t blk[64];
	for (uint64_t base = 0; base < total; base += 64) {
		for (int i = 0; i < 64; i++) {
			uint64_t pos = base + (uint64_t)i;
			uint8_t byte = 0;
			if (pos == 0) {
				byte = tag;
			} else if (pos < len && f) {
				union {
					float f;
					uint32_t u;
				} v;
				v.f = f[(pos - 1) / 4];
				byte = (uint8_t)(v.u >> (8 * ((pos - 1) % 4)));
			} else if (pos < len) {
				byte = b[pos - 1];
			} else if (pos == len) {
				byte = 0x80;
			} else if (pos >= total - 8) {
				byte = (uint8_t)(bits >> (8 * (total - 1 - pos)));
			}
			blk[i] = byte;
		}
		challenge_sha256_compress(h, blk, k);
	}
	for (int i = 0; i < 8; i++) {
		out[4 * i] = (uint8_t)(h[i] >> 24);
		out[4 * i + 1] = (uint8_t)(h[i] >> 16);
		out[4 * i + 2] = (uint8_t)(h[i] >> 8);
		out[4 * i + 3] = (uint8_t)h[i];
	}
}

/* Floats per chunk of a row: a row's leaf hashes its chunks' hashes, so a
 * device hashes the chunks of all rows in parallel. */
#define CHALLENGE_CHUNK 256u

CHALLENGE_HD uint32_t challenge_chunks(uint32_t n)
{
	return (n + CHALLENGE_CHUNK - 1) / CHALLENGE_CHUNK;
}

/* Chunk j of a row of n values: SHA-256(0x02 || its floats, little endian). */
CHALLENGE_HD void challenge_chunk_hash(const float *row, uint32_t n, uint32_t j, const uint32_t *k,
                                       uint8_t out[CHALLENGE_HASH_BYTES])
{
	uint32_t first = j * CHALLENGE_CHUNK;
	uint32_t count = n - first < CHALLENGE_CHUNK ? n - first : CHALLENGE_CHUNK;
	challenge_sha256_tagged(2, row + first, 0, count, k, out);
}

/* A leaf from its row's chunk hashes (nchunks x 32 bytes):
 * SHA-256(0x00 || chunk hashes). Equal to challenge_leaf (unit-tested). */
CHALLENGE_HD void challenge_leaf_of_chunks(const uint8_t *chunks, uint32_t nchunks,
                                           const uint32_t *k, uint8_t out[CHALLENGE_HASH_BYTES])
{
	challenge_sha256_tagged(0, 0, chunks, nchunks * CHALLENGE_HASH_BYTES, k, out);
}

/* ---- one row, the whole step ------------------------------------------------ */

/* Row `row` of step key's product into out[0..n): sum over t of
 * A[row][t] * B[t][j], computed in exact integers and stored as float
 * (exact, since |sum| < 2^24 by the parameter check). O(k * n). */
void challenge_row(const struct challenge_params *p, const uint8_t key[CHALLENGE_HASH_BYTES],
                   uint32_t row, float *out);

/* Rows rows[0..nrows) of step key's product into out (nrows x n floats),
 * generating B once for all of them: O(k * n * (1 + nrows)) with a
 * scratch of nrows * (k + n) int64 allocated here. Returns 0, or -1 when
 * out of memory (out untouched). What the server runs per opened step. */
int challenge_rows(const struct challenge_params *p, const uint8_t key[CHALLENGE_HASH_BYTES],
                   const uint32_t *rows, size_t nrows, float *out);

/* The whole product of one step into c (m * n floats, row-major). Uses a
 * scratch of k * n int32 for B when scratch is non-NULL (faster), else
 * generates B per row. The CPU backend's GEMM. */
void challenge_product(const struct challenge_params *p, const uint8_t key[CHALLENGE_HASH_BYTES],
                       float *c, int32_t *scratch);

/* ---- the hash tree --------------------------------------------------------- */

/* Leaf hash of one row of n values: SHA-256(0x00 || c_0 || c_1 || ...) where
 * c_j = SHA-256(0x02 || values [256 j, 256 j + 256) as little-endian
 * float32); n = 0 hashes the tag alone. */
void challenge_leaf(const float *row, uint32_t n, uint8_t out[CHALLENGE_HASH_BYTES]);
/* Inner node: SHA-256(0x01 || left || right). */
void challenge_inner(const uint8_t l[CHALLENGE_HASH_BYTES], const uint8_t r[CHALLENGE_HASH_BYTES],
                     uint8_t out[CHALLENGE_HASH_BYTES]);

/* Levels of the tree over `leaves` leaves: a level with an odd count
 * promotes its last node unchanged. The path of leaf i holds one sibling per
 * level where it has one; challenge_path_len says how many. */
uint32_t challenge_path_len(uint32_t leaves, uint32_t index);

/* Hashes a tree over `leaves` leaves takes (leaves >= 1). */
size_t challenge_tree_size(uint32_t leaves);
/* Builds the tree in place: nodes holds challenge_tree_size(leaves) hashes,
 * the first `leaves` of which are the leaf hashes; the rest are filled, and
 * the root is copied to root. leaves >= 1. */
void challenge_tree_build(uint8_t (*nodes)[CHALLENGE_HASH_BYTES], uint32_t leaves,
                          uint8_t root[CHALLENGE_HASH_BYTES]);
/* Writes leaf index's path (challenge_path_len entries) from a built tree. */
void challenge_tree_path(const uint8_t (*nodes)[CHALLENGE_HASH_BYTES], uint32_t leaves,
                         uint32_t index, uint8_t (*path)[CHALLENGE_HASH_BYTES]);
/* 0 when leaf at index with path (npath entries) leads to root; -1 when
 * npath is wrong or the hashes do not lead there. */
int challenge_path_check(const uint8_t leaf[CHALLENGE_HASH_BYTES], uint32_t leaves, uint32_t index,
                         const uint8_t (*path)[CHALLENGE_HASH_BYTES], size_t npath,
                         const uint8_t root[CHALLENGE_HASH_BYTES]);

#ifdef __cplusplus
}
#endif

#endif
