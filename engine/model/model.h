/* A loaded model: its config, views of its non-expert weights, and its expert store. */
#ifndef XD_MODEL_H
#define XD_MODEL_H

#include <stdbool.h>
#include <stddef.h>

#include "engine/model/expert_store.h"
#include "engine/model/model_config.h"
#include "engine/model/pack.h"
#include "engine/model/safetensors.h"

/* Weights of one decoder layer. Vectors are (n,) matrices with rows = 1.
 * Fields an architecture does not have are zeroed (data == NULL). */
struct xd_layer_weights {
    struct xd_matrix attn_norm; /* (1, hidden) */
    struct xd_matrix wq;        /* (n_heads * head_dim, hidden) */
    struct xd_matrix wk;        /* (n_kv_heads * head_dim, hidden) */
    struct xd_matrix wv;        /* (n_kv_heads * head_dim, hidden) */
    struct xd_matrix wo;        /* (hidden, n_heads * head_dim) */
    struct xd_matrix bq, bk, bv, bo;  /* biases, (1, rows of the projection) */
    struct xd_matrix q_norm;    /* (1, head_dim) per head, or (1, n_heads * head_dim) */
    struct xd_matrix k_norm;    /* (1, head_dim) per head, or (1, n_kv_heads * head_dim) */
    struct xd_matrix sinks;     /* (1, n_heads) gpt_oss's attention sink logits, else NULL */
    struct xd_matrix mlp_norm;  /* (1, hidden) */

    /* multi-head latent attention (config.mla); qk = qk_nope_head_dim + qk_rope_head_dim.
     * wq is then (n_heads * qk, hidden) when q_lora_rank is 0, wo (hidden, n_heads * v_head_dim) */
    struct xd_matrix wq_a;      /* (q_lora_rank, hidden) */
    struct xd_matrix q_a_norm;  /* (1, q_lora_rank) */
    struct xd_matrix wq_b;      /* (n_heads * qk, q_lora_rank) */
    struct xd_matrix wkv_a;     /* (kv_lora_rank + qk_rope_head_dim, hidden) */
    struct xd_matrix kv_a_norm; /* (1, kv_lora_rank) */
    struct xd_matrix wkv_b;     /* (n_heads * (qk_nope_head_dim + v_head_dim), kv_lora_rank):
                                   per head its k_nope rows, then its v rows */

    /* dense layers */
    struct xd_matrix mlp_gate;  /* (dense_ffn, hidden) */
    struct xd_matrix mlp_up;    /* (dense_ffn, hidden) */
    struct xd_matrix mlp_down;  /* (hidden, dense_ffn) */

    /* MoE layers; the experts themselves are behind the expert store */
    struct xd_matrix router;    /* (n_experts, hidden) */
    struct xd_matrix router_bias;          /* (1, n_experts) e_score_correction_bias (grouped
                                            * sigmoid router), the router's linear bias
                                            * (gpt_oss), else NULL */
    struct xd_expert_weights shared;       /* shared expert(s), ffn shared_expert_ffn */
    struct xd_matrix shared_expert_gate;   /* (1, hidden) qwen2_moe, else NULL */
    int moe_index;              /* index among MoE layers, -1 for dense layers */
};

/* What the expert pack did for a model: NONE (no pack asked for, or none could be written),
 * MAPPED (the quantized matrices are views of the pack, quant_buf is NULL) or WRITTEN (quantized
 * here, then written to pack_path). */
enum xd_pack_use { XD_PACK_NONE, XD_PACK_MAPPED, XD_PACK_WRITTEN };

/* A byte range of the checkpoint's mapping. */
struct xd_model_range {
    const char *p;
    size_t len;
};

struct xd_model {
    struct xd_model_config config;
    struct xd_checkpoint *checkpoint;
    struct xd_matrix embed;     /* (vocab, hidden) */
    struct xd_matrix final_norm;/* (1, hidden) */
    struct xd_matrix lm_head;   /* (vocab, hidden); the embedding when tied */
    struct xd_layer_weights *layers; /* (n_layers,) */
    struct xd_expert_store experts;  /* host-resident views of the checkpoint */
    char *dir;
    /* After xd_model_quantize: the format (XD_DTYPE_Q8_0 / Q4_1 / Q4_K; XD_DTYPE_F32 before), whether
     * only the experts were quantized, and the one buffer that holds every quantized matrix. */
    enum xd_dtype quant;
    bool quant_experts_only;
    void *quant_buf;
    size_t quant_bytes;
    int quant_n_kept;        /* matrices left as stored: columns not a multiple of 32 (FP8
                                served as stored: the matmul weights kept FP8) */
    int quant_n_fallback;    /* Q4_K: matrices made q4_1, their columns not a multiple of 256 */
    /* Loaded from an FP8 checkpoint (config.fp8): its F8_E4M3 matrices were converted at load,
     * the matmul weights to q8_0 (quant is Q8_0), the embedding and routers to f32; or, served
     * as stored (xd_pack_opts.fp8_native: quant is F8_E4M3), the matmul weights of 128 x 128
     * blocks kept FP8 and the others made f32. */
    bool fp8;
    /* The expert pack of xd_model_quantize_packed / xd_model_load_packed, and its file. */
    enum xd_pack_use pack_use;
    char *pack_path;
    struct xd_pack_map *pack;
    /* Checkpoint bytes whose matrices were replaced (quantized, converted, or mapped from the
     * pack) and whose pages were dropped: xd_model_read does not read them back. */
    struct xd_model_range *dropped; /* (n_dropped,) */
    size_t n_dropped, cap_dropped;
};

