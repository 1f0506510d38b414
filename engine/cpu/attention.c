/* Blocked attention for the CPU backend: tiles of query rows against 16-key blocks of the paged
 * KV cache, scores as a small GEMM, online softmax per row; AVX-512, AVX2 or portable C, all in
 * one order per row, so every path and tiling gives the same bits. */
#include "engine/cpu/attention.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "engine/cpu/cpu_kernels.h"
#include "engine/cpu/quant_kernels.h"

#define KB XD_CPU_ATTN_KEY_BLOCK

/* Rows (query token x head of the kv head's group) per tile at most: K and V of a block are read
 * once per tile; the tile's accumulators (rows x head_dim) stay near 32 KiB. */
#define TILE_ROWS_MAX 64
#define TILE_FLOATS 8192

/* ---- the exponential: x = n ln 2 + r, |r| <= ln 2 / 2, exp(r) = 1 + r + r^2 P(r) ---- */

#define EXP_LO (-87.0f)
#define EXP_HI 88.0f
#define EXP_LOG2E 1.44269504088896341f
#define EXP_ROUND 12582912.0f /* 1.5 * 2^23: x + it - it rounds x to an integer (|x| < 2^22) */
#define EXP_C1 0.693359375f   /* ln 2 = C1 - C2, C1 exact in 9 bits */
#define EXP_C2 (-2.12194440e-4f)
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

/* The scalar form; the vector forms below do the same operations lane by lane. */
static inline __attribute__((always_inline)) float exp_attn(float x)
{
    if (x < EXP_LO)
        return 0.0f;
    x = fminf(fmaxf(x, EXP_LO), EXP_HI); /* NaN becomes EXP_LO, as the vector max does */
    const float n = (x * EXP_LOG2E + EXP_ROUND) - EXP_ROUND;
    float r = fmaf(n, -EXP_C1, x);
    r = fmaf(n, -EXP_C2, r);
    float p = EXP_P0;
    p = fmaf(p, r, EXP_P1);
    p = fmaf(p, r, EXP_P2);
    p = fmaf(p, r, EXP_P3);
    p = fmaf(p, r, EXP_P4);
    p = fmaf(p, r, EXP_P5);
    float y = fmaf(p, r * r, r) + 1.0f;
    union {
        uint32_t u;
        float f;
    } two_n = {.u = (uint32_t)((int32_t)n + 127) << 23};
    return y * two_n.f;
}

float xd_cpu_attn_exp(float x)
{
    return exp_attn(x);
}

/* What one tile needs besides its rows. */
struct tile_ctx {
    const float *const *qrow; /* (nr,) each row's query (head_dim,) */
    const float *kt;          /* (head_dim, KB) the block's keys, transposed; 0 for absent keys */
    const float *const *vrow; /* (KB,) the block's values (head_dim,), NULL for absent keys */
    int hd;
    float scale;
};

/* ---- portable C (fmaf: one rounding per multiply-add, as the vector paths) ---- */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define ATTN_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define ATTN_CLONES
#endif

/* S (nr, KB) = (q_r . k_j) * scale for the block's KB keys, each an fma chain over d from 0. */
ATTN_CLONES static void scores_portable(const struct tile_ctx *c, int nr, float *S)
{
    const int hd = c->hd;
    int r = 0;
    for (; r + 4 <= nr; r += 4) {
        float a[4][KB] = {{0}};
        for (int d = 0; d < hd; d++) {
            const float *k = c->kt + (size_t)d * KB;
            for (int i = 0; i < 4; i++) {
                const float qd = c->qrow[r + i][d];
                for (int j = 0; j < KB; j++)
                    a[i][j] = fmaf(qd, k[j], a[i][j]);
            }
        }
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < KB; j++)
                S[(size_t)(r + i) * KB + j] = a[i][j] * c->scale;
    }
    for (; r < nr; r++) {
        float a[KB] = {0};
        for (int d = 0; d < hd; d++) {
            const float qd = c->qrow[r][d];
            for (int j = 0; j < KB; j++)
                a[j] = fmaf(qd, c->kt[(size_t)d * KB + j], a[j]);
        }
        for (int j = 0; j < KB; j++)
            S[(size_t)r * KB + j] = a[j] * c->scale;
    }
}

/* One row's online-softmax step over its keys lo .. hi (0 <= lo <= hi < KB) of the block:
 * s (KB,) its scores, *m its running maximum, lv (KB,) its running sums, acc (hd,). */
