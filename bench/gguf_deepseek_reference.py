#!/usr/bin/env python3
"""llama.cpp's deepseek2 graph in numpy (float64), run on a GGUF: greedy ids and their logprobs.

A check of bench/hf_to_gguf_deepseek.py that needs no llama.cpp build: it reads the GGUF with
gguf-py and computes what src/models/deepseek2.cpp's graph computes with those tensors, in its
absorbed-MLA form (q_nope through attn_k_b, scores against the cached [latent, rotary key] row
scaled by key_length_mla^-0.5, the weighted latent through attn_v_b; NORM RoPE on adjacent
pairs; softmax routing, top-k weights unnormalised; shared experts added), so a wrong split,
transposition, key or shape shows up as other ids than `expertd generate` gives on the
checkpoint. Whole-sequence recompute per token: for small models only (seconds for a 3-layer,
512-wide one). It is our reading of llama.cpp's graph, not llama.cpp:
bench/compare_llama_greedy_ids.py runs the real one.

Usage: PYTHONPATH=$LLAMA_CPP_DIR/src/gguf-py gguf_deepseek_reference.py FILE.gguf IDS N
  (IDS: the prompt, comma-separated; N: tokens to generate). Prints {"ids", "logprobs"}.
"""
import json, sys
import numpy as np
import gguf

path, prompt, n_new = sys.argv[1], [int(x) for x in sys.argv[2].split(",")], int(sys.argv[3])
r = gguf.GGUFReader(path)
kv = {k: f.contents() for k, f in r.fields.items()}
A = "deepseek2."
W = {}
for t in r.tensors:
    a = np.array(t.data)
    if t.tensor_type == gguf.GGMLQuantizationType.BF16:
        a = (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    W[t.name] = a.astype(np.float32).reshape([int(x) for x in reversed(t.shape)])
n_layer = kv[A + "block_count"]; H = kv[A + "attention.head_count"]
kvl = kv[A + "attention.kv_lora_rank"]; kmla = kv[A + "attention.key_length_mla"]
rot = kv[A + "rope.dimension_count"]; nope = kmla - rot
eps = kv[A + "attention.layer_norm_rms_epsilon"]; base = kv[A + "rope.freq_base"]
n_dense = kv[A + "leading_dense_block_count"]; k_used = kv[A + "expert_used_count"]
scale = 1.0 / np.sqrt(kmla)


def rms(x, w):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos):  # x (T, ..., rot): NORM, adjacent pairs
    inv = base ** (-np.arange(0, rot, 2, dtype=np.float64) / rot)
    ang = pos[:, None] * inv[None, :]
    c, s = np.cos(ang), np.sin(ang)
    shp = (len(pos),) + (1,) * (x.ndim - 2) + (rot // 2,)
    c, s = c.reshape(shp), s.reshape(shp)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out


def silu(x):
    return x / (1 + np.exp(-x))


def ffn(x, g, u, d):
    return (silu(x @ g.T) * (x @ u.T)) @ d.T


def forward(ids):
    T = len(ids); pos = np.arange(T, dtype=np.float64)
    x = W["token_embd.weight"][ids].astype(np.float64)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(n_layer):
        b = f"blk.{l}."
        h = rms(x, W[b + "attn_norm.weight"])
        if b + "attn_q_a.weight" in W:  # q_lora_rank set
            q = rms(h @ W[b + "attn_q_a.weight"].T, W[b + "attn_q_a_norm.weight"]) @ W[b + "attn_q_b.weight"].T
        else:
            q = h @ W[b + "attn_q.weight"].T
        q = q.reshape(T, H, kmla)
        q_nope, q_pe = q[..., :nope], rope(q[..., nope:], pos)
        c = h @ W[b + "attn_kv_a_mqa.weight"].T
        k_pe = rope(c[:, kvl:], pos)
        lat = rms(c[:, :kvl], W[b + "attn_kv_a_norm.weight"])
        q_abs = np.einsum("hjk,thk->thj", W[b + "attn_k_b.weight"], q_nope)  # (T, H, kvl)
        Q = np.concatenate([q_abs, q_pe], -1)
        K = np.concatenate([lat, k_pe], -1)
        s = np.einsum("thd,sd->hts", Q, K) * scale + mask
        p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
        o_lat = np.einsum("hts,sd->thd", p, lat)
        o = np.einsum("hvd,thd->thv", W[b + "attn_v_b.weight"], o_lat).reshape(T, -1)
        x = x + o @ W[b + "attn_output.weight"].T
        h = rms(x, W[b + "ffn_norm.weight"])
        if l < n_dense:
            x = x + ffn(h, W[b + "ffn_gate.weight"], W[b + "ffn_up.weight"], W[b + "ffn_down.weight"])
            continue
        lg = h @ W[b + "ffn_gate_inp.weight"].T
        pr = np.exp(lg - lg.max(-1, keepdims=True)); pr /= pr.sum(-1, keepdims=True)
        out = ffn(h, W[b + "ffn_gate_shexp.weight"], W[b + "ffn_up_shexp.weight"], W[b + "ffn_down_shexp.weight"])
        for t in range(T):
            for e in np.argsort(-pr[t], kind="stable")[:k_used]:
                out[t] += pr[t, e] * ffn(h[t], W[b + "ffn_gate_exps.weight"][e], W[b + "ffn_up_exps.weight"][e],
                                         W[b + "ffn_down_exps.weight"][e])
        x = x + out
    x = rms(x, W["output_norm.weight"])
    return x[-1] @ W["output.weight"].T


ids, lps = list(prompt), []
for _ in range(n_new):
    lg = forward(ids)
    lp = lg - lg.max() - np.log(np.exp(lg - lg.max()).sum())
    nxt = int(np.argmax(lg)); ids.append(nxt); lps.append(float(lp[nxt]))
print(json.dumps({"ids": ids[len(prompt):], "logprobs": lps}))
