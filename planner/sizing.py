"""One GPU's memory for one candidate plan: weights, reserve, and what is left for the cache.

vLLM's budget is gpu_memory_utilization x the CUDA-visible total; from it vLLM takes the
weights, the peak activation of its profiling run, non-torch memory and (from 0.20) the
estimated CUDA graph memory, and pages what is left as KV cache and DeltaNet state
(vllm/v1/worker/gpu_worker.py determine_available_memory; planner/memory.py for the paging).
SGLang's --mem-fraction-static times the free memory before the weights load covers the
weights and its pools; activations, graphs and the MTP draft's KV pool live outside it. The
planner sizes those terms, derives the fraction from them, and splits the pool by SGLang's own
rules (planner/sglang.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from .catalog import load_profile
from . import sglang as sgl
from .memory import DTYPE_BYTES, VllmLayout, deltanet_state_per_seq, kv_bytes_per_token, vllm_layout
from .units import ceil_div
from .variants import Variant
from .weights import loaded_bytes


@lru_cache(maxsize=None)
def constants(engine_family: str) -> dict:
    return load_profile("memory.yaml")[engine_family]


@dataclass(frozen=True)
class Candidate:
    variant: Variant
    engine: str              # vllm | vllm-offload | sglang
    version: str
    tp: int = 1
    pp: int = 1
    dp: int = 1
    kv_dtype: str = "auto"   # auto (= bf16) | fp8
    spec_tokens: int = 0     # MTP draft tokens, 0 = off
    eager: bool = False
    expert_cache: int | None = None   # offload fork: expert slots per layer on the GPU
    batched_tokens: int = 8192
    vision: bool = False
    max_seqs: int = 64       # max_num_seqs: sizes the sampler's activation and the CUDA graphs

    @property
    def family(self) -> str:
        return "sglang" if self.engine == "sglang" else "vllm"

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp


@dataclass
class Sized:
    """Per-GPU bytes; `cache_bytes` is what the engine pages as KV cache and DeltaNet state."""

    budget: int
    weights: int
    expert_cache: int
    activation: int
    non_torch: int
    cudagraph: int            # inside the budget (profiled) or, before vLLM 0.20, outside it
    cudagraph_in_budget: bool
    cache_bytes: int
    kv_per_token: int
    state_per_seq: int
    layout: VllmLayout | None
    sglang: sgl.SglangPool | None = None     # SGLang: its split of the pool (mamba slots, KV tokens)

    # --- what the cache holds --------------------------------------------------------------
    def blocks_for(self, tokens: int) -> int:
        return self.layout.blocks_per_request(tokens)

    def full_length_seqs(self, tokens: int) -> int:
        """Requests of `tokens` tokens the pool holds at once."""
        if self.cache_bytes <= 0:
            return 0
        if self.layout:
            return self.layout.num_blocks(self.cache_bytes) // self.layout.blocks_per_request(tokens)
        if self.sglang:
            return min(self.sglang.kv_tokens // tokens, self.sglang.max_running_requests)
        return self.cache_bytes // (tokens * self.kv_per_token + self.state_per_seq)

    def seqs_at(self, tokens: int) -> int:
        """Sequences of `tokens` tokens the pool runs at once (SGLang: also bounded by its state slots)."""
        if self.sglang:
            return min(self.sglang.kv_tokens // max(1, tokens), self.sglang.mamba_slots // self.sglang.slots_per_request)
        return max(0, self.cache_bytes // (tokens * self.kv_per_token + self.state_per_seq))

    def max_len(self) -> int:
        if self.cache_bytes <= 0:
            return 0
        if self.layout:
            return self.layout.max_model_len(self.cache_bytes)
        if self.sglang:
            return self.sglang.kv_tokens
        return max(0, (self.cache_bytes - self.state_per_seq) // self.kv_per_token)

    def kv_tokens(self, max_model_len: int) -> int:
        """The engine's own 'KV cache size' figure (vLLM: tokens of full-length requests;
        SGLang: max_total_num_tokens)."""
        if self.layout:
            return self.layout.reported_tokens(self.cache_bytes, max_model_len)
        if self.sglang:
            return self.sglang.kv_tokens
        return max(0, self.cache_bytes // self.kv_per_token)

    def max_concurrency(self, max_model_len: int) -> float:
        if self.layout:
            return self.layout.max_concurrency(self.cache_bytes, max_model_len)
        if self.sglang:
            return min(self.sglang.kv_tokens / max_model_len, self.sglang.max_running_requests)
        return self.cache_bytes / (max_model_len * self.kv_per_token + self.state_per_seq)

    @property
    def total(self) -> int:
        inside = self.cudagraph if self.cudagraph_in_budget else 0
        draft = self.sglang.draft_kv_bytes if self.sglang else 0
        return (self.weights + self.expert_cache + self.activation + self.non_torch + inside + max(0, self.cache_bytes)
                + draft)


def weights_on_gpu(c: Candidate) -> tuple[int, int, int]:
    """(weights without routed experts held by the cache, expert cache bytes, one expert slot) per GPU."""
    m = c.variant.model
    # vLLM's DP with an MoE model splits every expert over the DP x TP ranks.
    ep = c.tp * c.dp if _expert_dp(c) > 1 else 1
    # SGLang builds the vision tower whatever the plan (profiles/memory.yaml sglang loads_vision).
    vision = c.vision or bool(constants(c.family).get("loads_vision"))
    loaded = _loaded(c.variant.recipe, m.shape, m.vision_params, c.tp, ep, c.spec_tokens > 0, vision)
    # Pipeline parallelism splits the decoder layers across stages (the largest stage counts).
    share = 1.0 if c.pp == 1 else ceil_div(m.shape.layers, c.pp) / m.shape.layers
    overhead = constants(c.family)["load_overhead_bytes"] + _draft_embeddings(c)
    if c.expert_cache is None:
        return int(loaded.total * share) + overhead, 0, 0
    slot = loaded.expert_per_layer_each * m.shape.layers
    fork = _fork_cache_facts()
    cache = c.expert_cache * slot + fork["overflow_buffer_bytes"]
    return int((loaded.total - loaded.experts) * share) + overhead, cache, slot


def _draft_embeddings(c: Candidate) -> int:
    """SGLang's MTP draft allocates its own embedding and LM head (bfloat16, split over the vocabulary
    by TP) before it shares the target's, so the pool is sized with both (profiles/memory.yaml)."""
    if not (c.spec_tokens and constants(c.family).get("mtp_draft_own_embeddings")):
        return 0
    s = c.variant.model.shape
    return 2 * ceil_div(s.vocab, c.tp) * s.hidden * DTYPE_BYTES["bfloat16"]


