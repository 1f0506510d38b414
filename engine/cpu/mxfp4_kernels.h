/* Matmul over MXFP4 weights (gpt_oss's experts as published) with f32 activations: AVX-512F and portable C in one summation order. */
#ifndef XD_MXFP4_KERNELS_H
#define XD_MXFP4_KERNELS_H

#include <stdbool.h>

#include "engine/model/expert_store.h"

/* y (n, w.rows) = x (n, w.cols) @ w^T for w in XD_DTYPE_MXFP4 (w.cols a multiple of 32),
 * parallel over w's rows (OpenMP). The weights are used as stored (4.25 bits each), never
 * widened in memory; each weight's value v * 2^(e - 127) is exact in f32.
 *
 * Every output element is summed in one fixed order whatever its batch or tile, on both paths
 * (the same correctly rounded fmaf steps in the same order), so they give the same bits and
 * batching never changes results. Sixteen float lanes, lane j holding the block's byte j:
 *   L[j] = 0 for j < 16; for each block b in order, s = 2^(e_b - 127):
 *     L[j] = fmaf(value(lo_j) * s, x[32b + 2j], L[j]);
 *     L[j] = fmaf(value(hi_j) * s, x[32b + 2j + 1], L[j])    for j < 16
 *   then L[i] += L[i + k] for k = 8, 4, 2, 1 (i < k); y = L[0].
 * avx512 asks for the AVX-512F path (the caller has checked the CPU has it). */
void xd_cpu_matmul_mxfp4(const float *x, int n, const struct xd_matrix *w, float *y,
                         bool avx512);

#endif
