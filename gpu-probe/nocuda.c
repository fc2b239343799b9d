/* nocuda.c — the CUDA backend's stand-in where gpu-probe was built without
 * nvcc: `--backend cuda` then says so and exits non-zero. */
#include "backend.h"

const struct probe_backend *probe_cuda_backend(void)
{
	return NULL;
}
