/* rds_tls.c — TLS to Redis through a private Unix socket (see rds_tls.h).
 * Each connection hiredis makes to the socket gets its own TLS connection
 * to Redis; bytes are copied both ways with a bound on what waits, and
 * either side closing closes both (hiredis then reconnects as after any
 * Redis outage). */
#include "rds_tls.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/listener.h>
#include <hiredis/hiredis.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "tls.h"

/* bytes one direction may hold before reading from its source pauses */
#define TUNNEL_MAX_BUFFERED (1 << 20)
#define CHECK_TIMEOUT_MS    3000

struct tunnel {
	struct rds_tls *t;
	struct bufferevent *local;  /* hiredis' connection on the Unix socket */
	struct bufferevent *remote; /* TLS to Redis */
	struct tunnel *prev, *next;
};

struct rds_tls {
	struct event_base *base;
	struct evdns_base *dns;
	SSL_CTX *ctx;
	char *host;
	int port;
	char *server_name;
	char dir[96];
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct evconnlistener *lis;
	struct tunnel *tunnels;
};

static SSL_CTX *ctx_build(const struct rds_tls_opts *o, char *err, size_t err_len)
{
	char why[256];
	bool cert = o->cert_file && *o->cert_file, key = o->key_file && *o->key_file;
	if (cert != key) {
		snprintf(err, err_len, "%s is set without %s: a client certificate needs both",
		         cert ? "redis_tls_cert_file" : "redis_tls_key_file",
		         cert ? "redis_tls_key_file" : "redis_tls_cert_file");
		return NULL;
	}
	ERR_clear_error();
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx) {
		tls_ssl_reason(why, sizeof why);
		snprintf(err, err_len, "redis_tls: cannot make a context: %s", why);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (o->ca_file && *o->ca_file) {
		if (SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL) != 1) {
			tls_ssl_reason(why, sizeof why);
			snprintf(err, err_len, "redis_tls_ca_file %s: %s", o->ca_file, why);
			goto fail;
		}
	} else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
		tls_ssl_reason(why, sizeof why);
		snprintf(err, err_len, "redis_tls: the system's CA store: %s", why);
		goto fail;
	}
	if (cert) {
		if (SSL_CTX_use_certificate_chain_file(ctx, o->cert_file) != 1) {
			tls_ssl_reason(why, sizeof why);
			snprintf(err, err_len, "redis_tls_cert_file %s: %s", o->cert_file, why);
			goto fail;
		}
		if (SSL_CTX_use_PrivateKey_file(ctx, o->key_file, SSL_FILETYPE_PEM) != 1 ||
		    SSL_CTX_check_private_key(ctx) != 1) {
			tls_ssl_reason(why, sizeof why);
			snprintf(err, err_len, "redis_tls_key_file %s: %s", o->key_file, why);
			goto fail;
		}
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

/* A client SSL that checks Redis' certificate for server_name: an address
 * is matched against the certificate's IP entries, a name against its DNS
 * entries (and sent as SNI). */
static SSL *ssl_for(const struct rds_tls *t)
{
	SSL *ssl = SSL_new(t->ctx);
	if (!ssl)
		return NULL;
	unsigned char addr[sizeof(struct in6_addr)];
	bool is_ip = inet_pton(AF_INET, t->server_name, addr) == 1 ||
	             inet_pton(AF_INET6, t->server_name, addr) == 1;
	int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), t->server_name)
	               : SSL_set_tlsext_host_name(ssl, t->server_name) &&
	                     SSL_set1_host(ssl, t->server_name);
	if (ok != 1) {
		SSL_free(ssl);
		return NULL;
	}
	return ssl;
}

/* Why a TLS connection failed, in words: the certificate check's verdict
 * when that is what failed, else OpenSSL's first error. */
static void tls_failure(SSL *ssl, char *out, size_t len)
{
	long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
	if (v != X509_V_OK) {
		snprintf(out, len, "certificate verify failed: %s",
		         X509_verify_cert_error_string(v));
		ERR_clear_error();
		return;
	}
	tls_ssl_reason(out, len);
}

/* ---- tunnels ---------------------------------------------------------------------- */

static void tunnel_close(struct tunnel *tn)
{
	struct rds_tls *t = tn->t;
	if (tn->prev)
		tn->prev->next = tn->next;
	else
		t->tunnels = tn->next;
	if (tn->next)
		tn->next->prev = tn->prev;
	bufferevent_free(tn->local);
	bufferevent_free(tn->remote);
	free(tn);
}

static struct bufferevent *other_side(const struct tunnel *tn, const struct bufferevent *bev)
{
	return bev == tn->local ? tn->remote : tn->local;
}

