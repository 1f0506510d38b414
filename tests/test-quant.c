/* The q8_0 / q4_1 / q4_K formats and their matmul: quantizers against an independent reference with
 * stated error bounds, and every kernel path (EXPERTD_CPU_KERNEL) against a plain loop over the
 * dequantized weights and activations, in the documented order bit for bit, batched = alone. */
#include <float.h>
#include <stdint.h>
#include <stdlib.h>

#include "engine/cpu/cpu_kernels.h"
#include "engine/engine.h"
#include "engine/model/dtype.h"
#include "engine/model/quant.h"
#include "tests/test.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) & 0xffffff) / (float)0x800000 - 1.0f;
}

/* k weights with the blocks that break quantizers: all zero, constant, one outlier, tiny
 * values (f16 subnormal scales), the rest uniform in [-1, 1) times a per-block magnitude. */
static void fill_weights(float *w, int k)
{
    for (int b = 0; b < k / 32; b++) {
        float *x = w + b * 32;
        int kind = b % 6;
        float mag = 0.01f + 4.0f * (frand() + 1.0f);
        for (int j = 0; j < 32; j++) {
            switch (kind) {
            case 0: x[j] = 0.0f; break;
            case 1: x[j] = -0.75f; break;
            case 2: x[j] = j == 7 ? 50.0f : 0.01f * frand(); break;
            case 3: x[j] = 1e-6f * frand(); break;
            default: x[j] = mag * frand(); break;
            }
        }
    }
}

/* ---- quantizers: scales exactly as specified, every weight within the bound ---- */

static void test_q8_round_trip(void)
{
    enum { K = 32 * 60 };
    float w[K], back[K];
    struct xd_block_q8_0 q[K / 32];
    fill_weights(w, K);
    xd_quant_row_q8_0(w, q, K);
    xd_quant_dequantize_row(XD_DTYPE_Q8_0, q, back, K);
    for (int b = 0; b < K / 32; b++) {
        double amax = 0.0;
        for (int j = 0; j < 32; j++)
            amax = fmax(amax, fabs((double)w[b * 32 + j]));
        const double d = amax / 127.0, d16 = xd_f16_to_f32(q[b].d);
        /* the stored scale is d rounded to f16 (relative 2^-11, or the subnormal step) */
        CHECK(fabs(d16 - d) <= d * 0x1p-11 + 0x1p-25, "block %d: scale %g for %g", b, d16, d);
        for (int j = 0; j < 32; j++) {
            const double x = w[b * 32 + j];
            /* the integer is round(x / d) (ties may go either way in f32) */
            const double want = d > 0 ? x / d : 0.0;
            CHECK(fabs(q[b].qs[j] - want) <= 0.5 + 1e-4 && abs(q[b].qs[j]) <= 127,
                  "block %d[%d]: q %d for %g", b, j, q[b].qs[j], want);
            /* |x - d16 q| <= d / 2 + 127 |d16 - d| */
            const double bound = 0.5 * d + 127.0 * fabs(d16 - d) + 1e-12;
            CHECK(fabs(back[b * 32 + j] - x) <= bound, "block %d[%d]: %g back as %g (bound %g)",
                  b, j, x, back[b * 32 + j], bound);
        }
    }
    /* an all-zero block is zeros back, a constant block is exact to f16 */
    CHECK(back[0] == 0.0f && back[31] == 0.0f, "zero block");
    CHECK(fabsf(back[32] + 0.75f) < 1e-3f, "constant block %g", back[32]);
}

static void test_q4_round_trip(void)
{
    enum { K = 32 * 60 };
    float w[K], back[K];
    struct xd_block_q4_1 q[K / 32];
    fill_weights(w, K);
    xd_quant_row_q4_1(w, q, K);
    xd_quant_dequantize_row(XD_DTYPE_Q4_1, q, back, K);
    for (int b = 0; b < K / 32; b++) {
        double lo = DBL_MAX, hi = -DBL_MAX;
        for (int j = 0; j < 32; j++) {
            lo = fmin(lo, w[b * 32 + j]);
            hi = fmax(hi, w[b * 32 + j]);
        }
        const double d = (hi - lo) / 15.0, d16 = xd_f16_to_f32(q[b].d);
        const double m16 = xd_f16_to_f32(q[b].m);
        CHECK(fabs(d16 - d) <= d * 0x1p-11 + 0x1p-25, "block %d: scale %g for %g", b, d16, d);
        CHECK(fabs(m16 - lo) <= fabs(lo) * 0x1p-11 + 0x1p-25, "block %d: min %g for %g", b, m16,
              lo);
        for (int j = 0; j < 32; j++) {
            const double x = w[b * 32 + j];
            const int v = j < 16 ? q[b].qs[j] & 15 : q[b].qs[j - 16] >> 4;
            const double want = d > 0 ? (x - lo) / d : 0.0;
            CHECK(fabs(v - want) <= 0.5 + 1e-4, "block %d[%d]: q %d for %g", b, j, v, want);
            /* |x - (d16 q + m16)| <= d / 2 + 15 |d16 - d| + |m16 - min| */
            const double bound = 0.5 * d + 15.0 * fabs(d16 - d) + fabs(m16 - lo) + 1e-12;
            CHECK(fabs(back[b * 32 + j] - x) <= bound, "block %d[%d]: %g back as %g (bound %g)",
                  b, j, x, back[b * 32 + j], bound);
        }
    }
    CHECK(back[0] == 0.0f && back[31] == 0.0f, "zero block");
    CHECK(fabsf(back[32] + 0.75f) < 1e-3f, "constant block %g", back[32]);
}

/* A matrix quantized from f32, bf16 or f16 holding the same values gives the same blocks. */
static void test_matrix_from_each_dtype(void)
{
    enum { R = 5, C = 96 };
    float wf[R * C];
    uint16_t wb[R * C], wh[R * C];
    for (int i = 0; i < R * C; i++) {
        wb[i] = xd_f32_to_bf16(frand() * 0.5f); /* exact in bf16 and in f16 */
        wf[i] = xd_bf16_to_f32(wb[i]);
        wh[i] = xd_f32_to_f16(wf[i]);
        CHECK(xd_f16_to_f32(wh[i]) == wf[i], "value %d not exact in f16", i);
    }
    struct xd_matrix src[3] = {{.dtype = XD_DTYPE_F32, .rows = R, .cols = C, .data = wf},
                               {.dtype = XD_DTYPE_BF16, .rows = R, .cols = C, .data = wb},
                               {.dtype = XD_DTYPE_F16, .rows = R, .cols = C, .data = wh}};
    enum xd_dtype fmts[2] = {XD_DTYPE_Q8_0, XD_DTYPE_Q4_1};
    for (int f = 0; f < 2; f++) {
        const size_t bytes = R * xd_dtype_row_bytes(fmts[f], C);
        CHECK(bytes == (size_t)R * (C / 32) * (f == 0 ? 34 : 20), "%zu bytes", bytes);
        unsigned char out[3][R * (C / 32) * 34];
        for (int s = 0; s < 3; s++) {
            struct xd_matrix q;
            xd_quant_matrix(&src[s], fmts[f], out[s], &q);
            CHECK(q.dtype == fmts[f] && q.rows == R && q.cols == C && q.data == out[s], "view");
        }
        CHECK(memcmp(out[0], out[1], bytes) == 0 && memcmp(out[0], out[2], bytes) == 0,
              "%s differs by source dtype", xd_dtype_name(fmts[f]));
    }
}

