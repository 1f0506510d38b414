/* Scheduler: a deterministic fake engine that reads every token through the KV positions and
 * block tables it is given (so a wrong table, position or shared block changes the output), and
 * the scheduler's promises checked against it: exact KV accounting under random arrivals,
 * cancellations and lengths; preemption, chunked prefill and prefix hits that change nothing;
 * stop strings that never leak; threaded mode; and the real CPU engine batched against alone. */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"
#include "engine/sampler.h"
#include "engine/text/tokenizer.h"
#include "scheduler/block_pool.h"
#include "scheduler/offline.h"
#include "scheduler/scheduler.h"
#include "tests/test.h"

static const char *fixtures;

/* ---- the fake engine ---- */

enum { FAKE_MAX_BATCH = 4096 };

struct fake {
    int n_blocks, block_size, n_vocab, n_layers, top_k, n_experts, max_batch, max_context;
    int32_t *kv_tok;  /* (n_blocks * block_size,) token written at each slot */
    int32_t *kv_pos;  /* (n_blocks * block_size,) position written at each slot, -1: never */
    float *logits;    /* (FAKE_MAX_BATCH, n_vocab) */
    int32_t *experts; /* (FAKE_MAX_BATCH, n_layers, top_k) */
    float *weights;
    const int32_t *script; /* scripted mode: the token after position p is script[p - base] */
    int n_script, script_base;
    int fail_after;        /* fail the call after this many (0: never) */
    int usec_per_token;    /* a forward reports this cost per token (0: the wall clock) */
    int n_calls;
    int n_errors;
    char first_error[256];
};

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}

/* The greedy next token after tokens[0..n): what the fake computes from its KV. Never 0. */
static int32_t ref_next(const int32_t *tokens, int n, int n_vocab)
{
    uint64_t h = 1;
    for (int i = 0; i < n; i++)
        h = mix(h, (uint64_t)tokens[i]);
    return (int32_t)(1 + h % (uint64_t)(n_vocab - 1));
}

static void fake_fail(struct fake *f, const char *msg, int a, int b)
{
    if (f->n_errors++ == 0)
        snprintf(f->first_error, sizeof f->first_error, "%s (%d, %d)", msg, a, b);
}

static int fake_forward(void *ctx, const struct xd_batch *batch, struct xd_forward_out *ret_out,
                        struct xd_err *err)
{
    struct fake *f = ctx;
    f->n_calls++;
    if (f->fail_after > 0 && f->n_calls > f->fail_after)
        return xd_err_set(err, XD_ERR_INVALID, "fake engine failure");
    int total = 0;
    for (int s = 0; s < batch->n_seqs; s++) {
        const struct xd_seq_chunk *c = &batch->seqs[s];
        total += c->n_tokens;
        if (c->n_tokens < 1 || c->pos < 0)
            return xd_err_set(err, XD_ERR_INVALID, "empty chunk");
        if (c->pos + c->n_tokens > f->max_context)
            return xd_err_set(err, XD_ERR_INVALID, "past the context");
        if (xd_blocks_for_tokens(c->pos + c->n_tokens, f->block_size) > c->n_blocks)
            return xd_err_set(err, XD_ERR_INVALID, "block table does not cover the chunk");
        for (int b = 0; b < c->n_blocks; b++)
            if (c->block_table[b] < 0 || c->block_table[b] >= f->n_blocks)
                return xd_err_set(err, XD_ERR_INVALID, "block id %d", c->block_table[b]);
        for (int i = 0; i < c->n_tokens; i++)
            if (c->tokens[i] < 0 || c->tokens[i] >= f->n_vocab)
                return xd_err_set(err, XD_ERR_INVALID, "token %d", c->tokens[i]);
        /* a block appears once per table */
        for (int a = 0; a < c->n_blocks; a++)
            for (int b = a + 1; b < c->n_blocks; b++)
                if (c->block_table[a] == c->block_table[b])
                    return xd_err_set(err, XD_ERR_INVALID, "block %d twice in a table",
                                      c->block_table[a]);
    }
    if (total > f->max_batch)
        return xd_err_set(err, XD_ERR_CAPACITY, "%d tokens over max_batch_tokens", total);
    /* two sequences of one step never write the same slot */
    for (int s = 0; s < batch->n_seqs; s++)
        for (int t = s + 1; t < batch->n_seqs; t++) {
            const struct xd_seq_chunk *a = &batch->seqs[s], *b = &batch->seqs[t];
            for (int i = 0; i < a->n_tokens; i++)
                for (int j = 0; j < b->n_tokens; j++) {
                    int pa = a->pos + i, pb = b->pos + j;
                    if (a->block_table[pa / f->block_size] == b->block_table[pb / f->block_size] &&
                        pa % f->block_size == pb % f->block_size) {
                        fake_fail(f, "two sequences write one slot", s, t);
                        return xd_err_set(err, XD_ERR_INVALID, "slot written twice");
                    }
                }
        }

    int row = 0, tok = 0;
    for (int s = 0; s < batch->n_seqs; s++) {
        const struct xd_seq_chunk *c = &batch->seqs[s];
        for (int i = 0; i < c->n_tokens; i++) {
            int p = c->pos + i;
            size_t slot = (size_t)c->block_table[p / f->block_size] * (size_t)f->block_size +
                          (size_t)(p % f->block_size);
            f->kv_tok[slot] = c->tokens[i];
            f->kv_pos[slot] = p;
            /* routing: a function of the sequence's first token (read back through the
             * table, like the logits), so a sequence keeps its experts from step to step */
            int32_t tok0 = c->pos == 0 ? c->tokens[0] : f->kv_tok[(size_t)c->block_table[0] * (size_t)f->block_size];
            for (int l = 0; l < f->n_layers; l++) {
                int base = (int)(mix((uint64_t)tok0, (uint64_t)l) % (uint64_t)f->n_experts);
                for (int k = 0; k < f->top_k; k++) {
                    size_t o = ((size_t)tok * (size_t)f->n_layers + (size_t)l) * (size_t)f->top_k +
                               (size_t)k;
                    f->experts[o] = (base + k) % f->n_experts;
                    f->weights[o] = 1.0f / (float)f->top_k;
                }
            }
            tok++;
        }
        if (c->logits == XD_LOGITS_NONE)
            continue;
        /* read the whole sequence back through the table; XD_LOGITS_ALL: a row for every
         * position of the chunk, each from the tokens up to it */
        for (int last = c->logits == XD_LOGITS_ALL ? c->pos : c->pos + c->n_tokens - 1;
             last < c->pos + c->n_tokens; last++) {
            uint64_t h = 1;
            for (int p = 0; p <= last; p++) {
                size_t slot = (size_t)c->block_table[p / f->block_size] * (size_t)f->block_size +
                              (size_t)(p % f->block_size);
                if (f->kv_pos[slot] != p)
                    fake_fail(f, "KV slot holds another position", p, f->kv_pos[slot]);
                h = mix(h, (uint64_t)f->kv_tok[slot]);
            }
            int32_t next = (int32_t)(1 + h % (uint64_t)(f->n_vocab - 1));
            if (f->script) {
                int k = last + 1 - f->script_base;
                next = k >= 0 && k < f->n_script ? f->script[k] : 1;
            }
            float *lg = f->logits + (size_t)row * (size_t)f->n_vocab;
            for (int v = 0; v < f->n_vocab; v++)
                lg[v] = 0.0f;
            lg[next] = 10.0f;
            row++;
        }
    }
    *ret_out = (struct xd_forward_out){
        .logits = f->logits, .n_logit_rows = row,
        .routing = {.n_tokens = total, .n_moe_layers = f->n_layers, .top_k = f->top_k,
                    .experts = f->experts, .weights = f->weights},
        .seconds = 1e-6 * f->usec_per_token * total,
    };
    return XD_OK;
}

static struct fake *fake_new(int n_blocks, int block_size, int n_vocab, int max_batch)
{
    struct fake *f = calloc(1, sizeof *f);
    f->n_blocks = n_blocks;
    f->block_size = block_size;
    f->n_vocab = n_vocab;
    f->n_layers = 3;
    f->top_k = 2;
    f->n_experts = 8;
    f->max_batch = max_batch;
    f->max_context = 1 << 20;
    size_t slots = (size_t)n_blocks * (size_t)block_size;
    f->kv_tok = calloc(slots, sizeof *f->kv_tok);
    f->kv_pos = malloc(slots * sizeof *f->kv_pos);
    for (size_t i = 0; i < slots; i++)
        f->kv_pos[i] = -1;
    f->logits = calloc((size_t)FAKE_MAX_BATCH * (size_t)n_vocab, sizeof *f->logits);
    f->experts = calloc((size_t)FAKE_MAX_BATCH * 3 * 2, sizeof *f->experts);
    f->weights = calloc((size_t)FAKE_MAX_BATCH * 3 * 2, sizeof *f->weights);
    return f;
}

static void fake_free(struct fake *f)
{
    if (!f)
        return;
    free(f->kv_tok);
    free(f->kv_pos);
    free(f->logits);
    free(f->experts);
    free(f->weights);
    free(f);
}

static struct xd_step_engine fake_engine(struct fake *f)
{
    return (struct xd_step_engine){
        .ctx = f, .forward = fake_forward, .n_vocab = f->n_vocab, .n_kv_blocks = f->n_blocks,
        .block_size = f->block_size, .max_batch_tokens = f->max_batch,
        .max_context = f->max_context, .n_moe_layers = f->n_layers, .top_k = f->top_k,
        .n_experts = f->n_experts,
    };
}

/* ---- what a sink saw ---- */

enum { REC_MAX_TOKENS = 512 };

struct rec {
    int32_t tokens[REC_MAX_TOKENS];
    int n_tokens;
    char text[8192];
    size_t n_text;
    int n_finish;
    int n_after_finish;
    enum xd_finish_reason finish;
    int n_cached;
    int n_generated_at_finish;
    bool bad_utf8;
    int last_step, max_gap; /* steps between consecutive tokens (run_to_idle's count) */
    double queue_seconds;   /* from the first token event */
    int first_order;        /* 1 + how many requests had their first token before this one */
    pthread_mutex_t *lock; /* threaded tests */
    int *n_done;
};

static bool whole_utf8(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (len == 0 || i + len > n)
            return false;
        for (size_t k = 1; k < len; k++)
            if (((unsigned char)s[i + k] >> 6) != 2)
                return false;
        i += len;
    }
    return true;
}

static int g_step; /* steps run_to_idle ran so far */
static int g_n_first; /* first tokens seen by any sink (rec.first_order) */

static void sink(void *ctx, const struct xd_sched_event *ev)
{
    struct rec *r = ctx;
    if (ev->kind == XD_EVENT_TOKEN && r->n_tokens > 0 && g_step - r->last_step > r->max_gap)
        r->max_gap = g_step - r->last_step;
    r->last_step = g_step;
    if (r->n_finish > 0) {
        r->n_after_finish++;
        return;
    }
    if (ev->text_len > 0) {
        if (!whole_utf8(ev->text, ev->text_len))
            r->bad_utf8 = true;
        if (r->n_text + ev->text_len < sizeof r->text) {
            memcpy(r->text + r->n_text, ev->text, ev->text_len);
            r->n_text += ev->text_len;
            r->text[r->n_text] = '\0';
        }
    }
    if (ev->kind == XD_EVENT_TOKEN) {
        if (r->n_tokens == 0) {
            r->queue_seconds = ev->queue_seconds;
            r->first_order = ++g_n_first;
        }
        if (r->n_tokens < REC_MAX_TOKENS)
            r->tokens[r->n_tokens++] = ev->sample->token;
        return;
    }
    r->finish = ev->finish;
    r->n_cached = ev->n_cached_prompt_tokens;
    r->n_generated_at_finish = ev->n_generated_tokens;
    if (r->lock) {
        pthread_mutex_lock(r->lock);
        r->n_finish++;
        (*r->n_done)++;
        pthread_mutex_unlock(r->lock);
    } else {
        r->n_finish++;
    }
}

static struct xd_request greedy_request(const int32_t *prompt, int n_prompt, int max_tokens)
{
    struct xd_request req = {.prompt = prompt, .n_prompt = n_prompt, .max_tokens = max_tokens,
                             .sampling = xd_sampling_defaults(), .ignore_eos = true};
    req.sampling.temperature = 0.0f;
    return req;
}

/* The reference output: greedy continuation of prompt for max_tokens tokens. */
static int ref_generate(const int32_t *prompt, int n_prompt, int max_tokens, int n_vocab,
                        int32_t *ret)
{
    int32_t seq[1024];
    memcpy(seq, prompt, sizeof *seq * (size_t)n_prompt);
    for (int i = 0; i < max_tokens; i++) {
        ret[i] = ref_next(seq, n_prompt + i, n_vocab);
        seq[n_prompt + i] = ret[i];
    }
    return max_tokens;
}

static bool same_as_ref(const struct rec *r, const int32_t *prompt, int n_prompt,
                        int max_tokens, int n_vocab)
{
    int32_t want[1024];
    ref_generate(prompt, n_prompt, max_tokens, n_vocab, want);
    if (r->n_tokens != max_tokens)
        return false;
    return memcmp(r->tokens, want, sizeof *want * (size_t)max_tokens) == 0;
}

/* xorshift64* */
static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

static int rng_int(uint64_t *s, int lo, int hi) /* [lo, hi] */
{
    return lo + (int)(rng_next(s) % (uint64_t)(hi - lo + 1));
}

