/* ledger.c — money: submits admitted against tenants' available balances
 * (cached, refreshed every second), the leader's settle sweep that posts
 * lease usage in batches, top-ups and payouts, the audit, transfer
 * listings, usage and revenue reports (admin, tenant and operator scoped),
 * and ledger counters for /metrics. Every rule about money lives in SQL
 * (migrations/0003_ledger.sql); this file validates, drives and answers. */
#include "ledger.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpumatch/v1/admin_service.pb-c.h"
#include "gpumatch/v1/job_service.pb-c.h"
#include "gpumatch/v1/node_service.pb-c.h"
#include "handlers.h"
#include "log.h"
#include "series.h"
#include "service.h"
#include "strbuf.h"

#define CACHE_REFRESH_MS  1000
#define SWEEP_BATCH       2000 /* leases per settlement transaction */
#define STOP_GRACE_US     30000000LL
#define AUDIT_TIMEOUT_MS  600000
#define AUDIT_GRACE_US    60000000LL /* an ended lease may wait this long to settle */
#define DEFAULT_WINDOW_US (30LL * 24 * 3600 * 1000000)
#define IDEM_MAX          128
#define COMMENT_MAX       512

/* ---- state ------------------------------------------------------------------------------ */

struct avail_slot {
	uint64_t tenant; /* 0 = empty */
	int64_t avail_micros;
};

static struct {
	struct app *a;
	uint32_t fee_ppm;
	/* tenant id -> available micros, open addressing; replaced whole */
	struct avail_slot *slots;
	size_t cap; /* power of two, or 0 */
	int64_t max_node_price_micros;
	bool cache_busy, stopped;
	int inflight;
	struct event *cache_ev, *sweep_ev;
	/* one sweep per shard of the leases (id % shards), in parallel; each
	 * walks its running leases in id order */
	struct sweep_shard {
		bool busy;
		uint64_t meter_after;
	} shard[LEDGER_MAX_SWEEP_SHARDS];
	/* counters (this process) */
	uint64_t sweeps, transfers_swept, leases_settled, leases_metered, leases_stopped;
	uint64_t gross_micros, fee_micros, gpu_seconds;
	uint64_t top_ups, payouts, admitted, refused, sweep_failures;
} G;

void ledger_set_fee_ppm(uint32_t ppm)
{
	G.fee_ppm = ppm;
}

uint32_t ledger_fee_ppm(void)
{
	return G.fee_ppm;
}

static size_t slot_of(const struct avail_slot *slots, size_t cap, uint64_t tenant)
{
	size_t i = (size_t)(tenant * 0x9E3779B97F4A7C15ull) & (cap - 1);
	while (slots[i].tenant && slots[i].tenant != tenant)
		i = (i + 1) & (cap - 1);
	return i;
}

static struct avail_slot *cache_find(uint64_t tenant)
{
	if (!G.cap)
		return NULL;
	struct avail_slot *s = &G.slots[slot_of(G.slots, G.cap, tenant)];
	return s->tenant ? s : NULL;
}

static size_t cache_count(void)
{
	size_t n = 0;
	for (size_t i = 0; i < G.cap; i++)
		n += G.slots[i].tenant != 0;
	return n;
}

/* Builds a table for n entries plus room. */
static struct avail_slot *cache_alloc(size_t n, size_t *cap)
{
	size_t c = 64;
	while (c < 2 * n + 16)
		c *= 2;
	struct avail_slot *s = calloc(c, sizeof *s);
	if (!s) {
		log_error("out of memory");
		abort();
	}
	*cap = c;
	return s;
}

static void cache_put(uint64_t tenant, int64_t avail)
{
	if (!G.cap || 2 * (cache_count() + 1) > G.cap) {
		size_t cap;
		struct avail_slot *s = cache_alloc(cache_count() + 1, &cap);
		for (size_t i = 0; i < G.cap; i++)
			if (G.slots[i].tenant)
				s[slot_of(s, cap, G.slots[i].tenant)] = G.slots[i];
		free(G.slots);
		G.slots = s;
		G.cap = cap;
	}
	struct avail_slot *s = &G.slots[slot_of(G.slots, G.cap, tenant)];
	s->tenant = tenant;
	s->avail_micros = avail;
}

/* ---- shared helpers ---------------------------------------------------------------------- */

static int64_t muldiv_ceil(int64_t a, int64_t b, int64_t c, int64_t d)
{
	__int128 v = (__int128)a * b * c;
	__int128 q = (v + d - 1) / d;
	return q > INT64_MAX ? INT64_MAX : (int64_t)q;
}

int64_t ledger_worst_case_micros(int64_t max_price_micros, uint32_t gpus, int64_t max_duration_us)
{
	int64_t price = max_price_micros > 0 ? max_price_micros : G.max_node_price_micros;
	if (price <= 0 || !gpus || max_duration_us <= 0)
		return 0;
	return muldiv_ceil(price, gpus, max_duration_us, 3600000000LL);
}

static bool valid_idem(const char *s)
{
	size_t n = strlen(s);
	if (n < 1 || n > IDEM_MAX)
		return false;
	for (; *s; s++)
		if (*s < 0x21 || *s > 0x7e)
			return false;
	return true;
}

static bool valid_text(const char *s, size_t max)
{
	if (strlen(s) > max)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return false;
	return true;
}

/* Resolves a window: [start, end) with end 0 = now; unset = the last
 * def_us (0: required). Answers the call and returns -1 when invalid. */
static int resolve_window(struct rpc_call *call, const Gpumatch__V1__TimeWindow *w,
                          const char *field, int64_t def_us, int64_t *ws, int64_t *we)
{
	int64_t now = now_us();
	if (!w) {
		if (!def_us) {
			rpc_error(call, RPC_INVALID_ARGUMENT, "%s: required", field);
			return -1;
		}
		*ws = now - def_us;
		*we = now;
		return 0;
	}
	if (w->start_us < 0 || w->end_us < 0) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "%s.%s: must not be negative", field,
		          w->start_us < 0 ? "startUs" : "endUs");
		return -1;
	}
	*ws = w->start_us;
	*we = w->end_us ? w->end_us : now;
	if (*we <= *ws) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "%s.endUs: must be after %s.startUs", field,
		          field);
		return -1;
	}
	return 0;
}

static uint32_t ppm_of(int64_t used, int64_t avail)
{
	if (avail <= 0 || used <= 0)
		return 0;
	__int128 v = (__int128)used * 1000000 / avail;
	return v > 1000000 ? 1000000 : (uint32_t)v;
}

static bool col_bool(const PGresult *r, int row, int col)
{
	return !strcmp(PQgetvalue(r, row, col), "t");
}

/* ---- admission ----------------------------------------------------------------------------- */

struct admit {
	struct rpc_call *call;
	uint64_t tenant;
	int64_t worst;
	void (*go)(void *);
	void (*drop)(void *);
	void *arg;
};

/* Money in a message a person reads: currency units rounded to the cent,
 * as the gpumatch command prints it ("6681.60"; "<0.01" below a cent). */
static const char *money_str(char *buf, size_t len, int64_t m)
{
	const char *sign = m < 0 ? "-" : "";
	uint64_t a = m < 0 ? (uint64_t)0 - (uint64_t)m : (uint64_t)m;
	uint64_t cents = a / 10000 + (a % 10000 >= 5000);
	if (a && !cents)
		snprintf(buf, len, "%s<0.01", sign);
	else
		snprintf(buf, len, "%s%" PRIu64 ".%02" PRIu64, sign, cents / 100, cents % 100);
	return buf;
}

static void admit_decide(struct admit *ad, int64_t avail)
{
	if (avail >= ad->worst) {
		G.admitted++;
		ad->go(ad->arg);
	} else {
		G.refused++;
		char w[32], av[32];
		rpc_error(ad->call, RPC_FAILED_PRECONDITION,
		          "spec: the job's worst case costs %s (max price per GPU-hour x GPUs x "
		          "max duration) but the tenant has %s available (balance - holds + credit "
		          "limit); top up, or lower the job's maxPricePerGpuHour or maxDuration",
		          money_str(w, sizeof w, ad->worst), money_str(av, sizeof av, avail));
		ad->drop(ad->arg);
	}
}

static void admit_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                     void *arg)
{
	struct admit *ad = arg;
	G.inflight--;
	if (st != PG_OK) {
		reply_pg_error(ad->call, st, sqlstate, err);
		ad->drop(ad->arg);
	} else {
		int64_t avail = PQntuples(res) == 1 ? col_i64(res, 0, 0) : 0;
		if (PQntuples(res) == 1)
			cache_put(ad->tenant, avail);
		admit_decide(ad, avail);
	}
	free(ad);
}

