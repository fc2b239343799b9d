/* main.c — gpumatch-sim: replays a trace through the scheduling library
 * under a policy file and prints the outcome; the last line is JSON. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "app.h"
#include "convert.h"
#include "gpumatch-version.h"
#include "pbjson.h"
#include "sim.h"
#include "trace.h"

static void usage(FILE *f)
{
	fputs(
	    "usage: gpumatch-sim --nodes FILE --jobs FILE --policy FILE [options]\n"
	    "\n"
	    "  --nodes FILE          node inventory: Alibaba v2023 node list or gpumatch nodes "
	    "CSV\n"
	    "  --jobs FILE           jobs: MSR ITP cluster CSV, Alibaba pod list or gpumatch jobs "
	    "CSV\n"
	    "  --throughputs FILE    per-job-type throughputs: Gavel CSV/JSON or the same CSV "
	    "shape\n"
	    "  --policy FILE         JSON with the fields of the Policy message (docs/policy.md)\n"
	    "  --seed N              seed for drawn job types and tenants (default 1)\n"
	    "  --arrival-scale X     submit times (from the first) multiplied by X; 0.25 packs\n"
	    "                        arrivals 4x closer (default 1)\n"
	    "  --horizon-s S         stop S seconds after the first arrival (default: run out)\n"
	    "  --cycle-interval-s S  least virtual time between scheduling cycles (default 10)\n"
	    "  --checkpoint-interval-s S\n"
	    "                        jobs checkpoint every S seconds of run time; a preempted\n"
	    "                        job loses the work since its last checkpoint (default 600;\n"
	    "                        0 = perfect checkpointing, nothing lost)\n"
	    "  --preemptible         every job is preemptible: for traces with no such column\n"
	    "                        (MSR ITP); rejected for the others, which carry their own\n"
	    "                        preemptible flag\n"
	    "  --tenants N           tenants drawn for jobs without one (default 8)\n"
	    "  --precision P         fp32|tf32|fp16|bf16|fp8: what jobs compute in (default fp32)\n"
	    "  --no-profiles         jobs do not declare throughput profiles\n"
	    "  --speed-model FILE    per-job-type roofline model (default: the shipped\n"
	    "                        data/speed-model.csv); speeds on models the throughput\n"
	    "                        table does not measure\n"
	    "  --gpu-roofline FILE   GPU figures for it (default: data/gpu-roofline.csv)\n"
	    "  --no-speed-model      models without a throughput column are interpolated by\n"
	    "                        FP32 TFLOPS (the behaviour before the speed model)\n"
	    "  --no-interpolate      with --no-speed-model: models without a throughput column\n"
	    "                        run at TFLOPS ratio speed for every job type\n"
	    "  --limit-overestimate X  time limits = run time on the slowest model x a factor\n"
	    "                        drawn log-uniformly in [1, X] per job, seeded (default 10)\n"
	    "  --oracle-limits       time limits equal run times (same as --limit-overestimate 1)\n"
	    "  --check               check the scheduler's invariants after every cycle\n"
	    "  --jobs-out FILE       per-job outcome CSV\n"
	    "  --no-wall-clock       leave wall-clock figures out (byte-identical output)\n",
	    f);
}

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap);
	while (buf) {
		n += fread(buf + n, 1, cap - n, f);
		if (n < cap)
			break;
		char *nb = realloc(buf, cap * 2);
		if (!nb) {
			free(buf);
			buf = NULL;
		}
		buf = nb;
		cap *= 2;
	}
	fclose(f);
	if (len)
		*len = n;
	return buf;
}

/* Reads a policy file into *p; errors name the file and the field. */
static int read_policy(const char *path, struct sched_policy *p)
{
	size_t len;
	char *text = slurp(path, &len);
	if (!text) {
		fprintf(stderr, "gpumatch-sim: %s: cannot read: %s\n", path, strerror(errno));
		return -1;
	}
	ProtobufCMessage *m = NULL;
	char err[256];
	/* a saved `gpumatch admin policy get -o json` reply holds the policy
	 * under "policy" */
	json_t *tree = json_loadb(text, len, 0, NULL);
	json_t *inner = json_is_object(tree) ? json_object_get(tree, "policy") : NULL;
	if (json_is_object(inner)) {
		char *t2 = json_dumps(inner, JSON_COMPACT);
		if (t2) {
			free(text);
			text = t2;
			len = strlen(t2);
		}
	}
	json_decref(tree);
	int rc = pbjson_decode(&gpumatch__v1__policy__descriptor, text, len, &m, err, sizeof err);
	free(text);
	if (rc) {
		fprintf(stderr, "gpumatch-sim: %s: %s\n", path, err);
		return -1;
	}
	conv_policy_in((const Gpumatch__V1__Policy *)m, p);
	protobuf_c_message_free_unpacked(m, NULL);
	struct sched_error se = { "", "" };
	if (sched_policy_validate(p, &se)) {
		char camel[80];
		conv_camel(se.field, camel, sizeof camel);
		fprintf(stderr, "gpumatch-sim: %s: %s: %s\n", path, camel, se.message);
		return -1;
	}
	return 0;
}

