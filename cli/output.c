/* output.c — what the gpumatch command prints: responses as indented JSON
 * (the proto3 JSON mapping, for scripts) or as aligned tables and field
 * lists (for people), both from the same JSON tree. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "pbjson.h"

json_t *msg_to_json(const ProtobufCMessage *m)
{
	size_t len;
	char *s = pbjson_encode(m, &len);
	if (!s)
		return NULL;
	json_t *j = json_loadb(s, len, 0, NULL);
	free(s);
	return j;
}

void out_json(const ProtobufCMessage *m)
{
	json_t *j = msg_to_json(m);
	if (!j) {
		fprintf(stderr, "gpumatch: out of memory\n");
		return;
	}
	char *s = json_dumps(j, JSON_INDENT(2));
	if (s)
		printf("%s\n", s);
	free(s);
	json_decref(j);
}

json_t *jpath(json_t *o, const char *path)
{
	if (!*path)
		return o;
	char key[128];
	while (o && *path) {
		size_t n = strcspn(path, ".");
		snprintf(key, sizeof key, "%.*s", (int)n, path);
		o = json_object_get(o, key);
		path += n;
		if (*path == '.')
			path++;
	}
	return o;
}

static void scalar_text(json_t *v, char *buf, size_t len)
{
	if (json_is_string(v))
		snprintf(buf, len, "%s", json_string_value(v));
	else if (json_is_integer(v))
		snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
	else if (json_is_real(v))
		snprintf(buf, len, "%g", json_real_value(v));
	else if (json_is_true(v))
		snprintf(buf, len, "true");
	else if (json_is_false(v))
		snprintf(buf, len, "false");
	else
		snprintf(buf, len, "-");
}

static int64_t num_of(json_t *v)
{
	if (json_is_string(v))
		return strtoll(json_string_value(v), NULL, 10);
	if (json_is_integer(v))
		return (int64_t)json_integer_value(v);
	if (json_is_real(v))
		return (int64_t)json_real_value(v);
	return 0;
}

/* Money as people read it (docs/cli.md): currency units rounded to the
 * cent, "12.34"; an amount that is not zero but rounds to 0.00 shows as
 * "<0.01" ("-<0.01"). Exact micro-units are in -o json. */
void money_text(int64_t m, char *buf, size_t len)
{
	const char *sign = m < 0 ? "-" : "";
	uint64_t a = m < 0 ? (uint64_t)0 - (uint64_t)m : (uint64_t)m;
	uint64_t cents = a / 10000 + (a % 10000 >= 5000);
	if (a && !cents)
		snprintf(buf, len, "%s<0.01", sign);
	else
		snprintf(buf, len, "%s%" PRIu64 ".%02" PRIu64, sign, cents / 100, cents % 100);
}

