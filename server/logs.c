/* logs.c — tenants' job output: NodeService.AppendLeaseLogs (agents append
 * each lease's output by byte offset, idempotently, up to a per-lease cap),
 * JobService.GetJobLogs (paged by offset, follow by long poll) and the
 * retention sweep. Storage: lease_logs (one row per lease) and
 * lease_log_chunks (bytea keyed by offset) in Postgres; see docs/jobs.md,
 * "Logs", for why not large objects or files. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "gpumatch/v1/job_service.pb-c.h"
#include "gpumatch/v1/node_service.pb-c.h"
#include "log.h"
#include "pg.h"
#include "service.h"

#define APPEND_MAX_BYTES (1 << 20)
#define PAGE_DEFAULT     (256 << 10)
#define PAGE_MAX         (1 << 20)
#define FOLLOW_DEFAULT   20000
#define FOLLOW_MAX       60000
#define FOLLOW_RECHECK   250 /* ms between looks while following */

static struct {
	struct event *sweep_ev;
	struct follow *head; /* GetJobLogs calls waiting for output */
	uint64_t appended_bytes, append_calls, duplicate_calls;
} L;

static uint64_t scope_operator(struct rpc_call *call)
{
	const struct principal *p = rpc_principal(call);
	return p->role == ROLE_OPERATOR ? p->operator_id : 0;
}

/* ---- AppendLeaseLogs -------------------------------------------------------------------------------- */

struct append_ctx {
	struct rpc_call *call;
	uint64_t lease_id;
	size_t len;
};

static void append_cb(enum pg_status st, PGresult *res, const char *ss, const char *err, void *arg)
{
	struct append_ctx *ac = arg;
	if (st != PG_OK) {
		reply_pg_error(ac->call, st, ss, err);
		free(ac);
		return;
	}
	const char *status = PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "not_found";
	if (!strcmp(status, "not_found")) {
		rpc_error(ac->call, RPC_NOT_FOUND,
		          "leaseId: lease %" PRIu64 " not found on this node", ac->lease_id);
	} else if (!strcmp(status, "stale")) {
		rpc_error(ac->call, RPC_FAILED_PRECONDITION,
		          "fencingToken: does not match the lease's; the lease was re-placed");
	} else if (!strcmp(status, "gap")) {
		rpc_error(ac->call, RPC_FAILED_PRECONDITION,
		          "offset: past the end of the stored output; resume at %s",
		          PQgetvalue(res, 0, 1));
	} else {
		Gpumatch__V1__AppendLeaseLogsResponse resp =
		    GPUMATCH__V1__APPEND_LEASE_LOGS_RESPONSE__INIT;
		resp.next_offset = col_i64(res, 0, 1);
		resp.duplicate = !strcmp(PQgetvalue(res, 0, 2), "t");
		resp.truncated = !strcmp(PQgetvalue(res, 0, 3), "t");
		L.append_calls++;
		if (resp.duplicate)
			L.duplicate_calls++;
		else
			L.appended_bytes += ac->len;
		rpc_reply(ac->call, &resp.base);
	}
	free(ac);
}

void logs_append(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__AppendLeaseLogsRequest *req =
	    (const Gpumatch__V1__AppendLeaseLogsRequest *)msg;
	if (!req->node_id || !req->lease_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "%s: required",
		          req->node_id ? "leaseId" : "nodeId");
		return;
	}
	if (req->offset < 0) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "offset: must not be negative, got %" PRId64,
		          req->offset);
		return;
	}
	if (req->data.len > APPEND_MAX_BYTES) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "data: at most %d bytes per chunk, got %zu",
		          APPEND_MAX_BYTES, req->data.len);
		return;
	}
	struct append_ctx *ac = malloc(sizeof *ac);
	if (!ac) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	ac->call = call;
	ac->lease_id = req->lease_id;
	ac->len = req->data.len;
	struct numbuf l, n, o, f, off, cap, now;
	const char *params[] = { fmt_u64(&l, req->lease_id),
		                 fmt_u64(&n, req->node_id),
		                 fmt_u64(&o, scope_operator(call)),
		                 fmt_u64(&f, req->fencing_token),
		                 fmt_i64(&off, req->offset),
		                 req->data.len ? (const char *)req->data.data : "",
		                 req->eof ? "t" : "f",
		                 fmt_i64(&cap, app_get()->cfg.log_cap_bytes),
		                 fmt_i64(&now, now_us()) };
	int lengths[9] = { 0 };
	int formats[9] = { 0 };
	lengths[5] = (int)req->data.len;
	formats[5] = 1; /* the bytes as they are, no escaping */
	if (pg_exec_bin(app_get()->pg, NULL,
	                "SELECT status, next_offset, duplicate, truncated FROM gm_append_log("
	                "$1::bigint, $2::bigint, $3::bigint, $4::bigint, $5::bigint, $6::bytea,"
	                " $7::boolean, $8::bigint, $9::bigint)",
	                9, params, lengths, formats, append_cb, ac)) {
		free(ac);
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
	}
}

