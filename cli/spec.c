/* spec.c — job spec files: YAML (libyaml) or JSON read into one JSON tree,
 * the spec conveniences rewritten into contract fields; the tree is then
 * decoded with the proto3 JSON mapping like any request (docs/jobs.md). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "cli.h"

/* A plain (unquoted) YAML scalar as the JSON value it reads as: null,
 * booleans and numbers typed, everything else a string. Quoted scalars are
 * always strings. */
static json_t *yaml_scalar(const yaml_event_t *ev)
{
	const char *s = (const char *)ev->data.scalar.value;
	if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		return json_stringn(s, ev->data.scalar.length);
	if (!*s || !strcmp(s, "~") || !strcmp(s, "null"))
		return json_null();
	if (!strcmp(s, "true") || !strcmp(s, "yes"))
		return json_true();
	if (!strcmp(s, "false") || !strcmp(s, "no"))
		return json_false();
	char *end;
	errno = 0;
	long long i = strtoll(s, &end, 10);
	if (!*end && !errno && end != s)
		return json_integer(i);
	double d = strtod(s, &end);
	if (!*end && end != s && strspn(s, "0123456789+-.eE") == strlen(s))
		return json_real(d);
	return json_stringn(s, ev->data.scalar.length);
}

/* Reads one node starting at the event just parsed (ev). */
static json_t *yaml_node(yaml_parser_t *p, yaml_event_t *ev, char *err, size_t err_len, int depth)
{
	if (depth > 64) {
		snprintf(err, err_len, "nested too deep");
		return NULL;
	}
	if (ev->type == YAML_SCALAR_EVENT)
		return yaml_scalar(ev);
	if (ev->type == YAML_ALIAS_EVENT) {
		snprintf(err, err_len, "line %zu: YAML aliases are not supported",
		         ev->start_mark.line + 1);
		return NULL;
	}
	bool map = ev->type == YAML_MAPPING_START_EVENT;
	if (!map && ev->type != YAML_SEQUENCE_START_EVENT) {
		snprintf(err, err_len, "line %zu: unexpected YAML event", ev->start_mark.line + 1);
		return NULL;
	}
	json_t *out = map ? json_object() : json_array();
	for (;;) {
		yaml_event_t k;
		if (!yaml_parser_parse(p, &k)) {
			snprintf(err, err_len, "line %zu: %s", p->problem_mark.line + 1,
			         p->problem ? p->problem : "YAML error");
			json_decref(out);
			return NULL;
		}
		if (k.type == YAML_MAPPING_END_EVENT || k.type == YAML_SEQUENCE_END_EVENT) {
			yaml_event_delete(&k);
			return out;
		}
		if (!map) {
			json_t *v = yaml_node(p, &k, err, err_len, depth + 1);
			yaml_event_delete(&k);
			if (!v) {
				json_decref(out);
				return NULL;
			}
			json_array_append_new(out, v);
			continue;
		}
		if (k.type != YAML_SCALAR_EVENT) {
			snprintf(err, err_len, "line %zu: mapping keys must be plain strings",
			         k.start_mark.line + 1);
			yaml_event_delete(&k);
			json_decref(out);
			return NULL;
		}
		char *key = strdup((const char *)k.data.scalar.value);
		size_t line = k.start_mark.line + 1;
		yaml_event_delete(&k);
		yaml_event_t v;
		if (!key || !yaml_parser_parse(p, &v)) {
			snprintf(err, err_len, "line %zu: %s", p->problem_mark.line + 1,
			         p->problem ? p->problem : "YAML error");
			free(key);
			json_decref(out);
			return NULL;
		}
		json_t *jv = yaml_node(p, &v, err, err_len, depth + 1);
		yaml_event_delete(&v);
		if (!jv) {
			free(key);
			json_decref(out);
			return NULL;
		}
		if (json_object_get(out, key)) {
			snprintf(err, err_len, "line %zu: duplicate key \"%s\"", line, key);
			free(key);
			json_decref(jv);
			json_decref(out);
			return NULL;
		}
		json_object_set_new(out, key, jv);
		free(key);
	}
}

static json_t *yaml_load(FILE *f, char *err, size_t err_len)
{
	yaml_parser_t p;
	if (!yaml_parser_initialize(&p)) {
		snprintf(err, err_len, "out of memory");
		return NULL;
	}
	yaml_parser_set_input_file(&p, f);
	json_t *out = NULL;
	yaml_event_t ev;
	for (;;) {
		if (!yaml_parser_parse(&p, &ev)) {
			snprintf(err, err_len, "line %zu: %s", p.problem_mark.line + 1,
			         p.problem ? p.problem : "YAML error");
			json_decref(out);
			out = NULL;
			break;
		}
		yaml_event_type_t t = ev.type;
		if (t == YAML_STREAM_END_EVENT) {
			yaml_event_delete(&ev);
			break;
		}
		if (t == YAML_MAPPING_START_EVENT || t == YAML_SEQUENCE_START_EVENT ||
		    t == YAML_SCALAR_EVENT || t == YAML_ALIAS_EVENT) {
			if (out) {
				snprintf(err, err_len, "line %zu: one document per file",
				         ev.start_mark.line + 1);
				yaml_event_delete(&ev);
				json_decref(out);
				out = NULL;
				break;
			}
			out = yaml_node(&p, &ev, err, err_len, 0);
			yaml_event_delete(&ev);
			if (!out)
				break;
			continue;
		}
		yaml_event_delete(&ev);
	}
	yaml_parser_delete(&p);
	if (out && !json_is_object(out)) {
		snprintf(err, err_len, "expected a mapping at the top");
		json_decref(out);
		out = NULL;
	} else if (!out && !*err) {
		snprintf(err, err_len, "empty file");
	}
	return out;
}

