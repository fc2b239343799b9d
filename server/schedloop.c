/* schedloop.c — the scheduler leader: holds the Redis leader lock with a
 * fencing token, keeps the scheduling library's cluster in memory (loaded
 * from Postgres when leadership is gained, then maintained incrementally),
 * runs cycles on events and on a timer, writes placements fenced, expires
 * lost nodes and unclaimed leases. Every replica also drains the outbox to
 * Redis; the leader reconciles Redis's queue with Postgres. */
#include <errno.h>
#include <stdint.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "convert.h"
#include "ledger.h"
#include "log.h"
#include "sched.h"
#include "service.h"
#include "speeds.h"
#include "strbuf.h"

#define LEADER_TTL_MS  6000
#define LEADER_TICK_MS 1000
#define JANITOR_MS     500
#define OUTBOX_MS      200
#define OUTBOX_BATCH   100
#define OUTBOX_KICK_US 10000

static const double cycle_le_ms[] = { 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000 };
#define NCYCLE_BUCKETS (sizeof cycle_le_ms / sizeof cycle_le_ms[0])

static struct {
	struct app *a;
	char instance[128];
	bool leader; /* holds the lock */
	bool loaded; /* cluster reflects Postgres */
	bool loading;
	uint64_t fence;
	uint64_t generation; /* bumps on every gain/loss: stale callbacks drop out */
	struct sched_cluster *c;
	struct event *leader_ev, *cycle_ev, *kick_ev, *janitor_ev, *outbox_ev, *outbox_kick_ev,
	    *reconcile_ev, *stream_ev;
	bool placing;                             /* a placement write is in flight */
	int64_t last_cycle_end_us, last_cycle_us; /* adaptive spacing */
	int64_t last_giveup_pass_us;              /* last cycle run only to give up jobs */
	struct event *spacing_ev;
	bool rerun; /* cycle asked for while placing */
	bool outbox_busy;
	bool janitor_busy;
	/* the server's clock of attention (monotonic): since when this leader
	 * has been able to hear heartbeats without a gap; no node is declared
	 * lost, no offer withdrawn, before a full timeout of it */
	int64_t hear_since_mono, janitor_tick_mono, janitor_tick_wall;
	uint64_t pg_stalls_seen;
	uint64_t attention_resets;
	bool stopped;
	int inflight; /* our queries and Redis calls in flight */
	char stream_last[64];
	bool stream_busy;
	/* metrics */
	uint64_t cycles, placements, preemptions, unschedulable, lost_nodes, expired_leases;
	uint64_t cycle_bucket[NCYCLE_BUCKETS + 1];
	double cycle_sum_s;
	uint64_t outbox_moved;
	struct event *stats_ev;
	bool stats_busy;
	int64_t stats_started_mono; /* the running gauge query's start, µs */
	int64_t stats_next_mono;    /* no gauge query before this, µs */
	struct strbuf stats;        /* last fleet/queue gauges, Prometheus text */
} L;

static void lose_leadership(const char *why);
static void begin_load(void);
static void stream_start_cb(redisReply *reply, const char *err, void *arg);
static void explain_waits_run(void);
static void explain_waits_clear(void);

/* ---- helpers -------------------------------------------------------------------------- */

static int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* From now on the server can hear again: every node gets a fresh full
 * timeout, every offer a fresh window. */
static void attention_reset(const char *why)
{
	int64_t m = mono_us();
	if (L.hear_since_mono && m - L.hear_since_mono > 1000000) {
		L.attention_resets++;
		log_info(
		    "heartbeat attention restarts: no node is declared lost for a full timeout "
		    "reason=\"%s\"",
		    why);
	}
	L.hear_since_mono = m;
}

/* How far behind (µs) this server is in writing what nodes told it:
 * heartbeats, confirmations and reports still waiting in its own batches.
 * Deadlines measured against what Postgres holds move back by as much, so
 * an overloaded server never takes its own backlog for a silent node. */
static int64_t backlog_us(void)
{
	int64_t since = nodes_backlog_since_mono(L.a);
	int64_t m = mono_us();
	return since && since < m ? m - since : 0;
}

/* True when the server has been able to hear for at least ms. */
static bool attention_for(int ms)
{
	return L.hear_since_mono && mono_us() - L.hear_since_mono >= (int64_t)ms * 1000;
}

/* Every async step carries the generation it was started in. */
struct step {
	uint64_t gen;
	void *data;
	size_t n;
};

static struct step *step_new(void *data, size_t n)
{
	struct step *s = malloc(sizeof *s);
	if (!s) {
		log_error("out of memory");
		abort();
	}
	s->gen = L.generation;
	s->data = data;
	s->n = n;
	L.inflight++;
	return s;
}

static bool step_current(struct step *s)
{
	L.inflight--;
	return s->gen == L.generation && L.leader && !L.stopped;
}

static int exec_q(const char *sql, int n, const char *const *params, pg_cb cb, struct step *s)
{
	if (pg_exec(L.a->pg, NULL, sql, n, params, cb, s)) {
		L.inflight--;
		free(s);
		return -1;
	}
	return 0;
}

/* Ends a step: true when its result should be used (still the same
 * leadership, and the query worked). */
static bool step_ok(void *arg, enum pg_status st)
{
	struct step *s = arg;
	bool cur = step_current(s);
	free(s);
	return cur && st == PG_OK;
}

/* The same for the steps of loading the leader's state: a failure there
 * gives leadership up (another replica, or this one later, starts over). */
static bool load_step_ok(void *arg, enum pg_status st, const char *err)
{
	struct step *s = arg;
	bool cur = step_current(s);
	free(s);
	if (cur && st != PG_OK)
		lose_leadership(err);
	return cur && st == PG_OK;
}

bool schedloop_is_leader(struct app *a)
{
	(void)a;
	return L.leader && L.loaded;
}

/* ---- applying Postgres rows to the cluster -------------------------------------------- */

int schedloop_add_job_row(struct sched_cluster *c, const PGresult *r, int row, int c_id,
                          int c_tenant, int c_spec, int c_submit)
{
	size_t len;
	uint8_t *raw = col_bytea(r, row, c_spec, &len);
	if (!raw)
		return -1;
	Gpumatch__V1__JobSpec *spec = gpumatch__v1__job_spec__unpack(NULL, len, raw);
	free(raw);
	if (!spec)
		return -1;
	struct conv_strings *st = malloc(sizeof *st);
	struct sched_job_spec js;
	char f[256], m[256];
	int rc = -1;
	if (st && !conv_job_spec(spec, col_u64(r, row, c_id), col_u64(r, row, c_tenant),
	                         col_i64(r, row, c_submit), &js, st, f, sizeof f, m, sizeof m)) {
		speeds_apply(spec->job_type, &js, st);
		struct sched_error se;
		rc = sched_job_add(c, &js, &se);
		if (rc && rc != -EEXIST)
			log_warn("job not schedulable job=%" PRIu64 " field=%s err=\"%s\"", js.id,
			         se.field, se.message);
	}
	free(st);
	protobuf_c_message_free_unpacked(&spec->base, NULL);
	return rc;
}

/* Node row: id, state, verification_status, price_micros, region, facts_pb,
 * unhealthy_gpus, reliability score ppm (SCHEDLOOP_NODE_COLS). A READY node
 * with an unhealthy GPU is given to the scheduler as DRAINING: no new work,
 * running work goes on. The reliability is read with the rest of the row:
 * the scheduler's figure is as of the node's last (re)load (leadership, a
 * state, facts or health change). */
void schedloop_upsert_node_row(struct sched_cluster *c, const PGresult *r, int row)
{
	uint64_t id = col_u64(r, row, 0);
	int state = (int)col_i64(r, row, 1);
	if (state == GPUMATCH__V1__NODE_STATE__NODE_STATE_DISABLED ||
	    state == GPUMATCH__V1__NODE_STATE__NODE_STATE_REGISTERED) {
		/* not schedulable; keep it only while work still runs there */
		if (sched_node_set_state(c, id, SCHED_NODE_CORDONED) == 0 &&
		    state == GPUMATCH__V1__NODE_STATE__NODE_STATE_DISABLED)
			sched_node_remove(c, id);
		return;
	}
	size_t len;
	uint8_t *raw = col_bytea(r, row, 5, &len);
	Gpumatch__V1__Node *n = raw ? gpumatch__v1__node__unpack(NULL, len, raw) : NULL;
	free(raw);
	if (!n) {
		log_error("stored node facts unreadable node=%" PRIu64, id);
		return;
	}
	Gpumatch__V1__Verification ver = GPUMATCH__V1__VERIFICATION__INIT;
	ver.status = (Gpumatch__V1__VerificationStatus)col_i64(r, row, 2);
	n->id = id;
	n->state = (Gpumatch__V1__NodeState)state;
	if (state == GPUMATCH__V1__NODE_STATE__NODE_STATE_READY && col_u64(r, row, 6))
		n->state = GPUMATCH__V1__NODE_STATE__NODE_STATE_DRAINING;
	n->price_per_gpu_hour_micros = col_i64(r, row, 3);
	char *region_saved = n->region;
	n->region = PQgetvalue(r, row, 4);
	Gpumatch__V1__Verification *ver_saved = n->verification;
	n->verification = &ver;
	Gpumatch__V1__Reliability rel = GPUMATCH__V1__RELIABILITY__INIT;
	rel.score_ppm = (uint32_t)col_u64(r, row, 7);
	Gpumatch__V1__Reliability *rel_saved = n->reliability;
	n->reliability = &rel;
	struct sched_gpu_spec *gpus = calloc(n->n_gpus ? n->n_gpus : 1, sizeof *gpus);
	struct conv_strings *st = malloc(sizeof *st);
	struct sched_node_spec ns;
	char f[256], m[256];
	if (gpus && st && !conv_node(n, &ns, gpus, st, f, sizeof f, m, sizeof m)) {
		struct sched_error se;
		int rc = sched_node_upsert(c, &ns, &se);
		if (rc)
			log_warn("node not schedulable node=%" PRIu64 " rc=%d field=%s err=\"%s\"",
			         id, rc, se.field, se.message);
	}
	free(gpus);
	free(st);
	n->region = region_saved;
	n->verification = ver_saved;
	n->reliability = rel_saved;
	protobuf_c_message_free_unpacked(&n->base, NULL);
}

