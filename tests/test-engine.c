/* Engine behaviour beyond the goldens: batch validation, the routing record, experts reached
 * only through the expert store and run once per step, and generation's stops (stop ids and the
 * model's own EOS). */
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/sampler.h"
#include "scheduler/offline.h"
#include "scheduler/scheduler.h"
#include "tests/test.h"

static const char *fixtures;

static struct xd_model *load(const char *name)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/golden/%s", fixtures, name);
    struct xd_model *m = NULL;
    struct xd_err err;
    CHECK(xd_model_load(dir, &m, &err) == XD_OK, "%s", err.msg);
    return m;
}

static struct xd_engine *engine_for(struct xd_model *m, int blocks, int max_tokens)
{
    struct xd_engine_opts o = {.device = XD_DEVICE_CPU, .n_kv_blocks = blocks, .block_size = 4,
                               .max_batch_tokens = max_tokens};
    struct xd_engine *e = NULL;
    struct xd_err err;
    CHECK(xd_engine_create(m, &o, &e, &err) == XD_OK, "%s", err.msg);
    return e;
}

static int32_t table[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

static void expect_invalid(struct xd_engine *e, struct xd_seq_chunk sc, int want_rc,
                           const char *needle)
{
    struct xd_batch b = {&sc, 1};
    struct xd_forward_out out;
    struct xd_err err = {{0}};
    int rc = xd_engine_forward(e, &b, &out, &err);
    CHECK(rc == want_rc, "rc %d (%s), want %d", rc, err.msg, want_rc);
    CHECK_CONTAINS(err.msg, needle);
}

static void test_invalid_batches_are_refused(void)
{
    struct xd_model *m = load("olmoe-f32");
    struct xd_engine *e = m ? engine_for(m, 8, 8) : NULL;
    if (!e) {
        xd_model_destroy(m);
        return;
    }
    int32_t bad_token[2] = {1, 269}; /* olmoe fixture vocab is 269 */
    expect_invalid(e, (struct xd_seq_chunk){bad_token, 2, 0, table, 8, XD_LOGITS_LAST},
                   XD_ERR_INVALID, "outside the vocabulary");
    int32_t neg_token[1] = {-1};
    expect_invalid(e, (struct xd_seq_chunk){neg_token, 1, 0, table, 8, XD_LOGITS_LAST},
                   XD_ERR_INVALID, "outside the vocabulary");
    int32_t ok[5] = {1, 2, 3, 4, 5};
    /* 5 tokens at position 0 need 2 blocks of 4 */
    expect_invalid(e, (struct xd_seq_chunk){ok, 5, 0, table, 1, XD_LOGITS_LAST}, XD_ERR_INVALID,
                   "block table");
    int32_t far_block[2] = {0, 8};
    expect_invalid(e, (struct xd_seq_chunk){ok, 5, 0, far_block, 2, XD_LOGITS_LAST},
                   XD_ERR_INVALID, "the cache has 8 blocks");
    int32_t many[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    expect_invalid(e, (struct xd_seq_chunk){many, 9, 0, table, 8, XD_LOGITS_LAST},
                   XD_ERR_CAPACITY, "max_batch_tokens");
    xd_engine_destroy(e);
    xd_model_destroy(m);
}

/* Routing: top_k distinct experts per token and MoE layer, best first; weights sum to one
 * when the architecture renormalises, and to less than one when it does not. */
static void check_routing(const char *fixture, int renormalised)
{
    struct xd_model *m = load(fixture);
    struct xd_engine *e = m ? engine_for(m, 8, 16) : NULL;
    if (!e) {
        xd_model_destroy(m);
        return;
    }
    int32_t toks[7] = {3, 1, 4, 1, 5, 9, 2};
    struct xd_seq_chunk sc = {toks, 7, 0, table, 8, XD_LOGITS_LAST};
    struct xd_batch b = {&sc, 1};
    struct xd_forward_out out;
    struct xd_err err;
    CHECK(xd_engine_forward(e, &b, &out, &err) == XD_OK, "%s", err.msg);
    const struct xd_routing *r = &out.routing;
    const struct xd_model_config *c = &m->config;
    CHECK(r->n_tokens == 7 && r->top_k == c->top_k && r->n_moe_layers == c->n_moe_layers,
          "routing dims %d %d %d", r->n_tokens, r->top_k, r->n_moe_layers);
    for (int t = 0; t < r->n_tokens; t++) {
        for (int l = 0; l < r->n_moe_layers; l++) {
            const int32_t *ex = r->experts + ((size_t)t * r->n_moe_layers + l) * r->top_k;
            const float *w = r->weights + ((size_t)t * r->n_moe_layers + l) * r->top_k;
            float sum = 0;
            for (int j = 0; j < r->top_k; j++) {
                CHECK(ex[j] >= 0 && ex[j] < c->n_experts, "expert %d", ex[j]);
                for (int i = 0; i < j; i++)
                    CHECK(ex[i] != ex[j], "expert %d chosen twice", ex[j]);
                CHECK(j == 0 || w[j] <= w[j - 1], "weights not best first");
                CHECK(w[j] > 0, "weight %g", w[j]);
                sum += w[j];
            }
            if (renormalised)
                CHECK(fabsf(sum - 1.0f) < 1e-5f, "%s: weights sum to %g", fixture, sum);
            else
                CHECK(sum < 1.0f, "%s: weights sum to %g without renormalisation", fixture, sum);
        }
    }
    xd_engine_destroy(e);
    xd_model_destroy(m);
}

static void test_routing_record_mixtral(void)
{
    check_routing("mixtral-f32", 1);
}

static void test_routing_record_olmoe(void)
{
    check_routing("olmoe-f32", 0);
}

static void test_routing_record_qwen3_only_sparse_layers(void)
{
    check_routing("qwen3_moe-f32", 1); /* 2 of its 4 layers are MoE */
}

/* Lookahead prediction fills routing.predicted and changes nothing else: logits and routing
 * equal those of an engine without it, bit for bit. */
static void test_lookahead_prediction_changes_nothing_else(void)
{
    struct xd_model *m = load("qwen3_moe-f32"); /* MoE layers 1 and 3 of 4: a dense gap */
    if (!m)
        return;
    const struct xd_model_config *c = &m->config;
    int32_t toks[5] = {3, 1, 4, 1, 5};
    struct xd_seq_chunk sc = {toks, 5, 0, table, 8, XD_LOGITS_ALL};
    struct xd_batch b = {&sc, 1};
    struct xd_err err;
    float *logits[3] = {NULL, NULL, NULL};
    int32_t *experts[3] = {NULL, NULL, NULL};
    int32_t *pred_k = NULL; /* pass 1's top_k-wide predictions */
    size_t n_logits = (size_t)5 * c->vocab_size, n_route = (size_t)5 * c->n_moe_layers * c->top_k;
    /* pass 0: no prediction; 1: top_k wide (the default); 2: every expert ranked */
    for (int pass = 0; pass < 3; pass++) {
        struct xd_engine_opts o = {.device = XD_DEVICE_CPU, .n_kv_blocks = 8, .block_size = 4,
                                   .max_batch_tokens = 16, .predict_experts = pass > 0,
                                   .predict_width = pass == 2 ? c->n_experts : 0};
        struct xd_engine *e = NULL;
        CHECK(xd_engine_create(m, &o, &e, &err) == XD_OK, "%s", err.msg);
        struct xd_forward_out out;
        CHECK(xd_engine_forward(e, &b, &out, &err) == XD_OK, "%s", err.msg);
        logits[pass] = malloc(n_logits * sizeof(float));
        experts[pass] = malloc(n_route * sizeof(int32_t));
        memcpy(logits[pass], out.logits, n_logits * sizeof(float));
        memcpy(experts[pass], out.routing.experts, n_route * sizeof(int32_t));
        if (pass == 0) {
            CHECK(out.routing.predicted == NULL, "predictions without predict_experts");
        } else {
            const int32_t *p = out.routing.predicted;
            const int W = pass == 2 ? c->n_experts : c->top_k;
            CHECK(p != NULL && out.routing.predicted_width == W, "predictions %d wide, want %d",
                  out.routing.predicted_width, W);
            if (pass == 1) {
                pred_k = malloc(n_route * sizeof(int32_t));
                memcpy(pred_k, p, n_route * sizeof(int32_t));
            }
            for (int t = 0; p && t < 5; t++)
                for (int l = 0; l < c->n_moe_layers; l++) {
                    const int32_t *r = p + ((size_t)t * c->n_moe_layers + l) * W;
                    for (int k = 0; k < W; k++) {
                        if (l == 0) {
                            CHECK(r[k] == -1, "first MoE layer predicted (%d)", r[k]);
                            continue;
                        }
                        CHECK(r[k] >= 0 && r[k] < c->n_experts, "prediction %d out of range",
                              r[k]);
                        for (int j = 0; j < k; j++)
                            CHECK(r[j] != r[k], "expert %d ranked twice", r[k]);
                        /* the wide ranking starts with the top_k-wide prediction */
                        if (pass == 2 && k < c->top_k && pred_k)
                            CHECK(r[k] == pred_k[((size_t)t * c->n_moe_layers + l) * c->top_k +
                                                 k],
                                  "wide ranking differs at rank %d", k);
                    }
                }
        }
        xd_engine_destroy(e);
    }
    struct xd_engine_opts bad = {.device = XD_DEVICE_CPU, .n_kv_blocks = 8, .block_size = 4,
                                 .max_batch_tokens = 16, .predict_experts = true,
                                 .predict_width = c->n_experts + 1};
    struct xd_engine *none = NULL;
    CHECK(xd_engine_create(m, &bad, &none, &err) == XD_ERR_INVALID, "width over the experts");
    CHECK_CONTAINS(err.msg, "predict_width");
    CHECK(memcmp(logits[0], logits[2], n_logits * sizeof(float)) == 0,
          "wide prediction changed the logits");
    free(logits[2]);
    free(experts[2]);
    free(pred_k);
    CHECK(memcmp(logits[0], logits[1], n_logits * sizeof(float)) == 0,
          "prediction changed the logits");
    CHECK(memcmp(experts[0], experts[1], n_route * sizeof(int32_t)) == 0,
          "prediction changed the routing");
    for (int i = 0; i < 2; i++) {
        free(logits[i]);
        free(experts[i]);
    }
    xd_model_destroy(m);
}

/* A store that wraps the model's and counts acquisitions per (layer, expert). */
struct counting_store {
    struct xd_expert_store inner;
    int acquired[64][64];
    int outstanding;
};

static int counting_acquire(void *ctx, int layer, int expert, struct xd_expert_weights *ret)
{
    struct counting_store *s = ctx;
    s->acquired[layer][expert]++;
    s->outstanding++;
    return xd_expert_store_acquire(&s->inner, layer, expert, ret);
}

static void counting_release(void *ctx, int layer, int expert)
{
    struct counting_store *s = ctx;
    s->outstanding--;
    xd_expert_store_release(&s->inner, layer, expert);
}

static const struct xd_expert_store_ops counting_ops = {counting_acquire, counting_release, NULL};

/* The store's layer is the model's layer index, the routing record's the MoE layer index: a
 * dense layer acquires nothing, a MoE layer exactly the experts its routing names, once. */
static void check_experts_run_once(const char *fixture)
{
    struct xd_model *m = load(fixture);
    if (!m)
        return;
    CHECK(m->config.n_layers <= 64 && m->config.n_experts <= 64, "%s: %d layers, %d experts: "
          "the counters hold 64", fixture, m->config.n_layers, m->config.n_experts);
    if (m->config.n_layers > 64 || m->config.n_experts > 64) {
        xd_model_destroy(m);
        return;
    }
    struct counting_store cs = {.inner = m->experts};
    m->experts = (struct xd_expert_store){&counting_ops, &cs};
    struct xd_engine *e = engine_for(m, 16, 32);
    int32_t a[7] = {3, 1, 4, 1, 5, 9, 2}, bq[5] = {8, 6, 7, 5, 3};
    int32_t ta[4] = {0, 1, 2, 3}, tb[4] = {4, 5, 6, 7};
    struct xd_seq_chunk sc[2] = {{a, 7, 0, ta, 4, XD_LOGITS_LAST},
                                 {bq, 5, 0, tb, 4, XD_LOGITS_LAST}};
    struct xd_batch b = {sc, 2};
    struct xd_forward_out out;
    struct xd_err err;
    CHECK(e && xd_engine_forward(e, &b, &out, &err) == XD_OK, "forward");
    const struct xd_routing *r = &out.routing;
    int n_moe = 0;
    for (int l = 0; e && l < m->config.n_layers; l++) {
        int mi = m->config.is_moe_layer[l] ? n_moe++ : -1; /* the routing's index, or dense */
        CHECK(mi == m->layers[l].moe_index, "%s layer %d: MoE index %d, the model says %d",
              fixture, l, mi, m->layers[l].moe_index);
        int used[64] = {0};
        for (int t = 0; mi >= 0 && mi < r->n_moe_layers && t < r->n_tokens; t++)
            for (int j = 0; j < r->top_k; j++)
                used[r->experts[((size_t)t * r->n_moe_layers + mi) * r->top_k + j]] = 1;
        for (int x = 0; x < m->config.n_experts; x++)
            CHECK(cs.acquired[l][x] == used[x],
                  "%s layer %d (MoE layer %d) expert %d acquired %d times, used by the "
                  "routing: %d", fixture, l, mi, x, cs.acquired[l][x], used[x]);
    }
    CHECK(!e || n_moe == r->n_moe_layers, "%s: %d MoE layers, the routing has %d", fixture,
          n_moe, r->n_moe_layers);
    CHECK(cs.outstanding == 0, "%d acquisitions not released", cs.outstanding);
    xd_engine_destroy(e);
    m->experts = cs.inner;
    xd_model_destroy(m);
}

static void test_experts_run_once_per_step_through_the_store(void)
{
    check_experts_run_once("olmoe-f32");     /* every layer MoE */
    check_experts_run_once("qwen3_moe-f32"); /* layers 0 and 2 dense: the indices differ */
}

static void test_offline_stops_at_eos_and_checks_capacity(void)
{
    struct xd_model *m = load("olmoe-f32");
    struct xd_engine *e = m ? engine_for(m, 4, 16) : NULL;
    if (!e) {
        xd_model_destroy(m);
        return;
    }
    struct xd_sampling_params sp = xd_sampling_defaults();
    sp.temperature = 0.0f;
    struct xd_sampler *s = NULL;
    struct xd_err err;
    xd_sampler_create(&sp, m->config.vocab_size, &s, &err);
    int32_t prompt[3] = {5, 6, 7};
    struct xd_offline_request req = {.prompt = prompt, .n_prompt = 3, .max_tokens = 6};
    struct xd_offline_result r;
    int rc = xd_offline_generate(e, &req, s, &r, &err);
    CHECK(rc == XD_OK, "%s", err.msg);
    CHECK(rc != XD_OK || (r.n_tokens == 6 && strcmp(r.finish_reason, "length") == 0),
          "%d %s", r.n_tokens, r.finish_reason);
    if (rc != XD_OK || r.n_tokens < 3) { /* no third token to stop on */
        if (rc == XD_OK)
            xd_offline_result_finish(&r);
        xd_sampler_destroy(s);
        xd_engine_destroy(e);
        xd_model_destroy(m);
        return;
    }
    int32_t third = r.tokens[2];
    xd_offline_result_finish(&r);

    /* greedy is deterministic, so stopping on its third token stops after three */
    xd_sampler_destroy(s);
    xd_sampler_create(&sp, m->config.vocab_size, &s, &err);
    req.stop_ids = &third;
    req.n_stop = 1;
    rc = xd_offline_generate(e, &req, s, &r, &err);
    CHECK(rc == XD_OK, "%s", err.msg);
    /* n_tokens >= 1 first: the last token is read only when there is one */
    CHECK(rc != XD_OK || (r.n_tokens >= 1 && r.n_tokens <= 3 &&
                          strcmp(r.finish_reason, "stop") == 0 &&
                          r.tokens[r.n_tokens - 1] == third),
          "%d tokens, %s", r.n_tokens, rc == XD_OK ? r.finish_reason : "failed");
    if (rc == XD_OK)
        xd_offline_result_finish(&r);

    req.max_tokens = 20; /* 23 tokens need 6 blocks of 4; the cache has 4 */
    CHECK(xd_offline_generate(e, &req, s, &r, &err) == XD_ERR_CAPACITY, "capacity");
    CHECK_CONTAINS(err.msg, "KV blocks");
    xd_sampler_destroy(s);
    xd_engine_destroy(e);
    xd_model_destroy(m);
}

/* ---- the model's own EOS ---- */

/* Collects one scheduler request's tokens and its finish. */
struct eos_rec {
    int32_t tokens[64];
    int n_tokens;
    bool finished;
    enum xd_finish_reason finish;
};

static void eos_sink(void *ctx, const struct xd_sched_event *ev)
{
    struct eos_rec *r = ctx;
    if (ev->kind == XD_EVENT_TOKEN) {
        if (r->n_tokens < 64)
            r->tokens[r->n_tokens] = ev->sample->token;
        r->n_tokens++;
        return;
    }
    r->finished = true;
    r->finish = ev->finish;
}

/* One request through a scheduler made as `expertd serve` makes it: the model's EOS ids at
 * create, the request's ignore_eos. Returns the tokens in *ret. */
static void serve_request(struct xd_engine *e, const int32_t *eos, int n_eos,
                          const int32_t *prompt, int n_prompt, int max_tokens,
                          const struct xd_sampling_params *sp, bool ignore_eos,
                          struct eos_rec *ret)
{
    memset(ret, 0, sizeof *ret);
    struct xd_step_engine se;
    xd_step_engine_init(&se, e);
    struct xd_sched_opts o = xd_sched_defaults();
    struct xd_sched *s = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_sched_create(&se, NULL, eos, n_eos, &o, &s, &err) == XD_OK, "%s", err.msg);
    if (!s)
        return;
    struct xd_request req = {.prompt = prompt, .n_prompt = n_prompt, .max_tokens = max_tokens,
                             .sampling = *sp, .ignore_eos = ignore_eos};
    CHECK(xd_sched_submit(s, &req, eos_sink, ret, NULL, &err) == XD_OK, "%s", err.msg);
    for (int i = 0; i < 1000 && !ret->finished; i++)
        if (xd_sched_step(s, &err) < 0) {
            CHECK(0, "step: %s", err.msg);
            break;
        }
    CHECK(ret->finished, "the request never finished");
    xd_sched_destroy(s);
}

/* Generation ends at the model's own EOS id (config.json / generation_config.json: the demo
 * model's <|endoftext|>), the way `expertd generate` (EOS ids as the offline stop ids) and
 * `expertd serve` (EOS ids given to the scheduler, unless the request sets ignore_eos) use it.
 * The demo model never picks EOS greedily within a few tokens, so a logit bias makes it win at
 * one step k: the bias lies between EOS's shortfall at k and the smallest shortfall before k,
 * measured from one forward over the unbiased greedy continuation, so the first k tokens are
 * the unbiased ones and token k is EOS. */
static void test_generation_ends_at_the_models_eos(void)
{
    enum { N = 8 };
    char dir[4096];
    /* the bundled demo model: the fixtures are tests/fixtures, the model models/demo-moe */
    snprintf(dir, sizeof dir, "%s/../../models/demo-moe", fixtures);
    struct xd_model *m = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_model_load(dir, &m, &err) == XD_OK, "%s", err.msg);
    if (!m)
        return;
    const struct xd_model_config *c = &m->config;
    CHECK(c->n_eos >= 1, "the demo model has no EOS id");
    struct xd_engine *e = c->n_eos >= 1 ? engine_for(m, 16, 32) : NULL;
    if (!e) {
        xd_model_destroy(m);
        return;
    }
    int32_t eos_ids[XD_MAX_EOS];
    for (int i = 0; i < c->n_eos; i++)
        eos_ids[i] = c->eos_token_ids[i];
    const int32_t eos = eos_ids[0];
    int32_t prompt[4] = {300, 301, 302, 303};
    struct xd_sampling_params sp = xd_sampling_defaults();
    sp.temperature = 0.0f;

    /* the unbiased greedy continuation g (nothing stops it) */
    struct xd_sampler *s = NULL;
    xd_sampler_create(&sp, c->vocab_size, &s, &err);
    struct xd_offline_request req = {.prompt = prompt, .n_prompt = 4, .max_tokens = N};
    struct xd_offline_result r;
    int rc = xd_offline_generate(e, &req, s, &r, &err);
    xd_sampler_destroy(s);
    CHECK(rc == XD_OK && r.n_tokens == N, "%s", rc == XD_OK ? "short" : err.msg);
    if (rc != XD_OK || r.n_tokens != N) {
        if (rc == XD_OK)
            xd_offline_result_finish(&r);
        goto out;
    }
    int32_t g[N];
    memcpy(g, r.tokens, sizeof g);
    xd_offline_result_finish(&r);

    /* EOS's shortfall behind the greedy token at each step: row 3 + j predicts g[j] */
    int32_t seq[4 + N - 1];
    memcpy(seq, prompt, sizeof prompt);
    memcpy(seq + 4, g, sizeof(int32_t) * (N - 1));
    struct xd_seq_chunk sc = {seq, 4 + N - 1, 0, table, 16, XD_LOGITS_ALL};
    struct xd_batch b = {&sc, 1};
    struct xd_forward_out out;
    CHECK(xd_engine_forward(e, &b, &out, &err) == XD_OK, "%s", err.msg);
    float margin[N];
    int k = 0;
    for (int j = 0; j < N; j++) {
        const float *row = out.logits + (size_t)(3 + j) * (size_t)c->vocab_size;
        margin[j] = row[g[j]] - row[eos];
        if (margin[j] < margin[k])
            k = j;
    }
    float before = 1e30f; /* the smallest shortfall before k */
    for (int j = 0; j < k; j++)
        before = margin[j] < before ? margin[j] : before;
    float bias = k > 0 ? 0.5f * (margin[k] + before) : margin[k] + 1.0f;
    CHECK(margin[k] >= 0 && bias <= 100.0f && (k == 0 || before - margin[k] > 1e-3f),
          "no bias makes EOS win at step %d alone (shortfall %g, before it %g)", k, margin[k],
          before);
    struct xd_logit_bias lb = {eos, bias};
    sp.logit_bias = &lb;
    sp.n_logit_bias = 1;

    /* expertd generate: the EOS ids are the stop ids; generation ends with EOS at step k */
    xd_sampler_create(&sp, c->vocab_size, &s, &err);
    req.stop_ids = eos_ids;
    req.n_stop = c->n_eos;
    rc = xd_offline_generate(e, &req, s, &r, &err);
    xd_sampler_destroy(s);
    CHECK(rc == XD_OK, "%s", err.msg);
    if (rc == XD_OK) {
        CHECK(r.n_tokens == k + 1 && strcmp(r.finish_reason, "stop") == 0, "generate: %d tokens "
              "(%s), EOS wins at step %d", r.n_tokens, r.finish_reason, k);
        CHECK(r.n_tokens >= 1 && r.tokens[r.n_tokens - 1] == eos, "generate: the last token is "
              "%d, not EOS %d", r.n_tokens >= 1 ? r.tokens[r.n_tokens - 1] : -1, eos);
        for (int j = 0; j < k && j < r.n_tokens; j++)
            CHECK(r.tokens[j] == g[j], "generate: token %d is %d, unbiased %d", j, r.tokens[j],
                  g[j]);
        xd_offline_result_finish(&r);
    }

    /* the control: the same bias without stop ids emits EOS at k and goes on to the length */
    xd_sampler_create(&sp, c->vocab_size, &s, &err);
    req.stop_ids = NULL;
    req.n_stop = 0;
    rc = xd_offline_generate(e, &req, s, &r, &err);
    xd_sampler_destroy(s);
    CHECK(rc == XD_OK, "%s", err.msg);
    if (rc == XD_OK) {
        CHECK(r.n_tokens == N && strcmp(r.finish_reason, "length") == 0 && r.tokens[k] == eos,
              "no stop ids: %d tokens (%s), token %d is %d", r.n_tokens, r.finish_reason, k,
              r.n_tokens > k ? r.tokens[k] : -1);
        xd_offline_result_finish(&r);
    }

    /* expertd serve: the scheduler holds the EOS ids; a request ends at EOS unless ignore_eos */
    struct eos_rec sr;
    serve_request(e, eos_ids, c->n_eos, prompt, 4, N, &sp, false, &sr);
    CHECK(sr.finished && sr.finish == XD_FINISH_STOP && sr.n_tokens == k + 1, "serve: %d "
          "tokens, finish %s, EOS wins at step %d", sr.n_tokens, xd_finish_reason_str(sr.finish),
          k);
    CHECK(sr.n_tokens >= 1 && sr.n_tokens <= 64 && sr.tokens[sr.n_tokens - 1] == eos,
          "serve: the last of %d tokens is not EOS %d", sr.n_tokens, eos);
    for (int j = 0; j < k && j < sr.n_tokens; j++)
        CHECK(sr.tokens[j] == g[j], "serve: token %d is %d, unbiased %d", j, sr.tokens[j], g[j]);
    serve_request(e, eos_ids, c->n_eos, prompt, 4, N, &sp, true, &sr);
    CHECK(sr.finished && sr.finish == XD_FINISH_LENGTH && sr.n_tokens == N &&
              sr.tokens[k] == eos,
          "serve, ignore_eos: %d tokens, finish %s, token %d is %d", sr.n_tokens,
          xd_finish_reason_str(sr.finish), k, sr.n_tokens > k ? sr.tokens[k] : -1);
out:
    xd_engine_destroy(e);
    xd_model_destroy(m);
}

