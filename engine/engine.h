/* The engine: forward passes over a batch of sequence chunks on a backend, with a paged KV cache. */
#ifndef XD_ENGINE_H
#define XD_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/base/status.h"
#include "engine/experts/expert_cache.h"
#include "engine/model/model.h"
#include "engine/model/step.h"

enum xd_device {
    XD_DEVICE_CPU,
    XD_DEVICE_CUDA,
};

struct xd_engine_opts {
    enum xd_device device;
    int n_kv_blocks;        /* KV cache capacity in blocks */
    int block_size;         /* tokens per KV block (default 16) */
    int max_batch_tokens;   /* most tokens in one forward step */
    int n_threads;          /* 0: all cores */
    bool predict_experts;   /* fill xd_routing.predicted (CPU backend; costs one router matmul
                               per MoE layer) */
    int predict_width;      /* experts predicted per token and layer, recorded and prefetched:
                               0 means top_k; at most n_experts */
    /* Expert offloading (CUDA): experts live in pinned host memory and this many are cached on
     * the GPU; 0 (or at least every expert) keeps all of them resident. */
    int expert_cache_slots;
    enum xd_evict_policy expert_evict_policy;
    bool expert_prefetch;   /* copy the next MoE layer's predicted experts ahead of need */
    /* Weights served quantized (CPU only): XD_DTYPE_Q8_0 or XD_DTYPE_Q4_1 quantizes the model at
     * create (xd_model_quantize: experts, and attention and dense MLPs unless
     * quantize_experts_only); any other value (the zero default) serves the checkpoint's dtype. */
    enum xd_dtype quantize;
    bool quantize_experts_only;
    /* With quantize: the expert pack (xd_model_quantize_packed); off when pack.enabled is false
     * (the zero default). Borrowed strings. */
    struct xd_pack_opts pack;
    /* The CPU KV cache's element: XD_DTYPE_F32 (the zero default, the precision the goldens
     * pin), or XD_DTYPE_BF16 / XD_DTYPE_F16: half the bytes a decode step reads per position
     * and twice the positions per MiB, each key and value rounded to nearest even when stored
     * (attention then computes on the rounded values, in the same order). CPU only; MLA models
     * keep their f32 latent cache. */
    enum xd_dtype kv_dtype;
};

/* "f32", "bf16" or "f16" (NULL or "" is f32) as a KV cache element type; anything else is
 * XD_ERR_CONFIG naming the option. */
int xd_engine_kv_dtype_parse(const char *name, enum xd_dtype *ret, struct xd_err *err);
/* The option's spelling of a KV cache element type ("f32" for anything not bf16 or f16). */
const char *xd_engine_kv_dtype_name(enum xd_dtype dt);

/* What the chosen backend stores each KV cache element as: opts->kv_dtype on the CPU (MLA's
 * latent cache is f32, which xd_engine_create requires there), bf16 on the GPU. */
enum xd_dtype xd_engine_kv_element(const struct xd_engine_opts *opts);

/* The expert cache's counters, for /metrics and benchmarks. */
struct xd_expert_stats {
    bool offloading;        /* false: every expert resident, the rest is zero */
    int n_slots;
    struct xd_expert_cache_stats cache;
    uint64_t bytes_h2d;     /* expert bytes copied host to device */
    double stall_seconds;   /* seconds the GPU's compute stream waited for expert copies,
                               summed over steps */
    int n_layers;           /* model layers (dense ones count nothing) */
    const uint64_t *layer_hits;   /* (n_layers,) valid until the next forward */
    const uint64_t *layer_misses; /* (n_layers,) */
};

struct xd_engine;

/* Whether a backend is registered for device (the CPU one always is): the CUDA module loader
 * checks that the module's registration reached this engine, not a copy of it. */
bool xd_engine_has_backend(enum xd_device device);

/* Creates an engine over model (borrowed; it must outlive the engine) and
 * allocates its KV cache and step buffers. With opts->quantize it first quantizes the model in
 * place (xd_model_quantize); a quantized model on device cuda is XD_ERR_UNSUPPORTED (the CUDA
 * backend has no q8/q4 kernels yet). On failure returns a negative
 * status with detail in err and leaves *ret_engine untouched. */
int xd_engine_create(struct xd_model *model, const struct xd_engine_opts *opts,
                     struct xd_engine **ret_engine, struct xd_err *err);
void xd_engine_destroy(struct xd_engine *engine);

/* Runs one step. Validates the batch (token ids, block ids, table coverage,
 * size) before touching any state; an invalid batch returns XD_ERR_INVALID or
 * XD_ERR_CAPACITY with detail in err and changes nothing. */
int xd_engine_forward(struct xd_engine *engine, const struct xd_batch *batch,
                      struct xd_forward_out *ret_out, struct xd_err *err);

/* Fills *ret with the expert cache's counters (offloading false on backends without one). */
void xd_engine_expert_stats(struct xd_engine *engine, struct xd_expert_stats *ret);

const struct xd_model_config *xd_engine_config(const struct xd_engine *engine);
const struct xd_engine_opts *xd_engine_opts(const struct xd_engine *engine);

#endif
