/* Engine behaviour beyond the goldens: batch validation, the routing record, experts reached
 * only through the expert store and run once per step, and offline generation's stops. */
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/sampler.h"
#include "scheduler/offline.h"
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

static void test_experts_run_once_per_step_through_the_store(void)
{
    struct xd_model *m = load("olmoe-f32");
    if (!m)
        return;
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
    for (int l = 0; e && l < m->config.n_layers; l++) {
        int used[64] = {0};
        for (int t = 0; t < r->n_tokens; t++)
            for (int j = 0; j < r->top_k; j++)
                used[r->experts[((size_t)t * r->n_moe_layers + l) * r->top_k + j]] = 1;
        for (int x = 0; x < m->config.n_experts; x++)
            CHECK(cs.acquired[l][x] == used[x],
                  "layer %d expert %d acquired %d times, used by the routing: %d", l, x,
                  cs.acquired[l][x], used[x]);
    }
    CHECK(cs.outstanding == 0, "%d acquisitions not released", cs.outstanding);
    xd_engine_destroy(e);
    m->experts = cs.inner;
    xd_model_destroy(m);
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
    CHECK(xd_offline_generate(e, &req, s, &r, &err) == XD_OK, "%s", err.msg);
    CHECK(r.n_tokens == 6 && strcmp(r.finish_reason, "length") == 0, "%d %s", r.n_tokens,
          r.finish_reason);
    int32_t third = r.tokens[2];
    xd_offline_result_finish(&r);

    /* greedy is deterministic, so stopping on its third token stops after three */
    xd_sampler_destroy(s);
    xd_sampler_create(&sp, m->config.vocab_size, &s, &err);
    req.stop_ids = &third;
    req.n_stop = 1;
    CHECK(xd_offline_generate(e, &req, s, &r, &err) == XD_OK, "%s", err.msg);
    CHECK(r.n_tokens <= 3 && strcmp(r.finish_reason, "stop") == 0 &&
              r.tokens[r.n_tokens - 1] == third,
          "%d tokens, %s", r.n_tokens, r.finish_reason);
    xd_offline_result_finish(&r);

    req.max_tokens = 20; /* 23 tokens need 6 blocks of 4; the cache has 4 */
    CHECK(xd_offline_generate(e, &req, s, &r, &err) == XD_ERR_CAPACITY, "capacity");
    CHECK_CONTAINS(err.msg, "KV blocks");
    xd_sampler_destroy(s);
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
    xd_model_destroy(m);
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
    RUN(test_engine_options_validated);
    return test_summary();
}
