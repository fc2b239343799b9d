/* test_challenge.c — the challenge arithmetic: SHA-256 against FIPS 180-4
 * vectors; the CPU product bit-identical to a straightforward int64
 * computation for several sizes and keys; rows equal to the product's;
 * value ranges; the hash tree's roots, paths and their rejection. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "challenge.h"

static int failures;

#define CHECK(cond, ...)                                                     \
	do {                                                                 \
		if (!(cond)) {                                               \
			failures++;                                          \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
			fprintf(stderr, __VA_ARGS__);                        \
			fputc('\n', stderr);                                 \
		}                                                            \
	} while (0)

static void hex(const uint8_t *h, char *out)
{
	for (int i = 0; i < 32; i++)
		sprintf(out + 2 * i, "%02x", h[i]);
}

static void test_sha256(void)
{
	static const struct {
		const char *in, *want;
	} rows[] = {
		{ "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
		{ "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
		{ "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
		  "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1" },
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		uint8_t h[32];
		char s[65];
		challenge_sha256(rows[i].in, strlen(rows[i].in), h);
		hex(h, s);
		CHECK(!strcmp(s, rows[i].want), "sha256(\"%s\") = %s", rows[i].in, s);
	}
	/* a million 'a's fed in odd-sized pieces: the streaming path */
	struct challenge_sha256 st;
	challenge_sha256_init(&st);
	char a[997];
	memset(a, 'a', sizeof a);
	size_t left = 1000000;
	while (left) {
		size_t n = left < sizeof a ? left : sizeof a;
		challenge_sha256_update(&st, a, n);
		left -= n;
	}
	uint8_t h[32];
	char s[65];
	challenge_sha256_final(&st, h);
	hex(h, s);
	CHECK(!strcmp(s, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
	      "sha256(10^6 x 'a') = %s", s);
}

/* The product the straightforward way: whole A and B as int64, triple loop. */
static void naive_product(const struct challenge_params *p, const uint8_t *key, float *c)
{
	struct challenge_gen_key g = challenge_gen_key_of(key);
	int64_t *A = malloc((size_t)p->m * p->k * sizeof *A);
	int64_t *B = malloc((size_t)p->k * p->n * sizeof *B);
	for (uint32_t i = 0; i < p->m; i++)
		for (uint32_t t = 0; t < p->k; t++)
			A[(size_t)i * p->k + t] =
			    challenge_elem(g, CHALLENGE_A, i, t, p->value_range);
	for (uint32_t t = 0; t < p->k; t++)
		for (uint32_t j = 0; j < p->n; j++)
			B[(size_t)t * p->n + j] =
			    challenge_elem(g, CHALLENGE_B, t, j, p->value_range);
	for (uint32_t i = 0; i < p->m; i++)
		for (uint32_t j = 0; j < p->n; j++) {
			int64_t s = 0;
			for (uint32_t t = 0; t < p->k; t++)
				s += A[(size_t)i * p->k + t] * B[(size_t)t * p->n + j];
			c[(size_t)i * p->n + j] = (float)s;
		}
	free(A);
	free(B);
}

