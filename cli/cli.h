/* cli.h — what the gpumatch command's modules share: the parsed command
 * line, exit codes, RPC and output helpers. */
#ifndef GPUMATCH_CLI_H
#define GPUMATCH_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

/* Exit codes (docs/cli.md). */
enum {
	EXIT_OK = 0,
	EXIT_SERVER = 1,      /* the server answered with an error */
	EXIT_USAGE = 2,       /* bad flags, arguments or input files */
	EXIT_UNREACHABLE = 3, /* no answer from gpumatchd */
	EXIT_JOB_FAILED = 4,  /* watch: the job failed */
	EXIT_JOB_STOPPED = 5, /* watch: the job was cancelled or preempted */
};

/* One flag of a command. arg: the value's name in help ("N"), NULL for a
 * switch. multi: may be given more than once. */
struct optdef {
	const char *name;
	const char *arg;
	const char *help;
	bool multi;
};

struct ctx;

/* One command: words ("node list"), positional synopsis, summary, flags
 * (terminated by a zeroed entry), positional count bounds (max -1 = any). */
struct cmd {
	const char *words;
	const char *args;
	const char *summary;
	const struct optdef *opts;
	int min_pos, max_pos;
	int (*run)(struct ctx *c);
	bool rest; /* takes "-- argv..." */
};

struct optval {
	const char *name;
	const char *val; /* "" for switches */
};

/* The parsed command line and the resolved connection settings. */
struct ctx {
	const struct cmd *cmd;
	char url[512];
	char token[512];
	char ca_file[1024]; /* --ca-file, GPUMATCH_CA_FILE or the config's ca_file */
	char config_path[1024];
	int timeout_s;
	bool json; /* --output json */
	int npos;
	char **pos;
	int nrest;
	char **rest; /* after "--" */
	size_t nval;
	struct optval val[256];
	const char *input_file; /* the file the request came from, named in its errors */
	/* wire field names a server error may start with and what this
	 * command calls them ({"amountMicros", "AMOUNT"}, ...; NULL-ended) */
	const char *const (*aliases)[2];
};

/* The command tables of the modules. */
extern const struct cmd cmds_jobs[], cmds_nodes[], cmds_admin[], cmds_agent[];
extern const struct cmd cmds_logs[];

