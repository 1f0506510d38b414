/* CUDA device discovery through the runtime API; every call checked, nothing aborts. */
#include "gpu_probe.h"

#include <cuda_runtime.h>
#include <stdio.h>

extern "C" int xd_gpu_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess)
        return 0;
    return n;
}

extern "C" void xd_gpu_probe(char *buf, size_t n)
{
    int count = 0;
    cudaError_t rc = cudaGetDeviceCount(&count);
    if (rc != cudaSuccess) {
        snprintf(buf, n, "none (%s)", cudaGetErrorString(rc));
        return;
    }
    if (count == 0) {
        snprintf(buf, n, "none");
        return;
    }
    size_t off = 0;
    for (int i = 0; i < count && off < n; i++) {
        cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, i) != cudaSuccess)
            continue;
        off += (size_t)snprintf(buf + off, n - off, "%s%d: %s, %.1f GiB, sm_%d%d", i ? "; " : "",
                                i, p.name, (double)p.totalGlobalMem / (1u << 30), p.major, p.minor);
    }
}
