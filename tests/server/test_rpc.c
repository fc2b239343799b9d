/* test_rpc.c — the Connect unary RPC layer driven by real HTTP clients:
 * libevent's evhttp client in-process, raw sockets (to vanish mid-call) and
 * the curl binary. A small method table built from gpumatch.v1 descriptors,
 * test handlers (immediate, deferred, never answering, failing) and a fake
 * token resolver cover every answer path: codecs, authorization, protocol
 * errors, deadlines, client disconnects, shutdown, keep-alive, connection
 * limits and metrics. Runs under ASan/UBSan: a leak or bad access fails. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "gpumatch/v1/admin_service.pb-c.h"
#include "gpumatch/v1/job_service.pb-c.h"
#include "log.h"
#include "rpc.h"

static int failures;
static int checks;

static void fail_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail_at(const char *file, int line, const char *fmt, ...)
{
	va_list ap;
	failures++;
	fprintf(stderr, "FAIL %s:%d: ", file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

#define CHECK(cond, ...)                                          \
	do {                                                      \
		checks++;                                         \
		if (!(cond))                                      \
			fail_at(__FILE__, __LINE__, __VA_ARGS__); \
	} while (0)

#define P_GET_JOB      "/gpumatch.v1.JobService/GetJob"
#define P_LIST_JOBS    "/gpumatch.v1.JobService/ListJobs"
#define P_CANCEL_JOB   "/gpumatch.v1.JobService/CancelJob"
#define P_EXPLAIN_JOB  "/gpumatch.v1.JobService/ExplainJob"
#define P_GET_SPEND    "/gpumatch.v1.JobService/GetSpend"
#define P_SUBMIT_JOB   "/gpumatch.v1.JobService/SubmitJob"
#define P_LIST_TENANTS "/gpumatch.v1.AdminService/ListTenants"
#define P_GET_TENANT   "/gpumatch.v1.AdminService/GetTenant"

#define PROTO "application/proto"
#define JSON  "application/json"

#define TENANT "Bearer tenant-token"
#define ADMIN  "Bearer admin-token"

static struct event_base *base;

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs the loop until *v >= target or max_ms pass; returns whether it got
 * there. */
static bool spin_until(const int *v, int target, int max_ms)
{
	int64_t end = now_ms() + max_ms;
	while (*v < target && now_ms() < end) {
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		if (*v < target)
			usleep(300);
	}
	return *v >= target;
}

/* Runs the loop until pred(arg) holds or max_ms pass. */
static bool spin_pred(bool (*pred)(void *), void *arg, int max_ms)
{
	int64_t end = now_ms() + max_ms;
	while (!pred(arg) && now_ms() < end) {
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		usleep(300);
	}
	return pred(arg);
}

static bool server_idle(void *arg)
{
	return rpc_server_inflight(arg) == 0;
}

static void spin_for(int ms)
{
	int never = 0;
	spin_until(&never, 1, ms);
}

/* ---- handlers and the fake token resolver --------------------------------- */

static int n_started;              /* handlers entered */
static int n_aborts;               /* abort hooks run */
static int n_auth;                 /* auth fn calls */
static int n_late_replies;         /* deferred replies sent */
static int n_admin_verdicts;       /* delayed admin-token auth answers */
static struct rpc_call *held_call; /* SubmitJob: kept with no abort hook */
static struct rpc_call *slow_call; /* "slow-token": auth never resolves */
static rpc_auth_done slow_done;

static void h_get_job(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__GetJobRequest *r = (const Gpumatch__V1__GetJobRequest *)req;
	const struct principal *who = rpc_principal(call);
	static int tag;
	n_started++;
	CHECK(req->descriptor == &gpumatch__v1__get_job_request__descriptor, "request type");
	CHECK(!strcmp(rpc_method_path(call), P_GET_JOB), "path %s", rpc_method_path(call));
	rpc_set_data(call, &tag);
	CHECK(rpc_get_data(call) == &tag, "call data");
	Gpumatch__V1__Job job = GPUMATCH__V1__JOB__INIT;
	job.id = r->job_id;
	job.tenant_id = who->tenant_id;
	job.name = (char *)who->name;
	Gpumatch__V1__GetJobResponse resp = GPUMATCH__V1__GET_JOB_RESPONSE__INIT;
	resp.job = &job;
	rpc_reply(call, &resp.base);
}

struct later {
	struct rpc_call *call;
	rpc_auth_done done;
};

static void list_later_cb(evutil_socket_t fd, short what, void *arg)
{
	struct later *l = arg;
	(void)fd;
	(void)what;
	Gpumatch__V1__ListJobsResponse resp = GPUMATCH__V1__LIST_JOBS_RESPONSE__INIT;
	resp.next_page_token = "later";
	n_late_replies++;
	/* a no-op when the call was aborted meanwhile (no hook registered) */
	rpc_reply(l->call, &resp.base);
	free(l);
}

/* Answers after page_size ms, extending its deadline past that first. */
static void h_list_jobs(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__ListJobsRequest *r = (const Gpumatch__V1__ListJobsRequest *)req;
	n_started++;
	rpc_set_timeout(call, r->page_size + 300);
	struct later *l = calloc(1, sizeof *l);
	l->call = call;
	struct timeval tv = { r->page_size / 1000, (r->page_size % 1000) * 1000 };
	event_base_once(base, -1, EV_TIMEOUT, list_later_cb, l, &tv);
}

struct hook_ctx {
	bool answer_in_hook;
};

static void on_abort(struct rpc_call *call, void *arg)
{
	struct hook_ctx *h = arg;
	n_aborts++;
	CHECK(!strcmp(rpc_method_path(call), P_CANCEL_JOB), "call valid in its hook");
	if (h->answer_in_hook)
		rpc_error(call, RPC_CANCELED, "ignored");
	free(h);
}

/* Never answers; its abort hook frees what it holds. */
static void h_cancel_job(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__CancelJobRequest *r = (const Gpumatch__V1__CancelJobRequest *)req;
	n_started++;
	struct hook_ctx *h = calloc(1, sizeof *h);
	h->answer_in_hook = r->reason && !strcmp(r->reason, "answer-in-hook");
	rpc_on_abort(call, on_abort, h);
	if (r->reason && !strcmp(r->reason, "no-deadline"))
		rpc_set_timeout(call, 0); /* the client's deadline still holds */
}

/* Never answers and registers no hook: the call stays valid until the test
 * answers it. */
static void h_submit_job(struct rpc_call *call, const ProtobufCMessage *req)
{
	(void)req;
	n_started++;
	CHECK(held_call == NULL, "one held call at a time");
	held_call = call;
}

static void answer_held(void)
{
	Gpumatch__V1__SubmitJobResponse resp = GPUMATCH__V1__SUBMIT_JOB_RESPONSE__INIT;
	CHECK(held_call != NULL, "a held call");
	if (held_call)
		rpc_reply(held_call, &resp.base);
	held_call = NULL;
}

static void h_explain_job(struct rpc_call *call, const ProtobufCMessage *req)
{
	const Gpumatch__V1__ExplainJobRequest *r = (const Gpumatch__V1__ExplainJobRequest *)req;
	n_started++;
	if (r->job_id == 500)
		rpc_error(call, RPC_INTERNAL, "boom");
	else if (r->job_id == 666)
		rpc_error(call, RPC_FAILED_PRECONDITION, "say \"hi\"\\\n\tcaf\xc3\xa9 \xff end");
	else
		rpc_error(call, RPC_NOT_FOUND, "job %" PRIu64 " not found", r->job_id);
}

static void h_list_tenants(struct rpc_call *call, const ProtobufCMessage *req)
{
	(void)req;
	n_started++;
	Gpumatch__V1__ListTenantsResponse resp = GPUMATCH__V1__LIST_TENANTS_RESPONSE__INIT;
	resp.next_page_token = (char *)rpc_principal(call)->name;
	rpc_reply(call, &resp.base);
}

static void h_get_tenant(struct rpc_call *call, const ProtobufCMessage *req)
{
	(void)req;
	n_started++;
	CHECK(rpc_principal(call)->role == 0, "public method: no principal");
	Gpumatch__V1__GetTenantResponse resp = GPUMATCH__V1__GET_TENANT_RESPONSE__INIT;
	rpc_reply(call, &resp.base);
}

