/* MXFP4 matmul for the CPU backend: e2m1 codes decoded in registers, f32 activations, one fixed
 * summation order per output element (see mxfp4_kernels.h) on the AVX-512F, AVX2 and portable
 * paths. */
#include "engine/cpu/mxfp4_kernels.h"

#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "engine/model/mxfp4.h"

#define TOK_TILE 4 /* tokens per pass over a row's blocks: each block is decoded once for them */

/* 2^(e - 127) from its bits: e << 23 for e >= 1, the subnormal 2^-127 for e = 0. */
static inline float scale_of(uint8_t e)
{
    uint32_t bits = e ? (uint32_t)e << 23 : 0x00400000u;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* The fixed tree of mxfp4_kernels.h over sixteen lanes. */
static inline float reduce16(float *L)
{
    for (int k = 8; k >= 1; k /= 2)
        for (int i = 0; i < k; i++)
            L[i] += L[i + k];
    return L[0];
}

/* xd (cols,) = x with each block's even columns first, then its odd ones: xd[32b + j] =
 * x[32b + 2j], xd[32b + 16 + j] = x[32b + 2j + 1], so lane j meets byte j of a block. */
static void deinterleave(const float *x, int64_t cols, float *xd)
{
    for (int64_t b = 0; b < cols / 32; b++)
        for (int j = 0; j < 16; j++) {
            xd[32 * b + j] = x[32 * b + 2 * j];
            xd[32 * b + 16 + j] = x[32 * b + 2 * j + 1];
        }
}

/* out (nt,) = one row (nb blocks) against nt deinterleaved tokens xd (nt, cols). */
static void row_portable(const struct xd_block_mxfp4 *row, int64_t nb, const float *xd,
                         int64_t cols, int nt, float *out)
{
    for (int t = 0; t < nt; t++) {
        const float *xt = xd + (size_t)t * cols;
        float L[16] = {0};
        for (int64_t b = 0; b < nb; b++) {
            const float s = scale_of(row[b].e);
            for (int j = 0; j < 16; j++) {
                const uint8_t q = row[b].qs[j];
                L[j] = fmaf(xd_mxfp4_values[q & 15] * s, xt[32 * b + j], L[j]);
                L[j] = fmaf(xd_mxfp4_values[q >> 4] * s, xt[32 * b + 16 + j], L[j]);
            }
        }
        out[t] = reduce16(L);
    }
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void row_avx512(const struct xd_block_mxfp4 *row,
                                                          int64_t nb, const float *xd,
                                                          int64_t cols, int nt, float *out)
{
    const __m512 lut = _mm512_loadu_ps(xd_mxfp4_values);
    const __m512i low4 = _mm512_set1_epi32(15);
    __m512 acc[TOK_TILE];
    for (int t = 0; t < TOK_TILE; t++)
        acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)row[b].qs));
        const __m512 s = _mm512_set1_ps(scale_of(row[b].e));
        /* value * s is exact (a power of two times at most two significant bits) */
        const __m512 wlo = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(q, low4), lut), s);
        const __m512 whi = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), lut), s);
        for (int t = 0; t < nt; t++) {
            const float *xt = xd + (size_t)t * cols + 32 * b;
            acc[t] = _mm512_fmadd_ps(wlo, _mm512_loadu_ps(xt), acc[t]);
            acc[t] = _mm512_fmadd_ps(whi, _mm512_loadu_ps(xt + 16), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) {
        float L[16];
        _mm512_storeu_ps(L, acc[t]);
        out[t] = reduce16(L);
    }
}

#define ROW_TILE 4 /* rows per AVX-512 tile: 4 rows x 4 tokens of 16-lane accumulators */

/* out[r * TOK_TILE + t] for ROW_TILE rows (row r at rows + r * nb) against nt tokens: the same
 * per-element steps as row_avx512, more independent accumulators. */
