/* sched_cluster.c — the incrementally maintained cluster model: nodes and
 * their GPU parts, the capability index (pools of buckets by free GPUs),
 * requirement classes, jobs, tenants and leases. */
#include "sched_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static void *libc_alloc(void *ctx, size_t n)
{
	(void)ctx;
	return malloc(n);
}

static void *libc_realloc(void *ctx, void *p, size_t n)
{
	(void)ctx;
	return realloc(p, n);
}

static void libc_free(void *ctx, void *p)
{
	(void)ctx;
	free(p);
}

struct sched_cluster *sched_cluster_new(const struct sched_alloc *alloc)
{
	struct sched_alloc a = { libc_alloc, libc_realloc, libc_free, NULL };
	if (alloc)
		a = *alloc;
	struct sched_cluster *c = a.alloc(a.ctx, sizeof *c);
	if (!c)
		return NULL;
	memset(c, 0, sizeof *c);
	c->a = a;
	c->bytes = sizeof *c;
	sched_policy_default(&c->policy);
	c->class_free = NONE32;
	c->eg_free = NONE32;
	c->job_free = NONE32;
	c->pool_gen = 1;
	c->fleet_gen = 1;
	return c;
}

/* ---- small helpers ------------------------------------------------------- */

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

/* Interns each string, sorts and de-duplicates. *out is allocated (n may be
 * 0: *out = NULL). Returns 0 or -ENOMEM. */
static int intern_list(struct sched_cluster *c, const char *const *s, uint32_t n, uint32_t **out,
                       uint32_t *nout)
{
	*out = NULL;
	*nout = 0;
	if (!n)
		return 0;
	uint32_t *ids = mem_alloc(c, (size_t)n * sizeof *ids);
	if (!ids)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		ids[i] = strtab_intern(c, &c->strs, s[i]);
		if (ids[i] == NONE32) {
			mem_free(c, ids, (size_t)n * sizeof *ids);
			return -ENOMEM;
		}
	}
	qsort(ids, n, sizeof *ids, cmp_u32);
	uint32_t m = 0;
	for (uint32_t i = 0; i < n; i++)
		if (!m || ids[m - 1] != ids[i])
			ids[m++] = ids[i];
	if (m != n) {
		uint32_t *shrunk =
		    mem_realloc(c, ids, (size_t)n * sizeof *ids, (size_t)m * sizeof *ids);
		if (!shrunk) {
			mem_free(c, ids, (size_t)n * sizeof *ids);
			return -ENOMEM;
		}
		ids = shrunk;
	}
	*out = ids;
	*nout = m;
	return 0;
}

static uint32_t hash_u32s(uint32_t h, const uint32_t *v, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		h ^= v[i] + 0x9e3779b9u + (h << 6) + (h >> 2);
	}
	return h;
}

static uint32_t hash_u64(uint32_t h, uint64_t v)
{
	uint32_t w[2] = { (uint32_t)v, (uint32_t)(v >> 32) };
	return hash_u32s(h, w, 2);
}

/* ---- GPU types and id sets ------------------------------------------------ */

static uint32_t gtype_intern(struct sched_cluster *c, uint32_t model, uint32_t mem, uint16_t cc,
                             uint32_t prec)
{
	for (uint32_t i = 0; i < c->ngtypes; i++) {
		const struct gtype *g = &c->gtypes[i];
		if (g->model == model && g->memory_mib == mem && g->cc == cc &&
		    g->precisions == prec)
			return i;
	}
	if (vec_reserve(c, (void **)&c->gtypes, &c->gtypes_cap, c->ngtypes + 1,
	                sizeof *c->gtypes) ||
	    vec_reserve(c, (void **)&c->gtype_pools, &c->gtype_pools_cap, c->ngtypes + 1,
	                sizeof *c->gtype_pools))
		return NONE32;
	c->gtypes[c->ngtypes] = (struct gtype){ model, mem, cc, prec };
	c->gtype_pools[c->ngtypes] = (struct gpools){ NULL, 0, 0 };
	return c->ngtypes++;
}

/* Interns a sorted id list; takes ownership of ids on success (ids may be
 * freed when an equal set exists). Returns the set id or NONE32. */
static uint32_t idset_intern(struct sched_cluster *c, uint32_t *ids, uint32_t n)
{
	uint32_t h = hash_u32s(n, ids, n);
	for (uint32_t i = 0; i < c->nidsets; i++) {
		struct idset *s = &c->idsets[i];
		if (s->hash == h && s->n == n && (!n || !memcmp(s->ids, ids, n * sizeof *ids))) {
			mem_free(c, ids, (size_t)n * sizeof *ids);
			return i;
		}
	}
	if (vec_reserve(c, (void **)&c->idsets, &c->idsets_cap, c->nidsets + 1, sizeof *c->idsets))
		return NONE32;
	c->idsets[c->nidsets] = (struct idset){ ids, n, h };
	return c->nidsets++;
}

/* ---- pools ------------------------------------------------------------------ */

static void price_band(int64_t p, uint16_t *band, int64_t *lo, int64_t *hi)
{
	if (p < 4) {
		*band = (uint16_t)p;
		*lo = p;
		*hi = p + 1;
		return;
	}
	int msb = 63 - __builtin_clzll((uint64_t)p);
	int64_t top = p >> (msb - 2); /* 4..7: four bands per doubling */
	*band = (uint16_t)(msb * 4 + (int)(top - 4));
	*lo = top << (msb - 2);
	*hi = (top + 1) << (msb - 2);
}

static uint32_t pool_hash(uint32_t gtype, uint32_t region, uint32_t taintset, bool verified,
                          uint16_t band, uint8_t topo)
{
	uint32_t v[6] = { gtype, region, taintset, verified, band, topo };
	return hash_u32s(7, v, 6);
}

static uint32_t pool_find(const struct sched_cluster *c, uint32_t gtype, uint32_t region,
                          uint32_t taintset, bool verified, uint16_t band, uint8_t topo)
{
	if (!c->npool_slots)
		return NONE32;
	uint32_t mask = c->npool_slots - 1;
	for (uint32_t i = pool_hash(gtype, region, taintset, verified, band, topo) & mask;;
	     i = (i + 1) & mask) {
		uint32_t v = c->pool_slots[i];
		if (!v)
			return NONE32;
		const struct pool *p = &c->pools[v - 1];
		if (p->gtype == gtype && p->region == region && p->taintset == taintset &&
		    p->verified == verified && p->price_band == band && p->topo == topo)
			return v - 1;
	}
}

static void pool_slot_insert(uint32_t *slots, uint32_t nslots, const struct pool *p, uint32_t id)
{
	uint32_t mask = nslots - 1;
	uint32_t i =
	    pool_hash(p->gtype, p->region, p->taintset, p->verified, p->price_band, p->topo) & mask;
	while (slots[i])
		i = (i + 1) & mask;
	slots[i] = id + 1;
}

/* Finds or creates the pool and makes sure it has a bucket for size free
 * GPUs. Returns the pool id or NONE32 when out of memory. */
static uint32_t pool_get(struct sched_cluster *c, uint32_t gtype, uint32_t region,
                         uint32_t taintset, bool verified, int64_t price, uint8_t topo,
                         uint32_t size)
{
	uint16_t band;
	int64_t lo, hi;
	price_band(price, &band, &lo, &hi);
	uint32_t id = pool_find(c, gtype, region, taintset, verified, band, topo);
	if (id == NONE32) {
		if ((uint64_t)(c->npools + 1) * 2 > c->npool_slots) {
			uint32_t ns = c->npool_slots ? c->npool_slots * 2 : 64;
			uint32_t *slots = mem_calloc(c, (size_t)ns * sizeof *slots);
			if (!slots)
				return NONE32;
			for (uint32_t i = 0; i < c->npools; i++)
				pool_slot_insert(slots, ns, &c->pools[i], i);
			mem_free(c, c->pool_slots, (size_t)c->npool_slots * sizeof *slots);
			c->pool_slots = slots;
			c->npool_slots = ns;
		}
		struct gpools *gp = &c->gtype_pools[gtype];
		uint32_t ri;
		for (ri = 0; ri < gp->nr && gp->r[ri].region != region; ri++)
			;
		if (ri == gp->nr) {
			if (vec_reserve(c, (void **)&gp->r, &gp->rcap, gp->nr + 1, sizeof *gp->r))
				return NONE32;
			gp->r[gp->nr++] = (struct rpools){ region, NULL, 0, 0 };
		}
		struct rpools *rp = &gp->r[ri];
		if (vec_reserve(c, (void **)&c->pools, &c->pools_cap, c->npools + 1,
		                sizeof *c->pools) ||
		    vec_reserve(c, (void **)&rp->ids, &rp->cap, rp->n + 1, sizeof *rp->ids))
			return NONE32;
		id = c->npools++;
		uint32_t at = rp->n++;
		while (at > 0 && c->pools[rp->ids[at - 1]].price_lo > lo) {
			rp->ids[at] = rp->ids[at - 1];
			at--;
		}
		rp->ids[at] = id;
		struct pool *p = &c->pools[id];
		memset(p, 0, sizeof *p);
		p->gtype = gtype;
		p->region = region;
		p->taintset = taintset;
		p->verified = verified;
		p->topo = topo;
		p->price_band = band;
		p->price_lo = lo;
		p->price_hi = hi;
		pool_slot_insert(c->pool_slots, c->npool_slots, p, id);
		c->pool_gen++;
	}
	struct pool *p = &c->pools[id];
	if (size + 1 > p->nb) {
		struct bucket *b =
		    mem_realloc(c, p->b, (size_t)p->nb * sizeof *b, (size_t)(size + 1) * sizeof *b);
		if (!b)
			return NONE32;
		for (uint32_t f = p->nb; f <= size; f++)
			b[f] = (struct bucket){ NULL, 0, 0 };
		p->b = b;
		p->nb = size + 1;
	}
	return id;
}

