/* test_proto_roundtrip.c — every message of the gpumatch.v1 contract,
 * filled generically through its descriptor, survives pack/unpack/re-pack
 * bit for bit; every decoder rejects truncated, corrupted and garbage input
 * and failed allocations cleanly; and the contract keeps its conventions
 * (naming, enum zero values, request/response pairs, map entries) that the
 * server's generic JSON mapping relies on.
 *
 * The list of messages is proto_messages[] from the registry, which the
 * build derives from protoc-c's headers; proto_declared.h holds counts taken
 * from the .proto text, so neither list is kept by hand. Runs under ASan and
 * UBSan: a crash or leak is a failure even where no CHECK fires. */
#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "gpumatch/v1/registry.h"
#include "proto_declared.h"

/* The contract has no recursive types, so this only bounds a future one. */
#define FILL_DEPTH_MAX 8
#define FILL_REPEATED  2
/* Floors so that an empty or gutted registry cannot pass. */
#define MIN_MESSAGES 100
#define MIN_ENUMS    20

static int failures;
static int checks;

static void fail_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail_at(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	failures++;
	fprintf(stderr, "FAIL %s:%d: ", file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

#define CHECK(cond, ...)                                          \
	do {                                                      \
		checks++;                                         \
		if (!(cond))                                      \
			fail_at(__FILE__, __LINE__, __VA_ARGS__); \
	} while (0)

static void *xmalloc(size_t n)
{
	void *p = calloc(1, n ? n : 1);

	if (p == NULL) {
		fprintf(stderr, "out of memory\n");
		exit(2);
	}
	return p;
}

/* ---- a counting allocator that can fail the Nth allocation -------------- */

struct count_alloc {
	long live;      /* allocations not yet freed */
	long calls;     /* allocations attempted */
	long fail_call; /* 0-based call that returns NULL; -1 = none */
};

static void *count_alloc_fn(void *data, size_t size)
{
	struct count_alloc *ca = data;
	long call = ca->calls++;
	void *p;

	if (call == ca->fail_call)
		return NULL;
	p = malloc(size ? size : 1);
	if (p != NULL)
		ca->live++;
	return p;
}

static void count_free_fn(void *data, void *p)
{
	struct count_alloc *ca = data;

	if (p == NULL)
		return;
	ca->live--;
	free(p);
}

static void count_alloc_init(struct count_alloc *ca, ProtobufCAllocator *a, long fail_call)
{
	ca->live = 0;
	ca->calls = 0;
	ca->fail_call = fail_call;
	a->alloc = count_alloc_fn;
	a->free = count_free_fn;
	a->allocator_data = ca;
}

/* ---- descriptor helpers ------------------------------------------------- */

static bool registry_has_message(const ProtobufCMessageDescriptor *d)
{
	for (size_t i = 0; i < proto_message_count; i++)
		if (proto_messages[i] == d)
			return true;
	return false;
}

static bool registry_has_enum(const ProtobufCEnumDescriptor *d)
{
	for (size_t i = 0; i < proto_enum_count; i++)
		if (proto_enums[i] == d)
			return true;
	return false;
}

static size_t elem_size(ProtobufCType t)
{
	switch (t) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		return sizeof(int32_t);
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		return sizeof(uint32_t);
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		return sizeof(int64_t);
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return sizeof(uint64_t);
	case PROTOBUF_C_TYPE_FLOAT:
		return sizeof(float);
	case PROTOBUF_C_TYPE_DOUBLE:
		return sizeof(double);
	case PROTOBUF_C_TYPE_BOOL:
		return sizeof(protobuf_c_boolean);
	case PROTOBUF_C_TYPE_ENUM:
		return sizeof(int); /* protoc-c forces enums to int size */
	case PROTOBUF_C_TYPE_STRING:
		return sizeof(char *);
	case PROTOBUF_C_TYPE_BYTES:
		return sizeof(ProtobufCBinaryData);
	case PROTOBUF_C_TYPE_MESSAGE:
		return sizeof(ProtobufCMessage *);
	}
	return 0;
}

static void *field_ptr(void *msg, const ProtobufCFieldDescriptor *f)
{
	return (char *)msg + f->offset;
}

static void *quantifier_ptr(void *msg, const ProtobufCFieldDescriptor *f)
{
	return (char *)msg + f->quantifier_offset;
}

/* proto2-style presence flag (has_x); proto3 `optional` would use it too. */
static bool has_flag(const ProtobufCFieldDescriptor *f)
{
	return f->label == PROTOBUF_C_LABEL_OPTIONAL && !(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
	       f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE;
}

/* ---- generic filling ---------------------------------------------------- */

struct filler {
	uint64_t n;          /* distinct value counter */
	unsigned depth_cuts; /* sub-messages left unset at FILL_DEPTH_MAX */
};

static int pick_enum(const ProtobufCEnumDescriptor *ed, uint64_t n)
{
	unsigned nonzero = 0;

	for (unsigned i = 0; i < ed->n_values; i++)
		if (ed->values[i].value != 0)
			nonzero++;
	if (nonzero == 0)
		return 0;
	n %= nonzero;
	for (unsigned i = 0; i < ed->n_values; i++)
		if (ed->values[i].value != 0 && n-- == 0)
			return ed->values[i].value;
	return 0;
}

static ProtobufCMessage *fill_message(const ProtobufCMessageDescriptor *d, struct filler *fl,
                                      unsigned depth);

/* Stores one distinctive, non-default value of f's type at dst. Returns
 * false only for a sub-message cut off by the depth limit. */
static bool fill_value(const ProtobufCFieldDescriptor *f, void *dst, struct filler *fl,
                       unsigned depth)
{
	uint64_t n = ++fl->n;

	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32: /* negative: the 10-byte varint path */
		*(int32_t *)dst = -(int32_t)(1000 + n);
		break;
	case PROTOBUF_C_TYPE_SINT32:
		*(int32_t *)dst = -(int32_t)(70000 + n);
		break;
	case PROTOBUF_C_TYPE_SFIXED32:
		*(int32_t *)dst = -(int32_t)(123456 + n);
		break;
	case PROTOBUF_C_TYPE_UINT32: /* top bit set: a 5-byte varint */
		*(uint32_t *)dst = UINT32_C(0x80000000) + (uint32_t)n;
		break;
	case PROTOBUF_C_TYPE_FIXED32:
		*(uint32_t *)dst = UINT32_C(0xdead0000) + (uint32_t)n;
		break;
	case PROTOBUF_C_TYPE_INT64:
		*(int64_t *)dst = -(INT64_C(1) << 40) - (int64_t)n;
		break;
	case PROTOBUF_C_TYPE_SINT64:
		*(int64_t *)dst = -(INT64_C(1) << 50) - (int64_t)n;
		break;
	case PROTOBUF_C_TYPE_SFIXED64:
		*(int64_t *)dst = -(INT64_C(1) << 60) - (int64_t)n;
		break;
	case PROTOBUF_C_TYPE_UINT64: /* top bit set: a 10-byte varint */
		*(uint64_t *)dst = (UINT64_C(1) << 63) + n;
		break;
	case PROTOBUF_C_TYPE_FIXED64:
		*(uint64_t *)dst = UINT64_C(0xfeedface00000000) + n;
		break;
	case PROTOBUF_C_TYPE_FLOAT:
		*(float *)dst = 1.25f + (float)n;
		break;
	case PROTOBUF_C_TYPE_DOUBLE:
		*(double *)dst = -1.0e12 - 0.001 * (double)n;
		break;
	case PROTOBUF_C_TYPE_BOOL:
		*(protobuf_c_boolean *)dst = 1;
		break;
	case PROTOBUF_C_TYPE_ENUM: {
		int v = pick_enum(f->descriptor, n);
		memcpy(dst, &v, sizeof v);
		break;
	}
	case PROTOBUF_C_TYPE_STRING: {
		/* Multi-byte UTF-8 on purpose. */
		char tmp[96];
		int len = snprintf(tmp, sizeof tmp, "%s-%" PRIu64 "-h\xc3\xa9llo-\xe2\x82\xac",
		                   f->name, n);
		char *s = xmalloc((size_t)len + 1);
		memcpy(s, tmp, (size_t)len + 1);
		*(char **)dst = s;
		break;
	}
	case PROTOBUF_C_TYPE_BYTES: {
		ProtobufCBinaryData *b = dst;
		b->len = 5 + n % 7;
		b->data = xmalloc(b->len);
		for (size_t i = 0; i < b->len; i++)
			b->data[i] = (uint8_t)(n * 31 + i * 97);
		b->data[0] = 0x00; /* embedded NUL */
		b->data[1] = 0xff;
		break;
	}
	case PROTOBUF_C_TYPE_MESSAGE:
		if (depth + 1 >= FILL_DEPTH_MAX) {
			fl->depth_cuts++;
			return false;
		}
		*(ProtobufCMessage **)dst = fill_message(f->descriptor, fl, depth + 1);
		break;
	}
	return true;
}

/* Returns a message of type d, allocated with malloc, with every field set:
 * scalars non-default, repeated fields (maps included) with
 * FILL_REPEATED elements, the first member of each oneof. Free it with
 * protobuf_c_message_free_unpacked(msg, NULL). */
static ProtobufCMessage *fill_message(const ProtobufCMessageDescriptor *d, struct filler *fl,
                                      unsigned depth)
{
	ProtobufCMessage *msg = xmalloc(d->sizeof_message);

	d->message_init(msg);
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];

		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t es = elem_size(f->type), count = FILL_REPEATED;
			char *arr = xmalloc(es * count);

			if (f->type == PROTOBUF_C_TYPE_MESSAGE && depth + 1 >= FILL_DEPTH_MAX) {
				fl->depth_cuts++;
				count = 0;
			}
			for (size_t k = 0; k < count; k++)
				fill_value(f, arr + k * es, fl, depth);
			if (count == 0) {
				free(arr);
				arr = NULL;
			}
			*(size_t *)quantifier_ptr(msg, f) = count;
			*(void **)field_ptr(msg, f) = arr;
		} else if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
			uint32_t *oneof_case = quantifier_ptr(msg, f);

			if (*oneof_case != 0)
				continue; /* another member of this oneof is set */
			if (fill_value(f, field_ptr(msg, f), fl, depth))
				*oneof_case = f->id;
		} else {
			bool set = fill_value(f, field_ptr(msg, f), fl, depth);

			if (set && has_flag(f))
				*(protobuf_c_boolean *)quantifier_ptr(msg, f) = 1;
		}
	}
	return msg;
}

