/* The offload planner: trace replay through the expert cache with a predictor. */
#include "offload_plan.h"

#include <stdlib.h>
#include <string.h>

const char *xd_predictor_name(enum xd_predictor_kind k)
{
    switch (k) {
    case XD_PREDICT_NONE: return "none";
    case XD_PREDICT_RECORDED: return "recorded";
    case XD_PREDICT_PREVIOUS: return "previous";
    }
    return NULL;
}

int xd_predictor_parse(const char *name, enum xd_predictor_kind *ret, struct xd_err *err)
{
    for (int k = XD_PREDICT_NONE; k <= XD_PREDICT_PREVIOUS; k++)
        if (strcmp(name, xd_predictor_name(k)) == 0) {
            *ret = k;
            return XD_OK;
        }
    return xd_err_set(err, XD_ERR_INVALID,
                      "unknown predictor '%s' (choose none, recorded or previous)", name);
}

/* The previous-token predictor's memory: each request's last token's experts, in a
 * direct-mapped table (a collision forgets the older request: a wrong guess, never an error). */
#define PREV_TABLE 4096

struct prev_entry {
    uint64_t request;
    bool used;
    int32_t *experts; /* (n_layers, top_k) */
};

struct replay {
    const struct xd_trace_header *h;
    const struct xd_plan_opts *opts;
    struct xd_expert_cache *cache;
    struct prev_entry *prev;  /* (PREV_TABLE,) for XD_PREDICT_PREVIOUS */
    int32_t *prev_store;      /* (PREV_TABLE, n_layers, top_k) */
    bool *pred_set;           /* (n_experts,) */
    bool *need_set;           /* (n_experts,) */
    int *pinned;              /* (n_experts,) slots pinned by the current layer */
    int n_pinned;
};

static struct prev_entry *prev_find(struct replay *rp, uint64_t request)
{
    struct prev_entry *e = &rp->prev[(request * 0x9e3779b97f4a7c15ull) >> 52];
    return e->used && e->request == request ? e : NULL;
}

/* Fills rp->pred_set with the experts predicted for MoE layer l of step s. */
static void predict(struct replay *rp, const struct xd_trace_step *s, int l)
{
    int L = rp->h->n_moe_layers, K = rp->h->top_k;
    memset(rp->pred_set, 0, (size_t)(unsigned)rp->h->n_experts * sizeof *rp->pred_set);
    for (int t = 0; t < s->n_tokens; t++) {
        const int32_t *p = NULL;
        if (rp->opts->predictor == XD_PREDICT_RECORDED) {
            p = s->predicted + ((size_t)t * L + l) * K;
        } else if (rp->opts->predictor == XD_PREDICT_PREVIOUS) {
            struct prev_entry *e = prev_find(rp, s->requests[t]);
            if (e)
                p = e->experts + (size_t)l * K;
        }
        for (int k = 0; p && k < K; k++)
            if (p[k] >= 0)
                rp->pred_set[p[k]] = true;
    }
}

static void remember(struct replay *rp, const struct xd_trace_step *s)
{
    size_t per = (size_t)rp->h->n_moe_layers * rp->h->top_k;
    for (int t = 0; t < s->n_tokens; t++) {
        size_t i = (s->requests[t] * 0x9e3779b97f4a7c15ull) >> 52;
        struct prev_entry *e = &rp->prev[i];
        e->used = true;
        e->request = s->requests[t];
        e->experts = rp->prev_store + i * per;
        memcpy(e->experts, s->experts + (size_t)t * per, per * sizeof *e->experts);
    }
}

static void unpin_layer(struct replay *rp)
{
    for (int i = 0; i < rp->n_pinned; i++)
        xd_expert_cache_unpin(rp->cache, rp->pinned[i]);
    rp->n_pinned = 0;
}

/* Replays one step; adds its copy bytes to *ret_bytes and its demand-miss bytes to *ret_miss. */
static int replay_step(struct replay *rp, const struct xd_trace_step *s, struct xd_plan_result *res,
                       double *ret_bytes, double *ret_miss, struct xd_err *err)
{
    const struct xd_trace_header *h = rp->h;
    int L = h->n_moe_layers, K = h->top_k, E = h->n_experts;
    double eb = (double)h->expert_bytes;
    for (int l = 0; l < L; l++) {
        /* Prefetch: the copies issued while the layer before computes. */
        if (rp->opts->predictor != XD_PREDICT_NONE) {
            predict(rp, s, l);
            bool room = true;
            for (int e = 0; e < E; e++) {
                if (!rp->pred_set[e])
                    continue;
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
                *ret_bytes += eb;
            }
        }
        /* Demand: the experts this layer's tokens chose. */
        memset(rp->need_set, 0, (size_t)(unsigned)E * sizeof *rp->need_set);
        for (int t = 0; t < s->n_tokens; t++)
            for (int k = 0; k < K; k++)
                rp->need_set[s->experts[((size_t)t * L + l) * K + k]] = true;
        for (int e = 0; e < E; e++) {
            if (!rp->need_set[e])
                continue;
            res->needed++;
            if (rp->opts->predictor != XD_PREDICT_NONE && rp->pred_set[e])
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
                *ret_bytes += eb;
                *ret_miss += eb;
            }
        }
        unpin_layer(rp);
        xd_expert_cache_clear_predictions(rp->cache, l);
    }
    if (rp->opts->predictor == XD_PREDICT_PREVIOUS)
        remember(rp, s);
    return XD_OK;
}

