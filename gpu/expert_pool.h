/* The GPU expert pool: expert weights in slots of one device allocation, found by
 * (layer, expert). Today every expert is resident; the offloading issue adds misses, copies
 * from pinned host memory and prefetch behind the same acquire/release calls. */
#ifndef XD_EXPERT_POOL_H
#define XD_EXPERT_POOL_H

#include "kernels.h"

extern "C" {
#include "model.h"
}

/* Device pointers of one expert's bf16 weights, valid until release. */
struct xd_gpu_expert {
    const bf16 *gate; /* (ffn, hidden) */
    const bf16 *up;   /* (ffn, hidden) */
    const bf16 *down; /* (hidden, ffn) */
};

struct xd_expert_pool;

/* Allocates one slot per (MoE layer, expert) and uploads every expert of model, read through
 * the model's host expert store and converted to bf16. Out of GPU memory is XD_ERR_NOMEM with a
 * message naming the pool's size and what is free. */
int xd_expert_pool_create(const struct xd_model *model, cudaStream_t stream,
                          struct xd_expert_pool **ret, struct xd_err *err);
void xd_expert_pool_destroy(struct xd_expert_pool *pool);

int xd_expert_pool_acquire(struct xd_expert_pool *pool, int layer, int expert,
                           struct xd_gpu_expert *ret);
void xd_expert_pool_release(struct xd_expert_pool *pool, int layer, int expert);

/* Bytes of device memory the pool holds. */
size_t xd_expert_pool_bytes(const struct xd_expert_pool *pool);

/* Converts a host matrix of any dtype to bf16 into dst (rows * cols elements, host memory). */
void xd_matrix_to_bf16(const struct xd_matrix *m, uint16_t *dst);

#endif
