/* Fuzz target: any byte string as config.json; an accepted config must satisfy the invariants
 * the engine relies on. */
#include "tests/fuzz/fuzz.h"
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/model_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact-size heap copy: AddressSanitizer flags a read one byte past the text */
    char *text = malloc(size ? size : 1);
    if (!text)
        return 0;
    if (size)
        memcpy(text, data, size);

    struct xd_model_config *c = malloc(sizeof *c);
    struct xd_err err;
    if (c && xd_model_config_parse(text, size, "fuzz/config.json", c, &err) == XD_OK) {
        REQUIRE(c->vocab_size > 0 && c->hidden_size > 0 && c->head_dim > 0);
        REQUIRE(c->n_layers > 0 && c->n_layers <= XD_MAX_LAYERS);
        REQUIRE(c->n_heads > 0 && c->n_kv_heads > 0 && c->n_heads % c->n_kv_heads == 0);
        REQUIRE(c->n_experts > 0 && c->top_k > 0 && c->top_k <= c->n_experts);
        REQUIRE(c->expert_ffn > 0);
        int n_moe = 0;
        for (int i = 0; i < c->n_layers; i++) {
            n_moe += c->is_moe_layer[i];
            REQUIRE(c->is_moe_layer[i] || c->dense_ffn > 0);
        }
        REQUIRE(n_moe == c->n_moe_layers);
        REQUIRE(c->n_eos >= 0 && c->n_eos <= XD_MAX_EOS);
        for (int i = 0; i < c->n_eos; i++)
            REQUIRE(c->eos_token_ids[i] >= 0 && c->eos_token_ids[i] < c->vocab_size);
        REQUIRE(c->bos_token_id >= -1 && c->bos_token_id < c->vocab_size);
        REQUIRE(memchr(c->model_type, '\0', sizeof c->model_type) != NULL);
        REQUIRE(c->attn_scale > 0.0f && c->attn_scale < 1e30f);
        REQUIRE(c->routed_scaling_factor >= 0.0f);
        /* granitemoe's multipliers (engine/cpu/cpu_backend.c divides by logits_scaling) */
        REQUIRE(isfinite(c->embedding_multiplier) && isfinite(c->residual_multiplier));
        REQUIRE(isfinite(c->logits_scaling) && c->logits_scaling != 0.0f);
        REQUIRE(c->router != XD_ROUTER_SOFTMAX_BIAS || c->router_norm_min >= 0.0f);
        for (int i = 0; i < c->n_layers; i++) /* dots1: a sliding layer has a window */
            REQUIRE(c->arch != XD_ARCH_DOTS1 || c->full_attention_layer[i] ||
                    c->sliding_window > 0);
        if (c->mla) { /* what engine/cpu/mla.c relies on */
            REQUIRE(c->n_kv_heads == c->n_heads && c->kv_lora_rank > 0 && c->v_head_dim > 0);
            REQUIRE(c->qk_rope_head_dim > 0 && c->qk_rope_head_dim % 2 == 0 &&
                    c->head_dim == c->qk_rope_head_dim && c->qk_nope_head_dim >= 0);
            REQUIRE(c->q_lora_rank >= 0);
            REQUIRE(xd_model_config_kv_floats_per_token(c) ==
                    (long long)c->kv_lora_rank + c->qk_rope_head_dim);
        }
        if (c->n_group > 0) { /* engine/cpu/moe_router.c */
            REQUIRE(c->n_experts % c->n_group == 0);
            REQUIRE(c->topk_group >= 1 && c->topk_group <= c->n_group);
            REQUIRE(c->top_k <= c->topk_group * (c->n_experts / c->n_group));
            REQUIRE(c->router != XD_ROUTER_SIGMOID_BIAS || c->n_experts / c->n_group >= 2);
        }
    } else if (c) {
        REQUIRE(strstr(err.msg, "fuzz/config.json") != NULL);
    }
    free(c);
    free(text);
    return 0;
}
