/* The CUDA backend: a forward step on the GPU with cuBLAS for every projection, bf16 weights
 * and GEMM inputs, f32 accumulation and residual stream, and a bf16 paged KV cache. */
#include <new>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <vector>

#include "gpu/cuda_check.h"
#include "gpu/expert_pool.h"
#include "gpu/gpu.h"
#include "gpu/kernels.h"

extern "C" {
#include "engine/backend.h"
#include "engine/experts/expert_predictor.h"
#include "engine/model/dtype.h"
}

/* ---- device weights ---- */

struct dev_layer {
    const bf16 *wq, *wk, *wv, *wo;        /* (rows, cols) as in the checkpoint */
    const float *bq, *bk, *bv, *bo;       /* NULL when absent */
    const float *attn_norm, *mlp_norm, *q_norm, *k_norm;
    const bf16 *mlp_gate, *mlp_up, *mlp_down;  /* dense layers */
    const float *router;                  /* (n_experts, hidden), f32: expert choice is sensitive */
    const bf16 *sh_gate, *sh_up, *sh_down, *sh_expert_gate; /* qwen2_moe shared expert */
};

struct cuda_state {
    const struct xd_model *m;
    struct xd_engine_opts opts;
    int q_dim, kv_dim, ffn_max, K, E, H;
    cudaStream_t stream;
    cublasHandle_t blas;
    std::vector<void *> allocs;           /* every device allocation, freed at destroy */
    struct xd_expert_pool *pool;
    const bf16 *embed, *lm_head;
    const float *final_norm;
    const float *rope_inv_freq;           /* (rot_dim / 2,) for a rope that is not plain, else
                                           * NULL (xd_k_rope computes the plain one) */
    std::vector<dev_layer> layers;
    bf16 *k_cache, *v_cache;              /* (n_layers, n_slots, kv_dim) */
    size_t layer_slots;                   /* n_kv_blocks * block_size */

    /* step buffers on the device, T = max_batch_tokens, TK = T * top_k */
    int32_t *d_ints;                      /* see step_body */
    int32_t *h_ints;                      /* pinned host copy */
    size_t d_ints_cap;
    void *blas_workspace;                 /* set explicitly so cuBLAS calls can be captured */
    int use_graphs;                       /* EXPERTD_CUDA_GRAPHS=0 turns decode graphs off */
    std::vector<std::pair<int, cudaGraphExec_t>> graphs; /* decode steps by token count */
    float *h, *q, *k, *v, *out, *router, *weights, *g, *u, *eo, *logits, *xs, *xnf;
    bf16 *xn, *attn, *xg, *a;
    int32_t *experts, *row_src, *slot_row;
    /* host mirrors */
    std::vector<int32_t> h_experts, h_row_src, h_slot_row;
    std::vector<float> h_weights;
    float *h_logits;                      /* pinned (T, vocab) */
    std::vector<int32_t> route_experts;   /* (T, n_moe_layers, K) */
    std::vector<float> route_weights;

    /* small steps (T * K <= SMALL_STEP_SLOTS) route, plan and run experts on the device */
    int small_step_slots;
    bool step_small;                      /* this step takes the small-step MoE path */
    const bf16 **d_expert_ptrs;           /* (n_layers, E) device pointers of each expert slot */
    int32_t *d_start;                     /* (E + 1) */
    int32_t *d_route_experts;             /* (T, n_moe_layers, K) */
    float *d_route_weights;

    /* expert offloading (the pool caches some experts): prefetch from a lookahead router, its
     * W = opts.predict_width best experts per token, ordered by engine/experts/expert_predictor */
    bool offloading;
    int expert_slots;                     /* the pool's slots */
    bool prefetching;                     /* offloading with opts.expert_prefetch */
    int W;
    std::vector<int> next_moe;            /* (n_layers,) the next MoE layer after l, or -1 */
    float *pred_x, *pred_router, *pred_weights; /* (T, H), (T, E), (T, W) */
    int32_t *pred_experts;                /* (T, W) */
    std::vector<int32_t> h_pred;          /* (T, W) */
    std::vector<int32_t> route_pred;      /* (T, n_moe_layers, W) for xd_routing.predicted */
    std::vector<int32_t> pred_list;       /* (E,) the experts to prefetch, most likely first */
    struct xd_expert_predictor *predictor;
};

/* Decode steps with at most this many (token, expert) pairs run the MoE without a host round
 * trip, using the memory-bound expert kernels (they re-read each expert's weights per row, so
 * they suit a few rows per expert); prefill chunks and larger steps size cuBLAS GEMMs per
 * expert on the host. Measured on OLMoE-1B-7B shapes, H100 (bench/results/engine-gpu-h100.md):
 * batch-64 decode 27.4 ms a step this way against 37.4 ms with cuBLAS, and a 128-token
 * prefill 3808 tokens/s with cuBLAS against 2518 this way.
 * EXPERTD_CUDA_SMALL_STEP_SLOTS overrides it (the GPU tests run both paths with 0 and default). */
#define SMALL_STEP_SLOTS s->small_step_slots

/* What helps when device memory runs out, by what is being allocated. Load order: weights,
 * experts, KV cache, step buffers; what comes earlier is already held. */
static const char HINT_FIRST[] =
    "it comes before the experts and the KV cache: free GPU memory held by other processes, "
    "use a GPU with more memory or --device cpu";
static const char HINT_KV[] =
    "lower --kv-blocks (or --kv-memory), offload experts with --expert-cache-mib (a smaller "
    "value if set), or use --device cpu";
static const char HINT_STEP[] =
    "lower --max-batch-tokens or --kv-blocks (or --kv-memory), offload experts with "
    "--expert-cache-mib (a smaller value if set), or use --device cpu";

/* cudaMalloc recorded in s->allocs (freed at destroy); out of memory is XD_ERR_NOMEM naming
 * what, the bytes, what is free and hint. */
