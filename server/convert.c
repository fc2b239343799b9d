/* convert.c — API messages to scheduling-library specs and back. */
#include "convert.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void conv_camel(const char *snake, char *out, size_t len)
{
	size_t o = 0;
	bool up = false;
	for (const char *p = snake; *p && o + 1 < len; p++) {
		if (*p == '_') {
			up = true;
			continue;
		}
		out[o++] = up && *p >= 'a' && *p <= 'z' ? (char)(*p - 32) : *p;
		up = false;
	}
	out[o] = '\0';
}

static const struct {
	const char *sched, *api;
} job_fields[] = {
	{ "kind", "spec.kind" },
	{ "gpus_per_node", "spec.gpusPerNode" },
	{ "node_count", "spec.nodeCount" },
	{ "min_compute_cap", "spec.minComputeCapabilityMajor" },
	{ "precision", "spec.precision" },
	{ "min_tflops_per_gpu", "spec.minTflopsPerGpu" },
	{ "min_tflops_total", "spec.minTflopsTotal" },
	{ "max_price_micros", "spec.maxPricePerGpuHourMicros" },
	{ "max_duration_us", "spec.maxDurationUs" },
	{ "priority_class", "spec.priorityClass" },
	{ "preferred_region", "spec.preferredRegion" },
	{ "regions", "spec.allowedRegions" },
	{ "selectors", "spec.labelSelector" },
	{ "tolerations", "spec.tolerations" },
};

void conv_job_field(const char *sched_field, char *out, size_t len)
{
	for (size_t i = 0; i < sizeof job_fields / sizeof job_fields[0]; i++) {
		size_t n = strlen(job_fields[i].sched);
		if (!strncmp(sched_field, job_fields[i].sched, n) &&
		    (sched_field[n] == '\0' || sched_field[n] == '[')) {
			snprintf(out, len, "%s%s", job_fields[i].api, sched_field + n);
			return;
		}
	}
	snprintf(out, len, "spec.%s", sched_field);
}

static int put(struct conv_strings *st, int list, uint32_t *n, const char *a, const char *b,
               const char *field, char *f, size_t flen, char *msg, size_t mlen)
{
	if (*n >= SCHED_MAX_STRINGS) {
		snprintf(f, flen, "%s", field);
		snprintf(msg, mlen, "at most %d entries", SCHED_MAX_STRINGS);
		return -1;
	}
	char *dst = st->buf[list][*n];
	size_t la = strlen(a), lb = b ? strlen(b) : 0;
	if (la > SCHED_MAX_STRING_BYTES || lb > SCHED_MAX_STRING_BYTES) {
		snprintf(f, flen, "%s", field);
		snprintf(msg, mlen, "entries must be at most %d bytes", SCHED_MAX_STRING_BYTES);
		return -1;
	}
	if (b)
		snprintf(dst, sizeof st->buf[list][0], "%s=%s", a, b);
	else
		snprintf(dst, sizeof st->buf[list][0], "%s", a);
	st->ptrs[list][(*n)++] = dst;
	return 0;
}

