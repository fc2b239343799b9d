/* auth.c — bearer tokens: random secrets shown once, stored as SHA-256 in
 * Postgres, resolved on every call (so a revoked token stops working at
 * once) into the principal the RPC layer checks roles against. */
#include "app.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <libpq-fe.h>

#include "log.h"

int auth_new_secret(char *secret, size_t len, char *prefix, size_t prefix_len)
{
	static const char b32[] = "abcdefghijklmnopqrstuvwxyz234567";
	unsigned char raw[20]; /* 160 bits */
	if (len < 36 || prefix_len < 12)
		return -1;
	size_t got = 0;
	while (got < sizeof raw) {
		ssize_t r = getrandom(raw + got, sizeof raw - got, 0);
		if (r < 0 && errno != EINTR)
			return -1;
		if (r > 0)
			got += (size_t)r;
	}
	memcpy(secret, "gm_", 3);
	/* 20 bytes = 160 bits = 32 base32 digits */
	for (int i = 0; i < 32; i++) {
		int bit = i * 5, byte = bit / 8, off = bit % 8;
		unsigned v = (unsigned)raw[byte] << 8 | (byte + 1 < 20 ? raw[byte + 1] : 0);
		secret[3 + i] = b32[(v >> (11 - off)) & 31];
	}
	secret[35] = '\0';
	memcpy(prefix, secret, 11);
	prefix[11] = '\0';
	return 0;
}

int auth_create_token_blocking(const char *conninfo, int role, uint64_t tenant_id,
                               uint64_t operator_id, const char *name, char *out, size_t out_len,
                               char *err, size_t err_len)
{
	char secret[40], prefix[16];
	if (auth_new_secret(secret, sizeof secret, prefix, sizeof prefix) ||
	    out_len < sizeof secret) {
		snprintf(err, err_len, "no randomness for a token");
		return -1;
	}
	PGconn *c = PQconnectdb(conninfo);
	if (PQstatus(c) != CONNECTION_OK) {
		snprintf(err, err_len, "postgres: %s", PQerrorMessage(c));
		PQfinish(c);
		return -1;
	}
	char r[8], t[24], o[24], now[24];
	snprintf(r, sizeof r, "%d", role);
	snprintf(t, sizeof t, "%" PRIu64, tenant_id);
	snprintf(o, sizeof o, "%" PRIu64, operator_id);
	snprintf(now, sizeof now, "%" PRId64, now_us());
	const char *params[] = {
		r, tenant_id ? t : NULL, operator_id ? o : NULL, name, prefix, secret, now
	};
	PGresult *res = PQexecParams(
	    c,
	    "INSERT INTO api_tokens (role, tenant_id, operator_id, name, prefix, secret_sha256,"
	    " created_by, created_at_us) VALUES ($1, $2, $3, $4, $5,"
	    " sha256(convert_to($6, 'UTF8')), 'gpumatchd create-admin-token', $7)",
	    7, NULL, params, NULL, NULL, 0);
	int rc = 0;
	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		snprintf(err, err_len, "%s", PQresultErrorMessage(res));
		rc = -1;
	} else {
		memcpy(out, secret, strlen(secret) + 1);
	}
	PQclear(res);
	PQfinish(c);
	return rc;
}

/* ---- cache of resolved tokens -------------------------------------------------
 * Resolving a token costs a Postgres query; under load that doubles the
 * queries a submit makes. Successful lookups are kept for AUTH_TTL_US.
 * Revoking or disabling anything clears this replica's cache at once and
 * bumps {gm}:authgen, which every replica polls every AUTH_POLL_MS: a
 * revoked token is refused here at once and elsewhere within that poll. */

#define AUTH_SLOTS   4096 /* power of two */
#define AUTH_TTL_US  2000000
#define AUTH_POLL_MS 250
#define AUTH_GEN_KEY "{gm}:authgen"

struct auth_slot {
	char token[36];
	int64_t expires_us;
	struct principal who;
};

static struct {
	struct auth_slot *slots;
	struct event *poll_ev;
	struct app *a;
	long long gen;
	bool polling;
	uint64_t hits, misses;
} cache;

static uint32_t token_hash(const char *t)
{
	uint32_t h = 2166136261u;
	for (; *t; t++)
		h = (h ^ (unsigned char)*t) * 16777619u;
	return h;
}

static void cache_clear(void)
{
	if (cache.slots)
		memset(cache.slots, 0, AUTH_SLOTS * sizeof *cache.slots);
}

static const struct principal *cache_find(const char *token, int64_t now)
{
	if (!cache.slots)
		return NULL;
	struct auth_slot *s = &cache.slots[token_hash(token) & (AUTH_SLOTS - 1)];
	if (s->expires_us > now && !strcmp(s->token, token))
		return &s->who;
	return NULL;
}

