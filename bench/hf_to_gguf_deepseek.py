#!/usr/bin/env python3
"""Converts a DeepSeek-V2 Hugging Face checkpoint (what expertd serves) to GGUF for llama.cpp.

Written for expertd's synthetic deepseek_v2 checkpoints (tools/xd-synth-model --arch
deepseek_v2), in the style of hf_to_gguf_olmoe.py and sharing its checkpoint reader, tensor
conversion, streamed writing and vocabulary: needs only llama.cpp's gguf-py and numpy, no torch.
It writes what llama.cpp's `deepseek2` architecture loads (src/models/deepseek2.cpp):

- MLA as llama.cpp runs it, absorbed: head_count_kv 1, key_length kv_lora_rank + qk_rope_head_dim
  (the cached row), value_length kv_lora_rank, key_length_mla / value_length_mla the per-head
  qk_nope + qk_rope and v_head_dim; kv_b_proj split per head into attn_k_b (n_head, kv_lora,
  qk_nope in numpy order: W_kb transposed) and attn_v_b (n_head, v_head_dim, kv_lora);
- q_proj as attn_q (q_lora_rank null) or attn_q_a / attn_q_a_norm / attn_q_b; attn_kv_a_mqa,
  attn_kv_a_norm, attn_output; dense leading layers as ffn_{gate,up,down}; MoE layers as
  ffn_gate_inp (F32), ffn_{gate,up,down}_exps (experts stacked) and ffn_{gate,up,down}_shexp;
- no Q/K permutation: transformers' DeepSeek-V2 rotates interleaved pairs, as llama.cpp's
  deepseek2 (rope type NORM) does.

One difference from llama.cpp's own converter: q_lora_rank is written as 0 when the config has
it null. llama.cpp's loader reads that key unless the model has 26 or 27 layers (its test for
DeepSeek-V2-Lite), so a scaled-down Lite shape without the key fails to load; 0 selects the
attn_q path all the same.

Refused rather than converted into something else: rope_scaling (yarn's mscale and attention
factor are not mapped here), scoring_func other than softmax, topk_method other than greedy,
attention or MLP biases, tied embeddings.

Usage: hf_to_gguf_deepseek.py MODEL_DIR OUT.gguf [--outtype bf16|f32|f16] [--pre NAME]
(MODEL_DIR needs a tokenizer.json; bench/run-llama-cpp-bench.sh copies the OLMoE fixture's into
a synthetic checkpoint, its ids padded to the vocabulary.)
"""
import argparse
import json
import os
import sys

import numpy as np
import gguf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_to_gguf_olmoe import Checkpoint, StreamedTensors, add_bpe_vocab, stack_experts  # noqa: E402

PROG = "hf_to_gguf_deepseek"


def refuse(msg):
    raise SystemExit(f"{PROG}: {msg}")


def check_config(cfg):
    if cfg.get("model_type") != "deepseek_v2":
        refuse(f"model_type is {cfg.get('model_type')!r}, not 'deepseek_v2'")
    if cfg.get("rope_scaling") or cfg.get("rope_parameters", {}).get("rope_type", "default") != "default":
        refuse("rope_scaling is set; this converter maps only the default RoPE")
    if cfg.get("scoring_func", "softmax") != "softmax":
        refuse(f"scoring_func is {cfg.get('scoring_func')!r}; only softmax (DeepSeek-V2)")
    if cfg.get("topk_method", "greedy") != "greedy":
        refuse(f"topk_method is {cfg.get('topk_method')!r}; only greedy")
    for key in ("attention_bias", "mlp_bias", "tie_word_embeddings"):
        if cfg.get(key):
            refuse(f"{key} is true; not in this converter")
    if cfg.get("rope_interleave") is False:
        refuse("rope_interleave is false; llama.cpp's deepseek2 rotates interleaved pairs")


