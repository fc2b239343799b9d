/* placement-load.c — end-to-end placement throughput and latency: plays
 * N node agents in one process (register, heartbeats at the period the
 * server asks for carrying the running lease ids, an AcquireLease long-poll
 * always outstanding per node on its own keep-alive connection, a RUNNING
 * report for each lease and a SUCCEEDED report when its job "ends") and a
 * tenant submitting jobs, all over real HTTP with binary protobuf.
 *
 * A placement counts when the server has acknowledged the lease's RUNNING
 * report and the lease it returns is RUNNING (confirmed and durable); a job
 * confirmed on a second lease is counted apart and fails the run. Two
 * phases:
 *   throughput  --jobs single-GPU jobs submitted as fast as --window
 *               outstanding submits allow; placements_per_s = jobs / (last
 *               confirmation - first submit).
 *   latency     --latency-jobs submitted at --latency-rate per second while
 *               the fleet has idle GPUs; p50/p99 submit->running (from the
 *               SubmitJob request to the RUNNING report's acknowledgement).
 * bench/placement runs it. The last line of stdout is one JSON object. */
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/http.h>

#include "gpumatch/v1/job_service.pb-c.h"
#include "gpumatch/v1/node_service.pb-c.h"
#include "rpc-client.h"

#define JOB_SVC  "/gpumatch.v1.JobService/"
#define NODE_SVC "/gpumatch.v1.NodeService/"
#define GPUS     8
#define MAX_RUN  64

struct node {
	int idx;
	uint64_t id;
	struct evhttp_connection *poll; /* the AcquireLease long-poll */
	int hb_lane;                    /* the heartbeat lane in use */
	struct event *hb_ev;
	int hb_ms;
	bool hb_busy, polling, ready; /* hb_busy: queued for a lane or sent */
	uint64_t running[MAX_RUN];
	int nrun;
};

struct job {
	int64_t submit_ns, submit_ack_ns, lease_ns, running_ns;
	bool confirmed;
};

struct run {
	struct node *n;
	uint64_t lease_id, fence;
	int job;
	int lane; /* the report lane in use */
	int seq;
	Gpumatch__V1__LeaseState state;
	rpcc_done_cb cb;
	bool counted; /* the job's first confirmed run: its end counts as finished */
	struct event *ev;
};

static struct {
	char host[256];
	int port;
	const char *tenant_token, *operator_token;
	int nodes, jobs, latency_jobs, window, ctl_conns, submit_conns, job_ms, lanes;
	double latency_rate;
	uint32_t wait_ms;
	struct event_base *base;
	struct evhttp_connection **ctl, **sub;
	unsigned ctl_rr, sub_rr;
	struct node *node;
	struct job *job; /* throughput jobs, then latency jobs */
	char nonce[32];
	int rc;

	int registered, ready, polling;
	int submitted, acked, confirmed, finished;
	int inflight;
	int phase; /* 0 setup, 1 throughput, 2 latency, 3 done */
	int64_t t_setup0, t_phase1, t_last_confirm1, t_phase2;
	struct event *pace_ev, *progress_ev;
	uint64_t polls, empty_polls, poll_errors, hb_sent, hb_errors, report_errors, submit_errors,
	    stray, not_running, confirmed_twice;
} P;

static void die_msg(const char *what, int status, const uint8_t *body, size_t len)
{
	fprintf(stderr, "placement-load: %s (HTTP %d): %.*s\n", what, status,
	        (int)(len > 300 ? 300 : len), body ? (const char *)body : "");
	P.rc = 2;
	event_base_loopbreak(P.base);
}

static struct evhttp_connection *ctl(void)
{
	return P.ctl[P.ctl_rr++ % (unsigned)P.ctl_conns];
}

static void call(struct evhttp_connection *c, const char *path, const char *token,
                 const ProtobufCMessage *msg, rpcc_done_cb cb, void *arg)
{
	if (rpcc_call(c, P.host, path, token, msg, cb, arg)) {
		fprintf(stderr, "placement-load: cannot queue %s\n", path);
		exit(2);
	}
}

