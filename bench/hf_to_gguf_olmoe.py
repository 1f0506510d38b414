#!/usr/bin/env python3
"""Converts an OLMoE Hugging Face checkpoint (what expertd serves) to GGUF for llama.cpp.

Why not llama.cpp's convert_hf_to_gguf.py: it imports torch (and transformers for the
tokenizer), which this machine does not have and which is gigabytes from PyPI. This script
needs only the `gguf` package (llama.cpp's own gguf-py, from PyPI) and numpy, and writes what
convert_hf_to_gguf.py's OlmoeModel writes: the same keys, tensor names and layouts (experts
stacked per layer as ffn_{gate,up,down}_exps; no Q/K permutation since llama.cpp runs OLMoE
with NeoX RoPE, as transformers does), the vocabulary as a "gpt2" BPE vocabulary with merges.

Precision: --outtype bf16 copies BF16 weights bit for bit (same bytes as expertd reads), f32
widens them exactly, f16 rounds. 1-D tensors (norms) and the router stay F32 as
convert_hf_to_gguf.py keeps them; widening BF16 to F32 is exact, so nothing is lost.

llama.cpp's OLMoE graph has limits that transformers' does not: q_norm and k_norm over the full
width (so num_key_value_heads must equal num_attention_heads), top-k weights not renormalised
(norm_topk_prob must be false): this script refuses a checkpoint outside them rather than write
a GGUF that computes something else.

Memory: tensors are written one at a time (StreamedTensors), so at most one layer's stacked
experts are in memory, not the whole model.

Usage: hf_to_gguf_olmoe.py MODEL_DIR OUT.gguf [--outtype bf16|f32|f16] [--pre NAME]
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import gguf

# The pre-tokenizer regexes llama.cpp knows under a name (its vocab "pre" key).
GPT2_REGEX_NAME = "gpt-2"
QWEN2_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
               "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


class Checkpoint:
    """Safetensors files of a directory, read with numpy (BF16 as uint16)."""

    def __init__(self, d):
        idx = os.path.join(d, "model.safetensors.index.json")
        files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) \
            else ["model.safetensors"]
        self.where = {}
        for fn in files:
            path = os.path.join(d, fn)
            with open(path, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(n))
            mm = np.memmap(path, dtype=np.uint8, mode="r")
            for name, info in header.items():
                if name != "__metadata__":
                    self.where[name] = (mm, 8 + n, info)

    def names(self):
        return self.where.keys()

    def shape(self, name):
        return tuple(self.where[name][2]["shape"])

    def get(self, name):
        """(array, dtype string); BF16 comes back as uint16 bits."""
        mm, base, info = self.where[name]
        a, b = info["data_offsets"]
        raw = mm[base + a: base + b]
        dt = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}[info["dtype"]]
        return raw.view(dt).reshape(info["shape"]), info["dtype"]


def to_f32(arr, dtype):
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32)


def convert_tensor(arr, dtype, outtype, force_f32):
    """Returns (array, raw_dtype or None) for GGUFWriter.add_tensor."""
    if force_f32 or outtype == "f32":
        return np.ascontiguousarray(to_f32(arr, dtype)), None
    if outtype == "bf16":
        if dtype == "BF16":
            return np.ascontiguousarray(arr), gguf.GGMLQuantizationType.BF16
        bits = to_f32(arr, dtype).view(np.uint32)
        # round to nearest even, as torch and gguf.quants do
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        return np.ascontiguousarray(bits), gguf.GGMLQuantizationType.BF16
    return np.ascontiguousarray(to_f32(arr, dtype).astype(np.float16)), None


class StreamedTensors:
    """The tensors of a GGUF, written one at a time.

    GGUFWriter.add_tensor keeps every array until write_tensors_to_file, so a model's stacked
    experts (a copy of every expert) would all sit in memory at once. Here each tensor is added
    as its shape and type with a function that makes it; write() lays out the header, then
    makes, writes and drops the tensors in order: at most one tensor is in memory.
    """

    def __init__(self, outtype):
        self.outtype = outtype
        self.items = []  # (name, make) in file order

    def add(self, name, shape, make, force_f32=False):
        """make() returns (array, source dtype string) of that shape; 1-D tensors stay F32."""
        force = force_f32 or len(shape) == 1
        if force or self.outtype == "f32":
            np_dtype, raw = np.float32, None
        elif self.outtype == "bf16":
            np_dtype, raw = np.uint16, gguf.GGMLQuantizationType.BF16
        else:
            np_dtype, raw = np.float16, None
        nbytes = int(np.prod(shape)) * np.dtype(np_dtype).itemsize
        self.items.append((name, tuple(shape), np_dtype, nbytes, raw, make, force))

    def write(self, w, path):
        for name, shape, np_dtype, nbytes, raw, _, _ in self.items:
            w.add_tensor_info(name, shape, np.dtype(np_dtype), nbytes, raw_dtype=raw)
        w.write_header_to_file(path)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for name, shape, _, nbytes, _, make, force in self.items:
            arr, dt = make()
            a, _ = convert_tensor(arr, dt, self.outtype, force)
            if a.shape != shape or a.nbytes != nbytes:
                raise SystemExit(f"{os.path.basename(sys.argv[0])}: tensor {name} came out "
                                 f"{a.shape}, expected {shape}")
            w.write_tensor_data(a)
        w.close()


def stack_experts(ck, names):
    """One (n_experts, rows, cols) array from per-expert 2-D tensors, filled expert by expert."""
    first, dt = ck.get(names[0])
    out = np.empty((len(names),) + first.shape, dtype=first.dtype)
    for e, n in enumerate(names):
        out[e] = ck.get(n)[0]
    return out, dt


def rows_of(ck, name, lo, hi):
    """Rows [lo, hi) of every expert of a fused (n_experts, rows, cols) tensor."""
    a, dt = ck.get(name)
    return a[:, lo:hi, :], dt


def add_bpe_vocab(w, model_dir, vocab_size, cfg, pre, prog):
    """The tokenizer.json BPE vocabulary padded to vocab_size, merges, special ids, eos."""
    tok = json.load(open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8"))
    if tok["model"]["type"] != "BPE":
        raise SystemExit(f"{prog}: only BPE tokenizers")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for t, i in tok["model"]["vocab"].items():
        if i < vocab_size:
            tokens[i], types[i] = t, gguf.TokenType.NORMAL
    for at in tok.get("added_tokens", []):
        i = at["id"]
        if i < vocab_size:
            tokens[i] = at["content"]
            types[i] = gguf.TokenType.CONTROL if at.get("special") else gguf.TokenType.USER_DEFINED
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pick_pre(tok, pre))
    w.add_token_list(tokens)
    w.add_token_types(types)
    sv = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    sv.add_to_gguf(w)
    # transformers adds no BOS for these tokenizers (no template post-processor); say so unless
    # the tokenizer's files did (SpecialVocab writes add_bos_token when they name it)
    if "bos" not in sv.add_special_token:
        w.add_add_bos_token(False)
    eos = cfg.get("eos_token_id")
    gen = os.path.join(model_dir, "generation_config.json")
    if os.path.exists(gen):
        eos = json.load(open(gen)).get("eos_token_id", eos)
    if isinstance(eos, list):
        eos = eos[0]
    if eos is not None and "eos" not in sv.special_token_ids:
        w.add_eos_token_id(int(eos))


def pick_pre(tok, forced):
    if forced:
        return forced
    pt = tok.get("pre_tokenizer") or {}
    if pt.get("type") == "ByteLevel" and pt.get("use_regex", True):
        return GPT2_REGEX_NAME
    if pt.get("type") == "Sequence":
        subs = pt.get("pretokenizers", [])
        if (len(subs) == 2 and subs[0].get("type") == "Split"
                and subs[0].get("pattern", {}).get("Regex") == QWEN2_REGEX
                and subs[1].get("type") == "ByteLevel" and not subs[1].get("use_regex", True)):
            return "qwen2"
    raise SystemExit("hf_to_gguf_olmoe: the tokenizer's pre-tokenizer is neither GPT-2's ByteLevel "
                     "regex nor Qwen2's split; name llama.cpp's pre-tokenizer with --pre")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--outtype", choices=("bf16", "f32", "f16"), default="bf16")
    ap.add_argument("--pre", help="llama.cpp pre-tokenizer name (default: detected)")
    args = ap.parse_args()

    cfg = json.load(open(os.path.join(args.model, "config.json")))
    if cfg.get("model_type") != "olmoe":
        raise SystemExit(f"hf_to_gguf_olmoe: model_type is {cfg.get('model_type')!r}, not 'olmoe'")
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    if n_kv != n_head:
        raise SystemExit(f"hf_to_gguf_olmoe: llama.cpp's OLMoE needs num_key_value_heads == "
                         f"num_attention_heads (k_norm over the full width); this model has {n_kv} and {n_head}")
    if cfg.get("norm_topk_prob"):
        raise SystemExit("hf_to_gguf_olmoe: llama.cpp's OLMoE does not renormalise top-k weights; "
                         "this model has norm_topk_prob true")
    if cfg.get("clip_qkv"):
        raise SystemExit("hf_to_gguf_olmoe: clip_qkv is not in llama.cpp's OLMoE graph")
    n_layer = cfg["num_hidden_layers"]
    n_exp = cfg["num_experts"]
    hidden = cfg["hidden_size"]

    ck = Checkpoint(args.model)
    w = gguf.GGUFWriter(args.out, "olmoe")
    w.add_name(os.path.basename(os.path.normpath(args.model)))
    w.add_block_count(n_layer)
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    w.add_expert_count(n_exp)
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    ftype = {"bf16": gguf.LlamaFileType.MOSTLY_BF16, "f32": gguf.LlamaFileType.ALL_F32,
             "f16": gguf.LlamaFileType.MOSTLY_F16}[args.outtype]
    w.add_file_type(ftype)

    # Vocabulary: ids in order, special added tokens as CONTROL.
    add_bpe_vocab(w, args.model, cfg["vocab_size"], cfg, args.pre, "hf_to_gguf_olmoe")

    ts = StreamedTensors(args.outtype)

    def add(name, src_name, force_f32=False):
        ts.add(name, ck.shape(src_name), lambda: ck.get(src_name), force_f32)

    add("token_embd.weight", "model.embed_tokens.weight")
    add("output_norm.weight", "model.norm.weight")
    add("output.weight", "lm_head.weight" if "lm_head.weight" in ck.names() else "model.embed_tokens.weight")
    for i in range(n_layer):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", p + "input_layernorm.weight")
        add(f"blk.{i}.attn_q.weight", p + "self_attn.q_proj.weight")
        add(f"blk.{i}.attn_k.weight", p + "self_attn.k_proj.weight")
        add(f"blk.{i}.attn_v.weight", p + "self_attn.v_proj.weight")
        add(f"blk.{i}.attn_output.weight", p + "self_attn.o_proj.weight")
        add(f"blk.{i}.attn_q_norm.weight", p + "self_attn.q_norm.weight")
        add(f"blk.{i}.attn_k_norm.weight", p + "self_attn.k_norm.weight")
        add(f"blk.{i}.ffn_norm.weight", p + "post_attention_layernorm.weight")
        add(f"blk.{i}.ffn_gate_inp.weight", p + "mlp.gate.weight", force_f32=True)
        fused = p + "mlp.experts.gate_up_proj"
        if fused in ck.names():
            # transformers 5 fused layout: gate_up [E, 2*ff, hidden] (gate first), down [E, hidden, ff]
            e, ff2, h = ck.shape(fused)
            ff = ff2 // 2
            ts.add(f"blk.{i}.ffn_gate_exps.weight", (e, ff, h),
                   lambda f=fused, ff=ff: rows_of(ck, f, 0, ff))
            ts.add(f"blk.{i}.ffn_up_exps.weight", (e, ff, h),
                   lambda f=fused, ff=ff: rows_of(ck, f, ff, 2 * ff))
            add(f"blk.{i}.ffn_down_exps.weight", p + "mlp.experts.down_proj")
        else:
            for short, hf in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
                names = [f"{p}mlp.experts.{e}.{hf}.weight" for e in range(n_exp)]
                ts.add(f"blk.{i}.ffn_{short}_exps.weight", (n_exp,) + ck.shape(names[0]),
                       lambda names=names: stack_experts(ck, names))
    ts.write(w, args.out)
    print(f"hf_to_gguf_olmoe: wrote {args.out} ({args.outtype}, {os.path.getsize(args.out)} bytes)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
