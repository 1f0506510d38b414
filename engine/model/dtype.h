/* Element types of weights and the scalar conversions between them. */
#ifndef XD_DTYPE_H
#define XD_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum xd_dtype {
    XD_DTYPE_F32,
    XD_DTYPE_BF16,
    XD_DTYPE_F16,
    /* float8_e4m3fn (safetensors "F8_E4M3": 1 sign, 4 exponent bits of bias 7, 3 mantissa bits,
     * no infinities, max 448), as FP8 checkpoints store their linear weights; the loader pairs
     * each with its weight_scale_inv blocks and converts it at load (engine/model/fp8.h), so no
     * kernel sees it. */
    XD_DTYPE_F8_E4M3,
    /* Block formats (engine/model/quant.h), made at load by --quantize, never read from a
     * checkpoint: rows of cols / 32 blocks of 32 weights. */
    XD_DTYPE_Q8_0, /* int8 weights, one f16 scale per block (34 bytes a block) */
    XD_DTYPE_Q4_1, /* 4-bit weights, one f16 scale and one f16 minimum per block (20 bytes) */
    /* Read from a checkpoint: */
    XD_DTYPE_U8,    /* safetensors "U8": the bytes of MXFP4 blocks and scales, never a weight */
    XD_DTYPE_MXFP4, /* e2m1 values, one e8m0 scale per block of 32 (17 bytes a block;
                     * engine/model/mxfp4.h): packed at load from a checkpoint's MXFP4
                     * _blocks/_scales (gpt_oss's experts), computed by the CPU kernel as is */
    /* A block format made by --quantize q4k (after the others, so their values stay): rows of
     * cols / 256 super-blocks of 4-bit weights with 6-bit sub-block scales and minimums and
     * an f16 scale and minimum scale per super-block (144 bytes a super-block). */
    XD_DTYPE_Q4_K,
    /* The 6-bit format --quantize q4k gives the lm_head (as Q4_K_M keeps its output matrix at
     * Q6_K): super-blocks of 256 6-bit weights with eight int8 sub-block scales and an f16
     * scale (202 bytes a super-block, engine/model/quant.h). */
    XD_DTYPE_Q6_K,
};

/* Bytes per element; 0 for the block formats (use xd_dtype_row_bytes). */
size_t xd_dtype_size(enum xd_dtype dtype);
/* Bytes of one row of cols elements (cols a multiple of 32 for the block formats, of 256 for
 * Q4_K and Q6_K). */
size_t xd_dtype_row_bytes(enum xd_dtype dtype, int64_t cols);
/* Whether dtype is one of the block formats made by --quantize. */
static inline int xd_dtype_is_quant(enum xd_dtype dtype)
{
    return dtype == XD_DTYPE_Q8_0 || dtype == XD_DTYPE_Q4_1 || dtype == XD_DTYPE_Q4_K ||
           dtype == XD_DTYPE_Q6_K;
}
/* The safetensors spelling ("F32", "BF16", "F16", "F8_E4M3", "U8"), or "Q8_0" / "Q4_1" / "Q4_K" /
 * "Q6_K" / "MXFP4". */
const char *xd_dtype_name(enum xd_dtype dtype);
/* Parses a safetensors dtype string; returns 0 and sets *ret_dtype, or -1
 * for any other dtype. */
int xd_dtype_parse(const char *name, enum xd_dtype *ret_dtype);

static inline float xd_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Round to nearest even, as torch does; NaN stays NaN. */
static inline uint16_t xd_f32_to_bf16(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

float xd_f16_to_f32(uint16_t h);
/* float8_e4m3fn -> f32, exact (every e4m3 value is an f32); 0x7f / 0xff are NaN. */
float xd_f8e4m3_to_f32(uint8_t v);
uint16_t xd_f32_to_f16(float f);

/* dst[i] = src[i] as f32 for n elements of dtype F32, BF16 or F16 (the block formats are
 * xd_quant_dequantize_row's; here they leave dst untouched). */
void xd_dtype_to_f32(enum xd_dtype dtype, const void *src, float *dst, size_t n);

#endif
