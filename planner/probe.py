"""The probe: NVML (nvidia-ml-py, imported as `pynvml`), psutil and a few kernel files.

It lists the GPUs the engine will see, in the order it will see them
(CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER), with what NVML says of each. A call a device
does not support is recorded as unknown; a box without a driver gets an empty GPU list
and a note. Nothing here starts a process or imports an engine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .capability import parse_cc
from .hardware import GPU, Hardware, Host


# --- NVML -------------------------------------------------------------------------------

@dataclass
class _Device:
    """One CUDA device as NVML describes it: a GPU, or a MIG instance of one."""

    nvml_index: int
    name: str
    uuid: str | None
    bus_id: str | None
    total: int | None
    free: int | None
    reserved: int | None
    cc: str | None
    mig: bool = False
    mig_profile: str | None = None
    parent: int | None = None
    processes: int | None = None
    speed: float = 0.0
    peers: set[int] = field(default_factory=set)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _try(nvml, fn, *args, default=None):
    """Call NVML; an unsupported or failing query is unknown, not a crash."""
    try:
        return fn(*args)
    except nvml.NVMLError:
        return default


def _memory(nvml, handle) -> tuple[int | None, int | None, int | None]:
    """(total, free, reserved). v2 separates the driver's reserve from what programs use."""
    v2 = getattr(nvml, "nvmlMemory_v2", None)
    if v2 is not None:
        mem = _try(nvml, nvml.nvmlDeviceGetMemoryInfo, handle, v2)
        if mem is not None:
            return int(mem.total), int(mem.free), int(mem.reserved)
    mem = _try(nvml, nvml.nvmlDeviceGetMemoryInfo, handle)
    if mem is None:  # unified-memory boxes (GB10, Jetson) answer NotSupported
        return None, None, None
    return int(mem.total), int(mem.free), None


def _compute_capability(nvml, handle) -> str | None:
    cc = _try(nvml, nvml.nvmlDeviceGetCudaComputeCapability, handle)
    return f"{cc[0]}.{cc[1]}" if cc else None


def _speed(nvml, handle) -> float:
    """A stand-in for CUDA's FASTEST_FIRST ordering: cores x SM clock."""
    cores = _try(nvml, nvml.nvmlDeviceGetNumGpuCores, handle, default=0) or 0
    clock = _try(nvml, nvml.nvmlDeviceGetMaxClockInfo, handle, nvml.NVML_CLOCK_SM, default=0) or 0
    return float(cores) * float(clock)


def _processes(nvml, handle) -> int | None:
    procs = _try(nvml, nvml.nvmlDeviceGetComputeRunningProcesses, handle)
    return None if procs is None else len(procs)


def _mig_devices(nvml, handle, parent: _Device) -> list[_Device]:
    mode = _try(nvml, nvml.nvmlDeviceGetMigMode, handle)
    if not mode or mode[0] != nvml.NVML_DEVICE_MIG_ENABLE:
        return []
    out = []
    count = _try(nvml, nvml.nvmlDeviceGetMaxMigDeviceCount, handle, default=0) or 0
    for slot in range(count):
        mh = _try(nvml, nvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, slot)
        if mh is None:  # empty slot
            continue
        name = _text(_try(nvml, nvml.nvmlDeviceGetName, mh, default=parent.name))
        total, free, reserved = _memory(nvml, mh)
        profile = name.split(" MIG ", 1)[1].strip() if " MIG " in name else None
        out.append(_Device(
            nvml_index=parent.nvml_index, name=name, uuid=_text(_try(nvml, nvml.nvmlDeviceGetUUID, mh, default="")) or None,
            bus_id=parent.bus_id, total=total, free=free, reserved=reserved, cc=parent.cc, mig=True,
            mig_profile=profile, parent=parent.nvml_index, speed=parent.speed,
        ))
    return out


