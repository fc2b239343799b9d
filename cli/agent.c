/* agent.c — `gpumatch agent`, the node agent: registers the node (or
 * resumes its identity from the state directory), heartbeats with per-GPU
 * health, long-polls AcquireLease, runs each lease's command in its own
 * process group with CUDA_VISIBLE_DEVICES set, and reports the outcome
 * exactly once through ReportLease (pending reports are kept on disk and
 * resent until acknowledged). One libevent loop: the long-poll has its own
 * connection so that heartbeats and reports never wait behind it; children
 * are reaped on SIGCHLD. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "cli.h"
#include "client.h"
#include "logship.h"
#include "jobenv.h"
#include "pbjson.h"
#include "runtime.h"
#include "gpumatch/v1/node_service.pb-c.h"

#define MAX_REPORTS 4

struct report {
	uint64_t seq;
	int state; /* Gpumatch__V1__LeaseState */
	int exit_code, term_signal;
	int failure_reason; /* FailureReason the agent names; 0 = from the exit status */
	int64_t at_us; /* when it happened: RUNNING the start, others the exit (server clock) */
	char message[256];
	char digest[80];
};

struct job {
	struct agent *a;
	struct job *next;
	uint64_t lease_id, job_id, fencing, seq;
	uint64_t gpu_mask; /* bit i = GPU index i held by this lease */
	pid_t pid;         /* process group leader; 0 = not started or reaped */
	bool running;      /* process alive (or about to be forked) */
	int64_t start_us;  /* when the agent set out to start it (server clock) */
	bool stopping;
	struct event *kill_ev;     /* SIGKILL at the end of the grace period */
	struct event *deadline_ev; /* the lease's deadline */
	struct report q[MAX_REPORTS];
	int nq;
	bool inflight;
	int backoff_ms;
	struct event *retry_ev;
	bool interrupt;     /* stopped because the node stops: INTERRUPTED */
	int fail_kind;      /* FailureReason for the next report */
	struct logship *ls; /* the output on its way to the server */
	int64_t log_offset; /* as saved: where shipping resumes */
	bool container;     /* runs in a container (runtime.c) */
	struct rt_status ct;
	int status_fd; /* the launcher's status lines; -1 = none */
	struct event *status_ev;
	char status_buf[1024];
	size_t status_len;
	char scratch[1100]; /* the lease's scratch directory, "" = none */
	char *image;        /* its image reference (container jobs) */
};

#define IMAGE_CACHE 32

/* Images this agent's engine ran, by reference, with their digests: a
 * later job naming one starts without a lookup first (runtime.h,
 * known_digest). */
struct image_seen {
	char *ref;
	char digest[80];
};

struct agent {
	struct ctx *c;
	struct event_base *base;
	struct cl_conn *ctl;  /* register, heartbeats, reports */
	struct cl_conn *poll; /* the AcquireLease long-poll */
	struct cl_conn *logc; /* job output: never in the way of heartbeats */
	struct rt_config rt;
	struct jobenv_user job_user; /* who bare jobs run as */
	struct image_seen images[IMAGE_CACHE];
	unsigned images_next; /* the entry replaced next when all are used */
	char state_dir[900];
	json_t *reg; /* RegisterNodeRequest JSON */
	uint64_t node_id;
	uint32_t gpu_count;
	char **gpu_uuids;
	const char *sim_path; /* --simulate FILE: its "health" block is re-read on SIGHUP */
	int *gpu_status;      /* Gpumatch__V1__GpuHealthStatus per GPU */
	char **gpu_message;   /* per GPU, NULL = none */
	struct event *sighup_ev;
	struct job *jobs;
	struct offer *offers; /* offered leases waiting for their confirmation */
	struct event *hb_ev, *poll_ev, *reg_ev, *tick_ev;
	struct event *sigchld_ev, *sigterm_ev, *sigint_ev;
	int hb_ms, hb_override_ms;
	bool hb_inflight, poll_inflight;
	int poll_backoff_ms, reg_backoff_ms;
	uint32_t poll_ms;
	int64_t grace_us;
	int64_t clock_skew_us; /* server - local, from heartbeats */
	bool shutting_down;
	bool reprobe_logged; /* said once per request */
	int64_t shutdown_started_us;
	int exit_code;
};

/* ---- logging: key=value lines to stderr ---- */

static void alog(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void alog(const char *level, const char *fmt, ...)
{
	char ts[40];
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	struct tm tm;
	gmtime_r(&now.tv_sec, &tm);
	size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + n, sizeof ts - n, ".%03ldZ", now.tv_nsec / 1000000);
	char line[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	fprintf(stderr, "ts=%s level=%s %s\n", ts, level, line);
}

/* ---- state directory ---- */

static int write_file_atomic(const char *path, const char *text)
{
	char tmp[1300];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	size_t len = strlen(text);
	int bad = write(fd, text, len) != (ssize_t)len || fsync(fd);
	bad |= close(fd);
	if (bad || rename(tmp, path)) {
		unlink(tmp);
		return -1;
	}
	return 0;
}

static void save_node(struct agent *a)
{
	char path[1200];
	snprintf(path, sizeof path, "%s/node.json", a->state_dir);
	json_t *j = json_pack("{s:o,s:O}", "nodeId", juint64(a->node_id), "name",
	                      json_object_get(a->reg, "name"));
	char *s = json_dumps(j, JSON_INDENT(2));
	if (!s || write_file_atomic(path, s))
		alog("error", "msg=\"cannot save node identity\" path=%s err=\"%s\"", path,
		     strerror(errno));
	free(s);
	json_decref(j);
}

/* An offered lease: confirmed (ConfirmLease) before its job starts, so that
 * an offer the server withdrew is never run. Retried until the server
 * answers either way. On disk (leases.json) from its arrival: an agent
 * restarted before it started the job tells the server it never ran. */
struct offer {
	struct agent *a;
	struct offer *next;
	Gpumatch__V1__AcquireLeaseResponse *resp;
	struct event *retry_ev;
	int backoff_ms;
	int64_t at_us; /* when it arrived (server clock) */
};

/* Every lease not yet fully reported, with its queued reports: what a
 * restarted agent must still tell the server. */
static void save_leases(struct agent *a)
{
	json_t *arr = json_array();
	for (struct job *j = a->jobs; j; j = j->next) {
		json_t *q = json_array();
		for (int i = 0; i < j->nq; i++)
			json_array_append_new(
			    q, json_pack("{s:o,s:i,s:i,s:i,s:s,s:i,s:s,s:I}", "seq",
			                 juint64(j->q[i].seq), "state", j->q[i].state, "exitCode",
			                 j->q[i].exit_code, "termSignal", j->q[i].term_signal,
			                 "message", j->q[i].message, "failureReason",
			                 j->q[i].failure_reason, "imageDigest", j->q[i].digest,
			                 "atUs", (json_int_t)j->q[i].at_us));
		json_array_append_new(
		    arr, json_pack("{s:o,s:o,s:o,s:o,s:i,s:b,s:I,s:o,s:o,s:b,s:b,s:s}", "leaseId",
		                   juint64(j->lease_id), "jobId", juint64(j->job_id),
		                   "fencingToken", juint64(j->fencing), "seq", juint64(j->seq),
		                   "pid", (int)j->pid, "running", j->running, "startUs",
		                   (json_int_t)j->start_us, "reports", q, "logOffset",
		                   juint64((uint64_t)(j->ls ? ls_offset(j->ls) : j->log_offset)),
		                   "logsDone", j->ls ? ls_done(j->ls) : j->log_offset < 0,
		                   "container", j->container, "scratch", j->scratch));
	}
	for (struct offer *o = a->offers; o; o = o->next)
		json_array_append_new(arr,
		                      json_pack("{s:o,s:o,s:o,s:I,s:b,s:b}", "leaseId",
		                                juint64(o->resp->lease->id), "jobId",
		                                juint64(o->resp->lease->job_id), "fencingToken",
		                                juint64(o->resp->lease->fencing_token), "startUs",
		                                (json_int_t)o->at_us, "offered", 1, "logsDone", 1));
	char path[1200];
	snprintf(path, sizeof path, "%s/leases.json", a->state_dir);
	char *s = json_dumps(arr, JSON_INDENT(1));
	if (!s || write_file_atomic(path, s))
		alog("error", "msg=\"cannot save pending reports\" path=%s err=\"%s\"", path,
		     strerror(errno));
	free(s);
	json_decref(arr);
}

static uint64_t ju64(json_t *v)
{
	if (json_is_string(v))
		return strtoull(json_string_value(v), NULL, 10);
	return json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
}

/* ---- jobs ---- */

static const char *lease_state_name(int state)
{
	const ProtobufCEnumValue *v =
	    protobuf_c_enum_descriptor_get_value(&gpumatch__v1__lease_state__descriptor, state);
	return v ? v->name + strlen("LEASE_STATE_") : "?";
}

static void pump_reports(struct job *j);
static void stop_job(struct job *j, int64_t deadline_server_us, const char *reason, bool interrupt);

static struct job *find_job(struct agent *a, uint64_t lease_id)
{
	for (struct job *j = a->jobs; j; j = j->next)
		if (j->lease_id == lease_id)
			return j;
	return NULL;
}

static void free_job(struct job *j)
{
	ls_free(j->ls);
	if (j->status_ev)
		event_free(j->status_ev);
	if (j->status_fd >= 0)
		close(j->status_fd);
	if (j->kill_ev)
		event_free(j->kill_ev);
	if (j->deadline_ev)
		event_free(j->deadline_ev);
	if (j->retry_ev)
		event_free(j->retry_ev);
	free(j->image);
	free(j);
}

static struct image_seen *image_find(struct agent *a, const char *ref)
{
	for (unsigned i = 0; i < IMAGE_CACHE; i++)
		if (a->images[i].ref && !strcmp(a->images[i].ref, ref))
			return &a->images[i];
	return NULL;
}

/* Records (digest non-empty) or forgets (empty) what ref ran as. */
static void image_note(struct agent *a, const char *ref, const char *digest)
{
	if (!ref || !*ref)
		return;
	struct image_seen *e = image_find(a, ref);
	if (!*digest) {
		if (e) {
			free(e->ref);
			e->ref = NULL;
		}
		return;
	}
	if (!e) {
		e = &a->images[a->images_next++ % IMAGE_CACHE];
		free(e->ref);
		e->ref = strdup(ref);
		if (!e->ref)
			return;
	}
	snprintf(e->digest, sizeof e->digest, "%s", digest);
}

static void remove_job(struct job *j)
{
	struct agent *a = j->a;
	char exit_path[1200];
	snprintf(exit_path, sizeof exit_path, "%s/logs/lease-%" PRIu64 ".exit", a->state_dir,
	         j->lease_id);
	unlink(exit_path);
	snprintf(exit_path, sizeof exit_path, "%s/logs/lease-%" PRIu64 ".pid", a->state_dir,
	         j->lease_id);
	unlink(exit_path);
	for (struct job **p = &a->jobs; *p; p = &(*p)->next)
		if (*p == j) {
			*p = j->next;
			break;
		}
	free_job(j);
	save_leases(a);
}

static void queue_report(struct job *j, int state, int exit_code, int term_signal, const char *fmt,
                         ...) __attribute__((format(printf, 5, 6)));

static void queue_report(struct job *j, int state, int exit_code, int term_signal, const char *fmt,
                         ...)
{
	if (j->nq >= MAX_REPORTS)
		return;
	struct report *r = &j->q[j->nq++];
	memset(r, 0, sizeof *r);
	r->seq = ++j->seq;
	r->state = state;
	r->exit_code = exit_code;
	r->term_signal = term_signal;
	r->failure_reason = j->fail_kind;
	snprintf(r->digest, sizeof r->digest, "%s", j->ct.digest);
	/* the event's time, fixed now (the report may be sent much later),
	 * on the server's clock as the heartbeats measure it */
	r->at_us = cl_now_us() + j->a->clock_skew_us;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->message, sizeof r->message, fmt, ap);
	va_end(ap);
	/* a final report: the process is gone, its output ends here */
	if (state != GPUMATCH__V1__LEASE_STATE__LEASE_STATE_RUNNING)
		ls_finish(j->ls);
	/* on disk before it is sent: a restarted agent sends the same seq */
	save_leases(j->a);
	pump_reports(j);
}