static struct xd_sched *sched_over(struct fake *f, const struct xd_sched_opts *o,
                                   const struct xd_tokenizer *tok)
{
    struct xd_step_engine e = fake_engine(f);
    struct xd_sched *s = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_sched_create(&e, tok, NULL, 0, o, &s, &err) == XD_OK, "%s", err.msg);
    return s;
}

/* Steps until idle, checking the accounting after every step. Returns the steps run. */
static int run_to_idle(struct xd_sched *s, int max_steps)
{
    int steps = 0;
    struct xd_err err = {{0}};
    while (!xd_sched_idle(s) && steps < max_steps) {
        int n = xd_sched_step(s, &err);
        CHECK(n >= 0, "step: %s", err.msg);
        CHECK(xd_sched_check(s, &err) == XD_OK, "after step %d: %s", steps, err.msg);
        if (n < 0)
            break;
        steps++;
        g_step++;
    }
    CHECK(xd_sched_idle(s), "not idle after %d steps", steps);
    return steps;
}

static void check_all_free(struct xd_sched *s)
{
    struct xd_sched_stats st;
    xd_sched_get_stats(s, &st);
    CHECK(st.n_kv_blocks_used == 0, "%d KV blocks still used", st.n_kv_blocks_used);
    CHECK(st.n_running == 0 && st.n_waiting == 0, "running %d waiting %d", st.n_running,
          st.n_waiting);
}

static void make_prompt(uint64_t *rng, int32_t *p, int n, int n_vocab)
{
    for (int i = 0; i < n; i++)
        p[i] = rng_int(rng, 1, n_vocab - 1);
}

/* ---- cases ---- */

static void test_greedy_matches_reference_and_frees_blocks(void)
{
    struct fake *f = fake_new(64, 4, 50, 64);
    struct xd_sched_opts o = xd_sched_defaults();
    struct xd_sched *s = sched_over(f, &o, NULL);
    if (!s)
        goto out;
    enum { N = 10 };
    int32_t prompts[N][40];
    int lens[N], maxt[N];
    struct rec *recs = calloc(N, sizeof *recs);
    uint64_t rng = 7;
    for (int i = 0; i < N; i++) {
        lens[i] = rng_int(&rng, 1, 30);
        maxt[i] = rng_int(&rng, 1, 12);
        make_prompt(&rng, prompts[i], lens[i], f->n_vocab);
        struct xd_request req = greedy_request(prompts[i], lens[i], maxt[i]);
        struct xd_err err = {{0}};
        uint64_t id = 0;
        CHECK(xd_sched_submit(s, &req, sink, &recs[i], &id, &err) == XD_OK, "%s", err.msg);
        CHECK(id == (uint64_t)i + 1, "id %llu", (unsigned long long)id);
    }
    run_to_idle(s, 1000);
    for (int i = 0; i < N; i++) {
        CHECK(recs[i].n_finish == 1 && recs[i].n_after_finish == 0, "request %d: %d finishes", i,
              recs[i].n_finish);
        CHECK(recs[i].finish == XD_FINISH_LENGTH, "request %d: %s", i,
              xd_finish_reason_str(recs[i].finish));
        CHECK(same_as_ref(&recs[i], prompts[i], lens[i], maxt[i], f->n_vocab),
              "request %d differs from the reference", i);
        CHECK(recs[i].n_generated_at_finish == maxt[i], "n_generated %d",
              recs[i].n_generated_at_finish);
    }
    check_all_free(s);
    CHECK(f->n_errors == 0, "fake engine: %s", f->first_error);
    struct xd_sched_stats st;
    xd_sched_get_stats(s, &st);
    CHECK(st.steps_total > 0 && st.step_tokens_total > 0, "stats");
    CHECK(st.expert_layer_steps_total == st.steps_total * 3, "expert layer steps %llu",
          (unsigned long long)st.expert_layer_steps_total);
    CHECK(st.distinct_experts_total >= st.expert_layer_steps_total * 2, "distinct experts");
    free(recs);
    xd_sched_destroy(s);
out:
    fake_free(f);
}

/* Runs the same requests under opts o and returns whether all match the reference. */
static int g_max_gap; /* the largest token gap of the last run_matches_reference */

static bool run_matches_reference(struct fake *f, const struct xd_sched_opts *o, int n,
                                  uint64_t seed, int max_prompt, int max_new,
                                  struct xd_sched_stats *ret_stats)
{
    struct xd_sched *s = sched_over(f, o, NULL);
    if (!s)
        return false;
    int32_t (*prompts)[128] = calloc((size_t)n, sizeof *prompts);
    int *lens = calloc((size_t)n, sizeof *lens), *maxt = calloc((size_t)n, sizeof *maxt);
    struct rec *recs = calloc((size_t)n, sizeof *recs);
    uint64_t rng = seed;
    for (int i = 0; i < n; i++) {
        lens[i] = rng_int(&rng, 1, max_prompt);
        maxt[i] = rng_int(&rng, 1, max_new);
        make_prompt(&rng, prompts[i], lens[i], f->n_vocab);
        struct xd_request req = greedy_request(prompts[i], lens[i], maxt[i]);
        struct xd_err err = {{0}};
        CHECK(xd_sched_submit(s, &req, sink, &recs[i], NULL, &err) == XD_OK, "%s", err.msg);
    }
    run_to_idle(s, 10000);
    bool ok = true;
    g_max_gap = 0;
    for (int i = 0; i < n; i++) {
        if (recs[i].max_gap > g_max_gap)
            g_max_gap = recs[i].max_gap;
        bool same = recs[i].n_finish == 1 &&
                    same_as_ref(&recs[i], prompts[i], lens[i], maxt[i], f->n_vocab);
        CHECK(same, "request %d (prompt %d, max_tokens %d): %d tokens, differs", i, lens[i],
              maxt[i], recs[i].n_tokens);
        ok &= same;
    }
    check_all_free(s);
    xd_sched_get_stats(s, ret_stats);
    free(prompts);
    free(lens);
    free(maxt);
    free(recs);
    xd_sched_destroy(s);
    return ok;
}

static void test_chunked_prefill_equals_one_shot(void)
{
    struct fake *f = fake_new(256, 4, 50, 128);
    struct xd_sched_opts o = xd_sched_defaults();
    struct xd_sched_stats st;
    o.prefill_chunk = 0;
    run_matches_reference(f, &o, 8, 11, 100, 10, &st);
    uint64_t one_shot_steps = st.steps_total;
    o.prefill_chunk = 3;
    run_matches_reference(f, &o, 8, 11, 100, 10, &st);
    CHECK(st.steps_total > one_shot_steps, "chunks of 3 took %llu steps, one-shot %llu",
          (unsigned long long)st.steps_total, (unsigned long long)one_shot_steps);
    o.prefill_chunk = 1;
    o.max_step_tokens = 5;
    run_matches_reference(f, &o, 8, 11, 100, 10, &st);
    CHECK(f->n_errors == 0, "fake engine: %s", f->first_error);
    fake_free(f);
}

static void test_preemption_gives_same_output(void)
{
    /* 16 blocks of 4 tokens; every request fits alone, together they do not */
    struct fake *f = fake_new(16, 4, 50, 64);
    struct xd_sched_opts o = xd_sched_defaults();
    struct xd_sched_stats st;
    for (int prefix = 0; prefix < 2; prefix++) {
        o.prefix_caching = prefix;
        run_matches_reference(f, &o, 12, 23, 30, 30, &st);
        CHECK(st.preemptions_total > 0, "no preemption happened (prefix caching %d)", prefix);
    }
    CHECK(f->n_errors == 0, "fake engine: %s", f->first_error);
    fake_free(f);
}

static void test_prefix_hits_give_same_output(void)
{
    struct fake *f = fake_new(128, 4, 50, 64);
    struct xd_sched_opts o = xd_sched_defaults();
    struct xd_sched *s = sched_over(f, &o, NULL);
    if (!s)
        goto out;
    int32_t shared[30], a[40], b[40];
    uint64_t rng = 5;
    make_prompt(&rng, shared, 30, f->n_vocab);
    memcpy(a, shared, sizeof shared);
    memcpy(b, shared, sizeof shared);
    make_prompt(&rng, a + 30, 10, f->n_vocab);
    make_prompt(&rng, b + 30, 10, f->n_vocab);
    struct rec ra = {0}, rb = {0}, rc = {0}, rd = {0};
    struct xd_request req = greedy_request(a, 40, 8);
    struct xd_err err = {{0}};
    CHECK(xd_sched_submit(s, &req, sink, &ra, NULL, &err) == XD_OK, "%s", err.msg);
    run_to_idle(s, 100);
    CHECK(ra.n_cached == 0, "first request found %d cached tokens", ra.n_cached);
    /* b shares 7 full blocks (28 tokens) with a */
    req = greedy_request(b, 40, 8);
    CHECK(xd_sched_submit(s, &req, sink, &rb, NULL, &err) == XD_OK, "%s", err.msg);
    run_to_idle(s, 100);
    CHECK(rb.n_cached == 28, "second request found %d cached tokens, want 28", rb.n_cached);
    /* the very same prompt again: everything but the last token's block */
    req = greedy_request(a, 40, 8);
    CHECK(xd_sched_submit(s, &req, sink, &rc, NULL, &err) == XD_OK, "%s", err.msg);
    run_to_idle(s, 100);
    CHECK(rc.n_cached == 36, "same prompt found %d cached tokens, want 36", rc.n_cached);
    /* a prompt of exactly whole blocks still computes its last token */
    req = greedy_request(a, 32, 8);
    CHECK(xd_sched_submit(s, &req, sink, &rd, NULL, &err) == XD_OK, "%s", err.msg);
    run_to_idle(s, 100);
    CHECK(rd.n_cached == 28, "32-token prompt found %d cached tokens, want 28", rd.n_cached);
    CHECK(same_as_ref(&ra, a, 40, 8, f->n_vocab), "a");
    CHECK(same_as_ref(&rb, b, 40, 8, f->n_vocab), "b (prefix hit)");
    CHECK(same_as_ref(&rc, a, 40, 8, f->n_vocab), "a again (prefix hit)");
    CHECK(same_as_ref(&rd, a, 32, 8, f->n_vocab), "a's first 32 (prefix hit)");
    struct xd_sched_stats st;
    xd_sched_get_stats(s, &st);
    CHECK(st.prefix_cache_hits_total == 28 + 36 + 28, "hits %llu",
          (unsigned long long)st.prefix_cache_hits_total);
    CHECK(st.prefix_cache_queries_total == 36 * 3 + 28, "queries %llu",
          (unsigned long long)st.prefix_cache_queries_total);
    check_all_free(s);
    xd_sched_destroy(s);

    /* with caching off: no hits, same output */
    o.prefix_caching = false;
    s = sched_over(f, &o, NULL);
    struct rec re = {0};
    req = greedy_request(b, 40, 8);
    CHECK(xd_sched_submit(s, &req, sink, &re, NULL, &err) == XD_OK, "%s", err.msg);
    run_to_idle(s, 100);
    CHECK(re.n_cached == 0 && same_as_ref(&re, b, 40, 8, f->n_vocab), "no cache");
    xd_sched_destroy(s);
    CHECK(f->n_errors == 0, "fake engine: %s", f->first_error);
out:
    fake_free(f);
}

/* Concurrent requests that share a prefix hit blocks other running requests hold. */
static void test_prefix_shared_while_running(void)
{
    struct fake *f = fake_new(64, 4, 50, 64);
    struct xd_sched_opts o = xd_sched_defaults();
    o.prefill_chunk = 8;
    struct xd_sched *s = sched_over(f, &o, NULL);
    if (!s)
        goto out;
    enum { N = 6 };
    int32_t p[N][24];
    struct rec r[N];
    memset(r, 0, sizeof r);
    uint64_t rng = 99;
    make_prompt(&rng, p[0], 24, f->n_vocab);
    for (int i = 1; i < N; i++) {
        memcpy(p[i], p[0], sizeof p[0]);
        make_prompt(&rng, p[i] + 17, 7, f->n_vocab);
    }
    struct xd_err err = {{0}};
    struct xd_request req = greedy_request(p[0], 24, 20);
    xd_sched_submit(s, &req, sink, &r[0], NULL, &err);
    for (int k = 0; k < 4; k++)
        xd_sched_step(s, &err);
    for (int i = 1; i < N; i++) {
        req = greedy_request(p[i], 24, 6);
        xd_sched_submit(s, &req, sink, &r[i], NULL, &err);
    }
    run_to_idle(s, 200);
    for (int i = 0; i < N; i++) {
        CHECK(same_as_ref(&r[i], p[i], 24, i ? 6 : 20, f->n_vocab), "request %d", i);
        if (i > 0)
            CHECK(r[i].n_cached == 16, "request %d: %d cached", i, r[i].n_cached);
    }
    check_all_free(s);
    CHECK(f->n_errors == 0, "fake engine: %s", f->first_error);
    xd_sched_destroy(s);
out:
    fake_free(f);
}

/* queue_seconds is the wait before the first admission: a request that had to wait for another
 * to finish (max_running 1) reports at least that other's whole run. */