void ledger_admit(struct rpc_call *call, uint64_t tenant_id, int64_t max_price_micros,
                  uint32_t gpus, int64_t max_duration_us, void (*go)(void *arg),
                  void (*drop)(void *arg), void *arg)
{
	int64_t worst = ledger_worst_case_micros(max_price_micros, gpus, max_duration_us);
	if (worst <= 0) {
		G.admitted++;
		go(arg);
		return;
	}
	struct admit *ad = malloc(sizeof *ad);
	if (!ad) {
		log_error("out of memory");
		abort();
	}
	*ad = (struct admit){ call, tenant_id, worst, go, drop, arg };
	const struct avail_slot *s = cache_find(tenant_id);
	if (s) {
		admit_decide(ad, s->avail_micros);
		free(ad);
		return;
	}
	struct numbuf t;
	const char *params[] = { fmt_u64(&t, tenant_id) };
	G.inflight++;
	if (pg_exec(G.a->pg, NULL,
	            "SELECT balance_micros - pending_debits_micros - floor_micros"
	            " FROM ledger_accounts WHERE kind = 1 AND owner_id = $1::bigint",
	            1, params, admit_cb, ad)) {
		G.inflight--;
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
		drop(arg);
		free(ad);
	}
}

static void cache_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                     void *arg)
{
	(void)sqlstate;
	(void)arg;
	G.inflight--;
	G.cache_busy = false;
	if (st != PG_OK) {
		log_debug("ledger balance refresh failed err=\"%s\"", err);
		return;
	}
	int n = PQntuples(res);
	size_t cap;
	struct avail_slot *s = cache_alloc((size_t)n, &cap);
	for (int i = 0; i < n; i++) {
		uint64_t t = col_u64(res, i, 0);
		if (!t) {
			G.max_node_price_micros = col_i64(res, i, 1);
			continue;
		}
		struct avail_slot *e = &s[slot_of(s, cap, t)];
		e->tenant = t;
		e->avail_micros = col_i64(res, i, 1);
	}
	free(G.slots);
	G.slots = s;
	G.cap = cap;
}

static void cache_tick_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	if (G.cache_busy || G.stopped)
		return;
	G.cache_busy = true;
	G.inflight++;
	/* one row per tenant, and the dearest node's price as tenant 0 */
	if (pg_exec(
	        G.a->pg, NULL,
	        "SELECT owner_id, balance_micros - pending_debits_micros - floor_micros"
	        "  FROM ledger_accounts WHERE kind = 1"
	        " UNION ALL SELECT 0, coalesce(max(price_micros), 0) FROM nodes WHERE state <> 6",
	        0, NULL, cache_cb, NULL)) {
		G.inflight--;
		G.cache_busy = false;
	}
}

/* ---- the settle sweep (leader) ---------------------------------------------------------- */

static void sweep_run(int shard);

static void sweep_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                     void *arg)
{
	(void)sqlstate;
	struct sweep_shard *sh = arg;
	G.inflight--;
	sh->busy = false;
	if (st != PG_OK || PQntuples(res) != 1) {
		G.sweep_failures++;
		log_warn("settle sweep failed shard=%d err=\"%s\"", (int)(sh - G.shard), err);
		return;
	}
	G.sweeps++;
	uint64_t transfers = col_u64(res, 0, 0), settled = col_u64(res, 0, 1);
	uint64_t metered = col_u64(res, 0, 2), stopped = col_u64(res, 0, 6);
	G.transfers_swept += transfers;
	G.leases_settled += settled;
	G.leases_metered += metered;
	G.gross_micros += col_u64(res, 0, 3);
	G.fee_micros += col_u64(res, 0, 4);
	G.gpu_seconds += col_u64(res, 0, 5);
	G.leases_stopped += stopped;
	sh->meter_after = col_u64(res, 0, 7);
	if (settled || stopped)
		log_debug("settled leases=%" PRIu64 " metered=%" PRIu64 " transfers=%" PRIu64
		          " stopped=%" PRIu64,
		          settled, metered, transfers, stopped);
	if (stopped)
		log_info("leases stopped: tenant funds held for them are used up count=%" PRIu64,
		         stopped);
	/* a full batch: more is waiting */
	if ((settled + metered >= SWEEP_BATCH || sh->meter_after) && !G.stopped)
		sweep_run((int)(sh - G.shard));
}

static void sweep_run(int i)
{
	struct sweep_shard *sh = &G.shard[i];
	int shards = G.a->cfg.ledger_sweep_shards;
	if (sh->busy || G.stopped || i >= shards || !schedloop_is_leader(G.a))
		return;
	int64_t now = now_us();
	int64_t meter_ms = G.a->cfg.ledger_meter_interval_ms;
	struct numbuf n, mb, lim, gr, af, si, sn;
	const char *params[] = { fmt_i64(&n, now),
		                 fmt_i64(&mb, now - meter_ms * 1000),
		                 fmt_i64(&lim, SWEEP_BATCH),
		                 fmt_i64(&gr, STOP_GRACE_US),
		                 fmt_u64(&af, sh->meter_after),
		                 fmt_i64(&si, i),
		                 fmt_i64(&sn, shards) };
	sh->busy = true;
	G.inflight++;
	if (pg_exec(G.a->pg, NULL,
	            "SELECT transfers, settled, metered, gross_micros, fee_micros, gpu_seconds,"
	            " stopped, next_after FROM gm_ledger_sweep($1::bigint, $2::bigint, $3::integer,"
	            " $4::bigint, $5::bigint, $6::integer, $7::integer)",
	            7, params, sweep_cb, sh)) {
		G.inflight--;
		sh->busy = false;
	}
}

static void sweep_tick_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	for (int i = 0; i < G.a->cfg.ledger_sweep_shards; i++)
		sweep_run(i);
}

/* ---- transfers as messages -------------------------------------------------------------- */

#define TRANSFER_COLS                                                                       \
	"t.id, t.idempotency_id, t.debit_account_id, t.credit_account_id, t.amount_micros," \
	" t.kind, t.state, t.pending_id, t.lease_id, t.comment, t.created_by, t.created_at_us"
#define TRANSFER_NCOLS 12

static void transfer_from_row(const PGresult *r, int row, int c0, Gpumatch__V1__Transfer *t)
{
	gpumatch__v1__transfer__init(t);
	t->id = col_u64(r, row, c0);
	t->idempotency_id = PQgetvalue(r, row, c0 + 1);
	t->debit_account_id = col_u64(r, row, c0 + 2);
	t->credit_account_id = col_u64(r, row, c0 + 3);
	t->amount_micros = col_i64(r, row, c0 + 4);
	t->kind = (Gpumatch__V1__TransferKind)col_i64(r, row, c0 + 5);
	t->state = (Gpumatch__V1__TransferState)col_i64(r, row, c0 + 6);
	t->pending_id = col_u64(r, row, c0 + 7);
	t->lease_id = col_u64(r, row, c0 + 8);
	t->comment = PQgetvalue(r, row, c0 + 9);
	t->created_by = PQgetvalue(r, row, c0 + 10);
	t->created_at_us = col_i64(r, row, c0 + 11);
}

#define ACCOUNT_COLS                                                                       \
	"a.id, a.kind, a.owner_id, a.currency, a.balance_micros, a.pending_debits_micros," \
	" a.pending_credits_micros, a.floor_micros, a.updated_at_us"
#define ACCOUNT_NCOLS 9

static void account_from_row(const PGresult *r, int row, int c0, Gpumatch__V1__Account *a)
{
	gpumatch__v1__account__init(a);
	a->id = col_u64(r, row, c0);
	a->kind = (Gpumatch__V1__AccountKind)col_i64(r, row, c0 + 1);
	a->owner_id = col_u64(r, row, c0 + 2);
	a->currency = PQgetvalue(r, row, c0 + 3);
	a->balance_micros = col_i64(r, row, c0 + 4);
	a->pending_debits_micros = col_i64(r, row, c0 + 5);
	a->pending_credits_micros = col_i64(r, row, c0 + 6);
	a->floor_micros = col_i64(r, row, c0 + 7);
	a->updated_at_us = col_i64(r, row, c0 + 8);
}

/* ---- TopUpTenant / PayoutOperator ---------------------------------------------------------- */

struct move_q {
	struct rpc_call *call;
	bool payout;
	uint64_t owner;
};

