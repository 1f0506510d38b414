/* CUDA kernels of the GPU backend (see kernels.h for each contract). */
#include "gpu/kernels.h"

#include <math.h>

#define THREADS 256

static inline unsigned blocks_for(size_t n, unsigned threads)
{
    return (unsigned)((n + threads - 1) / threads);
}

__global__ void k_embed(const bf16 *embed, const int32_t *tokens, float *h, int H)
{
    const int t = blockIdx.x;
    const bf16 *row = embed + (size_t)tokens[t] * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x)
        h[(size_t)t * H + i] = __bfloat162float(row[i]);
}

void xd_k_embed(const bf16 *embed, const int32_t *tokens, float *h, int T, int H,
                cudaStream_t stream)
{
    if (T > 0)
        k_embed<<<T, THREADS, 0, stream>>>(embed, tokens, h, H);
}

/* Sum over the block; every thread gets the result. blockDim.x is a multiple of 32. */
__device__ float block_sum(float v)
{
    __shared__ float partial[32];
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0)
        partial[warp] = v;
    __syncthreads();
    float total = 0.0f;
    const int n_warps = (blockDim.x + 31) >> 5;
    for (int w = 0; w < n_warps; w++)
        total += partial[w];
    return total;
}

template <typename OUT> __device__ OUT from_f32(float x);
template <> __device__ float from_f32<float>(float x) { return x; }
template <> __device__ bf16 from_f32<bf16>(float x) { return __float2bfloat16(x); }

template <typename OUT>
__global__ void k_rmsnorm(const float *x, const float *w, OUT *y, int d, float eps)
{
    const size_t r = blockIdx.x;
    const float *xr = x + r * d;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        ss += xr[i] * xr[i];
    const float inv = rsqrtf(block_sum(ss) / (float)d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        y[r * d + i] = from_f32<OUT>(w[i] * (xr[i] * inv));
}

void xd_k_rmsnorm_bf16(const float *x, const float *w, bf16 *y, int rows, int d, float eps,
                       cudaStream_t stream)
{
    if (rows > 0)
        k_rmsnorm<bf16><<<rows, d >= 256 ? 256 : 64, 0, stream>>>(x, w, y, d, eps);
}

void xd_k_rmsnorm_f32(const float *x, const float *w, float *y, int rows, int d, float eps,
                      cudaStream_t stream)
{
    if (rows > 0)
        k_rmsnorm<float><<<rows, d >= 256 ? 256 : 64, 0, stream>>>(x, w, y, d, eps);
}

__global__ void k_add_bias(float *y, const float *bias, size_t n, int d)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] += bias[i % d];
}

void xd_k_add_bias(float *y, const float *bias, int rows, int d, cudaStream_t stream)
{
    size_t n = (size_t)rows * d;
    if (n)
        k_add_bias<<<blocks_for(n, THREADS), THREADS, 0, stream>>>(y, bias, n, d);
}

__global__ void k_clip(float *x, float c, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] = fminf(fmaxf(x[i], -c), c);
}

void xd_k_clip(float *x, float c, size_t n, cudaStream_t stream)
{
    if (n)
        k_clip<<<blocks_for(n, THREADS), THREADS, 0, stream>>>(x, c, n);
}

__global__ void k_rope(float *x, const int32_t *pos, int n_heads, int head_dim, float theta)
{
    const int t = blockIdx.x, half = head_dim / 2;
    for (int idx = threadIdx.x; idx < n_heads * half; idx += blockDim.x) {
        const int h = idx / half, i = idx % half;
        /* as transformers: inv_freq = 1 / theta^(2i / d) in f32, angle = pos * inv_freq */
        const float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
        const float angle = (float)pos[t] * inv_freq;
        float s, c;
        sincosf(angle, &s, &c);
        float *v = x + ((size_t)t * n_heads + h) * head_dim;
        const float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
    }
}

void xd_k_rope(float *x, const int32_t *pos, int T, int n_heads, int head_dim, float theta,
               cudaStream_t stream)
{
    if (T > 0)
        k_rope<<<T, 128, 0, stream>>>(x, pos, n_heads, head_dim, theta);
}

