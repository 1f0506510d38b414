/* config.json and generation_config.json parsing with per-key validation. */
#include "engine/model/model_config.h"

#include "engine/base/text_file.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *xd_arch_name(enum xd_arch arch)
{
    switch (arch) {
    case XD_ARCH_MIXTRAL: return "mixtral";
    case XD_ARCH_QWEN2_MOE: return "qwen2_moe";
    case XD_ARCH_QWEN3_MOE: return "qwen3_moe";
    case XD_ARCH_OLMOE: return "olmoe";
    case XD_ARCH_DEEPSEEK_V2: return "deepseek_v2";
    case XD_ARCH_DEEPSEEK_V3: return "deepseek_v3";
    case XD_ARCH_GLM4_MOE: return "glm4_moe";
    case XD_ARCH_GPT_OSS: return "gpt_oss";
    case XD_ARCH_DOTS1: return "dots1";
    case XD_ARCH_GRANITEMOE: return "granitemoe";
    case XD_ARCH_GRANITEMOE_SHARED: return "granitemoeshared";
    case XD_ARCH_ERNIE4_5_MOE: return "ernie4_5_moe";
    case XD_ARCH_HUNYUAN_V1_MOE: return "hunyuan_v1_moe";
    }
    return "?";
}

/* An integer key in [lo, hi]; def when absent or null (def < lo: required). */
static int get_int(json_t *root, const char *path, const char *key, long long def, long long lo,
                   long long hi, int *ret, struct xd_err *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (def < lo)
            return xd_err_set(err, XD_ERR_CONFIG, "%s: key '%s' is missing", path, key);
        *ret = (int)def;
        return XD_OK;
    }
    if (!json_is_integer(v))
        return xd_err_set(err, XD_ERR_CONFIG, "%s: key '%s' must be an integer", path, key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return xd_err_set(err, XD_ERR_CONFIG, "%s: key '%s' is %lld; it must be in [%lld, %lld]",
                          path, key, x, lo, hi);
    *ret = (int)x;
    return XD_OK;
}

static int get_float(json_t *root, const char *path, const char *key, double def, double lo,
                     double hi, float *ret, struct xd_err *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (isnan(def))
            return xd_err_set(err, XD_ERR_CONFIG, "%s: key '%s' is missing", path, key);
        *ret = (float)def;
        return XD_OK;
    }
    if (!json_is_number(v))
        return xd_err_set(err, XD_ERR_CONFIG, "%s: key '%s' must be a number", path, key);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi))
        return xd_err_set(err, XD_ERR_CONFIG, "%s: key '%s' is %g; it must be in [%g, %g]", path,
                          key, x, lo, hi);
    *ret = (float)x;
    return XD_OK;
}

static int get_bool(json_t *root, const char *path, const char *key, bool def, bool *ret,
                    struct xd_err *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *ret = def;
        return XD_OK;
    }
    if (!json_is_boolean(v))
        return xd_err_set(err, XD_ERR_CONFIG, "%s: key '%s' must be true or false", path, key);
    *ret = json_is_true(v);
    return XD_OK;
}

/* The context a rope scaling is made for: linear and dynamic stretch max_position_embeddings
 * by factor; yarn's factor applies to original_max_position_embeddings; llama3 configs
 * already give the stretched max_position_embeddings. Never below max_position_embeddings. */
static int context_length(const struct xd_model_config *c)
{
    const struct xd_rope *r = &c->rope;
    double n = c->max_position_embeddings;
    if (r->type == XD_ROPE_LINEAR || r->type == XD_ROPE_DYNAMIC)
        n *= r->factor;
    else if (r->type == XD_ROPE_YARN)
        n = (double)r->original_max_position_embeddings * r->factor;
    if (n < c->max_position_embeddings)
        n = c->max_position_embeddings;
    return n > (1 << 24) ? 1 << 24 : (int)n;
}

/* Appends one eos id, checked against the vocabulary before it is narrowed to int (an id
 * such as 2^32 + 2 must not wrap into range). One outside the vocabulary is ignored with a
 * warning naming the key, as transformers only warns about it (no token can be that id). */
static int add_eos(struct xd_model_config *c, json_int_t id, const char *path, struct xd_err *err)
{
    (void)err;
    if (id < 0 || id >= c->vocab_size) {
        size_t len = strlen(c->warning);
        snprintf(c->warning + len, sizeof c->warning - len,
                 "%s%s: key 'eos_token_id' holds %lld, outside the vocabulary (%d); ignored",
                 len ? "; " : "", path, (long long)id, c->vocab_size);
        return XD_OK;
    }
    c->eos_token_ids[c->n_eos++] = (int)id;
    return XD_OK;
}

static int get_eos(json_t *root, const char *path, struct xd_model_config *c, struct xd_err *err)
{
    json_t *v = json_object_get(root, "eos_token_id");
    if (!v || json_is_null(v))
        return XD_OK;
    c->n_eos = 0;
    if (json_is_integer(v)) {
        int rc = add_eos(c, json_integer_value(v), path, err);
        if (rc < 0)
            return rc;
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            if (!json_is_integer(e) || c->n_eos == XD_MAX_EOS)
                return xd_err_set(err, XD_ERR_CONFIG,
                                  "%s: key 'eos_token_id' must be an integer or a list of at "
                                  "most %d integers",
                                  path, XD_MAX_EOS);
            int rc = add_eos(c, json_integer_value(e), path, err);
            if (rc < 0)
                return rc;
        }
    } else {
        return xd_err_set(err, XD_ERR_CONFIG, "%s: key 'eos_token_id' must be an integer or a list",
                          path);
    }
    json_t *b = json_object_get(root, "bos_token_id");
    if (json_is_integer(b) && json_integer_value(b) >= 0 && json_integer_value(b) < c->vocab_size)
        c->bos_token_id = (int)json_integer_value(b);
    return XD_OK;
}

/* config.json's layer_types (a list of num_hidden_layers "sliding_attention" or
 * "full_attention") into c->full_attention_layer. */
static int get_layer_types(json_t *lt, const char *path, struct xd_model_config *c,
                           struct xd_err *err)
{
    if (!json_is_array(lt) || json_array_size(lt) != (size_t)c->n_layers)
        return xd_err_set(err, XD_ERR_CONFIG,
                          "%s: key 'layer_types' must be a list of num_hidden_layers (%d) strings",
                          path, c->n_layers);
    for (int i = 0; i < c->n_layers; i++) {
        const char *t = json_string_value(json_array_get(lt, (size_t)i));
        if (t && strcmp(t, "full_attention") == 0)
            c->full_attention_layer[i] = true;
        else if (t && strcmp(t, "sliding_attention") == 0)
            c->full_attention_layer[i] = false;
        else
            return xd_err_set(err, XD_ERR_UNSUPPORTED,
                              "%s: key 'layer_types' entry %d is \"%.32s\"; %s layers are "
                              "\"sliding_attention\" or \"full_attention\"",
                              path, i, t ? t : "(not a string)", c->model_type);
    }
    return XD_OK;
}

