"""Predicted speed of a candidate plan: tokens/s, time to first token and time per output token.

A roofline per engine step and a burst scheduler (profiles/speed.yaml has the constants and
their sources):

- one step moves the non-expert weights, the routed experts that its tokens touch (top-k of E:
  1 - (1 - k/E)^tokens of them), the shared experts, and per running sequence its KV cache at the
  current context and its float32 DeltaNet state (read and written); it computes 2 FLOPs per
  active weight per token plus attention over the context. It costs a fixed overhead plus the
  larger of bytes / effective bandwidth and FLOPs / effective compute, plus tensor- and
  expert-parallel collectives over NVLink or PCIe;
- the scheduler is vLLM's V1: each step decodes every running sequence first, then fills the
  rest of `max_num_batched_tokens` with prompt chunks, admitting waiting requests up to
  `max_num_seqs` (waves when a burst is larger than that);
- MTP verifies 1 + k tokens per sequence and step, after k draft passes, and yields 1 + a + a^2 ...
  tokens, a being the acceptance of one draft token.

Pure and standard library only: planning stays fast (a few hundred microseconds a candidate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from .catalog import GPUProfile, find_gpu, gpus, load_profile
from .memory import deltanet_state_per_seq, kv_bytes_per_token
from .model import Shape, tensors

CONCURRENCIES = (1, 32, 128)
# Weight formats with served runs behind the fitted constants (benchmarks/gpu/results).
MEASURED_FORMATS = frozenset({"bf16", "fp8_block128"})
INPUT_TOKENS = 1024       # the harness's load (benchmarks/gpu/load.py): 1,024 in, 256 out
OUTPUT_TOKENS = 256


@lru_cache(maxsize=1)
def profile() -> dict:
    return load_profile("speed.yaml")


@dataclass(frozen=True)
class Constants:
    step_overhead_s: float
    bandwidth_efficiency: float            # 16-bit weights
    quantized_bandwidth_efficiency: float  # weights the kernels dequantize (FP8, INT4, FP4)
    compute_efficiency: float
    eager_step_overhead_s: float
    request_overhead_s: float
    draft_overhead_s: float = 0.0018     # per MTP draft pass: its own launch, sampling and bookkeeping

    @staticmethod
    def for_engine(family: str = "vllm") -> "Constants":
        d = profile()
        block = d.get(family) or d["vllm"]
        block = d[block["same_as"]] if "same_as" in block else block
        fitted = block["fitted"]
        return Constants(step_overhead_s=fitted["step_overhead_s"], draft_overhead_s=fitted["draft_overhead_s"],
                         bandwidth_efficiency=fitted["bandwidth_efficiency"],
                         quantized_bandwidth_efficiency=fitted["quantized_bandwidth_efficiency"],
                         compute_efficiency=fitted["compute_efficiency"],
                         eager_step_overhead_s=block["eager_step_overhead_s"],
                         request_overhead_s=fitted["request_overhead_s"])


@dataclass(frozen=True)
class Machine:
    """What the speed model needs of one GPU and its links."""

    name: str
    bandwidth: float          # bytes/s, peak
    bf16_flops: float         # FLOP/s, dense peak (FP8 weights compute at this rate too: step_time)
    link_bandwidth: float     # bytes/s one direction, to the other GPUs of the plan
    link_latency: float       # s per collective
    host_paging: float        # bytes/s for experts paged in from host memory (offload fork)
    assumed: tuple[str, ...] = ()   # figures that are not the GPU's own published ones


def _ops_per_byte(arch: str) -> float:
    """Median dense-bf16 FLOPs per byte of bandwidth of the profiled GPUs of one architecture
    (of all of them when none of that architecture has a figure)."""
    def ratios(pick):
        return sorted(p.bf16_tflops * 1e12 / (p.memory_bandwidth_gbs * 1e9) for p in gpus()
                      if p.bf16_tflops and p.memory_bandwidth_gbs and pick(p))
    xs = ratios(lambda p: p.architecture == arch) or ratios(lambda p: True)
    return xs[len(xs) // 2]


def machine_for(gpu: GPUProfile | str | None, *, nvlink: bool = False) -> Machine:
    p = find_gpu(gpu) if isinstance(gpu, str) else gpu
    assumed = []
    if p is None:
        # An unknown GPU: a mid-range card's figures, said as such.
        p = find_gpu("RTX 4090")
        assumed.append(f"unknown GPU: speed predicted as for an {p.label}")
    bw = (p.memory_bandwidth_gbs or 500) * 1e9
    if not p.memory_bandwidth_gbs:
        assumed.append(f"{p.label}: memory bandwidth unknown, 500 GB/s assumed")
    flops = (p.bf16_tflops or 0) * 1e12
    if not flops:
        flops = bw * _ops_per_byte(p.architecture)
        assumed.append(f"{p.label}: tensor throughput not profiled, {flops / 1e12:.0f} TFLOP/s from its bandwidth "
                       f"and other {p.architecture} GPUs")
    links = profile()["links"]
    link = links["nvlink"].get(p.architecture, links["nvlink"]["default"]) if nvlink else links["pcie"]
    return Machine(name=p.label, bandwidth=bw, bf16_flops=flops,
                   link_bandwidth=link["bandwidth_gbs"] * 1e9, link_latency=link["latency_us"] * 1e-6,
                   host_paging=profile()["host"]["expert_paging_gbs"] * 1e9, assumed=tuple(assumed))


# --- what one step moves and computes, per GPU ------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """The parts of a candidate the speed model reads (planner/sizing.py Candidate has them all)."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    experts_split_over_dp: bool = True   # vLLM: DP ranks share the experts (EP over DP x TP)
    kv_dtype: str = "auto"
    spec_tokens: int = 0
    eager: bool = False
    max_seqs: int = 256
    batched_tokens: int = 8192
    expert_slots: int | None = None      # offload fork: experts per layer resident on the GPU
    quantized: bool = False              # the weights are stored below 16 bits