__global__ void k_rope_table(float *x, const int32_t *pos, int n_heads, int head_dim, int half,
                             const float *inv_freq, float att, float theta, float factor,
                             int dyn_max_pos)
{
    const int t = blockIdx.x, p = pos[t];
    const bool dyn = dyn_max_pos > 0 && p + 1 > dyn_max_pos;
    float base = 0.0f;
    if (dyn) { /* xd_rope_inv_freq's steps */
        const int dim = 2 * half;
        float sl = factor * (float)(p + 1);
        sl = sl / (float)dyn_max_pos;
        sl = sl - (float)((double)factor - 1.0);
        base = theta * (float)pow((double)sl, (double)dim / (double)(dim - 2));
    }
    for (int idx = threadIdx.x; idx < n_heads * half; idx += blockDim.x) {
        const int h = idx / half, i = idx % half;
        const float f = dyn ? 1.0f / powf(base, (float)(2 * i) / (float)(2 * half)) : inv_freq[i];
        const float angle = (float)p * f;
        float s, c;
        sincosf(angle, &s, &c);
        c *= att;
        s *= att;
        float *v = x + ((size_t)t * n_heads + h) * head_dim;
        const float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
    }
}

void xd_k_rope_table(float *x, const int32_t *pos, int T, int n_heads, int head_dim, int half,
                     const float *inv_freq, float att, float theta, float factor,
                     int dyn_max_pos, cudaStream_t stream)
{
    if (T > 0)
        k_rope_table<<<T, 128, 0, stream>>>(x, pos, n_heads, head_dim, half, inv_freq, att, theta,
                                            factor, dyn_max_pos);
}

__global__ void k_kv_store(const float *k, const float *v, const int32_t *slot, bf16 *kc,
                           bf16 *vc, int kv_dim)
{
    const int t = blockIdx.x;
    const size_t dst = (size_t)slot[t] * kv_dim, src = (size_t)t * kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        kc[dst + i] = __float2bfloat16(k[src + i]);
        vc[dst + i] = __float2bfloat16(v[src + i]);
    }
}

void xd_k_kv_store(const float *k, const float *v, const int32_t *slot, bf16 *k_cache,
                   bf16 *v_cache, int T, int kv_dim, cudaStream_t stream)
{
    if (T > 0)
        k_kv_store<<<T, 128, 0, stream>>>(k, v, slot, k_cache, v_cache, kv_dim);
}

/* One block of ATT_WARPS warps per (token, head). Warp w takes the chunks of 32 keys
 * w, w + ATT_WARPS, ...: each lane scores one key of the chunk (a whole q . k), then the warp
 * accumulates the chunk's values with each lane owning head_dim / 32 dimensions, keeping an
 * online softmax; the warps' states merge at the end. Keys are thus read 32 at a time, not one
 * dependent load after another. */
