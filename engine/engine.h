/* The engine: forward passes over a batch of sequence chunks on a backend, with a paged KV cache. */
#ifndef XD_ENGINE_H
#define XD_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/base/status.h"
#include "engine/experts/expert_cache.h"
#include "engine/model/model.h"

enum xd_logits_mode {
    XD_LOGITS_NONE, /* no logits (a prefill chunk that is not the last) */
    XD_LOGITS_LAST, /* logits of the chunk's last token */
    XD_LOGITS_ALL,  /* logits of every token of the chunk */
};

/* One sequence's share of a forward step: n_tokens new tokens at positions
 * pos .. pos + n_tokens - 1. The block table maps position p to KV block
 * block_table[p / block_size], slot p % block_size; it must cover every
 * position up to pos + n_tokens - 1. Positions before pos must already have
 * been written by earlier steps through the same table. Block allocation
 * belongs to the caller (the scheduler). */
struct xd_seq_chunk {
    const int32_t *tokens;       /* (n_tokens,) */
    int n_tokens;
    int pos;
    const int32_t *block_table;  /* (n_blocks,) */
    int n_blocks;
    enum xd_logits_mode logits;
};

struct xd_batch {
    const struct xd_seq_chunk *seqs; /* (n_seqs,) */
    int n_seqs;
};

/* Each token's routing in every MoE layer: the experts chosen, best first,
 * and the weights that scaled their outputs. Tokens are in batch order
 * (sequence by sequence, chunk order). The one record that the scheduler,
 * expert cache, prefetcher, metrics and trace recorder consume. */
struct xd_routing {
    int n_tokens;
    int n_moe_layers;
    int top_k;
    const int32_t *experts; /* (n_tokens, n_moe_layers, top_k) */
    const float *weights;   /* (n_tokens, n_moe_layers, top_k) */
    /* With xd_engine_opts.predict_experts: for each MoE layer but the first, the
     * predicted_width experts that layer's router ranks best, best first, from the hidden state
     * at the previous MoE layer's input (what a prefetcher can know one layer early); -1 for
     * the first MoE layer. NULL otherwise. */
    const int32_t *predicted; /* (n_tokens, n_moe_layers, predicted_width) */
    int predicted_width;
};

/* What a forward step returns; owned by the engine, valid until its next
 * forward call. */
struct xd_forward_out {
    const float *logits;    /* (n_logit_rows, vocab) in batch order */
    int n_logit_rows;
    struct xd_routing routing;
};

/* Watches forward steps from outside the engine (the routing-trace recorder, metrics): called by
 * whoever runs the engine after each successful forward, with the caller's id for each
 * sequence of the batch (n_seqs of them) and the step's wall time. */
typedef void (*xd_step_observer_fn)(void *ctx, const struct xd_batch *batch,
                                    const uint64_t *request_ids,
                                    const struct xd_forward_out *out, double seconds);

enum xd_device {
    XD_DEVICE_CPU,
    XD_DEVICE_CUDA,
};

struct xd_engine_opts {
    enum xd_device device;
    int n_kv_blocks;        /* KV cache capacity in blocks */
    int block_size;         /* tokens per KV block (default 16) */
    int max_batch_tokens;   /* most tokens in one forward step */
    int n_threads;          /* 0: all cores */
    bool predict_experts;   /* fill xd_routing.predicted (CPU backend; costs one router matmul
                               per MoE layer) */
    int predict_width;      /* experts predicted per token and layer, recorded and prefetched:
                               0 means top_k; at most n_experts */
    /* Expert offloading (CUDA): experts live in pinned host memory and this many are cached on
     * the GPU; 0 (or at least every expert) keeps all of them resident. */
    int expert_cache_slots;
    enum xd_evict_policy expert_evict_policy;
    bool expert_prefetch;   /* copy the next MoE layer's predicted experts ahead of need */
};

/* The expert cache's counters, for /metrics and benchmarks. */
struct xd_expert_stats {
    bool offloading;        /* false: every expert resident, the rest is zero */
    int n_slots;
    struct xd_expert_cache_stats cache;
    uint64_t bytes_h2d;     /* expert bytes copied host to device */
    double stall_seconds;   /* seconds the GPU's compute stream waited for expert copies,
                               summed over steps */
    int n_layers;           /* model layers (dense ones count nothing) */
    const uint64_t *layer_hits;   /* (n_layers,) valid until the next forward */
    const uint64_t *layer_misses; /* (n_layers,) */
};

struct xd_engine;

/* Creates an engine over model (borrowed; it must outlive the engine) and
 * allocates its KV cache and step buffers. On failure returns a negative
 * status with detail in err and leaves *ret_engine untouched. */
int xd_engine_create(struct xd_model *model, const struct xd_engine_opts *opts,
                     struct xd_engine **ret_engine, struct xd_err *err);
void xd_engine_destroy(struct xd_engine *engine);

/* Runs one step. Validates the batch (token ids, block ids, table coverage,
 * size) before touching any state; an invalid batch returns XD_ERR_INVALID or
 * XD_ERR_CAPACITY with detail in err and changes nothing. */
int xd_engine_forward(struct xd_engine *engine, const struct xd_batch *batch,
                      struct xd_forward_out *ret_out, struct xd_err *err);

/* Fills *ret with the expert cache's counters (offloading false on backends without one). */
void xd_engine_expert_stats(struct xd_engine *engine, struct xd_expert_stats *ret);

const struct xd_model_config *xd_engine_config(const struct xd_engine *engine);
const struct xd_engine_opts *xd_engine_opts(const struct xd_engine *engine);

#endif
