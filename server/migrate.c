/* migrate.c — numbered forward-only SQL migrations (migrations/NNNN_*.sql),
 * applied by `gpumatchd migrate` and checked at start-up. Runs before the
 * event loop exists, so plain blocking libpq is fine here. */
#include "app.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef GPUMATCH_SOURCE_ROOT
#define GPUMATCH_SOURCE_ROOT "."
#endif

/* The installed share directory, <dir of this binary>/../share/gpumatch,
 * when it holds migrations/ (so an installed gpumatchd, under any prefix or
 * DESTDIR, reads its own files); NULL for a binary in a build tree. */
static const char *installed_share(void)
{
	static char dir[PATH_MAX];
	static int known; /* 0 unknown, 1 installed, -1 build tree */
	if (known)
		return known > 0 ? dir : NULL;
	known = -1;
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	if (n <= 0)
		return NULL;
	exe[n] = '\0';
	char *slash = strrchr(exe, '/');
	if (!slash)
		return NULL;
	*slash = '\0';
	char probe[PATH_MAX + 64];
	snprintf(probe, sizeof probe, "%s/../share/gpumatch/migrations", exe);
	struct stat st;
	if (stat(probe, &st) || !S_ISDIR(st.st_mode))
		return NULL;
	snprintf(dir, sizeof dir, "%.*s/../share/gpumatch", (int)(sizeof dir - 32), exe);
	known = 1;
	return dir;
}

const char *share_path(const char *name, char *buf, size_t len)
{
	const char *inst = installed_share();
	if (inst)
		snprintf(buf, len, "%s/%s", inst, name);
	else if (strcmp(name, "migrations") && strcmp(name, "traces"))
		snprintf(buf, len, "%s/data/%s", GPUMATCH_SOURCE_ROOT, name); /* data/ files */
	else
		snprintf(buf, len, "%s/%s", GPUMATCH_SOURCE_ROOT, name);
	return buf;
}

const char *migrate_default_dir(void)
{
	static char dir[PATH_MAX];
	const char *d = getenv("GPUMATCH_MIGRATIONS");
	return d && *d ? d : share_path("migrations", dir, sizeof dir);
}

struct mfile {
	int version;
	char name[256];
};

static int cmp_mfile(const void *a, const void *b)
{
	return ((const struct mfile *)a)->version - ((const struct mfile *)b)->version;
}

/* Lists NNNN_*.sql in dir, sorted; returns the count or -1. */
static int list_migrations(const char *dir, struct mfile *out, int max, char *err, size_t err_len)
{
	DIR *d = opendir(dir);
	if (!d) {
		snprintf(err, err_len, "migrations directory %s: %s", dir, strerror(errno));
		return -1;
	}
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		size_t len = strlen(e->d_name);
		int v;
		if (len < 9 || len >= sizeof out[0].name || strcmp(e->d_name + len - 4, ".sql") ||
		    sscanf(e->d_name, "%4d_", &v) != 1)
			continue;
		if (n == max) {
			closedir(d);
			snprintf(err, err_len, "more than %d migrations", max);
			return -1;
		}
		out[n].version = v;
		memcpy(out[n].name, e->d_name, len + 1);
		n++;
	}
	closedir(d);
	qsort(out, (size_t)n, sizeof *out, cmp_mfile);
	for (int i = 1; i < n; i++) {
		if (out[i].version == out[i - 1].version) {
			snprintf(err, err_len, "two migrations numbered %04d", out[i].version);
			return -1;
		}
	}
	return n;
}

static char *read_file(const char *path, char *err, size_t err_len)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		snprintf(err, err_len, "%s: %s", path, strerror(errno));
		return NULL;
	}
	fseek(f, 0, SEEK_END);
	long len = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *buf = len >= 0 ? malloc((size_t)len + 1) : NULL;
	if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) {
		free(buf);
		fclose(f);
		snprintf(err, err_len, "%s: read failed", path);
		return NULL;
	}
	buf[len] = '\0';
	fclose(f);
	return buf;
}

/* CREATE ... IF NOT EXISTS and friends send NOTICEs: not news. */
static void quiet_notice(void *arg, const char *message)
{
	(void)arg;
	(void)message;
}

static PGconn *connect_db(const char *conninfo, char *err, size_t err_len)
{
	PGconn *c = PQconnectdb(conninfo);
	PQsetNoticeProcessor(c, quiet_notice, NULL);
	if (PQstatus(c) != CONNECTION_OK) {
		snprintf(err, err_len, "postgres: %s", PQerrorMessage(c));
		PQfinish(c);
		return NULL;
	}
	return c;
}

