/* KV block pool: accounting, all-or-nothing allocation, id ranges, and a seeded random
 * alloc/free property test against a simple model of which ids are held. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "engine/base/status.h"
#include "scheduler/block_pool.h"
#include "tests/test.h"

static void test_create_all_free(void)
{
    struct xd_block_pool *p = xd_block_pool_create(8);
    CHECK(p != NULL, "create");
    if (!p)
        return;
    CHECK(xd_block_pool_n_blocks(p) == 8, "n_blocks %d", xd_block_pool_n_blocks(p));
    CHECK(xd_block_pool_n_free(p) == 8, "n_free %d", xd_block_pool_n_free(p));
    xd_block_pool_destroy(p);
    xd_block_pool_destroy(NULL);
}

static void test_alloc_free_accounting(void)
{
    struct xd_block_pool *p = xd_block_pool_create(8);
    if (!p)
        return;
    int32_t a[3], b[5];
    CHECK(xd_block_pool_alloc(p, 3, a) == XD_OK, "alloc 3");
    CHECK(xd_block_pool_n_free(p) == 5, "n_free after 3: %d", xd_block_pool_n_free(p));
    CHECK(xd_block_pool_alloc(p, 5, b) == XD_OK, "alloc 5");
    CHECK(xd_block_pool_n_free(p) == 0, "n_free after 8: %d", xd_block_pool_n_free(p));
    xd_block_pool_free(p, a, 3);
    CHECK(xd_block_pool_n_free(p) == 3, "n_free after freeing 3: %d", xd_block_pool_n_free(p));
    xd_block_pool_free(p, b, 5);
    CHECK(xd_block_pool_n_free(p) == 8, "n_free after freeing all: %d", xd_block_pool_n_free(p));
    CHECK(xd_block_pool_n_blocks(p) == 8, "n_blocks is constant");
    /* allocating and freeing nothing changes nothing */
    CHECK(xd_block_pool_alloc(p, 0, a) == XD_OK, "alloc 0");
    xd_block_pool_free(p, a, 0);
    CHECK(xd_block_pool_n_free(p) == 8, "n_free after alloc 0 / free 0");
    xd_block_pool_destroy(p);
}

static void test_alloc_all_or_nothing(void)
{
    struct xd_block_pool *p = xd_block_pool_create(4);
    if (!p)
        return;
    int32_t ids[8];
    for (int i = 0; i < 8; i++)
        ids[i] = -7;
    CHECK(xd_block_pool_alloc(p, 5, ids) == XD_ERR_CAPACITY, "5 of 4");
    CHECK(xd_block_pool_n_free(p) == 4, "a failed alloc took blocks: n_free %d",
          xd_block_pool_n_free(p));
    for (int i = 0; i < 8; i++)
        CHECK(ids[i] == -7, "a failed alloc wrote ids[%d] = %d", i, ids[i]);

    int32_t three[3];
    CHECK(xd_block_pool_alloc(p, 3, three) == XD_OK, "3 of 4");
    CHECK(xd_block_pool_alloc(p, 2, ids) == XD_ERR_CAPACITY, "2 of 1");
    CHECK(xd_block_pool_n_free(p) == 1, "n_free %d", xd_block_pool_n_free(p));
    CHECK(ids[0] == -7 && ids[1] == -7, "a failed alloc wrote ids");
    /* the one left is still there */
    int32_t last;
    CHECK(xd_block_pool_alloc(p, 1, &last) == XD_OK, "the last block");
    CHECK(xd_block_pool_n_free(p) == 0, "empty");
    CHECK(xd_block_pool_alloc(p, 1, ids) == XD_ERR_CAPACITY, "alloc from an empty pool");
    CHECK(xd_block_pool_alloc(p, 0, ids) == XD_OK, "alloc 0 from an empty pool");
    for (int i = 0; i < 3; i++)
        CHECK(three[i] != last, "the last block was already handed out");
    xd_block_pool_destroy(p);
}

static void test_ids_unique_and_in_range(void)
{
    enum { N = 64 };
    struct xd_block_pool *p = xd_block_pool_create(N);
    if (!p)
        return;
    bool seen[N] = {false};
    /* one at a time, then check a batch alloc after freeing everything too */
    int32_t ids[N];
    for (int i = 0; i < N; i++) {
        CHECK(xd_block_pool_alloc(p, 1, &ids[i]) == XD_OK, "alloc %d", i);
        CHECK(ids[i] >= 0 && ids[i] < N, "id %d out of [0, %d)", ids[i], N);
        if (ids[i] >= 0 && ids[i] < N) {
            CHECK(!seen[ids[i]], "id %d handed out twice", ids[i]);
            seen[ids[i]] = true;
        }
    }
    CHECK(xd_block_pool_n_free(p) == 0, "all taken");
    xd_block_pool_free(p, ids, N);
    for (int i = 0; i < N; i++)
        seen[i] = false;
    CHECK(xd_block_pool_alloc(p, N, ids) == XD_OK, "alloc all at once");
    for (int i = 0; i < N; i++) {
        CHECK(ids[i] >= 0 && ids[i] < N, "id %d out of range", ids[i]);
        if (ids[i] >= 0 && ids[i] < N) {
            CHECK(!seen[ids[i]], "id %d twice in one batch", ids[i]);
            seen[ids[i]] = true;
        }
    }
    xd_block_pool_destroy(p);
}

