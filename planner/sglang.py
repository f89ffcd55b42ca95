"""SGLang's memory rules for this hybrid model, as arithmetic (SGLang 0.5.14's source).

Bytes throughout. What SGLang does, in order (profiles/memory.yaml `sglang:` cites each file):

1. `--mem-fraction-static` unset: picked from nvidia-smi's total (MiB), the prefill chunk and
   the largest decode graph batch, then lowered for the vision tower (default_mem_fraction_static).
2. The weights load (target, then the MTP draft); the pool is
   `fraction x free-before-load - what the loads took` (pool_bytes).
3. The pool is split: `ratio / (1 + ratio)` of it (ratio = --mamba-full-memory-ratio, 0.9) buys
   DeltaNet state slots (with MTP each slot also pays D / (3 + extra) intermediate states for the
   running requests); the rest is the KV cache in tokens (split).
4. Max running requests = min(requested or a context-scaled estimate, KV tokens / 2,
   slots / (3 + extra)) where extra = the extra_buffer ping-pong slots (2 with overlap).

Nothing here imports SGLang; planner/sizing.py and benchmarks/gpu/predict.py call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .catalog import load_profile
from .memory import DTYPE_BYTES, deltanet_state_per_seq, kv_heads_per_rank
from .model import Shape
from .units import ceil_div

MiB = 1 << 20
STRATEGIES = ("auto", "no_buffer", "extra_buffer", "extra_buffer_lazy")


@lru_cache(maxsize=None)
def k() -> dict:
    return load_profile("memory.yaml")["sglang"]


# --- what one token / one request costs ----------------------------------------------------

def cell_bytes(shape: Shape, kv_dtype: str, tp: int = 1, pp: int = 1) -> int:
    """K and V of every full-attention layer for one token on one rank (SGLang's cell_size):
    2 KV heads x (256 + 256) x 10 layers x 2 B = 20,480 (bf16), 10,240 (fp8)."""
    layers = ceil_div(shape.full_attention_layers, pp)
    return kv_heads_per_rank(shape, tp) * 2 * shape.head_dim * layers * DTYPE_BYTES[_kv(kv_dtype)]


def draft_cell_bytes(shape: Shape, kv_dtype: str, tp: int = 1) -> int:
    """The MTP draft's KV pool: one attention layer, the same token count (allocated outside the fraction)."""
    return kv_heads_per_rank(shape, tp) * 2 * shape.head_dim * DTYPE_BYTES[_kv(kv_dtype)]


def state_per_request(shape: Shape, tp: int = 1, ssm_dtype: str = "float32", pp: int = 1) -> int:
    """mamba_cache_per_req: conv state (bf16, conv_dim / tp x (kernel - 1)) plus the recurrent
    state (value heads / tp x 128 x 128 in ssm_dtype) of every DeltaNet layer: 64,389,120 B
    (61.4 MiB) at TP 1 in float32. Unlike vLLM's, the conv window has no draft-token columns."""
    per_layer = deltanet_state_per_seq(shape, tp=tp, ssm_dtype=ssm_dtype) // shape.linear_layers
    return per_layer * ceil_div(shape.linear_layers, pp)


def _kv(kv_dtype: str) -> str:
    return "bfloat16" if kv_dtype in ("auto", None, "bf16", "bfloat16") else ("fp8" if kv_dtype.startswith("fp8") else kv_dtype)


# --- defaults by GPU size --------------------------------------------------------------------

def _by_memory(table: list, gpu_mem_mib: float) -> list:
    for row in table:
        if row[0] is None or gpu_mem_mib < row[0]:
            return row[1:]
    return table[-1][1:]


def default_chunked_prefill(gpu_mem_mib: float) -> int:
    """--chunked-prefill-size unset: 8,192 on an H100 or H200, 16,384 from 160 GiB."""
    return _by_memory(k()["default_chunked_prefill"], gpu_mem_mib)[0]


def default_cuda_graph_max_bs(gpu_mem_mib: float, tp: int = 1) -> int:
    """--cuda-graph-max-bs unset: 256 on an H100 or H200 below TP 4, 512 at TP 4+."""
    small_tp, large_tp = _by_memory(k()["default_cuda_graph_max_bs"], gpu_mem_mib)
    return small_tp if tp < 4 else large_tp


def vlm_factor() -> float:
    """adjust_mem_fraction_for_vlm: 0.95 x clamp(1 - 0.1 x (complexity - 1), 0.8, 1.05), the
    complexity being layers x hidden^2 against ViT-L's 24 x 1024^2 (0.9248 here)."""
    c = k()
    ratio = c["vision_layers_read"] * c["vision_hidden_size"] ** 2 / (24 * 1024 ** 2)
    return c["vlm_base_factor"] * max(0.8, min(1.05, 1.0 - 0.1 * (ratio - 1.0)))


def default_mem_fraction_static(gpu_mem_mib: float, chunked_prefill: int | None = None,
                                cuda_graph_max_bs: int | None = None, tp: int = 1, pp: int = 1,
                                vision: bool = True) -> float:
    """The fraction SGLang picks when --mem-fraction-static is not given (an H200, 143,771 MiB:
    round((143771 - 13440) / 143771, 3) = 0.907, x 0.9248 for the vision tower = 0.8388)."""
    c = k()
    chunk = chunked_prefill if chunked_prefill is not None else default_chunked_prefill(gpu_mem_mib)
    max_bs = cuda_graph_max_bs if cuda_graph_max_bs is not None else default_cuda_graph_max_bs(gpu_mem_mib, tp)
    reserved = (c["reserved_base_mib"] + max(chunk, 2048) * c["reserved_per_chunk_token_mib"]
                + max_bs * c["reserved_per_graph_bs_mib"] + tp * pp * c["reserved_per_rank_mib"])
    if gpu_mem_mib > c["reserved_floor_above_mib"]:
        reserved = max(reserved, c["reserved_floor_mib"])
    fraction = round((gpu_mem_mib - reserved) / gpu_mem_mib, 3)
    return fraction * vlm_factor() if vision else fraction


# --- the pool and its split ------------------------------------------------------------------

def mamba_ratio(strategy: str = "auto", overlap: bool = True, radix_cache: bool = True) -> int:
    """Slots each running request may hold (_calculate_mamba_ratio): 3, + 2 ping-pong track
    buffers with extra_buffer and the overlap scheduler (5), + 1 without overlap or lazy; 1
    with the radix cache disabled. 'auto' resolves to extra_buffer with overlap for this model."""
    if not radix_cache:
        return 1
    c = k()
    strategy = resolve_strategy(strategy, overlap)
    extra = 0
    if strategy.startswith("extra_buffer"):
        extra = c["mamba_extra_buffer_slots"][("overlap_lazy" if strategy == "extra_buffer_lazy" else "overlap")
                                              if overlap else "no_overlap"]
    return c["mamba_slots_per_request"] + extra


def resolve_strategy(strategy: str, overlap: bool = True) -> str:
    """_handle_mamba_radix_cache: 'auto' is extra_buffer when the overlap scheduler is on (the
    default) for Qwen3.5 MoE with the triton linear-attention backend, else no_buffer."""
    return ("extra_buffer" if overlap else "no_buffer") if strategy in (None, "auto") else strategy


def pool_bytes(fraction: float, pre_load_bytes: int, weights_bytes: int) -> int:
    """_profile_available_bytes: free now - free-before-load x (1 - fraction), i.e.
    fraction x free-before-load - what the loads took."""
    return int(fraction * pre_load_bytes - weights_bytes)


@dataclass(frozen=True)
class Knobs:
    """SGLang settings the split reads that a Candidate does not carry; None = SGLang's default
    (a served command's flags: benchmarks/gpu/predict.py)."""

    mem_fraction_static: float | None = None   # None: the planner derives it from its reserve
    pre_load_bytes: int | None = None          # None: CUDA total - non-torch memory
    context_len: int | None = None
    max_running_requests: int | None = None     # None in a served command: SGLang's estimate
    requests_from_candidate: bool = True        # the planner always states --max-running-requests
    strategy: str = "auto"
    overlap: bool = True
    radix_cache: bool = True
    mamba_full_memory_ratio: float | None = None
    max_mamba_cache_size: int | None = None
    page_size: int | None = None
    max_total_tokens: int | None = None
    ssm_dtype: str | None = None                # --mamba-ssm-dtype; None: the config's (float32)


@dataclass(frozen=True)
class SglangPool:
    """How SGLang lays out one rank's pool (bytes; the figures its log states)."""

    mem_fraction_static: float
    pre_load_bytes: int          # free GPU memory when the weights start loading
    pool_bytes: int              # fraction x pre_load - weights: mamba slots + intermediates + KV
    state_per_request: int       # mamba_cache_per_req
    mamba_slots: int             # max_mamba_cache_size
    intermediate_bytes: int      # MTP: per-draft-token states reserved for the running requests
    cell_bytes: int              # KV bytes per token (target's attention layers)
    kv_tokens: int               # max_total_num_tokens
    max_running_requests: int
    slots_per_request: int       # the mamba ratio (5 with extra_buffer and overlap)
    draft_kv_bytes: int = 0      # MTP draft's one-layer KV pool, outside the fraction

    @property
    def mamba_bytes(self) -> int:
        """The slots' conv + recurrent state as allocated (size + 1 rows)."""
        return (self.mamba_slots + 1) * self.state_per_request

    @property
    def kv_bytes(self) -> int:
        """The target's K + V buffers as allocated (size + page rows)."""
        return (self.kv_tokens + k()["page_size"]) * self.cell_bytes

    def as_dict(self) -> dict:
        return {"mem_fraction_static": self.mem_fraction_static, "pre_load_bytes": self.pre_load_bytes,
                "pool_bytes": self.pool_bytes, "mamba_slots": self.mamba_slots, "mamba_bytes": self.mamba_bytes,
                "state_bytes_per_slot": self.state_per_request, "slots_per_request": self.slots_per_request,
                "intermediate_bytes": self.intermediate_bytes, "kv_tokens": self.kv_tokens,
                "kv_bytes": self.kv_bytes, "kv_bytes_per_token": self.cell_bytes,
                "draft_kv_bytes": self.draft_kv_bytes, "max_running_requests": self.max_running_requests}


def split(pool: int, *, state_per_req: int, cell: int, fraction: float, pre_load: int, context_len: int,
          max_running_requests: int | None = None, draft_tokens: int = 0, slots_per_request: int = 5,
          mamba_full_memory_ratio: float | None = None, max_mamba_cache_size: int | None = None,
          radix_cache: bool = True, page_size: int | None = None, max_total_tokens: int | None = None,
          draft_cell: int = 0) -> SglangPool:
    """handle_max_mamba_cache, then DefaultPoolConfigurator.calculate_pool_sizes, then
    _resolve_max_num_reqs, with SGLang's own float arithmetic."""
    c = k()
    r = c["mamba_full_memory_ratio"] if mamba_full_memory_ratio is None else mamba_full_memory_ratio
    page = page_size or c["page_size"]
    ratio, d, mrr = slots_per_request, draft_tokens, max_running_requests
    if d and mrr is None:
        mrr = c["speculative_default_max_running_requests"]
    rest = float(pool)
    inter = 0.0
    if max_mamba_cache_size is not None:
        slots = max_mamba_cache_size
        if d:
            inter = state_per_req * min(mrr, slots // ratio) * d
    elif not radix_cache and mrr is not None:
        slots = mrr
        if d:
            inter = state_per_req * slots * d
    else:
        budget = rest * r / (1 + r)
        if d:
            slots = int(budget // (state_per_req * (1 + d / ratio)))
            inter = state_per_req * min(mrr, slots // ratio) * d
        else:
            slots = int(budget // state_per_req)
    kv_avail = max(0, int(rest - inter - slots * state_per_req))
    tokens = kv_avail // cell // page * page
    if max_total_tokens is not None:
        tokens = min(tokens, max_total_tokens) // page * page
    if mrr is not None:
        reqs = min(mrr, tokens // 2)
    else:
        e = c["max_running_requests_estimate"]
        est = max(min(int(tokens / context_len * e["per_context_tokens"]), e["max"]), e["min"])
        reqs = min(est, tokens // 2)
    reqs = max(0, min(reqs, slots // ratio))
    return SglangPool(mem_fraction_static=fraction, pre_load_bytes=pre_load, pool_bytes=pool,
                      state_per_request=state_per_req, mamba_slots=max(0, slots), intermediate_bytes=int(inter),
                      cell_bytes=cell, kv_tokens=tokens, max_running_requests=reqs, slots_per_request=ratio,
                      draft_kv_bytes=(tokens + page) * draft_cell if d else 0)
