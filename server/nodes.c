/* nodes.c — NodeService: operators register nodes, agents heartbeat,
 * long-poll for leases and report on them; operators drain their nodes.
 * An operator only ever sees or touches its own nodes; another's node is
 * "not found". */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "convert.h"
#include "gpumatch/v1/admin_service.pb-c.h"
#include "gpumatch/v1/node_service.pb-c.h"
#include "log.h"
#include "service.h"
#include "speeds.h"
#include "strbuf.h"

static uint64_t scope_operator(struct rpc_call *call)
{
	const struct principal *p = rpc_principal(call);
	return p->role == ROLE_OPERATOR ? p->operator_id : 0;
}

/* ---- Node messages from rows ------------------------------------------------------------ */

#define NODE_SELECT                                                                              \
	"SELECT n.id, n.operator_id, n.name, n.region, n.price_micros, n.state, n.state_reason," \
	" n.verification_status, n.facts_pb, n.created_at_us, n.updated_at_us,"                  \
	" n.state_changed_at_us, n.last_heartbeat_us, n.heartbeats_received,"                    \
	" (SELECT coalesce(bit_or(l.gpu_mask), 0) FROM leases l"                                 \
	"   WHERE l.node_id = n.id AND l.state BETWEEN 1 AND 4) AS busy,"                        \
	" n.verified_at_us, n.last_challenge_id, n.last_probe_failure, n.probe_attempts,"        \
	" n.probe_failures, n.unhealthy_gpus, n.health_reason, n.retired_at_us,"                 \
	" rel.leases_total, rel.leases_failed, rel.score_ppm, rel.window_start_us"               \
	" FROM nodes n CROSS JOIN LATERAL gm_node_reliability(n.id) rel"

struct node_scratch {
	Gpumatch__V1__Node *facts; /* unpacked; owns labels, taints, gpus */
	Gpumatch__V1__Verification ver;
	Gpumatch__V1__Reliability rel;
	uint32_t busy[SCHED_MAX_GPUS_PER_NODE];
	uint32_t unhealthy[SCHED_MAX_GPUS_PER_NODE];
};

static void node_scratch_free(struct node_scratch *s)
{
	if (s->facts)
		protobuf_c_message_free_unpacked(&s->facts->base, NULL);
	s->facts = NULL;
}

/* Returns the facts message completed from the row's columns (borrowing
 * strings from r), or NULL. */
static Gpumatch__V1__Node *node_from_row(const PGresult *r, int row, struct node_scratch *s)
{
	memset(s, 0, sizeof *s);
	size_t len;
	uint8_t *raw = col_bytea(r, row, 8, &len);
	s->facts = raw ? gpumatch__v1__node__unpack(NULL, len, raw) : NULL;
	free(raw);
	if (!s->facts)
		return NULL;
	Gpumatch__V1__Node *n = s->facts;
	/* strings the unpacked message owns are freed with it; point the
	 * columns' strings in only for fields it left empty */
	n->id = col_u64(r, row, 0);
	n->operator_id = col_u64(r, row, 1);
	n->price_per_gpu_hour_micros = col_i64(r, row, 4);
	n->state = (Gpumatch__V1__NodeState)col_i64(r, row, 5);
	gpumatch__v1__verification__init(&s->ver);
	s->ver.status = (Gpumatch__V1__VerificationStatus)col_i64(r, row, 7);
	/* the probe's record (probe.c); last_failure is borrowed from r */
	s->ver.verified_at_us = col_i64(r, row, 15);
	s->ver.last_challenge_id = col_u64(r, row, 16);
	s->ver.last_failure = PQgetvalue(r, row, 17);
	s->ver.attempts = (uint32_t)col_u64(r, row, 18);
	s->ver.failures = (uint32_t)col_u64(r, row, 19);
	n->created_at_us = col_i64(r, row, 9);
	n->updated_at_us = col_i64(r, row, 10);
	n->state_changed_at_us = col_i64(r, row, 11);
	n->last_heartbeat_us = col_i64(r, row, 12);
	n->retired_at_us = col_i64(r, row, 22);
	/* lease record (gm_node_reliability, migration 0021); heartbeat
	 * uptime is not measured, so the score is the lease figure alone */
	gpumatch__v1__reliability__init(&s->rel);
	s->rel.leases_total = col_u64(r, row, 23);
	s->rel.leases_failed = col_u64(r, row, 24);
	s->rel.leases_succeeded = s->rel.leases_total - s->rel.leases_failed;
	s->rel.lease_success_ppm = (uint32_t)col_u64(r, row, 25);
	s->rel.score_ppm = s->rel.lease_success_ppm;
	s->rel.window_start_us = col_i64(r, row, 26);
	s->rel.heartbeats_received = col_u64(r, row, 13);
	if (n->reliability) /* the server's figure, never a stored one */
		protobuf_c_message_free_unpacked(&n->reliability->base, NULL);
	n->reliability = NULL;
	uint64_t busy = col_u64(r, row, 14);
	size_t k = 0;
	for (unsigned i = 0; i < 64; i++)
		if (busy >> i & 1)
			s->busy[k++] = i;
	return n;
}

/* Sets the borrowed fields just before packing and clears them after, so
 * that protobuf_c_message_free_unpacked never frees them. */
static void node_borrow(Gpumatch__V1__Node *n, const PGresult *r, int row, struct node_scratch *s,
                        char **saved_name, char **saved_region, char **saved_reason)
{
	*saved_name = n->name;
	*saved_region = n->region;
	*saved_reason = n->state_reason;
	n->name = PQgetvalue(r, row, 2);
	n->region = PQgetvalue(r, row, 3);
	n->state_reason = PQgetvalue(r, row, 6);
	n->verification = &s->ver;
	n->reliability = &s->rel;
	n->busy_gpu_indexes = s->busy;
	n->n_busy_gpu_indexes = 0;
	for (size_t i = 0; i < 64; i++)
		if (col_u64(r, row, 14) >> i & 1)
			n->n_busy_gpu_indexes++;
	uint64_t bad = col_u64(r, row, 20);
	n->unhealthy_gpu_indexes = s->unhealthy;
	n->n_unhealthy_gpu_indexes = 0;
	for (unsigned i = 0; i < 64; i++)
		if (bad >> i & 1)
			s->unhealthy[n->n_unhealthy_gpu_indexes++] = i;
	n->health_message = PQgetvalue(r, row, 21);
}

static void node_unborrow(Gpumatch__V1__Node *n, char *name, char *region, char *reason)
{
	n->name = name;
	n->region = region;
	n->state_reason = reason;
	n->verification = NULL;
	n->reliability = NULL;
	n->busy_gpu_indexes = NULL;
	n->n_busy_gpu_indexes = 0;
	n->unhealthy_gpu_indexes = NULL;
	n->n_unhealthy_gpu_indexes = 0;
	n->health_message = (char *)protobuf_c_empty_string;
}

struct node_reply {
	struct rpc_call *call;
	bool created;
};

static void reply_node_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                          void *arg)
{
	struct node_reply *nr = arg;
	struct rpc_call *call = nr->call;
	if (st != PG_OK) {
		reply_pg_error(call, st, ss, err);
		free(nr);
		return;
	}
	if (PQntuples(res) != 1) {
		rpc_error(call, RPC_NOT_FOUND, "node not found");
		free(nr);
		return;
	}
	struct node_scratch s;
	Gpumatch__V1__Node *n = node_from_row(res, 0, &s);
	if (!n) {
		rpc_error(call, RPC_INTERNAL, "stored node could not be read");
		free(nr);
		return;
	}
	char *sn, *sr, *ss2;
	node_borrow(n, res, 0, &s, &sn, &sr, &ss2);
	const char *path = rpc_method_path(call);
	if (strstr(path, "/RegisterNode")) {
		Gpumatch__V1__RegisterNodeResponse resp =
		    GPUMATCH__V1__REGISTER_NODE_RESPONSE__INIT;
		resp.node = n;
		resp.created = nr->created;
		rpc_reply(call, &resp.base);
	} else if (strstr(path, "/DrainNode")) {
		Gpumatch__V1__DrainNodeResponse resp = GPUMATCH__V1__DRAIN_NODE_RESPONSE__INIT;
		resp.node = n;
		rpc_reply(call, &resp.base);
	} else if (strstr(path, "/UndrainNode")) {
		Gpumatch__V1__UndrainNodeResponse resp = GPUMATCH__V1__UNDRAIN_NODE_RESPONSE__INIT;
		resp.node = n;
		rpc_reply(call, &resp.base);
	} else if (strstr(path, "/RetireNode")) {
		Gpumatch__V1__RetireNodeResponse resp = GPUMATCH__V1__RETIRE_NODE_RESPONSE__INIT;
		resp.node = n;
		rpc_reply(call, &resp.base);
	} else if (strstr(path, "/CordonNode")) {
		Gpumatch__V1__CordonNodeResponse resp = GPUMATCH__V1__CORDON_NODE_RESPONSE__INIT;
		resp.node = n;
		rpc_reply(call, &resp.base);
	} else if (strstr(path, "/UncordonNode")) {
		Gpumatch__V1__UncordonNodeResponse resp =
		    GPUMATCH__V1__UNCORDON_NODE_RESPONSE__INIT;
		resp.node = n;
		rpc_reply(call, &resp.base);
	} else {
		Gpumatch__V1__GetNodeResponse resp = GPUMATCH__V1__GET_NODE_RESPONSE__INIT;
		resp.node = n;
		rpc_reply(call, &resp.base);
	}
	node_unborrow(n, sn, sr, ss2);
	node_scratch_free(&s);
	free(nr);
}

static void load_node_and_reply(struct rpc_call *call, uint64_t node_id, uint64_t op, bool created)
{
	struct node_reply *nr = malloc(sizeof *nr);
	if (!nr) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	nr->call = call;
	nr->created = created;
	struct numbuf a, b;
	const char *params[] = { fmt_u64(&a, node_id), fmt_u64(&b, op) };
	if (pg_exec(app_get()->pg, NULL,
	            NODE_SELECT
	            " WHERE n.id = $1::bigint AND ($2::bigint = 0 OR n.operator_id = $2::bigint)",
	            2, params, reply_node_cb, nr)) {
		free(nr);
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
	}
}

