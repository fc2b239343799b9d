/* http_frame.c — see http_frame.h. The rules follow RFC 9112 where evhttp
 * (libevent 2.1) would otherwise read a request differently from a proxy in
 * front of it, or answer with an HTML page instead of a Connect error. */
#include "http_frame.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static void fail(struct http_frame *f, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail(struct http_frame *f, int status, const char *code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(f->err_msg, sizeof f->err_msg, fmt, ap);
	va_end(ap);
	f->err_status = status;
	f->err_code = code;
	f->st = HF_FAILED;
}

void hf_init(struct http_frame *f, size_t max_head_bytes, size_t max_body_bytes)
{
	memset(f, 0, sizeof *f);
	f->max_head_bytes = max_head_bytes;
	f->max_body_bytes = max_body_bytes;
	f->st = HF_IDLE;
}

bool hf_in_request(const struct http_frame *f)
{
	return f->st != HF_IDLE && f->st != HF_FAILED;
}

bool hf_in_body(const struct http_frame *f)
{
	return f->st == HF_BODY || f->st == HF_CHUNK_SIZE || f->st == HF_CHUNK_DATA ||
	       f->st == HF_CHUNK_CRLF || f->st == HF_TRAILER;
}

static bool is_tchar(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool is_ows(char c)
{
	return c == ' ' || c == '\t';
}

/* Methods evhttp knows, and whether they may carry a body there. */
static const struct {
	const char *name;
	bool body;
} methods[] = {
	{ "GET", true },     { "POST", true },  { "PUT", true },   { "DELETE", true },
	{ "OPTIONS", true }, { "PATCH", true }, { "HEAD", false }, { "TRACE", false },
};

static void request_line(struct http_frame *f, const char *l, size_t n)
{
	const char *sp1 = memchr(l, ' ', n);
	if (!sp1 || sp1 == l) {
		fail(f, 400, "invalid_argument", "malformed request line");
		return;
	}
	size_t mlen = (size_t)(sp1 - l);
	for (size_t i = 0; i < mlen; i++)
		if (!is_tchar((unsigned char)l[i])) {
			fail(f, 400, "invalid_argument", "malformed request method");
			return;
		}
	const char *t = sp1 + 1;
	const char *end = l + n;
	const char *sp2 = memchr(t, ' ', (size_t)(end - t));
	if (!sp2 || sp2 == t) {
		fail(f, 400, "invalid_argument", "malformed request line");
		return;
	}
	const char *v = sp2 + 1;
	size_t vlen = (size_t)(end - v);
	if (vlen == 8 && !memcmp(v, "HTTP/1.1", 8))
		f->http10 = false;
	else if (vlen == 8 && !memcmp(v, "HTTP/1.0", 8))
		f->http10 = true;
	else {
		fail(f, 505, "unimplemented", "unsupported HTTP version: use HTTP/1.1");
		return;
	}
	if (mlen == 7 && !memcmp(l, "CONNECT", 7)) {
		fail(f, 405, "unimplemented",
		     "CONNECT is not supported: call POST /<service>/<method>");
		return;
	}
	bool known = false;
	for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
		if (strlen(methods[i].name) == mlen && !memcmp(methods[i].name, l, mlen)) {
			known = true;
			f->head_only_method = !methods[i].body;
		}
	if (!known) {
		fail(f, 501, "unimplemented",
		     "unknown HTTP method \"%.*s\": call POST /<service>/<method>",
		     (int)(mlen > 32 ? 32 : mlen), l);
		return;
	}
	if (*t != '/') {
		fail(f, 400, "invalid_argument", "request target must be a path starting with /");
		return;
	}
	size_t tlen = (size_t)(sp2 - t);
	f->healthz = mlen == 3 && !memcmp(l, "GET", 3) && tlen >= 8 && !memcmp(t, "/healthz", 8) &&
	             (tlen == 8 || t[8] == '?');
	for (const char *p = t; p < sp2; p++)
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) {
			fail(f, 400, "invalid_argument",
			     "request target has a byte outside visible ASCII");
			return;
		}
}

/* Parses 1 to 19 decimal digits; false when malformed. */
static bool parse_dec(const char *s, size_t n, uint64_t *out)
{
	if (!n || n > 19)
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*out = v;
	return true;
}

static bool name_is(const char *name, size_t n, const char *lit)
{
	return strlen(lit) == n && !strncasecmp(name, lit, n);
}