/* ---- generic comparison ------------------------------------------------- */

static bool msg_equal(const ProtobufCMessageDescriptor *d, const void *a, const void *b,
                      const char *path);

static bool value_equal(const ProtobufCFieldDescriptor *f, const void *a, const void *b,
                        const char *path)
{
	char sub[512];

	switch (f->type) {
	case PROTOBUF_C_TYPE_STRING: {
		const char *sa = *(char *const *)a, *sb = *(char *const *)b;
		if (sa == NULL || sb == NULL) {
			fail_at(__FILE__, __LINE__, "%s.%s: NULL string", path, f->name);
			return false;
		}
		return strcmp(sa, sb) == 0;
	}
	case PROTOBUF_C_TYPE_BYTES: {
		const ProtobufCBinaryData *ba = a, *bb = b;
		return ba->len == bb->len &&
		       (ba->len == 0 || memcmp(ba->data, bb->data, ba->len) == 0);
	}
	case PROTOBUF_C_TYPE_MESSAGE: {
		const void *ma = *(void *const *)a, *mb = *(void *const *)b;
		if (ma == NULL || mb == NULL)
			return ma == mb;
		snprintf(sub, sizeof sub, "%s.%s", path, f->name);
		return msg_equal(f->descriptor, ma, mb, sub);
	}
	default: /* bitwise, so float/double must match exactly */
		return memcmp(a, b, elem_size(f->type)) == 0;
	}
}

