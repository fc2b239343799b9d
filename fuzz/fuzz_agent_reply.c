/* fuzz_agent_reply.c — how the node agent (and every gpumatch command)
 * reads the server's answers: cl_decode_reply on the answer of the RPC the
 * first byte picks (any method of the contract; the agent's are
 * RegisterNode, Heartbeat, AcquireLease, ReportLease and the probe's), with
 * an HTTP status from the second, then the JSON form the commands print. */
#include <stdint.h>
#include <stdlib.h>

#include "client.h"
#include "gpumatch/v1/registry.h"
#include "pbjson.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2 || !proto_service_count)
		return 0;
	size_t total = 0;
	for (size_t s = 0; s < proto_service_count; s++)
		total += proto_services[s]->n_methods;
	size_t pick = data[0] % total;
	const ProtobufCMessageDescriptor *out = NULL;
	for (size_t s = 0; s < proto_service_count && !out; s++) {
		if (pick < proto_services[s]->n_methods)
			out = proto_services[s]->methods[pick].output;
		else
			pick -= proto_services[s]->n_methods;
	}
	static const int statuses[] = { 200, 400, 401, 404, 409, 429, 500, 503, 504, 0 };
	int status = statuses[data[1] % (sizeof statuses / sizeof statuses[0])];
	struct cl_result r = { 0 };
	cl_decode_reply(out, status, data + 2, size - 2, &r);
	if (r.resp) {
		char *json = pbjson_encode(r.resp, NULL);
		free(json);
	}
	(void)cl_result_final_error(&r);
	cl_result_clear(&r);
	return 0;
}
