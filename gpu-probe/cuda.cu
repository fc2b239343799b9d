/* cuda.cu — gpu-probe's CUDA backend: identity from NVML (libnvidia-ml.so.1
 * loaded at run time, no link-time dependency) or the CUDA runtime; GEMM
 * throughput with cuBLASLt (best of a few algorithms, median of timed runs
 * after warm-up, random non-zero data); device memory bandwidth with a
 * triad kernel; pinned host<->device copies with the PCIe link seen during
 * them; and the challenge step: matrices generated on the device from the
 * key, one cuBLASLt GEMM accumulating in FP32, one SHA-256 leaf per row. */
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>

#include "backend.h"

/* ---- NVML, loaded at run time ------------------------------------------------------- */

typedef struct nvml_device *nvml_dev;
struct nvml_pci_info { /* nvmlPciInfo_t (v3) */
	char bus_id_legacy[16];
	unsigned domain, bus, device;
	unsigned pci_device_id; /* device << 16 | vendor */
	unsigned pci_subsystem_id;
	char bus_id[32];
};
enum { NVML_CLOCK_SM = 1, NVML_CLOCK_MEM = 2 };

static struct {
	void *lib;
	int ok;
	int (*init)(void);
	int (*shutdown)(void);
	int (*by_uuid)(const char *, nvml_dev *);
	int (*driver_version)(char *, unsigned);
	int (*pci_info)(nvml_dev, struct nvml_pci_info *);
	int (*max_clock)(nvml_dev, int, unsigned *);
	int (*clock)(nvml_dev, int, unsigned *);
	int (*power_limit)(nvml_dev, unsigned *);
	int (*power)(nvml_dev, unsigned *);
	int (*max_gen)(nvml_dev, unsigned *);
	int (*max_width)(nvml_dev, unsigned *);
	int (*cur_gen)(nvml_dev, unsigned *);
	int (*cur_width)(nvml_dev, unsigned *);
	int (*throttle)(nvml_dev, unsigned long long *);
} N;

template <typename F> static void sym(F &f, const char *name)
{
	f = (F)dlsym(N.lib, name);
}

static void nvml_load(void)
{
	if (N.lib)
		return;
	N.lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!N.lib)
		return;
	sym(N.init, "nvmlInit_v2");
	sym(N.shutdown, "nvmlShutdown");
	sym(N.by_uuid, "nvmlDeviceGetHandleByUUID");
	sym(N.driver_version, "nvmlSystemGetDriverVersion");
	sym(N.pci_info, "nvmlDeviceGetPciInfo_v3");
	sym(N.max_clock, "nvmlDeviceGetMaxClockInfo");
	sym(N.clock, "nvmlDeviceGetClockInfo");
	sym(N.power_limit, "nvmlDeviceGetEnforcedPowerLimit");
	sym(N.power, "nvmlDeviceGetPowerUsage");
	sym(N.max_gen, "nvmlDeviceGetMaxPcieLinkGeneration");
	sym(N.max_width, "nvmlDeviceGetMaxPcieLinkWidth");
	sym(N.cur_gen, "nvmlDeviceGetCurrPcieLinkGeneration");
	sym(N.cur_width, "nvmlDeviceGetCurrPcieLinkWidth");
	sym(N.throttle, "nvmlDeviceGetCurrentClocksEventReasons");
	if (!N.throttle)
		sym(N.throttle, "nvmlDeviceGetCurrentClocksThrottleReasons");
	N.ok = N.init && N.by_uuid && N.init() == 0;
}

/* ---- devices -------------------------------------------------------------------------------- */

static int cuda_fail(cudaError_t e, const char *what, char *err, size_t err_len)
{
	snprintf(err, err_len, "%s: %s", what, cudaGetErrorString(e));
	return -1;
}

#define CK(call, what)                                            \
	do {                                                      \
		cudaError_t e_ = (call);                          \
		if (e_ != cudaSuccess)                            \
			return cuda_fail(e_, what, err, err_len); \
	} while (0)

