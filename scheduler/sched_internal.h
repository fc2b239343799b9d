/* sched_internal.h — the scheduling library's private data model, shared by
 * its .c files and by nothing else. */
#ifndef GPUMATCH_SCHED_INTERNAL_H
#define GPUMATCH_SCHED_INTERNAL_H

#include "sched.h"

#include <errno.h>
#include <string.h>

#define NONE32 UINT32_MAX

/* ---- memory --------------------------------------------------------------
 * Every allocation goes through these so that c->bytes is exact and an
 * injected allocator sees every request. Sizes are passed back on free so
 * the library knows what it holds. */
struct sched_cluster;
void *mem_alloc(struct sched_cluster *c, size_t bytes);
void *mem_calloc(struct sched_cluster *c, size_t bytes);
/* Grows or shrinks p from old_bytes to new_bytes; on failure p is intact. */
void *mem_realloc(struct sched_cluster *c, void *p, size_t old_bytes, size_t new_bytes);
void mem_free(struct sched_cluster *c, void *p, size_t bytes);
char *mem_strdup(struct sched_cluster *c, const char *s);

/* Makes room for at least want elements in *items (capacity *cap). Returns 0
 * or -ENOMEM with the array unchanged. */
int vec_reserve(struct sched_cluster *c, void **items, uint32_t *cap, uint32_t want,
                size_t elem_bytes);

/* ---- uint64 -> uint32 map (open addressing, linear probing) ------------- */
struct idmap {
	uint64_t *keys; /* 0 = empty, UINT64_MAX = tombstone */
	uint32_t *vals;
	uint32_t cap;  /* power of two or 0 */
	uint32_t used; /* live + tombstones */
	uint32_t live;
};
uint32_t idmap_get(const struct idmap *m, uint64_t key);
/* Ensures one more insert cannot fail. */
int idmap_reserve(struct sched_cluster *c, struct idmap *m);
void idmap_put(struct idmap *m, uint64_t key, uint32_t val); /* after reserve */
void idmap_del(struct idmap *m, uint64_t key);
void idmap_deinit(struct sched_cluster *c, struct idmap *m);

/* ---- interned strings and id lists --------------------------------------
 * Regions, models, labels and taints become small integers; ids are only
 * meaningful inside one cluster (compare strings across clusters). */
struct strtab {
	char **strs; /* id -> string */
	uint32_t n, cap;
	uint32_t *slots; /* hash table of id+1, 0 empty */
	uint32_t nslots;
};
/* Returns the id of s, adding it when absent; NONE32 when out of memory. */
uint32_t strtab_intern(struct sched_cluster *c, struct strtab *t, const char *s);
/* Returns the id of s or NONE32 when s was never interned. */
uint32_t strtab_find(const struct strtab *t, const char *s);
void strtab_deinit(struct sched_cluster *c, struct strtab *t);

/* ---- GPU types: what makes GPUs interchangeable for matching ------------ */
struct gtype {
	uint32_t model; /* string id */
	uint32_t memory_mib;
	uint16_t cc;
	uint32_t precisions;
};

/* Sorted, de-duplicated interned id sets (taint sets). */
struct idset {
	uint32_t *ids;
	uint32_t n;
	uint32_t hash;
};

/* ---- nodes ---------------------------------------------------------------- */

/* The GPUs of one node that share a gtype. Index entries are parts. */
struct part {
	uint64_t mask; /* GPUs of this part */
	uint32_t gtype;
	uint32_t pool;                  /* NONE32 while the node is not ready */
	uint32_t bpos;                  /* position in pool->b[bfree] */
	uint8_t bfree;                  /* bucket = free GPUs when last indexed */
	uint8_t max_group;              /* largest NVLink group inside the part */
	float tflops[SCHED_PREC_COUNT]; /* weakest GPU of the part */
};

struct nlease { /* a running job's share of this node */
	uint32_t job;
	uint64_t mask;
};