/* Where xd_model_quantize_packed looks for and writes the expert pack. */
struct xd_pack_opts {
    bool enabled;           /* false (the zero default): no pack, quantize in memory */
    const char *dir;        /* NULL: beside the checkpoint, else the cache directory when the
                               checkpoint's is not writable (xd_pack_paths) */
    xd_pack_log_fn log;     /* refusals, progress, fallbacks; NULL: stderr */
    void *log_ctx;
    /* FP8 checkpoints: false (the default) converts their weights to q8_0 at load (through the
     * pack); true serves them as stored, the CPU kernels dequantizing in registers (exactly
     * transformers' dequantization; engine/cpu/cpu_kernels.h) */
    bool fp8_native;
};

/* Loads the checkpoint directory dir (config.json, safetensors, optional
 * generation_config.json). Every tensor the architecture needs is checked
 * for presence, shape and dtype. On failure returns a negative status and
 * err names the file, the key or the tensor; *ret_model is untouched.
 * The model owns the mapping; destroy with xd_model_destroy. */
int xd_model_load(const char *dir, struct xd_model **ret_model, struct xd_err *err);
void xd_model_destroy(struct xd_model *model);
/* As xd_model_load, with an FP8 checkpoint's conversion to q8 through the expert pack of po (as
 * xd_model_quantize_packed: a matching pack `expertd-fp8-q8.pack` is mapped instead of
 * converting again, else the conversion is written to one; po NULL or disabled: no pack). Other
 * checkpoints load as xd_model_load does (their pack is xd_model_quantize_packed's). */
int xd_model_load_packed(const char *dir, const struct xd_pack_opts *po,
                         struct xd_model **ret_model, struct xd_err *err);
/* As xd_model_load, but an FP8 checkpoint's weights are all dequantized to f32 (fp8(w) x its
 * block's scale_inv, as transformers dequantizes them) instead of converted to q8: the
 * reference the q8 conversion is measured against. Other checkpoints load as usual. */
int xd_model_load_fp8_dequantized(const char *dir, struct xd_model **ret_model,
                                  struct xd_err *err);

/* Quantizes the model's matrices to fmt (XD_DTYPE_Q8_0, XD_DTYPE_Q4_1 or XD_DTYPE_Q4_K; under Q4_K
 * a matrix whose columns are not a multiple of 256 is made q4_1, counted in quant_n_fallback)
 * from their f32/bf16/f16
 * views: every expert's gate, up and down; unless experts_only, also attention (q, k, v, o),
 * the dense and shared-expert MLPs, and lm_head in q8 whatever fmt (the logits' precision). The
 * router, norms, biases, the shared-expert gate and the embedding keep their checkpoint
 * precision. The quantized copies replace the views
 * (the expert store hands them out) and the checkpoint pages they came from are dropped from
 * memory (madvise DONTNEED; they fault back in only if read again). A matrix whose columns are
 * not a multiple of 32 stays as stored (counted in quant_n_kept; no published MoE has one, the
 * test fixtures do). A second call with the same format and scope does nothing. Another format
 * than the model already has, or no memory for the copies, is a negative status with err
 * saying which; the model is then unchanged. */
/* An FP8 model (fp8) loaded by xd_model_load is already q8: fmt Q8_0 does nothing, Q4_1 is
 * refused. */
int xd_model_quantize(struct xd_model *model, enum xd_dtype fmt, bool experts_only,
                      struct xd_err *err);

/* xd_model_quantize through the expert pack (engine/model/pack.h) when po->enabled: a pack in
 * one of xd_pack_paths' places made from this checkpoint (its identity), for this format and
 * scope, by this quantizer version, with exactly the extents the model lists (names, dtypes,
 * shapes) is mapped read-only and its pages read in (pack_use MAPPED); the matrices are the
 * bytes xd_model_quantize makes, so logits are bit-identical. A pack that does not match or
 * does not parse is reported through po->log with its path and the reason, never used; the
 * model is then quantized in memory and the pack (re)written (pack_use WRITTEN) to the first
 * place that takes it: a read-only checkpoint directory falls back to the cache directory; if
 * none does, a warning and the model is served quantized in memory (pack_use NONE). Pack
 * trouble is never an error; the errors are xd_model_quantize's. po NULL: xd_model_quantize. */
int xd_model_quantize_packed(struct xd_model *model, enum xd_dtype fmt, bool experts_only,
                             const struct xd_pack_opts *po, struct xd_err *err);

/* As xd_checkpoint_read, but only the pages the model still serves from: the checkpoint's
 * pages but those of matrices replaced by quantized or converted copies or by the pack, so a
 * model mapped from its pack does not read its source experts from disk. progress (may be NULL)
 * counts the bytes read of those to read, as xd_checkpoint_read's. Cannot fail. */
void xd_model_read(const struct xd_model *model, xd_read_progress_fn progress, void *ctx);

/* Bytes of one expert's weights (gate, up and down) as served (quantized if the model is); 0
 * when it cannot be read. */
size_t xd_model_expert_bytes(const struct xd_model *model);

#endif
