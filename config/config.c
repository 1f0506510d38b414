/* The engine and server settings table and its validation. */
#include "config/config.h"

#include <string.h>

#include "engine/engine.h"
#include "engine/model/fp8.h"
#include "engine/model/quant.h"

void xd_config_init(struct xd_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->device = "cpu";
    cfg->block_size = 16;
    cfg->max_batch_tokens = 512;
    cfg->expert_policy = "lru";
    cfg->expert_prefetch = true;
    cfg->quantize = "none";
    cfg->pack = "auto";
    cfg->fp8 = "q8";
    cfg->kv_dtype = "f32";
}

#define CFG(field) offsetof(struct xd_config, field)

const struct xd_opt xd_config_opts[] = {
    {"model", XD_OPT_STRING, CFG(model), 0, 0, "EXPERTD_MODEL",
     "Hugging Face checkpoint directory"},
    {"device", XD_OPT_STRING, CFG(device), 0, 0, "EXPERTD_DEVICE", "cpu or cuda (default cpu)"},
    {"threads", XD_OPT_INT, CFG(threads), 0, 4096, "EXPERTD_THREADS",
     "CPU threads (default 0: all cores)"},
    {"block-size", XD_OPT_INT, CFG(block_size), 1, 1024, NULL,
     "tokens per KV cache block (default 16)"},
    {"kv-blocks", XD_OPT_INT, CFG(kv_blocks), 0, 1 << 24, NULL,
     "KV cache capacity in blocks (default: what the request needs)"},
    {"max-batch-tokens", XD_OPT_INT, CFG(max_batch_tokens), 1, 1 << 20, NULL,
     "most tokens in one forward step (default 512)"},
    {"expert-cache-mib", XD_OPT_INT, CFG(expert_cache_mib), 0, 1 << 30, NULL,
     "cuda: GPU memory for experts in MiB; the rest wait in pinned host memory "
     "(default 0: every expert on the GPU)"},
    {"expert-cache-slots", XD_OPT_INT, CFG(expert_cache_slots), 0, 1 << 30, NULL,
     "cuda: the same as a number of experts"},
    {"expert-policy", XD_OPT_STRING, CFG(expert_policy), 0, 0, NULL,
     "expert cache eviction: lru or predictive (default lru)"},
    {"expert-prefetch", XD_OPT_FLAG, CFG(expert_prefetch), 0, 0, NULL,
     "copy the next layer's predicted experts ahead of need (default true)"},
    {"expert-prefetch-width", XD_OPT_INT, CFG(expert_prefetch_width), 0, 4096, NULL,
     "experts prefetched per token for the next layer, best first by its router "
     "(default 0: the model's top_k)"},
    {"quantize", XD_OPT_STRING, CFG(quantize), 0, 0, "EXPERTD_QUANTIZE",
     "cpu: quantize weights at load from f32/bf16/f16: q8 (int8, a scale per 32) or q4 (4-bit, "
     "a scale and a minimum per 32), lm_head in q8; router, norms and embeddings stay as "
     "stored (default none)"},
    {"quantize-experts-only", XD_OPT_FLAG, CFG(quantize_experts_only), 0, 0,
     "EXPERTD_QUANTIZE_EXPERTS_ONLY",
     "with --quantize: quantize the experts only; attention, dense MLPs and lm_head stay as "
     "stored "
     "(default false)"},
    {"pack", XD_OPT_STRING, CFG(pack), 0, 0, "EXPERTD_PACK",
     "with --quantize (or an FP8 checkpoint): auto writes the quantized weights once to an "
     "expert pack (beside the checkpoint, else in the cache directory) and maps it on later "
     "starts; off quantizes at every load (default auto)"},
    {"fp8", XD_OPT_STRING, CFG(fp8), 0, 0, "EXPERTD_FP8",
     "cpu, FP8 checkpoints (fine-grained, 128x128 block scales): q8 converts the weights to "
     "q8_0 at load (int8 kernels, through the expert pack); native computes on the FP8 bytes as "
     "stored, dequantized in registers exactly as transformers dequantizes them (default q8)"},
    {"kv-dtype", XD_OPT_STRING, CFG(kv_dtype), 0, 0, "EXPERTD_KV_DTYPE",
     "cpu: the KV cache's element: f32, or bf16 / f16 (half the bytes a decode step reads per "
     "position and twice the context per MiB; keys and values rounded to nearest even when "
     "stored; f16 holds up to 65504) (default f32)"},
    {"pack-dir", XD_OPT_STRING, CFG(pack_dir), 0, 0, "EXPERTD_PACK_DIR",
     "directory of the expert packs (default: the checkpoint's, else the cache directory: "
     "$CACHE_DIRECTORY, $XDG_CACHE_HOME/expertd or ~/.cache/expertd)"},
};
const size_t xd_config_n_opts = sizeof xd_config_opts / sizeof xd_config_opts[0];

