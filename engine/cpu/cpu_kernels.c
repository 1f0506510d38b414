/* CPU kernels: matmul over f32/bf16/f16 weights, and FP8 (E4M3, 128x128 block scales) decoded
 * in registers (register-blocked AVX-512 / AVX2+FMA, or portable C, chosen at run time) with
 * OpenMP, norms, rotary, activations. */
#include "engine/cpu/cpu_kernels.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "engine/cpu/mxfp4_kernels.h"
#include "engine/cpu/quant_kernels.h"
#include "engine/model/dtype.h"
#include "engine/model/fp8.h"
#include "engine/model/quant.h"

/* Sixteen independent partial sums so the compiler vectorises the loop
 * without reassociating (no -ffast-math); the order is fixed, so results are
 * reproducible run to run. */
#define LANES 16

static inline __attribute__((always_inline)) float dot_f32(const float *a, const float *b, int n)
{
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            acc[j] += a[i + j] * b[i + j];
    float tail = 0.0f;
    for (; i < n; i++)
        tail += a[i] * b[i];
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++)
            acc[j] += acc[j + w];
    return acc[0] + tail;
}

static inline __attribute__((always_inline)) float dot_bf16(const float *a, const uint16_t *b,
                                                           int n)
{
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            acc[j] += a[i + j] * xd_bf16_to_f32(b[i + j]);
    float tail = 0.0f;
    for (; i < n; i++)
        tail += a[i] * xd_bf16_to_f32(b[i]);
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++)
            acc[j] += acc[j + w];
    return acc[0] + tail;
}

/* Four dot products against one vector b, each in exactly dot_f32's order (the same lanes, tail
 * and reduction), so a token's result does not depend on how many tokens share the step; b is
 * loaded once for the four, which is what makes prefill faster than four single dots. */
static inline __attribute__((always_inline)) void dot4_f32(const float *a, int64_t stride,
                                                          const float *b, int n, float *ret)
{
    const float *a0 = a, *a1 = a + stride, *a2 = a + 2 * stride, *a3 = a + 3 * stride;
    float acc0[LANES] = {0}, acc1[LANES] = {0}, acc2[LANES] = {0}, acc3[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            const float bj = b[i + j];
            acc0[j] += a0[i + j] * bj;
            acc1[j] += a1[i + j] * bj;
            acc2[j] += a2[i + j] * bj;
            acc3[j] += a3[i + j] * bj;
        }
    float t0 = 0.0f, t1 = 0.0f, t2 = 0.0f, t3 = 0.0f;
    for (; i < n; i++) {
        t0 += a0[i] * b[i];
        t1 += a1[i] * b[i];
        t2 += a2[i] * b[i];
        t3 += a3[i] * b[i];
    }
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++) {
            acc0[j] += acc0[j + w];
            acc1[j] += acc1[j + w];
            acc2[j] += acc2[j + w];
            acc3[j] += acc3[j + w];
        }
    ret[0] = acc0[0] + t0;
    ret[1] = acc1[0] + t1;
    ret[2] = acc2[0] + t2;
    ret[3] = acc3[0] + t3;
}

float xd_cpu_dot(const float *a, const float *b, int n)
{
    return dot_f32(a, b, n);
}

/* Rows of output computed per task: enough work to amortise scheduling. */
#define ROW_TILE 16

/* The portable path, and the reference the vector paths are checked against: plain C, no FMA
 * (ISO C11 forbids contraction). Compiled twice, for x86-64-v3 (AVX2, FMA) and for the baseline, and picked at load time
 * for the CPU it runs on; the inlined dot products vectorise for each. (Not under
 * ThreadSanitizer: its instrumented ifunc resolver runs before the runtime exists and crashes.) */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
static void portable_rows(const float *x, int n, const struct xd_matrix *w, float *y,
                          int64_t r_begin, int64_t r_end)
{
    const int64_t rows = w->rows, cols = w->cols;
    {
        /* 16-bit weights are widened once per row when several tokens share it */
        float wrow[w->dtype == XD_DTYPE_F32 ? 1 : cols];
        for (int64_t r = r_begin; r < r_end; r++) {
            const float *wr = wrow;
            if (w->dtype == XD_DTYPE_F32) {
                wr = (const float *)w->data + r * cols;
            } else if (w->dtype == XD_DTYPE_BF16 && n == 1) {
                y[r] = dot_bf16(x, (const uint16_t *)w->data + r * cols, (int)cols);
                continue;
            } else if (w->dtype == XD_DTYPE_F8_E4M3) {
                xd_fp8_dequantize_row(w, XD_FP8_KERNEL_BLOCK, XD_FP8_KERNEL_BLOCK, r, wrow);
            } else {
                xd_dtype_to_f32(w->dtype, (const uint16_t *)w->data + r * cols, wrow,
                                (size_t)cols);
            }
            int t = 0;
            for (; t + 4 <= n; t += 4) {
                float out[4];
                dot4_f32(x + (int64_t)t * cols, cols, wr, (int)cols, out);
                for (int k = 0; k < 4; k++)
                    y[(int64_t)(t + k) * rows + r] = out[k];
            }
            for (; t < n; t++)
                y[(int64_t)t * rows + r] = dot_f32(x + (int64_t)t * cols, wr, (int)cols);
        }
    }
}


/* ---- Register-blocked vector paths (x86-64, chosen at run time) ----
 *
 * Every output element y[t][r] is summed in one fixed order whatever the tile around it:
 * sixteen lanes acc[j] = fma(x[k], w[k], acc[j]) over k = 16 i + j for the whole blocks of 16,
 * then the tree acc[j] += acc[j + h] for h = 8, 4, 2, 1, then plus the tail (k past the last
 * whole block) summed one fmaf at a time from 0. The tile only decides which elements share the
 * loads of one pass over K, never the order of an element's sum, so a token's result does not
 * depend on how many tokens share the step (1 alone, 64 batched, or a prefill chunk) nor on its
 * place in the tile. The AVX2 path keeps the sixteen lanes in two 8-lane registers (lanes 0-7,
 * 8-15) and adds them first, which is the h = 8 step: both paths give the same bits. They differ
 * from portable_rows in the last bits (one rounding per multiply-add instead of two). */
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define XD_HAVE_X86_PATHS 1

/* Output rows and tokens per register tile: AVX-512 holds 4 x 6 accumulators of 16 lanes plus 4
 * weight vectors and one token vector in its 32 registers; AVX2 holds 1 x 4 accumulators of two
 * 8-lane halves (8) plus two weight halves and two token halves in its 16 (one row per tile
 * widens each bf16 weight once for four tokens). */
#define R512 4
#define T512 6
#define R256 1
#define T256 4

#define TGT512 __attribute__((target("avx512f,avx2,fma,f16c")))

/* Fewer tokens than one full token tile (up to 5: decode at batch 1, and the experts of a batched
 * decode step, which get 1 to 3 tokens each) run their rows one at a time, not R512 together:
 * each row's weights are then one sequential stream. In bench-engine that measured about 1.4x the
 * batch-1 decode of the 4-row tiles, and +6% decode at batch 8 over taking one token alone
 * (bench/results/engine-cpu-decode.md). From 6 tokens the 4-row tiles, which share each token
 * load between rows, stay. An element's order is the same either way (the tile shape never
 * changes an element's bits). */
#define GEMV_ONE_ROW_MAX_N 5

#define TGT256 __attribute__((target("avx2,fma,f16c")))

TGT512 static inline __attribute__((always_inline)) __m512 load16_512(const void *w, int64_t i,
                                                                    enum xd_dtype dt)
{
    switch (dt) {
    case XD_DTYPE_F32: return _mm512_loadu_ps((const float *)w + i);
    case XD_DTYPE_BF16: {
        __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case XD_DTYPE_F16:
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i)));
    default: break; /* block formats: quant_kernels.c */
    }
    return _mm512_setzero_ps();
}

/* The tree h = 8, 4, 2, 1 over sixteen lanes held as lo (0-7) + hi (8-15) halves. */
TGT256 static inline __attribute__((always_inline)) float reduce16(__m256 lo, __m256 hi)
{
    __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    return _mm_cvtss_f32(s1);
}

TGT512 static inline __attribute__((always_inline)) float reduce16_512(__m512 a)
{
    __m256 lo = _mm512_castps512_ps256(a);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
    return reduce16(lo, hi);
}

/* FP8 weights (XD_DTYPE_F8_E4M3 with 128 x 128 blocks of scales): the kernels are handed the
 * matrix itself as their weight pointer (KDATA), for its scales. Weight (r, k)'s scale. */
