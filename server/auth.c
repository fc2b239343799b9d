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

struct auth_req {
	struct rpc_call *call;
	rpc_auth_done done;
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
	struct auth_req *q = malloc(sizeof *q);
	if (!q) {
		done(call, false, true, NULL);
		return;
	}
	q->call = call;
	q->done = done;
	char now[24];
	snprintf(now, sizeof now, "%" PRId64, now_us());
	const char *params[] = { token, now };
	if (pg_exec(a->pg, "auth_lookup", NULL, 2, params, auth_done_cb, q)) {
		free(q);
		done(call, false, true, NULL);
	}
}
