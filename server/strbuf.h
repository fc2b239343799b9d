/* strbuf.h — a growable string for building query parameters (Postgres
 * array literals). Out of memory is sticky: check oom once at the end. */
#ifndef GPUMATCH_STRBUF_H
#define GPUMATCH_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

struct strbuf {
	char *s;
	size_t len, cap;
	bool oom;
};

void sb_puts(struct strbuf *b, const char *s);
void sb_printf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as one quoted element of a Postgres array literal. */
void sb_array_str(struct strbuf *b, const char *s);
void sb_free(struct strbuf *b);

#endif
