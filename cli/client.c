/* client.c — Connect unary calls with binary protobuf bodies over evhttp,
 * blocking or on a caller's event loop. Error bodies are JSON (the Connect
 * protocol's {"code","message"}) whatever the request encoding. */
#include "client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "gpumatch/v1/registry.h"

struct call;

struct cl_conn {
	struct event_base *base;
	struct evhttp_connection *http;
	char host[256];
	int port;
	struct call *calls; /* in flight: freed with the connection */
};

struct call {
	struct cl_conn *conn;
	struct call *prev, *next;
	cl_done_cb cb;
	void *arg;
	const ProtobufCMessageDescriptor *out;
	enum evhttp_request_error err;
	bool failed;
	char url[300];
};

int64_t cl_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void cl_result_clear(struct cl_result *r)
{
	if (r->resp)
		protobuf_c_message_free_unpacked(r->resp, NULL);
	memset(r, 0, sizeof *r);
}

bool cl_result_final_error(const struct cl_result *r)
{
	static const char *const final_codes[] = { "invalid_argument",    "not_found",
		                                   "failed_precondition", "permission_denied",
		                                   "unauthenticated",     "already_exists",
		                                   "out_of_range",        "unimplemented" };
	if (r->http_status == 0 || r->http_status == 200)
		return false;
	for (size_t i = 0; i < sizeof final_codes / sizeof *final_codes; i++)
		if (!strcmp(r->code, final_codes[i]))
			return true;
	return false;
}

static const ProtobufCMethodDescriptor *find_method(const char *service, const char *method)
{
	char full[128];
	snprintf(full, sizeof full, "gpumatch.v1.%s", service);
	const ProtobufCServiceDescriptor *sd = proto_find_service(full);
	if (!sd)
		return NULL;
	for (unsigned i = 0; i < sd->n_methods; i++)
		if (!strcmp(sd->methods[i].name, method))
			return &sd->methods[i];
	return NULL;
}

const ProtobufCMessageDescriptor *cl_method_output(const char *service, const char *method)
{
	const ProtobufCMethodDescriptor *m = find_method(service, method);
	return m ? m->output : NULL;
}

const ProtobufCMessageDescriptor *cl_method_input(const char *service, const char *method)
{
	const ProtobufCMethodDescriptor *m = find_method(service, method);
	return m ? m->input : NULL;
}

static int parse_url(const char *url, char *host, size_t host_len, int *port)
{
	if (!strncmp(url, "http://", 7))
		url += 7;
	else if (strstr(url, "://"))
		return -1;
	size_t n = strcspn(url, "/");
	char hp[300];
	if (n == 0 || n >= sizeof hp)
		return -1;
	memcpy(hp, url, n);
	hp[n] = '\0';
	if (url[n] && strcmp(url + n, "/"))
		return -1;
	char *colon = strrchr(hp, ':');
	long p = 80;
	if (colon) {
		char *end;
		p = strtol(colon + 1, &end, 10);
		if (end == colon + 1 || *end || p < 1 || p > 65535)
			return -1;
		*colon = '\0';
	}
	if (!*hp || strlen(hp) >= host_len)
		return -1;
	strcpy(host, hp);
	*port = (int)p;
	return 0;
}

struct cl_conn *cl_conn_new(struct event_base *base, const char *base_url, int timeout_s, char *err,
                            size_t err_len)
{
	struct cl_conn *c = calloc(1, sizeof *c);
	if (!c) {
		snprintf(err, err_len, "out of memory");
		return NULL;
	}
	if (parse_url(base_url, c->host, sizeof c->host, &c->port)) {
		snprintf(err, err_len, "url: \"%s\" is not http://HOST:PORT", base_url);
		free(c);
		return NULL;
	}
	c->base = base;
	c->http = evhttp_connection_base_new(base, NULL, c->host, (uint16_t)c->port);
	if (!c->http) {
		snprintf(err, err_len, "url: cannot make a connection to %s:%d", c->host, c->port);
		free(c);
		return NULL;
	}
	evhttp_connection_set_timeout(c->http, timeout_s);
	/* a failed call is reported to the caller, which decides about retries */
	evhttp_connection_set_retries(c->http, 0);
	return c;
}

void cl_conn_free(struct cl_conn *c)
{
	if (!c)
		return;
	/* evhttp frees the requests still queued without calling back */
	evhttp_connection_free(c->http);
	while (c->calls) {
		struct call *k = c->calls;
		c->calls = k->next;
		free(k);
	}
	free(c);
}

static void error_cb(enum evhttp_request_error e, void *arg)
{
	struct call *k = arg;
	k->err = e;
	k->failed = true;
}

static void parse_error_body(struct cl_result *r, const uint8_t *body, size_t len)
{
	json_t *j = body && len ? json_loadb((const char *)body, len, 0, NULL) : NULL;
	const char *code = j ? json_string_value(json_object_get(j, "code")) : NULL;
	const char *msg = j ? json_string_value(json_object_get(j, "message")) : NULL;
	if (code)
		snprintf(r->code, sizeof r->code, "%s", code);
	else
		snprintf(r->code, sizeof r->code, "http_%d", r->http_status);
	if (msg)
		snprintf(r->message, sizeof r->message, "%s", msg);
	else if (!j && len)
		snprintf(r->message, sizeof r->message, "%.*s", (int)(len > 200 ? 200 : len),
		         (const char *)body);
	json_decref(j);
}

