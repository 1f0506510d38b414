/* Matmul over MXFP4 weights (gpt_oss's experts as published) with f32 activations: AVX-512F, AVX2 and portable C in one summation order. */
#ifndef XD_MXFP4_KERNELS_H
#define XD_MXFP4_KERNELS_H

#include "engine/model/expert_store.h"

/* Which code xd_cpu_matmul_mxfp4 runs (the caller has checked the CPU has it). */
enum xd_mxfp4_path {
    XD_MXFP4_PORTABLE, /* plain C (fmaf) */
    XD_MXFP4_AVX2,     /* AVX2 + FMA: the sixteen lanes as two 8-lane halves */
    XD_MXFP4_AVX512,   /* AVX-512F: sixteen lanes, codes decoded with vpermps */
};

/* y (n, w.rows) = x (n, w.cols) @ w^T for w in XD_DTYPE_MXFP4 (w.cols a multiple of 32),
 * parallel over w's rows (OpenMP). The weights are used as stored (4.25 bits each), never
 * widened in memory; each weight's value v * 2^(e - 127) is exact in f32.
 *
 * Every output element is summed in one fixed order whatever its batch or tile, on every path
 * (the same correctly rounded fmaf steps in the same order), so they give the same bits and
 * batching never changes results. Sixteen float lanes, lane j holding the block's byte j:
 *   L[j] = 0 for j < 16; for each block b in order, s = 2^(e_b - 127):
 *     L[j] = fmaf(value(lo_j) * s, x[32b + 2j], L[j]);
 *     L[j] = fmaf(value(hi_j) * s, x[32b + 2j + 1], L[j])    for j < 16
 *   then L[i] += L[i + k] for k = 8, 4, 2, 1 (i < k); y = L[0].
 * (value(c) for c >= 8 is -value(c - 8), so -0.0 for code 8, on every path.) */
void xd_cpu_matmul_mxfp4(const float *x, int n, const struct xd_matrix *w, float *y,
                         enum xd_mxfp4_path path);

/* xd (n, cols) = x (n, cols) with each block's even columns first, then its odd ones: the form
 * the kernels read, made once per token and shared by every row range (the MoE work items). */
void xd_cpu_mxfp4_prep(const float *x, int n, int64_t cols, float *xd);

/* Rows [r0, r1) of y (n, w.rows) = x @ w^T for xd made from x by xd_cpu_mxfp4_prep, on the
 * calling thread alone (no OpenMP); every element the bits xd_cpu_matmul_mxfp4 gives. */
void xd_cpu_matmul_mxfp4_rows(const float *xd, int n, const struct xd_matrix *w, float *y,
                              int64_t r0, int64_t r1, enum xd_mxfp4_path path);

#endif
