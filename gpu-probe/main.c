/* main.c — gpu-probe's command line: `info` (identity as JSON), `bench`
 * (measurements as JSON, or a ProbeReport with --proto) and `challenge`
 * (the proof exchange with gpumatchd). The backends do the device work. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "gpumatch/v1/node_service.pb-c.h"
#include "gpumatch-version.h"
#include "http.h"

#define PROBE_VERSION "gpu-probe/0.1.0"

enum exit_code {
	EXIT_OK = 0,
	EXIT_USAGE = 1,
	EXIT_NO_DEVICE = 2,
	EXIT_REJECTED = 3,
	EXIT_SERVER = 4,
	EXIT_INTERNAL = 5,
};

static void usage(FILE *out)
{
	fputs("usage: gpu-probe COMMAND [options]\n"
	      "\n"
	      "Commands:\n"
	      "  info        identity of every GPU as JSON (NVML where present, else the\n"
	      "              CUDA runtime)\n"
	      "  bench       GEMM TFLOPS per precision, device memory and host<->device\n"
	      "              bandwidth per GPU, as JSON (--proto: a ProbeReport message)\n"
	      "  challenge   prove this node's throughput to gpumatchd and print the verdict\n"
	      "              as JSON\n"
	      "  version     print the version (also --version)\n"
	      "  help        this text\n"
	      "\n"
	      "Options:\n"
	      "  --backend cpu|cuda   cuda (default): the GPUs; cpu: the CPU reference\n"
	      "                       path, same challenge arithmetic, proves no GPU\n"
	      "  --quick              bench: small sizes and few runs\n"
	      "  --json               bench: JSON (the default)\n"
	      "  --proto              bench: write a binary ProbeReport to stdout\n"
	      "  --server URL         challenge: gpumatchd, e.g. http://127.0.0.1:7070\n"
	      "  --token T            challenge: the operator's token (or GPUMATCH_TOKEN)\n"
	      "  --token-file F       challenge: read the token from F, mode 0600\n"
	      "                       (or GPUMATCH_TOKEN_FILE)\n"
	      "  --ca-file F          challenge: PEM CAs that verify an https:// server\n"
	      "                       (or GPUMATCH_CA_FILE; default the system store)\n"
	      "  --client-cert F      challenge: PEM client certificate (GPUMATCH_CLIENT_CERT)\n"
	      "  --client-key F       challenge: its key, mode 0600 (GPUMATCH_CLIENT_KEY)\n"
	      "  --node-id N          challenge: the registered node\n"
	      "  --gpus I,J,...       challenge: GPU indexes (default: every GPU)\n"
	      "  --precision P        challenge: fp32|tf32|fp16|bf16|fp8 (default: server's)\n"
	      "  --timeout S          challenge: network timeout per call, seconds (60)\n"
	      "\n"
	      "Exit codes:\n"
	      "  0  success (challenge: PASS)\n"
	      "  1  bad command line\n"
	      "  2  no usable device: no GPU, no driver, or gpu-probe built without CUDA\n"
	      "  3  challenge: the server's verdict is FAIL, or its TLS certificate could\n"
	      "     not be verified (unknown CA, expired, wrong host)\n"
	      "  4  challenge: the server refused a call or could not be reached\n"
	      "  5  internal error (out of memory, device error during a run)\n",
	      out);
}

struct opts {
	const char *cmd;
	const char *backend;
	bool quick, proto;
	const char *server, *token;
	const char *token_file, *ca_file, *cert_file, *key_file;
	uint64_t node_id;
	uint32_t gpus[64];
	size_t ngpus;
	int precision;
	int timeout_s;
	/* Test-only tampering with the exchange (not in --help; see
	 * docs/probe.md): the server must reject each with its reason. */
	const char *tamper;
	long tamper_ms;
};

static const char *const precision_names[] = {
	"unspecified", "fp32", "tf32", "fp16", "bf16", "fp8"
};