int conv_job_spec(const Gpumatch__V1__JobSpec *in, uint64_t job_id, uint64_t tenant_id,
                  int64_t submit_us, struct sched_job_spec *out, struct conv_strings *st,
                  char *field, size_t field_len, char *msg, size_t msg_len)
{
	memset(out, 0, sizeof *out);
	out->id = job_id;
	out->tenant_id = tenant_id;
	out->submit_us = submit_us;
	out->kind = in->kind ? (enum sched_job_kind)(in->kind - 1) : SCHED_JOB_BATCH;
	out->gpus_per_node = in->gpus_per_node;
	out->node_count = in->node_count ? in->node_count : 1;
	out->min_memory_mib = in->min_gpu_memory_mib;
	if (in->min_compute_capability_major > 15 || in->min_compute_capability_minor > 9) {
		snprintf(field, field_len, "spec.minComputeCapabilityMajor");
		snprintf(msg, msg_len, "compute capability %u.%u is not a real one",
		         in->min_compute_capability_major, in->min_compute_capability_minor);
		return -1;
	}
	out->min_compute_cap =
	    (uint16_t)(in->min_compute_capability_major * 10 + in->min_compute_capability_minor);
	out->precision =
	    in->precision ? (enum sched_precision)(in->precision - 1) : SCHED_PREC_FP32;
	out->min_tflops_per_gpu = (float)in->min_tflops_per_gpu;
	out->min_tflops_total = (float)in->min_tflops_total;
	out->require_nvlink = in->require_nvlink;
	uint32_t n = 0;
	for (size_t i = 0; i < in->n_allowed_regions; i++)
		if (put(st, 0, &n, in->allowed_regions[i], NULL, "spec.allowedRegions", field,
		        field_len, msg, msg_len))
			return -1;
	out->nregions = n;
	out->regions = st->ptrs[0];
	out->preferred_region = in->preferred_region;
	n = 0;
	for (size_t i = 0; i < in->n_label_selector; i++) {
		const char *k = in->label_selector[i]->key, *v = in->label_selector[i]->value;
		if (!*k || strchr(k, '=')) {
			snprintf(field, field_len, "spec.labelSelector");
			snprintf(msg, msg_len, "keys must be non-empty and without '='");
			return -1;
		}
		if (put(st, 1, &n, k, v, "spec.labelSelector", field, field_len, msg, msg_len))
			return -1;
	}
	out->nselectors = n;
	out->selectors = st->ptrs[1];
	n = 0;
	for (size_t i = 0; i < in->n_tolerations; i++) {
		const Gpumatch__V1__Toleration *t = in->tolerations[i];
		if (!*t->key) {
			snprintf(field, field_len, "spec.tolerations[%zu].key", i);
			snprintf(msg, msg_len, "must not be empty");
			return -1;
		}
		bool exists = t->match == GPUMATCH__V1__TOLERATION_MATCH__TOLERATION_MATCH_EXISTS;
		if (put(st, 2, &n, t->key, exists ? NULL : t->value, "spec.tolerations", field,
		        field_len, msg, msg_len))
			return -1;
	}
	out->ntolerations = n;
	out->tolerations = st->ptrs[2];
	out->max_price_micros = in->max_price_per_gpu_hour_micros;
	out->max_duration_us = in->max_duration_us;
	/* UNSPECIFIED reads as NORMAL (class 2) */
	out->priority_class = in->priority_class ? in->priority_class - 1 : 2;
	out->preemptible = in->preemptible;
	if (in->n_speeds > SCHED_MAX_STRINGS) {
		snprintf(field, field_len, "spec.speeds");
		snprintf(msg, msg_len, "at most %d entries, got %zu", SCHED_MAX_STRINGS,
		         in->n_speeds);
		return -1;
	}
	for (size_t i = 0; i < in->n_speeds; i++) {
		const Gpumatch__V1__GpuSpeed *e = in->speeds[i];
		struct sched_speed *d = &st->speeds[i];
		const char *model = e->model ? e->model : "";
		if (strlen(model) > SCHED_MAX_STRING_BYTES) {
			snprintf(field, field_len, "spec.speeds[%zu].model", i);
			snprintf(msg, msg_len, "must be at most %d bytes", SCHED_MAX_STRING_BYTES);
			return -1;
		}
		snprintf(st->speed_models[i], sizeof st->speed_models[i], "%s", model);
		uint32_t cc = e->compute_capability_major * 10 + e->compute_capability_minor;
		d->model = *model ? st->speed_models[i] : NULL;
		d->compute_cap = (uint16_t)(cc > 65535 ? 65535 : cc);
		d->speed = (float)e->speed;
	}
	out->nspeeds = (uint32_t)in->n_speeds;
	out->speeds = out->nspeeds ? st->speeds : NULL;
	if (in->job_type && strlen(in->job_type) > SCHED_MAX_STRING_BYTES) {
		snprintf(field, field_len, "spec.jobType");
		snprintf(msg, msg_len, "must be at most %d bytes", SCHED_MAX_STRING_BYTES);
		return -1;
	}
	if (!isfinite(in->work_units) || in->work_units < 0 || in->work_units > 1e18) {
		snprintf(field, field_len, "spec.workUnits");
		snprintf(msg, msg_len, "must be a finite number between 0 and 1e18, got %g",
		         in->work_units);
		return -1;
	}
	return 0;
}

