/* Model loading: maps a checkpoint and checks every tensor against the config. */
#include "engine/model/model.h"

#include "engine/model/mxfp4.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/base/clock.h"
#include "engine/model/fp8.h"
#include "engine/model/quant.h"

static void drop_pages(const void *p, size_t len);

/* ---- the host expert store: views straight into the mapped checkpoint ---- */

struct host_experts {
    int n_layers;
    int n_experts;
    struct xd_expert_weights *w; /* (n_layers, n_experts); zeroed for dense layers */
    char *repacked;              /* gpt_oss: the experts' weights in expertd's layout, owned
                                  * (see load_gpt_oss_experts), else NULL */
    size_t repacked_used;
};

static int host_acquire(void *ctx, int layer, int expert, struct xd_expert_weights *ret)
{
    struct host_experts *h = ctx;
    if (layer < 0 || layer >= h->n_layers || expert < 0 || expert >= h->n_experts)
        return XD_ERR_INVALID;
    const struct xd_expert_weights *w = &h->w[(size_t)layer * h->n_experts + expert];
    if (!w->gate.data)
        return XD_ERR_INVALID;
    *ret = *w;
    return XD_OK;
}

static void host_destroy(void *ctx)
{
    struct host_experts *h = ctx;
    if (h) {
        free(h->w);
        free(h->repacked);
    }
    free(h);
}

static const struct xd_expert_store_ops host_expert_ops = {
    .acquire = host_acquire,
    .release = NULL,
    .destroy = host_destroy,
};

/* ---- tensor lookup with shape checks ---- */

struct loader {
    struct xd_model *m;
    struct xd_err *err;
    char name[256];
};

