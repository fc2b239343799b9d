/* series.h — per-minute rollups (the leader refreshes them), the series
 * RPCs that read them, and the live fleet summary (series.c). */
#ifndef GPUMATCH_SERIES_H
#define GPUMATCH_SERIES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

#include "app.h"
#include "rpc.h"

/* AdminService.GetFleetSeries, GetFleetSummary; NodeService.GetNodeSeries;
 * JobService.GetSpendSeries */
void series_fleet(struct rpc_call *call, const ProtobufCMessage *req);
void series_fleet_summary(struct rpc_call *call, const ProtobufCMessage *req);
void series_node(struct rpc_call *call, const ProtobufCMessage *req);
void series_spend(struct rpc_call *call, const ProtobufCMessage *req);
/* IdentityService.GetIdentity: the caller's role and owner (the console's sign-in) */
void series_identity(struct rpc_call *call, const ProtobufCMessage *req);

int series_start(struct app *a, char *err, size_t err_len);
void series_stop(struct app *a);
bool series_idle(struct app *a);
void series_metrics(struct app *a, struct evbuffer *b);
/* An AuditLedger run found count violations (exported as a gauge). */
void series_note_audit(uint32_t count, int64_t at_us);

#endif
