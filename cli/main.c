/* main.c — the gpumatch command: the command table, flag parsing, the
 * connection settings (flags, then GPUMATCH_URL/GPUMATCH_TOKEN, then the
 * config file) and dispatch. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "client.h"
#include "gpumatch-version.h"
#include "pbjson.h"

#define DEFAULT_URL "http://127.0.0.1:7070"

static const struct optdef global_opts[] = {
	{ "url", "URL", "gpumatchd's address (GPUMATCH_URL; default " DEFAULT_URL ")", false },
	{ "token", "TOKEN", "bearer token (GPUMATCH_TOKEN)", false },
	{ "ca-file", "FILE",
	  "PEM CA certificates that verify an https:// server (GPUMATCH_CA_FILE; default: the "
	  "system store)",
	  false },
	{ "client-cert", "FILE",
	  "PEM client certificate, for servers that ask operators for one (GPUMATCH_CLIENT_CERT)",
	  false },
	{ "client-key", "FILE", "its private key, mode 0600 (GPUMATCH_CLIENT_KEY)", false },
	{ "output", "FORMAT", "table or json (short: -o)", false },
	{ "config", "FILE", "config file (GPUMATCH_CONFIG; default ~/.config/gpumatch/config)",
	  false },
	{ "timeout", "SECONDS", "per-request timeout (default 30)", false },
	{ "help", NULL, "show this help (short: -h)", false },
	{ 0 },
};

static int run_login(struct ctx *c);

static const struct optdef login_opts[] = {
	{ "no-check", NULL, "save without asking the server whether the token is valid", false },
	{ 0 },
};

/* Asks the server whether the token is accepted: a call every role may
 * make in one of the services (tenants ListJobs, operators ListNodes).
 * Returns EXIT_OK, or prints one line and returns the exit code. */
static int check_login(struct ctx *c)
{
	static const char *const calls[][2] = { { "JobService", "ListJobs" },
		                                { "NodeService", "ListNodes" } };
	int rc = EXIT_OK;
	for (size_t i = 0; i < NELEM(calls); i++) {
		const ProtobufCMessageDescriptor *d = cl_method_input(calls[i][0], calls[i][1]);
		ProtobufCMessage *m = NULL;
		char err[256];
		if (!d || pbjson_decode(d, "{\"pageSize\":1}", 14, &m, err, sizeof err))
			return EXIT_USAGE;
		struct cl_result r;
		int failed =
		    cl_call(c->url, c->token, c->timeout_s, calls[i][0], calls[i][1], m, &r);
		protobuf_c_message_free_unpacked(m, NULL);
		if (!failed) {
			cl_result_clear(&r);
			return EXIT_OK;
		}
		if (r.http_status == 0) {
			fprintf(stderr,
			        "gpumatch login: --url: no answer from %s: %s (--no-check saves "
			        "anyway)\n",
			        c->url, r.message);
			rc = EXIT_UNREACHABLE;
		} else if (!strcmp(r.code, "unauthenticated")) {
			fprintf(stderr,
			        "gpumatch login: --token: the server does not accept this token "
			        "(%s); nothing saved\n",
			        r.message);
			rc = EXIT_USAGE;
		} else if (!strcmp(r.code, "permission_denied")) {
			rc = EXIT_USAGE; /* valid, but not for this service: try the next */
			cl_result_clear(&r);
			continue;
		} else {
			fprintf(stderr, "gpumatch login: %s/%s failed: %s: %s\n", calls[i][0],
			        calls[i][1], r.code, r.message);
			rc = EXIT_SERVER;
		}
		cl_result_clear(&r);
		return rc;
	}
	return EXIT_OK; /* permission_denied in both: a valid token of some role */
}

static const struct cmd cmds_main[] = {
	{ "login", "",
	  "check --url and --token with the server, then store them in the config file (mode 0600)",
	  login_opts, 0, 0, run_login, false },
	{ 0 },
};

static const struct cmd *const tables[] = { cmds_main,  cmds_jobs,  cmds_nodes,
	                                    cmds_admin, cmds_agent, cmds_logs };

/* ---- flags ---- */

const char *opt_str(const struct ctx *c, const char *name)
{
	const char *v = NULL;
	for (size_t i = 0; i < c->nval; i++)
		if (!strcmp(c->val[i].name, name))
			v = c->val[i].val;
	return v;
}

