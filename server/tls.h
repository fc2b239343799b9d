/* tls.h — gpumatchd's TLS: the server context (certificate chain, key,
 * TLS >= 1.2, modern ciphers, ALPN http/1.1, optional client certificates),
 * its attachment to the RPC listener through evhttp's bufferevent hook,
 * re-reading the pair on SIGHUP, and the operator binding of client
 * certificates. OpenSSL does the cryptography; libevent's bufferevent_openssl
 * carries the bytes. */
#ifndef GPUMATCH_TLS_H
#define GPUMATCH_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/bufferevent.h>
#include <event2/http.h>

struct tls_server;

/* The first OpenSSL error on the thread's queue as text, for an error
 * message (the queue is emptied). */
void tls_ssl_reason(char *out, size_t len);

/* Loads cert_file (PEM, leaf first then the chain) and key_file (PEM) and,
 * when client_ca_file is not NULL or "", the CAs that sign agents' client
 * certificates. Returns NULL with err naming the file and OpenSSL's reason. */
struct tls_server *tls_server_new(const char *cert_file, const char *key_file,
                                  const char *client_ca_file, char *err, size_t err_len);

/* Builds a fresh context from the (possibly changed) files. On success new
 * connections use it and established ones keep theirs; on failure nothing
 * changes and err says why. Returns 0 or -1. */
int tls_server_reload(struct tls_server *t, const char *cert_file, const char *key_file,
                      const char *client_ca_file, char *err, size_t err_len);

/* The listener's bufferevent factory (arg: the tls_server): a TLS server
 * connection on the current context. Aborts when out of memory (evhttp
 * would otherwise serve that connection in plaintext). */
struct bufferevent *tls_server_bev_cb(struct event_base *base, void *arg);

/* Whether client certificates are requested (tls_client_ca_file set). */
bool tls_server_wants_client_certs(const struct tls_server *t);

/* The operator a connection's verified client certificate names: its
 * subject's common name is "operator-<id>". Returns the id, 0 when the
 * connection has no client certificate, or -1 when the certificate names
 * no operator. bev is the connection's bufferevent (borrowed). */
int64_t tls_peer_operator(struct bufferevent *bev);

void tls_server_free(struct tls_server *t);

/* Whether host (a listen_host value) is a loopback address: 127.0.0.0/8,
 * ::1 or "localhost". */
bool tls_host_is_loopback(const char *host);

#endif
