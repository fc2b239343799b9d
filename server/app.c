/* app.c — wires gpumatchd together: the Postgres pool, Redis, the RPC
 * server with one method entry per RPC of the contract, the GET routes
 * (/healthz, /readyz, /metrics) and the signal handling (drain on SIGTERM,
 * exit at once on a second one, reload on SIGHUP). */
#include "app.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "console.h"
#include "gpumatch/v1/registry.h"
#include "handlers.h"
#include "log.h"
#include "rds_tls.h"
#include "speeds.h"

int64_t now_us(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

/* Prepared on every Postgres connection. */
static const struct pg_stmt pg_statements[] = {
	{ "auth_lookup",
	  "SELECT t.id, t.role, coalesce(t.tenant_id, 0), coalesce(t.operator_id, 0), t.name"
	  "  FROM api_tokens t"
	  "  LEFT JOIN tenants te ON te.id = t.tenant_id"
	  "  LEFT JOIN operators o ON o.id = t.operator_id"
	  " WHERE t.secret_sha256 = sha256(convert_to($1, 'UTF8'))"
	  "   AND t.revoked_at_us = 0 AND (t.expires_at_us = 0 OR t.expires_at_us > $2::bigint)"
	  "   AND coalesce(te.state, 1) = 1 AND coalesce(o.state, 1) = 1",
	  2 },
	/* Group commit of many submits in one statement (one transaction):
	 * each element becomes a job, set-based, and the batch one outbox row
	 * naming them all (0005_submit_and_health.sql). The caller sends each
	 * (tenant, key) once per batch. Rows: tenant, key, job id, created,
	 * same_spec. A key the tenant used before comes back with that job
	 * (created = false) and whether it was asked for with the same spec; a
	 * key taken by a concurrent batch this statement could not see has no
	 * row: the caller retries it. Only keys that were not inserted are
	 * looked up. Prepared, so its plan is made once per connection. */
	{ "submit_jobs",
	  "WITH ins AS (INSERT INTO jobs (tenant_id, name, idempotency_key, spec_pb, state,"
	  "                priority_class, gpus, submitted_at_us, updated_at_us)"
	  "             SELECT u.tenant, u.name, u.key, u.spec, 1, u.prio, u.gpus, $7::bigint,"
	  "                    $7::bigint"
	  "               FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bytea[],"
	  "                           $5::smallint[], $6::integer[])"
	  "                    AS u(tenant, name, key, spec, prio, gpus)"
	  "             ON CONFLICT (tenant_id, idempotency_key) DO NOTHING"
	  "             RETURNING id, tenant_id, idempotency_key),"
	  " ob AS (INSERT INTO outbox (job_ids, kind, created_at_us)"
	  "        SELECT array_agg(ins.id ORDER BY ins.id), 'enqueue', $7::bigint FROM ins"
	  "        HAVING count(*) > 0),"
	  " missing AS MATERIALIZED ("
	  "   SELECT u.tenant, u.key, u.spec"
	  "     FROM unnest($1::bigint[], $3::text[], $4::bytea[]) AS u(tenant, key, spec)"
	  "    WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.tenant_id = u.tenant"
	  "                        AND ins.idempotency_key = u.key))"
	  " SELECT ins.tenant_id, ins.idempotency_key, ins.id, true, true FROM ins"
	  " UNION ALL"
	  " SELECT m.tenant, m.key, old.id, false, old.spec_pb = m.spec FROM missing m"
	  "   JOIN jobs old ON old.tenant_id = m.tenant AND old.idempotency_key = m.key",
	  7 },
	{ NULL, NULL, 0 },
};

/* Who may call what: tenants and admins use JobService, operators and
 * admins NodeService, only admins AdminService. */
static unsigned service_roles(const char *service)
{
	if (!strcmp(service, "gpumatch.v1.JobService"))
		return ROLE_TENANT | ROLE_ADMIN;
	if (!strcmp(service, "gpumatch.v1.IdentityService"))
		return ROLE_TENANT | ROLE_OPERATOR | ROLE_ADMIN;
	if (!strcmp(service, "gpumatch.v1.NodeService"))
		return ROLE_OPERATOR | ROLE_ADMIN;
	return ROLE_ADMIN;
}

static int build_methods(struct app *a)
{
	size_t n = 0;
	for (size_t s = 0; s < proto_service_count; s++)
		n += proto_services[s]->n_methods;
	a->methods = calloc(n + 1, sizeof *a->methods);
	if (!a->methods)
		return -1;
	size_t k = 0;
	for (size_t s = 0; s < proto_service_count; s++) {
		const ProtobufCServiceDescriptor *sd = proto_services[s];
		for (unsigned m = 0; m < sd->n_methods; m++) {
			const ProtobufCMethodDescriptor *md = &sd->methods[m];
			size_t len = strlen(sd->name) + strlen(md->name) + 3;
			char *path = malloc(len);
			if (!path)
				return -1;
			snprintf(path, len, "/%s/%s", sd->name, md->name);
			a->methods[k].path = path;
			a->methods[k].in = md->input;
			a->methods[k].out = md->output;
			a->methods[k].roles = service_roles(sd->name);
			/* operators read the output of jobs on their own nodes */
			if (!strcmp(path, "/gpumatch.v1.JobService/GetJobLogs"))
				a->methods[k].roles |= ROLE_OPERATOR;
			a->methods[k].fn = handler_for(path);
			k++;
		}
	}
	return 0;
}

static void reply_text(struct evhttp_request *req, int code, const char *reason, const char *ctype,
                       const char *body)
{
	struct evbuffer *b = evbuffer_new();
	if (!b) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	evbuffer_add(b, body, strlen(body));
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
	evhttp_send_reply(req, code, reason, b);
	evbuffer_free(b);
}

static void healthz_cb(struct evhttp_request *req, void *arg)
{
	(void)arg;
	reply_text(req, 200, "OK", "text/plain", "ok\n");
}

static void readyz_cb(struct evhttp_request *req, void *arg)
{
	struct app *a = arg;
	bool pg = pg_pool_ready(a->pg), rd = rds_ready(a->rds);
	bool schema = a->schema_version >= SCHEMA_VERSION;
	char body[256];
	snprintf(body, sizeof body, "postgres %s\nredis %s\nschema %d (needs %d)\n%s",
	         pg                             ? "ok"
	         : pg_pool_stalled(a->pg, NULL) ? "not answering"
	                                        : "down",
	         rd ? "ok" : "down", a->schema_version, SCHEMA_VERSION,
	         a->draining ? "draining\n" : "");
	bool ok = pg && rd && schema && !a->draining;
	reply_text(req, ok ? 200 : 503, ok ? "OK" : "Service Unavailable", "text/plain", body);
}

static void metrics_cb(struct evhttp_request *req, void *arg)
{
	struct app *a = arg;
	struct evbuffer *b = evbuffer_new();
	if (!b) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	int up, busy, queued;
	pg_pool_stats(a->pg, &up, &busy, &queued);
	evbuffer_add_printf(
	    b,
	    "# HELP gpumatch_up Whether the process is serving.\n"
	    "# TYPE gpumatch_up gauge\ngpumatch_up 1\n"
	    "# HELP gpumatch_start_time_seconds Process start, seconds since epoch.\n"
	    "# TYPE gpumatch_start_time_seconds gauge\n"
	    "gpumatch_start_time_seconds %.3f\n"
	    "# HELP gpumatch_postgres_connections Postgres connections by state.\n"
	    "# TYPE gpumatch_postgres_connections gauge\n"
	    "gpumatch_postgres_connections{state=\"up\"} %d\n"
	    "gpumatch_postgres_connections{state=\"busy\"} %d\n"
	    "# HELP gpumatch_postgres_queued Queries waiting for a connection.\n"
	    "# TYPE gpumatch_postgres_queued gauge\ngpumatch_postgres_queued %d\n"
	    "# HELP gpumatch_redis_up Whether Redis is connected.\n"
	    "# TYPE gpumatch_redis_up gauge\ngpumatch_redis_up %d\n",
	    (double)a->started_us / 1e6, up, busy, queued, rds_ready(a->rds) ? 1 : 0);
	rpc_server_metrics(a->rpc, b);
	handlers_metrics(a, b);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
	                  "text/plain; version=0.0.4");
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);
}

