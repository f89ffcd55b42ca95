"""Disk for the checkpoint: does a variant fit the free disk at the Hugging Face cache?

The probe records the free disk where huggingface_hub downloads (host.disk_free_bytes at
host.disk_path) and the bytes of each known checkpoint already there (host.hf_cached_bytes);
`--disk` gives the free disk of a what-if box. Unknown free disk fits everything.
"""

from __future__ import annotations

from .hardware import Hardware
from .plan import Decision
from .units import gib
from .variants import Variant

SOURCE = ("https://huggingface.co/docs/huggingface_hub/guides/manage-cache (HF_HOME, HF_HUB_CACHE); "
          "profiles/flags/vllm-0.32.0.txt (--download-dir)")


def still_to_download(v: Variant, hw: Hardware) -> int:
    return max(0, v.disk.total - (hw.host.hf_cached_bytes or {}).get(v.repo, 0))


def shortfall(v: Variant, hw: Hardware) -> int:
    """Bytes of disk missing for this checkpoint (0 when it fits or the free disk is unknown)."""
    free = hw.host.disk_free_bytes
    return 0 if free is None else max(0, still_to_download(v, hw) - free)


def _where(hw: Hardware) -> str:
    return hw.host.disk_path or "the Hugging Face cache"


def rejection(v: Variant, hw: Hardware) -> str:
    return (f"needs {gib(still_to_download(v, hw))} of disk, {gib(hw.host.disk_free_bytes)} free at {_where(hw)} "
            f"(a variant that fits the disk is preferred)")


def warning(v: Variant, hw: Hardware) -> str:
    need = still_to_download(v, hw)
    return (f"the checkpoint needs {gib(need)} of disk but {_where(hw)} has {gib(hw.host.disk_free_bytes)} free "
            f"({gib(shortfall(v, hw))} short) and no variant fits: point HF_HOME at a disk with {gib(need)} free, "
            f"or pass --download-dir DIR on such a disk to the engine")


def decision(v: Variant, hw: Hardware) -> Decision:
    free = hw.host.disk_free_bytes
    need = still_to_download(v, hw)
    cached = v.disk.total - need
    if free is None:
        why = f"{gib(need)} to download; the free disk is unknown (give --disk for a what-if box)"
    else:
        why = (f"{gib(need)} to download{f' ({gib(cached)} already in the cache)' if cached else ''}, "
               f"{gib(free)} free at {_where(hw)}" + ("" if need <= free else f": {gib(need - free)} short"))
    return Decision("disk", v.disk.total, why, SOURCE)
