/* FP8 (float8_e4m3fn) weights: codes against torch, block-scaled dequantization, the q8 conversion. */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/dtype.h"
#include "engine/model/fp8.h"
#include "engine/model/model.h"
#include "engine/model/quant.h"
#include "tests/test.h"

static const char *fixtures;

/* All 256 codes equal torch's float8_e4m3fn -> float (tests/fixtures/fp8/e4m3.json). */
static void test_values_match_torch(void)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/fp8/e4m3.json", fixtures);
    json_t *root = json_load_file(path, 0, NULL);
    json_t *vals = json_object_get(root, "values");
    CHECK(json_array_size(vals) == 256, "%s: %zu values", path, json_array_size(vals));
    int bad = 0;
    for (size_t i = 0; i < json_array_size(vals); i++) {
        json_t *v = json_array_get(vals, i);
        const float got = xd_f8e4m3_to_f32((uint8_t)i);
        const int ok = json_is_null(v) ? isnan(got) : got == (float)json_number_value(v);
        if (!ok && bad++ < 5)
            CHECK(0, "code 0x%02zx: %g, torch %g", i, got, json_number_value(v));
    }
    CHECK(bad == 0, "%d codes differ", bad);
    json_decref(root);
}

/* w (rows, cols) with blocks br x bc, both dimensions partial: element (r, c) is
 * fp8(code) * scale[r / br][c / bc], checked against a plain loop. */
static void test_dequantize_partial_blocks(void)
{
    enum { R = 5, C = 7, BR = 2, BC = 3, SR = 3, SC = 3 };
    uint8_t w[R * C];
    float scale[SR * SC];
    for (int i = 0; i < R * C; i++)
        w[i] = (uint8_t)((i * 37 + 11) % 256 == 0x7f ? 1 : (i * 37 + 11) % 256);
    for (int i = 0; i < SR * SC; i++)
        scale[i] = 0.5f + 0.25f * (float)i;
    const struct xd_matrix m = {.dtype = XD_DTYPE_F8_E4M3, .rows = R, .cols = C, .data = w,
                                .scale = scale, .scale_dtype = XD_DTYPE_F32};
    for (int r = 0; r < R; r++) {
        float row[C];
        xd_fp8_dequantize_row(&m, BR, BC, r, row);
        for (int c = 0; c < C; c++) {
            const float want = xd_f8e4m3_to_f32(w[r * C + c]) * scale[(r / BR) * SC + c / BC];
            CHECK(row[c] == want || (isnan(row[c]) && isnan(want)), "(%d, %d): %g, want %g", r,
                  c, row[c], want);
        }
    }
    /* BF16 scales read as bf16 */
    uint16_t sb[SR * SC];
    for (int i = 0; i < SR * SC; i++)
        sb[i] = xd_f32_to_bf16(scale[i]);
    struct xd_matrix mb = m;
    mb.scale = sb;
    mb.scale_dtype = XD_DTYPE_BF16;
    float row[C];
    xd_fp8_dequantize_row(&mb, BR, BC, R - 1, row);
    CHECK(row[C - 1] == xd_f8e4m3_to_f32(w[R * C - 1]) * scale[SR * SC - 1], "bf16 scale: %g",
          row[C - 1]);
}

/* The q8 conversion is xd_quant_row_q8_0 of the dequantized row, block for block; the f32 one
 * is the dequantized row. */
