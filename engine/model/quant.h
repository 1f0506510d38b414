/* The quantized weight formats q8_0, q4_1 and q4_K: their blocks, quantizers and dequantizers. */
#ifndef XD_QUANT_H
#define XD_QUANT_H

#include <math.h>
#include <stdint.h>

#include "engine/base/status.h"
#include "engine/model/expert_store.h"

/* Weights per block; a quantized matrix's cols must be a multiple of it. */
#define XD_QBLOCK 32

/* roundf(v), half away from zero, for finite |v| < 2^31, without libm's call: v - trunc(v) is
 * exact, so its comparison with one half decides as roundf does. Plain C the compiler inlines
 * and vectorizes (the quantizers of activations run it on every value of a step). */
static inline int xd_round_half_away(float v)
{
    const int i = (int)v;
    const float f = v - (float)i;
    return i + (f >= 0.5f) - (f <= -0.5f);
}

/* fmaxf(m, fabsf(v)) for m >= 0 (a NaN v leaves m, as fmaxf does), without libm's call. */
static inline float xd_max_abs(float m, float v)
{
    const float a = fabsf(v);
    return a > m ? a : m;
}

/* q8_0 (the class of GGUF's Q8_0): w[i] = d * qs[i]. */
struct xd_block_q8_0 {
    uint16_t d;                 /* f16 scale: max |w| / 127 */
    int8_t qs[XD_QBLOCK];       /* (32,) in [-127, 127] */
};

/* q4_1 (the class of GGUF's Q4_1): w[i] = d * q[i] + m, q[j] = qs[j] & 15 and
 * q[j + 16] = qs[j] >> 4 for j < 16. */
struct xd_block_q4_1 {
    uint16_t d;                 /* f16 scale: (max - min) / 15 */
    uint16_t m;                 /* f16 minimum of the block */
    uint8_t qs[XD_QBLOCK / 2];  /* (16,) two 4-bit weights each */
};

/* Weights per q4_K super-block; a q4_K matrix's cols must be a multiple of it. */
#define XD_QK 256

/* q4_K (the class of GGUF's Q4_K, not its byte layout): a super-block of 256 weights is eight
 * sub-blocks of 32; weight e (0..255) of sub-block j = e / 32 is
 *   w[e] = f32(d) * sc[j] * q[e] - f32(dmin) * mn[j],  q[e] in 0..15, sc[j] and mn[j] in 0..63.
 * scales[12]: for j < 8, scales[j] = (sc[j] & 15) | (mn[j] & 15) << 4, and the little-endian
 * u32 h at scales + 8 holds the high bits: bits 2j, 2j + 1 = sc[j] >> 4, bits 16 + 2j,
 * 17 + 2j = mn[j] >> 4.
 * qs[128]: two halves of 64 bytes; weight e is in byte 64 * (e / 128) + e % 64, in its low
 * nibble when e % 128 < 64, else in its high nibble (so one 64-byte load split into low and high
 * nibbles gives weights 0..63 and 64..127 of a half in order, and 32 bytes give two sub-blocks).
 * 144 bytes, 4.5 bits a weight. */
struct xd_block_q4_k {
    uint16_t d;                 /* f16 scale of the sub-block scales */
    uint16_t dmin;              /* f16 scale of the sub-block minimums */
    uint8_t scales[12];         /* eight 6-bit scales and eight 6-bit minimums, as above */
    uint8_t qs[XD_QK / 2];      /* (128,) two 4-bit weights each, as above */
};

/* q6_K (the class of GGUF's Q6_K, not its layout: scales per 32, not 16): a super-block of 256
 * weights is eight sub-blocks of 32; weight e of sub-block j = e / 32 is
 *   w[e] = f32(d) * sc[j] * (u[e] - 32),  u[e] in 0..63, sc[j] in -127..127.
 * ql[128]: the low four bits of u[e], placed as q4_K's qs (byte 64 * (e / 128) + e % 64, the low
 * nibble when e % 128 < 64); qh[64]: its high two bits, in bits 2 * (e / 64), 2 * (e / 64) + 1
 * of byte e % 64 (so one 64-byte load gives the high bits of weights 64g .. 64g + 63 for each
 * g in 0..3). 202 bytes, 6.3 bits a weight. */
struct xd_block_q6_k {
    uint16_t d;                 /* f16 scale of the sub-block scales */
    int8_t sc[8];               /* the sub-block scales */
    uint8_t ql[XD_QK / 2];      /* (128,) the low four bits, as above */
    uint8_t qh[XD_QK / 4];      /* (64,) the high two bits, as above */
};

_Static_assert(sizeof(struct xd_block_q8_0) == 34, "q8_0 block is 34 bytes");
_Static_assert(sizeof(struct xd_block_q4_1) == 20, "q4_1 block is 20 bytes");
_Static_assert(sizeof(struct xd_block_q4_k) == 144, "q4_K super-block is 144 bytes");
_Static_assert(sizeof(struct xd_block_q6_k) == 202, "q6_K super-block is 202 bytes");

/* Whether matrices of dtype take activations quantized per super-block of 256 (q4_K, q6_K: the
 * super form of engine/cpu/quant_kernels.h) rather than per block of 32. */
static inline int xd_quant_is_super(enum xd_dtype dtype)
{
    return dtype == XD_DTYPE_Q4_K || dtype == XD_DTYPE_Q6_K;
}

