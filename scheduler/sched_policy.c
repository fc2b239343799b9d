/* sched_policy.c — the matching policy: defaults and validation. */
#include "sched_internal.h"

void sched_policy_default(struct sched_policy *p)
{
	memset(p, 0, sizeof *p);
	p->w_price = 1.0;
	p->w_perf_per_price = 2.0;
	p->w_perf = 0.0;
	p->w_fit = 1.0;
	p->w_reliability = 0.5;
	p->w_locality = 0.5;
	p->fit_mode = SCHED_FIT_PACK;
	p->score_nodes = 32;

	p->w_prio_class = 1000.0;
	p->w_age = 100.0;
	p->w_fairshare = 500.0;
	p->age_max_us = 7LL * 86400 * 1000000;
	p->fairness = SCHED_FAIR_SHARE;
	p->fairshare_half_life_us = 7LL * 86400 * 1000000;

	p->allow_unverified = false;
	p->backfill = true;
	p->reservations = 1;
	p->backfill_depth = 0;
	p->preemption = false;
	p->preemption_grace_us = 30LL * 1000000;
	p->infeasible_timeout_us = 0;
	p->w_speedup = 0.0;
	p->w_small_jobs = 0.0;
	p->w_short_jobs = 0.0;
	p->preempt_shorter_factor = 0.0;
	p->preempt_min_run_us = 0;
	p->w_frag = 0.0;
	p->comparative_advantage = 0.0;
	p->w_cost_per_work = 0.0;
	p->hold_for_faster = 0.0;
}

void sched_policy_recommended(struct sched_policy *p)
{
	sched_policy_default(p);
	/* price per GPU-hour is left to the tenant's max price and to
	 * w_cost_per_work: preferring cheap GPUs however slow lengthens jobs */
	p->w_price = 0.0;
	p->w_perf_per_price = 0.0;
	p->w_speedup = 100.0;
	p->comparative_advantage = 0.5;
	p->w_cost_per_work = 0.0;
	p->w_small_jobs = 0.0;
	p->w_short_jobs = 1000.0;
	p->w_frag = 20.0;
	p->preempt_shorter_factor = 16.0;
	p->preempt_min_run_us = 2LL * 3600 * 1000000;
	p->hold_for_faster = 0.5;
}

static int check_weight(double w, double max, const char *field, struct sched_error *err)
{
	if (!(w >= 0 && w <= max)) {
		set_err(err, field, "must be between 0 and %g, got %g", max, w);
		return -EINVAL;
	}
	return 0;
}

int sched_policy_validate(const struct sched_policy *p, struct sched_error *err)
{
	static const struct {
		const char *name;
		size_t off;
		double max;
	} weights[] = {
		{ "w_price", offsetof(struct sched_policy, w_price), 1000 },
		{ "w_perf_per_price", offsetof(struct sched_policy, w_perf_per_price), 1000 },
		{ "w_perf", offsetof(struct sched_policy, w_perf), 1000 },
		{ "w_fit", offsetof(struct sched_policy, w_fit), 1000 },
		{ "w_reliability", offsetof(struct sched_policy, w_reliability), 1000 },
		{ "w_locality", offsetof(struct sched_policy, w_locality), 1000 },
		{ "w_prio_class", offsetof(struct sched_policy, w_prio_class), 1e6 },
		{ "w_age", offsetof(struct sched_policy, w_age), 1e6 },
		{ "w_fairshare", offsetof(struct sched_policy, w_fairshare), 1e6 },
		{ "w_speedup", offsetof(struct sched_policy, w_speedup), 1000 },
		{ "w_small_jobs", offsetof(struct sched_policy, w_small_jobs), 1e6 },
		{ "w_short_jobs", offsetof(struct sched_policy, w_short_jobs), 1e6 },
		{ "w_frag", offsetof(struct sched_policy, w_frag), 1000 },
		{ "w_cost_per_work", offsetof(struct sched_policy, w_cost_per_work), 1000 },
		{ "hold_for_faster", offsetof(struct sched_policy, hold_for_faster), 100 },
	};
	for (size_t i = 0; i < sizeof weights / sizeof weights[0]; i++) {
		double w;
		memcpy(&w, (const char *)p + weights[i].off, sizeof w);
		if (check_weight(w, weights[i].max, weights[i].name, err))
			return -EINVAL;
	}
	if ((unsigned)p->fit_mode > SCHED_FIT_SPREAD) {
		set_err(err, "fit_mode", "must be PACK or SPREAD, got %d", (int)p->fit_mode);
		return -EINVAL;
	}
	if (p->score_nodes < 1 || p->score_nodes > 100000) {
		set_err(err, "score_nodes", "must be between 1 and 100000, got %u", p->score_nodes);
		return -EINVAL;
	}
	if (p->age_max_us <= 0) {
		set_err(err, "age_max_us", "must be greater than 0, got %lld",
		        (long long)p->age_max_us);
		return -EINVAL;
	}
	if ((unsigned)p->fairness > SCHED_FAIR_SHARE) {
		set_err(err, "fairness", "must be NONE or FAIR_SHARE, got %d", (int)p->fairness);
		return -EINVAL;
	}
	if (p->fairshare_half_life_us < 1000000 ||
	    p->fairshare_half_life_us > (int64_t)3650 * 86400 * 1000000) {
		set_err(err, "fairshare_half_life_us",
		        "must be between 1 s and 3650 days, got %lld",
		        (long long)p->fairshare_half_life_us);
		return -EINVAL;
	}
	if (!(p->comparative_advantage >= 0 && p->comparative_advantage <= 1)) {
		set_err(err, "comparative_advantage", "must be between 0 and 1, got %g",
		        p->comparative_advantage);
		return -EINVAL;
	}
	if (p->reservations > 64) {
		set_err(err, "reservations", "must be between 0 and 64, got %u", p->reservations);
		return -EINVAL;
	}
	if (p->preemption_grace_us < 0 || p->preemption_grace_us > (int64_t)86400 * 1000000) {
		set_err(err, "preemption_grace_us", "must be between 0 and 1 day, got %lld",
		        (long long)p->preemption_grace_us);
		return -EINVAL;
	}
	/* below 1 a job could evict one shorter than itself, which could then
	 * evict it back */
	if (!(p->preempt_shorter_factor == 0 ||
	      (p->preempt_shorter_factor >= 1 && p->preempt_shorter_factor <= 1e6))) {
		set_err(err, "preempt_shorter_factor",
		        "must be 0 (off) or between 1 and 1e+06, got %g",
		        p->preempt_shorter_factor);
		return -EINVAL;
	}
	if (p->preempt_min_run_us < 0 || p->preempt_min_run_us > (int64_t)30 * 86400 * 1000000) {
		set_err(err, "preempt_min_run_us", "must be between 0 and 30 days, got %lld",
		        (long long)p->preempt_min_run_us);
		return -EINVAL;
	}
	if (p->infeasible_timeout_us < 0) {
		set_err(err, "infeasible_timeout_us", "must be 0 (never) or positive, got %lld",
		        (long long)p->infeasible_timeout_us);
		return -EINVAL;
	}
	return 0;
}

int sched_set_policy(struct sched_cluster *c, const struct sched_policy *p, struct sched_error *err)
{
	int rc = sched_policy_validate(p, err);
	if (rc)
		return rc;
	/* allow_unverified decides which pools a class may use */
	if (p->allow_unverified != c->policy.allow_unverified)
		c->pool_gen++;
	c->policy = *p;
	return 0;
}

const struct sched_policy *sched_get_policy(const struct sched_cluster *c)
{
	return &c->policy;
}