static inline __attribute__((always_inline)) float fp8_scale(const struct xd_matrix *m, int64_t r,
                                                            int64_t k)
{
    /* unsigned: shifts, not signed divisions */
    const size_t i = (size_t)r / XD_FP8_KERNEL_BLOCK *
                         (((size_t)m->cols + XD_FP8_KERNEL_BLOCK - 1) / XD_FP8_KERNEL_BLOCK) +
                     (size_t)k / XD_FP8_KERNEL_BLOCK;
    return m->scale_dtype == XD_DTYPE_BF16 ? xd_bf16_to_f32(((const uint16_t *)m->scale)[i])
                                           : ((const float *)m->scale)[i];
}

/* What the kernels below take as the weights of w: its data, or w itself for FP8. */
#define KDATA(w, dt) ((dt) == XD_DTYPE_F8_E4M3 ? (const void *)(w) : (w)->data)

static inline __attribute__((always_inline)) float weight_at(const void *w, int64_t i,
                                                            enum xd_dtype dt)
{
    switch (dt) {
    case XD_DTYPE_F8_E4M3: { /* xd_fp8_dequantize_row's product */
        const struct xd_matrix *m = w;
        return xd_f8e4m3_to_f32(((const uint8_t *)m->data)[i]) *
               fp8_scale(m, i / m->cols, i % m->cols);
    }
    case XD_DTYPE_F32: return ((const float *)w)[i];
    case XD_DTYPE_BF16: return xd_bf16_to_f32(((const uint16_t *)w)[i]);
    case XD_DTYPE_F16: return xd_f16_to_f32(((const uint16_t *)w)[i]);
    default: break;
    }
    return 0.0f;
}

/* The tail k = k0 .. cols - 1 of one element, one fmaf at a time from 0. */
TGT256 static inline __attribute__((always_inline)) float tail_sum(const float *x, const void *w,
                                                                  int64_t w_off, int64_t k0,
                                                                  int64_t cols, enum xd_dtype dt)
{
    float t = 0.0f;
    for (int64_t k = k0; k < cols; k++)
        t = __builtin_fmaf(x[k], weight_at(w, w_off + k, dt), t);
    return t;
}

/* y[t][r0 + i] for tokens t0 .. t0 + nt - 1 and rows r0 .. r0 + nr - 1 (nt <= T512, nr <= R512,
 * both constants once inlined): x (n, cols), w (rows, cols) of dtype dt, y (n, rows). */
TGT512 static inline __attribute__((always_inline)) void
tile512(const float *x, const void *w, float *y, int64_t rows, int64_t cols, int64_t t0,
        int64_t r0, const int nt, const int nr, enum xd_dtype dt)
{
    __m512 acc[T512][R512];
#pragma GCC unroll 8
    for (int t = 0; t < nt; t++)
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++)
            acc[t][r] = _mm512_setzero_ps();
    const int64_t kb = cols / 16 * 16;
    for (int64_t k = 0; k < kb; k += 16) {
        __m512 wv[R512];
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++)
            wv[r] = load16_512(w, (r0 + r) * cols + k, dt);
#pragma GCC unroll 8
        for (int t = 0; t < nt; t++) {
            __m512 xv = _mm512_loadu_ps(x + (t0 + t) * cols + k);
#pragma GCC unroll 8
            for (int r = 0; r < nr; r++)
                acc[t][r] = _mm512_fmadd_ps(xv, wv[r], acc[t][r]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < nt; t++)
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++)
            y[(t0 + t) * rows + r0 + r] =
                reduce16_512(acc[t][r]) +
                tail_sum(x + (t0 + t) * cols, w, (r0 + r) * cols, kb, cols, dt);
}

/* One row group (nr rows from r0) against every token, in tiles of T512 tokens. */
TGT512 static inline __attribute__((always_inline)) void
rows512(const float *x, int n, const void *w, float *y, int64_t rows, int64_t cols, int64_t r0,
        const int nr, enum xd_dtype dt)
{
    int64_t t = 0;
    for (; t + T512 <= n; t += T512)
        tile512(x, w, y, rows, cols, t, r0, T512, nr, dt);
    switch (n - t) {
    case 5: tile512(x, w, y, rows, cols, t, r0, 5, nr, dt); break;
    case 4: tile512(x, w, y, rows, cols, t, r0, 4, nr, dt); break;
    case 3: tile512(x, w, y, rows, cols, t, r0, 3, nr, dt); break;
    case 2: tile512(x, w, y, rows, cols, t, r0, 2, nr, dt); break;
    case 1: tile512(x, w, y, rows, cols, t, r0, 1, nr, dt); break;
    default: break;
    }
}

#define DEFINE_MATMUL512(name, dt)                                                               \
    TGT512 static void name(const float *x, int n, const struct xd_matrix *w, float *y,         \
                            int64_t r_begin, int64_t r_end)                                      \
    {                                                                                            \
        int64_t r = r_begin;                                                                     \
        if (n > GEMV_ONE_ROW_MAX_N)                                                                \
            for (; r + R512 <= r_end; r += R512)                                                 \
                rows512(x, n, w->data, y, w->rows, w->cols, r, R512, dt);                        \
        for (; r < r_end; r++)                                                                   \
            rows512(x, n, w->data, y, w->rows, w->cols, r, 1, dt);                               \
    }
DEFINE_MATMUL512(mm512_f32, XD_DTYPE_F32)
DEFINE_MATMUL512(mm512_bf16, XD_DTYPE_BF16)
DEFINE_MATMUL512(mm512_f16, XD_DTYPE_F16)

/* The opt-in AVX512-BF16 path for bf16 weights (EXPERTD_CPU_KERNEL=avx512bf16): the activations
 * are rounded to bf16 (to nearest even, as vcvtne2ps2bf16) and vdpbf16ps multiplies 32 pairs per
 * instruction. Its order per element, whatever the tile: sixteen lanes, lane j taking
 * acc += x[k + 1] w[k + 1], then acc += x[k] w[k] for k = 32 i + 2 j over the whole blocks of 32
 * (each bf16 x bf16 product is exact in f32, so only the additions round), the tree h = 8, 4, 2,
 * 1, then plus the tail past the last whole block summed one fmaf at a time from 0, each x
 * rounded to bf16 first. Rounding the activations costs precision (about 3 significant digits
 * per input), which is why it is not the default. */
#define TGTBF16 __attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl,avx2,fma,f16c")))

TGTBF16 static inline __attribute__((always_inline)) float tail_sum_bf16x(const float *x,
                                                                         const uint16_t *w,
                                                                         int64_t k0, int64_t cols)
{
    float t = 0.0f;
    for (int64_t k = k0; k < cols; k++)
        t = __builtin_fmaf(xd_bf16_to_f32(xd_f32_to_bf16(x[k])), xd_bf16_to_f32(w[k]), t);
    return t;
}

/* 32 activations rounded to bf16 (round to nearest even), in vdpbf16ps's lane order. */
TGTBF16 static inline __attribute__((always_inline)) __m512bh round32_bf16(const float *xs)
{
    return _mm512_cvtne2ps_pbh(_mm512_loadu_ps(xs + 16), _mm512_loadu_ps(xs));
}

/* xb: NULL, or the tokens' activations already rounded (n rows of the whole blocks of 32, kb
 * apart), which the tile then loads instead of rounding each time (the same values). */
TGTBF16 static inline __attribute__((always_inline)) void
tile_bf16(const float *x, const uint16_t *xb, const uint16_t *w, float *y, int64_t rows,
          int64_t cols, int64_t t0, int64_t r0, const int nt, const int nr)
{
    __m512 acc[T512][R512];
#pragma GCC unroll 8
    for (int t = 0; t < nt; t++)
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++)
            acc[t][r] = _mm512_setzero_ps();
    const int64_t kb = cols / 32 * 32;
    for (int64_t k = 0; k < kb; k += 32) {
        __m512bh wv[R512];
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++)
            wv[r] = (__m512bh)_mm512_loadu_si512((const void *)(w + (r0 + r) * cols + k));
#pragma GCC unroll 8
        for (int t = 0; t < nt; t++) {
            const float *xt = x + (t0 + t) * cols + k;
            __m512bh xv = xb ? (__m512bh)_mm512_load_si512((const void *)(xb + (t0 + t) * kb + k))
                             : round32_bf16(xt);
#pragma GCC unroll 8
            for (int r = 0; r < nr; r++)
                acc[t][r] = _mm512_dpbf16_ps(acc[t][r], xv, wv[r]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < nt; t++)
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++)
            y[(t0 + t) * rows + r0 + r] =
                reduce16_512(acc[t][r]) +
                tail_sum_bf16x(x + (t0 + t) * cols, w + (r0 + r) * cols, kb, cols);
}

