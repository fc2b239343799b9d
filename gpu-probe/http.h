/* http.h — gpu-probe's blocking Connect client: one unary call per
 * connection, binary protobuf bodies, HTTP/1.1 without TLS (put a TLS
 * terminator in front of gpumatchd for remote probes). */
#ifndef GPU_PROBE_HTTP_H
#define GPU_PROBE_HTTP_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

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
