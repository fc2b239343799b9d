/* jobs.c — the tenant's commands: submit, get, list, watch, cancel,
 * explain, usage (JobService). */
#include <ctype.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "client.h"
#include "gpumatch/v1/job_service.pb-c.h"

static const struct col job_cols[] = {
	{ "ID", "id", F_STR },
	{ "NAME", "name", F_STR },
	{ "STATE", "state", F_ENUM },
	{ "KIND", "spec.kind", F_ENUM },
	{ "GPUS", "gpusTotal", F_NUM },
	{ "ATTEMPTS", "attempts", F_NUM },
	{ "SUBMITTED", "submittedAtUs", F_TIME },
	{ "COST", "costMicros", F_MONEY },
};

static const struct col job_fields[] = {
	{ "ID", "id", F_STR },
	{ "NAME", "name", F_STR },
	{ "TENANT", "tenantId", F_STR },
	{ "STATE", "state", F_ENUM },
	{ "KIND", "spec.kind", F_ENUM },
	{ "GPUS PER NODE", "spec.gpusPerNode", F_NUM },
	{ "NODE COUNT", "nodeCountShown", F_NUM },
	{ "PRIORITY", "spec.priorityClass", F_ENUM },
	{ "MAX DURATION", "spec.maxDurationUs", F_DUR },
	{ "MAX PRICE/GPU-H", "maxPriceShown", F_STR },
	{ "CONSTRAINTS", "constraintsShown", F_STR },
	{ "IMAGE", "spec.image", F_STR },
	{ "COMMAND", "spec.command", F_LIST },
	{ "NODES", "nodesShown", F_STR },
	{ "PHASE", "placement[].phase", F_LIST },
	{ "IMAGE DIGEST", "placement[].imageDigest", F_LIST },
	{ "GPU INDEXES", "gpusShown", F_STR },
	{ "ATTEMPTS", "attempts", F_NUM },
	{ "SUBMITTED", "submittedAtUs", F_TIME },
	{ "STARTED", "startedAtUs", F_TIME },
	{ "ENDED", "endedAtUs", F_TIME },
	{ "FAILURE", "failure.reason", F_ENUM },
	{ "EXIT CODE", "exitShown", F_STR },
	{ "MESSAGE", "failure.message", F_STR },
	{ "COST", "costMicros", F_MONEY },
	{ "PENDING", "explanation.summary", F_STR },
};

static void random_key(char *out, size_t len)
{
	unsigned char r[12] = { 0 };
	int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || read(fd, r, sizeof r) != (ssize_t)sizeof r) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		snprintf(out, len, "cli-%ld-%ld-%d", (long)ts.tv_sec, ts.tv_nsec, (int)getpid());
	} else {
		size_t n = (size_t)snprintf(out, len, "cli-");
		for (size_t i = 0; i < sizeof r && n + 3 < len; i++)
			n += (size_t)snprintf(out + n, len - n, "%02x", r[i]);
	}
	if (fd >= 0)
		close(fd);
}

/* Splits "k=v" flags into o[key] = value. */
static int kv_flags(struct ctx *c, const char *flag, json_t *o)
{
	const char *vals[64];
	size_t n = opt_all(c, flag, vals, NELEM(vals));
	for (size_t i = 0; i < n; i++) {
		const char *eq = strchr(vals[i], '=');
		if (!eq || eq == vals[i])
			return usage_error(c, "--%s: expected KEY=VALUE, got \"%s\"", flag,
			                   vals[i]);
		char k[256];
		snprintf(k, sizeof k, "%.*s", (int)(eq - vals[i]), vals[i]);
		json_object_set_new(o, k, json_string(eq + 1));
	}
	return EXIT_OK;
}

static json_t *obj_at(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	if (!json_is_object(v)) {
		v = json_object();
		json_object_set_new(o, key, v);
	}
	return v;
}

static int watch_job(struct ctx *c, uint64_t id, const Gpumatch__V1__Job *first);