ATTN_CLONES static void row_update_portable(const struct tile_ctx *c, const float *s, int lo,
                                            int hi, float *m, float *lv, float *acc)
{
    const int hd = c->hd;
    float mb = -INFINITY;
    for (int j = lo; j <= hi; j++)
        mb = s[j] > mb ? s[j] : mb;
    if (mb > *m) {
        if (*m != -INFINITY) {
            const float rs = exp_attn(*m - mb);
            for (int j = 0; j < KB; j++)
                lv[j] *= rs;
            for (int d = 0; d < hd; d++)
                acc[d] *= rs;
        }
        *m = mb;
    }
    float p[KB];
    for (int j = 0; j < KB; j++)
        p[j] = j >= lo && j <= hi ? exp_attn(s[j] - *m) : 0.0f;
    for (int j = 0; j < KB; j++)
        lv[j] += p[j];
    for (int j = lo; j <= hi; j++) {
        const float *v = c->vrow[j];
        const float pj = p[j];
        for (int d = 0; d < hd; d++)
            acc[d] = fmaf(pj, v[d], acc[d]);
    }
}

/* One element of a 16-bit cache (bf16 or f16) as f32: exact, so every path gives the same
 * values. */
static inline float widen1(uint16_t v, enum xd_dtype dt)
{
    return dt == XD_DTYPE_BF16 ? xd_bf16_to_f32(v) : xd_f16_to_f32(v);
}

/* n keys or values of a 16-bit cache widened to f32. */
static void widen_portable(const uint16_t *src, float *dst, int n, enum xd_dtype dt)
{
    for (int i = 0; i < n; i++)
        dst[i] = widen1(src[i], dt);
}

/* ---- AVX-512 (chosen at run time) ---- */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define XD_ATTN_X86 1
#define TGT512 __attribute__((target("avx512f,avx2,fma")))

TGT512 static inline __attribute__((always_inline)) __m512 exp16(__m512 x)
{
    const __mmask16 zero = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_LO), _CMP_LT_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_LO)), _mm512_set1_ps(EXP_HI));
    const __m512 rnd = _mm512_set1_ps(EXP_ROUND);
    const __m512 n =
        _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)), rnd), rnd);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-EXP_C1), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(-EXP_C2), r);
    __m512 p = _mm512_set1_ps(EXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
    __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(
        _mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mov_ps((__mmask16)~zero, _mm512_mul_ps(y, _mm512_castsi512_ps(e)));
}

/* nr (a constant once inlined, <= 8) rows of S against the block: one key vector per d, the
 * rows' q[d] broadcast. */
TGT512 static inline __attribute__((always_inline)) void
scores_rows512(const struct tile_ctx *c, int r0, const int nr, float *S)
{
    __m512 acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < nr; i++)
        acc[i] = _mm512_setzero_ps();
    const float *q[8];
#pragma GCC unroll 8
    for (int i = 0; i < nr; i++)
        q[i] = c->qrow[r0 + i];
    for (int d = 0; d < c->hd; d++) {
        const __m512 k = _mm512_loadu_ps(c->kt + (size_t)d * KB);
#pragma GCC unroll 8
        for (int i = 0; i < nr; i++)
            acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i][d]), k, acc[i]);
    }
    const __m512 sc = _mm512_set1_ps(c->scale);
#pragma GCC unroll 8
    for (int i = 0; i < nr; i++)
        _mm512_storeu_ps(S + (size_t)(r0 + i) * KB, _mm512_mul_ps(acc[i], sc));
}

TGT512 static void scores_avx512(const struct tile_ctx *c, int nr, float *S)
{
    int r = 0;
    for (; r + 8 <= nr; r += 8)
        scores_rows512(c, r, 8, S);
    switch (nr - r) {
    case 7: scores_rows512(c, r, 7, S); break;
    case 6: scores_rows512(c, r, 6, S); break;
    case 5: scores_rows512(c, r, 5, S); break;
    case 4: scores_rows512(c, r, 4, S); break;
    case 3: scores_rows512(c, r, 3, S); break;
    case 2: scores_rows512(c, r, 2, S); break;
    case 1: scores_rows512(c, r, 1, S); break;
    default: break;
    }
}


TGT512 static void widen_avx512(const uint16_t *src, float *dst, int n, enum xd_dtype dt)
{
    int i = 0;
    if (dt == XD_DTYPE_BF16)
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(
                                          _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                                              (const __m256i *)(src + i))),
                                          16)));
    else
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(dst + i,
                             _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
    widen_portable(src + i, dst + i, n - i, dt);
}