#define ATT_WARPS 4
#define ATT_MAX_PER_LANE ATT_MAX_HEAD_DIM_LANES
__global__ void k_attention(const float *q, const bf16 *kc, const bf16 *vc, const int32_t *pos,
                            const int32_t *table_off, const int32_t *tables, bf16 *out,
                            int n_heads, int n_kv, int hd, int bs, int window, float scale)
{
    extern __shared__ float smem[]; /* q (hd) | m (W) | l (W) | acc (W, hd) */
    float *qs = smem, *ms = qs + hd, *ls = ms + ATT_WARPS, *accs = ls + ATT_WARPS;
    const int t = blockIdx.x / n_heads, h = blockIdx.x % n_heads, kvh = h / (n_heads / n_kv);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int per_lane = (hd + 31) / 32, kv_dim = n_kv * hd;
    const int p = pos[t];
    const int first = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
    const int32_t *table = tables + table_off[t];

    for (int d = threadIdx.x; d < hd; d += blockDim.x)
        qs[d] = q[((size_t)t * n_heads + h) * hd + d] * scale;
    __syncthreads();

    float acc[ATT_MAX_PER_LANE];
    for (int i = 0; i < per_lane; i++)
        acc[i] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int chunk = first / 32 + warp; chunk * 32 <= p; chunk += ATT_WARPS) {
        const int j = chunk * 32 + lane;
        const bool valid = j >= first && j <= p;
        size_t base = 0;
        float sc = -INFINITY;
        if (valid) {
            base = ((size_t)table[j / bs] * bs + j % bs) * kv_dim + (size_t)kvh * hd;
            float dot = 0.0f;
            if (hd % 8 == 0 && kv_dim % 8 == 0) {
                for (int d = 0; d < hd; d += 8) {
                    const uint4 raw = *(const uint4 *)(kc + base + d);
                    const __nv_bfloat162 *k2 = (const __nv_bfloat162 *)&raw;
                    for (int i = 0; i < 4; i++) {
                        const float2 kk = __bfloat1622float2(k2[i]);
                        dot += qs[d + 2 * i] * kk.x + qs[d + 2 * i + 1] * kk.y;
                    }
                }
            } else {
                for (int d = 0; d < hd; d += 2) {
                    const float2 kk = __bfloat1622float2(*(const __nv_bfloat162 *)(kc + base + d));
                    dot += qs[d] * kk.x + qs[d + 1] * kk.y;
                }
            }
            sc = dot;
        }
        float cmax = sc;
        for (int o = 16; o > 0; o >>= 1)
            cmax = fmaxf(cmax, __shfl_xor_sync(0xffffffffu, cmax, o));
        const float m_new = fmaxf(m, cmax), r = __expf(m - m_new);
        const float w = valid ? __expf(sc - m_new) : 0.0f;
        float wsum = w;
        for (int o = 16; o > 0; o >>= 1)
            wsum += __shfl_xor_sync(0xffffffffu, wsum, o);
        l = l * r + wsum;
        for (int i = 0; i < per_lane; i++)
            acc[i] *= r;
        for (int kk = 0; kk < 32; kk++) {
            const float wk = __shfl_sync(0xffffffffu, w, kk);
            const size_t bk = __shfl_sync(0xffffffffu, base, kk);
            if (wk == 0.0f)
                continue;
            for (int i = 0; i < per_lane; i++) {
                const int d = lane + 32 * i;
                if (d < hd)
                    acc[i] += wk * __bfloat162float(vc[bk + d]);
            }
        }
        m = m_new;
    }
    if (lane == 0) {
        ms[warp] = m;
        ls[warp] = l;
    }
    for (int i = 0; i < per_lane; i++) {
        const int d = lane + 32 * i;
        if (d < hd)
            accs[warp * hd + d] = acc[i];
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int w = 0; w < ATT_WARPS; w++)
        mx = fmaxf(mx, ms[w]);
    float denom = 0.0f;
    for (int w = 0; w < ATT_WARPS; w++)
        denom += ms[w] == -INFINITY ? 0.0f : ls[w] * __expf(ms[w] - mx);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float num = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++)
            num += ms[w] == -INFINITY ? 0.0f : accs[w * hd + d] * __expf(ms[w] - mx);
        out[((size_t)t * n_heads + h) * hd + d] = __float2bfloat16(num / denom);
    }
}

void xd_k_attention(const float *q, const bf16 *k_cache, const bf16 *v_cache,
                    const int32_t *pos, const int32_t *table_off, const int32_t *tables,
                    bf16 *out, int T, int n_heads, int n_kv, int hd, int block_size, int window,
                    cudaStream_t stream)
{
    const size_t shared = sizeof(float) * (hd + 2 * ATT_WARPS + (size_t)ATT_WARPS * hd);
    if (T > 0)
        k_attention<<<T * n_heads, 32 * ATT_WARPS, shared, stream>>>(
            q, k_cache, v_cache, pos, table_off, tables, out, n_heads, n_kv, hd, block_size,
            window, 1.0f / sqrtf((float)hd));
}

