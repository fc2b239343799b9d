/* strbuf.h — a growable string for building query parameters (Postgres
 * array literals, or arrays in Postgres's binary format). Out of memory is
 * sticky: check oom once at the end. */
#ifndef GPUMATCH_STRBUF_H
#define GPUMATCH_STRBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct strbuf {
	char *s;
	size_t len, cap;
	bool oom;
};

void sb_puts(struct strbuf *b, const char *s);
void sb_printf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as one quoted element of a Postgres array literal. */
void sb_array_str(struct strbuf *b, const char *s);
/* Appends n bytes (binary; the buffer stays NUL-terminated after them). */
void sb_append(struct strbuf *b, const void *p, size_t n);
/* A one-dimensional array without NULLs in Postgres's binary format, for a
 * parameter sent with format 1: sb_bin_array starts one of n elements of
 * type elem_oid (20 int8, 21 int2, 23 int4, 25 text, 17 bytea), then each
 * element is appended with sb_bin_elem (the value in the type's binary
 * form: big-endian integers, raw text or bytes). */
#define PG_OID_BYTEA 17
#define PG_OID_INT8  20
#define PG_OID_INT2  21
#define PG_OID_INT4  23
#define PG_OID_TEXT  25
void sb_bin_array(struct strbuf *b, uint32_t elem_oid, int n);
void sb_bin_elem(struct strbuf *b, const void *p, size_t n);
void sb_bin_i64(struct strbuf *b, int64_t v);
void sb_bin_i32(struct strbuf *b, int32_t v);
void sb_bin_i16(struct strbuf *b, int16_t v);
void sb_free(struct strbuf *b);

#endif