def _nvlink_peers(nvml, handles: list, bus_ids: list[str | None]) -> dict[int, set[int]]:
    """NVLink peers from link state and P2P status, never from the topology level:
    NVML's topology call reports two NVLinked H200s as HOSTBRIDGE (see DESIGN.md)."""
    peers: dict[int, set[int]] = {i: set() for i in range(len(handles))}
    by_bus = {_norm_bus(b): i for i, b in enumerate(bus_ids) if b}
    max_links = getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)
    for i, h in enumerate(handles):
        for link in range(max_links):
            try:
                state = nvml.nvmlDeviceGetNvLinkState(h, link)
            except nvml.NVMLError:
                break  # NotSupported on boards without NVLink; InvalidArgument past the last link
            if state != nvml.NVML_FEATURE_ENABLED:
                continue
            remote = _try(nvml, nvml.nvmlDeviceGetNvLinkRemotePciInfo, h, link)
            j = by_bus.get(_norm_bus(_text(remote.busId))) if remote is not None else None
            if j is not None and j != i:
                peers[i].add(j)
                peers[j].add(i)
    index = getattr(nvml, "NVML_P2P_CAPS_INDEX_NVLINK", None)
    if index is not None:
        for i in range(len(handles)):
            for j in range(i + 1, len(handles)):
                status = _try(nvml, nvml.nvmlDeviceGetP2PStatus, handles[i], handles[j], index)
                if status == nvml.NVML_P2P_STATUS_OK:
                    peers[i].add(j)
                    peers[j].add(i)
    return peers


def _norm_bus(bus: str | None) -> str:
    """NVML writes bus ids with an 8- or 4-digit domain; compare without it."""
    bus = (bus or "").lower()
    return bus.split(":", 1)[1] if bus.count(":") == 2 else bus


def _nvml_devices(nvml, notes: list[str]) -> tuple[list[_Device], dict[str, str | None]]:
    driver: dict[str, str | None] = {"version": None, "cuda": None}
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        notes.append(f"no NVIDIA driver answered (NVML: {e}); no GPUs listed")
        return [], driver
    try:
        driver["version"] = _text(_try(nvml, nvml.nvmlSystemGetDriverVersion, default="")) or None
        cuda = _try(nvml, nvml.nvmlSystemGetCudaDriverVersion)
        driver["cuda"] = f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None
        count = _try(nvml, nvml.nvmlDeviceGetCount, default=0) or 0
        handles, gpus = [], []
        for i in range(count):
            h = _try(nvml, nvml.nvmlDeviceGetHandleByIndex, i)
            if h is None:
                notes.append(f"NVML could not open GPU {i}; it is left out")
                continue
            pci = _try(nvml, nvml.nvmlDeviceGetPciInfo, h)
            total, free, reserved = _memory(nvml, h)
            name = _text(_try(nvml, nvml.nvmlDeviceGetName, h, default="unknown NVIDIA GPU"))
            handles.append(h)
            gpus.append(_Device(
                nvml_index=i, name=name, uuid=_text(_try(nvml, nvml.nvmlDeviceGetUUID, h, default="")) or None,
                bus_id=_text(pci.busId) if pci is not None else None, total=total, free=free, reserved=reserved,
                cc=_compute_capability(nvml, h), processes=_processes(nvml, h), speed=_speed(nvml, h),
            ))
        for i, peers in _nvlink_peers(nvml, handles, [g.bus_id for g in gpus]).items():
            gpus[i].peers = {gpus[j].nvml_index for j in peers}
        devices: list[_Device] = []
        for h, g in zip(handles, gpus):
            migs = _mig_devices(nvml, h, g)
            if migs:
                notes.append(f"GPU {g.nvml_index} ({g.name}) is in MIG mode: its {len(migs)} instances are listed "
                             "as devices; one process (one engine) can use only one MIG instance")
            devices.extend(migs or [g])
        return devices, driver
    finally:
        _try(nvml, nvml.nvmlShutdown)


# --- what CUDA will see -------------------------------------------------------------------

