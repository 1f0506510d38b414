/* Matmul over q8_0 / q4_1 / q4_K / q6_K weights: activations quantized per block to int8, integer dot products with AVX-512 VNNI, AVX2 or portable C, one summation order on every path. */
#include "engine/cpu/quant_kernels.h"

#include <assert.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cpu/transpose.h"
#include "engine/model/quant.h"

/* Blocks [b0, b1) of one token's activations quantized: the same C on every path. x, q and d
 * are the token's row, s its column of the block-major sums. */
static void quantize_token(const float *x, int64_t b0, int64_t b1, int8_t *q, float *d, float *s,
                           int64_t ld_s)
{
    for (int64_t b = b0; b < b1; b++) {
        const float *xb = x + b * XD_QBLOCK;
        int8_t *qb = q + b * XD_QBLOCK;
        float amax = 0.0f;
        for (int j = 0; j < XD_QBLOCK; j++)
            amax = xd_max_abs(amax, xb[j]);
        const float db = amax / 127.0f;
        const float id = db != 0.0f ? 1.0f / db : 0.0f;
        int sum = 0;
        for (int j = 0; j < XD_QBLOCK; j++) {
            qb[j] = (int8_t)xd_round_half_away(xb[j] * id);
            sum += qb[j];
        }
        d[b] = db;
        s[b * ld_s] = db * (float)sum;
    }
}

/* Super-blocks [k0, k1) of one token's activations in the q4_K form: the same C on every path.
 * x, q and bs are the token's row, d its column of the block-major scales. */
static void quantize_token_k(const float *x, int64_t k0, int64_t k1, int8_t *q, float *d,
                             int64_t ld_d, int16_t *bs)
{
    for (int64_t k = k0; k < k1; k++) {
        const float *xb = x + k * XD_QK;
        int8_t *qb = q + k * XD_QK;
        float amax = 0.0f;
        for (int j = 0; j < XD_QK; j++)
            amax = xd_max_abs(amax, xb[j]);
        const float dk = amax / 127.0f;
        const float id = dk != 0.0f ? 1.0f / dk : 0.0f;
        for (int j = 0; j < 8; j++) {
            int sum = 0;
            for (int i = 0; i < XD_QBLOCK; i++) {
                qb[32 * j + i] = (int8_t)xd_round_half_away(xb[32 * j + i] * id);
                sum += qb[32 * j + i];
            }
            bs[8 * k + j] = (int16_t)sum;
        }
        d[k * ld_d] = dk;
    }
}

size_t xd_cpu_qacts_bytes(enum xd_dtype fmt, int n, int64_t cols)
{
    const size_t nt = (size_t)(n > 0 ? n : 0), nb = (size_t)(cols / XD_QBLOCK);
    if (xd_quant_is_super(fmt))
        return nt * ((size_t)(cols / XD_QK) * sizeof(float) + nb * (XD_QBLOCK + sizeof(int16_t)));
    return nt * nb * (XD_QBLOCK + 2 * sizeof(float));
}

void xd_cpu_qacts_init(void *buf, enum xd_dtype fmt, int n, int64_t cols,
                       struct xd_cpu_qacts *ret)
{
    const int64_t nb = cols / XD_QBLOCK;
    const size_t n_blocks = (size_t)n * (size_t)nb;
    /* the floats first, so they are aligned as buf is */
    float *f = buf;
    if (xd_quant_is_super(fmt)) {
        const size_t n_super = (size_t)n * (size_t)(cols / XD_QK);
        int16_t *bs = (int16_t *)(f + n_super);
        *ret = (struct xd_cpu_qacts){.n = n, .super = 1, .nb = nb, .ld_s = n, .d = f, .bs = bs,
                                     .q = (int8_t *)(bs + n_blocks)};
        return;
    }
    *ret = (struct xd_cpu_qacts){.n = n, .nb = nb, .ld_s = n, .d = f, .s = f + n_blocks,
                                 .q = (int8_t *)(f + 2 * n_blocks)};
}

void xd_cpu_qacts_quantize(const struct xd_cpu_qacts *a, const float *x, int t0, int t1)
{
    const int64_t cols = a->nb * XD_QBLOCK;
    for (int64_t t = t0; t < t1; t++) {
        if (a->super)
            quantize_token_k(x + t * cols, 0, a->nb / 8, a->q + t * cols, a->d + t, a->ld_s,
                             a->bs + t * a->nb);
        else
            quantize_token(x + t * cols, 0, a->nb, a->q + t * cols, a->d + t * a->nb, a->s + t,
                           a->ld_s);
    }
}

void xd_cpu_qacts_quantize_blocks(const struct xd_cpu_qacts *a, int t, const float *x,
                                  int64_t b0, int64_t b1)
{
    assert(0 <= t && t < a->n && 0 <= b0 && b0 <= b1 && b1 <= a->nb);
    const int64_t cols = a->nb * XD_QBLOCK;
    if (a->super) {
        assert(b0 % 8 == 0 && b1 % 8 == 0);
        quantize_token_k(x, b0 / 8, b1 / 8, a->q + t * cols, a->d + t, a->ld_s,
                         a->bs + t * a->nb);
        return;
    }
    quantize_token(x, b0, b1, a->q + t * cols, a->d + t * a->nb, a->s + t, a->ld_s);
}

void xd_cpu_qacts_copy_token(const struct xd_cpu_qacts *dst, int t_dst,
                             const struct xd_cpu_qacts *src, int t_src)
{
    assert(dst->nb == src->nb && dst->super == src->super && 0 <= t_dst && t_dst < dst->n &&
           0 <= t_src && t_src < src->n);
    const int64_t nb = src->nb, cols = nb * XD_QBLOCK;
    memcpy(dst->q + t_dst * cols, src->q + t_src * cols, (size_t)cols);
    if (src->super) {
        memcpy(dst->bs + t_dst * nb, src->bs + t_src * nb, (size_t)nb * sizeof(int16_t));
        for (int64_t k = 0; k < nb / 8; k++)
            dst->d[k * dst->ld_s + t_dst] = src->d[k * src->ld_s + t_src];
        return;
    }
    memcpy(dst->d + t_dst * nb, src->d + t_src * nb, (size_t)nb * sizeof(float));
    for (int64_t b = 0; b < nb; b++)
        dst->s[b * dst->ld_s + t_dst] = src->s[b * src->ld_s + t_src];
}

struct xd_cpu_qacts xd_cpu_qacts_view(const struct xd_cpu_qacts *a, int t0, int n)
{
    assert(t0 >= 0 && n >= 0 && t0 + n <= a->n);
    const int64_t cols = a->nb * XD_QBLOCK;
    if (a->super)
        return (struct xd_cpu_qacts){.n = n, .super = 1, .nb = a->nb, .ld_s = a->ld_s,
                                     .q = a->q + t0 * cols, .d = a->d + t0,
                                     .bs = a->bs + t0 * a->nb};
    return (struct xd_cpu_qacts){.n = n, .nb = a->nb, .ld_s = a->ld_s,
                                 .q = a->q + t0 * cols, .d = a->d + t0 * a->nb, .s = a->s + t0};
}

/* ---- the portable path: the order of the header, written out ---- */

static float tree16(float *L)
{
    for (int k = 8; k > 0; k /= 2)
        for (int i = 0; i < k; i++)
            L[i] += L[i + k];
    return L[0];
}

/* Weight k (0..31) of block b of a row as the integer the order multiplies. */
static inline int wq_at(const void *row, int fmt_q8, int64_t b, int k)
{
    if (fmt_q8)
        return ((const struct xd_block_q8_0 *)row)[b].qs[k];
    const uint8_t *qs = ((const struct xd_block_q4_1 *)row)[b].qs;
    return k < 16 ? qs[k] & 15 : qs[k - 16] >> 4;
}

static float dot_portable(const void *row, int fmt_q8, const struct xd_cpu_qacts *a, int t)
{
    const int64_t nb = a->nb;
    const int8_t *xq = a->q + (int64_t)t * nb * XD_QBLOCK;
    float L[16] = {0};
    for (int64_t b = 0; b < nb; b++) {
        const uint16_t dh = fmt_q8 ? ((const struct xd_block_q8_0 *)row)[b].d
                                   : ((const struct xd_block_q4_1 *)row)[b].d;
        const float s = xd_f16_to_f32(dh) * a->d[(int64_t)t * nb + b];
        const int h = (int)(b % 2) * 8;
        for (int j = 0; j < 8; j++) {
            int p = 0;
            for (int i = 0; i < 4; i++)
                p += wq_at(row, fmt_q8, b, 4 * j + i) * xq[b * XD_QBLOCK + 4 * j + i];
            L[h + j] = fmaf(s, (float)p, L[h + j]);
        }
    }
    float r = tree16(L);
    if (!fmt_q8) {
        float macc = 0.0f;
        for (int64_t b = 0; b < nb; b++)
            macc = fmaf(xd_f16_to_f32(((const struct xd_block_q4_1 *)row)[b].m),
                        a->s[b * a->ld_s + t], macc);
        r += macc;
    }
    return r;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
static void rows_portable(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y, int64_t r0,
                          int64_t r1)
{
    const size_t row_bytes = xd_dtype_row_bytes(w->dtype, w->cols);
    for (int64_t r = r0; r < r1; r++)
        for (int t = 0; t < a->n; t++)
            y[(int64_t)t * w->rows + r] = dot_portable((const char *)w->data + r * row_bytes,
                                                       w->dtype == XD_DTYPE_Q8_0, a, t);
}

/* The q4_K order of the header for one (row, token). */
static float dot_portable_k(const struct xd_block_q4_k *row, const struct xd_cpu_qacts *a, int t)
{
    const int64_t nb = a->nb;
    const int8_t *xq = a->q + (int64_t)t * nb * XD_QBLOCK;
    const int16_t *bs = a->bs + (int64_t)t * nb;
    float A = 0.0f, M = 0.0f;
    for (int64_t k = 0; k < nb / 8; k++) {
        const struct xd_block_q4_k *blk = &row[k];
        int32_t sumi = 0, summ = 0;
        for (int j = 0; j < 8; j++) {
            int sc, mn;
            xd_q4_k_scale_min(blk, j, &sc, &mn);
            int32_t p = 0;
            for (int i = 0; i < XD_QBLOCK; i++)
                p += xd_q4_k_q(blk, 32 * j + i) * xq[k * XD_QK + 32 * j + i];
            sumi += sc * p;
            summ += mn * bs[8 * k + j];
        }
        const float dx = a->d[k * a->ld_s + t];
        A = fmaf(xd_f16_to_f32(blk->d) * dx, (float)sumi, A);
        M = fmaf(xd_f16_to_f32(blk->dmin) * dx, (float)summ, M);
    }
    return A - M;
}

/* The q6_K order of the header for one (row, token). */
static float dot_portable_6k(const struct xd_block_q6_k *row, const struct xd_cpu_qacts *a, int t)
{
    const int64_t nb = a->nb;
    const int8_t *xq = a->q + (int64_t)t * nb * XD_QBLOCK;
    const int16_t *bs = a->bs + (int64_t)t * nb;
    float A = 0.0f;
    for (int64_t k = 0; k < nb / 8; k++) {
        const struct xd_block_q6_k *blk = &row[k];
        int32_t sumi = 0, summ = 0;
        for (int j = 0; j < 8; j++) {
            int32_t p = 0;
            for (int i = 0; i < XD_QBLOCK; i++)
                p += xd_q6_k_u(blk, 32 * j + i) * xq[k * XD_QK + 32 * j + i];
            sumi += blk->sc[j] * p;
            summ += blk->sc[j] * bs[8 * k + j];
        }
        A = fmaf(xd_f16_to_f32(blk->d) * a->d[k * a->ld_s + t], (float)(sumi - 32 * summ), A);
    }
    return A;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
static void rows_portable_6k(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y,
                             int64_t r0, int64_t r1)
{
    const size_t row_bytes = xd_dtype_row_bytes(w->dtype, w->cols);
    for (int64_t r = r0; r < r1; r++)
        for (int t = 0; t < a->n; t++)
            y[(int64_t)t * w->rows + r] = dot_portable_6k(
                (const struct xd_block_q6_k *)((const char *)w->data + r * row_bytes), a, t);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
static void rows_portable_k(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y,
                            int64_t r0, int64_t r1)
{
    const size_t row_bytes = xd_dtype_row_bytes(w->dtype, w->cols);
    for (int64_t r = r0; r < r1; r++)
        for (int t = 0; t < a->n; t++)
            y[(int64_t)t * w->rows + r] = dot_portable_k(
                (const struct xd_block_q4_k *)((const char *)w->data + r * row_bytes), a, t);
}

/* ---- x86-64 vector paths ----
 * One 256-bit integer dot product of a block gives its eight p_j (lane j sums products 4j ..
 * 4j + 3, as vpdpbusd and vpmaddubsw + vpmaddwd both group them). The VNNI path holds a pair of
 * blocks in one 512-bit vector, so its sixteen float lanes are the header's L; the AVX2 path
 * keeps lanes 0-7 (even blocks) and 8-15 (odd blocks) in two 256-bit accumulators, and both
 * reduce by the header's tree. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define XD_HAVE_X86_QUANT 1

#define TGT_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TGT_VNNI __attribute__((target("avx512f,avx512vl,avx512bw,avx512vnni,avx2,fma,f16c")))

#define FMT_Q8 0
#define FMT_Q4 1
#define NT 4 /* tokens per register tile */
/* Rows ahead the decode tiles prefetch: the next four-row tile (1.4-3x on a 140 MB q8/q4
 * matrix at one token, bench/results/engine-cpu-quant-moe.md; eight rows ahead was no better). */
#define QPREFETCH_ROWS 4

/* The tree k = 8, 4, 2, 1 over sixteen lanes held as lo (0-7) + hi (8-15). */
TGT_AVX2 static inline __attribute__((always_inline)) float reduce16(__m256 lo, __m256 hi)
{
    __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    return _mm_cvtss_f32(s1);
}

/* Block b of a row: its 32 weights in element order (q8 signed, q4 0..15), its f32 scale. */
#define DEFINE_LOADW(name, tgt)                                                                  \
    tgt static inline __attribute__((always_inline)) __m256i name(const char *row, int64_t b,    \
                                                                  const int fmt, float *ret_d)   \
    {                                                                                            \
        if (fmt == FMT_Q8) {                                                                     \
            const struct xd_block_q8_0 *blk = (const struct xd_block_q8_0 *)row + b;             \
            *ret_d = _cvtsh_ss(blk->d);                                                          \
            return _mm256_loadu_si256((const __m256i *)blk->qs);                                 \
        }                                                                                        \
        const struct xd_block_q4_1 *blk = (const struct xd_block_q4_1 *)row + b;                 \
        *ret_d = _cvtsh_ss(blk->d);                                                              \
        __m128i q = _mm_loadu_si128((const __m128i *)blk->qs);                                   \
        __m128i lo = _mm_and_si128(q, _mm_set1_epi8(15));                                        \
        __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), _mm_set1_epi8(15));                     \
        return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);                       \
    }