#define LK(call, what)                                                                   \
	do {                                                                             \
		cublasStatus_t s_ = (call);                                              \
		if (s_ != CUBLAS_STATUS_SUCCESS) {                                       \
			snprintf(err, err_len, "%s: cuBLASLt status %d", what, (int)s_); \
			rc = -1;                                                         \
			goto out;                                                        \
		}                                                                        \
	} while (0)

static int cu_open(uint32_t *count, char *err, size_t err_len)
{
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);
	if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0)) {
		snprintf(err, err_len,
		         "the CUDA runtime sees no GPU (none installed, or hidden by "
		         "CUDA_VISIBLE_DEVICES)");
		return -1;
	}
	if (e == cudaErrorInsufficientDriver) {
		snprintf(err, err_len,
		         "the NVIDIA driver is missing or older than this CUDA %d.%d runtime needs "
		         "(CUDA 13 needs driver 580 or newer)",
		         CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10);
		return -1;
	}
	if (e != cudaSuccess)
		return cuda_fail(e, "cudaGetDeviceCount", err, err_len);
	*count = (uint32_t)n;
	nvml_load();
	return 0;
}

static void uuid_text(const cudaUUID_t &u, char *out, size_t len)
{
	const unsigned char *b = (const unsigned char *)u.bytes;
	snprintf(out, len,
	         "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
	         b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
	         b[14], b[15]);
}

static nvml_dev nvml_of(const char *uuid)
{
	nvml_dev d = NULL;
	if (!N.ok || N.by_uuid(uuid, &d))
		return NULL;
	return d;
}

static int cu_identity(uint32_t dev, struct probe_identity *out, char *err, size_t err_len)
{
	memset(out, 0, sizeof *out);
	cudaDeviceProp p;
	CK(cudaGetDeviceProperties(&p, (int)dev), "cudaGetDeviceProperties");
	out->index = dev;
	snprintf(out->name, sizeof out->name, "%s", p.name);
	uuid_text(p.uuid, out->uuid, sizeof out->uuid);
	out->memory_bytes = p.totalGlobalMem;
	out->sm_count = (uint32_t)p.multiProcessorCount;
	out->cc_major = (uint32_t)p.major;
	out->cc_minor = (uint32_t)p.minor;
	snprintf(out->pci_bus_id, sizeof out->pci_bus_id, "%08x:%02x:%02x.0", p.pciDomainID,
	         p.pciBusID, p.pciDeviceID);
	int v = 0, clk = 0, mclk = 0;
	cudaDriverGetVersion(&v);
	out->cuda_driver_version = (uint32_t)v;
	cudaRuntimeGetVersion(&v);
	out->cuda_runtime_version = (uint32_t)v;
	if (cudaDeviceGetAttribute(&clk, cudaDevAttrClockRate, (int)dev) == cudaSuccess)
		out->max_sm_clock_mhz = (uint32_t)clk / 1000;
	if (cudaDeviceGetAttribute(&mclk, cudaDevAttrMemoryClockRate, (int)dev) == cudaSuccess)
		out->max_mem_clock_mhz = (uint32_t)mclk / 1000;
	nvml_dev d = nvml_of(out->uuid);
	if (!d)
		return 0; /* the CUDA runtime's facts are all there is */
	out->nvml = 1;
	struct nvml_pci_info pci;
	unsigned u;
	if (N.pci_info && !N.pci_info(d, &pci)) {
		out->pci_vendor_id = pci.pci_device_id & 0xffff;
		out->pci_device_id = pci.pci_device_id >> 16;
		out->pci_subsystem_id = pci.pci_subsystem_id;
		snprintf(out->pci_bus_id, sizeof out->pci_bus_id, "%s", pci.bus_id);
	}
	if (N.driver_version)
		N.driver_version(out->driver_version, sizeof out->driver_version);
	if (N.max_clock && !N.max_clock(d, NVML_CLOCK_SM, &u))
		out->max_sm_clock_mhz = u;
	if (N.max_clock && !N.max_clock(d, NVML_CLOCK_MEM, &u))
		out->max_mem_clock_mhz = u;
	if (N.power_limit && !N.power_limit(d, &u))
		out->power_limit_mw = u;
	if (N.max_gen && !N.max_gen(d, &u))
		out->pcie_max_gen = u;
	if (N.max_width && !N.max_width(d, &u))
		out->pcie_max_width = u;
	if (N.cur_gen && !N.cur_gen(d, &u))
		out->pcie_cur_gen = u;
	if (N.cur_width && !N.cur_width(d, &u))
		out->pcie_cur_width = u;
	return 0;
}