static void poll_lease(struct node *n);
static void submit_some(void);
static void maybe_done(void);

/* ---- lanes: calls sent only on an idle connection ---------------------------------------
 *
 * Heartbeats and reports go out on pools of keep-alive connections, a call
 * built only when a connection is idle: a heartbeat never waits in a
 * connection's queue with the running leases of when it was built (the
 * server would take a lease the node runs for one it does not), and one
 * node's backlog never holds up another's. (One connection per node for
 * each would need 3 sockets per node on each side: more than the
 * open-files limit allows at 10,000 nodes.) */

struct pending {
	void (*send)(void *arg, int lane);
	void *arg;
};

struct lanes {
	struct evhttp_connection **c;
	int n;
	int *free_lanes, nfree;
	struct pending *q; /* ring buffer */
	size_t cap, head, len;
};

static struct lanes HB, RP;

static void lanes_init(struct lanes *l, int n)
{
	l->n = n;
	l->c = calloc((size_t)n, sizeof *l->c);
	l->free_lanes = calloc((size_t)n, sizeof *l->free_lanes);
	l->cap = 1024;
	l->q = calloc(l->cap, sizeof *l->q);
	if (!l->c || !l->free_lanes || !l->q) {
		fprintf(stderr, "placement-load: out of memory\n");
		exit(2);
	}
	for (int i = 0; i < n; i++) {
		if (!(l->c[i] = rpcc_connect(P.base, P.host, P.port, 60)))
			exit(2);
		l->free_lanes[l->nfree++] = i;
	}
}

static void lanes_pump(struct lanes *l)
{
	while (l->nfree && l->len) {
		struct pending p = l->q[l->head];
		l->head = (l->head + 1) % l->cap;
		l->len--;
		p.send(p.arg, l->free_lanes[--l->nfree]);
	}
}

static void lanes_submit(struct lanes *l, void (*send)(void *, int), void *arg)
{
	if (l->len == l->cap) {
		struct pending *q = calloc(l->cap * 2, sizeof *q);
		if (!q) {
			fprintf(stderr, "placement-load: out of memory\n");
			exit(2);
		}
		for (size_t i = 0; i < l->len; i++)
			q[i] = l->q[(l->head + i) % l->cap];
		free(l->q);
		l->q = q;
		l->head = 0;
		l->cap *= 2;
	}
	l->q[(l->head + l->len) % l->cap] = (struct pending){ send, arg };
	l->len++;
	lanes_pump(l);
}

static void lanes_done(struct lanes *l, int lane)
{
	l->free_lanes[l->nfree++] = lane;
	lanes_pump(l);
}

/* ---- heartbeats ---------------------------------------------------------------------- */

static void hb_cb(int status, const uint8_t *body, size_t len, void *arg);

static void heartbeat_now(void *arg, int lane)
{
	struct node *n = arg;
	n->hb_lane = lane;
	Gpumatch__V1__GpuHealth h[GPUS], *hp[GPUS];
	char uuid[GPUS][48];
	for (int i = 0; i < GPUS; i++) {
		gpumatch__v1__gpu_health__init(&h[i]);
		snprintf(uuid[i], sizeof uuid[i], "GPU-%s-%d-%d", P.nonce, n->idx, i);
		h[i].index = (uint32_t)i;
		h[i].uuid = uuid[i];
		h[i].status = GPUMATCH__V1__GPU_HEALTH_STATUS__GPU_HEALTH_STATUS_HEALTHY;
		hp[i] = &h[i];
	}
	Gpumatch__V1__HeartbeatRequest req = GPUMATCH__V1__HEARTBEAT_REQUEST__INIT;
	req.node_id = n->id;
	req.n_gpus = GPUS;
	req.gpus = hp;
	req.n_running_lease_ids = (size_t)n->nrun;
	req.running_lease_ids = n->running;
	req.agent_version = "placement-load/1";
	P.hb_sent++;
	call(HB.c[lane], NODE_SVC "Heartbeat", P.operator_token, &req.base, hb_cb, n);
}

