/* runtime.c — the agent's container runtime (see runtime.h). podman is
 * driven through its command line: every invocation is an argv array
 * handed to execvp, so nothing a tenant writes (image, command, env,
 * paths) is ever parsed by a shell. The CLI rather than podman's REST API:
 * no socket service to run and secure on the node, the same code drives
 * docker, and each step's failure text is the runtime's own. */
#include "runtime.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

#define MAX_ARGS  512
#define ARG_BYTES 65536

void rt_name(uint64_t lease_id, char *out, size_t len)
{
	snprintf(out, len, "gm-lease-%" PRIu64, lease_id);
}

/* ---- settings ---- */

/* "64m", "8g", "1.5G", "512k", plain bytes -> bytes; -1 if bad. */
static int64_t parse_bytes(const char *s)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || v < 0)
		return -1;
	double mul = 1;
	switch (tolower((unsigned char)*end)) {
	case 'k':
		mul = 1024.0;
		end++;
		break;
	case 'm':
		mul = 1024.0 * 1024;
		end++;
		break;
	case 'g':
		mul = 1024.0 * 1024 * 1024;
		end++;
		break;
	case 't':
		mul = 1024.0 * 1024 * 1024 * 1024;
		end++;
		break;
	default:
		break;
	}
	if (*end == 'i' || *end == 'I')
		end++;
	if (*end == 'b' || *end == 'B')
		end++;
	if (*end || v * mul > 9e18)
		return -1;
	return (int64_t)(v * mul);
}

static int bytes_opt(struct ctx *c, const char *name, int64_t *out)
{
	const char *v = opt_str(c, name);
	if (!v)
		return 0;
	int64_t b = parse_bytes(v);
	if (b <= 0)
		return usage_error(c, "--%s: expected a size such as 64m or 8g, got \"%s\"", name,
		                   v);
	*out = b;
	return 0;
}

static int count_opt(struct ctx *c, const char *name, uint32_t *out)
{
	const char *v = opt_str(c, name);
	if (!v)
		return 0;
	char *end;
	unsigned long n = strtoul(v, &end, 10);
	if (*end || !*v || *v == '-' || n == 0 || n > 4194304)
		return usage_error(c, "--%s: expected 1..4194304, got \"%s\"", name, v);
	*out = (uint32_t)n;
	return 0;
}

static bool file_exists(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0;
}

static bool on_path(const char *prog)
{
	if (strchr(prog, '/'))
		return access(prog, X_OK) == 0;
	const char *path = getenv("PATH");
	char buf[1024];
	while (path && *path) {
		const char *e = strchr(path, ':');
		size_t n = e ? (size_t)(e - path) : strlen(path);
		snprintf(buf, sizeof buf, "%.*s/%s", (int)n, path, prog);
		if (access(buf, X_OK) == 0)
			return true;
		path = e ? e + 1 : NULL;
	}
	return false;
}