static void move_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                    void *arg)
{
	struct move_q *q = arg;
	/* the database's own text (function names, CONTEXT lines) stays in
	 * the log; the caller reads one plain sentence */
	if (st == PG_ERROR && !strcmp(sqlstate, "GM002")) {
		log_info("%s refused owner=%" PRIu64 " err=\"%s\"", q->payout ? "payout" : "top-up",
		         q->owner, err);
		rpc_error(q->call, RPC_FAILED_PRECONDITION,
		          "idempotencyId: already used for another %s with a different amount or "
		          "account; use a new id for a new %s",
		          q->payout ? "payout" : "top-up", q->payout ? "payout" : "top-up");
	} else if (st == PG_ERROR && !strcmp(sqlstate, "GM004")) {
		/* "account A has N micros above its floor, M asked" */
		const char *has = err ? strstr(err, " has ") : NULL;
		char av[32] = "";
		if (has)
			money_str(av, sizeof av, strtoll(has + 5, NULL, 10));
		rpc_error(q->call, RPC_FAILED_PRECONDITION,
		          "amountMicros: exceeds the operator's unpaid earnings%s%s%s",
		          *av ? " (" : "", av, *av ? " available)" : "");
	} else if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
	} else if (PQntuples(res) != 1) {
		rpc_error(q->call, RPC_NOT_FOUND, "%s: %s %" PRIu64 " not found",
		          q->payout ? "operatorId" : "tenantId", q->payout ? "operator" : "tenant",
		          q->owner);
	} else {
		Gpumatch__V1__Transfer t;
		Gpumatch__V1__Account acct;
		transfer_from_row(res, 0, 0, &t);
		account_from_row(res, 0, TRANSFER_NCOLS, &acct);
		bool dup = col_bool(res, 0, TRANSFER_NCOLS + ACCOUNT_NCOLS);
		if (!dup) {
			if (q->payout)
				G.payouts++;
			else
				G.top_ups++;
			log_info("%s owner=%" PRIu64 " amount_micros=%" PRId64 " transfer=%" PRIu64,
			         q->payout ? "payout" : "top-up", q->owner, t.amount_micros, t.id);
		}
		if (q->payout) {
			Gpumatch__V1__PayoutOperatorResponse out =
			    GPUMATCH__V1__PAYOUT_OPERATOR_RESPONSE__INIT;
			out.transfer = &t;
			out.account = &acct;
			out.duplicate = dup;
			rpc_reply(q->call, &out.base);
		} else {
			/* this replica admits the tenant's next submits at once */
			cache_put(q->owner, acct.balance_micros - acct.pending_debits_micros -
			                        acct.floor_micros);
			Gpumatch__V1__TopUpTenantResponse out =
			    GPUMATCH__V1__TOP_UP_TENANT_RESPONSE__INIT;
			out.transfer = &t;
			out.account = &acct;
			out.duplicate = dup;
			rpc_reply(q->call, &out.base);
		}
	}
	free(q);
}

/* One posted transfer between the owner's account (kind) and the external
 * account, then the transfer and the owner's account as they stand. */
static void move_money(struct rpc_call *call, bool payout, uint64_t owner, int64_t amount,
                       const char *idem, const char *comment)
{
	struct move_q *q = malloc(sizeof *q);
	if (!q) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	q->call = call;
	q->payout = payout;
	q->owner = owner;
	const struct principal *who = rpc_principal(call);
	char by[96];
	snprintf(by, sizeof by, "admin:%" PRIu64, who->token_id);
	struct numbuf o, am, now;
	const char *params[] = { fmt_u64(&o, owner),     idem, fmt_i64(&am, amount), comment, by,
		                 fmt_i64(&now, now_us()) };
	if (pg_exec(app_get()->pg, NULL,
	            payout ? "SELECT * FROM gm_ledger_move(2::smallint, $1::bigint, $2, $3::bigint,"
	                     " 6::smallint, $4, $5, $6::bigint)"
	                   : "SELECT * FROM gm_ledger_move(1::smallint, $1::bigint, $2, $3::bigint,"
	                     " 1::smallint, $4, $5, $6::bigint)",
	            6, params, move_cb, q)) {
		free(q);
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
	}
}

void ledger_top_up(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__TopUpTenantRequest *req = (const void *)msg;
	if (!req->tenant_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "tenantId: required");
		return;
	}
	if (req->amount_micros <= 0) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "amountMicros: must be greater than 0, got %" PRId64, req->amount_micros);
		return;
	}
	if (!valid_idem(req->idempotency_id)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "idempotencyId: required, 1..%d printable ASCII characters", IDEM_MAX);
		return;
	}
	if (!valid_text(req->comment, COMMENT_MAX)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "comment: at most %d bytes, no control characters", COMMENT_MAX);
		return;
	}
	move_money(call, false, req->tenant_id, req->amount_micros, req->idempotency_id,
	           req->comment);
}

void ledger_payout(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__PayoutOperatorRequest *req = (const void *)msg;
	if (!req->operator_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "operatorId: required");
		return;
	}
	if (req->amount_micros <= 0) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "amountMicros: must be greater than 0, got %" PRId64, req->amount_micros);
		return;
	}
	if (!valid_idem(req->idempotency_id)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "idempotencyId: required, 1..%d printable ASCII characters", IDEM_MAX);
		return;
	}
	if (!valid_text(req->reference, 256)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "reference: at most 256 bytes, no control characters");
		return;
	}
	if (!valid_text(req->comment, COMMENT_MAX)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "comment: at most %d bytes, no control characters", COMMENT_MAX);
		return;
	}
	char comment[COMMENT_MAX + 300];
	if (*req->reference)
		snprintf(comment, sizeof comment, "ref %s%s%s", req->reference,
		         *req->comment ? ": " : "", req->comment);
	else
		snprintf(comment, sizeof comment, "%s", req->comment);
	move_money(call, true, req->operator_id, req->amount_micros, req->idempotency_id, comment);
}

/* ---- AuditLedger --------------------------------------------------------------------------- */

/* Every invariant as rows (kind, account, transfer, expected, actual,
 * message), one snapshot; a last row of kind 0 carries the counts. */
static const char audit_sql[] =
    "WITH e AS (SELECT transfer_id, sum(amount_micros) AS s, count(*) AS n"
    "             FROM ledger_entries GROUP BY transfer_id),"
    " ae AS (SELECT account_id, sum(amount_micros) AS s FROM ledger_entries GROUP BY account_id),"
    " res AS (SELECT p.id AS hold, p.debit_account_id AS acct, p.amount_micros AS amt,"
    "           p.lease_id,"
    "           coalesce(sum(r.amount_micros) FILTER (WHERE r.kind = 2), 0) AS posted,"
    "           coalesce(sum(r.amount_micros) FILTER (WHERE r.kind = 5), 0) AS released,"
    "           count(r.id) FILTER (WHERE r.kind = 5) AS nrel"
    "      FROM ledger_transfers p LEFT JOIN ledger_transfers r ON r.pending_id = p.id"
    "     WHERE p.state = 1 GROUP BY p.id),"
    " outs AS (SELECT acct, sum(amt - posted - released) AS o FROM res GROUP BY acct)"
    " SELECT 1, 0::bigint, t.id, 0::bigint, coalesce(e.s, 0)::bigint,"
    "   CASE WHEN t.state = 2 THEN 'posted transfer whose entries do not sum to zero or are not'"
    "     || ' one debit and one credit (' || coalesce(e.n, 0) || ' entries)'"
    "     ELSE 'a pending or voided transfer has entries' END"
    "   FROM ledger_transfers t LEFT JOIN e ON e.transfer_id = t.id"
    "  WHERE (t.state = 2 AND (coalesce(e.n, 0) <> 2 OR e.s <> 0))"
    "     OR (t.state <> 2 AND e.n IS NOT NULL)"
    " UNION ALL SELECT 1, 0::bigint, t.id, 0::bigint, t.amount_micros,"
    "   'transfer names an account that does not exist'"
    "   FROM ledger_transfers t"
    "  WHERE NOT EXISTS (SELECT 1 FROM ledger_accounts a WHERE a.id = t.debit_account_id)"
    "     OR NOT EXISTS (SELECT 1 FROM ledger_accounts a WHERE a.id = t.credit_account_id)"
    " UNION ALL SELECT 2, a.id, 0, coalesce(ae.s, 0)::bigint, a.balance_micros,"
    "   'stored balance differs from the sum of the account''s entries'"
    "   FROM ledger_accounts a LEFT JOIN ae ON ae.account_id = a.id"
    "  WHERE a.balance_micros <> coalesce(ae.s, 0)"
    " UNION ALL SELECT 2, a.id, 0, coalesce(o.o, 0)::bigint, a.pending_debits_micros,"
    "   'pending debits differ from the holds outstanding on the account'"
    "   FROM ledger_accounts a LEFT JOIN outs o ON o.acct = a.id"
    "  WHERE a.pending_debits_micros <> coalesce(o.o, 0)"
    " UNION ALL SELECT 2, a.id, 0, CASE WHEN a.id = 2 THEN"
    "   (SELECT coalesce(sum(o), 0) FROM outs) ELSE 0 END::bigint, a.pending_credits_micros,"
    "   'pending credits differ from the holds outstanding'"
    "   FROM ledger_accounts a WHERE a.pending_credits_micros <> CASE WHEN a.id = 2 THEN"
    "   (SELECT coalesce(sum(o), 0) FROM outs) ELSE 0 END"
    " UNION ALL SELECT 2, a.id, 0, 0, a.balance_micros,"
    "   'escrow holds posted money that was not paid out'"
    "   FROM ledger_accounts a WHERE a.id = 2 AND a.balance_micros <> 0"
    " UNION ALL SELECT 3, a.id, 0, a.floor_micros, a.balance_micros - a.pending_debits_micros,"
    "   'account below its floor (balance - pending debits)'"
    "   FROM ledger_accounts a WHERE a.balance_micros - a.pending_debits_micros < a.floor_micros"
    " UNION ALL SELECT 4, 0, l.hold_id, 0, l.hold_micros - l.posted_micros,"
    "   'lease ' || l.id || ' ended ' || ((($1::bigint - l.ended_at_us) / 1000000)) ||"
    "   ' s ago and is not settled'"
    "   FROM leases l WHERE l.state > 4 AND NOT l.ledger_settled"
    "    AND l.ended_at_us < $1::bigint - $2::bigint"
    " UNION ALL SELECT 4, res.acct, res.hold, 0, (res.amt - res.posted - res.released)::bigint,"
    "   'the hold of settled lease ' || l.id || ' is still outstanding'"
    "   FROM res JOIN leases l ON l.id = res.lease_id"
    "  WHERE l.ledger_settled AND res.amt - res.posted - res.released <> 0"
    " UNION ALL SELECT 4, 0, l.hold_id, l.hold_micros, 0,"
    "   'lease ' || l.id || ' took a hold that has no pending transfer'"
    "   FROM leases l LEFT JOIN ledger_transfers p ON p.id = l.hold_id"
    "  WHERE l.hold_micros > 0 AND (p.id IS NULL OR p.state <> 1 OR p.amount_micros <> "
    "l.hold_micros)"
    " UNION ALL SELECT 5, res.acct, res.hold, 1, res.nrel, 'hold released more than once'"
    "   FROM res WHERE res.nrel > 1"
    " UNION ALL SELECT 5, 0, r.id, 0, 0,"
    "   'resolves transfer ' || r.pending_id || ', which is not a pending transfer between the "
    "same accounts'"
    "   FROM ledger_transfers r LEFT JOIN ledger_transfers p ON p.id = r.pending_id"
    "  WHERE r.pending_id <> 0 AND (p.id IS NULL OR p.state <> 1"
    "    OR p.debit_account_id <> r.debit_account_id OR p.credit_account_id <> r.credit_account_id)"
    " UNION ALL SELECT 6, res.acct, res.hold, res.amt, (res.posted + res.released)::bigint,"
    "   'posted and released more than the hold'"
    "   FROM res WHERE res.posted + res.released > res.amt"
    " UNION ALL SELECT 6, 0, l.hold_id, l.posted_micros, coalesce(res.posted, 0)::bigint,"
    "   'lease ' || l.id || ' recorded other usage than its postings'"
    "   FROM leases l LEFT JOIN res ON res.hold = l.hold_id"
    "  WHERE l.hold_id <> 0 AND l.posted_micros <> coalesce(res.posted, 0)"
    " UNION ALL SELECT 0, (SELECT count(*) FROM ledger_accounts),"
    "   (SELECT count(*) FROM ledger_transfers), 0, 0, ''";

