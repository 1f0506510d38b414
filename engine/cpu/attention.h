/* Blocked attention over the CPU backend's paged f32 KV cache: query tiles against key blocks
 * with an online softmax, each query's arithmetic independent of its tile. */
#ifndef XD_CPU_ATTENTION_H
#define XD_CPU_ATTENTION_H

#include <stdint.h>

#include "engine/cpu/cpu_kernels.h"
#include "engine/model/step.h"

/* Keys per softmax block: block kb holds positions kb * 16 .. kb * 16 + 15 of its sequence,
 * whatever the KV cache's block size and whatever tile the query is in. */
#define XD_CPU_ATTN_KEY_BLOCK 16

/* One layer's attention problem. The caches are that layer's, n_kv_blocks blocks of
 * n_kv_heads heads each. Values (n_kv_blocks, n_kv_heads, block_size, head_dim): head h of
 * position j of a sequence at element
 * ((block_table[j / block_size] * n_kv_heads + h) * block_size + j % block_size) * head_dim.
 * Keys transposed within each (block, head): (n_kv_blocks, n_kv_heads, head_dim, block_size),
 * dimension d of that key at ((block_table[j / block_size] * n_kv_heads + h) * head_dim + d) *
 * block_size + j % block_size, so a block of 16 positions of one head is already the (head_dim,
 * 16) tile the scores read (no transpose per block and step), and one head's keys and values of
 * a cache block are each one run of memory. Elements of kv_dtype (f32, the zero
 * default, or bf16 / f16, widened exactly to f32 as they are read: the result is the f32
 * attention's over the stored values). */
struct xd_cpu_attn {
    const void *k_cache, *v_cache;
    enum xd_dtype kv_dtype;
    int block_size;
    int n_heads, n_kv_heads, head_dim;
    float scale;         /* on every score: 1 / sqrt(head_dim) */
    int window;          /* a query at p sees p - window + 1 .. p; 0: every position up to p */
    const float *sinks;  /* (n_heads,) gpt_oss's sink logits, or NULL */
};

/* out (n, n_heads * head_dim) = softmax(q k^T * scale) v for the n tokens of b (sequence after
 * sequence, each chunk's tokens at positions pos, pos + 1, ...), q (n, n_heads * head_dim)
 * rotated; the chunk's own keys and values must already be in the caches. items
 * (b->n_seqs + 1,) is scratch. Parallel (OpenMP) over (sequence, kv head, tile of query tokens).
 *
 * Each query row's result is one fixed sequence of operations, the same in any tile, batch or
 * chunking, and on every vector path (all use fused multiply-adds): per key block (above) that
 * holds at least one of its keys, the scores s_j = fma chain over d = 0 .. head_dim - 1 of
 * q[d] k_j[d] from 0, times scale; the block's maximum over its keys m_b; if m_b > m, the
 * running sum l (16 lanes, lane = j % 16) and the accumulator are multiplied by exp(m - m_b)
 * and m = m_b; then p_j = exp(s_j - m), l[j % 16] += p_j, acc = fma(p_j, v_j, acc) for its keys
 * in ascending j; at the end l is summed as the tree 8, 4, 2, 1 and out = acc / l. m starts at
 * -inf and l at 0, or with a sink at its logit and l[0] = 1. exp is xd_cpu_attn_exp. */
void xd_cpu_attention(const struct xd_cpu_attn *a, const struct xd_batch *b, const float *q,
                      float *out, int32_t *items);

/* The same on a given vector path (tests compare them); a path this CPU lacks falls back to the
 * next lesser one it has. */
void xd_cpu_attention_on(const struct xd_cpu_attn *a, const struct xd_batch *b, const float *q,
                         float *out, int32_t *items, enum xd_cpu_vec path);

/* The attention this file replaced, for comparison (EXPERTD_CPU_ATTENTION=reference, benchmarks):
 * one (token, head) at a time, every key of the sequence streamed for each query, libm's expf and
 * one rescale per new maximum; the same arguments and result up to rounding. */
void xd_cpu_attention_reference(const struct xd_cpu_attn *a, const struct xd_batch *b,
                                const float *q, float *out);

/* The exponential of the softmax: a degree-6 polynomial on x - n ln 2 (Cephes' expf
 * coefficients, fused multiply-adds), relative error under 3e-7; 0 below -87. Exposed for the
 * tests; every vector path computes the same bits. */
float xd_cpu_attn_exp(float x);

#endif
