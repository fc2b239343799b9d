/* fuzz_util.h — what the fuzz targets share: inputs written to a private
 * temporary file for readers that take a path, and a NUL-terminated copy
 * for parsers that take a C string. */
#ifndef GPUMATCH_FUZZ_UTIL_H
#define GPUMATCH_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Writes data to gpumatch-fuzz-<pid><suffix> in /dev/shm (memory; /tmp
 * where there is none), reused per process, and returns its path (static
 * storage), or NULL. */
static inline const char *fuzz_tmp_file(const uint8_t *data, size_t size, const char *suffix)
{
	static char path[128];
	const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
	snprintf(path, sizeof path, "%s/gpumatch-fuzz-%d%s", dir, (int)getpid(), suffix);
	FILE *f = fopen(path, "wb");
	if (!f)
		return NULL;
	if (size && fwrite(data, 1, size, f) != size) {
		fclose(f);
		return NULL;
	}
	fclose(f);
	return path;
}

/* A malloc'd NUL-terminated copy of data (the caller frees it). */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	if (!s)
		abort();
	memcpy(s, data, size);
	s[size] = '\0';
	return s;
}

#endif
