#!/usr/bin/env python3
"""Build tiny FP8 checkpoints in the fine-grained layout DeepSeek-V3 and Qwen3 *-FP8 ship.

For qwen3_moe and mixtral this script

  * builds a tiny random model as make_fixtures.py does, with hidden_size 160 (a 128 block
    and a partial one of 32) and expert widths of 96 (a partial row block), so partial
    blocks are exercised in both dimensions,
  * quantizes every linear weight except the embedding, lm_head and the routers
    (modules_to_not_convert) to float8_e4m3fn in 128 x 128 blocks: scale_inv = amax / 448
    per block, weight = (w / scale_inv) cast to float8_e4m3fn (round to nearest, as torch
    casts), stored with an f32 '<name>_scale_inv' of shape [ceil(out/128), ceil(in/128)],
  * writes config.json with quantization_config {quant_method fp8, fmt e4m3,
    activation_scheme dynamic, weight_block_size [128, 128]},
  * records transformers' logits of the dequantized model (weight.float() * scale_inv per
    block, loaded into the float32 model and computed in f32) in golden.json, as
    make_fixtures.py records them, and checks that transformers' own FP8 loader with
    FineGrainedFP8Config(dequantize=True) gives the same logits from the FP8 files (when
    accelerate, which that loader needs, is installed; else it says it skipped).

Output: tests/fixtures/golden/<family>-fp8/ (and tests/fixtures/fp8/e4m3.json, torch's value of
every e4m3 code, when writing to the default place). Run with the pinned venv:
    /work/golden-venv/bin/python tools/golden/make_fp8_fixtures.py
"""

import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402

BLOCK = 128
FP8_MAX = 448.0
NOT_CONVERTED = ("embed_tokens", "lm_head", "mlp.gate.", "block_sparse_moe.gate.", "norm")


def fp8_config(make_config, **overrides):
    def make():
        c = make_config()
        for k, v in overrides.items():
            setattr(c, k, v)
        return c

    return make


FP8_ARCHS = {
    "qwen3_moe-fp8": (fp8_config(mf.qwen3_moe_config, hidden_size=160, moe_intermediate_size=96),
                      transformers.Qwen3MoeForCausalLM, 1011, [1, 3]),
    "mixtral-fp8": (fp8_config(mf.mixtral_config, hidden_size=160, intermediate_size=96),
                    transformers.MixtralForCausalLM, 1012, [0, 1]),
}


