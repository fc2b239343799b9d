/* sched.h — gpumatch's pure scheduling library: the cluster model, the
 * capability index, the policy and one scheduling cycle.
 *
 * No I/O, no clock (time comes in as now_us), no globals, no logging. Memory
 * comes from an injectable allocator. Every function that can fail returns 0
 * or a negative errno value (-EINVAL, -ENOMEM, -ENOENT, -EEXIST, -EBUSY) and
 * leaves the cluster unchanged on failure. */
#ifndef GPUMATCH_SCHED_H
#define GPUMATCH_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SCHED_MAX_GPUS_PER_NODE 64  /* GPUs are addressed by a uint64_t mask */
#define SCHED_MAX_GANG_NODES    64  /* nodes in one multi-node gang */
#define SCHED_MAX_STRINGS       32  /* labels, taints, selectors, ... per list */
#define SCHED_MAX_STRING_BYTES  128 /* one label / region / model, NUL excluded */
#define SCHED_PRIO_CLASSES      5   /* priority classes 0 (lowest) .. 4 */

enum sched_precision {
	SCHED_PREC_FP32 = 0,
	SCHED_PREC_TF32,
	SCHED_PREC_FP16,
	SCHED_PREC_BF16,
	SCHED_PREC_FP8,
	SCHED_PREC_COUNT
};

enum sched_node_state {
	SCHED_NODE_READY = 0, /* takes new work */
	SCHED_NODE_DRAINING,  /* keeps running work, takes none */
	SCHED_NODE_CORDONED,  /* admin hold: takes none */
	SCHED_NODE_LOST,      /* missed heartbeats */
	SCHED_NODE_STATE_COUNT
};

enum sched_job_kind {
	SCHED_JOB_TRAINING = 0,
	SCHED_JOB_INFERENCE,
	SCHED_JOB_BATCH,
	SCHED_JOB_KIND_COUNT
};

enum sched_job_state {
	SCHED_JOB_PENDING = 1,
	SCHED_JOB_RUNNING,    /* has a placement (lease) */
	SCHED_JOB_PREEMPTING, /* running, told to stop; still holds its GPUs */
};

enum sched_fit_mode {
	SCHED_FIT_PACK = 0, /* prefer the node left with fewest free GPUs */
	SCHED_FIT_SPREAD,   /* prefer the node left with most free GPUs */
};

enum sched_fairness {
	SCHED_FAIR_NONE = 0, /* priority ignores past usage */
	SCHED_FAIR_SHARE,    /* Slurm-style 2^(-usage/shares), decayed usage */
};

/* Why a node cannot host a job, in the order the filters are applied: each
 * node is counted under the first filter that rejects it. */
enum sched_reason {
	SCHED_R_NODE_STATE = 0, /* draining, cordoned or lost */
	SCHED_R_UNVERIFIED,     /* policy allows verified nodes only */
	SCHED_R_REGION,
	SCHED_R_MEMORY, /* per-GPU memory below the job's minimum */
	SCHED_R_COMPUTE_CAP,
	SCHED_R_PRECISION,
	SCHED_R_TFLOPS,       /* throughput in the job's precision too low */
	SCHED_R_TAINT,        /* a taint the job does not tolerate */
	SCHED_R_PRICE,        /* price per GPU-hour above the job's max */
	SCHED_R_LABEL,        /* a label selector not matched */
	SCHED_R_GPU_COUNT,    /* fewer matching GPUs than the job needs, even idle */
	SCHED_R_FREE_GPUS,    /* too few free GPUs now */
	SCHED_R_INTERCONNECT, /* free GPUs, but not in one NVLink group */
	SCHED_R_RESERVED,     /* free GPUs are reserved for a higher-priority job */
	SCHED_R_COUNT
};

/* ---- allocator ---------------------------------------------------------- */

/* All memory the library uses comes from here. NULL means libc. The library
 * tracks the bytes it holds itself, so free needs no size. */
