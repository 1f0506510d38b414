/* The CPU reference backend: a whole forward step in f32, experts run grouped by expert. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "engine/backend.h"
#include "engine/cpu/attention.h"
#include "engine/cpu/cpu_kernels.h"
#include "engine/cpu/gpt_oss.h"
#include "engine/cpu/mla.h"
#include "engine/cpu/moe_router.h"
#include "engine/cpu/cpu_pool.h"
#include "engine/model/quant.h"

struct cpu_state {
    const struct xd_model *m;
    struct xd_engine_opts opts;
    int kv_dim;          /* n_kv_heads * head_dim */
    int q_dim;           /* n_heads * head_dim */
    int ffn_max;         /* widest dense or shared MLP */

    /* KV cache: keys (n_layers, n_kv_blocks, n_kv_heads, head_dim, block_size), values
     * (n_layers, n_kv_blocks, n_kv_heads, block_size, head_dim) (engine/cpu/attention.h's
     * layouts), elements of opts.kv_dtype (f32, bf16 or f16; kv_esize bytes); NULL with MLA,
     * whose latent cache and attention are mla's (engine/cpu/mla.c) */
    void *k_cache;
    void *v_cache;
    size_t kv_esize;
    struct xd_cpu_mla *mla;

    /* step buffers, T = max_batch_tokens */
    int32_t *tok_seq;    /* (T,) sequence index of each token */
    int32_t *tok_pos;    /* (T,) position of each token */
    int32_t *attn_items; /* (T + 1,) the blocked attention's scratch */
    bool attn_reference; /* EXPERTD_CPU_ATTENTION=reference: one (token, head) at a time */
    float *h;            /* (T, hidden) residual stream */
    float *xn;           /* (T, hidden) normed input of a block */
    float *q;            /* (T, q_dim) */
    float *k;            /* (T, kv_dim) */
    float *v;            /* (T, kv_dim) */
    float *attn;         /* (T, q_dim) */
    float *out;          /* (T, hidden) output of a block before the residual add */
    float *router;       /* (T, n_experts) router probabilities */
    float *router_bias;  /* (n_experts,) the layer's router bias in f32: e_score_correction_bias,
                          * or gpt_oss's router linear bias */
    int32_t *slot_of;    /* (T * top_k,) row in the expert-sorted order of slot t * top_k + j */
    int32_t *expert_rows;/* (n_experts + 1,) start of each expert's rows in sorted order */
    float *xg;           /* (T * top_k, hidden) gathered inputs, expert-sorted */
    float *g;            /* (T * top_k, expert_ffn) */
    float *u;            /* (T * top_k, expert_ffn) */
    float *eo;           /* (T * top_k, hidden) expert outputs, expert-sorted */
    int32_t *moe_pairs;  /* (max_pairs, 3) the step's (expert, first row, row count) token
                            blocks of one MoE layer, expert-major */
    struct xd_expert_weights *moe_w; /* (n_experts,) weights of the experts acquired */
    int moe_sched;       /* enum moe_sched */
    struct xd_cpu_pool *pool; /* MOE_POOL's workers, else NULL */
    int moe_tiles_f, moe_tiles_h; /* row tiles of the gate/up and of the down matrices */
    int moe_prep_in, moe_prep_down; /* enum moe_prep of the gate/up and of the down matrices */
    enum xd_dtype moe_fmt_in, moe_fmt_down; /* their weight formats (the quantized forms') */
    int moe_width_f;     /* columns of g per gate/up item: moe_tile_rows's, or whole q4_K
                          * super-blocks when down is q4_K (its input quantized per 256) */
    int moe_width_h;     /* output rows per down item: moe_tile_rows's */
    void *moe_prep;      /* one allocation holding the three below */
    size_t moe_prep_bytes;
    void *prep_tok;      /* (T, hidden) xn in the gate/up weights' form, made once per token */
    void *prep_in;       /* (T * top_k, hidden) those rows gathered, expert-sorted */
    void *prep_down;     /* (T * top_k, expert_ffn) g in the down weights' form, made by the
                            gate/up item that computed those columns */
    struct xd_cpu_qacts qa_tok, qa_in, qa_down; /* the three as q8/q4/q4k activations */
    enum xd_quant_path qpath;        /* the q8/q4/q4k kernels' path */
    enum xd_mxfp4_path mxpath;       /* the MXFP4 kernels' path */
    float *dg;           /* (T, ffn_max) dense/shared gate */
    float *du;           /* (T, ffn_max) dense/shared up */
    float *logits;       /* (T, vocab) */
    int32_t *route_experts; /* (T, n_moe_layers, top_k) */
    float *route_weights;   /* (T, n_moe_layers, top_k) */
    int32_t *route_pred;    /* (T, n_moe_layers, W) with predict_experts, else NULL */
    int pred_width;         /* W: experts predicted per token and layer */
    float *pred_x;          /* (T, hidden) the next MoE layer's normed input, predicted */
    float *pred_w;          /* (W,) scratch */
};

static void cpu_destroy(void *p)
{
    struct cpu_state *s = p;
    if (!s)
        return;
    float *fbufs[] = {s->k_cache, s->v_cache, s->h,  s->xn, s->q,  s->k,  s->v,  s->attn,
                      s->out,     s->router,  s->xg, s->g,  s->u,  s->eo, s->dg, s->du,
                      s->logits,  s->route_weights, s->pred_x, s->pred_w, s->router_bias};
    for (size_t i = 0; i < sizeof fbufs / sizeof fbufs[0]; i++)
        free(fbufs[i]);
    free(s->tok_seq);
    free(s->tok_pos);
    free(s->attn_items);
    free(s->slot_of);
    free(s->expert_rows);
    free(s->route_experts);
    free(s->route_pred);
    xd_cpu_mla_destroy(s->mla);
    free(s->moe_pairs);
    free(s->moe_w);
    free(s->moe_prep);
    xd_cpu_pool_destroy(s->pool);
    free(s);
}

static void *alloc_f(size_t n, size_t size, int *failed)
{
    void *p = calloc(n ? n : 1, size);
    if (!p)
        *failed = 1;
    return p;
}