def quantize_block_fp8(w):
    """w (out, in) f32 -> (fp8 weight (out, in), f32 scale_inv (ceil(out/128), ceil(in/128)))."""
    rows, cols = w.shape
    sr, sc = -(-rows // BLOCK), -(-cols // BLOCK)
    scale = torch.zeros(sr, sc, dtype=torch.float32)
    q = torch.zeros(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(sr):
        for j in range(sc):
            blk = w[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
            s = blk.abs().max() / FP8_MAX
            s = s if s > 0 else torch.tensor(1.0)
            scale[i, j] = s
            q[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = (blk / s).to(torch.float8_e4m3fn)
    return q, scale


def dequantize(q, scale):
    s = scale.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[: q.shape[0], : q.shape[1]]
    return q.to(torch.float32) * s


def converted(name, t):
    return t.dim() == 2 and name.endswith(".weight") and not any(k in name for k in NOT_CONVERTED)


@torch.no_grad()
def make(out_dir, arch):
    mf.ARCHS[arch] = FP8_ARCHS[arch]
    model, seed = mf.build_model(arch)
    # 1. the published per-expert layout, f32
    tmp = os.path.join(out_dir, arch + ".tmp")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    sd = load_file(os.path.join(tmp, "model.safetensors"))
    shutil.rmtree(tmp)
    fp8, dq = {}, {}
    for name, t in sd.items():
        if converted(name, t):
            q, s = quantize_block_fp8(t.to(torch.float32))
            fp8[name], fp8[name + "_scale_inv"] = q, s
            dq[name] = dequantize(q, s)
        else:
            fp8[name] = dq[name] = t
    n_fp8 = sum(1 for k in fp8 if k.endswith("_scale_inv"))
    # 2. the dequantized f32 model: references exactly as make_fixtures.py computes them
    model_dq, _ = mf.build_model(arch)
    dq_dir = os.path.join(out_dir, arch + ".dq")
    if os.path.exists(dq_dir):
        shutil.rmtree(dq_dir)
    model_dq.save_pretrained(dq_dir)
    save_file(dq, os.path.join(dq_dir, "model.safetensors"), metadata={"format": "pt"})
    model_dq = mf.load(dq_dir, torch.float32)
    shutil.rmtree(dq_dir)
    pl, _, _ = mf.make_fixture(out_dir, arch, model_dq, seed, "f32")
    final = os.path.join(out_dir, arch)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.rename(os.path.join(out_dir, arch + "-f32"), final)
    # 3. the FP8 checkpoint in place of the f32 one
    save_file(fp8, os.path.join(final, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(final, "config.json")) as f:
        cfg = json.load(f)
    cfg["quantization_config"] = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": [BLOCK, BLOCK],
        "modules_to_not_convert": ["lm_head", "model.embed_tokens"]
        + [f"model.layers.{i}.{'block_sparse_moe' if 'mixtral' in arch else 'mlp'}.gate"
           for i in FP8_ARCHS[arch][3]],
    }
    with open(os.path.join(final, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    gpath = os.path.join(final, "golden.json")
    with open(gpath) as f:
        text = f.read()
    text = text.replace('"checkpoint_dtype": "float32"', '"checkpoint_dtype": "float8_e4m3fn"', 1)
    text = text.replace('"fixture": "%s-f32"' % arch, '"fixture": "%s"' % arch, 1)
    with open(gpath, "w") as f:
        f.write(text)
    # 4. transformers' own FP8 loader, dequantizing on the CPU, from the FP8 files
    # (it needs accelerate, which tools/golden/requirements.txt does not pin: skipped without)
    cfg_q = transformers.FineGrainedFP8Config(dequantize=True)
    try:
        mt = transformers.AutoModelForCausalLM.from_pretrained(
            final, dtype=torch.float32, quantization_config=cfg_q, attn_implementation="eager",
            experts_implementation="eager").eval()
    except ImportError as e:
        print(f"{arch}: {n_fp8} FP8 weights; transformers' FP8 loader not run ({e})")
        return None
    golden = json.load(open(gpath))
    diff = 0.0
    for p, ref in zip(golden["prompts"], pl):
        got = mt(input_ids=torch.tensor([p]), use_cache=False).logits[0].float().numpy()
        diff = max(diff, float(np.abs(got - ref).max()))
    print(f"{arch}: {n_fp8} FP8 weights; transformers FineGrainedFP8Config(dequantize=True) "
          f"vs the dequantized f32 model: max |logit diff| {diff:g}")
    return diff


def write_e4m3_table(fixtures_dir):
    """tests/fixtures/fp8/e4m3.json: torch's value of every float8_e4m3fn code (tests/test-fp8.c)."""
    import math
    v = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float().tolist()
    out = {"source": "torch %s: torch.arange(256, dtype=uint8).view(float8_e4m3fn).float(); NaN as null"
           % torch.__version__, "values": [None if math.isnan(x) else x for x in v]}
    os.makedirs(os.path.join(fixtures_dir, "fp8"), exist_ok=True)
    with open(os.path.join(fixtures_dir, "fp8", "e4m3.json"), "w") as f:
        f.write(json.dumps(out) + "\n")


def main():
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = sys.argv[1] if len(sys.argv) > 1 else mf.DEFAULT_OUT
    if len(sys.argv) <= 1:
        write_e4m3_table(os.path.dirname(mf.DEFAULT_OUT))
    for arch in FP8_ARCHS:
        make(out, arch)


if __name__ == "__main__":
    sys.exit(main())
