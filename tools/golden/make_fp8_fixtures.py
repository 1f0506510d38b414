#!/usr/bin/env python3
"""Build tiny FP8 checkpoints in the fine-grained layout DeepSeek-V3 and Qwen3 *-FP8 ship.

For qwen3_moe, mixtral and deepseek_v3 this script

  * builds a tiny random model as make_fixtures.py does, with hidden_size 160 (a 128 block
    and a partial one of 32) and expert widths of 96 (a partial row block), so partial
    blocks are exercised in both dimensions; deepseek_v3 (q_lora_rank set, a dense first
    layer, 4 groups of 2 experts) keeps its small MLA dims (kv_b_proj's 144 rows are a block
    and a partial one) and expert width 32, and stores the tensors it does not convert in bf16
    (e_score_correction_bias in f32) as DeepSeek publishes them, which keeps the fixture small,
  * quantizes every linear weight except the embedding, lm_head and the routers
    (modules_to_not_convert; for deepseek_v3 also what transformers' FP8 loader keeps: the
    norms, kv_a_layernorm/q_a_layernorm, the gate and e_score_correction_bias, none of them an
    nn.Linear) to float8_e4m3fn in 128 x 128 blocks: scale_inv = amax / 448
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
    /work/golden-venv/bin/python tools/golden/make_fp8_fixtures.py [OUT_DIR [FIXTURE...]]
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
from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight  # noqa: E402

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
    # MLA: q_a_proj (32, 160), q_b_proj (96, 32), kv_a_proj_with_mqa (40, 160), kv_b_proj
    # (144, 32), o_proj (160, 80: columns not a multiple of 32, kept f32 when served as q8)
    "deepseek_v3-fp8": (fp8_config(mf.deepseek_v3_config, hidden_size=160, q_lora_rank=32,
                                   n_routed_experts=8, n_group=4, topk_group=2,
                                   moe_intermediate_size=32, intermediate_size=96),
                        transformers.DeepseekV3ForCausalLM, 1013, [1, 2]),
}
# the tensors these store in bf16 where they are not converted (but e_score_correction_bias)
BF16_KEPT = {"deepseek_v3-fp8"}


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
            # transformers' _dequantize_fp8_weight (its FP8 matmul's layout: a partial last
            # block keeps its block's scale) must give the same values
            ref = _dequantize_fp8_weight(q.clone(), s, [BLOCK, BLOCK], torch.float32)
            if not torch.equal(ref, dq[name]):
                raise SystemExit(f"{arch}: {name}: transformers dequantizes it differently")
        elif arch in BF16_KEPT and not name.endswith("e_score_correction_bias"):
            fp8[name] = t.to(torch.bfloat16)
            dq[name] = fp8[name].to(torch.float32)
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
    if arch.startswith("deepseek"):  # as DeepSeek-V3 publishes it: no modules_to_not_convert
        del cfg["quantization_config"]["modules_to_not_convert"]
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
        mt = mt.float()  # the tensors stored in bf16 (BF16_KEPT) load as bf16 into an FP8 model
    except ImportError as e:
        print(f"{arch}: {n_fp8} FP8 weights; transformers' FP8 loader not run ({e})")
        return None
    golden = json.load(open(gpath))
    diff = 0.0
    for p, ref in zip(golden["prompts"], pl):
        got = mt(input_ids=torch.tensor([p]), use_cache=False).logits[0].float().numpy()
        diff = max(diff, float(np.abs(got - ref).max()))
    # That loader (Fp8Dequantize) takes the block as rows // scale_rows, cols // scale_cols of
    # the scale grid, not weight_block_size: a weight with a partial block (160 = 128 + 32 read
    # as 2 x 80) gets other values than its FP8 matmul and _dequantize_fp8_weight give, and one
    # whose dim the grid does not divide (DeepSeek-V3's kv_a_proj_with_mqa, 576 rows in 5) is
    # refused. Count the weights it loads otherwise: they should be the partial ones.
    sd_t = mt.state_dict()
    odd = [k for k in dq if k + "_scale_inv" in fp8 and k in sd_t
           and not torch.equal(sd_t[k].float(), dq[k])]
    partial = [k for k in odd if fp8[k].shape[0] % BLOCK or fp8[k].shape[1] % BLOCK]
    print(f"{arch}: {n_fp8} FP8 weights; transformers FineGrainedFP8Config(dequantize=True) "
          f"vs the dequantized f32 model: max |logit diff| {diff:g}; {len(odd)} weights loaded "
          f"otherwise, {len(partial)} of them with a partial block")
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
    # after the output folder, fixture names (deepseek_v3-fp8 ...) make only those
    for arch in sys.argv[2:] or FP8_ARCHS:
        if arch not in FP8_ARCHS:
            raise SystemExit(f"unknown FP8 fixture {arch}; these are {', '.join(FP8_ARCHS)}")
        make(out, arch)


if __name__ == "__main__":
    sys.exit(main())
