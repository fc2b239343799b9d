/* ledger.h — the money side of gpumatchd (ledger.c): admission of submits
 * against tenants' available balances, the leader's settle sweep, the
 * ledger and report RPCs, and what the scheduling loop tells the ledger.
 * The ledger's rules live in SQL (migrations/0003_ledger.sql). */
#ifndef GPUMATCH_LEDGER_H
#define GPUMATCH_LEDGER_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/buffer.h>

#include "app.h"
#include "rpc.h"

/* RPC handlers (routes in handlers.c). */
void ledger_top_up(struct rpc_call *call, const ProtobufCMessage *req);
void ledger_payout(struct rpc_call *call, const ProtobufCMessage *req);
void ledger_audit(struct rpc_call *call, const ProtobufCMessage *req);
void ledger_list_transfers(struct rpc_call *call, const ProtobufCMessage *req);
void ledger_usage_report(struct rpc_call *call, const ProtobufCMessage *req);
void ledger_revenue_report(struct rpc_call *call, const ProtobufCMessage *req);
/* The tenant whose spend a GetSpend/GetSpendSeries call may read: a tenant
 * token's own (another tenant_id is permission_denied), or the tenant_id an
 * admin names (required). Returns 0 after answering the call with the error. */
uint64_t ledger_spend_tenant(struct rpc_call *call, uint64_t tenant_id);
void ledger_get_spend(struct rpc_call *call, const ProtobufCMessage *req);
void ledger_get_earnings(struct rpc_call *call, const ProtobufCMessage *req);

/* The worst case of a job: max price (or, with no cap, the dearest node's
 * price) x GPUs x max duration, rounded up to a micro-unit. */
int64_t ledger_worst_case_micros(int64_t max_price_micros, uint32_t gpus, int64_t max_duration_us);

/* Admission of a submit: when tenant_id's available balance (balance -
 * holds + credit limit, cached and refreshed every second) covers the job's
 * worst case, go(arg) runs, now or after one Postgres read for a tenant not
 * cached yet; otherwise call is answered failed_precondition (or
 * unavailable) and drop(arg) runs. Exactly one of go/drop runs. */
void ledger_admit(struct rpc_call *call, uint64_t tenant_id, int64_t max_price_micros,
                  uint32_t gpus, int64_t max_duration_us, void (*go)(void *arg),
                  void (*drop)(void *arg), void *arg);

/* The leader's active policy's platform fee, locked into each lease it
 * places (gm_place's last argument). */
void ledger_set_fee_ppm(uint32_t ppm);
uint32_t ledger_fee_ppm(void);

int ledger_start(struct app *a, char *err, size_t err_len);
void ledger_stop(struct app *a);
bool ledger_idle(struct app *a);
void ledger_metrics(struct app *a, struct evbuffer *b);

#endif