__attribute__((target("avx512f"))) static void rows4_avx512(const struct xd_block_mxfp4 *rows,
                                                            int64_t nb, const float *xd,
                                                            int64_t cols, int nt, float *out)
{
    const __m512 lut = _mm512_loadu_ps(xd_mxfp4_values);
    const __m512i low4 = _mm512_set1_epi32(15);
    __m512 acc[ROW_TILE][TOK_TILE];
    for (int r = 0; r < ROW_TILE; r++)
        for (int t = 0; t < TOK_TILE; t++)
            acc[r][t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512 wlo[ROW_TILE], whi[ROW_TILE];
        /* few tokens (decode): the weights stream from memory in rows too short for the
         * hardware prefetcher; ask for this block of the next tile's rows (a hint: past the
         * matrix it loads nothing; 2x on a 72 MB matrix at one token) */
        if (nt <= 2)
            for (int r = 0; r < ROW_TILE; r++)
                _mm_prefetch((const char *)((uintptr_t)(rows + (ROW_TILE + r) * nb + b)),
                             _MM_HINT_T0);
        for (int r = 0; r < ROW_TILE; r++) {
            const struct xd_block_mxfp4 *blk = rows + r * nb + b;
            const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk->qs));
            const __m512 s = _mm512_set1_ps(scale_of(blk->e));
            wlo[r] = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(q, low4), lut), s);
            whi[r] = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), lut), s);
        }
        for (int t = 0; t < nt; t++) {
            const float *xt = xd + (size_t)t * cols + 32 * b;
            const __m512 xe = _mm512_loadu_ps(xt), xo = _mm512_loadu_ps(xt + 16);
            for (int r = 0; r < ROW_TILE; r++) {
                acc[r][t] = _mm512_fmadd_ps(wlo[r], xe, acc[r][t]);
                acc[r][t] = _mm512_fmadd_ps(whi[r], xo, acc[r][t]);
            }
        }
    }
    for (int r = 0; r < ROW_TILE; r++)
        for (int t = 0; t < nt; t++) {
            float L[16];
            _mm512_storeu_ps(L, acc[r][t]);
            out[r * TOK_TILE + t] = reduce16(L);
        }
}

/* Lanes 0-7 and 8-15 of the sixteen as two 8-lane halves; value(c) is the magnitude table at
 * c & 7 with the sign bit set for c >= 8 (exactly xd_mxfp4_values, -0.0 included). */
__attribute__((target("avx2,fma"))) static inline __m256 decode8(__m256i c, __m256 mag)
{
    const __m256 v = _mm256_permutevar8x32_ps(mag, _mm256_and_si256(c, _mm256_set1_epi32(7)));
    const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(c, _mm256_set1_epi32(8)), 28);
    return _mm256_xor_ps(v, _mm256_castsi256_ps(sign));
}

__attribute__((target("avx2,fma"))) static void row_avx2(const struct xd_block_mxfp4 *row,
                                                         int64_t nb, const float *xd,
                                                         int64_t cols, int nt, float *out)
{
    const __m256 mag = _mm256_loadu_ps(xd_mxfp4_values);
    const __m256i low4 = _mm256_set1_epi32(15);
    __m256 acc[TOK_TILE][2];
    for (int t = 0; t < TOK_TILE; t++)
        acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const __m256 s = _mm256_set1_ps(scale_of(row[b].e));
        __m256 wlo[2], whi[2];
        for (int h = 0; h < 2; h++) {
            const __m256i q =
                _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row[b].qs + 8 * h)));
            wlo[h] = _mm256_mul_ps(decode8(_mm256_and_si256(q, low4), mag), s);
            whi[h] = _mm256_mul_ps(decode8(_mm256_srli_epi32(q, 4), mag), s);
        }
        for (int t = 0; t < nt; t++) {
            const float *xt = xd + (size_t)t * cols + 32 * b;
            for (int h = 0; h < 2; h++) {
                acc[t][h] = _mm256_fmadd_ps(wlo[h], _mm256_loadu_ps(xt + 8 * h), acc[t][h]);
                acc[t][h] = _mm256_fmadd_ps(whi[h], _mm256_loadu_ps(xt + 16 + 8 * h), acc[t][h]);
            }
        }
    }
    for (int t = 0; t < nt; t++) {
        float L[16];
        _mm256_storeu_ps(L, acc[t][0]);
        _mm256_storeu_ps(L + 8, acc[t][1]);
        out[t] = reduce16(L);
    }
}
#endif

