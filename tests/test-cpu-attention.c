/* The blocked CPU attention (engine/cpu/attention.c): its exponential against libm, its output
 * against softmax attention in double precision, and the same bits for a query whatever its
 * chunking, batch and vector path (portable, AVX2, AVX-512), over prompts of several key
 * blocks. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cpu/attention.h"
#include "tests/test.h"

/* A test problem: one sequence of n positions whose K/V rows sit in a shuffled block table of
 * a cache with room for a second copy (the batch mate), q for every position. */
struct problem {
    int n, bs, n_heads, n_kv, hd, window;
    float sinks[16];     /* (n_heads,), n_heads <= 16 */
    bool with_sinks;
    int n_blocks;        /* blocks of one copy */
    int32_t table[64];   /* (n_blocks,) copy one */
    int32_t table2[64];  /* (n_blocks,) copy two, other blocks */
    float *k, *v;        /* (2 * n_blocks, n_kv, hd, bs) keys, (2 * n_blocks, n_kv, bs, hd) values */
    float *q;            /* (n, n_heads * hd) */
};

/* Where head h of position j starts in the value cache through block table table, and where
 * dimension d of its key is in the key cache (attention.h's layouts: a cache block holds each kv
 * head's block_size value rows together, and its keys transposed, (head_dim, block_size)). */
static size_t kv_at(const struct problem *p, const int32_t *table, int j, int h)
{
    return (((size_t)table[j / p->bs] * p->n_kv + h) * p->bs + j % p->bs) * p->hd;
}

