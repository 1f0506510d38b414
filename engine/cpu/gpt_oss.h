/* gpt_oss's pieces of the CPU forward that no other family has: its router (top-k of the
 * biased logits, softmax over the k chosen) and its experts' clamped SwiGLU. */
#ifndef XD_CPU_GPT_OSS_H
#define XD_CPU_GPT_OSS_H

#include <stddef.h>
#include <stdint.h>

/* One token's routing as transformers' GptOssTopKRouter computes it, in f32: the top_k
 * largest of logits (n_experts,; the router bias already added), best first, ties to the
 * lower index, into ret_idx (top_k,); their weights ret_w (top_k,) are the softmax of those
 * k logits alone (exp(l - l_best) / sum). Precondition: 1 <= top_k <= n_experts. */
void xd_cpu_route_topk_softmax(const float *logits, int n_experts, int top_k, int32_t *ret_idx,
                               float *ret_w);

/* GptOssExperts._apply_gate, elementwise over n values: gate' = min(gate, limit),
 * up' = clamp(up, -limit, limit), y = (up' + 1) * gate' * sigmoid(alpha * gate').
 * y may alias gate. gate (n,), up (n,), y (n,). */
void xd_cpu_clamped_swiglu(const float *gate, const float *up, float *y, size_t n, float limit,
                           float alpha);

#endif
