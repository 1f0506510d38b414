/* GPU suite: expert offloading gives the same logits and routing as every expert resident, bit
 * for bit (the same kernels read the same bytes), under eviction pressure, with a cache smaller
 * than one layer's active experts, with prefetch (including prefetches evicted before use) and
 * both policies; again with copies delayed and readers prompt (a missing `ready` wait would read
 * a slot before its copy lands) and with readers slow and copies prompt (a missing `freed` wait
 * would overwrite a slot still to be read). A negative control skips each wait
 * (gpu/expert_pool_test.h) under the delays that expose it and asserts that the logits then
 * differ, so the test is known to see both races. Counters: exact where the test can replay
 * them (LRU without prefetch), identities that must hold elsewhere (accesses, bytes, evictions,
 * prefetch accounting), stall time between a lower bound set by the copy delay and the run's
 * wall time. Skipped (77) where there is no GPU. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"
#include "gpu/expert_pool_test.h"
#include "gpu/gpu.h"
#include "tests/gpu_test.h"
#include "tests/test.h"

static const char *fixtures;

/* ---- delays on the GPU (gpu/expert_pool.cu reads them when a pool is created) ---- */

struct delays {
    const char *name;
    unsigned copy_us; /* EXPERTD_OFFLOAD_STRESS_COPY_US: before every copy */
    unsigned use_us;  /* EXPERTD_OFFLOAD_STRESS_USE_US: before every first use */
    unsigned both_us; /* EXPERTD_OFFLOAD_STRESS_US (both at once); 0: unset */
};

static const struct delays NO_DELAYS = {"no delays", 0, 0, 0};
/* Copies 2 ms late, readers at once: a reader that skips `ready` reads the slot's old bytes. */
static const struct delays COPIES_LATE = {"copies late, readers prompt", 2000, 0, 0};
/* Readers 2 ms late, copies at once: a copy that skips `freed` lands before the last reader of
 * the slot has read it (the next expert's copy is enqueued microseconds after that reader). */
static const struct delays READERS_SLOW = {"readers slow, copies prompt", 0, 2000, 0};
/* The old single knob: both delayed alike. */
static const struct delays BOTH_200 = {"both 200 us (EXPERTD_OFFLOAD_STRESS_US)", 200, 200, 200};

static void set_us(const char *name, unsigned us)
{
    char v[32];
    snprintf(v, sizeof v, "%u", us);
    setenv(name, v, 1);
}

static void apply_delays(const struct delays *d)
{
    unsetenv("EXPERTD_OFFLOAD_STRESS_US");
    unsetenv("EXPERTD_OFFLOAD_STRESS_COPY_US");
    unsetenv("EXPERTD_OFFLOAD_STRESS_USE_US");
    if (d->both_us) {
        set_us("EXPERTD_OFFLOAD_STRESS_US", d->both_us);
    } else {
        if (d->copy_us)
            set_us("EXPERTD_OFFLOAD_STRESS_COPY_US", d->copy_us);
        if (d->use_us)
            set_us("EXPERTD_OFFLOAD_STRESS_USE_US", d->use_us);
    }
}

/* ---- one run: three sequences, prefill then decode, on a fresh engine ---- */

struct run {
    float *logits;      /* every step's logits, concatenated */
    size_t n_logits;
    int32_t *experts;   /* every step's routing (tokens, n_moe_layers, top_k) */
    size_t n_experts;
    int step_tokens[16]; /* tokens of each step, to split experts by step */
    int n_steps;
    struct xd_expert_stats stats; /* layer_hits/layer_misses dropped: they die with the engine */
    double wall_seconds; /* engine creation to destruction */
};

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
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
    memset(ret, 0, sizeof *ret);
    const double t0 = now_seconds();
    if (xd_engine_create(m, &o, &e, &err) < 0) {
        CHECK(false, "engine with %d slots: %s", slots, err.msg);
        return -1;
    }
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
            CHECK(false, "forward with %d slots, step %d: %s", slots, step, err.msg);
            rc = -1;
            break;
        }
        size_t nl = (size_t)out.n_logit_rows * c->vocab_size;
        size_t nr = (size_t)out.routing.n_tokens * c->n_moe_layers * c->top_k;
        ret->logits = realloc(ret->logits, (ret->n_logits + nl) * sizeof(float));
        ret->experts = realloc(ret->experts, (ret->n_experts + nr) * sizeof(int32_t));
        memcpy(ret->logits + ret->n_logits, out.logits, nl * sizeof(float));
        memcpy(ret->experts + ret->n_experts, out.routing.experts, nr * sizeof(int32_t));
        for (size_t i = 0; i < nr && rc == 0; i++)
            if (out.routing.experts[i] < 0 || out.routing.experts[i] >= c->n_experts) {
                /* the replays below index by expert id */
                CHECK(false, "%d slots, step %d: routing names expert %d of %d", slots, step,
                      out.routing.experts[i], c->n_experts);
                rc = -1;
            }
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
    ret->stats.layer_hits = ret->stats.layer_misses = NULL;
    xd_engine_destroy(e); /* with copies maybe still in flight: must wait, not crash */
    ret->wall_seconds = now_seconds() - t0;
    return rc;
}