static int dev_alloc(cuda_state *s, size_t bytes, void **ret, const char *what, const char *hint,
                     struct xd_err *err)
{
    cudaError_t e = cudaMalloc(ret, bytes ? bytes : 1);
    if (e == cudaErrorMemoryAllocation)
        return xd_cuda_oom(err, what, bytes, hint);
    if (e != cudaSuccess)
        return xd_err_set(err, XD_ERR_IO, "allocating %s (%.1f MiB) on the GPU: %s", what,
                          bytes / 1048576.0, cudaGetErrorString(e));
    try {
        s->allocs.push_back(*ret);
    } catch (const std::bad_alloc &) {
        cudaFree(*ret);
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    }
    return XD_OK;
}

template <typename T>
static int alloc_n(cuda_state *s, size_t n, T **ret, const char *what, const char *hint,
                   struct xd_err *err)
{
    if (n > SIZE_MAX / sizeof(T))
        return xd_cuda_oom(err, what, SIZE_MAX, hint);
    return dev_alloc(s, n * sizeof(T), (void **)ret, what, hint, err);
}

/* Pinned host memory (cudaMallocHost) for what; failure is XD_ERR_NOMEM naming it. */
static int host_alloc(size_t bytes, void **ret, const char *what, struct xd_err *err)
{
    cudaError_t e = cudaMallocHost(ret, bytes ? bytes : 1);
    if (e == cudaSuccess)
        return XD_OK;
    (void)cudaGetLastError();
    *ret = NULL;
    return xd_err_set(err, e == cudaErrorMemoryAllocation ? XD_ERR_NOMEM : XD_ERR_IO,
                      "pinned host memory for %s (%.1f MiB): %s; lower --max-batch-tokens or "
                      "free host memory",
                      what, bytes / 1048576.0, cudaGetErrorString(e));
}

/* Uploads a weight matrix as bf16; a NULL matrix gives NULL. */
static int upload_bf16(cuda_state *s, const struct xd_matrix *m, const bf16 **ret, const char *what,
                       struct xd_err *err)
{
    *ret = NULL;
    if (!m->data)
        return XD_OK;
    const size_t n = (size_t)m->rows * m->cols;
    std::vector<uint16_t> host(n);
    xd_matrix_to_bf16(m, host.data());
    bf16 *d;
    int rc = alloc_n(s, n, &d, what, HINT_FIRST, err);
    if (rc < 0)
        return rc;
    CUDA_TRY(cudaMemcpy(d, host.data(), n * 2, cudaMemcpyHostToDevice));
    *ret = d;
    return XD_OK;
}

/* Uploads a vector (norm weight, bias) as f32; a NULL matrix gives NULL. */
static int upload_f32(cuda_state *s, const struct xd_matrix *m, const float **ret, const char *what,
                      struct xd_err *err)
{
    *ret = NULL;
    if (!m->data)
        return XD_OK;
    const size_t n = (size_t)m->rows * m->cols;
    std::vector<float> host(n);
    xd_dtype_to_f32(m->dtype, m->data, host.data(), n);
    float *d;
    int rc = alloc_n(s, n, &d, what, HINT_FIRST, err);
    if (rc < 0)
        return rc;
    CUDA_TRY(cudaMemcpy(d, host.data(), n * 4, cudaMemcpyHostToDevice));
    *ret = d;
    return XD_OK;
}

static void drop_graphs(cuda_state *s)
{
    for (auto &g : s->graphs)
        cudaGraphExecDestroy(g.second);
    s->graphs.clear();
}

static void cuda_destroy(void *p)
{
    cuda_state *s = (cuda_state *)p;
    if (!s)
        return;
    if (s->stream)
        cudaStreamSynchronize(s->stream);
    drop_graphs(s);
    if (s->h_ints)
        cudaFreeHost(s->h_ints);
    xd_expert_pool_destroy(s->pool);
    xd_expert_predictor_destroy(s->predictor);
    for (void *a : s->allocs)
        cudaFree(a);
    if (s->h_logits)
        cudaFreeHost(s->h_logits);
    if (s->blas)
        cublasDestroy(s->blas);
    if (s->stream)
        cudaStreamDestroy(s->stream);
    delete s;
}