/* ---- GetJobLogs -------------------------------------------------------------------------------------- */

struct follow {
	struct follow *next;
	struct rpc_call *call;
	uint64_t job_id, tenant, op;
	uint32_t attempt, gang;
	int64_t offset;
	int max_bytes;
	int64_t until_us; /* follow: answer by then even with nothing */
	bool follow;
	bool querying; /* a query of ours is in flight */
	struct event *ev;
};

static void follow_free(struct follow *f)
{
	for (struct follow **p = &L.head; *p; p = &(*p)->next)
		if (*p == f) {
			*p = f->next;
			break;
		}
	if (f->ev)
		event_free(f->ev);
	free(f);
}

static void logs_query(struct follow *f);

static void recheck_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	logs_query(arg);
}

/* Columns: 0 found job, 1 attempt, 2 lease id, 3 lease state, 4 kept, 5
 * total, 6 truncated, 7 eof, 8 offset of data, 9 data, 10 visible (the
 * caller may see this lease). */
static void logs_cb(enum pg_status st, PGresult *res, const char *ss, const char *err, void *arg)
{
	struct follow *f = arg;
	f->querying = false;
	if (st != PG_OK) {
		reply_pg_error(f->call, st, ss, err);
		follow_free(f);
		return;
	}
	if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), "t")) {
		rpc_error(f->call, RPC_NOT_FOUND, "jobId: job %" PRIu64 " not found", f->job_id);
		follow_free(f);
		return;
	}
	if (strcmp(PQgetvalue(res, 0, 10), "t")) {
		rpc_error(f->call, RPC_NOT_FOUND,
		          "jobId: job %" PRIu64 " has no attempt on your nodes to read", f->job_id);
		follow_free(f);
		return;
	}
	Gpumatch__V1__GetJobLogsResponse resp = GPUMATCH__V1__GET_JOB_LOGS_RESPONSE__INIT;
	resp.job_id = f->job_id;
	resp.attempt = (uint32_t)col_u64(res, 0, 1);
	resp.lease_id = col_u64(res, 0, 2);
	int lease_state = (int)col_i64(res, 0, 3);
	int64_t kept = col_i64(res, 0, 4), total = col_i64(res, 0, 5);
	bool truncated = !strcmp(PQgetvalue(res, 0, 6), "t");
	resp.offset = col_i64(res, 0, 8);
	size_t len = 0;
	uint8_t *data = NULL;
	if (!PQgetisnull(res, 0, 9)) {
		data = col_bytea(res, 0, 9, &len);
		if (!data) {
			rpc_error(f->call, RPC_INTERNAL, "stored output could not be read");
			follow_free(f);
			return;
		}
	}
	resp.data.data = data;
	resp.data.len = len;
	resp.next_offset = resp.offset + (int64_t)len;
	resp.truncated = truncated;
	resp.truncated_at = truncated ? kept : 0;
	resp.total_bytes = total;
	/* the attempt may still write while its lease is live (or was never
	 * placed); an ended lease's agent sends every byte before its final
	 * report, so after that nothing follows */
	bool ended = resp.lease_id && lease_state > 4;
	resp.complete = ended && resp.next_offset >= kept;
	if (truncated && resp.next_offset >= kept)
		resp.next_offset = kept;
	if (!len && !resp.complete && f->follow && now_us() < f->until_us) {
		free(data);
		struct timeval tv = { 0, FOLLOW_RECHECK * 1000 };
		evtimer_add(f->ev, &tv);
		return;
	}
	rpc_reply(f->call, &resp.base);
	free(data);
	follow_free(f);
}