/* dots1's attention windows (Dots1Config): sliding_window (4096 when absent; null: none);
 * layer_types, or when absent sliding from max_window_layers on (62 when absent) if there is a
 * window. A sliding layer without a window is refused: transformers would attend it fully
 * through a sliding mask of no width, a case expertd does not guess at. */
static int parse_dots1_windows(json_t *root, const char *path, struct xd_model_config *c,
                               struct xd_err *err)
{
    json_t *sw = json_object_get(root, "sliding_window");
    const bool has_window = !(sw && json_is_null(sw));
    if (has_window)
        XD_TRY(get_int(root, path, "sliding_window", 4096, 1, 1 << 24, &c->sliding_window, err));
    int max_window_layers = 62;
    XD_TRY(get_int(root, path, "max_window_layers", 62, 0, 1 << 20, &max_window_layers, err));
    json_t *lt = json_object_get(root, "layer_types");
    if (!lt || json_is_null(lt)) {
        for (int i = 0; i < c->n_layers; i++)
            c->full_attention_layer[i] = !(has_window && i >= max_window_layers);
    } else {
        XD_TRY(get_layer_types(lt, path, c, err));
    }
    for (int i = 0; i < c->n_layers; i++)
        if (!c->full_attention_layer[i] && !has_window)
            return xd_err_set(err, XD_ERR_UNSUPPORTED,
                              "%s: key 'layer_types' makes layer %d sliding_attention but key "
                              "'sliding_window' is null; expertd needs a window for it",
                              path, i);
    return XD_OK;
}

/* granitemoe and granitemoeshared (GraniteMoeConfig's defaults): mixtral's layers with a top-k
 * softmax router (softmax over the k best logits), the embedding times embedding_multiplier,
 * attention_multiplier as the softmax scale (it replaces head_dim^-0.5; 1 when absent, as
 * transformers' default), each block's output times residual_multiplier before its residual
 * add, the logits divided by logits_scaling; granitemoeshared adds an ungated shared MLP of
 * shared_intermediate_size (0: none). */
static int parse_granite(json_t *root, const char *path, struct xd_model_config *c,
                         bool attention_bias, struct xd_err *err)
{
    c->qkv_bias = c->o_bias = attention_bias;
    c->router = XD_ROUTER_TOPK_SOFTMAX;
    XD_TRY(get_int(root, path, "intermediate_size", 11008, 1, 1 << 20, &c->expert_ffn, err));
    /* each within +-1e6: a larger one overflows the f32 residual stream */
    XD_TRY(get_float(root, path, "embedding_multiplier", 1.0, -1e6, 1e6,
                     &c->embedding_multiplier, err));
    XD_TRY(get_float(root, path, "attention_multiplier", 1.0, 1e-30, 1e6, &c->attn_scale, err));
    XD_TRY(get_float(root, path, "residual_multiplier", 1.0, -1e6, 1e6, &c->residual_multiplier,
                     err));
    XD_TRY(get_float(root, path, "logits_scaling", 1.0, -1e6, 1e6, &c->logits_scaling, err));
    if (c->logits_scaling == 0.0f)
        return xd_err_set(err, XD_ERR_CONFIG,
                          "%s: key 'logits_scaling' is 0; the logits are divided by it", path);
    if (c->arch == XD_ARCH_GRANITEMOE_SHARED)
        XD_TRY(get_int(root, path, "shared_intermediate_size", 0, 0, 1 << 20,
                       &c->shared_expert_ffn, err));
    for (int i = 0; i < c->n_layers; i++)
        c->is_moe_layer[i] = true;
    return XD_OK;
}

/* ernie4_5_moe (Ernie4_5_MoeConfig's defaults): MoE layers i with (i + 1) %
 * moe_layer_interval == 0 from moe_layer_start_index to moe_layer_end_index (-1: the last),
 * the others dense (intermediate_size); moe_num_shared_experts ungated shared experts;
 * the router's softmax top-k chosen by probability + moe_statics.e_score_correction_bias,
 * renormalised over max(sum, moe_norm_min); rope on adjacent pairs. use_bias (biases on the
 * attention and every dense and shared MLP, none on the experts) is refused by name. */
static int parse_ernie(json_t *root, const char *path, struct xd_model_config *c,
                       struct xd_err *err)
{
    bool use_bias = false;
    XD_TRY(get_bool(root, path, "use_bias", false, &use_bias, err));
    if (use_bias)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: key 'use_bias' is true; expertd computes ernie4_5_moe without "
                          "attention and MLP biases (the published checkpoints have none)",
                          path);
    c->router = XD_ROUTER_SOFTMAX_BIAS;
    c->norm_topk_prob = true;
    c->rope_layout = XD_ROPE_PAIRS;
    XD_TRY(get_float(root, path, "moe_norm_min", 1e-12, 0.0, 1e30, &c->router_norm_min, err));
    XD_TRY(get_int(root, path, "moe_intermediate_size", 1536, 1, 1 << 20, &c->expert_ffn, err));
    XD_TRY(get_int(root, path, "intermediate_size", 12288, 1, 1 << 20, &c->dense_ffn, err));
    int n_shared = 2;
    XD_TRY(get_int(root, path, "moe_num_shared_experts", 2, 0, 64, &n_shared, err));
    c->shared_expert_ffn = n_shared * c->expert_ffn;
    int start = 1, end = -1, interval = 1;
    XD_TRY(get_int(root, path, "moe_layer_start_index", 1, 0, 1 << 20, &start, err));
    XD_TRY(get_int(root, path, "moe_layer_end_index", -1, -1, 1 << 20, &end, err));
    XD_TRY(get_int(root, path, "moe_layer_interval", 1, 1, 1 << 20, &interval, err));
    if (end == -1)
        end = c->n_layers - 1;
    int n_moe = 0;
    for (int i = 0; i < c->n_layers; i++)
        n_moe += c->is_moe_layer[i] = (i + 1) % interval == 0 && i >= start && i <= end;
    if (n_moe == 0) /* a dense model: not one expertd serves */
        return xd_err_set(err, XD_ERR_CONFIG,
                          "%s: keys 'moe_layer_start_index' (%d), 'moe_layer_end_index' and "
                          "'moe_layer_interval' (%d) leave no MoE layer among %d",
                          path, start, interval, c->n_layers);
    return XD_OK;
}

/* hunyuan_v1_moe's rope (HunYuanMoEV1RotaryEmbedding): a "dynamic" rope_parameters (or
 * rope_scaling) with an alpha is NTK-alpha, the default rope over the base rope_theta *
 * alpha^(head_dim / (head_dim - 2)) whatever the sequence length (computed in double as
 * Python does, then rounded to f32 as torch rounds the base); rewritten so in root before
 * xd_rope_parse reads it. Any other rope is left to xd_rope_parse. */
