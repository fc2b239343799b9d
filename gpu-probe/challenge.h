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
 * (precision: the proto Precision value; FP8 E4M3 holds integers up to
 * 16, BF16 up to 256, FP16/TF32 up to 2048). 0 when k is too large. */
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
	return (int32_t)((x >> 32) % span) - (int32_t)range;
}

/* ---- one row, the whole step ------------------------------------------------ */

/* Row `row` of step key's product into out[0..n): sum over t of
 * A[row][t] * B[t][j], computed in exact integers and stored as float
 * (exact, since |sum| < 2^24 by the parameter check). O(k * n). */
void challenge_row(const struct challenge_params *p, const uint8_t key[CHALLENGE_HASH_BYTES],
                   uint32_t row, float *out);

/* The whole product of one step into c (m * n floats, row-major). Uses a
 * scratch of k * n int32 for B when scratch is non-NULL (faster), else
 * generates B per row. The CPU backend's GEMM. */
void challenge_product(const struct challenge_params *p, const uint8_t key[CHALLENGE_HASH_BYTES],
                       float *c, int32_t *scratch);

/* ---- the hash tree --------------------------------------------------------- */

/* Leaf hash of one row: SHA-256(0x00 || n little-endian float32). */
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

#endif