static const char *fmt_name(struct loader *L, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static const char *fmt_name(struct loader *L, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(L->name, sizeof L->name, fmt, ap);
    va_end(ap);
    return L->name;
}

static void fmt_shape(char *buf, size_t n, const int64_t *shape, int n_dims)
{
    size_t off = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < n_dims && off < n; i++)
        off += (size_t)snprintf(buf + off, n - off, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (off < n)
        snprintf(buf + off, n - off, "]");
}

/* Finds tensor `name` with the exact shape dims (n_dims of them). */
static int find_shaped(struct loader *L, const char *name, int n_dims, const int64_t *dims,
                       const struct xd_tensor **ret)
{
    const struct xd_tensor *t = xd_checkpoint_find(L->m->checkpoint, name);
    if (!t)
        return xd_err_set(L->err, XD_ERR_TENSOR, "%s: tensor '%s' is missing (model_type %s)",
                          L->m->dir, name, L->m->config.model_type);
    /* U8 is read for MXFP4's _blocks and _scales only: a weight stored as bytes is not one
     * expertd can compute */
    const size_t len = strlen(name);
    const bool mxfp4_part = len > 7 && (strcmp(name + len - 7, "_blocks") == 0 ||
                                        strcmp(name + len - 7, "_scales") == 0);
    if (t->dtype == XD_DTYPE_U8 && !mxfp4_part)
        return xd_err_set(L->err, XD_ERR_TENSOR,
                          "%s: tensor '%s' has dtype U8; expertd reads F32, BF16 and F16 weights "
                          "(U8 only as MXFP4 blocks and scales)",
                          t->path, name);
    int ok = t->n_dims == n_dims;
    for (int i = 0; ok && i < n_dims; i++)
        ok = t->shape[i] == dims[i];
    if (!ok) {
        char want[64], got[64];
        fmt_shape(want, sizeof want, dims, n_dims);
        fmt_shape(got, sizeof got, t->shape, t->n_dims);
        return xd_err_set(L->err, XD_ERR_TENSOR,
                          "%s: tensor '%s' has shape %s; config.json implies %s", t->path, name,
                          got, want);
    }
    *ret = t;
    return XD_OK;
}

/* FP8 weight t (already shape-checked as m): finds its '<name>_scale_inv' and checks it
 * against config.json's quantization_config (weight_block_size) and t's shape. */
static int pair_fp8_scale(struct loader *L, const struct xd_tensor *t, struct xd_matrix *m)
{
    const struct xd_model_config *c = &L->m->config;
    if (!c->fp8)
        return xd_err_set(L->err, XD_ERR_TENSOR,
                          "%s: tensor '%s' is F8_E4M3 but %s/config.json has no "
                          "quantization_config (quant_method \"fp8\", weight_block_size) to say "
                          "how its scales are laid out",
                          t->path, t->name, L->m->dir);
    if (t->n_dims != 2)
        return xd_err_set(L->err, XD_ERR_TENSOR,
                          "%s: tensor '%s' is F8_E4M3 but not a 2-D weight; fine-grained FP8 "
                          "quantizes linear weights only",
                          t->path, t->name);
    char sname[300];
    snprintf(sname, sizeof sname, "%s_scale_inv", t->name);
    const struct xd_tensor *s = xd_checkpoint_find(L->m->checkpoint, sname);
    if (!s)
        return xd_err_set(L->err, XD_ERR_TENSOR,
                          "%s: tensor '%s' is F8_E4M3 but its scale tensor '%s' is missing",
                          t->path, t->name, sname);
    const int64_t br = c->fp8_block[0], bc = c->fp8_block[1];
    const int64_t want[2] = {(m->rows + br - 1) / br, (m->cols + bc - 1) / bc};
    if (s->n_dims != 2 || s->shape[0] != want[0] || s->shape[1] != want[1]) {
        char ws[64], gs[64];
        fmt_shape(ws, sizeof ws, want, 2);
        fmt_shape(gs, sizeof gs, s->shape, s->n_dims);
        return xd_err_set(L->err, XD_ERR_TENSOR,
                          "%s: tensor '%s' has shape %s; weight [%lld, %lld] in blocks of "
                          "weight_block_size [%lld, %lld] (config.json quantization_config) "
                          "needs %s",
                          s->path, sname, gs, (long long)m->rows, (long long)m->cols,
                          (long long)br, (long long)bc, ws);
    }
    if (s->dtype != XD_DTYPE_F32 && s->dtype != XD_DTYPE_BF16)
        return xd_err_set(L->err, XD_ERR_TENSOR,
                          "%s: tensor '%s' has dtype %s; FP8 block scales are F32 (or BF16)",
                          s->path, sname, xd_dtype_name(s->dtype));
    m->scale = s->data;
    m->scale_dtype = s->dtype;
    return XD_OK;
}

/* A 2-D weight (rows, cols), or a 1-D vector when rows == 0. */
static int need(struct loader *L, const char *name, int64_t rows, int64_t cols,
                struct xd_matrix *ret)
{
    const struct xd_tensor *t;
    int64_t dims[2] = {rows, cols};
    int rc = rows ? find_shaped(L, name, 2, dims, &t) : find_shaped(L, name, 1, &dims[1], &t);
    if (rc < 0)
        return rc;
    struct xd_matrix m = {.dtype = t->dtype, .rows = rows ? rows : 1, .cols = cols,
                          .data = t->data};
    if (t->dtype == XD_DTYPE_F8_E4M3)
        XD_TRY(pair_fp8_scale(L, t, &m));
    *ret = m;
    return XD_OK;
}

static struct xd_matrix sub_rows(const struct xd_tensor *t, int64_t row0, int64_t rows,
                                 int64_t cols)
{
    struct xd_matrix m = {
        .dtype = t->dtype,
        .rows = rows,
        .cols = cols,
        .data = (const char *)t->data + (size_t)(row0 * cols) * xd_dtype_size(t->dtype),
    };
    return m;
}

static int load_mlp(struct loader *L, const char *prefix, int64_t ffn, struct xd_expert_weights *w)
{
    const struct xd_model_config *c = &L->m->config;
    XD_TRY(need(L, fmt_name(L, "%s.gate_proj.weight", prefix), ffn, c->hidden_size, &w->gate));
    XD_TRY(need(L, fmt_name(L, "%s.up_proj.weight", prefix), ffn, c->hidden_size, &w->up));
    XD_TRY(need(L, fmt_name(L, "%s.down_proj.weight", prefix), c->hidden_size, ffn, &w->down));
    return XD_OK;
}

/* A fused expert layout: gate_up (E, 2 * ffn, hidden), gate rows first in each expert, and
 * down (E, hidden, ffn), viewed per expert (transformers 5's gate_up_proj / down_proj,
 * granitemoe's input_linear / output_linear). */
static int load_fused_experts(struct loader *L, const char *gu_name, const char *down_name,
                              struct xd_expert_weights *w)
{
    const struct xd_model_config *c = &L->m->config;
    const int64_t E = c->n_experts, F = c->expert_ffn, H = c->hidden_size;
    const struct xd_tensor *gu, *down;
    int64_t gu_dims[3] = {E, 2 * F, H}, down_dims[3] = {E, H, F};
    XD_TRY(find_shaped(L, gu_name, 3, gu_dims, &gu));
    XD_TRY(find_shaped(L, down_name, 3, down_dims, &down));
    if (gu->dtype == XD_DTYPE_F8_E4M3 || down->dtype == XD_DTYPE_F8_E4M3)
        return xd_err_set(L->err, XD_ERR_UNSUPPORTED,
                          "%s: tensor '%s' is F8_E4M3 in the fused expert layout; expertd "
                          "reads FP8 experts as published, one tensor per expert",
                          gu->path, gu->name);
    for (int64_t e = 0; e < E; e++) {
        w[e].gate = sub_rows(gu, e * 2 * F, F, H);
        w[e].up = sub_rows(gu, e * 2 * F + F, F, H);
        w[e].down = sub_rows(down, e * H, H, F);
    }
    return XD_OK;
}

/* granitemoe's layer MoE as published: block_sparse_moe.router.layer.weight (E, hidden),
 * input_linear (E, 2 * ffn, hidden: gate then up, as transformers' chunk(2)), output_linear
 * (E, hidden, ffn); granitemoeshared's shared_mlp.input_linear (2 * shared, hidden) and
 * output_linear (hidden, shared). */
static int load_granite_moe(struct loader *L, const char *p, struct xd_layer_weights *lw,
                            struct xd_expert_weights *w)
{
    const struct xd_model_config *c = &L->m->config;
    const int64_t H = c->hidden_size, S = c->shared_expert_ffn;
    char gu[200];
    snprintf(gu, sizeof gu, "%s.block_sparse_moe.input_linear.weight", p);
    XD_TRY(need(L, fmt_name(L, "%s.block_sparse_moe.router.layer.weight", p), c->n_experts, H,
                &lw->router));
    XD_TRY(load_fused_experts(L, gu, fmt_name(L, "%s.block_sparse_moe.output_linear.weight", p),
                              w));
    if (S == 0)
        return XD_OK;
    const struct xd_tensor *in;
    const int64_t in_dims[2] = {2 * S, H};
    XD_TRY(find_shaped(L, fmt_name(L, "%s.shared_mlp.input_linear.weight", p), 2, in_dims, &in));
    if (in->dtype == XD_DTYPE_F8_E4M3)
        return xd_err_set(L->err, XD_ERR_UNSUPPORTED,
                          "%s: tensor '%s' is F8_E4M3; expertd reads granitemoeshared's shared "
                          "MLP unquantized",
                          in->path, in->name);
    lw->shared.gate = sub_rows(in, 0, S, H);
    lw->shared.up = sub_rows(in, S, S, H);
    return need(L, fmt_name(L, "%s.shared_mlp.output_linear.weight", p), H, S, &lw->shared.down);
}

/* Experts of one MoE layer, per-expert tensors (the published layout) or the
 * fused gate_up_proj (E, 2 * ffn, hidden) / down_proj (E, hidden, ffn) that
 * transformers 5 writes with save_original_format=False. */
static int load_experts(struct loader *L, const char *moe, int layer, struct xd_expert_weights *w)
{
    const struct xd_model_config *c = &L->m->config;
    const int64_t E = c->n_experts, F = c->expert_ffn, H = c->hidden_size;
    char fused[256];
    snprintf(fused, sizeof fused, "%s.experts.gate_up_proj", moe);
    if (xd_checkpoint_find(L->m->checkpoint, fused))
        return load_fused_experts(L, fused, fmt_name(L, "%s.experts.down_proj", moe), w);
    (void)layer;
    for (int64_t e = 0; e < E; e++) {
        if (c->arch == XD_ARCH_MIXTRAL) {
            XD_TRY(need(L, fmt_name(L, "%s.experts.%lld.w1.weight", moe, (long long)e), F, H,
                     &w[e].gate));
            XD_TRY(need(L, fmt_name(L, "%s.experts.%lld.w3.weight", moe, (long long)e), F, H,
                     &w[e].up));
            XD_TRY(need(L, fmt_name(L, "%s.experts.%lld.w2.weight", moe, (long long)e), H, F,
                     &w[e].down));
        } else {
            char prefix[200];
            snprintf(prefix, sizeof prefix, "%s.experts.%lld", moe, (long long)e);
            XD_TRY(load_mlp(L, prefix, F, &w[e]));
        }
    }
    return XD_OK;
}

/* dst[i * dst_stride] = src[i * src_stride] for n elements of es bytes (2 or 4: bf16, f16, f32). */
static void copy_strided(char *dst, size_t dst_stride, const char *src, size_t src_stride,
                         int64_t n, size_t es)
{
    if (es == 2) {
        uint16_t *d = (uint16_t *)(void *)dst;
        const uint16_t *s = (const uint16_t *)(const void *)src;
        for (int64_t i = 0; i < n; i++)
            d[(size_t)i * dst_stride] = s[(size_t)i * src_stride];
    } else if (es == 4) {
        uint32_t *d = (uint32_t *)(void *)dst;
        const uint32_t *s = (const uint32_t *)(const void *)src;
        for (int64_t i = 0; i < n; i++)
            d[(size_t)i * dst_stride] = s[(size_t)i * src_stride];
    } else {
        for (int64_t i = 0; i < n; i++)
            memcpy(dst + (size_t)i * dst_stride * es, src + (size_t)i * src_stride * es, es);
    }
}

/* gpt_oss's fused experts as transformers saves them (the published bf16 layout):
 * gate_up_proj (E, hidden, 2 * ffn) applied as x @ W with gate and up interleaved in its last
 * dim (gate = [..., 0::2], up = [..., 1::2]), gate_up_proj_bias (E, 2 * ffn) interleaved the
 * same way, down_proj (E, ffn, hidden) applied as x @ W, down_proj_bias (E, hidden). The
 * matmul kernels take (out, in) rows, so gate, up and down and the gate/up biases are copied
 * once, in their own dtype, into the store's buffer (the mapped pages are then never read);
 * down_proj_bias is viewed in place. */
/* The published MXFP4 experts: gate_up_proj_blocks (E, 2F, H/32, 16) and _scales (E, 2F, H/32),
 * down_proj_blocks (E, H, F/32, 16) and _scales (E, H, F/32), all U8, rows the output dim (the
 * transpose of the bf16 layout above), gate and up rows interleaved (gate 2f, up 2f + 1). Each
 * row's blocks and scales are packed side by side (XD_DTYPE_MXFP4, 17 bytes per 32 weights:
 * the checkpoint's bytes, never widened) into the store's buffer, gate and up rows apart. */
static int load_mxfp4_pair(struct loader *L, const char *name, int64_t E, int64_t rows,
                           int64_t cols, const struct xd_tensor **ret_blocks,
                           const struct xd_tensor **ret_scales)
{
    if (cols % XD_MXFP4_BLOCK != 0)
        return xd_err_set(L->err, XD_ERR_TENSOR,
                          "%s: tensor '%s_blocks': its input width %lld is not a whole number of "
                          "MXFP4 blocks of 32",
                          L->m->dir, name, (long long)cols);
    const int64_t bdims[4] = {E, rows, cols / XD_MXFP4_BLOCK, 16};
    const int64_t sdims[3] = {E, rows, cols / XD_MXFP4_BLOCK};
    char bn[300], sn[300];
    snprintf(bn, sizeof bn, "%s_blocks", name);
    snprintf(sn, sizeof sn, "%s_scales", name);
    XD_TRY(find_shaped(L, bn, 4, bdims, ret_blocks));
    XD_TRY(find_shaped(L, sn, 3, sdims, ret_scales));
    if ((*ret_blocks)->dtype != XD_DTYPE_U8 || (*ret_scales)->dtype != XD_DTYPE_U8)
        return xd_err_set(L->err, XD_ERR_TENSOR,
                          "%s: tensors '%s' and '%s' must be U8 (MXFP4 codes and e8m0 scales), "
                          "not %s and %s",
                          (*ret_blocks)->path, bn, sn, xd_dtype_name((*ret_blocks)->dtype),
                          xd_dtype_name((*ret_scales)->dtype));
    return XD_OK;
}

/* Packs row `row` of expert e of an MXFP4 pair into dst. */
static int pack_mxfp4_row(struct loader *L, const char *name, const struct xd_tensor *blocks,
                          const struct xd_tensor *scales, int64_t e, int64_t rows, int64_t row,
                          int64_t nb, struct xd_block_mxfp4 *dst)
{
    const size_t r = (size_t)(e * rows + row);
    if (xd_mxfp4_pack_row((const uint8_t *)blocks->data + r * (size_t)nb * 16,
                          (const uint8_t *)scales->data + r * (size_t)nb, nb, dst) < 0)
        return xd_err_set(L->err, XD_ERR_TENSOR,
                          "%s: tensor '%s_scales' holds 255 (e8m0's NaN) for expert %lld row %lld",
                          scales->path, name, (long long)e, (long long)row);
    return XD_OK;
}

static int load_gpt_oss_experts_mxfp4(struct loader *L, const char *moe, struct host_experts *hx,
                                      struct xd_expert_weights *w)
{
    const struct xd_model_config *c = &L->m->config;
    const int64_t E = c->n_experts, F = c->expert_ffn, H = c->hidden_size;
    char gu_name[256], dp_name[256];
    snprintf(gu_name, sizeof gu_name, "%s.experts.gate_up_proj", moe);
    snprintf(dp_name, sizeof dp_name, "%s.experts.down_proj", moe);
    const struct xd_tensor *gub_t, *gus_t, *dpb_t, *dps_t, *gub, *dpb;
    char gu_blocks[300];
    snprintf(gu_blocks, sizeof gu_blocks, "%s_blocks", gu_name);
    /* a width that is not whole blocks before the shapes, which would then disagree; no
     * blocks at all is reported as missing below */
    if (F % XD_MXFP4_BLOCK != 0 && xd_checkpoint_find(L->m->checkpoint, gu_blocks))
        return xd_err_set(L->err, XD_ERR_TENSOR,
                          "%s: tensor '%s_blocks': config.json's intermediate_size %lld is not a "
                          "whole number of MXFP4 blocks of 32",
                          L->m->dir, dp_name, (long long)F);
    XD_TRY(load_mxfp4_pair(L, gu_name, E, 2 * F, H, &gub_t, &gus_t));
    XD_TRY(load_mxfp4_pair(L, dp_name, E, H, F, &dpb_t, &dps_t));
    int64_t gub_dims[2] = {E, 2 * F}, dpb_dims[2] = {E, H};
    XD_TRY(find_shaped(L, fmt_name(L, "%s.experts.gate_up_proj_bias", moe), 2, gub_dims, &gub));
    XD_TRY(find_shaped(L, fmt_name(L, "%s.experts.down_proj_bias", moe), 2, dpb_dims, &dpb));
    if (gub->dtype == XD_DTYPE_U8 || dpb->dtype == XD_DTYPE_U8)
        return xd_err_set(L->err, XD_ERR_TENSOR, "%s: the experts' biases of '%s' must be floats",
                          gub->path, moe);
    const size_t bs = xd_dtype_size(gub->dtype);
    const int64_t nbh = H / XD_MXFP4_BLOCK, nbf = F / XD_MXFP4_BLOCK;
    const size_t gate_bytes = (size_t)(F * nbh) * sizeof(struct xd_block_mxfp4);
    const size_t down_bytes = (size_t)(H * nbf) * sizeof(struct xd_block_mxfp4);
    const size_t per_expert = 2 * gate_bytes + down_bytes + (size_t)(2 * F) * bs;
    if (!hx->repacked) {
        hx->repacked = malloc((size_t)c->n_moe_layers * (size_t)E * per_expert);
        if (!hx->repacked)
            return xd_err_set(L->err, XD_ERR_NOMEM,
                              "%s: out of memory for the MXFP4 experts (%.1f MiB)", L->m->dir,
                              (double)c->n_moe_layers * (double)E * (double)per_expert /
                                  (1 << 20));
    }
    for (int64_t e = 0; e < E; e++) {
        char *base = hx->repacked + hx->repacked_used;
        struct xd_block_mxfp4 *g = (struct xd_block_mxfp4 *)base;
        struct xd_block_mxfp4 *u = (struct xd_block_mxfp4 *)(base + gate_bytes);
        struct xd_block_mxfp4 *d = (struct xd_block_mxfp4 *)(base + 2 * gate_bytes);
        char *gb = base + 2 * gate_bytes + down_bytes, *ub = gb + (size_t)F * bs;
        for (int64_t f = 0; f < F; f++) {
            XD_TRY(pack_mxfp4_row(L, gu_name, gub_t, gus_t, e, 2 * F, 2 * f, nbh, g + f * nbh));
            XD_TRY(pack_mxfp4_row(L, gu_name, gub_t, gus_t, e, 2 * F, 2 * f + 1, nbh,
                                  u + f * nbh));
        }
        for (int64_t h = 0; h < H; h++)
            XD_TRY(pack_mxfp4_row(L, dp_name, dpb_t, dps_t, e, H, h, nbf, d + h * nbf));
        const char *bsrc = (const char *)gub->data + (size_t)(e * 2 * F) * bs;
        for (int64_t f = 0; f < F; f++) {
            memcpy(gb + (size_t)f * bs, bsrc + (size_t)(2 * f) * bs, bs);
            memcpy(ub + (size_t)f * bs, bsrc + (size_t)(2 * f + 1) * bs, bs);
        }
        hx->repacked_used += per_expert;
        w[e].gate = (struct xd_matrix){.dtype = XD_DTYPE_MXFP4, .rows = F, .cols = H, .data = g};
        w[e].up = (struct xd_matrix){.dtype = XD_DTYPE_MXFP4, .rows = F, .cols = H, .data = u};
        w[e].down = (struct xd_matrix){.dtype = XD_DTYPE_MXFP4, .rows = H, .cols = F, .data = d};
        w[e].gate_bias = (struct xd_matrix){.dtype = gub->dtype, .rows = 1, .cols = F, .data = gb};
        w[e].up_bias = (struct xd_matrix){.dtype = gub->dtype, .rows = 1, .cols = F, .data = ub};
        w[e].down_bias = sub_rows(dpb, e, 1, H);
    }
    /* the mapped originals are not read again: only the packed copy stays resident */
    drop_pages(gub_t->data, (size_t)(E * 2 * F * nbh) * 16);
    drop_pages(gus_t->data, (size_t)(E * 2 * F * nbh));
    drop_pages(dpb_t->data, (size_t)(E * H * nbf) * 16);
    drop_pages(dps_t->data, (size_t)(E * H * nbf));
    return XD_OK;
}

static int load_gpt_oss_experts(struct loader *L, const char *moe, struct host_experts *hx,
                                struct xd_expert_weights *w)
{
    const struct xd_model_config *c = &L->m->config;
    const int64_t E = c->n_experts, F = c->expert_ffn, H = c->hidden_size;
    if (c->experts_mxfp4)
        return load_gpt_oss_experts_mxfp4(L, moe, hx, w);
    const struct xd_tensor *gu, *gub, *dp, *dpb;
    int64_t gu_dims[3] = {E, H, 2 * F}, gub_dims[2] = {E, 2 * F};
    int64_t dp_dims[3] = {E, F, H}, dpb_dims[2] = {E, H};
    XD_TRY(find_shaped(L, fmt_name(L, "%s.experts.gate_up_proj", moe), 3, gu_dims, &gu));
    XD_TRY(find_shaped(L, fmt_name(L, "%s.experts.gate_up_proj_bias", moe), 2, gub_dims, &gub));
    XD_TRY(find_shaped(L, fmt_name(L, "%s.experts.down_proj", moe), 3, dp_dims, &dp));
    XD_TRY(find_shaped(L, fmt_name(L, "%s.experts.down_proj_bias", moe), 2, dpb_dims, &dpb));
    const enum xd_dtype dt = gu->dtype;
    if (gub->dtype != dt || dp->dtype != dt)
        return xd_err_set(L->err, XD_ERR_TENSOR,
                          "%s: tensors '%s.experts.gate_up_proj', '_bias' and 'down_proj' must "
                          "share one dtype",
                          gu->path, moe);
    const size_t es = xd_dtype_size(dt);
    const size_t per_expert = (size_t)(3 * F * H + 2 * F) * es;
    if (!hx->repacked) {
        hx->repacked = malloc((size_t)c->n_moe_layers * (size_t)E * per_expert);
        if (!hx->repacked)
            return xd_err_set(L->err, XD_ERR_NOMEM,
                              "%s: out of memory for the experts' weights (%.1f MiB)", L->m->dir,
                              (double)c->n_moe_layers * (double)E * (double)per_expert /
                                  (1 << 20));
    }
    for (int64_t e = 0; e < E; e++) {
        char *base = hx->repacked + hx->repacked_used;
        char *g = base, *u = g + F * H * es, *d = u + F * H * es;
        char *gb = d + H * F * es, *ub = gb + F * es;
        const char *src = (const char *)gu->data + (size_t)(e * H * 2 * F) * es;
        /* gate[f][h] = gu[h][2f], up[f][h] = gu[h][2f + 1]: row by row of the source */
        for (int64_t h = 0; h < H; h++) {
            copy_strided(g + (size_t)h * es, (size_t)H, src + (size_t)(h * 2 * F) * es, 2, F, es);
            copy_strided(u + (size_t)h * es, (size_t)H, src + (size_t)(h * 2 * F + 1) * es, 2, F,
                         es);
        }
        /* down[h][f] = dp[f][h] */
        const char *dsrc = (const char *)dp->data + (size_t)(e * F * H) * es;
        for (int64_t f = 0; f < F; f++)
            copy_strided(d + (size_t)f * es, (size_t)F, dsrc + (size_t)(f * H) * es, 1, H, es);
        const char *bsrc = (const char *)gub->data + (size_t)(e * 2 * F) * es;
        for (int64_t f = 0; f < F; f++) {
            memcpy(gb + (size_t)f * es, bsrc + (size_t)(2 * f) * es, es);
            memcpy(ub + (size_t)f * es, bsrc + (size_t)(2 * f + 1) * es, es);
        }
        hx->repacked_used += per_expert;
        w[e].gate = (struct xd_matrix){.dtype = dt, .rows = F, .cols = H, .data = g};
        w[e].up = (struct xd_matrix){.dtype = dt, .rows = F, .cols = H, .data = u};
        w[e].down = (struct xd_matrix){.dtype = dt, .rows = H, .cols = F, .data = d};
        w[e].gate_bias = (struct xd_matrix){.dtype = dt, .rows = 1, .cols = F, .data = gb};
        w[e].up_bias = (struct xd_matrix){.dtype = dt, .rows = 1, .cols = F, .data = ub};
        w[e].down_bias = sub_rows(dpb, e, 1, H);
    }
    /* the mapped originals are not read again */
    drop_pages(gu->data, (size_t)(E * H * 2 * F) * es);
    drop_pages(dp->data, (size_t)(E * F * H) * es);
    return XD_OK;
}

/* deepseek's multi-head latent attention of layer prefix p. */
static int load_mla(struct loader *L, const char *p, struct xd_layer_weights *lw)
{
    const struct xd_model_config *c = &L->m->config;
    const int64_t H = c->hidden_size, nh = c->n_heads;
    const int64_t qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    if (c->q_lora_rank == 0) {
        XD_TRY(need(L, fmt_name(L, "%s.self_attn.q_proj.weight", p), nh * qk, H, &lw->wq));
    } else {
        XD_TRY(need(L, fmt_name(L, "%s.self_attn.q_a_proj.weight", p), c->q_lora_rank, H,
                    &lw->wq_a));
        XD_TRY(need(L, fmt_name(L, "%s.self_attn.q_a_layernorm.weight", p), 0, c->q_lora_rank,
                    &lw->q_a_norm));
        XD_TRY(need(L, fmt_name(L, "%s.self_attn.q_b_proj.weight", p), nh * qk, c->q_lora_rank,
                    &lw->wq_b));
    }
    XD_TRY(need(L, fmt_name(L, "%s.self_attn.kv_a_proj_with_mqa.weight", p),
                (int64_t)c->kv_lora_rank + c->qk_rope_head_dim, H, &lw->wkv_a));
    XD_TRY(need(L, fmt_name(L, "%s.self_attn.kv_a_layernorm.weight", p), 0, c->kv_lora_rank,
                &lw->kv_a_norm));
    XD_TRY(need(L, fmt_name(L, "%s.self_attn.kv_b_proj.weight", p),
                nh * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank, &lw->wkv_b));
    XD_TRY(need(L, fmt_name(L, "%s.self_attn.o_proj.weight", p), H, nh * c->v_head_dim, &lw->wo));
    return XD_OK;
}

static int load_layer(struct loader *L, int i, struct xd_layer_weights *lw,
                      struct host_experts *experts)
{
    const struct xd_model_config *c = &L->m->config;
    const int64_t H = c->hidden_size, hd = c->head_dim;
    const int64_t q_dim = c->n_heads * hd, kv_dim = c->n_kv_heads * hd;
    char p[128];
    snprintf(p, sizeof p, "model.layers.%d", i);

    XD_TRY(need(L, fmt_name(L, "%s.input_layernorm.weight", p), 0, H, &lw->attn_norm));
    if (c->mla) {
        XD_TRY(load_mla(L, p, lw));
        goto attention_done;
    }
    XD_TRY(need(L, fmt_name(L, "%s.self_attn.q_proj.weight", p), q_dim, H, &lw->wq));
    XD_TRY(need(L, fmt_name(L, "%s.self_attn.k_proj.weight", p), kv_dim, H, &lw->wk));
    XD_TRY(need(L, fmt_name(L, "%s.self_attn.v_proj.weight", p), kv_dim, H, &lw->wv));
    XD_TRY(need(L, fmt_name(L, "%s.self_attn.o_proj.weight", p), H, q_dim, &lw->wo));
    if (c->qkv_bias) {
        XD_TRY(need(L, fmt_name(L, "%s.self_attn.q_proj.bias", p), 0, q_dim, &lw->bq));
        XD_TRY(need(L, fmt_name(L, "%s.self_attn.k_proj.bias", p), 0, kv_dim, &lw->bk));
        XD_TRY(need(L, fmt_name(L, "%s.self_attn.v_proj.bias", p), 0, kv_dim, &lw->bv));
    }
    if (c->o_bias)
        XD_TRY(need(L, fmt_name(L, "%s.self_attn.o_proj.bias", p), 0, H, &lw->bo));
    if (c->qk_norm != XD_QK_NORM_NONE) {
        int per_head = c->qk_norm == XD_QK_NORM_PER_HEAD;
        const bool hy = c->arch == XD_ARCH_HUNYUAN_V1_MOE; /* query_ and key_layernorm */
        XD_TRY(need(L, fmt_name(L, "%s.self_attn.%s.weight", p, hy ? "query_layernorm" : "q_norm"),
                    0, per_head ? hd : q_dim, &lw->q_norm));
        XD_TRY(need(L, fmt_name(L, "%s.self_attn.%s.weight", p, hy ? "key_layernorm" : "k_norm"), 0,
                    per_head ? hd : kv_dim, &lw->k_norm));
    }
    if (c->attn_sinks)
        XD_TRY(need(L, fmt_name(L, "%s.self_attn.sinks", p), 0, c->n_heads, &lw->sinks));
attention_done:
    XD_TRY(need(L, fmt_name(L, "%s.post_attention_layernorm.weight", p), 0, H, &lw->mlp_norm));

    if (!c->is_moe_layer[i]) {
        struct xd_expert_weights dense;
        char mlp[160];
        snprintf(mlp, sizeof mlp, "%s.mlp", p);
        XD_TRY(load_mlp(L, mlp, c->dense_ffn, &dense));
        lw->mlp_gate = dense.gate;
        lw->mlp_up = dense.up;
        lw->mlp_down = dense.down;
        lw->moe_index = -1;
        return XD_OK;
    }

    char moe[160];
    snprintf(moe, sizeof moe, "%s.mlp", p);
    if (c->arch == XD_ARCH_MIXTRAL &&
        xd_checkpoint_find(L->m->checkpoint, fmt_name(L, "%s.block_sparse_moe.gate.weight", p)))
        snprintf(moe, sizeof moe, "%s.block_sparse_moe", p);
    if (c->arch == XD_ARCH_GRANITEMOE || c->arch == XD_ARCH_GRANITEMOE_SHARED)
        return load_granite_moe(L, p, lw, &experts->w[(size_t)i * c->n_experts]);
    if (c->arch == XD_ARCH_GPT_OSS) {
        XD_TRY(need(L, fmt_name(L, "%s.router.weight", moe), c->n_experts, H, &lw->router));
        XD_TRY(need(L, fmt_name(L, "%s.router.bias", moe), 0, c->n_experts, &lw->router_bias));
        return load_gpt_oss_experts(L, moe, experts, &experts->w[(size_t)i * c->n_experts]);
    }
    XD_TRY(need(L, fmt_name(L, c->arch == XD_ARCH_HUNYUAN_V1_MOE ? "%s.gate.wg.weight" : "%s.gate.weight",
                            moe),
                c->n_experts, H, &lw->router));
    if (c->router == XD_ROUTER_SIGMOID_BIAS)
        XD_TRY(need(L, fmt_name(L, "%s.gate.e_score_correction_bias", moe), 0, c->n_experts,
                 &lw->router_bias));
    if (c->router == XD_ROUTER_SOFTMAX_BIAS) /* ernie4_5_moe's (1, E), as published */
        XD_TRY(need(L, fmt_name(L, "%s.moe_statics.e_score_correction_bias", moe), 1,
                    c->n_experts, &lw->router_bias));
    XD_TRY(load_experts(L, moe, i, &experts->w[(size_t)i * c->n_experts]));
    if (c->shared_expert_ffn > 0 && !c->shared_expert_gated) {
        /* glm4_moe, deepseek: shared_experts, one MLP of n_shared_experts x its width */
        char shared[192];
        snprintf(shared, sizeof shared, "%s.%s", moe,
                 c->arch == XD_ARCH_HUNYUAN_V1_MOE ? "shared_mlp" : "shared_experts");
        XD_TRY(load_mlp(L, shared, c->shared_expert_ffn, &lw->shared));
    } else if (c->shared_expert_ffn > 0) {
        char shared[192];
        snprintf(shared, sizeof shared, "%s.shared_expert", moe);
        XD_TRY(load_mlp(L, shared, c->shared_expert_ffn, &lw->shared));
        XD_TRY(need(L, fmt_name(L, "%s.shared_expert_gate.weight", moe), 1, H,
                 &lw->shared_expert_gate));
    }
    return XD_OK;
}

/* What the loader makes of an FP8 checkpoint's F8_E4M3 matrices. */
enum fp8_serve {
    FP8_TO_Q8,  /* the matmul weights to q8_0, the others to f32 */
    FP8_NATIVE, /* the matmul weights kept (128 x 128 blocks), the others to f32 */
    FP8_TO_F32, /* all to f32: the dequantized reference */
};

static int convert_fp8(struct xd_model *m, enum fp8_serve serve, const struct xd_pack_opts *po,
                       struct xd_err *err);

static int load_model(const char *dir, enum fp8_serve fp8_serve, const struct xd_pack_opts *po,
                      struct xd_model **ret_model, struct xd_err *err)
{
    struct xd_model *m = calloc(1, sizeof *m);
    struct host_experts *experts = calloc(1, sizeof *experts);
    int rc;
    if (!m || !experts || !(m->dir = strdup(dir))) {
        free(experts);
        xd_model_destroy(m);
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    }
    m->experts.ops = &host_expert_ops;
    m->experts.ctx = experts;

    struct xd_model_config *c = &m->config;
    rc = xd_model_config_load(dir, c, err);
    if (rc < 0)
        goto err;
    rc = xd_checkpoint_open(dir, &m->checkpoint, err);
    if (rc < 0)
        goto err;

    experts->n_layers = c->n_layers;
    experts->n_experts = c->n_experts;
    experts->w = calloc((size_t)c->n_layers * c->n_experts, sizeof *experts->w);
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!experts->w || !m->layers) {
        rc = xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory for the layer table", dir);
        goto err;
    }

    struct loader L = {.m = m, .err = err};
    rc = need(&L, "model.embed_tokens.weight", c->vocab_size, c->hidden_size, &m->embed);
    if (rc < 0)
        goto err;
    rc = need(&L, "model.norm.weight", 0, c->hidden_size, &m->final_norm);
    if (rc < 0)
        goto err;
    if (c->tie_word_embeddings)
        m->lm_head = m->embed;
    else if ((rc = need(&L, "lm_head.weight", c->vocab_size, c->hidden_size, &m->lm_head)) < 0)
        goto err;

    int moe_index = 0;
    for (int i = 0; i < c->n_layers; i++) {
        rc = load_layer(&L, i, &m->layers[i], experts);
        if (rc < 0)
            goto err;
        if (c->is_moe_layer[i])
            m->layers[i].moe_index = moe_index++;
    }
    if (c->fp8 && (rc = convert_fp8(m, fp8_serve, po, err)) < 0)
        goto err;
    *ret_model = m;
    return XD_OK;
err:
    xd_model_destroy(m);
    return rc;
}

