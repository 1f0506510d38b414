/* Matmul over q8_0 / q4_1 weights: activations quantized per block to int8, integer dot products with AVX-512 VNNI, AVX2 or portable C, one summation order on every path. */
#include "engine/cpu/quant_kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/quant.h"

/* One block of 32 activations quantized to int8 (llama.cpp's q8_1 class, with f32 scales). */
struct act_block {
    float d;                 /* max |x| / 127 */
    float s;                 /* d * sum(q) (f32), the q4_1 minimum's partner */
    int8_t q[XD_QBLOCK];     /* (32,) round(x / d) */
};

/* xq (n, cols / 32) = x (n, cols) quantized per block; the same C on every path. */
static void quantize_acts(const float *x, int n, int64_t cols, struct act_block *xq)
{
    const int64_t nb = cols / XD_QBLOCK;
    for (int64_t t = 0; t < n; t++) {
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + t * cols + b * XD_QBLOCK;
            struct act_block *o = &xq[t * nb + b];
            float amax = 0.0f;
            for (int j = 0; j < XD_QBLOCK; j++)
                amax = fmaxf(amax, fabsf(xb[j]));
            const float d = amax / 127.0f;
            const float id = d != 0.0f ? 1.0f / d : 0.0f;
            int sum = 0;
            for (int j = 0; j < XD_QBLOCK; j++) {
                o->q[j] = (int8_t)roundf(xb[j] * id);
                sum += o->q[j];
            }
            o->d = d;
            o->s = d * (float)sum;
        }
    }
}

/* ---- the portable path: the order of the header, written out ---- */

static float tree8(const float *a)
{
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

static float dot_q8_portable(const struct xd_block_q8_0 *w, const struct act_block *x, int64_t nb)
{
    float acc[8] = {0};
    for (int64_t b = 0; b < nb; b++) {
        const float s = xd_f16_to_f32(w[b].d) * x[b].d;
        for (int j = 0; j < 8; j++) {
            int p = 0;
            for (int i = 0; i < 4; i++)
                p += w[b].qs[4 * j + i] * x[b].q[4 * j + i];
            acc[j] = fmaf(s, (float)p, acc[j]);
        }
    }
    return tree8(acc);
}

static float dot_q4_portable(const struct xd_block_q4_1 *w, const struct act_block *x, int64_t nb)
{
    float acc[8] = {0}, macc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const float s = xd_f16_to_f32(w[b].d) * x[b].d;
        for (int j = 0; j < 8; j++) {
            int p = 0;
            for (int i = 0; i < 4; i++) {
                const int k = 4 * j + i;
                const int q = k < 16 ? w[b].qs[k] & 15 : w[b].qs[k - 16] >> 4;
                p += q * x[b].q[k];
            }
            acc[j] = fmaf(s, (float)p, acc[j]);
        }
    }
    for (int64_t b = 0; b < nb; b++)
        macc = fmaf(xd_f16_to_f32(w[b].m), x[b].s, macc);
    return tree8(acc) + macc;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
static void rows_portable(const struct act_block *xq, int n, const struct xd_matrix *w, float *y,
                          int64_t r0, int64_t r1)
{
    const int64_t nb = w->cols / XD_QBLOCK;
    for (int64_t r = r0; r < r1; r++)
        for (int t = 0; t < n; t++) {
            const struct act_block *xt = xq + (int64_t)t * nb;
            y[(int64_t)t * w->rows + r] =
                w->dtype == XD_DTYPE_Q8_0
                    ? dot_q8_portable((const struct xd_block_q8_0 *)w->data + r * nb, xt, nb)
                    : dot_q4_portable((const struct xd_block_q4_1 *)w->data + r * nb, xt, nb);
        }
}

/* ---- x86-64 vector paths ----
 * The eight int32 lanes of one 256-bit dot product are the p_j of the header (lane j sums
 * products 4j .. 4j + 3, as vpdpbusd and vpmaddubsw + vpmaddwd both group them); the float
 * accumulator keeps the same eight lanes, and the final reduction is the header's tree. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define XD_HAVE_X86_QUANT 1

#define TGT_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TGT_VNNI __attribute__((target("avx512f,avx512vl,avx512bw,avx512vnni,avx2,fma,f16c")))

#define FMT_Q8 0
#define FMT_Q4 1
#define NT_MAX 4 /* tokens per register tile */
#define NR_MAX 4 /* rows per register tile */

TGT_AVX2 static inline __attribute__((always_inline)) float reduce8(__m256 a)
{
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    return _mm_cvtss_f32(s1);
}

/* Integer dot of u8 a with s8 b: eight int32 sums of four products each. vnni is a constant
 * once inlined. (vpmaddubsw cannot saturate here: |a| <= 127 and |b| <= 127.) */
#define DEFINE_DOT(name, tgt, vnni_expr)                                                         \
    tgt static inline __attribute__((always_inline)) __m256i name(__m256i a, __m256i b)          \
    {                                                                                            \
        vnni_expr;                                                                               \
    }
DEFINE_DOT(dot_u8s8_avx2, TGT_AVX2,
           return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)))