static int parse_num(const char *opt, const char *s, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (end == s || *end || errno || !(v >= lo && v <= hi)) {
		fprintf(stderr,
		        "gpumatch-sim: %s: expected a number between %g and %g, got \"%s\"\n", opt,
		        lo, hi, s);
		return -1;
	}
	*out = v;
	return 0;
}

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time of this process: the replay's speed on a machine shared with
 * other work, where wall time measures the load as much as the replay */
static double cpu_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int write_jobs_out(const char *path, const struct sim_result *r,
                          const struct trace_tputs *tp)
{
	FILE *f = fopen(path, "w");
	if (!f) {
		fprintf(stderr, "gpumatch-sim: %s: %s\n", path, strerror(errno));
		return -1;
	}
	fprintf(f, "job_id,tenant_id,job_type,gpus,submit_us,start_us,end_us,jct_us,preemptions,"
	           "node_id\n");
	for (uint32_t i = 0; i < r->jobs; i++) {
		const struct sim_job_out *j = &r->per_job[i];
		char start[32] = "", end[32] = "", jct[32] = "";
		if (j->started)
			snprintf(start, sizeof start, "%" PRId64, j->first_start_us);
		if (j->finished) {
			snprintf(end, sizeof end, "%" PRId64, j->end_us);
			snprintf(jct, sizeof jct, "%" PRId64, j->end_us - j->submit_us);
		}
		fprintf(f,
		        "%" PRIu64 ",%" PRIu64 ",\"%s\",%u,%" PRId64 ",%s,%s,%s,%u,%" PRIu64 "\n",
		        j->id, j->tenant, j->type >= 0 && tp ? tp->types[j->type] : "", j->gpus,
		        j->submit_us, start, end, jct, j->preemptions, j->node_id);
	}
	if (fclose(f)) {
		fprintf(stderr, "gpumatch-sim: %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	enum {
		O_NODES = 256,
		O_JOBS,
		O_TPUTS,
		O_POLICY,
		O_SEED,
		O_SCALE,
		O_HORIZON,
		O_INTERVAL,
		O_TENANTS,
		O_PREC,
		O_NOPROF,
		O_CHECK,
		O_JOBSOUT,
		O_NOWALL,
		O_HELP,
		O_VERSION,
		O_NOINTERP,
		O_CKPT,
		O_PREEMPTIBLE,
		O_MODEL,
		O_ROOF,
		O_NOMODEL,
		O_OVER,
		O_ORACLE
	};
	static const struct option opts[] = {
		{ "nodes", required_argument, NULL, O_NODES },
		{ "jobs", required_argument, NULL, O_JOBS },
		{ "throughputs", required_argument, NULL, O_TPUTS },
		{ "policy", required_argument, NULL, O_POLICY },
		{ "seed", required_argument, NULL, O_SEED },
		{ "arrival-scale", required_argument, NULL, O_SCALE },
		{ "horizon-s", required_argument, NULL, O_HORIZON },
		{ "cycle-interval-s", required_argument, NULL, O_INTERVAL },
		{ "checkpoint-interval-s", required_argument, NULL, O_CKPT },
		{ "preemptible", no_argument, NULL, O_PREEMPTIBLE },
		{ "tenants", required_argument, NULL, O_TENANTS },
		{ "precision", required_argument, NULL, O_PREC },
		{ "no-profiles", no_argument, NULL, O_NOPROF },
		{ "check", no_argument, NULL, O_CHECK },
		{ "no-interpolate", no_argument, NULL, O_NOINTERP },
		{ "speed-model", required_argument, NULL, O_MODEL },
		{ "gpu-roofline", required_argument, NULL, O_ROOF },
		{ "no-speed-model", no_argument, NULL, O_NOMODEL },
		{ "limit-overestimate", required_argument, NULL, O_OVER },
		{ "oracle-limits", no_argument, NULL, O_ORACLE },
		{ "jobs-out", required_argument, NULL, O_JOBSOUT },
		{ "no-wall-clock", no_argument, NULL, O_NOWALL },
		{ "help", no_argument, NULL, O_HELP },
		{ "version", no_argument, NULL, O_VERSION },
		{ NULL, 0, NULL, 0 },
	};
	const char *nodes = NULL, *jobs = NULL, *tputs = NULL, *policy = NULL, *jobs_out = NULL;
	char model_buf[PATH_MAX], roof_buf[PATH_MAX];
	const char *model_path = share_path("speed-model.csv", model_buf, sizeof model_buf);
	const char *roof_path = share_path("gpu-roofline.csv", roof_buf, sizeof roof_buf);
	bool use_model = true;
	struct sim_config cfg;
	sim_config_default(&cfg);
	bool wall = true, preemptible = false;
	int o;
	double v;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case O_NODES:
			nodes = optarg;
			break;
		case O_JOBS:
			jobs = optarg;
			break;
		case O_TPUTS:
			tputs = optarg;
			break;
		case O_POLICY:
			policy = optarg;
			break;
		case O_SEED:
			if (parse_num("--seed", optarg, 0, 9007199254740992.0, &v))
				return 2;
			cfg.seed = (uint64_t)v;
			break;
		case O_SCALE:
			if (parse_num("--arrival-scale", optarg, 1e-6, 1e6, &v))
				return 2;
			cfg.arrival_scale = v;
			break;
		case O_HORIZON:
			if (parse_num("--horizon-s", optarg, 1, 1e10, &v))
				return 2;
			cfg.horizon_us = (int64_t)(v * 1e6);
			break;
		case O_INTERVAL:
			if (parse_num("--cycle-interval-s", optarg, 0, 86400, &v))
				return 2;
			cfg.cycle_interval_us = (int64_t)(v * 1e6);
			break;
		case O_CKPT:
			if (parse_num("--checkpoint-interval-s", optarg, 0, 1e8, &v))
				return 2;
			cfg.checkpoint_interval_us = (int64_t)(v * 1e6);
			break;
		case O_PREEMPTIBLE:
			preemptible = true;
			break;
		case O_TENANTS:
			if (parse_num("--tenants", optarg, 1, 1e6, &v))
				return 2;
			cfg.tenants = (uint32_t)v;
			break;
		case O_PREC: {
			static const char *const names[SCHED_PREC_COUNT] = { "fp32", "tf32", "fp16",
				                                             "bf16", "fp8" };
			int found = -1;
			for (int q = 0; q < SCHED_PREC_COUNT; q++)
				if (!strcmp(optarg, names[q]))
					found = q;
			if (found < 0) {
				fprintf(stderr,
				        "gpumatch-sim: --precision: expected fp32, tf32, fp16, "
				        "bf16 or fp8, got \"%s\"\n",
				        optarg);
				return 2;
			}
			cfg.precision = (enum sched_precision)found;
			break;
		}
		case O_NOPROF:
			cfg.declare_profiles = false;
			break;
		case O_NOINTERP:
			cfg.interpolate = false;
			break;
		case O_MODEL:
			model_path = optarg;
			break;
		case O_ROOF:
			roof_path = optarg;
			break;
		case O_NOMODEL:
			use_model = false;
			break;
		case O_OVER:
			if (parse_num("--limit-overestimate", optarg, 1, 1000, &v))
				return 2;
			cfg.limit_overestimate = v;
			break;
		case O_ORACLE:
			cfg.limit_overestimate = 1;
			break;
		case O_CHECK:
			cfg.check = true;
			break;
		case O_JOBSOUT:
			jobs_out = optarg;
			break;
		case O_NOWALL:
			wall = false;
			break;
		case O_HELP:
			usage(stdout);
			return 0;
		case O_VERSION:
			printf("gpumatch-sim %s\n", GPUMATCH_VERSION_STRING);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc || !nodes || !jobs || !policy) {
		fprintf(stderr, "gpumatch-sim: %s\n",
		        optind < argc ? "unexpected argument"
		                      : "--nodes, --jobs and --policy are required");
		usage(stderr);
		return 2;
	}
	if (read_policy(policy, &cfg.policy))
		return 1;
	char err[512];
	struct trace_fleet fleet;
	struct trace_jobs tj;
	struct trace_tputs tp;
	memset(&tp, 0, sizeof tp);
	if (trace_read_nodes(nodes, &fleet, err, sizeof err)) {
		fprintf(stderr, "gpumatch-sim: %s\n", err);
		return 1;
	}
	if (trace_read_jobs(jobs, &tj, err, sizeof err)) {
		fprintf(stderr, "gpumatch-sim: %s\n", err);
		trace_fleet_free(&fleet);
		return 1;
	}
	/* an explicit choice, never a silent change to the trace: only formats
	 * that say nothing about preemption take it */
	if (preemptible) {
		if (trace_detect(jobs, err, sizeof err) != TRACE_FMT_MSR_JOBS) {
			fprintf(stderr,
			        "gpumatch-sim: --preemptible: %s has a preemptible column of its "
			        "own (only traces without one, MSR ITP, take this option)\n",
			        jobs);
			trace_fleet_free(&fleet);
			trace_jobs_free(&tj);
			return 2;
		}
		for (uint32_t i = 0; i < tj.n; i++)
			tj.v[i].preemptible = true;
	}
	if (tputs && trace_read_tputs(tputs, &tp, err, sizeof err)) {
		fprintf(stderr, "gpumatch-sim: %s\n", err);
		trace_fleet_free(&fleet);
		trace_jobs_free(&tj);
		return 1;
	}
	struct speed_model sm;
	memset(&sm, 0, sizeof sm);
	if (use_model && tputs && speed_model_read(model_path, roof_path, &sm, err, sizeof err)) {
		fprintf(stderr, "gpumatch-sim: %s\n", err);
		trace_fleet_free(&fleet);
		trace_jobs_free(&tj);
		trace_tputs_free(&tp);
		return 1;
	}
	cfg.fleet = &fleet;
	cfg.jobs = &tj;
	cfg.tputs = tputs ? &tp : NULL;
	cfg.model = use_model && tputs ? &sm : NULL;
	printf("inputs: nodes=%u gpus=%" PRIu64 " models=%u jobs=%u job_types=%u seed=%" PRIu64
	       " arrival_scale=%g checkpoint_interval_s=%g limit_overestimate=%g%s\n",
	       fleet.nnodes, fleet.gpus, fleet.nmodels, tj.n, tputs ? tp.ntypes : 0, cfg.seed,
	       cfg.arrival_scale, (double)cfg.checkpoint_interval_us / 1e6, cfg.limit_overestimate,
	       preemptible ? " preemptible=all" : "");
	for (uint32_t m = 0; m < fleet.nmodels; m++) {
		int col = -1;
		for (uint32_t c = 0; tputs && c < tp.ncols && col < 0; c++)
			if (trace_col_matches(tp.cols[c], fleet.models[m].name))
				col = (int)c;
		uint32_t g = 0;
		for (uint32_t n = 0; n < fleet.nnodes; n++)
			if (fleet.nodes[n].model == m)
				g += fleet.nodes[n].ngpus;
		printf("model: %s gpus=%u throughput_column=%s\n", fleet.models[m].name, g,
		       col >= 0 ? tp.cols[col]
		       : !tputs ? "(no table: TFLOPS ratio)"
		       : cfg.model && speed_model_gpu(&sm, fleet.models[m].name)
		           ? "(none: speed model)"
		       : cfg.interpolate ? "(none: interpolated by FP32 TFLOPS)"
		                         : "(none: TFLOPS ratio)");
	}
	fflush(stdout);
	struct sim_result res;
	double t0 = mono_s(), c0 = cpu_s();
	int rc = sim_run(&cfg, &res, err, sizeof err);
	double wall_s = mono_s() - t0, run_cpu_s = cpu_s() - c0;
	if (rc) {
		fprintf(stderr, "gpumatch-sim: %s\n", err);
	} else {
		if (jobs_out && write_jobs_out(jobs_out, &res, cfg.tputs))
			rc = 1;
		size_t need =
		    sim_result_json(&res, wall ? wall_s : -1, wall ? run_cpu_s : -1, NULL, 0);
		char *line = malloc(need + 1);
		if (line) {
			sim_result_json(&res, wall ? wall_s : -1, wall ? run_cpu_s : -1, line,
			                need + 1);
			puts(line);
			free(line);
		} else {
			rc = 1;
		}
		sim_result_free(&res);
	}
	trace_fleet_free(&fleet);
	trace_jobs_free(&tj);
	trace_tputs_free(&tp);
	speed_model_free(&sm);
	return rc ? 1 : 0;
}
