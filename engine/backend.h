/* The interface every backend (cpu, cuda) implements; engine.c validates and dispatches. */
#ifndef XD_BACKEND_H
#define XD_BACKEND_H

#include "engine/engine.h"

struct xd_backend_ops {
    const char *name;
    /* Allocates the backend state (KV cache, buffers) for model and opts. */
    int (*create)(struct xd_model *model, const struct xd_engine_opts *opts, void **ret_state,
                  struct xd_err *err);
    /* One forward step over an already validated batch. */
    int (*forward)(void *state, const struct xd_batch *batch, struct xd_forward_out *ret_out,
                   struct xd_err *err);
    void (*destroy)(void *state);
    /* Optional: the expert cache's counters. */
    void (*expert_stats)(void *state, struct xd_expert_stats *ret);
};

extern const struct xd_backend_ops xd_cpu_backend;

/* Makes ops the backend of device for engines created afterwards; called once
 * at start-up by the library that implements it (gpu/: xd_gpu_register). */
void xd_engine_register_backend(enum xd_device device, const struct xd_backend_ops *ops);

#endif