struct sched_alloc {
	void *(*alloc)(void *ctx, size_t bytes);
	void *(*realloc)(void *ctx, void *p, size_t bytes);
	void (*free)(void *ctx, void *p);
	void *ctx;
};

/* ---- errors ------------------------------------------------------------- */

/* Filled on -EINVAL (and on some -EBUSY/-ENOENT) to name what was wrong. */
struct sched_error {
	char field[64];    /* e.g. "gpus[3].memory_mib", "w_price" */
	char message[192]; /* e.g. "must be between 1 and 64, got 0" */
};

/* ---- facts the caller supplies ------------------------------------------ */

struct sched_gpu_spec {
	const char *model;              /* e.g. "H100-SXM5-80GB"; required */
	uint32_t memory_mib;            /* > 0 */
	uint16_t compute_cap;           /* major*10 + minor: 90 = 9.0; 30..150 */
	uint32_t precisions;            /* mask of 1u << enum sched_precision; != 0 */
	uint16_t nvlink_group;          /* 0 = no NVLink; same non-zero = one domain */
	float tflops[SCHED_PREC_COUNT]; /* figures used for matching: verified
	                                   when the node is verified, else claimed;
	                                   >= 0, 0 where the precision is absent */
};

struct sched_node_spec {
	uint64_t id;        /* caller's id, unique; != 0 */
	const char *region; /* required, e.g. "eu-west" */
	enum sched_node_state state;
	bool verified;                     /* throughput proved by the probe */
	int64_t price_micros;              /* per GPU-hour, > 0 */
	uint32_t reliability_ppm;          /* 0..1,000,000 (uptime x lease success) */
	uint32_t ngpus;                    /* 1..SCHED_MAX_GPUS_PER_NODE */
	const struct sched_gpu_spec *gpus; /* ngpus entries; index = GPU index */
	uint32_t nlabels;
	const char *const *labels; /* "key=value" (the '=' is required) */
	uint32_t ntaints;
	const char *const *taints; /* "key=value" or "key" (NoSchedule) */
};

/* One entry of a job's throughput profile: how fast the job runs on a GPU
 * model (or, with no model, on GPUs of one compute capability) relative to
 * its other entries. Only ratios matter; the scale is the caller's. */
struct sched_speed {
	const char *model;    /* GPU model, e.g. "V100-SXM2-16GB"; NULL or "" =
	                         match by compute_cap instead */
	uint16_t compute_cap; /* without model: GPUs of exactly this capability */
	float speed;          /* relative throughput, > 0 and < 1e9 */
};

struct sched_job_spec {
	uint64_t id;        /* caller's id, unique; != 0 */
	uint64_t tenant_id; /* != 0 */
	enum sched_job_kind kind;
	uint32_t gpus_per_node;   /* 1..64 */
	uint32_t node_count;      /* 1 = single-node gang; 2..64 = all nodes
	                                 in one region, all or nothing */
	uint32_t min_memory_mib;  /* per GPU; 0 = any */
	uint16_t min_compute_cap; /* 0 = any */
	enum sched_precision precision;
	float min_tflops_per_gpu; /* in precision; 0 = any */
	float min_tflops_total;   /* over all GPUs of the job; 0 = any */
	bool require_nvlink;      /* a node's GPUs for this job share one
	                                 NVLink group */
	uint32_t nregions;
	const char *const *regions;   /* allowed regions; none = any */
	const char *preferred_region; /* locality preference; NULL = none */
	uint32_t nselectors;
	const char *const *selectors; /* "key=value" labels the node must have */
	uint32_t ntolerations;
	const char *const *tolerations; /* "key=value" tolerates that taint,
	                                   "key" tolerates every value of key */
	int64_t max_price_micros;       /* per GPU-hour; 0 = no cap */
	int64_t max_duration_us;        /* > 0: the lease ends by then */
	uint32_t priority_class;        /* 0..SCHED_PRIO_CLASSES-1 */
	bool preemptible;
	int64_t submit_us; /* arrival; ties broken by order of add */
	/* Throughput profile (heterogeneity awareness), scored by
	 * policy w_speedup; none = verified TFLOPS in precision decide. A model
	 * entry wins over a compute-capability entry. At most SCHED_MAX_STRINGS. */
	uint32_t nspeeds;
	const struct sched_speed *speeds;
};

