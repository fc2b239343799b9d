/* rds.h — Redis through hiredis's async API and its libevent adapter, with
 * Lua scripts loaded once and called by SHA (reloaded after NOSCRIPT, e.g.
 * after a Redis restart), and reconnection with backoff. */
#ifndef GPUMATCH_RDS_H
#define GPUMATCH_RDS_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>

struct rds;

/* reply is borrowed for the callback's duration; NULL when the command could
 * not run (disconnected): then err says why. A reply of type
 * REDIS_REPLY_ERROR is passed as is. */
typedef void (*rds_cb)(redisReply *reply, const char *err, void *arg);

/* A Lua script known by index. */
struct rds_script {
	const char *name;
	const char *lua;
};

/* Connects (non-blocking) to host:port; scripts (terminated by {NULL},
 * static storage) are loaded with SCRIPT LOAD on every (re)connect. */
struct rds *rds_new(struct event_base *base, const char *host, int port,
                    const struct rds_script *scripts);
/* The same, connecting to the Unix socket unix_path instead of host:port,
 * which then only name Redis in logs (rds_tls's tunnel). */
struct rds *rds_new_via(struct event_base *base, const char *host, int port, const char *unix_path,
                        const struct rds_script *scripts);
void rds_free(struct rds *r); /* pending callbacks get reply NULL; accepts NULL */

/* Sends AUTH with password (copied; NULL or "" = none) first on every
 * connection from the next one on; call it right after rds_new. */
void rds_set_password(struct rds *r, const char *password);

/* Start-up check, blocking (outside the event loop only): connects to
 * host:port, authenticates with password (NULL = none) and PINGs. Returns 0
 * when that works or Redis cannot be reached (it may come up later), -1 with
 * err when Redis refuses: a password is required, or the one given is
 * wrong. err never contains the password. */
int rds_check_auth(const char *host, int port, const char *password, char *err, size_t err_len);

/* Sends one command built from argv (binary-safe; lens may be NULL for C
 * strings). The callback runs exactly once, never before this returns.
 * Returns 0, or -1 when shutting down (no callback). */
int rds_cmd(struct rds *r, rds_cb cb, void *arg, int argc, const char **argv, const size_t *lens);

/* printf-style convenience over redisAsyncCommand formats (%s, %b, %lld). */
int rds_cmdf(struct rds *r, rds_cb cb, void *arg, const char *fmt, ...);

/* EVALSHA of script index idx with numkeys keys then args (argv holds keys
 * then args). On NOSCRIPT it loads the script and retries once. */
int rds_script(struct rds *r, int idx, rds_cb cb, void *arg, int numkeys, int argc,
               const char **argv, const size_t *lens);

bool rds_ready(const struct rds *r);

/* Called (may be NULL) every time a connection is (re)established and the
 * scripts are loaded: e.g. to rebuild state after a Redis restart. */
void rds_on_connect(struct rds *r, void (*fn)(void *arg), void *arg);

#endif
