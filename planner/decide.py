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

from . import disk, llamacpp, speed
from .assemble import assemble
from .errors import InputError
from .hardware import Hardware
from .model import Model, get_model
from .objective import Predictor
from .options import DEFAULT_MODEL, GOALS, MTP_TOKENS, PlanOptions, goals
from .plan import Decision, Plan, Rejected
from .search import Option, best_options, candidates, engine_choices, fork_refusals, gpu_view, support_problem, why_not
from .units import gib
from .variants import Variant, get_variant, variants_of

__all__ = ["DEFAULT_MODEL", "GOALS", "MTP_TOKENS", "PlanOptions", "goals", "make_plan"]


def _checked(opts: PlanOptions) -> tuple[Model, Variant | None]:
    """The model asked for, and the variant when one is pinned; refuses options that cannot be planned."""
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
    return model, variant_filter


_DEFAULTS = PlanOptions()


def make_plan(hw: Hardware, opts: PlanOptions = _DEFAULTS) -> Plan:
    model, variant_filter = _checked(opts)
    goal = goals()[opts.goal]
    ladder = _ladder(goal, opts, model)
    view, warnings = gpu_view(hw)
    plan = Plan(model=model.id, goal=opts.goal, status="infeasible", engine={}, variant={}, parallel={},
                settings={}, memory={}, hardware=hw.to_dict())
    plan.warnings.extend(warnings)
    if opts.engine == "llamacpp" or view is None:
        return llamacpp.make_plan(hw, opts, model, plan, view, "asked for with --engine llamacpp"
                                  if opts.engine == "llamacpp" else "no usable NVIDIA GPU here: llama.cpp runs on the CPU")
    pool = variants_of(model.id) if not variant_filter else (variant_filter,)
    options = _all_candidates(pool, engine_choices(hw, opts), view, opts, goal, plan)
    predictor = Predictor(speed.machine_for(view.names[0], nvlink=view.nvlink_all))
    best, by_variant = _best(options, hw, ladder, goal, opts, view, predictor, plan)
    for v in pool:
        if v.id in by_variant or any(r.variant == v.id for r in plan.rejected):
            continue
        plan.rejected.append(Rejected(v.id, why_not(v, options, ladder, goal, opts, view)))
    if (best is None or best.cand.engine == "vllm-offload") and opts.engine == "auto":
        alt = llamacpp.instead(hw, opts, model, plan, view, best is not None)
        if alt is not None:
            return alt
    if best is None:
        return _infeasible(plan, opts, hw, ladder, options, view)
    alternatives = [o for vid, o in by_variant.items() if vid != best.cand.variant.id]
    return assemble(plan, best, alternatives, view, opts, goal, model, predictor)


def _all_candidates(pool, choices, view, opts: PlanOptions, goal: dict, plan: Plan) -> list[Option]:
    """Every variant on every engine that can load it here, sized; the others rejected with why."""
    options: list[Option] = []
    for v in pool:
        problems = []
        for choice in choices:
            if choice.engine.id == "vllm-offload" and not v.offloadable:
                continue
            why = support_problem(v, choice, view)
            if why:
                problems.append(why)
                continue
            options.extend(candidates(v, choice, view, opts, goal))
        if not any(o.cand.variant is v for o in options):
            plan.rejected.append(Rejected(v.id, "; ".join(dict.fromkeys(problems)) or "no engine can load it here"))
    return options


def _best(options, hw, ladder, goal, opts, view, predictor, plan: Plan):
    """The search over variants that fit the free disk first; the others only when none of those fits."""
    on_disk = [o for o in options if not disk.shortfall(o.cand.variant, hw)]
    best, by_variant = (best_options(on_disk, ladder, goal, opts, view, predictor) if len(on_disk) < len(options)
                        else (None, {}))
    if best is not None:
        short = {o.cand.variant.id: o.cand.variant for o in options if disk.shortfall(o.cand.variant, hw)}
        plan.rejected.extend(Rejected(v.id, disk.rejection(v, hw)) for v in short.values())
    else:
        best, by_variant = best_options(options, ladder, goal, opts, view, predictor)
        if best is not None and disk.shortfall(best.cand.variant, hw):
            plan.warnings.append(disk.warning(best.cand.variant, hw))
    return best, by_variant


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


def _infeasible(plan: Plan, opts: PlanOptions, hw: Hardware, ladder, options, view) -> Plan:
    reasons = [f"{r.variant}: {r.reason}" for r in plan.rejected]
    plan.requirements = reasons + fork_refusals(options, ladder, goals()[opts.goal], opts, view, hw)
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
