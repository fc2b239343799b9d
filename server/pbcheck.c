/* pbcheck.c — see pbcheck.h. */
#include "pbcheck.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpumatch/v1/registry.h"
#include "pbjson.h"

#define MAX_DEPTH      32
#define PATH_MAX_BYTES 256

/* Fields whose full unsigned range is meaningful and never stored signed. */
static bool exempt(const char *name)
{
	static const char *const names[] = { "seed", "throttle_reasons", "pci_subsystem_id" };
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (!strcmp(name, names[i]))
			return true;
	return false;
}

static void join(char *out, size_t len, const char *path, const char *name)
{
	if (path[0])
		snprintf(out, len, "%s.%s", path, name);
	else
		snprintf(out, len, "%s", name);
}

/* Reads a varint; returns bytes used, 0 when malformed or truncated. */
static size_t varint(const uint8_t *p, size_t n, uint64_t *v)
{
	uint64_t r = 0;
	for (size_t i = 0; i < n && i < 10; i++) {
		r |= (uint64_t)(p[i] & 0x7f) << (7 * i);
		if (!(p[i] & 0x80)) {
			*v = r;
			return i + 1;
		}
	}
	return 0;
}

static int wire(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n, const char *path,
                int depth, char *err, size_t err_len)
{
	if (depth > MAX_DEPTH)
		return 0; /* protobuf-c decides */
	size_t i = 0;
	while (i < n) {
		uint64_t key, len;
		size_t k = varint(p + i, n - i, &key);
		if (!k)
			return 0;
		i += k;
		uint32_t num = (uint32_t)(key >> 3);
		if (!num) {
			/* protobuf-c keeps it as an unknown field; no encoder makes it */
			snprintf(err, err_len, "invalid protobuf body: field number 0");
			return -1;
		}
		switch (key & 7) {
		case 0:
			if (!(k = varint(p + i, n - i, &len)))
				return 0;
			i += k;
			continue;
		case 1:
			if (n - i < 8)
				return 0;
			i += 8;
			continue;
		case 5:
			if (n - i < 4)
				return 0;
			i += 4;
			continue;
		case 2:
			break;
		default:
			return 0;
		}
		if (!(k = varint(p + i, n - i, &len)))
			return 0;
		i += k;
		if (len > n - i)
			return 0;
		const uint8_t *v = p + i;
		i += (size_t)len;
		const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(d, num);
		if (!f)
			continue;
		if (f->type == PROTOBUF_C_TYPE_STRING) {
			const char *why = NULL;
			if (memchr(v, 0, (size_t)len))
				why = "contains a NUL byte";
			else if (!pbjson_valid_utf8((const char *)v, (size_t)len))
				why = "is not valid UTF-8";
			if (why) {
				char name[PATH_MAX_BYTES];
				join(name, sizeof name, path, f->name);
				snprintf(err, err_len, "field %s %s", name, why);
				return -1;
			}
		} else if (f->type == PROTOBUF_C_TYPE_MESSAGE && f->descriptor) {
			char sub[PATH_MAX_BYTES];
			join(sub, sizeof sub, path, f->name);
			if (wire(f->descriptor, v, (size_t)len, sub, depth + 1, err, err_len))
				return -1;
		}
	}
	return 0;
}

int pbcheck_wire(const ProtobufCMessageDescriptor *d, const uint8_t *buf, size_t len, char *err,
                 size_t err_len)
{
	return wire(d, buf, len, "", 0, err, err_len);
}

static int value(const ProtobufCFieldDescriptor *f, const void *p, const char *path, int depth,
                 char *err, size_t err_len);

/* Orders map entries by key; every entry of one map has the same type,
 * whose field 0 is the key (a string or a scalar). */
static int key_cmp(const void *a, const void *b)
{
	const ProtobufCMessage *x = *(const ProtobufCMessage *const *)a;
	const ProtobufCMessage *y = *(const ProtobufCMessage *const *)b;
	const ProtobufCFieldDescriptor *kf = &x->descriptor->fields[0];
	const char *px = (const char *)x + kf->offset, *py = (const char *)y + kf->offset;

	switch (kf->type) {
	case PROTOBUF_C_TYPE_STRING: {
		const char *sx, *sy;
		memcpy(&sx, px, sizeof sx);
		memcpy(&sy, py, sizeof sy);
		return strcmp(sx ? sx : "", sy ? sy : "");
	}
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64: {
		uint64_t vx, vy;
		memcpy(&vx, px, sizeof vx);
		memcpy(&vy, py, sizeof vy);
		return vx < vy ? -1 : vx > vy;
	}
	case PROTOBUF_C_TYPE_BOOL: {
		protobuf_c_boolean vx, vy;
		memcpy(&vx, px, sizeof vx);
		memcpy(&vy, py, sizeof vy);
		return (vx != 0) - (vy != 0);
	}
	default: { /* the 32-bit integers */
		uint32_t vx, vy;
		memcpy(&vx, px, sizeof vx);
		memcpy(&vy, py, sizeof vy);
		return vx < vy ? -1 : vx > vy;
	}
	}
}