@dataclass(frozen=True)
class StepShape:
    """Per GPU: bytes and FLOPs of one step, split so that a step of any batch is cheap to cost."""

    dense_bytes: float          # non-expert weights read once a step (lm_head included, embeddings not)
    expert_bytes: float         # routed experts held by this GPU (resident part under offload)
    paged_expert_bytes: float   # routed experts kept in host memory (offload fork)
    experts: int
    top_k: int
    layers: int                 # this GPU's decoder layers (PP splits them)
    dense_flops_per_token: float
    expert_flops_per_token: float
    lm_head_flops_per_token: float
    kv_bytes_per_token: float   # per sequence, per token of context
    attn_flops_per_token_ctx: float   # per new token, per token of context
    state_bytes_per_seq: float  # DeltaNet conv + recurrent state, read and written each step
    hidden: int
    draft_bytes: float          # one MTP draft pass: its decoder layer (dense part) and the lm_head
    draft_expert_bytes: float


@lru_cache(maxsize=64)
def _weight_split(recipe, shape: Shape, vision_params: int):
    """(dense bytes, routed-expert bytes, lm_head bytes, MTP layer dense bytes, MTP experts bytes)
    of the text model, the embedding table left out (a step gathers only its rows)."""
    from .weights import _sized_tensors
    dense = experts = lm_head = mtp_dense = mtp_experts = 0
    for t, size in _sized_tensors(recipe, shape, vision_params):
        if t.part == "vision" or t.cls == "embed":
            continue
        if t.part == "mtp":
            if t.cls == "experts":
                mtp_experts += size
            else:
                mtp_dense += size
        elif t.cls == "experts":
            experts += size
        else:
            dense += size
            if t.cls == "lm_head":
                lm_head += size
    if shape.tie_embeddings:
        lm_head = shape.vocab * shape.hidden * 2
        dense += lm_head
    return dense, experts, lm_head, mtp_dense, mtp_experts


def step_shape(recipe, shape: Shape, vision_params: int, lay: Layout) -> StepShape:
    # only the layout's sharding and cache dtype change what a step moves
    return _step_shape(recipe, shape, vision_params, Layout(
        tp=lay.tp, pp=lay.pp, dp=lay.dp, experts_split_over_dp=lay.experts_split_over_dp, kv_dtype=lay.kv_dtype,
        expert_slots=lay.expert_slots))