int xd_model_load(const char *dir, struct xd_model **ret_model, struct xd_err *err)
{
    return load_model(dir, FP8_TO_Q8, NULL, ret_model, err);
}

int xd_model_load_packed(const char *dir, const struct xd_pack_opts *po,
                         struct xd_model **ret_model, struct xd_err *err)
{
    return load_model(dir, po && po->fp8_native ? FP8_NATIVE : FP8_TO_Q8, po, ret_model, err);
}

int xd_model_load_fp8_dequantized(const char *dir, struct xd_model **ret_model,
                                  struct xd_err *err)
{
    return load_model(dir, FP8_TO_F32, NULL, ret_model, err);
}

void xd_model_destroy(struct xd_model *m)
{
    if (!m)
        return;
    if (m->experts.ops && m->experts.ops->destroy)
        m->experts.ops->destroy(m->experts.ctx);
    free(m->layers);
    free(m->quant_buf);
    xd_pack_close(m->pack);
    free(m->pack);
    free(m->dropped);
    free(m->pack_path);
    xd_checkpoint_close(m->checkpoint);
    free(m->dir);
    free(m);
}

size_t xd_model_expert_bytes(const struct xd_model *model)
{
    for (int l = 0; l < model->config.n_layers; l++) {
        if (model->layers[l].moe_index < 0)
            continue;
        struct xd_expert_weights w;
        if (xd_expert_store_acquire(&model->experts, l, 0, &w) < 0)
            return 0;
        const struct xd_matrix *m[3] = {&w.gate, &w.up, &w.down};
        size_t bytes = 0;
        for (int i = 0; i < 3; i++)
            bytes += (size_t)m[i]->rows * xd_dtype_row_bytes(m[i]->dtype, m[i]->cols);
        xd_expert_store_release(&model->experts, l, 0);
        return bytes;
    }
    return 0;
}