static void retry_report_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	pump_reports(arg);
}

static void report_done(struct cl_result *r, void *arg)
{
	struct job *j = arg;
	struct agent *a = j->a;
	j->inflight = false;
	if (r->http_status != 200 && !cl_result_final_error(r)) {
		j->backoff_ms = j->backoff_ms ? j->backoff_ms * 2 : 250;
		if (j->backoff_ms > 10000)
			j->backoff_ms = 10000;
		alog("warn",
		     "msg=\"report not delivered, will retry\" lease=%" PRIu64 " seq=%" PRIu64
		     " code=%s err=\"%s\" retry_ms=%d",
		     j->lease_id, j->q[0].seq, r->code, r->message, j->backoff_ms);
		struct timeval tv = { j->backoff_ms / 1000, (j->backoff_ms % 1000) * 1000 };
		evtimer_add(j->retry_ev, &tv);
		return;
	}
	j->backoff_ms = 0;
	if (r->http_status == 200) {
		Gpumatch__V1__ReportLeaseResponse *resp =
		    (Gpumatch__V1__ReportLeaseResponse *)r->resp;
		alog("info", "msg=\"reported\" lease=%" PRIu64 " seq=%" PRIu64 " state=%s%s",
		     j->lease_id, j->q[0].seq, lease_state_name(j->q[0].state),
		     resp->duplicate ? " duplicate=true" : "");
		if (resp->command &&
		    resp->command->action == GPUMATCH__V1__LEASE_ACTION__LEASE_ACTION_STOP)
			stop_job(j, resp->command->deadline_us, resp->command->reason,
			         resp->command->interrupt);
	} else {
		/* the server will never take it (lease re-placed, unknown): drop */
		alog("warn",
		     "msg=\"report refused, dropped\" lease=%" PRIu64 " seq=%" PRIu64
		     " code=%s err=\"%s\"",
		     j->lease_id, j->q[0].seq, r->code, r->message);
	}
	memmove(&j->q[0], &j->q[1], (size_t)(j->nq - 1) * sizeof j->q[0]);
	j->nq--;
	if (!j->nq && !j->running && j->pid == 0 && ls_done(j->ls)) {
		/* acknowledged: the container and its scratch go now */
		if (j->container || *j->scratch)
			rt_remove(&a->rt, j->lease_id, j->scratch);
		remove_job(j);
		return;
	}
	save_leases(a);
	pump_reports(j);
}

static void pump_reports(struct job *j)
{
	struct agent *a = j->a;
	if (j->inflight || !j->nq || evtimer_pending(j->retry_ev, NULL) || !a->node_id)
		return;
	struct report *rp = &j->q[0];
	/* the final report waits until the server holds all of the output, so
	 * that an ended lease's logs are complete */
	if (rp->state != GPUMATCH__V1__LEASE_STATE__LEASE_STATE_RUNNING && !ls_done(j->ls))
		return;
	Gpumatch__V1__ReportLeaseRequest req = GPUMATCH__V1__REPORT_LEASE_REQUEST__INIT;
	req.node_id = a->node_id;
	req.lease_id = j->lease_id;
	req.fencing_token = j->fencing;
	req.seq = rp->seq;
	req.state = (Gpumatch__V1__LeaseState)rp->state;
	req.exit_code = rp->exit_code;
	req.term_signal = rp->term_signal;
	req.message = rp->message;
	req.reported_at_us = cl_now_us();
	req.failure_reason = (Gpumatch__V1__FailureReason)rp->failure_reason;
	req.image_digest = rp->digest;
	if (rp->state == GPUMATCH__V1__LEASE_STATE__LEASE_STATE_RUNNING)
		req.started_at_us = rp->at_us > 0 ? rp->at_us : 0;
	else
		req.exited_at_us = rp->at_us > 0 ? rp->at_us : 0;
	if (cl_call_async(a->ctl, a->c->token, "NodeService", "ReportLease", &req.base, report_done,
	                  j) == 0)
		j->inflight = true;
}

static void kill_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct job *j = arg;
	if (j->running && j->container) {
		alog("info", "msg=\"grace period over, killing the container\" lease=%" PRIu64,
		     j->lease_id);
		rt_kill(&j->a->rt, j->lease_id);
	} else if (j->running && j->pid > 0) {
		alog("info", "msg=\"grace period over, killing\" lease=%" PRIu64 " pid=%d",
		     j->lease_id, (int)j->pid);
		kill(-j->pid, SIGKILL);
	}
}

/* SIGTERM to the job's process group now, SIGKILL when the server's
 * deadline (server clock; 0 = the agent's --grace) has passed. */
static void stop_job(struct job *j, int64_t deadline_server_us, const char *reason, bool interrupt)
{
	struct agent *a = j->a;
	if (!j->running || j->stopping)
		return;
	j->stopping = true;
	j->interrupt = interrupt;
	int64_t grace = a->grace_us;
	if (deadline_server_us > 0) {
		int64_t left = deadline_server_us - a->clock_skew_us - cl_now_us();
		grace = left < 0 ? 0 : left;
		if (grace > a->grace_us * 30)
			grace = a->grace_us * 30;
	}
	alog("info",
	     "msg=\"stopping job\" lease=%" PRIu64 " job=%" PRIu64 " pid=%d grace_ms=%" PRId64
	     " reason=\"%s\"",
	     j->lease_id, j->job_id, (int)j->pid, grace / 1000, reason ? reason : "");
	if (j->container) {
		/* the runtime sends SIGTERM, then SIGKILL after the grace; our
		 * own kill a little later is the backstop */
		rt_stop(&a->rt, j->lease_id, (int)((grace + 999999) / 1000000));
		grace += 5000000;
	} else {
		kill(-j->pid, SIGTERM);
	}
	struct timeval tv = { (time_t)(grace / 1000000), (suseconds_t)(grace % 1000000) };
	evtimer_add(j->kill_ev, &tv);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	stop_job(arg, 0, "lease deadline reached", false);
}

static struct job *new_job(struct agent *a, uint64_t lease_id, uint64_t job_id, uint64_t fencing)
{
	struct job *j = calloc(1, sizeof *j);
	if (!j)
		return NULL;
	j->a = a;
	j->lease_id = lease_id;
	j->job_id = job_id;
	j->fencing = fencing;
	j->kill_ev = evtimer_new(a->base, kill_cb, j);
	j->deadline_ev = evtimer_new(a->base, deadline_cb, j);
	j->retry_ev = evtimer_new(a->base, retry_report_cb, j);
	j->status_fd = -1;
	if (!j->kill_ev || !j->deadline_ev || !j->retry_ev) {
		free_job(j);
		return NULL;
	}
	j->next = a->jobs;
	a->jobs = j;
	return j;
}

