/* The q8_0, q4_1, q4_K and q6_K weight formats: quantizers from f32/bf16/f16 and dequantizers. */
#include "engine/model/quant.h"

#include <float.h>
#include <math.h>
#include <string.h>

void xd_quant_row_q8_0(const float *x, struct xd_block_q8_0 *y, int64_t k)
{
    for (int64_t b = 0; b < k / XD_QBLOCK; b++) {
        const float *xb = x + b * XD_QBLOCK;
        float amax = 0.0f;
        for (int j = 0; j < XD_QBLOCK; j++)
            amax = xd_max_abs(amax, xb[j]);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = xd_f32_to_f16(d);
        for (int j = 0; j < XD_QBLOCK; j++)
            y[b].qs[j] = (int8_t)xd_round_half_away(xb[j] * id);
    }
}

void xd_quant_row_q4_1(const float *x, struct xd_block_q4_1 *y, int64_t k)
{
    for (int64_t b = 0; b < k / XD_QBLOCK; b++) {
        const float *xb = x + b * XD_QBLOCK;
        float lo = FLT_MAX, hi = -FLT_MAX;
        for (int j = 0; j < XD_QBLOCK; j++) {
            lo = xb[j] < lo ? xb[j] : lo;
            hi = xb[j] > hi ? xb[j] : hi;
        }
        const float d = (hi - lo) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = xd_f32_to_f16(d);
        y[b].m = xd_f32_to_f16(lo);
        for (int j = 0; j < XD_QBLOCK / 2; j++) {
            /* truncation of v + 0.5 rounds to nearest (v >= 0), as the reference does */
            int q0 = (int)((xb[j] - lo) * id + 0.5f), q1 = (int)((xb[j + 16] - lo) * id + 0.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            y[b].qs[j] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

/* ---- q4_K ---- */

/* Candidate scales the sub-block fit tries: range / (14 + 0.1 k) for k = 0 .. FIT_STEPS. */
#define FIT_STEPS 20

/* round(v) for v >= 0 (as q4_1's quantizer rounds: truncation of v + 0.5), clamped to 0..15;
 * negative v gives 0. */
static inline int nibble(float v)
{
    const int q = v > 0.0f ? (int)(v + 0.5f) : 0;
    return q > 15 ? 15 : q;
}

/* Fits x (32,) ~ s * q - m, q in 0..15, s >= 0, m >= 0, minimizing sum wt * err^2 over the
 * candidates: each candidate's q from its inverse scale, then (s, m) solved by weighted least
 * squares for those q (m clamped to >= 0, s refitted then). Writes *ret_s and *ret_m. */
static void fit_sub_block(const float *x, const float *wt, float *ret_s, float *ret_m)
{
    float lo = x[0], hi = x[0], sw = 0.0f, swx = 0.0f;
    for (int i = 0; i < XD_QBLOCK; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
        sw += wt[i];
        swx += wt[i] * x[i];
    }
    lo = lo > 0.0f ? 0.0f : lo; /* the minimum term only lowers: m = -lo >= 0 */
    if (hi == lo) {
        *ret_s = 0.0f;
        *ret_m = -lo;
        return;
    }
    float xs[XD_QBLOCK]; /* x - lo >= 0 */
    for (int i = 0; i < XD_QBLOCK; i++)
        xs[i] = x[i] - lo;
    const float range = hi - lo;
    /* the plain range fit first, then the candidates that beat it */
    float best_s = range / 15.0f, best_b = lo, best_err = 0.0f;
    const float inv = 15.0f / range;
    for (int i = 0; i < XD_QBLOCK; i++) {
        const float e = best_s * (float)nibble(xs[i] * inv) + lo - x[i];
        best_err += wt[i] * e * e;
    }
    for (int k = 0; k <= FIT_STEPS; k++) {
        const float iscale = (14.0f + 0.1f * (float)k) / range;
        float q[XD_QBLOCK];
        float swq = 0.0f, swq2 = 0.0f, swqx = 0.0f;
        for (int i = 0; i < XD_QBLOCK; i++) {
            q[i] = (float)nibble(iscale * xs[i]);
            const float wq = wt[i] * q[i];
            swq += wq;
            swq2 += wq * q[i];
            swqx += wq * x[i];
        }
        /* the normal equations of min sum wt (s q + b - x)^2 */
        const float det = sw * swq2 - swq * swq;
        if (!(det > 0.0f))
            continue;
        float sc = (sw * swqx - swx * swq) / det;
        float b = (swq2 * swx - swq * swqx) / det;
        if (b > 0.0f) {
            b = 0.0f;
            sc = swqx / swq2;
        }
        float err = 0.0f;
        for (int i = 0; i < XD_QBLOCK; i++) {
            const float e = sc * q[i] + b - x[i];
            err += wt[i] * e * e;
        }
        if (err < best_err) {
            best_err = err;
            best_s = sc;
            best_b = b;
        }
    }
    *ret_s = best_s > 0.0f ? best_s : 0.0f;
    *ret_m = -best_b;
}

void xd_quant_row_q4_k(const float *x, struct xd_block_q4_k *y, int64_t k)
{
    for (int64_t b = 0; b < k / XD_QK; b++) {
        const float *xb = x + b * XD_QK;
        struct xd_block_q4_k *blk = &y[b];
        float sumsq = 0.0f;
        for (int i = 0; i < XD_QK; i++)
            sumsq += xb[i] * xb[i];
        const float rms = sqrtf(sumsq / XD_QK);
        float wt[XD_QK], s[8], m[8], smax = 0.0f, mmax = 0.0f;
        for (int i = 0; i < XD_QK; i++)
            wt[i] = rms + fabsf(xb[i]);
        for (int j = 0; j < 8; j++) {
            fit_sub_block(xb + 32 * j, wt + 32 * j, &s[j], &m[j]);
            smax = s[j] > smax ? s[j] : smax;
            mmax = m[j] > mmax ? m[j] : mmax;
        }
        /* the sub-block scales and minimums to 6 bits */
        const float is = smax > 0.0f ? 63.0f / smax : 0.0f, im = mmax > 0.0f ? 63.0f / mmax : 0.0f;
        int sc[8], mn[8];
        uint32_t h = 0;
        for (int j = 0; j < 8; j++) {
            sc[j] = (int)(s[j] * is + 0.5f);
            mn[j] = (int)(m[j] * im + 0.5f);
            sc[j] = sc[j] > 63 ? 63 : sc[j];
            mn[j] = mn[j] > 63 ? 63 : mn[j];
            blk->scales[j] = (uint8_t)((sc[j] & 15) | (mn[j] & 15) << 4);
            h |= (uint32_t)(sc[j] >> 4) << (2 * j) | (uint32_t)(mn[j] >> 4) << (16 + 2 * j);
        }
        for (int i = 0; i < 4; i++)
            blk->scales[8 + i] = (uint8_t)(h >> (8 * i));
        blk->d = xd_f32_to_f16(smax / 63.0f);
        blk->dmin = xd_f32_to_f16(mmax / 63.0f);
        /* the weights again, against the scales as stored */
        const float d = xd_f16_to_f32(blk->d), dmin = xd_f16_to_f32(blk->dmin);
        memset(blk->qs, 0, sizeof blk->qs);
        for (int j = 0; j < 8; j++) {
            const float ds = d * (float)sc[j], dm = dmin * (float)mn[j];
            const float ids = ds > 0.0f ? 1.0f / ds : 0.0f;
            for (int i = 0; i < 32; i++) {
                const int e = 32 * j + i;
                const int q = nibble((xb[e] + dm) * ids);
                blk->qs[64 * (e / 128) + e % 64] |= (uint8_t)(e % 128 < 64 ? q : q << 4);
            }
        }
    }
}

/* The q6_K sub-block's values: q = round(v * iscale) clamped to -32..31. */
static inline int six_bits(float v)
{
    const int q = xd_round_half_away(v);
    return q < -32 ? -32 : q > 31 ? 31 : q;
}

/* Candidate inverse scales the q6_K sub-block fit tries: -(32 + 0.1 k) / vmax for
 * k = -FIT6_STEPS .. FIT6_STEPS. */
#define FIT6_STEPS 9

/* The scale s of w ~ s * q (q in -32..31) for one sub-block of 32, weighted by wt: for each
 * candidate, q from its inverse scale and s by weighted least squares for those q. */
static float fit_sub_block6(const float *x, const float *wt)
{
    float vmax = 0.0f, amax = 0.0f;
    for (int i = 0; i < XD_QBLOCK; i++)
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            vmax = x[i];
        }
    if (amax == 0.0f)
        return 0.0f;
    float best_s = 0.0f, best_err = FLT_MAX;
    for (int k = -FIT6_STEPS; k <= FIT6_STEPS; k++) {
        const float iscale = -(32.0f + 0.1f * (float)k) / vmax;
        float swq2 = 0.0f, swqx = 0.0f;
        int q[XD_QBLOCK];
        for (int i = 0; i < XD_QBLOCK; i++) {
            q[i] = six_bits(iscale * x[i]);
            swq2 += wt[i] * (float)q[i] * (float)q[i];
            swqx += wt[i] * (float)q[i] * x[i];
        }
        if (!(swq2 > 0.0f))
            continue;
        const float sc = swqx / swq2;
        float err = 0.0f;
        for (int i = 0; i < XD_QBLOCK; i++) {
            const float e = sc * (float)q[i] - x[i];
            err += wt[i] * e * e;
        }
        if (err < best_err) {
            best_err = err;
            best_s = sc;
        }
    }
    return best_s;
}

void xd_quant_row_q6_k(const float *x, struct xd_block_q6_k *y, int64_t k)
{
    for (int64_t b = 0; b < k / XD_QK; b++) {
        const float *xb = x + b * XD_QK;
        struct xd_block_q6_k *blk = &y[b];
        float sumsq = 0.0f;
        for (int i = 0; i < XD_QK; i++)
            sumsq += xb[i] * xb[i];
        const float ms = sumsq / XD_QK;
        float wt[XD_QK], s[8], smax = 0.0f;
        for (int i = 0; i < XD_QK; i++)
            wt[i] = xb[i] * xb[i] + ms;
        for (int j = 0; j < 8; j++) {
            s[j] = fit_sub_block6(xb + 32 * j, wt + 32 * j);
            smax = xd_max_abs(smax, s[j]);
        }
        blk->d = xd_f32_to_f16(smax / 127.0f);
        const float d = xd_f16_to_f32(blk->d), id = d > 0.0f ? 1.0f / d : 0.0f;
        memset(blk->ql, 0, sizeof blk->ql);
        memset(blk->qh, 0, sizeof blk->qh);
        for (int j = 0; j < 8; j++) {
            int sc = xd_round_half_away(s[j] * id);
            sc = sc < -127 ? -127 : sc > 127 ? 127 : sc;
            blk->sc[j] = (int8_t)sc;
            /* the weights again, against the scale as stored */
            const float ds = d * (float)sc, ids = ds != 0.0f ? 1.0f / ds : 0.0f;
            for (int i = 0; i < 32; i++) {
                const int e = 32 * j + i;
                const int u = six_bits(xb[e] * ids) + 32;
                blk->ql[64 * (e / 128) + e % 64] |= (uint8_t)(e % 128 < 64 ? u & 15 : (u & 15) << 4);
                blk->qh[e % 64] |= (uint8_t)((u >> 4) << (2 * (e / 64)));
            }
        }
    }
}

void xd_quant_dequantize_row(enum xd_dtype dtype, const void *src, float *dst, int64_t k)
{
    if (dtype == XD_DTYPE_Q8_0) {
        const struct xd_block_q8_0 *s = src;
        for (int64_t b = 0; b < k / XD_QBLOCK; b++) {
            const float d = xd_f16_to_f32(s[b].d);
            for (int j = 0; j < XD_QBLOCK; j++)
                dst[b * XD_QBLOCK + j] = d * (float)s[b].qs[j];
        }
    } else if (dtype == XD_DTYPE_Q4_1) {
        const struct xd_block_q4_1 *s = src;
        for (int64_t b = 0; b < k / XD_QBLOCK; b++) {
            const float d = xd_f16_to_f32(s[b].d), m = xd_f16_to_f32(s[b].m);
            for (int j = 0; j < XD_QBLOCK / 2; j++) {
                dst[b * XD_QBLOCK + j] = d * (float)(s[b].qs[j] & 15) + m;
                dst[b * XD_QBLOCK + j + 16] = d * (float)(s[b].qs[j] >> 4) + m;
            }
        }
    } else if (dtype == XD_DTYPE_Q4_K) {
        const struct xd_block_q4_k *s = src;
        for (int64_t b = 0; b < k / XD_QK; b++) {
            const float d = xd_f16_to_f32(s[b].d), dmin = xd_f16_to_f32(s[b].dmin);
            for (int j = 0; j < 8; j++) {
                int sc, mn;
                xd_q4_k_scale_min(&s[b], j, &sc, &mn);
                const float ds = d * (float)sc, dm = dmin * (float)mn;
                for (int i = 0; i < 32; i++) {
                    const float v = ds * (float)xd_q4_k_q(&s[b], 32 * j + i);
                    dst[b * XD_QK + 32 * j + i] = v - dm;
                }
            }
        }
    } else if (dtype == XD_DTYPE_Q6_K) {
        const struct xd_block_q6_k *s = src;
        for (int64_t b = 0; b < k / XD_QK; b++) {
            const float d = xd_f16_to_f32(s[b].d);
            for (int e = 0; e < XD_QK; e++)
                dst[b * XD_QK + e] = d * (float)s[b].sc[e / 32] * (float)(xd_q6_k_u(&s[b], e) - 32);
        }
    }
}

void xd_quant_matrix(const struct xd_matrix *src, enum xd_dtype fmt, void *dst,
                     struct xd_matrix *ret)
{
    const int64_t cols = src->cols;
    const size_t in_row = xd_dtype_row_bytes(src->dtype, cols);
    const size_t out_row = xd_dtype_row_bytes(fmt, cols);
    const size_t esize = xd_dtype_size(src->dtype);
    for (int64_t r = 0; r < src->rows; r++) {
        const char *in = (const char *)src->data + (size_t)r * in_row;
        char *out = (char *)dst + (size_t)r * out_row;
        if (xd_quant_is_super(fmt))
            continue; /* below, in parallel */
        for (int64_t b = 0; b < cols / XD_QBLOCK; b++) {
            float xb[XD_QBLOCK];
            xd_dtype_to_f32(src->dtype, in + (size_t)b * XD_QBLOCK * esize, xb, XD_QBLOCK);
            if (fmt == XD_DTYPE_Q8_0)
                xd_quant_row_q8_0(xb, (struct xd_block_q8_0 *)out + b, XD_QBLOCK);
            else
                xd_quant_row_q4_1(xb, (struct xd_block_q4_1 *)out + b, XD_QBLOCK);
        }
    }
    if (xd_quant_is_super(fmt)) {
        /* q4_K's and q6_K's fits are some thirty times q4_1's work: their rows over the
         * threads (each row alone, so the same bytes at any thread count) */
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < src->rows; r++) {
            const char *in = (const char *)src->data + (size_t)r * in_row;
            char *out = (char *)dst + (size_t)r * out_row;
            for (int64_t b = 0; b < cols / XD_QK; b++) {
                float xb[XD_QK];
                xd_dtype_to_f32(src->dtype, in + (size_t)b * XD_QK * esize, xb, XD_QK);
                if (fmt == XD_DTYPE_Q4_K)
                    xd_quant_row_q4_k(xb, (struct xd_block_q4_k *)out + b, XD_QK);
                else
                    xd_quant_row_q6_k(xb, (struct xd_block_q6_k *)out + b, XD_QK);
            }
        }
    }
    ret->dtype = fmt;
    ret->rows = src->rows;
    ret->cols = cols;
    ret->data = dst;
}

int xd_quant_parse(const char *name, enum xd_dtype *ret_fmt, struct xd_err *err)
{
    if (!name || strcmp(name, "none") == 0 || name[0] == '\0')
        *ret_fmt = XD_DTYPE_F32;
    else if (strcmp(name, "q8") == 0)
        *ret_fmt = XD_DTYPE_Q8_0;
    else if (strcmp(name, "q4") == 0)
        *ret_fmt = XD_DTYPE_Q4_1;
    else if (strcmp(name, "q4k") == 0)
        *ret_fmt = XD_DTYPE_Q4_K;
    else
        return xd_err_set(err, XD_ERR_CONFIG,
                          "option '--quantize' (EXPERTD_QUANTIZE, config key quantize): '%s' is "
                          "not q8, q4, q4k or none",
                          name);
    return XD_OK;
}

const char *xd_quant_name(enum xd_dtype fmt)
{
    switch (fmt) {
    case XD_DTYPE_Q8_0: return "q8";
    case XD_DTYPE_Q4_1: return "q4";
    case XD_DTYPE_Q4_K: return "q4k";
    default: return xd_dtype_name(fmt);
    }
}