static void run_free(struct run *r)
{
    free(r->logits);
    free(r->experts);
}

/* ---- what the counters must be, from the run's routing ---- */

/* Calls fn(layer, expert, arg) for every cache access of the run in the order the CUDA backend
 * makes them: step by step, MoE layer by MoE layer, each expert the layer's tokens use once, in
 * ascending id (gpu/cuda_backend.cu pins or acquires `present` in that order). */
static void for_each_access(const struct run *r, const struct xd_model_config *c,
                            void (*fn)(int, int, void *), void *arg)
{
    size_t at = 0;
    const int L = c->n_moe_layers, K = c->top_k, E = c->n_experts;
    for (int s = 0; s < r->n_steps; s++) {
        for (int l = 0; l < L; l++) {
            bool used[512] = {false};
            for (int t = 0; t < r->step_tokens[s]; t++)
                for (int k = 0; k < K; k++)
                    used[r->experts[at + ((size_t)t * L + l) * K + k]] = true;
            for (int e = 0; e < E; e++)
                if (used[e])
                    fn(l, e, arg);
        }
        at += (size_t)r->step_tokens[s] * L * K;
    }
}

static void count_access(int layer, int expert, void *arg)
{
    (void)layer;
    (void)expert;
    (*(uint64_t *)arg)++;
}

/* Cache accesses of the run: one per (step, MoE layer, expert used), whichever way a layer runs. */
static uint64_t n_accesses(const struct run *r, const struct xd_model_config *c)
{
    uint64_t n = 0;
    for_each_access(r, c, count_access, &n);
    return n;
}

struct distinct {
    bool seen[4096]; /* (n_moe_layers, n_experts) */
    int n_experts;
    uint64_t n;
};

static void count_distinct(int layer, int expert, void *arg)
{
    struct distinct *d = arg;
    bool *s = &d->seen[layer * d->n_experts + expert];
    d->n += !*s;
    *s = true;
}

/* Distinct (MoE layer, expert) pairs the run used: each must come in at least once, by a miss or
 * by a prefetch that a demand access then hits. */
static uint64_t n_distinct_experts(const struct run *r, const struct xd_model_config *c)
{
    struct distinct *d = calloc(1, sizeof *d);
    d->n_experts = c->n_experts;
    for_each_access(r, c, count_distinct, d);
    uint64_t n = d->n;
    free(d);
    return n;
}

/* A plain LRU cache of n_slots that starts empty, written independently of
 * engine/experts/expert_cache.c. With the LRU policy and no prefetch the pool must count exactly
 * its hits, misses and evictions: a layer whose experts fit pins them all before any eviction, but
 * those are the most recently used, so the least recently used slot is never one of them. */
struct lru {
    int n_slots, n_used;
    int keys[4096];       /* layer * n_experts + expert */
    uint64_t last[4096];  /* access clock at the last use */
    uint64_t clock;
    int n_experts;
    uint64_t hits, misses, evictions;
};

static void lru_access(int layer, int expert, void *arg)
{
    struct lru *c = arg;
    const int key = layer * c->n_experts + expert;
    c->clock++;
    for (int i = 0; i < c->n_used; i++)
        if (c->keys[i] == key) {
            c->hits++;
            c->last[i] = c->clock;
            return;
        }
    c->misses++;
    int slot = c->n_used;
    if (c->n_used < c->n_slots) {
        c->n_used++;
    } else {
        slot = 0;
        for (int i = 1; i < c->n_slots; i++)
            if (c->last[i] < c->last[slot])
                slot = i;
        c->evictions++;
    }
    c->keys[slot] = key;
    c->last[slot] = c->clock;
}

