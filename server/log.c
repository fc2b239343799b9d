/* log.c — key=value log lines on stderr. Each line leaves in one write(2) so
 * lines from concurrent writers never interleave (lines are kept under
 * PIPE_BUF-ish sizes by truncation). */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum log_level log_min_level = LOG_INFO;

static const char *const level_names[] = { "debug", "info", "warn", "error" };

int log_parse_level(const char *s)
{
	if (!s)
		return -1;
	for (int i = 0; i < (int)(sizeof level_names / sizeof level_names[0]); i++) {
		if (strcmp(s, level_names[i]) == 0)
			return i;
	}
	if (strcmp(s, "warning") == 0)
		return LOG_WARN;
	return -1;
}

static bool is_key_char(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       ch == '_' || ch == '.' || ch == '-';
}

/* Offset of the first word that looks like "key=" (at the start or after a
 * space), or len when there is none. */
static size_t first_key(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (i > 0 && s[i - 1] != ' ')
			continue;
		size_t j = i;
		while (j < len && is_key_char(s[j]))
			j++;
		if (j > i && j < len && s[j] == '=')
			return i;
	}
	return len;
}

void log_write(enum log_level lvl, const char *fmt, ...)
{
	char body[3072];
	char line[4096];
	struct timespec ts;
	struct tm tm;
	va_list ap;

	if (lvl < log_min_level)
		return;
	if ((int)lvl < 0 || lvl > LOG_ERROR)
		lvl = LOG_ERROR;

	va_start(ap, fmt);
	int n = vsnprintf(body, sizeof body, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	size_t blen = (size_t)n < sizeof body ? (size_t)n : sizeof body - 1;
	/* One event, one line: control characters (newlines in server error
	 * text) would split it. */
	for (size_t i = 0; i < blen; i++) {
		if ((unsigned char)body[i] < 0x20 || body[i] == 0x7f)
			body[i] = ' ';
	}

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	size_t len = strftime(line, sizeof line, "ts=%Y-%m-%dT%H:%M:%S", &tm);
	len += (size_t)snprintf(line + len, sizeof line - len, ".%03ldZ level=%s msg=\"",
	                        ts.tv_nsec / 1000000L, level_names[lvl]);

	size_t k = first_key(body, blen);
	size_t mend = k;
	while (mend > 0 && body[mend - 1] == ' ')
		mend--;
	/* Reserve room for the closing quote, the rest and the newline. */
	for (size_t i = 0; i < mend && len < sizeof line - 8; i++) {
		if (body[i] == '"' || body[i] == '\\')
			line[len++] = '\\';
		line[len++] = body[i];
	}
	line[len++] = '"';
	if (k < blen) {
		line[len++] = ' ';
		size_t rest = blen - k;
		if (rest > sizeof line - 1 - len)
			rest = sizeof line - 1 - len;
		memcpy(line + len, body + k, rest);
		len += rest;
	}
	line[len++] = '\n';

	const char *p = line;
	while (len > 0) {
		ssize_t w = write(STDERR_FILENO, p, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		p += w;
		len -= (size_t)w;
	}
}