static void send_heartbeat(struct node *n)
{
	n->hb_busy = true;
	lanes_submit(&HB, heartbeat_now, n);
}

static void hb_timer_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	struct node *n = arg;
	struct timeval tv = { n->hb_ms / 1000, (n->hb_ms % 1000) * 1000 };
	evtimer_add(n->hb_ev, &tv);
	if (!n->hb_busy)
		send_heartbeat(n);
}

static void hb_cb(int status, const uint8_t *body, size_t len, void *arg)
{
	struct node *n = arg;
	n->hb_busy = false;
	lanes_done(&HB, n->hb_lane);
	if (status != 200) {
		if (!n->ready) {
			die_msg("first Heartbeat failed", status, body, len);
			return;
		}
		P.hb_errors++;
		return;
	}
	Gpumatch__V1__HeartbeatResponse *r =
	    gpumatch__v1__heartbeat_response__unpack(NULL, len, body);
	if (!r) {
		die_msg("Heartbeat reply does not decode", status, NULL, 0);
		return;
	}
	if (r->next_heartbeat_ms)
		n->hb_ms = (int)r->next_heartbeat_ms;
	bool ready = r->node_state == GPUMATCH__V1__NODE_STATE__NODE_STATE_READY;
	gpumatch__v1__heartbeat_response__free_unpacked(r, NULL);
	if (!n->ready) {
		if (!ready) {
			die_msg("node not READY after its first heartbeat", 0, NULL, 0);
			return;
		}
		n->ready = true;
		P.ready++;
		/* spread the fleet's heartbeats over one period */
		int first = n->hb_ms ? (int)((int64_t)n->hb_ms * n->idx / P.nodes) + 1 : 1000;
		struct timeval tv = { first / 1000, (first % 1000) * 1000 };
		evtimer_add(n->hb_ev, &tv);
		poll_lease(n);
	}
}

/* ---- registration ------------------------------------------------------------------------ */

static void register_cb(int status, const uint8_t *body, size_t len, void *arg)
{
	struct node *n = arg;
	if (status != 200) {
		die_msg("RegisterNode failed", status, body, len);
		return;
	}
	Gpumatch__V1__RegisterNodeResponse *r =
	    gpumatch__v1__register_node_response__unpack(NULL, len, body);
	if (!r || !r->node || !r->node->id) {
		die_msg("RegisterNode: reply without a node", status, NULL, 0);
		if (r)
			gpumatch__v1__register_node_response__free_unpacked(r, NULL);
		return;
	}
	n->id = r->node->id;
	gpumatch__v1__register_node_response__free_unpacked(r, NULL);
	P.registered++;
	send_heartbeat(n);
}

static void register_node(struct node *n)
{
	Gpumatch__V1__Gpu g[GPUS], *gp[GPUS];
	char uuid[GPUS][48];
	Gpumatch__V1__Throughput claimed = GPUMATCH__V1__THROUGHPUT__INIT;
	Gpumatch__V1__Precision precs[] = { GPUMATCH__V1__PRECISION__PRECISION_FP32,
		                            GPUMATCH__V1__PRECISION__PRECISION_TF32,
		                            GPUMATCH__V1__PRECISION__PRECISION_FP16,
		                            GPUMATCH__V1__PRECISION__PRECISION_BF16 };
	claimed.fp32_tflops = 19.5;
	claimed.tf32_tflops = 156;
	claimed.fp16_tflops = 312;
	claimed.bf16_tflops = 312;
	claimed.mem_bandwidth_gbps = 2039;
	for (int i = 0; i < GPUS; i++) {
		gpumatch__v1__gpu__init(&g[i]);
		snprintf(uuid[i], sizeof uuid[i], "GPU-%s-%d-%d", P.nonce, n->idx, i);
		g[i].index = (uint32_t)i;
		g[i].model = "A100-SXM4-80GB";
		g[i].name = "NVIDIA A100-SXM4-80GB";
		g[i].pci_vendor_id = 0x10de;
		g[i].pci_device_id = 0x20b2;
		g[i].uuid = uuid[i];
		g[i].memory_mib = 81920;
		g[i].compute_capability_major = 8;
		g[i].compute_capability_minor = 0;
		g[i].n_precisions = sizeof precs / sizeof precs[0];
		g[i].precisions = precs;
		g[i].interconnect = GPUMATCH__V1__INTERCONNECT__INTERCONNECT_NVLINK;
		g[i].claimed = &claimed;
		gp[i] = &g[i];
	}
	char name[64];
	snprintf(name, sizeof name, "pl-%s-%d", P.nonce, n->idx);
	Gpumatch__V1__RegisterNodeRequest req = GPUMATCH__V1__REGISTER_NODE_REQUEST__INIT;
	req.name = name;
	req.region = "eu-west";
	req.price_per_gpu_hour_micros = 1500000;
	req.n_gpus = GPUS;
	req.gpus = gp;
	req.agent_version = "placement-load/1";
	call(ctl(), NODE_SVC "RegisterNode", P.operator_token, &req.base, register_cb, n);
}