/* How a MoE layer's experts are spread over threads. MOE_REGION, the default: one parallel region
 * per layer over work items (expert, token block, block of output rows), dynamically scheduled,
 * with one barrier between gate/up and down; MOE_PER_EXPERT: the experts one after another, each
 * matmul its own parallel region (three fork/joins per expert), kept as the comparison for the
 * benchmarks; EXPERTD_CPU_MOE=per-expert asks for it. Both give the same bits: every output
 * element is computed by one work item, in the matmul's fixed order. */
enum moe_sched { MOE_REGION, MOE_PER_EXPERT, MOE_POOL };

/* EXPERTD_CPU_MOE, read when a backend is created. */
static enum moe_sched moe_sched_from_env(void)
{
    const char *want = getenv("EXPERTD_CPU_MOE");
    if (want && strcmp(want, "per-expert") == 0)
        return MOE_PER_EXPERT;
    if (want && strcmp(want, "pool") == 0)
        return MOE_POOL;
    return MOE_REGION;
}

/* Tokens (rows of one expert) per MoE work item: a multiple of both vector paths' token tiles (6
 * and 4), small enough that the item's inputs (48 x hidden f32) stay in L2 while its weight rows
 * stream past them. */
#define MOE_TOKEN_BLOCK 48
/* Output rows per MoE work item: a multiple of the block formats' 32 (so a gate/up item makes
 * whole blocks of the down matmul's input), from MOE_ROW_TILE up to MOE_ROW_TILE_MAX while every
 * thread still gets MOE_ITEMS_PER_THREAD items of the phase. Wider items stream longer runs of
 * each weight row range: at 32 rows a decode step spent 15-25% more CPU than at 256
 * (bench/results/engine-cpu-decode.md). The width never changes a bit: each output element is
 * still computed whole by one item. */
#define MOE_ROW_TILE 32
#define MOE_ROW_TILE_MAX 256
#define MOE_ITEMS_PER_THREAD 4

/* Rows per item for a phase of rows output rows over n_pairs token blocks. */
static int moe_tile_rows(int rows, int n_pairs)
{
    const int64_t items = (int64_t)omp_get_max_threads() * MOE_ITEMS_PER_THREAD;
    int64_t w = (int64_t)rows * n_pairs / items / MOE_ROW_TILE * MOE_ROW_TILE;
    return w < MOE_ROW_TILE ? MOE_ROW_TILE : w > MOE_ROW_TILE_MAX ? MOE_ROW_TILE_MAX : (int)w;
}

/* Tokens from which a MoE layer's per-token preparation (quantization or deinterleaving, a few
 * microseconds a token) is shared by the threads rather than done by the calling thread before
 * the region: below it the barrier would cost more than it saves (decode steps). */
#define MOE_PREP_SHARED 16

/* Token blocks one MoE layer can have: every expert's partial block plus the whole ones. */
static size_t moe_max_pairs(int n_experts, size_t n_slots)
{
    return (size_t)n_experts + n_slots / MOE_TOKEN_BLOCK + 1;
}

static int cpu_create(struct xd_model *model, const struct xd_engine_opts *opts, void **ret,
                      struct xd_err *err)
{
    const struct xd_model_config *c = &model->config;
    struct cpu_state *s = calloc(1, sizeof *s);
    if (!s)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    s->m = model;
    s->opts = *opts;
    s->moe_sched = moe_sched_from_env();
    const char *attn = getenv("EXPERTD_CPU_ATTENTION");
    s->attn_reference = attn && strcmp(attn, "reference") == 0;
    s->qpath = xd_cpu_quant_path();
    s->mxpath = xd_cpu_mxfp4_path();
    s->kv_dim = c->n_kv_heads * c->head_dim;
    s->q_dim = c->n_heads * c->head_dim;
    s->ffn_max = c->dense_ffn > c->shared_expert_ffn ? c->dense_ffn : c->shared_expert_ffn;
    if (s->ffn_max < 1)
        s->ffn_max = 1;
#ifdef _OPENMP
    if (opts->n_threads > 0)
        omp_set_num_threads(opts->n_threads);
#endif

