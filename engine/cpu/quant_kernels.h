/* Matmul over q8_0 / q4_1 weights with activations quantized per block of 32 to int8: integer dot products (AVX-512 VNNI, AVX2, portable C). */
#ifndef XD_QUANT_KERNELS_H
#define XD_QUANT_KERNELS_H

#include "engine/model/expert_store.h"

/* Which integer dot product xd_cpu_matmul_quant uses. */
enum xd_quant_path {
    XD_QUANT_PORTABLE = 1, /* plain C (fmaf) */
    XD_QUANT_AVX2 = 2,     /* vpmaddubsw + vpmaddwd, 1 row x 4 tokens of 2 x 8 lanes */
    XD_QUANT_VNNI = 3,     /* vpdpbusd (AVX512-VNNI), two blocks a vector, 4 rows x 4 tokens */
};

/* y (n, w.rows) = x (n, w.cols) @ w^T for w in XD_DTYPE_Q8_0 or XD_DTYPE_Q4_1 (w.cols a multiple
 * of 32), parallel over w's rows (OpenMP). Each row of x is first quantized per block of 32 to
 * int8 with an f32 scale d = max |x| / 127 (q = round(x / d)), as llama.cpp's q8 dot path.
 *
 * Every output element is summed in one fixed order, whatever tile or batch it is in and on
 * every path (the integer sums are exact, the float steps are the same operations in the same
 * order), so the paths give the same bits and batching never changes results. Sixteen float
 * lanes, the even blocks in lanes 0-7 and the odd ones in lanes 8-15 (as one 512-bit vpdpbusd
 * takes a pair of blocks):
 *   L[i] = 0 for i < 16; for each block b in order, h = 8 * (b % 2):
 *     s = f32(dw_b) * dx_b;  p_j = sum_{i<4} wq[32b + 4j + i] * xq[32b + 4j + i] (int32);
 *     L[h + j] = fmaf(s, (float)p_j, L[h + j]) for j < 8
 *   r = the tree L[i] += L[i + k] for k = 8, 4, 2, 1 (i < k), then L[0]
 * q8_0: y = r (wq the int8 weights). q4_1: wq the 4-bit values 0..15, and
 *   macc = 0; for each block b: macc = fmaf(f32(mw_b), dx_b * (float)sum_i xq[32b + i], macc)
 *   y = r + macc. */
void xd_cpu_matmul_quant(const float *x, int n, const struct xd_matrix *w, float *y,
                         enum xd_quant_path path);

/* The best path this CPU has, at most max. */
enum xd_quant_path xd_cpu_quant_best_path(enum xd_quant_path max);

#endif