static void test_convert(void)
{
    enum { R = 3, C = 160, B = 128 };
    uint8_t *w = malloc(R * C);
    float scale[1 * 2] = {0.01f, 0.003f};
    for (int i = 0; i < R * C; i++) {
        const int v = (i * 73 + 5) % 256;
        w[i] = (uint8_t)((v & 0x7f) == 0x7f ? 0x10 : v); /* no NaN codes */
    }
    const struct xd_matrix m = {.dtype = XD_DTYPE_F8_E4M3, .rows = R, .cols = C, .data = w,
                                .scale = scale, .scale_dtype = XD_DTYPE_F32};
    void *q = malloc(xd_fp8_converted_bytes(&m, 1));
    float *f = malloc(xd_fp8_converted_bytes(&m, 0));
    struct xd_matrix mq, mf;
    xd_fp8_convert(&m, B, B, 1, q, &mq);
    xd_fp8_convert(&m, B, B, 0, f, &mf);
    CHECK(mq.dtype == XD_DTYPE_Q8_0 && mq.rows == R && mq.cols == C && mq.data == q, "q8 view");
    CHECK(mf.dtype == XD_DTYPE_F32 && mf.data == f, "f32 view");
    CHECK(xd_fp8_converted_bytes(&m, 1) == R * (C / 32) * sizeof(struct xd_block_q8_0),
          "q8 bytes %zu", xd_fp8_converted_bytes(&m, 1));
    double worst = 0.0;
    for (int r = 0; r < R; r++) {
        float row[C], back[C];
        struct xd_block_q8_0 want[C / 32];
        xd_fp8_dequantize_row(&m, B, B, r, row);
        CHECK(memcmp(row, f + r * C, sizeof row) == 0, "row %d f32 differs", r);
        xd_quant_row_q8_0(row, want, C);
        CHECK(memcmp(want, (const struct xd_block_q8_0 *)q + r * (C / 32), sizeof want) == 0,
              "row %d q8 differs", r);
        xd_quant_dequantize_row(XD_DTYPE_Q8_0, want, back, C);
        for (int c = 0; c < C; c++) {
            float amax = 0.0f;
            for (int j = c / 32 * 32; j < c / 32 * 32 + 32; j++)
                amax = fmaxf(amax, fabsf(row[j]));
            /* half a step of the block's int8 grid, and the f16 rounding of its scale */
            const double bound = amax / 127.0 * 0.5 + fabs(row[c]) * 1e-3 + 1e-12;
            worst = fmax(worst, fabs(back[c] - row[c]) / bound);
        }
    }
    CHECK(worst <= 1.0, "q8 error %.3g of the bound", worst);
    free(w);
    free(q);
    free(f);
}

/* The qwen3_moe-fp8 fixture as served: the matmul weights q8 (the dense MLPs' down_proj, 80
 * columns, f32), embedding, lm_head and routers f32, norms as stored; an expert is the q8
 * bytes; --quantize q8 is what it already is, q4 is refused; the f32 load keeps no q8. */
static void test_model_served_as_q8(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/golden/qwen3_moe-fp8", fixtures);
    struct xd_model *m = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_model_load(dir, &m, &err) == XD_OK, "%s", err.msg);
    if (!m)
        return;
    const struct xd_model_config *c = &m->config;
    CHECK(c->fp8 && c->fp8_block[0] == 128 && c->fp8_block[1] == 128, "quantization_config");
    CHECK(m->fp8 && m->quant == XD_DTYPE_Q8_0, "not served as q8");
    const struct xd_layer_weights *l0 = &m->layers[0], *l1 = &m->layers[1];
    CHECK(l0->wq.dtype == XD_DTYPE_Q8_0 && l0->wo.dtype == XD_DTYPE_Q8_0, "attention");
    CHECK(l0->mlp_gate.dtype == XD_DTYPE_Q8_0 && l0->mlp_down.dtype == XD_DTYPE_F32,
          "dense MLP: gate %s, down %s", xd_dtype_name(l0->mlp_gate.dtype),
          xd_dtype_name(l0->mlp_down.dtype));
    CHECK(m->quant_n_kept > 0, "the 80-column matrices are counted as kept");
    CHECK(m->embed.dtype == XD_DTYPE_F32 && m->lm_head.dtype == XD_DTYPE_F32 &&
          l1->router.dtype == XD_DTYPE_F32 && l0->attn_norm.dtype == XD_DTYPE_F32,
          "embedding, lm_head, router, norms");
    struct xd_expert_weights w;
    CHECK(xd_expert_store_acquire(&m->experts, 1, 3, &w) == XD_OK, "expert");
    CHECK(w.gate.dtype == XD_DTYPE_Q8_0 && w.down.dtype == XD_DTYPE_Q8_0, "expert not q8");
    const size_t want = (size_t)3 * c->expert_ffn * (c->hidden_size / 32) * 34;
    CHECK(xd_model_expert_bytes(m) == want, "expert bytes %zu, want %zu",
          xd_model_expert_bytes(m), want);
    CHECK(xd_model_quantize(m, XD_DTYPE_Q8_0, false, &err) == XD_OK, "q8: %s", err.msg);
    CHECK(xd_model_quantize(m, XD_DTYPE_Q4_1, false, &err) == XD_ERR_UNSUPPORTED, "q4 accepted");
    CHECK_CONTAINS(err.msg, "FP8 checkpoint");
    xd_model_destroy(m);

    m = NULL;
    CHECK(xd_model_load_fp8_dequantized(dir, &m, &err) == XD_OK, "%s", err.msg);
    if (!m)
        return;
    CHECK(m->fp8 && m->quant == XD_DTYPE_F32 && m->layers[0].wq.dtype == XD_DTYPE_F32,
          "dequantized load");
    xd_model_destroy(m);
}

