/* probe.c — NodeService RequestChallenge and SubmitProbe: issuing a probe
 * challenge bound to a node and its GPUs' UUIDs, timing the commitment on
 * the server's clock, choosing rows only after it, checking the opened rows
 * exactly (recomputed off the event loop), judging the proved throughput
 * against the claim and the model's expected peak, and recording every
 * attempt in probe_runs. The arithmetic is gpu-probe/challenge.c's. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "challenge.h"
#include "gpumatch/v1/node_service.pb-c.h"
#include "log.h"
#include "service.h"
#include "strbuf.h"
#include "worker.h"

enum run_state {
	RUN_ISSUED = 1,
	RUN_COMMITTED = 2,
	RUN_PASSED = 3,
	RUN_FAILED = 4,
	RUN_ABANDONED = 5,
};

#define R_FAIL GPUMATCH__V1__PROBE_RESULT__PROBE_RESULT_FAIL
#define R_PASS GPUMATCH__V1__PROBE_RESULT__PROBE_RESULT_PASS
#define F(x)   GPUMATCH__V1__PROBE_FAILURE_REASON__PROBE_FAILURE_REASON_##x
#define VS(x)  GPUMATCH__V1__VERIFICATION_STATUS__VERIFICATION_STATUS_##x

static const char *const precision_name[] = { "?", "FP32", "TF32", "FP16", "BF16", "FP8" };

/* ---- expected peaks ------------------------------------------------------------------ */

struct peak {
	uint32_t vendor, device;
	char product[64];
	double tflops[6]; /* by Precision; 0 = none */
};

struct peak_table {
	struct peak *rows;
	size_t n;
};

static struct {
	struct peak_table peaks;
	int inflight;             /* verifications running off the loop */
	uint64_t issued;          /* challenges issued */
	uint64_t verdicts[2][10]; /* [passed][ProbeFailureReason] */
} P;

/* Reads one CSV of peaks; rows for a vendor:device already known replace
 * it. Returns 0, or -1 with err naming the file and line. */
static int peaks_load(struct peak_table *t, const char *path, char *err, size_t err_len)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, err_len, "probe_peaks_file %s: %s", path, strerror(errno));
		return -1;
	}
	char line[512];
	int lineno = 0, rc = 0;
	bool header = false;
	while (fgets(line, sizeof line, f)) {
		lineno++;
		char *s = line + strspn(line, " \t");
		if (*s == '#' || *s == '\n' || *s == '\0')
			continue;
		if (!header) {
			header = true; /* the column names */
			continue;
		}
		struct peak pk;
		memset(&pk, 0, sizeof pk);
		unsigned v, d;
		int used = 0;
		if (sscanf(s, "%x,%x,%63[^,],%lf,%lf,%lf,%lf,%lf%n", &v, &d, pk.product,
		           &pk.tflops[1], &pk.tflops[2], &pk.tflops[3], &pk.tflops[4],
		           &pk.tflops[5], &used) != 8) {
			snprintf(
			    err, err_len,
			    "%s:%d: expected pci_vendor_id,pci_device_id,product,fp32,tf32,fp16,"
			    "bf16,fp8[,mem_bw_gbps]",
			    path, lineno);
			rc = -1;
			break;
		}
		pk.vendor = v;
		pk.device = d;
		size_t i = 0;
		while (i < t->n && !(t->rows[i].vendor == v && t->rows[i].device == d))
			i++;
		if (i == t->n) {
			struct peak *more = realloc(t->rows, (t->n + 1) * sizeof *more);
			if (!more) {
				snprintf(err, err_len, "out of memory");
				rc = -1;
				break;
			}
			t->rows = more;
			t->n++;
		}
		t->rows[i] = pk;
	}
	fclose(f);
	return rc;
}

/* The peak row for a GPU: by PCI ids, else by product = model. */
static const struct peak *peak_find(const Gpumatch__V1__Gpu *g)
{
	for (size_t i = 0; i < P.peaks.n; i++)
		if (g->pci_device_id && P.peaks.rows[i].device == g->pci_device_id &&
		    (!g->pci_vendor_id || P.peaks.rows[i].vendor == g->pci_vendor_id))
			return &P.peaks.rows[i];
	for (size_t i = 0; i < P.peaks.n; i++)
		if (g->model && !strcmp(P.peaks.rows[i].product, g->model))
			return &P.peaks.rows[i];
	return NULL;
}

/* Reads the configured peak files into a new table; the old one stays
 * when they do not parse. */
static int peaks_read(struct app *a, char *err, size_t err_len)
{
	/* "": the shipped copy (installed, else the source tree's) */
	char shipped[1024];
	const char *path = a->cfg.probe_peaks_file[0]
	                       ? a->cfg.probe_peaks_file
	                       : share_path("gpu-peaks.csv", shipped, sizeof shipped);
	struct peak_table t = { NULL, 0 };
	if (peaks_load(&t, path, err, err_len) ||
	    (a->cfg.probe_peaks_extra_file[0] &&
	     peaks_load(&t, a->cfg.probe_peaks_extra_file, err, err_len))) {
		free(t.rows);
		return -1;
	}
	free(P.peaks.rows);
	P.peaks = t;
	log_info("probe peaks loaded products=%zu file=%s extra=%s", t.n, path,
	         a->cfg.probe_peaks_extra_file);
	return 0;
}

int probe_start(struct app *a, char *err, size_t err_len)
{
	probe_stop(a);
	return peaks_read(a, err, err_len);
}

void probe_reload(struct app *a)
{
	char err[512];
	if (peaks_read(a, err, sizeof err))
		log_error("probe peaks not reloaded, keeping the old table err=\"%s\"", err);
}

void probe_stop(struct app *a)
{
	(void)a;
	free(P.peaks.rows);
	P.peaks.rows = NULL;
	P.peaks.n = 0;
}

void probe_metrics(struct app *a, struct evbuffer *b)
{
	(void)a;
	evbuffer_add_printf(b,
	                    "# HELP gpumatch_probe_challenges_total Probe challenges issued.\n"
	                    "# TYPE gpumatch_probe_challenges_total counter\n"
	                    "gpumatch_probe_challenges_total %" PRIu64 "\n"
	                    "# HELP gpumatch_probe_verifications_running Openings being "
	                    "recomputed off the loop.\n"
	                    "# TYPE gpumatch_probe_verifications_running gauge\n"
	                    "gpumatch_probe_verifications_running %d\n"
	                    "# HELP gpumatch_probe_verdicts_total Probe verdicts by result and "
	                    "failure reason.\n"
	                    "# TYPE gpumatch_probe_verdicts_total counter\n",
	                    P.issued, P.inflight);
	for (int pass = 0; pass < 2; pass++)
		for (int r = 0; r < 10; r++) {
			const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(
			    &gpumatch__v1__probe_failure_reason__descriptor, r);
			if (!ev || (pass && r) || (!pass && !r))
				continue;
			evbuffer_add_printf(b,
			                    "gpumatch_probe_verdicts_total{result=\"%s\","
			                    "reason=\"%s\"} %" PRIu64 "\n",
			                    pass ? "pass" : "fail",
			                    r ? ev->name + strlen("PROBE_FAILURE_REASON_") : "none",
			                    P.verdicts[pass][r]);
		}
}

bool probe_idle(struct app *a)
{
	(void)a;
	return P.inflight == 0;
}

/* ---- shared helpers ---------------------------------------------------------------- */