/* ---- leases: RUNNING, then SUCCEEDED after --job-ms ------------------------------------------ */

static void report_now(void *arg, int lane)
{
	struct run *r = arg;
	r->lane = lane;
	Gpumatch__V1__ReportLeaseRequest req = GPUMATCH__V1__REPORT_LEASE_REQUEST__INIT;
	req.node_id = r->n->id;
	req.lease_id = r->lease_id;
	req.fencing_token = r->fence;
	req.seq = (uint64_t)r->seq;
	req.state = r->state;
	call(RP.c[lane], NODE_SVC "ReportLease", P.operator_token, &req.base, r->cb, r);
}

static void report(struct run *r, int seq, Gpumatch__V1__LeaseState state, rpcc_done_cb cb)
{
	r->seq = seq;
	r->state = state;
	r->cb = cb;
	lanes_submit(&RP, report_now, r);
}

static void run_forget(struct run *r)
{
	struct node *n = r->n;
	for (int i = 0; i < n->nrun; i++) {
		if (n->running[i] == r->lease_id) {
			n->running[i] = n->running[--n->nrun];
			break;
		}
	}
	if (r->ev)
		event_free(r->ev);
	free(r);
}

static void ended_cb(int status, const uint8_t *body, size_t len, void *arg)
{
	struct run *r = arg;
	lanes_done(&RP, r->lane);
	if (status != 200) {
		if (P.report_errors++ < 5)
			fprintf(stderr, "placement-load: SUCCEEDED report: HTTP %d %.*s\n", status,
			        (int)(len > 200 ? 200 : len), body ? (const char *)body : "");
	}
	bool counted = r->counted;
	run_forget(r);
	P.finished += counted;
	maybe_done();
}

static void end_timer_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	report(arg, 2, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_SUCCEEDED, ended_cb);
}

static void running_cb(int status, const uint8_t *body, size_t len, void *arg)
{
	struct run *r = arg;
	lanes_done(&RP, r->lane);
	int64_t now = rpcc_now_ns();
	if (status != 200) {
		if (P.report_errors++ < 5)
			fprintf(stderr, "placement-load: RUNNING report: HTTP %d %.*s\n", status,
			        (int)(len > 200 ? 200 : len), body ? (const char *)body : "");
		run_forget(r);
		P.finished++;
		maybe_done();
		return;
	}
	/* only a lease that is now RUNNING counts: one the server ended first
	 * (an offer withdrawn, a lease expired) is not a placement, and its
	 * job comes back with another lease */
	Gpumatch__V1__ReportLeaseResponse *rr =
	    gpumatch__v1__report_lease_response__unpack(NULL, len, body);
	bool running =
	    rr && rr->lease && rr->lease->state == GPUMATCH__V1__LEASE_STATE__LEASE_STATE_RUNNING;
	if (rr)
		gpumatch__v1__report_lease_response__free_unpacked(rr, NULL);
	if (!running) {
		P.not_running++;
		run_forget(r);
		return;
	}
	struct job *j = &P.job[r->job];
	if (!j->confirmed) {
		j->confirmed = true;
		j->running_ns = now;
		P.confirmed++;
		r->counted = true;
		if (r->job < P.jobs)
			P.t_last_confirm1 = now;
	} else {
		P.confirmed_twice++; /* a job confirmed on a second lease */
	}
	r->ev = evtimer_new(P.base, end_timer_cb, r);
	struct timeval tv = { P.job_ms / 1000, (P.job_ms % 1000) * 1000 };
	evtimer_add(r->ev, &tv);
	maybe_done();
}