static void test_products(void)
{
	static const struct challenge_params sizes[] = {
		{ 1, 1, 1, 1, 7 },      { 3, 5, 7, 1, 100 },     { 17, 9, 33, 1, 45 },
		{ 64, 64, 64, 1, 511 }, { 31, 48, 257, 1, 255 }, { 8, 16, 4096, 1, 63 },
	};
	for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
		const struct challenge_params *p = &sizes[s];
		const char *why = "";
		CHECK(!challenge_params_check(p, &why), "size %zu rejected: %s", s, why);
		for (uint64_t seedno = 0; seedno < 3; seedno++) {
			uint8_t seed[32] = { 0 }, key[32];
			seed[0] = (uint8_t)seedno;
			seed[31] = (uint8_t)(s * 7);
			challenge_first_key(seed, 1000 + seedno, "GPU-test-uuid", key);
			size_t mn = (size_t)p->m * p->n;
			float *want = malloc(mn * sizeof *want), *got = malloc(mn * sizeof *got);
			float *got2 = malloc(mn * sizeof *got2), *row = malloc(p->n * sizeof *row);
			int32_t *scratch = malloc((size_t)p->k * p->n * sizeof *scratch);
			naive_product(p, key, want);
			challenge_product(p, key, got, scratch);
			challenge_product(p, key, got2, NULL);
			CHECK(!memcmp(want, got, mn * sizeof *got),
			      "size %zu seed %llu: product differs from the int64 computation", s,
			      (unsigned long long)seedno);
			CHECK(!memcmp(want, got2, mn * sizeof *got2),
			      "size %zu seed %llu: row-wise product differs", s,
			      (unsigned long long)seedno);
			for (uint32_t i = 0; i < p->m; i += 1 + p->m / 4) {
				challenge_row(p, key, i, row);
				CHECK(!memcmp(row, want + (size_t)i * p->n, p->n * sizeof *row),
				      "size %zu row %u differs", s, i);
			}
			/* several rows at once, repeats included, as the server does */
			uint32_t pick[4] = { 0, p->m - 1, p->m / 2, 0 };
			float *many = malloc(4 * (size_t)p->n * sizeof *many);
			CHECK(!challenge_rows(p, key, pick, 4, many), "challenge_rows failed");
			for (int r = 0; r < 4; r++)
				CHECK(!memcmp(many + (size_t)r * p->n,
				              want + (size_t)pick[r] * p->n, p->n * sizeof *many),
				      "size %zu: challenge_rows row %u differs", s, pick[r]);
			free(many);
			/* inputs span the range and are not degenerate */
			struct challenge_gen_key g = challenge_gen_key_of(key);
			int32_t lo = 0, hi = 0;
			for (uint32_t t = 0; t < 4096; t++) {
				int32_t v =
				    challenge_elem(g, CHALLENGE_A, t % 17, t, p->value_range);
				CHECK(v >= -(int32_t)p->value_range && v <= (int32_t)p->value_range,
				      "element %d outside [-%u, %u]", v, p->value_range,
				      p->value_range);
				lo = v < lo ? v : lo;
				hi = v > hi ? v : hi;
			}
			CHECK(lo < 0 && hi > 0, "elements not spread: [%d, %d]", lo, hi);
			free(want);
			free(got);
			free(got2);
			free(row);
			free(scratch);
		}
	}
	/* another seed, another node or another GPU: another key */
	uint8_t seed[32] = { 9 }, k1[32], k2[32], k3[32];
	challenge_first_key(seed, 1, "GPU-a", k1);
	challenge_first_key(seed, 2, "GPU-a", k2);
	challenge_first_key(seed, 1, "GPU-b", k3);
	CHECK(memcmp(k1, k2, 32) && memcmp(k1, k3, 32), "keys must depend on node and UUID");
	/* the generator is pinned: other implementations must match these */
	uint8_t zero[32] = { 0 };
	struct challenge_gen_key g0 = challenge_gen_key_of(zero);
	int32_t pinned[4] = { challenge_elem(g0, CHALLENGE_A, 0, 0, 45),
		              challenge_elem(g0, CHALLENGE_A, 1, 2, 45),
		              challenge_elem(g0, CHALLENGE_B, 3, 4, 45),
		              challenge_elem(g0, CHALLENGE_B, 70000, 123456, 2047) };
	static const int32_t want_pinned[4] = { 21, -42, -44, 667 };
	for (int i = 0; i < 4; i++)
		CHECK(pinned[i] == want_pinned[i], "pinned element %d = %d, want %d", i, pinned[i],
		      want_pinned[i]);
}

static void test_ranges(void)
{
	CHECK(challenge_value_range(8192, 3) == 45, "fp16 k=8192: %u",
	      challenge_value_range(8192, 3));
	CHECK(challenge_value_range(8192, 5) == 4, "fp8 k=8192: %u",
	      challenge_value_range(8192, 5));
	CHECK(challenge_value_range(16, 4) == 256, "bf16 k=16: %u", challenge_value_range(16, 4));
	CHECK(challenge_value_range(1, 3) == 2048, "fp16 k=1: %u", challenge_value_range(1, 3));
	struct challenge_params bad = { 4, 4, 8192, 1, 46 };
	const char *why = "";
	CHECK(challenge_params_check(&bad, &why) && strstr(why, "value_range"),
	      "k * R^2 >= 2^24 must be refused (%s)", why);
	struct challenge_params zero = { 0, 4, 4, 1, 1 };
	CHECK(challenge_params_check(&zero, &why) && !strncmp(why, "m:", 2), "m = 0: %s", why);
	struct challenge_params nochain = { 4, 4, 4, 0, 1 };
	CHECK(challenge_params_check(&nochain, &why) && strstr(why, "chain"), "chain 0: %s", why);
}

