"""From a hardware document to the best plan: every choice with its reason and source.

The search is small and exhaustive: every variant the engine can load on these GPUs, every
parallel layout, KV dtype and MTP setting is sized once (planner/sizing.py); then, walking the
goal's context ladder from the top, the first context where some candidate meets the goal's
targets decides, and among the candidates there the goal's objective picks: the most predicted
tokens/s within a quality window (planner/objective.py, planner/speed.py), or the preference
order with predicted speed as the tie-break. The
expert-offload fork is only considered when nothing fits without it (it runs eagerly and pages
experts over PCIe). User overrides narrow the search; when they make it empty the plan is
"infeasible" and says what would fit instead — an override is never silently changed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from . import disk, llamacpp, objective, offload, shm, speed
from .budget import SharedPool, shared_pool
from .capability import parse_cc
from .catalog import find_gpu, load_profile
from .engines import Engine, check_version, get_engine, workarounds
from .errors import InputError
from .hardware import GPU, Hardware, from_dict
from .model import Model, get_model
from .objective import Predictor
from .plan import Decision, GpuMemory, Plan, Rejected
from .sizing import (Candidate, Sized, apply_measured, calibration_key, size, vllm_default_batched_tokens,
                     weights_on_gpu)
from .units import GiB, gib
from .variants import Variant, get_variant, variants_of
from .versions import Version, in_range

DEFAULT_MODEL = "qwen3.6-35b-a3b"
GOALS = ("balanced", "long-context", "throughput")
TP_SIZES = (1, 2, 4, 8)
MTP_TOKENS = 2
MTP_SOURCE = ("https://huggingface.co/palmfuture/Qwen3.6-35B-A3B-GPTQ-Int4 (num_speculative_tokens 2); "
              "https://huggingface.co/Qwen/Qwen3.6-35B-A3B (MTP speculative decoding)")


@dataclass(frozen=True)
class PlanOptions:
    model: str | None = None
    goal: str = "balanced"
    engine: str = "auto"
    engine_version: str | None = None
    variant: str | None = None
    context: int | None = None
    concurrency: int | None = None
    kv_dtype: str | None = None
    mtp: bool | None = None           # False: --no-mtp
    vision: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    served_name: str | None = None
    nodes: int = 1
    measured: dict | None = None      # calibration key -> latest engine report (launch/calibration.py)
    # What a retry pins after a failed start (launch/diagnose.py, profiles/failures.yaml):
    eager: bool = False               # no CUDA graphs
    utilization: float | None = None  # the memory fraction, in place of the engine's default


@lru_cache(maxsize=None)
def goals() -> dict:
    return load_profile("goals.yaml")["goals"]


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


def _cc_matches(cc: tuple[int, int], spec: str) -> bool:
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
    gmu: float
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
        if "compute_capability" in when and not any(_cc_matches(view.cc, s) for s in when["compute_capability"]):
            continue
        if when.get("tags") and not tags & set(when["tags"]):
            continue
        if when.get("variants") and v.id not in when["variants"]:
            continue
        if any(settings.get(k) != val for k, val in (when.get("settings") or {}).items()):
            continue
        out.append(w)
    return out


def _support_problem(v: Variant, choice: EngineChoice, view: GpuView) -> str | None:
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
        if _cc_matches(view.cc, bad["compute_capability"]):
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


def _gmu(choice: EngineChoice, view: GpuView, family: str, pinned: float | None = None) -> tuple[float, str]:
    """The memory fraction: the engine's default, lowered when other processes hold memory."""
    eng = choice.engine
    if pinned is not None:
        return pinned, f"{pinned}: pinned by the retry of a failed start"
    if view.pool:
        return view.pool.fraction, view.pool.reason
    default, source = eng.default("gpu_memory_utilization", choice.version)
    if default is None:
        default, source = 0.90, "SGLang's own fraction is derived from the sizing below"
    margin = load_profile("memory.yaml")[family]["free_margin_bytes"]
    if view.cuda_free is not None:
        fits = int((view.cuda_free - margin) / view.cuda_total * 100) / 100
        if fits < default:
            return max(0.0, fits), (f"{fits:.2f}: the engine's default {default} would ask for more than the "
                                    f"{gib(view.cuda_free)} free now (other processes hold the rest)")
    return default, f"{default}, the default of {eng.name} {choice.version} ({source})"


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


def _mtp_options(v: Variant, choice: EngineChoice, opts: PlanOptions, goal: dict) -> tuple[list[int], str]:
    if opts.mtp is False:
        return [0], "off: --no-mtp"
    if not v.has_mtp:
        return [0], "off: this checkpoint has no MTP head"
    if choice.engine.id == "vllm" and opts.nodes > 1 and Version(choice.version) < Version("0.30.0"):
        return [0], "off: vLLM's MTP draft supports pipeline parallelism only from 0.30.0 (Qwen3_5MTP SupportsPP)"
    bad = [p for p in v.problems if p["id"] == "fp8-mtp-gibberish" and p.get("engine") in (None, choice.engine.id)]
    if bad and opts.mtp is not True:
        return [0], f"off: {bad[0]['text']} ({bad[0]['source']}); --mtp turns it on anyway"
    if not goal["mtp"] and opts.mtp is not True:
        return [0], "off for the throughput goal: drafting costs compute that a full batch needs"
    if opts.mtp is True:
        return [MTP_TOKENS], f"on: --mtp, {MTP_TOKENS} draft tokens"
    return [MTP_TOKENS, 0], f"on, {MTP_TOKENS} draft tokens: lower latency per request at little memory cost"


