/* rpc-client.c — Connect unary calls with binary protobuf over evhttp, for
 * the benchmarks' load generator and latency probe. */
#include "rpc-client.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>

struct call_ctx {
	rpcc_done_cb cb;
	void *arg;
};

int rpcc_parse_url(const char *url, char *host, size_t host_len, int *port)
{
	if (!strncmp(url, "http://", 7))
		url += 7;
	else if (!strncmp(url, "https://", 8))
		url += 8;
	const char *colon = strrchr(url, ':');
	if (!colon || colon == url || (size_t)(colon - url) >= host_len)
		return -1;
	char *end;
	long p = strtol(colon + 1, &end, 10);
	if (end == colon + 1 || (*end && strcmp(end, "/")) || p < 1 || p > 65535)
		return -1;
	memcpy(host, url, (size_t)(colon - url));
	host[colon - url] = '\0';
	*port = (int)p;
	return 0;
}

struct evhttp_connection *rpcc_connect(struct event_base *base, const char *host, int port,
                                       int timeout_s)
{
	struct evhttp_connection *c = evhttp_connection_base_new(base, NULL, host, (uint16_t)port);
	if (!c)
		return NULL;
	evhttp_connection_set_timeout(c, timeout_s);
	/* a failed request is reported, not silently resent: a resent submit
	 * would be counted once but timed from its first send */
	evhttp_connection_set_retries(c, 0);
	return c;
}

static void reply_cb(struct evhttp_request *req, void *arg)
{
	struct call_ctx *cc = arg;
	int status = req ? evhttp_request_get_response_code(req) : 0;
	const uint8_t *body = NULL;
	size_t len = 0;
	if (status) {
		struct evbuffer *in = evhttp_request_get_input_buffer(req);
		len = evbuffer_get_length(in);
		body = evbuffer_pullup(in, -1);
	}
	cc->cb(status, body, len, cc->arg);
	free(cc);
}

int rpcc_call(struct evhttp_connection *conn, const char *host, const char *path, const char *token,
              const ProtobufCMessage *msg, rpcc_done_cb cb, void *arg)
{
	struct call_ctx *cc = malloc(sizeof *cc);
	if (!cc)
		return -1;
	cc->cb = cb;
	cc->arg = arg;
	struct evhttp_request *req = evhttp_request_new(reply_cb, cc);
	if (!req) {
		free(cc);
		return -1;
	}
	size_t n = protobuf_c_message_get_packed_size(msg);
	uint8_t stack[1024];
	uint8_t *buf = n <= sizeof stack ? stack : malloc(n);
	char authz[256];
	snprintf(authz, sizeof authz, "Bearer %s", token);
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	int bad = !buf || evhttp_add_header(h, "Host", host) ||
	          evhttp_add_header(h, "Content-Type", "application/proto") ||
	          evhttp_add_header(h, "Authorization", authz) ||
	          evbuffer_add(evhttp_request_get_output_buffer(req), buf,
	                       protobuf_c_message_pack(msg, buf));
	if (bad)
		evhttp_request_free(req);
	/* evhttp_make_request frees req itself when it fails */
	else if (evhttp_make_request(conn, req, EVHTTP_REQ_POST, path))
		bad = 1;
	if (buf != stack)
		free(buf);
	if (bad) {
		free(cc);
		return -1;
	}
	return 0;
}

int64_t rpcc_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

double rpcc_quantile(const double *sorted, size_t n, double p)
{
	if (!n)
		return 0;
	size_t rank = (size_t)ceil(p * (double)n);
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return sorted[rank - 1];
}

int rpcc_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}