void nodes_reply_node(struct rpc_call *call, uint64_t node_id)
{
	load_node_and_reply(call, node_id, 0, false);
}

/* ---- RegisterNode --------------------------------------------------------------------------- */

static const struct {
	const char *sched, *api;
} node_fields[] = {
	{ "price_micros", "pricePerGpuHourMicros" },
	{ "ngpus", "gpus" },
	{ "region", "region" },
	{ "labels", "labels" },
	{ "taints", "taints" },
	{ "reliability_ppm", "reliability" },
};

static void api_node_field(const char *f, char *out, size_t len)
{
	for (size_t i = 0; i < sizeof node_fields / sizeof node_fields[0]; i++) {
		size_t n = strlen(node_fields[i].sched);
		if (!strncmp(f, node_fields[i].sched, n) && (f[n] == '\0' || f[n] == '[')) {
			snprintf(out, len, "%s%s", node_fields[i].api, f + n);
			return;
		}
	}
	/* "gpus[3].memory_mib" -> "gpus[3].memoryMib" */
	char camel[96];
	conv_camel(f, camel, sizeof camel);
	snprintf(out, len, "%s", camel);
}

struct reg_ctx {
	struct rpc_call *call;
	uint64_t op;
	uint64_t node_id;
	bool update;
};

static void register_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                        void *arg)
{
	struct reg_ctx *rc = arg;
	/* columns: the node's id (NULL: nothing written), the first GPU
	 * whose uuid another live node holds (ordinal, that node, whether it
	 * is this operator's), the state of the node to update */
	if (st != PG_OK) {
		if (!strcmp(ss, "23505") && err && strstr(err, "gpus_uuid_held_key"))
			/* a concurrent registration took it after our check */
			rpc_error(rc->call, RPC_ALREADY_EXISTS,
			          "gpus: a GPU uuid of this node was just registered by another "
			          "node");
		else if (!strcmp(ss, "23505"))
			rpc_error(
			    rc->call, RPC_ALREADY_EXISTS,
			    "name: this operator already has a node with that name; register with "
			    "its nodeId to update it");
		else
			reply_pg_error(rc->call, st, ss, err);
	} else if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 1)) {
		int i = (int)col_i64(res, 0, 1) - 1;
		if (!strcmp(PQgetvalue(res, 0, 3), "t"))
			rpc_error(
			    rc->call, RPC_ALREADY_EXISTS,
			    "gpus[%d].uuid: this GPU is already registered as node %s; retire "
			    "that node first (gpumatch node retire %s)",
			    i, PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 2));
		else
			rpc_error(rc->call, RPC_ALREADY_EXISTS,
			          "gpus[%d].uuid: this GPU is already registered by another "
			          "operator's node",
			          i);
	} else if (PQntuples(res) == 1 && rc->update && !PQgetisnull(res, 0, 4) &&
	           col_i64(res, 0, 4) == 6) {
		rpc_error(rc->call, RPC_FAILED_PRECONDITION,
		          "nodeId: node %" PRIu64 " is retired; register without a nodeId to add "
		          "the machine again",
		          rc->node_id);
	} else if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
		if (rc->update)
			rpc_error(rc->call, RPC_NOT_FOUND, "nodeId: node %" PRIu64 " not found",
			          rc->node_id);
		else
			rpc_error(rc->call, RPC_RESOURCE_EXHAUSTED,
			          "this operator has reached its node limit (or is disabled)");
	} else {
		uint64_t id = col_u64(res, 0, 0);
		schedloop_node_changed(app_get(), id);
		load_node_and_reply(rc->call, id, rc->op, !rc->update);
	}
	free(rc);
}

static bool valid_name(const char *s)
{
	size_t n = strlen(s);
	if (n < 1 || n > 128)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '-' || *s == '_' || *s == '.'))
			return false;
	return true;
}

void nodes_register(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__RegisterNodeRequest *req =
	    (const Gpumatch__V1__RegisterNodeRequest *)msg;
	const struct principal *who = rpc_principal(call);
	if (who->role != ROLE_OPERATOR) {
		rpc_error(call, RPC_PERMISSION_DENIED,
		          "nodes are registered with an operator's token");
		return;
	}
	if (!valid_name(req->name)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "name: must be 1..128 bytes of letters, digits, '-', '_', '.'");
		return;
	}
	if (strlen(req->address) > 256 || strlen(req->agent_version) > 64) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "%s: too long",
		          strlen(req->address) > 256 ? "address" : "agentVersion");
		return;
	}
	for (size_t i = 0; i < req->n_gpus; i++) {
		if (req->gpus[i]->index != i) {
			rpc_error(call, RPC_INVALID_ARGUMENT,
			          "gpus[%zu].index: must be %zu (ordered by index)", i, i);
			return;
		}
		if (!req->gpus[i]->claimed) {
			rpc_error(
			    call, RPC_INVALID_ARGUMENT,
			    "gpus[%zu].claimed: required (the throughput the operator claims)", i);
			return;
		}
	}
	/* The facts as stored: what the operator says, never verified figures. */
	Gpumatch__V1__Node facts = GPUMATCH__V1__NODE__INIT;
	facts.name = req->name;
	facts.region = req->region;
	facts.n_labels = req->n_labels;
	facts.labels = (Gpumatch__V1__Node__LabelsEntry **)req->labels;
	facts.n_taints = req->n_taints;
	facts.taints = req->taints;
	facts.price_per_gpu_hour_micros = req->price_per_gpu_hour_micros;
	facts.n_gpus = req->n_gpus;
	facts.gpus = req->gpus;
	facts.address = req->address;
	facts.agent_version = req->agent_version;
	facts.state = GPUMATCH__V1__NODE_STATE__NODE_STATE_READY;
	/* Validate through the scheduler's own rules so that what is accepted
	 * can be scheduled. */
	if (req->n_gpus > SCHED_MAX_GPUS_PER_NODE || req->n_gpus == 0) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "gpus: a node has 1..%d GPUs, got %zu",
		          SCHED_MAX_GPUS_PER_NODE, req->n_gpus);
		return;
	}
	struct sched_gpu_spec gpus[SCHED_MAX_GPUS_PER_NODE];
	struct conv_strings *st = malloc(sizeof *st);
	struct sched_node_spec ns;
	char field[256], why[256];
	if (!st) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	facts.id = 1;
	if (conv_node(&facts, &ns, gpus, st, field, sizeof field, why, sizeof why)) {
		free(st);
		rpc_error(call, RPC_INVALID_ARGUMENT, "%s: %s", field, why);
		return;
	}
	struct sched_error se;
	if (sched_node_validate(&ns, &se)) {
		free(st);
		api_node_field(se.field, field, sizeof field);
		rpc_error(call, RPC_INVALID_ARGUMENT, "%s: %s", field, se.message);
		return;
	}
	free(st);
	facts.id = 0;
	for (size_t i = 0; i < req->n_gpus; i++) {
		for (size_t k = 0; k < i && req->gpus[i]->uuid[0]; k++) {
			if (!strcmp(req->gpus[k]->uuid, req->gpus[i]->uuid)) {
				rpc_error(call, RPC_INVALID_ARGUMENT,
				          "gpus[%zu].uuid: the same as gpus[%zu].uuid (one GPU "
				          "listed twice)",
				          i, k);
				return;
			}
		}
		if (req->gpus[i]->verified) {
			rpc_error(
			    call, RPC_INVALID_ARGUMENT,
			    "gpus[%zu].verified: set by the server after a probe, not by operators",
			    i);
			return;
		}
	}
	char *facts_hex = pack_bytea_param(&facts.base);
	struct strbuf idx = { 0 }, model = { 0 }, uuid = { 0 }, mem = { 0 };
	sb_puts(&idx, "{");
	sb_puts(&model, "{");
	sb_puts(&uuid, "{");
	sb_puts(&mem, "{");
	for (size_t i = 0; i < req->n_gpus; i++) {
		const char *sep = i ? "," : "";
		sb_printf(&idx, "%s%zu", sep, i);
		sb_puts(&model, sep);
		sb_array_str(&model, req->gpus[i]->model);
		sb_puts(&uuid, sep);
		sb_array_str(&uuid, req->gpus[i]->uuid);
		sb_printf(&mem, "%s%u", sep, req->gpus[i]->memory_mib);
	}
	sb_puts(&idx, "}");
	sb_puts(&model, "}");
	sb_puts(&uuid, "}");
	sb_puts(&mem, "}");
	struct reg_ctx *rc = malloc(sizeof *rc);
	if (!facts_hex || !rc || idx.oom || model.oom || uuid.oom || mem.oom) {
		free(rc);
		rpc_error(call, RPC_INTERNAL, "out of memory");
		goto out;
	}
	rc->call = call;
	rc->op = who->operator_id;
	rc->node_id = req->node_id;
	rc->update = req->node_id != 0;
	struct numbuf op, price, now, nid;
	const char *params[] = { fmt_u64(&op, who->operator_id),
		                 req->name,
		                 req->region,
		                 fmt_i64(&price, req->price_per_gpu_hour_micros),
		                 facts_hex,
		                 fmt_i64(&now, now_us()),
		                 idx.s,
		                 model.s,
		                 uuid.s,
		                 mem.s,
		                 fmt_u64(&nid, req->node_id) };
	/* A GPU another live node holds (gpus.uuid_held, unique) is refused
	 * before anything is written, naming it; the unique constraint only
	 * catches a concurrent registration. */
#define REG_TAKEN                                                              \
	"taken AS (SELECT x.o, g.node_id, n.operator_id = $1::bigint AS mine"  \
	"   FROM unnest($9::text[]) WITH ORDINALITY x(u, o)"                   \
	"   JOIN gpus g ON g.uuid_held = x.u JOIN nodes n ON n.id = g.node_id" \
	"   WHERE x.u <> '' AND g.node_id <> $11::bigint ORDER BY x.o LIMIT 1),"