static void test_queue_seconds(void)
{
    struct fake *f = fake_new(64, 4, 50, 64);
    struct xd_sched_opts o = xd_sched_defaults();
    o.max_running = 1;
    struct xd_sched *s = sched_over(f, &o, NULL);
    if (!s)
        goto out;
    int32_t p[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    struct rec r[2];
    memset(r, 0, sizeof r);
    struct xd_err err = {{0}};
    struct timespec ts, ta, t1;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    for (int i = 0; i < 2; i++) {
        struct xd_request req = greedy_request(p, 8, 6);
        CHECK(xd_sched_submit(s, &req, sink, &r[i], NULL, &err) == XD_OK, "%s", err.msg);
    }
    /* both were submitted between ts and ta; the second cannot run before the first finishes
     * (t1), and the first was admitted before then */
    clock_gettime(CLOCK_MONOTONIC, &ta);
    while (r[0].n_finish == 0)
        xd_sched_step(s, &err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    run_to_idle(s, 100);
    double since_start = (double)(t1.tv_sec - ts.tv_sec) + (double)(t1.tv_nsec - ts.tv_nsec) * 1e-9;
    double first_run = (double)(t1.tv_sec - ta.tv_sec) + (double)(t1.tv_nsec - ta.tv_nsec) * 1e-9;
    CHECK(r[0].queue_seconds >= 0 && r[0].queue_seconds <= since_start,
          "the first, admitted in the first step, waited %g s (all of it took %g s)",
          r[0].queue_seconds, since_start);
    CHECK(r[1].queue_seconds >= first_run, "the second waited %g s, the first ran %g s",
          r[1].queue_seconds, first_run);
out:
    xd_sched_destroy(s);
    fake_free(f);
}

/* A sink that reads the scheduler's counters at each token, as /metrics may while a client
 * reads its stream: the token it is handed must already be counted. */
struct counting_rec {
    struct xd_sched *s;
    uint64_t base;      /* generation_tokens_total before the request */
    int n_tokens;
    int n_uncounted;    /* tokens delivered before the counter included them */
    bool finished;
};

static void counting_sink(void *ctx, const struct xd_sched_event *ev)
{
    struct counting_rec *r = ctx;
    if (ev->kind != XD_EVENT_TOKEN) {
        r->finished = true;
        return;
    }
    r->n_tokens++;
    struct xd_sched_stats st;
    xd_sched_get_stats(r->s, &st);
    if (st.generation_tokens_total < r->base + (uint64_t)r->n_tokens)
        r->n_uncounted++;
}

static void test_tokens_counted_before_their_sinks(void)
{
    struct fake *f = fake_new(64, 4, 50, 64);
    struct xd_sched *s = sched_over(f, NULL, NULL);
    if (!s)
        goto out;
    int32_t p[4] = {1, 2, 3, 4};
    struct counting_rec r = {.s = s};
    struct xd_sched_stats st;
    xd_sched_get_stats(s, &st);
    r.base = st.generation_tokens_total;
    struct xd_err err = {{0}};
    struct xd_request req = greedy_request(p, 4, 5);
    CHECK(xd_sched_submit(s, &req, counting_sink, &r, NULL, &err) == XD_OK, "%s", err.msg);
    run_to_idle(s, 100);
    CHECK(r.finished && r.n_tokens == 5, "finished %d after %d tokens", r.finished, r.n_tokens);
    CHECK(r.n_uncounted == 0, "%d of %d tokens reached their sink before "
          "generation_tokens_total counted them", r.n_uncounted, r.n_tokens);
out:
    xd_sched_destroy(s);
    fake_free(f);
}

static void test_cancellation_frees_blocks(void)
{
    struct fake *f = fake_new(64, 4, 50, 64);
    struct xd_sched_opts o = xd_sched_defaults();
    o.prefix_caching = false;
    struct xd_sched *s = sched_over(f, &o, NULL);
    if (!s)
        goto out;
    int32_t p[20];
    uint64_t rng = 3;
    make_prompt(&rng, p, 20, f->n_vocab);
    struct rec r[3];
    memset(r, 0, sizeof r);
    uint64_t ids[3];
    struct xd_err err = {{0}};
    for (int i = 0; i < 3; i++) {
        struct xd_request req = greedy_request(p, 20, 30);
        CHECK(xd_sched_submit(s, &req, sink, &r[i], &ids[i], &err) == XD_OK, "%s", err.msg);
    }
    for (int k = 0; k < 3; k++)
        xd_sched_step(s, &err);
    struct xd_sched_stats before, after;
    xd_sched_get_stats(s, &before);
    xd_sched_cancel(s, ids[1]);
    xd_sched_cancel(s, 12345); /* unknown: ignored */
    CHECK(r[1].n_finish == 0, "cancel finished the request before the next step");
    xd_sched_step(s, &err);
    xd_sched_get_stats(s, &after);
    CHECK(r[1].n_finish == 1 && r[1].finish == XD_FINISH_CANCELLED, "finish %d %s",
          r[1].n_finish, xd_finish_reason_str(r[1].finish));
    /* 3 sequences of 23 positions: 6 blocks each; after the cancel two remain */
    CHECK(after.n_kv_blocks_used == 12 && before.n_kv_blocks_used == 18, "blocks %d -> %d",
          before.n_kv_blocks_used, after.n_kv_blocks_used);
    int n_tok = r[1].n_tokens;
    /* cancelling a waiting request, and a finished one */
    int32_t q[3] = {1, 2, 3};
    struct rec rw = {0};
    uint64_t wid;
    struct xd_request req = greedy_request(q, 3, 5);
    xd_sched_submit(s, &req, sink, &rw, &wid, &err);
    xd_sched_cancel(s, wid);
    xd_sched_cancel(s, ids[1]);
    run_to_idle(s, 200);
    CHECK(rw.n_finish == 1 && rw.finish == XD_FINISH_CANCELLED && rw.n_tokens == 0,
          "waiting request: %d finishes, %s, %d tokens", rw.n_finish,
          xd_finish_reason_str(rw.finish), rw.n_tokens);
    CHECK(r[1].n_after_finish == 0 && r[1].n_tokens == n_tok, "events after the cancel");
    CHECK(r[0].finish == XD_FINISH_LENGTH && r[2].finish == XD_FINISH_LENGTH, "the others");
    check_all_free(s);
    /* destroy cancels what is left */
    struct rec rl = {0};
    req = greedy_request(p, 20, 30);
    xd_sched_submit(s, &req, sink, &rl, NULL, &err);
    xd_sched_step(s, &err);
    xd_sched_destroy(s);
    CHECK(rl.n_finish == 1 && rl.finish == XD_FINISH_CANCELLED, "destroy: %s",
          xd_finish_reason_str(rl.finish));
out:
    fake_free(f);
}

static void test_submit_refusals(void)
{
    struct fake *f = fake_new(8, 4, 50, 16);
    f->max_context = 40;
    struct xd_sched_opts o = xd_sched_defaults();
    o.max_waiting = 2;
    struct xd_sched *s = sched_over(f, &o, NULL);
    if (!s)
        goto out;
    int32_t p[40] = {0};
    for (int i = 0; i < 40; i++)
        p[i] = 1 + i % 40;
    struct rec r = {0};
    struct xd_err err = {{0}};
    struct xd_request req = greedy_request(p, 30, 11);
    CHECK(xd_sched_submit(s, &req, sink, &r, NULL, &err) == XD_ERR_INVALID, "over the context");
    CHECK_CONTAINS(err.msg, "context length (40)");
    req = greedy_request(p, 30, 3);
    CHECK(xd_sched_submit(s, &req, sink, &r, NULL, &err) == XD_ERR_INVALID, "over the cache");
    CHECK_CONTAINS(err.msg, "needs 9 KV blocks");
    CHECK_CONTAINS(err.msg, "the cache has 8");
    req = greedy_request(p, 0, 3);
    CHECK(xd_sched_submit(s, &req, sink, &r, NULL, &err) == XD_ERR_INVALID, "empty prompt");
    CHECK_CONTAINS(err.msg, "prompt");
    p[2] = 50;
    req = greedy_request(p, 5, 3);
    CHECK(xd_sched_submit(s, &req, sink, &r, NULL, &err) == XD_ERR_INVALID, "bad token");
    CHECK_CONTAINS(err.msg, "prompt[2]");
    p[2] = 3;
    req = greedy_request(p, 5, 3);
    req.sampling.temperature = -1;
    CHECK(xd_sched_submit(s, &req, sink, &r, NULL, &err) == XD_ERR_INVALID, "bad sampling");
    CHECK_CONTAINS(err.msg, "temperature");
    const char *stop[1] = {"x"};
    req = greedy_request(p, 5, 3);
    req.stop = stop;
    req.n_stop = 1;
    CHECK(xd_sched_submit(s, &req, sink, &r, NULL, &err) == XD_ERR_INVALID, "stop, no tokenizer");
    CHECK_CONTAINS(err.msg, "stop");
    CHECK(r.n_finish == 0 && r.n_tokens == 0, "a refused submit called the sink");
    /* the waiting queue */
    struct rec w[3];
    memset(w, 0, sizeof w);
    req = greedy_request(p, 5, 3);
    CHECK(xd_sched_submit(s, &req, sink, &w[0], NULL, &err) == XD_OK, "1");
    CHECK(xd_sched_submit(s, &req, sink, &w[1], NULL, &err) == XD_OK, "2");
    CHECK(xd_sched_submit(s, &req, sink, &w[2], NULL, &err) == XD_ERR_CAPACITY, "3 of 2");
    CHECK_CONTAINS(err.msg, "max_waiting");
    /* max_tokens 0 finishes with "length" at once */
    run_to_idle(s, 100);
    struct rec z = {0};
    req = greedy_request(p, 5, 0);
    CHECK(xd_sched_submit(s, &req, sink, &z, NULL, &err) == XD_OK, "max_tokens 0");
    run_to_idle(s, 10);
    CHECK(z.n_finish == 1 && z.finish == XD_FINISH_LENGTH && z.n_tokens == 0, "max_tokens 0");
    xd_sched_drain(s);
    CHECK(xd_sched_submit(s, &req, sink, &z, NULL, &err) == XD_ERR_UNAVAILABLE, "draining");
    xd_sched_destroy(s);
    /* invalid options name the option */
    struct xd_step_engine e = fake_engine(f);
    o = xd_sched_defaults();
    o.max_step_tokens = 17;
    s = NULL;
    CHECK(xd_sched_create(&e, NULL, NULL, 0, &o, &s, &err) == XD_ERR_INVALID && !s, "options");
    CHECK_CONTAINS(err.msg, "max_step_tokens");
out:
    fake_free(f);
}

static void test_stop_ids_and_eos(void)
{
    struct fake *f = fake_new(64, 4, 50, 64);
    int32_t script[6] = {5, 6, 7, 9, 8, 4};
    f->script = script;
    f->n_script = 6;
    f->script_base = 3;
    struct xd_step_engine e = fake_engine(f);
    int32_t eos = 9;
    struct xd_sched *s = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_sched_create(&e, NULL, &eos, 1, NULL, &s, &err) == XD_OK, "%s", err.msg);
    if (!s)
        goto out;
    int32_t p[3] = {1, 2, 3};
    struct rec r1 = {0}, r2 = {0}, r3 = {0};
    struct xd_request req = greedy_request(p, 3, 10);
    req.ignore_eos = false;
    xd_sched_submit(s, &req, sink, &r1, NULL, &err);
    req.ignore_eos = true;
    xd_sched_submit(s, &req, sink, &r2, NULL, &err);
    int32_t stop_id = 6;
    req.stop_ids = &stop_id;
    req.n_stop_ids = 1;
    xd_sched_submit(s, &req, sink, &r3, NULL, &err);
    run_to_idle(s, 100);
    CHECK(r1.finish == XD_FINISH_STOP && r1.n_tokens == 4 && r1.tokens[3] == 9, "eos: %d tokens",
          r1.n_tokens);
    CHECK(r2.finish == XD_FINISH_LENGTH && r2.n_tokens == 10, "ignore_eos: %d tokens",
          r2.n_tokens);
    CHECK(r3.finish == XD_FINISH_STOP && r3.n_tokens == 2, "stop id: %d tokens", r3.n_tokens);
    check_all_free(s);
    xd_sched_destroy(s);
out:
    fake_free(f);
}

/* Scripts the fake to produce text's tokens after a 1-token prompt and collects the output. */
static void run_stop_case(const struct xd_tokenizer *tok, const char *text, const char *const *stop,
                          int n_stop, int max_tokens, const char *want, enum xd_finish_reason want_r)
{
    int32_t *ids = NULL;
    int n = 0;
    struct xd_err err = {{0}};
    CHECK(xd_tokenizer_encode(tok, text, strlen(text), false, false, &ids, &n, &err) == XD_OK,
          "%s", err.msg);
    struct fake *f = fake_new(64, 4, xd_tokenizer_vocab_size(tok), 64);
    f->script = ids;
    f->n_script = n;
    f->script_base = 1;
    struct xd_sched *s = sched_over(f, NULL, tok);
    if (s) {
        int32_t p[1] = {1};
        struct rec r = {0};
        struct xd_request req = greedy_request(p, 1, max_tokens > 0 ? max_tokens : n);
        req.stop = stop;
        req.n_stop = n_stop;
        CHECK(xd_sched_submit(s, &req, sink, &r, NULL, &err) == XD_OK, "%s", err.msg);
        run_to_idle(s, 1000);
        CHECK(strcmp(r.text, want) == 0, "text '%s': released '%s', want '%s'", text, r.text,
              want);
        CHECK(r.finish == want_r, "text '%s': finish %s", text, xd_finish_reason_str(r.finish));
        CHECK(!r.bad_utf8, "text '%s': a release split a character", text);
        xd_sched_destroy(s);
    }
    fake_free(f);
    free(ids);
}

static void test_stop_strings_never_leak(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tokenizers/gpt2", fixtures);
    struct xd_tokenizer *tok = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_tokenizer_load(dir, &tok, &err) == XD_OK, "%s", err.msg);
    if (!tok)
        return;
    const char *text = "Hello world, this is the END of it.";
    const char *s1[] = {"the END"};
    run_stop_case(tok, text, s1, 1, 0, "Hello world, this is ", XD_FINISH_STOP);
    const char *s2[] = {"zzz", "ld, th"}; /* spans tokens */
    run_stop_case(tok, text, s2, 2, 0, "Hello wor", XD_FINISH_STOP);
    const char *s3[] = {"of it.!"}; /* a prefix that never completes is released at the end */
    run_stop_case(tok, text, s3, 1, 0, text, XD_FINISH_LENGTH);
    const char *s4[] = {"the E", "is"}; /* the earliest match wins */
    run_stop_case(tok, text, s4, 2, 0, "Hello world, th", XD_FINISH_STOP);
    const char *s5[] = {"H"};
    run_stop_case(tok, text, s5, 1, 0, "", XD_FINISH_STOP);
    const char *s6[] = {"the X"}; /* "the " is held, then released */
    run_stop_case(tok, "a the Y the X b", s6, 1, 0, "a the Y ", XD_FINISH_STOP);
    /* multi-byte characters: releases stay whole characters */
    const char *utf = "na\xc3\xafve caf\xc3\xa9 \xe2\x98\x95 and \xe2\x98\x95\xe2\x98\x95 end";
    const char *s7[] = {"\xe2\x98\x95\xe2\x98\x95"};
    run_stop_case(tok, utf, s7, 1, 0, "na\xc3\xafve caf\xc3\xa9 \xe2\x98\x95 and ",
                  XD_FINISH_STOP);
    /* every substring of the text as the stop string: the release is the text before its
     * first occurrence */
    size_t len = strlen(text);
    for (size_t a = 0; a < len; a += 3)
        for (size_t l = 1; a + l <= len && l <= 9; l += 2) {
            char stop[16], want[64];
            memcpy(stop, text + a, l);
            stop[l] = '\0';
            const char *first = strstr(text, stop);
            size_t w = (size_t)(first - text);
            memcpy(want, text, w);
            want[w] = '\0';
            const char *sv[1] = {stop};
            run_stop_case(tok, text, sv, 1, 0, want, XD_FINISH_STOP);
        }
    xd_tokenizer_destroy(tok);
}