static void env_setf(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void env_setf(const char *name, const char *fmt, ...)
{
	char v[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(v, sizeof v, fmt, ap);
	va_end(ap);
	setenv(name, v, 1);
}

static void log_path(const struct agent *a, uint64_t lease_id, char *out, size_t len)
{
	snprintf(out, len, "%s/logs/lease-%" PRIu64 ".log", a->state_dir, lease_id);
}

/* Every byte of the output is with the server: the final report may go,
 * and a lease already reported can be forgotten. */
static void logs_done_cb(void *arg)
{
	struct job *j = arg;
	alog("info", "msg=\"output shipped\" lease=%" PRIu64 " bytes=%" PRId64 " ms=%" PRId64,
	     j->lease_id, ls_offset(j->ls), ls_took_us(j->ls) / 1000);
	if (!j->nq && !j->running && j->pid == 0) {
		if (j->container || *j->scratch)
			rt_remove(&j->a->rt, j->lease_id, j->scratch);
		remove_job(j);
		return;
	}
	save_leases(j->a);
	pump_reports(j);
}

static void ship_logs(struct job *j, int64_t offset)
{
	struct agent *a = j->a;
	char path[1200];
	log_path(a, j->lease_id, path, sizeof path);
	j->ls = ls_new(a->base, a->logc, a->c->token, &a->node_id, j->lease_id, j->fencing, path,
	               offset, logs_done_cb, j);
	if (!j->ls)
		alog("error",
		     "msg=\"out of memory: the job's output will not be shipped\" "
		     "lease=%" PRIu64,
		     j->lease_id);
}

static void status_cb(evutil_socket_t fd, short what, void *arg);
static void start_container(struct agent *a, struct job *j,
                            const Gpumatch__V1__AcquireLeaseResponse *r, const char *peers);

/* Starts the lease's command; queues RUNNING, or FAILED when it cannot. */
static void start_job(struct agent *a, const Gpumatch__V1__AcquireLeaseResponse *r)
{
	const Gpumatch__V1__Lease *l = r->lease;
	if (find_job(a, l->id)) {
		alog("warn", "msg=\"lease handed out twice, ignored\" lease=%" PRIu64, l->id);
		return;
	}
	struct job *j = new_job(a, l->id, l->job_id, l->fencing_token);
	if (!j) {
		alog("error", "msg=\"out of memory\"");
		return;
	}
	const Gpumatch__V1__JobSpec *s = r->spec;
	for (size_t i = 0; i < l->n_gpu_indexes; i++)
		if (l->gpu_indexes[i] < 64)
			j->gpu_mask |= 1ULL << l->gpu_indexes[i];
	char gpus[512] = "";
	size_t used = 0;
	for (size_t i = 0; i < l->n_gpu_indexes; i++)
		used += (size_t)snprintf(gpus + used, used < sizeof gpus ? sizeof gpus - used : 0,
		                         "%s%u", i ? "," : "", l->gpu_indexes[i]);
	alog("info", "msg=\"lease acquired\" lease=%" PRIu64 " job=%" PRIu64 " gpus=%s name=\"%s\"",
	     l->id, l->job_id, gpus, r->job_name ? r->job_name : "");
	if (!s || (!s->n_command && !(s->image && *s->image))) {
		queue_report(
		    j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED, 127, 0, "%s",
		    s && s->image && *s->image
		        ? "this agent runs host commands only; the job names an image and no "
		          "command"
		        : "the job spec has no command");
		return;
	}
	if (s->image && *s->image) {
		char peers[2048] = "";
		size_t pu = 0;
		for (size_t i = 0; i < r->n_peers; i++)
			pu += (size_t)snprintf(
			    peers + pu, pu < sizeof peers ? sizeof peers - pu : 0, "%s%s",
			    i ? "," : "", r->peers[i]->address ? r->peers[i]->address : "");
		start_container(a, j, r, peers);
		return;
	}
	char logpath[1200], exit_path[1200], pid_path[1200];
	log_path(a, l->id, logpath, sizeof logpath);
	snprintf(exit_path, sizeof exit_path, "%s/logs/lease-%" PRIu64 ".exit", a->state_dir,
	         l->id);
	snprintf(pid_path, sizeof pid_path, "%s/logs/lease-%" PRIu64 ".pid", a->state_dir, l->id);
	unlink(exit_path);
	unlink(pid_path);
	ship_logs(j, 0);
	int ep[2];
	if (pipe2(ep, O_CLOEXEC)) {
		queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED, 127, 0, "pipe: %s",
		             strerror(errno));
		return;
	}
	/* On disk before any process of it can exist: an agent killed from
	 * here on and restarted with this state directory knows the lease
	 * (its outcome from exit_path, its process group from pid_path), so
	 * it neither forgets a job that runs nor lets the server run it twice. */
	j->running = true;
	j->start_us = cl_now_us() + a->clock_skew_us;
	save_leases(a);
	pid_t pid = fork();
	if (pid < 0) {
		close(ep[0]);
		close(ep[1]);
		j->running = false;
		queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED, 127, 0, "fork: %s",
		             strerror(errno));
		return;
	}
	if (pid == 0) {
		/* the child: its own process group, log as stdout/stderr, the
		 * spec's argv, env and working directory; no shell. It forks the
		 * job and records how it exited (exit_path), so that an agent
		 * restarted while the job ran still learns its outcome. */
		setpgid(0, 0);
		/* the group's id, before the job exists (the agent may die
		 * before it writes it into leases.json) */
		char pidtext[32];
		int pidlen = snprintf(pidtext, sizeof pidtext, "%d\n", (int)getpid());
		int pf = open(pid_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
		if (pf >= 0) {
			ssize_t w = write(pf, pidtext, (size_t)pidlen);
			(void)w; /* without it, a restarted agent still has leases.json */
			close(pf);
		}
		sigset_t none, stops;
		sigemptyset(&none);
		sigemptyset(&stops);
		sigaddset(&stops, SIGTERM);
		sigaddset(&stops, SIGINT);
		sigaddset(&stops, SIGHUP);
		/* the recorder outlives a stop request; the job does not */
		sigprocmask(SIG_SETMASK, &stops, NULL);
		signal(SIGPIPE, SIG_DFL);
		pid_t job = fork();
		if (job > 0) {
			close(ep[1]);
			int st = 0;
			while (waitpid(job, &st, 0) < 0 && errno == EINTR)
				;
			char tmp[1300], text[96];
			snprintf(tmp, sizeof tmp, "%s.tmp", exit_path);
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			int len = snprintf(text, sizeof text, "%d %d %lld\n",
			                   WIFEXITED(st) ? WEXITSTATUS(st) : 0,
			                   WIFSIGNALED(st) ? WTERMSIG(st) : 0,
			                   (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
			int xf = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0640);
			if (xf >= 0) {
				if (write(xf, text, (size_t)len) == len && !fsync(xf))
					(void)rename(tmp, exit_path);
				close(xf);
			}
			if (WIFSIGNALED(st)) {
				signal(WTERMSIG(st), SIG_DFL);
				sigprocmask(SIG_SETMASK, &none, NULL);
				raise(WTERMSIG(st));
			}
			_exit(WIFEXITED(st) ? WEXITSTATUS(st) : 127);
		}
		sigprocmask(SIG_SETMASK, &none, NULL);
		if (job < 0) {
			char msg[128];
			int n = snprintf(msg, sizeof msg, "fork: %s", strerror(errno));
			if (write(ep[1], msg, (size_t)n) < 0)
				_exit(126);
			_exit(127);
		}
		int err = 0;
		const char *stage = "open log";
		int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0640);
		int nul = open("/dev/null", O_RDONLY);
		if (fd < 0 || nul < 0 || dup2(nul, 0) < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
			err = errno;
		/* the log stays the agent's file; from here on the job's user */
		if (!err && jobenv_drop_privileges(&a->job_user)) {
			stage = "switch to the job user";
			err = errno;
		}
		if (!err && s->working_dir && *s->working_dir) {
			stage = "chdir";
			if (chdir(s->working_dir))
				err = errno;
		}
		if (!err) {
			/* nothing of the agent's own environment (its token
			 * above all): the documented set, then the spec's */
			jobenv_reset_environment(&a->job_user);
			env_setf("CUDA_VISIBLE_DEVICES", "%s", gpus);
			env_setf("GPUMATCH_JOB_ID", "%" PRIu64, l->job_id);
			env_setf("GPUMATCH_LEASE_ID", "%" PRIu64, l->id);
			env_setf("GPUMATCH_NODE_ID", "%" PRIu64, a->node_id);
			env_setf("GPUMATCH_GANG_INDEX", "%u", l->gang_index);
			env_setf("GPUMATCH_GANG_SIZE", "%u", l->gang_size ? l->gang_size : 1);
			env_setf("GPUMATCH_DEADLINE_US", "%" PRId64, l->deadline_us);
			char peers[2048] = "";
			size_t pu = 0;
			for (size_t i = 0; i < r->n_peers; i++)
				pu += (size_t)snprintf(
				    peers + pu, pu < sizeof peers ? sizeof peers - pu : 0, "%s%s",
				    i ? "," : "", r->peers[i]->address ? r->peers[i]->address : "");
			env_setf("GPUMATCH_GANG_PEERS", "%s", peers);
			for (size_t i = 0; i < s->n_env; i++)
				setenv(s->env[i]->key, s->env[i]->value, 1);
			char **argv = calloc(s->n_command + 1, sizeof *argv);
			if (argv) {
				for (size_t i = 0; i < s->n_command; i++)
					argv[i] = s->command[i];
				stage = "exec";
				execvp(argv[0], argv);
			}
			err = errno;
		}
		char msg[300];
		int n = snprintf(msg, sizeof msg, "%s: %s", stage, strerror(err));
		if (write(ep[1], msg, (size_t)n) < 0)
			_exit(126);
		_exit(127);
	}
	close(ep[1]);
	setpgid(pid, pid); /* also here: no window where kill(-pid) misses it */
	char msg[300];
	ssize_t n;
	while ((n = read(ep[0], msg, sizeof msg - 1)) < 0 && errno == EINTR)
		;
	close(ep[0]);
	j->pid = pid;
	j->running = true;
	if (n > 0) {
		/* it never ran: reaped by the SIGCHLD handler; the outcome is this */
		msg[n] = '\0';
		j->running = false;
		j->stopping = true;
		alog("warn", "msg=\"job did not start\" lease=%" PRIu64 " err=\"%s\"", l->id, msg);
		ls_finish(j->ls);
		queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED, 127, 0,
		             "cannot start %s: %s", s->command[0], msg);
		return;
	}
	alog("info",
	     "msg=\"job started\" lease=%" PRIu64 " job=%" PRIu64
	     " pid=%d cuda_visible_devices=%s log=%s",
	     l->id, l->job_id, (int)pid, gpus, logpath);
	if (l->deadline_us > 0) {
		int64_t left = l->deadline_us - a->clock_skew_us - cl_now_us();
		if (left < 0)
			left = 0;
		struct timeval tv = { (time_t)(left / 1000000), (suseconds_t)(left % 1000000) };
		evtimer_add(j->deadline_ev, &tv);
	}
	queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_RUNNING, 0, 0, "pid %d", (int)pid);
}

/* ---- container jobs ---- */

static void schedule_heartbeat(struct agent *a, int ms);

static void status_read(struct job *j)
{
	for (;;) {
		ssize_t n = read(j->status_fd, j->status_buf + j->status_len,
		                 sizeof j->status_buf - 1 - j->status_len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0 || errno != EAGAIN) {
				event_del(j->status_ev);
				close(j->status_fd);
				j->status_fd = -1;
			}
			return;
		}
		j->status_len += (size_t)n;
		j->status_buf[j->status_len] = '\0';
		char *line = j->status_buf, *nl;
		char old_phase[16];
		snprintf(old_phase, sizeof old_phase, "%s", j->ct.phase);
		while ((nl = strchr(line, '\n'))) {
			*nl = '\0';
			rt_status_line(&j->ct, line);
			line = nl + 1;
		}
		j->status_len = strlen(line);
		memmove(j->status_buf, line, j->status_len + 1);
		if (j->status_len >= sizeof j->status_buf - 1)
			j->status_len = 0; /* a line too long to mean anything */
		if (*j->ct.digest)
			image_note(j->a, j->image, j->ct.digest);
		if (strcmp(old_phase, j->ct.phase)) {
			alog("info", "msg=\"container phase\" lease=%" PRIu64 " phase=%s%s%s",
			     j->lease_id, j->ct.phase, *j->ct.digest ? " digest=" : "",
			     j->ct.digest);
			/* the server hears of it now, not at the next period */
			if (j->a->node_id && !j->a->hb_inflight && !j->a->shutting_down)
				schedule_heartbeat(j->a, 0);
		}
	}
}