static const struct rpc_method methods[] = {
	{ P_GET_JOB, &gpumatch__v1__get_job_request__descriptor,
	  &gpumatch__v1__get_job_response__descriptor, ROLE_TENANT | ROLE_ADMIN, h_get_job },
	{ P_LIST_JOBS, &gpumatch__v1__list_jobs_request__descriptor,
	  &gpumatch__v1__list_jobs_response__descriptor, ROLE_TENANT, h_list_jobs },
	{ P_CANCEL_JOB, &gpumatch__v1__cancel_job_request__descriptor,
	  &gpumatch__v1__cancel_job_response__descriptor, ROLE_TENANT, h_cancel_job },
	{ P_EXPLAIN_JOB, &gpumatch__v1__explain_job_request__descriptor,
	  &gpumatch__v1__explain_job_response__descriptor, ROLE_TENANT, h_explain_job },
	{ P_GET_SPEND, &gpumatch__v1__get_spend_request__descriptor,
	  &gpumatch__v1__get_spend_response__descriptor, ROLE_TENANT, NULL },
	{ P_SUBMIT_JOB, &gpumatch__v1__submit_job_request__descriptor,
	  &gpumatch__v1__submit_job_response__descriptor, ROLE_TENANT, h_submit_job },
	{ P_LIST_TENANTS, &gpumatch__v1__list_tenants_request__descriptor,
	  &gpumatch__v1__list_tenants_response__descriptor, ROLE_ADMIN, h_list_tenants },
	{ P_GET_TENANT, &gpumatch__v1__get_tenant_request__descriptor,
	  &gpumatch__v1__get_tenant_response__descriptor, 0, h_get_tenant },
	{ NULL, NULL, NULL, 0, NULL },
};

static void admin_later_cb(evutil_socket_t fd, short what, void *arg)
{
	struct later *l = arg;
	(void)fd;
	(void)what;
	struct principal p = { .token_id = 2, .role = ROLE_ADMIN };
	snprintf(p.name, sizeof p.name, "root");
	n_admin_verdicts++;
	l->done(l->call, true, false, &p);
	free(l);
}

/* "tenant-token": tenant 7 at once; "admin-token": an admin, 5 ms later;
 * "down": store unavailable; "slow-token": never, until the test says;
 * anything else: unknown. */
static void fake_auth(struct rpc_call *call, const char *token, rpc_auth_done done, void *arg)
{
	CHECK(arg == &n_auth, "auth arg passed through");
	n_auth++;
	if (!strcmp(token, "tenant-token")) {
		struct principal p = { .token_id = 1, .role = ROLE_TENANT, .tenant_id = 7 };
		snprintf(p.name, sizeof p.name, "t7");
		done(call, true, false, &p);
	} else if (!strcmp(token, "admin-token")) {
		struct later *l = calloc(1, sizeof *l);
		l->call = call;
		l->done = done;
		struct timeval tv = { 0, 5000 };
		event_base_once(base, -1, EV_TIMEOUT, admin_later_cb, l, &tv);
	} else if (!strcmp(token, "down")) {
		done(call, false, true, NULL);
	} else if (!strcmp(token, "slow-token")) {
		CHECK(slow_call == NULL, "one slow auth at a time");
		slow_call = call;
		slow_done = done;
	} else {
		done(call, false, false, NULL);
	}
}

static void resolve_slow(void)
{
	struct principal p = { .token_id = 3, .role = ROLE_TENANT, .tenant_id = 9 };
	CHECK(slow_call != NULL, "a slow auth pending");
	if (slow_call)
		slow_done(slow_call, true, false, &p);
	slow_call = NULL;
}

static void healthz_cb(struct evhttp_request *req, void *arg)
{
	(void)arg;
	struct evbuffer *b = evbuffer_new();
	evbuffer_add_printf(b, "ok\n");
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);
}

static void metrics_cb(struct evhttp_request *req, void *arg)
{
	struct rpc_server *s = *(struct rpc_server **)arg;
	struct evbuffer *b = evbuffer_new();
	rpc_server_metrics(s, b);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
	                  "text/plain; version=0.0.4");
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);
}

static struct rpc_server *start_server(const struct rpc_limits *l, struct rpc_server **self)
{
	char err[256] = "";
	struct rpc_server *s =
	    rpc_server_new(base, "127.0.0.1", 0, methods, l, fake_auth, &n_auth, err, sizeof err);
	CHECK(s != NULL, "rpc_server_new: %s", err);
	if (!s)
		exit(1);
	CHECK(rpc_server_port(s) > 0, "ephemeral port");
	*self = s;
	rpc_server_add_get(s, "/healthz", healthz_cb, NULL);
	rpc_server_add_get(s, "/metrics", metrics_cb, self);
	return s;
}

/* ---- the evhttp client ------------------------------------------------------ */

struct resp {
	int done;
	int status; /* 0: no response (connection failed or closed) */
	char ctype[128];
	char allow[64];
	char accept_post[64];
	char connection[32];
	char body[16384];
	size_t len;
};

struct opts {
	const char *ctype;
	const char *auth; /* the whole Authorization value */
	const void *body;
	size_t len;
	const char *h1, *v1, *h2, *v2; /* extra headers */
};

static void copy_header(struct evkeyvalq *h, const char *name, char *out, size_t len)
{
	const char *v = evhttp_find_header(h, name);
	snprintf(out, len, "%s", v ? v : "");
}

static void client_cb(struct evhttp_request *req, void *arg)
{
	struct resp *r = arg;
	r->done = 1;
	if (!req || !evhttp_request_get_response_code(req))
		return;
	r->status = evhttp_request_get_response_code(req);
	struct evkeyvalq *h = evhttp_request_get_input_headers(req);
	copy_header(h, "Content-Type", r->ctype, sizeof r->ctype);
	copy_header(h, "Allow", r->allow, sizeof r->allow);
	copy_header(h, "Accept-Post", r->accept_post, sizeof r->accept_post);
	copy_header(h, "Connection", r->connection, sizeof r->connection);
	struct evbuffer *b = evhttp_request_get_input_buffer(req);
	r->len = evbuffer_remove(b, r->body, sizeof r->body - 1);
	if ((ssize_t)r->len < 0)
		r->len = 0;
	r->body[r->len] = 0;
}

static struct evhttp_connection *client_new(int port)
{
	struct evhttp_connection *c =
	    evhttp_connection_base_new(base, NULL, "127.0.0.1", (ev_uint16_t)port);
	evhttp_connection_set_timeout(c, 10);
	return c;
}

/* Starts a request; the answer lands in *r. */
static void http_start(struct evhttp_connection *conn, enum evhttp_cmd_type type, const char *path,
                       const struct opts *o, struct resp *r)
{
	memset(r, 0, sizeof *r);
	struct evhttp_request *req = evhttp_request_new(client_cb, r);
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	evhttp_add_header(h, "Host", "127.0.0.1");
	if (o->ctype)
		evhttp_add_header(h, "Content-Type", o->ctype);
	if (o->auth)
		evhttp_add_header(h, "Authorization", o->auth);
	if (o->h1)
		evhttp_add_header(h, o->h1, o->v1);
	if (o->h2)
		evhttp_add_header(h, o->h2, o->v2);
	if (o->len)
		evbuffer_add(evhttp_request_get_output_buffer(req), o->body, o->len);
	evhttp_make_request(conn, req, type, path);
}

static void http_do(struct evhttp_connection *conn, enum evhttp_cmd_type type, const char *path,
                    const struct opts *o, struct resp *r)
{
	http_start(conn, type, path, o, r);
	CHECK(spin_until(&r->done, 1, 10000), "no answer for %s", path);
}

/* POST on a fresh connection. */
static void post(int port, const char *path, const struct opts *o, struct resp *r)
{
	struct evhttp_connection *c = client_new(port);
	http_do(c, EVHTTP_REQ_POST, path, o, r);
	evhttp_connection_free(c);
}

static size_t pack_get_job(uint64_t id, uint8_t *buf)
{
	Gpumatch__V1__GetJobRequest m = GPUMATCH__V1__GET_JOB_REQUEST__INIT;
	m.job_id = id;
	return protobuf_c_message_pack(&m.base, buf);
}

static size_t pack_list_jobs(int page_size, uint8_t *buf)
{
	Gpumatch__V1__ListJobsRequest m = GPUMATCH__V1__LIST_JOBS_REQUEST__INIT;
	m.page_size = page_size;
	return protobuf_c_message_pack(&m.base, buf);
}

static size_t pack_cancel_job(const char *reason, uint8_t *buf)
{
	Gpumatch__V1__CancelJobRequest m = GPUMATCH__V1__CANCEL_JOB_REQUEST__INIT;
	m.job_id = 1;
	m.reason = (char *)reason;
	return protobuf_c_message_pack(&m.base, buf);
}

static size_t pack_explain_job(uint64_t id, uint8_t *buf)
{
	Gpumatch__V1__ExplainJobRequest m = GPUMATCH__V1__EXPLAIN_JOB_REQUEST__INIT;
	m.job_id = id;
	return protobuf_c_message_pack(&m.base, buf);
}

