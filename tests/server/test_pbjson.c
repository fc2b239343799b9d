/* test_pbjson.c — the proto3 JSON mapping (server/pbjson.c): every message of
 * the contract, filled generically, survives encode/decode bit for bit;
 * golden JSON both ways; every kind of bad input is rejected with its exact
 * field path; nothing leaks on any path (input cut at every byte, corrupted
 * bytes, failed jansson allocations). Runs under ASan and UBSan: a crash or
 * leak is a failure even where no CHECK fires.
 *
 * Types the contract does not use (sint/fixed, float fields, proto3
 * `optional`, oneof, int and bool map keys, a recursive message) are
 * covered by a descriptor written out by hand below. */
#include <float.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

#include "gpumatch/v1/registry.h"
#include "pbjson.h"

/* The contract has no recursive types; this bounds the hand-made one. */
#define FILL_DEPTH_MAX 8
#define FILL_REPEATED  2
/* Inputs up to this size are also decoded cut at every byte. */
#define TRUNCATE_MAX_BYTES 3000

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

/* ---- a hand-written descriptor for what the contract lacks -------------- */

typedef struct kitchen Kitchen;

typedef struct {
	ProtobufCMessage base;
	int32_t key;
	char *value;
} ByIntEntry;

typedef struct {
	ProtobufCMessage base;
	protobuf_c_boolean key;
	int64_t value;
} ByBoolEntry;

struct kitchen {
	ProtobufCMessage base;
	int32_t zig_zag32;
	int32_t fixed_s32;
	uint32_t fixed_u32;
	int64_t zig_zag64;
	int64_t fixed_s64;
	uint64_t fixed_u64;
	float ratio;
	protobuf_c_boolean has_opt_count;
	int32_t opt_count;
	uint32_t choice_case;
	union {
		char *choice_text;
		Kitchen *choice_kitchen;
	};
	Kitchen *child;
	size_t n_by_int;
	ByIntEntry **by_int;
	size_t n_by_bool;
	ByBoolEntry **by_bool;
	size_t n_floats;
	float *floats;
	char *opt_text;
};

static const ProtobufCMessageDescriptor kitchen_desc;
static const ProtobufCMessageDescriptor by_int_desc;
static const ProtobufCMessageDescriptor by_bool_desc;

static void kitchen_init(ProtobufCMessage *m)
{
	memset(m, 0, sizeof(Kitchen));
	m->descriptor = &kitchen_desc;
}

static void by_int_init(ProtobufCMessage *m)
{
	memset(m, 0, sizeof(ByIntEntry));
	m->descriptor = &by_int_desc;
	((ByIntEntry *)m)->value = (char *)protobuf_c_empty_string;
}

static void by_bool_init(ProtobufCMessage *m)
{
	memset(m, 0, sizeof(ByBoolEntry));
	m->descriptor = &by_bool_desc;
}

#define FIELD(nm, num, lab, typ, q, memb, desc, dflt, flg)                                    \
	{                                                                                     \
		.name = nm, .id = num, .label = PROTOBUF_C_LABEL_##lab,                       \
		.type = PROTOBUF_C_TYPE_##typ, .quantifier_offset = q,                        \
		.offset = offsetof(Kitchen, memb), .descriptor = desc, .default_value = dflt, \
		.flags = flg                                                                  \
	}

static const ProtobufCFieldDescriptor kitchen_fields[] = {
	FIELD("zig_zag32", 1, NONE, SINT32, 0, zig_zag32, NULL, NULL, 0),
	FIELD("fixed_s32", 2, NONE, SFIXED32, 0, fixed_s32, NULL, NULL, 0),
	FIELD("fixed_u32", 3, NONE, FIXED32, 0, fixed_u32, NULL, NULL, 0),
	FIELD("zig_zag64", 4, NONE, SINT64, 0, zig_zag64, NULL, NULL, 0),
	FIELD("fixed_s64", 5, NONE, SFIXED64, 0, fixed_s64, NULL, NULL, 0),
	FIELD("fixed_u64", 6, NONE, FIXED64, 0, fixed_u64, NULL, NULL, 0),
	FIELD("ratio", 7, NONE, FLOAT, 0, ratio, NULL, NULL, 0),
	FIELD("opt_count", 8, OPTIONAL, INT32, offsetof(Kitchen, has_opt_count), opt_count, NULL,
	      NULL, 0),
	FIELD("choice_text", 9, OPTIONAL, STRING, offsetof(Kitchen, choice_case), choice_text, NULL,
	      NULL, PROTOBUF_C_FIELD_FLAG_ONEOF),
	FIELD("choice_kitchen", 10, OPTIONAL, MESSAGE, offsetof(Kitchen, choice_case),
	      choice_kitchen, &kitchen_desc, NULL, PROTOBUF_C_FIELD_FLAG_ONEOF),
	FIELD("child", 11, NONE, MESSAGE, 0, child, &kitchen_desc, NULL, 0),
	FIELD("by_int", 12, REPEATED, MESSAGE, offsetof(Kitchen, n_by_int), by_int, &by_int_desc,
	      NULL, 0),
	FIELD("by_bool", 13, REPEATED, MESSAGE, offsetof(Kitchen, n_by_bool), by_bool,
	      &by_bool_desc, NULL, 0),
	FIELD("floats", 14, REPEATED, FLOAT, offsetof(Kitchen, n_floats), floats, NULL, NULL,
	      PROTOBUF_C_FIELD_FLAG_PACKED),
	FIELD("opt_text", 15, OPTIONAL, STRING, 0, opt_text, NULL, NULL, 0),
};
#define KITCHEN_FIELDS (sizeof kitchen_fields / sizeof kitchen_fields[0])

static const ProtobufCFieldDescriptor by_int_fields[] = {
	{ .name = "key",
	  .id = 1,
	  .label = PROTOBUF_C_LABEL_NONE,
	  .type = PROTOBUF_C_TYPE_INT32,
	  .offset = offsetof(ByIntEntry, key) },
	{ .name = "value",
	  .id = 2,
	  .label = PROTOBUF_C_LABEL_NONE,
	  .type = PROTOBUF_C_TYPE_STRING,
	  .offset = offsetof(ByIntEntry, value),
	  .default_value = &protobuf_c_empty_string },
};

static const ProtobufCFieldDescriptor by_bool_fields[] = {
	{ .name = "key",
	  .id = 1,
	  .label = PROTOBUF_C_LABEL_NONE,
	  .type = PROTOBUF_C_TYPE_BOOL,
	  .offset = offsetof(ByBoolEntry, key) },
	{ .name = "value",
	  .id = 2,
	  .label = PROTOBUF_C_LABEL_NONE,
	  .type = PROTOBUF_C_TYPE_INT64,
	  .offset = offsetof(ByBoolEntry, value) },
};

static unsigned kitchen_by_name[KITCHEN_FIELDS];
static const unsigned entry_by_name[] = { 0, 1 };
static const ProtobufCIntRange kitchen_ranges[] = { { 1, 0 }, { 0, KITCHEN_FIELDS } };
static const ProtobufCIntRange entry_ranges[] = { { 1, 0 }, { 0, 2 } };

static const ProtobufCMessageDescriptor kitchen_desc = {
	.magic = PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
	.name = "pbjson.test.Kitchen",
	.short_name = "Kitchen",
	.c_name = "Kitchen",
	.package_name = "pbjson.test",
	.sizeof_message = sizeof(Kitchen),
	.n_fields = KITCHEN_FIELDS,
	.fields = kitchen_fields,
	.fields_sorted_by_name = kitchen_by_name,
	.n_field_ranges = 1,
	.field_ranges = kitchen_ranges,
	.message_init = kitchen_init,
};

static const ProtobufCMessageDescriptor by_int_desc = {
	.magic = PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
	.name = "pbjson.test.Kitchen.ByIntEntry",
	.short_name = "ByIntEntry",
	.c_name = "ByIntEntry",
	.package_name = "pbjson.test",
	.sizeof_message = sizeof(ByIntEntry),
	.n_fields = 2,
	.fields = by_int_fields,
	.fields_sorted_by_name = entry_by_name,
	.n_field_ranges = 1,
	.field_ranges = entry_ranges,
	.message_init = by_int_init,
};