int xd_plan_run(struct xd_trace_reader *r, const struct xd_plan_opts *opts,
                struct xd_plan_result *ret, struct xd_err *err)
{
    const struct xd_trace_header *h = xd_trace_reader_header(r);
    if (opts->predictor == XD_PREDICT_RECORDED && !h->has_predictions)
        return xd_err_set(err, XD_ERR_INVALID,
                          "predictor 'recorded': this trace holds no predictions (record it "
                          "with prediction on, or use --predictor previous)");
    if (!(opts->h2d_bytes_per_second > 0))
        return xd_err_set(err, XD_ERR_INVALID, "h2d bandwidth must be > 0");
    if (opts->compute_seconds_per_token < 0)
        return xd_err_set(err, XD_ERR_INVALID, "compute seconds per token must be >= 0");
    struct replay rp = {.h = h, .opts = opts};
    struct xd_plan_result res = {.n_layers = h->n_moe_layers};
    int rc = xd_expert_cache_create(h->n_moe_layers, h->n_experts, opts->n_slots, opts->policy,
                                    &rp.cache, err);
    if (rc < 0)
        return rc;
    size_t per = (size_t)h->n_moe_layers * h->top_k;
    rp.pred_set = calloc((size_t)h->n_experts, sizeof *rp.pred_set);
    rp.need_set = calloc((size_t)h->n_experts, sizeof *rp.need_set);
    rp.pinned = calloc((size_t)h->n_experts, sizeof *rp.pinned);
    res.layer_hits = calloc((size_t)h->n_moe_layers, sizeof *res.layer_hits);
    res.layer_misses = calloc((size_t)h->n_moe_layers, sizeof *res.layer_misses);
    if (opts->predictor == XD_PREDICT_PREVIOUS) {
        rp.prev = calloc(PREV_TABLE, sizeof *rp.prev);
        rp.prev_store = calloc(PREV_TABLE * per, sizeof *rp.prev_store);
    }
    if (!rp.pred_set || !rp.need_set || !rp.pinned || !res.layer_hits || !res.layer_misses ||
        (opts->predictor == XD_PREDICT_PREVIOUS && (!rp.prev || !rp.prev_store))) {
        rc = xd_err_set(err, XD_ERR_NOMEM, "plan: out of memory");
        goto out;
    }
    struct xd_trace_step s;
    while ((rc = xd_trace_reader_next(r, &s, err)) == 1) {
        double bytes = 0, miss = 0;
        rc = replay_step(&rp, &s, &res, &bytes, &miss, err);
        if (rc < 0)
            goto out;
        double compute = opts->compute_seconds_per_token > 0
                             ? opts->compute_seconds_per_token * s.n_tokens
                             : s.seconds;
        double copy = bytes / opts->h2d_bytes_per_second;
        res.steps++;
        res.tokens += (uint64_t)s.n_tokens;
        res.bytes_moved += bytes;
        res.compute_seconds += compute;
        res.copy_seconds += copy;
        res.bound_seconds += compute > copy ? compute : copy;
        res.demand_stall_seconds += miss / opts->h2d_bytes_per_second;
    }
    if (rc < 0)
        goto out;
    xd_expert_cache_get_stats(rp.cache, &res.cache, res.layer_hits, res.layer_misses);
    uint64_t accesses = res.cache.hits + res.cache.misses;
    res.hit_rate = accesses ? (double)res.cache.hits / accesses : 0;
    res.precision = res.predicted ? (double)res.predicted_and_needed / res.predicted : 0;
    res.recall = res.needed ? (double)res.predicted_and_needed / res.needed : 0;
    if (res.tokens) {
        res.bytes_per_token = res.bytes_moved / res.tokens;
        res.bound_seconds_per_token = res.bound_seconds / res.tokens;
    }
    *ret = res;
    res.layer_hits = res.layer_misses = NULL;
    rc = XD_OK;
out:
    xd_plan_result_finish(&res);
    xd_expert_cache_destroy(rp.cache);
    free(rp.pred_set);
    free(rp.need_set);
    free(rp.pinned);
    free(rp.prev);
    free(rp.prev_store);
    return rc;
}

void xd_plan_result_finish(struct xd_plan_result *res)
{
    free(res->layer_hits);
    free(res->layer_misses);
    res->layer_hits = res->layer_misses = NULL;
}
