/* convert.h — between the API's messages and the scheduling library's
 * specs, including error field names as the API spells them. */
#ifndef GPUMATCH_CONVERT_H
#define GPUMATCH_CONVERT_H

#include <stdbool.h>

#include "gpumatch/v1/admin_service.pb-c.h"
#include "gpumatch/v1/job.pb-c.h"
#include "gpumatch/v1/node.pb-c.h"
#include "gpumatch/v1/policy.pb-c.h"
#include "sched.h"

/* Storage for the strings a converted spec points into. */
struct conv_strings {
	const char *ptrs[3][SCHED_MAX_STRINGS];
	char buf[3][SCHED_MAX_STRINGS][2 * SCHED_MAX_STRING_BYTES + 2];
	struct sched_speed speeds[SCHED_MAX_STRINGS]; /* throughput profile */
	char speed_models[SCHED_MAX_STRINGS][SCHED_MAX_STRING_BYTES + 1];
};

/* Fills out from the API's JobSpec. Returns 0, or -1 with field (API path,
 * e.g. "spec.labelSelector") and msg set when the spec cannot be expressed
 * (too many entries, too long). Range checks are sched_job_validate's. */
int conv_job_spec(const Gpumatch__V1__JobSpec *in, uint64_t job_id, uint64_t tenant_id,
                  int64_t submit_us, struct sched_job_spec *out, struct conv_strings *st,
                  char *field, size_t field_len, char *msg, size_t msg_len);

/* Maps a library field name ("gpus_per_node", "regions[2]") to the API
 * path ("spec.gpusPerNode", "spec.allowedRegions[2]"). */
void conv_job_field(const char *sched_field, char *out, size_t len);

/* Fills out from a Node (facts and state). gpus must hold n->n_gpus. */
int conv_node(const Gpumatch__V1__Node *n, struct sched_node_spec *out, struct sched_gpu_spec *gpus,
              struct conv_strings *st, char *field, size_t field_len, char *msg, size_t msg_len);

/* Policy message <-> library struct. conv_policy_in leaves out unchanged
 * fields that are "unspecified" enums as the library's defaults. */
void conv_policy_in(const Gpumatch__V1__Policy *in, struct sched_policy *out);
void conv_policy_out(const struct sched_policy *in, Gpumatch__V1__Policy *out);
/* "w_price" -> "wPrice" */
void conv_camel(const char *snake, char *out, size_t len);

#endif