static int hunyuan_ntk_alpha(json_t *root, const char *path, int head_dim, struct xd_err *err)
{
    const char *key = "rope_parameters";
    json_t *rp = json_object_get(root, key);
    if (!json_is_object(rp)) {
        key = "rope_scaling";
        rp = json_object_get(root, key);
    }
    if (!json_is_object(rp))
        return XD_OK;
    json_t *type = json_object_get(rp, "rope_type");
    if (!type)
        type = json_object_get(rp, "type");
    json_t *alpha = json_object_get(rp, "alpha");
    if (!json_is_string(type) || strcmp(json_string_value(type), "dynamic") != 0 || !alpha ||
        json_is_null(alpha) || (json_is_number(alpha) && json_number_value(alpha) == 0.0))
        return XD_OK;
    if (!json_is_number(alpha) || !(json_number_value(alpha) > 0.0) ||
        json_number_value(alpha) > 1e9)
        return xd_err_set(err, XD_ERR_CONFIG,
                          "%s: key '%s.alpha' must be a positive number (NTK-alpha rope)", path,
                          key);
    if (head_dim <= 2)
        return xd_err_set(err, XD_ERR_CONFIG,
                          "%s: key 'head_dim' (%d) must be above 2 for the NTK-alpha rope", path,
                          head_dim);
    json_t *t = json_object_get(rp, "rope_theta");
    if (!t || json_is_null(t))
        t = json_object_get(root, "rope_theta");
    double theta = 10000.0;
    if (t && !json_is_null(t)) {
        if (!json_is_number(t) || !(json_number_value(t) > 0.0))
            return xd_err_set(err, XD_ERR_CONFIG, "%s: key 'rope_theta' must be a positive number",
                              path);
        theta = json_number_value(t);
    }
    const double base =
        theta * pow(json_number_value(alpha), (double)head_dim / (double)(head_dim - 2));
    json_object_del(root, "rope_scaling");
    json_object_del(root, "rope_theta");
    json_object_set_new(root, "rope_parameters",
                        json_pack("{s:s, s:f}", "rope_type", "default", "rope_theta", base));
    return XD_OK;
}

/* hunyuan_v1_moe (HunYuanMoEV1Config's defaults): every layer MoE, a softmax router
 * (gate.wg) renormalised, an ungated shared MLP and the experts all intermediate_size wide,
 * per-head q/k norm (query_layernorm, key_layernorm) after the rotary embedding. moe_topk (and
 * num_experts) may be per-layer lists in the published configs: a list whose entries are
 * all equal is that value, any other is refused. */
static int parse_hunyuan(json_t *root, const char *path, struct xd_model_config *c,
                         bool attention_bias, struct xd_err *err)
{
    c->qkv_bias = c->o_bias = attention_bias;
    c->qk_norm = XD_QK_NORM_PER_HEAD;
    c->qk_norm_after_rope = true;
    c->norm_topk_prob = true;
    XD_TRY(get_int(root, path, "intermediate_size", 11008, 1, 1 << 20, &c->expert_ffn, err));
    c->shared_expert_ffn = c->expert_ffn;
    for (int i = 0; i < c->n_layers; i++)
        c->is_moe_layer[i] = true;
    return XD_OK;
}

/* hunyuan_v1_moe's moe_topk or num_experts: an integer, or a list of num_hidden_layers equal
 * integers, into root as that integer (so the common code reads it). */
static int hunyuan_uniform_list(json_t *root, const char *path, const char *key, int n_layers,
                                struct xd_err *err)
{
    json_t *v = json_object_get(root, key);
    if (!json_is_array(v))
        return XD_OK;
    json_t *first = json_array_get(v, 0);
    bool ok = json_array_size(v) == (size_t)n_layers && json_is_integer(first);
    for (size_t i = 1; ok && i < json_array_size(v); i++)
        ok = json_is_integer(json_array_get(v, i)) &&
             json_integer_value(json_array_get(v, i)) == json_integer_value(first);
    if (!ok)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: key '%s' must be an integer or a list of num_hidden_layers (%d) "
                          "equal integers; expertd does not serve a different value per layer",
                          path, key, n_layers);
    json_object_set_new(root, key, json_integer(json_integer_value(first)));
    return XD_OK;
}

/* gpt_oss (GptOssConfig's defaults): biases on q, k, v, o, the router and the experts;
 * attention sinks; layer_types choosing sliding or full attention per layer; the clamped
 * SwiGLU. A quantization_config is accepted for the published MXFP4 experts (quant_method
 * "mxfp4"; its modules_to_not_convert are the modules stored unquantized, which the loader
 * finds by their tensors) and refused naming the key for any other method. */
static int parse_gpt_oss(json_t *root, const char *path, struct xd_model_config *c,
                         bool attention_bias, struct xd_err *err)
{
    json_t *q = json_object_get(root, "quantization_config");
    if (q && !json_is_null(q)) {
        json_t *m = json_is_object(q) ? json_object_get(q, "quant_method") : NULL;
        if (!json_is_string(m) || strcmp(json_string_value(m), "mxfp4") != 0)
            return xd_err_set(err, XD_ERR_UNSUPPORTED,
                              "%s: key 'quantization_config' (quant_method \"%.32s\") is not "
                              "supported for gpt_oss; expertd computes unquantized (f32, bf16, "
                              "f16) and MXFP4 experts",
                              path, json_is_string(m) ? json_string_value(m) : "?");
        c->experts_mxfp4 = true;
    }
    c->qkv_bias = c->o_bias = attention_bias;
    c->attn_sinks = true;
    c->expert_bias = true;
    c->router = XD_ROUTER_TOPK_SOFTMAX;
    XD_TRY(get_int(root, path, "intermediate_size", 2880, 1, 1 << 20, &c->expert_ffn, err));
    /* absent: 128; an explicit null: no window (every layer full) */
    json_t *sw = json_object_get(root, "sliding_window");
    if (!(sw && json_is_null(sw)))
        XD_TRY(get_int(root, path, "sliding_window", 128, 0, 1 << 24, &c->sliding_window, err));
    XD_TRY(get_float(root, path, "swiglu_limit", 7.0, 1e-6, 1e30, &c->swiglu_limit, err));
    XD_TRY(get_float(root, path, "swiglu_alpha", 1.702, -1e30, 1e30, &c->swiglu_alpha, err));
    json_t *lt = json_object_get(root, "layer_types");
    if (!lt || json_is_null(lt)) {
        for (int i = 0; i < c->n_layers; i++) /* sliding on even layers, as __post_init__ */
            c->full_attention_layer[i] = i % 2 == 1;
    } else {
        XD_TRY(get_layer_types(lt, path, c, err));
    }
    for (int i = 0; i < c->n_layers; i++)
        c->is_moe_layer[i] = true;
    return XD_OK;
}

/* A string key that must be one of the n values in ok (def when absent or null); returns its
 * index. */
