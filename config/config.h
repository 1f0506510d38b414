/* xd_config: the engine and server settings, from defaults, the environment and flags. */
#ifndef XD_CONFIG_H
#define XD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "config/options.h"

struct xd_config {
    const char *model;      /* checkpoint directory */
    const char *device;     /* "cpu" or "cuda" */
    int threads;            /* 0: all cores */
    int block_size;         /* tokens per KV block */
    int kv_blocks;          /* 0: enough for the request (generate) */
    int max_batch_tokens;   /* most tokens in one forward step */
    int expert_cache_mib;   /* cuda: GPU memory for experts, the rest offloaded; 0: all */
    int expert_cache_slots; /* the same in experts (give one of the two) */
    const char *expert_policy;   /* lru or predictive */
    bool expert_prefetch;   /* prefetch the next layer's predicted experts */
    int expert_prefetch_width; /* experts prefetched per token and layer; 0: top_k */
    const char *quantize;   /* none, q8 or q4: weights quantized at load (cpu) */
    bool quantize_experts_only; /* quantize the experts only, attention and dense MLPs not */
    const char *pack;       /* auto or off: the expert pack of --quantize */
    const char *fp8;        /* q8 or native: what an FP8 checkpoint is served as (cpu) */
    const char *pack_dir;   /* where packs live; NULL: beside the checkpoint, else the cache */
    const char *kv_dtype;   /* f32, bf16 or f16: the CPU KV cache's element */
};

/* The defaults. */
void xd_config_init(struct xd_config *cfg);

/* The option table for struct xd_config, to combine with a command's own. */
extern const struct xd_opt xd_config_opts[];
extern const size_t xd_config_n_opts;

/* Cross-field checks after parsing: a missing model, an unknown device, an eviction policy, a
 * quantization format (and --quantize with --device cuda, refused: no GPU kernels yet). */
int xd_config_validate(const struct xd_config *cfg, struct xd_err *err);

/* Fills the expert-offloading, quantization and KV element fields of *eo from cfg for model: the cache size in slots of
 * bf16 experts (what the GPU pool stores), the policy, prefetch and its width. recording: a
 * routing trace is being written, so the engine predicts experts, on the CPU at least
 * min(n_experts, 2 * top_k) wide (on the GPU the width is what it prefetches), so that `expertd plan` can try prefetch widths on the trace. A cache too
 * small for one expert or a width over the model's experts is XD_ERR_CONFIG naming the key. */
struct xd_engine_opts;
struct xd_model_config;
int xd_config_expert_opts(const struct xd_config *cfg, const struct xd_model_config *mc,
                          bool recording, struct xd_engine_opts *eo, struct xd_err *err);

/* The expert pack's settings (--pack, --pack-dir) as pack options (log left NULL: stderr);
 * xd_config_expert_opts fills eo->pack with them too. */
struct xd_pack_opts;
void xd_config_pack_opts(const struct xd_config *cfg, struct xd_pack_opts *ret);

#endif
