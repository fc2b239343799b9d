/* jobspec.c — the container part of a job spec, checked at submit: the
 * image reference, env names, limits, network and volumes. A refused spec
 * names the field; nothing is stored. */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "service.h"

#define MIB              (1024LL * 1024)
#define MEMORY_MIN_BYTES (6 * MIB)                  /* below this no runtime starts */
#define MEMORY_MAX_BYTES (16LL * 1024 * 1024 * MIB) /* 16 TiB */
#define SHM_MIN_BYTES    (64 * 1024LL)
#define PIDS_MAX         4194304u
#define MAX_VOLUMES      16
#define MAX_ENV          256
#define MAX_PATH_BYTES   1024

static bool alnum_lower(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* One path component of a repository name: [a-z0-9]+ separated by ".",
 * "_", "__" or runs of "-" (the OCI distribution grammar). */
static bool valid_component(const char *s, size_t n)
{
	if (!n || !alnum_lower(s[0]) || !alnum_lower(s[n - 1]))
		return false;
	for (size_t i = 1; i < n; i++) {
		char c = s[i];
		if (alnum_lower(c))
			continue;
		if (c == '.' || c == '-')
			continue;
		if (c == '_')
			continue;
		return false;
	}
	for (size_t i = 1; i < n; i++)
		if ((s[i] == '.' && (s[i - 1] == '.' || s[i - 1] == '_' || s[i - 1] == '-')) ||
		    (s[i] == '_' && i >= 2 && s[i - 1] == '_' && s[i - 2] == '_') ||
		    (s[i] == '_' && (s[i - 1] == '.' || s[i - 1] == '-')))
			return false;
	return true;
}

/* A registry host: letters, digits, "-", "." and an optional ":port". */
static bool valid_host(const char *s, size_t n)
{
	const char *colon = memchr(s, ':', n);
	size_t hn = colon ? (size_t)(colon - s) : n;
	if (!hn || s[0] == '-' || s[0] == '.' || s[hn - 1] == '-' || s[hn - 1] == '.')
		return false;
	for (size_t i = 0; i < hn; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '.')
			return false;
	if (colon) {
		size_t pn = n - hn - 1;
		if (!pn || pn > 5)
			return false;
		for (size_t i = hn + 1; i < n; i++)
			if (!isdigit((unsigned char)s[i]))
				return false;
	}
	return true;
}

static int jobspec_image_check(const char *ref, char *why, size_t why_len)
{
	size_t n = strlen(ref);
	if (n > 255) {
		snprintf(why, why_len, "at most 255 bytes");
		return -1;
	}
	const char *at = strchr(ref, '@');
	size_t name_end = at ? (size_t)(at - ref) : n;
	if (at) {
		const char *d = at + 1;
		if (strncmp(d, "sha256:", 7) || strlen(d) != 7 + 64) {
			snprintf(why, why_len, "a digest must be sha256: and 64 hex digits");
			return -1;
		}
		for (const char *p = d + 7; *p; p++)
			if (!isxdigit((unsigned char)*p) || isupper((unsigned char)*p)) {
				snprintf(why, why_len,
				         "a digest must be sha256: and 64 lowercase hex "
				         "digits");
				return -1;
			}
	}
	/* the tag: after the last ':' that follows the last '/' */
	const char *slash = NULL;
	for (size_t i = 0; i < name_end; i++)
		if (ref[i] == '/')
			slash = ref + i;
	const char *tag =
	    memchr(slash ? slash : ref, ':', name_end - (size_t)((slash ? slash : ref) - ref));
	size_t repo_end = tag ? (size_t)(tag - ref) : name_end;
	if (tag) {
		size_t tn = name_end - repo_end - 1;
		if (!tn || tn > 128 || !(isalnum((unsigned char)tag[1]) || tag[1] == '_')) {
			snprintf(why, why_len,
			         "a tag is 1..128 of [A-Za-z0-9_.-], not starting with "
			         "'.' or '-'");
			return -1;
		}
		for (size_t i = 1; i <= tn; i++)
			if (!isalnum((unsigned char)tag[i]) && tag[i] != '_' && tag[i] != '.' &&
			    tag[i] != '-') {
				snprintf(why, why_len, "a tag is 1..128 of [A-Za-z0-9_.-]");
				return -1;
			}
	}
	if (!repo_end) {
		snprintf(why, why_len, "\"%s\" is not an OCI image reference: no repository name",
		         ref);
		return -1;
	}
	/* components; the first is a registry when it has '.', ':' or is localhost */
	size_t start = 0;
	bool first = true;
	while (start <= repo_end) {
		const char *e = memchr(ref + start, '/', repo_end - start);
		size_t end = e ? (size_t)(e - ref) : repo_end;
		const char *c = ref + start;
		size_t cn = end - start;
		bool is_host = first && e &&
		               (memchr(c, '.', cn) || memchr(c, ':', cn) ||
		                (cn == 9 && !memcmp(c, "localhost", 9)));
		if (is_host ? !valid_host(c, cn) : !valid_component(c, cn)) {
			snprintf(why, why_len,
			         "\"%s\" is not an OCI image reference: repository names are "
			         "lowercase [a-z0-9] parts joined by '.', '_', '__' or '-', "
			         "separated by '/', e.g. docker.io/library/busybox:1.36",
			         ref);
			return -1;
		}
		first = false;
		if (!e)
			break;
		start = end + 1;
	}
	return 0;
}

static bool valid_env_name(const char *s)
{
	if (!*s || strlen(s) > 256 || !(isalpha((unsigned char)*s) || *s == '_'))
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && *s != '_')
			return false;
	return true;
}