static bool msg_equal(const ProtobufCMessageDescriptor *d, const void *a, const void *b,
                      const char *path)
{
	const ProtobufCMessage *ma = a, *mb = b;
	bool eq = true;

	if (ma->descriptor != d || mb->descriptor != d) {
		fail_at(__FILE__, __LINE__, "%s: wrong descriptor", path);
		return false;
	}
	if (ma->n_unknown_fields != mb->n_unknown_fields) {
		fail_at(__FILE__, __LINE__, "%s: unknown fields %u vs %u", path,
		        ma->n_unknown_fields, mb->n_unknown_fields);
		eq = false;
	}
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		const char *pa = (const char *)a + f->offset;
		const char *pb = (const char *)b + f->offset;
		const char *qa = (const char *)a + f->quantifier_offset;
		const char *qb = (const char *)b + f->quantifier_offset;

		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t na = *(const size_t *)qa, nb = *(const size_t *)qb;
			const char *arr_a = *(char *const *)pa, *arr_b = *(char *const *)pb;
			size_t es = elem_size(f->type);

			if (na != nb) {
				fail_at(__FILE__, __LINE__, "%s.%s: %zu vs %zu elements", path,
				        f->name, na, nb);
				eq = false;
				continue;
			}
			for (size_t k = 0; k < na; k++)
				if (!value_equal(f, arr_a + k * es, arr_b + k * es, path)) {
					fail_at(__FILE__, __LINE__, "%s.%s[%zu] differs", path,
					        f->name, k);
					eq = false;
				}
			continue;
		}
		if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
			uint32_t ca = *(const uint32_t *)qa, cb = *(const uint32_t *)qb;
			if (ca != cb) {
				fail_at(__FILE__, __LINE__, "%s.%s: oneof case %u vs %u", path,
				        f->name, ca, cb);
				eq = false;
			}
			if (ca != f->id || cb != f->id)
				continue;
		} else if (has_flag(f)) {
			protobuf_c_boolean ha = *(const protobuf_c_boolean *)qa;
			protobuf_c_boolean hb = *(const protobuf_c_boolean *)qb;
			if (ha != hb) {
				fail_at(__FILE__, __LINE__, "%s.%s: has %d vs %d", path, f->name,
				        ha, hb);
				eq = false;
			}
			if (!ha || !hb)
				continue;
		}
		if (!value_equal(f, pa, pb, path)) {
			fail_at(__FILE__, __LINE__, "%s.%s differs", path, f->name);
			eq = false;
		}
	}
	return eq;
}