/* ---- quantization at load ---- */

/* One matrix to quantize and a name for errors ("layer 3 expert 5 gate"). */
struct qjob {
    struct xd_matrix *m;
    enum xd_dtype fmt;
    char name[64];
};

/* Lists the matrices xd_model_quantize replaces (jobs may be NULL to count them). */
static size_t list_quant_jobs(struct xd_model *m, enum xd_dtype fmt, bool experts_only,
                              struct qjob *jobs)
{
    const struct xd_model_config *c = &m->config;
    struct host_experts *h = m->experts.ctx;
    size_t n = 0;
#define ADD(mat, ...)                                                                            \
    do {                                                                                         \
        if ((mat)->data) {                                                                       \
            if (jobs) {                                                                          \
                jobs[n].m = (mat);                                                               \
                jobs[n].fmt = xd_quant_format_for(fmt, (mat)->cols);                             \
                snprintf(jobs[n].name, sizeof jobs[n].name, __VA_ARGS__);                        \
            }                                                                                    \
            n++;                                                                                 \
        }                                                                                        \
    } while (0)
    for (int l = 0; l < c->n_layers; l++) {
        struct xd_layer_weights *lw = &m->layers[l];
        if (lw->moe_index >= 0)
            for (int e = 0; e < c->n_experts; e++) {
                struct xd_expert_weights *w = &h->w[(size_t)l * c->n_experts + e];
                ADD(&w->gate, "layer %d expert %d gate_proj", l, e);
                ADD(&w->up, "layer %d expert %d up_proj", l, e);
                ADD(&w->down, "layer %d expert %d down_proj", l, e);
            }
        if (experts_only)
            continue;
        ADD(&lw->wq, "layer %d q_proj", l);
        ADD(&lw->wk, "layer %d k_proj", l);
        ADD(&lw->wv, "layer %d v_proj", l);
        ADD(&lw->wo, "layer %d o_proj", l);
        ADD(&lw->wq_a, "layer %d q_a_proj", l); /* MLA's, but kv_b_proj: mla.c reads it */
        ADD(&lw->wq_b, "layer %d q_b_proj", l); /* element by element, transposed */
        ADD(&lw->wkv_a, "layer %d kv_a_proj_with_mqa", l);
        ADD(&lw->mlp_gate, "layer %d mlp gate_proj", l);
        ADD(&lw->mlp_up, "layer %d mlp up_proj", l);
        ADD(&lw->mlp_down, "layer %d mlp down_proj", l);
        ADD(&lw->shared.gate, "layer %d shared_expert gate_proj", l);
        ADD(&lw->shared.up, "layer %d shared_expert up_proj", l);
        ADD(&lw->shared.down, "layer %d shared_expert down_proj", l);
    }
    if (!experts_only) {
        /* lm_head at 6 or 8 bits whatever the format, as llama.cpp keeps its output matrix
         * (Q4_K_M: Q6_K): a large share of a decode token's bytes when the vocabulary is large
         * (42% of a q4k token's on the bench model). q6_K under q4k (q8_0 where its columns are
         * not whole super-blocks), q8_0 under q8 and q4. */
        fmt = fmt == XD_DTYPE_Q4_K ? XD_DTYPE_Q6_K : XD_DTYPE_Q8_0;
        ADD(&m->lm_head, "lm_head");
    }
#undef ADD
    return n;
}

