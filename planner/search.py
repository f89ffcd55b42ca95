"""The search: every candidate sized once, evaluated along the goal's context ladder, scored.

Each decision is made here once, with its reason and source (`Choice`, `Basis`), so that the
assembly (planner/assemble.py) only reads what was decided.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from . import objective
from .budget import SharedPool, shared_pool
from .capability import parse_cc
from .catalog import find_gpu, load_profile
from .engines import Engine, check_version, get_engine, workarounds
from .errors import InputError
from .hardware import GPU, Hardware
from .objective import Predictor
from .offload import facts as offload_facts
from .offload import refusal as offload_refusal
from .options import MTP_TOKENS, TP_SIZES, PlanOptions
from .sizing import Candidate, Sized, apply_measured, calibration_key, size, vllm_default_batched_tokens, weights_on_gpu
from .units import gib
from .variants import Variant
from .versions import Version, in_range


@dataclass(frozen=True)
class Choice:
    """One decision as it is made: its value, why, and where that comes from."""

    value: Any
    reason: str
    source: str = ""


@dataclass(frozen=True)
class Basis:
    """What every candidate of one variant on one engine shares, decided once."""

    gmu: Choice             # the memory fraction (value: float)
    budget: int             # the bytes it gives each GPU
    profiled: bool          # whether this version counts CUDA graphs inside the budget
    mtp: Choice             # the draft-token counts tried (value: tuple of int)
    batched: tuple[int, ...]  # prefill chunks tried, vLLM's default first


# --- the GPUs as the planner sees them ----------------------------------------------------

@dataclass(frozen=True)
class GpuView:
    gpus: tuple[GPU, ...]
    cuda_total: int            # the smallest GPU's: TP and DP need the same budget on each
    cuda_free: int | None
    cc: tuple[int, int]
    nvlink_all: bool
    names: tuple[str, ...]
    pool: SharedPool | None = None   # unified memory: the budget comes from the host (planner/budget.py)

    @property
    def count(self) -> int:
        return len(self.gpus)

    @property
    def cc_text(self) -> str:
        return f"{self.cc[0]}.{self.cc[1]}"


def gpu_view(hw: Hardware) -> tuple[GpuView | None, list[str]]:
    warnings = []
    usable = []
    for g in hw.gpus:
        if g.cuda_total_bytes is None or g.compute_capability is None:
            warnings.append(f"GPU {g.index} ({g.name}): memory or compute capability unknown and not in "
                            f"profiles/gpus.yaml; it is left out of the plan")
            continue
        usable.append(g)
        if not find_gpu(g.name, g.memory_total_bytes):
            warnings.append(f"GPU {g.index} ({g.name}) is not in profiles/gpus.yaml; planning from NVML's "
                            f"memory ({gib(g.memory_total_bytes)}) and compute capability {g.compute_capability}")
    if not usable:
        return None, warnings
    if len({g.name for g in usable}) > 1 or len({g.memory_total_bytes for g in usable}) > 1:
        warnings.append("the GPUs differ; every GPU is planned with the smallest one's memory, as tensor "
                        "and data parallel ranks get equal shares")
    frees = [g.cuda_free_bytes for g in usable]
    ids = {g.index for g in usable}
    nvlink_all = len(usable) > 1 and all(ids - {g.index} <= set(g.nvlink_peers) for g in usable)
    return GpuView(
        gpus=tuple(usable), cuda_total=min(g.cuda_total_bytes for g in usable),
        cuda_free=None if any(f is None for f in frees) else min(frees),
        cc=min(g.compute_capability_tuple() for g in usable), nvlink_all=nvlink_all,
        names=tuple(g.name for g in usable), pool=shared_pool(hw, usable)), warnings


def cc_matches(cc: tuple[int, int], spec: str) -> bool:
    if spec.startswith((">", "<", "=")):
        return in_range(f"{cc[0]}.{cc[1]}", spec)
    return f"{cc[0]}.{cc[1]}" == spec


# --- engines and versions -----------------------------------------------------------------

@dataclass(frozen=True)
class EngineChoice:
    engine: Engine
    version: str
    installed: str | None
    reason: str
    warnings: tuple[str, ...] = ()


def engine_choices(hw: Hardware, opts: PlanOptions) -> list[EngineChoice]:
    installed = {k: v for k, v in (hw.engines or {}).items() if v}
    if opts.engine_version and opts.engine == "auto":
        raise InputError("--engine-version needs --engine", "say which engine, e.g. --engine vllm --engine-version 0.26.0")
    names = [opts.engine] if opts.engine != "auto" else None
    if names is None:
        names = [n for n in ("vllm", "sglang") if n in installed] or ["vllm"]
        names = names[:1] + ["vllm-offload"]
    out = []
    for name in names:
        eng = get_engine(name)
        inst = installed.get(name)
        if opts.engine_version and name == opts.engine:
            version, why = opts.engine_version, f"asked for with --engine-version {opts.engine_version}"
        elif inst:
            version, why = inst, f"installed here ({eng.package} {inst})"
        else:
            version = eng.default_version
            why = (f"{eng.name} is not installed here: planning for {version}, the newest release whose "
                   f"flags qwenplan has verified")
        try:
            warns = check_version(eng, version)
        except InputError:
            if opts.engine != "auto" or opts.engine_version:
                raise
            # An installed engine too old for the model: plan for the current release instead.
            warns = [f"installed {eng.name} {version} predates this model (support from "
                     f"{eng.supports_model_from}); planning for {eng.default_version}: {eng.install_command(eng.default_version)}"]
            version, inst, why = eng.default_version, inst, f"the installed {version} is too old"
        out.append(EngineChoice(eng, version, inst, why, tuple(warns)))
    return out


# --- candidates ---------------------------------------------------------------------------

@dataclass
class Option:
    """One sized candidate and what it gives at one context."""

    cand: Candidate
    choice: EngineChoice
    sized: Sized
    basis: Basis
    context: int = 0
    seqs: int = 0
    full_length: int = 0
    fixes: tuple = ()           # workarounds applied: (id, reason, source, set, args, env)
    measured: dict | None = None  # the engine's own report used in place of the formula


def _tags(v: Variant, view: GpuView) -> set[str]:
    tags = set(v.tags)
    # Below compute capability 8.9 vLLM runs FP8 weights through FP8 Marlin (weight-only):
    # the same Marlin MoE kernels as INT4, with the same CUDA-graph bug on Ampere.
    if "fp8_weights" in tags and view.cc < (8, 9):
        tags.add("marlin_moe")
    return tags


def _workarounds_for(cand: Candidate, v: Variant, view: GpuView) -> list[dict]:
    tags = _tags(v, view)
    # YAML reads `on`/`off` as booleans: conditions compare against booleans here.
    settings = {"speculative": cand.spec_tokens > 0, "enforce_eager": cand.eager,
                "expert_cache_size": cand.expert_cache is not None, "dtype": "bfloat16"}
    out = []
    for w in workarounds():
        when = w.get("when", {})
        if "engine" in when and cand.engine not in when["engine"]:
            continue
        if "versions" in when and not in_range(cand.version, when["versions"]):
            continue
        if "compute_capability" in when and not any(cc_matches(view.cc, s) for s in when["compute_capability"]):
            continue
        if when.get("tags") and not tags & set(when["tags"]):
            continue
        if when.get("variants") and v.id not in when["variants"]:
            continue
        if any(settings.get(k) != val for k, val in (when.get("settings") or {}).items()):
            continue
        out.append(w)
    return out


def support_problem(v: Variant, choice: EngineChoice, view: GpuView) -> str | None:
    eng = choice.engine
    spec = v.engines.get(eng.id)
    if spec is None:
        loaders = ", ".join(get_engine(e).name for e in v.engines) or "no engine qwenplan knows"
        return f"{eng.name} cannot load it (loaded by {loaders})"
    if Version(choice.version) < Version(spec["min"]):
        return (f"needs {eng.name} {spec['min']} or newer (planning for {choice.version}): "
                f"{eng.install_command(spec['min'])}")
    need = v.min_compute_capability()
    if need and view.cc < parse_cc(need):
        return f"needs compute capability {need}+ (these GPUs: {view.cc_text})"
    need = spec.get("min_compute_capability")   # this engine's kernels for this format
    if need and view.cc < parse_cc(need):
        return f"{eng.name} needs compute capability {need}+ for it (these GPUs: {view.cc_text}; {spec['cc_source']})"
    eng_cc = eng.min_compute_capability(choice.version)
    if eng_cc and view.cc < parse_cc(eng_cc[0]):
        return f"{eng.name} {choice.version} needs compute capability {eng_cc[0]}+ (these GPUs: {view.cc_text})"
    for bad in eng.raw.get("fails_on") or ():
        if cc_matches(view.cc, bad["compute_capability"]):
            return f"{eng.name}: {bad['reason']} ({bad['source']})"
    return None


def _layouts(v: Variant, view: GpuView, opts: PlanOptions, engine: str) -> list[tuple[int, int, int]]:
    """(tp, pp, dp) over the GPUs of one node, PP across nodes."""
    out = []
    n = view.count
    max_tp = v.max_tensor_parallel() or 8
    for tp in TP_SIZES:
        if tp > n or tp > max_tp:
            continue
        dp = n // tp
        if engine == "vllm-offload" and dp > 1:
            dp = 1   # the fork refuses data parallelism with an expert cache
        out.append((tp, opts.nodes, dp))
    return out


def _gmu(choice: EngineChoice, view: GpuView, family: str, pinned: float | None = None) -> Choice:
    """The memory fraction: the engine's default, lowered when other processes hold memory."""
    eng = choice.engine
    source = "profiles/flags/vllm-*.txt (vllm serve --help: --gpu-memory-utilization)"
    if pinned is not None:
        return Choice(pinned, f"{pinned}: pinned by the retry of a failed start",
                      view.pool.source if view.pool else source)
    if view.pool:
        return Choice(view.pool.fraction, view.pool.reason, view.pool.source)
    default, default_source = eng.default("gpu_memory_utilization", choice.version)
    if default is None:
        default, default_source = 0.90, "SGLang's own fraction is derived from the sizing below"
    margin = load_profile("memory.yaml")[family]["free_margin_bytes"]
    if view.cuda_free is not None:
        fits = int((view.cuda_free - margin) / view.cuda_total * 100) / 100
        if fits < default:
            return Choice(max(0.0, fits), f"{fits:.2f}: the engine's default {default} would ask for more than the "
                          f"{gib(view.cuda_free)} free now (other processes hold the rest)", source)
    return Choice(default, f"{default}, the default of {eng.name} {choice.version} ({default_source})", source)


