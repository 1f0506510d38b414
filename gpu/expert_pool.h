/* The GPU expert pool: expert weights in slots of one device allocation, found by
 * (layer, expert). Either every expert is resident, or (offloading) every expert lives in pinned
 * host memory in bf16 and a fixed number of slots cache them on the GPU: a miss copies the
 * expert on a dedicated copy stream, and events order every use after its copy and every copy
 * after the last use of the slot it overwrites. The cache's bookkeeping (which slot, eviction,
 * counters) is engine/experts/expert_cache, the same code the planner replays traces through. */
#ifndef XD_EXPERT_POOL_H
#define XD_EXPERT_POOL_H

#include "gpu/kernels.h"

extern "C" {
#include "engine/engine.h"
#include "engine/model/model.h"
}

/* Device pointers of one expert's bf16 weights, valid until release. */
struct xd_gpu_expert {
    const bf16 *gate; /* (ffn, hidden) */
    const bf16 *up;   /* (ffn, hidden) */
    const bf16 *down; /* (hidden, ffn) */
};

struct xd_expert_pool_opts {
    int n_slots;                 /* experts cached on the GPU; 0 or >= all: all resident */
    enum xd_evict_policy policy;
};

struct xd_expert_pool;

/* Creates the pool; compute is the stream that reads experts. All resident: one slot per
 * (MoE layer, expert), uploaded now. Offloading: n_slots device slots, empty, and a pinned host
 * copy of every expert in bf16. Out of GPU or pinned memory is XD_ERR_NOMEM with a message
 * naming the sizes, what is free and the setting that helps. */
int xd_expert_pool_create(const struct xd_model *model, cudaStream_t compute,
                          const struct xd_expert_pool_opts *opts, struct xd_expert_pool **ret,
                          struct xd_err *err);
void xd_expert_pool_destroy(struct xd_expert_pool *pool);

bool xd_expert_pool_offloading(const struct xd_expert_pool *pool);

/* Makes (layer, expert) usable by work enqueued on the compute stream from now on: on a miss,
 * copies it into a slot (evicting by the policy); the compute stream waits for the copy, timed
 * when the copy may still be in flight (xd_expert_pool_end_step sums those waits). The slot
 * stays pinned until release. XD_ERR_CAPACITY (offloading) when every slot is pinned. */
int xd_expert_pool_acquire(struct xd_expert_pool *pool, int layer, int expert,
                           struct xd_gpu_expert *ret, struct xd_err *err);
/* The same in two halves, so that a layer can pin all its experts (their copies start at once)
 * and let each expert's work wait only for its own copy: pin fetches and pins, returning the
 * pointers, but enqueues no wait; wait makes work enqueued on the compute stream from now on
 * wait for the expert's copy (a pinned expert; call it before the first work that reads it). */
int xd_expert_pool_pin(struct xd_expert_pool *pool, int layer, int expert,
                       struct xd_gpu_expert *ret, struct xd_err *err);
int xd_expert_pool_wait(struct xd_expert_pool *pool, int layer, int expert, struct xd_err *err);
/* Ends a use: the slot may be overwritten once the compute stream's work so far is done. */
void xd_expert_pool_release(struct xd_expert_pool *pool, int layer, int expert);

/* Offloading: marks (layer, expert) as predicted (the predictive policy spares it) and, when it
 * is absent and a slot is free of pins, starts copying it. A wrong guess costs a copy, never
 * correctness. No-op when all are resident. */
int xd_expert_pool_prefetch(struct xd_expert_pool *pool, int layer, int expert,
                            struct xd_err *err);
/* Adds the time the compute stream waited for copies this step to the stall counter; call
 * once the step's work on the compute stream has finished (after its synchronisation). On
 * failure the step's waits are dropped from the counter. */
int xd_expert_pool_end_step(struct xd_expert_pool *pool, struct xd_err *err);

/* Forgets the predictions of layer once it has run. */
void xd_expert_pool_clear_predictions(struct xd_expert_pool *pool, int layer);

/* The counters (offloading false when all are resident). */
void xd_expert_pool_stats(struct xd_expert_pool *pool, struct xd_expert_stats *ret);

/* Bytes of device memory the pool holds. */
size_t xd_expert_pool_bytes(const struct xd_expert_pool *pool);

/* Converts a host matrix of any dtype to bf16 into dst (rows * cols elements, host memory). */
void xd_matrix_to_bf16(const struct xd_matrix *m, uint16_t *dst);

#endif