static void rpc_limits_from_cfg(const struct cfg *c, struct rpc_limits *l)
{
	l->max_body_bytes = (size_t)c->max_body_bytes;
	l->request_timeout_ms = c->request_timeout_ms;
	l->idle_timeout_ms = c->idle_timeout_ms;
	l->max_connections = c->max_connections;
	l->max_per_client = c->max_connections_per_client;
	l->header_timeout_ms = c->header_timeout_ms;
	l->body_timeout_ms = c->body_timeout_ms;
}

static void drain_tick_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct app *a = arg;
	(void)fd;
	(void)ev;
	if (rpc_server_inflight(a->rpc) == 0 && handlers_idle(a)) {
		log_info("drained, exiting");
		event_base_loopexit(a->base, NULL);
	}
}

void app_begin_drain(struct app *a)
{
	if (a->draining)
		return;
	a->draining = true;
	log_info("draining inflight=%zu", rpc_server_inflight(a->rpc));
	rpc_server_stop_accepting(a->rpc);
	handlers_drain(a);
	struct timeval tv = { 0, 20000 };
	a->drain_ev = event_new(a->base, -1, EV_PERSIST, drain_tick_cb, a);
	if (a->drain_ev)
		event_add(a->drain_ev, &tv);
}

/* Re-reads redis_password_file for the connections made from now on (the
 * one open now stays authenticated, as Redis keeps it after a password
 * change). A file that cannot be read keeps the old password. */
