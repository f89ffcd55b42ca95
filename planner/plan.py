"""The plan document (`qwenplan.plan/1`): every choice with its reason and source.

A stable, versioned contract: `plan --json` prints it, render/launch/export read it.
Fields are only ever added within a schema version.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA = "qwenplan.plan/1"


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
