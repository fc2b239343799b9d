/* admin.c — the admin's commands (AdminService): tenants, operators,
 * tokens, node cordons, money (top-ups, payouts), reports, the ledger
 * audit, transfers and the matching policy. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "client.h"
#include "pbjson.h"
#include "gpumatch/v1/admin_service.pb-c.h"

static int admin_call(struct ctx *c, const char *method, json_t *req, ProtobufCMessage **m)
{
	return call_json(c, "AdminService", method, req, m);
}

/* Calls method and prints the reply with cols (list at list_path, or the
 * object at obj_path). */
static int call_print(struct ctx *c, const char *method, json_t *req, const char *list_path,
                      const char *obj_path, const struct col *cols, size_t ncols)
{
	ProtobufCMessage *m;
	int rc = admin_call(c, method, req, &m);
	if (rc)
		return rc;
	out_reply(c, m, list_path, obj_path, cols, ncols);
	protobuf_c_message_free_unpacked(m, NULL);
	return EXIT_OK;
}

static void page_flags(struct ctx *c, json_t *req)
{
	const char *v;
	if ((v = opt_str(c, "page-size")))
		json_object_set_new(req, "pageSize", json_string(v));
	if ((v = opt_str(c, "page-token")))
		json_object_set_new(req, "pageToken", json_string(v));
}

static json_t *id_req(struct ctx *c, const char *field, int *rc)
{
	uint64_t id;
	*rc = pos_id(c, 0, "ID", &id);
	return *rc ? NULL : json_pack("{s:o}", field, juint64(id));
}

/* Copies flag values into obj; names[] pairs "flag", "jsonField". Money
 * flags (ending in -limit or price) are parsed as amounts. Adds the proto
 * field names to mask when given. */
struct field_flag {
	const char *flag, *field, *proto;
	bool money;
};

static int fields_from_flags(struct ctx *c, const struct field_flag *ff, size_t n, json_t *obj,
                             json_t *mask)
{
	for (size_t i = 0; i < n; i++) {
		const char *v = opt_str(c, ff[i].flag);
		if (!v)
			continue;
		if (ff[i].money) {
			int64_t m;
			if (parse_money_micros(v, &m))
				return usage_error(c,
				                   "--%s: expected an amount such as 100.00, got "
				                   "\"%s\"",
				                   ff[i].flag, v);
			json_object_set_new(obj, ff[i].field, jint64(m));
		} else {
			json_object_set_new(obj, ff[i].field, json_string(v));
		}
		if (mask)
			json_array_append_new(mask, json_string(ff[i].proto));
	}
	return EXIT_OK;
}

/* ---- tenants ---- */

static const struct col tenant_cols[] = {
	{ "ID", "id", F_STR },
	{ "NAME", "name", F_STR },
	{ "STATE", "state", F_ENUM },
	{ "WEIGHT", "fairShareWeight", F_NUM },
	{ "BALANCE", "balanceMicros", F_MONEY },
	{ "HELD", "heldMicros", F_MONEY },
	{ "CREDIT LIMIT", "creditLimitMicros", F_MONEY },
	{ "MAX GPUS", "maxRunningGpus", F_NUM },
	{ "CONTACT", "contact", F_STR },
};

static const struct field_flag tenant_ff[] = {
	{ "name", "name", "name", false },
	{ "weight", "fairShareWeight", "fair_share_weight", false },
	{ "credit-limit", "creditLimitMicros", "credit_limit_micros", true },
	{ "max-gpus", "maxRunningGpus", "max_running_gpus", false },
	{ "contact", "contact", "contact", false },
};

static int run_tenants_list(struct ctx *c)
{
	json_t *req = json_object();
	page_flags(c, req);
	const char *states[8];
	size_t ns = opt_all(c, "state", states, NELEM(states));
	if (ns) {
		json_t *a = json_array();
		for (size_t i = 0; i < ns; i++)
			json_array_append_new(a, enum_arg("TENANT_STATE_", states[i]));
		json_object_set_new(req, "states", a);
	}
	return call_print(c, "ListTenants", req, "tenants", NULL, tenant_cols, NELEM(tenant_cols));
}

static int run_tenants_get(struct ctx *c)
{
	int rc;
	json_t *req = id_req(c, "tenantId", &rc);
	return req ? call_print(c, "GetTenant", req, NULL, "tenant", tenant_cols,
	                        NELEM(tenant_cols))
	           : rc;
}

static int run_tenants_create(struct ctx *c)
{
	if (!opt_has(c, "name"))
		return usage_error(c, "--name is required");
	json_t *t = json_object();
	int rc = fields_from_flags(c, tenant_ff, NELEM(tenant_ff), t, NULL);
	if (rc) {
		json_decref(t);
		return rc;
	}
	return call_print(c, "CreateTenant", json_pack("{s:o}", "tenant", t), NULL, "tenant",
	                  tenant_cols, NELEM(tenant_cols));
}

static int run_tenants_update(struct ctx *c)
{
	uint64_t id;
	int rc = pos_id(c, 0, "TENANT_ID", &id);
	if (rc)
		return rc;
	json_t *t = json_pack("{s:o}", "id", juint64(id)), *mask = json_array();
	rc = fields_from_flags(c, tenant_ff, NELEM(tenant_ff), t, mask);
	if (!rc && !json_array_size(mask))
		rc = usage_error(c, "nothing to change: give at least one of --name, --weight, "
		                    "--credit-limit, --max-gpus, --contact");
	if (rc) {
		json_decref(t);
		json_decref(mask);
		return rc;
	}
	return call_print(c, "UpdateTenant",
	                  json_pack("{s:o,s:o}", "tenant", t, "updateMask", mask), NULL, "tenant",
	                  tenant_cols, NELEM(tenant_cols));
}

static int run_tenants_disable(struct ctx *c)
{
	int rc;
	json_t *req = id_req(c, "tenantId", &rc);
	if (!req)
		return rc;
	if (opt_str(c, "reason"))
		json_object_set_new(req, "reason", json_string(opt_str(c, "reason")));
	if (opt_has(c, "cancel-jobs"))
		json_object_set_new(req, "cancelJobs", json_true());
	return call_print(c, "DisableTenant", req, NULL, "tenant", tenant_cols, NELEM(tenant_cols));
}

static int run_tenants_enable(struct ctx *c)
{
	int rc;
	json_t *req = id_req(c, "tenantId", &rc);
	return req ? call_print(c, "EnableTenant", req, NULL, "tenant", tenant_cols,
	                        NELEM(tenant_cols))
	           : rc;
}

/* ---- operators ---- */