TGTBF16 static inline __attribute__((always_inline)) void
rows_bf16(const float *x, const uint16_t *xb, int n, const uint16_t *w, float *y, int64_t rows,
          int64_t cols, int64_t r0, const int nr)
{
    int64_t t = 0;
    for (; t + T512 <= n; t += T512)
        tile_bf16(x, xb, w, y, rows, cols, t, r0, T512, nr);
    switch (n - t) {
    case 5: tile_bf16(x, xb, w, y, rows, cols, t, r0, 5, nr); break;
    case 4: tile_bf16(x, xb, w, y, rows, cols, t, r0, 4, nr); break;
    case 3: tile_bf16(x, xb, w, y, rows, cols, t, r0, 3, nr); break;
    case 2: tile_bf16(x, xb, w, y, rows, cols, t, r0, 2, nr); break;
    case 1: tile_bf16(x, xb, w, y, rows, cols, t, r0, 1, nr); break;
    default: break;
    }
}

/* Activations (bf16 values) the GEMV rounds once onto its stack, 64 KiB: from the whole blocks
 * of 32 of up to this many token values; a larger input is rounded as each tile loads it. */
#define XB_MAX 32768

TGTBF16 static inline __attribute__((always_inline)) void
mm_bf16dp_rows(const float *x, const uint16_t *xb, int n, const struct xd_matrix *w, float *y,
               int64_t r_begin, int64_t r_end)
{
    const uint16_t *wd = w->data;
    int64_t r = r_begin;
    if (n > GEMV_ONE_ROW_MAX_N)
        for (; r + R512 <= r_end; r += R512)
            rows_bf16(x, xb, n, wd, y, w->rows, w->cols, r, R512);
    for (; r < r_end; r++)
        rows_bf16(x, xb, n, wd, y, w->rows, w->cols, r, 1);
}

TGTBF16 static void mm_bf16dp(const float *x, int n, const struct xd_matrix *w, float *y,
                              int64_t r_begin, int64_t r_end)
{
    const int64_t cols = w->cols, kb = cols / 32 * 32;
    if ((int64_t)n * kb > XB_MAX || kb == 0) {
        mm_bf16dp_rows(x, NULL, n, w, y, r_begin, r_end);
        return;
    }
    uint16_t xb[XB_MAX] __attribute__((aligned(64)));
    for (int64_t t = 0; t < n; t++)
        for (int64_t k = 0; k < kb; k += 32) {
            const float *xs = x + t * cols + k;
            _mm512_store_si512((void *)(xb + t * kb + k),
                               (__m512i)round32_bf16(xs));
        }
    mm_bf16dp_rows(x, xb, n, w, y, r_begin, r_end);
}

/* Weights k .. k + 15 of row `row` (cols a row) as f32 in *lo (k .. k + 7) and *hi. */
TGT256 static inline __attribute__((always_inline)) void
load16_256(const void *w, int64_t row, int64_t k, int64_t cols, enum xd_dtype dt, __m256 *lo,
           __m256 *hi)
{
    const int64_t i = row * cols + k;
    switch (dt) {
    case XD_DTYPE_F8_E4M3: {
        /* each byte b as the f16 bits (b & 0x80) << 8 | (b & 0x7f) << 7, which are fp8(b) / 256
         * exactly (normal and subnormal alike; NaN bytes are refused at load), times 256 x
         * its block's scale: fp8(b) x scale in one rounding, xd_fp8_dequantize_row's bits */
        const struct xd_matrix *m = w;
        const __m256i t = _mm256_slli_epi16(
            _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)((const uint8_t *)m->data + i))),
            7);
        const __m256i h = _mm256_add_epi16(t, _mm256_and_si256(t, _mm256_set1_epi16(0x4000)));
        const __m256 s = _mm256_set1_ps(fp8_scale(m, row, k) * 256.0f);
        *lo = _mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), s);
        *hi = _mm256_mul_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)), s);
        return;
    }
    case XD_DTYPE_F32:
        *lo = _mm256_loadu_ps((const float *)w + i);
        *hi = _mm256_loadu_ps((const float *)w + i + 8);
        return;
    case XD_DTYPE_BF16: {
        const uint16_t *p = (const uint16_t *)w + i;
        __m256i a = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
        __m256i b = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 8)));
        *lo = _mm256_castsi256_ps(_mm256_slli_epi32(a, 16));
        *hi = _mm256_castsi256_ps(_mm256_slli_epi32(b, 16));
        return;
    }
    case XD_DTYPE_F16: {
        const uint16_t *p = (const uint16_t *)w + i;
        *lo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        *hi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8)));
        return;
    }
    default: break;
    }
    *lo = *hi = _mm256_setzero_ps();
}

/* As tile512, with each 16-lane accumulator held as two 8-lane halves. */
TGT256 static inline __attribute__((always_inline)) void
tile256(const float *x, const void *w, float *y, int64_t rows, int64_t cols, int64_t t0,
        int64_t r0, const int nt, const int nr, enum xd_dtype dt)
{
    __m256 lo[T256][R256], hi[T256][R256];
#pragma GCC unroll 8
    for (int t = 0; t < nt; t++)
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++)
            lo[t][r] = hi[t][r] = _mm256_setzero_ps();
    const int64_t kb = cols / 16 * 16;
    for (int64_t k = 0; k < kb; k += 16) {
        __m256 wl[R256], wh[R256];
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++)
            load16_256(w, r0 + r, k, cols, dt, &wl[r], &wh[r]);
#pragma GCC unroll 8
        for (int t = 0; t < nt; t++) {
            const float *xt = x + (t0 + t) * cols + k;
            __m256 xl = _mm256_loadu_ps(xt), xh = _mm256_loadu_ps(xt + 8);
#pragma GCC unroll 8
            for (int r = 0; r < nr; r++) {
                lo[t][r] = _mm256_fmadd_ps(xl, wl[r], lo[t][r]);
                hi[t][r] = _mm256_fmadd_ps(xh, wh[r], hi[t][r]);
            }
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < nt; t++)
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++)
            y[(t0 + t) * rows + r0 + r] =
                reduce16(lo[t][r], hi[t][r]) +
                tail_sum(x + (t0 + t) * cols, w, (r0 + r) * cols, kb, cols, dt);
}

TGT256 static inline __attribute__((always_inline)) void
rows256(const float *x, int n, const void *w, float *y, int64_t rows, int64_t cols, int64_t r0,
        const int nr, enum xd_dtype dt)
{
    int64_t t = 0;
    for (; t + T256 <= n; t += T256)
        tile256(x, w, y, rows, cols, t, r0, T256, nr, dt);
    switch (n - t) {
    case 3: tile256(x, w, y, rows, cols, t, r0, 3, nr, dt); break;
    case 2: tile256(x, w, y, rows, cols, t, r0, 2, nr, dt); break;
    case 1: tile256(x, w, y, rows, cols, t, r0, 1, nr, dt); break;
    default: break;
    }
}

#define DEFINE_MATMUL256(name, dt)                                                               \
    TGT256 static void name(const float *x, int n, const struct xd_matrix *w, float *y,         \
                            int64_t r_begin, int64_t r_end)                                      \
    {                                                                                            \
        int64_t r = r_begin;                                                                     \
        for (; r + R256 <= r_end; r += R256)                                                     \
            rows256(x, n, KDATA(w, dt), y, w->rows, w->cols, r, R256, dt);                       \
        for (; r < r_end; r++)                                                                   \
            rows256(x, n, KDATA(w, dt), y, w->rows, w->cols, r, 1, dt);                          \
    }
DEFINE_MATMUL256(mm256_f32, XD_DTYPE_F32)
DEFINE_MATMUL256(mm256_bf16, XD_DTYPE_BF16)
DEFINE_MATMUL256(mm256_f16, XD_DTYPE_F16)
DEFINE_MATMUL256(mm256_f8, XD_DTYPE_F8_E4M3)

/* ---- The GEMM: many tokens, in cache-sized blocks ----
 *
 * From GEMM_MIN_N tokens, a range of rows runs as: for each block of up to gemm_token_block
 * tokens (their input, tb x cols f32, sized to stay in L2), for each chunk of up to RC rows, for
 * each K panel of up to KC columns of the whole blocks of 16 (the chunk's panel copied once to
 * f32 in wbuf, L1-sized: bf16/f16 widened, f32 made contiguous), for each tile of tokens (T512
 * or TG256) of the block, for each group of the chunk's rows (R512 or RG256, then single rows):
 * the tile's accumulators taken from ab (zero in the first panel), the panel's fma steps, given
 * back to ab (the last panel reduces and adds the tail instead). A token tile's panel of input
 * stays in L1 across the chunk's row groups and the chunk's weights across the block's token
 * tiles, so the inner loop reads L1 only; each 16-bit weight is widened once per token block,
 * not once per tile. An element keeps its sixteen lanes across the panels, each lane takes its k
 * in the same order as in tile512 / tile256 (the GEMV), the tree and the tail are theirs, and
 * widening bf16/f16 to f32 is exact: every element has the bits it has computed alone
 * (tests/test-cpu-kernels.c test_gemm_equals_gemv). */
