/* pbjson.c — the proto3 JSON mapping, walked through protobuf-c descriptors:
 * a writer for compact canonical JSON, and a reader that checks jansson's
 * tree against the descriptor and builds the message as unpack would. */
#include "pbjson.h"

#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "gpumatch/v1/registry.h"

/* Message objects nested on input, the root included. The contract has no
 * recursive type, so this only bounds a future one (and the C stack). */
#define PBJSON_DEPTH_MAX 64
/* Field paths in error messages are cut beyond this. */
#define PATH_BYTES 256
/* Bytes of a string value or key quoted in an error message. */
#define QUOTE_MAX 40
/* A number token jansson cannot hold is reparsed as this string prefix
 * followed by the token; see parse_json(). */
#define BIG_MARK     "\0N"
#define BIG_MARK_LEN 2

/* ---- descriptor helpers ------------------------------------------------- */

static size_t elem_size(ProtobufCType t)
{
	switch (t) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_ENUM: /* protoc-c forces enums to int size */
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

static const char *type_name(ProtobufCType t)
{
	switch (t) {
	case PROTOBUF_C_TYPE_INT32:
		return "int32";
	case PROTOBUF_C_TYPE_SINT32:
		return "sint32";
	case PROTOBUF_C_TYPE_SFIXED32:
		return "sfixed32";
	case PROTOBUF_C_TYPE_UINT32:
		return "uint32";
	case PROTOBUF_C_TYPE_FIXED32:
		return "fixed32";
	case PROTOBUF_C_TYPE_INT64:
		return "int64";
	case PROTOBUF_C_TYPE_SINT64:
		return "sint64";
	case PROTOBUF_C_TYPE_SFIXED64:
		return "sfixed64";
	case PROTOBUF_C_TYPE_UINT64:
		return "uint64";
	case PROTOBUF_C_TYPE_FIXED64:
		return "fixed64";
	case PROTOBUF_C_TYPE_FLOAT:
		return "float";
	case PROTOBUF_C_TYPE_DOUBLE:
		return "double";
	case PROTOBUF_C_TYPE_ENUM:
		return "an enum number";
	default:
		return "this field";
	}
}

static bool is_map(const ProtobufCFieldDescriptor *f)
{
	return f->label == PROTOBUF_C_LABEL_REPEATED && f->type == PROTOBUF_C_TYPE_MESSAGE &&
	       proto_is_map_entry(f->descriptor);
}

static bool is_pointer_type(const ProtobufCFieldDescriptor *f)
{
	return f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE;
}

static const void *cmember(const ProtobufCMessage *m, unsigned off)
{
	return (const char *)m + off;
}

static void *member(ProtobufCMessage *m, unsigned off)
{
	return (char *)m + off;
}

static char ascii_upper(char c)
{
	return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

/* protoc-c descriptors carry no json_name; this is protoc's default: each
 * '_' dropped and the character after it upper-cased. */
static bool camel_equal(const char *name, const char *key, size_t key_len)
{
	size_t k = 0;
	bool up = false;

	for (const char *p = name; *p != '\0'; p++) {
		if (*p == '_') {
			up = true;
			continue;
		}
		if (k >= key_len || key[k] != (up ? ascii_upper(*p) : *p))
			return false;
		up = false;
		k++;
	}
	return k == key_len;
}

/* Length of the well-formed UTF-8 sequence at s (1..4), or 0 where the bytes
 * are not one (stray continuation, overlong form, surrogate, > U+10FFFF). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		return n >= 2 && (s[1] & 0xc0) == 0x80 ? 2 : 0;
	if (c >= 0xe0 && c <= 0xef) {
		if (n < 3 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80)
			return 0;
		if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] > 0x9f))
			return 0;
		return 3;
	}
	if (c >= 0xf0 && c <= 0xf4) {
		if (n < 4 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80 ||
		    (s[3] & 0xc0) != 0x80)
			return 0;
		if ((c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] > 0x8f))
			return 0;
		return 4;
	}
	return 0;
}

bool pbjson_valid_utf8(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	for (size_t i = 0; i < n;) {
		size_t l = utf8_len(u + i, n - i);
		if (!l)
			return false;
		i += l;
	}
	return true;
}

/* Shortest "%g" text that reads back as d (15 digits suffice for most). */
static void fmt_double(char *buf, size_t n, double d)
{
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(buf, n, "%.*g", prec, d);
		if (strtod(buf, NULL) == d)
			break;
	}
}

/* ---- writer ------------------------------------------------------------- */

struct out {
	char *p;
	size_t len;
	size_t cap;
	bool oom; /* sticky: later writes are dropped */
};

static void out_mem(struct out *o, const void *s, size_t n)
{
	if (o->oom || n == 0)
		return;
	if (n > o->cap - o->len) {
		size_t cap = o->cap ? o->cap : 256;
		char *p;

		while (cap - o->len < n) {
			if (cap > SIZE_MAX / 2) {
				o->oom = true;
				return;
			}
			cap *= 2;
		}
		p = realloc(o->p, cap);
		if (p == NULL) {
			o->oom = true;
			return;
		}
		o->p = p;
		o->cap = cap;
	}
	memcpy(o->p + o->len, s, n);
	o->len += n;
}

static void out_ch(struct out *o, char c)
{
	out_mem(o, &c, 1);
}

static void out_cstr(struct out *o, const char *s)
{
	out_mem(o, s, strlen(s));
}

/* A JSON string literal. protobuf-c does not check that strings it unpacks
 * are UTF-8, so a byte that is not part of a well-formed sequence becomes
 * U+FFFD rather than making the whole document invalid JSON. */
static void out_string(struct out *o, const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t start = 0, i = 0;

	out_ch(o, '"');
	while (i < n) {
		const char *esc;
		char ubuf[8];

		switch (u[i]) {
		case '"':
			esc = "\\\"";
			break;
		case '\\':
			esc = "\\\\";
			break;
		case '\b':
			esc = "\\b";
			break;
		case '\f':
			esc = "\\f";
			break;
		case '\n':
			esc = "\\n";
			break;
		case '\r':
			esc = "\\r";
			break;
		case '\t':
			esc = "\\t";
			break;
		default:
			if (u[i] < 0x20) {
				snprintf(ubuf, sizeof ubuf, "\\u%04x", u[i]);
				esc = ubuf;
			} else if (u[i] < 0x80) {
				i++;
				continue;
			} else {
				size_t l = utf8_len(u + i, n - i);

				if (l > 0) {
					i += l;
					continue;
				}
				esc = "\\ufffd";
			}
		}
		out_mem(o, s + start, i - start);
		out_cstr(o, esc);
		start = ++i;
	}
	out_mem(o, s + start, n - start);
	out_ch(o, '"');
}

static void out_base64(struct out *o, const uint8_t *p, size_t n)
{
	static const char tab[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char q[4];
	size_t i;

	out_ch(o, '"');
	for (i = 0; i + 3 <= n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];

		q[0] = tab[v >> 18];
		q[1] = tab[(v >> 12) & 63];
		q[2] = tab[(v >> 6) & 63];
		q[3] = tab[v & 63];
		out_mem(o, q, 4);
	}
	if (n - i > 0) {
		uint32_t v = (uint32_t)p[i] << 16 | (n - i == 2 ? (uint32_t)p[i + 1] << 8 : 0);

		q[0] = tab[v >> 18];
		q[1] = tab[(v >> 12) & 63];
		q[2] = n - i == 2 ? tab[(v >> 6) & 63] : '=';
		q[3] = '=';
		out_mem(o, q, 4);
	}
	out_ch(o, '"');
}

/* Non-finite values are the strings proto3 JSON names. Negative zero keeps
 * its sign through a reader that takes "-0" for the integer 0. */
static void out_double(struct out *o, double d, bool is_float)
{
	char buf[40];

	if (isnan(d)) {
		out_cstr(o, "\"NaN\"");
		return;
	}
	if (isinf(d)) {
		out_cstr(o, d > 0 ? "\"Infinity\"" : "\"-Infinity\"");
		return;
	}
	if (d == 0) {
		out_cstr(o, signbit(d) ? "-0.0" : "0");
		return;
	}
	if (is_float) {
		for (int prec = 6; prec <= 9; prec++) {
			snprintf(buf, sizeof buf, "%.*g", prec, d);
			if (strtof(buf, NULL) == (float)d)
				break;
		}
	} else {
		fmt_double(buf, sizeof buf, d);
	}
	out_cstr(o, buf);
}

static void out_message(struct out *o, const ProtobufCMessage *m);

/* One value of f's type stored at p, defaults included. */
static void out_value(struct out *o, const ProtobufCFieldDescriptor *f, const void *p)
{
	char buf[32];

	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		snprintf(buf, sizeof buf, "%" PRId32, *(const int32_t *)p);
		out_cstr(o, buf);
		break;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		snprintf(buf, sizeof buf, "%" PRIu32, *(const uint32_t *)p);
		out_cstr(o, buf);
		break;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		/* 64-bit integers are strings: JavaScript numbers hold 53 bits. */
		snprintf(buf, sizeof buf, "\"%" PRId64 "\"", *(const int64_t *)p);
		out_cstr(o, buf);
		break;
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		snprintf(buf, sizeof buf, "\"%" PRIu64 "\"", *(const uint64_t *)p);
		out_cstr(o, buf);
		break;
	case PROTOBUF_C_TYPE_FLOAT:
		out_double(o, *(const float *)p, true);
		break;
	case PROTOBUF_C_TYPE_DOUBLE:
		out_double(o, *(const double *)p, false);
		break;
	case PROTOBUF_C_TYPE_BOOL:
		out_cstr(o, *(const protobuf_c_boolean *)p ? "true" : "false");
		break;
	case PROTOBUF_C_TYPE_ENUM: {
		int32_t v = *(const int32_t *)p;
		const ProtobufCEnumValue *ev =
		    protobuf_c_enum_descriptor_get_value(f->descriptor, v);

		/* proto3 enums are open: a number without a name stays a number. */
		if (ev != NULL) {
			out_string(o, ev->name, strlen(ev->name));
		} else {
			snprintf(buf, sizeof buf, "%" PRId32, v);
			out_cstr(o, buf);
		}
		break;
	}
	case PROTOBUF_C_TYPE_STRING: {
		const char *s = *(char *const *)p;

		if (s == NULL)
			s = "";
		out_string(o, s, strlen(s));
		break;
	}
	case PROTOBUF_C_TYPE_BYTES: {
		const ProtobufCBinaryData *b = p;

		out_base64(o, b->data, b->data != NULL ? b->len : 0);
		break;
	}
	case PROTOBUF_C_TYPE_MESSAGE: {
		const ProtobufCMessage *sm = *(ProtobufCMessage *const *)p;

		if (sm != NULL)
			out_message(o, sm);
		else
			out_cstr(o, "{}");
		break;
	}
	}
}