static void audit_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                     void *arg)
{
	struct rpc_call *call = arg;
	if (st != PG_OK) {
		reply_pg_error(call, st, sqlstate, err);
		return;
	}
	const Gpumatch__V1__AuditLedgerRequest *req = rpc_get_data(call);
	uint32_t max = req && req->max_violations ? req->max_violations : 1000;
	int rows = PQntuples(res);
	Gpumatch__V1__LedgerViolation *v = calloc((size_t)rows + 1, sizeof *v);
	Gpumatch__V1__LedgerViolation **vp = calloc((size_t)rows + 1, sizeof *vp);
	if (!v || !vp) {
		free(v);
		free(vp);
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	Gpumatch__V1__AuditLedgerResponse out = GPUMATCH__V1__AUDIT_LEDGER_RESPONSE__INIT;
	size_t n = 0;
	uint32_t count = 0;
	for (int i = 0; i < rows; i++) {
		int kind = (int)col_i64(res, i, 0);
		if (!kind) {
			out.accounts_checked = col_u64(res, i, 1);
			out.transfers_checked = col_u64(res, i, 2);
			continue;
		}
		count++;
		if (n >= max)
			continue;
		gpumatch__v1__ledger_violation__init(&v[n]);
		v[n].kind = (Gpumatch__V1__ViolationKind)kind;
		v[n].account_id = col_u64(res, i, 1);
		v[n].transfer_id = col_u64(res, i, 2);
		v[n].expected_micros = col_i64(res, i, 3);
		v[n].actual_micros = col_i64(res, i, 4);
		v[n].message = PQgetvalue(res, i, 5);
		vp[n] = &v[n];
		n++;
	}
	out.ok = count == 0;
	out.violation_count = count;
	out.n_violations = n;
	out.violations = vp;
	out.audited_at_us = now_us();
	series_note_audit(count, out.audited_at_us);
	if (count)
		log_warn("ledger audit found violations count=%" PRIu32, count);
	rpc_reply(call, &out.base);
	free(v);
	free(vp);
}

void ledger_audit(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__AuditLedgerRequest *req = (const void *)msg;
	if (req->max_violations > 100000) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "maxViolations: at most 100000, got %" PRIu32,
		          req->max_violations);
		return;
	}
	rpc_set_data(call, (void *)req);
	/* one scan of the whole ledger: minutes on a large one, not seconds */
	rpc_set_timeout(call, AUDIT_TIMEOUT_MS);
	struct numbuf now, grace;
	const char *params[] = { fmt_i64(&now, now_us()), fmt_i64(&grace, AUDIT_GRACE_US) };
	if (pg_exec(app_get()->pg, NULL, audit_sql, 2, params, audit_cb, call))
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
}

/* The filters of a listing other than the account. */
#define LIST_FILTER                                                              \
	"($1::bigint = 0 OR t.id < $1::bigint)"                                  \
	" AND (cardinality($3::smallint[]) = 0 OR t.kind = ANY($3::smallint[]))" \
	" AND t.created_at_us >= $5::bigint AND t.created_at_us < $6::bigint"    \
	" AND ($7::bigint = 0 OR t.lease_id = $7::bigint)"

/* ---- ListTransfers --------------------------------------------------------------------------- */

struct list_q {
	struct rpc_call *call;
	int page_size;
};

static void list_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                    void *arg)
{
	struct list_q *q = arg;
	if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
		free(q);
		return;
	}
	int rows = PQntuples(res);
	int n = rows > q->page_size ? q->page_size : rows;
	Gpumatch__V1__Transfer *t = calloc((size_t)n + 1, sizeof *t);
	Gpumatch__V1__Transfer **tp = calloc((size_t)n + 1, sizeof *tp);
	if (!t || !tp) {
		rpc_error(q->call, RPC_INTERNAL, "out of memory");
	} else {
		for (int i = 0; i < n; i++) {
			transfer_from_row(res, i, 0, &t[i]);
			tp[i] = &t[i];
		}
		char token[32] = "";
		size_t shown = page_fit((const void *const *)tp, (size_t)n);
		if ((rows > q->page_size || shown < (size_t)n) && n > 0)
			page_token_encode(t[shown - 1].id, token, sizeof token);
		Gpumatch__V1__ListTransfersResponse out =
		    GPUMATCH__V1__LIST_TRANSFERS_RESPONSE__INIT;
		out.n_transfers = shown;
		out.transfers = tp;
		out.next_page_token = token;
		rpc_reply(q->call, &out.base);
	}
	free(t);
	free(tp);
	free(q);
}

