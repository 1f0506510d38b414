/* Test-only hooks of the GPU expert pool: the offload test's negative control, which removes one
 * of the pool's event waits to prove that the test sees the race it guards against. Only tests/
 * include this header; nothing in expertd calls it, and no environment variable, flag or config
 * key reaches it, so `expertd serve` always waits. */
#ifndef XD_EXPERT_POOL_TEST_H
#define XD_EXPERT_POOL_TEST_H

#ifdef __cplusplus
extern "C" {
#endif

enum xd_expert_pool_skip {
    XD_POOL_SKIP_NONE,  /* every wait in place (the default, and all serving ever sees) */
    XD_POOL_SKIP_READY, /* compute reads a slot without waiting for the copy into it */
    XD_POOL_SKIP_FREED, /* a copy overwrites a slot without waiting for its last reader */
};

/* Offloading pools created from now on in this process skip the wait named (until called again
 * with XD_POOL_SKIP_NONE), and zero their slots at creation so that what a skipped wait lets a
 * reader see is finite (another expert's weights or zeros), never bytes that decode as NaN and
 * route to expert ids out of range. Not thread-safe: call it between engines, from the thread
 * that creates them. Results of such pools are wrong by design. */
void xd_expert_pool_test_skip_wait(enum xd_expert_pool_skip which);

#ifdef __cplusplus
}
#endif

#endif