@lru_cache(maxsize=256)
def _step_shape(recipe, shape: Shape, vision_params: int, lay: Layout) -> StepShape:
    dense, experts, lm_head, mtp_dense, mtp_experts = _weight_split(recipe, shape, vision_params)
    ep = lay.tp * lay.dp if lay.dp > 1 and lay.experts_split_over_dp else lay.tp
    layer_share = math.ceil(shape.layers / lay.pp) / shape.layers
    params = {"dense": 0, "experts": 0, "lm_head": 0}
    for t in tensors(shape, vision_params):
        if t.part != "text" or t.cls == "embed":
            continue
        key = "experts" if t.cls == "experts" else "lm_head" if t.cls == "lm_head" else "dense"
        params[key] += t.params
    if shape.tie_embeddings:
        params["lm_head"] = shape.vocab * shape.hidden
    active_expert_params = params["experts"] * shape.experts_per_token / shape.experts
    expert_gpu = experts * layer_share / ep
    paged = 0.0
    if lay.expert_slots is not None:
        resident = min(1.0, lay.expert_slots / shape.experts)
        paged, expert_gpu = expert_gpu * (1 - resident), expert_gpu * resident
    kv_dtype = "bfloat16" if lay.kv_dtype == "auto" else lay.kv_dtype
    kv_tok = kv_bytes_per_token(shape, kv_dtype, lay.tp) * layer_share
    state = deltanet_state_per_seq(shape, tp=lay.tp, ssm_dtype=shape.mamba_ssm_dtype) * layer_share
    attn_layers = shape.full_attention_layers * layer_share
    return StepShape(
        dense_bytes=(dense - lm_head) * layer_share / lay.tp + lm_head / lay.tp,
        expert_bytes=expert_gpu, paged_expert_bytes=paged, experts=shape.experts, top_k=shape.experts_per_token,
        layers=math.ceil(shape.layers / lay.pp),
        dense_flops_per_token=2 * (params["dense"] * layer_share) / lay.tp,
        expert_flops_per_token=2 * active_expert_params * layer_share / lay.tp,
        lm_head_flops_per_token=2 * params["lm_head"] / lay.tp,
        kv_bytes_per_token=kv_tok,
        attn_flops_per_token_ctx=4 * shape.heads * shape.head_dim * attn_layers / lay.tp,
        state_bytes_per_seq=2 * state, hidden=shape.hidden,
        draft_bytes=(mtp_dense + lm_head) / lay.tp, draft_expert_bytes=mtp_experts / ep,
    )


def step_time(sh: StepShape, m: Machine, k: Constants, lay: Layout, decode_seqs: float, prefill_tokens: float,
              ctx: float, ranks_active: int = 1) -> float:
    """Seconds for one step of `decode_seqs` sequences at mean context `ctx` (each with 1 + spec
    tokens to verify) and `prefill_tokens` prompt tokens (at context ~ctx/2 on average)."""
    per_seq = 1 + lay.spec_tokens
    n = decode_seqs * per_seq + prefill_tokens
    if n <= 0:
        return 0.0
    expert_tokens = n * (ranks_active if lay.dp > 1 and lay.experts_split_over_dp else 1)
    touched = 1 - (1 - sh.top_k / sh.experts) ** expert_tokens
    bytes_ = (sh.dense_bytes + sh.expert_bytes * touched
              + decode_seqs * (ctx * sh.kv_bytes_per_token + sh.state_bytes_per_seq))
    flops = (n * sh.dense_flops_per_token + expert_tokens * sh.expert_flops_per_token / max(1, lay.dp if lay.dp > 1 and lay.experts_split_over_dp else 1)
             + (decode_seqs * per_seq + (1 if prefill_tokens else 0)) * sh.lm_head_flops_per_token
             + (decode_seqs * per_seq * ctx + prefill_tokens * ctx / 2) * sh.attn_flops_per_token_ctx)
    # A step is bound by the larger of streaming its bytes and doing its math (the roofline).
    # Measured prefill runs no faster with FP8 weights than with BF16 ones (TTFT at 128 requests
    # on the same H200, benchmarks/gpu/results/h200-r3 vs h200), so the BF16 tensor rate counts
    # for both.
    bw = m.bandwidth * (k.quantized_bandwidth_efficiency if lay.quantized else k.bandwidth_efficiency)
    t = max(bytes_ / bw, flops / (m.bf16_flops * k.compute_efficiency))
    if sh.paged_expert_bytes:
        t += sh.paged_expert_bytes * touched / m.host_paging
    t += k.eager_step_overhead_s if lay.eager else k.step_overhead_s
    t += _collectives(sh, m, lay, n, expert_tokens)
    if lay.spec_tokens and decode_seqs:
        # k draft passes over the decoding sequences: one decoder layer and the lm_head each
        d_touched = 1 - (1 - sh.top_k / sh.experts) ** (decode_seqs * ranks_active)
        d_bytes = sh.draft_bytes + sh.draft_expert_bytes * d_touched
        t += lay.spec_tokens * (d_bytes / bw
                                + (k.eager_step_overhead_s / sh.layers if lay.eager else k.draft_overhead_s))
    return t * lay.pp