static void cache_put(const char *token, const struct principal *who, int64_t now)
{
	if (!cache.slots || strlen(token) >= sizeof cache.slots[0].token)
		return;
	/* one entry per slot: a collision simply replaces */
	struct auth_slot *s = &cache.slots[token_hash(token) & (AUTH_SLOTS - 1)];
	snprintf(s->token, sizeof s->token, "%s", token);
	s->who = *who;
	s->expires_us = now + AUTH_TTL_US;
}

static void gen_cb(redisReply *reply, const char *err, void *arg)
{
	(void)err;
	(void)arg;
	cache.polling = false;
	if (!reply)
		return;
	long long gen = reply->type == REDIS_REPLY_STRING ? atoll(reply->str) : 0;
	if (gen != cache.gen) {
		cache.gen = gen;
		cache_clear();
	}
}

static void poll_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	if (cache.polling || !rds_ready(cache.a->rds))
		return;
	const char *argv[] = { "GET", AUTH_GEN_KEY };
	cache.polling = rds_cmd(cache.a->rds, gen_cb, NULL, 2, argv, NULL) == 0;
}

static void ignore_cb(redisReply *reply, const char *err, void *arg)
{
	(void)reply;
	(void)err;
	(void)arg;
}

void auth_revoked(struct app *a)
{
	cache_clear();
	const char *argv[] = { "INCR", AUTH_GEN_KEY };
	if (a->rds)
		rds_cmd(a->rds, ignore_cb, NULL, 2, argv, NULL);
}

int auth_start(struct app *a)
{
	cache.a = a;
	cache.slots = calloc(AUTH_SLOTS, sizeof *cache.slots);
	cache.poll_ev = event_new(a->base, -1, EV_PERSIST, poll_cb, NULL);
	struct timeval tv = { 0, AUTH_POLL_MS * 1000 };
	if (!cache.slots || !cache.poll_ev || event_add(cache.poll_ev, &tv))
		return -1;
	return 0;
}

void auth_stop(struct app *a)
{
	(void)a;
	if (cache.poll_ev)
		event_free(cache.poll_ev);
	cache.poll_ev = NULL;
	free(cache.slots);
	cache.slots = NULL;
}

struct auth_req {
	struct rpc_call *call;
	rpc_auth_done done;
	char token[36];
};

static unsigned role_bit(int proto_role)
{
	switch (proto_role) {
	case 1:
		return ROLE_TENANT;
	case 2:
		return ROLE_OPERATOR;
	case 3:
		return ROLE_ADMIN;
	default:
		return 0;
	}
}

static void auth_done_cb(enum pg_status st, PGresult *res, const char *sqlstate, const char *err,
                         void *arg)
{
	struct auth_req *q = arg;
	(void)sqlstate;
	if (st != PG_OK) {
		log_warn("token lookup failed err=\"%s\"", err);
		q->done(q->call, false, true, NULL);
	} else if (PQntuples(res) != 1) {
		q->done(q->call, false, false, NULL);
	} else {
		struct principal who;
		memset(&who, 0, sizeof who);
		who.token_id = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
		who.role = role_bit(atoi(PQgetvalue(res, 0, 1)));
		who.tenant_id = strtoull(PQgetvalue(res, 0, 2), NULL, 10);
		who.operator_id = strtoull(PQgetvalue(res, 0, 3), NULL, 10);
		snprintf(who.name, sizeof who.name, "%s", PQgetvalue(res, 0, 4));
		if (who.role)
			cache_put(q->token, &who, now_us());
		q->done(q->call, who.role != 0, false, &who);
	}
	free(q);
}

void auth_resolve(struct rpc_call *call, const char *token, rpc_auth_done done, void *arg)
{
	struct app *a = arg;
	/* well-formed secrets only: no query for garbage */
	size_t len = strlen(token);
	bool shaped = len == 35 && !strncmp(token, "gm_", 3);
	for (size_t i = 3; shaped && i < len; i++)
		shaped =
		    (token[i] >= 'a' && token[i] <= 'z') || (token[i] >= '2' && token[i] <= '7');
	if (!shaped) {
		done(call, false, false, NULL);
		return;
	}
	int64_t now = now_us();
	const struct principal *hit = cache_find(token, now);
	if (hit) {
		cache.hits++;
		struct principal who = *hit;
		done(call, true, false, &who);
		return;
	}
	cache.misses++;
	struct auth_req *q = malloc(sizeof *q);
	if (!q) {
		done(call, false, true, NULL);
		return;
	}
	q->call = call;
	q->done = done;
	snprintf(q->token, sizeof q->token, "%s", token);
	char nows[24];
	snprintf(nows, sizeof nows, "%" PRId64, now);
	const char *params[] = { token, nows };
	if (pg_exec(a->pg, "auth_lookup", NULL, 2, params, auth_done_cb, q)) {
		free(q);
		done(call, false, true, NULL);
	}
}