/* What the GPU is doing right now, through NVML (zeros without it). */
static void sample(nvml_dev d, uint32_t *sm_mhz, uint32_t *power_mw, uint64_t *throttle,
                   uint32_t *gen, uint32_t *width)
{
	unsigned u;
	unsigned long long t;
	if (!d)
		return;
	if (sm_mhz && N.clock && !N.clock(d, NVML_CLOCK_SM, &u))
		*sm_mhz = u;
	if (power_mw && N.power && !N.power(d, &u))
		*power_mw = u;
	if (throttle && N.throttle && !N.throttle(d, &t))
		*throttle |= t;
	if (gen && N.cur_gen && !N.cur_gen(d, &u))
		*gen = u;
	if (width && N.cur_width && !N.cur_width(d, &u))
		*width = u;
}

/* ---- kernels -------------------------------------------------------------------------------- */

__constant__ uint32_t dev_sha_k[64];

template <typename T> __device__ T from_int(int32_t v);
template <> __device__ float from_int<float>(int32_t v)
{
	return (float)v;
}
template <> __device__ __half from_int<__half>(int32_t v)
{
	return __int2half_rn(v);
}
template <> __device__ __nv_bfloat16 from_int<__nv_bfloat16>(int32_t v)
{
	return __int2bfloat16_rn(v);
}
template <> __device__ __nv_fp8_e4m3 from_int<__nv_fp8_e4m3>(int32_t v)
{
	return __nv_fp8_e4m3((float)v);
}

/* A (m x k, row-major: element (i, t) at i * k + t) and B stored transposed
 * (element (t, j) at j * k + t), as the TN GEMM below reads them. nonzero:
 * bench data, where a zero becomes 1 (zeros make GEMMs look faster). */
template <typename T>
__global__ void gen_kernel(T *a, T *bt, uint32_t m, uint32_t n, uint32_t k, uint64_t w0,
                           uint64_t w1, uint32_t range, int nonzero)
{
	struct challenge_gen_key g = { w0, w1 };
	size_t total_a = (size_t)m * k, total = total_a + (size_t)n * k;
	for (size_t x = blockIdx.x * (size_t)blockDim.x + threadIdx.x; x < total;
	     x += (size_t)gridDim.x * blockDim.x) {
		int32_t v;
		if (x < total_a) {
			v = challenge_elem(g, CHALLENGE_A, (uint32_t)(x / k), (uint32_t)(x % k),
			                   range);
		} else {
			size_t y = x - total_a;
			v = challenge_elem(g, CHALLENGE_B, (uint32_t)(y % k), (uint32_t)(y / k),
			                   range);
		}
		if (nonzero && v == 0)
			v = 1;
		if (x < total_a)
			a[x] = from_int<T>(v);
		else
			bt[x - total_a] = from_int<T>(v);
	}
}

/* Chunk hashes of every row, one thread per (row, chunk): chunks holds
 * m x challenge_chunks(n) hashes. */
__global__ void chunk_kernel(const float *c, uint32_t m, uint32_t n, uint8_t *chunks)
{
	uint32_t nc = challenge_chunks(n);
	size_t x = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
	if (x < (size_t)m * nc)
		challenge_chunk_hash(c + (x / nc) * n, n, (uint32_t)(x % nc), dev_sha_k,
		                     chunks + x * CHALLENGE_HASH_BYTES);
}

