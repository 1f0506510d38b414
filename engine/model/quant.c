/* The q8_0 and q4_1 weight formats: round-to-nearest quantizers from f32/bf16/f16 and dequantizers. */
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
            amax = fmaxf(amax, fabsf(xb[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = xd_f32_to_f16(d);
        for (int j = 0; j < XD_QBLOCK; j++)
            y[b].qs[j] = (int8_t)roundf(xb[j] * id);
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
        for (int64_t b = 0; b < cols / XD_QBLOCK; b++) {
            float xb[XD_QBLOCK];
            xd_dtype_to_f32(src->dtype, in + (size_t)b * XD_QBLOCK * esize, xb, XD_QBLOCK);
            if (fmt == XD_DTYPE_Q8_0)
                xd_quant_row_q8_0(xb, (struct xd_block_q8_0 *)out + b, XD_QBLOCK);
            else
                xd_quant_row_q4_1(xb, (struct xd_block_q4_1 *)out + b, XD_QBLOCK);
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
    else
        return xd_err_set(err, XD_ERR_CONFIG,
                          "option '--quantize' (EXPERTD_QUANTIZE, config key quantize): '%s' is "
                          "not q8, q4 or none",
                          name);
    return XD_OK;
}