/* Bucket arrays are sized for every member of the pool, so moving a part
 * between buckets never allocates (cycles must not fail halfway). */
static int pool_reserve_members(struct sched_cluster *c, uint32_t pid, uint32_t extra)
{
	struct pool *p = &c->pools[pid];
	for (uint32_t f = 0; f < p->nb; f++)
		if (vec_reserve(c, (void **)&p->b[f].items, &p->b[f].cap, p->members + extra,
		                sizeof(uint32_t)))
			return -ENOMEM;
	return 0;
}

static void bucket_add(struct sched_cluster *c, uint32_t slot, uint32_t pi)
{
	struct part *pt = &c->nodes[slot].parts[pi];
	struct pool *p = &c->pools[pt->pool];
	uint32_t f = popcount64(c->nodes[slot].free_mask & pt->mask);
	struct bucket *b = &p->b[f];
	pt->bfree = (uint8_t)f;
	pt->bpos = b->len;
	b->items[b->len++] = PREF(slot, pi);
	if (f)
		p->nonempty |= 1ull << (f - 1);
}

static void bucket_del(struct sched_cluster *c, uint32_t slot, uint32_t pi)
{
	struct part *pt = &c->nodes[slot].parts[pi];
	struct pool *p = &c->pools[pt->pool];
	struct bucket *b = &p->b[pt->bfree];
	uint32_t last = b->items[--b->len];
	if (pt->bpos != b->len) {
		b->items[pt->bpos] = last;
		c->nodes[PREF_NODE(last)].parts[PREF_PART(last)].bpos = pt->bpos;
	}
	if (!b->len && pt->bfree)
		p->nonempty &= ~(1ull << (pt->bfree - 1));
}

void index_node_refresh(struct sched_cluster *c, uint32_t slot)
{
	struct node *n = &c->nodes[slot];
	for (uint32_t i = 0; i < n->nparts; i++) {
		struct part *pt = &n->parts[i];
		if (pt->pool == NONE32)
			continue;
		if (pt->bfree == popcount64(n->free_mask & pt->mask))
			continue;
		bucket_del(c, slot, i);
		bucket_add(c, slot, i);
	}
}

/* Counts a member's labels in (delta 1) or out (delta -1) of the pool.
 * Room was reserved by index_node_prepare. */
static void pool_labels_add(struct pool *p, const struct node *n, int delta)
{
	for (uint32_t l = 0; l < n->nlabels; l++) {
		uint32_t id = n->labels[l], lo = 0, hi = p->nlc;
		while (lo < hi) {
			uint32_t mid = (lo + hi) / 2;
			if (p->lc[mid].label < id)
				lo = mid + 1;
			else
				hi = mid;
		}
		if (lo < p->nlc && p->lc[lo].label == id) {
			p->lc[lo].count += (uint32_t)delta;
			if (!p->lc[lo].count) {
				memmove(&p->lc[lo], &p->lc[lo + 1],
				        (p->nlc - lo - 1) * sizeof *p->lc);
				p->nlc--;
			}
		} else if (delta > 0) {
			memmove(&p->lc[lo + 1], &p->lc[lo], (p->nlc - lo) * sizeof *p->lc);
			p->lc[lo] = (struct lcount){ id, 1 };
			p->nlc++;
		}
	}
}

static void index_node_remove(struct sched_cluster *c, uint32_t slot)
{
	struct node *n = &c->nodes[slot];
	for (uint32_t l = 0; l < n->nleases; l++)
		pool_count_lease(c, slot, n->leases[l].mask, n->leases[l].job, -1);
	for (uint32_t i = 0; i < n->nparts; i++) {
		struct part *pt = &n->parts[i];
		if (pt->pool == NONE32)
			continue;
		bucket_del(c, slot, i);
		c->pools[pt->pool].members--;
		pool_labels_add(&c->pools[pt->pool], n, -1);
		pt->pool = NONE32;
	}
}

/* Resolves (and creates) the pools of a node's parts and reserves bucket
 * room, without indexing. On -ENOMEM nothing logical changed. */
static int index_node_prepare(struct sched_cluster *c, struct node *n, uint32_t *pools_out)
{
	for (uint32_t i = 0; i < n->nparts; i++) {
		const struct part *pt = &n->parts[i];
		uint32_t pid = pool_get(c, pt->gtype, n->region, n->taintset, n->verified,
		                        n->price_micros, pt->max_group, popcount64(pt->mask));
		if (pid == NONE32 || pool_reserve_members(c, pid, n->nparts))
			return -ENOMEM;
		struct pool *pl = &c->pools[pid];
		if (vec_reserve(c, (void **)&pl->lc, &pl->lc_cap, pl->nlc + n->nlabels * n->nparts,
		                sizeof *pl->lc))
			return -ENOMEM;
		pools_out[i] = pid;
	}
	return 0;
}

void pool_count_lease(struct sched_cluster *c, uint32_t node_slot, uint64_t mask, uint32_t job_slot,
                      int sign)
{
	const struct node *n = &c->nodes[node_slot];
	const struct job *j = &c->jobs[job_slot];
	const struct jclass *k = &c->classes[j->cls];
	for (uint32_t i = 0; i < n->nparts; i++) {
		const struct part *pt = &n->parts[i];
		uint32_t g = popcount64(mask & pt->mask);
		if (pt->pool == NONE32 || !g)
			continue;
		struct pool *p = &c->pools[pt->pool];
		uint32_t delta = sign > 0 ? g : (uint32_t)-g;
		if (j->state == SCHED_JOB_PREEMPTING)
			p->stopping_gpus += delta;
		else if (k->preemptible)
			p->victim_gpus[k->prio] += delta;
	}
}

static void index_node_insert(struct sched_cluster *c, uint32_t slot, const uint32_t *pools)
{
	struct node *n = &c->nodes[slot];
	for (uint32_t i = 0; i < n->nparts; i++) {
		struct part *pt = &n->parts[i];
		struct pool *p = &c->pools[pools[i]];
		pt->pool = pools[i];
		p->members++;
		pool_labels_add(p, n, 1);
		for (int k = 0; k < SCHED_PREC_COUNT; k++) {
			if (pt->tflops[k] > p->tflops_max[k]) {
				p->tflops_max[k] = pt->tflops[k];
				c->pool_gen++; /* classes may now accept this pool */
			}
		}
		bucket_add(c, slot, i);
	}
	for (uint32_t l = 0; l < n->nleases; l++)
		pool_count_lease(c, slot, n->leases[l].mask, n->leases[l].job, 1);
}

/* ---- nodes ----------------------------------------------------------------- */

static bool valid_string(const char *s)
{
	return s && *s && strlen(s) <= SCHED_MAX_STRING_BYTES;
}

static int validate_strings(const char *const *s, uint32_t n, const char *name,
                            struct sched_error *err)
{
	if (n > SCHED_MAX_STRINGS) {
		set_err(err, name, "at most %d entries, got %u", SCHED_MAX_STRINGS, n);
		return -EINVAL;
	}
	if (n && !s) {
		set_err(err, name, "%u entries announced but none given", n);
		return -EINVAL;
	}
	for (uint32_t i = 0; i < n; i++) {
		if (!valid_string(s[i])) {
			char f[64];
			snprintf(f, sizeof f, "%s[%u]", name, i);
			set_err(err, f, "must be a non-empty string of at most %d bytes",
			        SCHED_MAX_STRING_BYTES);
			return -EINVAL;
		}
	}
	return 0;
}

