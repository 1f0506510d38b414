/* The expert cache's bookkeeping: slot map, pins, eviction policies and counters. */
#include "engine/experts/expert_cache.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct cache_slot {
    int layer, expert;    /* -1 when empty */
    int pins;
    uint64_t last_use;    /* access clock at the last get */
    double crf;           /* decayed access count at crf_time */
    uint64_t crf_time;
    bool prefetched;      /* brought in by a prefetch and not yet hit by a demand access */
};

struct xd_expert_cache {
    int n_layers, n_experts, n_slots;
    enum xd_evict_policy policy;
    struct cache_slot *slots;  /* (n_slots,) */
    int *where;                /* (n_layers * n_experts,) slot or -1 */
    bool *predicted;           /* (n_layers * n_experts,) */
    uint64_t clock;            /* one tick per get */
    double half_life;          /* of the decayed count, in ticks */
    struct xd_expert_cache_stats stats;
    uint64_t *layer_hits, *layer_misses; /* (n_layers,) */
};

const char *xd_evict_policy_name(enum xd_evict_policy p)
{
    switch (p) {
    case XD_EVICT_LRU: return "lru";
    case XD_EVICT_PREDICTIVE: return "predictive";
    }
    return NULL;
}

int xd_evict_policy_parse(const char *name, enum xd_evict_policy *ret, struct xd_err *err)
{
    if (strcmp(name, "lru") == 0)
        *ret = XD_EVICT_LRU;
    else if (strcmp(name, "predictive") == 0)
        *ret = XD_EVICT_PREDICTIVE;
    else
        return xd_err_set(err, XD_ERR_INVALID,
                          "unknown eviction policy '%s' (choose lru or predictive)", name);
    return XD_OK;
}

int xd_expert_cache_create(int n_layers, int n_experts, int n_slots, enum xd_evict_policy policy,
                           struct xd_expert_cache **ret, struct xd_err *err)
{
    if (n_layers < 1 || n_experts < 1 || n_slots < 1)
        return xd_err_set(err, XD_ERR_INVALID,
                          "expert cache: %d layers, %d experts, %d slots (each must be >= 1)",
                          n_layers, n_experts, n_slots);
    if (!xd_evict_policy_name(policy))
        return xd_err_set(err, XD_ERR_INVALID, "expert cache: unknown policy %d", (int)policy);
    size_t n = (size_t)n_layers * n_experts;
    if (n_slots > (int)n)
        n_slots = (int)n; /* more slots than experts: every expert fits */
    struct xd_expert_cache *c = calloc(1, sizeof *c);
    if (!c)
        return xd_err_set(err, XD_ERR_NOMEM, "expert cache: out of memory");
    c->n_layers = n_layers;
    c->n_experts = n_experts;
    c->n_slots = n_slots;
    c->policy = policy;
    c->half_life = n_slots > 8 ? n_slots : 8;
    c->slots = calloc((size_t)n_slots, sizeof *c->slots);
    c->where = malloc(n * sizeof *c->where);
    c->predicted = calloc(n, sizeof *c->predicted);
    c->layer_hits = calloc((size_t)n_layers, sizeof *c->layer_hits);
    c->layer_misses = calloc((size_t)n_layers, sizeof *c->layer_misses);
    if (!c->slots || !c->where || !c->predicted || !c->layer_hits || !c->layer_misses) {
        xd_expert_cache_destroy(c);
        return xd_err_set(err, XD_ERR_NOMEM, "expert cache: out of memory for %d slots", n_slots);
    }
    for (size_t i = 0; i < n; i++)
        c->where[i] = -1;
    for (int s = 0; s < n_slots; s++)
        c->slots[s].layer = c->slots[s].expert = -1;
    *ret = c;
    return XD_OK;
}

void xd_expert_cache_destroy(struct xd_expert_cache *c)
{
    if (!c)
        return;
    free(c->slots);
    free(c->where);
    free(c->predicted);
    free(c->layer_hits);
    free(c->layer_misses);
    free(c);
}

static size_t key(const struct xd_expert_cache *c, int layer, int expert)
{
    assert(layer >= 0 && layer < c->n_layers && expert >= 0 && expert < c->n_experts);
    return (size_t)layer * c->n_experts + expert;
}

/* The slot's decayed access count as of now. */
static double crf_now(const struct xd_expert_cache *c, const struct cache_slot *s)
{
    return s->crf * exp2(-(double)(c->clock - s->crf_time) / c->half_life);
}

static void touch(struct xd_expert_cache *c, struct cache_slot *s)
{
    s->crf = crf_now(c, s) + 1.0;
    s->crf_time = c->clock;
    s->last_use = c->clock;
}

/* The slot to give up: an empty one if any, else by the policy among unpinned slots (the
 * predictive policy first among those not predicted). A prefetch never gives up a predicted
 * expert: one guess must not evict another (or the copy it displaces is wasted twice). -1 when
 * no slot may go. */