/* Drops the whole pages of [p, p + len) from this process (a read-only file mapping: they are
 * read back from the file if touched again). */
static void drop_pages(const void *p, size_t len)
{
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + page - 1) & ~(page - 1), b = ((uintptr_t)p + len) & ~(page - 1);
    if (b > a)
        madvise((void *)a, b - a, MADV_DONTNEED);
}

/* drop_pages, remembering the range for xd_model_read (if the list cannot grow, the pages are
 * only read back in vain). */
static void drop_source(struct xd_model *m, const void *p, size_t len)
{
    drop_pages(p, len);
    if (m->n_dropped == m->cap_dropped) {
        size_t cap = m->cap_dropped ? 2 * m->cap_dropped : 256;
        struct xd_model_range *r = realloc(m->dropped, cap * sizeof *r);
        if (!r)
            return;
        m->dropped = r;
        m->cap_dropped = cap;
    }
    m->dropped[m->n_dropped++] = (struct xd_model_range){p, len};
}

static int cmp_range(const void *a, const void *b)
{
    const struct xd_model_range *x = a, *y = b;
    return x->p < y->p ? -1 : x->p > y->p;
}

void xd_model_read(const struct xd_model *m, xd_read_progress_fn progress, void *ctx)
{
    if (!m->n_dropped) {
        xd_checkpoint_read(m->checkpoint, progress, ctx);
        return;
    }
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), chunk = (size_t)64 << 20;
    struct xd_model_range *r = malloc(m->n_dropped * sizeof *r);
    if (!r) {
        xd_checkpoint_read(m->checkpoint, progress, ctx);
        return;
    }
    memcpy(r, m->dropped, m->n_dropped * sizeof *r);
    qsort(r, m->n_dropped, sizeof *r, cmp_range);
    /* two passes: count the pages to read, then read them in runs of at most 64 MiB */
    uint64_t total = 0, done = 0;
    unsigned sum = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && progress)
            progress(ctx, 0, total);
        const void *map;
        size_t size;
        for (size_t f = 0; xd_checkpoint_file(m->checkpoint, f, &map, &size); f++) {
            const char *base = map;
            size_t k = 0, run = 0, run_len = 0;
            for (size_t off = 0; off < size; off += page) {
                const char *a = base + off;
                const size_t len = size - off < page ? size - off : page;
                while (k < m->n_dropped && r[k].p + r[k].len <= a)
                    k++;
                const bool skip = k < m->n_dropped && r[k].p <= a && a + len <= r[k].p + r[k].len;
                if (!skip) {
                    if (!run_len)
                        run = off;
                    run_len += len;
                }
                if (run_len && (skip || run_len >= chunk || off + len >= size)) {
                    if (pass == 0) {
                        total += run_len;
                    } else {
                        madvise((void *)(uintptr_t)(base + run), run_len, MADV_WILLNEED);
                        const volatile unsigned char *b = (const unsigned char *)base + run;
                        for (size_t o = 0; o < run_len; o += page)
                            sum += b[o];
                        done += run_len;
                        if (progress)
                            progress(ctx, done, total);
                    }
                    run_len = 0;
                }
            }
        }
    }
    (void)sum;
    free(r);
}