static void test_parse(void)
{
    enum xd_dtype f = XD_DTYPE_BF16;
    struct xd_err err = {{0}};
    CHECK(xd_quant_parse("q8", &f, &err) == XD_OK && f == XD_DTYPE_Q8_0, "q8");
    CHECK(xd_quant_parse("q4", &f, &err) == XD_OK && f == XD_DTYPE_Q4_1, "q4");
    CHECK(xd_quant_parse("q4k", &f, &err) == XD_OK && f == XD_DTYPE_Q4_K, "q4k");
    CHECK(xd_quant_parse("none", &f, &err) == XD_OK && f == XD_DTYPE_F32, "none");
    f = XD_DTYPE_BF16;
    CHECK(xd_quant_parse("q5", &f, &err) == XD_ERR_CONFIG && f == XD_DTYPE_BF16, "q5 accepted");
    CHECK_CONTAINS(err.msg, "--quantize");
    CHECK_CONTAINS(err.msg, "q5");
    CHECK_CONTAINS(err.msg, "q4k");
    CHECK(strcmp(xd_quant_name(XD_DTYPE_Q4_K), "q4k") == 0, "q4k name");
    CHECK(xd_quant_format_for(XD_DTYPE_Q4_K, 512) == XD_DTYPE_Q4_K &&
              xd_quant_format_for(XD_DTYPE_Q4_K, 128) == XD_DTYPE_Q4_1 &&
              xd_quant_format_for(XD_DTYPE_Q4_1, 128) == XD_DTYPE_Q4_1,
          "q4k falls back to q4_1 below whole super-blocks");
    CHECK(xd_quant_format_for(XD_DTYPE_Q6_K, 512) == XD_DTYPE_Q6_K &&
              xd_quant_format_for(XD_DTYPE_Q6_K, 64) == XD_DTYPE_Q8_0,
          "q6_K falls back to q8_0 below whole super-blocks");
    CHECK(xd_dtype_is_quant(XD_DTYPE_Q6_K) && xd_quant_is_super(XD_DTYPE_Q6_K) &&
              !xd_quant_is_super(XD_DTYPE_Q8_0),
          "q6_K is a block format with per-256 activations");
}

/* ---- q4_K: the layout read by the test's own code, the fit within its bound ---- */

/* Sub-block j's 6-bit scale and minimum and weight e of super-block blk, read from the bytes
 * as quant.h documents them (not through its helpers). */
static void ref_k_scale_min(const struct xd_block_q4_k *blk, int j, int *sc, int *mn)
{
    const uint8_t *s = blk->scales;
    const uint32_t h = s[8] | (uint32_t)s[9] << 8 | (uint32_t)s[10] << 16 | (uint32_t)s[11] << 24;
    *sc = (s[j] & 0xf) + 16 * (int)((h >> (2 * j)) & 3);
    *mn = (s[j] >> 4) + 16 * (int)((h >> (16 + 2 * j)) & 3);
}

static int ref_k_q(const struct xd_block_q4_k *blk, int e)
{
    const int half = e / 128, i = e % 128;
    const uint8_t byte = blk->qs[64 * half + (i < 64 ? i : i - 64)];
    return i < 64 ? byte & 0xf : byte >> 4;
}

static void test_q4k_round_trip(void)
{
    enum { K = 256 * 12 };
    float w[K], back[K];
    struct xd_block_q4_k q[K / 256];
    fill_weights(w, K);
    /* two super-blocks of smooth values (the fit's common case) */
    for (int i = 0; i < 512; i++)
        w[K - 512 + i] = 0.02f * (float)((i * 37) % 101) - 1.0f;
    xd_quant_row_q4_k(w, q, K);
    xd_quant_dequantize_row(XD_DTYPE_Q4_K, q, back, K);
    double err2_k = 0.0, err2_1 = 0.0;
    struct xd_block_q4_1 q1[K / 32];
    float back1[K];
    xd_quant_row_q4_1(w, q1, K);
    xd_quant_dequantize_row(XD_DTYPE_Q4_1, q1, back1, K);
    for (int b = 0; b < K / 256; b++) {
        const struct xd_block_q4_k *blk = &q[b];
        const double d = xd_f16_to_f32(blk->d), dmin = xd_f16_to_f32(blk->dmin);
        CHECK(d >= 0 && dmin >= 0, "super-block %d: d %g dmin %g", b, d, dmin);
        for (int j = 0; j < 8; j++) {
            int sc, mn;
            ref_k_scale_min(blk, j, &sc, &mn);
            CHECK(sc <= 63 && mn <= 63, "6 bits");
            const float ds = (float)xd_f16_to_f32(blk->d) * (float)sc;
            const float dm = (float)xd_f16_to_f32(blk->dmin) * (float)mn;
            double lo = DBL_MAX, hi = -DBL_MAX;
            for (int i = 0; i < 32; i++) {
                lo = fmin(lo, w[b * 256 + 32 * j + i]);
                hi = fmax(hi, w[b * 256 + 32 * j + i]);
            }
            for (int i = 0; i < 32; i++) {
                const int e = 32 * j + i;
                const double x = w[b * 256 + e];
                const float want = ds * (float)ref_k_q(blk, e) - dm;
                CHECK(memcmp(&want, &back[b * 256 + e], sizeof want) == 0,
                      "super-block %d[%d]: dequantized %.9g, the layout says %.9g", b, e,
                      back[b * 256 + e], want);
                /* the weight is the nearest of the stored grid ds * q - dm, q in 0..15 ... */
                const double clamped = fmin(fmax(x, -dm), 15.0 * ds - dm);
                CHECK(fabs(back[b * 256 + e] - clamped) <= 0.5 * ds * (1 + 1e-5) + 1e-12,
                      "super-block %d[%d]: %g back as %g, grid step %g", b, e, x,
                      back[b * 256 + e], ds);
                /* ... and that grid covers the sub-block's range up to the 6-bit rounding of
                 * its scale and minimum: at most 8 steps of d and one of dmin past it */
                const double bound = 0.5 * ds + 8.0 * d + dmin + (hi - lo) * 0x1p-10 + 1e-12;
                CHECK(fabs(back[b * 256 + e] - x) <= bound,
                      "super-block %d[%d]: %g back as %g (bound %g)", b, e, x, back[b * 256 + e],
                      bound);
                err2_k += (back[b * 256 + e] - x) * (back[b * 256 + e] - x);
                err2_1 += (back1[b * 256 + e] - x) * (back1[b * 256 + e] - x);
            }
        }
    }
    /* all-zero sub-blocks are zeros back */
    CHECK(back[0] == 0.0f && back[31] == 0.0f, "zero sub-block %g %g", back[0], back[31]);
    /* the searched fit at 4.5 bits is no worse than q4_1's range fit at 5 bits (0.077 against
     * 0.077 rms here, where the outlier blocks dominate) */
    printf("     q4_K rms error %.4g, q4_1 %.4g\n", sqrt(err2_k / K), sqrt(err2_1 / K));
    CHECK(err2_k <= err2_1, "q4_K squared error %g above q4_1's %g", err2_k, err2_1);
}

