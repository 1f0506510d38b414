/* gpt_oss's router and clamped SwiGLU for the CPU backend, in f32 as transformers computes them. */
#include "engine/cpu/gpt_oss.h"

#include <assert.h>
#include <math.h>

void xd_cpu_route_topk_softmax(const float *logits, int n_experts, int top_k, int32_t *ret_idx,
                               float *ret_w)
{
    assert(top_k >= 1 && top_k <= n_experts);
    for (int j = 0; j < top_k; j++) {
        int best = -1;
        for (int e = 0; e < n_experts; e++) {
            int taken = 0;
            for (int i = 0; i < j && !taken; i++)
                taken = ret_idx[i] == e;
            if (!taken && (best < 0 || logits[e] > logits[best]))
                best = e;
        }
        ret_idx[j] = best;
    }
    /* torch.softmax over the k values: subtract the largest (the first), exp, normalise */
    const float mx = logits[ret_idx[0]];
    float sum = 0.0f;
    for (int j = 0; j < top_k; j++) {
        ret_w[j] = expf(logits[ret_idx[j]] - mx);
        sum += ret_w[j];
    }
    for (int j = 0; j < top_k; j++)
        ret_w[j] /= sum;
}

void xd_cpu_clamped_swiglu(const float *gate, const float *up, float *y, size_t n, float limit,
                           float alpha)
{
    for (size_t i = 0; i < n; i++) {
        float g = fminf(gate[i], limit);
        float u = fminf(fmaxf(up[i], -limit), limit);
        float glu = g / (1.0f + expf(-alpha * g));
        y[i] = (u + 1.0f) * glu;
    }
}
