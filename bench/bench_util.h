/* What the kernel benchmarks share: a fixed-seed xorshift32 for their synthetic weights and
 * activations (every run and every program the same inputs), and the trailing token-count
 * arguments (N...). Header-only; bench/ programs only. */
#ifndef XD_BENCH_UTIL_H
#define XD_BENCH_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint32_t bench_rng = 2048u;

static inline uint32_t bench_rand_u32(void)
{
    bench_rng ^= bench_rng << 13;
    bench_rng ^= bench_rng >> 17;
    bench_rng ^= bench_rng << 5;
    return bench_rng;
}

/* Uniform in [-0.5, 0.5). */
static inline float bench_rand_f(void)
{
    return (float)(bench_rand_u32() >> 8) / (float)(1u << 24) - 0.5f;
}

/* Token counts from argv[first ..] (at most 16; default 1 8 64 512) into ns, their number into
 * *n_ns and the largest into *max_n. Returns 0, or 2 with a message naming prog when a count
 * is not a positive integer. */
static inline int bench_token_counts(int argc, char **argv, int first, const char *prog, int ns[16],
                                     int *n_ns, int *max_n)
{
    static const int defaults[4] = {1, 8, 64, 512};
    *n_ns = 0;
    if (argc <= first)
        for (int i = 0; i < 4; i++)
            ns[(*n_ns)++] = defaults[i];
    for (int i = first; i < argc && *n_ns < 16; i++) {
        char *end;
        const long v = strtol(argv[i], &end, 10);
        if (*end || end == argv[i] || v < 1 || v > 1 << 20) {
            fprintf(stderr, "%s: token count '%s' is not an integer from 1 to %d\n", prog,
                    argv[i], 1 << 20);
            return 2;
        }
        ns[(*n_ns)++] = (int)v;
    }
    *max_n = 1;
    for (int i = 0; i < *n_ns; i++)
        *max_n = ns[i] > *max_n ? ns[i] : *max_n;
    return 0;
}

#endif