static int create_inner(cuda_state *s, struct xd_err *err)
{
    const struct xd_model *m = s->m;
    const struct xd_model_config *c = &m->config;
    int n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev == 0)
        return xd_err_set(err, XD_ERR_UNSUPPORTED, "device cuda: no usable GPU (%s)",
                          e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    CUDA_TRY_MEM(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking), "a CUDA stream",
                 HINT_FIRST);
    cublasStatus_t bs = cublasCreate(&s->blas);
    if (bs == CUBLAS_STATUS_ALLOC_FAILED)
        return xd_cuda_oom(err, "the cuBLAS handle", 0, HINT_FIRST);
    CUBLAS_TRY(bs);
    CUBLAS_TRY(cublasSetStream(s->blas, s->stream));

    XD_TRY(upload_bf16(s, &m->embed, &s->embed, "the embedding table", err));
    if (m->lm_head.data == m->embed.data)
        s->lm_head = s->embed;
    else
        XD_TRY(upload_bf16(s, &m->lm_head, &s->lm_head, "lm_head", err));
    XD_TRY(upload_f32(s, &m->final_norm, &s->final_norm, "the final norm", err));
    if (!xd_rope_is_plain(&c->rope)) {
        const size_t half = (size_t)c->rope.rot_dim / 2;
        float *d = NULL;
        XD_TRY(dev_alloc(s, sizeof(float) * half, (void **)&d, "the rope table", HINT_FIRST, err));
        CUDA_TRY(cudaMemcpy(d, c->rope.inv_freq, sizeof(float) * half, cudaMemcpyHostToDevice));
        s->rope_inv_freq = d;
    }
    s->layers.resize(c->n_layers);
    for (int i = 0; i < c->n_layers; i++) {
        const struct xd_layer_weights *lw = &m->layers[i];
        dev_layer *d = &s->layers[i];
        XD_TRY(upload_bf16(s, &lw->wq, &d->wq, "attention weights", err));
        XD_TRY(upload_bf16(s, &lw->wk, &d->wk, "attention weights", err));
        XD_TRY(upload_bf16(s, &lw->wv, &d->wv, "attention weights", err));
        XD_TRY(upload_bf16(s, &lw->wo, &d->wo, "attention weights", err));
        XD_TRY(upload_f32(s, &lw->bq, &d->bq, "biases", err));
        XD_TRY(upload_f32(s, &lw->bk, &d->bk, "biases", err));
        XD_TRY(upload_f32(s, &lw->bv, &d->bv, "biases", err));
        XD_TRY(upload_f32(s, &lw->bo, &d->bo, "biases", err));
        XD_TRY(upload_f32(s, &lw->attn_norm, &d->attn_norm, "norms", err));
        XD_TRY(upload_f32(s, &lw->mlp_norm, &d->mlp_norm, "norms", err));
        XD_TRY(upload_f32(s, &lw->q_norm, &d->q_norm, "norms", err));
        XD_TRY(upload_f32(s, &lw->k_norm, &d->k_norm, "norms", err));
        XD_TRY(upload_bf16(s, &lw->mlp_gate, &d->mlp_gate, "dense MLP weights", err));
        XD_TRY(upload_bf16(s, &lw->mlp_up, &d->mlp_up, "dense MLP weights", err));
        XD_TRY(upload_bf16(s, &lw->mlp_down, &d->mlp_down, "dense MLP weights", err));
        XD_TRY(upload_f32(s, &lw->router, &d->router, "router weights", err));
        XD_TRY(upload_bf16(s, &lw->shared.gate, &d->sh_gate, "shared expert weights", err));
        XD_TRY(upload_bf16(s, &lw->shared.up, &d->sh_up, "shared expert weights", err));
        XD_TRY(upload_bf16(s, &lw->shared.down, &d->sh_down, "shared expert weights", err));
        XD_TRY(upload_bf16(s, &lw->shared_expert_gate, &d->sh_expert_gate, "shared expert gate",
                        err));
    }
    struct xd_expert_pool_opts pool_opts = {s->opts.expert_cache_slots,
                                            s->opts.expert_evict_policy};
    XD_TRY(xd_expert_pool_create(m, s->stream, &pool_opts, &s->pool, err));
    s->offloading = xd_expert_pool_offloading(s->pool);
    {
        struct xd_expert_stats st;
        xd_expert_pool_stats(s->pool, &st);
        s->expert_slots = st.n_slots;
    }
    s->next_moe.assign(c->n_layers, -1);
    for (int l = c->n_layers - 2; l >= 0; l--)
        s->next_moe[l] = c->is_moe_layer[l + 1] ? l + 1 : s->next_moe[l + 1];

    const size_t T = (size_t)s->opts.max_batch_tokens, TK = T * s->K, H = s->H;
    s->layer_slots = (size_t)s->opts.n_kv_blocks * s->opts.block_size;
    if (s->layer_slots > SIZE_MAX / c->n_layers / s->kv_dim)
        return xd_cuda_oom(err, "the KV cache", SIZE_MAX, HINT_KV);
    const size_t kv = (size_t)c->n_layers * s->layer_slots * s->kv_dim;
    XD_TRY(alloc_n(s, kv, &s->k_cache, "the KV cache (keys)", HINT_KV, err));
    XD_TRY(alloc_n(s, kv, &s->v_cache, "the KV cache (values)", HINT_KV, err));
    s->d_ints_cap = 5 * T + 1024;
    XD_TRY(alloc_n(s, s->d_ints_cap, &s->d_ints, "step buffers", HINT_STEP, err));
    XD_TRY(host_alloc(sizeof(int32_t) * s->d_ints_cap, (void **)&s->h_ints, "step inputs",
                      err));
    const size_t workspace = 32u << 20;
    XD_TRY(dev_alloc(s, workspace, &s->blas_workspace, "the cuBLAS workspace", HINT_STEP, err));
    CUBLAS_TRY(cublasSetWorkspace(s->blas, s->blas_workspace, workspace));
    const size_t F = (size_t)s->ffn_max;
    XD_TRY(alloc_n(s, T * H, &s->h, "step buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, T * H, &s->xn, "step buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, T * H, &s->xs, "step buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, T * H, &s->xnf, "step buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, T * s->q_dim, &s->q, "step buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, T * s->kv_dim, &s->k, "step buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, T * s->kv_dim, &s->v, "step buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, T * s->q_dim, &s->attn, "step buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, T * H, &s->out, "step buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, T * s->E, &s->router, "step buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, TK, &s->weights, "step buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, TK, &s->experts, "step buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, TK, &s->row_src, "step buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, TK, &s->slot_row, "step buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, TK * H, &s->xg, "expert buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, TK * F, &s->g, "expert buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, TK * F, &s->u, "expert buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, TK * F, &s->a, "expert buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, TK * H, &s->eo, "expert buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, T * c->vocab_size, &s->logits, "the logits", HINT_STEP, err));
    XD_TRY(host_alloc(T * c->vocab_size * sizeof(float), (void **)&s->h_logits, "the logits",
                      err));
    const size_t L = c->n_moe_layers ? c->n_moe_layers : 1;
    XD_TRY(alloc_n(s, (size_t)c->n_layers * s->E, &s->d_expert_ptrs, "expert table", HINT_STEP,
                   err));
    XD_TRY(alloc_n(s, (size_t)s->E + 1, &s->d_start, "step buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, TK * L, &s->d_route_experts, "step buffers", HINT_STEP, err));
    XD_TRY(alloc_n(s, TK * L, &s->d_route_weights, "step buffers", HINT_STEP, err));
    if (!s->offloading) {
        /* every expert resident: the small-step kernels find them through this table */
        std::vector<const bf16 *> ptrs((size_t)c->n_layers * s->E, nullptr);
        for (int l = 0; l < c->n_layers; l++)
            for (int e = 0; c->is_moe_layer[l] && e < s->E; e++) {
                struct xd_gpu_expert w;
                XD_TRY(xd_expert_pool_acquire(s->pool, l, e, &w, err));
                ptrs[(size_t)l * s->E + e] = w.gate;
            }
        CUDA_TRY(cudaMemcpy(s->d_expert_ptrs, ptrs.data(), sizeof(bf16 *) * ptrs.size(),
                            cudaMemcpyHostToDevice));
    } else if (s->opts.expert_prefetch) {
        s->prefetching = true;
        s->W = s->opts.predict_width; /* 1..n_experts: the engine resolved and checked it */
        if (s->W > 64)
            return xd_err_set(err, XD_ERR_INVALID,
                              "expert-prefetch-width %d: the CUDA lookahead ranks 1 to 64 experts",
                              s->W);
        XD_TRY(xd_expert_predictor_create(XD_PREDICT_LOOKAHEAD, s->W, c->n_moe_layers, s->K,
                                          s->E, &s->predictor, err));
        const size_t TW = T * (size_t)s->W;
        XD_TRY(alloc_n(s, T * H, &s->pred_x, "prefetch buffers", HINT_STEP, err));
        XD_TRY(alloc_n(s, T * s->E, &s->pred_router, "prefetch buffers", HINT_STEP, err));
        XD_TRY(alloc_n(s, TW, &s->pred_weights, "prefetch buffers", HINT_STEP, err));
        XD_TRY(alloc_n(s, TW, &s->pred_experts, "prefetch buffers", HINT_STEP, err));
        s->h_pred.resize(TW);
        s->route_pred.resize(TW * L);
        s->pred_list.resize((size_t)s->E);
    }
    s->route_experts.resize(TK * L);
    s->route_weights.resize(TK * L);
    s->h_experts.resize(TK);
    s->h_weights.resize(TK);
    s->h_row_src.resize(TK);
    s->h_slot_row.resize(TK);
    return XD_OK;
}

static int cuda_create(struct xd_model *model, const struct xd_engine_opts *opts, void **ret,
                       struct xd_err *err)
{
    const struct xd_model_config *c = &model->config;
    /* dots1 (glm4_moe's grouped sigmoid router, o_proj bias, sliding layers), granitemoe
     * (its multipliers, top-k softmax router, fused experts) and ernie4_5_moe (its biased
     * softmax router, rope on pairs) and hunyuan_v1_moe (q/k norm after rope) have no CUDA
     * kernels that have run on a GPU */
    if (c->arch == XD_ARCH_DOTS1 || c->arch == XD_ARCH_GRANITEMOE ||
        c->arch == XD_ARCH_GRANITEMOE_SHARED || c->arch == XD_ARCH_ERNIE4_5_MOE ||
        c->arch == XD_ARCH_HUNYUAN_V1_MOE)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "device cuda: model_type %s (%s) is computed only by the CPU backend "
                          "until its CUDA kernels have run on a GPU; use --device cpu",
                          c->model_type,
                          c->arch == XD_ARCH_DOTS1
                              ? "its sigmoid group-limited router, sliding-window layers"
                          : c->arch == XD_ARCH_ERNIE4_5_MOE
                              ? "its bias-corrected softmax router, rope on adjacent pairs"
                          : c->arch == XD_ARCH_HUNYUAN_V1_MOE
                              ? "q/k norm after the rotary embedding, ungated shared MLP"
                              : "embedding, attention, residual and logits multipliers, its "
                                "top-k softmax router");
    /* deepseek: multi-head latent attention and its routers have no CUDA kernels yet */
    if (c->mla)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "device cuda: model_type %s (multi-head latent attention, grouped "
                          "routing, ungated shared experts) has no CUDA kernels that have run on "
                          "a GPU; use --device cpu",
                          c->model_type);
    if (c->n_experts > 32 * 16 || c->top_k > 64)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "device cuda: %d experts, top-%d; the router kernel handles up to 512 "
                          "experts and top-64",
                          c->n_experts, c->top_k);
    /* gpt_oss's attention sinks, per-layer sliding window, biased router and experts and
     * clamped SwiGLU have no CUDA kernels */
    if (c->arch == XD_ARCH_GPT_OSS || c->attn_sinks || c->expert_bias || c->swiglu_limit > 0.0f)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "device cuda: model_type %s (attention sinks, its top-k softmax router, "
                          "biased clamped-SwiGLU experts) is computed only by the CPU backend: "
                          "it has no CUDA kernels; use --device cpu",
                          c->model_type);
    /* glm4_moe's grouped sigmoid router, shared experts without a gate and partial rotary
     * have no CUDA kernels that have run on a GPU */
    if (c->arch == XD_ARCH_GLM4_MOE || c->router != XD_ROUTER_SOFTMAX)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "device cuda: model_type %s (its sigmoid group-limited router) is "
                          "computed only by the CPU backend until its CUDA kernels have run on a "
                          "GPU; use --device cpu",
                          c->model_type);
    /* Scaled and partial ropes have a CUDA kernel (xd_k_rope_table) that has not run on a
     * GPU: refused until the device check has passed it, as offloading below (the GPU tests
     * and that check set EXPERTD_GPU_UNVERIFIED=1). */
    const char *unverified = getenv("EXPERTD_GPU_UNVERIFIED");
    const bool run_unverified = unverified && strcmp(unverified, "1") == 0;
    if (!xd_rope_is_plain(&c->rope) && !run_unverified)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "device cuda: rope type %s over %d of %d head dims (attention factor "
                          "%g) is computed only by the CPU backend: its CUDA kernel has not yet "
                          "run on a GPU and is refused until it has; use --device cpu",
                          xd_rope_type_name(c->rope.type), c->rope.rot_dim, c->head_dim,
                          (double)c->rope.attention_scaling);
    if (c->head_dim > 32 * ATT_MAX_HEAD_DIM_LANES)
        return xd_err_set(err, XD_ERR_UNSUPPORTED, "device cuda: head_dim %d is above %d",
                          c->head_dim, 32 * ATT_MAX_HEAD_DIM_LANES);
    /* Expert offloading on the GPU is built and reviewed but has never run on a GPU: refused
     * until the device check (tools/device-check.sh) has passed it. The GPU tests and that
     * check set EXPERTD_GPU_UNVERIFIED=1 to run it; nothing else should. */
    const long long n_moe_experts = (long long)c->n_moe_layers * c->n_experts;
    if (opts->expert_cache_slots > 0 && opts->expert_cache_slots < n_moe_experts &&
        !run_unverified)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "device cuda: expert offloading (a GPU expert cache of %d of %lld "
                          "experts, from expert-cache-mib or expert-cache-slots) has not yet run "
                          "on a GPU and is refused until it has; keep every expert on the GPU "
                          "(expert-cache-mib 0) or use --device cpu",
                          opts->expert_cache_slots, n_moe_experts);
    cuda_state *s = new (std::nothrow) cuda_state();
    if (!s)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    s->m = model;
    s->opts = *opts;
    s->q_dim = c->n_heads * c->head_dim;
    s->kv_dim = c->n_kv_heads * c->head_dim;
    s->K = c->top_k;
    s->E = c->n_experts;
    s->H = c->hidden_size;
    s->small_step_slots = 1024;
    const char *graphs_env = getenv("EXPERTD_CUDA_GRAPHS");
    s->use_graphs = !(graphs_env && strcmp(graphs_env, "0") == 0);
    const char *env = getenv("EXPERTD_CUDA_SMALL_STEP_SLOTS");
    if (env && *env)
        s->small_step_slots = atoi(env);
    if (s->small_step_slots > 4096) /* the device plan's bound (kernels.h) */
        s->small_step_slots = 4096;
    s->ffn_max = c->expert_ffn;
    if (c->dense_ffn > s->ffn_max)
        s->ffn_max = c->dense_ffn;
    if (c->shared_expert_ffn > s->ffn_max)
        s->ffn_max = c->shared_expert_ffn;
    int rc;
    try {
        rc = create_inner(s, err);
    } catch (const std::bad_alloc &) { /* host vectors: library code must not terminate */
        rc = xd_err_set(err, XD_ERR_NOMEM, "device cuda: out of host memory while loading");
    }
    if (rc < 0) {
        cuda_destroy(s);
        return rc;
    }
    *ret = s;
    return XD_OK;
}

