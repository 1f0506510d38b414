#!/usr/bin/env python3
"""Record transformers' RoPE inverse frequencies and attention factors for each rope type.

For every case a tiny config is built with transformers (its config.json text, in the
transformers 5 spelling save_pretrained writes, and a transformers 4 spelling written here
by hand), its rotary embedding module is created, and inv_freq and attention_scaling are
recorded; for dynamic, also the inv_freq after a forward at growing positions (what
dynamic_rope_update leaves for a token decoded there). tests/test-rope.c parses each
config.json with expertd and compares.

Output: tests/fixtures/rope/cases.json. Run with the pinned venv:
    GOLDEN_VENV=/work/golden-venv: $GOLDEN_VENV/bin/python tools/golden/make_rope_fixtures.py
"""

import json
import os
import sys

import torch
import transformers
from transformers import Glm4MoeConfig, MixtralConfig, Qwen3MoeConfig
from transformers.models.glm4_moe.modeling_glm4_moe import Glm4MoeRotaryEmbedding
from transformers.models.mixtral.modeling_mixtral import MixtralRotaryEmbedding
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeRotaryEmbedding

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(REPO_ROOT, "tests", "fixtures", "rope", "cases.json")

BASE = dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            vocab_size=100, num_hidden_layers=1)

# (name, config class, rotary class, extra config kwargs, transformers-4 style rope_scaling or None)
CASES = [
    ("default", Qwen3MoeConfig, Qwen3MoeRotaryEmbedding,
     dict(head_dim=64, rope_parameters={"rope_type": "default", "rope_theta": 1e6}), None),
    ("linear", MixtralConfig, MixtralRotaryEmbedding,
     dict(head_dim=48, rope_parameters={"rope_type": "linear", "factor": 2.5, "rope_theta": 1e4}),
     {"type": "linear", "factor": 2.5}),
    ("dynamic", Qwen3MoeConfig, Qwen3MoeRotaryEmbedding,
     dict(head_dim=32, rope_parameters={"rope_type": "dynamic", "factor": 3.0, "rope_theta": 1e4}),
     {"type": "dynamic", "factor": 3.0}),
    # Qwen3-30B-A3B's model card: factor 4 over 32768 (here over 16 positions)
    ("yarn-qwen3", Qwen3MoeConfig, Qwen3MoeRotaryEmbedding,
     dict(head_dim=64, rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                        "original_max_position_embeddings": 16, "rope_theta": 1e6}),
     {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
    # DeepSeek-V3's: mscale and mscale_all_dim, beta_fast 32, beta_slow 1, factor 40
    ("yarn-mscale", Qwen3MoeConfig, Qwen3MoeRotaryEmbedding,
     dict(head_dim=64, rope_parameters={"rope_type": "yarn", "factor": 40.0, "beta_fast": 32, "beta_slow": 1,
                                        "mscale": 1.0, "mscale_all_dim": 0.707,
                                        "original_max_position_embeddings": 4, "rope_theta": 1e4}), None),
    ("yarn-untruncated", Qwen3MoeConfig, Qwen3MoeRotaryEmbedding,
     dict(head_dim=64, rope_parameters={"rope_type": "yarn", "factor": 8.0, "beta_fast": 16, "beta_slow": 2,
                                        "truncate": False, "attention_factor": 0.9,
                                        "original_max_position_embeddings": 8, "rope_theta": 5e5}), None),
    # truncate null: rope_parameters.get("truncate", True) is None, so not truncated
    ("yarn-truncate-null", Qwen3MoeConfig, Qwen3MoeRotaryEmbedding,
     dict(head_dim=64, rope_parameters={"rope_type": "yarn", "factor": 4.0, "truncate": None,
                                        "original_max_position_embeddings": 2048, "rope_theta": 1e4}), None),
    ("yarn-truncated", Qwen3MoeConfig, Qwen3MoeRotaryEmbedding,
     dict(head_dim=64, rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                        "original_max_position_embeddings": 2048, "rope_theta": 1e4}), None),
    ("llama3", MixtralConfig, MixtralRotaryEmbedding,
     dict(head_dim=64, rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
                                        "rope_theta": 5e5}),
     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 32}),
    ("glm-partial", Glm4MoeConfig, Glm4MoeRotaryEmbedding,
     dict(head_dim=64, partial_rotary_factor=0.5, rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
     None),
    ("glm-partial-yarn", Glm4MoeConfig, Glm4MoeRotaryEmbedding,
     dict(head_dim=48, partial_rotary_factor=0.5,
          rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                           "rope_theta": 1e4}), None),
]

DYNAMIC_POSITIONS = [10, 63, 64, 65, 100, 1000]


def main():
    torch.set_num_threads(1)
    out = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__}, "cases": []}
    for name, cfg_cls, rot_cls, kw, legacy in CASES:
        cfg = cfg_cls(**BASE, **kw)
        rot = rot_cls(cfg)
        case = {
            "name": name,
            "config": json.loads(cfg.to_json_string()),
            "inv_freq": [float(x) for x in rot.inv_freq],
            "attention_scaling": float(rot.attention_scaling),
        }
        if legacy is not None:
            c4 = json.loads(cfg.to_json_string())
            c4.pop("rope_parameters")
            c4["rope_theta"] = kw["rope_parameters"]["rope_theta"]
            c4["rope_scaling"] = legacy
            case["config_v4"] = c4
        if "partial_rotary_factor" in kw:
            # GLM's published config.json keeps partial_rotary_factor at the top level
            c4 = json.loads(cfg.to_json_string())
            c4["rope_parameters"].pop("partial_rotary_factor")
            c4["partial_rotary_factor"] = kw["partial_rotary_factor"]
            case["config_v4"] = c4
        if name == "dynamic":
            dyn = []
            x = torch.zeros(1, dtype=torch.float32)
            for pos in DYNAMIC_POSITIONS:
                rot(x, torch.tensor([[pos]]))  # a token decoded at pos
                dyn.append({"pos": pos, "inv_freq": [float(v) for v in rot.inv_freq]})
            case["dynamic"] = dyn
        out["cases"].append(case)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    sys.exit(main())