def _cuda_order(devices: list[_Device], order: str | None, notes: list[str]) -> list[_Device]:
    """CUDA numbers devices FASTEST_FIRST unless CUDA_DEVICE_ORDER=PCI_BUS_ID; NVML by PCI bus."""
    if (order or "FASTEST_FIRST").upper() == "PCI_BUS_ID":
        return list(devices)
    if len({(d.name, d.speed) for d in devices}) > 1:
        notes.append("GPUs differ and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA numbers the fastest first, so "
                     "indices may differ from nvidia-smi; set CUDA_DEVICE_ORDER=PCI_BUS_ID to make them agree")
        # fastest first: by compute capability (as a tuple: "8.10" > "8.9"), then clocks; stable: PCI order on ties
        return sorted(devices, key=lambda d: (tuple(-x for x in parse_cc(d.cc) or (0, 0)), -d.speed))
    return list(devices)


def _visible(devices: list[_Device], spec: str | None, notes: list[str]) -> list[_Device]:
    """Apply CUDA_VISIBLE_DEVICES: indices or (prefixes of) GPU-/MIG- UUIDs, comma separated.
    Like CUDA, stop at the first entry that names no device."""
    if spec is None:
        return devices
    chosen: list[_Device] = []
    for raw in spec.split(","):
        token = raw.strip()
        match = None
        if token.isdigit() and int(token) < len(devices):
            match = devices[int(token)]
        elif token.startswith(("GPU-", "MIG-")):
            found = [d for d in devices if d.uuid and d.uuid.startswith(token)]
            match = found[0] if len(found) == 1 else None
        if match is None or match in chosen:
            if token:
                notes.append(f"CUDA_VISIBLE_DEVICES entry {token!r} names no device; CUDA ignores it and all after it")
            break
        chosen.append(match)
    if not chosen:
        notes.append(f"CUDA_VISIBLE_DEVICES={spec!r} leaves no GPU visible")
    return chosen


def _to_gpus(devices: list[_Device]) -> list[GPU]:
    by_nvml = {d.nvml_index: i for i, d in enumerate(devices) if not d.mig}
    gpus = []
    for i, d in enumerate(devices):
        peers = sorted(by_nvml[p] for p in d.peers if p in by_nvml and not d.mig)
        gpus.append(GPU(
            index=i, name=d.name, uuid=d.uuid, pci_bus_id=d.bus_id, memory_total_bytes=d.total,
            memory_free_bytes=d.free, memory_reserved_bytes=d.reserved, compute_capability=d.cc,
            mig=d.mig, mig_profile=d.mig_profile, nvlink_peers=peers, nvml_index=d.nvml_index,
            processes=d.processes,
        ))
    return gpus


def select_gpu_ids(hw: Hardware, ids: list[int]) -> Hardware:
    """--gpu-ids 0,2: keep those GPUs (numbered as the engine sees them), with their own indices:
    the plan's CUDA_VISIBLE_DEVICES and a container's device_ids name them by index when the
    document has no UUIDs (renumbered from 0, GPU 2 would have become GPU 0)."""
    known = {g.index: g for g in hw.gpus}
    missing = [i for i in ids if i not in known]
    if missing:
        from .errors import InputError

        raise InputError(f"--gpu-ids names GPU {missing[0]}, but this box has GPUs {sorted(known) or 'none'}",
                         "pick among those indices (see `qwenplan probe`)")
    hw.gpus = [GPU(**{**known[i].__dict__, "nvlink_peers": [p for p in known[i].nvlink_peers if p in ids]})
               for i in ids]
    hw.notes.append(f"limited to GPUs {','.join(map(str, ids))} (--gpu-ids)")
    return hw


# --- host ---------------------------------------------------------------------------------

