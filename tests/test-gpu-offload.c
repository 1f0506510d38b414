/* GPU suite: expert offloading gives the same logits and routing as every expert resident, bit
 * for bit (the same kernels read the same bytes), under eviction pressure, with a cache smaller
 * than one layer's active experts, with prefetch (including prefetches evicted before use) and
 * both policies, also with copies and first uses delayed on the GPU to widen any race; its
 * counters add up (bytes, one access per expert a step uses), stall time included. Skipped (77)
 * where there is no GPU. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "gpu/gpu.h"
#include "tests/gpu_test.h"
#include "tests/test.h"

static const char *fixtures;

struct run {
    float *logits;      /* every step's logits, concatenated */
    size_t n_logits;
    int32_t *experts;   /* every step's routing */
    size_t n_experts;
    int step_tokens[16]; /* tokens of each step, to split experts by step */
    int n_steps;
    struct xd_expert_stats stats;
};

/* Distinct (step, layer, expert) uses in a run's routing: each is one cache access (a hit or a
 * miss) whichever way the layer runs. */
static uint64_t distinct_uses(const struct run *r, const struct xd_model_config *c)
{
    uint64_t n = 0;
    size_t at = 0;
    const int L = c->n_moe_layers, K = c->top_k;
    for (int s = 0; s < r->n_steps; s++) {
        for (int l = 0; l < L; l++) {
            bool seen[512] = {false};
            for (int t = 0; t < r->step_tokens[s]; t++)
                for (int k = 0; k < K; k++) {
                    int e = r->experts[at + ((size_t)t * L + l) * K + k];
                    n += !seen[e];
                    seen[e] = true;
                }
        }
        at += (size_t)r->step_tokens[s] * L * K;
    }
    return n;
}

/* Three sequences: prefill chunks, then decode steps together, on a fresh engine. */
static int run_steps(struct xd_model *m, int slots, enum xd_evict_policy pol, bool prefetch,
                     struct run *ret)
{
    const struct xd_model_config *c = &m->config;
    struct xd_engine_opts o = {.device = XD_DEVICE_CUDA, .n_kv_blocks = 48, .block_size = 4,
                               .max_batch_tokens = 32, .expert_cache_slots = slots,
                               .expert_evict_policy = pol, .expert_prefetch = prefetch};
    struct xd_engine *e = NULL;
    struct xd_err err;
    if (xd_engine_create(m, &o, &e, &err) < 0) {
        CHECK(false, "engine with %d slots: %s", slots, err.msg);
        return -1;
    }
    memset(ret, 0, sizeof *ret);
    int32_t tables[3][16];
    for (int s = 0; s < 3; s++)
        for (int b = 0; b < 16; b++)
            tables[s][b] = s * 16 + b;
    int32_t prompt[3][9] = {{3, 1, 4, 1, 5, 9, 2, 6, 5},
                            {2, 7, 1, 8, 2, 8, 1, 8, 2},
                            {1, 4, 1, 4, 2, 1, 3, 5, 6}};
    int32_t last[3];
    int pos[3] = {0, 0, 0};
    int rc = 0;
    for (int step = 0; step < 14 && rc == 0; step++) {
        struct xd_seq_chunk sc[3];
        int32_t toks[3];
        for (int s = 0; s < 3; s++) {
            if (step == 0) {
                sc[s] = (struct xd_seq_chunk){prompt[s], 9, 0, tables[s], 16, XD_LOGITS_LAST};
                pos[s] = 9;
            } else {
                toks[s] = last[s];
                sc[s] = (struct xd_seq_chunk){&toks[s], 1, pos[s]++, tables[s], 16,
                                              XD_LOGITS_LAST};
            }
        }
        struct xd_batch b = {sc, 3};
        struct xd_forward_out out;
        if (xd_engine_forward(e, &b, &out, &err) < 0) {
            CHECK(false, "forward with %d slots: %s", slots, err.msg);
            rc = -1;
            break;
        }
        size_t nl = (size_t)out.n_logit_rows * c->vocab_size;
        size_t nr = (size_t)out.routing.n_tokens * c->n_moe_layers * c->top_k;
        ret->logits = realloc(ret->logits, (ret->n_logits + nl) * sizeof(float));
        ret->experts = realloc(ret->experts, (ret->n_experts + nr) * sizeof(int32_t));
        memcpy(ret->logits + ret->n_logits, out.logits, nl * sizeof(float));
        memcpy(ret->experts + ret->n_experts, out.routing.experts, nr * sizeof(int32_t));
        ret->n_logits += nl;
        ret->n_experts += nr;
        ret->step_tokens[ret->n_steps++] = out.routing.n_tokens;
        for (int s = 0; s < 3; s++) { /* greedy */
            const float *row = out.logits + (size_t)s * c->vocab_size;
            int best = 0;
            for (int v = 1; v < c->vocab_size; v++)
                if (row[v] > row[best])
                    best = v;
            last[s] = best;
        }
    }
    xd_engine_expert_stats(e, &ret->stats);
    xd_engine_destroy(e); /* with copies maybe still in flight: must wait, not crash */
    return rc;
}