/* One warp per token: lanes own experts e = lane, lane + 32, ...; softmax by warp reductions;
 * top-k in k rounds of a warp-wide argmax (ties to the lower index). */
#define ROUTE_MAX_PER_LANE 16
__global__ void k_route(const float *logits, int32_t *experts, float *weights, int T, int E,
                        int K, int renormalise)
{
    const int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (t >= T)
        return;
    const float *lg = logits + (size_t)t * E;
    float v[ROUTE_MAX_PER_LANE];
    float mx = -INFINITY;
    for (int i = 0; i < ROUTE_MAX_PER_LANE; i++) {
        const int e = lane + 32 * i;
        v[i] = e < E ? lg[e] : -INFINITY;
        if (isnan(v[i])) /* a NaN never compares greater: it would leave no expert chosen */
            v[i] = -INFINITY;
        mx = fmaxf(mx, v[i]);
    }
    for (int o = 16; o > 0; o >>= 1)
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.0f;
    for (int i = 0; i < ROUTE_MAX_PER_LANE; i++)
        sum += lane + 32 * i < E ? expf(v[i] - mx) : 0.0f;
    for (int o = 16; o > 0; o >>= 1)
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
    float total = 0.0f, chosen[64];
    int32_t ids[64];
    for (int j = 0; j < K; j++) {
        float best = -INFINITY;
        int best_e = 0x7fffffff;
        for (int i = 0; i < ROUTE_MAX_PER_LANE; i++) {
            const int e = lane + 32 * i;
            if (e < E && (v[i] > best || (v[i] == best && e < best_e))) {
                best = v[i];
                best_e = e;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            const float ob = __shfl_xor_sync(0xffffffffu, best, o);
            const int oe = __shfl_xor_sync(0xffffffffu, best_e, o);
            if (ob > best || (ob == best && oe < best_e)) {
                best = ob;
                best_e = oe;
            }
        }
        if ((best_e & 31) == lane)
            v[best_e >> 5] = -INFINITY; /* taken */
        ids[j] = best_e;
        chosen[j] = expf(best - mx) / sum;
        total += chosen[j];
    }
    if (lane == 0)
        for (int j = 0; j < K; j++) {
            experts[(size_t)t * K + j] = ids[j];
            weights[(size_t)t * K + j] = renormalise ? chosen[j] / total : chosen[j];
        }
}

void xd_k_route(const float *logits, int32_t *experts, float *weights, int T, int E, int K,
                int renormalise, cudaStream_t stream)
{
    if (T > 0)
        k_route<<<(T + 3) / 4, 128, 0, stream>>>(logits, experts, weights, T, E, K, renormalise);
}

__global__ void k_gather_rows(const bf16 *x, const int32_t *src, bf16 *xg, int H)
{
    const int r = blockIdx.x;
    const bf16 *row = x + (size_t)src[r] * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x)
        xg[(size_t)r * H + i] = row[i];
}

void xd_k_gather_rows(const bf16 *x, const int32_t *src, bf16 *xg, int R, int H,
                      cudaStream_t stream)
{
    if (R > 0)
        k_gather_rows<<<R, THREADS, 0, stream>>>(x, src, xg, H);
}

__global__ void k_gather_rows_f32(const float *x, const int32_t *rows, float *out, int H)
{
    const int r = blockIdx.x;
    for (int i = threadIdx.x; i < H; i += blockDim.x)
        out[(size_t)r * H + i] = x[(size_t)rows[r] * H + i];
}

void xd_k_gather_rows_f32(const float *x, const int32_t *rows, float *out, int R, int H,
                          cudaStream_t stream)
{
    if (R > 0)
        k_gather_rows_f32<<<R, THREADS, 0, stream>>>(x, rows, out, H);
}

__global__ void k_silu_mul(const float *g, const float *u, bf16 *y, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] = __float2bfloat16(g[i] / (1.0f + expf(-g[i])) * u[i]);
}