#define NODE_COLS SCHEDLOOP_NODE_COLS

/* ---- loading on leadership -------------------------------------------------------------- */

static void load_queued_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                           void *arg)
{
	(void)ss;
	if (!load_step_ok(arg, st, err))
		return;
	for (int i = 0; i < PQntuples(res); i++)
		schedloop_add_job_row(L.c, res, i, 0, 1, 2, 3);
	L.loading = false;
	L.loaded = true;
	attention_reset("leadership gained");
	struct sched_stats ss2;
	sched_get_stats(L.c, &ss2);
	log_info("scheduler state loaded nodes=%u pending=%u running=%u fence=%" PRIu64, ss2.nodes,
	         ss2.jobs_pending, ss2.jobs_running, L.fence);
	schedloop_kick(L.a);
}

static void load_leases_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                           void *arg)
{
	(void)ss;
	if (!load_step_ok(arg, st, err))
		return;
	/* rows: job_id, node_id, gpu_mask, assigned_at_us, tenant, spec, submitted, gang_size */
	int rows = PQntuples(res);
	for (int i = 0; i < rows;) {
		uint64_t job = col_u64(res, i, 0);
		struct sched_placement pl[SCHED_MAX_GANG_NODES];
		uint32_t n = 0;
		int j = i;
		for (; j < rows && col_u64(res, j, 0) == job; j++)
			if (n < SCHED_MAX_GANG_NODES)
				pl[n++] = (struct sched_placement){ col_u64(res, j, 1),
					                            col_u64(res, j, 2) };
		if (schedloop_add_job_row(L.c, res, i, 0, 4, 5, 6) == 0) {
			struct sched_error se;
			int rc = sched_lease_start(L.c, job, pl, n, col_i64(res, i, 3), &se);
			if (rc) {
				log_warn("running job not restored job=%" PRIu64 " err=\"%s %s\"",
				         job, se.field, se.message);
				sched_job_cancel(L.c, job, now_us());
			}
		}
		i = j;
	}
	struct step *q = step_new(NULL, 0);
	exec_q(
	    "SELECT id, tenant_id, spec_pb, submitted_at_us FROM jobs WHERE state = 1 ORDER BY id",
	    0, NULL, load_queued_cb, q);
}

static void load_nodes_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                          void *arg)
{
	(void)ss;
	if (!load_step_ok(arg, st, err))
		return;
	for (int i = 0; i < PQntuples(res); i++)
		schedloop_upsert_node_row(L.c, res, i);
	struct step *q = step_new(NULL, 0);
	exec_q("SELECT l.job_id, l.node_id, l.gpu_mask, l.assigned_at_us, j.tenant_id, j.spec_pb,"
	       " j.submitted_at_us, l.gang_size FROM leases l JOIN jobs j ON j.id = l.job_id"
	       " WHERE l.state BETWEEN 1 AND 4 ORDER BY l.job_id, l.gang_index",
	       0, NULL, load_leases_cb, q);
}

static void load_tenants_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                            void *arg)
{
	(void)ss;
	if (!load_step_ok(arg, st, err))
		return;
	/* rows: id, weight, decayed GPU-seconds as of $1 (see load_policy_cb) */
	int64_t at = col_i64(res, 0, 3);
	int restored = 0;
	for (int i = 0; i < PQntuples(res); i++) {
		uint64_t id = col_u64(res, i, 0);
		sched_tenant_set_shares(L.c, id, (uint32_t)col_i64(res, i, 1));
		double usage = strtod(PQgetvalue(res, i, 2), NULL);
		if (usage > 0 && sched_tenant_set_usage(L.c, id, usage, at) == 0)
			restored++;
	}
	log_info("fair-share usage restored tenants=%d of=%d", restored, PQntuples(res));
	struct step *q = step_new(NULL, 0);
	exec_q("SELECT " NODE_COLS " FROM nodes WHERE state <> 6", 0, NULL, load_nodes_cb, q);
}

static void apply_policy_row(const PGresult *res)
{
	struct sched_policy p;
	sched_policy_recommended(&p);
	p.allow_unverified = L.a->cfg.allow_unverified;
	if (res && PQntuples(res) == 1) {
		size_t len;
		uint8_t *raw = col_bytea(res, 0, 0, &len);
		Gpumatch__V1__Policy *m = raw ? gpumatch__v1__policy__unpack(NULL, len, raw) : NULL;
		free(raw);
		if (m) {
			conv_policy_in(m, &p);
			ledger_set_fee_ppm(m->platform_fee_ppm);
			protobuf_c_message_free_unpacked(&m->base, NULL);
		}
	}
	struct sched_error se;
	if (sched_set_policy(L.c, &p, &se))
		log_error("stored policy rejected, keeping the current one field=%s err=\"%s\"",
		          se.field, se.message);
}

static void load_policy_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                           void *arg)
{
	(void)ss;
	if (!load_step_ok(arg, st, err))
		return;
	apply_policy_row(res);
	/* Fair share survives a change of leader: each tenant's usage is the
	 * integral of its leases' GPUs, decayed with the policy's half-life:
	 * H/ln2 * (2^-(now-end)/H - 2^-(now-start)/H) per lease, live leases
	 * counted up to now. Their GPUs keep accruing once restored. */
	struct numbuf now, half;
	double h_s = (double)sched_get_policy(L.c)->fairshare_half_life_us / 1e6;
	const char *params[] = { fmt_i64(&now, now_us()), fmt_i64(&half, (int64_t)h_s) };
	struct step *q = step_new(NULL, 0);
	exec_q(
	    "SELECT t.id, t.fair_share_weight, coalesce(("
	    "   SELECT sum(bit_count(l.gpu_mask::bit(64))::float8 * $2::float8 / ln(2) *"
	    "     (power(2::float8, -($1::bigint - CASE WHEN l.ended_at_us > 0 THEN l.ended_at_us"
	    "        ELSE $1::bigint END)::float8 / 1e6 / $2::float8)"
	    "      - power(2::float8, -($1::bigint - l.started_at_us)::float8 / 1e6 / $2::float8)))"
	    "     FROM leases l JOIN jobs j ON j.id = l.job_id"
	    "    WHERE j.tenant_id = t.id AND l.started_at_us > 0"
	    "      AND (l.ended_at_us = 0 OR l.ended_at_us > $1::bigint - 20 * $2::bigint * "
	    "1000000)"
	    " ), 0), $1::bigint FROM tenants t",
	    2, params, load_tenants_cb, q);
}

static void load_speeds_done(void *arg, bool ok)
{
	(void)ok; /* without them, jobs are scored as if they declared none */
	if ((uint64_t)(uintptr_t)arg != (uint64_t)L.generation || !L.leader || L.stopped)
		return;
	struct step *q = step_new(NULL, 0);
	exec_q("SELECT policy_pb FROM policies ORDER BY version DESC LIMIT 1", 0, NULL,
	       load_policy_cb, q);
}

static void begin_load(void)
{
	sched_cluster_free(L.c);
	L.c = sched_cluster_new(NULL);
	if (!L.c) {
		log_error("out of memory");
		abort();
	}
	L.loading = true;
	L.loaded = false;
	/* learned profiles first: the queued jobs loaded below use them */
	speeds_reload(L.a, load_speeds_done, (void *)(uintptr_t)L.generation);
}

/* ---- leadership ----------------------------------------------------------------------------- */

static void lose_leadership(const char *why)
{
	if (!L.leader)
		return;
	log_warn("scheduler leadership lost reason=\"%s\"", why ? why : "");
	L.leader = false;
	L.loaded = false;
	L.loading = false;
	explain_waits_clear();
	L.generation++;
	sched_cluster_free(L.c);
	L.c = NULL;
}

static void fence_taken_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                           void *arg)
{
	(void)ss;
	if (!load_step_ok(arg, st, err))
		return;
	L.fence = col_u64(res, 0, 0);
	log_info("scheduler leadership gained instance=%s fence=%" PRIu64, L.instance, L.fence);
	L.stream_last[0] = '\0';
	struct step *q = step_new(NULL, 0);
	const char *argv[] = { "XREVRANGE", RK_EVENTS, "+", "-", "COUNT", "1" };
	if (rds_cmd(L.a->rds, stream_start_cb, q, 6, argv, NULL)) {
		L.inflight--;
		free(q);
		lose_leadership("redis unavailable");
	}
}

static void leader_reply_cb(redisReply *reply, const char *err, void *arg)
{
	struct step *s = arg;
	L.inflight--;
	bool same = s->gen == L.generation;
	free(s);
	if (!same || L.stopped)
		return;
	if (!reply) {
		lose_leadership(err);
		return;
	}
	if (!L.leader) {
		if (reply->type == REDIS_REPLY_INTEGER) {
			L.leader = true;
			L.fence = 0;
			L.generation++;
			/* the token itself comes from Postgres: above every token it has
			 * seen, whatever Redis remembers */
			struct numbuf rf;
			const char *params[] = { fmt_i64(&rf, reply->integer) };
			struct step *q = step_new(NULL, 0);
			if (exec_q("SELECT gm_take_fence($1::bigint)", 1, params, fence_taken_cb,
			           q))
				lose_leadership("postgres unavailable");
		}
		return;
	}
	if (reply->type != REDIS_REPLY_INTEGER || reply->integer != 1)
		lose_leadership("lock renewal refused");
}

static void leader_tick_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	if (L.stopped || !rds_ready(L.a->rds))
		return;
	char ttl[16];
	snprintf(ttl, sizeof ttl, "%d", LEADER_TTL_MS);
	const char *argv[] = { RK_LEADER, RK_FENCE, L.instance, ttl };
	struct step *s = step_new(NULL, 0);
	int rc = L.leader ? rds_script(L.a->rds, SCRIPT_LEADER_RENEW, leader_reply_cb, s, 1, 3,
	                               (const char *[]){ RK_LEADER, L.instance, ttl }, NULL)
	                  : rds_script(L.a->rds, SCRIPT_LEADER_ACQUIRE, leader_reply_cb, s, 2, 4,
	                               argv, NULL);
	if (rc) {
		L.inflight--;
		free(s);
	}
}

/* ---- the cycle ------------------------------------------------------------------------------- */