static uint64_t scope_operator(struct rpc_call *call)
{
	const struct principal *p = rpc_principal(call);
	return p->role == ROLE_OPERATOR ? p->operator_id : 0;
}

static double claimed_of(const Gpumatch__V1__Throughput *t, int precision)
{
	if (!t)
		return 0;
	switch (precision) {
	case 1:
		return t->fp32_tflops;
	case 2:
		return t->tf32_tflops;
	case 3:
		return t->fp16_tflops;
	case 4:
		return t->bf16_tflops;
	case 5:
		return t->fp8_tflops;
	}
	return 0;
}

static void set_tflops(Gpumatch__V1__Throughput *t, int precision, double v)
{
	double *slot[] = {
		NULL,          &t->fp32_tflops, &t->tf32_tflops, &t->fp16_tflops, &t->bf16_tflops,
		&t->fp8_tflops
	};
	if (precision >= 1 && precision <= 5)
		*slot[precision] = v;
}

static bool lists_precision(const Gpumatch__V1__Gpu *g, int precision)
{
	for (size_t i = 0; i < g->n_precisions; i++)
		if ((int)g->precisions[i] == precision)
			return true;
	return false;
}

static char *hex_param(const uint8_t *p, size_t n)
{
	static const char hx[] = "0123456789abcdef";
	char *out = malloc(2 * n + 3);
	if (!out)
		return NULL;
	out[0] = '\\';
	out[1] = 'x';
	for (size_t i = 0; i < n; i++) {
		out[2 + 2 * i] = hx[p[i] >> 4];
		out[3 + 2 * i] = hx[p[i] & 15];
	}
	out[2 + 2 * n] = '\0';
	return out;
}

static Gpumatch__V1__Node *unpack_facts(const PGresult *r, int row, int col)
{
	size_t len;
	uint8_t *raw = col_bytea(r, row, col, &len);
	Gpumatch__V1__Node *n = raw ? gpumatch__v1__node__unpack(NULL, len, raw) : NULL;
	free(raw);
	return n;
}

/* ---- RequestChallenge ------------------------------------------------------------------- */

struct req_ctx {
	struct rpc_call *call;
	uint64_t node_id;
	uint32_t indexes[64];
	size_t nindexes;
	int precision;
	/* the challenge, once built */
	Gpumatch__V1__ProbeChallenge ch;
	Gpumatch__V1__ProbeTarget targets[SCHED_MAX_GPUS_PER_NODE];
	Gpumatch__V1__ProbeTarget *tptrs[SCHED_MAX_GPUS_PER_NODE];
	char uuids[SCHED_MAX_GPUS_PER_NODE][CHALLENGE_MAX_UUID];
	uint8_t seed[CHALLENGE_SEED_BYTES];
};

static void issue_cb(enum pg_status st, PGresult *res, const char *ss, const char *err, void *arg)
{
	struct req_ctx *rc = arg;
	if (st != PG_OK) {
		reply_pg_error(rc->call, st, ss, err);
	} else if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
		rpc_error(rc->call, RPC_RESOURCE_EXHAUSTED,
		          "node %" PRIu64 " has had %d probe challenges in the last hour (the "
		          "limit); try again later",
		          rc->node_id, app_get()->cfg.probe_attempts_per_hour);
	} else {
		rc->ch.challenge_id = col_u64(res, 0, 0);
		P.issued++;
		log_info("probe challenge issued challenge=%" PRIu64 " node=%" PRIu64
		         " gpus=%zu precision=%s m=%u chain=%u",
		         rc->ch.challenge_id, rc->node_id, rc->ch.n_gpus,
		         precision_name[rc->ch.precision], rc->ch.m, rc->ch.chain_length);
		Gpumatch__V1__RequestChallengeResponse resp =
		    GPUMATCH__V1__REQUEST_CHALLENGE_RESPONSE__INIT;
		resp.challenge = &rc->ch;
		rpc_reply(rc->call, &resp.base);
	}
	free(rc);
}