void xd_cpu_mxfp4_prep(const float *x, int n, int64_t cols, float *xd)
{
    for (int t = 0; t < n; t++)
        deinterleave(x + (size_t)t * cols, cols, xd + (size_t)t * cols);
}

/* Rows [r0, r1) of y against the deinterleaved tokens xd (n, cols): four-row tiles from r0 on
 * the AVX-512 path, then single rows; the same steps per element either way. */
static void mx_rows(const float *xd, int n, const struct xd_matrix *w, float *y, int64_t r0,
                    int64_t r1, enum xd_mxfp4_path path)
{
    const int64_t rows = w->rows, cols = w->cols, nb = cols / XD_MXFP4_BLOCK;
    const struct xd_block_mxfp4 *wb = w->data;
    int64_t r = r0;
#if defined(__x86_64__)
    if (path == XD_MXFP4_AVX512)
        for (; r + ROW_TILE <= r1; r += ROW_TILE)
            for (int t0 = 0; t0 < n; t0 += TOK_TILE) {
                const int nt = n - t0 < TOK_TILE ? n - t0 : TOK_TILE;
                float out[ROW_TILE * TOK_TILE];
                rows4_avx512(wb + r * nb, nb, xd + (size_t)t0 * cols, cols, nt, out);
                for (int i = 0; i < ROW_TILE; i++)
                    for (int t = 0; t < nt; t++)
                        y[(size_t)(t0 + t) * rows + r + i] = out[i * TOK_TILE + t];
            }
#endif
    for (; r < r1; r++) {
        const struct xd_block_mxfp4 *row = wb + r * nb;
        for (int t0 = 0; t0 < n; t0 += TOK_TILE) {
            const int nt = n - t0 < TOK_TILE ? n - t0 : TOK_TILE;
            float out[TOK_TILE];
#if defined(__x86_64__)
            if (path == XD_MXFP4_AVX512)
                row_avx512(row, nb, xd + (size_t)t0 * cols, cols, nt, out);
            else if (path == XD_MXFP4_AVX2)
                row_avx2(row, nb, xd + (size_t)t0 * cols, cols, nt, out);
            else
#else
            (void)path;
#endif
                row_portable(row, nb, xd + (size_t)t0 * cols, cols, nt, out);
            for (int t = 0; t < nt; t++)
                y[(size_t)(t0 + t) * rows + r] = out[t];
        }
    }
}

void xd_cpu_matmul_mxfp4_rows(const float *xd, int n, const struct xd_matrix *w, float *y,
                              int64_t r0, int64_t r1, enum xd_mxfp4_path path)
{
    assert(w->dtype == XD_DTYPE_MXFP4 && 0 <= r0 && r0 <= r1 && r1 <= w->rows);
    mx_rows(xd, n, w, y, r0, r1, path);
}

/* Rows of output per OpenMP task: a multiple of the four-row tile. */
#define PAR_TILE 16

void xd_cpu_matmul_mxfp4(const float *x, int n, const struct xd_matrix *w, float *y,
                         enum xd_mxfp4_path path)
{
    const int64_t rows = w->rows, cols = w->cols, nb = cols / XD_MXFP4_BLOCK;
    float *xd = malloc((size_t)(n > 0 ? n : 1) * (size_t)cols * sizeof(float));
    if (!xd) {
        /* no scratch: the same order, one token at a time on the stack */
        for (int t = 0; t < n; t++) {
            float xt[cols];
            deinterleave(x + (size_t)t * cols, cols, xt);
            for (int64_t r = 0; r < rows; r++)
                row_portable((const struct xd_block_mxfp4 *)w->data + r * nb, nb, xt, cols, 1,
                             y + (size_t)t * rows + r);
        }
        return;
    }
    xd_cpu_mxfp4_prep(x, n, cols, xd);
    const int64_t n_tiles = (rows + PAR_TILE - 1) / PAR_TILE;
#pragma omp parallel for schedule(static) if (rows * cols * (int64_t)n > 32768)
    for (int64_t tile = 0; tile < n_tiles; tile++) {
        const int64_t r0 = tile * PAR_TILE, r1 = r0 + PAR_TILE < rows ? r0 + PAR_TILE : rows;
        mx_rows(xd, n, w, y, r0, r1, path);
    }
    free(xd);
}