    const size_t T = (size_t)opts->max_batch_tokens, H = (size_t)c->hidden_size;
    const size_t TK = T * (size_t)c->top_k;
    const size_t kv_elems = c->mla ? 0
                                   : (size_t)c->n_layers * (size_t)opts->n_kv_blocks *
                                         (size_t)opts->block_size * s->kv_dim;
    int failed = 0;
    if (c->mla) {
        int rc = xd_cpu_mla_create(model, opts->n_kv_blocks, opts->block_size,
                                   opts->max_batch_tokens, &s->mla, err);
        if (rc < 0) {
            cpu_destroy(s);
            return rc;
        }
    }
    s->kv_esize = xd_dtype_size(opts->kv_dtype);
    s->k_cache = alloc_f(kv_elems, s->kv_esize, &failed);
    s->v_cache = alloc_f(kv_elems, s->kv_esize, &failed);
    if (failed) {
        cpu_destroy(s);
        return xd_err_set(err, XD_ERR_NOMEM,
                          "KV cache of %d blocks x %d tokens needs %.1f MiB, which could not be "
                          "allocated; lower the number of KV blocks",
                          opts->n_kv_blocks, opts->block_size,
                          2.0 * (double)kv_elems * (double)s->kv_esize / (1 << 20));
    }
    s->tok_seq = alloc_f(T, sizeof(int32_t), &failed);
    s->tok_pos = alloc_f(T, sizeof(int32_t), &failed);
    s->attn_items = alloc_f(T + 1, sizeof(int32_t), &failed);
    s->h = alloc_f(T * H, sizeof(float), &failed);
    s->xn = alloc_f(T * H, sizeof(float), &failed);
    s->q = alloc_f(T * s->q_dim, sizeof(float), &failed);
    s->k = alloc_f(T * s->kv_dim, sizeof(float), &failed);
    s->v = alloc_f(T * s->kv_dim, sizeof(float), &failed);
    s->attn = alloc_f(T * s->q_dim, sizeof(float), &failed);
    s->out = alloc_f(T * H, sizeof(float), &failed);
    s->router = alloc_f(T * c->n_experts, sizeof(float), &failed);
    s->router_bias = alloc_f((size_t)c->n_experts, sizeof(float), &failed);
    s->slot_of = alloc_f(TK, sizeof(int32_t), &failed);
    s->expert_rows = alloc_f((size_t)c->n_experts + 1, sizeof(int32_t), &failed);
    s->xg = alloc_f(TK * H, sizeof(float), &failed);
    s->g = alloc_f(TK * c->expert_ffn, sizeof(float), &failed);
    s->u = alloc_f(TK * c->expert_ffn, sizeof(float), &failed);
    s->eo = alloc_f(TK * H, sizeof(float), &failed);
    s->moe_pairs = alloc_f(moe_max_pairs(c->n_experts, TK) * 3, sizeof(int32_t), &failed);
    s->moe_w = alloc_f((size_t)c->n_experts, sizeof(struct xd_expert_weights), &failed);
    s->dg = alloc_f(T * s->ffn_max, sizeof(float), &failed);
    s->du = alloc_f(T * s->ffn_max, sizeof(float), &failed);
    s->logits = alloc_f(T * c->vocab_size, sizeof(float), &failed);
    s->route_experts = alloc_f(TK * (c->n_moe_layers ? c->n_moe_layers : 1), sizeof(int32_t),
                               &failed);
    s->route_weights = alloc_f(TK * (c->n_moe_layers ? c->n_moe_layers : 1), sizeof(float),
                               &failed);
    if (opts->predict_experts && c->n_moe_layers > 0) {
        s->pred_width = opts->predict_width;
        s->route_pred = alloc_f(T * (size_t)s->pred_width * c->n_moe_layers, sizeof(int32_t),
                                &failed);
        s->pred_x = alloc_f(T * H, sizeof(float), &failed);
        s->pred_w = alloc_f((size_t)s->pred_width, sizeof(float), &failed);
    }
    if (failed) {
        cpu_destroy(s);
        return xd_err_set(err, XD_ERR_NOMEM,
                          "step buffers for max_batch_tokens %d could not be allocated; lower it",
                          opts->max_batch_tokens);
    }
    if (s->moe_sched == MOE_POOL) {
        int n_threads = opts->n_threads;
#ifdef _OPENMP
        if (n_threads <= 0)
            n_threads = omp_get_max_threads();
#endif
        if (xd_cpu_pool_create(n_threads, &s->pool) < 0) {
            cpu_destroy(s);
            return xd_err_set(err, XD_ERR_NOMEM, "the CPU thread pool could not be started");
        }
    }
    *ret = s;
    return XD_OK;
}

/* ---- attention ---- */

/* A layer's cache (attention.h's layout, kv_esize bytes an element). */
static void *kv_layer(const struct cpu_state *s, void *cache, int layer)
{
    return (char *)cache +
           (size_t)layer * s->opts.n_kv_blocks * s->opts.block_size * s->kv_dim * s->kv_esize;
}

/* One token's values (n_kv_heads * head_dim floats) into slot of block of a layer's value
 * cache, each head's head_dim in its place, or its keys into the key cache, each head's
 * dimensions block_size apart (attention.h's layouts), in the cache's element type. */
static void kv_store(const struct cpu_state *s, void *layer_cache, int block, int slot,
                     const float *src, bool keys)
{
    const struct xd_model_config *c = &s->m->config;
    const int hd = c->head_dim, bs = s->opts.block_size, kvd = s->kv_dim;
    const bool wide = s->opts.kv_dtype == XD_DTYPE_F32;
    uint16_t narrow[wide ? 1 : kvd];
    if (!wide)
        xd_cpu_f32_to_16(s->opts.kv_dtype, src, narrow, (size_t)kvd);
    for (int h = 0; h < c->n_kv_heads; h++) {
        const size_t head = (size_t)block * c->n_kv_heads + h;
        const float *x = src + (size_t)h * hd;
        const uint16_t *xn = narrow + (wide ? 0 : (size_t)h * hd);
        if (keys) {
            const size_t at = head * hd * bs + slot;
            for (int d = 0; d < hd; d++) {
                if (wide)
                    ((float *)layer_cache)[at + (size_t)d * bs] = x[d];
                else
                    ((uint16_t *)layer_cache)[at + (size_t)d * bs] = xn[d];
            }
        } else if (wide) {
            memcpy((float *)layer_cache + (head * bs + slot) * hd, x, sizeof(float) * (size_t)hd);
        } else {
            memcpy((uint16_t *)layer_cache + (head * bs + slot) * hd, xn,
                   sizeof(uint16_t) * (size_t)hd);
        }
    }
}

/* Writes this step's k and v into the cache through each sequence's block
 * table, then attends every query to the positions up to its own (the last sliding_window of
 * them unless the layer is a full-attention one). With sinks (gpt_oss) each head's sink logit
 * joins the softmax's denominator and adds nothing to its output. Blocked (attention.c) unless
 * EXPERTD_CPU_ATTENTION=reference asks for the loop it replaced. */
static void attention(struct cpu_state *s, const struct xd_batch *b, int layer, int n_tokens)
{
    const struct xd_model_config *c = &s->m->config;
    const int bs = s->opts.block_size, kvd = s->kv_dim;
    const struct xd_matrix *sink_w = &s->m->layers[layer].sinks;
    float sinks[c->n_heads]; /* (n_heads,) */
    if (sink_w->data)
        xd_dtype_to_f32(sink_w->dtype, sink_w->data, sinks, (size_t)c->n_heads);

    for (int t = 0; t < n_tokens; t++) {
        const struct xd_seq_chunk *sc = &b->seqs[s->tok_seq[t]];
        int p = s->tok_pos[t];
        int block = sc->block_table[p / bs], slot = p % bs;
        kv_store(s, kv_layer(s, s->k_cache, layer), block, slot, s->k + (size_t)t * kvd, true);
        kv_store(s, kv_layer(s, s->v_cache, layer), block, slot, s->v + (size_t)t * kvd, false);
    }
    const struct xd_cpu_attn a = {
        .k_cache = kv_layer(s, s->k_cache, layer),
        .v_cache = kv_layer(s, s->v_cache, layer),
        .kv_dtype = s->opts.kv_dtype,
        .block_size = bs,
        .n_heads = c->n_heads,
        .n_kv_heads = c->n_kv_heads,
        .head_dim = c->head_dim,
        .scale = c->attn_scale, /* 1 / sqrt(head_dim), or granitemoe's attention_multiplier */
        .window = c->full_attention_layer[layer] ? 0 : c->sliding_window,
        .sinks = sink_w->data ? sinks : NULL,
    };
    if (s->attn_reference)
        xd_cpu_attention_reference(&a, b, s->q, s->attn);
    else
        xd_cpu_attention(&a, b, s->q, s->attn, s->attn_items);
}

