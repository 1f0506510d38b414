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
    XD_ARCH_GLM4_MOE,
    XD_ARCH_GPT_OSS,
};

/* How a MoE layer picks its experts. */
enum xd_router_kind {
    XD_ROUTER_SOFTMAX,      /* softmax over all experts, top-k (mixtral, qwen, olmoe) */
    XD_ROUTER_SIGMOID_BIAS, /* sigmoid + e_score_correction_bias, group-limited top-k,
                             * routed_scaling_factor (glm4_moe; engine/cpu/routing.h) */
    XD_ROUTER_TOPK_SOFTMAX, /* linear with bias, top-k of the logits, softmax over the k
                             * chosen (gpt_oss) */
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
    float clip_qkv;              /* 0: none (olmoe) */

    int n_experts;
    int top_k;
    bool norm_topk_prob;         /* renormalise the top-k weights to sum to one */
    int expert_ffn;              /* width of one expert's MLP */
    int dense_ffn;               /* width of the MLP of non-MoE layers (0: none) */
    int shared_expert_ffn;       /* shared expert width (0: none): qwen2_moe's (gated),
                                  * glm4_moe's moe_intermediate_size x n_shared_experts */
    bool expert_bias;            /* experts' projections have biases (gpt_oss) */
    bool experts_mxfp4;          /* quantization_config quant_method "mxfp4": the experts are
                                  * stored as _blocks + _scales (gpt_oss as published) */
    float swiglu_limit;          /* gpt_oss's clamped SwiGLU: gate <= limit, |up| <= limit,
                                  * out = (up + 1) * gate * sigmoid(alpha * gate); 0 for the
                                  * plain silu(gate) * up of the others */
    float swiglu_alpha;
    bool shared_expert_gated;    /* qwen2_moe: sigmoid(x . shared_expert_gate) scales it */
    enum xd_router_kind router;
    int n_group;                 /* grouped router: groups of experts (1: none) */
    int topk_group;              /* grouped router: groups kept per token */
    float routed_scaling_factor; /* grouped router: multiplies the routing weights */
    bool is_moe_layer[XD_MAX_LAYERS];
    int n_moe_layers;

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

#endif