@lru_cache(maxsize=None)
def _loaded(recipe, shape, vision_params, tp, ep, mtp, vision):
    return loaded_bytes(recipe, shape, vision_params, tp=tp, ep=ep, mtp=mtp, vision=vision)


@lru_cache(maxsize=None)
def _fork_cache_facts() -> dict:
    return load_profile("engines.yaml")["engines"]["vllm-offload"]["expert_cache"]


def state_dtype(c: Candidate) -> str:
    return constants(c.family)["ssm_state_dtype"]


def vllm_default_batched_tokens(cuda_total: int, gpu_names=()) -> tuple[int, bool]:
    """(vLLM's default max_num_batched_tokens for the OpenAI server on this GPU, whether it is a
    'large' GPU by vLLM's rule: >= 70 GiB and not an A100)."""
    k = constants("vllm")
    large = cuda_total >= k["large_gpu_bytes"] and not any("A100" in n.upper() for n in gpu_names)
    if cuda_total >= k["huge_gpu_bytes"]:
        return k["batched_tokens_huge_gpu"], True
    return (k["batched_tokens_large_gpu"] if large else k["batched_tokens_small_gpu"]), large


def vllm_default_max_num_seqs(cuda_total: int, gpu_names=()) -> int:
    k = constants("vllm")
    return k["default_max_num_seqs_large_gpu" if vllm_default_batched_tokens(cuda_total, gpu_names)[1]
             else "default_max_num_seqs_small_gpu"]


def _expert_dp(c: Candidate) -> int:
    """The DP ranks that share the expert layers (vLLM: all of them; SGLang: none, replicas)."""
    return c.dp if constants(c.family)["dp_shards_experts"] else 1


def activation_bytes(c: Candidate) -> int:
    """Peak activation of the engine's profiling run on one GPU: the larger of one prefill
    chunk's forward pass (its base split over TP ranks; its per-token part grows with the DP
    ranks that share the experts) and the sampler over max_num_seqs rows of logits (whole on
    every rank), plus the MTP drafter's pass (profiles/memory.yaml)."""
    k = constants(c.family)
    per_token = k["activation_bytes_per_batched_token"] * c.batched_tokens * _expert_dp(c)
    forward = (k["activation_base_bytes"] // c.tp + (per_token // c.tp if k["activation_per_token_split_by_tp"] else per_token)
               + k["activation_delta_by_format"].get(c.variant.format, 0))
    sampler = k["sampler_base_bytes"] + k["sampler_bytes_per_seq"] * c.max_seqs
    return max(forward, sampler) + (k["mtp_drafter_activation_bytes"] if c.spec_tokens else 0)