#define REG_RESULT(cte)                                                                   \
	" SELECT (SELECT id FROM " cte "), t.o, t.node_id, t.mine,"                       \
	"  (SELECT state FROM nodes WHERE id = $11::bigint AND operator_id = $1::bigint)" \
	" FROM (SELECT 1) one LEFT JOIN taken t ON true"
	const char *sql_new =
	    "WITH " REG_TAKEN
	    " lim AS (SELECT node_limit FROM operators WHERE id = $1::bigint AND state = 1),"
	    " cnt AS (SELECT count(*) AS c FROM nodes WHERE operator_id = $1::bigint AND state <> "
	    "6),"
	    " ins AS (INSERT INTO nodes (operator_id, name, region, price_micros, state,"
	    "   verification_status, facts_pb, created_at_us, updated_at_us, state_changed_at_us,"
	    "   state_reason)"
	    "   SELECT $1::bigint, $2, $3, $4::bigint, 1, 1, $5::bytea, $6::bigint, $6::bigint,"
	    "   $6::bigint, 'registered' FROM lim, cnt WHERE cnt.c < lim.node_limit"
	    "   AND $11::bigint = 0 AND NOT EXISTS (SELECT 1 FROM taken) RETURNING id),"
	    " g AS (INSERT INTO gpus (node_id, idx, model, uuid, memory_mib, uuid_held)"
	    "   SELECT ins.id, u.i, u.m, u.u, u.mem, nullif(u.u, '') FROM ins,"
	    "   unnest($7::integer[], $8::text[], $9::text[], $10::integer[]) AS u(i, m, u, "
	    "mem))" REG_RESULT("ins");
	const char *sql_update =
	    "WITH " REG_TAKEN
	    " up AS (UPDATE nodes SET name = $2, region = $3, price_micros = $4::bigint,"
	    "   facts_pb = $5::bytea, updated_at_us = $6::bigint,"
	    /* new facts carry no verified figures: a verified node probes again */
	    "   verification_status = CASE WHEN verification_status = 3 THEN 1"
	    "   ELSE verification_status END"
	    "   WHERE id = $11::bigint AND operator_id = $1::bigint AND state <> 6"
	    "   AND NOT EXISTS (SELECT 1 FROM taken) RETURNING id),"
	    " d AS (DELETE FROM gpus WHERE node_id IN (SELECT id FROM up)),"
	    " g AS (INSERT INTO gpus (node_id, idx, model, uuid, memory_mib, uuid_held)"
	    "   SELECT up.id, u.i, u.m, u.u, u.mem, nullif(u.u, '') FROM up,"
	    "   unnest($7::integer[], $8::text[], $9::text[], $10::integer[]) AS u(i, m, u, mem)"
	    "   ON CONFLICT (node_id, idx) DO UPDATE SET model = excluded.model,"
	    "   uuid = excluded.uuid, memory_mib = excluded.memory_mib,"
	    "   uuid_held = excluded.uuid_held)" REG_RESULT("up");
	if (pg_exec(app_get()->pg, NULL, rc->update ? sql_update : sql_new, 11, params, register_cb,
	            rc)) {
		free(rc);
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
	}
out:
	free(facts_hex);
	sb_free(&idx);
	sb_free(&model);
	sb_free(&uuid);
	sb_free(&mem);
}

void nodes_get(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__GetNodeRequest *req = (const Gpumatch__V1__GetNodeRequest *)msg;
	if (!req->node_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "nodeId: required");
		return;
	}
	load_node_and_reply(call, req->node_id, scope_operator(call), false);
}

struct list_nodes_ctx {
	struct rpc_call *call;
	int page_size;
};

static void list_nodes_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                          void *arg)
{
	struct list_nodes_ctx *lc = arg;
	if (st != PG_OK) {
		reply_pg_error(lc->call, st, ss, err);
		free(lc);
		return;
	}
	int rows = PQntuples(res);
	int n = rows > lc->page_size ? lc->page_size : rows;
	struct node_scratch *sc = calloc((size_t)(n ? n : 1), sizeof *sc);
	Gpumatch__V1__Node **ptrs = calloc((size_t)(n ? n : 1), sizeof *ptrs);
	char **saved = calloc((size_t)(3 * (n ? n : 1)), sizeof *saved);
	char token[32] = "";
	int built = 0;
	if (!sc || !ptrs || !saved) {
		rpc_error(lc->call, RPC_INTERNAL, "out of memory");
		goto out;
	}
	for (; built < n; built++) {
		ptrs[built] = node_from_row(res, built, &sc[built]);
		if (!ptrs[built]) {
			rpc_error(lc->call, RPC_INTERNAL, "stored node could not be read");
			goto out;
		}
		node_borrow(ptrs[built], res, built, &sc[built], &saved[3 * built],
		            &saved[3 * built + 1], &saved[3 * built + 2]);
	}
	size_t shown = page_fit((const void *const *)ptrs, (size_t)n);
	if ((rows > lc->page_size || shown < (size_t)n) && n > 0)
		page_token_encode(ptrs[shown - 1]->id, token, sizeof token);
	Gpumatch__V1__ListNodesResponse resp = GPUMATCH__V1__LIST_NODES_RESPONSE__INIT;
	resp.n_nodes = shown;
	resp.nodes = ptrs;
	resp.next_page_token = token;
	rpc_reply(lc->call, &resp.base);
out:
	for (int i = 0; i < built; i++) {
		node_unborrow(ptrs[i], saved[3 * i], saved[3 * i + 1], saved[3 * i + 2]);
		node_scratch_free(&sc[i]);
	}
	if (sc && built < n && sc[built].facts)
		node_scratch_free(&sc[built]);
	free(sc);
	free(ptrs);
	free(saved);
	free(lc);
}

void nodes_list(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__ListNodesRequest *req = (const Gpumatch__V1__ListNodesRequest *)msg;
	const struct principal *who = rpc_principal(call);
	if (req->page_size < 0 || req->page_size > 1000) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "pageSize: must be between 0 and 1000");
		return;
	}
	uint64_t after;
	if (page_token_decode(req->page_token, &after)) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "pageToken: not a token this server issued");
		return;
	}
	if (who->role == ROLE_OPERATOR && req->operator_id &&
	    req->operator_id != who->operator_id) {
		rpc_error(call, RPC_PERMISSION_DENIED,
		          "operatorId: operators list their own nodes");
		return;
	}
	struct strbuf states = { 0 };
	sb_puts(&states, "{");
	for (size_t i = 0; i < req->n_states; i++) {
		if (req->states[i] < 1 || req->states[i] > 6) {
			sb_free(&states);
			rpc_error(call, RPC_INVALID_ARGUMENT, "states[%zu]: not a node state", i);
			return;
		}
		sb_printf(&states, "%s%d", i ? "," : "", (int)req->states[i]);
	}
	sb_puts(&states, "}");
	struct list_nodes_ctx *lc = malloc(sizeof *lc);
	if (!lc || states.oom) {
		free(lc);
		sb_free(&states);
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	lc->call = call;
	lc->page_size = req->page_size ? req->page_size : 100;
	uint64_t op = who->role == ROLE_OPERATOR ? who->operator_id : req->operator_id;
	struct numbuf a, o, l;
	const char *params[] = { fmt_u64(&a, after), fmt_u64(&o, op), states.s, req->region,
		                 fmt_i64(&l, lc->page_size + 1) };
	if (pg_exec(app_get()->pg, NULL,
	            NODE_SELECT
	            " WHERE n.id > $1::bigint AND ($2::bigint = 0 OR n.operator_id = $2::bigint)"
	            " AND (cardinality($3::smallint[]) = 0 OR n.state = ANY($3::smallint[]))"
	            " AND ($4 = '' OR n.region = $4) ORDER BY n.id LIMIT $5::integer",
	            5, params, list_nodes_cb, lc)) {
		free(lc);
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
	}
	sb_free(&states);
}

/* ---- Heartbeat ----------------------------------------------------------------------------- */

struct hb_ctx {
	struct batch_item item; /* first: the batch hands it back */
	struct rpc_call *call;
	uint64_t node_id, op;
	int64_t now_us;
	uint64_t unhealthy;
	char health[256];
	char *gidx, *guuid; /* the reported GPUs: array literals of indexes, uuids */
	size_t n_running;
	uint64_t running[]; /* the request's running_lease_ids */
};

static void hb_free(struct hb_ctx *h)
{
	free(h->gidx);
	free(h->guuid);
	free(h);
}

static void heartbeat_add(struct batch_item *it, struct strbuf *a)
{
	struct hb_ctx *h = (struct hb_ctx *)it;
	sb_printf(&a[0], "%" PRIu64, h->node_id);
	sb_printf(&a[1], "%" PRIu64, h->op);
	sb_printf(&a[2], "%" PRId64, h->now_us);
	sb_puts(&a[3], "\"{");
	for (size_t i = 0; i < h->n_running; i++)
		sb_printf(&a[3], "%s%" PRIu64, i ? "," : "", h->running[i]);
	sb_puts(&a[3], "}\"");
	sb_printf(&a[4], "%" PRId64, (int64_t)h->unhealthy);
	sb_array_str(&a[5], h->health);
	sb_array_str(&a[6], h->gidx);
	sb_array_str(&a[7], h->guuid);
}

/* Columns after the element's position: gm_heartbeat's (migration 0019), as
 * gm_heartbeats (migration 0023) answers them. */
