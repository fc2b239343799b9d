/* admin.c — AdminService: tenants, operators, API tokens, and the matching
 * policy (versioned in Postgres, validated by the scheduling library,
 * audited with a field-by-field diff). Every input is checked before any
 * query runs, so a rejected call writes nothing. */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "convert.h"
#include "gpumatch/v1/admin_service.pb-c.h"
#include "gpumatch/v1/identity.pb-c.h"
#include "gpumatch/v1/policy.pb-c.h"
#include "log.h"
#include "service.h"

#define NAME_MAX_BYTES    128
#define CONTACT_MAX_BYTES 256
#define TOKEN_NAME_MAX_BYTES \
	((int)sizeof(((struct principal *)0)->name) - 1) /* as the audit actor keeps it */
#define COMMENT_MAX_BYTES 1024
#define REASON_MAX_BYTES  512 /* as DrainNode and CancelJob take */
#define PAGE_DEFAULT      50
#define PAGE_MAX          1000
#define COLUMN_INT_MAX    2147483647u /* Postgres integer columns */
#define PPM_MAX           1000000u

/* ---- input checks ------------------------------------------------------------------ */

/* Names of tenants and operators: 1..128 bytes of [A-Za-z0-9._-]. */
static bool name_ok(const char *s)
{
	size_t n = s ? strlen(s) : 0;
	if (n < 1 || n > NAME_MAX_BYTES)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_' || c == '.'))
			return false;
	}
	return true;
}

/* Free text: well-formed UTF-8 (Postgres would refuse anything else with an
 * internal-looking error) without control characters; newlines and tabs
 * only where multiline is set. */
static bool text_ok(const char *s, bool multiline)
{
	const unsigned char *p = (const unsigned char *)s;
	while (*p) {
		unsigned c = *p;
		if (c < 0x80) {
			if ((c < 0x20 && !(multiline && (c == '\n' || c == '\t'))) || c == 0x7f)
				return false;
			p++;
			continue;
		}
		int n;
		unsigned cp;
		if (c >= 0xc2 && c <= 0xdf) {
			n = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			n = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			n = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		for (int i = 1; i <= n; i++) {
			if ((p[i] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (p[i] & 0x3f);
		}
		/* overlong forms, surrogates, beyond U+10FFFF, C1 controls */
		if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp < 0xa0))
			return false;
		p += n + 1;
	}
	return true;
}

static const char *str_or_empty(const char *s)
{
	return s ? s : "";
}

/* Why a tenant, operator or node is held: optional one-line text. */
static bool reason_ok(const char *s)
{
	return strlen(s) <= REASON_MAX_BYTES && text_ok(s, false);
}

/* The update_mask of an Update call: proto field names of md, as the
 * contract spells them, each one of updatable (NULL-terminated, at most 32
 * names); sets bit i of *bits for updatable[i]. Repeats are harmless.
 * Answers invalid_argument and returns -1 for an empty mask, a name that is
 * not a field of md, or a read-only one. */
static int mask_parse(struct rpc_call *call, char *const *mask, size_t n,
                      const ProtobufCMessageDescriptor *md, const char *const *updatable,
                      unsigned *bits)
{
	char may[256] = "";
	for (size_t k = 0, len = 0; updatable[k] && len < sizeof may; k++)
		len += (size_t)snprintf(may + len, sizeof may - len, "%s%s", k ? ", " : "",
		                        updatable[k]);
	*bits = 0;
	if (!n) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "updateMask: required; name the fields of %s to change (%s)",
		          md->short_name, may);
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		const char *m = str_or_empty(mask[i]);
		size_t k = 0;
		while (updatable[k] && strcmp(m, updatable[k]))
			k++;
		if (updatable[k]) {
			*bits |= 1u << k;
			continue;
		}
		/* echo the name only when it is short, printable text */
		if (strlen(m) > 64 || !text_ok(m, false))
			rpc_error(
			    call, RPC_INVALID_ARGUMENT,
			    "updateMask[%zu]: not a field name of %s; fields that may change: "
			    "%s",
			    i, md->short_name, may);
		else if (protobuf_c_message_descriptor_get_field_by_name(md, m))
			rpc_error(
			    call, RPC_INVALID_ARGUMENT,
			    "updateMask[%zu]: \"%s\" is read-only; fields that may change: %s", i,
			    m, may);
		else
			rpc_error(
			    call, RPC_INVALID_ARGUMENT,
			    "updateMask[%zu]: \"%s\" is not a field of %s (proto field names, "
			    "e.g. \"%s\"); fields that may change: %s",
			    i, m, md->short_name, updatable[0], may);
		return -1;
	}
	return 0;
}

/* Calls fn (may be NULL) for each id of a comma-separated list ("" = none)
 * as string_agg writes it; returns how many there were. */
static size_t each_id(const char *list, void (*fn)(uint64_t id))
{
	size_t n = 0;
	for (const char *p = list; *p;) {
		char *end;
		uint64_t id = strtoull(p, &end, 10);
		if (end == p)
			break;
		if (fn)
			fn(id);
		n++;
		p = *end == ',' ? end + 1 : end;
	}
	return n;
}

/* page_size and page_token of a List request: *limit rows, after *after.
 * Answers the call and returns -1 when either is bad. */
static int page_args(struct rpc_call *call, int32_t page_size, const char *page_token, int *limit,
                     uint64_t *after)
{
	if (page_size < 0) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "pageSize: must be 0 (the default, %d) or positive, got %" PRId32,
		          PAGE_DEFAULT, page_size);
		return -1;
	}
	*limit = page_size == 0 ? PAGE_DEFAULT : page_size > PAGE_MAX ? PAGE_MAX : page_size;
	if (page_token_decode(page_token, after)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "pageToken: not a token from an earlier response of this list");
		return -1;
	}
	return 0;
}

/* "{1}", "{2}", "{1,2}" for a mask of state values 1 and 2; NULL for none. */
static const char *state_array(unsigned mask)
{
	switch (mask & 6u) {
	case 2u:
		return "{1}";
	case 4u:
		return "{2}";
	case 6u:
		return "{1,2}";
	default:
		return NULL;
	}
}

/* Arrays of n response items and of pointers to them (n may be 0). */
static int alloc_items(size_t n, size_t item_size, void **items, void ***ptrs)
{
	*items = calloc(n ? n : 1, item_size);
	*ptrs = calloc(n ? n : 1, sizeof **ptrs);
	if (!*items || !*ptrs) {
		free(*items);
		free(*ptrs);
		*items = NULL;
		*ptrs = NULL;
		return -1;
	}
	for (size_t i = 0; i < n; i++)
		(*ptrs)[i] = (char *)*items + i * item_size;
	return 0;
}

/* Runs sql for call; when it cannot even be queued, answers unavailable
 * and frees arg (a malloc'd query context). */
static void exec_or_fail(struct rpc_call *call, const char *sql, int nparams,
                         const char *const *params, pg_cb cb, void *arg)
{
	if (pg_exec(app_get()->pg, NULL, sql, nparams, params, cb, arg)) {
		rpc_error(call, RPC_UNAVAILABLE, "the record store is unavailable, retry later");
		free(arg);
	}
}

/* What a callback needs besides its result: the call, its request, and the
 * page size for lists. */
struct admin_q {
	struct rpc_call *call;
	const ProtobufCMessage *req; /* owned by the RPC layer until the answer */
	int limit;                   /* lists: rows asked for (one more is queried) */
};

static struct admin_q *q_new(struct rpc_call *call, const ProtobufCMessage *req, int limit)
{
	struct admin_q *q = malloc(sizeof *q);
	if (!q) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return NULL;
	}
	q->call = call;
	q->req = req;
	q->limit = limit;
	return q;
}

/* ---- tenants ---------------------------------------------------------------------- */

#define TENANT_COLS                                                                           \
	"id, name, state, fair_share_weight, credit_limit_micros, max_running_gpus, contact," \
	" disabled_reason, created_at_us, updated_at_us,"                                     \
	" coalesce((SELECT la.balance_micros FROM ledger_accounts la"                         \
	"   WHERE la.kind = 1 AND la.owner_id = tenants.id), 0) AS balance_micros,"           \
	" coalesce((SELECT la.pending_debits_micros FROM ledger_accounts la"                  \
	"   WHERE la.kind = 1 AND la.owner_id = tenants.id), 0) AS held_micros"

/* Fills t from TENANT_COLS at row; strings borrow from r. The ledger fields
 * are the tenant's account as it stands (posted balance, pending holds). */
static void tenant_from_row(const PGresult *r, int row, Gpumatch__V1__Tenant *t)
{
	gpumatch__v1__tenant__init(t);
	t->id = col_u64(r, row, 0);
	t->name = PQgetvalue(r, row, 1);
	t->state = (Gpumatch__V1__TenantState)col_i64(r, row, 2);
	t->fair_share_weight = (uint32_t)col_u64(r, row, 3);
	t->credit_limit_micros = col_i64(r, row, 4);
	t->max_running_gpus = (uint32_t)col_u64(r, row, 5);
	t->contact = PQgetvalue(r, row, 6);
	t->disabled_reason = PQgetvalue(r, row, 7);
	t->created_at_us = col_i64(r, row, 8);
	t->updated_at_us = col_i64(r, row, 9);
	t->balance_micros = col_i64(r, row, 10);
	t->held_micros = col_i64(r, row, 11);
}

/* Tenants and operators as records one answer carries. */
struct record_kind {
	const char *what; /* for messages: "tenant" */
	void (*from_row)(const PGresult *r, int row, void *rec);
};

static void tenant_row(const PGresult *r, int row, void *rec)
{
	tenant_from_row(r, row, rec);
}

static const struct record_kind TENANT = { "tenant", tenant_row };

/* Answers q from a statement returning the record's row: the Postgres
 * error, not_found naming id_field, or a resp_d message with its field
 * `field` set to the record. Returns the record's id (0 when not found or
 * failed). Tenant and Operator messages both start with their id. */
static uint64_t reply_record(struct admin_q *q, enum pg_status st, PGresult *res,
                             const char *sqlstate, const char *err, const struct record_kind *k,
                             const char *id_field, uint64_t id,
                             const ProtobufCMessageDescriptor *resp_d, const char *field)
{
	if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
		return 0;
	}
	if (PQntuples(res) != 1) {
		rpc_error(q->call, RPC_NOT_FOUND, "%s: %s %" PRIu64 " not found", id_field, k->what,
		          id);
		return 0;
	}
	union {
		Gpumatch__V1__Tenant t;
		Gpumatch__V1__Operator o;
	} rec;
	k->from_row(res, 0, &rec);
	max_align_t buf[16]; /* any of the one-record responses */
	const ProtobufCFieldDescriptor *f =
	    protobuf_c_message_descriptor_get_field_by_name(resp_d, field);
	if (resp_d->sizeof_message > sizeof buf || !f || f->type != PROTOBUF_C_TYPE_MESSAGE) {
		rpc_error(q->call, RPC_INTERNAL, "no %s field in %s", field, resp_d->name);
		return 0;
	}
	ProtobufCMessage *out = (ProtobufCMessage *)buf;
	resp_d->message_init(out);
	*(void **)((char *)out + f->offset) = &rec;
	rpc_reply(q->call, out);
	return k == &TENANT ? rec.t.id : rec.o.id;
}