def kv_b_parts(ck, name, n_head, nope, v_dim):
    """kv_b_proj (n_head * (nope + v), kv_lora) split per head: (k_b^T, v_b).

    k_b^T: (n_head, kv_lora, nope), v_b: (n_head, v, kv_lora), numpy order, contiguous copies.
    """
    a, dt = ck.get(name)
    kv_lora = a.shape[1]
    if a.shape[0] != n_head * (nope + v_dim):
        refuse(f"tensor {name} has {a.shape[0]} rows, expected num_attention_heads x "
               f"(qk_nope_head_dim + v_head_dim) = {n_head * (nope + v_dim)}")
    kv = a.reshape(n_head, nope + v_dim, kv_lora)
    return (np.ascontiguousarray(kv[:, :nope, :].transpose(0, 2, 1)), dt), \
        (np.ascontiguousarray(kv[:, nope:, :]), dt)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--outtype", choices=("bf16", "f32", "f16"), default="bf16")
    ap.add_argument("--pre", help="llama.cpp pre-tokenizer name (default: detected)")
    args = ap.parse_args()

    cfg = json.load(open(os.path.join(args.model, "config.json")))
    check_config(cfg)
    n_layer = cfg["num_hidden_layers"]
    n_head = cfg["num_attention_heads"]
    hidden = cfg["hidden_size"]
    n_exp = cfg["n_routed_experts"]
    n_shared = cfg.get("n_shared_experts") or 0
    n_dense = cfg.get("first_k_dense_replace", 0)
    q_lora = cfg.get("q_lora_rank")
    kv_lora = cfg["kv_lora_rank"]
    nope, rope, v_dim = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    if cfg.get("moe_layer_freq", 1) != 1:
        refuse("moe_layer_freq is not 1; llama.cpp's deepseek2 has MoE in every layer after "
               "first_k_dense_replace")
    if n_shared == 0:
        refuse("n_shared_experts is 0; llama.cpp's deepseek2 requires the shared expert tensors")

    ck = Checkpoint(args.model)
    w = gguf.GGUFWriter(args.out, "deepseek2")
    w.add_name(os.path.basename(os.path.normpath(args.model)))
    w.add_block_count(n_layer)
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(cfg["intermediate_size"])  # the dense layers' width
    w.add_head_count(n_head)
    w.add_head_count_kv(1)  # absorbed MLA: one cached row per token, shared by every head
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    w.add_expert_count(n_exp)
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_leading_dense_block_count(n_dense)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_q_lora_rank(int(q_lora or 0))
    w.add_kv_lora_rank(kv_lora)
    w.add_key_length(kv_lora + rope)
    w.add_value_length(kv_lora)
    w.add_key_length_mla(nope + rope)
    w.add_value_length_mla(v_dim)
    w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    w.add_expert_shared_count(n_shared)
    w.add_expert_weights_scale(float(cfg.get("routed_scaling_factor", 1.0)))
    if cfg.get("norm_topk_prob"):
        w.add_expert_weights_norm(True)
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SOFTMAX)
    w.add_rope_dimension_count(rope)
    w.add_file_type({"bf16": gguf.LlamaFileType.MOSTLY_BF16, "f32": gguf.LlamaFileType.ALL_F32,
                     "f16": gguf.LlamaFileType.MOSTLY_F16}[args.outtype])
    add_bpe_vocab(w, args.model, cfg["vocab_size"], cfg, args.pre, PROG)

    ts = StreamedTensors(args.outtype)

    def add(name, src, force_f32=False):
        if src not in ck.names():
            refuse(f"tensor {src} is missing from the checkpoint")
        ts.add(name, ck.shape(src), lambda: ck.get(src), force_f32)

    add("token_embd.weight", "model.embed_tokens.weight")
    add("output_norm.weight", "model.norm.weight")
    add("output.weight", "lm_head.weight")
    for i in range(n_layer):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        add(b + "attn_norm.weight", p + "input_layernorm.weight")
        if q_lora:
            add(b + "attn_q_a.weight", p + "self_attn.q_a_proj.weight")
            add(b + "attn_q_a_norm.weight", p + "self_attn.q_a_layernorm.weight")
            add(b + "attn_q_b.weight", p + "self_attn.q_b_proj.weight")
        else:
            add(b + "attn_q.weight", p + "self_attn.q_proj.weight")
        add(b + "attn_kv_a_mqa.weight", p + "self_attn.kv_a_proj_with_mqa.weight")
        add(b + "attn_kv_a_norm.weight", p + "self_attn.kv_a_layernorm.weight")
        kvb = p + "self_attn.kv_b_proj.weight"
        if ck.shape(kvb) != (n_head * (nope + v_dim), kv_lora):
            refuse(f"tensor {kvb} has shape {ck.shape(kvb)}, expected "
                   f"{(n_head * (nope + v_dim), kv_lora)}")
        ts.add(b + "attn_k_b.weight", (n_head, kv_lora, nope),
               lambda kvb=kvb: kv_b_parts(ck, kvb, n_head, nope, v_dim)[0])
        ts.add(b + "attn_v_b.weight", (n_head, v_dim, kv_lora),
               lambda kvb=kvb: kv_b_parts(ck, kvb, n_head, nope, v_dim)[1])
        add(b + "attn_output.weight", p + "self_attn.o_proj.weight")
        add(b + "ffn_norm.weight", p + "post_attention_layernorm.weight")
        if i < n_dense:
            for short in ("gate", "up", "down"):
                add(b + f"ffn_{short}.weight", p + f"mlp.{short}_proj.weight")
            continue
        add(b + "ffn_gate_inp.weight", p + "mlp.gate.weight", force_f32=True)
        for short in ("gate", "up", "down"):
            names = [f"{p}mlp.experts.{e}.{short}_proj.weight" for e in range(n_exp)]
            for n in names:
                if n not in ck.names():
                    refuse(f"tensor {n} is missing from the checkpoint (per-expert layout expected)")
            ts.add(b + f"ffn_{short}_exps.weight", (n_exp,) + ck.shape(names[0]),
                   lambda names=names: stack_experts(ck, names))
            add(b + f"ffn_{short}_shexp.weight", p + f"mlp.shared_experts.{short}_proj.weight")
    ts.write(w, args.out)
    print(f"{PROG}: wrote {args.out} ({args.outtype}, {os.path.getsize(args.out)} bytes)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