struct place_batch {
	uint64_t *jobs; /* one per element */
	uint64_t *nodes;
	size_t n;
};

static void place_done_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                          void *arg)
{
	struct step *s = arg;
	struct place_batch *pb = s->data;
	bool cur = step_current(s);
	L.placing = false;
	if (cur) {
		int64_t now = now_us();
		if (st != PG_OK) {
			/* not written: the jobs go back to pending */
			for (size_t i = 0; i < pb->n; i++)
				if (i == 0 || pb->jobs[i] != pb->jobs[i - 1])
					sched_lease_end(L.c, pb->jobs[i], now, true);
			if (!strcmp(ss, "GM001"))
				lose_leadership("fencing token refused");
			else
				log_warn("placements not written, retrying err=\"%s\"", err);
		} else {
			for (int r = 0; r < PQntuples(res); r++) {
				size_t i = (size_t)col_i64(res, r, 0) - 1;
				if (i >= pb->n)
					continue;
				if (PQgetisnull(res, r, 1)) {
					/* cancelled meanwhile */
					sched_job_cancel(L.c, pb->jobs[i], now);
				} else {
					L.placements++;
					nodes_wake(pb->nodes[i]);
				}
			}
			outbox_kick(L.a);
		}
	}
	free(pb->jobs);
	free(pb->nodes);
	free(pb);
	free(s);
	if (cur && L.rerun) {
		L.rerun = false;
		schedloop_kick(L.a);
	}
}

static void simple_done_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                           void *arg)
{
	struct step *s = arg;
	(void)res;
	(void)ss;
	L.inflight--;
	free(s);
	if (st != PG_OK)
		log_warn("scheduler write failed err=\"%s\"", err);
}

static void write_preempt(const struct sched_action *a)
{
	struct numbuf j, d, f, fence;
	char reason[64];
	snprintf(reason, sizeof reason, "preempted for job %" PRIu64, a->for_job_id);
	const char *params[] = { fmt_u64(&j, a->job_id), fmt_i64(&d, a->deadline_us), reason,
		                 fmt_u64(&f, a->for_job_id), fmt_u64(&fence, L.fence) };
	(void)params[3];
	struct step *s = step_new(NULL, 0);
	exec_q("WITH f AS (SELECT gm_check_fence($5::bigint))"
	       " UPDATE leases SET state = 4, stop_deadline_us = $2::bigint, stop_kind = 2,"
	       " stop_reason = $3 FROM f WHERE job_id = $1::bigint AND state BETWEEN 1 AND 3"
	       " AND $4::bigint > 0",
	       5, params, simple_done_cb, s);
}

static void write_unschedulable(const struct sched_action *a)
{
	struct numbuf j, now;
	char msg[256];
	snprintf(msg, sizeof msg, "no node of the fleet can ever host it: %s",
	         sched_reason_text(a->reason));
	const char *params[] = { fmt_u64(&j, a->job_id), fmt_i64(&now, now_us()), msg };
	struct step *s = step_new(NULL, 0);
	exec_q("WITH u AS (UPDATE jobs SET state = 5, failure_reason = 6, failure_message = $3,"
	       " ended_at_us = $2::bigint, updated_at_us = $2::bigint"
	       " WHERE id = $1::bigint AND state = 1 RETURNING id)"
	       " INSERT INTO outbox (job_id, kind, created_at_us)"
	       " SELECT id, 'dequeue', $2::bigint FROM u",
	       3, params, simple_done_cb, s);
}

/* With no GPU free and nothing to preempt, cycles that can only give up
 * infeasible jobs run this far apart. */
#define GIVEUP_PASS_US 1000000

static void observe_cycle(int64_t us)
{
	double ms = (double)us / 1000.0;
	L.cycle_sum_s += ms / 1000.0;
	size_t i = 0;
	while (i < NCYCLE_BUCKETS && ms > cycle_le_ms[i])
		i++;
	L.cycle_bucket[i]++;
}

/* A cycle in us microseconds, unless one is already due. */
static void cycle_later(int64_t us)
{
	if (!evtimer_pending(L.spacing_ev, NULL)) {
		struct timeval tv = { (time_t)(us / 1000000), (suseconds_t)(us % 1000000) };
		evtimer_add(L.spacing_ev, &tv);
	}
}

static void run_cycle(void)
{
	if (!L.leader || !L.loaded || L.stopped)
		return;
	if (L.placing) {
		L.rerun = true;
		return;
	}
	int64_t t0 = now_us();
	/* Cycles at least one cycle-time apart: with a long queue, scheduling
	 * takes at most about half of the loop and requests keep flowing. */
	int64_t gap = L.last_cycle_end_us + L.last_cycle_us - t0;
	if (gap > 0) {
		cycle_later(gap);
		return;
	}
	/* Nothing can be placed without a free GPU unless preemption (of lower
	 * classes, or for shorter work) may make one, which needs a running
	 * job; lease ends and node changes kick a new cycle. Then a cycle can
	 * only give up infeasible jobs, which may wait for the next
	 * once-a-second pass: a long queue on a full fleet is not sorted again
	 * for every submit. */
	const struct sched_policy *pol = sched_get_policy(L.c);
	struct sched_stats st;
	sched_get_stats(L.c, &st);
	if (!st.gpus_free &&
	    !((pol->preemption || pol->preempt_shorter_factor > 0) && st.jobs_running)) {
		if (!pol->infeasible_timeout_us)
			return;
		int64_t wait = L.last_giveup_pass_us + GIVEUP_PASS_US - t0;
		if (wait > 0) {
			cycle_later(wait);
			return;
		}
		L.last_giveup_pass_us = t0;
	}
	struct sched_actions acts = { 0 };
	int rc = sched_cycle(L.c, t0, &acts, NULL);
	L.last_cycle_end_us = now_us();
	L.last_cycle_us = L.last_cycle_end_us - t0;
	observe_cycle(L.last_cycle_us);
	L.cycles++;
	if (rc) {
		log_error("scheduling cycle failed rc=%d", rc);
		sched_actions_free(L.c, &acts);
		return;
	}
	size_t nstart = 0;
	for (size_t i = 0; i < acts.len; i++)
		nstart += acts.items[i].kind == SCHED_ACT_START;
	struct place_batch *pb = NULL;
	struct strbuf sj = { 0 }, sn = { 0 }, sm = { 0 }, sg = { 0 }, ss = { 0 }, sd = { 0 };
	if (nstart) {
		pb = calloc(1, sizeof *pb);
		if (!pb || !(pb->jobs = calloc(nstart, 8)) || !(pb->nodes = calloc(nstart, 8))) {
			log_error("out of memory");
			abort();
		}
		sb_puts(&sj, "{");
		sb_puts(&sn, "{");
		sb_puts(&sm, "{");
		sb_puts(&sg, "{");
		sb_puts(&ss, "{");
		sb_puts(&sd, "{");
	}
	for (size_t i = 0; i < acts.len; i++) {
		const struct sched_action *a = &acts.items[i];
		if (a->kind == SCHED_ACT_START) {
			const char *sep = pb->n ? "," : "";
			sb_printf(&sj, "%s%" PRIu64, sep, a->job_id);
			sb_printf(&sn, "%s%" PRIu64, sep, a->node_id);
			sb_printf(&sm, "%s%" PRId64, sep, (int64_t)a->gpu_mask);
			sb_printf(&sg, "%s%u", sep, a->gang_index);
			sb_printf(&ss, "%s%u", sep, a->gang_size);
			sb_printf(&sd, "%s%" PRId64, sep, a->deadline_us);
			pb->jobs[pb->n] = a->job_id;
			pb->nodes[pb->n] = a->node_id;
			pb->n++;
		} else if (a->kind == SCHED_ACT_PREEMPT) {
			L.preemptions++;
			write_preempt(a);
		} else if (a->kind == SCHED_ACT_UNSCHEDULABLE) {
			L.unschedulable++;
			write_unschedulable(a);
		}
	}
	sched_actions_free(L.c, &acts);
	if (!pb)
		return;
	sb_puts(&sj, "}");
	sb_puts(&sn, "}");
	sb_puts(&sm, "}");
	sb_puts(&sg, "}");
	sb_puts(&ss, "}");
	sb_puts(&sd, "}");
	if (sj.oom || sn.oom || sm.oom || sg.oom || ss.oom || sd.oom) {
		log_error("out of memory");
		abort();
	}
	struct numbuf fence, now, fee;
	const char *params[] = { fmt_u64(&fence, L.fence),
		                 sj.s,
		                 sn.s,
		                 sm.s,
		                 sg.s,
		                 ss.s,
		                 sd.s,
		                 fmt_i64(&now, t0),
		                 fmt_u64(&fee, ledger_fee_ppm()) };
	struct step *s = step_new(pb, pb->n);
	L.placing = true;
	/* gm_place also takes each lease's ledger hold, locking in the fee */
	if (exec_q("SELECT idx, lease_id FROM gm_place($1::bigint, $2::bigint[], $3::bigint[],"
	           " $4::bigint[], $5::integer[], $6::integer[], $7::bigint[], $8::bigint,"
	           " $9::integer)",
	           9, params, place_done_cb, s)) {
		L.placing = false;
		for (size_t i = 0; i < pb->n; i++)
			sched_lease_end(L.c, pb->jobs[i], t0, true);
		free(pb->jobs);
		free(pb->nodes);
		free(pb);
	}
	sb_free(&sj);
	sb_free(&sn);
	sb_free(&sm);
	sb_free(&sg);
	sb_free(&ss);
	sb_free(&sd);
}

static void cycle_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	run_cycle();
}

void schedloop_kick(struct app *a)
{
	(void)a;
	/* coalesced: many events before the loop turns make one cycle */
	if (L.kick_ev && !event_pending(L.kick_ev, EV_TIMEOUT, NULL))
		event_active(L.kick_ev, EV_TIMEOUT, 0);
}

/* ---- notifications from the handlers --------------------------------------------------------- */

void schedloop_job_queued(struct app *a, const struct sched_job_spec *js)
{
	/* other replicas learn of it from the outbox's enqueue event */
	if (!L.leader || !L.loaded)
		return;
	struct sched_error se;
	sched_job_add(L.c, js, &se);
	schedloop_kick(a);
}