static void status_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	status_read(arg);
}

/* The launcher exited (status st): what the container did decides the
 * report. */
static void container_ended(struct job *j, int st)
{
	if (j->status_fd >= 0)
		status_read(j);
	int code =
	    j->ct.exited ? j->ct.exit_code : (WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
	if (j->ct.pull_failed) {
		image_note(j->a, j->image, "");
		j->fail_kind = GPUMATCH__V1__FAILURE_REASON__FAILURE_REASON_IMAGE_PULL;
		alog("warn", "msg=\"image pull failed\" lease=%" PRIu64 " err=\"%s\"", j->lease_id,
		     j->ct.message);
		queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED, 125, 0,
		             "image pull failed: %s", j->ct.message);
		return;
	}
	if (code == 0) {
		alog("info", "msg=\"job exited\" lease=%" PRIu64 " job=%" PRIu64 " exit_code=0",
		     j->lease_id, j->job_id);
		queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_SUCCEEDED, 0, 0, "%s",
		             "exited 0");
		return;
	}
	if (j->interrupt) {
		alog("info", "msg=\"job interrupted\" lease=%" PRIu64 " exit_code=%d", j->lease_id,
		     code);
		queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_INTERRUPTED,
		             code < 128 ? code : 0, code > 128 ? code - 128 : 0, "%s",
		             "interrupted: the node stopped; the job goes back to the queue");
		return;
	}
	/* on hosts where the runtime cannot see the kernel's OOM kill, a
	 * SIGKILL nobody here sent to a memory-limited container is one */
	if (j->ct.oom || (code == 128 + SIGKILL && !j->stopping)) {
		j->fail_kind = GPUMATCH__V1__FAILURE_REASON__FAILURE_REASON_OOM;
		alog("info", "msg=\"job killed for its memory limit\" lease=%" PRIu64, j->lease_id);
		queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED, 0, SIGKILL, "%s",
		             "killed for exceeding its memory limit (OOM)");
		return;
	}
	if (code == 125 && !j->stopping) {
		j->fail_kind = GPUMATCH__V1__FAILURE_REASON__FAILURE_REASON_AGENT_ERROR;
		queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED, 125, 0, "%s",
		             "the container runtime could not run the job (exit 125); its "
		             "message is in the job's log");
		return;
	}
	if (code > 128 && code < 160) {
		int sig = code - 128;
		alog("info", "msg=\"job killed\" lease=%" PRIu64 " signal=%d%s", j->lease_id, sig,
		     j->stopping ? " stopped=true" : "");
		queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED, 0, sig,
		             "killed by signal %d (%s)%s", sig, strsignal(sig),
		             j->stopping ? " after a stop request" : "");
		return;
	}
	alog("info", "msg=\"job exited\" lease=%" PRIu64 " exit_code=%d", j->lease_id, code);
	queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED, code, 0, "exited %d", code);
}

static void start_container(struct agent *a, struct job *j,
                            const Gpumatch__V1__AcquireLeaseResponse *r, const char *peers)
{
	const Gpumatch__V1__Lease *l = r->lease;
	j->container = true;
	j->image = strdup(r->spec->image);
	const struct image_seen *seen = j->image ? image_find(a, j->image) : NULL;
	snprintf(j->scratch, sizeof j->scratch, "%s/scratch/lease-%" PRIu64, a->state_dir, l->id);
	struct rt_lease rl = {
		.lease_id = l->id,
		.job_id = l->job_id,
		.node_id = a->node_id,
		.spec = r->spec,
		.gpu_indexes = l->gpu_indexes,
		.n_gpus = l->n_gpu_indexes,
		.gpu_uuids = a->gpu_uuids,
		.gang_index = l->gang_index,
		.gang_size = l->gang_size,
		.deadline_us = l->deadline_us,
		.peers = peers,
		.scratch_dir = j->scratch,
		.known_digest = seen ? seen->digest : NULL,
	};
	for (size_t i = 0; i < l->n_gpu_indexes; i++)
		if (l->gpu_indexes[i] >= a->gpu_count) {
			queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED, 127, 0,
			             "GPU index %u: this node has %u", l->gpu_indexes[i],
			             a->gpu_count);
			return;
		}
	char why[600];
	int kind = 0;
	if (rt_check(&a->rt, &rl, &kind, why, sizeof why)) {
		j->fail_kind = kind;
		alog("warn", "msg=\"job refused by this node\" lease=%" PRIu64 " err=\"%s\"", l->id,
		     why);
		queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED, 125, 0, "%s", why);
		return;
	}
	char logpath[1200];
	log_path(a, l->id, logpath, sizeof logpath);
	int sp[2];
	if (mkdir(j->scratch, 0700) && errno != EEXIST) {
		j->fail_kind = GPUMATCH__V1__FAILURE_REASON__FAILURE_REASON_AGENT_ERROR;
		queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED, 125, 0,
		             "scratch directory: %s", strerror(errno));
		return;
	}
	/* any user the spec names may write its scratch (the directory above
	 * it is the agent's, closed to others on the host) */
	chmod(j->scratch, 01777);
	if (pipe2(sp, O_CLOEXEC)) {
		queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED, 125, 0, "pipe: %s",
		             strerror(errno));
		return;
	}
	ship_logs(j, 0);
	/* on disk before any process of it can exist (as start_job does): a
	 * restarted agent reports it lost and removes its container by label */
	j->running = true;
	j->start_us = cl_now_us() + a->clock_skew_us;
	save_leases(a);
	pid_t pid = fork();
	if (pid < 0) {
		j->running = false;
		close(sp[0]);
		close(sp[1]);
		queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED, 125, 0, "fork: %s",
		             strerror(errno));
		return;
	}
	if (pid == 0) {
		setpgid(0, 0);
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGPIPE, SIG_DFL);
		signal(SIGCHLD, SIG_DFL);
		close(sp[0]);
		int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
		if (fd < 0)
			_exit(125);
		rt_launch(&a->rt, &rl, sp[1], fd);
	}
	close(sp[1]);
	setpgid(pid, pid);
	j->pid = pid;
	j->running = true;
	j->status_fd = sp[0];
	fcntl(sp[0], F_SETFL, fcntl(sp[0], F_GETFL) | O_NONBLOCK);
	j->status_ev = event_new(a->base, sp[0], EV_READ | EV_PERSIST, status_cb, j);
	if (j->status_ev)
		event_add(j->status_ev, NULL);
	alog("info",
	     "msg=\"container job started\" lease=%" PRIu64 " job=%" PRIu64
	     " pid=%d image=%s log=%s",
	     l->id, l->job_id, (int)pid, r->spec->image, logpath);
	if (l->deadline_us > 0) {
		int64_t left = l->deadline_us - a->clock_skew_us - cl_now_us();
		if (left < 0)
			left = 0;
		struct timeval tv = { (time_t)(left / 1000000), (suseconds_t)(left % 1000000) };
		evtimer_add(j->deadline_ev, &tv);
	}
	queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_RUNNING, 0, 0,
	             "container %s starting (pid %d)", r->spec->image, (int)pid);
}

static void sigchld_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct agent *a = arg;
	int st;
	pid_t pid;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		struct job *j = NULL;
		for (struct job *k = a->jobs; k; k = k->next)
			if (k->pid == pid)
				j = k;
		if (!j)
			continue;
		/* whatever the leader left behind in its group goes too */
		kill(-pid, SIGKILL);
		j->pid = 0;
		evtimer_del(j->kill_ev);
		evtimer_del(j->deadline_ev);
		if (!j->running)
			continue; /* never started: already reported */
		j->running = false;
		if (j->container) {
			container_ended(j, st);
			continue;
		}
		if (j->interrupt && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
			alog("info", "msg=\"job interrupted\" lease=%" PRIu64 " job=%" PRIu64,
			     j->lease_id, j->job_id);
			queue_report(
			    j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_INTERRUPTED,
			    WIFEXITED(st) ? WEXITSTATUS(st) : 0, WIFSIGNALED(st) ? WTERMSIG(st) : 0,
			    "%s", "interrupted: the node stopped; the job goes back to the queue");
			continue;
		}
		if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
			alog("info",
			     "msg=\"job exited\" lease=%" PRIu64 " job=%" PRIu64 " exit_code=0",
			     j->lease_id, j->job_id);
			queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_SUCCEEDED, 0, 0,
			             "%s", "exited 0");
		} else if (WIFEXITED(st)) {
			alog("info",
			     "msg=\"job exited\" lease=%" PRIu64 " job=%" PRIu64 " exit_code=%d",
			     j->lease_id, j->job_id, WEXITSTATUS(st));
			queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED,
			             WEXITSTATUS(st), 0, "exited %d", WEXITSTATUS(st));
		} else {
			int sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
			alog("info",
			     "msg=\"job killed\" lease=%" PRIu64 " job=%" PRIu64 " signal=%d%s",
			     j->lease_id, j->job_id, sig, j->stopping ? " stopped=true" : "");
			queue_report(j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED, 0, sig,
			             "killed by signal %d (%s)%s", sig, strsignal(sig),
			             j->stopping ? " after a stop request" : "");
		}
	}
}

/* ---- heartbeats ---- */

static void schedule_heartbeat(struct agent *a, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	evtimer_add(a->hb_ev, &tv);
}

static void handle_commands(struct agent *a, Gpumatch__V1__LeaseCommand **cmds, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (cmds[i]->action != GPUMATCH__V1__LEASE_ACTION__LEASE_ACTION_STOP)
			continue;
		struct job *j = find_job(a, cmds[i]->lease_id);
		if (j)
			stop_job(j, cmds[i]->deadline_us, cmds[i]->reason, cmds[i]->interrupt);
	}
}