void ledger_list_transfers(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__ListTransfersRequest *req = (const void *)msg;
	if (req->page_size < 0 || req->page_size > 1000) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "pageSize: must be between 0 and 1000, got %d", req->page_size);
		return;
	}
	uint64_t after;
	if (page_token_decode(req->page_token, &after)) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "pageToken: not a token this server issued");
		return;
	}
	struct strbuf kinds = { 0 };
	sb_puts(&kinds, "{");
	for (size_t i = 0; i < req->n_kinds; i++) {
		if (req->kinds[i] < 1 || req->kinds[i] > 7) {
			sb_free(&kinds);
			rpc_error(call, RPC_INVALID_ARGUMENT, "kinds[%zu]: not a transfer kind", i);
			return;
		}
		sb_printf(&kinds, "%s%d", i ? "," : "", (int)req->kinds[i]);
	}
	sb_puts(&kinds, "}");
	int64_t ws = 0, we = INT64_MAX;
	if (req->window && resolve_window(call, req->window, "window", 0, &ws, &we)) {
		sb_free(&kinds);
		return;
	}
	struct list_q *q = malloc(sizeof *q);
	if (!q || kinds.oom) {
		free(q);
		sb_free(&kinds);
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	q->call = call;
	q->page_size = req->page_size ? req->page_size : 100;
	struct numbuf a, acc, l, f, u, le;
	const char *params[] = { fmt_u64(&a, after),
		                 fmt_u64(&acc, req->account_id),
		                 kinds.s,
		                 fmt_i64(&l, q->page_size + 1),
		                 fmt_i64(&f, ws),
		                 fmt_i64(&u, we),
		                 fmt_u64(&le, req->lease_id) };
	if (pg_exec(app_get()->pg, NULL,
	            /* a tenant's or operator's account: through the per-account
	             * indexes (which leave the system accounts out) */
	            "WITH ids AS ("
	            "  (SELECT t.id FROM ledger_transfers t WHERE $2::bigint <= 3"
	            "     AND ($2::bigint = 0 OR t.debit_account_id = $2::bigint"
	            "          OR t.credit_account_id = $2::bigint) AND " LIST_FILTER
	            "   ORDER BY t.id DESC LIMIT $4::integer)"
	            "  UNION ALL (SELECT t.id FROM ledger_transfers t WHERE $2::bigint > 3"
	            "     AND t.debit_account_id = $2::bigint AND t.debit_account_id > 3"
	            "     AND " LIST_FILTER " ORDER BY t.id DESC LIMIT $4::integer)"
	            "  UNION ALL (SELECT t.id FROM ledger_transfers t WHERE $2::bigint > 3"
	            "     AND t.credit_account_id = $2::bigint AND t.credit_account_id > 3"
	            "     AND " LIST_FILTER " ORDER BY t.id DESC LIMIT $4::integer))"
	            " SELECT " TRANSFER_COLS " FROM ledger_transfers t"
	            " WHERE t.id IN (SELECT id FROM ids) ORDER BY t.id DESC LIMIT $4::integer",
	            7, params, list_cb, q)) {
		free(q);
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
	}
	sb_free(&kinds);
}

/* ---- reports ------------------------------------------------------------------------------ */

/* Every report section in one statement (one snapshot), as rows of
 * (section, id, operator, name, region, model, gpus, a, b, c, d, e);
 * $7 names the sections wanted (",nu,mu,sold,nr,or,ts,"). Filters: window
 * [$1, $2), region $3, operator $4, tenant $5 (0/"" = all), now $6.
 *   nu  node utilization: gpus, a = GPU-seconds available, b = used
 *   mu  GPU model utilization: model, gpus, a, b
 *   sold  by model and region: a = GPU-seconds, b = revenue
 *   nr  node revenue: a = gross, b = operator, c = fee, d = GPU-seconds
 *   or  operator revenue: a..c as nr, d = paid out, e = GPU-seconds
 *   ts  tenant spend: a = spend, b = topped up, c = GPU-seconds, d = jobs
 * Available time: the node heartbeating (READY, DRAINING or CORDONED), from
 * node_state_log. Used time: leases from start to their metered end (live
 * ones: now), in whole seconds per lease within the window, as billed. Money: settlement transfers posted within the window; a
 * lease's GPUs count under the model of its lowest-index GPU in "sold". */
static const char report_sql[] =
    "WITH p AS (SELECT $1::bigint AS ws, $2::bigint AS we, $3::text AS rg, $4::bigint AS opf,"
    "                  $5::bigint AS tf, $6::bigint AS now, $7::text AS want),"
    " nn AS (SELECT n.id, n.operator_id, n.name, n.region FROM nodes n, p"
    "         WHERE (p.rg = '' OR n.region = p.rg) AND (p.opf = 0 OR n.operator_id = p.opf)),"
    " sl AS (SELECT s.node_id, s.state, s.at_us, lead(s.at_us) OVER (PARTITION BY s.node_id"
    "          ORDER BY s.at_us) AS next_us FROM node_state_log s"
    "         WHERE s.node_id IN (SELECT id FROM nn)),"
    " av AS (SELECT sl.node_id, sum(greatest(0, least(coalesce(sl.next_us, p.now), p.we)"
    "          - greatest(sl.at_us, p.ws))) / 1000000 AS secs FROM sl, p"
    "         WHERE sl.state IN (2, 3, 4) GROUP BY sl.node_id),"
    " lu AS (SELECT l.node_id, g.model, greatest(0, least(CASE WHEN l.state > 4 THEN"
    "          l.billed_end_us ELSE p.now END, p.we) - greatest(l.started_at_us, p.ws))"
    "          / 1000000 * 1000000 AS us"
    "          FROM leases l JOIN nn ON nn.id = l.node_id"
    "          JOIN gpus g ON g.node_id = l.node_id AND (l.gpu_mask >> g.idx) & 1 = 1, p"
    "         WHERE l.started_at_us > 0 AND l.started_at_us < p.we),"
    " gc AS (SELECT g.node_id, g.model, count(*) AS n FROM gpus g"
    "         WHERE g.node_id IN (SELECT id FROM nn) GROUP BY g.node_id, g.model),"
    " tr AS (SELECT t.* FROM ledger_transfers t, p"
    "         WHERE t.created_at_us >= p.ws AND t.created_at_us < p.we),"
    " lt AS (SELECT tr.kind, tr.amount_micros AS amt, tr.gpu_seconds AS gs, l.node_id, l.job_id,"
    "          n.operator_id, n.region, j.tenant_id,"
    "          (SELECT g.model FROM gpus g WHERE g.node_id = l.node_id"
    "             AND (l.gpu_mask >> g.idx) & 1 = 1 ORDER BY g.idx LIMIT 1) AS model"
    "          FROM tr JOIN leases l ON l.id = tr.lease_id JOIN nodes n ON n.id = l.node_id"
    "          JOIN jobs j ON j.id = l.job_id, p"
    "         WHERE tr.lease_id <> 0 AND tr.state = 2 AND (p.rg = '' OR n.region = p.rg)"
    "           AND (p.opf = 0 OR n.operator_id = p.opf) AND (p.tf = 0 OR j.tenant_id = p.tf))"
    " SELECT 'nu', nn.id, nn.operator_id, nn.name, nn.region, ''::text,"
    "        coalesce(gn.n, 0)::bigint, (coalesce(gn.n, 0) * coalesce(av.secs, 0))::bigint,"
    "        (coalesce(u.us, 0) / 1000000)::bigint, 0::bigint, 0::bigint, 0::bigint"
    "   FROM nn LEFT JOIN (SELECT node_id, sum(n) AS n FROM gc GROUP BY node_id) gn"
    "     ON gn.node_id = nn.id LEFT JOIN av ON av.node_id = nn.id"
    "   LEFT JOIN (SELECT node_id, sum(us) AS us FROM lu GROUP BY node_id) u"
    "     ON u.node_id = nn.id, p WHERE p.want LIKE '%,nu,%'"
    " UNION ALL SELECT 'mu', 0, 0, '', '', gc.model, sum(gc.n)::bigint,"
    "        sum(gc.n * coalesce(av.secs, 0))::bigint,"
    "        (coalesce(max(mu.us), 0) / 1000000)::bigint, 0, 0, 0"
    "   FROM gc LEFT JOIN av ON av.node_id = gc.node_id"
    "   LEFT JOIN (SELECT model, sum(us) AS us FROM lu GROUP BY model) mu ON mu.model = gc.model,"
    "   p WHERE p.want LIKE '%,mu,%' GROUP BY gc.model"
    " UNION ALL SELECT 'sold', 0, 0, '', lt.region, coalesce(lt.model, ''), 0,"
    "        sum(lt.gs)::bigint, sum(lt.amt)::bigint, 0, 0, 0"
    "   FROM lt, p WHERE lt.kind = 2 AND p.want LIKE '%,sold,%' GROUP BY lt.model, lt.region"
    " UNION ALL SELECT 'nr', lt.node_id, max(lt.operator_id),"
    "        (SELECT n.name FROM nodes n WHERE n.id = lt.node_id), '', '', 0,"
    "        coalesce(sum(lt.amt) FILTER (WHERE lt.kind = 2), 0)::bigint,"
    "        coalesce(sum(lt.amt) FILTER (WHERE lt.kind = 3), 0)::bigint,"
    "        coalesce(sum(lt.amt) FILTER (WHERE lt.kind = 4), 0)::bigint,"
    "        coalesce(sum(lt.gs) FILTER (WHERE lt.kind = 2), 0)::bigint, 0"
    "   FROM lt, p WHERE p.want LIKE '%,nr,%' GROUP BY lt.node_id"
    " UNION ALL SELECT 'or', o.id, o.id, o.name, '', '', 0, coalesce(x.g, 0)::bigint,"
    "        coalesce(x.op, 0)::bigint, coalesce(x.f, 0)::bigint, coalesce(po.paid, 0)::bigint,"
    "        coalesce(x.gs, 0)::bigint"
    "   FROM operators o CROSS JOIN p"
    "   JOIN ledger_accounts a ON a.kind = 2 AND a.owner_id = o.id"
    "   LEFT JOIN (SELECT lt.operator_id, sum(lt.amt) FILTER (WHERE lt.kind = 2) AS g,"
    "                sum(lt.amt) FILTER (WHERE lt.kind = 3) AS op,"
    "                sum(lt.amt) FILTER (WHERE lt.kind = 4) AS f,"
    "                sum(lt.gs) FILTER (WHERE lt.kind = 2) AS gs"
    "                FROM lt GROUP BY lt.operator_id) x ON x.operator_id = o.id"
    "   LEFT JOIN (SELECT tr.debit_account_id AS acct, sum(tr.amount_micros) AS paid FROM tr"
    "               WHERE tr.kind = 6 GROUP BY tr.debit_account_id) po ON po.acct = a.id"
    "  WHERE p.want LIKE '%,or,%' AND (p.opf = 0 OR o.id = p.opf)"
    "    AND (p.opf <> 0 OR x.operator_id IS NOT NULL OR po.acct IS NOT NULL)"
    " UNION ALL SELECT 'ts', te.id, 0, te.name, '', '', 0, coalesce(x.s, 0)::bigint,"
    "        coalesce(tu.s, 0)::bigint, coalesce(x.gs, 0)::bigint, coalesce(x.jobs, 0)::bigint, 0"
    "   FROM tenants te CROSS JOIN p"
    "   JOIN ledger_accounts a ON a.kind = 1 AND a.owner_id = te.id"
    "   LEFT JOIN (SELECT lt.tenant_id, sum(lt.amt) AS s, sum(lt.gs) AS gs,"
    "                count(DISTINCT lt.job_id) AS jobs FROM lt WHERE lt.kind = 2"
    "               GROUP BY lt.tenant_id) x ON x.tenant_id = te.id"
    "   LEFT JOIN (SELECT tr.credit_account_id AS acct, sum(tr.amount_micros) AS s FROM tr"
    "               WHERE tr.kind = 1 GROUP BY tr.credit_account_id) tu ON tu.acct = a.id"
    "  WHERE p.want LIKE '%,ts,%' AND (p.tf = 0 OR te.id = p.tf)"
    "    AND (p.tf <> 0 OR x.tenant_id IS NOT NULL OR tu.acct IS NOT NULL)"
    " ORDER BY 1, 2, 5, 6";