/* A map key is always a JSON string: its value's text, quoted once. */
static void out_map_key(struct out *o, const ProtobufCFieldDescriptor *kf, const void *p)
{
	switch (kf->type) {
	case PROTOBUF_C_TYPE_STRING:
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		out_value(o, kf, p);
		break;
	default:
		out_ch(o, '"');
		out_value(o, kf, p);
		out_ch(o, '"');
	}
}

/* Entries are written in their order; keys the binary held twice (last
 * wins in protobuf) would be written twice. */
static void out_map(struct out *o, const ProtobufCFieldDescriptor *f,
                    ProtobufCMessage *const *entries, size_t n)
{
	const ProtobufCMessageDescriptor *ed = f->descriptor;
	const ProtobufCFieldDescriptor *kf = &ed->fields[0], *vf = &ed->fields[1];
	bool first = true;

	out_ch(o, '{');
	for (size_t i = 0; i < n; i++) {
		if (entries[i] == NULL)
			continue;
		if (!first)
			out_ch(o, ',');
		first = false;
		out_map_key(o, kf, cmember(entries[i], kf->offset));
		out_ch(o, ':');
		out_value(o, vf, cmember(entries[i], vf->offset));
	}
	out_ch(o, '}');
}

/* The same test protobuf-c's packer makes (field_is_zeroish), so that a
 * field is in the JSON exactly when it is on the wire: bytes by length,
 * floating point by == 0 (negative zero is omitted too). */
static bool is_zeroish(const ProtobufCFieldDescriptor *f, const void *p)
{
	switch (f->type) {
	case PROTOBUF_C_TYPE_BOOL:
		return *(const protobuf_c_boolean *)p == 0;
	case PROTOBUF_C_TYPE_ENUM:
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		return *(const uint32_t *)p == 0;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return *(const uint64_t *)p == 0;
	case PROTOBUF_C_TYPE_FLOAT:
		return *(const float *)p == 0;
	case PROTOBUF_C_TYPE_DOUBLE:
		return *(const double *)p == 0;
	case PROTOBUF_C_TYPE_STRING: {
		const char *s = *(char *const *)p;
		return s == NULL || s[0] == '\0';
	}
	case PROTOBUF_C_TYPE_BYTES:
		return ((const ProtobufCBinaryData *)p)->len == 0;
	case PROTOBUF_C_TYPE_MESSAGE:
		return *(ProtobufCMessage *const *)p == NULL;
	}
	return true;
}