static const ProtobufCMessageDescriptor by_bool_desc = {
	.magic = PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
	.name = "pbjson.test.Kitchen.ByBoolEntry",
	.short_name = "ByBoolEntry",
	.c_name = "ByBoolEntry",
	.package_name = "pbjson.test",
	.sizeof_message = sizeof(ByBoolEntry),
	.n_fields = 2,
	.fields = by_bool_fields,
	.fields_sorted_by_name = entry_by_name,
	.n_field_ranges = 1,
	.field_ranges = entry_ranges,
	.message_init = by_bool_init,
};

static int cmp_kitchen_name(const void *a, const void *b)
{
	return strcmp(kitchen_fields[*(const unsigned *)a].name,
	              kitchen_fields[*(const unsigned *)b].name);
}

static void kitchen_setup(void)
{
	for (unsigned i = 0; i < KITCHEN_FIELDS; i++)
		kitchen_by_name[i] = i;
	qsort(kitchen_by_name, KITCHEN_FIELDS, sizeof kitchen_by_name[0], cmp_kitchen_name);
	CHECK(proto_is_map_entry(&by_int_desc) && proto_is_map_entry(&by_bool_desc) &&
	          !proto_is_map_entry(&kitchen_desc),
	      "hand-made map entries must look like protoc-c's");
}

/* Test-only lookup that also knows the hand-made descriptor. */
static const ProtobufCMessageDescriptor *find_type(const char *name)
{
	if (strcmp(name, kitchen_desc.name) == 0)
		return &kitchen_desc;
	return proto_find_message(name);
}

/* ---- generic filling (after tests/proto/test_proto_roundtrip.c) --------- */

static size_t elem_size(ProtobufCType t)
{
	switch (t) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_ENUM:
		return 4;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return 8;
	case PROTOBUF_C_TYPE_FLOAT:
		return sizeof(float);
	case PROTOBUF_C_TYPE_DOUBLE:
		return sizeof(double);
	case PROTOBUF_C_TYPE_BOOL:
		return sizeof(protobuf_c_boolean);
	case PROTOBUF_C_TYPE_STRING:
		return sizeof(char *);
	case PROTOBUF_C_TYPE_BYTES:
		return sizeof(ProtobufCBinaryData);
	case PROTOBUF_C_TYPE_MESSAGE:
		return sizeof(ProtobufCMessage *);
	}
	return 0;
}

static bool has_flag(const ProtobufCFieldDescriptor *f)
{
	return f->label == PROTOBUF_C_LABEL_OPTIONAL && !(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
	       f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE;
}

enum fill_mode {
	FILL_DISTINCT, /* every field, distinct ordinary values */
	FILL_EXTREME,  /* every field, limits of each type and awkward text */
	FILL_SPARSE,   /* every other field; the rest stay default */
	FILL_MODES
};

static const char *const mode_names[] = { "distinct", "extreme", "sparse" };

struct filler {
	uint64_t n;
	enum fill_mode mode;
};

static int pick_enum(const ProtobufCEnumDescriptor *ed, uint64_t n, enum fill_mode mode)
{
	unsigned nonzero = 0;

	if (mode == FILL_EXTREME) {
		/* proto3 enums are open: numbers without a name survive too. */
		if (n % 3 == 1)
			return 99999;
		if (n % 3 == 2)
			return -7;
		return ed->values[ed->n_values - 1].value;
	}
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

static void fill_extreme(const ProtobufCFieldDescriptor *f, void *dst, uint64_t n)
{
	bool odd = n % 2 == 1;

	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		*(int32_t *)dst = odd ? INT32_MAX : INT32_MIN;
		break;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		*(uint32_t *)dst = odd ? 1 : UINT32_MAX;
		break;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		*(int64_t *)dst = odd ? INT64_MAX : INT64_MIN;
		break;
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		*(uint64_t *)dst = odd ? UINT64_C(1) << 63 : UINT64_MAX;
		break;
	case PROTOBUF_C_TYPE_FLOAT: {
		static const float v[] = { FLT_MAX, -FLT_TRUE_MIN, 0.1f, -3.0e38f, 16777217.0f };
		*(float *)dst = v[n % 5];
		break;
	}
	case PROTOBUF_C_TYPE_DOUBLE: {
		static const double v[] = { DBL_MAX, -DBL_TRUE_MIN, 0.1, 1.0 / 3, -1e-300, 2e22 };
		*(double *)dst = v[n % 6];
		break;
	}
	case PROTOBUF_C_TYPE_BOOL:
		*(protobuf_c_boolean *)dst = 1;
		break;
	case PROTOBUF_C_TYPE_ENUM:
		break; /* by the caller */
	case PROTOBUF_C_TYPE_STRING: {
		/* Every escape JSON has, controls, DEL, U+2028, a 4-byte
		 * sequence; the number keeps map keys distinct. */
		char tmp[128];
		int len = snprintf(tmp, sizeof tmp,
		                   "q\"b\\s/\x01\x1f\n\t\r\b\f\x7f \xe2\x80\xa8 \xf0\x9f\x98\x80 "
		                   "\xc3\xa9-%" PRIu64,
		                   n);
		char *s = xmalloc((size_t)len + 1);
		memcpy(s, tmp, (size_t)len + 1);
		*(char **)dst = s;
		break;
	}
	case PROTOBUF_C_TYPE_BYTES: {
		/* 0..3 bytes: no, two, one padding character; 0xfb 0xff use
		 * the '+' and '/' digits. */
		ProtobufCBinaryData *b = dst;
		static const uint8_t v[] = { 0xfb, 0xff, 0x00 };
		b->len = n % 4;
		b->data = xmalloc(3);
		memcpy(b->data, v, 3);
		break;
	}
	case PROTOBUF_C_TYPE_MESSAGE:
		break;
	}
}

static bool fill_value(const ProtobufCFieldDescriptor *f, void *dst, struct filler *fl,
                       unsigned depth)
{
	uint64_t n = ++fl->n;

	if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
		if (depth + 1 >= FILL_DEPTH_MAX)
			return false;
		*(ProtobufCMessage **)dst = fill_message(f->descriptor, fl, depth + 1);
		return true;
	}
	if (f->type == PROTOBUF_C_TYPE_ENUM) {
		int v = pick_enum(f->descriptor, n, fl->mode);
		memcpy(dst, &v, sizeof v);
		return true;
	}
	if (fl->mode == FILL_EXTREME) {
		fill_extreme(f, dst, n);
		return true;
	}
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
		*(int32_t *)dst = -(int32_t)(1000 + n);
		break;
	case PROTOBUF_C_TYPE_SINT32:
		*(int32_t *)dst = -(int32_t)(70000 + n);
		break;
	case PROTOBUF_C_TYPE_SFIXED32:
		*(int32_t *)dst = -(int32_t)(123456 + n);
		break;
	case PROTOBUF_C_TYPE_UINT32:
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
	case PROTOBUF_C_TYPE_UINT64:
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
	case PROTOBUF_C_TYPE_STRING: {
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
		b->data[0] = 0x00;
		b->data[1] = 0xff;
		break;
	}
	default:
		break;
	}
	return true;
}

/* A message of type d, malloc'd as protobuf-c's unpack would lay it out;
 * free it with protobuf_c_message_free_unpacked(msg, NULL). */