static void test_single_block_pool(void)
{
    struct xd_block_pool *p = xd_block_pool_create(1);
    if (!p)
        return;
    int32_t id = -1, other = -1;
    for (int round = 0; round < 3; round++) {
        CHECK(xd_block_pool_alloc(p, 1, &id) == XD_OK && id == 0, "round %d: id %d", round, id);
        CHECK(xd_block_pool_alloc(p, 1, &other) == XD_ERR_CAPACITY, "second block");
        xd_block_pool_free(p, &id, 1);
    }
    xd_block_pool_destroy(p);
}

/* xorshift64*: a fixed, seeded sequence for the property test */
static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

static void test_random_alloc_free_property(void)
{
    enum { N = 97, OPS = 10000 };
    struct xd_block_pool *p = xd_block_pool_create(N);
    if (!p)
        return;
    int32_t held[N];     /* ids the test holds, in no order */
    int n_held = 0;
    bool is_held[N] = {false};
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    int n_failed_allocs = 0, n_ok_allocs = 0, errors = 0;

    for (int op = 0; op < OPS && errors < 10; op++) {
        if (rng_next(&rng) % 2 == 0) {
            /* ask for 0..16 blocks: sometimes more than are free */
            int n = (int)(rng_next(&rng) % 17);
            int32_t got[16];
            for (int i = 0; i < 16; i++)
                got[i] = -1;
            int free_before = xd_block_pool_n_free(p);
            int rc = xd_block_pool_alloc(p, n, got);
            if (n > N - n_held) {
                errors += rc != XD_ERR_CAPACITY;
                CHECK(rc == XD_ERR_CAPACITY, "op %d: alloc %d with %d free returned %d", op, n,
                      N - n_held, rc);
                CHECK(xd_block_pool_n_free(p) == free_before, "op %d: failed alloc took blocks",
                      op);
                n_failed_allocs++;
                continue;
            }
            errors += rc != XD_OK;
            CHECK(rc == XD_OK, "op %d: alloc %d with %d free returned %d", op, n, N - n_held, rc);
            if (rc != XD_OK)
                continue;
            n_ok_allocs++;
            for (int i = 0; i < n; i++) {
                bool ok = got[i] >= 0 && got[i] < N && !is_held[got[i]];
                errors += !ok;
                CHECK(ok, "op %d: id %d out of range or handed out twice", op, got[i]);
                if (!ok)
                    continue;
                is_held[got[i]] = true;
                held[n_held++] = got[i];
            }
        } else if (n_held > 0) {
            /* free a random subset of 1..n_held held blocks */
            int n = 1 + (int)(rng_next(&rng) % (uint64_t)n_held);
            int32_t give[N];
            for (int i = 0; i < n; i++) {
                int j = (int)(rng_next(&rng) % (uint64_t)n_held);
                give[i] = held[j];
                held[j] = held[--n_held];
                is_held[give[i]] = false;
            }
            xd_block_pool_free(p, give, n);
        }
        int nf = xd_block_pool_n_free(p);
        if (nf != N - n_held) {
            errors++;
            CHECK(nf == N - n_held, "op %d: n_free %d, the test holds %d of %d", op, nf, n_held,
                  N);
        }
    }
    /* the walk exercised both outcomes */
    CHECK(n_failed_allocs > 0 && n_ok_allocs > 1000, "failed %d ok %d", n_failed_allocs,
          n_ok_allocs);
    xd_block_pool_free(p, held, n_held);
    CHECK(xd_block_pool_n_free(p) == N, "everything returned: n_free %d", xd_block_pool_n_free(p));
    xd_block_pool_destroy(p);
}

static void test_blocks_for_tokens(void)
{
    /* ceil(n_tokens / block_size) */
    CHECK(xd_blocks_for_tokens(0, 16) == 0, "0 tokens");
    CHECK(xd_blocks_for_tokens(1, 16) == 1, "1 token");
    CHECK(xd_blocks_for_tokens(15, 16) == 1, "15 tokens");
    CHECK(xd_blocks_for_tokens(16, 16) == 1, "16 tokens");
    CHECK(xd_blocks_for_tokens(17, 16) == 2, "17 tokens");
    CHECK(xd_blocks_for_tokens(32, 16) == 2, "32 tokens");
    CHECK(xd_blocks_for_tokens(33, 16) == 3, "33 tokens");
    CHECK(xd_blocks_for_tokens(100, 1) == 100, "block size 1");
    CHECK(xd_blocks_for_tokens(4096, 256) == 16, "4096 / 256");
    CHECK(xd_blocks_for_tokens(4097, 256) == 17, "4097 / 256");
    CHECK(xd_blocks_for_tokens(131072, 16) == 8192, "128k context");
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    RUN(test_create_all_free);
    RUN(test_alloc_free_accounting);
    RUN(test_alloc_all_or_nothing);
    RUN(test_ids_unique_and_in_range);
    RUN(test_single_block_pool);
    RUN(test_random_alloc_free_property);
    RUN(test_blocks_for_tokens);
    return test_summary();
}