def cudagraph_capture_size(c: Candidate) -> int:
    """vLLM's largest CUDA graph batch: min(2 x max_num_seqs x (1 + draft tokens), 512, chunk)."""
    k = constants(c.family)
    return min(2 * c.max_seqs * (1 + c.spec_tokens), k["cudagraph_max_capture_size"], c.batched_tokens)


def cudagraph_bytes(c: Candidate) -> int:
    """The graph memory the engine sets aside (vLLM: its estimate, before sizing the KV cache)."""
    if c.eager:
        return 0
    k = constants(c.family)
    per_size = (k["cudagraph_bytes_per_capture_size"] // c.tp
                + k["cudagraph_bytes_per_capture_size_per_extra_dp_rank"] * (_expert_dp(c) - 1))
    return k["cudagraph_base_bytes"] + per_size * cudagraph_capture_size(c)


def size(c: Candidate, budget: int, cudagraph_profiled: bool, cuda_total: int | None = None,
         knobs: sgl.Knobs | None = None) -> Sized:
    if c.family == "sglang":
        return _size_sglang(c, budget, cuda_total, knobs or sgl.Knobs())
    k = constants(c.family)
    m = c.variant.model
    weights, expert_cache, _ = weights_on_gpu(c)
    activation = activation_bytes(c)
    non_torch = k["non_torch_multi_gpu_bytes"] if c.tp * c.pp * c.dp > 1 else k["non_torch_bytes"]
    cudagraph = cudagraph_bytes(c)
    in_budget = cudagraph_profiled or c.family == "sglang"
    cache = budget - weights - expert_cache - activation - non_torch - (cudagraph if in_budget else 0)
    kv_dtype = "bfloat16" if c.kv_dtype == "auto" else c.kv_dtype
    kv_tok = kv_bytes_per_token(m.shape, kv_dtype, c.tp, m.shape.full_attention_layers + (1 if c.spec_tokens else 0))
    kv_tok = ceil_div(kv_tok * ceil_div(m.shape.layers, c.pp), m.shape.layers) if c.pp > 1 else kv_tok
    state = deltanet_state_per_seq(m.shape, tp=c.tp, ssm_dtype=state_dtype(c), num_spec=c.spec_tokens)
    layout = None
    if c.family == "vllm":
        layout = vllm_layout(m.shape, kv_dtype, c.tp, ssm_dtype=state_dtype(c), num_spec=c.spec_tokens,
                             extra_attention_layers=1 if c.spec_tokens else 0)
    return Sized(budget=budget, weights=weights, expert_cache=expert_cache, activation=activation,
                 non_torch=non_torch, cudagraph=cudagraph, cudagraph_in_budget=in_budget, cache_bytes=cache,
                 kv_per_token=kv_tok, state_per_seq=state, layout=layout)


def _size_sglang(c: Candidate, budget: int, cuda_total: int | None, kn: sgl.Knobs) -> Sized:
    """SGLang: the fraction (given, or the largest two-decimal one that leaves the planner's
    reserve and the MTP draft's KV pool outside it within the budget), the pool it yields after
    the weights, and SGLang's split of that pool (planner/sglang.py)."""
    k = constants("sglang")
    m = c.variant.model
    weights, expert_cache, _ = weights_on_gpu(c)
    activation = activation_bytes(c)
    non_torch = k["non_torch_multi_gpu_bytes"] if c.tp * c.pp * c.dp > 1 else k["non_torch_bytes"]
    cudagraph = cudagraph_bytes(c)
    # Without the CUDA total the budget is taken as SGLang's 0.90 share of it (decide.py's default).
    total = cuda_total or int(budget / 0.90)
    pre = kn.pre_load_bytes if kn.pre_load_bytes is not None else total - non_torch
    state = sgl.state_per_request(m.shape, c.tp, kn.ssm_dtype or state_dtype(c), c.pp)
    cell = sgl.cell_bytes(m.shape, c.kv_dtype, c.tp, c.pp)
    draft_tokens = c.spec_tokens + 1 if c.spec_tokens else 0
    ratio = sgl.mamba_ratio(kn.strategy, kn.overlap, kn.radix_cache)
    requests = kn.max_running_requests if kn.max_running_requests is not None else (
        c.max_seqs if kn.requests_from_candidate else None)

    def lay_out(fraction: float) -> sgl.SglangPool:
        return sgl.split(sgl.pool_bytes(fraction, pre, weights + expert_cache), state_per_req=state, cell=cell,
                         fraction=fraction, pre_load=pre, context_len=kn.context_len or m.native_context,
                         max_running_requests=requests, draft_tokens=draft_tokens, slots_per_request=ratio,
                         mamba_full_memory_ratio=kn.mamba_full_memory_ratio,
                         max_mamba_cache_size=kn.max_mamba_cache_size, radix_cache=kn.radix_cache,
                         page_size=kn.page_size, max_total_tokens=kn.max_total_tokens,
                         draft_cell=sgl.draft_cell_bytes(m.shape, c.kv_dtype, c.tp))

    if kn.mem_fraction_static is not None:
        pool = lay_out(kn.mem_fraction_static)
    else:
        # What stays outside the fraction: activations, graphs and (second pass) the draft's KV.
        draft = 0
        for _ in range(2):
            static = budget - non_torch - activation - cudagraph - draft
            pool = lay_out(max(0.0, int(static / pre * 100) / 100))
            draft = pool.draft_kv_bytes
    return Sized(budget=budget, weights=weights, expert_cache=expert_cache, activation=activation,
                 non_torch=non_torch, cudagraph=cudagraph, cudagraph_in_budget=True, cache_bytes=pool.pool_bytes,
                 kv_per_token=cell, state_per_seq=state, layout=None, sglang=pool)