/* The softmax part of one row's step (as row_update_portable up to P.V): rescales acc where the
 * block's maximum is new, updates lv, and leaves p (KB,), 0 outside lo .. hi. */
TGT512 static void row_softmax_avx512(const struct tile_ctx *c, const float *s, int lo, int hi,
                                      float *m, float *lv, float *acc, float *p)
{
    const int hd = c->hd;
    const __mmask16 mk = (__mmask16)(((1u << (hi + 1)) - 1u) & ~((1u << lo) - 1u));
    const __m512 sv = _mm512_loadu_ps(s);
    const float mb = _mm512_mask_reduce_max_ps(mk, sv);
    __m512 l = _mm512_loadu_ps(lv);
    if (mb > *m) {
        if (*m != -INFINITY) {
            const __m512 rs = exp16(_mm512_set1_ps(*m - mb));
            l = _mm512_mul_ps(l, rs);
            int d = 0;
            for (; d + 16 <= hd; d += 16)
                _mm512_storeu_ps(acc + d, _mm512_mul_ps(_mm512_loadu_ps(acc + d), rs));
            if (d < hd) {
                const __mmask16 t = (__mmask16)((1u << (hd - d)) - 1u);
                _mm512_mask_storeu_ps(acc + d, t,
                                      _mm512_mul_ps(_mm512_maskz_loadu_ps(t, acc + d), rs));
            }
        }
        *m = mb;
    }
    const __m512 pv = _mm512_maskz_mov_ps(mk, exp16(_mm512_sub_ps(sv, _mm512_set1_ps(*m))));
    _mm512_storeu_ps(lv, _mm512_add_ps(l, pv));
    _mm512_storeu_ps(p, pv);
}

/* acc (nrr rows hd apart) lanes d .. d + 16 nd - 1 (the last chunk masked by tail) +=
 * p_j v_j for j = lo .. hi in order, P (nrr rows KB apart): the V loads shared by the rows. */
TGT512 static inline __attribute__((always_inline)) void
pv_chunk512(const struct tile_ctx *c, const float *P, int lo, int hi, float *acc, const int nrr,
            int d, const int nd, __mmask16 tail)
{
    const int hd = c->hd;
    __m512 a[4][4];
#pragma GCC unroll 4
    for (int i = 0; i < nrr; i++)
#pragma GCC unroll 4
        for (int k = 0; k < nd; k++)
            a[i][k] = _mm512_maskz_loadu_ps(k == nd - 1 ? tail : (__mmask16)0xffff,
                                            acc + (size_t)i * hd + d + 16 * k);
    for (int j = lo; j <= hi; j++) {
        __m512 v[4];
#pragma GCC unroll 4
        for (int k = 0; k < nd; k++)
            v[k] = _mm512_maskz_loadu_ps(k == nd - 1 ? tail : (__mmask16)0xffff,
                                         c->vrow[j] + d + 16 * k);
#pragma GCC unroll 4
        for (int i = 0; i < nrr; i++) {
            const __m512 w = _mm512_set1_ps(P[(size_t)i * KB + j]);
#pragma GCC unroll 4
            for (int k = 0; k < nd; k++)
                a[i][k] = _mm512_fmadd_ps(w, v[k], a[i][k]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < nrr; i++)
#pragma GCC unroll 4
        for (int k = 0; k < nd; k++)
            _mm512_mask_storeu_ps(acc + (size_t)i * hd + d + 16 * k,
                                  k == nd - 1 ? tail : (__mmask16)0xffff, a[i][k]);
}

TGT512 static inline __attribute__((always_inline)) void
pv_rows512(const struct tile_ctx *c, const float *P, int lo, int hi, float *acc, const int nrr)
{
    const int hd = c->hd;
    int d = 0;
    for (; d + 64 <= hd; d += 64)
        pv_chunk512(c, P, lo, hi, acc, nrr, d, 4, (__mmask16)0xffff);
    for (; d + 16 <= hd; d += 16)
        pv_chunk512(c, P, lo, hi, acc, nrr, d, 1, (__mmask16)0xffff);
    if (d < hd)
        pv_chunk512(c, P, lo, hi, acc, nrr, d, 1, (__mmask16)((1u << (hd - d)) - 1u));
}

/* The block's step for every row (lo[r] > hi[r]: row r has no key here): each row's softmax
 * part, then P.V four rows at a time where four neighbours share lo and hi. */
TGT512 static void block_update_avx512(const struct tile_ctx *c, int nr, const float *S,
                                       const int *lo, const int *hi, float *m, float *lv,
                                       float *acc)
{
    const int hd = c->hd;
    float P[nr * KB]; /* (nr, KB) */
    for (int r = 0; r < nr; r++)
        if (lo[r] <= hi[r])
            row_softmax_avx512(c, S + (size_t)r * KB, lo[r], hi[r], &m[r], lv + (size_t)r * KB,
                               acc + (size_t)r * hd, P + (size_t)r * KB);
    for (int r = 0; r < nr;) {
        if (lo[r] > hi[r]) {
            r++;
        } else if (r + 4 <= nr && lo[r + 1] == lo[r] && lo[r + 2] == lo[r] &&
                   lo[r + 3] == lo[r] && hi[r + 1] == hi[r] && hi[r + 2] == hi[r] &&
                   hi[r + 3] == hi[r]) {
            pv_rows512(c, P + (size_t)r * KB, lo[r], hi[r], acc + (size_t)r * hd, 4);
            r += 4;
        } else {
            pv_rows512(c, P + (size_t)r * KB, lo[r], hi[r], acc + (size_t)r * hd, 1);
            r++;
        }
    }
}

/* ---- AVX2 + FMA (chosen at run time): the same operations in two 8-lane halves ---- */

#define TGT256 __attribute__((target("avx2,fma")))

TGT256 static inline __attribute__((always_inline)) __m256 exp8(__m256 x)
{
    const __m256 zero = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_LO), _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_LO)), _mm256_set1_ps(EXP_HI));
    const __m256 rnd = _mm256_set1_ps(EXP_ROUND);
    const __m256 n =
        _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_LOG2E)), rnd), rnd);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-EXP_C1), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(-EXP_C2), r);
    __m256 p = _mm256_set1_ps(EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
    __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(zero, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

#define TGT256C __attribute__((target("avx2,fma,f16c")))

TGT256C static void widen_avx2(const uint16_t *src, float *dst, int n, enum xd_dtype dt)
{
    int i = 0;
    if (dt == XD_DTYPE_BF16)
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(
                                          _mm256_cvtepu16_epi32(_mm_loadu_si128(
                                              (const __m128i *)(src + i))),
                                          16)));
    else
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    widen_portable(src + i, dst + i, n - i, dt);
}

