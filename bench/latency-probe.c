/* latency-probe.c — submit-to-lease latency with idle capacity: plays one
 * node's agent (register, heartbeat, an AcquireLease long-poll always
 * outstanding) and one tenant submitting a single-GPU job at a time, and
 * times each job from SubmitJob's reply to the AcquireLease reply that
 * carries its lease. Each lease is reported RUNNING then SUCCEEDED so that
 * its GPU is free for the next sample. bench/latency runs it. */
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/http.h>

#include "gpumatch/v1/job_service.pb-c.h"
#include "gpumatch/v1/node_service.pb-c.h"
#include "rpc-client.h"

#define JOB_SVC  "/gpumatch.v1.JobService/"
#define NODE_SVC "/gpumatch.v1.NodeService/"
#define MAX_GPUS 8

static struct {
	char host[256];
	int port;
	const char *tenant_token, *operator_token;
	int samples, warmup, gpus;
	uint32_t wait_ms;
	int gap_ms, heartbeat_ms;
	struct event_base *base;
	/* one connection per role, as an agent and a client would have */
	struct evhttp_connection *poll_conn, *submit_conn, *ctl_conn, *hb_conn;
	struct event *next_ev, *hb_ev;
	char nonce[32];
	int rc;

	uint64_t node_id;
	char uuids[MAX_GPUS][48];
	bool hb_busy;

	/* the sample in progress */
	int seq;            /* samples started, warm-up included */
	uint64_t job_id;    /* from SubmitJob's reply; 0 until it comes */
	uint64_t lease_job; /* job of the lease the poll returned; 0 until then */
	uint64_t lease_id, fencing_token, running_lease;
	int64_t submit_sent_ns, submit_reply_ns, lease_ns;
	bool reporting;

	double *lat_ms, *e2e_ms, *submit_ms, *report_ms;
	int n;
	int64_t report_sent_ns;
	uint64_t polls, empty_polls, stray_leases, early_leases;
} P;

static void fail(const char *fmt, const char *detail, int status)
{
	fprintf(stderr, "latency-probe: %s", fmt);
	if (status)
		fprintf(stderr, " (HTTP %d)", status);
	if (detail)
		fprintf(stderr, ": %s", detail);
	fprintf(stderr, "\n");
	P.rc = 2;
	event_base_loopbreak(P.base);
}

static void call(struct evhttp_connection *c, const char *path, const char *token,
                 const ProtobufCMessage *msg, rpcc_done_cb cb)
{
	if (rpcc_call(c, P.host, path, token, msg, cb, NULL)) {
		fprintf(stderr, "latency-probe: cannot queue %s\n", path);
		exit(2);
	}
}

/* The Connect error body is JSON text; show a bounded piece of it. */
static const char *error_text(const uint8_t *body, size_t len)
{
	static char buf[320];
	snprintf(buf, sizeof buf, "%.*s", (int)(len > 300 ? 300 : len),
	         body ? (const char *)body : "");
	return buf;
}

static void poll_lease(void);
static void submit_next(void);

/* ---- heartbeats ---------------------------------------------------------------------- */

static void heartbeat_cb(int status, const uint8_t *body, size_t len, void *arg);

static void send_heartbeat(void)
{
	Gpumatch__V1__GpuHealth h[MAX_GPUS], *hp[MAX_GPUS];
	for (int i = 0; i < P.gpus; i++) {
		gpumatch__v1__gpu_health__init(&h[i]);
		h[i].index = (uint32_t)i;
		h[i].uuid = P.uuids[i];
		h[i].status = GPUMATCH__V1__GPU_HEALTH_STATUS__GPU_HEALTH_STATUS_HEALTHY;
		hp[i] = &h[i];
	}
	uint64_t running = P.running_lease;
	Gpumatch__V1__HeartbeatRequest req = GPUMATCH__V1__HEARTBEAT_REQUEST__INIT;
	req.node_id = P.node_id;
	req.n_gpus = (size_t)P.gpus;
	req.gpus = hp;
	req.n_running_lease_ids = running ? 1 : 0;
	req.running_lease_ids = &running;
	req.agent_version = "latency-probe/1";
	P.hb_busy = true;
	call(P.hb_conn, NODE_SVC "Heartbeat", P.operator_token, &req.base, heartbeat_cb);
}

