/* fuzz_config.c — gpumatchd's configuration: the input is a config file
 * (key = value lines) read through cfg_load's --config path, and, split at
 * its first NUL, a few --key=value flags after it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, 0, size);
	size_t flen = nul ? (size_t)(nul - data) : size;
	const char *path = fuzz_tmp_file(data, flen, ".conf");
	if (!path)
		return 0;
	char cfgarg[160];
	snprintf(cfgarg, sizeof cfgarg, "--config=%s", path);
	char *argv[8] = { "gpumatchd", cfgarg };
	int argc = 2;
	char *flags = nul ? fuzz_cstr(nul + 1, size - flen - 1) : NULL;
	if (flags) {
		for (char *p = flags, *save = NULL, *tok;
		     argc < 8 && (tok = strtok_r(p, "\n", &save)); p = NULL)
			argv[argc++] = tok;
	}
	static struct cfg c;
	char err[512];
	if (!cfg_load(&c, argc, argv, 1, err, sizeof err)) {
		if (c.listen_port < 0 || c.listen_port > 65535)
			__builtin_trap(); /* a loaded config is within its ranges */
	}
	free(flags);
	return 0;
}
