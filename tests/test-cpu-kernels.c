/* CPU matmul kernels: every path (the one this CPU runs, or EXPERTD_CPU_KERNEL's) sums each
 * output element in its documented order, bit for bit, whatever the number of tokens and rows. */
#include <stdint.h>
#include <stdlib.h>

#include "engine/cpu/cpu_kernels.h"
#include "engine/model/dtype.h"
#include "engine/model/fp8.h"
#include "engine/model/quant.h"
#include "tests/test.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) & 0xffffff) / (float)0x800000 - 1.0f;
}

static int is_portable(void)
{
    return strncmp(xd_cpu_kernel_path(), "portable", 8) == 0;
}

/* One element in the path's documented order: sixteen lanes over the whole blocks of K, the
 * tree h = 8, 4, 2, 1, then the tail from 0. The vector paths use one rounding per
 * multiply-add (fmaf, correctly rounded in libm), the portable path two. */
static float ref_dot(const float *x, const float *w, int k, int fused)
{
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= k; i += 16)
        for (int j = 0; j < 16; j++)
            acc[j] = fused ? fmaf(x[i + j], w[i + j], acc[j]) : acc[j] + x[i + j] * w[i + j];
    float tail = 0.0f;
    for (; i < k; i++)
        tail = fused ? fmaf(x[i], w[i], tail) : tail + x[i] * w[i];
    for (int h = 8; h > 0; h /= 2)
        for (int j = 0; j < h; j++)
            acc[j] += acc[j + h];
    return acc[0] + tail;
}

static int is_bf16dp(void)
{
    return strncmp(xd_cpu_kernel_path(), "avx512bf16", 10) == 0;
}

/* The opt-in avx512bf16 path's order for bf16 weights: x rounded to bf16; sixteen lanes, lane j
 * adding x[k + 1] w[k + 1], then x[k] w[k], for k = 32 i + 2 j over the whole blocks of 32 (the
 * products are exact in f32), the tree h = 8, 4, 2, 1, then the tail from 0. */
static float ref_dot_bf16x(const float *x, const float *w, int k)
{
    float acc[16] = {0};
    int i = 0;
    for (; i + 32 <= k; i += 32)
        for (int j = 0; j < 16; j++) {
            int a = i + 2 * j;
            acc[j] += xd_bf16_to_f32(xd_f32_to_bf16(x[a + 1])) * w[a + 1];
            acc[j] += xd_bf16_to_f32(xd_f32_to_bf16(x[a])) * w[a];
        }
    float tail = 0.0f;
    for (; i < k; i++)
        tail = fmaf(xd_bf16_to_f32(xd_f32_to_bf16(x[i])), w[i], tail);
    for (int h = 8; h > 0; h /= 2)
        for (int j = 0; j < h; j++)
            acc[j] += acc[j + h];
    return acc[0] + tail;
}

/* y for n tokens against rows x cols weights of dtype dt, checked element by element against
 * ref_dot, and every token's row against the same token computed alone. */
static void check_shape(enum xd_dtype dt, int n, int rows, int cols)
{
    float *x = malloc(sizeof(float) * (size_t)n * cols);
    float *wf = malloc(sizeof(float) * (size_t)rows * cols); /* the weights as f32 */
    uint16_t *wh = malloc(sizeof(uint16_t) * (size_t)rows * cols);
    float *y = malloc(sizeof(float) * (size_t)n * rows);
    float *y1 = malloc(sizeof(float) * (size_t)rows);
    for (int i = 0; i < n * cols; i++)
        x[i] = frand();
    for (int i = 0; i < rows * cols; i++) {
        float v = frand();
        if (dt == XD_DTYPE_BF16) {
            wh[i] = xd_f32_to_bf16(v);
            v = xd_bf16_to_f32(wh[i]);
        } else if (dt == XD_DTYPE_F16) {
            wh[i] = xd_f32_to_f16(v);
            v = xd_f16_to_f32(wh[i]);
        }
        wf[i] = v;
    }
    struct xd_matrix w = {.dtype = dt, .rows = rows, .cols = cols,
                          .data = dt == XD_DTYPE_F32 ? (const void *)wf : wh};
    xd_cpu_matmul(x, n, &w, y);
    int bad_ref = 0, bad_alone = 0;
    for (int t = 0; t < n; t++) {
        for (int r = 0; r < rows; r++) {
            const float *xt = x + (size_t)t * cols, *wr = wf + (size_t)r * cols;
            float want = is_bf16dp() && dt == XD_DTYPE_BF16 ? ref_dot_bf16x(xt, wr, cols)
                                                             : ref_dot(xt, wr, cols, !is_portable());
            bad_ref += memcmp(&want, &y[(size_t)t * rows + r], sizeof want) != 0;
        }
        xd_cpu_matmul(x + (size_t)t * cols, 1, &w, y1);
        bad_alone += memcmp(y1, y + (size_t)t * rows, sizeof(float) * (size_t)rows) != 0;
    }
    CHECK(bad_ref == 0, "%s n %d rows %d cols %d: %d elements differ from the documented order",
          xd_dtype_name(dt), n, rows, cols, bad_ref);
    CHECK(bad_alone == 0, "%s n %d rows %d cols %d: %d tokens differ from themselves alone",
          xd_dtype_name(dt), n, rows, cols, bad_alone);
    free(x);
    free(wf);
    free(wh);
    free(y);
    free(y1);
}