static ProtobufCMessage *fill_message(const ProtobufCMessageDescriptor *d, struct filler *fl,
                                      unsigned depth)
{
	ProtobufCMessage *msg = xmalloc(d->sizeof_message);

	protobuf_c_message_init(d, msg);
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		char *base = (char *)msg;

		if (fl->mode == FILL_SPARSE && i % 2 == 1)
			continue;
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t es = elem_size(f->type), count = FILL_REPEATED;
			char *arr;

			if (f->type == PROTOBUF_C_TYPE_MESSAGE && depth + 1 >= FILL_DEPTH_MAX)
				continue;
			arr = xmalloc(es * count);
			for (size_t k = 0; k < count; k++)
				fill_value(f, arr + k * es, fl, depth);
			if (f->type == PROTOBUF_C_TYPE_MESSAGE &&
			    proto_is_map_entry(f->descriptor)) {
				/* Keys must differ, which true, true would not. */
				const ProtobufCMessageDescriptor *ed = f->descriptor;
				const ProtobufCFieldDescriptor *kf = &ed->fields[0];

				for (size_t k = 0; k < count && kf->type == PROTOBUF_C_TYPE_BOOL;
				     k++)
					*(protobuf_c_boolean *)((char *)((
					                            ProtobufCMessage **)arr)[k] +
					                        kf->offset) =
					    (protobuf_c_boolean)(k % 2);
			}
			*(size_t *)(base + f->quantifier_offset) = count;
			*(void **)(base + f->offset) = arr;
		} else if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
			uint32_t *oneof_case = (uint32_t *)(base + f->quantifier_offset);

			if (*oneof_case != 0)
				continue;
			if (fill_value(f, base + f->offset, fl, depth))
				*oneof_case = f->id;
		} else {
			bool set = fill_value(f, base + f->offset, fl, depth);

			if (set && has_flag(f))
				*(protobuf_c_boolean *)(base + f->quantifier_offset) = 1;
		}
	}
	return msg;
}

/* ---- helpers ------------------------------------------------------------ */

static uint8_t *pack(const ProtobufCMessage *m, size_t *len)
{
	*len = protobuf_c_message_get_packed_size(m);
	uint8_t *buf = xmalloc(*len);
	size_t n = protobuf_c_message_pack(m, buf);

	CHECK(n == *len, "%s: packed %zu bytes, sized %zu", m->descriptor->name, n, *len);
	return buf;
}

static void camel(const char *name, char *buf, size_t n)
{
	size_t k = 0;
	bool up = false;

	for (const char *p = name; *p != '\0' && k + 1 < n; p++) {
		if (*p == '_') {
			up = true;
			continue;
		}
		buf[k++] = up && *p >= 'a' && *p <= 'z' ? (char)(*p - 'a' + 'A') : *p;
		up = false;
	}
	buf[k] = '\0';
}

static bool starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Decodes json[0..len) and, when that works, encodes the result again:
 * whatever the input, nothing may crash or leak. Returns the decode result. */
static int decode_any(const ProtobufCMessageDescriptor *d, const char *json, size_t len)
{
	static ProtobufCMessage sentinel;
	ProtobufCMessage *m = &sentinel; /* must be overwritten */
	char err[256];
	int rc = pbjson_decode(d, json, len, &m, err, sizeof err);

	if (rc == 0) {
		char *again = pbjson_encode(m, NULL);

		CHECK(again != NULL, "%s: re-encode failed", d->name);
		free(again);
		protobuf_c_message_free_unpacked(m, NULL);
	} else {
		CHECK(rc == -1 && m == NULL && err[0] != '\0',
		      "%s: failure must give -1, NULL, a text", d->name);
		for (const unsigned char *p = (const unsigned char *)err; *p != '\0'; p++)
			CHECK(*p >= 0x20 && *p != 0x7f, "error text has a control byte: %s", err);
	}
	return rc;
}

/* Decodes every proper prefix of json. When json is one valid document
 * (must_fail), each of them is invalid JSON and must fail cleanly. */
static void truncate_all(const ProtobufCMessageDescriptor *d, const char *json, bool must_fail)
{
	size_t len = strlen(json);

	while (len > 0 && strchr(" \t\r\n", json[len - 1]) != NULL)
		len--;
	for (size_t k = 0; k < len; k++) {
		/* A copy exactly k bytes long, so ASan sees any overread. */
		char *cut = xmalloc(k ? k : 1);

		memcpy(cut, json, k);
		CHECK(decode_any(d, k ? cut : NULL, k) != 0 || !must_fail,
		      "%s: prefix of %zu bytes decoded: %.*s", d->name, k, (int)k, json);
		free(cut);
	}
}

/* Each byte replaced by a few troublesome ones: no crash, no leak. */
static void corrupt_all(const ProtobufCMessageDescriptor *d, const char *json)
{
	static const char subst[] = { '"', '}', ']', '1', '\\', ',', '\0', (char)0xff };
	size_t len = strlen(json);
	char *buf = xmalloc(len);

	for (size_t i = 0; i < len; i++)
		for (size_t s = 0; s < sizeof subst; s++) {
			memcpy(buf, json, len);
			buf[i] = subst[s];
			decode_any(d, buf, len);
		}
	free(buf);
}

/* ---- (1) every message round-trips -------------------------------------- */

static size_t total_json_bytes;

static void roundtrip(const ProtobufCMessageDescriptor *d, enum fill_mode mode)
{
	struct filler fl = { .n = 0, .mode = mode };
	ProtobufCMessage *m = fill_message(d, &fl, 0), *back = NULL, *back2 = NULL;
	size_t alen, blen, jlen = 0;
	uint8_t *a = pack(m, &alen), *b;
	char *json = pbjson_encode(m, &jlen), *json2, *renamed = NULL, err[256];
	json_t *parsed, *by_name;
	json_error_t je;
	const char *key;
	json_t *v;

	CHECK(json != NULL && jlen == strlen(json), "%s/%s: encode", d->name, mode_names[mode]);
	if (json == NULL)
		goto out;
	total_json_bytes += jlen;

	/* Valid JSON whose keys are the fields' lowerCamelCase names. */
	parsed = json_loadb(json, jlen, JSON_REJECT_DUPLICATES, &je);
	CHECK(parsed != NULL, "%s/%s: invalid JSON (%s): %s", d->name, mode_names[mode], je.text,
	      json);
	by_name = json_object();
	for (unsigned i = 0; parsed != NULL && i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		char cn[128];
		bool oneof = f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF;

		camel(f->name, cn, sizeof cn);
		v = json_object_get(parsed, cn);
		CHECK(v != NULL || mode != FILL_DISTINCT || oneof ||
		          f->type == PROTOBUF_C_TYPE_MESSAGE,
		      "%s/%s: field %s missing as \"%s\": %s", d->name, mode_names[mode], f->name,
		      cn, json);
		CHECK(v == NULL || mode != FILL_SPARSE || i % 2 == 0,
		      "%s/sparse: default field %s written", d->name, f->name);
		/* The same document spelled with proto field names. */
		if (v != NULL)
			json_object_set(by_name, f->name, v);
	}
	json_object_foreach(parsed, key, v)
	{
		CHECK(strchr(key, '_') == NULL, "%s/%s: key %s is not lowerCamelCase", d->name,
		      mode_names[mode], key);
	}

	CHECK(pbjson_decode(d, json, jlen, &back, err, sizeof err) == 0, "%s/%s: decode: %s\n%s",
	      d->name, mode_names[mode], err, json);
	if (back != NULL) {
		b = pack(back, &blen);
		CHECK(alen == blen && memcmp(a, b, alen) == 0,
		      "%s/%s: packed %zu bytes before JSON, %zu after\n%s", d->name,
		      mode_names[mode], alen, blen, json);
		free(b);
		json2 = pbjson_encode(back, NULL);
		CHECK(json2 != NULL && strcmp(json, json2) == 0,
		      "%s/%s: re-encoded differs:\n%s\n%s", d->name, mode_names[mode], json,
		      json2 ? json2 : "(null)");
		free(json2);
		protobuf_c_message_free_unpacked(back, NULL);
	}

	renamed = json_dumps(by_name, JSON_COMPACT);
	CHECK(renamed != NULL &&
	          pbjson_decode(d, renamed, strlen(renamed), &back2, err, sizeof err) == 0,
	      "%s/%s: decode with proto names: %s", d->name, mode_names[mode], err);
	if (back2 != NULL) {
		b = pack(back2, &blen);
		CHECK(alen == blen && memcmp(a, b, alen) == 0,
		      "%s/%s: proto-named JSON packs differently", d->name, mode_names[mode]);
		free(b);
		protobuf_c_message_free_unpacked(back2, NULL);
	}
	free(renamed);
	json_decref(by_name);
	json_decref(parsed);

	if (mode == FILL_EXTREME && jlen <= TRUNCATE_MAX_BYTES)
		truncate_all(d, json, true);
out:
	free(json);
	free(a);
	protobuf_c_message_free_unpacked(m, NULL);
}