static size_t k_at(const struct problem *p, const int32_t *table, int j, int h, int d)
{
    return (((size_t)table[j / p->bs] * p->n_kv + h) * p->hd + d) * p->bs + j % p->bs;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static float frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static void problem_init(struct problem *p, int n, int bs, int n_heads, int n_kv, int hd,
                         int window, bool sinks)
{
    *p = (struct problem){.n = n, .bs = bs, .n_heads = n_heads, .n_kv = n_kv, .hd = hd,
                          .window = window, .with_sinks = sinks};
    p->n_blocks = (n + bs - 1) / bs;
    assert(n_heads <= 16 && p->n_blocks <= 64 && n <= 256 && "the problem's arrays are fixed");
    /* copy one in odd blocks from the top down, copy two in even blocks */
    for (int i = 0; i < p->n_blocks; i++) {
        p->table[i] = 2 * (p->n_blocks - 1 - i) + 1;
        p->table2[i] = 2 * i;
    }
    const size_t kvd = (size_t)n_kv * hd, rows = (size_t)2 * p->n_blocks * bs;
    p->k = malloc(sizeof(float) * rows * kvd);
    p->v = malloc(sizeof(float) * rows * kvd);
    p->q = malloc(sizeof(float) * (size_t)n * n_heads * hd);
    for (size_t i = 0; i < rows * kvd; i++) {
        p->k[i] = 2.0f * frand();
        p->v[i] = frand();
    }
    for (size_t i = 0; i < (size_t)n * n_heads * hd; i++)
        p->q[i] = 2.0f * frand();
    for (int h = 0; h < n_heads; h++)
        p->sinks[h] = frand();
    /* copy two holds the same keys and values as copy one */
    for (int j = 0; j < n; j++)
        for (int h = 0; h < n_kv; h++) {
            const size_t r1 = kv_at(p, p->table, j, h), r2 = kv_at(p, p->table2, j, h);
            memcpy(p->v + r2, p->v + r1, sizeof(float) * hd);
            for (int d = 0; d < hd; d++)
                p->k[k_at(p, p->table2, j, h, d)] = p->k[k_at(p, p->table, j, h, d)];
        }
}

static void problem_free(struct problem *p)
{
    free(p->k);
    free(p->v);
    free(p->q);
}

static struct xd_cpu_attn attn_of(const struct problem *p)
{
    return (struct xd_cpu_attn){.k_cache = p->k, .v_cache = p->v, .block_size = p->bs,
                                .n_heads = p->n_heads, .n_kv_heads = p->n_kv, .head_dim = p->hd,
                                .scale = 1.0f / sqrtf((float)p->hd), .window = p->window,
                                .sinks = p->with_sinks ? p->sinks : NULL};
}

/* out (n, n_heads * hd): positions 0 .. n - 1 attended in chunks of the given sizes (summing to
 * n; one call per chunk), on path. */
static void run_chunks(const struct problem *p, const int *chunks, int n_chunks,
                       enum xd_cpu_vec path, float *out)
{
    const struct xd_cpu_attn a = attn_of(p);
    const size_t qd = (size_t)p->n_heads * p->hd;
    int32_t items[4];
    int pos = 0;
    for (int i = 0; i < n_chunks; i++) {
        struct xd_seq_chunk sc = {NULL, chunks[i], pos, p->table, p->n_blocks, XD_LOGITS_ALL};
        struct xd_batch b = {&sc, 1};
        xd_cpu_attention_on(&a, &b, p->q + pos * qd, out + pos * qd, items, path);
        pos += chunks[i];
    }
}

/* The reference: softmax attention in double, every query alone. */
static void run_double(const struct problem *p, double *out)
{
    const int hd = p->hd, group = p->n_heads / p->n_kv;
    const size_t qd = (size_t)p->n_heads * hd;
    for (int t = 0; t < p->n; t++)
        for (int h = 0; h < p->n_heads; h++) {
            const float *q = p->q + t * qd + (size_t)h * hd;
            const int first = p->window > 0 && t - p->window + 1 > 0 ? t - p->window + 1 : 0;
            double s[256], mx = p->with_sinks ? p->sinks[h] : -INFINITY;
            for (int j = first; j <= t; j++) {
                double d = 0.0;
                for (int i = 0; i < hd; i++)
                    d += (double)q[i] * p->k[k_at(p, p->table, j, h / group, i)];
                s[j - first] = d / sqrt((double)hd);
                mx = s[j - first] > mx ? s[j - first] : mx;
            }
            double sum = p->with_sinks ? exp(p->sinks[h] - mx) : 0.0;
            double *o = out + t * qd + (size_t)h * hd;
            for (int i = 0; i < hd; i++)
                o[i] = 0.0;
            for (int j = first; j <= t; j++) {
                const double w = exp(s[j - first] - mx);
                const float *v = p->v + kv_at(p, p->table, j, h / group);
                sum += w;
                for (int i = 0; i < hd; i++)
                    o[i] += w * v[i];
            }
            for (int i = 0; i < hd; i++)
                o[i] /= sum;
        }
}

static void test_exp_matches_libm(void)
{
    double worst = 0.0;
    for (int i = 0; i <= 200000; i++) {
        const float x = -87.0f * (float)i / 200000.0f;
        const double want = exp((double)x), got = xd_cpu_attn_exp(x);
        const double rel = fabs(got - want) / want;
        worst = rel > worst ? rel : worst;
    }
    CHECK(worst < 3e-7, "worst relative error %g over [-87, 0]", worst);
    CHECK(xd_cpu_attn_exp(0.0f) == 1.0f, "exp(0) = %a", (double)xd_cpu_attn_exp(0.0f));
    CHECK(xd_cpu_attn_exp(-INFINITY) == 0.0f, "exp(-inf) = %g", (double)xd_cpu_attn_exp(-INFINITY));
    CHECK(xd_cpu_attn_exp(-100.0f) == 0.0f, "exp(-100) = %g", (double)xd_cpu_attn_exp(-100.0f));
    CHECK(fabs(xd_cpu_attn_exp(1.0f) - 2.718281828) < 1e-6, "exp(1) = %.9g",
          (double)xd_cpu_attn_exp(1.0f));
}

/* max |got - want| over every output */
static double max_diff(const float *got, const double *want, size_t n)
{
    double d = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double e = fabs((double)got[i] - want[i]);
        d = e > d ? e : d;
    }
    return d;
}