/* ---- the step ---- */


/* y (n, rows) f32 = x (n, cols) bf16 @ w (rows, cols)^T, f32 accumulation. */
static int gemm(cuda_state *s, const bf16 *x, int n, const bf16 *w, int rows, int cols, float *y,
                struct xd_err *err)
{
    if (n == 0)
        return XD_OK;
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_TRY(cublasGemmEx(s->blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols, &one, w,
                            CUDA_R_16BF, cols, x, CUDA_R_16BF, cols, &zero, y, CUDA_R_32F, rows,
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return XD_OK;
}

/* down(silu(gate x) * up x) for n rows of x (bf16) into out (n, hidden) f32. */
static int swiglu(cuda_state *s, const bf16 *x, int n, const bf16 *gate, const bf16 *up,
                  const bf16 *down, int ffn, float *g, float *u, bf16 *a, float *out,
                  struct xd_err *err)
{
    XD_TRY(gemm(s, x, n, gate, ffn, s->H, g, err));
    XD_TRY(gemm(s, x, n, up, ffn, s->H, u, err));
    xd_k_silu_mul(g, u, a, (size_t)n * ffn, s->stream);
    XD_TRY(gemm(s, a, n, down, s->H, ffn, out, err));
    return XD_OK;
}

/* qwen2_moe: h += sigmoid(x . shared_expert_gate) * shared_expert(x); others: nothing. */
static int shared_expert(cuda_state *s, const dev_layer *d, int n, struct xd_err *err)
{
    if (!d->sh_gate)
        return XD_OK;
    XD_TRY(swiglu(s, s->xn, n, d->sh_gate, d->sh_up, d->sh_down, s->m->config.shared_expert_ffn,
               s->g, s->u, s->a, s->out, err));
    XD_TRY(gemm(s, s->xn, n, d->sh_expert_gate, 1, s->H, s->xs, err));
    xd_k_add_gated(s->h, s->out, s->xs, n, s->H, s->stream);
    return XD_OK;
}

static int moe(cuda_state *s, int l, int n, struct xd_err *err)
{
    const struct xd_model_config *c = &s->m->config;
    const dev_layer *d = &s->layers[l];
    const int K = s->K, E = s->E, H = s->H, F = c->expert_ffn, L = c->n_moe_layers;
    const int mi = s->m->layers[l].moe_index;

    /* The router runs in f32 on the f32 normed input: rounding it to bf16 flips near-tied
     * expert choices, and a flipped expert moves the logits far more than bf16 noise. */
    xd_k_rmsnorm_f32(s->h, d->mlp_norm, s->xnf, n, H, c->rms_norm_eps, s->stream);
    {
        const float one = 1.0f, zero = 0.0f;
        CUBLAS_TRY(cublasSgemm(s->blas, CUBLAS_OP_T, CUBLAS_OP_N, E, n, H, &one, d->router, H,
                               s->xnf, H, &zero, s->router, E));
    }
    xd_k_route(s->router, s->experts, s->weights, n, E, K, c->norm_topk_prob, s->stream);
    if (s->step_small) {
        CUDA_TRY(cudaMemcpy2DAsync(s->d_route_experts + (size_t)mi * K, sizeof(int32_t) * L * K,
                                   s->experts, sizeof(int32_t) * K, sizeof(int32_t) * K, n,
                                   cudaMemcpyDeviceToDevice, s->stream));
        CUDA_TRY(cudaMemcpy2DAsync(s->d_route_weights + (size_t)mi * K, sizeof(float) * L * K,
                                   s->weights, sizeof(float) * K, sizeof(float) * K, n,
                                   cudaMemcpyDeviceToDevice, s->stream));
        xd_k_moe_plan(s->experts, n * K, E, K, s->d_start, s->row_src, s->slot_row, s->stream);
        xd_k_gather_rows(s->xn, s->row_src, s->xg, n * K, H, s->stream);
        xd_k_experts_small(s->d_expert_ptrs + (size_t)l * E, s->d_start, s->xg, s->a, s->eo, E, H,
                           F, s->stream);
        xd_k_moe_combine(s->h, s->eo, s->slot_row, s->weights, n, K, H, s->stream);
        return shared_expert(s, d, n, err);
    }
    /* the host needs each expert's row count to size its GEMMs */
    CUDA_TRY(cudaMemcpyAsync(s->h_experts.data(), s->experts, sizeof(int32_t) * n * K,
                             cudaMemcpyDeviceToHost, s->stream));
    CUDA_TRY(cudaMemcpyAsync(s->h_weights.data(), s->weights, sizeof(float) * n * K,
                             cudaMemcpyDeviceToHost, s->stream));
    const int next = s->next_moe[l];
    const bool predict = s->prefetching && next >= 0;
    if (predict) {
        /* lookahead: the next MoE layer's router on the residual stream as it is now; its
         * choices come back in the same synchronisation as this layer's */
        const dev_layer *dn = &s->layers[next];
        const float one = 1.0f, zero = 0.0f;
        xd_k_rmsnorm_f32(s->h, dn->mlp_norm, s->pred_x, n, H, c->rms_norm_eps, s->stream);
        CUBLAS_TRY(cublasSgemm(s->blas, CUBLAS_OP_T, CUBLAS_OP_N, E, n, H, &one, dn->router, H,
                               s->pred_x, H, &zero, s->pred_router, E));
        xd_k_route(s->pred_router, s->pred_experts, s->pred_weights, n, E, s->W,
                   c->norm_topk_prob, s->stream);
        CUDA_TRY(cudaMemcpyAsync(s->h_pred.data(), s->pred_experts,
                                 sizeof(int32_t) * n * s->W, cudaMemcpyDeviceToHost, s->stream));
    }
    CUDA_TRY(cudaStreamSynchronize(s->stream));
    for (int t = 0; t < n; t++)
        for (int j = 0; j < K; j++) {
            s->route_experts[((size_t)t * L + mi) * K + j] = s->h_experts[(size_t)t * K + j];
            s->route_weights[((size_t)t * L + mi) * K + j] = s->h_weights[(size_t)t * K + j];
        }

    /* The ids index host arrays below: one out of range (a kernel bug) must be an error, not a
     * write past them. */
    for (int i = 0; i < n * K; i++)
        if (s->h_experts[i] < 0 || s->h_experts[i] >= E)
            return xd_err_set(err, XD_ERR_FORMAT,
                              "layer %d: the router chose expert id %d of %d (non-finite router "
                              "logits?)", l, s->h_experts[i], E);

    /* counting sort of (token, slot) pairs by expert */
    std::vector<int> start(E + 1, 0);
    for (int i = 0; i < n * K; i++)
        start[s->h_experts[i] + 1]++;
    for (int e = 0; e < E; e++)
        start[e + 1] += start[e];
    std::vector<int> fill(start.begin(), start.end() - 1);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < K; j++) {
            int r = fill[s->h_experts[(size_t)t * K + j]]++;
            s->h_row_src[r] = t;
            s->h_slot_row[(size_t)t * K + j] = r;
        }
    CUDA_TRY(cudaMemcpyAsync(s->row_src, s->h_row_src.data(), sizeof(int32_t) * n * K,
                             cudaMemcpyHostToDevice, s->stream));
    CUDA_TRY(cudaMemcpyAsync(s->slot_row, s->h_slot_row.data(), sizeof(int32_t) * n * K,
                             cudaMemcpyHostToDevice, s->stream));
    xd_k_gather_rows(s->xn, s->row_src, s->xg, n * K, H, s->stream);

    /* Offloading: pin every expert of this layer first (their copies start now, in this order),
     * then guess the next layer's into the remaining slots, so those copies overlap this layer's
     * GEMMs; each expert's GEMMs wait only for its own copy. A layer needing more experts than
     * the cache holds runs them one at a time instead, and guesses nothing (a guess would evict
     * this layer's own experts and queue ahead of its demand copies). */
    std::vector<int> present;
    for (int e = 0; e < E; e++)
        if (start[e + 1] > start[e])
            present.push_back(e);
    std::vector<struct xd_gpu_expert> w(present.size());
    bool pinned_all = false;
    if (s->offloading) {
        if ((int)present.size() <= s->expert_slots) {
            size_t i = 0;
            int prc = XD_OK;
            for (; i < present.size() && prc == XD_OK; i++)
                prc = xd_expert_pool_pin(s->pool, l, present[i], &w[i], err);
            if (prc < 0) {
                for (size_t j = 0; j + 1 < i; j++)
                    xd_expert_pool_release(s->pool, l, present[j]);
                return prc; /* the next step clears this layer's predictions */
            }
            pinned_all = true;
        }
    }
    int rc = XD_OK;
    if (predict) {
        const int W = s->W, nmi = s->m->layers[next].moe_index;
        for (int t = 0; t < n; t++)
            memcpy(&s->route_pred[((size_t)t * L + nmi) * W], &s->h_pred[(size_t)t * W],
                   sizeof(int32_t) * W);
        const int n_pred = xd_expert_predictor_predict(s->predictor, nmi, n, s->h_pred.data(),
                                                       (size_t)W, W, NULL, s->pred_list.data());
        for (int i = 0; pinned_all && i < n_pred && rc == XD_OK; i++)
            rc = xd_expert_pool_prefetch(s->pool, next, s->pred_list[i], err);
    }
    for (size_t i = 0; i < present.size() && rc == XD_OK; i++) {
        const int e = present[i];
        const int r0 = start[e], rows = start[e + 1] - start[e];
        rc = pinned_all ? xd_expert_pool_wait(s->pool, l, e, err)
                        : xd_expert_pool_acquire(s->pool, l, e, &w[i], err);
        if (rc < 0)
            break;
        rc = swiglu(s, s->xg + (size_t)r0 * H, rows, w[i].gate, w[i].up, w[i].down, F,
                    s->g + (size_t)r0 * F, s->u + (size_t)r0 * F, s->a + (size_t)r0 * F,
                    s->eo + (size_t)r0 * H, err);
        if (!pinned_all)
            xd_expert_pool_release(s->pool, l, e);
    }
    if (pinned_all)
        for (int e : present)
            xd_expert_pool_release(s->pool, l, e);
    xd_expert_pool_clear_predictions(s->pool, l);
    if (rc < 0)
        return rc;
    xd_k_moe_combine(s->h, s->eo, s->slot_row, s->weights, n, K, H, s->stream);
    return shared_expert(s, d, n, err);
}

static int layer(cuda_state *s, int l, int n, const int32_t *d_pos, const int32_t *d_slot,
                 const int32_t *d_off, const int32_t *d_tables, struct xd_err *err)
{
    const struct xd_model_config *c = &s->m->config;
    const dev_layer *d = &s->layers[l];
    const int H = s->H, hd = c->head_dim;
    cudaStream_t st = s->stream;

    xd_k_rmsnorm_bf16(s->h, d->attn_norm, s->xn, n, H, c->rms_norm_eps, st);
    XD_TRY(gemm(s, s->xn, n, d->wq, s->q_dim, H, s->q, err));
    XD_TRY(gemm(s, s->xn, n, d->wk, s->kv_dim, H, s->k, err));
    XD_TRY(gemm(s, s->xn, n, d->wv, s->kv_dim, H, s->v, err));
    if (d->bq) {
        xd_k_add_bias(s->q, d->bq, n, s->q_dim, st);
        xd_k_add_bias(s->k, d->bk, n, s->kv_dim, st);
        xd_k_add_bias(s->v, d->bv, n, s->kv_dim, st);
    }
    if (c->qk_norm == XD_QK_NORM_PER_HEAD) {
        xd_k_rmsnorm_f32(s->q, d->q_norm, s->q, n * c->n_heads, hd, c->rms_norm_eps, st);
        xd_k_rmsnorm_f32(s->k, d->k_norm, s->k, n * c->n_kv_heads, hd, c->rms_norm_eps, st);
    } else if (c->qk_norm == XD_QK_NORM_FULL_WIDTH) {
        xd_k_rmsnorm_f32(s->q, d->q_norm, s->q, n, s->q_dim, c->rms_norm_eps, st);
        xd_k_rmsnorm_f32(s->k, d->k_norm, s->k, n, s->kv_dim, c->rms_norm_eps, st);
    }
    if (c->clip_qkv > 0.0f) {
        xd_k_clip(s->q, c->clip_qkv, (size_t)n * s->q_dim, st);
        xd_k_clip(s->k, c->clip_qkv, (size_t)n * s->kv_dim, st);
        xd_k_clip(s->v, c->clip_qkv, (size_t)n * s->kv_dim, st);
    }
    if (!s->rope_inv_freq) {
        xd_k_rope(s->q, d_pos, n, c->n_heads, hd, c->rope_theta, st);
        xd_k_rope(s->k, d_pos, n, c->n_kv_heads, hd, c->rope_theta, st);
    } else {
        const struct xd_rope *r = &c->rope;
        const int dyn = r->type == XD_ROPE_DYNAMIC ? r->max_position_embeddings : 0;
        xd_k_rope_table(s->q, d_pos, n, c->n_heads, hd, r->rot_dim / 2, s->rope_inv_freq,
                        r->attention_scaling, r->theta, r->factor, dyn, st);
        xd_k_rope_table(s->k, d_pos, n, c->n_kv_heads, hd, r->rot_dim / 2, s->rope_inv_freq,
                        r->attention_scaling, r->theta, r->factor, dyn, st);
    }
    const size_t layer_off = (size_t)l * s->layer_slots * s->kv_dim;
    xd_k_kv_store(s->k, s->v, d_slot, s->k_cache + layer_off, s->v_cache + layer_off, n,
                  s->kv_dim, st);
    xd_k_attention(s->q, s->k_cache + layer_off, s->v_cache + layer_off, d_pos, d_off, d_tables,
                   s->attn, n, c->n_heads, c->n_kv_heads, hd, s->opts.block_size,
                   c->sliding_window, st);
    XD_TRY(gemm(s, s->attn, n, d->wo, H, s->q_dim, s->out, err));
    if (d->bo)
        xd_k_add_bias(s->out, d->bo, n, H, st);
    xd_k_add(s->h, s->out, (size_t)n * H, st);

    xd_k_rmsnorm_bf16(s->h, d->mlp_norm, s->xn, n, H, c->rms_norm_eps, st);
    if (s->m->layers[l].moe_index >= 0)
        return moe(s, l, n, err);
    XD_TRY(swiglu(s, s->xn, n, d->mlp_gate, d->mlp_up, d->mlp_down, c->dense_ffn, s->g, s->u, s->a,
               s->out, err));
    xd_k_add(s->h, s->out, (size_t)n * H, st);
    return XD_OK;
}

/* Everything a step enqueues between the upload of its ints and the download of its
 * results: the part a CUDA graph can capture. ints = [tokens | pos | slot | table_off | logit
 * rows] (n each) then the block tables. */
static int step_body(cuda_state *s, int n, int R, struct xd_err *err)
{
    const struct xd_model_config *c = &s->m->config;
    const int32_t *d_tok = s->d_ints, *d_pos = d_tok + n, *d_slot = d_pos + n,
                  *d_off = d_slot + n, *d_rows = d_off + n, *d_tables = d_rows + n;
    xd_k_embed(s->embed, d_tok, s->h, n, s->H, s->stream);
    for (int l = 0; l < c->n_layers; l++)
        XD_TRY(layer(s, l, n, d_pos, d_slot, d_off, d_tables, err));
    if (R > 0) {
        xd_k_gather_rows_f32(s->h, d_rows, s->xs, R, s->H, s->stream);
        xd_k_rmsnorm_bf16(s->xs, s->final_norm, s->xn, R, s->H, c->rms_norm_eps, s->stream);
        XD_TRY(gemm(s, s->xn, R, s->lm_head, c->vocab_size, s->H, s->logits, err));
    }
    return XD_OK;
}

/* Runs step_body for a decode step of n tokens through a CUDA graph captured the first time
 * that n is seen (the kernels read every per-step value from the ints buffer). */
static int step_graph(cuda_state *s, int n, struct xd_err *err)
{
    cudaGraphExec_t exec = NULL;
    for (auto &g : s->graphs)
        if (g.first == n)
            exec = g.second;
    if (!exec) {
        cudaGraph_t graph;
        CUDA_TRY(cudaStreamBeginCapture(s->stream, cudaStreamCaptureModeThreadLocal));
        int rc = step_body(s, n, n, err);
        cudaError_t e = cudaStreamEndCapture(s->stream, &graph);
        if (rc < 0)
            return rc;
        CUDA_TRY(e);
        e = cudaGraphInstantiate(&exec, graph, 0);
        cudaGraphDestroy(graph);
        CUDA_TRY(e);
        s->graphs.push_back({n, exec});
    }
    CUDA_TRY(cudaGraphLaunch(exec, s->stream));
    return XD_OK;
}

static int cuda_forward(void *p, const struct xd_batch *b, struct xd_forward_out *ret,
                        struct xd_err *err)
{
    cuda_state *s = (cuda_state *)p;
    const struct xd_model_config *c = &s->m->config;
    const int bs = s->opts.block_size, V = c->vocab_size;
    int n = 0, n_table = 0, decode_only = 1;
    for (int i = 0; i < b->n_seqs; i++) {
        n += b->seqs[i].n_tokens;
        n_table += (b->seqs[i].pos + b->seqs[i].n_tokens + bs - 1) / bs;
        decode_only &= b->seqs[i].n_tokens == 1 && b->seqs[i].logits == XD_LOGITS_LAST;
    }
    if (s->prefetching) { /* n <= max_batch_tokens: the engine checked the batch */
        /* no lookahead before the first MoE layer; and no prediction outlives a failed step */
        std::fill(s->route_pred.begin(),
                  s->route_pred.begin() + (size_t)n * c->n_moe_layers * s->W, -1);
        for (int l = 0; l < c->n_layers; l++)
            xd_expert_pool_clear_predictions(s->pool, l);
    }
    const size_t need = 5 * (size_t)n + n_table;
    if (need > s->d_ints_cap) {
        /* graphs hold the old pointers: drop them with the old buffers */
        CUDA_TRY(cudaStreamSynchronize(s->stream));
        drop_graphs(s);
        int32_t *bigger, *h_bigger;
        XD_TRY(alloc_n(s, need * 2, &bigger, "step buffers", HINT_STEP, err));
        s->d_ints = bigger; /* the old buffer stays in allocs until destroy */
        /* the old pinned copy stays until the new one exists: a failure leaves a usable pair */
        XD_TRY(host_alloc(sizeof(int32_t) * need * 2, (void **)&h_bigger, "step inputs", err));
        cudaFreeHost(s->h_ints);
        s->h_ints = h_bigger;
        s->d_ints_cap = need * 2;
    }
    int32_t *tok = s->h_ints, *pos = tok + n, *slot = pos + n, *off = slot + n, *rows = off + n,
            *tables = rows + n;
    int t = 0, tab = 0, R = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        const struct xd_seq_chunk *sc = &b->seqs[i];
        const int n_blocks = (sc->pos + sc->n_tokens + bs - 1) / bs;
        memcpy(tables + tab, sc->block_table, sizeof(int32_t) * n_blocks);
        const int first_logit = sc->logits == XD_LOGITS_ALL    ? 0
                                : sc->logits == XD_LOGITS_LAST ? sc->n_tokens - 1
                                                               : sc->n_tokens;
        for (int j = 0; j < sc->n_tokens; j++, t++) {
            const int p_ = sc->pos + j;
            tok[t] = sc->tokens[j];
            pos[t] = p_;
            slot[t] = sc->block_table[p_ / bs] * bs + p_ % bs;
            off[t] = tab;
            if (j >= first_logit)
                rows[R++] = t;
        }
        tab += n_blocks;
    }
    CUDA_TRY(cudaMemcpyAsync(s->d_ints, s->h_ints, sizeof(int32_t) * need,
                             cudaMemcpyHostToDevice, s->stream));
    /* the small-step path reads every expert through a fixed device table: all resident only */
    const bool small = decode_only && !s->offloading && n * s->K <= SMALL_STEP_SLOTS &&
                       s->H % 8 == 0 && c->expert_ffn % 8 == 0;
    s->step_small = small;
    if (decode_only && small && s->use_graphs)
        XD_TRY(step_graph(s, n, err));
    else
        XD_TRY(step_body(s, n, R, err));