bool opt_has(const struct ctx *c, const char *name)
{
	return opt_str(c, name) != NULL;
}

size_t opt_all(const struct ctx *c, const char *name, const char **out, size_t max)
{
	size_t n = 0;
	for (size_t i = 0; i < c->nval; i++)
		if (!strcmp(c->val[i].name, name) && n < max)
			out[n++] = c->val[i].val;
	return n;
}

int usage_error(const struct ctx *c, const char *fmt, ...)
{
	va_list ap;
	/* one line: what is wrong, naming the flag, file and field */
	fprintf(stderr, "gpumatch %s: ", c->cmd ? c->cmd->words : "");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (see gpumatch %s --help)\n", c->cmd ? c->cmd->words : "");
	return EXIT_USAGE;
}

int pos_id(struct ctx *c, int i, const char *what, uint64_t *out)
{
	if (i >= c->npos)
		return usage_error(c, "missing %s", what);
	char *end;
	errno = 0;
	unsigned long long v = strtoull(c->pos[i], &end, 10);
	if (errno || end == c->pos[i] || *end || !v || c->pos[i][0] == '-')
		return usage_error(c, "%s: expected a positive integer id, got \"%s\"", what,
		                   c->pos[i]);
	*out = v;
	return EXIT_OK;
}

/* ---- values ---- */

int set_window_since(struct ctx *c, json_t *req, const char *path)
{
	const char *since = opt_str(c, "since");
	if (!since)
		return EXIT_OK;
	int64_t us = parse_duration_us(since);
	if (us <= 0)
		return usage_error(c, "--since: expected a duration such as 24h or 30d, got \"%s\"",
		                   since);
	char p[128];
	snprintf(p, sizeof p, "%s.startUs", path);
	jset(req, p, jint64(cl_now_us() - us));
	return EXIT_OK;
}

/* ---- RPCs ---- */

int call_msg(struct ctx *c, const char *service, const char *method, const ProtobufCMessage *req,
             ProtobufCMessage **resp)
{
	struct cl_result r;
	*resp = NULL;
	if (!cl_call(c->url, c->token, c->timeout_s, service, method, req, &r)) {
		*resp = r.resp;
		r.resp = NULL;
		cl_result_clear(&r);
		return EXIT_OK;
	}
	int rc;
	if (!strcmp(r.code, "invalid_url")) {
		fprintf(stderr, "gpumatch: %s\n", r.message);
		rc = EXIT_USAGE;
	} else if (!strcmp(r.code, "tls")) {
		fprintf(stderr, "gpumatch: %s\n", r.message);
		rc = EXIT_UNREACHABLE;
	} else if (r.http_status == 0) {
		fprintf(stderr, "gpumatch: %s (is gpumatchd running? set --url or GPUMATCH_URL)\n",
		        r.message);
		rc = EXIT_UNREACHABLE;
	} else {
		/* "amountMicros: ..." reads as the command's own "AMOUNT: ..." */
		const char *msg = r.message, *alias = NULL;
		for (size_t i = 0; c->aliases && c->aliases[i][0]; i++) {
			size_t n = strlen(c->aliases[i][0]);
			if (!strncmp(msg, c->aliases[i][0], n) && msg[n] == ':') {
				alias = c->aliases[i][1];
				msg += n;
				break;
			}
		}
		fprintf(stderr, "gpumatch: %s/%s failed: %s: %s%s\n", service, method, r.code,
		        alias ? alias : "", msg);
		rc = EXIT_SERVER;
	}
	cl_result_clear(&r);
	return rc;
}

int call_json(struct ctx *c, const char *service, const char *method, json_t *req,
              ProtobufCMessage **resp)
{
	*resp = NULL;
	const ProtobufCMessageDescriptor *d = cl_method_input(service, method);
	char *text = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	if (!d || !text) {
		free(text);
		fprintf(stderr, "gpumatch: cannot build %s/%s\n", service, method);
		return EXIT_USAGE;
	}
	ProtobufCMessage *m = NULL;
	char err[512];
	if (pbjson_decode(d, text, strlen(text), &m, err, sizeof err)) {
		free(text);
		if (c->input_file)
			return usage_error(c, "%s: %s", c->input_file, err);
		return usage_error(c, "invalid request: %s", err);
	}
	free(text);
	int rc = call_msg(c, service, method, m, resp);
	protobuf_c_message_free_unpacked(m, NULL);
	return rc;
}