static void publish(const char *kind, uint64_t id, int flag);

static void apply_job_cancelled(uint64_t job_id)
{
	if (L.leader && L.loaded && sched_job_state(L.c, job_id) == SCHED_JOB_PENDING)
		sched_job_cancel(L.c, job_id, now_us());
}

void schedloop_job_cancelled(struct app *a, uint64_t job_id)
{
	(void)a;
	publish("cancelled", job_id, 0);
	apply_job_cancelled(job_id);
}

/* Re-reads a requeued job so that it goes back to pending. */
static void requeue_cb(enum pg_status st, PGresult *res, const char *ss, const char *err, void *arg)
{
	(void)ss;
	(void)err;
	if (!step_ok(arg, st))
		return;
	for (int i = 0; i < PQntuples(res); i++)
		schedloop_add_job_row(L.c, res, i, 0, 1, 2, 3);
	schedloop_kick(L.a);
}

static void apply_job_ended(uint64_t job_id, bool requeued)
{
	struct app *a = L.a;
	if (!L.leader || !L.loaded)
		return;
	int64_t now = now_us();
	int state = sched_job_state(L.c, job_id);
	if (state == SCHED_JOB_RUNNING || state == SCHED_JOB_PREEMPTING)
		sched_lease_end(L.c, job_id, now, requeued);
	else if (state == -ENOENT && requeued) {
		struct numbuf j;
		const char *params[] = { fmt_u64(&j, job_id) };
		struct step *s = step_new(NULL, 0);
		exec_q("SELECT id, tenant_id, spec_pb, submitted_at_us FROM jobs"
		       " WHERE id = $1::bigint AND state = 1",
		       1, params, requeue_cb, s);
		return;
	}
	schedloop_kick(a);
}

void schedloop_job_ended(struct app *a, uint64_t job_id, bool requeued)
{
	(void)a;
	publish("ended", job_id, requeued);
	apply_job_ended(job_id, requeued);
}

static void node_row_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                        void *arg)
{
	(void)ss;
	(void)err;
	if (!step_ok(arg, st))
		return;
	for (int i = 0; i < PQntuples(res); i++)
		schedloop_upsert_node_row(L.c, res, i);
	schedloop_kick(L.a);
}

static void apply_node_changed(uint64_t node_id)
{
	if (!L.leader || !L.loaded)
		return;
	struct numbuf n;
	const char *params[] = { fmt_u64(&n, node_id) };
	struct step *s = step_new(NULL, 0);
	exec_q("SELECT " NODE_COLS " FROM nodes WHERE id = $1::bigint", 1, params, node_row_cb, s);
}

static void tenant_row_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                          void *arg)
{
	(void)ss;
	(void)err;
	if (!step_ok(arg, st))
		return;
	for (int i = 0; i < PQntuples(res); i++)
		sched_tenant_set_shares(L.c, col_u64(res, i, 0), (uint32_t)col_i64(res, i, 1));
}

static void apply_tenant_changed(uint64_t tenant_id)
{
	if (!L.leader || !L.loaded)
		return;
	struct numbuf t;
	const char *params[] = { fmt_u64(&t, tenant_id) };
	struct step *s = step_new(NULL, 0);
	exec_q("SELECT id, fair_share_weight FROM tenants WHERE id = $1::bigint", 1, params,
	       tenant_row_cb, s);
}

void schedloop_tenant_changed(struct app *a, uint64_t tenant_id)
{
	(void)a;
	publish("tenant", tenant_id, 0);
	apply_tenant_changed(tenant_id);
}

void schedloop_node_changed(struct app *a, uint64_t node_id)
{
	(void)a;
	publish("node", node_id, 0);
	apply_node_changed(node_id);
}

static void policy_row_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                          void *arg)
{
	(void)ss;
	(void)err;
	if (!step_ok(arg, st))
		return;
	apply_policy_row(res);
	log_info("policy applied");
	schedloop_kick(L.a);
}

static void apply_policy_changed(void)
{
	if (!L.leader || !L.loaded)
		return;
	struct step *s = step_new(NULL, 0);
	exec_q("SELECT policy_pb FROM policies ORDER BY version DESC LIMIT 1", 0, NULL,
	       policy_row_cb, s);
}

/* Learned speeds apply to jobs that enter the queue from now on (and to
 * every queued job at the next leadership load). */
void schedloop_speeds_changed(struct app *a)
{
	speeds_reload(a, NULL, NULL);
	publish("speeds", 0, 0);
}

void schedloop_policy_changed(struct app *a)
{
	(void)a;
	publish("policy", 0, 0);
	apply_policy_changed();
}

int schedloop_explain(struct app *a, uint64_t job_id, struct explain_out *out)
{
	(void)a;
	if (!L.leader || !L.loaded)
		return -EAGAIN;
	struct sched_explain ex;
	int rc = sched_job_explain(L.c, job_id, &ex);
	if (rc)
		return rc;
	gpumatch__v1__explanation__init(&out->msg);
	out->msg.evaluated_at_us = now_us();
	out->msg.total_nodes = ex.total_nodes;
	out->msg.fit_nodes = ex.fit_nodes;
	out->msg.gang_nodes = ex.gang_nodes;
	out->msg.best_region_fit = ex.best_region_fit;
	out->msg.fleet_feasible = ex.fleet_feasible;
	size_t n = 0;
	for (int r = 0; r < SCHED_R_COUNT; r++) {
		if (!ex.count[r])
			continue;
		Gpumatch__V1__ExplanationCount *c = &out->counts[n];
		gpumatch__v1__explanation_count__init(c);
		c->reason = (Gpumatch__V1__ExplainReason)(r + 1);
		c->node_count = ex.count[r];
		c->text = (char *)sched_reason_text((enum sched_reason)r);
		out->ptrs[n++] = c;
	}
	/* largest first, as the summary */
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j > 0 && out->ptrs[j]->node_count > out->ptrs[j - 1]->node_count;
		     j--) {
			Gpumatch__V1__ExplanationCount *t = out->ptrs[j];
			out->ptrs[j] = out->ptrs[j - 1];
			out->ptrs[j - 1] = t;
		}
	out->msg.n_counts = n;
	out->msg.counts = out->ptrs;
	if (ex.reserved) {
		gpumatch__v1__reservation__init(&out->resv);
		out->resv.expected_start_us = ex.reserved_start_us;
		out->msg.reservation = &out->resv;
	}
	sched_explain_format(&ex, out->summary, sizeof out->summary);
	out->msg.summary = out->summary;
	return 0;
}

/* ---- janitor: lost nodes, unclaimed and overdue leases ---------------------------------------- */

static void ended_rows(const PGresult *res)
{
	/* rows of gm_end_lease: job_id, job_state, job_done, requeued */
	for (int i = 0; i < PQntuples(res); i++) {
		L.expired_leases++;
		if (!strcmp(PQgetvalue(res, i, 2), "t"))
			schedloop_job_ended(L.a, col_u64(res, i, 0),
			                    !strcmp(PQgetvalue(res, i, 3), "t"));
	}
}

static void janitor_end_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                           void *arg)
{
	struct step *s = arg;
	bool cur = step_current(s);
	free(s);
	(void)ss;
	if (!cur)
		return;
	if (st != PG_OK) {
		log_warn("janitor query failed err=\"%s\"", err);
		attention_reset("janitor query failed");
		return;
	}
	ended_rows(res);
	outbox_kick(L.a);
}

/* A gap in the janitor's rounds longer than this means the server could
 * not hear for long enough to matter (its loop stalled): a node whose
 * heartbeat came an interval before the gap would otherwise come within
 * an interval of its timeout. Shorter hiccups (a loaded machine) cannot
 * make a heartbeating node look lost and do not restart the clock. */
static int64_t attention_gap_us(void)
{
	int64_t g =
	    ((int64_t)L.a->cfg.heartbeat_timeout_ms - 2 * (int64_t)L.a->cfg.heartbeat_interval_ms) *
	    1000;
	return g < 500000 ? 500000 : g;
}

static void retired_nodes_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                             void *arg)
{
	(void)ss;
	if (!step_ok(arg, st)) {
		if (st != PG_OK)
			log_warn("janitor query failed err=\"%s\"", err);
		return;
	}
	for (int i = 0; i < PQntuples(res); i++) {
		uint64_t id = col_u64(res, i, 0);
		log_info("node retired node=%" PRIu64, id);
		schedloop_node_changed(L.a, id);
	}
}