/* Whether protobuf_c_message_pack would write f: proto3 plain fields when
 * not zero, oneof members when selected, proto2/proto3 `optional` fields by
 * their has_ flag or pointer, repeated fields when non-empty. */
static bool field_present(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
	const void *p = cmember(m, f->offset);
	const void *q = cmember(m, f->quantifier_offset);

	if (f->label == PROTOBUF_C_LABEL_REPEATED)
		return *(const size_t *)q > 0;
	if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
		if (*(const uint32_t *)q != f->id)
			return false;
	} else if (f->label == PROTOBUF_C_LABEL_NONE) {
		return !is_zeroish(f, p);
	} else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && !is_pointer_type(f)) {
		return *(const protobuf_c_boolean *)q != 0;
	}
	if (is_pointer_type(f)) {
		const void *ptr = *(const void *const *)p;
		return ptr != NULL && ptr != f->default_value;
	}
	return true;
}

static void out_field_name(struct out *o, const char *name)
{
	bool up = false;

	out_ch(o, '"');
	for (const char *p = name; *p != '\0'; p++) {
		if (*p == '_') {
			up = true;
			continue;
		}
		out_ch(o, up ? ascii_upper(*p) : *p);
		up = false;
	}
	out_cstr(o, "\":");
}

static void out_message(struct out *o, const ProtobufCMessage *m)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	bool first = true;

	out_ch(o, '{');
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];

		if (!field_present(m, f))
			continue;
		if (!first)
			out_ch(o, ',');
		first = false;
		out_field_name(o, f->name);
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t n = *(const size_t *)cmember(m, f->quantifier_offset);
			const char *arr = *(char *const *)cmember(m, f->offset);
			size_t es = elem_size(f->type);

			if (is_map(f)) {
				out_map(o, f, (ProtobufCMessage *const *)arr, n);
				continue;
			}
			out_ch(o, '[');
			for (size_t k = 0; k < n; k++) {
				if (k > 0)
					out_ch(o, ',');
				out_value(o, f, arr + k * es);
			}
			out_ch(o, ']');
		} else {
			out_value(o, f, cmember(m, f->offset));
		}
	}
	out_ch(o, '}');
}

char *pbjson_encode(const ProtobufCMessage *m, size_t *len)
{
	struct out o = { 0 };

	if (m == NULL)
		return NULL;
	out_message(&o, m);
	out_ch(&o, '\0');
	if (o.oom) {
		free(o.p);
		return NULL;
	}
	if (len != NULL)
		*len = o.len - 1;
	return o.p;
}

/* ---- reader: errors and paths ------------------------------------------- */

struct dec {
	char *err;
	size_t err_len;
	unsigned depth;        /* message objects entered */
	size_t path_len;       /* bytes used in path */
	char path[PATH_BYTES]; /* "spec.allowedRegions[2]", "labels[\"k\"]" */
};