static void test_engine_options_validated(void)
{
    struct xd_model *m = load("olmoe-f32");
    struct xd_engine_opts o = {.device = XD_DEVICE_CPU, .n_kv_blocks = 0, .block_size = 16,
                               .max_batch_tokens = 8};
    struct xd_engine *e = NULL;
    struct xd_err err;
    CHECK(m && xd_engine_create(m, &o, &e, &err) == XD_ERR_INVALID, "zero blocks accepted");
    o.n_kv_blocks = 4;
    o.device = XD_DEVICE_CUDA;
    CHECK(m && xd_engine_create(m, &o, &e, &err) == XD_ERR_UNSUPPORTED, "cuda accepted");
    CHECK_CONTAINS(err.msg, "cuda");
    CHECK(e == NULL, "engine returned on failure");
    o.kv_dtype = XD_DTYPE_BF16;
    CHECK(m && xd_engine_create(m, &o, &e, &err) == XD_ERR_UNSUPPORTED,
          "kv bf16 on cuda accepted");
    CHECK_CONTAINS(err.msg, "--kv-dtype bf16 with --device cuda");
    o.device = XD_DEVICE_CPU;
    o.kv_dtype = XD_DTYPE_Q8_0;
    CHECK(m && xd_engine_create(m, &o, &e, &err) == XD_ERR_INVALID, "kv q8_0 accepted");
    CHECK_CONTAINS(err.msg, "kv_dtype");
    xd_model_destroy(m);
    /* MLA's latent cache stays f32 */
    struct xd_model *mla = load("deepseek_v2-bf16");
    o.kv_dtype = XD_DTYPE_F16;
    CHECK(mla && xd_engine_create(mla, &o, &e, &err) == XD_ERR_UNSUPPORTED,
          "kv f16 with MLA accepted");
    CHECK_CONTAINS(err.msg, "MLA");
    xd_model_destroy(mla);
}