#define KC 256     /* columns of a K panel: a multiple of 16 */
#define RC 16      /* rows of a chunk: a multiple of R512 and RG256 */
#define TB_MAX 48  /* tokens of a block at most: a multiple of T512 and TG256 */
#define TB_BYTES (1 << 20) /* the input of a token block fits in this much L2 */
#define GEMM_MIN_N 24 /* fewer tokens run the GEMV tiles (as fast while their input fits L2) */
/* The AVX2 GEMM from 5 tokens: its 4 x 3 tile, one 8-lane half at a time, beat the 1 x 4 GEMV
 * tile from 5 tokens on (bench-rows bf16, one thread, Zen 3: 5 tokens 0.85 ms against 1.04, 16
 * tokens 2.3 against 3.15; 4 tokens 0.72 against 0.53) */
#define GEMM256_MIN_N 5

/* Tokens per block for rows of cols columns: TB_BYTES of input, a multiple of 6, 6..TB_MAX. */
static int64_t gemm_token_block(int64_t cols)
{
    int64_t tb = TB_BYTES / (cols * (int64_t)sizeof(float)) / 6 * 6;
    return tb < 6 ? 6 : tb > TB_MAX ? TB_MAX : tb;
}

/* One tile's pass over the panel k0 .. k1 - 1 (k1 - k0 a multiple of 16): nt tokens from t0, nr
 * rows from r0, weights wp (row i at wp + i * ws, column k at k - k0), accumulators in ab
 * (token i, row j at ab[i * RC + j]). */
TGT512 static inline __attribute__((always_inline)) void
gtile512(const float *x, int64_t cols, const float *wp, int64_t ws, int64_t k0, int64_t k1,
         __m512 *ab, int first, int last, float *y, int64_t rows, int64_t t0, int64_t r0,
         const void *w, enum xd_dtype dt, const int nt, const int nr)
{
    __m512 acc[T512][R512];
#pragma GCC unroll 8
    for (int t = 0; t < nt; t++)
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++)
            acc[t][r] = first ? _mm512_setzero_ps() : ab[t * RC + r];
    for (int64_t k = k0; k < k1; k += 16) {
        __m512 wv[R512];
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++)
            wv[r] = _mm512_loadu_ps(wp + r * ws + (k - k0));
#pragma GCC unroll 8
        for (int t = 0; t < nt; t++) {
            __m512 xv = _mm512_loadu_ps(x + (t0 + t) * cols + k);
#pragma GCC unroll 8
            for (int r = 0; r < nr; r++)
                acc[t][r] = _mm512_fmadd_ps(xv, wv[r], acc[t][r]);
        }
    }
    if (last) {
        const int64_t kb = cols / 16 * 16;
#pragma GCC unroll 8
        for (int t = 0; t < nt; t++)
#pragma GCC unroll 8
            for (int r = 0; r < nr; r++)
                y[(t0 + t) * rows + r0 + r] =
                    reduce16_512(acc[t][r]) +
                    tail_sum(x + (t0 + t) * cols, w, (r0 + r) * cols, kb, cols, dt);
    } else {
#pragma GCC unroll 8
        for (int t = 0; t < nt; t++)
#pragma GCC unroll 8
            for (int r = 0; r < nr; r++)
                ab[t * RC + r] = acc[t][r];
    }
}

/* nt tokens from t (of the block from tb0) against the chunk's rows rc0 .. rc1 - 1. */
TGT512 static inline __attribute__((always_inline)) void
gtiles512(const float *x, int64_t cols, const float *wp, int64_t ws, int64_t k0, int64_t k1,
          __m512 *ab, int first, int last, float *y, int64_t rows, int64_t t, int64_t tb0,
          int64_t rc0, int64_t rc1, const void *w, enum xd_dtype dt, const int nt)
{
    __m512 *at = ab + (t - tb0) * RC;
    int64_t r = rc0;
    for (; r + R512 <= rc1; r += R512)
        gtile512(x, cols, wp + (r - rc0) * ws, ws, k0, k1, at + (r - rc0), first, last, y, rows,
                 t, r, w, dt, nt, R512);
    for (; r < rc1; r++)
        gtile512(x, cols, wp + (r - rc0) * ws, ws, k0, k1, at + (r - rc0), first, last, y, rows,
                 t, r, w, dt, nt, 1);
}

/* The chunk rc0 .. rc1 - 1 (at most RC rows) against tokens tb0 .. tb1 - 1 (at most TB_MAX),
 * panel by panel. */
TGT512 static inline __attribute__((always_inline)) void
chunk512(const float *x, int64_t cols, const void *w, enum xd_dtype dt, float *y, int64_t rows,
         int64_t tb0, int64_t tb1, int64_t rc0, int64_t rc1, float *wbuf, __m512 *ab)
{
    const int64_t kb = cols / 16 * 16;
    int64_t k0 = 0;
    do {
        const int64_t k1 = k0 + KC < kb ? k0 + KC : kb;
        const int first = k0 == 0, last = k1 == kb;
        const float *wp = wbuf;
        const int64_t ws = KC;
        for (int64_t r = rc0; r < rc1; r++) /* f32 copied too: a contiguous panel in L1 */
            for (int64_t k = k0; k < k1; k += 16)
                _mm512_store_ps(wbuf + (r - rc0) * KC + (k - k0), load16_512(w, r * cols + k, dt));
        int64_t t = tb0;
        for (; t + T512 <= tb1; t += T512)
            gtiles512(x, cols, wp, ws, k0, k1, ab, first, last, y, rows, t, tb0, rc0, rc1, w, dt,
                      T512);
        switch (tb1 - t) {
        case 5:
            gtiles512(x, cols, wp, ws, k0, k1, ab, first, last, y, rows, t, tb0, rc0, rc1, w, dt,
                      5);
            break;
        case 4:
            gtiles512(x, cols, wp, ws, k0, k1, ab, first, last, y, rows, t, tb0, rc0, rc1, w, dt,
                      4);
            break;
        case 3:
            gtiles512(x, cols, wp, ws, k0, k1, ab, first, last, y, rows, t, tb0, rc0, rc1, w, dt,
                      3);
            break;
        case 2:
            gtiles512(x, cols, wp, ws, k0, k1, ab, first, last, y, rows, t, tb0, rc0, rc1, w, dt,
                      2);
            break;
        case 1:
            gtiles512(x, cols, wp, ws, k0, k1, ab, first, last, y, rows, t, tb0, rc0, rc1, w, dt,
                      1);
            break;
        default: break;
        }
        k0 = k1;
    } while (k0 < kb);
}

/* Rows r_begin .. r_end - 1: fewer than GEMM_MIN_N tokens through the GEMV tiles (mm512_*),
 * more through the blocked GEMM. */
#define DEFINE_GEMM512(name, gemv, dt)                                                           \
    TGT512 static void name(const float *x, int n, const struct xd_matrix *w, float *y,         \
                            int64_t r_begin, int64_t r_end)                                      \
    {                                                                                            \
        if (n < GEMM_MIN_N) {                                                                    \
            gemv(x, n, w, y, r_begin, r_end);                                                    \
            return;                                                                              \
        }                                                                                        \
        const int64_t cols = w->cols, tb = gemm_token_block(cols);                               \
        float wbuf[RC * KC] __attribute__((aligned(64)));                                        \
        __m512 ab[TB_MAX * RC];                                                                  \
        for (int64_t t0 = 0; t0 < n; t0 += tb) {                                                 \
            const int64_t t1 = t0 + tb < n ? t0 + tb : n;                                        \
            for (int64_t r = r_begin; r < r_end; r += RC)                                        \
                chunk512(x, cols, w->data, dt, y, w->rows, t0, t1, r,                            \
                         r + RC < r_end ? r + RC : r_end, wbuf, ab);                             \
        }                                                                                        \
    }
DEFINE_GEMM512(gemm512_f32, mm512_f32, XD_DTYPE_F32)
DEFINE_GEMM512(gemm512_bf16, mm512_bf16, XD_DTYPE_BF16)
DEFINE_GEMM512(gemm512_f16, mm512_f16, XD_DTYPE_F16)