/* ---- the checks ---- */

/* Index of the first element where a and b differ bitwise (n when none) and max |a - b|. */
static size_t first_difference(const float *a, const float *b, size_t n, double *ret_max)
{
    size_t first = n;
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (memcmp(&a[i], &b[i], sizeof(float)) == 0)
            continue;
        if (first == n)
            first = i;
        double d = fabs((double)a[i] - b[i]);
        worst = d > worst || d != d ? d : worst;
    }
    *ret_max = worst;
    return first;
}

struct ocase {
    int slots;
    enum xd_evict_policy pol;
    bool prefetch;
};

static int make_cases(const struct xd_model_config *c, struct ocase *ret)
{
    const int all = c->n_moe_layers * c->n_experts;
    const struct ocase cases[] = {
        {1, XD_EVICT_LRU, false},                    /* far below one layer's active experts */
        {c->top_k - 1 > 0 ? c->top_k - 1 : 1, XD_EVICT_LRU, true},
        {all / 4 > 0 ? all / 4 : 1, XD_EVICT_LRU, true},
        {all / 4 > 0 ? all / 4 : 1, XD_EVICT_PREDICTIVE, true},
        {all / 2, XD_EVICT_PREDICTIVE, false},
        {all / 2, XD_EVICT_LRU, false},              /* counts replayed exactly */
        {all - 1, XD_EVICT_LRU, true},
        {all - 1, XD_EVICT_LRU, false},              /* nearly all fit: misses ~ distinct */
        {c->n_experts, XD_EVICT_LRU, true},          /* one layer's worth: pinned whole */
        {c->n_experts - 1, XD_EVICT_PREDICTIVE, true},
    };
    const int n = (int)(sizeof cases / sizeof cases[0]);
    memcpy(ret, cases, sizeof cases);
    return n;
}

