/* GPU expert pool: slots of [gate | up | down] bf16 weights in one device allocation; with
 * offloading, a pinned host copy of every expert and a copy stream that fills slots on demand
 * or ahead of need. */
#include "gpu/expert_pool.h"

#include <stdio.h>
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/cuda_check.h"
#include "gpu/expert_pool_test.h"

extern "C" {
#include "engine/experts/expert_cache.h"
#include "engine/model/dtype.h"
}

struct xd_expert_pool {
    int n_layers;
    int n_experts;
    int hidden, ffn;
    size_t slot_elems;   /* 3 * ffn * hidden */
    bf16 *slots;         /* (n_slots, slot_elems) on the device */
    size_t n_slots;
    cudaStream_t compute;

    /* all resident */
    int *slot_of;        /* (n_layers, n_experts) slot index, -1 for dense layers */

    /* offloading */
    bool offloading;
    struct xd_expert_cache *cache;
    uint16_t *host;      /* pinned (n_layers, n_experts, slot_elems) bf16; dense layers unused */
    int *host_index;     /* (n_layers, n_experts) index into host, -1 for dense layers */
    cudaStream_t copy;
    unsigned stress_copy_us; /* EXPERTD_OFFLOAD_STRESS_COPY_US: delay before every copy */
    unsigned stress_use_us;  /* EXPERTD_OFFLOAD_STRESS_USE_US: delay before every first use */
    enum xd_expert_pool_skip skip; /* test-only (expert_pool_test.h); NONE outside tests */
    cudaEvent_t *ready;  /* (n_slots,) recorded on copy after the slot's latest copy */
    cudaEvent_t *freed;  /* (n_slots,) recorded on compute after the slot's latest use */
    uint64_t bytes_h2d;
    uint64_t *layer_hits, *layer_misses; /* (n_layers,) filled by xd_expert_pool_stats */

    /* stall timing: timing events recorded on compute right before and after a wait for a
     * copy that may be in flight; summed at the end of each step */
    bool *pending;          /* (n_slots,) a copy was enqueued that compute has not waited for */
    cudaEvent_t *stall_ev;  /* (n_stall_ev,) pair i is [2i] (before the wait), [2i + 1] (after) */
    size_t n_stall_ev;      /* events created */
    size_t n_stall;         /* pairs recorded this step */
    double stall_seconds;
};

/* Set only by xd_expert_pool_test_skip_wait, which only tests/ call; copied into each pool at
 * creation. A function rather than an environment variable so that nothing an operator can set
 * (environment, flag, config file) reaches it: `expertd serve` never calls it, so its pools
 * always wait, while the test still runs this very library code. */
static enum xd_expert_pool_skip test_skip = XD_POOL_SKIP_NONE;

void xd_expert_pool_test_skip_wait(enum xd_expert_pool_skip which)
{
    test_skip = which;
}

/* Microseconds from environment variable name; fallback when it is unset. */
static unsigned env_us(const char *name, unsigned fallback)
{
    const char *v = getenv(name);
    return v ? (unsigned)strtoul(v, NULL, 10) : fallback;
}

void xd_matrix_to_bf16(const struct xd_matrix *m, uint16_t *dst)
{
    const size_t n = (size_t)m->rows * (size_t)m->cols;
    if (m->dtype == XD_DTYPE_BF16) {
        memcpy(dst, m->data, n * 2);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        float f = m->dtype == XD_DTYPE_F32 ? ((const float *)m->data)[i]
                                           : xd_f16_to_f32(((const uint16_t *)m->data)[i]);
        dst[i] = xd_f32_to_bf16(f);
    }
}

