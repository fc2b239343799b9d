/* strbuf.c — growable strings. */
#include "strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool grow(struct strbuf *b, size_t extra)
{
	if (b->oom)
		return false;
	if (b->len + extra + 1 <= b->cap)
		return true;
	size_t cap = b->cap ? b->cap : 64;
	while (cap < b->len + extra + 1)
		cap *= 2;
	char *s = realloc(b->s, cap);
	if (!s) {
		b->oom = true;
		return false;
	}
	b->s = s;
	b->cap = cap;
	return true;
}

void sb_puts(struct strbuf *b, const char *s)
{
	size_t n = strlen(s);
	if (!grow(b, n))
		return;
	memcpy(b->s + b->len, s, n + 1);
	b->len += n;
}

void sb_printf(struct strbuf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || !grow(b, (size_t)n))
		return;
	va_start(ap, fmt);
	vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

void sb_array_str(struct strbuf *b, const char *s)
{
	/* "..." with backslash and double quote escaped */
	if (!grow(b, 2 * strlen(s) + 2))
		return;
	b->s[b->len++] = '"';
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			b->s[b->len++] = '\\';
		b->s[b->len++] = *s;
	}
	b->s[b->len++] = '"';
	b->s[b->len] = '\0';
}

void sb_append(struct strbuf *b, const void *p, size_t n)
{
	if (!grow(b, n))
		return;
	memcpy(b->s + b->len, p, n);
	b->len += n;
	b->s[b->len] = '\0';
}

static void put_u32(struct strbuf *b, uint32_t v)
{
	unsigned char be[4] = { (unsigned char)(v >> 24), (unsigned char)(v >> 16),
		                (unsigned char)(v >> 8), (unsigned char)v };
	sb_append(b, be, 4);
}

void sb_bin_array(struct strbuf *b, uint32_t elem_oid, int n)
{
	put_u32(b, 1); /* dimensions */
	put_u32(b, 0); /* no NULLs */
	put_u32(b, elem_oid);
	put_u32(b, (uint32_t)n);
	put_u32(b, 1); /* lower bound */
}

void sb_bin_elem(struct strbuf *b, const void *p, size_t n)
{
	put_u32(b, (uint32_t)n);
	sb_append(b, p, n);
}

void sb_bin_i64(struct strbuf *b, int64_t v)
{
	uint64_t u = (uint64_t)v;
	put_u32(b, 8);
	put_u32(b, (uint32_t)(u >> 32));
	put_u32(b, (uint32_t)u);
}

void sb_bin_i32(struct strbuf *b, int32_t v)
{
	put_u32(b, 4);
	put_u32(b, (uint32_t)v);
}

void sb_bin_i16(struct strbuf *b, int16_t v)
{
	uint16_t u = (uint16_t)v;
	unsigned char be[2] = { (unsigned char)(u >> 8), (unsigned char)u };
	put_u32(b, 2);
	sb_append(b, be, 2);
}

void sb_free(struct strbuf *b)
{
	free(b->s);
	b->s = NULL;
	b->len = b->cap = 0;
	b->oom = false;
}
