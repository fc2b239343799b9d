/* tls.c — gpumatchd's TLS listener side: one OpenSSL server context at a
 * time (swapped whole on SIGHUP; each connection keeps a reference to the
 * context it was accepted with), handed to evhttp as the bufferevent of
 * every accepted connection. */
#include "tls.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "log.h"

/* TLS 1.2 suites with forward secrecy and AEAD only (Mozilla's
 * "intermediate" list); TLS 1.3 keeps OpenSSL's defaults, all AEAD. */
#define TLS12_CIPHERS                                                \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:" \
	"DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384"

struct tls_server {
	SSL_CTX *ctx; /* the context new connections get */
	bool client_certs;
};

void tls_ssl_reason(char *out, size_t len)
{
	unsigned long e = ERR_get_error();
	if (!e)
		snprintf(out, len, "unknown error");
	else
		ERR_error_string_n(e, out, len);
	ERR_clear_error();
}

/* Only http/1.1 is spoken; a client that offers ALPN without it is told
 * so in the handshake rather than later in garbled bytes. */
static int alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg)
{
	(void)ssl;
	(void)arg;
	static const unsigned char want[] = "\x08http/1.1";
	unsigned char *sel = NULL;
	if (SSL_select_next_proto(&sel, outlen, want, sizeof want - 1, in, inlen) !=
	    OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_ALERT_FATAL;
	*out = sel;
	return SSL_TLSEXT_ERR_OK;
}

static void warn_if_readable(const char *path)
{
	struct stat st;
	if (!stat(path, &st) && (st.st_mode & 077))
		log_warn("tls key file is readable by group or others file=%s mode=%03o", path,
		         (unsigned)(st.st_mode & 0777));
}

static SSL_CTX *ctx_build(const char *cert_file, const char *key_file, const char *ca_file,
                          char *err, size_t err_len)
{
	char why[256];
	if (!cert_file || !*cert_file || !key_file || !*key_file) {
		snprintf(err, err_len, "tls_cert_file and tls_key_file must both be set");
		return NULL;
	}
	ERR_clear_error();
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		tls_ssl_reason(why, sizeof why);
		snprintf(err, err_len, "tls: cannot make a context: %s", why);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
	if (!SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS)) {
		tls_ssl_reason(why, sizeof why);
		snprintf(err, err_len, "tls: cipher list: %s", why);
		goto fail;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
		tls_ssl_reason(why, sizeof why);
		snprintf(err, err_len, "tls_cert_file %s: %s", cert_file, why);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
		tls_ssl_reason(why, sizeof why);
		snprintf(err, err_len, "tls_key_file %s: %s", key_file, why);
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		tls_ssl_reason(why, sizeof why);
		snprintf(err, err_len, "tls_key_file %s does not match tls_cert_file %s: %s",
		         key_file, cert_file, why);
		goto fail;
	}
	warn_if_readable(key_file);
	SSL_CTX_set_alpn_select_cb(ctx, alpn_select_cb, NULL);
	static const unsigned char sid_ctx[] = "gpumatchd";
	SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof sid_ctx - 1);
	if (ca_file && *ca_file) {
		STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca_file);
		if (!names || SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
			if (names)
				sk_X509_NAME_pop_free(names, X509_NAME_free);
			tls_ssl_reason(why, sizeof why);
			snprintf(err, err_len, "tls_client_ca_file %s: %s", ca_file,
			         names ? why : "no certificate in it");
			goto fail;
		}
		SSL_CTX_set_client_CA_list(ctx, names);
		/* asked for, not required: tenants' CLIs have none; node RPCs
		 * check for one after the token is resolved */
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