/* A q4_K matrix from f32, bf16 and f16 holding the same values: the same super-blocks. */
static void test_q4k_matrix_from_each_dtype(void)
{
    enum { R = 3, C = 512 };
    static float wf[R * C];
    static uint16_t wb[R * C], wh[R * C];
    for (int i = 0; i < R * C; i++) {
        wb[i] = xd_f32_to_bf16(frand() * 0.5f);
        wf[i] = xd_bf16_to_f32(wb[i]);
        wh[i] = xd_f32_to_f16(wf[i]);
    }
    struct xd_matrix src[3] = {{.dtype = XD_DTYPE_F32, .rows = R, .cols = C, .data = wf},
                               {.dtype = XD_DTYPE_BF16, .rows = R, .cols = C, .data = wb},
                               {.dtype = XD_DTYPE_F16, .rows = R, .cols = C, .data = wh}};
    const size_t bytes = R * xd_dtype_row_bytes(XD_DTYPE_Q4_K, C);
    CHECK(bytes == (size_t)R * (C / 256) * 144, "%zu bytes", bytes);
    static unsigned char out[3][R * (C / 256) * 144];
    for (int s = 0; s < 3; s++) {
        struct xd_matrix q;
        xd_quant_matrix(&src[s], XD_DTYPE_Q4_K, out[s], &q);
        CHECK(q.dtype == XD_DTYPE_Q4_K && q.rows == R && q.cols == C, "view");
    }
    CHECK(memcmp(out[0], out[1], bytes) == 0 && memcmp(out[0], out[2], bytes) == 0,
          "Q4_K differs by source dtype");
}

/* ---- q6_K: the layout read by the test's own code, the fit within its bound ---- */

/* Weight e of super-block blk as its 6-bit value, read from the bytes as quant.h documents them. */
static int ref_6k_u(const struct xd_block_q6_k *blk, int e)
{
    const int half = e / 128, i = e % 128;
    const uint8_t lo = blk->ql[64 * half + (i < 64 ? i : i - 64)];
    const int hi = (blk->qh[e % 64] >> (2 * (e / 64))) & 3;
    return (i < 64 ? lo & 0xf : lo >> 4) + 16 * hi;
}

static void test_q6k_round_trip(void)
{
    enum { K = 256 * 12 };
    static float w[K], back[K], back4[K], back8[K];
    static struct xd_block_q6_k q[K / 256];
    static struct xd_block_q4_k q4[K / 256];
    static struct xd_block_q8_0 q8[K / 32];
    fill_weights(w, K);
    for (int i = 0; i < 512; i++)
        w[K - 512 + i] = 0.02f * (float)((i * 37) % 101) - 1.0f;
    /* a sub-block whose largest magnitude is negative, and one of a single sign */
    for (int i = 0; i < 32; i++) {
        w[256 + 32 + i] = i == 5 ? -9.0f : 0.1f * frand();
        w[256 + 64 + i] = 2.0f + frand();
    }
    CHECK(xd_dtype_row_bytes(XD_DTYPE_Q6_K, K) == (size_t)(K / 256) * 202, "row bytes");
    xd_quant_row_q6_k(w, q, K);
    xd_quant_dequantize_row(XD_DTYPE_Q6_K, q, back, K);
    xd_quant_row_q4_k(w, q4, K);
    xd_quant_dequantize_row(XD_DTYPE_Q4_K, q4, back4, K);
    xd_quant_row_q8_0(w, q8, K);
    xd_quant_dequantize_row(XD_DTYPE_Q8_0, q8, back8, K);
    double err2_6 = 0.0, err2_4 = 0.0, err2_8 = 0.0;
    for (int b = 0; b < K / 256; b++) {
        const struct xd_block_q6_k *blk = &q[b];
        const float d = xd_f16_to_f32(blk->d);
        CHECK(d >= 0.0f, "super-block %d: d %g", b, d);
        int smax = 0;
        for (int j = 0; j < 8; j++)
            smax = abs(blk->sc[j]) > smax ? abs(blk->sc[j]) : smax;
        CHECK(d == 0.0f || smax >= 126, "super-block %d: largest |sc| %d, want 127", b, smax);
        for (int j = 0; j < 8; j++) {
            const float ds = d * (float)blk->sc[j];
            double amax = 0.0;
            for (int i = 0; i < 32; i++)
                amax = fmax(amax, fabs(w[b * 256 + 32 * j + i]));
            for (int i = 0; i < 32; i++) {
                const int e = 32 * j + i;
                const double x = w[b * 256 + e];
                const int u = ref_6k_u(blk, e);
                const float want = ds * (float)(u - 32);
                CHECK(u >= 0 && u <= 63, "6 bits");
                CHECK(memcmp(&want, &back[b * 256 + e], sizeof want) == 0,
                      "super-block %d[%d]: dequantized %.9g, the layout says %.9g", b, e,
                      back[b * 256 + e], want);
                /* the nearest of the stored grid ds * q, q in -32..31 ... */
                const double glo = fmin(-32.0 * ds, 31.0 * ds), ghi = fmax(-32.0 * ds, 31.0 * ds);
                const double clamped = fmin(fmax(x, glo), ghi);
                CHECK(fabs(back[b * 256 + e] - clamped) <= 0.5 * fabs(ds) * (1 + 1e-5) + 1e-12,
                      "super-block %d[%d]: %g back as %g, grid step %g", b, e, x,
                      back[b * 256 + e], ds);
                /* ... which covers the sub-block up to the fit's shrink (the least-squares scale
                 * may put the largest magnitude a step past the grid) and the int8 rounding of
                 * its scale (half a step of d, times 32) */
                const double bound = 1.5 * fabs(ds) + 16.0 * d + amax * 0x1p-10 + 1e-12;
                CHECK(fabs(back[b * 256 + e] - x) <= bound,
                      "super-block %d[%d]: %g back as %g (bound %g)", b, e, x, back[b * 256 + e],
                      bound);
                err2_6 += (back[b * 256 + e] - x) * (back[b * 256 + e] - x);
                err2_4 += (back4[b * 256 + e] - x) * (back4[b * 256 + e] - x);
                err2_8 += (back8[b * 256 + e] - x) * (back8[b * 256 + e] - x);
            }
        }
    }
    CHECK(back[0] == 0.0f && back[31] == 0.0f, "zero sub-block %g %g", back[0], back[31]);
    /* two more bits: a quarter of q4_K's step; the rms at least a third of q4_K's (not a
     * quarter: in both formats a sub-block far smaller than its super-block's largest gets a
     * coarse scale, and those errors are alike); q8_0 (8 bits, a scale per 32) below */
    printf("     rms error q6_K %.4g, q4_K %.4g, q8_0 %.4g\n", sqrt(err2_6 / K),
           sqrt(err2_4 / K), sqrt(err2_8 / K));
    CHECK(9.0 * err2_6 <= err2_4, "q6_K squared error %g not 9x below q4_K's %g", err2_6,
          err2_4);
    CHECK(err2_8 <= err2_6, "q8_0 squared error %g above q6_K's %g", err2_8, err2_6);
}

