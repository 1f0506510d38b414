/* The offload planner: trace replay through the expert cache with a predictor. */
#include "engine/experts/offload_plan.h"

#include <stdlib.h>
#include <string.h>

struct replay {
    const struct xd_trace_header *h;
    const struct xd_plan_opts *opts;
    struct xd_expert_cache *cache;
    struct xd_expert_predictor *predictor; /* NULL for XD_PREDICT_NONE */
    double expert_bytes;
    double copy_seconds;      /* one expert's copy */
    int32_t *pred_list;       /* (n_experts,) */
    bool *pred_set;           /* (n_experts,) the predictions for the layer about to run */
    bool *need_set;           /* (n_experts,) */
    int *pinned;              /* (n_experts,) slots pinned by the current layer */
    int n_pinned;
    /* the simulated timeline */
    double now;               /* when the current layer starts */
    double copy_free;         /* when the copy engine finishes what it was given */
    double *ready_at;         /* (n_layers, n_experts) when the latest copy of each ends */
};

static void unpin_layer(struct replay *rp)
{
    for (int i = 0; i < rp->n_pinned; i++)
        xd_expert_cache_unpin(rp->cache, rp->pinned[i]);
    rp->n_pinned = 0;
}

/* Queues a copy of (layer, expert) on the copy engine at time issue. */
static void copy(struct replay *rp, int layer, int expert, double issue, double *ret_bytes)
{
    double begin = rp->copy_free > issue ? rp->copy_free : issue;
    rp->copy_free = begin + rp->copy_seconds;
    rp->ready_at[(size_t)layer * rp->h->n_experts + expert] = rp->copy_free;
    *ret_bytes += rp->expert_bytes;
}

/* The predictions for MoE layer l of step s, copied in (most likely first, while slots are free
 * of pins) at time issue; none when !allowed. */
static void prefetch(struct replay *rp, const struct xd_trace_step *s, int l, bool allowed,
                     double issue, struct xd_plan_result *res, double *ret_bytes)
{
    const struct xd_trace_header *h = rp->h;
    memset(rp->pred_set, 0, (size_t)(unsigned)h->n_experts * sizeof *rp->pred_set);
    if (!rp->predictor || !allowed)
        return;
    const int W = h->pred_width;
    const int32_t *lookahead = s->predicted ? s->predicted + (size_t)l * W : NULL;
    int n = xd_expert_predictor_predict(rp->predictor, l, s->n_tokens, lookahead,
                                        (size_t)h->n_moe_layers * W, W, s->requests,
                                        rp->pred_list);
    bool room = true;
    for (int i = 0; i < n; i++) {
        const int e = rp->pred_list[i];
        rp->pred_set[e] = true;
        res->predicted++;
        xd_expert_cache_predict(rp->cache, l, e);
        if (!room || xd_expert_cache_find(rp->cache, l, e) >= 0)
            continue;
        struct xd_cache_access a;
        if (xd_expert_cache_get(rp->cache, l, e, true, &a, NULL) < 0) {
            room = false; /* every slot busy: no room to prefetch into */
            continue;
        }
        xd_expert_cache_unpin(rp->cache, a.slot);
        copy(rp, l, e, issue, ret_bytes);
    }
}

/* Replays one step in the GPU pool's order: per MoE layer, its experts are acquired (pinned;
 * misses copied), then the next layer's predictions prefetched, then the layer computes and
 * unpins. Adds the step's copy bytes to *ret_bytes, its demand-miss bytes to *ret_miss and
 * advances the timeline by the step (compute seconds). */