static void dec_fail(struct dec *dc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Writes "<path>: <message>", or the message alone at the root. */
static void dec_fail(struct dec *dc, const char *fmt, ...)
{
	size_t n = 0;
	va_list ap;

	if (dc->err == NULL || dc->err_len == 0)
		return;
	if (dc->path_len > 0) {
		int k = snprintf(dc->err, dc->err_len, "%s: ", dc->path);

		n = k < 0 ? 0 : (size_t)k;
		if (n >= dc->err_len)
			return;
	}
	va_start(ap, fmt);
	vsnprintf(dc->err + n, dc->err_len - n, fmt, ap);
	va_end(ap);
}

static size_t path_push(struct dec *dc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends a segment; returns the mark that path_pop() goes back to. */
static size_t path_push(struct dec *dc, const char *fmt, ...)
{
	size_t mark = dc->path_len;
	va_list ap;
	int k;

	va_start(ap, fmt);
	k = vsnprintf(dc->path + mark, sizeof dc->path - mark, fmt, ap);
	va_end(ap);
	if (k > 0)
		dc->path_len =
		    mark + (size_t)k < sizeof dc->path ? mark + (size_t)k : sizeof dc->path - 1;
	return mark;
}

static void path_pop(struct dec *dc, size_t mark)
{
	dc->path_len = mark;
	dc->path[mark] = '\0';
}

/* s[0..len) as a JSON string literal for an error message, escaped so the
 * message stays one printable line, cut after QUOTE_MAX bytes. */
static void quote(char *buf, size_t n, const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t k = 0, i = 0;

	/* Room for a 6-byte escape, "...", the closing quote and the NUL. */
	if (n < 16) {
		if (n > 0)
			buf[0] = '\0';
		return;
	}
	buf[k++] = '"';
	while (i < len && i < QUOTE_MAX && k + 11 < n) {
		size_t l = 1;

		if (u[i] == '"' || u[i] == '\\') {
			buf[k++] = '\\';
			buf[k++] = (char)u[i];
		} else if (u[i] < 0x20 || u[i] == 0x7f) {
			k += (size_t)snprintf(buf + k, n - k, "\\u%04x", u[i]);
		} else if (u[i] < 0x80) {
			buf[k++] = (char)u[i];
		} else {
			l = utf8_len(u + i, len - i);
			if (l == 0) {
				l = 1;
				memcpy(buf + k, "\\ufffd", 6);
				k += 6;
			} else if (k + l + 5 < n) {
				memcpy(buf + k, s + i, l);
				k += l;
			} else {
				break;
			}
		}
		i += l;
	}
	if (i < len) {
		memcpy(buf + k, "...", 3);
		k += 3;
	}
	buf[k++] = '"';
	buf[k] = '\0';
}

/* The token text of a number marked by parse_json(), or NULL. */
static const char *big_number(json_t *v, size_t *len)
{
	if (!json_is_string(v) || json_string_length(v) < BIG_MARK_LEN + 1 ||
	    memcmp(json_string_value(v), BIG_MARK, BIG_MARK_LEN) != 0)
		return NULL;
	*len = json_string_length(v) - BIG_MARK_LEN;
	return json_string_value(v) + BIG_MARK_LEN;
}

/* What a value was, for "expected X, got Y". */
static void describe(json_t *v, char *buf, size_t n)
{
	const char *big;
	size_t big_len;

	switch (json_typeof(v)) {
	case JSON_OBJECT:
		snprintf(buf, n, "an object");
		break;
	case JSON_ARRAY:
		snprintf(buf, n, "an array");
		break;
	case JSON_STRING:
		big = big_number(v, &big_len);
		if (big != NULL)
			snprintf(buf, n, "%.*s%s", big_len > QUOTE_MAX ? QUOTE_MAX : (int)big_len,
			         big, big_len > QUOTE_MAX ? "..." : "");
		else
			quote(buf, n, json_string_value(v), json_string_length(v));
		break;
	case JSON_INTEGER:
		snprintf(buf, n, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		break;
	case JSON_REAL:
		fmt_double(buf, n, json_real_value(v));
		break;
	case JSON_TRUE:
		snprintf(buf, n, "true");
		break;
	case JSON_FALSE:
		snprintf(buf, n, "false");
		break;
	case JSON_NULL:
		snprintf(buf, n, "null");
		break;
	}
}

static void fail_type(struct dec *dc, const char *expected, json_t *v)
{
	char got[128];

	describe(v, got, sizeof got);
	dec_fail(dc, "expected %s, got %s", expected, got);
}

/* The error text goes into a JSON error body, so it must be UTF-8 without
 * control characters; jansson's "near '...'" echoes raw input bytes, and a
 * cut at err_len can split a sequence. */
static void sanitize(char *s)
{
	unsigned char *u = (unsigned char *)s;
	size_t n = strlen(s);

	for (size_t i = 0; i < n;) {
		size_t l = utf8_len(u + i, n - i);

		if (l == 0 || u[i] < 0x20 || u[i] == 0x7f) {
			u[i++] = '?';
			continue;
		}
		i += l;
	}
}

/* ---- reader: numbers ---------------------------------------------------- */

enum num_status {
	NUM_OK,
	NUM_NOT_NUMBER, /* not a number at all */
	NUM_FRACTION,   /* a number, but not a whole one */
	NUM_RANGE,      /* a number out of every range */
};

/* An integer as sign and magnitude, so that all of int64 and uint64 fit. */
struct intval {
	bool neg;
	uint64_t mag;
};

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* Whether s[0..n) is exactly a JSON number (RFC 8259: no '+', no leading
 * zeros, no bare '.'); *is_int when it has neither fraction nor exponent. */
static bool number_syntax(const char *s, size_t n, bool *is_int)
{
	size_t i = 0;

	*is_int = true;
	if (i < n && s[i] == '-')
		i++;
	if (i < n && s[i] == '0') {
		i++;
	} else if (i < n && s[i] >= '1' && s[i] <= '9') {
		while (i < n && is_digit(s[i]))
			i++;
	} else {
		return false;
	}
	if (i < n && s[i] == '.') {
		*is_int = false;
		if (++i >= n || !is_digit(s[i]))
			return false;
		while (i < n && is_digit(s[i]))
			i++;
	}
	if (i < n && (s[i] == 'e' || s[i] == 'E')) {
		*is_int = false;
		if (++i < n && (s[i] == '+' || s[i] == '-'))
			i++;
		if (i >= n || !is_digit(s[i]))
			return false;
		while (i < n && is_digit(s[i]))
			i++;
	}
	return i == n;
}

/* s must be NUL-terminated at s[n] (jansson's strings are). */
static enum num_status text_to_double(const char *s, size_t n, double *d)
{
	bool is_int;
	char *end;

	if (!number_syntax(s, n, &is_int))
		return NUM_NOT_NUMBER;
	errno = 0;
	*d = strtod(s, &end);
	if (end != s + n)
		return NUM_NOT_NUMBER;
	if (errno == ERANGE && isinf(*d))
		return NUM_RANGE;
	return NUM_OK;
}

static enum num_status double_to_int(double d, struct intval *iv)
{
	if (!isfinite(d))
		return NUM_NOT_NUMBER;
	if (d != trunc(d))
		return NUM_FRACTION;
	if (d < 0) {
		if (d < -0x1p63)
			return NUM_RANGE;
		iv->neg = true;
		iv->mag = (uint64_t)-d;
	} else {
		if (d >= 0x1p64)
			return NUM_RANGE;
		iv->neg = false;
		iv->mag = (uint64_t)d;
	}
	return NUM_OK;
}

/* Integer text, exact over the whole 64-bit range; "1e3" and "5.0" are
 * whole numbers too. s must be NUL-terminated at s[n]. */
static enum num_status text_to_int(const char *s, size_t n, struct intval *iv)
{
	bool is_int;
	double d;
	enum num_status st;

	if (!number_syntax(s, n, &is_int))
		return NUM_NOT_NUMBER;
	if (!is_int) {
		st = text_to_double(s, n, &d);
		return st == NUM_OK ? double_to_int(d, iv) : st;
	}
	iv->neg = s[0] == '-';
	iv->mag = 0;
	for (size_t i = iv->neg ? 1 : 0; i < n; i++) {
		unsigned digit = (unsigned)(s[i] - '0');

		if (iv->mag > (UINT64_MAX - digit) / 10)
			return NUM_RANGE;
		iv->mag = iv->mag * 10 + digit;
	}
	return NUM_OK;
}

/* A JSON number, or a string holding one (proto3 JSON accepts both for
 * every integer type). */
static enum num_status json_to_int(json_t *v, struct intval *iv)
{
	const char *s;
	size_t n;

	if (json_is_integer(v)) {
		json_int_t x = json_integer_value(v);

		iv->neg = x < 0;
		iv->mag = x < 0 ? (uint64_t)(-(x + 1)) + 1 : (uint64_t)x;
		return NUM_OK;
	}
	if (json_is_real(v))
		return double_to_int(json_real_value(v), iv);
	if (!json_is_string(v))
		return NUM_NOT_NUMBER;
	s = big_number(v, &n);
	if (s == NULL) {
		s = json_string_value(v);
		n = json_string_length(v);
		if (strlen(s) != n)
			return NUM_NOT_NUMBER;
	}
	return text_to_int(s, n, iv);
}

static bool int_fits(ProtobufCType t, struct intval iv)
{
	switch (t) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_ENUM:
		return iv.neg ? iv.mag <= UINT64_C(1) << 31 : iv.mag <= INT32_MAX;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		return iv.neg ? iv.mag == 0 : iv.mag <= UINT32_MAX;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		return iv.neg ? iv.mag <= UINT64_C(1) << 63 : iv.mag <= INT64_MAX;
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return !iv.neg || iv.mag == 0;
	default:
		return false;
	}
}

/* iv must satisfy int_fits(t, iv). */
static void int_store(ProtobufCType t, struct intval iv, void *dst)
{
	int64_t sv = 0;

	if (t != PROTOBUF_C_TYPE_UINT64 && t != PROTOBUF_C_TYPE_FIXED64)
		sv = !iv.neg                       ? (int64_t)iv.mag
		     : iv.mag == UINT64_C(1) << 63 ? INT64_MIN
		                                   : -(int64_t)iv.mag;
	switch (t) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_ENUM:
		*(int32_t *)dst = (int32_t)sv;
		break;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		*(uint32_t *)dst = (uint32_t)iv.mag;
		break;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		*(int64_t *)dst = sv;
		break;
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		*(uint64_t *)dst = iv.neg ? 0 : iv.mag;
		break;
	default:
		break;
	}
}

/* Any integer type, and enums given by number. */
static int dec_int(struct dec *dc, ProtobufCType t, json_t *v, void *dst)
{
	struct intval iv;
	char got[128];

	switch (json_to_int(v, &iv)) {
	case NUM_OK:
		if (int_fits(t, iv)) {
			int_store(t, iv, dst);
			return 0;
		}
		/* fall through */
	case NUM_RANGE:
		describe(v, got, sizeof got);
		dec_fail(dc, "%s is out of range for %s", got, type_name(t));
		return -1;
	default:
		fail_type(dc,
		          t == PROTOBUF_C_TYPE_ENUM ? "an enum value name or number" : "an integer",
		          v);
		return -1;
	}
}

static int dec_float(struct dec *dc, ProtobufCType t, json_t *v, void *dst)
{
	enum num_status st = NUM_OK;
	double d = 0;
	char got[128];

	if (json_is_integer(v)) {
		d = (double)json_integer_value(v);
	} else if (json_is_real(v)) {
		d = json_real_value(v);
	} else if (json_is_string(v)) {
		size_t n;
		const char *s = big_number(v, &n);

		if (s == NULL) {
			s = json_string_value(v);
			n = json_string_length(v);
		}
		if (strlen(s) != n)
			st = NUM_NOT_NUMBER;
		else if (strcmp(s, "NaN") == 0)
			d = NAN;
		else if (strcmp(s, "Infinity") == 0)
			d = INFINITY;
		else if (strcmp(s, "-Infinity") == 0)
			d = -INFINITY;
		else
			st = text_to_double(s, n, &d);
	} else {
		st = NUM_NOT_NUMBER;
	}
	if (st == NUM_OK && t == PROTOBUF_C_TYPE_FLOAT && isfinite(d) && fabs(d) > FLT_MAX) {
		/* Below the midpoint to 2^128 it rounds to FLT_MAX (which is how
		 * "3.4028235e+38", the shortest text of FLT_MAX, reads). */
		if (fabs(d) < 0x1.ffffffp127)
			d = copysign(FLT_MAX, d);
		else
			st = NUM_RANGE;
	}
	switch (st) {
	case NUM_OK:
		if (t == PROTOBUF_C_TYPE_FLOAT)
			*(float *)dst = (float)d;
		else
			*(double *)dst = d;
		return 0;
	case NUM_RANGE:
		describe(v, got, sizeof got);
		dec_fail(dc, "%s is out of range for %s", got, type_name(t));
		return -1;
	default:
		fail_type(dc, "a number", v);
		return -1;
	}
}

/* ---- reader: other scalars ---------------------------------------------- */

static int dec_enum(struct dec *dc, const ProtobufCFieldDescriptor *f, json_t *v, void *dst)
{
	const ProtobufCEnumDescriptor *ed = f->descriptor;
	const ProtobufCEnumValue *ev = NULL;
	const char *s;
	char got[128], names[512];
	size_t k = 0;

	if (!json_is_string(v) || big_number(v, &k) != NULL)
		return dec_int(dc, PROTOBUF_C_TYPE_ENUM, v, dst);
	s = json_string_value(v);
	if (strlen(s) == json_string_length(v))
		ev = protobuf_c_enum_descriptor_get_value_by_name(ed, s);
	if (ev != NULL) {
		*(int32_t *)dst = ev->value;
		return 0;
	}
	names[0] = '\0';
	k = 0;
	for (unsigned i = 0; i < ed->n_values && k < sizeof names; i++) {
		int w = snprintf(names + k, sizeof names - k, "%s%s", i ? ", " : "",
		                 ed->values[i].name);
		k += w > 0 ? (size_t)w : 0;
	}
	quote(got, sizeof got, s, json_string_length(v));
	dec_fail(dc, "unknown value %s for enum %s (expected one of %s)", got, ed->name, names);
	return -1;
}

static int dec_string(struct dec *dc, json_t *v, char **dst)
{
	size_t n;
	char *s;

	if (!json_is_string(v) || big_number(v, &n) != NULL) {
		fail_type(dc, "a string", v);
		return -1;
	}
	n = json_string_length(v);
	if (memchr(json_string_value(v), '\0', n) != NULL) {
		dec_fail(dc, "strings cannot contain \\u0000");
		return -1;
	}
	s = malloc(n + 1);
	if (s == NULL) {
		dec_fail(dc, "out of memory");
		return -1;
	}
	memcpy(s, json_string_value(v), n + 1);
	*dst = s;
	return 0;
}

static int b64_digit(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+' || c == '-')
		return 62;
	if (c == '/' || c == '_')
		return 63;
	return -1;
}

/* Standard or URL-safe alphabet, padded to a multiple of 4 or not padded at
 * all. Returns 0 with a malloc'd buffer (NULL when empty), -1 when s is not
 * base64, -2 when out of memory. */
static int b64_decode(const char *s, size_t n, uint8_t **out, size_t *out_len)
{
	size_t pad = 0, m, len, k = 0;
	uint32_t acc = 0;
	unsigned bits = 0;
	uint8_t *buf;

	*out = NULL;
	*out_len = 0;
	if (n > 0 && s[n - 1] == '=')
		pad = n > 1 && s[n - 2] == '=' ? 2 : 1;
	if (pad > 0 && n % 4 != 0)
		return -1;
	m = n - pad;
	if (m % 4 == 1)
		return -1;
	len = m / 4 * 3 + (m % 4 == 0 ? 0 : m % 4 - 1);
	if (len == 0)
		return 0;
	buf = malloc(len);
	if (buf == NULL)
		return -2;
	for (size_t i = 0; i < m; i++) {
		int d = b64_digit((unsigned char)s[i]);

		if (d < 0) {
			free(buf);
			return -1;
		}
		acc = acc << 6 | (uint32_t)d;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			buf[k++] = (uint8_t)(acc >> bits);
			acc &= (UINT32_C(1) << bits) - 1;
		}
	}
	*out = buf;
	*out_len = len;
	return 0;
}

