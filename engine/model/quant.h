/* The quantized weight formats q8_0 and q4_1: their blocks, round-to-nearest quantizers and dequantizers. */
#ifndef XD_QUANT_H
#define XD_QUANT_H

#include <stdint.h>

#include "engine/base/status.h"
#include "engine/model/expert_store.h"

/* Weights per block; a quantized matrix's cols must be a multiple of it. */
#define XD_QBLOCK 32

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

_Static_assert(sizeof(struct xd_block_q8_0) == 34, "q8_0 block is 34 bytes");
_Static_assert(sizeof(struct xd_block_q4_1) == 20, "q4_1 block is 20 bytes");

/* Quantizes x (k,), k a multiple of 32, into k / 32 blocks y, round to nearest as llama.cpp's
 * reference quantizers (quantize_row_q8_0_ref, quantize_row_q4_1_ref): the scale from the
 * block's absolute maximum (q8_0) or its range (q4_1), the weights from the f32 scale before it
 * is rounded to f16. */
void xd_quant_row_q8_0(const float *x, struct xd_block_q8_0 *y, int64_t k);
void xd_quant_row_q4_1(const float *x, struct xd_block_q4_1 *y, int64_t k);

/* dst (k,) = the k weights of blocks src of format dtype (XD_DTYPE_Q8_0 or XD_DTYPE_Q4_1), k a
 * multiple of 32: d * q (+ m) in f32. */
void xd_quant_dequantize_row(enum xd_dtype dtype, const void *src, float *dst, int64_t k);

/* Quantizes matrix src (f32, bf16 or f16; cols a multiple of 32) into format fmt at dst, which
 * holds src->rows * xd_dtype_row_bytes(fmt, src->cols) bytes, and fills *ret with the view of
 * it (dtype fmt, src's shape, data dst). */
void xd_quant_matrix(const struct xd_matrix *src, enum xd_dtype fmt, void *dst,
                     struct xd_matrix *ret);

/* Parses a --quantize value: "none" (ret XD_DTYPE_F32: no quantization), "q8" or "q4". Returns
 * XD_OK, or XD_ERR_CONFIG naming the value (then *ret_fmt is untouched). */
int xd_quant_parse(const char *name, enum xd_dtype *ret_fmt, struct xd_err *err);

#endif