int tenant_ref(struct ctx *c, const char *flag, const char *v, json_t *req, const char *key)
{
	size_t n = strlen(v), digits = strspn(v, "0123456789");
	if (n && digits == n) {
		json_object_set_new(req, key, json_string(v));
		return EXIT_OK;
	}
	if (!n || n > 128)
		return usage_error(c, "--%s: expected a tenant id or name, got \"%s\"", flag, v);
	/* names are unique; the list is paged, so walk it */
	char token[64] = "";
	for (int page = 0; page < 10000; page++) {
		json_t *lr = json_pack("{s:i}", "pageSize", 1000);
		if (token[0])
			json_object_set_new(lr, "pageToken", json_string(token));
		ProtobufCMessage *m;
		int rc = call_json(c, "AdminService", "ListTenants", lr, &m);
		if (rc)
			return rc;
		json_t *j = msg_to_json(m);
		protobuf_c_message_free_unpacked(m, NULL);
		size_t i;
		json_t *t;
		json_array_foreach(json_object_get(j, "tenants"), i, t)
		{
			const char *name = json_string_value(json_object_get(t, "name"));
			if (name && !strcmp(name, v)) {
				json_t *id = json_object_get(t, "id");
				json_object_set(req, key, id ? id : json_string("0"));
				json_decref(j);
				return EXIT_OK;
			}
		}
		const char *next = json_string_value(json_object_get(j, "nextPageToken"));
		snprintf(token, sizeof token, "%s", next ? next : "");
		json_decref(j);
		if (!token[0])
			break;
	}
	fprintf(stderr, "gpumatch %s: --%s: no tenant named \"%s\"\n", c->cmd->words, flag, v);
	return EXIT_USAGE;
}

/* ---- config ---- */

static void default_config_path(char *out, size_t len)
{
	const char *env = getenv("GPUMATCH_CONFIG");
	const char *xdg = getenv("XDG_CONFIG_HOME");
	const char *home = getenv("HOME");
	if (env && *env)
		snprintf(out, len, "%s", env);
	else if (xdg && *xdg)
		snprintf(out, len, "%s/gpumatch/config", xdg);
	else
		snprintf(out, len, "%s/.config/gpumatch/config", home && *home ? home : ".");
}

/* Reads "key = value" lines; '#' starts a comment. Missing file: nothing. */
static void read_config(const char *path, char *url, size_t url_len, char *token, size_t token_len,
                        char *ca, size_t ca_len)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	char line[1200];
	while (fgets(line, sizeof line, f)) {
		char *s = line + strspn(line, " \t");
		if (*s == '#' || *s == '\n' || !*s)
			continue;
		char *eq = strchr(s, '=');
		if (!eq)
			continue;
		char *k = s, *v = eq + 1;
		char *ke = eq;
		while (ke > k && (ke[-1] == ' ' || ke[-1] == '\t'))
			ke--;
		*ke = '\0';
		v += strspn(v, " \t");
		v[strcspn(v, "\r\n")] = '\0';
		size_t vl = strlen(v);
		while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
			v[--vl] = '\0';
		if (!strcmp(k, "url") && !*url)
			snprintf(url, url_len, "%s", v);
		else if (!strcmp(k, "token") && !*token)
			snprintf(token, token_len, "%s", v);
		else if (!strcmp(k, "ca_file") && !*ca)
			snprintf(ca, ca_len, "%s", v);
	}
	fclose(f);
}

static int mkdir_parents(const char *path)
{
	char tmp[1024];
	snprintf(tmp, sizeof tmp, "%s", path);
	char *slash = strrchr(tmp, '/');
	if (!slash || slash == tmp)
		return 0;
	*slash = '\0';
	for (char *p = tmp + 1; *p; p++) {
		if (*p == '/') {
			*p = '\0';
			if (mkdir(tmp, 0700) && errno != EEXIST)
				return -1;
			*p = '/';
		}
	}
	if (mkdir(tmp, 0700) && errno != EEXIST)
		return -1;
	return 0;
}