static int dec_bytes(struct dec *dc, json_t *v, ProtobufCBinaryData *dst)
{
	char got[128];
	size_t n;

	if (!json_is_string(v) || big_number(v, &n) != NULL) {
		fail_type(dc, "a base64 string", v);
		return -1;
	}
	switch (b64_decode(json_string_value(v), json_string_length(v), &dst->data, &dst->len)) {
	case 0:
		return 0;
	case -2:
		dec_fail(dc, "out of memory");
		return -1;
	default:
		describe(v, got, sizeof got);
		dec_fail(dc, "invalid base64 %s", got);
		return -1;
	}
}

/* ---- reader: messages --------------------------------------------------- */

static ProtobufCMessage *msg_new(const ProtobufCMessageDescriptor *d)
{
	ProtobufCMessage *m = malloc(d->sizeof_message);

	if (m != NULL)
		protobuf_c_message_init(d, m);
	return m;
}

static int dec_message(struct dec *dc, const ProtobufCMessageDescriptor *d, ProtobufCMessage *m,
                       json_t *obj);

/* One value of f's type into dst, which holds the type's zero value. */
static int dec_value(struct dec *dc, const ProtobufCFieldDescriptor *f, json_t *v, void *dst)
{
	ProtobufCMessage *sub;

	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return dec_int(dc, f->type, v, dst);
	case PROTOBUF_C_TYPE_FLOAT:
	case PROTOBUF_C_TYPE_DOUBLE:
		return dec_float(dc, f->type, v, dst);
	case PROTOBUF_C_TYPE_BOOL:
		if (!json_is_boolean(v)) {
			fail_type(dc, "true or false", v);
			return -1;
		}
		*(protobuf_c_boolean *)dst = json_is_true(v);
		return 0;
	case PROTOBUF_C_TYPE_ENUM:
		return dec_enum(dc, f, v, dst);
	case PROTOBUF_C_TYPE_STRING:
		return dec_string(dc, v, dst);
	case PROTOBUF_C_TYPE_BYTES:
		return dec_bytes(dc, v, dst);
	case PROTOBUF_C_TYPE_MESSAGE:
		if (!json_is_object(v)) {
			fail_type(dc, "an object", v);
			return -1;
		}
		sub = msg_new(f->descriptor);
		if (sub == NULL) {
			dec_fail(dc, "out of memory");
			return -1;
		}
		/* Linked before it is filled, so that freeing the root frees
		 * it whatever happens below. */
		*(ProtobufCMessage **)dst = sub;
		return dec_message(dc, f->descriptor, sub, v);
	}
	dec_fail(dc, "unsupported field type");
	return -1;
}