static void challenge_node_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                              void *arg)
{
	struct req_ctx *rc = arg;
	struct app *a = app_get();
	Gpumatch__V1__Node *facts = NULL;
	char *seed_hex = NULL;
	struct strbuf idx = { 0 }, uuids = { 0 };
	if (st != PG_OK) {
		reply_pg_error(rc->call, st, ss, err);
		goto fail;
	}
	if (PQntuples(res) != 1) {
		rpc_error(rc->call, RPC_NOT_FOUND, "nodeId: node %" PRIu64 " not found",
		          rc->node_id);
		goto fail;
	}
	facts = unpack_facts(res, 0, 0);
	if (!facts) {
		rpc_error(rc->call, RPC_INTERNAL, "stored node could not be read");
		goto fail;
	}
	if (!rc->nindexes) {
		for (size_t i = 0; i < facts->n_gpus && i < 64; i++)
			rc->indexes[rc->nindexes++] = (uint32_t)i;
	}
	const Gpumatch__V1__Gpu *gpus[SCHED_MAX_GPUS_PER_NODE];
	for (size_t i = 0; i < rc->nindexes; i++) {
		uint32_t g = rc->indexes[i];
		if (g >= facts->n_gpus || i >= SCHED_MAX_GPUS_PER_NODE) {
			rpc_error(rc->call, RPC_INVALID_ARGUMENT,
			          "gpuIndexes[%zu]: node %" PRIu64 " has no GPU %u", i, rc->node_id,
			          g);
			goto fail;
		}
		gpus[i] = facts->gpus[g];
		if (!gpus[i]->uuid || !gpus[i]->uuid[0] ||
		    strlen(gpus[i]->uuid) >= CHALLENGE_MAX_UUID) {
			rpc_error(rc->call, RPC_FAILED_PRECONDITION,
			          "gpus[%u].uuid: register the GPU's UUID (as `gpu-probe info` "
			          "prints it, under %d bytes) before probing",
			          g, CHALLENGE_MAX_UUID);
			goto fail;
		}
	}
	int prec = rc->precision;
	if (prec) {
		for (size_t i = 0; i < rc->nindexes; i++)
			if (!lists_precision(gpus[i], prec)) {
				rpc_error(rc->call, RPC_INVALID_ARGUMENT,
				          "precision: GPU %u does not list %s among its precisions",
				          rc->indexes[i], precision_name[prec]);
				goto fail;
			}
	} else {
		/* the tensor-core path jobs mostly use, where every GPU has it */
		static const int order[] = { 3, 4, 2, 1, 5 };
		for (size_t o = 0; o < 5 && !prec; o++) {
			bool all = true;
			for (size_t i = 0; i < rc->nindexes; i++)
				all = all && lists_precision(gpus[i], order[o]);
			if (all)
				prec = order[o];
		}
		if (!prec)
			prec = 1;
	}
	uint32_t dim = (uint32_t)a->cfg.probe_dim;
	uint32_t range = challenge_value_range(dim, prec);
	if (getrandom(rc->seed, sizeof rc->seed, 0) != (ssize_t)sizeof rc->seed) {
		rpc_error(rc->call, RPC_INTERNAL, "no randomness for the challenge seed");
		goto fail;
	}
	int64_t now = now_us();
	Gpumatch__V1__ProbeChallenge *ch = &rc->ch;
	gpumatch__v1__probe_challenge__init(ch);
	ch->node_id = rc->node_id;
	ch->n_gpus = rc->nindexes;
	ch->gpus = rc->tptrs;
	ch->seed.data = rc->seed;
	ch->seed.len = sizeof rc->seed;
	ch->m = ch->n = ch->k = dim;
	ch->chain_length = (uint32_t)a->cfg.probe_chain_length;
	ch->repetitions = 1;
	ch->precision = (Gpumatch__V1__Precision)prec;
	ch->value_range = range;
	ch->hash_algorithm = GPUMATCH__V1__HASH_ALGORITHM__HASH_ALGORITHM_SHA256;
	ch->issued_at_us = now;
	ch->commit_deadline_us = now + (int64_t)a->cfg.probe_commit_timeout_ms * 1000;
	sb_puts(&idx, "{");
	sb_puts(&uuids, "{");
	for (size_t i = 0; i < rc->nindexes; i++) {
		snprintf(rc->uuids[i], sizeof rc->uuids[i], "%s", gpus[i]->uuid);
		gpumatch__v1__probe_target__init(&rc->targets[i]);
		rc->targets[i].gpu_index = rc->indexes[i];
		rc->targets[i].gpu_uuid = rc->uuids[i];
		rc->tptrs[i] = &rc->targets[i];
		sb_printf(&idx, "%s%u", i ? "," : "", rc->indexes[i]);
		sb_puts(&uuids, i ? "," : "");
		sb_array_str(&uuids, rc->uuids[i]);
	}
	sb_puts(&idx, "}");
	sb_puts(&uuids, "}");
	seed_hex = hex_param(rc->seed, sizeof rc->seed);
	if (!seed_hex || idx.oom || uuids.oom) {
		rpc_error(rc->call, RPC_INTERNAL, "out of memory");
		goto fail;
	}
	struct numbuf nb[10];
	const char *params[] = {
		fmt_u64(&nb[0], rc->node_id),
		idx.s,
		uuids.s,
		seed_hex,
		fmt_u64(&nb[1], dim),
		fmt_u64(&nb[2], ch->chain_length),
		fmt_u64(&nb[3], range),
		fmt_u64(&nb[4], (uint64_t)prec),
		fmt_i64(&nb[5], now),
		fmt_i64(&nb[6], ch->commit_deadline_us),
		fmt_i64(&nb[7], a->cfg.probe_attempts_per_hour),
	};
	/* The rate limit is counted in the same statement that inserts, and
	 * a new challenge abandons the node's outstanding one. */
	const char *sql =
	    "WITH recent AS (SELECT count(*) AS c FROM probe_runs"
	    "   WHERE node_id = $1::bigint AND issued_at_us > $9::bigint - 3600000000),"
	    " ab AS (UPDATE probe_runs SET state = 5, decided_at_us = $9::bigint,"
	    "   message = 'abandoned: a newer challenge was issued'"
	    "   WHERE node_id = $1::bigint AND state IN (1, 2)"
	    "   AND (SELECT c FROM recent) < $11::bigint RETURNING id),"
	    " ins AS (INSERT INTO probe_runs (node_id, gpu_indexes, gpu_uuids, seed, m, n, k,"
	    "   chain_length, value_range, precision, issued_at_us, commit_deadline_us)"
	    "   SELECT $1::bigint, $2::integer[], $3::text[], $4::bytea, $5::integer, $5::integer,"
	    "   $5::integer, $6::integer, $7::integer, $8::smallint, $9::bigint, $10::bigint"
	    "   FROM recent WHERE recent.c < $11::bigint RETURNING id),"
	    " up AS (UPDATE nodes SET last_challenge_id = ins.id,"
	    "   probe_attempts = probe_attempts + 1,"
	    "   verification_status = CASE WHEN verification_status = 3 THEN 3 ELSE 2 END"
	    "   FROM ins WHERE nodes.id = $1::bigint)"
	    " SELECT (SELECT id FROM ins), (SELECT count(*) FROM ab)";
	if (pg_exec(a->pg, NULL, sql, 11, params, issue_cb, rc)) {
		rpc_error(rc->call, RPC_UNAVAILABLE, "shutting down");
		goto fail;
	}
	rc = NULL;
fail:
	if (facts)
		protobuf_c_message_free_unpacked(&facts->base, NULL);
	free(seed_hex);
	sb_free(&idx);
	sb_free(&uuids);
	free(rc);
}

void probe_request_challenge(struct rpc_call *call, const ProtobufCMessage *msg)
{
	const Gpumatch__V1__RequestChallengeRequest *req =
	    (const Gpumatch__V1__RequestChallengeRequest *)msg;
	if (!req->node_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "nodeId: required");
		return;
	}
	if ((int)req->precision < 0 || (int)req->precision > 5) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "precision: unknown value %d",
		          (int)req->precision);
		return;
	}
	if (req->n_gpu_indexes > SCHED_MAX_GPUS_PER_NODE) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "gpuIndexes: at most %d",
		          SCHED_MAX_GPUS_PER_NODE);
		return;
	}
	for (size_t i = 0; i < req->n_gpu_indexes; i++)
		for (size_t j = 0; j < i; j++)
			if (req->gpu_indexes[i] == req->gpu_indexes[j]) {
				rpc_error(call, RPC_INVALID_ARGUMENT,
				          "gpuIndexes[%zu]: GPU %u is named twice", i,
				          req->gpu_indexes[i]);
				return;
			}
	struct req_ctx *rc = calloc(1, sizeof *rc);
	if (!rc) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	rc->call = call;
	rc->node_id = req->node_id;
	rc->precision = (int)req->precision;
	rc->nindexes = req->n_gpu_indexes;
	for (size_t i = 0; i < req->n_gpu_indexes; i++)
		rc->indexes[i] = req->gpu_indexes[i];
	struct numbuf a, b;
	const char *params[] = { fmt_u64(&a, req->node_id), fmt_u64(&b, scope_operator(call)) };
	if (pg_exec(app_get()->pg, NULL,
	            "SELECT facts_pb FROM nodes WHERE id = $1::bigint"
	            " AND ($2::bigint = 0 OR operator_id = $2::bigint) AND state <> 6",
	            2, params, challenge_node_cb, rc)) {
		free(rc);
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
	}
}

/* ---- SubmitProbe: the run as stored ---------------------------------------------------- */

struct run {
	uint64_t id, node_id;
	int state;
	size_t ngpus;
	uint32_t indexes[SCHED_MAX_GPUS_PER_NODE];
	char uuids[SCHED_MAX_GPUS_PER_NODE][CHALLENGE_MAX_UUID];
	uint8_t seed[CHALLENGE_SEED_BYTES];
	struct challenge_params p;
	int precision;
	int64_t issued_us, commit_deadline_us, commit_received_us, open_deadline_us;
	Gpumatch__V1__ProbeCommitment *com; /* stored, phase two */
	Gpumatch__V1__RowSelection *sel;    /* stored, phase two */
	Gpumatch__V1__Node *facts;
	char *facts_text; /* facts_pb as Postgres printed it, to guard the write */
};

static void run_free(struct run *r)
{
	if (r->com)
		protobuf_c_message_free_unpacked(&r->com->base, NULL);
	if (r->sel)
		protobuf_c_message_free_unpacked(&r->sel->base, NULL);
	if (r->facts)
		protobuf_c_message_free_unpacked(&r->facts->base, NULL);
	free(r->facts_text);
	memset(r, 0, sizeof *r);
}

