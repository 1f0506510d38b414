/* MXFP4 against bf16 on the CPU: one gpt-oss-20b expert projection (2880 x 2880) holding the same
 * weights in both formats, matmul timed side by side (alternating) at a few batch sizes.
 * Usage: bench-mxfp4 [ROWS COLS [REPS]]; prints a markdown table of tokens/s and the ratio. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_util.h"
#include "engine/base/clock.h"
#include "engine/cpu/cpu_kernels.h"
#include "engine/model/dtype.h"
#include "engine/model/mxfp4.h"


/* Seconds per call of xd_cpu_matmul over reps calls (the best of three rounds). */
static double time_matmul(const float *x, int n, const struct xd_matrix *w, float *y, int reps)
{
    double best = 1e30;
    for (int round = 0; round < 3; round++) {
        double t0 = xd_now();
        for (int r = 0; r < reps; r++)
            xd_cpu_matmul(x, n, w, y);
        double dt = (xd_now() - t0) / reps;
        best = dt < best ? dt : best;
    }
    return best;
}

int main(int argc, char **argv)
{
    bench_rng = 2880u; /* the seed its recorded figures were made with */
    const int64_t rows = argc > 2 ? atoll(argv[1]) : 2880, cols = argc > 2 ? atoll(argv[2]) : 2880;
    const int reps = argc > 3 ? atoi(argv[3]) : 20;
    if (rows <= 0 || cols <= 0 || cols % 32 != 0 || reps <= 0) {
        fprintf(stderr, "usage: %s [ROWS COLS(multiple of 32) [REPS]]\n", argv[0]);
        return 2;
    }
    const int64_t nb = rows * cols / 32;
    struct xd_block_mxfp4 *q = malloc((size_t)nb * sizeof *q);
    uint16_t *bf = malloc((size_t)(rows * cols) * sizeof *bf);
    float *deq = malloc((size_t)(rows * cols) * sizeof *deq);
    const int max_n = 32;
    float *x = malloc(sizeof(float) * (size_t)(max_n * cols));
    float *y = malloc(sizeof(float) * (size_t)(max_n * rows));
    if (!q || !bf || !deq || !x || !y) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (int64_t b = 0; b < nb; b++) {
        q[b].e = (uint8_t)(118 + bench_rand_u32() % 6);
        for (int j = 0; j < 16; j++)
            q[b].qs[j] = (uint8_t)bench_rand_u32();
    }
    /* the same weights in bf16: e2m1 x 2^k has at most two significant bits, exact in bf16 */
    xd_mxfp4_dequantize_row(q, deq, rows * cols);
    for (int64_t i = 0; i < rows * cols; i++)
        bf[i] = xd_f32_to_bf16(deq[i]);
    for (int64_t i = 0; i < max_n * cols; i++)
        x[i] = (float)((int)(bench_rand_u32() % 2001) - 1000) / 1000.0f;
    const struct xd_matrix wq = {.dtype = XD_DTYPE_MXFP4, .rows = rows, .cols = cols, .data = q};
    const struct xd_matrix wb = {.dtype = XD_DTYPE_BF16, .rows = rows, .cols = cols, .data = bf};

    printf("kernel path: %s\n", xd_cpu_kernel_path());
    printf("matrix %lld x %lld: bf16 %.2f MiB, mxfp4 %.2f MiB (%.2fx smaller)\n\n",
           (long long)rows, (long long)cols, (double)(rows * cols * 2) / 1048576.0,
           (double)nb * 17 / 1048576.0, (double)(rows * cols * 2) / ((double)nb * 17));
    printf("| tokens | bf16 tok/s | mxfp4 tok/s | mxfp4 / bf16 |\n| --- | --- | --- | --- |\n");
    const int ns[] = {1, 4, 32};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        const int n = ns[i];
        double tb = 0, tq = 0;
        for (int pass = 0; pass < 2; pass++) { /* alternate, so both see the same machine */
            tb += time_matmul(x, n, &wb, y, reps);
            tq += time_matmul(x, n, &wq, y, reps);
        }
        printf("| %d | %.0f | %.0f | %.2f |\n", n, 2.0 * n / tb, 2.0 * n / tq, tb / tq);
    }
    free(q);
    free(bf);
    free(deq);
    free(x);
    free(y);
    return 0;
}
