/* The hyper-parameters of a Hugging Face MoE checkpoint, read from config.json. */
#ifndef XD_MODEL_CONFIG_H
#define XD_MODEL_CONFIG_H

#include <stdbool.h>

#include "engine/base/status.h"
#include "engine/model/rope.h"

enum xd_arch {
    XD_ARCH_MIXTRAL,
    XD_ARCH_QWEN2_MOE,
    XD_ARCH_QWEN3_MOE,
    XD_ARCH_OLMOE,
    XD_ARCH_DEEPSEEK_V2,
    XD_ARCH_DEEPSEEK_V3, /* also Kimi-K2 and Moonlight */
    XD_ARCH_GLM4_MOE,
    XD_ARCH_GPT_OSS,
    XD_ARCH_DOTS1,            /* rednote dots.llm1: glm4_moe's router, GQA with q/k norm */
    XD_ARCH_GRANITEMOE,       /* IBM Granite 3.x MoE: mixtral-like with four multipliers */
    XD_ARCH_GRANITEMOE_SHARED,/* granitemoe with an ungated shared MLP */
    XD_ARCH_ERNIE4_5_MOE,     /* Baidu ERNIE-4.5 MoE: biased softmax top-k, interleaved rope */
    XD_ARCH_HUNYUAN_V1_MOE,   /* Tencent Hunyuan-A13B: q/k norm after rope, NTK-alpha rope */
};

/* Where RoPE's rotated pairs sit in a head's rotary part. */
enum xd_rope_layout {
    XD_ROPE_HALVES, /* rotate-half: pairs (i, i + d / 2) (transformers' default) */
    XD_ROPE_PAIRS,  /* adjacent pairs (2i, 2i + 1): deepseek_v2 (complex form), deepseek_v3 with
                       rope_interleave, ernie4_5_moe */
};

/* How a MoE layer picks its experts (engine/cpu/moe_router.h). */
enum xd_router_kind {
    XD_ROUTER_SOFTMAX,      /* softmax over all experts, top-k (mixtral, qwen, olmoe;
                             * deepseek_v2 topk_method greedy) */
    XD_ROUTER_SIGMOID_BIAS, /* sigmoid + e_score_correction_bias, group-limited top-k,
                             * routed_scaling_factor (glm4_moe, deepseek_v3 noaux_tc;
                             * engine/cpu/routing.h) */
    XD_ROUTER_SOFTMAX_GROUP,/* deepseek_v2 group_limited_greedy: softmax; groups ranked by their
                             * best expert; top-k among the topk_group best groups */
    XD_ROUTER_TOPK_SOFTMAX, /* linear (with bias for gpt_oss), top-k of the logits, softmax
                             * over the k chosen (gpt_oss, granitemoe) */
    XD_ROUTER_SOFTMAX_BIAS, /* softmax; top-k of the probabilities + e_score_correction_bias;
                             * weights the probabilities over max(their sum,
                             * router_norm_min) (ernie4_5_moe) */
};

enum xd_qk_norm {
    XD_QK_NORM_NONE,
    XD_QK_NORM_PER_HEAD,   /* qwen3_moe: RMSNorm over each head's head_dim */
    XD_QK_NORM_FULL_WIDTH, /* olmoe: RMSNorm over the whole q (or k) projection */
};

#define XD_MAX_LAYERS 512
#define XD_MAX_EOS 8

struct xd_model_config {
    enum xd_arch arch;
    char model_type[32];
    int vocab_size;
    int hidden_size;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int max_position_embeddings;
    int max_context;             /* positions a sequence may hold: max_position_embeddings,
                                  * times factor for linear and dynamic rope, and
                                  * original_max_position_embeddings x factor for yarn when
                                  * larger (the lengths those scalings are made for) */
    float rms_norm_eps;
    float rope_theta;            /* rope.theta */
    struct xd_rope rope;         /* rope type, inverse frequencies, rotary dims, attention factor */
    int sliding_window;          /* 0: none */
    bool full_attention_layer[XD_MAX_LAYERS]; /* layer attends to every position even when
                                  * sliding_window is set (gpt_oss's layer_types
                                  * "full_attention"); false for every layer of the others */
    bool attn_sinks;             /* a learned per-head logit joins each softmax's denominator
                                  * (gpt_oss's self_attn.sinks) */
    bool tie_word_embeddings;
    bool qkv_bias;               /* q, k and v projections have biases */
    bool o_bias;                 /* the output projection has a bias */
    enum xd_qk_norm qk_norm;
    bool qk_norm_after_rope;     /* the q/k norm applies to the rotated q and k (hunyuan_v1_moe);
                                  * before the rotation for the others */
    float clip_qkv;              /* 0: none (olmoe) */
    enum xd_rope_layout rope_layout;
    float attn_scale;            /* softmax scale of q . k: 1 / sqrt(head_dim), MLA's, or
                                  * granitemoe's attention_multiplier */
    float embedding_multiplier;  /* the embedding row times this (1 but for granitemoe) */
    float residual_multiplier;   /* each block's output times this before the residual add
                                  * (1 but for granitemoe) */
    float logits_scaling;        /* the logits divided by this (1 but for granitemoe) */