/* ---- the matmul ---- */

/* The test's own quantization of one block of activations: d = max|x| / 127, q = round(x / d). */
static void ref_quant_act(const float *x, float *ret_d, int8_t *q)
{
    float amax = 0.0f;
    for (int j = 0; j < 32; j++)
        amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; j++)
        q[j] = (int8_t)roundf(x[j] * id);
    *ret_d = d;
}

/* Weight k of block b as the integer the header's order multiplies, its scale and minimum. */
static int wq_at(const struct xd_matrix *w, int64_t r, int64_t k, float *ret_d, float *ret_m)
{
    const int64_t nb = w->cols / 32, b = k / 32, j = k % 32;
    if (w->dtype == XD_DTYPE_Q8_0) {
        const struct xd_block_q8_0 *blk = (const struct xd_block_q8_0 *)w->data + r * nb + b;
        *ret_d = xd_f16_to_f32(blk->d);
        *ret_m = 0.0f;
        return blk->qs[j];
    }
    const struct xd_block_q4_1 *blk = (const struct xd_block_q4_1 *)w->data + r * nb + b;
    *ret_d = xd_f16_to_f32(blk->d);
    *ret_m = xd_f16_to_f32(blk->m);
    return j < 16 ? blk->qs[j] & 15 : blk->qs[j - 16] >> 4;
}

/* One element in the order quant_kernels.h documents, from the test's own loops. */
static float ref_order(const struct xd_matrix *w, int64_t r, const float *x)
{
    const int64_t nb = w->cols / 32;
    float L[16] = {0}, macc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        float dx, dw, mw;
        int8_t xq[32];
        ref_quant_act(x + b * 32, &dx, xq);
        wq_at(w, r, b * 32, &dw, &mw);
        const float s = dw * dx;
        const int h = b % 2 ? 8 : 0;
        for (int j = 0; j < 8; j++) {
            int p = 0;
            for (int i = 0; i < 4; i++)
                p += wq_at(w, r, b * 32 + 4 * j + i, &dw, &mw) * xq[4 * j + i];
            L[h + j] = fmaf(s, (float)p, L[h + j]);
        }
    }
    if (w->dtype == XD_DTYPE_Q4_1)
        for (int64_t b = 0; b < nb; b++) {
            float dx, dw, mw;
            int8_t xq[32];
            int sum = 0;
            ref_quant_act(x + b * 32, &dx, xq);
            for (int j = 0; j < 32; j++)
                sum += xq[j];
            wq_at(w, r, b * 32, &dw, &mw);
            macc = fmaf(mw, dx * (float)sum, macc);
        }
    for (int k = 8; k > 0; k /= 2)
        for (int i = 0; i < k; i++)
            L[i] += L[i + k];
    return L[0] + macc;
}

/* The plain loop: sum_k deq(w)[k] * deq(xq)[k] in double, and sum_k |..| for the tolerance. */
static double ref_plain(const struct xd_matrix *w, int64_t r, const float *x, double *ret_abs)
{
    double sum = 0.0, abs_sum = 0.0;
    for (int64_t b = 0; b < w->cols / 32; b++) {
        float dx, dw, mw;
        int8_t xq[32];
        ref_quant_act(x + b * 32, &dx, xq);
        for (int j = 0; j < 32; j++) {
            int q = wq_at(w, r, b * 32 + j, &dw, &mw);
            double wv = (double)dw * q + mw, xv = (double)dx * xq[j];
            sum += wv * xv;
            abs_sum += fabs(wv * xv);
        }
    }
    *ret_abs = abs_sum;
    return sum;
}

static void check_shape(enum xd_dtype fmt, int n, int rows, int cols)
{
    float *wf = malloc(sizeof(float) * (size_t)rows * cols);
    float *x = malloc(sizeof(float) * (size_t)n * cols);
    float *y = malloc(sizeof(float) * (size_t)n * rows);
    float *y1 = malloc(sizeof(float) * (size_t)rows);
    void *wq = malloc((size_t)rows * xd_dtype_row_bytes(fmt, cols));
    fill_weights(wf, rows * cols);
    for (int i = 0; i < n * cols; i++)
        x[i] = 3.0f * frand();
    struct xd_matrix src = {.dtype = XD_DTYPE_F32, .rows = rows, .cols = cols, .data = wf}, w;
    xd_quant_matrix(&src, fmt, wq, &w);
    xd_cpu_matmul(x, n, &w, y);
    int bad_order = 0, bad_plain = 0, bad_alone = 0;
    for (int t = 0; t < n; t++) {
        xd_cpu_matmul(x + (size_t)t * cols, 1, &w, y1);
        for (int r = 0; r < rows; r++) {
            const float got = y[(size_t)t * rows + r];
            double abs_sum;
            const double plain = ref_plain(&w, r, x + (size_t)t * cols, &abs_sum);
            /* f32 scale products and f32 accumulation over cols / 32 blocks: a few ulps of the
             * sum of magnitudes */
            if (fabs(got - plain) > 1e-5 * abs_sum + 1e-30 && bad_plain++ < 3)
                CHECK(0, "%s n %d %dx%d: y[%d][%d] = %.9g, plain loop %.9g", xd_dtype_name(fmt),
                      n, rows, cols, t, r, got, plain);
            const float want = ref_order(&w, r, x + (size_t)t * cols);
            if (memcmp(&got, &want, sizeof got) != 0 && bad_order++ < 3)
                CHECK(0, "%s n %d %dx%d: y[%d][%d] = %.9g, documented order %.9g",
                      xd_dtype_name(fmt), n, rows, cols, t, r, got, want);
            if (memcmp(&got, &y1[r], sizeof got) != 0 && bad_alone++ < 3)
                CHECK(0, "%s n %d: token %d row %d batched %.9g, alone %.9g", xd_dtype_name(fmt),
                      n, t, r, got, y1[r]);
        }
    }
    free(wf);
    free(x);
    free(y);
    free(y1);
    free(wq);
}