static void heartbeat_done(struct cl_result *r, void *arg)
{
	struct agent *a = arg;
	a->hb_inflight = false;
	int next = a->hb_override_ms ? a->hb_override_ms : a->hb_ms;
	if (r->http_status != 200) {
		alog("warn", "msg=\"heartbeat failed\" code=%s err=\"%s\"", r->code, r->message);
		/* retired (RetireNode) once its last job ended: nothing more to do */
		if (!strcmp(r->code, "failed_precondition") && strstr(r->message, "is retired")) {
			alog("info", "msg=\"node retired, agent stopping\" node=%" PRIu64,
			     a->node_id);
			a->exit_code = EXIT_OK;
			event_base_loopbreak(a->base);
			return;
		}
		/* a lease the server says is not this node's: forget it, or no
		 * heartbeat would ever be taken again */
		unsigned idx;
		if (cl_result_final_error(r) &&
		    sscanf(r->message, "runningLeaseIds[%u]", &idx) == 1) {
			unsigned k = 0;
			for (struct job *j = a->jobs; j; j = j->next) {
				if (!(j->running || j->nq))
					continue;
				if (k++ == idx) {
					alog("warn",
					     "msg=\"forgetting a lease the server does not know\" "
					     "lease=%" PRIu64,
					     j->lease_id);
					if (j->running && j->pid > 0)
						kill(-j->pid, SIGKILL);
					if (j->container || *j->scratch)
						rt_remove(&a->rt, j->lease_id, j->scratch);
					j->running = false;
					j->pid = 0;
					j->nq = 0;
					remove_job(j);
					break;
				}
			}
		}
		/* also while shutting down: the node must not look lost while
		 * its jobs get their grace */
		schedule_heartbeat(a, next > 2000 ? 2000 : next);
		return;
	}
	Gpumatch__V1__HeartbeatResponse *resp = (Gpumatch__V1__HeartbeatResponse *)r->resp;
	if (resp->server_time_us)
		a->clock_skew_us = resp->server_time_us - cl_now_us();
	if (resp->next_heartbeat_ms && !a->hb_override_ms)
		a->hb_ms = (int)resp->next_heartbeat_ms;
	handle_commands(a, resp->commands, resp->n_commands);
	for (size_t i = 0; i < resp->n_unknown_lease_ids; i++) {
		struct job *j = find_job(a, resp->unknown_lease_ids[i]);
		if (j)
			stop_job(j, 0, "the server no longer knows this lease", false);
	}
	if (resp->reprobe_requested && !a->reprobe_logged)
		alog("warn",
		     "msg=\"the server asks for a new probe run; run gpu-probe challenge\" "
		     "node=%" PRIu64,
		     a->node_id);
	a->reprobe_logged = resp->reprobe_requested;
	schedule_heartbeat(a, a->hb_override_ms ? a->hb_override_ms : a->hb_ms);
}

static void heartbeat_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct agent *a = arg;
	if (a->hb_inflight || !a->node_id)
		return;
	Gpumatch__V1__HeartbeatRequest req = GPUMATCH__V1__HEARTBEAT_REQUEST__INIT;
	req.node_id = a->node_id;
	req.sent_at_us = cl_now_us();
	req.agent_version = "gpumatch-agent/" GPUMATCH_VERSION;
	Gpumatch__V1__GpuHealth *h = calloc(a->gpu_count ? a->gpu_count : 1, sizeof *h);
	Gpumatch__V1__GpuHealth **hp = calloc(a->gpu_count ? a->gpu_count : 1, sizeof *hp);
	uint64_t *running = calloc(256, sizeof *running);
	if (!h || !hp || !running) {
		free(h);
		free(hp);
		free(running);
		schedule_heartbeat(a, 1000);
		return;
	}
	for (uint32_t i = 0; i < a->gpu_count; i++) {
		gpumatch__v1__gpu_health__init(&h[i]);
		h[i].index = i;
		h[i].uuid = a->gpu_uuids[i];
		h[i].status = (Gpumatch__V1__GpuHealthStatus)a->gpu_status[i];
		if (a->gpu_message[i])
			h[i].message = a->gpu_message[i];
		/* without NVML, a GPU held by a running job counts as fully busy */
		for (struct job *j = a->jobs; j; j = j->next)
			if (j->running && i < 64 && (j->gpu_mask >> i & 1))
				h[i].utilization_ppm = 1000000;
		hp[i] = &h[i];
	}
	req.n_gpus = a->gpu_count;
	req.gpus = hp;
	size_t nr = 0;
	/* running, or ended with reports still to deliver: the server ends a
	 * lease the agent stops listing, so a finished job stays listed until
	 * its outcome is delivered */
	for (struct job *j = a->jobs; j && nr < 256; j = j->next)
		if (j->running || j->nq)
			running[nr++] = j->lease_id;
	req.n_running_lease_ids = nr;
	req.running_lease_ids = running;
	/* container jobs: their phase, and the image digest once known */
	Gpumatch__V1__LeaseProgress prog[64], *pp[64];
	size_t np = 0;
	for (struct job *j = a->jobs; j && np < 64; j = j->next)
		if (j->running && j->container && *j->ct.phase) {
			gpumatch__v1__lease_progress__init(&prog[np]);
			prog[np].lease_id = j->lease_id;
			prog[np].phase = j->ct.phase;
			prog[np].image_digest = j->ct.digest;
			pp[np] = &prog[np];
			np++;
		}
	req.n_progress = np;
	req.progress = pp;
	if (cl_call_async(a->ctl, a->c->token, "NodeService", "Heartbeat", &req.base,
	                  heartbeat_done, a) == 0)
		a->hb_inflight = true;
	else
		schedule_heartbeat(a, 1000);
	free(h);
	free(hp);
	free(running);
}

/* ---- the lease long-poll ---- */

static void schedule_poll(struct agent *a, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	evtimer_add(a->poll_ev, &tv);
}

/* Takes o off the agent's list of offers; true when it was on it. */
static bool offer_unlink(struct offer *o)
{
	for (struct offer **p = &o->a->offers; *p; p = &(*p)->next)
		if (*p == o) {
			*p = o->next;
			return true;
		}
	return false;
}

static void offer_free(struct offer *o)
{
	struct agent *a = o->a;
	bool listed = offer_unlink(o);
	if (o->retry_ev)
		event_free(o->retry_ev);
	protobuf_c_message_free_unpacked(&o->resp->base, NULL);
	free(o);
	if (listed)
		save_leases(a); /* no longer an offer on disk */
}

static void confirm_send(struct offer *o);

static void confirm_done(struct cl_result *r, void *arg)
{
	struct offer *o = arg;
	struct agent *a = o->a;
	const Gpumatch__V1__Lease *l = o->resp->lease;
	if (r->http_status == 200) {
		Gpumatch__V1__ConfirmLeaseResponse *cr =
		    (Gpumatch__V1__ConfirmLeaseResponse *)r->resp;
		/* from here on a job (start_job writes it down), not an offer */
		offer_unlink(o);
		if (a->shutting_down) {
			alog("warn",
			     "msg=\"lease confirmed while shutting down, not started\" "
			     "lease=%" PRIu64,
			     l->id);
			/* it goes back to the queue now, not when the janitor
			 * notices that no heartbeat lists it */
			struct job *j = find_job(a, l->id)
			                    ? NULL
			                    : new_job(a, l->id, l->job_id, l->fencing_token);
			if (j)
				queue_report(
				    j, GPUMATCH__V1__LEASE_STATE__LEASE_STATE_INTERRUPTED, 0, 0,
				    "%s", "interrupted: the agent stopped before the job started");
		} else {
			if (cr->duplicate)
				alog("info", "msg=\"lease confirmed again\" lease=%" PRIu64, l->id);
			start_job(a, o->resp);
		}
		offer_free(o);
		return;
	}
	if (cl_result_final_error(r)) {
		alog("warn",
		     "msg=\"offer not confirmed, not started\" lease=%" PRIu64
		     " code=%s err=\"%s\"",
		     l->id, r->code, r->message);
		offer_free(o);
		return;
	}
	if (a->shutting_down) {
		offer_free(o);
		return;
	}
	o->backoff_ms = o->backoff_ms ? o->backoff_ms * 2 : 100;
	if (o->backoff_ms > 2000)
		o->backoff_ms = 2000;
	alog("warn",
	     "msg=\"confirmation not delivered, will retry\" lease=%" PRIu64
	     " code=%s err=\"%s\" retry_ms=%d",
	     l->id, r->code, r->message, o->backoff_ms);
	struct timeval tv = { o->backoff_ms / 1000, (o->backoff_ms % 1000) * 1000 };
	evtimer_add(o->retry_ev, &tv);
}

static void confirm_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	confirm_send(arg);
}

static void confirm_send(struct offer *o)
{
	struct agent *a = o->a;
	Gpumatch__V1__ConfirmLeaseRequest req = GPUMATCH__V1__CONFIRM_LEASE_REQUEST__INIT;
	req.node_id = a->node_id;
	req.lease_id = o->resp->lease->id;
	req.fencing_token = o->resp->lease->fencing_token;
	/* 0: the server takes the confirmation's arrival; the RUNNING report
	 * then moves the start to when the process really started */
	req.started_at_us = 0;
	if (cl_call_async(a->ctl, a->c->token, "NodeService", "ConfirmLease", &req.base,
	                  confirm_done, o)) {
		struct timeval tv = { 1, 0 };
		evtimer_add(o->retry_ev, &tv);
	}
}

static void confirm_offer(struct agent *a, Gpumatch__V1__AcquireLeaseResponse *resp)
{
	struct offer *o = calloc(1, sizeof *o);
	if (!o) {
		alog("error", "msg=\"out of memory\"");
		protobuf_c_message_free_unpacked(&resp->base, NULL);
		return;
	}
	o->a = a;
	o->resp = resp;
	o->at_us = cl_now_us() + a->clock_skew_us;
	o->next = a->offers;
	a->offers = o;
	o->retry_ev = evtimer_new(a->base, confirm_retry_cb, o);
	if (!o->retry_ev) {
		offer_free(o);
		return;
	}
	/* on disk before the server can take it as confirmed */
	save_leases(a);
	confirm_send(o);
}

