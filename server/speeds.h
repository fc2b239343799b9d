/* speeds.h — throughput profiles learned per job type from succeeded
 * leases (speeds.c). */
#ifndef GPUMATCH_SPEEDS_H
#define GPUMATCH_SPEEDS_H

#include <stdbool.h>
#include <stdint.h>

#include "convert.h"
#include "handlers.h"
#include "sched.h"

typedef void (*speeds_done_fn)(void *arg, bool ok);

/* Reads learned_speeds into memory (replacing the table when the query
 * works; a failure keeps the previous one and is logged). done (may be
 * NULL) runs once when it is settled, never before this returns unless the
 * pool is shutting down (then at once with ok false). */
void speeds_reload(struct app *a, speeds_done_fn done, void *arg);
/* Drops the in-memory table (shutdown). */
void speeds_clear(void);

/* Reads the speed model (before the event loop runs): job types with no
 * learned profile get the model's. 0, or -1 with err. */
int speeds_model_load(const char *rows_path, const char *gpus_path, char *err, size_t err_len);

/* A job of job_type that declares no profile (js->nspeeds == 0) gets the
 * learned one: a model entry per GPU model learned for the type, speeds
 * relative to its fastest. Strings go into st, which must outlive js.
 * Returns the entries set (0: declared, untyped or nothing learned). */
uint32_t speeds_apply(const char *job_type, struct sched_job_spec *js, struct conv_strings *st);

/* Lease lease_id has just succeeded: when its job has a job_type and an
 * amount of work (work_done > 0, else JobSpec.work_units), records
 * work / wall time / the job's GPUs for the lease's GPU model, then tells
 * the scheduler (schedloop_speeds_changed). Best effort: failures are
 * logged, nothing is answered. */
void speeds_learn(struct app *a, uint64_t lease_id, double work_done);

/* schedloop.c: reload the table here and on the leader. */
void schedloop_speeds_changed(struct app *a);

#endif