static void heartbeat_cb(int status, const uint8_t *body, size_t len, void *arg)
{
	(void)arg;
	P.hb_busy = false;
	if (status != 200) {
		fail("Heartbeat failed", error_text(body, len), status);
		return;
	}
	Gpumatch__V1__HeartbeatResponse *r =
	    gpumatch__v1__heartbeat_response__unpack(NULL, len, body);
	if (!r || r->node_state != GPUMATCH__V1__NODE_STATE__NODE_STATE_READY) {
		fail("node not READY after a heartbeat", NULL, 0);
		if (r)
			gpumatch__v1__heartbeat_response__free_unpacked(r, NULL);
		return;
	}
	if (r->next_heartbeat_ms)
		P.heartbeat_ms = (int)r->next_heartbeat_ms; /* as an agent is told */
	gpumatch__v1__heartbeat_response__free_unpacked(r, NULL);
	if (!event_pending(P.hb_ev, EV_TIMEOUT, NULL)) {
		/* the first heartbeat made the node READY: start sampling */
		struct timeval tv = { P.heartbeat_ms / 1000, (P.heartbeat_ms % 1000) * 1000 };
		evtimer_add(P.hb_ev, &tv);
		if (!P.seq) {
			fprintf(stderr,
			        "latency-probe: node %" PRIu64 " READY; %d samples (+%d warm-up)\n",
			        P.node_id, P.samples, P.warmup);
			poll_lease();
			struct timeval gap = { 0, P.gap_ms * 1000 };
			evtimer_add(P.next_ev, &gap);
		}
	}
}

static void hb_timer_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	struct timeval tv = { P.heartbeat_ms / 1000, (P.heartbeat_ms % 1000) * 1000 };
	evtimer_add(P.hb_ev, &tv);
	if (!P.hb_busy)
		send_heartbeat();
}

/* ---- register --------------------------------------------------------------------------- */

static void register_cb(int status, const uint8_t *body, size_t len, void *arg)
{
	(void)arg;
	if (status != 200) {
		fail("RegisterNode failed", error_text(body, len), status);
		return;
	}
	Gpumatch__V1__RegisterNodeResponse *r =
	    gpumatch__v1__register_node_response__unpack(NULL, len, body);
	if (!r || !r->node || !r->node->id) {
		fail("RegisterNode: reply without a node", NULL, 0);
		if (r)
			gpumatch__v1__register_node_response__free_unpacked(r, NULL);
		return;
	}
	P.node_id = r->node->id;
	gpumatch__v1__register_node_response__free_unpacked(r, NULL);
	send_heartbeat();
}

static void register_node(void)
{
	Gpumatch__V1__Gpu g[MAX_GPUS], *gp[MAX_GPUS];
	Gpumatch__V1__Throughput claimed = GPUMATCH__V1__THROUGHPUT__INIT;
	Gpumatch__V1__Precision precs[] = { GPUMATCH__V1__PRECISION__PRECISION_FP32,
		                            GPUMATCH__V1__PRECISION__PRECISION_TF32,
		                            GPUMATCH__V1__PRECISION__PRECISION_FP16,
		                            GPUMATCH__V1__PRECISION__PRECISION_BF16 };
	claimed.fp32_tflops = 35.6;
	claimed.tf32_tflops = 35.6;
	claimed.fp16_tflops = 71;
	claimed.bf16_tflops = 71;
	claimed.mem_bandwidth_gbps = 936;
	for (int i = 0; i < P.gpus; i++) {
		gpumatch__v1__gpu__init(&g[i]);
		snprintf(P.uuids[i], sizeof P.uuids[i], "GPU-%s-%04d", P.nonce, i);
		g[i].index = (uint32_t)i;
		g[i].model = "RTX-3090-24GB";
		g[i].name = "NVIDIA GeForce RTX 3090";
		g[i].pci_vendor_id = 0x10de;
		g[i].pci_device_id = 0x2204;
		g[i].uuid = P.uuids[i];
		g[i].memory_mib = 24576;
		g[i].compute_capability_major = 8;
		g[i].compute_capability_minor = 6;
		g[i].n_precisions = sizeof precs / sizeof precs[0];
		g[i].precisions = precs;
		g[i].interconnect = GPUMATCH__V1__INTERCONNECT__INTERCONNECT_PCIE;
		g[i].claimed = &claimed;
		gp[i] = &g[i];
	}
	char name[64];
	snprintf(name, sizeof name, "latency-probe-%s", P.nonce);
	Gpumatch__V1__RegisterNodeRequest req = GPUMATCH__V1__REGISTER_NODE_REQUEST__INIT;
	req.name = name;
	req.region = "eu-west";
	req.price_per_gpu_hour_micros = 1500000;
	req.n_gpus = (size_t)P.gpus;
	req.gpus = gp;
	req.agent_version = "latency-probe/1";
	call(P.ctl_conn, NODE_SVC "RegisterNode", P.operator_token, &req.base, register_cb);
}