enum report_kind { REP_USAGE, REP_REVENUE, REP_SPEND, REP_EARNINGS };

struct report_q {
	struct rpc_call *call;
	enum report_kind kind;
	int64_t ws, we;
	uint64_t owner;      /* tenant (spend) or operator (earnings) */
	PGresult *owner_row; /* spend/earnings: the tenant or operator with its account */
};

/* Rows of one section, as views into a result. */
struct section {
	int first, n;
};

static struct section section_of(const PGresult *r, const char *name)
{
	struct section s = { 0, 0 };
	int rows = PQntuples(r);
	while (s.first < rows && strcmp(PQgetvalue(r, s.first, 0), name))
		s.first++;
	while (s.first + s.n < rows && !strcmp(PQgetvalue(r, s.first + s.n, 0), name))
		s.n++;
	return s;
}

static void fill_node_util(const PGresult *r, int row, Gpumatch__V1__NodeUtilization *u)
{
	gpumatch__v1__node_utilization__init(u);
	u->node_id = col_u64(r, row, 1);
	u->operator_id = col_u64(r, row, 2);
	u->node_name = PQgetvalue(r, row, 3);
	u->region = PQgetvalue(r, row, 4);
	u->gpu_count = (uint32_t)col_u64(r, row, 6);
	u->gpu_seconds_available = col_i64(r, row, 7);
	u->gpu_seconds_used = col_i64(r, row, 8);
	u->utilization_ppm = ppm_of(u->gpu_seconds_used, u->gpu_seconds_available);
}

static void fill_node_rev(const PGresult *r, int row, Gpumatch__V1__NodeRevenue *n)
{
	gpumatch__v1__node_revenue__init(n);
	n->node_id = col_u64(r, row, 1);
	n->operator_id = col_u64(r, row, 2);
	n->node_name = PQgetvalue(r, row, 3);
	n->gross_micros = col_i64(r, row, 7);
	n->operator_micros = col_i64(r, row, 8);
	n->platform_fee_micros = col_i64(r, row, 9);
	n->gpu_seconds = col_i64(r, row, 10);
}

static void fill_op_rev(const PGresult *r, int row, Gpumatch__V1__OperatorRevenue *o)
{
	gpumatch__v1__operator_revenue__init(o);
	o->operator_id = col_u64(r, row, 1);
	o->operator_name = PQgetvalue(r, row, 3);
	o->gross_micros = col_i64(r, row, 7);
	o->operator_micros = col_i64(r, row, 8);
	o->platform_fee_micros = col_i64(r, row, 9);
	o->paid_out_micros = col_i64(r, row, 10);
	o->gpu_seconds = col_i64(r, row, 11);
}

static void fill_spend(const PGresult *r, int row, Gpumatch__V1__TenantSpend *t)
{
	gpumatch__v1__tenant_spend__init(t);
	t->tenant_id = col_u64(r, row, 1);
	t->tenant_name = PQgetvalue(r, row, 3);
	t->spend_micros = col_i64(r, row, 7);
	t->topped_up_micros = col_i64(r, row, 8);
	t->gpu_seconds = col_i64(r, row, 9);
	t->jobs = (uint32_t)col_u64(r, row, 10);
}

/* calloc'd arrays of n messages and n pointers; freed by the caller. */
#define ALLOC_MSGS(T, arr, ptrs, n)                      \
	T *arr = calloc((size_t)(n) + 1, sizeof(T));     \
	T **ptrs = calloc((size_t)(n) + 1, sizeof(T *)); \
	if (!arr || !ptrs) {                             \
		log_error("out of memory");              \
		abort();                                 \
	}                                                \
	for (int i_ = 0; i_ < (n); i_++)                 \
		ptrs[i_] = &arr[i_];

static void reply_usage(struct report_q *q, const PGresult *r)
{
	struct section nu = section_of(r, "nu"), mu = section_of(r, "mu"),
	               so = section_of(r, "sold");
	ALLOC_MSGS(Gpumatch__V1__NodeUtilization, nodes, np, nu.n);
	ALLOC_MSGS(Gpumatch__V1__GpuModelUtilization, models, mp, mu.n);
	ALLOC_MSGS(Gpumatch__V1__GpuHoursSold, sold, sp, so.n);
	Gpumatch__V1__GetUsageReportResponse out = GPUMATCH__V1__GET_USAGE_REPORT_RESPONSE__INIT;
	Gpumatch__V1__TimeWindow w = GPUMATCH__V1__TIME_WINDOW__INIT;
	w.start_us = q->ws;
	w.end_us = q->we;
	out.window = &w;
	for (int i = 0; i < nu.n; i++) {
		fill_node_util(r, nu.first + i, &nodes[i]);
		out.gpu_seconds_available += nodes[i].gpu_seconds_available;
		out.gpu_seconds_used += nodes[i].gpu_seconds_used;
	}
	for (int i = 0; i < mu.n; i++) {
		int row = mu.first + i;
		Gpumatch__V1__GpuModelUtilization *m = &models[i];
		gpumatch__v1__gpu_model_utilization__init(m);
		m->gpu_model = PQgetvalue(r, row, 5);
		m->gpu_count = (uint32_t)col_u64(r, row, 6);
		m->gpu_seconds_available = col_i64(r, row, 7);
		m->gpu_seconds_used = col_i64(r, row, 8);
		m->utilization_ppm = ppm_of(m->gpu_seconds_used, m->gpu_seconds_available);
	}
	for (int i = 0; i < so.n; i++) {
		int row = so.first + i;
		Gpumatch__V1__GpuHoursSold *s = &sold[i];
		gpumatch__v1__gpu_hours_sold__init(s);
		s->gpu_model = PQgetvalue(r, row, 5);
		s->region = PQgetvalue(r, row, 4);
		s->gpu_seconds = col_i64(r, row, 7);
		s->revenue_micros = col_i64(r, row, 8);
	}
	out.utilization_ppm = ppm_of(out.gpu_seconds_used, out.gpu_seconds_available);
	out.n_nodes = (size_t)nu.n;
	out.nodes = np;
	out.n_gpu_models = (size_t)mu.n;
	out.gpu_models = mp;
	out.n_sold = (size_t)so.n;
	out.sold = sp;
	rpc_reply(q->call, &out.base);
	free(nodes);
	free(np);
	free(models);
	free(mp);
	free(sold);
	free(sp);
}