/* Token counts 1..13 and 64 cover every tile remainder of both vector paths; rows 37 leaves a
 * remainder of rows; cols 1040 is whole blocks, 77 has a tail, 5 is all tail. */
static void test_matmul_order(void)
{
    const enum xd_dtype dts[] = {XD_DTYPE_F32, XD_DTYPE_BF16, XD_DTYPE_F16};
    const int ns[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 64};
    const int cols[] = {1040, 77, 5};
    for (size_t d = 0; d < 3; d++)
        for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
            for (size_t c = 0; c < 3; c++)
                check_shape(dts[d], ns[i], 37, cols[c]);
}

/* The GEMM (24 tokens or more: token blocks, K panels, row chunks, tiles of tokens x rows)
 * against the GEMV (each token alone), bit for bit, for n = 1..37 tokens (the GEMV tiles below
 * 24, every remainder of a token tile above): rows 13 leave a remainder of every row group;
 * cols 531 is two whole K panels, a part panel and a tail of 3, 15 is all tail, 11001 makes
 * token blocks of 18 (37 tokens in three blocks) of 43 K panels; also through
 * xd_cpu_matmul_rows over rows 3..12 (an odd start and a part range, as the MoE work items call
 * it). */
static void check_gemm_gemv(enum xd_dtype dt, int rows, int cols)
{
    const int max_n = 37;
    float *x = malloc(sizeof(float) * (size_t)max_n * cols);
    uint16_t *wh = malloc(sizeof(uint16_t) * (size_t)rows * cols);
    float *wf = malloc(sizeof(float) * (size_t)rows * cols);
    float *y = malloc(sizeof(float) * (size_t)max_n * rows);
    float *yr = malloc(sizeof(float) * (size_t)max_n * rows);
    float *alone = malloc(sizeof(float) * (size_t)max_n * rows);
    for (int i = 0; i < max_n * cols; i++)
        x[i] = frand();
    for (int i = 0; i < rows * cols; i++) {
        wf[i] = frand();
        wh[i] = dt == XD_DTYPE_F16 ? xd_f32_to_f16(wf[i]) : xd_f32_to_bf16(wf[i]);
    }
    struct xd_matrix w = {.dtype = dt, .rows = rows, .cols = cols,
                          .data = dt == XD_DTYPE_F32 ? (const void *)wf : wh};
    for (int t = 0; t < max_n; t++) /* the GEMV on this thread: the same bits as xd_cpu_matmul */
        xd_cpu_matmul_rows(x + (size_t)t * cols, 1, &w, alone + (size_t)t * rows, 0, rows);
    int bad_n = 0, bad_rows_n = 0, first_bad = 0;
    for (int n = 1; n <= max_n; n++) {
        for (int i = 0; i < n * rows; i++)
            y[i] = yr[i] = -1.0f;
        xd_cpu_matmul(x, n, &w, y);
        xd_cpu_matmul_rows(x, n, &w, yr, 3, 12);
        if (memcmp(y, alone, sizeof(float) * (size_t)n * rows) != 0) {
            bad_n++;
            first_bad = first_bad ? first_bad : n;
        }
        int bad = 0;
        for (int t = 0; t < n; t++)
            for (int r = 0; r < rows; r++) {
                const float *got = &yr[(size_t)t * rows + r];
                if (r >= 3 && r < 12)
                    bad += memcmp(got, &alone[(size_t)t * rows + r], sizeof *got) != 0;
                else
                    bad += *got != -1.0f; /* rows outside the range untouched */
            }
        bad_rows_n += bad != 0;
    }
    CHECK(bad_n == 0, "%s rows %d cols %d: %d token counts (first %d) differ from the GEMV",
          xd_dtype_name(dt), rows, cols, bad_n, first_bad);
    CHECK(bad_rows_n == 0, "%s rows %d cols %d: xd_cpu_matmul_rows(3, 12) wrong at %d token counts",
          xd_dtype_name(dt), rows, cols, bad_rows_n);
    free(x);
    free(wh);
    free(wf);
    free(y);
    free(yr);
    free(alone);
}