TGT256 static inline __attribute__((always_inline)) void
scores_rows256(const struct tile_ctx *c, int r0, const int nr, float *S)
{
    __m256 lo[4], hi[4];
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++)
        lo[i] = hi[i] = _mm256_setzero_ps();
    const float *q[4];
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++)
        q[i] = c->qrow[r0 + i];
    for (int d = 0; d < c->hd; d++) {
        const __m256 kl = _mm256_loadu_ps(c->kt + (size_t)d * KB);
        const __m256 kh = _mm256_loadu_ps(c->kt + (size_t)d * KB + 8);
#pragma GCC unroll 4
        for (int i = 0; i < nr; i++) {
            const __m256 qd = _mm256_set1_ps(q[i][d]);
            lo[i] = _mm256_fmadd_ps(qd, kl, lo[i]);
            hi[i] = _mm256_fmadd_ps(qd, kh, hi[i]);
        }
    }
    const __m256 sc = _mm256_set1_ps(c->scale);
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++) {
        _mm256_storeu_ps(S + (size_t)(r0 + i) * KB, _mm256_mul_ps(lo[i], sc));
        _mm256_storeu_ps(S + (size_t)(r0 + i) * KB + 8, _mm256_mul_ps(hi[i], sc));
    }
}

TGT256 static void scores_avx2(const struct tile_ctx *c, int nr, float *S)
{
    int r = 0;
    for (; r + 4 <= nr; r += 4)
        scores_rows256(c, r, 4, S);
    switch (nr - r) {
    case 3: scores_rows256(c, r, 3, S); break;
    case 2: scores_rows256(c, r, 2, S); break;
    case 1: scores_rows256(c, r, 1, S); break;
    default: break;
    }
}