static void test_roundtrip_all(void)
{
	for (size_t i = 0; i < proto_message_count; i++) {
		const ProtobufCMessageDescriptor *d = proto_messages[i];
		ProtobufCMessage *empty = xmalloc(d->sizeof_message), *back = NULL;
		char *json, err[256];

		for (int mode = 0; mode < FILL_MODES; mode++)
			roundtrip(d, (enum fill_mode)mode);

		/* Nothing set: "{}" both ways. */
		protobuf_c_message_init(d, empty);
		json = pbjson_encode(empty, NULL);
		CHECK(json != NULL && strcmp(json, "{}") == 0, "%s: empty message gave %s", d->name,
		      json ? json : "(null)");
		CHECK(pbjson_decode(d, "{}", 2, &back, err, sizeof err) == 0 && back != NULL &&
		          protobuf_c_message_get_packed_size(back) == 0,
		      "%s: {} did not decode to an empty message: %s", d->name, err);
		protobuf_c_message_free_unpacked(back, NULL);
		free(json);
		free(empty);
	}
	for (int mode = 0; mode < FILL_MODES; mode++)
		roundtrip(&kitchen_desc, (enum fill_mode)mode);
	printf("round trip: %zu message types x %d fillings + kitchen, %zu JSON bytes\n",
	       proto_message_count, FILL_MODES, total_json_bytes);
}

/* ---- (2) golden JSON ----------------------------------------------------- */

struct golden {
	const char *type;
	const char *in;   /* any accepted spelling */
	const char *want; /* what encoding the decoded message gives */
};

#define SPEC_WANT                                                                                 \
	"{\"kind\":\"JOB_KIND_TRAINING\",\"gpusPerNode\":8,\"nodeCount\":2,"                      \
	"\"minGpuMemoryMib\":81920,\"precision\":\"PRECISION_BF16\",\"minTflopsPerGpu\":400.5,"   \
	"\"requireNvlink\":true,\"allowedRegions\":[\"eu-west\",\"us-east\"],"                    \
	"\"labelSelector\":{\"gpu\":\"h100\",\"tier\":\"\"},"                                     \
	"\"tolerations\":[{\"key\":\"spot\",\"match\":\"TOLERATION_MATCH_EXISTS\","               \
	"\"effect\":\"TAINT_EFFECT_NO_SCHEDULE\"}],"                                              \
	"\"maxPricePerGpuHourMicros\":\"2500000\",\"maxDurationUs\":\"86400000000\","             \
	"\"priorityClass\":\"PRIORITY_CLASS_HIGH\",\"preemptible\":true,"                         \
	"\"image\":\"ghcr.io/acme/train:1\",\"command\":[\"python\",\"train.py\",\"--lr=3e-4\"]," \
	"\"env\":{\"A\":\"1\",\"PATH\":\"/bin\"}}"