static int parse_precision(const char *s)
{
	for (int i = 1; i <= 5; i++)
		if (!strcmp(s, precision_names[i]))
			return i;
	return -1;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	memset(o, 0, sizeof *o);
	o->backend = "cuda";
	o->timeout_s = 60;
	o->token = getenv("GPUMATCH_TOKEN");
	o->token_file = getenv("GPUMATCH_TOKEN_FILE");
	o->ca_file = getenv("GPUMATCH_CA_FILE");
	o->cert_file = getenv("GPUMATCH_CLIENT_CERT");
	o->key_file = getenv("GPUMATCH_CLIENT_KEY");
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		bool takes = true;
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			o->cmd = "help";
			takes = false;
		} else if (!strcmp(a, "--version")) {
			o->cmd = "version";
			takes = false;
		} else if (!strcmp(a, "--quick")) {
			o->quick = true;
			takes = false;
		} else if (!strcmp(a, "--proto")) {
			o->proto = true;
			takes = false;
		} else if (!strcmp(a, "--json")) {
			o->proto = false; /* the default */
			takes = false;
		} else if (a[0] != '-') {
			if (o->cmd) {
				fprintf(stderr, "gpu-probe: unexpected argument \"%s\"\n", a);
				return -1;
			}
			o->cmd = a;
			takes = false;
		} else if (!v) {
			fprintf(stderr, "gpu-probe: %s needs a value\n", a);
			return -1;
		} else if (!strcmp(a, "--backend")) {
			if (strcmp(v, "cpu") && strcmp(v, "cuda")) {
				fprintf(stderr, "gpu-probe: --backend: cpu or cuda, got \"%s\"\n",
				        v);
				return -1;
			}
			o->backend = v;
		} else if (!strcmp(a, "--server")) {
			o->server = v;
		} else if (!strcmp(a, "--token")) {
			o->token = v;
			o->token_file = NULL;
		} else if (!strcmp(a, "--token-file")) {
			o->token_file = v;
		} else if (!strcmp(a, "--ca-file")) {
			o->ca_file = v;
		} else if (!strcmp(a, "--client-cert")) {
			o->cert_file = v;
		} else if (!strcmp(a, "--client-key")) {
			o->key_file = v;
		} else if (!strcmp(a, "--node-id")) {
			char *end;
			o->node_id = strtoull(v, &end, 10);
			if (*end || !o->node_id) {
				fprintf(stderr, "gpu-probe: --node-id: a node id > 0, got \"%s\"\n",
				        v);
				return -1;
			}
		} else if (!strcmp(a, "--gpus")) {
			const char *p = v;
			while (*p) {
				char *end;
				unsigned long g = strtoul(p, &end, 10);
				if (end == p || g > 63 || o->ngpus == 64 || (*end && *end != ',')) {
					fprintf(stderr,
					        "gpu-probe: --gpus: comma-separated indexes 0..63, "
					        "got \"%s\"\n",
					        v);
					return -1;
				}
				o->gpus[o->ngpus++] = (uint32_t)g;
				p = *end ? end + 1 : end;
			}
		} else if (!strcmp(a, "--precision")) {
			o->precision = parse_precision(v);
			if (o->precision < 0) {
				fprintf(
				    stderr,
				    "gpu-probe: --precision: fp32, tf32, fp16, bf16 or fp8, got "
				    "\"%s\"\n",
				    v);
				return -1;
			}
		} else if (!strcmp(a, "--timeout")) {
			o->timeout_s = atoi(v);
			if (o->timeout_s < 1 || o->timeout_s > 3600) {
				fprintf(stderr, "gpu-probe: --timeout: 1..3600 seconds\n");
				return -1;
			}
		} else if (!strcmp(a, "--tamper")) {
			o->tamper = v;
			const char *eq = strchr(v, '=');
			if (eq)
				o->tamper_ms = atol(eq + 1);
		} else {
			fprintf(stderr, "gpu-probe: unknown option %s (see --help)\n", a);
			return -1;
		}
		if (takes)
			i++;
	}
	if (!o->cmd)
		o->cmd = "help";
	return 0;
}

static bool tamper_is(const struct opts *o, const char *kind)
{
	if (!o->tamper)
		return false;
	size_t n = strlen(kind);
	return !strncmp(o->tamper, kind, n) && (o->tamper[n] == '\0' || o->tamper[n] == '=');
}

/* ---- JSON output ------------------------------------------------------------------- */

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void print_identity(FILE *f, const struct probe_identity *id)
{
	fprintf(f, "{\"index\": %u, \"name\": ", id->index);
	json_str(f, id->name);
	fputs(", \"uuid\": ", f);
	json_str(f, id->uuid);
	fprintf(f,
	        ", \"pci_vendor_id\": %u, \"pci_device_id\": %u, \"pci_subsystem_id\": %u,"
	        " \"pci_bus_id\": ",
	        id->pci_vendor_id, id->pci_device_id, id->pci_subsystem_id);
	json_str(f, id->pci_bus_id);
	fprintf(f,
	        ", \"memory_total_bytes\": %" PRIu64 ", \"memory_mib\": %" PRIu64
	        ", \"sm_count\": %u, \"compute_capability\": \"%u.%u\", \"driver_version\": ",
	        id->memory_bytes, id->memory_bytes >> 20, id->sm_count, id->cc_major, id->cc_minor);
	json_str(f, id->driver_version);
	fprintf(f,
	        ", \"cuda_driver_version\": %u, \"cuda_runtime_version\": %u,"
	        " \"max_sm_clock_mhz\": %u, \"max_mem_clock_mhz\": %u, \"power_limit_mw\": %u,"
	        " \"pcie_max_gen\": %u, \"pcie_max_width\": %u, \"pcie_current_gen\": %u,"
	        " \"pcie_current_width\": %u, \"source\": \"%s\"}",
	        id->cuda_driver_version, id->cuda_runtime_version, id->max_sm_clock_mhz,
	        id->max_mem_clock_mhz, id->power_limit_mw, id->pcie_max_gen, id->pcie_max_width,
	        id->pcie_cur_gen, id->pcie_cur_width,
	        id->nvml                   ? "nvml"
	        : id->cuda_runtime_version ? "cuda_runtime"
	                                   : "cpu");
}

static const struct probe_backend *pick_backend(const struct opts *o, uint32_t *count)
{
	const struct probe_backend *b =
	    !strcmp(o->backend, "cpu") ? &probe_cpu_backend : probe_cuda_backend();
	if (!b) {
		fprintf(stderr,
		        "gpu-probe: this gpu-probe was built without CUDA (nvcc was not found at "
		        "build time); rebuild with -Dprobe=enabled, or use --backend cpu for the "
		        "CPU reference path\n");
		return NULL;
	}
	char err[512] = "";
	if (b->open(count, err, sizeof err)) {
		fprintf(stderr, "gpu-probe: no usable GPU: %s\n", err);
		return NULL;
	}
	return b;
}

static int cmd_info(const struct opts *o)
{
	uint32_t count;
	const struct probe_backend *b = pick_backend(o, &count);
	if (!b)
		return EXIT_NO_DEVICE;
	printf("{\"probe_version\": \"%s\", \"backend\": \"%s\", \"gpus\": [", PROBE_VERSION,
	       b->name);
	int rc = EXIT_OK;
	for (uint32_t d = 0; d < count; d++) {
		struct probe_identity id;
		char err[512] = "";
		if (d)
			fputs(", ", stdout);
		if (b->identity(d, &id, err, sizeof err)) {
			printf("{\"index\": %u, \"error\": ", d);
			json_str(stdout, err);
			fputc('}', stdout);
			rc = EXIT_INTERNAL;
			continue;
		}
		print_identity(stdout, &id);
	}
	puts("]}");
	b->close();
	return rc;
}