/* ---- policy ------------------------------------------------------------- */

struct sched_policy {
	/* Node scoring: each component is min-max normalized over the scored
	 * candidates to [0,1], then weighted. All weights in [0, 1000]. */
	double w_price;          /* cheaper is better */
	double w_perf_per_price; /* verified TFLOPS in the job's precision per price */
	double w_perf;           /* verified TFLOPS in the job's precision */
	double w_fit;            /* packing or spreading, see fit_mode */
	double w_reliability;
	double w_locality; /* node in the job's preferred region */
	enum sched_fit_mode fit_mode;
	uint32_t score_nodes; /* feasible nodes scored per job, 1..100000 */

	/* Job priority: weighted sum of factors in [0,1]. Weights in [0, 1e6]. */
	double w_prio_class; /* priority_class / (SCHED_PRIO_CLASSES-1) */
	double w_age;        /* waiting time / age_max_us, capped at 1 */
	double w_fairshare;  /* 2^(-usage share / tenant share) */
	int64_t age_max_us;  /* > 0 */
	enum sched_fairness fairness;
	int64_t fairshare_half_life_us; /* 1 s .. 3650 days: decay of past usage */

	bool allow_unverified;         /* unverified nodes may take jobs */
	bool backfill;                 /* blocked jobs reserve; lower jobs backfill */
	uint32_t reservations;         /* blocked jobs that get a reservation, 0..64 */
	uint32_t backfill_depth;       /* jobs tried after the first blocked one;
	                            0 = all */
	bool preemption;               /* blocked jobs may evict lower-class work */
	int64_t preemption_grace_us;   /* >= 0: victim's time to stop */
	int64_t infeasible_timeout_us; /* a job no node of the fleet could ever
	                                  host is given up after this; 0 = never */

	/* Heterogeneity awareness, weight in [0, 1000]: expected completion.
	 * A job's run time on a node is its work / its speed there, so the
	 * component is the job's speed on the candidate's GPU model (throughput
	 * profile; models it does not cover: verified TFLOPS in its precision,
	 * scaled to the profile) over its best speed among the candidates — the
	 * shortest run time scores w, one twice as long w / 2. Not min-max
	 * normalized: a job 5x faster on one GPU cares, one 5 % faster barely. */
	double w_speedup;
	/* Gavel's comparative advantage, in [0, 1]: the speed component is
	 * multiplied by (a / best a over the candidates)^this, where a = the
	 * job's speed on the GPU type relative to its best type, divided by the
	 * pending jobs' mean of that ratio on the type. A job gaining more from a
	 * type than the others do leans to it; one gaining less leaves it to
	 * them. It cannot cancel the job's own speed: when every job speeds up
	 * alike on a type, or one job is pending, a = 1 and the component is
	 * the job's own speed. 0 = own speed only. */
	double comparative_advantage;
	/* Price per unit of work, weight in [0, 1000], min-max normalized like
	 * the price components: price per GPU-hour / the job's speed there (as
	 * for w_speedup). What a tenant pays for the job, unlike w_price, which
	 * prefers cheap GPUs however slow. */
	double w_cost_per_work;

	/* Job priority: favour jobs that ask for fewer GPUs (Slurm's job size
	 * factor with PriorityFavorSmall), factor 1 / (GPUs of the job), weight
	 * in [0, 1e6]. Small jobs first shortens the average completion time
	 * when the fleet is oversubscribed; reservations (backfill) keep large
	 * jobs from starving. */
	double w_small_jobs;
	/* Job priority: favour jobs with a shorter max duration (their declared
	 * time limit), factor 1 / (1 + max_duration / 1 hour), weight in
	 * [0, 1e6]. Shortest-declared-first, as backfilling schedulers reward
	 * accurate time limits. */
	double w_short_jobs;

