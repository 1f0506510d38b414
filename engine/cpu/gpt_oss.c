/* gpt_oss's clamped SwiGLU for the CPU backend, in f32 as transformers computes them. */
#include "engine/cpu/gpt_oss.h"

#include <math.h>

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