/* Converts expert (l, x) of the model into dst (slot_elems bf16, host memory). */
static int expert_to_bf16(const struct xd_model *m, const struct xd_expert_pool *p, int l, int x,
                          uint16_t *dst, struct xd_err *err)
{
    struct xd_expert_weights w;
    int rc = xd_expert_store_acquire(&m->experts, l, x, &w);
    if (rc < 0)
        return xd_err_set(err, rc, "expert store: layer %d expert %d unavailable", l, x);
    const size_t fh = (size_t)p->ffn * p->hidden;
    xd_matrix_to_bf16(&w.gate, dst);
    xd_matrix_to_bf16(&w.up, dst + fh);
    xd_matrix_to_bf16(&w.down, dst + 2 * fh);
    xd_expert_store_release(&m->experts, l, x);
    return XD_OK;
}

/* What helps when the pool's device memory runs out. */
static const char HINT_RESIDENT[] =
    "offload experts to host memory with --expert-cache-mib, use a GPU with more memory or "
    "--device cpu";
static const char HINT_OFFLOADING[] =
    "lower --expert-cache-mib, use a GPU with more memory or --device cpu";

static int alloc_slots(struct xd_expert_pool *p, const struct xd_model_config *c,
                       struct xd_err *err)
{
    const size_t bytes = p->n_slots * p->slot_elems * sizeof(bf16);
    cudaError_t e = cudaMalloc((void **)&p->slots, bytes ? bytes : 1);
    if (e == cudaSuccess)
        return XD_OK;
    p->slots = NULL;
    char what[160];
    snprintf(what, sizeof what, "the expert pool (%zu experts of %d, %d MoE layers x %d)",
             p->n_slots, c->n_moe_layers * c->n_experts, c->n_moe_layers, c->n_experts);
    if (e == cudaErrorMemoryAllocation)
        return xd_cuda_oom(err, what, bytes, p->offloading ? HINT_OFFLOADING : HINT_RESIDENT);
    (void)cudaGetLastError();
    return xd_err_set(err, XD_ERR_IO, "allocating %s on the GPU: %s", what,
                      cudaGetErrorString(e));
}

/* All resident: every expert uploaded once through a pinned staging slot. */
static int create_resident(struct xd_expert_pool *p, const struct xd_model *m,
                           struct xd_err *err)
{
    const struct xd_model_config *c = &m->config;
    p->n_slots = (size_t)c->n_moe_layers * c->n_experts;
    XD_TRY(alloc_slots(p, c, err));
    uint16_t *staging = NULL;
    cudaError_t e = cudaMallocHost((void **)&staging, p->slot_elems * sizeof(uint16_t));
    if (e != cudaSuccess)
        return xd_err_set(err, XD_ERR_NOMEM, "pinned staging buffer: %s", cudaGetErrorString(e));
    int rc = XD_OK;
    size_t slot = 0;
    for (int l = 0; l < c->n_layers && rc == XD_OK; l++) {
        for (int x = 0; c->is_moe_layer[l] && x < c->n_experts; x++) {
            rc = expert_to_bf16(m, p, l, x, staging, err);
            if (rc < 0)
                break;
            bf16 *dst = p->slots + slot * p->slot_elems;
            e = cudaMemcpyAsync(dst, staging, p->slot_elems * sizeof(uint16_t),
                                cudaMemcpyHostToDevice, p->compute);
            if (e == cudaSuccess)
                e = cudaStreamSynchronize(p->compute);
            if (e != cudaSuccess) {
                rc = xd_err_set(err, XD_ERR_IO, "uploading layer %d expert %d: %s", l, x,
                                cudaGetErrorString(e));
                break;
            }
            p->slot_of[(size_t)l * c->n_experts + x] = (int)slot++;
        }
    }
    cudaFreeHost(staging);
    return rc;
}

/* Offloading: the pinned host copy of every expert, empty device slots, the copy stream and
 * one pair of events per slot. */
