/* client.c — Connect unary calls with binary protobuf bodies over evhttp,
 * blocking or on a caller's event loop. Error bodies are JSON (the Connect
 * protocol's {"code","message"}) whatever the request encoding. */
#include "client.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "gpumatch/v1/registry.h"

struct call;

/* A TLS connection's SSL object cannot be reused after its socket closed
 * (evhttp would reconnect with it mid-session), so a closed or failed TLS
 * connection is replaced before the next request; the old one is freed on
 * the next loop turn, outside evhttp's callbacks. */
struct dead_conn {
	struct evhttp_connection *http;
	struct dead_conn *next;
};

struct cl_conn {
	struct event_base *base;
	struct evhttp_connection *http;
	char host[256];
	int port;
	int timeout_s;
	bool tls;
	bool stale;             /* TLS: closed or failed; replace before the next call */
	struct dead_conn *dead; /* replaced connections to free */
	struct event *reap_ev;  /* frees them */
	struct call *calls;     /* in flight: freed with the connection */
};

/* The process's TLS settings (cl_tls_setup) and the one client context. */
static struct {
	char ca_file[1024];
	char cert_file[1024];
	char key_file[1024];
	SSL_CTX *ctx;
	char err[3600];
} tls_cfg;

struct call {
	struct cl_conn *conn;
	struct call *prev, *next;
	cl_done_cb cb;
	void *arg;
	const ProtobufCMessageDescriptor *out;
	enum evhttp_request_error err;
	bool failed;
	struct evhttp_connection *http; /* the connection it was sent on */
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

static int parse_url(const char *url, char *host, size_t host_len, int *port, bool *tls)
{
	*tls = false;
	if (!strncmp(url, "http://", 7)) {
		url += 7;
	} else if (!strncmp(url, "https://", 8)) {
		url += 8;
		*tls = true;
	} else if (strstr(url, "://")) {
		return -1;
	}
	size_t n = strcspn(url, "/");
	char hp[300];
	if (n == 0 || n >= sizeof hp)
		return -1;
	memcpy(hp, url, n);
	hp[n] = '\0';
	if (url[n] && strcmp(url + n, "/"))
		return -1;
	char *colon = strrchr(hp, ':');
	long p = *tls ? 443 : 80;
	if (hp[0] == '[') {
		/* [v6]:port */
		char *rb = strchr(hp, ']');
		if (!rb || (rb[1] && rb[1] != ':'))
			return -1;
		colon = rb[1] ? rb + 1 : NULL;
		*rb = '\0';
		memmove(hp, hp + 1, strlen(hp));
		if (colon)
			colon--;
	}
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

void cl_tls_setup(const char *ca_file, const char *cert_file, const char *key_file)
{
	snprintf(tls_cfg.ca_file, sizeof tls_cfg.ca_file, "%s", ca_file ? ca_file : "");
	snprintf(tls_cfg.cert_file, sizeof tls_cfg.cert_file, "%s", cert_file ? cert_file : "");
	snprintf(tls_cfg.key_file, sizeof tls_cfg.key_file, "%s", key_file ? key_file : "");
}

static void ssl_reason(char *out, size_t len)
{
	unsigned long e = ERR_get_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;
	snprintf(out, len, "%s", r ? r : "unknown error");
	ERR_clear_error();
}

/* The client context: TLS >= 1.2, the server verified against --ca-file
 * (GPUMATCH_CA_FILE) or the system store, ALPN http/1.1, and the client
 * certificate when one is configured. Built once; NULL with tls_cfg.err. */
static SSL_CTX *client_ctx(void)
{
	if (tls_cfg.ctx || tls_cfg.err[0])
		return tls_cfg.ctx;
	char why[256];
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx) {
		snprintf(tls_cfg.err, sizeof tls_cfg.err, "TLS: cannot make a context");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	static const unsigned char alpn[] = "\x08http/1.1";
	SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);
	int ok;
	if (tls_cfg.ca_file[0])
		ok = SSL_CTX_load_verify_locations(ctx, tls_cfg.ca_file, NULL) == 1;
	else
		ok = SSL_CTX_set_default_verify_paths(ctx) == 1;
	if (!ok) {
		ssl_reason(why, sizeof why);
		snprintf(tls_cfg.err, sizeof tls_cfg.err, "--ca-file %s: %s", tls_cfg.ca_file, why);
		goto fail;
	}
	if (tls_cfg.cert_file[0] || tls_cfg.key_file[0]) {
		const char *key = tls_cfg.key_file[0] ? tls_cfg.key_file : tls_cfg.cert_file;
		struct stat st;
		if (!stat(key, &st) && (st.st_mode & 077)) {
			snprintf(
			    tls_cfg.err, sizeof tls_cfg.err,
			    "--client-key %s: mode %03o lets group or others read it; chmod 600 it",
			    key, (unsigned)(st.st_mode & 0777));
			goto fail;
		}
		if (SSL_CTX_use_certificate_chain_file(ctx, tls_cfg.cert_file) != 1) {
			ssl_reason(why, sizeof why);
			snprintf(tls_cfg.err, sizeof tls_cfg.err, "--client-cert %s: %s",
			         tls_cfg.cert_file, why);
			goto fail;
		}
		if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
		    SSL_CTX_check_private_key(ctx) != 1) {
			ssl_reason(why, sizeof why);
			snprintf(tls_cfg.err, sizeof tls_cfg.err, "--client-key %s: %s", key, why);
			goto fail;
		}
	}
	tls_cfg.ctx = ctx;
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

static void conn_close_cb(struct evhttp_connection *evcon, void *arg)
{
	struct cl_conn *c = arg;
	if (c->http == evcon)
		c->stale = true;
}

/* A fresh evhttp connection (with a fresh SSL object for https). */
static struct evhttp_connection *conn_open(struct cl_conn *c, char *err, size_t err_len)
{
	struct evhttp_connection *h;
	if (!c->tls) {
		h = evhttp_connection_base_new(c->base, NULL, c->host, (uint16_t)c->port);
	} else {
		SSL_CTX *ctx = client_ctx();
		if (!ctx) {
			snprintf(err, err_len, "%s", tls_cfg.err);
			return NULL;
		}
		SSL *ssl = SSL_new(ctx);
		if (!ssl) {
			snprintf(err, err_len, "TLS: out of memory");
			return NULL;
		}
		unsigned char ip[16];
		bool is_ip =
		    inet_pton(AF_INET, c->host, ip) == 1 || inet_pton(AF_INET6, c->host, ip) == 1;
		/* the certificate must name the host we dialled */
		if (is_ip) {
			X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), c->host);
		} else {
			SSL_set_tlsext_host_name(ssl, c->host);
			SSL_set1_host(ssl, c->host);
		}
		struct bufferevent *bev =
		    bufferevent_openssl_socket_new(c->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
		                                   BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
		if (!bev) {
			SSL_free(ssl);
			snprintf(err, err_len, "TLS: cannot make a connection to %s:%d", c->host,
			         c->port);
			return NULL;
		}
		bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
		h = evhttp_connection_base_bufferevent_new(c->base, NULL, bev, c->host,
		                                           (uint16_t)c->port);
		if (!h)
			bufferevent_free(bev);
	}
	if (!h) {
		snprintf(err, err_len, "url: cannot make a connection to %s:%d", c->host, c->port);
		return NULL;
	}
	evhttp_connection_set_timeout(h, c->timeout_s);
	/* a failed call is reported to the caller, which decides about retries */
	evhttp_connection_set_retries(h, 0);
	if (c->tls)
		evhttp_connection_set_closecb(h, conn_close_cb, c);
	return h;
}