/* The AVX2 GEMM's register tile: 4 rows x 3 tokens, one 8-lane half of their sixteen lanes at a
 * time (12 accumulators, a token half and three of the rows' weight halves in the 16 registers,
 * the fourth's read by its fma: 9 loads per 12 fma). Both halves at once (2 rows x 3 tokens, 12
 * accumulators) left no register for a token half, so every fma loaded its own: 16 loads per 12
 * fma, 1.3-1.4x the time (bench-rows bf16, one thread, Zen 3); 3 x 3 and 3 x 4 measured between
 * the two. */
#define RG256 4
#define TG256 3

/* As gtile512, each 16-lane accumulator as two 8-lane halves (token i, row j at ab[2 (i RC + j)]
 * and the next), the lanes 0-7 over the panel first, then lanes 8-15: each lane's steps are its
 * own, in k order, whichever half goes first. */
TGT256 static inline __attribute__((always_inline)) void
gtile256(const float *x, int64_t cols, const float *wp, int64_t ws, int64_t k0, int64_t k1,
         __m256 *ab, int first, int last, float *y, int64_t rows, int64_t t0, int64_t r0,
         const void *w, enum xd_dtype dt, const int nt, const int nr)
{
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        __m256 acc[TG256][RG256];
#pragma GCC unroll 8
        for (int t = 0; t < nt; t++)
#pragma GCC unroll 8
            for (int r = 0; r < nr; r++)
                acc[t][r] = first ? _mm256_setzero_ps() : ab[2 * (t * RC + r) + h];
        for (int64_t k = k0; k < k1; k += 16) {
            __m256 wv[RG256];
#pragma GCC unroll 8
            for (int r = 0; r < nr; r++)
                wv[r] = _mm256_loadu_ps(wp + r * ws + (k - k0) + 8 * h);
#pragma GCC unroll 8
            for (int t = 0; t < nt; t++) {
                const __m256 xv = _mm256_loadu_ps(x + (t0 + t) * cols + k + 8 * h);
#pragma GCC unroll 8
                for (int r = 0; r < nr; r++)
                    acc[t][r] = _mm256_fmadd_ps(xv, wv[r], acc[t][r]);
            }
        }
        if (last && h == 1) {
            /* the lanes 0-7 were given back to ab by the first half */
            const int64_t kb = cols / 16 * 16;
#pragma GCC unroll 8
            for (int t = 0; t < nt; t++)
#pragma GCC unroll 8
                for (int r = 0; r < nr; r++)
                    y[(t0 + t) * rows + r0 + r] =
                        reduce16(ab[2 * (t * RC + r)], acc[t][r]) +
                        tail_sum(x + (t0 + t) * cols, w, (r0 + r) * cols, kb, cols, dt);
        } else {
#pragma GCC unroll 8
            for (int t = 0; t < nt; t++)
#pragma GCC unroll 8
                for (int r = 0; r < nr; r++)
                    ab[2 * (t * RC + r) + h] = acc[t][r];
        }
    }
}

TGT256 static inline __attribute__((always_inline)) void
gtiles256(const float *x, int64_t cols, const float *wp, int64_t ws, int64_t k0, int64_t k1,
          __m256 *ab, int first, int last, float *y, int64_t rows, int64_t t, int64_t tb0,
          int64_t rc0, int64_t rc1, const void *w, enum xd_dtype dt, const int nt)
{
    __m256 *at = ab + 2 * (t - tb0) * RC;
    int64_t r = rc0;
    for (; r + RG256 <= rc1; r += RG256)
        gtile256(x, cols, wp + (r - rc0) * ws, ws, k0, k1, at + 2 * (r - rc0), first, last, y,
                 rows, t, r, w, dt, nt, RG256);
    for (; r < rc1; r++)
        gtile256(x, cols, wp + (r - rc0) * ws, ws, k0, k1, at + 2 * (r - rc0), first, last, y,
                 rows, t, r, w, dt, nt, 1);
}

TGT256 static inline __attribute__((always_inline)) void
chunk256(const float *x, int64_t cols, const void *w, enum xd_dtype dt, float *y, int64_t rows,
         int64_t tb0, int64_t tb1, int64_t rc0, int64_t rc1, float *wbuf, __m256 *ab)
{
    const int64_t kb = cols / 16 * 16;
    int64_t k0 = 0;
    do {
        const int64_t k1 = k0 + KC < kb ? k0 + KC : kb;
        const int first = k0 == 0, last = k1 == kb;
        const float *wp = wbuf;
        const int64_t ws = KC;
        for (int64_t r = rc0; r < rc1; r++) /* f32 copied too: a contiguous panel in L1 */
            for (int64_t k = k0; k < k1; k += 16) {
                __m256 l, h;
                load16_256(w, r, k, cols, dt, &l, &h);
                _mm256_store_ps(wbuf + (r - rc0) * KC + (k - k0), l);
                _mm256_store_ps(wbuf + (r - rc0) * KC + (k - k0) + 8, h);
            }
        int64_t t = tb0;
        for (; t + TG256 <= tb1; t += TG256)
            gtiles256(x, cols, wp, ws, k0, k1, ab, first, last, y, rows, t, tb0, rc0, rc1, w, dt,
                      TG256);
        switch (tb1 - t) {
        case 2:
            gtiles256(x, cols, wp, ws, k0, k1, ab, first, last, y, rows, t, tb0, rc0, rc1, w, dt,
                      2);
            break;
        case 1:
            gtiles256(x, cols, wp, ws, k0, k1, ab, first, last, y, rows, t, tb0, rc0, rc1, w, dt,
                      1);
            break;
        default: break;
        }
        k0 = k1;
    } while (k0 < kb);
}

#define DEFINE_GEMM256(name, gemv, dt)                                                           \
    TGT256 static void name(const float *x, int n, const struct xd_matrix *w, float *y,         \
                            int64_t r_begin, int64_t r_end)                                      \
    {                                                                                            \
        if (n < GEMM256_MIN_N) {                                                                 \
            gemv(x, n, w, y, r_begin, r_end);                                                    \
            return;                                                                              \
        }                                                                                        \
        const int64_t cols = w->cols, tb = gemm_token_block(cols);                               \
        float wbuf[RC * KC] __attribute__((aligned(32)));                                        \
        __m256 ab[2 * TB_MAX * RC];                                                              \
        for (int64_t t0 = 0; t0 < n; t0 += tb) {                                                 \
            const int64_t t1 = t0 + tb < n ? t0 + tb : n;                                        \
            for (int64_t r = r_begin; r < r_end; r += RC)                                        \
                chunk256(x, cols, KDATA(w, dt), dt, y, w->rows, t0, t1, r,                       \
                         r + RC < r_end ? r + RC : r_end, wbuf, ab);                             \
        }                                                                                        \
    }
DEFINE_GEMM256(gemm256_f32, mm256_f32, XD_DTYPE_F32)
DEFINE_GEMM256(gemm256_bf16, mm256_bf16, XD_DTYPE_BF16)
DEFINE_GEMM256(gemm256_f16, mm256_f16, XD_DTYPE_F16)
DEFINE_GEMM256(gemm256_f8, mm256_f8, XD_DTYPE_F8_E4M3)

/* The GEMM of the opt-in avx512bf16 path, blocked as the others (token blocks, row chunks of RC,
 * K panels of KC over the whole blocks of 32, accumulators carried in ab): per panel the chunk's
 * bf16 weights copied contiguous into wbuf and the block's activations rounded to bf16 once into
 * xbuf (by vcvtne2ps2bf16, as tile_bf16 rounds them each time it loads them), so the inner loop
 * is loads and vdpbf16ps alone. Each lane's pairs in tile_bf16's order, its tree and its tail:
 * the bits of the GEMV (mm_bf16dp). */
TGTBF16 static inline __attribute__((always_inline)) void
gtile_bf16(const uint16_t *xp, const uint16_t *wp, int64_t len, __m512 *ab, int first, int last,
           const float *x, const uint16_t *w, float *y, int64_t rows, int64_t cols, int64_t t0,
           int64_t r0, const int nt, const int nr)
{
    __m512 acc[T512][R512];
#pragma GCC unroll 8
    for (int t = 0; t < nt; t++)
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++)
            acc[t][r] = first ? _mm512_setzero_ps() : ab[t * RC + r];
    for (int64_t k = 0; k < len; k += 32) {
        __m512bh wv[R512];
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++)
            wv[r] = (__m512bh)_mm512_load_si512((const void *)(wp + r * KC + k));
