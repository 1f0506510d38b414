/* GPU suite: the CUDA runtime links and sees the device; skipped (77) where there is no GPU. */
#include <stdio.h>
#include <string.h>

#include "gpu_probe.h"

int main(void)
{
    char info[512];
    xd_gpu_probe(info, sizeof info);
    if (xd_gpu_device_count() == 0) {
        printf("SKIPPED: no usable CUDA device here (%s); the GPU suite runs on a GPU machine\n",
               info);
        return 77;
    }
    printf("gpus: %s\n", info);
    int ok = strstr(info, "sm_") != NULL;
    printf("%d passed, %d failed\n", ok, !ok);
    return ok ? 0 : 1;
}