DEFINE_LOADW(load_w_avx2, TGT_AVX2)
DEFINE_LOADW(load_w_vnni, TGT_VNNI)

/* The q4_1 minimum term of tokens t0 .. t0 + nt - 1 for one row, added into macc[t]: one fmaf
 * per block in order (four tokens a vector when nt is 4, the same operations). */
#define DEFINE_MINS(name, tgt)                                                                   \
    tgt static inline __attribute__((always_inline)) void name(const char *row,                  \
                                                               const struct xd_cpu_qacts *a, int64_t t0, \
                                                               const int nt, float *macc)        \
    {                                                                                            \
        const struct xd_block_q4_1 *blk = (const struct xd_block_q4_1 *)row;                     \
        if (nt == 4) {                                                                           \
            __m128 m4 = _mm_setzero_ps();                                                        \
            for (int64_t b = 0; b < a->nb; b++)                                                  \
                m4 = _mm_fmadd_ps(_mm_set1_ps(_cvtsh_ss(blk[b].m)),                              \
                                  _mm_loadu_ps(a->s + b * a->ld_s + t0), m4);                       \
            _mm_storeu_ps(macc, m4);                                                             \
            return;                                                                              \
        }                                                                                        \
        for (int t = 0; t < nt; t++)                                                             \
            macc[t] = 0.0f;                                                                      \
        for (int64_t b = 0; b < a->nb; b++) {                                                    \
            const float m = _cvtsh_ss(blk[b].m);                                                 \
            for (int t = 0; t < nt; t++)                                                         \
                macc[t] = __builtin_fmaf(m, a->s[b * a->ld_s + t0 + t], macc[t]);                   \
        }                                                                                        \
    }
DEFINE_MINS(mins_avx2, TGT_AVX2)
DEFINE_MINS(mins_vnni, TGT_VNNI)

/* VNNI: y[t][r0 + r] for tokens t0 .. t0 + nt - 1 and rows r0 .. r0 + nr - 1 (constants once
 * inlined), a pair of blocks per step. */
TGT_VNNI static inline __attribute__((always_inline)) void
tile_vnni(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y, int64_t t0, int64_t r0,
          const int nt, const int nr, const int fmt)
{
    const int64_t nb = a->nb, cols = nb * XD_QBLOCK;
    const size_t row_bytes = xd_dtype_row_bytes(w->dtype, w->cols);
    const char *wrow[4];
    __m512 acc[NT][4];
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
        wrow[r] = (const char *)w->data + (size_t)(r0 + r) * row_bytes;
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++)
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++)
            acc[t][r] = _mm512_setzero_ps();
    const __m512i pair_idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    for (int64_t b = 0; b < nb; b += 2) {
        const int pair = b + 1 < nb; /* else the last, odd block: the high half stays zero */
        __m512i wv[4];
        __m512 dwv[4];
        if (nt <= 2) {
            /* few tokens (decode): the weights stream from memory, a row too short for the
             * hardware prefetcher to get ahead; ask for the same bytes of the rows one tile on
             * (a hint: past the matrix it loads nothing, and it changes no result) */
            const size_t off = (size_t)b * (fmt == FMT_Q8 ? sizeof(struct xd_block_q8_0)
                                                          : sizeof(struct xd_block_q4_1));
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++)
                _mm_prefetch((const char *)((uintptr_t)wrow[r] + QPREFETCH_ROWS * row_bytes + off),
                             _MM_HINT_T0);
        }
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            if (fmt == FMT_Q4) {
                /* both blocks' 16 bytes of nibbles, split once: [b lo | b' lo | b hi | b' hi],
                 * then ordered [b lo | b hi | b' lo | b' hi] (each block's 32 in order) */
                const struct xd_block_q4_1 *blk = (const struct xd_block_q4_1 *)wrow[r] + b;
                __m128i q0 = _mm_loadu_si128((const __m128i *)blk[0].qs);
                __m128i q1 = pair ? _mm_loadu_si128((const __m128i *)blk[1].qs)
                                  : _mm_set1_epi8((char)0);
                __m256i q = _mm256_inserti128_si256(_mm256_castsi128_si256(q0), q1, 1);
                __m256i lo = _mm256_and_si256(q, _mm256_set1_epi8(15));
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), _mm256_set1_epi8(15));
                __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                wv[r] = _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(3, 1, 2, 0));
            } else {
                float unused;
                __m256i w0 = load_w_vnni(wrow[r], b, fmt, &unused);
                __m256i w1 =
                    pair ? load_w_vnni(wrow[r], b + 1, fmt, &unused) : _mm256_setzero_si256();
                wv[r] = _mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1);
            }
            /* q8: w + 128 as unsigned bytes; the 128 * sum(x) it adds is taken off below */
            if (fmt == FMT_Q8)
                wv[r] = _mm512_xor_si512(wv[r], _mm512_set1_epi8((char)0x80));
            /* the two f16 scales, widened, each broadcast over its block's eight lanes */
            const size_t bsz = fmt == FMT_Q8 ? sizeof(struct xd_block_q8_0)
                                             : sizeof(struct xd_block_q4_1);
            uint16_t h0, h1 = 0;
            memcpy(&h0, wrow[r] + (size_t)b * bsz, 2);
            if (pair)
                memcpy(&h1, wrow[r] + (size_t)(b + 1) * bsz, 2);
            const __m128 d01 = _mm_cvtph_ps(_mm_cvtsi32_si128((int)h0 | (int)h1 << 16));
            dwv[r] = _mm512_permutexvar_ps(pair_idx, _mm512_castps128_ps512(d01));
        }
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const int8_t *xq = a->q + (t0 + t) * cols + b * XD_QBLOCK;
            const float *dx = a->d + (t0 + t) * nb + b;
            __m512i xv = pair ? _mm512_loadu_si512((const void *)xq)
                              : _mm512_castsi256_si512(_mm256_loadu_si256((const void *)xq));
            if (!pair)
                xv = _mm512_inserti64x4(xv, _mm256_setzero_si256(), 1);
            const __m128 dx01 =
                pair ? _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)dx)) : _mm_load_ss(dx);
            const __m512 dxv = _mm512_permutexvar_ps(pair_idx, _mm512_castps128_ps512(dx01));
            /* q8: -128 * (sum of each lane's four x), the start of every row's dot product */
            const __m512i base = fmt == FMT_Q8 ? _mm512_sub_epi32(_mm512_setzero_si512(),
                                                                  _mm512_dpbusd_epi32(
                                                                      _mm512_setzero_si512(),
                                                                      _mm512_set1_epi8((char)0x80),
                                                                      xv))
                                               : _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) {
                const __m512i p = _mm512_dpbusd_epi32(base, wv[r], xv);
                acc[t][r] = _mm512_fmadd_ps(_mm512_mul_ps(dwv[r], dxv), _mm512_cvtepi32_ps(p),
                                            acc[t][r]);
            }
        }
    }
    /* q4_1: the minimum terms, one fmaf per block in order for each (token, row), four rows a
     * vector when the tile has four (the same operations per element) */
    float mterm[4][NT] = {{0}};
    if (fmt == FMT_Q4 && nr == 4) {
        __m128 m4[NT];
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++)
            m4[t] = _mm_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            uint16_t h[4];
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++)
                h[r] = ((const struct xd_block_q4_1 *)wrow[r])[b].m;
            uint64_t packed;
            memcpy(&packed, h, sizeof packed);
            const __m128 mv = _mm_cvtph_ps(_mm_cvtsi64_si128((long long)packed));
#pragma GCC unroll 4
            for (int t = 0; t < nt; t++)
                m4[t] = _mm_fmadd_ps(mv, _mm_set1_ps(a->s[b * a->ld_s + t0 + t]), m4[t]);
        }
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            float v[4];
            _mm_storeu_ps(v, m4[t]);
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++)
                mterm[r][t] = v[r];
        }
    } else if (fmt == FMT_Q4) {
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++)
            mins_vnni(wrow[r], a, t0, nt, mterm[r]);
    }
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++) {
        const float *macc = mterm[r];
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            __m256 lo = _mm512_castps512_ps256(acc[t][r]);
            __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[t][r]), 1));
            y[(t0 + t) * w->rows + r0 + r] = reduce16(lo, hi) + macc[t];
        }
    }
}