static void janitor_leases(void)
{
	struct cfg *cfg = &L.a->cfg;
	int64_t now = now_us();
	/* cut-offs that need the server to have been listening for the whole
	 * window; 0 = none yet. They count from what Postgres has heard. */
	int64_t heard = now - backlog_us();
	int64_t pick = attention_for(cfg->lease_pickup_timeout_ms)
	                   ? heard - (int64_t)cfg->lease_pickup_timeout_ms * 1000
	                   : 0;
	int64_t offer = attention_for(cfg->lease_offer_timeout_ms)
	                    ? heard - (int64_t)cfg->lease_offer_timeout_ms * 1000
	                    : 0;
	int64_t silent = attention_for(cfg->heartbeat_timeout_ms)
	                     ? heard - (int64_t)cfg->heartbeat_timeout_ms * 1000
	                     : 0;
	/* reconciliation needs the agents to have been heard for a whole
	 * offer window too: an agent whose confirmation's reply was held up by
	 * an outage starts (and lists) the job only once it arrives */
	int64_t window = attention_for(cfg->lease_offer_timeout_ms)
	                     ? (int64_t)cfg->lease_offer_timeout_ms * 1000
	                     : INT64_MAX / 2;
	struct numbuf n, pk, ma, of, win, sl;
	const char *params[] = {
		fmt_i64(&n, now),    fmt_i64(&pk, pick),    fmt_i64(&ma, cfg->max_attempts),
		fmt_i64(&of, offer), fmt_i64(&win, window), fmt_i64(&sl, silent)
	};
	/* An offer the node's last heartbeat lists is running there: the agent
	 * confirmed it by running it (metered from that heartbeat). */
	struct step *c = step_new(NULL, 0);
	/* (leases locked in id order, as the batched lease reports lock them:
	 * the two never deadlock) */
	exec_q("WITH c AS (SELECT x.id, n.last_heartbeat_us AS hb FROM leases x"
	       "   JOIN nodes n ON n.id = x.node_id WHERE x.state = 2"
	       "   AND x.id = ANY (n.running_leases) AND n.last_heartbeat_us >= x.offered_at_us"
	       "   ORDER BY x.id FOR UPDATE OF x)"
	       " UPDATE leases l SET state = 3, started_at_us = c.hb FROM c"
	       " WHERE l.id = c.id AND l.state = 2",
	       0, NULL, simple_done_cb, c);
	/* Leases that end:
	 * - of lost nodes (never confirmed ones are withdrawn, unbilled);
	 * - assigned and never handed out, offered and never confirmed
	 *   (withdrawn: requeued at their old position, no attempt counted);
	 * - confirmed, but the node's heartbeats stopped listing them a whole
	 *   offer window after the confirmation (the agent does not run
	 *   them): ended at the last known time, requeued while attempts remain;
	 * - stopping, past their stop deadline, once the agent no longer lists
	 *   them (or its node is silent a whole heartbeat timeout past it). */
	struct step *q = step_new(NULL, 0);
	exec_q("SELECT r.job_id, r.job_state, r.job_done, r.requeued FROM"
	       " (SELECT e.id, min(e.outcome) AS outcome FROM ("
	       "   SELECT x.id, CASE WHEN x.state = 4 THEN 6 WHEN x.started_at_us = 0 THEN 10"
	       "     ELSE 7 END AS outcome FROM nodes n JOIN leases x ON x.node_id = n.id"
	       "       AND x.state BETWEEN 1 AND 4 WHERE n.state = 5"
	       "   UNION ALL SELECT x.id, 10 FROM leases x"
	       "    WHERE x.state = 1 AND x.assigned_at_us < $2::bigint"
	       "   UNION ALL SELECT x.id, 10 FROM leases x JOIN nodes n ON n.id = x.node_id"
	       "    WHERE x.state = 2 AND x.offered_at_us < $4::bigint"
	       "      AND NOT (x.id = ANY (n.running_leases))"
	       "   UNION ALL SELECT x.id, 7 FROM nodes n JOIN leases x ON x.node_id = n.id"
	       "       AND x.state = 3 WHERE n.leases_unlisted AND n.state IN (2, 3, 4)"
	       "      AND NOT (x.id = ANY (n.running_leases))"
	       "      AND x.started_at_us < n.last_heartbeat_us - $5::bigint"
	       "   UNION ALL SELECT x.id, 6 FROM leases x JOIN nodes n ON n.id = x.node_id"
	       "    WHERE x.state = 4 AND x.stop_deadline_us < $1::bigint"
	       "      AND ((NOT (x.id = ANY (n.running_leases))"
	       "            AND n.last_heartbeat_us > x.stop_deadline_us)"
	       "           OR x.stop_deadline_us < $6::bigint)"
	       "  ) e GROUP BY e.id ORDER BY e.id LIMIT 1000) x"
	       " CROSS JOIN LATERAL gm_end_lease_any(x.id, x.outcome::smallint, 0, 0,"
	       "   CASE x.outcome WHEN 10 THEN 'offer withdrawn: not confirmed by the agent'"
	       "     ELSE 'lease expired' END, $1::bigint, $3::integer) r",
	       6, params, janitor_end_cb, q);
	/* retiring nodes whose last lease has ended are retired for good */
	struct step *r = step_new(NULL, 0);
	exec_q("UPDATE nodes n SET state = 6, state_changed_at_us = $1::bigint"
	       " WHERE n.retired_at_us > 0 AND n.state <> 6"
	       " AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.node_id = n.id"
	       "   AND l.state BETWEEN 1 AND 4) RETURNING n.id",
	       1, params, retired_nodes_cb, r);
	/* leases past their max duration are told to stop */
	struct step *d = step_new(NULL, 0);
	exec_q(
	    "UPDATE leases SET state = 4, stop_kind = 3, stop_deadline_us = $1::bigint + 30000000,"
	    " stop_reason = 'ran past max_duration_us'"
	    " WHERE state IN (2, 3) AND deadline_us < $1::bigint",
	    1, params, simple_done_cb, d);
}

static void lost_nodes_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                          void *arg)
{
	struct step *s = arg;
	bool cur = step_current(s);
	free(s);
	(void)ss;
	L.janitor_busy = false;
	if (!cur)
		return;
	if (st != PG_OK) {
		log_warn("janitor query failed err=\"%s\"", err);
		attention_reset("janitor query failed");
		return;
	}
	for (int i = 0; i < PQntuples(res); i++) {
		uint64_t id = col_u64(res, i, 0);
		L.lost_nodes++;
		log_warn("node lost node=%" PRIu64 " reason=\"missed heartbeats\"", id);
		sched_node_set_state(L.c, id, SCHED_NODE_LOST);
	}
	janitor_leases();
}

static void janitor_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	if (!L.leader || !L.loaded || L.stopped)
		return;
	int64_t now = now_us(), m = mono_us();
	/* the loop itself stalled, or the wall clock jumped: start over */
	if (L.janitor_tick_mono) {
		int64_t dm = m - L.janitor_tick_mono, dw = now - L.janitor_tick_wall;
		if (dm > attention_gap_us())
			attention_reset("the server's loop stalled");
		else if (dw - dm > 1000000 || dm - dw > 1000000)
			attention_reset("the wall clock jumped");
	}
	L.janitor_tick_mono = m;
	L.janitor_tick_wall = now;
	/* Postgres stalled meanwhile (heartbeats could not be recorded) */
	uint64_t stalls;
	if (pg_pool_stalled(L.a->pg, &stalls) || stalls != L.pg_stalls_seen) {
		L.pg_stalls_seen = stalls;
		attention_reset("postgres was not answering");
	}
	if (L.janitor_busy)
		return;
	int64_t cut = attention_for(L.a->cfg.heartbeat_timeout_ms)
	                  ? now - backlog_us() - (int64_t)L.a->cfg.heartbeat_timeout_ms * 1000
	                  : 0;
	struct numbuf n, c;
	const char *params[] = { fmt_i64(&n, now), fmt_i64(&c, cut) };
	L.janitor_busy = true;
	struct step *s = step_new(NULL, 0);
	if (exec_q("UPDATE nodes SET state = 5, state_reason = 'missed heartbeats',"
	           " state_changed_at_us = $1::bigint"
	           " WHERE state IN (2, 3, 4) AND last_heartbeat_us > 0"
	           " AND last_heartbeat_us < $2::bigint RETURNING id",
	           2, params, lost_nodes_cb, s))
		L.janitor_busy = false;
}

/* ---- outbox: Postgres -> Redis (every replica) ------------------------------------------------ */

struct outbox_run {
	int pending;
	bool failed;
	struct strbuf ids;
};

static void outbox_deleted_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                              void *arg)
{
	struct outbox_run *o = arg;
	(void)res;
	(void)ss;
	L.inflight--;
	L.outbox_busy = false;
	if (st != PG_OK)
		log_warn("outbox cleanup failed err=\"%s\"", err);
	bool more = st == PG_OK && !o->failed;
	sb_free(&o->ids);
	free(o);
	if (more)
		outbox_kick(L.a);
}

static void outbox_redis_cb(redisReply *reply, const char *err, void *arg)
{
	struct outbox_run *o = arg;
	if (!reply || reply->type == REDIS_REPLY_ERROR) {
		if (!o->failed)
			log_warn("outbox to redis failed err=\"%s\"",
			         reply ? reply->str : (err ? err : "unknown"));
		o->failed = true;
	}
	if (--o->pending)
		return;
	if (o->failed) {
		/* keep the rows; the next drain retries (the scripts are idempotent) */
		L.inflight--;
		L.outbox_busy = false;
		sb_free(&o->ids);
		free(o);
		return;
	}
	sb_puts(&o->ids, "}");
	const char *params[] = { o->ids.s };
	if (pg_exec(L.a->pg, NULL, "DELETE FROM outbox WHERE id = ANY($1::bigint[])", 1, params,
	            outbox_deleted_cb, o)) {
		L.inflight--;
		L.outbox_busy = false;
		sb_free(&o->ids);
		free(o);
	}
}

#define ENQUEUE_CHUNK 100

/* Jobs to enqueue, sent in one script call per ENQUEUE_CHUNK jobs. */
struct enqueue_chunk {
	int n;
	char id[ENQUEUE_CHUNK][24], score[ENQUEUE_CHUNK][32];
};

static void enqueue_flush(struct outbox_run *o, struct enqueue_chunk *ch)
{
	if (!ch->n)
		return;
	const char *argv[2 + ENQUEUE_CHUNK * 2];
	int k = 0;
	argv[k++] = RK_PENDING;
	argv[k++] = RK_EVENTS;
	for (int i = 0; i < ch->n; i++) {
		argv[k++] = ch->id[i];
		argv[k++] = ch->score[i];
	}
	o->pending++;
	if (rds_script(L.a->rds, SCRIPT_ENQUEUE, outbox_redis_cb, o, 2, k, argv, NULL)) {
		o->pending--;
		o->failed = true;
	}
	ch->n = 0;
}

static void enqueue_redis(struct outbox_run *o, struct enqueue_chunk *ch, uint64_t job,
                          int64_t submit_us, int prio)
{
	int i = ch->n++;
	snprintf(ch->id[i], sizeof ch->id[i], "%" PRIu64, job);
	/* lower score first: higher class, then earlier submit */
	snprintf(ch->score[i], sizeof ch->score[i], "%.0f",
	         (double)(SCHED_PRIO_CLASSES - 1 - prio) * 1e13 + (double)(submit_us / 1000));
	if (ch->n == ENQUEUE_CHUNK)
		enqueue_flush(o, ch);
}

static void dequeue_redis(struct outbox_run *o, uint64_t job)
{
	char id[24];
	snprintf(id, sizeof id, "%" PRIu64, job);
	const char *argv[] = { RK_PENDING, id };
	o->pending++;
	if (rds_script(L.a->rds, SCRIPT_DEQUEUE, outbox_redis_cb, o, 1, 2, argv, NULL)) {
		o->pending--;
		o->failed = true;
	}
}

