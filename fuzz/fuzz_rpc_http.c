/* fuzz_rpc_http.c — the HTTP/Connect request path up to the handler,
 * through the real code: gpumatchd's listener and connection guard
 * (http_guard.c, http_frame.c), evhttp, and rpc.c's routing, method and
 * header checks (Content-Type, Connect-Protocol-Version,
 * Connect-Timeout-Ms, Authorization), body decoding (binary with its wire
 * checks, or JSON) for every method of the contract. Each input is written
 * as is to a fresh loopback connection, whose write side is then closed;
 * the server's loop runs until it has answered and closed, or went quiet.
 * Handlers answer with an empty message of the method's output type.
 * Bearer tokens "t", "o" and "a" are a tenant, an operator and an admin. */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "gpumatch/v1/registry.h"
#include "log.h"
#include "rpc.h"

static struct event_base *base;
static struct rpc_server *srv;
static int port;
static struct rpc_method *methods;
static size_t n_methods;

static void answer(struct rpc_call *call, const ProtobufCMessage *req)
{
	(void)req;
	const char *path = rpc_method_path(call);
	for (size_t i = 0; i < n_methods; i++)
		if (!strcmp(methods[i].path, path)) {
			const ProtobufCMessageDescriptor *d = methods[i].out;
			ProtobufCMessage *m = calloc(1, d->sizeof_message);
			if (!m)
				abort();
			protobuf_c_message_init(d, m);
			rpc_reply(call, m);
			free(m);
			return;
		}
	rpc_error(call, RPC_INTERNAL, "no such method");
}

static void auth(struct rpc_call *call, const char *token, rpc_auth_done done, void *arg)
{
	(void)arg;
	struct principal p = { .token_id = 1, .tenant_id = 1, .operator_id = 1 };
	if (!strcmp(token, "t"))
		p.role = ROLE_TENANT;
	else if (!strcmp(token, "o"))
		p.role = ROLE_OPERATOR;
	else if (!strcmp(token, "a"))
		p.role = ROLE_ADMIN;
	done(call, p.role != 0, false, p.role ? &p : NULL);
}

static void start(void)
{
	signal(SIGPIPE, SIG_IGN);
	log_min_level = LOG_ERROR;
	size_t total = 0;
	for (size_t s = 0; s < proto_service_count; s++)
		total += proto_services[s]->n_methods;
	methods = calloc(total + 1, sizeof *methods);
	if (!methods)
		abort();
	for (size_t s = 0; s < proto_service_count; s++) {
		const ProtobufCServiceDescriptor *sd = proto_services[s];
		for (unsigned m = 0; m < sd->n_methods; m++) {
			char *p = malloc(strlen(sd->name) + strlen(sd->methods[m].name) + 3);
			if (!p)
				abort();
			sprintf(p, "/%s/%s", sd->name, sd->methods[m].name);
			methods[n_methods] = (struct rpc_method){
				.path = p,
				.in = sd->methods[m].input,
				.out = sd->methods[m].output,
				.roles = ROLE_TENANT | ROLE_OPERATOR | ROLE_ADMIN,
				.fn = answer,
			};
			n_methods++;
		}
	}
	base = event_base_new();
	struct rpc_limits l = {
		.max_body_bytes = 65536,
		.request_timeout_ms = 5000,
		.idle_timeout_ms = 5000,
		.max_connections = 100000,
		.max_per_client = 0,
		.header_timeout_ms = 5000,
		.body_timeout_ms = 5000,
	};
	char err[256];
	srv = rpc_server_new(base, "127.0.0.1", 0, methods, &l, auth, NULL, err, sizeof err);
	if (!srv) {
		fprintf(stderr, "fuzz_rpc_http: %s\n", err);
		abort();
	}
	port = rpc_server_port(srv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!srv)
		start();
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		abort();
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
		close(fd);
		return 0;
	}
	size_t off = 0;
	char buf[65536];
	bool eof = false;
	int quiet = 0;
	/* write what fits, run the server, read its answers; until it closes */
	for (int round = 0; round < 20000 && !eof && quiet < 200; round++) {
		if (off < size) {
			ssize_t w = send(fd, data + off, size - off, MSG_NOSIGNAL | MSG_DONTWAIT);
			if (w > 0)
				off += (size_t)w;
			else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
				off = size;
			if (off == size)
				shutdown(fd, SHUT_WR);
		} else if (round == 0) {
			shutdown(fd, SHUT_WR);
		}
		event_base_loop(base, EVLOOP_NONBLOCK);
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		if (poll(&pfd, 1, quiet > 20 ? 1 : 0) > 0) {
			ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
			if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
				eof = true;
			quiet = 0;
		} else {
			quiet++;
		}
	}
	close(fd);
	/* let the server see the close */
	for (int i = 0; i < 4; i++)
		event_base_loop(base, EVLOOP_NONBLOCK);
	return 0;
}
