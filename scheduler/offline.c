/* Offline single-sequence generation over the engine, with blocks from a block pool. */
#include "offline.h"

#include <stdlib.h>
#include <time.h>

#include "block_pool.h"

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* One forward step, shown to the request's observer. */
static int forward_observed(struct xd_engine *engine, const struct xd_offline_request *req,
                            const struct xd_batch *b, struct xd_forward_out *out,
                            struct xd_err *err)
{
    double t0 = now_seconds();
    XD_TRY(xd_engine_forward(engine, b, out, err));
    if (req->on_step) {
        static const uint64_t request_id = 0;
        req->on_step(req->on_step_ctx, b, &request_id, out, now_seconds() - t0);
    }
    return XD_OK;
}

int xd_offline_generate(struct xd_engine *engine, const struct xd_offline_request *req,
                        struct xd_sampler *sampler, struct xd_offline_result *ret,
                        struct xd_err *err)
{
    const struct xd_engine_opts *eo = xd_engine_opts(engine);
    const struct xd_model_config *mc = xd_engine_config(engine);
    if (req->n_prompt < 1 || req->max_tokens < 0)
        return xd_err_set(err, XD_ERR_INVALID, "the prompt is empty");
    const int total = req->n_prompt + req->max_tokens;
    const int n_blocks = xd_blocks_for_tokens(total, eo->block_size);
    if (n_blocks > eo->n_kv_blocks)
        return xd_err_set(err, XD_ERR_CAPACITY,
                          "prompt (%d tokens) plus max_tokens (%d) needs %d KV blocks of %d; the "
                          "cache has %d",
                          req->n_prompt, req->max_tokens, n_blocks, eo->block_size,
                          eo->n_kv_blocks);

    struct xd_block_pool *pool = xd_block_pool_create(eo->n_kv_blocks);
    int32_t *table = malloc(sizeof *table * (size_t)n_blocks);
    struct xd_offline_result r = {0};
    r.tokens = malloc(sizeof *r.tokens * (size_t)(req->max_tokens + 1));
    r.samples = malloc(sizeof *r.samples * (size_t)(req->max_tokens + 1));
    int rc = XD_OK;
    if (!pool || !table || !r.tokens || !r.samples) {
        rc = xd_err_set(err, XD_ERR_NOMEM, "out of memory");
        goto out;
    }
    rc = xd_block_pool_alloc(pool, n_blocks, table);
    if (rc < 0)
        goto out;
    xd_sampler_add_prompt(sampler, req->prompt, req->n_prompt);
    r.finish_reason = "length";

    int chunk = req->prefill_chunk > 0 ? req->prefill_chunk : eo->max_batch_tokens;
    if (chunk > eo->max_batch_tokens)
        chunk = eo->max_batch_tokens;
    struct xd_forward_out out;
    double t0 = now_seconds();
    for (int pos = 0; pos < req->n_prompt; pos += chunk) {
        int n = req->n_prompt - pos < chunk ? req->n_prompt - pos : chunk;
        struct xd_seq_chunk sc = {
            .tokens = req->prompt + pos, .n_tokens = n, .pos = pos,
            .block_table = table, .n_blocks = n_blocks,
            .logits = pos + n == req->n_prompt ? XD_LOGITS_LAST : XD_LOGITS_NONE,
        };
        struct xd_batch b = {&sc, 1};
        rc = forward_observed(engine, req, &b, &out, err);
        if (rc < 0)
            goto out;
    }
    double t1 = now_seconds();
    r.prefill_seconds = t1 - t0;

    int pos = req->n_prompt;
    while (r.n_tokens < req->max_tokens) {
        xd_sampler_sample(sampler, out.logits, &r.samples[r.n_tokens]);
        int32_t tok = r.samples[r.n_tokens].token;
        r.tokens[r.n_tokens++] = tok;
        int stop = 0;
        for (int i = 0; i < req->n_stop; i++)
            stop |= tok == req->stop_ids[i];
        if (stop) {
            r.finish_reason = "stop";
            break;
        }
        if (r.n_tokens == req->max_tokens || pos >= mc->max_position_embeddings)
            break;
        struct xd_seq_chunk sc = {
            .tokens = &r.tokens[r.n_tokens - 1], .n_tokens = 1, .pos = pos++,
            .block_table = table, .n_blocks = n_blocks, .logits = XD_LOGITS_LAST,
        };
        struct xd_batch b = {&sc, 1};
        rc = forward_observed(engine, req, &b, &out, err);
        if (rc < 0)
            goto out;
    }
    r.decode_seconds = now_seconds() - t1;
    *ret = r;
    r.tokens = NULL;
    r.samples = NULL;
out:
    free(r.tokens);
    free(r.samples);
    free(table);
    xd_block_pool_destroy(pool);
    return rc;
}

void xd_offline_result_finish(struct xd_offline_result *res)
{
    if (!res)
        return;
    free(res->tokens);
    free(res->samples);
    res->tokens = NULL;
    res->samples = NULL;
}
