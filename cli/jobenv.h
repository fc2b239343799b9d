/* jobenv.h — what a bare (image-less) job gets from the agent and what it
 * does not: the agent's token is read from a file and never handed on, the
 * job's environment is built from nothing (a documented minimal set, the
 * lease's variables, the spec's env), and the job runs as an unprivileged
 * user unless the operator allows root. */
#ifndef GPUMATCH_CLI_JOBENV_H
#define GPUMATCH_CLI_JOBENV_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Reads the token from the first line of path. Refuses a file that is not
 * regular or that group or others may read or write (mode must be 0600 or
 * 0400), an empty one and one longer than len - 1. Returns 0, or -1 with
 * err naming the file (never its content). */
int jobenv_read_token_file(const char *path, char *out, size_t len, char *err, size_t err_len);

/* The user bare jobs run as, resolved once at start-up. */
struct jobenv_user {
	bool switch_user; /* false: jobs run as the agent's own user */
	uid_t uid;
	gid_t gid;
	char name[64];
	char home[512];
	gid_t groups[64]; /* supplementary groups */
	int ngroups;
};

/* Decides the job user. run_as: --run-as (NULL = the default: the
 * dedicated "gpumatch-job" user when it exists, else "nobody"), applied
 * only when the agent runs as root; an agent that is not root runs jobs as
 * itself and refuses a --run-as naming someone else. Root (uid 0) is
 * refused unless allow_root. Returns 0, or -1 with err. */
int jobenv_pick_user(const char *run_as, bool allow_root, struct jobenv_user *u, char *err,
                     size_t err_len);

/* In the forked child, before exec: empties the environment and sets the
 * base variables (PATH, HOME, USER, LOGNAME, LANG); the caller then adds
 * the lease's variables and the spec's env. */
void jobenv_reset_environment(const struct jobenv_user *u);

/* In the forked child: drops to u (groups, gid, uid; verified). Returns 0,
 * or -1 with errno set. */
int jobenv_drop_privileges(const struct jobenv_user *u);

#endif
