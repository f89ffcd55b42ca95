"""Loading the knowledge in profiles/ (YAML, every fact with its source)."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .capability import parse_cc
from .errors import InputError
from .units import MiB


def _yaml_load(text: str) -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster, keeps explain quick
    return yaml.load(text, Loader=loader)


MAX_CACHE_BYTES = 16 << 20


def _parsed_cache(text: str) -> tuple[Path, str]:
    """Where the parsed form of this exact text is kept, and the text's key: parsing YAML costs
    ~10 ms a file even with libyaml, and `explain` must stay well under 200 ms. Keyed by the
    content's hash, so an edited profile is never read stale."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Path(base) / "qwenplan" / "profiles" / f"{digest[:32]}.json", digest


def _read_cache(path: Path, key: str) -> Any:
    """The cached parse, or None on any doubt. The file is a header line (the text's key and the
    hash of the data below it) and the data as JSON: a file that is not regular, not ours, edited
    or cut short is a miss, never believed and never a crash."""
    from qwenplan.launch.files import read_regular

    try:
        raw = read_regular(path, MAX_CACHE_BYTES)
        head, _, body = raw.partition(b"\n")
        header = json.loads(head)
        if (not isinstance(header, dict) or header.get("key") != key
                or header.get("sha256") != hashlib.sha256(body).hexdigest()):
            return None
        data = json.loads(body)
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _write_cache(path: Path, key: str, data: Any) -> None:
    """Best effort: a cache that cannot be written is simply not used."""
    from qwenplan.launch.files import write_atomic

    try:
        body = json.dumps(data)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = json.dumps({"key": key, "sha256": hashlib.sha256(body.encode()).hexdigest()})
        write_atomic(path, header + "\n" + body, mode=0o644)
    except (OSError, TypeError, ValueError):
        pass


PROFILES_ENV = "QWENPLAN_PROFILES"


@lru_cache(maxsize=1)
def _package_profiles() -> Path:
    """The qwenplan.profiles package's folder. A plain path, not importlib.resources (which
    imports zipfile, tempfile and more, ~8 ms of every start): the package is always installed
    as files (a wheel or the editable mapping of pyproject's package-dir)."""
    import qwenplan.profiles

    return Path(next(iter(qwenplan.profiles.__path__)))


def profiles_dir() -> Path:
    """The folder the knowledge is read from: the qwenplan.profiles package, or a whole copy of it
    named by QWENPLAN_PROFILES (a new engine release is then one flag file and one engines.yaml
    entry in that copy, with no code: tests/test_profiles.py)."""
    override = os.environ.get(PROFILES_ENV)
    return Path(override) if override else _package_profiles()


def load_profile(name: str) -> Any:
    """One YAML file of the profiles, parsed once per process (and, between processes, from a
    JSON copy in the user's cache)."""
    return _load_profile(profiles_dir(), name)


@lru_cache(maxsize=None)
def _load_profile(root: Path, name: str) -> Any:
    text = (root / name).read_text(encoding="utf-8")
    cache, key = _parsed_cache(text)
    data = _read_cache(cache, key)
    if data is None:
        data = _yaml_load(text)
        _write_cache(cache, key, data)
    return data


load_profile.cache_clear = _load_profile.cache_clear   # type: ignore[attr-defined]


def profile_text(name: str) -> str:
    return (profiles_dir() / name).read_text(encoding="utf-8")


# --- GPUs ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class GPUProfile:
    id: str
    name: str
    aliases: tuple[str, ...]
    architecture: str
    compute_capability: str
    memory_mib: int
    memory_mib_measured: bool
    memory_bandwidth_gbs: float | None
    bf16: bool
    fp8: bool
    fp4: bool
    nvlink: bool
    unified_memory: str | None       # None, "coherent" (own HBM) or "shared" (one pool with the CPU)
    tier: str
    sources: tuple[str, ...] = field(default=())
    memory_visible_mib: int | None = None
    # Dense tensor-core peaks (no sparsity), TFLOP/s: what the speed model's prefill terms use.
    bf16_tflops: float | None = None
    fp8_tflops: float | None = None

    @property
    def shares_host_memory(self) -> bool:
        return self.unified_memory == "shared"

    @property
    def visible_memory_bytes(self) -> int:
        """What CUDA calls total: a shared pool's measured visible size, else the profile's memory."""
        return (self.memory_visible_mib or self.memory_mib) * MiB

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MiB

    @property
    def label(self) -> str:
        return self.name.replace("NVIDIA ", "", 1)

    def cc_tuple(self) -> tuple[int, int]:
        return parse_cc(self.compute_capability)