struct node {
	uint64_t id; /* 0 = free slot */
	uint32_t region;
	uint8_t state;
	bool verified;
	uint8_t ngpus;
	uint8_t nparts;
	int64_t price_micros;
	uint32_t reliability_ppm;
	uint64_t free_mask;
	struct sched_gpu_spec *gpus; /* copies; model points into strtab */
	uint32_t *labels;            /* sorted string ids */
	uint32_t nlabels;
	uint32_t taintset; /* idset id */
	struct part *parts;
	struct nlease *leases;
	uint32_t nleases, leases_cap; /* cap = ngpus: a lease holds >= 1 GPU */
	/* cycle state: reservations for blocked jobs */
	uint64_t resv_mask;
	int64_t resv_at_us;  /* earliest reservation start on this node */
	uint32_t resv_job;   /* job slot of the first reservation */
	uint64_t resv_epoch; /* reservations hold while == c->epoch */
	uint64_t stamp;      /* visit mark for searches */
	/* cycle cache for the shorter-work rule, valid while vc_epoch ==
	 * c->epoch: the longest remaining lease of a preemptible job here that
	 * may be a victim (INT64_MIN: none), and the GPUs of stopping jobs */
	int64_t vc_rem_us;
	uint64_t vc_stop_mask;
	uint64_t vc_epoch;
};

/* ---- the index ------------------------------------------------------------ */

struct bucket {
	uint32_t *items; /* part refs: node slot << 6 | part */
	uint32_t len, cap;
};

/* Parts that agree on everything a class can rule out at once. */
struct pool {
	uint32_t gtype;
	uint32_t region;
	uint32_t taintset;
	bool verified;
	uint8_t topo; /* largest NVLink group of the parts */
	uint16_t price_band;
	int64_t price_lo, price_hi; /* band covers [lo, hi) micros */
	struct lcount {             /* members carrying each label, by label id */
		uint32_t label;
		uint32_t count;
	} * lc;
	uint32_t nlc, lc_cap;
	/* what preemption could free here: GPUs of running preemptible jobs by
	 * priority class, and GPUs of jobs already stopping */
	uint32_t victim_gpus[SCHED_PRIO_CLASSES];
	uint32_t stopping_gpus;
	float tflops_max[SCHED_PREC_COUNT]; /* over members ever; only grows */
	uint32_t members;
	uint64_t nonempty; /* bit f-1: bucket f (1..64) has parts */
	struct bucket *b;  /* b[0..nb-1], b[f] = parts with f free GPUs */
	uint32_t nb;
};

#define PREF(node, part) (((node) << 6) | (part))
#define PREF_NODE(r)     ((r) >> 6)
#define PREF_PART(r)     ((r)&63u)

/* ---- jobs ----------------------------------------------------------------- */

/* What decides which pools a class may use, shared by every class with the
 * same values so that the eligible-pool list is built once for all. */
struct egroup {
	uint32_t refs; /* classes using it; 0 = free slot */
	uint32_t min_mem;
	uint64_t key; /* hash of the fields below */
	uint16_t min_cc;
	uint8_t precision;
	float need_tflops;
	int64_t max_price;
	uint32_t *regions, nregions;         /* sorted string ids */
	uint32_t *tolerations, ntolerations; /* sorted */
	uint32_t *elig;                      /* eligible pool ids, by region then price */
	uint32_t nelig, elig_cap;
	uint32_t elig_gen; /* c->pool_gen when built; 0 = never */
	uint32_t next_free;
};

/* One throughput-profile entry of a class, sorted by (model, cc). */
struct kspeed {
	uint32_t model; /* string id; NONE32 = match by cc */
	uint32_t cc;
	float speed;
};

/* A requirement class (HTCondor's autocluster): everything in a job spec
 * but its id, tenant and submit time. Shared by reference. */
struct jclass {
	uint32_t refs; /* 0 = free slot */
	uint32_t hash;
	uint8_t kind;
	uint8_t precision;
	uint8_t prio;
	bool preemptible;
	bool nvlink;
	uint32_t gpus; /* per node */
	uint32_t nodes;
	uint32_t min_mem;
	uint16_t min_cc;
	float min_tflops_gpu;
	float min_tflops_total;
	float need_tflops; /* effective per-GPU minimum */
	int64_t max_price;
	uint32_t pref_region;                /* NONE32 = none */
	uint32_t *regions, nregions;         /* sorted string ids */
	uint32_t *selectors, nselectors;     /* sorted */
	uint32_t *tolerations, ntolerations; /* sorted */
	struct kspeed *speeds;               /* throughput profile */
	uint32_t nspeeds;
	uint32_t next_free;
	uint32_t eg; /* eligibility group */
	/* cycle caches (not logical state) */
	uint64_t fail_epoch; /* a member was blocked in this cycle */
	bool fail_resv;      /* ... and reservations were in its way */
	int64_t fail_dur_us; /* shortest blocked duration (backfill) */
	uint32_t fleet_gen;  /* c->fleet_gen when fleet_ok was computed */
	bool fleet_ok;
	uint64_t span_epoch;      /* hold_for_faster: speed range of this cycle */
	float span_min, span_max; /* profile speeds over the eligible types;
	                             0 = unknown */
	uint64_t hold_epoch;      /* a member was held in this cycle ... */
	double hold_speed;        /* ... with at best this speed free */
};

