/* fuzz_policy.c — a scheduling policy as SetPolicy and SimulatePolicy take
 * it: proto3 JSON decoded as gpumatch.v1.Policy, converted to the
 * scheduler's struct (conv_policy_in) and validated
 * (sched_policy_validate); a valid one converts back (conv_policy_out). */
#include <stdint.h>
#include <stdlib.h>

#include "convert.h"
#include "gpumatch/v1/policy.pb-c.h"
#include "pbjson.h"
#include "sched.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[512];
	ProtobufCMessage *m = NULL;
	if (pbjson_decode(&gpumatch__v1__policy__descriptor, (const char *)data, size, &m, err,
	                  sizeof err))
		return 0;
	struct sched_policy p;
	conv_policy_in((const Gpumatch__V1__Policy *)m, &p);
	struct sched_error se;
	if (!sched_policy_validate(&p, &se)) {
		Gpumatch__V1__Policy out = GPUMATCH__V1__POLICY__INIT;
		conv_policy_out(&p, &out);
		char *json = pbjson_encode(&out.base, NULL);
		free(json);
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return 0;
}