static void check_fixture(const char *name)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/golden/%s", fixtures, name);
    struct xd_model *m = NULL;
    struct xd_err err;
    if (xd_model_load(dir, &m, &err) < 0) {
        CHECK(false, "%s", err.msg);
        return;
    }
    const struct xd_model_config *c = &m->config;
    const int all = c->n_moe_layers * c->n_experts;
    struct run base;
    if (run_steps(m, 0, XD_EVICT_LRU, false, &base) < 0) {
        xd_model_destroy(m);
        return;
    }
    CHECK(!base.stats.offloading, "%s: 0 slots must keep every expert resident", name);
    CHECK(base.stats.stall_seconds == 0.0, "%s: all resident, yet %g s stalled on copies", name,
          base.stats.stall_seconds);
    struct {
        int slots;
        enum xd_evict_policy pol;
        bool prefetch;
    } cases[] = {
        {1, XD_EVICT_LRU, false},                    /* far below one layer's active experts */
        {c->top_k - 1 > 0 ? c->top_k - 1 : 1, XD_EVICT_LRU, true},
        {all / 4 > 0 ? all / 4 : 1, XD_EVICT_LRU, true},
        {all / 4 > 0 ? all / 4 : 1, XD_EVICT_PREDICTIVE, true},
        {all / 2, XD_EVICT_PREDICTIVE, false},
        {all - 1, XD_EVICT_LRU, true},
        {c->n_experts, XD_EVICT_LRU, true},          /* one layer's worth: pinned whole */
        {c->n_experts - 1, XD_EVICT_PREDICTIVE, true},
    };
    const uint64_t uses = distinct_uses(&base, c);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct run r;
        if (run_steps(m, cases[i].slots, cases[i].pol, cases[i].prefetch, &r) < 0)
            continue;
        const char *pn = xd_evict_policy_name(cases[i].pol);
        CHECK(r.stats.offloading && r.stats.n_slots == cases[i].slots,
              "%s: %d slots not offloading", name, cases[i].slots);
        CHECK(r.n_logits == base.n_logits &&
                  memcmp(r.logits, base.logits, base.n_logits * sizeof(float)) == 0,
              "%s: %d slots (%s, prefetch %d): logits differ from all-resident", name,
              cases[i].slots, pn, cases[i].prefetch);
        CHECK(r.n_experts == base.n_experts &&
                  memcmp(r.experts, base.experts, base.n_experts * sizeof(int32_t)) == 0,
              "%s: %d slots: routing differs from all-resident", name, cases[i].slots);
        const struct xd_expert_cache_stats *st = &r.stats.cache;
        CHECK(st->misses > 0 && st->hits + st->misses > 0, "%s: no accesses counted", name);
        const uint64_t expert_bytes = 3ull * c->expert_ffn * c->hidden_size * 2;
        CHECK(r.stats.bytes_h2d == (st->misses + st->prefetches) * expert_bytes,
              "%s: %llu bytes copied for %llu misses + %llu prefetches", name,
              (unsigned long long)r.stats.bytes_h2d, (unsigned long long)st->misses,
              (unsigned long long)st->prefetches);
        CHECK(st->hits + st->misses == uses,
              "%s: %d slots: %llu hits + %llu misses, but the steps used %llu experts", name,
              cases[i].slots, (unsigned long long)st->hits, (unsigned long long)st->misses,
              (unsigned long long)uses);
        CHECK(st->prefetches_used + st->prefetches_wasted <= st->prefetches,
              "%s: prefetch accounting", name);
        if (!cases[i].prefetch)
            CHECK(st->prefetches == 0, "%s: prefetches without prefetch", name);
        CHECK(r.stats.stall_seconds >= 0.0, "%s: %d slots: stall %g s", name, cases[i].slots,
              r.stats.stall_seconds);
        /* one slot: every access is a demand copy the compute stream must wait for */
        if (cases[i].slots == 1)
            CHECK(r.stats.stall_seconds > 0.0, "%s: 1 slot, yet no time stalled on copies", name);
        printf("  %s: %d slots %s prefetch %d: hits %llu misses %llu prefetches %llu used %llu "
               "wasted %llu stalled %.6f s\n",
               name, cases[i].slots, pn, cases[i].prefetch, (unsigned long long)st->hits,
               (unsigned long long)st->misses, (unsigned long long)st->prefetches,
               (unsigned long long)st->prefetches_used, (unsigned long long)st->prefetches_wasted,
               r.stats.stall_seconds);
        free(r.logits);
        free(r.experts);
    }
    free(base.logits);
    free(base.experts);
    xd_model_destroy(m);
}

static void test_offload_olmoe(void) { check_fixture("olmoe-bf16"); }
static void test_offload_mixtral(void) { check_fixture("mixtral-bf16"); }
static void test_offload_qwen2_moe(void) { check_fixture("qwen2_moe-bf16"); }

int main(int argc, char **argv)
{
    fixtures = argc > 1 ? argv[1] : "tests/fixtures";
    char info[512];
    if (!gpu_test_available(info, sizeof info))
        return 77;
    xd_gpu_register();
    /* Offloading runs the experts through the cuBLAS path; the resident baseline must too. */
    setenv("EXPERTD_CUDA_SMALL_STEP_SLOTS", "0", 1);
    RUN(test_offload_olmoe);
    RUN(test_offload_mixtral);
    RUN(test_offload_qwen2_moe);
    /* Again with every copy and every first use of a slot held back 200 us on the GPU: a
     * missing wait (use before copy, or copy over a slot still being read) changes logits. */
    setenv("EXPERTD_OFFLOAD_STRESS_US", "200", 1);
    RUN(test_offload_olmoe);
    RUN(test_offload_mixtral);
    unsetenv("EXPERTD_OFFLOAD_STRESS_US");
    return test_summary();
}