static void reload_redis_password(struct app *a)
{
	char rpw[512] = "", err[512];
	if (a->cfg.redis_password_file[0] &&
	    cfg_read_secret_file("redis_password_file", a->cfg.redis_password_file, rpw, sizeof rpw,
	                         err, sizeof err)) {
		log_error("redis password reload failed, keeping the old one err=\"%s\"", err);
		return;
	}
	rds_set_password(a->rds, rpw);
	explicit_bzero(rpw, sizeof rpw);
}

static void signal_cb(evutil_socket_t sig, short ev, void *arg)
{
	struct app *a = arg;
	(void)ev;
	if (sig == SIGHUP) {
		char err[512];
		if (cfg_reload(&a->cfg, err, sizeof err)) {
			log_error("reload failed, keeping the old configuration err=\"%s\"", err);
			return;
		}
		int lvl = log_parse_level(a->cfg.log_level);
		if (lvl >= 0)
			log_min_level = (enum log_level)lvl;
		struct rpc_limits l;
		rpc_limits_from_cfg(&a->cfg, &l);
		rpc_server_set_limits(a->rpc, &l);
		pg_pool_set_stall_timeout(a->pg, a->cfg.pg_stall_timeout_ms);
		handlers_reload(a);
		reload_redis_password(a);
		if (a->tls) {
			if (tls_server_reload(a->tls, a->cfg.tls_cert_file, a->cfg.tls_key_file,
			                      a->cfg.tls_client_ca_file, err, sizeof err))
				log_error("tls reload failed, keeping the old certificate and key "
				          "err=\"%s\"",
				          err);
			else
				log_info("tls certificate and key reloaded cert=%s",
				         a->cfg.tls_cert_file);
		}
		log_info("configuration reloaded");
		return;
	}
	if (++a->term_signals > 1) {
		log_warn("second termination signal, exiting at once");
		_exit(1);
	}
	app_begin_drain(a);
}

/* With tls_client_ca_file, an operator's node RPCs must come over a
 * connection whose client certificate names that operator. Admins (who may
 * call NodeService too) and tenants are bound by their token alone. */
static bool peer_check(struct rpc_call *call, const struct principal *who, char *why, size_t len,
                       void *arg)
{
	struct app *a = arg;
	if (!tls_server_wants_client_certs(a->tls) || who->role != ROLE_OPERATOR)
		return true;
	int64_t op = tls_peer_operator(rpc_call_bufferevent(call));
	if (op == (int64_t)who->operator_id && op > 0)
		return true;
	if (op == 0)
		snprintf(
		    why, len,
		    "node RPCs need a client certificate (this server sets tls_client_ca_file); "
		    "connect with the operator's certificate");
	else if (op < 0)
		snprintf(
		    why, len,
		    "the client certificate names no operator (want subject CN operator-%" PRIu64
		    ")",
		    who->operator_id);
	else
		snprintf(why, len,
		         "the client certificate is operator %" PRId64
		         "'s, the token operator %" PRIu64 "'s",
		         op, who->operator_id);
	log_warn("node rpc refused: client certificate does not match the token operator=%" PRIu64
	         " cert_operator=%" PRId64 " method=%s",
	         who->operator_id, op, rpc_method_path(call));
	return false;
}