static void heartbeat_done(struct batch_item *it, enum pg_status st, PGresult *res, int row,
                           const char *ss, const char *err)
{
	struct hb_ctx *h = (struct hb_ctx *)it;
	if (st != PG_OK) {
		reply_pg_error(h->call, st, ss, err);
		hb_free(h);
		return;
	}
	if (row < 0) {
		rpc_error(h->call, RPC_NOT_FOUND, "nodeId: node %" PRIu64 " not found", h->node_id);
		hb_free(h);
		return;
	}
	if (col_i64(res, row, 3) == GPUMATCH__V1__NODE_STATE__NODE_STATE_DISABLED) {
		rpc_error(h->call, RPC_FAILED_PRECONDITION,
		          "nodeId: node %" PRIu64 " is retired; its agent should stop", h->node_id);
		hb_free(h);
		return;
	}
	if (!PQgetisnull(res, row, 8)) {
		/* a GPU the node did not register: nothing stored */
		int i = (int)col_i64(res, row, 8) - 1;
		if (!strcmp(PQgetvalue(res, row, 9), "index"))
			rpc_error(
			    h->call, RPC_INVALID_ARGUMENT,
			    "gpus[%d].index: node %" PRIu64 " has no GPU %s (it registered %s)", i,
			    h->node_id, PQgetvalue(res, row, 10), PQgetvalue(res, row, 11));
		else
			rpc_error(h->call, RPC_INVALID_ARGUMENT,
			          "gpus[%d].uuid: not the uuid GPU %s of node %" PRIu64
			          " registered with",
			          i, PQgetvalue(res, row, 10), h->node_id);
		hb_free(h);
		return;
	}
	if (!PQgetisnull(res, row, 7)) {
		int i = (int)col_i64(res, row, 7) - 1;
		rpc_error(h->call, RPC_INVALID_ARGUMENT,
		          "runningLeaseIds[%d]: lease %" PRIu64 " is not a lease of node %" PRIu64,
		          i, i >= 0 && (size_t)i < h->n_running ? h->running[i] : 0, h->node_id);
		hb_free(h);
		return;
	}
	struct app *a = app_get();
	int state = (int)col_i64(res, row, 1), old = (int)col_i64(res, row, 3);
	/* a GPU turned unhealthy or healthy again: the scheduler re-reads
	 * the node (no new work while any GPU is unhealthy) */
	bool health_changed = !strcmp(PQgetvalue(res, row, 6), "t");
	if (health_changed)
		log_info("node gpu health changed node=%" PRIu64, h->node_id);
	if (state != old || health_changed)
		schedloop_node_changed(a, h->node_id);
	Gpumatch__V1__HeartbeatResponse resp = GPUMATCH__V1__HEARTBEAT_RESPONSE__INIT;
	resp.server_time_us = now_us();
	resp.next_heartbeat_ms = (uint32_t)a->cfg.heartbeat_interval_ms;
	resp.node_state = (Gpumatch__V1__NodeState)state;
	resp.verification_status = (Gpumatch__V1__VerificationStatus)col_i64(res, row, 2);
	/* stop commands: "id:deadline:stop_kind:reason;" */
	Gpumatch__V1__LeaseCommand cmds[64], *cptrs[64];
	char *stops = strdup(PQgetvalue(res, row, 4));
	size_t nc = 0;
	for (char *save = NULL, *tok = stops ? strtok_r(stops, ";", &save) : NULL; tok && nc < 64;
	     tok = strtok_r(NULL, ";", &save)) {
		unsigned long long id;
		long long deadline;
		int used = 0, kind = 0;
		if (sscanf(tok, "%llu:%lld:%d:%n", &id, &deadline, &kind, &used) < 3 || !used)
			continue;
		gpumatch__v1__lease_command__init(&cmds[nc]);
		cmds[nc].lease_id = id;
		cmds[nc].action = GPUMATCH__V1__LEASE_ACTION__LEASE_ACTION_STOP;
		cmds[nc].deadline_us = deadline;
		cmds[nc].reason = tok + used;
		cmds[nc].interrupt = kind == 6; /* the node stops: INTERRUPTED */
		cptrs[nc] = &cmds[nc];
		nc++;
	}
	resp.n_commands = nc;
	resp.commands = cptrs;
	uint64_t unknown[256];
	size_t nu = 0;
	const char *u = PQgetvalue(res, row, 5);
	while (*u && nu < 256) {
		char *end;
		unknown[nu++] = strtoull(u, &end, 10);
		u = *end == ',' ? end + 1 : end;
		if (end == u && *u != ',')
			break;
	}
	resp.n_unknown_lease_ids = nu;
	resp.unknown_lease_ids = unknown;
	rpc_reply(h->call, &resp.base);
	free(stops);
	hb_free(h);
}

static uint64_t heartbeat_key(const struct batch_item *it)
{
	return ((const struct hb_ctx *)it)->node_id;
}

/* REGISTERED and LOST nodes become READY with their first heartbeat;
 * draining, cordoned and disabled ones keep their state. */
static struct batch_kind heartbeats = {
	.name = "heartbeat",
	.sql = "SELECT h.* FROM gm_heartbeats($1::bigint[], $2::bigint[], $3::bigint[], $4::text[],"
	       " $5::bigint[], $6::text[], $7::text[], $8::text[]) h",
	.nparams = 8,
	.max = 512,
	.key = heartbeat_key, /* node rows locked in id order, as reports do */
	.add = heartbeat_add,
	.done = heartbeat_done,
};

/* Reads the heartbeat's per-GPU health: the GPUs reported UNHEALTHY or
 * MISSING as a mask, and a line saying why. Answers invalid_argument and
 * returns -1 for an index out of range or reported twice. */
static int gpu_health(const Gpumatch__V1__HeartbeatRequest *req, uint64_t *mask, char *why,
                      size_t why_len, struct rpc_call *call)
{
	uint64_t seen = 0;
	size_t w = 0;
	for (size_t i = 0; i < req->n_gpus; i++) {
		const Gpumatch__V1__GpuHealth *g = req->gpus[i];
		if (g->index >= SCHED_MAX_GPUS_PER_NODE || (seen >> g->index & 1)) {
			rpc_error(call, RPC_INVALID_ARGUMENT, "gpus[%zu].index: %s", i,
			          g->index >= SCHED_MAX_GPUS_PER_NODE ? "out of range"
			                                              : "reported twice");
			return -1;
		}
		seen |= 1ULL << g->index;
		bool bad =
		    g->status == GPUMATCH__V1__GPU_HEALTH_STATUS__GPU_HEALTH_STATUS_UNHEALTHY ||
		    g->status == GPUMATCH__V1__GPU_HEALTH_STATUS__GPU_HEALTH_STATUS_MISSING;
		if (!bad)
			continue;
		*mask |= 1ULL << g->index;
		if (w + 1 < why_len) {
			int n = snprintf(
			    why + w, why_len - w, "%sgpu %u %s", w ? "; " : "", g->index,
			    g->status == GPUMATCH__V1__GPU_HEALTH_STATUS__GPU_HEALTH_STATUS_MISSING
			        ? "missing"
			        : "unhealthy");
			w = n > 0 ? w + (size_t)n : w;
			for (size_t x = 0; x < g->n_xid_errors && x < 4 && w + 1 < why_len; x++) {
				n = snprintf(why + w, why_len - w, "%s%u", x ? "," : ": xid ",
				             g->xid_errors[x]);
				w = n > 0 ? w + (size_t)n : w;
			}
			if (g->ecc_uncorrected && w + 1 < why_len) {
				n = snprintf(why + w, why_len - w,
				             " (%" PRIu64 " uncorrectable ECC)",
				             g->ecc_uncorrected);
				w = n > 0 ? w + (size_t)n : w;
			}
		}
	}
	if (w >= why_len)
		why[why_len - 1] = '\0';
	return 0;
}

bool nodes_valid_digest(const char *d)
{
	if (!d || !*d)
		return true;
	if (strncmp(d, "sha256:", 7) || strlen(d) != 7 + 64)
		return false;
	for (d += 7; *d; d++)
		if (!((*d >= '0' && *d <= '9') || (*d >= 'a' && *d <= 'f')))
			return false;
	return true;
}

static void progress_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                        void *arg)
{
	(void)res;
	(void)ss;
	(void)arg;
	if (st != PG_OK)
		log_warn("lease progress not recorded err=\"%s\"", err ? err : "");
}

/* The container phase of the node's leases (PULLING with bytes, STARTING,
 * RUNNING) and the image digest once known, as GetJob shows them. Entries
 * that do not fit (unknown phase, bad digest) are skipped: progress is
 * informational and never fails a heartbeat. */
static void nodes_record_progress(struct rpc_call *call, const Gpumatch__V1__HeartbeatRequest *req)
{
	for (size_t i = 0; i < req->n_progress && i < 256; i++) {
		const Gpumatch__V1__LeaseProgress *p = req->progress[i];
		if (strcmp(p->phase, "PULLING") && strcmp(p->phase, "STARTING") &&
		    strcmp(p->phase, "RUNNING"))
			continue;
		if (!nodes_valid_digest(p->image_digest) || p->pulled_bytes < 0)
			continue;
		struct numbuf l, n, o, b;
		const char *params[] = {
			fmt_u64(&l, p->lease_id),          fmt_u64(&n, req->node_id),
			fmt_u64(&o, scope_operator(call)), p->phase,
			fmt_i64(&b, p->pulled_bytes),      p->image_digest
		};
		pg_exec(app_get()->pg, NULL,
		        "UPDATE leases l SET phase = $4, pulled_bytes = $5::bigint,"
		        " image_digest = CASE WHEN $6 <> '' THEN $6 ELSE l.image_digest END"
		        " FROM nodes n WHERE l.id = $1::bigint AND l.node_id = $2::bigint"
		        " AND n.id = l.node_id AND ($3::bigint = 0 OR n.operator_id = $3::bigint)"
		        " AND l.state BETWEEN 2 AND 4",
		        6, params, progress_cb, NULL);
	}
}

void nodes_heartbeat(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__HeartbeatRequest *req = (const Gpumatch__V1__HeartbeatRequest *)msg;
	if (!req->node_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "nodeId: required");
		return;
	}
	if (req->n_running_lease_ids > 256 || req->n_gpus > SCHED_MAX_GPUS_PER_NODE) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "%s: too many entries",
		          req->n_gpus > SCHED_MAX_GPUS_PER_NODE ? "gpus" : "runningLeaseIds");
		return;
	}
	uint64_t unhealthy = 0;
	char health[256] = "";
	if (gpu_health(req, &unhealthy, health, sizeof health, call))
		return;
	for (size_t i = 0; i < req->n_running_lease_ids; i++) {
		for (size_t k = 0; k < i; k++) {
			if (req->running_lease_ids[k] == req->running_lease_ids[i]) {
				rpc_error(call, RPC_INVALID_ARGUMENT,
				          "runningLeaseIds[%zu]: lease %" PRIu64 " listed twice", i,
				          req->running_lease_ids[i]);
				return;
			}
		}
		if (!req->running_lease_ids[i]) {
			rpc_error(call, RPC_INVALID_ARGUMENT,
			          "runningLeaseIds[%zu]: 0 is not a lease", i);
			return;
		}
	}
	nodes_record_progress(call, req);
	struct hb_ctx *h = calloc(1, sizeof *h + req->n_running_lease_ids * sizeof(uint64_t));
	if (!h) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	h->call = call;
	h->node_id = req->node_id;
	h->op = scope_operator(call);
	h->now_us = now_us();
	h->unhealthy = unhealthy;
	snprintf(h->health, sizeof h->health, "%s", health);
	h->n_running = req->n_running_lease_ids;
	if (h->n_running)
		memcpy(h->running, req->running_lease_ids, h->n_running * sizeof(uint64_t));
	/* the reported GPUs, checked against the registered ones (gm_heartbeat) */
	struct strbuf gidx = { 0 }, guuid = { 0 };
	sb_puts(&gidx, "{");
	sb_puts(&guuid, "{");
	for (size_t i = 0; i < req->n_gpus; i++) {
		sb_printf(&gidx, "%s%u", i ? "," : "", req->gpus[i]->index);
		sb_puts(&guuid, i ? "," : "");
		sb_array_str(&guuid, req->gpus[i]->uuid);
	}
	sb_puts(&gidx, "}");
	sb_puts(&guuid, "}");
	if (gidx.oom || guuid.oom) {
		sb_free(&gidx);
		sb_free(&guuid);
		free(h);
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	h->gidx = gidx.s;
	h->guuid = guuid.s;
	/* the first listed lease that is not this node's, or the first GPU it
	 * did not register, refuses the heartbeat, and nothing changes */
	batch_add(app_get()->pg, &heartbeats, &h->item);
}

