"""The memory an engine may take on GPUs that share one pool with the CPU (GB10, Jetson).

There CUDA calls the whole pool the GPU's total, the OS and every other program live in it,
and an engine that takes its default fraction of it starves the host (vLLM refuses to start,
or the host stops answering during the profiling run). The budget comes from the host's
available memory, keeping back what the OS needs, and is capped at the fraction known to
start (profiles/memory.yaml, unified_memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from .catalog import load_profile
from .hardware import GPU, Hardware
from .units import gib


@dataclass(frozen=True)
class SharedPool:
    total: int          # what CUDA calls the GPU's total: the whole pool
    available: int      # what the host has available now (MemAvailable, the cgroup limit)
    keep_back: int      # for the OS, other programs and CUDA's lower reading of free memory
    fraction: float     # the engine's memory fraction of `total`
    reason: str
    source: str


def _facts() -> dict:
    return load_profile("memory.yaml")["unified_memory"]


def shared_pool(hw: Hardware, gpus: list[GPU]) -> SharedPool | None:
    """The budget of a shared pool, or None when the GPUs have memory of their own."""
    shared = [g for g in gpus if g.unified_memory and g.cuda_total_bytes]
    if not shared:
        return None
    g = shared[0]
    total = g.cuda_total_bytes
    candidates = [x for x in (hw.host.usable_ram_bytes, g.cuda_free_bytes) if x is not None]
    available = min(candidates) if candidates else total
    f = _facts()
    keep_back = f["os_reserve_bytes"] + f["cuda_free_shortfall_bytes"]
    fits = max(0.0, int((available - keep_back) / total * 100) / 100)
    fraction = min(f["max_fraction"], fits)
    why = (f"{fraction:.2f}: GPU and CPU share one {gib(total)} pool (unified memory: NVML reports no GPU memory, "
           f"CUDA's total is the host's); {gib(available)} is available on the host")
    if fits < f["max_fraction"]:
        why += (f", less {gib(f['os_reserve_bytes'])} kept for the OS and {gib(f['cuda_free_shortfall_bytes'])} "
                f"that CUDA's free reading falls short of it")
    else:
        why += (f"; capped at {f['max_fraction']}, as vLLM's start-up profiling overshoots its fraction on a "
                f"shared pool and a larger share has wedged the host (the engine default would ask for more)")
    source = "; ".join(dict.fromkeys([f["max_fraction_source"], f["os_reserve_source"], f["cuda_free_shortfall_source"]]))
    return SharedPool(total=total, available=available, keep_back=keep_back, fraction=fraction, reason=why,
                      source=source)
