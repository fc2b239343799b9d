/* http.c — a blocking Connect unary client on libcurl: http:// or https://
 * (the server verified against --ca-file or the system store, its host name
 * checked), optional client certificate, one call per request. */
#include "http.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <curl/curl.h>

/* X509_V_ERR_* values (OpenSSL's, which libcurl passes through) */
#define V_UNABLE_TO_GET_ISSUER_CERT         2
#define V_CERT_NOT_YET_VALID                9
#define V_CERT_HAS_EXPIRED                  10
#define V_DEPTH_ZERO_SELF_SIGNED_CERT       18
#define V_SELF_SIGNED_CERT_IN_CHAIN         19
#define V_UNABLE_TO_GET_ISSUER_CERT_LOCALLY 20
#define V_UNABLE_TO_VERIFY_LEAF_SIGNATURE   21
#define V_HOSTNAME_MISMATCH                 62
#define V_IP_ADDRESS_MISMATCH               64

static struct {
	const char *ca_file, *cert_file, *key_file;
	bool tls_error;
} cfg;

void http_tls_setup(const char *ca_file, const char *cert_file, const char *key_file)
{
	cfg.ca_file = ca_file && *ca_file ? ca_file : NULL;
	cfg.cert_file = cert_file && *cert_file ? cert_file : NULL;
	cfg.key_file = key_file && *key_file ? key_file : NULL;
}

bool http_last_tls_error(void)
{
	return cfg.tls_error;
}

struct body {
	char *p;
	size_t len, cap;
	bool too_big;
};

static size_t write_cb(char *data, size_t size, size_t n, void *arg)
{
	struct body *b = arg;
	size_t add = size * n;
	if (b->len + add > (64u << 20)) {
		b->too_big = true;
		return 0;
	}
	if (b->len + add + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 65536;
		while (cap < b->len + add + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p)
			return 0;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, add);
	b->len += add;
	b->p[b->len] = '\0';
	return add;
}

/* A certificate failure in words: unknown CA, expired, wrong host. */
static void tls_reason(CURL *h, CURLcode rc, const char *curl_err, const char *url, char *err,
                       size_t err_len)
{
	long vr = 0;
	curl_easy_getinfo(h, CURLINFO_SSL_VERIFYRESULT, &vr);
	const char *why;
	switch (vr) {
	case V_CERT_HAS_EXPIRED:
		why = "the server's certificate has expired";
		break;
	case V_CERT_NOT_YET_VALID:
		why = "the server's certificate is not yet valid";
		break;
	case V_HOSTNAME_MISMATCH:
	case V_IP_ADDRESS_MISMATCH:
		why = "wrong host: the server's certificate is not for this host";
		break;
	case V_UNABLE_TO_GET_ISSUER_CERT:
	case V_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
	case V_SELF_SIGNED_CERT_IN_CHAIN:
	case V_DEPTH_ZERO_SELF_SIGNED_CERT:
	case V_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
		why = cfg.ca_file ? "unknown CA: the server's certificate is not signed by a CA in "
		                    "--ca-file"
		                  : "unknown CA: the server's certificate is not signed by a CA in "
		                    "the system store (set --ca-file)";
		break;
	default:
		if (strstr(curl_err, "subject name") || strstr(curl_err, "does not match"))
			why = "wrong host: the server's certificate is not for this host";
		else if (strstr(curl_err, "wrong version number"))
			why = "the server does not speak TLS (try http://)";
		else
			why = *curl_err ? curl_err : curl_easy_strerror(rc);
	}
	snprintf(err, err_len, "TLS: cannot verify gpumatchd at %s: %s", url, why);
}

