/* trace.h — readers for the workload traces the simulator replays: node
 * inventories, job lists and per-job-type throughput tables, in the formats
 * of the public traces (Alibaba GPU v2023, Microsoft ITP, Gavel) and in
 * gpumatch's own CSV format (docs/traces.md), which history export writes.
 *
 * Readers do file I/O but keep no global state. Each returns 0, or -1 with
 * a message in err naming the file, the line and the column at fault. */
#ifndef GPUMATCH_TRACE_H
#define GPUMATCH_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sched.h"

#define TRACE_NAME_BYTES 64

/* A GPU model of the fleet, with what the matcher needs to know. */
struct trace_model {
	char name[TRACE_NAME_BYTES]; /* gpumatch model name, e.g. "V100-SXM2-16GB" */
	uint32_t memory_mib;
	uint16_t compute_cap;           /* major*10 + minor */
	float tflops[SCHED_PREC_COUNT]; /* verified figures; 0 = precision absent */
	int64_t price_micros;           /* per GPU-hour */
	uint32_t first_line;            /* the inventory line that defined it */
};

struct trace_node {
	uint64_t id; /* != 0, unique */
	char region[TRACE_NAME_BYTES];
	uint32_t model; /* index into trace_fleet.models */
	uint32_t ngpus; /* 1..64 */
	int64_t price_micros;
};

struct trace_fleet {
	struct trace_model *models;
	uint32_t nmodels;
	struct trace_node *nodes;
	uint32_t nnodes;
	uint64_t gpus;
};

struct trace_job {
	uint64_t id;         /* != 0, unique within the list */
	uint64_t tenant;     /* 0 = none given: the simulator draws one */
	int64_t submit_us;   /* arrival */
	int64_t duration_us; /* running time on the reference GPU, > 0 */
	uint32_t gpus_per_node;
	uint32_t node_count;
	uint32_t priority_class;
	bool preemptible;
	char type[TRACE_NAME_BYTES]; /* job type; "" = the simulator draws one */
};

struct trace_jobs {
	struct trace_job *v;
	uint32_t n;
};

/* A per-job-type throughput table: rows (job type, GPUs of the job), one
 * column per GPU kind; 0 = not measured. Column 0 is the reference GPU on
 * which trace durations are taken. */
struct trace_tputs {
	char (*types)[TRACE_NAME_BYTES]; /* distinct job types, in file order */
	uint32_t ntypes;
	char (*cols)[TRACE_NAME_BYTES]; /* GPU kinds, e.g. "v100" or a model name */
	uint32_t ncols;
	struct trace_tput_row {
		uint32_t type;  /* index into types */
		uint32_t scale; /* GPUs of the job this row was measured with */
		float *speed;   /* ncols entries, steps/s; 0 = not measured */
	} * rows;
	uint32_t nrows;
};

/* Which format a file is in, decided by its header line. */
enum trace_format {
	TRACE_FMT_UNKNOWN = 0,
	TRACE_FMT_ALIBABA_NODES,    /* sn,cpu_milli,memory_mib,gpu,model */
	TRACE_FMT_ALIBABA_PODS,     /* name,cpu_milli,memory_mib,num_gpu,gpu_milli,... */
	TRACE_FMT_MSR_JOBS,         /* job_id,submission_time,duration,num_gpu */
	TRACE_FMT_GM_NODES,         /* gpumatch: node_id,region,model,gpus,... */
	TRACE_FMT_GM_JOBS,          /* gpumatch: job_id,tenant_id,submit_us,... */
	TRACE_FMT_TPUTS_CSV,        /* job_type,scale_factor,<gpu>,<gpu>,... */
	TRACE_FMT_TPUTS_GAVEL_JSON, /* Gavel's simulation_throughputs.json */
};

/* The header lines of gpumatch's own formats (written by history export). */
#define TRACE_GM_NODES_HEADER                                                                   \
	"node_id,region,model,gpus,memory_mib,compute_cap,fp32_tflops,tf32_tflops,fp16_tflops," \
	"bf16_tflops,fp8_tflops,price_per_gpu_hour_micros"
#define TRACE_GM_JOBS_HEADER                                                              \
	"job_id,tenant_id,submit_us,duration_us,gpus_per_node,node_count,priority_class," \
	"preemptible,job_type"

enum trace_format trace_detect(const char *path, char *err, size_t err_len);

