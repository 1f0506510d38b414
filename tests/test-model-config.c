/* config.json parsing for each supported model_type, checked against the meaning transformers
 * gives each key; every invalid config is an error naming the key. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine/model/model_config.h"
#include "tests/test.h"

static int parse(const char *json, struct xd_model_config *c, struct xd_err *err)
{
    memset(err, 0, sizeof *err);
    return xd_model_config_parse(json, strlen(json), "m/config.json", c, err);
}

/* Parses json, which must fail; checks the message names the file and want. */
static void expect_error(const char *json, const char *want)
{
    struct xd_model_config *c = malloc(sizeof *c);
    struct xd_err err;
    int rc = parse(json, c, &err);
    CHECK(rc < 0, "accepted; expected an error naming '%s'", want);
    CHECK_CONTAINS(err.msg, "m/config.json");
    if (want)
        CHECK_CONTAINS(err.msg, want);
    free(c);
}

/* body (a JSON object) with key set to value (JSON text) must fail naming key. */
static void expect_error_set(const char *body, const char *key, const char *value)
{
    json_t *o = json_loads(body, 0, NULL);
    json_t *v = json_loads(value, JSON_DECODE_ANY, NULL);
    CHECK(o && v, "bad test JSON for %s", key);
    if (!o || !v) {
        json_decref(o);
        json_decref(v);
        return;
    }
    json_object_set_new(o, key, v);
    char *text = json_dumps(o, 0);
    expect_error(text, key);
    free(text);
    json_decref(o);
}

/* Mixtral-8x7B's shape, with head_dim given explicitly and unequal to hidden / heads. */
#define MIXTRAL_BODY                                                                       \
    "\"model_type\": \"mixtral\", \"architectures\": [\"MixtralForCausalLM\"],"            \
    "\"vocab_size\": 32000, \"hidden_size\": 4096, \"num_hidden_layers\": 32,"             \
    "\"num_attention_heads\": 32, \"num_key_value_heads\": 8, \"head_dim\": 64,"           \
    "\"intermediate_size\": 14336, \"num_local_experts\": 8, \"num_experts_per_tok\": 2,"  \
    "\"max_position_embeddings\": 32768, \"rms_norm_eps\": 1e-05,"                         \
    "\"sliding_window\": null, \"tie_word_embeddings\": false, \"hidden_act\": \"silu\","   \
    "\"bos_token_id\": 1, \"router_aux_loss_coef\": 0.02, \"torch_dtype\": \"bfloat16\""

/* Qwen1.5-MoE-A2.7B's shape, with two layers made dense through mlp_only_layers. */
#define QWEN2_BODY                                                                          \
    "\"model_type\": \"qwen2_moe\", \"vocab_size\": 151936, \"hidden_size\": 2048,"         \
    "\"num_hidden_layers\": 24, \"num_attention_heads\": 16, \"num_key_value_heads\": 16,"  \
    "\"intermediate_size\": 5632, \"moe_intermediate_size\": 1408,"                         \
    "\"shared_expert_intermediate_size\": 5632, \"num_experts\": 60,"                       \
    "\"num_experts_per_tok\": 4, \"decoder_sparse_step\": 1, \"norm_topk_prob\": true,"     \
    "\"mlp_only_layers\": [0, 5], \"max_position_embeddings\": 8192,"                       \
    "\"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0, \"use_sliding_window\": false,"    \
    "\"sliding_window\": 32768, \"hidden_act\": \"silu\", \"tie_word_embeddings\": false,"  \
    "\"bos_token_id\": 151643"

/* Qwen3-30B-A3B's attention shape with a small stack of 6 layers and decoder_sparse_step 2. */
#define QWEN3_BODY                                                                         \
    "\"model_type\": \"qwen3_moe\", \"vocab_size\": 151936, \"hidden_size\": 2048,"        \
    "\"num_hidden_layers\": 6, \"num_attention_heads\": 32, \"num_key_value_heads\": 4,"   \
    "\"head_dim\": 128, \"intermediate_size\": 6144, \"moe_intermediate_size\": 768,"      \
    "\"num_experts\": 128, \"num_experts_per_tok\": 8, \"decoder_sparse_step\": 2,"        \
    "\"norm_topk_prob\": true, \"mlp_only_layers\": [], \"attention_bias\": false,"        \
    "\"max_position_embeddings\": 40960, \"rms_norm_eps\": 1e-06, \"hidden_act\": \"silu\"," \
    "\"use_sliding_window\": false, \"tie_word_embeddings\": false"

/* OLMoE-1B-7B's shape, with clip_qkv set. */
#define OLMOE_BODY                                                                          \
    "\"model_type\": \"olmoe\", \"vocab_size\": 50304, \"hidden_size\": 2048,"              \
    "\"num_hidden_layers\": 16, \"num_attention_heads\": 16, \"num_key_value_heads\": 16,"  \
    "\"intermediate_size\": 1024, \"num_experts\": 64, \"num_experts_per_tok\": 8,"         \
    "\"norm_topk_prob\": false, \"clip_qkv\": 8.0, \"max_position_embeddings\": 4096,"      \
    "\"rms_norm_eps\": 1e-05, \"hidden_act\": \"silu\", \"attention_bias\": false,"         \
    "\"pad_token_id\": 1, \"bos_token_id\": null, \"tie_word_embeddings\": false"

/* GLM-4.5-Air's shape (config.json keys as its model card's checkpoint spells them, rope_scaling
 * null, no partial_rotary_factor: Glm4MoeConfig's 0.5), with 6 layers. */
#define GLM_AIR_CORE                                                                        \
    "\"model_type\": \"glm4_moe\", \"architectures\": [\"Glm4MoeForCausalLM\"],"            \
    "\"attention_bias\": true, \"head_dim\": 128, \"hidden_act\": \"silu\","                \
    "\"hidden_size\": 4096, \"intermediate_size\": 10944, \"max_position_embeddings\": 131072," \
    "\"moe_intermediate_size\": 1408, \"norm_topk_prob\": true, \"num_attention_heads\": 96,"  \
    "\"n_shared_experts\": 1, \"num_experts_per_tok\": 8,"                                 \
    "\"num_hidden_layers\": 6, \"num_key_value_heads\": 8,"                                 \
    "\"rms_norm_eps\": 1e-05, \"rope_scaling\": null, \"rope_theta\": 1000000,"             \
    "\"num_nextn_predict_layers\": 1, \"tie_word_embeddings\": false,"                      \
    "\"vocab_size\": 151552, \"eos_token_id\": [151329, 151336, 151338]"
#define GLM_AIR_BODY                                                                        \
    GLM_AIR_CORE ", \"n_routed_experts\": 128, \"first_k_dense_replace\": 1,"              \
                 " \"use_qk_norm\": false"