/* Seeded random scenarios: arrivals, cancellations, lengths, caches of every size. */
static void test_random_accounting_property(void)
{
    uint64_t rng = 0x5eed5eedull;
    int n_preempt = 0, n_hits = 0, n_cancelled = 0, n_mismatch = 0, n_leak = 0;
    for (int scen = 0; scen < 1000 && test_failures < 20; scen++) {
        int bs = rng_int(&rng, 1, 8);
        int n_blocks = rng_int(&rng, 8, 40);
        struct fake *f = fake_new(n_blocks, bs, 40, rng_int(&rng, 4, 48));
        struct xd_sched_opts o = xd_sched_defaults();
        o.max_running = rng_int(&rng, 1, 8);
        o.max_resident = o.max_running + rng_int(&rng, 0, 4);
        o.prefill_chunk = rng_int(&rng, 0, 10);
        o.prefix_caching = rng_int(&rng, 0, 3) > 0;
        o.group_by_expert = rng_int(&rng, 0, 1);
        o.max_wait_steps = rng_int(&rng, 1, 4);
        o.light_steps = scen % 4 == 3; /* with three clients (below) */
        struct xd_sched *s = sched_over(f, &o, NULL);
        if (!s) {
            fake_free(f);
            break;
        }
        enum { N = 12 };
        int32_t prompts[N][64];
        int lens[N], maxt[N];
        uint64_t ids[N];
        bool cancelled[N] = {false}, submitted[N] = {false};
        struct rec *recs = calloc(N, sizeof *recs);
        int32_t base[64];
        make_prompt(&rng, base, 64, f->n_vocab);
        int cap_tokens = n_blocks * bs;
        int next = 0, steps = 0;
        struct xd_err err = {{0}};
        while ((next < N || !xd_sched_idle(s)) && steps < 5000) {
            int action = rng_int(&rng, 0, 9);
            if (action < 3 && next < N) {
                int i = next++;
                int total = rng_int(&rng, 1, cap_tokens < 60 ? cap_tokens : 60);
                lens[i] = rng_int(&rng, 1, total);
                maxt[i] = total - lens[i];
                int shared = rng_int(&rng, 0, lens[i]);
                memcpy(prompts[i], base, sizeof *base * (size_t)shared);
                make_prompt(&rng, prompts[i] + shared, lens[i] - shared, f->n_vocab);
                struct xd_request req = greedy_request(prompts[i], lens[i], maxt[i]);
                /* odd scenarios: three clients (fair step composition), even: one */
                void *ctx[1] = {&recs[i]};
                int rc = xd_sched_submit_group(s, &req, 1, scen % 2 ? (uint64_t)(i % 3) : 0, sink,
                                               ctx, &ids[i], &err);
                CHECK(rc == XD_OK, "scenario %d: submit: %s", scen, err.msg);
                submitted[i] = rc == XD_OK;
            } else if (action == 3 && next > 0) {
                int i = rng_int(&rng, 0, next - 1);
                if (submitted[i] && recs[i].n_finish == 0) {
                    xd_sched_cancel(s, ids[i]);
                    cancelled[i] = true;
                }
            } else {
                int n = xd_sched_step(s, &err);
                CHECK(n >= 0, "scenario %d: step: %s", scen, err.msg);
                int rc = xd_sched_check(s, &err);
                CHECK(rc == XD_OK, "scenario %d step %d: %s", scen, steps, err.msg);
                if (rc != XD_OK)
                    break;
                steps++;
            }
        }
        CHECK(xd_sched_idle(s), "scenario %d: not idle after %d steps", scen, steps);
        struct xd_sched_stats st;
        xd_sched_get_stats(s, &st);
        n_leak += st.n_kv_blocks_used != 0;
        CHECK(st.n_kv_blocks_used == 0, "scenario %d: %d blocks used at the end", scen,
              st.n_kv_blocks_used);
        n_preempt += st.preemptions_total > 0;
        n_hits += st.prefix_cache_hits_total > 0;
        for (int i = 0; i < next; i++) {
            if (!submitted[i])
                continue;
            CHECK(recs[i].n_finish == 1 && recs[i].n_after_finish == 0,
                  "scenario %d request %d: %d finish events, %d after", scen, i,
                  recs[i].n_finish, recs[i].n_after_finish);
            if (recs[i].finish == XD_FINISH_CANCELLED) {
                n_cancelled++;
                CHECK(cancelled[i], "scenario %d request %d cancelled by nobody", scen, i);
                continue;
            }
            bool same = same_as_ref(&recs[i], prompts[i], lens[i], maxt[i], f->n_vocab);
            n_mismatch += !same;
            CHECK(same, "scenario %d request %d (prompt %d, max_tokens %d): %d tokens differ",
                  scen, i, lens[i], maxt[i], recs[i].n_tokens);
        }
        CHECK(f->n_errors == 0, "scenario %d: fake engine: %s", scen, f->first_error);
        free(recs);
        xd_sched_destroy(s);
        fake_free(f);
    }
    /* the walk reached the interesting cases */
    CHECK(n_preempt > 50 && n_hits > 50 && n_cancelled > 50, "preempt %d hits %d cancelled %d",
          n_preempt, n_hits, n_cancelled);
    CHECK(n_mismatch == 0 && n_leak == 0, "mismatches %d leaks %d", n_mismatch, n_leak);
}

/* Grouping: when only some decoders fit, it picks overlapping ones, and nobody waits more than
 * max_wait_steps past its turn. */
static void test_grouping_bounded_wait(void)
{
    struct fake *f = fake_new(256, 4, 50, 64);
    struct xd_sched_opts o = xd_sched_defaults();
    o.max_running = 4;
    o.max_resident = 16;
    o.max_wait_steps = 4;
    struct xd_sched_stats on, off;
    run_matches_reference(f, &o, 16, 77, 10, 40, &on);
    int gap_on = g_max_gap;
    o.group_by_expert = false;
    run_matches_reference(f, &o, 16, 77, 10, 40, &off);
    int gap_off = g_max_gap;
    CHECK(on.expert_layer_steps_total > 0 && off.expert_layer_steps_total > 0, "steps");
    double d_on = (double)on.distinct_experts_total / (double)on.expert_layer_steps_total;
    double d_off = (double)off.distinct_experts_total / (double)off.expert_layer_steps_total;
    printf("  distinct experts per layer per step: grouping %.2f, FCFS %.2f; longest wait "
           "between tokens %d vs %d steps\n", d_on, d_off, gap_on, gap_off);
    CHECK(d_on < d_off, "grouping touched as many experts (%.2f) as FCFS (%.2f)", d_on, d_off);
    CHECK(gap_on <= gap_off + o.max_wait_steps + 1, "grouping delayed a request %d steps",
          gap_on);
    CHECK(f->n_errors == 0, "fake engine: %s", f->first_error);
    fake_free(f);
}

/* ---- admission: groups, fairness ---- */

/* A heavy client queues 50 requests; a light one submits one after two of them are running.
 * Fair admission runs the light request at once (the next admission or the one after); the
 * old FCFS order ran it after all 50 (asserted too, so the test sees the difference). */
static void light_client_order(bool fcfs, int *ret_light, int *ret_before)
{
    struct fake *f = fake_new(512, 4, 50, 64);
    struct xd_sched_opts o = xd_sched_defaults();
    o.max_running = 2;
    o.max_waiting = 64;
    o.prefix_caching = false;
    o.fcfs_admission = fcfs;
    struct xd_sched *s = sched_over(f, &o, NULL);
    if (!s) {
        fake_free(f);
        return;
    }
    static int32_t p[51][3];
    static struct rec heavy[50], light;
    memset(heavy, 0, sizeof heavy);
    memset(&light, 0, sizeof light);
    struct xd_err err = {{0}};
    int base = g_n_first;
    for (int i = 0; i < 50; i++) {
        p[i][0] = 1 + i % 49;
        p[i][1] = 2;
        p[i][2] = 3;
        struct xd_request req = greedy_request(p[i], 3, 4);
        void *ctx[1] = {&heavy[i]};
        CHECK(xd_sched_submit_group(s, &req, 1, 0xbeef, sink, ctx, NULL, &err) == XD_OK,
              "heavy %d: %s", i, err.msg);
    }
    /* two heavy requests admitted and running */
    CHECK(xd_sched_step(s, &err) > 0, "step: %s", err.msg);
    int before = g_n_first - base;
    p[50][0] = 7;
    p[50][1] = 8;
    p[50][2] = 9;
    struct xd_request req = greedy_request(p[50], 3, 4);
    void *ctx[1] = {&light};
    CHECK(xd_sched_submit_group(s, &req, 1, 0x11, sink, ctx, NULL, &err) == XD_OK, "light: %s",
          err.msg);
    run_to_idle(s, 1000);
    for (int i = 0; i < 50; i++)
        CHECK(same_as_ref(&heavy[i], p[i], 3, 4, f->n_vocab), "heavy %d output", i);
    CHECK(same_as_ref(&light, p[50], 3, 4, f->n_vocab), "light output");
    CHECK(f->n_errors == 0, "fake engine: %s", f->first_error);
    *ret_light = light.first_order - base;
    *ret_before = before;
    check_all_free(s);
    xd_sched_destroy(s);
    fake_free(f);
}

static void test_fair_admission_light_client_not_behind_heavy(void)
{
    int light = 0, before = 0;
    light_client_order(false, &light, &before);
    printf("  fair: the light request started %d of 51 (%d heavy started before it arrived)\n",
           light, before);
    CHECK(before == 2, "%d heavy requests started in the first step, not 2", before);
    CHECK(light > before && light <= before + 2,
          "fair admission started the light request %d of 51 (heavy before it arrived: %d)",
          light, before);
    light_client_order(true, &light, &before);
    printf("  fcfs: the light request started %d of 51\n", light);
    CHECK(light == 51, "FCFS started the light request %d of 51, not last", light);
}

/* Three clients backlogged at once: admissions alternate between them one by one, and each
 * client's own requests keep their order. */
static void test_fair_admission_round_robin_fcfs_within_client(void)
{
    struct fake *f = fake_new(512, 4, 50, 64);
    struct xd_sched_opts o = xd_sched_defaults();
    o.max_running = 1;
    o.prefix_caching = false;
    struct xd_sched *s = sched_over(f, &o, NULL);
    if (!s)
        goto out;
    /* client a: 6 requests, then b: 3, then c: 2, all before the first step */
    static const uint64_t who[11] = {'a', 'a', 'a', 'a', 'a', 'a', 'b', 'b', 'b', 'c', 'c'};
    static int32_t p[11][2];
    static struct rec r[11];
    memset(r, 0, sizeof r);
    struct xd_err err = {{0}};
    for (int i = 0; i < 11; i++) {
        p[i][0] = 1 + i;
        p[i][1] = 5;
        struct xd_request req = greedy_request(p[i], 2, 2);
        void *ctx[1] = {&r[i]};
        CHECK(xd_sched_submit_group(s, &req, 1, who[i], sink, ctx, NULL, &err) == XD_OK, "%s",
              err.msg);
    }
    int base = g_n_first;
    run_to_idle(s, 1000);
    /* a0 b0 c0 a1 b1 c1 a2 b2 a3 a4 a5 */
    static const int want[11] = {1, 4, 7, 9, 10, 11, 2, 5, 8, 3, 6};
    for (int i = 0; i < 11; i++)
        CHECK(r[i].first_order - base == want[i], "request %d (client %c) started %d, not %d", i,
              (char)who[i], r[i].first_order - base, want[i]);
    check_all_free(s);
    xd_sched_destroy(s);
out:
    fake_free(f);
}

/* ---- fair step composition ---- */

