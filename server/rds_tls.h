/* rds_tls.h — TLS to Redis for a hiredis without SSL support: gpumatchd
 * listens on a Unix socket in a private directory (mode 0700) and joins each
 * connection hiredis makes there to a TLS connection to Redis, made with
 * OpenSSL through libevent's bufferevent_openssl (server certificate and
 * host name verified; an optional client certificate for Redis'
 * tls-auth-clients). Nothing of the Redis protocol is touched: AUTH and
 * everything else pass through encrypted. */
#ifndef GPUMATCH_RDS_TLS_H
#define GPUMATCH_RDS_TLS_H

#include <stddef.h>

#include <event2/event.h>

struct rds_tls_opts {
	const char *host;        /* Redis host name or address */
	int port;                /* Redis' TLS port */
	const char *ca_file;     /* CAs that sign Redis' certificate; "" = the system store */
	const char *cert_file;   /* client certificate (PEM chain); "" = none */
	const char *key_file;    /* its key */
	const char *server_name; /* name checked in Redis' certificate; "" = host */
};

struct rds_tls;

/* Makes the TLS context and the listening socket. Returns NULL with err
 * naming the key (redis_tls_ca_file, redis_tls_cert_file, …) on a bad
 * setting. */
struct rds_tls *rds_tls_new(struct event_base *base, const struct rds_tls_opts *o, char *err,
                            size_t err_len);

/* The Unix socket hiredis connects to (redisAsyncConnectUnix). */
const char *rds_tls_socket_path(const struct rds_tls *t);

/* Start-up check, blocking (outside the event loop only): a TLS handshake
 * with Redis (certificate verified), then AUTH with password (NULL or "" =
 * none) and PING. Returns 0 when that works or Redis cannot be reached (it
 * may come up later), -1 with err when the certificate does not verify or
 * Redis refuses. err never holds the password. */
int rds_tls_check(const struct rds_tls *t, const char *password, char *err, size_t err_len);

/* Closes the listener and every tunnel; removes the socket and its
 * directory. Accepts NULL. */
void rds_tls_free(struct rds_tls *t);

#endif