static void reply_revenue(struct report_q *q, const PGresult *r)
{
	struct section nr = section_of(r, "nr"), orr = section_of(r, "or"),
	               ts = section_of(r, "ts");
	ALLOC_MSGS(Gpumatch__V1__NodeRevenue, nodes, np, nr.n);
	ALLOC_MSGS(Gpumatch__V1__OperatorRevenue, ops, op, orr.n);
	ALLOC_MSGS(Gpumatch__V1__TenantSpend, tens, tp, ts.n);
	Gpumatch__V1__GetRevenueReportResponse out =
	    GPUMATCH__V1__GET_REVENUE_REPORT_RESPONSE__INIT;
	Gpumatch__V1__TimeWindow w = GPUMATCH__V1__TIME_WINDOW__INIT;
	w.start_us = q->ws;
	w.end_us = q->we;
	out.window = &w;
	out.currency = "USD";
	for (int i = 0; i < nr.n; i++)
		fill_node_rev(r, nr.first + i, &nodes[i]);
	for (int i = 0; i < orr.n; i++) {
		fill_op_rev(r, orr.first + i, &ops[i]);
		out.gross_micros += ops[i].gross_micros;
		out.operator_micros += ops[i].operator_micros;
		out.platform_fee_micros += ops[i].platform_fee_micros;
	}
	for (int i = 0; i < ts.n; i++)
		fill_spend(r, ts.first + i, &tens[i]);
	out.n_nodes = (size_t)nr.n;
	out.nodes = np;
	out.n_operators = (size_t)orr.n;
	out.operators = op;
	out.n_tenants = (size_t)ts.n;
	out.tenants = tp;
	rpc_reply(q->call, &out.base);
	free(nodes);
	free(np);
	free(ops);
	free(op);
	free(tens);
	free(tp);
}

/* Owner row columns: the tenant or operator, then its account. */
#define SPEND_OWNER_SQL                                                                  \
	"SELECT te.id, te.name, te.state, te.fair_share_weight, te.credit_limit_micros," \
	" te.max_running_gpus, te.contact, te.disabled_reason, te.created_at_us,"        \
	" te.updated_at_us, " ACCOUNT_COLS " FROM tenants te"                            \
	" JOIN ledger_accounts a ON a.kind = 1 AND a.owner_id = te.id WHERE te.id = $1::bigint"
#define EARNINGS_OWNER_SQL                                                             \
	"SELECT o.id, o.name, o.state, o.node_limit,"                                  \
	" (SELECT count(*) FROM nodes n WHERE n.operator_id = o.id AND n.state <> 6)," \
	" o.contact, o.disabled_reason, o.created_at_us, o.updated_at_us,"             \
	" (SELECT coalesce(sum(t.amount_micros), 0) FROM ledger_transfers t"           \
	"   WHERE t.kind = 6 AND t.debit_account_id = a.id), " ACCOUNT_COLS            \
	" FROM operators o JOIN ledger_accounts a ON a.kind = 2 AND a.owner_id = o.id" \
	" WHERE o.id = $1::bigint"

static void reply_spend(struct report_q *q, const PGresult *r)
{
	const PGresult *o = q->owner_row;
	Gpumatch__V1__Tenant t = GPUMATCH__V1__TENANT__INIT;
	Gpumatch__V1__Account acct;
	t.id = col_u64(o, 0, 0);
	t.name = PQgetvalue(o, 0, 1);
	t.state = (Gpumatch__V1__TenantState)col_i64(o, 0, 2);
	t.fair_share_weight = (uint32_t)col_u64(o, 0, 3);
	t.credit_limit_micros = col_i64(o, 0, 4);
	t.max_running_gpus = (uint32_t)col_u64(o, 0, 5);
	t.contact = PQgetvalue(o, 0, 6);
	t.disabled_reason = PQgetvalue(o, 0, 7);
	t.created_at_us = col_i64(o, 0, 8);
	t.updated_at_us = col_i64(o, 0, 9);
	account_from_row(o, 0, 10, &acct);
	t.balance_micros = acct.balance_micros;
	t.held_micros = acct.pending_debits_micros;
	Gpumatch__V1__TenantSpend sp = GPUMATCH__V1__TENANT_SPEND__INIT;
	struct section ts = section_of(r, "ts");
	if (ts.n)
		fill_spend(r, ts.first, &sp);
	sp.tenant_id = t.id;
	sp.tenant_name = t.name;
	Gpumatch__V1__TimeWindow w = GPUMATCH__V1__TIME_WINDOW__INIT;
	w.start_us = q->ws;
	w.end_us = q->we;
	Gpumatch__V1__GetSpendResponse out = GPUMATCH__V1__GET_SPEND_RESPONSE__INIT;
	out.tenant = &t;
	out.account = &acct;
	out.spend = &sp;
	out.window = &w;
	rpc_reply(q->call, &out.base);
}

static void reply_earnings(struct report_q *q, const PGresult *r)
{
	const PGresult *o = q->owner_row;
	Gpumatch__V1__Operator op = GPUMATCH__V1__OPERATOR__INIT;
	Gpumatch__V1__Account acct;
	op.id = col_u64(o, 0, 0);
	op.name = PQgetvalue(o, 0, 1);
	op.state = (Gpumatch__V1__OperatorState)col_i64(o, 0, 2);
	op.node_limit = (uint32_t)col_u64(o, 0, 3);
	op.node_count = (uint32_t)col_u64(o, 0, 4);
	op.contact = PQgetvalue(o, 0, 5);
	op.disabled_reason = PQgetvalue(o, 0, 6);
	op.created_at_us = col_i64(o, 0, 7);
	op.updated_at_us = col_i64(o, 0, 8);
	op.paid_out_micros = col_i64(o, 0, 9);
	account_from_row(o, 0, 10, &acct);
	op.earnings_micros = acct.balance_micros;
	struct section nr = section_of(r, "nr"), orr = section_of(r, "or"),
	               nu = section_of(r, "nu");
	Gpumatch__V1__OperatorRevenue tot = GPUMATCH__V1__OPERATOR_REVENUE__INIT;
	if (orr.n)
		fill_op_rev(r, orr.first, &tot);
	tot.operator_id = op.id;
	tot.operator_name = op.name;
	ALLOC_MSGS(Gpumatch__V1__NodeRevenue, nodes, np, nr.n);
	ALLOC_MSGS(Gpumatch__V1__NodeUtilization, util, up, nu.n);
	for (int i = 0; i < nr.n; i++)
		fill_node_rev(r, nr.first + i, &nodes[i]);
	for (int i = 0; i < nu.n; i++)
		fill_node_util(r, nu.first + i, &util[i]);
	Gpumatch__V1__TimeWindow w = GPUMATCH__V1__TIME_WINDOW__INIT;
	w.start_us = q->ws;
	w.end_us = q->we;
	Gpumatch__V1__GetEarningsResponse out = GPUMATCH__V1__GET_EARNINGS_RESPONSE__INIT;
	out.operator_record = &op;
	out.totals = &tot;
	out.n_nodes = (size_t)nr.n;
	out.nodes = np;
	out.n_utilization = (size_t)nu.n;
	out.utilization = up;
	out.window = &w;
	rpc_reply(q->call, &out.base);
	free(nodes);
	free(np);
	free(util);
	free(up);
}

static void report_free(struct report_q *q)
{
	if (q->owner_row)
		PQclear(q->owner_row);
	free(q);
}

static void report_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                      void *arg)
{
	struct report_q *q = arg;
	if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
	} else if (q->kind == REP_USAGE) {
		reply_usage(q, res);
	} else if (q->kind == REP_REVENUE) {
		reply_revenue(q, res);
	} else if (q->kind == REP_SPEND) {
		reply_spend(q, res);
	} else {
		reply_earnings(q, res);
	}
	report_free(q);
}

static void report_run(struct report_q *q, const char *region, uint64_t op, uint64_t tenant,
                       const char *want)
{
	struct numbuf ws, we, o, t, now;
	const char *params[] = {
		fmt_i64(&ws, q->ws), fmt_i64(&we, q->we),     region, fmt_u64(&o, op),
		fmt_u64(&t, tenant), fmt_i64(&now, now_us()), want
	};
	if (pg_exec(app_get()->pg, NULL, report_sql, 7, params, report_cb, q)) {
		rpc_error(q->call, RPC_UNAVAILABLE, "shutting down");
		report_free(q);
	}
}

static struct report_q *report_new(struct rpc_call *call, enum report_kind kind, int64_t ws,
                                   int64_t we)
{
	struct report_q *q = calloc(1, sizeof *q);
	if (!q) {
		log_error("out of memory");
		abort();
	}
	q->call = call;
	q->kind = kind;
	q->ws = ws;
	q->we = we;
	return q;
}

