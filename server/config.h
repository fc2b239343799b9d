/* config.h — gpumatchd's configuration: one table of keys with defaults,
 * read from a file, then GPUMATCH_<KEY> environment variables, then
 * --key=value flags. Keys marked reloadable take effect on SIGHUP. */
#ifndef GPUMATCH_CONFIG_H
#define GPUMATCH_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define LEDGER_MAX_SWEEP_SHARDS 16 /* ledger_sweep_shards at most */

struct cfg {
	char listen_host[64];
	int listen_port;
	char pg_conninfo[512];
	int pg_pool_size;
	char redis_host[128];
	int redis_port;
	char log_level[16];
	long max_body_bytes;
	long max_page_bytes; /* one List answer page, encoded */
	int request_timeout_ms;
	int idle_timeout_ms;
	int max_connections;
	int max_connections_per_client;
	int header_timeout_ms;
	int body_timeout_ms;
	int long_poll_max_ms;
	int heartbeat_interval_ms;
	int heartbeat_timeout_ms;
	int lease_pickup_timeout_ms;
	int lease_offer_timeout_ms;      /* AcquireLease -> ConfirmLease, else withdrawn */
	int test_die_after_lease_commit; /* test-only: die after the Nth offer commits */
	int pg_stall_timeout_ms;         /* no answer from Postgres this long: unavailable */
	int cycle_interval_ms;
	int reconcile_interval_ms;
	int max_attempts;
	int group_commit_max;
	int group_commit_inflight;
	int group_commit_delay_us;
	int ledger_settle_interval_ms;
	int ledger_meter_interval_ms;
	int ledger_sweep_shards; /* 1..LEDGER_MAX_SWEEP_SHARDS */
	bool allow_unverified;
	int rollup_interval_ms;
	int rollup_retention_hours;
	char instance_id[64];
	char traces_dir[512];
	char probe_peaks_file[512];       /* "" = the shipped data/gpu-peaks.csv */
	char probe_peaks_extra_file[512]; /* admin's rows, override the shipped ones */
	int probe_dim;                    /* challenge m = n = k */
	int probe_chain_length;           /* GEMMs per challenge */
	int probe_open_rows;              /* rows opened per GPU */
	int probe_commit_timeout_ms;      /* issue -> commitment */
	int probe_open_timeout_ms;        /* commitment -> opening */
	int probe_attempts_per_hour;      /* challenges per node per hour */
	int probe_peak_margin_pct;        /* above peak x (1 + this/100): spoofed */
	int probe_min_ratio_pct;          /* below claim x this/100: rejected */
	long log_cap_bytes;               /* job output kept per lease */
	long log_retention_s;             /* after the lease ended and the last write */
	char volume_allow_paths[1024];    /* comma-separated host path prefixes */
	char tls_cert_file[512];          /* PEM chain, leaf first; "" = plaintext */
	char tls_key_file[512];           /* PEM private key */
	char tls_client_ca_file[512];     /* CAs of agents' client certificates */
	bool allow_plaintext;             /* plaintext on a non-loopback address */
	char metrics_listen[128];         /* "HOST:PORT" plaintext loopback metrics; "" = none */
	char redis_password_file[512];
	bool redis_tls;                  /* TLS to Redis (rds_tls's tunnel) */
	char redis_tls_ca_file[512];     /* CAs of Redis' certificate; "" = system store */
	char redis_tls_cert_file[512];   /* client certificate for Redis; "" = none */
	char redis_tls_key_file[512];    /* its key */
	char redis_tls_server_name[256]; /* name in Redis' certificate; "" = redis_host */
	char config_file[256];
};

/* Fills c with defaults, then the file named by --config=PATH or
 * GPUMATCH_CONFIG (if any), then the environment, then the flags in
 * argv[first..argc). Returns 0, or -1 with err naming the key. */
int cfg_load(struct cfg *c, int argc, char **argv, int first, char *err, size_t err_len);

/* Re-reads the file and environment into a copy and applies only the
 * reloadable keys to c. Returns 0, or -1 (c unchanged) with err. */
int cfg_reload(struct cfg *c, char *err, size_t err_len);

/* Copies conninfo (a libpq "key=value ..." string or a postgres:// URI) to
 * out with every password replaced by "***", for logs and errors. */
void cfg_redact_conninfo(const char *conninfo, char *out, size_t out_len);

/* Reads a secret from the first line of path (trailing newline dropped)
 * into out. Refuses a file group or others may read or write. Returns 0, or
 * -1 with err naming key and path (never the content). */
int cfg_read_secret_file(const char *key, const char *path, char *out, size_t out_len, char *err,
                         size_t err_len);

/* Writes every key, its default, whether it reloads, and what it means. */
void cfg_print_help(FILE *out);

#endif
