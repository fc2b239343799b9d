/* http_frame.h — a strict HTTP/1.1 request framing checker. It is fed a
 * connection's bytes as they arrive (before evhttp parses them), finds where
 * each request's head and body end, and refuses what evhttp would accept
 * loosely or answer without a Connect error: unknown methods and CONNECT,
 * conflicting or malformed Content-Length, Transfer-Encoding other than
 * chunked or together with Content-Length, obsolete line folding, control
 * bytes, oversized heads and bodies declared or chunked above the limit.
 * It does no I/O and allocates nothing, so it can be fuzzed alone. */
#ifndef GPUMATCH_HTTP_FRAME_H
#define GPUMATCH_HTTP_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HF_LINE_MAX    8192 /* one request, header or chunk-size line */
#define HF_LINE_KEEP   512  /* bytes of a line kept for parsing; the rest is only checked */
#define HF_HEADERS_MAX 100  /* header fields per request */

enum hf_state {
	HF_IDLE,       /* between requests */
	HF_REQLINE,    /* inside the request line */
	HF_HEADERS,    /* header lines */
	HF_BODY,       /* Content-Length body */
	HF_CHUNK_SIZE, /* chunk-size line */
	HF_CHUNK_DATA, /* chunk bytes */
	HF_CHUNK_CRLF, /* the line end after a chunk */
	HF_TRAILER,    /* trailer lines after the last chunk */
	HF_FAILED,     /* refused: see err_* */
};

/* Events hf_feed reports (a bit set: one call may end a head and its
 * request together). */
enum {
	HF_EV_START = 1, /* the first byte of a request */
	HF_EV_HEAD = 2,  /* the head is complete and acceptable */
	HF_EV_DONE = 4,  /* the request (head and body) is complete */
	HF_EV_ERROR = 8, /* refused; the connection must be answered and closed */
};

struct http_frame {
	size_t max_head_bytes; /* request line + headers, and trailers */
	size_t max_body_bytes;
	enum hf_state st;
	char line[HF_LINE_KEEP];
	size_t line_len;   /* bytes kept in line[] */
	size_t line_total; /* bytes of the line so far */
	bool prev_cr;
	size_t head_bytes;
	unsigned n_headers;
	bool head_only_method; /* HEAD/TRACE: evhttp reads no body */
	bool healthz;          /* the request line is GET /healthz[?...] */
	bool http10;
	bool has_cl, has_te, has_expect;
	uint64_t cl;
	uint64_t left;       /* bytes left of the body or chunk */
	uint64_t body_bytes; /* decoded body bytes so far */
	/* set with HF_EV_ERROR */
	int err_status;       /* HTTP status to answer with */
	const char *err_code; /* Connect code name */
	char err_msg[256];
};

/* Starts a connection's framing with the given limits. */
void hf_init(struct http_frame *f, size_t max_head_bytes, size_t max_body_bytes);

/* Consumes bytes of p[0..n) until an event or the end, and returns how many
 * it took; *ev gets the events (0 when none). After HF_EV_ERROR it takes
 * nothing more. */
size_t hf_feed(struct http_frame *f, const unsigned char *p, size_t n, unsigned *ev);

/* Whether a request has started and not finished. */
bool hf_in_request(const struct http_frame *f);
/* Whether the head is complete (the body, if any, is being read). */
bool hf_in_body(const struct http_frame *f);

#endif