/* --fp8 native: the matmul weights stay F8_E4M3 with their scales (the 80-column ones too:
 * whole 16-column steps), the embedding and routers f32 as under q8; the model is not
 * quantized again. */
static void test_model_served_native(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/golden/qwen3_moe-fp8", fixtures);
    const struct xd_pack_opts po = {.fp8_native = true};
    struct xd_model *m = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_model_load_packed(dir, &po, &m, &err) == XD_OK, "%s", err.msg);
    if (!m)
        return;
    CHECK(m->fp8 && m->quant == XD_DTYPE_F8_E4M3, "served as %s", xd_dtype_name(m->quant));
    const struct xd_layer_weights *l0 = &m->layers[0], *l1 = &m->layers[1];
    CHECK(l0->wq.dtype == XD_DTYPE_F8_E4M3 && l0->wq.scale && l0->mlp_down.dtype == XD_DTYPE_F8_E4M3,
          "attention %s, dense down %s", xd_dtype_name(l0->wq.dtype),
          xd_dtype_name(l0->mlp_down.dtype));
    CHECK(m->embed.dtype == XD_DTYPE_F32 && l1->router.dtype == XD_DTYPE_F32,
          "embedding %s, router %s", xd_dtype_name(m->embed.dtype),
          xd_dtype_name(l1->router.dtype));
    struct xd_expert_weights w;
    CHECK(xd_expert_store_acquire(&m->experts, 1, 3, &w) == XD_OK, "expert");
    CHECK(w.gate.dtype == XD_DTYPE_F8_E4M3 && w.down.dtype == XD_DTYPE_F8_E4M3, "expert %s",
          xd_dtype_name(w.gate.dtype));
    xd_expert_store_release(&m->experts, 1, 3);
    const size_t want = (size_t)3 * m->config.expert_ffn * m->config.hidden_size;
    CHECK(xd_model_expert_bytes(m) == want, "expert bytes %zu, want %zu (one a weight)",
          xd_model_expert_bytes(m), want);
    CHECK(xd_model_quantize(m, XD_DTYPE_Q8_0, false, &err) == XD_ERR_UNSUPPORTED,
          "quantized again");
    CHECK_CONTAINS(err.msg, "--fp8 q8");
    xd_model_destroy(m);
}

/* The deepseek_v3-fp8 fixture as served: MLA's q_a_proj, q_b_proj and kv_a_proj_with_mqa q8,
 * o_proj (80 columns) f32, kv_b_proj f32 with exactly the dequantized reference's values (the
 * absorbed attention transposes it by element), the dense MLP, shared and routed experts q8;
 * what DeepSeek stores unquantized (embedding, lm_head, norms, the gate: bf16 here;
 * e_score_correction_bias f32) as stored. */
