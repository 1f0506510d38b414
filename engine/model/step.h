/* What one forward step over the model takes and gives: a batch of sequence chunks in, logits
 * and the routing record out; and the observer type that watches steps. Types only, below the
 * engine front, so the expert code and the backends share the record without engine.h. */
#ifndef XD_STEP_H
#define XD_STEP_H

#include <stdint.h>

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
    double seconds; /* > 0: the forward's cost as the engine itself accounts it (a simulated
                     * engine's); 0: whoever runs the engine times the call */
};

/* Watches forward steps from outside the engine (the routing-trace recorder, metrics): called by
 * whoever runs the engine after each successful forward, with the caller's id for each
 * sequence of the batch (n_seqs of them) and the step's wall time. */
typedef void (*xd_step_observer_fn)(void *ctx, const struct xd_batch *batch,
                                    const uint64_t *request_ids,
                                    const struct xd_forward_out *out, double seconds);

#endif