/* Token counts 1..9 and 64 cover every tile remainder (4 tokens) of every path; rows 37 a
 * remainder of the 4-row groups and of the 16-row tasks; cols 32 one block, 96 an odd number
 * of blocks (the last pair half empty), 1024 even. */
static void test_matmul(void)
{
    const enum xd_dtype fmts[2] = {XD_DTYPE_Q8_0, XD_DTYPE_Q4_1};
    const int ns[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 64};
    const int shapes[][2] = {{37, 96}, {16, 32}, {5, 1024}};
    for (int f = 0; f < 2; f++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
                check_shape(fmts[f], ns[i], shapes[s][0], shapes[s][1]);
}

/* q4_K: the test's own activations per 256 (d = max|x| / 127, q = round(x / d)) and the
 * header's order: per super-block the exact integers, then two fmaf. */
static void ref_quant_act_k(const float *x, float *ret_d, int8_t *q)
{
    float amax = 0.0f;
    for (int j = 0; j < 256; j++)
        amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < 256; j++)
        q[j] = (int8_t)roundf(x[j] * id);
    *ret_d = d;
}

static float ref_order_k(const struct xd_matrix *w, int64_t r, const float *x)
{
    const int64_t nk = w->cols / 256;
    const struct xd_block_q4_k *row = (const struct xd_block_q4_k *)w->data + r * nk;
    float A = 0.0f, M = 0.0f;
    for (int64_t k = 0; k < nk; k++) {
        float dx;
        int8_t xq[256];
        ref_quant_act_k(x + k * 256, &dx, xq);
        long long sumi = 0, summ = 0;
        for (int j = 0; j < 8; j++) {
            int sc, mn, bsum = 0;
            long long p = 0;
            ref_k_scale_min(&row[k], j, &sc, &mn);
            for (int i = 0; i < 32; i++) {
                p += ref_k_q(&row[k], 32 * j + i) * xq[32 * j + i];
                bsum += xq[32 * j + i];
            }
            sumi += sc * p;
            summ += (long long)mn * bsum;
        }
        A = fmaf(xd_f16_to_f32(row[k].d) * dx, (float)sumi, A);
        M = fmaf(xd_f16_to_f32(row[k].dmin) * dx, (float)summ, M);
    }
    return A - M;
}

/* sum_k deq(w)[k] * deq(xq)[k] in double, with sum |..| for the tolerance. */
static double ref_plain_k(const struct xd_matrix *w, int64_t r, const float *x, double *ret_abs)
{
    const int64_t nk = w->cols / 256;
    const struct xd_block_q4_k *row = (const struct xd_block_q4_k *)w->data + r * nk;
    double sum = 0.0, abs_sum = 0.0;
    for (int64_t k = 0; k < nk; k++) {
        float dx;
        int8_t xq[256];
        ref_quant_act_k(x + k * 256, &dx, xq);
        for (int j = 0; j < 8; j++) {
            int sc, mn;
            ref_k_scale_min(&row[k], j, &sc, &mn);
            for (int i = 0; i < 32; i++) {
                const double wv = (double)xd_f16_to_f32(row[k].d) * sc *
                                      ref_k_q(&row[k], 32 * j + i) -
                                  (double)xd_f16_to_f32(row[k].dmin) * mn;
                const double xv = (double)dx * xq[32 * j + i];
                sum += wv * xv;
                abs_sum += fabs(wv * xv);
            }
        }
    }
    *ret_abs = abs_sum;
    return sum;
}

/* q6_K: the header's order (the exact integer isum, then one fmaf) and the plain loop. */
static float ref_order_6k(const struct xd_matrix *w, int64_t r, const float *x)
{
    const int64_t nk = w->cols / 256;
    const struct xd_block_q6_k *row = (const struct xd_block_q6_k *)w->data + r * nk;
    float A = 0.0f;
    for (int64_t k = 0; k < nk; k++) {
        float dx;
        int8_t xq[256];
        ref_quant_act_k(x + k * 256, &dx, xq);
        long long isum = 0;
        for (int j = 0; j < 8; j++) {
            long long p = 0;
            for (int i = 0; i < 32; i++)
                p += (ref_6k_u(&row[k], 32 * j + i) - 32) * xq[32 * j + i];
            isum += row[k].sc[j] * p;
        }
        CHECK(llabs(isum) < (1ll << 29), "isum %lld", isum);
        A = fmaf(xd_f16_to_f32(row[k].d) * dx, (float)isum, A);
    }
    return A;
}

static double ref_plain_6k(const struct xd_matrix *w, int64_t r, const float *x, double *ret_abs)
{
    const int64_t nk = w->cols / 256;
    const struct xd_block_q6_k *row = (const struct xd_block_q6_k *)w->data + r * nk;
    double sum = 0.0, abs_sum = 0.0;
    for (int64_t k = 0; k < nk; k++) {
        float dx;
        int8_t xq[256];
        ref_quant_act_k(x + k * 256, &dx, xq);
        for (int e = 0; e < 256; e++) {
            const double wv = (double)xd_f16_to_f32(row[k].d) * row[k].sc[e / 32] *
                              (ref_6k_u(&row[k], e) - 32);
            const double xv = (double)dx * xq[e];
            sum += wv * xv;
            abs_sum += fabs(wv * xv);
        }
    }
    *ret_abs = abs_sum;
    return sum;
}

/* fmt XD_DTYPE_Q4_K or XD_DTYPE_Q6_K: every element against the plain loop, the documented
 * order bit for bit, and the token alone. */