/* A 50-token prompt (four 16-key attention blocks) gives the same logits, bit for bit, prefilled
 * whole, in chunks of 7, 23, 1 and 19 (boundaries inside key blocks), one token at a time, and
 * batched with another sequence's chunk; for GQA 4:1 (qwen3_moe) and for gpt_oss's sinks and
 * window of 4. */
static void check_long_prompt(const char *name, enum xd_dtype kv_dtype, float *ret_whole)
{
    struct xd_model *m = load(name);
    if (!m)
        return;
    const int n = 50, V = m->config.vocab_size;
    int32_t toks[50], other[20], ta[16], tb[8];
    for (int i = 0; i < n; i++)
        toks[i] = (int32_t)((i * 37 + 11) % V);
    for (int i = 0; i < 20; i++)
        other[i] = (int32_t)((i * 53 + 5) % V);
    for (int i = 0; i < 16; i++)
        ta[i] = 15 - i; /* paged backwards */
    for (int i = 0; i < 8; i++)
        tb[i] = 16 + i;
    struct xd_engine_opts o = {.device = XD_DEVICE_CPU, .n_kv_blocks = 24, .block_size = 4,
                               .max_batch_tokens = 64, .kv_dtype = kv_dtype};
    struct xd_engine *e = NULL;
    struct xd_err err;
    CHECK(xd_engine_create(m, &o, &e, &err) == XD_OK, "%s", err.msg);
    float *whole = malloc(sizeof(float) * n * V), *got = malloc(sizeof(float) * n * V);
    struct xd_forward_out out;
    struct xd_seq_chunk sc[2] = {{toks, n, 0, ta, 16, XD_LOGITS_ALL}};
    struct xd_batch b = {sc, 1};
    CHECK(e && xd_engine_forward(e, &b, &out, &err) == XD_OK, "%s: whole: %s", name, err.msg);
    if (!e || out.n_logit_rows != n)
        goto done;
    memcpy(whole, out.logits, sizeof(float) * n * V);
    if (ret_whole)
        memcpy(ret_whole, whole, sizeof(float) * n * V);

    const int cuts[4] = {7, 23, 1, 19};
    for (int i = 0, pos = 0; i < 4; pos += cuts[i++]) {
        sc[0] = (struct xd_seq_chunk){toks + pos, cuts[i], pos, ta, 16, XD_LOGITS_ALL};
        CHECK(xd_engine_forward(e, &b, &out, &err) == XD_OK, "%s", err.msg);
        memcpy(got + (size_t)pos * V, out.logits, sizeof(float) * cuts[i] * V);
    }
    CHECK(memcmp(got, whole, sizeof(float) * n * V) == 0, "%s: chunks of 7, 23, 1, 19 differ",
          name);

    for (int pos = 0; pos < n; pos++) {
        sc[0] = (struct xd_seq_chunk){toks + pos, 1, pos, ta, 16, XD_LOGITS_LAST};
        CHECK(xd_engine_forward(e, &b, &out, &err) == XD_OK, "%s", err.msg);
        memcpy(got + (size_t)pos * V, out.logits, sizeof(float) * V);
    }
    CHECK(memcmp(got, whole, sizeof(float) * n * V) == 0, "%s: one token at a time differs",
          name);

    /* positions 30..49 again, after another sequence's 20-token chunk in the same step */
    sc[0] = (struct xd_seq_chunk){other, 20, 0, tb, 8, XD_LOGITS_ALL};
    sc[1] = (struct xd_seq_chunk){toks + 30, 20, 30, ta, 16, XD_LOGITS_ALL};
    b.n_seqs = 2;
    CHECK(xd_engine_forward(e, &b, &out, &err) == XD_OK, "%s", err.msg);
    CHECK(out.n_logit_rows == 40 && memcmp(out.logits + (size_t)20 * V, whole + (size_t)30 * V,
                                           sizeof(float) * 20 * V) == 0,
          "%s: batched with another sequence differs", name);
done:
    free(whole);
    free(got);
    xd_engine_destroy(e);
    xd_model_destroy(m);
}