enum { LOG_STEPS = 512 };

/* What each step ran (the on_step observer): the light request's tokens and the others'
 * sequences and tokens. */
struct step_log {
    uint64_t light_id; /* 0: none yet */
    int n;
    int light_tokens[LOG_STEPS];
    int heavy_seqs[LOG_STEPS];
    int heavy_tokens[LOG_STEPS];
    double seconds[LOG_STEPS]; /* the forward's, as the scheduler timed it */
};

static void log_step(void *ctx, const struct xd_batch *batch, const uint64_t *ids,
                     const struct xd_forward_out *out, double seconds)
{
    (void)out;
    struct step_log *l = ctx;
    if (l->n >= LOG_STEPS)
        return;
    l->seconds[l->n] = seconds;
    for (int i = 0; i < batch->n_seqs; i++) {
        if (l->light_id != 0 && ids[i] == l->light_id) {
            l->light_tokens[l->n] += batch->seqs[i].n_tokens;
        } else {
            l->heavy_seqs[l->n]++;
            l->heavy_tokens[l->n] += batch->seqs[i].n_tokens;
        }
    }
    l->n++;
}

/* The steps from `from` on: the first that ran the light request (relative to from, 0: the
 * very next one) into *ret_first and how many steps ran it into *ret_n; -1 if none did. */
static void light_span(const struct step_log *l, int from, int *ret_first, int *ret_n)
{
    *ret_first = -1;
    *ret_n = 0;
    for (int i = from; i < l->n; i++)
        if (l->light_tokens[i] > 0) {
            if (*ret_first < 0)
                *ret_first = i - from;
            (*ret_n)++;
        }
}

/* A heavy client holds every running place (max_running 8) with 16 more of its requests
 * queued; a light client's request is submitted. With fair steps it runs in the very next
 * step and takes its 4 steps, as alone, while the heavy client keeps 7 of the 8 places each of
 * those steps (its 9th resident sequence sits a step out in turn, its KV kept) and gets all 8
 * again after; every output is the reference. FCFS steps (fcfs_admission) make the light
 * request wait for a heavy one to finish (asserted too: the test sees the difference). */
static void light_beside_full_batch(bool fcfs, int *ret_first, int *ret_n,
                                    struct step_log *log, int *ret_from)
{
    struct fake *f = fake_new(512, 4, 50, 64);
    struct xd_sched_opts o = xd_sched_defaults();
    o.max_running = 8;
    o.max_waiting = 64;
    o.prefix_caching = false;
    o.fcfs_admission = fcfs;
    o.on_step = log_step;
    o.on_step_ctx = log;
    memset(log, 0, sizeof *log);
    struct xd_sched *s = sched_over(f, &o, NULL);
    if (!s) {
        fake_free(f);
        return;
    }
    enum { H = 24, HT = 20, LT = 4 };
    static int32_t p[H + 1][3];
    static struct rec heavy[H], light;
    memset(heavy, 0, sizeof heavy);
    memset(&light, 0, sizeof light);
    struct xd_err err = {{0}};
    for (int i = 0; i < H; i++) {
        p[i][0] = 1 + i;
        p[i][1] = 2;
        p[i][2] = 3;
        struct xd_request req = greedy_request(p[i], 3, HT);
        void *ctx[1] = {&heavy[i]};
        CHECK(xd_sched_submit_group(s, &req, 1, 0xbeef, sink, ctx, NULL, &err) == XD_OK,
              "heavy %d: %s", i, err.msg);
    }
    for (int i = 0; i < 3; i++) /* 8 heavy running and decoding */
        CHECK(xd_sched_step(s, &err) > 0, "step: %s", err.msg);
    CHECK(log->n == 3 && log->heavy_seqs[2] == 8, "%d steps, the last ran %d heavy", log->n,
          log->heavy_seqs[2]);
    p[H][0] = 7;
    p[H][1] = 8;
    p[H][2] = 9;
    struct xd_request req = greedy_request(p[H], 3, LT);
    void *ctx[1] = {&light};
    uint64_t id = 0;
    CHECK(xd_sched_submit_group(s, &req, 1, 0x11, sink, ctx, &id, &err) == XD_OK, "light: %s",
          err.msg);
    log->light_id = id;
    *ret_from = log->n;
    run_to_idle(s, 1000);
    light_span(log, *ret_from, ret_first, ret_n);
    for (int i = 0; i < H; i++)
        CHECK(same_as_ref(&heavy[i], p[i], 3, HT, f->n_vocab), "heavy %d output", i);
    CHECK(same_as_ref(&light, p[H], 3, LT, f->n_vocab), "light output");
    CHECK(f->n_errors == 0, "fake engine: %s", f->first_error);
    check_all_free(s);
    xd_sched_destroy(s);
    fake_free(f);
}

static void test_fair_steps_light_request_runs_next_step_beside_heavy(void)
{
    static struct step_log log;
    int first = -1, n = 0, from = 0;
    light_beside_full_batch(false, &first, &n, &log, &from);
    printf("  fair: the light request ran from step +%d for %d steps (alone: 4)\n", first, n);
    CHECK(first == 0 && n == 4, "fair steps ran the light request from step +%d for %d steps, "
          "not from the next one for 4", first, n);
    for (int i = from; i < from + 4 && i < log.n; i++) {
        CHECK(log.heavy_seqs[i] == 7, "step +%d ran %d heavy sequences beside the light one, "
              "not 7 (its share of 8)", i - from, log.heavy_seqs[i]);
        CHECK(log.heavy_seqs[i] + (log.light_tokens[i] > 0) <= 8, "step +%d over max_running",
              i - from);
    }
    /* work-conserving: the light request gone, the heavy client has the whole step again */
    CHECK(from + 4 < log.n && log.heavy_seqs[from + 4] == 8, "after the light request: %d heavy "
          "sequences, not 8", from + 4 < log.n ? log.heavy_seqs[from + 4] : -1);
    light_beside_full_batch(true, &first, &n, &log, &from);
    printf("  fcfs: the light request ran from step +%d for %d steps\n", first, n);
    CHECK(first >= 10 && n == 4, "FCFS steps ran the light request from step +%d (%d steps): "
          "it should wait for heavy requests to finish", first, n);
}

/* Heavy prompts of 100 tokens fill every step's token budget (16) with prefill chunks; a
 * light request of 3 tokens gets its share of the budget in the next step, the step stays
 * full (the heavy client takes what the light one does not use), and the light request takes
 * 3 steps, as alone. FCFS steps leave it behind the heavy prefills. */
static void light_beside_prefill(bool fcfs, int *ret_first, int *ret_n, bool *ret_full)
{
    struct fake *f = fake_new(1024, 4, 50, 64);
    struct xd_sched_opts o = xd_sched_defaults();
    o.max_running = 8;
    o.max_step_tokens = 16;
    o.prefill_chunk = 16;
    o.prefix_caching = false;
    o.fcfs_admission = fcfs;
    static struct step_log log;
    memset(&log, 0, sizeof log);
    o.on_step = log_step;
    o.on_step_ctx = &log;
    struct xd_sched *s = sched_over(f, &o, NULL);
    if (!s) {
        fake_free(f);
        return;
    }
    enum { H = 4, HP = 100, HT = 2, LT = 3 };
    static int32_t p[H][HP], lp[3] = {7, 8, 9};
    static struct rec heavy[H], light;
    memset(heavy, 0, sizeof heavy);
    memset(&light, 0, sizeof light);
    uint64_t rng = 42;
    struct xd_err err = {{0}};
    for (int i = 0; i < H; i++) {
        make_prompt(&rng, p[i], HP, f->n_vocab);
        struct xd_request req = greedy_request(p[i], HP, HT);
        void *ctx[1] = {&heavy[i]};
        CHECK(xd_sched_submit_group(s, &req, 1, 0xbeef, sink, ctx, NULL, &err) == XD_OK,
              "heavy %d: %s", i, err.msg);
    }
    CHECK(xd_sched_step(s, &err) == 16, "the first step: %s", err.msg);
    struct xd_request req = greedy_request(lp, 3, LT);
    void *ctx[1] = {&light};
    uint64_t id = 0;
    CHECK(xd_sched_submit_group(s, &req, 1, 0x11, sink, ctx, &id, &err) == XD_OK, "light: %s",
          err.msg);
    log.light_id = id;
    int from = log.n;
    run_to_idle(s, 1000);
    light_span(&log, from, ret_first, ret_n);
    *ret_full = *ret_first >= 0 &&
                log.light_tokens[from + *ret_first] + log.heavy_tokens[from + *ret_first] == 16;
    for (int i = 0; i < H; i++)
        CHECK(same_as_ref(&heavy[i], p[i], HP, HT, f->n_vocab), "heavy %d output", i);
    CHECK(same_as_ref(&light, lp, 3, LT, f->n_vocab), "light output");
    CHECK(f->n_errors == 0, "fake engine: %s", f->first_error);
    check_all_free(s);
    xd_sched_destroy(s);
    fake_free(f);
}

static void test_fair_steps_share_the_token_budget_with_prefill(void)
{
    int first = -1, n = 0;
    bool full = false;
    light_beside_prefill(false, &first, &n, &full);
    printf("  fair: the light request ran from step +%d for %d steps (alone: 3)\n", first, n);
    CHECK(first == 0 && n == 3, "fair steps ran the light request from step +%d for %d steps, "
          "not from the next one for 3", first, n);
    CHECK(full, "the light request's first step did not use the whole token budget");
    light_beside_prefill(true, &first, &n, &full);
    printf("  fcfs: the light request ran from step +%d for %d steps\n", first, n);
    CHECK(first >= 6, "FCFS steps ran the light request from step +%d: it should wait for the "
          "heavy prefills", first);
}

/* light_steps (serve's --admission fair-split): a heavy client decodes 32 sequences; a light
 * request of 3 prompt tokens (a quarter of 32 at most) runs from the next step in a step of
 * its own, the heavy client sitting out; light-only steps start only while the time of the
 * shared step before them lasts (the scheduler's budget, from the forward times on_step sees
 * too), so the heavy client keeps at least half the engine's time; the light request is in
 * 4 consecutive steps (alone or in the shared ones), and every output is the reference. */
static void test_fair_light_steps_of_its_own_bounded_by_shared_time(void)
{
    struct fake *f = fake_new(1024, 4, 50, 64);
    struct xd_sched_opts o = xd_sched_defaults();
    o.max_running = 32;
    o.max_waiting = 64;
    o.prefix_caching = false;
    o.light_steps = true;
    static struct step_log log;
    memset(&log, 0, sizeof log);
    o.on_step = log_step;
    o.on_step_ctx = &log;
    struct xd_sched *s = sched_over(f, &o, NULL);
    if (!s)
        goto out;
    enum { H = 40, HT = 20, LT = 4 };
    static int32_t p[H][3], lp[3] = {7, 8, 9};
    static struct rec heavy[H], light;
    memset(heavy, 0, sizeof heavy);
    memset(&light, 0, sizeof light);
    struct xd_err err = {{0}};
    for (int i = 0; i < H; i++) {
        p[i][0] = 1 + i % 49;
        p[i][1] = 2 + i / 49;
        p[i][2] = 3;
        struct xd_request req = greedy_request(p[i], 3, HT);
        void *ctx[1] = {&heavy[i]};
        CHECK(xd_sched_submit_group(s, &req, 1, 0xbeef, sink, ctx, NULL, &err) == XD_OK,
              "heavy %d: %s", i, err.msg);
    }
    for (int i = 0; i < 3; i++)
        CHECK(xd_sched_step(s, &err) > 0, "step: %s", err.msg);
    CHECK(log.n == 3 && log.heavy_seqs[2] == 32, "the last step ran %d heavy", log.heavy_seqs[2]);
    struct xd_request req = greedy_request(lp, 3, LT);
    void *ctx[1] = {&light};
    uint64_t id = 0;
    CHECK(xd_sched_submit_group(s, &req, 1, 0x11, sink, ctx, &id, &err) == XD_OK, "light: %s",
          err.msg);
    log.light_id = id;
    int from = log.n;
    run_to_idle(s, 1000);
    int first = -1, n = 0, n_alone = 0;
    light_span(&log, from, &first, &n);
    for (int i = from; i < log.n; i++)
        n_alone += log.light_tokens[i] > 0 && log.heavy_seqs[i] == 0;
    printf("  the light request ran from step +%d for %d steps, %d of them alone\n", first, n,
           n_alone);
    CHECK(first == 0 && n == 4 && log.light_tokens[from + 3] > 0,
          "the light request ran from step +%d in %d steps, not in the next 4", first, n);
    CHECK(log.heavy_seqs[from] == 0, "its first step ran %d heavy sequences, not none",
          log.heavy_seqs[from]);
    /* light-only steps begin only while the last shared step's time is not used up */
    double budget = 0;
    for (int i = 0; i < log.n; i++) {
        bool alone = log.heavy_seqs[i] == 0 && log.light_tokens[i] > 0;
        if (alone) {
            CHECK(budget > 0, "step %d ran light-only with the shared step's time used up", i);
            budget -= log.seconds[i];
        } else {
            budget = log.seconds[i];
        }
    }
    /* the heavy client: never starved, the whole step again once the light one is done */
    CHECK(log.heavy_seqs[from + 4] == 32, "after the light request: %d heavy, not 32",
          log.heavy_seqs[from + 4]);
    for (int i = 0; i < H; i++)
        CHECK(same_as_ref(&heavy[i], p[i], 3, HT, f->n_vocab), "heavy %d output", i);
    CHECK(same_as_ref(&light, lp, 3, LT, f->n_vocab), "light output");
    CHECK(f->n_errors == 0, "fake engine: %s", f->first_error);
    check_all_free(s);
    xd_sched_destroy(s);
out:
    fake_free(f);
}