def _gpu_from(d: dict) -> GPUProfile:
    return GPUProfile(
        id=d["id"], name=d["name"], aliases=tuple(str(a) for a in d.get("aliases") or ()),
        architecture=d["architecture"], compute_capability=str(d["compute_capability"]),
        memory_mib=int(d["memory_mib"]), memory_mib_measured=bool(d.get("memory_mib_measured")),
        memory_bandwidth_gbs=d.get("memory_bandwidth_gbs"), bf16=bool(d.get("bf16")), fp8=bool(d.get("fp8")),
        fp4=bool(d.get("fp4")), nvlink=bool(d.get("nvlink")), unified_memory=d.get("unified_memory") or None,
        tier=d.get("tier", "datacenter"), sources=tuple(d.get("sources") or ([d["source"]] if d.get("source") else [])),
        memory_visible_mib=d.get("memory_visible_mib"),
        bf16_tflops=d.get("bf16_tflops"), fp8_tflops=d.get("fp8_tflops"),
    )


@lru_cache(maxsize=1)
def gpus() -> tuple[GPUProfile, ...]:
    return tuple(_gpu_from(d) for d in load_profile("gpus.yaml")["gpus"])


_NOISE = re.compile(r"\b(nvidia|geforce|tesla|quadro)\b")


def normalize_gpu_name(name: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'rtx4090'; '4090' -> '4090'."""
    s = _NOISE.sub(" ", name.lower())
    return re.sub(r"[^a-z0-9]+", "", s)


@lru_cache(maxsize=1)
def _gpu_index() -> dict[str, list[GPUProfile]]:
    index: dict[str, list[GPUProfile]] = {}
    for p in gpus():
        keys = {normalize_gpu_name(p.name), normalize_gpu_name(p.id), *(normalize_gpu_name(a) for a in p.aliases)}
        for k in keys:
            index.setdefault(k, []).append(p)
    return index


def find_gpu(name: str, memory_bytes: int | None = None) -> GPUProfile | None:
    """The profile for an NVML name, a marketing name or an alias; None if unknown.
    Where one name covers several memory sizes (RTX 3060 12 GB / 8 GB), memory decides."""
    key = normalize_gpu_name(name)
    found = _gpu_index().get(key)
    if not found and key.startswith("rtx"):
        found = _gpu_index().get(key[3:])
    if not found and " MIG " in name:  # a MIG instance belongs to its parent GPU's profile
        return find_gpu(name.split(" MIG ", 1)[0], None)
    if not found:
        return None
    if memory_bytes is None or len(found) == 1:
        return found[0]
    return min(found, key=lambda p: abs(p.memory_bytes - memory_bytes))


def nearest_gpu_names(name: str, n: int = 4) -> list[str]:
    labels = {}
    for p in gpus():
        for label in (p.label, *p.aliases):
            labels.setdefault(normalize_gpu_name(label), p.label)
    close = difflib.get_close_matches(normalize_gpu_name(name), list(labels), n=n * 3, cutoff=0.5)
    out: list[str] = []
    for k in close:
        if labels[k] not in out:
            out.append(labels[k])
    return out[:n]


def require_gpu(name: str) -> GPUProfile:
    profile = find_gpu(name)
    if profile is None:
        near = nearest_gpu_names(name)
        hint = f"nearest known: {', '.join(near)}" if near else "see `qwenplan gpus` for the known names"
        raise InputError(f"unknown GPU {name!r}", hint + " (or describe the box in a --hardware file)")
    return profile