static void acquire_done(struct cl_result *r, void *arg)
{
	struct agent *a = arg;
	a->poll_inflight = false;
	if (a->shutting_down) {
		Gpumatch__V1__AcquireLeaseResponse *late =
		    r->http_status == 200 ? (Gpumatch__V1__AcquireLeaseResponse *)r->resp : NULL;
		/* not started and not reported: once this node stops heartbeating
		 * the server expires the lease and queues the job again */
		if (late && late->lease && late->lease->id)
			alog("warn",
			     "msg=\"lease arrived while shutting down, not started\" lease=%" PRIu64
			     " job=%" PRIu64,
			     late->lease->id, late->lease->job_id);
		return;
	}
	if (r->http_status != 200) {
		a->poll_backoff_ms = a->poll_backoff_ms ? a->poll_backoff_ms * 2 : 250;
		if (a->poll_backoff_ms > 5000)
			a->poll_backoff_ms = 5000;
		alog("warn", "msg=\"lease poll failed\" code=%s err=\"%s\" retry_ms=%d", r->code,
		     r->message, a->poll_backoff_ms);
		schedule_poll(a, a->poll_backoff_ms);
		return;
	}
	a->poll_backoff_ms = 0;
	Gpumatch__V1__AcquireLeaseResponse *resp = (Gpumatch__V1__AcquireLeaseResponse *)r->resp;
	handle_commands(a, resp->commands, resp->n_commands);
	if (resp->lease && resp->lease->id) {
		r->resp = NULL; /* kept until the confirmation answers */
		confirm_offer(a, resp);
	}
	schedule_poll(a, 0);
}

static void poll_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct agent *a = arg;
	if (a->poll_inflight || a->shutting_down || !a->node_id)
		return;
	Gpumatch__V1__AcquireLeaseRequest req = GPUMATCH__V1__ACQUIRE_LEASE_REQUEST__INIT;
	req.node_id = a->node_id;
	req.wait_timeout_ms = a->poll_ms;
	if (cl_call_async(a->poll, a->c->token, "NodeService", "AcquireLease", &req.base,
	                  acquire_done, a) == 0)
		a->poll_inflight = true;
	else
		schedule_poll(a, 1000);
}

/* ---- registration ---- */

static void register_cb(evutil_socket_t fd, short what, void *arg);

static void register_done(struct cl_result *r, void *arg)
{
	struct agent *a = arg;
	if (r->http_status != 200) {
		if (!strcmp(r->code, "not_found") && json_object_get(a->reg, "nodeId")) {
			alog("warn",
			     "msg=\"saved node unknown to the server, registering anew\" "
			     "node=%" PRIu64,
			     a->node_id);
			json_object_del(a->reg, "nodeId");
			a->node_id = 0;
			event_active(a->reg_ev, EV_TIMEOUT, 0);
			return;
		}
		if (cl_result_final_error(r)) {
			alog("error", "msg=\"registration refused\" code=%s err=\"%s\"", r->code,
			     r->message);
			a->exit_code = EXIT_SERVER;
			event_base_loopbreak(a->base);
			return;
		}
		a->reg_backoff_ms = a->reg_backoff_ms ? a->reg_backoff_ms * 2 : 500;
		if (a->reg_backoff_ms > 10000)
			a->reg_backoff_ms = 10000;
		alog("warn",
		     "msg=\"registration failed, will retry\" code=%s err=\"%s\" retry_ms=%d",
		     r->code, r->message, a->reg_backoff_ms);
		struct timeval tv = { a->reg_backoff_ms / 1000, (a->reg_backoff_ms % 1000) * 1000 };
		evtimer_add(a->reg_ev, &tv);
		return;
	}
	Gpumatch__V1__RegisterNodeResponse *resp = (Gpumatch__V1__RegisterNodeResponse *)r->resp;
	a->node_id = resp->node->id;
	const ProtobufCEnumValue *st = protobuf_c_enum_descriptor_get_value(
	    &gpumatch__v1__node_state__descriptor, (int)resp->node->state);
	alog("info", "msg=\"registered\" node=%" PRIu64 " name=%s created=%s gpus=%zu state=%s",
	     a->node_id, resp->node->name, resp->created ? "true" : "false", resp->node->n_gpus,
	     st ? st->name + strlen("NODE_STATE_") : "?");
	save_node(a);
	schedule_heartbeat(a, 0);
	schedule_poll(a, 0);
	for (struct job *j = a->jobs; j; j = j->next)
		pump_reports(j);
}

static void register_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct agent *a = arg;
	char *text = json_dumps(a->reg, JSON_COMPACT);
	ProtobufCMessage *m = NULL;
	char err[512];
	if (!text || pbjson_decode(&gpumatch__v1__register_node_request__descriptor, text,
	                           strlen(text), &m, err, sizeof err)) {
		alog("error", "msg=\"bad node description\" err=\"%s\"",
		     text ? err : "out of memory");
		free(text);
		a->exit_code = EXIT_USAGE;
		event_base_loopbreak(a->base);
		return;
	}
	free(text);
	if (cl_call_async(a->ctl, a->c->token, "NodeService", "RegisterNode", m, register_done,
	                  a)) {
		struct timeval tv = { 1, 0 };
		evtimer_add(a->reg_ev, &tv);
	}
	protobuf_c_message_free_unpacked(m, NULL);
}

/* ---- shutdown ---- */

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct agent *a = arg;
	bool busy = false;
	for (struct job *j = a->jobs; j; j = j->next)
		busy |= j->running || j->nq;
	/* reports that cannot be delivered now stay on disk for the next start */
	if (!busy || cl_now_us() - a->shutdown_started_us > a->grace_us + 15000000)
		event_base_loopbreak(a->base);
}

static void drain_done(struct cl_result *r, void *arg)
{
	(void)arg;
	if (r->http_status == 200)
		alog("info", "msg=\"node draining while its jobs stop\"");
	else
		alog("warn", "msg=\"drain refused\" code=%s err=\"%s\"", r->code, r->message);
}

static void sigterm_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct agent *a = arg;
	if (a->shutting_down) {
		alog("info", "msg=\"second signal, exiting now\"");
		event_base_loopbreak(a->base);
		return;
	}
	a->shutting_down = true;
	a->shutdown_started_us = cl_now_us();
	alog("info", "msg=\"shutting down: stopping jobs and sending their reports\"");
	/* no new work while the running jobs stop; they go back to the queue */
	if (a->node_id) {
		Gpumatch__V1__DrainNodeRequest dr = GPUMATCH__V1__DRAIN_NODE_REQUEST__INIT;
		dr.node_id = a->node_id;
		dr.reason = "the agent is stopping";
		/* its leases are to be given up (stop kind 6): however they end
		 * now, even if this agent exits before its reports are
		 * delivered, they end INTERRUPTED and the jobs are queued again */
		dr.stop_jobs = true;
		dr.stop_grace_ms = (uint32_t)(a->grace_us / 1000);
		if (cl_call_async(a->ctl, a->c->token, "NodeService", "DrainNode", &dr.base,
		                  drain_done, a))
			alog("warn", "msg=\"could not ask the server to drain this node\"");
	}
	for (struct job *j = a->jobs; j; j = j->next)
		stop_job(j, 0, "agent shutting down: the job goes back to the queue", true);
	evtimer_del(a->poll_ev);
	struct timeval tv = { 0, 100000 };
	event_add(a->tick_ev, &tv);
}

/* ---- simulated GPU health ---- */

/* The --simulate file's optional "health" list (GpuHealth messages, e.g.
 * {"index": 1, "status": "GPU_HEALTH_STATUS_UNHEALTHY", "message": "xid 79"})
 * sets what heartbeats report; GPUs not listed are HEALTHY. On any error
 * the previous figures stay. */
static void load_health(struct agent *a)
{
	char err[600];
	json_t *t = a->sim_path ? tree_load(a->sim_path, err, sizeof err) : NULL;
	if (!a->sim_path)
		return;
	if (!t) {
		alog("error", "msg=\"cannot read simulated health\" err=\"%s\"", err);
		return;
	}
	json_t *list = json_object_get(t, "health");
	int *status = calloc(a->gpu_count ? a->gpu_count : 1, sizeof *status);
	char **msg = calloc(a->gpu_count ? a->gpu_count : 1, sizeof *msg);
	bool bad = !status || !msg || (list && !json_is_array(list));
	size_t i;
	json_t *e;
	for (i = 0; i < a->gpu_count && status; i++)
		status[i] = GPUMATCH__V1__GPU_HEALTH_STATUS__GPU_HEALTH_STATUS_HEALTHY;
	json_array_foreach(list, i, e)
	{
		if (bad)
			break;
		char *text = json_dumps(e, JSON_COMPACT | JSON_ENCODE_ANY);
		ProtobufCMessage *m = NULL;
		if (!text || pbjson_decode(&gpumatch__v1__gpu_health__descriptor, text,
		                           strlen(text), &m, err, sizeof err)) {
			alog("error", "msg=\"bad simulated health\" entry=%zu err=\"%s\"", i,
			     text ? err : "out of memory");
			bad = true;
		} else {
			Gpumatch__V1__GpuHealth *g = (Gpumatch__V1__GpuHealth *)m;
			if (g->index >= a->gpu_count) {
				alog("error",
				     "msg=\"bad simulated health\" entry=%zu err=\"index %u: "
				     "the node has %u GPUs\"",
				     i, g->index, a->gpu_count);
				bad = true;
			} else {
				status[g->index] = (int)g->status;
				free(msg[g->index]);
				msg[g->index] =
				    g->message && *g->message ? strdup(g->message) : NULL;
			}
			protobuf_c_message_free_unpacked(m, NULL);
		}
		free(text);
	}
	json_decref(t);
	if (bad) {
		for (i = 0; msg && i < a->gpu_count; i++)
			free(msg[i]);
		free(msg);
		free(status);
		return;
	}
	for (i = 0; a->gpu_message && i < a->gpu_count; i++)
		free(a->gpu_message[i]);
	free(a->gpu_message);
	free(a->gpu_status);
	a->gpu_status = status;
	a->gpu_message = msg;
	int sick = 0;
	for (i = 0; i < a->gpu_count; i++)
		sick += status[i] != GPUMATCH__V1__GPU_HEALTH_STATUS__GPU_HEALTH_STATUS_HEALTHY;
	alog("info", "msg=\"simulated health loaded\" gpus=%u not_healthy=%d", a->gpu_count, sick);
}

static void sighup_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct agent *a = arg;
	load_health(a);
	/* tell the server now rather than at the next period */
	if (a->node_id && !a->hb_inflight && !a->shutting_down)
		schedule_heartbeat(a, 0);
}

/* ---- start-up ---- */

static int mkdirs(const char *path)
{
	char tmp[1000];
	snprintf(tmp, sizeof tmp, "%s", path);
	for (char *p = tmp + 1; *p; p++)
		if (*p == '/') {
			*p = '\0';
			if (mkdir(tmp, 0700) && errno != EEXIST)
				return -1;
			*p = '/';
		}
	return mkdir(tmp, 0700) && errno != EEXIST ? -1 : 0;
}