static void test_gemm_equals_gemv(void)
{
    const enum xd_dtype dts[] = {XD_DTYPE_F32, XD_DTYPE_BF16, XD_DTYPE_F16};
    for (size_t d = 0; d < 3; d++) {
        check_gemm_gemv(dts[d], 13, 531);
        check_gemm_gemv(dts[d], 13, 15);
        check_gemm_gemv(dts[d], 13, 11001);
    }
}

/* FP8 weights as stored (128 x 128 blocks of f32 or bf16 scales, both dimensions partial here)
 * give the bits of the same matrix dequantized to f32 (xd_fp8_convert, transformers'
 * dequantization) through the f32 kernel of this path, at every token count from 1 to 37 (the
 * GEMV tiles and the GEMM), for the whole matrix and a range of rows; codes of every kind
 * (subnormal, -0, the largest) but NaN, which the loader refuses. */
static void check_fp8(int rows, int cols, enum xd_dtype scale_dt)
{
    const int max_n = 37;
    const int64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
    uint8_t *codes = malloc((size_t)rows * cols);
    float *scale = malloc(sizeof(float) * (size_t)(sr * sc));
    uint16_t *scale_bf16 = malloc(sizeof(uint16_t) * (size_t)(sr * sc));
    float *wf = malloc(sizeof(float) * (size_t)rows * cols);
    float *x = malloc(sizeof(float) * (size_t)max_n * cols);
    float *y = malloc(sizeof(float) * (size_t)max_n * rows);
    float *want = malloc(sizeof(float) * (size_t)max_n * rows);
    for (int64_t i = 0; i < (int64_t)rows * cols; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        const uint8_t b = (uint8_t)(rng >> 56);
        codes[i] = (b & 0x7f) == 0x7f ? (uint8_t)(b ^ 1) : b;
    }
    for (int64_t i = 0; i < sr * sc; i++) {
        scale[i] = (1.0f + frand()) * 0.01f + 1e-4f;
        scale_bf16[i] = xd_f32_to_bf16(scale[i]);
    }
    for (int i = 0; i < max_n * cols; i++)
        x[i] = frand();
    const struct xd_matrix w8 = {.dtype = XD_DTYPE_F8_E4M3, .rows = rows, .cols = cols,
                                 .data = codes,
                                 .scale = scale_dt == XD_DTYPE_BF16 ? (const void *)scale_bf16
                                                                    : scale,
                                 .scale_dtype = scale_dt};
    struct xd_matrix wref;
    xd_fp8_convert(&w8, 128, 128, 0, wf, &wref);
    int bad_n = 0, bad_rows = 0, first_bad = 0;
    for (int n = 1; n <= max_n; n++) {
        xd_cpu_matmul(x, n, &wref, want);
        xd_cpu_matmul(x, n, &w8, y);
        if (memcmp(y, want, sizeof(float) * (size_t)n * rows) != 0) {
            bad_n++;
            first_bad = first_bad ? first_bad : n;
        }
        for (int i = 0; i < n * rows; i++)
            y[i] = -1.0f;
        xd_cpu_matmul_rows(x, n, &w8, y, 5, rows - 3);
        for (int t = 0; t < n; t++)
            for (int r = 0; r < rows; r++) {
                const float *got = &y[(size_t)t * rows + r];
                bad_rows += r >= 5 && r < rows - 3
                                ? memcmp(got, &want[(size_t)t * rows + r], sizeof *got) != 0
                                : *got != -1.0f;
            }
    }
    CHECK(bad_n == 0, "F8_E4M3 (%s scales) %dx%d: %d token counts (first %d) differ from the "
          "dequantized f32 matrix", xd_dtype_name(scale_dt), rows, cols, bad_n, first_bad);
    CHECK(bad_rows == 0, "F8_E4M3 %dx%d: %d elements of xd_cpu_matmul_rows(5, %d) wrong", rows,
          cols, bad_rows, rows - 3);
    free(codes);
    free(scale);
    free(scale_bf16);
    free(wf);
    free(x);
    free(y);
    free(want);
}

