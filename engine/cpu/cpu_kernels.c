/* CPU kernels: matmul over f32/bf16/f16 weights with OpenMP, norms, rotary, activations. */
#include "engine/cpu/cpu_kernels.h"

#include <math.h>

#include "engine/model/dtype.h"

/* Sixteen independent partial sums so the compiler vectorises the loop
 * without reassociating (no -ffast-math); the order is fixed, so results are
 * reproducible run to run. */
#define LANES 16

static inline __attribute__((always_inline)) float dot_f32(const float *a, const float *b, int n)
{
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            acc[j] += a[i + j] * b[i + j];
    float tail = 0.0f;
    for (; i < n; i++)
        tail += a[i] * b[i];
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++)
            acc[j] += acc[j + w];
    return acc[0] + tail;
}

static inline __attribute__((always_inline)) float dot_bf16(const float *a, const uint16_t *b,
                                                           int n)
{
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            acc[j] += a[i + j] * xd_bf16_to_f32(b[i + j]);
    float tail = 0.0f;
    for (; i < n; i++)
        tail += a[i] * xd_bf16_to_f32(b[i]);
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++)
            acc[j] += acc[j + w];
    return acc[0] + tail;
}

/* Four dot products against one vector b, each in exactly dot_f32's order (the same lanes, tail
 * and reduction), so a token's result does not depend on how many tokens share the step; b is
 * loaded once for the four, which is what makes prefill faster than four single dots. */
static inline __attribute__((always_inline)) void dot4_f32(const float *a, int64_t stride,
                                                          const float *b, int n, float *ret)
{
    const float *a0 = a, *a1 = a + stride, *a2 = a + 2 * stride, *a3 = a + 3 * stride;
    float acc0[LANES] = {0}, acc1[LANES] = {0}, acc2[LANES] = {0}, acc3[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            const float bj = b[i + j];
            acc0[j] += a0[i + j] * bj;
            acc1[j] += a1[i + j] * bj;
            acc2[j] += a2[i + j] * bj;
            acc3[j] += a3[i + j] * bj;
        }
    float t0 = 0.0f, t1 = 0.0f, t2 = 0.0f, t3 = 0.0f;
    for (; i < n; i++) {
        t0 += a0[i] * b[i];
        t1 += a1[i] * b[i];
        t2 += a2[i] * b[i];
        t3 += a3[i] * b[i];
    }
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++) {
            acc0[j] += acc0[j + w];
            acc1[j] += acc1[j + w];
            acc2[j] += acc2[j + w];
            acc3[j] += acc3[j + w];
        }
    ret[0] = acc0[0] + t0;
    ret[1] = acc1[0] + t1;
    ret[2] = acc2[0] + t2;
    ret[3] = acc3[0] + t3;
}

float xd_cpu_dot(const float *a, const float *b, int n)
{
    return dot_f32(a, b, n);
}

/* Rows of output computed per task: enough work to amortise scheduling. */
#define ROW_TILE 16

/* Compiled twice, for x86-64-v3 (AVX2, FMA) and for the baseline, and picked at load time
 * for the CPU it runs on; the inlined dot products vectorise for each. (Not under
 * ThreadSanitizer: its instrumented ifunc resolver runs before the runtime exists and crashes.) */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
void xd_cpu_matmul(const float *x, int n, const struct xd_matrix *w, float *y)
{
    const int64_t rows = w->rows, cols = w->cols;
    const int64_t n_tiles = (rows + ROW_TILE - 1) / ROW_TILE;

#pragma omp parallel for schedule(static) if (rows * cols * (int64_t)n > 32768)
    for (int64_t tile = 0; tile < n_tiles; tile++) {
        /* 16-bit weights are widened once per row when several tokens share it */
        float wrow[w->dtype == XD_DTYPE_F32 ? 1 : cols];
        int64_t r_end = tile * ROW_TILE + ROW_TILE < rows ? tile * ROW_TILE + ROW_TILE : rows;
        for (int64_t r = tile * ROW_TILE; r < r_end; r++) {
            const float *wr = wrow;
            if (w->dtype == XD_DTYPE_F32) {
                wr = (const float *)w->data + r * cols;
            } else if (w->dtype == XD_DTYPE_BF16 && n == 1) {
                y[r] = dot_bf16(x, (const uint16_t *)w->data + r * cols, (int)cols);
                continue;
            } else {
                xd_dtype_to_f32(w->dtype, (const uint16_t *)w->data + r * cols, wrow,
                                (size_t)cols);
            }
            int t = 0;
            for (; t + 4 <= n; t += 4) {
                float out[4];
                dot4_f32(x + (int64_t)t * cols, cols, wr, (int)cols, out);
                for (int k = 0; k < 4; k++)
                    y[(int64_t)(t + k) * rows + r] = out[k];
            }
            for (; t < n; t++)
                y[(int64_t)t * rows + r] = dot_f32(x + (int64_t)t * cols, wr, (int)cols);
        }
    }
}

static float mat_get(const struct xd_matrix *m, int64_t i)
{
    switch (m->dtype) {
    case XD_DTYPE_F32: return ((const float *)m->data)[i];
    case XD_DTYPE_BF16: return xd_bf16_to_f32(((const uint16_t *)m->data)[i]);
    case XD_DTYPE_F16: return xd_f16_to_f32(((const uint16_t *)m->data)[i]);
    }
    return 0.0f;
}

void xd_cpu_add_bias(float *y, int n, const struct xd_matrix *bias)
{
    if (!bias->data)
        return;
    const int64_t d = bias->cols;
    for (int t = 0; t < n; t++)
        for (int64_t i = 0; i < d; i++)
            y[t * d + i] += mat_get(bias, i);
}

void xd_cpu_rmsnorm(const float *x, int n, const struct xd_matrix *w, float eps, float *y)
{
    const int64_t d = w->cols;
    for (int t = 0; t < n; t++) {
        const float *xr = x + t * d;
        float *yr = y + t * d;
        float ss = xd_cpu_dot(xr, xr, (int)d);
        float inv = 1.0f / sqrtf(ss / (float)d + eps);
        for (int64_t i = 0; i < d; i++)
            yr[i] = mat_get(w, i) * (xr[i] * inv);
    }
}

void xd_cpu_rope(float *x, int n_heads, int head_dim, int pos, float theta)
{
    const int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        /* as transformers: inv_freq = 1 / theta^(2i / d) in f32, angle = pos * inv_freq */
        float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
        float angle = (float)pos * inv_freq;
        float c = cosf(angle), s = sinf(angle);
        for (int h = 0; h < n_heads; h++) {
            float *v = x + h * head_dim;
            float a = v[i], b = v[i + half];
            v[i] = a * c - b * s;
            v[i + half] = b * c + a * s;
        }
    }
}

void xd_cpu_silu_mul(const float *gate, const float *up, float *y, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        y[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void xd_cpu_softmax(float *x, int n)
{
    float mx = x[0];
    for (int i = 1; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    for (int i = 0; i < n; i++)
        x[i] /= sum;
}