def _collectives(sh: StepShape, m: Machine, lay: Layout, n: float, expert_tokens: float) -> float:
    t = 0.0
    if lay.tp > 1:   # an all-reduce after attention and after the MoE block, each layer
        msg = n * sh.hidden * 2 * 2 * (lay.tp - 1) / lay.tp
        t += 2 * sh.layers * (m.link_latency + msg / m.link_bandwidth)
    if lay.dp > 1 and lay.experts_split_over_dp:   # tokens gathered to the experts and back, each layer
        msg = expert_tokens * sh.hidden * 2
        t += 2 * sh.layers * (m.link_latency + msg / m.link_bandwidth)
    if lay.pp > 1:
        t += (lay.pp - 1) * (m.link_latency + n * sh.hidden * 2 / m.link_bandwidth)
    return t


# --- the burst scheduler ----------------------------------------------------------------------

@dataclass
class _Cohort:
    """Requests in the same state: admitted in the same step with the same prompt left."""
    count: float
    prompt_left: int
    generated: float = 0.0
    first_token_s: float | None = None
    done_s: float | None = None


@dataclass(frozen=True)
class Burst:
    concurrency: int
    tokens_per_s: float
    ttft_s: float        # median over the requests
    tpot_s: float        # mean time per output token after the first
    seconds: float