/* Every assertion on one offloaded run against the all-resident base. */
static void check_run(const char *name, const struct xd_model_config *c, const struct ocase *k,
                      const struct delays *d, const struct run *base, const struct run *r)
{
    const char *pn = xd_evict_policy_name(k->pol);
    char what[256];
    snprintf(what, sizeof what, "%s: %d slots (%s, prefetch %d), %s", name, k->slots, pn,
             k->prefetch, d->name);
    CHECK(r->stats.offloading && r->stats.n_slots == k->slots, "%s: not offloading (%d slots)",
          what, r->stats.n_slots);

    /* results: bit for bit those of all-resident */
    double worst = 0.0;
    size_t at = r->n_logits == base->n_logits
                    ? first_difference(r->logits, base->logits, base->n_logits, &worst)
                    : 0;
    CHECK(r->n_logits == base->n_logits && at == base->n_logits,
          "%s: logits differ from all-resident (%zu vs %zu values; first difference at %zu, "
          "row %zu, max |diff| %g)",
          what, r->n_logits, base->n_logits, at, at / (size_t)c->vocab_size,
          r->n_logits == base->n_logits ? worst : NAN);
    CHECK(r->n_experts == base->n_experts &&
              memcmp(r->experts, base->experts, base->n_experts * sizeof(int32_t)) == 0,
          "%s: routing differs from all-resident", what);

    /* counters */
    const struct xd_expert_cache_stats *st = &r->stats.cache;
    const uint64_t accesses = n_accesses(base, c), distinct = n_distinct_experts(base, c);
    const uint64_t fills = st->misses + st->prefetches;
    const uint64_t expert_bytes = 3ull * c->expert_ffn * c->hidden_size * 2;
    CHECK(st->hits + st->misses == accesses,
          "%s: %llu hits + %llu misses, but the steps made %llu accesses", what,
          (unsigned long long)st->hits, (unsigned long long)st->misses,
          (unsigned long long)accesses);
    CHECK(st->misses > 0, "%s: no misses, yet the cache starts empty", what);
    CHECK(st->misses + st->prefetches_used >= distinct,
          "%s: %llu misses + %llu used prefetches cannot bring in the %llu experts used", what,
          (unsigned long long)st->misses, (unsigned long long)st->prefetches_used,
          (unsigned long long)distinct);
    CHECK(r->stats.bytes_h2d == fills * expert_bytes,
          "%s: %llu bytes copied for %llu misses + %llu prefetches of %llu bytes", what,
          (unsigned long long)r->stats.bytes_h2d, (unsigned long long)st->misses,
          (unsigned long long)st->prefetches, (unsigned long long)expert_bytes);
    /* slots start empty and only failed copies empty them: fills beyond the slots evict */
    const uint64_t want_evictions = fills > (uint64_t)k->slots ? fills - k->slots : 0;
    CHECK(st->evictions == want_evictions,
          "%s: %llu evictions after %llu fills of %d slots (want %llu)", what,
          (unsigned long long)st->evictions, (unsigned long long)fills, k->slots,
          (unsigned long long)want_evictions);
    CHECK(st->prefetches_used <= st->hits, "%s: %llu prefetches used by %llu hits", what,
          (unsigned long long)st->prefetches_used, (unsigned long long)st->hits);
    CHECK(st->prefetches_used + st->prefetches_wasted <= st->prefetches &&
              st->prefetches - st->prefetches_used - st->prefetches_wasted <= (uint64_t)k->slots,
          "%s: %llu prefetches, %llu used, %llu wasted: the rest (still resident) exceeds the "
          "%d slots or is negative",
          what, (unsigned long long)st->prefetches, (unsigned long long)st->prefetches_used,
          (unsigned long long)st->prefetches_wasted, k->slots);
    if (!k->prefetch)
        CHECK(st->prefetches == 0 && st->prefetches_used == 0 && st->prefetches_wasted == 0,
              "%s: %llu prefetches (%llu used, %llu wasted) without prefetch", what,
              (unsigned long long)st->prefetches, (unsigned long long)st->prefetches_used,
              (unsigned long long)st->prefetches_wasted);
    if (!k->prefetch && k->pol == XD_EVICT_LRU) {
        struct lru *want = calloc(1, sizeof *want);
        want->n_slots = k->slots;
        want->n_experts = c->n_experts;
        for_each_access(base, c, lru_access, want);
        CHECK(st->hits == want->hits && st->misses == want->misses &&
                  st->evictions == want->evictions,
              "%s: %llu hits, %llu misses, %llu evictions; an LRU cache replaying the routing has "
              "%llu, %llu, %llu",
              what, (unsigned long long)st->hits, (unsigned long long)st->misses,
              (unsigned long long)st->evictions, (unsigned long long)want->hits,
              (unsigned long long)want->misses, (unsigned long long)want->evictions);
        /* one slot and at least two MoE layers: consecutive accesses are never the same expert */
        if (k->slots == 1 && c->n_moe_layers >= 2)
            CHECK(st->hits == 0, "%s: %llu hits with one slot", what,
                  (unsigned long long)st->hits);
        free(want);
    }

    /* stall time: within the run's wall time; with copies delayed, every demand copy is waited
     * for nearly its whole delay (copies run one after another on the copy stream, so each
     * lands at least copy_us after the previous one, while compute reaches each wait right after
     * the previous expert's few GEMMs) */
    const double stall = r->stats.stall_seconds;
    CHECK(stall <= r->wall_seconds, "%s: %.6f s stalled in a run of %.6f s", what, stall,
          r->wall_seconds);
    if (d->copy_us && !d->use_us) {
        const double floor = 0.5 * (double)st->misses * d->copy_us * 1e-6;
        CHECK(stall >= floor,
              "%s: %.6f s stalled, but %llu demand copies each %u us late make at least %.6f s",
              what, stall, (unsigned long long)st->misses, d->copy_us, floor);
    } else if (d->copy_us) {
        /* readers delayed too, so later copies may land while compute spins; but the run's
         * first access is a miss whose copy compute waits for with nothing else queued */
        CHECK(stall >= 0.5 * d->copy_us * 1e-6,
              "%s: %.6f s stalled, less than half of one %u us copy delay", what, stall,
              d->copy_us);
    } else if (k->slots == 1) {
        /* one slot: every access is a demand copy the compute stream must wait for */
        CHECK(stall > 0.0, "%s: 1 slot, yet no time stalled on copies", what);
    }
    if (d->use_us) {
        /* every access is waited for once, and each wait holds the compute stream use_us */
        const double floor = 0.9 * (double)accesses * d->use_us * 1e-6;
        CHECK(r->wall_seconds >= floor,
              "%s: run took %.6f s, but %llu accesses each delayed %u us take %.6f s: the "
              "reader delay did not act",
              what, r->wall_seconds, (unsigned long long)accesses, d->use_us, floor);
    }
    printf("  %s: %d slots %s prefetch %d: hits %llu misses %llu prefetches %llu used %llu "
           "wasted %llu evictions %llu stalled %.6f s of %.6f s\n",
           name, k->slots, pn, k->prefetch, (unsigned long long)st->hits,
           (unsigned long long)st->misses, (unsigned long long)st->prefetches,
           (unsigned long long)st->prefetches_used, (unsigned long long)st->prefetches_wasted,
           (unsigned long long)st->evictions, stall, r->wall_seconds);
}