/* ---- AcquireLease (long poll) ------------------------------------------------------------------ */

struct waiter {
	struct batch_item item; /* first: the claim batch hands it back */
	struct rpc_call *call;
	uint64_t node_id;
	uint64_t op;
	int64_t until_us;
	bool querying; /* queued for, or in, a claim batch */
	bool again;    /* woken while querying */
	bool aborted;  /* the call ended without us */
	bool done;
	struct waiter *next, **pprev;   /* all waiters, doubly linked: unlinking is O(1) */
	struct waiter *hnext, **hpprev; /* the waiters of one node hash bucket */
};

/* Waiters by node id: a placement wakes its node's waiters without
 * walking every waiting node. */
#define WAITER_BUCKETS 16384

static struct {
	struct waiter *head;
	struct waiter *bucket[WAITER_BUCKETS];
	struct event *poll_ev;
	bool draining;
	bool scanning;             /* the timer's query for nodes with leases to hand out */
	uint64_t offers_committed; /* for test_die_after_lease_commit */
} W;

static struct waiter **waiter_bucket(uint64_t node_id)
{
	return &W.bucket[(node_id * 0x9E3779B97F4A7C15ULL) >> 50];
}

static void waiter_link(struct waiter *w)
{
	w->next = W.head;
	if (W.head)
		W.head->pprev = &w->next;
	w->pprev = &W.head;
	W.head = w;
	struct waiter **b = waiter_bucket(w->node_id);
	w->hnext = *b;
	if (*b)
		(*b)->hpprev = &w->hnext;
	w->hpprev = b;
	*b = w;
}

static void waiter_unlink(struct waiter *w)
{
	if (!w->pprev)
		return;
	*w->pprev = w->next;
	if (w->next)
		w->next->pprev = w->pprev;
	w->next = NULL;
	w->pprev = NULL;
	*w->hpprev = w->hnext;
	if (w->hnext)
		w->hnext->hpprev = w->hpprev;
	w->hnext = NULL;
	w->hpprev = NULL;
}

static void try_claim(struct waiter *w);

#define LEASE_COLS_OF(p)                                                                      \
	p "id, " p "job_id, " p "node_id, " p "gpu_mask, " p "state, " p "assigned_at_us, " p \
	  "started_at_us, " p "deadline_us, " p "ended_at_us, " p "stop_deadline_us, " p      \
	  "fencing_token, " p "gang_index, " p "gang_size, " p "last_report_seq, " p          \
	  "exit_code, " p "term_signal, " p "price_micros, " p "offered_at_us"
#define LEASE_COLS  LEASE_COLS_OF("l.")
#define LEASE_NCOLS 18

struct lease_scratch {
	uint32_t gpus[SCHED_MAX_GPUS_PER_NODE];
};

static void lease_from_row(const PGresult *r, int row, int c0, Gpumatch__V1__Lease *l,
                           struct lease_scratch *s)
{
	gpumatch__v1__lease__init(l);
	l->id = col_u64(r, row, c0 + 0);
	l->job_id = col_u64(r, row, c0 + 1);
	l->node_id = col_u64(r, row, c0 + 2);
	uint64_t mask = col_u64(r, row, c0 + 3);
	size_t k = 0;
	for (unsigned i = 0; i < 64; i++)
		if (mask >> i & 1)
			s->gpus[k++] = i;
	l->n_gpu_indexes = k;
	l->gpu_indexes = s->gpus;
	l->state = (Gpumatch__V1__LeaseState)col_i64(r, row, c0 + 4);
	l->assigned_at_us = col_i64(r, row, c0 + 5);
	l->started_at_us = col_i64(r, row, c0 + 6);
	l->deadline_us = col_i64(r, row, c0 + 7);
	l->ended_at_us = col_i64(r, row, c0 + 8);
	l->stop_deadline_us = col_i64(r, row, c0 + 9);
	l->fencing_token = col_u64(r, row, c0 + 10);
	l->gang_index = (uint32_t)col_i64(r, row, c0 + 11);
	l->gang_size = (uint32_t)col_i64(r, row, c0 + 12);
	l->last_report_seq = col_u64(r, row, c0 + 13);
	l->exit_code = (int32_t)col_i64(r, row, c0 + 14);
	l->term_signal = (int32_t)col_i64(r, row, c0 + 15);
	l->price_per_gpu_hour_micros = col_i64(r, row, c0 + 16);
	l->offered_at_us = col_i64(r, row, c0 + 17);
}

static void waiter_finish(struct waiter *w)
{
	waiter_unlink(w);
	free(w);
}

static void claim_add(struct batch_item *it, struct strbuf *a)
{
	struct waiter *w = (struct waiter *)it;
	/* a call that ended meanwhile claims nothing (no node 0) */
	sb_printf(&a[0], "%" PRIu64, w->aborted ? 0 : w->node_id);
	sb_printf(&a[1], "%" PRIu64, w->op);
	sb_printf(&a[2], "%" PRId64, now_us());
}

/* Columns after the element's position: LEASE_COLS, spec_pb, job name,
 * tenant. */
static void claim_done(struct batch_item *it, enum pg_status st, PGresult *res, int row,
                       const char *ss, const char *err)
{
	struct waiter *w = (struct waiter *)it;
	w->querying = false;
	if (w->aborted) {
		waiter_finish(w);
		return;
	}
	if (st != PG_OK) {
		reply_pg_error(w->call, st, ss, err);
		waiter_finish(w);
		return;
	}
	if (row >= 0) {
		Gpumatch__V1__AcquireLeaseResponse resp =
		    GPUMATCH__V1__ACQUIRE_LEASE_RESPONSE__INIT;
		Gpumatch__V1__Lease lease;
		struct lease_scratch ls;
		lease_from_row(res, row, 1, &lease, &ls);
		size_t len;
		uint8_t *raw = col_bytea(res, row, 1 + LEASE_NCOLS, &len);
		Gpumatch__V1__JobSpec *spec =
		    raw ? gpumatch__v1__job_spec__unpack(NULL, len, raw) : NULL;
		free(raw);
		resp.lease = &lease;
		resp.spec = spec;
		resp.job_name = PQgetvalue(res, row, 1 + LEASE_NCOLS + 1);
		resp.tenant_id = col_u64(res, row, 1 + LEASE_NCOLS + 2);
		int die_after = app_get()->cfg.test_die_after_lease_commit;
		if (die_after > 0 && ++W.offers_committed >= (uint64_t)die_after) {
			/* fault injection for tests: the offer is committed, its
			 * reply is never sent */
			log_warn(
			    "test_die_after_lease_commit: dying after the offer of lease=%" PRIu64
			    " committed, before its reply",
			    lease.id);
			raise(SIGKILL);
		}
		rpc_reply(w->call, &resp.base);
		if (spec)
			protobuf_c_message_free_unpacked(&spec->base, NULL);
		log_debug("lease acquired lease=%" PRIu64 " job=%" PRIu64 " node=%" PRIu64,
		          lease.id, lease.job_id, lease.node_id);
		waiter_finish(w);
		return;
	}
	if (W.draining || now_us() >= w->until_us) {
		Gpumatch__V1__AcquireLeaseResponse resp =
		    GPUMATCH__V1__ACQUIRE_LEASE_RESPONSE__INIT;
		rpc_reply(w->call, &resp.base);
		waiter_finish(w);
		return;
	}
	if (w->again) {
		w->again = false;
		try_claim(w);
	}
}

/* Each waiter's node hands out its oldest assigned lease, if any, as an
 * offer; the waiters woken while a batch commits share the next one. */
static struct batch_kind claims = {
	.name = "claim",
	.sql = "WITH w AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])"
	       "   WITH ORDINALITY w(node, op, now, i)),"
	       " c AS (SELECT w.i, w.now, x.id FROM w CROSS JOIN LATERAL"
	       "   (SELECT l.id FROM leases l JOIN nodes nd ON nd.id = l.node_id"
	       "     WHERE l.node_id = w.node AND l.state = 1"
	       "     AND (w.op = 0 OR nd.operator_id = w.op)"
	       "     ORDER BY l.id LIMIT 1 FOR UPDATE OF l SKIP LOCKED) x),"
	       " u AS (UPDATE leases l SET state = 2, offered_at_us = c.now FROM c"
	       "   WHERE l.id = c.id AND l.state = 1 RETURNING c.i, l.*)"
	       " SELECT l.i, " LEASE_COLS ", j.spec_pb, j.name, j.tenant_id"
	       " FROM u l JOIN jobs j ON j.id = l.job_id",
	.nparams = 3,
	.max = 1024,
	.add = claim_add,
	.done = claim_done,
};

static void try_claim(struct waiter *w)
{
	w->querying = true;
	batch_add(app_get()->pg, &claims, &w->item);
}

static void waiter_abort(struct rpc_call *call, void *arg)
{
	(void)call;
	struct waiter *w = arg;
	w->aborted = true;
	if (!w->querying)
		waiter_finish(w);
}

void nodes_wake(uint64_t node_id)
{
	for (struct waiter *w = *waiter_bucket(node_id); w; w = w->hnext) {
		if (w->node_id != node_id || w->aborted)
			continue;
		if (w->querying)
			w->again = true;
		else
			try_claim(w);
	}
}