#define RUN_SELECT                                                                       \
	"SELECT r.id, r.node_id, r.state, array_to_json(r.gpu_indexes),"                 \
	" array_to_json(r.gpu_uuids), r.seed, r.m, r.n, r.k, r.chain_length,"            \
	" r.value_range, r.precision, r.issued_at_us, r.commit_deadline_us,"             \
	" r.commit_received_at_us, r.open_deadline_us, r.commitment_pb, r.selection_pb," \
	" n.facts_pb"                                                                    \
	" FROM probe_runs r JOIN nodes n ON n.id = r.node_id"                            \
	" WHERE r.id = $1::bigint AND r.node_id = $2::bigint"                            \
	" AND ($3::bigint = 0 OR n.operator_id = $3::bigint)"

static int run_from_row(const PGresult *res, struct run *r)
{
	memset(r, 0, sizeof *r);
	r->id = col_u64(res, 0, 0);
	r->node_id = col_u64(res, 0, 1);
	r->state = (int)col_i64(res, 0, 2);
	json_t *idx = json_loads(PQgetvalue(res, 0, 3), 0, NULL);
	json_t *uu = json_loads(PQgetvalue(res, 0, 4), 0, NULL);
	int rc = -1;
	if (!json_is_array(idx) || !json_is_array(uu) ||
	    json_array_size(idx) != json_array_size(uu) ||
	    json_array_size(idx) > SCHED_MAX_GPUS_PER_NODE)
		goto out;
	r->ngpus = json_array_size(idx);
	for (size_t i = 0; i < r->ngpus; i++) {
		r->indexes[i] = (uint32_t)json_integer_value(json_array_get(idx, i));
		const char *u = json_string_value(json_array_get(uu, i));
		snprintf(r->uuids[i], sizeof r->uuids[i], "%s", u ? u : "");
	}
	size_t len;
	uint8_t *seed = col_bytea(res, 0, 5, &len);
	if (!seed || len != CHALLENGE_SEED_BYTES) {
		free(seed);
		goto out;
	}
	memcpy(r->seed, seed, len);
	free(seed);
	r->p.m = (uint32_t)col_u64(res, 0, 6);
	r->p.n = (uint32_t)col_u64(res, 0, 7);
	r->p.k = (uint32_t)col_u64(res, 0, 8);
	r->p.chain = (uint32_t)col_u64(res, 0, 9);
	r->p.value_range = (uint32_t)col_u64(res, 0, 10);
	r->precision = (int)col_i64(res, 0, 11);
	r->issued_us = col_i64(res, 0, 12);
	r->commit_deadline_us = col_i64(res, 0, 13);
	r->commit_received_us = col_i64(res, 0, 14);
	r->open_deadline_us = col_i64(res, 0, 15);
	if (!PQgetisnull(res, 0, 16)) {
		uint8_t *raw = col_bytea(res, 0, 16, &len);
		r->com = raw ? gpumatch__v1__probe_commitment__unpack(NULL, len, raw) : NULL;
		free(raw);
		if (!r->com)
			goto out;
	}
	if (!PQgetisnull(res, 0, 17)) {
		uint8_t *raw = col_bytea(res, 0, 17, &len);
		r->sel = raw ? gpumatch__v1__row_selection__unpack(NULL, len, raw) : NULL;
		free(raw);
		if (!r->sel)
			goto out;
	}
	r->facts = unpack_facts(res, 0, 18);
	r->facts_text = strdup(PQgetvalue(res, 0, 18));
	const char *why;
	if (r->facts && r->facts_text && !challenge_params_check(&r->p, &why))
		rc = 0;
out:
	json_decref(idx);
	json_decref(uu);
	return rc;
}

/* ---- SubmitProbe: verdicts --------------------------------------------------------------- */

/* Everything a SubmitProbe call carries from step to step. */
struct sub_ctx {
	struct rpc_call *call;
	uint64_t node_id, challenge_id, op;
	bool opening;                       /* phase two */
	Gpumatch__V1__ProbeCommitment *com; /* phase one: a copy of the request's */
	Gpumatch__V1__ProbeOpening *open;   /* phase two: a copy of the request's */
	struct run run;
	int64_t received_us;
	/* the verdict */
	Gpumatch__V1__ProbeVerdict v;
	Gpumatch__V1__GpuVerdict gv[SCHED_MAX_GPUS_PER_NODE];
	Gpumatch__V1__GpuVerdict *gvp[SCHED_MAX_GPUS_PER_NODE];
	char gmsg[SCHED_MAX_GPUS_PER_NODE][256];
	char msg[512];
	/* phase one's answer */
	Gpumatch__V1__RowSelection *sel;
	/* the off-loop recomputation: one worker per GPU */
	struct gpu_check {
		struct sub_ctx *sc;
		size_t i;         /* index into run.indexes */
		struct worker *w; /* NULL: never started */
		int status;       /* 0 rows match, 1 a row differs, -1 no memory */
		char text[256];   /* which row and column differed */
	} checks[SCHED_MAX_GPUS_PER_NODE];
	int pending; /* workers not yet done */
	int pipefd[2];
	struct event *ev;
};

static void sub_free(struct sub_ctx *sc)
{
	if (sc->com)
		protobuf_c_message_free_unpacked(&sc->com->base, NULL);
	if (sc->open)
		protobuf_c_message_free_unpacked(&sc->open->base, NULL);
	if (sc->sel)
		protobuf_c_message_free_unpacked(&sc->sel->base, NULL);
	run_free(&sc->run);
	free(sc);
}

static void verdict_init(struct sub_ctx *sc)
{
	gpumatch__v1__probe_verdict__init(&sc->v);
	sc->v.challenge_id = sc->challenge_id;
	sc->v.node_id = sc->node_id;
	sc->v.gpus = sc->gvp;
	sc->v.n_gpus = sc->run.ngpus;
	for (size_t i = 0; i < sc->run.ngpus; i++) {
		gpumatch__v1__gpu_verdict__init(&sc->gv[i]);
		sc->gv[i].gpu_index = sc->run.indexes[i];
		sc->gv[i].gpu_uuid = sc->run.uuids[i];
		sc->gv[i].result = R_PASS;
		sc->gv[i].message = sc->gmsg[i];
		sc->gmsg[i][0] = '\0';
		sc->gvp[i] = &sc->gv[i];
	}
	sc->v.result = R_PASS;
	sc->v.message = sc->msg;
	sc->msg[0] = '\0';
}

/* Fails GPU i (or the whole attempt, i < 0) with reason and message; the
 * first failure is the attempt's reason. */