static int run_login(struct ctx *c)
{
	if (!opt_has(c, "url") && !getenv("GPUMATCH_URL"))
		return usage_error(c, "--url is required (or GPUMATCH_URL)");
	if (!*c->token)
		return usage_error(c, "--token is required (or GPUMATCH_TOKEN)");
	if (strncmp(c->url, "http://", 7) && strncmp(c->url, "https://", 8))
		return usage_error(c, "--url: \"%s\" is not http://HOST:PORT or https://HOST:PORT",
		                   c->url);
	int rc;
	if (!opt_has(c, "no-check") && (rc = check_login(c)))
		return rc;
	if (mkdir_parents(c->config_path)) {
		fprintf(stderr, "gpumatch login: cannot create the directory of %s: %s\n",
		        c->config_path, strerror(errno));
		return EXIT_USAGE;
	}
	char tmp[1100];
	snprintf(tmp, sizeof tmp, "%s.tmp", c->config_path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || fchmod(fd, 0600)) {
		fprintf(stderr, "gpumatch login: cannot write %s: %s\n", tmp, strerror(errno));
		if (fd >= 0)
			close(fd);
		return EXIT_USAGE;
	}
	FILE *f = fdopen(fd, "w");
	fprintf(f, "# written by gpumatch login\nurl = %s\ntoken = %s\n", c->url, c->token);
	if (c->ca_file[0])
		fprintf(f, "ca_file = %s\n", c->ca_file);
	if (fclose(f) || rename(tmp, c->config_path)) {
		fprintf(stderr, "gpumatch login: cannot write %s: %s\n", c->config_path,
		        strerror(errno));
		unlink(tmp);
		return EXIT_USAGE;
	}
	printf("saved url and token to %s\n", c->config_path);
	return EXIT_OK;
}

/* ---- help ---- */

static void print_opts(FILE *f, const struct optdef *o)
{
	for (; o && o->name; o++) {
		char left[80];
		snprintf(left, sizeof left, "--%s%s%s", o->name, o->arg ? " " : "",
		         o->arg ? o->arg : "");
		fprintf(f, "  %-26s %s%s\n", left, o->help, o->multi ? " (repeatable)" : "");
	}
}

static void cmd_help(FILE *f, const struct cmd *k)
{
	fprintf(f, "usage: gpumatch %s [flags]%s%s%s\n\n%s\n", k->words, *k->args ? " " : "",
	        k->args, k->rest ? " [-- COMMAND ARGS...]" : "", k->summary);
	if (k->opts && k->opts->name) {
		fprintf(f, "\nflags:\n");
		print_opts(f, k->opts);
	}
	fprintf(f, "\nglobal flags:\n");
	print_opts(f, global_opts);
	fprintf(
	    f,
	    "\nexit codes: 0 ok, 1 server error, 2 usage error, 3 server unreachable or its TLS "
	    "certificate not trusted%s\n",
	    !strcmp(k->words, "watch") || !strcmp(k->words, "submit")
	        ? ", 4 job failed, 5 job cancelled or preempted (submit: with --watch)"
	        : "");
}

/* Lists the commands whose words start with prefix ("" = all). */
static void list_help(FILE *f, const char *prefix)
{
	size_t pl = strlen(prefix);
	if (pl)
		fprintf(f, "usage: gpumatch %s COMMAND [flags]\n\ncommands:\n", prefix);
	else
		fprintf(f, "usage: gpumatch COMMAND [flags]\n\n"
		           "The gpumatch command: submit and watch jobs, run and manage nodes,\n"
		           "administer gpumatchd. 'gpumatch COMMAND --help' describes one;\n"
		           "'gpumatch --version' prints the version.\n\n"
		           "commands:\n");
	for (size_t t = 0; t < NELEM(tables); t++)
		for (const struct cmd *k = tables[t]; k->words; k++)
			if (!strncmp(k->words, prefix, pl) && (!pl || k->words[pl] == ' '))
				fprintf(f, "  %-24s %s\n", k->words, k->summary);
	fprintf(f, "\nglobal flags:\n");
	print_opts(f, global_opts);
}

/* The command tables as JSON, for the build's man page and shell
 * completion generators (not listed in help): {"global": [flags],
 * "commands": [{"words", "args", "summary", "rest", "flags": [...]}]}. */
static json_t *opts_json(const struct optdef *o)
{
	json_t *a = json_array();
	for (; o && o->name; o++)
		json_array_append_new(a, json_pack("{s:s, s:s?, s:s, s:b}", "name", o->name, "arg",
		                                   o->arg, "help", o->help, "multi", o->multi));
	return a;
}

