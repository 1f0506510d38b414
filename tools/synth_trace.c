/* xd-synth-trace: writes a synthetic routing trace (the format of --record-routing) for the
 * planner and the scheduler's replay when no real trace is at hand. Routing is skewed (each
 * layer ranks its experts by a Zipf law with its own random order) and temporally correlated
 * (each token keeps each of its previous token's experts with probability --stickiness), which
 * is what real MoE routing looks like and what a cache benefits from; --zipf 0 --stickiness 0
 * gives uniform routing, which flatters nothing. No predictions are written: replay with
 * `--predictor previous` or none. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/options.h"
#include "engine/experts/routing_trace.h"

struct synth_trace_opts {
    const char *out;
    int layers, experts, top_k;
    int requests;      /* concurrent sequences, one decode token each per step */
    int steps;
    int prompt;        /* prompt tokens of each request, in one prefill step first */
    float zipf;        /* popularity exponent; 0: uniform */
    float stickiness;  /* probability that a token keeps an expert of its previous token */
    long long expert_bytes;
    long long seed;
    bool help;
};

#define SO(f) offsetof(struct synth_trace_opts, f)
static const struct xd_opt table[] = {
    {"out", XD_OPT_STRING, SO(out), 0, 0, NULL, "trace file to write (required)"},
    {"layers", XD_OPT_INT, SO(layers), 1, XD_TRACE_MAX_LAYERS, NULL, "MoE layers (default 16)"},
    {"experts", XD_OPT_INT, SO(experts), 1, XD_TRACE_MAX_EXPERTS, NULL,
     "experts per layer (default 64)"},
    {"top-k", XD_OPT_INT, SO(top_k), 1, XD_TRACE_MAX_TOP_K, NULL, "experts per token (default 8)"},
    {"requests", XD_OPT_INT, SO(requests), 1, 4096, NULL, "concurrent requests (default 1)"},
    {"steps", XD_OPT_INT, SO(steps), 1, 1 << 24, NULL, "decode steps (default 256)"},
    {"prompt", XD_OPT_INT, SO(prompt), 0, 1 << 16, NULL,
     "prompt tokens per request, prefilled first (default 0)"},
    {"zipf", XD_OPT_FLOAT, SO(zipf), 0, 8, NULL, "popularity skew exponent (default 1.0)"},
    {"stickiness", XD_OPT_FLOAT, SO(stickiness), 0, 1, NULL,
     "probability of keeping each previous-token expert (default 0.5)"},
    {"expert-bytes", XD_OPT_INT64, SO(expert_bytes), 0, 1e15, NULL,
     "bytes of one expert (default 12582912: OLMoE-1B-7B in bf16)"},
    {"seed", XD_OPT_INT64, SO(seed), 0, 1e18, NULL, "random seed (default 1)"},
    {"help", XD_OPT_FLAG, SO(help), 0, 0, NULL, "print this help"},
};
#define N_OPTS (sizeof table / sizeof table[0])

static uint64_t rng_state;

static uint64_t next_u64(void) /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double uniform(void) { return (double)(next_u64() >> 11) * 0x1.0p-53; }

