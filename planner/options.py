"""What a plan is asked for (PlanOptions) and the goals it is planned for (profiles/goals.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .catalog import load_profile

DEFAULT_MODEL = "qwen3.6-35b-a3b"
GOALS = ("balanced", "long-context", "throughput")
TP_SIZES = (1, 2, 4, 8)
MTP_TOKENS = 2
MTP_SOURCE = ("https://huggingface.co/palmfuture/Qwen3.6-35B-A3B-GPTQ-Int4 (num_speculative_tokens 2); "
              "https://huggingface.co/Qwen/Qwen3.6-35B-A3B (MTP speculative decoding)")


@dataclass(frozen=True)
class PlanOptions:
    model: str | None = None
    goal: str = "balanced"
    engine: str = "auto"
    engine_version: str | None = None
    variant: str | None = None
    context: int | None = None
    concurrency: int | None = None
    kv_dtype: str | None = None
    mtp: bool | None = None           # False: --no-mtp
    vision: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    served_name: str | None = None
    nodes: int = 1
    measured: dict | None = None      # calibration key -> latest engine report (launch/calibration.py)
    # What a retry pins after a failed start (launch/diagnose.py, profiles/failures.yaml):
    eager: bool = False               # no CUDA graphs
    utilization: float | None = None  # the memory fraction, in place of the engine's default


@lru_cache(maxsize=None)
def goals() -> dict:
    return load_profile("goals.yaml")["goals"]