	/* Preemption for much shorter work (SRPT / Tiresias-like), independent
	 * of `preemption`: a blocked job may evict running preemptible jobs of
	 * its own or a lower class whose remaining lease time (deadline - now)
	 * is at least this factor times the blocked job's max duration, and
	 * that have run at least preempt_min_run_us since their last start.
	 * Victims are chosen to evict the fewest GPUs. 0 = off; else 1..1e6. */
	double preempt_shorter_factor;
	int64_t preempt_min_run_us; /* 0 .. 30 days: a victim's least run time
	                               since its last start (no thrashing) */

	/* Node scoring, weight in [0, 1000], min-max normalized like the
	 * others: fragmentation-aware packing. A node's free GPUs count as
	 * fragmented by the share of pending jobs that need more GPUs on one
	 * node than it has free; the component is how much the placement lowers
	 * that. Small jobs go to small nodes and to the leftovers of big ones,
	 * keeping whole nodes for the jobs that need them. */
	double w_frag;

	/* Waiting for a faster GPU (ski rental), in [0, 100]; 0 = off. A job
	 * with a throughput profile whose best candidate now is slower than its
	 * fastest GPU type in the fleet waits (is held, not blocked: no
	 * reservation, no preemption) until it has waited this factor times the
	 * time the slower GPU would add to its run:
	 *   extra = max_duration x s_min x (1 / s_here - 1 / s_max),
	 * reading the declared time limit as the run time on its slowest
	 * eligible type (s_min). After that it takes the slower GPU. With 1 the
	 * job never loses more than twice what the best choice in hindsight
	 * would have cost it (the ski-rental bound, on the declared limit). */
	double hold_for_faster;
};

/* Fills *p with the defaults (documented in docs/scheduler.md). */
void sched_policy_default(struct sched_policy *p);

/* Fills *p with the recommended policy: the shipped
 * examples/policies/default.json, which a fresh gpumatchd starts with
 * (docs/policy.md says how it was chosen). */
void sched_policy_recommended(struct sched_policy *p);

/* Returns 0 if every field is in range, else -EINVAL with err naming the
 * first bad field. err may be NULL. */
int sched_policy_validate(const struct sched_policy *p, struct sched_error *err);

/* ---- the cluster -------------------------------------------------------- */

struct sched_cluster;

/* Returns a new empty cluster with the default policy, or NULL when out of
 * memory. alloc is copied; NULL means libc. */
struct sched_cluster *sched_cluster_new(const struct sched_alloc *alloc);

/* Frees the cluster and everything in it. Accepts NULL. */
void sched_cluster_free(struct sched_cluster *c);

/* Validates and installs a policy; takes effect at the next cycle. */
int sched_set_policy(struct sched_cluster *c, const struct sched_policy *p,
                     struct sched_error *err);
const struct sched_policy *sched_get_policy(const struct sched_cluster *c);

/* Adds a node, or replaces the facts of an existing one (same id). Strings
 * are copied. While jobs run on the node, a replacement must keep their GPUs
 * and still satisfy those jobs (region, GPU type, throughput, taints,
 * labels), else -EBUSY with err naming the job. Rejects invalid specs with
 * -EINVAL. */
int sched_node_upsert(struct sched_cluster *c, const struct sched_node_spec *spec,
                      struct sched_error *err);

/* Changes a node's state. -ENOENT if unknown. */
int sched_node_set_state(struct sched_cluster *c, uint64_t node_id, enum sched_node_state state);

/* Removes a node. -EBUSY while jobs run on it (end their leases first). */
int sched_node_remove(struct sched_cluster *c, uint64_t node_id);

/* Sets a tenant's fair-share weight (default 1; 1..1e6). */
int sched_tenant_set_shares(struct sched_cluster *c, uint64_t tenant_id, uint32_t shares);

