"""Reading what an engine says about memory in its log (vLLM and SGLang).

The lines matched here are the real ones (shared/gpu-truth/*.log for vLLM 0.26; SGLang 0.5.14's
own format strings, file by file below); each figure is kept in bytes, as the memory model
predicts them, so both can be shown side by side.
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
    # SGLang (kv_cache_bytes / kv_tokens: the target's pool; weights_bytes: every load, target + MTP
    # draft; cudagraph_bytes: every capture; figures of the first GPU, rank 0)
    pre_load_bytes: int | None = None        # free memory when the weights began to load (SGLang sizes on it)
    weights_loads: int | None = None         # 'Load weight end' lines: 2 with an MTP draft
    mamba_cache_bytes: int | None = None     # DeltaNet conv + ssm states of the slots
    intermediate_bytes: int | None = None    # MTP verify: intermediate ssm states + conv windows
    draft_kv_bytes: int | None = None        # the MTP draft's own KV pool
    kv_cache_dtype: str | None = None
    mem_fraction_static: float | None = None  # the fraction SGLang used (its default when not given)
    chunked_prefill_size: int | None = None
    max_prefill_tokens: int | None = None
    available_after_start_bytes: int | None = None  # free memory once started ('available_gpu_mem')
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
]
_VERSION = [("vllm", re.compile(r"version (\d+\.\d+\.\d+\S*)\s*$")),
            ("vllm", re.compile(r"Initializing a V1 LLM engine \(v(\d+\.\d+\.\d+[^)]*)\)")),
            # SGLang logs no version: benchmarks/gpu/runner.py heads its serve.log with the
            # installed one ('sglang==0.5.14'), `sglang version` prints 'sglang version: 0.5.14'
            ("sglang", re.compile(r"\bsglang(?:==|\s+version:?\s+)(\d+\.\d+\.\d+\S*)"))]
_CONCURRENCY = re.compile(r"Maximum concurrency for " + _NUM + r" tokens per request: " + _NUM + r"x")
_USAGE = re.compile(r"Desired GPU memory utilization is \(" + _NUM + r", " + _NUM + r" GiB\)\. Actual usage is "
                    + _NUM + r" GiB for weight, " + _NUM + r" GiB for peak activation, " + _NUM
                    + r" GiB for non-torch memory, and " + _NUM + r" GiB for CUDAGraph memory")
_FIT = re.compile(r"--kv-cache-memory(?:-bytes)?=(\d+)`? \(" + _NUM + r" GiB\) to fit into requested memory")
_NEEDED = re.compile(r"max seq len \((\d+)\), \(" + _NUM + r" GiB KV cache is needed.*?estimated maximum model "
                     r"length is (\d+)")
_INIT = re.compile(r"init engine \(profile, create kv cache, warmup model\) took " + _NUM + r" s")

# --- SGLang 0.5.14 ------------------------------------------------------------------------------
# Its "GB" is GiB: utils/common.py get_available_gpu_memory returns free bytes / (1 << 30), and
# mem_cache/memory_pool.py divides by GB = 1024 * 1024 * 1024. The format strings, by file:
_SG_START = re.compile(r"server_args=ServerArgs\(")                        # entrypoints/engine.py
_SG_FRACTION = re.compile(r"server_args=ServerArgs\(.*?\bmem_fraction_static=" + _NUM)
_SG_LOAD_BEGIN = re.compile(r"Load weight begin\. avail mem=" + _NUM + r" GB")   # model_executor/model_runner.py
_SG_LOAD_END = re.compile(r"Load weight end\. elapsed=[0-9.]+ s, .*?avail mem=" + _NUM + r" GB, mem usage="
                          + _NUM + r" GB")
# mem_cache/memory_pool.py _finalize_allocation_log: "K size/V size" (MHA pools) or "KV size" (MLA)
_SG_KV = re.compile(r"KV Cache is allocated\. dtype: (\S+), #tokens: (\d+), (?:K size: " + _NUM + r" GB, V size: "
                    + _NUM + r" GB|KV size: " + _NUM + r" GB)")
# mem_cache/memory_pool.py MambaPool: the MTP form adds the verify intermediates
_SG_MAMBA = re.compile(r"Mamba Cache is allocated\. max_mamba_cache_size: (\d+), conv_state size: " + _NUM
                       + r"GB, ssm_state size: " + _NUM + r"GB(?: intermediate_ssm_state_cache size: " + _NUM
                       + r"GB intermediate_conv_window_cache size: " + _NUM + r"GB)?")
# model_runner.py (target/draft decode, verify, prefill) and speculative/eagle_worker_v2.py (draft
# decode, draft extend): "Capture <what> CUDA graph end. elapsed=.. s, mem usage=.. GB, avail mem=.. GB."
_SG_CAPTURE = re.compile(r"Capture [\w -]+? (?:CUDA|cuda) graph end\. elapsed=[0-9.]+ s, mem usage=(-?[0-9.]+) GB")
# managers/scheduler.py, once the pools and graphs are in place
_SG_SCHED = re.compile(r"max_total_num_tokens=(\d+), chunked_prefill_size=(-?\d+), max_prefill_tokens=(\d+), "
                       r"max_running_requests=(\d+), context_len=(\d+), available_gpu_mem=" + _NUM + r" GB")
# Every rank logs its own lines, tagged in the prefix ("[time TP1]", "[time DP0 TP1 EP1]"):
# the figures kept are the first GPU's.
_SG_OTHER_RANK = re.compile(r"^\[[^\]]*?\b(?:DP|PP|TP|EP|ATTN_CP|MOE_DP)(?!0\b)\d+\b[^\]]*\]")


class _SGLang:
    """One SGLang start's figures: loads, pools and captures add up within a start; a restart
    in the same log ('server_args=' again) starts them over."""

    FIELDS = ("pre_load_bytes", "weights_bytes", "weights_loads", "kv_cache_bytes", "kv_tokens", "kv_cache_dtype",
              "draft_kv_bytes", "mamba_cache_size", "mamba_cache_bytes", "intermediate_bytes", "cudagraph_bytes",
              "max_running_requests", "context_len", "chunked_prefill_size", "max_prefill_tokens",
              "available_after_start_bytes", "mem_fraction_static")

    def __init__(self):
        self.loads: list[float] = []
        self.captures: list[float] = []
        self.kv: list[tuple[str, int, float]] = []
        self.pre_load: float | None = None
        self.mamba = False
        self.seen = False

    def read(self, line: str, r: MemoryReport) -> None:
        if _SG_START.search(line):
            self.__init__()
            self.seen = True
            for key in self.FIELDS:
                setattr(r, key, None)
            m = _SG_FRACTION.search(line)
            if m:
                r.mem_fraction_static = _num(m.group(1))
            return
        if _SG_OTHER_RANK.search(line):
            return
        src = line.strip()
        if (m := _SG_LOAD_BEGIN.search(line)) and self.pre_load is None:
            self.pre_load = _num(m.group(1))         # the target's; the draft's comes after its load
            r.pre_load_bytes = int(self.pre_load * GiB)
            r.sources["pre_load_bytes"] = src
        elif m := _SG_LOAD_END.search(line):
            self.loads.append(_num(m.group(2)))
            r.weights_bytes, r.weights_loads = int(sum(self.loads) * GiB), len(self.loads)
            r.sources["weights_bytes"] = src
        elif m := _SG_KV.search(line):
            gib = _num(m.group(3)) + _num(m.group(4)) if m.group(3) else _num(m.group(5))
            self.kv.append((m.group(1), int(m.group(2)), gib))
            if len(self.kv) == 1:                    # the target's pool; an MTP draft's follows it
                r.kv_cache_dtype, r.kv_tokens, r.kv_cache_bytes = self.kv[0][0].removeprefix("torch."), self.kv[0][1], int(gib * GiB)
                r.sources["kv_cache_bytes"] = src
            else:
                r.draft_kv_bytes = int(sum(g for _, _, g in self.kv[1:]) * GiB)
                r.sources["draft_kv_bytes"] = src
        elif (m := _SG_MAMBA.search(line)) and not self.mamba:
            self.mamba = True
            r.mamba_cache_size = int(m.group(1))
            r.mamba_cache_bytes = int((_num(m.group(2)) + _num(m.group(3))) * GiB)
            if m.group(4):
                r.intermediate_bytes = int((_num(m.group(4)) + _num(m.group(5))) * GiB)
            r.sources["mamba_cache_size"] = src
        elif m := _SG_CAPTURE.search(line):
            self.captures.append(_num(m.group(1)))
            r.cudagraph_bytes = int(sum(self.captures) * GiB)
            r.sources["cudagraph_bytes"] = src
        elif m := _SG_SCHED.search(line):
            r.kv_tokens, r.chunked_prefill_size, r.max_prefill_tokens = int(m.group(1)), int(m.group(2)), int(m.group(3))
            r.max_running_requests, r.context_len = int(m.group(4)), int(m.group(5))
            r.available_after_start_bytes = int(_num(m.group(6)) * GiB)
            for key in ("kv_tokens", "max_running_requests", "context_len"):
                r.sources[key] = src
        else:
            return
        self.seen = True


def parse_memory(lines) -> MemoryReport:
    """Every memory figure the log states (later lines win: a restart logs them again)."""
    r = MemoryReport()
    sg = _SGLang()
    for line in lines:
        if "sglang" in line.lower() and r.engine is None:
            r.engine = "sglang"
        sg.read(line, r)
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
    if sg.seen:
        r.engine = "sglang"
        return r
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