def _candidates(v: Variant, choice: EngineChoice, view: GpuView, opts: PlanOptions, goal: dict) -> list[Option]:
    out = []
    eng = choice.engine
    family = "sglang" if eng.id == "sglang" else "vllm"
    gmu, _ = _gmu(choice, view, family, opts.utilization)
    budget = int(gmu * view.cuda_total)
    profiled = eng.default("cudagraph_memory_profiled", choice.version)[0]
    profiled = True if profiled is None else profiled
    mtp_opts, _ = _mtp_options(v, choice, opts, goal)
    # Sized first at the sequence cap (the sampler's activation and the graphs grow with it),
    # then again at the count chosen (_evaluate).
    # The goal's own concurrency where it has one: the knee (_knee) may go higher where memory allows.
    cap = opts.concurrency or min(goal["max_seqs"], goal.get("concurrency") or goal["max_seqs"])
    for tp, pp, dp in _layouts(v, view, opts, eng.id):
        for kv in _kv_options(opts, view, choice):
            for spec in mtp_opts:
                for batched in _batched_options(view):
                    cache_sizes = [None] if eng.id != "vllm-offload" else [0]
                    for ec in cache_sizes:
                        cand = Candidate(v, eng.id, choice.version, tp, pp, dp, kv, spec, opts.eager, ec, batched,
                                         opts.vision, cap)
                        fixes = _workarounds_for(cand, v, view)
                        if any((w.get("set") or {}).get("enforce_eager") for w in fixes):
                            cand = replace(cand, eager=True)
                        sized, obs = _size(cand, budget, profiled, opts, view)
                        if not profiled and not cand.eager and view.cuda_total - budget < sized.cudagraph:
                            continue   # graphs outside the budget must fit beside it
                        out.append(Option(cand, choice, sized, gmu, fixes=tuple(fixes), measured=obs))
                        if sized.cache_bytes > 0 and batched == _batched_options(view)[0]:
                            break      # smaller prefill chunks only when memory is short
    return out