#pragma GCC unroll 8
        for (int t = 0; t < nt; t++) {
            __m512bh xv = (__m512bh)_mm512_load_si512((const void *)(xp + t * KC + k));
#pragma GCC unroll 8
            for (int r = 0; r < nr; r++)
                acc[t][r] = _mm512_dpbf16_ps(acc[t][r], xv, wv[r]);
        }
    }
    if (last) {
        const int64_t kb = cols / 32 * 32;
#pragma GCC unroll 8
        for (int t = 0; t < nt; t++)
#pragma GCC unroll 8
            for (int r = 0; r < nr; r++)
                y[(t0 + t) * rows + r0 + r] =
                    reduce16_512(acc[t][r]) +
                    tail_sum_bf16x(x + (t0 + t) * cols, w + (r0 + r) * cols, kb, cols);
    } else {
#pragma GCC unroll 8
        for (int t = 0; t < nt; t++)
#pragma GCC unroll 8
            for (int r = 0; r < nr; r++)
                ab[t * RC + r] = acc[t][r];
    }
}

TGTBF16 static inline __attribute__((always_inline)) void
gtiles_bf16(const uint16_t *xbuf, const uint16_t *wbuf, int64_t len, __m512 *ab, int first,
            int last, const float *x, const uint16_t *w, float *y, int64_t rows, int64_t cols,
            int64_t t, int64_t tb0, int64_t rc0, int64_t rc1, const int nt)
{
    const uint16_t *xp = xbuf + (t - tb0) * KC;
    __m512 *at = ab + (t - tb0) * RC;
    int64_t r = rc0;
    for (; r + R512 <= rc1; r += R512)
        gtile_bf16(xp, wbuf + (r - rc0) * KC, len, at + (r - rc0), first, last, x, w, y, rows,
                   cols, t, r, nt, R512);
    for (; r < rc1; r++)
        gtile_bf16(xp, wbuf + (r - rc0) * KC, len, at + (r - rc0), first, last, x, w, y, rows,
                   cols, t, r, nt, 1);
}

TGTBF16 static void gemm_bf16dp(const float *x, int n, const struct xd_matrix *w, float *y,
                                int64_t r_begin, int64_t r_end)
{
    if (n < GEMM_MIN_N) {
        mm_bf16dp(x, n, w, y, r_begin, r_end);
        return;
    }
    const uint16_t *wd = w->data;
    const int64_t cols = w->cols, rows = w->rows, tb = gemm_token_block(cols);
    const int64_t kb = cols / 32 * 32;
    uint16_t wbuf[RC * KC] __attribute__((aligned(64)));
    uint16_t xbuf[TB_MAX * KC] __attribute__((aligned(64)));
    __m512 ab[TB_MAX * RC];
    /* the token block's activations rounded once for all its row chunks, panel by panel (else,
     * without the memory, once per chunk into xbuf): the same values either way */
    const int64_t n_panels = kb > 0 ? (kb + KC - 1) / KC : 1;
    uint16_t *xall = aligned_alloc(64, sizeof(uint16_t) * (size_t)(n_panels * TB_MAX * KC));
    for (int64_t t0 = 0; t0 < n; t0 += tb) {
        const int64_t t1 = t0 + tb < n ? t0 + tb : n;
        if (xall)
            for (int64_t t = t0; t < t1; t++)
                for (int64_t k = 0; k < kb; k += 32) {
                    const float *xs = x + t * cols + k;
                    __m512bh v = round32_bf16(xs);
                    _mm512_store_si512((void *)(xall + (k / KC) * TB_MAX * KC + (t - t0) * KC +
                                                k % KC),
                                       (__m512i)v);
                }
        for (int64_t rc0 = r_begin; rc0 < r_end; rc0 += RC) {
            const int64_t rc1 = rc0 + RC < r_end ? rc0 + RC : r_end;
            int64_t k0 = 0;
            do {
                const int64_t k1 = k0 + KC < kb ? k0 + KC : kb, len = k1 - k0;
                const int first = k0 == 0, last = k1 == kb;
                for (int64_t r = rc0; r < rc1; r++)
                    for (int64_t k = k0; k < k1; k += 32)
                        _mm512_store_si512((void *)(wbuf + (r - rc0) * KC + (k - k0)),
                                           _mm512_loadu_si512((const void *)(wd + r * cols + k)));
                const uint16_t *xp = xall ? xall + (k0 / KC) * TB_MAX * KC : xbuf;
                for (int64_t t = t0; t < t1 && !xall; t++)
                    for (int64_t k = k0; k < k1; k += 32) {
                        const float *xs = x + t * cols + k;
                        __m512bh v = round32_bf16(xs);
                        _mm512_store_si512((void *)(xbuf + (t - t0) * KC + (k - k0)), (__m512i)v);
                    }
                int64_t t = t0;
                for (; t + T512 <= t1; t += T512)
                    gtiles_bf16(xp, wbuf, len, ab, first, last, x, wd, y, rows, cols, t, t0, rc0,
                                rc1, T512);
                switch (t1 - t) {
                case 5:
                    gtiles_bf16(xp, wbuf, len, ab, first, last, x, wd, y, rows, cols, t, t0, rc0,
                                rc1, 5);
                    break;
                case 4:
                    gtiles_bf16(xp, wbuf, len, ab, first, last, x, wd, y, rows, cols, t, t0, rc0,
                                rc1, 4);
                    break;
                case 3:
                    gtiles_bf16(xp, wbuf, len, ab, first, last, x, wd, y, rows, cols, t, t0, rc0,
                                rc1, 3);
                    break;
                case 2:
                    gtiles_bf16(xp, wbuf, len, ab, first, last, x, wd, y, rows, cols, t, t0, rc0,
                                rc1, 2);
                    break;
                case 1:
                    gtiles_bf16(xp, wbuf, len, ab, first, last, x, wd, y, rows, cols, t, t0, rc0,
                                rc1, 1);
                    break;
                default: break;
                }
                k0 = k1;
            } while (k0 < kb);
        }
    }
    free(xall);
}
#endif

/* ---- Which path runs ---- */

enum kernel_path { PATH_UNSET = 0, PATH_PORTABLE, PATH_AVX2, PATH_AVX512, PATH_AVX512BF16 };
static int kernel_path; /* enum kernel_path, resolved once (idempotent, so a race is benign) */