static void fail_gpu(struct sub_ctx *sc, int i, int reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail_gpu(struct sub_ctx *sc, int i, int reason, const char *fmt, ...)
{
	char text[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	if (i >= 0 && sc->gv[i].result == R_PASS) {
		sc->gv[i].result = R_FAIL;
		sc->gv[i].reason = (Gpumatch__V1__ProbeFailureReason)reason;
		snprintf(sc->gmsg[i], sizeof sc->gmsg[i], "%s", text);
	}
	if (i < 0)
		for (size_t g = 0; g < sc->run.ngpus; g++)
			if (sc->gv[g].result == R_PASS) {
				sc->gv[g].result = R_FAIL;
				sc->gv[g].reason = (Gpumatch__V1__ProbeFailureReason)reason;
				snprintf(sc->gmsg[g], sizeof sc->gmsg[g], "%s", text);
			}
	if (sc->v.result == R_PASS) {
		sc->v.result = R_FAIL;
		sc->v.reason = (Gpumatch__V1__ProbeFailureReason)reason;
		if (i >= 0)
			snprintf(sc->msg, sizeof sc->msg, "GPU %u: %s", sc->run.indexes[i], text);
		else
			snprintf(sc->msg, sizeof sc->msg, "%s", text);
	}
}

static void record_cb(enum pg_status st, PGresult *res, const char *ss, const char *err, void *arg)
{
	struct sub_ctx *sc = arg;
	if (st != PG_OK) {
		reply_pg_error(sc->call, st, ss, err);
	} else if (PQntuples(res) != 1 || col_i64(res, 0, 0) != 1) {
		rpc_error(sc->call, RPC_FAILED_PRECONDITION,
		          "challengeId: challenge %" PRIu64 " was answered meanwhile; challenges "
		          "are single-use",
		          sc->challenge_id);
	} else {
		if (!PQgetisnull(res, 0, 1)) {
			sc->v.verification_status =
			    (Gpumatch__V1__VerificationStatus)col_i64(res, 0, 1);
		} else {
			/* the node's facts changed or a newer challenge was issued
			 * meanwhile: the attempt is recorded, the node left as it is */
			sc->v.verification_status = VS(UNSPECIFIED);
			log_warn("probe verdict not applied to the node challenge=%" PRIu64
			         " node=%" PRIu64 " (re-registered or re-challenged meanwhile)",
			         sc->challenge_id, sc->node_id);
		}
		schedloop_node_changed(app_get(), sc->node_id);
		if ((unsigned)sc->v.reason < 10)
			P.verdicts[sc->v.result == R_PASS][sc->v.reason]++;
		log_info("probe verdict challenge=%" PRIu64 " node=%" PRIu64
		         " result=%s reason=%d msg=\"%s\"",
		         sc->challenge_id, sc->node_id, sc->v.result == R_PASS ? "pass" : "fail",
		         (int)sc->v.reason, sc->msg);
		Gpumatch__V1__SubmitProbeResponse resp = GPUMATCH__V1__SUBMIT_PROBE_RESPONSE__INIT;
		resp.verdict = &sc->v;
		rpc_reply(sc->call, &resp.base);
	}
	sub_free(sc);
}

/* Stores the verdict: the run ends (from the state it was read in), and
 * the node's verification follows. On a pass the verified figures go into
 * the node's facts, unless the facts changed since they were read. */
static void record_verdict(struct sub_ctx *sc)
{
	struct app *a = app_get();
	int64_t now = now_us();
	sc->v.decided_at_us = now;
	bool pass = sc->v.result == R_PASS;
	sc->v.verification_status = pass ? VS(VERIFIED) : VS(FAILED);
	char *facts_hex = NULL, *verdict_hex = NULL;
	if (pass) {
		Gpumatch__V1__Node *f = sc->run.facts;
		for (size_t i = 0; i < sc->run.ngpus; i++) {
			Gpumatch__V1__Gpu *g = f->gpus[sc->run.indexes[i]];
			if (!g->verified) {
				/* owned by the facts from here on, freed with them */
				g->verified = malloc(sizeof *g->verified);
				if (!g->verified)
					goto oom;
				gpumatch__v1__throughput__init(g->verified);
			}
			set_tflops(g->verified, sc->run.precision, sc->gv[i].verified_tflops);
			g->verified_at_us = now;
		}
		facts_hex = pack_bytea_param(&f->base);
	}
	verdict_hex = pack_bytea_param(&sc->v.base);
	if (!verdict_hex || (pass && !facts_hex))
		goto oom;
	struct numbuf nb[6];
	const char *params[] = {
		fmt_u64(&nb[0], sc->challenge_id),
		fmt_i64(&nb[1], sc->run.state),
		fmt_i64(&nb[2], pass ? RUN_PASSED : RUN_FAILED),
		fmt_i64(&nb[3], now),
		fmt_i64(&nb[4], sc->v.result),
		fmt_i64(&nb[5], sc->v.reason),
		sc->msg,
		verdict_hex,
		pass ? "t" : "f",
		pass ? facts_hex : "\\x",
		sc->run.facts_text,
	};
	const char *sql =
	    "WITH r AS (UPDATE probe_runs SET state = $3::smallint, decided_at_us = $4::bigint,"
	    "   result = $5::smallint, reason = $6::smallint, message = $7, verdict_pb = $8::bytea"
	    "   WHERE id = $1::bigint AND state = $2::smallint RETURNING node_id),"
	    " nd AS (UPDATE nodes SET"
	    "   verification_status = CASE WHEN $9::boolean THEN 3 ELSE 4 END,"
	    "   verified_at_us = CASE WHEN $9::boolean THEN $4::bigint ELSE verified_at_us END,"
	    "   facts_pb = CASE WHEN $9::boolean THEN $10::bytea ELSE facts_pb END,"
	    "   last_probe_failure = CASE WHEN $9::boolean THEN '' ELSE $7 END,"
	    "   probe_failures = probe_failures + CASE WHEN $9::boolean THEN 0 ELSE 1 END"
	    "   FROM r WHERE nodes.id = r.node_id AND nodes.last_challenge_id = $1::bigint"
	    "   AND (NOT $9::boolean OR nodes.facts_pb = $11::bytea)"
	    "   RETURNING nodes.verification_status)"
	    " SELECT (SELECT count(*) FROM r), (SELECT verification_status FROM nd)";
	if (pg_exec(a->pg, NULL, sql, 11, params, record_cb, sc)) {
		rpc_error(sc->call, RPC_UNAVAILABLE, "shutting down");
		sub_free(sc);
	}
	goto out;
oom:
	rpc_error(sc->call, RPC_INTERNAL, "out of memory");
	sub_free(sc);
out:
	free(facts_hex);
	free(verdict_hex);
}

/* The throughput each GPU proved on the server's clock, judged against its
 * claim and its model's expected peak. */
static void judge_throughput(struct sub_ctx *sc)
{
	struct app *a = app_get();
	const struct run *r = &sc->run;
	int64_t elapsed = r->commit_received_us - r->issued_us;
	if (elapsed < 1)
		elapsed = 1;
	double flops = 2.0 * r->p.m * r->p.n * r->p.k * r->p.chain;
	double proved = flops / ((double)elapsed * 1e-6) / 1e12;
	double margin = 1.0 + a->cfg.probe_peak_margin_pct / 100.0;
	double floor_ratio = a->cfg.probe_min_ratio_pct / 100.0;
	const char *pn = precision_name[r->precision];
	for (size_t i = 0; i < r->ngpus; i++) {
		const Gpumatch__V1__Gpu *g = r->facts->gpus[r->indexes[i]];
		const struct peak *pk = peak_find(g);
		double peak = pk ? pk->tflops[r->precision] : 0;
		double claimed = claimed_of(g->claimed, r->precision);
		Gpumatch__V1__GpuVerdict *v = &sc->gv[i];
		v->expected_peak_tflops = peak;
		if (v->result != R_PASS)
			continue;
		if (peak > 0 && claimed > peak * margin) {
			fail_gpu(
			    sc, (int)i, F(ABOVE_PEAK),
			    "claimed %.4g TFLOPS %s is above the %s peak of %.4g: the GPU is not "
			    "what it says",
			    claimed, pn, pk->product, peak);
			continue;
		}
		if (peak > 0 && proved > peak * margin) {
			fail_gpu(sc, (int)i, F(ABOVE_PEAK),
			         "measured at least %.4g TFLOPS %s, above the %s peak of %.4g: the "
			         "GPU is not what it says",
			         proved, pn, pk->product, peak);
			continue;
		}
		if (claimed > 0 && proved < claimed * floor_ratio) {
			fail_gpu(sc, (int)i, F(TOO_SLOW),
			         "proved %.4g TFLOPS %s in %.3f s, below %d%% of the claimed %.4g",
			         proved, pn, elapsed / 1e6, a->cfg.probe_min_ratio_pct, claimed);
			continue;
		}
		double verified = claimed > 0 && proved > claimed ? claimed : proved;
		v->verified_tflops = verified;
		v->derate_ppm =
		    claimed > 0 ? (uint32_t)fmin(1e6, verified / claimed * 1e6) : 1000000;
		snprintf(
		    sc->gmsg[i], sizeof sc->gmsg[i],
		    "proved at least %.4g TFLOPS %s in %.3f s (claimed %.4g, expected peak %.4g)",
		    proved, pn, elapsed / 1e6, claimed, peak);
	}
	if (sc->v.result == R_PASS)
		snprintf(sc->msg, sizeof sc->msg, "every GPU proved its throughput");
}

/* ---- SubmitProbe phase one: the commitment ---------------------------------------------- */

static void selection_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                         void *arg)
{
	struct sub_ctx *sc = arg;
	if (st != PG_OK) {
		reply_pg_error(sc->call, st, ss, err);
	} else if (PQntuples(res) != 1) {
		rpc_error(sc->call, RPC_FAILED_PRECONDITION,
		          "challengeId: challenge %" PRIu64 " was answered meanwhile; challenges "
		          "are single-use",
		          sc->challenge_id);
	} else {
		log_info("probe committed challenge=%" PRIu64 " node=%" PRIu64
		         " elapsed_us=%" PRId64,
		         sc->challenge_id, sc->node_id, sc->sel->server_elapsed_us);
		Gpumatch__V1__SubmitProbeResponse resp = GPUMATCH__V1__SUBMIT_PROBE_RESPONSE__INIT;
		resp.selection = sc->sel;
		rpc_reply(sc->call, &resp.base);
	}
	sub_free(sc);
}

static const Gpumatch__V1__GpuCommitment *commitment_for(const Gpumatch__V1__ProbeCommitment *c,
                                                         uint32_t index)
{
	for (size_t i = 0; i < c->n_gpus; i++)
		if (c->gpus[i]->gpu_index == index)
			return c->gpus[i];
	return NULL;
}

static void check_commitment(struct sub_ctx *sc)
{
	const struct run *r = &sc->run;
	const Gpumatch__V1__ProbeCommitment *c = sc->com;
	if (sc->received_us > r->commit_deadline_us) {
		fail_gpu(sc, -1, F(COMMIT_LATE),
		         "challenge expired: the commitment arrived %.3f s after its deadline",
		         (sc->received_us - r->commit_deadline_us) / 1e6);
		return;
	}
	if (c->n_gpus != r->ngpus) {
		fail_gpu(sc, -1, F(MALFORMED),
		         "commitment.gpus: %zu GPUs committed, the challenge names %zu", c->n_gpus,
		         r->ngpus);
		return;
	}
	for (size_t i = 0; i < r->ngpus; i++) {
		const Gpumatch__V1__GpuCommitment *g = commitment_for(c, r->indexes[i]);
		const Gpumatch__V1__Gpu *reg = r->facts->gpus[r->indexes[i]];
		if (!g) {
			fail_gpu(sc, (int)i, F(MALFORMED), "commitment.gpus: GPU %u is missing",
			         r->indexes[i]);
			continue;
		}
		if (strcmp(g->gpu_uuid, r->uuids[i]) || (g->identity && g->identity->uuid[0] &&
		                                         strcmp(g->identity->uuid, r->uuids[i]))) {
			fail_gpu(sc, (int)i, F(IDENTITY_MISMATCH),
			         "gpuUuid: %s is not the challenged GPU %s", g->gpu_uuid,
			         r->uuids[i]);
			continue;
		}
		if (g->identity && g->identity->pci_device_id && reg->pci_device_id &&
		    g->identity->pci_device_id != reg->pci_device_id) {
			fail_gpu(sc, (int)i, F(IDENTITY_MISMATCH),
			         "identity.pciDeviceId: 0x%04x, registered as 0x%04x",
			         g->identity->pci_device_id, reg->pci_device_id);
			continue;
		}
		if (g->leaf_count != r->p.m || g->n_step_roots != r->p.chain) {
			fail_gpu(sc, (int)i, F(MALFORMED),
			         "leafCount/stepRoots: %u leaves and %zu step roots, the challenge "
			         "has %u rows and %u steps",
			         g->leaf_count, g->n_step_roots, r->p.m, r->p.chain);
			continue;
		}
		bool ok = g->root.len == CHALLENGE_HASH_BYTES;
		for (size_t s = 0; ok && s < g->n_step_roots; s++)
			ok = g->step_roots[s].len == CHALLENGE_HASH_BYTES;
		if (!ok || memcmp(g->root.data, g->step_roots[r->p.chain - 1].data,
		                  CHALLENGE_HASH_BYTES)) {
			fail_gpu(sc, (int)i, F(MALFORMED),
			         "root: every root is 32 bytes and root equals the last step root");
			continue;
		}
	}
}

/* Rows to open per GPU, drawn only now: one from the last step (the
 * result), the others from random steps, so that skipped steps are caught
 * too (a step skipped means a made-up root whose rows cannot be opened). */
static int choose_rows(struct sub_ctx *sc)
{
	const struct run *r = &sc->run;
	struct app *a = app_get();
	uint32_t want = (uint32_t)a->cfg.probe_open_rows;
	/* the opening must fit the request size limit: each row is n floats
	 * plus its path; keep a quarter of the limit spare */
	uint64_t per_row = (uint64_t)r->p.n * 4 + 64 * (CHALLENGE_HASH_BYTES + 2) + 32;
	uint64_t fit = (uint64_t)a->cfg.max_body_bytes * 3 / 4 / (per_row * r->ngpus);
	if (fit < want) {
		log_warn("probe opens fewer rows to fit max_body_bytes challenge=%" PRIu64
		         " rows_per_gpu=%" PRIu64 " wanted=%u",
		         sc->challenge_id, fit ? fit : 1, want);
		want = fit ? (uint32_t)fit : 1;
	}
	Gpumatch__V1__RowSelection *sel = calloc(1, sizeof *sel);
	if (!sel)
		return -1;
	gpumatch__v1__row_selection__init(sel);
	sc->sel = sel;
	sel->challenge_id = sc->challenge_id;
	sel->gpus = calloc(r->ngpus, sizeof *sel->gpus);
	if (!sel->gpus)
		return -1;
	for (size_t i = 0; i < r->ngpus; i++) {
		Gpumatch__V1__GpuRowSelection *g = malloc(sizeof *g);
		if (!g)
			return -1;
		gpumatch__v1__gpu_row_selection__init(g);
		sel->gpus[sel->n_gpus++] = g;
		g->gpu_index = r->indexes[i];
		g->rows = malloc(want * sizeof *g->rows);
		g->steps = malloc(want * sizeof *g->steps);
		uint64_t rnd[64];
		if (!g->rows || !g->steps ||
		    getrandom(rnd, want * sizeof rnd[0], 0) != (ssize_t)(want * sizeof rnd[0]))
			return -1;
		g->n_rows = g->n_steps = want;
		for (uint32_t k = 0; k < want; k++) {
			g->rows[k] = (uint32_t)(rnd[k] % r->p.m);
			g->steps[k] =
			    k == 0 ? r->p.chain - 1 : (uint32_t)((rnd[k] >> 32) % r->p.chain);
		}
	}
	sel->commit_received_at_us = sc->received_us;
	sel->server_elapsed_us = sc->received_us - r->issued_us;
	sel->open_deadline_us =
	    sc->received_us + (int64_t)app_get()->cfg.probe_open_timeout_ms * 1000;
	return 0;
}

static void phase_one(struct sub_ctx *sc)
{
	check_commitment(sc);
	if (sc->v.result != R_PASS) {
		record_verdict(sc);
		return;
	}
	if (choose_rows(sc)) {
		rpc_error(sc->call, RPC_INTERNAL, "out of memory");
		sub_free(sc);
		return;
	}
	char *com_hex = pack_bytea_param(&sc->com->base),
	     *sel_hex = pack_bytea_param(&sc->sel->base);
	if (!com_hex || !sel_hex) {
		free(com_hex);
		free(sel_hex);
		rpc_error(sc->call, RPC_INTERNAL, "out of memory");
		sub_free(sc);
		return;
	}
	struct numbuf a, b, c;
	const char *params[] = { fmt_u64(&a, sc->challenge_id), fmt_i64(&b, sc->received_us),
		                 fmt_i64(&c, sc->sel->open_deadline_us), com_hex, sel_hex };
	if (pg_exec(app_get()->pg, NULL,
	            "UPDATE probe_runs SET state = 2, commit_received_at_us = $2::bigint,"
	            " open_deadline_us = $3::bigint, commitment_pb = $4::bytea,"
	            " selection_pb = $5::bytea WHERE id = $1::bigint AND state = 1 RETURNING id",
	            5, params, selection_cb, sc)) {
		rpc_error(sc->call, RPC_UNAVAILABLE, "shutting down");
		sub_free(sc);
	}
	free(com_hex);
	free(sel_hex);
}

/* ---- SubmitProbe phase two: the opening ------------------------------------------------- */

/* Off the loop, one GPU: recompute its opened rows from the chain of keys
 * and compare bit for bit. Reads sc->run and sc->open only; writes only
 * its own gpu_check. */
static void recompute_gpu(void *arg)
{
	struct gpu_check *gc = arg;
	const struct sub_ctx *sc = gc->sc;
	const struct run *r = &sc->run;
	size_t i = gc->i;
	uint8_t(*keys)[CHALLENGE_HASH_BYTES] = malloc((size_t)r->p.chain * CHALLENGE_HASH_BYTES);
	if (!keys) {
		gc->status = -1;
		return;
	}
	const Gpumatch__V1__GpuCommitment *c = commitment_for(r->com, r->indexes[i]);
	const Gpumatch__V1__GpuOpening *o = NULL;
	for (size_t g = 0; g < sc->open->n_gpus; g++)
		if (sc->open->gpus[g]->gpu_index == r->indexes[i])
			o = sc->open->gpus[g];
	uint32_t top = 0;
	for (size_t k = 0; k < o->n_rows; k++)
		top = o->rows[k]->step > top ? o->rows[k]->step : top;
	challenge_first_key(r->seed, r->node_id, r->uuids[i], keys[0]);
	for (uint32_t s = 0; s < top; s++)
		challenge_next_key(keys[s], c->step_roots[s].data, keys[s + 1]);
	/* rows of one step share its B: generate it once per step */
	for (size_t k = 0; k < o->n_rows && gc->status == 0; k++) {
		uint32_t step = o->rows[k]->step;
		bool seen = false;
		for (size_t e = 0; e < k; e++)
			seen = seen || o->rows[e]->step == step;
		if (seen)
			continue;
		uint32_t which[64];
		const Gpumatch__V1__RowOpening *ros[64];
		size_t nw = 0;
		for (size_t e = k; e < o->n_rows && nw < 64; e++)
			if (o->rows[e]->step == step) {
				ros[nw] = o->rows[e];
				which[nw++] = o->rows[e]->row;
			}
		float *vals = malloc(nw * r->p.n * sizeof *vals);
		if (!vals || challenge_rows(&r->p, keys[step], which, nw, vals)) {
			free(vals);
			gc->status = -1;
			break;
		}
		for (size_t w = 0; w < nw && gc->status == 0; w++) {
			const float *want = vals + w * r->p.n;
			for (uint32_t j = 0; j < r->p.n; j++)
				if (memcmp(&want[j], &ros[w]->values[j], sizeof want[j])) {
					gc->status = 1;
					snprintf(
					    gc->text, sizeof gc->text,
					    "row %u of step %u differs at column %u: %.9g, the "
					    "server computes %.9g",
					    ros[w]->row, step, j, (double)ros[w]->values[j],
					    (double)want[j]);
					break;
				}
		}
		free(vals);
	}
	free(keys);
}

/* A worker finished (one byte each): once all have, judge and record. */
static void recompute_done_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct sub_ctx *sc = arg;
	char buf[SCHED_MAX_GPUS_PER_NODE];
	ssize_t n = read(fd, buf, sizeof buf);
	if (n > 0)
		sc->pending -= (int)n;
	if (sc->pending > 0)
		return;
	bool oom = false;
	for (size_t i = 0; i < sc->run.ngpus; i++) {
		worker_join(sc->checks[i].w);
		oom = oom || !sc->checks[i].w || sc->checks[i].status < 0;
	}
	event_free(sc->ev);
	close(sc->pipefd[0]);
	close(sc->pipefd[1]);
	P.inflight--;
	if (oom) {
		rpc_error(sc->call, RPC_INTERNAL, "out of memory or threads verifying the rows");
		sub_free(sc);
		return;
	}
	for (size_t i = 0; i < sc->run.ngpus; i++)
		if (sc->checks[i].status == 1)
			fail_gpu(sc, (int)i, F(ROW_MISMATCH), "%s", sc->checks[i].text);
	judge_throughput(sc);
	record_verdict(sc);
}

