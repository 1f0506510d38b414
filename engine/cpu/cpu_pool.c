/* A persistent pool of worker threads: a job's items are taken one at a time from an atomic
 * counter; idle workers spin for a short while, then sleep on a futex (Linux). */
#include "engine/cpu/cpu_pool.h"

#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Spins before sleeping: about 20-50 us, long enough to catch the next job of a MoE layer (the
 * gate/up job is followed by the down job at once) without burning a core between steps. */
#define SPIN_ROUNDS 20000

struct xd_cpu_pool {
    int n_workers;
    pthread_t *threads;
    atomic_uint generation;   /* bumped once per job; workers wait for it to change */
    atomic_int next;          /* the next item to take */
    atomic_int active;        /* workers still inside the current job */
    atomic_uint done_seq;     /* futex word the caller sleeps on while workers finish */
    int n_items;
    void (*fn)(void *, int);
    void *ctx;
    atomic_bool stop;
};

static void futex_wait(atomic_uint *addr, unsigned expected)
{
    syscall(SYS_futex, (unsigned *)addr, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake_all(atomic_uint *addr)
{
    syscall(SYS_futex, (unsigned *)addr, FUTEX_WAKE_PRIVATE, 0x7fffffff, NULL, NULL, 0);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void take_items(struct xd_cpu_pool *p)
{
    for (;;) {
        int i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= p->n_items)
            return;
        p->fn(p->ctx, i);
    }
}

static void *worker(void *arg)
{
    struct xd_cpu_pool *p = arg;
    /* the generation the pool was created with (0), not what it is when this thread first
     * runs: a job started before then would be missed, and its caller would wait forever
     * for this worker */
    unsigned seen = 0;
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen) {
            if (++spins < SPIN_ROUNDS)
                cpu_relax();
            else
                futex_wait(&p->generation, seen);
        }
        seen = g;
        if (atomic_load_explicit(&p->stop, memory_order_acquire))
            return NULL;
        take_items(p);
        if (atomic_fetch_sub_explicit(&p->active, 1, memory_order_acq_rel) == 1) {
            atomic_fetch_add_explicit(&p->done_seq, 1, memory_order_release);
            futex_wake_all(&p->done_seq);
        }
    }
}

int xd_cpu_pool_create(int n_threads, struct xd_cpu_pool **ret_pool)
{
    struct xd_cpu_pool *p = calloc(1, sizeof *p);
    if (!p)
        return -1;
    int n = n_threads > 1 ? n_threads - 1 : 0;
    p->threads = calloc(n ? (size_t)n : 1, sizeof(pthread_t));
    if (!p->threads) {
        free(p);
        return -1;
    }
    for (; p->n_workers < n; p->n_workers++)
        if (pthread_create(&p->threads[p->n_workers], NULL, worker, p) != 0) {
            xd_cpu_pool_destroy(p);
            return -1;
        }
    *ret_pool = p;
    return 0;
}

void xd_cpu_pool_run(struct xd_cpu_pool *p, int n_items, void (*fn)(void *ctx, int item),
                     void *ctx)
{
    if (n_items <= 0)
        return;
    if (p->n_workers == 0 || n_items == 1) {
        for (int i = 0; i < n_items; i++)
            fn(ctx, i);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->n_items = n_items;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->active, p->n_workers, memory_order_relaxed);
    unsigned done = atomic_load_explicit(&p->done_seq, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    futex_wake_all(&p->generation);
    take_items(p);
    int spins = 0;
    while (atomic_load_explicit(&p->active, memory_order_acquire) > 0) {
        if (++spins < SPIN_ROUNDS)
            cpu_relax();
        else
            futex_wait(&p->done_seq, done);
    }
}

void xd_cpu_pool_destroy(struct xd_cpu_pool *p)
{
    if (!p)
        return;
    atomic_store_explicit(&p->stop, true, memory_order_release);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    futex_wake_all(&p->generation);
    for (int i = 0; i < p->n_workers; i++)
        pthread_join(p->threads[i], NULL);
    free(p->threads);
    free(p);
}
