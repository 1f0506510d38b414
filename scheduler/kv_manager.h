/* The KV block manager: reference-counted KV blocks, with full blocks optionally cached under a
 * chained hash of their tokens so that sequences sharing a prefix share its blocks. */
#ifndef XD_KV_MANAGER_H
#define XD_KV_MANAGER_H

#include <stdbool.h>
#include <stdint.h>

/* A block is in exactly one of three states:
 *   free       in the block pool, no contents worth keeping;
 *   referenced held by one or more sequences (refcount > 0);
 *   cached     refcount 0 but published under a hash, kept for a later prefix hit and on the
 *              LRU list; evicted (unpublished, reused) when an allocation finds no free block.
 * Only full blocks are ever published, and a published block is never written again: a
 * sequence only appends to its own last, unpublished block. */
struct xd_kv;

/* n_blocks blocks of block_size tokens, all free. prefix_caching off: xd_kv_publish does
 * nothing and xd_kv_lookup never hits. Returns NULL when out of memory. */
struct xd_kv *xd_kv_create(int n_blocks, int block_size, bool prefix_caching);
void xd_kv_destroy(struct xd_kv *kv); /* accepts NULL */

/* Takes n blocks into ret_ids with refcount 1, evicting the least recently used cached blocks
 * when the free ones do not suffice. All or nothing: XD_ERR_CAPACITY takes none. */
int xd_kv_alloc(struct xd_kv *kv, int n, int32_t *ret_ids);

/* Drops one reference to each block; a block reaching 0 becomes cached (most recently used) if
 * published, free otherwise. Releasing an unreferenced block is a programmer error (asserted). */
void xd_kv_release(struct xd_kv *kv, const int32_t *ids, int n);

/* The block published under hash h whose tokens (block_size of them) equal tokens and whose
 * parent is parent (the block the caller matched for the previous position, -1 for the first
 * block), with one more reference taken; -1 on a miss. The hash only finds candidates: tokens
 * and the parent chain are compared, so a hash collision (accidental or crafted by a client)
 * can never hand one prompt's KV to another. */
int32_t xd_kv_lookup(struct xd_kv *kv, uint64_t h, int32_t parent, const int32_t *tokens);

/* Publishes referenced full block id, holding tokens (block_size), under h as the child of
 * parent (the sequence's previous block, -1 for its first). A block already published, a hash
 * another block already holds, or a parent that is not published leaves things as they are
 * (the block stays private). */
void xd_kv_publish(struct xd_kv *kv, int32_t id, uint64_t h, int32_t parent,
                   const int32_t *tokens);

/* The hash of a full block's n tokens chained with the hash of the blocks before it (prev: 0
 * for the first block). */
uint64_t xd_kv_hash_block(uint64_t prev, const int32_t *tokens, int n);

int xd_kv_n_blocks(const struct xd_kv *kv);
int xd_kv_n_available(const struct xd_kv *kv); /* free + cached: what xd_kv_alloc can hand out */
int xd_kv_n_referenced(const struct xd_kv *kv);
int xd_kv_n_cached(const struct xd_kv *kv);
int xd_kv_refcount(const struct xd_kv *kv, int32_t id);

#endif