def _kv_options(opts: PlanOptions, view: GpuView, choice: EngineChoice) -> list[str]:
    if opts.kv_dtype:
        kv = {"bf16": "auto", "bfloat16": "auto", "auto": "auto", "fp8": "fp8", "fp8_e4m3": "fp8"}.get(opts.kv_dtype)
        if kv is None:
            raise InputError(f"--kv-dtype {opts.kv_dtype!r} is not one qwenplan plans with", "use auto (bf16) or fp8")
        if kv == "fp8" and view.cc < (8, 0):
            raise InputError(f"--kv-dtype fp8 needs compute capability 8.0+ (these GPUs: {view.cc_text})",
                             "drop --kv-dtype, or use auto")
        return [kv]
    return ["auto", "fp8"] if view.cc >= (8, 0) else ["auto"]


def _mtp_options(v: Variant, choice: EngineChoice, opts: PlanOptions, goal: dict) -> Choice:
    if opts.mtp is False:
        return Choice((0,), "off: --no-mtp")
    if not v.has_mtp:
        return Choice((0,), "off: this checkpoint has no MTP head")
    if choice.engine.id == "vllm" and opts.nodes > 1 and Version(choice.version) < Version("0.30.0"):
        return Choice((0,), "off: vLLM's MTP draft supports pipeline parallelism only from 0.30.0 (Qwen3_5MTP SupportsPP)")
    bad = [p for p in v.problems if p["id"] == "fp8-mtp-gibberish" and p.get("engine") in (None, choice.engine.id)]
    if bad and opts.mtp is not True:
        return Choice((0,), f"off: {bad[0]['text']} ({bad[0]['source']}); --mtp turns it on anyway")
    if not goal["mtp"] and opts.mtp is not True:
        return Choice((0,), "off for the throughput goal: drafting costs compute that a full batch needs")
    if opts.mtp is True:
        return Choice((MTP_TOKENS,), f"on: --mtp, {MTP_TOKENS} draft tokens")
    return Choice((MTP_TOKENS, 0), f"on, {MTP_TOKENS} draft tokens: lower latency per request at little memory cost")


