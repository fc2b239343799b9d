/* jobs.c — the tenant's commands: submit, get, list, watch, cancel,
 * explain, usage (JobService). */
#include <ctype.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "client.h"
#include "gpumatch/v1/job_service.pb-c.h"

/* "queued" -> "JOB_STATE_QUEUED"; a full name passes unchanged. */
json_t *enum_arg(const char *prefix, const char *v)
{
	char b[128];
	size_t pl = strlen(prefix);
	size_t n = 0;
	if (strncasecmp(v, prefix, pl)) {
		n = (size_t)snprintf(b, sizeof b, "%s", prefix);
	}
	for (const char *p = v; *p && n + 1 < sizeof b; p++)
		b[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
	b[n] = '\0';
	return json_string(b);
}

static const struct col job_cols[] = {
	{ "ID", "id", F_STR },
	{ "NAME", "name", F_STR },
	{ "STATE", "state", F_ENUM },
	{ "KIND", "spec.kind", F_ENUM },
	{ "GPUS", "spec.gpusPerNode", F_NUM },
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
	{ "NODE COUNT", "spec.nodeCount", F_NUM },
	{ "PRIORITY", "spec.priorityClass", F_ENUM },
	{ "MAX DURATION", "spec.maxDurationUs", F_DUR },
	{ "MAX PRICE/GPU-H", "spec.maxPricePerGpuHourMicros", F_MONEY },
	{ "IMAGE", "spec.image", F_STR },
	{ "COMMAND", "spec.command", F_LIST },
	{ "NODES", "placement[].nodeId", F_LIST },
	{ "PHASE", "placement[].phase", F_LIST },
	{ "IMAGE DIGEST", "placement[].imageDigest", F_LIST },
	{ "GPU INDEXES", "placement[].gpuIndexes", F_STR },
	{ "ATTEMPTS", "attempts", F_NUM },
	{ "SUBMITTED", "submittedAtUs", F_TIME },
	{ "STARTED", "startedAtUs", F_TIME },
	{ "ENDED", "endedAtUs", F_TIME },
	{ "FAILURE", "failure.reason", F_ENUM },
	{ "EXIT CODE", "failure.exitCode", F_NUM },
	{ "SIGNAL", "failure.termSignal", F_NUM },
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

static int watch_job(struct ctx *c, uint64_t id);

static int run_submit(struct ctx *c)
{
	char err[600];
	json_t *req;
	if (c->npos == 1) {
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
	protobuf_c_message_free_unpacked(m, NULL);
	if (opt_has(c, "watch"))
		return watch_job(c, id);
	return EXIT_OK;
}

static int get_job(struct ctx *c, uint64_t id, Gpumatch__V1__GetJobResponse **out)
{
	Gpumatch__V1__GetJobRequest req = GPUMATCH__V1__GET_JOB_REQUEST__INIT;
	req.job_id = id;
	return call_msg(c, "JobService", "GetJob", &req.base, (ProtobufCMessage **)out);
}

static int run_get(struct ctx *c)
{
	uint64_t id;
	int rc = pos_id(c, 0, "JOB_ID", &id);
	Gpumatch__V1__GetJobResponse *r;
	if (rc || (rc = get_job(c, id, &r)))
		return rc;
	out_reply(c, &r->base, NULL, "job", job_fields, NELEM(job_fields));
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
	if ((v = opt_str(c, "tenant")))
		json_object_set_new(req, "tenantId", json_string(v));
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
		out_reply(c, m, "jobs", NULL, job_cols, NELEM(job_cols));
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

static int watch_job(struct ctx *c, uint64_t id)
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
						printf("%s%" PRIu64, i ? "," : "",
						       j->placement[i]->node_id);
				}
				if (*phase)
					printf(" phase=%s", phase);
				if (j->attempts > 1)
					printf(" attempt=%u", j->attempts);
				if (j->failure && j->failure->reason) {
					const ProtobufCEnumValue *fv =
					    protobuf_c_enum_descriptor_get_value(
					        &gpumatch__v1__failure_reason__descriptor,
					        (int)j->failure->reason);
					printf(" failure=%s", fv ? fv->name + 15 : "?");
					if (j->failure->exit_code)
						printf(" exit_code=%d", j->failure->exit_code);
					if (j->failure->term_signal)
						printf(" signal=%d", j->failure->term_signal);
				}
				if (j->state == GPUMATCH__V1__JOB_STATE__JOB_STATE_QUEUED &&
				    j->explanation && j->explanation->summary &&
				    *j->explanation->summary)
					printf(" (%s)", j->explanation->summary);
				printf("\n");
			}
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
	return rc ? rc : watch_job(c, id);
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
		printf("\n%u of %u nodes fit now%s\n", e->fit_nodes, e->total_nodes,
		       e->fleet_feasible ? "" : "; no node of the fleet could ever host it");
		if (e->gang_nodes > 1)
			printf("gang of %u nodes; at most %u fitting nodes in one region\n",
			       e->gang_nodes, e->best_region_fit);
		if (e->summary && *e->summary)
			printf("%s\n", e->summary);
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
	if ((v = opt_str(c, "tenant")))
		json_object_set_new(req, "tenantId", json_string(v));
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
	{ "tenant", "ID", "admins: one tenant's jobs", false },
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
	{ "tenant", "ID", "admins: one tenant", false },
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