static const struct golden goldens[] = {
	/* Canonical form in, the same out. */
	{ "gpumatch.v1.SubmitJobRequest",
	  "{\"idempotencyKey\":\"key-1\",\"name\":\"llama \xc3\xa9\",\"spec\":" SPEC_WANT "}",
	  "{\"idempotencyKey\":\"key-1\",\"name\":\"llama \xc3\xa9\",\"spec\":" SPEC_WANT "}" },
	/* Proto names, numbers for 64-bit, strings for 32-bit, enum numbers,
	 * nulls, escapes, whitespace. */
	{ "gpumatch.v1.SubmitJobRequest",
	  " {\n \"idempotency_key\" : \"key-1\",\t\"name\":\"llama \\u00e9\",\r\n"
	  "\"spec\":{\"kind\":1,\"gpus_per_node\":\"8\",\"nodeCount\":2.0,"
	  "\"min_gpu_memory_mib\":81920,\"precision\":\"PRECISION_BF16\","
	  "\"min_tflops_per_gpu\":\"400.5\",\"require_nvlink\":true,"
	  "\"allowed_regions\":[\"eu-west\",\"us-east\"],\"min_tflops_total\":null,"
	  "\"label_selector\":{\"gpu\":\"h100\",\"tier\":\"\"},"
	  "\"tolerations\":[{\"key\":\"spot\",\"match\":2,\"effect\":\"TAINT_EFFECT_NO_SCHEDULE\","
	  "\"value\":null}],"
	  "\"max_price_per_gpu_hour_micros\":2500000,\"maxDurationUs\":8.64e10,"
	  "\"priority_class\":\"PRIORITY_CLASS_HIGH\",\"preemptible\":true,"
	  "\"image\":\"ghcr.io\\/acme\\/"
	  "train:1\",\"command\":[\"python\",\"train.py\",\"--lr=3e-4\"],"
	  "\"env\":{\"A\":\"1\",\"PATH\":\"/bin\"},\"working_dir\":null}} \n",
	  "{\"idempotencyKey\":\"key-1\",\"name\":\"llama \xc3\xa9\",\"spec\":" SPEC_WANT "}" },
	/* Defaults, given or null, are omitted; a present sub-message stays. */
	{ "gpumatch.v1.SubmitJobRequest",
	  "{\"name\":\"\",\"spec\":{\"kind\":\"JOB_KIND_UNSPECIFIED\",\"gpusPerNode\":0,"
	  "\"requireNvlink\":false,\"allowedRegions\":[],\"labelSelector\":{},"
	  "\"maxDurationUs\":\"0\",\"minTflopsPerGpu\":-0.0,\"tolerations\":null}}",
	  "{\"spec\":{}}" },
	{ "gpumatch.v1.SubmitJobRequest", "{\"spec\":null,\"idempotencyKey\":null}", "{}" },
	{ "gpumatch.v1.SubmitJobRequest", "{}", "{}" },
	/* 64-bit limits, as numbers and strings; open enums; 32-bit strings. */
	{ "gpumatch.v1.JobFailure",
	  "{\"reason\":\"FAILURE_REASON_SIGNAL\",\"exitCode\":\"-2147483648\",\"termSignal\":9.0,"
	  "\"nodeId\":18446744073709551615}",
	  "{\"reason\":\"FAILURE_REASON_SIGNAL\",\"exitCode\":-2147483648,\"termSignal\":9,"
	  "\"nodeId\":\"18446744073709551615\"}" },
	{ "gpumatch.v1.JobFailure", "{\"reason\":42,\"exitCode\":2147483647,\"nodeId\":\"-0\"}",
	  "{\"reason\":42,\"exitCode\":2147483647}" },
	{ "gpumatch.v1.TimeWindow",
	  "{\"startUs\":-9223372036854775808,\"endUs\":\"9223372036854775807\"}",
	  "{\"startUs\":\"-9223372036854775808\",\"endUs\":\"9223372036854775807\"}" },
	{ "gpumatch.v1.TimeWindow", "{\"startUs\":1e3,\"endUs\":\"1E3\"}",
	  "{\"startUs\":\"1000\",\"endUs\":\"1000\"}" },
	{ "gpumatch.v1.GetJobRequest", "{\"jobId\":9223372036854775808}",
	  "{\"jobId\":\"9223372036854775808\"}" },
	/* Numbers beyond jansson's long long, next to strings that hold
	 * digits, escaped quotes and number-like text, which must not change. */
	{ "gpumatch.v1.HeartbeatRequest",
	  "{\"agentVersion\":\"v\\\"18446744073709551615\\\\\",\"runningLeaseIds\":"
	  "[18446744073709551615,1,9223372036854775808,\"18446744073709551614\",-0],"
	  "\"nodeId\":1.8446744073709550e19}",
	  "{\"nodeId\":\"18446744073709549568\",\"runningLeaseIds\":[\"18446744073709551615\","
	  "\"1\",\"9223372036854775808\",\"18446744073709551614\",\"0\"],"
	  "\"agentVersion\":\"v\\\"18446744073709551615\\\\\"}" },
	{ "gpumatch.v1.JobFailure",
	  "{\"message\":\"1e999 \\\" 99999999999999999999\",\"nodeId\":18446744073709551615,"
	  "\"exitCode\":-1e0}",
	  "{\"message\":\"1e999 \\\" 99999999999999999999\",\"exitCode\":-1,"
	  "\"nodeId\":\"18446744073709551615\"}" },
	/* Doubles: specials as strings, negative zero kept in a list. */
	{ "gpumatch.v1.GpuOpening",
	  "{\"gpuIndex\":1,\"freivaldsProduct\":[\"NaN\",\"Infinity\",\"-Infinity\",-0.0,0,1e308,"
	  "0.1,\"1.5\",2,-3e-5,123456789012345678]}",
	  "{\"gpuIndex\":1,\"freivaldsProduct\":[\"NaN\",\"Infinity\",\"-Infinity\",-0.0,0,1e+308,"
	  "0.1,1.5,2,-3e-05,1.2345678901234568e+17]}" },
	/* Floats: shortest text that reads back as the same float. */
	{ "gpumatch.v1.RowOpening",
	  "{\"row\":3,\"values\":[1,-2.5,0.1,3.4028235e38,1e-45,16777217,\"-Infinity\"],"
	  "\"path\":[\"AAEC\",\"/+8=\",\"_-8\",\"\",\"AA\",\"AAE\"]}",
	  "{\"row\":3,\"values\":[1,-2.5,0.1,3.4028235e+38,1.4013e-45,16777216,\"-Infinity\"],"
	  "\"path\":[\"AAEC\",\"/+8=\",\"/+8=\",\"\",\"AA==\",\"AAE=\"]}" },
	/* Bytes, uint64, enums in a challenge. */
	{ "gpumatch.v1.ProbeChallenge",
	  "{\"challengeId\":\"77\",\"seed\":\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\","
	  "\"precision\":\"PRECISION_FP8\",\"hashAlgorithm\":\"HASH_ALGORITHM_SHA256\","
	  "\"gpus\":[{\"gpuIndex\":0,\"gpuUuid\":\"GPU-1\"},{}]}",
	  "{\"challengeId\":\"77\",\"gpus\":[{\"gpuUuid\":\"GPU-1\"},{}],"
	  "\"seed\":\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\","
	  "\"precision\":\"PRECISION_FP8\",\"hashAlgorithm\":\"HASH_ALGORITHM_SHA256\"}" },
	/* String escapes: controls, quote, backslash, DEL and U+2028 raw,
	 * a surrogate pair. */
	{ "gpumatch.v1.CancelJobRequest",
	  "{\"jobId\":\"1\",\"reason\":\"a\\\"b\\\\c\\/d\\n\\t\\u0001\\u001f\\u007f\\u2028"
	  "\\ud83d\\ude00\\b\\f\\r\"}",
	  "{\"jobId\":\"1\",\"reason\":\"a\\\"b\\\\c/d\\n\\t\\u0001\\u001f\x7f\xe2\x80\xa8"
	  "\xf0\x9f\x98\x80\\b\\f\\r\"}" },
	/* Map keys that need escaping. */
	{ "gpumatch.v1.RegisterNodeRequest",
	  "{\"labels\":{\"a\\\"b\":\"1\",\"\":\"empty\",\"\\u00e9\":\"\"},\"region\":\"eu\"}",
	  "{\"region\":\"eu\",\"labels\":{\"a\\\"b\":\"1\",\"\":\"empty\",\"\xc3\xa9\":\"\"}}" },
	/* Repeated enums and nested repeated messages. */
	{ "gpumatch.v1.ListJobsRequest",
	  "{\"states\":[\"JOB_STATE_QUEUED\",2,\"JOB_STATE_FAILED\"],\"pageSize\":-1,"
	  "\"submitted\":{}}",
	  "{\"pageSize\":-1,\"states\":[\"JOB_STATE_QUEUED\",\"JOB_STATE_RUNNING\","
	  "\"JOB_STATE_FAILED\"],\"submitted\":{}}" },
	{ "gpumatch.v1.ListJobsResponse",
	  "{\"jobs\":[{},{\"id\":\"5\",\"spec\":{\"tolerations\":[{},{\"key\":\"k\"}]}}]}",
	  "{\"jobs\":[{},{\"id\":\"5\",\"spec\":{\"tolerations\":[{},{\"key\":\"k\"}]}}]}" },
	/* The hand-made message: sint/fixed, optional, oneof, int/bool keys. */
	{ "pbjson.test.Kitchen",
	  "{\"zigZag32\":-5,\"fixed_s32\":-2147483648,\"fixedU32\":4294967295,"
	  "\"zigZag64\":\"-1\",\"fixedS64\":-9223372036854775808,"
	  "\"fixedU64\":18446744073709551615,\"ratio\":\"Infinity\",\"optCount\":0,"
	  "\"choiceText\":\"\",\"byInt\":{\"-1\":\"neg\",\"2147483647\":\"max\",\"0\":\"\"},"
	  "\"byBool\":{\"true\":\"1\",\"false\":-2},\"floats\":[0.5],\"optText\":\"\"}",
	  "{\"zigZag32\":-5,\"fixedS32\":-2147483648,\"fixedU32\":4294967295,"
	  "\"zigZag64\":\"-1\",\"fixedS64\":\"-9223372036854775808\","
	  "\"fixedU64\":\"18446744073709551615\",\"ratio\":\"Infinity\",\"optCount\":0,"
	  "\"choiceText\":\"\",\"byInt\":{\"-1\":\"neg\",\"2147483647\":\"max\",\"0\":\"\"},"
	  "\"byBool\":{\"true\":\"1\",\"false\":\"-2\"},\"floats\":[0.5],\"optText\":\"\"}" },
	{ "pbjson.test.Kitchen",
	  "{\"choiceKitchen\":{\"child\":{\"ratio\":1}},\"choice_text\":null,\"ratio\":\"NaN\"}",
	  "{\"ratio\":\"NaN\",\"choiceKitchen\":{\"child\":{\"ratio\":1}}}" },
};

static void test_goldens(void)
{
	for (size_t i = 0; i < sizeof goldens / sizeof goldens[0]; i++) {
		const struct golden *g = &goldens[i];
		const ProtobufCMessageDescriptor *d = find_type(g->type);
		const char *inputs[2] = { g->in, g->want };

		CHECK(d != NULL, "golden %zu: no type %s", i, g->type);
		if (d == NULL)
			continue;
		for (int k = 0; k < 2; k++) {
			ProtobufCMessage *m = NULL;
			char err[256], *json;
			size_t len = 0;

			err[0] = '\0';
			CHECK(pbjson_decode(d, inputs[k], strlen(inputs[k]), &m, err, sizeof err) ==
			          0,
			      "golden %zu (%s) %s: decode failed: %s", i, g->type,
			      k ? "want" : "in", err);
			if (m == NULL)
				continue;
			json = pbjson_encode(m, &len);
			CHECK(json != NULL && strcmp(json, g->want) == 0 && len == strlen(json),
			      "golden %zu (%s) from %s:\n  got  %s\n  want %s", i, g->type,
			      k ? "want" : "in", json ? json : "(null)", g->want);
			free(json);
			protobuf_c_message_free_unpacked(m, NULL);
			truncate_all(d, inputs[k], true);
			corrupt_all(d, inputs[k]);
		}
	}
	printf("golden: %zu rows\n", sizeof goldens / sizeof goldens[0]);
}

/* ---- (3) bad input ------------------------------------------------------- */

struct bad {
	const char *type;
	const char *in;
	const char *want; /* the error, or its beginning when it ends in '*'; NULL: valid */
};

#define SJR "gpumatch.v1.SubmitJobRequest"
#define KIT "pbjson.test.Kitchen"