static void create_tenant_cb(enum pg_status st, PGresult *res, const char *sqlstate,
                             const char *err, void *arg)
{
	struct admin_q *q = arg;
	const Gpumatch__V1__CreateTenantRequest *in = (const void *)q->req;
	if (st == PG_ERROR && !strcmp(sqlstate, "23505")) {
		rpc_error(q->call, RPC_ALREADY_EXISTS,
		          "tenant.name: a tenant named \"%s\" already exists", in->tenant->name);
	} else if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
	} else if (PQntuples(res) != 1) {
		rpc_error(q->call, RPC_INTERNAL, "internal error");
	} else {
		Gpumatch__V1__Tenant t;
		Gpumatch__V1__CreateTenantResponse out = GPUMATCH__V1__CREATE_TENANT_RESPONSE__INIT;
		tenant_from_row(res, 0, &t);
		out.tenant = &t;
		log_info("tenant created tenant=%" PRIu64 " name=%s by=%" PRIu64, t.id, t.name,
		         rpc_principal(q->call)->token_id);
		schedloop_tenant_changed(app_get(), t.id);
		rpc_reply(q->call, &out.base);
	}
	free(q);
}

void admin_create_tenant(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__CreateTenantRequest *in = (const void *)req;
	const Gpumatch__V1__Tenant *t = in->tenant;
	if (!t) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "tenant: required");
		return;
	}
	if (!name_ok(t->name)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "tenant.name: must be 1..%d bytes of letters, digits, '-', '_', '.'",
		          NAME_MAX_BYTES);
		return;
	}
	uint32_t weight = t->fair_share_weight ? t->fair_share_weight : 1;
	if (weight > 1000000) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "tenant.fairShareWeight: must be between 1 and 1000000 (0 means 1), got "
		          "%" PRIu32,
		          weight);
		return;
	}
	if (t->credit_limit_micros < 0) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "tenant.creditLimitMicros: must be 0 or positive, got %" PRId64,
		          t->credit_limit_micros);
		return;
	}
	if (t->max_running_gpus > COLUMN_INT_MAX) {
		rpc_error(
		    call, RPC_INVALID_ARGUMENT,
		    "tenant.maxRunningGpus: must be at most %u (0 means no quota), got %" PRIu32,
		    COLUMN_INT_MAX, t->max_running_gpus);
		return;
	}
	const char *contact = str_or_empty(t->contact);
	if (strlen(contact) > CONTACT_MAX_BYTES || !text_ok(contact, false)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "tenant.contact: must be at most %d bytes of UTF-8 text without control "
		          "characters",
		          CONTACT_MAX_BYTES);
		return;
	}
	struct admin_q *q = q_new(call, req, 0);
	if (!q)
		return;
	struct numbuf w, cl, mg, now;
	const char *params[] = { t->name,
		                 fmt_u64(&w, weight),
		                 fmt_i64(&cl, t->credit_limit_micros),
		                 fmt_u64(&mg, t->max_running_gpus),
		                 contact,
		                 fmt_i64(&now, now_us()) };
	exec_or_fail(
	    call,
	    "INSERT INTO tenants (name, fair_share_weight, credit_limit_micros,"
	    " max_running_gpus, contact, created_at_us, updated_at_us)"
	    " VALUES ($1, $2::integer, $3::bigint, $4::integer, $5, $6::bigint, $6::bigint)"
	    " RETURNING " TENANT_COLS,
	    6, params, create_tenant_cb, q);
}

static void get_tenant_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                          void *arg)
{
	struct admin_q *q = arg;
	const Gpumatch__V1__GetTenantRequest *in = (const void *)q->req;
	reply_record(q, st, res, sqlstate, err, &TENANT, "tenantId", in->tenant_id,
	             &gpumatch__v1__get_tenant_response__descriptor, "tenant");
	free(q);
}

void admin_get_tenant(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__GetTenantRequest *in = (const void *)req;
	if (!in->tenant_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "tenantId: required");
		return;
	}
	struct admin_q *q = q_new(call, req, 0);
	if (!q)
		return;
	struct numbuf id;
	const char *params[] = { fmt_u64(&id, in->tenant_id) };
	exec_or_fail(call, "SELECT " TENANT_COLS " FROM tenants WHERE id = $1::bigint", 1, params,
	             get_tenant_cb, q);
}

static void list_tenants_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                            void *arg)
{
	struct admin_q *q = arg;
	if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
		free(q);
		return;
	}
	int rows = PQntuples(res);
	size_t n = rows > q->limit ? (size_t)q->limit : (size_t)rows;
	Gpumatch__V1__Tenant *items;
	Gpumatch__V1__Tenant **ptrs;
	if (alloc_items(n, sizeof *items, (void **)&items, (void ***)&ptrs)) {
		rpc_error(q->call, RPC_INTERNAL, "out of memory");
		free(q);
		return;
	}
	for (size_t i = 0; i < n; i++)
		tenant_from_row(res, (int)i, &items[i]);
	char next[32] = "";
	size_t shown = page_fit((const void *const *)ptrs, n);
	if ((size_t)rows > n || shown < n)
		page_token_encode(items[shown - 1].id, next, sizeof next);
	Gpumatch__V1__ListTenantsResponse out = GPUMATCH__V1__LIST_TENANTS_RESPONSE__INIT;
	out.n_tenants = shown;
	out.tenants = ptrs;
	out.next_page_token = next;
	rpc_reply(q->call, &out.base);
	free(items);
	free(ptrs);
	free(q);
}

void admin_list_tenants(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__ListTenantsRequest *in = (const void *)req;
	int limit;
	uint64_t after;
	if (page_args(call, in->page_size, in->page_token, &limit, &after))
		return;
	unsigned mask = 0;
	for (size_t i = 0; i < in->n_states; i++) {
		int s = (int)in->states[i];
		if (s != GPUMATCH__V1__TENANT_STATE__TENANT_STATE_ACTIVE &&
		    s != GPUMATCH__V1__TENANT_STATE__TENANT_STATE_DISABLED) {
			rpc_error(
			    call, RPC_INVALID_ARGUMENT,
			    "states[%zu]: must be TENANT_STATE_ACTIVE or TENANT_STATE_DISABLED", i);
			return;
		}
		mask |= 1u << s;
	}
	struct admin_q *q = q_new(call, req, limit);
	if (!q)
		return;
	struct numbuf a, l;
	const char *params[] = { fmt_u64(&a, after), state_array(mask), fmt_i64(&l, limit + 1) };
	exec_or_fail(
	    call,
	    "SELECT " TENANT_COLS " FROM tenants"
	    " WHERE id > $1::bigint AND ($2::smallint[] IS NULL OR state = ANY($2::smallint[]))"
	    " ORDER BY id LIMIT $3::integer",
	    3, params, list_tenants_cb, q);
}

/* -- UpdateTenant, DisableTenant, EnableTenant -- */

/* What UpdateTenant may change, in the contract's order; bit i of the
 * parsed mask is tenant_updatable[i]. */
static const char *const tenant_updatable[] = {
	"fair_share_weight", "credit_limit_micros", "max_running_gpus", "contact", "name", NULL
};
enum {
	TU_WEIGHT = 1u << 0,
	TU_CREDIT = 1u << 1,
	TU_GPUS = 1u << 2,
	TU_CONTACT = 1u << 3,
	TU_NAME = 1u << 4
};

static void update_tenant_cb(enum pg_status st, PGresult *res, const char *sqlstate,
                             const char *err, void *arg)
{
	struct admin_q *q = arg;
	const Gpumatch__V1__UpdateTenantRequest *in = (const void *)q->req;
	uint64_t id;
	if (st == PG_ERROR && !strcmp(sqlstate, "23505")) {
		rpc_error(q->call, RPC_ALREADY_EXISTS,
		          "tenant.name: a tenant named \"%s\" already exists", in->tenant->name);
	} else if ((id = reply_record(
	                q, st, res, sqlstate, err, &TENANT, "tenant.id", in->tenant->id,
	                &gpumatch__v1__update_tenant_response__descriptor, "tenant"))) {
		log_info("tenant updated tenant=%" PRIu64 " fields=%zu by=%" PRIu64, id,
		         in->n_update_mask, rpc_principal(q->call)->token_id);
		schedloop_tenant_changed(app_get(), id);
	}
	free(q);
}

void admin_update_tenant(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__UpdateTenantRequest *in = (const void *)req;
	const Gpumatch__V1__Tenant *t = in->tenant;
	unsigned bits;
	if (!t) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "tenant: required");
		return;
	}
	if (!t->id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "tenant.id: required");
		return;
	}
	if (mask_parse(call, in->update_mask, in->n_update_mask, &gpumatch__v1__tenant__descriptor,
	               tenant_updatable, &bits))
		return;
	/* only the fields named are checked: the others are not changed */
	if ((bits & TU_NAME) && !name_ok(t->name)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "tenant.name: must be 1..%d bytes of letters, digits, '-', '_', '.'",
		          NAME_MAX_BYTES);
		return;
	}
	if ((bits & TU_WEIGHT) && (t->fair_share_weight < 1 || t->fair_share_weight > 1000000)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "tenant.fairShareWeight: must be between 1 and 1000000, got %" PRIu32,
		          t->fair_share_weight);
		return;
	}
	if ((bits & TU_CREDIT) && t->credit_limit_micros < 0) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "tenant.creditLimitMicros: must be 0 or positive, got %" PRId64,
		          t->credit_limit_micros);
		return;
	}
	if ((bits & TU_GPUS) && t->max_running_gpus > COLUMN_INT_MAX) {
		rpc_error(
		    call, RPC_INVALID_ARGUMENT,
		    "tenant.maxRunningGpus: must be at most %u (0 means no quota), got %" PRIu32,
		    COLUMN_INT_MAX, t->max_running_gpus);
		return;
	}
	const char *contact = str_or_empty(t->contact);
	if ((bits & TU_CONTACT) &&
	    (strlen(contact) > CONTACT_MAX_BYTES || !text_ok(contact, false))) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "tenant.contact: must be at most %d bytes of UTF-8 text without control "
		          "characters",
		          CONTACT_MAX_BYTES);
		return;
	}
	struct admin_q *q = q_new(call, req, 0);
	if (!q)
		return;
	/* a field not in the mask goes as NULL and keeps its value */
	struct numbuf id, w, cl, mg, now;
	const char *params[] = { fmt_u64(&id, t->id),
		                 bits & TU_NAME ? t->name : NULL,
		                 bits & TU_WEIGHT ? fmt_u64(&w, t->fair_share_weight) : NULL,
		                 bits & TU_CREDIT ? fmt_i64(&cl, t->credit_limit_micros) : NULL,
		                 bits & TU_GPUS ? fmt_u64(&mg, t->max_running_gpus) : NULL,
		                 bits & TU_CONTACT ? contact : NULL,
		                 fmt_i64(&now, now_us()) };
	exec_or_fail(call,
	             "UPDATE tenants SET name = coalesce($2, name),"
	             " fair_share_weight = coalesce($3::integer, fair_share_weight),"
	             " credit_limit_micros = coalesce($4::bigint, credit_limit_micros),"
	             " max_running_gpus = coalesce($5::integer, max_running_gpus),"
	             " contact = coalesce($6, contact), updated_at_us = $7::bigint"
	             " WHERE id = $1::bigint RETURNING " TENANT_COLS,
	             7, params, update_tenant_cb, q);
}