/* ---- wire-format walking ------------------------------------------------ */

static bool read_varint(const uint8_t *buf, size_t len, size_t *pos, uint64_t *v)
{
	*v = 0;
	for (unsigned shift = 0; shift < 70; shift += 7) {
		if (*pos >= len)
			return false;
		uint8_t b = buf[(*pos)++];
		if (shift < 64)
			*v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return true;
	}
	return false;
}

/* Splits a buffer into its top-level fields: boundary[i] is the offset just
 * past field i, tags[i] its field number. Returns the field count, or -1 if
 * the buffer is not well-formed at the top level. */
static long walk_fields(const uint8_t *buf, size_t len, size_t *boundary, uint32_t *tags,
                        size_t max)
{
	size_t pos = 0, n = 0;

	while (pos < len) {
		uint64_t key, v;

		if (!read_varint(buf, len, &pos, &key) || n >= max)
			return -1;
		switch (key & 7) {
		case 0:
			if (!read_varint(buf, len, &pos, &v))
				return -1;
			break;
		case 1:
			if (len - pos < 8)
				return -1;
			pos += 8;
			break;
		case 2:
			if (!read_varint(buf, len, &pos, &v) || v > len - pos)
				return -1;
			pos += (size_t)v;
			break;
		case 5:
			if (len - pos < 4)
				return -1;
			pos += 4;
			break;
		default:
			return -1;
		}
		boundary[n] = pos;
		tags[n] = (uint32_t)(key >> 3);
		n++;
	}
	return (long)n;
}

/* ---- decoding hostile input --------------------------------------------- */

/* Unpacks buf with a counting allocator. Returns whether it decoded; either
 * way checks that nothing stays allocated afterwards. */
static bool try_unpack(const ProtobufCMessageDescriptor *d, const uint8_t *buf, size_t len,
                       const char *what, size_t where)
{
	struct count_alloc ca;
	ProtobufCAllocator alloc;
	ProtobufCMessage *m;

	count_alloc_init(&ca, &alloc, -1);
	m = protobuf_c_message_unpack(d, &alloc, len, buf);
	if (m != NULL) {
		CHECK(protobuf_c_message_check(m), "%s: %s@%zu decoded an invalid message", d->name,
		      what, where);
		protobuf_c_message_free_unpacked(m, &alloc);
	}
	CHECK(ca.live == 0, "%s: %s@%zu leaked %ld allocations", d->name, what, where, ca.live);
	return m != NULL;
}

static uint64_t rng_state = UINT64_C(0x9e3779b97f4a7c15);

static uint64_t rng_next(void)
{
	/* xorshift64*: deterministic, so a failure reproduces. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * UINT64_C(0x2545f4914f6cdd1d);
}

static void test_truncation(const ProtobufCMessageDescriptor *d, const uint8_t *buf, size_t len)
{
	size_t *boundary = xmalloc((len + 1) * sizeof *boundary);
	uint32_t *tags = xmalloc((len + 1) * sizeof *tags);
	bool *at_boundary = xmalloc(len + 1);
	long nf = walk_fields(buf, len, boundary, tags, len + 1);
	size_t step;

	CHECK(nf >= 0, "%s: packed buffer not well-formed", d->name);
	if (nf < 0)
		goto out;
	at_boundary[0] = true;
	for (long i = 0; i < nf; i++)
		at_boundary[boundary[i]] = true;

	/* A cut between top-level fields is a valid shorter message; any cut
	 * inside a field must be rejected. Every cut for small buffers, else
	 * every boundary and its neighbours plus a stride. */
	step = len <= 2048 ? 1 : len / 1024;
	for (size_t cut = 0; cut < len; cut++) {
		bool near =
		    at_boundary[cut] || (cut > 0 && at_boundary[cut - 1]) || at_boundary[cut + 1];
		if (cut % step != 0 && !near)
			continue;
		bool ok = try_unpack(d, buf, cut, "truncated", cut);
		CHECK(ok == at_boundary[cut], "%s: truncated at %zu/%zu: %s", d->name, cut, len,
		      ok ? "decoded inside a field" : "rejected at a field boundary");
	}
out:
	free(boundary);
	free(tags);
	free(at_boundary);
}

