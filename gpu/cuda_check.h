/* Checking macros: every CUDA runtime and cuBLAS call goes through one, which turns a failure
 * into a negative status with the call, file and line in the error message. */
#ifndef XD_CUDA_CHECK_H
#define XD_CUDA_CHECK_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stddef.h>

extern "C" {
#include "engine/base/status.h"
}

/* Within a function that has `struct xd_err *err` and returns int. */
#define CUDA_TRY(call)                                                                     \
    do {                                                                                   \
        cudaError_t e_ = (call);                                                           \
        if (e_ != cudaSuccess)                                                             \
            return xd_err_set(err, e_ == cudaErrorMemoryAllocation ? XD_ERR_NOMEM : XD_ERR_IO, \
                              "%s:%d: %s: %s", __FILE__, __LINE__, #call,                  \
                              cudaGetErrorString(e_));                                     \
    } while (0)

#define CUBLAS_TRY(call)                                                                   \
    do {                                                                                   \
        cublasStatus_t s_ = (call);                                                        \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                   \
            return xd_err_set(err, s_ == CUBLAS_STATUS_ALLOC_FAILED ? XD_ERR_NOMEM : XD_ERR_IO, \
                              "%s:%d: %s: %s", __FILE__, __LINE__, #call,                  \
                              cublasGetStatusString(s_));                                  \
    } while (0)

/* XD_ERR_NOMEM for device memory that did not fit: names what, the bytes asked (0: not known),
 * what is free of the device's total and hint, the settings that help. Clears the (non-sticky)
 * allocation error so later calls do not report it. */
static inline int xd_cuda_oom(struct xd_err *err, const char *what, size_t bytes,
                              const char *hint)
{
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
        (void)cudaGetLastError();
        return xd_err_set(err, XD_ERR_NOMEM, "GPU out of memory for %s: %.1f MiB asked; %s",
                          what, bytes / 1048576.0, hint);
    }
    if (!bytes)
        return xd_err_set(err, XD_ERR_NOMEM,
                          "GPU out of memory for %s: %.1f MiB of %.1f MiB free; %s", what,
                          free_b / 1048576.0, total_b / 1048576.0, hint);
    return xd_err_set(err, XD_ERR_NOMEM,
                      "GPU out of memory for %s: %.1f MiB asked, %.1f MiB of %.1f MiB free; %s",
                      what, bytes / 1048576.0, free_b / 1048576.0, total_b / 1048576.0, hint);
}

/* CUDA_TRY for calls that may need device memory (streams, events): out of memory names what
 * through xd_cuda_oom. */
#define CUDA_TRY_MEM(call, what, hint)                                                     \
    do {                                                                                   \
        cudaError_t e_ = (call);                                                           \
        if (e_ == cudaErrorMemoryAllocation)                                               \
            return xd_cuda_oom(err, (what), 0, (hint));                                    \
        if (e_ != cudaSuccess)                                                             \
            return xd_err_set(err, XD_ERR_IO, "%s:%d: %s: %s", __FILE__, __LINE__, #call,  \
                              cudaGetErrorString(e_));                                     \
    } while (0)

#endif
