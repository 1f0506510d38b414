/* Matmul over q8_0 / q4_1 / q4_K / q6_K weights with activations quantized to int8 (per block of 32, or per 256 for q4_K and q6_K): integer dot products (AVX-512 VNNI, AVX2, portable C). */
#ifndef XD_QUANT_KERNELS_H
#define XD_QUANT_KERNELS_H

#include <stdbool.h>
#include <stddef.h>

#include "engine/model/expert_store.h"

/* Which integer dot product xd_cpu_matmul_quant uses. */
enum xd_quant_path {
    XD_QUANT_PORTABLE = 1, /* plain C (fmaf) */
    XD_QUANT_AVX2 = 2,     /* vpmaddubsw + vpmaddwd, 1 row x 4 tokens of 2 x 8 lanes (q4_K:
                            * int32 lanes per super-block, 1 row x 4 tokens) */
    XD_QUANT_VNNI = 3,     /* vpdpbusd (AVX512-VNNI), two blocks a vector, 4 rows x 4 tokens
                            * (q4_K: one token vpmaddubsw + vpdpwssd over 4 rows; from
                            * 7 tokens vpdpbusd on lanes of 16 tokens x 4 rows; between,
                            * vpmaddubsw + vpdpwssd, 4 rows x 4 tokens) */
};

/* y (n, w.rows) = x (n, w.cols) @ w^T for w in XD_DTYPE_Q8_0 or XD_DTYPE_Q4_1 (w.cols a multiple
 * of 32) or XD_DTYPE_Q4_K / XD_DTYPE_Q6_K (a multiple of 256; their orders are below), parallel over w's rows
 * (OpenMP). Each row of x is first quantized per block of 32 to
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
 *   y = r + macc.
 *
 * q4_K (engine/model/quant.h): each row of x is quantized per super-block of 256 to int8 with
 * one f32 scale dx = max |x| / 127 (q = round(x / dx)), and the sum of each 32 of its q kept
 * (bs_j). Per super-block k of a row (sc_j, mn_j its 6-bit sub-block scales and minimums, q_e
 * its 4-bit weights) two exact integers
 *   sumi = sum_j sc_j * sum_{e in sub-block j} q_e * xq_e,   summ = sum_j mn_j * bs_j
 * (|sumi| < 2^25, so int32 in any grouping), then, in super-block order,
 *   A = fmaf(f32(d_k) * dx_k, (float)sumi, A);  M = fmaf(f32(dmin_k) * dx_k, (float)summ, M)
 * from A = M = 0, and y = A - M: one float step per super-block, the same scalar operations on
 * every path whatever the tile.
 *
 * q6_K (engine/model/quant.h; the activations as for q4_K): per super-block k of a row (sc_j its
 * int8 sub-block scales, u_e its 6-bit values) the exact integer
 *   isum = sum_j sc_j * sum_{e in sub-block j} u_e * xq_e - 32 * sum_j sc_j * bs_j
 * (|isum| < 2^29), then, in super-block order, A = fmaf(f32(d_k) * dx_k, (float)isum, A) from
 * A = 0, and y = A. */
void xd_cpu_matmul_quant(const float *x, int n, const struct xd_matrix *w, float *y,
                         enum xd_quant_path path);

/* Activations quantized as xd_cpu_matmul_quant quantizes them for one weight format, held so
 * that several matrices and row ranges share one quantization (the MoE layer's gate and up, its
 * work items). The form of q8_0 / q4_1 (super 0), token t's block b: q + (t * nb + b) * 32 the
 * int8 values, d[t * nb + b] the scale, s[b * ld_s + t] = d * sum(q) (block-major, so four
 * tokens' are four contiguous floats). The form of q4_K (super 1), token t's super-block k:
 * q + (t * nb + 8k) * 32 the int8 values, d[k * ld_s + t] the scale (block-major as s),
 * bs[t * nb + 8k + j] the sum of the q of its j-th 32; s is unused. A view of tokens
 * [t0, t0 + n) (xd_cpu_qacts_view) shares the buffer and keeps ld_s. */
struct xd_cpu_qacts {
    int n;          /* tokens */
    int super;      /* 1: the q4_K form (one scale per 256; q6_K's too) */
    int64_t nb;     /* blocks of 32 per token: cols / 32 */
    int64_t ld_s;   /* stride of s (and of q4_K's d) between blocks: the buffer's token count */
    int8_t *q;      /* (n, nb * 32) round(x / d) */
    float *d;       /* (n, nb) max |x| / 127 of each block; q4_K: (nb / 8, ld_s) of each 256 */
    float *s;       /* (nb, ld_s) d * sum(q) of each block; q4_K: NULL */
    int16_t *bs;    /* q4_K: (n, nb) sum(q) of each 32; else NULL */
};

/* Bytes of a buffer for n tokens of cols values in the form for weights of format fmt (cols a
 * multiple of 32; of 256 for XD_DTYPE_Q4_K): 40 per block of 32 (q4_K: 34.5 per 32). */
size_t xd_cpu_qacts_bytes(enum xd_dtype fmt, int n, int64_t cols);

/* Lays out *ret over buf (xd_cpu_qacts_bytes(fmt, n, cols) bytes, float-aligned; the caller owns
 * it) in the form for weights of format fmt; quantizes nothing. */
void xd_cpu_qacts_init(void *buf, enum xd_dtype fmt, int n, int64_t cols,
                       struct xd_cpu_qacts *ret);

/* Quantizes tokens [t0, t1) of x (a->n, cols) into a; each token alone, so any split of the
 * tokens over threads gives the same bytes. */
void xd_cpu_qacts_quantize(const struct xd_cpu_qacts *a, const float *x, int t0, int t1);

/* Blocks [b0, b1) of token t quantized from x, that token's row (nb * 32 values): the same
 * bytes xd_cpu_qacts_quantize writes for them (a work item quantizes the columns it made). In
 * the q4_K form b0 and b1 are multiples of 8 (whole super-blocks). */
void xd_cpu_qacts_quantize_blocks(const struct xd_cpu_qacts *a, int t, const float *x,
                                  int64_t b0, int64_t b1);

/* Token t_src of src copied to token t_dst of dst (the same nb). */
void xd_cpu_qacts_copy_token(const struct xd_cpu_qacts *dst, int t_dst,
                             const struct xd_cpu_qacts *src, int t_src);

/* Tokens [t0, t0 + n) of a, sharing its buffer. */
struct xd_cpu_qacts xd_cpu_qacts_view(const struct xd_cpu_qacts *a, int t0, int n);

/* Rows [r0, r1) of y (a->n, w.rows) = x @ w^T for the activations a quantized from x (in the
 * form for w's format), on the calling thread alone (no OpenMP): the MoE layer's work items. Every element is the one
 * xd_cpu_matmul_quant gives, bit for bit, whatever the range and the tokens around it. */
void xd_cpu_matmul_quant_rows(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y,
                              int64_t r0, int64_t r1, enum xd_quant_path path);

/* The best path this CPU has, at most max. */
enum xd_quant_path xd_cpu_quant_best_path(enum xd_quant_path max);

#if defined(__x86_64__) && defined(__GNUC__)
/* F16C from cpuid (leaf 1, ecx bit 29), for both kernel layers' dispatch: clang 14 has no
 * "f16c" for __builtin_cpu_supports. */
bool xd_cpu_has_f16c(void);
#endif

#endif