int sched_node_validate(const struct sched_node_spec *s, struct sched_error *err)
{
	if (!s->id) {
		set_err(err, "id", "must not be 0");
		return -EINVAL;
	}
	if (!valid_string(s->region)) {
		set_err(err, "region", "must be a non-empty string of at most %d bytes",
		        SCHED_MAX_STRING_BYTES);
		return -EINVAL;
	}
	if ((unsigned)s->state >= SCHED_NODE_STATE_COUNT) {
		set_err(err, "state", "unknown node state %d", (int)s->state);
		return -EINVAL;
	}
	if (s->price_micros <= 0 || s->price_micros > (int64_t)1e15) {
		set_err(err, "price_micros", "must be between 1 and 1e15, got %lld",
		        (long long)s->price_micros);
		return -EINVAL;
	}
	if (s->reliability_ppm > 1000000) {
		set_err(err, "reliability_ppm", "must be at most 1000000, got %u",
		        s->reliability_ppm);
		return -EINVAL;
	}
	if (s->ngpus < 1 || s->ngpus > SCHED_MAX_GPUS_PER_NODE || !s->gpus) {
		set_err(err, "ngpus", "must be between 1 and %d, got %u", SCHED_MAX_GPUS_PER_NODE,
		        s->ngpus);
		return -EINVAL;
	}
	for (uint32_t i = 0; i < s->ngpus; i++) {
		const struct sched_gpu_spec *g = &s->gpus[i];
		char f[64];
		if (!valid_string(g->model)) {
			snprintf(f, sizeof f, "gpus[%u].model", i);
			set_err(err, f, "must be a non-empty string of at most %d bytes",
			        SCHED_MAX_STRING_BYTES);
			return -EINVAL;
		}
		if (!g->memory_mib) {
			snprintf(f, sizeof f, "gpus[%u].memory_mib", i);
			set_err(err, f, "must be greater than 0");
			return -EINVAL;
		}
		if (g->compute_cap < 30 || g->compute_cap > 150) {
			snprintf(f, sizeof f, "gpus[%u].compute_cap", i);
			set_err(err, f, "must be between 30 and 150 (major*10+minor), got %u",
			        g->compute_cap);
			return -EINVAL;
		}
		if (!g->precisions || g->precisions >> SCHED_PREC_COUNT) {
			snprintf(f, sizeof f, "gpus[%u].precisions", i);
			set_err(err, f, "must be a non-empty mask of known precisions, got 0x%x",
			        g->precisions);
			return -EINVAL;
		}
		for (int k = 0; k < SCHED_PREC_COUNT; k++) {
			if (!(g->tflops[k] >= 0 && g->tflops[k] < 1e6f)) {
				snprintf(f, sizeof f, "gpus[%u].tflops[%d]", i, k);
				set_err(err, f, "must be between 0 and 1e6");
				return -EINVAL;
			}
		}
	}
	int rc = validate_strings(s->labels, s->nlabels, "labels", err);
	if (!rc)
		rc = validate_strings(s->taints, s->ntaints, "taints", err);
	for (uint32_t i = 0; !rc && i < s->nlabels; i++) {
		if (!strchr(s->labels[i], '=')) {
			char f[64];
			snprintf(f, sizeof f, "labels[%u]", i);
			set_err(err, f, "must have the form key=value, got \"%s\"", s->labels[i]);
			rc = -EINVAL;
		}
	}
	return rc;
}

static void node_free_arrays(struct sched_cluster *c, struct node *n)
{
	mem_free(c, n->gpus, (size_t)n->ngpus * sizeof *n->gpus);
	mem_free(c, n->labels, (size_t)n->nlabels * sizeof *n->labels);
	mem_free(c, n->parts, (size_t)n->nparts * sizeof *n->parts);
	mem_free(c, n->leases, (size_t)n->leases_cap * sizeof *n->leases);
	n->gpus = NULL;
	n->labels = NULL;
	n->parts = NULL;
	n->leases = NULL;
}

/* Builds the node record for spec into *n (fresh arrays). Keeps leases of
 * old (may be NULL). */
static int node_build(struct sched_cluster *c, const struct sched_node_spec *s,
                      const struct node *old, struct node *n)
{
	memset(n, 0, sizeof *n);
	n->id = s->id;
	n->state = (uint8_t)s->state;
	n->verified = s->verified;
	n->ngpus = (uint8_t)s->ngpus;
	n->price_micros = s->price_micros;
	n->reliability_ppm = s->reliability_ppm;
	n->resv_job = NONE32;
	n->region = strtab_intern(c, &c->strs, s->region);
	if (n->region == NONE32)
		return -ENOMEM;
	uint64_t all = s->ngpus == 64 ? ~0ull : (1ull << s->ngpus) - 1;
	n->free_mask = all;
	n->gpus = mem_alloc(c, (size_t)s->ngpus * sizeof *n->gpus);
	uint32_t parts_n = s->ngpus; /* allocated entries until the shrink */
	n->parts = mem_calloc(c, (size_t)parts_n * sizeof *n->parts);
	n->leases_cap = s->ngpus;
	n->leases = mem_alloc(c, (size_t)n->leases_cap * sizeof *n->leases);
	if (!n->gpus || !n->parts || !n->leases)
		goto oom;
	n->nparts = 0;
	uint32_t part_of[SCHED_MAX_GPUS_PER_NODE];
	for (uint32_t i = 0; i < s->ngpus; i++) {
		const struct sched_gpu_spec *g = &s->gpus[i];
		uint32_t model = strtab_intern(c, &c->strs, g->model);
		if (model == NONE32)
			goto oom;
		n->gpus[i] = *g;
		n->gpus[i].model = c->strs.strs[model];
		uint32_t gt = gtype_intern(c, model, g->memory_mib, g->compute_cap, g->precisions);
		if (gt == NONE32)
			goto oom;
		uint32_t pi;
		for (pi = 0; pi < n->nparts && n->parts[pi].gtype != gt; pi++)
			;
		if (pi == n->nparts) {
			n->nparts++;
			n->parts[pi].gtype = gt;
			n->parts[pi].pool = NONE32;
			for (int k = 0; k < SCHED_PREC_COUNT; k++)
				n->parts[pi].tflops[k] = g->tflops[k];
		}
		struct part *pt = &n->parts[pi];
		pt->mask |= 1ull << i;
		for (int k = 0; k < SCHED_PREC_COUNT; k++)
			if (g->tflops[k] < pt->tflops[k])
				pt->tflops[k] = g->tflops[k];
		part_of[i] = pi;
	}
	for (uint32_t pi = 0; pi < n->nparts; pi++) {
		uint32_t best = 0;
		for (uint32_t i = 0; i < s->ngpus; i++) {
			if (part_of[i] != pi || !s->gpus[i].nvlink_group)
				continue;
			uint32_t cnt = 0;
			for (uint32_t j = 0; j < s->ngpus; j++)
				cnt += part_of[j] == pi &&
				       s->gpus[j].nvlink_group == s->gpus[i].nvlink_group;
			if (cnt > best)
				best = cnt;
		}
		n->parts[pi].max_group = (uint8_t)best;
	}
	/* Shrink parts to what is used: bytes per node matter at scale. */
	struct part *parts = mem_realloc(c, n->parts, (size_t)s->ngpus * sizeof *n->parts,
	                                 (size_t)n->nparts * sizeof *n->parts);
	if (!parts)
		goto oom;
	n->parts = parts;
	parts_n = n->nparts;
	if (intern_list(c, s->labels, s->nlabels, &n->labels, &n->nlabels))
		goto oom;
	uint32_t *taints, ntaints;
	if (intern_list(c, s->taints, s->ntaints, &taints, &ntaints))
		goto oom;
	n->taintset = idset_intern(c, taints, ntaints);
	if (n->taintset == NONE32) {
		mem_free(c, taints, (size_t)ntaints * sizeof *taints);
		goto oom;
	}
	if (old) {
		memcpy(n->leases, old->leases, (size_t)old->nleases * sizeof *n->leases);
		n->nleases = old->nleases;
		for (uint32_t i = 0; i < old->nleases; i++)
			n->free_mask &= ~old->leases[i].mask;
	}
	return 0;
oom:
	mem_free(c, n->parts, (size_t)parts_n * sizeof *n->parts);
	n->parts = NULL;
	n->nparts = 0;
	node_free_arrays(c, n);
	return -ENOMEM;
}

/* Running jobs must still fit the replaced node: same region for gangs,
 * their GPUs inside one part that passes their filters. */