TGT256 static void row_update_avx2(const struct tile_ctx *c, const float *s, int lo, int hi,
                                   float *m, float *lv, float *acc)
{
    const int hd = c->hd;
    float mb = -INFINITY;
    for (int j = lo; j <= hi; j++)
        mb = s[j] > mb ? s[j] : mb;
    __m256 l0 = _mm256_loadu_ps(lv), l1 = _mm256_loadu_ps(lv + 8);
    if (mb > *m) {
        if (*m != -INFINITY) {
            const __m256 rs = exp8(_mm256_set1_ps(*m - mb));
            const float rs1 = _mm_cvtss_f32(_mm256_castps256_ps128(rs));
            l0 = _mm256_mul_ps(l0, rs);
            l1 = _mm256_mul_ps(l1, rs);
            int d = 0;
            for (; d + 8 <= hd; d += 8)
                _mm256_storeu_ps(acc + d, _mm256_mul_ps(_mm256_loadu_ps(acc + d), rs));
            for (; d < hd; d++)
                acc[d] *= rs1;
        }
        *m = mb;
    }
    const __m256 mv = _mm256_set1_ps(*m);
    float pj[KB];
    _mm256_storeu_ps(pj, exp8(_mm256_sub_ps(_mm256_loadu_ps(s), mv)));
    _mm256_storeu_ps(pj + 8, exp8(_mm256_sub_ps(_mm256_loadu_ps(s + 8), mv)));
    for (int j = 0; j < KB; j++)
        if (j < lo || j > hi)
            pj[j] = 0.0f;
    _mm256_storeu_ps(lv, _mm256_add_ps(l0, _mm256_loadu_ps(pj)));
    _mm256_storeu_ps(lv + 8, _mm256_add_ps(l1, _mm256_loadu_ps(pj + 8)));
    int d = 0;
    for (; d + 16 <= hd; d += 16) {
        __m256 a0 = _mm256_loadu_ps(acc + d), a1 = _mm256_loadu_ps(acc + d + 8);
        for (int j = lo; j <= hi; j++) {
            const __m256 w = _mm256_set1_ps(pj[j]);
            a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(c->vrow[j] + d), a0);
            a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(c->vrow[j] + d + 8), a1);
        }
        _mm256_storeu_ps(acc + d, a0);
        _mm256_storeu_ps(acc + d + 8, a1);
    }
    for (; d + 8 <= hd; d += 8) {
        __m256 a0 = _mm256_loadu_ps(acc + d);
        for (int j = lo; j <= hi; j++)
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(pj[j]), _mm256_loadu_ps(c->vrow[j] + d), a0);
        _mm256_storeu_ps(acc + d, a0);
    }
    for (; d < hd; d++)
        for (int j = lo; j <= hi; j++)
            acc[d] = __builtin_fmaf(pj[j], c->vrow[j][d], acc[d]);
}
#endif

/* ---- tiles ---- */

struct attn_path {
    void (*widen)(const uint16_t *src, float *dst, int n, enum xd_dtype dt); /* 16-bit caches */
    void (*scores)(const struct tile_ctx *c, int nr, float *S);
    /* the block's step for rows 0 .. nr - 1, row r over its keys lo[r] .. hi[r] (none when
     * lo[r] > hi[r]) */
    void (*block_update)(const struct tile_ctx *c, int nr, const float *S, const int *lo,
                         const int *hi, float *m, float *lv, float *acc);
};

#define DEFINE_BLOCK_UPDATE(name, row_update)                                                  \
    static void name(const struct tile_ctx *c, int nr, const float *S, const int *lo,          \
                     const int *hi, float *m, float *lv, float *acc)                           \
    {                                                                                          \
        for (int r = 0; r < nr; r++)                                                           \
            if (lo[r] <= hi[r])                                                                \
                row_update(c, S + (size_t)r * KB, lo[r], hi[r], &m[r], lv + (size_t)r * KB,    \
                           acc + (size_t)r * c->hd);                                           \
    }
DEFINE_BLOCK_UPDATE(block_update_portable, row_update_portable)
#ifdef XD_ATTN_X86
DEFINE_BLOCK_UPDATE(block_update_avx2, row_update_avx2)
#endif

/* The first position a query at p sees. */
static inline int first_key(const struct xd_cpu_attn *a, int p)
{
    return a->window > 0 && p - a->window + 1 > 0 ? p - a->window + 1 : 0;
}

/* Where head kvh of position j of sequence sc starts in the value cache (elements;
 * attention.h). */
static inline size_t kv_at(const struct xd_cpu_attn *a, const struct xd_seq_chunk *sc, int j,
                           int kvh)
{
    const int bs = a->block_size;
    return (((size_t)sc->block_table[j / bs] * (size_t)a->n_kv_heads + (size_t)kvh) * (size_t)bs +
            (size_t)(j % bs)) *
           (size_t)a->head_dim;
}

