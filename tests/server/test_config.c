/* test_config.c — the configuration helpers that guard secrets: conninfo
 * redaction (key=value and URI forms), the secret-file reader's mode check,
 * and the loopback test behind the plaintext-listener refusal. Table-driven,
 * one row per behaviour. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "tls.h"

static int failures;

#define CHECK(cond, ...)                                                \
	do {                                                            \
		if (!(cond)) {                                          \
			fprintf(stderr, "%s:%d: ", __FILE__, __LINE__); \
			fprintf(stderr, __VA_ARGS__);                   \
			fputc('\n', stderr);                            \
			failures++;                                     \
		}                                                       \
	} while (0)

static void test_redact(void)
{
	static const struct {
		const char *in, *want;
	} rows[] = {
		{ "dbname=gpumatch", "dbname=gpumatch" },
		{ "host=db password=s3cret user=gm", "host=db password=*** user=gm" },
		{ "password = 's3 cr\\'et' dbname=x", "password = *** dbname=x" },
		{ "passwordx=keep", "passwordx=keep" },
		{ "postgres://gm:s3cret@db:5432/gpumatch", "postgres://gm:***@db:5432/gpumatch" },
		{ "postgresql://gm@db/gpumatch?password=s3cret&sslmode=require",
		  "postgresql://gm@db/gpumatch?password=***&sslmode=require" },
		{ "postgres://db/gpumatch", "postgres://db/gpumatch" },
		{ "", "" },
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		char out[256];
		cfg_redact_conninfo(rows[i].in, out, sizeof out);
		CHECK(!strcmp(out, rows[i].want), "redact(\"%s\") = \"%s\", want \"%s\"",
		      rows[i].in, out, rows[i].want);
		CHECK(!strstr(out, "s3"), "redact(\"%s\") leaks: \"%s\"", rows[i].in, out);
	}
	char tiny[8];
	cfg_redact_conninfo("password=s3cretvalue", tiny, sizeof tiny);
	CHECK(strlen(tiny) < sizeof tiny && !strstr(tiny, "s3"), "short buffer: \"%s\"", tiny);
}

static void test_secret_file(void)
{
	char path[] = "/tmp/gpumatch-test-secret-XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0, "mkstemp");
	if (fd < 0)
		return;
	CHECK(write(fd, "hunter2\n", 8) == 8, "write");
	close(fd);
	char out[64], err[512];
	CHECK(chmod(path, 0600) == 0, "chmod");
	CHECK(cfg_read_secret_file("redis_password_file", path, out, sizeof out, err, sizeof err) ==
	          0,
	      "0600 refused: %s", err);
	CHECK(!strcmp(out, "hunter2"), "read \"%s\"", out);
	CHECK(chmod(path, 0640) == 0, "chmod");
	CHECK(cfg_read_secret_file("redis_password_file", path, out, sizeof out, err, sizeof err) ==
	          -1,
	      "0640 accepted");
	CHECK(strstr(err, "redis_password_file") && strstr(err, "chmod 600") &&
	          !strstr(err, "hunter2"),
	      "err: %s", err);
	unlink(path);
	CHECK(cfg_read_secret_file("k", path, out, sizeof out, err, sizeof err) == -1,
	      "a missing file accepted");
}

static void test_loopback(void)
{
	static const struct {
		const char *host;
		bool want;
	} rows[] = {
		{ "127.0.0.1", true }, { "127.3.2.1", true },         { "::1", true },
		{ "localhost", true }, { "0.0.0.0", false },          { "::", false },
		{ "10.0.0.1", false }, { "gpumatch.example", false }, { "", false },
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
		CHECK(tls_host_is_loopback(rows[i].host) == rows[i].want, "loopback(\"%s\")",
		      rows[i].host);
}

int main(void)
{
	test_redact();
	test_secret_file();
	test_loopback();
	if (failures) {
		fprintf(stderr, "test_config: %d failures\n", failures);
		return 1;
	}
	printf("test_config: ok\n");
	return 0;
}