#define CHECK_STATUS(r, want) \
	CHECK((r).status == (want), "status %d, want %d (body %s)", (r).status, want, (r).body)
#define CHECK_BODY(r, want) CHECK(!strcmp((r).body, want), "body %s, want %s", (r).body, want)
#define CHECK_HAS(r, want)  CHECK(strstr((r).body, want) != NULL, "body %s lacks %s", (r).body, want)
#define CHECK_CODE(r, status, code)                                                  \
	do {                                                                         \
		CHECK_STATUS(r, status);                                             \
		CHECK_HAS(r, "{\"code\":\"" code "\"");                              \
		CHECK(!strcmp((r).ctype, JSON), "error content type %s", (r).ctype); \
	} while (0)

/* ---- tests ------------------------------------------------------------------ */

static void test_codes(void)
{
	static const struct {
		enum rpc_code c;
		const char *name;
		int status;
	} want[] = {
		{ RPC_OK, "ok", 200 },
		{ RPC_CANCELED, "canceled", 499 },
		{ RPC_UNKNOWN, "unknown", 500 },
		{ RPC_INVALID_ARGUMENT, "invalid_argument", 400 },
		{ RPC_DEADLINE_EXCEEDED, "deadline_exceeded", 504 },
		{ RPC_NOT_FOUND, "not_found", 404 },
		{ RPC_ALREADY_EXISTS, "already_exists", 409 },
		{ RPC_PERMISSION_DENIED, "permission_denied", 403 },
		{ RPC_RESOURCE_EXHAUSTED, "resource_exhausted", 429 },
		{ RPC_FAILED_PRECONDITION, "failed_precondition", 400 },
		{ RPC_ABORTED, "aborted", 409 },
		{ RPC_OUT_OF_RANGE, "out_of_range", 400 },
		{ RPC_UNIMPLEMENTED, "unimplemented", 501 },
		{ RPC_INTERNAL, "internal", 500 },
		{ RPC_UNAVAILABLE, "unavailable", 503 },
		{ RPC_DATA_LOSS, "data_loss", 500 },
		{ RPC_UNAUTHENTICATED, "unauthenticated", 401 },
	};
	CHECK(sizeof want / sizeof want[0] == RPC_CODE_COUNT, "every code listed");
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
		CHECK(!strcmp(rpc_code_name(want[i].c), want[i].name), "name of %d: %s", want[i].c,
		      rpc_code_name(want[i].c));
		CHECK(rpc_code_http_status(want[i].c) == want[i].status, "status of %s: %d",
		      want[i].name, rpc_code_http_status(want[i].c));
	}
	CHECK(!strcmp(rpc_code_name(RPC_CODE_COUNT), "unknown"), "out of range code");
	CHECK(rpc_code_http_status(RPC_CODE_COUNT) == 500, "out of range status");
}

static void test_new_rejects(void)
{
	char err[256];
	struct rpc_limits l = { 0 };
	static const struct rpc_method bad_path[] = {
		{ "GetJob", &gpumatch__v1__get_job_request__descriptor,
		  &gpumatch__v1__get_job_response__descriptor, 0, NULL },
		{ NULL, NULL, NULL, 0, NULL },
	};
	CHECK(!rpc_server_new(base, "127.0.0.1", 0, bad_path, &l, NULL, NULL, err, sizeof err),
	      "path without /");
	CHECK(strstr(err, "GetJob") != NULL, "err names the method: %s", err);
	CHECK(!rpc_server_new(base, "127.0.0.1", 0, methods, &l, NULL, NULL, err, sizeof err),
	      "roles without auth fn");
	/* IPv6 where the host has it */
	struct rpc_server *s6 =
	    rpc_server_new(base, "::1", 0, methods, &l, fake_auth, &n_auth, err, sizeof err);
	if (s6) {
		CHECK(rpc_server_port(s6) > 0, "ephemeral IPv6 port");
		rpc_server_free(s6);
	}
}

static void test_port_in_use(int port)
{
	char err[256];
	struct rpc_limits l = { 0 };
	CHECK(!rpc_server_new(base, "127.0.0.1", port, methods, &l, fake_auth, &n_auth, err,
	                      sizeof err),
	      "port in use");
	CHECK(strstr(err, "cannot listen on 127.0.0.1:") != NULL, "err: %s", err);
}

static void test_binary(int port)
{
	uint8_t buf[64];
	struct resp r;
	post(port, P_GET_JOB,
	     &(struct opts){
	         .ctype = PROTO, .auth = TENANT, .body = buf, .len = pack_get_job(42, buf) },
	     &r);
	CHECK_STATUS(r, 200);
	CHECK(!strcmp(r.ctype, PROTO), "content type %s", r.ctype);
	Gpumatch__V1__GetJobResponse *m =
	    gpumatch__v1__get_job_response__unpack(NULL, r.len, (const uint8_t *)r.body);
	CHECK(m && m->job && m->job->id == 42 && m->job->tenant_id == 7 &&
	          !strcmp(m->job->name, "t7"),
	      "decoded reply");
	if (m)
		gpumatch__v1__get_job_response__free_unpacked(m, NULL);

	/* an empty binary body is the empty message */
	post(port, P_GET_JOB, &(struct opts){ .ctype = PROTO, .auth = TENANT }, &r);
	CHECK_STATUS(r, 200);

	/* the asynchronous resolver path: admin, 5 ms later */
	post(port, P_GET_JOB,
	     &(struct opts){
	         .ctype = PROTO, .auth = ADMIN, .body = buf, .len = pack_get_job(5, buf) },
	     &r);
	CHECK_STATUS(r, 200);
	post(port, P_LIST_TENANTS, &(struct opts){ .ctype = PROTO, .auth = ADMIN }, &r);
	CHECK_STATUS(r, 200);
	Gpumatch__V1__ListTenantsResponse *lt =
	    gpumatch__v1__list_tenants_response__unpack(NULL, r.len, (const uint8_t *)r.body);
	CHECK(lt && !strcmp(lt->next_page_token, "root"), "admin principal reached the handler");
	if (lt)
		gpumatch__v1__list_tenants_response__free_unpacked(lt, NULL);

	/* a method with no roles needs no token */
	post(port, P_GET_TENANT, &(struct opts){ .ctype = PROTO }, &r);
	CHECK_STATUS(r, 200);
}

static void test_json(int port)
{
	struct resp r;
	const char *body = "{\"jobId\":\"42\"}";
	post(port, P_GET_JOB,
	     &(struct opts){ .ctype = JSON, .auth = TENANT, .body = body, .len = strlen(body) },
	     &r);
	CHECK_STATUS(r, 200);
	CHECK(!strcmp(r.ctype, JSON), "content type %s", r.ctype);
	CHECK_HAS(r, "\"id\":\"42\"");
	CHECK_HAS(r, "\"tenantId\":\"7\"");

	/* charset parameter and the proto field name */
	body = "{\"job_id\":7}";
	post(port, P_GET_JOB,
	     &(struct opts){ .ctype = "Application/JSON; charset=utf-8",
	                     .auth = TENANT,
	                     .body = body,
	                     .len = strlen(body) },
	     &r);
	CHECK_STATUS(r, 200);
	CHECK_HAS(r, "\"id\":\"7\"");

	post(port, P_GET_JOB,
	     &(struct opts){ .ctype = "application/json;foo=bar; charset=\"UTF-8\"",
	                     .auth = TENANT,
	                     .body = body,
	                     .len = strlen(body) },
	     &r);
	CHECK_STATUS(r, 200);

	/* an empty JSON body is {} */
	post(port, P_GET_TENANT, &(struct opts){ .ctype = JSON }, &r);
	CHECK_STATUS(r, 200);
	CHECK_BODY(r, "{}");

	/* handler errors go out as JSON in either codec */
	uint8_t buf[32];
	post(port, P_EXPLAIN_JOB,
	     &(struct opts){
	         .ctype = PROTO, .auth = TENANT, .body = buf, .len = pack_explain_job(9, buf) },
	     &r);
	CHECK_CODE(r, 404, "not_found");
	CHECK_BODY(r, "{\"code\":\"not_found\",\"message\":\"job 9 not found\"}");
	post(port, P_EXPLAIN_JOB,
	     &(struct opts){
	         .ctype = PROTO, .auth = TENANT, .body = buf, .len = pack_explain_job(500, buf) },
	     &r);
	CHECK_CODE(r, 500, "internal");
	CHECK_BODY(r, "{\"code\":\"internal\",\"message\":\"boom\"}");
	/* messages are escaped; bytes that are not UTF-8 become U+FFFD */
	body = "{\"jobId\":\"666\"}";
	post(port, P_EXPLAIN_JOB,
	     &(struct opts){ .ctype = JSON, .auth = TENANT, .body = body, .len = strlen(body) },
	     &r);
	CHECK_CODE(r, 400, "failed_precondition");
	CHECK_BODY(
	    r, "{\"code\":\"failed_precondition\",\"message\":\"say \\\"hi\\\"\\\\\\u000a\\u0009"
	       "caf\xc3\xa9 \\ufffd end\"}");
}