/* Where key dimension 0 of head kvh of position j is in the key cache (elements; dimension d is
 * block_size further per d: attention.h). */
static inline size_t k_at(const struct xd_cpu_attn *a, const struct xd_seq_chunk *sc, int j,
                          int kvh)
{
    const int bs = a->block_size;
    return ((size_t)sc->block_table[j / bs] * (size_t)a->n_kv_heads + (size_t)kvh) *
               (size_t)a->head_dim * (size_t)bs +
           (size_t)(j % bs);
}

/* Rows r0 .. r1 - 1 of one sequence's chunk for kv head kvh: row r is the chunk's token r /
 * group, head kvh * group + r % group. q and out point at the chunk's first token. */
static void attend_tile(const struct xd_cpu_attn *a, const struct attn_path *path,
                        const struct xd_seq_chunk *sc, const float *q, float *out, int kvh,
                        int r0, int r1)
{
    const int hd = a->head_dim, group = a->n_heads / a->n_kv_heads, bs = a->block_size;
    const size_t qd = (size_t)a->n_heads * hd;
    const int nr = r1 - r0;
    const float *qrow[nr];
    int pos[nr], first[nr], lo[nr], hi[nr];
    float m[nr], lv[nr * KB], acc[nr * hd], S[nr * KB], kt[hd * KB];
    const float *vrow[KB];
    /* a 16-bit cache: the block's values widened here first (rows hd apart), so the rest reads
     * f32 as from an f32 cache; its keys widened into kt */
    const bool wide = a->kv_dtype == XD_DTYPE_F32;
    const int nbuf = wide ? 1 : KB * hd;
    float vbuf[nbuf];
    const float *kc = a->k_cache, *vc = a->v_cache;
    const uint16_t *kc16 = a->k_cache, *vc16 = a->v_cache;
    for (int r = 0; r < nr; r++) {
        const int t = (r0 + r) / group, h = kvh * group + (r0 + r) % group;
        qrow[r] = q + (size_t)t * qd + (size_t)h * hd;
        pos[r] = sc->pos + t;
        first[r] = first_key(a, pos[r]);
        m[r] = a->sinks ? a->sinks[h] : -INFINITY;
        memset(lv + (size_t)r * KB, 0, sizeof(float) * KB);
        lv[(size_t)r * KB] = a->sinks ? 1.0f : 0.0f;
    }
    memset(acc, 0, sizeof acc);
    const int kfirst = first[0], klast = pos[nr - 1];
    struct tile_ctx c = {qrow, kt, vrow, hd, a->scale};
    const size_t esize = wide ? sizeof(float) : sizeof(uint16_t);
    for (int kb = kfirst / KB; kb <= klast / KB; kb++) {
        const int j0 = kb * KB;
        const int ja = j0 > kfirst ? j0 : kfirst, jb = j0 + KB - 1 < klast ? j0 + KB - 1 : klast;
        /* a whole key block inside one cache block: its 16 keys of this head are 16 columns of
         * the cache block's (head_dim, block_size) keys, and with blocks of 16 the block's kt
         * itself; its values 16 rows that follow each other */
        const bool whole = ja == j0 && jb == j0 + KB - 1 && bs % KB == 0;
        const size_t at0 = whole ? kv_at(a, sc, j0, kvh) : 0, k0 = whole ? k_at(a, sc, j0, kvh) : 0;
        if (j0 + KB <= klast) {
            /* the next key block's keys and values of this head: runs of their own elsewhere in
             * the cache, which the hardware prefetcher would only find after a few misses (a
             * hint; no result depends on it) */
            const size_t run = (size_t)(bs < KB ? bs : KB) * (size_t)hd * esize;
            const size_t vn = kv_at(a, sc, j0 + KB, kvh) * esize;
            const size_t kn = bs == KB ? k_at(a, sc, j0 + KB, kvh) * esize : 0;
            for (size_t off = 0; off < run; off += 64) {
                __builtin_prefetch((const char *)a->v_cache + vn + off);
                if (bs == KB)
                    __builtin_prefetch((const char *)a->k_cache + kn + off);
            }
        }
        c.kt = kt;
        if (whole && wide && bs == KB) {
            c.kt = kc + k0;
        } else if (whole && bs == KB) {
            path->widen(kc16 + k0, kt, KB * hd, a->kv_dtype);
        } else if (whole) {
            for (int d = 0; d < hd; d++) {
                const size_t at = k0 + (size_t)d * bs;
                if (wide)
                    memcpy(kt + (size_t)d * KB, kc + at, sizeof(float) * KB);
                else
                    path->widen(kc16 + at, kt + (size_t)d * KB, KB, a->kv_dtype);
            }
        }
        if (!wide && whole) {
            path->widen(vc16 + at0, vbuf, KB * hd, a->kv_dtype);
        } else if (!wide) {
            for (int j = ja; j <= jb; j++)
                path->widen(vc16 + kv_at(a, sc, j, kvh), vbuf + (size_t)(j - j0) * hd, hd,
                            a->kv_dtype);
        }
        for (int jj = 0; jj < KB; jj++) {
            const int j = j0 + jj;
            if (whole) {
                vrow[jj] = (wide ? vc + at0 : vbuf) + (size_t)jj * hd;
                continue;
            }
            if (j < ja || j > jb) {
                vrow[jj] = NULL;
                for (int d = 0; d < hd; d++)
                    kt[(size_t)d * KB + jj] = 0.0f;
                continue;
            }
            const size_t kj = k_at(a, sc, j, kvh);
            for (int d = 0; d < hd; d++)
                kt[(size_t)d * KB + jj] = wide ? kc[kj + (size_t)d * bs]
                                               : widen1(kc16[kj + (size_t)d * bs], a->kv_dtype);
            vrow[jj] = wide ? vc + kv_at(a, sc, j, kvh) : vbuf + (size_t)jj * hd;
        }
        path->scores(&c, nr, S);
        for (int r = 0; r < nr; r++) {
            lo[r] = (first[r] > ja ? first[r] : ja) - j0;
            hi[r] = (pos[r] < jb ? pos[r] : jb) - j0;
        }
        path->block_update(&c, nr, S, lo, hi, m, lv, acc);
    }
    for (int r = 0; r < nr; r++) {
        float *l = lv + (size_t)r * KB;
        for (int w = KB / 2; w > 0; w /= 2)
            for (int j = 0; j < w; j++)
                l[j] += l[j + w];
        const int t = (r0 + r) / group, h = kvh * group + (r0 + r) % group;
        float *o = out + (size_t)t * qd + (size_t)h * hd;
        const float *ar = acc + (size_t)r * hd;
        for (int d = 0; d < hd; d++)
            o[d] = ar[d] / l[0];
    }
}