/* Reads a node inventory (Alibaba node list or gpumatch nodes CSV) into
 * *out, which the caller releases with trace_fleet_free. Alibaba models
 * are mapped to gpumatch model names with datasheet figures (trace.c);
 * CPU-only rows (gpu = 0) are skipped. */
int trace_read_nodes(const char *path, struct trace_fleet *out, char *err, size_t err_len);
/* Same, from text in memory (gpumatch format only); name is used in errors. */
int trace_parse_nodes(const char *name, char *text, struct trace_fleet *out, char *err,
                      size_t err_len);
void trace_fleet_free(struct trace_fleet *f);

/* Reads a job list (MSR ITP cluster CSV, Alibaba pod list or gpumatch jobs
 * CSV). Jobs wider than 8 GPUs become gangs of 8-GPU nodes; Alibaba pods
 * with a fractional GPU ask for one; CPU-only pods are skipped. Durations
 * below one second become one second. Released with trace_jobs_free. */
int trace_read_jobs(const char *path, struct trace_jobs *out, char *err, size_t err_len);
int trace_parse_jobs(const char *name, char *text, struct trace_jobs *out, char *err,
                     size_t err_len);
void trace_jobs_free(struct trace_jobs *j);

/* Reads a throughput table: Gavel's isolated_throughputs CSV (or any CSV
 * with the header job_type,scale_factor,<gpu>...) or Gavel's
 * simulation_throughputs.json (its "null" entries). Released with
 * trace_tputs_free. */
int trace_read_tputs(const char *path, struct trace_tputs *out, char *err, size_t err_len);
void trace_tputs_free(struct trace_tputs *t);

/* The measured speed of a job type (index) with gpus GPUs on column col:
 * the row with the largest scale <= gpus (scale 1 at least); 0 when not
 * measured. */
float trace_tput_speed(const struct trace_tputs *t, uint32_t type, uint32_t gpus, uint32_t col);

/* Does throughput column col stand for fleet model m? True when the names
 * are equal (ignoring case) or col is a short GPU kind ("v100", "p100",
 * "k80", "t4", "a100", ...) that the model name starts with. */
bool trace_col_matches(const char *col, const char *model);

/* Built-in figures for a model of the Alibaba inventory ("V100M16", "G2",
 * ...), or NULL when unknown. */
const struct trace_model *trace_alibaba_model(const char *trace_name);

/* ---- the speed model (data/speed-model.csv, data/gpu-roofline.csv) ------------ */

/* A GPU model's roofline figures. */
struct speed_gpu {
	char name[TRACE_NAME_BYTES];
	float peak[SCHED_PREC_COUNT]; /* dense TFLOPS; 0 = no such path */
	float mem_bw_gbps;
	float memory_gib;
	uint32_t line;
};

/* One job type at one GPU count: the compute-bound share of a step on the
 * reference GPU, the precision its compute runs in, the memory it needs. */
struct speed_row {
	char type[TRACE_NAME_BYTES];
	uint32_t scale;
	enum sched_precision precision;
	float compute_share; /* 0..1 */
	float mem_gib;       /* 0 = fits every GPU */
	uint32_t line;
};

struct speed_model {
	struct speed_gpu *gpus;
	uint32_t ngpus;
	struct speed_row *rows;
	uint32_t nrows;
};

/* Reads the per-job-type rows and the GPU table; duplicate rows are errors
 * naming both lines. Released with speed_model_free. */
int speed_model_read(const char *rows_path, const char *gpus_path, struct speed_model *out,
                     char *err, size_t err_len);
void speed_model_free(struct speed_model *m);
/* The GPU row of a model name (ignoring case; a short kind such as "v100"
 * names the first model it starts), or NULL. */
const struct speed_gpu *speed_model_gpu(const struct speed_model *m, const char *model);
/* The row of a job type for a job of gpus GPUs: the largest scale <= gpus
 * (scale 1 at least), or NULL. */
const struct speed_row *speed_model_row(const struct speed_model *m, const char *type,
                                        uint32_t gpus);
/* Speed on g relative to speed on ref (roofline: compute share over the
 * peak in the row's precision, the rest over memory bandwidth); 0 when the
 * job does not fit in g's memory or an argument is NULL. */
double speed_model_rel(const struct speed_row *w, const struct speed_gpu *g,
                       const struct speed_gpu *ref);

#endif
