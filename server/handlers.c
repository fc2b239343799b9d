/* handlers.c — the table from RPC path to handler, the Redis scripts, and
 * helpers the handler files share. */
#include "handlers.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger.h"
#include "log.h"
#include "series.h"
#include "service.h"

static struct app *the_app;

struct app *app_get(void)
{
	return the_app;
}

struct route {
	const char *path;
	rpc_handler_fn fn;
};

static const struct route routes[] = {
	{ "/gpumatch.v1.JobService/SubmitJob", jobs_submit },
	{ "/gpumatch.v1.JobService/GetJob", jobs_get },
	{ "/gpumatch.v1.JobService/ListJobs", jobs_list },
	{ "/gpumatch.v1.JobService/CancelJob", jobs_cancel },
	{ "/gpumatch.v1.JobService/ExplainJob", jobs_explain },
	{ "/gpumatch.v1.NodeService/RegisterNode", nodes_register },
	{ "/gpumatch.v1.NodeService/GetNode", nodes_get },
	{ "/gpumatch.v1.NodeService/ListNodes", nodes_list },
	{ "/gpumatch.v1.NodeService/Heartbeat", nodes_heartbeat },
	{ "/gpumatch.v1.NodeService/AcquireLease", nodes_acquire_lease },
	{ "/gpumatch.v1.NodeService/ConfirmLease", nodes_confirm_lease },
	{ "/gpumatch.v1.NodeService/ReportLease", nodes_report_lease },
	{ "/gpumatch.v1.NodeService/DrainNode", nodes_drain },
	{ "/gpumatch.v1.NodeService/UndrainNode", nodes_undrain },
	{ "/gpumatch.v1.NodeService/RetireNode", nodes_retire },
	{ "/gpumatch.v1.NodeService/RequestChallenge", probe_request_challenge },
	{ "/gpumatch.v1.NodeService/SubmitProbe", probe_submit },
	{ "/gpumatch.v1.AdminService/CreateTenant", admin_create_tenant },
	{ "/gpumatch.v1.AdminService/GetTenant", admin_get_tenant },
	{ "/gpumatch.v1.AdminService/ListTenants", admin_list_tenants },
	{ "/gpumatch.v1.AdminService/UpdateTenant", admin_update_tenant },
	{ "/gpumatch.v1.AdminService/DisableTenant", admin_disable_tenant },
	{ "/gpumatch.v1.AdminService/EnableTenant", admin_enable_tenant },
	{ "/gpumatch.v1.AdminService/CreateOperator", admin_create_operator },
	{ "/gpumatch.v1.AdminService/GetOperator", admin_get_operator },
	{ "/gpumatch.v1.AdminService/ListOperators", admin_list_operators },
	{ "/gpumatch.v1.AdminService/UpdateOperator", admin_update_operator },
	{ "/gpumatch.v1.AdminService/DisableOperator", admin_disable_operator },
	{ "/gpumatch.v1.AdminService/EnableOperator", admin_enable_operator },
	{ "/gpumatch.v1.AdminService/CordonNode", admin_cordon_node },
	{ "/gpumatch.v1.AdminService/UncordonNode", admin_uncordon_node },
	{ "/gpumatch.v1.AdminService/CreateToken", admin_create_token },
	{ "/gpumatch.v1.AdminService/ListTokens", admin_list_tokens },
	{ "/gpumatch.v1.AdminService/RevokeToken", admin_revoke_token },
	{ "/gpumatch.v1.AdminService/GetPolicy", admin_get_policy },
	{ "/gpumatch.v1.AdminService/SetPolicy", admin_set_policy },
	{ "/gpumatch.v1.AdminService/ListPolicies", admin_list_policies },
	{ "/gpumatch.v1.AdminService/ListPolicyAudit", admin_list_policy_audit },
	{ "/gpumatch.v1.AdminService/SimulatePolicy", simulate_policy },
	{ "/gpumatch.v1.AdminService/ExportTrace", simulate_export_trace },
	{ "/gpumatch.v1.AdminService/ListLearnedSpeeds", admin_list_learned_speeds },
	{ "/gpumatch.v1.AdminService/TopUpTenant", ledger_top_up },
	{ "/gpumatch.v1.AdminService/PayoutOperator", ledger_payout },
	{ "/gpumatch.v1.AdminService/AuditLedger", ledger_audit },
	{ "/gpumatch.v1.AdminService/ListTransfers", ledger_list_transfers },
	{ "/gpumatch.v1.AdminService/GetUsageReport", ledger_usage_report },
	{ "/gpumatch.v1.AdminService/GetRevenueReport", ledger_revenue_report },
	{ "/gpumatch.v1.JobService/GetSpend", ledger_get_spend },
	{ "/gpumatch.v1.JobService/GetJobLogs", logs_get },
	{ "/gpumatch.v1.NodeService/AppendLeaseLogs", logs_append },
	{ "/gpumatch.v1.NodeService/GetEarnings", ledger_get_earnings },
	{ "/gpumatch.v1.AdminService/GetFleetSeries", series_fleet },
	{ "/gpumatch.v1.AdminService/GetFleetSummary", series_fleet_summary },
	{ "/gpumatch.v1.NodeService/GetNodeSeries", series_node },
	{ "/gpumatch.v1.JobService/GetSpendSeries", series_spend },
	{ "/gpumatch.v1.IdentityService/GetIdentity", series_identity },
	{ NULL, NULL },
};

