/* Engine front: options, batch validation, and dispatch to the chosen backend. */
#include "engine/engine.h"

#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"

/* Backends other than the CPU one live in other libraries (gpu/) and register here. */
static const struct xd_backend_ops *registered[XD_DEVICE_CUDA + 1];

void xd_engine_register_backend(enum xd_device device, const struct xd_backend_ops *ops)
{
    registered[device] = ops;
}

bool xd_engine_has_backend(enum xd_device device)
{
    return device == XD_DEVICE_CPU || registered[device] != NULL;
}

struct xd_engine {
    struct xd_model *model;
    struct xd_engine_opts opts;
    const struct xd_backend_ops *backend;
    void *state;
};

int xd_engine_create(struct xd_model *model, const struct xd_engine_opts *opts,
                     struct xd_engine **ret_engine, struct xd_err *err)
{
    if (opts->n_kv_blocks < 1 || opts->block_size < 1 || opts->max_batch_tokens < 1 ||
        opts->n_threads < 0 || opts->expert_cache_slots < 0)
        return xd_err_set(err, XD_ERR_INVALID,
                          "engine options: n_kv_blocks, block_size and max_batch_tokens must be "
                          "positive, n_threads and expert_cache_slots non-negative");
    if (opts->device == XD_DEVICE_CUDA && model->config.fp8)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: an FP8 checkpoint (quantization_config.quant_method fp8) on "
                          "--device cuda: the CUDA backend has no FP8 or q8 kernels yet (none "
                          "has run on a GPU); use --device cpu, which serves its weights as q8",
                          model->dir);
    if (opts->device == XD_DEVICE_CUDA &&
        (xd_dtype_is_quant(opts->quantize) || xd_dtype_is_quant(model->quant)))
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "--quantize %s: the CUDA backend has no quantized kernels yet (none has "
                          "run on a GPU); use --device cpu with --quantize, or --device cuda "
                          "without it",
                          xd_dtype_name(xd_dtype_is_quant(opts->quantize) ? opts->quantize
                                                                          : model->quant));
    if (opts->kv_dtype != XD_DTYPE_F32 && opts->kv_dtype != XD_DTYPE_BF16 &&
        opts->kv_dtype != XD_DTYPE_F16)
        return xd_err_set(err, XD_ERR_INVALID, "engine options: kv_dtype %s is not f32, bf16 "
                          "or f16", xd_dtype_name(opts->kv_dtype));
    const char *kv_name = xd_engine_kv_dtype_name(opts->kv_dtype);
    if (opts->kv_dtype != XD_DTYPE_F32 && opts->device == XD_DEVICE_CUDA)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "--kv-dtype %s with --device cuda: the CUDA backend keeps its own KV "
                          "cache format; --kv-dtype applies to --device cpu",
                          kv_name);
    if (opts->kv_dtype != XD_DTYPE_F32 && model->config.mla)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: --kv-dtype %s: this model's attention is MLA (%s), whose latent "
                          "cache is f32 only; use --kv-dtype f32",
                          model->dir, kv_name, model->config.model_type);
    const struct xd_backend_ops *backend = NULL;
    switch (opts->device) {
    case XD_DEVICE_CPU:
        backend = &xd_cpu_backend;
        break;
    case XD_DEVICE_CUDA:
        backend = registered[XD_DEVICE_CUDA];
        if (!backend)
            return xd_err_set(err, XD_ERR_UNSUPPORTED,
                              "device cuda: this expertd was built without the CUDA backend "
                              "(meson -Dcuda=enabled needs nvcc and cuBLAS); use --device cpu");
        break;
    }
    const int n_experts = model->config.n_experts;
    if (opts->predict_width < 0 || opts->predict_width > n_experts)
        return xd_err_set(err, XD_ERR_INVALID,
                          "engine options: predict_width %d outside 0..%d (the model's experts)",
                          opts->predict_width, n_experts);
    if (xd_dtype_is_quant(opts->quantize))
        XD_TRY(xd_model_quantize_packed(model, opts->quantize, opts->quantize_experts_only,
                                        &opts->pack, err));
    struct xd_engine *e = calloc(1, sizeof *e);
    if (!e)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    e->model = model;
    e->opts = *opts;
    if (e->opts.predict_width == 0)
        e->opts.predict_width = model->config.top_k;
    e->backend = backend;
    int rc = backend->create(model, &e->opts, &e->state, err);
    if (rc < 0) {
        free(e);
        return rc;
    }
    *ret_engine = e;
    return XD_OK;
}