static void logs_query(struct follow *f)
{
	struct numbuf j, t, o, a, g, off, mx;
	const char *params[] = { fmt_u64(&j, f->job_id),    fmt_u64(&t, f->tenant),
		                 fmt_u64(&o, f->op),        fmt_u64(&a, f->attempt),
		                 fmt_u64(&g, f->gang),      fmt_i64(&off, f->offset),
		                 fmt_i64(&mx, f->max_bytes) };
	/* a negative offset counts back from the end of what is kept */
	f->querying = true;
	if (pg_exec(
	        app_get()->pg, NULL,
	        "WITH j AS (SELECT j.id, CASE WHEN $4::integer = 0 THEN j.attempts"
	        "   ELSE $4::integer END AS att FROM jobs j"
	        "   WHERE j.id = $1::bigint AND ($2::bigint = 0 OR j.tenant_id = $2::bigint)),"
	        " l AS (SELECT x.id, x.state, x.node_id FROM leases x, j"
	        "   WHERE x.job_id = j.id AND x.attempt = j.att AND x.gang_index = $5::integer),"
	        " g AS (SELECT y.* FROM lease_logs y, l WHERE y.lease_id = l.id),"
	        " s AS (SELECT CASE WHEN $6::bigint >= 0 THEN least($6::bigint,"
	        "   coalesce((SELECT kept_bytes FROM g), 0))"
	        "   ELSE greatest(0, coalesce((SELECT kept_bytes FROM g), 0) + $6::bigint) END AS "
	        "o),"
	        " c AS (SELECT c.off, c.data FROM lease_log_chunks c, l, s"
	        "   WHERE c.lease_id = l.id AND c.off + length(c.data) > s.o"
	        "     AND c.off < s.o + $7::integer)"
	        " SELECT (SELECT count(*) FROM j) = 1, coalesce((SELECT att FROM j), 0),"
	        "  coalesce((SELECT id FROM l), 0), coalesce((SELECT state FROM l), 0),"
	        "  coalesce((SELECT kept_bytes FROM g), 0), coalesce((SELECT total_bytes FROM g), "
	        "0),"
	        "  coalesce((SELECT truncated FROM g), false), coalesce((SELECT eof FROM g), "
	        "false),"
	        "  (SELECT o FROM s),"
	        "  (SELECT substring(string_agg(c.data, ''::bytea ORDER BY c.off)"
	        "     FROM ((SELECT o FROM s) - min(c.off) + 1)::integer FOR $7::integer) FROM c),"
	        "  $3::bigint = 0 OR EXISTS (SELECT 1 FROM l JOIN nodes n ON n.id = l.node_id"
	        "     WHERE n.operator_id = $3::bigint)",
	        7, params, logs_cb, f)) {
		f->querying = false;
		rpc_error(f->call, RPC_UNAVAILABLE, "shutting down");
		follow_free(f);
	}
}

void logs_get(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__GetJobLogsRequest *req = (const Gpumatch__V1__GetJobLogsRequest *)msg;
	const struct principal *who = rpc_principal(call);
	if (!req->job_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "jobId: required");
		return;
	}
	if (req->max_bytes < 0 || req->max_bytes > PAGE_MAX) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "maxBytes: 0..%d, got %d", PAGE_MAX,
		          req->max_bytes);
		return;
	}
	if (req->wait_ms > FOLLOW_MAX) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "waitMs: at most %d, got %u", FOLLOW_MAX,
		          req->wait_ms);
		return;
	}
	if (req->attempt > 1000000 || req->gang_index > 1000000) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "%s: out of range",
		          req->attempt > 1000000 ? "attempt" : "gangIndex");
		return;
	}
	struct follow *f = calloc(1, sizeof *f);
	if (!f || !(f->ev = evtimer_new(app_get()->base, recheck_cb, f))) {
		free(f);
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	f->call = call;
	f->job_id = req->job_id;
	f->tenant = who->role == ROLE_TENANT ? who->tenant_id : 0;
	f->op = who->role == ROLE_OPERATOR ? who->operator_id : 0;
	f->attempt = req->attempt;
	f->gang = req->gang_index;
	f->offset = req->offset;
	f->max_bytes = req->max_bytes ? req->max_bytes : PAGE_DEFAULT;
	f->follow = req->follow;
	uint32_t wait = req->wait_ms ? req->wait_ms : FOLLOW_DEFAULT;
	f->until_us = now_us() + (int64_t)wait * 1000;
	if (f->follow)
		rpc_set_timeout(call, (int)wait + 5000);
	f->next = L.head;
	L.head = f;
	logs_query(f);
}