/* AVX2: one row against tokens t0 .. t0 + nt - 1, the even and odd blocks in two accumulators. */
TGT_AVX2 static inline __attribute__((always_inline)) void
tile_avx2(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y, int64_t t0, int64_t r0,
          const int nt, const int fmt)
{
    const int64_t nb = a->nb, cols = nb * XD_QBLOCK;
    const char *row = (const char *)w->data + (size_t)r0 * xd_dtype_row_bytes(w->dtype, w->cols);
    __m256 acc[NT][2];
    const __m256i ones = _mm256_set1_epi16(1);
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++)
        acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    /* even blocks into acc[t][0], odd into acc[t][1], two a step: an index that changed with
     * the block's parity kept the accumulators on the stack (a store and a reload per fma) */
    for (int64_t b = 0; b < nb; b += 2) {
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            if (h == 1 && b + 1 == nb)
                break;
            float dw;
            const __m256i wv = load_w_avx2(row, b + h, fmt, &dw);
            const __m256i wa = fmt == FMT_Q8 ? _mm256_sign_epi8(wv, wv) : wv;
            const __m256 dwv = _mm256_set1_ps(dw);
#pragma GCC unroll 4
            for (int t = 0; t < nt; t++) {
                const __m256i xv = _mm256_loadu_si256(
                    (const __m256i *)(a->q + (t0 + t) * cols + (b + h) * XD_QBLOCK));
                const __m256i xs = fmt == FMT_Q8 ? _mm256_sign_epi8(xv, wv) : xv;
                const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(wa, xs), ones);
                /* dw * dx rounded once, as the scalar product was */
                const __m256 sc =
                    _mm256_mul_ps(dwv, _mm256_broadcast_ss(a->d + (t0 + t) * nb + b + h));
                acc[t][h] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(p), acc[t][h]);
            }
        }
    }
    float macc[NT] = {0};
    if (fmt == FMT_Q4)
        mins_avx2(row, a, t0, nt, macc);
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++)
        y[(t0 + t) * w->rows + r0] = reduce16(acc[t][0], acc[t][1]) + macc[t];
}

/* Rows in groups of 4 against tiles of up to NT tokens, the rest one by one. One q8_0 token
 * (decode at batch 1) takes its rows one by one: one sequential stream of weights per row measured
 * 5-9% faster batch-1 decode in bench-engine; q4_1 (and q4_K's row groups) measured 6-35% slower
 * that way, so they keep the groups (bench/results/engine-cpu-decode.md). An element's bits do
 * not depend on the group. */
#define DEFINE_ROWS_VNNI(name, fmt)                                                              \
    TGT_VNNI static void name(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y,         \
                              int64_t r0, int64_t r1)                                            \
    {                                                                                            \
        int64_t r = r0;                                                                          \
        for (; !(fmt == FMT_Q8 && a->n == 1) && r + 4 <= r1; r += 4) {                           \
            int64_t t = 0;                                                                       \
            for (; t + NT <= a->n; t += NT)                                                      \
                tile_vnni(a, w, y, t, r, NT, 4, fmt);                                            \
            switch (a->n - t) {                                                                  \
            case 3: tile_vnni(a, w, y, t, r, 3, 4, fmt); break;                                  \
            case 2: tile_vnni(a, w, y, t, r, 2, 4, fmt); break;                                  \
            case 1: tile_vnni(a, w, y, t, r, 1, 4, fmt); break;                                  \
            default: break;                                                                      \
            }                                                                                    \
        }                                                                                        \
        for (; r < r1; r++) {                                                                    \
            int64_t t = 0;                                                                       \
            for (; t + NT <= a->n; t += NT)                                                      \
                tile_vnni(a, w, y, t, r, NT, 1, fmt);                                            \
            for (; t < a->n; t++)                                                                \
                tile_vnni(a, w, y, t, r, 1, 1, fmt);                                             \
        }                                                                                        \
    }
DEFINE_ROWS_VNNI(rows_vnni_q8, FMT_Q8)
DEFINE_ROWS_VNNI(rows_vnni_q4, FMT_Q4)

#define DEFINE_ROWS_AVX2(name, fmt)                                                              \
    TGT_AVX2 static void name(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y,         \
                              int64_t r0, int64_t r1)                                            \
    {                                                                                            \
        for (int64_t r = r0; r < r1; r++) {                                                      \
            int64_t t = 0;                                                                       \
            for (; t + NT <= a->n; t += NT)                                                      \
                tile_avx2(a, w, y, t, r, NT, fmt);                                               \
            switch (a->n - t) {                                                                  \
            case 3: tile_avx2(a, w, y, t, r, 3, fmt); break;                                     \
            case 2: tile_avx2(a, w, y, t, r, 2, fmt); break;                                     \
            case 1: tile_avx2(a, w, y, t, r, 1, fmt); break;                                     \
            default: break;                                                                      \
            }                                                                                    \
        }                                                                                        \
    }
DEFINE_ROWS_AVX2(rows_avx2_q8, FMT_Q8)
DEFINE_ROWS_AVX2(rows_avx2_q4, FMT_Q4)

/* ---- q4_K on x86-64 ----
 * Per super-block and (row, token) the int32 sums of the header, then its float steps. Both
 * paths multiply 4-bit weights by int8 activations with vpmaddubsw (pairs into int16: at most
 * 2 * 15 * 127) and the pairs by the sub-block scales with vpmaddwd / vpdpwssd into int32
 * lanes, which are exact whatever their grouping; the lanes are added up per super-block. */

/* A super-block's eight 6-bit scales and minimums as int16 (sc[8], mn[8]). */
#define DEFINE_SCALES_K(name, tgt)                                                               \
    tgt static inline __attribute__((always_inline)) void name(const struct xd_block_q4_k *b,    \
                                                               int16_t *sc, int16_t *mn)         \
    {                                                                                            \
        uint32_t h;                                                                              \
        memcpy(&h, b->scales + 8, sizeof h);                                                     \
        const __m256i lo = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)b->scales));    \
        const __m256i hv = _mm256_set1_epi32((int)h), three = _mm256_set1_epi32(3);              \
        const __m256i sh = _mm256_and_si256(                                                     \
            _mm256_srlv_epi32(hv, _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)), three);         \
        const __m256i mh = _mm256_and_si256(                                                     \
            _mm256_srlv_epi32(hv, _mm256_setr_epi32(16, 18, 20, 22, 24, 26, 28, 30)), three);    \
        const __m256i s32 = _mm256_or_si256(_mm256_and_si256(lo, _mm256_set1_epi32(15)),         \
                                            _mm256_slli_epi32(sh, 4));                           \
        const __m256i m32 = _mm256_or_si256(_mm256_srli_epi32(lo, 4), _mm256_slli_epi32(mh, 4)); \
        /* [sc 0-3, mn 0-3 | sc 4-7, mn 4-7] -> [sc 0-7 | mn 0-7] */                              \
        const __m256i p =                                                                        \
            _mm256_permute4x64_epi64(_mm256_packs_epi32(s32, m32), _MM_SHUFFLE(3, 1, 2, 0));     \
        _mm_storeu_si128((__m128i *)sc, _mm256_castsi256_si128(p));                              \
        _mm_storeu_si128((__m128i *)mn, _mm256_extracti128_si256(p, 1));                         \
    }
DEFINE_SCALES_K(scales_k_avx2, TGT_AVX2)
DEFINE_SCALES_K(scales_k_vnni, TGT_VNNI)

/* Sums the four int32 lanes of each 128-bit lane of v0..v3 into one 128-bit lane of four:
 * 128-bit lane L of the result is [sum v0_L, sum v1_L, sum v2_L, sum v3_L]. */
TGT_VNNI static inline __attribute__((always_inline)) __m512i
hsum4_vnni(__m512i v0, __m512i v1, __m512i v2, __m512i v3)
{
    const __m512i u01 = _mm512_add_epi32(_mm512_unpacklo_epi32(v0, v1), _mm512_unpackhi_epi32(v0, v1));
    const __m512i u23 = _mm512_add_epi32(_mm512_unpacklo_epi32(v2, v3), _mm512_unpackhi_epi32(v2, v3));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(u01, u23), _mm512_unpackhi_epi64(u01, u23));
}

/* The first super-blocks of rows r0 .. r0 + nr - 1 of q4_K matrix w (row_bytes apart). */
static inline __attribute__((always_inline)) void
q4k_rows(const struct xd_matrix *w, int64_t r0, int nr, size_t row_bytes,
         const struct xd_block_q4_k **wrow)
{
    for (int r = 0; r < nr; r++)
        wrow[r] = (const struct xd_block_q4_k *)((const char *)w->data + (size_t)(r0 + r) * row_bytes);
}

/* The first super-blocks of rows r0 .. r0 + nr - 1 of a q4_K or q6_K matrix w as bytes (the
 * kernels below that serve both formats step by KBLOCK(six) bytes a super-block). */
static inline __attribute__((always_inline)) void
krows(const struct xd_matrix *w, int64_t r0, int nr, size_t row_bytes, const uint8_t **wrow)
{
    for (int r = 0; r < nr; r++)
        wrow[r] = (const uint8_t *)w->data + (size_t)(r0 + r) * row_bytes;
}

/* Bytes of a super-block: q6_K's when six, else q4_K's. */
#define KBLOCK(six) ((six) ? sizeof(struct xd_block_q6_k) : sizeof(struct xd_block_q4_k))

/* Groups of four rows ahead that the q4_K and q6_K kernels prefetch. */
#define KPREFETCH_GROUPS 2

/* The q4_K and q6_K kernels read a group of four rows (contiguous, 4 x row_bytes) a super-block
 * of each at a time: at super-block k, the k-th 4 x KBLOCK(six) bytes of the group
 * KPREFETCH_GROUPS on are prefetched, so the prefetches run front to back through memory as the
 * rows are read (a hint; it changes no result). Four rows' own addresses prefetched instead
 * stream half as fast from DRAM (bench/results/engine-cpu-q4k.md). q6_K's prefetches go to L2
 * (T1): into L1 (T0) its GEMV streamed at 10-14 GB/s from DRAM, to L2 at 22-27 as q8_0's; q4_K's
 * GEMV streams the same either way and its tiles measured a little faster with T0. */
TGT_AVX2 static inline __attribute__((always_inline)) void
prefetch_group_k(const void *row0, size_t row_bytes, int64_t k, const int six)
{
    const char *pf = (const char *)row0 + KPREFETCH_GROUPS * 4 * row_bytes +
                     (size_t)k * 4 * KBLOCK(six);
    if (six) {
#pragma GCC unroll 13
        for (int l = 0; l < 13; l++) /* 4 x 202 bytes */
            _mm_prefetch(pf + 64 * l, _MM_HINT_T1);
    } else {
#pragma GCC unroll 9
        for (int l = 0; l < 9; l++) /* 4 x 144 bytes */
            _mm_prefetch(pf + 64 * l, _MM_HINT_T0);
    }
}

/* q6_K super-block blk's eight scales as int16. */
TGT_AVX2 static inline __attribute__((always_inline)) __m128i scales_6k(const struct xd_block_q6_k *blk)
{
    return _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)blk->sc));
}

/* A super-block's weights as bytes, quarter q (weights 64q .. 64q + 63) in wv[q]: q4_K's 4-bit
 * values, or q6_K's u (its low nibble, and its two high bits moved from bits 2q, 2q + 1 of qh to
 * bits 4, 5). */
