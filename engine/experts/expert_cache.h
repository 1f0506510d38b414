/* The expert cache's bookkeeping: which (layer, expert) sits in which of a fixed number of slots,
 * which slot to give up when a new expert must come in, and the hit, miss and prefetch counts.
 *
 * It moves no bytes: the GPU expert pool copies weights into the slot it is given, and the
 * planner (`expertd plan`) replays routing traces through the very same code with no GPU.
 * Slots in use by a step are pinned and never evicted. An expert brought in by a prefetch
 * counts as used when a demand access first hits it and as wasted when it leaves unused. */
#ifndef XD_EXPERT_CACHE_H
#define XD_EXPERT_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/base/status.h"

enum xd_evict_policy {
    XD_EVICT_LRU,        /* least recently used */
    XD_EVICT_PREDICTIVE, /* spares experts predicted for the coming layers; among the rest the
                            lowest frequency-weighted recency (a decayed access count) */
};

/* "lru" or "predictive"; NULL for an unknown value. */
const char *xd_evict_policy_name(enum xd_evict_policy p);
/* Parses a policy name; XD_ERR_INVALID naming the value and the choices. */
int xd_evict_policy_parse(const char *name, enum xd_evict_policy *ret, struct xd_err *err);

struct xd_expert_cache_stats {
    uint64_t hits;               /* demand accesses that found the expert */
    uint64_t misses;             /* demand accesses that had to bring it in */
    uint64_t prefetches;         /* experts brought in ahead of need */
    uint64_t prefetches_used;    /* of those, hit by a demand access before leaving */
    uint64_t prefetches_wasted;  /* of those, evicted without a demand access */
    uint64_t evictions;
};

struct xd_expert_cache;

/* A cache of n_slots slots for n_layers x n_experts experts. n_slots may be smaller than the
 * experts one layer uses (it then works one expert at a time). */
int xd_expert_cache_create(int n_layers, int n_experts, int n_slots, enum xd_evict_policy policy,
                           struct xd_expert_cache **ret, struct xd_err *err);
void xd_expert_cache_destroy(struct xd_expert_cache *c);

/* What a caller must do after xd_expert_cache_get: nothing (a hit), or copy the expert into
 * slot, which held evicted_layer/evicted_expert before (-1 when the slot was empty). */
struct xd_cache_access {
    int slot;
    bool hit;
    int evicted_layer;
    int evicted_expert;
};

/* Looks up (layer, expert) and, when absent, assigns it a slot, evicting by the policy.
 * prefetch: this is a speculative fetch, not a use (no hit or miss is counted; a present
 * expert is left alone and *ret says hit; it never evicts an expert marked predicted). The slot comes back pinned; unpin it when the step
 * no longer reads it. XD_ERR_CAPACITY when every slot is pinned. */
int xd_expert_cache_get(struct xd_expert_cache *c, int layer, int expert, bool prefetch,
                        struct xd_cache_access *ret, struct xd_err *err);
void xd_expert_cache_unpin(struct xd_expert_cache *c, int slot);
/* Empties an unpinned slot whose expert never arrived (its copy failed): the next access to
 * that expert misses instead of reading what the slot held before. Counters are kept. */
void xd_expert_cache_drop(struct xd_expert_cache *c, int slot);

/* The slot holding (layer, expert), or -1. Changes nothing. */
int xd_expert_cache_find(const struct xd_expert_cache *c, int layer, int expert);

/* Marks (layer, expert) as predicted for the layer about to run; the predictive policy spares it
 * until xd_expert_cache_clear_predictions(layer). */
void xd_expert_cache_predict(struct xd_expert_cache *c, int layer, int expert);
void xd_expert_cache_clear_predictions(struct xd_expert_cache *c, int layer);

/* Totals and per-layer demand counts (layer_hits/layer_misses may be NULL; else n_layers long). */
void xd_expert_cache_get_stats(const struct xd_expert_cache *c, struct xd_expert_cache_stats *ret,
                               uint64_t *layer_hits, uint64_t *layer_misses);
int xd_expert_cache_n_slots(const struct xd_expert_cache *c);

#endif
