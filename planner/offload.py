"""When the expert-offload fork is not worth running: what it would keep on the GPU, and what
it would take to keep enough there (profiles/engines.yaml, vllm-offload expert_cache)."""

from __future__ import annotations

from functools import cache

from .catalog import load_profile
from .hardware import Hardware
from .units import GiB, gib


@cache
def facts() -> dict:
    return load_profile("engines.yaml")["engines"]["vllm-offload"]["expert_cache"]


def host_ram_needed(expert_bytes: int) -> int:
    """Host RAM for the experts the GPU does not hold, kept in RAM rather than on disk."""
    return expert_bytes + 8 * GiB


def refusal(variant_id: str, resident: int, experts: int, slot_bytes: int, budget: int, cuda_total: int,
            cuda_free: int | None, expert_bytes: int, hw: Hardware, gpus) -> str:
    """One requirement line: the fork would keep `resident` of `experts` experts per layer."""
    need = facts()["min_resident_experts"]
    more = (need - resident) * slot_bytes
    ways = []
    if any(g.mig for g in gpus):
        ways.append(f"a MIG profile with {gib(cuda_total + more, 0)} or more")
    held = (cuda_total - cuda_free) if cuda_free is not None else 0
    if held > GiB:
        ways.append(f"free the GPU (other processes hold {gib(held)})")
    ways.append(f"a GPU with {gib(cuda_total + more, 0)} or more")
    line = (f"{variant_id} with the expert-offload fork: only {resident} of {experts} experts per layer would stay "
            f"on the GPU, and the fork is planned with {need} or more (profiles/engines.yaml min_resident_experts); "
            f"it would take {gib(more)} more for the engine: {'; or '.join(ways)}")
    usable = hw.host.usable_ram_bytes
    ram = host_ram_needed(expert_bytes)
    if usable is None or usable < ram:
        line += (f"; and {gib(ram, 0)} of host RAM for the experts not on the GPU "
                 f"({'unknown here' if usable is None else gib(usable) + ' here'}: below it they are read from disk)")
    return line