static void poll_cb(int status, const uint8_t *body, size_t len, void *arg)
{
	struct node *n = arg;
	int64_t now = rpcc_now_ns();
	n->polling = false;
	if (status != 200) {
		if (P.poll_errors++ < 5)
			fprintf(stderr, "placement-load: AcquireLease: HTTP %d %.*s\n", status,
			        (int)(len > 200 ? 200 : len), body ? (const char *)body : "");
		poll_lease(n);
		return;
	}
	Gpumatch__V1__AcquireLeaseResponse *r =
	    gpumatch__v1__acquire_lease_response__unpack(NULL, len, body);
	if (!r) {
		die_msg("AcquireLease reply does not decode", status, NULL, 0);
		return;
	}
	poll_lease(n); /* keep one outstanding, as an agent does */
	if (!r->lease) {
		P.empty_polls++;
	} else {
		int idx = -1;
		if (r->job_name && !strncmp(r->job_name, "pl-", 3))
			idx = atoi(r->job_name + 3);
		if (idx < 0 || idx >= P.jobs + P.latency_jobs || n->nrun >= MAX_RUN) {
			P.stray++;
		} else {
			struct run *run = calloc(1, sizeof *run);
			if (!run) {
				fprintf(stderr, "placement-load: out of memory\n");
				exit(2);
			}
			run->n = n;
			run->lease_id = r->lease->id;
			run->fence = r->lease->fencing_token;
			run->job = idx;
			n->running[n->nrun++] = run->lease_id;
			if (!P.job[idx].lease_ns)
				P.job[idx].lease_ns = now;
			report(run, 1, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_RUNNING, running_cb);
		}
	}
	gpumatch__v1__acquire_lease_response__free_unpacked(r, NULL);
}

static void poll_lease(struct node *n)
{
	if (P.phase == 3)
		return;
	Gpumatch__V1__AcquireLeaseRequest req = GPUMATCH__V1__ACQUIRE_LEASE_REQUEST__INIT;
	req.node_id = n->id;
	req.wait_timeout_ms = P.wait_ms;
	P.polls++;
	if (!n->polling) {
		n->polling = true;
		P.polling++;
	}
	call(n->poll, NODE_SVC "AcquireLease", P.operator_token, &req.base, poll_cb, n);
}

/* ---- submits ---------------------------------------------------------------------------------- */

static void submit_cb(int status, const uint8_t *body, size_t len, void *arg)
{
	int idx = (int)(intptr_t)arg;
	P.inflight--;
	if (status != 200) {
		die_msg("SubmitJob failed", status, body, len);
		return;
	}
	P.job[idx].submit_ack_ns = rpcc_now_ns();
	P.acked++;
	if (P.phase == 1)
		submit_some();
}

static void submit_one(int idx)
{
	char key[96], name[32];
	snprintf(key, sizeof key, "pl-%s-%d", P.nonce, idx);
	snprintf(name, sizeof name, "pl-%d", idx);
	char *cmd[] = { "true" };
	Gpumatch__V1__JobSpec spec = GPUMATCH__V1__JOB_SPEC__INIT;
	spec.kind = GPUMATCH__V1__JOB_KIND__JOB_KIND_BATCH;
	spec.gpus_per_node = 1;
	spec.node_count = 1;
	spec.max_duration_us = 600LL * 1000000;
	spec.n_command = 1;
	spec.command = cmd;
	Gpumatch__V1__SubmitJobRequest req = GPUMATCH__V1__SUBMIT_JOB_REQUEST__INIT;
	req.idempotency_key = key;
	req.name = name;
	req.spec = &spec;
	P.job[idx].submit_ns = rpcc_now_ns();
	P.submitted++;
	P.inflight++;
	call(P.sub[P.sub_rr++ % (unsigned)P.submit_conns], JOB_SVC "SubmitJob", P.tenant_token,
	     &req.base, submit_cb, (void *)(intptr_t)idx);
}