struct tls_server *tls_server_new(const char *cert_file, const char *key_file,
                                  const char *client_ca_file, char *err, size_t err_len)
{
	SSL_CTX *ctx = ctx_build(cert_file, key_file, client_ca_file, err, err_len);
	if (!ctx)
		return NULL;
	struct tls_server *t = calloc(1, sizeof *t);
	if (!t) {
		SSL_CTX_free(ctx);
		snprintf(err, err_len, "out of memory");
		return NULL;
	}
	t->ctx = ctx;
	t->client_certs = client_ca_file && *client_ca_file;
	return t;
}

int tls_server_reload(struct tls_server *t, const char *cert_file, const char *key_file,
                      const char *client_ca_file, char *err, size_t err_len)
{
	SSL_CTX *ctx = ctx_build(cert_file, key_file, client_ca_file, err, err_len);
	if (!ctx)
		return -1;
	SSL_CTX_free(t->ctx); /* connections hold their own reference */
	t->ctx = ctx;
	t->client_certs = client_ca_file && *client_ca_file;
	return 0;
}

/* An answer's head and body are separate chains of the output buffer, and
 * bufferevent_openssl makes one TLS record (one write(2), one TCP segment)
 * of each chain: joined while small, an answer is one record. */
#define COALESCE_MAX 16384 /* a TLS record's largest payload */

static void coalesce_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	(void)arg;
	if (!info->n_added)
		return;
	size_t len = evbuffer_get_length(buf);
	if (len <= COALESCE_MAX && (size_t)evbuffer_get_contiguous_space(buf) < len)
		evbuffer_pullup(buf, -1);
}

struct bufferevent *tls_server_bev_cb(struct event_base *base, void *arg)
{
	struct tls_server *t = arg;
	SSL *ssl = SSL_new(t->ctx);
	/* CLOSE_ON_FREE: the bufferevent frees the SSL object with itself */
	struct bufferevent *bev =
	    ssl ? bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
	                                         BEV_OPT_CLOSE_ON_FREE)
	        : NULL;
	if (!bev || !evbuffer_add_cb(bufferevent_get_output(bev), coalesce_cb, NULL)) {
		/* NULL would make evhttp fall back to a plaintext bufferevent on
		 * the TLS port: out of memory is fatal instead */
		log_error("tls: out of memory for a connection");
		abort();
	}
	return bev;
}

bool tls_server_wants_client_certs(const struct tls_server *t)
{
	return t && t->client_certs;
}

int64_t tls_peer_operator(struct bufferevent *bev)
{
	SSL *ssl = bev ? bufferevent_openssl_get_ssl(bev) : NULL;
	if (!ssl)
		return 0;
	X509 *cert = SSL_get1_peer_certificate(ssl);
	if (!cert)
		return 0;
	int64_t id = -1;
	/* the handshake verified it against tls_client_ca_file; a certificate
	 * that failed there never gets this far */
	if (SSL_get_verify_result(ssl) == X509_V_OK) {
		char cn[128] = "";
		X509_NAME *subj = X509_get_subject_name(cert);
		int n = subj ? X509_NAME_get_text_by_NID(subj, NID_commonName, cn, sizeof cn) : -1;
		if (n > 9 && (size_t)n < sizeof cn && !strncmp(cn, "operator-", 9)) {
			char *end;
			unsigned long long v = strtoull(cn + 9, &end, 10);
			if (!*end && v > 0 && v < (1ULL << 62) && cn[9] != '0')
				id = (int64_t)v;
		}
	}
	X509_free(cert);
	return id;
}

void tls_server_free(struct tls_server *t)
{
	if (!t)
		return;
	SSL_CTX_free(t->ctx);
	free(t);
}

bool tls_host_is_loopback(const char *host)
{
	if (!host)
		return false;
	if (!strcmp(host, "localhost"))
		return true;
	unsigned char a[16];
	if (inet_pton(AF_INET, host, a) == 1)
		return a[0] == 127;
	if (inet_pton(AF_INET6, host, a) == 1) {
		static const unsigned char one[16] = { [15] = 1 };
		return !memcmp(a, one, 16);
	}
	return false;
}
