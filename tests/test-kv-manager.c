/* The KV block manager's prefix cache: a hit needs the same hash, the same tokens and the same
 * parent chain, so no hash collision (accidental or crafted) hands one prompt's KV to another;
 * refcounts and LRU eviction of cached blocks. */
#include <stdint.h>

#include "engine/base/status.h"
#include "scheduler/kv_manager.h"
#include "tests/test.h"

#define BS 4

static void test_hit_needs_tokens_and_parent(void)
{
    struct xd_kv *kv = xd_kv_create(8, BS, true);
    int32_t a[BS] = {1, 2, 3, 4}, b[BS] = {5, 6, 7, 8}, other[BS] = {9, 9, 9, 9};
    int32_t ids[2];
    CHECK(xd_kv_alloc(kv, 2, ids) == XD_OK, "alloc");
    uint64_t ha = xd_kv_hash_block(0, a, BS), hb = xd_kv_hash_block(ha, b, BS);
    xd_kv_publish(kv, ids[0], ha, -1, a);
    xd_kv_publish(kv, ids[1], hb, ids[0], b);
    /* the true chain hits */
    int32_t p = xd_kv_lookup(kv, ha, -1, a);
    CHECK(p == ids[0], "first block: %d", p);
    int32_t c = xd_kv_lookup(kv, hb, p, b);
    CHECK(c == ids[1], "second block: %d", c);
    /* the right hash with other tokens (a collision) misses */
    CHECK(xd_kv_lookup(kv, ha, -1, other) == -1, "a colliding first block must miss");
    CHECK(xd_kv_lookup(kv, hb, p, other) == -1, "a colliding second block must miss");
    /* the right hash and tokens under another parent misses */
    CHECK(xd_kv_lookup(kv, hb, -1, b) == -1, "the second block as a first block must miss");
    int32_t refs[2] = {p, c};
    xd_kv_release(kv, refs, 2);
    xd_kv_release(kv, ids, 2);
    CHECK(xd_kv_n_referenced(kv) == 0 && xd_kv_n_cached(kv) == 2, "both cached, unreferenced");
    xd_kv_destroy(kv);
}

static void test_evicted_parent_orphans_children(void)
{
    /* Two blocks of cache: publish A then child B; evict A (an allocation takes the LRU
     * block), republish the same block id under other content; B must not match under it. */
    struct xd_kv *kv = xd_kv_create(2, BS, true);
    int32_t a[BS] = {1, 2, 3, 4}, b[BS] = {5, 6, 7, 8}, z[BS] = {0, 0, 0, 1};
    int32_t ids[2];
    xd_kv_alloc(kv, 2, ids);
    uint64_t ha = xd_kv_hash_block(0, a, BS), hb = xd_kv_hash_block(ha, b, BS);
    xd_kv_publish(kv, ids[0], ha, -1, a);
    xd_kv_publish(kv, ids[1], hb, ids[0], b);
    xd_kv_release(kv, &ids[0], 1); /* A cached first: least recently used */
    xd_kv_release(kv, &ids[1], 1);
    int32_t x;
    CHECK(xd_kv_alloc(kv, 1, &x) == XD_OK && x == ids[0], "the LRU block (A) is reused: %d", x);
    uint64_t hz = xd_kv_hash_block(0, z, BS);
    xd_kv_publish(kv, x, hz, -1, z);
    CHECK(xd_kv_lookup(kv, ha, -1, a) == -1, "A's content is gone");
    int32_t pz = xd_kv_lookup(kv, hz, -1, z);
    CHECK(pz == x, "the new content hits");
    CHECK(xd_kv_lookup(kv, hb, pz, b) == -1, "B was A's child, not Z's: must miss");
    xd_kv_release(kv, &pz, 1);
    xd_kv_release(kv, &x, 1);
    xd_kv_destroy(kv);
}

static void test_no_publish_under_private_parent(void)
{
    struct xd_kv *kv = xd_kv_create(4, BS, true);
    int32_t a[BS] = {1, 2, 3, 4}, b[BS] = {5, 6, 7, 8};
    int32_t ids[3];
    xd_kv_alloc(kv, 3, ids);
    uint64_t ha = xd_kv_hash_block(0, a, BS);
    xd_kv_publish(kv, ids[0], ha, -1, a);
    xd_kv_publish(kv, ids[1], ha, -1, a); /* same content elsewhere: stays private */
    xd_kv_publish(kv, ids[2], xd_kv_hash_block(ha, b, BS), ids[1], b); /* parent private */
    int32_t p = xd_kv_lookup(kv, ha, -1, a);
    CHECK(p == ids[0], "the first publisher holds the hash");
    CHECK(xd_kv_lookup(kv, xd_kv_hash_block(ha, b, BS), p, b) == -1,
          "a child of a private block is not published");
    xd_kv_release(kv, &p, 1);
    xd_kv_release(kv, ids, 3);
    CHECK(xd_kv_n_cached(kv) == 1 && xd_kv_n_available(kv) == 4, "one cached, all available");
    xd_kv_destroy(kv);
}

int main(void)
{
    RUN(test_hit_needs_tokens_and_parent);
    RUN(test_evicted_parent_orphans_children);
    RUN(test_no_publish_under_private_parent);
    return test_summary();
}