static struct xd_model *load_fixture(const char *name)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/golden/%s", fixtures, name);
    struct xd_model *m = NULL;
    struct xd_err err;
    if (xd_model_load(dir, &m, &err) < 0) {
        CHECK(false, "%s", err.msg);
        return NULL;
    }
    return m;
}

/* The all-resident reference: the pool is not offloading, so no delay or skip applies. */
static int run_base(struct xd_model *m, const char *name, struct run *ret)
{
    if (run_steps(m, 0, XD_EVICT_LRU, false, ret) < 0)
        return -1;
    CHECK(!ret->stats.offloading, "%s: 0 slots must keep every expert resident", name);
    CHECK(ret->stats.stall_seconds == 0.0, "%s: all resident, yet %g s stalled on copies", name,
          ret->stats.stall_seconds);
    return 0;
}

/* Every case under delays d: results equal all-resident, counters as they must be. */
static void check_fixture(const char *name, const struct delays *d)
{
    printf("  %s, %s\n", name, d->name);
    struct xd_model *m = load_fixture(name);
    if (!m)
        return;
    const struct xd_model_config *c = &m->config;
    if (c->n_experts > 512 || c->n_moe_layers * c->n_experts > 4096) {
        CHECK(false, "%s: %d MoE layers x %d experts: more than this test's tables hold", name,
              c->n_moe_layers, c->n_experts);
        xd_model_destroy(m);
        return;
    }
    apply_delays(d);
    struct run base;
    if (run_base(m, name, &base) == 0) {
        struct ocase cases[16];
        const int n = make_cases(&m->config, cases);
        for (int i = 0; i < n; i++) {
            struct run r;
            if (run_steps(m, cases[i].slots, cases[i].pol, cases[i].prefetch, &r) == 0)
                check_run(name, &m->config, &cases[i], d, &base, &r);
            run_free(&r);
        }
    }
    apply_delays(&NO_DELAYS);
    run_free(&base);
    xd_model_destroy(m);
}

/* The negative control: with the pool's `which` wait skipped under the delays that expose its
 * race, the logits must differ from all-resident, or the test could not see that wait missing.
 * Skipping `ready` shows in every case (the cache starts empty, so the first expert is read
 * before its late copy); skipping `freed` only where a layer runs its experts one at a time,
 * which is certain when the cache has fewer slots than top_k (every token uses top_k experts). */
static void check_control(const char *name, enum xd_expert_pool_skip which, const struct delays *d)
{
    const char *wait = which == XD_POOL_SKIP_READY ? "ready" : "freed";
    printf("  %s, %s, `%s` wait skipped\n", name, d->name, wait);
    struct xd_model *m = load_fixture(name);
    if (!m)
        return;
    apply_delays(d);
    struct run base;
    int n_checked = 0;
    if (run_base(m, name, &base) == 0) {
        struct ocase cases[16];
        const int n = make_cases(&m->config, cases);
        xd_expert_pool_test_skip_wait(which);
        for (int i = 0; i < n; i++) {
            if (which == XD_POOL_SKIP_FREED && cases[i].slots >= m->config.top_k)
                continue;
            struct run r;
            if (run_steps(m, cases[i].slots, cases[i].pol, cases[i].prefetch, &r) == 0) {
                double worst = 0.0;
                size_t at = r.n_logits == base.n_logits
                                ? first_difference(r.logits, base.logits, base.n_logits, &worst)
                                : 0;
                const bool differ = r.n_logits != base.n_logits || at < base.n_logits;
                printf("  %s: %d slots %s prefetch %d, `%s` skipped: logits %s (first at %zu "
                       "of %zu, max |diff| %g)\n",
                       name, cases[i].slots, xd_evict_policy_name(cases[i].pol),
                       cases[i].prefetch, wait, differ ? "differ" : "EQUAL", at, base.n_logits,
                       worst);
                CHECK(differ,
                      "%s: %d slots (%s, prefetch %d), %s: with the `%s` wait skipped the logits "
                      "still equal all-resident, so this test cannot see a missing `%s` wait",
                      name, cases[i].slots, xd_evict_policy_name(cases[i].pol),
                      cases[i].prefetch, d->name, wait, wait);
                n_checked++;
            }
            run_free(&r);
        }
        xd_expert_pool_test_skip_wait(XD_POOL_SKIP_NONE);
    }
    CHECK(n_checked > 0, "%s: no case ran with the `%s` wait skipped", name, wait);
    apply_delays(&NO_DELAYS);
    run_free(&base);
    xd_model_destroy(m);
}

