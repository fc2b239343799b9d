/* rpc-client.h — the benchmarks' Connect-protocol client: unary calls with
 * binary protobuf bodies over libevent's evhttp client, keep-alive, one
 * request outstanding per connection (evhttp queues any further ones). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <event2/http.h>
#include <protobuf-c/protobuf-c.h>

/* Called once per call. status is the HTTP status, or 0 when no reply came
 * (connection refused or reset, timeout). body is the response body, len
 * bytes, borrowed for the callback's duration (NULL when status is 0). */
typedef void (*rpcc_done_cb)(int status, const uint8_t *body, size_t len, void *arg);

/* Splits "http://HOST:PORT" (the scheme is optional, a trailing '/' too)
 * into host (NUL-terminated, host_len bytes at most) and port. Returns 0,
 * or -1 for anything else. */
int rpcc_parse_url(const char *url, char *host, size_t host_len, int *port);

/* A keep-alive connection to host:port on base; requests on it time out
 * after timeout_s seconds. Returns NULL when libevent cannot make one. The
 * caller frees it with evhttp_connection_free. */
struct evhttp_connection *rpcc_connect(struct event_base *base, const char *host, int port,
                                       int timeout_s);

/* POSTs msg, packed, to path ("/gpumatch.v1.JobService/SubmitJob") on conn
 * with "Authorization: Bearer <token>"; cb runs when the reply (or the
 * failure) arrives. host is sent as the Host header. Returns 0, or -1 when
 * the request could not be queued (cb is then never called). */
int rpcc_call(struct evhttp_connection *conn, const char *host, const char *path, const char *token,
              const ProtobufCMessage *msg, rpcc_done_cb cb, void *arg);

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t rpcc_now_ns(void);

/* The p-quantile (0..1) of sorted[0..n) by the nearest-rank method; 0 when
 * n is 0. */
double rpcc_quantile(const double *sorted, size_t n, double p);

/* qsort comparator for doubles, ascending. */
int rpcc_cmp_double(const void *a, const void *b);
