"""The hardware document (`qwenplan.hardware/1`): what a box has, as the engine will see it.

A document from `probe --json` on one box is a valid `--hardware` input on any other.
Unknown fields are refused (naming the field); missing optional fields take the defaults
below. Hand-written documents may give sizes as strings ("80GiB") and may leave out a GPU's
memory or compute capability when its name is a known GPU profile. A document is untrusted
input: it must be a regular file under MAX_DOCUMENT_BYTES, YAML aliases are refused (no
"billion laughs"), and every size must be finite and physically plausible.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .capability import parse_cc
from .errors import HardwareFileError, InputError
from .units import MiB, parse_size

SCHEMA = "qwenplan.hardware/1"

# Memory the driver keeps for itself, outside what CUDA reports as total. NVML's v2 memory
# query says how much on a real GPU (480 MiB on the H100 in shared/fixtures/probes); for
# hardware we only imagine, this is the assumption.
ASSUMED_RESERVED_BYTES = 512 * MiB

# Sanity bounds (policy: qwenplan's own). `probe --json` writes a few KB; the largest GPU sold
# has 288 GB; the largest single hosts carry 16-20 GPUs (PP across --nodes for more).
MAX_DOCUMENT_BYTES = 1 << 20
MAX_GPU_MEMORY_BYTES = 4 << 40
MAX_HOST_BYTES = 1 << 50
# policy: the most GPUs one host holds (16, as on HGX-2/DGX-2 boards); more GPUs are more nodes.
MAX_GPUS = 16


@dataclass
class GPU:
    index: int
    name: str
    memory_total_bytes: int | None
    memory_free_bytes: int | None
    compute_capability: str | None
    uuid: str | None = None
    pci_bus_id: str | None = None
    memory_reserved_bytes: int | None = None
    mig: bool = False
    mig_profile: str | None = None
    nvlink_peers: list[int] = field(default_factory=list)
    nvml_index: int | None = None
    processes: int | None = None
    unified_memory: bool = False      # GPU and CPU share one pool (GB10, Jetson): total is the host's memory
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda_total_bytes(self) -> int | None:
        """What cudaMemGetInfo calls total (and vLLM multiplies by its memory fraction)."""
        if self.memory_total_bytes is None:
            return None
        reserved = self.memory_reserved_bytes
        if reserved is None:
            reserved = 0 if self.unified_memory else ASSUMED_RESERVED_BYTES
        return self.memory_total_bytes - reserved

    @property
    def cuda_free_bytes(self) -> int | None:
        """Memory free for a new process, as CUDA would report it before any context."""
        if self.memory_free_bytes is None:
            return None
        return min(self.memory_free_bytes, self.cuda_total_bytes or self.memory_free_bytes)

    def compute_capability_tuple(self) -> tuple[int, int] | None:
        return parse_cc(self.compute_capability)


@dataclass
class Host:
    ram_total_bytes: int | None = None
    ram_available_bytes: int | None = None
    cgroup_memory_limit_bytes: int | None = None
    swap_total_bytes: int | None = None
    cpu_count: int | None = None
    shm_bytes: int | None = None
    disk_path: str | None = None
    disk_free_bytes: int | None = None
    hf_cached_bytes: dict[str, int] = field(default_factory=dict)   # repo -> bytes already in the HF cache
    cpu_physical_count: int | None = None     # physical cores: llama.cpp's threads
    memory_bandwidth_gbs: float | None = None  # host RAM bandwidth, GB/s: llama.cpp reads experts there
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def usable_ram_bytes(self) -> int | None:
        """RAM this process may use: the cgroup limit caps what psutil reports for the host."""
        values = [v for v in (self.ram_available_bytes, self.cgroup_memory_limit_bytes) if v is not None]
        return min(values) if values else None


@dataclass
class Hardware:
    gpus: list[GPU]
    host: Host = field(default_factory=Host)
    driver: dict[str, str | None] = field(default_factory=lambda: {"version": None, "cuda": None})
    engines: dict[str, str | None] = field(default_factory=lambda: {"vllm": None, "sglang": None})
    notes: list[str] = field(default_factory=list)
    origin: str = "probe"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        gpus = []
        for g in self.gpus:
            d = {
                "index": g.index, "name": g.name, "uuid": g.uuid, "pci_bus_id": g.pci_bus_id,
                "memory_total_bytes": g.memory_total_bytes, "memory_free_bytes": g.memory_free_bytes,
                "memory_reserved_bytes": g.memory_reserved_bytes,
                "compute_capability": g.compute_capability, "mig": g.mig, "mig_profile": g.mig_profile,
                "nvlink_peers": list(g.nvlink_peers), "nvml_index": g.nvml_index, "processes": g.processes,
                "unified_memory": g.unified_memory,
            }
            d.update(g.extra)
            gpus.append(d)
        h = self.host
        host = {
            "ram_total_bytes": h.ram_total_bytes, "ram_available_bytes": h.ram_available_bytes,
            "cgroup_memory_limit_bytes": h.cgroup_memory_limit_bytes, "swap_total_bytes": h.swap_total_bytes,
            "cpu_count": h.cpu_count, "shm_bytes": h.shm_bytes, "disk_path": h.disk_path,
            "disk_free_bytes": h.disk_free_bytes, "hf_cached_bytes": dict(h.hf_cached_bytes),
            "cpu_physical_count": h.cpu_physical_count, "memory_bandwidth_gbs": h.memory_bandwidth_gbs,
        }
        host.update(h.extra)
        doc = {"schema": SCHEMA, "origin": self.origin, "gpus": gpus, "host": host,
               "driver": dict(self.driver), "engines": dict(self.engines), "notes": list(self.notes)}
        doc.update(self.extra)
        return doc


# --- reading a document ------------------------------------------------------------------

_GPU_KEYS = {"index", "name", "uuid", "pci_bus_id", "memory_total_bytes", "memory_free_bytes",
             "memory_reserved_bytes", "compute_capability", "mig", "mig_profile", "nvlink_peers",
             "nvml_index", "processes", "unified_memory"}
_HOST_KEYS = {"ram_total_bytes", "ram_available_bytes", "cgroup_memory_limit_bytes", "swap_total_bytes",
              "cpu_count", "shm_bytes", "disk_path", "disk_free_bytes", "hf_cached_bytes", "cpu_physical_count",
              "memory_bandwidth_gbs"}
_TOP_KEYS = {"schema", "origin", "gpus", "host", "driver", "engines", "notes", "cuda_visible_devices"}


class _Reader:
    """Validates one document, naming the field of the first problem."""

    def __init__(self, label: str):
        self.label = label

    def fail(self, path: str, message: str):
        raise HardwareFileError(f"{self.label}: {path} {message}",
                                "fix that field (see `qwenplan probe --json` for a valid document)")

    def size(self, d: dict, key: str, path: str, maximum: int = MAX_HOST_BYTES) -> int | None:
        value = d.get(key)
        if value is None:
            return None
        if isinstance(value, bool):
            self.fail(f"{path}.{key}", f"must be a number of bytes or a size like '80GiB', not {value!r}")
        if isinstance(value, str):
            try:
                value = parse_size(value)
            except InputError:
                self.fail(f"{path}.{key}", f"must be a number of bytes or a size like '80GiB' (got {value[:40]!r})")
        if not isinstance(value, (int, float)):
            self.fail(f"{path}.{key}", f"must be a number of bytes (got {type(value).__name__})")
        if not math.isfinite(value):
            self.fail(f"{path}.{key}", f"must be a finite number of bytes (got {value})")
        if value < 0:
            self.fail(f"{path}.{key}", f"must not be negative (got {value})")
        if value > maximum:
            self.fail(f"{path}.{key}", f"({value:.3g} bytes) is beyond any real hardware (at most {maximum:.3g})")
        return int(value)

    def unknown(self, d: dict, known: set, path: str) -> None:
        """Refuse fields this qwenplan does not read (named, never stringified)."""
        for k in d:
            if k not in known:
                shown = repr(k)[:40] if isinstance(k, str) else f"a {type(k).__name__} key"
                self.fail(f"{path}", f"has an unknown field {shown}; remove it (known: {', '.join(sorted(known))})")

    def integer(self, d: dict, key: str, path: str, minimum: int = 0) -> int | None:
        value = d.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(f"{path}.{key}", f"must be an integer >= {minimum} (got {value!r})")
        return value

    def text(self, d: dict, key: str, path: str, required: bool = False) -> str | None:
        value = d.get(key)
        if value is None:
            if required:
                self.fail(f"{path}.{key}", "is required")
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "compute_capability":
            value = f"{value:.1f}"
        if not isinstance(value, str) or (required and not value.strip()):
            self.fail(f"{path}.{key}", f"must be a string (got {type(value).__name__})")
        self.printable(value, f"{path}.{key}")
        return value

    def printable(self, value: str, path: str) -> None:
        """Refuse control characters: they would reach the terminal (escape sequences) and files."""
        if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in value):
            self.fail(path, "contains control characters; write plain text")

    def mapping(self, value: Any, path: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping (got {type(value).__name__})")
        return value


def _gpu_cc(r: _Reader, d: dict, path: str) -> str | None:
    """The compute capability, refused unless it parses: the planner compares it with kernels' needs."""
    cc = r.text(d, "compute_capability", path)
    if cc is not None and not _valid_cc(cc):
        r.fail(f"{path}.compute_capability", f"must look like '8.9' (got {cc!r})")
    return cc