/* ---- the expert pack ---- */

static void pack_say(const struct xd_pack_opts *po, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void pack_say(const struct xd_pack_opts *po, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (po->log)
        po->log(po->log_ctx, line);
    else
        fprintf(stderr, "%s\n", line);
}

/* Progress of the quantization that precedes writing a pack (minutes for a large model): a line
 * about every second, none when nothing is reported. */
struct quant_progress {
    const struct xd_pack_opts *po; /* NULL: silent */
    const char *what;              /* "quantizing to Q4_1" */
    double t0, last;
    size_t done, total;            /* source bytes */
};

static void quant_progress_add(struct quant_progress *p, size_t bytes)
{
    p->done += bytes;
    if (!p->po)
        return;
    const double now = xd_now();
    if (now - p->last < 1.0 && p->done != p->total)
        return;
    p->last = now;
    if (p->done == p->total && now - p->t0 < 1.0)
        return; /* a small model: no line at all */
    pack_say(p->po, "%s: %.1f of %.1f MiB (%.0f%%, %.0f MB/s)", p->what,
             (double)p->done / 1048576.0, (double)p->total / 1048576.0,
             p->total ? 100.0 * (double)p->done / (double)p->total : 100.0,
             now > p->t0 ? (double)p->done / (now - p->t0) / 1e6 : 0.0);
}

/* Whether pack is the one for key and jobs (the quantized ones, kept ones have m NULL); if not,
 * why in why. */
static bool pack_matches(const struct xd_pack_info *p, const struct xd_pack_key *key,
                         const struct qjob *jobs, size_t n_jobs, char *why, size_t why_len)
{
    if (p->key.identity != key->identity) {
        snprintf(why, why_len, "made from another checkpoint (config.json or a safetensors "
                 "file changed since: %.1f MiB then, %.1f MiB now)",
                 (double)p->key.checkpoint_bytes / 1048576.0,
                 (double)key->checkpoint_bytes / 1048576.0);
        return false;
    }
    if (p->key.quant_version != key->quant_version) {
        snprintf(why, why_len, "made by quantizer version %u, this expertd's is %u",
                 p->key.quant_version, key->quant_version);
        return false;
    }
    if (p->key.scheme != key->scheme) {
        snprintf(why, why_len, "holds scheme 0x%x, this load asks for 0x%x", p->key.scheme,
                 key->scheme);
        return false;
    }
    size_t k = 0;
    for (size_t i = 0; i < n_jobs; i++) {
        if (!jobs[i].m)
            continue;
        if (k >= p->n_extents) {
            snprintf(why, why_len, "has %zu extents, the model quantizes more", p->n_extents);
            return false;
        }
        const struct xd_pack_extent *e = &p->extents[k++];
        const struct xd_matrix *w = jobs[i].m;
        if (strcmp(e->name, jobs[i].name) != 0 || e->dtype != jobs[i].fmt ||
            e->rows != w->rows || e->cols != w->cols) {
            snprintf(why, why_len, "extent %zu is %.80s %s (%lld, %lld), the model expects "
                     "%.64s %s (%lld, %lld)", k - 1, e->name, xd_dtype_name(e->dtype),
                     (long long)e->rows, (long long)e->cols, jobs[i].name,
                     xd_dtype_name(jobs[i].fmt), (long long)w->rows, (long long)w->cols);
            return false;
        }
    }
    if (k != p->n_extents) {
        snprintf(why, why_len, "has %zu extents, the model quantizes %zu", p->n_extents, k);
        return false;
    }
    return true;
}

/* Reads every page of [p, p + len) in (as xd_checkpoint_read), so serving never waits on it. */
static void fault_in(const void *p, size_t len)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    madvise((void *)(uintptr_t)p, len, MADV_WILLNEED);
    const volatile unsigned char *b = p;
    unsigned sum = 0;
    for (size_t o = 0; o < len; o += page)
        sum += b[o];
    (void)sum;
}

/* Tries the packs at paths in order; on a match maps the jobs' matrices to it and returns
 * true. Reports each refused pack. */
static bool pack_try_map(struct xd_model *m, const struct xd_pack_opts *po,
                         enum xd_dtype fmt, const struct xd_pack_key *key, char **paths,
                         int n_paths, struct qjob *jobs, size_t n_jobs)
{
    for (int p = 0; p < n_paths; p++) {
        struct xd_pack_map map = {0};
        struct xd_err e = {{0}};
        bool missing = false;
        if (xd_pack_open(paths[p], &map, &missing, &e) < 0) {
            if (!missing)
                pack_say(po, "pack refused, not used: %s", e.msg);
            continue;
        }
        char why[512];
        if (!pack_matches(&map.info, key, jobs, n_jobs, why, sizeof why)) {
            pack_say(po, "pack %s refused, not used: %s", paths[p], why);
            xd_pack_close(&map);
            continue;
        }
        struct xd_pack_map *keep = malloc(sizeof *keep);
        char *path = strdup(paths[p]);
        if (!keep || !path) {
            free(keep);
            free(path);
            xd_pack_close(&map);
            return false;
        }
        *keep = map;
        fault_in(keep->map, keep->size);
        size_t k = 0, bytes = 0;
        for (size_t i = 0; i < n_jobs; i++) {
            if (!jobs[i].m)
                continue;
            const struct xd_pack_extent *x = &keep->info.extents[k++];
            struct xd_matrix src = *jobs[i].m;
            *jobs[i].m = (struct xd_matrix){.dtype = x->dtype, .rows = x->rows,
                                            .cols = x->cols, .data = x->data};
            bytes += x->bytes;
            if (src.data != m->embed.data)
                drop_source(m, src.data,
                            (size_t)src.rows * xd_dtype_row_bytes(src.dtype, src.cols));
        }
        pack_say(po, "pack %s: mapped %.1f MiB of %s weights (%zu matrices), not quantized "
                 "again", paths[p], (double)bytes / 1048576.0, xd_dtype_name(fmt),
                 keep->info.n_extents);
        m->pack = keep;
        m->pack_path = path;
        m->pack_use = XD_PACK_MAPPED;
        m->quant_bytes = bytes;
        return true;
    }
    return false;
}

