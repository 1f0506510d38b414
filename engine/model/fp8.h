/* Fine-grained FP8 weights (float8_e4m3fn, a scale per block): dequantization, conversion to q8_0. */
#ifndef XD_FP8_H
#define XD_FP8_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/base/status.h"
#include "engine/model/expert_store.h"

/* The block of scales the CPU kernels compute FP8 weights with as stored (128 x 128, the
 * published layout and transformers' default); other block shapes are converted at load. */
#define XD_FP8_KERNEL_BLOCK 128

/* dst (cols,) = row r of FP8 matrix w (dtype XD_DTYPE_F8_E4M3 with its scale) dequantized as
 * transformers' _dequantize_fp8_weight does: fp8(w[r][c]) * scale[r / br][c / bc] in f32 (the
 * one product is exact to f32 rounding, the same bits as torch's weight.float() * scale). */
void xd_fp8_dequantize_row(const struct xd_matrix *w, int br, int bc, int64_t r, float *dst);

/* *ret_native from the --fp8 value name: "q8" (or NULL: the default) false, "native" true;
 * anything else an XD_ERR_CONFIG naming the option. */
int xd_fp8_serve_parse(const char *name, bool *ret_native, struct xd_err *err);

/* Bytes xd_fp8_convert writes for w: rows x cols as q8_0 when to_q8, else as f32. */
size_t xd_fp8_converted_bytes(const struct xd_matrix *w, int to_q8);

/* Converts FP8 matrix w (blocks br x bc) into dst, which holds xd_fp8_converted_bytes(w,
 * to_q8): each row dequantized (xd_fp8_dequantize_row), then, when to_q8 (cols a multiple of
 * 32), requantized per 32 as xd_quant_row_q8_0 does, else stored as f32. Fills *ret with the
 * view of dst (dtype Q8_0 or F32, w's shape, no scale). */
void xd_fp8_convert(const struct xd_matrix *w, int br, int bc, int to_q8, void *dst,
                    struct xd_matrix *ret);

#endif
