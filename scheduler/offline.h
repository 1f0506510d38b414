/* Offline generation of one sequence: chunked prefill, then decode until a stop. */
#ifndef XD_OFFLINE_H
#define XD_OFFLINE_H

#include <stdint.h>

#include "engine/engine.h"
#include "engine/sampler.h"

struct xd_offline_request {
    const int32_t *prompt;   /* (n_prompt,) */
    int n_prompt;
    int max_tokens;          /* tokens to generate at most */
    int prefill_chunk;       /* prompt tokens per forward step; 0: the engine's maximum */
    const int32_t *stop_ids; /* (n_stop,) end-of-sequence ids; generation stops after one */
    int n_stop;
    xd_step_observer_fn on_step; /* NULL, or called after every forward step */
    void *on_step_ctx;
};

struct xd_offline_result {
    int32_t *tokens;         /* (n_tokens,) generated ids, owned: free() */
    struct xd_sample *samples; /* (n_tokens,) with logprobs, owned: free() */
    int n_tokens;
    const char *finish_reason; /* "stop" (a stop id) or "length" */
    double prefill_seconds;
    double decode_seconds;
};

/* Runs req on engine with sampler, taking KV blocks from a pool over the
 * engine's whole cache. Fails with XD_ERR_CAPACITY (and a message naming the
 * sizes) when the cache cannot hold prompt plus max_tokens. On failure *ret is
 * untouched. */
int xd_offline_generate(struct xd_engine *engine, const struct xd_offline_request *req,
                        struct xd_sampler *sampler, struct xd_offline_result *ret,
                        struct xd_err *err);

void xd_offline_result_finish(struct xd_offline_result *res);

#endif