def hf_cache_dir(env: dict[str, str]) -> Path:
    """Where huggingface_hub keeps downloads, by its documented precedence (without importing
    it): HF_HUB_CACHE, then the legacy HUGGINGFACE_HUB_CACHE, then HF_HOME/hub, HF_HOME defaulting
    to $XDG_CACHE_HOME/huggingface, then ~/.cache/huggingface; ~ and $VARS expanded, as the hub
    does (huggingface_hub/constants.py; https://huggingface.co/docs/huggingface_hub/package_reference/environment_variables)."""
    def expand(p: str) -> Path:
        return Path(os.path.expandvars(os.path.expanduser(p)))

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return expand(env[var])
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return expand(home) / "hub"


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (v2) means no limit


def cgroup_memory_limit(sysroot: Path) -> int | None:
    """The tightest memory limit of this process's cgroup and its ancestors (v2), or v1's."""
    limits: list[int] = []
    try:
        lines = (sysroot / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    base = sysroot / "sys/fs/cgroup"
    for line in lines:
        hier, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        if hier == "0" and controllers == "":  # cgroup v2
            node = base / rel.lstrip("/")
            while True:
                v = _read_int(node / "memory.max")
                if v is not None:
                    limits.append(v)
                if node == base or base not in node.parents:
                    break
                node = node.parent
        elif "memory" in controllers.split(","):  # cgroup v1
            for node in (base / "memory" / rel.lstrip("/"), base / "memory"):
                v = _read_int(node / "memory.limit_in_bytes")
                if v is not None:
                    limits.append(v)
    if not lines:
        for f in ("memory.max", "memory/memory.limit_in_bytes"):
            v = _read_int(base / f)
            if v is not None:
                limits.append(v)
    # v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX); anything beyond 2^60 is none.
    real = [v for v in limits if v < (1 << 60)]
    return min(real) if real else None


def _hf_cached(cache: Path) -> dict[str, int]:
    """Bytes of each known checkpoint already complete in the cache (huggingface_hub's layout:
    models--ORG--NAME/blobs; unfinished downloads end in .incomplete)."""
    from .variants import variants

    out = {}
    for v in variants():
        blobs = cache / ("models--" + v.repo.replace("/", "--")) / "blobs"
        try:
            n = sum(p.stat().st_size for p in blobs.iterdir() if p.is_file() and not p.name.endswith(".incomplete"))
        except OSError:
            continue
        if n:
            out[v.repo] = n
    return out


def _host(env: dict[str, str], sysroot: Path, notes: list[str]) -> Host:
    import psutil

    vm = psutil.virtual_memory()
    cache = hf_cache_dir(env)
    host = Host(
        ram_total_bytes=int(vm.total), ram_available_bytes=int(vm.available),
        cgroup_memory_limit_bytes=cgroup_memory_limit(sysroot),
        swap_total_bytes=int(psutil.swap_memory().total), cpu_count=psutil.cpu_count(logical=True),
        disk_path=str(cache),
    )
    host.cpu_physical_count = psutil.cpu_count(logical=False)     # llama.cpp's threads: the physical cores
    for attr, path in (("shm_bytes", Path("/dev/shm")), ("disk_free_bytes", _existing(cache))):
        try:
            usage = psutil.disk_usage(str(path))
        except OSError:
            notes.append(f"cannot read the size of {path}")
            continue
        setattr(host, attr, int(usage.total if attr == "shm_bytes" else usage.free))
    host.hf_cached_bytes = _hf_cached(cache)
    if host.cgroup_memory_limit_bytes is not None and host.cgroup_memory_limit_bytes < host.ram_total_bytes:
        notes.append("this process runs in a cgroup whose memory limit is below the host's RAM; plans use the limit")
    return host


def _shared_pool(g: GPU, host: Host, notes: list[str]) -> GPU:
    """A GPU that shares the host's memory (GB10, Jetson): NVML answers NotSupported for its
    memory, and CUDA reports the host's memory as the GPU's. Take it from the host."""
    if g.memory_total_bytes is not None:
        return g
    from .catalog import find_gpu

    profile = find_gpu(g.name)
    if profile is None or not profile.shares_host_memory or host.ram_total_bytes is None:
        notes.append(f"{g.name}: NVML does not report its memory and profiles/gpus.yaml does not say it shares "
                     f"the host's memory; it is left out of the plan")
        return g
    g.unified_memory = True
    g.memory_total_bytes = host.ram_total_bytes
    g.memory_free_bytes = host.usable_ram_bytes
    g.memory_reserved_bytes = 0
    notes.append(f"{g.name} shares the host's memory (unified memory; NVML reports no GPU memory): its total is "
                 f"the host's RAM and what is free is the host's available memory")
    return g


# --- engines ------------------------------------------------------------------------------

OFFLOAD_FORK_URL_MARK = "vllm-expert-offload"


def _dist_info(names: tuple[str, ...]) -> dict[str, tuple[Path, str] | None]:
    """{name: (its .dist-info folder, version)} of the first installation on sys.path, as
    importlib.metadata finds it, read off the folder's name ({name}-{version}.dist-info, names
    normalised: packaging.python.org/en/latest/specifications/recording-installed-packages/)
    without importing importlib.metadata (~15 ms of every probe). None where not installed;
    KeyError where only an .egg-info (or an odd name) says so: the caller asks importlib.metadata."""
    import sys

    found: dict[str, tuple[Path, str] | None] = {}
    for entry in sys.path:
        try:
            listing = os.listdir(entry or ".")
        except OSError:
            continue
        for item in listing:
            stem, dot, kind = item.rpartition(".")
            project, _, version = stem.partition("-")
            project = project.lower().replace("-", "_").replace(".", "_")
            if project in names and project not in found and kind in ("dist-info", "egg-info"):
                if kind == "egg-info" or not version:
                    raise KeyError(project)
                found[project] = (Path(entry or ".") / item, version)
    return {n: found.get(n) for n in names}


def installed_engines() -> dict[str, str | None]:
    """Engine versions from package metadata, never by importing them (an import takes 10+ s).
    The expert-offload fork installs as `vllm` from git; its direct_url.json gives it away."""
    found: dict[str, str | None] = {"vllm": None, "sglang": None}
    try:
        dists = {n: (v[1], _read_small(v[0] / "direct_url.json")) if v else None
                 for n, v in _dist_info(("vllm", "sglang")).items()}
    except KeyError:
        dists = _metadata_dists(("vllm", "sglang"))
    for name, dist in dists.items():
        if dist is None:
            continue
        version, origin = dist
        if name == "vllm" and OFFLOAD_FORK_URL_MARK in origin:
            found["vllm-offload"] = version
        else:
            found[name] = version
    return found


def _read_small(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")[:1 << 16]
    except (OSError, UnicodeDecodeError):
        return ""


def _metadata_dists(names) -> dict[str, tuple[str, str] | None]:
    from importlib import metadata

    out: dict[str, tuple[str, str] | None] = {}
    for name in names:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            out[name] = None
            continue
        out[name] = (dist.version, dist.read_text("direct_url.json") or "")
    return out


# --- the document -------------------------------------------------------------------------

def probe(env: dict[str, str] | None = None, sysroot: str | Path = "/") -> Hardware:
    env = dict(os.environ if env is None else env)
    notes: list[str] = []
    try:
        import pynvml as nvml
    except ImportError:
        nvml = None
        notes.append("nvidia-ml-py is not installed (pip install nvidia-ml-py); no GPUs listed")
    devices, driver = _nvml_devices(nvml, notes) if nvml is not None else ([], {"version": None, "cuda": None})
    devices = _cuda_order(devices, env.get("CUDA_DEVICE_ORDER"), notes)
    devices = _visible(devices, env.get("CUDA_VISIBLE_DEVICES"), notes)
    host = _host(env, Path(sysroot), notes)
    hw = Hardware(gpus=[_shared_pool(g, host, notes) for g in _to_gpus(devices)], host=host, driver=driver,
                  engines=installed_engines(), notes=notes, origin="probe")
    if "CUDA_VISIBLE_DEVICES" in env:
        hw.extra["cuda_visible_devices"] = env["CUDA_VISIBLE_DEVICES"]
    return hw