/* A map key arrives as a JSON object key: its type's text form. */
static int dec_map_key(struct dec *dc, const ProtobufCFieldDescriptor *kf, const char *key,
                       size_t key_len, void *dst)
{
	struct intval iv;
	char *s;

	switch (kf->type) {
	case PROTOBUF_C_TYPE_STRING:
		s = malloc(key_len + 1);
		if (s == NULL) {
			dec_fail(dc, "out of memory");
			return -1;
		}
		memcpy(s, key, key_len);
		s[key_len] = '\0';
		*(char **)dst = s;
		return 0;
	case PROTOBUF_C_TYPE_BOOL:
		if (strcmp(key, "true") != 0 && strcmp(key, "false") != 0) {
			dec_fail(dc, "map key must be \"true\" or \"false\"");
			return -1;
		}
		*(protobuf_c_boolean *)dst = strcmp(key, "true") == 0;
		return 0;
	default:
		if (text_to_int(key, key_len, &iv) != NUM_OK || !int_fits(kf->type, iv)) {
			dec_fail(dc, "map key is not a valid %s", type_name(kf->type));
			return -1;
		}
		int_store(kf->type, iv, dst);
		return 0;
	}
}

/* Elements are counted before they are filled: a half-built element is
 * zeroed (calloc), which protobuf_c_message_free_unpacked() frees cleanly. */
static int dec_array(struct dec *dc, const ProtobufCFieldDescriptor *f, json_t *v, void **arrp,
                     size_t *np)
{
	size_t n, es = elem_size(f->type);
	char *arr;

	if (!json_is_array(v)) {
		fail_type(dc, "an array", v);
		return -1;
	}
	n = json_array_size(v);
	if (n == 0)
		return 0;
	arr = calloc(n, es);
	if (arr == NULL) {
		dec_fail(dc, "out of memory");
		return -1;
	}
	*arrp = arr;
	for (size_t i = 0; i < n; i++) {
		size_t mark = path_push(dc, "[%zu]", i);

		*np = i + 1;
		if (dec_value(dc, f, json_array_get(v, i), arr + i * es) != 0)
			return -1;
		path_pop(dc, mark);
	}
	return 0;
}

static int dec_map(struct dec *dc, const ProtobufCFieldDescriptor *f, json_t *v, void **arrp,
                   size_t *np)
{
	const ProtobufCMessageDescriptor *ed = f->descriptor;
	const ProtobufCFieldDescriptor *kf = &ed->fields[0], *vf = &ed->fields[1];
	ProtobufCMessage **arr;
	const char *key;
	size_t key_len, n, i = 0;
	json_t *val;

	if (!json_is_object(v)) {
		fail_type(dc, "an object", v);
		return -1;
	}
	n = json_object_size(v);
	if (n == 0)
		return 0;
	arr = calloc(n, sizeof *arr);
	if (arr == NULL) {
		dec_fail(dc, "out of memory");
		return -1;
	}
	*arrp = arr;
	json_object_keylen_foreach(v, key, key_len, val)
	{
		char q[128];
		size_t mark;
		ProtobufCMessage *e;

		quote(q, sizeof q, key, key_len);
		mark = path_push(dc, "[%s]", q);
		e = msg_new(ed);
		if (e == NULL) {
			dec_fail(dc, "out of memory");
			return -1;
		}
		arr[i++] = e;
		*np = i;
		if (dec_map_key(dc, kf, key, key_len, member(e, kf->offset)) != 0 ||
		    dec_value(dc, vf, val, member(e, vf->offset)) != 0)
			return -1;
		path_pop(dc, mark);
	}
	return 0;
}