/* ---- bench --------------------------------------------------------------------------- */

static int64_t wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void print_transfer(const char *name, const struct probe_transfer *t)
{
	printf(", \"%s\": {\"gbps_median\": %.3f, \"gbps_max\": %.3f, \"bytes\": %" PRIu64
	       ", \"runs\": %u, \"pcie_gen_seen\": %u, \"pcie_width_seen\": %u,"
	       " \"sm_clock_mhz\": %u, \"power_mw\": %u, \"throttle_reasons\": %" PRIu64 "}",
	       name, t->gbps_median, t->gbps_max, t->bytes, t->runs, t->pcie_gen_seen,
	       t->pcie_width_seen, t->sm_clock_mhz, t->power_mw, t->throttle_reasons);
}

static void fill_identity_pb(Gpumatch__V1__GpuIdentity *g, const struct probe_identity *id)
{
	gpumatch__v1__gpu_identity__init(g);
	g->index = id->index;
	g->name = (char *)id->name;
	g->uuid = (char *)id->uuid;
	g->pci_vendor_id = id->pci_vendor_id;
	g->pci_device_id = id->pci_device_id;
	g->pci_subsystem_id = id->pci_subsystem_id;
	g->pci_bus_id = (char *)id->pci_bus_id;
	g->memory_mib = (uint32_t)(id->memory_bytes >> 20);
	g->sm_count = id->sm_count;
	g->compute_capability_major = id->cc_major;
	g->compute_capability_minor = id->cc_minor;
	g->driver_version = (char *)id->driver_version;
	g->cuda_driver_version = id->cuda_driver_version;
	g->cuda_runtime_version = id->cuda_runtime_version;
	g->max_sm_clock_mhz = id->max_sm_clock_mhz;
	g->max_mem_clock_mhz = id->max_mem_clock_mhz;
	g->power_limit_mw = id->power_limit_mw;
	g->pcie_max_gen = id->pcie_max_gen;
	g->pcie_max_width = id->pcie_max_width;
}

/* One sample of the device's conditions (what the backends take). */
static void conditions_pb(Gpumatch__V1__DeviceConditions *c, uint32_t sm_mhz, uint32_t power_mw,
                          uint64_t throttle)
{
	gpumatch__v1__device_conditions__init(c);
	c->samples = sm_mhz || power_mw ? 1 : 0;
	c->sm_clock_mhz_min = c->sm_clock_mhz_median = c->sm_clock_mhz_max = sm_mhz;
	c->power_mw_mean = c->power_mw_max = power_mw;
	c->throttle_reasons = throttle;
}