static void check_shape_k(enum xd_dtype fmt, int n, int rows, int cols)
{
    const int six = fmt == XD_DTYPE_Q6_K;
    float *wf = malloc(sizeof(float) * (size_t)rows * cols);
    float *x = malloc(sizeof(float) * (size_t)n * cols);
    float *y = malloc(sizeof(float) * (size_t)n * rows);
    float *y1 = malloc(sizeof(float) * (size_t)rows);
    void *wq = malloc((size_t)rows * xd_dtype_row_bytes(fmt, cols));
    fill_weights(wf, rows * cols);
    for (int i = 0; i < n * cols; i++)
        x[i] = 3.0f * frand();
    struct xd_matrix src = {.dtype = XD_DTYPE_F32, .rows = rows, .cols = cols, .data = wf}, w;
    xd_quant_matrix(&src, fmt, wq, &w);
    xd_cpu_matmul(x, n, &w, y);
    int bad_order = 0, bad_plain = 0, bad_alone = 0;
    for (int t = 0; t < n; t++) {
        xd_cpu_matmul(x + (size_t)t * cols, 1, &w, y1);
        for (int r = 0; r < rows; r++) {
            const float got = y[(size_t)t * rows + r];
            double abs_sum;
            const double plain = six ? ref_plain_6k(&w, r, x + (size_t)t * cols, &abs_sum)
                                     : ref_plain_k(&w, r, x + (size_t)t * cols, &abs_sum);
            /* f32 scale products, one int-to-float rounding (2^-24) and two f32 accumulations
             * over cols / 256 super-blocks: a few ulps of the sum of magnitudes */
            if (fabs(got - plain) > 1e-5 * abs_sum + 1e-30 && bad_plain++ < 3)
                CHECK(0, "%s n %d %dx%d: y[%d][%d] = %.9g, plain loop %.9g", xd_dtype_name(fmt),
                      n, rows, cols, t, r, got, plain);
            const float want = six ? ref_order_6k(&w, r, x + (size_t)t * cols)
                                   : ref_order_k(&w, r, x + (size_t)t * cols);
            if (memcmp(&got, &want, sizeof got) != 0 && bad_order++ < 3)
                CHECK(0, "%s n %d %dx%d: y[%d][%d] = %.9g, documented order %.9g",
                      xd_dtype_name(fmt), n, rows, cols, t, r, got, want);
            if (memcmp(&got, &y1[r], sizeof got) != 0 && bad_alone++ < 3)
                CHECK(0, "%s n %d: token %d row %d batched %.9g, alone %.9g", xd_dtype_name(fmt),
                      n, t, r, got, y1[r]);
        }
    }
    free(wf);
    free(x);
    free(y);
    free(y1);
    free(wq);
}

/* Token counts 1..9 cover every 4-token tile remainder; 15, 16, 17, 24, 40, 64 and 100 the
 * 16-token lane groups (a partial last group, one exact, one and a tile, one and a partial group,
 * several, chunks of groups and a tail in tiles); rows 37 and 5 the 4-row remainders; cols 256
 * one super-block, 768 an odd count, 2048 eight; 4096 and 8192 lay their groups out on the
 * heap. */