/* h (n) += out (n), times granitemoe's residual_multiplier first (as transformers: residual +
 * hidden_states * residual_multiplier) when it is not 1. */
static void add_residual(const struct xd_model_config *c, float *h, const float *out, size_t n)
{
    const float rm = c->residual_multiplier;
    if (rm != 1.0f) {
        for (size_t i = 0; i < n; i++)
            h[i] += out[i] * rm;
        return;
    }
    for (size_t i = 0; i < n; i++)
        h[i] += out[i];
}

static void attention_block(struct cpu_state *s, const struct xd_batch *b, int l, int n)
{
    const struct xd_model_config *c = &s->m->config;
    const struct xd_layer_weights *lw = &s->m->layers[l];
    const int hd = c->head_dim;
    const size_t HN = (size_t)n * c->hidden_size;

    xd_cpu_rmsnorm(s->h, n, &lw->attn_norm, c->rms_norm_eps, s->xn);
    if (s->mla) {
        xd_cpu_mla_forward(s->mla, b, s->tok_seq, s->tok_pos, l, s->xn, n, s->out);
        for (size_t i = 0; i < HN; i++)
            s->h[i] += s->out[i];
        return;
    }
    /* q, k and v in one parallel region (one barrier, not three) */
    const struct xd_matrix *qkv[3] = {&lw->wq, &lw->wk, &lw->wv};
    float *const qkv_out[3] = {s->q, s->k, s->v};
    xd_cpu_matmul_multi(s->xn, n, 3, qkv, qkv_out);
    xd_cpu_add_bias(s->q, n, &lw->bq);
    xd_cpu_add_bias(s->k, n, &lw->bk);
    xd_cpu_add_bias(s->v, n, &lw->bv);
    if (c->qk_norm == XD_QK_NORM_PER_HEAD && !c->qk_norm_after_rope) {
        xd_cpu_rmsnorm(s->q, n * c->n_heads, &lw->q_norm, c->rms_norm_eps, s->q);
        xd_cpu_rmsnorm(s->k, n * c->n_kv_heads, &lw->k_norm, c->rms_norm_eps, s->k);
    } else if (c->qk_norm == XD_QK_NORM_FULL_WIDTH) {
        xd_cpu_rmsnorm(s->q, n, &lw->q_norm, c->rms_norm_eps, s->q);
        xd_cpu_rmsnorm(s->k, n, &lw->k_norm, c->rms_norm_eps, s->k);
    }
    if (c->clip_qkv > 0.0f) {
        float *bufs[3] = {s->q, s->k, s->v};
        size_t lens[3] = {(size_t)n * s->q_dim, (size_t)n * s->kv_dim, (size_t)n * s->kv_dim};
        for (int i = 0; i < 3; i++)
            for (size_t j = 0; j < lens[i]; j++)
                bufs[i][j] = fminf(fmaxf(bufs[i][j], -c->clip_qkv), c->clip_qkv);
    }
    /* ernie4_5_moe rotates adjacent pairs, the others rotate halves */
    void (*rope)(float *, int, int, int, const struct xd_rope *) =
        c->rope_layout == XD_ROPE_PAIRS ? xd_cpu_rope_pairs : xd_cpu_rope;
    for (int t = 0; t < n; t++) {
        rope(s->q + (size_t)t * s->q_dim, c->n_heads, hd, s->tok_pos[t], &c->rope);
        rope(s->k + (size_t)t * s->kv_dim, c->n_kv_heads, hd, s->tok_pos[t], &c->rope);
    }
    if (c->qk_norm == XD_QK_NORM_PER_HEAD && c->qk_norm_after_rope) { /* hunyuan_v1_moe */
        xd_cpu_rmsnorm(s->q, n * c->n_heads, &lw->q_norm, c->rms_norm_eps, s->q);
        xd_cpu_rmsnorm(s->k, n * c->n_kv_heads, &lw->k_norm, c->rms_norm_eps, s->k);
    }
    attention(s, b, l, n);
    xd_cpu_matmul(s->attn, n, &lw->wo, s->out);
    xd_cpu_add_bias(s->out, n, &lw->bo);
    add_residual(c, s->h, s->out, HN);
}

/* ---- MLPs ---- */

/* out (n, hidden) = down(silu(gate x) * up x) for a SwiGLU MLP of width ffn; with biases
 * and the config's swiglu_limit (gpt_oss), down(clamped_swiglu(gate x + bg, up x + bu)) + bd. */
static void swiglu(const struct xd_model_config *c, const float *x, int n,
                   const struct xd_expert_weights *w, float *g, float *u, float *out)
{
    const struct xd_matrix *gu[2] = {&w->gate, &w->up};
    float *const gu_out[2] = {g, u};
    xd_cpu_matmul_multi(x, n, 2, gu, gu_out); /* one parallel region for both */
    xd_cpu_add_bias(g, n, &w->gate_bias);
    xd_cpu_add_bias(u, n, &w->up_bias);
    if (c->swiglu_limit > 0.0f)
        xd_cpu_clamped_swiglu(g, u, g, (size_t)n * w->gate.rows, c->swiglu_limit,
                              c->swiglu_alpha);
    else
        xd_cpu_silu_mul(g, u, g, (size_t)n * w->gate.rows);
    xd_cpu_matmul(g, n, &w->down, out);
    xd_cpu_add_bias(out, n, &w->down_bias);
}