static int replay_step(struct replay *rp, const struct xd_trace_step *s, double compute,
                       struct xd_plan_result *res, double *ret_bytes, double *ret_miss,
                       struct xd_err *err)
{
    const struct xd_trace_header *h = rp->h;
    const int L = h->n_moe_layers, K = h->top_k, E = h->n_experts;
    const double layer_compute = compute / L;
    prefetch(rp, s, 0, true, rp->now, res, ret_bytes); /* history only: no lookahead before 0 */
    for (int l = 0; l < L; l++) {
        const double start = rp->now;
        memset(rp->need_set, 0, (size_t)(unsigned)E * sizeof *rp->need_set);
        for (int t = 0; t < s->n_tokens; t++)
            for (int k = 0; k < K; k++)
                rp->need_set[s->experts[((size_t)t * L + l) * K + k]] = true;
        double last_ready = start;
        int n_needed = 0;
        for (int e = 0; e < E; e++) {
            if (!rp->need_set[e])
                continue;
            n_needed++;
            res->needed++;
            if (rp->pred_set[e])
                res->predicted_and_needed++;
            struct xd_cache_access a;
            int rc = xd_expert_cache_get(rp->cache, l, e, false, &a, NULL);
            if (rc == XD_ERR_CAPACITY) {
                /* The layer needs more experts than the cache holds: compute the ones in
                 * hand, release them, go on (slowly, as the real pool would). */
                unpin_layer(rp);
                rc = xd_expert_cache_get(rp->cache, l, e, false, &a, err);
            }
            if (rc < 0)
                return rc;
            rp->pinned[rp->n_pinned++] = a.slot;
            if (!a.hit) {
                copy(rp, l, e, start, ret_bytes);
                *ret_miss += rp->expert_bytes;
            }
            double ready = rp->ready_at[(size_t)l * E + e];
            last_ready = ready > last_ready ? ready : last_ready;
        }
        /* as the pool: a layer that did not fit whole guesses nothing (its guesses would evict
         * its own experts) */
        if (l + 1 < L)
            prefetch(rp, s, l + 1, n_needed <= xd_expert_cache_n_slots(rp->cache), start, res,
                     ret_bytes);
        unpin_layer(rp);
        xd_expert_cache_clear_predictions(rp->cache, l);
        /* present experts compute while the missing ones copy; the last waits for its copy */
        double end = start + layer_compute;
        double tail = n_needed ? last_ready + layer_compute / n_needed : start;
        if (tail > end) {
            res->stall_seconds += tail - end;
            end = tail;
        }
        rp->now = end;
    }
    if (rp->predictor)
        xd_expert_predictor_observe(rp->predictor, s->n_tokens, s->requests, s->experts);
    return XD_OK;
}

/* A decode step: no request has more than one token in it (a request's tokens are adjacent,
 * routing_trace.h). */
static bool is_decode_step(const struct xd_trace_step *s)
{
    for (int t = 1; t < s->n_tokens; t++)
        if (s->requests[t] == s->requests[t - 1])
            return false;
    return s->n_tokens > 0;
}

