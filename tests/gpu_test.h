/* GPU tests: the one way they find out whether a usable GPU is here, and say so when not. */
#ifndef XD_GPU_TEST_H
#define XD_GPU_TEST_H

#include <stdbool.h>
#include <stdio.h>

#include "gpu/gpu_probe.h"

/* Fills info (cap bytes) with the devices found. Without a usable GPU prints the SKIPPED line
 * (with why) and returns false: the test then exits 77. */
static inline bool gpu_test_available(char *info, size_t cap)
{
    xd_gpu_probe(info, cap);
    if (xd_gpu_device_count() > 0)
        return true;
    printf("SKIPPED: no usable CUDA device here (%s); the GPU suite runs on a GPU machine\n",
           info);
    return false;
}

#endif
