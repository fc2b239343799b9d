/* app.h — gpumatchd's process-wide state and the functions the per-service
 * handler files share. One struct app per process, owned by main.c. */
#ifndef GPUMATCH_APP_H
#define GPUMATCH_APP_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>

#include "config.h"
#include "pg.h"
#include "rds.h"
#include "rpc.h"
#include "tls.h"

#define SCHEMA_VERSION 23 /* newest migration this binary needs */

struct app {
	struct event_base *base;
	struct cfg cfg;
	struct pg_pool *pg;
	struct rds *rds;
	struct rds_tls *rds_tls; /* NULL: plaintext to Redis */
	struct rpc_server *rpc;
	struct tls_server *tls;      /* NULL: plaintext */
	struct evhttp *metrics_http; /* metrics_listen, or NULL */
	struct rpc_method *methods;  /* built from the service descriptors */
	struct event *sigterm_ev, *sigint_ev, *sighup_ev, *drain_ev;
	int term_signals; /* SIGTERM/SIGINT seen */
	bool draining;
	int64_t started_us;
	int schema_version; /* as found at start-up */
};

int64_t now_us(void);

/* Builds everything and binds the port; returns 0 or -1 with err. */
int app_start(struct app *a, char *err, size_t err_len);
/* Stops accepting, lets calls in flight finish, then leaves the loop. */
void app_begin_drain(struct app *a);
void app_free(struct app *a);

/* ---- migrations (migrate.c; blocking libpq, only outside the loop) ---- */

/* Applies, in order, every migration in dir the database has not recorded
 * (also one numbered below the newest applied). Returns the newest applied
 * version, or -1 with err. */
int migrate_apply(const char *conninfo, const char *dir, bool quiet, char *err, size_t err_len);
/* Returns the database's schema version (0 = empty), or -1 with err. */
int migrate_current(const char *conninfo, char *err, size_t err_len);
/* The first migration file in dir numbered up to upto that the database
 * has not applied: 1 with its name in missing, 0 when none is missing, -1
 * on error (err). */
int migrate_missing(const char *conninfo, const char *dir, int upto, char *missing,
                    size_t missing_len, char *err, size_t err_len);
/* Where migrations live: GPUMATCH_MIGRATIONS, else share_path("migrations"). */
const char *migrate_default_dir(void);
/* A shipped file or directory ("migrations", "traces", or a file of data/
 * such as "gpu-peaks.csv"):
 * under <binary>/../share/gpumatch for an installed gpumatchd, else in the
 * source tree it was built from. Writes it to buf and returns buf. */
const char *share_path(const char *name, char *buf, size_t len);

/* ---- tokens (auth.c) ---- */

/* The RPC layer's auth hook: resolves a bearer token through Postgres. */
void auth_resolve(struct rpc_call *call, const char *token, rpc_auth_done done, void *arg);
/* Creates a token synchronously (start-up commands only); writes the secret
 * (shown once) into out. role is the proto Role value. */
int auth_create_token_blocking(const char *conninfo, int role, uint64_t tenant_id,
                               uint64_t operator_id, const char *name, char *out, size_t out_len,
                               char *err, size_t err_len);
/* A token, tenant or operator was revoked or disabled: forget cached
 * tokens here at once and tell the other replicas (they poll). */
void auth_revoked(struct app *a);
/* Starts the cache's cross-replica invalidation poll. */
int auth_start(struct app *a);
void auth_stop(struct app *a);

/* New random secret "gm_<base32>" and its display prefix. */
int auth_new_secret(char *secret, size_t len, char *prefix, size_t prefix_len);

#endif
