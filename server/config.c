/* config.c — the configuration table and its three sources (file,
 * environment, flags). */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

enum kind { K_STR, K_INT, K_LONG, K_BOOL };

struct key {
	const char *name;
	enum kind kind;
	size_t off;
	size_t size; /* strings: buffer size */
	const char *def;
	long min, max;
	bool reloadable;
	const char *help;
};

#define S(f) offsetof(struct cfg, f), sizeof(((struct cfg *)0)->f)
#define N(f) offsetof(struct cfg, f), 0

static const struct key keys[] = {
	{ "listen_host", K_STR, S(listen_host), "127.0.0.1", 0, 0, false, "address to listen on" },
	{ "listen_port", K_INT, N(listen_port), "7070", 0, 65535, false,
	  "TCP port (0 = any free port)" },
	{ "pg_conninfo", K_STR, S(pg_conninfo), "dbname=gpumatch", 0, 0, false,
	  "libpq connection string of the Postgres record" },
	{ "pg_pool_size", K_INT, N(pg_pool_size), "4", 1, 64, false, "Postgres connections" },
	{ "redis_host", K_STR, S(redis_host), "127.0.0.1", 0, 0, false, "Redis host" },
	{ "redis_port", K_INT, N(redis_port), "6379", 1, 65535, false, "Redis port" },
	{ "log_level", K_STR, S(log_level), "info", 0, 0, true, "debug, info, warn or error" },
	{ "max_body_bytes", K_LONG, N(max_body_bytes), "1048576", 1024, 64L << 20, true,
	  "largest request body accepted" },
	{ "max_page_bytes", K_LONG, N(max_page_bytes), "1048576", 1024, 64L << 20, true,
	  "largest page of a List answer, encoded (one item always fits)" },
	{ "request_timeout_ms", K_INT, N(request_timeout_ms), "10000", 10, 600000, true,
	  "a request not answered by then gets deadline_exceeded" },
	{ "idle_timeout_ms", K_INT, N(idle_timeout_ms), "60000", 100, 3600000, true,
	  "idle keep-alive connections are closed after this" },
	{ "max_connections", K_INT, N(max_connections), "10000", 1, 1000000, true,
	  "concurrent client connections, counted from accept (capped by the descriptor limit)" },
	{ "max_connections_per_client", K_INT, N(max_connections_per_client), "256", 1, 1000000,
	  true, "concurrent connections from one client address" },
	{ "header_timeout_ms", K_INT, N(header_timeout_ms), "10000", 100, 600000, true,
	  "a request's headers must arrive within this (answered 408, then closed)" },
	{ "body_timeout_ms", K_INT, N(body_timeout_ms), "30000", 100, 600000, true,
	  "a request's body must arrive within this after its headers" },
	{ "long_poll_max_ms", K_INT, N(long_poll_max_ms), "30000", 0, 600000, true,
	  "longest AcquireLease wait a node may ask for" },
	{ "heartbeat_interval_ms", K_INT, N(heartbeat_interval_ms), "5000", 100, 600000, true,
	  "how often agents are told to heartbeat" },
	{ "heartbeat_timeout_ms", K_INT, N(heartbeat_timeout_ms), "30000", 200, 3600000, true,
	  "a node silent this long is marked lost and its leases end" },
	{ "lease_pickup_timeout_ms", K_INT, N(lease_pickup_timeout_ms), "60000", 100, 3600000, true,
	  "an assigned lease not acquired by its node within this expires" },
	{ "lease_offer_timeout_ms", K_INT, N(lease_offer_timeout_ms), "10000", 100, 3600000, true,
	  "a lease handed out by AcquireLease and not confirmed by the agent within this is "
	  "withdrawn: the job goes back to the queue, unbilled, no attempt counted" },
	{ "test_die_after_lease_commit", K_INT, N(test_die_after_lease_commit), "0", 0, 1000000,
	  false,
	  "TEST ONLY (fault injection): gpumatchd kills itself (SIGKILL) after the Nth "
	  "AcquireLease offer commits and before its reply is sent; 0 = off" },
	{ "pg_stall_timeout_ms", K_INT, N(pg_stall_timeout_ms), "1500", 0, 600000, true,
	  "Postgres busy with no answer this long counts as stalled: queries fail fast with "
	  "unavailable and /readyz says not ready until it answers again (0 = off)" },
	{ "cycle_interval_ms", K_INT, N(cycle_interval_ms), "1000", 1, 600000, true,
	  "periodic scheduling cycle (events also trigger cycles)" },
	{ "reconcile_interval_ms", K_INT, N(reconcile_interval_ms), "60000", 100, 86400000, true,
	  "how often the Redis queue is reconciled with Postgres" },
	{ "max_attempts", K_INT, N(max_attempts), "3", 1, 100, true,
	  "attempts before a preempted or node-lost job fails" },
	{ "group_commit_max", K_INT, N(group_commit_max), "256", 1, 10000, true,
	  "submits written in one Postgres transaction at most" },
	{ "group_commit_inflight", K_INT, N(group_commit_inflight), "1", 1, 8, true,
	  "submit transactions written at once (more: less wait when idle, smaller batches)" },
	{ "group_commit_delay_us", K_INT, N(group_commit_delay_us), "0", 0, 100000, true,
	  "extra wait to gather a batch (0: batch only what queued during the last write)" },
	{ "ledger_settle_interval_ms", K_INT, N(ledger_settle_interval_ms), "1000", 10, 600000,
	  false, "how often the leader's settle sweep posts ended leases' usage" },
	{ "ledger_sweep_shards", K_INT, N(ledger_sweep_shards), "2", 1, LEDGER_MAX_SWEEP_SHARDS,
	  false, "settle sweeps run in parallel, each on its share of the leases (id % shards)" },
	{ "ledger_meter_interval_ms", K_INT, N(ledger_meter_interval_ms), "60000", 10, 86400000,
	  true, "running leases' usage is posted (operators paid as they go) this often" },
	{ "rollup_interval_ms", K_INT, N(rollup_interval_ms), "15000", 100, 60000, true,
	  "how often the leader refreshes the per-minute rollups behind the console's charts" },
	{ "rollup_retention_hours", K_INT, N(rollup_retention_hours), "720", 1, 87600, true,
	  "per-minute rollups older than this are deleted" },
	{ "allow_unverified", K_BOOL, N(allow_unverified), "false", 0, 0, false,
	  "initial policy: unverified nodes may take jobs (admins change it with SetPolicy)" },
	{ "traces_dir", K_STR, S(traces_dir), "", 0, 0, true,
	  "where SimulatePolicy finds the public traces (alibaba-gpu-v2023/, msr-itp/, gavel/); "
	  "\"\": share/gpumatch/traces installed, traces/ in a source tree "
	  "(deploy/fetch-traces.sh puts them there)" },
	{ "instance_id", K_STR, S(instance_id), "", 0, 0, false,
	  "name of this replica in logs and the leader lock (default host:pid)" },
	{ "probe_peaks_file", K_STR, S(probe_peaks_file), "", 0, 0, false,
	  "CSV of expected peak TFLOPS per GPU product (\"\": the shipped gpu-peaks.csv)" },
	{ "probe_peaks_extra_file", K_STR, S(probe_peaks_extra_file), "", 0, 0, false,
	  "admin's additional peak rows (same format), overriding the shipped ones" },
	{ "probe_dim", K_INT, N(probe_dim), "8192", 1, 65536, true,
	  "probe challenge matrix size (m = n = k)" },
	{ "probe_chain_length", K_INT, N(probe_chain_length), "200", 1, 100000, true,
	  "GEMMs chained in one probe challenge" },
	{ "probe_open_rows", K_INT, N(probe_open_rows), "8", 1, 64, true,
	  "result rows per GPU the probe must open (each costs the server k * n)" },
	{ "probe_commit_timeout_ms", K_INT, N(probe_commit_timeout_ms), "120000", 100, 3600000,
	  true, "a probe commitment must arrive this long after its challenge" },
	{ "probe_open_timeout_ms", K_INT, N(probe_open_timeout_ms), "30000", 100, 3600000, true,
	  "a probe opening must arrive this long after its commitment" },
	{ "probe_attempts_per_hour", K_INT, N(probe_attempts_per_hour), "6", 1, 100000, true,
	  "probe challenges a node may request per hour" },
	{ "probe_peak_margin_pct", K_INT, N(probe_peak_margin_pct), "25", 0, 1000, true,
	  "a claim or measurement above the model's peak by more than this flags a spoofed GPU" },
	{ "log_cap_bytes", K_LONG, N(log_cap_bytes), "67108864", 0, 1L << 40, true,
	  "job output kept per lease; past it the rest is counted and dropped (a marker says so)" },
	{ "log_retention_s", K_LONG, N(log_retention_s), "604800", 60, 1L << 32, true,
	  "job output is deleted this long after its lease ended and it was last written" },
	{ "volume_allow_paths", K_STR, S(volume_allow_paths), "", 0, 0, true,
	  "comma-separated host path prefixes jobs may mount as volumes (\"\": none)" },
	{ "probe_min_ratio_pct", K_INT, N(probe_min_ratio_pct), "25", 0, 100, true,
	  "a probe proving less than this share of the claimed figure fails" },
	{ "tls_cert_file", K_STR, S(tls_cert_file), "", 0, 0, false,
	  "PEM certificate chain (leaf first) for TLS; re-read on SIGHUP (\"\": plaintext)" },
	{ "tls_key_file", K_STR, S(tls_key_file), "", 0, 0, false,
	  "PEM private key of tls_cert_file; re-read on SIGHUP" },
	{ "tls_client_ca_file", K_STR, S(tls_client_ca_file), "", 0, 0, false,
	  "CAs of agents' client certificates: operators' node RPCs then need one whose CN is "
	  "operator-<id>" },
	{ "allow_plaintext", K_BOOL, N(allow_plaintext), "false", 0, 0, false,
	  "serve plaintext HTTP on a non-loopback listen_host (tokens cross the network in "
	  "clear)" },
	{ "metrics_listen", K_STR, S(metrics_listen), "", 0, 0, false,
	  "extra plaintext loopback HOST:PORT serving /metrics, /healthz, /readyz (\"\": none)" },
	{ "redis_password_file", K_STR, S(redis_password_file), "", 0, 0, true,
	  "file holding the Redis password (mode 0600 or stricter; \"\": no AUTH); SIGHUP "
	  "re-reads it for the next connection" },
	{ "redis_tls", K_BOOL, N(redis_tls), "false", 0, 0, false,
	  "TLS to Redis: redis_port is then Redis' tls-port (certificate and host name "
	  "verified)" },
	{ "redis_tls_ca_file", K_STR, S(redis_tls_ca_file), "", 0, 0, false,
	  "CAs that sign Redis' certificate (PEM; \"\": the system store)" },
	{ "redis_tls_cert_file", K_STR, S(redis_tls_cert_file), "", 0, 0, false,
	  "client certificate for Redis' tls-auth-clients (PEM chain; \"\": none)" },
	{ "redis_tls_key_file", K_STR, S(redis_tls_key_file), "", 0, 0, false,
	  "key of redis_tls_cert_file (mode 0600 or stricter)" },
	{ "redis_tls_server_name", K_STR, S(redis_tls_server_name), "", 0, 0, false,
	  "name or address checked in Redis' certificate (\"\": redis_host)" },
};