struct jplace {
	uint32_t node;
	uint64_t mask;
};

struct job {
	uint64_t id;     /* 0 = free slot */
	uint64_t seq;    /* order of add */
	uint32_t tenant; /* tenant slot */
	uint32_t cls;
	int64_t submit_us;
	int64_t max_dur_us;
	uint8_t state; /* enum sched_job_state */
	uint32_t pending_pos;
	int64_t start_us;
	int64_t deadline_us;  /* start + max duration, or preemption deadline */
	uint64_t preempt_for; /* job id this one is evicted for */
	struct jplace *place; /* class->nodes entries, allocated with the job */
	int64_t resv_at_us;   /* last reservation; valid when resv_epoch == c->epoch */
	uint64_t resv_epoch;
	uint32_t next_free;
};

struct tenant {
	uint64_t id;
	uint32_t shares;
	uint32_t running_gpus;
	double usage; /* decayed GPU-seconds as of usage_at */
	int64_t usage_at;
};

/* ---- the cluster ---------------------------------------------------------- */

struct sched_cluster {
	struct sched_alloc a;
	size_t bytes;
	struct sched_policy policy;

	struct strtab strs;
	struct gtype *gtypes;
	uint32_t ngtypes, gtypes_cap;
	struct idset *idsets;
	uint32_t nidsets, idsets_cap;

	struct node *nodes;
	uint32_t nnodes_slots, nodes_cap, nodes_live;
	uint32_t *node_free; /* free slot stack */
	uint32_t nnode_free, node_free_cap;
	struct idmap node_map;
	uint32_t nodes_by_state[SCHED_NODE_STATE_COUNT];
	uint64_t gpus_total;

	struct pool *pools;
	uint32_t npools, pools_cap;
	struct gpools { /* pools of one GPU type, by region, for eligibility */
		struct rpools {
			uint32_t region;
			uint32_t *ids; /* by price_lo ascending */
			uint32_t n, cap;
		} * r;
		uint32_t nr, rcap;
	} * gtype_pools; /* parallel to gtypes */
	uint32_t gtype_pools_cap;
	uint32_t *pool_slots; /* hash of pool id+1 */
	uint32_t npool_slots;
	uint32_t pool_gen;  /* bumped when class eligibility may change */
	uint32_t fleet_gen; /* bumped on any node fact change */

	struct jclass *classes;
	uint32_t nclass_slots, classes_cap, class_free, classes_live;
	uint32_t *class_slots; /* hash of class id+1, UINT32_MAX = tombstone */
	uint32_t class_tombs;
	uint32_t nclass_hslots;

	struct egroup *egroups;
	uint32_t neg_slots, egroups_cap, eg_free;
	struct idmap eg_map; /* key -> egroup */

	struct job *jobs;
	uint32_t njob_slots, jobs_cap, job_free;
	struct idmap job_map;
	uint32_t *pending;
	uint32_t npending, pending_cap;
	uint64_t pending_parts; /* sum of node_count over pending jobs */
	uint32_t nrunning;
	uint64_t next_seq;

	struct tenant *tenants;
	uint32_t ntenants, tenants_cap;
	struct idmap tenant_map;

	/* cycle */
	uint64_t epoch;
	int64_t last_cycle_us;
	uint64_t stamp;
	void *scratch; /* grow-only cycle scratch */
	size_t scratch_bytes;
};

/* ---- cluster internals shared between files ------------------------------ */

static inline struct node *node_at(const struct sched_cluster *c, uint32_t slot)
{
	return &c->nodes[slot];
}

static inline uint32_t popcount64(uint64_t x)
{
#ifdef __POPCNT__
	return (uint32_t)__builtin_popcountll(x);
#else
	/* baseline x86-64 has no popcnt; this beats the libgcc call */
	x = x - ((x >> 1) & 0x5555555555555555ull);
	x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
	x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
	return (uint32_t)((x * 0x0101010101010101ull) >> 56);
#endif
}

