"""Write a tiny random-weight GGUF of Qwen3.6-35B-A3B's architecture (`qwen35moe`).

The shapes come from a Qwen3_5MoeTextConfig-style JSON (tests/llamacpp/tiny-config.json), the
tensor names and metadata keys are those llama.cpp's own converter writes for this architecture
(convert_hf_to_gguf.py, class Qwen3_5MoeTextModel; gguf-py MODEL_TENSORS[QWEN35MOE]), and each
tensor is stored in the ggml type a recipe gives its class, the same recipe mapping
profiles/variants.yaml uses (`default` plus `classes`), so the planner's byte count can be
compared with what llama-server reports for the file.

    python tests/llamacpp/tiny_gguf.py OUT.gguf [--config FILE] [--default q8_0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gguf
import numpy as np

HERE = Path(__file__).resolve().parent
# What llama-quantize leaves unquantized (src/llama-quant.cpp: norms, ffn_gate_inp, ssm_conv1d;
# 1-D tensors are never quantized), so the tiny file has the layout of a real quant.
DEFAULT_RECIPE = {"default": "q8_0", "classes": {"norm": "f32", "linear_attn_small": "f32", "router": "f32",
                                                 "shared_expert_gate": "f32"}}
TYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
         "q8_0": gguf.GGMLQuantizationType.Q8_0}
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _byte_tokens() -> list[str]:
    """GPT-2's byte-level alphabet: one token per byte, so any text tokenizes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def tensors(c: dict):
    """(name, numpy shape, planner class) of every tensor, in llama.cpp's naming."""
    h, L = c["hidden_size"], c["num_hidden_layers"]
    hd, nh, nkv = c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]
    kdim, vdim = c["linear_key_head_dim"], c["linear_value_head_dim"]
    key_dim, value_dim = kdim * c["linear_num_key_heads"], vdim * c["linear_num_value_heads"]
    nv = c["linear_num_value_heads"]
    E, ff, sff = c["num_experts"], c["moe_intermediate_size"], c["shared_expert_intermediate_size"]
    interval = c.get("full_attention_interval", 4)
    out = [("token_embd.weight", (c["vocab_size"], h), "embed"), ("output_norm.weight", (h,), "norm"),
           ("output.weight", (c["vocab_size"], h), "lm_head")]
    for i in range(L):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (h,), "norm"), (b + "post_attention_norm.weight", (h,), "norm")]
        if (i + 1) % interval == 0:
            out += [(b + "attn_q.weight", (nh * hd * 2, h), "attention"), (b + "attn_k.weight", (nkv * hd, h), "attention"),
                    (b + "attn_v.weight", (nkv * hd, h), "attention"), (b + "attn_output.weight", (h, nh * hd), "attention"),
                    (b + "attn_q_norm.weight", (hd,), "norm"), (b + "attn_k_norm.weight", (hd,), "norm")]
        else:
            conv = key_dim * 2 + value_dim
            out += [(b + "attn_qkv.weight", (conv, h), "linear_attn"), (b + "attn_gate.weight", (value_dim, h), "linear_attn"),
                    (b + "ssm_out.weight", (h, value_dim), "linear_attn"),
                    (b + "ssm_alpha.weight", (nv, h), "linear_attn_small"), (b + "ssm_beta.weight", (nv, h), "linear_attn_small"),
                    (b + "ssm_conv1d.weight", (conv, c["linear_conv_kernel_dim"]), "linear_attn_small"),
                    (b + "ssm_a", (nv,), "linear_attn_small"), (b + "ssm_dt.bias", (nv,), "linear_attn_small"),
                    (b + "ssm_norm.weight", (vdim,), "norm")]
        out += [(b + "ffn_gate_inp.weight", (E, h), "router"),
                (b + "ffn_gate_exps.weight", (E, ff, h), "experts"), (b + "ffn_up_exps.weight", (E, ff, h), "experts"),
                (b + "ffn_down_exps.weight", (E, h, ff), "experts"),
                (b + "ffn_gate_inp_shexp.weight", (h,), "shared_expert_gate"),
                (b + "ffn_gate_shexp.weight", (sff, h), "shared_expert"), (b + "ffn_up_shexp.weight", (sff, h), "shared_expert"),
                (b + "ffn_down_shexp.weight", (h, sff), "shared_expert")]
    return out


def write(path: str | Path, config: dict, recipe: dict = DEFAULT_RECIPE, seed: int = 0) -> Path:
    c = config
    path = Path(path)
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "qwen35moe")
    w.add_name("qwen3.6-35b-a3b tiny random")
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["moe_intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_key_length(c["head_dim"])
    w.add_value_length(c["head_dim"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    rope = c["rope_parameters"]
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_rope_dimension_count(int(c["head_dim"] * rope["partial_rotary_factor"]))
    w.add_rope_dimension_sections(list(rope["mrope_section"]) + [0] * (4 - len(rope["mrope_section"])))
    w.add_expert_count(c["num_experts"])
    w.add_expert_used_count(c["num_experts_per_tok"])
    w.add_expert_feed_forward_length(c["moe_intermediate_size"])
    w.add_expert_shared_feed_forward_length(c["shared_expert_intermediate_size"])
    w.add_ssm_conv_kernel(c["linear_conv_kernel_dim"])
    w.add_ssm_state_size(c["linear_key_head_dim"])
    w.add_ssm_group_count(c["linear_num_key_heads"])
    w.add_ssm_time_step_rank(c["linear_num_value_heads"])
    w.add_ssm_inner_size(c["linear_value_head_dim"] * c["linear_num_value_heads"])
    w.add_full_attention_interval(c.get("full_attention_interval", 4))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    # tokenizer: byte-level BPE with one merge (llama.cpp refuses a BPE vocabulary without merges)
    tokens = _byte_tokens() + ["Ġh"] + SPECIAL
    tokens += [f"<unused{i}>" for i in range(c["vocab_size"] - len(tokens))]
    assert len(tokens) == c["vocab_size"], "vocab_size must hold the 256 bytes, one merge and the specials"
    types = [gguf.TokenType.NORMAL] * 257 + [gguf.TokenType.CONTROL] * (len(tokens) - 257)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen35")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["Ġ h"])
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    classes = dict(recipe.get("classes") or {})
    for name, shape, cls in tensors(c):
        kind = classes.get(cls, recipe.get("default", "q8_0"))
        if len(shape) == 1:
            kind = "f32"                     # 1-D tensors stay float32 in every GGUF
        data = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        if name.endswith("ssm_a"):
            data = -np.abs(data) - 0.1       # A = -exp(A_log) < 0: the recurrent state decays
        if name.endswith("norm.weight"):
            data = np.ones(shape, np.float32)
        qtype = TYPES[kind]
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--config", default=str(HERE / "tiny-config.json"))
    args = ap.parse_args()
    print(write(args.out, json.loads(Path(args.config).read_text())))


if __name__ == "__main__":
    main()