/* ---- one sample: submit, lease, report --------------------------------------------------- */

static void finish_sample(void);

static void report_cb(int status, const uint8_t *body, size_t len, void *arg)
{
	int seq = (int)(intptr_t)arg;
	if (status != 200) {
		fail("ReportLease failed", error_text(body, len), status);
		return;
	}
	if (seq == 1)
		return; /* SUCCEEDED is already queued behind it */
	if (P.seq > P.warmup)
		P.report_ms[P.n - 1] = (double)(rpcc_now_ns() - P.report_sent_ns) / 1e6;
	P.running_lease = 0;
	P.reporting = false;
	if (P.n >= P.samples) {
		event_base_loopbreak(P.base);
		return;
	}
	struct timeval gap = { 0, P.gap_ms * 1000 };
	evtimer_add(P.next_ev, &gap);
}

static void report(int seq, Gpumatch__V1__LeaseState state)
{
	Gpumatch__V1__ReportLeaseRequest req = GPUMATCH__V1__REPORT_LEASE_REQUEST__INIT;
	req.node_id = P.node_id;
	req.lease_id = P.lease_id;
	req.fencing_token = P.fencing_token;
	req.seq = (uint64_t)seq;
	req.state = state;
	if (rpcc_call(P.ctl_conn, P.host, NODE_SVC "ReportLease", P.operator_token, &req.base,
	              report_cb, (void *)(intptr_t)seq)) {
		fprintf(stderr, "latency-probe: cannot queue ReportLease\n");
		exit(2);
	}
}

/* Both replies are in: record, then run and end the lease (two reports
 * queued on one keep-alive connection, answered in order). */
static void finish_sample(void)
{
	if (!P.job_id || P.lease_job != P.job_id)
		return;
	if (P.seq > P.warmup) {
		double d = (double)(P.lease_ns - P.submit_reply_ns) / 1e6;
		if (d < 0) {
			/* both replies were read in one loop turn, the lease first */
			P.early_leases++;
			d = 0;
		}
		P.lat_ms[P.n] = d;
		P.e2e_ms[P.n] = (double)(P.lease_ns - P.submit_sent_ns) / 1e6;
		P.submit_ms[P.n] = (double)(P.submit_reply_ns - P.submit_sent_ns) / 1e6;
		P.n++;
	}
	P.reporting = true;
	P.report_sent_ns = rpcc_now_ns();
	report(1, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_RUNNING);
	report(2, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_SUCCEEDED);
}

static void submit_cb(int status, const uint8_t *body, size_t len, void *arg)
{
	(void)arg;
	P.submit_reply_ns = rpcc_now_ns();
	if (status != 200) {
		fail("SubmitJob failed", error_text(body, len), status);
		return;
	}
	Gpumatch__V1__SubmitJobResponse *r =
	    gpumatch__v1__submit_job_response__unpack(NULL, len, body);
	if (!r || !r->job || !r->job->id) {
		fail("SubmitJob: reply without a job", NULL, 0);
		if (r)
			gpumatch__v1__submit_job_response__free_unpacked(r, NULL);
		return;
	}
	P.job_id = r->job->id;
	gpumatch__v1__submit_job_response__free_unpacked(r, NULL);
	finish_sample();
}

static void submit_next(void)
{
	char key[96], name[64];
	P.seq++;
	snprintf(key, sizeof key, "latency-%s-%d", P.nonce, P.seq);
	snprintf(name, sizeof name, "latency-probe-%d", P.seq);
	char *cmd[] = { "python3", "-c", "print('hello from the latency probe')" };
	Gpumatch__V1__JobSpec__EnvEntry env, *envp = &env;
	gpumatch__v1__job_spec__env_entry__init(&env);
	env.key = "RUN_ID";
	env.value = key;
	Gpumatch__V1__JobSpec spec = GPUMATCH__V1__JOB_SPEC__INIT;
	spec.kind = GPUMATCH__V1__JOB_KIND__JOB_KIND_BATCH;
	spec.gpus_per_node = 1;
	spec.node_count = 1;
	spec.max_duration_us = 600LL * 1000000;
	spec.image = "python:3.12-slim";
	spec.n_command = 3;
	spec.command = cmd;
	spec.n_env = 1;
	spec.env = &envp;
	Gpumatch__V1__SubmitJobRequest req = GPUMATCH__V1__SUBMIT_JOB_REQUEST__INIT;
	req.idempotency_key = key;
	req.name = name;
	req.spec = &spec;
	P.job_id = 0;
	P.lease_job = 0;
	P.submit_sent_ns = rpcc_now_ns();
	call(P.submit_conn, JOB_SVC "SubmitJob", P.tenant_token, &req.base, submit_cb);
}