__global__ void leaf_kernel(const uint8_t *chunks, uint32_t m, uint32_t n, uint8_t *leaves)
{
	uint32_t nc = challenge_chunks(n);
	uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i < m)
		challenge_leaf_of_chunks(chunks + (size_t)i * nc * CHALLENGE_HASH_BYTES, nc,
		                         dev_sha_k, leaves + (size_t)i * CHALLENGE_HASH_BYTES);
}

__global__ void triad_kernel(float *a, const float *b, const float *c, size_t n, float s)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		a[i] = b[i] + s * c[i];
}

/* ---- GEMM with cuBLASLt ---------------------------------------------------------------------- */

struct gemm_types {
	cudaDataType_t ab;
	cublasComputeType_t compute;
	size_t elem;
};

static int types_of(int precision, struct gemm_types *t)
{
	switch (precision) {
	case 1:
		*t = { CUDA_R_32F, CUBLAS_COMPUTE_32F, 4 };
		return 0;
	case 2:
		*t = { CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32, 4 };
		return 0;
	case 3:
		*t = { CUDA_R_16F, CUBLAS_COMPUTE_32F, 2 };
		return 0;
	case 4:
		*t = { CUDA_R_16BF, CUBLAS_COMPUTE_32F, 2 };
		return 0;
	case 5:
		*t = { CUDA_R_8F_E4M3, CUBLAS_COMPUTE_32F, 1 };
		return 0;
	}
	return -1;
}

static void launch_gen(int precision, void *a, void *bt, uint32_t m, uint32_t n, uint32_t k,
                       struct challenge_gen_key g, uint32_t range, int nonzero, cudaStream_t s)
{
	dim3 grid(1024), block(256);
	switch (precision) {
	case 1:
	case 2:
		gen_kernel<float><<<grid, block, 0, s>>>((float *)a, (float *)bt, m, n, k, g.w0,
		                                         g.w1, range, nonzero);
		break;
	case 3:
		gen_kernel<__half><<<grid, block, 0, s>>>((__half *)a, (__half *)bt, m, n, k, g.w0,
		                                          g.w1, range, nonzero);
		break;
	case 4:
		gen_kernel<__nv_bfloat16><<<grid, block, 0, s>>>(
		    (__nv_bfloat16 *)a, (__nv_bfloat16 *)bt, m, n, k, g.w0, g.w1, range, nonzero);
		break;
	case 5:
		gen_kernel<__nv_fp8_e4m3><<<grid, block, 0, s>>>(
		    (__nv_fp8_e4m3 *)a, (__nv_fp8_e4m3 *)bt, m, n, k, g.w0, g.w1, range, nonzero);
		break;
	}
}

/* One GEMM set-up: D (n x m column-major = C m x n row-major) = Bt^T * A^T,
 * "TN" as FP8 requires, FP32 accumulation and FP32 output. */
struct gemm {
	cublasLtHandle_t lt;
	cublasLtMatmulDesc_t desc;
	cublasLtMatrixLayout_t la, lb, lc;
	cublasLtMatmulHeuristicResult_t algos[8];
	int nalgos;
	void *ws;
	size_t ws_bytes;
};

static void gemm_free(struct gemm *g)
{
	if (g->la)
		cublasLtMatrixLayoutDestroy(g->la);
	if (g->lb)
		cublasLtMatrixLayoutDestroy(g->lb);
	if (g->lc)
		cublasLtMatrixLayoutDestroy(g->lc);
	if (g->desc)
		cublasLtMatmulDescDestroy(g->desc);
	if (g->lt)
		cublasLtDestroy(g->lt);
	cudaFree(g->ws);
	memset(g, 0, sizeof *g);
}