static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
	struct cl_conn *c = arg;
	(void)fd;
	(void)what;
	while (c->dead) {
		struct dead_conn *d = c->dead;
		c->dead = d->next;
		evhttp_connection_free(d->http);
		free(d);
	}
}

/* Replaces a stale TLS connection when nothing is queued on it. */
static void conn_refresh(struct cl_conn *c)
{
	if (!c->stale)
		return;
	for (struct call *k = c->calls; k; k = k->next)
		if (k->http == c->http)
			return;
	char err[300];
	struct evhttp_connection *h = conn_open(c, err, sizeof err);
	struct dead_conn *d = h ? calloc(1, sizeof *d) : NULL;
	if (!d) {
		if (h)
			evhttp_connection_free(h);
		return; /* try again next call */
	}
	evhttp_connection_set_closecb(c->http, NULL, NULL);
	d->http = c->http;
	d->next = c->dead;
	c->dead = d;
	event_active(c->reap_ev, EV_TIMEOUT, 0);
	c->http = h;
	c->stale = false;
}

struct cl_conn *cl_conn_new(struct event_base *base, const char *base_url, int timeout_s, char *err,
                            size_t err_len)
{
	struct cl_conn *c = calloc(1, sizeof *c);
	if (!c) {
		snprintf(err, err_len, "out of memory");
		return NULL;
	}
	if (parse_url(base_url, c->host, sizeof c->host, &c->port, &c->tls)) {
		snprintf(err, err_len, "url: \"%s\" is not http://HOST:PORT or https://HOST:PORT",
		         base_url);
		free(c);
		return NULL;
	}
	c->base = base;
	c->timeout_s = timeout_s;
	c->reap_ev = event_new(base, -1, 0, reap_cb, c);
	c->http = c->reap_ev ? conn_open(c, err, err_len) : NULL;
	if (!c->http) {
		if (c->reap_ev)
			event_free(c->reap_ev);
		free(c);
		return NULL;
	}
	return c;
}