static void test_corruption(const ProtobufCMessageDescriptor *d, const uint8_t *buf, size_t len)
{
	static const uint8_t patterns[] = { 0x00, 0xff, 0x80, 0x7f };
	uint8_t *mut = xmalloc(len + 32);
	size_t step = len <= 256 ? 1 : len / 256;

	/* Single-byte corruption anywhere: may or may not decode, must never
	 * crash, read out of bounds or leak. */
	for (size_t pos = 0; pos < len; pos += step) {
		for (size_t p = 0; p < sizeof patterns + 1; p++) {
			memcpy(mut, buf, len);
			mut[pos] = p < sizeof patterns ? patterns[p] : (uint8_t)(buf[pos] ^ 0x01);
			try_unpack(d, mut, len, "corrupt byte", pos);
		}
	}

	/* Trailers that make any buffer invalid. */
	static const struct {
		const char *what;
		uint8_t bytes[12];
		size_t len;
	} bad[] = {
		{ "dangling varint tag", { 0x80 }, 1 },
		{ "tag without value", { 0x08 }, 1 },
		{ "field number 0", { 0x00, 0x01 }, 2 },
		{ "wire type 6", { 0x0e, 0x01 }, 2 },
		{ "wire type 7", { 0x0f, 0x01 }, 2 },
		{ "length past end",
		  { 0xfa, 0xff, 0xff, 0xff, 0x0f, 0xff, 0xff, 0xff, 0x0f, 0x01 },
		  10 },
		{ "11-byte varint",
		  { 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01 },
		  12 },
		{ "fixed64 cut", { 0x09, 0x01, 0x02, 0x03 }, 4 },
		{ "fixed32 cut", { 0x0d, 0x01 }, 2 },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		memcpy(mut, buf, len);
		memcpy(mut + len, bad[i].bytes, bad[i].len);
		CHECK(!try_unpack(d, mut, len + bad[i].len, bad[i].what, len),
		      "%s: decoded with trailing %s", d->name, bad[i].what);
	}
	free(mut);

	/* Random garbage of assorted lengths. */
	uint8_t garbage[128];
	for (int round = 0; round < 64; round++) {
		size_t glen = (size_t)(rng_next() % sizeof garbage);
		for (size_t i = 0; i < glen; i++)
			garbage[i] = (uint8_t)rng_next();
		try_unpack(d, garbage, glen, "garbage", (size_t)round);
	}
}

/* Fails each allocation of a successful unpack in turn: the decoder must
 * return NULL and release whatever it had taken. */
static void test_alloc_failure(const ProtobufCMessageDescriptor *d, const uint8_t *buf, size_t len)
{
	struct count_alloc ca;
	ProtobufCAllocator alloc;
	ProtobufCMessage *m;
	long total;

	count_alloc_init(&ca, &alloc, -1);
	m = protobuf_c_message_unpack(d, &alloc, len, buf);
	CHECK(m != NULL, "%s: unpack failed", d->name);
	if (m == NULL)
		return;
	protobuf_c_message_free_unpacked(m, &alloc);
	total = ca.calls;
	for (long k = 0; k < total; k++) {
		count_alloc_init(&ca, &alloc, k);
		m = protobuf_c_message_unpack(d, &alloc, len, buf);
		CHECK(m == NULL, "%s: unpack succeeded with allocation %ld failing", d->name, k);
		if (m != NULL)
			protobuf_c_message_free_unpacked(m, &alloc);
		CHECK(ca.live == 0, "%s: allocation %ld failing leaked %ld", d->name, k, ca.live);
	}
}

/* ---- round trip ---------------------------------------------------------- */

static size_t total_bytes;
static unsigned total_depth_cuts;

static void test_empty(const ProtobufCMessageDescriptor *d)
{
	ProtobufCMessage *m = xmalloc(d->sizeof_message);
	ProtobufCMessage *u;

	d->message_init(m);
	CHECK(protobuf_c_message_get_packed_size(m) == 0,
	      "%s: a default message packs to %zu bytes", d->name,
	      protobuf_c_message_get_packed_size(m));
	u = protobuf_c_message_unpack(d, NULL, 0, (const uint8_t *)"");
	CHECK(u != NULL, "%s: empty buffer rejected", d->name);
	if (u != NULL) {
		CHECK(msg_equal(d, m, u, d->name), "%s: default differs", d->name);
		protobuf_c_message_free_unpacked(u, NULL);
	}
	free(m);
}

