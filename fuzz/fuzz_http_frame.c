/* fuzz_http_frame.c — the request framing checker (server/http_frame.c)
 * fed a connection's bytes in the pieces the input's first byte chooses,
 * as reads would deliver them. Checks that a split never changes the
 * outcome and that the parser never reads past what it is given. */
#include <stdint.h>
#include <string.h>

#include "http_frame.h"

struct outcome {
	unsigned starts, heads, dones;
	int err_status;
};

static void run(const uint8_t *data, size_t size, size_t piece, struct outcome *o)
{
	static struct http_frame f;
	hf_init(&f, 32 * 1024, 64 * 1024);
	memset(o, 0, sizeof *o);
	size_t off = 0;
	while (off < size) {
		size_t n = size - off < piece ? size - off : piece;
		size_t used = 0;
		while (used < n) {
			unsigned ev = 0;
			size_t k = hf_feed(&f, data + off + used, n - used, &ev);
			if (k > n - used)
				__builtin_trap();
			used += k;
			o->starts += !!(ev & HF_EV_START);
			o->heads += !!(ev & HF_EV_HEAD);
			o->dones += !!(ev & HF_EV_DONE);
			if (ev & HF_EV_ERROR) {
				o->err_status = f.err_status;
				if (!f.err_code || !f.err_msg[0])
					__builtin_trap();
				return;
			}
			if (!k && !ev)
				__builtin_trap(); /* no progress */
		}
		off += n;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t piece = (size_t)(data[0] % 17) + 1;
	struct outcome whole, pieces;
	run(data + 1, size - 1, size, &whole);
	run(data + 1, size - 1, piece, &pieces);
	if (memcmp(&whole, &pieces, sizeof whole))
		__builtin_trap();
	return 0;
}