static const struct col operator_cols[] = {
	{ "ID", "id", F_STR },
	{ "NAME", "name", F_STR },
	{ "STATE", "state", F_ENUM },
	{ "NODES", "nodeCount", F_NUM },
	{ "NODE LIMIT", "nodeLimit", F_NUM },
	{ "EARNED", "earningsMicros", F_MONEY },
	{ "PAID OUT", "paidOutMicros", F_MONEY },
	{ "CONTACT", "contact", F_STR },
};

static const struct field_flag operator_ff[] = {
	{ "name", "name", "name", false },
	{ "node-limit", "nodeLimit", "node_limit", false },
	{ "contact", "contact", "contact", false },
};

static int run_operators_list(struct ctx *c)
{
	json_t *req = json_object();
	page_flags(c, req);
	const char *states[8];
	size_t ns = opt_all(c, "state", states, NELEM(states));
	if (ns) {
		json_t *a = json_array();
		for (size_t i = 0; i < ns; i++)
			json_array_append_new(a, enum_arg("OPERATOR_STATE_", states[i]));
		json_object_set_new(req, "states", a);
	}
	return call_print(c, "ListOperators", req, "operators", NULL, operator_cols,
	                  NELEM(operator_cols));
}

static int run_operators_get(struct ctx *c)
{
	int rc;
	json_t *req = id_req(c, "operatorId", &rc);
	return req ? call_print(c, "GetOperator", req, NULL, "operatorRecord", operator_cols,
	                        NELEM(operator_cols))
	           : rc;
}

static int run_operators_create(struct ctx *c)
{
	if (!opt_has(c, "name"))
		return usage_error(c, "--name is required");
	json_t *o = json_object();
	int rc = fields_from_flags(c, operator_ff, NELEM(operator_ff), o, NULL);
	if (rc) {
		json_decref(o);
		return rc;
	}
	return call_print(c, "CreateOperator", json_pack("{s:o}", "operatorRecord", o), NULL,
	                  "operatorRecord", operator_cols, NELEM(operator_cols));
}

static int run_operators_update(struct ctx *c)
{
	uint64_t id;
	int rc = pos_id(c, 0, "OPERATOR_ID", &id);
	if (rc)
		return rc;
	json_t *o = json_pack("{s:o}", "id", juint64(id)), *mask = json_array();
	rc = fields_from_flags(c, operator_ff, NELEM(operator_ff), o, mask);
	if (!rc && !json_array_size(mask))
		rc = usage_error(c, "nothing to change: give --name, --node-limit or --contact");
	if (rc) {
		json_decref(o);
		json_decref(mask);
		return rc;
	}
	return call_print(c, "UpdateOperator",
	                  json_pack("{s:o,s:o}", "operatorRecord", o, "updateMask", mask), NULL,
	                  "operatorRecord", operator_cols, NELEM(operator_cols));
}

static int run_operators_disable(struct ctx *c)
{
	int rc;
	json_t *req = id_req(c, "operatorId", &rc);
	if (!req)
		return rc;
	if (opt_str(c, "reason"))
		json_object_set_new(req, "reason", json_string(opt_str(c, "reason")));
	if (opt_has(c, "drain-nodes"))
		json_object_set_new(req, "drainNodes", json_true());
	return call_print(c, "DisableOperator", req, NULL, "operatorRecord", operator_cols,
	                  NELEM(operator_cols));
}

static int run_operators_enable(struct ctx *c)
{
	int rc;
	json_t *req = id_req(c, "operatorId", &rc);
	return req ? call_print(c, "EnableOperator", req, NULL, "operatorRecord", operator_cols,
	                        NELEM(operator_cols))
	           : rc;
}

/* ---- tokens ---- */

static const struct col token_cols[] = {
	{ "ID", "id", F_STR },
	{ "ROLE", "role", F_ENUM },
	{ "TENANT", "tenantId", F_STR },
	{ "OPERATOR", "operatorId", F_STR },
	{ "NAME", "name", F_STR },
	{ "PREFIX", "prefix", F_STR },
	{ "CREATED", "createdAtUs", F_TIME },
	{ "EXPIRES", "expiresAtUs", F_TIME },
	{ "REVOKED", "revokedAtUs", F_TIME },
};

static int run_tokens_list(struct ctx *c)
{
	json_t *req = json_object();
	page_flags(c, req);
	const char *v;
	if ((v = opt_str(c, "role")))
		json_object_set_new(req, "role", enum_arg("ROLE_", v));
	if ((v = opt_str(c, "tenant"))) {
		int rc = tenant_ref(c, "tenant", v, req, "tenantId");
		if (rc) {
			json_decref(req);
			return rc;
		}
	}
	if ((v = opt_str(c, "operator")))
		json_object_set_new(req, "operatorId", json_string(v));
	if (opt_has(c, "include-revoked"))
		json_object_set_new(req, "includeRevoked", json_true());
	return call_print(c, "ListTokens", req, "tokens", NULL, token_cols, NELEM(token_cols));
}