/* One header (or trailer) line; trailers are only checked for shape. */
static void header_line(struct http_frame *f, const char *l, size_t n, bool trailer)
{
	if (is_ows(l[0])) {
		fail(f, 400, "invalid_argument", "obsolete header line folding is not accepted");
		return;
	}
	const char *colon = memchr(l, ':', n);
	if (!colon || colon == l) {
		fail(f, 400, "invalid_argument", "malformed header line: want \"Name: value\"");
		return;
	}
	size_t nlen = (size_t)(colon - l);
	for (size_t i = 0; i < nlen; i++)
		if (!is_tchar((unsigned char)l[i])) {
			fail(f, 400, "invalid_argument", "malformed header name");
			return;
		}
	if (++f->n_headers > HF_HEADERS_MAX) {
		fail(f, 431, "resource_exhausted", "more than %d header fields", HF_HEADERS_MAX);
		return;
	}
	if (trailer)
		return;
	const char *v = colon + 1;
	const char *e = l + n;
	while (v < e && is_ows(*v))
		v++;
	while (e > v && is_ows(e[-1]))
		e--;
	size_t vlen = (size_t)(e - v);
	if (name_is(l, nlen, "Content-Length")) {
		uint64_t cl;
		if (!parse_dec(v, vlen, &cl)) {
			fail(f, 400, "invalid_argument",
			     "malformed Content-Length: want 1 to 19 digits");
			return;
		}
		if (f->has_cl && f->cl != cl) {
			fail(f, 400, "invalid_argument", "conflicting Content-Length headers");
			return;
		}
		f->has_cl = true;
		f->cl = cl;
	} else if (name_is(l, nlen, "Transfer-Encoding")) {
		if (f->has_te) {
			fail(f, 400, "invalid_argument", "more than one Transfer-Encoding header");
			return;
		}
		if (!name_is(v, vlen, "chunked")) {
			fail(f, 501, "unimplemented",
			     "unsupported Transfer-Encoding: send Content-Length or chunked");
			return;
		}
		f->has_te = true;
	} else if (name_is(l, nlen, "Expect")) {
		if (f->has_expect || !name_is(v, vlen, "100-continue")) {
			fail(f, 417, "invalid_argument", "unsupported Expect header");
			return;
		}
		f->has_expect = true;
	}
}

/* The empty line that ends the head: decides the body's framing. Returns
 * the events for the caller. */
static unsigned head_done(struct http_frame *f)
{
	if (f->has_cl && f->has_te) {
		fail(f, 400, "invalid_argument",
		     "both Content-Length and Transfer-Encoding: send one of them");
		return HF_EV_ERROR;
	}
	if (f->has_te && f->http10) {
		fail(f, 400, "invalid_argument", "chunked transfer coding needs HTTP/1.1");
		return HF_EV_ERROR;
	}
	if (f->head_only_method && (f->has_te || (f->has_cl && f->cl))) {
		fail(f, 400, "invalid_argument", "a HEAD or TRACE request has no body");
		return HF_EV_ERROR;
	}
	if (f->has_cl && f->cl > f->max_body_bytes) {
		fail(f, 413, "resource_exhausted",
		     "request body of %llu bytes exceeds the limit of %zu bytes",
		     (unsigned long long)f->cl, f->max_body_bytes);
		return HF_EV_ERROR;
	}
	if (f->has_te) {
		f->st = HF_CHUNK_SIZE;
		return HF_EV_HEAD;
	}
	if (f->has_cl && f->cl) {
		f->st = HF_BODY;
		f->left = f->cl;
		return HF_EV_HEAD;
	}
	f->st = HF_IDLE;
	return HF_EV_HEAD | HF_EV_DONE;
}