static void job_failed_fn(uint64_t job_id)
{
	/* the leader holds it as pending: it must not be placed */
	schedloop_job_cancelled(app_get(), job_id);
}

static void job_ended_fn(uint64_t job_id)
{
	schedloop_job_ended(app_get(), job_id, false);
}

static void disable_tenant_cb(enum pg_status st, PGresult *res, const char *sqlstate,
                              const char *err, void *arg)
{
	struct admin_q *q = arg;
	const Gpumatch__V1__DisableTenantRequest *in = (const void *)q->req;
	/* columns: TENANT_COLS, then the queued jobs failed, the running jobs
	 * cancelled that ended at once (both "id,id,..."), and how many
	 * running jobs were cancelled in all */
	if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
	} else if (PQntuples(res) != 1) {
		rpc_error(q->call, RPC_NOT_FOUND, "tenantId: tenant %" PRIu64 " not found",
		          in->tenant_id);
	} else {
		size_t failed = each_id(PQgetvalue(res, 0, 12), job_failed_fn);
		size_t ended = each_id(PQgetvalue(res, 0, 13), job_ended_fn);
		uint64_t cancelled = col_u64(res, 0, 14);
		if (failed)
			outbox_kick(app_get());
		Gpumatch__V1__Tenant t;
		Gpumatch__V1__DisableTenantResponse out =
		    GPUMATCH__V1__DISABLE_TENANT_RESPONSE__INIT;
		tenant_from_row(res, 0, &t);
		out.tenant = &t;
		/* tokens are not revoked: auth refuses them while the tenant is
		 * disabled, and EnableTenant brings them back */
		out.tokens_revoked = 0;
		out.jobs_cancelled = (uint32_t)(failed + cancelled);
		auth_revoked(app_get());
		log_info("tenant disabled tenant=%" PRIu64 " queued_failed=%zu"
		         " running_cancelled=%" PRIu64 " ended_at_once=%zu by=%" PRIu64,
		         t.id, failed, cancelled, ended, rpc_principal(q->call)->token_id);
		rpc_reply(q->call, &out.base);
	}
	free(q);
}

void admin_disable_tenant(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__DisableTenantRequest *in = (const void *)req;
	if (!in->tenant_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "tenantId: required");
		return;
	}
	const char *reason = str_or_empty(in->reason);
	if (!reason_ok(reason)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "reason: must be at most %d bytes of UTF-8 text without control "
		          "characters",
		          REASON_MAX_BYTES);
		return;
	}
	struct admin_q *q = q_new(call, req, 0);
	if (!q)
		return;
	char why[REASON_MAX_BYTES + 32];
	snprintf(why, sizeof why, "tenant disabled%s%s", *reason ? ": " : "", reason);
	struct numbuf id, now, grace;
	const char *params[] = {
		fmt_u64(&id, in->tenant_id),        reason, fmt_i64(&now, now_us()),
		in->cancel_jobs ? "true" : "false", why,    fmt_i64(&grace, 30 * 1000000LL)
	};
	/* One statement: the tenant, its queued jobs failed (FAILED,
	 * TENANT_DISABLED) each with a dequeue row for Redis, and with
	 * cancel_jobs its running and stopping jobs cancelled as CancelJob
	 * does. Tokens need nothing: auth wants an active tenant. Idempotent:
	 * the second time finds no queued jobs and keeps updated_at_us. */
	exec_or_fail(call,
	             "WITH t AS (UPDATE tenants SET state = 2, disabled_reason = $2,"
	             "   updated_at_us = CASE WHEN state <> 2 OR disabled_reason <> $2"
	             "     THEN $3::bigint ELSE updated_at_us END"
	             "  WHERE id = $1::bigint RETURNING " TENANT_COLS "),"
	             " f AS (UPDATE jobs j SET state = 5, failure_reason = 9, failure_message = $5,"
	             "   ended_at_us = $3::bigint, updated_at_us = $3::bigint"
	             "  FROM t WHERE j.tenant_id = t.id AND j.state = 1 RETURNING j.id),"
	             " fo AS (INSERT INTO outbox (job_id, kind, created_at_us)"
	             "  SELECT f.id, 'dequeue', $3::bigint FROM f),"
	             " fe AS (INSERT INTO job_events (job_id, at_us, kind, detail)"
	             "  SELECT f.id, $3::bigint, 'ended', 'state 5: ' || $5 FROM f),"
	             " c AS (SELECT x.id, r.job_done FROM (SELECT j.id, j.tenant_id FROM jobs j, t"
	             "   WHERE $4::boolean AND j.tenant_id = t.id AND j.state IN (2, 3)) x"
	             "  CROSS JOIN LATERAL gm_cancel_job(x.id, x.tenant_id, $3::bigint, $6::bigint,"
	             "   $5) r)"
	             " SELECT t.*, (SELECT coalesce(string_agg(f.id::text, ','), '') FROM f),"
	             "  (SELECT coalesce(string_agg(c.id::text, ','), '') FROM c WHERE c.job_done),"
	             "  (SELECT count(*) FROM c) FROM t",
	             6, params, disable_tenant_cb, q);
}

static void enable_tenant_cb(enum pg_status st, PGresult *res, const char *sqlstate,
                             const char *err, void *arg)
{
	struct admin_q *q = arg;
	const Gpumatch__V1__EnableTenantRequest *in = (const void *)q->req;
	uint64_t id = reply_record(q, st, res, sqlstate, err, &TENANT, "tenantId", in->tenant_id,
	                           &gpumatch__v1__enable_tenant_response__descriptor, "tenant");
	if (id)
		log_info("tenant enabled tenant=%" PRIu64 " by=%" PRIu64, id,
		         rpc_principal(q->call)->token_id);
	free(q);
}

void admin_enable_tenant(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__EnableTenantRequest *in = (const void *)req;
	if (!in->tenant_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "tenantId: required");
		return;
	}
	struct admin_q *q = q_new(call, req, 0);
	if (!q)
		return;
	struct numbuf id, now;
	const char *params[] = { fmt_u64(&id, in->tenant_id), fmt_i64(&now, now_us()) };
	/* Its tokens work again at once. Jobs failed by the disable stay
	 * failed. Idempotent. */
	exec_or_fail(call,
	             "UPDATE tenants SET state = 1, disabled_reason = '',"
	             " updated_at_us = CASE WHEN state <> 1 THEN $2::bigint ELSE updated_at_us END"
	             " WHERE id = $1::bigint RETURNING " TENANT_COLS,
	             2, params, enable_tenant_cb, q);
}

/* ---- operators -------------------------------------------------------------------- */

/* node_count: registered nodes that are not DISABLED (NodeState 6). */
#define OPERATOR_COLS                                                                         \
	"o.id, o.name, o.state, o.node_limit, o.contact, o.disabled_reason, o.created_at_us," \
	" o.updated_at_us,"                                                                   \
	" (SELECT count(*) FROM nodes n WHERE n.operator_id = o.id AND n.state <> 6)"

static void operator_from_row(const PGresult *r, int row, Gpumatch__V1__Operator *o)
{
	gpumatch__v1__operator__init(o);
	o->id = col_u64(r, row, 0);
	o->name = PQgetvalue(r, row, 1);
	o->state = (Gpumatch__V1__OperatorState)col_i64(r, row, 2);
	o->node_limit = (uint32_t)col_u64(r, row, 3);
	o->contact = PQgetvalue(r, row, 4);
	o->disabled_reason = PQgetvalue(r, row, 5);
	o->created_at_us = col_i64(r, row, 6);
	o->updated_at_us = col_i64(r, row, 7);
	o->node_count = (uint32_t)col_u64(r, row, 8);
}

static void operator_row(const PGresult *r, int row, void *rec)
{
	operator_from_row(r, row, rec);
}

static const struct record_kind OPERATOR = { "operator", operator_row };

static void create_operator_cb(enum pg_status st, PGresult *res, const char *sqlstate,
                               const char *err, void *arg)
{
	struct admin_q *q = arg;
	const Gpumatch__V1__CreateOperatorRequest *in = (const void *)q->req;
	if (st == PG_ERROR && !strcmp(sqlstate, "23505")) {
		rpc_error(q->call, RPC_ALREADY_EXISTS,
		          "operatorRecord.name: an operator named \"%s\" already exists",
		          in->operator_record->name);
	} else if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
	} else if (PQntuples(res) != 1) {
		rpc_error(q->call, RPC_INTERNAL, "internal error");
	} else {
		Gpumatch__V1__Operator o;
		Gpumatch__V1__CreateOperatorResponse out =
		    GPUMATCH__V1__CREATE_OPERATOR_RESPONSE__INIT;
		operator_from_row(res, 0, &o);
		out.operator_record = &o;
		log_info("operator created operator=%" PRIu64 " name=%s by=%" PRIu64, o.id, o.name,
		         rpc_principal(q->call)->token_id);
		rpc_reply(q->call, &out.base);
	}
	free(q);
}

void admin_create_operator(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__CreateOperatorRequest *in = (const void *)req;
	const Gpumatch__V1__Operator *o = in->operator_record;
	if (!o) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "operatorRecord: required");
		return;
	}
	if (!name_ok(o->name)) {
		rpc_error(
		    call, RPC_INVALID_ARGUMENT,
		    "operatorRecord.name: must be 1..%d bytes of letters, digits, '-', '_', '.'",
		    NAME_MAX_BYTES);
		return;
	}
	if (o->node_limit > COLUMN_INT_MAX) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "operatorRecord.nodeLimit: must be at most %u, got %" PRIu32,
		          COLUMN_INT_MAX, o->node_limit);
		return;
	}
	const char *contact = str_or_empty(o->contact);
	if (strlen(contact) > CONTACT_MAX_BYTES || !text_ok(contact, false)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "operatorRecord.contact: must be at most %d bytes of UTF-8 text without "
		          "control characters",
		          CONTACT_MAX_BYTES);
		return;
	}
	struct admin_q *q = q_new(call, req, 0);
	if (!q)
		return;
	struct numbuf nl, now;
	const char *params[] = { o->name, fmt_u64(&nl, o->node_limit), contact,
		                 fmt_i64(&now, now_us()) };
	exec_or_fail(call,
	             "INSERT INTO operators AS o (name, node_limit, contact, created_at_us,"
	             " updated_at_us) VALUES ($1, $2::integer, $3, $4::bigint, $4::bigint)"
	             " RETURNING " OPERATOR_COLS,
	             4, params, create_operator_cb, q);
}

static void get_operator_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                            void *arg)
{
	struct admin_q *q = arg;
	const Gpumatch__V1__GetOperatorRequest *in = (const void *)q->req;
	reply_record(q, st, res, sqlstate, err, &OPERATOR, "operatorId", in->operator_id,
	             &gpumatch__v1__get_operator_response__descriptor, "operator_record");
	free(q);
}