#undef S
#undef N

static const struct key *find_key(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
		if (strlen(keys[i].name) == len && !strncmp(keys[i].name, name, len))
			return &keys[i];
	return NULL;
}

static int set_value(struct cfg *c, const struct key *k, const char *v, const char *src, char *err,
                     size_t err_len)
{
	char *field = (char *)c + k->off;
	switch (k->kind) {
	case K_STR:
		if (strlen(v) >= k->size) {
			snprintf(err, err_len, "%s (%s): longer than %zu bytes", k->name, src,
			         k->size - 1);
			return -1;
		}
		memcpy(field, v, strlen(v) + 1);
		return 0;
	case K_BOOL:
		if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes"))
			*(bool *)field = true;
		else if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no"))
			*(bool *)field = false;
		else {
			snprintf(err, err_len, "%s (%s): expected true or false, got \"%s\"",
			         k->name, src, v);
			return -1;
		}
		return 0;
	case K_INT:
	case K_LONG: {
		char *end;
		errno = 0;
		long n = strtol(v, &end, 10);
		if (errno || end == v || *end || n < k->min || n > k->max) {
			snprintf(err, err_len,
			         "%s (%s): expected an integer in [%ld, %ld], got \"%s\"", k->name,
			         src, k->min, k->max, v);
			return -1;
		}
		if (k->kind == K_INT)
			*(int *)field = (int)n;
		else
			*(long *)field = n;
		return 0;
	}
	}
	return -1;
}