static int create_offloading(struct xd_expert_pool *p, const struct xd_model *m,
                             const struct xd_expert_pool_opts *o, struct xd_err *err)
{
    const struct xd_model_config *c = &m->config;
    p->offloading = true;
    p->n_slots = (size_t)o->n_slots;
    XD_TRY(xd_expert_cache_create(c->n_layers, c->n_experts, o->n_slots, o->policy, &p->cache,
                                  err));
    const size_t n_experts = (size_t)c->n_moe_layers * c->n_experts;
    const size_t host_bytes = n_experts * p->slot_elems * sizeof(uint16_t);
    cudaError_t e = cudaHostAlloc((void **)&p->host, host_bytes, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        cudaGetLastError();
        p->host = NULL;
        return xd_err_set(err, XD_ERR_NOMEM,
                          "pinned host memory for %zu offloaded experts (%.2f GiB) could not be "
                          "allocated (%s); raise the locked-memory limit (LimitMEMLOCK=infinity "
                          "in the systemd unit, ulimit -l) or free host memory",
                          n_experts, host_bytes / 1073741824.0, cudaGetErrorString(e));
    }
    p->host_index = (int *)malloc(sizeof(int) * (size_t)c->n_layers * c->n_experts);
    p->ready = (cudaEvent_t *)calloc(p->n_slots, sizeof(cudaEvent_t));
    p->freed = (cudaEvent_t *)calloc(p->n_slots, sizeof(cudaEvent_t));
    p->layer_hits = (uint64_t *)calloc((size_t)c->n_layers, sizeof(uint64_t));
    p->layer_misses = (uint64_t *)calloc((size_t)c->n_layers, sizeof(uint64_t));
    p->pending = (bool *)calloc(p->n_slots, sizeof(bool));
    if (!p->host_index || !p->ready || !p->freed || !p->layer_hits || !p->layer_misses ||
        !p->pending)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    size_t next = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int x = 0; x < c->n_experts; x++) {
            int *hi = &p->host_index[(size_t)l * c->n_experts + x];
            *hi = -1;
            if (!c->is_moe_layer[l])
                continue;
            XD_TRY(expert_to_bf16(m, p, l, x, p->host + next * p->slot_elems, err));
            *hi = (int)next++;
        }
    XD_TRY(alloc_slots(p, c, err));
    CUDA_TRY_MEM(cudaStreamCreateWithFlags(&p->copy, cudaStreamNonBlocking),
                 "the expert copy stream", HINT_OFFLOADING);
    /* Stress knobs (tests widen race windows with them; they only slow things down): a late
     * copy exposes a reader that does not wait for `ready`, a slow reader exposes a copy that
     * does not wait for `freed`. EXPERTD_OFFLOAD_STRESS_US sets both. */
    const unsigned both = env_us("EXPERTD_OFFLOAD_STRESS_US", 0);
    p->stress_copy_us = env_us("EXPERTD_OFFLOAD_STRESS_COPY_US", both);
    p->stress_use_us = env_us("EXPERTD_OFFLOAD_STRESS_USE_US", both);
    p->skip = test_skip;
    if (p->skip != XD_POOL_SKIP_NONE) {
        /* done before any copy is enqueued on the copy stream */
        CUDA_TRY(cudaMemsetAsync(p->slots, 0, p->n_slots * p->slot_elems * sizeof(bf16),
                                 p->compute));
        CUDA_TRY(cudaStreamSynchronize(p->compute));
    }
    for (size_t i = 0; i < p->n_slots; i++) {
        CUDA_TRY_MEM(cudaEventCreateWithFlags(&p->ready[i], cudaEventDisableTiming),
                     "the expert slots' events", HINT_OFFLOADING);
        CUDA_TRY_MEM(cudaEventCreateWithFlags(&p->freed[i], cudaEventDisableTiming),
                     "the expert slots' events", HINT_OFFLOADING);
    }
    return XD_OK;
}

