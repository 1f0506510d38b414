/* KV block pool: a stack of free ids plus an in-use bitmap that catches double frees. */
#include "scheduler/block_pool.h"

#include <assert.h>
#include <stdlib.h>

#include "engine/base/status.h"

struct xd_block_pool {
    int n_blocks;
    int n_free;
    int32_t *free_ids; /* (n_blocks,) the first n_free are free */
    uint8_t *in_use;   /* (n_blocks,) */
};

struct xd_block_pool *xd_block_pool_create(int n_blocks)
{
    assert(n_blocks > 0);
    struct xd_block_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->free_ids = malloc(sizeof *p->free_ids * (size_t)n_blocks);
    p->in_use = calloc((size_t)n_blocks, 1);
    if (!p->free_ids || !p->in_use) {
        xd_block_pool_destroy(p);
        return NULL;
    }
    p->n_blocks = p->n_free = n_blocks;
    /* lowest ids handed out first */
    for (int i = 0; i < n_blocks; i++)
        p->free_ids[i] = n_blocks - 1 - i;
    return p;
}

void xd_block_pool_destroy(struct xd_block_pool *p)
{
    if (!p)
        return;
    free(p->free_ids);
    free(p->in_use);
    free(p);
}

int xd_block_pool_alloc(struct xd_block_pool *p, int n, int32_t *ret_ids)
{
    assert(n >= 0);
    if (n > p->n_free)
        return XD_ERR_CAPACITY;
    for (int i = 0; i < n; i++) {
        int32_t id = p->free_ids[--p->n_free];
        p->in_use[id] = 1;
        ret_ids[i] = id;
    }
    return XD_OK;
}

void xd_block_pool_free(struct xd_block_pool *p, const int32_t *ids, int n)
{
    for (int i = 0; i < n; i++) {
        assert(ids[i] >= 0 && ids[i] < p->n_blocks && p->in_use[ids[i]]);
        p->in_use[ids[i]] = 0;
        p->free_ids[p->n_free++] = ids[i];
    }
}

int xd_block_pool_n_free(const struct xd_block_pool *p)
{
    return p->n_free;
}

int xd_block_pool_n_blocks(const struct xd_block_pool *p)
{
    return p->n_blocks;
}
