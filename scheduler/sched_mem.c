/* sched_mem.c — allocation through the injected allocator, growable arrays,
 * the id map and the string interner. */
#include "sched_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void *mem_alloc(struct sched_cluster *c, size_t bytes)
{
	void *p = c->a.alloc(c->a.ctx, bytes ? bytes : 1);
	if (p)
		c->bytes += bytes;
	return p;
}

void *mem_calloc(struct sched_cluster *c, size_t bytes)
{
	void *p = mem_alloc(c, bytes);
	if (p)
		memset(p, 0, bytes);
	return p;
}

void *mem_realloc(struct sched_cluster *c, void *p, size_t old_bytes, size_t new_bytes)
{
	if (!p)
		return mem_alloc(c, new_bytes);
	void *q = c->a.realloc(c->a.ctx, p, new_bytes ? new_bytes : 1);
	if (q)
		c->bytes = c->bytes - old_bytes + new_bytes;
	return q;
}

void mem_free(struct sched_cluster *c, void *p, size_t bytes)
{
	if (!p)
		return;
	c->a.free(c->a.ctx, p);
	c->bytes -= bytes;
}

char *mem_strdup(struct sched_cluster *c, const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = mem_alloc(c, n);
	if (d)
		memcpy(d, s, n);
	return d;
}

int vec_reserve(struct sched_cluster *c, void **items, uint32_t *cap, uint32_t want,
                size_t elem_bytes)
{
	if (want <= *cap)
		return 0;
	uint64_t ncap = *cap ? *cap : 8;
	while (ncap < want)
		ncap *= 2;
	if (ncap > UINT32_MAX)
		return -ENOMEM;
	void *p = mem_realloc(c, *items, (size_t)*cap * elem_bytes, (size_t)ncap * elem_bytes);
	if (!p)
		return -ENOMEM;
	*items = p;
	*cap = (uint32_t)ncap;
	return 0;
}

void set_err(struct sched_error *err, const char *field, const char *fmt, ...)
{
	if (!err)
		return;
	snprintf(err->field, sizeof err->field, "%s", field);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof err->message, fmt, ap);
	va_end(ap);
}

/* ---- id map ---------------------------------------------------------------- */

#define KEY_EMPTY 0
#define KEY_TOMB  UINT64_MAX

static uint32_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return (uint32_t)x;
}

uint32_t idmap_get(const struct idmap *m, uint64_t key)
{
	if (!m->cap || key == KEY_EMPTY || key == KEY_TOMB)
		return NONE32;
	uint32_t mask = m->cap - 1;
	for (uint32_t i = mix64(key) & mask;; i = (i + 1) & mask) {
		if (m->keys[i] == key)
			return m->vals[i];
		if (m->keys[i] == KEY_EMPTY)
			return NONE32;
	}
}

static void idmap_insert_raw(uint64_t *keys, uint32_t *vals, uint32_t cap, uint64_t key,
                             uint32_t val)
{
	uint32_t mask = cap - 1;
	uint32_t i = mix64(key) & mask;
	while (keys[i] != KEY_EMPTY && keys[i] != KEY_TOMB)
		i = (i + 1) & mask;
	keys[i] = key;
	vals[i] = val;
}

int idmap_reserve(struct sched_cluster *c, struct idmap *m)
{
	/* Keep the load (tombstones included) under 1/2 so probes stay short. */
	if ((uint64_t)(m->used + 1) * 2 <= m->cap)
		return 0;
	/* Rehash to a load of at most 1/4, dropping tombstones. */
	uint64_t ncap64 = 16;
	while ((uint64_t)(m->live + 1) * 4 > ncap64)
		ncap64 *= 2;
	if (ncap64 > (1u << 31))
		return -ENOMEM;
	uint32_t ncap = (uint32_t)ncap64;
	uint64_t *keys = mem_calloc(c, (size_t)ncap * sizeof *keys);
	uint32_t *vals = keys ? mem_alloc(c, (size_t)ncap * sizeof *vals) : NULL;
	if (!vals) {
		mem_free(c, keys, (size_t)ncap * sizeof *keys);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < m->cap; i++)
		if (m->keys[i] != KEY_EMPTY && m->keys[i] != KEY_TOMB)
			idmap_insert_raw(keys, vals, ncap, m->keys[i], m->vals[i]);
	uint32_t live = m->live;
	idmap_deinit(c, m);
	m->keys = keys;
	m->vals = vals;
	m->cap = ncap;
	m->live = live;
	m->used = live;
	return 0;
}

