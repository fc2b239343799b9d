/* util.c — the pure helpers the commands and the spec parser share:
 * durations, money and JSON building (no I/O, no options), so that the spec
 * parser links without the command's main. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <ctype.h>
#include <string.h>
#include <strings.h>

#include "cli.h"

int64_t parse_duration_us(const char *s)
{
	if (!s || !*s)
		return -1;
	int64_t total = 0;
	const char *p = s;
	while (*p) {
		char *end;
		errno = 0;
		double v = strtod(p, &end);
		if (end == p || errno || v < 0 || !isfinite(v))
			return -1;
		double mult;
		if (!strncmp(end, "us", 2)) {
			mult = 1;
			end += 2;
		} else if (!strncmp(end, "ms", 2)) {
			mult = 1e3;
			end += 2;
		} else if (*end == 's') {
			mult = 1e6;
			end++;
		} else if (*end == 'm') {
			mult = 60e6;
			end++;
		} else if (*end == 'h') {
			mult = 3600e6;
			end++;
		} else if (*end == 'd') {
			mult = 86400e6;
			end++;
		} else if (!*end && p == s) {
			mult = 1e6; /* plain seconds */
		} else {
			return -1;
		}
		double us = v * mult;
		if (us > 9e18 || total > INT64_MAX - (int64_t)us)
			return -1;
		total += (int64_t)llround(us);
		p = end;
	}
	return total;
}

int parse_money_micros(const char *s, int64_t *out)
{
	if (!s || !*s || *s == '-')
		return -1;
	int64_t units = 0, frac = 0;
	int digits = 0;
	const char *p = s;
	if (*p == '$')
		p++;
	if (!(*p >= '0' && *p <= '9'))
		return -1;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (units > INT64_MAX / 10 / 1000000 - 10)
			return -1;
		units = units * 10 + (*p - '0');
	}
	if (*p == '.') {
		for (p++; *p >= '0' && *p <= '9'; p++) {
			if (++digits > 6)
				return -1;
			frac = frac * 10 + (*p - '0');
		}
	}
	if (*p)
		return -1;
	for (; digits < 6; digits++)
		frac *= 10;
	*out = units * 1000000 + frac;
	return 0;
}

void jset(json_t *o, const char *path, json_t *v)
{
	char key[128];
	const char *dot;
	while ((dot = strchr(path, '.'))) {
		snprintf(key, sizeof key, "%.*s", (int)(dot - path), path);
		json_t *next = json_object_get(o, key);
		if (!next) {
			next = json_object();
			json_object_set_new(o, key, next);
		}
		o = next;
		path = dot + 1;
	}
	json_object_set_new(o, path, v);
}

json_t *jint64(int64_t v)
{
	char b[32];
	snprintf(b, sizeof b, "%" PRId64, v);
	return json_string(b);
}

json_t *juint64(uint64_t v)
{
	char b[32];
	snprintf(b, sizeof b, "%" PRIu64, v);
	return json_string(b);
}

/* "queued" -> "JOB_STATE_QUEUED"; a full name passes unchanged. */
json_t *enum_arg(const char *prefix, const char *v)
{
	char b[128];
	size_t pl = strlen(prefix);
	size_t n = 0;
	if (strncasecmp(v, prefix, pl)) {
		n = (size_t)snprintf(b, sizeof b, "%s", prefix);
	}
	for (const char *p = v; *p && n + 1 < sizeof b; p++)
		b[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
	b[n] = '\0';
	return json_string(b);
}