static int node_keeps_leases(const struct sched_cluster *c, const struct node *old,
                             const struct node *n, struct sched_error *err)
{
	for (uint32_t l = 0; l < old->nleases; l++) {
		const struct job *j = &c->jobs[old->leases[l].job];
		const struct jclass *k = &c->classes[j->cls];
		uint64_t mask = old->leases[l].mask;
		bool ok = k->nodes == 1 || n->region == old->region;
		bool in_part = false;
		for (uint32_t p = 0; ok && p < n->nparts && !in_part; p++)
			in_part = (mask & ~n->parts[p].mask) == 0 &&
			          restore_reason(c, n, &n->parts[p], k) == SCHED_R_COUNT &&
			          pick_gpus(n, &n->parts[p], k, mask) == mask;
		if (!ok || !in_part) {
			set_err(err, "gpus",
			        "job %llu runs on GPUs 0x%llx of node %llu and would no longer fit",
			        (unsigned long long)j->id, (unsigned long long)mask,
			        (unsigned long long)old->id);
			return -EBUSY;
		}
	}
	return 0;
}

int sched_node_upsert(struct sched_cluster *c, const struct sched_node_spec *spec,
                      struct sched_error *err)
{
	int rc = sched_node_validate(spec, err);
	if (rc)
		return rc;
	uint32_t slot = idmap_get(&c->node_map, spec->id);
	struct node *old = slot == NONE32 ? NULL : &c->nodes[slot];
	if (old) {
		uint64_t all = spec->ngpus == 64 ? ~0ull : (1ull << spec->ngpus) - 1;
		for (uint32_t i = 0; i < old->nleases; i++) {
			if (old->leases[i].mask & ~all) {
				set_err(
				    err, "ngpus",
				    "node %llu has running work on GPUs beyond the new count %u",
				    (unsigned long long)spec->id, spec->ngpus);
				return -EBUSY;
			}
		}
	}
	struct node n;
	if (node_build(c, spec, old, &n))
		return -ENOMEM;
	if (old && (rc = node_keeps_leases(c, old, &n, err)) != 0) {
		node_free_arrays(c, &n);
		return rc;
	}
	uint32_t pools[SCHED_MAX_GPUS_PER_NODE];
	if (n.state == SCHED_NODE_READY && index_node_prepare(c, &n, pools))
		goto oom;
	if (!old) {
		if (idmap_reserve(c, &c->node_map))
			goto oom;
		if (!c->nnode_free && vec_reserve(c, (void **)&c->nodes, &c->nodes_cap,
		                                  c->nnodes_slots + 1, sizeof *c->nodes))
			goto oom;
		/* the free-slot stack must be able to take this slot back later */
		if (vec_reserve(c, (void **)&c->node_free, &c->node_free_cap, c->nodes_cap,
		                sizeof *c->node_free))
			goto oom;
		slot = c->nnode_free ? c->node_free[--c->nnode_free] : c->nnodes_slots++;
		idmap_put(&c->node_map, spec->id, slot);
		c->nodes_live++;
	} else {
		index_node_remove(c, slot);
		c->nodes_by_state[old->state]--;
		c->gpus_total -= old->ngpus;
		/* reservations are per cycle; a changed node simply loses its own */
		n.resv_mask = old->resv_mask;
		n.resv_at_us = old->resv_at_us;
		n.resv_job = old->resv_job;
		n.resv_epoch = old->resv_epoch;
		n.stamp = old->stamp;
		node_free_arrays(c, old);
	}
	c->nodes[slot] = n;
	c->nodes_by_state[n.state]++;
	c->gpus_total += n.ngpus;
	if (n.state == SCHED_NODE_READY)
		index_node_insert(c, slot, pools);
	c->fleet_gen++;
	return 0;
oom:
	node_free_arrays(c, &n);
	return -ENOMEM;
}

int sched_node_set_state(struct sched_cluster *c, uint64_t node_id, enum sched_node_state state)
{
	uint32_t slot = idmap_get(&c->node_map, node_id);
	if (slot == NONE32)
		return -ENOENT;
	if ((unsigned)state >= SCHED_NODE_STATE_COUNT)
		return -EINVAL;
	struct node *n = &c->nodes[slot];
	if (n->state == state)
		return 0;
	if (state == SCHED_NODE_READY) {
		uint32_t pools[SCHED_MAX_GPUS_PER_NODE];
		if (index_node_prepare(c, n, pools))
			return -ENOMEM;
		index_node_insert(c, slot, pools);
	} else if (n->state == SCHED_NODE_READY) {
		index_node_remove(c, slot);
	}
	c->nodes_by_state[n->state]--;
	n->state = (uint8_t)state;
	c->nodes_by_state[n->state]++;
	return 0;
}

int sched_node_remove(struct sched_cluster *c, uint64_t node_id)
{
	uint32_t slot = idmap_get(&c->node_map, node_id);
	if (slot == NONE32)
		return -ENOENT;
	struct node *n = &c->nodes[slot];
	if (n->nleases)
		return -EBUSY;
	index_node_remove(c, slot);
	c->nodes_by_state[n->state]--;
	c->gpus_total -= n->ngpus;
	node_free_arrays(c, n);
	idmap_del(&c->node_map, node_id);
	memset(n, 0, sizeof *n);
	n->resv_job = NONE32;
	c->node_free[c->nnode_free++] = slot;
	c->nodes_live--;
	c->fleet_gen++;
	return 0;
}

/* ---- tenants ----------------------------------------------------------------- */

double tenant_usage_at(const struct sched_cluster *c, const struct tenant *t, int64_t now_us)
{
	if (now_us <= t->usage_at)
		return t->usage;
	double h = (double)c->policy.fairshare_half_life_us / 1e6;
	double dt = (double)(now_us - t->usage_at) / 1e6;
	double d = exp2(-dt / h);
	return t->usage * d + (double)t->running_gpus * (h / 0.69314718055994530942) * (1.0 - d);
}

static void tenant_advance(struct sched_cluster *c, struct tenant *t, int64_t now_us)
{
	if (now_us <= t->usage_at)
		return;
	t->usage = tenant_usage_at(c, t, now_us);
	t->usage_at = now_us;
}

/* Returns the tenant slot, creating it; NONE32 when out of memory. */
static uint32_t tenant_get(struct sched_cluster *c, uint64_t id, bool *created)
{
	*created = false;
	uint32_t slot = idmap_get(&c->tenant_map, id);
	if (slot != NONE32)
		return slot;
	if (idmap_reserve(c, &c->tenant_map) ||
	    vec_reserve(c, (void **)&c->tenants, &c->tenants_cap, c->ntenants + 1,
	                sizeof *c->tenants))
		return NONE32;
	slot = c->ntenants++;
	c->tenants[slot] = (struct tenant){ .id = id, .shares = 1 };
	idmap_put(&c->tenant_map, id, slot);
	*created = true;
	return slot;
}

static void tenant_drop_last(struct sched_cluster *c)
{
	c->ntenants--;
	idmap_del(&c->tenant_map, c->tenants[c->ntenants].id);
}

int sched_tenant_set_shares(struct sched_cluster *c, uint64_t tenant_id, uint32_t shares)
{
	if (!tenant_id || shares < 1 || shares > 1000000)
		return -EINVAL;
	bool created;
	uint32_t slot = tenant_get(c, tenant_id, &created);
	if (slot == NONE32)
		return -ENOMEM;
	c->tenants[slot].shares = shares;
	return 0;
}

int sched_tenant_set_usage(struct sched_cluster *c, uint64_t tenant_id, double usage_gpu_s,
                           int64_t at_us)
{
	if (!tenant_id || !(usage_gpu_s >= 0 && usage_gpu_s < 1e18))
		return -EINVAL;
	bool created;
	uint32_t slot = tenant_get(c, tenant_id, &created);
	if (slot == NONE32)
		return -ENOMEM;
	c->tenants[slot].usage = usage_gpu_s;
	c->tenants[slot].usage_at = at_us;
	return 0;
}

double sched_tenant_usage(const struct sched_cluster *c, uint64_t tenant_id, int64_t now_us)
{
	uint32_t slot = idmap_get(&c->tenant_map, tenant_id);
	if (slot == NONE32)
		return -1;
	return tenant_usage_at(c, &c->tenants[slot], now_us);
}

/* ---- requirement classes --------------------------------------------------- */

