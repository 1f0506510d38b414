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

/* Device-to-device copy bandwidth in GB/s (bytes read plus written), best of repeats copies
 * of `bytes`; 0 when it cannot be measured. The HBM baseline of GPU benchmarks. */
double xd_gpu_copy_gbps(size_t bytes, int repeats);

#ifdef __cplusplus
}
#endif

#endif