/* The plaintext loopback side door for scrapes and probes (metrics_listen). */
static int metrics_listen(struct app *a, char *err, size_t err_len)
{
	char host[128];
	snprintf(host, sizeof host, "%s", a->cfg.metrics_listen);
	char *colon = strrchr(host, ':');
	char *end = NULL;
	long port = colon ? strtol(colon + 1, &end, 10) : -1;
	if (!colon || end == colon + 1 || *end || port < 0 || port > 65535) {
		snprintf(err, err_len, "metrics_listen: expected HOST:PORT, got \"%s\"",
		         a->cfg.metrics_listen);
		return -1;
	}
	*colon = '\0';
	if (host[0] == '[' && colon > host + 1 && colon[-1] == ']') {
		colon[-1] = '\0';
		memmove(host, host + 1, strlen(host));
	}
	if (!tls_host_is_loopback(host)) {
		snprintf(err, err_len,
		         "metrics_listen: %s is not a loopback address (it is plaintext; use "
		         "127.0.0.1 or ::1, or scrape /metrics on the TLS listener)",
		         host);
		return -1;
	}
	a->metrics_http = evhttp_new(a->base);
	if (!a->metrics_http) {
		snprintf(err, err_len, "out of memory");
		return -1;
	}
	evhttp_set_allowed_methods(a->metrics_http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_cb(a->metrics_http, "/healthz", healthz_cb, a);
	evhttp_set_cb(a->metrics_http, "/readyz", readyz_cb, a);
	evhttp_set_cb(a->metrics_http, "/metrics", metrics_cb, a);
	struct evhttp_bound_socket *bs =
	    evhttp_bind_socket_with_handle(a->metrics_http, host, (ev_uint16_t)port);
	if (!bs) {
		snprintf(err, err_len, "metrics_listen: cannot listen on %s: %s",
		         a->cfg.metrics_listen, strerror(errno));
		return -1;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	int bound = (int)port;
	if (!getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &sl))
		bound = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
		                                 : ntohs(((struct sockaddr_in *)&ss)->sin_port);
	log_info("metrics endpoint up (plaintext, loopback) metrics_addr=%s:%d", host, bound);
	return 0;
}

int app_start(struct app *a, char *err, size_t err_len)
{
	a->started_us = now_us();
	bool tls = a->cfg.tls_cert_file[0] || a->cfg.tls_key_file[0];
	if (!tls && a->cfg.tls_client_ca_file[0]) {
		snprintf(err, err_len, "tls_client_ca_file needs tls_cert_file and tls_key_file");
		return -1;
	}
	if (!tls && !tls_host_is_loopback(a->cfg.listen_host)) {
		if (!a->cfg.allow_plaintext) {
			snprintf(err, err_len,
			         "listen_host %s is not a loopback address and TLS is off: set "
			         "tls_cert_file and tls_key_file (or allow_plaintext=true behind a "
			         "TLS terminator)",
			         a->cfg.listen_host);
			return -1;
		}
		log_warn("serving plaintext HTTP on a non-loopback address: bearer tokens cross "
		         "the network unencrypted listen_host=%s allow_plaintext=true",
		         a->cfg.listen_host);
	}
	if (tls) {
		a->tls = tls_server_new(a->cfg.tls_cert_file, a->cfg.tls_key_file,
		                        a->cfg.tls_client_ca_file, err, err_len);
		if (!a->tls)
			return -1;
	}
	char redacted[sizeof a->cfg.pg_conninfo];
	cfg_redact_conninfo(a->cfg.pg_conninfo, redacted, sizeof redacted);
	log_info("postgres conninfo=\"%s\"", redacted);
	int v = migrate_current(a->cfg.pg_conninfo, err, err_len);
	if (v < 0)
		return -1;
	a->schema_version = v;
	char missing[256] = "";
	int m = migrate_missing(a->cfg.pg_conninfo, migrate_default_dir(), SCHEMA_VERSION, missing,
	                        sizeof missing, err, err_len);
	if (m < 0) {
		/* no migrations directory here (an installed binary): the
		 * version alone decides */
		log_warn("cannot check for missing migrations err=\"%s\"", err);
		err[0] = '\0';
	}
	if (m > 0 || v < SCHEMA_VERSION) {
		snprintf(
		    err, err_len,
		    "database schema is older than this gpumatchd needs (version %d): migration "
		    "%s is missing (run `gpumatchd migrate`)",
		    SCHEMA_VERSION, m > 0 ? missing : "newer than the database's");
		return -1;
	}
	/* the shipped speed model, for job types nothing was learned about */
	char merr[512], mp[PATH_MAX], gp[PATH_MAX];
	if (speeds_model_load(share_path("speed-model.csv", mp, sizeof mp),
	                      share_path("gpu-roofline.csv", gp, sizeof gp), merr, sizeof merr))
		log_warn("speed model not loaded: job types without learned speeds get no "
		         "profile err=\"%s\"",
		         merr);
	a->pg = pg_pool_new(a->base, a->cfg.pg_conninfo, a->cfg.pg_pool_size, pg_statements);
	char rpw[512] = "";
	if (a->cfg.redis_password_file[0] &&
	    cfg_read_secret_file("redis_password_file", a->cfg.redis_password_file, rpw, sizeof rpw,
	                         err, err_len))
		return -1;
	if (a->cfg.redis_tls) {
		struct rds_tls_opts o = { .host = a->cfg.redis_host,
			                  .port = a->cfg.redis_port,
			                  .ca_file = a->cfg.redis_tls_ca_file,
			                  .cert_file = a->cfg.redis_tls_cert_file,
			                  .key_file = a->cfg.redis_tls_key_file,
			                  .server_name = a->cfg.redis_tls_server_name };
		a->rds_tls = rds_tls_new(a->base, &o, err, err_len);
	}
	if ((a->cfg.redis_tls && !a->rds_tls) ||
	    (a->rds_tls
	         ? rds_tls_check(a->rds_tls, rpw, err, err_len)
	         : rds_check_auth(a->cfg.redis_host, a->cfg.redis_port, rpw, err, err_len))) {
		explicit_bzero(rpw, sizeof rpw);
		return -1;
	}
	a->rds =
	    rds_new_via(a->base, a->cfg.redis_host, a->cfg.redis_port,
	                a->rds_tls ? rds_tls_socket_path(a->rds_tls) : NULL, handler_scripts());
	if (a->rds)
		rds_set_password(a->rds, rpw);
	explicit_bzero(rpw, sizeof rpw);
	if (!a->pg || !a->rds || build_methods(a)) {
		snprintf(err, err_len, "out of memory or bad store settings");
		return -1;
	}
	pg_pool_set_stall_timeout(a->pg, a->cfg.pg_stall_timeout_ms);
	struct rpc_limits l;
	rpc_limits_from_cfg(&a->cfg, &l);
	a->rpc = rpc_server_new(a->base, a->cfg.listen_host, a->cfg.listen_port, a->methods, &l,
	                        auth_resolve, a, err, err_len);
	if (!a->rpc)
		return -1;
	if (a->tls) {
		rpc_server_set_bevcb(a->rpc, tls_server_bev_cb, a->tls);
		rpc_server_set_peer_check(a->rpc, peer_check, a);
	}
	rpc_server_add_get(a->rpc, "/healthz", healthz_cb, a);
	rpc_server_add_get(a->rpc, "/readyz", readyz_cb, a);
	rpc_server_add_get(a->rpc, "/metrics", metrics_cb, a);
	console_register(a->rpc); /* / and the console's files */
	if (handlers_start(a, err, err_len))
		return -1;
	if (auth_start(a)) {
		snprintf(err, err_len, "out of memory");
		return -1;
	}
	a->sigterm_ev = evsignal_new(a->base, SIGTERM, signal_cb, a);
	a->sigint_ev = evsignal_new(a->base, SIGINT, signal_cb, a);
	a->sighup_ev = evsignal_new(a->base, SIGHUP, signal_cb, a);
	if (!a->sigterm_ev || !a->sigint_ev || !a->sighup_ev) {
		snprintf(err, err_len, "cannot install signal handlers");
		return -1;
	}
	event_add(a->sigterm_ev, NULL);
	event_add(a->sigint_ev, NULL);
	event_add(a->sighup_ev, NULL);
	log_info("listening addr=%s:%d schema=%d tls=%s client_certs=%s", a->cfg.listen_host,
	         rpc_server_port(a->rpc), v, a->tls ? "on" : "off",
	         tls_server_wants_client_certs(a->tls) ? "on" : "off");
	if (a->cfg.metrics_listen[0] && metrics_listen(a, err, err_len))
		return -1;
	return 0;
}

void app_free(struct app *a)
{
	handlers_stop(a);
	auth_stop(a);
	if (a->drain_ev)
		event_free(a->drain_ev);
	if (a->sigterm_ev)
		event_free(a->sigterm_ev);
	if (a->sigint_ev)
		event_free(a->sigint_ev);
	if (a->sighup_ev)
		event_free(a->sighup_ev);
	rpc_server_free(a->rpc);
	if (a->metrics_http)
		evhttp_free(a->metrics_http);
	tls_server_free(a->tls); /* after the listener: connections hold their own */
	rds_free(a->rds);
	rds_tls_free(a->rds_tls); /* after rds: its connection runs through it */
	pg_pool_free(a->pg);
	speeds_clear(); /* after the pool: a reload in flight settles there */
	if (a->methods) {
		for (struct rpc_method *m = a->methods; m->path; m++)
			free((char *)m->path);
		free(a->methods);
	}
}