rpc_handler_fn handler_for(const char *path)
{
	for (const struct route *r = routes; r->path; r++)
		if (!strcmp(r->path, path))
			return r->fn;
	return NULL;
}

/* ---- Redis scripts ---------------------------------------------------------- */

static const struct rds_script scripts[] = {
	/* KEYS: pending, events; ARGV: id, score per job. One ZADD and one
	 * stream entry naming all the jobs, whatever their number: the drain
	 * sends a submit batch's jobs together. Idempotent: re-adding changes
	 * nothing. */
	[SCRIPT_ENQUEUE] = { "enqueue", "local z, ids = {}, {}\n"
	                                "for i = 1, #ARGV, 2 do\n"
	                                "  z[#z + 1] = ARGV[i + 1]\n"
	                                "  z[#z + 1] = ARGV[i]\n"
	                                "  ids[#ids + 1] = ARGV[i]\n"
	                                "end\n"
	                                "if #ids == 0 then return 0 end\n"
	                                "redis.call('ZADD', KEYS[1], unpack(z))\n"
	                                "redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*',"
	                                " 'kind', 'enqueue', 'jobs', table.concat(ids, ','))\n"
	                                "return #ids\n" },
	[SCRIPT_DEQUEUE] = { "dequeue", "return redis.call('ZREM', KEYS[1], ARGV[1])\n" },
	[SCRIPT_LEADER_ACQUIRE] = { "leader_acquire",
	                            "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) "
	                            "then\n"
	                            "  return redis.call('INCR', KEYS[2])\n"
	                            "end\n"
	                            "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
	                            "  redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
	                            "  return redis.call('INCR', KEYS[2])\n"
	                            "end\n"
	                            "return false\n" },
	[SCRIPT_LEADER_RENEW] = { "leader_renew", "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
	                                          "  redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
	                                          "  return 1\n"
	                                          "end\n"
	                                          "return 0\n" },
	[SCRIPT_COUNT] = { NULL, NULL },
};

const struct rds_script *handler_scripts(void)
{
	return scripts;
}

/* ---- lifecycle ------------------------------------------------------------------ */

int handlers_start(struct app *a, char *err, size_t err_len)
{
	the_app = a;
	if (jobs_start(a, err, err_len) || nodes_start(a, err, err_len) ||
	    probe_start(a, err, err_len) || schedloop_start(a, err, err_len) ||
	    ledger_start(a, err, err_len) || series_start(a, err, err_len) ||
	    logs_start(a, err, err_len))
		return -1;
	return 0;
}

void handlers_stop(struct app *a)
{
	logs_stop(a);
	series_stop(a);
	ledger_stop(a);
	schedloop_stop(a);
	probe_stop(a);
	nodes_stop(a);
	jobs_stop(a);
}

void handlers_drain(struct app *a)
{
	nodes_drain_waiters(a);
	logs_drain(a);
	schedloop_stop(a);
}

bool handlers_idle(struct app *a)
{
	return jobs_idle(a) && nodes_idle(a) && schedloop_idle(a) && probe_idle(a) &&
	       ledger_idle(a) && series_idle(a);
}

void handlers_reload(struct app *a)
{
	probe_reload(a);
}