/* What the MoE work items make of their input rows once, before the row tiles read them: nothing
 * for f32/bf16/f16 weights, the int8 blocks of xd_cpu_qacts for q8/q4, the deinterleaved rows
 * of xd_cpu_mxfp4_prep for MXFP4. Every form is made token by token, so it is the same bytes
 * whatever else shares the step. */
enum moe_prep { PREP_NONE, PREP_QUANT, PREP_MXFP4 };

static enum moe_prep moe_prep_of(enum xd_dtype dt)
{
    return xd_dtype_is_quant(dt) ? PREP_QUANT : dt == XD_DTYPE_MXFP4 ? PREP_MXFP4 : PREP_NONE;
}

/* Rows [c0, c1) of y (nr, w.rows) for rows first .. first + nr - 1 of x (those of the expert's
 * token block), from x itself (f32/bf16/f16 weights) or from its prepared form: qa (q8/q4) or
 * mx (MXFP4, deinterleaved rows). */
static void moe_matmul_rows(const struct cpu_state *s, int kind, const struct xd_cpu_qacts *qa,
                            const float *mx, const float *x, int first, int nr,
                            const struct xd_matrix *w, float *y, int64_t c0, int64_t c1)
{
    if (kind == PREP_QUANT) {
        const struct xd_cpu_qacts v = xd_cpu_qacts_view(qa, first, nr);
        xd_cpu_matmul_quant_rows(&v, w, y, c0, c1, s->qpath);
    } else if (kind == PREP_MXFP4) {
        xd_cpu_matmul_mxfp4_rows(mx + (size_t)first * w->cols, nr, w, y, c0, c1, s->mxpath);
    } else {
        xd_cpu_matmul_rows(x + (size_t)first * w->cols, nr, w, y, c0, c1);
    }
}

/* Work item i of the gate/up phase: token block i / tiles_f, row tile i % tiles_f. Gate and up
 * rows [c0, c1) of the block, their biases, then the activation (silu(gate) * up, or gpt_oss's
 * clamped SwiGLU) on those columns: g (nr, ffn) holds the result, u (nr, ffn) is scratch. The
 * same operations per element as swiglu. */
static void moe_item_gate_up(void *ctx, int i)
{
    struct cpu_state *s = ctx;
    const struct xd_model_config *c = &s->m->config;
    const int F = c->expert_ffn;
    const int32_t *pr = s->moe_pairs + 3 * (i / s->moe_tiles_f);
    const struct xd_expert_weights *w = &s->moe_w[pr[0]];
    const int first = pr[1], nr = pr[2];
    const int64_t c0 = (int64_t)(i % s->moe_tiles_f) * s->moe_width_f;
    const int64_t c1 = c0 + s->moe_width_f < F ? c0 + s->moe_width_f : F;
    float *g = s->g + (size_t)first * F, *u = s->u + (size_t)first * F;
    moe_matmul_rows(s, s->moe_prep_in, &s->qa_in, s->prep_in, s->xg, first, nr, &w->gate, g, c0,
                    c1);
    moe_matmul_rows(s, s->moe_prep_in, &s->qa_in, s->prep_in, s->xg, first, nr, &w->up, u, c0,
                    c1);
    xd_cpu_add_bias_cols(g, nr, F, &w->gate_bias, c0, c1);
    xd_cpu_add_bias_cols(u, nr, F, &w->up_bias, c0, c1);
    for (int t = 0; t < nr; t++) {
        float *gt = g + (size_t)t * F + c0, *ut = u + (size_t)t * F + c0;
        if (c->swiglu_limit > 0.0f)
            xd_cpu_clamped_swiglu(gt, ut, gt, (size_t)(c1 - c0), c->swiglu_limit,
                                  c->swiglu_alpha);
        else
            xd_cpu_silu_mul(gt, ut, gt, (size_t)(c1 - c0));
        /* the down matmul's input for these columns, while they are in cache (whole blocks of
         * 32: the tile is a multiple of 32 wide whenever down is in a block format, of 256
         * when it is q4_K) */
        if (s->moe_prep_down == PREP_QUANT)
            xd_cpu_qacts_quantize_blocks(&s->qa_down, first + t, g + (size_t)t * F,
                                         c0 / XD_QBLOCK, c1 / XD_QBLOCK);
        else if (s->moe_prep_down == PREP_MXFP4)
            xd_cpu_mxfp4_prep(gt, 1, c1 - c0,
                              (float *)s->prep_down + (size_t)(first + t) * F + c0);
    }
}

/* Work item i of the down phase: token block i / tiles_h, row tile i % tiles_h, and the down
 * bias on those columns. */
static void moe_item_down(void *ctx, int i)
{
    struct cpu_state *s = ctx;
    const int H = s->m->config.hidden_size;
    const int32_t *pr = s->moe_pairs + 3 * (i / s->moe_tiles_h);
    const struct xd_expert_weights *w = &s->moe_w[pr[0]];
    const int first = pr[1], nr = pr[2];
    const int64_t c0 = (int64_t)(i % s->moe_tiles_h) * s->moe_width_h;
    const int64_t c1 = c0 + s->moe_width_h < H ? c0 + s->moe_width_h : H;
    float *eo = s->eo + (size_t)first * H;
    moe_matmul_rows(s, s->moe_prep_down, &s->qa_down, s->prep_down, s->g, first, nr, &w->down,
                    eo, c0, c1);
    xd_cpu_add_bias_cols(eo, nr, H, &w->down_bias, c0, c1);
}

/* Token t of xn into the gate/up weights' form, once, then copied to each of its top_k rows of
 * the expert-sorted input: phase one of the region, and the pool's items. */
static void moe_item_prep_token(void *ctx, int t)
{
    struct cpu_state *s = ctx;
    const int H = s->m->config.hidden_size, K = s->m->config.top_k;
    const int32_t *slots = s->slot_of + (size_t)t * K;
    if (s->moe_prep_in == PREP_QUANT) {
        xd_cpu_qacts_quantize(&s->qa_tok, s->xn, t, t + 1);
        for (int j = 0; j < K; j++)
            xd_cpu_qacts_copy_token(&s->qa_in, slots[j], &s->qa_tok, t);
    } else {
        float *tok = (float *)s->prep_tok + (size_t)t * H;
        xd_cpu_mxfp4_prep(s->xn + (size_t)t * H, 1, H, tok);
        for (int j = 0; j < K; j++)
            memcpy((float *)s->prep_in + (size_t)slots[j] * H, tok, sizeof(float) * H);
    }
}