static void scan_cb(enum pg_status st, PGresult *res, const char *ss, const char *err, void *arg)
{
	(void)ss;
	(void)err;
	(void)arg;
	W.scanning = false;
	int n = st == PG_OK ? PQntuples(res) : 0;
	for (int i = 0; i < n; i++)
		nodes_wake(col_u64(res, i, 0));
}

static void poll_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	/* Ends the polls whose wait is over, then catches leases placed by
	 * another replica's leader (or whose wake-up was missed) with one
	 * query for the whole set of waiters, not one per waiter: a fleet of
	 * idle nodes costs one statement per tick. */
	int64_t now = now_us();
	bool idle = false;
	for (struct waiter *w = W.head, *next; w; w = next) {
		next = w->next;
		if (w->querying || w->aborted)
			continue;
		if (now >= w->until_us) {
			Gpumatch__V1__AcquireLeaseResponse resp =
			    GPUMATCH__V1__ACQUIRE_LEASE_RESPONSE__INIT;
			rpc_reply(w->call, &resp.base);
			waiter_finish(w);
			continue;
		}
		idle = true;
	}
	if (!idle || W.scanning)
		return;
	W.scanning = true;
	if (pg_exec(app_get()->pg, NULL, "SELECT DISTINCT node_id FROM leases WHERE state = 1", 0,
	            NULL, scan_cb, NULL))
		W.scanning = false;
}

struct own_ctx {
	struct rpc_call *call;
	uint64_t node_id, op;
	uint32_t wait_ms;
};

static void own_cb(enum pg_status st, PGresult *res, const char *ss, const char *err, void *arg)
{
	struct own_ctx *oc = arg;
	if (st != PG_OK) {
		reply_pg_error(oc->call, st, ss, err);
		free(oc);
		return;
	}
	if (PQntuples(res) != 1) {
		rpc_error(oc->call, RPC_NOT_FOUND, "nodeId: node %" PRIu64 " not found",
		          oc->node_id);
		free(oc);
		return;
	}
	struct waiter *w = calloc(1, sizeof *w);
	if (!w) {
		rpc_error(oc->call, RPC_INTERNAL, "out of memory");
		free(oc);
		return;
	}
	w->call = oc->call;
	w->node_id = oc->node_id;
	w->op = oc->op;
	w->until_us = now_us() + (int64_t)oc->wait_ms * 1000;
	waiter_link(w);
	if (oc->wait_ms) {
		rpc_set_timeout(oc->call, (int)oc->wait_ms + 5000);
		rpc_on_abort(oc->call, waiter_abort, w);
	}
	free(oc);
	try_claim(w);
}

void nodes_acquire_lease(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__AcquireLeaseRequest *req =
	    (const Gpumatch__V1__AcquireLeaseRequest *)msg;
	struct app *a = app_get();
	if (!req->node_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "nodeId: required");
		return;
	}
	if (req->wait_timeout_ms > (uint32_t)a->cfg.long_poll_max_ms) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "waitTimeoutMs: at most %d, got %u",
		          a->cfg.long_poll_max_ms, req->wait_timeout_ms);
		return;
	}
	struct own_ctx *oc = malloc(sizeof *oc);
	if (!oc) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	oc->call = call;
	oc->node_id = req->node_id;
	oc->op = scope_operator(call);
	oc->wait_ms = W.draining ? 0 : req->wait_timeout_ms;
	struct numbuf n, o;
	const char *params[] = { fmt_u64(&n, req->node_id), fmt_u64(&o, oc->op) };
	if (pg_exec(a->pg, NULL,
	            "SELECT state FROM nodes WHERE id = $1::bigint"
	            " AND ($2::bigint = 0 OR operator_id = $2::bigint) AND state <> 6",
	            2, params, own_cb, oc)) {
		free(oc);
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
	}
}

/* ---- ReportLease ---------------------------------------------------------------------------------- */

struct report_ctx {
	struct batch_item item; /* first: the batch hands it back */
	struct rpc_call *call;
	uint64_t lease_id, node_id, op, fence, seq;
	int state, exit_code, term_signal;
	int64_t now_us, started_at_us, exited_at_us;
	bool succeeded;   /* reported SUCCEEDED: a sample for the learned speeds */
	double work_done; /* ReportLeaseRequest.work_done */
	int failure_reason;
	char image_digest[80]; /* "" or sha256:<64 hex> (checked) */
	char *message;
};

static void report_free(struct report_ctx *rc)
{
	free(rc->message);
	free(rc);
}

static void report_add(struct batch_item *it, struct strbuf *a)
{
	struct report_ctx *rc = (struct report_ctx *)it;
	struct app *ap = app_get();
	sb_printf(&a[0], "%" PRIu64, rc->lease_id);
	sb_printf(&a[1], "%" PRIu64, rc->node_id);
	sb_printf(&a[2], "%" PRIu64, rc->op);
	sb_printf(&a[3], "%" PRIu64, rc->fence);
	sb_printf(&a[4], "%" PRIu64, rc->seq);
	sb_printf(&a[5], "%d", rc->state);
	sb_printf(&a[6], "%d", rc->exit_code);
	sb_printf(&a[7], "%d", rc->term_signal);
	sb_array_str(&a[8], rc->message);
	sb_printf(&a[9], "%" PRId64, rc->now_us);
	sb_printf(&a[10], "%d", ap->cfg.max_attempts);
	sb_printf(&a[11], "%" PRId64, rc->started_at_us);
	sb_printf(&a[12], "%" PRId64, rc->exited_at_us);
	sb_printf(&a[13], "%" PRId64, (int64_t)ap->cfg.heartbeat_interval_ms * 1000);
	sb_printf(&a[14], "%d", rc->failure_reason);
	sb_array_str(&a[15], rc->image_digest);
}

/* Columns after the element's position: status, job_id, job_state,
 * job_done, requeued, the seq applied before, the lease (LEASE_COLS), its
 * stop_reason and stop_kind, all of gm_report_leases (migration 0019). */
#define REPORT_C_LEASE 7
static void report_done(struct batch_item *it, enum pg_status st, PGresult *res, int row,
                        const char *ss, const char *err)
{
	struct report_ctx *rc = (struct report_ctx *)it;
	if (st != PG_OK) {
		reply_pg_error(rc->call, st, ss, err);
		report_free(rc);
		return;
	}
	const char *status = row >= 0 ? PQgetvalue(res, row, 1) : "not_found";
	if (!strcmp(status, "not_found")) {
		rpc_error(rc->call, RPC_NOT_FOUND,
		          "leaseId: lease %" PRIu64 " not found on this node", rc->lease_id);
		report_free(rc);
		return;
	}
	if (!strcmp(status, "other_node")) {
		rpc_error(rc->call, RPC_FAILED_PRECONDITION,
		          "leaseId: lease %" PRIu64 " is not a lease of node %" PRIu64,
		          rc->lease_id, rc->node_id);
		report_free(rc);
		return;
	}
	if (!strcmp(status, "stale")) {
		rpc_error(rc->call, RPC_FAILED_PRECONDITION,
		          "fencingToken: does not match the lease's; the lease was re-placed");
		report_free(rc);
		return;
	}
	if (!strcmp(status, "out_of_order")) {
		rpc_error(rc->call, RPC_FAILED_PRECONDITION,
		          "seq: %" PRIu64 " is older than the last report applied to lease %" PRIu64
		          " (%s); reports of a lease carry increasing seq",
		          rc->seq, rc->lease_id, PQgetvalue(res, row, 6));
		report_free(rc);
		return;
	}
	if (!strcmp(status, "not_offered")) {
		rpc_error(rc->call, RPC_FAILED_PRECONDITION,
		          "leaseId: lease %" PRIu64
		          " was not handed to this node yet (AcquireLease)",
		          rc->lease_id);
		report_free(rc);
		return;
	}
	bool duplicate = !strcmp(status, "duplicate");
	if (rc->succeeded && !strcmp(status, "ok"))
		speeds_learn(app_get(), rc->lease_id, rc->work_done);
	if (!strcmp(PQgetvalue(res, row, 4), "t")) {
		struct app *a = app_get();
		schedloop_job_ended(a, col_u64(res, row, 2), !strcmp(PQgetvalue(res, row, 5), "t"));
		outbox_kick(a);
	}
	if (PQgetisnull(res, row, REPORT_C_LEASE)) {
		rpc_error(rc->call, RPC_NOT_FOUND, "leaseId: not found");
		report_free(rc);
		return;
	}
	Gpumatch__V1__ReportLeaseResponse resp = GPUMATCH__V1__REPORT_LEASE_RESPONSE__INIT;
	Gpumatch__V1__Lease lease;
	struct lease_scratch ls;
	lease_from_row(res, row, REPORT_C_LEASE, &lease, &ls);
	resp.lease = &lease;
	resp.duplicate = duplicate;
	Gpumatch__V1__LeaseCommand cmd = GPUMATCH__V1__LEASE_COMMAND__INIT;
	if (lease.state == GPUMATCH__V1__LEASE_STATE__LEASE_STATE_STOPPING) {
		cmd.lease_id = lease.id;
		cmd.action = GPUMATCH__V1__LEASE_ACTION__LEASE_ACTION_STOP;
		cmd.deadline_us = lease.stop_deadline_us;
		cmd.reason = PQgetvalue(res, row, REPORT_C_LEASE + LEASE_NCOLS);
		cmd.interrupt = col_i64(res, row, REPORT_C_LEASE + LEASE_NCOLS + 1) == 6;
	} else {
		cmd.lease_id = lease.id;
		cmd.action = lease.state <= GPUMATCH__V1__LEASE_STATE__LEASE_STATE_RUNNING
		                 ? GPUMATCH__V1__LEASE_ACTION__LEASE_ACTION_CONTINUE
		                 : GPUMATCH__V1__LEASE_ACTION__LEASE_ACTION_UNSPECIFIED;
	}
	if (cmd.action)
		resp.command = &cmd;
	rpc_reply(rc->call, &resp.base);
	report_free(rc);
}

/* the lease columns of a batch function's row r */
#define R_LEASE_COLS LEASE_COLS_OF("(r.lease).")