static bool class_same(const struct jclass *a, const struct jclass *b)
{
	return a->kind == b->kind && a->precision == b->precision && a->prio == b->prio &&
	       a->preemptible == b->preemptible && a->nvlink == b->nvlink && a->gpus == b->gpus &&
	       a->nodes == b->nodes && a->min_mem == b->min_mem && a->min_cc == b->min_cc &&
	       a->min_tflops_gpu == b->min_tflops_gpu &&
	       a->min_tflops_total == b->min_tflops_total && a->max_price == b->max_price &&
	       a->pref_region == b->pref_region && a->nregions == b->nregions &&
	       a->nselectors == b->nselectors && a->ntolerations == b->ntolerations &&
	       (!a->nregions || !memcmp(a->regions, b->regions, a->nregions * 4)) &&
	       (!a->nselectors || !memcmp(a->selectors, b->selectors, a->nselectors * 4)) &&
	       (!a->ntolerations || !memcmp(a->tolerations, b->tolerations, a->ntolerations * 4)) &&
	       a->nspeeds == b->nspeeds &&
	       (!a->nspeeds || !memcmp(a->speeds, b->speeds, a->nspeeds * sizeof *a->speeds));
}

static uint32_t class_hash(const struct jclass *k)
{
	uint32_t v[12];
	float tg = k->min_tflops_gpu, tt = k->min_tflops_total;
	v[0] = k->kind | (uint32_t)k->precision << 8 | (uint32_t)k->prio << 16 |
	       (uint32_t)k->preemptible << 24 | (uint32_t)k->nvlink << 25;
	v[1] = k->gpus;
	v[2] = k->nodes;
	v[3] = k->min_mem;
	v[4] = k->min_cc;
	memcpy(&v[5], &tg, 4);
	memcpy(&v[6], &tt, 4);
	v[7] = k->pref_region;
	v[8] = k->nregions;
	v[9] = k->nselectors;
	v[10] = k->ntolerations;
	v[11] = 0;
	uint32_t h = hash_u32s(11, v, 12);
	h = hash_u64(h, (uint64_t)k->max_price);
	h = hash_u32s(h, k->regions, k->nregions);
	h = hash_u32s(h, k->selectors, k->nselectors);
	h = hash_u32s(h, k->tolerations, k->ntolerations);
	for (uint32_t i = 0; i < k->nspeeds; i++) {
		uint32_t w[3] = { k->speeds[i].model, k->speeds[i].cc, 0 };
		memcpy(&w[2], &k->speeds[i].speed, 4);
		h = hash_u32s(h, w, 3);
	}
	return h;
}

static void class_free_arrays(struct sched_cluster *c, struct jclass *k)
{
	mem_free(c, k->regions, (size_t)k->nregions * 4);
	mem_free(c, k->selectors, (size_t)k->nselectors * 4);
	mem_free(c, k->tolerations, (size_t)k->ntolerations * 4);
	mem_free(c, k->speeds, (size_t)k->nspeeds * sizeof *k->speeds);
	k->regions = k->selectors = k->tolerations = NULL;
	k->speeds = NULL;
	k->nspeeds = 0;
}

static int cmp_kspeed(const void *a, const void *b)
{
	const struct kspeed *x = a, *y = b;
	if (x->model != y->model)
		return x->model < y->model ? -1 : 1;
	return (x->cc > y->cc) - (x->cc < y->cc);
}

/* Interns the profile's models and sorts it so that equal profiles compare
 * equal. Returns 0 or -ENOMEM. */
static int intern_speeds(struct sched_cluster *c, const struct sched_job_spec *s, struct jclass *k)
{
	if (!s->nspeeds)
		return 0;
	struct kspeed *v = mem_alloc(c, (size_t)s->nspeeds * sizeof *v);
	if (!v)
		return -ENOMEM;
	for (uint32_t i = 0; i < s->nspeeds; i++) {
		const struct sched_speed *e = &s->speeds[i];
		v[i].model = NONE32;
		v[i].cc = 0;
		v[i].speed = e->speed;
		if (e->model && *e->model) {
			v[i].model = strtab_intern(c, &c->strs, e->model);
			if (v[i].model == NONE32) {
				mem_free(c, v, (size_t)s->nspeeds * sizeof *v);
				return -ENOMEM;
			}
		} else {
			v[i].cc = e->compute_cap;
		}
	}
	qsort(v, s->nspeeds, sizeof *v, cmp_kspeed);
	k->speeds = v;
	k->nspeeds = s->nspeeds;
	return 0;
}

float class_speed(const struct sched_cluster *c, const struct jclass *k, uint32_t gtype)
{
	const struct gtype *t = &c->gtypes[gtype];
	float by_cc = -1.0f;
	for (uint32_t i = 0; i < k->nspeeds; i++) {
		if (k->speeds[i].model == t->model)
			return k->speeds[i].speed;
		if (k->speeds[i].model == NONE32 && k->speeds[i].cc == t->cc)
			by_cc = k->speeds[i].speed;
	}
	return by_cc;
}

static uint32_t class_lookup(const struct sched_cluster *c, const struct jclass *k)
{
	if (!c->nclass_hslots)
		return NONE32;
	uint32_t mask = c->nclass_hslots - 1;
	for (uint32_t i = k->hash & mask;; i = (i + 1) & mask) {
		uint32_t v = c->class_slots[i];
		if (!v)
			return NONE32;
		if (v != UINT32_MAX && c->classes[v - 1].hash == k->hash &&
		    class_same(&c->classes[v - 1], k))
			return v - 1;
	}
}

static int class_hash_reserve(struct sched_cluster *c)
{
	/* slots hold live classes plus tombstones; rebuild at half full */
	uint32_t used = c->classes_live + c->class_tombs;
	if ((uint64_t)(used + 1) * 2 <= c->nclass_hslots)
		return 0;
	uint32_t ns = 64;
	while ((uint64_t)(c->classes_live + 1) * 4 > ns)
		ns *= 2;
	uint32_t *slots = mem_calloc(c, (size_t)ns * 4);
	if (!slots)
		return -ENOMEM;
	for (uint32_t id = 0; id < c->nclass_slots; id++) {
		if (!c->classes[id].refs)
			continue;
		uint32_t i = c->classes[id].hash & (ns - 1);
		while (slots[i])
			i = (i + 1) & (ns - 1);
		slots[i] = id + 1;
	}
	mem_free(c, c->class_slots, (size_t)c->nclass_hslots * 4);
	c->class_slots = slots;
	c->nclass_hslots = ns;
	c->class_tombs = 0;
	return 0;
}

static void egroup_free_arrays(struct sched_cluster *c, struct egroup *g)
{
	mem_free(c, g->regions, (size_t)g->nregions * 4);
	mem_free(c, g->tolerations, (size_t)g->ntolerations * 4);
	mem_free(c, g->elig, (size_t)g->elig_cap * 4);
	g->regions = g->tolerations = g->elig = NULL;
}

static uint64_t egroup_key(const struct jclass *k)
{
	uint64_t h = 1469598103934665603ull;
	uint64_t v[5];
	float t = k->need_tflops;
	uint32_t tb;
	memcpy(&tb, &t, 4);
	v[0] = k->min_mem | (uint64_t)k->min_cc << 32 | (uint64_t)k->precision << 48;
	v[1] = tb;
	v[2] = (uint64_t)k->max_price;
	v[3] = k->nregions;
	v[4] = k->ntolerations;
	for (int i = 0; i < 5; i++)
		h = (h ^ v[i]) * 1099511628211ull;
	for (uint32_t i = 0; i < k->nregions; i++)
		h = (h ^ k->regions[i]) * 1099511628211ull;
	for (uint32_t i = 0; i < k->ntolerations; i++)
		h = (h ^ (k->tolerations[i] | 1ull << 40)) * 1099511628211ull;
	return h == 0 || h == UINT64_MAX ? 1 : h;
}

static bool egroup_same(const struct egroup *g, const struct jclass *k)
{
	return g->min_mem == k->min_mem && g->min_cc == k->min_cc && g->precision == k->precision &&
	       g->need_tflops == k->need_tflops && g->max_price == k->max_price &&
	       g->nregions == k->nregions && g->ntolerations == k->ntolerations &&
	       (!k->nregions || !memcmp(g->regions, k->regions, k->nregions * 4)) &&
	       (!k->ntolerations || !memcmp(g->tolerations, k->tolerations, k->ntolerations * 4));
}

