/* pbcheck.h — what protobuf-c does not check when it unpacks a request,
 * checked at decode time so that no handler sees it and nothing stores it:
 *   - every string field is valid UTF-8 without NUL (protobuf-c copies the
 *     bytes as they came and a NUL silently cuts the C string short);
 *   - every integer fits what the store holds: uint64/fixed64 at most
 *     INT64_MAX (Postgres bigint), uint32/fixed32 at most INT32_MAX
 *     (Postgres integer), except the few fields documented as bit sets or
 *     seeds that are never stored as signed numbers;
 *   - no map holds a key twice.
 * The error names the field by its proto path (e.g. "spec.command"). */
#ifndef GPUMATCH_PBCHECK_H
#define GPUMATCH_PBCHECK_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

/* Walks the binary encoding of a d message in buf[0..len) and checks its
 * string fields (sub-messages included). Malformed encodings are left to
 * protobuf_c_message_unpack. Returns 0, or -1 with err filled. */
int pbcheck_wire(const ProtobufCMessageDescriptor *d, const uint8_t *buf, size_t len, char *err,
                 size_t err_len);

/* Checks a decoded message (sub-messages included): the integer ranges
 * above, and that no map holds a key twice (protobuf-c keeps every entry of
 * a key repeated on the wire; refused as the JSON decoder refuses a key
 * given twice). Returns 0, or -1 with err filled. */
int pbcheck_message(const ProtobufCMessage *m, char *err, size_t err_len);

#endif