static void test_auth(int port)
{
	uint8_t buf[32];
	size_t n = pack_get_job(1, buf);
	struct resp r;
	int started = n_started;
	const char *want401 = "{\"code\":\"unauthenticated\",\"message\":\"missing or malformed "
	                      "Authorization header: want \\\"Bearer <token>\\\"\"}";

	post(port, P_GET_JOB, &(struct opts){ .ctype = PROTO, .body = buf, .len = n }, &r);
	CHECK_CODE(r, 401, "unauthenticated");
	CHECK_BODY(r, want401);
	static const char *const garbled[] = {
		"Basic dXNlcjpwYXNz", "Bearer",      "Bearer ", "Bearer a b",
		"Bearertenant-token", "tenant-token"
	};
	for (size_t i = 0; i < sizeof garbled / sizeof garbled[0]; i++) {
		post(port, P_GET_JOB,
		     &(struct opts){ .ctype = PROTO, .auth = garbled[i], .body = buf, .len = n },
		     &r);
		CHECK_CODE(r, 401, "unauthenticated");
		CHECK_BODY(r, want401);
	}
	int auth_before = n_auth;
	post(port, P_GET_JOB,
	     &(struct opts){ .ctype = PROTO, .auth = "Bearer nope", .body = buf, .len = n }, &r);
	CHECK_CODE(r, 401, "unauthenticated");
	CHECK_BODY(r, "{\"code\":\"unauthenticated\",\"message\":\"invalid, expired or revoked "
	              "bearer token\"}");
	CHECK(n_auth == auth_before + 1, "resolver asked once");
	/* scheme is case-insensitive, extra blanks are fine */
	post(port, P_GET_JOB,
	     &(struct opts){
	         .ctype = PROTO, .auth = "bearer   tenant-token ", .body = buf, .len = n },
	     &r);
	CHECK_STATUS(r, 200);
	started++;

	post(port, P_GET_JOB,
	     &(struct opts){ .ctype = PROTO, .auth = "Bearer down", .body = buf, .len = n }, &r);
	CHECK_CODE(r, 503, "unavailable");

	post(port, P_LIST_TENANTS, &(struct opts){ .ctype = PROTO, .auth = TENANT }, &r);
	CHECK_CODE(r, 403, "permission_denied");
	CHECK_BODY(r, "{\"code\":\"permission_denied\",\"message\":\"a tenant token may not call "
	              "/gpumatch.v1.AdminService/ListTenants\"}");
	CHECK(n_started == started, "no handler ran for an unauthorized call");

	/* authorization comes before the body is even looked at */
	post(port, P_GET_JOB, &(struct opts){ .ctype = PROTO, .body = "\xff\xff\xff", .len = 3 },
	     &r);
	CHECK_CODE(r, 401, "unauthenticated");
	/* and before unimplemented */
	post(port, P_GET_SPEND, &(struct opts){ .ctype = PROTO }, &r);
	CHECK_CODE(r, 401, "unauthenticated");
}