TGT_VNNI static inline __attribute__((always_inline)) void
unpack_vnni_k(const uint8_t *blk, const int six, __m512i *wv)
{
    const __m512i nib = _mm512_set1_epi8(15);
    const uint8_t *qs = six ? ((const struct xd_block_q6_k *)blk)->ql
                            : ((const struct xd_block_q4_k *)blk)->qs;
    const __m512i v0 = _mm512_loadu_si512((const void *)qs),
                  v1 = _mm512_loadu_si512((const void *)(qs + 64));
    wv[0] = _mm512_and_si512(v0, nib);
    wv[1] = _mm512_and_si512(_mm512_srli_epi16(v0, 4), nib);
    wv[2] = _mm512_and_si512(v1, nib);
    wv[3] = _mm512_and_si512(_mm512_srli_epi16(v1, 4), nib);
    if (six) {
        const __m512i h = _mm512_loadu_si512((const void *)((const struct xd_block_q6_k *)blk)->qh),
                      m = _mm512_set1_epi8(0x30);
        wv[0] = _mm512_or_si512(wv[0], _mm512_and_si512(_mm512_slli_epi16(h, 4), m));
        wv[1] = _mm512_or_si512(wv[1], _mm512_and_si512(_mm512_slli_epi16(h, 2), m));
        wv[2] = _mm512_or_si512(wv[2], _mm512_and_si512(h, m));
        wv[3] = _mm512_or_si512(wv[3], _mm512_and_si512(_mm512_srli_epi16(h, 2), m));
    }
}

/* Super-block blk's int16 multipliers: sc (8) of its weights' sub-block sums, mn (8) of the
 * token's sub-block sums bs_j (q4_K its minimums; q6_K its scales again, for summ), and the f16
 * d and dmin (q6_K: 0). */
#define DEFINE_KBLOCK_SCALES(name, tgt, scales_k)                                                \
    tgt static inline __attribute__((always_inline)) void name(                                  \
        const uint8_t *blk, const int six, int16_t *sc, int16_t *mn, uint16_t *d, uint16_t *dmin) \
    {                                                                                            \
        if (six) {                                                                               \
            const struct xd_block_q6_k *b = (const struct xd_block_q6_k *)blk;                   \
            const __m128i s = scales_6k(b);                                                      \
            _mm_storeu_si128((__m128i *)sc, s);                                                  \
            _mm_storeu_si128((__m128i *)mn, s);                                                  \
            *d = b->d;                                                                           \
            *dmin = 0;                                                                           \
            return;                                                                              \
        }                                                                                        \
        const struct xd_block_q4_k *b = (const struct xd_block_q4_k *)blk;                       \
        scales_k(b, sc, mn);                                                                     \
        *d = b->d;                                                                               \
        *dmin = b->dmin;                                                                         \
    }
DEFINE_KBLOCK_SCALES(kblock_scales_avx2, TGT_AVX2, scales_k_avx2)
DEFINE_KBLOCK_SCALES(kblock_scales_vnni, TGT_VNNI, scales_k_vnni)

/* 32 bytes at 32h of a super-block's low bits: sub-block jl = 4 (h / 2) + h % 2 in the low
 * nibbles and jh = jl + 2 in the high ones, as bytes in *wl, *wh: q4_K's 4-bit values, or q6_K's
 * u (the high bits of jl, jh from bits 2g, 2g + 1 of qh's 32 bytes at 32 (h % 2), g = 2 (h / 2)
 * and g + 1). */
TGT_AVX2 static inline __attribute__((always_inline)) void
unpack_avx2_k(const uint8_t *blk, const int six, const int h, __m256i *wl, __m256i *wh)
{
    const __m256i nib = _mm256_set1_epi8(15);
    const uint8_t *qs = six ? ((const struct xd_block_q6_k *)blk)->ql
                            : ((const struct xd_block_q4_k *)blk)->qs;
    const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * h));
    *wl = _mm256_and_si256(v, nib);
    *wh = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
    if (six) {
        const __m256i hb = _mm256_loadu_si256(
                          (const __m256i *)(((const struct xd_block_q6_k *)blk)->qh + 32 * (h % 2))),
                      m = _mm256_set1_epi8(0x30);
        const __m256i hl = h / 2 ? hb : _mm256_slli_epi16(hb, 4),
                      hh = h / 2 ? _mm256_srli_epi16(hb, 2) : _mm256_slli_epi16(hb, 2);
        *wl = _mm256_or_si256(*wl, _mm256_and_si256(hl, m));
        *wh = _mm256_or_si256(*wh, _mm256_and_si256(hh, m));
    }
}

/* The vpshufb pattern that turns a 128-bit lane of eight int16 scales (broadcast to all four
 * lanes) into quarter q's vpdpwssd multipliers: int16 lanes 0-15 sc[2q], 16-31 sc[2q + 1]. */
TGT_VNNI static inline __attribute__((always_inline)) __m512i scale_pattern_vnni(int q)
{
    const int lo = 4 * q | (4 * q + 1) << 8, hi = (4 * q + 2) | (4 * q + 3) << 8;
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(lo | lo << 16)),
                              _mm256_set1_epi32(hi | hi << 16), 1);
}

/* VNNI, q4_K or q6_K: one super-block of up to four rows unpacked once for every token tile of a
 * chunk: the weights of quarter q (weights 64q .. 64q + 63) as bytes, the scale vectors that
 * vpdpwssd multiplies their pairs by (int16 lanes 0-15 sc[2q], 16-31 sc[2q + 1]), the
 * multipliers of the token's sub-block sums (lane 8r + j: q4_K's minimums, q6_K's scales) and d,
 * dmin of row r in lanes 4r .. 4r + 3. */
struct prep_k {
    __m512i wv[4][4], sv[4][4]; /* [row][quarter] */
    __m512i mv;
    __m512 dwv, dmv;
};

TGT_VNNI static inline __attribute__((always_inline)) void
prep_vnni_k(const uint8_t *const *wrow, int64_t k, const int nr, size_t row_bytes,
            struct prep_k *p, const int six)
{
    _Alignas(64) int16_t sc[4][8], mn[4][8];
    memset(sc, 0, sizeof sc);
    memset(mn, 0, sizeof mn);
    if (nr == 4)
        prefetch_group_k(wrow[0], row_bytes, k, six);
    uint16_t hd[8] = {0};
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++) {
        const uint8_t *blk = wrow[r] + (size_t)k * KBLOCK(six);
        kblock_scales_vnni(blk, six, sc[r], mn[r], &hd[r], &hd[4 + r]);
        unpack_vnni_k(blk, six, p->wv[r]);
        const __m512i scb = _mm512_broadcast_i32x4(_mm_load_si128((const __m128i *)sc[r]));
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++)
            p->sv[r][q] = _mm512_shuffle_epi8(scb, scale_pattern_vnni(q));
    }
    p->mv = _mm512_load_si512((const void *)mn);
    const __m512i row_idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m256 dd = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)hd));
    p->dwv = _mm512_permutexvar_ps(row_idx, _mm512_castps256_ps512(dd));
    p->dmv = _mm512_permutexvar_ps(_mm512_add_epi32(row_idx, _mm512_set1_epi32(4)),
                                   _mm512_castps256_ps512(dd));
}

/* The activation scales of tokens t0 .. t0 + nt - 1 (nt 1 .. 4) in lanes 0 .. nt - 1, zeros
 * after: a tile's tail never reads past the scales of the step's last token. */
TGT_AVX2 static inline __attribute__((always_inline)) __m128 load_dx4(const float *dx, const int nt)
{
    if (nt == 4)
        return _mm_loadu_ps(dx);
    float v[4] = {0};
    for (int t = 0; t < nt; t++)
        v[t] = dx[t];
    return _mm_loadu_ps(v);
}

/* Super-block k of tokens t0 .. t0 + nt - 1 against the prepared rows (constants once
 * inlined): the sixteen (row, token) results of the header's order in lane 4r + t of *A, *M
 * (q6_K: *M untouched). */