void admin_get_operator(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__GetOperatorRequest *in = (const void *)req;
	if (!in->operator_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "operatorId: required");
		return;
	}
	struct admin_q *q = q_new(call, req, 0);
	if (!q)
		return;
	struct numbuf id;
	const char *params[] = { fmt_u64(&id, in->operator_id) };
	exec_or_fail(call, "SELECT " OPERATOR_COLS " FROM operators o WHERE o.id = $1::bigint", 1,
	             params, get_operator_cb, q);
}

static void list_operators_cb(enum pg_status st, PGresult *res, const char *sqlstate,
                              const char *err, void *arg)
{
	struct admin_q *q = arg;
	if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
		free(q);
		return;
	}
	int rows = PQntuples(res);
	size_t n = rows > q->limit ? (size_t)q->limit : (size_t)rows;
	Gpumatch__V1__Operator *items;
	Gpumatch__V1__Operator **ptrs;
	if (alloc_items(n, sizeof *items, (void **)&items, (void ***)&ptrs)) {
		rpc_error(q->call, RPC_INTERNAL, "out of memory");
		free(q);
		return;
	}
	for (size_t i = 0; i < n; i++)
		operator_from_row(res, (int)i, &items[i]);
	char next[32] = "";
	size_t shown = page_fit((const void *const *)ptrs, n);
	if ((size_t)rows > n || shown < n)
		page_token_encode(items[shown - 1].id, next, sizeof next);
	Gpumatch__V1__ListOperatorsResponse out = GPUMATCH__V1__LIST_OPERATORS_RESPONSE__INIT;
	out.n_operators = shown;
	out.operators = ptrs;
	out.next_page_token = next;
	rpc_reply(q->call, &out.base);
	free(items);
	free(ptrs);
	free(q);
}

void admin_list_operators(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__ListOperatorsRequest *in = (const void *)req;
	int limit;
	uint64_t after;
	if (page_args(call, in->page_size, in->page_token, &limit, &after))
		return;
	unsigned mask = 0;
	for (size_t i = 0; i < in->n_states; i++) {
		int s = (int)in->states[i];
		if (s != GPUMATCH__V1__OPERATOR_STATE__OPERATOR_STATE_ACTIVE &&
		    s != GPUMATCH__V1__OPERATOR_STATE__OPERATOR_STATE_DISABLED) {
			rpc_error(call, RPC_INVALID_ARGUMENT,
			          "states[%zu]: must be OPERATOR_STATE_ACTIVE or "
			          "OPERATOR_STATE_DISABLED",
			          i);
			return;
		}
		mask |= 1u << s;
	}
	struct admin_q *q = q_new(call, req, limit);
	if (!q)
		return;
	struct numbuf a, l;
	const char *params[] = { fmt_u64(&a, after), state_array(mask), fmt_i64(&l, limit + 1) };
	exec_or_fail(call,
	             "SELECT " OPERATOR_COLS " FROM operators o WHERE o.id > $1::bigint"
	             " AND ($2::smallint[] IS NULL OR o.state = ANY($2::smallint[]))"
	             " ORDER BY o.id LIMIT $3::integer",
	             3, params, list_operators_cb, q);
}

/* -- UpdateOperator, DisableOperator, EnableOperator -- */

static const char *const operator_updatable[] = { "node_limit", "contact", "name", NULL };
enum { OU_LIMIT = 1u << 0, OU_CONTACT = 1u << 1, OU_NAME = 1u << 2 };

static void update_operator_cb(enum pg_status st, PGresult *res, const char *sqlstate,
                               const char *err, void *arg)
{
	struct admin_q *q = arg;
	const Gpumatch__V1__UpdateOperatorRequest *in = (const void *)q->req;
	uint64_t id;
	if (st == PG_ERROR && !strcmp(sqlstate, "23505")) {
		rpc_error(q->call, RPC_ALREADY_EXISTS,
		          "operatorRecord.name: an operator named \"%s\" already exists",
		          in->operator_record->name);
	} else if ((id = reply_record(q, st, res, sqlstate, err, &OPERATOR, "operatorRecord.id",
	                              in->operator_record->id,
	                              &gpumatch__v1__update_operator_response__descriptor,
	                              "operator_record"))) {
		log_info("operator updated operator=%" PRIu64 " fields=%zu by=%" PRIu64, id,
		         in->n_update_mask, rpc_principal(q->call)->token_id);
	}
	free(q);
}

void admin_update_operator(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__UpdateOperatorRequest *in = (const void *)req;
	const Gpumatch__V1__Operator *o = in->operator_record;
	unsigned bits;
	if (!o) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "operatorRecord: required");
		return;
	}
	if (!o->id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "operatorRecord.id: required");
		return;
	}
	if (mask_parse(call, in->update_mask, in->n_update_mask,
	               &gpumatch__v1__operator__descriptor, operator_updatable, &bits))
		return;
	if ((bits & OU_NAME) && !name_ok(o->name)) {
		rpc_error(
		    call, RPC_INVALID_ARGUMENT,
		    "operatorRecord.name: must be 1..%d bytes of letters, digits, '-', '_', '.'",
		    NAME_MAX_BYTES);
		return;
	}
	/* a limit below node_count is allowed: it only stops new registrations */
	if ((bits & OU_LIMIT) && o->node_limit > COLUMN_INT_MAX) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "operatorRecord.nodeLimit: must be at most %u, got %" PRIu32,
		          COLUMN_INT_MAX, o->node_limit);
		return;
	}
	const char *contact = str_or_empty(o->contact);
	if ((bits & OU_CONTACT) &&
	    (strlen(contact) > CONTACT_MAX_BYTES || !text_ok(contact, false))) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "operatorRecord.contact: must be at most %d bytes of UTF-8 text without "
		          "control characters",
		          CONTACT_MAX_BYTES);
		return;
	}
	struct admin_q *q = q_new(call, req, 0);
	if (!q)
		return;
	struct numbuf id, nl, now;
	const char *params[] = { fmt_u64(&id, o->id), bits & OU_NAME ? o->name : NULL,
		                 bits & OU_LIMIT ? fmt_u64(&nl, o->node_limit) : NULL,
		                 bits & OU_CONTACT ? contact : NULL, fmt_i64(&now, now_us()) };
	exec_or_fail(call,
	             "UPDATE operators AS o SET name = coalesce($2, o.name),"
	             " node_limit = coalesce($3::integer, o.node_limit),"
	             " contact = coalesce($4, o.contact), updated_at_us = $5::bigint"
	             " WHERE o.id = $1::bigint RETURNING " OPERATOR_COLS,
	             5, params, update_operator_cb, q);
}

static void node_changed_fn(uint64_t node_id)
{
	schedloop_node_changed(app_get(), node_id);
}

static void disable_operator_cb(enum pg_status st, PGresult *res, const char *sqlstate,
                                const char *err, void *arg)
{
	struct admin_q *q = arg;
	const Gpumatch__V1__DisableOperatorRequest *in = (const void *)q->req;
	/* columns: OPERATOR_COLS, then the nodes cordoned ("id,id,...") */
	if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
	} else if (PQntuples(res) != 1) {
		rpc_error(q->call, RPC_NOT_FOUND, "operatorId: operator %" PRIu64 " not found",
		          in->operator_id);
	} else {
		size_t held = each_id(PQgetvalue(res, 0, 9), node_changed_fn);
		Gpumatch__V1__Operator o;
		Gpumatch__V1__DisableOperatorResponse out =
		    GPUMATCH__V1__DISABLE_OPERATOR_RESPONSE__INIT;
		operator_from_row(res, 0, &o);
		out.operator_record = &o;
		/* tokens are not revoked: auth refuses them while the operator
		 * is disabled */
		out.tokens_revoked = 0;
		out.nodes_drained = (uint32_t)held;
		auth_revoked(app_get());
		log_info("operator disabled operator=%" PRIu64 " nodes_cordoned=%zu by=%" PRIu64,
		         o.id, held, rpc_principal(q->call)->token_id);
		rpc_reply(q->call, &out.base);
	}
	free(q);
}

void admin_disable_operator(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__DisableOperatorRequest *in = (const void *)req;
	if (!in->operator_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "operatorId: required");
		return;
	}
	const char *reason = str_or_empty(in->reason);
	if (!reason_ok(reason)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "reason: must be at most %d bytes of UTF-8 text without control "
		          "characters",
		          REASON_MAX_BYTES);
		return;
	}
	struct admin_q *q = q_new(call, req, 0);
	if (!q)
		return;
	char why[REASON_MAX_BYTES + 32];
	snprintf(why, sizeof why, "operator disabled%s%s", *reason ? ": " : "", reason);
	struct numbuf id, now;
	const char *params[] = { fmt_u64(&id, in->operator_id), reason, fmt_i64(&now, now_us()),
		                 why };
	/* One statement: the operator and the hold on its nodes. Its nodes take
	 * no new work: REGISTERED, READY and DRAINING ones become CORDONED and
	 * keep what runs there (so drain_nodes asks for nothing more; the
	 * answer's nodes_drained counts them). They stay cordoned after
	 * EnableOperator until an admin uncordons them. Tokens need nothing:
	 * auth wants an active operator. */
	exec_or_fail(
	    call,
	    "WITH op AS (UPDATE operators AS o SET state = 2, disabled_reason = $2,"
	    "   updated_at_us = CASE WHEN o.state <> 2 OR o.disabled_reason <> $2"
	    "     THEN $3::bigint ELSE o.updated_at_us END"
	    "  WHERE o.id = $1::bigint RETURNING " OPERATOR_COLS "),"
	    " held AS (UPDATE nodes n SET state = 4, admin_hold = true, state_reason = $4,"
	    "   state_changed_at_us = $3::bigint"
	    "  FROM op WHERE n.operator_id = op.id AND n.state IN (1, 2, 3) RETURNING n.id)"
	    " SELECT op.*, (SELECT coalesce(string_agg(held.id::text, ','), '') FROM held)"
	    " FROM op",
	    4, params, disable_operator_cb, q);
}

static void enable_operator_cb(enum pg_status st, PGresult *res, const char *sqlstate,
                               const char *err, void *arg)
{
	struct admin_q *q = arg;
	const Gpumatch__V1__EnableOperatorRequest *in = (const void *)q->req;
	uint64_t id =
	    reply_record(q, st, res, sqlstate, err, &OPERATOR, "operatorId", in->operator_id,
	                 &gpumatch__v1__enable_operator_response__descriptor, "operator_record");
	if (id)
		log_info("operator enabled operator=%" PRIu64 " by=%" PRIu64, id,
		         rpc_principal(q->call)->token_id);
	free(q);
}

void admin_enable_operator(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__EnableOperatorRequest *in = (const void *)req;
	if (!in->operator_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "operatorId: required");
		return;
	}
	struct admin_q *q = q_new(call, req, 0);
	if (!q)
		return;
	struct numbuf id, now;
	const char *params[] = { fmt_u64(&id, in->operator_id), fmt_i64(&now, now_us()) };
	/* Its tokens work again at once; its nodes stay cordoned (an admin
	 * uncordons each). Idempotent. */
	exec_or_fail(call,
	             "UPDATE operators AS o SET state = 1, disabled_reason = '',"
	             " updated_at_us = CASE WHEN o.state <> 1 THEN $2::bigint"
	             " ELSE o.updated_at_us END WHERE o.id = $1::bigint RETURNING " OPERATOR_COLS,
	             2, params, enable_operator_cb, q);
}