static int get_choice(json_t *root, const char *path, const char *key, const char *def,
                      const char *const *ok, int n, int *ret, struct xd_err *err)
{
    json_t *v = json_object_get(root, key);
    const char *got = def;
    if (v && !json_is_null(v)) {
        if (!json_is_string(v))
            return xd_err_set(err, XD_ERR_CONFIG, "%s: key '%s' must be a string", path, key);
        got = json_string_value(v);
    }
    for (int i = 0; i < n; i++)
        if (strcmp(got, ok[i]) == 0) {
            *ret = i;
            return XD_OK;
        }
    return xd_err_set(err, XD_ERR_UNSUPPORTED, "%s: key '%s' is \"%.64s\"; expertd supports %s%s%s",
                      path, key, got, ok[0], n > 1 ? " and " : "", n > 1 ? ok[1] : "");
}

/* deepseek_v2 and deepseek_v3 (modeling_deepseek_v2.py / _v3.py of transformers 5.23): MLA,
 * grouped routing, shared experts, first_k_dense_replace. Absent keys take transformers'
 * defaults for the model type. Options transformers computes differently from DeepSeek's own
 * code, or that expertd does not compute, are refused by name. */
static int parse_deepseek(json_t *root, const char *path, struct xd_model_config *c,
                          struct xd_err *err)
{
    const bool v3 = c->arch == XD_ARCH_DEEPSEEK_V3;
    c->mla = true;
    /* DeepSeek publishes V3, R1, V3.1 and Kimi-K2 as fine-grained FP8: quantization_config is
     * read after the layers (get_quant), as for the other families */
    if (c->n_kv_heads != c->n_heads)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: key 'num_key_value_heads' is %d; multi-head latent attention "
                          "expands its latent to every head, so it must equal "
                          "num_attention_heads (%d)",
                          path, c->n_kv_heads, c->n_heads);
    json_t *ql = json_object_get(root, "q_lora_rank");
    if (ql && json_is_null(ql))
        c->q_lora_rank = 0; /* null: q_proj */
    else
        XD_TRY(get_int(root, path, "q_lora_rank", 1536, 1, 1 << 16, &c->q_lora_rank, err));
    XD_TRY(get_int(root, path, "kv_lora_rank", 512, 1, 1 << 16, &c->kv_lora_rank, err));
    XD_TRY(get_int(root, path, "qk_nope_head_dim", 128, 0, 4096, &c->qk_nope_head_dim, err));
    XD_TRY(get_int(root, path, "qk_rope_head_dim", 64, 2, 4096, &c->qk_rope_head_dim, err));
    XD_TRY(get_int(root, path, "v_head_dim", 128, 1, 4096, &c->v_head_dim, err));
    if (c->qk_rope_head_dim % 2 != 0)
        return xd_err_set(err, XD_ERR_CONFIG, "%s: key 'qk_rope_head_dim' (%d) must be even", path,
                          c->qk_rope_head_dim);
    c->head_dim = c->qk_rope_head_dim; /* transformers: the rotary embedding's width */
    if (c->rope.rot_dim != c->qk_rope_head_dim)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: key 'partial_rotary_factor' makes %d of the %d rotary dims "
                          "rotate; %s rotates all of qk_rope_head_dim",
                          path, c->rope.rot_dim, c->qk_rope_head_dim, c->model_type);
    /* transformers' yarn_apply_mscale: qk_head_dim^-0.5, times mscale^2 for any rope type but
     * default when mscale_all_dim is set */
    double scale = 1.0 / sqrt((double)(c->qk_nope_head_dim + c->qk_rope_head_dim));
    if (c->rope.type != XD_ROPE_DEFAULT && c->rope.mscale_all_dim != 0.0f) {
        double m = xd_rope_yarn_mscale(c->rope.factor, c->rope.mscale_all_dim);
        scale = scale * m * m;
    }
    c->attn_scale = (float)scale;
    bool interleave = true;
    if (v3)
        XD_TRY(get_bool(root, path, "rope_interleave", true, &interleave, err));
    c->rope_layout = interleave ? XD_ROPE_PAIRS : XD_ROPE_HALVES;

    bool flag = false;
    XD_TRY(get_bool(root, path, "attention_bias", false, &flag, err));
    if (flag)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: key 'attention_bias' is true; expertd computes %s without "
                          "attention biases",
                          path, c->model_type);
    XD_TRY(get_bool(root, path, "mlp_bias", false, &flag, err));
    if (flag)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: key 'mlp_bias' is true; expertd computes %s without MLP biases",
                          path, c->model_type);

    XD_TRY(get_int(root, path, "n_routed_experts", v3 ? 256 : 64, 1, 1 << 16, &c->n_experts,
                   err));
    XD_TRY(get_int(root, path, "num_experts_per_tok", v3 ? 8 : -1, 1, c->n_experts, &c->top_k,
                   err));
    XD_TRY(get_int(root, path, "moe_intermediate_size", v3 ? 2048 : 1407, 1, 1 << 20,
                   &c->expert_ffn, err));
    XD_TRY(get_int(root, path, "intermediate_size", v3 ? 18432 : 11008, 1, 1 << 20, &c->dense_ffn,
                   err));
    int n_shared = 0;
    XD_TRY(get_int(root, path, "n_shared_experts", v3 ? 1 : 2, 0, 1 << 10, &n_shared, err));
    c->shared_expert_ffn = n_shared * c->expert_ffn;
    XD_TRY(get_float(root, path, "routed_scaling_factor", v3 ? 2.5 : 1.0, 0.0, 1e6,
                     &c->routed_scaling_factor, err));
    int first_dense = 0;
    XD_TRY(get_int(root, path, "first_k_dense_replace", v3 ? 3 : 0, 0, c->n_layers, &first_dense,
                   err));
    int freq = 1;
    XD_TRY(get_int(root, path, "moe_layer_freq", 1, 1, XD_MAX_LAYERS, &freq, err));
    if (freq != 1)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: key 'moe_layer_freq' is %d; transformers ignores it (every layer "
                          "from first_k_dense_replace on is MoE) while DeepSeek's code does not, "
                          "so expertd supports only 1",
                          path, freq);
    for (int i = 0; i < c->n_layers; i++)
        c->is_moe_layer[i] = i >= first_dense;

    if (v3) {
        int ix = 0;
        const char *sig[] = {"sigmoid"};
        XD_TRY(get_choice(root, path, "scoring_func", "sigmoid", sig, 1, &ix, err));
        c->router = XD_ROUTER_SIGMOID_BIAS;
        XD_TRY(get_bool(root, path, "norm_topk_prob", true, &c->norm_topk_prob, err));
        XD_TRY(get_int(root, path, "n_group", 8, 1, c->n_experts, &c->n_group, err));
        XD_TRY(get_int(root, path, "topk_group", 4, 1, c->n_group, &c->topk_group, err));
    } else {
        int method = 0;
        const char *methods[] = {"greedy", "group_limited_greedy"};
        const char *soft[] = {"softmax"};
        XD_TRY(get_choice(root, path, "scoring_func", "softmax", soft, 1, &method, err));
        XD_TRY(get_choice(root, path, "topk_method", "greedy", methods, 2, &method, err));
        XD_TRY(get_bool(root, path, "norm_topk_prob", false, &flag, err));
        if (flag)
            return xd_err_set(err, XD_ERR_UNSUPPORTED,
                              "%s: key 'norm_topk_prob' is true; transformers' deepseek_v2 never "
                              "renormalises the top-k weights while DeepSeek's code does, so "
                              "expertd supports only false",
                              path);
        c->router = method == 1 ? XD_ROUTER_SOFTMAX_GROUP : XD_ROUTER_SOFTMAX;
        if (c->router == XD_ROUTER_SOFTMAX_GROUP) {
            XD_TRY(get_int(root, path, "n_group", -1, 1, c->n_experts, &c->n_group, err));
            XD_TRY(get_int(root, path, "topk_group", -1, 1, c->n_group, &c->topk_group, err));
        }
    }
    if (c->n_group > 0) {
        const int per = c->n_experts / c->n_group;
        if (c->topk_group > c->n_group) /* the default 4 with fewer groups */
            return xd_err_set(err, XD_ERR_CONFIG,
                              "%s: key 'topk_group' (%d) is more than n_group (%d)", path,
                              c->topk_group, c->n_group);
        if (c->n_experts % c->n_group != 0)
            return xd_err_set(err, XD_ERR_CONFIG,
                              "%s: key 'n_group' (%d) must divide n_routed_experts (%d)", path,
                              c->n_group, c->n_experts);
        if (c->router == XD_ROUTER_SIGMOID_BIAS && c->n_experts > 4096)
            return xd_err_set(err, XD_ERR_UNSUPPORTED,
                              "%s: key 'n_routed_experts' is %d; the grouped sigmoid router "
                              "handles at most 4096",
                              path, c->n_experts);
        if (c->router == XD_ROUTER_SIGMOID_BIAS && per < 2)
            return xd_err_set(err, XD_ERR_CONFIG,
                              "%s: key 'n_group' (%d) leaves fewer than 2 experts per group; "
                              "noaux_tc ranks groups by their two best experts",
                              path, c->n_group);
        if (c->top_k > c->topk_group * per)
            return xd_err_set(err, XD_ERR_CONFIG,
                              "%s: key 'num_experts_per_tok' (%d) is more than the %d experts of "
                              "topk_group (%d) groups",
                              path, c->top_k, c->topk_group * per, c->topk_group);
    }
    return XD_OK;
}

