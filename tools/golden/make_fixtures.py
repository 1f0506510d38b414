#!/usr/bin/env python3
"""Build tiny, randomly initialised MoE checkpoints and record reference outputs.

For each architecture (mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3, glm4_moe,
gpt_oss, dots1, granitemoe, granitemoeshared, ernie4_5_moe, hunyuan_v1_moe) this script

  * builds a tiny model from a fixed seed with informative weights
    (larger initializer_range, every 1-D parameter perturbed),
  * saves it with transformers' save_pretrained as float32 and as bfloat16
    (plus a sharded bf16 Mixtral and a fused-expert-layout Qwen3-MoE copy),
  * loads each checkpoint back from disk and records transformers' logits
    for a few prompts, an incremental KV-cache continuation and a greedy
    generation in golden.json.

Output: tests/fixtures/golden/<fixture>/ (see tools/golden/README.md).
Run through tools/golden/make.sh so that the pinned versions are used.
"""

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys

import numpy as np
import safetensors
import torch
import transformers
from safetensors import safe_open
from transformers import (
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    Dots1Config,
    Dots1ForCausalLM,
    Ernie4_5_MoeConfig,
    Ernie4_5_MoeForCausalLM,
    Glm4MoeConfig,
    Glm4MoeForCausalLM,
    GptOssConfig,
    GptOssForCausalLM,
    HunYuanMoEV1Config,
    HunYuanMoEV1ForCausalLM,
    GraniteMoeConfig,
    GraniteMoeForCausalLM,
    GraniteMoeSharedConfig,
    GraniteMoeSharedForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(REPO_ROOT, "tests", "fixtures", "golden")

PROMPT_LENGTHS = (7, 13, 3, 1)
CONT_PROMPT_LEN = 5
CONT_TOKENS = 6
GREEDY_PROMPT_LEN = 4
GREEDY_NEW_TOKENS = 32
MIN_GREEDY_GAP = 1e-3
MAX_RETRIES = 64
MIN_ROUTER_MARGIN = 1e-3  # smallest allowed k-th vs (k+1)-th router logit gap

INIT_RANGE = 0.2
NORM_WEIGHT_JITTER = 0.2  # norm weight = 1 + 0.2 * N(0, 1)
BIAS_STD = 0.1  # bias = 0.1 * N(0, 1)

# No bos/eos/pad anywhere: generate() must be a plain argmax loop (an eos id
# together with min_new_tokens would mask that logit) and every embedding row
# must be random (a pad_token_id would zero its row).
NO_SPECIAL = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)

COMMON = dict(
    hidden_size=64,
    max_position_embeddings=256,
    attention_dropout=0.0,
    initializer_range=INIT_RANGE,
    hidden_act="silu",
    use_cache=True,
    **NO_SPECIAL,
)


