/* A persistent pool of worker threads that share each job's items through one atomic counter. */
#ifndef XD_CPU_POOL_H
#define XD_CPU_POOL_H

struct xd_cpu_pool;

/* Starts n_threads - 1 workers (the caller of xd_cpu_pool_run is the n-th); n_threads <= 1 makes
 * a pool that runs every job on the caller. Workers spin briefly for the next job, then sleep on
 * a futex, so an idle pool costs no CPU. Returns 0, or -1 when a thread could not be started
 * (*ret_pool is then untouched). */
int xd_cpu_pool_create(int n_threads, struct xd_cpu_pool **ret_pool);

/* Runs fn(ctx, i) for every i in 0 .. n_items - 1, each exactly once, on the caller and the
 * workers (whoever takes the next item first), and returns when all have finished: the end is a
 * barrier, and what the items wrote is visible to the caller. Calls from one thread at a time. */
void xd_cpu_pool_run(struct xd_cpu_pool *pool, int n_items, void (*fn)(void *ctx, int item),
                     void *ctx);

/* Stops and joins the workers; NULL is a no-op. */
void xd_cpu_pool_destroy(struct xd_cpu_pool *pool);

#endif