static void test_bad_bodies(int port)
{
	struct resp r;
	int started = n_started;
	post(port, P_GET_JOB,
	     &(struct opts){ .ctype = PROTO, .auth = TENANT, .body = "\xff\xff\xff", .len = 3 },
	     &r);
	CHECK_CODE(r, 400, "invalid_argument");
	CHECK_BODY(r, "{\"code\":\"invalid_argument\",\"message\":\"invalid protobuf body: not a "
	              "valid gpumatch.v1.GetJobRequest\"}");

	static const struct {
		const char *json;
		const char *names;
	} bad[] = {
		{ "{\"jobId\":\"x\"}", "jobId" },
		{ "{\"jobId\":true}", "jobId" },
		{ "{\"nope\":1}", "nope" },
		{ "{", "" },
		{ "[]", "" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		post(port, P_GET_JOB,
		     &(struct opts){ .ctype = JSON,
		                     .auth = TENANT,
		                     .body = bad[i].json,
		                     .len = strlen(bad[i].json) },
		     &r);
		CHECK_CODE(r, 400, "invalid_argument");
		CHECK_HAS(r, bad[i].names);
		CHECK(strstr(r.body, "\"message\":\"") != NULL, "a message for %s", bad[i].json);
	}
	CHECK(n_started == started, "no handler ran for a bad body");
}

static void test_protocol_errors(int port, size_t max_body)
{
	struct resp r;
	uint8_t buf[32];
	size_t n = pack_get_job(1, buf);
	struct evhttp_connection *c = client_new(port);

	/* body size: at the limit it is decoded (and fails as garbage); one more
	 * byte is refused before any of it reaches us */
	char *big = malloc(max_body + 1);
	memset(big, 0xff, max_body + 1);
	post(port, P_GET_JOB,
	     &(struct opts){ .ctype = PROTO, .auth = TENANT, .body = big, .len = max_body }, &r);
	CHECK_CODE(r, 400, "invalid_argument");
	post(port, P_GET_JOB,
	     &(struct opts){ .ctype = PROTO, .auth = TENANT, .body = big, .len = max_body + 1 },
	     &r);
	CHECK_STATUS(r, 413);
	free(big);

	http_do(c, EVHTTP_REQ_POST, P_GET_JOB,
	        &(struct opts){ .ctype = "text/plain", .auth = TENANT, .body = buf, .len = n }, &r);
	CHECK_CODE(r, 415, "invalid_argument");
	CHECK(!strcmp(r.accept_post, "application/json, application/proto"), "Accept-Post %s",
	      r.accept_post);
	CHECK_BODY(r, "{\"code\":\"invalid_argument\",\"message\":\"unsupported content type "
	              "\\\"text/plain\\\": use application/proto or application/json\"}");
	http_do(c, EVHTTP_REQ_POST, P_GET_JOB,
	        &(struct opts){ .auth = TENANT, .body = buf, .len = n }, &r);
	CHECK_CODE(r, 415, "invalid_argument");
	http_do(c, EVHTTP_REQ_POST, P_GET_JOB,
	        &(struct opts){ .ctype = "application/json; charset=latin1",
	                        .auth = TENANT,
	                        .body = "{}",
	                        .len = 2 },
	        &r);
	CHECK_CODE(r, 415, "invalid_argument");
	http_do(c, EVHTTP_REQ_POST, P_GET_JOB,
	        &(struct opts){ .ctype = "application/protobuffer", .auth = TENANT }, &r);
	CHECK_CODE(r, 415, "invalid_argument");

	http_do(c, EVHTTP_REQ_GET, P_GET_JOB, &(struct opts){ .auth = TENANT }, &r);
	CHECK_CODE(r, 405, "unimplemented");
	CHECK(!strcmp(r.allow, "POST"), "Allow %s", r.allow);
	CHECK_BODY(r, "{\"code\":\"unimplemented\",\"message\":\"" P_GET_JOB
	              " must be called with POST, not GET\"}");
	http_do(c, EVHTTP_REQ_PUT, P_GET_JOB, &(struct opts){ .ctype = PROTO }, &r);
	CHECK_CODE(r, 405, "unimplemented");

	http_do(c, EVHTTP_REQ_POST, "/gpumatch.v1.JobService/Nope",
	        &(struct opts){ .ctype = PROTO }, &r);
	CHECK_CODE(r, 404, "unimplemented");
	CHECK_BODY(r, "{\"code\":\"unimplemented\",\"message\":\"no such method: "
	              "/gpumatch.v1.JobService/Nope\"}");
	http_do(c, EVHTTP_REQ_GET, "/nope", &(struct opts){ 0 }, &r);
	CHECK_CODE(r, 404, "not_found");

	http_do(c, EVHTTP_REQ_GET, "/healthz", &(struct opts){ 0 }, &r);
	CHECK_STATUS(r, 200);
	CHECK_BODY(r, "ok\n");
	http_do(c, EVHTTP_REQ_GET, "/healthz?verbose=1", &(struct opts){ 0 }, &r);
	CHECK_STATUS(r, 200);
	http_do(c, EVHTTP_REQ_POST, "/healthz", &(struct opts){ .ctype = PROTO }, &r);
	CHECK_CODE(r, 405, "unimplemented");
	CHECK(!strcmp(r.allow, "GET, HEAD"), "Allow %s", r.allow);

	http_do(c, EVHTTP_REQ_POST, P_GET_SPEND, &(struct opts){ .ctype = PROTO, .auth = TENANT },
	        &r);
	CHECK_CODE(r, 501, "unimplemented");
	CHECK_BODY(r, "{\"code\":\"unimplemented\",\"message\":\"" P_GET_SPEND
	              " is not implemented yet\"}");

	http_do(c, EVHTTP_REQ_POST, P_GET_JOB,
	        &(struct opts){ .ctype = PROTO,
	                        .auth = TENANT,
	                        .body = buf,
	                        .len = n,
	                        .h1 = "Connect-Protocol-Version",
	                        .v1 = "1" },
	        &r);
	CHECK_STATUS(r, 200);
	http_do(c, EVHTTP_REQ_POST, P_GET_JOB,
	        &(struct opts){ .ctype = PROTO,
	                        .auth = TENANT,
	                        .body = buf,
	                        .len = n,
	                        .h1 = "Connect-Protocol-Version",
	                        .v1 = "2" },
	        &r);
	CHECK_CODE(r, 400, "invalid_argument");
	http_do(c, EVHTTP_REQ_POST, P_GET_JOB,
	        &(struct opts){ .ctype = PROTO,
	                        .auth = TENANT,
	                        .body = buf,
	                        .len = n,
	                        .h1 = "Content-Encoding",
	                        .v1 = "gzip" },
	        &r);
	CHECK_CODE(r, 501, "unimplemented");
	http_do(c, EVHTTP_REQ_POST, P_GET_JOB,
	        &(struct opts){ .ctype = PROTO,
	                        .auth = TENANT,
	                        .body = buf,
	                        .len = n,
	                        .h1 = "Content-Encoding",
	                        .v1 = "identity" },
	        &r);
	CHECK_STATUS(r, 200);
	static const char *const bad_timeouts[] = { "abc", "-5", "12345678901", "" };
	for (size_t i = 0; i < sizeof bad_timeouts / sizeof bad_timeouts[0]; i++) {
		http_do(c, EVHTTP_REQ_POST, P_GET_JOB,
		        &(struct opts){ .ctype = PROTO,
		                        .auth = TENANT,
		                        .body = buf,
		                        .len = n,
		                        .h1 = "Connect-Timeout-Ms",
		                        .v1 = bad_timeouts[i] },
		        &r);
		CHECK_CODE(r, 400, "invalid_argument");
	}
	evhttp_connection_free(c);
}

static void test_deferred(int port)
{
	uint8_t b1[16], b2[16];
	struct resp r1, r2;
	struct evhttp_connection *c1 = client_new(port), *c2 = client_new(port);
	/* two calls in flight at once on two connections; the later one asked
	 * answers first */
	http_start(c1, EVHTTP_REQ_POST, P_LIST_JOBS,
	           &(struct opts){
	               .ctype = PROTO, .auth = TENANT, .body = b1, .len = pack_list_jobs(120, b1) },
	           &r1);
	http_start(c2, EVHTTP_REQ_POST, P_LIST_JOBS,
	           &(struct opts){
	               .ctype = PROTO, .auth = TENANT, .body = b2, .len = pack_list_jobs(20, b2) },
	           &r2);
	CHECK(spin_until(&r2.done, 1, 5000), "second answered");
	CHECK(!r1.done, "first still waiting");
	CHECK(spin_until(&r1.done, 1, 5000), "first answered");
	CHECK_STATUS(r1, 200);
	CHECK_STATUS(r2, 200);
	CHECK(!strcmp(r1.ctype, PROTO), "ctype");
	evhttp_connection_free(c1);
	evhttp_connection_free(c2);
}

static void test_timeouts(int port, struct rpc_server *s, const struct rpc_limits *base_limits)
{
	struct resp r;
	uint8_t buf[64];
	struct rpc_limits l = *base_limits;
	l.request_timeout_ms = 150;
	rpc_server_set_limits(s, &l);

	/* the server's deadline: answered deadline_exceeded, the hook runs (the
	 * handler never answers by itself) */
	int aborts = n_aborts;
	post(port, P_CANCEL_JOB,
	     &(struct opts){
	         .ctype = PROTO, .auth = TENANT, .body = buf, .len = pack_cancel_job("", buf) },
	     &r);
	CHECK_CODE(r, 504, "deadline_exceeded");
	CHECK_BODY(r, "{\"code\":\"deadline_exceeded\",\"message\":\"" P_CANCEL_JOB
	              " did not finish within its deadline\"}");
	CHECK(n_aborts == aborts + 1, "abort hook ran");
	CHECK(rpc_server_inflight(s) == 0, "nothing in flight");

	/* the client's deadline when shorter; answering inside the hook is a
	 * harmless no-op. The server's deadline is far away meanwhile, so only
	 * the client's can end the call before http_do gives up (no duration
	 * is measured). */
	l.request_timeout_ms = 600000;
	rpc_server_set_limits(s, &l);
	post(port, P_CANCEL_JOB,
	     &(struct opts){ .ctype = JSON,
	                     .auth = TENANT,
	                     .body = "{\"reason\":\"answer-in-hook\"}",
	                     .len = strlen("{\"reason\":\"answer-in-hook\"}"),
	                     .h1 = "Connect-Timeout-Ms",
	                     .v1 = "30" },
	     &r);
	CHECK_CODE(r, 504, "deadline_exceeded");
	CHECK(n_aborts == aborts + 2, "abort hook ran");
	l.request_timeout_ms = 150;
	rpc_server_set_limits(s, &l);

	/* no server deadline left, the client's still ends it */
	post(port, P_CANCEL_JOB,
	     &(struct opts){ .ctype = PROTO,
	                     .auth = TENANT,
	                     .body = buf,
	                     .len = pack_cancel_job("no-deadline", buf),
	                     .h1 = "Connect-Timeout-Ms",
	                     .v1 = "40" },
	     &r);
	CHECK_CODE(r, 504, "deadline_exceeded");
	CHECK(n_aborts == aborts + 3, "abort hook ran");

	/* Connect-Timeout-Ms: 0 is already over */
	post(
	    port, P_GET_JOB,
	    &(struct opts){ .ctype = PROTO, .auth = TENANT, .h1 = "Connect-Timeout-Ms", .v1 = "0" },
	    &r);
	CHECK_CODE(r, 504, "deadline_exceeded");

	/* a long poll extends its deadline past the server's */
	int late = n_late_replies;
	post(port, P_LIST_JOBS,
	     &(struct opts){
	         .ctype = PROTO, .auth = TENANT, .body = buf, .len = pack_list_jobs(250, buf) },
	     &r);
	CHECK_STATUS(r, 200);
	CHECK(n_late_replies == late + 1, "answered by the timer");
	/* but never past the client's */
	post(port, P_LIST_JOBS,
	     &(struct opts){ .ctype = PROTO,
	                     .auth = TENANT,
	                     .body = buf,
	                     .len = pack_list_jobs(200, buf),
	                     .h1 = "Connect-Timeout-Ms",
	                     .v1 = "60" },
	     &r);
	CHECK_CODE(r, 504, "deadline_exceeded");
	/* its later reply finds the call aborted: a no-op */
	CHECK(spin_until(&n_late_replies, late + 2, 2000), "late reply sent");

	/* a handler with no hook keeps the call after the deadline; its answer
	 * then is a no-op that releases it */
	post(port, P_SUBMIT_JOB, &(struct opts){ .ctype = PROTO, .auth = TENANT }, &r);
	CHECK_CODE(r, 504, "deadline_exceeded");
	CHECK(held_call != NULL, "handler holds the call");
	CHECK(!strcmp(rpc_method_path(held_call), P_SUBMIT_JOB), "held call still valid");
	rpc_set_timeout(held_call, 1000);        /* no-op after the end */
	rpc_on_abort(held_call, on_abort, NULL); /* never runs: already aborted */
	answer_held();

	/* a deadline during authorization: the late verdict is dropped */
	int started = n_started;
	post(port, P_GET_JOB, &(struct opts){ .ctype = PROTO, .auth = "Bearer slow-token" }, &r);
	CHECK_CODE(r, 504, "deadline_exceeded");
	resolve_slow();
	CHECK(n_started == started, "no handler after a late auth verdict");
	spin_for(5);

	rpc_server_set_limits(s, base_limits);
}

static int raw_connect(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
		close(fd);
		return -1;
	}
	return fd;
}

static void raw_post(int fd, const char *path, const char *auth, const void *body, size_t len)
{
	char head[512];
	int n = snprintf(head, sizeof head,
	                 "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/proto\r\n"
	                 "Authorization: %s\r\nContent-Length: %zu\r\n\r\n",
	                 path, auth, len);
	CHECK(write(fd, head, (size_t)n) == n, "write head");
	if (len)
		CHECK(write(fd, body, len) == (ssize_t)len, "write body");
}