/* Draws an expert from the layer's cumulative popularity (cdf, n). */
static int draw(const double *cdf, int n)
{
    double u = uniform() * cdf[n - 1];
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Fills chosen (top_k distinct experts) for one token at one layer: first the previous token's
 * experts each kept with probability stickiness, then fresh draws from the popularity law. */
static void route_token(const struct synth_trace_opts *o, const double *cdf, const int32_t *prev,
                        int32_t *chosen)
{
    int n = 0;
    for (int k = 0; prev && k < o->top_k; k++)
        if (uniform() < o->stickiness)
            chosen[n++] = prev[k];
    while (n < o->top_k) {
        int e = draw(cdf, o->experts);
        bool dup = false;
        for (int i = 0; i < n && !dup; i++)
            dup = chosen[i] == e;
        if (!dup)
            chosen[n++] = e;
    }
}

int main(int argc, char **argv)
{
    struct synth_trace_opts o = {.layers = 16, .experts = 64, .top_k = 8, .requests = 1,
                                 .steps = 256, .zipf = 1.0f, .stickiness = 0.5f,
                                 .expert_bytes = 12582912, .seed = 1};
    struct xd_err err = {{0}};
    if (xd_opts_parse(table, N_OPTS, &o, argc - 1, argv + 1, &err) < 0) {
        fprintf(stderr, "xd-synth-trace: %s\n", err.msg);
        return 2;
    }
    if (o.help || !o.out) {
        printf("usage: xd-synth-trace --out FILE [OPTIONS]\n\n");
        xd_opts_usage(stdout, table, N_OPTS);
        return o.help ? 0 : 2;
    }
    if (o.top_k > o.experts) {
        fprintf(stderr, "xd-synth-trace: --top-k %d is above --experts %d\n", o.top_k, o.experts);
        return 2;
    }
    rng_state = (uint64_t)o.seed;
    const int L = o.layers, E = o.experts, K = o.top_k;
    /* per layer: a random permutation of experts ranked by Zipf popularity */
    double *cdf = malloc(sizeof(double) * L * E);
    int *perm = malloc(sizeof(int) * E);
    size_t per = (size_t)L * K;
    int max_tok = o.requests * (o.prompt > 1 ? o.prompt : 1);
    int32_t *prev = malloc(sizeof(int32_t) * o.requests * per);   /* last token per request */
    int32_t *experts = malloc(sizeof(int32_t) * max_tok * per);
    float *weights = malloc(sizeof(float) * max_tok * per);
    uint64_t *reqs = malloc(sizeof(uint64_t) * max_tok);
    uint32_t *pos = malloc(sizeof(uint32_t) * max_tok);
    if (!cdf || !perm || !prev || !experts || !weights || !reqs || !pos) {
        fprintf(stderr, "xd-synth-trace: out of memory\n");
        return 1;
    }
    for (int l = 0; l < L; l++) {
        for (int e = 0; e < E; e++)
            perm[e] = e;
        for (int e = E - 1; e > 0; e--) {
            int j = (int)(next_u64() % (uint64_t)(e + 1)), t = perm[e];
            perm[e] = perm[j];
            perm[j] = t;
        }
        double *c = cdf + (size_t)l * E, acc = 0;
        double *w = malloc(sizeof(double) * E);
        for (int r = 0; r < E; r++)
            w[perm[r]] = 1.0 / pow(r + 1, o.zipf);
        for (int e = 0; e < E; e++)
            c[e] = acc += w[e];
        free(w);
    }
    for (size_t i = 0; i < (size_t)max_tok * per; i++)
        weights[i] = 1.0f / K;

    struct xd_trace_header h = {.n_moe_layers = L, .top_k = K, .n_experts = E,
                                .expert_bytes = (uint64_t)o.expert_bytes};
    struct xd_trace_writer *w;
    if (xd_trace_writer_create(o.out, &h, true, &w, &err) < 0) {
        fprintf(stderr, "xd-synth-trace: %s\n", err.msg);
        return 1;
    }
    uint64_t step = 0;
    int rc = XD_OK;
    for (int phase = o.prompt > 0 ? 0 : 1; phase <= 1 && rc == XD_OK; phase++) {
        int n_steps = phase == 0 ? 1 : o.steps;
        for (int s = 0; s < n_steps && rc == XD_OK; s++) {
            int n = 0;
            for (int r = 0; r < o.requests; r++) {
                int toks = phase == 0 ? o.prompt : 1;
                for (int t = 0; t < toks; t++, n++) {
                    reqs[n] = (uint64_t)r;
                    pos[n] = (uint32_t)(phase == 0 ? t : o.prompt + s);
                    bool first = phase == 0 ? t == 0 : (o.prompt == 0 && s == 0);
                    for (int l = 0; l < L; l++) {
                        int32_t *pr = prev + (size_t)r * per + (size_t)l * K;
                        int32_t *ch = experts + (size_t)n * per + (size_t)l * K;
                        route_token(&o, cdf + (size_t)l * E, first ? NULL : pr, ch);
                        memcpy(pr, ch, sizeof(int32_t) * K);
                    }
                }
            }
            struct xd_trace_step st = {.step = step++, .seconds = 0, .n_tokens = n,
                                       .requests = reqs, .positions = pos, .experts = experts,
                                       .weights = weights};
            rc = xd_trace_writer_add(w, &st, &err);
        }
    }
    int crc = xd_trace_writer_close(w, rc < 0 ? NULL : &err);
    if (rc < 0 || crc < 0) {
        fprintf(stderr, "xd-synth-trace: %s\n", err.msg);
        return 1;
    }
    free(cdf);
    free(perm);
    free(prev);
    free(experts);
    free(weights);
    free(reqs);
    free(pos);
    return 0;
}
