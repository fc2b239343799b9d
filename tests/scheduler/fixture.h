/* fixture.h — shared helpers for the scheduler unit tests: a tiny assertion
 * set that names the failing row, builders for node and job specs, a
 * counting (and optionally failing) allocator, and action look-ups. */
#ifndef GPUMATCH_TESTS_SCHED_FIXTURE_H
#define GPUMATCH_TESTS_SCHED_FIXTURE_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "sched.h"

/* ---- assertions --------------------------------------------------------- */

/* The scenario being run; every failure message names it. */
extern const char *fx_row;
extern int fx_failures;
/* A note printed with the current row's failures (which always count), or
 * NULL. */
extern const char *fx_note;

void fx_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* EXPECT_* record a failure and go on; REQUIRE_* also return from the
 * calling function (which must return void). */
#define EXPECT(cond)                                                       \
	do {                                                               \
		if (!(cond))                                               \
			fx_fail(__FILE__, __LINE__, "expected %s", #cond); \
	} while (0)

#define EXPECT_INT(got, want)                                                               \
	do {                                                                                \
		long long fx_g_ = (long long)(got), fx_w_ = (long long)(want);              \
		if (fx_g_ != fx_w_)                                                         \
			fx_fail(__FILE__, __LINE__, "%s: got %lld, want %lld", #got, fx_g_, \
			        fx_w_);                                                     \
	} while (0)

#define EXPECT_HEX(got, want)                                                                 \
	do {                                                                                  \
		unsigned long long fx_g_ = (unsigned long long)(got);                         \
		unsigned long long fx_w_ = (unsigned long long)(want);                        \
		if (fx_g_ != fx_w_)                                                           \
			fx_fail(__FILE__, __LINE__, "%s: got %#llx, want %#llx", #got, fx_g_, \
			        fx_w_);                                                       \
	} while (0)

#define EXPECT_NEAR(got, want, tol)                                                            \
	do {                                                                                   \
		double fx_g_ = (double)(got), fx_w_ = (double)(want);                          \
		if (!(fx_g_ >= fx_w_ - (tol) && fx_g_ <= fx_w_ + (tol)))                       \
			fx_fail(__FILE__, __LINE__, "%s: got %.9g, want %.9g±%g", #got, fx_g_, \
			        fx_w_, (double)(tol));                                         \
	} while (0)

#define EXPECT_STR(got, want)                                                            \
	do {                                                                             \
		const char *fx_g_ = (got), *fx_w_ = (want);                              \
		if (fx_g_ == NULL || strcmp(fx_g_, fx_w_) != 0)                          \
			fx_fail(__FILE__, __LINE__, "%s: got \"%s\", want \"%s\"", #got, \
			        fx_g_ ? fx_g_ : "(null)", fx_w_);                        \
	} while (0)

#define REQUIRE(cond)                                                      \
	do {                                                               \
		if (!(cond)) {                                             \
			fx_fail(__FILE__, __LINE__, "required %s", #cond); \
			return;                                            \
		}                                                          \
	} while (0)

#define REQUIRE_OK(call)                                                                  \
	do {                                                                              \
		int fx_rc_ = (call);                                                      \
		if (fx_rc_ != 0) {                                                        \
			fx_fail(__FILE__, __LINE__, "%s returned %d (%s)", #call, fx_rc_, \
			        fx_errno_name(fx_rc_));                                   \
			return;                                                           \
		}                                                                         \
	} while (0)

/* "ENOMEM" for -ENOMEM, etc. */
const char *fx_errno_name(int rc);

/* Checks sched_cluster_check and reports its message as a failure. */
bool fx_check(const struct sched_cluster *c, const char *file, int line);
#define EXPECT_CHECK(c) fx_check((c), __FILE__, __LINE__)

/* Checks sched_cluster_equal and reports the difference as a failure. */
bool fx_equal(const struct sched_cluster *a, const struct sched_cluster *b, const char *file,
              int line);
#define EXPECT_EQUAL(a, b) fx_equal((a), (b), __FILE__, __LINE__)

/* Prints the summary line; returns the process exit status. */
int fx_finish(const char *suite);

/* ---- strings ------------------------------------------------------------ */

/* A copy of s[0..len) that lives until the process exits; equal strings
 * share one copy, so specs holding them can be copied by value freely. */
const char *fx_intern(const char *s, size_t len);

/* ---- GPUs --------------------------------------------------------------- */

#define FX_ALL_PREC ((1u << SCHED_PREC_COUNT) - 1)
#define FX_PREC(p)  (1u << (p))

/* Datasheet-like templates. tflops are indexed by enum sched_precision. */
extern const struct sched_gpu_spec fx_gpu_h100; /* 80 GiB, cc 90, all incl FP8 */
extern const struct sched_gpu_spec fx_gpu_a100; /* 80 GiB, cc 80, no FP8 */
extern const struct sched_gpu_spec fx_gpu_l4;   /* 24 GiB, cc 89, FP8 */
extern const struct sched_gpu_spec fx_gpu_3060; /* 12 GiB, cc 86, no FP8 */
/* Returns the template named "H100", "A100", "L4" or "3060", else NULL. */
const struct sched_gpu_spec *fx_gpu_named(const char *name);

/* ---- nodes -------------------------------------------------------------- */

/* A node spec with its own storage. Strings are interned, so an fx_node may
 * be copied by value; call fx_node_spec() after a copy to re-point. */
struct fx_node {
	struct sched_node_spec spec;
	struct sched_gpu_spec gpus[SCHED_MAX_GPUS_PER_NODE];
	const char *labels[SCHED_MAX_STRINGS + 1];
	const char *taints[SCHED_MAX_STRINGS + 1];
};

/* Ready, verified, $2/GPU-hour, 990,000 ppm, no labels or taints. gpus is
 * a layout: space-separated "<count>x<model>[@<nvlink group>]" items, e.g.
 * "4xH100@1 4xH100@2" or "2xA100 2xH100" (group 0 = no NVLink). */
void fx_node_init(struct fx_node *n, uint64_t id, const char *region, const char *gpus);
void fx_node_gpus(struct fx_node *n, const char *gpus);
/* Comma-separated lists; "" or NULL clears. */
void fx_node_labels(struct fx_node *n, const char *csv);
void fx_node_taints(struct fx_node *n, const char *csv);
/* Points the spec's arrays at n's storage and returns it. */
const struct sched_node_spec *fx_node_spec(struct fx_node *n);

/* ---- jobs --------------------------------------------------------------- */

struct fx_job {
	struct sched_job_spec spec;
	const char *regions[SCHED_MAX_STRINGS + 1];
	const char *selectors[SCHED_MAX_STRINGS + 1];
	const char *tolerations[SCHED_MAX_STRINGS + 1];
};

/* Tenant 1, training, gpus GPUs on one node, FP16, no constraints, one
 * hour, class 2, not preemptible, submitted at 0. */
void fx_job_init(struct fx_job *j, uint64_t id, uint32_t gpus);
void fx_job_regions(struct fx_job *j, const char *csv);
void fx_job_selectors(struct fx_job *j, const char *csv);
void fx_job_tolerations(struct fx_job *j, const char *csv);
const struct sched_job_spec *fx_job_spec(struct fx_job *j);

/* ---- policy ------------------------------------------------------------- */

/* The default policy with exact, predictable choice for tests: every
 * feasible node scored, no scoring weights (ties go to the lowest id), no
 * priority factors but class, fair share off, no backfill, no preemption,
 * verified nodes only, no infeasible timeout. Rows switch on what they test. */
void fx_policy(struct sched_policy *p);

/* ---- allocator ---------------------------------------------------------- */

/* Counts live blocks; fails the fail_at-th allocation (alloc or realloc,
 * counted from 1) once, when fail_at > 0. */
struct fx_alloc {
	struct sched_alloc a;
	long live;     /* blocks allocated and not freed */
	long calls;    /* alloc + realloc calls so far */
	long fail_at;  /* 0 = never */
	long failures; /* injected failures so far */
	bool fail_all; /* keep failing every call from fail_at on */
};
void fx_alloc_init(struct fx_alloc *fa);

/* ---- clusters and cycles ------------------------------------------------ */

/* A new cluster on libc with fx_policy() installed; aborts the test
 * process if that fails (nothing can be tested then). */
struct sched_cluster *fx_cluster(const struct sched_alloc *alloc);

/* Upserts, reporting a failure (with err) if it does not return 0. */
bool fx_add_node(struct sched_cluster *c, struct fx_node *n);
bool fx_add_job(struct sched_cluster *c, struct fx_job *j);
/* Adds the job and starts it on node_id/mask at start_us (one part). */
bool fx_run_job(struct sched_cluster *c, struct fx_job *j, uint64_t node_id, uint64_t mask,
                int64_t start_us);

/* Runs one cycle into a fresh action list (freed by the previous call or by
 * fx_cycle_done). Reports a failure if the cycle fails. */
struct fx_cycle {
	struct sched_cluster *c;
	struct sched_actions acts;
	struct sched_cycle_stats stats;
	int rc;
};
bool fx_run_cycle(struct fx_cycle *fc, struct sched_cluster *c, int64_t now_us);
void fx_cycle_done(struct fx_cycle *fc);

/* Number of actions of kind for job_id (kind 0 = any). */
size_t fx_count(const struct sched_actions *a, enum sched_action_kind kind, uint64_t job_id);
/* The first action of kind for job_id, or NULL. */
const struct sched_action *fx_find(const struct sched_actions *a, enum sched_action_kind kind,
                                   uint64_t job_id);

/* Explains job_id, reporting a failure if that fails. */
bool fx_explain(const struct sched_cluster *c, uint64_t job_id, struct sched_explain *e);

/* Free mask of a node, or all-ones on failure (reported). */
uint64_t fx_free(const struct sched_cluster *c, uint64_t node_id);

static inline int fx_popcount(uint64_t m)
{
	return __builtin_popcountll(m);
}

#define FX_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define FX_S(x)         ((int64_t)(x)*1000000) /* seconds to microseconds */

#endif