static void test_offload_olmoe(void) { check_fixture("olmoe-bf16", &NO_DELAYS); }
static void test_offload_mixtral(void) { check_fixture("mixtral-bf16", &NO_DELAYS); }
static void test_offload_qwen2_moe(void) { check_fixture("qwen2_moe-bf16", &NO_DELAYS); }
static void test_offload_olmoe_copies_late(void) { check_fixture("olmoe-bf16", &COPIES_LATE); }
static void test_offload_mixtral_copies_late(void)
{
    check_fixture("mixtral-bf16", &COPIES_LATE);
}
static void test_offload_olmoe_readers_slow(void) { check_fixture("olmoe-bf16", &READERS_SLOW); }
static void test_offload_mixtral_readers_slow(void)
{
    check_fixture("mixtral-bf16", &READERS_SLOW);
}
static void test_offload_olmoe_both_delayed(void) { check_fixture("olmoe-bf16", &BOTH_200); }
static void test_control_skip_ready_olmoe(void)
{
    check_control("olmoe-bf16", XD_POOL_SKIP_READY, &COPIES_LATE);
}
static void test_control_skip_ready_mixtral(void)
{
    check_control("mixtral-bf16", XD_POOL_SKIP_READY, &COPIES_LATE);
}
static void test_control_skip_freed_olmoe(void)
{
    check_control("olmoe-bf16", XD_POOL_SKIP_FREED, &READERS_SLOW);
}
static void test_control_skip_freed_mixtral(void)
{
    check_control("mixtral-bf16", XD_POOL_SKIP_FREED, &READERS_SLOW);
}

int main(int argc, char **argv)
{
    fixtures = argc > 1 ? argv[1] : "tests/fixtures";
    char info[512];
    if (!gpu_test_available(info, sizeof info))
        return 77;
    xd_gpu_register();
    /* Offloading runs the experts through the cuBLAS path; the resident baseline must too. */
    setenv("EXPERTD_CUDA_SMALL_STEP_SLOTS", "0", 1);
    apply_delays(&NO_DELAYS);
    RUN(test_offload_olmoe);
    RUN(test_offload_mixtral);
    RUN(test_offload_qwen2_moe);
    /* Under compute-sanitizer (tools/device-check.sh sets EXPERTD_OFFLOAD_TEST_UNDER_SANITIZER)
     * only the runs above: the sanitizer serialises the GPU's work, so the stall bounds of the
     * delayed runs and the races the controls open cannot show there. */
    if (getenv("EXPERTD_OFFLOAD_TEST_UNDER_SANITIZER"))
        return test_summary();
    /* Unequal delays: each widens one race to milliseconds while the other stays closed. */
    RUN(test_offload_olmoe_copies_late);
    RUN(test_offload_mixtral_copies_late);
    RUN(test_offload_olmoe_readers_slow);
    RUN(test_offload_mixtral_readers_slow);
    RUN(test_offload_olmoe_both_delayed);
    /* Negative controls: each wait removed under the delays that expose it. */
    RUN(test_control_skip_ready_olmoe);
    RUN(test_control_skip_ready_mixtral);
    RUN(test_control_skip_freed_olmoe);
    RUN(test_control_skip_freed_mixtral);
    return test_summary();
}
