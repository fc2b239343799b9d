/* fuzz_proto_request.c — every request message of the three services
 * (taken from the service descriptors, so a new RPC is fuzzed without a
 * change here), as the RPC layer decodes it: the wire check for strings
 * (pbcheck_wire), protobuf-c's unpack, the range and map-key check
 * (pbcheck_message), then a pack round trip that must reproduce an equal
 * message, and for what the checks accept, a JSON encoding that decodes. The input's first byte picks the type. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gpumatch/v1/registry.h"
#include "pbcheck.h"
#include "pbjson.h"

static const ProtobufCMessageDescriptor *types[256];
static size_t n_types;

static void collect(void)
{
	for (size_t s = 0; s < proto_service_count; s++) {
		const ProtobufCServiceDescriptor *sd = proto_services[s];
		for (unsigned m = 0; m < sd->n_methods && n_types < 256; m++) {
			types[n_types++] = sd->methods[m].input;
			if (n_types < 256)
				types[n_types++] = sd->methods[m].output;
		}
	}
	if (!n_types)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!n_types)
		collect();
	if (size < 1)
		return 0;
	const ProtobufCMessageDescriptor *d = types[data[0] % n_types];
	data++;
	size--;
	char err[512];
	int wire_bad = pbcheck_wire(d, data, size, err, sizeof err);
	ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, size, data);
	if (!m)
		return 0;
	if (wire_bad) {
		/* refused before unpacking in the server: nothing more to check */
		protobuf_c_message_free_unpacked(m, NULL);
		return 0;
	}
	if (pbcheck_message(m, err, sizeof err) == 0) {
		/* What the server accepts, its JSON encoding must decode back
		 * (a map key given twice is refused above, as JSON refuses it). */
		size_t jl = 0;
		char *json = pbjson_encode(m, &jl);
		if (json) {
			ProtobufCMessage *back = NULL;
			if (pbjson_decode(d, json, jl, &back, err, sizeof err))
				__builtin_trap();
			protobuf_c_message_free_unpacked(back, NULL);
			free(json);
		}
	}
	size_t len = protobuf_c_message_get_packed_size(m);
	uint8_t *buf = malloc(len ? len : 1);
	if (!buf)
		abort();
	if (protobuf_c_message_pack(m, buf) != len)
		__builtin_trap();
	ProtobufCMessage *again = protobuf_c_message_unpack(d, NULL, len, buf);
	if (!again)
		__builtin_trap();
	size_t len2 = protobuf_c_message_get_packed_size(again);
	uint8_t *buf2 = malloc(len2 ? len2 : 1);
	if (!buf2)
		abort();
	protobuf_c_message_pack(again, buf2);
	if (len2 != len || memcmp(buf, buf2, len))
		__builtin_trap();
	free(buf);
	free(buf2);
	protobuf_c_message_free_unpacked(again, NULL);
	protobuf_c_message_free_unpacked(m, NULL);
	return 0;
}
