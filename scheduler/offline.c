/* Offline single-sequence generation: one request through the scheduler, stepped on the
 * caller's thread, so that offline and served generation are one piece of code. */
#include "scheduler/offline.h"

#include <stdlib.h>
#include <string.h>

#include "engine/base/clock.h"
#include "scheduler/block_pool.h"
#include "scheduler/scheduler.h"

struct collect {
    struct xd_offline_result *r;
    double t_first;       /* when the first token arrived */
    enum xd_finish_reason finish;
    bool finished;
};

static void collect_sink(void *ctx, const struct xd_sched_event *ev)
{
    struct collect *c = ctx;
    if (ev->kind == XD_EVENT_TOKEN) {
        if (c->r->n_tokens == 0)
            c->t_first = xd_now();
        c->r->samples[c->r->n_tokens] = *ev->sample;
        c->r->tokens[c->r->n_tokens++] = ev->sample->token;
        return;
    }
    c->finished = true;
    c->finish = ev->finish;
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
    /* generation ends at the context length ("length"), as it always has offline */
    int max_tokens = req->max_tokens;
    if (req->n_prompt >= mc->max_context)
        return xd_err_set(err, XD_ERR_INVALID,
                          "the prompt (%d tokens) fills the context length (%d)", req->n_prompt,
                          mc->max_context);
    if (total > mc->max_context)
        max_tokens = mc->max_context - req->n_prompt;

    struct xd_step_engine se;
    xd_step_engine_init(&se, engine);
    struct xd_sched_opts o = xd_sched_defaults();
    o.max_running = 1;
    o.prefill_chunk = req->prefill_chunk;
    o.prefix_caching = false;
    o.group_by_expert = false;
    o.on_step = req->on_step;
    o.on_step_ctx = req->on_step_ctx;
    struct xd_offline_result r = {0};
    struct collect c = {.r = &r};
    struct xd_sched *s = NULL;
    int rc = xd_sched_create(&se, NULL, NULL, 0, &o, &s, err);
    if (rc < 0)
        return rc;
    r.tokens = malloc(sizeof *r.tokens * (size_t)(max_tokens + 1));
    r.samples = malloc(sizeof *r.samples * (size_t)(max_tokens + 1));
    if (!r.tokens || !r.samples) {
        rc = xd_err_set(err, XD_ERR_NOMEM, "out of memory");
        goto out;
    }
    struct xd_request sr = {
        .prompt = req->prompt, .n_prompt = req->n_prompt, .max_tokens = max_tokens,
        .sampling = xd_sampling_defaults(), .stop_ids = req->stop_ids,
        .n_stop_ids = req->n_stop, .ignore_eos = true, .sampler = sampler,
    };
    rc = xd_sched_submit(s, &sr, collect_sink, &c, NULL, err);
    if (rc < 0)
        goto out;
    double t0 = xd_now();
    c.t_first = t0;
    while (!c.finished) {
        rc = xd_sched_step(s, err);
        if (rc < 0)
            goto out;
    }
    rc = XD_OK;
    double t1 = xd_now();
    r.prefill_seconds = c.t_first - t0;
    r.decode_seconds = t1 - c.t_first;
    r.finish_reason = c.finish == XD_FINISH_STOP ? "stop" : "length";
    *ret = r;
    r.tokens = NULL;
    r.samples = NULL;
out:
    xd_sched_destroy(s);
    free(r.tokens);
    free(r.samples);
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
