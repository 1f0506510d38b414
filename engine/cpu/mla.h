/* Multi-head latent attention (deepseek_v2/v3) on the CPU, over a paged cache of the latent. */
#ifndef XD_CPU_MLA_H
#define XD_CPU_MLA_H

#include <stdint.h>

#include "engine/base/status.h"
#include "engine/model/model.h"
#include "engine/model/step.h"

/* The cache holds per token and layer one row of lat = kv_lora_rank + qk_rope_head_dim floats:
 * the kv_a_layernorm'ed latent c, then the rotated shared key k_pe (what transformers' cache
 * holds for deepseek). Attention runs in the absorbed form for every token, prefill and decode
 * alike, so chunking never changes results: per head h, q_abs = W_kb[h]^T q_nope (the key
 * up-projection folded into the query), score_j = (q_abs . c_j + q_pe . k_pe_j) * scale, the
 * softmax-weighted sum of the latents c_j, then the value up-projection W_vb[h]. */
struct xd_cpu_mla;

/* Allocates the latent cache (n_layers, n_kv_blocks, block_size, lat), the step buffers for
 * max_tokens tokens and the transposed key up-projections (per layer and head W_kb[h]^T,
 * (kv_lora_rank, qk_nope_head_dim), in the checkpoint's dtype, values unchanged). model is
 * borrowed and must be an MLA model (config.mla). On failure returns XD_ERR_NOMEM naming
 * what did not fit and leaves *ret untouched. */
int xd_cpu_mla_create(const struct xd_model *model, int n_kv_blocks, int block_size,
                      int max_tokens, struct xd_cpu_mla **ret, struct xd_err *err);
void xd_cpu_mla_destroy(struct xd_cpu_mla *mla);

/* The attention of layer over the step's n tokens: xn (n, hidden) is the attention input
 * (after input_layernorm), tok_seq (n,) / tok_pos (n,) each token's sequence in b and
 * position. Writes each token's cache row through its sequence's block table, then attends
 * every token to its sequence's positions up to its own; out (n, hidden) gets o_proj's output. */
void xd_cpu_mla_forward(struct xd_cpu_mla *mla, const struct xd_batch *b, const int32_t *tok_seq,
                        const int32_t *tok_pos, int layer, const float *xn, int n, float *out);

/* The same, in transformers' uncompressed form: every cached latent expanded by kv_b_proj into
 * per-head keys [k_nope; k_pe] and values, then plain attention. Slow (it re-expands the whole
 * context for every query); for tests that check the absorbed form against it. */
void xd_cpu_mla_forward_expanded(struct xd_cpu_mla *mla, const struct xd_batch *b,
                                 const int32_t *tok_seq, const int32_t *tok_pos, int layer,
                                 const float *xn, int n, float *out);

#endif