static void check_against_double(const char *what, int n, int bs, int n_heads, int n_kv, int hd,
                                 int window, bool sinks)
{
    struct problem p;
    problem_init(&p, n, bs, n_heads, n_kv, hd, window, sinks);
    const size_t len = (size_t)n * n_heads * hd;
    float *got = malloc(sizeof(float) * len);
    double *want = malloc(sizeof(double) * len);
    run_double(&p, want);
    const enum xd_cpu_vec paths[3] = {XD_CPU_VEC_PORTABLE, XD_CPU_VEC_AVX2, XD_CPU_VEC_AVX512};
    for (int i = 0; i < 3; i++) {
        run_chunks(&p, &n, 1, paths[i], got);
        const double d = max_diff(got, want, len);
        CHECK(d < 2e-6, "%s (path %d): max diff %g from double-precision attention", what, i, d);
    }
    free(got);
    free(want);
    problem_free(&p);
}

static void test_matches_double_precision(void)
{
    check_against_double("causal, GQA 4:2, head_dim 24, blocks of 4", 70, 4, 4, 2, 24, 0, false);
    check_against_double("causal, MHA, head_dim 64, blocks of 16", 53, 16, 2, 2, 64, 0, false);
    check_against_double("window 20, sinks, GQA 8:2, head_dim 40", 90, 8, 8, 2, 40, 20, true);
    check_against_double("window 4, sinks (gpt_oss's fixture shape)", 37, 4, 4, 2, 24, 4, true);
    check_against_double("MQA 8:1, head_dim 8", 33, 16, 8, 1, 8, 0, false);
}

/* Whole, in chunks that end inside key blocks, one token at a time, batched with another
 * sequence and on both paths: the same bits for every query. */