static void check_opening(struct sub_ctx *sc)
{
	const struct run *r = &sc->run;
	const Gpumatch__V1__ProbeOpening *op = sc->open;
	if (sc->received_us > r->open_deadline_us) {
		fail_gpu(sc, -1, F(OPEN_LATE),
		         "the opening arrived %.3f s after its deadline (result after deadline)",
		         (sc->received_us - r->open_deadline_us) / 1e6);
		return;
	}
	for (size_t i = 0; i < r->ngpus; i++) {
		const Gpumatch__V1__GpuRowSelection *want = NULL;
		const Gpumatch__V1__GpuOpening *got = NULL;
		for (size_t g = 0; g < r->sel->n_gpus; g++)
			if (r->sel->gpus[g]->gpu_index == r->indexes[i])
				want = r->sel->gpus[g];
		for (size_t g = 0; g < op->n_gpus; g++)
			if (op->gpus[g]->gpu_index == r->indexes[i])
				got = op->gpus[g];
		const Gpumatch__V1__GpuCommitment *c = commitment_for(r->com, r->indexes[i]);
		if (!want || !c)
			continue;
		if (!got || got->n_rows != want->n_rows) {
			fail_gpu(sc, (int)i, F(MALFORMED),
			         "opening.gpus: GPU %u must open the %zu rows selected",
			         r->indexes[i], want->n_rows);
			continue;
		}
		for (size_t k = 0; k < got->n_rows; k++) {
			const Gpumatch__V1__RowOpening *ro = got->rows[k];
			uint32_t step = k < want->n_steps ? want->steps[k] : r->p.chain - 1;
			if (ro->row != want->rows[k] || ro->step != step ||
			    ro->n_values != r->p.n) {
				fail_gpu(sc, (int)i, F(MALFORMED),
				         "rows[%zu]: must be row %u of step %u with %u values", k,
				         want->rows[k], step, r->p.n);
				break;
			}
			bool sized = ro->n_path <= 64;
			uint8_t path[64][CHALLENGE_HASH_BYTES];
			for (size_t p = 0; sized && p < ro->n_path; p++) {
				sized = ro->path[p].len == CHALLENGE_HASH_BYTES;
				if (sized)
					memcpy(path[p], ro->path[p].data, CHALLENGE_HASH_BYTES);
			}
			uint8_t leaf[CHALLENGE_HASH_BYTES];
			challenge_leaf(ro->values, r->p.n, leaf);
			if (!sized ||
			    challenge_path_check(leaf, r->p.m, ro->row,
			                         (const uint8_t(*)[CHALLENGE_HASH_BYTES])path,
			                         ro->n_path, c->step_roots[step].data)) {
				fail_gpu(
				    sc, (int)i, F(PATH_INVALID),
				    "rows[%zu]: row %u of step %u and its path do not lead to the "
				    "committed root",
				    k, ro->row, step);
				break;
			}
		}
	}
}