/* ---- nodes ------------------------------------------------------------------------ */

/* CordonNode and UncordonNode answer with the node as GetNode shows it,
 * read after the change. */

struct node_q {
	struct rpc_call *call;
	uint64_t node_id;
};

static struct node_q *node_q_new(struct rpc_call *call, uint64_t node_id)
{
	struct node_q *q = malloc(sizeof *q);
	if (!q) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return NULL;
	}
	q->call = call;
	q->node_id = node_id;
	return q;
}

static void cordon_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                      void *arg)
{
	struct node_q *q = arg;
	/* columns: the node's state before, whether it was updated */
	if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
	} else if (PQntuples(res) != 1) {
		rpc_error(q->call, RPC_NOT_FOUND, "nodeId: node %" PRIu64 " not found", q->node_id);
	} else if (strcmp(PQgetvalue(res, 0, 1), "t")) {
		rpc_error(q->call, RPC_FAILED_PRECONDITION,
		          "nodeId: node %" PRIu64 " is disabled; a disabled node takes no work "
		          "already",
		          q->node_id);
	} else {
		log_info("node cordoned node=%" PRIu64 " was=%s by=%" PRIu64, q->node_id,
		         PQgetvalue(res, 0, 0), rpc_principal(q->call)->token_id);
		schedloop_node_changed(app_get(), q->node_id);
		nodes_reply_node(q->call, q->node_id);
	}
	free(q);
}

void admin_cordon_node(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__CordonNodeRequest *in = (const void *)req;
	if (!in->node_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "nodeId: required");
		return;
	}
	const char *reason = str_or_empty(in->reason);
	if (!reason_ok(reason)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "reason: must be at most %d bytes of UTF-8 text without control "
		          "characters",
		          REASON_MAX_BYTES);
		return;
	}
	struct node_q *q = node_q_new(call, in->node_id);
	if (!q)
		return;
	char why[REASON_MAX_BYTES + 32];
	snprintf(why, sizeof why, "cordoned%s%s", *reason ? ": " : "", reason);
	struct numbuf id, now;
	const char *params[] = { fmt_u64(&id, in->node_id), why, fmt_i64(&now, now_us()) };
	/* Any state but DISABLED; what runs there keeps running. Cordoning a
	 * cordoned node again only updates the reason. */
	exec_or_fail(call,
	             "WITH cur AS (SELECT state FROM nodes WHERE id = $1::bigint),"
	             " up AS (UPDATE nodes SET state = 4, admin_hold = true, state_reason = $2,"
	             "   state_changed_at_us = CASE WHEN state <> 4 THEN $3::bigint"
	             "     ELSE state_changed_at_us END"
	             "  WHERE id = $1::bigint AND state <> 6 RETURNING id)"
	             " SELECT cur.state, up.id IS NOT NULL FROM cur LEFT JOIN up ON true",
	             3, params, cordon_cb, q);
}

static void uncordon_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                        void *arg)
{
	struct node_q *q = arg;
	/* columns: the node's state before, its operator's state, whether it
	 * was updated */
	if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
	} else if (PQntuples(res) != 1) {
		rpc_error(q->call, RPC_NOT_FOUND, "nodeId: node %" PRIu64 " not found", q->node_id);
	} else if (col_i64(res, 0, 0) == 6) {
		rpc_error(q->call, RPC_FAILED_PRECONDITION, "nodeId: node %" PRIu64 " is disabled",
		          q->node_id);
	} else if (col_i64(res, 0, 0) == 4 && col_i64(res, 0, 1) != 1) {
		rpc_error(q->call, RPC_FAILED_PRECONDITION,
		          "nodeId: the operator of node %" PRIu64
		          " is disabled; enable the operator first",
		          q->node_id);
	} else {
		if (!strcmp(PQgetvalue(res, 0, 2), "t")) {
			log_info("node uncordoned node=%" PRIu64 " by=%" PRIu64, q->node_id,
			         rpc_principal(q->call)->token_id);
			schedloop_node_changed(app_get(), q->node_id);
		}
		nodes_reply_node(q->call, q->node_id);
	}
	free(q);
}

void admin_uncordon_node(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__UncordonNodeRequest *in = (const void *)req;
	if (!in->node_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "nodeId: required");
		return;
	}
	struct node_q *q = node_q_new(call, in->node_id);
	if (!q)
		return;
	struct numbuf id, now;
	const char *params[] = { fmt_u64(&id, in->node_id), fmt_i64(&now, now_us()) };
	/* Only a cordoned node moves: back to READY if its agent has
	 * heartbeated, else REGISTERED (the first heartbeat makes it READY).
	 * Other states are left as they are (idempotent; a drain is the
	 * operator's to undo). Not while its operator is disabled: its nodes
	 * take no new work; the share lock makes a concurrent DisableOperator
	 * wait, or be seen. */
	exec_or_fail(
	    call,
	    "WITH cur AS (SELECT n.state, o.state AS ostate FROM nodes n"
	    "   JOIN operators o ON o.id = n.operator_id WHERE n.id = $1::bigint"
	    "   FOR SHARE OF o),"
	    " up AS (UPDATE nodes n SET admin_hold = false, state = CASE"
	    "     WHEN n.retired_at_us > 0 THEN 3 WHEN n.last_heartbeat_us > 0"
	    "     THEN 2 ELSE 1 END, state_reason = 'uncordoned',"
	    "   state_changed_at_us = $2::bigint"
	    "  FROM cur WHERE n.id = $1::bigint AND n.state = 4 AND cur.ostate = 1"
	    "  RETURNING n.id)"
	    " SELECT cur.state, cur.ostate, up.id IS NOT NULL FROM cur LEFT JOIN up ON true",
	    2, params, uncordon_cb, q);
}

/* ---- tokens ----------------------------------------------------------------------- */

/* Never the secret nor its hash. */
#define TOKEN_COLS                                                                                \
	"id, role, coalesce(tenant_id, 0) AS tenant_id, coalesce(operator_id, 0) AS operator_id," \
	" name, prefix, created_by, created_at_us, expires_at_us, last_used_at_us, revoked_at_us"

static void token_from_row(const PGresult *r, int row, int c0, Gpumatch__V1__Token *t)
{
	gpumatch__v1__token__init(t);
	t->id = col_u64(r, row, c0 + 0);
	t->role = (Gpumatch__V1__Role)col_i64(r, row, c0 + 1);
	t->tenant_id = col_u64(r, row, c0 + 2);
	t->operator_id = col_u64(r, row, c0 + 3);
	t->name = PQgetvalue(r, row, c0 + 4);
	t->prefix = PQgetvalue(r, row, c0 + 5);
	t->created_by = PQgetvalue(r, row, c0 + 6);
	t->created_at_us = col_i64(r, row, c0 + 7);
	t->expires_at_us = col_i64(r, row, c0 + 8);
	t->last_used_at_us = col_i64(r, row, c0 + 9);
	t->revoked_at_us = col_i64(r, row, c0 + 10);
}

struct create_token_q {
	struct rpc_call *call;
	const Gpumatch__V1__CreateTokenRequest *in;
	char secret[40]; /* shown once, in the answer; wiped after */
};

static void create_token_free(struct create_token_q *q)
{
	explicit_bzero(q->secret, sizeof q->secret);
	free(q);
}

static void create_token_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                            void *arg)
{
	struct create_token_q *q = arg;
	const Gpumatch__V1__CreateTokenRequest *in = q->in;
	/* columns: tenant state, operator state, then TOKEN_COLS (NULL when
	 * nothing was inserted) */
	if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
	} else if (PQntuples(res) != 1) {
		rpc_error(q->call, RPC_INTERNAL, "internal error");
	} else if (PQgetisnull(res, 0, 2)) {
		if (in->tenant_id && PQgetisnull(res, 0, 0))
			rpc_error(q->call, RPC_NOT_FOUND, "tenantId: tenant %" PRIu64 " not found",
			          in->tenant_id);
		else if (in->tenant_id)
			rpc_error(q->call, RPC_FAILED_PRECONDITION,
			          "tenantId: tenant %" PRIu64 " is disabled", in->tenant_id);
		else
			rpc_error(q->call, RPC_NOT_FOUND,
			          "operatorId: operator %" PRIu64 " not found", in->operator_id);
	} else {
		Gpumatch__V1__Token t;
		Gpumatch__V1__CreateTokenResponse out = GPUMATCH__V1__CREATE_TOKEN_RESPONSE__INIT;
		token_from_row(res, 0, 2, &t);
		out.token = &t;
		out.secret = q->secret;
		log_info("token created token=%" PRIu64 " role=%d tenant=%" PRIu64
		         " operator=%" PRIu64 " by=%s",
		         t.id, (int)t.role, t.tenant_id, t.operator_id, t.created_by);
		rpc_reply(q->call, &out.base);
	}
	create_token_free(q);
}