static int bench_proto(const struct probe_backend *b, uint32_t count, struct probe_identity *ids,
                       struct probe_bench *res, int64_t t0)
{
	Gpumatch__V1__ProbeReport rep = GPUMATCH__V1__PROBE_REPORT__INIT;
	char host[64] = "";
	gethostname(host, sizeof host - 1);
	rep.probe_version = PROBE_VERSION;
	rep.hostname = host;
	rep.started_at_us = t0;
	rep.finished_at_us = wall_us();
	rep.cpu_reference = !strcmp(b->name, "cpu");
	Gpumatch__V1__GpuProbeResult *gr = calloc(count, sizeof *gr);
	Gpumatch__V1__GpuProbeResult **grp = calloc(count, sizeof *grp);
	Gpumatch__V1__GpuIdentity *gi = calloc(count, sizeof *gi);
	Gpumatch__V1__GpuMeasurements *gm = calloc(count, sizeof *gm);
	Gpumatch__V1__GemmMeasurement *ge = calloc((size_t)count * 5, sizeof *ge);
	Gpumatch__V1__GemmMeasurement **gep = calloc((size_t)count * 5, sizeof *gep);
	Gpumatch__V1__Throughput *sum = calloc(count, sizeof *sum);
	/* per GPU: 5 GEMMs + memory + 2 copies, each with its conditions */
	Gpumatch__V1__DeviceConditions *dc = calloc((size_t)count * 8, sizeof *dc);
	Gpumatch__V1__MemoryBandwidthMeasurement *mb = calloc(count, sizeof *mb);
	Gpumatch__V1__TransferMeasurement *tm = calloc((size_t)count * 2, sizeof *tm);
	int rc = EXIT_INTERNAL;
	if (!gr || !grp || !gi || !gm || !ge || !gep || !sum || !dc || !mb || !tm)
		goto out;
	for (uint32_t d = 0; d < count; d++) {
		gpumatch__v1__gpu_probe_result__init(&gr[d]);
		gpumatch__v1__gpu_measurements__init(&gm[d]);
		gpumatch__v1__throughput__init(&sum[d]);
		fill_identity_pb(&gi[d], &ids[d]);
		gr[d].identity = &gi[d];
		gr[d].measurements = &gm[d];
		gm[d].summary = &sum[d];
		gm[d].gemm = &gep[5 * d];
		for (int i = 0; i < res[d].ngemm; i++) {
			const struct probe_gemm *g = &res[d].gemm[i];
			if (g->error[0])
				continue;
			Gpumatch__V1__GemmMeasurement *e = &ge[5 * d + gm[d].n_gemm];
			gpumatch__v1__gemm_measurement__init(e);
			e->precision = (Gpumatch__V1__Precision)g->precision;
			e->m = g->m;
			e->n = g->n;
			e->k = g->k;
			e->tflops_median = g->tflops_median;
			e->tflops_min = g->tflops_min;
			e->tflops_max = g->tflops_max;
			e->runs = g->runs;
			e->warmup_runs = g->warmup_runs;
			Gpumatch__V1__DeviceConditions *c = &dc[8 * d + gm[d].n_gemm];
			conditions_pb(c, g->sm_clock_mhz, g->power_mw, g->throttle_reasons);
			e->conditions = c;
			gep[5 * d + gm[d].n_gemm++] = e;
			double *slot[] = { NULL,
				           &sum[d].fp32_tflops,
				           &sum[d].tf32_tflops,
				           &sum[d].fp16_tflops,
				           &sum[d].bf16_tflops,
				           &sum[d].fp8_tflops };
			if (g->precision >= 1 && g->precision <= 5)
				*slot[g->precision] = g->tflops_median;
		}
		sum[d].mem_bandwidth_gbps = res[d].device_memory.gbps_median;
		if (!rep.cpu_reference) {
			const struct probe_transfer *m = &res[d].device_memory;
			gpumatch__v1__memory_bandwidth_measurement__init(&mb[d]);
			mb[d].gbps_median = m->gbps_median;
			mb[d].gbps_max = m->gbps_max;
			mb[d].bytes = m->bytes;
			mb[d].runs = m->runs;
			conditions_pb(&dc[8 * d + 5], m->sm_clock_mhz, m->power_mw,
			              m->throttle_reasons);
			mb[d].conditions = &dc[8 * d + 5];
			gm[d].device_memory = &mb[d];
			const struct probe_transfer *t[2] = { &res[d].host_to_device,
				                              &res[d].device_to_host };
			for (int k = 0; k < 2; k++) {
				Gpumatch__V1__TransferMeasurement *x = &tm[2 * d + k];
				gpumatch__v1__transfer_measurement__init(x);
				x->gbps_median = t[k]->gbps_median;
				x->gbps_max = t[k]->gbps_max;
				x->bytes = t[k]->bytes;
				x->runs = t[k]->runs;
				x->pinned = true;
				x->pcie_gen_seen = t[k]->pcie_gen_seen;
				x->pcie_width_seen = t[k]->pcie_width_seen;
				conditions_pb(&dc[8 * d + 6 + k], t[k]->sm_clock_mhz,
				              t[k]->power_mw, t[k]->throttle_reasons);
				x->conditions = &dc[8 * d + 6 + k];
			}
			gm[d].host_to_device = &tm[2 * d];
			gm[d].device_to_host = &tm[2 * d + 1];
		}
		grp[d] = &gr[d];
	}
	rep.n_gpus = count;
	rep.gpus = grp;
	size_t n = protobuf_c_message_get_packed_size(&rep.base);
	uint8_t *buf = malloc(n ? n : 1);
	if (buf) {
		protobuf_c_message_pack(&rep.base, buf);
		rc = fwrite(buf, 1, n, stdout) == n ? EXIT_OK : EXIT_INTERNAL;
		free(buf);
	}
out:
	free(gr);
	free(grp);
	free(gi);
	free(gm);
	free(ge);
	free(gep);
	free(sum);
	free(dc);
	free(mb);
	free(tm);
	return rc;
}

static int cmd_bench(const struct opts *o)
{
	uint32_t count;
	const struct probe_backend *b = pick_backend(o, &count);
	if (!b)
		return EXIT_NO_DEVICE;
	int64_t t0 = wall_us();
	struct probe_identity *ids = calloc(count, sizeof *ids);
	struct probe_bench *res = calloc(count, sizeof *res);
	int rc = EXIT_OK;
	if (!ids || !res) {
		rc = EXIT_INTERNAL;
		goto out;
	}
	for (uint32_t d = 0; d < count; d++) {
		char err[512] = "";
		if (b->identity(d, &ids[d], err, sizeof err) ||
		    b->bench(d, o->quick, &res[d], err, sizeof err)) {
			fprintf(stderr, "gpu-probe: GPU %u: %s\n", d, err);
			rc = EXIT_INTERNAL;
			goto out;
		}
	}
	if (o->proto) {
		rc = bench_proto(b, count, ids, res, t0);
		goto out;
	}
	printf("{\"probe_version\": \"%s\", \"backend\": \"%s\", \"cpu_reference\": %s,"
	       " \"started_at_us\": %" PRId64 ", \"finished_at_us\": %" PRId64
	       ", \"units\": {\"gemm\": \"TFLOPS (10^12 flop/s, dense)\","
	       " \"bandwidth\": \"GB/s (10^9 bytes/s)\", \"clock\": \"MHz\","
	       " \"power\": \"mW\"}, \"gpus\": [",
	       PROBE_VERSION, b->name, strcmp(b->name, "cpu") ? "false" : "true", t0, wall_us());
	for (uint32_t d = 0; d < count; d++) {
		printf("%s{\"identity\": ", d ? ", " : "");
		print_identity(stdout, &ids[d]);
		fputs(", \"gemm\": [", stdout);
		for (int i = 0; i < res[d].ngemm; i++) {
			const struct probe_gemm *g = &res[d].gemm[i];
			printf("%s{\"precision\": \"%s\"", i ? ", " : "",
			       precision_names[g->precision]);
			if (g->error[0]) {
				fputs(", \"error\": ", stdout);
				json_str(stdout, g->error);
				fputc('}', stdout);
				continue;
			}
			printf(", \"m\": %u, \"n\": %u, \"k\": %u, \"tflops_median\": %.4f,"
			       " \"tflops_min\": %.4f, \"tflops_max\": %.4f, \"runs\": %u,"
			       " \"warmup_runs\": %u, \"sm_clock_mhz\": %u, \"power_mw\": %u,"
			       " \"throttle_reasons\": %" PRIu64 "}",
			       g->m, g->n, g->k, g->tflops_median, g->tflops_min, g->tflops_max,
			       g->runs, g->warmup_runs, g->sm_clock_mhz, g->power_mw,
			       g->throttle_reasons);
		}
		fputc(']', stdout);
		if (strcmp(b->name, "cpu")) {
			print_transfer("device_memory", &res[d].device_memory);
			print_transfer("host_to_device", &res[d].host_to_device);
			print_transfer("device_to_host", &res[d].device_to_host);
		}
		fputc('}', stdout);
	}
	puts("]}");
out:
	free(ids);
	free(res);
	b->close();
	return rc;
}