def _plan_prefill(prefilling: list[_Cohort], budget: float) -> tuple[list[tuple[_Cohort, int]], float]:
    """Chunks of prompts already started, oldest first, while the step's token budget lasts:
    a started prompt goes before any new request."""
    plan: list[tuple[_Cohort, int]] = []
    for c in prefilling:
        take = min(c.prompt_left, int(budget // c.count)) if budget > 0 else 0
        if take <= 0:
            break
        plan.append((c, take))
        budget -= take * c.count
    return plan, budget


def _admit(plan: list[tuple[_Cohort, int]], cohorts: list[_Cohort], prefilling: list[_Cohort], waiting: float,
           seats: float, budget: float, input_tokens: int) -> float:
    """Admit waiting requests into the seats and budget left (appending to plan, cohorts and
    prefilling); the number still waiting. A cohort that cannot take a whole prompt gets the
    rest of the budget."""
    while waiting > 0 and seats >= 1 and budget > 0:
        whole = min(waiting, seats, budget // input_tokens)
        c = _Cohort(whole if whole >= 1 else 1, input_tokens)
        cohorts.append(c)
        prefilling.append(c)
        plan.append((c, input_tokens if whole >= 1 else int(budget)))   # else: the rest of the budget
        waiting -= c.count
        seats -= c.count
        budget -= plan[-1][1] * c.count
    return waiting


def _retire(decoding: list[_Cohort], t: float, output_tokens: int, n_dec: float,
            gen_sum: float) -> tuple[float, float]:
    """Finish the oldest cohorts that have all their output tokens; the decoding count and
    generated-token sum without them."""
    while decoding and decoding[0].generated >= output_tokens:
        c = decoding.pop(0)
        c.done_s = t
        n_dec -= c.count
        gen_sum -= c.count * c.generated
    return n_dec, gen_sum


def _finish_prefill(plan: list[tuple[_Cohort, int]], t: float, prefilling: list[_Cohort],
                    decoding: list[_Cohort], n_dec: float, gen_sum: float) -> tuple[float, float]:
    """Charge the step's prefill chunks; a cohort whose prompt is done emits its first token
    and moves to decoding. The decoding count and generated-token sum with them."""
    for c, take in plan:
        c.prompt_left -= take
        if c.prompt_left <= 0:
            c.prompt_left, c.first_token_s, c.generated = 0, t, 1
            prefilling.remove(c)
            decoding.append(c)
            n_dec += c.count
            gen_sum += c.count
    return n_dec, gen_sum


def _median_ttft(cohorts: list[_Cohort], total: float, overhead_s: float) -> float:
    """The median time to first token as the harness takes it (benchmarks/gpu/load.py:
    index round(0.5 (n - 1)))."""
    firsts = sorted((c.first_token_s + overhead_s, c.count) for c in cohorts)
    nth, seen, ttft = round(0.5 * (total - 1)), 0.0, firsts[-1][0]
    for first, count in firsts:
        seen += count
        if seen > nth:
            ttft = first
            break
    return ttft


def burst(sh: StepShape, m: Machine, k: Constants, lay: Layout, concurrency: int, *,
          input_tokens: int = INPUT_TOKENS, output_tokens: int = OUTPUT_TOKENS, acceptance: float = 0.0) -> Burst:
    """`concurrency` requests sent at once (split evenly over the DP ranks), served to the end."""
    ranks_active = min(lay.dp, concurrency)
    waiting = math.ceil(concurrency / max(1, ranks_active))
    yield_per_step = 1 + sum(acceptance ** i for i in range(1, lay.spec_tokens + 1))
    cohorts: list[_Cohort] = []
    decoding: list[_Cohort] = []      # oldest first: the first to finish
    prefilling: list[_Cohort] = []
    n_dec = gen_sum = 0.0             # decoding sequences, and their generated tokens in all
    t = 0.0
    while decoding or prefilling or waiting > 0:
        budget = max(lay.batched_tokens, 1) - n_dec * (1 + lay.spec_tokens)
        plan, budget = _plan_prefill(prefilling, budget)
        seats = lay.max_seqs - n_dec - sum(c.count for c in prefilling)
        waiting = _admit(plan, cohorts, prefilling, waiting, seats, budget, input_tokens)
        ctx = input_tokens + gen_sum / n_dec if n_dec else input_tokens
        if plan:
            steps, dt = 1, step_time(sh, m, k, lay, n_dec, sum(take * c.count for c, take in plan), ctx, ranks_active)
        else:
            # Nothing to admit or prefill: decode until the oldest cohort finishes, costed at the
            # stretch's mean context (KV reads grow linearly with it).
            steps = max(1, math.ceil((output_tokens - decoding[0].generated) / yield_per_step))
            dt = step_time(sh, m, k, lay, n_dec, 0, ctx + steps * yield_per_step / 2, ranks_active)
        t += steps * dt
        for c in decoding:
            c.generated = min(output_tokens, c.generated + steps * yield_per_step)
        gen_sum = sum(c.count * c.generated for c in decoding)
        n_dec, gen_sum = _retire(decoding, t, output_tokens, n_dec, gen_sum)
        n_dec, gen_sum = _finish_prefill(plan, t, prefilling, decoding, n_dec, gen_sum)
    total = sum(c.count for c in cohorts) or 1
    end = max(c.done_s for c in cohorts) + k.request_overhead_s
    ttft = _median_ttft(cohorts, total, k.request_overhead_s)
    tpot = sum(c.count * (c.done_s - c.first_token_s) for c in cohorts) / total / max(1, output_tokens - 1)
    # The harness's c1 level sends its requests one after another: the same per-request time.
    return Burst(concurrency=concurrency, tokens_per_s=concurrency * output_tokens / end, ttft_s=ttft,
                 tpot_s=tpot, seconds=end)


def layout_of(cand) -> Layout:
    """The speed model's view of a planner Candidate."""
    from .sizing import constants as memory_constants
    return Layout(tp=cand.tp, pp=cand.pp, dp=cand.dp,
                  experts_split_over_dp=bool(memory_constants(cand.family)["dp_shards_experts"]),
                  kv_dtype=cand.kv_dtype, spec_tokens=cand.spec_tokens, eager=cand.eager, max_seqs=cand.max_seqs,
                  batched_tokens=cand.batched_tokens, expert_slots=cand.expert_cache,
                  quantized=cand.variant.format not in ("bf16", "bfloat16"))


def acceptance_for(variant) -> tuple[float, str]:
    mtp = profile()["mtp"]["acceptance"]
    return float(mtp.get(variant.id, mtp["default"])), mtp["source"]


def predict(cand, machine: Machine, *, concurrencies=CONCURRENCIES, acceptance: float | None = None,
            constants: Constants | None = None) -> dict[int, Burst]:
    """tokens/s, TTFT and TPOT of a candidate under the harness's load at each concurrency."""
    k = constants or Constants.for_engine(cand.family)
    lay = layout_of(cand)
    v = cand.variant
    sh = step_shape(v.recipe, v.model.shape, v.model.vision_params, lay)
    a = acceptance_for(v)[0] if acceptance is None else acceptance
    return {c: burst(sh, machine, k, lay, c, acceptance=a if lay.spec_tokens else 0.0) for c in concurrencies}