static void next_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	submit_next();
}

static void poll_cb(int status, const uint8_t *body, size_t len, void *arg)
{
	(void)arg;
	int64_t now = rpcc_now_ns();
	if (status != 200) {
		fail("AcquireLease failed", error_text(body, len), status);
		return;
	}
	Gpumatch__V1__AcquireLeaseResponse *r =
	    gpumatch__v1__acquire_lease_response__unpack(NULL, len, body);
	if (!r) {
		fail("AcquireLease: reply does not decode", NULL, 0);
		return;
	}
	/* keep a poll outstanding at all times, as an agent would */
	poll_lease();
	if (!r->lease) {
		P.empty_polls++;
	} else if (P.lease_job || P.reporting || r->lease->job_id < P.job_id) {
		/* not the job being timed: nothing else is submitted, so this
		 * would be a bug worth seeing */
		P.stray_leases++;
		fprintf(stderr, "latency-probe: unexpected lease %" PRIu64 " for job %" PRIu64 "\n",
		        r->lease->id, r->lease->job_id);
	} else {
		P.lease_ns = now;
		P.lease_job = r->lease->job_id;
		P.lease_id = r->lease->id;
		P.fencing_token = r->lease->fencing_token;
		P.running_lease = r->lease->id;
		if (P.job_id && P.lease_job != P.job_id)
			fail("AcquireLease returned another job's lease", NULL, 0);
		else
			finish_sample();
	}
	gpumatch__v1__acquire_lease_response__free_unpacked(r, NULL);
}

static void poll_lease(void)
{
	Gpumatch__V1__AcquireLeaseRequest req = GPUMATCH__V1__ACQUIRE_LEASE_REQUEST__INIT;
	req.node_id = P.node_id;
	req.wait_timeout_ms = P.wait_ms;
	P.polls++;
	call(P.poll_conn, NODE_SVC "AcquireLease", P.operator_token, &req.base, poll_cb);
}

/* ---- main ----------------------------------------------------------------------------------- */

static void usage(void)
{
	fprintf(stderr,
	        "usage: latency-probe --url http://HOST:PORT --tenant-token T --operator-token O\n"
	        "                     [--samples N] [--warmup N] [--gpus N] [--wait-ms MS]\n"
	        "                     [--gap-ms MS]\n"
	        "  --samples   jobs timed (default 200)\n"
	        "  --warmup    jobs run first and not timed (default 5)\n"
	        "  --gpus      GPUs of the node it registers (default 8)\n"
	        "  --wait-ms   AcquireLease waitTimeoutMs (default 10000)\n"
	        "  --gap-ms    pause between a lease's end and the next submit (default 10)\n"
	        "The last line of stdout is one JSON object.\n");
	exit(1);
}

static long num_arg(const char *s, long min, long max)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (end == s || *end || v < min || v > max)
		usage();
	return v;
}