    /* Multi-head latent attention (deepseek_v2/v3; mla false elsewhere). head_dim is then the
     * rotary part qk_rope_head_dim (as transformers sets it) and n_kv_heads == n_heads. */
    bool mla;
    int q_lora_rank;             /* 0: q_proj directly; else q_a_proj, q_a_layernorm, q_b_proj */
    int kv_lora_rank;            /* width of the cached latent */
    int qk_nope_head_dim;        /* per head: the query/key part without rope */
    int qk_rope_head_dim;        /* per head: the rotary part (one key part shared by all heads) */
    int v_head_dim;

    int n_experts;
    int top_k;
    bool norm_topk_prob;         /* renormalise the top-k weights to sum to one */
    int expert_ffn;              /* width of one expert's MLP */
    int dense_ffn;               /* width of the MLP of non-MoE layers (0: none) */
    int shared_expert_ffn;       /* shared expert width (0: none): qwen2_moe's (gated),
                                  * glm4_moe's, dots1's and deepseek's moe_intermediate_size x
                                  * n_shared_experts, granitemoeshared's
                                  * shared_intermediate_size (added as is) */
    bool expert_bias;            /* experts' projections have biases (gpt_oss) */
    bool experts_mxfp4;          /* quantization_config quant_method "mxfp4": the experts are
                                  * stored as _blocks + _scales (gpt_oss as published) */
    float swiglu_limit;          /* gpt_oss's clamped SwiGLU: gate <= limit, |up| <= limit,
                                  * out = (up + 1) * gate * sigmoid(alpha * gate); 0 for the
                                  * plain silu(gate) * up of the others */
    float swiglu_alpha;
    bool shared_expert_gated;    /* qwen2_moe: sigmoid(x . shared_expert_gate) scales it */
    enum xd_router_kind router;
    float router_norm_min;       /* XD_ROUTER_SOFTMAX_BIAS: the least renormalising sum
                                  * (ernie4_5_moe's moe_norm_min) */
    int n_group;                 /* grouped routers: groups of experts (0 or 1: none) */
    int topk_group;              /* grouped routers: groups kept per token */
    float routed_scaling_factor; /* multiplies the routing weights (1 but for glm4_moe, dots1
                                  * and deepseek) */
    bool is_moe_layer[XD_MAX_LAYERS];
    int n_moe_layers;

    /* quantization_config with quant_method "fp8" (fine-grained FP8: float8_e4m3fn weights,
     * one f32 weight_scale_inv per fp8_block[0] x fp8_block[1] block, activations dynamic) */
    bool fp8;
    int fp8_block[2];            /* weight_block_size: (rows, cols) of a scale block */

    int bos_token_id;            /* -1 when unknown */
    int eos_token_ids[XD_MAX_EOS];
    int n_eos;

    /* What was ignored, for the caller to print ("" when nothing): eos ids outside the
     * vocabulary, which transformers only warns about. */
    char warning[512];
};

/* Parses config.json text (len bytes) into *ret. path names the file in
 * messages. Checks every key it needs for presence, type and range; an
 * unknown model_type, zero experts or top-k above the number of experts is an
 * error naming the key. On failure *ret is unspecified. */
int xd_model_config_parse(const char *json_text, size_t len, const char *path,
                          struct xd_model_config *ret, struct xd_err *err);

/* Reads dir/config.json and, when present, dir/generation_config.json (whose
 * eos_token_id and bos_token_id take precedence). */
int xd_model_config_load(const char *dir, struct xd_model_config *ret, struct xd_err *err);

const char *xd_arch_name(enum xd_arch arch);

/* Floats one layer's KV cache holds per token: 2 * n_kv_heads * head_dim, or with MLA the
 * compressed latent plus the shared rotary key, kv_lora_rank + qk_rope_head_dim. */
long long xd_model_config_kv_floats_per_token(const struct xd_model_config *c);

#endif