void ledger_usage_report(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__GetUsageReportRequest *req = (const void *)msg;
	int64_t ws, we;
	if (resolve_window(call, req->window, "window", 0, &ws, &we))
		return;
	if (!valid_text(req->region, 128)) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "region: at most 128 bytes of text");
		return;
	}
	report_run(report_new(call, REP_USAGE, ws, we), req->region, 0, 0, ",nu,mu,sold,");
}

void ledger_revenue_report(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__GetRevenueReportRequest *req = (const void *)msg;
	int64_t ws, we;
	if (resolve_window(call, req->window, "window", 0, &ws, &we))
		return;
	report_run(report_new(call, REP_REVENUE, ws, we), "", 0, 0, ",nr,or,ts,");
}

static void owner_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                     void *arg)
{
	struct report_q *q = arg;
	if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
		report_free(q);
		return;
	}
	if (PQntuples(res) != 1) {
		bool spend = q->kind == REP_SPEND;
		rpc_error(q->call, RPC_NOT_FOUND, "%s: %s %" PRIu64 " not found",
		          spend ? "tenantId" : "operatorId", spend ? "tenant" : "operator",
		          q->owner);
		report_free(q);
		return;
	}
	/* the pool clears res after this callback: keep a copy */
	q->owner_row = PQcopyResult(res, PG_COPYRES_ATTRS | PG_COPYRES_TUPLES);
	if (!q->owner_row) {
		log_error("out of memory");
		abort();
	}
	if (q->kind == REP_SPEND)
		report_run(q, "", 0, q->owner, ",ts,");
	else
		report_run(q, "", q->owner, 0, ",nu,nr,or,");
}

static void owner_report(struct rpc_call *call, enum report_kind kind, uint64_t owner,
                         const Gpumatch__V1__TimeWindow *window)
{
	int64_t ws, we;
	if (resolve_window(call, window, "window", DEFAULT_WINDOW_US, &ws, &we))
		return;
	struct report_q *q = report_new(call, kind, ws, we);
	q->owner = owner;
	struct numbuf o;
	const char *params[] = { fmt_u64(&o, owner) };
	if (pg_exec(app_get()->pg, NULL, kind == REP_SPEND ? SPEND_OWNER_SQL : EARNINGS_OWNER_SQL,
	            1, params, owner_cb, q)) {
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
		report_free(q);
	}
}

uint64_t ledger_spend_tenant(struct rpc_call *call, uint64_t tenant_id)
{
	const struct principal *who = rpc_principal(call);
	if (who->role == ROLE_TENANT) {
		if (tenant_id && tenant_id != who->tenant_id) {
			rpc_error(call, RPC_PERMISSION_DENIED,
			          "tenantId: a tenant sees its own spend only");
			return 0;
		}
		return who->tenant_id;
	}
	if (!tenant_id)
		rpc_error(call, RPC_INVALID_ARGUMENT, "tenantId: required with an admin token");
	return tenant_id;
}

void ledger_get_spend(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__GetSpendRequest *req = (const void *)msg;
	uint64_t tenant = ledger_spend_tenant(call, req->tenant_id);
	if (!tenant)
		return;
	owner_report(call, REP_SPEND, tenant, req->window);
}

void ledger_get_earnings(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__GetEarningsRequest *req = (const void *)msg;
	const struct principal *who = rpc_principal(call);
	uint64_t op = req->operator_id;
	if (who->role == ROLE_OPERATOR) {
		if (op && op != who->operator_id) {
			rpc_error(call, RPC_PERMISSION_DENIED,
			          "operatorId: an operator sees its own earnings only");
			return;
		}
		op = who->operator_id;
	} else if (!op) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "operatorId: required with an admin token");
		return;
	}
	owner_report(call, REP_EARNINGS, op, req->window);
}

/* ---- lifecycle and metrics ------------------------------------------------------------------ */

static struct event *timer(struct event_base *b, int ms, event_callback_fn fn)
{
	struct event *e = event_new(b, -1, EV_PERSIST, fn, NULL);
	if (e) {
		struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
		event_add(e, &tv);
	}
	return e;
}

int ledger_start(struct app *a, char *err, size_t err_len)
{
	memset(&G, 0, sizeof G);
	G.a = a;
	G.cache_ev = timer(a->base, CACHE_REFRESH_MS, cache_tick_cb);
	G.sweep_ev = timer(a->base, a->cfg.ledger_settle_interval_ms, sweep_tick_cb);
	if (!G.cache_ev || !G.sweep_ev) {
		snprintf(err, err_len, "out of memory");
		return -1;
	}
	cache_tick_cb(-1, 0, NULL);
	return 0;
}

void ledger_stop(struct app *a)
{
	(void)a;
	G.stopped = true;
	if (G.cache_ev)
		event_free(G.cache_ev);
	if (G.sweep_ev)
		event_free(G.sweep_ev);
	G.cache_ev = G.sweep_ev = NULL;
	free(G.slots);
	G.slots = NULL;
	G.cap = 0;
}

bool ledger_idle(struct app *a)
{
	(void)a;
	return G.inflight == 0;
}

void ledger_metrics(struct app *a, struct evbuffer *b)
{
	(void)a;
	evbuffer_add_printf(
	    b,
	    "# HELP gpumatch_ledger_sweeps_total Settle sweeps run by this replica.\n"
	    "# TYPE gpumatch_ledger_sweeps_total counter\ngpumatch_ledger_sweeps_total %" PRIu64
	    "\n# HELP gpumatch_ledger_sweep_failures_total Settle sweeps that failed (retried).\n"
	    "# TYPE gpumatch_ledger_sweep_failures_total counter\n"
	    "gpumatch_ledger_sweep_failures_total %" PRIu64 "\n"
	    "# HELP gpumatch_ledger_postings_total Transfers posted by settle sweeps.\n"
	    "# TYPE gpumatch_ledger_postings_total counter\ngpumatch_ledger_postings_total %" PRIu64
	    "\n# HELP gpumatch_ledger_leases_settled_total Ended leases settled.\n"
	    "# TYPE gpumatch_ledger_leases_settled_total counter\n"
	    "gpumatch_ledger_leases_settled_total %" PRIu64 "\n"
	    "# HELP gpumatch_ledger_leases_metered_total Interim settlements of running leases.\n"
	    "# TYPE gpumatch_ledger_leases_metered_total counter\n"
	    "gpumatch_ledger_leases_metered_total %" PRIu64 "\n"
	    "# HELP gpumatch_ledger_leases_stopped_total Leases stopped: their hold was used up.\n"
	    "# TYPE gpumatch_ledger_leases_stopped_total counter\n"
	    "gpumatch_ledger_leases_stopped_total %" PRIu64 "\n"
	    "# HELP gpumatch_ledger_gross_micros_total What tenants paid for usage (micro-units).\n"
	    "# TYPE gpumatch_ledger_gross_micros_total counter\n"
	    "gpumatch_ledger_gross_micros_total %" PRIu64 "\n"
	    "# HELP gpumatch_ledger_platform_fee_micros_total Platform fees taken (micro-units).\n"
	    "# TYPE gpumatch_ledger_platform_fee_micros_total counter\n"
	    "gpumatch_ledger_platform_fee_micros_total %" PRIu64 "\n"
	    "# HELP gpumatch_ledger_gpu_seconds_sold_total GPU-seconds billed.\n"
	    "# TYPE gpumatch_ledger_gpu_seconds_sold_total counter\n"
	    "gpumatch_ledger_gpu_seconds_sold_total %" PRIu64 "\n"
	    "# HELP gpumatch_ledger_top_ups_total Tenant top-ups recorded.\n"
	    "# TYPE gpumatch_ledger_top_ups_total counter\ngpumatch_ledger_top_ups_total %" PRIu64
	    "\n# HELP gpumatch_ledger_payouts_total Operator payouts recorded.\n"
	    "# TYPE gpumatch_ledger_payouts_total counter\ngpumatch_ledger_payouts_total %" PRIu64
	    "\n# HELP gpumatch_ledger_admissions_total Submits checked against the tenant's "
	    "balance.\n"
	    "# TYPE gpumatch_ledger_admissions_total counter\n"
	    "gpumatch_ledger_admissions_total{result=\"admitted\"} %" PRIu64 "\n"
	    "gpumatch_ledger_admissions_total{result=\"refused\"} %" PRIu64 "\n"
	    "# HELP gpumatch_ledger_platform_fee_ppm The platform fee the leader locks into new "
	    "leases.\n"
	    "# TYPE gpumatch_ledger_platform_fee_ppm gauge\ngpumatch_ledger_platform_fee_ppm "
	    "%" PRIu32 "\n",
	    G.sweeps, G.sweep_failures, G.transfers_swept, G.leases_settled, G.leases_metered,
	    G.leases_stopped, G.gross_micros, G.fee_micros, G.gpu_seconds, G.top_ups, G.payouts,
	    G.admitted, G.refused, G.fee_ppm);
}
