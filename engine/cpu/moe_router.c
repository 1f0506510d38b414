/* Router top-k for every family: softmax (mixtral, qwen, olmoe, deepseek_v2 greedy), softmax
 * with groups (deepseek_v2 group_limited_greedy), softmax chosen with a correction bias
 * (ernie4_5_moe), the grouped sigmoid router with a correction bias (deepseek_v3 noaux_tc,
 * glm4_moe, dots1: routing.c), and gpt_oss's (and granitemoe's) top-k of the (biased) logits
 * then softmax over the k, as transformers 5.23 computes them. */
#include "engine/cpu/moe_router.h"

#include <math.h>
#include <string.h>

#include "engine/cpu/cpu_kernels.h"
#include "engine/cpu/routing.h"

/* The k best of score (n,) that allowed (n,; NULL: all) permits, best first, ties to the lower
 * index. */
static void pick(const float *score, const unsigned char *allowed, int n, int k, int32_t *ret)
{
    unsigned char taken[n];
    memset(taken, 0, sizeof taken);
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < n; e++)
            if (!taken[e] && (!allowed || allowed[e]) && (best < 0 || score[e] > score[best]))
                best = e;
        taken[best] = 1;
        ret[j] = best;
    }
}

/* gpt_oss (GptOssTopKRouter): logits += bias (the router linear's), the top-k of them, best
 * first, ties to the lower index; weights the softmax of those k logits alone
 * (exp(l - l_best) / sum). */
static void route_topk_softmax(float *logits, const float *bias, int n, int k, int32_t *ret_idx,
                               float *ret_w)
{
    if (bias)
        for (int e = 0; e < n; e++)
            logits[e] += bias[e];
    pick(logits, NULL, n, k, ret_idx);
    const float mx = logits[ret_idx[0]];
    float sum = 0.0f;
    for (int j = 0; j < k; j++) {
        ret_w[j] = expf(logits[ret_idx[j]] - mx);
        sum += ret_w[j];
    }
    for (int j = 0; j < k; j++)
        ret_w[j] /= sum;
}

void xd_cpu_moe_route(const struct xd_model_config *c, float *logits, const float *bias,
                      int32_t *ret_idx, float *ret_w)
{
    const int E = c->n_experts, K = c->top_k;
    if (c->router == XD_ROUTER_TOPK_SOFTMAX) {
        route_topk_softmax(logits, bias, E, K, ret_idx, ret_w);
        return;
    }
    if (c->router == XD_ROUTER_SOFTMAX_BIAS) {
        /* ernie4_5_moe: the experts by probability + bias, weighted by their probabilities
         * over max(sum, moe_norm_min) */
        xd_cpu_softmax(logits, E);
        float choice[E];
        for (int e = 0; e < E; e++)
            choice[e] = bias ? logits[e] + bias[e] : logits[e];
        pick(choice, NULL, E, K, ret_idx);
        float sum = 0.0f;
        for (int j = 0; j < K; j++) {
            ret_w[j] = logits[ret_idx[j]];
            sum += ret_w[j];
        }
        sum = fmaxf(sum, c->router_norm_min);
        for (int j = 0; j < K; j++)
            ret_w[j] /= sum;
        return;
    }
    if (c->router == XD_ROUTER_SIGMOID_BIAS) {
        const struct xd_route_grouped rp = {
            .n_experts = E,
            .n_group = c->n_group,
            .topk_group = c->topk_group,
            .top_k = K,
            .norm_topk_prob = c->norm_topk_prob,
            .routed_scaling_factor = c->routed_scaling_factor,
        };
        xd_cpu_route_grouped_sigmoid(logits, bias, &rp, ret_idx, ret_w);
        return;
    }
    xd_cpu_softmax(logits, E);
    unsigned char allowed[E];
    const unsigned char *mask = NULL;
    if (c->router == XD_ROUTER_SOFTMAX_GROUP) {
        /* a group's score is its best expert's probability */
        const int G = c->n_group, per = E / G;
        float gscore[G];
        for (int g = 0; g < G; g++) {
            gscore[g] = logits[g * per];
            for (int i = 1; i < per; i++)
                gscore[g] = fmaxf(gscore[g], logits[g * per + i]);
        }
        int32_t gbest[G];
        pick(gscore, NULL, G, c->topk_group, gbest);
        memset(allowed, 0, sizeof allowed);
        for (int j = 0; j < c->topk_group; j++)
            memset(allowed + gbest[j] * per, 1, (size_t)per);
        mask = allowed;
    }
    pick(logits, mask, E, K, ret_idx);
    float sum = 0.0f;
    for (int j = 0; j < K; j++) {
        ret_w[j] = logits[ret_idx[j]];
        sum += ret_w[j];
    }
    if (c->norm_topk_prob)
        for (int j = 0; j < K; j++)
            ret_w[j] /= sum;
    if (c->routed_scaling_factor != 1.0f)
        for (int j = 0; j < K; j++)
            ret_w[j] *= c->routed_scaling_factor;
}

void xd_cpu_moe_rank(const struct xd_model_config *c, float *logits, const float *bias,
                     int width, int32_t *ret_idx, float *scratch)
{
    (void)scratch;
    if (c->router == XD_ROUTER_SIGMOID_BIAS) {
        xd_cpu_rank_sigmoid(logits, bias, c->n_experts, width, ret_idx);
        return;
    }
    if (c->router == XD_ROUTER_TOPK_SOFTMAX) {
        /* the biased logits rank as their softmax does */
        if (bias)
            for (int e = 0; e < c->n_experts; e++)
                logits[e] += bias[e];
        pick(logits, NULL, c->n_experts, width, ret_idx);
        return;
    }
    xd_cpu_softmax(logits, c->n_experts);
    if (c->router == XD_ROUTER_SOFTMAX_BIAS && bias) /* ernie4_5_moe: as it chooses */
        for (int e = 0; e < c->n_experts; e++)
            logits[e] += bias[e];
    pick(logits, NULL, c->n_experts, width, ret_idx);
}