/* The key of a map entry for an error message. */
static void key_text(const ProtobufCMessage *e, char *out, size_t len)
{
	const ProtobufCFieldDescriptor *kf = &e->descriptor->fields[0];
	const char *p = (const char *)e + kf->offset;

	switch (kf->type) {
	case PROTOBUF_C_TYPE_STRING: {
		const char *s;
		memcpy(&s, p, sizeof s);
		/* strings were checked valid UTF-8 without NUL; quote and cut */
		snprintf(out, len, "\"%.40s%s\"", s ? s : "", s && strlen(s) > 40 ? "..." : "");
		return;
	}
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64: {
		int64_t v;
		memcpy(&v, p, sizeof v);
		snprintf(out, len, "%" PRId64, v);
		return;
	}
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64: {
		uint64_t v;
		memcpy(&v, p, sizeof v);
		snprintf(out, len, "%" PRIu64, v);
		return;
	}
	case PROTOBUF_C_TYPE_BOOL: {
		protobuf_c_boolean v;
		memcpy(&v, p, sizeof v);
		snprintf(out, len, "%s", v ? "true" : "false");
		return;
	}
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32: {
		uint32_t v;
		memcpy(&v, p, sizeof v);
		snprintf(out, len, "%" PRIu32, v);
		return;
	}
	default: {
		int32_t v;
		memcpy(&v, p, sizeof v);
		snprintf(out, len, "%" PRId32, v);
		return;
	}
	}
}

/* A map whose key repeats on the wire: protobuf-c keeps every entry, and
 * proto3 would keep the last one silently. Both would hide from the caller
 * that part of what it sent is ignored (and the JSON form of such a map is
 * an object with a key given twice, which the JSON decoder refuses), so the
 * request is refused naming the map and the key, as in JSON. */
static int map_keys(const ProtobufCMessage *const *arr, size_t n, const char *path, char *err,
                    size_t err_len)
{
	const ProtobufCMessage **sorted;
	int rc = 0;

	if (n < 2)
		return 0;
	sorted = malloc(n * sizeof *sorted);
	if (!sorted) {
		snprintf(err, err_len, "field %s: out of memory", path);
		return -1;
	}
	memcpy(sorted, arr, n * sizeof *sorted);
	qsort(sorted, n, sizeof *sorted, key_cmp);
	for (size_t i = 1; i < n; i++) {
		if (!key_cmp(&sorted[i - 1], &sorted[i])) {
			char k[64];
			key_text(sorted[i], k, sizeof k);
			snprintf(err, err_len, "field %s: key %s given twice", path, k);
			rc = -1;
			break;
		}
	}
	free(sorted);
	return rc;
}

static int ranges(const ProtobufCMessage *m, const char *path, int depth, char *err, size_t err_len)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	if (depth > MAX_DEPTH)
		return 0;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		const char *base = (const char *)m;
		if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
			uint32_t which;
			memcpy(&which, base + f->quantifier_offset, sizeof which);
			if (which != f->id)
				continue;
		}
		char name[PATH_MAX_BYTES];
		join(name, sizeof name, path, f->name);
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t count;
			memcpy(&count, base + f->quantifier_offset, sizeof count);
			const char *arr;
			memcpy(&arr, base + f->offset, sizeof arr);
			size_t sz;
			switch (f->type) {
			case PROTOBUF_C_TYPE_UINT64:
			case PROTOBUF_C_TYPE_FIXED64:
				sz = 8;
				break;
			case PROTOBUF_C_TYPE_UINT32:
			case PROTOBUF_C_TYPE_FIXED32:
				sz = 4;
				break;
			case PROTOBUF_C_TYPE_MESSAGE:
				sz = sizeof(void *);
				break;
			default:
				continue;
			}
			for (size_t j = 0; j < count && arr; j++)
				if (value(f, arr + j * sz, name, depth, err, err_len))
					return -1;
			if (f->type == PROTOBUF_C_TYPE_MESSAGE && arr &&
			    proto_is_map_entry(f->descriptor) &&
			    map_keys((const ProtobufCMessage *const *)(const void *)arr, count,
			             name, err, err_len))
				return -1;
		} else {
			if (value(f, base + f->offset, name, depth, err, err_len))
				return -1;
		}
	}
	return 0;
}

static int value(const ProtobufCFieldDescriptor *f, const void *p, const char *path, int depth,
                 char *err, size_t err_len)
{
	switch (f->type) {
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64: {
		uint64_t v;
		memcpy(&v, p, sizeof v);
		if (v > (uint64_t)INT64_MAX && !exempt(f->name)) {
			snprintf(err, err_len, "field %s: %llu is out of range (at most %lld)",
			         path, (unsigned long long)v, (long long)INT64_MAX);
			return -1;
		}
		return 0;
	}
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32: {
		uint32_t v;
		memcpy(&v, p, sizeof v);
		if (v > (uint32_t)INT32_MAX && !exempt(f->name)) {
			snprintf(err, err_len, "field %s: %lu is out of range (at most %d)", path,
			         (unsigned long)v, INT32_MAX);
			return -1;
		}
		return 0;
	}
	case PROTOBUF_C_TYPE_MESSAGE: {
		const ProtobufCMessage *sub;
		memcpy(&sub, p, sizeof sub);
		return sub ? ranges(sub, path, depth + 1, err, err_len) : 0;
	}
	default:
		return 0;
	}
}

int pbcheck_message(const ProtobufCMessage *m, char *err, size_t err_len)
{
	return ranges(m, "", 0, err, err_len);
}