json_t *tree_load(const char *path, char *err, size_t err_len)
{
	char inner[512] = "";
	FILE *f = !strcmp(path, "-") ? stdin : fopen(path, "r");
	if (!f) {
		snprintf(err, err_len, "%s: %s", path, strerror(errno));
		return NULL;
	}
	int ch;
	while ((ch = fgetc(f)) == ' ' || ch == '\t' || ch == '\n' || ch == '\r')
		;
	if (ch != EOF)
		ungetc(ch, f);
	json_t *j = NULL;
	size_t plen = strlen(path);
	if (ch == '{' || (plen > 5 && !strcmp(path + plen - 5, ".json"))) {
		json_error_t je;
		j = json_loadf(f, JSON_REJECT_DUPLICATES, &je);
		if (!j)
			snprintf(inner, sizeof inner, "line %d, column %d: %s", je.line, je.column,
			         je.text);
		else if (!json_is_object(j)) {
			snprintf(inner, sizeof inner, "expected a JSON object");
			json_decref(j);
			j = NULL;
		}
	} else {
		j = yaml_load(f, inner, sizeof inner);
	}
	if (f != stdin)
		fclose(f);
	if (!j)
		snprintf(err, err_len, "%s: %s", path, inner);
	return j;
}

int spec_sugar(json_t *spec, char *err, size_t err_len)
{
	json_t *d = json_object_get(spec, "maxDuration");
	if (d) {
		int64_t us = json_is_string(d) ? parse_duration_us(json_string_value(d)) : -1;
		if (us <= 0) {
			snprintf(err, err_len,
			         "spec.maxDuration: expected a duration such as \"90m\" or \"2h\"");
			return -1;
		}
		if (json_object_get(spec, "maxDurationUs") ||
		    json_object_get(spec, "max_duration_us")) {
			snprintf(err, err_len,
			         "spec.maxDuration: give maxDuration or maxDurationUs, "
			         "not both");
			return -1;
		}
		json_object_set_new(spec, "maxDurationUs", jint64(us));
		json_object_del(spec, "maxDuration");
	}
	json_t *p = json_object_get(spec, "maxPricePerGpuHour");
	if (p) {
		char text[64];
		int64_t m;
		if (json_is_string(p))
			snprintf(text, sizeof text, "%s", json_string_value(p));
		else if (json_is_integer(p))
			snprintf(text, sizeof text, "%lld", (long long)json_integer_value(p));
		else if (json_is_real(p))
			snprintf(text, sizeof text, "%.6f", json_real_value(p));
		else
			text[0] = '\0';
		if (parse_money_micros(text, &m)) {
			snprintf(err, err_len,
			         "spec.maxPricePerGpuHour: expected an amount such as \"2.50\"");
			return -1;
		}
		if (json_object_get(spec, "maxPricePerGpuHourMicros")) {
			snprintf(err, err_len,
			         "spec.maxPricePerGpuHour: give maxPricePerGpuHour or "
			         "maxPricePerGpuHourMicros, not both");
			return -1;
		}
		json_object_set_new(spec, "maxPricePerGpuHourMicros", jint64(m));
		json_object_del(spec, "maxPricePerGpuHour");
	}
	/* enums may drop their type prefix: kind: training */
	static const char *const enums[][2] = { { "kind", "JOB_KIND_" },
		                                { "priorityClass", "PRIORITY_CLASS_" },
		                                { "precision", "PRECISION_" } };
	for (size_t i = 0; i < NELEM(enums); i++) {
		json_t *e = json_object_get(spec, enums[i][0]);
		if (json_is_string(e))
			json_object_set_new(spec, enums[i][0],
			                    enum_arg(enums[i][1], json_string_value(e)));
	}
	/* env values written as numbers or booleans in YAML are still strings */
	json_t *env = json_object_get(spec, "env");
	if (json_is_object(env)) {
		const char *k;
		json_t *v;
		json_object_foreach(env, k, v)
		{
			if (json_is_integer(v)) {
				json_object_set_new(env, k, jint64((int64_t)json_integer_value(v)));
			} else if (json_is_real(v)) {
				char b[64];
				snprintf(b, sizeof b, "%g", json_real_value(v));
				json_object_set_new(env, k, json_string(b));
			} else if (json_is_boolean(v)) {
				json_object_set_new(
				    env, k, json_string(json_is_true(v) ? "true" : "false"));
			}
		}
	}
	json_t *cmd = json_object_get(spec, "command");
	if (json_is_array(cmd)) {
		size_t i;
		json_t *v;
		json_array_foreach(cmd, i, v)
		{
			if (json_is_integer(v))
				json_array_set_new(cmd, i, jint64((int64_t)json_integer_value(v)));
			else if (json_is_boolean(v))
				json_array_set_new(cmd, i,
				                   json_string(json_is_true(v) ? "true" : "false"));
			else if (json_is_real(v)) {
				char b[64];
				snprintf(b, sizeof b, "%g", json_real_value(v));
				json_array_set_new(cmd, i, json_string(b));
			}
		}
	}
	return 0;
}

json_t *spec_load(const char *path, char *err, size_t err_len)
{
	json_t *j = tree_load(path, err, err_len);
	if (!j)
		return NULL;
	json_t *spec = json_object_get(j, "spec");
	if (!json_is_object(spec)) {
		snprintf(err, err_len, "%s: spec: required (a mapping with the job's fields)",
		         path);
		json_decref(j);
		return NULL;
	}
	char inner[400];
	if (spec_sugar(spec, inner, sizeof inner)) {
		snprintf(err, err_len, "%s: %s", path, inner);
		json_decref(j);
		return NULL;
	}
	return j;
}