/* Set by the agent for every job: a spec may not name them. */
static bool reserved_env(const char *s)
{
	return !strncmp(s, "GPUMATCH_", 9) || !strcmp(s, "CUDA_VISIBLE_DEVICES") ||
	       !strcmp(s, "NVIDIA_VISIBLE_DEVICES") || !strcmp(s, "NVIDIA_DRIVER_CAPABILITIES");
}

/* Absolute, no "." or ".." parts, no "//", no trailing "/" (except "/"). */
static bool clean_abs_path(const char *p)
{
	size_t n = strlen(p);
	if (!n || n > MAX_PATH_BYTES || p[0] != '/')
		return false;
	if (n > 1 && p[n - 1] == '/')
		return false;
	if (strstr(p, "//") || strstr(p, "/./") || strstr(p, "/../"))
		return false;
	if ((n >= 2 && !strcmp(p + n - 2, "/.")) || (n >= 3 && !strcmp(p + n - 3, "/..")))
		return false;
	for (const char *q = p; *q; q++)
		if ((unsigned char)*q < 0x20 || *q == ',' || *q == ':')
			return false;
	return true;
}

/* path is prefix or under it (whole components). */
static bool under(const char *path, const char *prefix, size_t plen)
{
	if (plen == 1 && prefix[0] == '/')
		return true;
	return !strncmp(path, prefix, plen) && (path[plen] == '\0' || path[plen] == '/');
}

static bool allowed_host_path(const char *path, const char *list)
{
	const char *p = list;
	while (*p) {
		while (*p == ',' || *p == ' ')
			p++;
		const char *e = p;
		while (*e && *e != ',')
			e++;
		size_t n = (size_t)(e - p);
		while (n > 1 && (p[n - 1] == ' ' || p[n - 1] == '/'))
			n--;
		if (n && p[0] == '/' && under(path, p, n))
			return true;
		p = e;
	}
	return false;
}

#define FAIL(f, ...)                                 \
	do {                                         \
		snprintf(field, field_len, "%s", f); \
		snprintf(msg, msg_len, __VA_ARGS__); \
		return -1;                           \
	} while (0)