/* Restores a tenant's decayed usage (GPU-seconds as of at_us), e.g. after a
 * restart. */
int sched_tenant_set_usage(struct sched_cluster *c, uint64_t tenant_id, double usage_gpu_s,
                           int64_t at_us);

/* Returns the tenant's decayed usage in GPU-seconds at now_us (running work
 * included), or a negative value if unknown. */
double sched_tenant_usage(const struct sched_cluster *c, uint64_t tenant_id, int64_t now_us);

/* Check a spec without any cluster (e.g. at API admission): 0, or -EINVAL
 * with err naming the field, exactly as sched_job_add / sched_node_upsert
 * would. */
int sched_job_validate(const struct sched_job_spec *spec, struct sched_error *err);
int sched_node_validate(const struct sched_node_spec *spec, struct sched_error *err);

/* Adds a pending job. Strings are copied. -EEXIST on a duplicate id. */
int sched_job_add(struct sched_cluster *c, const struct sched_job_spec *spec,
                  struct sched_error *err);

/* Removes a job in any state; a running job's GPUs are freed and its usage
 * up to now_us is charged to its tenant. -ENOENT if unknown. */
int sched_job_cancel(struct sched_cluster *c, uint64_t job_id, int64_t now_us);

/* One node's share of a placement. */
struct sched_placement {
	uint64_t node_id;
	uint64_t gpu_mask; /* bit i = GPU index i on that node */
};

/* Starts a pending job on the given GPUs outside a cycle (restoring leases
 * after a restart). Every GPU must exist and be free, and each part must
 * satisfy the job's hard constraints except price/state/verification.
 * -EBUSY, -EINVAL with err, -ENOENT. */
int sched_lease_start(struct sched_cluster *c, uint64_t job_id, const struct sched_placement *pl,
                      uint32_t npl, int64_t start_us, struct sched_error *err);

/* Ends a running job's lease(s) at now_us: GPUs are freed and the usage is
 * charged to the tenant. requeue = true puts the job back in the queue with
 * its original submit time; false removes it. -ENOENT, -EINVAL if pending. */
int sched_lease_end(struct sched_cluster *c, uint64_t job_id, int64_t now_us, bool requeue);

/* ---- queries ------------------------------------------------------------ */

/* Returns the job's enum sched_job_state, or -ENOENT. */
int sched_job_state(const struct sched_cluster *c, uint64_t job_id);

/* Copies up to max parts of a running job's placement into out and returns
 * how many parts it has (may exceed max), or -ENOENT / -EINVAL if pending. */
int sched_job_placement(const struct sched_cluster *c, uint64_t job_id, struct sched_placement *out,
                        uint32_t max);

/* Free GPUs of a node, or -ENOENT. */
int sched_node_free_mask(const struct sched_cluster *c, uint64_t node_id, uint64_t *free_mask);

struct sched_stats {
	uint32_t nodes;
	uint32_t nodes_by_state[SCHED_NODE_STATE_COUNT];
	uint64_t gpus_total;
	uint64_t gpus_free; /* on ready nodes */
	uint32_t jobs_pending;
	uint32_t jobs_running; /* including preempting */
	uint32_t tenants;
	uint32_t classes; /* distinct requirement classes (autoclusters) */
	uint32_t pools;   /* index pools */
	uint32_t egroups; /* distinct eligibility keys among classes */
	size_t bytes;     /* memory the library holds */
};
void sched_get_stats(const struct sched_cluster *c, struct sched_stats *out);

/* ---- one cycle ---------------------------------------------------------- */

enum sched_action_kind {
	SCHED_ACT_START = 1,     /* job starts on node_id/gpu_mask; one action per
	                            node of a gang (gang_index of gang_size) */
	SCHED_ACT_PREEMPT,       /* stop job_id (all its parts) by deadline_us =
	                            min(now + grace, its own deadline), to make
	                            room for for_job_id */
	SCHED_ACT_UNSCHEDULABLE, /* job_id can never run on this fleet: removed */
};