void admin_create_token(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__CreateTokenRequest *in = (const void *)req;
	switch (in->role) {
	case GPUMATCH__V1__ROLE__ROLE_TENANT:
		if (!in->tenant_id) {
			rpc_error(call, RPC_INVALID_ARGUMENT, "tenantId: required for ROLE_TENANT");
			return;
		}
		if (in->operator_id) {
			rpc_error(call, RPC_INVALID_ARGUMENT,
			          "operatorId: must be 0 for ROLE_TENANT");
			return;
		}
		break;
	case GPUMATCH__V1__ROLE__ROLE_OPERATOR:
		if (!in->operator_id) {
			rpc_error(call, RPC_INVALID_ARGUMENT,
			          "operatorId: required for ROLE_OPERATOR");
			return;
		}
		if (in->tenant_id) {
			rpc_error(call, RPC_INVALID_ARGUMENT,
			          "tenantId: must be 0 for ROLE_OPERATOR");
			return;
		}
		break;
	case GPUMATCH__V1__ROLE__ROLE_ADMIN:
		if (in->tenant_id || in->operator_id) {
			rpc_error(call, RPC_INVALID_ARGUMENT, "%s: must be 0 for ROLE_ADMIN",
			          in->tenant_id ? "tenantId" : "operatorId");
			return;
		}
		break;
	default:
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "role: must be ROLE_TENANT, ROLE_OPERATOR or ROLE_ADMIN");
		return;
	}
	const char *name = str_or_empty(in->name);
	if (strlen(name) > (size_t)TOKEN_NAME_MAX_BYTES || !text_ok(name, false)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "name: must be at most %d bytes of UTF-8 text without control characters",
		          TOKEN_NAME_MAX_BYTES);
		return;
	}
	int64_t now = now_us();
	if (in->expires_at_us < 0 || (in->expires_at_us && in->expires_at_us <= now)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "expiresAtUs: must be 0 (never) or a time in the future, got %" PRId64,
		          in->expires_at_us);
		return;
	}
	struct create_token_q *q = malloc(sizeof *q);
	if (!q) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	q->call = call;
	q->in = in;
	char prefix[16];
	if (auth_new_secret(q->secret, sizeof q->secret, prefix, sizeof prefix)) {
		rpc_error(call, RPC_INTERNAL, "no randomness for a token secret");
		create_token_free(q);
		return;
	}
	char created_by[32];
	snprintf(created_by, sizeof created_by, "admin:%" PRIu64, rpc_principal(call)->token_id);
	struct numbuf r, t, o, at, ex;
	const char *params[] = { fmt_i64(&r, in->role),
		                 in->tenant_id ? fmt_u64(&t, in->tenant_id) : NULL,
		                 in->operator_id ? fmt_u64(&o, in->operator_id) : NULL,
		                 name,
		                 prefix,
		                 q->secret,
		                 created_by,
		                 fmt_i64(&at, now),
		                 fmt_i64(&ex, in->expires_at_us) };
	/* The owner check and the insert are one statement; the owners' states
	 * come back even when nothing was inserted, to tell why. */
	int rc = pg_exec(
	    app_get()->pg, NULL,
	    "WITH own AS (SELECT (SELECT state FROM tenants WHERE id = $2::bigint) AS tstate,"
	    "                    (SELECT state FROM operators WHERE id = $3::bigint) AS ostate),"
	    " ins AS (INSERT INTO api_tokens (role, tenant_id, operator_id, name, prefix,"
	    "          secret_sha256, created_by, created_at_us, expires_at_us)"
	    "         SELECT $1::smallint, $2::bigint, $3::bigint, $4, $5,"
	    "                sha256(convert_to($6, 'UTF8')), $7, $8::bigint, $9::bigint FROM own"
	    "          WHERE ($2::bigint IS NULL OR own.tstate = 1)"
	    "            AND ($3::bigint IS NULL OR own.ostate IS NOT NULL)"
	    "         RETURNING " TOKEN_COLS ")"
	    " SELECT own.tstate, own.ostate, ins.* FROM own LEFT JOIN ins ON true",
	    9, params, create_token_cb, q);
	if (rc) {
		rpc_error(call, RPC_UNAVAILABLE, "the record store is unavailable, retry later");
		create_token_free(q);
	}
}

static void list_tokens_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                           void *arg)
{
	struct admin_q *q = arg;
	if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
		free(q);
		return;
	}
	int rows = PQntuples(res);
	size_t n = rows > q->limit ? (size_t)q->limit : (size_t)rows;
	Gpumatch__V1__Token *items;
	Gpumatch__V1__Token **ptrs;
	if (alloc_items(n, sizeof *items, (void **)&items, (void ***)&ptrs)) {
		rpc_error(q->call, RPC_INTERNAL, "out of memory");
		free(q);
		return;
	}
	for (size_t i = 0; i < n; i++)
		token_from_row(res, (int)i, 0, &items[i]);
	char next[32] = "";
	size_t shown = page_fit((const void *const *)ptrs, n);
	if ((size_t)rows > n || shown < n)
		page_token_encode(items[shown - 1].id, next, sizeof next);
	Gpumatch__V1__ListTokensResponse out = GPUMATCH__V1__LIST_TOKENS_RESPONSE__INIT;
	out.n_tokens = shown;
	out.tokens = ptrs;
	out.next_page_token = next;
	rpc_reply(q->call, &out.base);
	free(items);
	free(ptrs);
	free(q);
}

void admin_list_tokens(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__ListTokensRequest *in = (const void *)req;
	int limit;
	uint64_t after;
	if (page_args(call, in->page_size, in->page_token, &limit, &after))
		return;
	int role = (int)in->role;
	if (role < GPUMATCH__V1__ROLE__ROLE_UNSPECIFIED || role > GPUMATCH__V1__ROLE__ROLE_ADMIN) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "role: must be ROLE_UNSPECIFIED (any), ROLE_TENANT, ROLE_OPERATOR or "
		          "ROLE_ADMIN");
		return;
	}
	struct admin_q *q = q_new(call, req, limit);
	if (!q)
		return;
	struct numbuf a, r, t, o, l;
	const char *params[] = { fmt_u64(&a, after),
		                 fmt_i64(&r, role),
		                 fmt_u64(&t, in->tenant_id),
		                 fmt_u64(&o, in->operator_id),
		                 in->include_revoked ? "true" : "false",
		                 fmt_i64(&l, limit + 1) };
	exec_or_fail(call,
	             "SELECT " TOKEN_COLS " FROM api_tokens WHERE id > $1::bigint"
	             " AND ($2::smallint = 0 OR role = $2::smallint)"
	             " AND ($3::bigint = 0 OR tenant_id = $3::bigint)"
	             " AND ($4::bigint = 0 OR operator_id = $4::bigint)"
	             " AND ($5::boolean OR revoked_at_us = 0)"
	             " ORDER BY id LIMIT $6::integer",
	             6, params, list_tokens_cb, q);
}

static void revoke_token_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                            void *arg)
{
	struct admin_q *q = arg;
	const Gpumatch__V1__RevokeTokenRequest *in = (const void *)q->req;
	if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
	} else if (PQntuples(res) != 1) {
		rpc_error(q->call, RPC_NOT_FOUND, "tokenId: token %" PRIu64 " not found",
		          in->token_id);
	} else {
		Gpumatch__V1__Token t;
		Gpumatch__V1__RevokeTokenResponse out = GPUMATCH__V1__REVOKE_TOKEN_RESPONSE__INIT;
		token_from_row(res, 0, 0, &t);
		out.token = &t;
		auth_revoked(app_get());
		log_info("token revoked token=%" PRIu64 " by=%" PRIu64, t.id,
		         rpc_principal(q->call)->token_id);
		rpc_reply(q->call, &out.base);
	}
	free(q);
}

void admin_revoke_token(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__RevokeTokenRequest *in = (const void *)req;
	if (!in->token_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "tokenId: required");
		return;
	}
	struct admin_q *q = q_new(call, req, 0);
	if (!q)
		return;
	struct numbuf id, now;
	const char *params[] = { fmt_u64(&id, in->token_id), fmt_i64(&now, now_us()) };
	/* Idempotent: a second revoke keeps the first time. Tokens are resolved
	 * from Postgres on every call, so this takes effect at once. */
	exec_or_fail(call,
	             "UPDATE api_tokens SET revoked_at_us = CASE WHEN revoked_at_us = 0"
	             " THEN $2::bigint ELSE revoked_at_us END WHERE id = $1::bigint"
	             " RETURNING " TOKEN_COLS,
	             2, params, revoke_token_cb, q);
}

/* ---- policies --------------------------------------------------------------------- */

/* The policy in force while no version is stored: the recommended policy
 * (examples/policies/default.json) with the daemon's allow_unverified. */
static void policy_defaults(Gpumatch__V1__Policy *p)
{
	struct sched_policy sp;
	sched_policy_recommended(&sp);
	sp.allow_unverified = app_get()->cfg.allow_unverified;
	gpumatch__v1__policy__init(p);
	conv_policy_out(&sp, p);
}

#define POLICY_COLS "p.version, p.policy_pb, p.created_by, p.created_at_us, p.comment"

/* Fills out from POLICY_COLS at column c0 of row. The message's strings
 * borrow from r; *keep is what else it uses, freed by the caller with
 * gpumatch__v1__policy__free_unpacked after the answer. Returns -1 when the
 * stored message does not decode. */
static int policy_from_row(const PGresult *r, int row, int c0, Gpumatch__V1__Policy *out,
                           Gpumatch__V1__Policy **keep)
{
	size_t len;
	uint8_t *raw = col_bytea(r, row, c0 + 1, &len);
	*keep = NULL;
	if (!raw)
		return -1;
	*keep = gpumatch__v1__policy__unpack(NULL, len, raw);
	free(raw);
	if (!*keep)
		return -1;
	*out = **keep;
	out->base.n_unknown_fields = 0;
	out->base.unknown_fields = NULL;
	/* the columns are the record of the audit fields */
	out->version = col_u64(r, row, c0 + 0);
	out->created_by = PQgetvalue(r, row, c0 + 2);
	out->created_at_us = col_i64(r, row, c0 + 3);
	out->comment = PQgetvalue(r, row, c0 + 4);
	return 0;
}

static void get_policy_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                          void *arg)
{
	struct admin_q *q = arg;
	const Gpumatch__V1__GetPolicyRequest *in = (const void *)q->req;
	/* columns: the active version (0: none stored), then POLICY_COLS (NULL
	 * when the version asked for does not exist) */
	if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
		free(q);
		return;
	}
	if (PQntuples(res) != 1) {
		rpc_error(q->call, RPC_INTERNAL, "internal error");
		free(q);
		return;
	}
	Gpumatch__V1__GetPolicyResponse out = GPUMATCH__V1__GET_POLICY_RESPONSE__INIT;
	Gpumatch__V1__Policy p, *keep = NULL;
	out.active_version = col_u64(res, 0, 0);
	out.policy = &p;
	if (!PQgetisnull(res, 0, 1)) {
		if (policy_from_row(res, 0, 1, &p, &keep)) {
			log_error("stored policy does not decode version=%s",
			          PQgetvalue(res, 0, 1));
			rpc_error(q->call, RPC_INTERNAL, "internal error");
		} else {
			rpc_reply(q->call, &out.base);
		}
	} else if (in->version) {
		rpc_error(q->call, RPC_NOT_FOUND, "version: policy version %" PRIu64 " not found",
		          in->version);
	} else {
		policy_defaults(&p);
		rpc_reply(q->call, &out.base);
	}
	if (keep)
		gpumatch__v1__policy__free_unpacked(keep, NULL);
	free(q);
}

void admin_get_policy(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__GetPolicyRequest *in = (const void *)req;
	if (in->builtin && in->version) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "version: must be 0 (unset) with builtin, got %" PRIu64, in->version);
		return;
	}
	if (in->builtin) {
		/* what runs before the first SetPolicy: rollback's version 0 */
		Gpumatch__V1__GetPolicyResponse out = GPUMATCH__V1__GET_POLICY_RESPONSE__INIT;
		Gpumatch__V1__Policy p;
		policy_defaults(&p);
		out.policy = &p;
		rpc_reply(call, &out.base);
		return;
	}
	struct admin_q *q = q_new(call, req, 0);
	if (!q)
		return;
	struct numbuf v;
	const char *params[] = { fmt_u64(&v, in->version) };
	exec_or_fail(call,
	             "SELECT m.v, " POLICY_COLS
	             " FROM (SELECT coalesce(max(version), 0) AS v FROM policies) m"
	             " LEFT JOIN policies p ON p.version ="
	             "  CASE WHEN $1::bigint = 0 THEN m.v ELSE $1::bigint END",
	             1, params, get_policy_cb, q);
}

/* -- the audit diff -- */

/* Fields of Policy that are not policy: the version and the audit trail. */
static bool policy_field_audited(const ProtobufCFieldDescriptor *f)
{
	static const char *const skip[] = { "version", "created_by", "created_at_us", "comment" };
	for (size_t i = 0; i < sizeof skip / sizeof skip[0]; i++)
		if (!strcmp(f->name, skip[i]))
			return false;
	return true;
}

