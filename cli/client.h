/* client.h — the gpumatch command's Connect client: unary RPCs with binary
 * protobuf bodies over libevent's evhttp, blocking (one call on a private
 * event loop, for the commands) or asynchronous (on the agent's loop). */
#ifndef GPUMATCH_CLI_CLIENT_H
#define GPUMATCH_CLI_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <protobuf-c/protobuf-c.h>

/* The outcome of one call. http_status 0 means no reply came (refused,
 * reset, timed out); code/message then say why in words. On a Connect
 * error, code is its code ("not_found") and message the server's text. On
 * success (http_status 200), resp is the unpacked response, owned by the
 * result: cl_result_clear frees it. */
struct cl_result {
	int http_status;
	char code[64];
	char message[1024];
	ProtobufCMessage *resp;
};

void cl_result_clear(struct cl_result *r);

/* True when the call reached the server and it answered with a Connect
 * error that says retrying the same request cannot help (bad input, not
 * found, a stale fencing token, permissions). */
bool cl_result_final_error(const struct cl_result *r);

/* TLS settings for every https:// connection the process makes from now
 * on: ca_file (PEM; NULL or "" = the system store) verifies the server,
 * cert_file/key_file (PEM; NULL or "" = none) are the client certificate
 * some servers ask agents for. Errors in them surface on the first call. */
void cl_tls_setup(const char *ca_file, const char *cert_file, const char *key_file);

/* A keep-alive connection to base_url ("http://host:port" or
 * "https://host:port"). Returns NULL (and a reason in err) when the URL is
 * neither, the TLS settings are unusable, or libevent fails. timeout_s
 * bounds each request. Over https the server's certificate chain and host
 * name are verified; a failure comes back as code "tls" with the reason
 * (unknown CA, expired, wrong host). Freed with cl_conn_free. */
struct cl_conn;
struct cl_conn *cl_conn_new(struct event_base *base, const char *base_url, int timeout_s, char *err,
                            size_t err_len);
void cl_conn_free(struct cl_conn *c);

/* Called once per asynchronous call with the result, which the callback
 * may keep parts of by taking r->resp (set it to NULL); the rest is freed
 * after the callback returns. */
typedef void (*cl_done_cb)(struct cl_result *r, void *arg);

/* POSTs req to /gpumatch.v1.<service>/<method> with the bearer token (may
 * be NULL or ""). The response type comes from the contract's service
 * descriptor. Returns 0, or -1 when the call could not be queued (unknown
 * method, out of memory); cb is then never called. */
int cl_call_async(struct cl_conn *c, const char *token, const char *service, const char *method,
                  const ProtobufCMessage *req, cl_done_cb cb, void *arg);

/* The same, blocking: runs a private event loop until the reply arrives.
 * Fills *r (cleared first). Returns 0 when the server answered 200, -1
 * otherwise (r says why). */
int cl_call(const char *base_url, const char *token, int timeout_s, const char *service,
            const char *method, const ProtobufCMessage *req, struct cl_result *r);

/* Decodes an HTTP answer (status, body[0..len)) to a call whose response
 * type is out into *r (zeroed by the caller): the unpacked response on 200,
 * else the Connect error's code and message (or http_<status> and the
 * body's start when it is not one). */
void cl_decode_reply(const ProtobufCMessageDescriptor *out, int status, const uint8_t *body,
                     size_t len, struct cl_result *r);

/* The response descriptor of /gpumatch.v1.<service>/<method>, or NULL. */
const ProtobufCMessageDescriptor *cl_method_output(const char *service, const char *method);
const ProtobufCMessageDescriptor *cl_method_input(const char *service, const char *method);

/* Wall clock, microseconds since the epoch. */
int64_t cl_now_us(void);

#endif