static char *trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	char *e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

/* "key = value" lines; '#' starts a comment; values may be "quoted". */
static int load_file(struct cfg *c, const char *path, bool reload_only, char *err, size_t err_len)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, err_len, "config file %s: %s", path, strerror(errno));
		return -1;
	}
	char line[1024];
	int lineno = 0, rc = 0;
	while (fgets(line, sizeof line, f)) {
		lineno++;
		char *hash = strchr(line, '#');
		if (hash)
			*hash = '\0';
		char *s = trim(line);
		if (!*s)
			continue;
		char *eq = strchr(s, '=');
		if (!eq) {
			snprintf(err, err_len, "%s:%d: expected key = value", path, lineno);
			rc = -1;
			break;
		}
		*eq = '\0';
		char *name = trim(s), *val = trim(eq + 1);
		size_t vl = strlen(val);
		if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"') {
			val[vl - 1] = '\0';
			val++;
		}
		const struct key *k = find_key(name, strlen(name));
		if (!k) {
			snprintf(err, err_len, "%s:%d: unknown key \"%s\"", path, lineno, name);
			rc = -1;
			break;
		}
		if (reload_only && !k->reloadable)
			continue;
		char src[300];
		snprintf(src, sizeof src, "%s:%d", path, lineno);
		if (set_value(c, k, val, src, err, err_len)) {
			rc = -1;
			break;
		}
	}
	fclose(f);
	return rc;
}