void xd_engine_expert_stats(struct xd_engine *e, struct xd_expert_stats *ret)
{
    *ret = (struct xd_expert_stats){.n_layers = e->model->config.n_layers};
    if (e->backend->expert_stats)
        e->backend->expert_stats(e->state, ret);
}

void xd_engine_destroy(struct xd_engine *e)
{
    if (!e)
        return;
    e->backend->destroy(e->state);
    free(e);
}

static int validate(const struct xd_engine *e, const struct xd_batch *b, struct xd_err *err)
{
    const int vocab = e->model->config.vocab_size, bs = e->opts.block_size;
    long n_tokens = 0;
    if (b->n_seqs < 0 || (b->n_seqs > 0 && !b->seqs))
        return xd_err_set(err, XD_ERR_INVALID, "batch: invalid sequence list");
    for (int s = 0; s < b->n_seqs; s++) {
        const struct xd_seq_chunk *c = &b->seqs[s];
        if (c->n_tokens < 1 || !c->tokens || c->pos < 0)
            return xd_err_set(err, XD_ERR_INVALID, "batch: sequence %d has no tokens", s);
        n_tokens += c->n_tokens;
        for (int t = 0; t < c->n_tokens; t++)
            if (c->tokens[t] < 0 || c->tokens[t] >= vocab)
                return xd_err_set(err, XD_ERR_INVALID,
                                  "batch: sequence %d token %d is id %d, outside the vocabulary "
                                  "(%d)",
                                  s, t, c->tokens[t], vocab);
        long need = ((long)c->pos + c->n_tokens + bs - 1) / bs;
        if (c->n_blocks < need || !c->block_table)
            return xd_err_set(err, XD_ERR_INVALID,
                              "batch: sequence %d reaches position %d but its block table covers "
                              "%ld positions",
                              s, c->pos + c->n_tokens - 1, (long)c->n_blocks * bs);
        for (long i = 0; i < need; i++)
            if (c->block_table[i] < 0 || c->block_table[i] >= e->opts.n_kv_blocks)
                return xd_err_set(err, XD_ERR_INVALID,
                                  "batch: sequence %d block table entry %ld is %d; the cache has "
                                  "%d blocks",
                                  s, i, c->block_table[i], e->opts.n_kv_blocks);
    }
    if (n_tokens > e->opts.max_batch_tokens)
        return xd_err_set(err, XD_ERR_CAPACITY, "batch: %ld tokens, more than max_batch_tokens %d",
                          n_tokens, e->opts.max_batch_tokens);
    return XD_OK;
}

int xd_engine_forward(struct xd_engine *e, const struct xd_batch *batch,
                      struct xd_forward_out *ret_out, struct xd_err *err)
{
    int rc = validate(e, batch, err);
    if (rc < 0)
        return rc;
    return e->backend->forward(e->state, batch, ret_out, err);
}

const struct xd_model_config *xd_engine_config(const struct xd_engine *e)
{
    return &e->model->config;
}

const struct xd_engine_opts *xd_engine_opts(const struct xd_engine *e)
{
    return &e->opts;
}

int xd_engine_kv_dtype_parse(const char *name, enum xd_dtype *ret, struct xd_err *err)
{
    if (!name || name[0] == '\0' || strcmp(name, "f32") == 0)
        *ret = XD_DTYPE_F32;
    else if (strcmp(name, "bf16") == 0)
        *ret = XD_DTYPE_BF16;
    else if (strcmp(name, "f16") == 0)
        *ret = XD_DTYPE_F16;
    else
        return xd_err_set(err, XD_ERR_CONFIG,
                          "option '--kv-dtype' (EXPERTD_KV_DTYPE, config key kv-dtype): '%s' is "
                          "not f32, bf16 or f16",
                          name);
    return XD_OK;
}

const char *xd_engine_kv_dtype_name(enum xd_dtype dt)
{
    return dt == XD_DTYPE_BF16 ? "bf16" : dt == XD_DTYPE_F16 ? "f16" : "f32";
}

enum xd_dtype xd_engine_kv_element(const struct xd_engine_opts *opts)
{
    return opts->device == XD_DEVICE_CUDA ? XD_DTYPE_BF16 : opts->kv_dtype;
}