static void print_ms(const char *name, double *v, int n, bool comma)
{
	qsort(v, (size_t)n, sizeof *v, rpcc_cmp_double);
	printf("\"%s_p50_ms\":%.3f,\"%s_p90_ms\":%.3f,\"%s_p99_ms\":%.3f,\"%s_max_ms\":%.3f%s",
	       name, rpcc_quantile(v, (size_t)n, 0.5), name, rpcc_quantile(v, (size_t)n, 0.9), name,
	       rpcc_quantile(v, (size_t)n, 0.99), name, n ? v[n - 1] : 0.0, comma ? "," : "");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "url", required_argument, NULL, 'u' },
		{ "tenant-token", required_argument, NULL, 't' },
		{ "operator-token", required_argument, NULL, 'o' },
		{ "samples", required_argument, NULL, 'n' },
		{ "warmup", required_argument, NULL, 'w' },
		{ "gpus", required_argument, NULL, 'g' },
		{ "wait-ms", required_argument, NULL, 'W' },
		{ "gap-ms", required_argument, NULL, 'G' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *url = NULL;
	P.samples = 200;
	P.warmup = 5;
	P.gpus = 8;
	P.wait_ms = 10000;
	P.gap_ms = 10;
	P.heartbeat_ms = 1000;
	int o;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'u':
			url = optarg;
			break;
		case 't':
			P.tenant_token = optarg;
			break;
		case 'o':
			P.operator_token = optarg;
			break;
		case 'n':
			P.samples = (int)num_arg(optarg, 1, 1000000);
			break;
		case 'w':
			P.warmup = (int)num_arg(optarg, 0, 100000);
			break;
		case 'g':
			P.gpus = (int)num_arg(optarg, 1, MAX_GPUS);
			break;
		case 'W':
			P.wait_ms = (uint32_t)num_arg(optarg, 1, 600000);
			break;
		case 'G':
			P.gap_ms = (int)num_arg(optarg, 0, 999);
			break;
		default:
			usage();
		}
	}
	if (!url || !P.tenant_token || !P.operator_token ||
	    rpcc_parse_url(url, P.host, sizeof P.host, &P.port))
		usage();
	snprintf(P.nonce, sizeof P.nonce, "%x%x", (unsigned)getpid(),
	         (unsigned)(rpcc_now_ns() & 0xffffff));
	P.lat_ms = calloc((size_t)P.samples, sizeof *P.lat_ms);
	P.e2e_ms = calloc((size_t)P.samples, sizeof *P.e2e_ms);
	P.submit_ms = calloc((size_t)P.samples, sizeof *P.submit_ms);
	P.report_ms = calloc((size_t)P.samples, sizeof *P.report_ms);
	P.base = event_base_new();
	if (!P.lat_ms || !P.e2e_ms || !P.submit_ms || !P.report_ms || !P.base) {
		fprintf(stderr, "latency-probe: out of memory\n");
		return 2;
	}
	int poll_timeout_s = (int)(P.wait_ms / 1000) + 30;
	P.poll_conn = rpcc_connect(P.base, P.host, P.port, poll_timeout_s);
	P.submit_conn = rpcc_connect(P.base, P.host, P.port, 30);
	P.ctl_conn = rpcc_connect(P.base, P.host, P.port, 30);
	P.hb_conn = rpcc_connect(P.base, P.host, P.port, 30);
	P.next_ev = evtimer_new(P.base, next_cb, NULL);
	P.hb_ev = evtimer_new(P.base, hb_timer_cb, NULL);
	if (!P.poll_conn || !P.submit_conn || !P.ctl_conn || !P.hb_conn || !P.next_ev || !P.hb_ev) {
		fprintf(stderr, "latency-probe: cannot set up the event loop\n");
		return 2;
	}
	int64_t t0 = rpcc_now_ns();
	register_node();
	event_base_dispatch(P.base);
	double wall_s = (double)(rpcc_now_ns() - t0) / 1e9;
	if (P.rc)
		return P.rc;

	printf("{\"samples\":%d,\"warmup\":%d,", P.n, P.warmup);
	print_ms("submit_to_lease", P.lat_ms, P.n, true);
	print_ms("submit_sent_to_lease", P.e2e_ms, P.n, true);
	print_ms("submit", P.submit_ms, P.n, true);
	print_ms("report", P.report_ms, P.n, true);
	printf("\"polls\":%" PRIu64 ",\"empty_polls\":%" PRIu64 ",\"stray_leases\":%" PRIu64
	       ",\"early_leases\":%" PRIu64 ",\"node_id\":%" PRIu64 ",\"gap_ms\":%d,\"wait_ms\":%u"
	       ",\"wall_s\":%.3f}\n",
	       P.polls, P.empty_polls, P.stray_leases, P.early_leases, P.node_id, P.gap_ms,
	       P.wait_ms, wall_s);

	event_free(P.next_ev);
	event_free(P.hb_ev);
	evhttp_connection_free(P.poll_conn);
	evhttp_connection_free(P.submit_conn);
	evhttp_connection_free(P.ctl_conn);
	evhttp_connection_free(P.hb_conn);
	event_base_free(P.base);
	free(P.lat_ms);
	free(P.e2e_ms);
	free(P.submit_ms);
	free(P.report_ms);
	return P.stray_leases ? 3 : 0;
}