/* Returns the group for k with one more reference, or NONE32 (no memory). */
static uint32_t egroup_acquire(struct sched_cluster *c, const struct jclass *k)
{
	uint64_t key = egroup_key(k);
	uint32_t id = idmap_get(&c->eg_map, key);
	if (id != NONE32 && egroup_same(&c->egroups[id], k)) {
		c->egroups[id].refs++;
		return id;
	}
	bool mapped = id == NONE32; /* on a hash collision the new group stays unmapped */
	if (mapped && idmap_reserve(c, &c->eg_map))
		return NONE32;
	if (c->eg_free == NONE32 && vec_reserve(c, (void **)&c->egroups, &c->egroups_cap,
	                                        c->neg_slots + 1, sizeof *c->egroups))
		return NONE32;
	struct egroup g;
	memset(&g, 0, sizeof g);
	g.key = key;
	g.min_mem = k->min_mem;
	g.min_cc = k->min_cc;
	g.precision = k->precision;
	g.need_tflops = k->need_tflops;
	g.max_price = k->max_price;
	g.nregions = k->nregions;
	g.ntolerations = k->ntolerations;
	if (k->nregions) {
		g.regions = mem_alloc(c, (size_t)k->nregions * 4);
		if (!g.regions)
			return NONE32;
		memcpy(g.regions, k->regions, (size_t)k->nregions * 4);
	}
	if (k->ntolerations) {
		g.tolerations = mem_alloc(c, (size_t)k->ntolerations * 4);
		if (!g.tolerations) {
			egroup_free_arrays(c, &g);
			return NONE32;
		}
		memcpy(g.tolerations, k->tolerations, (size_t)k->ntolerations * 4);
	}
	if (c->eg_free != NONE32) {
		id = c->eg_free;
		c->eg_free = c->egroups[id].next_free;
	} else {
		id = c->neg_slots++;
	}
	g.refs = 1;
	g.next_free = NONE32;
	c->egroups[id] = g;
	if (mapped)
		idmap_put(&c->eg_map, key, id);
	return id;
}

static void egroup_release(struct sched_cluster *c, uint32_t id)
{
	struct egroup *g = &c->egroups[id];
	if (--g->refs)
		return;
	if (idmap_get(&c->eg_map, g->key) == id)
		idmap_del(&c->eg_map, g->key);
	egroup_free_arrays(c, g);
	memset(g, 0, sizeof *g);
	g->next_free = c->eg_free;
	c->eg_free = id;
}

static void class_release(struct sched_cluster *c, uint32_t id)
{
	struct jclass *k = &c->classes[id];
	if (--k->refs)
		return;
	egroup_release(c, k->eg);
	uint32_t mask = c->nclass_hslots - 1;
	for (uint32_t i = k->hash & mask;; i = (i + 1) & mask) {
		if (c->class_slots[i] == id + 1) {
			c->class_slots[i] = UINT32_MAX; /* tombstone */
			c->class_tombs++;
			break;
		}
	}
	class_free_arrays(c, k);
	memset(k, 0, sizeof *k);
	k->next_free = c->class_free;
	c->class_free = id;
	c->classes_live--;
}

/* Returns the class id for the spec with one more reference, or NONE32 on
 * out of memory. */
static uint32_t class_acquire(struct sched_cluster *c, const struct sched_job_spec *s)
{
	struct jclass k;
	memset(&k, 0, sizeof k);
	k.kind = (uint8_t)s->kind;
	k.precision = (uint8_t)s->precision;
	k.prio = (uint8_t)s->priority_class;
	k.preemptible = s->preemptible;
	k.nvlink = s->require_nvlink && s->gpus_per_node > 1;
	k.gpus = s->gpus_per_node;
	k.nodes = s->node_count;
	k.min_mem = s->min_memory_mib;
	k.min_cc = s->min_compute_cap;
	k.min_tflops_gpu = s->min_tflops_per_gpu;
	k.min_tflops_total = s->min_tflops_total;
	float per = s->min_tflops_total / (float)(s->gpus_per_node * s->node_count);
	k.need_tflops = per > s->min_tflops_per_gpu ? per : s->min_tflops_per_gpu;
	k.max_price = s->max_price_micros;
	k.pref_region = NONE32;
	if (s->preferred_region && *s->preferred_region) {
		k.pref_region = strtab_intern(c, &c->strs, s->preferred_region);
		if (k.pref_region == NONE32)
			return NONE32;
	}
	if (intern_list(c, s->regions, s->nregions, &k.regions, &k.nregions))
		return NONE32;
	if (intern_list(c, s->selectors, s->nselectors, &k.selectors, &k.nselectors))
		goto oom;
	if (intern_list(c, s->tolerations, s->ntolerations, &k.tolerations, &k.ntolerations))
		goto oom;
	if (intern_speeds(c, s, &k))
		goto oom;
	k.hash = class_hash(&k);
	if (!k.hash)
		k.hash = 1; /* 0 marks an unused slot */
	uint32_t id = class_lookup(c, &k);
	if (id != NONE32) {
		class_free_arrays(c, &k);
		c->classes[id].refs++;
		return id;
	}
	if (class_hash_reserve(c))
		goto oom;
	k.eg = egroup_acquire(c, &k);
	if (k.eg == NONE32)
		goto oom;
	if (c->class_free == NONE32 && vec_reserve(c, (void **)&c->classes, &c->classes_cap,
	                                           c->nclass_slots + 1, sizeof *c->classes)) {
		egroup_release(c, k.eg);
		goto oom;
	}
	if (c->class_free != NONE32) {
		id = c->class_free;
		c->class_free = c->classes[id].next_free;
	} else {
		id = c->nclass_slots++;
	}
	k.refs = 1;
	k.next_free = NONE32;
	c->classes[id] = k;
	uint32_t mask = c->nclass_hslots - 1;
	uint32_t i = k.hash & mask;
	while (c->class_slots[i] && c->class_slots[i] != UINT32_MAX)
		i = (i + 1) & mask;
	c->class_slots[i] = id + 1;
	c->classes_live++;
	return id;
oom:
	class_free_arrays(c, &k);
	return NONE32;
}

/* ---- jobs -------------------------------------------------------------------- */

int sched_job_validate(const struct sched_job_spec *s, struct sched_error *err)
{
	if (!s->id) {
		set_err(err, "id", "must not be 0");
		return -EINVAL;
	}
	if (!s->tenant_id) {
		set_err(err, "tenant_id", "must not be 0");
		return -EINVAL;
	}
	if ((unsigned)s->kind >= SCHED_JOB_KIND_COUNT) {
		set_err(err, "kind", "unknown job kind %d", (int)s->kind);
		return -EINVAL;
	}
	if (s->gpus_per_node < 1 || s->gpus_per_node > SCHED_MAX_GPUS_PER_NODE) {
		set_err(err, "gpus_per_node", "must be between 1 and %d, got %u",
		        SCHED_MAX_GPUS_PER_NODE, s->gpus_per_node);
		return -EINVAL;
	}
	if (s->node_count < 1 || s->node_count > SCHED_MAX_GANG_NODES) {
		set_err(err, "node_count", "must be between 1 and %d, got %u", SCHED_MAX_GANG_NODES,
		        s->node_count);
		return -EINVAL;
	}
	if (s->min_compute_cap && (s->min_compute_cap < 30 || s->min_compute_cap > 150)) {
		set_err(err, "min_compute_cap", "must be 0 or between 30 and 150, got %u",
		        s->min_compute_cap);
		return -EINVAL;
	}
	if ((unsigned)s->precision >= SCHED_PREC_COUNT) {
		set_err(err, "precision", "unknown precision %d", (int)s->precision);
		return -EINVAL;
	}
	if (!(s->min_tflops_per_gpu >= 0 && s->min_tflops_per_gpu < 1e6f)) {
		set_err(err, "min_tflops_per_gpu", "must be between 0 and 1e6");
		return -EINVAL;
	}
	if (!(s->min_tflops_total >= 0 && s->min_tflops_total < 1e9f)) {
		set_err(err, "min_tflops_total", "must be between 0 and 1e9");
		return -EINVAL;
	}
	if (s->max_price_micros < 0 || s->max_price_micros > (int64_t)1e15) {
		set_err(err, "max_price_micros", "must be between 0 (no cap) and 1e15, got %lld",
		        (long long)s->max_price_micros);
		return -EINVAL;
	}
	if (s->max_duration_us <= 0 || s->max_duration_us > (int64_t)366 * 86400 * 1000000) {
		set_err(err, "max_duration_us", "must be between 1 us and 366 days, got %lld",
		        (long long)s->max_duration_us);
		return -EINVAL;
	}
	if (s->priority_class >= SCHED_PRIO_CLASSES) {
		set_err(err, "priority_class", "must be between 0 and %d, got %u",
		        SCHED_PRIO_CLASSES - 1, s->priority_class);
		return -EINVAL;
	}
	if (s->preferred_region && *s->preferred_region && !valid_string(s->preferred_region)) {
		set_err(err, "preferred_region", "must be at most %d bytes",
		        SCHED_MAX_STRING_BYTES);
		return -EINVAL;
	}
	int rc = validate_strings(s->regions, s->nregions, "regions", err);
	if (!rc)
		rc = validate_strings(s->selectors, s->nselectors, "selectors", err);
	if (!rc)
		rc = validate_strings(s->tolerations, s->ntolerations, "tolerations", err);
	if (!rc && s->nspeeds > SCHED_MAX_STRINGS) {
		set_err(err, "speeds", "at most %d entries, got %u", SCHED_MAX_STRINGS, s->nspeeds);
		return -EINVAL;
	}
	if (!rc && s->nspeeds && !s->speeds) {
		set_err(err, "speeds", "%u entries announced but none given", s->nspeeds);
		return -EINVAL;
	}
	for (uint32_t i = 0; !rc && i < s->nspeeds; i++) {
		const struct sched_speed *e = &s->speeds[i];
		char f[64];
		if (!(e->speed > 0 && e->speed < 1e9f)) {
			snprintf(f, sizeof f, "speeds[%u].speed", i);
			set_err(err, f, "must be greater than 0 and below 1e9, got %g",
			        (double)e->speed);
			return -EINVAL;
		}
		if (e->model && *e->model && !valid_string(e->model)) {
			snprintf(f, sizeof f, "speeds[%u].model", i);
			set_err(err, f, "must be at most %d bytes", SCHED_MAX_STRING_BYTES);
			return -EINVAL;
		}
		if (!(e->model && *e->model) && (e->compute_cap < 30 || e->compute_cap > 150)) {
			snprintf(f, sizeof f, "speeds[%u].compute_cap", i);
			set_err(err, f, "must be between 30 and 150 when no model is given, got %u",
			        e->compute_cap);
			return -EINVAL;
		}
	}
	if (!rc) {
		for (uint32_t i = 0; i < s->nselectors; i++) {
			if (!strchr(s->selectors[i], '=')) {
				char f[64];
				snprintf(f, sizeof f, "selectors[%u]", i);
				set_err(err, f, "must have the form key=value, got \"%s\"",
				        s->selectors[i]);
				return -EINVAL;
			}
		}
	}
	return rc;
}

