/* http.c — a blocking Connect unary client over a plain TCP socket. */
#include "http.h"

#include <errno.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int parse_url(const char *url, char *host, size_t host_len, char *port, size_t port_len)
{
	if (!strncmp(url, "http://", 7))
		url += 7;
	else if (strstr(url, "://"))
		return -1;
	const char *slash = strchr(url, '/');
	size_t hl = slash ? (size_t)(slash - url) : strlen(url);
	const char *colon = memchr(url, ':', hl);
	size_t name = colon ? (size_t)(colon - url) : hl;
	if (!name || name >= host_len)
		return -1;
	memcpy(host, url, name);
	host[name] = '\0';
	if (colon) {
		size_t pl = hl - name - 1;
		if (!pl || pl >= port_len)
			return -1;
		memcpy(port, colon + 1, pl);
		port[pl] = '\0';
	} else {
		snprintf(port, port_len, "80");
	}
	return 0;
}

static int dial(const char *host, const char *port, int timeout_s, char *err, size_t err_len)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res, *ai;
	int rc = getaddrinfo(host, port, &hints, &res);
	if (rc) {
		snprintf(err, err_len, "cannot resolve %s: %s", host, gai_strerror(rc));
		return -1;
	}
	int fd = -1;
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
		if (fd < 0)
			continue;
		struct timeval tv = { .tv_sec = timeout_s };
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
		if (!connect(fd, ai->ai_addr, ai->ai_addrlen))
			break;
		close(fd);
		fd = -1;
	}
	if (fd < 0)
		snprintf(err, err_len, "cannot connect to %s:%s: %s", host, port, strerror(errno));
	freeaddrinfo(res);
	return fd;
}

static int send_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n) {
		ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

ProtobufCMessage *http_call(const char *url, const char *token, const char *method,
                            const ProtobufCMessage *req, const ProtobufCMessageDescriptor *out_desc,
                            int timeout_s, char *err, size_t err_len)
{
	char host[256], port[16];
	if (parse_url(url, host, sizeof host, port, sizeof port)) {
		snprintf(err, err_len, "--server: expected http://HOST[:PORT], got \"%s\"", url);
		return NULL;
	}
	size_t blen = protobuf_c_message_get_packed_size(req);
	uint8_t *body = malloc(blen ? blen : 1);
	char *head = malloc(1024 + strlen(token));
	char *resp = NULL;
	ProtobufCMessage *out = NULL;
	int fd = -1;
	if (!body || !head) {
		snprintf(err, err_len, "out of memory");
		goto out;
	}
	protobuf_c_message_pack(req, body);
	int hl = snprintf(head, 1024 + strlen(token),
	                  "POST /gpumatch.v1.%s HTTP/1.1\r\nHost: %s:%s\r\n"
	                  "Content-Type: application/proto\r\nConnect-Protocol-Version: 1\r\n"
	                  "Authorization: Bearer %s\r\nContent-Length: %zu\r\n"
	                  "Connection: close\r\n\r\n",
	                  method, host, port, token, blen);
	fd = dial(host, port, timeout_s, err, err_len);
	if (fd < 0)
		goto out;
	if (send_all(fd, head, (size_t)hl) || send_all(fd, body, blen)) {
		snprintf(err, err_len, "sending to %s failed: %s", url, strerror(errno));
		goto out;
	}
	size_t cap = 65536, len = 0;
	resp = malloc(cap + 1);
	for (;;) {
		if (!resp) {
			snprintf(err, err_len, "out of memory");
			goto out;
		}
		if (len == cap) {
			if (cap > (64u << 20)) {
				snprintf(err, err_len, "reply from %s larger than 64 MiB", url);
				goto out;
			}
			char *bigger = realloc(resp, 2 * cap + 1);
			if (!bigger) {
				snprintf(err, err_len, "out of memory");
				goto out;
			}
			resp = bigger;
			cap *= 2;
		}
		ssize_t r = recv(fd, resp + len, cap - len, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			snprintf(err, err_len, "reading the reply from %s failed: %s", url,
			         strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	resp[len] = '\0';
	char *eoh = strstr(resp, "\r\n\r\n");
	int status = 0;
	if (!eoh || sscanf(resp, "HTTP/1.%*d %d", &status) != 1) {
		snprintf(err, err_len, "%s did not answer HTTP", url);
		goto out;
	}
	char *payload = eoh + 4;
	size_t plen = len - (size_t)(payload - resp);
	for (char *h = strstr(resp, "\r\n"); h && h < eoh; h = strstr(h + 2, "\r\n"))
		if (!strncasecmp(h + 2, "Content-Length:", 15)) {
			size_t cl = strtoull(h + 17, NULL, 10);
			if (cl < plen)
				plen = cl;
		}
	if (status != 200) {
		/* Connect errors are JSON: {"code":"...","message":"..."} */
		snprintf(err, err_len, "HTTP %d: %.*s", status, (int)(plen > 900 ? 900 : plen),
		         payload);
		goto out;
	}
	out = protobuf_c_message_unpack(out_desc, NULL, plen, (const uint8_t *)payload);
	if (!out)
		snprintf(err, err_len, "the reply to %s could not be decoded", method);
out:
	if (fd >= 0)
		close(fd);
	free(body);
	free(head);
	free(resp);
	return out;
}
