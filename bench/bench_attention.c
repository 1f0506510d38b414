/* bench-attention: one layer's CPU attention (engine/cpu/attention.c) for a whole-prompt prefill
 * and for one decode token after it, blocked and the reference loop alternating in one run; the
 * median of the process's CPU seconds (with --threads 1, the kernel's own time even on a loaded
 * machine) and of the wall time.
 * Usage: bench-attention [--prompt-len N] [--heads N] [--kv-heads N] [--head-dim N]
 *                        [--block-size N] [--repeats N] [--threads N] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "config/options.h"
#include "engine/base/clock.h"
#include "engine/cpu/attention.h"

struct bench_opts {
    int prompt_len, heads, kv_heads, head_dim, block_size, repeats, threads;
};

#define B(f) offsetof(struct bench_opts, f)
static const struct xd_opt bench_table[] = {
    {"prompt-len", XD_OPT_INT, B(prompt_len), 1, 65536, NULL, "prompt tokens (4096)"},
    {"heads", XD_OPT_INT, B(heads), 1, 1024, NULL, "query heads (16)"},
    {"kv-heads", XD_OPT_INT, B(kv_heads), 1, 1024, NULL, "key/value heads (4)"},
    {"head-dim", XD_OPT_INT, B(head_dim), 2, 1024, NULL, "head dimension (64)"},
    {"block-size", XD_OPT_INT, B(block_size), 1, 4096, NULL, "KV block size (16)"},
    {"repeats", XD_OPT_INT, B(repeats), 1, 1000, NULL, "runs per figure; the median is kept (3)"},
    {"threads", XD_OPT_INT, B(threads), 0, 4096, NULL, "CPU threads (0: all cores)"},
};

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Seconds of one call of fn (0: blocked, 1: reference) on b, as CPU time and wall time; decode
 * figures are the mean of 64 calls. */
