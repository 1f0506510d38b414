#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (standard library only).

corpus/safetensors/: small safetensors images, valid and broken one defect at a time.
corpus/model-config/: config.json variants of each supported model_type, and broken ones.

Run from anywhere: python3 tests/fuzz/make_corpus.py. The output is deterministic, so running it
again leaves the committed files unchanged.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ST_DIR = os.path.join(HERE, "corpus", "safetensors")
MC_DIR = os.path.join(HERE, "corpus", "model-config")


def image(header, data=b"", pad=True):
    """A safetensors file: u64 little-endian header length, JSON header, data.

    header is a dict (serialised compactly) or raw text. With pad, the header is padded with
    spaces, as the format allows, so that the data starts 8-byte aligned.
    """
    text = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
    raw = text.encode("utf-8")
    if pad:
        raw += b" " * ((8 - (8 + len(raw)) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def f32(*values):
    return struct.pack("<%df" % len(values), *values)


def u16(*bits):
    return struct.pack("<%dH" % len(bits), *bits)


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def safetensors_corpus():
    files = {}
    # valid: one tensor of each dtype (values 1, -2, 0.5, 3 as IEEE bit patterns)
    files["valid-f32.safetensors"] = image({"w": entry("F32", [2, 2], 0, 16)},
                                           f32(1.0, -2.0, 0.5, 3.0))
    files["valid-bf16.safetensors"] = image({"w": entry("BF16", [4], 0, 8)},
                                            u16(0x3F80, 0xC000, 0x3F00, 0x4040))
    files["valid-f16.safetensors"] = image({"w": entry("F16", [2, 2], 0, 8)},
                                           u16(0x3C00, 0xC000, 0x3800, 0x4200))
    # valid: several tensors out of name order, metadata, a scalar and an empty tensor
    files["valid-mixed.safetensors"] = image(
        {
            "model.layers.0.mlp.experts.0.w1": entry("F32", [2, 2], 0, 16),
            "__metadata__": {"format": "pt"},
            "model.embed_tokens": entry("BF16", [2, 2], 16, 24),
            "model.norm": entry("F16", [4], 24, 32),
            "scalar": entry("F32", [], 32, 36),
            "empty": entry("F32", [0, 3], 36, 36),
        },
        f32(1.0, -2.0, 0.5, 3.0) + u16(0x3F80, 0xC000, 0x3F00, 0x4040)
        + u16(0x3C00, 0x7BFF, 0x0001, 0x7C00) + f32(0.25) + b"\0" * 4,
    )
    files["valid-metadata-only.safetensors"] = image({"__metadata__": {"format": "pt"}})
    # no padding: fine while the data start suits the element size (a 56-byte header puts it
    # at 64), refused by expertd when a 63-byte header leaves the BF16 data at an odd address
    files["valid-unpadded.safetensors"] = image({"wx": entry("BF16", [1], 0, 2)}, u16(0x3F80),
                                                pad=False)
    files["bad-odd-data-start.safetensors"] = image({"w": entry("BF16", [1], 0, 2)},
                                                    u16(0x3F80), pad=False)

    # broken, one defect each
    files["bad-short.safetensors"] = b"\x02\x00\x00\x00\x00"
    files["bad-header-past-end.safetensors"] = struct.pack("<Q", 1000) + b"{}" + b" " * 8
    files["bad-json.safetensors"] = image('{"w": {"dtype": "F32", ')
    files["bad-not-object.safetensors"] = image("[1, 2, 3]")
    files["bad-i64.safetensors"] = image({"w": entry("I64", [2], 0, 16)}, b"\0" * 16)
    files["bad-truncated.safetensors"] = image({"w": entry("F32", [2, 4], 0, 32)},
                                               f32(1.0, 2.0, 3.0, 4.0))
    files["bad-end-before-begin.safetensors"] = image({"w": entry("F32", [1], 8, 4)}, b"\0" * 16)
    files["bad-size-mismatch.safetensors"] = image({"w": entry("F32", [2, 2], 0, 12)},
                                                   b"\0" * 16)
    files["bad-negative-dim.safetensors"] = image({"w": entry("F32", [-1, 4], 0, 16)},
                                                  b"\0" * 16)
    files["bad-float-dim.safetensors"] = image({"w": entry("F32", [2.5, 2], 0, 16)}, b"\0" * 16)
    files["bad-misaligned.safetensors"] = image({"w": entry("F32", [2], 1, 9)}, b"\0" * 16)
    files["bad-duplicate-key.safetensors"] = image(
        '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        '"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8)
    files["bad-dims-overflow.safetensors"] = image(
        {"w": entry("F32", [1 << 40, 1 << 40, 16], 0, 16)}, b"\0" * 16)
    files["bad-five-dims.safetensors"] = image({"w": entry("F32", [1, 1, 1, 1, 4], 0, 16)},
                                               b"\0" * 16)
    files["bad-huge-offsets.safetensors"] = image(
        {"w": entry("F32", [1], 9223372036854775800, 9223372036854775804)}, b"\0" * 16)
    return files


def model_config_corpus():
    mixtral = {
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
        "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128, "num_local_experts": 8, "num_experts_per_tok": 2,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
        "sliding_window": None, "hidden_act": "silu", "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
    }
    qwen2 = {
        "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
        "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 5632,
        "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
        "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
        "num_experts": 60, "num_experts_per_tok": 4, "decoder_sparse_step": 1,
        "norm_topk_prob": False, "mlp_only_layers": [], "use_sliding_window": False,
        "sliding_window": 32768, "max_position_embeddings": 8192, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "hidden_act": "silu", "bos_token_id": 151643,
        "eos_token_id": 151643,
    }
    qwen3 = {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
        "moe_intermediate_size": 768, "num_hidden_layers": 48, "num_attention_heads": 32,
        "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128,
        "num_experts_per_tok": 8, "decoder_sparse_step": 2, "norm_topk_prob": True,
        "mlp_only_layers": [0, 47], "attention_bias": False, "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-06, "hidden_act": "silu", "use_sliding_window": False,
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
        "eos_token_id": [151645, 151643],
    }
    olmoe = {
        "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe",
        "vocab_size": 50304, "hidden_size": 2048, "intermediate_size": 1024,
        "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16,
        "num_experts": 64, "num_experts_per_tok": 8, "norm_topk_prob": False,
        "clip_qkv": None, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0, "hidden_act": "silu", "attention_bias": False,
        "pad_token_id": 1, "bos_token_id": None, "eos_token_id": 50279,
    }
    glm = {
        "architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe",
        "attention_bias": True, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096,
        "intermediate_size": 10944, "max_position_embeddings": 131072,
        "moe_intermediate_size": 1408, "norm_topk_prob": True, "num_attention_heads": 96,
        "n_group": 1, "topk_group": 1, "n_routed_experts": 128, "n_shared_experts": 1,
        "routed_scaling_factor": 1.0, "num_experts_per_tok": 8, "first_k_dense_replace": 1,
        "num_hidden_layers": 46, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
        "rope_scaling": None, "rope_theta": 1000000, "num_nextn_predict_layers": 1,
        "partial_rotary_factor": 0.5, "use_qk_norm": False, "vocab_size": 151552,
        "eos_token_id": [151329, 151336, 151338],
    }
    # shapes of dots.llm1.inst, granite-3.0-1b-a400m, ERNIE-4.5-21B-A3B-PT (as their model cards
    # give them)
    dots1 = {
        "architectures": ["Dots1ForCausalLM"], "model_type": "dots1", "attention_bias": False,
        "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 10944,
        "moe_intermediate_size": 1408, "max_position_embeddings": 32768, "n_routed_experts": 128,
        "n_shared_experts": 2, "num_experts_per_tok": 6, "first_k_dense_replace": 1,
        "norm_topk_prob": True, "routed_scaling_factor": 2.5, "n_group": 1, "topk_group": 1,
        "num_attention_heads": 32, "num_key_value_heads": 32, "num_hidden_layers": 62,
        "rms_norm_eps": 1e-05, "rope_theta": 10000000, "sliding_window": None,
        "max_window_layers": 62, "tie_word_embeddings": False, "vocab_size": 152064,
    }
    granite = {
        "architectures": ["GraniteMoeForCausalLM"], "model_type": "granitemoe",
        "attention_multiplier": 0.015625, "embedding_multiplier": 12.0, "hidden_size": 1024,
        "intermediate_size": 512, "logits_scaling": 6.0, "max_position_embeddings": 4096,
        "num_attention_heads": 16, "num_experts_per_tok": 8, "num_hidden_layers": 24,
        "num_key_value_heads": 8, "num_local_experts": 32, "residual_multiplier": 0.22,
        "rms_norm_eps": 1e-06, "rope_theta": 10000, "tie_word_embeddings": True,
        "vocab_size": 49155, "bos_token_id": 0, "eos_token_id": 0,
    }
    ernie = {
        "architectures": ["Ernie4_5_MoeForCausalLM"], "model_type": "ernie4_5_moe",
        "hidden_size": 2560, "intermediate_size": 12288, "max_position_embeddings": 131072,
        "num_attention_heads": 20, "num_key_value_heads": 4, "num_hidden_layers": 28,
        "rms_norm_eps": 1e-05, "vocab_size": 103424, "rope_theta": 500000,
        "tie_word_embeddings": True, "use_bias": False, "moe_num_experts": 64,
        "moe_num_shared_experts": 2, "moe_layer_start_index": 1, "moe_layer_end_index": 27,
        "moe_intermediate_size": 1536, "moe_k": 6, "moe_layer_interval": 1, "head_dim": 128,
        "moe_capacity": [64, 64, 64], "moe_gate": "topk", "bos_token_id": 1, "eos_token_id": 2,
    }
    hunyuan = {
        "architectures": ["HunYuanMoEV1ForCausalLM"], "model_type": "hunyuan_v1_moe",
        "hidden_size": 4096, "intermediate_size": 3072, "max_position_embeddings": 32768,
        "head_dim": 128, "num_attention_heads": 32, "num_key_value_heads": 8,
        "num_hidden_layers": 32, "num_experts": 64, "moe_topk": [8] * 32, "use_qk_norm": True,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": True,
        "vocab_size": 128167, "rope_scaling": {"alpha": 1000.0, "beta_fast": 32, "beta_slow": 1,
                                               "factor": 1.0, "type": "dynamic"},
    }
    files = {
        "hunyuan_v1_moe.json": hunyuan,
        "hunyuan_v1_moe-v5.json": dict(hunyuan, moe_topk=8, rope_scaling=None, rope_parameters={
            "rope_type": "dynamic", "alpha": 50.0, "rope_theta": 10000.0}),
        "bad-hunyuan-topk.json": dict(hunyuan, moe_topk=[8] * 31 + [4]),
        "dots1.json": dots1,
        "dots1-windows.json": dict(dots1, sliding_window=4096, max_window_layers=60),
        "bad-dots1-window.json": dict(dots1, layer_types=["sliding_attention"] * 62),
        "granitemoe.json": granite,
        "granitemoeshared.json": dict(granite, model_type="granitemoeshared",
                                      shared_intermediate_size=1024),
        "bad-granite-logits.json": dict(granite, logits_scaling=0),
        "ernie4_5_moe.json": ernie,
        "ernie4_5_moe-interval.json": dict(ernie, moe_layer_interval=2, moe_layer_end_index=-1),
        "bad-ernie-bias.json": dict(ernie, use_bias=True),
        "mixtral.json": mixtral,
        "qwen2_moe.json": qwen2,
        "qwen3_moe.json": qwen3,
        "olmoe.json": olmoe,
        "olmoe-clip-qkv.json": dict(olmoe, clip_qkv=8.0),
        "bad-llama.json": dict(mixtral, model_type="llama"),
        "qwen3_moe-yarn.json": dict(qwen3, rope_parameters={"rope_theta": 1e6, "rope_type": "yarn",
                                                            "factor": 4.0,
                                                            "original_max_position_embeddings": 32768}),
        "qwen3_moe-yarn-v4.json": dict(qwen3, rope_scaling={"type": "yarn", "factor": 4.0, "mscale": 1.0,
                                                            "mscale_all_dim": 0.707, "truncate": False}),
        "mixtral-linear.json": dict(mixtral, rope_scaling={"type": "linear", "factor": 2.0}),
        "mixtral-dynamic.json": dict(mixtral, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
        "olmoe-llama3.json": dict(olmoe, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                       "original_max_position_embeddings": 1024}),
        "glm4_moe.json": glm,
        "glm4_moe-groups.json": dict(glm, n_group=8, topk_group=4, use_qk_norm=True,
                                     partial_rotary_factor=0.25),
        "bad-glm-groups.json": dict(glm, n_group=3),
        "bad-longrope.json": dict(qwen3, rope_parameters={"rope_theta": 1e6, "rope_type": "longrope",
                                                          "short_factor": [1.0], "long_factor": [1.0]}),
        "bad-llama3.json": dict(olmoe, rope_scaling={"rope_type": "llama3", "factor": 8.0}),
        "bad-zero-experts.json": dict(qwen2, num_experts=0),
        "bad-top-k.json": dict(olmoe, num_experts_per_tok=65),
        "bad-kv-heads.json": dict(olmoe, num_key_value_heads=3),
        "bad-mlp-only.json": dict(qwen2, mlp_only_layers=[24]),
        "eos-outside-vocab.json": dict(olmoe, eos_token_id=50304),  # ignored with a warning
        "bad-gelu.json": dict(mixtral, hidden_act="gelu"),
        "bad-sliding-window.json": dict(qwen3, use_sliding_window=True),
    }
    out = {name: (json.dumps(cfg, indent=2) + "\n").encode() for name, cfg in files.items()}
    missing = dict(mixtral)
    del missing["hidden_size"]
    out["bad-missing-hidden-size.json"] = (json.dumps(missing, indent=2) + "\n").encode()
    out["bad-not-json.json"] = b'{"model_type": "mixtral",\n'
    out["bad-not-object.json"] = b'["mixtral"]\n'
    return out


def chat_corpus():
    """fuzz-chat inputs: 0x00 + tokenizer_config.json [+ NUL + generation_config.json] from the
    chat fixtures, and 0x01 + conversations (messages split at 0x1E, role from the first byte:
    0 system, 1 user, 2 assistant, 3 tool)."""
    out = {}
    chat = os.path.join(HERE, "..", "fixtures", "chat")
    for name in sorted(n for n in os.listdir(chat) if os.path.isdir(os.path.join(chat, n))):
        with open(os.path.join(chat, name, "tokenizer_config.json"), "rb") as f:
            cfg = f.read()
        # the fixtures' special tokens become the fuzz tokenizer's <s>, </s>, <|im_end|>
        cfg = cfg.replace(b"<|endoftext|>", b"</s>")
        out[f"config-{name}.json"] = b"\x00" + cfg
    out["config-gen.json"] = b'\x00{"eos_token": "</s>"}\x00{"eos_token_id": [4, 3, 4]}'
    out["config-bad-eos.json"] = b'\x00{"eos_token": "<nope>"}'
    out["config-bad-gen.json"] = b'\x00{}\x00{"eos_token_id": [4, "x"]}'
    sep = b"\x1e"
    out["conv-alternating.bin"] = b"\x01" + sep.join([b"\x00be brief", b"\x01hi", b"\x02hello",
                                                      b"\x01bye"])
    out["conv-two-users.bin"] = b"\x01" + sep.join([b"\x01a", b"\x01b"])
    out["conv-tool.bin"] = b"\x01" + sep.join([b"\x01a", b"\x03{}"])
    out["conv-unicode.bin"] = b"\x01\x01" + "Grüße 👋 <|im_end|> [INST]".encode()
    out["conv-empty.bin"] = b"\x01"
    out["conv-lone-system.bin"] = b"\x01\x00only a system message"  # Mistral drops it
    # qwen3: reasoning dropped before the last user query, kept after it
    out["conv-think.bin"] = b"\x01" + sep.join([
        b"\x01q1", b"\x02<think>\nr1\n</think>\n\na1", b"\x01q2",
        b"\x02<think>r2</think>a2", b"\x02no reasoning", b"\x02\n<think>\n\n</think>\n\n\na3"])
    out["conv-think-odd.bin"] = b"\x01" + sep.join([
        b"\x01<tool_response>x</tool_response>", b"\x02a</think>b</think>c<think>",
        b"\x02<think>never closed"])
    return out


def trace_payload(layers=2, top_k=2, experts=4, steps=2, tokens=2, predictions=False,
                  end=True):
    """A routing-trace payload (see engine/experts/routing_trace.h) with experts
    (t + l + k) % experts."""
    out = b"XDROUTE1" + struct.pack("<IIIIQI", 1, layers, top_k, experts, 4096, int(predictions))
    for s in range(steps):
        out += struct.pack("<BQdI", 1, s, 0.001, tokens)
        for t in range(tokens):
            ids = [(t + l + k) % experts for l in range(layers) for k in range(top_k)]
            out += struct.pack("<QI", 7 + t, s + t)
            out += struct.pack("<%dH" % len(ids), *ids)
            out += struct.pack("<%df" % len(ids), *[0.5] * len(ids))
            if predictions:
                out += struct.pack("<%dH" % len(ids), *[0xFFFF] * top_k + ids[top_k:])
    return out + (b"\0" if end else b"")


def routing_trace_corpus():
    """Routing traces: byte 0 even means the raw payload follows (the fuzz target's convention;
    odd would mean a zstd stream, which the fuzzer reaches from the raw seeds' mutations too)."""
    good = trace_payload()
    return {
        "raw-two-steps": b"\0" + good,
        "raw-predictions": b"\0" + trace_payload(layers=3, predictions=True),
        "raw-empty-trace": b"\0" + trace_payload(steps=0),
        "raw-truncated": b"\0" + good[: len(good) - 7],
        "raw-no-end-tag": b"\0" + trace_payload(end=False),
        "raw-bad-expert": b"\0" + good.replace(struct.pack("<HH", 1, 2), struct.pack("<HH", 9, 2), 1),
        "raw-bad-version": b"\0" + good[:8] + struct.pack("<I", 2) + good[12:],
        "raw-huge-step": b"\0" + good[:36] + struct.pack("<BQdI", 1, 0, 0.0, 0xFFFFFFF),
        "zstd-not-a-frame": b"\1" + good,
        **zstd_seed("zstd-predictions", trace_payload(predictions=True)),
    }


def zstd_seed(name, payload):
    """A zstd-compressed seed, made with the zstd command where it is installed."""
    import shutil
    import subprocess
    if not shutil.which("zstd"):
        return {}
    z = subprocess.run(["zstd", "-q", "-c", "-3"], input=payload, capture_output=True, check=True)
    return {name: b"\1" + z.stdout}


def fnv(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def pack(extents, version=1, align=4096, truncate=0):
    """An expert pack (engine/model/pack.h): extents are (name, dtype code, rows, cols), Q8_0
    (code 4, 34 bytes per 32 weights) or F32 (code 1); the data bytes are a counter."""
    row = {1: lambda c: 4 * c, 4: lambda c: c // 32 * 34, 5: lambda c: c // 32 * 20}
    table_end = 128 + 128 * len(extents)
    data_offset = (table_end + align - 1) // align * align
    table, off, blobs = b"", data_offset, []
    for name, code, rows, cols in extents:
        n = rows * row.get(code, lambda c: 4 * c)(cols)
        table += (name.encode().ljust(80, b"\0") + struct.pack("<IIqqQQ", code, 0, rows, cols, off, n)
                  ).ljust(128, b"\0")
        blobs.append((off, bytes(i % 251 for i in range(n))))
        off = (off + n + align - 1) // align * align
    size = blobs[-1][0] + len(blobs[-1][1]) if blobs else data_offset
    head = b"XDPACK\r\n" + struct.pack("<IIIIQQQQQ", version, 1, 4, len(extents), 42, 1 << 20,
                                         data_offset, size - truncate, fnv(table))
    head = (head + struct.pack("<Q", fnv(head))).ljust(128, b"\0")
    out = bytearray(head + table)
    out += b"\0" * (data_offset - len(out))
    for at, blob in blobs:
        out += b"\0" * (at - len(out)) + blob
    return bytes(out[: len(out) - truncate])


def pack_corpus():
    two = [("layer 0 expert 0 gate_proj", 4, 2, 64), ("lm_head", 4, 3, 32)]
    return {
        "two-extents": pack(two),
        "empty": pack([]),
        "f32-extent": pack([("layer 0 q_proj", 1, 2, 3)]),
        "truncated": pack(two, truncate=1),
        "bad-version": pack(two, version=2),
        "unknown-dtype": pack([("x", 9, 1, 32)]),
        "bad-shape": pack([("x", 4, 1, 48)]),
        "header-only": pack(two)[:128],
    }


def write_all(directory, files):
    os.makedirs(directory, exist_ok=True)
    for name, data in sorted(files.items()):
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    write_all(ST_DIR, safetensors_corpus())
    write_all(MC_DIR, model_config_corpus())
    write_all(os.path.join(HERE, "corpus", "chat"), chat_corpus())
    write_all(os.path.join(HERE, "corpus", "routing-trace"), routing_trace_corpus())
    write_all(os.path.join(HERE, "corpus", "pack"), pack_corpus())