static const Gpumatch__V1__Throughput *figures(const Gpumatch__V1__Gpu *g, bool verified)
{
	return verified && g->verified ? g->verified : g->claimed;
}

int conv_node(const Gpumatch__V1__Node *n, struct sched_node_spec *out, struct sched_gpu_spec *gpus,
              struct conv_strings *st, char *field, size_t field_len, char *msg, size_t msg_len)
{
	memset(out, 0, sizeof *out);
	out->id = n->id;
	out->region = n->region;
	bool verified =
	    n->verification && n->verification->status ==
	                           GPUMATCH__V1__VERIFICATION_STATUS__VERIFICATION_STATUS_VERIFIED;
	out->verified = verified;
	switch (n->state) {
	case GPUMATCH__V1__NODE_STATE__NODE_STATE_READY:
		out->state = SCHED_NODE_READY;
		break;
	case GPUMATCH__V1__NODE_STATE__NODE_STATE_DRAINING:
		out->state = SCHED_NODE_DRAINING;
		break;
	case GPUMATCH__V1__NODE_STATE__NODE_STATE_LOST:
		out->state = SCHED_NODE_LOST;
		break;
	default: /* registered, cordoned, disabled: no new work */
		out->state = SCHED_NODE_CORDONED;
		break;
	}
	out->price_micros = n->price_per_gpu_hour_micros;
	out->reliability_ppm =
	    n->reliability && n->reliability->score_ppm ? n->reliability->score_ppm : 1000000;
	out->ngpus = (uint32_t)n->n_gpus;
	out->gpus = gpus;
	for (size_t i = 0; i < n->n_gpus && i < SCHED_MAX_GPUS_PER_NODE; i++) {
		const Gpumatch__V1__Gpu *g = n->gpus[i];
		struct sched_gpu_spec *s = &gpus[i];
		memset(s, 0, sizeof *s);
		s->model = g->model;
		s->memory_mib = g->memory_mib;
		s->compute_cap =
		    (uint16_t)(g->compute_capability_major * 10 + g->compute_capability_minor);
		for (size_t p = 0; p < g->n_precisions; p++) {
			int v = (int)g->precisions[p];
			if (v >= 1 && v <= (int)SCHED_PREC_COUNT)
				s->precisions |= 1u << (v - 1);
		}
		bool linked = g->interconnect == GPUMATCH__V1__INTERCONNECT__INTERCONNECT_NVLINK ||
		              g->interconnect == GPUMATCH__V1__INTERCONNECT__INTERCONNECT_NVSWITCH;
		s->nvlink_group = linked ? (uint16_t)(g->interconnect_group + 1) : 0;
		const Gpumatch__V1__Throughput *t = figures(g, verified);
		if (t) {
			s->tflops[SCHED_PREC_FP32] = (float)t->fp32_tflops;
			s->tflops[SCHED_PREC_TF32] = (float)t->tf32_tflops;
			s->tflops[SCHED_PREC_FP16] = (float)t->fp16_tflops;
			s->tflops[SCHED_PREC_BF16] = (float)t->bf16_tflops;
			s->tflops[SCHED_PREC_FP8] = (float)t->fp8_tflops;
		}
	}
	uint32_t k = 0;
	for (size_t i = 0; i < n->n_labels; i++)
		if (put(st, 0, &k, n->labels[i]->key, n->labels[i]->value, "labels", field,
		        field_len, msg, msg_len))
			return -1;
	out->nlabels = k;
	out->labels = st->ptrs[0];
	k = 0;
	for (size_t i = 0; i < n->n_taints; i++) {
		const Gpumatch__V1__Taint *t = n->taints[i];
		/* PreferNoSchedule is a preference, not a filter */
		if (t->effect == GPUMATCH__V1__TAINT_EFFECT__TAINT_EFFECT_PREFER_NO_SCHEDULE)
			continue;
		if (put(st, 1, &k, t->key, *t->value ? t->value : NULL, "taints", field, field_len,
		        msg, msg_len))
			return -1;
	}
	out->ntaints = k;
	out->taints = st->ptrs[1];
	return 0;
}