/* The outcome a job's recorder wrote ("code signal exited_at_us"). */
static bool read_exit(const char *path, int *code, int *sig, long long *at)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	bool ok = fscanf(f, "%d %d %lld", code, sig, at) == 3;
	fclose(f);
	return ok;
}

/* Leases a previous run left: a job that ended meanwhile is reported with
 * its own outcome; one still running (or started and never accounted for)
 * is killed now and reported as lost; reports already queued are resent
 * with their original seq. */
static void load_leases(struct agent *a)
{
	char path[1200];
	snprintf(path, sizeof path, "%s/leases.json", a->state_dir);
	json_t *arr = json_load_file(path, 0, NULL);
	size_t i;
	json_t *e;
	json_array_foreach(arr, i, e)
	{
		struct job *j = new_job(a, ju64(json_object_get(e, "leaseId")),
		                        ju64(json_object_get(e, "jobId")),
		                        ju64(json_object_get(e, "fencingToken")));
		if (!j)
			break;
		j->seq = ju64(json_object_get(e, "seq"));
		size_t k;
		json_t *q;
		json_array_foreach(json_object_get(e, "reports"), k, q)
		{
			if (j->nq >= MAX_REPORTS)
				break;
			struct report *r = &j->q[j->nq++];
			r->seq = ju64(json_object_get(q, "seq"));
			r->state = (int)json_integer_value(json_object_get(q, "state"));
			r->exit_code = (int)json_integer_value(json_object_get(q, "exitCode"));
			r->term_signal = (int)json_integer_value(json_object_get(q, "termSignal"));
			r->failure_reason =
			    (int)json_integer_value(json_object_get(q, "failureReason"));
			snprintf(r->digest, sizeof r->digest, "%s",
			         json_string_value(json_object_get(q, "imageDigest"))
			             ? json_string_value(json_object_get(q, "imageDigest"))
			             : "");
			r->at_us = (int64_t)json_integer_value(json_object_get(q, "atUs"));
			snprintf(r->message, sizeof r->message, "%s",
			         json_string_value(json_object_get(q, "message"))
			             ? json_string_value(json_object_get(q, "message"))
			             : "");
		}
		pid_t pid = (pid_t)json_integer_value(json_object_get(e, "pid"));
		bool was_running = json_is_true(json_object_get(e, "running"));
		j->start_us = (int64_t)json_integer_value(json_object_get(e, "startUs"));
		if (json_is_true(json_object_get(e, "offered"))) {
			/* offered, perhaps confirmed, never started: it ended where
			 * it began (the server bills nothing and queues the job again) */
			struct job *dup = NULL;
			for (struct job *x = j->next; x; x = x->next)
				if (x->lease_id == j->lease_id)
					dup = x;
			if (dup) { /* already known as a job: nothing to add */
				a->jobs = j->next;
				free_job(j);
				continue;
			}
			struct report *r = &j->q[j->nq++];
			memset(r, 0, sizeof *r);
			r->seq = ++j->seq;
			r->state = GPUMATCH__V1__LEASE_STATE__LEASE_STATE_EXPIRED;
			r->at_us = j->start_us;
			snprintf(r->message, sizeof r->message,
			         "the agent restarted before it started the job");
			alog("warn",
			     "msg=\"offer left by the previous agent run, never started\" "
			     "lease=%" PRIu64,
			     j->lease_id);
			continue;
		}
		j->container = json_is_true(json_object_get(e, "container"));
		snprintf(j->scratch, sizeof j->scratch, "%s",
		         json_string_value(json_object_get(e, "scratch"))
		             ? json_string_value(json_object_get(e, "scratch"))
		             : "");
		/* output not yet with the server is sent before the reports */
		if (!json_is_true(json_object_get(e, "logsDone"))) {
			ship_logs(j, (int64_t)ju64(json_object_get(e, "logOffset")));
			ls_finish(j->ls);
		}
		char exit_path[1200], pid_path[1200];
		snprintf(exit_path, sizeof exit_path, "%s/logs/lease-%" PRIu64 ".exit",
		         a->state_dir, j->lease_id);
		snprintf(pid_path, sizeof pid_path, "%s/logs/lease-%" PRIu64 ".pid", a->state_dir,
		         j->lease_id);
		if (was_running && pid <= 0) {
			/* the previous run died between the fork and writing the
			 * pid down: the job's recorder wrote it */
			FILE *pf = fopen(pid_path, "r");
			int p = 0;
			if (pf && fscanf(pf, "%d", &p) == 1 && p > 1)
				pid = (pid_t)p;
			if (pf)
				fclose(pf);
		}
		int x_code = 0, x_sig = 0;
		long long x_at = 0;
		bool ended = was_running && read_exit(exit_path, &x_code, &x_sig, &x_at);
		if (was_running && !ended && pid > 0) {
			/* still running, or ended just now: stop it, then look once
			 * more (its recorder may have written the outcome meanwhile) */
			kill(-pid, SIGKILL);
			ended = read_exit(exit_path, &x_code, &x_sig, &x_at);
		}
		if (ended && j->nq < MAX_REPORTS) {
			/* the job ended while the agent was away: its own outcome */
			was_running = false;
			if (pid > 0)
				kill(-pid, SIGKILL);
			struct report *r = &j->q[j->nq++];
			memset(r, 0, sizeof *r);
			r->seq = ++j->seq;
			r->state = !x_code && !x_sig
			               ? GPUMATCH__V1__LEASE_STATE__LEASE_STATE_SUCCEEDED
			               : GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED;
			r->exit_code = x_code;
			r->term_signal = x_sig;
			r->at_us = (int64_t)x_at;
			if (x_sig)
				snprintf(r->message, sizeof r->message,
				         "killed by signal %d (%s) while the agent was away", x_sig,
				         strsignal(x_sig));
			else
				snprintf(r->message, sizeof r->message, "exited %d", x_code);
			alog("info",
			     "msg=\"job ended while the agent was away\" lease=%" PRIu64
			     " exit_code=%d signal=%d",
			     j->lease_id, x_code, x_sig);
		}
		if (was_running) {
			alog("warn",
			     "msg=\"job lost with the previous agent run\" lease=%" PRIu64
			     " pid=%d",
			     j->lease_id, (int)pid);
			if (j->nq < MAX_REPORTS) {
				struct report *r = &j->q[j->nq++];
				memset(r, 0, sizeof *r);
				r->seq = ++j->seq;
				/* lost, not failed: the server queues the job again.
				 * It ran until now, or, when no process of it was
				 * ever made, not at all: it ended where it began. */
				r->state = GPUMATCH__V1__LEASE_STATE__LEASE_STATE_EXPIRED;
				r->at_us = pid <= 0 && j->start_us > 0
				               ? j->start_us
				               : cl_now_us() + a->clock_skew_us;
				snprintf(
				    r->message, sizeof r->message,
				    "the agent restarted while the job ran; its process was lost");
			}
		}
		if (j->nq || !ls_done(j->ls))
			alog("info", "msg=\"resending saved reports\" lease=%" PRIu64 " count=%d",
			     j->lease_id, j->nq);
		else {
			a->jobs = j->next; /* nothing left to say about it */
			free_job(j);
		}
	}
	json_decref(arr);
	save_leases(a);
}

/* Containers and scratch directories of leases this agent no longer
 * tracks (a previous run died before removing them): found by label and
 * name, removed. */
static void remove_orphans(struct agent *a)
{
	rt_remove_orphans(&a->rt);
	char dir[1200];
	snprintf(dir, sizeof dir, "%s/scratch", a->state_dir);
	DIR *d = opendir(dir);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		uint64_t id;
		if (sscanf(e->d_name, "lease-%" SCNu64, &id) != 1 || find_job(a, id))
			continue;
		char path[1500];
		snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
		rt_remove(&a->rt, 0, path);
	}
	if (d)
		closedir(d);
}

