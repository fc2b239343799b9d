/* nodes.c — the operator's commands: node register, list, get, drain,
 * undrain, retire, earnings (NodeService), and the node description shared
 * with the agent: GPUs from `gpu-probe info` or a --simulate file. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "client.h"
#include "gpumatch/v1/node_service.pb-c.h"

/* Runs argv and returns its stdout (malloc'd) or NULL; err says why. */
static char *run_capture(char *const argv[], char *err, size_t err_len)
{
	int p[2];
	if (pipe(p)) {
		snprintf(err, err_len, "pipe: %s", strerror(errno));
		return NULL;
	}
	pid_t pid = fork();
	if (pid < 0) {
		snprintf(err, err_len, "fork: %s", strerror(errno));
		close(p[0]);
		close(p[1]);
		return NULL;
	}
	if (pid == 0) {
		dup2(p[1], 1);
		close(p[0]);
		close(p[1]);
		execvp(argv[0], argv);
		fprintf(stderr, "gpumatch: cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(p[1]);
	size_t len = 0, cap = 4096;
	char *buf = malloc(cap);
	ssize_t n;
	while (buf && (n = read(p[0], buf + len, cap - len - 1)) > 0) {
		len += (size_t)n;
		if (cap - len < 2) {
			char *nb = realloc(buf, cap * 2);
			if (!nb) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = nb;
			cap *= 2;
		}
	}
	close(p[0]);
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (!buf || !WIFEXITED(st) || WEXITSTATUS(st)) {
		snprintf(err, err_len, "%s info failed (%s %d)", argv[0],
		         WIFEXITED(st) ? "exit" : "signal",
		         WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
		free(buf);
		return NULL;
	}
	buf[len] = '\0';
	return buf;
}

static bool on_path(const char *name)
{
	const char *path = getenv("PATH");
	if (!path)
		return false;
	char dir[1024];
	for (const char *p = path; *p;) {
		size_t n = strcspn(p, ":");
		snprintf(dir, sizeof dir, "%.*s/%s", (int)n, p, name);
		if (n && access(dir, X_OK) == 0)
			return true;
		p += n;
		if (*p == ':')
			p++;
	}
	return false;
}

/* One GPU of `gpu-probe info` as the contract's Gpu message (proto3 JSON):
 * the identity fields carry over, compute capability "9.0" splits, the
 * probe's other facts (clocks, PCIe link, driver) stay with the probe. An
 * entry already in the Gpu shape (a --probe stand-in) passes unchanged. */
static json_t *gpu_from_probe(json_t *g)
{
	if (!json_object_get(g, "compute_capability") && !json_object_get(g, "memory_total_bytes"))
		return json_incref(g);
	json_t *out = json_object();
	static const char *const same[] = { "index",         "name",          "uuid",
		                            "pci_vendor_id", "pci_device_id", "pci_subsystem_id",
		                            "memory_mib",    "pci_bus_id",    "sm_count" };
	for (size_t i = 0; i < NELEM(same); i++) {
		json_t *v = json_object_get(g, same[i]);
		if (v && !(json_is_string(v) && !*json_string_value(v)))
			json_object_set(out, same[i], v);
	}
	json_t *name = json_object_get(g, "name");
	if (json_is_string(name))
		json_object_set(out, "model", name);
	json_t *cc = json_object_get(g, "compute_capability");
	unsigned maj = 0, min = 0;
	if (json_is_string(cc) && sscanf(json_string_value(cc), "%u.%u", &maj, &min) == 2) {
		json_object_set_new(out, "compute_capability_major", json_integer(maj));
		json_object_set_new(out, "compute_capability_minor", json_integer(min));
		/* what the architecture runs: FP16 from Pascal (6.0), TF32 and
		 * BF16 from Ampere (8.0), FP8 from Ada and Hopper (8.9) */
		unsigned v = maj * 10 + min;
		json_t *pr = json_array();
		json_array_append_new(pr, json_string("PRECISION_FP32"));
		if (v >= 60)
			json_array_append_new(pr, json_string("PRECISION_FP16"));
		if (v >= 80) {
			json_array_append_new(pr, json_string("PRECISION_TF32"));
			json_array_append_new(pr, json_string("PRECISION_BF16"));
		}
		if (v >= 89)
			json_array_append_new(pr, json_string("PRECISION_FP8"));
		json_object_set_new(out, "precisions", pr);
	}
	return out;
}

/* A GPU belongs to one node (RegisterNode refuses a uuid another node
 * holds), but one --simulate file may describe many simulated nodes: each
 * simulated GPU's uuid is the file's followed by a hash of the node's name
 * ("GPU-a1000000-...-000000000000-5d2c1a0b"), the same on every run of the
 * same node. */
static void simulated_uuids(json_t *req)
{
	const char *name = json_string_value(json_object_get(req, "name"));
	uint32_t h = 2166136261u; /* FNV-1a */
	for (const char *p = name ? name : ""; *p; p++)
		h = (h ^ (uint8_t)*p) * 16777619u;
	size_t gi;
	json_t *g;
	json_array_foreach(json_object_get(req, "gpus"), gi, g)
	{
		const char *u = json_string_value(json_object_get(g, "uuid"));
		if (!u || !*u)
			continue;
		char buf[300];
		snprintf(buf, sizeof buf, "%.280s-%08x", u, (unsigned)h);
		json_object_set_new(g, "uuid", json_string(buf));
	}
}

json_t *node_request(struct ctx *c, int *rc)
{
	char err[700];
	json_t *req = NULL;
	const char *sim = opt_str(c, "simulate"), *probe = opt_str(c, "probe");
	*rc = EXIT_USAGE;
	if (sim && probe) {
		usage_error(c, "give --simulate or --probe, not both");
		return NULL;
	}
	if (sim) {
		req = tree_load(sim, err, sizeof err);
		if (!req) {
			fprintf(stderr, "gpumatch %s: --simulate: %s\n", c->cmd->words, err);
			return NULL;
		}
	} else {
		if (!probe && !on_path("gpu-probe")) {
			usage_error(c,
			            "no GPUs to describe: gpu-probe is not on PATH; give --probe "
			            "PATH or --simulate FILE");
			return NULL;
		}
		char *argv[] = { (char *)(probe ? probe : "gpu-probe"), "info", NULL };
		char *out = run_capture(argv, err, sizeof err);
		json_error_t je;
		json_t *j = out ? json_loads(out, 0, &je) : NULL;
		if (out && !j)
			snprintf(err, sizeof err, "%s info printed no JSON: %s", argv[0], je.text);
		free(out);
		if (!j) {
			/* a local failure (exit 1 is the server's): the probe named by
			 * --probe, or found on PATH, could not describe the GPUs */
			fprintf(stderr, "gpumatch %s: --probe: %s\n", c->cmd->words, err);
			*rc = EXIT_USAGE;
			return NULL;
		}
		json_t *gpus = json_is_array(j) ? j : json_object_get(j, "gpus");
		if (!json_is_array(gpus)) {
			fprintf(stderr, "gpumatch %s: %s info: expected a \"gpus\" array\n",
			        c->cmd->words, argv[0]);
			json_decref(j);
			return NULL;
		}
		req = json_object();
		json_t *mapped = json_array();
		size_t gi;
		json_t *g;
		json_array_foreach(gpus, gi, g)
		{
			json_array_append_new(mapped, json_is_object(g) ? gpu_from_probe(g)
			                                                : json_incref(g));
		}
		json_object_set_new(req, "gpus", mapped);
		json_decref(j);
	}
	/* the file may give the price in currency units */
	json_t *pr = json_object_get(req, "pricePerGpuHour");
	if (pr) {
		int64_t m;
		if (!json_is_string(pr) || parse_money_micros(json_string_value(pr), &m)) {
			fprintf(stderr,
			        "gpumatch %s: pricePerGpuHour: expected an amount such as "
			        "\"1.50\"\n",
			        c->cmd->words);
			json_decref(req);
			return NULL;
		}
		json_object_set_new(req, "pricePerGpuHourMicros", jint64(m));
		json_object_del(req, "pricePerGpuHour");
	}
	/* the health block of a simulated node is the agent's, not the contract's */
	json_object_del(req, "health");
	const char *v;
	if ((v = opt_str(c, "name")))
		json_object_set_new(req, "name", json_string(v));
	if (!json_object_get(req, "name")) {
		char host[256] = "node";
		gethostname(host, sizeof host - 1);
		json_object_set_new(req, "name", json_string(host));
	}
	if (sim)
		simulated_uuids(req);
	if ((v = opt_str(c, "region")))
		json_object_set_new(req, "region", json_string(v));
	if ((v = opt_str(c, "address")))
		json_object_set_new(req, "address", json_string(v));
	if ((v = opt_str(c, "price"))) {
		int64_t m;
		if (parse_money_micros(v, &m)) {
			usage_error(c, "--price: expected an amount such as 1.50, got \"%s\"", v);
			json_decref(req);
			return NULL;
		}
		json_object_set_new(req, "pricePerGpuHourMicros", jint64(m));
	}
	/* --claim PRECISION=TFLOPS: the figures claimed for every GPU (the
	 * probe reports identity, not claims); a file's own claims stay */
	const char *claims[8];
	size_t ncl = opt_all(c, "claim", claims, NELEM(claims));
	json_t *claimed = ncl ? json_object() : NULL;
	for (size_t i = 0; i < ncl; i++) {
		static const char *const prec[] = { "fp32", "tf32", "fp16", "bf16", "fp8" };
		const char *eq = strchr(claims[i], '=');
		char *end = NULL;
		double tf = eq ? strtod(eq + 1, &end) : 0;
		size_t k = 0;
		while (eq && k < NELEM(prec) &&
		       (strlen(prec[k]) != (size_t)(eq - claims[i]) ||
		        strncasecmp(prec[k], claims[i], (size_t)(eq - claims[i]))))
			k++;
		if (!eq || k == NELEM(prec) || end == eq + 1 || *end || !(tf > 0) || tf > 1e6) {
			usage_error(
			    c,
			    "--claim: expected PRECISION=TFLOPS with PRECISION one of fp32, "
			    "tf32, fp16, bf16, fp8, got \"%s\"",
			    claims[i]);
			json_decref(claimed);
			json_decref(req);
			return NULL;
		}
		char key[32];
		snprintf(key, sizeof key, "%sTflops", prec[k]);
		json_object_set_new(claimed, key, json_real(tf));
	}
	size_t gi;
	json_t *g;
	json_array_foreach(json_object_get(req, "gpus"), gi, g)
	{
		if (!json_is_object(g) || json_object_get(g, "claimed"))
			continue;
		if (!claimed) {
			usage_error(c,
			            "gpus[%zu].claimed: give the throughput claimed per GPU, e.g. "
			            "--claim bf16=989 --claim fp32=67",
			            gi);
			json_decref(req);
			return NULL;
		}
		json_object_set(g, "claimed", claimed);
	}
	json_decref(claimed);
	const char *labels[64];
	size_t nl = opt_all(c, "label", labels, NELEM(labels));
	for (size_t i = 0; i < nl; i++) {
		const char *eq = strchr(labels[i], '=');
		if (!eq || eq == labels[i]) {
			usage_error(c, "--label: expected KEY=VALUE, got \"%s\"", labels[i]);
			json_decref(req);
			return NULL;
		}
		char k[256];
		snprintf(k, sizeof k, "%.*s", (int)(eq - labels[i]), labels[i]);
		json_t *lo = json_object_get(req, "labels");
		if (!lo) {
			lo = json_object();
			json_object_set_new(req, "labels", lo);
		}
		json_object_set_new(lo, k, json_string(eq + 1));
	}
	json_object_set_new(req, "agentVersion", json_string("gpumatch-agent/" GPUMATCH_VERSION));
	*rc = EXIT_OK;
	return req;
}

static const struct col node_cols[] = {
	{ "ID", "id", F_STR },
	{ "NAME", "name", F_STR },
	{ "STATE", "state", F_ENUM },
	{ "VERIFIED", "verification.status", F_ENUM },
	{ "REGION", "region", F_STR },
	{ "GPUS", "gpus", F_GPUS },
	{ "BUSY", "busyGpuIndexes", F_LIST },
	{ "PRICE/GPU-H", "pricePerGpuHourMicros", F_MONEY },
	{ "LAST HEARTBEAT", "lastHeartbeatUs", F_TIME },
};

static const struct col node_fields[] = {
	{ "ID", "id", F_STR },
	{ "NAME", "name", F_STR },
	{ "OPERATOR", "operatorId", F_STR },
	{ "STATE", "state", F_ENUM },
	{ "STATE REASON", "stateReason", F_STR },
	{ "VERIFIED", "verification.status", F_ENUM },
	{ "REGION", "region", F_STR },
	{ "LABELS", "labels", F_MAP },
	{ "PRICE/GPU-H", "pricePerGpuHourMicros", F_MONEY },
	{ "GPUS", "gpus", F_GPUS },
	{ "GPU MEMORY MIB", "gpus[].memoryMib", F_STR },
	{ "BUSY GPUS", "busyGpuIndexes", F_LIST },
	{ "ADDRESS", "address", F_STR },
	{ "AGENT", "agentVersion", F_STR },
	{ "RELIABILITY", "reliability.scorePpm", F_PPM_MEASURED },
	{ "LAST HEARTBEAT", "lastHeartbeatUs", F_TIME },
	{ "RETIRED", "retiredAtUs", F_TIME },
	{ "CREATED", "createdAtUs", F_TIME },
};

static int run_register(struct ctx *c)
{
	int rc;
	json_t *req = node_request(c, &rc);
	if (!req)
		return rc;
	const char *v = opt_str(c, "node-id");
	if (v)
		json_object_set_new(req, "nodeId", json_string(v));
	ProtobufCMessage *m;
	if ((rc = call_json(c, "NodeService", "RegisterNode", req, &m)))
		return rc;
	out_reply(c, m, NULL, "node", node_fields, NELEM(node_fields));
	protobuf_c_message_free_unpacked(m, NULL);
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
			json_array_append_new(a, enum_arg("NODE_STATE_", states[i]));
		json_object_set_new(req, "states", a);
	}
	if ((v = opt_str(c, "region")))
		json_object_set_new(req, "region", json_string(v));
	if ((v = opt_str(c, "operator")))
		json_object_set_new(req, "operatorId", json_string(v));
	if ((v = opt_str(c, "page-size")))
		json_object_set_new(req, "pageSize", json_string(v));
	if ((v = opt_str(c, "page-token")))
		json_object_set_new(req, "pageToken", json_string(v));
	ProtobufCMessage *m;
	int rc = call_json(c, "NodeService", "ListNodes", req, &m);
	if (rc)
		return rc;
	out_reply(c, m, "nodes", NULL, node_cols, NELEM(node_cols));
	protobuf_c_message_free_unpacked(m, NULL);
	return EXIT_OK;
}

static int node_by_id(struct ctx *c, const char *method, bool reason)
{
	uint64_t id;
	int rc = pos_id(c, 0, "NODE_ID", &id);
	if (rc)
		return rc;
	json_t *req = json_pack("{s:o}", "nodeId", juint64(id));
	if (reason && opt_str(c, "reason"))
		json_object_set_new(req, "reason", json_string(opt_str(c, "reason")));
	if (reason && opt_has(c, "stop-jobs"))
		json_object_set_new(req, "stopJobs", json_true());
	if (reason && opt_str(c, "grace")) {
		int64_t us = parse_duration_us(opt_str(c, "grace"));
		if (us < 0 || us > 3600000000LL) {
			json_decref(req);
			return usage_error(c, "--grace: a duration up to 1h, got \"%s\"",
			                   opt_str(c, "grace"));
		}
		json_object_set_new(req, "stopGraceMs", json_integer(us / 1000));
	}
	ProtobufCMessage *m;
	if ((rc = call_json(c, "NodeService", method, req, &m)))
		return rc;
	out_reply(c, m, NULL, "node", node_fields, NELEM(node_fields));
	protobuf_c_message_free_unpacked(m, NULL);
	return EXIT_OK;
}

static int run_get(struct ctx *c)
{
	return node_by_id(c, "GetNode", false);
}

static int run_drain(struct ctx *c)
{
	return node_by_id(c, "DrainNode", true);
}

static int run_undrain(struct ctx *c)
{
	return node_by_id(c, "UndrainNode", false);
}

static int run_retire(struct ctx *c)
{
	return node_by_id(c, "RetireNode", true);
}

static int run_earnings(struct ctx *c)
{
	json_t *req = json_object();
	const char *v;
	if ((v = opt_str(c, "operator")))
		json_object_set_new(req, "operatorId", json_string(v));
	int rc = set_window_since(c, req, "window");
	if (rc) {
		json_decref(req);
		return rc;
	}
	ProtobufCMessage *m;
	if ((rc = call_json(c, "NodeService", "GetEarnings", req, &m)))
		return rc;
	if (c->json) {
		out_json(m);
	} else {
		static const struct col tot[] = {
			{ "OPERATOR", "operatorRecord.name", F_STR },
			{ "EARNED (UNPAID)", "operatorRecord.earningsMicros", F_MONEY },
			{ "PAID OUT", "operatorRecord.paidOutMicros", F_MONEY },
			{ "GROSS IN WINDOW", "totals.grossMicros", F_MONEY },
			{ "OPERATOR SHARE", "totals.operatorMicros", F_MONEY },
			{ "PLATFORM FEES", "totals.platformFeeMicros", F_MONEY },
			{ "GPU SECONDS", "totals.gpuSeconds", F_NUM },
		};
		static const struct col per[] = {
			{ "NODE", "nodeId", F_STR },
			{ "NAME", "nodeName", F_STR },
			{ "GPU SECONDS", "gpuSeconds", F_NUM },
			{ "GROSS", "grossMicros", F_MONEY },
			{ "EARNED", "operatorMicros", F_MONEY },
			{ "FEES", "platformFeeMicros", F_MONEY },
		};
		json_t *j = msg_to_json(m);
		out_fields(j, tot, NELEM(tot));
		printf("\n");
		out_table(json_object_get(j, "nodes"), per, NELEM(per));
		json_decref(j);
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return EXIT_OK;
}

static const struct optdef register_opts[] = {
	{ "simulate", "FILE", "describe the GPUs from a JSON/YAML file (examples/nodes/)", false },
	{ "probe", "PATH", "gpu-probe binary to ask for the GPUs (default: gpu-probe on PATH)",
	  false },
	{ "name", "NAME", "node name (default: the file's, else the host name)", false },
	{ "region", "REGION", "region, e.g. eu-west", false },
	{ "price", "AMOUNT", "asking price per GPU-hour, e.g. 1.50", false },
	{ "label", "KEY=VALUE", "node label", true },
	{ "claim", "PRECISION=TFLOPS", "throughput claimed per GPU (fp32, tf32, fp16, bf16, fp8)",
	  true },
	{ "address", "HOST:PORT", "rendezvous address for multi-node jobs", false },
	{ "node-id", "ID", "replace the facts of this registered node", false },
	{ 0 },
};
static const struct optdef list_opts[] = {
	{ "state", "STATE", "only nodes in this state (ready, draining, lost, ...)", true },
	{ "region", "REGION", "only this region", false },
	{ "operator", "ID", "admins: one operator's nodes", false },
	{ "page-size", "N", "nodes per page (default 100)", false },
	{ "page-token", "TOKEN", "the page after a previous listing", false },
	{ 0 },
};
static const struct optdef drain_opts[] = {
	{ "reason", "TEXT", "why (shown on the node)", false },
	{ "stop-jobs", NULL,
	  "also stop the running jobs (the node goes away): they are queued again, billed for "
	  "the time used",
	  false },
	{ "grace", "DUR", "with --stop-jobs: time each job gets to stop (default 30s)", false },
	{ 0 },
};
static const struct optdef earnings_opts[] = {
	{ "since", "DUR", "window: the last DUR (default 30d)", false },
	{ "operator", "ID", "admins: one operator", false },
	{ 0 },
};
static const struct optdef no_opts[] = { { 0 } };

const struct cmd cmds_nodes[] = {
	{ "node register", "", "register a node (GPUs from gpu-probe info or --simulate FILE)",
	  register_opts, 0, 0, run_register, false },
	{ "node list", "", "list nodes", list_opts, 0, 0, run_list, false },
	{ "node get", "NODE_ID", "show one node", no_opts, 1, 1, run_get, false },
	{ "node drain", "NODE_ID",
	  "take no new work; running jobs finish (or, with --stop-jobs, are requeued)", drain_opts,
	  1, 1, run_drain, false },
	{ "node undrain", "NODE_ID", "return a draining node to ready", no_opts, 1, 1, run_undrain,
	  false },
	{ "node retire", "NODE_ID",
	  "remove a node for good: no new work, running jobs finish, then disabled", drain_opts, 1,
	  1, run_retire, false },
	{ "node earnings", "", "earnings and per-node revenue", earnings_opts, 0, 0, run_earnings,
	  false },
	{ 0 },
};