int rt_config_init(struct rt_config *rc, struct ctx *c, const char *state_dir, bool simulate)
{
	memset(rc, 0, sizeof *rc);
	const char *v = opt_str(c, "runtime");
	if (!v || !strcmp(v, "podman")) {
		snprintf(rc->engine, sizeof rc->engine, "podman");
	} else if (!strcmp(v, "docker")) {
		snprintf(rc->engine, sizeof rc->engine, "docker");
		rc->docker = true;
	} else {
		return usage_error(c, "--runtime: podman or docker, got \"%s\"", v);
	}
	if ((v = opt_str(c, "container-runtime-path")))
		snprintf(rc->engine, sizeof rc->engine, "%s", v);
	if (opt_str(c, "runtime") && !on_path(rc->engine))
		return usage_error(c, "--runtime %s: %s not found on PATH", opt_str(c, "runtime"),
		                   rc->engine);
	/* crun, podman's default here, cannot run under hybrid cgroups */
	snprintf(rc->oci_runtime, sizeof rc->oci_runtime, "%s", rc->docker ? "" : "runc");
	if ((v = opt_str(c, "oci-runtime"))) {
		if (strlen(v) >= sizeof rc->oci_runtime || strchr(v, '/'))
			return usage_error(c,
			                   "--oci-runtime: a runtime name such as runc, got "
			                   "\"%s\"",
			                   v);
		snprintf(rc->oci_runtime, sizeof rc->oci_runtime, "%s", v);
	}
	if ((v = opt_str(c, "container-storage"))) {
		if (rc->docker || *v != '/' || strlen(v) > 200)
			return usage_error(c,
			                   "--container-storage: an absolute directory (podman "
			                   "only), got \"%s\"",
			                   v);
		snprintf(rc->storage, sizeof rc->storage, "%s", v);
	}
	/* FNV-1a of the state directory: one agent's containers, not another's */
	uint64_t h = 1469598103934665603ULL;
	for (const char *p = state_dir; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	snprintf(rc->agent_label, sizeof rc->agent_label, "%016" PRIx64, h);
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	snprintf(rc->run_label, sizeof rc->run_label, "%d-%lld", (int)getpid(),
	         (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000);
	if ((v = opt_str(c, "gpu-devices"))) {
		if (!strcmp(v, "none"))
			rc->gpus = RT_GPU_NONE;
		else if (!strcmp(v, "cdi"))
			rc->gpus = RT_GPU_CDI;
		else if (!strcmp(v, "hook"))
			rc->gpus = RT_GPU_HOOK;
		else
			return usage_error(c, "--gpu-devices: none, cdi or hook, got \"%s\"", v);
	} else if (simulate) {
		rc->gpus = RT_GPU_NONE;
	} else {
		rc->gpus =
		    file_exists("/etc/cdi/nvidia.yaml") || file_exists("/var/run/cdi/nvidia.yaml")
		        ? RT_GPU_CDI
		        : RT_GPU_HOOK;
	}
	rc->memory_per_gpu_bytes = 16LL << 30;
	rc->max_memory_bytes = 0; /* 0 = the node's memory */
	rc->default_pids = 4096;
	rc->max_pids = 65536;
	rc->default_shm_bytes = 256LL << 20;
	rc->max_shm_bytes = 64LL << 30;
	rc->allow_bridge = !opt_has(c, "no-bridge-network");
	rc->pull_timeout_s = 600;
	int rc2;
	if ((rc2 = bytes_opt(c, "memory-per-gpu", &rc->memory_per_gpu_bytes)) ||
	    (rc2 = bytes_opt(c, "max-memory", &rc->max_memory_bytes)) ||
	    (rc2 = count_opt(c, "pids", &rc->default_pids)) ||
	    (rc2 = count_opt(c, "max-pids", &rc->max_pids)) ||
	    (rc2 = bytes_opt(c, "shm", &rc->default_shm_bytes)) ||
	    (rc2 = bytes_opt(c, "max-shm", &rc->max_shm_bytes)))
		return rc2;
	if ((v = opt_str(c, "pull-timeout"))) {
		int64_t us = parse_duration_us(v);
		if (us < 1000000 || us > 86400000000LL)
			return usage_error(c, "--pull-timeout: a duration of 1s..24h, got \"%s\"",
			                   v);
		rc->pull_timeout_s = (int)(us / 1000000);
	}
	rc->n_allow_mounts = opt_all(c, "allow-mount", rc->allow_mounts, RT_MAX_LIST);
	for (size_t i = 0; i < rc->n_allow_mounts; i++)
		if (rc->allow_mounts[i][0] != '/')
			return usage_error(c, "--allow-mount: an absolute path prefix, got \"%s\"",
			                   rc->allow_mounts[i]);
	rc->n_registry_allow = opt_all(c, "registry-allow", rc->registry_allow, RT_MAX_LIST);
	rc->n_registry_deny = opt_all(c, "registry-deny", rc->registry_deny, RT_MAX_LIST);
	/* the container may not raise limits past the agent's own hard ones */
	struct rlimit rl;
	rc->nofile = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max != RLIM_INFINITY
	                 ? rl.rlim_max
	                 : 1048576;
	if (rc->nofile > 1048576)
		rc->nofile = 1048576;
	/* nproc: a sandboxed host refuses values near its own limits (65536
	 * failed where the hard limit was 96367); each job gets its pids limit */
	rc->nproc =
	    getrlimit(RLIMIT_NPROC, &rl) == 0 && rl.rlim_max != RLIM_INFINITY ? rl.rlim_max : 32768;
	if (rc->nproc > 32768)
		rc->nproc = 32768;
	return 0;
}

/* ---- checks before running ---- */

/* The registry host of an image reference: its first component when that
 * looks like a host (has '.', ':' or is localhost), else docker.io. */
static void registry_of(const char *ref, char *out, size_t len)
{
	const char *slash = strchr(ref, '/');
	if (slash) {
		size_t n = (size_t)(slash - ref);
		if (memchr(ref, '.', n) || memchr(ref, ':', n) ||
		    (n == 9 && !strncmp(ref, "localhost", 9))) {
			snprintf(out, len, "%.*s", (int)n, ref);
			return;
		}
	}
	snprintf(out, len, "docker.io");
}

/* "docker.io" matches "docker.io" and "docker.io/library" matches that
 * repository path prefix; "*" matches any. */
static bool ref_matches(const char *ref, const char *registry, const char *pattern)
{
	if (!strcmp(pattern, "*"))
		return true;
	if (!strchr(pattern, '/'))
		return !strcmp(registry, pattern);
	/* a path prefix: against the reference with its registry made explicit */
	char full[600];
	if (!strncmp(ref, registry, strlen(registry)) && ref[strlen(registry)] == '/')
		snprintf(full, sizeof full, "%s", ref);
	else
		snprintf(full, sizeof full, "%s/%s", registry, ref);
	size_t n = strlen(pattern);
	return !strncmp(full, pattern, n) &&
	       (full[n] == '/' || full[n] == ':' || full[n] == '@' || full[n] == '\0');
}

static bool under_prefix(const char *path, const char *prefix)
{
	size_t n = strlen(prefix);
	while (n > 1 && prefix[n - 1] == '/')
		n--;
	if (n == 1 && prefix[0] == '/')
		return true;
	return !strncmp(path, prefix, n) && (path[n] == '\0' || path[n] == '/');
}

static int64_t job_memory(const struct rt_config *rc, const struct rt_lease *l)
{
	if (l->spec->memory_bytes > 0)
		return l->spec->memory_bytes;
	int64_t m = rc->memory_per_gpu_bytes * (int64_t)(l->n_gpus ? l->n_gpus : 1);
	if (rc->max_memory_bytes && m > rc->max_memory_bytes)
		m = rc->max_memory_bytes;
	return m;
}

int rt_check(const struct rt_config *rc, const struct rt_lease *l, int *failure_reason, char *why,
             size_t why_len)
{
	const Gpumatch__V1__JobSpec *s = l->spec;
	char reg[300];
	registry_of(s->image, reg, sizeof reg);
	*failure_reason = GPUMATCH__V1__FAILURE_REASON__FAILURE_REASON_IMAGE_PULL;
	for (size_t i = 0; i < rc->n_registry_deny; i++)
		if (ref_matches(s->image, reg, rc->registry_deny[i])) {
			snprintf(why, why_len,
			         "image %s refused before pulling: registry %s is on this node's "
			         "deny list (%s)",
			         s->image, reg, rc->registry_deny[i]);
			return -1;
		}
	if (rc->n_registry_allow) {
		bool ok = false;
		for (size_t i = 0; i < rc->n_registry_allow && !ok; i++)
			ok = ref_matches(s->image, reg, rc->registry_allow[i]);
		if (!ok) {
			snprintf(why, why_len,
			         "image %s refused before pulling: registry %s is not on this "
			         "node's allow list",
			         s->image, reg);
			return -1;
		}
	}
	*failure_reason = GPUMATCH__V1__FAILURE_REASON__FAILURE_REASON_AGENT_ERROR;
	int64_t mem = job_memory(rc, l);
	if (rc->max_memory_bytes && mem > rc->max_memory_bytes) {
		snprintf(why, why_len,
		         "memoryBytes %" PRId64 " is above this node's cap of %" PRId64, mem,
		         rc->max_memory_bytes);
		return -1;
	}
	if (s->pids_limit > rc->max_pids) {
		snprintf(why, why_len, "pidsLimit %u is above this node's cap of %u", s->pids_limit,
		         rc->max_pids);
		return -1;
	}
	if (s->shm_bytes > rc->max_shm_bytes) {
		snprintf(why, why_len, "shmBytes %" PRId64 " is above this node's cap of %" PRId64,
		         s->shm_bytes, rc->max_shm_bytes);
		return -1;
	}
	if (s->network && !strcmp(s->network, "bridge") && !rc->allow_bridge) {
		snprintf(why, why_len, "network \"bridge\": this node runs jobs without a network");
		return -1;
	}
	for (size_t i = 0; i < s->n_volumes; i++) {
		bool ok = false;
		for (size_t k = 0; k < rc->n_allow_mounts && !ok; k++)
			ok = under_prefix(s->volumes[i]->host_path, rc->allow_mounts[k]);
		if (!ok) {
			snprintf(why, why_len,
			         "volumes[%zu].hostPath %s: this node does not allow mounting it",
			         i, s->volumes[i]->host_path);
			return -1;
		}
	}
	return 0;
}

/* ---- argv building ---- */

struct argv {
	char *v[MAX_ARGS + 1];
	int n;
	char buf[ARG_BYTES];
	size_t used;
	bool full;
};

static void arg(struct argv *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void arg(struct argv *a, const char *fmt, ...)
{
	if (a->n >= MAX_ARGS || a->used >= sizeof a->buf) {
		a->full = true;
		return;
	}
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(a->buf + a->used, sizeof a->buf - a->used, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof a->buf - a->used) {
		a->full = true;
		return;
	}
	a->v[a->n++] = a->buf + a->used;
	a->v[a->n] = NULL;
	a->used += (size_t)n + 1;
}

/* The engine and its global flags. */
static void engine_args(const struct rt_config *rc, struct argv *a)
{
	arg(a, "%s", rc->engine);
	if (rc->docker)
		return;
	if (*rc->storage) {
		arg(a, "--root");
		arg(a, "%s/root", rc->storage);
		arg(a, "--runroot");
		arg(a, "%s/run", rc->storage);
	}
	if (*rc->oci_runtime) {
		arg(a, "--runtime");
		arg(a, "%s", rc->oci_runtime);
	}
}

/* ---- running helpers (in the launcher child or a spawned helper) ---- */

static void say(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void say(int fd, const char *fmt, ...)
{
	char line[700];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof line - 2)
		n = (int)sizeof line - 2;
	for (int i = 0; i < n; i++)
		if (line[i] == '\n' || line[i] == '\r')
			line[i] = ' ';
	line[n++] = '\n';
	if (write(fd, line, (size_t)n) < 0)
		return;
}

/* Runs argv with stdin /dev/null, stdout to out_fd (or captured into cap
 * when out_fd < 0), stderr captured into err; waits up to timeout_s (0 =
 * no bound), killing it past that. Returns the exit status as waitpid
 * gives it, -2 on timeout, -1 when it could not run. */
static int run_capture(char *const *argv, int out_fd, char *cap, size_t cap_len, char *err,
                       size_t err_len, int timeout_s)
{
	int op[2] = { -1, -1 }, ep[2];
	if (cap_len)
		cap[0] = '\0';
	if (err_len)
		err[0] = '\0';
	if (pipe(ep) || (out_fd < 0 && pipe(op)))
		return -1;
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		int nul = open("/dev/null", O_RDWR);
		dup2(nul, 0);
		dup2(out_fd >= 0 ? out_fd : op[1], 1);
		dup2(ep[1], 2);
		execvp(argv[0], argv);
		dprintf(2, "cannot run %s: %s", argv[0], strerror(errno));
		_exit(127);
	}
	close(ep[1]);
	if (op[1] >= 0)
		close(op[1]);
	size_t nc = 0, ne = 0;
	time_t until = timeout_s ? time(NULL) + timeout_s : 0;
	bool timed_out = false;
	struct pollfd pf[2] = { { ep[0], POLLIN, 0 }, { op[0], POLLIN, 0 } };
	int open_fds = op[0] >= 0 ? 2 : 1;
	while (open_fds > 0) {
		int wait_ms = -1;
		if (until) {
			time_t left = until - time(NULL);
			if (left <= 0) {
				timed_out = true;
				kill(pid, SIGKILL);
				break;
			}
			wait_ms = (int)left * 1000;
		}
		int r = poll(pf, op[0] >= 0 ? 2 : 1, wait_ms);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			break;
		for (int i = 0; i < 2; i++) {
			if (pf[i].fd < 0 || !(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			char tmp[4096];
			ssize_t got = read(pf[i].fd, tmp, sizeof tmp);
			if (got <= 0) {
				close(pf[i].fd);
				pf[i].fd = -1;
				open_fds--;
				continue;
			}
			char *dst = i == 0 ? err : cap;
			size_t dlen = i == 0 ? err_len : cap_len, *used = i == 0 ? &ne : &nc;
			size_t room = dlen && *used < dlen - 1 ? dlen - 1 - *used : 0;
			size_t take = (size_t)got < room ? (size_t)got : room;
			if (take)
				memcpy(dst + *used, tmp, take);
			*used += take;
			if (dlen)
				dst[*used] = '\0';
		}
	}
	for (int i = 0; i < 2; i++)
		if (pf[i].fd >= 0)
			close(pf[i].fd);
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	/* trim the captured text to one line's worth of meaning */
	while (ne && (err[ne - 1] == '\n' || err[ne - 1] == ' '))
		err[--ne] = '\0';
	while (nc && (cap[nc - 1] == '\n' || cap[nc - 1] == ' '))
		cap[--nc] = '\0';
	return timed_out ? -2 : st;
}

/* Starts argv detached from the agent (own process group, no output);
 * the agent's SIGCHLD handler reaps it. */
static void spawn(char *const *argv)
{
	pid_t pid = fork();
	if (pid != 0)
		return;
	setpgid(0, 0);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	int nul = open("/dev/null", O_RDWR);
	dup2(nul, 0);
	dup2(nul, 1);
	dup2(nul, 2);
	execvp(argv[0], argv);
	_exit(127);
}

void rt_stop(const struct rt_config *rc, uint64_t lease_id, int grace_s)
{
	static struct argv a;
	memset(&a, 0, sizeof a);
	engine_args(rc, &a);
	arg(&a, "stop");
	arg(&a, "-t");
	arg(&a, "%d", grace_s < 0 ? 0 : grace_s);
	char name[64];
	rt_name(lease_id, name, sizeof name);
	arg(&a, "%s", name);
	spawn(a.v);
}

void rt_kill(const struct rt_config *rc, uint64_t lease_id)
{
	static struct argv a;
	memset(&a, 0, sizeof a);
	engine_args(rc, &a);
	arg(&a, "kill");
	arg(&a, "--signal");
	arg(&a, "KILL");
	char name[64];
	rt_name(lease_id, name, sizeof name);
	arg(&a, "%s", name);
	spawn(a.v);
}

static void rm_tree(const char *dir)
{
	char *argv[] = { "rm", "-rf", "--one-file-system", "--", (char *)dir, NULL };
	spawn(argv);
}

void rt_remove(const struct rt_config *rc, uint64_t lease_id, const char *scratch_dir)
{
	if (scratch_dir && *scratch_dir)
		rm_tree(scratch_dir);
	if (!lease_id)
		return;
	static struct argv a;
	memset(&a, 0, sizeof a);
	engine_args(rc, &a);
	arg(&a, "rm");
	arg(&a, "-f");
	arg(&a, "-v");
	char name[64];
	rt_name(lease_id, name, sizeof name);
	arg(&a, "%s", name);
	spawn(a.v);
}

void rt_remove_orphans(const struct rt_config *rc)
{
	pid_t pid = fork();
	if (pid != 0)
		return;
	setpgid(0, 0);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGCHLD, SIG_DFL);
	static struct argv a;
	memset(&a, 0, sizeof a);
	engine_args(rc, &a);
	arg(&a, "ps");
	arg(&a, "-a");
	arg(&a, "--filter");
	arg(&a, "label=gpumatch.agent=%s", rc->agent_label);
	arg(&a, "--format");
	arg(&a, "{{.Names}} {{index .Labels \"gpumatch.run\"}}");
	static char out[65536];
	char err[512];
	int st = run_capture(a.v, -1, out, sizeof out, err, sizeof err, 120);
	if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
		_exit(1);
	for (char *save = NULL, *line = strtok_r(out, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char name[128], run[64] = "";
		if (sscanf(line, "%127s %63s", name, run) < 1 || strncmp(name, "gm-lease-", 9) ||
		    !strcmp(run, rc->run_label))
			continue;
		static struct argv r;
		memset(&r, 0, sizeof r);
		engine_args(rc, &r);
		arg(&r, "rm");
		arg(&r, "-f");
		arg(&r, "-v");
		arg(&r, "%s", name);
		int rs = run_capture(r.v, -1, NULL, 0, err, sizeof err, 120);
		if (rs >= 0 && WIFEXITED(rs) && WEXITSTATUS(rs) == 0)
			fprintf(stderr,
			        "level=info msg=\"removed a container of an earlier agent run\" "
			        "name=%s\n",
			        name);
	}
	_exit(0);
}

/* ---- the launcher ---- */

static void gpu_list(const struct rt_lease *l, bool uuids, char *out, size_t len)
{
	size_t used = 0;
	out[0] = '\0';
	for (size_t i = 0; i < l->n_gpus; i++) {
		uint32_t g = l->gpu_indexes[i];
		const char *u = uuids && l->gpu_uuids && l->gpu_uuids[g] && *l->gpu_uuids[g]
		                    ? l->gpu_uuids[g]
		                    : NULL;
		int n =
		    u ? snprintf(out + used, used < len ? len - used : 0, "%s%s", i ? "," : "", u)
		      : snprintf(out + used, used < len ? len - used : 0, "%s%u", i ? "," : "", g);
		used += n > 0 ? (size_t)n : 0;
	}
}

static void build_run(const struct rt_config *rc, const struct rt_lease *l, struct argv *a)
{
	const Gpumatch__V1__JobSpec *s = l->spec;
	char name[64];
	rt_name(l->lease_id, name, sizeof name);
	engine_args(rc, a);
	arg(a, "run");
	arg(a, "--name");
	arg(a, "%s", name);
	arg(a, "--label");
	arg(a, "gpumatch.lease=%" PRIu64, l->lease_id);
	arg(a, "--label");
	arg(a, "gpumatch.job=%" PRIu64, l->job_id);
	arg(a, "--label");
	arg(a, "gpumatch.agent=%s", rc->agent_label);
	arg(a, "--label");
	arg(a, "gpumatch.run=%s", rc->run_label);
	arg(a, "--hostname");
	arg(a, "%s", name);
	arg(a, "--pull");
	arg(a, "never");
	arg(a, "--sig-proxy=false");
	arg(a, "--log-driver");
	arg(a, "none");
	if (!rc->docker) {
		/* podman's own defaults that say nothing to the job */
		arg(a, "--unsetenv");
		arg(a, "TERM");
		arg(a, "--unsetenv");
		arg(a, "container");
	}
	/* isolation: no privileges to gain, none held */
	arg(a, "--cap-drop");
	arg(a, "ALL");
	arg(a, "--security-opt");
	arg(a, "no-new-privileges");
	arg(a, "--network");
	arg(a, "%s", s->network && !strcmp(s->network, "bridge") ? "bridge" : "none");
	int64_t mem = job_memory(rc, l);
	arg(a, "--memory");
	arg(a, "%" PRId64, mem);
	arg(a, "--memory-swap");
	arg(a, "%" PRId64, mem); /* no swap beyond the limit */
	uint32_t pids = s->pids_limit ? s->pids_limit : rc->default_pids;
	arg(a, "--pids-limit");
	arg(a, "%u", pids);
	int64_t shm = s->shm_bytes ? s->shm_bytes : rc->default_shm_bytes;
	if (shm > mem)
		shm = mem;
	arg(a, "--shm-size");
	arg(a, "%" PRId64, shm);
	/* CPU weight proportional to the GPUs held */
	arg(a, "--cpu-shares");
	arg(a, "%zu", 1024 * (l->n_gpus ? l->n_gpus : 1));
	arg(a, "--ulimit");
	arg(a, "nofile=%" PRIu64 ":%" PRIu64, rc->nofile, rc->nofile);
	arg(a, "--ulimit");
	uint64_t nproc = pids < rc->nproc ? pids : rc->nproc;
	arg(a, "nproc=%" PRIu64 ":%" PRIu64, nproc, nproc);
	if (s->read_only_root)
		arg(a, "--read-only");
	if (l->scratch_dir && *l->scratch_dir) {
		arg(a, "--volume");
		arg(a, "%s:/scratch:rw", l->scratch_dir);
	}
	for (size_t i = 0; i < s->n_volumes; i++) {
		arg(a, "--volume");
		arg(a, "%s:%s:%s", s->volumes[i]->host_path, s->volumes[i]->container_path,
		    s->volumes[i]->read_only ? "ro" : "rw");
	}
	if (s->user && *s->user) {
		arg(a, "--user");
		arg(a, "%s", s->user);
	}
	if (s->working_dir && *s->working_dir) {
		arg(a, "--workdir");
		arg(a, "%s", s->working_dir);
	}
	/* the GPUs: passed by CDI, or named for the NVIDIA hook (both number
	 * them 0..n-1 inside), or, simulated, only named by host index */
	char idx[512], ids[4096], local[512];
	gpu_list(l, false, idx, sizeof idx);
	gpu_list(l, true, ids, sizeof ids);
	size_t used = 0;
	local[0] = '\0';
	for (size_t i = 0; i < l->n_gpus; i++)
		used +=
		    (size_t)snprintf(local + used, used < sizeof local ? sizeof local - used : 0,
		                     "%s%zu", i ? "," : "", i);
	if (rc->gpus == RT_GPU_CDI)
		for (size_t i = 0; i < l->n_gpus; i++) {
			uint32_t g = l->gpu_indexes[i];
			const char *u = l->gpu_uuids && l->gpu_uuids[g] && *l->gpu_uuids[g]
			                    ? l->gpu_uuids[g]
			                    : NULL;
			arg(a, "--device");
			if (u)
				arg(a, "nvidia.com/gpu=%s", u);
			else
				arg(a, "nvidia.com/gpu=%u", g);
		}
	arg(a, "--env");
	arg(a, "CUDA_VISIBLE_DEVICES=%s", rc->gpus == RT_GPU_NONE ? idx : local);
	arg(a, "--env");
	arg(a, "NVIDIA_VISIBLE_DEVICES=%s", rc->gpus == RT_GPU_NONE ? idx : ids);
	if (rc->gpus == RT_GPU_HOOK) {
		arg(a, "--env");
		arg(a, "NVIDIA_DRIVER_CAPABILITIES=compute,utility");
	}
	arg(a, "--env");
	arg(a, "GPUMATCH_JOB_ID=%" PRIu64, l->job_id);
	arg(a, "--env");
	arg(a, "GPUMATCH_LEASE_ID=%" PRIu64, l->lease_id);
	arg(a, "--env");
	arg(a, "GPUMATCH_NODE_ID=%" PRIu64, l->node_id);
	arg(a, "--env");
	arg(a, "GPUMATCH_GANG_INDEX=%u", l->gang_index);
	arg(a, "--env");
	arg(a, "GPUMATCH_GANG_SIZE=%u", l->gang_size ? l->gang_size : 1);
	arg(a, "--env");
	arg(a, "GPUMATCH_GANG_PEERS=%s", l->peers ? l->peers : "");
	arg(a, "--env");
	arg(a, "GPUMATCH_DEADLINE_US=%" PRId64, l->deadline_us);
	if (l->scratch_dir && *l->scratch_dir) {
		arg(a, "--env");
		arg(a, "GPUMATCH_SCRATCH=/scratch");
	}
	for (size_t i = 0; i < s->n_env; i++) {
		arg(a, "--env");
		arg(a, "%s=%s", s->env[i]->key, s->env[i]->value);
	}
	arg(a, "%s", s->image);
	for (size_t i = 0; i < s->n_command; i++)
		arg(a, "%s", s->command[i]);
}

/* Copies the container's stdout and stderr into the log as whole lines:
 * the runtime delivers each stream in pieces of its own size, and a line
 * of one stream must not be cut by bytes of the other. Each stream keeps
 * its order; a line longer than the buffer goes out in pieces. */
static void merge_lines(int out_fd, int err_fd, int log_fd)
{
	enum { BUF = 65536 };
	static char buf[2][BUF];
	size_t len[2] = { 0, 0 };
	struct pollfd pf[2] = { { out_fd, POLLIN, 0 }, { err_fd, POLLIN, 0 } };
	int open_fds = 2;
	while (open_fds) {
		if (poll(pf, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		for (int i = 0; i < 2; i++) {
			if (pf[i].fd < 0 || !(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			ssize_t n = read(pf[i].fd, buf[i] + len[i], BUF - len[i]);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				close(pf[i].fd);
				pf[i].fd = -1;
				open_fds--;
				if (len[i] && write(log_fd, buf[i], len[i]) < 0)
					return;
				len[i] = 0;
				continue;
			}
			len[i] += (size_t)n;
			/* everything up to the last newline; all of it when full */
			size_t cut = len[i];
			while (cut > 0 && buf[i][cut - 1] != '\n')
				cut--;
			if (!cut && len[i] == BUF)
				cut = BUF;
			if (cut) {
				if (write(log_fd, buf[i], cut) < 0)
					return;
				memmove(buf[i], buf[i] + cut, len[i] - cut);
				len[i] -= cut;
			}
		}
	}
}

static bool is_digest(const char *s)
{
	if (strncmp(s, "sha256:", 7) || strlen(s) != 71)
		return false;
	for (const char *p = s + 7; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

/* The image's digest, which also says whether it is present; when it is
 * not, it is pulled within the timeout and asked again. Exits 125 (after
 * "PULLFAIL") when the pull fails. */
static void image_ready(const struct rt_config *rc, const char *image, int status_fd)
{
	static struct argv a, p;
	static char out[4096], err[2048];
	memset(&a, 0, sizeof a);
	engine_args(rc, &a);
	arg(&a, "image");
	arg(&a, "inspect");
	arg(&a, "--format");
	arg(&a, "%s", rc->docker ? "{{.Id}}" : "{{.Digest}}");
	arg(&a, "%s", image);
	int st = run_capture(a.v, -1, out, sizeof out, err, sizeof err, 60);
	if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		say(status_fd, "PHASE PULLING");
		memset(&p, 0, sizeof p);
		engine_args(rc, &p);
		arg(&p, "pull");
		arg(&p, "--quiet");
		arg(&p, "%s", image);
		st = run_capture(p.v, -1, out, sizeof out, err, sizeof err, rc->pull_timeout_s);
		if (st == -2) {
			say(status_fd, "PULLFAIL pulling %s took longer than %ds", image,
			    rc->pull_timeout_s);
			_exit(125);
		}
		if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			say(status_fd, "PULLFAIL %s",
			    *err ? err : "the runtime could not pull the image");
			_exit(125);
		}
		st = run_capture(a.v, -1, out, sizeof out, err, sizeof err, 60);
	}
	if (st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0 && is_digest(out))
		say(status_fd, "DIGEST %s", out);
}

/* Runs the container attached, its output merged into log_fd; returns
 * the exit status as podman gives it (the container's, or 125..127 when
 * it never ran). */
static int run_attached(char *const *argv, int status_fd, int log_fd)
{
	int outp[2], errp[2];
	if (pipe(outp) || pipe(errp))
		_exit(125);
	pid_t pid = fork();
	if (pid < 0)
		_exit(125);
	if (pid == 0) {
		int nul = open("/dev/null", O_RDONLY);
		dup2(nul, 0);
		dup2(outp[1], 1);
		dup2(errp[1], 2);
		close(outp[0]);
		close(errp[0]);
		close(status_fd);
		signal(SIGTERM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		execvp(argv[0], argv);
		dprintf(2, "gpumatch: cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(outp[1]);
	close(errp[1]);
	say(status_fd, "PHASE RUNNING");
	merge_lines(outp[0], errp[0], log_fd);
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

void rt_launch(const struct rt_config *rc, const struct rt_lease *l, int status_fd, int log_fd)
{
	static struct argv a, run;
	static char out[4096], err[2048];
	const char *image = l->spec->image;
	/* an image this node ran before is taken as present: the start does
	 * not wait for a lookup (the critical path is the run alone) */
	bool assumed = l->known_digest && is_digest(l->known_digest);
	if (assumed)
		say(status_fd, "DIGEST %s", l->known_digest);
	else
		image_ready(rc, image, status_fd);
	say(status_fd, "PHASE STARTING");
	memset(&run, 0, sizeof run);
	build_run(rc, l, &run);
	if (run.full) {
		dprintf(log_fd, "gpumatch: the job's container arguments are too large\n");
		say(status_fd, "EXIT 125 0");
		_exit(125);
	}
	/* stop requests reach the container through the runtime, not us */
	signal(SIGTERM, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	char name[64];
	rt_name(l->lease_id, name, sizeof name);
	bool oom = false;
	int code;
	for (int attempt = 0;; attempt++) {
		code = run_attached(run.v, status_fd, log_fd);
		/* whether the kernel killed it for its memory limit, and the
		 * image it ran; no record at all: it was never created */
		memset(&a, 0, sizeof a);
		engine_args(rc, &a);
		arg(&a, "inspect");
		arg(&a, "--format");
		arg(&a, "%s",
		    rc->docker ? "{{.State.OOMKilled}} {{.State.ExitCode}} {{.Image}}"
		               : "{{.State.OOMKilled}} {{.State.ExitCode}} {{.ImageDigest}}");
		arg(&a, "%s", name);
		int ist = run_capture(a.v, -1, out, sizeof out, err, sizeof err, 60);
		bool created = ist >= 0 && WIFEXITED(ist) && WEXITSTATUS(ist) == 0;
		if (!created && code == 125 && assumed && attempt == 0) {
			/* the image seen here before is gone: look it up (pull
			 * it) and run once more */
			dprintf(log_fd,
			        "gpumatch: image %s is no longer on this node; getting it\n",
			        image);
			image_ready(rc, image, status_fd);
			say(status_fd, "PHASE STARTING");
			continue;
		}
		if (created) {
			oom = !strncmp(out, "true", 4);
			const char *d = strrchr(out, ' ');
			if (d && is_digest(d + 1))
				say(status_fd, "DIGEST %s", d + 1);
		}
		break;
	}
	/* the exit status is podman's (the container's, or 125..127 when it
	 * never ran); the runtime's record adds only whether it was an OOM */
	say(status_fd, "EXIT %d %d", code, oom ? 1 : 0);
	_exit(code & 0xff);
}

void rt_status_line(struct rt_status *st, const char *line)
{
	if (!strncmp(line, "PHASE ", 6))
		snprintf(st->phase, sizeof st->phase, "%s", line + 6);
	else if (!strncmp(line, "DIGEST ", 7))
		snprintf(st->digest, sizeof st->digest, "%s", line + 7);
	else if (!strncmp(line, "PULLFAIL ", 9)) {
		st->pull_failed = true;
		snprintf(st->message, sizeof st->message, "%s", line + 9);
	} else if (!strncmp(line, "EXIT ", 5)) {
		int code = 0, oom = 0;
		if (sscanf(line + 5, "%d %d", &code, &oom) >= 1) {
			st->exited = true;
			st->exit_code = code;
			st->oom = oom != 0;
		}
	}
}
