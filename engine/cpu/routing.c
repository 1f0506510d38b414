/* Sigmoid routing with e_score_correction_bias and group-limited top-k, as transformers
 * computes it for glm4_moe (and deepseek_v3's noaux_tc). */
#include "engine/cpu/routing.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#define MAX_EXPERTS 4096

/* The k best of v (n,) among those with allowed[i] (NULL: all), best first, ties to the
 * lower index. */
static void best_k(const float *v, const bool *allowed, int n, int k, int32_t *ret_idx)
{
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < n; e++) {
            if (allowed && !allowed[e])
                continue;
            int taken = 0;
            for (int i = 0; i < j && !taken; i++)
                taken = ret_idx[i] == e;
            if (!taken && (best < 0 || v[e] > v[best]))
                best = e;
        }
        ret_idx[j] = best;
    }
}

static float sigmoidf(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

void xd_cpu_route_grouped_sigmoid(const float *logits, const float *bias,
                                  const struct xd_route_grouped *p, int32_t *ret_idx,
                                  float *ret_w)
{
    const int E = p->n_experts, G = p->n_group, per = E / G;
    assert(E <= MAX_EXPERTS && E % G == 0 && per >= 2 && p->topk_group <= G &&
           p->top_k <= p->topk_group * per);
    float scores[MAX_EXPERTS], choice[MAX_EXPERTS];
    for (int e = 0; e < E; e++) {
        scores[e] = sigmoidf(logits[e]);
        choice[e] = scores[e] + (bias ? bias[e] : 0.0f);
    }
    /* group score: the sum of the group's two best choice scores */
    float group_score[MAX_EXPERTS / 2];
    for (int g = 0; g < G; g++) {
        int32_t two[2];
        best_k(choice + (size_t)g * per, NULL, per, 2, two);
        group_score[g] = choice[g * per + two[0]] + choice[g * per + two[1]];
    }
    bool allowed[MAX_EXPERTS];
    int32_t groups[MAX_EXPERTS / 2];
    best_k(group_score, NULL, G, p->topk_group, groups);
    memset(allowed, 0, sizeof(bool) * (size_t)E);
    for (int i = 0; i < p->topk_group; i++)
        for (int e = 0; e < per; e++)
            allowed[groups[i] * per + e] = true;
    best_k(choice, allowed, E, p->top_k, ret_idx);
    float sum = 0.0f;
    for (int j = 0; j < p->top_k; j++) {
        ret_w[j] = scores[ret_idx[j]];
        sum += ret_w[j];
    }
    if (p->norm_topk_prob) {
        const float denom = sum + 1e-20f;
        for (int j = 0; j < p->top_k; j++)
            ret_w[j] /= denom;
    }
    for (int j = 0; j < p->top_k; j++)
        ret_w[j] *= p->routed_scaling_factor;
}

void xd_cpu_rank_sigmoid(const float *logits, const float *bias, int n_experts, int width,
                         int32_t *ret_idx)
{
    assert(n_experts <= MAX_EXPERTS && width <= n_experts);
    float choice[MAX_EXPERTS];
    for (int e = 0; e < n_experts; e++)
        choice[e] = sigmoidf(logits[e]) + (bias ? bias[e] : 0.0f);
    best_k(choice, NULL, n_experts, width, ret_idx);
}
