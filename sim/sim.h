/* sim.h — trace replay in virtual time: drives the unchanged scheduling
 * library (sched.h) with a trace's arrivals, runs each placed job for its
 * reference duration scaled by the speed of the GPUs it got, and measures
 * the outcome. No clock, no sleeping, no I/O: the same inputs and seed give
 * the same result. gpumatch-sim and gpumatchd's SimulatePolicy share it. */
#ifndef GPUMATCH_SIM_H
#define GPUMATCH_SIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sched.h"
#include "trace.h"

/* Time limits overestimate run times by a factor log-uniform in [1, 10]
 * (median 3.2: users' limits are several times their jobs' run times in
 * the Slurm and PBS logs studied by Tsafrir et al., 2005). */
#define SIM_LIMIT_OVERESTIMATE_DEFAULT 10.0

struct sim_config {
	const struct trace_fleet *fleet;
	const struct trace_jobs *jobs;
	const struct trace_tputs *tputs; /* NULL: every job runs at TFLOPS speed */
	struct sched_policy policy;
	uint64_t seed;                  /* job types and tenants the trace lacks */
	double arrival_scale;           /* submit times (from the first) x this; > 0 */
	int64_t horizon_us;             /* stop this long after the first arrival; 0 = run
	                              until nothing more can happen */
	int64_t cycle_interval_us;      /* least virtual time between cycles, >= 0 */
	int64_t checkpoint_interval_us; /* a running job checkpoints every this much
	                                   run time; a preempted one loses the work
	                                   since its last checkpoint. 0 = perfect
	                                   checkpointing (nothing lost); >= 0 */
	uint32_t tenants;               /* drawn for jobs without one, >= 1 */
	enum sched_precision precision; /* what the jobs compute in */
	bool check;                     /* sched_cluster_check after every cycle */
	bool declare_profiles;          /* jobs declare their throughput profile */
	bool interpolate;               /* models without a throughput column: per job
	                              type, interpolated by FP32 TFLOPS between the
	                              table's GPU kinds (else TFLOPS ratio only) */
	/* The per-job-type roofline speed model (data/speed-model.csv): speeds
	 * on models the throughput table does not measure; measured columns
	 * win. NULL: interpolation as above. */
	const struct speed_model *model;
	/* Users' time limits: a job's max duration is its run time on the
	 * slowest model x a factor drawn log-uniformly in [1, this] (seeded,
	 * its own stream). 1 = the oracle: limits equal run times. >= 1. */
	double limit_overestimate;
};

/* Fills c with the defaults; fleet, jobs and tputs stay NULL. */
void sim_config_default(struct sim_config *c);

/* One job's outcome; first_start_us / end_us are meaningful when started /
 * finished are set. */
struct sim_job_out {
	bool started;
	bool finished;
	uint64_t id;
	uint64_t tenant;
	int32_t type; /* index into tputs->types, -1 = none */
	uint32_t gpus;
	int64_t submit_us;
	int64_t first_start_us;
	int64_t end_us;
	uint32_t preemptions;
	uint64_t node_id; /* first node of the last placement */
	int64_t ref_duration_us;
};

struct sim_result {
	uint32_t jobs;
	uint32_t completed;
	uint32_t unfinished;                    /* pending or running at the end */
	uint32_t unschedulable;                 /* given up by the policy */
	double avg_jct_s, p50_jct_s, p99_jct_s; /* completed jobs */
	double avg_wait_s;                      /* started jobs: first start - submit */
	double makespan_s;                      /* first arrival to last completion */
	double gpu_utilization;                 /* busy GPU-s / GPU-s available, from the
	                                    first to the last arrival (while the
	                                    trace drives load) */
	double gpu_utilization_makespan;        /* the same over the whole makespan */
	double jain_fairness;                   /* over tenants' mean ref/JCT */
	int64_t cost_micros;                    /* price x GPU-time of every run */
	uint32_t preemptions;
	double lost_gpu_s;             /* GPU-seconds of work preemption threw away
	                                     (run since the last checkpoint) */
	double gpu_utilization_useful; /* gpu_utilization less the lost work */
	/* work kept (not thrown away by preemption) in the same window, in
	 * reference-GPU-seconds, per GPU-second of the fleet: 1 = every GPU
	 * busy doing useful work at the reference GPU's speed */
	double effective_throughput;
	double effective_throughput_makespan; /* the same over the makespan */
	uint64_t cycles;
	uint64_t overcommits; /* GPUs given while busy: must be 0 */
	uint64_t check_failures;
	double sim_seconds;          /* virtual time simulated */
	struct sim_job_out *per_job; /* jobs entries in trace order; caller frees */
};

/* Runs the replay. Returns 0 with *out filled (out->per_job malloc'd), or
 * -1 with err naming what was wrong (a field of the policy, a job the
 * library rejected, out of memory). */
int sim_run(const struct sim_config *cfg, struct sim_result *out, char *err, size_t err_len);

void sim_result_free(struct sim_result *r);

/* The result as one line of JSON (no newline) into buf; returns the length
 * needed, like snprintf. wall_s < 0 leaves out the wall-clock fields. */
size_t sim_result_json(const struct sim_result *r, double wall_s, double cpu_s, char *buf,
                       size_t len);

#endif