static void test_glm4_moe(void)
{
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse("{" GLM_AIR_BODY ", \"n_group\": 1, \"topk_group\": 1,"
                   " \"routed_scaling_factor\": 1.0}",
                   &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    if (rc != XD_OK)
        return;
    CHECK(c.arch == XD_ARCH_GLM4_MOE && strcmp(c.model_type, "glm4_moe") == 0, "arch");
    CHECK(c.n_experts == 128 && c.top_k == 8 && c.expert_ffn == 1408 && c.dense_ffn == 10944,
          "experts %d top %d ffn %d dense %d", c.n_experts, c.top_k, c.expert_ffn, c.dense_ffn);
    CHECK(c.shared_expert_ffn == 1408 && !c.shared_expert_gated, "shared %d",
          c.shared_expert_ffn);
    CHECK(c.router == XD_ROUTER_SIGMOID_BIAS && c.n_group == 1 && c.topk_group == 1 &&
              c.routed_scaling_factor == 1.0f && c.norm_topk_prob,
          "router");
    CHECK(c.qkv_bias && !c.o_bias && c.qk_norm == XD_QK_NORM_NONE, "attention");
    /* partial_rotary_factor absent: Glm4MoeConfig's 0.5 */
    CHECK(c.rope.rot_dim == 64 && c.head_dim == 128 && c.rope.type == XD_ROPE_DEFAULT &&
              c.rope_theta == 1e6f,
          "rot_dim %d", c.rope.rot_dim);
    CHECK(!c.is_moe_layer[0] && c.is_moe_layer[1] && c.is_moe_layer[5] && c.n_moe_layers == 5,
          "first_k_dense_replace 1: %d MoE layers", c.n_moe_layers);
    CHECK(c.n_eos == 3 && c.eos_token_ids[2] == 151338, "eos");

    /* GLM-4.5's options: q/k norm, 3 dense layers, routed_scaling_factor 2.5, 160 experts;
     * defaults of n_group, topk_group (1) and mlp_only_layers ignored as transformers does */
    rc = parse("{" GLM_AIR_CORE ", \"use_qk_norm\": true, \"first_k_dense_replace\": 3,"
               " \"n_routed_experts\": 160, \"routed_scaling_factor\": 2.5,"
               " \"mlp_only_layers\": [5], \"partial_rotary_factor\": 0.25}",
               &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    CHECK(rc != XD_OK || (c.qk_norm == XD_QK_NORM_PER_HEAD && c.n_moe_layers == 3 &&
                          c.is_moe_layer[5] && c.routed_scaling_factor == 2.5f &&
                          c.n_group == 1 && c.topk_group == 1 && c.rope.rot_dim == 32),
          "GLM-4.5 options");
    /* group-limited: 8 groups of 16, 4 kept */
    rc = parse("{" GLM_AIR_BODY ", \"n_group\": 8, \"topk_group\": 4}", &c, &err);
    CHECK(rc == XD_OK && c.n_group == 8 && c.topk_group == 4, "groups: %s", err.msg);
}

static void test_glm4_moe_errors(void)
{
    expect_error("{" GLM_AIR_BODY ", \"n_group\": 3}", "n_group");
    expect_error("{" GLM_AIR_BODY ", \"n_group\": 128}", "n_group"); /* groups of 1 */
    expect_error("{" GLM_AIR_BODY ", \"n_group\": 4, \"topk_group\": 5}", "topk_group");
    /* 64 groups of 2, 2 kept: 4 experts, fewer than num_experts_per_tok */
    expect_error("{" GLM_AIR_BODY ", \"n_group\": 64, \"topk_group\": 2}", "num_experts_per_tok");
    expect_error("{" GLM_AIR_BODY ", \"routed_scaling_factor\": \"2.5\"}", "routed_scaling_factor");
    expect_error("{" GLM_AIR_CORE ", \"n_routed_experts\": 128, \"use_qk_norm\": 1}",
                 "use_qk_norm");
    expect_error("{" GLM_AIR_CORE ", \"n_routed_experts\": 128, \"first_k_dense_replace\": -1}",
                 "first_k_dense_replace");
}

/* gpt-oss-20b's config.json shape (keys as the published checkpoint spells them: rope_scaling
 * yarn with truncate false, layer_types, swiglu_limit, experts_per_token), 6 of its 24 layers,
 * without its quantization_config. */
#define GPT_OSS_CORE                                                                        \
    "\"model_type\": \"gpt_oss\", \"architectures\": [\"GptOssForCausalLM\"],"              \
    "\"attention_bias\": true, \"attention_dropout\": 0.0, \"eos_token_id\": 200002,"      \
    "\"experts_per_token\": 4, \"head_dim\": 64, \"hidden_act\": \"silu\","                \
    "\"hidden_size\": 2880, \"initial_context_length\": 4096, \"intermediate_size\": 2880,"  \
    "\"max_position_embeddings\": 131072, \"num_attention_heads\": 64,"                    \
    "\"num_experts_per_tok\": 4, \"num_hidden_layers\": 6, \"num_key_value_heads\": 8,"    \
    "\"num_local_experts\": 32, \"pad_token_id\": 199999, \"rms_norm_eps\": 1e-05,"        \
    "\"rope_scaling\": {\"beta_fast\": 32.0, \"beta_slow\": 1.0, \"factor\": 32.0,"         \
    "  \"original_max_position_embeddings\": 4096, \"rope_type\": \"yarn\","                \
    "  \"truncate\": false}, \"rope_theta\": 150000, \"router_aux_loss_coef\": 0.9,"       \
    "\"sliding_window\": 128, \"swiglu_limit\": 7.0, \"tie_word_embeddings\": false,"      \
    "\"vocab_size\": 201088"
#define GPT_OSS_LAYERS                                                                      \
    "\"layer_types\": [\"sliding_attention\", \"full_attention\", \"sliding_attention\","   \
    " \"full_attention\", \"sliding_attention\", \"full_attention\"]"

static void test_gpt_oss(void)
{
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse("{" GPT_OSS_CORE ", " GPT_OSS_LAYERS "}", &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    if (rc != XD_OK)
        return;
    CHECK(c.arch == XD_ARCH_GPT_OSS && strcmp(c.model_type, "gpt_oss") == 0, "arch");
    CHECK(c.n_experts == 32 && c.top_k == 4 && c.expert_ffn == 2880 && c.n_moe_layers == 6,
          "experts %d top %d ffn %d moe layers %d", c.n_experts, c.top_k, c.expert_ffn,
          c.n_moe_layers);
    CHECK(c.router == XD_ROUTER_TOPK_SOFTMAX && c.expert_bias, "router");
    CHECK(c.qkv_bias && c.o_bias && c.attn_sinks && c.qk_norm == XD_QK_NORM_NONE, "attention");
    CHECK(c.swiglu_limit == 7.0f && c.swiglu_alpha == 1.702f, "swiglu %g %g",
          (double)c.swiglu_limit, (double)c.swiglu_alpha);
    CHECK(c.sliding_window == 128, "sliding_window %d", c.sliding_window);
    CHECK(!c.full_attention_layer[0] && c.full_attention_layer[1] &&
              !c.full_attention_layer[4] && c.full_attention_layer[5],
          "layer_types");
    CHECK(c.rope.type == XD_ROPE_YARN && c.rope.factor == 32.0f && c.rope_theta == 150000.0f &&
              c.rope.original_max_position_embeddings == 4096,
          "rope %s", xd_rope_type_name(c.rope.type));
    CHECK(c.n_eos == 1 && c.eos_token_ids[0] == 200002, "eos");
    CHECK(!c.experts_mxfp4, "no quantization_config: experts as stored");
    /* gpt-oss-20b's quantization_config: its MXFP4 experts */
    rc = parse("{" GPT_OSS_CORE ", " GPT_OSS_LAYERS ", \"quantization_config\": {"
               "\"modules_to_not_convert\": [\"model.layers.*.self_attn\","
               " \"model.layers.*.mlp.router\", \"model.embed_tokens\", \"lm_head\"],"
               " \"quant_method\": \"mxfp4\"}}",
               &c, &err);
    CHECK(rc == XD_OK && c.experts_mxfp4, "mxfp4: %s", err.msg);

    /* GptOssConfig's defaults: no layer_types alternates sliding (even) and full (odd);
     * no rope at all is YaRN factor 32 over 4096 with theta 150000; sliding_window null: none */
    rc = parse("{\"model_type\": \"gpt_oss\", \"vocab_size\": 1000, \"hidden_size\": 64,"
               "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"num_local_experts\": 4,"
               "\"num_experts_per_tok\": 2, \"intermediate_size\": 32,"
               " \"sliding_window\": null}",
               &c, &err);
    CHECK(rc == XD_OK, "defaults: %s", err.msg);
    CHECK(rc != XD_OK || (!c.full_attention_layer[0] && c.full_attention_layer[1] &&
                          !c.full_attention_layer[2] && c.sliding_window == 0 &&
                          c.head_dim == 64 && c.qkv_bias && c.o_bias && c.swiglu_limit == 7.0f &&
                          c.rope.type == XD_ROPE_YARN && c.rope.factor == 32.0f &&
                          c.rope_theta == 150000.0f && c.max_position_embeddings == 131072),
          "GptOssConfig defaults");
}

static void test_gpt_oss_errors(void)
{
    /* a quantization other than the published MXFP4: not computed, so refused naming the key */
    expect_error("{" GPT_OSS_CORE ", " GPT_OSS_LAYERS ", \"quantization_config\": "
                 "{\"quant_method\": \"fp8\", \"modules_to_not_convert\": []}}",
                 "'quantization_config' (quant_method \"fp8\")");
    expect_error("{" GPT_OSS_CORE ", " GPT_OSS_LAYERS ", \"quantization_config\": 1}",
                 "'quantization_config' (quant_method \"?\")");
    expect_error("{" GPT_OSS_CORE ", \"layer_types\": [\"sliding_attention\", \"chunked_attention\","
                 " \"full_attention\", \"full_attention\", \"full_attention\", \"full_attention\"]}",
                 "'layer_types' entry 1 is \"chunked_attention\"");
    expect_error("{" GPT_OSS_CORE ", \"layer_types\": [\"full_attention\"]}", "'layer_types'");
    expect_error("{" GPT_OSS_CORE ", " GPT_OSS_LAYERS ", \"swiglu_limit\": \"7\"}",
                 "swiglu_limit");
    expect_error("{" GPT_OSS_CORE ", " GPT_OSS_LAYERS ", \"sliding_window\": -1}",
                 "sliding_window");
}

static void test_mixtral(void)
{
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse("{" MIXTRAL_BODY ", \"rope_theta\": 1000000.0, \"eos_token_id\": 2}", &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    if (rc != XD_OK)
        return;
    CHECK(c.arch == XD_ARCH_MIXTRAL && strcmp(c.model_type, "mixtral") == 0, "arch");
    CHECK(c.vocab_size == 32000 && c.hidden_size == 4096 && c.n_layers == 32, "sizes");
    CHECK(c.n_heads == 32 && c.n_kv_heads == 8, "heads %d kv %d", c.n_heads, c.n_kv_heads);
    CHECK(c.head_dim == 64, "head_dim %d (the key, not hidden/heads = 128)", c.head_dim);
    CHECK(c.max_position_embeddings == 32768, "max_position_embeddings");
    CHECK(fabsf(c.rms_norm_eps - 1e-5f) < 1e-12f, "rms_norm_eps %g", c.rms_norm_eps);
    CHECK(c.rope_theta == 1e6f, "rope_theta %g", c.rope_theta);
    CHECK(c.sliding_window == 0, "sliding_window null means none: %d", c.sliding_window);
    CHECK(c.n_experts == 8 && c.top_k == 2, "experts %d top_k %d", c.n_experts, c.top_k);
    CHECK(c.expert_ffn == 14336, "expert_ffn %d", c.expert_ffn);
    CHECK(c.dense_ffn == 0 && c.shared_expert_ffn == 0, "dense %d shared %d", c.dense_ffn,
          c.shared_expert_ffn);
    /* Mixtral's router renormalises the top-k softmax weights */
    CHECK(c.norm_topk_prob, "mixtral renormalises top-k");
    CHECK(c.qk_norm == XD_QK_NORM_NONE && !c.qkv_bias && !c.o_bias, "attention extras");
    CHECK(c.clip_qkv == 0.0f && !c.tie_word_embeddings, "clip_qkv / tie");
    CHECK(c.n_moe_layers == 32, "n_moe_layers %d", c.n_moe_layers);
    int all = 1;
    for (int i = 0; i < 32; i++)
        all &= c.is_moe_layer[i];
    CHECK(all, "every mixtral layer is MoE");
    CHECK(c.bos_token_id == 1, "bos %d", c.bos_token_id);
    CHECK(c.n_eos == 1 && c.eos_token_ids[0] == 2, "eos n=%d [0]=%d", c.n_eos, c.eos_token_ids[0]);
}

static void test_mixtral_defaults(void)
{
    /* head_dim absent: hidden_size / num_attention_heads; num_key_value_heads absent: the
     * number of heads; rope_theta absent: MixtralConfig's 1e6; sliding_window given */
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse("{\"model_type\": \"mixtral\", \"vocab_size\": 1000, \"hidden_size\": 256,"
                   "\"num_hidden_layers\": 2, \"num_attention_heads\": 8,"
                   "\"intermediate_size\": 512, \"num_local_experts\": 4,"
                   "\"num_experts_per_tok\": 2, \"sliding_window\": 4096}",
                   &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    if (rc != XD_OK)
        return;
    CHECK(c.head_dim == 32, "head_dim %d", c.head_dim);
    CHECK(c.n_kv_heads == 8, "n_kv_heads %d", c.n_kv_heads);
    CHECK(c.rope_theta == 1e6f, "rope_theta %g", c.rope_theta);
    CHECK(c.sliding_window == 4096, "sliding_window %d", c.sliding_window);
    CHECK(c.n_eos == 0 && c.bos_token_id == -1, "no eos / bos: n_eos %d bos %d", c.n_eos,
          c.bos_token_id);
}

static void test_qwen2_moe(void)
{
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse("{" QWEN2_BODY ", \"eos_token_id\": 151643}", &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    if (rc != XD_OK)
        return;
    CHECK(c.arch == XD_ARCH_QWEN2_MOE && strcmp(c.model_type, "qwen2_moe") == 0, "arch");
    CHECK(c.n_heads == 16 && c.n_kv_heads == 16 && c.head_dim == 128, "heads");
    CHECK(c.n_experts == 60 && c.top_k == 4, "experts %d top_k %d", c.n_experts, c.top_k);
    CHECK(c.expert_ffn == 1408, "expert_ffn (moe_intermediate_size) %d", c.expert_ffn);
    CHECK(c.dense_ffn == 5632, "dense_ffn (intermediate_size) %d", c.dense_ffn);
    CHECK(c.shared_expert_ffn == 5632, "shared_expert_ffn %d", c.shared_expert_ffn);
    CHECK(c.norm_topk_prob, "norm_topk_prob true");
    /* Qwen2MoeAttention has biases on q, k and v, none on o */
    CHECK(c.qkv_bias && !c.o_bias, "qkv_bias %d o_bias %d", c.qkv_bias, c.o_bias);
    CHECK(c.qk_norm == XD_QK_NORM_NONE, "no qk norm");
    CHECK(c.rope_theta == 1e6f, "rope_theta %g", c.rope_theta);
    CHECK(c.sliding_window == 0, "use_sliding_window false: %d", c.sliding_window);
    /* decoder_sparse_step 1: every layer is sparse except mlp_only_layers 0 and 5 */
    for (int i = 0; i < 24; i++)
        CHECK(c.is_moe_layer[i] == (i != 0 && i != 5), "layer %d moe %d", i, c.is_moe_layer[i]);
    CHECK(c.n_moe_layers == 22, "n_moe_layers %d", c.n_moe_layers);
    CHECK(c.bos_token_id == 151643 && c.n_eos == 1 && c.eos_token_ids[0] == 151643, "bos/eos");
}

static void test_qwen2_moe_norm_topk_default(void)
{
    /* Qwen2MoeConfig's norm_topk_prob defaults to false */
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse("{\"model_type\": \"qwen2_moe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                   "\"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                   "\"moe_intermediate_size\": 32, \"num_experts\": 4,"
                   "\"num_experts_per_tok\": 2}",
                   &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    if (rc != XD_OK)
        return;
    CHECK(!c.norm_topk_prob, "norm_topk_prob default");
    CHECK(c.n_moe_layers == 2 && c.dense_ffn == 0 && c.shared_expert_ffn == 0, "all sparse");
    CHECK(c.rope_theta == 10000.0f, "rope_theta default %g", c.rope_theta);
}

static void test_qwen3_moe_sparse_step(void)
{
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse("{" QWEN3_BODY ", \"rope_theta\": 1000000.0, \"eos_token_id\": 151645}", &c,
                   &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    if (rc != XD_OK)
        return;
    CHECK(c.arch == XD_ARCH_QWEN3_MOE && strcmp(c.model_type, "qwen3_moe") == 0, "arch");
    CHECK(c.n_heads == 32 && c.n_kv_heads == 4, "heads");
    CHECK(c.head_dim == 128, "head_dim %d (the key, not 2048/32 = 64)", c.head_dim);
    CHECK(c.n_experts == 128 && c.top_k == 8 && c.expert_ffn == 768 && c.dense_ffn == 6144,
          "experts");
    CHECK(c.norm_topk_prob, "norm_topk_prob");
    CHECK(c.qk_norm == XD_QK_NORM_PER_HEAD, "qwen3 normalises q and k per head");
    CHECK(!c.qkv_bias && !c.o_bias, "attention_bias false");
    CHECK(c.shared_expert_ffn == 0, "no shared expert");
    /* layer i is sparse when (i + 1) % 2 == 0: layers 1, 3, 5 */
    for (int i = 0; i < 6; i++)
        CHECK(c.is_moe_layer[i] == ((i + 1) % 2 == 0), "layer %d moe %d", i, c.is_moe_layer[i]);
    CHECK(c.n_moe_layers == 3, "n_moe_layers %d", c.n_moe_layers);
    CHECK(c.n_eos == 1 && c.eos_token_ids[0] == 151645, "eos");
}

static void test_qwen3_moe_attention_bias(void)
{
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse("{\"model_type\": \"qwen3_moe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                   "\"num_hidden_layers\": 3, \"num_attention_heads\": 4,"
                   "\"moe_intermediate_size\": 32, \"intermediate_size\": 96,"
                   "\"num_experts\": 4, \"num_experts_per_tok\": 2, \"attention_bias\": true,"
                   "\"decoder_sparse_step\": 3}",
                   &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    if (rc != XD_OK)
        return;
    CHECK(c.qkv_bias && c.o_bias, "attention_bias true: q, k, v and o biases");
    CHECK(!c.is_moe_layer[0] && !c.is_moe_layer[1] && c.is_moe_layer[2] && c.n_moe_layers == 1,
          "step 3: only layer 2");
}

static void test_olmoe(void)
{
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse("{" OLMOE_BODY ", \"eos_token_id\": 50279}", &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    if (rc != XD_OK)
        return;
    CHECK(c.arch == XD_ARCH_OLMOE && strcmp(c.model_type, "olmoe") == 0, "arch");
    CHECK(c.n_heads == 16 && c.n_kv_heads == 16 && c.head_dim == 128, "heads");
    CHECK(c.n_experts == 64 && c.top_k == 8, "experts");
    CHECK(c.expert_ffn == 1024 && c.dense_ffn == 0 && c.shared_expert_ffn == 0, "ffn widths");
    CHECK(!c.norm_topk_prob, "norm_topk_prob false");
    CHECK(c.qk_norm == XD_QK_NORM_FULL_WIDTH, "olmoe normalises the whole q and k");
    CHECK(c.clip_qkv == 8.0f, "clip_qkv %g", c.clip_qkv);
    CHECK(!c.qkv_bias && !c.o_bias, "no biases");
    /* OlmoeConfig's rope_theta default is 10000 */
    CHECK(c.rope_theta == 10000.0f, "rope_theta %g", c.rope_theta);
    CHECK(c.n_moe_layers == 16, "n_moe_layers %d", c.n_moe_layers);
    CHECK(c.bos_token_id == -1, "bos null: %d", c.bos_token_id);
    CHECK(c.n_eos == 1 && c.eos_token_ids[0] == 50279, "eos");
}

static void test_olmoe_clip_qkv_null(void)
{
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse("{\"model_type\": \"olmoe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                   "\"num_hidden_layers\": 1, \"num_attention_heads\": 4,"
                   "\"intermediate_size\": 32, \"num_experts\": 4, \"num_experts_per_tok\": 2,"
                   "\"clip_qkv\": null}",
                   &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    CHECK(rc != XD_OK || c.clip_qkv == 0.0f, "clip_qkv null means none");
}

static void test_rope_parameters(void)
{
    struct xd_model_config c;
    struct xd_err err;
    /* transformers 5 moves rope_theta into rope_parameters */
    int rc = parse("{" OLMOE_BODY ", \"rope_parameters\": {\"rope_theta\": 500000.0,"
                   " \"rope_type\": \"default\"}}",
                   &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    CHECK(rc != XD_OK || c.rope_theta == 500000.0f, "rope_theta %g", c.rope_theta);

    rc = parse("{" QWEN3_BODY ", \"rope_theta\": 1000000.0, \"rope_scaling\": null}", &c, &err);
    CHECK(rc == XD_OK, "rope_scaling null: rc %d: %s", rc, err.msg);
    CHECK(rc != XD_OK || c.rope_theta == 1e6f, "rope_theta %g", c.rope_theta);
}

static void test_rope_unsupported_type(void)
{
    expect_error("{" OLMOE_BODY ", \"rope_parameters\": {\"rope_theta\": 10000.0,"
                 " \"rope_type\": \"longrope\", \"short_factor\": [1], \"long_factor\": [1]}}",
                 "rope_parameters.rope_type");
    expect_error("{" OLMOE_BODY ", \"rope_parameters\": {\"rope_theta\": 10000.0,"
                 " \"rope_type\": \"proportional\"}}",
                 "rope_type");
    /* transformers 4 spelling, legacy type key */
    expect_error("{" QWEN3_BODY ", \"rope_scaling\": {\"type\": \"su\", \"factor\": 2.0}}",
                 "rope_scaling.type");
    expect_error("{" QWEN3_BODY ", \"rope_scaling\": {\"rope_type\": \"default\","
                 " \"mrope_section\": [16, 24, 24]}}",
                 "mrope_section");
    expect_error("{" QWEN3_BODY ", \"rope_parameters\": 7}", "rope_parameters");
    expect_error("{" QWEN3_BODY ", \"rope_scaling\": \"yarn\"}", "rope_scaling");
    /* keys a type requires */
    expect_error("{" QWEN3_BODY ", \"rope_scaling\": {\"rope_type\": \"yarn\"}}",
                 "rope_scaling.factor");
    expect_error("{" QWEN3_BODY ", \"rope_scaling\": {\"rope_type\": \"linear\"}}", "factor");
    expect_error("{" QWEN3_BODY ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8,"
                 " \"high_freq_factor\": 4}}",
                 "low_freq_factor");
    expect_error("{" QWEN3_BODY ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8,"
                 " \"low_freq_factor\": 4, \"high_freq_factor\": 4}}",
                 "high_freq_factor");
    expect_error("{" QWEN3_BODY ", \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": \"4\"}}",
                 "factor");
    expect_error("{" QWEN3_BODY ", \"partial_rotary_factor\": 0.003}", "partial_rotary_factor");
    expect_error("{" QWEN3_BODY ", \"partial_rotary_factor\": 1.5}", "partial_rotary_factor");
    /* a rope_theta that is not a positive number */
    expect_error("{" OLMOE_BODY ", \"rope_theta\": -1}", "rope_theta");
    expect_error("{" OLMOE_BODY ", \"rope_theta\": \"big\"}", "rope_theta");
}

/* Both spellings of Qwen3-30B-A3B's recommended YaRN, and which object wins. */
static void test_rope_spellings(void)
{
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse("{" QWEN3_BODY ", \"rope_theta\": 1000000.0, \"rope_scaling\": {\"rope_type\":"
                   " \"yarn\", \"factor\": 4.0, \"original_max_position_embeddings\": 32768}}",
                   &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    CHECK(rc != XD_OK || (c.rope.type == XD_ROPE_YARN && c.rope.factor == 4.0f &&
                          c.rope.original_max_position_embeddings == 32768 &&
                          c.rope_theta == 1e6f && c.rope.rot_dim == 128),
          "yarn from rope_scaling");
    /* 0.1 ln 4 + 1 */
    CHECK(rc != XD_OK || fabsf(c.rope.attention_scaling - 1.1386294f) < 1e-6f, "attention %g",
          c.rope.attention_scaling);
    /* the context YaRN is made for: 4 x 32768 (max_position_embeddings 40960) */
    CHECK(rc != XD_OK || c.max_context == 131072, "yarn context %d", c.max_context);
    struct xd_rope yarn = c.rope;
    rc = parse("{" QWEN3_BODY ", \"rope_parameters\": {\"type\": \"yarn\", \"factor\": 4.0,"
               " \"original_max_position_embeddings\": 32768, \"rope_theta\": 1000000.0}}",
               &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    CHECK(rc != XD_OK || memcmp(yarn.inv_freq, c.rope.inv_freq, sizeof yarn.inv_freq) == 0,
          "rope_parameters with the legacy type key gives the same table");
    /* rope_scaling wins over rope_parameters when both are there and it is not empty */
    rc = parse("{" QWEN3_BODY ", \"rope_parameters\": {\"rope_type\": \"default\"},"
               " \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 2.0}}",
               &c, &err);
    CHECK(rc == XD_OK && c.rope.type == XD_ROPE_LINEAR, "rope_scaling wins: %s", err.msg);
    CHECK(rc != XD_OK || c.max_context == 2 * 40960, "linear context %d", c.max_context);
    rc = parse("{" QWEN3_BODY ", \"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 1.5}}", &c,
               &err);
    CHECK(rc == XD_OK && c.max_context == 61440, "dynamic context %d: %s", c.max_context,
          err.msg);
    rc = parse("{" QWEN3_BODY ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8,"
               " \"low_freq_factor\": 1, \"high_freq_factor\": 4,"
               " \"original_max_position_embeddings\": 8192}}",
               &c, &err);
    CHECK(rc == XD_OK && c.max_context == 40960, "llama3 context %d (its max is the stretched "
          "one): %s", c.max_context, err.msg);
    rc = parse("{" QWEN3_BODY "}", &c, &err);
    CHECK(rc == XD_OK && c.max_context == 40960, "default context %d", c.max_context);
    rc = parse("{" QWEN3_BODY ", \"rope_parameters\": {\"rope_type\": \"linear\", \"factor\": 2},"
               " \"rope_scaling\": {}}",
               &c, &err);
    CHECK(rc == XD_OK && c.rope.type == XD_ROPE_LINEAR, "an empty rope_scaling is ignored: %s",
          err.msg);
    /* partial rotary: glm4_moe only (transformers' qwen3_moe rotates whole heads) */
    expect_error("{" QWEN3_BODY ", \"partial_rotary_factor\": 0.5}", "partial_rotary_factor");
    expect_error("{" QWEN3_BODY ", \"rope_parameters\": {\"partial_rotary_factor\": 0.5}}",
                 "partial_rotary_factor");
    rc = parse("{" QWEN3_BODY ", \"partial_rotary_factor\": 1.0}", &c, &err);
    CHECK(rc == XD_OK && c.rope.rot_dim == 128, "partial 1.0: %s", err.msg);
}

static void test_eos_int_and_list(void)
{
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse("{" QWEN3_BODY ", \"eos_token_id\": [151645, 151643]}", &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    CHECK(rc != XD_OK || (c.n_eos == 2 && c.eos_token_ids[0] == 151645 &&
                          c.eos_token_ids[1] == 151643),
          "eos list");
    rc = parse("{" QWEN3_BODY ", \"eos_token_id\": 0}", &c, &err);
    CHECK(rc == XD_OK && c.n_eos == 1 && c.eos_token_ids[0] == 0, "eos 0 is a valid id");
    rc = parse("{" QWEN3_BODY ", \"eos_token_id\": 151935}", &c, &err);
    CHECK(rc == XD_OK && c.n_eos == 1 && c.eos_token_ids[0] == 151935, "last id of the vocab");
}

/* DeepSeek-V2-Lite-Chat's config.json as published (huggingface.co/deepseek-ai/
 * DeepSeek-V2-Lite-Chat, snapshot 85864749cd611b4353ce1decdb286193298f64c7; auto_map left out):
 * q_lora_rank null, yarn with mscale_all_dim, greedy softmax routing. */
#define DSV2_LITE_BODY                                                                          \
    "\"architectures\": [\"DeepseekV2ForCausalLM\"], \"attention_bias\": false,"                \
    "\"attention_dropout\": 0.0, \"aux_loss_alpha\": 0.001, \"bos_token_id\": 100000,"          \
    "\"eos_token_id\": 100001, \"ep_size\": 1, \"first_k_dense_replace\": 1,"                   \
    "\"hidden_act\": \"silu\", \"hidden_size\": 2048, \"initializer_range\": 0.02,"             \
    "\"intermediate_size\": 10944, \"kv_lora_rank\": 512, \"max_position_embeddings\": 163840," \
    "\"model_type\": \"deepseek_v2\", \"moe_intermediate_size\": 1408, \"moe_layer_freq\": 1,"  \
    "\"n_group\": 1, \"n_routed_experts\": 64, \"n_shared_experts\": 2,"                        \
    "\"norm_topk_prob\": false, \"num_attention_heads\": 16, \"num_experts_per_tok\": 6,"       \
    "\"num_hidden_layers\": 27, \"num_key_value_heads\": 16, \"pretraining_tp\": 1,"            \
    "\"q_lora_rank\": null, \"qk_nope_head_dim\": 128, \"qk_rope_head_dim\": 64,"               \
    "\"rms_norm_eps\": 1e-06, \"rope_scaling\": {\"beta_fast\": 32, \"beta_slow\": 1,"          \
    "\"factor\": 40, \"mscale\": 0.707, \"mscale_all_dim\": 0.707,"                             \
    "\"original_max_position_embeddings\": 4096, \"type\": \"yarn\"}, \"rope_theta\": 10000,"   \
    "\"routed_scaling_factor\": 1.0, \"scoring_func\": \"softmax\", \"seq_aux\": true,"         \
    "\"tie_word_embeddings\": false, \"topk_group\": 1, \"topk_method\": \"greedy\","           \
    "\"torch_dtype\": \"bfloat16\", \"transformers_version\": \"4.49.0\", \"use_cache\": true," \
    "\"v_head_dim\": 128, \"vocab_size\": 102400"

/* DeepSeek-V3's shape (its published config.json without quantization_config and rope_scaling),
 * 5 layers instead of 61. */
#define DSV3_BODY                                                                               \
    "\"model_type\": \"deepseek_v3\", \"attention_bias\": false, \"first_k_dense_replace\": 3,"\
    "\"hidden_act\": \"silu\", \"hidden_size\": 7168, \"intermediate_size\": 18432,"            \
    "\"kv_lora_rank\": 512, \"max_position_embeddings\": 163840,"                               \
    "\"moe_intermediate_size\": 2048, \"moe_layer_freq\": 1, \"n_group\": 8,"                   \
    "\"n_routed_experts\": 256, \"n_shared_experts\": 1, \"norm_topk_prob\": true,"             \
    "\"num_attention_heads\": 128, \"num_experts_per_tok\": 8, \"num_hidden_layers\": 5,"       \
    "\"num_key_value_heads\": 128, \"num_nextn_predict_layers\": 1, \"q_lora_rank\": 1536,"     \
    "\"qk_nope_head_dim\": 128, \"qk_rope_head_dim\": 64, \"rms_norm_eps\": 1e-06,"             \
    "\"rope_theta\": 10000, \"routed_scaling_factor\": 2.5, \"scoring_func\": \"sigmoid\","     \
    "\"tie_word_embeddings\": false, \"topk_group\": 4, \"topk_method\": \"noaux_tc\","         \
    "\"v_head_dim\": 128, \"vocab_size\": 129280, \"bos_token_id\": 0, \"eos_token_id\": 1"

/* body (a JSON object) with the keys of extra (another) set over its own, as text to free. */
static char *with_keys(const char *body, const char *extra)
{
    json_t *o = json_loads(body, 0, NULL), *x = json_loads(extra, 0, NULL);
    if (!o || !x || json_object_update(o, x) < 0) {
        fprintf(stderr, "test JSON does not parse: %s / %s\n", body, extra);
        exit(1);
    }
    char *text = json_dumps(o, 0);
    json_decref(o);
    json_decref(x);
    return text;
}

static void test_deepseek_v2_lite(void)
{
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse("{" DSV2_LITE_BODY "}", &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    CHECK(c.arch == XD_ARCH_DEEPSEEK_V2 && c.mla, "arch %d mla %d", c.arch, c.mla);
    CHECK(c.q_lora_rank == 0, "q_lora_rank null -> %d", c.q_lora_rank);
    CHECK(c.kv_lora_rank == 512 && c.qk_nope_head_dim == 128 && c.qk_rope_head_dim == 64 &&
              c.v_head_dim == 128,
          "MLA dims %d %d %d %d", c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim,
          c.v_head_dim);
    CHECK(c.head_dim == 64, "head_dim is the rotary width, got %d", c.head_dim);
    CHECK(c.rope_layout == XD_ROPE_PAIRS, "v2 rotates adjacent pairs");
    CHECK(c.rope.type == XD_ROPE_YARN, "yarn");
    /* transformers: 192^-0.5 * (0.1 * 0.707 * ln 40 + 1)^2 */
    double m = 0.1 * 0.707 * log(40.0) + 1.0;
    double want = 1.0 / sqrt(192.0) * m * m;
    CHECK(fabs(c.attn_scale - want) < 1e-7, "softmax scale %.9g, want %.9g", c.attn_scale, want);
    CHECK(c.router == XD_ROUTER_SOFTMAX && c.n_group == 0, "greedy: no groups");
    CHECK(!c.norm_topk_prob && c.routed_scaling_factor == 1.0f, "weights as is");
    CHECK(c.n_experts == 64 && c.top_k == 6 && c.expert_ffn == 1408, "experts");
    CHECK(c.shared_expert_ffn == 2 * 1408 && !c.shared_expert_gated, "2 ungated shared experts");
    CHECK(c.dense_ffn == 10944, "dense width");
    CHECK(!c.is_moe_layer[0] && c.is_moe_layer[1] && c.is_moe_layer[26] && c.n_moe_layers == 26,
          "first_k_dense_replace 1: %d MoE layers", c.n_moe_layers);
    CHECK(xd_model_config_kv_floats_per_token(&c) == 576, "latent 512 + rope 64 per token");
    CHECK(c.n_eos == 1 && c.eos_token_ids[0] == 100001, "eos");
}

static void test_deepseek_v3(void)
{
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse("{" DSV3_BODY "}", &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    CHECK(c.arch == XD_ARCH_DEEPSEEK_V3 && c.mla && c.q_lora_rank == 1536, "q_lora_rank");
    CHECK(c.router == XD_ROUTER_SIGMOID_BIAS && c.n_group == 8 && c.topk_group == 4, "noaux_tc");
    CHECK(c.norm_topk_prob && fabsf(c.routed_scaling_factor - 2.5f) == 0.0f, "weights");
    CHECK(c.rope_layout == XD_ROPE_PAIRS, "rope_interleave defaults to true");
    CHECK(fabs(c.attn_scale - 1.0 / sqrt(192.0)) < 1e-8, "scale %g", c.attn_scale);
    CHECK(c.n_moe_layers == 2 && !c.is_moe_layer[2] && c.is_moe_layer[3], "3 dense layers");
    CHECK(c.shared_expert_ffn == 2048, "one shared expert");
    /* the plain cache of the same model: 128 heads x (192 + 128) floats; MLA's is 576 */
    CHECK(xd_model_config_kv_floats_per_token(&c) == 576, "MLA cache row");
    rc = parse("{" DSV3_BODY ", \"rope_interleave\": false}", &c, &err);
    CHECK(rc == XD_OK && c.rope_layout == XD_ROPE_HALVES, "rope_interleave false: rotate-half");
    /* Kimi-K2 and Moonlight name their type kimi_k2 in some configs: computed as deepseek_v3 */
    /* Kimi-K2 names its type kimi_k2 (remote code of the DeepseekV3 classes) */
    char *kimi = with_keys("{" DSV3_BODY "}", "{\"model_type\": \"kimi_k2\"}");
    rc = parse(kimi, &c, &err);
    CHECK(rc == XD_OK && c.arch == XD_ARCH_DEEPSEEK_V3, "kimi_k2: rc %d %s", rc, err.msg);
    free(kimi);
}

/* DeepSeek-V3/R1's quantization_config as published, V3.1's (scale_fmt ue8m0) and Kimi-K2's
 * are read as fine-grained FP8; an FP8 option expertd does not compute is refused naming its
 * key, for deepseek_v2 as for v3. */
static void test_deepseek_fp8(void)
{
#define DSV3_FP8 "\"quantization_config\": {\"activation_scheme\": \"dynamic\", " \
                 "\"fmt\": \"e4m3\", \"quant_method\": \"fp8\", \"weight_block_size\": [128, 128]"
    static const char *const accepted[] = {
        "{" DSV3_FP8 "}}",                                    /* DeepSeek-V3, R1 */
        "{" DSV3_FP8 ", \"scale_fmt\": \"ue8m0\"}}",          /* DeepSeek-V3.1 */
        "{\"model_type\": \"kimi_k2\", " DSV3_FP8 "}}",      /* Kimi-K2 */
    };
    for (size_t i = 0; i < sizeof accepted / sizeof accepted[0]; i++) {
        struct xd_model_config c;
        struct xd_err err;
        char *json = with_keys("{" DSV3_BODY "}", accepted[i]);
        int rc = parse(json, &c, &err);
        CHECK(rc == XD_OK, "case %zu: rc %d: %s", i, rc, err.msg);
        CHECK(c.fp8 && c.fp8_block[0] == 128 && c.fp8_block[1] == 128 && c.mla,
              "case %zu: fp8 %d blocks %d x %d", i, c.fp8, c.fp8_block[0], c.fp8_block[1]);
        CHECK(c.arch == XD_ARCH_DEEPSEEK_V3 && c.n_moe_layers == 2, "case %zu: the model", i);
        free(json);
    }
    static const struct {
        const char *body, *extra, *key;
    } refused[] = {
        {DSV3_BODY, "\"quantization_config\": {\"quant_method\": \"fp8\", "
                    "\"activation_scheme\": \"static\"}",
         "'quantization_config.activation_scheme' is static"},
        {DSV3_BODY, "\"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": \"e5m2\"}",
         "'quantization_config.fmt' is e5m2"},
        {DSV3_BODY, "\"quantization_config\": {\"quant_method\": \"fp8\", "
                    "\"scale_fmt\": \"e4m3\"}",
         "'quantization_config.scale_fmt' is e4m3"},
        {DSV3_BODY, "\"quantization_config\": {\"quant_method\": \"fp8\", "
                    "\"weight_block_size\": [128]}",
         "'quantization_config.weight_block_size'"},
        {DSV3_BODY, "\"quantization_config\": {\"quant_method\": \"fp8\", "
                    "\"weight_block_size\": null}",
         "'quantization_config.weight_block_size'"},
        {DSV3_BODY, "\"quantization_config\": {\"quant_method\": \"awq\"}",
         "'quantization_config.quant_method' is awq"},
        {DSV2_LITE_BODY, "\"quantization_config\": {\"quant_method\": \"fp8\", "
                         "\"activation_scheme\": \"static\"}",
         "'quantization_config.activation_scheme' is static"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        char body[4096], extra[512];
        snprintf(body, sizeof body, "{%s}", refused[i].body);
        snprintf(extra, sizeof extra, "{%s}", refused[i].extra);
        char *json = with_keys(body, extra);
        expect_error(json, refused[i].key);
        free(json);
    }
    /* deepseek_v2's shape in FP8 (DeepSeek publishes V2 in bf16 only; the code is shared) */
    struct xd_model_config c;
    struct xd_err err;
    char *v2 = with_keys("{" DSV2_LITE_BODY "}", "{" DSV3_FP8 "}}");
    int rc = parse(v2, &c, &err);
    CHECK(rc == XD_OK && c.fp8 && c.arch == XD_ARCH_DEEPSEEK_V2, "v2 fp8: rc %d %s", rc, err.msg);
    free(v2);
#undef DSV3_FP8
}

/* Every deepseek option expertd does not compute is refused with the key's name. */
static void test_deepseek_refusals(void)
{
    static const struct {
        const char *body;
        const char *extra;
        const char *key;
    } cases[] = {
        {DSV2_LITE_BODY, "\"mlp_bias\": true", "mlp_bias"},
        {DSV3_BODY, "\"attention_bias\": true", "attention_bias"},
        {DSV2_LITE_BODY, "\"norm_topk_prob\": true", "norm_topk_prob"},
        {DSV3_BODY, "\"moe_layer_freq\": 2", "moe_layer_freq"},
        {DSV2_LITE_BODY, "\"topk_method\": \"noaux_tc\"", "topk_method"},
        {DSV2_LITE_BODY, "\"scoring_func\": \"sigmoid\"", "scoring_func"},
        {DSV3_BODY, "\"scoring_func\": \"softmax\"", "scoring_func"},
        {DSV3_BODY, "\"num_key_value_heads\": 64", "num_key_value_heads"},
        {DSV3_BODY, "\"n_group\": 7", "n_group"},
        {DSV3_BODY, "\"n_group\": 256, \"topk_group\": 4", "n_group"},
        {DSV3_BODY, "\"topk_group\": 9", "topk_group"},
        {DSV3_BODY, "\"topk_group\": null, \"n_group\": 2", "topk_group"}, /* default 4 */
        {DSV3_BODY, "\"num_experts_per_tok\": 9, \"n_group\": 64, \"topk_group\": 2",
         "num_experts_per_tok"},
        {DSV3_BODY, "\"qk_rope_head_dim\": 63", "qk_rope_head_dim"},
        {DSV3_BODY, "\"rope_parameters\": {\"rope_type\": \"default\", "
                    "\"rope_theta\": 10000.0, \"partial_rotary_factor\": 0.5}",
         "partial_rotary_factor"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char body[4096], extra[512];
        snprintf(body, sizeof body, "{%s}", cases[i].body);
        snprintf(extra, sizeof extra, "{%s}", cases[i].extra);
        char *json = with_keys(body, extra);
        expect_error(json, cases[i].key);
        free(json);
    }
    /* group_limited_greedy needs its groups */
    expect_error("{\"model_type\": \"deepseek_v2\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_experts_per_tok\": 2,"
                 "\"topk_method\": \"group_limited_greedy\"}",
                 "n_group");
}

static void test_error_unknown_model_type(void)
{
    expect_error("{\"model_type\": \"llama\", \"vocab_size\": 32000, \"hidden_size\": 4096,"
                 "\"num_hidden_layers\": 32, \"num_attention_heads\": 32}",
                 "model_type");
    expect_error("{\"vocab_size\": 32000}", "model_type");
    expect_error("{\"model_type\": 7}", "model_type");
    /* a published MoE family expertd does not compute: refused naming what it serves */
    expect_error("{\"model_type\": \"qwen3_next\", \"vocab_size\": 32000}",
                 "ernie4_5_moe and hunyuan_v1_moe");
}

static void test_error_missing_hidden_size(void)
{
    expect_error("{\"model_type\": \"mixtral\", \"vocab_size\": 32000, \"num_hidden_layers\": 2,"
                 "\"num_attention_heads\": 8, \"intermediate_size\": 512,"
                 "\"num_local_experts\": 4, \"num_experts_per_tok\": 2}",
                 "hidden_size");
    expect_error("{\"model_type\": \"mixtral\", \"vocab_size\": 32000, \"hidden_size\": \"4096\","
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 8}",
                 "hidden_size");
    expect_error("{\"model_type\": \"mixtral\", \"vocab_size\": 32000, \"hidden_size\": 0,"
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 8}",
                 "hidden_size");
}

static void test_error_missing_other_keys(void)
{
    expect_error("{\"model_type\": \"olmoe\", \"hidden_size\": 64, \"num_hidden_layers\": 1,"
                 "\"num_attention_heads\": 4, \"intermediate_size\": 32, \"num_experts\": 4,"
                 "\"num_experts_per_tok\": 2}",
                 "vocab_size");
    expect_error("{\"model_type\": \"olmoe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_attention_heads\": 4, \"intermediate_size\": 32, \"num_experts\": 4,"
                 "\"num_experts_per_tok\": 2}",
                 "num_hidden_layers");
    expect_error("{\"model_type\": \"olmoe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 1, \"intermediate_size\": 32, \"num_experts\": 4,"
                 "\"num_experts_per_tok\": 2}",
                 "num_attention_heads");
    expect_error("{\"model_type\": \"olmoe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"num_experts\": 4,"
                 "\"num_experts_per_tok\": 2}",
                 "intermediate_size");
    expect_error("{\"model_type\": \"olmoe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"intermediate_size\": 32,"
                 "\"num_experts\": 4}",
                 "num_experts_per_tok");
    expect_error("{\"model_type\": \"qwen3_moe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"num_experts\": 4,"
                 "\"num_experts_per_tok\": 2}",
                 "moe_intermediate_size");
    /* a layer count above what the engine holds */
    expect_error("{\"model_type\": \"olmoe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 100000, \"num_attention_heads\": 4,"
                 "\"intermediate_size\": 32, \"num_experts\": 4, \"num_experts_per_tok\": 2}",
                 "num_hidden_layers");
}

static void test_error_num_experts_zero(void)
{
    expect_error("{\"model_type\": \"qwen2_moe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                 "\"moe_intermediate_size\": 32, \"num_experts\": 0, \"num_experts_per_tok\": 1}",
                 "num_experts");
    expect_error("{\"model_type\": \"mixtral\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                 "\"intermediate_size\": 32, \"num_local_experts\": 0, \"num_experts_per_tok\": 1}",
                 "num_local_experts");
    expect_error("{\"model_type\": \"olmoe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                 "\"intermediate_size\": 32, \"num_experts\": -3, \"num_experts_per_tok\": 1}",
                 "num_experts");
}

static void test_error_top_k_above_experts(void)
{
    expect_error("{\"model_type\": \"olmoe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                 "\"intermediate_size\": 32, \"num_experts\": 4, \"num_experts_per_tok\": 5}",
                 "num_experts_per_tok");
    expect_error("{\"model_type\": \"olmoe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                 "\"intermediate_size\": 32, \"num_experts\": 4, \"num_experts_per_tok\": 0}",
                 "num_experts_per_tok");
}

static void test_error_kv_heads_not_dividing(void)
{
    expect_error("{\"model_type\": \"olmoe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 3,"
                 "\"intermediate_size\": 32, \"num_experts\": 4, \"num_experts_per_tok\": 2}",
                 "num_key_value_heads");
    /* more kv heads than heads */
    expect_error("{\"model_type\": \"olmoe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 8,"
                 "\"intermediate_size\": 32, \"num_experts\": 4, \"num_experts_per_tok\": 2}",
                 "num_key_value_heads");
}

static void test_error_head_dim(void)
{
    /* rotary embeddings rotate pairs: an odd head_dim cannot be served */
    expect_error("{\"model_type\": \"olmoe\", \"vocab_size\": 100, \"hidden_size\": 60,"
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"head_dim\": 15,"
                 "\"intermediate_size\": 32, \"num_experts\": 4, \"num_experts_per_tok\": 2}",
                 "head_dim");
}

static void test_error_hidden_act(void)
{
    expect_error("{\"model_type\": \"olmoe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"hidden_act\": \"gelu\","
                 "\"intermediate_size\": 32, \"num_experts\": 4, \"num_experts_per_tok\": 2}",
                 "hidden_act");
    expect_error("{\"model_type\": \"mixtral\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"hidden_act\": 1,"
                 "\"intermediate_size\": 32, \"num_local_experts\": 4, \"num_experts_per_tok\": 2}",
                 "hidden_act");
}

static void test_error_mlp_only_layers(void)
{
    const char *pre = "{\"model_type\": \"qwen2_moe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                      "\"num_hidden_layers\": 4, \"num_attention_heads\": 4,"
                      "\"moe_intermediate_size\": 32, \"intermediate_size\": 96,"
                      "\"num_experts\": 4, \"num_experts_per_tok\": 2, \"mlp_only_layers\": ";
    const char *bad[] = {"[4]}", "[-1]}", "[1.5]}", "[\"0\"]}", "3}"};
    char json[1024];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(json, sizeof json, "%s%s", pre, bad[i]);
        expect_error(json, "mlp_only_layers");
    }
    /* the last layer is in range */
    struct xd_model_config c;
    struct xd_err err;
    snprintf(json, sizeof json, "%s%s", pre, "[3]}");
    int rc = parse(json, &c, &err);
    CHECK(rc == XD_OK, "mlp_only_layers [3]: %s", err.msg);
    CHECK(rc != XD_OK || (c.n_moe_layers == 3 && !c.is_moe_layer[3]), "layer 3 dense");
    /* a dense layer needs intermediate_size */
    expect_error("{\"model_type\": \"qwen2_moe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 4, \"num_attention_heads\": 4,"
                 "\"moe_intermediate_size\": 32, \"num_experts\": 4, \"num_experts_per_tok\": 2,"
                 "\"mlp_only_layers\": [1]}",
                 "intermediate_size");
}

/* Parses json, which must succeed with eos ids want (n of them) and a warning naming the key. */
static void expect_eos_ignored(const char *json, const int *want, int n)
{
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse(json, &c, &err);
    CHECK(rc == XD_OK, "refused: %s", err.msg);
    if (rc != XD_OK)
        return;
    CHECK(c.n_eos == n, "%d eos ids kept, want %d", c.n_eos, n);
    for (int i = 0; i < n && i < c.n_eos; i++)
        CHECK(c.eos_token_ids[i] == want[i], "eos %d is %d, want %d", i, c.eos_token_ids[i],
              want[i]);
    CHECK_CONTAINS(c.warning, "eos_token_id");
    CHECK_CONTAINS(c.warning, "m/config.json");
}

static void test_eos_out_of_vocab_ignored(void)
{
    /* ids run 0 .. vocab_size - 1; transformers only warns about others: ignored, with a
     * warning naming the key */
    expect_eos_ignored("{" OLMOE_BODY ", \"eos_token_id\": 50304}", NULL, 0);
    expect_eos_ignored("{" OLMOE_BODY ", \"eos_token_id\": -1}", NULL, 0);
    const int kept[1] = {50279};
    expect_eos_ignored("{" OLMOE_BODY ", \"eos_token_id\": [50279, 60000]}", kept, 1);
    /* an id past 2^32 is outside any vocabulary; it must not wrap into range */
    expect_eos_ignored("{" OLMOE_BODY ", \"eos_token_id\": 4294967298}", NULL, 0);
    expect_eos_ignored("{" OLMOE_BODY ", \"eos_token_id\": [4294967298, 50279]}", kept, 1);
    struct xd_model_config c;
    struct xd_err err;
    CHECK(parse("{" OLMOE_BODY ", \"eos_token_id\": 50279}", &c, &err) == XD_OK &&
              c.warning[0] == '\0',
          "no warning for an id in the vocabulary: '%s'", c.warning);
}

static void test_error_eos_out_of_vocab(void)
{
    expect_error("{" OLMOE_BODY ", \"eos_token_id\": [50279, \"x\"]}", "eos_token_id");
    expect_error("{" OLMOE_BODY ", \"eos_token_id\": \"</s>\"}", "eos_token_id");
    /* more ids than XD_MAX_EOS */
    expect_error("{" OLMOE_BODY ", \"eos_token_id\": [1,2,3,4,5,6,7,8,9]}", "eos_token_id");
}

static void test_error_not_json(void)
{
    expect_error("{\"model_type\": \"mixtral\",", NULL);
    expect_error("", NULL);
    expect_error("model_type = mixtral", NULL);
}

static void test_error_not_object(void)
{
    expect_error("[{\"model_type\": \"mixtral\"}]", NULL);
    expect_error("[]", NULL);
}

static void test_error_wrong_types(void)
{
    expect_error("{\"model_type\": \"olmoe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"rms_norm_eps\": \"x\","
                 "\"intermediate_size\": 32, \"num_experts\": 4, \"num_experts_per_tok\": 2}",
                 "rms_norm_eps");
    expect_error("{\"model_type\": \"olmoe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"norm_topk_prob\": 1,"
                 "\"intermediate_size\": 32, \"num_experts\": 4, \"num_experts_per_tok\": 2}",
                 "norm_topk_prob");
    expect_error("{\"model_type\": \"olmoe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                 "\"tie_word_embeddings\": \"no\","
                 "\"intermediate_size\": 32, \"num_experts\": 4, \"num_experts_per_tok\": 2}",
                 "tie_word_embeddings");
    expect_error("{\"model_type\": \"olmoe\", \"vocab_size\": 100.5, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                 "\"intermediate_size\": 32, \"num_experts\": 4, \"num_experts_per_tok\": 2}",
                 "vocab_size");
    expect_error("{\"model_type\": \"qwen3_moe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                 "\"moe_intermediate_size\": 32, \"num_experts\": 4, \"num_experts_per_tok\": 2,"
                 "\"decoder_sparse_step\": 0}",
                 "decoder_sparse_step");
}

static void test_error_sliding_window_layers(void)
{
    /* qwen models with use_sliding_window true need per-layer windows expertd does not have */
    expect_error("{\"model_type\": \"qwen3_moe\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                 "\"moe_intermediate_size\": 32, \"num_experts\": 4, \"num_experts_per_tok\": 2,"
                 "\"use_sliding_window\": true, \"sliding_window\": 4096}",
                 "use_sliding_window");
}

static void test_error_duplicate_key(void)
{
    /* JSON leaves duplicate names undefined; two num_experts could each be read differently */
    expect_error("{" QWEN2_BODY ", \"num_experts\": 0}", "num_experts");
}

/* dots.llm1.inst's shape (keys as its checkpoint's config.json spells them, as remembered from
 * the model card: not checked against the file), with 6 of its 62 layers. */
#define DOTS1_CORE                                                                          \
    "\"model_type\": \"dots1\", \"architectures\": [\"Dots1ForCausalLM\"],"                 \
    "\"attention_bias\": false, \"head_dim\": 128, \"hidden_act\": \"silu\","               \
    "\"hidden_size\": 4096, \"intermediate_size\": 10944, \"moe_intermediate_size\": 1408," \
    "\"max_position_embeddings\": 32768, \"n_routed_experts\": 128, \"n_shared_experts\": 2," \
    "\"num_experts_per_tok\": 6, \"first_k_dense_replace\": 1, \"norm_topk_prob\": true,"   \
    "\"routed_scaling_factor\": 2.5, \"n_group\": 1, \"topk_group\": 1,"                    \
    "\"num_attention_heads\": 32, \"num_key_value_heads\": 32, \"num_hidden_layers\": 6,"   \
    "\"rms_norm_eps\": 1e-05, \"rope_theta\": 10000000, \"rope_scaling\": null,"            \
    "\"tie_word_embeddings\": false, \"vocab_size\": 152064, \"use_sliding_window\": false"
#define DOTS1_BODY DOTS1_CORE ", \"sliding_window\": null, \"max_window_layers\": 62"

static void test_dots1(void)
{
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse("{" DOTS1_BODY "}", &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    if (rc != XD_OK)
        return;
    CHECK(c.arch == XD_ARCH_DOTS1 && strcmp(c.model_type, "dots1") == 0, "arch");
    CHECK(c.n_experts == 128 && c.top_k == 6 && c.expert_ffn == 1408 && c.dense_ffn == 10944,
          "experts %d top %d ffn %d dense %d", c.n_experts, c.top_k, c.expert_ffn, c.dense_ffn);
    CHECK(c.shared_expert_ffn == 2 * 1408 && !c.shared_expert_gated, "shared %d",
          c.shared_expert_ffn);
    CHECK(c.router == XD_ROUTER_SIGMOID_BIAS && c.n_group == 1 && c.topk_group == 1 &&
              c.routed_scaling_factor == 2.5f && c.norm_topk_prob,
          "router");
    /* q/k norm always, per head; the rotary embedding over the whole head */
    CHECK(!c.qkv_bias && !c.o_bias && c.qk_norm == XD_QK_NORM_PER_HEAD, "attention");
    CHECK(c.rope.rot_dim == 128 && c.rope_theta == 1e7f && c.rope_layout == XD_ROPE_HALVES,
          "rope");
    CHECK(!c.is_moe_layer[0] && c.is_moe_layer[1] && c.n_moe_layers == 5, "%d MoE layers",
          c.n_moe_layers);
    for (int i = 0; i < 6; i++)
        CHECK(c.full_attention_layer[i], "layer %d full (sliding_window null)", i);

    /* Dots1Config's defaults: norm_topk_prob false, first_k_dense_replace 0, no groups, the
     * window 4096 from max_window_layers (62) on: no layer of 6 slides */
    rc = parse("{\"model_type\": \"dots1\", \"vocab_size\": 100, \"hidden_size\": 64,"
               " \"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"n_routed_experts\": 8,"
               " \"n_shared_experts\": 0, \"num_experts_per_tok\": 2, \"attention_bias\": true}",
               &c, &err);
    CHECK(rc == XD_OK, "defaults: %s", err.msg);
    CHECK(rc != XD_OK || (!c.norm_topk_prob && c.n_moe_layers == 3 && c.n_group == 1 &&
                          c.topk_group == 1 && c.routed_scaling_factor == 1.0f &&
                          c.shared_expert_ffn == 0 && c.expert_ffn == 1408 &&
                          c.dense_ffn == 10944 && c.max_position_embeddings == 2048 &&
                          c.sliding_window == 4096 && c.full_attention_layer[2]),
          "Dots1Config defaults");
    /* attention_bias: q, k, v and o */
    CHECK(rc != XD_OK || (c.qkv_bias && c.o_bias), "attention_bias on o_proj too");

    /* sliding layers from max_window_layers on when there is a window */
    rc = parse("{" DOTS1_CORE ", \"sliding_window\": 4096, \"max_window_layers\": 4}", &c, &err);
    CHECK(rc == XD_OK, "windows: %s", err.msg);
    CHECK(rc != XD_OK || (c.sliding_window == 4096 && c.full_attention_layer[3] &&
                          !c.full_attention_layer[4] && !c.full_attention_layer[5]),
          "max_window_layers 4: layers 4 and 5 slide");
    /* layer_types as transformers 5 writes it take precedence */
    rc = parse("{" DOTS1_CORE ", \"sliding_window\": 8, \"layer_types\": [\"sliding_attention\","
               " \"full_attention\", \"full_attention\", \"full_attention\", \"full_attention\","
               " \"sliding_attention\"]}",
               &c, &err);
    CHECK(rc == XD_OK && !c.full_attention_layer[0] && c.full_attention_layer[1] &&
              !c.full_attention_layer[5] && c.sliding_window == 8,
          "layer_types: %s", err.msg);
}

static void test_dots1_errors(void)
{
    /* Dots1Config's n_shared_experts and n_routed_experts default to None */
    expect_error("{\"model_type\": \"dots1\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 " \"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"n_routed_experts\": 8,"
                 " \"num_experts_per_tok\": 2}",
                 "n_shared_experts");
    expect_error("{\"model_type\": \"dots1\", \"vocab_size\": 100, \"hidden_size\": 64,"
                 " \"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"n_shared_experts\": 1,"
                 " \"num_experts_per_tok\": 2}",
                 "n_routed_experts");
    /* a sliding layer with no window */
    expect_error("{" DOTS1_CORE ", \"sliding_window\": null, \"layer_types\": [\"full_attention\","
                 " \"full_attention\", \"full_attention\", \"full_attention\", \"full_attention\","
                 " \"sliding_attention\"]}",
                 "sliding_window");
    expect_error("{" DOTS1_CORE ", \"layer_types\": [\"full_attention\"]}", "layer_types");
    expect_error("{" DOTS1_CORE ", \"layer_types\": [\"full_attention\", \"full_attention\","
                 " \"full_attention\", \"full_attention\", \"full_attention\", \"chunked\"]}",
                 "layer_types");
    expect_error("{" DOTS1_CORE ", \"sliding_window\": 0}", "sliding_window");
    expect_error("{" DOTS1_CORE ", \"max_window_layers\": \"62\"}", "max_window_layers");
    expect_error("{" DOTS1_BODY ", \"partial_rotary_factor\": 0.5}", "partial_rotary_factor");
    expect_error_set("{" DOTS1_BODY "}", "n_group", "3");
    expect_error_set("{" DOTS1_BODY "}", "topk_group", "2");
    expect_error_set("{" DOTS1_BODY "}", "n_shared_experts", "-1");
    expect_error_set("{" DOTS1_BODY "}", "first_k_dense_replace", "-1");
}

/* granite-3.0-1b-a400m-base's shape (keys as its config.json spells them, as remembered from the
 * model card: not checked against the file), with 4 of its 24 layers. */
#define GRANITE_BODY                                                                        \
    "\"model_type\": \"granitemoe\", \"architectures\": [\"GraniteMoeForCausalLM\"],"       \
    "\"attention_bias\": false, \"attention_dropout\": 0.1, \"attention_multiplier\": 0.015625," \
    "\"bos_token_id\": 0, \"embedding_multiplier\": 12.0, \"eos_token_id\": 0,"             \
    "\"hidden_act\": \"silu\", \"hidden_size\": 1024, \"intermediate_size\": 512,"          \
    "\"logits_scaling\": 6.0, \"max_position_embeddings\": 4096, \"num_attention_heads\": 16," \
    "\"num_experts_per_tok\": 8, \"num_hidden_layers\": 4, \"num_key_value_heads\": 8,"     \
    "\"num_local_experts\": 32, \"output_router_logits\": false, \"pad_token_id\": 0,"      \
    "\"residual_multiplier\": 0.22, \"rms_norm_eps\": 1e-06, \"rope_scaling\": null,"       \
    "\"rope_theta\": 10000, \"router_aux_loss_coef\": 0.001, \"tie_word_embeddings\": true," \
    "\"vocab_size\": 49155"

static void test_granitemoe(void)
{
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse("{" GRANITE_BODY "}", &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    if (rc != XD_OK)
        return;
    CHECK(c.arch == XD_ARCH_GRANITEMOE && strcmp(c.model_type, "granitemoe") == 0, "arch");
    CHECK(c.n_experts == 32 && c.top_k == 8 && c.expert_ffn == 512 && c.n_moe_layers == 4 &&
              c.shared_expert_ffn == 0,
          "experts %d top %d ffn %d", c.n_experts, c.top_k, c.expert_ffn);
    CHECK(c.router == XD_ROUTER_TOPK_SOFTMAX && !c.expert_bias, "router");
    /* attention_multiplier replaces head_dim^-0.5 (64^-0.5 = 0.125) */
    CHECK(c.attn_scale == 0.015625f && c.embedding_multiplier == 12.0f &&
              c.residual_multiplier == 0.22f && c.logits_scaling == 6.0f,
          "multipliers %g %g %g %g", (double)c.attn_scale, (double)c.embedding_multiplier,
          (double)c.residual_multiplier, (double)c.logits_scaling);
    CHECK(c.tie_word_embeddings && !c.qkv_bias && !c.o_bias && c.qk_norm == XD_QK_NORM_NONE &&
              c.sliding_window == 0,
          "attention");

    /* GraniteMoeConfig's defaults: every multiplier 1 (attention_multiplier too, not
     * head_dim^-0.5), 8 experts, top-2, intermediate_size 11008; mlp_only_layers ignored */
    rc = parse("{\"model_type\": \"granitemoe\", \"vocab_size\": 100, \"hidden_size\": 64,"
               " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"mlp_only_layers\": [0]}",
               &c, &err);
    CHECK(rc == XD_OK, "defaults: %s", err.msg);
    CHECK(rc != XD_OK || (c.attn_scale == 1.0f && c.embedding_multiplier == 1.0f &&
                          c.residual_multiplier == 1.0f && c.logits_scaling == 1.0f &&
                          c.n_experts == 8 && c.top_k == 2 && c.expert_ffn == 11008 &&
                          c.n_moe_layers == 2 && c.max_position_embeddings == 2048),
          "GraniteMoeConfig defaults");

    /* granitemoeshared: the shared MLP's width */
    rc = parse("{\"model_type\": \"granitemoeshared\", \"vocab_size\": 100, \"hidden_size\": 64,"
               " \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
               " \"shared_intermediate_size\": 1024, \"attention_bias\": true}",
               &c, &err);
    CHECK(rc == XD_OK && c.arch == XD_ARCH_GRANITEMOE_SHARED && c.shared_expert_ffn == 1024 &&
              !c.shared_expert_gated && c.qkv_bias && c.o_bias &&
              strcmp(c.model_type, "granitemoeshared") == 0,
          "granitemoeshared: %s", err.msg);
    /* granitemoe has no shared MLP: the key is not read */
    rc = parse("{" GRANITE_BODY ", \"shared_intermediate_size\": 1024}", &c, &err);
    CHECK(rc == XD_OK && c.shared_expert_ffn == 0, "granitemoe shared: %s", err.msg);
}

static void test_granitemoe_errors(void)
{
    expect_error_set("{" GRANITE_BODY "}", "logits_scaling", "0");
    expect_error_set("{" GRANITE_BODY "}", "embedding_multiplier", "\"12\"");
    expect_error_set("{" GRANITE_BODY "}", "attention_multiplier", "0");
    expect_error_set("{" GRANITE_BODY "}", "attention_multiplier", "1e30"); /* a softmax scale */
    expect_error_set("{" GRANITE_BODY "}", "residual_multiplier", "true");
    expect_error_set("{" GRANITE_BODY "}", "embedding_multiplier", "1e30"); /* overflows */
    expect_error_set("{" GRANITE_BODY "}", "num_local_experts", "0");
    expect_error_set("{" GRANITE_BODY "}", "num_experts_per_tok", "33");
    expect_error_set("{\"model_type\": \"granitemoeshared\", \"vocab_size\": 100,"
                     " \"hidden_size\": 64, \"num_hidden_layers\": 2, \"num_attention_heads\": 4}",
                     "shared_intermediate_size", "-1");
}

/* ERNIE-4.5-21B-A3B-PT's shape (keys as its config.json spells them, as remembered from the
 * model card: not checked against the file; the keys transformers ignores, such as
 * moe_capacity and moe_gate, kept), with 6 of its 28 layers. */
#define ERNIE_CORE                                                                          \
    "\"model_type\": \"ernie4_5_moe\", \"architectures\": [\"Ernie4_5_MoeForCausalLM\"],"   \
    "\"bos_token_id\": 1, \"eos_token_id\": 2, \"hidden_act\": \"silu\","                   \
    "\"hidden_size\": 2560, \"intermediate_size\": 12288, \"max_position_embeddings\": 131072," \
    "\"num_attention_heads\": 20, \"num_key_value_heads\": 4,"                               \
    "\"num_hidden_layers\": 6, \"pad_token_id\": 0, \"rms_norm_eps\": 1e-05,"               \
    "\"use_cache\": false, \"vocab_size\": 103424, \"rope_theta\": 500000, \"use_rmsnorm\": true," \
    "\"tie_word_embeddings\": true, \"use_bias\": false, \"moe_num_experts\": 64,"          \
    "\"moe_num_shared_experts\": 2, \"moe_layer_start_index\": 1, \"moe_intermediate_size\": 1536," \
    "\"moe_capacity\": [64, 64, 64], \"moe_gate\": \"topk\", \"moe_k\": 6,"                 \
    "\"moe_layer_interval\": 1, \"moe_use_aux_free\": true, \"head_dim\": 128"

static void test_ernie4_5_moe(void)
{
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse("{" ERNIE_CORE ", \"moe_layer_end_index\": 5}", &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    if (rc != XD_OK)
        return;
    CHECK(c.arch == XD_ARCH_ERNIE4_5_MOE && strcmp(c.model_type, "ernie4_5_moe") == 0, "arch");
    CHECK(c.n_experts == 64 && c.top_k == 6 && c.expert_ffn == 1536 && c.dense_ffn == 12288 &&
              c.shared_expert_ffn == 2 * 1536 && !c.shared_expert_gated,
          "experts %d top %d ffn %d dense %d shared %d", c.n_experts, c.top_k, c.expert_ffn,
          c.dense_ffn, c.shared_expert_ffn);
    CHECK(c.router == XD_ROUTER_SOFTMAX_BIAS && c.router_norm_min == 1e-12f, "router");
    CHECK(c.rope_layout == XD_ROPE_PAIRS && c.rope.rot_dim == 128 && c.rope_theta == 5e5f &&
              c.head_dim == 128 && c.tie_word_embeddings && !c.qkv_bias && !c.o_bias,
          "attention");
    CHECK(!c.is_moe_layer[0] && c.is_moe_layer[1] && c.is_moe_layer[5] && c.n_moe_layers == 5,
          "moe layers %d", c.n_moe_layers);

    /* start 2, end 4, interval 2: layer i is MoE when (i + 1) % 2 == 0, so 3 only */
    rc = parse("{\"model_type\": \"ernie4_5_moe\", \"vocab_size\": 100, \"hidden_size\": 64,"
               " \"num_hidden_layers\": 6, \"num_attention_heads\": 4, \"moe_layer_start_index\": 2,"
               " \"moe_layer_end_index\": 4, \"moe_layer_interval\": 2}",
               &c, &err);
    CHECK(rc == XD_OK, "pattern: %s", err.msg);
    CHECK(rc != XD_OK || (c.n_moe_layers == 1 && c.is_moe_layer[3]), "start/end/interval: %d",
          c.n_moe_layers);
    /* Ernie4_5_MoeConfig's defaults: 64 experts, moe_k 6, 2 shared, MoE from layer 1 to the
     * last, tied embeddings, rope_theta 500000, rms_norm_eps 1e-5 */
    CHECK(rc != XD_OK || (c.n_experts == 64 && c.top_k == 6 && c.shared_expert_ffn == 2 * 1536 &&
                          c.tie_word_embeddings && c.rope_theta == 5e5f &&
                          c.rms_norm_eps == 1e-5f && c.max_position_embeddings == 131072),
          "defaults");
    rc = parse("{\"model_type\": \"ernie4_5_moe\", \"vocab_size\": 100, \"hidden_size\": 64,"
               " \"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"moe_num_experts\": 8,"
               " \"moe_k\": 2, \"tie_word_embeddings\": false, \"mlp_only_layers\": [1]}",
               &c, &err);
    CHECK(rc == XD_OK && c.n_moe_layers == 3 && !c.is_moe_layer[0] && c.is_moe_layer[3] &&
              !c.tie_word_embeddings,
          "end -1 is the last layer; mlp_only_layers ignored: %s", err.msg);
}

static void test_ernie4_5_moe_errors(void)
{
    expect_error_set("{" ERNIE_CORE "}", "use_bias", "true");
    expect_error_set("{" ERNIE_CORE "}", "moe_layer_interval", "0");
    expect_error_set("{" ERNIE_CORE "}", "moe_layer_end_index", "-2");
    expect_error_set("{" ERNIE_CORE "}", "moe_norm_min", "-1");
    expect_error_set("{" ERNIE_CORE "}", "moe_k", "65");
    expect_error_set("{" ERNIE_CORE "}", "moe_num_shared_experts", "\"2\"");
    expect_error_set("{" ERNIE_CORE "}", "moe_num_experts", "0");
    expect_error_set("{" ERNIE_CORE "}", "moe_layer_start_index", "6"); /* no MoE layer */
}

/* Hunyuan-A13B-Instruct's shape (keys as its config.json spells them, as remembered from the
 * model card: not checked against the file; per-layer lists for moe_topk, the rope_scaling
 * with alpha transformers reads as NTK-alpha, keys transformers ignores such as use_cla and
 * moe_intermediate_size kept), with 4 of its 32 layers. */
#define HUNYUAN_CORE                                                                        \
    "\"model_type\": \"hunyuan_v1_moe\", \"architectures\": [\"HunYuanMoEV1ForCausalLM\"],"  \
    "\"attention_bias\": false, \"hidden_act\": \"silu\", \"hidden_size\": 4096,"           \
    "\"intermediate_size\": 3072, \"max_position_embeddings\": 32768, \"head_dim\": 128,"   \
    "\"num_attention_heads\": 32, \"num_key_value_heads\": 8, \"num_hidden_layers\": 4,"    \
    "\"num_experts\": 64, \"moe_topk\": [8, 8, 8, 8], \"moe_intermediate_size\": [3072, 3072," \
    " 3072, 3072], \"num_shared_expert\": [1, 1, 1, 1], \"use_mixed_mlp_moe\": true,"       \
    "\"use_qk_norm\": true, \"use_cla\": false, \"rms_norm_eps\": 1e-05,"                   \
    "\"rope_theta\": 10000.0, \"tie_word_embeddings\": true, \"vocab_size\": 128167,"       \
    "\"bos_token_id\": 1, \"eos_token_id\": 127960"
#define HUNYUAN_BODY                                                                        \
    HUNYUAN_CORE ", \"rope_scaling\": {\"alpha\": 1000.0, \"beta_fast\": 32, \"beta_slow\": 1," \
                 " \"factor\": 1.0, \"mscale\": 1.0, \"mscale_all_dim\": 1.0, \"type\": \"dynamic\"}"

static void test_hunyuan_v1_moe(void)
{
    struct xd_model_config c;
    struct xd_err err;
    int rc = parse("{" HUNYUAN_BODY "}", &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    if (rc != XD_OK)
        return;
    CHECK(c.arch == XD_ARCH_HUNYUAN_V1_MOE && strcmp(c.model_type, "hunyuan_v1_moe") == 0, "arch");
    CHECK(c.n_experts == 64 && c.top_k == 8 && c.expert_ffn == 3072 &&
              c.shared_expert_ffn == 3072 && !c.shared_expert_gated && c.n_moe_layers == 4,
          "experts %d top %d ffn %d shared %d", c.n_experts, c.top_k, c.expert_ffn,
          c.shared_expert_ffn);
    CHECK(c.router == XD_ROUTER_SOFTMAX && c.norm_topk_prob, "router");
    CHECK(c.qk_norm == XD_QK_NORM_PER_HEAD && c.qk_norm_after_rope && !c.qkv_bias &&
              c.tie_word_embeddings,
          "attention");
    /* NTK-alpha: the default rope over 10000 * 1000^(128 / 126), whatever the length */
    const double base = 10000.0 * pow(1000.0, 128.0 / 126.0);
    CHECK(c.rope.type == XD_ROPE_DEFAULT && c.rope_theta == (float)base &&
              c.max_context == 32768,
          "rope type %d theta %g (want %g), context %d", (int)c.rope.type, (double)c.rope_theta,
          base, c.max_context);
    /* transformers 5's spelling */
    rc = parse("{" HUNYUAN_CORE ", \"rope_parameters\": {\"rope_type\": \"dynamic\","
               " \"alpha\": 50.0, \"rope_theta\": 20000.0}}",
               &c, &err);
    CHECK(rc == XD_OK && c.rope_theta == (float)(20000.0 * pow(50.0, 128.0 / 126.0)),
          "rope_parameters alpha: %s", err.msg);
    /* dynamic without alpha stays the dynamic NTK scaling */
    rc = parse("{" HUNYUAN_CORE ", \"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2.0}}",
               &c, &err);
    CHECK(rc == XD_OK && c.rope.type == XD_ROPE_DYNAMIC, "dynamic: %s", err.msg);
    /* HunYuanMoEV1Config's defaults: 1 expert, top-1, intermediate_size 11008 */
    rc = parse("{\"model_type\": \"hunyuan_v1_moe\", \"vocab_size\": 100, \"hidden_size\": 64,"
               " \"num_hidden_layers\": 2, \"num_attention_heads\": 4}",
               &c, &err);
    CHECK(rc == XD_OK && c.n_experts == 1 && c.top_k == 1 && c.expert_ffn == 11008 &&
              !c.tie_word_embeddings && c.max_position_embeddings == 2048 &&
              c.rms_norm_eps == 1e-5f,
          "defaults: %s", err.msg);
}

static void test_hunyuan_v1_moe_errors(void)
{
    expect_error_set("{" HUNYUAN_BODY "}", "moe_topk", "[8, 8, 8, 4]");
    expect_error_set("{" HUNYUAN_BODY "}", "moe_topk", "[8, 8, 8]");
    expect_error_set("{" HUNYUAN_BODY "}", "num_experts", "[64, 64, 64, 32]");
    expect_error_set("{" HUNYUAN_BODY "}", "moe_topk", "65");
    expect_error("{" HUNYUAN_CORE ", \"rope_scaling\": {\"type\": \"dynamic\", \"alpha\": -1}}",
                 "alpha");
    expect_error("{" HUNYUAN_CORE ", \"rope_scaling\": {\"type\": \"dynamic\", \"alpha\": \"big\"}}",
                 "alpha");
}

static void test_arch_names(void)
{
    CHECK(strcmp(xd_arch_name(XD_ARCH_MIXTRAL), "mixtral") == 0, "mixtral");
    CHECK(strcmp(xd_arch_name(XD_ARCH_QWEN2_MOE), "qwen2_moe") == 0, "qwen2_moe");
    CHECK(strcmp(xd_arch_name(XD_ARCH_QWEN3_MOE), "qwen3_moe") == 0, "qwen3_moe");
    CHECK(strcmp(xd_arch_name(XD_ARCH_OLMOE), "olmoe") == 0, "olmoe");
    CHECK(strcmp(xd_arch_name(XD_ARCH_DEEPSEEK_V2), "deepseek_v2") == 0, "deepseek_v2");
    CHECK(strcmp(xd_arch_name(XD_ARCH_DEEPSEEK_V3), "deepseek_v3") == 0, "deepseek_v3");
    CHECK(strcmp(xd_arch_name(XD_ARCH_DOTS1), "dots1") == 0, "dots1");
    CHECK(strcmp(xd_arch_name(XD_ARCH_GRANITEMOE), "granitemoe") == 0, "granitemoe");
    CHECK(strcmp(xd_arch_name(XD_ARCH_GRANITEMOE_SHARED), "granitemoeshared") == 0,
          "granitemoeshared");
    CHECK(strcmp(xd_arch_name(XD_ARCH_ERNIE4_5_MOE), "ernie4_5_moe") == 0, "ernie4_5_moe");
    CHECK(strcmp(xd_arch_name(XD_ARCH_HUNYUAN_V1_MOE), "hunyuan_v1_moe") == 0, "hunyuan_v1_moe");
}

static void test_length_is_respected(void)
{
    /* only len bytes are read: a valid config followed by garbage past len parses */
    const char *text = "{" OLMOE_BODY "}GARBAGE";
    struct xd_model_config c;
    struct xd_err err = {{0}};
    int rc = xd_model_config_parse(text, strlen(text) - 7, "m/config.json", &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    RUN(test_glm4_moe);
    RUN(test_glm4_moe_errors);
    RUN(test_gpt_oss);
    RUN(test_dots1);
    RUN(test_dots1_errors);
    RUN(test_granitemoe);
    RUN(test_granitemoe_errors);
    RUN(test_ernie4_5_moe);
    RUN(test_ernie4_5_moe_errors);
    RUN(test_hunyuan_v1_moe);
    RUN(test_hunyuan_v1_moe_errors);
    RUN(test_gpt_oss_errors);
    RUN(test_mixtral);
    RUN(test_mixtral_defaults);
    RUN(test_qwen2_moe);
    RUN(test_qwen2_moe_norm_topk_default);
    RUN(test_qwen3_moe_sparse_step);
    RUN(test_qwen3_moe_attention_bias);
    RUN(test_olmoe);
    RUN(test_olmoe_clip_qkv_null);
    RUN(test_rope_parameters);
    RUN(test_rope_unsupported_type);
    RUN(test_rope_spellings);
    RUN(test_eos_int_and_list);
    RUN(test_deepseek_v2_lite);
    RUN(test_deepseek_v3);
    RUN(test_deepseek_refusals);
    RUN(test_deepseek_fp8);
    RUN(test_error_unknown_model_type);
    RUN(test_error_missing_hidden_size);
    RUN(test_error_missing_other_keys);
    RUN(test_error_num_experts_zero);
    RUN(test_error_top_k_above_experts);
    RUN(test_error_kv_heads_not_dividing);
    RUN(test_error_head_dim);
    RUN(test_error_hidden_act);
    RUN(test_error_mlp_only_layers);
    RUN(test_eos_out_of_vocab_ignored);
    RUN(test_error_eos_out_of_vocab);
    RUN(test_error_not_json);
    RUN(test_error_not_object);
    RUN(test_error_wrong_types);
    RUN(test_error_sliding_window_layers);
    RUN(test_error_duplicate_key);
    RUN(test_arch_names);
    RUN(test_length_is_respected);
    return test_summary();
}
