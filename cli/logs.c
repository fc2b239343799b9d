/* logs.c — `gpumatch logs JOB`: a job's output (stdout and stderr merged)
 * through JobService.GetJobLogs, by attempt, the last N lines, and follow
 * mode by long poll until the attempt ends. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "gpumatch/v1/job_service.pb-c.h"

#define TAIL_WINDOW    (1 << 20) /* --tail looks at most this far back */
#define FOLLOW_WAIT_MS 20000

static int parse_count(struct ctx *c, const char *name, uint32_t max, uint32_t *out)
{
	const char *v = opt_str(c, name);
	if (!v)
		return 0;
	char *end;
	unsigned long n = strtoul(v, &end, 10);
	if (!*v || *end || *v == '-' || n > max)
		return usage_error(c, "--%s: expected 0..%u, got \"%s\"", name, max, v);
	*out = (uint32_t)n;
	return 0;
}

/* The last n lines of data[0..len): where they start. */
static size_t tail_start(const uint8_t *data, size_t len, uint32_t n)
{
	if (!len)
		return 0;
	size_t i = len;
	if (data[i - 1] == '\n')
		i--; /* the final newline ends the last line */
	uint32_t seen = 0;
	while (i > 0) {
		if (data[i - 1] == '\n' && ++seen == n)
			return i;
		i--;
	}
	return 0;
}

static bool job_finished(struct ctx *c, uint64_t id)
{
	Gpumatch__V1__GetJobRequest req = GPUMATCH__V1__GET_JOB_REQUEST__INIT;
	req.job_id = id;
	ProtobufCMessage *m;
	if (call_msg(c, "JobService", "GetJob", &req.base, &m))
		return true;
	Gpumatch__V1__GetJobResponse *r = (Gpumatch__V1__GetJobResponse *)m;
	bool done = !r->job || r->job->state >= GPUMATCH__V1__JOB_STATE__JOB_STATE_SUCCEEDED;
	protobuf_c_message_free_unpacked(m, NULL);
	return done;
}

static int run_logs(struct ctx *c)
{
	uint64_t id;
	int rc = pos_id(c, 0, "JOB_ID", &id);
	if (rc)
		return rc;
	uint32_t attempt = 0, gang = 0, tail = 0;
	bool has_tail = opt_str(c, "tail") != NULL;
	if ((rc = parse_count(c, "attempt", 1000000, &attempt)) ||
	    (rc = parse_count(c, "gang-index", 1000000, &gang)) ||
	    (rc = parse_count(c, "tail", 10000000, &tail)))
		return rc;
	bool follow = opt_has(c, "follow");
	int64_t offset = has_tail ? -TAIL_WINDOW : 0;
	uint32_t seen_attempt = 0;
	bool marked = false, first = true;
	for (;;) {
		Gpumatch__V1__GetJobLogsRequest req = GPUMATCH__V1__GET_JOB_LOGS_REQUEST__INIT;
		req.job_id = id;
		req.attempt = attempt;
		req.gang_index = gang;
		req.offset = offset;
		req.max_bytes = has_tail && first ? TAIL_WINDOW : 0;
		req.follow = follow && !first;
		req.wait_ms = FOLLOW_WAIT_MS;
		ProtobufCMessage *m;
		if ((rc = call_msg(c, "JobService", "GetJobLogs", &req.base, &m)))
			return rc;
		Gpumatch__V1__GetJobLogsResponse *r = (Gpumatch__V1__GetJobLogsResponse *)m;
		if (seen_attempt && r->attempt != seen_attempt) {
			/* the job was queued again and runs a new attempt: its own output */
			fprintf(stderr, "gpumatch logs: attempt %u\n", r->attempt);
			seen_attempt = r->attempt;
			offset = 0;
			marked = false;
			protobuf_c_message_free_unpacked(m, NULL);
			continue;
		}
		seen_attempt = r->attempt;
		size_t from = 0;
		if (has_tail && first)
			from = tail_start(r->data.data, r->data.len, tail);
		if (!(has_tail && first && tail == 0) && r->data.len > from)
			fwrite(r->data.data + from, 1, r->data.len - from, stdout);
		fflush(stdout);
		offset = r->next_offset;
		if (r->truncated && !marked && r->next_offset >= r->truncated_at) {
			printf("\n[gpumatch: output truncated at %" PRId64 " bytes; %" PRId64
			       " more bytes were not kept]\n",
			       r->truncated_at, r->total_bytes - r->truncated_at);
			fflush(stdout);
			marked = true;
		}
		bool more = r->data.len > 0;
		bool complete = r->complete;
		protobuf_c_message_free_unpacked(m, NULL);
		first = false;
		if (more && !(has_tail && offset >= 0 && !follow && complete))
			continue;
		if (!follow)
			return EXIT_OK;
		if (complete && (attempt || job_finished(c, id)))
			return EXIT_OK;
		if (complete) {
			/* the attempt ended and the job lives on: wait for the next */
			struct timespec ts = { 1, 0 };
			nanosleep(&ts, NULL);
		}
	}
}

static const struct optdef logs_opts[] = {
	{ "attempt", "N", "which attempt (1-based; default the latest)", false },
	{ "gang-index", "N", "multi-node jobs: which node's part (default 0)", false },
	{ "follow", NULL, "keep printing output as the job writes it, until it ends", false },
	{ "tail", "N", "start with the last N lines (of the last MiB)", false },
	{ 0 },
};

const struct cmd cmds_logs[] = {
	{ "logs", "JOB_ID", "print a job's output (stdout and stderr, merged)", logs_opts, 1, 1,
	  run_logs, false },
	{ 0 },
};