/* Writes the model's quantized matrices (jobs, now views of quant_buf) to the first of paths
 * that takes them; reports the outcome. */
static void pack_write(struct xd_model *m, const struct xd_pack_opts *po,
                       const struct xd_pack_key *key, char **paths, int n_paths,
                       const struct qjob *jobs, size_t n_jobs)
{
    size_t n = 0;
    for (size_t i = 0; i < n_jobs; i++)
        n += jobs[i].m != NULL;
    struct xd_pack_extent *ext = calloc(n ? n : 1, sizeof *ext);
    if (!ext) {
        pack_say(po, "warning: pack not written: out of memory; serving the weights quantized "
                 "in memory");
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < n_jobs; i++) {
        if (!jobs[i].m)
            continue;
        snprintf(ext[k].name, sizeof ext[k].name, "%s", jobs[i].name);
        ext[k].dtype = jobs[i].m->dtype;
        ext[k].rows = jobs[i].m->rows;
        ext[k].cols = jobs[i].m->cols;
        ext[k].data = jobs[i].m->data;
        k++;
    }
    char reasons[1024] = "";
    for (int p = 0; p < n_paths; p++) {
        struct xd_err e = {{0}};
        pack_say(po, "pack %s: writing %.1f MiB of %s weights, once (later starts map it)",
                 paths[p], (double)m->quant_bytes / 1048576.0, xd_dtype_name(m->quant));
        if (xd_pack_write(paths[p], key, ext, n, po->log, po->log_ctx, &e) == XD_OK) {
            m->pack_use = XD_PACK_WRITTEN;
            m->pack_path = strdup(paths[p]);
            free(ext);
            return;
        }
        size_t used = strlen(reasons);
        snprintf(reasons + used, sizeof reasons - used, "%s%s", used ? "; " : "", e.msg);
        if (p + 1 < n_paths)
            pack_say(po, "pack not written: %s; trying %s", e.msg, paths[p + 1]);
    }
    pack_say(po, "warning: no pack written (%s); serving the weights quantized in memory, "
             "quantized again at the next start", reasons);
    free(ext);
}

int xd_model_quantize(struct xd_model *m, enum xd_dtype fmt, bool experts_only,
                      struct xd_err *err)
{
    return xd_model_quantize_packed(m, fmt, experts_only, NULL, err);
}

int xd_model_quantize_packed(struct xd_model *m, enum xd_dtype fmt, bool experts_only,
                             const struct xd_pack_opts *po, struct xd_err *err)
{
    if (!xd_dtype_is_quant(fmt))
        return xd_err_set(err, XD_ERR_INVALID, "quantize: %s is not a quantized format",
                          xd_dtype_name(fmt));
    if (m->fp8 && m->quant == XD_DTYPE_Q8_0) {
        if (fmt == XD_DTYPE_Q8_0)
            return XD_OK; /* its FP8 weights were converted to q8 at load */
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: an FP8 checkpoint is served as q8 (its weights converted at "
                          "load); --quantize %s is not supported for it",
                          m->dir, xd_quant_name(fmt));
    }
    if (m->fp8 && m->quant == XD_DTYPE_F8_E4M3)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: an FP8 checkpoint served as FP8 (--fp8 native) is not quantized "
                          "again; --quantize %s is not supported for it (--fp8 q8 converts it "
                          "to q8 at load)",
                          m->dir, xd_quant_name(fmt));
    if (xd_dtype_is_quant(m->quant)) {
        if (m->quant == fmt && m->quant_experts_only == experts_only)
            return XD_OK;
        return xd_err_set(err, XD_ERR_INVALID,
                          "%s: the model is already quantized to %s%s; cannot serve it as %s%s",
                          m->dir, xd_dtype_name(m->quant),
                          m->quant_experts_only ? " (experts only)" : "", xd_dtype_name(fmt),
                          experts_only ? " (experts only)" : "");
    }
    const size_t n_jobs = list_quant_jobs(m, fmt, experts_only, NULL);
    struct qjob *jobs = calloc(n_jobs ? n_jobs : 1, sizeof *jobs);
    if (!jobs)
        return xd_err_set(err, XD_ERR_NOMEM, "quantize: out of memory");
    list_quant_jobs(m, fmt, experts_only, jobs);
    size_t total = 0;
    int n_kept = 0, n_fallback = 0;
    for (size_t i = 0; i < n_jobs; i++) {
        const struct xd_matrix *src = jobs[i].m;
        if (src->cols % XD_QBLOCK != 0 || src->dtype == XD_DTYPE_MXFP4) {
            /* stays as stored: the blocks need whole groups of 32; MXFP4 experts (4.25 bits,
             * exact as published) are not requantized */
            jobs[i].m = NULL;
            n_kept++;
            continue;
        }
        /* q4_K's super-blocks need whole groups of 256: such a matrix is made q4_1 */
        n_fallback += fmt == XD_DTYPE_Q4_K && jobs[i].fmt == XD_DTYPE_Q4_1;
        /* each matrix starts on a 64-byte boundary */
        total += (src->rows * xd_dtype_row_bytes(jobs[i].fmt, src->cols) + 63) & ~(size_t)63;
    }

    struct xd_pack_key key = {.quant_version = XD_PACK_QUANT_VERSION,
                              .scheme = xd_pack_scheme(fmt, experts_only)};
    char *paths[2] = {NULL, NULL};
    int n_paths = 0;
    if (po && po->enabled) {
        struct xd_err e = {{0}};
        char tag[32];
        snprintf(tag, sizeof tag, "%s%s", xd_quant_name(fmt), experts_only ? "-experts" : "");
        if (xd_pack_identity(m->dir, m->checkpoint, &key.identity, &key.checkpoint_bytes,
                             &e) < 0 ||
            xd_pack_paths(m->dir, po->dir, tag, paths, &n_paths, &e) < 0) {
            pack_say(po, "warning: no pack: %s", e.msg);
            n_paths = 0;
        }
        if (n_paths && pack_try_map(m, po, fmt, &key, paths, n_paths, jobs, n_jobs)) {
            free(paths[0]);
            free(paths[1]);
            free(jobs);
            m->quant = fmt;
            m->quant_experts_only = experts_only;
            m->quant_n_kept = n_kept;
            m->quant_n_fallback = n_fallback;
            return XD_OK;
        }
    }

    char *buf = aligned_alloc(64, total ? total : 64);
    if (!buf) {
        free(paths[0]);
        free(paths[1]);
        free(jobs);
        return xd_err_set(err, XD_ERR_NOMEM, "%s: quantize to %s: %.1f MiB could not be allocated",
                          m->dir, xd_dtype_name(fmt), (double)total / 1048576.0);
    }
    char what[64];
    snprintf(what, sizeof what, "quantizing to %s for the pack", xd_dtype_name(fmt));
    struct quant_progress qp = {.po = n_paths ? po : NULL, .what = what, .t0 = xd_now()};
    qp.last = qp.t0;
    for (size_t i = 0; i < n_jobs; i++)
        if (jobs[i].m)
            qp.total += (size_t)jobs[i].m->rows *
                        xd_dtype_row_bytes(jobs[i].m->dtype, jobs[i].m->cols);
    size_t off = 0;
    for (size_t i = 0; i < n_jobs; i++) {
        if (!jobs[i].m)
            continue;
        struct xd_matrix src = *jobs[i].m;
        quant_progress_add(&qp, 0);
        xd_quant_matrix(&src, jobs[i].fmt, buf + off, jobs[i].m);
        quant_progress_add(&qp, (size_t)src.rows * xd_dtype_row_bytes(src.dtype, src.cols));
        off += (src.rows * xd_dtype_row_bytes(jobs[i].fmt, src.cols) + 63) & ~(size_t)63;
        if (src.data != m->embed.data) /* a tied lm_head's pages are the embedding's */
            drop_source(m, src.data, (size_t)src.rows * xd_dtype_row_bytes(src.dtype, src.cols));
    }
    m->quant = fmt;
    m->quant_experts_only = experts_only;
    m->quant_buf = buf;
    m->quant_bytes = total;
    m->quant_n_kept = n_kept;
    m->quant_n_fallback = n_fallback;
    if (n_paths)
        pack_write(m, po, &key, paths, n_paths, jobs, n_jobs);
    free(paths[0]);
    free(paths[1]);
    free(jobs);
    return XD_OK;
}