static int gemm_init(struct gemm *g, int precision, uint32_t m, uint32_t n, uint32_t k, int want,
                     char *err, size_t err_len)
{
	memset(g, 0, sizeof *g);
	struct gemm_types t;
	int rc = 0;
	cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
	cublasLtMatmulPreference_t pref = NULL;
	if (types_of(precision, &t)) {
		snprintf(err, err_len, "unknown precision %d", precision);
		return -1;
	}
	g->ws_bytes = 64u << 20;
	if (cudaMalloc(&g->ws, g->ws_bytes) != cudaSuccess) {
		snprintf(err, err_len, "cannot allocate a 64 MiB cuBLASLt workspace");
		return -1;
	}
	LK(cublasLtCreate(&g->lt), "cublasLtCreate");
	LK(cublasLtMatmulDescCreate(&g->desc, t.compute, CUDA_R_32F), "cublasLtMatmulDescCreate");
	LK(cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta),
	   "TRANSA");
	LK(cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb),
	   "TRANSB");
	LK(cublasLtMatrixLayoutCreate(&g->la, t.ab, k, n, k), "layout A");
	LK(cublasLtMatrixLayoutCreate(&g->lb, t.ab, k, m, k), "layout B");
	LK(cublasLtMatrixLayoutCreate(&g->lc, CUDA_R_32F, n, m, n), "layout C");
	LK(cublasLtMatmulPreferenceCreate(&pref), "preference");
	LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
	                                        &g->ws_bytes, sizeof g->ws_bytes),
	   "workspace preference");
	LK(cublasLtMatmulAlgoGetHeuristic(g->lt, g->desc, g->la, g->lb, g->lc, g->lc, pref,
	                                  want > 8 ? 8 : want, g->algos, &g->nalgos),
	   "cublasLtMatmulAlgoGetHeuristic");
	if (g->nalgos < 1) {
		snprintf(err, err_len, "cuBLASLt has no algorithm for this precision and size");
		rc = -1;
	}
out:
	if (pref)
		cublasLtMatmulPreferenceDestroy(pref);
	if (rc)
		gemm_free(g);
	return rc;
}

static cublasStatus_t gemm_run(struct gemm *g, int algo, const void *a, const void *bt, float *c,
                               cudaStream_t s)
{
	const float one = 1.0f, zero = 0.0f;
	return cublasLtMatmul(g->lt, g->desc, &one, bt, g->la, a, g->lb, &zero, c, g->lc, c, g->lc,
	                      &g->algos[algo].algo, g->ws, g->ws_bytes, s);
}

/* ---- the challenge step ---------------------------------------------------------------------- */

/* Buffers and the GEMM plan of each device's challenge steps: every GPU
 * runs its chain on its own host thread, so nothing is shared. */
struct step_state {
	uint32_t m, n, k;
	int precision;
	void *a, *bt;
	float *c;
	uint8_t *chunks, *leaves;
	struct gemm g;
	int ready;
};
static struct step_state S[64];

static void step_free(uint32_t dev)
{
	struct step_state *st = &S[dev];
	if (!st->ready && !st->a)
		return;
	cudaSetDevice((int)dev);
	if (st->ready)
		gemm_free(&st->g);
	cudaFree(st->a);
	cudaFree(st->bt);
	cudaFree(st->c);
	cudaFree(st->chunks);
	cudaFree(st->leaves);
	memset(st, 0, sizeof *st);
}