def _gpu_flag(r: _Reader, d: dict, key: str, path: str, default: bool | None) -> bool | None:
    """A true/false field; anything else is refused rather than read as truthy."""
    value = d.get(key, default)
    if value is not None and not isinstance(value, bool):
        r.fail(f"{path}.{key}", f"must be true or false (got {value!r})")
    return value


def _from_profile(lookup, name: str, total: int | None, cc: str | None,
                  unified: bool | None) -> tuple[int | None, str | None, bool | None]:
    """Fill what a hand-written document left out from the profile of the GPU it names."""
    profile = lookup(name) if lookup is not None and (total is None or cc is None or unified is None) else None
    if profile is not None:
        # A hand-written document may name a known GPU and leave its facts to the profile.
        unified = profile.shares_host_memory if unified is None else unified
        total = total if total is not None else profile.visible_memory_bytes
        cc = cc or profile.compute_capability
    return total, cc, unified


def _check_gpu_memory(r: _Reader, path: str, total: int | None, free: int | None, reserved: int | None) -> None:
    """Refuse free memory above the total, and a reserve that leaves CUDA nothing."""
    if total is not None and free is not None and free > total:
        r.fail(f"{path}.memory_free_bytes", f"({free}) is larger than memory_total_bytes ({total})")
    if total is not None and (reserved if reserved is not None else ASSUMED_RESERVED_BYTES) >= total:
        r.fail(f"{path}.memory_reserved_bytes", f"({reserved if reserved is not None else ASSUMED_RESERVED_BYTES}) "
               f"leaves nothing of memory_total_bytes ({total}) for CUDA")