static const struct bad bads[] = {
	/* Wrong JSON types, with the field path. */
	{ SJR, "{\"spec\":{\"gpusPerNode\":\"x\"}}",
	  "spec.gpusPerNode: expected an integer, got \"x\"" },
	{ SJR, "{\"spec\":{\"gpus_per_node\":1.5}}",
	  "spec.gpus_per_node: expected an integer, got 1.5" },
	{ SJR, "{\"spec\":{\"gpusPerNode\":true}}",
	  "spec.gpusPerNode: expected an integer, got true" },
	{ SJR, "{\"spec\":{\"gpusPerNode\":[1]}}",
	  "spec.gpusPerNode: expected an integer, got an array" },
	{ SJR, "{\"spec\":{\"gpusPerNode\":{}}}",
	  "spec.gpusPerNode: expected an integer, got an object" },
	{ SJR, "{\"spec\":{\"allowedRegions\":[\"a\",\"b\",3]}}",
	  "spec.allowedRegions[2]: expected a string, got 3" },
	{ SJR, "{\"spec\":{\"allowedRegions\":[null]}}",
	  "spec.allowedRegions[0]: expected a string, got null" },
	{ SJR, "{\"spec\":{\"allowedRegions\":\"eu\"}}",
	  "spec.allowedRegions: expected an array, got \"eu\"" },
	{ SJR, "{\"spec\":{\"labelSelector\":{\"k\":1}}}",
	  "spec.labelSelector[\"k\"]: expected a string, got 1" },
	{ SJR, "{\"spec\":{\"labelSelector\":{\"k\":null}}}",
	  "spec.labelSelector[\"k\"]: expected a string, got null" },
	{ SJR, "{\"spec\":{\"labelSelector\":[\"k\"]}}",
	  "spec.labelSelector: expected an object, got an array" },
	{ SJR, "{\"spec\":{\"tolerations\":[{},{\"effect\":\"NOPE\"}]}}",
	  "spec.tolerations[1].effect: unknown value \"NOPE\" for enum gpumatch.v1.TaintEffect "
	  "(expected one of TAINT_EFFECT_UNSPECIFIED, TAINT_EFFECT_NO_SCHEDULE, "
	  "TAINT_EFFECT_PREFER_NO_SCHEDULE, TAINT_EFFECT_NO_EXECUTE)" },
	{ SJR, "{\"spec\":{\"tolerations\":{}}}",
	  "spec.tolerations: expected an array, got an object" },
	{ SJR, "{\"spec\":[]}", "spec: expected an object, got an array" },
	{ SJR, "{\"spec\":\"x\"}", "spec: expected an object, got \"x\"" },
	{ SJR, "{\"name\":5}", "name: expected a string, got 5" },
	{ SJR, "{\"name\":false}", "name: expected a string, got false" },
	{ SJR, "{\"name\":18446744073709551616}",
	  "name: expected a string, got 18446744073709551616" },
	{ SJR, "{\"name\":\"a\\u0000b\"}", "name: strings cannot contain \\u0000" },
	{ SJR, "{\"spec\":{\"requireNvlink\":\"true\"}}",
	  "spec.requireNvlink: expected true or false, got \"true\"" },
	{ SJR, "{\"spec\":{\"requireNvlink\":1}}",
	  "spec.requireNvlink: expected true or false, got 1" },
	{ SJR,
	  "{\"spec\":{\"gpusPerNode\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}}",
	  "spec.gpusPerNode: expected an integer, got "
	  "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\"" },
	/* Integers: range, fractions, text forms. */
	{ SJR, "{\"spec\":{\"gpusPerNode\":4294967296}}",
	  "spec.gpusPerNode: 4294967296 is out of range for uint32" },
	{ SJR, "{\"spec\":{\"gpusPerNode\":-1}}",
	  "spec.gpusPerNode: -1 is out of range for uint32" },
	{ SJR, "{\"spec\":{\"gpusPerNode\":\"-1\"}}",
	  "spec.gpusPerNode: \"-1\" is out of range for uint32" },
	{ SJR, "{\"spec\":{\"maxDurationUs\":\"1.5\"}}",
	  "spec.maxDurationUs: expected an integer, got \"1.5\"" },
	{ SJR, "{\"spec\":{\"maxDurationUs\":\"9223372036854775808\"}}",
	  "spec.maxDurationUs: \"9223372036854775808\" is out of range for int64" },
	{ SJR, "{\"spec\":{\"maxDurationUs\":9223372036854775808}}",
	  "spec.maxDurationUs: 9223372036854775808 is out of range for int64" },
	{ SJR, "{\"spec\":{\"maxDurationUs\":-9223372036854775809}}",
	  "spec.maxDurationUs: -9223372036854775809 is out of range for int64" },
	{ SJR, "{\"spec\":{\"maxDurationUs\":\"99999999999999999999999\"}}",
	  "spec.maxDurationUs: \"99999999999999999999999\" is out of range for int64" },
	{ SJR,
	  "{\"spec\":{\"maxDurationUs\":-"
	  "1000000000000000000000000000000000000000000000000000000000000000000000}}",
	  "spec.maxDurationUs: -100000000000000000000000000000000000000... is out of range for "
	  "int64" },
	{ SJR, "{\"spec\":{\"maxDurationUs\":1e19}}",
	  "spec.maxDurationUs: 1e+19 is out of range for int64" },
	{ SJR, "{\"spec\":{\"maxDurationUs\":1e999}}",
	  "spec.maxDurationUs: 1e999 is out of range for int64" },
	{ SJR, "{\"spec\":{\"maxDurationUs\":\" 1\"}}",
	  "spec.maxDurationUs: expected an integer, got \" 1\"" },
	{ SJR, "{\"spec\":{\"maxDurationUs\":\"+1\"}}",
	  "spec.maxDurationUs: expected an integer, got \"+1\"" },
	{ SJR, "{\"spec\":{\"maxDurationUs\":\"0x10\"}}",
	  "spec.maxDurationUs: expected an integer, got \"0x10\"" },
	{ SJR, "{\"spec\":{\"maxDurationUs\":\"01\"}}",
	  "spec.maxDurationUs: expected an integer, got \"01\"" },
	{ SJR, "{\"spec\":{\"maxDurationUs\":\"\"}}",
	  "spec.maxDurationUs: expected an integer, got \"\"" },
	{ SJR, "{\"spec\":{\"maxDurationUs\":\"1\\u00002\"}}",
	  "spec.maxDurationUs: expected an integer, got \"1\\u00002\"" },
	{ "gpumatch.v1.GetJobRequest", "{\"jobId\":\"18446744073709551616\"}",
	  "jobId: \"18446744073709551616\" is out of range for uint64" },
	{ "gpumatch.v1.GetJobRequest", "{\"jobId\":-1}", "jobId: -1 is out of range for uint64" },
	{ "gpumatch.v1.ListJobsRequest", "{\"pageSize\":2147483648}",
	  "pageSize: 2147483648 is out of range for int32" },
	{ "gpumatch.v1.ListJobsRequest", "{\"pageSize\":-2147483649}",
	  "pageSize: -2147483649 is out of range for int32" },
	/* Floating point. */
	{ SJR, "{\"spec\":{\"minTflopsPerGpu\":\"fast\"}}",
	  "spec.minTflopsPerGpu: expected a number, got \"fast\"" },
	{ SJR, "{\"spec\":{\"minTflopsPerGpu\":\"nan\"}}",
	  "spec.minTflopsPerGpu: expected a number, got \"nan\"" },
	{ SJR, "{\"spec\":{\"minTflopsPerGpu\":\"inf\"}}",
	  "spec.minTflopsPerGpu: expected a number, got \"inf\"" },
	{ SJR, "{\"spec\":{\"minTflopsPerGpu\":1e999}}",
	  "spec.minTflopsPerGpu: 1e999 is out of range for double" },
	{ SJR, "{\"spec\":{\"minTflopsPerGpu\":\"-1e400\"}}",
	  "spec.minTflopsPerGpu: \"-1e400\" is out of range for double" },
	{ SJR, "{\"spec\":{\"minTflopsPerGpu\":\"1\\u00002\"}}",
	  "spec.minTflopsPerGpu: expected a number, got \"1\\u00002\"" },
	{ SJR, "{\"spec\":{\"minTflopsPerGpu\":[]}}",
	  "spec.minTflopsPerGpu: expected a number, got an array" },
	{ KIT, "{\"ratio\":1e39}", "ratio: 1e+39 is out of range for float" },
	{ KIT, "{\"floats\":[1,\"-3.5e38\"]}", "floats[1]: \"-3.5e38\" is out of range for float" },
	/* Enums. */
	{ SJR, "{\"spec\":{\"kind\":\"JOB_KIND_BOGUS\"}}",
	  "spec.kind: unknown value \"JOB_KIND_BOGUS\" for enum gpumatch.v1.JobKind (expected "
	  "one of JOB_KIND_UNSPECIFIED, JOB_KIND_TRAINING, JOB_KIND_INFERENCE, JOB_KIND_BATCH)" },
	{ SJR, "{\"spec\":{\"kind\":\"job_kind_training\"}}",
	  "spec.kind: unknown value \"job_kind_training\" for enum gpumatch.v1.JobKind*" },
	{ SJR, "{\"spec\":{\"kind\":\"1\"}}", "spec.kind: unknown value \"1\" for enum*" },
	{ SJR, "{\"spec\":{\"kind\":true}}",
	  "spec.kind: expected an enum value name or number, got true" },
	{ SJR, "{\"spec\":{\"kind\":1.5}}",
	  "spec.kind: expected an enum value name or number, got 1.5" },
	{ SJR, "{\"spec\":{\"kind\":2147483648}}",
	  "spec.kind: 2147483648 is out of range for an enum number" },
	{ "gpumatch.v1.ListJobsRequest", "{\"states\":[\"JOB_STATE_QUEUED\",\"NOPE\"]}",
	  "states[1]: unknown value \"NOPE\" for enum gpumatch.v1.JobState*" },
	/* Bytes. */
	{ "gpumatch.v1.ProbeChallenge", "{\"seed\":\"a\"}", "seed: invalid base64 \"a\"" },
	{ "gpumatch.v1.ProbeChallenge", "{\"seed\":\"ab=c\"}", "seed: invalid base64 \"ab=c\"" },
	{ "gpumatch.v1.ProbeChallenge", "{\"seed\":\"abc==\"}", "seed: invalid base64 \"abc==\"" },
	{ "gpumatch.v1.ProbeChallenge", "{\"seed\":\"ab\"}", NULL }, /* valid, unpadded */
	{ "gpumatch.v1.ProbeChallenge", "{\"seed\":\"ab c\"}", "seed: invalid base64 \"ab c\"" },
	{ "gpumatch.v1.ProbeChallenge", "{\"seed\":\"=\"}", "seed: invalid base64 \"=\"" },
	{ "gpumatch.v1.ProbeChallenge", "{\"seed\":5}", "seed: expected a base64 string, got 5" },
	{ "gpumatch.v1.RowOpening", "{\"path\":[\"AA==\",\"*\"]}",
	  "path[1]: invalid base64 \"*\"" },
	/* Field names. */
	{ SJR, "{\"foo\":1}", "unknown field \"foo\"" },
	{ SJR, "{\"spec\":{\"gpusPerNode\":1,\"foo_bar\":2}}", "spec: unknown field \"foo_bar\"" },
	{ SJR, "{\"IdempotencyKey\":\"k\"}", "unknown field \"IdempotencyKey\"" },
	{ SJR, "{\"idempotencykey\":\"k\"}", "unknown field \"idempotencykey\"" },
	{ SJR, "{\"a\\\"\\n\":1}", "unknown field \"a\\\"\\u000a\"" },
	{ SJR, "{\"spec\":{\"gpusPerNode\":1,\"gpus_per_node\":2}}",
	  "spec.gpusPerNode: field given twice (also as \"gpus_per_node\")" },
	{ SJR, "{\"spec\":{\"gpus_per_node\":1,\"gpusPerNode\":null}}",
	  "spec.gpusPerNode: field given twice (also as \"gpus_per_node\")" },
	{ KIT, "{\"choiceText\":\"a\",\"choiceKitchen\":{}}",
	  "choiceKitchen: only one field of a oneof may be set (also set: choice_text)" },
	{ KIT, "{\"byInt\":{\"x\":\"a\"}}", "byInt[\"x\"]: map key is not a valid int32" },
	{ KIT, "{\"byInt\":{\"2147483648\":\"a\"}}",
	  "byInt[\"2147483648\"]: map key is not a valid int32" },
	{ KIT, "{\"byBool\":{\"yes\":\"1\"}}",
	  "byBool[\"yes\"]: map key must be \"true\" or \"false\"" },
	{ KIT, "{\"byBool\":{\"true\":\"x\"}}",
	  "byBool[\"true\"]: expected an integer, got \"x\"" },
	{ KIT, "{\"zigZag32\":-2147483649}", "zigZag32: -2147483649 is out of range for sint32" },
	{ KIT, "{\"fixedU32\":-1}", "fixedU32: -1 is out of range for fixed32" },
	{ KIT, "{\"choiceKitchen\":{\"child\":{\"optCount\":\"z\"}}}",
	  "choiceKitchen.child.optCount: expected an integer, got \"z\"" },
	/* Not JSON, or not an object. */
	{ SJR, "", "empty body: expected a JSON object" },
	{ SJR, " \r\n\t", "empty body: expected a JSON object" },
	{ SJR, "[]", "expected a JSON object, got an array" },
	{ SJR, "null", "invalid JSON at line 1, column 4: '[' or '{' expected near 'null'" },
	{ SJR, "\"x\"", "invalid JSON at line 1, column 3: '[' or '{' expected near '\"x\"'" },
	{ SJR, "{\"name\":\"a\"} x",
	  "invalid JSON at line 1, column 14: end of file expected near 'x'" },
	{ SJR, "{\"name\":\"a\"}{}", "invalid JSON at line 1, column 13: end of file expected*" },
	{ SJR, "{\"name\":\"a\"",
	  "invalid JSON at line 1, column 11: '}' expected near end of file" },
	/* A key given twice names the field, or the map and its key. */
	{ SJR, "{\"name\":\"a\",\n\"name\":\"b\"}", "name: field given twice" },
	{ SJR, "{\"spec\":{\"command\":[\"a\",\"}\"],\"image\":\"x\",\"command\":[]}}",
	  "spec.command: field given twice" },
	{ SJR, "{\"spec\":{\"env\":{\"A\":\"1\",\"B\":\"{\",\"A\":\"2\"}}}",
	  "spec.env: key \"A\" given twice" },
	{ SJR, "{\"spec\":{\"env\":{\"\\u0041\":\"1\",\"A\":\"2\"}}}",
	  "spec.env: key \"A\" given twice" },
	{ SJR, "{\"spec\":{\"noSuch\":{\"x\":1,\"x\":2}}}", "spec.noSuch.x: key given twice" },
	{ "gpumatch.v1.RegisterNodeRequest",
	  "{\"gpus\":[{\"uuid\":\"a\"},{\"uuid\":\"b\",\"index\":1,\"uuid\":\"c\"}]}",
	  "gpus[1].uuid: field given twice" },
	{ "gpumatch.v1.RegisterNodeRequest", "{\"labels\":{\"k\":\"v\",\"k\":\"w\"}}",
	  "labels: key \"k\" given twice" },
	{ KIT, "{\"byInt\":{\"1\":\"a\",\"1\":\"b\"}}", "byInt: key \"1\" given twice" },
	{ KIT, "{\"child\":{\"child\":{\"byBool\":{\"true\":1,\"true\":2}}}}",
	  "child.child.byBool: key \"true\" given twice" },
	{ SJR, "{\"name\":'a'}", "invalid JSON at line 1, column 9: invalid token near '''" },
	{ SJR, "{\"name\":\"\xff\"}",
	  "invalid JSON at line 1, column 9: unable to decode byte 0xff*" },
	{ SJR, "{\"name\":\"\x01\"}", "invalid JSON at line 1, column 9: control character 0x1*" },
	{ SJR, "{\"name\":\"\\ud800\"}", "invalid JSON at line 1, column 16: invalid Unicode*" },
	{ SJR, "{99999999999999999999:1}",
	  "invalid JSON at line 1, column 21: too big integer near '99999999999999999999'" },
	{ SJR, "{\"spec\":{\"maxDurationUs\":99999999999999999999,}}",
	  "invalid JSON at line 1, column 45: too big integer*" },
};