/* GPUs of a job on one node: gpus with NVLink when asked. Picks from usable
 * (a subset of part->mask). Returns the chosen mask or 0 when it cannot. */
uint64_t pick_gpus(const struct node *n, const struct part *p, const struct jclass *k,
                   uint64_t usable);

/* Static node-level checks a pool cannot decide: exact price, throughput and
 * label selectors. Returns SCHED_R_COUNT when they pass. */
enum sched_reason node_static_reason(const struct sched_cluster *c, const struct node *n,
                                     const struct part *p, const struct jclass *k);

/* The filters a restored lease must still pass: region, GPU type,
 * throughput, taints, labels (not state, verification or price). Returns
 * SCHED_R_COUNT when they pass. */
enum sched_reason restore_reason(const struct sched_cluster *c, const struct node *n,
                                 const struct part *p, const struct jclass *k);

/* Full filter chain for one node against a class, ignoring free GPUs and
 * reservations when ignore_use is set. Returns SCHED_R_COUNT when the node
 * fits; *best_part gets the part that got furthest. */
enum sched_reason node_reason(const struct sched_cluster *c, const struct node *n,
                              const struct jclass *k, uint32_t job_slot, int64_t end_us,
                              bool ignore_use, bool ignore_state, uint32_t *best_part);

/* Do the tolerations (sorted string ids) cover every taint in the set? */
bool taints_tolerated(const struct sched_cluster *c, uint32_t taintset, const uint32_t *tol,
                      uint32_t ntol);
/* Is region among the allowed ones (none listed = any)? */
bool region_in(const uint32_t *regions, uint32_t n, uint32_t region);
static inline bool region_allowed(const struct jclass *k, uint32_t region)
{
	return region_in(k->regions, k->nregions, region);
}
bool labels_match(const struct node *n, const struct jclass *k);

/* The class's declared speed on a GPU type (model entry first, then compute
 * capability), or a negative value when the profile does not cover it. */
float class_speed(const struct sched_cluster *c, const struct jclass *k, uint32_t gtype);

/* Free GPUs of a part that a job may use: reservations of other jobs are
 * excluded unless the job ends before they start. */
static inline uint64_t usable_mask(const struct sched_cluster *c, const struct node *n,
                                   const struct part *p, uint32_t job_slot, int64_t end_us)
{
	uint64_t m = n->free_mask & p->mask;
	if (n->resv_epoch == c->epoch && n->resv_mask && n->resv_job != job_slot &&
	    end_us > n->resv_at_us)
		m &= ~n->resv_mask;
	return m;
}

/* Can some member of the pool ever host the class (NVLink topology, label
 * selectors)? Decided once per pool instead of once per node. */
bool pool_may_host(const struct pool *p, const struct jclass *k);

/* Adds (sign 1) or removes (sign -1) a job's GPUs on one node from the
 * preemption counters of the node's indexed pools, per the job's state. */
void pool_count_lease(struct sched_cluster *c, uint32_t node_slot, uint64_t mask, uint32_t job_slot,
                      int sign);

/* Moves the node's parts to the buckets matching its free mask. */
void index_node_refresh(struct sched_cluster *c, uint32_t slot);

/* Applies a placement: GPUs busy, lease records, tenant usage, job running. */
void job_apply_placement(struct sched_cluster *c, uint32_t job_slot, const struct jplace *pl,
                         uint32_t npl, int64_t now_us);
/* Removes a job from the pending list / frees its GPUs. */
void job_unqueue(struct sched_cluster *c, uint32_t job_slot);
void job_release(struct sched_cluster *c, uint32_t job_slot, int64_t now_us);
/* Frees a job slot (job must be neither pending nor running). */
void job_destroy(struct sched_cluster *c, uint32_t job_slot);

/* Tenant decayed usage at now_us (pure). */
double tenant_usage_at(const struct sched_cluster *c, const struct tenant *t, int64_t now_us);

/* Rebuilds the group's eligible pools when stale. -ENOMEM keeps the old. */
int egroup_refresh(struct sched_cluster *c, struct egroup *g);
/* Whether some node of the whole fleet could host the class if idle. */
bool class_fleet_feasible(struct sched_cluster *c, struct jclass *k);

void set_err(struct sched_error *err, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