static void outbox_rows_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                           void *arg)
{
	(void)ss;
	(void)arg;
	if (st != PG_OK || PQntuples(res) == 0 || L.stopped) {
		if (st != PG_OK && st != PG_UNAVAILABLE)
			log_warn("outbox read failed err=\"%s\"", err);
		L.inflight--;
		L.outbox_busy = false;
		return;
	}
	struct outbox_run *o = calloc(1, sizeof *o);
	if (!o) {
		log_error("out of memory");
		abort();
	}
	o->pending = 1; /* held until every command is sent */
	struct enqueue_chunk *ch = calloc(1, sizeof *ch);
	if (!ch) {
		log_error("out of memory");
		abort();
	}
	sb_puts(&o->ids, "{");
	for (int i = 0; i < PQntuples(res); i++) {
		/* rows of one outbox row are adjacent (ORDER BY o.id) */
		if (!i || strcmp(PQgetvalue(res, i, 0), PQgetvalue(res, i - 1, 0)))
			sb_printf(&o->ids, "%s%s", i ? "," : "", PQgetvalue(res, i, 0));
		uint64_t job = col_u64(res, i, 1);
		if (!strcmp(PQgetvalue(res, i, 2), "enqueue") &&
		    !strcmp(PQgetvalue(res, i, 6), "1"))
			enqueue_redis(o, ch, job, col_i64(res, i, 4), (int)col_i64(res, i, 5));
		else
			dequeue_redis(o, job);
		L.outbox_moved++;
	}
	enqueue_flush(o, ch);
	free(ch);
	outbox_redis_cb(&(redisReply){ .type = REDIS_REPLY_STATUS }, NULL, o);
}

static void outbox_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	if (L.outbox_busy || L.stopped || !rds_ready(L.a->rds) || !pg_pool_ready(L.a->pg))
		return;
	L.outbox_busy = true;
	L.inflight++;
	char lim[16];
	snprintf(lim, sizeof lim, "%d", OUTBOX_BATCH);
	const char *params[] = { lim };
	/* An enqueue row is applied only while the job is still queued. A
	 * submit batch's row names all its jobs (job_ids), others one. */
	if (pg_exec(L.a->pg, NULL,
	            "SELECT o.id, u.job_id, o.kind, NULL, j.submitted_at_us,"
	            " j.priority_class, coalesce(j.state, 0)"
	            " FROM (SELECT id, job_id, job_ids, kind FROM outbox ORDER BY id"
	            "       LIMIT $1::integer) o"
	            " CROSS JOIN LATERAL unnest(coalesce(o.job_ids, ARRAY[o.job_id])) AS u(job_id)"
	            " LEFT JOIN jobs j ON j.id = u.job_id ORDER BY o.id",
	            1, params, outbox_rows_cb, NULL)) {
		L.inflight--;
		L.outbox_busy = false;
	}
}

void outbox_kick(struct app *a)
{
	(void)a;
	/* Drains are coalesced to one per OUTBOX_KICK_US: under load every
	 * batch kicks, and each drain is two statements of its own. Nothing
	 * waits on it: the leader learns of new jobs directly. */
	if (L.outbox_kick_ev && !evtimer_pending(L.outbox_kick_ev, NULL)) {
		struct timeval tv = { 0, OUTBOX_KICK_US };
		evtimer_add(L.outbox_kick_ev, &tv);
	}
}

/* ---- reconcile Redis with Postgres (leader) --------------------------------------------------- */

static void reconcile_members_cb(redisReply *reply, const char *err, void *arg)
{
	struct step *s = arg;
	bool cur = s->gen == L.generation && !L.stopped;
	L.inflight--;
	free(s);
	if (!cur || !reply || reply->type != REDIS_REPLY_ARRAY) {
		if (cur)
			log_warn("reconcile: redis read failed err=\"%s\"",
			         err ? err : "bad reply");
		return;
	}
	/* Postgres's queued jobs missing in Redis get enqueue rows; Redis's
	 * members no longer queued get dequeue rows. The outbox applies both. */
	struct strbuf have = { 0 };
	sb_puts(&have, "{");
	for (size_t i = 0; i < reply->elements; i++)
		sb_printf(&have, "%s%s", i ? "," : "", reply->element[i]->str);
	sb_puts(&have, "}");
	struct numbuf now;
	const char *params[] = { have.s, fmt_i64(&now, now_us()) };
	struct step *q = step_new(NULL, 0);
	if (!have.oom)
		exec_q("INSERT INTO outbox (job_id, kind, created_at_us)"
		       " SELECT id, 'enqueue', $2::bigint FROM jobs"
		       "  WHERE state = 1 AND NOT (id = ANY($1::bigint[]))"
		       " UNION ALL"
		       " SELECT m, 'dequeue', $2::bigint FROM unnest($1::bigint[]) m"
		       "  WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE id = m AND state = 1)",
		       2, params, simple_done_cb, q);
	sb_free(&have);
	outbox_kick(L.a);
}

static void reconcile_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	if (!L.leader || !L.loaded || L.stopped || !rds_ready(L.a->rds))
		return;
	struct step *s = step_new(NULL, 0);
	const char *argv[] = { "ZRANGE", RK_PENDING, "0", "-1" };
	if (rds_cmd(L.a->rds, reconcile_members_cb, s, 4, argv, NULL)) {
		L.inflight--;
		free(s);
	}
}

static void redis_connected(void *arg)
{
	(void)arg;
	/* after a Redis restart (or FLUSHALL seen as a reconnect) rebuild the
	 * queue from Postgres at once */
	if (L.reconcile_ev)
		event_active(L.reconcile_ev, EV_TIMEOUT, 0);
}

static void ignore_reply_cb(redisReply *reply, const char *err, void *arg)
{
	(void)reply;
	(void)err;
	(void)arg;
}

/* ---- changes made through other replicas -----------------------------------------------------
 * Every replica publishes what it changed to the {gm}:events stream; the
 * leader reads it and applies what came from elsewhere (its own changes
 * were applied directly). A lost stream (Redis flushed) only delays: the
 * periodic reconcile and the next leadership load read Postgres. */

static void publish(const char *kind, uint64_t id, int flag)
{
	if (L.stopped || !rds_ready(L.a->rds))
		return;
	char ids[24], fl[8];
	snprintf(ids, sizeof ids, "%" PRIu64, id);
	snprintf(fl, sizeof fl, "%d", flag);
	const char *argv[] = { "XADD", RK_EVENTS, "MAXLEN", "~",    "100000", "*",    "kind",
		               kind,   "id",      ids,      "flag", fl,       "from", L.instance };
	rds_cmd(L.a->rds, ignore_reply_cb, NULL, 14, argv, NULL);
}

static void fetch_jobs_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                          void *arg)
{
	(void)ss;
	(void)err;
	if (!step_ok(arg, st))
		return;
	for (int i = 0; i < PQntuples(res); i++)
		schedloop_add_job_row(L.c, res, i, 0, 1, 2, 3);
	explain_waits_run();
	schedloop_kick(L.a);
}

static const char *entry_field(const redisReply *kv, const char *name)
{
	for (size_t i = 0; i + 1 < kv->elements; i += 2)
		if (kv->element[i]->type == REDIS_REPLY_STRING &&
		    !strcmp(kv->element[i]->str, name) &&
		    kv->element[i + 1]->type == REDIS_REPLY_STRING)
			return kv->element[i + 1]->str;
	return "";
}

/* ---- explanations for other replicas ---------------------------------------------------------- */

#define EXPLAIN_ANSWER_TTL_MS "10000"
#define EXPLAIN_POLL_MS       20
#define EXPLAIN_WAIT_US       3000000

#define EXPLAIN_DEFER_US 1500000

/* Asks for jobs the leader does not hold yet: the asking replica saw the
 * job queued in Postgres, and the leader learns of it a moment later
 * (outbox, stream, fetch). Answered when it arrives or after
 * EXPLAIN_DEFER_US. */
struct explain_wait {
	uint64_t job_id;
	char key[192];
	int64_t until_us;
	struct explain_wait *next;
};
static struct explain_wait *explain_waits;

static void explain_waits_clear(void)
{
	while (explain_waits) {
		struct explain_wait *w = explain_waits;
		explain_waits = w->next;
		free(w);
	}
}

/* The leader answers an ask read from the stream: the packed Explanation,
 * or "-" when the job is not pending here. With may_wait, an ask for a job
 * not held yet waits for it (explain_waits_run answers it later). */
static void answer_explain(uint64_t job_id, const char *key, bool may_wait)
{
	if (strncmp(key, RK_EXPLAIN, strlen(RK_EXPLAIN)) || strlen(key) > 191)
		return;
	if (may_wait && sched_job_state(L.c, job_id) == -ENOENT) {
		struct explain_wait *w = calloc(1, sizeof *w);
		if (w) {
			w->job_id = job_id;
			snprintf(w->key, sizeof w->key, "%s", key);
			w->until_us = now_us() + EXPLAIN_DEFER_US;
			w->next = explain_waits;
			explain_waits = w;
			return;
		}
	}
	struct explain_out ex;
	uint8_t buf[4096];
	size_t n = 1;
	buf[0] = '-';
	if (schedloop_explain(L.a, job_id, &ex) == 0 &&
	    protobuf_c_message_get_packed_size(&ex.msg.base) <= sizeof buf)
		n = protobuf_c_message_pack(&ex.msg.base, buf);
	const char *argv[] = { "SET", key, (const char *)buf, "PX", EXPLAIN_ANSWER_TTL_MS };
	size_t lens[] = { 3, strlen(key), n, 2, strlen(EXPLAIN_ANSWER_TTL_MS) };
	rds_cmd(L.a->rds, ignore_reply_cb, NULL, 5, argv, lens);
}

/* Answers the waiting asks whose job has arrived or whose time is up. */
static void explain_waits_run(void)
{
	int64_t now = now_us();
	for (struct explain_wait **p = &explain_waits; *p;) {
		struct explain_wait *w = *p;
		if (sched_job_state(L.c, w->job_id) == -ENOENT && now < w->until_us) {
			p = &w->next;
			continue;
		}
		*p = w->next;
		answer_explain(w->job_id, w->key, false);
		free(w);
	}
}

struct explain_ask {
	schedloop_explain_cb cb;
	void *arg;
	char key[192]; /* RK_EXPLAIN instance:seq */
	int64_t until_us;
	struct event *ev;
	bool getting;   /* a GET is in flight */
	bool cancelled; /* the caller went away */
};

