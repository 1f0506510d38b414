/* expertd version: what this build is and what it can run on. */
#include <stdio.h>

#include "daemon/commands.h"
#include "engine/cpu/cpu_kernels.h"
#include "xd_build_config.h"
#if XD_HAVE_CUDA
#include "gpu/gpu_probe.h"
#endif

int xd_cmd_version(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("expertd %s\n", XD_VERSION);
#if XD_HAVE_CUDA
    char info[512];
    xd_gpu_probe(info, sizeof info);
    printf("backends: cpu, cuda\n");
    printf("gpus: %s\n", info);
#else
    printf("backends: cpu\n");
#endif
    printf("cpu kernels: %s\n", xd_cpu_kernel_path());
    return 0;
}