static int dec_field(struct dec *dc, const ProtobufCMessageDescriptor *d,
                     const ProtobufCFieldDescriptor *f, ProtobufCMessage *m, json_t *v)
{
	void *p = member(m, f->offset), *q = member(m, f->quantifier_offset);

	if (f->label == PROTOBUF_C_LABEL_REPEATED)
		return is_map(f) ? dec_map(dc, f, v, p, q) : dec_array(dc, f, v, p, q);
	if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
		uint32_t *which = q;

		/* Members share storage: a second one must not overwrite the
		 * first (and leak what it owns). */
		if (*which != 0 && *which != f->id) {
			const ProtobufCFieldDescriptor *other =
			    protobuf_c_message_descriptor_get_field(d, *which);

			dec_fail(dc, "only one field of a oneof may be set (also set: %s)",
			         other != NULL ? other->name : "?");
			return -1;
		}
		*which = f->id;
		return dec_value(dc, f, v, p);
	}
	if (dec_value(dc, f, v, p) != 0)
		return -1;
	if (f->label == PROTOBUF_C_LABEL_OPTIONAL && !is_pointer_type(f))
		*(protobuf_c_boolean *)q = 1;
	return 0;
}

static const ProtobufCFieldDescriptor *
find_field(const ProtobufCMessageDescriptor *d, const char *key, size_t key_len, bool *by_json_name)
{
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];

		if (strncmp(f->name, key, key_len) == 0 && f->name[key_len] == '\0') {
			*by_json_name = false;
			return f;
		}
		if (camel_equal(f->name, key, key_len)) {
			*by_json_name = true;
			return f;
		}
	}
	return NULL;
}

static int dec_message(struct dec *dc, const ProtobufCMessageDescriptor *d, ProtobufCMessage *m,
                       json_t *obj)
{
	const char *key;
	size_t key_len;
	json_t *v;

	if (++dc->depth > PBJSON_DEPTH_MAX) {
		dec_fail(dc, "messages nested deeper than %d levels", PBJSON_DEPTH_MAX);
		return -1;
	}
	json_object_keylen_foreach(obj, key, key_len, v)
	{
		bool by_json_name = false;
		const ProtobufCFieldDescriptor *f = find_field(d, key, key_len, &by_json_name);
		size_t mark;

		if (f == NULL) {
			char q[128];

			quote(q, sizeof q, key, key_len);
			dec_fail(dc, "unknown field %s", q);
			return -1;
		}
		mark = path_push(dc, "%s%s", dc->path_len > 0 ? "." : "", key);
		/* jansson rejects duplicate keys; this is the same field under
		 * both of its names. */
		if (by_json_name && json_object_get(obj, f->name) != NULL) {
			dec_fail(dc, "field given twice (also as \"%s\")", f->name);
			return -1;
		}
		/* null is the field's default, which is what it holds. */
		if (!json_is_null(v) && dec_field(dc, d, f, m, v) != 0)
			return -1;
		path_pop(dc, mark);
	}
	dc->depth--;
	return 0;
}

/* ---- reader: entry ------------------------------------------------------ */