static void test_long_prompt_same_bits_chunked_decoded_batched(void)
{
    check_long_prompt("qwen3_moe-f32", XD_DTYPE_F32, NULL);
    check_long_prompt("gpt_oss-f32", XD_DTYPE_F32, NULL);
}

/* --kv-dtype bf16 / f16: the same bits chunked, decoded and batched (the rounding is per stored
 * element), and logits near the f32 cache's. bf16 keeps 8 significant bits (a relative error up
 * to 2^-9 per key and value), f16 11; these small random-weight fixtures amplify that (measured
 * when this was written: qwen3_moe 3.5e-3 / 5.0e-4 of the logits' spread for bf16 / f16,
 * gpt_oss, window 4 and sinks, 4.5e-2 / 1.2e-3), so the bound is a coarse one, 10% of the
 * spread at each position, that a wrong conversion (garbage keys) breaks by far, and the best
 * token must stay wherever f32's leads its second by more than 10% of the spread. */
static void test_16bit_kv_cache_same_bits_and_near_f32(void)
{
    const char *names[2] = {"qwen3_moe-f32", "gpt_oss-f32"};
    for (int mi = 0; mi < 2; mi++) {
        struct xd_model *m = load(names[mi]);
        if (!m)
            continue;
        const int n = 50, V = m->config.vocab_size;
        xd_model_destroy(m);
        float *ref = malloc(sizeof(float) * n * V), *got = malloc(sizeof(float) * n * V);
        check_long_prompt(names[mi], XD_DTYPE_F32, ref);
        const enum xd_dtype dts[2] = {XD_DTYPE_BF16, XD_DTYPE_F16};
        for (int di = 0; di < 2; di++) {
            check_long_prompt(names[mi], dts[di], got);
            double worst = 0.0;
            int argmax_differs = 0, differs = 0;
            for (int t = 0; t < n; t++) {
                const float *r = ref + (size_t)t * V, *g = got + (size_t)t * V;
                float lo = r[0], hi = r[0];
                int best = 0, best_g = 0;
                for (int i = 0; i < V; i++) {
                    lo = r[i] < lo ? r[i] : lo;
                    hi = r[i] > hi ? r[i] : hi;
                    best = r[i] > r[best] ? i : best;
                    best_g = g[i] > g[best_g] ? i : best_g;
                    differs |= g[i] != r[i];
                }
                float second = -INFINITY;
                for (int i = 0; i < V; i++)
                    if (i != best && r[i] > second)
                        second = r[i];
                const double spread = (double)hi - lo;
                for (int i = 0; i < V; i++) {
                    const double e = fabs((double)g[i] - r[i]) / spread;
                    worst = e > worst ? e : worst;
                }
                if (best_g != best && (double)r[best] - second > 0.1 * spread)
                    argmax_differs++;
            }
            printf("  %s kv %s: largest logit difference %.2e of the spread\n", names[mi],
                   xd_engine_kv_dtype_name(dts[di]), worst);
            CHECK(differs, "%s kv %s: logits equal f32's: the cache was not rounded", names[mi],
                  xd_engine_kv_dtype_name(dts[di]));
            CHECK(worst < 0.1, "%s kv %s: a logit %.3g of the spread from f32's", names[mi],
                  xd_engine_kv_dtype_name(dts[di]), worst);
            CHECK(argmax_differs == 0, "%s kv %s: %d positions change a clear best token",
                  names[mi], xd_engine_kv_dtype_name(dts[di]), argmax_differs);
        }
        free(ref);
        free(got);
    }
}

int main(int argc, char **argv)
{
    fixtures = argc > 1 ? argv[1] : "tests/fixtures";
    RUN(test_invalid_batches_are_refused);
    RUN(test_routing_record_mixtral);
    RUN(test_routing_record_olmoe);
    RUN(test_routing_record_qwen3_only_sparse_layers);
    RUN(test_lookahead_prediction_changes_nothing_else);
    RUN(test_experts_run_once_per_step_through_the_store);
    RUN(test_offline_stops_at_eos_and_checks_capacity);
    RUN(test_generation_ends_at_the_models_eos);
    RUN(test_engine_options_validated);
    RUN(test_long_prompt_same_bits_chunked_decoded_batched);
    RUN(test_16bit_kv_cache_same_bits_and_near_f32);
    return test_summary();
}