static int cu_step(uint32_t dev, const struct challenge_params *p, int precision,
                   const uint8_t key[CHALLENGE_HASH_BYTES], uint8_t (*leaves)[CHALLENGE_HASH_BYTES],
                   char *err, size_t err_len)
{
	struct gemm_types t;
	if (types_of(precision, &t)) {
		snprintf(err, err_len, "challenge precision %d unknown", precision);
		return -1;
	}
	if (dev >= 64) {
		snprintf(err, err_len, "GPU index %u: at most 64 GPUs", dev);
		return -1;
	}
	CK(cudaSetDevice((int)dev), "cudaSetDevice");
	struct step_state *st = &S[dev];
	if (!st->ready || st->m != p->m || st->n != p->n || st->k != p->k ||
	    st->precision != precision) {
		step_free(dev);
		CK(cudaSetDevice((int)dev), "cudaSetDevice");
		CK(cudaMalloc(&st->a, (size_t)p->m * p->k * t.elem), "allocating A");
		CK(cudaMalloc(&st->bt, (size_t)p->n * p->k * t.elem), "allocating B");
		CK(cudaMalloc(&st->c, (size_t)p->m * p->n * sizeof(float)), "allocating C");
		CK(cudaMalloc(&st->chunks,
		              (size_t)p->m * challenge_chunks(p->n) * CHALLENGE_HASH_BYTES),
		   "allocating chunk hashes");
		CK(cudaMalloc(&st->leaves, (size_t)p->m * CHALLENGE_HASH_BYTES),
		   "allocating leaves");
		CK(cudaMemcpyToSymbol(dev_sha_k, challenge_sha256_k, sizeof dev_sha_k),
		   "copying the SHA-256 constants");
		if (gemm_init(&st->g, precision, p->m, p->n, p->k, 1, err, err_len))
			return -1;
		st->m = p->m;
		st->n = p->n;
		st->k = p->k;
		st->precision = precision;
		st->ready = 1;
	}
	launch_gen(precision, st->a, st->bt, p->m, p->n, p->k, challenge_gen_key_of(key),
	           p->value_range, 0, 0);
	CK(cudaGetLastError(), "generating the inputs");
	cublasStatus_t cs = gemm_run(&st->g, 0, st->a, st->bt, st->c, 0);
	if (cs != CUBLAS_STATUS_SUCCESS) {
		snprintf(err, err_len, "cublasLtMatmul: status %d", (int)cs);
		return -1;
	}
	size_t nchunks = (size_t)p->m * challenge_chunks(p->n);
	chunk_kernel<<<(unsigned)((nchunks + 127) / 128), 128>>>(st->c, p->m, p->n, st->chunks);
	leaf_kernel<<<(p->m + 127) / 128, 128>>>(st->chunks, p->m, p->n, st->leaves);
	CK(cudaGetLastError(), "hashing the rows");
	CK(cudaMemcpy(leaves, st->leaves, (size_t)p->m * CHALLENGE_HASH_BYTES,
	              cudaMemcpyDeviceToHost),
	   "copying the leaves");
	return 0;
}

/* ---- bench ----------------------------------------------------------------------------------- */

static double median_of(double *v, int n)
{
	std::sort(v, v + n);
	return n ? v[n / 2] : 0;
}

