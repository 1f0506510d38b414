/* Router top-k for every family: softmax (mixtral, qwen, olmoe, deepseek_v2 greedy), softmax
 * with groups (deepseek_v2 group_limited_greedy), sigmoid with a correction bias and groups
 * (deepseek_v3 noaux_tc), as transformers 5.23 computes them. */
#include "engine/cpu/moe_router.h"

#include <math.h>
#include <string.h>

#include "engine/cpu/cpu_kernels.h"

static float mat_at(const struct xd_matrix *m, int i)
{
    float v;
    xd_dtype_to_f32(m->dtype, (const char *)m->data + (size_t)i * xd_dtype_size(m->dtype), &v, 1);
    return v;
}

/* The k best of score (n,) that allowed (n,) permits, best first, ties to the lower index;
 * after the allowed ones run out, the others in index order. */
static void pick(const float *score, const unsigned char *allowed, int n, int k, int32_t *ret)
{
    unsigned char taken[n];
    memset(taken, 0, sizeof taken);
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < n; e++) {
            if (taken[e])
                continue;
            if (best < 0) {
                best = e;
                continue;
            }
            /* allowed beats not allowed; then the higher score; then the lower index */
            if (allowed[e] != allowed[best] ? allowed[e] > allowed[best] : score[e] > score[best])
                best = e;
        }
        taken[best] = 1;
        ret[j] = best;
    }
}

void xd_cpu_moe_route(const struct xd_model_config *c, float *logits, const struct xd_matrix *bias,
                      int k, int32_t *ret_idx, float *ret_w)
{
    const int E = c->n_experts;
    float choice[E];
    unsigned char allowed[E];
    memset(allowed, 1, sizeof allowed);

    if (c->router == XD_ROUTER_SIGMOID_BIAS) {
        for (int e = 0; e < E; e++) {
            logits[e] = 1.0f / (1.0f + expf(-logits[e]));
            choice[e] = logits[e] + (bias && bias->data ? mat_at(bias, e) : 0.0f);
        }
    } else {
        xd_cpu_softmax(logits, E);
        memcpy(choice, logits, sizeof choice);
    }

    if (c->n_group > 0 && (c->router == XD_ROUTER_SIGMOID_BIAS ||
                           c->router == XD_ROUTER_SOFTMAX_GROUP)) {
        /* a group's score: its best expert (v2) or the sum of its two best (v3) */
        const int G = c->n_group, per = E / G;
        float gscore[G];
        unsigned char gall[G];
        for (int g = 0; g < G; g++) {
            const float *s = choice + g * per;
            float a = -INFINITY, b = -INFINITY; /* best, second best */
            for (int i = 0; i < per; i++) {
                if (s[i] > a) {
                    b = a;
                    a = s[i];
                } else if (s[i] > b) {
                    b = s[i];
                }
            }
            gscore[g] = c->router == XD_ROUTER_SIGMOID_BIAS ? a + b : a;
            gall[g] = 1;
        }
        int32_t gbest[G];
        pick(gscore, gall, G, c->topk_group, gbest);
        memset(allowed, 0, sizeof allowed);
        for (int j = 0; j < c->topk_group; j++)
            memset(allowed + gbest[j] * per, 1, (size_t)per);
    }

    pick(choice, allowed, E, k, ret_idx);
    float sum = 0.0f;
    for (int j = 0; j < k; j++) {
        ret_w[j] = allowed[ret_idx[j]] ? logits[ret_idx[j]] : 0.0f;
        sum += ret_w[j];
    }
    if (c->norm_topk_prob) {
        if (c->router == XD_ROUTER_SIGMOID_BIAS)
            sum += 1e-20f;
        for (int j = 0; j < k; j++)
            ret_w[j] /= sum;
    }
    for (int j = 0; j < k; j++)
        ret_w[j] *= c->routed_scaling_factor;
}