void xd_k_silu_mul(const float *g, const float *u, bf16 *y, size_t n, cudaStream_t stream)
{
    if (n)
        k_silu_mul<<<blocks_for(n, THREADS), THREADS, 0, stream>>>(g, u, y, n);
}

__global__ void k_moe_combine(float *h, const float *eo, const int32_t *row, const float *w,
                              int K, int H)
{
    const int t = blockIdx.x;
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        float acc = 0.0f;
        for (int k = 0; k < K; k++)
            acc += w[(size_t)t * K + k] * eo[(size_t)row[(size_t)t * K + k] * H + i];
        h[(size_t)t * H + i] += acc;
    }
}

void xd_k_moe_combine(float *h, const float *eo, const int32_t *row, const float *weights,
                      int T, int K, int H, cudaStream_t stream)
{
    if (T > 0)
        k_moe_combine<<<T, THREADS, 0, stream>>>(h, eo, row, weights, K, H);
}

__global__ void k_add_gated(float *h, const float *y, const float *gate_logit, int H)
{
    const int t = blockIdx.x;
    const float g = 1.0f / (1.0f + expf(-gate_logit[t]));
    for (int i = threadIdx.x; i < H; i += blockDim.x)
        h[(size_t)t * H + i] += g * y[(size_t)t * H + i];
}

void xd_k_add_gated(float *h, const float *y, const float *gate_logit, int T, int H,
                    cudaStream_t stream)
{
    if (T > 0)
        k_add_gated<<<T, THREADS, 0, stream>>>(h, y, gate_logit, H);
}

__global__ void k_add(float *h, const float *y, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        h[i] += y[i];
}

void xd_k_add(float *h, const float *y, size_t n, cudaStream_t stream)
{
    if (n)
        k_add<<<blocks_for(n, THREADS), THREADS, 0, stream>>>(h, y, n);
}

/* ---- MoE steps small enough to plan on the device (no host round trip) ---- */

/* One block: counts rows per expert, prefix sums, then every thread places its own pairs:
 * the row of pair i is start[e] plus the number of earlier pairs with the same expert e, the
 * same (token, slot) order as the host plan. n_slots <= MOE_PLAN_MAX_SLOTS. */
#define MOE_PLAN_MAX_SLOTS 4096
__global__ void k_moe_plan(const int32_t *experts, int n_slots, int E, int32_t *start,
                           int32_t *row_src, int32_t *slot_row, int K)
{
    extern __shared__ int32_t sm[]; /* counts (E + 1) | experts (n_slots) */
    int32_t *counts = sm, *ex = sm + E + 1;
    for (int e = threadIdx.x; e <= E; e += blockDim.x)
        counts[e] = 0;
    for (int i = threadIdx.x; i < n_slots; i += blockDim.x)
        ex[i] = experts[i];
    __syncthreads();
    for (int i = threadIdx.x; i < n_slots; i += blockDim.x)
        atomicAdd(&counts[ex[i] + 1], 1);
    __syncthreads();
    if (threadIdx.x == 0)
        for (int e = 0; e < E; e++)
            counts[e + 1] += counts[e];
    __syncthreads();
    for (int e = threadIdx.x; e <= E; e += blockDim.x)
        start[e] = counts[e];
    for (int i = threadIdx.x; i < n_slots; i += blockDim.x) {
        const int e = ex[i];
        int rank = 0;
        for (int j = 0; j < i; j++)
            rank += ex[j] == e;
        const int r = counts[e] + rank;
        row_src[r] = i / K;
        slot_row[i] = r;
    }
}

void xd_k_moe_plan(const int32_t *experts, int n_slots, int E, int K, int32_t *start,
                   int32_t *row_src, int32_t *slot_row, cudaStream_t stream)
{
    if (n_slots > 0)
        k_moe_plan<<<1, 512, sizeof(int32_t) * (E + 1 + n_slots), stream>>>(
            experts, n_slots, E, start, row_src, slot_row, K);
}

/* Dot of a bf16 weight row with a bf16 activation row of n elements (n % 8 == 0), by one
 * warp; every lane gets the sum. */