def _basis(v: Variant, choice: EngineChoice, view: GpuView, opts: PlanOptions, goal: dict) -> Basis:
    eng = choice.engine
    gmu = _gmu(choice, view, "sglang" if eng.id == "sglang" else "vllm", opts.utilization)
    profiled = eng.default("cudagraph_memory_profiled", choice.version)[0]
    return Basis(gmu=gmu, budget=int(gmu.value * view.cuda_total), profiled=True if profiled is None else profiled,
                 mtp=_mtp_options(v, choice, opts, goal), batched=_batched_options(view))


def candidates(v: Variant, choice: EngineChoice, view: GpuView, opts: PlanOptions, goal: dict) -> list[Option]:
    out = []
    eng = choice.engine
    basis = _basis(v, choice, view, opts, goal)
    budget, profiled = basis.budget, basis.profiled
    # Sized first at the sequence cap (the sampler's activation and the graphs grow with it),
    # then again at the count chosen (_evaluate).
    # The goal's own concurrency where it has one: the knee (_knee) may go higher where memory allows.
    cap = opts.concurrency or min(goal["max_seqs"], goal.get("concurrency") or goal["max_seqs"])
    ec = None if eng.id != "vllm-offload" else 0
    for tp, pp, dp in _layouts(v, view, opts, eng.id):
        for kv in _kv_options(opts, view, choice):
            for spec in basis.mtp.value:
                for batched in basis.batched:
                    cand = Candidate(v, eng.id, choice.version, tp, pp, dp, kv, spec, opts.eager, ec, batched,
                                     opts.vision, cap)
                    fixes = _workarounds_for(cand, v, view)
                    if any((w.get("set") or {}).get("enforce_eager") for w in fixes):
                        cand = replace(cand, eager=True)
                    sized, obs = _size(cand, budget, profiled, opts, view)
                    if not profiled and not cand.eager and view.cuda_total - budget < sized.cudagraph:
                        continue   # graphs outside the budget must fit beside it
                    # Both prefill chunks are sized: the old `break` after the default one that
                    # fits only left a one-item loop, so every plan so far weighed both.
                    out.append(Option(cand, choice, sized, basis, fixes=tuple(fixes), measured=obs))
    return out


