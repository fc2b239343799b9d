/* http.h — gpu-probe's blocking Connect client (libcurl): one unary call
 * per connection, binary protobuf bodies, HTTP/1.1 over http:// or
 * https:// (server certificate and host name verified). */
#ifndef GPU_PROBE_HTTP_H
#define GPU_PROBE_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

/* TLS settings for every later call: ca_file (PEM; NULL = the system
 * store), cert_file/key_file (PEM client certificate; NULL = none). The
 * strings must outlive the calls. */
void http_tls_setup(const char *ca_file, const char *cert_file, const char *key_file);

/* Whether the last failed call failed because the server's certificate
 * could not be verified (unknown CA, expired, wrong host) or TLS could not
 * be negotiated. */
bool http_last_tls_error(void);

/* POSTs req to URL (e.g. "http://127.0.0.1:7070") + "/gpumatch.v1." +
 * method ("NodeService/RequestChallenge") with the bearer token. On HTTP
 * 200 returns the reply unpacked as out_desc (the caller frees it with
 * protobuf_c_message_free_unpacked). Otherwise returns NULL with err
 * holding the Connect error ("failed_precondition: ...") or the transport
 * failure. timeout_s bounds each send and receive. */
ProtobufCMessage *http_call(const char *url, const char *token, const char *method,
                            const ProtobufCMessage *req, const ProtobufCMessageDescriptor *out_desc,
                            int timeout_s, char *err, size_t err_len);

#endif