static int pick_victim(const struct xd_expert_cache *c, bool for_prefetch)
{
    int best = -1;
    bool best_predicted = true;
    double best_score = INFINITY;
    for (int i = 0; i < c->n_slots; i++) {
        const struct cache_slot *s = &c->slots[i];
        if (s->layer < 0)
            return i;
        if (s->pins > 0 || (for_prefetch && c->predicted[key(c, s->layer, s->expert)]))
            continue;
        double score;
        bool predicted = false;
        if (c->policy == XD_EVICT_LRU) {
            score = (double)s->last_use;
        } else {
            predicted = c->predicted[key(c, s->layer, s->expert)];
            score = crf_now(c, s);
        }
        if ((best_predicted && !predicted) ||
            (predicted == best_predicted && score < best_score)) {
            best = i;
            best_score = score;
            best_predicted = predicted;
        }
    }
    return best;
}

int xd_expert_cache_get(struct xd_expert_cache *c, int layer, int expert, bool prefetch,
                        struct xd_cache_access *ret, struct xd_err *err)
{
    if (layer < 0 || layer >= c->n_layers || expert < 0 || expert >= c->n_experts)
        return xd_err_set(err, XD_ERR_INVALID, "expert cache: (layer %d, expert %d) out of range",
                          layer, expert);
    c->clock++;
    size_t k = key(c, layer, expert);
    struct xd_cache_access a = {.slot = c->where[k], .evicted_layer = -1, .evicted_expert = -1};
    if (a.slot >= 0) {
        struct cache_slot *s = &c->slots[a.slot];
        a.hit = true;
        if (!prefetch) {
            c->stats.hits++;
            c->layer_hits[layer]++;
            if (s->prefetched) {
                c->stats.prefetches_used++;
                s->prefetched = false;
            }
            touch(c, s);
        }
        s->pins++;
        *ret = a;
        return XD_OK;
    }
    int v = pick_victim(c, prefetch);
    if (v < 0)
        return xd_err_set(err, XD_ERR_CAPACITY,
                          "expert cache: all %d slots are in use by this step%s; (layer %d, "
                          "expert %d) cannot come in",
                          c->n_slots, prefetch ? " or hold predicted experts" : "", layer,
                          expert);
    struct cache_slot *s = &c->slots[v];
    if (s->layer >= 0) {
        a.evicted_layer = s->layer;
        a.evicted_expert = s->expert;
        c->where[key(c, s->layer, s->expert)] = -1;
        c->stats.evictions++;
        if (s->prefetched)
            c->stats.prefetches_wasted++;
    }
    *s = (struct cache_slot){.layer = layer, .expert = expert, .pins = 1,
                             .prefetched = prefetch, .crf_time = c->clock};
    if (prefetch) {
        c->stats.prefetches++;
        s->last_use = c->clock; /* recent enough not to be the next LRU victim */
    } else {
        c->stats.misses++;
        c->layer_misses[layer]++;
        touch(c, s);
    }
    c->where[k] = v;
    a.slot = v;
    *ret = a;
    return XD_OK;
}

void xd_expert_cache_drop(struct xd_expert_cache *c, int slot)
{
    assert(slot >= 0 && slot < c->n_slots && c->slots[slot].pins == 0);
    struct cache_slot *s = &c->slots[slot];
    if (s->layer >= 0)
        c->where[key(c, s->layer, s->expert)] = -1;
    *s = (struct cache_slot){.layer = -1, .expert = -1};
}

void xd_expert_cache_unpin(struct xd_expert_cache *c, int slot)
{
    assert(slot >= 0 && slot < c->n_slots && c->slots[slot].pins > 0);
    c->slots[slot].pins--;
}

int xd_expert_cache_find(const struct xd_expert_cache *c, int layer, int expert)
{
    if (layer < 0 || layer >= c->n_layers || expert < 0 || expert >= c->n_experts)
        return -1;
    return c->where[key(c, layer, expert)];
}

void xd_expert_cache_predict(struct xd_expert_cache *c, int layer, int expert)
{
    c->predicted[key(c, layer, expert)] = true;
}

void xd_expert_cache_clear_predictions(struct xd_expert_cache *c, int layer)
{
    memset(c->predicted + key(c, layer, 0), 0, (size_t)c->n_experts * sizeof *c->predicted);
}

void xd_expert_cache_get_stats(const struct xd_expert_cache *c, struct xd_expert_cache_stats *ret,
                               uint64_t *layer_hits, uint64_t *layer_misses)
{
    *ret = c->stats;
    if (layer_hits)
        memcpy(layer_hits, c->layer_hits, (size_t)c->n_layers * sizeof *layer_hits);
    if (layer_misses)
        memcpy(layer_misses, c->layer_misses, (size_t)c->n_layers * sizeof *layer_misses);
}

int xd_expert_cache_n_slots(const struct xd_expert_cache *c)
{
    return c->n_slots;
}