#define TRY(expr)             \
    do {                      \
        int rc_ = (expr);     \
        if (rc_ < 0) {        \
            json_decref(root);\
            return rc_;       \
        }                     \
    } while (0)

/* A string key of quantization_config that must be absent, null or want. */
static int qc_string(json_t *qc, const char *path, const char *key, const char *want,
                     struct xd_err *err)
{
    json_t *v = json_object_get(qc, key);
    if (!v || json_is_null(v))
        return XD_OK;
    if (!json_is_string(v) || strcmp(json_string_value(v), want) != 0)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: key 'quantization_config.%s' is %s; expertd reads fine-grained "
                          "FP8 checkpoints with %s only",
                          path, key, json_is_string(v) ? json_string_value(v) : "not a string",
                          want);
    return XD_OK;
}

/* quantization_config: absent, or the fine-grained FP8 of DeepSeek-V3/R1/V3.1, Kimi-K2 and
 * the Qwen3 *-FP8 releases (quant_method fp8, fmt e4m3, activation_scheme dynamic,
 * weight_block_size [r, c], scale_fmt float or ue8m0); anything else is refused naming the
 * key. */
static int get_quant(json_t *root, const char *path, struct xd_model_config *c,
                     struct xd_err *err)
{
    json_t *qc = json_object_get(root, "quantization_config");
    if (!qc || json_is_null(qc))
        return XD_OK;
    if (!json_is_object(qc))
        return xd_err_set(err, XD_ERR_CONFIG, "%s: key 'quantization_config' must be an object",
                          path);
    json_t *qm = json_object_get(qc, "quant_method");
    if (!json_is_string(qm) || strcmp(json_string_value(qm), "fp8") != 0)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: key 'quantization_config.quant_method' is %s; expertd reads "
                          "unquantized checkpoints and fine-grained FP8 (\"fp8\") only",
                          path, json_is_string(qm) ? json_string_value(qm) : "missing");
    XD_TRY(qc_string(qc, path, "fmt", "e4m3", err));
    XD_TRY(qc_string(qc, path, "activation_scheme", "dynamic", err));
    /* scale_fmt: how DeepSeek's kernels round the scales of the activations they quantize
     * (DeepSeek-V3.1 and later: "ue8m0", powers of two); the weights' scales are read from
     * their weight_scale_inv tensors (F32 or BF16, checked at load) whatever it says, and
     * expertd never quantizes activations to FP8 */
    json_t *sf = json_object_get(qc, "scale_fmt");
    if (!(json_is_string(sf) && strcmp(json_string_value(sf), "ue8m0") == 0))
        XD_TRY(qc_string(qc, path, "scale_fmt", "float", err));
    json_t *bs = json_object_get(qc, "weight_block_size");
    if (!bs) {
        c->fp8_block[0] = c->fp8_block[1] = 128; /* transformers' default */
    } else {
        json_t *b0 = json_array_get(bs, 0), *b1 = json_array_get(bs, 1);
        if (!json_is_array(bs) || json_array_size(bs) != 2 || !json_is_integer(b0) ||
            !json_is_integer(b1) || json_integer_value(b0) < 1 || json_integer_value(b1) < 1 ||
            json_integer_value(b0) > 65536 || json_integer_value(b1) > 65536)
            return xd_err_set(err, XD_ERR_UNSUPPORTED,
                              "%s: key 'quantization_config.weight_block_size' must be two "
                              "positive integers such as [128, 128] (per-tensor FP8 scales are "
                              "not read)",
                              path);
        c->fp8_block[0] = (int)json_integer_value(b0);
        c->fp8_block[1] = (int)json_integer_value(b1);
    }
    c->fp8 = true;
    return XD_OK;
}

