/* Fine-grained FP8 weights: block-scaled float8_e4m3fn rows to f32, and to q8_0 at load. */
#include "engine/model/fp8.h"

#include <stdlib.h>
#include <string.h>

#include "engine/model/quant.h"

static float scale_at(const struct xd_matrix *w, int64_t sr, int64_t sc, int64_t n_sc)
{
    const size_t i = (size_t)(sr * n_sc + sc);
    if (w->scale_dtype == XD_DTYPE_BF16)
        return xd_bf16_to_f32(((const uint16_t *)w->scale)[i]);
    return ((const float *)w->scale)[i];
}

void xd_fp8_dequantize_row(const struct xd_matrix *w, int br, int bc, int64_t r, float *dst)
{
    const int64_t cols = w->cols, n_sc = (cols + bc - 1) / bc;
    const uint8_t *row = (const uint8_t *)w->data + (size_t)(r * cols);
    for (int64_t c0 = 0; c0 < cols; c0 += bc) {
        const float s = scale_at(w, r / br, c0 / bc, n_sc);
        const int64_t c1 = c0 + bc < cols ? c0 + bc : cols;
        for (int64_t c = c0; c < c1; c++)
            dst[c] = xd_f8e4m3_to_f32(row[c]) * s;
    }
}

int xd_fp8_serve_parse(const char *name, bool *ret_native, struct xd_err *err)
{
    if (!name || strcmp(name, "q8") == 0)
        *ret_native = false;
    else if (strcmp(name, "native") == 0)
        *ret_native = true;
    else
        return xd_err_set(err, XD_ERR_CONFIG, "option '--fp8': '%s' is not q8 or native", name);
    return XD_OK;
}

size_t xd_fp8_converted_bytes(const struct xd_matrix *w, int to_q8)
{
    return (size_t)w->rows * xd_dtype_row_bytes(to_q8 ? XD_DTYPE_Q8_0 : XD_DTYPE_F32, w->cols);
}

void xd_fp8_convert(const struct xd_matrix *w, int br, int bc, int to_q8, void *dst,
                    struct xd_matrix *ret)
{
    const enum xd_dtype fmt = to_q8 ? XD_DTYPE_Q8_0 : XD_DTYPE_F32;
    const size_t out_row = xd_dtype_row_bytes(fmt, w->cols);
    float *tmp = to_q8 ? malloc((size_t)w->cols * sizeof *tmp) : NULL;
    for (int64_t r = 0; r < w->rows; r++) {
        char *out = (char *)dst + (size_t)r * out_row;
        if (!to_q8) {
            xd_fp8_dequantize_row(w, br, bc, r, (float *)out);
            continue;
        }
        if (tmp) {
            xd_fp8_dequantize_row(w, br, bc, r, tmp);
            xd_quant_row_q8_0(tmp, (struct xd_block_q8_0 *)out, w->cols);
        } else {
            /* no memory for a row: one block at a time through the stack */
            for (int64_t b = 0; b < w->cols / XD_QBLOCK; b++) {
                float xb[XD_QBLOCK];
                const int64_t n_sc = (w->cols + bc - 1) / bc;
                for (int j = 0; j < XD_QBLOCK; j++) {
                    const int64_t c = b * XD_QBLOCK + j;
                    xb[j] = xd_f8e4m3_to_f32(((const uint8_t *)w->data)[r * w->cols + c]) *
                            scale_at(w, r / br, c / bc, n_sc);
                }
                xd_quant_row_q8_0(xb, (struct xd_block_q8_0 *)out + b, XD_QBLOCK);
            }
        }
    }
    free(tmp);
    *ret = (struct xd_matrix){.dtype = fmt, .rows = w->rows, .cols = w->cols, .data = dst};
}