static struct batch_kind reports = {
	.name = "report",
	.sql = "SELECT r.i, r.status, r.job_id, r.job_state, r.job_done, r.requeued, "
	       "r.last_seq, " R_LEASE_COLS ", (r.lease).stop_reason, (r.lease).stop_kind"
	       " FROM gm_report_leases($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[],"
	       " $5::bigint[], $6::smallint[], $7::integer[], $8::integer[], $9::text[],"
	       " $10::bigint[], ($11::integer[])[1], $12::bigint[], $13::bigint[],"
	       " ($14::bigint[])[1], $15::smallint[], $16::text[]) r",
	.nparams = 16,
	.max = 512,
	.add = report_add,
	.done = report_done,
};

void nodes_report_lease(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__ReportLeaseRequest *req = (const Gpumatch__V1__ReportLeaseRequest *)msg;
	if (!req->node_id || !req->lease_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "%s: required",
		          req->node_id ? "leaseId" : "nodeId");
		return;
	}
	if (!req->seq) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "seq: must be at least 1 (increasing per lease)");
		return;
	}
	if (req->state != GPUMATCH__V1__LEASE_STATE__LEASE_STATE_RUNNING &&
	    req->state != GPUMATCH__V1__LEASE_STATE__LEASE_STATE_SUCCEEDED &&
	    req->state != GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED &&
	    req->state != GPUMATCH__V1__LEASE_STATE__LEASE_STATE_EXPIRED &&
	    req->state != GPUMATCH__V1__LEASE_STATE__LEASE_STATE_INTERRUPTED) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "state: must be LEASE_STATE_RUNNING, LEASE_STATE_SUCCEEDED, "
		          "LEASE_STATE_FAILED, LEASE_STATE_EXPIRED or LEASE_STATE_INTERRUPTED");
		return;
	}
	if (req->started_at_us < 0 || req->exited_at_us < 0) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "%s: must not be negative",
		          req->started_at_us < 0 ? "startedAtUs" : "exitedAtUs");
		return;
	}
	if (req->exited_at_us && req->state == GPUMATCH__V1__LEASE_STATE__LEASE_STATE_RUNNING) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "exitedAtUs: only with a final state (SUCCEEDED, FAILED, EXPIRED, "
		          "INTERRUPTED)");
		return;
	}
	if (req->failure_reason &&
	    (req->state != GPUMATCH__V1__LEASE_STATE__LEASE_STATE_FAILED ||
	     (req->failure_reason != GPUMATCH__V1__FAILURE_REASON__FAILURE_REASON_OOM &&
	      req->failure_reason != GPUMATCH__V1__FAILURE_REASON__FAILURE_REASON_IMAGE_PULL &&
	      req->failure_reason != GPUMATCH__V1__FAILURE_REASON__FAILURE_REASON_AGENT_ERROR))) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "failureReason: only with state LEASE_STATE_FAILED, and one of "
		          "FAILURE_REASON_OOM, FAILURE_REASON_IMAGE_PULL, "
		          "FAILURE_REASON_AGENT_ERROR");
		return;
	}
	if (!nodes_valid_digest(req->image_digest)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "imageDigest: \"\" or sha256: and 64 lowercase hex digits");
		return;
	}
	if (req->state == GPUMATCH__V1__LEASE_STATE__LEASE_STATE_SUCCEEDED &&
	    (req->exit_code || req->term_signal)) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "exitCode: a succeeded lease exits 0 with no signal");
		return;
	}
	if (!isfinite(req->work_done) || req->work_done < 0 || req->work_done > 1e18) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "workDone: must be a finite number between 0 and 1e18, got %g",
		          req->work_done);
		return;
	}
	if (req->work_done > 0 && req->state != GPUMATCH__V1__LEASE_STATE__LEASE_STATE_SUCCEEDED) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "workDone: only with state LEASE_STATE_SUCCEEDED");
		return;
	}
	if (strlen(req->message) > 1024) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "message: at most 1024 bytes");
		return;
	}
	struct report_ctx *rc = calloc(1, sizeof *rc);
	if (!rc || !(rc->message = strdup(req->message))) {
		free(rc);
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	rc->call = call;
	rc->lease_id = req->lease_id;
	rc->node_id = req->node_id;
	rc->op = scope_operator(call);
	rc->fence = req->fencing_token;
	rc->seq = req->seq;
	rc->state = req->state;
	rc->exit_code = req->exit_code;
	rc->term_signal = req->term_signal;
	rc->now_us = now_us();
	rc->started_at_us = req->started_at_us;
	rc->exited_at_us = req->exited_at_us;
	rc->succeeded = req->state == GPUMATCH__V1__LEASE_STATE__LEASE_STATE_SUCCEEDED;
	rc->work_done = req->work_done;
	rc->failure_reason = req->failure_reason;
	snprintf(rc->image_digest, sizeof rc->image_digest, "%s", req->image_digest);
	batch_add(app_get()->pg, &reports, &rc->item);
}

/* ---- ConfirmLease ----------------------------------------------------------------------------- */

struct confirm_ctx {
	struct batch_item item; /* first: the batch hands it back */
	struct rpc_call *call;
	uint64_t lease_id, node_id, op, fence;
	int64_t started_at_us, now_us;
};

static void confirm_add(struct batch_item *it, struct strbuf *a)
{
	struct confirm_ctx *cc = (struct confirm_ctx *)it;
	sb_printf(&a[0], "%" PRIu64, cc->lease_id);
	sb_printf(&a[1], "%" PRIu64, cc->node_id);
	sb_printf(&a[2], "%" PRIu64, cc->op);
	sb_printf(&a[3], "%" PRIu64, cc->fence);
	sb_printf(&a[4], "%" PRId64, cc->started_at_us);
	sb_printf(&a[5], "%" PRId64, cc->now_us);
}

/* Columns after the element's position: status, job_id and the lease
 * (LEASE_COLS) of gm_confirm_leases (migration 0019). */
#define CONFIRM_C_LEASE 3
static void confirm_done(struct batch_item *it, enum pg_status st, PGresult *res, int row,
                         const char *ss, const char *err)
{
	struct confirm_ctx *cc = (struct confirm_ctx *)it;
	if (st != PG_OK) {
		reply_pg_error(cc->call, st, ss, err);
		free(cc);
		return;
	}
	const char *status = row >= 0 ? PQgetvalue(res, row, 1) : "not_found";
	const char *why = NULL;
	enum rpc_code code = RPC_FAILED_PRECONDITION;
	char buf[256];
	if (!strcmp(status, "not_found")) {
		code = RPC_NOT_FOUND;
		snprintf(buf, sizeof buf, "leaseId: lease %" PRIu64 " not found", cc->lease_id);
		why = buf;
	} else if (!strcmp(status, "other_node")) {
		snprintf(buf, sizeof buf,
		         "leaseId: lease %" PRIu64 " is not a lease of node %" PRIu64, cc->lease_id,
		         cc->node_id);
		why = buf;
	} else if (!strcmp(status, "stale")) {
		why = "fencingToken: does not match the lease's; the lease was re-placed";
	} else if (!strcmp(status, "not_offered")) {
		snprintf(buf, sizeof buf,
		         "leaseId: lease %" PRIu64
		         " was not handed to this node yet (AcquireLease)",
		         cc->lease_id);
		why = buf;
	} else if (!strcmp(status, "withdrawn")) {
		snprintf(buf, sizeof buf,
		         "leaseId: the offer of lease %" PRIu64
		         " was withdrawn (not confirmed in time); do not run it",
		         cc->lease_id);
		why = buf;
	} else if (!strcmp(status, "ended")) {
		snprintf(buf, sizeof buf, "leaseId: lease %" PRIu64 " has ended; do not run it",
		         cc->lease_id);
		why = buf;
	} else if (PQgetisnull(res, row, CONFIRM_C_LEASE)) {
		code = RPC_NOT_FOUND;
		why = "leaseId: not found";
	}
	if (why) {
		rpc_error(cc->call, code, "%s", why);
		free(cc);
		return;
	}
	bool duplicate = !strcmp(status, "duplicate");
	if (!duplicate)
		log_debug("lease confirmed lease=%" PRIu64 " node=%" PRIu64, cc->lease_id,
		          cc->node_id);
	Gpumatch__V1__ConfirmLeaseResponse resp = GPUMATCH__V1__CONFIRM_LEASE_RESPONSE__INIT;
	Gpumatch__V1__Lease lease;
	struct lease_scratch ls;
	lease_from_row(res, row, CONFIRM_C_LEASE, &lease, &ls);
	if (lease.state != GPUMATCH__V1__LEASE_STATE__LEASE_STATE_RUNNING) {
		/* ended (or told to stop) between the confirmation and now */
		rpc_error(cc->call, RPC_FAILED_PRECONDITION,
		          "leaseId: lease %" PRIu64 " is no longer to be run (state %d); "
		          "do not run it",
		          cc->lease_id, (int)lease.state);
		free(cc);
		return;
	}
	resp.lease = &lease;
	resp.duplicate = duplicate;
	rpc_reply(cc->call, &resp.base);
	free(cc);
}

static struct batch_kind confirms = {
	.name = "confirm",
	.sql = "SELECT r.i, r.status, r.job_id, " R_LEASE_COLS
	       " FROM gm_confirm_leases($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[],"
	       " $5::bigint[], $6::bigint[]) r",
	.nparams = 6,
	.max = 512,
	.add = confirm_add,
	.done = confirm_done,
};

void nodes_confirm_lease(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__ConfirmLeaseRequest *req =
	    (const Gpumatch__V1__ConfirmLeaseRequest *)msg;
	if (!req->node_id || !req->lease_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "%s: required",
		          req->node_id ? "leaseId" : "nodeId");
		return;
	}
	if (req->started_at_us < 0) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "startedAtUs: must not be negative");
		return;
	}
	struct confirm_ctx *cc = calloc(1, sizeof *cc);
	if (!cc) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	cc->call = call;
	cc->lease_id = req->lease_id;
	cc->node_id = req->node_id;
	cc->op = scope_operator(call);
	cc->fence = req->fencing_token;
	cc->started_at_us = req->started_at_us;
	cc->now_us = now_us();
	batch_add(app_get()->pg, &confirms, &cc->item);
}

/* ---- Drain / Undrain ----------------------------------------------------------------------------------- */