static void read_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);

/* The destination drained below half the bound: its source reads again. */
static void drained_cb(struct bufferevent *to, void *arg)
{
	struct tunnel *tn = arg;
	bufferevent_setcb(to, read_cb, NULL, event_cb, tn);
	bufferevent_setwatermark(to, EV_WRITE, 0, 0);
	bufferevent_enable(other_side(tn, to), EV_READ);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	struct tunnel *tn = arg;
	struct bufferevent *to = other_side(tn, bev);
	struct evbuffer *out = bufferevent_get_output(to);
	evbuffer_add_buffer(out, bufferevent_get_input(bev));
	if (evbuffer_get_length(out) >= TUNNEL_MAX_BUFFERED) {
		bufferevent_disable(bev, EV_READ);
		bufferevent_setwatermark(to, EV_WRITE, TUNNEL_MAX_BUFFERED / 2,
		                         TUNNEL_MAX_BUFFERED);
		bufferevent_setcb(to, read_cb, drained_cb, event_cb, tn);
	}
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct tunnel *tn = arg;
	if (what & BEV_EVENT_CONNECTED) {
		int on = 1;
		evutil_socket_t fd = bufferevent_getfd(bev);
		/* a Redis that vanishes without a FIN is noticed as over TCP */
		if (fd >= 0)
			setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
		log_debug("redis tls connected host=%s port=%d", tn->t->host, tn->t->port);
		return;
	}
	if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)))
		return;
	if (bev == tn->remote && (what & BEV_EVENT_ERROR)) {
		char why[256] = "";
		int dns = bufferevent_socket_get_dns_error(bev);
		unsigned long e = bufferevent_get_openssl_error(bev);
		long v = SSL_get_verify_result(bufferevent_openssl_get_ssl(bev));
		if (dns)
			snprintf(why, sizeof why, "%s", evutil_gai_strerror(dns));
		else if (v != X509_V_OK)
			snprintf(why, sizeof why, "certificate verify failed: %s",
			         X509_verify_cert_error_string(v));
		else if (e)
			ERR_error_string_n(e, why, sizeof why);
		else
			snprintf(why, sizeof why, "%s",
			         evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		log_warn("redis tls connection failed host=%s port=%d err=\"%s\"", tn->t->host,
		         tn->t->port, why);
	}
	tunnel_close(tn);
}

/* Only gpumatchd itself may use the tunnel: the directory is 0700, and the
 * peer must be this very process. */
static bool peer_is_self(evutil_socket_t fd)
{
	struct ucred cred;
	socklen_t len = sizeof cred;
	return !getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) && cred.pid == getpid();
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
	struct rds_tls *t = arg;
	(void)l;
	(void)sa;
	(void)salen;
	if (!peer_is_self(fd)) {
		log_warn("redis tls: a connection from another process refused socket=%s", t->path);
		evutil_closesocket(fd);
		return;
	}
	struct tunnel *tn = calloc(1, sizeof *tn);
	SSL *ssl = ssl_for(t);
	struct bufferevent *local = bufferevent_socket_new(t->base, fd, BEV_OPT_CLOSE_ON_FREE);
	struct bufferevent *remote =
	    ssl ? bufferevent_openssl_socket_new(t->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
	                                         BEV_OPT_CLOSE_ON_FREE)
	        : NULL;
	if (!tn || !local || !remote) {
		log_error("out of memory in the redis tls tunnel");
		abort();
	}
	/* Redis may close without close_notify: that is an end, not an attack
	 * on the bytes already received */
	bufferevent_openssl_set_allow_dirty_shutdown(remote, 1);
	tn->t = t;
	tn->local = local;
	tn->remote = remote;
	tn->next = t->tunnels;
	if (t->tunnels)
		t->tunnels->prev = tn;
	t->tunnels = tn;
	bufferevent_setcb(local, read_cb, NULL, event_cb, tn);
	bufferevent_setcb(remote, read_cb, NULL, event_cb, tn);
	/* what hiredis sends before the handshake ends waits in remote's output */
	bufferevent_enable(local, EV_READ | EV_WRITE);
	bufferevent_enable(remote, EV_READ | EV_WRITE);
	if (bufferevent_socket_connect_hostname(remote, t->dns, AF_UNSPEC, t->host, t->port) < 0) {
		log_warn("redis tls connect failed host=%s port=%d", t->host, t->port);
		tunnel_close(tn);
	}
}

#define TUNNEL_DIR_PREFIX "gpumatchd-redis-"
#define STALE_AFTER_S     60 /* a directory this old with no listener is a dead gpumatchd's */

