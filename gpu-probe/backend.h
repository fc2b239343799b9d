/* backend.h — what gpu-probe's backends (cpu.c, the CPU reference; cuda.cu,
 * the GPUs) provide to main.c: identity, measurements and the leaves of one
 * challenge step. Results go out as JSON text built by the caller. */
#ifndef GPU_PROBE_BACKEND_H
#define GPU_PROBE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "challenge.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One device's identity (proto GpuIdentity's fields). */
struct probe_identity {
	uint32_t index;
	char name[128];
	char uuid[CHALLENGE_MAX_UUID];
	uint32_t pci_vendor_id, pci_device_id, pci_subsystem_id;
	char pci_bus_id[32];
	uint64_t memory_bytes;
	uint32_t sm_count;
	uint32_t cc_major, cc_minor;
	char driver_version[32];
	uint32_t cuda_driver_version, cuda_runtime_version;
	uint32_t max_sm_clock_mhz, max_mem_clock_mhz;
	uint32_t power_limit_mw;
	uint32_t pcie_max_gen, pcie_max_width;
	uint32_t pcie_cur_gen, pcie_cur_width;
	int nvml; /* 1 when NVML supplied the driver-side facts */
};

/* One measured figure with its conditions (bench). */
struct probe_gemm {
	int precision; /* proto Precision */
	uint32_t m, n, k;
	double tflops_median, tflops_min, tflops_max;
	uint32_t runs, warmup_runs;
	uint32_t sm_clock_mhz, power_mw; /* sampled right after the timed runs; 0 = unknown */
	uint64_t throttle_reasons;
	char error[128]; /* set when this precision could not be measured */
};

struct probe_transfer {
	double gbps_median, gbps_max;
	uint64_t bytes;
	uint32_t runs;
	uint32_t pcie_gen_seen, pcie_width_seen;
	uint32_t sm_clock_mhz, power_mw;
	uint64_t throttle_reasons;
};

struct probe_bench {
	struct probe_gemm gemm[5]; /* FP32, TF32, FP16, BF16, FP8 */
	int ngemm;
	struct probe_transfer device_memory, host_to_device, device_to_host;
};

/* A backend. Every function returns 0, or -1 with err filled (a sentence
 * that says exactly what is missing or failed). */
struct probe_backend {
	const char *name;
	/* Finds the devices: *count of them (0 is an error for cuda). */
	int (*open)(uint32_t *count, char *err, size_t err_len);
	int (*identity)(uint32_t dev, struct probe_identity *out, char *err, size_t err_len);
	/* quick: small sizes and few runs. */
	int (*bench)(uint32_t dev, int quick, struct probe_bench *out, char *err, size_t err_len);
	/* One challenge step on dev: the leaf hash of each of the p->m rows of
	 * the product of key's matrices, into leaves. precision is the proto
	 * Precision the inputs are held in. */
	int (*step)(uint32_t dev, const struct challenge_params *p, int precision,
	            const uint8_t key[CHALLENGE_HASH_BYTES],
	            uint8_t (*leaves)[CHALLENGE_HASH_BYTES], char *err, size_t err_len);
	void (*close)(void);
};

extern const struct probe_backend probe_cpu_backend;
/* NULL when gpu-probe was built without nvcc. */
const struct probe_backend *probe_cuda_backend(void);

#ifdef __cplusplus
}
#endif

#endif