/* The KV cache's store (xd_cpu_f32_to_16, F16C for f16 on x86) gives the scalar conversions'
 * bits: ties, subnormals, the f16 overflow threshold (65520 rounds to infinity, 65519 to
 * 65504), signed zeros, infinities, and many random values; a NaN stays a NaN. */
static void test_kv_store_rounding_equals_scalar(void)
{
    enum { N = 4099 }; /* not a multiple of 8: the scalar tail too */
    float *x = malloc(sizeof(float) * N);
    uint16_t *got = malloc(sizeof(uint16_t) * N);
    const float edge[] = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.0f, 65520.0f, -65520.0f,
                          1e9f, INFINITY, -INFINITY, 6.1035156e-05f, 5.9604645e-08f,
                          2.9802322e-08f, 8.940697e-08f, 1.0009766f, 1.0004883f, 1.0014648f,
                          3.3895314e38f, 1e-40f, -1e-40f, 1.00390625f, 1.01171875f};
    const int n_edge = (int)(sizeof edge / sizeof edge[0]);
    uint32_t r = 12345;
    for (int i = 0; i < N; i++) {
        r = r * 1664525u + 1013904223u;
        uint32_t bits = r;
        float f;
        memcpy(&f, &bits, sizeof f);
        x[i] = i < n_edge ? edge[i] : (i % 3 == 0 ? f : (float)(int32_t)r / 16384.0f);
        if (isnan(x[i]))
            x[i] = 0.5f;
    }
    x[N - 1] = NAN;
    const enum xd_dtype dts[2] = {XD_DTYPE_BF16, XD_DTYPE_F16};
    for (int d = 0; d < 2; d++) {
        xd_cpu_f32_to_16(dts[d], x, got, N);
        int bad = 0;
        for (int i = 0; i < N - 1; i++) {
            const uint16_t want =
                dts[d] == XD_DTYPE_BF16 ? xd_f32_to_bf16(x[i]) : xd_f32_to_f16(x[i]);
            if (got[i] != want && bad++ < 5)
                fprintf(stderr, "  %s: %.9g -> 0x%04x, want 0x%04x\n", xd_dtype_name(dts[d]),
                        (double)x[i], got[i], want);
        }
        const float back =
            dts[d] == XD_DTYPE_BF16 ? xd_bf16_to_f32(got[N - 1]) : xd_f16_to_f32(got[N - 1]);
        CHECK(bad == 0, "%s: %d values round differently from the scalar conversion",
              xd_dtype_name(dts[d]), bad);
        CHECK(isnan(back), "%s: NaN stored as 0x%04x", xd_dtype_name(dts[d]), got[N - 1]);
    }
    free(x);
    free(got);
}

static void test_fp8_equals_dequantized(void)
{
    check_fp8(300, 400, XD_DTYPE_F32);
    check_fp8(13, 128, XD_DTYPE_F32);
    check_fp8(130, 272, XD_DTYPE_BF16);
}

/* xd_cpu_matmul_multi (one region over several matrices, dynamic row chunks below 24 tokens)
 * against each matrix alone on this thread, bit for bit: f32, bf16, f16, q8_0 and q4_1 matrices
 * of different heights (a part chunk at each one's end) sharing one input, at token counts on
 * both sides of the GEMM's threshold. */