int xd_model_config_parse(const char *text, size_t len, const char *path,
                          struct xd_model_config *c, struct xd_err *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return xd_err_set(err, XD_ERR_CONFIG, "%s: not valid JSON: %s (line %d)", path, jerr.text,
                          jerr.line);
    memset(c, 0, sizeof *c);
    c->bos_token_id = -1;
    c->routed_scaling_factor = 1.0f;
    c->embedding_multiplier = c->residual_multiplier = c->logits_scaling = 1.0f;
    if (!json_is_object(root)) {
        json_decref(root);
        return xd_err_set(err, XD_ERR_CONFIG, "%s: not a JSON object", path);
    }
    json_t *mt = json_object_get(root, "model_type");
    if (!json_is_string(mt)) {
        json_decref(root);
        return xd_err_set(err, XD_ERR_CONFIG, "%s: key 'model_type' is missing", path);
    }
    const char *type = json_string_value(mt);
    if (strcmp(type, "mixtral") == 0)
        c->arch = XD_ARCH_MIXTRAL;
    else if (strcmp(type, "qwen2_moe") == 0)
        c->arch = XD_ARCH_QWEN2_MOE;
    else if (strcmp(type, "qwen3_moe") == 0)
        c->arch = XD_ARCH_QWEN3_MOE;
    else if (strcmp(type, "olmoe") == 0)
        c->arch = XD_ARCH_OLMOE;
    else if (strcmp(type, "deepseek_v2") == 0)
        c->arch = XD_ARCH_DEEPSEEK_V2;
    else if (strcmp(type, "deepseek_v3") == 0 || strcmp(type, "kimi_k2") == 0)
        c->arch = XD_ARCH_DEEPSEEK_V3;
    else if (strcmp(type, "glm4_moe") == 0)
        c->arch = XD_ARCH_GLM4_MOE;
    else if (strcmp(type, "gpt_oss") == 0)
        c->arch = XD_ARCH_GPT_OSS;
    else if (strcmp(type, "dots1") == 0)
        c->arch = XD_ARCH_DOTS1;
    else if (strcmp(type, "granitemoe") == 0)
        c->arch = XD_ARCH_GRANITEMOE;
    else if (strcmp(type, "granitemoeshared") == 0)
        c->arch = XD_ARCH_GRANITEMOE_SHARED;
    else if (strcmp(type, "ernie4_5_moe") == 0)
        c->arch = XD_ARCH_ERNIE4_5_MOE;
    else if (strcmp(type, "hunyuan_v1_moe") == 0)
        c->arch = XD_ARCH_HUNYUAN_V1_MOE;
    else {
        xd_err_set(err, XD_ERR_UNSUPPORTED,
                   "%s: key 'model_type' is \"%.64s\"; expertd serves mixtral, qwen2_moe, "
                   "qwen3_moe, olmoe, deepseek_v2, deepseek_v3 (and kimi_k2), glm4_moe, gpt_oss, "
                   "dots1, granitemoe, granitemoeshared, ernie4_5_moe and hunyuan_v1_moe",
                   path, type);
        json_decref(root);
        return XD_ERR_UNSUPPORTED;
    }
    snprintf(c->model_type, sizeof c->model_type, "%s", xd_arch_name(c->arch));

    const int BIG = 1 << 24;
    TRY(get_int(root, path, "vocab_size", -1, 1, BIG, &c->vocab_size, err));
    TRY(get_int(root, path, "hidden_size", -1, 1, 1 << 16, &c->hidden_size, err));
    TRY(get_int(root, path, "num_hidden_layers", -1, 1, XD_MAX_LAYERS, &c->n_layers, err));
    TRY(get_int(root, path, "num_attention_heads", -1, 1, 1024, &c->n_heads, err));
    TRY(get_int(root, path, "num_key_value_heads", c->n_heads, 1, c->n_heads, &c->n_kv_heads,
                err));
    if (c->n_heads % c->n_kv_heads != 0) {
        json_decref(root);
        return xd_err_set(err, XD_ERR_CONFIG,
                          "%s: key 'num_key_value_heads' (%d) must divide num_attention_heads (%d)",
                          path, c->n_kv_heads, c->n_heads);
    }
    int def_hd = c->hidden_size % c->n_heads == 0 ? c->hidden_size / c->n_heads : -1;
    if (c->arch == XD_ARCH_GPT_OSS)
        def_hd = 64; /* GptOssConfig's head_dim */
    /* deepseek: head_dim is qk_rope_head_dim whatever config.json says (as transformers sets
     * it): the width of the rotary embedding */
    if (c->arch == XD_ARCH_DEEPSEEK_V2 || c->arch == XD_ARCH_DEEPSEEK_V3)
        TRY(get_int(root, path, "qk_rope_head_dim", 64, 2, 4096, &c->head_dim, err));
    else
        TRY(get_int(root, path, "head_dim", def_hd, 2, 1024, &c->head_dim, err));
    c->attn_scale = c->head_dim > 0 ? 1.0f / sqrtf((float)c->head_dim) : 0.0f;
    if (c->head_dim % 2 != 0) {
        json_decref(root);
        return xd_err_set(err, XD_ERR_CONFIG, "%s: key '%s' (%d) must be even", path,
                          c->arch == XD_ARCH_DEEPSEEK_V2 || c->arch == XD_ARCH_DEEPSEEK_V3
                              ? "qk_rope_head_dim"
                              : "head_dim",
                          c->head_dim);
    }
    const bool granite = c->arch == XD_ARCH_GRANITEMOE || c->arch == XD_ARCH_GRANITEMOE_SHARED;
    const bool ernie = c->arch == XD_ARCH_ERNIE4_5_MOE;
    const bool hunyuan = c->arch == XD_ARCH_HUNYUAN_V1_MOE;
    TRY(get_int(root, path, "max_position_embeddings",
                c->arch == XD_ARCH_GPT_OSS || ernie         ? 131072
                : c->arch == XD_ARCH_DOTS1 || granite || hunyuan ? 2048
                                                            : 4096,
                1, 1 << 24, &c->max_position_embeddings, err));
    TRY(get_float(root, path, "rms_norm_eps", ernie || hunyuan ? 1e-5 : 1e-6, 0.0, 1.0,
                  &c->rms_norm_eps, err));
    if (hunyuan)
        TRY(hunyuan_ntk_alpha(root, path, c->head_dim, err));
    if (c->arch == XD_ARCH_GLM4_MOE) {
        /* Glm4MoeConfig: partial_rotary_factor 0.5 unless config.json gives one */
        json_t *rp = json_object_get(root, "rope_parameters");
        json_t *rs = json_object_get(root, "rope_scaling");
        if (!json_object_get(root, "partial_rotary_factor") &&
            !(json_is_object(rp) && json_object_get(rp, "partial_rotary_factor")) &&
            !(json_is_object(rs) && json_object_get(rs, "partial_rotary_factor")))
            json_object_set_new(root, "partial_rotary_factor", json_real(0.5));
    }
    if (c->arch == XD_ARCH_GPT_OSS && !json_is_object(json_object_get(root, "rope_parameters")) &&
        !json_is_object(json_object_get(root, "rope_scaling"))) {
        /* GptOssConfig.__post_init__: YaRN as published when config.json gives no rope */
        json_t *y = json_pack("{s:s, s:f, s:f, s:f, s:b, s:i}", "rope_type", "yarn", "factor",
                              32.0, "beta_fast", 32.0, "beta_slow", 1.0, "truncate", 0,
                              "original_max_position_embeddings", 4096);
        json_object_set_new(root, "rope_parameters", y);
    }
    const double default_theta = c->arch == XD_ARCH_MIXTRAL   ? 1e6
                                 : c->arch == XD_ARCH_GPT_OSS ? 150000.0
                                 : ernie                      ? 500000.0
                                                              : 10000.0;
    TRY(xd_rope_parse(root, path, c->head_dim, c->max_position_embeddings, default_theta,
                      &c->rope, err));
    c->rope_theta = c->rope.theta;
    if (c->rope.rot_dim != c->head_dim && c->arch != XD_ARCH_GLM4_MOE) {
        /* transformers' rotary code for these families rotates the whole head (a shorter
         * cos/sin does not broadcast): nothing to match */
        json_decref(root);
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: key 'partial_rotary_factor' (%g) is not supported for %s, whose "
                          "rotary embedding covers the whole head",
                          path, (double)c->rope.partial_rotary_factor, c->model_type);
    }
    c->max_context = context_length(c);
    /* Ernie4_5_MoeConfig ties them unless config.json says otherwise */
    TRY(get_bool(root, path, "tie_word_embeddings", ernie, &c->tie_word_embeddings, err));

    json_t *act = json_object_get(root, "hidden_act");
    if (act && !(json_is_string(act) && strcmp(json_string_value(act), "silu") == 0)) {
        json_decref(root);
        return xd_err_set(err, XD_ERR_UNSUPPORTED, "%s: key 'hidden_act' must be \"silu\"", path);
    }

    if (c->arch == XD_ARCH_DEEPSEEK_V2 || c->arch == XD_ARCH_DEEPSEEK_V3) {
        TRY(parse_deepseek(root, path, c, err));
        goto layers_done;
    }

    /* transformers 5 writes num_local_experts for qwen3_moe too; published
     * checkpoints use num_experts everywhere but mixtral and glm4_moe (n_routed_experts). */
    const char *experts_key = c->arch == XD_ARCH_MIXTRAL || c->arch == XD_ARCH_GPT_OSS || granite
                                  ? "num_local_experts"
                              : c->arch == XD_ARCH_GLM4_MOE || c->arch == XD_ARCH_DOTS1
                                  ? "n_routed_experts"
                              : ernie ? "moe_num_experts"
                                      : "num_experts";
    if (hunyuan) {
        TRY(hunyuan_uniform_list(root, path, "num_experts", c->n_layers, err));
        TRY(hunyuan_uniform_list(root, path, "moe_topk", c->n_layers, err));
    }
    if (!json_object_get(root, experts_key) && json_object_get(root, "num_local_experts"))
        experts_key = "num_local_experts";
    TRY(get_int(root, path, experts_key, granite ? 8 : ernie ? 64 : hunyuan ? 1 : -1, 0, 1 << 16,
                &c->n_experts, err));
    if (c->n_experts == 0) {
        json_decref(root);
        return xd_err_set(err, XD_ERR_CONFIG,
                          "%s: key '%s' is 0; a mixture-of-experts model needs experts", path,
                          experts_key);
    }
    /* ernie4_5_moe: moe_k (num_experts_per_tok is its attribute_map alias) */
    const char *k_key = ernie ? "moe_k" : hunyuan ? "moe_topk" : "num_experts_per_tok";
    TRY(get_int(root, path, k_key, granite ? 2 : ernie ? 6 : hunyuan ? 1 : -1, 1, 1 << 16,
                &c->top_k, err));
    if (c->top_k > c->n_experts) {
        json_decref(root);
        return xd_err_set(err, XD_ERR_CONFIG, "%s: key '%s' (%d) is larger than %s (%d)", path,
                          k_key, c->top_k, experts_key, c->n_experts);
    }

    bool attention_bias = false;
    TRY(get_bool(root, path, "attention_bias", c->arch == XD_ARCH_GPT_OSS, &attention_bias, err));
    int sparse_step = 1;
    switch (c->arch) {
    case XD_ARCH_MIXTRAL:
        c->norm_topk_prob = true;
        TRY(get_int(root, path, "intermediate_size", -1, 1, 1 << 20, &c->expert_ffn, err));
        TRY(get_int(root, path, "sliding_window", 0, 0, 1 << 24, &c->sliding_window, err));
        break;
    case XD_ARCH_QWEN2_MOE:
    case XD_ARCH_QWEN3_MOE: {
        TRY(get_bool(root, path, "norm_topk_prob", false, &c->norm_topk_prob, err));
        TRY(get_int(root, path, "moe_intermediate_size", -1, 1, 1 << 20, &c->expert_ffn, err));
        TRY(get_int(root, path, "intermediate_size", 0, 0, 1 << 20, &c->dense_ffn, err));
        TRY(get_int(root, path, "decoder_sparse_step", 1, 1, XD_MAX_LAYERS, &sparse_step, err));
        bool sliding = false;
        TRY(get_bool(root, path, "use_sliding_window", false, &sliding, err));
        if (sliding) {
            json_decref(root);
            return xd_err_set(err, XD_ERR_UNSUPPORTED,
                              "%s: key 'use_sliding_window' is true; expertd does not support "
                              "sliding-window layers for %s",
                              path, c->model_type); /* not type: root owned it */
        }
        if (c->arch == XD_ARCH_QWEN2_MOE) {
            /* transformers' Qwen2MoeAttention: biases on q, k, v (qkv_bias in v5). */
            TRY(get_bool(root, path, "qkv_bias", true, &c->qkv_bias, err));
            TRY(get_int(root, path, "shared_expert_intermediate_size", 0, 0, 1 << 20,
                        &c->shared_expert_ffn, err));
            c->shared_expert_gated = c->shared_expert_ffn > 0;
        } else {
            c->qk_norm = XD_QK_NORM_PER_HEAD;
            c->qkv_bias = c->o_bias = attention_bias;
        }
        break;
    }
    case XD_ARCH_DEEPSEEK_V2:
    case XD_ARCH_DEEPSEEK_V3:
        break; /* parse_deepseek */
    case XD_ARCH_GLM4_MOE:
    case XD_ARCH_DOTS1: {
        /* Glm4MoeConfig's defaults; attention bias on q, k and v only. dots1 (Dots1Config's
         * defaults): the same MoE and router, q/k norm always, attention_bias on q, k, v and o,
         * the rotary embedding over the whole head, sliding layers (parse_dots1_windows) */
        const bool dots = c->arch == XD_ARCH_DOTS1;
        c->qkv_bias = attention_bias;
        if (dots) {
            c->o_bias = attention_bias;
            c->qk_norm = XD_QK_NORM_PER_HEAD;
            TRY(parse_dots1_windows(root, path, c, err));
        } else {
            bool qk_norm = false;
            TRY(get_bool(root, path, "use_qk_norm", false, &qk_norm, err));
            c->qk_norm = qk_norm ? XD_QK_NORM_PER_HEAD : XD_QK_NORM_NONE;
        }
        TRY(get_bool(root, path, "norm_topk_prob", !dots, &c->norm_topk_prob, err));
        TRY(get_int(root, path, "moe_intermediate_size", 1408, 1, 1 << 20, &c->expert_ffn, err));
        TRY(get_int(root, path, "intermediate_size", 10944, 1, 1 << 20, &c->dense_ffn, err));
        int n_shared = 1;
        /* Dots1Config's n_shared_experts defaults to None, which transformers cannot build */
        TRY(get_int(root, path, "n_shared_experts", dots ? -1 : 1, 0, 64, &n_shared, err));
        c->shared_expert_ffn = n_shared * c->expert_ffn;
        c->router = XD_ROUTER_SIGMOID_BIAS;
        TRY(get_int(root, path, "n_group", 1, 1, c->n_experts, &c->n_group, err));
        TRY(get_int(root, path, "topk_group", 1, 1, c->n_group, &c->topk_group, err));
        TRY(get_float(root, path, "routed_scaling_factor", 1.0, 0.0, 1e6,
                      &c->routed_scaling_factor, err));
        const int per = c->n_experts / c->n_group;
        if (c->n_experts % c->n_group != 0 || per < 2 || c->n_experts > 4096) {
            json_decref(root);
            return xd_err_set(err, XD_ERR_CONFIG,
                              "%s: key 'n_group' (%d) must divide n_routed_experts (%d) into "
                              "groups of at least 2 (of at most 4096 experts)",
                              path, c->n_group, c->n_experts);
        }
        if (c->top_k > c->topk_group * per) {
            json_decref(root);
            return xd_err_set(err, XD_ERR_CONFIG,
                              "%s: key 'num_experts_per_tok' (%d) is more than the %d experts "
                              "of topk_group (%d) groups",
                              path, c->top_k, c->topk_group * per, c->topk_group);
        }
        int first_dense = dots ? 0 : 1;
        TRY(get_int(root, path, "first_k_dense_replace", first_dense, 0, XD_MAX_LAYERS,
                    &first_dense, err));
        for (int i = 0; i < c->n_layers; i++)
            c->is_moe_layer[i] = i >= first_dense;
        sparse_step = 0; /* the layer pattern is set */
        break;
    }
    case XD_ARCH_GPT_OSS:
        TRY(parse_gpt_oss(root, path, c, attention_bias, err));
        sparse_step = 0; /* every layer is MoE */
        break;
    case XD_ARCH_GRANITEMOE:
    case XD_ARCH_GRANITEMOE_SHARED:
        TRY(parse_granite(root, path, c, attention_bias, err));
        sparse_step = 0; /* every layer is MoE */
        break;
    case XD_ARCH_ERNIE4_5_MOE:
        TRY(parse_ernie(root, path, c, err));
        sparse_step = 0; /* the layer pattern is set */
        break;
    case XD_ARCH_HUNYUAN_V1_MOE:
        TRY(parse_hunyuan(root, path, c, attention_bias, err));
        sparse_step = 0; /* every layer is MoE */
        break;
    case XD_ARCH_OLMOE:
        c->qk_norm = XD_QK_NORM_FULL_WIDTH;
        c->qkv_bias = c->o_bias = attention_bias;
        TRY(get_bool(root, path, "norm_topk_prob", false, &c->norm_topk_prob, err));
        TRY(get_int(root, path, "intermediate_size", -1, 1, 1 << 20, &c->expert_ffn, err));
        TRY(get_float(root, path, "clip_qkv", 0.0, 0.0, 1e30, &c->clip_qkv, err));
        break;
    }

    /* Which layers are MoE: qwen2_moe and qwen3_moe make layer i sparse when
     * it is not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0. */
    for (int i = 0; i < c->n_layers && sparse_step > 0; i++)
        c->is_moe_layer[i] = (i + 1) % sparse_step == 0;
    json_t *only = json_object_get(root, "mlp_only_layers");
    /* read by qwen2_moe, qwen3_moe, mixtral and olmoe as the others never were; glm4_moe,
     * dots1, granite's, ernie's and hunyuan's transformers classes ignore it */
    if (only && !json_is_null(only) && c->arch != XD_ARCH_GLM4_MOE && c->arch != XD_ARCH_DOTS1 &&
        !granite && !ernie && !hunyuan) {
        if (!json_is_array(only)) {
            json_decref(root);
            return xd_err_set(err, XD_ERR_CONFIG, "%s: key 'mlp_only_layers' must be a list",
                              path);
        }
        size_t i;
        json_t *e;
        json_array_foreach(only, i, e) {
            json_int_t l = json_is_integer(e) ? json_integer_value(e) : -1;
            if (l < 0 || l >= c->n_layers) {
                json_decref(root);
                return xd_err_set(err, XD_ERR_CONFIG,
                                  "%s: key 'mlp_only_layers' holds an entry that is not a layer "
                                  "index below num_hidden_layers (%d)",
                                  path, c->n_layers);
            }
            c->is_moe_layer[l] = false;
        }
    }
