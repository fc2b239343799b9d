/* fuzz_spec.c — the gpumatch command's job spec parser (cli/spec.c): YAML
 * or JSON files (the first byte picks the file name's suffix), the sugar
 * that turns "90m" and friends into the contract's fields, and then the
 * proto3 JSON decode that `gpumatch submit` runs on the result. */
#include <jansson.h>
#include <stdint.h>

#include "cli.h"
#include "fuzz_util.h"
#include "gpumatch/v1/job_service.pb-c.h"
#include "pbjson.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	const char *path = fuzz_tmp_file(data + 1, size - 1, data[0] & 1 ? ".json" : ".yaml");
	if (!path)
		return 0;
	char err[512];
	json_t *j = spec_load(path, err, sizeof err);
	if (!j)
		return 0;
	char *text = json_dumps(j, JSON_COMPACT);
	if (text) {
		ProtobufCMessage *m = NULL;
		if (!pbjson_decode(&gpumatch__v1__submit_job_request__descriptor, text,
		                   strlen(text), &m, err, sizeof err))
			protobuf_c_message_free_unpacked(m, NULL);
		free(text);
	}
	json_decref(j);
	return 0;
}