/* A gpumatchd killed without its exit path leaves its tunnel directory
 * behind. At start-up (before the loop runs) this one removes those of
 * its user that nobody listens on any more. One made in the last minute is
 * left alone: another gpumatchd may be between making it and listening. */
static void remove_stale_tunnel_dirs(const char *tmp)
{
	DIR *d = opendir(tmp);
	if (!d)
		return;
	uid_t me = geteuid();
	time_t now = time(NULL);
	struct dirent *e;
	while ((e = readdir(d))) {
		if (strncmp(e->d_name, TUNNEL_DIR_PREFIX, strlen(TUNNEL_DIR_PREFIX)))
			continue;
		char dir[512];
		struct sockaddr_un sun = { .sun_family = AF_UNIX };
		struct stat st;
		if ((size_t)snprintf(dir, sizeof dir, "%s/%s", tmp, e->d_name) >= sizeof dir ||
		    (size_t)snprintf(sun.sun_path, sizeof sun.sun_path, "%s/redis.sock", dir) >=
		        sizeof sun.sun_path ||
		    lstat(dir, &st) || !S_ISDIR(st.st_mode) || st.st_uid != me ||
		    now - st.st_mtime < STALE_AFTER_S)
			continue;
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			continue;
		int r = connect(fd, (struct sockaddr *)&sun, sizeof sun);
		int why = errno;
		close(fd);
		if (!r || (why != ECONNREFUSED && why != ENOENT))
			continue; /* a live gpumatchd's, or not ours to judge */
		unlink(sun.sun_path);
		if (!rmdir(dir))
			log_info("removed a stale redis tls tunnel directory dir=%s", dir);
	}
	closedir(d);
}

struct rds_tls *rds_tls_new(struct event_base *base, const struct rds_tls_opts *o, char *err,
                            size_t err_len)
{
	if (!base || !o->host || !*o->host || o->port <= 0 || o->port > 65535) {
		snprintf(err, err_len, "redis_host and redis_port must name Redis' TLS port");
		return NULL;
	}
	SSL_CTX *ctx = ctx_build(o, err, err_len);
	if (!ctx)
		return NULL;
	struct rds_tls *t = calloc(1, sizeof *t);
	const char *name = o->server_name && *o->server_name ? o->server_name : o->host;
	if (!t || !(t->host = strdup(o->host)) || !(t->server_name = strdup(name))) {
		log_error("out of memory in rds_tls_new");
		abort();
	}
	t->base = base;
	t->ctx = ctx;
	t->port = o->port;
	/* numeric hosts resolve at once; names through evdns, off the loop */
	t->dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
	if (!t->dns)
		t->dns = evdns_base_new(base, 0);
	const char *tmp = getenv("TMPDIR");
	if (!tmp || !*tmp)
		tmp = "/tmp";
	remove_stale_tunnel_dirs(tmp);
	snprintf(t->dir, sizeof t->dir, "%s/" TUNNEL_DIR_PREFIX "XXXXXX", tmp);
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	if (!mkdtemp(t->dir) ||
	    (size_t)snprintf(t->path, sizeof t->path, "%s/redis.sock", t->dir) >= sizeof t->path) {
		snprintf(err, err_len,
		         "redis_tls: cannot make a private socket directory under %s: %s", tmp,
		         strerror(errno));
		t->dir[0] = '\0';
		rds_tls_free(t);
		return NULL;
	}
	memcpy(sun.sun_path, t->path, strlen(t->path) + 1);
	t->lis = evconnlistener_new_bind(base, accept_cb, t,
	                                 LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 16,
	                                 (struct sockaddr *)&sun, sizeof sun);
	if (!t->lis || !t->dns) {
		snprintf(err, err_len, "redis_tls: cannot listen on %s: %s", t->path,
		         strerror(errno));
		rds_tls_free(t);
		return NULL;
	}
	return t;
}

const char *rds_tls_socket_path(const struct rds_tls *t)
{
	return t->path;
}

void rds_tls_free(struct rds_tls *t)
{
	if (!t)
		return;
	while (t->tunnels)
		tunnel_close(t->tunnels);
	if (t->lis)
		evconnlistener_free(t->lis);
	if (t->path[0])
		unlink(t->path);
	if (t->dir[0])
		rmdir(t->dir);
	if (t->dns)
		evdns_base_free(t->dns, 0);
	SSL_CTX_free(t->ctx);
	free(t->host);
	free(t->server_name);
	free(t);
}

/* ---- start-up check (blocking) ---------------------------------------------------- */

