/* pbjson.h — the proto3 JSON mapping for any protobuf-c message, driven by
 * its descriptor (no per-message code). Field names: lowerCamelCase on
 * output; both lowerCamelCase and the proto name accepted on input. Enums as
 * their value names (numbers accepted on input), 64-bit integers as strings
 * (numbers accepted on input), bytes as base64, maps (repeated *Entry
 * messages, see proto_is_map_entry) as JSON objects, default values omitted
 * on output, unknown fields rejected. */
#ifndef GPUMATCH_PBJSON_H
#define GPUMATCH_PBJSON_H

#include <stdbool.h>
#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

/* Decodes json[0..len) as a message of type d. On success returns 0 and
 * *out is a message the caller frees with protobuf_c_message_free_unpacked
 * (allocated with the default protobuf-c allocator). On failure returns -1,
 * *out is NULL, and err holds a message naming the field path, e.g.
 * "spec.gpusPerNode: expected an integer, got \"x\"". */
int pbjson_decode(const ProtobufCMessageDescriptor *d, const char *json, size_t len,
                  ProtobufCMessage **out, char *err, size_t err_len);

/* Encodes m as compact JSON. Returns a malloc'd NUL-terminated string the
 * caller frees (length in *len when len is not NULL), or NULL when out of
 * memory. */
/* True when s[0..n) is well-formed UTF-8 (what proto3 requires of string
 * fields, and Postgres of text). */
bool pbjson_valid_utf8(const char *s, size_t n);

char *pbjson_encode(const ProtobufCMessage *m, size_t *len);

#endif