def _gpu_free(total: int | None, free: int | None, reserved: int | None, unified: bool) -> int | None:
    """Free memory when the document does not say: the total less the reserve (none on unified memory)."""
    if free is None and total is not None:
        free = total - (reserved if reserved is not None else 0 if unified else ASSUMED_RESERVED_BYTES)
    return free


def _gpu_peers(r: _Reader, d: dict, path: str) -> list:
    """The NVLink peers, a list of GPU indices (checked against the other GPUs later)."""
    peers = d.get("nvlink_peers") or []
    if not isinstance(peers, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in peers):
        r.fail(f"{path}.nvlink_peers", f"must be a list of GPU indices (got {peers!r})")
    return peers


def _read_gpu(r: _Reader, d: Any, i: int, lookup) -> GPU:
    path = f"gpus[{i}]"
    if not isinstance(d, dict):
        r.fail(path, f"must be a mapping (got {type(d).__name__})")
    r.unknown(d, _GPU_KEYS, path)
    name = r.text(d, "name", path, required=True)
    cc = _gpu_cc(r, d, path)
    total = r.size(d, "memory_total_bytes", path, MAX_GPU_MEMORY_BYTES)
    free = r.size(d, "memory_free_bytes", path, MAX_GPU_MEMORY_BYTES)
    reserved = r.size(d, "memory_reserved_bytes", path, MAX_GPU_MEMORY_BYTES)
    unified = _gpu_flag(r, d, "unified_memory", path, None)
    total, cc, unified = _from_profile(lookup, name, total, cc, unified)
    unified = bool(unified)
    _check_gpu_memory(r, path, total, free, reserved)
    free = _gpu_free(total, free, reserved, unified)
    peers = _gpu_peers(r, d, path)
    mig = _gpu_flag(r, d, "mig", path, False)
    index = r.integer(d, "index", path)
    return GPU(
        index=i if index is None else index, name=name, memory_total_bytes=total, memory_free_bytes=free,
        compute_capability=cc, uuid=r.text(d, "uuid", path), pci_bus_id=r.text(d, "pci_bus_id", path),
        memory_reserved_bytes=reserved, mig=mig,
        mig_profile=r.text(d, "mig_profile", path), nvlink_peers=list(peers),
        nvml_index=r.integer(d, "nvml_index", path), processes=r.integer(d, "processes", path),
        unified_memory=unified, extra={k: v for k, v in d.items() if k not in _GPU_KEYS},
    )