static void submit_some(void)
{
	while (P.submitted < P.jobs && P.inflight < P.window)
		submit_one(P.submitted);
}

static void pace_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	if (P.submitted < P.jobs + P.latency_jobs)
		submit_one(P.submitted);
	if (P.submitted < P.jobs + P.latency_jobs) {
		int64_t us = (int64_t)(1e6 / P.latency_rate);
		struct timeval tv = { (time_t)(us / 1000000), (suseconds_t)(us % 1000000) };
		evtimer_add(P.pace_ev, &tv);
	}
}

static void maybe_done(void)
{
	if (P.phase == 1 && P.confirmed >= P.jobs && P.finished >= P.jobs) {
		P.phase = 2;
		P.t_phase2 = rpcc_now_ns();
		fprintf(stderr, "placement-load: throughput phase done: %d placements in %.2f s\n",
		        P.jobs, (double)(P.t_last_confirm1 - P.t_phase1) / 1e9);
		if (P.latency_jobs)
			pace_cb(-1, 0, NULL);
	}
	if (P.phase == 2 && P.confirmed >= P.jobs + P.latency_jobs &&
	    P.finished >= P.jobs + P.latency_jobs) {
		P.phase = 3;
		event_base_loopbreak(P.base);
	}
}

static void progress_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	fprintf(stderr,
	        "placement-load: phase %d registered %d ready %d polling %d submitted %d acked %d "
	        "confirmed %d finished %d heartbeats %" PRIu64 " (errors %" PRIu64 ")\n",
	        P.phase, P.registered, P.ready, P.polling, P.submitted, P.acked, P.confirmed,
	        P.finished, P.hb_sent, P.hb_errors);
	if (P.phase == 0 && P.ready == P.nodes) {
		P.phase = 1;
		P.t_phase1 = rpcc_now_ns();
		fprintf(stderr, "placement-load: %d nodes READY and polling after %.1f s\n",
		        P.nodes, (double)(P.t_phase1 - P.t_setup0) / 1e9);
		submit_some();
	}
}

/* ---- main ----------------------------------------------------------------------------------- */