/* Shortest text that reads back as the same double; integers without an
 * exponent. */
static void fmt_double(double v, char *out, size_t len)
{
	if (v > -1e15 && v < 1e15 && v == (double)(int64_t)v) {
		snprintf(out, len, "%" PRId64, (int64_t)v);
		return;
	}
	for (int prec = 1; prec <= 17; prec++) {
		snprintf(out, len, "%.*g", prec, v);
		if (strtod(out, NULL) == v)
			return;
	}
}

/* A singular scalar field of m as text: enums by value name, numbers as
 * the JSON mapping writes them. Points into buf or into m. NULL for kinds
 * the diff does not cover (messages, bytes, repeated fields). */
static const char *field_text(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                              char *buf, size_t len)
{
	const char *p = (const char *)m + f->offset;
	if (f->label == PROTOBUF_C_LABEL_REPEATED)
		return NULL;
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32: {
		int32_t v;
		memcpy(&v, p, sizeof v);
		snprintf(buf, len, "%" PRId32, v);
		return buf;
	}
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32: {
		uint32_t v;
		memcpy(&v, p, sizeof v);
		snprintf(buf, len, "%" PRIu32, v);
		return buf;
	}
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64: {
		int64_t v;
		memcpy(&v, p, sizeof v);
		snprintf(buf, len, "%" PRId64, v);
		return buf;
	}
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64: {
		uint64_t v;
		memcpy(&v, p, sizeof v);
		snprintf(buf, len, "%" PRIu64, v);
		return buf;
	}
	case PROTOBUF_C_TYPE_FLOAT: {
		float v;
		memcpy(&v, p, sizeof v);
		fmt_double(v, buf, len);
		return buf;
	}
	case PROTOBUF_C_TYPE_DOUBLE: {
		double v;
		memcpy(&v, p, sizeof v);
		fmt_double(v, buf, len);
		return buf;
	}
	case PROTOBUF_C_TYPE_BOOL: {
		protobuf_c_boolean v;
		memcpy(&v, p, sizeof v);
		snprintf(buf, len, "%s", v ? "true" : "false");
		return buf;
	}
	case PROTOBUF_C_TYPE_ENUM: {
		int v;
		memcpy(&v, p, sizeof v);
		const ProtobufCEnumValue *ev =
		    protobuf_c_enum_descriptor_get_value(f->descriptor, v);
		if (ev)
			snprintf(buf, len, "%s", ev->name);
		else
			snprintf(buf, len, "%d", v);
		return buf;
	}
	case PROTOBUF_C_TYPE_STRING: {
		const char *s;
		memcpy(&s, p, sizeof s);
		return s ? s : "";
	}
	default:
		return NULL;
	}
}

/* The fields that differ between two policies. */
struct policy_diff {
	size_t n;
	Gpumatch__V1__PolicyFieldChange *items; /* field names are the descriptor's */
	Gpumatch__V1__PolicyFieldChange **ptrs;
};

static void policy_diff_free(struct policy_diff *d)
{
	for (size_t i = 0; i < d->n; i++) {
		free(d->items[i].old_value);
		free(d->items[i].new_value);
	}
	free(d->items);
	free(d->ptrs);
	memset(d, 0, sizeof *d);
}

/* Walks Policy's descriptor, so a field added to the message is audited
 * without a change here. Returns -1 when out of memory. */
static int policy_diff(const Gpumatch__V1__Policy *old, const Gpumatch__V1__Policy *new,
                       struct policy_diff *d)
{
	const ProtobufCMessageDescriptor *md = &gpumatch__v1__policy__descriptor;
	memset(d, 0, sizeof *d);
	if (alloc_items(md->n_fields, sizeof *d->items, (void **)&d->items, (void ***)&d->ptrs))
		return -1;
	for (unsigned i = 0; i < md->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &md->fields[i];
		char ob[64], nb[64];
		if (!policy_field_audited(f))
			continue;
		const char *o = field_text(&old->base, f, ob, sizeof ob);
		const char *n = field_text(&new->base, f, nb, sizeof nb);
		if (!o || !n || !strcmp(o, n))
			continue;
		Gpumatch__V1__PolicyFieldChange *c = &d->items[d->n];
		gpumatch__v1__policy_field_change__init(c);
		c->field = (char *)f->name;
		c->old_value = strdup(o);
		c->new_value = strdup(n);
		d->n++;
		if (!c->old_value || !c->new_value) {
			policy_diff_free(d);
			return -1;
		}
	}
	return 0;
}

/* The diff as policy_audit.changes: [{"field", "old", "new"}, ...].
 * Returns a malloc'd string, or NULL when out of memory. */
static char *policy_diff_json(const struct policy_diff *d)
{
	json_t *arr = json_array();
	if (!arr)
		return NULL;
	for (size_t i = 0; i < d->n; i++) {
		const Gpumatch__V1__PolicyFieldChange *c = &d->items[i];
		json_t *o = json_pack("{s:s, s:s, s:s}", "field", c->field, "old", c->old_value,
		                      "new", c->new_value);
		if (!o || json_array_append_new(arr, o)) {
			json_decref(arr);
			return NULL;
		}
	}
	char *s = json_dumps(arr, JSON_COMPACT);
	json_decref(arr);
	return s;
}

/* -- SetPolicy -- */

struct set_policy_q {
	struct rpc_call *call;
	const Gpumatch__V1__SetPolicyRequest *in;
	Gpumatch__V1__Policy cand; /* validated, canonical; strings borrow from actor/in */
	char actor[96];            /* "admin:<token id> <token name>" */
	int64_t now_us;
	uint64_t prev_version; /* the active version the diff is against */
	struct policy_diff diff;
	char *pb;          /* the stored message as a bytea parameter */
	char *changes;     /* the diff as JSON */
	char warning[320]; /* "" = none */
};

static void set_policy_free(struct set_policy_q *q)
{
	policy_diff_free(&q->diff);
	free(q->pb);
	free(q->changes);
	free(q);
}

static void set_policy_reply(struct set_policy_q *q)
{
	Gpumatch__V1__PolicyAuditEntry audit = GPUMATCH__V1__POLICY_AUDIT_ENTRY__INIT;
	Gpumatch__V1__SetPolicyResponse out = GPUMATCH__V1__SET_POLICY_RESPONSE__INIT;
	audit.version = q->cand.version;
	audit.previous_version = q->prev_version;
	audit.actor = q->actor;
	audit.at_us = q->now_us;
	audit.comment = q->cand.comment;
	audit.n_changes = q->diff.n;
	audit.changes = q->diff.ptrs;
	out.policy = &q->cand;
	out.audit = &audit;
	char *warn = q->warning;
	if (*warn) {
		out.n_warnings = 1;
		out.warnings = &warn;
	}
	rpc_reply(q->call, &out.base);
}

static void set_policy_stored_cb(enum pg_status st, PGresult *res, const char *sqlstate,
                                 const char *err, void *arg)
{
	struct set_policy_q *q = arg;
	(void)res;
	if (st == PG_ERROR && !strcmp(sqlstate, "23505")) {
		/* versions are taken as active + 1: another SetPolicy got there
		 * first, and this diff would be against a stale version */
		rpc_error(q->call, RPC_ABORTED,
		          "policy: another change was stored as version %" PRIu64
		          " at the same time; read the policy again and retry",
		          q->cand.version);
	} else if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
	} else {
		log_info("policy set version=%" PRIu64 " previous=%" PRIu64
		         " changes=%zu actor=\"%s\"",
		         q->cand.version, q->prev_version, q->diff.n, q->actor);
		schedloop_policy_changed(app_get());
		set_policy_reply(q);
	}
	set_policy_free(q);
}

static void set_policy_active_cb(enum pg_status st, PGresult *res, const char *sqlstate,
                                 const char *err, void *arg)
{
	struct set_policy_q *q = arg;
	const Gpumatch__V1__SetPolicyRequest *in = q->in;
	Gpumatch__V1__Policy prev, *keep = NULL;
	if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
		goto done;
	}
	/* ready nodes and verified ones among them (the last two columns) */
	if (PQntuples(res) == 1) {
		long ready = strtol(PQgetvalue(res, 0, 6), NULL, 10);
		long verified = strtol(PQgetvalue(res, 0, 5), NULL, 10);
		if (!q->cand.allow_unverified && ready > 0 && verified == 0)
			snprintf(
			    q->warning, sizeof q->warning,
			    "policy.allowUnverified: false, and none of the %ld ready nodes is "
			    "verified: every job waits until a node passes the probe (true lets "
			    "unverified nodes, such as run-local's demo nodes, take work)",
			    ready);
	}
	if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
		if (policy_from_row(res, 0, 0, &prev, &keep)) {
			log_error("stored policy does not decode version=%s",
			          PQgetvalue(res, 0, 0));
			rpc_error(q->call, RPC_INTERNAL, "internal error");
			goto done;
		}
	} else {
		policy_defaults(&prev);
	}
	q->prev_version = prev.version;
	if (in->expected_version && in->expected_version != q->prev_version) {
		rpc_error(q->call, RPC_ABORTED,
		          "expectedVersion: is %" PRIu64
		          " but the active policy is version %" PRIu64 "; read it again and retry",
		          in->expected_version, q->prev_version);
		goto done;
	}
	if (policy_diff(&prev, &q->cand, &q->diff)) {
		rpc_error(q->call, RPC_INTERNAL, "out of memory");
		goto done;
	}
	if (in->validate_only) {
		set_policy_reply(q);
		goto done;
	}
	q->cand.version = q->prev_version + 1;
	q->pb = pack_bytea_param(&q->cand.base);
	q->changes = policy_diff_json(&q->diff);
	if (!q->pb || !q->changes) {
		rpc_error(q->call, RPC_INTERNAL, "out of memory");
		goto done;
	}
	struct numbuf v, pv, at;
	const char *params[] = { fmt_u64(&v, q->cand.version),
		                 q->pb,
		                 q->actor,
		                 fmt_i64(&at, q->now_us),
		                 q->cand.comment,
		                 fmt_u64(&pv, q->prev_version),
		                 q->changes };
	/* The version and its audit row in one statement. The version is given,
	 * not drawn from the sequence, so that two concurrent changes of the
	 * same version collide on the key instead of both being stored. */
	if (pg_exec(
	        app_get()->pg, NULL,
	        "WITH v AS (INSERT INTO policies (version, policy_pb, created_by, created_at_us,"
	        "            comment) VALUES ($1::bigint, $2::bytea, $3, $4::bigint, $5)"
	        "           RETURNING version)"
	        " INSERT INTO policy_audit (version, previous_version, actor, at_us, comment,"
	        "  changes) SELECT v.version, $6::bigint, $3, $4::bigint, $5, $7::jsonb FROM v"
	        " RETURNING version",
	        7, params, set_policy_stored_cb, q)) {
		rpc_error(q->call, RPC_UNAVAILABLE, "the record store is unavailable, retry later");
		goto done;
	}
	if (keep)
		gpumatch__v1__policy__free_unpacked(keep, NULL);
	return;