void idmap_put(struct idmap *m, uint64_t key, uint32_t val)
{
	uint32_t mask = m->cap - 1;
	uint32_t tomb = NONE32;
	for (uint32_t i = mix64(key) & mask;; i = (i + 1) & mask) {
		if (m->keys[i] == key) {
			m->vals[i] = val;
			return;
		}
		if (m->keys[i] == KEY_TOMB && tomb == NONE32)
			tomb = i;
		if (m->keys[i] == KEY_EMPTY) {
			if (tomb != NONE32) {
				i = tomb;
			} else {
				m->used++;
			}
			m->keys[i] = key;
			m->vals[i] = val;
			m->live++;
			return;
		}
	}
}

void idmap_del(struct idmap *m, uint64_t key)
{
	if (!m->cap)
		return;
	uint32_t mask = m->cap - 1;
	for (uint32_t i = mix64(key) & mask;; i = (i + 1) & mask) {
		if (m->keys[i] == key) {
			m->keys[i] = KEY_TOMB;
			m->live--;
			return;
		}
		if (m->keys[i] == KEY_EMPTY)
			return;
	}
}

void idmap_deinit(struct sched_cluster *c, struct idmap *m)
{
	mem_free(c, m->keys, (size_t)m->cap * sizeof *m->keys);
	mem_free(c, m->vals, (size_t)m->cap * sizeof *m->vals);
	m->keys = NULL;
	m->vals = NULL;
	m->cap = m->used = m->live = 0;
}

/* ---- string interner ------------------------------------------------------- */

static uint32_t hash_str(const char *s)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 16777619u;
	}
	return h;
}

uint32_t strtab_find(const struct strtab *t, const char *s)
{
	if (!t->nslots)
		return NONE32;
	uint32_t mask = t->nslots - 1;
	for (uint32_t i = hash_str(s) & mask;; i = (i + 1) & mask) {
		uint32_t v = t->slots[i];
		if (!v)
			return NONE32;
		if (strcmp(t->strs[v - 1], s) == 0)
			return v - 1;
	}
}

static int strtab_grow_slots(struct sched_cluster *c, struct strtab *t)
{
	if ((uint64_t)(t->n + 1) * 2 <= t->nslots)
		return 0;
	uint32_t ns = t->nslots ? t->nslots * 2 : 64;
	uint32_t *slots = mem_calloc(c, (size_t)ns * sizeof *slots);
	if (!slots)
		return -ENOMEM;
	for (uint32_t id = 0; id < t->n; id++) {
		uint32_t i = hash_str(t->strs[id]) & (ns - 1);
		while (slots[i])
			i = (i + 1) & (ns - 1);
		slots[i] = id + 1;
	}
	mem_free(c, t->slots, (size_t)t->nslots * sizeof *t->slots);
	t->slots = slots;
	t->nslots = ns;
	return 0;
}

uint32_t strtab_intern(struct sched_cluster *c, struct strtab *t, const char *s)
{
	uint32_t id = strtab_find(t, s);
	if (id != NONE32)
		return id;
	if (strtab_grow_slots(c, t) ||
	    vec_reserve(c, (void **)&t->strs, &t->cap, t->n + 1, sizeof *t->strs))
		return NONE32;
	char *d = mem_strdup(c, s);
	if (!d)
		return NONE32;
	id = t->n++;
	t->strs[id] = d;
	uint32_t i = hash_str(s) & (t->nslots - 1);
	while (t->slots[i])
		i = (i + 1) & (t->nslots - 1);
	t->slots[i] = id + 1;
	return id;
}

void strtab_deinit(struct sched_cluster *c, struct strtab *t)
{
	for (uint32_t i = 0; i < t->n; i++)
		mem_free(c, t->strs[i], strlen(t->strs[i]) + 1);
	mem_free(c, t->strs, (size_t)t->cap * sizeof *t->strs);
	mem_free(c, t->slots, (size_t)t->nslots * sizeof *t->slots);
	memset(t, 0, sizeof *t);
}