void cl_decode_reply(const ProtobufCMessageDescriptor *out, int status, const uint8_t *body,
                     size_t len, struct cl_result *r)
{
	r->http_status = status;
	if (status == 200) {
		r->resp = protobuf_c_message_unpack(out, NULL, len, body);
		if (!r->resp) {
			r->http_status = 0;
			snprintf(r->code, sizeof r->code, "internal");
			snprintf(r->message, sizeof r->message,
			         "the server's %s reply does not decode", out->name);
		}
	} else {
		parse_error_body(r, body, len);
	}
}

static void reply_cb(struct evhttp_request *req, void *arg)
{
	struct call *k = arg;
	struct cl_result r = { 0 };
	int status = req ? evhttp_request_get_response_code(req) : 0;
	r.http_status = status;
	if (!status) {
		snprintf(r.code, sizeof r.code, "unreachable");
		const char *why = "connection failed";
		if (k->failed && k->err == EVREQ_HTTP_TIMEOUT)
			why = "timed out";
		else if (k->failed && k->err == EVREQ_HTTP_EOF)
			why = "connection closed";
		snprintf(r.message, sizeof r.message, "cannot reach gpumatchd at %s: %s", k->url,
		         why);
	} else {
		struct evbuffer *in = evhttp_request_get_input_buffer(req);
		size_t len = evbuffer_get_length(in);
		const uint8_t *body = len ? evbuffer_pullup(in, -1) : NULL;
		cl_decode_reply(k->out, status, body, len, &r);
	}
	if (k->prev)
		k->prev->next = k->next;
	else
		k->conn->calls = k->next;
	if (k->next)
		k->next->prev = k->prev;
	k->cb(&r, k->arg);
	cl_result_clear(&r);
	free(k);
}

int cl_call_async(struct cl_conn *c, const char *token, const char *service, const char *method,
                  const ProtobufCMessage *msg, cl_done_cb cb, void *arg)
{
	const ProtobufCMethodDescriptor *md = find_method(service, method);
	if (!md || md->input != msg->descriptor)
		return -1;
	struct call *k = calloc(1, sizeof *k);
	if (!k)
		return -1;
	k->cb = cb;
	k->arg = arg;
	k->out = md->output;
	snprintf(k->url, sizeof k->url, "http://%s:%d", c->host, c->port);
	struct evhttp_request *req = evhttp_request_new(reply_cb, k);
	if (!req) {
		free(k);
		return -1;
	}
	evhttp_request_set_error_cb(req, error_cb);
	size_t n = protobuf_c_message_get_packed_size(msg);
	uint8_t *buf = malloc(n ? n : 1);
	char authz[600], path[200], hosthdr[300];
	snprintf(path, sizeof path, "/gpumatch.v1.%s/%s", service, method);
	snprintf(hosthdr, sizeof hosthdr, "%s:%d", c->host, c->port);
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	int bad = !buf || evhttp_add_header(h, "Host", hosthdr) ||
	          evhttp_add_header(h, "Content-Type", "application/proto") ||
	          evhttp_add_header(h, "Connect-Protocol-Version", "1");
	if (!bad && token && *token) {
		snprintf(authz, sizeof authz, "Bearer %s", token);
		bad = evhttp_add_header(h, "Authorization", authz);
	}
	if (!bad)
		bad = evbuffer_add(evhttp_request_get_output_buffer(req), buf,
		                   protobuf_c_message_pack(msg, buf));
	if (bad)
		evhttp_request_free(req);
	/* evhttp_make_request frees req itself when it fails */
	else if (evhttp_make_request(c->http, req, EVHTTP_REQ_POST, path))
		bad = 1;
	free(buf);
	if (bad) {
		free(k);
		return -1;
	}
	k->conn = c;
	k->next = c->calls;
	if (c->calls)
		c->calls->prev = k;
	c->calls = k;
	return 0;
}

struct sync_ctx {
	struct cl_result *r;
	struct event_base *base;
};

static void sync_cb(struct cl_result *r, void *arg)
{
	struct sync_ctx *s = arg;
	*s->r = *r;
	r->resp = NULL; /* moved */
	event_base_loopbreak(s->base);
}

int cl_call(const char *base_url, const char *token, int timeout_s, const char *service,
            const char *method, const ProtobufCMessage *req, struct cl_result *r)
{
	memset(r, 0, sizeof *r);
	struct event_base *base = event_base_new();
	if (!base) {
		snprintf(r->code, sizeof r->code, "internal");
		snprintf(r->message, sizeof r->message, "cannot make an event loop");
		return -1;
	}
	struct cl_conn *c = cl_conn_new(base, base_url, timeout_s, r->message, sizeof r->message);
	if (!c) {
		snprintf(r->code, sizeof r->code, "invalid_url");
		event_base_free(base);
		return -1;
	}
	struct sync_ctx s = { r, base };
	if (cl_call_async(c, token, service, method, req, sync_cb, &s)) {
		snprintf(r->code, sizeof r->code, "internal");
		snprintf(r->message, sizeof r->message, "cannot send %s/%s", service, method);
	} else {
		event_base_dispatch(base);
	}
	cl_conn_free(c);
	event_base_free(base);
	return r->http_status == 200 ? 0 : -1;
}