static void test_disconnect(int port, struct rpc_server *s)
{
	uint8_t buf[64];
	size_t n = pack_cancel_job("", buf);

	/* the client leaves while the handler waits: the hook runs, nothing is
	 * answered */
	int started = n_started, aborts = n_aborts;
	int fd = raw_connect(port);
	raw_post(fd, P_CANCEL_JOB, TENANT, buf, n);
	CHECK(spin_until(&n_started, started + 1, 3000), "handler started");
	CHECK(rpc_server_inflight(s) == 1, "one in flight");
	close(fd);
	CHECK(spin_until(&n_aborts, aborts + 1, 3000), "abort hook after disconnect");
	CHECK(rpc_server_inflight(s) == 0, "nothing in flight");

	/* the client sends more bytes (pipelined, or a TLS close_notify) and
	 * then leaves: still noticed */
	started = n_started;
	aborts = n_aborts;
	fd = raw_connect(port);
	raw_post(fd, P_CANCEL_JOB, TENANT, buf, n);
	CHECK(spin_until(&n_started, started + 1, 3000), "handler started");
	CHECK(write(fd, "\x15\x03\x03", 3) == 3, "extra bytes sent");
	for (int i = 0; i < 50; i++) {
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		usleep(1000);
	}
	CHECK(rpc_server_inflight(s) == 1, "bytes alone do not end the call");
	close(fd);
	CHECK(spin_until(&n_aborts, aborts + 1, 3000), "abort hook after bytes, then disconnect");
	CHECK(rpc_server_inflight(s) == 0, "nothing in flight");

	/* the same without a hook: the handler's later answer is a no-op */
	started = n_started;
	fd = raw_connect(port);
	raw_post(fd, P_SUBMIT_JOB, TENANT, NULL, 0);
	CHECK(spin_until(&n_started, started + 1, 3000), "handler started");
	close(fd);
	CHECK(spin_pred(server_idle, s, 3000), "nothing in flight");
	answer_held();

	/* the client leaves during authorization */
	fd = raw_connect(port);
	raw_post(fd, P_GET_JOB, "Bearer slow-token", NULL, 0);
	for (int i = 0; i < 3000 && !slow_call; i++) {
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		usleep(300);
	}
	CHECK(slow_call != NULL, "auth started");
	close(fd);
	CHECK(spin_pred(server_idle, s, 3000), "nothing in flight");
	started = n_started;
	resolve_slow();
	CHECK(n_started == started, "no handler for a departed client");

	/* a pipelined second request is not mistaken for a disconnect */
	uint8_t g[16];
	size_t gn = pack_get_job(3, g);
	fd = raw_connect(port);
	started = n_started;
	raw_post(fd, P_LIST_JOBS, TENANT, buf, pack_list_jobs(40, buf));
	raw_post(fd, P_GET_JOB, TENANT, g, gn);
	CHECK(spin_until(&n_started, started + 2, 3000), "both answered in order");
	char rbuf[4096];
	size_t got = 0;
	int64_t end = now_ms() + 3000;
	while (now_ms() < end) {
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		ssize_t k = recv(fd, rbuf + got, sizeof rbuf - 1 - got, MSG_DONTWAIT);
		if (k > 0)
			got += (size_t)k;
		rbuf[got] = 0;
		char *first = strstr(rbuf, "HTTP/1.1 200");
		if (first && strstr(first + 1, "HTTP/1.1 200"))
			break;
		usleep(300);
	}
	char *first = strstr(rbuf, "HTTP/1.1 200");
	CHECK(first && strstr(first + 1, "HTTP/1.1 200"), "two answers: %s", rbuf);
	close(fd);
	spin_for(10);
}

static bool metric_value(struct rpc_server *s, const char *series, double *v)
{
	struct evbuffer *b = evbuffer_new();
	rpc_server_metrics(s, b);
	evbuffer_add(b, "", 1);
	const char *text = (const char *)evbuffer_pullup(b, -1);
	bool found = false;
	size_t sl = strlen(series);
	for (const char *p = text; p && *p;) {
		if (!strncmp(p, series, sl) && p[sl] == ' ') {
			*v = strtod(p + sl + 1, NULL);
			found = true;
			break;
		}
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	evbuffer_free(b);
	return found;
}

struct conns_want {
	struct rpc_server *s;
	double at_most;
};

static bool conns_at_most(void *arg)
{
	struct conns_want *w = arg;
	double v = -1;
	return metric_value(w->s, "gpumatch_rpc_connections", &v) && v <= w->at_most;
}

static void test_keepalive(int port, struct rpc_server *s)
{
	double before = -1, after = -1;
	/* let the server see earlier clients go */
	CHECK(spin_pred(conns_at_most, &(struct conns_want){ s, 0 }, 3000), "no connections");
	CHECK(metric_value(s, "gpumatch_rpc_connections", &before), "connections gauge");
	struct evhttp_connection *c = client_new(port);
	struct resp r;
	uint8_t buf[32];
	for (int i = 0; i < 30; i++) {
		switch (i % 3) {
		case 0:
			http_do(c, EVHTTP_REQ_POST, P_GET_JOB,
			        &(struct opts){ .ctype = PROTO,
			                        .auth = TENANT,
			                        .body = buf,
			                        .len = pack_get_job((uint64_t)i, buf) },
			        &r);
			CHECK_STATUS(r, 200);
			break;
		case 1: {
			char j[64];
			snprintf(j, sizeof j, "{\"jobId\":\"%d\"}", i);
			http_do(c, EVHTTP_REQ_POST, P_GET_JOB,
			        &(struct opts){
			            .ctype = JSON, .auth = TENANT, .body = j, .len = strlen(j) },
			        &r);
			CHECK_STATUS(r, 200);
			break;
		}
		default:
			http_do(c, EVHTTP_REQ_POST, P_GET_JOB,
			        &(struct opts){ .ctype = PROTO, .body = buf, .len = 0 }, &r);
			CHECK_CODE(r, 401, "unauthenticated");
		}
	}
	CHECK(metric_value(s, "gpumatch_rpc_connections", &after), "connections gauge");
	CHECK(after == before + 1, "30 calls on one connection: %g -> %g", before, after);
	evhttp_connection_free(c);
	CHECK(spin_pred(conns_at_most, &(struct conns_want){ s, before }, 3000), "connection gone");
}

/* ---- curl ------------------------------------------------------------------- */

static char tmpdir[64];

struct curl_out {
	int eof;
	char text[4096];
	size_t len;
};

static void curl_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct curl_out *o = arg;
	(void)what;
	ssize_t k = read(fd, o->text + o->len, sizeof o->text - 1 - o->len);
	if (k > 0) {
		o->len += (size_t)k;
		o->text[o->len] = 0;
	} else if (k == 0 || (errno != EAGAIN && errno != EINTR)) {
		o->eof = 1;
	}
}

/* Runs curl with args while the loop keeps serving; returns its stdout. */
static void curl_run(const char *args, struct curl_out *o)
{
	char cmd[2048];
	memset(o, 0, sizeof *o);
	snprintf(cmd, sizeof cmd, "curl -sS --max-time 10 %s 2>&1", args);
	FILE *p = popen(cmd, "r");
	CHECK(p != NULL, "popen curl");
	if (!p)
		return;
	int fd = fileno(p);
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	struct event *ev = event_new(base, fd, EV_READ | EV_PERSIST, curl_read_cb, o);
	event_add(ev, NULL);
	CHECK(spin_until(&o->eof, 1, 15000), "curl finished");
	event_free(ev);
	int rc = pclose(p);
	CHECK(rc == 0, "curl exit %d: %s", rc, o->text);
}

static void write_file(const char *name, const void *data, size_t len)
{
	char path[128];
	snprintf(path, sizeof path, "%s/%s", tmpdir, name);
	FILE *f = fopen(path, "wb");
	fwrite(data, 1, len, f);
	fclose(f);
}

static size_t read_file(const char *name, char *buf, size_t cap)
{
	char path[128];
	snprintf(path, sizeof path, "%s/%s", tmpdir, name);
	FILE *f = fopen(path, "rb");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, cap - 1, f);
	buf[n] = 0;
	fclose(f);
	return n;
}

