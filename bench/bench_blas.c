/* expertd's matmul against the maintained libraries issue 14 names, on the same shapes and
 * threads: OpenBLAS's sgemm (Debian's libopenblas-dev: f32 only, its bf16 sbgemm is not built in
 * Debian's package, so the weights are widened to f32 for it, twice the bytes) and oneDNN's
 * matmul (Debian's libdnnl-dev 2.6: f32 x f32, and bf16 x bf16 with the activations rounded to
 * bf16, which is other numerics). Each library's y (n, rows) = x (n, cols) @ w^T, w (rows, cols)
 * as expertd stores it (bf16, row-major).
 *
 * Two things are measured per shape and token count n: wall ms per call (the best of 5 rounds)
 * and batch invariance: whether every row of the n-token product has the same bits as the
 * 1-token product of that row alone (expertd's kernels guarantee it; a library that picks
 * another blocking or reduction order for another n, or for a row's place in its blocks, does
 * not).
 *
 * Usage: bench-blas [ROWS COLS [N...]] (default 2048 2048, n = 1 8 64 512); threads from
 * OMP_NUM_THREADS (expertd, oneDNN's OpenMP runtime) and the same count for OpenBLAS. Built
 * only where both libraries are found (bench/meson.build); results in
 * bench/results/engine-cpu-blas.md. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>

#include "bench/bench_util.h"
#include "engine/base/clock.h"
#include "engine/cpu/cpu_kernels.h"
#include "engine/model/dtype.h"

void openblas_set_num_threads(int n); /* OpenBLAS's own; not in every cblas.h */


#define DNNL_OK(call)                                                                          \
    do {                                                                                       \
        dnnl_status_t st_ = (call);                                                            \
        if (st_ != dnnl_success) {                                                             \
            fprintf(stderr, "bench-blas: %s failed (oneDNN status %d)\n", #call, (int)st_);    \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

/* One oneDNN matmul primitive y (n, rows) = x (n, cols) @ w (cols, rows), w given as the
 * row-major (rows, cols) array expertd keeps (the format tag "ba" of the (cols, rows) view). */
struct dnnl_mm {
    dnnl_primitive_t prim;
    dnnl_memory_t src, wei, dst;
};

static void dnnl_mm_init(struct dnnl_mm *m, dnnl_engine_t eng, int64_t n, int64_t rows,
                         int64_t cols, dnnl_data_type_t dt, void *x, void *w, float *y)
{
    dnnl_memory_desc_t src_md, wei_md, dst_md;
    dnnl_dims_t sd = {n, cols}, wd = {cols, rows}, dd = {n, rows};
    DNNL_OK(dnnl_memory_desc_init_by_tag(&src_md, 2, sd, dt, dnnl_ab));
    DNNL_OK(dnnl_memory_desc_init_by_tag(&wei_md, 2, wd, dt, dnnl_ba));
    DNNL_OK(dnnl_memory_desc_init_by_tag(&dst_md, 2, dd, dnnl_f32, dnnl_ab));
    dnnl_matmul_desc_t desc;
    DNNL_OK(dnnl_matmul_desc_init(&desc, &src_md, &wei_md, NULL, &dst_md));
    dnnl_primitive_desc_t pd;
    DNNL_OK(dnnl_primitive_desc_create(&pd, &desc, NULL, eng, NULL));
    DNNL_OK(dnnl_primitive_create(&m->prim, pd));
    DNNL_OK(dnnl_primitive_desc_destroy(pd));
    DNNL_OK(dnnl_memory_create(&m->src, &src_md, eng, x));
    DNNL_OK(dnnl_memory_create(&m->wei, &wei_md, eng, w));
    DNNL_OK(dnnl_memory_create(&m->dst, &dst_md, eng, y));
}

static void dnnl_mm_run(const struct dnnl_mm *m, dnnl_stream_t stream)
{
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, m->src}, {DNNL_ARG_WEIGHTS, m->wei},
                               {DNNL_ARG_DST, m->dst}};
    DNNL_OK(dnnl_primitive_execute(m->prim, stream, 3, args));
    DNNL_OK(dnnl_stream_wait(stream));
}

static void dnnl_mm_free(struct dnnl_mm *m)
{
    dnnl_primitive_destroy(m->prim);
    dnnl_memory_destroy(m->src);
    dnnl_memory_destroy(m->wei);
    dnnl_memory_destroy(m->dst);
}

enum engine { E_EXPERTD, E_OPENBLAS, E_DNNL_F32, E_DNNL_BF16, N_ENGINES };
static const char *engine_name[N_ENGINES] = {
    "expertd (bf16 weights, f32 math)", "OpenBLAS sgemm (weights widened to f32)",
    "oneDNN f32 (weights widened to f32)", "oneDNN bf16 x bf16 (activations rounded)"};

struct bufs {
    int64_t rows, cols;
    uint16_t *w_bf16; /* (rows, cols) */
    float *w_f32;     /* the same, widened */
    float *x;         /* (max_n, cols) */
    uint16_t *x_bf16; /* x rounded to bf16 */
    float *y;         /* (max_n, rows) */
    dnnl_engine_t eng;
    dnnl_stream_t stream;
};

/* Runs engine e on tokens t0 .. t0 + n - 1 of x reps times (after one warm call), returns the
 * best wall seconds per call over 5 rounds; y holds the result. */
static double run(struct bufs *b, enum engine e, int t0, int n, int reps)
{
    float *x = b->x + (size_t)t0 * (size_t)b->cols;
    uint16_t *x_bf16 = b->x_bf16 + (size_t)t0 * (size_t)b->cols;
    struct xd_matrix w = {.dtype = XD_DTYPE_BF16, .rows = b->rows, .cols = b->cols,
                          .data = b->w_bf16};
    struct dnnl_mm mm;
    if (e == E_DNNL_F32)
        dnnl_mm_init(&mm, b->eng, n, b->rows, b->cols, dnnl_f32, x, b->w_f32, b->y);
    else if (e == E_DNNL_BF16)
        dnnl_mm_init(&mm, b->eng, n, b->rows, b->cols, dnnl_bf16, x_bf16, b->w_bf16, b->y);
    double best = 1e30;
    for (int round = 0; round < 6; round++) {
        const int k = round == 0 ? 1 : reps; /* round 0: the warm call */
        double c0 = xd_now();
        for (int r = 0; r < k; r++) {
            switch (e) {
            case E_EXPERTD: xd_cpu_matmul(x, n, &w, b->y); break;
            case E_OPENBLAS:
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)b->rows,
                            (int)b->cols, 1.0f, x, (int)b->cols, b->w_f32, (int)b->cols, 0.0f,
                            b->y, (int)b->rows);
                break;
            default: dnnl_mm_run(&mm, b->stream); break;
            }
        }
        double t = (xd_now() - c0) / k;
        if (round > 0)
            best = t < best ? t : best;
    }
    if (e == E_DNNL_F32 || e == E_DNNL_BF16)
        dnnl_mm_free(&mm);
    return best;
}