int xd_expert_pool_create(const struct xd_model *m, cudaStream_t compute,
                          const struct xd_expert_pool_opts *opts, struct xd_expert_pool **ret,
                          struct xd_err *err)
{
    const struct xd_model_config *c = &m->config;
    struct xd_expert_pool *p = (struct xd_expert_pool *)calloc(1, sizeof *p);
    if (!p)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    p->n_layers = c->n_layers;
    p->n_experts = c->n_experts;
    p->hidden = c->hidden_size;
    p->ffn = c->expert_ffn;
    p->compute = compute;
    p->slot_elems = (size_t)3 * c->expert_ffn * c->hidden_size;
    p->slot_of = (int *)malloc(sizeof(int) * (size_t)c->n_layers * c->n_experts);
    if (!p->slot_of) {
        free(p);
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < (size_t)c->n_layers * c->n_experts; i++)
        p->slot_of[i] = -1;
    const int all = c->n_moe_layers * c->n_experts;
    int rc = opts && opts->n_slots > 0 && opts->n_slots < all ? create_offloading(p, m, opts, err)
                                                              : create_resident(p, m, err);
    if (rc < 0) {
        xd_expert_pool_destroy(p);
        return rc;
    }
    *ret = p;
    return XD_OK;
}

void xd_expert_pool_destroy(struct xd_expert_pool *p)
{
    if (!p)
        return;
    if (p->copy) {
        cudaStreamSynchronize(p->copy);
        cudaStreamDestroy(p->copy);
    }
    for (size_t i = 0; p->ready && i < p->n_slots; i++)
        if (p->ready[i])
            cudaEventDestroy(p->ready[i]);
    for (size_t i = 0; p->freed && i < p->n_slots; i++)
        if (p->freed[i])
            cudaEventDestroy(p->freed[i]);
    for (size_t i = 0; i < p->n_stall_ev; i++)
        cudaEventDestroy(p->stall_ev[i]);
    free(p->stall_ev);
    free(p->pending);
    free(p->ready);
    free(p->freed);
    if (p->host)
        cudaFreeHost(p->host);
    free(p->host_index);
    free(p->layer_hits);
    free(p->layer_misses);
    xd_expert_cache_destroy(p->cache);
    cudaFree(p->slots);
    free(p->slot_of);
    free(p);
}

bool xd_expert_pool_offloading(const struct xd_expert_pool *p)
{
    return p->offloading;
}

static void slot_pointers(const struct xd_expert_pool *p, int slot, struct xd_gpu_expert *ret)
{
    const size_t fh = (size_t)p->ffn * p->hidden;
    const bf16 *base = p->slots + (size_t)slot * p->slot_elems;
    ret->gate = base;
    ret->up = base + fh;
    ret->down = base + 2 * fh;
}

/* Gets (layer, expert) a slot through the cache and, on a miss, enqueues its copy: the copy
 * stream first waits until the compute stream is done with the slot's previous expert. */