int jobspec_check(const Gpumatch__V1__JobSpec *s, const struct cfg *c, char *field,
                  size_t field_len, char *msg, size_t msg_len)
{
	bool image = s->image && *s->image;
	if (image && jobspec_image_check(s->image, msg, msg_len)) {
		snprintf(field, field_len, "spec.image");
		return -1;
	}
	if (s->n_env > MAX_ENV)
		FAIL("spec.env", "at most %d variables, got %zu", MAX_ENV, s->n_env);
	for (size_t i = 0; i < s->n_env; i++) {
		const char *k = s->env[i]->key;
		if (!valid_env_name(k)) {
			char f[300];
			snprintf(f, sizeof f, "spec.env[%.256s]", k);
			FAIL(f, "not a valid variable name: letters, digits and '_', not starting "
			        "with a digit");
		}
		if (reserved_env(k)) {
			char f[300];
			snprintf(f, sizeof f, "spec.env[%.256s]", k);
			FAIL(f, "set by the agent for every job (GPUMATCH_*, CUDA_VISIBLE_DEVICES, "
			        "NVIDIA_*); choose another name");
		}
	}
	if (s->memory_bytes < 0 || (s->memory_bytes && (s->memory_bytes < MEMORY_MIN_BYTES ||
	                                                s->memory_bytes > MEMORY_MAX_BYTES)))
		FAIL("spec.memoryBytes", "0 (the node's default) or %lld..%lld bytes, got %" PRId64,
		     (long long)MEMORY_MIN_BYTES, (long long)MEMORY_MAX_BYTES, s->memory_bytes);
	if (s->pids_limit > PIDS_MAX)
		FAIL("spec.pidsLimit", "0 (the node's default) or 1..%u, got %u", PIDS_MAX,
		     s->pids_limit);
	if (s->shm_bytes < 0 ||
	    (s->shm_bytes && (s->shm_bytes < SHM_MIN_BYTES || s->shm_bytes > MEMORY_MAX_BYTES)))
		FAIL("spec.shmBytes", "0 (the node's default) or %lld..%lld bytes, got %" PRId64,
		     (long long)SHM_MIN_BYTES, (long long)MEMORY_MAX_BYTES, s->shm_bytes);
	if (s->memory_bytes && s->shm_bytes > s->memory_bytes)
		FAIL("spec.shmBytes", "larger than spec.memoryBytes (%" PRId64 " > %" PRId64 ")",
		     s->shm_bytes, s->memory_bytes);
	if (s->network && *s->network && strcmp(s->network, "none") && strcmp(s->network, "bridge"))
		FAIL("spec.network", "\"none\" (the default) or \"bridge\", got \"%.64s\"",
		     s->network);
	if (s->user && *s->user) {
		const char *p = s->user;
		unsigned long long uid = 0, gid = 0;
		int used = 0;
		bool ok = sscanf(p, "%llu%n", &uid, &used) == 1 && isdigit((unsigned char)*p);
		p += used;
		if (ok && *p == ':') {
			p++;
			ok = isdigit((unsigned char)*p) && sscanf(p, "%llu%n", &gid, &used) == 1;
			p += ok ? used : 0;
		}
		if (!ok || *p || uid > 2147483647ULL || gid > 2147483647ULL)
			FAIL("spec.user", "\"UID\" or \"UID:GID\" (numbers), got \"%.64s\"",
			     s->user);
	}
	if (s->n_volumes && !image)
		FAIL("spec.volumes", "only for jobs with an image");
	if (s->n_volumes > MAX_VOLUMES)
		FAIL("spec.volumes", "at most %d, got %zu", MAX_VOLUMES, s->n_volumes);
	for (size_t i = 0; i < s->n_volumes; i++) {
		const Gpumatch__V1__VolumeMount *v = s->volumes[i];
		char f[64];
		snprintf(f, sizeof f, "spec.volumes[%zu].hostPath", i);
		if (!clean_abs_path(v->host_path))
			FAIL(f, "an absolute path without '.', '..', '//', ',' or ':' parts");
		if (!allowed_host_path(v->host_path, c->volume_allow_paths))
			FAIL(f, "\"%.200s\" is not under a path this service allows (%s)",
			     v->host_path,
			     *c->volume_allow_paths ? c->volume_allow_paths : "none allowed");
		snprintf(f, sizeof f, "spec.volumes[%zu].containerPath", i);
		if (!clean_abs_path(v->container_path) || !strcmp(v->container_path, "/"))
			FAIL(f, "an absolute path other than \"/\" without '.', '..', '//', ',' "
			        "or ':' parts");
		if (under(v->container_path, "/proc", 5) || under(v->container_path, "/sys", 4) ||
		    under(v->container_path, "/dev", 4))
			FAIL(f, "must not be under /proc, /sys or /dev");
	}
	if (image && s->working_dir && *s->working_dir && s->working_dir[0] != '/')
		FAIL("spec.workingDir", "an absolute path inside the image");
	return 0;
}
