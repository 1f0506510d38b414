/* The MoE router's last step on the CPU: one token's router logits -> top-k experts and weights. */
#ifndef XD_CPU_MOE_ROUTER_H
#define XD_CPU_MOE_ROUTER_H

#include <stdint.h>

#include "engine/model/model_config.h"

/* Routes one token as transformers' router of c's family does. logits (n_experts,) are the
 * router's f32 outputs (overwritten: softmax routers leave their probabilities there); bias
 * (n_experts,) in f32 (NULL: none) is the e_score_correction_bias of a grouped sigmoid router
 * or of ernie's softmax one, or for XD_ROUTER_TOPK_SOFTMAX the router linear's bias, added to
 * the logits.
 * Writes c->top_k experts, best first (ties to the lower index), to ret_idx (top_k,) and their
 * weights to ret_w (top_k,):
 *   XD_ROUTER_SOFTMAX        softmax, top-k, renormalised when c->norm_topk_prob (mixtral, qwen,
 *                            olmoe; deepseek_v2 greedy), times c->routed_scaling_factor;
 *   XD_ROUTER_SOFTMAX_GROUP  deepseek_v2 group_limited_greedy: softmax; the topk_group groups
 *                            with the best single expert; top-k among their experts; weights the
 *                            probabilities times routed_scaling_factor (never renormalised);
 *   XD_ROUTER_SIGMOID_BIAS   deepseek_v3 noaux_tc and glm4_moe: engine/cpu/routing.c.
 *   XD_ROUTER_TOPK_SOFTMAX   gpt_oss, granitemoe: top-k of the (biased) logits, weights the
 *                            softmax over those k alone;
 *   XD_ROUTER_SOFTMAX_BIAS   ernie4_5_moe: softmax; top-k of probability + bias; weights the
 *                            probabilities over max(their sum, c->router_norm_min).
 * The result depends on this token's logits alone. */
void xd_cpu_moe_route(const struct xd_model_config *c, float *logits, const float *bias,
                      int32_t *ret_idx, float *ret_w);

/* The width experts the router ranks best for one token, best first, ignoring groups (the
 * lookahead's prediction, not the routing): by probability for the softmax routers, by
 * sigmoid + bias for the grouped sigmoid one, by the biased logits for gpt_oss's. logits (n_experts,) are overwritten; scratch holds
 * width floats. */
void xd_cpu_moe_rank(const struct xd_model_config *c, float *logits, const float *bias,
                     int width, int32_t *ret_idx, float *scratch);

#endif
