/* service.h — the RPC handlers of each service file and their lifecycle
 * hooks, for handlers.c's table. */
#ifndef GPUMATCH_SERVICE_H
#define GPUMATCH_SERVICE_H

#include "gpumatch/v1/job.pb-c.h"
#include "handlers.h"
#include "sched.h"

/* jobs.c */
void jobs_submit(struct rpc_call *call, const ProtobufCMessage *req);
void jobs_get(struct rpc_call *call, const ProtobufCMessage *req);
void jobs_list(struct rpc_call *call, const ProtobufCMessage *req);
void jobs_cancel(struct rpc_call *call, const ProtobufCMessage *req);
void jobs_explain(struct rpc_call *call, const ProtobufCMessage *req);
int jobs_start(struct app *a, char *err, size_t err_len);
void jobs_stop(struct app *a);
bool jobs_idle(struct app *a);
void jobs_metrics(struct app *a, struct evbuffer *b);

/* nodes.c */
void nodes_register(struct rpc_call *call, const ProtobufCMessage *req);
void nodes_get(struct rpc_call *call, const ProtobufCMessage *req);
void nodes_list(struct rpc_call *call, const ProtobufCMessage *req);
void nodes_heartbeat(struct rpc_call *call, const ProtobufCMessage *req);
void nodes_acquire_lease(struct rpc_call *call, const ProtobufCMessage *req);
void nodes_report_lease(struct rpc_call *call, const ProtobufCMessage *req);
void nodes_confirm_lease(struct rpc_call *call, const ProtobufCMessage *req);
void nodes_drain(struct rpc_call *call, const ProtobufCMessage *req);
void nodes_undrain(struct rpc_call *call, const ProtobufCMessage *req);
void nodes_retire(struct rpc_call *call, const ProtobufCMessage *req);
int nodes_start(struct app *a, char *err, size_t err_len);
void nodes_stop(struct app *a);
bool nodes_idle(struct app *a); /* no batched node call queued or in flight */
/* When the oldest heartbeat, confirmation or report still waiting to be
 * written arrived (monotonic µs), 0 when none waits: Postgres has not
 * heard the nodes since then, so no deadline may count that time. */
int64_t nodes_backlog_since_mono(struct app *a);
void nodes_metrics(struct app *a, struct evbuffer *b);
void nodes_drain_waiters(struct app *a);
/* "" or "sha256:" and 64 lowercase hex digits. */
bool nodes_valid_digest(const char *d);
/* Answers call with node node_id as GetNode shows it (any operator's), in
 * the response message of the call's method: GetNode, RegisterNode,
 * DrainNode, UndrainNode, CordonNode or UncordonNode; not_found when there
 * is no such node. The call must not be answered otherwise. */
void nodes_reply_node(struct rpc_call *call, uint64_t node_id);

/* logs.c: tenants' job output */
void logs_append(struct rpc_call *call, const ProtobufCMessage *req);
void logs_get(struct rpc_call *call, const ProtobufCMessage *req);
int logs_start(struct app *a, char *err, size_t err_len);
void logs_drain(struct app *a); /* followers answer at their next look */
void logs_stop(struct app *a);
void logs_metrics(struct app *a, struct evbuffer *b);

/* jobspec.c: the container part of a job spec, checked at submit */
/* Checks image, env names, limits and volumes against the server's config;
 * 0, or -1 with field and msg set (nothing else changes). */
int jobspec_check(const Gpumatch__V1__JobSpec *s, const struct cfg *c, char *field,
                  size_t field_len, char *msg, size_t msg_len);

/* probe.c: the probe challenge (docs/probe.md) */
void probe_request_challenge(struct rpc_call *call, const ProtobufCMessage *req);
void probe_submit(struct rpc_call *call, const ProtobufCMessage *req);
/* Loads the expected-peak table named by the config; -1 with err. */
int probe_start(struct app *a, char *err, size_t err_len);
void probe_stop(struct app *a);
/* SIGHUP: re-reads the peak files; keeps the old table if they fail. */
void probe_reload(struct app *a);
bool probe_idle(struct app *a); /* no verification running off the loop */
void probe_metrics(struct app *a, struct evbuffer *b);