struct sched_action {
	enum sched_action_kind kind;
	enum sched_reason reason; /* UNSCHEDULABLE: the filter that rules out
	                              the most nodes */
	uint32_t gang_index;
	uint32_t gang_size;
	uint64_t job_id;
	uint64_t node_id;    /* START */
	uint64_t gpu_mask;   /* START */
	uint64_t for_job_id; /* PREEMPT */
	int64_t deadline_us; /* START: start + max duration; PREEMPT: grace end */
};

/* Caller-owned array; the library appends with the cluster's allocator.
 * Start with {0}; release with sched_actions_free(). */
struct sched_actions {
	struct sched_action *items;
	size_t len;
	size_t cap;
};
void sched_actions_free(struct sched_cluster *c, struct sched_actions *a);

struct sched_cycle_stats {
	uint32_t considered; /* pending jobs looked at */
	uint32_t placed;
	uint32_t skipped_class; /* skipped: their class already failed */
	uint32_t blocked;       /* evaluated and left pending */
	uint32_t reserved;      /* reservations made */
	uint32_t preempted;     /* victims */
	uint32_t unschedulable;
	uint32_t nodes_visited; /* candidate nodes examined (cost measure) */
	uint32_t held;          /* left pending to wait for a faster GPU
	                           (hold_for_faster) */
	int64_t hold_until_us;  /* earliest time a held job stops waiting
	                           (0 = none held): the caller runs a cycle by
	                           then */
};

/* Runs one cycle at now_us: orders pending jobs by priority, places what
 * fits, reserves for the top blocked jobs, backfills, preempts when the
 * policy allows. The resulting placements are already applied to the
 * cluster (GPUs busy, jobs running) and appended to out (out->len grows; old
 * items stay). stats may be NULL. On -ENOMEM nothing changed. */
int sched_cycle(struct sched_cluster *c, int64_t now_us, struct sched_actions *out,
                struct sched_cycle_stats *stats);

/* ---- explanations ------------------------------------------------------- */

struct sched_explain {
	int state; /* enum sched_job_state */
	uint32_t total_nodes;
	uint32_t fit_nodes;            /* nodes that pass every filter right now */
	uint32_t count[SCHED_R_COUNT]; /* nodes ruled out, by first failing filter */
	uint32_t gang_nodes;           /* node_count of the job */
	uint32_t best_region_fit;      /* multi-node: most fitting nodes in one region */
	bool reserved;                 /* the job holds a reservation */
	int64_t reserved_start_us;     /* when the reservation expects it to start */
	bool fleet_feasible;           /* some node could host it if the fleet were idle */
};

/* Explains why job_id is pending, evaluated against the cluster as it is now
 * (including the last cycle's reservations). Costs O(nodes); meant for
 * ExplainJob, not the hot path. -ENOENT if unknown. */
int sched_job_explain(const struct sched_cluster *c, uint64_t job_id, struct sched_explain *out);

/* Short name of a reason, e.g. "too few free GPUs". */
const char *sched_reason_text(enum sched_reason r);

/* Writes "0/1213 nodes fit: 800 too few free GPUs, 300 memory below
 * minimum, ..." (reasons by count, largest first) into buf; returns the
 * length it needed, like snprintf. */
size_t sched_explain_format(const struct sched_explain *e, char *buf, size_t len);

/* ---- test support ------------------------------------------------------- */

/* Checks every internal invariant (index buckets agree with free masks, no
 * GPU held twice, counters agree). Returns 0, or -EINVAL with why filled. */
int sched_cluster_check(const struct sched_cluster *c, char *why, size_t why_len);

/* Compares the logical state of two clusters (nodes, GPUs free/used, jobs,
 * placements, tenants, policy). Returns true when equal; otherwise false
 * with the first difference in why. */
bool sched_cluster_equal(const struct sched_cluster *a, const struct sched_cluster *b, char *why,
                         size_t why_len);

#ifdef __cplusplus
}
#endif
#endif
