/* logship.h — ships one lease's output file to gpumatchd with
 * NodeService.AppendLeaseLogs: chunks at byte offsets (idempotent on the
 * server), one in flight, retried with backoff, resumable from a saved
 * offset after an agent restart. */
#ifndef GPUMATCH_CLI_LOGSHIP_H
#define GPUMATCH_CLI_LOGSHIP_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>

struct cl_conn;
struct logship;

/* Starts shipping path (the lease's output; it may not exist yet) from
 * offset. conn, token and *node_id (0 = not registered yet: wait) are
 * borrowed for the shipper's life. done(arg) is called once, when the end
 * of the output has been acknowledged after ls_finish, or when the server
 * refuses the lease for good. NULL when out of memory. */
struct logship *ls_new(struct event_base *base, struct cl_conn *conn, const char *token,
                       const uint64_t *node_id, uint64_t lease_id, uint64_t fencing,
                       const char *path, int64_t offset, void (*done)(void *arg), void *arg);

/* The process ended: ship what is left, then the end-of-output mark. */
void ls_finish(struct logship *ls);

bool ls_done(const struct logship *ls);
int64_t ls_offset(const struct logship *ls); /* bytes the server holds */
/* Microseconds from the start of shipping to the end-of-output's
 * acknowledgement (0 until then): what the log line of a finished lease
 * says, and what bench/containers reads. */
int64_t ls_took_us(const struct logship *ls);

/* Stops shipping (an in-flight call's answer is dropped). NULL is fine. */
void ls_free(struct logship *ls);

/* Frees shippers whose call was still in flight when freed; only after
 * the connection they used is gone (its calls never answer then). */
void ls_reap_all(void);

#endif