    if (R > 0)
        CUDA_TRY(cudaMemcpyAsync(s->h_logits, s->logits, sizeof(float) * R * V,
                                 cudaMemcpyDeviceToHost, s->stream));
    if (small && c->n_moe_layers > 0) {
        const size_t cnt = (size_t)n * c->n_moe_layers * s->K;
        CUDA_TRY(cudaMemcpyAsync(s->route_experts.data(), s->d_route_experts,
                                 sizeof(int32_t) * cnt, cudaMemcpyDeviceToHost, s->stream));
        CUDA_TRY(cudaMemcpyAsync(s->route_weights.data(), s->d_route_weights, sizeof(float) * cnt,
                                 cudaMemcpyDeviceToHost, s->stream));
    }
    CUDA_TRY(cudaStreamSynchronize(s->stream));
    CUDA_TRY(cudaGetLastError());
    XD_TRY(xd_expert_pool_end_step(s->pool, err));

    ret->logits = s->h_logits;
    ret->n_logit_rows = R;
    ret->routing.n_tokens = n;
    ret->routing.n_moe_layers = c->n_moe_layers;
    ret->routing.top_k = s->K;
    ret->routing.experts = s->route_experts.data();
    ret->routing.weights = s->route_weights.data();
    /* the lookahead that steered prefetch, when there was one */
    ret->routing.predicted = s->prefetching ? s->route_pred.data() : NULL;
    ret->routing.predicted_width = s->W;
    return XD_OK;
}

static void cuda_expert_stats(void *p, struct xd_expert_stats *ret)
{
    xd_expert_pool_stats(((cuda_state *)p)->pool, ret);
}

static const struct xd_backend_ops cuda_backend = {
    "cuda", cuda_create, cuda_forward, cuda_destroy, cuda_expert_stats,
};

extern "C" void xd_gpu_register(void)
{
    xd_engine_register_backend(XD_DEVICE_CUDA, &cuda_backend);
}
