/* CPU kernels of the reference backend: f32 activations, f32 accumulation, weights in any dtype. */
#ifndef XD_CPU_KERNELS_H
#define XD_CPU_KERNELS_H

#include "engine/cpu/mxfp4_kernels.h"
#include "engine/cpu/quant_kernels.h"
#include "engine/model/expert_store.h"
#include "engine/model/rope.h"

/* y (n, w.rows) = x (n, w.cols) @ w^T, parallel over w's rows. Each output
 * element is one dot product in a fixed order, so a row of y does not depend
 * on the other rows of x (batching never changes results). An XD_DTYPE_F8_E4M3 w (its scale
 * in 128 x 128 blocks, cols a multiple of 16) gives the bits of the same matrix dequantized to
 * f32 by xd_fp8_dequantize_row. */
void xd_cpu_matmul(const float *x, int n, const struct xd_matrix *w, float *y);

/* ys[i] (n, ws[i].rows) = x (n, cols) @ ws[i]^T for the k matrices (all cols wide, any dtypes)
 * in one parallel region: one fork and one barrier for the q, k and v projections, or gate and
 * up, instead of one per matrix; few tokens (n < 24) in row chunks of every matrix taken
 * dynamically, so no thread waits for a slower one at the end. Each element as xd_cpu_matmul
 * computes it, bit for bit (a row is computed whole by one kernel call in its fixed order);
 * the quantized ones share one quantization of x. */
void xd_cpu_matmul_multi(const float *x, int n, int k, const struct xd_matrix *const ws[],
                         float *const ys[]);

/* Rows r_begin .. r_end - 1 of y (n, w.rows) = x (n, w.cols) @ w^T on the calling thread alone
 * (no OpenMP): the building block of work items that several threads share. Each element sums
 * in the same order as in xd_cpu_matmul, so splitting the rows never changes a bit. */
void xd_cpu_matmul_rows(const float *x, int n, const struct xd_matrix *w, float *y,
                        int64_t r_begin, int64_t r_end);

/* The matmul's vector path on this CPU, as a static string: "avx512f ...", "avx2+fma ..." or
 * "portable ...". Chosen once from the CPU's features; the environment variable
 * EXPERTD_CPU_KERNEL=portable or =avx2 selects a lesser path (tests and benchmarks), never one
 * the CPU lacks; =avx512bf16 opts in to "avx512bf16 ...", where the CPU has AVX512-BF16: bf16
 * weights through vdpbf16ps with the activations rounded to bf16 (still one fixed order per
 * element, so batching never changes results, but outside the goldens' f32 tolerances). */
const char *xd_cpu_kernel_path(void);

/* The integer path of q8/q4 weights and the path of MXFP4 weights under xd_cpu_kernel_path's
 * choice: what xd_cpu_matmul runs for them, for callers of the row-range kernels. */
enum xd_quant_path xd_cpu_quant_path(void);
enum xd_mxfp4_path xd_cpu_mxfp4_path(void);

/* The float path in use, for kernels in other files that pick their own vector code (the
 * attention): EXPERTD_CPU_KERNEL applies as to the matmul. */
enum xd_cpu_vec { XD_CPU_VEC_PORTABLE, XD_CPU_VEC_AVX2, XD_CPU_VEC_AVX512 };
enum xd_cpu_vec xd_cpu_vector_path(void);

/* Whether AMX tiles can run here, as a static string: "absent ..." (cpuid), "refused ..." (the
 * kernel did not grant ARCH_REQ_XCOMP_PERM, as a VM may withhold it) or "granted ...". Asks the
 * kernel once (the permission then holds for the process); never assumes it from the CPU flags. */
const char *xd_cpu_amx_status(void);

/* y (n, d) += bias (d,) broadcast over rows; bias may be a NULL matrix. */
void xd_cpu_add_bias(float *y, int n, const struct xd_matrix *bias);

/* y[t * ld + i] += bias[i] for t < n and i in [c0, c1): columns of a row range (the MoE work
 * items); the same additions as xd_cpu_add_bias. */
void xd_cpu_add_bias_cols(float *y, int n, int64_t ld, const struct xd_matrix *bias, int64_t c0,
                          int64_t c1);

/* Row-wise RMSNorm as transformers computes it: y = w * x / sqrt(mean(x^2) + eps).
 * x and y are (n, d) with d == w.cols; y may equal x. */
void xd_cpu_rmsnorm(const float *x, int n, const struct xd_matrix *w, float eps, float *y);

/* Rotary embedding in place on x (n_heads, head_dim) at position pos: the first rope->rot_dim
 * dims of each head in the rotate-half layout of transformers (pairs (i, i + rot_dim / 2)),
 * angle pos * inv_freq[i] (xd_rope_inv_freq), cos and sin times rope->attention_scaling; the
 * dims from rot_dim on pass through (partial rotary). */
void xd_cpu_rope(float *x, int n_heads, int head_dim, int pos, const struct xd_rope *rope);

/* The same on adjacent pairs (2i, 2i + 1) at frequency i (ernie4_5_moe: transformers'
 * interleaved rotate_half with cos and sin repeated per pair). */
void xd_cpu_rope_pairs(float *x, int n_heads, int head_dim, int pos, const struct xd_rope *rope);

/* y (n, f) = silu(gate (n, f)) * up (n, f); y may equal gate. */
void xd_cpu_silu_mul(const float *gate, const float *up, float *y, size_t n);

/* Dot product of f32 x (n,) with row r of w; exposed for the attention code. */
float xd_cpu_dot(const float *a, const float *b, int n);

/* dst[i] = src[i] rounded to dt (XD_DTYPE_BF16 or XD_DTYPE_F16) to nearest even, for n values:
 * xd_f32_to_bf16's / xd_f32_to_f16's bits for every non-NaN value (F16C where the CPU has it);
 * a NaN stays a NaN. The KV cache's store (--kv-dtype). */
void xd_cpu_f32_to_16(enum xd_dtype dt, const float *src, uint16_t *dst, size_t n);

/* Softmax over x (n,) in place. */
void xd_cpu_softmax(float *x, int n);

#endif
