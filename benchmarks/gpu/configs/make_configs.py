#!/usr/bin/env python3
"""Write the served model folders' config.json files (dummy weights need nothing else).

bf16/config.json: the model's config as transformers' Qwen3_5MoeConfig writes it (copied from
shared/gpu-truth/qwen3.6-35b-a3b-config.json, which real vLLM 0.26.0 served on an H100).
fp8/config.json: the same plus the quantization_config of Qwen/Qwen3.6-35B-A3B-FP8, reconstructed
field by field (sources in README.md beside this file). vLLM's Fp8Config matches
modules_to_not_convert by exact module name (quant_utils.is_layer_skipped, prefix_full_match),
so the list names every layer, as Qwen's FP8 checkpoints do.
"""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def not_converted(cfg: dict) -> list[str]:
    text = cfg["text_config"]
    names = ["lm_head", "model.language_model.embed_tokens"]
    for i, kind in enumerate(text["layer_types"]):
        p = f"model.language_model.layers.{i}"
        if kind == "linear_attention":
            # in_proj_a / in_proj_b: 32 outputs each, not a multiple of the 128-wide weight block
            names += [f"{p}.linear_attn.in_proj_a", f"{p}.linear_attn.in_proj_b"]
        names += [f"{p}.mlp.gate", f"{p}.mlp.shared_expert_gate"]
    vis = cfg["vision_config"]
    for j in range(vis["depth"]):
        p = f"model.visual.blocks.{j}"
        names += [f"{p}.attn.qkv", f"{p}.attn.proj", f"{p}.mlp.linear_fc1", f"{p}.mlp.linear_fc2"]
    names += ["model.visual.merger.linear_fc1", "model.visual.merger.linear_fc2"]
    return names


def main() -> None:
    cfg = json.loads((HERE / "bf16" / "config.json").read_text())
    # The published config states the hybrid pattern twice: layer_types and full_attention_interval
    # (shared/research/model-and-checkpoints.md). transformers' dump keeps only layer_types; SGLang
    # 0.5.14 reads the interval (srt/configs/qwen3_next.py layers_block_type) and stops without it.
    cfg["text_config"]["full_attention_interval"] = 4
    (HERE / "bf16" / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    fp8 = dict(cfg)
    fp8["quantization_config"] = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": [128, 128],
        "modules_to_not_convert": not_converted(cfg),
    }
    (HERE / "fp8").mkdir(exist_ok=True)
    (HERE / "fp8" / "config.json").write_text(json.dumps(fp8, indent=1) + "\n")


if __name__ == "__main__":
    main()