DEFINE_DOT(dot_u8s8_vnni, TGT_VNNI, return _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b))

/* The weights of block b of one row as 32 bytes in element order: q8 signed, q4 0..15. */
#define DEFINE_LOADW(name, tgt)                                                                  \
    tgt static inline __attribute__((always_inline)) __m256i name(const void *row, int64_t b,    \
                                                                  const int fmt, float *ret_d,   \
                                                                  float *ret_m)                  \
    {                                                                                            \
        if (fmt == FMT_Q8) {                                                                     \
            const struct xd_block_q8_0 *blk = (const struct xd_block_q8_0 *)row + b;             \
            *ret_d = _cvtsh_ss(blk->d);                                                          \
            *ret_m = 0.0f;                                                                       \
            return _mm256_loadu_si256((const __m256i *)blk->qs);                                 \
        }                                                                                        \
        const struct xd_block_q4_1 *blk = (const struct xd_block_q4_1 *)row + b;                 \
        *ret_d = _cvtsh_ss(blk->d);                                                              \
        *ret_m = _cvtsh_ss(blk->m);                                                              \
        __m128i q = _mm_loadu_si128((const __m128i *)blk->qs);                                   \
        __m128i lo = _mm_and_si128(q, _mm_set1_epi8(15));                                        \
        __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), _mm_set1_epi8(15));                     \
        return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);                       \
    }
DEFINE_LOADW(load_w_avx2, TGT_AVX2)
DEFINE_LOADW(load_w_vnni, TGT_VNNI)

/* y[t][r0 + i] for tokens t0 .. t0 + nt - 1, rows r0 .. r0 + nr - 1 (constants once inlined). */
#define DEFINE_TILE(name, tgt, loadw, dot)                                                       \
    tgt static inline __attribute__((always_inline)) void                                       \
    name(const struct act_block *xq, const struct xd_matrix *w, float *y, int64_t t0,           \
         int64_t r0, const int nt, const int nr, const int fmt)                                  \
    {                                                                                            \
        const int64_t nb = w->cols / XD_QBLOCK;                                                  \
        const size_t row_bytes = xd_dtype_row_bytes(w->dtype, w->cols);                          \
        const char *wrow[NR_MAX];                                                                \
        __m256 acc[NT_MAX][NR_MAX];                                                              \
        float macc[NT_MAX][NR_MAX];                                                              \
        _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++)                                    \
            wrow[r] = (const char *)w->data + (size_t)(r0 + r) * row_bytes;                      \
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++)                                    \
            _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++)                                \
        {                                                                                        \
            acc[t][r] = _mm256_setzero_ps();                                                     \
            macc[t][r] = 0.0f;                                                                   \
        }                                                                                        \
        for (int64_t b = 0; b < nb; b++) {                                                       \
            __m256i wv[NR_MAX], wa[NR_MAX];                                                      \
            float dw[NR_MAX], mw[NR_MAX];                                                        \
            _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++)                                \
            {                                                                                    \
                wv[r] = loadw(wrow[r], b, fmt, &dw[r], &mw[r]);                                  \
                wa[r] = fmt == FMT_Q8 ? _mm256_sign_epi8(wv[r], wv[r]) : wv[r];                  \
            }                                                                                    \
            _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++)                                \
            {                                                                                    \
                const struct act_block *xb = &xq[(t0 + t) * nb + b];                             \
                const __m256i xv = _mm256_loadu_si256((const __m256i *)xb->q);                   \
                const float dx = xb->d;                                                          \
                _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++)                            \
                {                                                                                \
                    __m256i p = fmt == FMT_Q8 ? dot(wa[r], _mm256_sign_epi8(xv, wv[r]))          \
                                              : dot(wv[r], xv);                                  \
                    acc[t][r] = _mm256_fmadd_ps(_mm256_set1_ps(dw[r] * dx),                      \
                                                _mm256_cvtepi32_ps(p), acc[t][r]);               \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        if (fmt == FMT_Q4)                                                                       \
            for (int64_t b = 0; b < nb; b++)                                                     \
                _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++)                            \
                {                                                                                \
                    const float m = _cvtsh_ss(((const struct xd_block_q4_1 *)wrow[r])[b].m);     \
                    _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++)                        \
                        macc[t][r] = __builtin_fmaf(m, xq[(t0 + t) * nb + b].s, macc[t][r]);     \
                }                                                                                \
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++)                                    \
            _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++)                                \
                y[(t0 + t) * w->rows + r0 + r] = reduce8(acc[t][r]) + macc[t][r];                \
    }