static int run_agent(struct ctx *c)
{
	static struct agent ag;
	struct agent *a = &ag;
	a->c = c;
	int rc;
	const char *v;
	/* the token: a file (--token-file, GPUMATCH_TOKEN_FILE, or systemd's
	 * LoadCredential=token) rather than argv or the environment, which
	 * other processes and every child can see */
	char credpath[1100] = "";
	const char *tf = opt_str(c, "token-file");
	if (!tf && (v = getenv("GPUMATCH_TOKEN_FILE")) && *v)
		tf = v;
	if (!tf && (v = getenv("CREDENTIALS_DIRECTORY")) && *v) {
		snprintf(credpath, sizeof credpath, "%s/token", v);
		if (!access(credpath, F_OK))
			tf = credpath;
	}
	if (tf && opt_has(c, "token"))
		return usage_error(c, "give --token or a token file, not both");
	if (tf) {
		char err[1400];
		if (jobenv_read_token_file(tf, c->token, sizeof c->token, err, sizeof err)) {
			fprintf(stderr, "gpumatch agent: %s\n", err);
			return EXIT_USAGE;
		}
	} else if (opt_has(c, "token")) {
		alog("warn", "msg=\"--token on the command line is visible to every local user; "
		             "use --token-file\"");
	}
	unsetenv("GPUMATCH_TOKEN");
	unsetenv("GPUMATCH_TOKEN_FILE");
	if (!*c->token)
		return usage_error(
		    c, "an operator token is required (--token-file, "
		       "GPUMATCH_TOKEN_FILE, --token, GPUMATCH_TOKEN or gpumatch login)");
	{
		char err[600];
		if (jobenv_pick_user(opt_str(c, "run-as"), opt_has(c, "allow-root-jobs"),
		                     &a->job_user, err, sizeof err))
			return usage_error(c, "%s", err);
	}
	a->grace_us = 10000000;
	if ((v = opt_str(c, "grace")) && (a->grace_us = parse_duration_us(v)) < 0)
		return usage_error(c, "--grace: expected a duration such as 10s, got \"%s\"", v);
	a->poll_ms = 20000;
	if ((v = opt_str(c, "poll"))) {
		int64_t us = parse_duration_us(v);
		if (us < 0 || us > 600000000)
			return usage_error(c, "--poll: expected a duration up to 10m, got \"%s\"",
			                   v);
		a->poll_ms = (uint32_t)(us / 1000);
	}
	a->hb_ms = 5000;
	if ((v = opt_str(c, "heartbeat"))) {
		int64_t us = parse_duration_us(v);
		if (us < 100000 || us > 600000000)
			return usage_error(c,
			                   "--heartbeat: expected a duration of 100ms..10m, got "
			                   "\"%s\"",
			                   v);
		a->hb_override_ms = (int)(us / 1000);
	}
	if ((v = opt_str(c, "state-dir")))
		snprintf(a->state_dir, sizeof a->state_dir, "%s", v);
	else if ((v = getenv("STATE_DIRECTORY")) && *v)
		snprintf(a->state_dir, sizeof a->state_dir, "%s", v);
	else if (geteuid() == 0)
		snprintf(a->state_dir, sizeof a->state_dir, "/var/lib/gpumatch-agent");
	else
		snprintf(a->state_dir, sizeof a->state_dir, "%s/.local/state/gpumatch-agent",
		         getenv("HOME") ? getenv("HOME") : ".");
	char logs[1200], scratch[1200];
	snprintf(logs, sizeof logs, "%s/logs", a->state_dir);
	snprintf(scratch, sizeof scratch, "%s/scratch", a->state_dir);
	if (mkdirs(a->state_dir) || mkdirs(logs) || mkdirs(scratch)) {
		fprintf(stderr, "gpumatch agent: cannot create state directory %s: %s\n",
		        a->state_dir, strerror(errno));
		return EXIT_USAGE;
	}
	if ((rc = rt_config_init(&a->rt, c, a->state_dir, opt_str(c, "simulate") != NULL)))
		return rc;
	a->reg = node_request(c, &rc);
	if (!a->reg)
		return rc;
	if (!json_object_get(a->reg, "region"))
		return usage_error(c,
		                   "--region is required (or \"region\" in the --simulate file)");
	json_t *gpus = json_object_get(a->reg, "gpus");
	a->gpu_count = (uint32_t)json_array_size(gpus);
	a->gpu_uuids = calloc(a->gpu_count ? a->gpu_count : 1, sizeof *a->gpu_uuids);
	for (uint32_t i = 0; i < a->gpu_count; i++) {
		const char *u = json_string_value(json_object_get(json_array_get(gpus, i), "uuid"));
		a->gpu_uuids[i] = strdup(u ? u : "");
	}
	a->gpu_status = calloc(a->gpu_count ? a->gpu_count : 1, sizeof *a->gpu_status);
	a->gpu_message = calloc(a->gpu_count ? a->gpu_count : 1, sizeof *a->gpu_message);
	for (uint32_t i = 0; i < a->gpu_count; i++)
		a->gpu_status[i] = GPUMATCH__V1__GPU_HEALTH_STATUS__GPU_HEALTH_STATUS_HEALTHY;
	a->sim_path = opt_str(c, "simulate");
	load_health(a);
	/* resume the identity a previous run saved, if it is this node's */
	char path[1200];
	snprintf(path, sizeof path, "%s/node.json", a->state_dir);
	json_t *saved = json_load_file(path, 0, NULL);
	if (saved) {
		const char *sn = json_string_value(json_object_get(saved, "name"));
		const char *nn = json_string_value(json_object_get(a->reg, "name"));
		if (sn && nn && !strcmp(sn, nn)) {
			a->node_id = ju64(json_object_get(saved, "nodeId"));
			json_object_set_new(a->reg, "nodeId", juint64(a->node_id));
			alog("info", "msg=\"resuming node identity\" node=%" PRIu64 " state_dir=%s",
			     a->node_id, a->state_dir);
		}
		json_decref(saved);
	}
	if ((v = opt_str(c, "node-id"))) {
		/* adopt a node registered before (e.g. with `gpumatch node register`) */
		char *end;
		unsigned long long id = strtoull(v, &end, 10);
		if (*end || !id || *v == '-')
			return usage_error(c, "--node-id: expected a positive integer, got \"%s\"",
			                   v);
		json_object_set_new(a->reg, "nodeId", juint64(id));
	}
	a->node_id = 0; /* until the server confirms it */
	signal(SIGPIPE, SIG_IGN);
	a->base = event_base_new();
	char err[300];
	a->ctl = a->base ? cl_conn_new(a->base, c->url, 10, err, sizeof err) : NULL;
	a->poll = a->ctl
	              ? cl_conn_new(a->base, c->url, (int)(a->poll_ms / 1000) + 15, err, sizeof err)
	              : NULL;
	a->logc = a->poll ? cl_conn_new(a->base, c->url, 30, err, sizeof err) : NULL;
	if (!a->logc) {
		fprintf(stderr, "gpumatch agent: %s\n",
		        a->base ? err : "cannot make an event loop");
		return EXIT_USAGE;
	}
	a->hb_ev = evtimer_new(a->base, heartbeat_cb, a);
	a->poll_ev = evtimer_new(a->base, poll_cb, a);
	a->reg_ev = evtimer_new(a->base, register_cb, a);
	a->tick_ev = event_new(a->base, -1, EV_PERSIST, tick_cb, a);
	a->sigchld_ev = evsignal_new(a->base, SIGCHLD, sigchld_cb, a);
	a->sigterm_ev = evsignal_new(a->base, SIGTERM, sigterm_cb, a);
	a->sigint_ev = evsignal_new(a->base, SIGINT, sigterm_cb, a);
	a->sighup_ev = evsignal_new(a->base, SIGHUP, sighup_cb, a);
	event_add(a->sighup_ev, NULL);
	event_add(a->sigchld_ev, NULL);
	event_add(a->sigterm_ev, NULL);
	event_add(a->sigint_ev, NULL);
	alog("info", "msg=\"agent starting\" url=%s name=%s gpus=%u state_dir=%s job_user=%s",
	     c->url, json_string_value(json_object_get(a->reg, "name")), a->gpu_count, a->state_dir,
	     a->job_user.name[0] ? a->job_user.name : "?");
	load_leases(a);
	remove_orphans(a);
	event_active(a->reg_ev, EV_TIMEOUT, 0);
	event_base_dispatch(a->base);
	alog("info", "msg=\"agent stopped\"");
	while (a->offers)
		offer_free(a->offers);
	while (a->jobs) {
		struct job *j = a->jobs;
		a->jobs = j->next;
		free_job(j);
	}
	event_free(a->hb_ev);
	event_free(a->poll_ev);
	event_free(a->reg_ev);
	event_free(a->tick_ev);
	event_free(a->sigchld_ev);
	event_free(a->sigterm_ev);
	event_free(a->sigint_ev);
	event_free(a->sighup_ev);
	cl_conn_free(a->ctl);
	cl_conn_free(a->poll);
	cl_conn_free(a->logc);
	ls_reap_all();
	event_base_free(a->base);
	for (uint32_t i = 0; i < a->gpu_count; i++) {
		free(a->gpu_uuids[i]);
		free(a->gpu_message[i]);
	}
	free(a->gpu_uuids);
	free(a->gpu_message);
	free(a->gpu_status);
	json_decref(a->reg);
	return a->exit_code;
}

static const struct optdef agent_opts[] = {
	{ "simulate", "FILE",
	  "simulated GPUs from a JSON/YAML file (examples/nodes/); its \"health\" list is "
	  "re-read on SIGHUP",
	  false },
	{ "probe", "PATH", "gpu-probe binary (default: gpu-probe on PATH)", false },
	{ "name", "NAME", "node name (default: the file's, else the host name)", false },
	{ "region", "REGION", "region, e.g. eu-west", false },
	{ "price", "AMOUNT", "asking price per GPU-hour, e.g. 1.50", false },
	{ "label", "KEY=VALUE", "node label", true },
	{ "claim", "PRECISION=TFLOPS", "throughput claimed per GPU (fp32, tf32, fp16, bf16, fp8)",
	  true },
	{ "address", "HOST:PORT", "rendezvous address for multi-node jobs", false },
	{ "node-id", "ID",
	  "take over this registered node (default: the saved one, else a new one)", false },
	{ "state-dir", "DIR",
	  "node identity, pending reports, job logs (default $STATE_DIRECTORY, "
	  "/var/lib/gpumatch-agent as root, else ~/.local/state/gpumatch-agent)",
	  false },
	{ "grace", "DUR", "SIGTERM-to-SIGKILL time when the server names none (default 10s)",
	  false },
	{ "poll", "DUR", "AcquireLease long-poll wait (default 20s)", false },
	{ "heartbeat", "DUR", "heartbeat period (default: what the server asks for)", false },
	{ "runtime", "podman|docker", "container engine for jobs with an image (default podman)",
	  false },
	{ "container-runtime-path", "PATH", "the engine's program (default: podman/docker on PATH)",
	  false },
	{ "oci-runtime", "NAME", "podman's OCI runtime (default runc)", false },
	{ "container-storage", "DIR", "podman storage (--root/--runroot) under DIR", false },
	{ "gpu-devices", "cdi|hook|none",
	  "how GPUs reach containers (default: none with --simulate, cdi when a CDI spec "
	  "exists, else hook)",
	  false },
	{ "memory-per-gpu", "SIZE", "default memory limit per GPU held (default 16g)", false },
	{ "max-memory", "SIZE", "cap on a job's memory limit (default none)", false },
	{ "pids", "N", "default process limit (default 4096)", false },
	{ "max-pids", "N", "cap on a job's process limit (default 65536)", false },
	{ "shm", "SIZE", "default /dev/shm size (default 256m)", false },
	{ "max-shm", "SIZE", "cap on a job's /dev/shm size (default 64g)", false },
	{ "no-bridge-network", NULL, "refuse jobs that ask for network \"bridge\"", false },
	{ "pull-timeout", "DUR", "longest image pull (default 10m)", false },
	{ "allow-mount", "PATH", "host path prefix jobs may mount as volumes", true },
	{ "registry-allow", "REGISTRY[/PATH]",
	  "pull only from these registries (or repository prefixes)", true },
	{ "registry-deny", "REGISTRY[/PATH]", "never pull from these (\"*\" = any)", true },
	{ "token-file", "FILE",
	  "read the operator token from FILE, mode 0600 (GPUMATCH_TOKEN_FILE; systemd: "
	  "LoadCredential=token)",
	  false },
	{ "run-as", "USER",
	  "user that jobs without an image run as (default gpumatch-job, else nobody; the agent "
	  "must be root to switch)",
	  false },
	{ "allow-root-jobs", NULL, "let jobs run as root (with --run-as root, or no such user)",
	  false },
	{ 0 },
};

const struct cmd cmds_agent[] = {
	{ "agent", "",
	  "run the node agent in the foreground: register, heartbeat, take leases, run jobs",
	  agent_opts, 0, 0, run_agent, false },
	{ 0 },
};