static void test_tree(void)
{
	for (uint32_t leaves = 1; leaves <= 37; leaves++) {
		size_t size = challenge_tree_size(leaves);
		uint8_t(*nodes)[32] = calloc(size, 32);
		uint8_t(*path)[32] = calloc(64, 32);
		uint8_t root[32];
		for (uint32_t i = 0; i < leaves; i++) {
			float row[3] = { (float)i, -(float)i, 7 };
			challenge_leaf(row, 3, nodes[i]);
		}
		/* the devices' way of hashing a leaf (chunk hashes, then the
		 * leaf over them) gives the same bits, around every block and
		 * chunk boundary */
		static const uint32_t lens[] = { 0,  1,   2,   13,  14,  15,  16,  17,   63,
			                         64, 255, 256, 257, 511, 512, 513, 1000, 4097 };
		for (size_t li = 0; leaves == 1 && li < sizeof lens / sizeof lens[0]; li++) {
			uint32_t n = lens[li], nc = challenge_chunks(n);
			float *row = malloc((n ? n : 1) * sizeof *row);
			uint8_t(*chunks)[32] = malloc((nc ? nc : 1) * 32), a[32], b[32];
			for (uint32_t j = 0; j < n; j++)
				row[j] = (float)((int)(j * 7919 + 3) % 2001 - 1000);
			for (uint32_t j = 0; j < nc; j++)
				challenge_chunk_hash(row, n, j, challenge_sha256_k, chunks[j]);
			challenge_leaf(row, n, a);
			challenge_leaf_of_chunks(&chunks[0][0], nc, challenge_sha256_k, b);
			CHECK(!memcmp(a, b, 32),
			      "device-style leaf differs from challenge_leaf at n = %u", n);
			if (n) {
				row[n - 1] += 1;
				challenge_leaf(row, n, b);
				CHECK(memcmp(a, b, 32),
				      "the last value must change the leaf (n = %u)", n);
			}
			free(row);
			free(chunks);
		}
		challenge_tree_build(nodes, leaves, root);
		if (leaves == 1)
			CHECK(!memcmp(root, nodes[0], 32), "one leaf: root is the leaf");
		if (leaves == 3) {
			uint8_t l01[32], want[32];
			challenge_inner(nodes[0], nodes[1], l01);
			challenge_inner(l01, nodes[2], want);
			CHECK(!memcmp(root, want, 32), "three leaves: H(H(l0,l1), l2)");
		}
		for (uint32_t i = 0; i < leaves; i++) {
			uint32_t plen = challenge_path_len(leaves, i);
			challenge_tree_path((const uint8_t(*)[32])nodes, leaves, i, path);
			CHECK(!challenge_path_check(nodes[i], leaves, i, (const uint8_t(*)[32])path,
			                            plen, root),
			      "leaves %u: path of %u does not check", leaves, i);
			uint8_t leaf[32];
			memcpy(leaf, nodes[i], 32);
			leaf[5] ^= 1;
			CHECK(challenge_path_check(leaf, leaves, i, (const uint8_t(*)[32])path,
			                           plen, root),
			      "leaves %u: a changed leaf %u checks", leaves, i);
			if (plen) {
				path[plen - 1][0] ^= 0x80;
				CHECK(challenge_path_check(nodes[i], leaves, i,
				                           (const uint8_t(*)[32])path, plen, root),
				      "leaves %u: a changed path of %u checks", leaves, i);
				path[plen - 1][0] ^= 0x80;
				CHECK(challenge_path_check(nodes[i], leaves, i,
				                           (const uint8_t(*)[32])path, plen - 1,
				                           root),
				      "leaves %u: a short path of %u checks", leaves, i);
			}
			if (leaves > 1) {
				uint32_t other = (i + 1) % leaves;
				CHECK(challenge_path_check(nodes[i], leaves, other,
				                           (const uint8_t(*)[32])path,
				                           challenge_path_len(leaves, other), root),
				      "leaves %u: leaf %u's path checks at index %u", leaves, i,
				      other);
			}
			CHECK(challenge_path_check(nodes[i], leaves, leaves,
			                           (const uint8_t(*)[32])path, plen, root),
			      "index past the leaves must fail");
		}
		free(nodes);
		free(path);
	}
}

int main(void)
{
	test_sha256();
	test_products();
	test_ranges();
	test_tree();
	if (failures) {
		fprintf(stderr, "%d failures\n", failures);
		return 1;
	}
	puts("challenge: all checks passed");
	return 0;
}