static void explain_ask_free(struct explain_ask *q)
{
	event_free(q->ev);
	free(q);
}

static void explain_ask_done(struct explain_ask *q, const Gpumatch__V1__Explanation *ex, int rc)
{
	if (!q->cancelled)
		q->cb(ex, rc, q->arg);
	explain_ask_free(q);
}

static void explain_get_cb(redisReply *reply, const char *err, void *arg)
{
	(void)err;
	struct explain_ask *q = arg;
	q->getting = false;
	if (q->cancelled) {
		explain_ask_free(q);
		return;
	}
	if (reply && reply->type == REDIS_REPLY_STRING) {
		if (reply->len == 1 && reply->str[0] == '-') {
			explain_ask_done(q, NULL, -ENOENT);
			return;
		}
		Gpumatch__V1__Explanation *ex = gpumatch__v1__explanation__unpack(
		    NULL, reply->len, (const uint8_t *)reply->str);
		explain_ask_done(q, ex, ex ? 0 : -ETIMEDOUT);
		if (ex)
			gpumatch__v1__explanation__free_unpacked(ex, NULL);
		return;
	}
	if (now_us() >= q->until_us || L.stopped) {
		explain_ask_done(q, NULL, -ETIMEDOUT);
		return;
	}
	struct timeval tv = { 0, EXPLAIN_POLL_MS * 1000 };
	evtimer_add(q->ev, &tv);
}

static void explain_poll_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct explain_ask *q = arg;
	const char *argv[] = { "GET", q->key };
	if (L.stopped || rds_cmd(L.a->rds, explain_get_cb, q, 2, argv, NULL)) {
		explain_ask_done(q, NULL, -ETIMEDOUT);
		return;
	}
	q->getting = true;
}

struct explain_ask *schedloop_explain_ask(struct app *a, uint64_t job_id, schedloop_explain_cb cb,
                                          void *arg)
{
	if (L.stopped || !rds_ready(a->rds))
		return NULL;
	struct explain_ask *q = calloc(1, sizeof *q);
	if (!q)
		return NULL;
	static uint64_t seq;
	snprintf(q->key, sizeof q->key, RK_EXPLAIN "%s:%" PRIu64, L.instance, ++seq);
	q->cb = cb;
	q->arg = arg;
	q->until_us = now_us() + EXPLAIN_WAIT_US;
	q->ev = evtimer_new(a->base, explain_poll_cb, q);
	char ids[24];
	snprintf(ids, sizeof ids, "%" PRIu64, job_id);
	const char *argv[] = {
		"XADD",    RK_EVENTS, "MAXLEN", "~",    "100000",   "*",     "kind",
		"explain", "id",      ids,      "from", L.instance, "reply", q->key
	};
	struct timeval tv = { 0, EXPLAIN_POLL_MS * 1000 };
	if (!q->ev || rds_cmd(a->rds, ignore_reply_cb, NULL, 14, argv, NULL) ||
	    evtimer_add(q->ev, &tv)) {
		if (q->ev)
			event_free(q->ev);
		free(q);
		return NULL;
	}
	return q;
}

void schedloop_explain_ask_cancel(struct explain_ask *q)
{
	if (!q)
		return;
	q->cancelled = true;
	if (!q->getting)
		explain_ask_free(q);
}

static void stream_cb(redisReply *reply, const char *err, void *arg)
{
	struct step *s = arg;
	L.inflight--;
	bool cur = s->gen == L.generation && L.leader && L.loaded && !L.stopped;
	free(s);
	L.stream_busy = false;
	(void)err;
	/* reply: [[stream, [[id, [k, v, ...]], ...]]] or nil */
	if (!cur || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 ||
	    reply->element[0]->type != REDIS_REPLY_ARRAY || reply->element[0]->elements < 2)
		return;
	const redisReply *entries = reply->element[0]->element[1];
	struct strbuf fetch = { 0 };
	sb_puts(&fetch, "{");
	bool any = false;
	for (size_t i = 0; i < entries->elements; i++) {
		const redisReply *e = entries->element[i];
		if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 ||
		    e->element[0]->type != REDIS_REPLY_STRING ||
		    e->element[1]->type != REDIS_REPLY_ARRAY)
			continue;
		snprintf(L.stream_last, sizeof L.stream_last, "%s", e->element[0]->str);
		const redisReply *kv = e->element[1];
		const char *kind = entry_field(kv, "kind"), *from = entry_field(kv, "from");
		const char *ids =
		    *entry_field(kv, "id") ? entry_field(kv, "id") : entry_field(kv, "job");
		uint64_t id = strtoull(ids, NULL, 10);
		if (!strcmp(kind, "enqueue")) {
			/* "jobs": comma-separated ids, one entry per enqueue call */
			for (const char *p = entry_field(kv, "jobs"); *p;) {
				char *end;
				uint64_t j = strtoull(p, &end, 10);
				if (end == p)
					break;
				if (j && sched_job_state(L.c, j) == -ENOENT) {
					sb_printf(&fetch, "%s%" PRIu64, any ? "," : "", j);
					any = true;
				}
				p = *end == ',' ? end + 1 : end;
			}
			continue;
		}
		if (!strcmp(kind, "explain")) {
			answer_explain(id, entry_field(kv, "reply"), true);
			continue;
		}
		if (!strcmp(from, L.instance))
			continue; /* applied when it happened */
		if (!strcmp(kind, "ended"))
			apply_job_ended(id, !strcmp(entry_field(kv, "flag"), "1"));
		else if (!strcmp(kind, "cancelled"))
			apply_job_cancelled(id);
		else if (!strcmp(kind, "node"))
			apply_node_changed(id);
		else if (!strcmp(kind, "policy"))
			apply_policy_changed();
		else if (!strcmp(kind, "tenant"))
			apply_tenant_changed(id);
		else if (!strcmp(kind, "speeds"))
			speeds_reload(L.a, NULL, NULL);
	}
	sb_puts(&fetch, "}");
	if (any && !fetch.oom) {
		const char *params[] = { fetch.s };
		struct step *q = step_new(NULL, 0);
		exec_q("SELECT id, tenant_id, spec_pb, submitted_at_us FROM jobs"
		       " WHERE id = ANY($1::bigint[]) AND state = 1 ORDER BY id",
		       1, params, fetch_jobs_cb, q);
	}
	sb_free(&fetch);
}

/* Where the stream stands when leadership is gained: later events are
 * read, earlier ones are covered by the load from Postgres. */
static void stream_start_cb(redisReply *reply, const char *err, void *arg)
{
	struct step *s = arg;
	L.inflight--;
	bool cur = s->gen == L.generation && L.leader && !L.stopped;
	free(s);
	(void)err;
	if (!cur)
		return;
	snprintf(L.stream_last, sizeof L.stream_last, "0-0");
	if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 1 &&
	    reply->element[0]->type == REDIS_REPLY_ARRAY && reply->element[0]->elements >= 1 &&
	    reply->element[0]->element[0]->type == REDIS_REPLY_STRING)
		snprintf(L.stream_last, sizeof L.stream_last, "%s",
		         reply->element[0]->element[0]->str);
	begin_load();
}

static void stream_tick_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	if (!L.leader || !L.loaded || L.stopped || L.stream_busy || !rds_ready(L.a->rds) ||
	    !L.stream_last[0])
		return;
	explain_waits_run();
	L.stream_busy = true;
	struct step *s = step_new(NULL, 0);
	const char *argv[] = { "XREAD", "COUNT", "1000", "STREAMS", RK_EVENTS, L.stream_last };
	if (rds_cmd(L.a->rds, stream_cb, s, 6, argv, NULL)) {
		L.inflight--;
		free(s);
		L.stream_busy = false;
	}
}

/* ---- fleet and queue gauges (every replica; /metrics never waits) ---------------------------- */

#define STATS_MAX_SHARE 40 /* the gauge query's run time × this = the least time between starts */

static void stats_cb(enum pg_status st, PGresult *res, const char *ss, const char *err, void *arg)
{
	(void)ss;
	(void)err;
	(void)arg;
	L.inflight--;
	L.stats_busy = false;
	/* The query scans every GPU row: ~200 ms of Postgres at 10,000 nodes.
	 * Whatever the fleet, it takes at most 1/STATS_MAX_SHARE of the time
	 * between its runs (every tick on a small fleet; every ~8 s there). */
	L.stats_next_mono =
	    L.stats_started_mono + (mono_us() - L.stats_started_mono) * STATS_MAX_SHARE;
	if (st != PG_OK || L.stopped)
		return;
	/* rows: kind, label, value */
	struct strbuf b = { 0 };
	const char *last = "";
	for (int i = 0; i < PQntuples(res); i++) {
		const char *kind = PQgetvalue(res, i, 0);
		if (strcmp(kind, last)) {
			if (!strcmp(kind, "queue"))
				sb_puts(&b, "# HELP gpumatch_queue_depth_by_class Queued jobs by "
				            "priority class.\n"
				            "# TYPE gpumatch_queue_depth_by_class gauge\n");
			else if (!strcmp(kind, "gpus"))
				sb_puts(&b, "# HELP gpumatch_gpus_by_model GPUs of schedulable "
				            "nodes by model and use.\n"
				            "# TYPE gpumatch_gpus_by_model gauge\n");
			else if (!strcmp(kind, "leases"))
				sb_puts(&b, "# HELP gpumatch_leases Leases by state.\n"
				            "# TYPE gpumatch_leases gauge\n");
			else if (!strcmp(kind, "nodes"))
				sb_puts(&b,
				        "# HELP gpumatch_nodes_by_state Nodes by state (record).\n"
				        "# TYPE gpumatch_nodes_by_state gauge\n");
			last = kind;
		}
		const char *label = PQgetvalue(res, i, 1), *v = PQgetvalue(res, i, 2);
		if (!strcmp(kind, "queue"))
			sb_printf(&b, "gpumatch_queue_depth_by_class{class=\"%s\"} %s\n", label, v);
		else if (!strcmp(kind, "gpus")) {
			const char *use = strrchr(label, '|');
			if (use)
				sb_printf(&b,
				          "gpumatch_gpus_by_model{model=\"%.*s\",use=\"%s\"} %s\n",
				          (int)(use - label), label, use + 1, v);
		} else if (!strcmp(kind, "leases"))
			sb_printf(&b, "gpumatch_leases{state=\"%s\"} %s\n", label, v);
		else if (!strcmp(kind, "nodes"))
			sb_printf(&b, "gpumatch_nodes_by_state{state=\"%s\"} %s\n", label, v);
	}
	if (b.oom) {
		sb_free(&b);
		return;
	}
	sb_free(&L.stats);
	L.stats = b;
}

