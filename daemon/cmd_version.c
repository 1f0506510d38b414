/* expertd version: what this build is and what it can run on. */
#include <stdio.h>

#include "daemon/backend_module.h"
#include "daemon/commands.h"
#include "engine/cpu/cpu_kernels.h"
#include "xd_build_config.h"

int xd_cmd_version(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("expertd %s\n", XD_VERSION);
#if XD_HAVE_CUDA
    char path[4096], info[512];
    struct xd_err err = {{0}};
    xd_backend_module_path(path, sizeof path);
    if (xd_backend_module_load_cuda(&err) == XD_OK) {
        xd_backend_module_gpus(info, sizeof info);
        printf("backends: cpu, cuda\n");
        printf("cuda module: %s\n", path);
        printf("gpus: %s\n", info);
    } else {
        printf("backends: cpu\n");
        printf("cuda module: unavailable: %s\n", err.msg);
        printf("gpus: none: the CUDA module did not load\n");
    }
#else
    printf("backends: cpu\n");
    printf("cuda module: not built (meson -Dcuda=enabled needs nvcc and cuBLAS)\n");
#endif
    printf("cpu kernels: %s\n", xd_cpu_kernel_path());
    printf("cpu amx: %s\n", xd_cpu_amx_status());
    return 0;
}