TGT_VNNI static inline __attribute__((always_inline)) void
step_vnni_k(const struct prep_k *p, const struct xd_cpu_qacts *a, int64_t t0, int64_t k,
            const int nt, const int nr, __m512 *A, __m512 *M, const int six)
{
    const int64_t nb = a->nb, cols = nb * XD_QBLOCK;
    __m512i acc[4][NT];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++)
            acc[r][t] = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) {
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const __m512i xv = _mm512_loadu_si512(
                (const void *)(a->q + (t0 + t) * cols + k * XD_QK + 64 * q));
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++)
                acc[r][t] = _mm512_dpwssd_epi32(
                    acc[r][t], _mm512_maddubs_epi16(p->wv[r][q], xv), p->sv[r][q]);
        }
    }
    /* sumi of (r, t) into lane 4r + t: each row's four tokens summed within 128-bit lanes,
     * then the four 128-bit lanes of each row added (a 4 x 4 transpose of lanes) */
    const __m512i w0 = hsum4_vnni(acc[0][0], acc[0][1], acc[0][2], acc[0][3]);
    const __m512i w1 = hsum4_vnni(acc[1][0], acc[1][1], acc[1][2], acc[1][3]);
    const __m512i w2 = hsum4_vnni(acc[2][0], acc[2][1], acc[2][2], acc[2][3]);
    const __m512i w3 = hsum4_vnni(acc[3][0], acc[3][1], acc[3][2], acc[3][3]);
    const __m512i s01 = _mm512_add_epi32(_mm512_shuffle_i32x4(w0, w1, _MM_SHUFFLE(1, 0, 1, 0)),
                                         _mm512_shuffle_i32x4(w0, w1, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512i s23 = _mm512_add_epi32(_mm512_shuffle_i32x4(w2, w3, _MM_SHUFFLE(1, 0, 1, 0)),
                                         _mm512_shuffle_i32x4(w2, w3, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512i sumi = _mm512_add_epi32(_mm512_shuffle_i32x4(s01, s23, _MM_SHUFFLE(2, 0, 2, 0)),
                                          _mm512_shuffle_i32x4(s01, s23, _MM_SHUFFLE(3, 1, 3, 1)));
    /* summ: the rows' minimums (lane 8r + j) against each token's eight sums, pairs in lane
     * 4r + p, then summed within 128-bit lanes into lane 4r + t */
    __m512i mp[NT];
#pragma GCC unroll 4
    for (int t = 0; t < NT; t++)
        mp[t] = t < nt ? _mm512_madd_epi16(p->mv, _mm512_broadcast_i32x4(_mm_loadu_si128(
                                                      (const __m128i *)(a->bs + (t0 + t) * nb +
                                                                        8 * k))))
                       : _mm512_setzero_si512();
    const __m512i summ = hsum4_vnni(mp[0], mp[1], mp[2], mp[3]);
    /* the float steps: lane 4r + t gets d_r * dx_t and dmin_r * dx_t */
    const __m512 dxv = _mm512_broadcast_f32x4(load_dx4(a->d + k * a->ld_s + t0, nt));
    if (six) {
        const __m512i isum = _mm512_sub_epi32(sumi, _mm512_slli_epi32(summ, 5));
        *A = _mm512_fmadd_ps(_mm512_mul_ps(p->dwv, dxv), _mm512_cvtepi32_ps(isum), *A);
        return;
    }
    *A = _mm512_fmadd_ps(_mm512_mul_ps(p->dwv, dxv), _mm512_cvtepi32_ps(sumi), *A);
    *M = _mm512_fmadd_ps(_mm512_mul_ps(p->dmv, dxv), _mm512_cvtepi32_ps(summ), *M);
}

/* Tokens per chunk of the VNNI q4_K rows: each super-block of a row group is unpacked once for
 * all of them (their accumulators, 2 x 64 bytes a 4-token tile, stay in L1). */
#define KCHUNK_TILES 16

/* VNNI, q4_K or q6_K: rows r0 .. r0 + nr - 1 (nr 4 or 1) for every token of a, a chunk of
 * tokens at a time: per super-block the rows are prepared once, then each token tile takes its
 * step. */
TGT_VNNI static inline __attribute__((always_inline)) void
rowgroup_vnni_k(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y, int64_t r0,
                const int nr, const int six)
{
    const int64_t nb = a->nb;
    const size_t row_bytes = xd_dtype_row_bytes(w->dtype, w->cols);
    const uint8_t *wrow[4];
    krows(w, r0, nr, row_bytes, wrow);
    struct prep_k p;
    for (int64_t c0 = 0; c0 < a->n; c0 += KCHUNK_TILES * NT) {
        const int64_t c1 = c0 + KCHUNK_TILES * NT < a->n ? c0 + KCHUNK_TILES * NT : a->n;
        const int n_full = (int)((c1 - c0) / NT), rest = (int)((c1 - c0) % NT);
        __m512 A[KCHUNK_TILES], M[KCHUNK_TILES];
        for (int i = 0; i <= n_full && i < KCHUNK_TILES; i++)
            A[i] = M[i] = _mm512_setzero_ps();
        for (int64_t k = 0; k < nb / 8; k++) {
            prep_vnni_k(wrow, k, nr, row_bytes, &p, six);
            for (int i = 0; i < n_full; i++)
                step_vnni_k(&p, a, c0 + NT * i, k, NT, nr, &A[i], &M[i], six);
            switch (rest) {
            case 3: step_vnni_k(&p, a, c0 + NT * n_full, k, 3, nr, &A[n_full], &M[n_full], six); break;
            case 2: step_vnni_k(&p, a, c0 + NT * n_full, k, 2, nr, &A[n_full], &M[n_full], six); break;
            case 1: step_vnni_k(&p, a, c0 + NT * n_full, k, 1, nr, &A[n_full], &M[n_full], six); break;
            default: break;
            }
        }
        for (int i = 0; i * NT < c1 - c0; i++) {
            _Alignas(64) float res[16];
            _mm512_store_ps(res, _mm512_sub_ps(A[i], M[i]));
            const int nt = c1 - c0 - NT * i < NT ? (int)(c1 - c0 - NT * i) : NT;
            for (int r = 0; r < nr; r++)
                for (int t = 0; t < nt; t++)
                    y[(c0 + NT * i + t) * w->rows + r0 + r] = res[4 * r + t];
        }
    }
}

/* Sub-block j's int16 scale in all sixteen lanes, from scb (the eight scales in both 128-bit
 * lanes). */
TGT_AVX2 static inline __attribute__((always_inline)) __m256i scale_of_avx2(__m256i scb, int j)
{
    const int pair = (2 * j) | (2 * j + 1) << 8;
    return _mm256_shuffle_epi8(scb, _mm256_set1_epi32(pair | pair << 16));
}

/* AVX2, q4_K or q6_K: one row against tokens t0 .. t0 + nt - 1; lane t of the four-lane sums. */
TGT_AVX2 static inline __attribute__((always_inline)) void
tile_avx2_k(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y, int64_t t0,
            int64_t r0, const int nt, const int six)
{
    const int64_t nb = a->nb, cols = nb * XD_QBLOCK;
    const size_t row_bytes = xd_dtype_row_bytes(w->dtype, w->cols);
    const uint8_t *row = (const uint8_t *)w->data + (size_t)r0 * row_bytes;
    __m128 A = _mm_setzero_ps(), M = _mm_setzero_ps();
    for (int64_t k = 0; k < nb / 8; k++) {
        const uint8_t *blk = row + (size_t)k * KBLOCK(six);
        if (nt <= 2) {
            const char *p = (const char *)blk + QPREFETCH_ROWS * row_bytes;
            _mm_prefetch(p, _MM_HINT_T0);
            _mm_prefetch(p + 64, _MM_HINT_T0);
            _mm_prefetch(p + 128, _MM_HINT_T0);
            if (six)
                _mm_prefetch(p + 192, _MM_HINT_T0);
        }
        _Alignas(16) int16_t sc[8], mn[8];
        uint16_t d, dmin;
        kblock_scales_avx2(blk, six, sc, mn, &d, &dmin);
        const __m256i scb = _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i *)sc));
        __m256i acc[NT];
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++)
            acc[t] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int h = 0; h < 4; h++) {
            const int jl = 4 * (h / 2) + h % 2, jh = jl + 2;
            __m256i wl, wh;
            unpack_avx2_k(blk, six, h, &wl, &wh);
            const __m256i sl = scale_of_avx2(scb, jl), sh = scale_of_avx2(scb, jh);
#pragma GCC unroll 4
            for (int t = 0; t < nt; t++) {
                const int8_t *xq = a->q + (t0 + t) * cols + k * XD_QK;
                const __m256i xl = _mm256_loadu_si256((const __m256i *)(xq + 32 * jl));
                const __m256i xh = _mm256_loadu_si256((const __m256i *)(xq + 32 * jh));
                acc[t] = _mm256_add_epi32(
                    acc[t], _mm256_madd_epi16(_mm256_maddubs_epi16(wl, xl), sl));
                acc[t] = _mm256_add_epi32(
                    acc[t], _mm256_madd_epi16(_mm256_maddubs_epi16(wh, xh), sh));
            }
        }
        /* [sum acc0 .. sum acc3] */
        const __m256i h4 = _mm256_hadd_epi32(_mm256_hadd_epi32(acc[0], acc[1]),
                                             _mm256_hadd_epi32(acc[2], acc[3]));
        const __m128i sumi =
            _mm_add_epi32(_mm256_castsi256_si128(h4), _mm256_extracti128_si256(h4, 1));
        const __m128i mv = _mm_load_si128((const __m128i *)mn);
        __m128i mp[NT];
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++)
            mp[t] = t < nt ? _mm_madd_epi16(mv, _mm_loadu_si128((const __m128i *)(a->bs + (t0 + t) * nb + 8 * k)))
                           : _mm_setzero_si128();
        const __m128i summ =
            _mm_hadd_epi32(_mm_hadd_epi32(mp[0], mp[1]), _mm_hadd_epi32(mp[2], mp[3]));
        const __m128 dx4 = load_dx4(a->d + k * a->ld_s + t0, nt);
        if (six) {
            const __m128i isum = _mm_sub_epi32(sumi, _mm_slli_epi32(summ, 5));
            A = _mm_fmadd_ps(_mm_mul_ps(_mm_set1_ps(_cvtsh_ss(d)), dx4), _mm_cvtepi32_ps(isum), A);
            continue;
        }
        A = _mm_fmadd_ps(_mm_mul_ps(_mm_set1_ps(_cvtsh_ss(d)), dx4), _mm_cvtepi32_ps(sumi), A);
        M = _mm_fmadd_ps(_mm_mul_ps(_mm_set1_ps(_cvtsh_ss(dmin)), dx4), _mm_cvtepi32_ps(summ), M);
    }
    float res[4];
    _mm_storeu_ps(res, _mm_sub_ps(A, M));
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++)
        y[(t0 + t) * w->rows + r0] = res[t];
}

/* ---- VNNI, q4_K, token lanes: for steps of many tokens ----
 * The lanes of a vector are sixteen tokens: a row's weights, unpacked once per super-block to
 * bytes, are broadcast four at a time against the sixteen tokens' int8 activations at the same
 * four positions (vpdpbusd), so no lane is summed across and nothing is reduced; each row's
 * sub-block sums are scaled by its sc_j (vpmulld) into sumi, its minimums against the tokens'
 * sub-block sums (vpdpwssd) into summ: the header's integers, then its float steps, lane t. The
 * activations of a group of sixteen tokens are first laid out position-major (QT_LANES tokens
 * per 4-byte position), once per call for all its rows. */
#define QT_LANES 16
/* Tokens a group must have for the token lanes (fewer go to the four-token tiles): a group of
 * 16 costs about what 6 or 7 tokens in tiles do (bench/results/engine-cpu-q4k.md). */
#define QT_MIN_TOKENS 7
/* Bytes of stack a call lays the groups out in; more (one group of 16 tokens above ~3800
 * columns, of 8 tokens above ~7200) is allocated. */
#define QT_STACK_BYTES 65536
/* Token groups laid out (and their accumulators held) at a time. */
#define QT_CHUNK_GROUPS 4

/* qt[(16c + i) * 16 + t] = dword 16c + i of token t's row src + t * ld (16 tokens, 64 bytes
 * of each at a time): 16 x 16 transposes of dwords. */
TGT_VNNI static void transpose_tokens16(const int8_t *src, int64_t ld, int64_t n_dwords,
                                        int32_t *qt)
{
    for (int64_t c = 0; c < n_dwords / 16; c++) {
        __m512 r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++)
            r[i] = _mm512_castsi512_ps(_mm512_loadu_si512((const void *)(src + i * ld + 64 * c)));
        xd_transpose16x16_ps(r);
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++)
            _mm512_store_si512((void *)(qt + 16 * (16 * c + i)), _mm512_castps_si512(r[i]));
    }
}

/* Tokens t0 .. t0 + nt - 1 of a (nt <= lanes) position-major: qt[m * lanes + t] the int8 values
 * at 4m .. 4m + 3 of token t0 + t, bst[p * lanes + t] its sub-block sums 2p and 2p + 1 (two
 * int16), zeros in lanes nt .. lanes - 1; qt is left alone when q_done (transposed already). */
static void lay_out_tokens(const struct xd_cpu_qacts *a, int64_t t0, int nt, int lanes,
                           int q_done, int32_t *qt, int32_t *bst)
{
    const int64_t nb = a->nb, cols = nb * XD_QBLOCK;
    if (nt < lanes) {
        memset(qt, 0, (size_t)cols / 4 * (size_t)lanes * sizeof(int32_t));
        memset(bst, 0, (size_t)nb / 2 * (size_t)lanes * sizeof(int32_t));
    }
    for (int t = 0; t < nt; t++) {
        const int8_t *q = a->q + (t0 + t) * cols;
        const int16_t *bs = a->bs + (t0 + t) * nb;
        for (int64_t m = 0; !q_done && m < cols / 4; m++)
            memcpy(qt + m * lanes + t, q + 4 * m, 4);
        for (int64_t p = 0; p < nb / 2; p++)
            memcpy(bst + p * lanes + t, bs + 2 * p, 4);
    }
}

TGT_VNNI static void lay_out_tokens16(const struct xd_cpu_qacts *a, int64_t t0, int nt,
                                      int32_t *qt, int32_t *bst)
{
    const int64_t cols = a->nb * XD_QBLOCK;
    if (nt == QT_LANES)
        transpose_tokens16(a->q + t0 * cols, cols, cols / 4, qt);
    lay_out_tokens(a, t0, nt, QT_LANES, nt == QT_LANES, qt, bst);
}

/* One super-block of up to four rows as the token-lane steps read it: the weights as bytes
 * (u[r][e] = q_e), sc_j as int32, the minimum pairs (mn_2p | mn_2p+1 << 16), d and dmin. */
struct prep_tl {
    _Alignas(64) uint8_t u[4][XD_QK];
    int32_t sc[4][8], mnp[4][4];
    float dw[4], dm[4];
};

/* Prepares super-block k of rows wrow[0 .. nr - 1] for either lane kernel (256-bit code: a row's
 * few instructions, once for all its token groups). */
