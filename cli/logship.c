/* logship.c — one lease's output file to gpumatchd (see logship.h). */
#include "logship.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "gpumatch/v1/node_service.pb-c.h"

/* Half the server's default request limit: a chunk and its framing fit. */
#define CHUNK_BYTES (512 * 1024)
#define IDLE_MS     200 /* look for new output this often while it runs */

struct logship {
	struct event_base *base;
	struct cl_conn *conn;
	const char *token;
	const uint64_t *node_id;
	uint64_t lease_id, fencing, seq;
	char path[1200];
	int fd;
	int64_t offset; /* acknowledged by the server */
	int64_t sent_len;
	bool sent_eof;
	bool finishing, done, inflight, dead;
	int backoff_ms;
	struct event *timer;
	uint8_t *buf;
	int64_t started_us, took_us;
	void (*done_cb)(void *arg);
	void *arg;
	struct logship *next_dead;
};

static struct logship *dead_list;

static void pump(struct logship *ls);

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	pump(arg);
}

static void later(struct logship *ls, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	evtimer_add(ls->timer, &tv);
}

static void finish(struct logship *ls)
{
	if (ls->done)
		return;
	ls->done = true;
	ls->took_us = cl_now_us() - ls->started_us;
	if (ls->done_cb)
		ls->done_cb(ls->arg);
}

static void append_done(struct cl_result *r, void *arg)
{
	struct logship *ls = arg;
	ls->inflight = false;
	if (ls->dead) {
		for (struct logship **p = &dead_list; *p; p = &(*p)->next_dead)
			if (*p == ls) {
				*p = ls->next_dead;
				break;
			}
		free(ls->buf);
		free(ls);
		return;
	}
	if (r->http_status == 200) {
		Gpumatch__V1__AppendLeaseLogsResponse *resp =
		    (Gpumatch__V1__AppendLeaseLogsResponse *)r->resp;
		ls->backoff_ms = 0;
		if (resp->next_offset > ls->offset)
			ls->offset = resp->next_offset;
		if (ls->sent_eof) {
			finish(ls);
			return;
		}
		pump(ls);
		return;
	}
	const char *resume = strstr(r->message, "resume at ");
	if (!strcmp(r->code, "failed_precondition") && resume) {
		/* the server holds less than we thought (e.g. a saved offset
		 * from before its data was lost): go back to where it is */
		ls->offset = strtoll(resume + 10, NULL, 10);
		pump(ls);
		return;
	}
	if (cl_result_final_error(r)) {
		fprintf(stderr,
		        "level=warn msg=\"job output refused, not shipped further\" lease=%" PRIu64
		        " code=%s err=\"%s\"\n",
		        ls->lease_id, r->code, r->message);
		finish(ls);
		return;
	}
	ls->backoff_ms = ls->backoff_ms ? ls->backoff_ms * 2 : 250;
	if (ls->backoff_ms > 10000)
		ls->backoff_ms = 10000;
	fprintf(stderr,
	        "level=warn msg=\"output not delivered, will retry\" lease=%" PRIu64
	        " offset=%" PRId64 " code=%s err=\"%s\" retry_ms=%d\n",
	        ls->lease_id, ls->offset, r->code, r->message, ls->backoff_ms);
	later(ls, ls->backoff_ms);
}

static void pump(struct logship *ls)
{
	if (ls->inflight || ls->done || ls->dead || evtimer_pending(ls->timer, NULL))
		return;
	if (!*ls->node_id) {
		later(ls, 500);
		return;
	}
	if (ls->fd < 0)
		ls->fd = open(ls->path, O_RDONLY | O_CLOEXEC);
	ssize_t n = 0;
	if (ls->fd >= 0) {
		while ((n = pread(ls->fd, ls->buf, CHUNK_BYTES, ls->offset)) < 0 && errno == EINTR)
			;
		if (n < 0)
			n = 0;
	}
	if (n == 0 && !ls->finishing) {
		later(ls, IDLE_MS);
		return;
	}
	Gpumatch__V1__AppendLeaseLogsRequest req = GPUMATCH__V1__APPEND_LEASE_LOGS_REQUEST__INIT;
	req.node_id = *ls->node_id;
	req.lease_id = ls->lease_id;
	req.fencing_token = ls->fencing;
	req.seq = ++ls->seq;
	req.offset = ls->offset;
	req.data.data = ls->buf;
	req.data.len = (size_t)n;
	req.eof = n == 0; /* finishing and nothing left */
	ls->sent_len = n;
	ls->sent_eof = req.eof;
	if (cl_call_async(ls->conn, ls->token, "NodeService", "AppendLeaseLogs", &req.base,
	                  append_done, ls) == 0)
		ls->inflight = true;
	else
		later(ls, 1000);
}

struct logship *ls_new(struct event_base *base, struct cl_conn *conn, const char *token,
                       const uint64_t *node_id, uint64_t lease_id, uint64_t fencing,
                       const char *path, int64_t offset, void (*done)(void *arg), void *arg)
{
	struct logship *ls = calloc(1, sizeof *ls);
	if (!ls)
		return NULL;
	ls->buf = malloc(CHUNK_BYTES);
	ls->timer = evtimer_new(base, timer_cb, ls);
	if (!ls->buf || !ls->timer) {
		if (ls->timer)
			event_free(ls->timer);
		free(ls->buf);
		free(ls);
		return NULL;
	}
	ls->base = base;
	ls->conn = conn;
	ls->token = token;
	ls->node_id = node_id;
	ls->lease_id = lease_id;
	ls->fencing = fencing;
	ls->offset = offset > 0 ? offset : 0;
	ls->fd = -1;
	ls->done_cb = done;
	ls->arg = arg;
	snprintf(ls->path, sizeof ls->path, "%s", path);
	ls->started_us = cl_now_us();
	pump(ls);
	return ls;
}

void ls_finish(struct logship *ls)
{
	if (!ls || ls->finishing)
		return;
	ls->finishing = true;
	if (evtimer_pending(ls->timer, NULL) && !ls->backoff_ms)
		evtimer_del(ls->timer);
	pump(ls);
}

bool ls_done(const struct logship *ls)
{
	return !ls || ls->done;
}

int64_t ls_offset(const struct logship *ls)
{
	return ls ? ls->offset : 0;
}

int64_t ls_took_us(const struct logship *ls)
{
	return ls ? ls->took_us : 0;
}

void ls_free(struct logship *ls)
{
	if (!ls)
		return;
	event_free(ls->timer);
	ls->timer = NULL;
	if (ls->fd >= 0)
		close(ls->fd);
	ls->fd = -1;
	if (ls->inflight) {
		ls->dead = true;
		ls->next_dead = dead_list;
		dead_list = ls;
		return;
	}
	free(ls->buf);
	free(ls);
}

void ls_reap_all(void)
{
	while (dead_list) {
		struct logship *ls = dead_list;
		dead_list = ls->next_dead;
		free(ls->buf);
		free(ls);
	}
}