/* max_step_seconds (serve's --max-step-ms): with a forward costing 1 ms a token, four requests of
 * 48 prompt tokens would make a first step of 192 tokens; capped at 8 ms, every step after the
 * fit's first two steps holds 7 or 8 tokens (the fake reports its cost exactly, so the fit
 * is exact up to rounding; a wall clock would make this test depend on the machine's load), the prompts are prefilled in chunks, and every output is the reference.
 * Without the cap the same requests run in a step of 192 tokens. */
static void step_seconds_run(double max_step_seconds, int *ret_max_after, int *ret_first,
                             int *ret_steps)
{
    struct fake *f = fake_new(256, 16, 50, 256);
    f->usec_per_token = 1000;
    struct xd_sched_opts o = xd_sched_defaults();
    o.prefix_caching = false;
    o.max_step_seconds = max_step_seconds;
    static struct step_log log;
    memset(&log, 0, sizeof log);
    o.on_step = log_step;
    o.on_step_ctx = &log;
    struct xd_sched *s = sched_over(f, &o, NULL);
    *ret_max_after = *ret_first = *ret_steps = -1;
    if (!s)
        goto out;
    enum { R = 4, P = 48, T = 8 };
    static int32_t p[R][P], wp[2] = {5, 6};
    static struct rec recs[R], warm;
    memset(recs, 0, sizeof recs);
    memset(&warm, 0, sizeof warm);
    struct xd_err err = {{0}};
    /* one small request first: the fit learns from two steps of 2 and 1 tokens */
    struct xd_request wreq = greedy_request(wp, 2, 2);
    void *wctx[1] = {&warm};
    CHECK(xd_sched_submit_group(s, &wreq, 1, 0x1, sink, wctx, NULL, &err) == XD_OK, "warm: %s",
          err.msg);
    run_to_idle(s, 100);
    const int from = log.n;
    for (int i = 0; i < R; i++) {
        for (int j = 0; j < P; j++)
            p[i][j] = 1 + (i * 7 + j * 3) % 49;
        struct xd_request req = greedy_request(p[i], P, T);
        void *ctx[1] = {&recs[i]};
        CHECK(xd_sched_submit_group(s, &req, 1, 0x2 + (uint64_t)i, sink, ctx, NULL, &err) ==
                  XD_OK, "request %d: %s", i, err.msg);
    }
    run_to_idle(s, 10000);
    *ret_first = log.heavy_tokens[from];
    *ret_max_after = 0;
    for (int i = from; i < log.n; i++)
        *ret_max_after = log.heavy_tokens[i] > *ret_max_after ? log.heavy_tokens[i]
                                                              : *ret_max_after;
    *ret_steps = log.n - from;
    for (int i = 0; i < R; i++)
        CHECK(same_as_ref(&recs[i], p[i], P, T, f->n_vocab), "request %d output", i);
    CHECK(same_as_ref(&warm, wp, 2, 2, f->n_vocab), "warm-up output");
    CHECK(f->n_errors == 0, "fake engine: %s", f->first_error);
    check_all_free(s);
    xd_sched_destroy(s);
out:
    fake_free(f);
}

static void test_max_step_seconds_caps_step_tokens(void)
{
    int max_after = 0, first = 0, steps = 0;
    step_seconds_run(0.008, &max_after, &first, &steps);
    printf("  capped at 8 ms: the largest step %d tokens, %d steps\n", max_after, steps);
    CHECK(max_after >= 7 && max_after <= 8,
          "with a forward of 1 ms a token and max_step_seconds 8 ms, a step of %d tokens",
          max_after);
    CHECK(steps >= 4 * 48 / 8, "%d steps: the 192 prompt tokens were not chunked to the cap",
          steps);
    step_seconds_run(0.0, &max_after, &first, &steps);
    printf("  uncapped: the first step %d tokens, %d steps\n", first, steps);
    CHECK(first == 4 * 48, "uncapped, the first step ran %d tokens, not all 192 prompt tokens",
          first);
}

/* light_steps with the KV cache full of the heavy client's blocks: the light request cannot
 * be admitted, so its light-only step would run nothing; the step is shared instead (the heavy
 * sequences finish and free blocks) and everything completes, with reference outputs. */
static void test_fair_light_steps_with_the_cache_full_still_progress(void)
{
    struct fake *f = fake_new(16, 4, 50, 64);
    struct xd_sched_opts o = xd_sched_defaults();
    o.max_running = 4;
    o.prefix_caching = false;
    o.light_steps = true;
    struct xd_sched *s = sched_over(f, &o, NULL);
    if (!s)
        goto out;
    enum { H = 4, HP = 13, HT = 3 };
    static int32_t p[H][HP], lp[1] = {7};
    static struct rec heavy[H], light;
    memset(heavy, 0, sizeof heavy);
    memset(&light, 0, sizeof light);
    uint64_t rng = 7;
    struct xd_err err = {{0}};
    for (int i = 0; i < H; i++) {
        make_prompt(&rng, p[i], HP, f->n_vocab);
        struct xd_request req = greedy_request(p[i], HP, HT);
        void *ctx[1] = {&heavy[i]};
        CHECK(xd_sched_submit_group(s, &req, 1, 0xbeef, sink, ctx, NULL, &err) == XD_OK,
              "heavy %d: %s", i, err.msg);
    }
    CHECK(xd_sched_step(s, &err) == H * HP, "the first step: %s", err.msg);
    struct xd_sched_stats st;
    xd_sched_get_stats(s, &st);
    CHECK(st.n_kv_blocks_used == 16, "%d of 16 blocks used after the heavy prefill",
          st.n_kv_blocks_used);
    struct xd_request req = greedy_request(lp, 1, 2);
    void *ctx[1] = {&light};
    CHECK(xd_sched_submit_group(s, &req, 1, 0x11, sink, ctx, NULL, &err) == XD_OK, "light: %s",
          err.msg);
    int steps = run_to_idle(s, 100);
    CHECK(steps <= 10, "%d steps to finish 3 heavy tokens each and 2 light ones", steps);
    for (int i = 0; i < H; i++)
        CHECK(same_as_ref(&heavy[i], p[i], HP, HT, f->n_vocab), "heavy %d output", i);
    CHECK(same_as_ref(&light, lp, 1, 2, f->n_vocab), "light output");
    CHECK(f->n_errors == 0, "fake engine: %s", f->first_error);
    check_all_free(s);
    xd_sched_destroy(s);
out:
    fake_free(f);
}

/* Many clients at once (the step's client table grows past its first sizes): 300 one-request
 * clients beside a heavy one, max_running 16; everything finishes with reference outputs and
 * the KV accounting holds after every step (run_to_idle). */
static void test_fair_steps_many_clients(void)
{
    struct fake *f = fake_new(1024, 4, 50, 64);
    struct xd_sched_opts o = xd_sched_defaults();
    o.max_running = 16;
    o.max_waiting = 512;
    o.prefix_caching = false;
    struct xd_sched *s = sched_over(f, &o, NULL);
    if (!s)
        goto out;
    enum { N = 300, H = 30 };
    static int32_t p[N + H][2];
    static struct rec r[N + H];
    memset(r, 0, sizeof r);
    struct xd_err err = {{0}};
    for (int i = 0; i < N + H; i++) {
        p[i][0] = 1 + i % 49;
        p[i][1] = 1 + i / 49;
        struct xd_request req = greedy_request(p[i], 2, i < N ? 3 : 12);
        void *ctx[1] = {&r[i]};
        uint64_t client = i < N ? 1000 + (uint64_t)i : 7;
        CHECK(xd_sched_submit_group(s, &req, 1, client, sink, ctx, NULL, &err) == XD_OK,
              "request %d: %s", i, err.msg);
        if (i % 50 == 49)
            CHECK(xd_sched_step(s, &err) >= 0, "step: %s", err.msg);
    }
    run_to_idle(s, 5000);
    for (int i = 0; i < N + H; i++)
        CHECK(same_as_ref(&r[i], p[i], 2, i < N ? 3 : 12, f->n_vocab), "request %d output", i);
    CHECK(f->n_errors == 0, "fake engine: %s", f->first_error);
    check_all_free(s);
    xd_sched_destroy(s);
out:
    fake_free(f);
}

/* A group is queued all or none: a group the queue has no room for now is XD_ERR_CAPACITY and
 * queues nothing; a bad request anywhere in it refuses all; a group larger than max_waiting
 * could never be queued (XD_ERR_INVALID naming both numbers), but one exactly that large is
 * accepted by an idle scheduler; a sequence over the whole KV cache refuses its group. When
 * one client fills the queue, another still gets its share (max_waiting / 2 with two). */
static void test_group_all_or_none(void)
{
    struct fake *f = fake_new(16, 4, 50, 64);
    struct xd_sched_opts o = xd_sched_defaults();
    o.max_running = 2;
    o.max_waiting = 4;
    o.prefix_caching = false;
    struct xd_sched *s = sched_over(f, &o, NULL);
    if (!s)
        goto out;
    CHECK(xd_sched_max_waiting(s) == 4, "max_waiting %d", xd_sched_max_waiting(s));
    int32_t p[5][3];
    struct xd_request req[5];
    struct rec r[5], g[3], other[3];
    void *ctx[5], *g_ctx[3], *other_ctx[3];
    memset(r, 0, sizeof r);
    memset(g, 0, sizeof g);
    memset(other, 0, sizeof other);
    for (int i = 0; i < 5; i++) {
        p[i][0] = 1 + i;
        p[i][1] = 2;
        p[i][2] = 3;
        req[i] = greedy_request(p[i], 3, 3);
        ctx[i] = &r[i];
    }
    for (int i = 0; i < 3; i++) {
        g_ctx[i] = &g[i];
        other_ctx[i] = &other[i];
    }
    struct xd_err err = {{0}};
    /* an idle scheduler takes a group as large as the whole queue */
    uint64_t ids[5] = {0};
    CHECK(xd_sched_submit_group(s, req, 4, 1, sink, ctx, ids, &err) == XD_OK, "4 of 4: %s",
          err.msg);
    CHECK(ids[0] && ids[1] == ids[0] + 1 && ids[3] == ids[0] + 3, "ids %llu..%llu",
          (unsigned long long)ids[0], (unsigned long long)ids[3]);
    /* full: one more from the same client is refused for now */
    CHECK(xd_sched_submit_group(s, &req[4], 1, 1, sink, &ctx[4], NULL, &err) == XD_ERR_CAPACITY,
          "a fifth in a queue of 4");
    CHECK_CONTAINS(err.msg, "max_waiting 4");
    /* one step admits two (max_running): room for two, not for three */
    CHECK(xd_sched_step(s, &err) > 0, "step: %s", err.msg);
    struct xd_sched_stats st;
    xd_sched_get_stats(s, &st);
    CHECK(st.n_running == 2 && st.n_waiting == 2, "running %d waiting %d", st.n_running,
          st.n_waiting);
    CHECK(xd_sched_submit_group(s, req, 3, 1, sink, g_ctx, NULL, &err) == XD_ERR_CAPACITY,
          "3 into room for 2");
    CHECK_CONTAINS(err.msg, "2 sequences are waiting; 3 more do not fit");
    /* a bad request anywhere refuses the group */
    int32_t bad[3] = {1, 50, 2};
    struct xd_request two[2] = {req[0], greedy_request(bad, 3, 3)};
    CHECK(xd_sched_submit_group(s, two, 2, 1, sink, g_ctx, NULL, &err) == XD_ERR_INVALID,
          "a bad second request");
    CHECK_CONTAINS(err.msg, "prompt[1]");
    /* a sequence over the whole cache (16 blocks of 4) refuses its group: a 400, not a 429 */
    static int32_t longp[70];
    for (int i = 0; i < 70; i++)
        longp[i] = 1 + i % 40;
    struct xd_request huge[2] = {req[0], greedy_request(longp, 60, 10)};
    CHECK(xd_sched_submit_group(s, huge, 2, 1, sink, g_ctx, NULL, &err) == XD_ERR_INVALID,
          "over the cache");
    CHECK_CONTAINS(err.msg, "the cache has 16");
    /* larger than the queue could ever hold, even from a client with nothing queued */
    CHECK(xd_sched_submit_group(s, req, 5, 2, sink, ctx, NULL, &err) == XD_ERR_INVALID,
          "5 in a queue of 4");
    CHECK_CONTAINS(err.msg, "5 sequences in one group");
    CHECK_CONTAINS(err.msg, "at most 4 (max_waiting)");
    for (int i = 0; i < 3; i++)
        CHECK(g[i].n_tokens == 0 && g[i].n_finish == 0, "a refused group called sink %d", i);
    CHECK(r[4].n_tokens == 0 && r[4].n_finish == 0, "a refused group called a sink");
    /* what fits now is queued whole: the queue is full again, all client 1's */
    CHECK(xd_sched_submit_group(s, req, 2, 1, sink, g_ctx, NULL, &err) == XD_OK, "2 into 2: %s",
          err.msg);
    /* another client still gets its share of the full queue (4 / 2 clients), no more */
    CHECK(xd_sched_submit_group(s, &req[4], 1, 2, sink, other_ctx, NULL, &err) == XD_OK,
          "client 2's first into a queue full of client 1's: %s", err.msg);
    CHECK(xd_sched_submit_group(s, req, 2, 2, sink, &other_ctx[1], NULL, &err) ==
              XD_ERR_CAPACITY, "client 2 past its share");
    CHECK_CONTAINS(err.msg, "its share is 2");
    run_to_idle(s, 1000);
    for (int i = 0; i < 4; i++)
        CHECK(same_as_ref(&r[i], p[i], 3, 3, f->n_vocab) && r[i].n_finish == 1, "group %d", i);
    for (int i = 0; i < 2; i++)
        CHECK(same_as_ref(&g[i], p[i], 3, 3, f->n_vocab) && g[i].n_finish == 1, "second %d", i);
    CHECK(g[2].n_tokens == 0 && g[2].n_finish == 0, "never submitted");
    CHECK(same_as_ref(&other[0], p[4], 3, 3, f->n_vocab) && other[0].n_finish == 1, "client 2");
    CHECK(other[1].n_finish == 0 && other[2].n_finish == 0, "client 2's refused group ran");
    check_all_free(s);
    xd_sched_destroy(s);
out:
    fake_free(f);
}