void conv_policy_in(const Gpumatch__V1__Policy *in, struct sched_policy *out)
{
	sched_policy_default(out);
	out->w_price = in->w_price;
	out->w_perf_per_price = in->w_perf_per_price;
	out->w_perf = in->w_perf;
	out->w_fit = in->w_fit;
	out->w_reliability = in->w_reliability;
	out->w_locality = in->w_locality;
	if (in->fit_mode)
		out->fit_mode = (enum sched_fit_mode)(in->fit_mode - 1);
	out->score_nodes = in->score_nodes;
	out->w_prio_class = in->w_prio_class;
	out->w_age = in->w_age;
	out->w_fairshare = in->w_fairshare;
	out->age_max_us = in->age_max_us;
	if (in->fairness)
		out->fairness = (enum sched_fairness)(in->fairness - 1);
	out->fairshare_half_life_us = in->fairshare_half_life_us;
	out->allow_unverified = in->allow_unverified;
	out->backfill = in->backfill;
	out->reservations = in->reservations;
	out->backfill_depth = in->backfill_depth;
	out->preemption = in->preemption;
	out->preemption_grace_us = in->preemption_grace_us;
	out->infeasible_timeout_us = in->infeasible_timeout_us;
	out->w_speedup = in->w_speedup;
	out->w_small_jobs = in->w_small_jobs;
	out->w_short_jobs = in->w_short_jobs;
	out->comparative_advantage = in->comparative_advantage;
	out->w_cost_per_work = in->w_cost_per_work;
	out->preempt_shorter_factor = in->preempt_shorter_factor;
	out->preempt_min_run_us = in->preempt_min_run_us;
	out->w_frag = in->w_frag;
	out->hold_for_faster = in->hold_for_faster;
}

void conv_policy_out(const struct sched_policy *in, Gpumatch__V1__Policy *out)
{
	out->w_price = in->w_price;
	out->w_perf_per_price = in->w_perf_per_price;
	out->w_perf = in->w_perf;
	out->w_fit = in->w_fit;
	out->w_reliability = in->w_reliability;
	out->w_locality = in->w_locality;
	out->fit_mode = (Gpumatch__V1__FitMode)(in->fit_mode + 1);
	out->score_nodes = in->score_nodes;
	out->w_prio_class = in->w_prio_class;
	out->w_age = in->w_age;
	out->w_fairshare = in->w_fairshare;
	out->age_max_us = in->age_max_us;
	out->fairness = (Gpumatch__V1__FairnessMode)(in->fairness + 1);
	out->fairshare_half_life_us = in->fairshare_half_life_us;
	out->allow_unverified = in->allow_unverified;
	out->backfill = in->backfill;
	out->reservations = in->reservations;
	out->backfill_depth = in->backfill_depth;
	out->preemption = in->preemption;
	out->preemption_grace_us = in->preemption_grace_us;
	out->infeasible_timeout_us = in->infeasible_timeout_us;
	out->w_speedup = in->w_speedup;
	out->w_small_jobs = in->w_small_jobs;
	out->w_short_jobs = in->w_short_jobs;
	out->comparative_advantage = in->comparative_advantage;
	out->w_cost_per_work = in->w_cost_per_work;
	out->preempt_shorter_factor = in->preempt_shorter_factor;
	out->preempt_min_run_us = in->preempt_min_run_us;
	out->w_frag = in->w_frag;
	out->hold_for_faster = in->hold_for_faster;
}
