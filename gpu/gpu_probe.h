/* What CUDA devices this machine has, for `expertd version` and the GPU test suite. */
#ifndef XD_GPU_PROBE_H
#define XD_GPU_PROBE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of CUDA devices usable now; 0 when there is no GPU or no driver. */
int xd_gpu_device_count(void);

/* Writes a one-line description of the devices (name, memory, compute
 * capability) or of why none is usable into buf; never fails. */
void xd_gpu_probe(char *buf, size_t n);

#ifdef __cplusplus
}
#endif

#endif