static void test_bads(void)
{
	size_t n = sizeof bads / sizeof bads[0];

	for (size_t i = 0; i < n; i++) {
		const struct bad *b = &bads[i];
		const ProtobufCMessageDescriptor *d = find_type(b->type);
		ProtobufCMessage *m = NULL;
		char err[512];
		size_t len = strlen(b->in);
		int rc;

		CHECK(d != NULL, "bad %zu: no type %s", i, b->type);
		if (d == NULL)
			continue;
		memset(err, 'x', sizeof err);
		rc = pbjson_decode(d, b->in, len, &m, err, sizeof err);
		if (b->want == NULL) {
			CHECK(rc == 0 && m != NULL, "bad %zu: %s must decode: %s", i, b->in, err);
		} else {
			size_t wl = strlen(b->want);
			bool prefix = wl > 0 && b->want[wl - 1] == '*';
			bool match =
			    prefix ? strncmp(err, b->want, wl - 1) == 0 : strcmp(err, b->want) == 0;

			CHECK(rc == -1 && m == NULL, "bad %zu: %s decoded", i, b->in);
			CHECK(match, "bad %zu (%s): %s\n  got  %s\n  want %s", i, b->type, b->in,
			      err, b->want);
		}
		protobuf_c_message_free_unpacked(m, NULL);
		truncate_all(d, b->in, false);
	}
	printf("bad input: %zu rows\n", n);
}

