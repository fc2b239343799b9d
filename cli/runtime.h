/* runtime.h — the agent's container runtime: jobs that name an image run
 * under podman (or docker), driven through its command line with argv
 * arrays built here (never a shell string), with the node's limits and
 * isolation. See docs/jobs.md ("Containers") and docs/security.md. */
#ifndef GPUMATCH_CLI_RUNTIME_H
#define GPUMATCH_CLI_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "gpumatch/v1/node_service.pb-c.h"

struct ctx;

enum rt_gpu_mode {
	RT_GPU_NONE, /* --simulate: no device, the variables still name the GPUs */
	RT_GPU_CDI,  /* --device nvidia.com/gpu=<uuid or index> */
	RT_GPU_HOOK, /* NVIDIA container runtime hook: NVIDIA_VISIBLE_DEVICES */
};

#define RT_MAX_LIST 32

/* The operator's settings (agent flags), with their defaults. */
struct rt_config {
	char engine[256];     /* podman (default) or docker: the program */
	bool docker;          /* the engine speaks docker's dialect */
	char oci_runtime[64]; /* --runtime for podman ("runc"; "" = its default) */
	char storage[512];    /* podman --root/--runroot under here; "" = default */
	char agent_label[32]; /* this agent's containers carry gpumatch.agent=<this> */
	char run_label[40];   /* and gpumatch.run=<this run of the agent> */
	enum rt_gpu_mode gpus;
	int64_t memory_per_gpu_bytes; /* default memory limit per GPU */
	int64_t max_memory_bytes;     /* cap on a job's memory */
	uint32_t default_pids, max_pids;
	int64_t default_shm_bytes, max_shm_bytes;
	bool allow_bridge;      /* jobs may ask for network "bridge" */
	uint64_t nofile, nproc; /* --ulimit values, at most the agent's hard limits */
	int pull_timeout_s;
	const char *allow_mounts[RT_MAX_LIST]; /* host path prefixes for volumes */
	size_t n_allow_mounts;
	const char *registry_allow[RT_MAX_LIST]; /* empty: any registry not denied */
	size_t n_registry_allow;
	const char *registry_deny[RT_MAX_LIST];
	size_t n_registry_deny;
};

/* Fills rc from the agent's flags (--runtime, --container-storage,
 * --gpu-devices, --memory-per-gpu, --max-memory, --pids, --max-pids, --shm,
 * --max-shm, --no-bridge-network, --pull-timeout, --allow-mount,
 * --registry-allow, --registry-deny). state_dir names the agent (its
 * containers' label). Returns 0, or EXIT_USAGE after printing why. */
int rt_config_init(struct rt_config *rc, struct ctx *c, const char *state_dir, bool simulate);

/* What the launcher needs of a lease; every pointer is borrowed. */
struct rt_lease {
	uint64_t lease_id, job_id, node_id;
	const Gpumatch__V1__JobSpec *spec;
	const uint32_t *gpu_indexes;
	size_t n_gpus;
	char *const *gpu_uuids; /* per node GPU index; may hold "" */
	uint32_t gang_index, gang_size;
	int64_t deadline_us;
	const char *peers;       /* "host:port,..." */
	const char *scratch_dir; /* host directory mounted at /scratch */
	/* the digest this node's engine gave for spec->image on an earlier
	 * start ("" or NULL = none): the image is taken as present and run at
	 * once; only if the run cannot find it is it looked up (and pulled) */
	const char *known_digest;
};

/* Checks a lease against the node's rules before anything runs: the
 * registry lists, the caps, the mount allow list, the network rule.
 * Returns 0, or -1 with why and *failure_reason (FailureReason: IMAGE_PULL
 * for a refused registry, AGENT_ERROR otherwise). */
int rt_check(const struct rt_config *rc, const struct rt_lease *l, int *failure_reason, char *why,
             size_t why_len);

/* Runs in the job's forked child, in its own process group: pulls the image
 * when missing (bounded by the pull timeout), runs the container attached
 * with stdout and stderr on log_fd, and exits with the container's exit
 * status. Progress goes to status_fd as lines the agent reads with
 * rt_status_line: "PHASE PULLING|STARTING|RUNNING", "DIGEST sha256:…"
 * (before the start when known, and what the container ran once it
 * exited), "PULLFAIL <message>", "EXIT <code> <oom 0|1>". Never returns. */
void rt_launch(const struct rt_config *rc, const struct rt_lease *l, int status_fd, int log_fd)
    __attribute__((noreturn));

/* Status of a container job as the launcher tells it. */
struct rt_status {
	char phase[16];
	char digest[80];
	bool pull_failed;
	char message[512]; /* pull failure text */
	bool exited;
	int exit_code;
	bool oom;
};

/* Applies one status line (without the newline) to st. */
void rt_status_line(struct rt_status *st, const char *line);

/* Asynchronous runtime commands (a child the agent's SIGCHLD handler
 * reaps): stop with a grace (SIGTERM, SIGKILL after grace_s), kill now,
 * remove the container and the scratch directory. */
void rt_stop(const struct rt_config *rc, uint64_t lease_id, int grace_s);
void rt_kill(const struct rt_config *rc, uint64_t lease_id);
void rt_remove(const struct rt_config *rc, uint64_t lease_id, const char *scratch_dir);

/* At start-up: removes, in a child of its own (the agent does not wait),
 * every container of this agent made by an earlier run of it — their
 * leases were lost with that run. Containers of this run are never
 * touched, however late the child gets to them. */
void rt_remove_orphans(const struct rt_config *rc);

/* The container name of a lease: "gm-lease-<id>". */
void rt_name(uint64_t lease_id, char *out, size_t len);

#endif