int sched_job_add(struct sched_cluster *c, const struct sched_job_spec *spec,
                  struct sched_error *err)
{
	int rc = sched_job_validate(spec, err);
	if (rc)
		return rc;
	if (idmap_get(&c->job_map, spec->id) != NONE32) {
		set_err(err, "id", "job %llu already exists", (unsigned long long)spec->id);
		return -EEXIST;
	}
	bool tcreated = false;
	uint32_t tslot = tenant_get(c, spec->tenant_id, &tcreated);
	if (tslot == NONE32)
		return -ENOMEM;
	uint32_t cls = class_acquire(c, spec);
	if (cls == NONE32)
		goto oom_tenant;
	struct jplace *place = mem_alloc(c, (size_t)spec->node_count * sizeof *place);
	if (!place)
		goto oom_class;
	if (idmap_reserve(c, &c->job_map) || vec_reserve(c, (void **)&c->pending, &c->pending_cap,
	                                                 c->npending + 1, sizeof *c->pending))
		goto oom_place;
	if (c->job_free == NONE32 &&
	    vec_reserve(c, (void **)&c->jobs, &c->jobs_cap, c->njob_slots + 1, sizeof *c->jobs))
		goto oom_place;
	uint32_t slot;
	if (c->job_free != NONE32) {
		slot = c->job_free;
		c->job_free = c->jobs[slot].next_free;
	} else {
		slot = c->njob_slots++;
	}
	struct job *j = &c->jobs[slot];
	memset(j, 0, sizeof *j);
	j->id = spec->id;
	j->seq = c->next_seq++;
	j->tenant = tslot;
	j->cls = cls;
	j->submit_us = spec->submit_us;
	j->max_dur_us = spec->max_duration_us;
	j->state = SCHED_JOB_PENDING;
	j->place = place;
	j->next_free = NONE32;
	j->pending_pos = c->npending;
	c->pending[c->npending++] = slot;
	c->pending_parts += spec->node_count;
	idmap_put(&c->job_map, spec->id, slot);
	return 0;
oom_place:
	mem_free(c, place, (size_t)spec->node_count * sizeof *place);
oom_class:
	class_release(c, cls);
oom_tenant:
	if (tcreated)
		tenant_drop_last(c);
	return -ENOMEM;
}

void job_unqueue(struct sched_cluster *c, uint32_t slot)
{
	struct job *j = &c->jobs[slot];
	uint32_t last = c->pending[--c->npending];
	c->pending[j->pending_pos] = last;
	c->jobs[last].pending_pos = j->pending_pos;
	c->pending_parts -= c->classes[j->cls].nodes;
	j->pending_pos = NONE32;
}

void job_apply_placement(struct sched_cluster *c, uint32_t slot, const struct jplace *pl,
                         uint32_t npl, int64_t now_us)
{
	struct job *j = &c->jobs[slot];
	if (j->state == SCHED_JOB_PENDING)
		job_unqueue(c, slot);
	struct tenant *t = &c->tenants[j->tenant];
	tenant_advance(c, t, now_us);
	j->state = SCHED_JOB_RUNNING;
	for (uint32_t i = 0; i < npl; i++) {
		j->place[i] = pl[i];
		struct node *n = &c->nodes[pl[i].node];
		n->free_mask &= ~pl[i].mask;
		n->leases[n->nleases++] = (struct nlease){ slot, pl[i].mask };
		t->running_gpus += popcount64(pl[i].mask);
		index_node_refresh(c, pl[i].node);
		pool_count_lease(c, pl[i].node, pl[i].mask, slot, 1);
	}
	j->start_us = now_us;
	j->deadline_us = now_us + j->max_dur_us;
	j->preempt_for = 0;
	c->nrunning++;
}

void job_release(struct sched_cluster *c, uint32_t slot, int64_t now_us)
{
	struct job *j = &c->jobs[slot];
	const struct jclass *k = &c->classes[j->cls];
	struct tenant *t = &c->tenants[j->tenant];
	tenant_advance(c, t, now_us);
	for (uint32_t i = 0; i < k->nodes; i++) {
		struct node *n = &c->nodes[j->place[i].node];
		pool_count_lease(c, j->place[i].node, j->place[i].mask, slot, -1);
		for (uint32_t l = 0; l < n->nleases; l++) {
			if (n->leases[l].job == slot) {
				n->leases[l] = n->leases[--n->nleases];
				break;
			}
		}
		n->free_mask |= j->place[i].mask;
		t->running_gpus -= popcount64(j->place[i].mask);
		index_node_refresh(c, j->place[i].node);
	}
	c->nrunning--;
	j->state = 0;
	j->preempt_for = 0;
}

void job_destroy(struct sched_cluster *c, uint32_t slot)
{
	struct job *j = &c->jobs[slot];
	struct jclass *k = &c->classes[j->cls];
	mem_free(c, j->place, (size_t)k->nodes * sizeof *j->place);
	idmap_del(&c->job_map, j->id);
	class_release(c, j->cls);
	memset(j, 0, sizeof *j);
	j->next_free = c->job_free;
	c->job_free = slot;
}

int sched_job_cancel(struct sched_cluster *c, uint64_t job_id, int64_t now_us)
{
	uint32_t slot = idmap_get(&c->job_map, job_id);
	if (slot == NONE32)
		return -ENOENT;
	struct job *j = &c->jobs[slot];
	if (j->state == SCHED_JOB_PENDING)
		job_unqueue(c, slot);
	else
		job_release(c, slot, now_us);
	job_destroy(c, slot);
	return 0;
}

int sched_lease_end(struct sched_cluster *c, uint64_t job_id, int64_t now_us, bool requeue)
{
	uint32_t slot = idmap_get(&c->job_map, job_id);
	if (slot == NONE32)
		return -ENOENT;
	struct job *j = &c->jobs[slot];
	if (j->state == SCHED_JOB_PENDING)
		return -EINVAL;
	if (requeue && vec_reserve(c, (void **)&c->pending, &c->pending_cap, c->npending + 1,
	                           sizeof *c->pending))
		return -ENOMEM;
	job_release(c, slot, now_us);
	if (!requeue) {
		job_destroy(c, slot);
		return 0;
	}
	j->state = SCHED_JOB_PENDING;
	j->pending_pos = c->npending;
	c->pending[c->npending++] = slot;
	c->pending_parts += c->classes[j->cls].nodes;
	return 0;
}

