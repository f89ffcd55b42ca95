"""Reading what an engine says about memory in its log (vLLM and SGLang).

The lines matched here are the real ones (shared/gpu-truth/*.log for vLLM 0.26); each figure
is kept in bytes, as the memory model predicts them, so both can be shown side by side.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

GiB = 1 << 30
_NUM = r"([0-9][0-9,]*(?:\.[0-9]+)?)"


def _num(text: str) -> float:
    return float(text.replace(",", ""))


@dataclass
class MemoryReport:
    """What the engine reported; None where its log did not say."""

    engine: str | None = None
    version: str | None = None
    weights_bytes: int | None = None
    activation_bytes: int | None = None
    non_torch_bytes: int | None = None
    cudagraph_bytes: int | None = None       # graph memory inside the budget: vLLM's estimate where it logs one
    cudagraph_estimate_bytes: int | None = None   # 'Estimated CUDA graph memory' (subtracted before KV sizing)
    cudagraph_captured_bytes: int | None = None   # what the captured graphs took ('Actual usage'), may exceed it
    kv_cache_bytes: int | None = None
    kv_tokens: int | None = None
    max_concurrency: float | None = None
    concurrency_tokens: int | None = None
    block_size: int | None = None
    requested_bytes: int | None = None
    memory_fraction: float | None = None
    kv_fit_bytes: int | None = None          # vLLM's own --kv-cache-memory suggestion that fits the request
    needed_bytes: int | None = None          # a failed start: KV memory one max-length request needs
    max_model_len_estimate: int | None = None  # a failed start: what vLLM says would fit
    mamba_cache_size: int | None = None      # SGLang: requests' DeltaNet states allocated
    max_running_requests: int | None = None
    context_len: int | None = None
    init_seconds: float | None = None
    sources: dict[str, str] = field(default_factory=dict)   # figure -> the log line it came from

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("sources")
        return {k: v for k, v in d.items() if v is not None}

    @property
    def empty(self) -> bool:
        return not self.to_dict().keys() - {"engine", "version"}


_GIB_RULES: list[tuple[str, re.Pattern]] = [
    ("weights_bytes", re.compile(r"Model loading took " + _NUM + r" GiB")),
    ("kv_cache_bytes", re.compile(r"Available KV cache memory: " + _NUM + r" GiB")),
    ("cudagraph_estimate_bytes", re.compile(r"Estimated CUDA graph memory: " + _NUM + r" GiB")),
]
_INT_RULES: list[tuple[str, re.Pattern]] = [
    ("kv_tokens", re.compile(r"GPU KV cache size: " + _NUM + r" tokens")),
    ("block_size", re.compile(r"Setting attention block size to " + _NUM + r" tokens")),
    ("kv_tokens", re.compile(r"KV Cache is allocated\. #tokens: " + _NUM)),
    ("mamba_cache_size", re.compile(r"max_mamba_cache_size: " + _NUM)),
    ("kv_tokens", re.compile(r"max_total_num_tokens=" + _NUM)),
    ("max_running_requests", re.compile(r"max_running_requests=" + _NUM)),
    ("context_len", re.compile(r"context_len=" + _NUM)),
]
_VERSION = [("vllm", re.compile(r"version (\d+\.\d+\.\d+\S*)\s*$")),
            ("vllm", re.compile(r"Initializing a V1 LLM engine \(v(\d+\.\d+\.\d+[^)]*)\)")),
            ("sglang", re.compile(r"sglang(?:==|\s+version\s+)(\d+\.\d+\.\d+\S*)"))]
_CONCURRENCY = re.compile(r"Maximum concurrency for " + _NUM + r" tokens per request: " + _NUM + r"x")
_USAGE = re.compile(r"Desired GPU memory utilization is \(" + _NUM + r", " + _NUM + r" GiB\)\. Actual usage is "
                    + _NUM + r" GiB for weight, " + _NUM + r" GiB for peak activation, " + _NUM
                    + r" GiB for non-torch memory, and " + _NUM + r" GiB for CUDAGraph memory")
_FIT = re.compile(r"--kv-cache-memory(?:-bytes)?=(\d+)`? \(" + _NUM + r" GiB\) to fit into requested memory")
_NEEDED = re.compile(r"max seq len \((\d+)\), \(" + _NUM + r" GiB KV cache is needed.*?estimated maximum model "
                     r"length is (\d+)")
_INIT = re.compile(r"init engine \(profile, create kv cache, warmup model\) took " + _NUM + r" s")


def parse_memory(lines) -> MemoryReport:
    """Every memory figure the log states (later lines win: a restart logs them again)."""
    r = MemoryReport()
    for line in lines:
        if "sglang" in line.lower() and r.engine is None:
            r.engine = "sglang"
        for engine, rx in _VERSION:
            m = rx.search(line)
            if m and not r.version:
                r.engine, r.version = engine, m.group(1)
        for key, rx in _GIB_RULES:
            m = rx.search(line)
            if m:
                setattr(r, key, int(_num(m.group(1)) * GiB))
                r.sources[key] = line.strip()
                r.engine = r.engine or "vllm"
        for key, rx in _INT_RULES:
            m = rx.search(line)
            if m:
                setattr(r, key, int(_num(m.group(1))))
                r.sources[key] = line.strip()
        m = _CONCURRENCY.search(line)
        if m:
            r.concurrency_tokens, r.max_concurrency = int(_num(m.group(1))), _num(m.group(2))
            r.sources["max_concurrency"] = line.strip()
        m = _USAGE.search(line)
        if m:
            r.memory_fraction = _num(m.group(1))
            r.requested_bytes = int(_num(m.group(2)) * GiB)
            r.weights_bytes = int(_num(m.group(3)) * GiB)
            r.activation_bytes = int(_num(m.group(4)) * GiB)
            r.non_torch_bytes = int(_num(m.group(5)) * GiB)
            r.cudagraph_captured_bytes = int(_num(m.group(6)) * GiB)
            r.sources["activation_bytes"] = line.strip()
        m = _FIT.search(line)
        if m:
            r.kv_fit_bytes = int(m.group(1))
        m = _NEEDED.search(line)
        if m:
            r.needed_bytes = int(_num(m.group(2)) * GiB)
            r.max_model_len_estimate = int(m.group(3))
            r.sources["max_model_len_estimate"] = line.strip()
        m = _INIT.search(line)
        if m:
            r.init_seconds = _num(m.group(1))
    # The budget holds the estimate (vLLM >= 0.20 profiles graphs before sizing the cache);
    # without one, what the graphs took is the figure to plan with.
    r.cudagraph_bytes = r.cudagraph_estimate_bytes if r.cudagraph_estimate_bytes is not None else r.cudagraph_captured_bytes
    return r


# --- llama.cpp ------------------------------------------------------------------------------------

_LLAMA_BUFFER = re.compile(r"(?P<dev>[A-Za-z0-9_]+)\s+(?P<kind>model|KV|RS|compute|output) buffer size =\s*"
                           r"(?P<mib>[0-9]+(?:\.[0-9]+)?) MiB")
_LLAMA_CELLS = re.compile(r"llama_kv_cache: size =.*\(\s*(?P<cells>[0-9]+) cells,\s*(?P<layers>[0-9]+) layers")


@dataclass
class LlamaReport:
    """llama-server's own account of its buffers, bytes per (kind, device): kind is model, KV, RS
    (recurrent state), compute or output; device CPU, CPU_Mapped, CUDA0, CUDA_Host, ..."""

    buffers: dict[tuple[str, str], int] = field(default_factory=dict)
    kv_cells: int | None = None
    kv_layers: int | None = None

    def total(self, kind: str, devices: tuple[str, ...] | None = None) -> int:
        return sum(b for (k, d), b in self.buffers.items() if k == kind and (devices is None or d in devices))


def parse_llamacpp(lines) -> LlamaReport:
    """The 'X buffer size = N MiB' lines llama-server prints while loading (MiB with two decimals:
    each figure is known to 10 KiB). A buffer reported twice (graph re-reserved) counts once, at its largest."""
    rep = LlamaReport()
    for line in lines:
        m = _LLAMA_BUFFER.search(line)
        if m:
            key = (m["kind"], m["dev"])
            rep.buffers[key] = max(rep.buffers.get(key, 0), round(float(m["mib"]) * (1 << 20)))
            continue
        m = _LLAMA_CELLS.search(line)
        if m:
            rep.kv_cells, rep.kv_layers = int(m["cells"]), int(m["layers"])
    return rep
