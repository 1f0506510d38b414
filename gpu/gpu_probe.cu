/* CUDA device discovery through the runtime API; every call checked, nothing aborts. */
#include "gpu/gpu_probe.h"

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

extern "C" double xd_gpu_copy_gbps(size_t bytes, int repeats)
{
    void *a = NULL, *b = NULL;
    cudaEvent_t t0 = NULL, t1 = NULL;
    double best = 0.0;
    if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess ||
        cudaEventCreate(&t0) != cudaSuccess || cudaEventCreate(&t1) != cudaSuccess)
        goto out;
    cudaMemset(a, 1, bytes);
    for (int r = 0; r < repeats + 1; r++) {
        float ms = 0.0f;
        cudaEventRecord(t0);
        cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
        cudaEventRecord(t1);
        if (cudaEventSynchronize(t1) != cudaSuccess || cudaEventElapsedTime(&ms, t0, t1) != cudaSuccess)
            goto out;
        double gbps = 2.0 * (double)bytes / (ms * 1e-3) / 1e9; /* read + write */
        if (r > 0 && gbps > best)
            best = gbps;
    }
out:
    cudaGetLastError();
    if (t0)
        cudaEventDestroy(t0);
    if (t1)
        cudaEventDestroy(t1);
    cudaFree(a);
    cudaFree(b);
    return best;
}
