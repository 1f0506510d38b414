/* The expert store: the only way model code reaches expert weights, (layer, expert) -> weights. */
#ifndef XD_EXPERT_STORE_H
#define XD_EXPERT_STORE_H

#include <stdint.h>

#include "engine/model/dtype.h"

/* A row-major 2-D weight view: rows x cols elements of dtype, row i at
 * data + i * cols * size(dtype). Borrowed. */
struct xd_matrix {
    enum xd_dtype dtype;
    int64_t rows;
    int64_t cols;
    const void *data;
    /* XD_DTYPE_F8_E4M3 only, until the loader converts it (engine/model/fp8.h): the
     * weight_scale_inv tensor, (ceil(rows / block_rows), ceil(cols / block_cols)) of
     * scale_dtype (F32 or BF16); w[r][c] = fp8(data[r][c]) * scale[r / br][c / bc]. */
    const void *scale;
    enum xd_dtype scale_dtype;
};

/* One expert's SwiGLU MLP: down(silu(gate x) * up x), or gpt_oss's clamped form with biases
 * (engine/cpu/gpt_oss.h). */
struct xd_expert_weights {
    struct xd_matrix gate; /* (ffn, hidden) */
    struct xd_matrix up;   /* (ffn, hidden) */
    struct xd_matrix down; /* (hidden, ffn) */
    struct xd_matrix gate_bias; /* (1, ffn) gpt_oss, else data == NULL */
    struct xd_matrix up_bias;   /* (1, ffn) gpt_oss, else data == NULL */
    struct xd_matrix down_bias; /* (1, hidden) gpt_oss, else data == NULL */
};

struct xd_expert_store_ops {
    /* Makes expert (layer, expert) usable and fills *ret with its weights,
     * valid until the matching release. layer is the model's layer index.
     * Returns XD_OK or a negative status (then *ret is untouched). */
    int (*acquire)(void *ctx, int layer, int expert, struct xd_expert_weights *ret);
    /* Ends the use begun by acquire. */
    void (*release)(void *ctx, int layer, int expert);
    /* Frees ctx. */
    void (*destroy)(void *ctx);
};

struct xd_expert_store {
    const struct xd_expert_store_ops *ops;
    void *ctx;
};

static inline int xd_expert_store_acquire(const struct xd_expert_store *s, int layer, int expert,
                                          struct xd_expert_weights *ret)
{
    return s->ops->acquire(s->ctx, layer, expert, ret);
}

static inline void xd_expert_store_release(const struct xd_expert_store *s, int layer, int expert)
{
    if (s->ops->release)
        s->ops->release(s->ctx, layer, expert);
}

#endif