ProtobufCMessage *http_call(const char *url, const char *token, const char *method,
                            const ProtobufCMessage *req, const ProtobufCMessageDescriptor *out_desc,
                            int timeout_s, char *err, size_t err_len)
{
	cfg.tls_error = false;
	bool tls = !strncmp(url, "https://", 8);
	if (!tls && strncmp(url, "http://", 7)) {
		snprintf(err, err_len,
		         "--server: expected http://HOST[:PORT] or https://HOST[:PORT], "
		         "got \"%s\"",
		         url);
		return NULL;
	}
	if (cfg.key_file || cfg.cert_file) {
		struct stat st;
		const char *key = cfg.key_file ? cfg.key_file : cfg.cert_file;
		if (!stat(key, &st) && (st.st_mode & 077)) {
			snprintf(
			    err, err_len,
			    "--client-key %s: mode %03o lets group or others read it; chmod 600 it",
			    key, (unsigned)(st.st_mode & 0777));
			return NULL;
		}
	}
	size_t ul = strlen(url);
	while (ul && url[ul - 1] == '/')
		ul--;
	char full[1200];
	snprintf(full, sizeof full, "%.*s/gpumatch.v1.%s", (int)ul, url, method);
	size_t blen = protobuf_c_message_get_packed_size(req);
	uint8_t *payload = malloc(blen ? blen : 1);
	size_t al = strlen(token) + 32;
	char *authz = malloc(al);
	CURL *h = curl_easy_init();
	struct curl_slist *hdr = NULL;
	struct body b = { 0 };
	ProtobufCMessage *out = NULL;
	char cerr[CURL_ERROR_SIZE] = "";
	if (!payload || !authz || !h) {
		snprintf(err, err_len, "out of memory");
		goto out;
	}
	protobuf_c_message_pack(req, payload);
	snprintf(authz, al, "Authorization: Bearer %s", token);
	hdr = curl_slist_append(hdr, "Content-Type: application/proto");
	hdr = curl_slist_append(hdr, "Connect-Protocol-Version: 1");
	hdr = curl_slist_append(hdr, authz);
	hdr = curl_slist_append(hdr, "Expect:");
	curl_easy_setopt(h, CURLOPT_URL, full);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_POST, 1L);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, (const char *)payload);
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
	curl_easy_setopt(h, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
	curl_easy_setopt(h, CURLOPT_TIMEOUT, (long)timeout_s);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
	curl_easy_setopt(h, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	if (cfg.ca_file)
		curl_easy_setopt(h, CURLOPT_CAINFO, cfg.ca_file);
	if (cfg.cert_file) {
		curl_easy_setopt(h, CURLOPT_SSLCERT, cfg.cert_file);
		curl_easy_setopt(h, CURLOPT_SSLKEY, cfg.key_file ? cfg.key_file : cfg.cert_file);
	}
	CURLcode rc = curl_easy_perform(h);
	if (rc != CURLE_OK) {
		if (rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE ||
		    rc == CURLE_SSL_CONNECT_ERROR) {
			cfg.tls_error = rc != CURLE_SSL_CACERT_BADFILE;
			tls_reason(h, rc, cerr, url, err, err_len);
		} else if (b.too_big) {
			snprintf(err, err_len, "reply from %s larger than 64 MiB", url);
		} else {
			snprintf(err, err_len, "%s: %s", url,
			         *cerr ? cerr : curl_easy_strerror(rc));
		}
		goto out;
	}
	long status = 0;
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	if (status != 200) {
		/* Connect errors are JSON: {"code":"...","message":"..."} */
		snprintf(err, err_len, "HTTP %ld: %.*s", status, (int)(b.len > 900 ? 900 : b.len),
		         b.p ? b.p : "");
		goto out;
	}
	out = protobuf_c_message_unpack(out_desc, NULL, b.len, (const uint8_t *)(b.p ? b.p : ""));
	if (!out)
		snprintf(err, err_len, "the reply to %s could not be decoded", method);
out:
	if (h)
		curl_easy_cleanup(h);
	curl_slist_free_all(hdr);
	if (authz) {
		memset(authz, 0, al);
		free(authz);
	}
	free(payload);
	free(b.p);
	return out;
}
