"""Hardware we only imagine (`--gpu NAME --gpus N --ram SIZE --disk SIZE`): the same document
as the probe writes, filled from the GPU profiles instead of NVML."""

from __future__ import annotations

from .catalog import require_gpu
from .errors import InputError
from .hardware import ASSUMED_RESERVED_BYTES, GPU, MAX_GPUS, Hardware, Host
from .units import gib




def _check_count(names: list[str], count: int | None) -> None:
    """Refuse a GPU count that is not one, that is said two ways, or that is more than one box holds."""
    if count is not None and count < 1:
        raise InputError(f"--gpus {count} is not a GPU count", "give 1 or more")
    if len(names) > 1 and count is not None:
        raise InputError(f"--gpus {count} with {len(names)} --gpu names: say the count one way",
                         "use --gpus with a single --gpu, or list each GPU with its own --gpu")
    if max(count or 0, len(names)) > MAX_GPUS:
        raise InputError(f"{max(count or 0, len(names))} GPUs in one box is more than qwenplan plans for "
                         f"(at most {MAX_GPUS})", f"plan one box of up to {MAX_GPUS} and add --nodes N")


def _nvlinked(profiles) -> bool:
    """NVLink is assumed only among several boards of one NVLink-capable model."""
    return len(profiles) > 1 and all(p.nvlink for p in profiles) and len({p.id for p in profiles}) == 1


def _imagined_gpus(profiles, linked: bool, ram: int | None) -> tuple[list[GPU], int | None]:
    """The GPUs as the probe would describe them, and the shared memory pool (None unless a GPU
    shares the host's memory)."""
    gpus = []
    pool = None
    for i, p in enumerate(profiles):
        total = p.visible_memory_bytes
        # A GPU that shares the host's memory: CUDA's total is the pool, no separate reserve,
        # and what is free is what the host has available (--ram, or the whole pool).
        reserved = 0 if p.shares_host_memory else ASSUMED_RESERVED_BYTES
        free = min(ram, total) if p.shares_host_memory and ram is not None else total - reserved
        pool = total if p.shares_host_memory else pool
        gpus.append(GPU(
            index=i, name=p.name, memory_total_bytes=total, memory_free_bytes=free,
            memory_reserved_bytes=reserved, compute_capability=p.compute_capability,
            nvlink_peers=[j for j in range(len(profiles)) if j != i] if linked else [],
            unified_memory=p.shares_host_memory,
        ))
    return gpus, pool


def _memory_note(pool: int | None, ram: int | None) -> str | None:
    """What the plan assumes about host memory, or None when --ram says it for discrete GPUs."""
    if pool is not None:
        return (f"unified memory: GPU and CPU share one {gib(pool)} pool; host memory available assumed "
                + (f"{gib(ram)} (--ram)" if ram is not None else "the whole pool (give --ram for less)"))
    if ram is None:
        return "host RAM not given (--ram): plans that keep experts in host RAM cannot be checked"
    return None


def what_if(names: list[str], count: int | None = None, ram: int | None = None,
            disk: int | None = None) -> Hardware:
    _check_count(names, count)
    profiles = [require_gpu(n) for n in names]
    if len(profiles) == 1 and count:
        profiles = profiles * count
    notes = [f"what-if hardware: no probing; GPU facts from profiles/gpus.yaml, "
             f"{ASSUMED_RESERVED_BYTES >> 20} MiB per GPU assumed reserved by the driver"]
    linked = _nvlinked(profiles)
    if linked:
        notes.append("NVLink between all GPUs assumed (the profile says this board is NVLink-capable)")
    gpus, pool = _imagined_gpus(profiles, linked, ram)
    note = _memory_note(pool, ram)
    if note is not None:
        notes.append(note)
    host = Host(ram_total_bytes=pool if pool is not None else ram,
                ram_available_bytes=ram if ram is not None else pool, disk_free_bytes=disk,
                disk_path="~/.cache/huggingface/hub" if disk is not None else None)
    return Hardware(gpus=gpus, host=host, notes=notes, origin="what-if")