TGT_AVX2 static inline __attribute__((always_inline)) void
prep_tl_k(const struct xd_block_q4_k *const *wrow, int64_t k, const int nr, struct prep_tl *p)
{
    const __m256i nib = _mm256_set1_epi8(15);
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++) {
        const struct xd_block_q4_k *blk = wrow[r] + k;
#pragma GCC unroll 4
        for (int h = 0; h < 4; h++) {
            /* bytes 32h .. 32h + 31: weights 128 (h / 2) + 32 (h % 2) + i, and 64 on */
            const __m256i v = _mm256_loadu_si256((const __m256i *)(blk->qs + 32 * h));
            uint8_t *u = p->u[r] + 128 * (h / 2) + 32 * (h % 2);
            _mm256_store_si256((__m256i *)u, _mm256_and_si256(v, nib));
            _mm256_store_si256((__m256i *)(u + 64),
                               _mm256_and_si256(_mm256_srli_epi16(v, 4), nib));
        }
        _Alignas(16) int16_t sc[8], mn[8];
        scales_k_avx2(blk, sc, mn);
        for (int j = 0; j < 8; j++)
            p->sc[r][j] = sc[j];
        for (int j = 0; j < 4; j++)
            p->mnp[r][j] = (int32_t)((uint32_t)(uint16_t)mn[2 * j] |
                                     (uint32_t)(uint16_t)mn[2 * j + 1] << 16);
        p->dw[r] = _cvtsh_ss(blk->d);
        p->dm[r] = _cvtsh_ss(blk->dmin);
    }
}

/* Super-block k of nv token groups (1 or 2; group v's layout at qt + v * sq, bst + v * sb, as
 * lay_out_tokens makes it; dxv[v] its tokens' activation scales) against the prepared rows:
 * A[v][r], M[v][r] lane t as the header's A and M. Two groups share each weight broadcast. */
TGT_VNNI static inline __attribute__((always_inline)) void
step_tl_k(const struct prep_tl *p, const int32_t *qt, int64_t sq, const int32_t *bst, int64_t sb,
          int64_t k, const __m512 *dxv, const int nr, const int nv, __m512 (*A)[4],
          __m512 (*M)[4])
{
    __m512i sumi[2][4], summ[2][4];
#pragma GCC unroll 2
    for (int v = 0; v < 2; v++)
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
            sumi[v][r] = summ[v][r] = _mm512_setzero_si512();
    const int32_t *qk = qt + k * (XD_QK / 4) * QT_LANES;
#pragma GCC unroll 1
    for (int j = 0; j < 8; j++) {
        __m512i acc[2][4];
#pragma GCC unroll 2
        for (int v = 0; v < 2; v++)
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++)
                acc[v][r] = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            const int m = 8 * j + i;
            __m512i xa[2];
#pragma GCC unroll 2
            for (int v = 0; v < nv; v++)
                xa[v] = _mm512_load_si512((const void *)(qk + v * sq + m * QT_LANES));
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) {
                int32_t wd;
                memcpy(&wd, p->u[r] + 4 * m, 4);
                const __m512i wv = _mm512_set1_epi32(wd);
#pragma GCC unroll 2
                for (int v = 0; v < nv; v++)
                    acc[v][r] = _mm512_dpbusd_epi32(acc[v][r], wv, xa[v]);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            const __m512i sc = _mm512_set1_epi32(p->sc[r][j]);
#pragma GCC unroll 2
            for (int v = 0; v < nv; v++)
                sumi[v][r] = _mm512_add_epi32(
                    sumi[v][r], _mm512_mullo_epi32(acc[v][r], sc));
        }
    }
#pragma GCC unroll 4
    for (int pp = 0; pp < 4; pp++) {
#pragma GCC unroll 2
        for (int v = 0; v < nv; v++) {
            const __m512i bv =
                _mm512_load_si512((const void *)(bst + v * sb + (4 * k + pp) * QT_LANES));
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++)
                summ[v][r] = _mm512_dpwssd_epi32(summ[v][r], bv, _mm512_set1_epi32(p->mnp[r][pp]));
        }
    }
#pragma GCC unroll 2
    for (int v = 0; v < nv; v++)
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            A[v][r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(p->dw[r]), dxv[v]),
                                      _mm512_cvtepi32_ps(sumi[v][r]), A[v][r]);
            M[v][r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(p->dm[r]), dxv[v]),
                                      _mm512_cvtepi32_ps(summ[v][r]), M[v][r]);
        }
}

/* Four rows' results for tokens 0 .. nt - 1 (lane t of y0 .. y3) to y (token t's four at
 * y + t * ld): a 4 x 16 transpose, then one 16-byte store a token. */
#define TL_STORE(u, L, i)                                                                        \
    do {                                                                                         \
        if (4 * (L) + (i) < nt)                                                                  \
            _mm_storeu_ps(y + (int64_t)(4 * (L) + (i)) * ld, _mm512_extractf32x4_ps(u, L));      \
    } while (0)
TGT_VNNI static inline __attribute__((always_inline)) void
store_tl_4rows(float *y, int64_t ld, int nt, __m512 y0, __m512 y1, __m512 y2, __m512 y3)
{
    const __m512d a = _mm512_castps_pd(_mm512_unpacklo_ps(y0, y1)),
                  b = _mm512_castps_pd(_mm512_unpackhi_ps(y0, y1)),
                  c = _mm512_castps_pd(_mm512_unpacklo_ps(y2, y3)),
                  d = _mm512_castps_pd(_mm512_unpackhi_ps(y2, y3));
    /* u_i: 128-bit lane L holds the four rows of token 4L + i */
    const __m512 u0 = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c)),
                 u1 = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c)),
                 u2 = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d)),
                 u3 = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    TL_STORE(u0, 0, 0); TL_STORE(u1, 0, 1); TL_STORE(u2, 0, 2); TL_STORE(u3, 0, 3);
    TL_STORE(u0, 1, 0); TL_STORE(u1, 1, 1); TL_STORE(u2, 1, 2); TL_STORE(u3, 1, 3);
    TL_STORE(u0, 2, 0); TL_STORE(u1, 2, 1); TL_STORE(u2, 2, 2); TL_STORE(u3, 2, 3);
    TL_STORE(u0, 3, 0); TL_STORE(u1, 3, 1); TL_STORE(u2, 3, 2); TL_STORE(u3, 3, 3);
}
#undef TL_STORE

/* Rows r0 .. r0 + nr - 1 (nr 4 or 1) for the ng token groups laid out at qt / bst (group g's
 * first token t0 + 16g, its size nt_g: 16, the last one nt_last): each super-block of the rows
 * prepared once for all the groups. */
TGT_VNNI static inline __attribute__((always_inline)) void
rowgroup_tl_k(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y, int64_t r0,
              const int nr, int64_t t0, int ng, int nt_last, const int32_t *qt,
              const int32_t *bst)
{
    const int64_t nb = a->nb, cols = nb * XD_QBLOCK;
    const size_t row_bytes = xd_dtype_row_bytes(w->dtype, w->cols);
    const struct xd_block_q4_k *wrow[4];
    q4k_rows(w, r0, nr, row_bytes, wrow);
    __m512 A[QT_CHUNK_GROUPS][4], M[QT_CHUNK_GROUPS][4];
    for (int g = 0; g < ng; g++)
        for (int r = 0; r < 4; r++)
            A[g][r] = M[g][r] = _mm512_setzero_ps();
    struct prep_tl p;
    for (int64_t k = 0; k < nb / 8; k++) {
        prep_tl_k(wrow, k, nr, &p);
        const int64_t sq = (cols / 4) * QT_LANES, sb = (nb / 2) * QT_LANES;
        for (int g = 0; g < ng; g += 2) {
            __m512 dxv[2];
            for (int v = 0; v < 2 && g + v < ng; v++) {
                const int nt = g + v == ng - 1 ? nt_last : QT_LANES;
                dxv[v] = _mm512_maskz_loadu_ps((__mmask16)((1u << nt) - 1),
                                               a->d + k * a->ld_s + t0 + QT_LANES * (g + v));
            }
            if (g + 1 < ng)
                step_tl_k(&p, qt + g * sq, sq, bst + g * sb, sb, k, dxv, nr, 2, A + g, M + g);
            else
                step_tl_k(&p, qt + g * sq, sq, bst + g * sb, sb, k, dxv, nr, 1, A + g, M + g);
        }
    }
    for (int g = 0; g < ng; g++) {
        const int nt = g == ng - 1 ? nt_last : QT_LANES;
        float *yg = y + (t0 + QT_LANES * g) * w->rows + r0;
        if (nr == 4) {
            store_tl_4rows(yg, w->rows, nt, _mm512_sub_ps(A[g][0], M[g][0]),
                           _mm512_sub_ps(A[g][1], M[g][1]), _mm512_sub_ps(A[g][2], M[g][2]),
                           _mm512_sub_ps(A[g][3], M[g][3]));
            continue;
        }
        _Alignas(64) float res[QT_LANES];
        _mm512_store_ps(res, _mm512_sub_ps(A[g][0], M[g][0]));
        for (int t = 0; t < nt; t++)
            yg[(int64_t)t * w->rows] = res[t];
    }
}

/* VNNI, q4_K or q6_K, one token (decode): four rows a super-block with everything in registers,
 * the scales applied in vpdpwssd as the tiles do, each row's sixteen lanes summed once per
 * super-block; lane r of the four-lane A, M is row r's A, M of the header (q6_K: M stays 0). */
TGT_VNNI static inline __attribute__((always_inline)) void
gemv_vnni_any(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y, int64_t r0,
              int64_t r1, const int six)
{
    const int64_t nb = a->nb;
    const size_t row_bytes = xd_dtype_row_bytes(w->dtype, w->cols);
    __m512i pat[4];
    for (int q = 0; q < 4; q++)
        pat[q] = scale_pattern_vnni(q);
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        const uint8_t *wrow[4];
        krows(w, r, 4, row_bytes, wrow);
        __m128 A = _mm_setzero_ps(), M = _mm_setzero_ps();
        for (int64_t k = 0; k < nb / 8; k++) {
            const int8_t *xq = a->q + k * XD_QK;
            __m512i x[4], acc[4];
            __m128i mp[4];
            uint16_t hd[8];
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++)
                x[q] = _mm512_loadu_si512((const void *)(xq + 64 * q));
            prefetch_group_k(wrow[0], row_bytes, k, six);
            const __m128i bs = _mm_loadu_si128((const __m128i *)(a->bs + 8 * k));
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                const uint8_t *blk = wrow[i] + (size_t)k * KBLOCK(six);
                _Alignas(16) int16_t sc[8], mn[8];
                kblock_scales_vnni(blk, six, sc, mn, &hd[i], &hd[4 + i]);
                const __m512i scb = _mm512_broadcast_i32x4(_mm_load_si128((const __m128i *)sc));
                __m512i wq[4];
                unpack_vnni_k(blk, six, wq);
                __m512i s = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int q = 0; q < 4; q++)
                    s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(wq[q], x[q]),
                                            _mm512_shuffle_epi8(scb, pat[q]));
                acc[i] = s;
                mp[i] = _mm_madd_epi16(_mm_load_si128((const __m128i *)mn), bs);
            }
            /* row i's sixteen lanes into lane i */
            const __m512i h = hsum4_vnni(acc[0], acc[1], acc[2], acc[3]);
            const __m512i h2 = _mm512_add_epi32(h, _mm512_shuffle_i32x4(h, h, _MM_SHUFFLE(1, 0, 3, 2)));
            const __m512i h4 = _mm512_add_epi32(h2, _mm512_shuffle_i32x4(h2, h2, _MM_SHUFFLE(2, 3, 0, 1)));
            const __m128i sumi = _mm512_castsi512_si128(h4);
            const __m128i summ = _mm_hadd_epi32(_mm_hadd_epi32(mp[0], mp[1]),
                                                _mm_hadd_epi32(mp[2], mp[3]));
            const __m256 dd = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)hd));
            const __m128 dx = _mm_set1_ps(a->d[k * a->ld_s]);
            if (six) {
                const __m128i isum = _mm_sub_epi32(sumi, _mm_slli_epi32(summ, 5));
                A = _mm_fmadd_ps(_mm_mul_ps(_mm256_castps256_ps128(dd), dx), _mm_cvtepi32_ps(isum), A);
                continue;
            }
            A = _mm_fmadd_ps(_mm_mul_ps(_mm256_castps256_ps128(dd), dx), _mm_cvtepi32_ps(sumi), A);
            M = _mm_fmadd_ps(_mm_mul_ps(_mm256_extractf128_ps(dd, 1), dx), _mm_cvtepi32_ps(summ), M);
        }
        _mm_storeu_ps(y + r, _mm_sub_ps(A, M));
    }
    for (; r < r1; r++)
        rowgroup_vnni_k(a, w, y, r, 1, six);
}