/* Bytes of n rows of cols values in the form kind (64-byte multiples, so the pieces of one
 * allocation stay aligned). */
static size_t prep_bytes(int kind, enum xd_dtype fmt, int n, int64_t cols)
{
    size_t b = kind == PREP_QUANT   ? xd_cpu_qacts_bytes(fmt, n, cols)
               : kind == PREP_MXFP4 ? (size_t)n * (size_t)cols * sizeof(float)
                                    : 0;
    return (b + 63) & ~(size_t)63;
}

/* Sizes s->moe_prep for n tokens and n_rows expert rows in the forms the layer needs and lays the
 * three pieces over it; XD_ERR_NOMEM (naming the size) when it cannot grow. */
static int moe_prep_setup(struct cpu_state *s, int n, int n_rows, struct xd_err *err)
{
    const int64_t H = s->m->config.hidden_size, F = s->m->config.expert_ffn;
    const size_t b_tok = prep_bytes(s->moe_prep_in, s->moe_fmt_in, n, H);
    const size_t b_in = prep_bytes(s->moe_prep_in, s->moe_fmt_in, n_rows, H);
    const size_t b_down = prep_bytes(s->moe_prep_down, s->moe_fmt_down, n_rows, F);
    const size_t need = b_tok + b_in + b_down;
    if (need > s->moe_prep_bytes) {
        void *p = NULL;
        free(s->moe_prep);
        s->moe_prep = NULL;
        s->moe_prep_bytes = 0;
        if (posix_memalign(&p, 64, need) != 0)
            return xd_err_set(err, XD_ERR_NOMEM,
                              "MoE activation scratch of %.1f MiB could not be allocated; lower "
                              "max_batch_tokens",
                              (double)need / (1 << 20));
        s->moe_prep = p;
        s->moe_prep_bytes = need;
    }
    s->prep_tok = s->moe_prep;
    s->prep_in = (char *)s->moe_prep + b_tok;
    s->prep_down = (char *)s->moe_prep + b_tok + b_in;
    if (s->moe_prep_in == PREP_QUANT) {
        xd_cpu_qacts_init(s->prep_tok, s->moe_fmt_in, n, H, &s->qa_tok);
        xd_cpu_qacts_init(s->prep_in, s->moe_fmt_in, n_rows, H, &s->qa_in);
    }
    if (s->moe_prep_down == PREP_QUANT)
        xd_cpu_qacts_init(s->prep_down, s->moe_fmt_down, n_rows, F, &s->qa_down);
    return XD_OK;
}

/* Runs the experts of MoE layer l over the expert-sorted rows of its n tokens (s->slot_of,
 * s->expert_rows; input s->xn) into s->eo. The experts present are acquired from the store
 * before any runs and released after all have. Every schedule gives the same bits: each output
 * element is computed by one work item (or one matmul) in its kernel's fixed order, from the
 * same per-token activations. */
static int run_experts(struct cpu_state *s, int l, int n, struct xd_err *err)
{
    const struct xd_model_config *c = &s->m->config;
    const int E = c->n_experts, H = c->hidden_size, F = c->expert_ffn, K = c->top_k;
    const int32_t *rows = s->expert_rows;
    int rc = XD_OK, n_acquired = 0;
    int32_t present[E];
    for (int e = 0; e < E; e++) {
        if (rows[e + 1] == rows[e])
            continue;
        rc = xd_expert_store_acquire(&s->m->experts, l, e, &s->moe_w[e]);
        if (rc < 0) {
            xd_err_set(err, rc, "expert store: layer %d expert %d is unavailable (%s)", l, e,
                       xd_status_str(rc));
            break;
        }
        present[n_acquired++] = e;
    }

    /* the items' inputs are prepared once per phase for one weight format: the first expert's
     * (gate and up of every expert share it, as do all the downs; model.c never mixes them) */
    int uniform = 1;
    s->moe_prep_in = s->moe_prep_down = PREP_NONE;
    if (n_acquired) {
        const struct xd_expert_weights *w0 = &s->moe_w[present[0]];
        for (int i = 0; i < n_acquired; i++) {
            const struct xd_expert_weights *w = &s->moe_w[present[i]];
            uniform &= w->gate.dtype == w0->gate.dtype && w->up.dtype == w0->gate.dtype &&
                       w->down.dtype == w0->down.dtype;
        }
        if (uniform && s->moe_sched != MOE_PER_EXPERT) {
            s->moe_prep_in = moe_prep_of(w0->gate.dtype);
            s->moe_prep_down = moe_prep_of(w0->down.dtype);
            s->moe_fmt_in = w0->gate.dtype;
            s->moe_fmt_down = w0->down.dtype;
        }
        if (rc == XD_OK)
            rc = moe_prep_setup(s, n, rows[E], err);
    }
    const bool per_expert = s->moe_sched == MOE_PER_EXPERT || !uniform;
    /* the f32 rows, where a kernel reads them: f32/bf16/f16 experts and the per-expert schedule
     * (whose matmuls quantize or deinterleave for themselves) */
    if (rc == XD_OK && s->moe_prep_in == PREP_NONE)
        for (int t = 0; t < n; t++)
            for (int j = 0; j < K; j++)
                memcpy(s->xg + (size_t)s->slot_of[t * K + j] * H, s->xn + (size_t)t * H,
                       sizeof(float) * H);
    if (rc == XD_OK && per_expert) {
        /* the comparison schedule (and a store mixing formats, which no loader makes) */
        for (int i = 0; i < n_acquired; i++) {
            int e = present[i], r0 = rows[e];
            swiglu(c, s->xg + (size_t)r0 * H, rows[e + 1] - r0, &s->moe_w[e], s->g, s->u,
                   s->eo + (size_t)r0 * H);
        }
    } else if (rc == XD_OK) {
        /* token blocks (expert, first row, rows), expert-major; an item is one block x one tile
         * of output rows: item i = block i / tiles, tile i % tiles */
        int32_t *pairs = s->moe_pairs;
        int n_pairs = 0;
        for (int i = 0; i < n_acquired; i++) {
            int e = present[i];
            for (int r = rows[e]; r < rows[e + 1]; r += MOE_TOKEN_BLOCK) {
                pairs[3 * n_pairs] = e;
                pairs[3 * n_pairs + 1] = r;
                pairs[3 * n_pairs + 2] =
                    rows[e + 1] - r < MOE_TOKEN_BLOCK ? rows[e + 1] - r : MOE_TOKEN_BLOCK;
                n_pairs++;
            }
        }
        s->moe_width_f = s->moe_prep_down == PREP_QUANT && s->moe_fmt_down == XD_DTYPE_Q4_K
                             ? XD_QK
                             : moe_tile_rows(F, n_pairs);
        s->moe_width_h = moe_tile_rows(H, n_pairs);
        const int tiles_f = (F + s->moe_width_f - 1) / s->moe_width_f;
        const int tiles_h = (H + s->moe_width_h - 1) / s->moe_width_h;
        const int n_items_f = n_pairs * tiles_f, n_items_h = n_pairs * tiles_h;
        /* the per-token preparation in the region (a barrier more) only when it is worth
         * sharing: a decode step's few tokens are prepared here, so its region has the one
         * barrier between gate/up and down */
        const int prep_in = s->moe_prep_in != PREP_NONE;
        const int prep_shared = prep_in && n >= MOE_PREP_SHARED;
        if (prep_in && !prep_shared)
            for (int t = 0; t < n; t++)
                moe_item_prep_token(s, t);
        s->moe_tiles_f = tiles_f;
        s->moe_tiles_h = tiles_h;
        if (s->pool) {
            if (prep_shared)
                xd_cpu_pool_run(s->pool, n, moe_item_prep_token, s);
            xd_cpu_pool_run(s->pool, n_items_f, moe_item_gate_up, s);
            xd_cpu_pool_run(s->pool, n_items_h, moe_item_down, s);
        } else {
#pragma omp parallel
            {
                /* each phase's implied barrier: its inputs are complete before the next reads
                 * them (the prepared rows, then g and its prepared form) */
                if (prep_shared) {
#pragma omp for schedule(static)
                    for (int t = 0; t < n; t++)
                        moe_item_prep_token(s, t);
                }
#pragma omp for schedule(dynamic, 1)
                for (int i = 0; i < n_items_f; i++)
                    moe_item_gate_up(s, i);
#pragma omp for schedule(dynamic, 1)
                for (int i = 0; i < n_items_h; i++)
                    moe_item_down(s, i);
            }
        }
    }
    for (int i = 0; i < n_acquired; i++)
        xd_expert_store_release(&s->m->experts, l, present[i]);
    return rc;
}