int xd_plan_run(struct xd_trace_reader *r, const struct xd_plan_opts *opts,
                struct xd_plan_result *ret, struct xd_err *err)
{
    const struct xd_trace_header *h = xd_trace_reader_header(r);
    if (xd_predictor_uses_lookahead(opts->predictor) && h->pred_width == 0)
        return xd_err_set(err, XD_ERR_INVALID,
                          "predictor '%s': this trace holds no lookahead predictions (record it "
                          "with prediction on, or use --predictor previous)",
                          xd_predictor_name(opts->predictor));
    const int width = opts->predict_width ? opts->predict_width : h->top_k;
    if (xd_predictor_uses_lookahead(opts->predictor) && (width < 1 || width > h->pred_width))
        return xd_err_set(err, XD_ERR_INVALID,
                          "predict width %d: this trace recorded %d predicted experts per token "
                          "and layer (record it again with a wider --expert-prefetch-width)",
                          width, h->pred_width);
    if (!(opts->h2d_bytes_per_second > 0))
        return xd_err_set(err, XD_ERR_INVALID, "h2d bandwidth must be > 0");
    if (opts->compute_seconds_per_token < 0)
        return xd_err_set(err, XD_ERR_INVALID, "compute seconds per token must be >= 0");
    struct replay rp = {.h = h, .opts = opts};
    rp.expert_bytes = (double)(opts->expert_bytes ? opts->expert_bytes : h->expert_bytes);
    rp.copy_seconds = rp.expert_bytes / opts->h2d_bytes_per_second;
    struct xd_plan_result res = {.n_layers = h->n_moe_layers};
    int rc = xd_expert_cache_create(h->n_moe_layers, h->n_experts, opts->n_slots, opts->policy,
                                    &rp.cache, err);
    if (rc < 0)
        return rc;
    if (opts->predictor != XD_PREDICT_NONE &&
        (rc = xd_expert_predictor_create(opts->predictor, width, h->n_moe_layers, h->top_k,
                                         h->n_experts, &rp.predictor, err)) < 0)
        goto out;
    rp.pred_list = calloc((size_t)h->n_experts, sizeof *rp.pred_list);
    rp.pred_set = calloc((size_t)h->n_experts, sizeof *rp.pred_set);
    rp.need_set = calloc((size_t)h->n_experts, sizeof *rp.need_set);
    rp.pinned = calloc((size_t)h->n_experts, sizeof *rp.pinned);
    rp.ready_at = calloc((size_t)h->n_moe_layers * h->n_experts, sizeof *rp.ready_at);
    res.layer_hits = calloc((size_t)h->n_moe_layers, sizeof *res.layer_hits);
    res.layer_misses = calloc((size_t)h->n_moe_layers, sizeof *res.layer_misses);
    if (!rp.pred_list || !rp.pred_set || !rp.need_set || !rp.pinned || !rp.ready_at ||
        !res.layer_hits || !res.layer_misses) {
        rc = xd_err_set(err, XD_ERR_NOMEM, "plan: out of memory");
        goto out;
    }
    struct xd_trace_step s;
    double decode_sim = 0, decode_stall = 0, decode_compute = 0;
    while ((rc = xd_trace_reader_next(r, &s, err)) == 1) {
        double compute = opts->compute_seconds_per_token > 0
                             ? opts->compute_seconds_per_token * s.n_tokens
                             : s.seconds;
        double bytes = 0, miss = 0;
        const double now0 = rp.now, stall0 = res.stall_seconds;
        rc = replay_step(&rp, &s, compute, &res, &bytes, &miss, err);
        if (rc < 0)
            break;
        if (is_decode_step(&s)) {
            res.decode_steps++;
            res.decode_tokens += (uint64_t)s.n_tokens;
            decode_sim += rp.now - now0;
            decode_stall += res.stall_seconds - stall0;
            decode_compute += compute;
        }
        double copy_s = bytes / opts->h2d_bytes_per_second;
        res.steps++;
        res.tokens += (uint64_t)s.n_tokens;
        res.bytes_moved += bytes;
        res.compute_seconds += compute;
        res.copy_seconds += copy_s;
        res.bound_seconds += compute > copy_s ? compute : copy_s;
        res.demand_stall_seconds += miss / opts->h2d_bytes_per_second;
    }
    if (rc < 0)
        goto out;
    if (res.decode_tokens) {
        res.decode_simulated_seconds_per_token = decode_sim / res.decode_tokens;
        res.decode_stall_seconds_per_token = decode_stall / res.decode_tokens;
        res.decode_compute_seconds_per_token = decode_compute / res.decode_tokens;
    }
    xd_expert_cache_get_stats(rp.cache, &res.cache, res.layer_hits, res.layer_misses);
    uint64_t accesses = res.cache.hits + res.cache.misses;
    res.hit_rate = accesses ? (double)res.cache.hits / accesses : 0;
    res.precision = res.predicted ? (double)res.predicted_and_needed / res.predicted : 0;
    res.recall = res.needed ? (double)res.predicted_and_needed / res.needed : 0;
    res.simulated_seconds = rp.now;
    if (res.tokens) {
        res.bytes_per_token = res.bytes_moved / res.tokens;
        res.bound_seconds_per_token = res.bound_seconds / res.tokens;
        res.simulated_seconds_per_token = res.simulated_seconds / res.tokens;
        res.stall_seconds_per_token = res.stall_seconds / res.tokens;
    }
    *ret = res;
    res.layer_hits = res.layer_misses = NULL;
    rc = XD_OK;
out:
    xd_plan_result_finish(&res);
    xd_expert_cache_destroy(rp.cache);
    xd_expert_predictor_destroy(rp.predictor);
    free(rp.pred_list);
    free(rp.pred_set);
    free(rp.need_set);
    free(rp.pinned);
    free(rp.ready_at);
    return rc;
}

void xd_plan_result_finish(struct xd_plan_result *res)
{
    free(res->layer_hits);
    free(res->layer_misses);
    res->layer_hits = res->layer_misses = NULL;
}
