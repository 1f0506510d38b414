/* The KV block pool: which of the engine's KV cache blocks are free, handed out by id. */
#ifndef XD_BLOCK_POOL_H
#define XD_BLOCK_POOL_H

#include <stdint.h>

struct xd_block_pool;

/* A pool of n_blocks block ids, all free. Returns NULL when out of memory. */
struct xd_block_pool *xd_block_pool_create(int n_blocks);
void xd_block_pool_destroy(struct xd_block_pool *pool);

/* Takes n free blocks into ret_ids (n of them). All or nothing: returns
 * XD_ERR_CAPACITY and takes none when fewer than n are free. */
int xd_block_pool_alloc(struct xd_block_pool *pool, int n, int32_t *ret_ids);

/* Returns blocks to the pool. Freeing a block that is already free, or an id
 * outside the pool, is a programmer error (asserted). */
void xd_block_pool_free(struct xd_block_pool *pool, const int32_t *ids, int n);

int xd_block_pool_n_free(const struct xd_block_pool *pool);
int xd_block_pool_n_blocks(const struct xd_block_pool *pool);

/* Blocks needed to hold n_tokens tokens at block_size tokens per block. */
static inline int xd_blocks_for_tokens(int n_tokens, int block_size)
{
    return (n_tokens + block_size - 1) / block_size;
}

#endif
