/* jobenv.c — the token file, the job user and the job environment (see
 * jobenv.h and docs/security.md). */
#include "jobenv.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define JOB_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

int jobenv_read_token_file(const char *path, char *out, size_t len, char *err, size_t err_len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st)) {
		snprintf(err, err_len, "token file %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (!S_ISREG(st.st_mode) || (st.st_mode & 077)) {
		snprintf(err, err_len,
		         "token file %s: mode %03o lets group or others read it; chmod 600 it",
		         path, (unsigned)(st.st_mode & 0777));
		close(fd);
		return -1;
	}
	ssize_t n = read(fd, out, len - 1);
	int e = errno;
	close(fd);
	if (n < 0) {
		snprintf(err, err_len, "token file %s: %s", path, strerror(e));
		return -1;
	}
	out[n] = '\0';
	out[strcspn(out, "\r\n")] = '\0';
	if (!*out || (size_t)n == len - 1) {
		snprintf(err, err_len, "token file %s: %s", path,
		         *out ? "longer than a token can be" : "empty");
		out[0] = '\0';
		return -1;
	}
	return 0;
}

int jobenv_pick_user(const char *run_as, bool allow_root, struct jobenv_user *u, char *err,
                     size_t err_len)
{
	memset(u, 0, sizeof *u);
	struct passwd *me = getpwuid(geteuid());
	if (me) {
		snprintf(u->name, sizeof u->name, "%s", me->pw_name);
		snprintf(u->home, sizeof u->home, "%s",
		         me->pw_dir && *me->pw_dir ? me->pw_dir : "/");
	} else {
		snprintf(u->home, sizeof u->home, "/");
	}
	if (geteuid() != 0) {
		if (run_as && (!me || strcmp(run_as, me->pw_name))) {
			snprintf(err, err_len,
			         "--run-as %s: the agent is not root, so jobs run as its own user",
			         run_as);
			return -1;
		}
		return 0;
	}
	struct passwd *pw = NULL;
	if (run_as) {
		pw = getpwnam(run_as);
		if (!pw) {
			snprintf(err, err_len, "--run-as: no user \"%s\"", run_as);
			return -1;
		}
	} else {
		pw = getpwnam("gpumatch-job");
		if (!pw)
			pw = getpwnam("nobody");
		if (!pw && !allow_root) {
			snprintf(err, err_len,
			         "no gpumatch-job or nobody user for jobs: create one "
			         "(deploy/install-deps.sh does), or name one with --run-as");
			return -1;
		}
	}
	if (!pw || pw->pw_uid == 0) {
		if (!allow_root) {
			snprintf(
			    err, err_len,
			    "--run-as %s: jobs would run as root; pass --allow-root-jobs to allow "
			    "that",
			    run_as ? run_as : "root");
			return -1;
		}
		return 0; /* root, as the operator asked */
	}
	u->switch_user = true;
	u->uid = pw->pw_uid;
	u->gid = pw->pw_gid;
	snprintf(u->name, sizeof u->name, "%s", pw->pw_name);
	snprintf(u->home, sizeof u->home, "%s", pw->pw_dir && *pw->pw_dir ? pw->pw_dir : "/");
	int n = (int)(sizeof u->groups / sizeof u->groups[0]);
	if (getgrouplist(pw->pw_name, pw->pw_gid, u->groups, &n) < 0) {
		/* more than we keep: the primary group alone */
		u->groups[0] = pw->pw_gid;
		n = 1;
	}
	u->ngroups = n;
	return 0;
}

void jobenv_reset_environment(const struct jobenv_user *u)
{
	clearenv();
	setenv("PATH", JOB_PATH, 1);
	setenv("HOME", u->home[0] ? u->home : "/", 1);
	if (u->name[0]) {
		setenv("USER", u->name, 1);
		setenv("LOGNAME", u->name, 1);
	}
	setenv("LANG", "C.UTF-8", 1);
}

int jobenv_drop_privileges(const struct jobenv_user *u)
{
	if (!u->switch_user)
		return 0;
	if (setgroups((size_t)u->ngroups, u->groups) || setgid(u->gid) || setuid(u->uid))
		return -1;
	/* no way back: a job must not regain root */
	if (setuid(0) == 0) {
		errno = EPERM;
		return -1;
	}
	return 0;
}