/* admin.c */
void admin_create_tenant(struct rpc_call *call, const ProtobufCMessage *req);
void admin_get_tenant(struct rpc_call *call, const ProtobufCMessage *req);
void admin_list_tenants(struct rpc_call *call, const ProtobufCMessage *req);
void admin_update_tenant(struct rpc_call *call, const ProtobufCMessage *req);
void admin_disable_tenant(struct rpc_call *call, const ProtobufCMessage *req);
void admin_enable_tenant(struct rpc_call *call, const ProtobufCMessage *req);
void admin_create_operator(struct rpc_call *call, const ProtobufCMessage *req);
void admin_get_operator(struct rpc_call *call, const ProtobufCMessage *req);
void admin_list_operators(struct rpc_call *call, const ProtobufCMessage *req);
void admin_update_operator(struct rpc_call *call, const ProtobufCMessage *req);
void admin_disable_operator(struct rpc_call *call, const ProtobufCMessage *req);
void admin_enable_operator(struct rpc_call *call, const ProtobufCMessage *req);
void admin_cordon_node(struct rpc_call *call, const ProtobufCMessage *req);
void admin_uncordon_node(struct rpc_call *call, const ProtobufCMessage *req);
void admin_create_token(struct rpc_call *call, const ProtobufCMessage *req);
void admin_list_tokens(struct rpc_call *call, const ProtobufCMessage *req);
void admin_revoke_token(struct rpc_call *call, const ProtobufCMessage *req);
void admin_get_policy(struct rpc_call *call, const ProtobufCMessage *req);
void admin_set_policy(struct rpc_call *call, const ProtobufCMessage *req);
void admin_list_policies(struct rpc_call *call, const ProtobufCMessage *req);
void admin_list_policy_audit(struct rpc_call *call, const ProtobufCMessage *req);

/* speeds.c */
void admin_list_learned_speeds(struct rpc_call *call, const ProtobufCMessage *req);

/* simulate.c */
void simulate_policy(struct rpc_call *call, const ProtobufCMessage *req);
void simulate_export_trace(struct rpc_call *call, const ProtobufCMessage *req);

/* schedloop.c: the leader's scheduling loop. The notifications below keep
 * the leader's in-memory cluster current without a rebuild; on other
 * replicas they do nothing (the leader learns from Postgres/Redis). */
/* A submitted job was committed; js is the spec as validated at submit,
 * with its id and submit time set. */
void schedloop_job_queued(struct app *a, const struct sched_job_spec *js);
void schedloop_job_cancelled(struct app *a, uint64_t job_id);
/* The job's leases all ended; requeued or finished. */
void schedloop_job_ended(struct app *a, uint64_t job_id, bool requeued);
/* A tenant's fair-share weight may have changed: the leader re-reads it. */
void schedloop_tenant_changed(struct app *a, uint64_t tenant_id);
/* Node facts or state changed in Postgres: the leader re-reads it. */
void schedloop_node_changed(struct app *a, uint64_t node_id);
bool schedloop_is_leader(struct app *a);
/* Row helpers the leader's load and simulate.c share: apply one Postgres row
 * to cluster c. A job row has id, tenant, spec_pb and submitted_at_us at
 * the given columns (returns sched_job_add's result, -1 if unreadable); a
 * node row has SCHEDLOOP_NODE_COLS. */
#define SCHEDLOOP_NODE_COLS                                                               \
	"id, state, verification_status, price_micros, region, facts_pb, unhealthy_gpus," \
	" (gm_node_reliability(id)).score_ppm"
int schedloop_add_job_row(struct sched_cluster *c, const PGresult *r, int row, int c_id,
                          int c_tenant, int c_spec, int c_submit);
void schedloop_upsert_node_row(struct sched_cluster *c, const PGresult *r, int row);

struct explain_out {
	Gpumatch__V1__Explanation msg;
	Gpumatch__V1__ExplanationCount counts[SCHED_R_COUNT];
	Gpumatch__V1__ExplanationCount *ptrs[SCHED_R_COUNT];
	Gpumatch__V1__Reservation resv;
	char summary[1024];
};
/* 0 with out filled; -ENOENT when the leader does not hold the job as
 * pending; -EAGAIN when this replica is not the (loaded) leader. */
int schedloop_explain(struct app *a, uint64_t job_id, struct explain_out *out);

/* A replica that is not the leader asks the leader for a job's explanation
 * through Redis: a request on the change stream, the answer under a
 * one-off key that this replica polls. cb runs exactly once (unless the ask
 * is cancelled first): rc 0 with ex (borrowed for the call), -ENOENT when
 * the leader does not hold the job as pending, -ETIMEDOUT when no answer
 * came within a few seconds (no leader, or Redis unreachable). Returns the
 * ask, or NULL when it cannot be sent (cb never runs). */
typedef void (*schedloop_explain_cb)(const Gpumatch__V1__Explanation *ex, int rc, void *arg);
struct explain_ask;
struct explain_ask *schedloop_explain_ask(struct app *a, uint64_t job_id, schedloop_explain_cb cb,
                                          void *arg);
/* Forgets an ask whose caller went away; its cb never runs. */
void schedloop_explain_ask_cancel(struct explain_ask *q);

/* Moves outbox rows to Redis soon (any replica). */
void outbox_kick(struct app *a);
int schedloop_start(struct app *a, char *err, size_t err_len);
void schedloop_stop(struct app *a);
bool schedloop_idle(struct app *a);
void schedloop_metrics(struct app *a, struct evbuffer *b);
/* A new policy version was stored: the leader loads it before its next
 * cycle. */
void schedloop_policy_changed(struct app *a);

#endif