static int bench_gemm(uint32_t dev, int precision, int quick, nvml_dev nd, struct probe_gemm *out,
                      char *err, size_t err_len)
{
	uint32_t d = quick ? 2048 : 8192;
	int warm = quick ? 2 : 5, runs = quick ? 3 : 10;
	struct gemm_types t;
	types_of(precision, &t);
	memset(out, 0, sizeof *out);
	out->precision = precision;
	out->m = out->n = out->k = d;
	out->runs = (uint32_t)runs;
	out->warmup_runs = (uint32_t)warm;
	void *a = NULL, *bt = NULL;
	float *c = NULL;
	struct gemm g;
	cudaEvent_t e0 = NULL, e1 = NULL;
	double tf[16];
	int rc = 0, best = 0;
	float best_ms = 1e30f;
	uint8_t key[32] = { 0x42 };
	if (cudaMalloc(&a, (size_t)d * d * t.elem) || cudaMalloc(&bt, (size_t)d * d * t.elem) ||
	    cudaMalloc(&c, (size_t)d * d * sizeof(float))) {
		snprintf(out->error, sizeof out->error, "cannot allocate %ux%u matrices", d, d);
		goto done;
	}
	if (gemm_init(&g, precision, d, d, d, 4, out->error, sizeof out->error))
		goto done;
	/* random non-zero data, exact in every precision */
	launch_gen(precision, a, bt, d, d, d, challenge_gen_key_of(key),
	           challenge_value_range(d, precision), 1, 0);
	cudaEventCreate(&e0);
	cudaEventCreate(&e1);
	/* best of the heuristic's algorithms, one timed run each after one warm-up */
	for (int al = 0; al < g.nalgos; al++) {
		float ms = 0;
		if (gemm_run(&g, al, a, bt, c, 0) != CUBLAS_STATUS_SUCCESS)
			continue;
		cudaEventRecord(e0);
		gemm_run(&g, al, a, bt, c, 0);
		cudaEventRecord(e1);
		cudaEventSynchronize(e1);
		cudaEventElapsedTime(&ms, e0, e1);
		if (ms > 0 && ms < best_ms) {
			best_ms = ms;
			best = al;
		}
	}
	for (int i = 0; i < warm; i++)
		gemm_run(&g, best, a, bt, c, 0);
	for (int i = 0; i < runs; i++) {
		float ms = 0;
		cudaEventRecord(e0);
		gemm_run(&g, best, a, bt, c, 0);
		cudaEventRecord(e1);
		cudaEventSynchronize(e1);
		if (i == runs / 2)
			sample(nd, &out->sm_clock_mhz, &out->power_mw, &out->throttle_reasons, NULL,
			       NULL);
		cudaEventElapsedTime(&ms, e0, e1);
		tf[i] = 2.0 * d * d * d / (ms * 1e-3) / 1e12;
	}
	if (cudaGetLastError() != cudaSuccess) {
		snprintf(out->error, sizeof out->error, "the GEMM runs failed");
	} else {
		out->tflops_min = *std::min_element(tf, tf + runs);
		out->tflops_max = *std::max_element(tf, tf + runs);
		out->tflops_median = median_of(tf, runs);
	}
	gemm_free(&g);
done:
	if (e0)
		cudaEventDestroy(e0);
	if (e1)
		cudaEventDestroy(e1);
	cudaFree(a);
	cudaFree(bt);
	cudaFree(c);
	(void)err;
	(void)err_len;
	(void)dev;
	return rc;
}

static int bench_memory(uint32_t dev, int quick, nvml_dev nd, struct probe_transfer *out, char *err,
                        size_t err_len)
{
	int l2 = 0;
	cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, (int)dev);
	size_t elems =
	    std::max<size_t>((size_t)l2 * 16 / sizeof(float), quick ? (16u << 20) : (128u << 20));
	float *a, *b, *c;
	CK(cudaMalloc(&a, elems * 4), "allocating the bandwidth buffers");
	CK(cudaMalloc(&b, elems * 4), "allocating the bandwidth buffers");
	CK(cudaMalloc(&c, elems * 4), "allocating the bandwidth buffers");
	cudaMemset(b, 1, elems * 4);
	cudaMemset(c, 2, elems * 4);
	cudaEvent_t e0, e1;
	cudaEventCreate(&e0);
	cudaEventCreate(&e1);
	int runs = quick ? 3 : 10;
	double g[16];
	for (int i = 0; i < 2 + runs; i++) {
		float ms = 0;
		cudaEventRecord(e0);
		triad_kernel<<<4096, 256>>>(a, b, c, elems, 3.0f);
		cudaEventRecord(e1);
		cudaEventSynchronize(e1);
		cudaEventElapsedTime(&ms, e0, e1);
		if (i >= 2)
			g[i - 2] = 3.0 * elems * 4 / (ms * 1e-3) / 1e9;
	}
	sample(nd, &out->sm_clock_mhz, &out->power_mw, &out->throttle_reasons, NULL, NULL);
	out->bytes = 3 * elems * 4;
	out->runs = (uint32_t)runs;
	out->gbps_max = *std::max_element(g, g + runs);
	out->gbps_median = median_of(g, runs);
	cudaEventDestroy(e0);
	cudaEventDestroy(e1);
	cudaFree(a);
	cudaFree(b);
	cudaFree(c);
	CK(cudaGetLastError(), "the triad kernel");
	return 0;
}

