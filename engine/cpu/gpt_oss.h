/* gpt_oss's piece of the CPU forward that no other family has: its experts' clamped SwiGLU
 * (its router, top-k of the biased logits then softmax over the k, is XD_ROUTER_TOPK_SOFTMAX
 * of engine/cpu/moe_router.c). */
#ifndef XD_CPU_GPT_OSS_H
#define XD_CPU_GPT_OSS_H

#include <stddef.h>

/* GptOssExperts._apply_gate, elementwise over n values: gate' = min(gate, limit),
 * up' = clamp(up, -limit, limit), y = (up' + 1) * gate' * sigmoid(alpha * gate').
 * y may alias gate. gate (n,), up (n,), y (n,). */
void xd_cpu_clamped_swiglu(const float *gate, const float *up, float *y, size_t n, float limit,
                           float alpha);

#endif
