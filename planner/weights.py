"""Weight bytes of a checkpoint: on disk, and per GPU once an engine has loaded it.

A checkpoint's recipe (profiles/variants.yaml `weights:`) names a storage format for each
module class; profiles/formats.yaml says what each format costs per weight (packed bits plus
group scales, zero points and GPTQ's g_idx). Nothing here is tabled per checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .catalog import load_profile
from .errors import InputError
from .model import Shape, Tensor, tensors
from .units import ceil_div


@dataclass(frozen=True)
class Format:
    id: str
    bits: int
    group: int | str | None = None   # weights per scale along the input dim, 'channel' (one per row)
    block: tuple[int, int] | None = None  # 2-D blocks (FP8 128x128), one scale each
    scale_bytes: int = 0
    zero_bits: int = 0
    g_idx: bool = False              # GPTQ's int32 group index per input channel
    ggml_block: tuple[int, int] | None = None  # GGUF: (weights per block along a row, bytes per block)

    def bytes(self, t: Tensor) -> int:
        n = t.params
        if self.bits >= 16:
            return n * self.bits // 8
        if t.cls in UNQUANTIZED_CLASSES:
            return n * 2
        rows, cols = (n, 1) if t.cls == "vision" else (t.rows * t.count, t.cols)
        if self.ggml_block:
            # ggml quantizes whole rows in blocks; a row shorter than a block would not load
            weights, size = self.ggml_block
            return rows * ceil_div(cols, weights) * size
        if self.block:
            scales = ceil_div(n, self.block[0] * self.block[1]) if cols == 1 else \
                ceil_div(t.rows, self.block[0]) * ceil_div(cols, self.block[1]) * t.count
        elif self.group == "channel":
            scales = rows if cols > 1 else ceil_div(n, VISION_ROW)
        elif self.group:
            scales = ceil_div(cols, int(self.group)) * rows if cols > 1 else ceil_div(n, int(self.group))
        else:
            scales = 0
        size = n * self.bits // 8 + scales * self.scale_bytes + scales * self.zero_bits // 8
        if self.g_idx and cols > 1:
            size += cols * 4 * t.count
        return size


# Norms, conv taps, A_log and dt_bias stay in 16 bits in every published recipe.
UNQUANTIZED_CLASSES = frozenset({"norm", "linear_attn_small"})
# The vision tower is counted as one blob of parameters; its typical row is the ViT width.
VISION_ROW = 1152


@lru_cache(maxsize=1)
def formats() -> dict[str, Format]:
    out = {}
    for fid, d in load_profile("formats.yaml")["formats"].items():
        block = tuple(d["ggml_block"]) if d.get("ggml_block") else None
        out[fid] = Format(id=fid, bits=d.get("bits") or block[1] * 8 // block[0], group=d.get("group"), ggml_block=block,
                          block=tuple(d["block"]) if d.get("block") else None, scale_bytes=d.get("scale_bytes", 0),
                          zero_bits=d.get("zero_bits", 0), g_idx=bool(d.get("g_idx")))
    return out


@dataclass(frozen=True)
class Recipe:
    """Which format stores which tensors, read from a variant's `weights:` mapping."""

    default: str
    classes: tuple[tuple[str, str], ...]      # (class or part.class, format)
    layers: tuple[tuple[frozenset, str], ...]  # (layer indices, format for all their tensors)
    includes_mtp: bool
    includes_vision: bool

    @staticmethod
    def from_dict(d: dict, where: str) -> "Recipe":
        known = formats()
        def check(f):
            if f not in known:
                raise InputError(f"{where}: unknown weight format {f!r}", f"known: {', '.join(known)}")
            return f
        classes = tuple((k, check(v)) for k, v in (d.get("classes") or {}).items())
        layers = tuple((frozenset(o["layers"]), check(o["format"])) for o in d.get("layers") or ())
        return Recipe(default=check(d.get("default", "bf16")), classes=classes, layers=layers,
                      includes_mtp=bool(d.get("mtp", False)), includes_vision=bool(d.get("vision", False)))

    def format_of(self, t: Tensor) -> Format:
        table = formats()
        if t.layer is not None:
            for layers, fmt in self.layers:
                if t.layer in layers:
                    return table[fmt]
        rules = dict(self.classes)
        sub = f"{t.cls}.{t.sub}" if t.sub else None   # e.g. experts.down: GGUF K-quant mixes keep it wider
        for key in (f"{t.part}.{t.cls}", f"{t.part}.*" if t.part != "text" else None, sub, t.cls):
            if key and key in rules:
                return table[rules[key]]
        return table[self.default]


@dataclass(frozen=True)
class WeightBytes:
    experts: int
    non_expert: int
    mtp: int
    vision: int

    @property
    def total(self) -> int:
        return self.experts + self.non_expert + self.mtp + self.vision


def disk_bytes(recipe: Recipe, shape: Shape, vision_params: int) -> WeightBytes:
    """Bytes of the checkpoint's tensors, split the way the planner needs them."""
    parts = {"experts": 0, "non_expert": 0, "mtp": 0, "vision": 0}
    for t in tensors(shape, vision_params):
        if t.part == "mtp" and not recipe.includes_mtp or t.part == "vision" and not recipe.includes_vision:
            continue
        b = recipe.format_of(t).bytes(t)
        key = t.part if t.part != "text" else ("experts" if t.cls == "experts" else "non_expert")
        parts[key] += b
    return WeightBytes(**parts)


def _per_rank(t: Tensor, size: int, tp: int, ep: int, kv_heads: int) -> int:
    if t.shard == "replicated":
        return size
    if t.shard == "kv":  # 2 KV heads: one per rank at TP 2, replicated beyond
        return size * max(1, kv_heads // tp) // kv_heads
    if t.shard == "expert" and ep > 1:
        return ceil_div(size, ep)
    return ceil_div(size, tp)


@dataclass(frozen=True)
class Loaded:
    """What one GPU holds after loading: the split the memory model and `explain` show."""

    experts: int
    non_expert: int
    mtp: int
    vision: int
    expert_per_layer_each: int   # bytes of one routed expert of one layer (for the offload cache)

    @property
    def total(self) -> int:
        return self.experts + self.non_expert + self.mtp + self.vision


@lru_cache(maxsize=64)
def _sized_tensors(recipe: Recipe, shape: Shape, vision_params: int) -> tuple[tuple[Tensor, int], ...]:
    """Every tensor with its bytes in the recipe's format (the same for every TP/EP layout)."""
    return tuple((t, recipe.format_of(t).bytes(t)) for t in tensors(shape, vision_params))


def loaded_bytes(recipe: Recipe, shape: Shape, vision_params: int, *, tp: int = 1, ep: int = 1,
                 mtp: bool = False, vision: bool = False) -> Loaded:
    """Per-GPU weights once an engine loads the checkpoint with tensor parallel `tp` and
    expert parallel `ep` (experts split whole over `ep` ranks), with or without MTP/vision."""
    parts = {"experts": 0, "non_expert": 0, "mtp": 0, "vision": 0}
    one_expert = 0
    for t, size in _sized_tensors(recipe, shape, vision_params):
        if t.part == "mtp" and not (mtp and recipe.includes_mtp):
            continue
        if t.part == "vision" and not (vision and recipe.includes_vision):
            continue
        key = t.part if t.part != "text" else ("experts" if t.cls == "experts" else "non_expert")
        parts[key] += _per_rank(t, size, tp, ep, shape.kv_heads)
        if t.part == "text" and t.cls == "experts" and t.layer == 0:
            one_expert += size // shape.experts
    return Loaded(**parts, expert_per_layer_each=one_expert)
