"""The plan document (`qwenplan.plan/1`): every choice with its reason and source.

A stable, versioned contract: `plan --json` prints it, render/launch/export read it.
Fields are only ever added within a schema version.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA = "qwenplan.plan/1"

_NOT_A_FLAG = {"flag": False}


@dataclass
class Settings:
    """Every setting a plan can decide: the one place a setting is named.

    profiles/engines.yaml spells the flag fields per engine version (`args:`, loading refuses a
    name that is not a field here) and render spells them in this field order: what is served
    and where, then capacity, then behaviour, then llama-server's own. The plan document's
    `settings` object holds the fields its planner gave, in the order it gave them
    (`Settings.of`), so the document's layout does not depend on the spelling order.
    """

    model: str | None = field(default=None, metadata=_NOT_A_FLAG)   # the entry argv's {model}
    served_model_name: str | None = None
    host: str | None = None
    port: int | None = None
    tensor_parallel: int | None = None
    pipeline_parallel: int | None = None
    data_parallel: int | None = None
    expert_parallel: bool | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    kv_cache_dtype: str | None = None
    gpu_memory_utilization: float | None = None
    mem_fraction_static: float | None = None
    kv_cache_memory_bytes: int | None = None
    enforce_eager: bool | None = None
    speculative: dict | None = None
    mamba_cache_strategy: str | None = None
    expert_cache_size: int | None = None
    disable_vision: bool | None = None
    hf_overrides: dict | None = None
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    chat_template_kwargs: dict | None = None
    load_format: str | None = None           # set by `verify` (dummy weights), not by the planner
    skip_tokenizer_init: bool | None = None   # likewise
    gdn_prefill_backend: str | None = None    # likewise (benchmarks/gpu)
    # llama.cpp (llama-server): the GGUF, then placement, cache, threads, behaviour
    hf_repo: str | None = None
    hf_file: str | None = None
    model_path: str | None = None
    mmproj: str | None = None
    ctx_size: int | None = None
    parallel: int | None = None
    n_gpu_layers: int | str | None = None
    n_cpu_moe: int | None = None
    cache_type_k: str | None = None
    cache_type_v: str | None = None
    flash_attn: str | None = None
    threads: int | None = None
    ubatch_size: int | None = None
    load_mode: str | None = None
    fit: str | None = None
    ctx_checkpoints: int | None = None
    cache_ram_mib: int | None = None
    jinja: bool | None = None
    reasoning_format: str | None = None
    log_verbosity: int | None = None
    # not flags: rendered as they are (extra argv, environment) or read by launch
    extra_args: list[str] = field(default_factory=list, metadata=_NOT_A_FLAG)
    env: dict[str, str] = field(default_factory=dict, metadata=_NOT_A_FLAG)
    api_key_env: str | None = field(default=None, metadata=_NOT_A_FLAG)
    workarounds: list[str] = field(default_factory=list, metadata=_NOT_A_FLAG)

    @classmethod
    def of(cls, **values) -> "Settings":
        """The settings a planner gives; the document lists exactly these, in this order."""
        s = cls(**values)
        s._given = tuple(values)
        return s

    def put(self, key: str, value) -> None:
        """Set one setting by name (a workaround's `set:`); a name that is not a field fails."""
        if key not in SETTING_NAMES:
            raise KeyError(f"{key!r} is not a plan setting (planner/plan.py Settings)")
        setattr(self, key, value)
        if key not in self._given:
            self._given += (key,)

    def to_dict(self) -> dict[str, Any]:
        return {k: copy.deepcopy(getattr(self, k)) for k in getattr(self, "_given", SETTING_NAMES)}


SETTING_NAMES = tuple(f.name for f in fields(Settings))
# The settings engines.yaml spells as flags, in the order render spells them.
FLAG_SETTINGS = tuple(f.name for f in fields(Settings) if f.metadata.get("flag", True))


@dataclass
class Decision:
    key: str
    value: Any
    reason: str
    source: str


@dataclass
class Rejected:
    variant: str
    reason: str
    engine: str | None = None


@dataclass
class GpuMemory:
    """One GPU's budget as the memory model sees it (bytes)."""

    gpu: int
    name: str
    total_bytes: int
    budget_bytes: int          # what the engine may use: fraction x CUDA total
    weights_bytes: int
    expert_cache_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    cudagraph_bytes: int
    kv_cache_bytes: int        # what is left for KV blocks and DeltaNet state
    headroom_bytes: int        # free memory outside the budget

    @property
    def used_bytes(self) -> int:
        return (self.weights_bytes + self.expert_cache_bytes + self.activation_bytes + self.non_torch_bytes
                + self.cudagraph_bytes + self.kv_cache_bytes)


@dataclass
class Plan:
    model: str
    goal: str
    status: str                                  # "ok" or "infeasible"
    engine: dict[str, Any]
    variant: dict[str, Any]
    parallel: dict[str, Any]
    settings: dict[str, Any]
    memory: dict[str, Any]
    decisions: list[Decision] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    command: dict[str, Any] = field(default_factory=lambda: {"argv": [], "env": {}, "shell": ""})
    hardware: dict[str, Any] = field(default_factory=dict)
    requirements: list[str] = field(default_factory=list)   # for an infeasible plan: what it would take
    alternatives: list[dict] = field(default_factory=list)  # the best plan of each other variant that fits
    performance: dict[str, Any] = field(default_factory=dict)  # predicted speed (planner/speed.py)

    def decision(self, key: str) -> Decision | None:
        return next((d for d in self.decisions if d.key == key), None)

    def to_dict(self) -> dict[str, Any]:
        d = {"schema": SCHEMA}
        d.update(asdict(self))
        return d


def plan_from_dict(d: dict[str, Any]) -> Plan:
    """Read a plan document back (exports and launch take `--plan FILE` too)."""
    fields = {k: d.get(k) for k in ("model", "goal", "status", "engine", "variant", "parallel", "settings",
                                     "memory", "warnings", "command", "hardware", "requirements", "alternatives",
                                     "performance")}
    plan = Plan(**{k: (v if v is not None else ([] if k in ("warnings", "requirements", "alternatives") else {}))
                   for k, v in fields.items()})
    plan.decisions = [Decision(**x) for x in d.get("decisions") or []]
    plan.rejected = [Rejected(**x) for x in d.get("rejected") or []]
    return plan