static int moe_block(struct cpu_state *s, int l, int n, struct xd_err *err)
{
    const struct xd_model_config *c = &s->m->config;
    const struct xd_layer_weights *lw = &s->m->layers[l];
    const int E = c->n_experts, K = c->top_k, H = c->hidden_size, L = c->n_moe_layers;

    /* route in f32 as the family's router does (engine/cpu/moe_router.c, which calls
     * routing.c for the grouped sigmoid router) */
    xd_cpu_matmul(s->xn, n, &lw->router, s->router);
    const float *bias = NULL;
    if (lw->router_bias.data) {
        xd_dtype_to_f32(lw->router_bias.dtype, lw->router_bias.data, s->router_bias, (size_t)E);
        bias = s->router_bias;
    }
    /* each token alone (as the weighted sum below): a split over threads changes no bit, and a
     * long prefill's per-token loops no longer leave the other threads waiting */
#pragma omp parallel for schedule(static) if (n >= MOE_PREP_SHARED)
    for (int t = 0; t < n; t++)
        xd_cpu_moe_route(c, s->router + (size_t)t * E, bias,
                         s->route_experts + ((size_t)t * L + lw->moe_index) * K,
                         s->route_weights + ((size_t)t * L + lw->moe_index) * K);

    /* group the (token, slot) pairs by expert with a counting sort */
    int32_t *rows = s->expert_rows;
    memset(rows, 0, sizeof(int32_t) * (E + 1));
    for (int t = 0; t < n; t++)
        for (int j = 0; j < K; j++)
            rows[s->route_experts[((size_t)t * L + lw->moe_index) * K + j] + 1]++;
    for (int e = 0; e < E; e++)
        rows[e + 1] += rows[e];
    int32_t fill[E];
    memcpy(fill, rows, sizeof fill);
    for (int t = 0; t < n; t++) {
        for (int j = 0; j < K; j++) {
            int e = s->route_experts[((size_t)t * L + lw->moe_index) * K + j];
            int r = fill[e]++;
            s->slot_of[t * K + j] = r;
        }
    }

    int rc = run_experts(s, l, n, err);
    if (rc < 0)
        return rc;

    /* weighted sum back, in each token's top-k order so batching never matters */
#pragma omp parallel for schedule(static) if (n >= MOE_PREP_SHARED)
    for (int t = 0; t < n; t++) {
        float *o = s->out + (size_t)t * H;
        const float *wt = s->route_weights + ((size_t)t * L + lw->moe_index) * K;
        memset(o, 0, sizeof(float) * H);
        for (int j = 0; j < K; j++) {
            const float *er = s->eo + (size_t)s->slot_of[t * K + j] * H;
            for (int i = 0; i < H; i++)
                o[i] += wt[j] * er[i];
        }
    }

    if (lw->shared.gate.data && !lw->shared_expert_gate.data) {
        /* deepseek, glm4_moe, dots1, granitemoeshared: out += shared_experts(x) */
        swiglu(c, s->xn, n, &lw->shared, s->dg, s->du, s->eo);
        const size_t HN = (size_t)n * H;
        for (size_t i = 0; i < HN; i++)
            s->out[i] += s->eo[i];
    } else if (lw->shared.gate.data) {
        /* qwen2_moe: out += sigmoid(x . shared_expert_gate) * shared_expert(x) */
        float gate_logit[n];
        swiglu(c, s->xn, n, &lw->shared, s->dg, s->du, s->eo);
        xd_cpu_matmul(s->xn, n, &lw->shared_expert_gate, gate_logit);
        for (int t = 0; t < n; t++) {
            float gate = 1.0f / (1.0f + expf(-gate_logit[t]));
            for (int i = 0; i < H; i++)
                s->out[(size_t)t * H + i] += gate * s->eo[(size_t)t * H + i];
        }
    }
    return XD_OK;
}