int main(int argc, char **argv)
{
    const int64_t rows = argc > 2 ? atoll(argv[1]) : 2048, cols = argc > 2 ? atoll(argv[2]) : 2048;
    int ns[16], n_ns, max_n;
    if (bench_token_counts(argc, argv, 3, "bench-blas", ns, &n_ns, &max_n))
        return 2;
    if (rows <= 0 || cols <= 0 || rows > 1 << 20 || cols > 1 << 20) {
        fprintf(stderr, "usage: %s [ROWS COLS [N...]]\n", argv[0]);
        return 2;
    }
    const int threads = omp_get_max_threads();
    openblas_set_num_threads(threads);
    struct bufs b = {.rows = rows, .cols = cols};
    b.w_bf16 = malloc(sizeof(uint16_t) * (size_t)(rows * cols));
    b.w_f32 = malloc(sizeof(float) * (size_t)(rows * cols));
    b.x = malloc(sizeof(float) * (size_t)max_n * (size_t)cols);
    b.x_bf16 = malloc(sizeof(uint16_t) * (size_t)max_n * (size_t)cols);
    b.y = malloc(sizeof(float) * (size_t)max_n * (size_t)rows);
    float *yn = malloc(sizeof(float) * (size_t)max_n * (size_t)rows);
    if (!b.w_bf16 || !b.w_f32 || !b.x || !b.x_bf16 || !b.y || !yn) {
        fprintf(stderr, "bench-blas: out of memory\n");
        return 1;
    }
    for (int64_t i = 0; i < rows * cols; i++) {
        b.w_bf16[i] = xd_f32_to_bf16(bench_rand_f());
        b.w_f32[i] = xd_bf16_to_f32(b.w_bf16[i]);
    }
    for (int64_t i = 0; i < max_n * cols; i++) {
        b.x[i] = bench_rand_f();
        b.x_bf16[i] = xd_f32_to_bf16(b.x[i]);
    }
    DNNL_OK(dnnl_engine_create(&b.eng, dnnl_cpu, 0));
    DNNL_OK(dnnl_stream_create(&b.stream, b.eng, dnnl_stream_default_flags));

    printf("expertd kernel: %s\nOpenBLAS core: %s; threads: %d\n\n", xd_cpu_kernel_path(),
           openblas_get_corename(), threads);
    printf("| %lld x %lld, n | engine | wall ms/call | GFLOP/s | speed / expertd's | every row = its 1-token bits |\n",
           (long long)rows, (long long)cols);
    printf("| ---: | --- | ---: | ---: | ---: | --- |\n");
    for (int i = 0; i < n_ns; i++) {
        const int n = ns[i];
        const double flop = 2.0 * n * (double)rows * (double)cols;
        int reps = (int)(1e9 / flop);
        reps = reps < 2 ? 2 : reps > 200 ? 200 : reps;
        double t_xd = 0.0;
        for (int e = 0; e < N_ENGINES; e++) {
            const double t = run(&b, (enum engine)e, 0, n, reps);
            /* batch invariance: each token's row of that call against the token alone */
            memcpy(yn, b.y, sizeof(float) * (size_t)n * (size_t)rows);
            int same = 1;
            double max_rel = 0.0;
            for (int tok = 0; tok < n; tok++) {
                run(&b, (enum engine)e, tok, 1, 1);
                const float *row = yn + (size_t)tok * (size_t)rows;
                if (memcmp(row, b.y, sizeof(float) * (size_t)rows) == 0)
                    continue;
                same = 0;
                for (int64_t r = 0; r < rows; r++) {
                    double d = fabs((double)row[r] - (double)b.y[r]) /
                               (fabs((double)b.y[r]) + 1e-30);
                    max_rel = d > max_rel ? d : max_rel;
                }
            }
            if (e == E_EXPERTD)
                t_xd = t;
            char inv[64];
            if (same)
                snprintf(inv, sizeof inv, "yes");
            else
                snprintf(inv, sizeof inv, "no (up to %.1e relative)", max_rel);
            printf("| %d | %s | %.3f | %.1f | %.2fx | %s |\n", n, engine_name[e], 1e3 * t,
                   flop / t * 1e-9, t_xd / t, inv);
        }
        fflush(stdout);
    }
    dnnl_stream_destroy(b.stream);
    dnnl_engine_destroy(b.eng);
    free(b.w_bf16);
    free(b.w_f32);
    free(b.x);
    free(b.x_bf16);
    free(b.y);
    free(yn);
    return 0;
}
