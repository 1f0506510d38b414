/* Expert predictors: the lookahead ranking and the previous token's experts, merged in order. */
#include "engine/experts/expert_predictor.h"

#include <stdlib.h>
#include <string.h>

static const char *const predictor_names[] = {
    [XD_PREDICT_NONE] = "none",
    [XD_PREDICT_LOOKAHEAD] = "lookahead",
    [XD_PREDICT_PREVIOUS] = "previous",
    [XD_PREDICT_LOOKAHEAD_PREVIOUS] = "lookahead+previous",
};

const char *xd_predictor_name(enum xd_predictor_kind k)
{
    return k >= XD_PREDICT_NONE && k <= XD_PREDICT_LOOKAHEAD_PREVIOUS ? predictor_names[k] : NULL;
}

int xd_predictor_parse(const char *name, enum xd_predictor_kind *ret, struct xd_err *err)
{
    if (strcmp(name, "recorded") == 0) {
        *ret = XD_PREDICT_LOOKAHEAD;
        return XD_OK;
    }
    for (int k = XD_PREDICT_NONE; k <= XD_PREDICT_LOOKAHEAD_PREVIOUS; k++)
        if (strcmp(name, predictor_names[k]) == 0) {
            *ret = (enum xd_predictor_kind)k;
            return XD_OK;
        }
    return xd_err_set(err, XD_ERR_INVALID,
                      "unknown predictor '%s' (choose none, lookahead, previous or "
                      "lookahead+previous)",
                      name);
}

bool xd_predictor_uses_lookahead(enum xd_predictor_kind k)
{
    return k == XD_PREDICT_LOOKAHEAD || k == XD_PREDICT_LOOKAHEAD_PREVIOUS;
}

static bool uses_history(enum xd_predictor_kind k)
{
    return k == XD_PREDICT_PREVIOUS || k == XD_PREDICT_LOOKAHEAD_PREVIOUS;
}

#define HISTORY_BITS 12 /* 4096 requests remembered at once */

struct history_entry {
    uint64_t request;
    bool used;
};

struct xd_expert_predictor {
    enum xd_predictor_kind kind;
    int width;
    int n_layers, top_k, n_experts;
    struct history_entry *history; /* (1 << HISTORY_BITS,) with history, else NULL */
    int32_t *history_experts;      /* (1 << HISTORY_BITS, n_layers, top_k) */
    bool *taken;                   /* (n_experts,) scratch of predict */
};

int xd_expert_predictor_create(enum xd_predictor_kind kind, int width, int n_moe_layers,
                               int top_k, int n_experts, struct xd_expert_predictor **ret,
                               struct xd_err *err)
{
    if (!xd_predictor_name(kind) || n_moe_layers < 1 || top_k < 1 || n_experts < top_k ||
        (xd_predictor_uses_lookahead(kind) && (width < 1 || width > n_experts)))
        return xd_err_set(err, XD_ERR_INVALID,
                          "expert predictor: width %d outside 1..%d or sizes out of range", width,
                          n_experts);
    struct xd_expert_predictor *p = calloc(1, sizeof *p);
    if (!p)
        return xd_err_set(err, XD_ERR_NOMEM, "expert predictor: out of memory");
    *p = (struct xd_expert_predictor){.kind = kind, .width = width, .n_layers = n_moe_layers,
                                      .top_k = top_k, .n_experts = n_experts};
    p->taken = calloc((size_t)n_experts, sizeof *p->taken);
    bool ok = p->taken != NULL;
    if (ok && uses_history(kind)) {
        const size_t n = (size_t)1 << HISTORY_BITS;
        p->history = calloc(n, sizeof *p->history);
        p->history_experts = calloc(n * (size_t)n_moe_layers * (size_t)top_k,
                                    sizeof *p->history_experts);
        ok = p->history && p->history_experts;
    }
    if (!ok) {
        xd_expert_predictor_destroy(p);
        return xd_err_set(err, XD_ERR_NOMEM, "expert predictor: out of memory");
    }
    *ret = p;
    return XD_OK;
}

void xd_expert_predictor_destroy(struct xd_expert_predictor *p)
{
    if (!p)
        return;
    free(p->taken);
    free(p->history);
    free(p->history_experts);
    free(p);
}

static size_t history_index(uint64_t request)
{
    return (size_t)((request * 0x9e3779b97f4a7c15ull) >> (64 - HISTORY_BITS));
}

/* Appends e to out unless taken or out of range; returns the new count. */
static int take(struct xd_expert_predictor *p, int32_t e, int32_t *out, int n)
{
    if (e < 0 || e >= p->n_experts || p->taken[e])
        return n;
    p->taken[e] = true;
    out[n] = e;
    return n + 1;
}

int xd_expert_predictor_predict(struct xd_expert_predictor *p, int layer, int n_tokens,
                                const int32_t *lookahead, size_t stride, int lookahead_width,
                                const uint64_t *requests, int32_t *out)
{
    int n = 0;
    if (layer < 0 || layer >= p->n_layers)
        return 0;
    if (xd_predictor_uses_lookahead(p->kind) && lookahead) {
        const int w = p->width < lookahead_width ? p->width : lookahead_width;
        for (int r = 0; r < w; r++)
            for (int t = 0; t < n_tokens; t++)
                n = take(p, lookahead[(size_t)t * stride + (size_t)r], out, n);
    }
    if (p->history && requests) {
        const size_t per = (size_t)p->n_layers * (size_t)p->top_k;
        for (int t = 0; t < n_tokens; t++) {
            const size_t i = history_index(requests[t]);
            if (!p->history[i].used || p->history[i].request != requests[t])
                continue;
            const int32_t *e = p->history_experts + i * per + (size_t)layer * p->top_k;
            for (int k = 0; k < p->top_k; k++)
                n = take(p, e[k], out, n);
        }
    }
    for (int i = 0; i < n; i++)
        p->taken[out[i]] = false;
    return n;
}

void xd_expert_predictor_observe(struct xd_expert_predictor *p, int n_tokens,
                                 const uint64_t *requests, const int32_t *experts)
{
    if (!p->history || !requests)
        return;
    const size_t per = (size_t)p->n_layers * (size_t)p->top_k;
    for (int t = 0; t < n_tokens; t++) {
        const size_t i = history_index(requests[t]);
        p->history[i] = (struct history_entry){.request = requests[t], .used = true};
        memcpy(p->history_experts + i * per, experts + (size_t)t * per,
               per * sizeof *experts);
    }
}