static void phase_two(struct sub_ctx *sc)
{
	check_opening(sc);
	if (sc->v.result != R_PASS) {
		judge_throughput(sc); /* fills the expected peaks for the record */
		record_verdict(sc);
		return;
	}
	struct app *a = app_get();
	/* recomputing rows at production sizes takes seconds per GPU */
	rpc_set_timeout(sc->call, 300000);
	if (pipe(sc->pipefd)) {
		rpc_error(sc->call, RPC_INTERNAL, "cannot start the verification: %s",
		          strerror(errno));
		sub_free(sc);
		return;
	}
	sc->ev = event_new(a->base, sc->pipefd[0], EV_READ | EV_PERSIST, recompute_done_cb, sc);
	if (!sc->ev || event_add(sc->ev, NULL)) {
		if (sc->ev)
			event_free(sc->ev);
		close(sc->pipefd[0]);
		close(sc->pipefd[1]);
		rpc_error(sc->call, RPC_INTERNAL, "cannot start the verification");
		sub_free(sc);
		return;
	}
	/* GPUs whose worker cannot start are answered as internal errors once
	 * the others are done; with none started, at once */
	for (size_t i = 0; i < sc->run.ngpus; i++) {
		struct gpu_check *gc = &sc->checks[i];
		gc->sc = sc;
		gc->i = i;
		gc->w = worker_start(recompute_gpu, gc, sc->pipefd[1]);
		if (gc->w)
			sc->pending++;
	}
	P.inflight++;
	if (!sc->pending) {
		sc->pending = 1;
		if (write(sc->pipefd[1], "x", 1) != 1)
			log_error("probe: cannot wake the loop challenge=%" PRIu64,
			          sc->challenge_id);
	}
}