static int fetch(struct xd_expert_pool *p, int layer, int expert, bool prefetch,
                 struct xd_cache_access *ret, struct xd_err *err)
{
    int hi = p->host_index[(size_t)layer * p->n_experts + expert];
    if (hi < 0)
        return xd_err_set(err, XD_ERR_INVALID, "expert pool: layer %d has no experts", layer);
    XD_TRY(xd_expert_cache_get(p->cache, layer, expert, prefetch, ret, err));
    if (ret->hit)
        return XD_OK;
    const int slot = ret->slot;
    const size_t bytes = p->slot_elems * sizeof(uint16_t);
    cudaError_t e = p->skip == XD_POOL_SKIP_FREED
                        ? cudaSuccess /* the test's negative control only */
                        : cudaStreamWaitEvent(p->copy, p->freed[slot], 0);
    if (e == cudaSuccess && p->stress_copy_us) {
        /* a late copy: work that reads the slot without waiting for it reads old bytes */
        xd_k_spin(p->stress_copy_us, p->copy);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(p->slots + (size_t)slot * p->slot_elems,
                            p->host + (size_t)hi * p->slot_elems, bytes, cudaMemcpyHostToDevice,
                            p->copy);
    if (e == cudaSuccess)
        e = cudaEventRecord(p->ready[slot], p->copy);
    if (e != cudaSuccess) {
        /* The cache already maps the expert to the slot: empty it, so that the next access
         * misses instead of reading what the slot held; nothing half-queued stays behind. */
        cudaStreamSynchronize(p->copy);
        xd_expert_cache_unpin(p->cache, slot);
        xd_expert_cache_drop(p->cache, slot);
        p->pending[slot] = false;
        return xd_err_set(err, XD_ERR_IO, "copying layer %d expert %d to the GPU: %s", layer,
                          expert, cudaGetErrorString(e));
    }
    p->bytes_h2d += bytes;
    p->pending[slot] = true;
    return XD_OK;
}

/* Makes room for one more stall pair: events are created once and reused every step. */
static int grow_stall_events(struct xd_expert_pool *p, struct xd_err *err)
{
    if (2 * p->n_stall + 2 <= p->n_stall_ev)
        return XD_OK;
    const size_t cap = p->n_stall_ev ? 2 * p->n_stall_ev : 64;
    cudaEvent_t *ev = (cudaEvent_t *)realloc(p->stall_ev, cap * sizeof *ev);
    if (!ev)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    p->stall_ev = ev;
    for (; p->n_stall_ev < cap; p->n_stall_ev++)
        CUDA_TRY(cudaEventCreate(&p->stall_ev[p->n_stall_ev]));
    return XD_OK;
}

/* Makes compute wait for slot's latest copy. When that copy may still be in flight, the wait
 * sits between two timing events with nothing else between them on compute, so their elapsed
 * time is exactly how long compute was blocked. */
static int wait_ready(struct xd_expert_pool *p, int slot, int layer, int expert,
                      struct xd_err *err)
{
    if (p->skip == XD_POOL_SKIP_READY) { /* the test's negative control only */
        p->pending[slot] = false;
        return XD_OK;
    }
    cudaError_t e;
    if (!p->pending[slot]) {
        e = cudaStreamWaitEvent(p->compute, p->ready[slot], 0);
    } else {
        XD_TRY(grow_stall_events(p, err));
        const cudaEvent_t *pair = p->stall_ev + 2 * p->n_stall;
        e = cudaEventRecord(pair[0], p->compute);
        if (e == cudaSuccess)
            e = cudaStreamWaitEvent(p->compute, p->ready[slot], 0);
        if (e == cudaSuccess)
            e = cudaEventRecord(pair[1], p->compute);
        if (e == cudaSuccess) {
            p->n_stall++;
            p->pending[slot] = false;
        }
    }
    if (e != cudaSuccess)
        return xd_err_set(err, XD_ERR_IO, "expert pool: waiting for layer %d expert %d: %s",
                          layer, expert, cudaGetErrorString(e));
    return XD_OK;
}

int xd_expert_pool_pin(struct xd_expert_pool *p, int layer, int expert,
                       struct xd_gpu_expert *ret, struct xd_err *err)
{
    if (layer < 0 || layer >= p->n_layers || expert < 0 || expert >= p->n_experts)
        return xd_err_set(err, XD_ERR_INVALID, "expert pool: (layer %d, expert %d) out of range",
                          layer, expert);
    if (!p->offloading) {
        int slot = p->slot_of[(size_t)layer * p->n_experts + expert];
        if (slot < 0)
            return xd_err_set(err, XD_ERR_INVALID, "expert pool: layer %d has no experts", layer);
        slot_pointers(p, slot, ret);
        return XD_OK;
    }
    struct xd_cache_access a;
    XD_TRY(fetch(p, layer, expert, false, &a, err));
    slot_pointers(p, a.slot, ret);
    return XD_OK;
}

int xd_expert_pool_wait(struct xd_expert_pool *p, int layer, int expert, struct xd_err *err)
{
    if (!p->offloading)
        return XD_OK;
    int slot = xd_expert_cache_find(p->cache, layer, expert);
    assert(slot >= 0); /* pinned, so present */
    /* Hit or miss, the slot's latest copy (maybe a prefetch still in flight) comes first. */
    XD_TRY(wait_ready(p, slot, layer, expert, err));
    if (p->stress_use_us) {
        /* a slow reader: a copy that overwrote the slot without waiting for it would show */
        xd_k_spin(p->stress_use_us, p->compute);
        CUDA_TRY(cudaGetLastError());
    }
    return XD_OK;
}

int xd_expert_pool_acquire(struct xd_expert_pool *p, int layer, int expert,
                           struct xd_gpu_expert *ret, struct xd_err *err)
{
    XD_TRY(xd_expert_pool_pin(p, layer, expert, ret, err));
    int rc = xd_expert_pool_wait(p, layer, expert, err);
    if (rc < 0)
        xd_expert_cache_unpin(p->cache, xd_expert_cache_find(p->cache, layer, expert));
    return rc;
}

void xd_expert_pool_release(struct xd_expert_pool *p, int layer, int expert)
{
    if (!p->offloading)
        return;
    int slot = xd_expert_cache_find(p->cache, layer, expert);
    assert(slot >= 0); /* a release without its acquire */
    if (slot < 0)
        return;
    /* A failed record leaves the event at an earlier use; the copy stream would then overwrite
     * the slot too early, so make the copy stream wait for everything on compute instead. */
    if (cudaEventRecord(p->freed[slot], p->compute) != cudaSuccess)
        cudaStreamSynchronize(p->compute);
    xd_expert_cache_unpin(p->cache, slot);
}

int xd_expert_pool_prefetch(struct xd_expert_pool *p, int layer, int expert, struct xd_err *err)
{
    if (!p->offloading || layer < 0 || layer >= p->n_layers || expert < 0 ||
        expert >= p->n_experts || p->host_index[(size_t)layer * p->n_experts + expert] < 0)
        return XD_OK;
    xd_expert_cache_predict(p->cache, layer, expert);
    struct xd_cache_access a;
    int rc = fetch(p, layer, expert, true, &a, err);
    if (rc == XD_ERR_CAPACITY)
        return XD_OK; /* every slot busy with this step's experts: no room to guess into */
    if (rc < 0)
        return rc;
    xd_expert_cache_unpin(p->cache, a.slot);
    return XD_OK;
}

int xd_expert_pool_end_step(struct xd_expert_pool *p, struct xd_err *err)
{
    double sum = 0.0;
    cudaError_t e = cudaSuccess;
    for (size_t i = 0; i < p->n_stall && e == cudaSuccess; i++) {
        float ms = 0.0f;
        e = cudaEventElapsedTime(&ms, p->stall_ev[2 * i], p->stall_ev[2 * i + 1]);
        sum += ms / 1000.0;
    }
    p->n_stall = 0;
    if (e != cudaSuccess)
        return xd_err_set(err, XD_ERR_IO, "expert pool: timing waits for expert copies: %s",
                          cudaGetErrorString(e));
    p->stall_seconds += sum;
    return XD_OK;
}

void xd_expert_pool_clear_predictions(struct xd_expert_pool *p, int layer)
{
    if (p->offloading && layer >= 0 && layer < p->n_layers)
        xd_expert_cache_clear_predictions(p->cache, layer);
}

void xd_expert_pool_stats(struct xd_expert_pool *p, struct xd_expert_stats *ret)
{
    ret->offloading = p->offloading;
    ret->n_slots = (int)p->n_slots;
    ret->bytes_h2d = p->bytes_h2d;
    ret->stall_seconds = p->stall_seconds;
    ret->n_layers = p->n_layers;
    if (p->offloading) {
        xd_expert_cache_get_stats(p->cache, &ret->cache, p->layer_hits, p->layer_misses);
        ret->layer_hits = p->layer_hits;
        ret->layer_misses = p->layer_misses;
    }
}

size_t xd_expert_pool_bytes(const struct xd_expert_pool *p)
{
    return p->n_slots * p->slot_elems * sizeof(bf16);
}