DEFINE_TILE(tile_avx2, TGT_AVX2, load_w_avx2, dot_u8s8_avx2)
DEFINE_TILE(tile_vnni, TGT_VNNI, load_w_vnni, dot_u8s8_vnni)

/* Rows r0 .. r1 - 1 against every token: nr-row groups, each over the tokens in tiles of
 * NT_MAX (the weights of a group stay in L1 while every token passes). */
#define DEFINE_ROWS(name, tgt, tile, NR)                                                         \
    tgt static inline __attribute__((always_inline)) void                                       \
    name##_g(const struct act_block *xq, int n, const struct xd_matrix *w, float *y, int64_t r, \
             const int nr, const int fmt)                                                        \
    {                                                                                            \
        int64_t t = 0;                                                                           \
        for (; t + NT_MAX <= n; t += NT_MAX)                                                     \
            tile(xq, w, y, t, r, NT_MAX, nr, fmt);                                               \
        switch (n - t) {                                                                         \
        case 3: tile(xq, w, y, t, r, 3, nr, fmt); break;                                         \
        case 2: tile(xq, w, y, t, r, 2, nr, fmt); break;                                         \
        case 1: tile(xq, w, y, t, r, 1, nr, fmt); break;                                         \
        default: break;                                                                          \
        }                                                                                        \
    }                                                                                            \
    tgt static void name(const struct act_block *xq, int n, const struct xd_matrix *w, float *y, \
                         int64_t r0, int64_t r1)                                                 \
    {                                                                                            \
        int64_t r = r0;                                                                          \
        if (w->dtype == XD_DTYPE_Q8_0) {                                                         \
            for (; r + NR <= r1; r += NR)                                                        \
                name##_g(xq, n, w, y, r, NR, FMT_Q8);                                            \
            for (; r < r1; r++)                                                                  \
                name##_g(xq, n, w, y, r, 1, FMT_Q8);                                             \
        } else {                                                                                 \
            for (; r + NR <= r1; r += NR)                                                        \
                name##_g(xq, n, w, y, r, NR, FMT_Q4);                                            \
            for (; r < r1; r++)                                                                  \
                name##_g(xq, n, w, y, r, 1, FMT_Q4);                                             \
        }                                                                                        \
    }
DEFINE_ROWS(rows_avx2, TGT_AVX2, tile_avx2, 2)
DEFINE_ROWS(rows_vnni, TGT_VNNI, tile_vnni, 4)
#endif

/* ---- dispatch ---- */

enum xd_quant_path xd_cpu_quant_best_path(enum xd_quant_path max)
{
    enum xd_quant_path best = XD_QUANT_PORTABLE;
#ifdef XD_HAVE_X86_QUANT
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c"))
        best = XD_QUANT_AVX2;
    if (best == XD_QUANT_AVX2 && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vnni"))
        best = XD_QUANT_VNNI;
#endif
    return best < max ? best : max;
}

/* Rows of output per OpenMP task. */
#define ROW_TILE 16

typedef void (*rows_fn)(const struct act_block *, int, const struct xd_matrix *, float *, int64_t,
                        int64_t);

static void run_rows(rows_fn fn, const struct act_block *xq, int n, const struct xd_matrix *w,
                     float *y)
{
    const int64_t rows = w->rows, n_tiles = (rows + ROW_TILE - 1) / ROW_TILE;
#pragma omp parallel for schedule(static) if (rows * w->cols * (int64_t)n > 32768)
    for (int64_t tile = 0; tile < n_tiles; tile++) {
        int64_t r_end = tile * ROW_TILE + ROW_TILE < rows ? tile * ROW_TILE + ROW_TILE : rows;
        fn(xq, n, w, y, tile * ROW_TILE, r_end);
    }
}

void xd_cpu_matmul_quant(const float *x, int n, const struct xd_matrix *w, float *y,
                         enum xd_quant_path path)
{
    const int64_t cols = w->cols, nb = cols / XD_QBLOCK;
    if (n <= 0)
        return;
    rows_fn fn = rows_portable;
#ifdef XD_HAVE_X86_QUANT
    if (path == XD_QUANT_VNNI)
        fn = rows_vnni;
    else if (path == XD_QUANT_AVX2)
        fn = rows_avx2;
#else
    (void)path;
#endif
    /* the step's activations, quantized once for every row: 40 bytes per 32 values */
    struct act_block *xq = malloc(sizeof *xq * (size_t)n * (size_t)nb);
    if (!xq) {
        /* no memory for the scratch: one token at a time from the stack, the same results */
        for (int t = 0; t < n; t++) {
            struct act_block one[nb];
            quantize_acts(x + (int64_t)t * cols, 1, cols, one);
            run_rows(fn, one, 1, w, y + (int64_t)t * w->rows);
        }
        return;
    }
    quantize_acts(x, n, cols, xq);
    run_rows(fn, xq, n, w, y);
    free(xq);
}