/* POSTs the file "in" with curl; *status and the body file "out" back. */
static void curl_post(int port, const char *path, const char *headers, int *status, char *ctype,
                      char *body, size_t cap)
{
	char args[1024];
	struct curl_out o;
	snprintf(args, sizeof args,
	         "-o %s/out -w '%%{http_code} %%{content_type}' -X POST %s --data-binary @%s/in "
	         "http://127.0.0.1:%d%s",
	         tmpdir, headers, tmpdir, port, path);
	curl_run(args, &o);
	*status = 0;
	ctype[0] = 0;
	sscanf(o.text, "%d %127s", status, ctype);
	read_file("out", body, cap);
}

static void test_curl(int port, size_t max_body)
{
	int status;
	char ctype[128], body[4096];

	const char *j = "{\"jobId\":\"77\"}";
	write_file("in", j, strlen(j));
	curl_post(port, P_GET_JOB,
	          "-H 'Content-Type: application/json' -H 'Authorization: Bearer tenant-token'",
	          &status, ctype, body, sizeof body);
	CHECK(status == 200, "curl json status %d %s", status, body);
	CHECK(!strcmp(ctype, JSON), "curl ctype %s", ctype);
	CHECK(strstr(body, "\"id\":\"77\"") != NULL, "curl body %s", body);

	uint8_t buf[32];
	size_t n = pack_get_job(78, buf);
	write_file("in", buf, n);
	curl_post(port, P_GET_JOB,
	          "-H 'Content-Type: application/proto' -H 'Connect-Protocol-Version: 1' "
	          "-H 'Authorization: Bearer tenant-token'",
	          &status, ctype, body, sizeof body);
	CHECK(status == 200, "curl proto status %d", status);
	CHECK(!strcmp(ctype, PROTO), "curl ctype %s", ctype);
	char raw[256];
	size_t rn = read_file("out", raw, sizeof raw);
	Gpumatch__V1__GetJobResponse *m =
	    gpumatch__v1__get_job_response__unpack(NULL, rn, (const uint8_t *)raw);
	CHECK(m && m->job && m->job->id == 78, "curl proto reply");
	if (m)
		gpumatch__v1__get_job_response__free_unpacked(m, NULL);

	write_file("in", j, strlen(j));
	curl_post(port, P_GET_JOB, "-H 'Content-Type: application/json'", &status, ctype, body,
	          sizeof body);
	CHECK(status == 401, "curl no auth %d", status);
	CHECK(strstr(body, "{\"code\":\"unauthenticated\"") == body, "curl body %s", body);

	/* curl's default form content type */
	curl_post(port, P_GET_JOB, "-H 'Authorization: Bearer tenant-token'", &status, ctype, body,
	          sizeof body);
	CHECK(status == 415, "curl form type %d", status);
	CHECK(strstr(body, "application/x-www-form-urlencoded") != NULL, "curl body %s", body);

	char *big = malloc(max_body + 100);
	memset(big, 'x', max_body + 100);
	write_file("in", big, max_body + 100);
	free(big);
	curl_post(port, P_GET_JOB,
	          "-H 'Content-Type: application/json' -H 'Authorization: Bearer tenant-token'",
	          &status, ctype, body, sizeof body);
	CHECK(status == 413, "curl oversize %d", status);

	struct curl_out o;
	char args[512];
	snprintf(args, sizeof args, "-o /dev/null -w '%%{http_code}' http://127.0.0.1:%d%s", port,
	         P_GET_JOB);
	curl_run(args, &o);
	CHECK(!strcmp(o.text, "405"), "curl GET on an RPC path: %s", o.text);

	/* keep-alive: the second transfer reuses the first one's connection */
	write_file("in", j, strlen(j));
	snprintf(args, sizeof args,
	         "-o /dev/null -o /dev/null -w '%%{http_code} %%{num_connects}\\n' "
	         "-H 'Content-Type: application/json' -H 'Authorization: Bearer tenant-token' "
	         "--data-binary @%s/in http://127.0.0.1:%d%s http://127.0.0.1:%d%s",
	         tmpdir, port, P_GET_JOB, port, P_GET_JOB);
	curl_run(args, &o);
	CHECK(!strcmp(o.text, "200 1\n200 0\n"), "curl keep-alive: %s", o.text);
}

/* ---- separate servers -------------------------------------------------------- */