static void test_matmul_q4k(void)
{
    const int ns[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 24, 40, 64, 100};
    const int shapes[][2] = {{37, 256}, {16, 768}, {5, 2048}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
            check_shape_k(XD_DTYPE_Q4_K, ns[i], shapes[s][0], shapes[s][1]);
    check_shape_k(XD_DTYPE_Q4_K, 6, 300, 512); /* OpenMP splits the rows */
    check_shape_k(XD_DTYPE_Q4_K, 20, 3, 4096);  /* VNNI's lanes lay out on the heap */
    check_shape_k(XD_DTYPE_Q4_K, 10, 2, 8192);  /* AVX2's too */
}

/* q6_K (no token lanes): token counts 1..9 the 4-token tiles' remainders, 16 and 17 several
 * tiles; the same shapes as q4_K's, and one that OpenMP splits. */
static void test_matmul_q6k(void)
{
    const int ns[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17};
    const int shapes[][2] = {{37, 256}, {16, 768}, {5, 2048}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
            check_shape_k(XD_DTYPE_Q6_K, ns[i], shapes[s][0], shapes[s][1]);
    check_shape_k(XD_DTYPE_Q6_K, 3, 300, 1024);
}

/* Large enough for OpenMP to split the rows: still every element in the same order. */
static void test_matmul_parallel(void)
{
    check_shape(XD_DTYPE_Q8_0, 6, 300, 512);
    check_shape(XD_DTYPE_Q4_1, 6, 300, 512);
}

/* The row-range kernel over activations quantized once (xd_cpu_qacts, the MoE work items'
 * form) gives the whole-matrix kernel's bits for ranges that cut the 4-row groups and 16-row
 * tasks anywhere, on token views that cut the 4-token tiles anywhere (the tokens quantized in
 * two uneven pieces, as threads share them). */
static void check_rows_equal_whole(enum xd_dtype fmt, int n, int rows, int cols)
{
    float *wf = malloc(sizeof(float) * (size_t)rows * cols);
    float *x = malloc(sizeof(float) * (size_t)n * cols);
    float *want = malloc(sizeof(float) * (size_t)n * rows);
    float *got = malloc(sizeof(float) * (size_t)n * rows);
    void *wq = malloc((size_t)rows * xd_dtype_row_bytes(fmt, cols));
    void *buf = malloc(xd_cpu_qacts_bytes(fmt, n, cols));
    fill_weights(wf, rows * cols);
    for (int i = 0; i < n * cols; i++)
        x[i] = 3.0f * frand();
    struct xd_matrix src = {.dtype = XD_DTYPE_F32, .rows = rows, .cols = cols, .data = wf}, w;
    xd_quant_matrix(&src, fmt, wq, &w);
    xd_cpu_matmul(x, n, &w, want);
    struct xd_cpu_qacts a;
    xd_cpu_qacts_init(buf, fmt, n, cols, &a);
    xd_cpu_qacts_quantize(&a, x, 0, n / 3);
    xd_cpu_qacts_quantize(&a, x, n / 3, n);
    /* row cuts 0, 1, 6, 7, 19, 22, rows; token cuts 0, 3, 4, 9, n (n >= 9) */
    const int rcut[] = {0, 1, 6, 7, 19, 22, rows}, tcut[] = {0, 3, 4, 9, n};
    memset(got, 0xff, sizeof(float) * (size_t)n * rows);
    for (int ti = 0; ti + 1 < 5; ti++) {
        const struct xd_cpu_qacts v = xd_cpu_qacts_view(&a, tcut[ti], tcut[ti + 1] - tcut[ti]);
        for (int ri = 0; ri + 1 < 7; ri++)
            xd_cpu_matmul_quant_rows(&v, &w, got + (size_t)tcut[ti] * rows, rcut[ri],
                                     rcut[ri + 1], xd_cpu_quant_path());
    }
    int bad = 0;
    for (int i = 0; i < n * rows; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0 && bad++ < 3)
            CHECK(0, "%s n %d %dx%d: y[%d][%d] range kernel %.9g, whole matrix %.9g",
                  xd_dtype_name(fmt), n, rows, cols, i / rows, i % rows, got[i], want[i]);
    free(wf);
    free(x);
    free(want);
    free(got);
    free(wq);
    free(buf);
}

static void test_rows_equal_whole(void)
{
    const enum xd_dtype fmts[2] = {XD_DTYPE_Q8_0, XD_DTYPE_Q4_1};
    for (int f = 0; f < 2; f++) {
        check_rows_equal_whole(fmts[f], 11, 37, 96);
        check_rows_equal_whole(fmts[f], 13, 41, 1024);
    }
    check_rows_equal_whole(XD_DTYPE_Q4_K, 11, 37, 256);
    check_rows_equal_whole(XD_DTYPE_Q4_K, 13, 41, 1024);
    check_rows_equal_whole(XD_DTYPE_Q4_K, 45, 41, 512); /* views of 3 .. 36 tokens in lanes */
    check_rows_equal_whole(XD_DTYPE_Q6_K, 11, 37, 256);
    check_rows_equal_whole(XD_DTYPE_Q6_K, 13, 41, 1024);
}

/* The q4_K form's pieces: a token copied, and a token quantized super-block by super-block (as
 * the MoE items quantize the columns they made), are the bytes of the whole quantization. */
static void test_qacts_k_pieces(void)
{
    enum { N = 5, C = 768 };
    static float x[N * C];
    for (int i = 0; i < N * C; i++)
        x[i] = 2.0f * frand();
    const size_t bytes = xd_cpu_qacts_bytes(XD_DTYPE_Q4_K, N, C);
    CHECK(bytes == (size_t)N * (C + 4 * (C / 256) + 2 * (C / 32)), "%zu bytes", bytes);
    float *b1 = malloc(bytes), *b2 = malloc(bytes);
    memset(b1, 0, bytes);
    memset(b2, 0x5a, bytes);
    struct xd_cpu_qacts a, c;
    xd_cpu_qacts_init(b1, XD_DTYPE_Q4_K, N, C, &a);
    xd_cpu_qacts_init(b2, XD_DTYPE_Q4_K, N, C, &c);
    CHECK(a.super == 1 && a.nb == C / 32 && a.s == NULL && a.bs != NULL, "form");
    xd_cpu_qacts_quantize(&a, x, 0, N);
    for (int t = 0; t < N; t++) {
        const int src = N - 1 - t;
        if (t % 2)
            xd_cpu_qacts_copy_token(&c, src, &a, src);
        else
            for (int k = 0; k < C / 256; k++)
                xd_cpu_qacts_quantize_blocks(&c, src, x + (size_t)src * C, 8 * k, 8 * k + 8);
    }
    CHECK(memcmp(b1, b2, bytes) == 0, "pieces differ from the whole");
    /* the values as the header documents: d per 256 block-major, bs the sums of each 32 */
    float d;
    int8_t q[256];
    ref_quant_act_k(x + 3 * C + 256, &d, q);
    CHECK(a.d[1 * a.ld_s + 3] == d, "d");
    int sum = 0;
    for (int i = 32; i < 64; i++)
        sum += q[i];
    CHECK(a.bs[3 * a.nb + 8 + 1] == sum && memcmp(a.q + 3 * C + 256, q, 256) == 0, "q, bs");
    free(b1);
    free(b2);
}

/* The kernel path names the integer path it runs (the test runs once per path). */
static void test_path_named(void)
{
    const char *p = xd_cpu_kernel_path(), *want = getenv("EXPERTD_CPU_KERNEL");
    printf("     path: %s\n", p);
    CHECK(strstr(p, "q8/q4: ") != NULL, "'%s'", p);
    CHECK(strstr(p, "q4k") != NULL, "'%s'", p);
    if (want && strcmp(want, "portable") == 0) {
        CHECK_CONTAINS(p, "q8/q4: portable");
        CHECK_CONTAINS(p, "q4k: portable");
    }
    if (want && strcmp(want, "avx2") == 0) {
        CHECK_CONTAINS(p, "q8/q4: avx2");
        CHECK_CONTAINS(p, "q4k: avx2");
    }
}

/* xd_model_quantize on a fixture checkpoint: which matrices change format, the expert bytes
 * the planner records, experts-only, a second call, another format, cuda refused. */
static const char *fixtures;

static void test_model_quantize(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/golden/olmoe-f32", fixtures);
    struct xd_model *m = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_model_load(dir, &m, &err) == XD_OK, "%s", err.msg);
    if (!m)
        return;
    const struct xd_model_config *c = &m->config;
    const size_t f32_bytes = xd_model_expert_bytes(m);
    CHECK(f32_bytes == (size_t)3 * c->expert_ffn * c->hidden_size * 4, "%zu", f32_bytes);
    struct xd_engine_opts o = {.device = XD_DEVICE_CUDA, .n_kv_blocks = 4, .block_size = 4,
                               .max_batch_tokens = 8, .quantize = XD_DTYPE_Q8_0};
    struct xd_engine *e = NULL;
    CHECK(xd_engine_create(m, &o, &e, &err) == XD_ERR_UNSUPPORTED && !e, "cuda accepted q8");
    CHECK_CONTAINS(err.msg, "no quantized kernels");
    CHECK(m->quant == XD_DTYPE_F32, "the refusal quantized the model");

    CHECK(xd_model_quantize(m, XD_DTYPE_Q8_0, true, &err) == XD_OK, "%s", err.msg);
    struct xd_expert_weights w;
    CHECK(xd_expert_store_acquire(&m->experts, 0, 3, &w) == XD_OK, "acquire");
    CHECK(w.gate.dtype == XD_DTYPE_Q8_0 && w.up.dtype == XD_DTYPE_Q8_0 &&
          w.down.dtype == XD_DTYPE_Q8_0, "expert not q8");
    CHECK(w.gate.rows == c->expert_ffn && w.gate.cols == c->hidden_size, "shape");
    const size_t q8_bytes = xd_model_expert_bytes(m);
    CHECK(q8_bytes == (size_t)3 * c->expert_ffn * (c->hidden_size / 32) * 34, "%zu", q8_bytes);
    CHECK(m->layers[0].wq.dtype == XD_DTYPE_F32 && m->lm_head.dtype == XD_DTYPE_F32,
          "experts only, yet q_proj is %s and lm_head %s", xd_dtype_name(m->layers[0].wq.dtype),
          xd_dtype_name(m->lm_head.dtype));
    CHECK(xd_model_quantize(m, XD_DTYPE_Q8_0, true, &err) == XD_OK, "same again: %s", err.msg);
    CHECK(xd_model_quantize(m, XD_DTYPE_Q4_1, false, &err) == XD_ERR_INVALID, "q4 over q8");
    CHECK_CONTAINS(err.msg, "already quantized to Q8_0");
    xd_model_destroy(m);

    /* all but the precision-keeping tensors, through the engine option */
    m = NULL;
    CHECK(xd_model_load(dir, &m, &err) == XD_OK, "%s", err.msg);
    if (!m)
        return;
    c = &m->config; /* the first model's config was freed with it */
    o.device = XD_DEVICE_CPU;
    o.quantize = XD_DTYPE_Q4_1;
    CHECK(xd_engine_create(m, &o, &e, &err) == XD_OK, "%s", err.msg);
    CHECK(m->quant == XD_DTYPE_Q4_1 && !m->quant_experts_only, "model not q4");
    const struct xd_layer_weights *l0 = &m->layers[0];
    CHECK(l0->wq.dtype == XD_DTYPE_Q4_1 && l0->wk.dtype == XD_DTYPE_Q4_1 &&
          l0->wv.dtype == XD_DTYPE_Q4_1 && l0->wo.dtype == XD_DTYPE_Q4_1, "attention not q4");
    CHECK(l0->router.dtype == XD_DTYPE_F32 && l0->attn_norm.dtype == XD_DTYPE_F32 &&
          m->embed.dtype == XD_DTYPE_F32, "router, norms and embedding must keep their precision");
    CHECK(m->lm_head.dtype == XD_DTYPE_Q8_0, "lm_head is %s, want q8 under q4",
          xd_dtype_name(m->lm_head.dtype));
    CHECK(xd_model_expert_bytes(m) == (size_t)3 * c->expert_ffn * (c->hidden_size / 32) * 20,
          "%zu", xd_model_expert_bytes(m));
    /* a second engine over the quantized model on cuda is refused too */
    struct xd_engine *e2 = NULL;
    o.device = XD_DEVICE_CUDA;
    o.quantize = XD_DTYPE_F32;
    CHECK(xd_engine_create(m, &o, &e2, &err) == XD_ERR_UNSUPPORTED && !e2, "cuda on q4 model");
    xd_engine_destroy(e);
    xd_model_destroy(m);

    /* q4k: this fixture's hidden (64) and expert_ffn are not multiples of 256, so every matrix
     * falls back to q4_1 (and lm_head is q8); cuda refuses q4k as it does q8/q4 */
    m = NULL;
    CHECK(xd_model_load(dir, &m, &err) == XD_OK, "%s", err.msg);
    if (!m)
        return;
    c = &m->config;
    o.device = XD_DEVICE_CUDA;
    o.quantize = XD_DTYPE_Q4_K;
    CHECK(xd_engine_create(m, &o, &e2, &err) == XD_ERR_UNSUPPORTED && !e2, "cuda accepted q4k");
    CHECK_CONTAINS(err.msg, "Q4_K");
    o.device = XD_DEVICE_CPU;
    CHECK(xd_engine_create(m, &o, &e, &err) == XD_OK, "%s", err.msg);
    CHECK(m->quant == XD_DTYPE_Q4_K, "model not q4k");
    CHECK(m->layers[0].wq.dtype == XD_DTYPE_Q4_1 && m->lm_head.dtype == XD_DTYPE_Q8_0,
          "q_proj %s, lm_head %s", xd_dtype_name(m->layers[0].wq.dtype),
          xd_dtype_name(m->lm_head.dtype));
    CHECK(m->quant_n_fallback > 0, "fallbacks not counted");
    CHECK(xd_model_expert_bytes(m) == (size_t)3 * c->expert_ffn * (c->hidden_size / 32) * 20,
          "%zu", xd_model_expert_bytes(m));
    xd_engine_destroy(e);
    xd_model_destroy(m);
}

/* The quantizers' rounding and absolute maximum (quant.h) against libm's roundf and fmaxf: every
 * float in [-256, 256] at a stride of 61 bit patterns, every half-integer there and its two
 * neighbours, and NaN in the maximum. */
static void test_round_half_away(void)
{
    int bad = 0;
    for (uint32_t u = 0; u < 0x43800000u; u += 61) { /* 0 .. 256 */
        for (int sgn = 0; sgn < 2; sgn++) {
            uint32_t bits = u | (uint32_t)sgn << 31;
            float v;
            memcpy(&v, &bits, sizeof v);
            if (xd_round_half_away(v) != (int)roundf(v) && bad++ < 3)
                CHECK(0, "round %.9g: %d, roundf %d", v, xd_round_half_away(v), (int)roundf(v));
        }
    }
    for (int k = -256; k < 256; k++) {
        const float h = (float)k + 0.5f, vs[3] = {nextafterf(h, -1e9f), h, nextafterf(h, 1e9f)};
        for (int i = 0; i < 3; i++)
            if (xd_round_half_away(vs[i]) != (int)roundf(vs[i]) && bad++ < 3)
                CHECK(0, "round %.9g: %d, roundf %d", vs[i], xd_round_half_away(vs[i]),
                      (int)roundf(vs[i]));
    }
    CHECK(bad == 0, "%d roundings differ from roundf", bad);
    CHECK(xd_max_abs(2.0f, NAN) == fmaxf(2.0f, fabsf(NAN)), "NaN");
    CHECK(xd_max_abs(2.0f, -3.0f) == 3.0f && xd_max_abs(2.0f, 1.0f) == 2.0f, "max abs");
}

int main(int argc, char **argv)
{
    fixtures = argc > 1 ? argv[1] : "tests/fixtures";
    RUN(test_round_half_away);
    RUN(test_q8_round_trip);
    RUN(test_q4_round_trip);
    RUN(test_q4k_round_trip);
    RUN(test_q6k_round_trip);
    RUN(test_matrix_from_each_dtype);
    RUN(test_q4k_matrix_from_each_dtype);
    RUN(test_parse);
    RUN(test_matmul);
    RUN(test_matmul_parallel);
    RUN(test_matmul_q4k);
    RUN(test_matmul_q6k);
    RUN(test_rows_equal_whole);
    RUN(test_qacts_k_pieces);
    RUN(test_path_named);
    RUN(test_model_quantize);
    printf("%d passed, %d failed\n", test_cases_passed, test_cases_failed);
    return test_failures ? 1 : 0;
}
