/* The MXFP4 weights (engine/model/mxfp4.[ch]) and their matmul (engine/cpu/mxfp4_kernels.c): the
 * e2m1/e8m0 decoding, the documented summation order on both paths (the same bits), batched =
 * alone, and the gpt_oss-mxfp4-bf16 fixture's experts kept as MXFP4 bytes at load.
 * Usage: test-mxfp4 FIXTURES_DIR */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cpu/mxfp4_kernels.h"
#include "engine/model/model.h"
#include "engine/model/mxfp4.h"
#include "tests/test.h"

static const char *fixtures;

static uint32_t rng = 12345u;
static uint32_t next_u32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

/* rows x cols MXFP4 weights with scales around 2^0 (e in 120..132) and every code. */
static struct xd_block_mxfp4 *random_weights(int64_t rows, int64_t cols)
{
    const int64_t nb = rows * cols / 32;
    struct xd_block_mxfp4 *w = malloc((size_t)nb * sizeof *w);
    for (int64_t b = 0; b < nb; b++) {
        w[b].e = (uint8_t)(120 + next_u32() % 13);
        for (int j = 0; j < 16; j++)
            w[b].qs[j] = (uint8_t)next_u32();
    }
    return w;
}

static void test_decode(void)
{
    /* e = 127: scale 1; e = 0: 2^-127 (a subnormal, exact); e = 254: 2^127 */
    CHECK(xd_mxfp4_scale(127) == 1.0f && xd_mxfp4_scale(128) == 2.0f, "scale 1, 2");
    CHECK(xd_mxfp4_scale(0) == ldexpf(1.0f, -127) && xd_mxfp4_scale(0) > 0.0f, "scale 2^-127");
    CHECK(xd_mxfp4_scale(254) == ldexpf(1.0f, 127), "scale 2^127");
    struct xd_block_mxfp4 b = {.e = 126}; /* 0.5 */
    for (int j = 0; j < 16; j++)
        b.qs[j] = (uint8_t)(j | (15 - j) << 4); /* even column code j, odd column 15 - j */
    float v[32];
    xd_mxfp4_dequantize_row(&b, v, 32);
    static const float e2m1[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
    for (int j = 0; j < 16; j++) {
        const float lo = (j & 8 ? -1.0f : 1.0f) * e2m1[j & 7] * 0.5f;
        const float hi = ((15 - j) & 8 ? -1.0f : 1.0f) * e2m1[(15 - j) & 7] * 0.5f;
        CHECK(v[2 * j] == lo && v[2 * j + 1] == hi, "byte %d: %g %g, want %g %g", j,
              (double)v[2 * j], (double)v[2 * j + 1], (double)lo, (double)hi);
    }
    uint8_t blocks[16] = {0}, scales[1] = {255};
    CHECK(xd_mxfp4_pack_row(blocks, scales, 1, &b) < 0, "scale 255 (NaN) refused");
}

/* Both paths give the same bits; a row of 7 tokens equals each token alone; the result is the
 * dot product with the dequantized weights within f32 rounding. */
static void test_matmul(void)
{
    const int64_t rows = 37, cols = 96; /* rows: not a multiple of any tile */
    const int n = 7;
    struct xd_block_mxfp4 *wb = random_weights(rows, cols);
    const struct xd_matrix w = {.dtype = XD_DTYPE_MXFP4, .rows = rows, .cols = cols, .data = wb};
    float *x = malloc(sizeof(float) * (size_t)(n * cols));
    for (int64_t i = 0; i < n * cols; i++)
        x[i] = (float)((int)(next_u32() % 2001) - 1000) / 250.0f;
    float *yp = malloc(sizeof(float) * (size_t)(n * rows));
    float *yv = malloc(sizeof(float) * (size_t)(n * rows));
    float *y1 = malloc(sizeof(float) * (size_t)rows);
    float *deq = malloc(sizeof(float) * (size_t)(rows * cols));
    xd_mxfp4_dequantize_row(wb, deq, rows * cols);

    xd_cpu_matmul_mxfp4(x, n, &w, yp, XD_MXFP4_PORTABLE);
    const struct {
        enum xd_mxfp4_path path;
        const char *name;
        int have;
    } paths[] = {{XD_MXFP4_AVX2, "avx2",
                  __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")},
                 {XD_MXFP4_AVX512, "avx512", __builtin_cpu_supports("avx512f")}};
    enum xd_mxfp4_path best = XD_MXFP4_PORTABLE;
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        if (!paths[i].have) {
            printf("  (no %s on this CPU: not compared)\n", paths[i].name);
            continue;
        }
        best = paths[i].path;
        memset(yv, 0xff, sizeof(float) * (size_t)(n * rows));
        xd_cpu_matmul_mxfp4(x, n, &w, yv, paths[i].path);
        CHECK(memcmp(yp, yv, sizeof(float) * (size_t)(n * rows)) == 0, "%s and portable differ",
              paths[i].name);
        printf("  %s = portable, bit for bit\n", paths[i].name);
    }
    double worst = 0.0;
    for (int t = 0; t < n; t++) {
        xd_cpu_matmul_mxfp4(x + t * cols, 1, &w, y1, best);
        CHECK(memcmp(y1, yp + t * rows, sizeof(float) * (size_t)rows) == 0,
              "token %d alone differs from its batch", t);
        for (int64_t r = 0; r < rows; r++) {
            double ref = 0.0, mag = 0.0;
            for (int64_t c = 0; c < cols; c++) {
                ref += (double)deq[r * cols + c] * x[t * cols + c];
                mag += fabs((double)deq[r * cols + c] * x[t * cols + c]);
            }
            double err = fabs(yp[t * rows + r] - ref) / (mag + 1e-30);
            worst = err > worst ? err : worst;
        }
    }
    CHECK(worst < 1e-6, "relative error %g against the dequantized f64 dot product", worst);
    printf("  worst relative error %.3g (f64 reference)\n", worst);
    free(wb);
    free(x);
    free(yp);
    free(yv);
    free(y1);
    free(deq);
}

/* The row-range kernel over rows deinterleaved once (the MoE work items' form) gives the
 * whole-matrix kernel's bits on every path for ranges cutting the four-row tiles anywhere and
 * token pieces cutting the four-token tiles. */
static void test_rows_equal_whole(void)
{
    const int64_t rows = 41, cols = 160;
    const int n = 11;
    struct xd_block_mxfp4 *wb = random_weights(rows, cols);
    const struct xd_matrix w = {.dtype = XD_DTYPE_MXFP4, .rows = rows, .cols = cols, .data = wb};
    float *x = malloc(sizeof(float) * (size_t)(n * cols));
    float *xd = malloc(sizeof(float) * (size_t)(n * cols));
    float *want = malloc(sizeof(float) * (size_t)(n * rows));
    float *got = malloc(sizeof(float) * (size_t)(n * rows));
    for (int64_t i = 0; i < n * cols; i++)
        x[i] = (float)((int)(next_u32() % 2001) - 1000) / 250.0f;
    xd_cpu_mxfp4_prep(x, 5, cols, xd);
    xd_cpu_mxfp4_prep(x + 5 * cols, n - 5, cols, xd + 5 * cols);
    const enum xd_mxfp4_path paths[] = {XD_MXFP4_PORTABLE, XD_MXFP4_AVX2, XD_MXFP4_AVX512};
    const int have[] = {1, __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"),
                        __builtin_cpu_supports("avx512f")};
    const int rcut[] = {0, 3, 4, 9, 18, 37, (int)rows}, tcut[] = {0, 1, 6, 7, n};
    for (int p = 0; p < 3; p++) {
        if (!have[p])
            continue;
        xd_cpu_matmul_mxfp4(x, n, &w, want, paths[p]);
        memset(got, 0xff, sizeof(float) * (size_t)(n * rows));
        for (int ti = 0; ti + 1 < 5; ti++)
            for (int ri = 0; ri + 1 < 7; ri++)
                xd_cpu_matmul_mxfp4_rows(xd + (size_t)tcut[ti] * cols, tcut[ti + 1] - tcut[ti],
                                         &w, got + (size_t)tcut[ti] * rows, rcut[ri],
                                         rcut[ri + 1], paths[p]);
        int bad = 0;
        for (int64_t i = 0; i < n * rows; i++)
            if (memcmp(&got[i], &want[i], sizeof(float)) != 0 && bad++ < 3)
                CHECK(0, "path %d: y[%d][%d] range kernel %.9g, whole matrix %.9g", p,
                      (int)(i / rows), (int)(i % rows), got[i], want[i]);
    }
    free(wb);
    free(x);
    free(xd);
    free(want);
    free(got);
}

/* The published layout loads as MXFP4 (not widened): 17 bytes per 32 weights of each matrix. */
static void test_fixture_kept_mxfp4(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/golden/gpt_oss-mxfp4-bf16", fixtures);
    struct xd_model *m = NULL;
    struct xd_err err;
    int rc = xd_model_load(dir, &m, &err);
    CHECK(rc == XD_OK, "%s", err.msg);
    if (rc != XD_OK)
        return;
    const struct xd_model_config *c = &m->config;
    CHECK(c->experts_mxfp4, "quantization_config read");
    struct xd_expert_weights w;
    CHECK(xd_expert_store_acquire(&m->experts, 2, 5, &w) == XD_OK, "acquire");
    CHECK(w.gate.dtype == XD_DTYPE_MXFP4 && w.up.dtype == XD_DTYPE_MXFP4 &&
              w.down.dtype == XD_DTYPE_MXFP4,
          "experts %s %s %s", xd_dtype_name(w.gate.dtype), xd_dtype_name(w.up.dtype),
          xd_dtype_name(w.down.dtype));
    CHECK(w.gate.rows == c->expert_ffn && w.gate.cols == c->hidden_size &&
              w.down.rows == c->hidden_size && w.down.cols == c->expert_ffn,
          "shapes");
    CHECK(w.gate_bias.data && w.up_bias.data && w.down_bias.data, "biases");
    xd_expert_store_release(&m->experts, 2, 5);
    const size_t want = (size_t)3 * c->expert_ffn * (c->hidden_size / 32) * 17;
    CHECK(xd_model_expert_bytes(m) == want, "expert bytes %zu, want %zu",
          xd_model_expert_bytes(m), want);
    xd_model_destroy(m);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FIXTURES_DIR\n", argv[0]);
        return 2;
    }
    fixtures = argv[1];
    RUN(test_decode);
    RUN(test_matmul);
    RUN(test_rows_equal_whole);
    RUN(test_fixture_kept_mxfp4);
    return test_summary();
}