__device__ float warp_dot_bf16(const bf16 *w, const bf16 *x, int n)
{
    const int lane = threadIdx.x & 31;
    float acc = 0.0f;
    for (int i = lane * 8; i < n; i += 32 * 8) {
        const uint4 wv = *(const uint4 *)(w + i), xv = *(const uint4 *)(x + i);
        const __nv_bfloat162 *w2 = (const __nv_bfloat162 *)&wv, *x2 = (const __nv_bfloat162 *)&xv;
        for (int j = 0; j < 4; j++) {
            const float2 a = __bfloat1622float2(w2[j]), b = __bfloat1622float2(x2[j]);
            acc += a.x * b.x + a.y * b.y;
        }
    }
    for (int o = 16; o > 0; o >>= 1)
        acc += __shfl_xor_sync(0xffffffffu, acc, o);
    return acc;
}

#define EXPERT_WARPS 8
/* grid (E, ceil(ffn / EXPERT_WARPS)): warp w of block (e, b) computes output feature
 * f = b * EXPERT_WARPS + w of expert e for each of its rows: a = silu(gate . x) * (up . x). */
__global__ void k_expert_gate_up(const bf16 *const *slots, const int32_t *start, const bf16 *xg,
                                 bf16 *a, int H, int F)
{
    const int e = blockIdx.x, f = blockIdx.y * EXPERT_WARPS + (threadIdx.x >> 5);
    const int r0 = start[e], r1 = start[e + 1];
    if (r0 == r1 || f >= F)
        return;
    const bf16 *gate = slots[e] + (size_t)f * H, *up = slots[e] + (size_t)F * H + (size_t)f * H;
    for (int r = r0; r < r1; r++) {
        const float g = warp_dot_bf16(gate, xg + (size_t)r * H, H);
        const float u = warp_dot_bf16(up, xg + (size_t)r * H, H);
        if ((threadIdx.x & 31) == 0)
            a[(size_t)r * F + f] = __float2bfloat16(g / (1.0f + expf(-g)) * u);
    }
}

/* grid (E, ceil(H / EXPERT_WARPS)): eo[r, h] = down[h] . a[r] for the rows of expert e. */
__global__ void k_expert_down(const bf16 *const *slots, const int32_t *start, const bf16 *a,
                              float *eo, int H, int F)
{
    const int e = blockIdx.x, h = blockIdx.y * EXPERT_WARPS + (threadIdx.x >> 5);
    const int r0 = start[e], r1 = start[e + 1];
    if (r0 == r1 || h >= H)
        return;
    const bf16 *down = slots[e] + (size_t)2 * F * H + (size_t)h * F;
    for (int r = r0; r < r1; r++) {
        const float y = warp_dot_bf16(down, a + (size_t)r * F, F);
        if ((threadIdx.x & 31) == 0)
            eo[(size_t)r * H + h] = y;
    }
}

void xd_k_experts_small(const bf16 *const *slots, const int32_t *start, const bf16 *xg, bf16 *a,
                        float *eo, int E, int H, int F, cudaStream_t stream)
{
    dim3 g1(E, (F + EXPERT_WARPS - 1) / EXPERT_WARPS), g2(E, (H + EXPERT_WARPS - 1) / EXPERT_WARPS);
    k_expert_gate_up<<<g1, 32 * EXPERT_WARPS, 0, stream>>>(slots, start, xg, a, H, F);
    k_expert_down<<<g2, 32 * EXPERT_WARPS, 0, stream>>>(slots, start, a, eo, H, F);
}

/* Wall time, not clocks: %globaltimer counts nanoseconds whatever the SM clock (the clock64()
 * loop this replaces waited us * 10^6 clocks, a thousand times too long at ~1 GHz and varying
 * with the clock). */
__global__ void k_spin(unsigned us)
{
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        __nanosleep(1000);
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < 1000ull * us);
}

void xd_k_spin(unsigned us, cudaStream_t stream)
{
    if (us > 0)
        k_spin<<<1, 1, 0, stream>>>(us);
}