static unsigned chunk_size_line(struct http_frame *f, const char *l, size_t n)
{
	if (!n || n > 15) {
		fail(f, 400, "invalid_argument", "malformed chunk size line");
		return HF_EV_ERROR;
	}
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++) {
		char c = l[i];
		unsigned d;
		if (c >= '0' && c <= '9')
			d = (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			d = (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			d = (unsigned)(c - 'A' + 10);
		else {
			fail(f, 400, "invalid_argument",
			     "malformed chunk size line (chunk extensions are not accepted)");
			return HF_EV_ERROR;
		}
		v = v << 4 | d;
	}
	if (v > f->max_body_bytes - f->body_bytes) {
		fail(f, 413, "resource_exhausted",
		     "chunked request body exceeds the limit of %zu bytes", f->max_body_bytes);
		return HF_EV_ERROR;
	}
	f->body_bytes += v;
	if (!v) {
		f->st = HF_TRAILER;
		f->n_headers = 0;
		f->head_bytes = 0;
		return 0;
	}
	f->left = v;
	f->st = HF_CHUNK_DATA;
	return 0;
}

/* A complete line (without its line end) in the current state. */
static unsigned line_done(struct http_frame *f, const char *l, size_t n)
{
	switch (f->st) {
	case HF_REQLINE:
		if (!n) {
			fail(f, 400, "invalid_argument", "empty request line");
			return HF_EV_ERROR;
		}
		request_line(f, l, n);
		if (f->st == HF_FAILED)
			return HF_EV_ERROR;
		f->st = HF_HEADERS;
		return 0;
	case HF_HEADERS:
		if (!n)
			return head_done(f);
		header_line(f, l, n, false);
		return f->st == HF_FAILED ? HF_EV_ERROR : 0;
	case HF_CHUNK_SIZE:
		return chunk_size_line(f, l, n);
	case HF_CHUNK_CRLF:
		if (n) {
			fail(f, 400, "invalid_argument", "chunk data longer than its size");
			return HF_EV_ERROR;
		}
		f->st = HF_CHUNK_SIZE;
		return 0;
	case HF_TRAILER:
		if (!n) {
			f->st = HF_IDLE;
			return HF_EV_DONE;
		}
		header_line(f, l, n, true);
		return f->st == HF_FAILED ? HF_EV_ERROR : 0;
	default:
		return 0;
	}
}

/* A line longer than HF_LINE_KEEP: only a header whose value is not
 * parsed may be that long. */
static unsigned long_line(struct http_frame *f, const char *l, size_t kept)
{
	if (f->st == HF_HEADERS || f->st == HF_TRAILER) {
		const char *colon = memchr(l, ':', kept);
		if (colon && !name_is(l, (size_t)(colon - l), "Content-Length") &&
		    !name_is(l, (size_t)(colon - l), "Transfer-Encoding") &&
		    !name_is(l, (size_t)(colon - l), "Expect")) {
			header_line(f, l, kept, f->st == HF_TRAILER);
			return f->st == HF_FAILED ? HF_EV_ERROR : 0;
		}
		fail(f, 431, "resource_exhausted", "a header line is too long");
		return HF_EV_ERROR;
	}
	if (f->st == HF_REQLINE) {
		fail(f, 414, "resource_exhausted", "the request line is longer than %d bytes",
		     HF_LINE_KEEP);
		return HF_EV_ERROR;
	}
	fail(f, 400, "invalid_argument", "malformed chunk line");
	return HF_EV_ERROR;
}

static bool counts_as_head(const struct http_frame *f)
{
	return f->st == HF_REQLINE || f->st == HF_HEADERS || f->st == HF_TRAILER;
}

size_t hf_feed(struct http_frame *f, const unsigned char *p, size_t n, unsigned *ev)
{
	size_t i = 0;
	*ev = 0;
	while (i < n && f->st != HF_FAILED) {
		if (f->st == HF_IDLE) {
			f->st = HF_REQLINE;
			f->line_len = f->line_total = 0;
			f->prev_cr = false;
			f->head_bytes = 0;
			f->n_headers = 0;
			f->head_only_method = f->http10 = f->healthz = false;
			f->has_cl = f->has_te = f->has_expect = false;
			f->cl = f->left = f->body_bytes = 0;
			*ev |= HF_EV_START;
		}
		if (f->st == HF_BODY || f->st == HF_CHUNK_DATA) {
			size_t take = n - i;
			if ((uint64_t)take > f->left)
				take = (size_t)f->left;
			i += take;
			f->left -= take;
			if (!f->left) {
				if (f->st == HF_BODY) {
					f->st = HF_IDLE;
					*ev |= HF_EV_DONE;
					return i;
				}
				f->st = HF_CHUNK_CRLF;
				f->line_len = f->line_total = 0;
				f->prev_cr = false;
			}
			continue;
		}
		unsigned char c = p[i++];
		if (counts_as_head(f) && ++f->head_bytes > f->max_head_bytes) {
			fail(f, 431, "resource_exhausted", "request headers exceed %zu bytes",
			     f->max_head_bytes);
			*ev |= HF_EV_ERROR;
			return i;
		}
		if (c == '\n') {
			size_t len = f->line_len;
			bool trunc = f->line_total > len;
			if (f->prev_cr && !trunc)
				len--;
			f->line_len = f->line_total = 0;
			f->prev_cr = false;
			unsigned e =
			    trunc ? long_line(f, f->line, len) : line_done(f, f->line, len);
			*ev |= e;
			if (e & (HF_EV_HEAD | HF_EV_DONE | HF_EV_ERROR))
				return i;
			continue;
		}
		if (f->prev_cr) {
			fail(f, 400, "invalid_argument", "carriage return without line feed");
			*ev |= HF_EV_ERROR;
			return i;
		}
		if ((c < 0x20 && c != '\t' && c != '\r') || c == 0x7f) {
			fail(f, 400, "invalid_argument", "control byte 0x%02x in the request head",
			     c);
			*ev |= HF_EV_ERROR;
			return i;
		}
		if (++f->line_total > HF_LINE_MAX) {
			fail(f, 431, "resource_exhausted",
			     "a request head line is longer than %d bytes", HF_LINE_MAX);
			*ev |= HF_EV_ERROR;
			return i;
		}
		f->prev_cr = c == '\r';
		if (f->line_len < HF_LINE_KEEP)
			f->line[f->line_len++] = (char)c;
	}
	if (f->st == HF_FAILED)
		*ev |= HF_EV_ERROR;
	return i;
}