def mixtral_config():
    return MixtralConfig(
        **COMMON,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,  # != hidden_size / num_attention_heads (16)
        vocab_size=251,
        num_local_experts=8,
        num_experts_per_tok=2,
        tie_word_embeddings=False,
        sliding_window=None,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def qwen2_moe_config():
    return Qwen2MoeConfig(
        **COMMON,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=263,
        num_experts=6,
        num_experts_per_tok=3,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        intermediate_size=96,
        mlp_only_layers=[1],
        decoder_sparse_step=1,
        norm_topk_prob=True,
        tie_word_embeddings=True,
        use_sliding_window=False,
        qkv_bias=True,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )


def qwen3_moe_config():
    return Qwen3MoeConfig(
        **COMMON,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,  # != hidden_size / num_attention_heads (16)
        vocab_size=257,
        num_experts=16,
        num_experts_per_tok=4,
        # 24, not 32: keeps the fused gate_up_proj [E, 2I, H] = [16, 48, 64]
        # non-square, so a transposed read cannot pass a shape check.
        moe_intermediate_size=24,
        intermediate_size=80,
        decoder_sparse_step=2,
        mlp_only_layers=[],
        norm_topk_prob=True,
        tie_word_embeddings=False,
        use_sliding_window=False,
        attention_bias=False,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    )


def olmoe_config():
    return OlmoeConfig(
        **COMMON,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=269,
        num_experts=8,
        num_experts_per_tok=2,
        intermediate_size=32,
        norm_topk_prob=False,
        clip_qkv=None,
        tie_word_embeddings=False,
        attention_bias=False,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def deepseek_v2_config():
    # q_lora_rank null (q_proj directly); group_limited_greedy with 4 groups of 2, top-3 from
    # the 2 best groups; a dense first layer; 2 shared experts; routed_scaling_factor != 1;
    # kv_lora_rank, qk_nope, qk_rope and v head dims all different.
    return DeepseekV2Config(
        **COMMON,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=271,
        q_lora_rank=None,
        kv_lora_rank=40,
        qk_nope_head_dim=20,
        qk_rope_head_dim=8,
        v_head_dim=12,
        n_routed_experts=8,
        num_experts_per_tok=3,
        n_group=4,
        topk_group=2,
        topk_method="group_limited_greedy",
        norm_topk_prob=False,
        routed_scaling_factor=1.5,
        n_shared_experts=2,
        moe_intermediate_size=24,
        intermediate_size=72,
        first_k_dense_replace=1,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def deepseek_v3_config():
    # q_lora_rank set (q_a_proj, q_a_layernorm, q_b_proj); noaux_tc: sigmoid + a random
    # e_score_correction_bias, 4 groups of 4 ranked by their two best, top-3 from the 2 best
    # groups, renormalised, times 2.5; a dense first layer; 1 shared expert; interleaved rope.
    return DeepseekV3Config(
        **COMMON,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=277,
        q_lora_rank=24,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=20,
        n_routed_experts=16,
        num_experts_per_tok=3,
        n_group=4,
        topk_group=2,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        n_shared_experts=1,
        moe_intermediate_size=24,
        intermediate_size=56,
        first_k_dense_replace=1,
        rope_interleave=True,
        tie_word_embeddings=False,
        attention_bias=False,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def glm4_moe_config():
    # GLM-4.5's options, shrunk: partial rotary (half of head_dim 32), q/k norm, biases on
    # q/k/v, a dense first layer, 16 experts in 4 groups of which 2 are kept, a shared
    # expert, routed_scaling_factor; no MTP layer (transformers does not run it either).
    return Glm4MoeConfig(
        **COMMON,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # != hidden_size / num_attention_heads (16)
        partial_rotary_factor=0.5,
        vocab_size=271,
        n_routed_experts=16,
        num_experts_per_tok=4,
        moe_intermediate_size=24,
        intermediate_size=80,
        n_shared_experts=2,
        n_group=4,
        topk_group=2,
        first_k_dense_replace=1,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        use_qk_norm=True,
        attention_bias=True,
        tie_word_embeddings=False,
        num_mtp_layers=0,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )


def gpt_oss_config():
    # gpt-oss-20b's options, shrunk: attention sinks, layer_types mixing sliding (window 4,
    # shorter than the 7- and 13-token prompts and the 36-token greedy run) and full attention
    # in a pattern other than the default alternation, YaRN as published (beta 32/1, truncate
    # false) scaled to original_max_position_embeddings 16, biases on q/k/v/o, router and
    # experts, the clamped SwiGLU with a limit low enough (2.0) that the clamp is hit.
    return GptOssConfig(
        **dict(COMMON, max_position_embeddings=64),  # = factor x original: yarn's own ratio
        num_hidden_layers=4,
        layer_types=["sliding_attention", "full_attention", "full_attention", "sliding_attention"],
        sliding_window=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,  # != hidden_size / num_attention_heads (16)
        vocab_size=277,
        num_local_experts=8,
        num_experts_per_tok=2,
        intermediate_size=24,  # gate_up_proj [8, 64, 48]: not square
        swiglu_limit=2.0,
        swiglu_alpha=1.702,
        attention_bias=True,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                         "truncate": False, "original_max_position_embeddings": 16,
                         "rope_theta": 150000.0},
    )


def gpt_oss_mxfp4_config():
    # the same options with an expert width that is a whole number of MXFP4 blocks (32), as
    # the published 2880 = 90 x 32
    c = gpt_oss_config()
    c.intermediate_size = 32
    return c


def dots1_config():
    # dots.llm1's options, shrunk: glm4_moe's grouped sigmoid router (4 groups of 2, 2 kept)
    # without renormalisation, routed_scaling_factor, 2 shared experts, a dense first layer,
    # per-head q/k norm, biases on q/k/v and o (attention_bias), full rotary over head_dim 32,
    # and the MoE layer sliding (max_window_layers 1, window 4: shorter than the prompts).
    return Dots1Config(
        **COMMON,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # != hidden_size / num_attention_heads (16)
        vocab_size=281,
        n_routed_experts=8,
        num_experts_per_tok=3,
        moe_intermediate_size=24,
        intermediate_size=80,
        n_shared_experts=2,
        n_group=4,
        topk_group=2,
        first_k_dense_replace=1,
        norm_topk_prob=False,
        routed_scaling_factor=2.5,
        attention_bias=True,
        sliding_window=4,
        max_window_layers=1,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )


def granitemoe_config():
    # Granite 3.x MoE's options, shrunk: every multiplier away from 1 (embedding 12 as
    # published, attention_multiplier replacing head_dim^-0.5, residual 0.22, logits divided by
    # 6), top-k softmax over the k best logits, tied embeddings as published, GQA.
    return GraniteMoeConfig(
        **COMMON,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=283,
        num_local_experts=8,
        num_experts_per_tok=3,
        intermediate_size=24,  # input_linear [8, 48, 64]: not square
        embedding_multiplier=12.0,
        attention_multiplier=0.0625 * 1.5,
        residual_multiplier=0.22,
        logits_scaling=6.0,
        attention_bias=False,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def granitemoeshared_config():
    # granitemoe's options plus a shared MLP (shared_intermediate_size), untied embeddings
    return GraniteMoeSharedConfig(
        **COMMON,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        vocab_size=263,
        num_local_experts=8,
        num_experts_per_tok=2,
        intermediate_size=24,
        shared_intermediate_size=40,
        embedding_multiplier=12.0,
        attention_multiplier=0.015625 * 5,
        residual_multiplier=0.22,
        logits_scaling=8.0,
        attention_bias=False,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def ernie4_5_moe_config():
    # ERNIE-4.5-21B-A3B's options, shrunk: MoE layers from moe_layer_start_index 1 to
    # moe_layer_end_index 2 (layers 0 and 3 dense), softmax routing with the top-k chosen by
    # probability + e_score_correction_bias (random: zeros at init) and renormalised, a shared
    # expert, interleaved (adjacent-pair) rope, tied embeddings as published, GQA.
    return Ernie4_5_MoeConfig(
        **COMMON,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,  # != hidden_size / num_attention_heads (16)
        vocab_size=269,
        moe_num_experts=8,
        moe_k=3,
        moe_intermediate_size=24,
        intermediate_size=80,
        moe_num_shared_experts=1,
        moe_layer_start_index=1,
        moe_layer_end_index=2,
        moe_layer_interval=1,
        use_bias=False,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    )


def hunyuan_v1_moe_config():
    # Hunyuan-A13B's options, shrunk: per-head q/k norm applied after the rotary embedding,
    # its NTK-alpha rope (rope_type "dynamic" with a fixed alpha: the base stretched, not a
    # dynamic scaling), softmax top-3 of 8 renormalised, a shared MLP as wide as the experts
    # (intermediate_size both), tied embeddings, GQA.
    return HunYuanMoEV1Config(
        **COMMON,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,  # != hidden_size / num_attention_heads (16)
        vocab_size=271,
        num_experts=8,
        moe_topk=3,
        intermediate_size=24,
        attention_bias=False,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0, "rope_theta": 10000.0},
    )


SINK_STD = 2.0  # gpt_oss sinks = 2 * N(0, 1): comparable to the attention logits, so they matter


def with_rope(make_config, rope_parameters, **overrides):
    """A family's fixture config with another rope (the RoPE-scaling fixtures)."""

    def make():
        c = make_config()
        for k, v in overrides.items():
            setattr(c, k, v)
        c.rope_parameters = dict(rope_parameters, rope_theta=c.rope_parameters["rope_theta"])
        c.validate_rope()
        return c

    return make


# name -> (config factory, model class, seed, which layers must be sparse)
ARCHS = {
    "mixtral": (mixtral_config, MixtralForCausalLM, 1001, [0, 1]),
    "qwen2_moe": (qwen2_moe_config, Qwen2MoeForCausalLM, 1002, [0, 2]),
    "qwen3_moe": (qwen3_moe_config, Qwen3MoeForCausalLM, 1003, [1, 3]),
    "olmoe": (olmoe_config, OlmoeForCausalLM, 1004, [0, 1]),
    "deepseek_v2": (deepseek_v2_config, DeepseekV2ForCausalLM, 1005, [1, 2]),
    "deepseek_v3": (deepseek_v3_config, DeepseekV3ForCausalLM, 1006, [1, 2]),
    "glm4_moe": (glm4_moe_config, Glm4MoeForCausalLM, 1009, [1, 2]),
    "gpt_oss": (gpt_oss_config, GptOssForCausalLM, 1010, [0, 1, 2, 3]),
    "dots1": (dots1_config, Dots1ForCausalLM, 1012, [1]),
    "granitemoe": (granitemoe_config, GraniteMoeForCausalLM, 1013, [0, 1]),
    "granitemoeshared": (granitemoeshared_config, GraniteMoeSharedForCausalLM, 1014, [0, 1]),
    "ernie4_5_moe": (ernie4_5_moe_config, Ernie4_5_MoeForCausalLM, 1015, [1, 2]),
    "hunyuan_v1_moe": (hunyuan_v1_moe_config, HunYuanMoEV1ForCausalLM, 1016, [0, 1]),
    # experts in MXFP4 as published (gate_up_proj_blocks/_scales, down_proj_blocks/_scales),
    # the rest bf16; transformers dequantizes them at load on the CPU for the references
    "gpt_oss-mxfp4": (gpt_oss_mxfp4_config, GptOssForCausalLM, 1011, [0, 1, 2, 3]),
    # RoPE scalings, f32 only. Qwen3-30B-A3B's model card YaRN (factor 4 over
    # original_max_position_embeddings 32768), scaled down to 12 positions so that every
    # tested position sees it; expertd's context is then 4 x 12.
    "qwen3_moe-yarn": (
        with_rope(qwen3_moe_config, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 12},
                  max_position_embeddings=48),
        Qwen3MoeForCausalLM, 1005, [1, 3]),
    "mixtral-linear": (
        with_rope(mixtral_config, {"rope_type": "linear", "factor": 2.0}), MixtralForCausalLM, 1006, [0, 1]),
    "qwen2_moe-llama3": (
        with_rope(qwen2_moe_config, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        Qwen2MoeForCausalLM, 1007, [0, 2]),
    # dynamic NTK past max_position_embeddings (8): prompts of 13 tokens and 36-token greedy
    # runs; its prompt logits are computed one token per call (see DYNAMIC_INCREMENTAL)
    "olmoe-dynamic": (
        with_rope(olmoe_config, {"rope_type": "dynamic", "factor": 8.0}, max_position_embeddings=8),
        OlmoeForCausalLM, 1008, [0, 1]),
    # deepseek with yarn (mscale and mscale_all_dim: the rope's attention factor and the softmax
    # scale), DeepSeek-V2-Lite's values with original_max_position_embeddings 12; the v3 one
    # with rope_interleave false (rotate-half on the rotary part)
    "deepseek_v2-yarn": (
        with_rope(deepseek_v2_config, {"rope_type": "yarn", "factor": 40.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                       "mscale": 0.707, "mscale_all_dim": 0.707,
                                       "original_max_position_embeddings": 12},
                  max_position_embeddings=480),
        DeepseekV2ForCausalLM, 1009, [1, 2]),
    "deepseek_v3-yarn-halves": (
        with_rope(deepseek_v3_config, {"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                       "mscale": 1.0, "mscale_all_dim": 1.0,
                                       "original_max_position_embeddings": 12},
                  max_position_embeddings=48, rope_interleave=False),
        DeepseekV3ForCausalLM, 1010, [1, 2]),
}

# Fixtures whose prompt logits transformers computes one token per forward call (with the KV
# cache): dynamic NTK rescales by the longest position of each call, so a prompt longer than
# max_position_embeddings fed in one call gets other frequencies than fed token by token, as
# generate() feeds every decoded token. expertd rotates each token for its own position (pos + 1),
# which is the token-by-token reference (and the one-call reference for prompts that fit).
DYNAMIC_INCREMENTAL = {"olmoe-dynamic"}
FAMILY_CLASS = {"qwen3_moe-yarn": "qwen3_moe", "mixtral-linear": "mixtral", "qwen2_moe-llama3": "qwen2_moe",
                "olmoe-dynamic": "olmoe", "deepseek_v2-yarn": "deepseek_v2",
                "deepseek_v3-yarn-halves": "deepseek_v3"}

SHARD_SIZE = {"mixtral-bf16": "150KB"}
MXFP4 = {"gpt_oss-mxfp4"}  # saved as bf16, then the experts rewritten in MXFP4


# --------------------------------------------------------------------------
# MXFP4 (OCP microscaling FP4) as the published gpt-oss checkpoints store their experts: rows of
# blocks of 32 e2m1 values (two per byte, the even column in the low nibble) sharing one e8m0
# scale (2^(s - 127)); transformers' integrations/mxfp4.py dequantizes them with FP4_VALUES.

FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float32)


def mxfp4_quantize(w):
    """w (..., rows, cols) f32, cols % 32 == 0 -> blocks (..., rows, cols/32, 16) uint8 and scales
    (..., rows, cols/32) uint8. The OCP MX recipe: the shared exponent is floor(log2(amax)) - 2
    (e2m1's largest exponent), each value rounded to the nearest e2m1 (ties to the lower code),
    clamped to +-6."""
    *pre, rows, cols = w.shape
    b = w.reshape(*pre, rows, cols // 32, 32).astype(np.float32)
    amax = np.abs(b).max(-1, keepdims=True)
    e = np.where(amax > 0, np.floor(np.log2(np.maximum(amax, 1e-38))) - 2, -127).astype(np.int32)
    e = np.clip(e, -127, 127)
    q = b / np.ldexp(np.float32(1), e)
    mags = FP4_VALUES[:8]
    idx = np.abs(np.abs(q)[..., None] - mags).argmin(-1)  # nearest magnitude, lower on ties
    code = (idx + 8 * ((q < 0) & (idx > 0))).astype(np.uint8)
    blocks = (code[..., 0::2] | (code[..., 1::2] << 4)).astype(np.uint8)
    return blocks, (e[..., 0] + 127).astype(np.uint8)


def mxfp4_dequantize(blocks, scales):
    lo, hi = FP4_VALUES[blocks & 15], FP4_VALUES[blocks >> 4]
    v = np.stack([lo, hi], -1).reshape(*blocks.shape[:-1], 32)
    v = v * np.ldexp(np.float32(1), scales.astype(np.int32) - 127)[..., None]
    return v.reshape(*blocks.shape[:-2], -1).astype(np.float32)


def rewrite_experts_mxfp4(path):
    """Replaces each layer's experts.gate_up_proj (E, H, 2F) and down_proj (E, F, H) in
    path/model.safetensors by their MXFP4 _blocks and _scales in the published layout (rows =
    the output dim: gate_up_proj_blocks (E, 2F, H/32, 16), down_proj_blocks (E, H, F/32, 16))
    and adds quantization_config to config.json. Returns the dequantized experts by name."""
    import safetensors.torch
    f = os.path.join(path, "model.safetensors")
    with safe_open(f, "pt") as sf:
        tensors = {k: sf.get_tensor(k) for k in sf.keys()}
    out, deq = {}, {}
    for k, t in tensors.items():
        if k.endswith(("experts.gate_up_proj", "experts.down_proj")):
            w = t.to(torch.float32).numpy().swapaxes(-1, -2)  # (E, out, in)
            blocks, scales = mxfp4_quantize(np.ascontiguousarray(w))
            out[k + "_blocks"] = torch.from_numpy(blocks)
            out[k + "_scales"] = torch.from_numpy(scales)
            deq[k] = mxfp4_dequantize(blocks, scales).swapaxes(-1, -2)
        else:
            out[k] = t
    safetensors.torch.save_file(out, f, metadata={"format": "pt"})
    with open(os.path.join(path, "config.json")) as fh:
        cfg = json.load(fh)
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2, sort_keys=True)
        fh.write("\n")
    return deq


# --------------------------------------------------------------------------
# model construction


def build_model(arch):
    make_config, cls, seed, sparse_layers = ARCHS[arch]
    config = make_config()
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32).eval()

    # Verify the layer structure we rely on (dense vs sparse MLP, head_dim).
    for i, layer in enumerate(model.model.layers):
        mlp = getattr(layer, "mlp", None) or layer.block_sparse_moe  # granitemoe: block_sparse_moe
        is_sparse = hasattr(mlp, "gate") or hasattr(mlp, "router")
        if is_sparse != (i in sparse_layers):
            raise SystemExit(f"{arch}: layer {i} sparse={is_sparse}, expected {i in sparse_layers}")
    if not arch.startswith("deepseek"):  # MLA has no head_dim of its own
        want_hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        if model.model.layers[0].self_attn.head_dim != want_hd:
            raise SystemExit(f"{arch}: head_dim not honoured")

    # Make every 1-D parameter informative and make sure the routers are random.
    gen = torch.Generator().manual_seed(seed + 500)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                if "norm" in name and name.endswith(".weight"):
                    p.copy_(1.0 + NORM_WEIGHT_JITTER * torch.randn(p.shape, generator=gen))
                elif name.endswith(".bias"):
                    p.copy_(BIAS_STD * torch.randn(p.shape, generator=gen))
                elif name.endswith(".sinks"):
                    p.copy_(SINK_STD * torch.randn(p.shape, generator=gen))
                else:
                    raise SystemExit(f"{arch}: unexpected 1-D parameter {name}")
            elif name.endswith("e_score_correction_bias"):
                # ernie4_5_moe's (1, E) parameter, zeros at init
                p.copy_(BIAS_STD * torch.randn(p.shape, generator=gen))
            elif name.endswith("_proj_bias"):
                # gpt_oss's expert biases (E, 2F) and (E, H), zeros at init
                p.copy_(BIAS_STD * torch.randn(p.shape, generator=gen))
            elif p.abs().max() == 0:
                raise SystemExit(f"{arch}: parameter {name} is all zero after init")
            if name.endswith("gate.weight") and p.std() < 0.5 * INIT_RANGE:
                raise SystemExit(f"{arch}: router {name} not randomly initialised")
        # glm4_moe's and deepseek_v3's e_score_correction_bias is a buffer (zero after init): make it matter
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(BIAS_STD * torch.randn(b.shape, generator=gen))
    return model, seed


# --------------------------------------------------------------------------
# references


def load(path, dtype):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation="eager", experts_implementation="eager"
    )
    # Give every tensor a fresh, aligned allocation: weights that still alias
    # the mmapped file can take different SIMD paths depending on their file
    # offset, which changes results in the last bits.
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.data = t.data.clone()
    return model.eval()


def f32rows(t):
    return t.detach().to(torch.float32).cpu().numpy()


@torch.no_grad()
def prompt_logits(model, prompts):
    out = []
    for p in prompts:
        logits = model(input_ids=torch.tensor([p]), use_cache=False).logits[0]
        out.append(f32rows(logits))
    return out


@torch.no_grad()
def prompt_logits_incremental(model, prompts):
    out = []
    for p in prompts:
        pkv = None
        rows = []
        for t in p:
            o = model(input_ids=torch.tensor([[t]]), past_key_values=pkv, use_cache=True)
            pkv = o.past_key_values
            rows.append(f32rows(o.logits[0, -1]))
        out.append(np.stack(rows))
    return out


@torch.no_grad()
def continuation(model, prompt, tokens):
    out = model(input_ids=torch.tensor([prompt]), use_cache=True)
    pkv = out.past_key_values
    rows = []
    for t in tokens:
        out = model(input_ids=torch.tensor([[t]]), past_key_values=pkv, use_cache=True)
        pkv = out.past_key_values
        rows.append(f32rows(out.logits[0, -1]))
    return np.stack(rows)


@torch.no_grad()
def greedy(model, prompt):
    ids = torch.tensor([prompt])
    res = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        num_beams=1,
        max_new_tokens=GREEDY_NEW_TOKENS,
        min_new_tokens=GREEDY_NEW_TOKENS,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
        eos_token_id=None,
        bos_token_id=None,
    )
    tokens = res.sequences[0, len(prompt):].tolist()
    logits = torch.stack([l[0] for l in res.logits]).to(torch.float32)
    assert len(tokens) == GREEDY_NEW_TOKENS and logits.shape[0] == GREEDY_NEW_TOKENS
    # generate() must have been a plain argmax over the raw logits
    assert tokens == logits.argmax(-1).tolist(), "generate() was not plain greedy"
    top2 = logits.topk(2, dim=-1).values
    gap = float((top2[:, 0] - top2[:, 1]).min())
    return tokens, gap