/* A TCP connection to host:port within CHECK_TIMEOUT_MS, with send and
 * receive timeouts of the same; -1 if none. */
static int connect_blocking(const char *host, int port)
{
	char ps[16];
	snprintf(ps, sizeof ps, "%d", port);
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL;
	if (getaddrinfo(host, ps, &hints, &res))
		return -1;
	int fd = -1;
	for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0)
			continue;
		int soerr = 0;
		socklen_t sl = sizeof soerr;
		struct pollfd pf = { fd, POLLOUT, 0 };
		if ((connect(fd, ai->ai_addr, ai->ai_addrlen) && errno != EINPROGRESS) ||
		    poll(&pf, 1, CHECK_TIMEOUT_MS) != 1 ||
		    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) || soerr) {
			close(fd);
			fd = -1;
		}
	}
	freeaddrinfo(res);
	if (fd < 0)
		return -1;
	struct timeval tv = { CHECK_TIMEOUT_MS / 1000, 0 };
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	return fd;
}

/* Sends one command and reads its reply; NULL with why on failure. */
static redisReply *exchange(SSL *ssl, int argc, const char **argv, char *why, size_t why_len)
{
	char *cmd = NULL;
	int n = redisFormatCommandArgv(&cmd, argc, argv, NULL);
	if (n < 0 || SSL_write(ssl, cmd, n) != n) {
		free(cmd);
		tls_failure(ssl, why, why_len);
		return NULL;
	}
	free(cmd);
	redisReader *rd = redisReaderCreate();
	void *reply = NULL;
	char buf[4096];
	while (rd && !reply) {
		int got = SSL_read(ssl, buf, sizeof buf);
		if (got <= 0) {
			tls_failure(ssl, why, why_len);
			break;
		}
		if (redisReaderFeed(rd, buf, (size_t)got) != REDIS_OK ||
		    redisReaderGetReply(rd, &reply) != REDIS_OK) {
			snprintf(why, why_len, "not a Redis reply");
			break;
		}
	}
	if (rd)
		redisReaderFree(rd);
	return reply;
}

int rds_tls_check(const struct rds_tls *t, const char *password, char *err, size_t err_len)
{
	int fd = connect_blocking(t->host, t->port);
	if (fd < 0) {
		log_warn("redis not reachable at start-up host=%s port=%d tls=true", t->host,
		         t->port);
		return 0;
	}
	char why[256] = "";
	int rc = 0;
	SSL *ssl = ssl_for(t);
	if (!ssl || SSL_set_fd(ssl, fd) != 1) {
		snprintf(err, err_len, "redis_tls: out of memory");
		rc = -1;
	} else if (ERR_clear_error(), SSL_connect(ssl) != 1) {
		tls_failure(ssl, why, sizeof why);
		snprintf(err, err_len,
		         "redis at %s:%d: TLS handshake failed: %s (check redis_tls_ca_file, "
		         "redis_tls_server_name, redis_tls_cert_file)",
		         t->host, t->port, why);
		rc = -1;
	} else {
		redisReply *rep = NULL;
		if (password && *password) {
			const char *argv[2] = { "AUTH", password };
			rep = exchange(ssl, 2, argv, why, sizeof why);
			if (rep && rep->type == REDIS_REPLY_ERROR) {
				snprintf(err, err_len,
				         "redis at %s:%d refused the password in "
				         "redis_password_file: %s",
				         t->host, t->port, rep->str);
				rc = -1;
			}
		}
		if (!rc && (!password || !*password || rep)) {
			if (rep)
				freeReplyObject(rep);
			const char *argv[1] = { "PING" };
			rep = exchange(ssl, 1, argv, why, sizeof why);
			if (rep && rep->type == REDIS_REPLY_ERROR) {
				bool noauth = !strncmp(rep->str, "NOAUTH", 6);
				snprintf(err, err_len, "redis at %s:%d refused PING: %s%s", t->host,
				         t->port, rep->str,
				         noauth
				             ? " (it requires a password: set redis_password_file)"
				             : "");
				rc = -1;
			}
		}
		if (!rc && !rep) {
			/* TLS 1.3 sends a refused client certificate's alert after
			 * the handshake: it shows on the first read */
			snprintf(err, err_len,
			         "redis at %s:%d ended the TLS connection: %s (does it require a "
			         "client certificate? redis_tls_cert_file, redis_tls_key_file)",
			         t->host, t->port, why);
			rc = -1;
		}
		if (rep)
			freeReplyObject(rep);
	}
	if (ssl)
		SSL_free(ssl);
	close(fd);
	return rc;
}