/* ---- retention, lifecycle, metrics -------------------------------------------------------------------- */

static void sweep_done_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                          void *arg)
{
	(void)res;
	(void)ss;
	(void)arg;
	if (st != PG_OK)
		log_warn("log retention sweep failed err=\"%s\"", err ? err : "");
}

/* Output of leases that ended, and was last written, longer ago than the
 * retention is deleted (a bounded batch per sweep). Any replica may run it:
 * deleting is idempotent. */
static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	struct app *a = app_get();
	struct numbuf cut;
	const char *params[] = { fmt_i64(&cut,
		                         now_us() - (int64_t)a->cfg.log_retention_s * 1000000) };
	pg_exec(a->pg, NULL,
	        "WITH d AS (SELECT g.lease_id FROM lease_logs g JOIN leases l ON l.id = g.lease_id"
	        "   WHERE g.updated_at_us < $1::bigint AND l.state > 4 LIMIT 500),"
	        " c AS (DELETE FROM lease_log_chunks c USING d WHERE c.lease_id = d.lease_id)"
	        " DELETE FROM lease_logs g USING d WHERE g.lease_id = d.lease_id",
	        1, params, sweep_done_cb, NULL);
}

int logs_start(struct app *a, char *err, size_t err_len)
{
	memset(&L, 0, sizeof L);
	L.sweep_ev = event_new(a->base, -1, EV_PERSIST, sweep_cb, NULL);
	if (!L.sweep_ev) {
		snprintf(err, err_len, "out of memory");
		return -1;
	}
	struct timeval tv = { 60, 0 };
	event_add(L.sweep_ev, &tv);
	return 0;
}

/* Answers every follower now with what the next look finds (no more
 * waiting): the server is draining. */
void logs_drain(struct app *a)
{
	(void)a;
	for (struct follow *f = L.head; f; f = f->next)
		f->until_us = 0;
}

void logs_stop(struct app *a)
{
	(void)a;
	if (L.sweep_ev)
		event_free(L.sweep_ev);
	L.sweep_ev = NULL;
	/* those with a query in flight are answered by its callback */
	for (struct follow *f = L.head, *next; f; f = next) {
		next = f->next;
		if (f->querying)
			continue;
		rpc_error(f->call, RPC_UNAVAILABLE, "shutting down");
		follow_free(f);
	}
}

void logs_metrics(struct app *a, struct evbuffer *b)
{
	(void)a;
	evbuffer_add_printf(
	    b,
	    "# HELP gpumatch_log_appends_total AppendLeaseLogs calls answered.\n"
	    "# TYPE gpumatch_log_appends_total counter\n"
	    "gpumatch_log_appends_total %" PRIu64 "\n"
	    "# HELP gpumatch_log_duplicate_appends_total Appends that held only "
	    "bytes already stored (retries).\n"
	    "# TYPE gpumatch_log_duplicate_appends_total counter\n"
	    "gpumatch_log_duplicate_appends_total %" PRIu64 "\n"
	    "# HELP gpumatch_log_appended_bytes_total Bytes of job output received.\n"
	    "# TYPE gpumatch_log_appended_bytes_total counter\n"
	    "gpumatch_log_appended_bytes_total %" PRIu64 "\n",
	    L.append_calls, L.duplicate_calls, L.appended_bytes);
}
