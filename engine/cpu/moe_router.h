/* The MoE router's last step on the CPU: one token's router logits -> top-k experts and weights. */
#ifndef XD_CPU_MOE_ROUTER_H
#define XD_CPU_MOE_ROUTER_H

#include <stdint.h>

#include "engine/model/expert_store.h"
#include "engine/model/model_config.h"

/* Routes one token as transformers' router of c's family does: logits (n_experts,) are the
 * router's f32 outputs, overwritten with the scores (softmax or sigmoid); bias (1, n_experts)
 * is deepseek_v3's e_score_correction_bias (a NULL matrix elsewhere). Writes the k experts
 * chosen, best first (by the choice score, ties to the lower index), to ret_idx (k,) and their
 * weights to ret_w (k,): the scores, renormalised when c->norm_topk_prob (deepseek_v3 adds
 * 1e-20 to the sum as transformers does), times c->routed_scaling_factor. With groups
 * (n_group > 0) only experts of the topk_group best groups can be chosen; k may exceed that
 * (the lookahead's wider ranking): the rest follow in index order with weight 0. The result
 * depends on this token's logits alone. */
void xd_cpu_moe_route(const struct xd_model_config *c, float *logits, const struct xd_matrix *bias,
                      int k, int32_t *ret_idx, float *ret_w);

#endif
