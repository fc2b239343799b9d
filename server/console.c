/* console.c — serves the web console: the static files of console/, built
 * into the binary, at / (index.html) and /<file>. Every answer carries a
 * strict Content-Security-Policy (scripts and styles from this origin only,
 * no inline code, no framing), X-Content-Type-Options: nosniff and no
 * referrer. The console itself calls the JSON Connect API of the same
 * server with the bearer token the user signs in with. */
#include "console.h"

#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "rpc.h"

#define CONSOLE_CSP                                                                       \
	"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " \
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

static void security_headers(struct evkeyvalq *h)
{
	evhttp_add_header(h, "Content-Security-Policy", CONSOLE_CSP);
	evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
	evhttp_add_header(h, "Referrer-Policy", "no-referrer");
	evhttp_add_header(h, "X-Frame-Options", "DENY");
	evhttp_add_header(h, "Cross-Origin-Opener-Policy", "same-origin");
	evhttp_add_header(h, "Cache-Control", "no-cache");
}

static void console_cb(struct evhttp_request *req, void *arg)
{
	(void)arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	if (!path || !*path || !strcmp(path, "/"))
		path = "/index.html";
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	security_headers(h);
	struct evbuffer *b = evbuffer_new();
	if (!b) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	for (const struct console_file *f = console_files; f->path; f++) {
		if (strcmp(f->path, path))
			continue;
		evhttp_add_header(h, "Content-Type", f->content_type);
		evbuffer_add_reference(b, f->data, f->len, NULL, NULL);
		evhttp_send_reply(req, 200, "OK", b);
		evbuffer_free(b);
		return;
	}
	evhttp_add_header(h, "Content-Type", "text/plain; charset=utf-8");
	evbuffer_add_printf(b, "not found\n");
	evhttp_send_reply(req, 404, "Not Found", b);
	evbuffer_free(b);
}

void console_register(struct rpc_server *s)
{
	rpc_server_add_get(s, "/*", console_cb, NULL);
}
