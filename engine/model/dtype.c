/* Element-type names and conversions (IEEE half and bfloat16 to float). */
#include "engine/model/dtype.h"

#include <math.h>

#include "engine/model/mxfp4.h"
#include "engine/model/quant.h"

size_t xd_dtype_size(enum xd_dtype dtype)
{
    switch (dtype) {
    case XD_DTYPE_F32: return 4;
    case XD_DTYPE_BF16:
    case XD_DTYPE_F16: return 2;
    case XD_DTYPE_F8_E4M3: return 1;
    case XD_DTYPE_U8: return 1;
    case XD_DTYPE_Q8_0:
    case XD_DTYPE_Q4_1:
    case XD_DTYPE_Q4_K:
    case XD_DTYPE_Q6_K:
    case XD_DTYPE_MXFP4: return 0;
    }
    return 0;
}

size_t xd_dtype_row_bytes(enum xd_dtype dtype, int64_t cols)
{
    switch (dtype) {
    case XD_DTYPE_Q8_0: return (size_t)(cols / XD_QBLOCK) * sizeof(struct xd_block_q8_0);
    case XD_DTYPE_Q4_1: return (size_t)(cols / XD_QBLOCK) * sizeof(struct xd_block_q4_1);
    case XD_DTYPE_Q4_K: return (size_t)(cols / XD_QK) * sizeof(struct xd_block_q4_k);
    case XD_DTYPE_Q6_K: return (size_t)(cols / XD_QK) * sizeof(struct xd_block_q6_k);
    case XD_DTYPE_MXFP4:
        return (size_t)(cols / XD_MXFP4_BLOCK) * sizeof(struct xd_block_mxfp4);
    default: return (size_t)cols * xd_dtype_size(dtype);
    }
}

const char *xd_dtype_name(enum xd_dtype dtype)
{
    switch (dtype) {
    case XD_DTYPE_F32: return "F32";
    case XD_DTYPE_BF16: return "BF16";
    case XD_DTYPE_F16: return "F16";
    case XD_DTYPE_F8_E4M3: return "F8_E4M3";
    case XD_DTYPE_Q8_0: return "Q8_0";
    case XD_DTYPE_Q4_1: return "Q4_1";
    case XD_DTYPE_Q4_K: return "Q4_K";
    case XD_DTYPE_Q6_K: return "Q6_K";
    case XD_DTYPE_U8: return "U8";
    case XD_DTYPE_MXFP4: return "MXFP4";
    }
    return "?";
}

int xd_dtype_parse(const char *name, enum xd_dtype *ret_dtype)
{
    if (strcmp(name, "F32") == 0)
        *ret_dtype = XD_DTYPE_F32;
    else if (strcmp(name, "BF16") == 0)
        *ret_dtype = XD_DTYPE_BF16;
    else if (strcmp(name, "F16") == 0)
        *ret_dtype = XD_DTYPE_F16;
    else if (strcmp(name, "F8_E4M3") == 0)
        *ret_dtype = XD_DTYPE_F8_E4M3;
    else if (strcmp(name, "U8") == 0)
        *ret_dtype = XD_DTYPE_U8;
    else
        return -1;
    return 0;
}

float xd_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;

    if (exp == 0) {
        /* zero or subnormal: value = mant * 2^-24 */
        float f = ldexpf((float)mant, -24);
        return sign ? -f : f;
    }
    if (exp == 31)
        bits = sign | 0x7f800000u | (mant << 13);
    else
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

float xd_f8e4m3_to_f32(uint8_t v)
{
    const uint32_t exp = (v >> 3) & 0xfu, mant = v & 7u;
    float f;
    if ((v & 0x7fu) == 0x7fu)
        f = NAN;
    else if (exp == 0)
        f = ldexpf((float)mant, -9); /* subnormal: mant * 2^-3 * 2^-6 */
    else
        f = ldexpf((float)(8u + mant), (int)exp - 10); /* (1 + mant / 8) * 2^(exp - 7) */
    return (v & 0x80u) ? -f : f;
}

uint16_t xd_f32_to_f16(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    float a = fabsf(f);

    if (isnan(f))
        return sign | 0x7e00u;
    if (a >= 65520.0f)
        return sign | 0x7c00u;
    if (a < ldexpf(1.0f, -14)) {
        /* subnormal: round a / 2^-24 to nearest even */
        float m = nearbyintf(ldexpf(a, 24));
        return sign | (uint16_t)m;
    }
    uint32_t abits = bits & 0x7fffffffu;
    uint32_t exp = (abits >> 23) - 112u;
    uint32_t mant = abits & 0x7fffffu;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++;
    return sign | (uint16_t)h;
}

void xd_dtype_to_f32(enum xd_dtype dtype, const void *src, float *dst, size_t n)
{
    switch (dtype) {
    case XD_DTYPE_F32:
        memcpy(dst, src, n * sizeof(float));
        return;
    case XD_DTYPE_BF16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++)
            dst[i] = xd_bf16_to_f32(s[i]);
        return;
    }
    case XD_DTYPE_F16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++)
            dst[i] = xd_f16_to_f32(s[i]);
        return;
    }
    case XD_DTYPE_F8_E4M3: {
        /* the stored values, without their block scales */
        const uint8_t *s = src;
        for (size_t i = 0; i < n; i++)
            dst[i] = xd_f8e4m3_to_f32(s[i]);
        return;
    }
    case XD_DTYPE_Q8_0:
    case XD_DTYPE_Q4_1:
    case XD_DTYPE_Q4_K:
    case XD_DTYPE_Q6_K:
        /* block formats: xd_quant_dequantize_row (quant.c calls this file, not the reverse) */
        return;
    case XD_DTYPE_MXFP4:
        xd_mxfp4_dequantize_row(src, dst, (int64_t)n);
        return;
    case XD_DTYPE_U8: {
        const uint8_t *s = src;
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)s[i];
        return;
    }
    }
}