done:
	if (keep)
		gpumatch__v1__policy__free_unpacked(keep, NULL);
	set_policy_free(q);
}

void admin_set_policy(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__SetPolicyRequest *in = (const void *)req;
	const Gpumatch__V1__Policy *p = in->policy;
	if (!p) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "policy: required");
		return;
	}
	/* a policy states every switch: no defaults slipped in for zero enums */
	if (p->fit_mode != GPUMATCH__V1__FIT_MODE__FIT_MODE_PACK &&
	    p->fit_mode != GPUMATCH__V1__FIT_MODE__FIT_MODE_SPREAD) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "policy.fitMode: must be FIT_MODE_PACK or FIT_MODE_SPREAD");
		return;
	}
	if (p->fairness != GPUMATCH__V1__FAIRNESS_MODE__FAIRNESS_MODE_NONE &&
	    p->fairness != GPUMATCH__V1__FAIRNESS_MODE__FAIRNESS_MODE_FAIR_SHARE) {
		rpc_error(
		    call, RPC_INVALID_ARGUMENT,
		    "policy.fairness: must be FAIRNESS_MODE_NONE or FAIRNESS_MODE_FAIR_SHARE");
		return;
	}
	struct sched_policy sp;
	struct sched_error se;
	memset(&se, 0, sizeof se);
	conv_policy_in(p, &sp);
	if (sched_policy_validate(&sp, &se)) {
		char field[256];
		conv_camel(se.field, field, sizeof field);
		rpc_error(call, RPC_INVALID_ARGUMENT, "policy.%s: %s", field, se.message);
		return;
	}
	if (p->platform_fee_ppm > PPM_MAX) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "policy.platformFeePpm: must be between 0 and %u, got %" PRIu32, PPM_MAX,
		          p->platform_fee_ppm);
		return;
	}
	const char *comment = str_or_empty(in->comment);
	if (!*comment || strlen(comment) > COMMENT_MAX_BYTES || !text_ok(comment, true)) {
		rpc_error(
		    call, RPC_INVALID_ARGUMENT,
		    "comment: required, at most %d bytes of UTF-8 text (why the policy changes)",
		    COMMENT_MAX_BYTES);
		return;
	}
	struct set_policy_q *q = calloc(1, sizeof *q);
	if (!q) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	q->call = call;
	q->in = in;
	q->now_us = now_us();
	const struct principal *who = rpc_principal(call);
	if (who->name[0])
		snprintf(q->actor, sizeof q->actor, "admin:%" PRIu64 " %s", who->token_id,
		         who->name);
	else
		snprintf(q->actor, sizeof q->actor, "admin:%" PRIu64, who->token_id);
	/* canonical: what the library validated, plus the ledger's fee */
	gpumatch__v1__policy__init(&q->cand);
	conv_policy_out(&sp, &q->cand);
	q->cand.platform_fee_ppm = p->platform_fee_ppm;
	q->cand.created_by = q->actor;
	q->cand.created_at_us = q->now_us;
	q->cand.comment = (char *)comment;
	/* the active version, and whether any ready node could take work
	 * under the candidate (one row even while no version is stored) */
	if (pg_exec(app_get()->pg, NULL,
	            "SELECT " POLICY_COLS ", n.verified, n.ready FROM"
	            " (SELECT count(*) FILTER (WHERE verification_status = 3) AS verified,"
	            "         count(*) AS ready FROM nodes WHERE state = 2) n"
	            " LEFT JOIN LATERAL (SELECT * FROM policies ORDER BY version DESC LIMIT 1) p"
	            " ON true",
	            0, NULL, set_policy_active_cb, q)) {
		rpc_error(call, RPC_UNAVAILABLE, "the record store is unavailable, retry later");
		set_policy_free(q);
	}
}

/* -- listing versions and the audit log -- */

static void list_policies_cb(enum pg_status st, PGresult *res, const char *sqlstate,
                             const char *err, void *arg)
{
	struct admin_q *q = arg;
	/* columns: the active version, then POLICY_COLS; one row of NULLs when
	 * nothing is stored */
	if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
		free(q);
		return;
	}
	int rows = PQntuples(res);
	if (rows == 1 && PQgetisnull(res, 0, 1))
		rows = 0;
	size_t n = rows > q->limit ? (size_t)q->limit : (size_t)rows;
	Gpumatch__V1__Policy *items;
	Gpumatch__V1__Policy **ptrs;
	Gpumatch__V1__Policy **keep = calloc(n ? n : 1, sizeof *keep);
	if (!keep || alloc_items(n, sizeof *items, (void **)&items, (void ***)&ptrs)) {
		free(keep);
		rpc_error(q->call, RPC_INTERNAL, "out of memory");
		free(q);
		return;
	}
	size_t i;
	for (i = 0; i < n; i++) {
		if (policy_from_row(res, (int)i, 1, &items[i], &keep[i])) {
			log_error("stored policy does not decode version=%s",
			          PQgetvalue(res, (int)i, 1));
			break;
		}
	}
	if (i < n) {
		rpc_error(q->call, RPC_INTERNAL, "internal error");
	} else {
		char next[32] = "";
		size_t shown = page_fit((const void *const *)ptrs, n);
		if ((size_t)rows > n || shown < n)
			page_token_encode(items[shown - 1].version, next, sizeof next);
		Gpumatch__V1__ListPoliciesResponse out = GPUMATCH__V1__LIST_POLICIES_RESPONSE__INIT;
		out.n_policies = shown;
		out.policies = ptrs;
		out.next_page_token = next;
		out.active_version = PQntuples(res) ? col_u64(res, 0, 0) : 0;
		rpc_reply(q->call, &out.base);
	}
	for (size_t k = 0; k < n; k++)
		if (keep[k])
			gpumatch__v1__policy__free_unpacked(keep[k], NULL);
	free(keep);
	free(items);
	free(ptrs);
	free(q);
}

void admin_list_policies(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__ListPoliciesRequest *in = (const void *)req;
	int limit;
	uint64_t before;
	if (page_args(call, in->page_size, in->page_token, &limit, &before))
		return;
	struct admin_q *q = q_new(call, req, limit);
	if (!q)
		return;
	struct numbuf b, l;
	const char *params[] = { fmt_u64(&b, before), fmt_i64(&l, limit + 1) };
	/* newest first: the page token is the last version seen */
	exec_or_fail(call,
	             "SELECT m.v, " POLICY_COLS
	             " FROM (SELECT coalesce(max(version), 0) AS v FROM policies) m"
	             " LEFT JOIN LATERAL (SELECT * FROM policies"
	             "   WHERE $1::bigint = 0 OR version < $1::bigint"
	             "   ORDER BY version DESC LIMIT $2::integer) p ON true"
	             " ORDER BY p.version DESC",
	             2, params, list_policies_cb, q);
}

static void list_policy_audit_cb(enum pg_status st, PGresult *res, const char *sqlstate,
                                 const char *err, void *arg)
{
	struct admin_q *q = arg;
	if (st != PG_OK) {
		reply_pg_error(q->call, st, sqlstate, err);
		free(q);
		return;
	}
	int rows = PQntuples(res);
	size_t n = rows > q->limit ? (size_t)q->limit : (size_t)rows;
	Gpumatch__V1__PolicyAuditEntry *items;
	Gpumatch__V1__PolicyAuditEntry **ptrs;
	struct policy_diff *diffs = calloc(n ? n : 1, sizeof *diffs);
	if (!diffs || alloc_items(n, sizeof *items, (void **)&items, (void ***)&ptrs)) {
		free(diffs);
		rpc_error(q->call, RPC_INTERNAL, "out of memory");
		free(q);
		return;
	}
	bool ok = true;
	for (size_t i = 0; ok && i < n; i++) {
		Gpumatch__V1__PolicyAuditEntry *e = &items[i];
		gpumatch__v1__policy_audit_entry__init(e);
		e->version = col_u64(res, (int)i, 0);
		e->previous_version = col_u64(res, (int)i, 1);
		e->actor = PQgetvalue(res, (int)i, 2);
		e->at_us = col_i64(res, (int)i, 3);
		e->comment = PQgetvalue(res, (int)i, 4);
		/* changes: [{"field", "old", "new"}] as SetPolicy wrote it */
		json_t *arr = json_loads(PQgetvalue(res, (int)i, 5), 0, NULL);
		size_t m = json_is_array(arr) ? json_array_size(arr) : 0;
		struct policy_diff *d = &diffs[i];
		if (!arr ||
		    alloc_items(m, sizeof *d->items, (void **)&d->items, (void ***)&d->ptrs)) {
			json_decref(arr);
			ok = false;
			break;
		}
		for (size_t k = 0; k < m; k++) {
			json_t *c = json_array_get(arr, k);
			const char *f = json_string_value(json_object_get(c, "field"));
			const char *o = json_string_value(json_object_get(c, "old"));
			const char *nv = json_string_value(json_object_get(c, "new"));
			Gpumatch__V1__PolicyFieldChange *ch = &d->items[d->n];
			gpumatch__v1__policy_field_change__init(ch);
			/* field names are Policy's own, so the descriptor's copy
			 * outlives the JSON */
			const ProtobufCFieldDescriptor *fd =
			    f ? protobuf_c_message_descriptor_get_field_by_name(
			            &gpumatch__v1__policy__descriptor, f)
			      : NULL;
			if (!fd)
				continue;
			ch->field = (char *)fd->name;
			ch->old_value = strdup(o ? o : "");
			ch->new_value = strdup(nv ? nv : "");
			d->n++;
			if (!ch->old_value || !ch->new_value) {
				ok = false;
				break;
			}
		}
		json_decref(arr);
		e->n_changes = d->n;
		e->changes = d->ptrs;
	}
	if (!ok) {
		rpc_error(q->call, RPC_INTERNAL, "internal error");
	} else {
		char next[32] = "";
		size_t shown = page_fit((const void *const *)ptrs, n);
		if ((size_t)rows > n || shown < n)
			page_token_encode(items[shown - 1].version, next, sizeof next);
		Gpumatch__V1__ListPolicyAuditResponse out =
		    GPUMATCH__V1__LIST_POLICY_AUDIT_RESPONSE__INIT;
		out.n_entries = shown;
		out.entries = ptrs;
		out.next_page_token = next;
		rpc_reply(q->call, &out.base);
	}
	for (size_t i = 0; i < n; i++)
		policy_diff_free(&diffs[i]);
	free(diffs);
	free(items);
	free(ptrs);
	free(q);
}

void admin_list_policy_audit(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__ListPolicyAuditRequest *in = (const void *)req;
	int limit;
	uint64_t before;
	if (page_args(call, in->page_size, in->page_token, &limit, &before))
		return;
	struct admin_q *q = q_new(call, req, limit);
	if (!q)
		return;
	struct numbuf b, l;
	const char *params[] = { fmt_u64(&b, before), fmt_i64(&l, limit + 1) };
	exec_or_fail(call,
	             "SELECT version, previous_version, actor, at_us, comment, changes::text"
	             " FROM policy_audit WHERE $1::bigint = 0 OR version < $1::bigint"
	             " ORDER BY version DESC LIMIT $2::integer",
	             2, params, list_policy_audit_cb, q);
}