/* ---- threaded mode ---- */

struct submitter {
    struct xd_sched *s;
    struct fake *f;
    int first, n;
    int32_t (*prompts)[64];
    int *lens, *maxt;
    struct rec *recs;
};

static void *submit_thread(void *arg)
{
    struct submitter *t = arg;
    for (int i = t->first; i < t->first + t->n; i++) {
        struct xd_request req = greedy_request(t->prompts[i], t->lens[i], t->maxt[i]);
        struct xd_err err = {{0}};
        uint64_t id;
        int rc = xd_sched_submit(t->s, &req, sink, &t->recs[i], &id, &err);
        if (rc != XD_OK)
            fprintf(stderr, "submit: %s\n", err.msg);
        if (i % 7 == 3)
            xd_sched_cancel(t->s, id);
    }
    return NULL;
}

static void test_threaded_concurrent_submitters(void)
{
    struct fake *f = fake_new(48, 4, 50, 32);
    struct xd_sched_opts o = xd_sched_defaults();
    o.max_running = 6;
    struct xd_sched *s = sched_over(f, &o, NULL);
    if (!s)
        goto out;
    enum { T = 4, PER = 16, N = T * PER };
    int32_t(*prompts)[64] = calloc(N, sizeof *prompts);
    int lens[N], maxt[N];
    struct rec *recs = calloc(N, sizeof *recs);
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    int n_done = 0;
    uint64_t rng = 31;
    for (int i = 0; i < N; i++) {
        lens[i] = rng_int(&rng, 1, 40);
        maxt[i] = rng_int(&rng, 1, 20);
        make_prompt(&rng, prompts[i], lens[i], f->n_vocab);
        recs[i].lock = &lock;
        recs[i].n_done = &n_done;
    }
    struct xd_err err = {{0}};
    CHECK(xd_sched_start(s, &err) == XD_OK, "%s", err.msg);
    pthread_t th[T];
    struct submitter sub[T];
    for (int t = 0; t < T; t++) {
        sub[t] = (struct submitter){s, f, t * PER, PER, prompts, lens, maxt, recs};
        pthread_create(&th[t], NULL, submit_thread, &sub[t]);
    }
    for (int t = 0; t < T; t++)
        pthread_join(th[t], NULL);
    /* the last finish reaches its sink before the loop retires the request: wait for both */
    for (int spin = 0; spin < 20000; spin++) {
        pthread_mutex_lock(&lock);
        int done = n_done;
        pthread_mutex_unlock(&lock);
        if (done == N && xd_sched_idle(s))
            break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    CHECK(xd_sched_idle(s), "not idle");
    int n_ok = 0;
    for (int i = 0; i < N; i++) {
        pthread_mutex_lock(&lock);
        int nf = recs[i].n_finish;
        pthread_mutex_unlock(&lock);
        CHECK(nf == 1, "request %d: %d finishes", i, nf);
        if (recs[i].finish == XD_FINISH_CANCELLED) {
            CHECK(i % 7 == 3, "request %d cancelled", i);
            continue;
        }
        CHECK(same_as_ref(&recs[i], prompts[i], lens[i], maxt[i], f->n_vocab), "request %d", i);
        n_ok++;
    }
    CHECK(n_ok >= N - N / 7 - 1, "%d completed", n_ok);
    check_all_free(s);
    xd_sched_destroy(s);
    CHECK(f->n_errors == 0, "fake engine: %s", f->first_error);
    free(prompts);
    free(recs);
out:
    fake_free(f);
}

/* Groups from three client threads into a small queue while the scheduler thread runs: each
 * group is all or none (every sequence of an accepted group finishes once with its reference
 * output; no sink of a refused group is ever called; how many are refused depends on the
 * threads' timing) and everything is freed at the end. Run under ThreadSanitizer too. */
struct group_submitter {
    struct xd_sched *s;
    uint64_t client;
    int first, n_groups;          /* groups first .. first + n_groups - 1 */
    int32_t (*prompts)[8];
    struct rec *recs;             /* (5 * groups,) sequence k of group g at 5 * g + k */
    int *sizes;                   /* (groups,) */
    bool *accepted;               /* (groups,) */
};

static void *submit_groups_thread(void *arg)
{
    struct group_submitter *t = arg;
    for (int g = t->first; g < t->first + t->n_groups; g++) {
        struct xd_request req[5];
        void *ctx[5];
        for (int k = 0; k < t->sizes[g]; k++) {
            req[k] = greedy_request(t->prompts[5 * g + k], 4, 6);
            ctx[k] = &t->recs[5 * g + k];
        }
        struct xd_err err = {{0}};
        int rc = XD_OK;
        for (int tries = 0; tries < 2000; tries++) {
            rc = xd_sched_submit_group(t->s, req, t->sizes[g], t->client, sink, ctx, NULL, &err);
            if (rc != XD_ERR_CAPACITY || tries % 3 == 2)
                break; /* some refusals are kept: their sinks must stay silent */
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
        t->accepted[g] = rc == XD_OK;
        if (rc != XD_OK && rc != XD_ERR_CAPACITY)
            fprintf(stderr, "group %d: %s\n", g, err.msg);
    }
    return NULL;
}

static void test_threaded_groups_all_or_none(void)
{
    struct fake *f = fake_new(64, 4, 50, 32);
    struct xd_sched_opts o = xd_sched_defaults();
    o.max_running = 3;
    o.max_waiting = 8;
    struct xd_sched *s = sched_over(f, &o, NULL);
    if (!s)
        goto out;
    enum { T = 3, PER = 20, G = T * PER };
    int32_t(*prompts)[8] = calloc(5 * G, sizeof *prompts);
    struct rec *recs = calloc(5 * G, sizeof *recs);
    int sizes[G];
    bool accepted[G];
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    int n_done = 0;
    uint64_t rng = 77;
    for (int g = 0; g < G; g++) {
        sizes[g] = rng_int(&rng, 1, 5);
        for (int k = 0; k < 5; k++) {
            make_prompt(&rng, prompts[5 * g + k], 4, f->n_vocab);
            recs[5 * g + k].lock = &lock;
            recs[5 * g + k].n_done = &n_done;
        }
    }
    struct xd_err err = {{0}};
    CHECK(xd_sched_start(s, &err) == XD_OK, "%s", err.msg);
    pthread_t th[T];
    struct group_submitter sub[T];
    for (int t = 0; t < T; t++) {
        sub[t] = (struct group_submitter){s, 100 + (uint64_t)t, t * PER, PER, prompts, recs,
                                          sizes, accepted};
        pthread_create(&th[t], NULL, submit_groups_thread, &sub[t]);
    }
    for (int t = 0; t < T; t++)
        pthread_join(th[t], NULL);
    int want = 0, n_accepted = 0;
    for (int g = 0; g < G; g++)
        if (accepted[g]) {
            want += sizes[g];
            n_accepted++;
        }
    for (int spin = 0; spin < 20000; spin++) {
        pthread_mutex_lock(&lock);
        int done = n_done;
        pthread_mutex_unlock(&lock);
        if (done >= want && xd_sched_idle(s))
            break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    CHECK(xd_sched_idle(s), "not idle");
    printf("  %d of %d groups accepted\n", n_accepted, G);
    CHECK(n_accepted > 0, "no group of %d accepted", G);
    for (int g = 0; g < G; g++)
        for (int k = 0; k < sizes[g]; k++) {
            struct rec *r = &recs[5 * g + k];
            pthread_mutex_lock(&lock);
            int nf = r->n_finish;
            pthread_mutex_unlock(&lock);
            if (accepted[g])
                CHECK(nf == 1 && same_as_ref(r, prompts[5 * g + k], 4, 6, f->n_vocab),
                      "group %d sequence %d: %d finishes", g, k, nf);
            else
                CHECK(nf == 0 && r->n_tokens == 0, "refused group %d ran sequence %d", g, k);
        }
    check_all_free(s);
    xd_sched_destroy(s);
    CHECK(f->n_errors == 0, "fake engine: %s", f->first_error);
    free(prompts);
    free(recs);
out:
    fake_free(f);
}

static void test_engine_failure_finishes_with_error(void)
{
    struct fake *f = fake_new(64, 4, 50, 64);
    f->fail_after = 3;
    struct xd_sched *s = sched_over(f, NULL, NULL);
    if (!s)
        goto out;
    int32_t p[5] = {1, 2, 3, 4, 5};
    struct rec r[2];
    memset(r, 0, sizeof r);
    struct xd_err err = {{0}};
    for (int i = 0; i < 2; i++) {
        struct xd_request req = greedy_request(p, 5, 20);
        xd_sched_submit(s, &req, sink, &r[i], NULL, &err);
    }
    int rc = 0;
    for (int k = 0; k < 10 && rc >= 0; k++)
        rc = xd_sched_step(s, &err);
    CHECK(rc == XD_ERR_INVALID, "step rc %d", rc);
    CHECK_CONTAINS(err.msg, "fake engine failure");
    CHECK(r[0].finish == XD_FINISH_ERROR && r[1].finish == XD_FINISH_ERROR, "finish");
    check_all_free(s);
    xd_sched_destroy(s);
out:
    fake_free(f);
}

/* ---- the real CPU engine ---- */

static void test_cpu_engine_batched_equals_alone(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/golden/olmoe-f32", fixtures);
    struct xd_model *m = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_model_load(dir, &m, &err) == XD_OK, "%s", err.msg);
    if (!m)
        return;
    struct xd_engine_opts eo = {.device = XD_DEVICE_CPU, .n_kv_blocks = 256, .block_size = 4,
                                .max_batch_tokens = 64};
    struct xd_engine *e = NULL;
    CHECK(xd_engine_create(m, &eo, &e, &err) == XD_OK, "%s", err.msg);
    if (!e) {
        xd_model_destroy(m);
        return;
    }
    const int V = xd_engine_config(e)->vocab_size;
    enum { N = 32, NEW = 8 };
    int32_t prompts[N][16];
    int lens[N];
    uint64_t rng = 2024;
    for (int i = 0; i < N; i++) {
        lens[i] = rng_int(&rng, 2, 14);
        make_prompt(&rng, prompts[i], lens[i], V);
        if (i % 4 == 1) /* some share a prefix */
            memcpy(prompts[i], prompts[i - 1], sizeof *prompts[i] * (size_t)(lens[i] < lens[i - 1] ? lens[i] : lens[i - 1]) / 2 * 2);
    }
    /* alone: the offline runner, one request at a time */
    int32_t alone[N][NEW];
    for (int i = 0; i < N; i++) {
        struct xd_sampling_params sp = xd_sampling_defaults();
        sp.temperature = 0.0f;
        struct xd_sampler *smp = NULL;
        xd_sampler_create(&sp, V, &smp, &err);
        struct xd_offline_request req = {.prompt = prompts[i], .n_prompt = lens[i],
                                         .max_tokens = NEW};
        struct xd_offline_result res;
        CHECK(xd_offline_generate(e, &req, smp, &res, &err) == XD_OK, "%s", err.msg);
        CHECK(res.n_tokens == NEW, "alone %d: %d tokens", i, res.n_tokens);
        memcpy(alone[i], res.tokens, sizeof alone[i]);
        xd_offline_result_finish(&res);
        xd_sampler_destroy(smp);
    }
    /* together: 32 at once through the scheduler, small chunks so prefill and decode mix */
    struct xd_step_engine se;
    xd_step_engine_init(&se, e);
    struct xd_sched_opts o = xd_sched_defaults();
    o.prefill_chunk = 5;
    struct xd_sched *s = NULL;
    CHECK(xd_sched_create(&se, NULL, NULL, 0, &o, &s, &err) == XD_OK, "%s", err.msg);
    struct rec *recs = calloc(N, sizeof *recs);
    for (int i = 0; s && i < N; i++) {
        struct xd_request req = greedy_request(prompts[i], lens[i], NEW);
        CHECK(xd_sched_submit(s, &req, sink, &recs[i], NULL, &err) == XD_OK, "%s", err.msg);
    }
    if (s)
        run_to_idle(s, 1000);
    int n_same = 0;
    for (int i = 0; i < N; i++) {
        bool same = recs[i].n_tokens == NEW &&
                    memcmp(recs[i].tokens, alone[i], sizeof alone[i]) == 0;
        CHECK(same, "request %d: batched differs from alone", i);
        n_same += same;
    }
    struct xd_sched_stats st;
    if (s)
        xd_sched_get_stats(s, &st);
    printf("  %d of %d identical; %llu steps, %llu prefix-cache hit tokens\n", n_same, N,
           s ? (unsigned long long)st.steps_total : 0ull,
           s ? (unsigned long long)st.prefix_cache_hits_total : 0ull);
    free(recs);
    xd_sched_destroy(s);
    xd_engine_destroy(e);
    xd_model_destroy(m);
}

/* ---- prompt logprobs ---- */

enum { LP_MAX = 256 };

/* What a prompt-logprobs request's sink saw. */
struct lp_rec {
    int n;                    /* prompt positions reported */
    int pos[LP_MAX];          /* in the order reported */
    float logprob[LP_MAX];
    int32_t top[LP_MAX];      /* the best alternative */
    int n_top[LP_MAX];
    int n_tokens;
    int32_t tokens[64];
    bool token_before_prompt; /* a token came before some prompt logprobs */
    int n_finish;
    enum xd_finish_reason finish;
    int n_generated;
};

static void lp_sink(void *ctx, const struct xd_sched_event *ev)
{
    struct lp_rec *r = ctx;
    if (ev->kind == XD_EVENT_PROMPT_LOGPROBS) {
        if (r->n_tokens > 0)
            r->token_before_prompt = true;
        for (int i = 0; i < ev->n_prompt_samples && r->n < LP_MAX; i++) {
            r->pos[r->n] = ev->prompt_pos + i;
            r->logprob[r->n] = ev->prompt_samples[i].logprob;
            r->top[r->n] = ev->prompt_samples[i].n_top > 0 ? ev->prompt_samples[i].top_ids[0] : -1;
            r->n_top[r->n] = ev->prompt_samples[i].n_top;
            r->n++;
        }
    } else if (ev->kind == XD_EVENT_TOKEN) {
        if (r->n_tokens < 64)
            r->tokens[r->n_tokens++] = ev->sample->token;
    } else {
        r->n_finish++;
        r->finish = ev->finish;
        r->n_generated = ev->n_generated_tokens;
    }
}

/* The fake's logits put 10 on ref_next of the prefix and 0 elsewhere: token p of the prompt
 * has logprob 10 - lse or -lse, and ref_next is the best alternative. */
static bool lp_matches_fake(const struct lp_rec *r, const int32_t *prompt, int n, int V)
{
    const double lse = log(exp(10.0) + (double)(V - 1));
    if (r->n != n - 1)
        return false;
    for (int i = 0; i < r->n; i++) {
        int p = i + 1;
        int32_t best = ref_next(prompt, p, V);
        double want = (prompt[p] == best ? 10.0 : 0.0) - lse;
        if (r->pos[i] != p || r->top[i] != best || r->n_top[i] != 2 ||
            fabs(r->logprob[i] - want) > 1e-5)
            return false;
    }
    return true;
}

static void test_prompt_logprobs_every_position_once(void)
{
    const int V = 50;
    uint64_t rng = 77;
    int32_t prompt[40];
    make_prompt(&rng, prompt, 37, V);
    /* chunked, in a batch with others, after an identical prompt filled the prefix cache,
     * under preemption (12 blocks of 4: the requests cannot all fit), with max_tokens 0 */
    for (int variant = 0; variant < 4; variant++) {
        struct fake *f = fake_new(variant == 3 ? 12 : 128, 4, V, 64);
        struct xd_sched_opts o = xd_sched_defaults();
        o.prefill_chunk = variant == 0 ? 0 : 5;
        struct xd_sched *s = sched_over(f, &o, NULL);
        if (!s) {
            fake_free(f);
            continue;
        }
        struct xd_err err = {{0}};
        struct rec plain = {0};
        struct lp_rec lp[4] = {{0}};
        struct xd_request warm = greedy_request(prompt, 37, 6);
        if (variant == 2) { /* the same prompt first, to the end: its blocks are published */
            CHECK(xd_sched_submit(s, &warm, sink, &plain, NULL, &err) == XD_OK, "%s", err.msg);
            run_to_idle(s, 1000);
        }
        int n_req = variant >= 1 ? 4 : 1;
        for (int i = 0; i < n_req; i++) {
            struct xd_request req = greedy_request(prompt, 37, i == 3 ? 0 : 6);
            req.prompt_logprobs = true;
            req.prompt_top_logprobs = 2;
            CHECK(xd_sched_submit(s, &req, lp_sink, &lp[i], NULL, &err) == XD_OK, "%s",
                  err.msg);
        }
        run_to_idle(s, 2000);
        int32_t want[6];
        ref_generate(prompt, 37, 6, V, want);
        for (int i = 0; i < n_req; i++) {
            CHECK(lp[i].n_finish == 1, "variant %d req %d: %d finishes", variant, i,
                  lp[i].n_finish);
            CHECK(lp_matches_fake(&lp[i], prompt, 37, V),
                  "variant %d req %d: %d prompt logprobs, not each of 1..36 once with the "
                  "fake's values", variant, i, lp[i].n);
            CHECK(!lp[i].token_before_prompt, "variant %d req %d: a token came first", variant,
                  i);
            if (i == 3) {
                CHECK(lp[i].finish == XD_FINISH_LENGTH && lp[i].n_tokens == 0 &&
                      lp[i].n_generated == 0, "max_tokens 0: %d tokens, finish %d",
                      lp[i].n_tokens, lp[i].finish);
            } else {
                CHECK(lp[i].n_tokens == 6 && memcmp(lp[i].tokens, want, sizeof want) == 0,
                      "variant %d req %d: generated tokens differ from the reference",
                      variant, i);
            }
        }
        if (variant == 3) {
            struct xd_sched_stats st;
            xd_sched_get_stats(s, &st);
            CHECK(st.preemptions_total > 0, "no preemption happened");
        }
        check_all_free(s);
        CHECK(f->n_errors == 0, "fake engine: %s", f->first_error);
        xd_sched_destroy(s);
        fake_free(f);
    }
    /* a 1-token prompt has no logprob to report: max_tokens 0 finishes at once */
    struct fake *f = fake_new(16, 4, V, 64);
    struct xd_sched_opts o = xd_sched_defaults();
    struct xd_sched *s = sched_over(f, &o, NULL);
    struct lp_rec one = {0};
    struct xd_request req = greedy_request(prompt, 1, 0);
    req.prompt_logprobs = true;
    struct xd_err err = {{0}};
    CHECK(s && xd_sched_submit(s, &req, lp_sink, &one, NULL, &err) == XD_OK, "%s", err.msg);
    if (s)
        run_to_idle(s, 10);
    CHECK(one.n_finish == 1 && one.n == 0 && f->n_calls == 0, "1-token prompt: %d finishes, "
          "%d logprobs, %d forwards", one.n_finish, one.n, f->n_calls);
    req.prompt_top_logprobs = XD_MAX_LOGPROBS + 1;
    CHECK(s && xd_sched_submit(s, &req, lp_sink, &one, NULL, &err) == XD_ERR_INVALID,
          "prompt_top_logprobs over the maximum accepted");
    xd_sched_destroy(s);
    fake_free(f);
}

/* The real CPU engine: prompt logprobs equal transformers' log_softmax(prompt_logits) of the
 * golden fixture, and are the same bits alone (one chunk) as chunked by 3 in a batch of
 * others. */
static void test_cpu_prompt_logprobs_match_transformers(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/golden/olmoe-f32", fixtures);
    struct xd_model *m = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_model_load(dir, &m, &err) == XD_OK, "%s", err.msg);
    if (!m)
        return;
    char path[4200];
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_error_t jerr;
    json_t *g = json_load_file(path, 0, &jerr);
    CHECK(g != NULL, "%s: %s", path, jerr.text);
    struct xd_engine_opts eo = {.device = XD_DEVICE_CPU, .n_kv_blocks = 256, .block_size = 4,
                                .max_batch_tokens = 64};
    struct xd_engine *e = NULL;
    CHECK(g && xd_engine_create(m, &eo, &e, &err) == XD_OK, "%s", err.msg);
    if (!e) {
        json_decref(g);
        xd_model_destroy(m);
        return;
    }
    const int V = xd_engine_config(e)->vocab_size;
    json_t *prompts = json_object_get(g, "prompts"), *plogits = json_object_get(g, "prompt_logits");
    const int n_prompts = (int)json_array_size(prompts);
    enum { MAXP = 8, MAXN = 32 };
    int32_t ids[MAXP][MAXN];
    int lens[MAXP];
    for (int i = 0; i < n_prompts && i < MAXP; i++) {
        json_t *p = json_array_get(prompts, i);
        lens[i] = (int)json_array_size(p) < MAXN ? (int)json_array_size(p) : MAXN;
        for (int k = 0; k < lens[i]; k++)
            ids[i][k] = (int32_t)json_integer_value(json_array_get(p, k));
    }
    struct lp_rec runs[2][MAXP];
    memset(runs, 0, sizeof runs);
    struct xd_step_engine se;
    xd_step_engine_init(&se, e);
    for (int run = 0; run < 2; run++) {
        struct xd_sched_opts o = xd_sched_defaults();
        o.prefill_chunk = run == 0 ? 0 : 3;
        struct xd_sched *s = NULL;
        CHECK(xd_sched_create(&se, NULL, NULL, 0, &o, &s, &err) == XD_OK, "%s", err.msg);
        if (!s)
            break;
        struct rec others[MAXP];
        memset(others, 0, sizeof others);
        for (int i = 0; i < n_prompts && i < MAXP; i++) {
            if (run == 1) { /* a batch mate: a different request in every step */
                struct xd_request other = greedy_request(ids[(i + 1) % n_prompts],
                                                         lens[(i + 1) % n_prompts], 5);
                xd_sched_submit(s, &other, sink, &others[i], NULL, &err);
            }
            struct xd_request req = greedy_request(ids[i], lens[i], run == 0 ? 0 : 2);
            req.prompt_logprobs = true;
            req.prompt_top_logprobs = 5;
            CHECK(xd_sched_submit(s, &req, lp_sink, &runs[run][i], NULL, &err) == XD_OK, "%s",
                  err.msg);
            if (run == 0)
                run_to_idle(s, 1000); /* alone */
        }
        run_to_idle(s, 1000);
        xd_sched_destroy(s);
    }
    double max_diff = 0;
    int n_checked = 0;
    for (int i = 0; i < n_prompts && i < MAXP; i++) {
        CHECK(runs[0][i].n == lens[i] - 1 && runs[1][i].n == lens[i] - 1,
              "prompt %d: %d and %d logprobs for %d tokens", i, runs[0][i].n, runs[1][i].n,
              lens[i]);
        CHECK(memcmp(runs[0][i].logprob, runs[1][i].logprob,
                     sizeof(float) * (size_t)runs[0][i].n) == 0 &&
              memcmp(runs[0][i].top, runs[1][i].top, sizeof(int32_t) * (size_t)runs[0][i].n) == 0,
              "prompt %d: chunked and batched prompt logprobs differ from alone", i);
        for (int k = 0; k < runs[0][i].n; k++) {
            int p = runs[0][i].pos[k];
            json_t *row = json_array_get(json_array_get(plogits, i), (size_t)p - 1);
            CHECK((int)json_array_size(row) == V, "prompt %d row %d: %zu logits", i, p - 1,
                  json_array_size(row));
            if ((int)json_array_size(row) != V)
                break;
            double mx = -INFINITY, sum = 0;
            for (int v = 0; v < V; v++)
                mx = fmax(mx, json_number_value(json_array_get(row, (size_t)v)));
            for (int v = 0; v < V; v++)
                sum += exp(json_number_value(json_array_get(row, (size_t)v)) - mx);
            double want = json_number_value(json_array_get(row, (size_t)ids[i][p])) - mx - log(sum);
            max_diff = fmax(max_diff, fabs(runs[0][i].logprob[k] - want));
            n_checked++;
        }
    }
    /* the CPU backend matches transformers' f32 logits to 1e-4 (test-golden's tolerance) */
    CHECK(n_checked > 0 && max_diff <= 1e-4, "prompt logprobs: max |diff| %g vs transformers "
          "over %d positions (tolerance 1e-4)", max_diff, n_checked);
    printf("  %d prompt positions, max |logprob - transformers| %.3g\n", n_checked, max_diff);
    json_decref(g);
    xd_engine_destroy(e);
    xd_model_destroy(m);
}

int main(int argc, char **argv)
{
    fixtures = argc > 1 ? argv[1] : "tests/fixtures";
    RUN(test_greedy_matches_reference_and_frees_blocks);
    RUN(test_chunked_prefill_equals_one_shot);
    RUN(test_preemption_gives_same_output);
    RUN(test_prefix_hits_give_same_output);
    RUN(test_prefix_shared_while_running);
    RUN(test_cancellation_frees_blocks);
    RUN(test_queue_seconds);
    RUN(test_tokens_counted_before_their_sinks);
    RUN(test_submit_refusals);
    RUN(test_stop_ids_and_eos);
    RUN(test_stop_strings_never_leak);
    RUN(test_engine_failure_finishes_with_error);
    RUN(test_grouping_bounded_wait);
    RUN(test_fair_admission_light_client_not_behind_heavy);
    RUN(test_fair_admission_round_robin_fcfs_within_client);
    RUN(test_fair_steps_light_request_runs_next_step_beside_heavy);
    RUN(test_fair_steps_share_the_token_budget_with_prefill);
    RUN(test_fair_light_steps_of_its_own_bounded_by_shared_time);
    RUN(test_fair_light_steps_with_the_cache_full_still_progress);
    RUN(test_fair_steps_many_clients);
    RUN(test_max_step_seconds_caps_step_tokens);
    RUN(test_group_all_or_none);
    RUN(test_threaded_concurrent_submitters);
    RUN(test_threaded_groups_all_or_none);
    RUN(test_random_accounting_property);
    RUN(test_cpu_engine_batched_equals_alone);
    RUN(test_prompt_logprobs_every_position_once);
    RUN(test_cpu_prompt_logprobs_match_transformers);
    return test_summary();
}