/* Quantizes x (k,), k a multiple of 32, into k / 32 blocks y, round to nearest as llama.cpp's
 * reference quantizers (quantize_row_q8_0_ref, quantize_row_q4_1_ref): the scale from the
 * block's absolute maximum (q8_0) or its range (q4_1), the weights from the f32 scale before it
 * is rounded to f16. */
void xd_quant_row_q8_0(const float *x, struct xd_block_q8_0 *y, int64_t k);
void xd_quant_row_q4_1(const float *x, struct xd_block_q4_1 *y, int64_t k);

/* Quantizes x (k,), k a multiple of 256, into k / 256 super-blocks y. Each sub-block's scale and
 * minimum are searched (a weighted least-squares fit of w ~ s * q - m over twenty candidate
 * scales around the range / 15, the error weighted by the super-block's rms plus |w|, m >= 0);
 * the eight scales and eight minimums are then quantized to 6 bits against d = max scale / 63
 * and dmin = max minimum / 63 (rounded to f16), and the weights quantized again with those
 * stored scales. */
void xd_quant_row_q4_k(const float *x, struct xd_block_q4_k *y, int64_t k);

/* Sub-block j's 6-bit scale and minimum of super-block b (the layout above). */
static inline void xd_q4_k_scale_min(const struct xd_block_q4_k *b, int j, int *ret_sc,
                                     int *ret_mn)
{
    const uint32_t h = (uint32_t)b->scales[8] | (uint32_t)b->scales[9] << 8 |
                       (uint32_t)b->scales[10] << 16 | (uint32_t)b->scales[11] << 24;
    *ret_sc = (b->scales[j] & 15) | (int)((h >> (2 * j)) & 3) << 4;
    *ret_mn = (b->scales[j] >> 4) | (int)((h >> (16 + 2 * j)) & 3) << 4;
}

/* Quantizes x (k,), k a multiple of 256, into k / 256 q6_K super-blocks y. Each sub-block's
 * scale is searched (weighted least squares of w ~ s * q, q in -32..31, over candidates around
 * max |w| / 32 taken with the sign of the largest magnitude, the error weighted by w^2 plus the
 * super-block's mean square); the eight scales are then quantized to int8 against d = max |s|
 * / 127 (rounded to f16) and the weights quantized again with those stored scales. */
void xd_quant_row_q6_k(const float *x, struct xd_block_q6_k *y, int64_t k);

/* Weight e (0..255) of q6_K super-block b as its 6-bit value u (0..63; the weight is
 * d * sc * (u - 32)). */
static inline int xd_q6_k_u(const struct xd_block_q6_k *b, int e)
{
    const uint8_t lo = b->ql[64 * (e / 128) + e % 64];
    return (e % 128 < 64 ? lo & 15 : lo >> 4) | ((b->qh[e % 64] >> (2 * (e / 64))) & 3) << 4;
}

/* Weight e (0..255) of super-block b as its 4-bit value. */
static inline int xd_q4_k_q(const struct xd_block_q4_k *b, int e)
{
    const uint8_t byte = b->qs[64 * (e / 128) + e % 64];
    return e % 128 < 64 ? byte & 15 : byte >> 4;
}

/* dst (k,) = the k weights of blocks src of format dtype (XD_DTYPE_Q8_0, XD_DTYPE_Q4_1, or
 * XD_DTYPE_Q4_K / XD_DTYPE_Q6_K with k a multiple of 256), k a multiple of 32: d * q (+ m) in
 * f32 (q4_K: (f32(d) * sc) * q - f32(dmin) * mn, each product rounded to f32 in that order;
 * q6_K: (f32(d) * sc) * (u - 32)). */
void xd_quant_dequantize_row(enum xd_dtype dtype, const void *src, float *dst, int64_t k);

/* Quantizes matrix src (f32, bf16 or f16; cols a multiple of 32, of 256 for Q4_K and Q6_K) into
 * format fmt
 * at dst, which
 * holds src->rows * xd_dtype_row_bytes(fmt, src->cols) bytes, and fills *ret with the view of
 * it (dtype fmt, src's shape, data dst). */
void xd_quant_matrix(const struct xd_matrix *src, enum xd_dtype fmt, void *dst,
                     struct xd_matrix *ret);

/* Parses a --quantize value: "none" (ret XD_DTYPE_F32: no quantization), "q8", "q4" or "q4k"
 * (XD_DTYPE_Q4_K; a matrix whose cols are not a multiple of 256 is made q4_1). Returns
 * XD_OK, or XD_ERR_CONFIG naming the value (then *ret_fmt is untouched). */
int xd_quant_parse(const char *name, enum xd_dtype *ret_fmt, struct xd_err *err);

/* The --quantize spelling of a format ("q8", "q4", "q4k"; else its dtype name). */
const char *xd_quant_name(enum xd_dtype fmt);

/* The format a matrix of cols columns gets under --quantize fmt: fmt, but q4_1 for Q4_K and q8_0
 * for Q6_K when cols is not a multiple of 256. */
static inline enum xd_dtype xd_quant_format_for(enum xd_dtype fmt, int64_t cols)
{
    if (cols % XD_QK == 0)
        return fmt;
    return fmt == XD_DTYPE_Q4_K ? XD_DTYPE_Q4_1 : fmt == XD_DTYPE_Q6_K ? XD_DTYPE_Q8_0 : fmt;
}

#endif