static int load_env(struct cfg *c, bool reload_only, char *err, size_t err_len)
{
	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
		char name[96] = "GPUMATCH_";
		for (size_t j = 0; keys[i].name[j] && j + 10 < sizeof name; j++)
			name[9 + j] = (char)toupper((unsigned char)keys[i].name[j]);
		const char *v = getenv(name);
		if (!v || (reload_only && !keys[i].reloadable))
			continue;
		if (set_value(c, &keys[i], v, name, err, err_len))
			return -1;
	}
	return 0;
}

static void set_defaults(struct cfg *c)
{
	memset(c, 0, sizeof *c);
	char err[64];
	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
		set_value(c, &keys[i], keys[i].def, "default", err, sizeof err);
}

int cfg_load(struct cfg *c, int argc, char **argv, int first, char *err, size_t err_len)
{
	set_defaults(c);
	const char *file = getenv("GPUMATCH_CONFIG");
	for (int i = first; i < argc; i++)
		if (!strncmp(argv[i], "--config=", 9))
			file = argv[i] + 9;
	if (file && *file) {
		if (strlen(file) >= sizeof c->config_file) {
			snprintf(err, err_len, "config file name too long");
			return -1;
		}
		strcpy(c->config_file, file);
		if (load_file(c, file, false, err, err_len))
			return -1;
	}
	if (load_env(c, false, err, err_len))
		return -1;
	for (int i = first; i < argc; i++) {
		const char *a = argv[i];
		if (!strncmp(a, "--config=", 9))
			continue;
		if (strncmp(a, "--", 2)) {
			snprintf(err, err_len, "unexpected argument \"%s\" (flags are --key=value)",
			         a);
			return -1;
		}
		const char *eq = strchr(a, '=');
		if (!eq) {
			snprintf(err, err_len, "flag \"%s\": expected --key=value", a);
			return -1;
		}
		const struct key *k = find_key(a + 2, (size_t)(eq - a - 2));
		if (!k) {
			snprintf(err, err_len, "unknown flag \"%.*s\" (see --help)", (int)(eq - a),
			         a);
			return -1;
		}
		if (set_value(c, k, eq + 1, "flag", err, err_len))
			return -1;
	}
	return 0;
}