/* Lookahead: the experts the next MoE layer after l would pick if its input were the residual
 * stream now (at layer l's MLP input). Run before layer l's experts, so that a prefetcher could
 * copy them while layer l computes. Uses s->router as scratch before moe_block fills it. */
static void predict_next_layer(struct cpu_state *s, int l, int n)
{
    const struct xd_model_config *c = &s->m->config;
    int next = l + 1;
    while (next < c->n_layers && s->m->layers[next].moe_index < 0)
        next++;
    if (next >= c->n_layers)
        return;
    const struct xd_layer_weights *nw = &s->m->layers[next];
    const int E = c->n_experts, W = s->pred_width, L = c->n_moe_layers;
    xd_cpu_rmsnorm(s->h, n, &nw->mlp_norm, c->rms_norm_eps, s->pred_x);
    xd_cpu_matmul(s->pred_x, n, &nw->router, s->router);
    const float *bias = NULL;
    if (nw->router_bias.data) {
        xd_dtype_to_f32(nw->router_bias.dtype, nw->router_bias.data, s->router_bias, (size_t)E);
        bias = s->router_bias;
    }
    for (int t = 0; t < n; t++)
        xd_cpu_moe_rank(c, s->router + (size_t)t * E, bias, W,
                        s->route_pred + ((size_t)t * L + nw->moe_index) * W, s->pred_w);
}

static int mlp_block(struct cpu_state *s, int l, int n, struct xd_err *err)
{
    const struct xd_model_config *c = &s->m->config;
    const struct xd_layer_weights *lw = &s->m->layers[l];
    xd_cpu_rmsnorm(s->h, n, &lw->mlp_norm, c->rms_norm_eps, s->xn);
    if (lw->moe_index >= 0) {
        if (s->route_pred) {
            if (lw->moe_index == 0)
                for (size_t i = 0; i < (size_t)n * c->n_moe_layers * s->pred_width; i++)
                    s->route_pred[i] = -1; /* the first MoE layer is never predicted */
            predict_next_layer(s, l, n);
        }
        int rc = moe_block(s, l, n, err);
        if (rc < 0)
            return rc;
    } else {
        struct xd_expert_weights dense = {.gate = lw->mlp_gate, .up = lw->mlp_up,
                                          .down = lw->mlp_down};
        swiglu(c, s->xn, n, &dense, s->dg, s->du, s->out);
    }
    add_residual(c, s->h, s->out, (size_t)n * c->hidden_size);
    return XD_OK;
}

/* ---- the step ---- */

static int cpu_forward(void *p, const struct xd_batch *b, struct xd_forward_out *ret,
                       struct xd_err *err)
{
    struct cpu_state *s = p;
    const struct xd_model_config *c = &s->m->config;
    const int H = c->hidden_size;
    int n = 0;
#ifdef _OPENMP
    /* The thread count is a per-thread OpenMP setting: the daemon's scheduler thread is not the
     * thread that created the backend, so set it on the thread that runs the step. */
    if (s->opts.n_threads > 0)
        omp_set_num_threads(s->opts.n_threads);
#endif

    for (int i = 0; i < b->n_seqs; i++) {
        const struct xd_seq_chunk *sc = &b->seqs[i];
        for (int t = 0; t < sc->n_tokens; t++, n++) {
            s->tok_seq[n] = i;
            s->tok_pos[n] = sc->pos + t;
            struct xd_matrix row = s->m->embed;
            row.data = (const char *)row.data +
                       (size_t)sc->tokens[t] * (size_t)H * xd_dtype_size(row.dtype);
            xd_dtype_to_f32(row.dtype, row.data, s->h + (size_t)n * H, (size_t)H);
            if (c->embedding_multiplier != 1.0f) /* granitemoe */
                for (int i = 0; i < H; i++)
                    s->h[(size_t)n * H + i] *= c->embedding_multiplier;
        }
    }

    for (int l = 0; l < c->n_layers; l++) {
        attention_block(s, b, l, n);
        int rc = mlp_block(s, l, n, err);
        if (rc < 0)
            return rc;
    }

    /* final norm and lm_head only for the rows whose logits were asked for */
    int n_rows = 0, t0 = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        const struct xd_seq_chunk *sc = &b->seqs[i];
        int first = sc->logits == XD_LOGITS_ALL    ? 0
                    : sc->logits == XD_LOGITS_LAST ? sc->n_tokens - 1
                                                   : sc->n_tokens;
        for (int t = first; t < sc->n_tokens; t++)
            memcpy(s->xn + (size_t)n_rows++ * H, s->h + (size_t)(t0 + t) * H, sizeof(float) * H);
        t0 += sc->n_tokens;
    }
    xd_cpu_rmsnorm(s->xn, n_rows, &s->m->final_norm, c->rms_norm_eps, s->xn);
    xd_cpu_matmul(s->xn, n_rows, &s->m->lm_head, s->logits);
    if (c->logits_scaling != 1.0f) /* granitemoe: logits / logits_scaling, a division as there */
        for (size_t i = 0; i < (size_t)n_rows * c->vocab_size; i++)
            s->logits[i] /= c->logits_scaling;

    ret->logits = s->logits;
    ret->n_logit_rows = n_rows;
    ret->routing.n_tokens = n;
    ret->routing.n_moe_layers = c->n_moe_layers;
    ret->routing.top_k = c->top_k;
    ret->routing.experts = s->route_experts;
    ret->routing.weights = s->route_weights;
    ret->routing.predicted = s->route_pred;
    ret->routing.predicted_width = s->pred_width;
    return XD_OK;
}

const struct xd_backend_ops xd_cpu_backend = {
    .name = "cpu",
    .create = cpu_create,
    .forward = cpu_forward,
    .destroy = cpu_destroy,
};