static void dur_text(int64_t us, char *buf, size_t len)
{
	int64_t s = us / 1000000;
	if (us < 1000000 && us > 0)
		snprintf(buf, len, "%" PRId64 "ms", us / 1000);
	else if (s < 60)
		snprintf(buf, len, "%" PRId64 "s", s);
	else if (s < 3600)
		snprintf(buf, len, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
	else
		snprintf(buf, len, "%" PRId64 "h%02" PRId64 "m", s / 3600, s % 3600 / 60);
}

void enum_text(const char *s, char *buf, size_t len)
{
	/* strip the enum's type prefix: JOB_STATE_QUEUED -> QUEUED. Prefixes
	 * are the upper-cased enum name; the value part is what follows the
	 * longest known prefix. */
	static const char *const prefixes[] = {
		"JOB_STATE_",
		"JOB_KIND_",
		"PRIORITY_CLASS_",
		"NODE_STATE_",
		"VERIFICATION_STATUS_",
		"LEASE_STATE_",
		"FAILURE_REASON_",
		"EXPLAIN_REASON_",
		"ROLE_",
		"TENANT_STATE_",
		"OPERATOR_STATE_",
		"PRECISION_",
		"INTERCONNECT_",
		"TAINT_EFFECT_",
		"TRANSFER_KIND_",
		"TRANSFER_STATE_",
		"GPU_HEALTH_STATUS_",
		"FIT_MODE_",
		"FAIRNESS_MODE_",
		"SIMULATION_SOURCE_",
		"ACCOUNT_KIND_",
	};
	for (size_t i = 0; i < NELEM(prefixes); i++) {
		size_t n = strlen(prefixes[i]);
		if (!strncmp(s, prefixes[i], n)) {
			snprintf(buf, len, "%s", s + n);
			return;
		}
	}
	snprintf(buf, len, "%s", s);
}

static void one_text(json_t *v, enum col_fmt fmt, char *buf, size_t len)
{
	if (!v || json_is_null(v)) {
		if (fmt == F_NUM || fmt == F_MONEY || fmt == F_PPM || fmt == F_DUR0)
			v = json_integer(0), one_text(v, fmt, buf, len), json_decref(v);
		else if (fmt == F_BOOL)
			snprintf(buf, len, "false");
		else
			snprintf(buf, len, "-");
		return;
	}
	switch (fmt) {
	case F_ENUM:
		if (json_is_string(v))
			enum_text(json_string_value(v), buf, len);
		else
			scalar_text(v, buf, len);
		break;
	case F_MONEY:
		money_text(num_of(v), buf, len);
		break;
	case F_PPM:
	case F_PPM_MEASURED:
		snprintf(buf, len, "%.1f%%", (double)num_of(v) / 10000.0);
		break;
	case F_TIME: {
		int64_t us = num_of(v);
		if (!us) {
			snprintf(buf, len, "-");
			break;
		}
		time_t t = (time_t)(us / 1000000);
		struct tm tm;
		gmtime_r(&t, &tm);
		strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
		break;
	}
	case F_DUR:
	case F_DUR0:
		dur_text(num_of(v), buf, len);
		break;
	case F_GPUS: {
		/* runs of one model: "8x A100-SXM4-80GB", "2x A, 1x B" */
		size_t used = 0, i = 0, n = json_array_size(v);
		buf[0] = '\0';
		while (i < n) {
			const char *m =
			    json_string_value(json_object_get(json_array_get(v, i), "model"));
			size_t k = i + 1;
			while (k < n) {
				const char *mk = json_string_value(
				    json_object_get(json_array_get(v, k), "model"));
				if ((m == NULL) != (mk == NULL) || (m && strcmp(m, mk)))
					break;
				k++;
			}
			used += (size_t)snprintf(buf + used, used < len ? len - used : 0,
			                         "%s%zux %s", i ? ", " : "", k - i, m ? m : "?");
			i = k;
		}
		if (!buf[0])
			snprintf(buf, len, "-");
		break;
	}
	case F_LIST:
	case F_MAP: {
		size_t used = 0;
		buf[0] = '\0';
		if (json_is_array(v)) {
			size_t i;
			json_t *e;
			json_array_foreach(v, i, e)
			{
				char one[256];
				if (json_is_string(e) &&
				    !strncmp(json_string_value(e), "PRECISION_", 10))
					enum_text(json_string_value(e), one, sizeof one);
				else
					scalar_text(e, one, sizeof one);
				used += (size_t)snprintf(buf + used, used < len ? len - used : 0,
				                         "%s%s", i ? "," : "", one);
			}
		} else if (json_is_object(v)) {
			const char *k;
			json_t *e;
			int first = 1;
			json_object_foreach(v, k, e)
			{
				char one[256];
				scalar_text(e, one, sizeof one);
				used += (size_t)snprintf(buf + used, used < len ? len - used : 0,
				                         "%s%s=%s", first ? "" : ",", k, one);
				first = 0;
			}
		} else {
			scalar_text(v, buf, len);
		}
		if (!buf[0])
			snprintf(buf, len, "-");
		break;
	}
	default:
		scalar_text(v, buf, len);
	}
}

const char *cell_text(json_t *obj, const struct col *col, char *buf, size_t len)
{
	const char *br = strstr(col->path, "[].");
	if (!br) {
		one_text(jpath(obj, col->path), col->fmt, buf, len);
		return buf;
	}
	/* "placement[].nodeId": the field of every element, comma-separated */
	char head[128];
	snprintf(head, sizeof head, "%.*s", (int)(br - col->path), col->path);
	json_t *arr = jpath(obj, head);
	size_t used = 0, i;
	json_t *e;
	buf[0] = '\0';
	json_array_foreach(arr, i, e)
	{
		char one[256];
		one_text(jpath(e, br + 3), col->fmt == F_LIST ? F_STR : col->fmt, one, sizeof one);
		used += (size_t)snprintf(buf + used, used < len ? len - used : 0, "%s%s",
		                         i ? "," : "", one);
	}
	if (!buf[0])
		snprintf(buf, len, "-");
	return buf;
}

void out_table(json_t *rows, const struct col *cols, size_t ncols)
{
	size_t nrows = json_is_array(rows) ? json_array_size(rows) : 0;
	size_t w[32] = { 0 };
	char ***cell = calloc(nrows + 1, sizeof *cell);
	if (!cell || ncols > 32)
		return;
	for (size_t r = 0; r <= nrows; r++) {
		cell[r] = calloc(ncols, sizeof **cell);
		for (size_t k = 0; k < ncols; k++) {
			char buf[512];
			const char *t = r == 0 ? cols[k].head
			                       : cell_text(json_array_get(rows, r - 1), &cols[k],
			                                   buf, sizeof buf);
			cell[r][k] = strdup(t);
			if (cell[r][k] && strlen(cell[r][k]) > w[k])
				w[k] = strlen(cell[r][k]);
		}
	}
	for (size_t r = 0; r <= nrows; r++) {
		for (size_t k = 0; k < ncols; k++) {
			const char *t = cell[r][k] ? cell[r][k] : "";
			if (k + 1 == ncols)
				printf("%s\n", t);
			else
				printf("%-*s  ", (int)w[k], t);
			free(cell[r][k]);
		}
		free(cell[r]);
	}
	free(cell);
}

void out_fields(json_t *obj, const struct col *cols, size_t ncols)
{
	size_t w = 0;
	for (size_t k = 0; k < ncols; k++)
		if (strlen(cols[k].head) > w)
			w = strlen(cols[k].head);
	for (size_t k = 0; k < ncols; k++) {
		char buf[1024];
		printf("%-*s  %s\n", (int)w + 1, cols[k].head,
		       cell_text(obj, &cols[k], buf, sizeof buf));
	}
}

void out_reply(struct ctx *c, const ProtobufCMessage *resp, const char *list_path,
               const char *obj_path, const struct col *cols, size_t ncols)
{
	if (c->json) {
		out_json(resp);
		return;
	}
	json_t *j = msg_to_json(resp);
	if (!j)
		return;
	if (list_path) {
		out_table(jpath(j, list_path), cols, ncols);
		const char *next = json_string_value(json_object_get(j, "nextPageToken"));
		if (next && *next)
			fprintf(stderr, "(more: --page-token %s)\n", next);
	} else {
		json_t *o = jpath(j, obj_path ? obj_path : "");
		out_fields(o ? o : j, cols, ncols);
	}
	json_decref(j);
}