void handlers_metrics(struct app *a, struct evbuffer *b)
{
	jobs_metrics(a, b);
	nodes_metrics(a, b);
	probe_metrics(a, b);
	schedloop_metrics(a, b);
	ledger_metrics(a, b);
	logs_metrics(a, b);
	series_metrics(a, b);
}

/* ---- helpers ------------------------------------------------------------------------ */

void reply_pg_error(struct rpc_call *call, enum pg_status st, const char *sqlstate, const char *err)
{
	if (st == PG_UNAVAILABLE) {
		rpc_error(call, RPC_UNAVAILABLE, "the record store is unavailable, retry later");
		return;
	}
	if (!strcmp(sqlstate, "23505")) {
		rpc_error(call, RPC_ALREADY_EXISTS, "already exists");
		return;
	}
	if (!strncmp(sqlstate, "23", 2)) {
		/* the constraint's text names tables and SQL: the log keeps it */
		log_info("constraint refused method=%s sqlstate=%s err=\"%s\"",
		         rpc_method_path(call), sqlstate, err);
		rpc_error(call, RPC_FAILED_PRECONDITION,
		          "rejected: it conflicts with what is already recorded");
		return;
	}
	if (!strcmp(sqlstate, "GM001")) {
		rpc_error(call, RPC_ABORTED, "scheduler leadership changed, retry");
		return;
	}
	log_error("query failed method=%s sqlstate=%s err=\"%s\"", rpc_method_path(call), sqlstate,
	          err);
	rpc_error(call, RPC_INTERNAL, "internal error");
}

const char *fmt_u64(struct numbuf *b, uint64_t v)
{
	snprintf(b->s, sizeof b->s, "%" PRIu64, v);
	return b->s;
}

const char *fmt_i64(struct numbuf *b, int64_t v)
{
	snprintf(b->s, sizeof b->s, "%" PRId64, v);
	return b->s;
}

uint64_t col_u64(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? 0 : strtoull(PQgetvalue(r, row, col), NULL, 10);
}

int64_t col_i64(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

uint8_t *col_bytea(const PGresult *r, int row, int col, size_t *len)
{
	const char *s = PQgetvalue(r, row, col);
	size_t n = strlen(s);
	if (n < 2 || s[0] != '\\' || s[1] != 'x' || (n % 2))
		return NULL;
	*len = (n - 2) / 2;
	uint8_t *out = malloc(*len ? *len : 1);
	if (!out)
		return NULL;
	for (size_t i = 0; i < *len; i++) {
		int hi = hexval(s[2 + 2 * i]), lo = hexval(s[3 + 2 * i]);
		if (hi < 0 || lo < 0) {
			free(out);
			return NULL;
		}
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return out;
}

char *pack_bytea_param(const ProtobufCMessage *m)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = protobuf_c_message_get_packed_size(m);
	uint8_t *raw = malloc(n ? n : 1);
	char *out = malloc(2 * n + 3);
	if (!raw || !out) {
		free(raw);
		free(out);
		return NULL;
	}
	protobuf_c_message_pack(m, raw);
	out[0] = '\\';
	out[1] = 'x';
	for (size_t i = 0; i < n; i++) {
		out[2 + 2 * i] = hex[raw[i] >> 4];
		out[3 + 2 * i] = hex[raw[i] & 15];
	}
	out[2 + 2 * n] = '\0';
	free(raw);
	return out;
}

size_t page_fit(const void *const *items, size_t n)
{
	size_t max = (size_t)app_get()->cfg.max_page_bytes, bytes = 0;
	for (size_t i = 0; i < n; i++) {
		/* each item is a length-delimited field of the answer: tag,
		 * length, message */
		size_t sz = protobuf_c_message_get_packed_size(items[i]) + 6;
		if (i > 0 && bytes + sz > max)
			return i;
		bytes += sz;
	}
	return n;
}

void page_token_encode(uint64_t last_id, char *out, size_t len)
{
	snprintf(out, len, "i%" PRIx64, last_id);
}

int page_token_decode(const char *tok, uint64_t *last_id)
{
	*last_id = 0;
	if (!tok || !*tok)
		return 0;
	char *end;
	if (tok[0] != 'i' || !tok[1])
		return -1;
	unsigned long long v = strtoull(tok + 1, &end, 16);
	if (*end)
		return -1;
	*last_id = v;
	return 0;
}