/* Error text: a short buffer cuts it, and no buffer is allowed. */
static void test_err_buffer(void)
{
	const ProtobufCMessageDescriptor *d = proto_find_message(SJR);
	const char *in = "{\"spec\":{\"gpusPerNode\":\"x\"}}";
	ProtobufCMessage *m = NULL;
	char err[8];

	CHECK(pbjson_decode(d, in, strlen(in), &m, err, sizeof err) == -1 &&
	          strcmp(err, "spec.gp") == 0,
	      "a short error buffer holds the cut text, got %s", err);
	CHECK(pbjson_decode(d, in, strlen(in), &m, NULL, 0) == -1 && m == NULL,
	      "decode without an error buffer");
	CHECK(pbjson_decode(NULL, "{}", 2, &m, err, sizeof err) == -1, "NULL descriptor");
	CHECK(pbjson_encode(NULL, NULL) == NULL, "encode(NULL)");
	/* A raw NUL byte inside the body is not the end of it. */
	CHECK(pbjson_decode(d, "{\"name\":\"a\"\0}", 13, &m, err, sizeof err) == -1,
	      "a raw NUL byte must be rejected");
}

/* protobuf-c does not check that strings are UTF-8; the JSON must still be
 * valid, so each stray byte becomes U+FFFD. */
static void test_encode_bad_utf8(void)
{
	const ProtobufCMessageDescriptor *d = proto_find_message("gpumatch.v1.CancelJobRequest");
	const ProtobufCFieldDescriptor *f =
	    protobuf_c_message_descriptor_get_field_by_name(d, "reason");
	ProtobufCMessage *m = xmalloc(d->sizeof_message);
	char *json;

	protobuf_c_message_init(d, m);
	*(const char **)((char *)m + f->offset) = "a\xff"
	                                          "b\xed\xa0\x80"
	                                          "c\xc3";
	json = pbjson_encode(m, NULL);
	CHECK(json != NULL &&
	          strcmp(json, "{\"reason\":\"a\\ufffdb\\ufffd\\ufffd\\ufffdc\\ufffd\"}") == 0,
	      "bad UTF-8 encoded as %s", json ? json : "(null)");
	free(json);
	free(m);
}

/* Nesting: a recursive type is cut at the limit, with its path. */
static void test_depth(void)
{
	for (int levels = 63; levels <= 66; levels++) {
		size_t cap = (size_t)levels * 12 + 16, k = 0;
		char *json = xmalloc(cap), err[512];
		ProtobufCMessage *m = NULL;
		int rc;

		for (int i = 0; i < levels - 1; i++)
			k += (size_t)snprintf(json + k, cap - k, "{\"child\":");
		k += (size_t)snprintf(json + k, cap - k, "{\"ratio\":1}");
		for (int i = 0; i < levels - 1; i++)
			json[k++] = '}';
		json[k] = '\0';
		rc = pbjson_decode(&kitchen_desc, json, k, &m, err, sizeof err);
		if (levels <= 64) {
			CHECK(rc == 0, "%d levels must decode: %s", levels, err);
		} else {
			CHECK(rc == -1 && strstr(err, ": messages nested deeper than 64 levels") &&
			          starts_with(err, "child.child.child."),
			      "%d levels: %s", levels, err);
		}
		protobuf_c_message_free_unpacked(m, NULL);
		free(json);
	}
}

/* ---- (4) jansson allocation failures ------------------------------------ */

static long alloc_calls, alloc_fail_at = -1;

static void *failing_malloc(size_t n)
{
	if (alloc_calls++ == alloc_fail_at)
		return NULL;
	return malloc(n);
}

/* Fail jansson's Nth allocation, N = 0, 1, ... until the decode succeeds. */
static void test_jansson_oom(void)
{
	const char *inputs[] = {
		goldens[1].in,
		"{\"spec\":{\"maxDurationUs\":9223372036854775807,\"gpusPerNode\":"
		"18446744073709551615}}",
		"{\"jobId\":18446744073709551615}",
	};
	const char *types[] = { SJR, SJR, "gpumatch.v1.GetJobRequest" };
	long runs = 0;

	json_set_alloc_funcs(failing_malloc, free);
	for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
		const ProtobufCMessageDescriptor *d = proto_find_message(types[i]);

		ProtobufCMessage *m = NULL;
		char err[256], want_err[256], *want = NULL;

		/* The verdict with no failure: a message (as JSON) or an error. */
		alloc_fail_at = -1;
		if (pbjson_decode(d, inputs[i], strlen(inputs[i]), &m, want_err, sizeof want_err) ==
		    0) {
			want = pbjson_encode(m, NULL);
			protobuf_c_message_free_unpacked(m, NULL);
		}
		for (alloc_fail_at = 0;; alloc_fail_at++) {
			char *got = NULL;
			int rc;

			alloc_calls = 0;
			m = NULL;
			rc = pbjson_decode(d, inputs[i], strlen(inputs[i]), &m, err, sizeof err);
			runs++;
			if (rc == 0)
				got = pbjson_encode(m, NULL);
			protobuf_c_message_free_unpacked(m, NULL);
			/* jansson does not always notice its own failed allocations
			 * (it may report a syntax error, or drop a byte of a key), so
			 * this only asks for a clean result either way. */
			if (rc == 0)
				CHECK(got != NULL, "oom %zu at %ld: decoded but not encodable", i,
				      alloc_fail_at);
			else
				CHECK(rc == -1 && m == NULL && err[0] != '\0', "oom %zu at %ld", i,
				      alloc_fail_at);
			free(got);
			if (alloc_calls <= alloc_fail_at) {
				CHECK((rc == 0) == (want != NULL), "oom %zu: verdict changed", i);
				break;
			}
		}
		free(want);
	}
	alloc_fail_at = -1;
	json_set_alloc_funcs(malloc, free);
	printf("jansson allocation failures: %ld decodes\n", runs);
}

int main(void)
{
	clock_t t0 = clock();

	kitchen_setup();
	test_roundtrip_all();
	test_goldens();
	test_bads();
	test_err_buffer();
	test_depth();
	test_encode_bad_utf8();
	test_jansson_oom();
	printf("%d checks, %d failures, %.1f s cpu\n", checks, failures,
	       (double)(clock() - t0) / CLOCKS_PER_SEC);
	return failures == 0 ? 0 : 1;
}
