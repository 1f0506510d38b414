/* KV block manager: refcounts over the block pool, a chained hash table of published blocks and
 * an LRU list of cached (unreferenced, published) blocks. */
#include "scheduler/kv_manager.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "engine/base/status.h"
#include "scheduler/block_pool.h"

struct xd_kv {
    int n_blocks;
    int block_size;
    bool prefix_caching;
    struct xd_block_pool *pool; /* free blocks */
    int n_referenced;
    int n_cached;
    int32_t *ref;          /* (n_blocks,) references held by sequences */
    uint8_t *published;    /* (n_blocks,) in the hash table */
    uint64_t *hash;        /* (n_blocks,) valid when published */
    uint64_t *serial;      /* (n_blocks,) publication number, new at each publish; 0: never */
    uint64_t *parent_serial; /* (n_blocks,) the parent's serial when published; 0: first block */
    int32_t *tokens;       /* (n_blocks, block_size) a published block's tokens */
    uint64_t next_serial;
    int32_t *bucket_next;  /* (n_blocks,) next block in the same bucket, -1 ends */
    int32_t *buckets;      /* (n_buckets,) first block of each bucket, -1: empty */
    uint64_t bucket_mask;  /* n_buckets - 1, a power of two */
    int32_t *lru_prev;     /* (n_blocks,) cached blocks, least recently used at lru_head */
    int32_t *lru_next;
    int32_t lru_head;
    int32_t lru_tail;
};

struct xd_kv *xd_kv_create(int n_blocks, int block_size, bool prefix_caching)
{
    assert(n_blocks > 0 && block_size > 0);
    struct xd_kv *kv = calloc(1, sizeof *kv);
    if (!kv)
        return NULL;
    size_t n_buckets = 16;
    while (n_buckets < 2 * (size_t)n_blocks)
        n_buckets *= 2;
    size_t n = (size_t)n_blocks;
    kv->n_blocks = n_blocks;
    kv->block_size = block_size;
    kv->prefix_caching = prefix_caching;
    kv->pool = xd_block_pool_create(n_blocks);
    kv->ref = calloc(n, sizeof *kv->ref);
    kv->published = calloc(n, 1);
    kv->hash = calloc(n, sizeof *kv->hash);
    kv->serial = calloc(n, sizeof *kv->serial);
    kv->parent_serial = calloc(n, sizeof *kv->parent_serial);
    kv->tokens = prefix_caching ? malloc(n * (size_t)block_size * sizeof *kv->tokens)
                                : malloc(sizeof *kv->tokens);
    kv->next_serial = 1;
    kv->bucket_next = malloc(n * sizeof *kv->bucket_next);
    kv->buckets = malloc(n_buckets * sizeof *kv->buckets);
    kv->lru_prev = malloc(n * sizeof *kv->lru_prev);
    kv->lru_next = malloc(n * sizeof *kv->lru_next);
    if (!kv->pool || !kv->ref || !kv->published || !kv->hash || !kv->serial ||
        !kv->parent_serial || !kv->tokens || !kv->bucket_next ||
        !kv->buckets || !kv->lru_prev || !kv->lru_next) {
        xd_kv_destroy(kv);
        return NULL;
    }
    kv->bucket_mask = n_buckets - 1;
    for (size_t i = 0; i < n_buckets; i++)
        kv->buckets[i] = -1;
    kv->lru_head = kv->lru_tail = -1;
    return kv;
}

void xd_kv_destroy(struct xd_kv *kv)
{
    if (!kv)
        return;
    xd_block_pool_destroy(kv->pool);
    free(kv->ref);
    free(kv->published);
    free(kv->hash);
    free(kv->serial);
    free(kv->parent_serial);
    free(kv->tokens);
    free(kv->bucket_next);
    free(kv->buckets);
    free(kv->lru_prev);
    free(kv->lru_next);
    free(kv);
}

/* ---- LRU list of cached blocks ---- */

static void lru_push_tail(struct xd_kv *kv, int32_t id)
{
    kv->lru_prev[id] = kv->lru_tail;
    kv->lru_next[id] = -1;
    if (kv->lru_tail >= 0)
        kv->lru_next[kv->lru_tail] = id;
    else
        kv->lru_head = id;
    kv->lru_tail = id;
    kv->n_cached++;
}

static void lru_remove(struct xd_kv *kv, int32_t id)
{
    int32_t p = kv->lru_prev[id], n = kv->lru_next[id];
    if (p >= 0)
        kv->lru_next[p] = n;
    else
        kv->lru_head = n;
    if (n >= 0)
        kv->lru_prev[n] = p;
    else
        kv->lru_tail = p;
    kv->n_cached--;
}

/* ---- hash table of published blocks ---- */

static int32_t *bucket_of(struct xd_kv *kv, uint64_t h)
{
    return &kv->buckets[(h ^ (h >> 29)) & kv->bucket_mask];
}

static int32_t table_find(struct xd_kv *kv, uint64_t h)
{
    for (int32_t id = *bucket_of(kv, h); id >= 0; id = kv->bucket_next[id])
        if (kv->hash[id] == h)
            return id;
    return -1;
}