def _cached(r: _Reader, value: Any) -> dict[str, int]:
    value = r.mapping(value, "host.hf_cached_bytes")
    for repo, n in value.items():
        if not isinstance(repo, str) or isinstance(n, bool) or not isinstance(n, int) or n < 0:
            r.fail(f"host.hf_cached_bytes.{repo}", f"must map a repo to a number of bytes (got {n!r})")
    return dict(value)


def _valid_cc(cc: str) -> bool:
    return parse_cc(cc) is not None


def _bandwidth(r: "_Reader", value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 100000:
        r.fail("host.memory_bandwidth_gbs", f"must be GB/s, a number above 0 (got {value!r})")
    return float(value)


def _check_top(r: _Reader, doc: Any) -> list:
    """The top level: a mapping of this schema with a 'gpus' list no longer than one node holds."""
    if not isinstance(doc, dict):
        r.fail("(top level)", f"must be a mapping with a 'gpus' list (got {type(doc).__name__})")
    schema = doc.get("schema", SCHEMA)
    if schema != SCHEMA:
        r.fail("schema", f"is {schema!r}; this qwenplan reads {SCHEMA!r}")
    gpus_raw = doc.get("gpus")
    if gpus_raw is None:
        r.fail("gpus", "is required (a list, empty for a box without GPUs)")
    if not isinstance(gpus_raw, list):
        r.fail("gpus", f"must be a list (got {type(gpus_raw).__name__})")
    r.unknown(doc, _TOP_KEYS, "(top level)")
    if len(gpus_raw) > MAX_GPUS:
        r.fail("gpus", f"lists {len(gpus_raw)} GPUs; qwenplan plans at most {MAX_GPUS} on one node "
               f"(describe one node and pass --nodes for more)")
    return gpus_raw


def _read_gpus(r: _Reader, gpus_raw: list, lookup) -> list[GPU]:
    """The GPUs, with distinct indices and NVLink peers that name other GPUs of this node."""
    gpus = [_read_gpu(r, g, i, lookup) for i, g in enumerate(gpus_raw)]
    indices = [g.index for g in gpus]
    if len(set(indices)) != len(indices):
        r.fail("gpus", f"has repeated indices {indices}")
    for g in gpus:
        for p in g.nvlink_peers:
            if p not in indices or p == g.index:
                r.fail(f"gpus[{indices.index(g.index)}].nvlink_peers", f"names GPU {p}, which is not another GPU here")
    return gpus


def _read_host(r: _Reader, value: Any) -> Host:
    """The host section; total and available RAM stand in for each other when one is missing."""
    h = r.mapping(value, "host")
    r.unknown(h, _HOST_KEYS, "host")
    cpu = r.integer(h, "cpu_count", "host", minimum=1)
    host = Host(
        ram_total_bytes=r.size(h, "ram_total_bytes", "host"),
        ram_available_bytes=r.size(h, "ram_available_bytes", "host"),
        cgroup_memory_limit_bytes=r.size(h, "cgroup_memory_limit_bytes", "host"),
        swap_total_bytes=r.size(h, "swap_total_bytes", "host"), cpu_count=cpu,
        shm_bytes=r.size(h, "shm_bytes", "host"), disk_path=r.text(h, "disk_path", "host"),
        disk_free_bytes=r.size(h, "disk_free_bytes", "host"),
        hf_cached_bytes=_cached(r, h.get("hf_cached_bytes")),
        cpu_physical_count=r.integer(h, "cpu_physical_count", "host", minimum=1),
        memory_bandwidth_gbs=_bandwidth(r, h.get("memory_bandwidth_gbs")),
        extra={k: v for k, v in h.items() if k not in _HOST_KEYS},
    )
    if host.ram_total_bytes is None and host.ram_available_bytes is not None:
        host.ram_total_bytes = host.ram_available_bytes
    if host.ram_available_bytes is None and host.ram_total_bytes is not None:
        host.ram_available_bytes = host.ram_total_bytes
    return host


def _check_versions(r: _Reader, driver: dict, engines: dict) -> None:
    """Driver and engine versions: printable strings or null, keyed by strings."""
    for key, value in list(driver.items()) + list(engines.items()):
        section = "driver" if key in driver else "engines"
        if not isinstance(key, str) or (value is not None and not isinstance(value, str)):
            r.fail(f"{section}.{str(key)[:40]}", f"must be a version string or null (got {type(value).__name__})")
        r.printable(key + (value or ""), f"{section}.{key[:40]}")


def _read_notes(r: _Reader, value: Any) -> list:
    """The notes: a list of printable strings."""
    notes = value or []
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        r.fail("notes", "must be a list of strings")
    for i, n in enumerate(notes):
        r.printable(n, f"notes[{i}]")
    return notes


def _optional_string(r: _Reader, value: Any, path: str) -> str | None:
    """A top-level field that is a string or absent."""
    if value is not None and not isinstance(value, str):
        r.fail(path, f"must be a string (got {type(value).__name__})")
    return value


def from_dict(doc: Any, label: str = "hardware document", lookup=None) -> Hardware:
    """Validate and read a hardware document. `lookup(name)` finds a GPU profile or None."""
    r = _Reader(label)
    gpus_raw = _check_top(r, doc)
    gpus = _read_gpus(r, gpus_raw, lookup)
    host = _read_host(r, doc.get("host"))
    driver = r.mapping(doc.get("driver"), "driver")
    engines = r.mapping(doc.get("engines"), "engines")
    _check_versions(r, driver, engines)
    notes = _read_notes(r, doc.get("notes"))
    origin = _optional_string(r, doc.get("origin"), "origin")
    r.printable(origin or "", "origin")
    visible = _optional_string(r, doc.get("cuda_visible_devices"), "cuda_visible_devices")
    return Hardware(
        gpus=gpus, host=host,
        driver={"version": driver.get("version"), "cuda": driver.get("cuda"),
                **{k: v for k, v in driver.items() if k not in ("version", "cuda")}},
        engines={"vllm": engines.get("vllm"), "sglang": engines.get("sglang"),
                 **{k: v for k, v in engines.items() if k not in ("vllm", "sglang")}},
        notes=list(notes), origin=origin or label,
        extra={"cuda_visible_devices": visible} if visible is not None else {},
    )


def _read_document(p: Path, label: str) -> str:
    """The text of a regular file of at most MAX_DOCUMENT_BYTES: a FIFO, a device (/dev/zero) or
    a huge file is refused before it is read."""
    from qwenplan.launch.files import NotARegularFile, read_regular

    try:
        data = read_regular(p, MAX_DOCUMENT_BYTES)
    except FileNotFoundError:
        raise HardwareFileError(f"{label} does not exist", "give the path of a file written by `qwenplan probe --json`")
    except NotARegularFile as e:
        raise HardwareFileError(f"{label} {e}", "give the JSON or YAML file `qwenplan probe --json` wrote")
    except OSError as e:
        raise HardwareFileError(f"{label} cannot be read ({e.strerror or type(e).__name__})",
                                "give a JSON or YAML text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise HardwareFileError(f"{label} is not UTF-8 text", "give a JSON or YAML text file")


def _yaml_without_aliases(text: str):
    """YAML with aliases refused: a hardware document never needs them, and nested aliases
    expand exponentially (a few hundred bytes become gigabytes)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, "aliases are not allowed", mark)
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=Loader)


def load(path: str | Path, lookup=None) -> Hardware:
    """Read a JSON or YAML hardware document from a file."""
    p = Path(path)
    label = f"hardware file {p}"
    text = _read_document(p, label)
    try:
        doc = json.loads(text)
    except RecursionError:
        raise HardwareFileError(f"{label} nests too deeply", "give the file `qwenplan probe --json` wrote")
    except json.JSONDecodeError:
        import yaml

        try:
            doc = _yaml_without_aliases(text)
        except RecursionError:
            raise HardwareFileError(f"{label} nests too deeply", "give the file `qwenplan probe --json` wrote")
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            what = "uses YAML aliases (*name), which are refused" if "aliases" in str(getattr(e, "problem", "")) \
                else "is neither JSON nor YAML"
            raise HardwareFileError(f"{label} {what}{where}", "fix its syntax (write each value out)")
    return from_dict(doc, label=label, lookup=lookup)