/* ---- FP8 checkpoints: converted at load ---- */

/* Converts every F8_E4M3 matrix of a model loaded from an FP8 checkpoint: the matmul weights
 * that --quantize q8 covers (experts, attention, dense and shared MLPs, lm_head) and MLA's
 * q_a_proj, q_b_proj and kv_a_proj_with_mqa to q8_0 (a 32-block requantization of the
 * dequantized values), the others (embedding, routers, MLA's kv_b_proj, matrices whose columns
 * are not a multiple of 32) to f32; or, unless to_q8, all of them to f32 (the dequantized
 * reference); or, serve FP8_NATIVE, the matmul weights --quantize q8 covers kept as stored
 * (128 x 128 blocks, whole 16-column steps, no NaN byte) and the rest to f32. The converted ones
 * into one buffer (quant_buf), their FP8 pages dropped. Sets fp8, and quant to Q8_0, F8_E4M3
 * or F32 as served. */
static int convert_fp8(struct xd_model *m, enum fp8_serve serve, const struct xd_pack_opts *po,
                       struct xd_err *err)
{
    const bool to_q8 = serve == FP8_TO_Q8;
    const struct xd_model_config *c = &m->config;
    const size_t n_listed = list_quant_jobs(m, XD_DTYPE_Q8_0, false, NULL);
    const size_t n_other = 1 + 3 * (size_t)c->n_layers;
    struct qjob *jobs = calloc(n_listed + n_other, sizeof *jobs);
    if (!jobs)
        return xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory for the FP8 conversion", m->dir);
    list_quant_jobs(m, XD_DTYPE_Q8_0, false, jobs);
    /* list_quant_jobs lists MLA's q_a_proj, q_b_proj and kv_a_proj_with_mqa (q8) too; each
     * matrix must be listed once: the targets are chosen before any is converted */
    size_t n = n_listed;
    const size_t n_q = n; /* jobs below n_q go to q8 */
    jobs[n].m = &m->embed; /* lm_head is among the quant jobs, as --quantize q8 has it */
    snprintf(jobs[n++].name, sizeof jobs[0].name, "embed_tokens");
    for (int l = 0; l < c->n_layers; l++) {
        jobs[n].m = &m->layers[l].router;
        snprintf(jobs[n++].name, sizeof jobs[0].name, "layer %d router", l);
        jobs[n].m = &m->layers[l].shared_expert_gate;
        snprintf(jobs[n++].name, sizeof jobs[0].name, "layer %d shared_expert_gate", l);
        /* kv_b_proj: mla.c reads it element by element (the absorbed key half transposed at
         * create, the value half as a matmul weight), so it is dequantized to f32 */
        jobs[n].m = &m->layers[l].wkv_b;
        snprintf(jobs[n++].name, sizeof jobs[0].name, "layer %d kv_b_proj", l);
    }
    /* each FP8 matrix's target: q8_0 for the matmul weights --quantize q8 covers, else f32;
     * the others (m NULL) are left as they are */
    size_t total = 0;
    int n_kept = 0, n_native = 0;
    for (size_t i = 0; i < n; i++) {
        const struct xd_matrix *w = jobs[i].m;
        if (!w->data || w->dtype != XD_DTYPE_F8_E4M3) {
            jobs[i].m = NULL;
            continue;
        }
        /* served as stored: the kernels' block shape, whole 16-column steps, no NaN byte
         * (their in-register decoding has none) */
        if (serve == FP8_NATIVE && i < n_q && c->fp8_block[0] == XD_FP8_KERNEL_BLOCK &&
            c->fp8_block[1] == XD_FP8_KERNEL_BLOCK && w->cols % 16 == 0) {
            const uint8_t *b = w->data;
            for (size_t e = 0; e < (size_t)w->rows * (size_t)w->cols; e++)
                if ((b[e] & 0x7f) == 0x7f) {
                    const int rc = xd_err_set(err, XD_ERR_TENSOR,
                                              "%s: FP8 weight %s holds a NaN (byte 0x%02x at "
                                              "row %zu, column %zu): not a servable checkpoint",
                                              m->dir, jobs[i].name, b[e], e / (size_t)w->cols,
                                              e % (size_t)w->cols);
                    free(jobs);
                    return rc;
                }
            jobs[i].m = NULL;
            n_native++;
            continue;
        }
        const int q8 = to_q8 && i < n_q && w->cols % XD_QBLOCK == 0;
        n_kept += !q8 && i < n_q;
        jobs[i].fmt = q8 ? XD_DTYPE_Q8_0 : XD_DTYPE_F32;
        total += (xd_fp8_converted_bytes(w, q8) + 63) & ~(size_t)63;
    }

    /* the pack of the converted weights, as --quantize's (served as q8 only) */
    struct xd_pack_key key = {.quant_version = XD_PACK_QUANT_VERSION,
                              .scheme = xd_pack_scheme(XD_DTYPE_Q8_0, false) | 0x200u};
    char *paths[2] = {NULL, NULL};
    int n_paths = 0;
    if (to_q8 && po && po->enabled) {
        struct xd_err e = {{0}};
        if (xd_pack_identity(m->dir, m->checkpoint, &key.identity, &key.checkpoint_bytes,
                             &e) < 0 ||
            xd_pack_paths(m->dir, po->dir, "fp8-q8", paths, &n_paths, &e) < 0) {
            pack_say(po, "warning: no pack: %s", e.msg);
            n_paths = 0;
        }
        if (n_paths && pack_try_map(m, po, XD_DTYPE_Q8_0, &key, paths, n_paths, jobs, n)) {
            free(paths[0]);
            free(paths[1]);
            free(jobs);
            if (c->tie_word_embeddings)
                m->lm_head = m->embed;
            m->fp8 = true;
            m->quant = XD_DTYPE_Q8_0;
            m->quant_experts_only = false;
            m->quant_n_kept = n_kept;
            return XD_OK;
        }
    }

    char *buf = aligned_alloc(64, total ? total : 64);
    if (!buf) {
        free(paths[0]);
        free(paths[1]);
        free(jobs);
        return xd_err_set(err, XD_ERR_NOMEM,
                          "%s: FP8 to q8 conversion: %.1f MiB could not be allocated", m->dir,
                          (double)total / 1048576.0);
    }
    struct quant_progress qp = {.po = n_paths ? po : NULL,
                                .what = "converting FP8 to Q8_0 for the pack", .t0 = xd_now()};
    qp.last = qp.t0;
    for (size_t i = 0; i < n; i++)
        if (jobs[i].m)
            qp.total += (size_t)jobs[i].m->rows * (size_t)jobs[i].m->cols;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        if (!jobs[i].m)
            continue;
        struct xd_matrix w = *jobs[i].m;
        const int q8 = jobs[i].fmt == XD_DTYPE_Q8_0;
        xd_fp8_convert(&w, c->fp8_block[0], c->fp8_block[1], q8, buf + off, jobs[i].m);
        quant_progress_add(&qp, (size_t)w.rows * (size_t)w.cols);
        off += (xd_fp8_converted_bytes(&w, q8) + 63) & ~(size_t)63;
        drop_source(m, w.data, (size_t)w.rows * (size_t)w.cols);
    }
    m->quant = to_q8 ? XD_DTYPE_Q8_0 : serve == FP8_NATIVE ? XD_DTYPE_F8_E4M3 : XD_DTYPE_F32;
    m->quant_bytes = total;
    if (n_paths)
        pack_write(m, po, &key, paths, n_paths, jobs, n);
    free(paths[0]);
    free(paths[1]);
    free(jobs);
    if (c->tie_word_embeddings)
        m->lm_head = m->embed;
    m->fp8 = true;
    m->quant_experts_only = false;
    m->quant_buf = buf;
    m->quant_bytes = total;
    m->quant_n_kept = to_q8 ? n_kept : serve == FP8_NATIVE ? n_native : 0;
    return XD_OK;
}
