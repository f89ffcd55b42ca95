"""Checkpoint variants (profiles/variants.yaml): what each stores and who loads it."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache, cached_property

from .catalog import load_profile
from .errors import InputError
from .model import Model, get_model
from .weights import Recipe, WeightBytes, disk_bytes


@dataclass(frozen=True)
class Variant:
    id: str
    model_id: str
    name: str
    repo: str
    format: str
    recipe: Recipe
    quality: int
    quality_note: str
    multimodal_config: bool
    tags: frozenset
    requires: dict
    engines: dict                      # engine id -> {min, verified, args, env}
    problems: tuple = ()
    sources: tuple = ()
    published_size_bytes: int | None = None
    revision: str = "main"
    verified: bool = True
    raw: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def model(self) -> Model:
        return get_model(self.model_id)

    @cached_property
    def disk(self) -> WeightBytes:
        """Bytes on disk, computed from the recipe and the model's shapes."""
        m = self.model
        return disk_bytes(self.recipe, m.shape, m.vision_params)

    @property
    def has_mtp(self) -> bool:
        return self.recipe.includes_mtp

    @property
    def has_vision(self) -> bool:
        return self.recipe.includes_vision

    @property
    def offloadable(self) -> bool:
        return "offloadable" in self.tags

    def max_tensor_parallel(self) -> int | None:
        return self.requires.get("max_tensor_parallel")

    def min_compute_capability(self) -> str | None:
        return self.requires.get("min_compute_capability")


def _variant(d: dict) -> Variant:
    where = f"profiles/variants.yaml: {d.get('id')}"
    return Variant(
        id=d["id"], model_id=d["model"], name=d["name"], repo=d["repo"], format=d["format"],
        recipe=Recipe.from_dict(d["weights"], where), quality=int(d["quality"]), quality_note=d.get("quality_note", ""),
        multimodal_config=bool(d.get("multimodal_config")), tags=frozenset(d.get("tags") or ()),
        requires=dict(d.get("requires") or {}), engines=dict(d.get("engines") or {}),
        problems=tuple(d.get("problems") or ()), sources=tuple(d.get("sources") or ()),
        published_size_bytes=d.get("published_size_bytes"), revision=d.get("revision", "main"),
        verified=d.get("verified", True), raw=d,
    )


@lru_cache(maxsize=None)
def variants() -> tuple[Variant, ...]:
    return tuple(_variant(d) for d in load_profile("variants.yaml")["variants"])


def variants_of(model_id: str) -> tuple[Variant, ...]:
    return tuple(v for v in variants() if v.model_id == model_id)


def get_variant(variant_id: str) -> Variant:
    for v in variants():
        if v.id == variant_id or v.repo.lower() == variant_id.lower():
            return v
    raise InputError(f"unknown variant {variant_id!r}",
                     f"pick one of: {', '.join(v.id for v in variants())} (see `qwenplan variants`)")