int sched_lease_start(struct sched_cluster *c, uint64_t job_id, const struct sched_placement *pl,
                      uint32_t npl, int64_t start_us, struct sched_error *err)
{
	uint32_t slot = idmap_get(&c->job_map, job_id);
	if (slot == NONE32) {
		set_err(err, "job_id", "unknown job %llu", (unsigned long long)job_id);
		return -ENOENT;
	}
	struct job *j = &c->jobs[slot];
	const struct jclass *k = &c->classes[j->cls];
	if (j->state != SCHED_JOB_PENDING) {
		set_err(err, "job_id", "job %llu is already running", (unsigned long long)job_id);
		return -EBUSY;
	}
	if (npl != k->nodes) {
		set_err(err, "placement", "the job needs %u nodes, got %u", k->nodes, npl);
		return -EINVAL;
	}
	struct jplace tmp[SCHED_MAX_GANG_NODES];
	uint32_t region = NONE32;
	for (uint32_t i = 0; i < npl; i++) {
		char f[64];
		snprintf(f, sizeof f, "placement[%u]", i);
		uint32_t ns = idmap_get(&c->node_map, pl[i].node_id);
		if (ns == NONE32) {
			set_err(err, f, "unknown node %llu", (unsigned long long)pl[i].node_id);
			return -ENOENT;
		}
		const struct node *n = &c->nodes[ns];
		for (uint32_t q = 0; q < i; q++) {
			if (tmp[q].node == ns) {
				set_err(err, f, "node %llu appears twice",
				        (unsigned long long)pl[i].node_id);
				return -EINVAL;
			}
		}
		uint64_t all = n->ngpus == 64 ? ~0ull : (1ull << n->ngpus) - 1;
		if (pl[i].gpu_mask & ~all) {
			set_err(err, f, "GPUs 0x%llx do not exist on node %llu (it has %u)",
			        (unsigned long long)(pl[i].gpu_mask & ~all),
			        (unsigned long long)n->id, n->ngpus);
			return -EINVAL;
		}
		if (popcount64(pl[i].gpu_mask) != k->gpus) {
			set_err(err, f, "needs %u GPUs, got %u", k->gpus,
			        popcount64(pl[i].gpu_mask));
			return -EINVAL;
		}
		if (pl[i].gpu_mask & ~n->free_mask) {
			set_err(err, f, "GPUs 0x%llx are not free on node %llu",
			        (unsigned long long)(pl[i].gpu_mask & ~n->free_mask),
			        (unsigned long long)n->id);
			return -EBUSY;
		}
		/* the job's hard constraints, except what may have changed since the
		 * lease began: node state, verification and price */
		bool in_part = false;
		enum sched_reason why = SCHED_R_GPU_COUNT;
		for (uint32_t p = 0; p < n->nparts && !in_part; p++) {
			const struct part *pt = &n->parts[p];
			enum sched_reason r = restore_reason(c, n, pt, k);
			if (r != SCHED_R_COUNT) {
				why = r;
				continue;
			}
			in_part = (pl[i].gpu_mask & ~pt->mask) == 0 &&
			          pick_gpus(n, pt, k, pl[i].gpu_mask) == pl[i].gpu_mask;
		}
		if (!in_part) {
			set_err(err, f, "GPUs 0x%llx of node %llu do not satisfy the job: %s",
			        (unsigned long long)pl[i].gpu_mask, (unsigned long long)n->id,
			        sched_reason_text(why));
			return -EINVAL;
		}
		if (region != NONE32 && n->region != region) {
			set_err(err, f, "a gang must stay in one region");
			return -EINVAL;
		}
		region = n->region;
		tmp[i] = (struct jplace){ ns, pl[i].gpu_mask };
	}
	job_apply_placement(c, slot, tmp, npl, start_us);
	return 0;
}

/* ---- queries ------------------------------------------------------------------- */

int sched_job_state(const struct sched_cluster *c, uint64_t job_id)
{
	uint32_t slot = idmap_get(&c->job_map, job_id);
	if (slot == NONE32)
		return -ENOENT;
	return c->jobs[slot].state;
}

int sched_job_placement(const struct sched_cluster *c, uint64_t job_id, struct sched_placement *out,
                        uint32_t max)
{
	uint32_t slot = idmap_get(&c->job_map, job_id);
	if (slot == NONE32)
		return -ENOENT;
	const struct job *j = &c->jobs[slot];
	if (j->state == SCHED_JOB_PENDING)
		return -EINVAL;
	const struct jclass *k = &c->classes[j->cls];
	for (uint32_t i = 0; i < k->nodes && i < max; i++)
		out[i] =
		    (struct sched_placement){ c->nodes[j->place[i].node].id, j->place[i].mask };
	return (int)k->nodes;
}

int sched_node_free_mask(const struct sched_cluster *c, uint64_t node_id, uint64_t *free_mask)
{
	uint32_t slot = idmap_get(&c->node_map, node_id);
	if (slot == NONE32)
		return -ENOENT;
	*free_mask = c->nodes[slot].free_mask;
	return 0;
}

void sched_get_stats(const struct sched_cluster *c, struct sched_stats *out)
{
	memset(out, 0, sizeof *out);
	out->nodes = c->nodes_live;
	memcpy(out->nodes_by_state, c->nodes_by_state, sizeof out->nodes_by_state);
	out->gpus_total = c->gpus_total;
	for (uint32_t p = 0; p < c->npools; p++) {
		const struct pool *pl = &c->pools[p];
		for (uint32_t f = 1; f < pl->nb; f++)
			out->gpus_free += (uint64_t)f * pl->b[f].len;
	}
	out->jobs_pending = c->npending;
	out->jobs_running = c->nrunning;
	out->tenants = c->ntenants;
	out->classes = c->classes_live;
	out->pools = c->npools;
	for (uint32_t i = 0; i < c->neg_slots; i++)
		out->egroups += c->egroups[i].refs > 0;
	out->bytes = c->bytes;
}

void sched_actions_free(struct sched_cluster *c, struct sched_actions *a)
{
	mem_free(c, a->items, a->cap * sizeof *a->items);
	a->items = NULL;
	a->len = a->cap = 0;
}

void sched_cluster_free(struct sched_cluster *c)
{
	if (!c)
		return;
	for (uint32_t s = 0; s < c->njob_slots; s++)
		if (c->jobs[s].id)
			job_destroy(c, s);
	for (uint32_t s = 0; s < c->nnodes_slots; s++)
		if (c->nodes[s].id)
			node_free_arrays(c, &c->nodes[s]);
	for (uint32_t p = 0; p < c->npools; p++) {
		for (uint32_t f = 0; f < c->pools[p].nb; f++)
			mem_free(c, c->pools[p].b[f].items, (size_t)c->pools[p].b[f].cap * 4);
		mem_free(c, c->pools[p].b, (size_t)c->pools[p].nb * sizeof(struct bucket));
		mem_free(c, c->pools[p].lc, (size_t)c->pools[p].lc_cap * sizeof *c->pools[p].lc);
	}
	for (uint32_t s = 0; s < c->nclass_slots; s++)
		class_free_arrays(c, &c->classes[s]);
	for (uint32_t s = 0; s < c->neg_slots; s++)
		egroup_free_arrays(c, &c->egroups[s]);
	mem_free(c, c->egroups, (size_t)c->egroups_cap * sizeof *c->egroups);
	idmap_deinit(c, &c->eg_map);
	for (uint32_t i = 0; i < c->nidsets; i++)
		mem_free(c, c->idsets[i].ids, (size_t)c->idsets[i].n * 4);
	mem_free(c, c->idsets, (size_t)c->idsets_cap * sizeof *c->idsets);
	for (uint32_t g = 0; g < c->ngtypes; g++) {
		struct gpools *gp = &c->gtype_pools[g];
		for (uint32_t r = 0; r < gp->nr; r++)
			mem_free(c, gp->r[r].ids, (size_t)gp->r[r].cap * 4);
		mem_free(c, gp->r, (size_t)gp->rcap * sizeof *gp->r);
	}
	mem_free(c, c->gtype_pools, (size_t)c->gtype_pools_cap * sizeof *c->gtype_pools);
	mem_free(c, c->gtypes, (size_t)c->gtypes_cap * sizeof *c->gtypes);
	mem_free(c, c->pools, (size_t)c->pools_cap * sizeof *c->pools);
	mem_free(c, c->pool_slots, (size_t)c->npool_slots * 4);
	mem_free(c, c->classes, (size_t)c->classes_cap * sizeof *c->classes);
	mem_free(c, c->class_slots, (size_t)c->nclass_hslots * 4);
	mem_free(c, c->jobs, (size_t)c->jobs_cap * sizeof *c->jobs);
	mem_free(c, c->pending, (size_t)c->pending_cap * 4);
	mem_free(c, c->nodes, (size_t)c->nodes_cap * sizeof *c->nodes);
	mem_free(c, c->node_free, (size_t)c->node_free_cap * 4);
	mem_free(c, c->tenants, (size_t)c->tenants_cap * sizeof *c->tenants);
	mem_free(c, c->scratch, c->scratch_bytes);
	idmap_deinit(c, &c->node_map);
	idmap_deinit(c, &c->job_map);
	idmap_deinit(c, &c->tenant_map);
	strtab_deinit(c, &c->strs);
	struct sched_alloc a = c->a;
	a.free(a.ctx, c);
}