static int run_submit(struct ctx *c)
{
	char err[600];
	json_t *req;
	if (c->npos == 1) {
		c->input_file = c->pos[0];
		req = spec_load(c->pos[0], err, sizeof err);
		if (!req) {
			fprintf(stderr, "gpumatch submit: %s\n", err);
			return EXIT_USAGE;
		}
	} else {
		req = json_object();
		json_object_set_new(req, "spec", json_object());
	}
	json_t *spec = json_object_get(req, "spec");
	const char *v;
	int rc = EXIT_OK;
	if ((v = opt_str(c, "name")))
		json_object_set_new(req, "name", json_string(v));
	if ((v = opt_str(c, "idempotency-key")))
		json_object_set_new(req, "idempotencyKey", json_string(v));
	if (!json_object_get(req, "idempotencyKey") && !json_object_get(req, "idempotency_key")) {
		char key[64];
		random_key(key, sizeof key);
		json_object_set_new(req, "idempotencyKey", json_string(key));
	}
	if ((v = opt_str(c, "kind")))
		json_object_set_new(spec, "kind", enum_arg("JOB_KIND_", v));
	if ((v = opt_str(c, "gpus")))
		json_object_set_new(spec, "gpusPerNode", json_string(v));
	if ((v = opt_str(c, "nodes")))
		json_object_set_new(spec, "nodeCount", json_string(v));
	if ((v = opt_str(c, "min-memory-mib")))
		json_object_set_new(spec, "minGpuMemoryMib", json_string(v));
	if ((v = opt_str(c, "priority")))
		json_object_set_new(spec, "priorityClass", enum_arg("PRIORITY_CLASS_", v));
	if ((v = opt_str(c, "precision")))
		json_object_set_new(spec, "precision", enum_arg("PRECISION_", v));
	if (opt_has(c, "preemptible"))
		json_object_set_new(spec, "preemptible", json_true());
	if (opt_has(c, "nvlink"))
		json_object_set_new(spec, "requireNvlink", json_true());
	if ((v = opt_str(c, "min-cc"))) {
		/* "8.0" -> major 8, minor 0 */
		unsigned maj = 0, min = 0;
		char tail = 0;
		int n = sscanf(v, "%u.%u%c", &maj, &min, &tail);
		if (n != 2 || maj == 0 || maj > 99 || min > 9)
			rc = usage_error(c,
			                 "--min-cc: expected a compute capability such as 8.0, got "
			                 "\"%s\"",
			                 v);
		json_object_set_new(spec, "minComputeCapabilityMajor", json_integer(maj));
		json_object_set_new(spec, "minComputeCapabilityMinor", json_integer(min));
	}
	if ((v = opt_str(c, "min-tflops")))
		json_object_set_new(spec, "minTflopsPerGpu", json_string(v));
	if ((v = opt_str(c, "min-tflops-total")))
		json_object_set_new(spec, "minTflopsTotal", json_string(v));
	const char *tols[32];
	size_t nt = opt_all(c, "toleration", tols, NELEM(tols));
	if (nt) {
		/* KEY (any value, any effect) or KEY=VALUE */
		json_t *a = json_array();
		for (size_t i = 0; i < nt; i++) {
			const char *eq = strchr(tols[i], '=');
			json_t *t = json_object();
			if (eq) {
				json_object_set_new(t, "key",
				                    json_stringn(tols[i], (size_t)(eq - tols[i])));
				json_object_set_new(t, "value", json_string(eq + 1));
				json_object_set_new(t, "match",
				                    json_string("TOLERATION_MATCH_EQUAL"));
			} else {
				json_object_set_new(t, "key", json_string(tols[i]));
				json_object_set_new(t, "match",
				                    json_string("TOLERATION_MATCH_EXISTS"));
			}
			json_array_append_new(a, t);
		}
		json_object_set_new(spec, "tolerations", a);
	}
	if ((v = opt_str(c, "image")))
		json_object_set_new(spec, "image", json_string(v));
	if ((v = opt_str(c, "workdir")))
		json_object_set_new(spec, "workingDir", json_string(v));
	if ((v = opt_str(c, "duration"))) {
		int64_t us = parse_duration_us(v);
		if (us <= 0)
			rc = usage_error(c,
			                 "--duration: expected a duration such as 90m or 2h, got "
			                 "\"%s\"",
			                 v);
		json_object_del(spec, "max_duration_us");
		json_object_set_new(spec, "maxDurationUs", jint64(us));
	}
	if (!rc && (v = opt_str(c, "max-price"))) {
		int64_t m;
		if (parse_money_micros(v, &m))
			rc = usage_error(
			    c, "--max-price: expected an amount such as 2.50, got \"%s\"", v);
		json_object_set_new(spec, "maxPricePerGpuHourMicros", jint64(m));
	}
	const char *regions[32];
	size_t nr = opt_all(c, "region", regions, NELEM(regions));
	if (nr) {
		json_t *a = json_array();
		for (size_t i = 0; i < nr; i++)
			json_array_append_new(a, json_string(regions[i]));
		json_object_set_new(spec, "allowedRegions", a);
	}
	if (!rc)
		rc = kv_flags(c, "label", obj_at(spec, "labelSelector"));
	if (!rc)
		rc = kv_flags(c, "env", obj_at(spec, "env"));
	if (!json_object_size(json_object_get(spec, "labelSelector")))
		json_object_del(spec, "labelSelector");
	if (!json_object_size(json_object_get(spec, "env")))
		json_object_del(spec, "env");
	if (c->nrest) {
		json_t *a = json_array();
		for (int i = 0; i < c->nrest; i++)
			json_array_append_new(a, json_string(c->rest[i]));
		json_object_set_new(spec, "command", a);
	}
	if (!rc && c->npos == 0) {
		/* flags alone: what a spec file would have to say */
		if (!json_object_get(spec, "gpusPerNode"))
			json_object_set_new(spec, "gpusPerNode", json_integer(1));
		if (!json_object_get(spec, "maxDurationUs"))
			rc = usage_error(c, "--duration is required without a spec file");
		else if (!json_object_get(spec, "command") && !json_object_get(spec, "image"))
			rc = usage_error(c, "give a spec file, or the command after \"--\"");
	}
	if (rc) {
		json_decref(req);
		return rc;
	}
	ProtobufCMessage *m;
	rc = call_json(c, "JobService", "SubmitJob", req, &m);
	if (rc)
		return rc;
	Gpumatch__V1__SubmitJobResponse *r = (Gpumatch__V1__SubmitJobResponse *)m;
	uint64_t id = r->job ? r->job->id : 0;
	if (c->json && !opt_has(c, "watch"))
		out_json(m);
	else
		printf("%" PRIu64 "\n", id);
	if (!r->created)
		fprintf(stderr,
		        "gpumatch submit: the idempotency key was used before; this is job "
		        "%" PRIu64 " from then\n",
		        id);
	if (opt_has(c, "watch")) {
		rc = watch_job(c, id, r->created ? r->job : NULL);
		protobuf_c_message_free_unpacked(m, NULL);
		return rc;
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return EXIT_OK;
}

static int get_job(struct ctx *c, uint64_t id, Gpumatch__V1__GetJobResponse **out)
{
	Gpumatch__V1__GetJobRequest req = GPUMATCH__V1__GET_JOB_REQUEST__INIT;
	req.job_id = id;
	return call_msg(c, "JobService", "GetJob", &req.base, (ProtobufCMessage **)out);
}

/* Appends printf text to a growing string in buf. */
static void cat_text(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void cat_text(char *buf, size_t len, const char *fmt, ...)
{
	size_t used = strlen(buf);
	if (used + 1 >= len)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf + used, len - used, fmt, ap);
	va_end(ap);
}

/* "node 3: 0,1; node 5: 2" from a placement array (NULL or empty: "") */
static void placement_text(json_t *pl, bool gpus, char *buf, size_t len)
{
	size_t i;
	json_t *p;
	buf[0] = '\0';
	json_array_foreach(pl, i, p)
	{
		const char *node = json_string_value(json_object_get(p, "nodeId"));
		if (!gpus) {
			cat_text(buf, len, "%s%s", i ? "," : "", node ? node : "?");
			continue;
		}
		cat_text(buf, len, "%snode %s: ", i ? "; " : "", node ? node : "?");
		size_t k;
		json_t *g;
		json_array_foreach(json_object_get(p, "gpuIndexes"), k, g) cat_text(
		    buf, len, "%s%" JSON_INTEGER_FORMAT, k ? "," : "", json_integer_value(g));
	}
}

/* Fields a person reads in `get` and `list` that the message does not
 * hold as such: total GPUs, the node count (1 when unset), the price cap
 * ("no cap" when unset), the constraints, the placement (the last
 * attempt's once the job has ended), the exit status once it has one. */
static void job_shown(json_t *job)
{
	json_t *spec = json_object_get(job, "spec");
	json_int_t per = json_integer_value(json_object_get(spec, "gpusPerNode"));
	json_int_t nodes = json_integer_value(json_object_get(spec, "nodeCount"));
	if (nodes < 1)
		nodes = 1;
	json_object_set_new(job, "nodeCountShown", json_integer(nodes));
	json_object_set_new(job, "gpusTotal", json_integer(per * nodes));
	const char *cap = json_string_value(json_object_get(spec, "maxPricePerGpuHourMicros"));
	char b[1024];
	if (cap && strtoll(cap, NULL, 10) > 0)
		money_text(strtoll(cap, NULL, 10), b, sizeof b);
	else
		snprintf(b, sizeof b, "no cap");
	json_object_set_new(job, "maxPriceShown", json_string(b));

	b[0] = '\0';
	json_t *v;
	if (json_is_integer(v = json_object_get(spec, "minGpuMemoryMib")))
		cat_text(b, sizeof b, "%smemory >= %" JSON_INTEGER_FORMAT " MiB", *b ? ", " : "",
		         json_integer_value(v));
	json_int_t ccmaj = json_integer_value(json_object_get(spec, "minComputeCapabilityMajor"));
	if (ccmaj)
		cat_text(b, sizeof b,
		         "%scompute capability >= %" JSON_INTEGER_FORMAT ".%" JSON_INTEGER_FORMAT,
		         *b ? ", " : "", ccmaj,
		         json_integer_value(json_object_get(spec, "minComputeCapabilityMinor")));
	const char *prec = json_string_value(json_object_get(spec, "precision"));
	if (prec) {
		char e[64];
		snprintf(e, sizeof e, "%s", prec + (strncmp(prec, "PRECISION_", 10) ? 0 : 10));
		for (char *q = e; *q; q++)
			*q = (char)tolower((unsigned char)*q);
		cat_text(b, sizeof b, "%s%s", *b ? ", " : "", e);
	}
	if ((v = json_object_get(spec, "minTflopsPerGpu")) && json_number_value(v) > 0)
		cat_text(b, sizeof b, "%s>= %g TFLOPS per GPU", *b ? ", " : "",
		         json_number_value(v));
	if ((v = json_object_get(spec, "minTflopsTotal")) && json_number_value(v) > 0)
		cat_text(b, sizeof b, "%s>= %g TFLOPS in all", *b ? ", " : "",
		         json_number_value(v));
	if (json_is_true(json_object_get(spec, "requireNvlink")))
		cat_text(b, sizeof b, "%sNVLink", *b ? ", " : "");
	json_t *regions = json_object_get(spec, "allowedRegions");
	if (json_array_size(regions)) {
		cat_text(b, sizeof b, "%sregions ", *b ? ", " : "");
		size_t i;
		json_array_foreach(regions, i, v)
		    cat_text(b, sizeof b, "%s%s", i ? "|" : "", json_string_value(v));
	}
	const char *key;
	json_object_foreach(json_object_get(spec, "labelSelector"), key, v)
	    cat_text(b, sizeof b, "%slabel %s=%s", *b ? ", " : "", key, json_string_value(v));
	size_t nt = json_array_size(json_object_get(spec, "tolerations"));
	if (nt)
		cat_text(b, sizeof b, "%s%zu toleration%s", *b ? ", " : "", nt, nt == 1 ? "" : "s");
	if (json_is_true(json_object_get(spec, "preemptible")))
		cat_text(b, sizeof b, "%spreemptible", *b ? ", " : "");
	json_object_set_new(job, "constraintsShown", json_string(*b ? b : "none"));

	json_t *pl = json_object_get(job, "placement");
	if (!json_array_size(pl)) {
		json_t *hist = json_object_get(job, "attemptHistory");
		size_t n = json_array_size(hist);
		if (n)
			pl = json_object_get(json_array_get(hist, n - 1), "placement");
	}
	placement_text(pl, false, b, sizeof b);
	json_object_set_new(job, "nodesShown", json_string(*b ? b : "-"));
	placement_text(pl, true, b, sizeof b);
	json_object_set_new(job, "gpusShown", json_string(*b ? b : "-"));

	/* an exit status exists only once the job has ended */
	json_t *f = json_object_get(job, "failure");
	const char *state = json_string_value(json_object_get(job, "state"));
	bool ended = json_integer_value(json_object_get(job, "endedAtUs")) ||
	             json_string_value(json_object_get(job, "endedAtUs"));
	if (!ended)
		snprintf(b, sizeof b, "-");
	else if (json_integer_value(json_object_get(f, "termSignal")))
		snprintf(b, sizeof b, "killed by signal %" JSON_INTEGER_FORMAT,
		         json_integer_value(json_object_get(f, "termSignal")));
	else if (f || (state && !strcmp(state, "JOB_STATE_SUCCEEDED")))
		snprintf(b, sizeof b, "%" JSON_INTEGER_FORMAT,
		         json_integer_value(json_object_get(f, "exitCode")));
	else
		snprintf(b, sizeof b, "-");
	json_object_set_new(job, "exitShown", json_string(b));
}

static int run_get(struct ctx *c)
{
	uint64_t id;
	int rc = pos_id(c, 0, "JOB_ID", &id);
	Gpumatch__V1__GetJobResponse *r;
	if (rc || (rc = get_job(c, id, &r)))
		return rc;
	if (c->json) {
		out_json(&r->base);
	} else {
		json_t *j = msg_to_json(&r->base);
		json_t *job = json_object_get(j, "job");
		if (job) {
			job_shown(job);
			out_fields(job, job_fields, NELEM(job_fields));
		}
		json_decref(j);
	}
	protobuf_c_message_free_unpacked(&r->base, NULL);
	return EXIT_OK;
}

static int run_list(struct ctx *c)
{
	json_t *req = json_object();
	const char *states[16], *v;
	size_t ns = opt_all(c, "state", states, NELEM(states));
	if (ns) {
		json_t *a = json_array();
		for (size_t i = 0; i < ns; i++)
			json_array_append_new(a, enum_arg("JOB_STATE_", states[i]));
		json_object_set_new(req, "states", a);
	}
	if ((v = opt_str(c, "tenant"))) {
		int trc = tenant_ref(c, "tenant", v, req, "tenantId");
		if (trc) {
			json_decref(req);
			return trc;
		}
	}
	if ((v = opt_str(c, "page-size")))
		json_object_set_new(req, "pageSize", json_string(v));
	if ((v = opt_str(c, "page-token")))
		json_object_set_new(req, "pageToken", json_string(v));
	int rc = set_window_since(c, req, "submitted");
	if (rc) {
		json_decref(req);
		return rc;
	}
	if (!opt_has(c, "all")) {
		ProtobufCMessage *m;
		if ((rc = call_json(c, "JobService", "ListJobs", req, &m)))
			return rc;
		if (c->json) {
			out_json(m);
		} else {
			json_t *j = msg_to_json(m);
			json_t *jobs = json_object_get(j, "jobs");
			size_t i;
			json_t *job;
			json_array_foreach(jobs, i, job) job_shown(job);
			out_table(jobs, job_cols, NELEM(job_cols));
			const char *next = json_string_value(json_object_get(j, "nextPageToken"));
			if (next && *next)
				fprintf(stderr, "(more: --page-token %s)\n", next);
			json_decref(j);
		}
		protobuf_c_message_free_unpacked(m, NULL);
		return EXIT_OK;
	}
	/* --all: every page, printed as one list */
	json_t *all = json_array();
	for (;;) {
		ProtobufCMessage *m;
		if ((rc = call_json(c, "JobService", "ListJobs", json_deep_copy(req), &m)))
			break;
		json_t *j = msg_to_json(m);
		protobuf_c_message_free_unpacked(m, NULL);
		json_array_extend(all, json_object_get(j, "jobs") ? json_object_get(j, "jobs")
		                                                  : json_array());
		const char *next = json_string_value(json_object_get(j, "nextPageToken"));
		if (!next || !*next) {
			json_decref(j);
			break;
		}
		json_object_set_new(req, "pageToken", json_string(next));
		json_decref(j);
	}
	json_decref(req);
	if (!rc) {
		if (c->json) {
			json_t *o = json_pack("{s:O}", "jobs", all);
			char *s = json_dumps(o, JSON_INDENT(2));
			printf("%s\n", s ? s : "{}");
			free(s);
			json_decref(o);
		} else {
			size_t i;
			json_t *job;
			json_array_foreach(all, i, job) job_shown(job);
			out_table(all, job_cols, NELEM(job_cols));
		}
	}
	json_decref(all);
	return rc;
}

static int outcome_exit(Gpumatch__V1__JobState s)
{
	switch (s) {
	case GPUMATCH__V1__JOB_STATE__JOB_STATE_SUCCEEDED:
		return EXIT_OK;
	case GPUMATCH__V1__JOB_STATE__JOB_STATE_FAILED:
		return EXIT_JOB_FAILED;
	case GPUMATCH__V1__JOB_STATE__JOB_STATE_CANCELLED:
	case GPUMATCH__V1__JOB_STATE__JOB_STATE_PREEMPTED:
		return EXIT_JOB_STOPPED;
	default:
		return -1;
	}
}

static const char *state_name(Gpumatch__V1__JobState s)
{
	const ProtobufCEnumValue *v =
	    protobuf_c_enum_descriptor_get_value(&gpumatch__v1__job_state__descriptor, (int)s);
	return v ? v->name + strlen("JOB_STATE_") : "?";
}

/* One line (or one JSON object) for a job state seen by watch. */
static void watch_print(const struct ctx *c, uint64_t id, const Gpumatch__V1__Job *j)
{
	if (c->json) {
		json_t *jj = msg_to_json(&j->base);
		char *s = json_dumps(jj, JSON_COMPACT);
		printf("%s\n", s ? s : "{}");
		free(s);
		json_decref(jj);
	} else {
		char when[32];
		time_t t = time(NULL);
		struct tm tm;
		gmtime_r(&t, &tm);
		strftime(when, sizeof when, "%H:%M:%S", &tm);
		printf("%s job %" PRIu64 " %s", when, id, state_name(j->state));
		if (j->n_placement) {
			printf(" nodes=");
			for (size_t i = 0; i < j->n_placement; i++)
				printf("%s%" PRIu64, i ? "," : "", j->placement[i]->node_id);
		}
		const char *phase =
		    j->n_placement && j->placement[0]->phase ? j->placement[0]->phase : "";
		if (*phase)
			printf(" phase=%s", phase);
		if (j->attempts > 1)
			printf(" attempt=%u", j->attempts);
		if (j->failure && j->failure->reason) {
			const ProtobufCEnumValue *fv = protobuf_c_enum_descriptor_get_value(
			    &gpumatch__v1__failure_reason__descriptor, (int)j->failure->reason);
			printf(" failure=%s", fv ? fv->name + 15 : "?");
			if (j->failure->exit_code)
				printf(" exit_code=%d", j->failure->exit_code);
			if (j->failure->term_signal)
				printf(" signal=%d", j->failure->term_signal);
		}
		printf("\n");
	}
}

/* Polls the job and prints each change until it ends. first: the job as
 * SubmitJob answered (submit --watch), printed first, so the QUEUED line
 * shows however fast the job is placed; NULL for watch. */
static int watch_job(struct ctx *c, uint64_t id, const Gpumatch__V1__Job *first)
{
	double interval = 1.0;
	const char *v = opt_str(c, "interval");
	if (v) {
		int64_t us = parse_duration_us(v);
		if (us < 10000)
			return usage_error(c,
			                   "--interval: expected a duration of at least 10ms, got "
			                   "\"%s\"",
			                   v);
		interval = (double)us / 1e6;
	}
	int last_state = -1;
	uint32_t last_attempts = 0;
	char last_phase[32] = "";
	int unreachable = 0;
	char last_summary[256] = "";
	if (first) {
		watch_print(c, id, first);
		last_state = (int)first->state;
		last_attempts = first->attempts;
	}
	for (;;) {
		Gpumatch__V1__GetJobResponse *r;
		int rc = get_job(c, id, &r);
		if (rc == EXIT_UNREACHABLE && ++unreachable < 30) {
			/* ride out a server restart: keep asking for a while */
			struct timespec ts = { 1, 0 };
			nanosleep(&ts, NULL);
			continue;
		}
		if (rc)
			return rc;
		unreachable = 0;
		Gpumatch__V1__Job *j = r->job;
		const char *phase =
		    j && j->n_placement && j->placement[0]->phase ? j->placement[0]->phase : "";
		if (j && ((int)j->state != last_state || j->attempts != last_attempts ||
		          strcmp(phase, last_phase))) {
			last_state = (int)j->state;
			last_attempts = j->attempts;
			snprintf(last_phase, sizeof last_phase, "%s", phase);
			watch_print(c, id, j);
		} else if (j && !c->json && j->state == GPUMATCH__V1__JOB_STATE__JOB_STATE_QUEUED &&
		           j->explanation && j->explanation->summary && *j->explanation->summary &&
		           strncmp(last_summary, j->explanation->summary,
		                   sizeof last_summary - 1)) {
			/* still waiting: why, once the scheduler has looked at it
			 * (the QUEUED line itself never waits for a cycle, so it
			 * reads the same however fast the job is placed) */
			snprintf(last_summary, sizeof last_summary, "%s", j->explanation->summary);
			char when[32];
			time_t t = time(NULL);
			struct tm tm;
			gmtime_r(&t, &tm);
			strftime(when, sizeof when, "%H:%M:%S", &tm);
			printf("%s job %" PRIu64 " waiting: %s\n", when, id,
			       j->explanation->summary);
		}
		int done = j ? outcome_exit(j->state) : EXIT_SERVER;
		protobuf_c_message_free_unpacked(&r->base, NULL);
		if (done >= 0)
			return done;
		struct timespec ts = { (time_t)interval,
			               (long)((interval - (double)(time_t)interval) * 1e9) };
		nanosleep(&ts, NULL);
	}
}

static int run_watch(struct ctx *c)
{
	uint64_t id;
	int rc = pos_id(c, 0, "JOB_ID", &id);
	return rc ? rc : watch_job(c, id, NULL);
}

static int run_cancel(struct ctx *c)
{
	uint64_t id;
	int rc = pos_id(c, 0, "JOB_ID", &id);
	if (rc)
		return rc;
	Gpumatch__V1__CancelJobRequest req = GPUMATCH__V1__CANCEL_JOB_REQUEST__INIT;
	req.job_id = id;
	req.reason = (char *)(opt_str(c, "reason") ? opt_str(c, "reason") : "cancelled by tenant");
	Gpumatch__V1__CancelJobResponse *r;
	if ((rc = call_msg(c, "JobService", "CancelJob", &req.base, (ProtobufCMessage **)&r)))
		return rc;
	if (c->json)
		out_json(&r->base);
	else
		printf("job %" PRIu64 " %s\n", id, r->job ? state_name(r->job->state) : "?");
	protobuf_c_message_free_unpacked(&r->base, NULL);
	return EXIT_OK;
}

static int run_explain(struct ctx *c)
{
	uint64_t id;
	int rc = pos_id(c, 0, "JOB_ID", &id);
	if (rc)
		return rc;
	Gpumatch__V1__ExplainJobRequest req = GPUMATCH__V1__EXPLAIN_JOB_REQUEST__INIT;
	req.job_id = id;
	Gpumatch__V1__ExplainJobResponse *r;
	if ((rc = call_msg(c, "JobService", "ExplainJob", &req.base, (ProtobufCMessage **)&r)))
		return rc;
	if (c->json) {
		out_json(&r->base);
	} else if (!r->explanation) {
		printf("job %" PRIu64 " is %s: nothing pending to explain\n", id,
		       state_name(r->state));
	} else {
		Gpumatch__V1__Explanation *e = r->explanation;
		printf("job %" PRIu64 " is %s", id, state_name(r->state));
		if (e->queue_position)
			printf(", queue position %u, priority %.4f", e->queue_position,
			       e->priority);
		/* each fact once, in words (the server's one-line summary says
		 * the same for logs and stays in -o json) */
		printf("\n%u of %u node%s fit%s now", e->fit_nodes, e->total_nodes,
		       e->total_nodes == 1 ? "" : "s", e->fit_nodes == 1 ? "s" : "");
		if (e->gang_nodes > 1)
			printf("; it needs %u nodes in one region, and at most %u fit%s in any one "
			       "region",
			       e->gang_nodes, e->best_region_fit,
			       e->best_region_fit == 1 ? "s" : "");
		printf("\n");
		if (!e->fleet_feasible)
			printf("even with every node idle it could not start: %s\n",
			       e->gang_nodes > 1 ? "no region has enough nodes that meet its "
			                           "constraints"
			                         : "no node meets its constraints");
		if (e->reservation && e->reservation->n_node_ids)
			printf("it holds a reservation on %zu node%s\n", e->reservation->n_node_ids,
			       e->reservation->n_node_ids == 1 ? "" : "s");
		printf("\n");
		json_t *j = msg_to_json(&e->base);
		static const struct col cols[] = {
			{ "REASON", "reason", F_ENUM },
			{ "NODES", "nodeCount", F_NUM },
			{ "DETAIL", "text", F_STR },
		};
		out_table(json_object_get(j, "counts"), cols, NELEM(cols));
		json_decref(j);
	}
	protobuf_c_message_free_unpacked(&r->base, NULL);
	return EXIT_OK;
}

static int run_usage(struct ctx *c)
{
	json_t *req = json_object();
	const char *v;
	if ((v = opt_str(c, "tenant"))) {
		int trc = tenant_ref(c, "tenant", v, req, "tenantId");
		if (trc) {
			json_decref(req);
			return trc;
		}
	}
	int rc = set_window_since(c, req, "window");
	if (rc) {
		json_decref(req);
		return rc;
	}
	ProtobufCMessage *m;
	if ((rc = call_json(c, "JobService", "GetSpend", req, &m)))
		return rc;
	static const struct col cols[] = {
		{ "TENANT", "tenant.name", F_STR },
		{ "TENANT ID", "tenant.id", F_STR },
		{ "BALANCE", "account.balanceMicros", F_MONEY },
		{ "HELD", "account.pendingDebitsMicros", F_MONEY },
		{ "SPEND", "spend.spendMicros", F_MONEY },
		{ "TOPPED UP", "spend.toppedUpMicros", F_MONEY },
		{ "GPU SECONDS", "spend.gpuSeconds", F_NUM },
		{ "JOBS", "spend.jobs", F_NUM },
		{ "FROM", "window.startUs", F_TIME },
		{ "TO", "window.endUs", F_TIME },
	};
	out_reply(c, m, NULL, "", cols, NELEM(cols));
	protobuf_c_message_free_unpacked(m, NULL);
	return EXIT_OK;
}

static const struct optdef submit_opts[] = {
	{ "name", "NAME", "display name (overrides the file's)", false },
	{ "idempotency-key", "KEY", "retry-safe key (default: a random one)", false },
	{ "kind", "KIND", "training, inference or batch", false },
	{ "gpus", "N", "GPUs per node (default 1)", false },
	{ "nodes", "N", "nodes of a multi-node gang (default 1)", false },
	{ "min-memory-mib", "MIB", "minimum memory per GPU", false },
	{ "precision", "P", "fp32, tf32, fp16, bf16 or fp8", false },
	{ "duration", "DUR", "max duration per attempt, e.g. 90m (required without a file)",
	  false },
	{ "max-price", "AMOUNT", "max price per GPU-hour, e.g. 2.50", false },
	{ "priority", "CLASS", "best-effort, low, normal, high or critical", false },
	{ "preemptible", NULL, "may be preempted for higher-class work", false },
	{ "nvlink", NULL, "GPUs of a node must share an NVLink domain", false },
	{ "min-cc", "X.Y", "minimum compute capability, e.g. 8.0", false },
	{ "min-tflops", "N", "minimum verified TFLOPS per GPU in --precision", false },
	{ "min-tflops-total", "N", "minimum verified TFLOPS of the whole job", false },
	{ "toleration", "KEY[=VALUE]", "tolerate a node taint (any effect)", true },
	{ "region", "REGION", "allowed region", true },
	{ "label", "KEY=VALUE", "node label the job needs", true },
	{ "env", "KEY=VALUE", "environment variable for the job", true },
	{ "workdir", "DIR", "working directory on the node", false },
	{ "image", "IMAGE", "OCI image (agents that run containers)", false },
	{ "watch", NULL, "follow the job until it ends (exit code as watch)", false },
	{ "interval", "DUR", "with --watch: poll interval (default 1s)", false },
	{ 0 },
};
static const struct optdef list_opts[] = {
	{ "state", "STATE", "only jobs in this state (queued, running, ...)", true },
	{ "tenant", "ID|NAME", "admins: one tenant's jobs", false },
	{ "since", "DUR", "submitted within this long, e.g. 24h", false },
	{ "page-size", "N", "jobs per page (default 50)", false },
	{ "page-token", "TOKEN", "the page after a previous listing", false },
	{ "all", NULL, "follow every page", false },
	{ 0 },
};
static const struct optdef watch_opts[] = {
	{ "interval", "DUR", "poll interval (default 1s)", false },
	{ 0 },
};
static const struct optdef cancel_opts[] = {
	{ "reason", "TEXT", "recorded with the job", false },
	{ 0 },
};
static const struct optdef usage_opts[] = {
	{ "since", "DUR", "window: the last DUR (default 30d)", false },
	{ "tenant", "ID|NAME", "admins: one tenant", false },
	{ 0 },
};
static const struct optdef no_opts[] = { { 0 } };

const struct cmd cmds_jobs[] = {
	{ "submit", "[SPEC_FILE]",
	  "submit a job from a YAML or JSON spec file (docs/jobs.md) or from flags; prints its id",
	  submit_opts, 0, 1, run_submit, true },
	{ "get", "JOB_ID", "show one job", no_opts, 1, 1, run_get, false },
	{ "list", "", "list jobs, newest first", list_opts, 0, 0, run_list, false },
	{ "watch", "JOB_ID",
	  "follow a job's state until it ends; exit 0 succeeded, 4 failed, 5 cancelled/preempted",
	  watch_opts, 1, 1, run_watch, false },
	{ "cancel", "JOB_ID", "cancel a job", cancel_opts, 1, 1, run_cancel, false },
	{ "explain", "JOB_ID", "why a job is pending, per constraint", no_opts, 1, 1, run_explain,
	  false },
	{ "usage", "", "own balance and spend", usage_opts, 0, 0, run_usage, false },
	{ 0 },
};