static enum kernel_path resolve_path(void)
{
    enum kernel_path best = PATH_PORTABLE;
#ifdef XD_HAVE_X86_PATHS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        xd_cpu_has_f16c())
        best = PATH_AVX2;
    if (best == PATH_AVX2 && __builtin_cpu_supports("avx512f"))
        best = PATH_AVX512;
#endif
    /* EXPERTD_CPU_KERNEL=portable|avx2 asks for a lesser path (tests, benchmarks); never a
     * greater */
    const char *want = getenv("EXPERTD_CPU_KERNEL");
    if (want && strcmp(want, "portable") == 0)
        best = PATH_PORTABLE;
    else if (want && strcmp(want, "avx2") == 0 && best == PATH_AVX512)
        best = PATH_AVX2;
#ifdef XD_HAVE_X86_PATHS
    /* =avx512bf16 opts in to the bf16-activation path (other numerics), where the CPU has it */
    else if (want && strcmp(want, "avx512bf16") == 0 && best == PATH_AVX512 &&
             __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw"))
        best = PATH_AVX512BF16;
#endif
    return best;
}

static enum kernel_path get_path(void)
{
    int p = __atomic_load_n(&kernel_path, __ATOMIC_RELAXED);
    if (p == PATH_UNSET) {
        p = resolve_path();
        __atomic_store_n(&kernel_path, p, __ATOMIC_RELAXED);
    }
    return (enum kernel_path)p;
}

/* The integer path of the block formats under the float path's choice: VNNI only where the
 * float path is AVX-512 (EXPERTD_CPU_KERNEL=avx2 also means the AVX2 integer path). */
enum xd_quant_path xd_cpu_quant_path(void)
{
    switch (get_path()) {
    case PATH_AVX512:
    case PATH_AVX512BF16: return xd_cpu_quant_best_path(XD_QUANT_VNNI);
    case PATH_AVX2: return xd_cpu_quant_best_path(XD_QUANT_AVX2);
    default: return XD_QUANT_PORTABLE;
    }
}

enum xd_mxfp4_path xd_cpu_mxfp4_path(void)
{
    switch (get_path()) {
    case PATH_AVX512:
    case PATH_AVX512BF16: return XD_MXFP4_AVX512;
    case PATH_AVX2: return XD_MXFP4_AVX2;
    default: return XD_MXFP4_PORTABLE;
    }
}

const char *xd_cpu_kernel_path(void)
{
    const enum xd_quant_path q = xd_cpu_quant_path();
    switch (get_path()) {
    case PATH_AVX512:
        return q == XD_QUANT_VNNI
                   ? "avx512f (fma, 4 rows x 6 tokens of 16 lanes; from 24 tokens a GEMM in L2/L1 "
                     "blocks); q8/q4: avx512-vnni (vpdpbusd, 4 rows x 4 tokens); q4k: avx512-vnni "
                     "(1 token: vpmaddubsw + vpdpwssd, 4 rows; from 7: vpdpbusd on 16 token "
                     "lanes x 4 rows; else 4 rows x 4 tokens)"
                   : "avx512f (fma, 4 rows x 6 tokens of 16 lanes; from 24 tokens a GEMM in L2/L1 "
                     "blocks); q8/q4: avx2 (vpmaddubsw, 1 row x 4 tokens); q4k: avx2 (1 token: "
                     "vpmaddubsw + vpmaddwd, 4 rows; from 6: 8 token lanes; else 1 row x 4 "
                     "tokens)";
    case PATH_AVX512BF16:
        return "avx512bf16 (opt-in: activations rounded to bf16, vdpbf16ps for bf16 weights, 4 "
               "rows x 6 tokens, from 24 tokens in L2/L1 blocks; f32/f16 weights on avx512f); "
               "q8/q4: as avx512f, q4k too";
    case PATH_AVX2:
        return "avx2+fma (1 row x 4 tokens of 2 x 8 lanes; from 5 tokens a GEMM of 4 rows x 3 "
               "tokens in L2/L1 blocks); q8/q4: avx2 (vpmaddubsw, 1 row x 4 tokens); q4k: avx2 "
               "(1 token: vpmaddubsw + vpmaddwd, 4 rows; from 6: 8 token lanes; else 1 row x 4 "
               "tokens)";
    default: return "portable (c11, no fma); q8/q4: portable (c11, fmaf); q4k: portable (c11, "
                    "fmaf)";
    }
}

enum xd_cpu_vec xd_cpu_vector_path(void)
{
    switch (get_path()) {
    case PATH_AVX512:
    case PATH_AVX512BF16: return XD_CPU_VEC_AVX512;
    case PATH_AVX2: return XD_CPU_VEC_AVX2;
    default: return XD_CPU_VEC_PORTABLE;
    }
}

typedef void (*range_fn)(const float *, int, const struct xd_matrix *, float *, int64_t,
                         int64_t);

#ifdef XD_HAVE_X86_PATHS
static range_fn vector_fn(enum kernel_path path, enum xd_dtype dt)
{
    if (path == PATH_AVX512BF16 && dt == XD_DTYPE_BF16)
        return gemm_bf16dp;
    /* FP8 weights on the AVX2 code whatever the path (it runs on the AVX-512 CPUs too, in the
     * same order as the f32 kernels of every path, with f32 activations) */
    if (dt == XD_DTYPE_F8_E4M3)
        return gemm256_f8;
    if (path == PATH_AVX512BF16)
        path = PATH_AVX512;
    switch (dt) {
    case XD_DTYPE_F32: return path == PATH_AVX512 ? gemm512_f32 : gemm256_f32;
    case XD_DTYPE_BF16: return path == PATH_AVX512 ? gemm512_bf16 : gemm256_bf16;
    case XD_DTYPE_F16: return path == PATH_AVX512 ? gemm512_f16 : gemm256_f16;
    default: break; /* the block formats have kernels of their own (xd_cpu_matmul dispatches) */
    }
    return NULL;
}
#endif

/* ---- AMX: the CPU may have it; the kernel must grant it (arch_prctl ARCH_REQ_XCOMP_PERM) ---- */

#if defined(__x86_64__) && defined(__linux__)
#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>
#define XD_ARCH_GET_XCOMP_PERM 0x1022
#define XD_ARCH_REQ_XCOMP_PERM 0x1023
#define XD_XFEATURE_XTILEDATA 18
#endif

/* cpuid leaf 7 EDX bits 22 (amx-bf16), 24 (amx-tile), 25 (amx-int8). */
static int cpu_has_amx(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    unsigned a = 0, b = 0, c = 0, d = 0, max_leaf;
    __asm__ volatile("cpuid" : "=a"(max_leaf), "=b"(b), "=c"(c), "=d"(d) : "a"(0), "c"(0));
    if (max_leaf < 7)
        return 0;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
    return (d >> 24 & 1) && (d >> 22 & 1);
#else
    return 0;
#endif
}

static char amx_status[160];

const char *xd_cpu_amx_status(void)
{
    if (amx_status[0])
        return amx_status;
    if (!cpu_has_amx()) {
        snprintf(amx_status, sizeof amx_status, "absent (cpuid: no amx-tile/amx-bf16)");
        return amx_status;
    }
#if defined(__x86_64__) && defined(__linux__)
    long rc = syscall(SYS_arch_prctl, XD_ARCH_REQ_XCOMP_PERM, XD_XFEATURE_XTILEDATA);
    int req_errno = rc == 0 ? 0 : errno;
    unsigned long long perm = 0;
    long get = syscall(SYS_arch_prctl, XD_ARCH_GET_XCOMP_PERM, &perm);
    if (rc == 0 && get == 0 && (perm >> XD_XFEATURE_XTILEDATA & 1))
        snprintf(amx_status, sizeof amx_status,
                 "granted by the kernel (amx-tile, amx-bf16; no kernel uses it yet)");
    else
        snprintf(amx_status, sizeof amx_status,
                 "refused: the CPU has amx-tile/amx-bf16 but arch_prctl(ARCH_REQ_XCOMP_PERM) "
                 "failed (%s); not used",
                 req_errno ? strerror(req_errno) : "permission bit not set");
#else
    snprintf(amx_status, sizeof amx_status, "not asked for (not Linux x86-64)");
#endif
    return amx_status;
}

void xd_cpu_matmul_rows(const float *x, int n, const struct xd_matrix *w, float *y,
                        int64_t r_begin, int64_t r_end)
{
    const enum kernel_path path = get_path();
    if (path == PATH_PORTABLE) {
        portable_rows(x, n, w, y, r_begin, r_end);
        return;
    }
#ifdef XD_HAVE_X86_PATHS
    range_fn fn = vector_fn(path, w->dtype);
    assert(fn && "xd_cpu_matmul_rows takes f32, bf16, f16 and FP8 weights only");
    fn(x, n, w, y, r_begin, r_end);
#endif
}

/* Rows of output per work item when few tokens share the step (n < GEMM_MIN_N): small enough
 * that the threads finish together when one is slowed (a shared or busier core), big enough
 * (128 KiB of bf16 weights at 1024 columns) that taking an item costs nothing next to it. */
#define GEMV_CHUNK 64

/* One matrix of a multi-matmul: where its rows go and which kernel computes a range of them. */
struct mm_job {
    const struct xd_matrix *w;
    float *y;
    int64_t chunk0; /* its first work item among all the jobs' (few-token schedule) */
};

/* Rows r0 .. r1 - 1 of job j: the float kernel of this path, or the integer one from the
 * activations qa quantized once for every quantized job. */
static void mm_job_rows(const struct mm_job *j, const float *x, int n,
                        const struct xd_cpu_qacts *qa, enum kernel_path path, int64_t r0,
                        int64_t r1)
{
    if (xd_dtype_is_quant(j->w->dtype)) {
        xd_cpu_matmul_quant_rows(qa, j->w, j->y, r0, r1, xd_cpu_quant_path());
        return;
    }
    if (path == PATH_PORTABLE) {
        portable_rows(x, n, j->w, j->y, r0, r1);
        return;
    }
#ifdef XD_HAVE_X86_PATHS
    range_fn fn = vector_fn(path, j->w->dtype);
    assert(fn && "a weight dtype without a kernel");
    fn(x, n, j->w, j->y, r0, r1);
#endif
}

void xd_cpu_matmul_multi(const float *x, int n, int k, const struct xd_matrix *const ws[],
                         float *const ys[])
{
    if (n <= 0 || k <= 0)
        return;
    struct mm_job jobs[k];
    int n_jobs = 0, any_quant = 0;
    int64_t n_chunks = 0, work = 0;
    for (int i = 0; i < k; i++) {
        assert(ws[i]->cols == ws[0]->cols && "the matrices of a multi-matmul share their input");
        if (ws[i]->dtype == XD_DTYPE_MXFP4) { /* its own kernel and preparation (experts only) */
            xd_cpu_matmul_mxfp4(x, n, ws[i], ys[i], xd_cpu_mxfp4_path());
            continue;
        }
        any_quant |= xd_dtype_is_quant(ws[i]->dtype);
        jobs[n_jobs] = (struct mm_job){ws[i], ys[i], n_chunks};
        n_chunks += (ws[i]->rows + GEMV_CHUNK - 1) / GEMV_CHUNK;
        work += ws[i]->rows * ws[i]->cols * (int64_t)n;
        n_jobs++;
    }
    if (n_jobs == 0)
        return;
    const int64_t cols = ws[0]->cols;
    /* the quantized jobs' activations, made once for all of them (as xd_cpu_matmul_quant makes
     * them, so the same bytes) */
    struct xd_cpu_qacts qa = {0};
    void *qbuf = NULL;
    if (any_quant) {
        /* one activation form for all: q4_K's per-256 one or the per-32 one of q8_0/q4_1 (a
         * loader that mixed them in one multi-matmul gets each matrix alone) */
        enum xd_dtype fmt = XD_DTYPE_F32;
        int mixed = 0;
        for (int i = 0; i < n_jobs; i++) {
            const enum xd_dtype dt = jobs[i].w->dtype;
            if (!xd_dtype_is_quant(dt))
                continue;
            if (fmt == XD_DTYPE_F32)
                fmt = dt;
            mixed |= xd_quant_is_super(dt) != xd_quant_is_super(fmt);
        }
        qbuf = mixed ? NULL : malloc(xd_cpu_qacts_bytes(fmt, n, cols));
        if (!qbuf) { /* no scratch (or mixed forms): each matrix alone, as xd_cpu_matmul_quant */
            for (int i = 0; i < n_jobs; i++)
                if (xd_dtype_is_quant(jobs[i].w->dtype))
                    xd_cpu_matmul_quant(x, n, jobs[i].w, jobs[i].y, xd_cpu_quant_path());
                else
                    xd_cpu_matmul_multi(x, n, 1, &jobs[i].w, &jobs[i].y);
            return;
        }
        xd_cpu_qacts_init(qbuf, fmt, n, cols, &qa);
        xd_cpu_qacts_quantize(&qa, x, 0, n);
    }
    const enum kernel_path path = get_path();
    /* Few tokens: the rows are streamed once, so the step is memory-bound and the threads should
     * end together: chunks of GEMV_CHUNK rows of every matrix, taken dynamically. Many tokens:
     * each thread one contiguous range of whole row tiles of each matrix, in one call, so the
     * GEMM keeps a token block's input in L2 across all the thread's rows. Either way every
     * output row is computed whole by one call, in the kernel's fixed order: no bit depends on
     * the split. No barrier between the matrices: the one region ends with the only one. */
    const int few = n < GEMM_MIN_N;
#pragma omp parallel if (work > 32768)
    {
        if (few) {
            int j = 0;
#pragma omp for schedule(dynamic, 1) nowait
            for (int64_t c = 0; c < n_chunks; c++) {
                while (j + 1 < n_jobs && jobs[j + 1].chunk0 <= c)
                    j++;
                while (jobs[j].chunk0 > c) /* a thread's chunks ascend; never taken */
                    j--;
                const int64_t r0 = (c - jobs[j].chunk0) * GEMV_CHUNK;
                const int64_t rows = jobs[j].w->rows;
                mm_job_rows(&jobs[j], x, n, &qa, path, r0,
                            r0 + GEMV_CHUNK < rows ? r0 + GEMV_CHUNK : rows);
            }
        } else {
            int64_t n_thr = 1, id = 0;
#ifdef _OPENMP
            n_thr = omp_get_num_threads();
            id = omp_get_thread_num();
#endif
            for (int i = 0; i < n_jobs; i++) {
                const int64_t rows = jobs[i].w->rows;
                const int64_t n_tiles = (rows + ROW_TILE - 1) / ROW_TILE;
                const int64_t per = (n_tiles + n_thr - 1) / n_thr;
                const int64_t r_begin = id * per * ROW_TILE;
                const int64_t r_end =
                    (id + 1) * per * ROW_TILE < rows ? (id + 1) * per * ROW_TILE : rows;
                if (r_begin < r_end)
                    mm_job_rows(&jobs[i], x, n, &qa, path, r_begin, r_end);
            }
        }
    }
    free(qbuf);
}

void xd_cpu_matmul(const float *x, int n, const struct xd_matrix *w, float *y)
{
    xd_cpu_matmul_multi(x, n, 1, &w, &y);
}

static float mat_get(const struct xd_matrix *m, int64_t i)
{
    switch (m->dtype) {
    case XD_DTYPE_F32: return ((const float *)m->data)[i];
    case XD_DTYPE_BF16: return xd_bf16_to_f32(((const uint16_t *)m->data)[i]);
    case XD_DTYPE_F16: return xd_f16_to_f32(((const uint16_t *)m->data)[i]);
    default: break; /* norms and biases are never quantized */
    }
    return 0.0f;
}

void xd_cpu_add_bias(float *y, int n, const struct xd_matrix *bias)
{
    xd_cpu_add_bias_cols(y, n, bias->cols, bias, 0, bias->cols);
}

void xd_cpu_add_bias_cols(float *y, int n, int64_t ld, const struct xd_matrix *bias, int64_t c0,
                          int64_t c1)
{
    if (!bias->data)
        return;
    for (int t = 0; t < n; t++)
        for (int64_t i = c0; i < c1; i++)
            y[t * ld + i] += mat_get(bias, i);
}

void xd_cpu_rmsnorm(const float *x, int n, const struct xd_matrix *w, float eps, float *y)
{
    const int64_t d = w->cols;
    /* each token alone, so the threads' split changes no bit (a prefill's thousand tokens were
     * a serial 2-3% of the step) */
#pragma omp parallel for schedule(static) if ((int64_t)n * d >= 65536)
    for (int t = 0; t < n; t++) {
        const float *xr = x + t * d;
        float *yr = y + t * d;
        float ss = xd_cpu_dot(xr, xr, (int)d);
        float inv = 1.0f / sqrtf(ss / (float)d + eps);
        for (int64_t i = 0; i < d; i++)
            yr[i] = mat_get(w, i) * (xr[i] * inv);
    }
}

#ifdef XD_HAVE_X86_PATHS
/* vcvtps2ph rounds to nearest even (subnormals and overflow to infinity as IEEE, as
 * xd_f32_to_f16) */
TGT256 static void f32_to_f16_f16c(const float *src, uint16_t *dst, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++)
        dst[i] = xd_f32_to_f16(src[i]);
}
#endif