void xd_cpu_attention(const struct xd_cpu_attn *a, const struct xd_batch *b, const float *q,
                      float *out, int32_t *items)
{
    xd_cpu_attention_on(a, b, q, out, items, xd_cpu_vector_path());
}

void xd_cpu_attention_on(const struct xd_cpu_attn *a, const struct xd_batch *b, const float *q,
                         float *out, int32_t *items, enum xd_cpu_vec vec)
{
    const int hd = a->head_dim, group = a->n_heads / a->n_kv_heads;
    const size_t qd = (size_t)a->n_heads * hd;
    int rows_max = TILE_FLOATS / hd;
    rows_max = rows_max < 4 ? 4 : rows_max > TILE_ROWS_MAX ? TILE_ROWS_MAX : rows_max;
    /* whole tokens per tile where the group fits, so a tile reads each key block once for them */
    int tile_rows = group <= rows_max ? rows_max / group * group : rows_max;
    /* few rows (decode, short chunks): smaller tiles, so every thread has items. A row's result
     * does not depend on its tile, so this changes no bit. */
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    long n_rows_all = 0;
    for (int i = 0; i < b->n_seqs; i++)
        n_rows_all += (long)b->seqs[i].n_tokens * group;
    while (tile_rows > 1 &&
           (n_rows_all + tile_rows - 1) / tile_rows * a->n_kv_heads < 2L * threads)
        tile_rows = (tile_rows + 1) / 2;

    struct attn_path path = {widen_portable, scores_portable, block_update_portable};
#ifdef XD_ATTN_X86
    if (vec == XD_CPU_VEC_AVX512 && __builtin_cpu_supports("avx512f"))
        path = (struct attn_path){widen_avx512, scores_avx512, block_update_avx512};
    else if (vec >= XD_CPU_VEC_AVX2 && __builtin_cpu_supports("avx2") &&
             __builtin_cpu_supports("fma"))
        path = (struct attn_path){xd_cpu_has_f16c() ? widen_avx2 : widen_portable,
                                  scores_avx2, block_update_avx2};
#else
    (void)vec;
#endif

    /* items[i]: the first tile of sequence i; items[n_seqs]: every tile */
    int32_t *tile0 = items;
    tile0[0] = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        const int n_rows = b->seqs[i].n_tokens * group;
        tile0[i + 1] = tile0[i] + (n_rows + tile_rows - 1) / tile_rows;
    }
    const int n_tiles = tile0[b->n_seqs];
    const int n_items = n_tiles * a->n_kv_heads;

