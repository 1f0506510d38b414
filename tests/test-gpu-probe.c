/* GPU suite: the CUDA runtime links and sees the device; skipped (77) where there is no GPU. */
#include <stdio.h>
#include <string.h>

#include "tests/gpu_test.h"

int main(void)
{
    char info[512];
    if (!gpu_test_available(info, sizeof info))
        return 77;
    printf("gpus: %s\n", info);
    int ok = strstr(info, "sm_") != NULL;
    printf("%d passed, %d failed\n", ok, !ok);
    return ok ? 0 : 1;
}