static void test_multi_equals_alone(void)
{
    enum { K = 5, COLS = 320, MAX_N = 30 };
    const enum xd_dtype dts[K] = {XD_DTYPE_BF16, XD_DTYPE_F32, XD_DTYPE_Q8_0, XD_DTYPE_F16,
                                  XD_DTYPE_Q4_1};
    const int rows[K] = {300, 77, 130, 64, 33};
    float *x = malloc(sizeof(float) * MAX_N * COLS);
    for (int i = 0; i < MAX_N * COLS; i++)
        x[i] = frand();
    struct xd_matrix w[K];
    void *data[K];
    float *y[K], *alone[K];
    for (int m = 0; m < K; m++) {
        const size_t nw = (size_t)rows[m] * COLS;
        float *wf = malloc(sizeof(float) * nw);
        for (size_t i = 0; i < nw; i++)
            wf[i] = frand();
        struct xd_matrix src = {.dtype = XD_DTYPE_F32, .rows = rows[m], .cols = COLS, .data = wf};
        if (dts[m] == XD_DTYPE_F32) {
            data[m] = wf;
            w[m] = src;
        } else if (xd_dtype_is_quant(dts[m])) {
            data[m] = malloc((size_t)rows[m] * xd_dtype_row_bytes(dts[m], COLS));
            xd_quant_matrix(&src, dts[m], data[m], &w[m]);
            free(wf);
        } else {
            uint16_t *wh = malloc(sizeof(uint16_t) * nw);
            for (size_t i = 0; i < nw; i++)
                wh[i] = dts[m] == XD_DTYPE_F16 ? xd_f32_to_f16(wf[i]) : xd_f32_to_bf16(wf[i]);
            data[m] = wh;
            w[m] = (struct xd_matrix){.dtype = dts[m], .rows = rows[m], .cols = COLS, .data = wh};
            free(wf);
        }
        y[m] = malloc(sizeof(float) * MAX_N * (size_t)rows[m]);
        alone[m] = malloc(sizeof(float) * MAX_N * (size_t)rows[m]);
    }
    const struct xd_matrix *ws[K] = {&w[0], &w[1], &w[2], &w[3], &w[4]};
    const int ns[] = {1, 2, 7, 23, 24, 30};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        const int n = ns[i];
        for (int m = 0; m < K; m++) {
            if (xd_dtype_is_quant(dts[m])) {
                void *buf = malloc(xd_cpu_qacts_bytes(dts[m], n, COLS));
                struct xd_cpu_qacts qa;
                xd_cpu_qacts_init(buf, dts[m], n, COLS, &qa);
                xd_cpu_qacts_quantize(&qa, x, 0, n);
                xd_cpu_matmul_quant_rows(&qa, &w[m], alone[m], 0, rows[m], xd_cpu_quant_path());
                free(buf);
            } else {
                xd_cpu_matmul_rows(x, n, &w[m], alone[m], 0, rows[m]);
            }
            for (int j = 0; j < n * rows[m]; j++)
                y[m][j] = -1.0f;
        }
        xd_cpu_matmul_multi(x, n, K, ws, y);
        for (int m = 0; m < K; m++) {
            const size_t bytes = sizeof(float) * (size_t)n * (size_t)rows[m];
            CHECK(memcmp(y[m], alone[m], bytes) == 0,
                  "n %d: matrix %d (%s, %d rows) differs from itself alone", n, m,
                  xd_dtype_name(dts[m]), rows[m]);
            float *one = malloc(bytes);
            xd_cpu_matmul(x, n, &w[m], one);
            CHECK(memcmp(one, alone[m], bytes) == 0,
                  "n %d: xd_cpu_matmul of matrix %d (%s) differs from the row kernel", n, m,
                  xd_dtype_name(dts[m]));
            free(one);
        }
    }
    for (int m = 0; m < K; m++) {
        free(data[m]);
        free(y[m]);
        free(alone[m]);
    }
    free(x);
}

static void test_path_named(void)
{
    const char *p = xd_cpu_kernel_path();
    printf("     kernel path: %s\n", p);
    CHECK(strncmp(p, "avx512f", 7) == 0 || strncmp(p, "avx2+fma", 8) == 0 || is_portable() ||
              is_bf16dp(),
          "unknown path '%s'", p);
    CHECK(!is_bf16dp() || (getenv("EXPERTD_CPU_KERNEL") &&
                           strcmp(getenv("EXPERTD_CPU_KERNEL"), "avx512bf16") == 0),
          "the bf16-activation path ran without being asked for");
    const char *want = getenv("EXPERTD_CPU_KERNEL");
    if (want && strcmp(want, "portable") == 0)
        CHECK(is_portable(), "EXPERTD_CPU_KERNEL=portable ran '%s'", p);
}

int main(void)
{
    RUN(test_path_named);
    RUN(test_matmul_order);
    RUN(test_gemm_equals_gemv);
    RUN(test_multi_equals_alone);
    RUN(test_fp8_equals_dequantized);
    RUN(test_kv_store_rounding_equals_scalar);
    return test_summary();
}