static int bench_copy(int quick, bool to_device, nvml_dev nd, struct probe_transfer *out, char *err,
                      size_t err_len)
{
	size_t bytes = quick ? (32u << 20) : (256u << 20);
	void *host, *devp;
	CK(cudaMallocHost(&host, bytes), "allocating pinned host memory");
	if (cudaMalloc(&devp, bytes) != cudaSuccess) {
		cudaFreeHost(host);
		snprintf(err, err_len, "allocating the copy buffer on the device");
		return -1;
	}
	memset(host, 0x5a, bytes);
	cudaEvent_t e0, e1;
	cudaEventCreate(&e0);
	cudaEventCreate(&e1);
	int runs = quick ? 3 : 10;
	double g[16];
	for (int i = 0; i < 2 + runs; i++) {
		float ms = 0;
		cudaEventRecord(e0);
		if (to_device)
			cudaMemcpyAsync(devp, host, bytes, cudaMemcpyHostToDevice);
		else
			cudaMemcpyAsync(host, devp, bytes, cudaMemcpyDeviceToHost);
		cudaEventRecord(e1);
		/* the link as it is while the copy runs: idle links drop to a
		 * lower generation to save power */
		if (i == 2)
			sample(nd, &out->sm_clock_mhz, &out->power_mw, &out->throttle_reasons,
			       &out->pcie_gen_seen, &out->pcie_width_seen);
		cudaEventSynchronize(e1);
		cudaEventElapsedTime(&ms, e0, e1);
		if (i >= 2)
			g[i - 2] = (double)bytes / (ms * 1e-3) / 1e9;
	}
	out->bytes = bytes;
	out->runs = (uint32_t)runs;
	out->gbps_max = *std::max_element(g, g + runs);
	out->gbps_median = median_of(g, runs);
	cudaEventDestroy(e0);
	cudaEventDestroy(e1);
	cudaFreeHost(host);
	cudaFree(devp);
	CK(cudaGetLastError(), "the copies");
	return 0;
}

static int cu_bench(uint32_t dev, int quick, struct probe_bench *out, char *err, size_t err_len)
{
	memset(out, 0, sizeof *out);
	CK(cudaSetDevice((int)dev), "cudaSetDevice");
	struct probe_identity id;
	if (cu_identity(dev, &id, err, err_len))
		return -1;
	nvml_dev nd = nvml_of(id.uuid);
	int cc = (int)(id.cc_major * 10 + id.cc_minor);
	for (int prec = 1; prec <= 5; prec++) {
		struct probe_gemm *g = &out->gemm[out->ngemm++];
		memset(g, 0, sizeof *g);
		g->precision = prec;
		if ((prec == 2 || prec == 4) && cc < 80) {
			snprintf(g->error, sizeof g->error,
			         "needs compute capability 8.0 or newer");
			continue;
		}
		if (prec == 5 && cc < 89) {
			snprintf(g->error, sizeof g->error,
			         "FP8 needs compute capability 8.9 or newer");
			continue;
		}
		bench_gemm(dev, prec, quick, nd, g, err, err_len);
	}
	if (bench_memory(dev, quick, nd, &out->device_memory, err, err_len) ||
	    bench_copy(quick, true, nd, &out->host_to_device, err, err_len) ||
	    bench_copy(quick, false, nd, &out->device_to_host, err, err_len))
		return -1;
	return 0;
}

static void cu_close(void)
{
	for (uint32_t d = 0; d < 64; d++)
		step_free(d);
	if (N.ok && N.shutdown)
		N.shutdown();
	N.ok = 0;
}

static const struct probe_backend cuda_backend = {
	"cuda", cu_open, cu_identity, cu_bench, cu_step, cu_close,
};

extern "C" const struct probe_backend *probe_cuda_backend(void)
{
	return &cuda_backend;
}