/* ---- flags (main.c) ---- */
const char *opt_str(const struct ctx *c, const char *name); /* last value or NULL */
bool opt_has(const struct ctx *c, const char *name);
/* Every value of a multi flag, in order: returns the count, fills out[0..max). */
size_t opt_all(const struct ctx *c, const char *name, const char **out, size_t max);
/* Prints "gpumatch <words>: <msg>" and the usage hint; returns EXIT_USAGE. */
int usage_error(const struct ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Positional argument i as an id (> 0). Returns 0 or usage_error. */
int pos_id(struct ctx *c, int i, const char *what, uint64_t *out);

/* ---- values ---- */
/* "90s", "15m", "2h", "1d", "500ms", "250us" or plain seconds -> us. -1 if bad. */
int64_t parse_duration_us(const char *s);
/* "1.5" (currency units) -> micros. Returns 0, -1 if bad. */
int parse_money_micros(const char *s, int64_t *out);
/* Sets o[path] (dotted, objects made on the way) to v (stolen). */
void jset(json_t *o, const char *path, json_t *v);
/* A decimal string json value for a 64-bit number. */
json_t *jint64(int64_t v);
json_t *juint64(uint64_t v);
/* Window {"startUs": now - since} from --since when given. */
int set_window_since(struct ctx *c, json_t *req, const char *path);

/* "queued" -> "JOB_STATE_QUEUED" with prefix "JOB_STATE_"; a full name
 * passes unchanged. */
json_t *enum_arg(const char *prefix, const char *v);

/* ---- nodes (nodes.c) ---- */
/* A RegisterNodeRequest JSON tree from --simulate FILE or `gpu-probe info`
 * (--probe PATH, else gpu-probe on PATH) and the node flags (--name,
 * --region, --price, --label, --address). NULL after printing why; *rc is
 * the exit code then. */
json_t *node_request(struct ctx *c, int *rc);

/* ---- RPCs ---- */
/* Decodes req (a proto3 JSON tree, stolen) as the request of
 * <service>/<method> and calls it. On success returns EXIT_OK and *resp
 * (the caller frees it with protobuf_c_message_free_unpacked). Otherwise
 * prints the error (field-naming decode errors as usage errors, server
 * errors with code and message) and returns the exit code. */
int call_json(struct ctx *c, const char *service, const char *method, json_t *req,
              ProtobufCMessage **resp);
/* --tenant (or another flag naming a tenant) given as an id or a name:
 * sets key in req to the tenant's id. A name is looked up with ListTenants
 * (admins). Returns EXIT_OK, or prints one line naming the flag and returns
 * the exit code. */
int tenant_ref(struct ctx *c, const char *flag, const char *v, json_t *req, const char *key);
/* The same with a ready request message. */
int call_msg(struct ctx *c, const char *service, const char *method, const ProtobufCMessage *req,
             ProtobufCMessage **resp);

/* ---- output (output.c) ---- */
enum col_fmt {
	F_STR,
	F_NUM,   /* 0 when absent */
	F_ENUM,  /* prefix removed: JOB_STATE_QUEUED -> QUEUED */
	F_MONEY, /* micros -> 1.50, <0.01 */
	F_TIME,  /* us since epoch -> 2026-01-02 03:04:05 (UTC) */
	F_DUR,   /* us -> 1h30m */
	F_LIST,  /* array of scalars -> a,b,c */
	F_MAP,   /* object -> k=v,k=v */
	F_BOOL,
	F_PPM,          /* parts per million -> 99.5% */
	F_DUR0,         /* as F_DUR, but absent (proto3's zero) is 0s, not "-" */
	F_PPM_MEASURED, /* as F_PPM, but absent (0: not measured yet) is "-" */
	F_GPUS,         /* array of Gpu -> 8x A100-SXM4-80GB */
};

struct col {
	const char *head;
	const char *path; /* "spec.gpusPerNode", "placement[].nodeId" */
	enum col_fmt fmt;
};

/* The message as a jansson tree (proto3 JSON mapping); NULL if out of memory. */
json_t *msg_to_json(const ProtobufCMessage *m);
/* Prints m as indented JSON. */
void out_json(const ProtobufCMessage *m);
/* An enum value without its type prefix: FIT_MODE_PACK -> PACK. */
void enum_text(const char *s, char *buf, size_t len);
/* Micro-units as people read money: "12.34", "<0.01" (docs/cli.md). */
void money_text(int64_t m, char *buf, size_t len);
/* A table of the objects in array rows (NULL = empty), aligned; header
 * from the columns' heads. */
void out_table(json_t *rows, const struct col *cols, size_t ncols);
/* "HEAD:  value" lines for one object. */
void out_fields(json_t *obj, const struct col *cols, size_t ncols);
/* One cell as text into buf. */
const char *cell_text(json_t *obj, const struct col *col, char *buf, size_t len);
/* The value at path in o (no [] here), borrowed, or NULL. */
json_t *jpath(json_t *o, const char *path);

/* Prints resp: JSON mode the whole message; table mode the array at
 * list_path as a table, or (list_path NULL) the object at obj_path ("" =
 * the whole message) as fields. */
void out_reply(struct ctx *c, const ProtobufCMessage *resp, const char *list_path,
               const char *obj_path, const struct col *cols, size_t ncols);

/* ---- job spec files (spec.c) ---- */
/* Reads a job spec file (YAML or JSON; docs/jobs.md) into a
 * SubmitJobRequest JSON tree (new reference). NULL on failure, err names the
 * file, line or field. */
json_t *spec_load(const char *path, char *err, size_t err_len);
/* Reads a YAML or JSON file into a JSON tree; NULL and err on failure. */
json_t *tree_load(const char *path, char *err, size_t err_len);
/* Rewrites the spec file conveniences (maxDuration: "2h",
 * maxPricePerGpuHour: "2.50") into the contract's fields. 0 or -1 + err. */
int spec_sugar(json_t *spec, char *err, size_t err_len);

#define NELEM(a) (sizeof(a) / sizeof *(a))

#endif
