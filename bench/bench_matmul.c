/* One bf16 (or f32/f16) matmul at a few token counts: process CPU seconds and wall seconds per
 * call, GFLOP/s (2 n rows cols per call) on both clocks, the best of several rounds.
 * Usage: bench-matmul [ROWS COLS [DTYPE(bf16|f32|f16) [N...]]]; a markdown table on stdout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench_util.h"
#include "engine/base/clock.h"
#include "engine/cpu/cpu_kernels.h"
#include "engine/model/dtype.h"


static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    const int64_t rows = argc > 2 ? atoll(argv[1]) : 2048, cols = argc > 2 ? atoll(argv[2]) : 2048;
    const char *dts = argc > 3 ? argv[3] : "bf16";
    enum xd_dtype dt = strcmp(dts, "f32") == 0   ? XD_DTYPE_F32
                       : strcmp(dts, "f16") == 0 ? XD_DTYPE_F16
                                                 : XD_DTYPE_BF16;
    int ns[16], n_ns, max_n;
    if (bench_token_counts(argc, argv, 4, "bench-matmul", ns, &n_ns, &max_n))
        return 2;
    if (rows <= 0 || cols <= 0) {
        fprintf(stderr, "usage: %s [ROWS COLS [bf16|f32|f16 [N...]]]\n", argv[0]);
        return 2;
    }
    const size_t esz = dt == XD_DTYPE_F32 ? 4 : 2;
    void *wd = malloc((size_t)(rows * cols) * esz);
    float *x = malloc(sizeof(float) * (size_t)max_n * (size_t)cols);
    float *y = malloc(sizeof(float) * (size_t)max_n * (size_t)rows);
    if (!wd || !x || !y) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (int64_t i = 0; i < rows * cols; i++) {
        float v = bench_rand_f();
        if (dt == XD_DTYPE_F32)
            ((float *)wd)[i] = v;
        else
            ((uint16_t *)wd)[i] = dt == XD_DTYPE_F16 ? xd_f32_to_f16(v) : xd_f32_to_bf16(v);
    }
    for (int64_t i = 0; i < max_n * cols; i++)
        x[i] = bench_rand_f();
    struct xd_matrix w = {.dtype = dt, .rows = rows, .cols = cols, .data = wd};
    printf("kernel: %s\n\n", xd_cpu_kernel_path());
    printf("| %s %lld x %lld, n | CPU ms/call | wall ms/call | GFLOP/s (CPU) | GFLOP/s (wall) |\n",
           dts, (long long)rows, (long long)cols);
    printf("| ---: | ---: | ---: | ---: | ---: |\n");
    for (int i = 0; i < n_ns; i++) {
        const int n = ns[i];
        const double flop = 2.0 * n * (double)rows * (double)cols;
        int reps = (int)(2e9 / flop);
        reps = reps < 1 ? 1 : reps > 200 ? 200 : reps;
        xd_cpu_matmul(x, n, &w, y); /* warm */
        double best_cpu = 1e30, best_wall = 1e30;
        for (int round = 0; round < 5; round++) {
            double c0 = cpu_now(), t0 = xd_now();
            for (int r = 0; r < reps; r++)
                xd_cpu_matmul(x, n, &w, y);
            double c = (cpu_now() - c0) / reps, t = (xd_now() - t0) / reps;
            best_cpu = c < best_cpu ? c : best_cpu;
            best_wall = t < best_wall ? t : best_wall;
        }
        printf("| %d | %.3f | %.3f | %.1f | %.1f |\n", n, 1e3 * best_cpu, 1e3 * best_wall,
               flop / best_cpu * 1e-9, flop / best_wall * 1e-9);
    }
    free(wd);
    free(x);
    free(y);
    return 0;
}