static bool exec_ok(PGconn *c, const char *sql, char *err, size_t err_len)
{
	PGresult *r = PQexec(c, sql);
	ExecStatusType st = PQresultStatus(r);
	bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
	if (!ok)
		snprintf(err, err_len, "%s", PQresultErrorMessage(r));
	PQclear(r);
	return ok;
}

static int current_version(PGconn *c, char *err, size_t err_len)
{
	if (!exec_ok(c,
	             "CREATE TABLE IF NOT EXISTS schema_migrations ("
	             " version integer PRIMARY KEY, name text NOT NULL,"
	             " applied_at timestamptz NOT NULL DEFAULT now())",
	             err, err_len))
		return -1;
	PGresult *r = PQexec(c, "SELECT coalesce(max(version), 0) FROM schema_migrations");
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		snprintf(err, err_len, "%s", PQresultErrorMessage(r));
		PQclear(r);
		return -1;
	}
	int v = atoi(PQgetvalue(r, 0, 0));
	PQclear(r);
	return v;
}

/* The versions recorded in schema_migrations (the table must exist), or
 * NULL with err. The caller clears the result. */
static PGresult *applied_versions(PGconn *c, char *err, size_t err_len)
{
	PGresult *r = PQexec(c, "SELECT version FROM schema_migrations");
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		snprintf(err, err_len, "%s", PQresultErrorMessage(r));
		PQclear(r);
		return NULL;
	}
	return r;
}

static bool is_applied(const PGresult *done, int version)
{
	for (int r = 0; r < PQntuples(done); r++)
		if (atoi(PQgetvalue(done, r, 0)) == version)
			return true;
	return false;
}

int migrate_current(const char *conninfo, char *err, size_t err_len)
{
	PGconn *c = connect_db(conninfo, err, err_len);
	if (!c)
		return -1;
	int v = current_version(c, err, err_len);
	PQfinish(c);
	return v;
}

int migrate_missing(const char *conninfo, const char *dir, int upto, char *missing,
                    size_t missing_len, char *err, size_t err_len)
{
	struct mfile files[512];
	int n = list_migrations(dir, files, 512, err, err_len);
	if (n < 0)
		return -1;
	PGconn *c = connect_db(conninfo, err, err_len);
	if (!c)
		return -1;
	PGresult *done =
	    current_version(c, err, err_len) < 0 ? NULL : applied_versions(c, err, err_len);
	int rc = done ? 0 : -1;
	for (int i = 0; !rc && i < n && files[i].version <= upto; i++) {
		if (!is_applied(done, files[i].version)) {
			snprintf(missing, missing_len, "%s", files[i].name);
			rc = 1;
		}
	}
	PQclear(done);
	PQfinish(c);
	return rc;
}

int migrate_apply(const char *conninfo, const char *dir, bool quiet, char *err, size_t err_len)
{
	struct mfile files[512];
	int n = list_migrations(dir, files, 512, err, err_len);
	if (n < 0)
		return -1;
	PGconn *c = connect_db(conninfo, err, err_len);
	if (!c)
		return -1;
	/* one migrator at a time, even with several replicas starting */
	int v = exec_ok(c, "SELECT pg_advisory_lock(7070001)", err, err_len)
	            ? current_version(c, err, err_len)
	            : -1;
	/* Every file not yet recorded is applied, in order, also one numbered
	 * below the newest applied (a migration from a branch that landed
	 * later): the record is the set of versions, not just the highest. */
	PGresult *done = v >= 0 ? applied_versions(c, err, err_len) : NULL;
	if (!done)
		v = -1;
	for (int i = 0; v >= 0 && i < n; i++) {
		if (is_applied(done, files[i].version))
			continue;
		char path[1024];
		snprintf(path, sizeof path, "%s/%s", dir, files[i].name);
		char *sql = read_file(path, err, err_len);
		if (!sql) {
			v = -1;
			break;
		}
		char ins[512];
		snprintf(ins, sizeof ins,
		         "INSERT INTO schema_migrations (version, name) VALUES (%d, '%s')",
		         files[i].version, files[i].name);
		bool ok = exec_ok(c, "BEGIN", err, err_len) && exec_ok(c, sql, err, err_len) &&
		          exec_ok(c, ins, err, err_len) && exec_ok(c, "COMMIT", err, err_len);
		free(sql);
		if (!ok) {
			char why[512];
			snprintf(why, sizeof why, "%s", err);
			snprintf(err, err_len, "migration %s failed: %s", files[i].name, why);
			PGresult *r = PQexec(c, "ROLLBACK");
			PQclear(r);
			v = -1;
			break;
		}
		if (!quiet)
			fprintf(stderr, "migrate: applied %s\n", files[i].name);
		if (files[i].version > v)
			v = files[i].version;
	}
	PQclear(done);
	PQfinish(c);
	return v;
}