static void usage(void)
{
	fprintf(
	    stderr,
	    "usage: placement-load --url http://HOST:PORT --tenant-token T --operator-token O\n"
	    "         [--nodes N] [--jobs N] [--window N] [--latency-jobs N]\n"
	    "         [--latency-rate PER_S] [--job-ms MS] [--wait-ms MS]\n"
	    "         [--ctl-connections N] [--submit-connections N] [--lanes N]\n"
	    "  --nodes              simulated 8-GPU nodes, one long-poll connection each (10000)\n"
	    "  --jobs               single-GPU jobs of the throughput phase (100000)\n"
	    "  --window             submits outstanding at once in that phase (512)\n"
	    "  --latency-jobs       jobs of the latency phase (2000)\n"
	    "  --latency-rate       their submits per second (200)\n"
	    "  --job-ms             how long each job runs before SUCCEEDED (2000)\n"
	    "  --wait-ms            AcquireLease waitTimeoutMs (20000)\n"
	    "  --ctl-connections    keep-alive connections for registrations (64)\n"
	    "  --lanes              connections for heartbeats, and as many for reports,\n"
	    "                       each call sent only on an idle one (512)\n"
	    "  --submit-connections keep-alive connections for submits (32)\n"
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

/* this process's CPU time (user + system), for the figures' context */
static double cpu_s(void)
{
	struct rusage ru;
	if (getrusage(RUSAGE_SELF, &ru))
		return 0;
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void print_q(const char *name, double *v, int n, bool comma)
{
	qsort(v, (size_t)n, sizeof *v, rpcc_cmp_double);
	printf("\"%s_p50_ms\":%.2f,\"%s_p99_ms\":%.2f,\"%s_max_ms\":%.2f%s", name,
	       rpcc_quantile(v, (size_t)n, 0.5), name, rpcc_quantile(v, (size_t)n, 0.99), name,
	       n ? v[n - 1] : 0.0, comma ? "," : "");
}

/* submit->running and submit-reply->lease of jobs [from, to) */
static void print_latency(const char *prefix, int from, int to, bool comma)
{
	int n = 0;
	double *a = calloc((size_t)(to - from) + 1, sizeof *a);
	double *b = calloc((size_t)(to - from) + 1, sizeof *b);
	if (!a || !b)
		exit(2);
	for (int i = from; i < to; i++) {
		struct job *j = &P.job[i];
		if (!j->confirmed)
			continue;
		a[n] = (double)(j->running_ns - j->submit_ns) / 1e6;
		b[n] = j->lease_ns > j->submit_ack_ns
		           ? (double)(j->lease_ns - j->submit_ack_ns) / 1e6
		           : 0;
		n++;
	}
	char name[64];
	snprintf(name, sizeof name, "%s_submit_to_running", prefix);
	print_q(name, a, n, true);
	snprintf(name, sizeof name, "%s_submit_reply_to_lease", prefix);
	print_q(name, b, n, comma);
	free(a);
	free(b);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "url", required_argument, NULL, 'u' },
		{ "tenant-token", required_argument, NULL, 't' },
		{ "operator-token", required_argument, NULL, 'o' },
		{ "nodes", required_argument, NULL, 'n' },
		{ "jobs", required_argument, NULL, 'j' },
		{ "window", required_argument, NULL, 'w' },
		{ "latency-jobs", required_argument, NULL, 'l' },
		{ "latency-rate", required_argument, NULL, 'r' },
		{ "job-ms", required_argument, NULL, 'd' },
		{ "wait-ms", required_argument, NULL, 'W' },
		{ "ctl-connections", required_argument, NULL, 'c' },
		{ "submit-connections", required_argument, NULL, 's' },
		{ "lanes", required_argument, NULL, 'L' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *url = NULL;
	P.nodes = 10000;
	P.jobs = 100000;
	P.window = 512;
	P.latency_jobs = 2000;
	P.latency_rate = 200;
	P.job_ms = 2000;
	P.wait_ms = 20000;
	P.ctl_conns = 64;
	P.submit_conns = 32;
	P.lanes = 512;
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
			P.nodes = (int)num_arg(optarg, 1, 100000);
			break;
		case 'j':
			P.jobs = (int)num_arg(optarg, 1, 10000000);
			break;
		case 'w':
			P.window = (int)num_arg(optarg, 1, 100000);
			break;
		case 'l':
			P.latency_jobs = (int)num_arg(optarg, 0, 1000000);
			break;
		case 'r':
			P.latency_rate = (double)num_arg(optarg, 1, 100000);
			break;
		case 'd':
			P.job_ms = (int)num_arg(optarg, 0, 3600000);
			break;
		case 'W':
			P.wait_ms = (uint32_t)num_arg(optarg, 1, 600000);
			break;
		case 'c':
			P.ctl_conns = (int)num_arg(optarg, 1, 10000);
			break;
		case 's':
			P.submit_conns = (int)num_arg(optarg, 1, 10000);
			break;
		case 'L':
			P.lanes = (int)num_arg(optarg, 1, 10000);
			break;
		default:
			usage();
		}
	}
	if (!url || !P.tenant_token || !P.operator_token ||
	    rpcc_parse_url(url, P.host, sizeof P.host, &P.port))
		usage();
	/* one socket per node's long-poll, plus the lanes and the shared ones */
	struct rlimit rl;
	if (!getrlimit(RLIMIT_NOFILE, &rl)) {
		rlim_t want = (rlim_t)(P.nodes + 2 * P.lanes + P.ctl_conns + P.submit_conns + 64);
		if (rl.rlim_cur < want) {
			rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
			if (rl.rlim_cur < want) {
				fprintf(stderr,
				        "placement-load: needs %lu open files, the limit is %lu\n",
				        (unsigned long)want, (unsigned long)rl.rlim_cur);
				return 2;
			}
		}
	}
	snprintf(P.nonce, sizeof P.nonce, "%x%x", (unsigned)getpid(),
	         (unsigned)(rpcc_now_ns() & 0xffffff));
	P.base = event_base_new();
	P.node = calloc((size_t)P.nodes, sizeof *P.node);
	P.job = calloc((size_t)(P.jobs + P.latency_jobs), sizeof *P.job);
	P.ctl = calloc((size_t)P.ctl_conns, sizeof *P.ctl);
	P.sub = calloc((size_t)P.submit_conns, sizeof *P.sub);
	if (!P.base || !P.node || !P.job || !P.ctl || !P.sub) {
		fprintf(stderr, "placement-load: out of memory\n");
		return 2;
	}
	for (int i = 0; i < P.ctl_conns; i++)
		if (!(P.ctl[i] = rpcc_connect(P.base, P.host, P.port, 60)))
			return 2;
	for (int i = 0; i < P.submit_conns; i++)
		if (!(P.sub[i] = rpcc_connect(P.base, P.host, P.port, 60)))
			return 2;
	lanes_init(&HB, P.lanes);
	lanes_init(&RP, P.lanes);
	int poll_timeout_s = (int)(P.wait_ms / 1000) + 30;
	for (int i = 0; i < P.nodes; i++) {
		struct node *n = &P.node[i];
		n->idx = i;
		n->hb_ms = 5000;
		n->poll = rpcc_connect(P.base, P.host, P.port, poll_timeout_s);
		n->hb_ev = evtimer_new(P.base, hb_timer_cb, n);
		if (!n->poll || !n->hb_ev) {
			fprintf(stderr, "placement-load: cannot set up node %d\n", i);
			return 2;
		}
	}
	P.pace_ev = evtimer_new(P.base, pace_cb, NULL);
	P.progress_ev = event_new(P.base, -1, EV_PERSIST, progress_cb, NULL);
	struct timeval sec = { 1, 0 };
	evtimer_add(P.progress_ev, &sec);
	P.t_setup0 = rpcc_now_ns();
	for (int i = 0; i < P.nodes; i++)
		register_node(&P.node[i]);
	event_base_dispatch(P.base);
	if (P.rc)
		return P.rc;
	double thr_s = (double)(P.t_last_confirm1 - P.t_phase1) / 1e9;
	printf("{\"nodes\":%d,\"gpus_per_node\":%d,\"jobs\":%d,\"placements_per_s\":%.0f,"
	       "\"throughput_phase_s\":%.3f,",
	       P.nodes, GPUS, P.jobs, thr_s > 0 ? P.jobs / thr_s : 0.0, thr_s);
	print_latency("loaded", 0, P.jobs, true);
	printf("\"latency_jobs\":%d,\"latency_rate_per_s\":%.0f,", P.latency_jobs, P.latency_rate);
	print_latency("idle", P.jobs, P.jobs + P.latency_jobs, true);
	printf("\"heartbeats\":%" PRIu64 ",\"heartbeat_errors\":%" PRIu64 ",\"polls\":%" PRIu64
	       ",\"empty_polls\":%" PRIu64 ",\"poll_errors\":%" PRIu64 ",\"report_errors\":%" PRIu64
	       ",\"stray_leases\":%" PRIu64 ",\"window\":%d,\"job_ms\":%d,"
	       "\"leases_ended_before_running\":%" PRIu64 ",\"jobs_confirmed_twice\":%" PRIu64
	       ",\"load_generator_cpu_s\":%.2f}\n",
	       P.hb_sent, P.hb_errors, P.polls, P.empty_polls, P.poll_errors, P.report_errors,
	       P.stray, P.window, P.job_ms, P.not_running, P.confirmed_twice, cpu_s());
	return P.stray || P.report_errors || P.confirmed_twice ? 3 : 0;
}