static int dump_tables(void)
{
	json_t *cmds = json_array();
	for (size_t t = 0; t < NELEM(tables); t++)
		for (const struct cmd *k = tables[t]; k->words; k++)
			json_array_append_new(cmds, json_pack("{s:s, s:s, s:s, s:b, s:o}", "words",
			                                      k->words, "args", k->args, "summary",
			                                      k->summary, "rest", k->rest, "flags",
			                                      opts_json(k->opts)));
	json_t *all = json_pack("{s:s, s:o, s:o}", "version", GPUMATCH_VERSION_STRING, "global",
	                        opts_json(global_opts), "commands", cmds);
	int rc = json_dumpf(all, stdout, JSON_INDENT(1)) ? EXIT_USAGE : EXIT_OK;
	putchar('\n');
	json_decref(all);
	return rc;
}

/* ---- parsing ---- */

static const struct optdef *find_opt(const struct optdef *defs, const char *name, size_t len)
{
	for (const struct optdef *o = defs; o && o->name; o++)
		if (strlen(o->name) == len && !strncmp(o->name, name, len))
			return o;
	return NULL;
}

static int parse_flags(struct ctx *c, int argc, char **argv)
{
	static char *pos[256];
	c->pos = pos;
	for (int i = 0; i < argc; i++) {
		char *a = argv[i];
		if (!strcmp(a, "--")) {
			if (!c->cmd->rest)
				return usage_error(c, "unexpected \"--\"");
			c->rest = argv + i + 1;
			c->nrest = argc - i - 1;
			break;
		}
		if (!strcmp(a, "-h")) {
			a = "--help";
		} else if (!strcmp(a, "-o")) {
			if (i + 1 >= argc)
				return usage_error(c, "-o needs a value (table or json)");
			if (c->nval >= NELEM(c->val))
				return usage_error(c, "too many flags");
			c->val[c->nval++] = (struct optval){ "output", argv[++i] };
			continue;
		}
		if (a[0] != '-' || !a[1] || (a[1] != '-' && (a[1] < 'a' || a[1] > 'z'))) {
			if (c->npos >= (int)NELEM(pos))
				return usage_error(c, "too many arguments");
			pos[c->npos++] = a;
			continue;
		}
		if (a[1] != '-')
			return usage_error(c, "unknown flag %s", a);
		const char *name = a + 2, *eq = strchr(name, '=');
		size_t nl = eq ? (size_t)(eq - name) : strlen(name);
		const struct optdef *o = find_opt(c->cmd->opts, name, nl);
		if (!o)
			o = find_opt(global_opts, name, nl);
		if (!o)
			return usage_error(c, "unknown flag --%.*s", (int)nl, name);
		const char *v = "";
		if (o->arg) {
			if (eq)
				v = eq + 1;
			else if (i + 1 < argc)
				v = argv[++i];
			else
				return usage_error(c, "--%s needs a value (%s)", o->name, o->arg);
		} else if (eq) {
			return usage_error(c, "--%s takes no value", o->name);
		}
		if (!o->multi && o->arg && opt_has(c, o->name) &&
		    find_opt(c->cmd->opts, o->name, nl))
			return usage_error(c, "--%s given twice", o->name);
		if (c->nval >= NELEM(c->val))
			return usage_error(c, "too many flags");
		c->val[c->nval++] = (struct optval){ o->name, v };
	}
	return EXIT_OK;
}

static const struct cmd *match_cmd(int argc, char **argv, int *used)
{
	const struct cmd *best = NULL;
	int best_n = 0;
	for (size_t t = 0; t < NELEM(tables); t++)
		for (const struct cmd *k = tables[t]; k->words; k++) {
			char words[128];
			snprintf(words, sizeof words, "%s", k->words);
			int n = 0;
			bool okm = true;
			for (char *save = NULL, *w = strtok_r(words, " ", &save); w;
			     w = strtok_r(NULL, " ", &save), n++)
				if (n >= argc || strcmp(argv[n], w)) {
					okm = false;
					break;
				}
			if (okm && n > best_n) {
				best = k;
				best_n = n;
			}
		}
	*used = best_n;
	return best;
}