#pragma omp parallel for schedule(dynamic, 1) if (n_items > 1)
    for (int it = 0; it < n_items; it++) {
        /* last tiles first: they see the most keys, so the long items do not come last */
        const int item = n_items - 1 - it;
        const int tile = item / a->n_kv_heads, kvh = item % a->n_kv_heads;
        int lo = 0, hi = b->n_seqs - 1; /* the sequence: tile0[i] <= tile < tile0[i + 1] */
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (tile0[mid] <= tile)
                lo = mid;
            else
                hi = mid - 1;
        }
        const struct xd_seq_chunk *sc = &b->seqs[lo];
        size_t t0 = 0;
        for (int i = 0; i < lo; i++)
            t0 += (size_t)b->seqs[i].n_tokens;
        const int r0 = (tile - tile0[lo]) * tile_rows;
        const int n_rows = sc->n_tokens * group;
        const int r1 = r0 + tile_rows < n_rows ? r0 + tile_rows : n_rows;
        attend_tile(a, &path, sc, q + t0 * qd, out + t0 * qd, kvh, r0, r1);
    }
}

/* ---- the loop the blocked attention replaced ---- */

void xd_cpu_attention_reference(const struct xd_cpu_attn *a, const struct xd_batch *b,
                                const float *q_all, float *out)
{
    const int hd = a->head_dim;
    const int group = a->n_heads / a->n_kv_heads;
    const size_t qd = (size_t)a->n_heads * hd;
    const float scale = a->scale;
    const float *sinks = a->sinks;
    int seq0[b->n_seqs + 1]; /* (n_seqs + 1,) each sequence's first token in the step */
    seq0[0] = 0;
    for (int i = 0; i < b->n_seqs; i++)
        seq0[i + 1] = seq0[i] + b->seqs[i].n_tokens;
#pragma omp parallel for collapse(2) schedule(dynamic, 4)
    for (int tt = 0; tt < seq0[b->n_seqs]; tt++) {
        for (int h = 0; h < a->n_heads; h++) {
            int i = 0;
            while (seq0[i + 1] <= tt)
                i++;
            const struct xd_seq_chunk *sc = &b->seqs[i];
            const int t0 = seq0[i], t = tt - t0;
            const int p = sc->pos + t, kvh = h / group;
            const int first = first_key(a, p);
            const float *q = q_all + (size_t)(t0 + t) * qd + (size_t)h * hd;
            float acc[hd];
            /* a sink starts the running softmax as a logit of weight exp(0) with no value */
            float mx = sinks ? sinks[h] : -INFINITY;
            float sum = sinks ? 1.0f : 0.0f;
            memset(acc, 0, sizeof acc);
            /* one pass with a running maximum (online softmax) */
            for (int j = first; j <= p; j++) {
                const size_t row = kv_at(a, sc, j, kvh), kj = k_at(a, sc, j, kvh);
                float kr[hd];
                float vw[a->kv_dtype == XD_DTYPE_F32 ? 1 : hd];
                const float *vr = (const float *)a->v_cache + row;
                for (int d = 0; d < hd; d++) /* the key's dimensions, block_size apart */
                    kr[d] = a->kv_dtype == XD_DTYPE_F32
                                ? ((const float *)a->k_cache)[kj + (size_t)d * a->block_size]
                                : widen1(((const uint16_t *)a->k_cache)[kj + (size_t)d * a->block_size],
                                         a->kv_dtype);
                if (a->kv_dtype != XD_DTYPE_F32) {
                    widen_portable((const uint16_t *)a->v_cache + row, vw, hd, a->kv_dtype);
                    vr = vw;
                }
                float score = xd_cpu_dot(q, kr, hd) * scale;
                if (score > mx) {
                    float r = expf(mx - score);
                    sum *= r;
                    for (int k = 0; k < hd; k++)
                        acc[k] *= r;
                    mx = score;
                }
                float w = expf(score - mx);
                sum += w;
                for (int k = 0; k < hd; k++)
                    acc[k] += w * vr[k];
            }
            float *o = out + (size_t)(t0 + t) * qd + (size_t)h * hd;
            for (int k = 0; k < hd; k++)
                o[k] = acc[k] / sum;
        }
    }
}