int cfg_reload(struct cfg *c, char *err, size_t err_len)
{
	struct cfg n = *c;
	if (c->config_file[0] && load_file(&n, c->config_file, true, err, err_len))
		return -1;
	if (load_env(&n, true, err, err_len))
		return -1;
	*c = n;
	return 0;
}

void cfg_redact_conninfo(const char *conninfo, char *out, size_t out_len)
{
	if (!out_len)
		return;
	size_t o = 0;
	const char *p = conninfo ? conninfo : "";
#define PUT(ch)                          \
	do {                             \
		if (o + 1 < out_len)     \
			out[o++] = (ch); \
	} while (0)
	if (!strncmp(p, "postgres://", 11) || !strncmp(p, "postgresql://", 13)) {
		/* URI: user:password@host — and ?password= in the query */
		const char *auth = strstr(p, "://") + 3;
		size_t alen = strcspn(auth, "/?");
		const char *at = memrchr(auth, '@', alen);
		const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
		for (const char *q = p; *q; q++) {
			if (colon && q == colon + 1) {
				for (const char *r = "***"; *r; r++)
					PUT(*r);
				q = at - 1;
				continue;
			}
			if ((q[0] == '?' || q[0] == '&') && !strncmp(q + 1, "password=", 9)) {
				for (const char *r = q; r < q + 10; r++)
					PUT(*r);
				for (const char *r = "***"; *r; r++)
					PUT(*r);
				q += 10;
				while (*q && *q != '&')
					q++;
				q--;
				continue;
			}
			PUT(*q);
		}
		out[o] = '\0';
		return;
	}
	/* key = value pairs; values may be 'quoted' with \ escapes */
	while (*p) {
		while (isspace((unsigned char)*p))
			PUT(*p++);
		const char *k = p;
		while (*p && *p != '=' && !isspace((unsigned char)*p))
			p++;
		bool secret = (size_t)(p - k) == 8 && !strncmp(k, "password", 8);
		for (const char *r = k; r < p; r++)
			PUT(*r);
		while (isspace((unsigned char)*p))
			PUT(*p++);
		if (*p != '=')
			continue;
		PUT(*p++);
		while (isspace((unsigned char)*p))
			PUT(*p++);
		const char *v = p;
		if (*p == '\'') {
			p++;
			while (*p && *p != '\'') {
				if (*p == '\\' && p[1])
					p++;
				p++;
			}
			if (*p)
				p++;
		} else {
			while (*p && !isspace((unsigned char)*p))
				p++;
		}
		if (secret) {
			for (const char *r = "***"; *r; r++)
				PUT(*r);
		} else {
			for (const char *r = v; r < p; r++)
				PUT(*r);
		}
	}
	out[o] = '\0';
#undef PUT
}

int cfg_read_secret_file(const char *key, const char *path, char *out, size_t out_len, char *err,
                         size_t err_len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st)) {
		snprintf(err, err_len, "%s %s: %s", key, path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (!S_ISREG(st.st_mode) || (st.st_mode & 077)) {
		snprintf(err, err_len,
		         "%s %s: mode %03o lets group or others read it; chmod 600 it (or 400)",
		         key, path, (unsigned)(st.st_mode & 0777));
		close(fd);
		return -1;
	}
	ssize_t n = read(fd, out, out_len - 1);
	close(fd);
	if (n < 0) {
		snprintf(err, err_len, "%s %s: %s", key, path, strerror(errno));
		return -1;
	}
	out[n] = '\0';
	out[strcspn(out, "\r\n")] = '\0';
	if (!*out || (size_t)n == out_len - 1) {
		snprintf(err, err_len, "%s %s: %s", key, path,
		         *out ? "longer than the longest secret accepted" : "empty");
		return -1;
	}
	return 0;
}

void cfg_print_help(FILE *out)
{
	fprintf(out,
	        "configuration keys (file: key = value; env: GPUMATCH_<KEY>; flag: --key=value)\n");
	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
		fprintf(out, "  %-24s default %-18s%s %s\n", keys[i].name,
		        *keys[i].def ? keys[i].def : "\"\"", keys[i].reloadable ? " [reload]" : "",
		        keys[i].help);
}