void cl_conn_free(struct cl_conn *c)
{
	if (!c)
		return;
	/* evhttp frees the requests still queued without calling back */
	evhttp_connection_free(c->http);
	reap_cb(-1, 0, c);
	event_free(c->reap_ev);
	while (c->calls) {
		struct call *k = c->calls;
		c->calls = k->next;
		free(k);
	}
	free(c);
}

/* Why a TLS connection failed, in words (unknown CA, expired, wrong host,
 * not TLS at all), or "" when nothing TLS-related went wrong. */
static void tls_failure(struct cl_conn *c, struct evhttp_connection *h, char *out, size_t len)
{
	out[0] = '\0';
	struct bufferevent *bev = h ? evhttp_connection_get_bufferevent(h) : NULL;
	SSL *ssl = bev ? bufferevent_openssl_get_ssl(bev) : NULL;
	if (!ssl)
		return;
	long vr = SSL_get_verify_result(ssl);
	unsigned long e = bufferevent_get_openssl_error(bev);
	const char *reason = e ? ERR_reason_error_string(e) : NULL;
	while (bufferevent_get_openssl_error(bev))
		;
	switch (vr) {
	case X509_V_OK:
		break;
	case X509_V_ERR_CERT_HAS_EXPIRED:
		snprintf(out, len, "the server's certificate has expired");
		return;
	case X509_V_ERR_CERT_NOT_YET_VALID:
		snprintf(out, len, "the server's certificate is not yet valid");
		return;
	case X509_V_ERR_HOSTNAME_MISMATCH:
	case X509_V_ERR_IP_ADDRESS_MISMATCH:
		snprintf(out, len, "wrong host: the server's certificate is not for %.200s",
		         c->host);
		return;
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
	case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
	case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
	case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
		snprintf(out, len,
		         "unknown CA: the server's certificate is not signed by a trusted CA (%s)",
		         tls_cfg.ca_file[0] ? "--ca-file" : "system store; set --ca-file");
		return;
	default:
		snprintf(out, len, "the server's certificate failed verification: %s",
		         X509_verify_cert_error_string(vr));
		return;
	}
	if (!reason)
		return;
	if (e && ERR_GET_REASON(e) == SSL_R_WRONG_VERSION_NUMBER)
		snprintf(out, len, "the server does not speak TLS (try http://)");
	else
		snprintf(out, len, "TLS handshake failed: %s", reason);
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
	char tls_why[400] = "";
	if (!status && k->conn->tls) {
		k->conn->stale = true;
		tls_failure(k->conn, k->http, tls_why, sizeof tls_why);
	}
	if (!status && tls_why[0]) {
		snprintf(r.code, sizeof r.code, "tls");
		snprintf(r.message, sizeof r.message, "TLS: cannot verify gpumatchd at %s: %s",
		         k->url, tls_why);
	} else if (!status) {
		snprintf(r.code, sizeof r.code, "unreachable");
		const char *why = "connection failed";
		if (k->failed && k->err == EVREQ_HTTP_TIMEOUT)
			why = "timed out";
		else if (k->failed && k->err == EVREQ_HTTP_EOF)
			why = k->conn->tls ? "connection closed"
			                   : "connection closed (does the server want https://?)";
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
	conn_refresh(c);
	struct call *k = calloc(1, sizeof *k);
	if (!k)
		return -1;
	k->cb = cb;
	k->arg = arg;
	k->out = md->output;
	k->http = c->http;
	snprintf(k->url, sizeof k->url, "%s://%s:%d", c->tls ? "https" : "http", c->host, c->port);
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