static void check_tilings(const char *what, int n, int bs, int n_heads, int n_kv, int hd,
                          int window, bool sinks)
{
    struct problem p;
    problem_init(&p, n, bs, n_heads, n_kv, hd, window, sinks);
    const size_t qd = (size_t)n_heads * hd, len = (size_t)n * qd;
    float *whole = malloc(sizeof(float) * len), *got = malloc(sizeof(float) * len);
    run_chunks(&p, &n, 1, XD_CPU_VEC_AVX512, whole);

    int ones[256] = {0};
    for (int i = 0; i < n; i++)
        ones[i] = 1;
    run_chunks(&p, ones, n, XD_CPU_VEC_AVX512, got);
    CHECK(memcmp(got, whole, sizeof(float) * len) == 0, "%s: decode differs from whole", what);

    /* chunks of 7, 23, 1, 9, ...: boundaries at 7, 30, 31, 40: inside blocks of 16 */
    int cuts[64], n_cuts = 0, left = n;
    const int sizes[4] = {7, 23, 1, 9};
    for (int i = 0; left > 0; i++) {
        cuts[n_cuts] = sizes[i % 4] < left ? sizes[i % 4] : left;
        left -= cuts[n_cuts++];
    }
    run_chunks(&p, cuts, n_cuts, XD_CPU_VEC_AVX512, got);
    CHECK(memcmp(got, whole, sizeof(float) * len) == 0, "%s: chunks of 7, 23, 1, 9 differ",
          what);

    run_chunks(&p, &n, 1, XD_CPU_VEC_PORTABLE, got);
    CHECK(memcmp(got, whole, sizeof(float) * len) == 0,
          "%s: the portable path differs from the AVX-512 one", what);
    run_chunks(&p, cuts, n_cuts, XD_CPU_VEC_PORTABLE, got);
    CHECK(memcmp(got, whole, sizeof(float) * len) == 0,
          "%s: the portable path in chunks differs from AVX-512 whole", what);
    run_chunks(&p, &n, 1, XD_CPU_VEC_AVX2, got);
    CHECK(memcmp(got, whole, sizeof(float) * len) == 0,
          "%s: the AVX2 path differs from the AVX-512 one", what);
    run_chunks(&p, ones, n, XD_CPU_VEC_AVX2, got);
    CHECK(memcmp(got, whole, sizeof(float) * len) == 0,
          "%s: the AVX2 path one token at a time differs from AVX-512 whole", what);

    /* batched: a 5-token chunk of copy two (positions 11 ..15), then the last 29 positions of
     * copy one, then one decode token of copy two at position n - 1 */
    const int tail = 29 < n ? 29 : n;
    struct xd_seq_chunk sc[3] = {
        {NULL, 5, 11, p.table2, p.n_blocks, XD_LOGITS_ALL},
        {NULL, tail, n - tail, p.table, p.n_blocks, XD_LOGITS_ALL},
        {NULL, 1, n - 1, p.table2, p.n_blocks, XD_LOGITS_ALL},
    };
    const int n_tok = 5 + tail + 1;
    float *qb = malloc(sizeof(float) * n_tok * qd), *ob = malloc(sizeof(float) * n_tok * qd);
    memcpy(qb, p.q + 11 * qd, sizeof(float) * 5 * qd);
    memcpy(qb + 5 * qd, p.q + (n - tail) * qd, sizeof(float) * tail * qd);
    memcpy(qb + (5 + tail) * qd, p.q + (n - 1) * qd, sizeof(float) * qd);
    struct xd_batch b = {sc, 3};
    const struct xd_cpu_attn a = attn_of(&p);
    int32_t items[4];
    xd_cpu_attention(&a, &b, qb, ob, items);
    CHECK(memcmp(ob, whole + 11 * qd, sizeof(float) * 5 * qd) == 0,
          "%s: batched chunk of positions 11..15 differs", what);
    CHECK(memcmp(ob + 5 * qd, whole + (n - tail) * qd, sizeof(float) * tail * qd) == 0,
          "%s: batched last %d positions differ", what, tail);
    CHECK(memcmp(ob + (5 + tail) * qd, whole + (n - 1) * qd, sizeof(float) * qd) == 0,
          "%s: batched decode token differs", what);
    free(qb);
    free(ob);
    free(whole);
    free(got);
    problem_free(&p);
}

static void test_same_bits_whatever_the_tiling(void)
{
    check_tilings("causal, GQA 4:2, head_dim 24, blocks of 4", 70, 4, 4, 2, 24, 0, false);
    check_tilings("causal, GQA 16:4, head_dim 64, blocks of 16", 150, 16, 16, 4, 64, 0, false);
    check_tilings("window 20, sinks, GQA 8:2, head_dim 40", 90, 8, 8, 2, 40, 20, true);
    check_tilings("MHA 2:2, head_dim 136 (rows 60 a tile), blocks of 32", 97, 32, 2, 2, 136, 0,
                  false);
}

/* A bf16 or f16 cache (--kv-dtype): the attention widens what it reads, so on every path, whole
 * or one token at a time, and in the reference loop, it gives the bits of the f32 attention over
 * a cache holding the same rounded values. */