TGT_VNNI static void gemv_vnni_k(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y,
                                 int64_t r0, int64_t r1)
{
    gemv_vnni_any(a, w, y, r0, r1, 0);
}

/* VNNI, q4_K or q6_K, more than one token: four-row groups of four-token tiles. */
TGT_VNNI static inline __attribute__((always_inline)) void
tiles_vnni_any(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y, int64_t r0,
               int64_t r1, const int six)
{
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4)
        rowgroup_vnni_k(a, w, y, r, 4, six);
    for (; r < r1; r++)
        rowgroup_vnni_k(a, w, y, r, 1, six);
}

TGT_VNNI static void rows_vnni_k_tiles(const struct xd_cpu_qacts *a, const struct xd_matrix *w,
                                       float *y, int64_t r0, int64_t r1)
{
    tiles_vnni_any(a, w, y, r0, r1, 0);
}

/* VNNI, q6_K (the lm_head under q4k): one token in the GEMV, more in the tiles (no token lanes:
 * a step's lm_head rows see one token a sequence). */
TGT_VNNI static void rows_vnni_6k(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y,
                                  int64_t r0, int64_t r1)
{
    if (a->n == 1)
        gemv_vnni_any(a, w, y, r0, r1, 1);
    else
        tiles_vnni_any(a, w, y, r0, r1, 1);
}

/* A token-lane kernel's parts: the tokens' layout, and rows [r0, r1) for ng groups laid out at
 * qt / bst (group g's first token t0 + lanes * g, the last group's size nt_last). */
typedef void (*lay_out_fn)(const struct xd_cpu_qacts *, int64_t, int, int32_t *, int32_t *);
typedef void (*lane_rows_fn)(const struct xd_cpu_qacts *, const struct xd_matrix *, float *,
                             int64_t, int64_t, int64_t, int, int, const int32_t *,
                             const int32_t *);

/* The groups of `lanes` tokens of a (and a last one of at least min_tokens) through a
 * token-lane kernel, up to QT_CHUNK_GROUPS groups laid out at a time (on the stack, or the heap
 * for wide rows); returns how many tokens it did: the first ones, the rest are the caller's (0
 * when there was no memory for the layout, which changes no result). */
static int64_t rows_in_lanes(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y,
                             int64_t r0, int64_t r1, int lanes, int min_tokens, lay_out_fn lay,
                             lane_rows_fn rows)
{
    const int64_t nb = a->nb, cols = nb * XD_QBLOCK;
    const int n_groups = a->n / lanes + (a->n % lanes >= min_tokens);
    int64_t n_lanes = (int64_t)n_groups * lanes < a->n ? (int64_t)n_groups * lanes : a->n;
    if (n_groups == 0)
        return 0;
    const size_t group_bytes = (size_t)(lanes + 1) * (size_t)cols;
    int chunk = (int)(QT_STACK_BYTES / group_bytes);
    chunk = chunk < 1 ? 1 : chunk > QT_CHUNK_GROUPS ? QT_CHUNK_GROUPS : chunk;
    _Alignas(64) unsigned char stack_buf[QT_STACK_BYTES];
    unsigned char *buf = stack_buf, *heap = NULL;
    if ((size_t)chunk * group_bytes > sizeof stack_buf) {
        heap = aligned_alloc(64, (group_bytes + 63) & ~(size_t)63);
        if (!heap)
            return 0;
        buf = heap;
    }
    for (int g0 = 0; g0 < n_groups; g0 += chunk) {
        const int ng = n_groups - g0 < chunk ? n_groups - g0 : chunk;
        const int64_t t0 = (int64_t)lanes * g0;
        const int64_t left = n_lanes - t0 - (int64_t)lanes * (ng - 1);
        const int nt_last = left < lanes ? (int)left : lanes;
        int32_t *qt = (int32_t *)buf, *bst = (int32_t *)(buf + (size_t)ng * lanes * cols);
        for (int g = 0; g < ng; g++)
            lay(a, t0 + (int64_t)lanes * g, g == ng - 1 ? nt_last : lanes,
                qt + g * (cols / 4) * lanes, bst + g * (nb / 2) * lanes);
        rows(a, w, y, r0, r1, t0, ng, nt_last, qt, bst);
    }
    free(heap);
    return n_lanes;
}

/* A token-lane kernel's lane_rows_fn: its row groups of four (then single rows) over rows
 * [r0, r1) for the laid-out groups. */
#define DEFINE_ROWS_TL(name, tgt, rowgroup)                                                       \
    tgt static void name(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y,      \
                         int64_t r0, int64_t r1, int64_t t0, int ng, int nt_last,                \
                         const int32_t *qt, const int32_t *bst)                                  \
    {                                                                                            \
        int64_t r = r0;                                                                          \
        for (; r + 4 <= r1; r += 4)                                                              \
            rowgroup(a, w, y, r, 4, t0, ng, nt_last, qt, bst);                                   \
        for (; r < r1; r++)                                                                      \
            rowgroup(a, w, y, r, 1, t0, ng, nt_last, qt, bst);                                   \
    }

DEFINE_ROWS_TL(rows_tl_vnni, TGT_VNNI, rowgroup_tl_k)

/* One token in the GEMV; groups of sixteen tokens (and a last one of at least QT_MIN_TOKENS) in
 * token lanes, the rest in four-token tiles: the same bits every way. */
TGT_VNNI static void rows_vnni_k(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y,
                                 int64_t r0, int64_t r1)
{
    if (a->n == 1) {
        gemv_vnni_k(a, w, y, r0, r1);
        return;
    }
    const int64_t n_lanes =
        rows_in_lanes(a, w, y, r0, r1, QT_LANES, QT_MIN_TOKENS, lay_out_tokens16, rows_tl_vnni);
    if (n_lanes < a->n) {
        const struct xd_cpu_qacts rest = xd_cpu_qacts_view(a, (int)n_lanes, a->n - (int)n_lanes);
        rows_vnni_k_tiles(&rest, w, y + n_lanes * w->rows, r0, r1);
    }
}

/* AVX2, q4_K, one token (decode): four rows a super-block, the scales applied in vpmaddwd,
 * each row's eight lanes summed once per super-block, the group two ahead prefetched; lane r
 * of the four-lane A, M is row r's A, M of the header. */
TGT_AVX2 static inline __attribute__((always_inline)) void
gemv_avx2_any(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y, int64_t r0,
              int64_t r1, const int six)
{
    const int64_t nb = a->nb;
    const size_t row_bytes = xd_dtype_row_bytes(w->dtype, w->cols);
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        const uint8_t *wrow[4];
        krows(w, r, 4, row_bytes, wrow);
        __m128 A = _mm_setzero_ps(), M = _mm_setzero_ps();
        for (int64_t k = 0; k < nb / 8; k++) {
            const int8_t *xq = a->q + k * XD_QK;
            prefetch_group_k(wrow[0], row_bytes, k, six);
            const __m128i bs = _mm_loadu_si128((const __m128i *)(a->bs + 8 * k));
            __m256i acc[4];
            __m128i mp[4];
            uint16_t hd[8];
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                const uint8_t *blk = wrow[i] + (size_t)k * KBLOCK(six);
                _Alignas(16) int16_t sc[8], mn[8];
                kblock_scales_avx2(blk, six, sc, mn, &hd[i], &hd[4 + i]);
                /* the eight scales in both 128-bit lanes; sub-block j's in every int16 lane by
                 * one vpshufb (a broadcast from memory per sub-block went through a GPR) */
                const __m256i scb =
                    _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i *)sc));
                __m256i s = _mm256_setzero_si256();
#pragma GCC unroll 4
                for (int h = 0; h < 4; h++) {
                    const int jl = 4 * (h / 2) + h % 2, jh = jl + 2;
                    __m256i wl, wh;
                    unpack_avx2_k(blk, six, h, &wl, &wh);
                    const __m256i pl = _mm256_maddubs_epi16(
                        wl, _mm256_loadu_si256((const __m256i *)(xq + 32 * jl)));
                    const __m256i ph = _mm256_maddubs_epi16(
                        wh, _mm256_loadu_si256((const __m256i *)(xq + 32 * jh)));
                    s = _mm256_add_epi32(s, _mm256_madd_epi16(pl, scale_of_avx2(scb, jl)));
                    s = _mm256_add_epi32(s, _mm256_madd_epi16(ph, scale_of_avx2(scb, jh)));
                }
                acc[i] = s;
                mp[i] = _mm_madd_epi16(_mm_load_si128((const __m128i *)mn), bs);
            }
            /* row i's eight lanes into lane i */
            const __m256i h4 = _mm256_hadd_epi32(_mm256_hadd_epi32(acc[0], acc[1]),
                                                 _mm256_hadd_epi32(acc[2], acc[3]));
            const __m128i sumi =
                _mm_add_epi32(_mm256_castsi256_si128(h4), _mm256_extracti128_si256(h4, 1));
            const __m128i summ = _mm_hadd_epi32(_mm_hadd_epi32(mp[0], mp[1]),
                                                _mm_hadd_epi32(mp[2], mp[3]));
            const __m256 dd = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)hd));
            const __m128 dx = _mm_set1_ps(a->d[k * a->ld_s]);
            if (six) {
                const __m128i isum = _mm_sub_epi32(sumi, _mm_slli_epi32(summ, 5));
                A = _mm_fmadd_ps(_mm_mul_ps(_mm256_castps256_ps128(dd), dx), _mm_cvtepi32_ps(isum), A);
                continue;
            }
            A = _mm_fmadd_ps(_mm_mul_ps(_mm256_castps256_ps128(dd), dx), _mm_cvtepi32_ps(sumi), A);
            M = _mm_fmadd_ps(_mm_mul_ps(_mm256_extractf128_ps(dd, 1), dx), _mm_cvtepi32_ps(summ), M);
        }
        _mm_storeu_ps(y + r, _mm_sub_ps(A, M));
    }
    for (; r < r1; r++)
        tile_avx2_k(a, w, y, 0, r, 1, six);
}

TGT_AVX2 static void gemv_avx2_k(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y,
                                 int64_t r0, int64_t r1)
{
    gemv_avx2_any(a, w, y, r0, r1, 0);
}

/* The 1-row tiles of four tokens over rows [r0, r1) (q4_K or q6_K). */
TGT_AVX2 static inline __attribute__((always_inline)) void
tiles_avx2_any(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y, int64_t r0,
               int64_t r1, const int six)
{
    for (int64_t r = r0; r < r1; r++) {
        int64_t t = 0;
        for (; t + NT <= a->n; t += NT)
            tile_avx2_k(a, w, y, t, r, NT, six);
        switch (a->n - t) {
        case 3: tile_avx2_k(a, w, y, t, r, 3, six); break;
        case 2: tile_avx2_k(a, w, y, t, r, 2, six); break;
        case 1: tile_avx2_k(a, w, y, t, r, 1, six); break;
        default: break;
        }
    }
}