static bool has_line(const char *text, const char *line)
{
	size_t n = strlen(line);
	for (const char *p = text; p && *p;) {
		if (!strncmp(p, line, n) && (p[n] == '\n' || p[n] == 0))
			return true;
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	return false;
}

static void test_metrics(const struct rpc_limits *l)
{
	struct rpc_server *s;
	start_server(l, &s);
	int port = rpc_server_port(s);
	struct evhttp_connection *c = client_new(port);
	struct resp r;
	uint8_t buf[32];
	size_t n = pack_get_job(1, buf);
	for (int i = 0; i < 3; i++)
		http_do(c, EVHTTP_REQ_POST, P_GET_JOB,
		        &(struct opts){ .ctype = PROTO, .auth = TENANT, .body = buf, .len = n },
		        &r);
	for (int i = 0; i < 2; i++)
		http_do(c, EVHTTP_REQ_POST, P_GET_JOB,
		        &(struct opts){ .ctype = PROTO, .body = buf, .len = n }, &r);
	http_do(c, EVHTTP_REQ_GET, P_GET_JOB, &(struct opts){ 0 }, &r);
	http_do(c, EVHTTP_REQ_POST, P_EXPLAIN_JOB,
	        &(struct opts){ .ctype = PROTO, .auth = TENANT, .body = buf, .len = n }, &r);
	http_do(c, EVHTTP_REQ_POST, "/x.y/Z", &(struct opts){ .ctype = PROTO }, &r);
	http_do(c, EVHTTP_REQ_POST, P_CANCEL_JOB,
	        &(struct opts){
	            .ctype = PROTO, .auth = TENANT, .h1 = "Connect-Timeout-Ms", .v1 = "20" },
	        &r);
	CHECK_CODE(r, 504, "deadline_exceeded");
	http_do(c, EVHTTP_REQ_GET, "/metrics", &(struct opts){ 0 }, &r);
	CHECK_STATUS(r, 200);
	static const char *const want[] = {
		"# HELP gpumatch_rpc_requests_total RPC calls answered or aborted, by method and "
		"Connect code.",
		"# TYPE gpumatch_rpc_requests_total counter",
		"gpumatch_rpc_requests_total{method=\"" P_GET_JOB "\",code=\"ok\"} 3",
		"gpumatch_rpc_requests_total{method=\"" P_GET_JOB "\",code=\"unimplemented\"} 1",
		"gpumatch_rpc_requests_total{method=\"" P_GET_JOB "\",code=\"unauthenticated\"} 2",
		"gpumatch_rpc_requests_total{method=\"" P_EXPLAIN_JOB "\",code=\"not_found\"} 1",
		"gpumatch_rpc_requests_total{method=\"" P_CANCEL_JOB
		"\",code=\"deadline_exceeded\"} 1",
		"gpumatch_rpc_requests_total{method=\"unknown\",code=\"unimplemented\"} 1",
		"# TYPE gpumatch_rpc_duration_seconds histogram",
		"gpumatch_rpc_duration_seconds_bucket{method=\"" P_GET_JOB "\",le=\"+Inf\"} 6",
		"gpumatch_rpc_duration_seconds_count{method=\"" P_GET_JOB "\"} 6",
		"gpumatch_rpc_duration_seconds_bucket{method=\"" P_CANCEL_JOB "\",le=\"0.01\"} 0",
		"gpumatch_rpc_duration_seconds_bucket{method=\"" P_CANCEL_JOB "\",le=\"1\"} 1",
		"gpumatch_rpc_duration_seconds_count{method=\"" P_CANCEL_JOB "\"} 1",
		"# TYPE gpumatch_rpc_inflight gauge",
		"gpumatch_rpc_inflight 0",
		"gpumatch_rpc_connections 1",
	};
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
		CHECK(has_line(r.body, want[i]), "metrics lack %s\n%s", want[i], r.body);
	CHECK(!strstr(r.body, "method=\"" P_LIST_JOBS "\""), "idle methods stay out");
	CHECK(!strstr(r.body, "healthz") && !strstr(r.body, "/metrics"), "GET routes not counted");
	evhttp_connection_free(c);
	rpc_server_free(s);
	spin_for(5);
}

static void test_max_connections(const struct rpc_limits *base_limits)
{
	struct rpc_limits l = *base_limits;
	l.max_connections = 2;
	struct rpc_server *s;
	start_server(&l, &s);
	int port = rpc_server_port(s);
	struct evhttp_connection *c[4];
	struct resp r;
	for (int i = 0; i < 3; i++) {
		c[i] = client_new(port);
		http_do(c[i], EVHTTP_REQ_POST, P_GET_TENANT, &(struct opts){ .ctype = PROTO }, &r);
		if (i < 2) {
			CHECK_STATUS(r, 200);
		} else {
			CHECK_CODE(r, 503, "unavailable");
			CHECK(!strcmp(r.connection, "close"), "refused connection closed: %s",
			      r.connection);
		}
	}
	/* connections are counted from accept: past the limit, only GET
	 * /healthz is answered (liveness probes see a live server), then
	 * closed; anything else is refused without reaching the handlers */
	struct evhttp_connection *c4 = client_new(port);
	http_do(c4, EVHTTP_REQ_GET, "/healthz", &(struct opts){ 0 }, &r);
	CHECK_STATUS(r, 200);
	CHECK(!strcmp(r.body, "ok\n"), "healthz body past the limit: %s", r.body);
	CHECK(!strcmp(r.connection, "close"), "healthz past the limit closes: %s", r.connection);
	evhttp_connection_free(c4);
	c4 = client_new(port);
	http_do(c4, EVHTTP_REQ_GET, "/metrics", &(struct opts){ 0 }, &r);
	CHECK_CODE(r, 503, "unavailable");
	evhttp_connection_free(c4);
	evhttp_connection_free(c[0]);
	evhttp_connection_free(c[2]);
	CHECK(spin_pred(conns_at_most, &(struct conns_want){ s, 1 }, 3000), "a place freed");
	c[3] = client_new(port);
	http_do(c[3], EVHTTP_REQ_POST, P_GET_TENANT, &(struct opts){ .ctype = PROTO }, &r);
	CHECK_STATUS(r, 200);
	/* an open connection keeps its place */
	http_do(c[1], EVHTTP_REQ_POST, P_GET_TENANT, &(struct opts){ .ctype = PROTO }, &r);
	CHECK_STATUS(r, 200);
	evhttp_connection_free(c[1]);
	evhttp_connection_free(c[3]);
	rpc_server_free(s);
	spin_for(5);
}

struct eof_wait {
	int fd;
	int eof;
};

static void eof_cb(evutil_socket_t fd, short what, void *arg)
{
	struct eof_wait *w = arg;
	char b[512];
	(void)what;
	ssize_t k = recv(fd, b, sizeof b, 0);
	if (k == 0 || (k < 0 && errno != EAGAIN))
		w->eof = 1;
}

static void test_idle_timeout(const struct rpc_limits *base_limits)
{
	struct rpc_limits l = *base_limits;
	l.idle_timeout_ms = 600000;
	struct rpc_server *s;
	start_server(&l, &s);
	/* applies to connections made after the change: under the old value
	 * the connection would outlive the wait below */
	l.idle_timeout_ms = 200;
	rpc_server_set_limits(s, &l);
	int fd = raw_connect(rpc_server_port(s));
	const char *get = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
	CHECK(write(fd, get, strlen(get)) == (ssize_t)strlen(get), "write");
	struct eof_wait w = { fd, 0 };
	struct event *ev = event_new(base, fd, EV_READ | EV_PERSIST, eof_cb, &w);
	event_add(ev, NULL);
	CHECK(spin_until(&w.eof, 1, 60000), "idle connection closed");
	event_free(ev);
	close(fd);
	rpc_server_free(s);
	spin_for(5);
}

static void test_stop_accepting(const struct rpc_limits *l)
{
	struct rpc_server *s;
	start_server(l, &s);
	int port = rpc_server_port(s);
	struct evhttp_connection *c = client_new(port);
	struct resp r, rd;
	uint8_t buf[16];
	http_do(c, EVHTTP_REQ_POST, P_GET_TENANT, &(struct opts){ .ctype = PROTO }, &r);
	CHECK_STATUS(r, 200);
	/* a call in flight when accepting stops still answers */
	struct evhttp_connection *c2 = client_new(port);
	http_start(
	    c2, EVHTTP_REQ_POST, P_LIST_JOBS,
	    &(struct opts){
	        .ctype = PROTO, .auth = TENANT, .body = buf, .len = pack_list_jobs(50, buf) },
	    &rd);
	int started = n_started;
	CHECK(spin_until(&n_started, started + 1, 3000), "long call started");
	rpc_server_stop_accepting(s);
	CHECK(rpc_server_inflight(s) == 1, "one in flight");
	CHECK(spin_until(&rd.done, 1, 3000), "in-flight call answered");
	CHECK_STATUS(rd, 200);
	CHECK(!strcmp(rd.connection, "close"), "draining closes keep-alive: %s", rd.connection);
	CHECK(rpc_server_inflight(s) == 0, "drained");
	/* a new call on an open connection is turned away */
	http_do(c, EVHTTP_REQ_POST, P_GET_TENANT, &(struct opts){ .ctype = PROTO }, &r);
	CHECK_CODE(r, 503, "unavailable");
	/* and nobody new gets in */
	int fd = raw_connect(port);
	CHECK(fd < 0, "listener closed");
	if (fd >= 0)
		close(fd);
	evhttp_connection_free(c);
	evhttp_connection_free(c2);
	rpc_server_free(s);
	spin_for(5);
}

/* Freeing the server aborts calls in flight: hooks run; calls still held by
 * a resolver or a hook-less handler stay valid until released. */
static void test_shutdown(const struct rpc_limits *l)
{
	struct rpc_server *s;
	start_server(l, &s);
	int port = rpc_server_port(s);
	uint8_t buf[64];
	struct resp r1, r2, r3, r4;
	struct evhttp_connection *c1 = client_new(port), *c2 = client_new(port),
	                         *c3 = client_new(port), *c4 = client_new(port);
	int started = n_started, aborts = n_aborts, verdicts = n_admin_verdicts;
	http_start(
	    c1, EVHTTP_REQ_POST, P_CANCEL_JOB,
	    &(struct opts){
	        .ctype = PROTO, .auth = TENANT, .body = buf, .len = pack_cancel_job("", buf) },
	    &r1);
	http_start(c2, EVHTTP_REQ_POST, P_SUBMIT_JOB,
	           &(struct opts){ .ctype = PROTO, .auth = TENANT }, &r2);
	http_start(c3, EVHTTP_REQ_POST, P_GET_JOB,
	           &(struct opts){ .ctype = PROTO, .auth = "Bearer slow-token" }, &r3);
	http_start(c4, EVHTTP_REQ_POST, P_LIST_TENANTS,
	           &(struct opts){ .ctype = PROTO, .auth = ADMIN }, &r4);
	CHECK(spin_until(&n_started, started + 2, 3000), "handlers started");
	for (int i = 0; i < 3000 && !slow_call; i++) {
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		usleep(300);
	}
	CHECK(slow_call != NULL, "slow auth pending");
	CHECK(rpc_server_inflight(s) >= 3, "in flight: %zu", rpc_server_inflight(s));
	rpc_server_free(s);
	CHECK(n_aborts == aborts + 1, "hook ran at shutdown");
	/* released after the server is gone: no-ops that free the calls */
	answer_held();
	resolve_slow();
	/* the admin verdict lands on an orphaned call too */
	CHECK(spin_until(&n_admin_verdicts, verdicts + 1, 3000), "admin verdict");
	CHECK(spin_until(&r1.done, 1, 3000) && r1.status == 0, "c1 dropped");
	evhttp_connection_free(c1);
	evhttp_connection_free(c2);
	evhttp_connection_free(c3);
	evhttp_connection_free(c4);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	log_min_level = LOG_ERROR;
	const char *lvl = getenv("GPUMATCH_TEST_LOG");
	if (lvl && log_parse_level(lvl) >= 0)
		log_min_level = (enum log_level)log_parse_level(lvl);
	snprintf(tmpdir, sizeof tmpdir, "/tmp/test_rpc.XXXXXX");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	base = event_base_new();

	struct rpc_limits limits = {
		.max_body_bytes = 4096,
		.request_timeout_ms = 2000,
		.idle_timeout_ms = 5000,
		.max_connections = 0,
	};
	test_codes();
	test_new_rejects();

	struct rpc_server *s;
	start_server(&limits, &s);
	int port = rpc_server_port(s);
	test_port_in_use(port);
	test_binary(port);
	test_json(port);
	test_auth(port);
	test_bad_bodies(port);
	test_protocol_errors(port, limits.max_body_bytes);
	test_deferred(port);
	test_timeouts(port, s, &limits);
	test_disconnect(port, s);
	test_keepalive(port, s);
	test_curl(port, limits.max_body_bytes);
	rpc_server_free(s);
	spin_for(5);

	test_metrics(&limits);
	test_max_connections(&limits);
	test_idle_timeout(&limits);
	test_stop_accepting(&limits);
	test_shutdown(&limits);
	spin_for(20);

	event_base_free(base);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
	printf("%d checks, %d failures\n", checks, failures);
	return failures ? 1 : 0;
}