def _size(cand: Candidate, budget: int, profiled: bool, opts: PlanOptions, view: GpuView) -> tuple[Sized, dict | None]:
    """The formula's sizing, or what the engine reported on this box for the same combination."""
    sized = size(cand, budget, profiled, cuda_total=view.cuda_total)
    obs = (opts.measured or {}).get(calibration_key(view.names[0], cand.engine, cand.version, cand.variant.id,
                                                    cand.kv_dtype, cand.tp))
    measured = apply_measured(cand, sized, obs) if obs else None
    return (measured, obs) if measured else (sized, None)


def _batched_options(view: GpuView) -> tuple[int, ...]:
    """vLLM's own default prefill chunk for this GPU first, then at most one halving: smaller
    chunks free activation memory but slow long prefills."""
    first, large = vllm_default_batched_tokens(view.cuda_total, view.names)
    return (first, first // 2) if large else (first,)


def _targets(goal: dict, opts: PlanOptions, context: int) -> tuple[int, int, int, int]:
    """(min full-length requests, min seqs, max seqs, typical tokens) at this context."""
    typical = min(context, goal["typical_tokens"])
    if opts.concurrency:
        # A concurrency the user asked for: the engine must start (one full-length request and
        # that many sequences' state fit); how many full-length requests fit is reported.
        return 1, opts.concurrency, opts.concurrency, typical
    return goal["min_full_length"], goal["min_seqs"], goal["max_seqs"], typical


def _evaluate(o: Option, context: int, goal: dict, opts: PlanOptions, view: GpuView,
              min_slots: int = 0) -> Option | None:
    s = o.sized
    min_full, min_seqs, max_seqs, typical = _targets(goal, opts, context)
    if o.cand.engine == "vllm-offload":
        return _evaluate_offload(o, context, min_full, min_seqs, max_seqs, typical, min_slots)
    if s.cache_bytes <= 0:
        return None
    full = s.full_length_seqs(context)
    if full < min_full:
        return None
    if s.layout:
        blocks = s.layout.num_blocks(s.cache_bytes)
        per_typical = s.layout.blocks_per_request(typical)
        seqs = min(max_seqs, blocks // per_typical)
        if opts.concurrency or goal.get("objective") == "speed":
            # every running sequence holds its DeltaNet state pages and at least one attention
            # block: the most the pool can run at once, whatever their length (vLLM preempts
            # the newest when longer ones need more blocks)
            limit = state_block_limit(s)
            seqs = min(seqs, limit) if opts.concurrency else (min(o.cand.max_seqs, limit) if seqs >= min_seqs else seqs)
    else:
        seqs = min(max_seqs, s.seqs_at(typical))   # SGLang: also its state slots (planner/sglang.py)
    if seqs < min_seqs:
        return None
    if seqs < o.cand.max_seqs:
        # Fewer sequences than the cap: a smaller sampler pass and fewer graphs leave more cache.
        cand = replace(o.cand, max_seqs=int(seqs))
        s, obs = _size(cand, s.budget, s.cudagraph_in_budget, opts, view)
        o = replace(o, cand=cand, sized=s, measured=obs)
        full = s.full_length_seqs(context)
    return replace(o, context=context, seqs=int(seqs), full_length=int(full))


def _evaluate_offload(o: Option, context, min_full, min_seqs, max_seqs, typical, min_slots) -> Option | None:
    """The fork: give the KV cache what the targets need, the expert cache the rest (capped)."""
    facts = offload_facts()
    s = o.sized
    _, _, slot = weights_on_gpu(replace(o.cand, expert_cache=0))
    lay = s.layout
    need_blocks = max(min_full * lay.blocks_per_request(context), min_seqs * lay.blocks_per_request(typical))
    need = need_blocks * lay.block_bytes
    slots = (s.cache_bytes - need) // slot if slot else 0
    experts = o.cand.variant.model.shape.experts
    if slots < max(min_slots, facts["min_slots"]) or slots >= experts:
        return None   # too few to be usable, or everything fits without offload
    slots = int(min(slots, 2 * facts["comfortable_slots"]))
    cand = replace(o.cand, expert_cache=slots)
    sized = size(cand, s.budget, s.cudagraph_in_budget)
    seqs = min(max_seqs, lay.num_blocks(sized.cache_bytes) // lay.blocks_per_request(typical))
    return replace(o, cand=cand, sized=sized, context=context, seqs=int(seqs),
                   full_length=int(sized.full_length_seqs(context)))


def _key(o: Option, goal: dict) -> tuple:
    c = o.cand
    parts = {
        "no_offload": c.engine != "vllm-offload",
        # An fp8 KV cache costs about what fp8 weights cost: rank it like one quality step.
        # An unverified checkpoint ranks two steps lower: a load that fails costs more than it saves.
        "quality": c.variant.quality - (2 if c.kv_dtype == "fp8" else 0) - (0 if c.variant.verified else 2),
        "context_first": 0,
        "bf16_kv": c.kv_dtype == "auto",
        "mtp": c.spec_tokens > 0,
        "cuda_graphs": not c.eager,
        "data_parallel": c.dp,
        "tensor_parallel": -c.dp,
        "seqs": o.seqs,
        "total_seqs": o.seqs * c.dp,
    }
    # Ties: fewer GPUs idle, larger prefill chunks, larger expert cache.
    return tuple(parts[p] for p in goal["prefer"]) + (c.gpus, c.batched_tokens, c.expert_cache or 0)


def state_block_limit(s: Sized) -> int:
    """Sequences the pool can run at once: each holds its state pages and one attention block."""
    return s.layout.num_blocks(s.cache_bytes) // (s.layout.state_groups + s.layout.attention_groups)


def _choose(found: list[Option], goal: dict, opts: PlanOptions, predictor: Predictor) -> Option | None:
    """The goal's choice among options that meet its targets: by predicted speed, or by `prefer`
    with predicted speed as the last tie-break."""
    if goal.get("objective") == "speed":
        return objective.pick(found, goal, predictor, lambda x: _key(x, goal))
    conc = goal.get("concurrency", 1)
    return max(found, key=lambda x: _key(x, goal) + (round(predictor.burst(x.cand, conc).tokens_per_s, 1),))


def best_options(options, ladder, goal, opts, view, predictor: Predictor):
    """Best option overall and each variant's best, walking the ladder; offload only as a last resort."""
    by_variant: dict[str, Option] = {}
    best = None
    facts = offload_facts()
    # Stock engines first; then the fork, only with enough experts resident (profiles/engines.yaml).
    for fork, min_slots in ((False, 0), (True, facts["min_resident_experts"])):
        for context in ladder:
            found = [e for o in options if (o.cand.engine == "vllm-offload") == fork
                     for e in [_evaluate(o, context, goal, opts, view, min_slots)] if e]
            for vid in dict.fromkeys(e.cand.variant.id for e in found):
                if vid not in by_variant:
                    pick = _choose([f for f in found if f.cand.variant.id == vid], goal, opts, predictor)
                    if pick:
                        by_variant[vid] = pick
            if found and best is None:
                best = _choose(found, goal, opts, predictor)
                if best is not None and goal.get("objective") == "speed" and not opts.concurrency:
                    best = _knee(best, goal, opts, view, predictor)
        # The offload pass runs even after a plan is found, so that `variants` can say which
        # variants fit only with offload; it never replaces a plan found without it.
    return best, by_variant


def _knee(o: Option, goal: dict, opts: PlanOptions, view: GpuView, predictor: Predictor) -> Option:
    """The smallest sequence cap within the goal's knee of the best predicted tokens/s: more
    sequences than that only enlarge the sampler's memory and the CUDA graphs."""
    conc = goal["concurrency"]
    limit = state_block_limit(o.sized) if o.sized.layout else o.seqs
    tried = []
    for cap in objective.knee_caps(limit, goal["max_seqs"]):
        cand = replace(o.cand, max_seqs=cap)
        sized, obs = _size(cand, o.sized.budget, o.sized.cudagraph_in_budget, opts, view)
        full = sized.full_length_seqs(o.context)
        if sized.cache_bytes <= 0 or full < _targets(goal, opts, o.context)[0]:
            continue
        tried.append((predictor.burst(cand, conc).tokens_per_s, cap,
                      replace(o, cand=cand, sized=sized, measured=obs, seqs=cap, full_length=int(full))))
    if not tried:
        return o
    top = max(t[0] for t in tried)
    return min((t for t in tried if t[0] >= (1 - goal["knee"]) * top), key=lambda t: t[1])[2]


def why_not(v: Variant, options, ladder, goal, opts, view) -> str:
    mine = [o for o in options if o.cand.variant is v]
    mine = [o for o in mine if o.cand.engine != "vllm-offload"] or mine   # the fork says its own (fork_refusals)
    if not mine:
        return "no engine/layout can load it here"
    top = max(mine, key=lambda o: o.sized.cache_bytes)
    c, s = top.cand, top.sized
    if s.cache_bytes <= 0:
        return (f"weights alone need {gib(s.weights + s.expert_cache)} per GPU (TP {c.tp}) plus "
                f"{gib(s.activation + s.non_torch + (s.cudagraph if s.cudagraph_in_budget else 0))} reserve; the budget is {gib(s.budget)}")
    ctx = ladder[-1]
    return (f"after weights ({gib(s.weights)} per GPU at TP {c.tp}) only {gib(s.cache_bytes)} is left for the "
            f"cache: {top.sized.full_length_seqs(ctx)} request(s) of {ctx:,} tokens, the goal needs "
            f"{_targets(goal, opts, ctx)[0]} and {_targets(goal, opts, ctx)[1]} concurrent")


def fork_refusals(options, ladder, goal, opts, view, hw) -> list[str]:
    """The fork's best plan below the resident-expert threshold, said as what it would take."""
    near = [e for context in ladder for o in options if o.cand.engine == "vllm-offload"
            for e in [_evaluate(o, context, goal, opts, view, offload_facts()["min_slots"])] if e]
    if not near:
        return []
    best = max(near, key=lambda e: (e.cand.expert_cache, e.context))
    v = best.cand.variant
    slot = weights_on_gpu(replace(best.cand, expert_cache=0))[2]
    return [offload_refusal(v.id, best.cand.expert_cache, v.model.shape.experts, slot, best.sized.budget,
                            view.cuda_total, view.cuda_free, v.disk.experts, hw, view.gpus)]