def _size(cand: Candidate, budget: int, profiled: bool, opts: PlanOptions, view: GpuView) -> tuple[Sized, dict | None]:
    """The formula's sizing, or what the engine reported on this box for the same combination."""
    sized = size(cand, budget, profiled)
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
        seqs = min(max_seqs, s.cache_bytes // (typical * s.kv_per_token + s.state_per_seq))
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
    facts = load_profile("engines.yaml")["engines"]["vllm-offload"]["expert_cache"]
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


def _ladder(goal: dict, opts: PlanOptions, model: Model) -> list[int]:
    if opts.context:
        limit = (model.yarn or {}).get("max_context", model.native_context)
        if opts.context > limit:
            raise InputError(f"--context {opts.context} is beyond what the model supports ({limit:,} tokens with YaRN)",
                             f"use --context {limit} or less")
        if opts.context < 1024:
            raise InputError(f"--context {opts.context} is too short to be useful", "use 4096 or more")
        return [opts.context]
    return list(goal["contexts"])


# --- the plan -----------------------------------------------------------------------------

def make_plan(hw: Hardware, opts: PlanOptions = PlanOptions()) -> Plan:
    if opts.goal not in goals():
        raise InputError(f"unknown goal {opts.goal!r}", f"use one of: {', '.join(goals())}")
    if opts.concurrency is not None and opts.concurrency < 1:
        raise InputError(f"--concurrency {opts.concurrency} must be at least 1", "give a positive number")
    if opts.nodes < 1:
        raise InputError(f"--nodes {opts.nodes} must be at least 1", "give a positive number")
    variant_filter = get_variant(opts.variant) if opts.variant else None
    model = get_model(opts.model or (variant_filter.model_id if variant_filter else DEFAULT_MODEL))
    if variant_filter and variant_filter.model_id != model.id:
        raise InputError(f"variant {variant_filter.id} is a checkpoint of {variant_filter.model_id}, not {model.id}",
                         "drop --model or pick a variant of that model")
    goal = goals()[opts.goal]
    ladder = _ladder(goal, opts, model)
    view, warnings = gpu_view(hw)
    plan = Plan(model=model.id, goal=opts.goal, status="infeasible", engine={}, variant={}, parallel={},
                settings={}, memory={}, hardware=hw.to_dict())
    plan.warnings.extend(warnings)
    if opts.engine == "llamacpp" or view is None:
        return llamacpp.make_plan(hw, opts, model, plan, view, "asked for with --engine llamacpp"
                                  if opts.engine == "llamacpp" else "no usable NVIDIA GPU here: llama.cpp runs on the CPU")
    choices = engine_choices(hw, opts)
    pool = variants_of(model.id) if not variant_filter else (variant_filter,)
    options: list[Option] = []
    for v in pool:
        problems = []
        for choice in choices:
            if choice.engine.id == "vllm-offload" and not v.offloadable:
                continue
            why = _support_problem(v, choice, view)
            if why:
                problems.append(why)
                continue
            options.extend(_candidates(v, choice, view, opts, goal))
        if not any(o.cand.variant is v for o in options):
            plan.rejected.append(Rejected(v.id, "; ".join(dict.fromkeys(problems)) or "no engine can load it here"))
    predictor = Predictor(speed.machine_for(view.names[0], nvlink=view.nvlink_all))
    # Variants that fit the free disk first; the others only when none of those fits.
    on_disk = [o for o in options if not disk.shortfall(o.cand.variant, hw)]
    best, by_variant = (_search(on_disk, ladder, goal, opts, view, predictor) if len(on_disk) < len(options)
                        else (None, {}))
    if best is not None:
        short = {o.cand.variant.id: o.cand.variant for o in options if disk.shortfall(o.cand.variant, hw)}
        plan.rejected.extend(Rejected(v.id, disk.rejection(v, hw)) for v in short.values())
    else:
        best, by_variant = _search(options, ladder, goal, opts, view, predictor)
        if best is not None and disk.shortfall(best.cand.variant, hw):
            plan.warnings.append(disk.warning(best.cand.variant, hw))
    for v in pool:
        if v.id in by_variant or any(r.variant == v.id for r in plan.rejected):
            continue
        plan.rejected.append(Rejected(v.id, _why_not(v, options, ladder, goal, opts, view)))
    if (best is None or best.cand.engine == "vllm-offload") and opts.engine == "auto":
        alt = llamacpp.instead(hw, opts, model, plan, view, best is not None)
        if alt is not None:
            return alt
    if best is None:
        return _infeasible(plan, opts, hw, ladder, options, view)
    alternatives = [o for vid, o in by_variant.items() if vid != best.cand.variant.id]
    return _fill(plan, best, alternatives, view, opts, goal, model, choices, predictor)


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


def _search(options, ladder, goal, opts, view, predictor: Predictor):
    """Best option overall and each variant's best, walking the ladder; offload only as a last resort."""
    by_variant: dict[str, Option] = {}
    best = None
    facts = load_profile("engines.yaml")["engines"]["vllm-offload"]["expert_cache"]
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


def _why_not(v: Variant, options, ladder, goal, opts, view) -> str:
    mine = [o for o in options if o.cand.variant is v]
    mine = [o for o in mine if o.cand.engine != "vllm-offload"] or mine   # the fork says its own (_fork_refusals)
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


def _no_gpu_plan(plan: Plan, hw: Hardware, opts: PlanOptions, choices) -> Plan:
    """No GPU: say what it would take, by planning the same request on reference GPUs."""
    from .whatif import what_if
    plan.warnings.append("no NVIDIA GPU is visible here (no driver, none present, or CUDA_VISIBLE_DEVICES hides them)")
    found = []
    for name in ("RTX 3060 12GB", "RTX 4090", "RTX A6000", "H100 SXM", "H200"):
        try:
            p = make_plan(what_if([name], 1, hw.host.usable_ram_bytes or 64 * GiB, hw.host.disk_free_bytes or 1 << 41),
                          opts)
        except InputError:
            continue
        if p.status == "ok":
            found.append(f"one {p.hardware['gpus'][0]['name']}: {p.variant['id']} on {p.engine['name']}, "
                         f"{p.settings['max_model_len']:,} tokens of context, {p.settings['max_num_seqs']} sequences")
    plan.requirements = found or ["a GPU with at least 12 GB and compute capability 7.5"]
    plan.decisions.append(Decision("hardware", "no GPU", "nothing to plan on; see requirements for the smallest GPUs "
                                   "that serve the model and what each gives", "planner/probe.py (NVML)"))
    return plan


def _fork_refusals(options, ladder, goal, opts, view, hw) -> list[str]:
    """The fork's best plan below the resident-expert threshold, said as what it would take."""
    near = [e for context in ladder for o in options if o.cand.engine == "vllm-offload"
            for e in [_evaluate(o, context, goal, opts, view, offload.facts()["min_slots"])] if e]
    if not near:
        return []
    best = max(near, key=lambda e: (e.cand.expert_cache, e.context))
    v = best.cand.variant
    slot = weights_on_gpu(replace(best.cand, expert_cache=0))[2]
    return [offload.refusal(v.id, best.cand.expert_cache, v.model.shape.experts, slot, best.sized.budget,
                            view.cuda_total, view.cuda_free, v.disk.experts, hw, view.gpus)]


def _infeasible(plan: Plan, opts: PlanOptions, hw: Hardware, ladder, options, view) -> Plan:
    reasons = [f"{r.variant}: {r.reason}" for r in plan.rejected]
    plan.requirements = reasons + _fork_refusals(options, ladder, goals()[opts.goal], opts, view, hw)
    overrides = {k: getattr(opts, k) for k in ("variant", "context", "concurrency", "kv_dtype", "engine", "engine_version")
                 if getattr(opts, k) not in (None, "auto")}
    if overrides:
        relaxed = PlanOptions(model=opts.model, goal=opts.goal, host=opts.host, port=opts.port, nodes=opts.nodes,
                              vision=opts.vision, served_name=opts.served_name)
        try:
            alt = make_plan(hw, relaxed)
        except InputError:
            alt = None
        if alt and alt.status == "ok":
            plan.requirements.append(
                f"without {', '.join('--' + k.replace('_', '-') for k in overrides)}: {alt.variant['id']} with "
                f"{alt.settings['max_model_len']:,} tokens of context and {alt.settings['max_num_seqs']} sequences fits")
    per_gpu = gib(view.cuda_total)
    plan.decisions.append(Decision("status", "infeasible", f"no candidate fits {view.count} x {view.names[0]} "
                                   f"({per_gpu} each) with the {opts.goal} goal's targets", "planner/decide.py"))
    return plan


def _fill(plan: Plan, o: Option, alternatives, view: GpuView, opts: PlanOptions, goal: dict, model: Model,
          choices, predictor: Predictor) -> Plan:
    c, s, v, eng = o.cand, o.sized, o.cand.variant, o.choice.engine
    D = plan.decisions.append
    plan.status = "ok"
    plan.warnings.extend(o.choice.warnings)
    # engine
    runtime = eng.runtime(c.version) or {}
    plan.engine = {"name": eng.id, "version": c.version, "installed": o.choice.installed,
                   "install": eng.install_command(c.version), "image": eng.image(c.version),
                   "base_image": eng.raw.get("base_image"), "cuda": runtime.get("cuda"),
                   "min_driver": runtime.get("min_driver"), "branch": eng.raw.get("branch")}
    D(Decision("engine", f"{eng.name} {c.version}", o.choice.reason +
               ("; the expert-offload fork because nothing fits the GPU without paging experts" if eng.id == "vllm-offload" else ""),
               eng.supports_source))
    # variant
    plan.variant = {"id": v.id, "repo": v.repo, "revision": v.revision, "format": v.format, "name": v.name,
                    "size_bytes": v.disk.total, "expert_bytes": v.disk.experts, "non_expert_bytes": v.disk.non_expert,
                    "mtp_bytes": v.disk.mtp, "vision_bytes": v.disk.vision, "has_mtp": v.has_mtp,
                    "has_vision": v.has_vision, "quality": v.quality,
                    "served_model_name": opts.served_name or model.id}
    better = [a for a in alternatives if a.cand.variant.quality > v.quality]
    reason = (f"{v.name}: quality rank {v.quality} ({v.quality_note}); {gib(v.disk.total)} on disk. "
              f"Meets the {opts.goal} goal at {o.context:,} tokens")
    if opts.variant:
        reason = "asked for with --variant; " + reason
    elif better:
        reason += f"; higher-ranked {', '.join(a.cand.variant.id for a in better)} only reach shorter contexts or fewer sequences"
    D(Decision("variant", v.id, reason, "; ".join(v.sources[:2])))
    D(disk.decision(v, from_dict(plan.hardware)))
    for p in v.problems:
        if p.get("engine") in (None, eng.id) and _problem_applies(p, c, view):
            plan.warnings.append(f"{v.id}: {p['text']} ({p['source']})")
    # parallel
    ids = [g.index for g in view.gpus][: c.gpus // c.pp] if c.pp == 1 else [g.index for g in view.gpus]
    uuids = [g.uuid for g in view.gpus if g.index in ids]
    pci = [g.nvml_index for g in view.gpus if g.index in ids]
    plan.parallel = {"tensor": c.tp, "pipeline": c.pp, "data": c.dp, "expert": False, "nodes": opts.nodes,
                     "gpu_ids": ids, "gpu_uuids": uuids if all(uuids) else [],
                     "gpu_pci_indices": pci if all(i is not None for i in pci) and not any(g.mig for g in view.gpus) else []}
    D(Decision("parallel", f"TP {c.tp} x DP {c.dp}" + (f" x PP {c.pp}" if c.pp > 1 else ""),
               _parallel_reason(o, view, goal) + _layout_speed(o, goal, predictor), "https://docs.vllm.ai/en/latest/serving/parallelism_scaling.html" +
               ("; https://docs.vllm.ai/en/latest/serving/data_parallel_deployment/; benchmarks/gpu/results/h200x2"
                if c.dp > 1 and c.family == "vllm" else "")))
    if view.count > 1 and c.tp > 1 and not view.nvlink_all:
        plan.warnings.append("tensor parallel over PCIe (no NVLink between these GPUs): all-reduces cost latency")
    plan.warnings.extend(w for w in [shm.warning(from_dict(plan.hardware), c.gpus)] if w)
    if len(ids) < view.count:
        plan.warnings.append(f"GPU(s) {', '.join(str(g.index) for g in view.gpus if g.index not in ids)} stay idle in this layout")
    # settings
    settings = {"model": v.repo, "served_model_name": plan.variant["served_model_name"], "host": opts.host,
                "port": opts.port, "tensor_parallel": c.tp, "pipeline_parallel": c.pp, "data_parallel": c.dp,
                "expert_parallel": False, "max_model_len": o.context, "max_num_seqs": o.seqs,
                "max_num_batched_tokens": c.batched_tokens, "kv_cache_dtype": c.kv_dtype,
                "gpu_memory_utilization": round(o.gmu, 2), "mem_fraction_static": None,
                "kv_cache_memory_bytes": None, "enforce_eager": c.eager, "expert_cache_size": c.expert_cache,
                "speculative": None, "mamba_cache_strategy": None,
                "disable_vision": not opts.vision and v.multimodal_config and bool(eng.arg_spellings("disable_vision")),
                "hf_overrides": None, "reasoning_parser": eng.parser("reasoning_parser")["value"],
                "tool_call_parser": eng.parser("tool_call_parser")["value"], "chat_template_kwargs": None,
                "extra_args": [], "env": {}, "api_key_env": eng.raw.get("api_key_env") or eng.raw.get("api_key_flag_env"),
                "workarounds": []}
    if c.spec_tokens:
        method = eng.parser("speculative_method")["value"]
        settings["speculative"] = {"method": method, "num_speculative_tokens": c.spec_tokens}
    tried, mtp_reason = _mtp_options(v, o.choice, opts, goal)
    if len(tried) > 1:
        conc = goal.get("concurrency", 1)
        other = replace(c, spec_tokens=MTP_TOKENS if c.spec_tokens == 0 else 0)
        mine, theirs = predictor.burst(c, conc).tokens_per_s, predictor.burst(other, conc).tokens_per_s
        acc = speed.acceptance_for(v)[0]
        mtp_reason = (f"{'on' if c.spec_tokens else 'off'}: predicted {mine:,.0f} tokens/s at {conc} concurrent "
                      f"requests {'with' if c.spec_tokens else 'without'} it, {theirs:,.0f} "
                      f"{'without' if c.spec_tokens else 'with'} (at {acc:.0%} draft acceptance, assumed)")
    D(Decision("speculative", settings["speculative"], f"MTP {mtp_reason}", MTP_SOURCE))
    if eng.id == "sglang":
        static = (s.weights + s.expert_cache + s.cache_bytes) / view.cuda_total
        settings["mem_fraction_static"] = round(int(static * 100) / 100, 2)
        settings["gpu_memory_utilization"] = None
        D(Decision("mem_fraction_static", settings["mem_fraction_static"],
                   f"weights {gib(s.weights)} + KV/state pool {gib(s.cache_bytes)} over {gib(view.cuda_total)}; "
                   f"activations ({gib(s.activation)}) and CUDA graphs ({gib(s.cudagraph)}) stay outside it" +
                   (f"; the budget is {view.pool.reason}" if view.pool else ""),
                   "https://github.com/sgl-project/sglang/blob/v0.5.23/python/sglang/srt/model_executor/model_runner.py (mem_fraction_static covers weights and pools)" +
                   (f"; {view.pool.source}" if view.pool else "")))
    else:
        D(Decision("gpu_memory_utilization", settings["gpu_memory_utilization"], _gmu(o.choice, view, c.family, opts.utilization)[1],
                   view.pool.source if view.pool else "profiles/flags/vllm-*.txt (vllm serve --help: --gpu-memory-utilization)"))
    kv_per_seq = s.layout.bytes_per_request(o.context) if s.layout else o.context * s.kv_per_token + s.state_per_seq
    D(Decision("kv_cache_dtype", "fp8" if c.kv_dtype == "fp8" else "auto (bf16)",
               (f"--kv-dtype {opts.kv_dtype}" if opts.kv_dtype else
                ("bf16: the targets fit without quantizing the cache" if c.kv_dtype == "auto" else
                 "fp8: halves the KV cache (10,240 B/token instead of 20,480) so the targets fit")) +
               (" (storage only on this GPU: attention computes in 16-bit below compute capability 8.9)"
                if c.kv_dtype == "fp8" and view.cc < (8, 9) else ""),
               "planner/memory.py (2 x 10 layers x KV heads x 256 x bytes); https://huggingface.co/palmfuture/Qwen3.6-35B-A3B-GPTQ-Int4 (fp8 KV storage-only on Ampere)"))
    ctx_reason = (f"{o.context:,} tokens: " +
                  (f"--context {opts.context}" if opts.context else
                   f"the first step of the {opts.goal} ladder ({', '.join(f'{x:,}' for x in goal['contexts'])}) where the targets fit") +
                  f"; one request of it takes {gib(kv_per_seq)} of cache; the pool holds {o.full_length} at once")
    if o.context < model.min_thinking_context:
        plan.warnings.append(f"context {o.context:,} is below the {model.min_thinking_context:,} tokens the model card "
                             f"advises for thinking mode")
    D(Decision("max_model_len", o.context, ctx_reason, "planner/memory.py (vLLM hybrid paging, checked against real vLLM 0.26.0 runs on an H100 and an H200: benchmarks/gpu/RESULTS.md)"))
    if o.context > model.native_context:
        yarn = model.yarn
        factor = next(f for ctxt, f in sorted((int(k), v) for k, v in yarn["factors"].items()) if o.context <= ctxt)
        settings["hf_overrides"] = {"text_config": {"rope_parameters": {**yarn["rope_parameters"], "factor": factor}}}
        settings["env"].update(yarn["env"].get(eng.id, {}))
        plan.warnings.append(f"static YaRN (factor {factor}) for {o.context:,} tokens may lower quality on short texts "
                             f"(model card)")
        D(Decision("rope_scaling", f"yarn factor {factor}", f"{o.context:,} tokens exceed the native "
                   f"{model.native_context:,}: the card's static YaRN override", yarn["source"]))
    D(Decision("max_num_seqs", o.seqs, _seqs_reason(o, goal, opts), "planner/decide.py; profiles/goals.yaml"))
    D(Decision("max_num_batched_tokens", c.batched_tokens,
               f"prefill chunk; peak activation ~{gib(s.activation)} (the larger of one chunk's forward pass "
               f"and the sampler over {c.max_seqs} sequences{', plus the MTP drafter' if c.spec_tokens else ''})" +
               ("" if c.batched_tokens == _batched_options(view)[0] else
                f" (lowered from vLLM's default {_batched_options(view)[0]} so the cache fits)"),
               load_profile("memory.yaml")[c.family]["activation_source"]))
    if eng.id == "vllm-offload":
        cold = _cold_tier(v, plan, c)
        settings["env"].update(cold)
        D(Decision("expert_cache_size", c.expert_cache,
                   f"{c.expert_cache} of 256 experts per layer stay on the GPU ({gib(s.expert_cache)}); the rest in "
                   f"{'host RAM' if cold.get('VLLM_MOE_COLD_TIER_MODE') == 'ram' else 'a disk-backed store'}; "
                   f"top-8 routing touches 40-60 experts per prefill, so fewer than 64 overflow often",
                   load_profile("engines.yaml")["engines"]["vllm-offload"]["expert_cache"]["slots_source"]))
    else:
        D(Decision("expert_cache_size", None, "all experts on the GPU: no offload needed", "planner/sizing.py"))
    # workarounds
    for w in o.fixes:
        for k, val in (w.get("set") or {}).items():
            if k in settings and k != "enforce_eager":
                settings[k] = val
        for a in w.get("args") or ():
            settings["extra_args"].append(a.format(max_num_seqs=o.seqs))
        settings["env"].update(w.get("env") or {})
        settings["workarounds"].append(w["id"])
        D(Decision(f"workaround:{w['id']}", w.get("set") or w.get("env") or w.get("args") or True, w["reason"], w["source"]))
    spec = v.engines.get(eng.id) or {}
    settings["extra_args"].extend(spec.get("args") or ())
    settings["env"].update(spec.get("env") or {})
    D(Decision("enforce_eager", c.eager, "eager: " + "; ".join([w["reason"] for w in o.fixes
                                                                 if (w.get("set") or {}).get("enforce_eager")]
                                                                + ["pinned by the retry of a failed start"] * opts.eager)
               if c.eager else "CUDA graphs on: faster decoding" + (
                   f" ({gib(s.cudagraph)} for graphs counted inside the budget)" if s.cudagraph_in_budget else
                   f" ({gib(s.cudagraph)} for graphs outside the budget, as this version does not profile them)"),
               "profiles/flags/vllm-*.txt (vllm serve --help: --enforce-eager)"))
    D(Decision("vision", not settings["disable_vision"],
               "text only: " + ("the checkpoint has no vision weights" if not v.has_vision else
                                "the vision tower and encoder cache are skipped (pass --vision to serve images)")
               if settings["disable_vision"] else "images and video served",
               "https://github.com/vllm-project/vllm/pull/34120 (--language-model-only)"))
    D(Decision("parsers", {"reasoning": settings["reasoning_parser"], "tool_call": settings["tool_call_parser"]},
               "the model card's reasoning and tool-call parsers", eng.parser("tool_call_parser")["source"]))
    if opts.host not in ("127.0.0.1", "localhost", "::1"):
        plan.warnings.append(f"serving on {opts.host}: reachable from other machines; set "
                             f"{settings['api_key_env']} to require an API key")
    D(Decision("listen", f"{opts.host}:{opts.port}", "loopback only unless --host says otherwise" if opts.host == "127.0.0.1"
               else "--host", "policy: loopback unless --host says otherwise"))
    if o.measured:
        D(Decision("memory_model", f"measured on this box on {o.measured['date']}",
                   f"weights, activation and graph memory as {eng.name} {c.version} reported them for this GPU, variant, "
                   f"KV dtype and TP ({o.measured.get('source')}), in place of the formula",
                   o.measured.get("file") or "qwenplan calibration list"))
        if eng.arg_spellings("kv_cache_memory_bytes"):
            # With a measured reserve the exact KV bytes are known: let vLLM take exactly those.
            settings["kv_cache_memory_bytes"] = max(0, s.cache_bytes)
    else:
        D(Decision("memory_model", "formula", "no engine report for this combination on this box yet "
                   "(`qwenplan verify` or `qwenplan auto` records one)", "profiles/memory.yaml"))
    plan.settings = settings
    plan.memory = _memory(o, view, plan)
    plan.performance = _performance(o, goal, predictor)
    one = plan.performance["levels"]["c1"]
    if goal.get("max_tpot_ms") and one["tpot_ms"] > goal["max_tpot_ms"]:
        plan.warnings.append(f"predicted {one['tpot_ms']:.0f} ms per token for one request, slower than the "
                             f"{opts.goal} goal's {goal['max_tpot_ms']} ms: nothing that fits here is faster")
    at_goal = plan.performance["levels"][f"c{plan.performance['goal_concurrency']}"]
    D(Decision("speed", f"{at_goal['tokens_per_s']:,.0f} tokens/s at {at_goal['concurrency']} concurrent requests", _speed_reason(o, alternatives, goal, predictor),
               "planner/speed.py; profiles/speed.yaml (constants, checked against benchmarks/gpu/results)"))
    if s.layout and o.seqs > o.full_length:
        plan.warnings.append(f"{o.seqs} sequences are allowed but the pool holds {o.full_length} full-length "
                             f"({o.context:,}-token) request(s) at once; longer mixes queue")
    plan.rejected.sort(key=lambda r: r.variant)
    plan.alternatives = [{"variant": a.cand.variant.id, "engine": a.cand.engine, "max_model_len": a.context,
                          "max_num_seqs": a.seqs, "tensor": a.cand.tp, "data": a.cand.dp,
                          "kv_cache_dtype": a.cand.kv_dtype, "mtp": a.cand.spec_tokens,
                          "tokens_per_s": {f"c{c}": round(b.tokens_per_s, 1)
                                           for c, b in predictor.all_levels(a.cand).items()}}
                         for a in alternatives]
    return plan


def _performance(o: Option, goal: dict, predictor: Predictor) -> dict:
    """Predicted speed under the benchmark load (1,024 tokens in, 256 out per request)."""
    levels = predictor.all_levels(o.cand, goal.get("concurrency"))
    acceptance, acc_source = speed.acceptance_for(o.cand.variant)
    assumptions = [
        {"what": f"a burst of N requests of {speed.INPUT_TOKENS:,} prompt tokens and {speed.OUTPUT_TOKENS} generated "
                 "tokens each", "source": "benchmarks/gpu/load.py"},
        {"what": "constants fitted on real vLLM 0.26 runs", "source": "profiles/speed.yaml; benchmarks/gpu/fit_speed.py"},
    ] + [{"what": a, "source": "policy: nearest known figures"} for a in predictor.machine.assumed]
    if o.cand.spec_tokens:
        assumptions.append({"what": f"MTP draft acceptance {acceptance:.0%} per token", "source": acc_source})
    if o.cand.variant.format not in speed.MEASURED_FORMATS:
        assumptions.append({"what": f"{o.cand.variant.format} kernels stream weights as fast as the measured FP8 ones "
                                    "(no run of this format yet)", "source": "policy: nearest measured format"})
    if o.cand.family != "vllm":
        assumptions.append({"what": f"{o.cand.engine} steps cost what vLLM's do (no {o.cand.engine} run measured yet)",
                            "source": "profiles/speed.yaml (sglang: same_as vllm)"})
    return {"levels": {f"c{c}": {"concurrency": c, "tokens_per_s": round(b.tokens_per_s, 1),
                                 "ttft_s": round(b.ttft_s, 3), "tpot_ms": round(b.tpot_s * 1000, 2)}
                       for c, b in levels.items()},
            "goal_concurrency": goal.get("concurrency"), "assumptions": assumptions}


def _speed_reason(o: Option, alternatives, goal: dict, predictor: Predictor) -> str:
    conc = goal.get("concurrency", 1)
    mine = predictor.burst(o.cand, conc).tokens_per_s
    one = predictor.burst(o.cand, 1)
    text = (f"predicted {mine:,.0f} tokens/s with {conc} concurrent requests, {one.tokens_per_s:,.0f} tokens/s "
            f"({one.tpot_s * 1000:.1f} ms per token) for one")
    others = sorted(((predictor.burst(a.cand, conc).tokens_per_s, a) for a in alternatives),
                    key=lambda t: -t[0])[:3]
    if others:
        text += "; next best: " + ", ".join(f"{a.cand.variant.id}{' + MTP' if a.cand.spec_tokens else ''} "
                                            f"{t:,.0f} tokens/s" for t, a in others)
    if goal.get("objective") == "speed":
        text += (f" (the fastest within {goal.get('quality_window', 0)} quality points of the best that fits, "
                 f"at the first context that fits)")
    return text


def _problem_applies(p: dict, c: Candidate, view: GpuView) -> bool:
    if p.get("versions") and not in_range(c.version, p["versions"]):
        return False
    if p.get("compute_capability") and not any(_cc_matches(view.cc, x) for x in p["compute_capability"]):
        return False
    return True


def _parallel_reason(o: Option, view: GpuView, goal: dict) -> str:
    c = o.cand
    if view.count == 1:
        return "one GPU"
    if c.tp == 1 and c.dp > 1:
        if c.family == "vllm":
            return (f"{c.dp} data-parallel ranks: each GPU keeps its own attention and KV cache and serves its own "
                    f"requests, while the expert layers are split over all {c.dp} GPUs (vLLM's DP with an MoE model), "
                    f"which leaves more KV cache than {c.dp} full replicas; the ranks step in lockstep")
        return f"each GPU holds a full replica; {c.dp} replicas serve {c.dp}x the requests without all-reduce traffic"
    if c.tp > 1 and c.dp == 1:
        need = o.sized.weights * c.tp > view.cuda_total * 0.9
        return (f"the weights need {c.tp} GPUs' memory" if need else
                f"tensor parallel over {c.tp} GPUs: each step streams half the weights per GPU") + (
            " (NVLink)" if view.nvlink_all else " (PCIe)")
    return f"{c.dp} replicas of {c.tp} GPUs each"


def _layout_speed(o: Option, goal: dict, predictor: Predictor) -> str:
    """The chosen layout's predicted speed beside the other way to use the same GPUs."""
    c = o.cand
    n = c.tp * c.dp
    if n == 1:
        return ""
    other = replace(c, tp=1, dp=n) if c.tp > 1 else replace(c, tp=n, dp=1)
    conc = goal.get("concurrency", 1)
    mine, theirs = predictor.burst(c, conc).tokens_per_s, predictor.burst(other, conc).tokens_per_s
    return (f"; predicted {mine:,.0f} tokens/s at {conc} concurrent requests, against {theirs:,.0f} as "
            f"TP {other.tp} x DP {other.dp} (planner/speed.py)")


def _seqs_reason(o: Option, goal: dict, opts: PlanOptions) -> str:
    if opts.concurrency:
        return f"--concurrency {opts.concurrency}; the pool holds {o.full_length} full-length request(s) at once"
    if goal.get("objective") == "speed":
        limit = state_block_limit(o.sized) if o.sized.layout else o.seqs
        return (f"the smallest cap within {goal['knee']:.0%} of the best predicted tokens/s at "
                f"{goal['concurrency']} concurrent requests (up to {goal['max_seqs']}, and {limit:,} sequences' "
                f"DeltaNet state fit the pool); the pool holds {o.full_length} full-length request(s) at once")
    typical = min(o.context, goal["typical_tokens"])
    return (f"as many {typical:,}-token requests as the pool holds, capped at {goal['max_seqs']} for the "
            f"{opts.goal} goal")


def _cold_tier(v: Variant, plan: Plan, c: Candidate) -> dict:
    facts = load_profile("engines.yaml")["engines"]["vllm-offload"]["expert_cache"]
    ram = (plan.hardware.get("host") or {})
    usable = min([x for x in (ram.get("ram_available_bytes"), ram.get("cgroup_memory_limit_bytes")) if x] or [0])
    need = offload.host_ram_needed(v.disk.experts)
    if usable >= need:
        return {facts["cold_tier_env"]: "ram"}
    plan.warnings.append(f"experts not on the GPU are read from a disk-backed store (~{gib(v.disk.experts)} extra "
                         f"disk under VLLM_CTMOE_CACHE_DIR); host RAM {gib(usable)} is below {gib(need)}")
    return {facts["cold_tier_env"]: "disk"}


def _memory(o: Option, view: GpuView, plan: Plan) -> dict:
    _c, s = o.cand, o.sized
    gpus = []
    for g in view.gpus:
        if g.index not in plan.parallel["gpu_ids"]:
            continue
        total = g.cuda_total_bytes
        budget = int(o.gmu * view.cuda_total)
        gm = GpuMemory(gpu=g.index, name=g.name, total_bytes=total, budget_bytes=budget, weights_bytes=s.weights,
                       expert_cache_bytes=s.expert_cache, activation_bytes=s.activation, non_torch_bytes=s.non_torch,
                       cudagraph_bytes=s.cudagraph, kv_cache_bytes=max(0, s.cache_bytes),
                       headroom_bytes=total - budget - (0 if s.cudagraph_in_budget else s.cudagraph))
        gpus.append({**gm.__dict__, "used_bytes": s.total})
    kv_tokens = s.kv_tokens(o.context)
    return {"per_gpu_budget_bytes": int(o.gmu * view.cuda_total), "weights_bytes": s.weights,
            "expert_cache_bytes": s.expert_cache, "kv_bytes_per_token": s.kv_per_token,
            "state_bytes_per_seq": s.state_per_seq, "kv_cache_bytes": max(0, s.cache_bytes),
            "reserve_bytes": s.activation + s.non_torch + s.cudagraph,
            "activation_bytes": s.activation, "non_torch_bytes": s.non_torch, "cudagraph_bytes": s.cudagraph,
            "cudagraph_in_budget": s.cudagraph_in_budget,
            "headroom_bytes": view.cuda_total - int(o.gmu * view.cuda_total),
            "block_size": s.layout.block_size if s.layout else None,
            "kv_cache_tokens": kv_tokens, "max_concurrency_at_max_len": round(s.max_concurrency(o.context), 2),
            "full_length_seqs": o.full_length, "max_len_that_fits": s.max_len(),
            "source": "planner/sizing.py, planner/memory.py; constants in profiles/memory.yaml",
            "gpus": gpus}