/* ---- SubmitProbe ---------------------------------------------------------------------------- */

static void run_loaded_cb(enum pg_status st, PGresult *res, const char *ss, const char *err,
                          void *arg)
{
	struct sub_ctx *sc = arg;
	if (st != PG_OK) {
		reply_pg_error(sc->call, st, ss, err);
		sub_free(sc);
		return;
	}
	if (PQntuples(res) != 1) {
		rpc_error(sc->call, RPC_NOT_FOUND,
		          "challengeId: no challenge %" PRIu64 " for node %" PRIu64,
		          sc->challenge_id, sc->node_id);
		sub_free(sc);
		return;
	}
	if (run_from_row(res, &sc->run)) {
		rpc_error(sc->call, RPC_INTERNAL, "stored challenge could not be read");
		sub_free(sc);
		return;
	}
	struct run *r = &sc->run;
	for (size_t i = 0; i < r->ngpus; i++)
		if (r->indexes[i] >= r->facts->n_gpus) {
			rpc_error(sc->call, RPC_FAILED_PRECONDITION,
			          "nodeId: the node was re-registered without GPU %u since the "
			          "challenge; request a new one",
			          r->indexes[i]);
			sub_free(sc);
			return;
		}
	const char *already = NULL;
	if (r->state == RUN_PASSED || r->state == RUN_FAILED)
		already = "was already answered; challenges are single-use, request a new one";
	else if (r->state == RUN_ABANDONED)
		already = "was abandoned: a newer challenge was issued to the node";
	else if (r->state == RUN_COMMITTED && !sc->opening)
		already = "already has a commitment; challenges are single-use, send the opening";
	else if (r->state == RUN_ISSUED && sc->opening)
		already = "has no commitment yet: send the commitment first";
	if (already) {
		rpc_error(sc->call, RPC_FAILED_PRECONDITION,
		          "challengeId: challenge %" PRIu64 " %s", sc->challenge_id, already);
		sub_free(sc);
		return;
	}
	verdict_init(sc);
	if (sc->opening)
		phase_two(sc);
	else
		phase_one(sc);
}

void probe_submit(struct rpc_call *call, const ProtobufCMessage *msg)
{
	int64_t received = now_us(); /* the server's clock, before anything else */
	const Gpumatch__V1__SubmitProbeRequest *req = (const Gpumatch__V1__SubmitProbeRequest *)msg;
	if (!req->node_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "nodeId: required");
		return;
	}
	if (!req->challenge_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT, "challengeId: required");
		return;
	}
	if (!req->commitment == !req->opening) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "commitment/opening: exactly one of them per call");
		return;
	}
	uint64_t inner =
	    req->commitment ? req->commitment->challenge_id : req->opening->challenge_id;
	if (inner && inner != req->challenge_id) {
		rpc_error(call, RPC_INVALID_ARGUMENT,
		          "%s.challengeId: %" PRIu64 " differs from challengeId %" PRIu64,
		          req->commitment ? "commitment" : "opening", inner, req->challenge_id);
		return;
	}
	struct sub_ctx *sc = calloc(1, sizeof *sc);
	if (!sc) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		return;
	}
	sc->call = call;
	sc->node_id = req->node_id;
	sc->challenge_id = req->challenge_id;
	sc->received_us = received;
	sc->opening = req->opening != NULL;
	/* keep a copy: the request is freed when the call is answered */
	const ProtobufCMessage *part =
	    req->commitment ? &req->commitment->base : &req->opening->base;
	size_t len = protobuf_c_message_get_packed_size(part);
	uint8_t *buf = malloc(len ? len : 1);
	if (buf) {
		protobuf_c_message_pack(part, buf);
		if (req->commitment)
			sc->com = gpumatch__v1__probe_commitment__unpack(NULL, len, buf);
		else
			sc->open = gpumatch__v1__probe_opening__unpack(NULL, len, buf);
	}
	free(buf);
	if (!sc->com && !sc->open) {
		rpc_error(call, RPC_INTERNAL, "out of memory");
		free(sc);
		return;
	}
	struct numbuf a, b, c;
	const char *params[] = { fmt_u64(&a, req->challenge_id), fmt_u64(&b, req->node_id),
		                 fmt_u64(&c, scope_operator(call)) };
	if (pg_exec(app_get()->pg, NULL, RUN_SELECT, 3, params, run_loaded_cb, sc)) {
		rpc_error(call, RPC_UNAVAILABLE, "shutting down");
		sub_free(sc);
	}
}
