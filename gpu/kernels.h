/* CUDA kernels of the GPU backend: bf16 activations where a GEMM reads them, f32 elsewhere
 * (residual stream, accumulation, softmax). Each launcher enqueues on `stream`; errors surface at
 * the backend's next checked call. */
#ifndef XD_GPU_KERNELS_H
#define XD_GPU_KERNELS_H

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

/* Attention keeps head_dim / 32 values per lane in registers: head_dim <= 32 * this. */
#define ATT_MAX_HEAD_DIM_LANES 8

/* h (T, H) = embed (V, H)[tokens[t]] */
void xd_k_embed(const bf16 *embed, const int32_t *tokens, float *h, int T, int H,
                cudaStream_t stream);

/* Row-wise RMSNorm of x (rows, d) with weight w (d,), transformers' formula; into bf16 or f32.
 * y may equal x for the f32 form. */
void xd_k_rmsnorm_bf16(const float *x, const float *w, bf16 *y, int rows, int d, float eps,
                       cudaStream_t stream);
void xd_k_rmsnorm_f32(const float *x, const float *w, float *y, int rows, int d, float eps,
                      cudaStream_t stream);

/* y (rows, d) += bias (d,) */
void xd_k_add_bias(float *y, const float *bias, int rows, int d, cudaStream_t stream);

/* x = clamp(x, -c, c) over n elements */
void xd_k_clip(float *x, float c, size_t n, cudaStream_t stream);
/* Keeps stream busy for at least us microseconds of wall time (tests widen race windows with
 * it). */
void xd_k_spin(unsigned us, cudaStream_t stream);

/* Rotary embedding (rotate-half) in place on x (T, n_heads, head_dim) at positions pos (T,). */
void xd_k_rope(float *x, const int32_t *pos, int T, int n_heads, int head_dim, float theta,
               cudaStream_t stream);

/* Rotary embedding from a table (engine/model/rope.h), for every rope but the plain one: in
 * place on x (T, n_heads, head_dim), the first 2 * half dims of each head in pairs (i, i +
 * half), angle pos[t] * inv_freq[i] with inv_freq (half,) on the device, cos and sin times att;
 * the other dims pass through. dyn_max_pos > 0 is dynamic NTK: a token with pos + 1 >
 * dyn_max_pos uses the frequencies xd_rope_inv_freq gives it (theta, factor), computed here
 * in the same f32 steps. Never run on a GPU yet: cuda_create refuses such models unless
 * EXPERTD_GPU_UNVERIFIED=1. */
void xd_k_rope_table(float *x, const int32_t *pos, int T, int n_heads, int head_dim, int half,
                     const float *inv_freq, float att, float theta, float factor,
                     int dyn_max_pos, cudaStream_t stream);

/* Stores k and v (T, kv_dim) f32 into the bf16 caches (n_slots, kv_dim) of one layer at
 * slot[t] = block * block_size + offset. */
void xd_k_kv_store(const float *k, const float *v, const int32_t *slot, bf16 *k_cache,
                   bf16 *v_cache, int T, int kv_dim, cudaStream_t stream);

/* Paged attention for prefill and decode: query t (position pos[t]) attends to positions
 * [max(0, pos - window + 1), pos] of its sequence, found through tables[table_off[t] + j / bs].
 * q (T, n_heads * hd) f32, caches of one layer (n_slots, n_kv * hd) bf16, out (T, n_heads * hd)
 * bf16. window 0: none. */
void xd_k_attention(const float *q, const bf16 *k_cache, const bf16 *v_cache,
                    const int32_t *pos, const int32_t *table_off, const int32_t *tables,
                    bf16 *out, int T, int n_heads, int n_kv, int hd, int block_size, int window,
                    cudaStream_t stream);

/* Router: softmax over logits (T, E) in f32, top-k best first (ties to the lower index),
 * optional renormalisation; experts (T, K), weights (T, K). */
void xd_k_route(const float *logits, int32_t *experts, float *weights, int T, int E, int K,
                int renormalise, cudaStream_t stream);

/* xg (R, H) = x (T, H)[src[r]] */
void xd_k_gather_rows(const bf16 *x, const int32_t *src, bf16 *xg, int R, int H,
                      cudaStream_t stream);

/* y = silu(g) * u over n elements, into bf16 */
void xd_k_silu_mul(const float *g, const float *u, bf16 *y, size_t n, cudaStream_t stream);

/* h (T, H) += sum over k of weights[t, k] * eo[row[t * K + k]] (in k order) */
void xd_k_moe_combine(float *h, const float *eo, const int32_t *row, const float *weights,
                      int T, int K, int H, cudaStream_t stream);

/* h (T, H) += sigmoid(gate_logit[t]) * y (T, H) */
void xd_k_add_gated(float *h, const float *y, const float *gate_logit, int T, int H,
                    cudaStream_t stream);

/* h (n,) += y (n,) */
void xd_k_add(float *h, const float *y, size_t n, cudaStream_t stream);

/* out (R, H) = x (T, H)[rows[r]] */
void xd_k_gather_rows_f32(const float *x, const int32_t *rows, float *out, int R, int H,
                          cudaStream_t stream);


/* MoE plan on the device for a step of n_slots = T * K <= 4096 (token, slot) pairs: start (E + 1)
 * row offsets per expert, row_src (n_slots,) token of each expert-sorted row, slot_row (n_slots,)
 * row of each pair; same order as the host plan. */
void xd_k_moe_plan(const int32_t *experts, int n_slots, int E, int K, int32_t *start,
                   int32_t *row_src, int32_t *slot_row, cudaStream_t stream);

/* All experts of one layer over their rows, for small steps (memory-bound): slots (E,) device
 * pointers to [gate (F, H) | up (F, H) | down (H, F)] bf16; xg (R, H) expert-sorted inputs;
 * a (R, F) bf16 scratch; eo (R, H) f32 outputs. H and F must be multiples of 8. */
void xd_k_experts_small(const bf16 *const *slots, const int32_t *start, const bf16 *xg, bf16 *a,
                        float *eo, int E, int H, int F, cudaStream_t stream);

#endif
