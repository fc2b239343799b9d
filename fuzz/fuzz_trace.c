/* fuzz_trace.c — the simulator's trace readers on any input: node lists
 * and job lists (MSR ITP CSV, Alibaba CSV, gpumatch CSV), and throughput
 * tables (Gavel CSV or JSON), chosen by the first byte. */
#include <stdint.h>

#include "fuzz_util.h"
#include "trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	static const char *const suffix[] = { ".csv", ".json", ".txt" };
	unsigned which = data[0] % 9;
	const char *path = fuzz_tmp_file(data + 1, size - 1, suffix[which % 3]);
	if (!path)
		return 0;
	char err[512];
	switch (which / 3) {
	case 0: {
		struct trace_fleet f = { 0 };
		if (!trace_read_nodes(path, &f, err, sizeof err))
			trace_fleet_free(&f);
		break;
	}
	case 1: {
		struct trace_jobs j = { 0 };
		if (!trace_read_jobs(path, &j, err, sizeof err))
			trace_jobs_free(&j);
		break;
	}
	default: {
		struct trace_tputs t = { 0 };
		if (!trace_read_tputs(path, &t, err, sizeof err))
			trace_tputs_free(&t);
		break;
	}
	}
	/* the in-memory parsers too */
	char *text = fuzz_cstr(data + 1, size - 1);
	struct trace_fleet f = { 0 };
	if (!trace_parse_nodes("fuzz", text, &f, err, sizeof err))
		trace_fleet_free(&f);
	free(text);
	text = fuzz_cstr(data + 1, size - 1);
	struct trace_jobs j = { 0 };
	if (!trace_parse_jobs("fuzz", text, &j, err, sizeof err))
		trace_jobs_free(&j);
	free(text);
	return 0;
}