/* AVX2, q6_K: one token in the GEMV, more in the 1-row tiles. */
TGT_AVX2 static void rows_avx2_6k(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y,
                                  int64_t r0, int64_t r1)
{
    if (a->n == 1)
        gemv_avx2_any(a, w, y, r0, r1, 1);
    else
        tiles_avx2_any(a, w, y, r0, r1, 1);
}

/* ---- AVX2, q4_K, token lanes: the VNNI token lanes' scheme on lanes of eight tokens ----
 * vpmaddubsw of a row's broadcast weights against eight tokens' activations gives each token two
 * int16 pair sums (at most 2 * 15 * 127 = 3810), added in int16 over a sub-block's eight
 * positions (at most 30480: exact), then scaled by the sub-block's sc_j in vpmaddwd into int32;
 * the minimums, the float steps and the bits as there. One group at a time (sixteen registers). */
#define QT8_LANES 8
/* Tokens a last group of eight must have for the lanes (fewer go to the 1-row tiles): a group
 * costs what 6 tokens in tiles do, with the AVX2 path forced on the AVX-512 machine
 * (bench/results/engine-cpu-q4k.md; not measured on an AVX2-only CPU). */
#define QT8_MIN_TOKENS 6

static void lay_out_tokens8(const struct xd_cpu_qacts *a, int64_t t0, int nt, int32_t *qt,
                            int32_t *bst)
{
    lay_out_tokens(a, t0, nt, QT8_LANES, 0, qt, bst);
}

TGT_AVX2 static inline __attribute__((always_inline)) void
step_tl_k_avx2(const struct prep_tl *p, const int32_t *qt, const int32_t *bst, int64_t k,
               __m256 dxv, const int nr, __m256 *A, __m256 *M)
{
    __m256i sumi[4], summ[4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
        sumi[r] = summ[r] = _mm256_setzero_si256();
    const int32_t *qk = qt + k * (XD_QK / 4) * QT8_LANES;
#pragma GCC unroll 1
    for (int j = 0; j < 8; j++) {
        __m256i acc[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
            acc[r] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            const int m = 8 * j + i;
            const __m256i xa = _mm256_load_si256((const __m256i *)(qk + m * QT8_LANES));
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) {
                int32_t wd;
                memcpy(&wd, p->u[r] + 4 * m, 4);
                acc[r] = _mm256_add_epi16(acc[r],
                                          _mm256_maddubs_epi16(_mm256_set1_epi32(wd), xa));
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++)
            sumi[r] = _mm256_add_epi32(
                sumi[r], _mm256_madd_epi16(acc[r], _mm256_set1_epi16((int16_t)p->sc[r][j])));
    }
#pragma GCC unroll 4
    for (int pp = 0; pp < 4; pp++) {
        const __m256i bv = _mm256_load_si256((const __m256i *)(bst + (4 * k + pp) * QT8_LANES));
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++)
            summ[r] = _mm256_add_epi32(summ[r],
                                       _mm256_madd_epi16(bv, _mm256_set1_epi32(p->mnp[r][pp])));
    }
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++) {
        A[r] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(p->dw[r]), dxv),
                               _mm256_cvtepi32_ps(sumi[r]), A[r]);
        M[r] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(p->dm[r]), dxv),
                               _mm256_cvtepi32_ps(summ[r]), M[r]);
    }
}

TGT_AVX2 static inline __attribute__((always_inline)) void
rowgroup_tl_k_avx2(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y, int64_t r0,
                   const int nr, int64_t t0, int ng, int nt_last, const int32_t *qt,
                   const int32_t *bst)
{
    const int64_t nb = a->nb, cols = nb * XD_QBLOCK;
    const size_t row_bytes = xd_dtype_row_bytes(w->dtype, w->cols);
    const struct xd_block_q4_k *wrow[4];
    q4k_rows(w, r0, nr, row_bytes, wrow);
    __m256 A[QT_CHUNK_GROUPS][4], M[QT_CHUNK_GROUPS][4];
    for (int g = 0; g < ng; g++)
        for (int r = 0; r < 4; r++)
            A[g][r] = M[g][r] = _mm256_setzero_ps();
    struct prep_tl p;
    const int64_t sq = (cols / 4) * QT8_LANES, sb = (nb / 2) * QT8_LANES;
    for (int64_t k = 0; k < nb / 8; k++) {
        if (nr == 4)
            prefetch_group_k(wrow[0], row_bytes, k, 0);
        prep_tl_k(wrow, k, nr, &p);
        for (int g = 0; g < ng; g++) {
            const int nt = g == ng - 1 ? nt_last : QT8_LANES;
            const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            const __m256 dxv = _mm256_maskload_ps(a->d + k * a->ld_s + t0 + QT8_LANES * g,
                                                  _mm256_cmpgt_epi32(_mm256_set1_epi32(nt), lane));
            step_tl_k_avx2(&p, qt + g * sq, bst + g * sb, k, dxv, nr, A[g], M[g]);
        }
    }
    for (int g = 0; g < ng; g++) {
        const int nt = g == ng - 1 ? nt_last : QT8_LANES;
        float *yg = y + (t0 + QT8_LANES * g) * w->rows + r0;
        for (int r = 0; r < nr; r++) {
            _Alignas(32) float res[QT8_LANES];
            _mm256_store_ps(res, _mm256_sub_ps(A[g][r], M[g][r]));
            for (int t = 0; t < nt; t++)
                yg[(int64_t)t * w->rows + r] = res[t];
        }
    }
}

DEFINE_ROWS_TL(rows_tl_avx2, TGT_AVX2, rowgroup_tl_k_avx2)

TGT_AVX2 static void rows_avx2_k(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y,
                                 int64_t r0, int64_t r1)
{
    if (a->n == 1) {
        gemv_avx2_k(a, w, y, r0, r1);
        return;
    }
    const int64_t n_lanes =
        rows_in_lanes(a, w, y, r0, r1, QT8_LANES, QT8_MIN_TOKENS, lay_out_tokens8, rows_tl_avx2);
    if (n_lanes >= a->n)
        return;
    const struct xd_cpu_qacts rest_view = xd_cpu_qacts_view(a, (int)n_lanes, a->n - (int)n_lanes);
    tiles_avx2_any(&rest_view, w, y + n_lanes * w->rows, r0, r1, 0);
}
#endif

/* ---- dispatch ---- */

#ifdef XD_HAVE_X86_QUANT
bool xd_cpu_has_f16c(void)
{
    /* asked once: under a hypervisor every cpuid traps to it (microseconds), and the dispatch
     * asks on every matmul call. 0 unknown, 1 no, 2 yes; a race stores the same answer. */
    static int known;
    int k = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (k == 0) {
        unsigned a, b, c, d;
        k = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) ? 2 : 1;
        __atomic_store_n(&known, k, __ATOMIC_RELAXED);
    }
    return k == 2;
}
#endif

enum xd_quant_path xd_cpu_quant_best_path(enum xd_quant_path max)
{
    enum xd_quant_path best = XD_QUANT_PORTABLE;
#ifdef XD_HAVE_X86_QUANT
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && xd_cpu_has_f16c())
        best = XD_QUANT_AVX2;
    if (best == XD_QUANT_AVX2 && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vnni"))
        best = XD_QUANT_VNNI;
#endif
    return best < max ? best : max;
}

typedef void (*rows_fn)(const struct xd_cpu_qacts *, const struct xd_matrix *, float *, int64_t,
                        int64_t);

static rows_fn rows_for(enum xd_dtype dt, enum xd_quant_path path)
{
    const int q8 = dt == XD_DTYPE_Q8_0;
    if (dt == XD_DTYPE_Q6_K) {
#ifdef XD_HAVE_X86_QUANT
        if (path == XD_QUANT_VNNI)
            return rows_vnni_6k;
        if (path == XD_QUANT_AVX2)
            return rows_avx2_6k;
#endif
        return rows_portable_6k;
    }
    if (dt == XD_DTYPE_Q4_K) {
#ifdef XD_HAVE_X86_QUANT
        if (path == XD_QUANT_VNNI)
            return rows_vnni_k;
        if (path == XD_QUANT_AVX2)
            return rows_avx2_k;
#endif
        return rows_portable_k;
    }
#ifdef XD_HAVE_X86_QUANT
    if (path == XD_QUANT_VNNI)
        return q8 ? rows_vnni_q8 : rows_vnni_q4;
    if (path == XD_QUANT_AVX2)
        return q8 ? rows_avx2_q8 : rows_avx2_q4;
#else
    (void)path;
    (void)q8;
#endif
    return rows_portable;
}

void xd_cpu_matmul_quant_rows(const struct xd_cpu_qacts *a, const struct xd_matrix *w, float *y,
                              int64_t r0, int64_t r1, enum xd_quant_path path)
{
    assert(xd_dtype_is_quant(w->dtype) && a->nb * XD_QBLOCK == w->cols &&
           a->super == xd_quant_is_super(w->dtype));
    assert(0 <= r0 && r0 <= r1 && r1 <= w->rows);
    if (a->n > 0 && r0 < r1)
        rows_for(w->dtype, path)(a, w, y, r0, r1);
}

/* Rows of output per OpenMP task: a multiple of ROW_TILE, about a quarter of a thread's share
 * (a task of q4_K's token lanes lays its tokens out once for all its rows). */
#define ROW_TILE 16
#define TASKS_PER_THREAD 4

static void run_rows(rows_fn fn, const struct xd_cpu_qacts *a, const struct xd_matrix *w,
                     float *y)
{
    const int64_t rows = w->rows;
    int64_t tile = rows / ((int64_t)omp_get_max_threads() * TASKS_PER_THREAD) / ROW_TILE * ROW_TILE;
    tile = tile < ROW_TILE ? ROW_TILE : tile;
    const int64_t n_tiles = (rows + tile - 1) / tile;
#pragma omp parallel for schedule(static) if (rows * w->cols * (int64_t)a->n > 32768)
    for (int64_t i = 0; i < n_tiles; i++) {
        int64_t r_end = i * tile + tile < rows ? i * tile + tile : rows;
        fn(a, w, y, i * tile, r_end);
    }
}

void xd_cpu_matmul_quant(const float *x, int n, const struct xd_matrix *w, float *y,
                         enum xd_quant_path path)
{
    const int64_t cols = w->cols, nb = cols / XD_QBLOCK;
    if (n <= 0)
        return;
    const rows_fn fn = rows_for(w->dtype, path);
    /* the step's activations, quantized once for every row: 40 bytes per 32 values (q4_K
     * 34.5) */
    void *buf = malloc(xd_cpu_qacts_bytes(w->dtype, n, cols));
    if (!buf) {
        /* no memory for the scratch: one token at a time from the stack, the same results */
        for (int t = 0; t < n; t++) {
            float one_buf[nb * (2 + XD_QBLOCK / sizeof(float))];
            struct xd_cpu_qacts one;
            xd_cpu_qacts_init(one_buf, w->dtype, 1, cols, &one);
            xd_cpu_qacts_quantize(&one, x + (int64_t)t * cols, 0, 1);
            run_rows(fn, &one, w, y + (int64_t)t * w->rows);
        }
        return;
    }
    struct xd_cpu_qacts a;
    xd_cpu_qacts_init(buf, w->dtype, n, cols, &a);
    /* each token alone: the split over threads changes no byte */
#pragma omp parallel for schedule(static) if ((int64_t)n * cols >= 65536)
    for (int t = 0; t < n; t++)
        xd_cpu_qacts_quantize(&a, x, t, t + 1);
    run_rows(fn, &a, w, y);
    free(buf);
}