/* The published block under h with these tokens and this parent serial, or -1. */
static int32_t table_find_exact(struct xd_kv *kv, uint64_t h, uint64_t parent_serial,
                                const int32_t *tokens)
{
    const size_t bs = (size_t)kv->block_size;
    for (int32_t id = *bucket_of(kv, h); id >= 0; id = kv->bucket_next[id])
        if (kv->hash[id] == h && kv->parent_serial[id] == parent_serial &&
            memcmp(kv->tokens + (size_t)id * bs, tokens, bs * sizeof *tokens) == 0)
            return id;
    return -1;
}

static void table_remove(struct xd_kv *kv, int32_t id)
{
    int32_t *link = bucket_of(kv, kv->hash[id]);
    while (*link != id) {
        assert(*link >= 0);
        link = &kv->bucket_next[*link];
    }
    *link = kv->bucket_next[id];
    kv->published[id] = 0;
    kv->serial[id] = 0; /* children published under the old serial can no longer match */
}

/* ---- public ---- */

int xd_kv_alloc(struct xd_kv *kv, int n, int32_t *ret_ids)
{
    assert(n >= 0);
    int n_free = xd_block_pool_n_free(kv->pool);
    if (n > n_free + kv->n_cached)
        return XD_ERR_CAPACITY;
    int from_pool = n < n_free ? n : n_free;
    int rc = xd_block_pool_alloc(kv->pool, from_pool, ret_ids);
    assert(rc == XD_OK);
    (void)rc;
    for (int i = from_pool; i < n; i++) {
        int32_t id = kv->lru_head; /* evict the least recently used cached block */
        lru_remove(kv, id);
        table_remove(kv, id);
        ret_ids[i] = id;
    }
    for (int i = 0; i < n; i++) {
        assert(kv->ref[ret_ids[i]] == 0 && !kv->published[ret_ids[i]]);
        kv->ref[ret_ids[i]] = 1;
    }
    kv->n_referenced += n;
    return XD_OK;
}

void xd_kv_release(struct xd_kv *kv, const int32_t *ids, int n)
{
    for (int i = 0; i < n; i++) {
        int32_t id = ids[i];
        assert(id >= 0 && id < kv->n_blocks && kv->ref[id] > 0);
        if (--kv->ref[id] > 0)
            continue;
        kv->n_referenced--;
        if (kv->published[id])
            lru_push_tail(kv, id);
        else
            xd_block_pool_free(kv->pool, &id, 1);
    }
}

int32_t xd_kv_lookup(struct xd_kv *kv, uint64_t h, int32_t parent, const int32_t *tokens)
{
    if (!kv->prefix_caching)
        return -1;
    assert(parent >= -1 && parent < kv->n_blocks);
    uint64_t ps = parent < 0 ? 0 : kv->serial[parent];
    if (parent >= 0 && ps == 0)
        return -1; /* an unpublished parent has no published children */
    int32_t id = table_find_exact(kv, h, ps, tokens);
    if (id < 0)
        return -1;
    if (kv->ref[id]++ == 0) {
        lru_remove(kv, id);
        kv->n_referenced++;
    }
    return id;
}

void xd_kv_publish(struct xd_kv *kv, int32_t id, uint64_t h, int32_t parent,
                   const int32_t *tokens)
{
    assert(id >= 0 && id < kv->n_blocks && kv->ref[id] > 0);
    assert(parent >= -1 && parent < kv->n_blocks);
    if (!kv->prefix_caching || kv->published[id] || table_find(kv, h) >= 0)
        return;
    if (parent >= 0 && !kv->published[parent])
        return;
    const size_t bs = (size_t)kv->block_size;
    memcpy(kv->tokens + (size_t)id * bs, tokens, bs * sizeof *tokens);
    kv->parent_serial[id] = parent < 0 ? 0 : kv->serial[parent];
    kv->serial[id] = kv->next_serial++;
    kv->hash[id] = h;
    kv->published[id] = 1;
    int32_t *b = bucket_of(kv, h);
    kv->bucket_next[id] = *b;
    *b = id;
}

uint64_t xd_kv_hash_block(uint64_t prev, const int32_t *tokens, int n)
{
    /* FNV-1a over the previous hash and the token ids, then a splitmix64 finaliser */
    uint64_t h = 0xcbf29ce484222325ull ^ prev;
    for (int i = 0; i < n; i++) {
        uint32_t t = (uint32_t)tokens[i];
        for (int b = 0; b < 4; b++) {
            h ^= (t >> (8 * b)) & 0xff;
            h *= 0x100000001b3ull;
        }
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

int xd_kv_n_blocks(const struct xd_kv *kv)
{
    return kv->n_blocks;
}

int xd_kv_n_available(const struct xd_kv *kv)
{
    return xd_block_pool_n_free(kv->pool) + kv->n_cached;
}

int xd_kv_n_referenced(const struct xd_kv *kv)
{
    return kv->n_referenced;
}

int xd_kv_n_cached(const struct xd_kv *kv)
{
    return kv->n_cached;
}

int xd_kv_refcount(const struct xd_kv *kv, int32_t id)
{
    assert(id >= 0 && id < kv->n_blocks);
    return kv->ref[id];
}