static void test_message(const ProtobufCMessageDescriptor *d)
{
	struct filler fl = { .n = 0, .depth_cuts = 0 };
	ProtobufCMessage *m, *u;
	uint8_t *buf, *buf2;
	size_t len, len2;
	struct count_alloc ca;
	ProtobufCAllocator alloc;

	test_empty(d);

	m = fill_message(d, &fl, 0);
	total_depth_cuts += fl.depth_cuts;
	CHECK(protobuf_c_message_check(m), "%s: filled message fails check", d->name);

	len = protobuf_c_message_get_packed_size(m);
	buf = xmalloc(len);
	CHECK(protobuf_c_message_pack(m, buf) == len, "%s: pack size", d->name);
	total_bytes += len;

	/* pack_to_buffer must write the same bytes. */
	{
		uint8_t initial[16];
		ProtobufCBufferSimple sb = PROTOBUF_C_BUFFER_SIMPLE_INIT(initial);
		size_t n = protobuf_c_message_pack_to_buffer(m, &sb.base);
		CHECK(n == len && sb.len == len && memcmp(sb.data, buf, len) == 0,
		      "%s: pack_to_buffer differs from pack", d->name);
		PROTOBUF_C_BUFFER_SIMPLE_CLEAR(&sb);
	}

	/* Every field was given a value that serializes: each field number
	 * (except the unset members of a oneof) appears at the top level. */
	{
		size_t *boundary = xmalloc((len + 1) * sizeof *boundary);
		uint32_t *tags = xmalloc((len + 1) * sizeof *tags);
		long nf = walk_fields(buf, len, boundary, tags, len + 1);

		for (unsigned i = 0; i < d->n_fields; i++) {
			const ProtobufCFieldDescriptor *f = &d->fields[i];
			bool seen = false;

			if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
			    *(uint32_t *)quantifier_ptr(m, f) != f->id)
				continue;
			for (long k = 0; k < nf && !seen; k++)
				seen = tags[k] == f->id;
			CHECK(seen, "%s.%s: not on the wire after filling", d->name, f->name);
		}
		free(boundary);
		free(tags);
	}

	count_alloc_init(&ca, &alloc, -1);
	u = protobuf_c_message_unpack(d, &alloc, len, buf);
	CHECK(u != NULL, "%s: unpack of its own packing failed", d->name);
	if (u != NULL) {
		CHECK(msg_equal(d, m, u, d->name), "%s: unpacked differs", d->name);
		len2 = protobuf_c_message_get_packed_size(u);
		buf2 = xmalloc(len2);
		CHECK(protobuf_c_message_pack(u, buf2) == len2 && len2 == len &&
		          memcmp(buf, buf2, len) == 0,
		      "%s: re-pack differs (%zu vs %zu bytes)", d->name, len2, len);
		free(buf2);
		protobuf_c_message_free_unpacked(u, &alloc);
	}
	CHECK(ca.live == 0, "%s: unpack leaked %ld allocations", d->name, ca.live);

	test_truncation(d, buf, len);
	test_corruption(d, buf, len);
	test_alloc_failure(d, buf, len);

	free(buf);
	protobuf_c_message_free_unpacked(m, NULL);
}

/* ---- contract conventions ------------------------------------------------ */

static bool is_keyword(const char *s)
{
	/* C and C++ keywords and common macros: generated headers are
	 * included from C, and must stay includable from C++. */
	static const char *const kw[] = {
		"alignas",  "alignof",  "and",      "asm",     "auto",      "bool",      "break",
		"case",     "catch",    "char",     "class",   "const",     "constexpr", "continue",
		"default",  "delete",   "do",       "double",  "else",      "enum",      "explicit",
		"export",   "extern",   "false",    "float",   "for",       "friend",    "goto",
		"if",       "inline",   "int",      "long",    "mutable",   "namespace", "new",
		"not",      "operator", "or",       "private", "protected", "public",    "register",
		"restrict", "return",   "short",    "signed",  "sizeof",    "static",    "struct",
		"switch",   "template", "this",     "throw",   "true",      "try",       "typedef",
		"typename", "union",    "unsigned", "using",   "virtual",   "void",      "volatile",
		"while",    "xor",      "errno",    "stdin",   "stdout",    "stderr",    "assert",
		"NULL",     "EOF",      "unix",     "linux",
	};
	for (size_t i = 0; i < sizeof kw / sizeof kw[0]; i++)
		if (strcmp(s, kw[i]) == 0)
			return true;
	return false;
}

/* lower_snake_case, no "_" before a digit or another "_", none at the end:
 * then the proto3 JSON name is unambiguous and reversible. */
static bool is_field_name(const char *s)
{
	if (!islower((unsigned char)s[0]))
		return false;
	for (const char *p = s; *p; p++) {
		if (*p == '_') {
			if (!islower((unsigned char)p[1]))
				return false;
		} else if (!islower((unsigned char)*p) && !isdigit((unsigned char)*p)) {
			return false;
		}
	}
	return true;
}

/* protoc's ToJsonName: drop each "_" and upper-case the letter after it. */
static void json_name(const char *s, char *out, size_t len)
{
	size_t o = 0;
	bool up = false;

	for (; *s && o + 1 < len; s++) {
		if (*s == '_') {
			up = true;
			continue;
		}
		out[o++] = up ? (char)toupper((unsigned char)*s) : *s;
		up = false;
	}
	out[o] = '\0';
}