struct drain_ctx {
	struct rpc_call *call;
	uint64_t node_id, op;
	bool undrain;
};

static void drain_cb(enum pg_status st, PGresult *res, const char *ss, const char *err, void *arg)
{
	struct drain_ctx *dc = arg;
	if (st != PG_OK) {
		reply_pg_error(dc->call, st, ss, err);
	} else if (PQntuples(res) != 1) {
		rpc_error(dc->call, RPC_NOT_FOUND, "nodeId: node %" PRIu64 " not found",
		          dc->node_id);
	} else if (dc->undrain && col_i64(res, 0, 0) > 0) {
		rpc_error(dc->call, RPC_FAILED_PRECONDITION,
		          "nodeId: node %" PRIu64 " is retiring; it takes no new work again",
		          dc->node_id);
	} else {
		schedloop_node_changed(app_get(), dc->node_id);
		load_node_and_reply(dc->call, dc->node_id, dc->op, false);
	}
	free(dc);
}

static void set_drain(struct rpc_call *call, uint64_t node_id, bool drain, const char *reason,
                      bool stop_jobs, uint32_t stop_grace_ms)
{
	if (!node_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "nodeId: required");
		return;
	}
	if (strlen(reason) > 512) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "reason: at most 512 bytes");
		return;
	}
	struct drain_ctx *dc = malloc(sizeof *dc);
	if (!dc) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	dc->call = call;
	dc->node_id = node_id;
	dc->op = scope_operator(call);
	dc->undrain = !drain;
	char why[600];
	snprintf(why, sizeof why, "%s%s%s", drain ? "drained" : "undrained", *reason ? ": " : "",
	         reason);
	struct numbuf n, o, now, grace;
	int64_t grace_us = stop_grace_ms ? (int64_t)stop_grace_ms * 1000 : 30000000;
	const char *params[] = { fmt_u64(&n, node_id), fmt_u64(&o, dc->op), fmt_i64(&now, now_us()),
		                 why, fmt_i64(&grace, grace_us) };
	/* draining is idempotent; undraining only undoes a drain. A retiring
	 * node is left as it is: it drains already, and only ends retired. */
	const char *sql =
	    drain ? "WITH cur AS (SELECT retired_at_us FROM nodes WHERE id = $1::bigint"
	            "   AND ($2::bigint = 0 OR operator_id = $2::bigint) AND state <> 6),"
	            " up AS (UPDATE nodes SET state = CASE WHEN state IN (1, 2, 3) THEN 3"
	            " ELSE state END, state_reason = $4, state_changed_at_us = $3::bigint"
	            " FROM cur WHERE id = $1::bigint AND cur.retired_at_us = 0 RETURNING id)"
	            " SELECT cur.retired_at_us FROM cur"
	          : "WITH cur AS (SELECT retired_at_us FROM nodes WHERE id = $1::bigint"
	            "   AND ($2::bigint = 0 OR operator_id = $2::bigint) AND state <> 6),"
	            " up AS (UPDATE nodes SET state = CASE WHEN state = 3 THEN"
	            " (CASE WHEN last_heartbeat_us > 0 THEN 2 ELSE 1 END) ELSE state END,"
	            " state_reason = $4, state_changed_at_us = $3::bigint"
	            " FROM cur WHERE id = $1::bigint AND cur.retired_at_us = 0 RETURNING id)"
	            " SELECT cur.retired_at_us FROM cur";
	/* stopping the jobs too: each live lease is told to stop as an
	 * interruption (stop kind 6), once (a retiring node keeps its reason) */
	const char *stop_sql =
	    "WITH d AS (UPDATE nodes SET state = CASE WHEN state IN (1, 2, 3) THEN 3"
	    " ELSE state END, state_reason = CASE WHEN retired_at_us > 0 THEN state_reason"
	    " ELSE $4 END, state_changed_at_us = $3::bigint"
	    " WHERE id = $1::bigint AND ($2::bigint = 0 OR operator_id = $2::bigint)"
	    " AND state <> 6 RETURNING id),"
	    " s AS (UPDATE leases l SET state = 4, stop_kind = 6,"
	    " stop_deadline_us = $3::bigint + $5::bigint, stop_reason = $4"
	    " FROM d WHERE l.node_id = d.id AND l.state IN (1, 2, 3))"
	    " SELECT id FROM d";
	if (drain && stop_jobs) {
		sql = stop_sql;
	}
	if (pg_exec(app_get()->pg, NULL, sql, drain && stop_jobs ? 5 : 4, params, drain_cb, dc)) {
		free(dc);
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
	}
}

void nodes_drain(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__DrainNodeRequest *req = (const Gpumatch__V1__DrainNodeRequest *)msg;
	if (req->stop_grace_ms > 3600000) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "stopGraceMs: at most 3600000, got %u",
		          req->stop_grace_ms);
		return;
	}
	set_drain(call, req->node_id, true, req->reason, req->stop_jobs, req->stop_grace_ms);
}

void nodes_undrain(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__UndrainNodeRequest *req = (const Gpumatch__V1__UndrainNodeRequest *)msg;
	set_drain(call, req->node_id, false, "", false, 0);
}

/* ---- RetireNode -------------------------------------------------------------------------------------- */

static void retire_cb(enum pg_status st, PGresult *res, const char *ss, const char *err, void *arg)
{
	struct drain_ctx *dc = arg;
	/* columns: the state before, whether this call retired it, the
	 * state after */
	if (st != PG_OK) {
		reply_pg_error(dc->call, st, ss, err);
	} else if (PQntuples(res) != 1) {
		rpc_error(dc->call, RPC_NOT_FOUND, "nodeId: node %" PRIu64 " not found",
		          dc->node_id);
	} else {
		if (!strcmp(PQgetvalue(res, 0, 1), "t")) {
			log_info("node retiring node=%" PRIu64 " state=%s by=%" PRIu64, dc->node_id,
			         col_i64(res, 0, 2) == 6 ? "disabled" : "draining",
			         rpc_principal(dc->call)->token_id);
			schedloop_node_changed(app_get(), dc->node_id);
		}
		load_node_and_reply(dc->call, dc->node_id, dc->op, false);
	}
	free(dc);
}

/* Retiring: no new work from now on (DRAINING), and DISABLED at once when
 * no lease is live there, else when the janitor sees the last one end
 * (schedloop.c). DISABLED lets the GPUs' uuids go (gm_node_release_gpus).
 * Asking again, or for a DISABLED node, changes nothing. */
void nodes_retire(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__RetireNodeRequest *req = (const Gpumatch__V1__RetireNodeRequest *)msg;
	if (!req->node_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "nodeId: required");
		return;
	}
	if (strlen(req->reason) > 512) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "reason: at most 512 bytes");
		return;
	}
	struct drain_ctx *dc = malloc(sizeof *dc);
	if (!dc) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	dc->call = call;
	dc->node_id = req->node_id;
	dc->op = scope_operator(call);
	dc->undrain = false;
	char why[600];
	snprintf(why, sizeof why, "retired%s%s", *req->reason ? ": " : "", req->reason);
	struct numbuf n, o, now;
	const char *params[] = { fmt_u64(&n, req->node_id), fmt_u64(&o, dc->op),
		                 fmt_i64(&now, now_us()), why };
	if (pg_exec(app_get()->pg, NULL,
	            "WITH cur AS (SELECT state, retired_at_us FROM nodes WHERE id = $1::bigint"
	            "   AND ($2::bigint = 0 OR operator_id = $2::bigint) FOR UPDATE),"
	            " live AS (SELECT EXISTS (SELECT 1 FROM leases WHERE node_id = $1::bigint"
	            "   AND state BETWEEN 1 AND 4) AS any),"
	            " up AS (UPDATE nodes n SET retired_at_us = $3::bigint,"
	            "   state = CASE WHEN live.any THEN (CASE WHEN n.state = 5 THEN 5 ELSE 3 END)"
	            "     ELSE 6 END,"
	            "   state_reason = $4, state_changed_at_us = $3::bigint"
	            "   FROM cur, live WHERE n.id = $1::bigint AND cur.retired_at_us = 0"
	            "   AND cur.state <> 6 RETURNING n.state)"
	            " SELECT cur.state, up.state IS NOT NULL, coalesce(up.state, cur.state)"
	            " FROM cur LEFT JOIN up ON true",
	            4, params, retire_cb, dc)) {
		free(dc);
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
	}
}

/* ---- lifecycle ------------------------------------------------------------------------------------------ */

int nodes_start(struct app *a, char *err, size_t err_len)
{
	memset(&W, 0, sizeof W);
	W.poll_ev = event_new(a->base, -1, EV_PERSIST, poll_cb, NULL);
	struct timeval tv = { 0, 500000 };
	if (!W.poll_ev || event_add(W.poll_ev, &tv)) {
		snprintf(err, err_len, "cannot create the long-poll timer");
		return -1;
	}
	return 0;
}

void nodes_drain_waiters(struct app *a)
{
	(void)a;
	W.draining = true;
	for (struct waiter *w = W.head, *next; w; w = next) {
		next = w->next;
		if (!w->querying && !w->aborted)
			try_claim(w);
	}
}

void nodes_stop(struct app *a)
{
	(void)a;
	if (W.poll_ev)
		event_free(W.poll_ev);
	W.poll_ev = NULL;
	while (W.head) {
		struct waiter *w = W.head;
		waiter_unlink(w);
		if (w->querying)
			w->aborted = true; /* its claim batch settles when the pool closes */
		else
			free(w);
	}
}

bool nodes_idle(struct app *a)
{
	(void)a;
	return batch_idle(&heartbeats) && batch_idle(&claims) && batch_idle(&confirms) &&
	       batch_idle(&reports);
}

int64_t nodes_backlog_since_mono(struct app *a)
{
	(void)a;
	const struct batch_kind *kinds[] = { &heartbeats, &confirms, &reports };
	int64_t oldest = 0;
	for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
		int64_t t = batch_oldest_mono(kinds[i]);
		if (t && (!oldest || t < oldest))
			oldest = t;
	}
	return oldest;
}

void nodes_metrics(struct app *a, struct evbuffer *b)
{
	(void)a;
	static const struct batch_kind *const kinds[] = { &heartbeats, &claims, &confirms, &reports,
		                                          NULL };
	batch_metrics(kinds, b);
}