def kv_dtype_bytes(kv_dtype: str) -> int:
    return DTYPE_BYTES["bfloat16" if kv_dtype == "auto" else kv_dtype]


def calibration_key(gpu: str, engine: str, version: str, variant: str, kv_dtype: str, tp: int) -> str:
    """The store key of what an engine reported for this combination (launch/calibration.py)."""
    import re
    raw = f"{gpu}--{engine}-{version}--{variant}--kv-{kv_dtype}--tp{tp}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw)


def apply_measured(c: Candidate, s: Sized, observation: dict) -> Sized | None:
    """Replace the formula's terms with what the engine reported for the same combination.
    Activation and graph memory only carry over with the same prefill chunk, sequence cap,
    speculation and eager mode (each changes them); the graph figure is vLLM's estimate, the
    one it subtracts before sizing the cache."""
    rep = observation.get("reported") or {}
    st = observation.get("settings") or {}
    if not rep.get("weights_bytes"):
        return None
    spec = (st.get("speculative") or {}).get("num_speculative_tokens", 0)
    same_shape = (st.get("max_num_batched_tokens") == c.batched_tokens and bool(st.get("enforce_eager")) == c.eager
                  and st.get("max_num_seqs") == c.max_seqs and spec == c.spec_tokens)
    weights = rep["weights_bytes"]
    if not 0 < weights < s.budget:
        return None        # no engine that started could have reported it: the formula stands
    if s.sglang:
        # SGLang: the same fraction over the same free memory, less what the loads really took.
        p = s.sglang
        pool = sgl.split(sgl.pool_bytes(p.mem_fraction_static, p.pre_load_bytes, weights), state_per_req=p.state_per_request,
                         cell=p.cell_bytes, fraction=p.mem_fraction_static, pre_load=p.pre_load_bytes,
                         context_len=c.variant.model.native_context, max_running_requests=c.max_seqs,
                         draft_tokens=c.spec_tokens + 1 if c.spec_tokens else 0, slots_per_request=p.slots_per_request,
                         draft_cell=sgl.draft_cell_bytes(c.variant.model.shape, c.kv_dtype, c.tp))
        return replace(s, weights=weights, cache_bytes=pool.pool_bytes, sglang=pool)
    activation = rep.get("activation_bytes") if same_shape and rep.get("activation_bytes") else s.activation
    non_torch = rep.get("non_torch_bytes") or s.non_torch
    graph_estimate = rep.get("cudagraph_estimate_bytes", rep.get("cudagraph_bytes"))
    cudagraph = (graph_estimate or 0) if same_shape and not c.eager else s.cudagraph
    inside = cudagraph if s.cudagraph_in_budget else 0
    cache = s.budget - weights - s.expert_cache - activation - non_torch - inside
    return Sized(budget=s.budget, weights=weights, expert_cache=s.expert_cache, activation=activation,
                 non_torch=non_torch, cudagraph=cudagraph, cudagraph_in_budget=s.cudagraph_in_budget,
                 cache_bytes=cache, kv_per_token=s.kv_per_token, state_per_seq=s.state_per_seq, layout=s.layout)
