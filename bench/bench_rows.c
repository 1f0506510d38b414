/* bench-rows: one thread's best time (wall and process CPU) for xd_cpu_matmul over a large q8,
 * q4, q4k, q6k, MXFP4 or bf16 matrix at a few tokens (the decode case of the MoE items' kernels;
 * more tokens with fewer ROWS for prefill), so two builds or two formats can be compared on the
 * kernel alone: the source uses only the whole-matrix API, which main has too.
 * Usage: OMP_NUM_THREADS=1 bench-rows q8|q4|q4k|q6k|mxfp4|bf16 TOKENS [ROWS (65536)] [REPEATS (10)] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/base/clock.h"
#include "engine/cpu/cpu_kernels.h"
#include "engine/model/mxfp4.h"
#include "engine/model/quant.h"

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench-rows q8|q4|q4k|q6k|mxfp4|bf16 TOKENS [ROWS] [REPEATS]\n");
        return 2;
    }
    const char *fmt = argv[1];
    const int n = atoi(argv[2]);
    const int64_t rows = argc > 3 ? atoll(argv[3]) : 65536, cols = 2048;
    const int repeats = argc > 4 ? atoi(argv[4]) : 10;
    if (n < 1 || rows < 1 || repeats < 1) {
        fprintf(stderr, "bench-rows: TOKENS, ROWS and REPEATS must be positive\n");
        return 2;
    }
    struct xd_matrix w;
    void *wq = NULL;
    if (strcmp(fmt, "mxfp4") == 0) {
        const int64_t nb = rows * cols / 32;
        struct xd_block_mxfp4 *wb = malloc((size_t)nb * sizeof *wb);
        if (!wb)
            return 1;
        for (int64_t b = 0; b < nb; b++) {
            wb[b].e = (uint8_t)(120 + b % 13);
            for (int j = 0; j < 16; j++)
                wb[b].qs[j] = (uint8_t)(b * 31 + j * 7);
        }
        w = (struct xd_matrix){.dtype = XD_DTYPE_MXFP4, .rows = rows, .cols = cols, .data = wb};
        wq = wb;
    } else if (strcmp(fmt, "q8") == 0 || strcmp(fmt, "q4") == 0 || strcmp(fmt, "q4k") == 0 ||
               strcmp(fmt, "q6k") == 0) {
        const enum xd_dtype dt = fmt[1] == '8'   ? XD_DTYPE_Q8_0
                                 : fmt[1] == '6' ? XD_DTYPE_Q6_K
                                 : fmt[2] == 'k' ? XD_DTYPE_Q4_K
                                                 : XD_DTYPE_Q4_1;
        float *wf = malloc(sizeof(float) * (size_t)(rows * cols));
        wq = malloc((size_t)rows * xd_dtype_row_bytes(dt, cols));
        if (!wf || !wq)
            return 1;
        for (int64_t i = 0; i < rows * cols; i++)
            wf[i] = (float)((uint32_t)(i * 2654435761u) % 1000) / 500.0f - 1.0f;
        struct xd_matrix src = {.dtype = XD_DTYPE_F32, .rows = rows, .cols = cols, .data = wf};
        xd_quant_matrix(&src, dt, wq, &w);
        free(wf);
    } else if (strcmp(fmt, "bf16") == 0) {
        uint16_t *wb = malloc(sizeof(uint16_t) * (size_t)(rows * cols));
        if (!wb)
            return 1;
        for (int64_t i = 0; i < rows * cols; i++)
            wb[i] = xd_f32_to_bf16((float)((uint32_t)(i * 2654435761u) % 1000) / 500.0f - 1.0f);
        w = (struct xd_matrix){.dtype = XD_DTYPE_BF16, .rows = rows, .cols = cols, .data = wb};
        wq = wb;
    } else {
        fprintf(stderr, "bench-rows: unknown format '%s' (q8, q4, q4k, q6k, mxfp4 or bf16)\n",
                fmt);
        return 2;
    }
    float *x = malloc(sizeof(float) * (size_t)n * cols);
    float *y = malloc(sizeof(float) * (size_t)n * rows);
    if (!x || !y)
        return 1;
    for (int64_t i = 0; i < n * cols; i++)
        x[i] = (float)(i % 77) / 40.0f - 1.0f;
    double best = 1e30, best_cpu = 1e30;
    for (int r = 0; r < repeats; r++) {
        const double t0 = xd_now(), c0 = cpu_now();
        xd_cpu_matmul(x, n, &w, y);
        const double t = xd_now() - t0, c = cpu_now() - c0;
        best = t < best ? t : best;
        best_cpu = c < best_cpu ? c : best_cpu;
    }
    const double bytes = (double)rows * (double)xd_dtype_row_bytes(w.dtype, cols);
    printf("{\"format\": \"%s\", \"tokens\": %d, \"rows\": %lld, \"cols\": %lld, \"best_ms\": %.3f, "
           "\"best_cpu_ms\": %.3f, \"weight_gbps\": %.2f, \"path\": \"%s\"}\n",
           fmt, n, (long long)rows, (long long)cols, best * 1e3, best_cpu * 1e3,
           bytes / best / 1e9, xd_cpu_kernel_path());
    free(wq);
    free(x);
    free(y);
    return 0;
}