void xd_cpu_f32_to_16(enum xd_dtype dt, const float *src, uint16_t *dst, size_t n)
{
    if (dt == XD_DTYPE_BF16) {
        for (size_t i = 0; i < n; i++) /* integer operations the compiler vectorizes */
            dst[i] = xd_f32_to_bf16(src[i]);
        return;
    }
#ifdef XD_HAVE_X86_PATHS
    if (get_path() >= PATH_AVX2) {
        f32_to_f16_f16c(src, dst, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++)
        dst[i] = xd_f32_to_f16(src[i]);
}

void xd_cpu_rope(float *x, int n_heads, int head_dim, int pos, const struct xd_rope *rope)
{
    const int half = rope->rot_dim / 2;
    float scratch[XD_ROPE_MAX_HALF];
    const float *inv_freq = xd_rope_inv_freq(rope, pos, scratch);
    const float att = rope->attention_scaling;
    for (int i = 0; i < half; i++) {
        /* as transformers: angle = pos * inv_freq in f32, cos and sin times the attention
         * factor (exactly 1 but for yarn, so the default path is unchanged) */
        float angle = (float)pos * inv_freq[i];
        float c = cosf(angle) * att, s = sinf(angle) * att;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + h * head_dim;
            float a = v[i], b = v[i + half];
            v[i] = a * c - b * s;
            v[i + half] = b * c + a * s;
        }
    }
}

void xd_cpu_rope_pairs(float *x, int n_heads, int head_dim, int pos, const struct xd_rope *rope)
{
    const int half = rope->rot_dim / 2;
    float scratch[XD_ROPE_MAX_HALF];
    const float *inv_freq = xd_rope_inv_freq(rope, pos, scratch);
    const float att = rope->attention_scaling;
    for (int i = 0; i < half; i++) {
        float angle = (float)pos * inv_freq[i];
        float c = cosf(angle) * att, s = sinf(angle) * att;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + h * head_dim;
            float a = v[2 * i], b = v[2 * i + 1];
            v[2 * i] = a * c - b * s;
            v[2 * i + 1] = b * c + a * s;
        }
    }
}

void xd_cpu_silu_mul(const float *gate, const float *up, float *y, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        y[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void xd_cpu_softmax(float *x, int n)
{
    float mx = x[0];
    for (int i = 1; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    for (int i = 0; i < n; i++)
        x[i] /= sum;
}