static int run_tokens_create(struct ctx *c)
{
	const char *v = opt_str(c, "role");
	if (!v)
		return usage_error(c, "--role is required (tenant, operator or admin)");
	json_t *req = json_pack("{s:o}", "role", enum_arg("ROLE_", v));
	if ((v = opt_str(c, "tenant"))) {
		int rc = tenant_ref(c, "tenant", v, req, "tenantId");
		if (rc) {
			json_decref(req);
			return rc;
		}
	}
	if ((v = opt_str(c, "operator")))
		json_object_set_new(req, "operatorId", json_string(v));
	if ((v = opt_str(c, "name")))
		json_object_set_new(req, "name", json_string(v));
	if ((v = opt_str(c, "expires"))) {
		int64_t us = parse_duration_us(v);
		if (us <= 0) {
			json_decref(req);
			return usage_error(
			    c, "--expires: expected a duration such as 30d, got \"%s\"", v);
		}
		json_object_set_new(req, "expiresAtUs", jint64(cl_now_us() + us));
	}
	ProtobufCMessage *m;
	int rc = admin_call(c, "CreateToken", req, &m);
	if (rc)
		return rc;
	Gpumatch__V1__CreateTokenResponse *r = (Gpumatch__V1__CreateTokenResponse *)m;
	if (c->json) {
		out_json(m);
	} else {
		fprintf(stderr, "token %" PRIu64 " created; the secret below is shown only once\n",
		        r->token ? r->token->id : 0);
		printf("%s\n", r->secret);
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return EXIT_OK;
}

static int run_tokens_revoke(struct ctx *c)
{
	int rc;
	json_t *req = id_req(c, "tokenId", &rc);
	return req ? call_print(c, "RevokeToken", req, NULL, "token", token_cols, NELEM(token_cols))
	           : rc;
}

/* ---- nodes ---- */

static const struct col cordon_cols[] = {
	{ "ID", "id", F_STR },
	{ "NAME", "name", F_STR },
	{ "STATE", "state", F_ENUM },
	{ "STATE REASON", "stateReason", F_STR },
};

static int run_cordon(struct ctx *c)
{
	int rc;
	json_t *req = id_req(c, "nodeId", &rc);
	if (!req)
		return rc;
	if (opt_str(c, "reason"))
		json_object_set_new(req, "reason", json_string(opt_str(c, "reason")));
	return call_print(c, "CordonNode", req, NULL, "node", cordon_cols, NELEM(cordon_cols));
}

static int run_uncordon(struct ctx *c)
{
	int rc;
	json_t *req = id_req(c, "nodeId", &rc);
	return req ? call_print(c, "UncordonNode", req, NULL, "node", cordon_cols,
	                        NELEM(cordon_cols))
	           : rc;
}

/* ---- money ---- */

static const struct col transfer_cols[] = {
	{ "ID", "id", F_STR },
	{ "KIND", "kind", F_ENUM },
	{ "STATE", "state", F_ENUM },
	{ "AMOUNT", "amountMicros", F_MONEY },
	{ "DEBIT", "debitAccountId", F_STR },
	{ "CREDIT", "creditAccountId", F_STR },
	{ "LEASE", "leaseId", F_STR },
	{ "IDEMPOTENCY ID", "idempotencyId", F_STR },
	{ "CREATED", "createdAtUs", F_TIME },
};

static int money_call(struct ctx *c, const char *method, const char *id_field)
{
	uint64_t id;
	int64_t amount;
	int rc = pos_id(c, 0, "ID", &id);
	if (rc)
		return rc;
	if (parse_money_micros(c->pos[1], &amount) || !amount)
		return usage_error(
		    c, "AMOUNT: expected a positive amount such as 100.00, got \"%s\"", c->pos[1]);
	const char *idem = opt_str(c, "idempotency-id");
	if (!idem)
		return usage_error(c, "--idempotency-id is required (e.g. the payment reference); "
		                      "a retry with the same id moves no money twice");
	static const char *const aliases[][2] = { { "amountMicros", "AMOUNT" },
		                                  { "idempotencyId", "--idempotency-id" },
		                                  { NULL, NULL } };
	c->aliases = aliases;
	json_t *req = json_pack("{s:o,s:o,s:s}", id_field, juint64(id), "amountMicros",
	                        jint64(amount), "idempotencyId", idem);
	const char *v;
	if ((v = opt_str(c, "comment")))
		json_object_set_new(req, "comment", json_string(v));
	if ((v = opt_str(c, "reference")))
		json_object_set_new(req, "reference", json_string(v));
	ProtobufCMessage *m;
	if ((rc = admin_call(c, method, req, &m)))
		return rc;
	static const struct col cols[] = {
		{ "TRANSFER", "transfer.id", F_STR },
		{ "AMOUNT", "transfer.amountMicros", F_MONEY },
		{ "DUPLICATE", "duplicate", F_BOOL },
		{ "ACCOUNT", "account.id", F_STR },
		{ "BALANCE", "account.balanceMicros", F_MONEY },
	};
	out_reply(c, m, NULL, "", cols, NELEM(cols));
	protobuf_c_message_free_unpacked(m, NULL);
	return EXIT_OK;
}

static int run_topup(struct ctx *c)
{
	return money_call(c, "TopUpTenant", "tenantId");
}

static int run_payout(struct ctx *c)
{
	return money_call(c, "PayoutOperator", "operatorId");
}

static int window_req(struct ctx *c, json_t *req)
{
	if (!opt_has(c, "since")) {
		jset(req, "window.startUs", jint64(cl_now_us() - 30LL * 86400 * 1000000));
		return EXIT_OK;
	}
	return set_window_since(c, req, "window");
}

static int run_report_usage(struct ctx *c)
{
	json_t *req = json_object();
	int rc = window_req(c, req);
	if (rc) {
		json_decref(req);
		return rc;
	}
	if (opt_str(c, "region"))
		json_object_set_new(req, "region", json_string(opt_str(c, "region")));
	ProtobufCMessage *m;
	if ((rc = admin_call(c, "GetUsageReport", req, &m)))
		return rc;
	if (c->json) {
		out_json(m);
	} else {
		json_t *j = msg_to_json(m);
		static const struct col tot[] = {
			{ "GPU SECONDS AVAILABLE", "gpuSecondsAvailable", F_NUM },
			{ "GPU SECONDS USED", "gpuSecondsUsed", F_NUM },
			{ "UTILIZATION", "utilizationPpm", F_PPM },
		};
		static const struct col models[] = {
			{ "GPU MODEL", "gpuModel", F_STR },
			{ "GPUS", "gpuCount", F_NUM },
			{ "AVAILABLE S", "gpuSecondsAvailable", F_NUM },
			{ "USED S", "gpuSecondsUsed", F_NUM },
			{ "UTILIZATION", "utilizationPpm", F_PPM },
		};
		static const struct col sold[] = {
			{ "GPU MODEL", "gpuModel", F_STR },
			{ "REGION", "region", F_STR },
			{ "GPU SECONDS", "gpuSeconds", F_NUM },
			{ "REVENUE", "revenueMicros", F_MONEY },
		};
		out_fields(j, tot, NELEM(tot));
		printf("\n");
		out_table(json_object_get(j, "gpuModels"), models, NELEM(models));
		printf("\n");
		out_table(json_object_get(j, "sold"), sold, NELEM(sold));
		json_decref(j);
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return EXIT_OK;
}

static int run_report_revenue(struct ctx *c)
{
	json_t *req = json_object();
	int rc = window_req(c, req);
	if (rc) {
		json_decref(req);
		return rc;
	}
	ProtobufCMessage *m;
	if ((rc = admin_call(c, "GetRevenueReport", req, &m)))
		return rc;
	if (c->json) {
		out_json(m);
	} else {
		json_t *j = msg_to_json(m);
		static const struct col tot[] = {
			{ "CURRENCY", "currency", F_STR },
			{ "GROSS", "grossMicros", F_MONEY },
			{ "OPERATORS", "operatorMicros", F_MONEY },
			{ "PLATFORM FEES", "platformFeeMicros", F_MONEY },
		};
		static const struct col ops[] = {
			{ "OPERATOR", "operatorId", F_STR },
			{ "NAME", "operatorName", F_STR },
			{ "GROSS", "grossMicros", F_MONEY },
			{ "EARNED", "operatorMicros", F_MONEY },
			{ "FEES", "platformFeeMicros", F_MONEY },
			{ "PAID OUT", "paidOutMicros", F_MONEY },
			{ "GPU SECONDS", "gpuSeconds", F_NUM },
		};
		static const struct col ten[] = {
			{ "TENANT", "tenantId", F_STR },
			{ "NAME", "tenantName", F_STR },
			{ "SPEND", "spendMicros", F_MONEY },
			{ "TOPPED UP", "toppedUpMicros", F_MONEY },
			{ "GPU SECONDS", "gpuSeconds", F_NUM },
			{ "JOBS", "jobs", F_NUM },
		};
		out_fields(j, tot, NELEM(tot));
		printf("\n");
		out_table(json_object_get(j, "operators"), ops, NELEM(ops));
		printf("\n");
		out_table(json_object_get(j, "tenants"), ten, NELEM(ten));
		json_decref(j);
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return EXIT_OK;
}

static int run_audit(struct ctx *c)
{
	json_t *req = json_object();
	if (opt_str(c, "max"))
		json_object_set_new(req, "maxViolations", json_string(opt_str(c, "max")));
	ProtobufCMessage *m;
	int rc = admin_call(c, "AuditLedger", req, &m);
	if (rc)
		return rc;
	Gpumatch__V1__AuditLedgerResponse *r = (Gpumatch__V1__AuditLedgerResponse *)m;
	if (c->json) {
		out_json(m);
	} else {
		printf("ledger %s: %" PRIu64 " accounts, %" PRIu64 " transfers checked, %u "
		       "violations\n",
		       r->ok ? "ok" : "NOT ok", r->accounts_checked, r->transfers_checked,
		       r->violation_count);
		if (r->n_violations) {
			static const struct col cols[] = {
				{ "KIND", "kind", F_ENUM },
				{ "ACCOUNT", "accountId", F_STR },
				{ "TRANSFER", "transferId", F_STR },
				{ "EXPECTED", "expectedMicros", F_MONEY },
				{ "ACTUAL", "actualMicros", F_MONEY },
				{ "MESSAGE", "message", F_STR },
			};
			json_t *j = msg_to_json(m);
			out_table(json_object_get(j, "violations"), cols, NELEM(cols));
			json_decref(j);
		}
	}
	int ok = r->ok;
	protobuf_c_message_free_unpacked(m, NULL);
	return ok ? EXIT_OK : EXIT_SERVER;
}

/* Writes s to dir/name; returns 0 or prints why and returns -1. */
static int write_text(const char *dir, const char *name, const char *s)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "w");
	if (!f || fputs(s, f) < 0 || fclose(f)) {
		fprintf(stderr, "gpumatch admin export-trace: %s: %s\n", path, strerror(errno));
		if (f)
			fclose(f);
		return -1;
	}
	return 0;
}

/* gpumatchd's own jobs and nodes as a trace for gpumatch-sim
 * (docs/traces.md): nodes.csv and jobs.csv in --dir. */
static int run_export_trace(struct ctx *c)
{
	const char *dir = opt_str(c, "dir");
	if (!dir)
		return usage_error(c, "--dir is required (where nodes.csv and jobs.csv go)");
	json_t *req = json_object();
	int rc = window_req(c, req);
	if (rc) {
		json_decref(req);
		return rc;
	}
	const char *v;
	if ((v = opt_str(c, "max-jobs")))
		json_object_set_new(req, "maxJobs", json_string(v));
	ProtobufCMessage *m;
	rc = admin_call(c, "ExportTrace", req, &m);
	if (rc)
		return rc;
	Gpumatch__V1__ExportTraceResponse *r = (Gpumatch__V1__ExportTraceResponse *)m;
	if (mkdir(dir, 0755) && errno != EEXIST) {
		fprintf(stderr, "gpumatch admin export-trace: %s: %s\n", dir, strerror(errno));
		protobuf_c_message_free_unpacked(m, NULL);
		return EXIT_USAGE;
	}
	rc = write_text(dir, "nodes.csv", r->nodes_csv) || write_text(dir, "jobs.csv", r->jobs_csv)
	         ? EXIT_USAGE
	         : EXIT_OK;
	if (!rc) {
		if (c->json)
			printf("{\"dir\":\"%s\",\"nodes\":%u,\"jobs\":%u}\n", dir, r->nodes,
			       r->jobs);
		else
			printf("%u nodes and %u jobs written to %s/nodes.csv and %s/jobs.csv\n"
			       "replay: gpumatch-sim --nodes %s/nodes.csv --jobs %s/jobs.csv "
			       "--policy POLICY.json --seed 1\n",
			       r->nodes, r->jobs, dir, dir, dir, dir);
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return rc;
}

static int run_transfers(struct ctx *c)
{
	json_t *req = json_object();
	page_flags(c, req);
	const char *v, *kinds[8];
	if ((v = opt_str(c, "account")))
		json_object_set_new(req, "accountId", json_string(v));
	if ((v = opt_str(c, "lease")))
		json_object_set_new(req, "leaseId", json_string(v));
	size_t nk = opt_all(c, "kind", kinds, NELEM(kinds));
	if (nk) {
		json_t *a = json_array();
		for (size_t i = 0; i < nk; i++)
			json_array_append_new(a, enum_arg("TRANSFER_KIND_", kinds[i]));
		json_object_set_new(req, "kinds", a);
	}
	int rc = set_window_since(c, req, "window");
	if (rc) {
		json_decref(req);
		return rc;
	}
	return call_print(c, "ListTransfers", req, "transfers", NULL, transfer_cols,
	                  NELEM(transfer_cols));
}

/* ---- policy ---- */

static const struct col policy_fields[] = {
	{ "VERSION", "version", F_STR },
	{ "W_PRICE", "wPrice", F_STR },
	{ "W_PERF_PER_PRICE", "wPerfPerPrice", F_STR },
	{ "W_PERF", "wPerf", F_STR },
	{ "W_FIT", "wFit", F_STR },
	{ "W_RELIABILITY", "wReliability", F_STR },
	{ "W_LOCALITY", "wLocality", F_STR },
	{ "FIT_MODE", "fitMode", F_ENUM },
	{ "SCORE_NODES", "scoreNodes", F_NUM },
	{ "W_PRIO_CLASS", "wPrioClass", F_STR },
	{ "W_AGE", "wAge", F_STR },
	{ "W_FAIRSHARE", "wFairshare", F_STR },
	{ "AGE_MAX", "ageMaxUs", F_DUR },
	{ "FAIRNESS", "fairness", F_ENUM },
	{ "FAIRSHARE_HALF_LIFE", "fairshareHalfLifeUs", F_DUR },
	{ "ALLOW_UNVERIFIED", "allowUnverified", F_BOOL },
	{ "BACKFILL", "backfill", F_BOOL },
	{ "RESERVATIONS", "reservations", F_NUM },
	{ "BACKFILL_DEPTH", "backfillDepth", F_NUM },
	{ "PREEMPTION", "preemption", F_BOOL },
	{ "PREEMPTION_GRACE", "preemptionGraceUs", F_DUR },
	{ "INFEASIBLE_TIMEOUT", "infeasibleTimeoutUs", F_DUR },
	{ "W_SPEEDUP", "wSpeedup", F_STR },
	{ "COMPARATIVE_ADVANTAGE", "comparativeAdvantage", F_STR },
	{ "W_COST_PER_WORK", "wCostPerWork", F_STR },
	{ "W_SMALL_JOBS", "wSmallJobs", F_STR },
	{ "W_SHORT_JOBS", "wShortJobs", F_STR },
	{ "PREEMPT_SHORTER_FACTOR", "preemptShorterFactor", F_STR },
	{ "PREEMPT_MIN_RUN", "preemptMinRunUs", F_DUR },
	{ "W_FRAG", "wFrag", F_STR },
	{ "HOLD_FOR_FASTER", "holdForFaster", F_STR },
	{ "PLATFORM_FEE", "platformFeePpm", F_PPM },
	{ "CREATED_BY", "createdBy", F_STR },
	{ "CREATED", "createdAtUs", F_TIME },
	{ "COMMENT", "comment", F_STR },
};

/* A policy version given on the command line: N >= 1 a stored version, 0
 * the built-in policy that ran before the first change (*builtin). */
static int policy_version_arg(struct ctx *c, const char *what, const char *text, uint64_t *ver,
                              bool *builtin)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(text, &end, 10);
	if (errno || end == text || *end || text[0] == '-')
		return usage_error(c,
		                   "%s: expected a policy version (0 = the built-in policy, 1, 2, "
		                   "...), got \"%s\"",
		                   what, text);
	*ver = v;
	*builtin = v == 0;
	return EXIT_OK;
}

/* version 0 and !builtin: the active policy */
static int get_policy_v(struct ctx *c, uint64_t version, bool builtin, json_t **out)
{
	json_t *req = json_object();
	if (version)
		json_object_set_new(req, "version", juint64(version));
	if (builtin)
		json_object_set_new(req, "builtin", json_true());
	ProtobufCMessage *m;
	int rc = admin_call(c, "GetPolicy", req, &m);
	if (rc)
		return rc;
	json_t *j = msg_to_json(m);
	protobuf_c_message_free_unpacked(m, NULL);
	*out = json_incref(json_object_get(j, "policy"));
	json_decref(j);
	if (!*out)
		*out = json_object();
	return EXIT_OK;
}

static int get_policy(struct ctx *c, uint64_t version, json_t **out)
{
	return get_policy_v(c, version, false, out);
}

static int run_policy_get(struct ctx *c)
{
	json_t *req = json_object();
	if (opt_str(c, "version")) {
		uint64_t ver = 0;
		bool builtin = false;
		int rc = policy_version_arg(c, "--version", opt_str(c, "version"), &ver, &builtin);
		if (rc) {
			json_decref(req);
			return rc;
		}
		if (builtin)
			json_object_set_new(req, "builtin", json_true());
		else
			json_object_set_new(req, "version", juint64(ver));
	}
	return call_print(c, "GetPolicy", req, NULL, "policy", policy_fields, NELEM(policy_fields));
}

/* A policy file as a checked Policy JSON tree (decoded once, so that a bad
 * field is named before anything is sent). */
static int load_policy(struct ctx *c, const char *path, json_t **out)
{
	char err[600];
	json_t *p = tree_load(path, err, sizeof err);
	if (!p) {
		fprintf(stderr, "gpumatch %s: %s\n", c->cmd->words, err);
		return EXIT_USAGE;
	}
	/* a saved `policy get -o json` reply holds the policy under "policy" */
	json_t *inner = json_object_get(p, "policy");
	if (json_is_object(inner)) {
		json_incref(inner);
		json_decref(p);
		p = inner;
	}
	char *text = json_dumps(p, JSON_COMPACT);
	ProtobufCMessage *m = NULL;
	int bad = !text || pbjson_decode(&gpumatch__v1__policy__descriptor, text, strlen(text), &m,
	                                 err, sizeof err);
	free(text);
	if (bad) {
		json_decref(p);
		fprintf(stderr, "gpumatch %s: %s: %s\n", c->cmd->words, path, err);
		return EXIT_USAGE;
	}
	/* back to JSON: the canonical names, defaults dropped */
	json_decref(p);
	*out = msg_to_json(m);
	protobuf_c_message_free_unpacked(m, NULL);
	return EXIT_OK;
}

static const char *const policy_meta[] = { "version", "createdBy", "createdAtUs", "comment" };

static bool is_meta(const char *k)
{
	for (size_t i = 0; i < NELEM(policy_meta); i++)
		if (!strcmp(k, policy_meta[i]))
			return true;
	return false;
}

static int print_diff(json_t *a, json_t *b)
{
	int n = 0;
	for (size_t i = 0; i < NELEM(policy_fields); i++) {
		const char *k = policy_fields[i].path;
		if (is_meta(k))
			continue;
		json_t *x = json_object_get(a, k), *y = json_object_get(b, k);
		if ((!x && !y) || (x && y && json_equal(x, y)))
			continue;
		char bx[128], by[128];
		struct col cl = policy_fields[i];
		printf("%-22s %s -> %s\n", cl.head, cell_text(a, &cl, bx, sizeof bx),
		       cell_text(b, &cl, by, sizeof by));
		n++;
	}
	return n;
}

static int run_policy_diff(struct ctx *c)
{
	json_t *want, *have;
	int rc = load_policy(c, c->pos[0], &want);
	if (rc)
		return rc;
	uint64_t ver = 0;
	bool builtin = false;
	if (opt_str(c, "version") &&
	    (rc = policy_version_arg(c, "--version", opt_str(c, "version"), &ver, &builtin))) {
		json_decref(want);
		return rc;
	}
	if ((rc = get_policy_v(c, ver, builtin, &have))) {
		json_decref(want);
		return rc;
	}
	int n = print_diff(have, want);
	if (!n)
		printf("no changes\n");
	json_decref(want);
	json_decref(have);
	return EXIT_OK;
}

static int set_policy(struct ctx *c, json_t *policy, bool validate_only, uint64_t expected,
                      const char *comment)
{
	json_t *req = json_pack("{s:o,s:s}", "policy", policy, "comment", comment);
	if (expected)
		json_object_set_new(req, "expectedVersion", juint64(expected));
	if (validate_only)
		json_object_set_new(req, "validateOnly", json_true());
	ProtobufCMessage *m;
	int rc = admin_call(c, "SetPolicy", req, &m);
	if (rc)
		return rc;
	if (c->json) {
		out_json(m);
	} else {
		Gpumatch__V1__SetPolicyResponse *r = (Gpumatch__V1__SetPolicyResponse *)m;
		if (validate_only)
			printf("policy is valid%s\n", r->audit && r->audit->n_changes
			                                  ? "; it would change:"
			                                  : "; it changes nothing");
		else
			printf("policy version %" PRIu64 " is active\n",
			       r->policy ? r->policy->version : 0);
		/* the same lines as `policy diff`: FIELD old -> new */
		for (size_t i = 0; r->audit && i < r->audit->n_changes; i++) {
			char head[64], ov[128], nv[128];
			size_t k = 0;
			for (const char *q = r->audit->changes[i]->field; *q && k + 1 < sizeof head;
			     q++)
				head[k++] = (char)toupper((unsigned char)*q);
			head[k] = '\0';
			enum_text(r->audit->changes[i]->old_value, ov, sizeof ov);
			enum_text(r->audit->changes[i]->new_value, nv, sizeof nv);
			printf("%-22s %s -> %s\n", head, ov, nv);
		}
		for (size_t i = 0; i < r->n_warnings; i++)
			fprintf(stderr, "gpumatch %s: warning: %s\n", c->cmd->words,
			        r->warnings[i]);
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return EXIT_OK;
}

static int run_policy_set(struct ctx *c)
{
	const char *comment = opt_str(c, "comment");
	bool validate = !strcmp(c->cmd->words, "admin policy validate");
	if (!comment && !validate)
		return usage_error(c, "--comment is required (why; stored in the audit log)");
	json_t *p;
	int rc = load_policy(c, c->pos[0], &p);
	if (rc)
		return rc;
	uint64_t expected = 0;
	if (opt_str(c, "expected-version"))
		expected = strtoull(opt_str(c, "expected-version"), NULL, 10);
	if (!strcmp(c->cmd->words, "admin policy apply") && !expected) {
		/* apply: only over the version the file was diffed against */
		json_t *have;
		if ((rc = get_policy(c, 0, &have))) {
			json_decref(p);
			return rc;
		}
		expected = strtoull(json_string_value(json_object_get(have, "version"))
		                        ? json_string_value(json_object_get(have, "version"))
		                        : "0",
		                    NULL, 10);
		/* the server's audit of the change is printed once, below */
		printf("applying over active version %" PRIu64 "\n", expected);
		json_decref(have);
	}
	return set_policy(c, p, validate, expected, comment ? comment : "validate");
}

static int run_policy_rollback(struct ctx *c)
{
	uint64_t ver = 0;
	bool builtin = false;
	int rc = policy_version_arg(c, "VERSION", c->pos[0], &ver, &builtin);
	if (rc)
		return rc;
	json_t *old;
	if ((rc = get_policy_v(c, ver, builtin, &old)))
		return rc;
	for (size_t i = 0; i < NELEM(policy_meta); i++)
		json_object_del(old, policy_meta[i]);
	char comment[300];
	snprintf(comment, sizeof comment, "%s%srollback to version %" PRIu64,
	         opt_str(c, "comment") ? opt_str(c, "comment") : "",
	         opt_str(c, "comment") ? ": " : "", ver);
	return set_policy(c, old, false, 0, comment);
}

static int run_policy_history(struct ctx *c)
{
	json_t *req = json_object();
	page_flags(c, req);
	ProtobufCMessage *m;
	int rc = admin_call(c, "ListPolicyAudit", req, &m);
	if (rc)
		return rc;
	if (c->json) {
		out_json(m);
	} else {
		Gpumatch__V1__ListPolicyAuditResponse *r =
		    (Gpumatch__V1__ListPolicyAuditResponse *)m;
		static const struct col cols[] = {
			{ "VERSION", "version", F_STR },
			{ "PREVIOUS", "previousVersion", F_STR },
			{ "ACTOR", "actor", F_STR },
			{ "AT", "atUs", F_TIME },
			{ "CHANGES", "changes[].field", F_STR },
			{ "COMMENT", "comment", F_STR },
		};
		json_t *j = msg_to_json(m);
		out_table(json_object_get(j, "entries"), cols, NELEM(cols));
		json_decref(j);
		(void)r;
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return EXIT_OK;
}

static int run_policy_simulate(struct ctx *c)
{
	json_t *cands = json_array();
	for (int i = 0; i < c->npos; i++) {
		json_t *p;
		int rc = load_policy(c, c->pos[i], &p);
		if (rc) {
			json_decref(cands);
			return rc;
		}
		json_array_append_new(cands, p);
	}
	json_t *req = json_pack("{s:o}", "candidates", cands);
	const char *v;
	if ((v = opt_str(c, "trace"))) {
		json_object_set_new(req, "source", json_string("SIMULATION_SOURCE_TRACE"));
		json_object_set_new(req, "traceName", json_string(v));
	} else {
		json_object_set_new(req, "source", json_string("SIMULATION_SOURCE_LIVE"));
	}
	if ((v = opt_str(c, "max-diffs")))
		json_object_set_new(req, "maxDiffs", json_string(v));
	bool trace = opt_has(c, "trace");
	static const char *const trace_only[] = { "window", "arrival-scale", "seed",
		                                  "preemptible" };
	for (size_t i = 0; i < NELEM(trace_only); i++)
		if (!trace && opt_has(c, trace_only[i])) {
			json_decref(req);
			return usage_error(c, "--%s: only with --trace", trace_only[i]);
		}
	if ((v = opt_str(c, "window"))) {
		const char *comma = strchr(v, ',');
		char from[64] = "";
		if (comma && (size_t)(comma - v) < sizeof from)
			snprintf(from, sizeof from, "%.*s", (int)(comma - v), v);
		int64_t a = comma ? (strcmp(from, "0") ? parse_duration_us(from) : 0) : -1;
		int64_t b = comma ? parse_duration_us(comma + 1) : -1;
		if (a < 0 || b <= a) {
			json_decref(req);
			return usage_error(
			    c,
			    "--window: expected FROM,TO offsets into the trace such as "
			    "0,7d, got \"%s\"",
			    v);
		}
		jset(req, "window.startUs", jint64(a));
		jset(req, "window.endUs", jint64(b));
	}
	if ((v = opt_str(c, "arrival-scale"))) {
		char *end;
		double x = strtod(v, &end);
		if (*end || !(x > 0) || x > 1000) {
			json_decref(req);
			return usage_error(
			    c,
			    "--arrival-scale: expected a factor such as 2 or 0.5, got "
			    "\"%s\"",
			    v);
		}
		json_object_set_new(req, "arrivalScale", json_real(x));
	}
	if ((v = opt_str(c, "seed")))
		json_object_set_new(req, "seed", json_string(v));
	if (opt_has(c, "preemptible"))
		json_object_set_new(req, "preemptible", json_true());
	/* the server allows a trace replay ten minutes: so does the client,
	 * unless --timeout says otherwise */
	if (trace && !opt_has(c, "timeout"))
		c->timeout_s = 660;
	ProtobufCMessage *m;
	int rc = admin_call(c, "SimulatePolicy", req, &m);
	if (rc)
		return rc;
	if (c->json) {
		out_json(m);
	} else {
		json_t *j = msg_to_json(m), *rows = json_array();
		json_t *base = json_object_get(j, "baseline");
		if (base) {
			json_object_set_new(base, "label", json_string("active"));
			json_array_append(rows, base);
		}
		size_t i;
		json_t *e;
		json_array_foreach(json_object_get(j, "candidates"), i, e)
		{
			char l[64];
			snprintf(l, sizeof l, "%s", c->pos[i < (size_t)c->npos ? i : 0]);
			json_object_set_new(e, "label", json_string(l));
			json_array_append(rows, e);
		}
		static const struct col cols[] = {
			{ "POLICY", "label", F_STR },
			{ "PLACED", "metrics.jobsPlaced", F_NUM },
			{ "PENDING", "metrics.jobsPending", F_NUM },
			{ "PREEMPTIONS", "metrics.preemptions", F_NUM },
			{ "WAIT P50", "metrics.waitP50Us", F_DUR0 },
			{ "WAIT P95", "metrics.waitP95Us", F_DUR0 },
			{ "UTILIZATION", "metrics.gpuUtilizationPpm", F_PPM },
			{ "REVENUE", "metrics.revenueMicros", F_MONEY },
			{ "FAIRNESS", "metrics.fairnessJainPpm", F_PPM },
			{ "DIFFS", "diffCount", F_NUM },
		};
		/* a replay runs jobs to completion: their times too */
		static const struct col trace_cols[] = {
			{ "POLICY", "label", F_STR },
			{ "COMPLETED", "metrics.jobsCompleted", F_NUM },
			{ "PENDING", "metrics.jobsPending", F_NUM },
			{ "PREEMPTIONS", "metrics.preemptions", F_NUM },
			{ "WAIT P50", "metrics.waitP50Us", F_DUR0 },
			{ "WAIT P95", "metrics.waitP95Us", F_DUR0 },
			{ "JCT MEAN", "metrics.jctMeanUs", F_DUR0 },
			{ "JCT P50", "metrics.jctP50Us", F_DUR0 },
			{ "JCT P99", "metrics.jctP99Us", F_DUR0 },
			{ "MAKESPAN", "metrics.makespanUs", F_DUR0 },
			{ "UTILIZATION", "metrics.gpuUtilizationPpm", F_PPM },
			{ "COST", "metrics.costMicros", F_MONEY },
		};
		if (trace)
			out_table(rows, trace_cols, NELEM(trace_cols));
		else
			out_table(rows, cols, NELEM(cols));
		json_decref(rows);
		json_decref(j);
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return EXIT_OK;
}

static const struct optdef no_opts[] = { { 0 } };
static const struct optdef list_opts[] = {
	{ "state", "STATE", "only in this state (active, disabled)", true },
	{ "page-size", "N", "rows per page", false },
	{ "page-token", "TOKEN", "the page after a previous listing", false },
	{ 0 },
};
static const struct optdef tenant_opts[] = {
	{ "name", "NAME", "unique name", false },
	{ "weight", "N", "fair-share weight (default 1)", false },
	{ "credit-limit", "AMOUNT", "how far below zero the balance may go", false },
	{ "max-gpus", "N", "running GPU quota (0 = none)", false },
	{ "contact", "TEXT", "e-mail or other contact", false },
	{ 0 },
};
static const struct optdef tenant_disable_opts[] = {
	{ "reason", "TEXT", "why", false },
	{ "cancel-jobs", NULL, "also cancel its queued and running jobs", false },
	{ 0 },
};
static const struct optdef operator_opts[] = {
	{ "name", "NAME", "unique name", false },
	{ "node-limit", "N", "nodes it may register", false },
	{ "contact", "TEXT", "e-mail or other contact", false },
	{ 0 },
};
static const struct optdef operator_disable_opts[] = {
	{ "reason", "TEXT", "why", false },
	{ "drain-nodes", NULL, "also drain every node it owns", false },
	{ 0 },
};
static const struct optdef tokens_list_opts[] = {
	{ "role", "ROLE", "tenant, operator or admin", false },
	{ "tenant", "ID|NAME", "one tenant's tokens", false },
	{ "operator", "ID", "one operator's tokens", false },
	{ "include-revoked", NULL, "list revoked tokens too", false },
	{ "page-size", "N", "rows per page", false },
	{ "page-token", "TOKEN", "the page after a previous listing", false },
	{ 0 },
};
static const struct optdef tokens_create_opts[] = {
	{ "role", "ROLE", "tenant, operator or admin (required)", false },
	{ "tenant", "ID|NAME", "the tenant of a tenant token", false },
	{ "operator", "ID", "the operator of an operator token", false },
	{ "name", "NAME", "what it is for", false },
	{ "expires", "DUR", "expires after DUR, e.g. 90d (default never)", false },
	{ 0 },
};
static const struct optdef reason_opts[] = {
	{ "reason", "TEXT", "why", false },
	{ 0 },
};
static const struct optdef money_opts[] = {
	{ "idempotency-id", "ID", "unique id of this movement, e.g. a payment reference", false },
	{ "comment", "TEXT", "free text", false },
	{ "reference", "TEXT", "payout: external payment reference", false },
	{ 0 },
};
static const struct optdef usage_report_opts[] = {
	{ "since", "DUR", "window: the last DUR (default 30d)", false },
	{ "region", "REGION", "one region", false },
	{ 0 },
};
static const struct optdef since_opts[] = {
	{ "since", "DUR", "window: the last DUR (default 30d)", false },
	{ 0 },
};
static const struct optdef export_opts[] = {
	{ "dir", "DIR", "where nodes.csv and jobs.csv go (created if missing)", false },
	{ "since", "DUR", "jobs submitted within the last DUR (default 30d)", false },
	{ "max-jobs", "N", "at most N jobs (default 100000)", false },
	{ 0 },
};
static const struct optdef audit_opts[] = {
	{ "max", "N", "violations listed at most (default 1000)", false },
	{ 0 },
};
static const struct optdef transfers_opts[] = {
	{ "account", "ID", "one account", false },
	{ "kind", "KIND", "top-up, hold, settle, fee, release, payout, adjustment", true },
	{ "lease", "ID", "one lease's transfers", false },
	{ "since", "DUR", "created within the last DUR", false },
	{ "page-size", "N", "rows per page", false },
	{ "page-token", "TOKEN", "the page after a previous listing", false },
	{ 0 },
};
static const struct optdef policy_get_opts[] = {
	{ "version", "N", "an older version (0: the built-in policy; default: the active one)",
	  false },
	{ 0 },
};
static const struct optdef policy_set_opts[] = {
	{ "comment", "TEXT", "why (required; stored in the audit log)", false },
	{ "expected-version", "N", "refuse if the active version is not N", false },
	{ 0 },
};
static const struct optdef policy_diff_opts[] = {
	{ "version", "N", "compare with this version (default: the active one)", false },
	{ 0 },
};
static const struct optdef policy_sim_opts[] = {
	{ "trace", "NAME", "replay a recorded trace instead of the live queue", false },
	{ "max-diffs", "N", "placement differences returned per candidate", false },
	{ "window", "FROM,TO", "with --trace: the part of the trace to replay, e.g. 0,7d", false },
	{ "arrival-scale", "X", "with --trace: arrivals X times as dense (default 1)", false },
	{ "seed", "N", "with --trace: the draw of job types and tenants (default 1)", false },
	{ "preemptible", NULL, "with --trace: every job preemptible", false },
	{ 0 },
};
static const struct optdef page_opts[] = {
	{ "page-size", "N", "rows per page", false },
	{ "page-token", "TOKEN", "the page after a previous listing", false },
	{ 0 },
};
static const struct optdef rollback_opts[] = {
	{ "comment", "TEXT", "why", false },
	{ 0 },
};

const struct cmd cmds_admin[] = {
	{ "admin tenants list", "", "list tenants", list_opts, 0, 0, run_tenants_list, false },
	{ "admin tenants get", "TENANT_ID", "show a tenant", no_opts, 1, 1, run_tenants_get,
	  false },
	{ "admin tenants create", "", "create a tenant", tenant_opts, 0, 0, run_tenants_create,
	  false },
	{ "admin tenants update", "TENANT_ID", "change a tenant's settings", tenant_opts, 1, 1,
	  run_tenants_update, false },
	{ "admin tenants disable", "TENANT_ID", "disable a tenant", tenant_disable_opts, 1, 1,
	  run_tenants_disable, false },
	{ "admin tenants enable", "TENANT_ID", "enable a tenant", no_opts, 1, 1, run_tenants_enable,
	  false },
	{ "admin operators list", "", "list operators", list_opts, 0, 0, run_operators_list,
	  false },
	{ "admin operators get", "OPERATOR_ID", "show an operator", no_opts, 1, 1,
	  run_operators_get, false },
	{ "admin operators create", "", "create an operator", operator_opts, 0, 0,
	  run_operators_create, false },
	{ "admin operators update", "OPERATOR_ID", "change an operator's settings", operator_opts,
	  1, 1, run_operators_update, false },
	{ "admin operators disable", "OPERATOR_ID", "disable an operator", operator_disable_opts, 1,
	  1, run_operators_disable, false },
	{ "admin operators enable", "OPERATOR_ID", "enable an operator", no_opts, 1, 1,
	  run_operators_enable, false },
	{ "admin tokens list", "", "list tokens", tokens_list_opts, 0, 0, run_tokens_list, false },
	{ "admin tokens create", "", "create a token; prints the secret once", tokens_create_opts,
	  0, 0, run_tokens_create, false },
	{ "admin tokens revoke", "TOKEN_ID", "revoke a token", no_opts, 1, 1, run_tokens_revoke,
	  false },
	{ "admin node cordon", "NODE_ID", "hold a node: no new work", reason_opts, 1, 1, run_cordon,
	  false },
	{ "admin node uncordon", "NODE_ID", "release a cordoned node", no_opts, 1, 1, run_uncordon,
	  false },
	{ "admin topup", "TENANT_ID AMOUNT", "credit a tenant's prepaid balance", money_opts, 2, 2,
	  run_topup, false },
	{ "admin payout", "OPERATOR_ID AMOUNT", "pay out an operator's earnings", money_opts, 2, 2,
	  run_payout, false },
	{ "admin report usage", "", "fleet utilization and GPU-hours sold", usage_report_opts, 0, 0,
	  run_report_usage, false },
	{ "admin report revenue", "", "revenue by operator and tenant", since_opts, 0, 0,
	  run_report_revenue, false },
	{ "admin audit", "", "check every ledger invariant (exit 1 if violated)", audit_opts, 0, 0,
	  run_audit, false },
	{ "admin export-trace", "", "this server's jobs and nodes as a trace for gpumatch-sim",
	  export_opts, 0, 0, run_export_trace, false },
	{ "admin transfers", "", "list ledger transfers", transfers_opts, 0, 0, run_transfers,
	  false },
	{ "admin policy get", "", "show the active (or an older) matching policy", policy_get_opts,
	  0, 0, run_policy_get, false },
	{ "admin policy set", "POLICY_FILE", "make a policy file the active policy",
	  policy_set_opts, 1, 1, run_policy_set, false },
	{ "admin policy validate", "POLICY_FILE",
	  "check a policy file on the server and show what it would change (stores nothing)",
	  policy_set_opts, 1, 1, run_policy_set, false },
	{ "admin policy diff", "POLICY_FILE", "compare a policy file with the active policy",
	  policy_diff_opts, 1, 1, run_policy_diff, false },
	{ "admin policy apply", "POLICY_FILE",
	  "show the diff, then set the policy only over the version diffed against",
	  policy_set_opts, 1, 1, run_policy_set, false },
	{ "admin policy simulate", "POLICY_FILE...",
	  "replay candidate policies against the live queue or a trace", policy_sim_opts, 1, 8,
	  run_policy_simulate, false },
	{ "admin policy history", "", "the policy audit log", page_opts, 0, 0, run_policy_history,
	  false },
	{ "admin policy rollback", "VERSION",
	  "make an older version (0: the built-in policy) the active policy again", rollback_opts,
	  1, 1, run_policy_rollback, false },
	{ 0 },
};