static void check_16bit_cache(const char *what, enum xd_dtype dt, int n, int bs, int n_heads,
                              int n_kv, int hd, int window, bool sinks)
{
    struct problem p;
    problem_init(&p, n, bs, n_heads, n_kv, hd, window, sinks);
    const size_t rows = (size_t)2 * p.n_blocks * bs, elems = rows * (size_t)n_kv * hd;
    uint16_t *k16 = malloc(sizeof(uint16_t) * elems), *v16 = malloc(sizeof(uint16_t) * elems);
    for (size_t i = 0; i < elems; i++) {
        k16[i] = dt == XD_DTYPE_BF16 ? xd_f32_to_bf16(p.k[i]) : xd_f32_to_f16(p.k[i]);
        v16[i] = dt == XD_DTYPE_BF16 ? xd_f32_to_bf16(p.v[i]) : xd_f32_to_f16(p.v[i]);
        /* the f32 problem now holds the rounded values */
        p.k[i] = dt == XD_DTYPE_BF16 ? xd_bf16_to_f32(k16[i]) : xd_f16_to_f32(k16[i]);
        p.v[i] = dt == XD_DTYPE_BF16 ? xd_bf16_to_f32(v16[i]) : xd_f16_to_f32(v16[i]);
    }
    const size_t qd = (size_t)n_heads * hd, len = (size_t)n * qd;
    float *want = malloc(sizeof(float) * len), *got = malloc(sizeof(float) * len);
    run_chunks(&p, &n, 1, XD_CPU_VEC_AVX512, want);
    struct xd_cpu_attn a = attn_of(&p);
    a.k_cache = k16;
    a.v_cache = v16;
    a.kv_dtype = dt;
    const enum xd_cpu_vec paths[3] = {XD_CPU_VEC_AVX512, XD_CPU_VEC_AVX2, XD_CPU_VEC_PORTABLE};
    const char *names[3] = {"AVX-512", "AVX2", "portable"};
    int32_t items[4];
    for (int pi = 0; pi < 3; pi++)
        for (int one = 0; one < 2; one++) {
            memset(got, 0, sizeof(float) * len);
            int pos = 0;
            for (int i = 0; i < (one ? n : 1); i++) {
                const int len_i = one ? 1 : n;
                struct xd_seq_chunk sc = {NULL, len_i, pos, p.table, p.n_blocks, XD_LOGITS_ALL};
                struct xd_batch b = {&sc, 1};
                xd_cpu_attention_on(&a, &b, p.q + pos * qd, got + pos * qd, items, paths[pi]);
                pos += len_i;
            }
            CHECK(memcmp(got, want, sizeof(float) * len) == 0,
                  "%s: the %s path%s over the 16-bit cache differs from f32 over its values",
                  what, names[pi], one ? " one token at a time" : "");
        }
    /* the reference loop too */
    struct xd_seq_chunk sc = {NULL, n, 0, p.table, p.n_blocks, XD_LOGITS_ALL};
    struct xd_batch b = {&sc, 1};
    const struct xd_cpu_attn a32 = attn_of(&p);
    xd_cpu_attention_reference(&a32, &b, p.q, want);
    xd_cpu_attention_reference(&a, &b, p.q, got);
    CHECK(memcmp(got, want, sizeof(float) * len) == 0,
          "%s: the reference loop over the 16-bit cache differs from f32 over its values", what);
    free(k16);
    free(v16);
    free(want);
    free(got);
    problem_free(&p);
}

static void test_16bit_cache_is_f32_over_its_values(void)
{
    check_16bit_cache("bf16, GQA 16:4, head_dim 64, blocks of 16", XD_DTYPE_BF16, 150, 16, 16, 4,
                      64, 0, false);
    check_16bit_cache("f16, GQA 16:4, head_dim 64, blocks of 16", XD_DTYPE_F16, 150, 16, 16, 4,
                      64, 0, false);
    check_16bit_cache("bf16, window 20, sinks, GQA 8:2, head_dim 40, blocks of 8", XD_DTYPE_BF16,
                      90, 8, 8, 2, 40, 20, true);
    check_16bit_cache("f16, GQA 4:2, head_dim 24, blocks of 4", XD_DTYPE_F16, 70, 4, 4, 2, 24, 0,
                      false);
}

int main(void)
{
    printf("avx-512 path: %s; avx2 path: %s\n",
           __builtin_cpu_supports("avx512f") ? "compared with the others"
                                             : "absent on this CPU (the next path runs instead)",
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
               ? "compared with the others"
               : "absent on this CPU (the portable path runs instead)");
    RUN(test_exp_matches_libm);
    RUN(test_matches_double_precision);
    RUN(test_same_bits_whatever_the_tiling);
    RUN(test_16bit_cache_is_f32_over_its_values);
    return test_summary();
}