static void stats_tick_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	int64_t now = mono_us();
	if (L.stats_busy || L.stopped || !pg_pool_ready(L.a->pg) || now < L.stats_next_mono)
		return;
	L.stats_started_mono = now;
	L.stats_busy = true;
	L.inflight++;
	/* model names are operator input: keep them label-safe */
	if (pg_exec(
	        L.a->pg, NULL,
	        "WITH busy AS (SELECT node_id, bit_or(gpu_mask) AS mask FROM leases"
	        "   WHERE state BETWEEN 1 AND 4 GROUP BY node_id),"
	        " per AS (SELECT g.model, (coalesce(b.mask, 0) >> g.idx) & 1 = 1 AS busy,"
	        "   count(*) AS n FROM gpus g JOIN nodes n ON n.id = g.node_id"
	        "   LEFT JOIN busy b ON b.node_id = g.node_id"
	        "   WHERE n.state IN (2, 3) GROUP BY 1, 2)"
	        " SELECT 'gpus', regexp_replace(model, '[^A-Za-z0-9._ -]', '_', 'g') || '|' ||"
	        "   CASE WHEN busy THEN 'busy' ELSE 'free' END, sum(n)::text FROM per GROUP BY 2"
	        " UNION ALL SELECT 'leases', CASE state WHEN 1 THEN 'assigned' WHEN 2 THEN "
	        "'acquired'"
	        "   WHEN 3 THEN 'running' ELSE 'stopping' END, count(*)::text FROM leases"
	        "  WHERE state BETWEEN 1 AND 4 GROUP BY 2"
	        " UNION ALL SELECT 'nodes', CASE state WHEN 1 THEN 'registered' WHEN 2 THEN 'ready'"
	        "   WHEN 3 THEN 'draining' WHEN 4 THEN 'cordoned' WHEN 5 THEN 'lost'"
	        "   ELSE 'disabled' END, count(*)::text FROM nodes GROUP BY 2"
	        " UNION ALL SELECT 'queue', priority_class::text, count(*)::text FROM jobs"
	        "  WHERE state = 1 GROUP BY 2"
	        " ORDER BY 1, 2",
	        0, NULL, stats_cb, NULL)) {
		L.inflight--;
		L.stats_busy = false;
	}
}

/* ---- lifecycle ---------------------------------------------------------------------------------- */

static struct event *timer(struct event_base *b, int ms, event_callback_fn fn)
{
	struct event *e = event_new(b, -1, EV_PERSIST, fn, NULL);
	if (!e)
		return NULL;
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	event_add(e, &tv);
	return e;
}

int schedloop_start(struct app *a, char *err, size_t err_len)
{
	memset(&L, 0, sizeof L);
	L.a = a;
	if (a->cfg.instance_id[0]) {
		snprintf(L.instance, sizeof L.instance, "%s", a->cfg.instance_id);
	} else {
		char host[64] = "";
		gethostname(host, sizeof host - 1);
		snprintf(L.instance, sizeof L.instance, "%s:%d:%" PRId64, host, (int)getpid(),
		         now_us());
	}
	L.leader_ev = timer(a->base, LEADER_TICK_MS, leader_tick_cb);
	L.cycle_ev = timer(a->base, a->cfg.cycle_interval_ms, cycle_cb);
	L.janitor_ev = timer(a->base, JANITOR_MS, janitor_cb);
	L.outbox_ev = timer(a->base, OUTBOX_MS, outbox_cb);
	L.reconcile_ev = timer(a->base, a->cfg.reconcile_interval_ms, reconcile_cb);
	L.stream_ev = timer(a->base, 100, stream_tick_cb);
	L.stats_ev = timer(a->base, 2000, stats_tick_cb);
	L.kick_ev = event_new(a->base, -1, 0, cycle_cb, NULL);
	L.spacing_ev = evtimer_new(a->base, cycle_cb, NULL);
	L.outbox_kick_ev = evtimer_new(a->base, outbox_cb, NULL);
	if (!L.leader_ev || !L.cycle_ev || !L.janitor_ev || !L.outbox_ev || !L.reconcile_ev ||
	    !L.kick_ev || !L.outbox_kick_ev || !L.stream_ev || !L.stats_ev || !L.spacing_ev) {
		snprintf(err, err_len, "cannot create scheduler timers");
		return -1;
	}
	rds_on_connect(a->rds, redis_connected, NULL);
	/* try for leadership right away rather than after the first tick */
	event_active(L.leader_ev, EV_TIMEOUT, 0);
	return 0;
}

void schedloop_stop(struct app *a)
{
	(void)a;
	if (L.stopped)
		return;
	L.stopped = true;
	struct event **evs[] = { &L.leader_ev,    &L.cycle_ev,  &L.janitor_ev,     &L.outbox_ev,
		                 &L.reconcile_ev, &L.kick_ev,   &L.outbox_kick_ev, &L.stream_ev,
		                 &L.stats_ev,     &L.spacing_ev };
	for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++) {
		if (*evs[i]) {
			event_free(*evs[i]);
			*evs[i] = NULL;
		}
	}
	if (L.leader) {
		/* hand the lock over now rather than after its TTL */
		const char *argv[] = { "DEL", RK_LEADER };
		rds_cmd(L.a->rds, ignore_reply_cb, NULL, 2, argv, NULL);
	}
	L.leader = false;
	L.generation++;
	explain_waits_clear();
	sched_cluster_free(L.c);
	L.c = NULL;
	sb_free(&L.stats);
}

bool schedloop_idle(struct app *a)
{
	(void)a;
	return L.inflight <= 0;
}

void schedloop_metrics(struct app *a, struct evbuffer *b)
{
	(void)a;
	evbuffer_add_printf(
	    b,
	    "# HELP gpumatch_scheduler_leader Whether this replica schedules.\n"
	    "# TYPE gpumatch_scheduler_leader gauge\ngpumatch_scheduler_leader %d\n"
	    "# HELP gpumatch_placements_total Jobs (gang parts) placed.\n"
	    "# TYPE gpumatch_placements_total counter\n"
	    "gpumatch_placements_total %" PRIu64 "\n"
	    "# HELP gpumatch_preemptions_total Jobs told to stop for others.\n"
	    "# TYPE gpumatch_preemptions_total counter\n"
	    "gpumatch_preemptions_total %" PRIu64 "\n"
	    "# HELP gpumatch_nodes_lost_total Nodes marked lost.\n"
	    "# TYPE gpumatch_nodes_lost_total counter\n"
	    "gpumatch_nodes_lost_total %" PRIu64 "\n"
	    "# HELP gpumatch_leases_expired_total Leases ended by the janitor.\n"
	    "# TYPE gpumatch_leases_expired_total counter\n"
	    "gpumatch_leases_expired_total %" PRIu64 "\n"
	    "# HELP gpumatch_outbox_moved_total Outbox changes (one per job) applied to Redis.\n"
	    "# TYPE gpumatch_outbox_moved_total counter\n"
	    "gpumatch_outbox_moved_total %" PRIu64 "\n",
	    L.leader && L.loaded ? 1 : 0, L.placements, L.preemptions, L.lost_nodes,
	    L.expired_leases, L.outbox_moved);
	if (L.c) {
		struct sched_stats st;
		sched_get_stats(L.c, &st);
		static const char *const names[] = { "ready", "draining", "cordoned", "lost" };
		evbuffer_add_printf(b, "# HELP gpumatch_nodes Nodes by state (leader's view).\n"
		                       "# TYPE gpumatch_nodes gauge\n");
		for (int i = 0; i < SCHED_NODE_STATE_COUNT; i++)
			evbuffer_add_printf(b, "gpumatch_nodes{state=\"%s\"} %u\n", names[i],
			                    st.nodes_by_state[i]);
		evbuffer_add_printf(
		    b,
		    "# HELP gpumatch_gpus GPUs by use (leader's view).\n"
		    "# TYPE gpumatch_gpus gauge\n"
		    "gpumatch_gpus{use=\"free\"} %" PRIu64 "\n"
		    "gpumatch_gpus{use=\"total\"} %" PRIu64 "\n"
		    "# HELP gpumatch_queue_depth Pending jobs.\n"
		    "# TYPE gpumatch_queue_depth gauge\ngpumatch_queue_depth %u\n"
		    "# HELP gpumatch_jobs_running Jobs holding GPUs.\n"
		    "# TYPE gpumatch_jobs_running gauge\ngpumatch_jobs_running %u\n"
		    "# HELP gpumatch_requirement_classes Distinct requirement classes.\n"
		    "# TYPE gpumatch_requirement_classes gauge\n"
		    "gpumatch_requirement_classes %u\n",
		    st.gpus_free, st.gpus_total, st.jobs_pending, st.jobs_running, st.classes);
	}
	if (L.stats.s)
		evbuffer_add(b, L.stats.s, L.stats.len);
	evbuffer_add_printf(b, "# HELP gpumatch_cycle_duration_seconds Scheduling cycle time.\n"
	                       "# TYPE gpumatch_cycle_duration_seconds histogram\n");
	uint64_t cum = 0;
	for (size_t i = 0; i < NCYCLE_BUCKETS; i++) {
		cum += L.cycle_bucket[i];
		evbuffer_add_printf(
		    b, "gpumatch_cycle_duration_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
		    cycle_le_ms[i] / 1000.0, cum);
	}
	cum += L.cycle_bucket[NCYCLE_BUCKETS];
	evbuffer_add_printf(b,
	                    "gpumatch_cycle_duration_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n"
	                    "gpumatch_cycle_duration_seconds_sum %.6f\n"
	                    "gpumatch_cycle_duration_seconds_count %" PRIu64 "\n",
	                    cum, L.cycle_sum_s, cum);
}