int xd_config_validate(const struct xd_config *cfg, struct xd_err *err)
{
    if (!cfg->model || !cfg->model[0])
        return xd_err_set(err, XD_ERR_CONFIG, "option '--model' (or EXPERTD_MODEL) is required");
    if (strcmp(cfg->device, "cpu") != 0 && strcmp(cfg->device, "cuda") != 0)
        return xd_err_set(err, XD_ERR_CONFIG, "option '--device': '%s' is not cpu or cuda",
                          cfg->device);
    enum xd_evict_policy pol;
    if (xd_evict_policy_parse(cfg->expert_policy, &pol, err) < 0)
        return xd_err_set(err, XD_ERR_CONFIG, "option '--expert-policy': '%s' is not lru or "
                          "predictive", cfg->expert_policy);
    enum xd_dtype q;
    XD_TRY(xd_quant_parse(cfg->quantize, &q, err));
    if (xd_dtype_is_quant(q) && strcmp(cfg->device, "cuda") == 0)
        return xd_err_set(err, XD_ERR_CONFIG,
                          "option '--quantize %s' with '--device cuda': the CUDA backend has no "
                          "quantized kernels yet (none has run on a GPU); use --device cpu",
                          cfg->quantize);
    if (strcmp(cfg->pack, "auto") != 0 && strcmp(cfg->pack, "off") != 0)
        return xd_err_set(err, XD_ERR_CONFIG, "option '--pack': '%s' is not auto or off",
                          cfg->pack);
    bool fp8_native;
    XD_TRY(xd_fp8_serve_parse(cfg->fp8, &fp8_native, err));
    enum xd_dtype kv;
    XD_TRY(xd_engine_kv_dtype_parse(cfg->kv_dtype, &kv, err));
    if (kv != XD_DTYPE_F32 && strcmp(cfg->device, "cuda") == 0)
        return xd_err_set(err, XD_ERR_CONFIG,
                          "option '--kv-dtype %s' with '--device cuda': the CUDA backend keeps "
                          "its own KV cache format; --kv-dtype applies to --device cpu",
                          cfg->kv_dtype);
    if (cfg->expert_cache_mib > 0 && cfg->expert_cache_slots > 0)
        return xd_err_set(err, XD_ERR_CONFIG, "options '--expert-cache-mib' and "
                          "'--expert-cache-slots': give one of the two");
    return XD_OK;
}

void xd_config_pack_opts(const struct xd_config *cfg, struct xd_pack_opts *ret)
{
    *ret = (struct xd_pack_opts){.enabled = strcmp(cfg->pack, "off") != 0,
                                 .dir = cfg->pack_dir};
    struct xd_err unused; /* validated by xd_config_validate; anything else serves q8 */
    if (xd_fp8_serve_parse(cfg->fp8, &ret->fp8_native, &unused) < 0)
        ret->fp8_native = false;
}

int xd_config_expert_opts(const struct xd_config *cfg, const struct xd_model_config *mc,
                          bool recording, struct xd_engine_opts *eo, struct xd_err *err)
{
    XD_TRY(xd_evict_policy_parse(cfg->expert_policy, &eo->expert_evict_policy, err));
    XD_TRY(xd_quant_parse(cfg->quantize, &eo->quantize, err));
    eo->quantize_experts_only = cfg->quantize_experts_only;
    XD_TRY(xd_engine_kv_dtype_parse(cfg->kv_dtype, &eo->kv_dtype, err));
    xd_config_pack_opts(cfg, &eo->pack);
    eo->expert_prefetch = cfg->expert_prefetch;
    if (cfg->expert_prefetch_width > mc->n_experts)
        return xd_err_set(err, XD_ERR_CONFIG,
                          "option '--expert-prefetch-width': %d is more than the model's %d "
                          "experts", cfg->expert_prefetch_width, mc->n_experts);
    eo->predict_experts = recording;
    eo->predict_width = cfg->expert_prefetch_width; /* 0: the engine takes top_k */
    if (recording && eo->device == XD_DEVICE_CPU) {
        /* on the GPU the width is what it prefetches: recording must not change that */
        int wide = 2 * mc->top_k < mc->n_experts ? 2 * mc->top_k : mc->n_experts;
        eo->predict_width = eo->predict_width > wide ? eo->predict_width : wide;
    }
    eo->expert_cache_slots = cfg->expert_cache_slots;
    if (cfg->expert_cache_mib > 0) {
        const double bf16_expert = 3.0 * mc->expert_ffn * mc->hidden_size * 2.0;
        const double slots = cfg->expert_cache_mib * 1048576.0 / bf16_expert;
        if (slots < 1)
            return xd_err_set(err, XD_ERR_CONFIG,
                              "option '--expert-cache-mib': %d MiB holds no expert of %.1f MiB",
                              cfg->expert_cache_mib, bf16_expert / 1048576.0);
        eo->expert_cache_slots = slots > 1 << 30 ? 1 << 30 : (int)slots;
    }
    return XD_OK;
}