static bool is_num_char(char c)
{
	return is_digit(c) || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

/* Whether jansson fails on this number token: an integer outside long long
 * or a real beyond double (its checks, repeated). */
static bool number_overflows(const char *s, size_t n)
{
	char buf[64], *copy = buf, *end;
	bool is_int, over;

	if (!number_syntax(s, n, &is_int))
		return false;
	if (n >= sizeof buf) {
		copy = malloc(n + 1);
		if (copy == NULL)
			return false;
	}
	memcpy(copy, s, n);
	copy[n] = '\0';
	errno = 0;
	if (is_int) {
		(void)strtoll(copy, &end, 10);
		over = errno == ERANGE;
	} else {
		double d = strtod(copy, &end);
		over = errno == ERANGE && isinf(d);
	}
	if (copy != buf)
		free(copy);
	return over;
}

/* A copy of the document with each number token that jansson cannot hold
 * turned into the string "\u0000N<token>". Tokens are found with a scan that
 * only tracks strings; anything it gets wrong jansson still rejects. */
static void mark_big_numbers(struct out *o, const char *s, size_t n)
{
	size_t i = 0, start = 0;
	bool in_string = false;

	while (i < n) {
		size_t j;

		if (in_string) {
			if (s[i] == '\\')
				i++;
			else if (s[i] == '"')
				in_string = false;
			i++;
			continue;
		}
		if (s[i] == '"') {
			in_string = true;
			i++;
			continue;
		}
		if (s[i] != '-' && !is_digit(s[i])) {
			i++;
			continue;
		}
		for (j = i; j < n && is_num_char(s[j]); j++)
			;
		if (number_overflows(s + i, j - i)) {
			out_mem(o, s + start, i - start);
			out_cstr(o, "\"\\u0000N");
			out_mem(o, s + i, j - i);
			out_ch(o, '"');
			start = j;
		}
		i = j;
	}
	if (start < n)
		out_mem(o, s + start, n - start);
}

/* ---- reader: duplicate keys -------------------------------------------- */

/* Object and array levels a duplicate key is located under; deeper ones
 * keep jansson's own message. */
#define DUP_FRAMES 64

struct dup_frame {
	bool obj;      /* an object (else an array) */
	bool want_key; /* the next string is a key */
	size_t index;  /* array: the element being read */
	size_t key_at; /* object: the last key's token (quotes included) */
	size_t key_len;
};

/* The JSON string token s[0..n) decoded into buf (cut to fit); false when
 * it is not one. */
static bool token_key(const char *s, size_t n, char *buf, size_t buf_len, size_t *out_len)
{
	json_t *j = json_loadb(s, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
	size_t k;

	if (!json_is_string(j)) {
		json_decref(j);
		return false;
	}
	k = json_string_length(j);
	if (k >= buf_len)
		k = buf_len - 1;
	memcpy(buf, json_string_value(j), k);
	buf[k] = '\0';
	*out_len = k;
	json_decref(j);
	return true;
}

/* jansson refuses an object key given twice (JSON_REJECT_DUPLICATES) but
 * names only the key. Protobuf's JSON parsers refuse a field or a map key
 * given twice too, naming it: so the document is scanned again up to where
 * jansson stopped (just after the repeated key), the enclosing objects and
 * arrays are followed through the descriptor, and the error names the field
 * ("spec.command: field given twice") or the map and its key ("labels: key
 * \"a\" given twice"). The scan only tracks strings and brackets: the text
 * before pos is JSON jansson has read. Returns false when it cannot say. */
static bool fail_duplicate(struct dec *dc, const ProtobufCMessageDescriptor *d, const char *json,
                           size_t len, size_t pos)
{
	struct dup_frame st[DUP_FRAMES];
	const ProtobufCFieldDescriptor *map = NULL, *rep = NULL;
	size_t top = 0, i = 0;
	char key[PATH_BYTES], q[128];
	size_t key_len;
	bool by_json_name;

	if (pos > len)
		return false;
	while (i < pos) {
		char c = json[i];

		if (c == '{' || c == '[') {
			if (top == DUP_FRAMES)
				return false;
			st[top++] = (struct dup_frame){ .obj = c == '{', .want_key = c == '{' };
		} else if (c == '}' || c == ']') {
			if (top == 0)
				return false;
			top--;
		} else if (c == ',' && top > 0) {
			if (st[top - 1].obj)
				st[top - 1].want_key = true;
			else
				st[top - 1].index++;
		} else if (c == '"') {
			size_t start = i++;

			while (i < len && json[i] != '"')
				i += json[i] == '\\' ? 2 : 1;
			if (i >= len)
				return false;
			if (top > 0 && st[top - 1].obj && st[top - 1].want_key) {
				st[top - 1].want_key = false;
				st[top - 1].key_at = start;
				st[top - 1].key_len = i + 1 - start;
			}
		}
		i++;
	}
	if (top == 0 || !st[top - 1].obj || st[top - 1].key_len == 0)
		return false;
	/* Follow the path: d is the message an object level is read as, map
	 * the map field and rep the repeated field a level is read as; none of
	 * them where the descriptor no longer tells. */
	for (size_t k = 0; k + 1 < top; k++) {
		const ProtobufCFieldDescriptor *f = NULL;

		if (!st[k].obj) {
			path_push(dc, "[%zu]", st[k].index);
			f = rep;
			rep = NULL;
			d = f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE ? f->descriptor : NULL;
			continue;
		}
		if (!token_key(json + st[k].key_at, st[k].key_len, key, sizeof key, &key_len))
			return false;
		if (map != NULL) {
			quote(q, sizeof q, key, key_len);
			path_push(dc, "[%s]", q);
			f = &((const ProtobufCMessageDescriptor *)map->descriptor)->fields[1];
			map = NULL;
		} else {
			path_push(dc, "%s%s", dc->path_len > 0 ? "." : "", key);
			f = d != NULL ? find_field(d, key, key_len, &by_json_name) : NULL;
			if (f != NULL && is_map(f)) {
				map = f;
				d = NULL;
				continue;
			}
			if (f != NULL && f->label == PROTOBUF_C_LABEL_REPEATED) {
				rep = f;
				d = NULL;
				continue;
			}
		}
		d = f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE ? f->descriptor : NULL;
	}
	if (!token_key(json + st[top - 1].key_at, st[top - 1].key_len, key, sizeof key, &key_len))
		return false;
	if (map != NULL) {
		quote(q, sizeof q, key, key_len);
		dec_fail(dc, "key %s given twice", q);
		return true;
	}
	path_push(dc, "%s%s", dc->path_len > 0 ? "." : "", key);
	if (d != NULL && find_field(d, key, key_len, &by_json_name) != NULL)
		dec_fail(dc, "field given twice");
	else
		dec_fail(dc, "key given twice");
	return true;
}

/* jansson holds integers as long long and fails the whole document on one
 * outside that range, but proto3 JSON allows a uint64 above INT64_MAX as a
 * number, and an out-of-range number deserves an error naming its field.
 * So on that one error the document is parsed again with such tokens marked
 * as strings that JSON text cannot produce (they start with NUL, which no
 * string field accepts); the field readers take them for numbers. */
static json_t *parse_json(struct dec *dc, const ProtobufCMessageDescriptor *d, const char *json,
                          size_t len)
{
	const size_t flags = JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL;
	json_error_t e, e2;
	json_t *root = json_loadb(json, len, flags, &e);

	if (root != NULL)
		return root;
	if (json_error_code(&e) == json_error_numeric_overflow) {
		struct out o = { 0 };

		mark_big_numbers(&o, json, len);
		if (!o.oom)
			root = json_loadb(o.p, o.len, flags, &e2);
		free(o.p);
		if (root != NULL)
			return root;
	}
	/* jansson leaves the text empty where an allocation failed and it
	 * had no error to report. */
	if (json_error_code(&e) == json_error_duplicate_key && e.position > 0 &&
	    fail_duplicate(dc, d, json, len, (size_t)e.position))
		return NULL;
	path_pop(dc, 0);
	if (json_error_code(&e) == json_error_out_of_memory || e.text[0] == '\0')
		dec_fail(dc, "out of memory");
	else if (e.line < 1)
		dec_fail(dc, "invalid JSON: %s", e.text);
	else
		dec_fail(dc, "invalid JSON at line %d, column %d: %s", e.line, e.column, e.text);
	return NULL;
}

static bool is_json_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

int pbjson_decode(const ProtobufCMessageDescriptor *d, const char *json, size_t len,
                  ProtobufCMessage **out, char *err, size_t err_len)
{
	struct dec dc = { .err = err, .err_len = err_len };
	ProtobufCMessage *m = NULL;
	json_t *root = NULL;
	size_t i;
	int rc = -1;

	if (err != NULL && err_len > 0)
		err[0] = '\0';
	if (out != NULL)
		*out = NULL;
	if (d == NULL || out == NULL || (json == NULL && len > 0)) {
		dec_fail(&dc, "invalid arguments");
		return -1;
	}
	for (i = 0; i < len && is_json_space(json[i]); i++)
		;
	if (i == len) {
		dec_fail(&dc, "empty body: expected a JSON object");
		goto done;
	}
	root = parse_json(&dc, d, json, len);
	if (root == NULL)
		goto done;
	if (!json_is_object(root)) {
		fail_type(&dc, "a JSON object", root);
		goto done;
	}
	m = msg_new(d);
	if (m == NULL) {
		dec_fail(&dc, "out of memory");
		goto done;
	}
	if (dec_message(&dc, d, m, root) == 0) {
		*out = m;
		m = NULL;
		rc = 0;
	}
done:
	if (m != NULL)
		protobuf_c_message_free_unpacked(m, NULL);
	json_decref(root);
	if (rc != 0 && err != NULL && err_len > 0)
		sanitize(err);
	return rc;
}