/* ---- challenge ----------------------------------------------------------------------- */

/* One GPU's part of a challenge: its chain's keys and trees. */
struct gpu_run {
	const struct probe_backend *b;
	const struct opts *o;
	const Gpumatch__V1__ProbeChallenge *ch;
	const Gpumatch__V1__ProbeTarget *target;
	uint32_t dev;
	struct challenge_params p;
	char uuid[CHALLENGE_MAX_UUID];          /* what the commitment names */
	uint8_t (*keys)[CHALLENGE_HASH_BYTES];  /* chain keys */
	uint8_t (*roots)[CHALLENGE_HASH_BYTES]; /* chain roots */
	uint8_t (*trees)[CHALLENGE_HASH_BYTES]; /* chain trees, tree_size each */
	size_t tree_size;
	int64_t elapsed_us;
	struct probe_identity id;
	int failed;
	char err[512];
};

/* The test tamper "flip-committed": the last step's rows each carry one
 * wrong element, committed consistently, so the paths check out and only
 * recomputing the row shows it. */
static void flip_row(float *row)
{
	row[0] += 1.0f;
}

static void *gpu_run_thread(void *arg)
{
	struct gpu_run *r = arg;
	const struct challenge_params *p = &r->p;
	uint8_t seed[CHALLENGE_SEED_BYTES];
	memcpy(seed, r->ch->seed.data, CHALLENGE_SEED_BYTES);
	if (tamper_is(r->o, "other-seed"))
		seed[0] ^= 0x5a;
	challenge_first_key(seed, r->ch->node_id, r->uuid, r->keys[0]);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (uint32_t s = 0; s < p->chain; s++) {
		uint8_t(*tree)[CHALLENGE_HASH_BYTES] = r->trees + (size_t)s * r->tree_size;
		if (s + 1 == p->chain && tamper_is(r->o, "flip-committed")) {
			float *row = malloc((size_t)p->n * sizeof *row);
			if (!row) {
				snprintf(r->err, sizeof r->err, "out of memory");
				r->failed = 1;
				return NULL;
			}
			for (uint32_t i = 0; i < p->m; i++) {
				challenge_row(p, r->keys[s], i, row);
				flip_row(row);
				challenge_leaf(row, p->n, tree[i]);
			}
			free(row);
		} else if (r->b->step(r->dev, p, (int)r->ch->precision, r->keys[s], tree, r->err,
		                      sizeof r->err)) {
			r->failed = 1;
			return NULL;
		}
		challenge_tree_build(tree, p->m, r->roots[s]);
		if (s + 1 < p->chain)
			challenge_next_key(r->keys[s], r->roots[s], r->keys[s + 1]);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	r->elapsed_us =
	    (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000;
	return NULL;
}

static const char *enum_name(const ProtobufCEnumDescriptor *d, int v)
{
	const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(d, v);
	return ev ? ev->name : "?";
}

static void print_verdict(const Gpumatch__V1__ProbeVerdict *v, const char *replay_error)
{
	printf("{\"challenge_id\": %" PRIu64 ", \"node_id\": %" PRIu64 ", \"result\": \"%s\","
	       " \"reason\": \"%s\", \"message\": ",
	       v->challenge_id, v->node_id,
	       enum_name(&gpumatch__v1__probe_result__descriptor, v->result),
	       enum_name(&gpumatch__v1__probe_failure_reason__descriptor, v->reason));
	json_str(stdout, v->message);
	printf(", \"verification_status\": \"%s\", \"gpus\": [",
	       enum_name(&gpumatch__v1__verification_status__descriptor, v->verification_status));
	for (size_t i = 0; i < v->n_gpus; i++) {
		const Gpumatch__V1__GpuVerdict *g = v->gpus[i];
		printf("%s{\"gpu_index\": %u, \"gpu_uuid\": ", i ? ", " : "", g->gpu_index);
		json_str(stdout, g->gpu_uuid);
		printf(", \"result\": \"%s\", \"reason\": \"%s\", \"message\": ",
		       enum_name(&gpumatch__v1__probe_result__descriptor, g->result),
		       enum_name(&gpumatch__v1__probe_failure_reason__descriptor, g->reason));
		json_str(stdout, g->message);
		printf(", \"verified_tflops\": %.6g, \"expected_peak_tflops\": %.6g,"
		       " \"derate_ppm\": %u}",
		       g->verified_tflops, g->expected_peak_tflops, g->derate_ppm);
	}
	fputc(']', stdout);
	if (replay_error) {
		fputs(", \"replay_error\": ", stdout);
		json_str(stdout, replay_error);
	}
	puts("}");
}

static void print_refusal(const char *phase, const char *err)
{
	printf("{\"result\": \"ERROR\", \"phase\": \"%s\", \"error\": ", phase);
	json_str(stdout, err);
	puts("}");
	fprintf(stderr, "gpu-probe: %s: %s\n", phase, err);
}

static int open_rows(const struct opts *o, struct gpu_run *runs, size_t nruns,
                     const Gpumatch__V1__RowSelection *sel, Gpumatch__V1__ProbeOpening *op)
{
	op->challenge_id = sel->challenge_id;
	op->n_gpus = sel->n_gpus;
	op->gpus = calloc(sel->n_gpus ? sel->n_gpus : 1, sizeof *op->gpus);
	if (!op->gpus)
		return -1;
	bool first = true;
	for (size_t g = 0; g < sel->n_gpus; g++) {
		const Gpumatch__V1__GpuRowSelection *gs = sel->gpus[g];
		struct gpu_run *r = NULL;
		for (size_t i = 0; i < nruns; i++)
			if (runs[i].target->gpu_index == gs->gpu_index)
				r = &runs[i];
		Gpumatch__V1__GpuOpening *go = calloc(1, sizeof *go);
		if (!go)
			return -1;
		gpumatch__v1__gpu_opening__init(go);
		op->gpus[g] = go;
		go->gpu_index = gs->gpu_index;
		if (!r)
			continue;
		go->rows = calloc(gs->n_rows ? gs->n_rows : 1, sizeof *go->rows);
		if (!go->rows)
			return -1;
		for (size_t k = 0; k < gs->n_rows; k++) {
			uint32_t row = gs->rows[k];
			uint32_t step = k < gs->n_steps ? gs->steps[k] : r->p.chain - 1;
			if (row >= r->p.m || step >= r->p.chain)
				continue; /* the server asked for something absurd: leave it out */
			Gpumatch__V1__RowOpening *ro = calloc(1, sizeof *ro);
			if (!ro)
				return -1;
			gpumatch__v1__row_opening__init(ro);
			go->rows[go->n_rows++] = ro;
			ro->row = row;
			ro->step = step;
			ro->n_values = r->p.n;
			ro->values = malloc((size_t)r->p.n * sizeof *ro->values);
			uint32_t plen = challenge_path_len(r->p.m, row);
			ro->path = calloc(plen ? plen : 1, sizeof *ro->path);
			uint8_t(*path)[CHALLENGE_HASH_BYTES] =
			    malloc((plen ? plen : 1) * (size_t)CHALLENGE_HASH_BYTES);
			if (!ro->values || !ro->path || !path) {
				free(path);
				return -1;
			}
			/* The values are recomputed here from the step's key: a correct
			 * device produced exactly these bits. */
			challenge_row(&r->p, r->keys[step], row, ro->values);
			if (step + 1 == r->p.chain && tamper_is(o, "flip-committed"))
				flip_row(ro->values);
			if (first && tamper_is(o, "flip-opened"))
				flip_row(ro->values);
			challenge_tree_path(r->trees + (size_t)step * r->tree_size, r->p.m, row,
			                    path);
			if (first && tamper_is(o, "wrong-path") && plen)
				path[0][0] ^= 1;
			ro->n_path = plen;
			for (uint32_t i = 0; i < plen; i++) {
				ro->path[i].len = CHALLENGE_HASH_BYTES;
				ro->path[i].data = malloc(CHALLENGE_HASH_BYTES);
				if (!ro->path[i].data) {
					free(path);
					return -1;
				}
				memcpy(ro->path[i].data, path[i], CHALLENGE_HASH_BYTES);
			}
			free(path);
			first = false;
		}
	}
	return 0;
}

static void free_opening(Gpumatch__V1__ProbeOpening *op)
{
	for (size_t g = 0; g < op->n_gpus; g++) {
		Gpumatch__V1__GpuOpening *go = op->gpus[g];
		if (!go)
			continue;
		for (size_t k = 0; k < go->n_rows; k++) {
			Gpumatch__V1__RowOpening *ro = go->rows[k];
			for (size_t i = 0; i < ro->n_path; i++)
				free(ro->path[i].data);
			free(ro->path);
			free(ro->values);
			free(ro);
		}
		free(go->rows);
		free(go);
	}
	free(op->gpus);
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* The token from --token-file / GPUMATCH_TOKEN_FILE: a regular file only
 * its owner may read. Returns 0, or -1 after saying why. */
static int read_token_file(const char *path, char *out, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st)) {
		fprintf(stderr, "gpu-probe: token file %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (!S_ISREG(st.st_mode) || (st.st_mode & 077)) {
		fprintf(stderr,
		        "gpu-probe: token file %s: mode %03o lets group or others read it; chmod "
		        "600 it\n",
		        path, (unsigned)(st.st_mode & 0777));
		close(fd);
		return -1;
	}
	ssize_t n = read(fd, out, len - 1);
	close(fd);
	if (n <= 0) {
		fprintf(stderr, "gpu-probe: token file %s: empty or unreadable\n", path);
		return -1;
	}
	out[n] = '\0';
	out[strcspn(out, "\r\n")] = '\0';
	return *out ? 0 : -1;
}

static int cmd_challenge(const struct opts *o_in)
{
	struct opts oc = *o_in;
	const struct opts *o = &oc;
	static char token_buf[1024];
	if (oc.token_file && *oc.token_file) {
		if (read_token_file(oc.token_file, token_buf, sizeof token_buf))
			return EXIT_USAGE;
		oc.token = token_buf;
	}
	http_tls_setup(oc.ca_file, oc.cert_file, oc.key_file);
	if (!o->server || !o->token || !o->node_id) {
		fprintf(stderr, "gpu-probe: challenge needs --server, --token (or GPUMATCH_TOKEN) "
		                "and --node-id\n");
		return EXIT_USAGE;
	}
	uint32_t count;
	const struct probe_backend *b = pick_backend(o, &count);
	if (!b)
		return EXIT_NO_DEVICE;
	char err[1024] = "";
	int rc = EXIT_INTERNAL;
	Gpumatch__V1__RequestChallengeResponse *cr = NULL;
	Gpumatch__V1__SubmitProbeResponse *r1 = NULL, *r2 = NULL, *r3 = NULL;
	struct gpu_run *runs = NULL;
	size_t nruns = 0;
	Gpumatch__V1__GpuCommitment *gc = NULL, **gcp = NULL;
	Gpumatch__V1__ProbeOpening op = GPUMATCH__V1__PROBE_OPENING__INIT;
	ProtobufCBinaryData *sroots = NULL;
	Gpumatch__V1__GpuIdentity *gids = NULL;

	Gpumatch__V1__RequestChallengeRequest rq = GPUMATCH__V1__REQUEST_CHALLENGE_REQUEST__INIT;
	rq.node_id = o->node_id;
	rq.n_gpu_indexes = o->ngpus;
	rq.gpu_indexes = (uint32_t *)o->gpus;
	rq.precision = (Gpumatch__V1__Precision)o->precision;
	cr = (Gpumatch__V1__RequestChallengeResponse *)http_call(
	    o->server, o->token, "NodeService/RequestChallenge", &rq.base,
	    &gpumatch__v1__request_challenge_response__descriptor, o->timeout_s, err, sizeof err);
	if (!cr && http_last_tls_error()) {
		/* the server could not be verified: nothing was sent to it */
		fprintf(stderr, "gpu-probe: %s\n", err);
		rc = EXIT_REJECTED;
		goto out;
	}
	if (!cr || !cr->challenge) {
		print_refusal("RequestChallenge", cr ? "no challenge in the reply" : err);
		rc = EXIT_SERVER;
		goto out;
	}
	const Gpumatch__V1__ProbeChallenge *ch = cr->challenge;
	struct challenge_params p = { ch->m, ch->n, ch->k, ch->chain_length, ch->value_range };
	const char *why;
	if (challenge_params_check(&p, &why) || ch->seed.len != CHALLENGE_SEED_BYTES ||
	    !ch->n_gpus) {
		print_refusal("RequestChallenge", "the server's challenge is malformed");
		rc = EXIT_SERVER;
		goto out;
	}
	if (tamper_is(o, "commit-delay"))
		sleep_ms(o->tamper_ms);
	nruns = ch->n_gpus;
	runs = calloc(nruns, sizeof *runs);
	if (!runs)
		goto out;
	size_t tsize = challenge_tree_size(p.m);
	for (size_t i = 0; i < nruns; i++) {
		struct gpu_run *r = &runs[i];
		r->b = b;
		r->o = o;
		r->ch = ch;
		r->target = ch->gpus[i];
		r->p = p;
		r->tree_size = tsize;
		snprintf(r->uuid, sizeof r->uuid, "%s",
		         tamper_is(o, "other-uuid") ? "GPU-00000000-forged" : r->target->gpu_uuid);
		if (!strcmp(b->name, "cpu")) {
			/* the reference path stands in for every GPU */
			r->dev = 0;
			b->identity(0, &r->id, err, sizeof err);
			r->id.index = r->target->gpu_index;
			snprintf(r->id.uuid, sizeof r->id.uuid, "%s", r->uuid);
		} else {
			bool found = false;
			for (uint32_t d = 0; d < count && !found; d++) {
				struct probe_identity id;
				if (!b->identity(d, &id, err, sizeof err) &&
				    !strcmp(id.uuid, r->target->gpu_uuid)) {
					r->dev = d;
					r->id = id;
					found = true;
				}
			}
			if (!found) {
				snprintf(err, sizeof err,
				         "GPU %u of the challenge (UUID %s) is not on this machine",
				         r->target->gpu_index, r->target->gpu_uuid);
				print_refusal("challenge", err);
				rc = EXIT_NO_DEVICE;
				goto out;
			}
		}
		r->keys = malloc((size_t)p.chain * CHALLENGE_HASH_BYTES);
		r->roots = malloc((size_t)p.chain * CHALLENGE_HASH_BYTES);
		r->trees = malloc((size_t)p.chain * tsize * CHALLENGE_HASH_BYTES);
		if (!r->keys || !r->roots || !r->trees) {
			fprintf(stderr, "gpu-probe: out of memory for %u steps' hash trees\n",
			        p.chain);
			goto out;
		}
	}
	/* every GPU runs its chain at once: the server times them together */
	pthread_t *th = calloc(nruns, sizeof *th);
	if (!th)
		goto out;
	for (size_t i = 0; i < nruns; i++)
		if (pthread_create(&th[i], NULL, gpu_run_thread, &runs[i])) {
			runs[i].failed = 1;
			snprintf(runs[i].err, sizeof runs[i].err, "cannot start a thread");
			th[i] = 0;
		}
	for (size_t i = 0; i < nruns; i++)
		if (th[i])
			pthread_join(th[i], NULL);
	free(th);
	for (size_t i = 0; i < nruns; i++)
		if (runs[i].failed) {
			fprintf(stderr, "gpu-probe: GPU %u: %s\n", runs[i].target->gpu_index,
			        runs[i].err);
			goto out;
		}

	Gpumatch__V1__ProbeCommitment com = GPUMATCH__V1__PROBE_COMMITMENT__INIT;
	gc = calloc(nruns, sizeof *gc);
	gcp = calloc(nruns, sizeof *gcp);
	gids = calloc(nruns, sizeof *gids);
	sroots = calloc((size_t)nruns * p.chain, sizeof *sroots);
	if (!gc || !gcp || !sroots || !gids)
		goto out;
	uint8_t forged[CHALLENGE_HASH_BYTES];
	getrandom(forged, sizeof forged, 0);
	for (size_t i = 0; i < nruns; i++) {
		struct gpu_run *r = &runs[i];
		gpumatch__v1__gpu_commitment__init(&gc[i]);
		gc[i].gpu_index = r->target->gpu_index;
		gc[i].gpu_uuid = r->uuid;
		if (tamper_is(o, "wrong-root"))
			memcpy(r->roots[p.chain - 1], forged, sizeof forged);
		gc[i].root.len = CHALLENGE_HASH_BYTES;
		gc[i].root.data = r->roots[p.chain - 1];
		gc[i].leaf_count = p.m;
		gc[i].device_elapsed_us = r->elapsed_us;
		fill_identity_pb(&gids[i], &r->id);
		gc[i].identity = &gids[i];
		gc[i].n_step_roots = p.chain;
		gc[i].step_roots = &sroots[i * p.chain];
		for (uint32_t s = 0; s < p.chain; s++) {
			sroots[i * p.chain + s].len = CHALLENGE_HASH_BYTES;
			sroots[i * p.chain + s].data = r->roots[s];
		}
		gcp[i] = &gc[i];
	}
	com.challenge_id = ch->challenge_id;
	com.n_gpus = nruns;
	com.gpus = gcp;
	Gpumatch__V1__SubmitProbeRequest sp = GPUMATCH__V1__SUBMIT_PROBE_REQUEST__INIT;
	sp.node_id = o->node_id;
	sp.challenge_id = ch->challenge_id;
	sp.commitment = &com;
	r1 = (Gpumatch__V1__SubmitProbeResponse *)http_call(
	    o->server, o->token, "NodeService/SubmitProbe", &sp.base,
	    &gpumatch__v1__submit_probe_response__descriptor, o->timeout_s, err, sizeof err);
	if (!r1) {
		print_refusal("SubmitProbe(commitment)", err);
		rc = EXIT_SERVER;
		goto out;
	}
	if (r1->verdict || !r1->selection) {
		if (r1->verdict)
			print_verdict(r1->verdict, NULL);
		rc = r1->verdict &&
		             r1->verdict->result == GPUMATCH__V1__PROBE_RESULT__PROBE_RESULT_PASS
		         ? EXIT_OK
		         : EXIT_REJECTED;
		goto out;
	}
	if (tamper_is(o, "open-delay"))
		sleep_ms(o->tamper_ms);
	if (open_rows(o, runs, nruns, r1->selection, &op)) {
		fprintf(stderr, "gpu-probe: out of memory opening rows\n");
		goto out;
	}
	Gpumatch__V1__SubmitProbeRequest so = GPUMATCH__V1__SUBMIT_PROBE_REQUEST__INIT;
	so.node_id = o->node_id;
	so.challenge_id = ch->challenge_id;
	so.opening = &op;
	r2 = (Gpumatch__V1__SubmitProbeResponse *)http_call(
	    o->server, o->token, "NodeService/SubmitProbe", &so.base,
	    &gpumatch__v1__submit_probe_response__descriptor, o->timeout_s, err, sizeof err);
	if (!r2 || !r2->verdict) {
		print_refusal("SubmitProbe(opening)", r2 ? "no verdict in the reply" : err);
		rc = EXIT_SERVER;
		goto out;
	}
	rc = r2->verdict->result == GPUMATCH__V1__PROBE_RESULT__PROBE_RESULT_PASS ? EXIT_OK
	                                                                          : EXIT_REJECTED;
	if (tamper_is(o, "replay")) {
		/* the same commitment again: a used challenge must be refused */
		char rerr[1024] = "";
		r3 = (Gpumatch__V1__SubmitProbeResponse *)http_call(
		    o->server, o->token, "NodeService/SubmitProbe", &sp.base,
		    &gpumatch__v1__submit_probe_response__descriptor, o->timeout_s, rerr,
		    sizeof rerr);
		print_verdict(r2->verdict, r3 ? "accepted (replay not refused)" : rerr);
		rc = r3 ? EXIT_INTERNAL : EXIT_SERVER;
		goto out;
	}
	print_verdict(r2->verdict, NULL);
out:
	for (size_t i = 0; runs && i < nruns; i++) {
		free(runs[i].keys);
		free(runs[i].roots);
		free(runs[i].trees);
	}
	free(runs);
	free(gc);
	free(gcp);
	free(gids);
	free(sroots);
	free_opening(&op);
	if (cr)
		protobuf_c_message_free_unpacked(&cr->base, NULL);
	if (r1)
		protobuf_c_message_free_unpacked(&r1->base, NULL);
	if (r2)
		protobuf_c_message_free_unpacked(&r2->base, NULL);
	if (r3)
		protobuf_c_message_free_unpacked(&r3->base, NULL);
	b->close();
	return rc;
}

int main(int argc, char **argv)
{
	struct opts o;
	if (parse_args(argc, argv, &o))
		return EXIT_USAGE;
	if (!strcmp(o.cmd, "help")) {
		usage(stdout);
		return EXIT_OK;
	}
	if (!strcmp(o.cmd, "version")) {
		printf("gpu-probe %s\n", GPUMATCH_VERSION_STRING);
		return EXIT_OK;
	}
	if (!strcmp(o.cmd, "info"))
		return cmd_info(&o);
	if (!strcmp(o.cmd, "bench"))
		return cmd_bench(&o);
	if (!strcmp(o.cmd, "challenge"))
		return cmd_challenge(&o);
	fprintf(stderr, "gpu-probe: unknown command \"%s\" (see --help)\n", o.cmd);
	return EXIT_USAGE;
}