static bool is_group(const char *prefix)
{
	size_t pl = strlen(prefix);
	for (size_t t = 0; t < NELEM(tables); t++)
		for (const struct cmd *k = tables[t]; k->words; k++)
			if (!strncmp(k->words, prefix, pl) && k->words[pl] == ' ')
				return true;
	return false;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
	    !strcmp(argv[1], "help")) {
		list_help(argc < 2 ? stderr : stdout, "");
		return argc < 2 ? EXIT_USAGE : EXIT_OK;
	}
	if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
		printf("gpumatch %s\n", GPUMATCH_VERSION_STRING);
		return EXIT_OK;
	}
	if (!strcmp(argv[1], "__commands"))
		return dump_tables();
	int used = 0;
	const struct cmd *k = match_cmd(argc - 1, argv + 1, &used);
	/* "gpumatch node" or "gpumatch node bogus": the group's commands */
	char group[128] = "";
	for (int i = 1; i < argc && argv[i][0] != '-'; i++) {
		char next[128];
		snprintf(next, sizeof next, "%s%s%s", group, *group ? " " : "", argv[i]);
		if (!is_group(next))
			break;
		snprintf(group, sizeof group, "%s", next);
	}
	if (*group && (!k || strlen(group) >= strlen(k->words))) {
		bool help = false;
		for (int i = 1; i < argc; i++)
			help |= !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h");
		int gw = 1;
		for (const char *p = group; *p; p++)
			gw += *p == ' ';
		if (!help && 1 + gw < argc)
			fprintf(stderr, "gpumatch %s: unknown command \"%s\"\n\n", group,
			        argv[1 + gw]);
		list_help(help ? stdout : stderr, group);
		return help ? EXIT_OK : EXIT_USAGE;
	}
	if (!k) {
		fprintf(stderr,
		        "gpumatch: unknown command \"%s\"\nrun 'gpumatch --help' for the list\n",
		        argv[1]);
		return EXIT_USAGE;
	}
	static struct ctx c;
	c.cmd = k;
	int rc = parse_flags(&c, argc - 1 - used, argv + 1 + used);
	if (rc)
		return rc;
	if (opt_has(&c, "help")) {
		cmd_help(stdout, k);
		return EXIT_OK;
	}
	if (c.npos < k->min_pos)
		return usage_error(&c, "missing argument%s %s", k->min_pos - c.npos > 1 ? "s" : "",
		                   k->args);
	if (k->max_pos >= 0 && c.npos > k->max_pos)
		return usage_error(&c, "unexpected argument \"%s\"", c.pos[k->max_pos]);
	const char *out = opt_str(&c, "output");
	if (out && strcmp(out, "table") && strcmp(out, "json"))
		return usage_error(&c, "--output: expected table or json, got \"%s\"", out);
	c.json = out && !strcmp(out, "json");
	c.timeout_s = 30;
	if (opt_has(&c, "timeout")) {
		char *end;
		long t = strtol(opt_str(&c, "timeout"), &end, 10);
		if (*end || t < 1 || t > 3600)
			return usage_error(&c, "--timeout: expected seconds 1..3600, got \"%s\"",
			                   opt_str(&c, "timeout"));
		c.timeout_s = (int)t;
	}
	if (opt_has(&c, "config"))
		snprintf(c.config_path, sizeof c.config_path, "%s", opt_str(&c, "config"));
	else
		default_config_path(c.config_path, sizeof c.config_path);
	const char *v;
	if ((v = opt_str(&c, "url")) || ((v = getenv("GPUMATCH_URL")) && *v))
		snprintf(c.url, sizeof c.url, "%s", v);
	if ((v = opt_str(&c, "token")) || ((v = getenv("GPUMATCH_TOKEN")) && *v))
		snprintf(c.token, sizeof c.token, "%s", v);
	if ((v = opt_str(&c, "ca-file")) || ((v = getenv("GPUMATCH_CA_FILE")) && *v))
		snprintf(c.ca_file, sizeof c.ca_file, "%s", v);
	if (k->run != run_login)
		read_config(c.config_path, c.url, sizeof c.url, c.token, sizeof c.token, c.ca_file,
		            sizeof c.ca_file);
	if (!*c.url)
		snprintf(c.url, sizeof c.url, "%s", DEFAULT_URL);
	const char *cert = opt_str(&c, "client-cert"), *key = opt_str(&c, "client-key");
	if (!cert)
		cert = getenv("GPUMATCH_CLIENT_CERT");
	if (!key)
		key = getenv("GPUMATCH_CLIENT_KEY");
	if (key && *key && !(cert && *cert))
		return usage_error(&c, "--client-key needs --client-cert");
	cl_tls_setup(c.ca_file, cert, key);
	return k->run(&c);
}