static void test_deepseek_mla_served(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/golden/deepseek_v3-fp8", fixtures);
    struct xd_model *m = NULL, *ref = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_model_load(dir, &m, &err) == XD_OK, "%s", err.msg);
    CHECK(xd_model_load_fp8_dequantized(dir, &ref, &err) == XD_OK, "%s", err.msg);
    if (!m || !ref) {
        xd_model_destroy(m);
        xd_model_destroy(ref);
        return;
    }
    CHECK(m->config.mla && m->fp8 && m->quant == XD_DTYPE_Q8_0, "not served as q8");
    for (int l = 0; l < m->config.n_layers; l++) {
        const struct xd_layer_weights *w = &m->layers[l], *r = &ref->layers[l];
        CHECK(w->wq_a.dtype == XD_DTYPE_Q8_0 && w->wq_b.dtype == XD_DTYPE_Q8_0 &&
                  w->wkv_a.dtype == XD_DTYPE_Q8_0,
              "layer %d: q_a %s, q_b %s, kv_a %s", l, xd_dtype_name(w->wq_a.dtype),
              xd_dtype_name(w->wq_b.dtype), xd_dtype_name(w->wkv_a.dtype));
        CHECK(w->wo.dtype == XD_DTYPE_F32, "layer %d: o_proj (80 columns) %s", l,
              xd_dtype_name(w->wo.dtype));
        CHECK(w->wkv_b.dtype == XD_DTYPE_F32 && r->wkv_b.dtype == XD_DTYPE_F32 &&
                  w->wkv_b.rows == 144 && w->wkv_b.cols == 32 &&
                  memcmp(w->wkv_b.data, r->wkv_b.data, (size_t)144 * 32 * sizeof(float)) == 0,
              "layer %d: kv_b_proj %s, not the dequantized values", l,
              xd_dtype_name(w->wkv_b.dtype));
        CHECK(w->q_a_norm.dtype == XD_DTYPE_BF16 && w->kv_a_norm.dtype == XD_DTYPE_BF16 &&
                  w->attn_norm.dtype == XD_DTYPE_BF16,
              "layer %d: norms as stored", l);
        if (w->moe_index < 0) {
            CHECK(w->mlp_gate.dtype == XD_DTYPE_Q8_0 && w->mlp_down.dtype == XD_DTYPE_Q8_0,
                  "layer %d: dense MLP", l);
            continue;
        }
        CHECK(w->router.dtype == XD_DTYPE_BF16 && w->router_bias.dtype == XD_DTYPE_F32,
              "layer %d: gate %s, e_score_correction_bias %s", l, xd_dtype_name(w->router.dtype),
              xd_dtype_name(w->router_bias.dtype));
        CHECK(w->shared.gate.dtype == XD_DTYPE_Q8_0 && w->shared.down.dtype == XD_DTYPE_Q8_0,
              "layer %d: shared expert", l);
        struct xd_expert_weights e;
        CHECK(xd_expert_store_acquire(&m->experts, l, 7, &e) == XD_OK, "expert");
        CHECK(e.gate.dtype == XD_DTYPE_Q8_0 && e.up.dtype == XD_DTYPE_Q8_0 &&
                  e.down.dtype == XD_DTYPE_Q8_0,
              "layer %d expert 7 not q8", l);
        xd_expert_store_release(&m->experts, l, 7);
    }
    CHECK(m->embed.dtype == XD_DTYPE_BF16 && m->lm_head.dtype == XD_DTYPE_BF16,
          "embedding %s, lm_head %s", xd_dtype_name(m->embed.dtype),
          xd_dtype_name(m->lm_head.dtype));
    xd_model_destroy(m);
    xd_model_destroy(ref);
}

int main(int argc, char **argv)
{
    fixtures = argc > 1 ? argv[1] : "tests/fixtures";
    RUN(test_values_match_torch);
    RUN(test_dequantize_partial_blocks);
    RUN(test_convert);
    RUN(test_model_served_as_q8);
    RUN(test_deepseek_mla_served);
    RUN(test_model_served_native);
    return test_summary();
}