static void time_call(const struct xd_cpu_attn *a, const struct xd_batch *b, const float *q,
                      float *out, int32_t *items, int which, int calls, double *ret_cpu,
                      double *ret_wall)
{
    const double c0 = cpu_now(), w0 = xd_now();
    for (int i = 0; i < calls; i++) {
        if (which == 0)
            xd_cpu_attention(a, b, q, out, items);
        else
            xd_cpu_attention_reference(a, b, q, out);
    }
    *ret_cpu = (cpu_now() - c0) / calls;
    *ret_wall = (xd_now() - w0) / calls;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    struct bench_opts o = {.prompt_len = 4096, .heads = 16, .kv_heads = 4, .head_dim = 64,
                           .block_size = 16, .repeats = 3};
    struct xd_err err = {{0}};
    if (xd_opts_parse(bench_table, sizeof bench_table / sizeof bench_table[0], &o, argc - 1,
                      argv + 1, &err) < 0 || o.heads % o.kv_heads != 0 || o.repeats > 64) {
        fprintf(stderr, "bench-attention: %s\n",
                err.msg[0] ? err.msg : "--heads must be a multiple of --kv-heads, --repeats <= 64");
        xd_opts_usage(stderr, bench_table, sizeof bench_table / sizeof bench_table[0]);
        return 2;
    }
#ifdef _OPENMP
    if (o.threads > 0)
        omp_set_num_threads(o.threads);
    const int threads = omp_get_max_threads();
#else
    const int threads = 1;
#endif
    const int n = o.prompt_len, bs = o.block_size, n_blocks = (n + 1 + bs - 1) / bs;
    const size_t qd = (size_t)o.heads * o.head_dim, kvd = (size_t)o.kv_heads * o.head_dim;
    const size_t rows = (size_t)n_blocks * bs;
    float *k = malloc(sizeof(float) * rows * kvd), *v = malloc(sizeof(float) * rows * kvd);
    float *q = malloc(sizeof(float) * (size_t)n * qd), *out = malloc(sizeof(float) * n * qd);
    int32_t *table = malloc(sizeof(int32_t) * n_blocks), items[2];
    if (!k || !v || !q || !out || !table) {
        fprintf(stderr, "bench-attention: out of memory\n");
        return 1;
    }
    uint32_t x = 1;
    for (size_t i = 0; i < rows * kvd; i++) {
        x = x * 1664525u + 1013904223u;
        k[i] = (float)(x >> 8) / 16777216.0f - 0.5f;
        v[i] = (float)(x >> 9) / 8388608.0f - 0.5f;
    }
    for (size_t i = 0; i < (size_t)n * qd; i++) {
        x = x * 1664525u + 1013904223u;
        q[i] = (float)(x >> 8) / 16777216.0f - 0.5f;
    }
    for (int i = 0; i < n_blocks; i++) /* blocks in reverse: the cache is paged */
        table[i] = n_blocks - 1 - i;
    const struct xd_cpu_attn a = {.k_cache = k, .v_cache = v, .block_size = bs,
                                  .n_heads = o.heads, .n_kv_heads = o.kv_heads,
                                  .head_dim = o.head_dim,
                                  .scale = 1.0f / sqrtf((float)o.head_dim)};
    struct xd_seq_chunk pre = {NULL, n, 0, table, n_blocks, XD_LOGITS_LAST};
    struct xd_seq_chunk dec = {NULL, 1, n, table, n_blocks, XD_LOGITS_LAST};
    struct xd_batch bp = {&pre, 1}, bd = {&dec, 1};
    /* [figure][repeat]: cpu and wall of blocked prefill, reference prefill, blocked decode,
     * reference decode */
    double tc[4][64], tw[4][64];
    for (int r = 0; r < o.repeats; r++) {
        time_call(&a, &bp, q, out, items, 0, 1, &tc[0][r], &tw[0][r]);
        time_call(&a, &bp, q, out, items, 1, 1, &tc[1][r], &tw[1][r]);
        time_call(&a, &bd, q, out, items, 0, 64, &tc[2][r], &tw[2][r]);
        time_call(&a, &bd, q, out, items, 1, 64, &tc[3][r], &tw[3][r]);
    }
    double mc[4], mw[4];
    for (int i = 0; i < 4; i++) {
        qsort(tc[i], (size_t)o.repeats, sizeof(double), cmp_double);
        qsort(tw[i], (size_t)o.repeats, sizeof(double), cmp_double);
        mc[i] = tc[i][o.repeats / 2];
        mw[i] = tw[i][o.repeats / 2];
    }
    printf("{\"prompt_len\": %d, \"heads\": %d, \"kv_heads\": %d, \"head_dim\": %d, "
           "\"block_size\": %d, \"threads\": %d, \"repeats\": %d, \"kernel\": \"%s\",\n"
           " \"prefill_cpu_ms\": {\"blocked\": %.2f, \"reference\": %.2f, \"speedup\": %.2f},\n"
           " \"prefill_wall_ms\": {\"blocked\": %.2f, \"reference\": %.2f},\n"
           " \"decode_cpu_ms\": {\"blocked\": %.4f, \"reference\": %.4f, \"speedup\": %.2f},\n"
           " \"decode_wall_ms\": {\"blocked\": %.4f, \"reference\": %.4f}}\n",
           n, o.heads, o.kv_heads, o.head_dim, bs, threads, o.repeats,
           xd_cpu_vector_path() == XD_CPU_VEC_AVX512 ? "avx512"
           : xd_cpu_vector_path() == XD_CPU_VEC_AVX2 ? "avx2"
                                                    : "portable", 1e3 * mc[0],
           1e3 * mc[1], mc[1] / mc[0], 1e3 * mw[0], 1e3 * mw[1], 1e3 * mc[2], 1e3 * mc[3],
           mc[3] / mc[2], 1e3 * mw[2], 1e3 * mw[3]);
    free(k);
    free(v);
    free(q);
    free(out);
    free(table);
    return 0;
}
