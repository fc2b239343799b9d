/* fuzz_pbjson.c — the proto3 JSON mapping (proto/pbjson.c): decode a JSON
 * document as the message type the first byte picks (any message of the
 * contract), encode it again, decode that, and require the two decodes to
 * be the same message (64-bit ints, enums, base64, UTF-8, maps, oneofs). */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gpumatch/v1/registry.h"
#include "pbjson.h"

/* Whether d or a message inside it has a map (whose entries JSON may
 * reorder). */
static bool has_map(const ProtobufCMessageDescriptor *d, int depth)
{
	if (depth > 16)
		return true;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		if (f->type != PROTOBUF_C_TYPE_MESSAGE || !f->descriptor)
			continue;
		if (proto_is_map_entry(f->descriptor) || has_map(f->descriptor, depth + 1))
			return true;
	}
	return false;
}

static uint8_t *packed(const ProtobufCMessage *m, size_t *len)
{
	*len = protobuf_c_message_get_packed_size(m);
	uint8_t *b = malloc(*len ? *len : 1);
	if (!b)
		abort();
	protobuf_c_message_pack(m, b);
	return b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || !proto_message_count)
		return 0;
	const ProtobufCMessageDescriptor *d = proto_messages[data[0] % proto_message_count];
	char err[512];
	ProtobufCMessage *m = NULL;
	if (pbjson_decode(d, (const char *)data + 1, size - 1, &m, err, sizeof err)) {
		if (m || !err[0])
			__builtin_trap(); /* a failure names why and leaves nothing */
		return 0;
	}
	size_t jl = 0;
	char *json = pbjson_encode(m, &jl);
	if (!json)
		abort();
	ProtobufCMessage *back = NULL;
	if (pbjson_decode(d, json, jl, &back, err, sizeof err))
		__builtin_trap();
	size_t l1, l2;
	uint8_t *b1 = packed(m, &l1), *b2 = packed(back, &l2);
	/* maps may come back reordered; equal sizes are required, equal bytes
	 * where the type has no map */
	if (l1 != l2)
		__builtin_trap();
	if (!has_map(d, 0) && memcmp(b1, b2, l1))
		__builtin_trap();
	free(b1);
	free(b2);
	free(json);
	protobuf_c_message_free_unpacked(back, NULL);
	protobuf_c_message_free_unpacked(m, NULL);
	return 0;
}
