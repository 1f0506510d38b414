/* Checking macros: every CUDA runtime and cuBLAS call goes through one, which turns a failure
 * into a negative status with the call, file and line in the error message. */
#ifndef XD_CUDA_CHECK_H
#define XD_CUDA_CHECK_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

extern "C" {
#include "status.h"
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
            return xd_err_set(err, XD_ERR_IO, "%s:%d: %s: %s", __FILE__, __LINE__, #call,  \
                              cublasGetStatusString(s_));                                  \
    } while (0)

#endif
