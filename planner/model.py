"""The model's shapes, read from its config.json, and every weight tensor they imply.

Weight bytes are computed from these tensors and a checkpoint's quantization recipe, not
tabled: the published sizes in profiles/variants.yaml only check the arithmetic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from .catalog import load_profile, profile_text
from .errors import InputError


@dataclass(frozen=True)
class Shape:
    """transformers' Qwen3_5MoeTextConfig, the fields that size memory."""

    layer_types: tuple[str, ...]
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    attn_output_gate: bool
    lin_k_heads: int
    lin_v_heads: int
    lin_k_dim: int
    lin_v_dim: int
    conv_kernel: int
    experts: int
    experts_per_token: int
    moe_intermediate: int
    shared_intermediate: int
    vocab: int
    tie_embeddings: bool
    max_position: int
    mtp_layers: int
    mamba_ssm_dtype: str
    torch_dtype: str

    @property
    def layers(self) -> int:
        return len(self.layer_types)

    @property
    def full_attention_layers(self) -> int:
        return sum(1 for t in self.layer_types if t == "full_attention")

    @property
    def linear_layers(self) -> int:
        return sum(1 for t in self.layer_types if t == "linear_attention")

    @property
    def conv_dim(self) -> int:
        """Channels of the DeltaNet causal conv: q and k (key heads) plus v (value heads)."""
        return self.lin_k_heads * self.lin_k_dim * 2 + self.lin_v_heads * self.lin_v_dim


@dataclass(frozen=True)
class Model:
    id: str
    name: str
    shape: Shape
    native_context: int
    min_thinking_context: int
    vision_params: int
    yarn: dict | None
    sources: tuple[str, ...]
    config: dict


def shape_from_config(config: dict) -> Shape:
    t = config.get("text_config", config)
    interval = t.get("full_attention_interval", 4)
    layer_types = t.get("layer_types") or [
        "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(t["num_hidden_layers"])
    ]
    return Shape(
        layer_types=tuple(layer_types), hidden=t["hidden_size"], heads=t["num_attention_heads"],
        kv_heads=t["num_key_value_heads"], head_dim=t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"],
        attn_output_gate=bool(t.get("attn_output_gate", True)), lin_k_heads=t["linear_num_key_heads"],
        lin_v_heads=t["linear_num_value_heads"], lin_k_dim=t["linear_key_head_dim"],
        lin_v_dim=t["linear_value_head_dim"], conv_kernel=t["linear_conv_kernel_dim"], experts=t["num_experts"],
        experts_per_token=t["num_experts_per_tok"], moe_intermediate=t["moe_intermediate_size"],
        shared_intermediate=t.get("shared_expert_intermediate_size", 0), vocab=t["vocab_size"],
        tie_embeddings=bool(t.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
        max_position=t["max_position_embeddings"], mtp_layers=t.get("mtp_num_hidden_layers", 0),
        mamba_ssm_dtype=t.get("mamba_ssm_dtype") or "bfloat16",
        torch_dtype=config.get("torch_dtype") or t.get("torch_dtype") or "bfloat16",
    )


@lru_cache(maxsize=None)
def models() -> dict[str, Model]:
    out = {}
    for d in load_profile("models.yaml")["models"]:
        config = json.loads(profile_text(d["config"]))
        out[d["id"]] = Model(
            id=d["id"], name=d["name"], shape=shape_from_config(config), native_context=d["native_context"],
            min_thinking_context=d.get("min_thinking_context", 0), vision_params=d.get("vision_params", 0),
            yarn=d.get("yarn"), sources=tuple(d.get("sources") or ()), config=config,
        )
    return out


def get_model(model_id: str) -> Model:
    try:
        return models()[model_id]
    except KeyError:
        raise InputError(f"unknown model {model_id!r}", f"known: {', '.join(models())}")


# --- every weight tensor --------------------------------------------------------------------

@dataclass(frozen=True)
class Tensor:
    """A group of identical weight tensors.

    cls: the module class a quantization recipe speaks of (experts, attention, linear_attn, ...).
    layer: decoder layer index, or None; MTP tensors have part='mtp', the vision tower 'vision'.
    rows x cols: the weight's [out, in] shape; count: how many such tensors.
    shard: how tensor parallelism splits it: 'col' (out), 'row' (in), 'vocab', 'kv' (split up
    to the KV head count, replicated beyond), 'expert' (each expert's intermediate under TP,
    whole experts under EP), 'replicated'.
    """

    cls: str
    rows: int
    cols: int
    count: int = 1
    shard: str = "col"
    layer: int | None = None
    part: str = "text"
    sub: str = ""        # which projection within the class, where recipes treat it apart ('down')

    @property
    def params(self) -> int:
        return self.rows * self.cols * self.count


def _decoder_layer(s: Shape, kind: str, layer: int | None, part: str) -> list[Tensor]:
    T = lambda *a, **k: Tensor(*a, layer=layer, part=part, **k)  # noqa: E731
    h = s.hidden
    out = [T("norm", h, 1, 2, "replicated")]  # input and post-attention layernorms
    if kind == "full_attention":
        q_rows = s.heads * s.head_dim * (2 if s.attn_output_gate else 1)
        out += [T("attention", q_rows, h), T("attention", s.kv_heads * s.head_dim, h, 2, "kv"),
                T("attention", h, s.heads * s.head_dim, 1, "row"), T("norm", s.head_dim, 1, 2, "replicated")]
    else:
        v = s.lin_v_heads * s.lin_v_dim
        out += [T("linear_attn", s.conv_dim, h), T("linear_attn", v, h), T("linear_attn", h, v, 1, "row"),
                T("linear_attn_small", s.lin_v_heads, h, 2),            # in_proj_a, in_proj_b
                T("linear_attn_small", s.conv_dim, s.conv_kernel),       # conv1d
                T("linear_attn_small", s.lin_v_heads, 1, 2),             # A_log, dt_bias
                T("norm", s.lin_v_dim, 1, 1, "replicated")]
    i, si = s.moe_intermediate, s.shared_intermediate
    out += [T("router", s.experts, h, 1, "replicated"),
            T("experts", i, h, 2 * s.experts, "expert"), T("experts", h, i, s.experts, "expert", sub="down"),
            T("shared_expert", si, h, 2), T("shared_expert", h, si, 1, "row", sub="down"),
            T("shared_expert_gate", 1, h, 1, "replicated")]
    return out


@lru_cache(maxsize=None)
def tensors(s: Shape, vision_params: int) -> tuple[Tensor, ...]:
    h = s.hidden
    out = [Tensor("embed", s.vocab, h, shard="vocab")]
    if not s.tie_embeddings:
        out.append(Tensor("lm_head", s.vocab, h, shard="vocab"))
    out.append(Tensor("norm", h, 1, shard="replicated"))
    for layer, kind in enumerate(s.layer_types):
        out += _decoder_layer(s, kind, layer, "text")
    for _m in range(s.mtp_layers):
        # MTP: fc over [embedding; hidden], two pre-fc norms, one full-attention MoE layer, a norm.
        out += [Tensor("mtp_fc", h, 2 * h, part="mtp"), Tensor("norm", h, 1, 3, "replicated", part="mtp")]
        out += _decoder_layer(s, "full_attention", None, "mtp")
    if vision_params:
        out.append(Tensor("vision", vision_params, 1, part="vision"))
    return tuple(out)


def param_count(s: Shape, vision_params: int = 0, parts: tuple[str, ...] = ("text", "mtp", "vision")) -> int:
    return sum(t.params for t in tensors(s, vision_params) if t.part in parts)