/* "GpuHealthStatus" -> "GPU_HEALTH_STATUS" (buf's enum value prefix). */
static void upper_snake(const char *s, char *out, size_t len)
{
	size_t o = 0;

	for (size_t i = 0; s[i] && o + 2 < len; i++) {
		if (i > 0 && isupper((unsigned char)s[i]) &&
		    (islower((unsigned char)s[i - 1]) || isdigit((unsigned char)s[i - 1])))
			out[o++] = '_';
		out[o++] = (char)toupper((unsigned char)s[i]);
	}
	out[o] = '\0';
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t ls = strlen(s), lx = strlen(suffix);

	return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

static void test_registry(void)
{
	size_t maps = 0, methods = 0;

	printf("registry: %zu messages (%zu declared + %d map entries), "
	       "%zu enums, %zu services\n",
	       proto_message_count, (size_t)PROTO_DECLARED_MESSAGES, PROTO_DECLARED_MAP_FIELDS,
	       proto_enum_count, proto_service_count);

	CHECK(proto_message_count >= MIN_MESSAGES, "only %zu message descriptors",
	      proto_message_count);
	CHECK(proto_enum_count >= MIN_ENUMS, "only %zu enum descriptors", proto_enum_count);
	CHECK(proto_message_count == (size_t)(PROTO_DECLARED_MESSAGES + PROTO_DECLARED_MAP_FIELDS),
	      "registry has %zu messages, the .proto files declare %d + %d map "
	      "fields (a .proto missing from proto/gpumatch/v1/meson.build?)",
	      proto_message_count, PROTO_DECLARED_MESSAGES, PROTO_DECLARED_MAP_FIELDS);
	CHECK(proto_enum_count == (size_t)PROTO_DECLARED_ENUMS,
	      "registry has %zu enums, the .proto files declare %d", proto_enum_count,
	      PROTO_DECLARED_ENUMS);
	CHECK(proto_service_count == (size_t)PROTO_DECLARED_SERVICES,
	      "registry has %zu services, the .proto files declare %d", proto_service_count,
	      PROTO_DECLARED_SERVICES);

	for (size_t i = 0; i < proto_message_count; i++) {
		const ProtobufCMessageDescriptor *d = proto_messages[i];

		CHECK(d != NULL && d->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
		      "proto_messages[%zu] is not a message descriptor", i);
		CHECK(strcmp(d->package_name, "gpumatch.v1") == 0 &&
		          strncmp(d->name, "gpumatch.v1.", 12) == 0,
		      "%s: not in package gpumatch.v1", d->name);
		CHECK(proto_find_message(d->name) == d, "%s: lookup by name failed", d->name);
		if (proto_is_map_entry(d)) {
			/* The parent holds a repeated field of this type. */
			size_t plen = strlen(d->name) - strlen(d->short_name) - 1;
			char parent[256];
			const ProtobufCMessageDescriptor *pd;
			bool used = false;

			maps++;
			snprintf(parent, sizeof parent, "%.*s", (int)plen, d->name);
			pd = proto_find_message(parent);
			CHECK(pd != NULL, "%s: map entry without parent", d->name);
			for (unsigned k = 0; pd != NULL && k < pd->n_fields; k++)
				used |= pd->fields[k].descriptor == d &&
				        pd->fields[k].label == PROTOBUF_C_LABEL_REPEATED;
			CHECK(used, "%s: map entry not used by a repeated field of %s", d->name,
			      parent);
		} else {
			bool nested =
			    strlen(d->name) > strlen(d->package_name) + 1 + strlen(d->short_name);
			CHECK(!nested || !ends_with(d->short_name, "Entry"),
			      "%s: only map entries may be nested messages named "
			      "*Entry (the JSON mapping treats those as maps)",
			      d->name);
		}

		char seen_json[64][64];
		CHECK(d->n_fields <= 64, "%s: more than 64 fields", d->name);
		for (unsigned k = 0; k < d->n_fields && k < 64; k++) {
			const ProtobufCFieldDescriptor *f = &d->fields[k];

			CHECK(is_field_name(f->name),
			      "%s.%s: field names are lower_snake_case with no '_' "
			      "before a digit",
			      d->name, f->name);
			CHECK(!is_keyword(f->name), "%s.%s: a C/C++ keyword", d->name, f->name);
			json_name(f->name, seen_json[k], sizeof seen_json[k]);
			for (unsigned j = 0; j < k; j++)
				CHECK(strcmp(seen_json[j], seen_json[k]) != 0,
				      "%s: JSON name %s used twice", d->name, seen_json[k]);
			if (f->type == PROTOBUF_C_TYPE_MESSAGE)
				CHECK(registry_has_message(f->descriptor),
				      "%s.%s: its type is not in the registry", d->name, f->name);
			if (f->type == PROTOBUF_C_TYPE_ENUM)
				CHECK(registry_has_enum(f->descriptor),
				      "%s.%s: its enum is not in the registry", d->name, f->name);
		}
	}
	CHECK(maps == (size_t)PROTO_DECLARED_MAP_FIELDS,
	      "%zu map entries recognised, %d map fields declared", maps,
	      PROTO_DECLARED_MAP_FIELDS);

	for (size_t i = 0; i < proto_enum_count; i++) {
		const ProtobufCEnumDescriptor *e = proto_enums[i];
		char prefix[128], want[160];

		CHECK(e->magic == PROTOBUF_C__ENUM_DESCRIPTOR_MAGIC,
		      "proto_enums[%zu] is not an enum descriptor", i);
		CHECK(proto_find_enum(e->name) == e, "%s: lookup by name failed", e->name);
		upper_snake(e->short_name, prefix, sizeof prefix);
		snprintf(want, sizeof want, "%s_UNSPECIFIED", prefix);
		CHECK(e->n_values >= 2, "%s: needs a value besides UNSPECIFIED", e->name);
		CHECK(e->n_values > 0 && e->values[0].value == 0 &&
		          strcmp(e->values[0].name, want) == 0,
		      "%s: first value must be %s = 0", e->name, want);
		for (unsigned k = 0; k < e->n_values; k++) {
			CHECK(strncmp(e->values[k].name, prefix, strlen(prefix)) == 0 &&
			          e->values[k].name[strlen(prefix)] == '_',
			      "%s.%s: values are prefixed %s_", e->name, e->values[k].name, prefix);
			CHECK(k == 0 || e->values[k].value != e->values[k - 1].value,
			      "%s.%s: aliased value", e->name, e->values[k].name);
		}
	}

	/* Services: each RPC has its own <Method>Request / <Method>Response. */
	for (size_t i = 0; i < proto_service_count; i++) {
		const ProtobufCServiceDescriptor *s = proto_services[i];

		CHECK(s->magic == PROTOBUF_C__SERVICE_DESCRIPTOR_MAGIC,
		      "proto_services[%zu] is not a service descriptor", i);
		CHECK(proto_find_service(s->name) == s, "%s: lookup by name failed", s->name);
		for (unsigned k = 0; k < s->n_methods; k++) {
			const ProtobufCMethodDescriptor *md = &s->methods[k];
			char want_in[160], want_out[160];

			methods++;
			snprintf(want_in, sizeof want_in, "%sRequest", md->name);
			snprintf(want_out, sizeof want_out, "%sResponse", md->name);
			CHECK(strcmp(md->input->short_name, want_in) == 0,
			      "%s.%s: input is %s, want %s", s->name, md->name,
			      md->input->short_name, want_in);
			CHECK(strcmp(md->output->short_name, want_out) == 0,
			      "%s.%s: output is %s, want %s", s->name, md->name,
			      md->output->short_name, want_out);
			CHECK(registry_has_message(md->input) && registry_has_message(md->output),
			      "%s.%s: request/response not in the registry", s->name, md->name);
			CHECK(protobuf_c_service_descriptor_get_method_by_name(s, md->name) == md,
			      "%s.%s: lookup by name failed", s->name, md->name);
		}
	}
	CHECK(methods == (size_t)PROTO_DECLARED_METHODS,
	      "%zu methods in the registry, %d rpcs declared", methods, PROTO_DECLARED_METHODS);

	CHECK(proto_find_message("gpumatch.v1.NoSuchMessage") == NULL &&
	          proto_find_message(NULL) == NULL && proto_find_service(NULL) == NULL &&
	          proto_find_enum("gpumatch.v1.Job") == NULL,
	      "lookups of unknown names must return NULL");
}

/* The RPCs the design names. Adding RPCs is fine; losing one breaks users. */
static void test_required_rpcs(void)
{
	static const struct {
		const char *service;
		const char *methods[12];
	} want[] = {
		{ "gpumatch.v1.JobService",
		  { "SubmitJob", "GetJob", "ListJobs", "CancelJob", "ExplainJob" } },
		{ "gpumatch.v1.NodeService",
		  { "RegisterNode", "RequestChallenge", "SubmitProbe", "Heartbeat", "AcquireLease",
		    "ReportLease", "DrainNode" } },
		{ "gpumatch.v1.AdminService",
		  { "GetPolicy", "SetPolicy", "ListPolicies", "SimulatePolicy", "CreateTenant",
		    "ListTenants", "CreateToken", "RevokeToken", "GetUsageReport",
		    "GetRevenueReport", "AuditLedger", "PayoutOperator" } },
	};

	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
		const ProtobufCServiceDescriptor *s = proto_find_service(want[i].service);

		CHECK(s != NULL, "service %s missing", want[i].service);
		for (size_t k = 0; s != NULL && k < 12 && want[i].methods[k]; k++)
			CHECK(protobuf_c_service_descriptor_get_method_by_name(
			          s, want[i].methods[k]) != NULL,
			      "%s.%s missing", want[i].service, want[i].methods[k]);
	}
}

int main(void)
{
	test_registry();
	test_required_rpcs();
	for (size_t i = 0; i < proto_message_count; i++)
		test_message(proto_messages[i]);

	printf("round-tripped %zu message types (%zu bytes packed, %u sub-messages "
	       "cut at depth %d); %d checks, %d failures\n",
	       proto_message_count, total_bytes, total_depth_cuts, FILL_DEPTH_MAX, checks,
	       failures);
	return failures == 0 ? 0 : 1;
}
