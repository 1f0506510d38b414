/* Router variants of the CPU backend beside the softmax top-k: sigmoid scores with a
 * score-correction bias and group-limited top-k (GLM-4.5's router, DeepSeek-V3's noaux_tc). */
#ifndef XD_CPU_ROUTING_H
#define XD_CPU_ROUTING_H

#include <stdbool.h>
#include <stdint.h>

/* The grouped-sigmoid router's settings, as config.json names them. */
struct xd_route_grouped {
    int n_experts;               /* n_routed_experts */
    int n_group;                 /* n_group: experts split in n_group groups of n_experts / n_group */
    int topk_group;              /* topk_group: groups kept */
    int top_k;                   /* num_experts_per_tok */
    bool norm_topk_prob;         /* renormalise the top-k weights (sum + 1e-20) */
    float routed_scaling_factor; /* multiplies every weight after the renormalisation */
};

/* One token's routing as transformers' Glm4MoeTopkRouter (and DeepseekV3TopkRouter) computes
 * it, in f32: scores = sigmoid(logits (n_experts,)); choice = scores + bias (n_experts,; NULL
 * for zeros); each group's score is the sum of its two best choice scores; the topk_group best
 * groups are kept; the top_k best choice scores among their experts are the experts; their
 * weights are the uncorrected scores, renormalised when norm_topk_prob, times
 * routed_scaling_factor. ret_idx (top_k,) and ret_w (top_k,) come best choice score first,
 * ties to the lower index (transformers' topk is unsorted; the order changes no sum beyond
 * rounding). Preconditions (checked by the config parser): n_experts % n_group == 0, groups
 * of at least 2, topk_group <= n_group, top_k <= topk_group * group size, n_experts <= 4096. */
void xd_cpu_route_grouped_sigmoid(const float *logits, const float *bias,
                                  const struct xd_route_grouped *p, int32_t *ret_idx,
                                  float *ret_w);

/* The width best experts by choice score (sigmoid(logits) + bias) over all groups, best first:
 * the lookahead ranking for a grouped-sigmoid router (a prediction, not the routing). */
void xd_cpu_rank_sigmoid(const float *logits, const float *bias, int n_experts, int width,
                         int32_t *ret_idx);

#endif