class RouterMonitor:
    """Track the smallest gap between the k-th and (k+1)-th router logit.

    A near-tie there means a tiny numerical difference can flip the expert
    choice, which would make a correct implementation miss the reference.
    """

    def __init__(self, model):
        self.k = model.config.num_experts_per_tok
        self.min_margin = math.inf
        self.handles = [
            m.register_forward_hook(self.hook)
            for m in model.modules()
            if (type(m).__name__.lower().endswith("topkrouter") or type(m).__name__ == "HunYuanMoEV1Gate")
            and not type(m).__name__.startswith("Deepseek")
        ] + [
            m.register_forward_hook(self.deepseek_hook)
            for m in model.modules()
            if type(m).__name__.startswith("Deepseek") and type(m).__name__.endswith("TopkRouter")
        ]
        assert self.handles, "no router modules found"

    def hook(self, module, args, output):
        logits = output[0].detach().to(torch.float32)
        if hasattr(module, "moe_statics"):
            # ernie4_5_moe: the top-k of softmax + e_score_correction_bias
            logits = logits.softmax(dim=-1) + module.moe_statics.e_score_correction_bias.to(torch.float32)
        elif hasattr(module, "e_score_correction_bias"):
            self.min_margin = min(self.min_margin, self.grouped_margin(module, logits))
            return
        top = logits.topk(self.k + 1, dim=-1).values
        margin = float((top[:, self.k - 1] - top[:, self.k]).min())
        self.min_margin = min(self.min_margin, margin)

    def deepseek_hook(self, module, args, output):
        """deepseek: the margins of the two choices, groups then experts, in score space."""
        logits = output[0].detach().to(torch.float32)
        v3 = hasattr(module, "e_score_correction_bias")
        grouped = v3 or module.topk_method == "group_limited_greedy"
        if v3:
            scores = logits.sigmoid() + module.e_score_correction_bias.to(torch.float32)
        else:
            scores = logits.softmax(dim=-1)
        n = scores.shape[-1]
        if grouped:
            g, tg = module.num_group, module.topk_group
            per = scores.view(-1, g, n // g)
            gs = per.topk(2, dim=-1)[0].sum(-1) if v3 else per.max(-1).values
            if tg < g:
                top = gs.topk(tg + 1, dim=-1).values
                self.min_margin = min(self.min_margin, float((top[:, tg - 1] - top[:, tg]).min()))
            idx = gs.topk(tg, dim=-1)[1]
            mask = torch.zeros_like(gs).scatter_(1, idx, 1).bool()
            mask = mask.unsqueeze(-1).expand(-1, g, n // g).reshape(-1, n)
            scores = scores.masked_fill(~mask, float("-inf"))
        top = scores.topk(self.k + 1, dim=-1).values
        gap = top[:, self.k - 1] - top[:, self.k]
        gap = torch.where(torch.isinf(top[:, self.k]), torch.full_like(gap, math.inf), gap)
        self.min_margin = min(self.min_margin, float(gap.min()))

    def grouped_margin(self, module, logits):
        """Sigmoid + bias, group-limited: the smaller of the group choice's and the expert
        choice's k-th vs (k+1)-th gaps."""
        choice = logits.sigmoid() + module.e_score_correction_bias.to(torch.float32)
        g, per = module.num_group, module.num_experts // module.num_group
        gs = choice.view(-1, g, per).topk(2, dim=-1)[0].sum(-1)
        margin = math.inf
        if module.topk_group < g:
            top = gs.topk(module.topk_group + 1, dim=-1).values
            margin = float((top[:, -2] - top[:, -1]).min())
        keep = torch.zeros_like(gs).scatter_(1, gs.topk(module.topk_group, dim=-1)[1], 1)
        mask = keep.unsqueeze(-1).expand(-1, g, per).reshape(-1, module.num_experts).bool()
        top = choice.masked_fill(~mask, float("-inf")).topk(self.k + 1, dim=-1).values
        return min(margin, float((top[:, self.k - 1] - top[:, self.k]).min()))

    def reset(self):
        self.min_margin = math.inf

    def close(self):
        for h in self.handles:
            h.remove()


def rand_ids(gen, n, vocab):
    return torch.randint(0, vocab, (n,), generator=gen).tolist()


# --------------------------------------------------------------------------
# JSON output (f32 values written with the shortest decimal that round-trips)


class F32Rows:
    """Marker for a numpy float32 array to be written as nested JSON lists."""

    def __init__(self, arr):
        arr = np.asarray(arr, dtype=np.float32)
        if not np.all(np.isfinite(arr)):
            raise SystemExit("non-finite value in reference output")
        self.arr = arr


def f32_str(x):
    s = np.format_float_positional(x, unique=True, trim="-")
    if np.float32(float(s)) != x:  # guard the strtod-then-cast route too
        s = repr(float(x))
    return s


def to_json(obj, indent=0):
    pad = " " * indent
    if isinstance(obj, F32Rows):
        a = obj.arr
        if a.ndim == 1:
            return "[" + ",".join(f32_str(v) for v in a) + "]"
        inner = [" " * (indent + 1) + to_json(F32Rows(r), indent + 1) for r in a]
        return "[\n" + ",\n".join(inner) + "\n" + pad + "]"
    if isinstance(obj, dict):
        items = [
            " " * (indent + 1) + json.dumps(k) + ": " + to_json(v, indent + 1) for k, v in obj.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, (list, dict, F32Rows)) for v in obj):
        inner = [" " * (indent + 1) + to_json(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(inner) + "\n" + pad + "]"
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise SystemExit("non-finite float")
        return f32_str(np.float32(obj))
    return json.dumps(obj, separators=(",", ":"))


def refs_json(pl, cont_prompt, cont_tokens, cl, greedy_prompt, gt, gap, extra=None):
    g = {"prompt": greedy_prompt, "tokens": gt, "min_top2_gap": gap}
    if extra:
        g.update(extra)
    return {
        "prompt_logits": [F32Rows(x) for x in pl],
        "continuation": {"prompt": cont_prompt, "tokens": cont_tokens, "logits": F32Rows(cl)},
        "greedy": g,
    }


# --------------------------------------------------------------------------
# checkpoint inspection


def tensor_listing(path):
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    out = []
    for f in files:
        with safe_open(os.path.join(path, f), "pt") as sf:
            for k in sf.keys():
                sl = sf.get_slice(k)
                out.append((f, k, tuple(sl.get_shape()), sl.get_dtype()))
    return out


def summarise_keys(listing):
    """Collapse per-layer / per-expert indices into patterns."""
    import re

    seen = {}
    for f, k, shape, dt in listing:
        pat = re.sub(r"\.layers\.\d+\.", ".layers.{L}.", k)
        pat = re.sub(r"\.experts\.\d+\.", ".experts.{E}.", pat)
        m = re.search(r"\.layers\.(\d+)\.", k)
        key = (pat, shape, dt)
        seen.setdefault(key, set())
        if m:
            seen[key].add(int(m.group(1)))
    lines = []
    for (pat, shape, dt), layers in sorted(seen.items()):
        ls = f"  layers {sorted(layers)}" if layers else ""
        lines.append(f"    {pat:60s} {str(list(shape)):16s} {dt}{ls}")
    return lines


def dir_size(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


# --------------------------------------------------------------------------


def versions():
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


def check_roundtrip(model, path, dtype):
    loaded = load(path, dtype)
    ref = {k: v.to(dtype) for k, v in model.state_dict().items()}
    got = loaded.state_dict()
    assert set(ref) == set(got), (set(ref) ^ set(got))
    for k in ref:
        # glm4_moe and deepseek_v3 keep e_score_correction_bias in f32 whatever the checkpoint's dtype
        if not torch.equal(ref[k].to(got[k].dtype), got[k]):
            raise SystemExit(f"{path}: {k} differs after save/load")


def save(model, path, dtype, **kw):
    if os.path.exists(path):
        shutil.rmtree(path)
    m = copy.deepcopy(model).to(dtype)
    m.save_pretrained(path, **kw)
    del m
    check_roundtrip(model, path, dtype)


@torch.no_grad()
def cross_checks(path, dtype, prompts, pl_ref, cont_prompt, cont_tokens, cl_ref):
    """Report how far other code paths are from the reference (informational)."""
    res = {}
    # full-sequence forward vs. the incremental KV-cache continuation
    m = load(path, dtype)
    full = m(input_ids=torch.tensor([cont_prompt + cont_tokens]), use_cache=False).logits[0]
    res["kvcache_vs_full"] = float(np.abs(f32rows(full[CONT_PROMPT_LEN:]) - cl_ref).max())
    # sdpa attention, and the default (grouped_mm) experts implementation
    for label, kw in (
        ("sdpa_vs_eager", dict(attn_implementation="sdpa", experts_implementation="eager")),
        ("default_experts_vs_eager", dict(attn_implementation="eager")),
    ):
        try:
            m = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw).eval()
        except ValueError as e:  # gpt_oss has no sdpa attention (its sinks)
            res[label] = f"not available: {str(e)[:80]}"
            continue
        pl = prompt_logits(m, prompts)
        res[label] = max(float(np.abs(a - b).max()) for a, b in zip(pl, pl_ref))
    if hasattr(m.model.layers[0].self_attn, "sinks"):
        # the same model with every sink at -inf (no sink): how much the sinks move the logits
        with torch.no_grad():
            for layer in m.model.layers:
                layer.self_attn.sinks.fill_(-float("inf"))
        pl = prompt_logits(m, prompts)
        res["no_sinks_vs_sinks"] = max(float(np.abs(a - b).max()) for a, b in zip(pl, pl_ref))
    return res


def make_fixture(out_dir, arch, model, seed, dtype_name, fused=False, report=None):
    name = f"{arch}-{dtype_name}" + ("-fused" if fused else "")
    path = os.path.join(out_dir, name)
    ckpt_dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype_name]
    kw = {}
    if name in SHARD_SIZE:
        kw["max_shard_size"] = SHARD_SIZE[name]
    if fused:
        kw["save_original_format"] = False
    if arch in MXFP4:
        save(model, path, ckpt_dtype, **kw)
        deq = rewrite_experts_mxfp4(path)
        # transformers' own dequantization (on the CPU it dequantizes at load) must give the
        # values the MXFP4 layout above means
        got = load(path, torch.float32).state_dict()
        for k, v in deq.items():
            if not np.array_equal(got[k].numpy(), v):
                raise SystemExit(f"{path}: transformers dequantizes {k} differently")
    else:
        save(model, path, ckpt_dtype, **kw)

    vocab = model.config.vocab_size
    m32 = load(path, torch.float32)
    mon = RouterMonitor(m32)

    # Reference 1: weights as on disk, float32 compute.  Inputs are drawn from
    # `seed` (so all fixtures of one arch normally share them); a draw whose
    # top-k routing has a near-tie is replaced by the next one.
    for attempt in range(MAX_RETRIES + 1):
        input_seed = seed + 100000 * attempt
        gen = torch.Generator().manual_seed(input_seed)
        prompts = [rand_ids(gen, n, vocab) for n in PROMPT_LENGTHS]
        cont_prompt = rand_ids(gen, CONT_PROMPT_LEN, vocab)
        cont_tokens = rand_ids(gen, CONT_TOKENS, vocab)
        mon.reset()
        pl = (prompt_logits_incremental if arch in DYNAMIC_INCREMENTAL else prompt_logits)(m32, prompts)
        cl = continuation(m32, cont_prompt, cont_tokens)
        margin = mon.min_margin
        if margin >= MIN_ROUTER_MARGIN:
            break
        print(f"  {name}: inputs from seed {input_seed}: router margin {margin:.3g}, retrying")
    else:
        raise SystemExit(f"{name}: no inputs with a safe router margin")

    for retries in range(MAX_RETRIES + 1):
        greedy_seed = seed * 1000 + retries
        greedy_prompt = rand_ids(torch.Generator().manual_seed(greedy_seed), GREEDY_PROMPT_LEN, vocab)
        mon.reset()
        gt, gap = greedy(m32, greedy_prompt)
        gmargin = mon.min_margin
        if gap >= MIN_GREEDY_GAP and gmargin >= MIN_ROUTER_MARGIN:
            break
        print(f"  {name}: greedy prompt {greedy_prompt}: top2 gap {gap:.3g}, router margin {gmargin:.3g}, retrying")
    else:
        raise SystemExit(f"{name}: no greedy prompt with a safe margin")
    mon.close()

    golden = {
        "fixture": name,
        "model_type": model.config.model_type,
        "checkpoint_dtype": {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[dtype_name],
        "versions": versions(),
        "seed": seed,
        "input_seed": input_seed,
        "min_router_logit_margin": margin,
        "prompts": prompts,
    }
    greedy_extra = {"prompt_seed": greedy_seed, "prompt_retries": retries, "min_router_logit_margin": gmargin}
    golden.update(refs_json(pl, cont_prompt, cont_tokens, cl, greedy_prompt, gt, gap, greedy_extra))
    golden["reference_compute_dtype"] = "float32"

    info = {
        "name": name,
        "max_abs_logit": max(float(np.abs(x).max()) for x in pl + [cl]),
        "input_seed": input_seed,
        "router_margin": margin,
        "greedy_gap": gap,
        "greedy_router_margin": gmargin,
        "greedy_retries": retries,
    }
    if arch not in DYNAMIC_INCREMENTAL:
        info.update(cross_checks(path, torch.float32, prompts, pl, cont_prompt, cont_tokens, cl))

    # Reference 2 (bf16 checkpoints): native bfloat16 compute, same inputs.
    if dtype_name == "bf16":
        mbf = load(path, torch.bfloat16)
        pl_b = prompt_logits(mbf, prompts)
        cl_b = continuation(mbf, cont_prompt, cont_tokens)
        gt_b, gap_b = greedy(mbf, greedy_prompt)
        golden["native_bf16"] = refs_json(pl_b, cont_prompt, cont_tokens, cl_b, greedy_prompt, gt_b, gap_b)
        info["native_bf16_vs_f32_max_abs_diff"] = max(
            float(np.abs(a - b).max()) for a, b in zip(pl_b + [cl_b], pl + [cl])
        )
        info["native_bf16_greedy_tokens_matching_f32"] = sum(a == b for a, b in zip(gt_b, gt))
        info["native_bf16_greedy_gap"] = gap_b

    with open(os.path.join(path, "golden.json"), "w") as f:
        f.write(to_json(golden) + "\n")

    info["files"] = {f: os.path.getsize(os.path.join(path, f)) for f in sorted(os.listdir(path))}
    info["total_bytes"] = dir_size(path)
    info["tensors"] = summarise_keys(tensor_listing(path))
    if report is not None:
        report.append(info)
    return pl, cl, gt


def print_report(report):
    for info in report:
        print(f"== {info['name']}  ({info['total_bytes']} bytes)")
        for f, s in info["files"].items():
            print(f"    {f:40s} {s:9d}")
        for line in info["tensors"]:
            print(line)
        for k, v in info.items():
            if k not in ("name", "files", "tensors", "total_bytes"):
                print(f"  {k}: {v}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    ap.add_argument("--only", nargs="*", choices=sorted(ARCHS), help="only these architectures")
    args = ap.parse_args()

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)  # keep float reductions in a fixed order
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    print("versions:", json.dumps(versions()))

    report = []
    for arch in args.only or list(ARCHS):
        print(f"building {arch}")
        model, seed = build_model(arch)
        pl32, cl32, gt32 = make_fixture(args.out, arch, model, seed,
                                        "bf16" if arch in MXFP4 else "f32", report=report)
        if arch in FAMILY_CLASS:
            continue  # the rope fixtures: f32 only
        if arch in MXFP4:
            continue  # experts MXFP4, the rest bf16: one fixture
        make_fixture(args.out, arch, model, seed, "bf16", report=report)
        if arch == "olmoe":
            # float16 weights, computed in f32 like the others: the loader's third dtype
            make_fixture(args.out, arch, model, seed, "f16", report=report)
        if arch in ("qwen3_moe", "deepseek_v3"):
            plf, clf, gtf = make_fixture(args.out, arch, model, seed, "f32", fused=True, report=report)
            diff = max(float(np.abs(a - b).max()) for a, b in zip(pl32 + [cl32], plf + [clf]))
            if diff != 0.0 or gt32 != gtf:
                raise SystemExit(f"{arch} fused checkpoint gives different references ({diff}, {gt32} vs {gtf})")

    print_report(report)
    total = sum(i["total_bytes"] for i in report)
    print(f"total fixture bytes: {total}")


if __name__ == "__main__":
    sys.exit(main())