layers_done:
    for (int i = 0; i < c->n_layers; i++) {
        c->n_moe_layers += c->is_moe_layer[i];
        if (!c->is_moe_layer[i] && c->dense_ffn == 0) {
            json_decref(root);
            return xd_err_set(err, XD_ERR_CONFIG,
                              "%s: layer %d is dense but key 'intermediate_size' is missing", path,
                              i);
        }
    }
    if (c->arch != XD_ARCH_GPT_OSS) /* parse_gpt_oss reads its own (mxfp4 experts) */
        TRY(get_quant(root, path, c, err));
    TRY(get_eos(root, path, c, err));
    json_decref(root);
    return XD_OK;
}

long long xd_model_config_kv_floats_per_token(const struct xd_model_config *c)
{
    if (c->mla)
        return (long long)c->kv_lora_rank + c->qk_rope_head_dim;
    return 2LL * c->n_kv_heads * c->head_dim;
}

int xd_model_config_load(const char *dir, struct xd_model_config *c, struct xd_err *err)
{
    char path[4096];
    char *text;
    size_t len;
    snprintf(path, sizeof path, "%s/config.json", dir);
    int rc = xd_read_text_file(path, 16u << 20, &text, &len, err);
    if (rc < 0)
        return rc;
    rc = xd_model_config_parse(text, len, path, c, err);
    free(text);
    if (rc < 0)
        return rc;

    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    if (xd_read_text_file(path, 16u << 20, &text, &len, NULL) < 0)
        return XD_OK; /* optional */
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    free(text);
    if (!json_is_object(root)) {
        json_decref(root);
        return xd_err_set(err, XD_ERR_CONFIG, "%s: not a valid JSON object", path);
    }
    rc = get_eos(root, path, c, err);
    json_decref(root);
    return rc;
}
