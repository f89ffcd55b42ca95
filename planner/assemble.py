"""The assembly: the plan document from the chosen option. It only reads what the search
decided (planner/search.py: each decision with its reason and source); the one thing it
computes is how the choice compares with what was not chosen (predicted speeds), to say so."""

from __future__ import annotations

from dataclasses import replace

from . import disk, offload, shm, speed
from .hardware import from_dict
from .model import Model
from .objective import Predictor
from .options import MTP_SOURCE, MTP_TOKENS, PlanOptions
from .plan import Decision, GpuMemory, Plan, Settings
from .search import GpuView, Option, cc_matches, state_block_limit
from .sizing import Candidate
from .units import gib
from .variants import Variant
from .versions import in_range

# The served SGLang runs its memory rules are checked against (tests/test_gpu_results.py).
SGLANG_RUNS = ("benchmarks/gpu/results/h200-sglang/ (real SGLang 0.5.14 runs on an H200: KV tokens and state slots "
               "within 0.5 %); benchmarks/gpu/RESULTS.md (SGLang 0.5.14 on one H200)")


def assemble(plan: Plan, o: Option, alternatives, view: GpuView, opts: PlanOptions, goal: dict, model: Model,
             predictor: Predictor) -> Plan:
    """Fill `plan` from the chosen option: engine, variant, parallel layout, settings, memory and
    speed, each decision in the order the document lists them."""
    plan.status = "ok"
    plan.warnings.extend(o.choice.warnings)
    _engine(plan, o)
    _variant(plan, o, alternatives, view, opts)
    _parallel(plan, o, view, opts, goal, predictor)
    settings = _settings(plan, o, opts)
    _speculative(plan, o, settings, goal, predictor)
    _memory_fraction(plan, o, settings, view)
    _context(plan, o, settings, view, opts, goal, model)
    _capacity(plan, o, settings, view, opts, goal)
    _workarounds(plan, o, settings)
    _behaviour(plan, o, settings, opts)
    _memory_model(plan, o, settings)
    plan.settings = settings.to_dict()
    plan.memory = _memory(o, view, plan)
    plan.performance = _performance(o, goal, predictor)
    _speed(plan, o, alternatives, opts, goal, predictor)
    plan.rejected.sort(key=lambda r: r.variant)
    plan.alternatives = [{"variant": a.cand.variant.id, "engine": a.cand.engine, "max_model_len": a.context,
                          "max_num_seqs": a.seqs, "tensor": a.cand.tp, "data": a.cand.dp,
                          "kv_cache_dtype": a.cand.kv_dtype, "mtp": a.cand.spec_tokens,
                          "tokens_per_s": {f"c{c}": round(b.tokens_per_s, 1)
                                           for c, b in predictor.all_levels(a.cand).items()}}
                         for a in alternatives]
    return plan


def _engine(plan: Plan, o: Option) -> None:
    c, eng = o.cand, o.choice.engine
    runtime = eng.runtime(c.version) or {}
    plan.engine = {"name": eng.id, "version": c.version, "installed": o.choice.installed,
                   "install": eng.install_command(c.version), "image": eng.image(c.version),
                   "base_image": eng.base_image, "cuda": runtime.get("cuda"),
                   "min_driver": runtime.get("min_driver"), "branch": eng.branch}
    plan.decisions.append(Decision(
        "engine", f"{eng.name} {c.version}", o.choice.reason +
        ("; the expert-offload fork because nothing fits the GPU without paging experts" if eng.id == "vllm-offload" else ""),
        eng.supports_source))


def _variant(plan: Plan, o: Option, alternatives, view: GpuView, opts: PlanOptions) -> None:
    c, v, eng = o.cand, o.cand.variant, o.choice.engine
    plan.variant = {"id": v.id, "repo": v.repo, "revision": v.revision, "format": v.format, "name": v.name,
                    "size_bytes": v.disk.total, "expert_bytes": v.disk.experts, "non_expert_bytes": v.disk.non_expert,
                    "mtp_bytes": v.disk.mtp, "vision_bytes": v.disk.vision, "has_mtp": v.has_mtp,
                    "has_vision": v.has_vision, "quality": v.quality,
                    "served_model_name": opts.served_name or plan.model}
    better = [a for a in alternatives if a.cand.variant.quality > v.quality]
    reason = (f"{v.name}: quality rank {v.quality} ({v.quality_note}); {gib(v.disk.total)} on disk. "
              f"Meets the {opts.goal} goal at {o.context:,} tokens")
    if opts.variant:
        reason = "asked for with --variant; " + reason
    elif better:
        reason += f"; higher-ranked {', '.join(a.cand.variant.id for a in better)} only reach shorter contexts or fewer sequences"
    plan.decisions.append(Decision("variant", v.id, reason, "; ".join(v.sources[:2])))
    plan.decisions.append(disk.decision(v, from_dict(plan.hardware)))
    for p in v.problems:
        if p.get("engine") in (None, eng.id) and _problem_applies(p, c, view):
            plan.warnings.append(f"{v.id}: {p['text']} ({p['source']})")


def _parallel(plan: Plan, o: Option, view: GpuView, opts: PlanOptions, goal: dict, predictor: Predictor) -> None:
    c = o.cand
    ids = [g.index for g in view.gpus][: c.gpus // c.pp] if c.pp == 1 else [g.index for g in view.gpus]
    uuids = [g.uuid for g in view.gpus if g.index in ids]
    pci = [g.nvml_index for g in view.gpus if g.index in ids]
    plan.parallel = {"tensor": c.tp, "pipeline": c.pp, "data": c.dp, "expert": False, "nodes": opts.nodes,
                     "gpu_ids": ids, "gpu_uuids": uuids if all(uuids) else [],
                     "gpu_pci_indices": pci if all(i is not None for i in pci) and not any(g.mig for g in view.gpus) else []}
    plan.decisions.append(Decision(
        "parallel", f"TP {c.tp} x DP {c.dp}" + (f" x PP {c.pp}" if c.pp > 1 else ""),
        _parallel_reason(o, view, goal) + _layout_speed(o, goal, predictor), "https://docs.vllm.ai/en/latest/serving/parallelism_scaling.html" +
        ("; https://docs.vllm.ai/en/latest/serving/data_parallel_deployment/; benchmarks/gpu/results/h200x2"
         if c.dp > 1 and c.family == "vllm" else "")))
    if view.count > 1 and c.tp > 1 and not view.nvlink_all:
        plan.warnings.append("tensor parallel over PCIe (no NVLink between these GPUs): all-reduces cost latency")
    plan.warnings.extend(w for w in [shm.warning(from_dict(plan.hardware), c.gpus)] if w)
    if len(ids) < view.count:
        plan.warnings.append(f"GPU(s) {', '.join(str(g.index) for g in view.gpus if g.index not in ids)} stay idle in this layout")


def _settings(plan: Plan, o: Option, opts: PlanOptions) -> Settings:
    """The settings as the search decided them; the steps below fill in the rest. The keyword
    order is the order of the document's `settings` object."""
    c, v, eng = o.cand, o.cand.variant, o.choice.engine
    speculative = None
    if c.spec_tokens:
        speculative = {"method": eng.parser("speculative_method")["value"], "num_speculative_tokens": c.spec_tokens}
    return Settings.of(
        model=v.repo, served_model_name=plan.variant["served_model_name"], host=opts.host,
        port=opts.port, tensor_parallel=c.tp, pipeline_parallel=c.pp, data_parallel=c.dp,
        expert_parallel=False, max_model_len=o.context, max_num_seqs=o.seqs,
        max_num_batched_tokens=c.batched_tokens, kv_cache_dtype=c.kv_dtype,
        gpu_memory_utilization=round(o.basis.gmu.value, 2), mem_fraction_static=None,
        kv_cache_memory_bytes=None, enforce_eager=c.eager, expert_cache_size=c.expert_cache,
        speculative=speculative, mamba_cache_strategy=None,
        disable_vision=not opts.vision and v.multimodal_config and bool(eng.arg_spellings("disable_vision")),
        hf_overrides=None, reasoning_parser=eng.parser("reasoning_parser")["value"],
        tool_call_parser=eng.parser("tool_call_parser")["value"], chat_template_kwargs=None,
        extra_args=[], env={}, api_key_env=eng.key_env, workarounds=[])


def _speculative(plan: Plan, o: Option, settings: Settings, goal: dict, predictor: Predictor) -> None:
    c, mtp = o.cand, o.basis.mtp
    reason = mtp.reason
    if len(mtp.value) > 1:
        # Both were tried: say how the choice compares with the other (predicted speed).
        conc = goal.get("concurrency", 1)
        other = replace(c, spec_tokens=MTP_TOKENS if c.spec_tokens == 0 else 0)
        mine, theirs = predictor.burst(c, conc).tokens_per_s, predictor.burst(other, conc).tokens_per_s
        acc = speed.acceptance_for(c.variant)[0]
        reason = (f"{'on' if c.spec_tokens else 'off'}: predicted {mine:,.0f} tokens/s at {conc} concurrent "
                  f"requests {'with' if c.spec_tokens else 'without'} it, {theirs:,.0f} "
                  f"{'without' if c.spec_tokens else 'with'} (at {acc:.0%} draft acceptance, assumed)")
    plan.decisions.append(Decision("speculative", settings.speculative, f"MTP {reason}", MTP_SOURCE))


def _memory_fraction(plan: Plan, o: Option, settings: Settings, view: GpuView) -> None:
    s = o.sized
    if o.choice.engine.id != "sglang":
        plan.decisions.append(Decision("gpu_memory_utilization", settings.gpu_memory_utilization, o.basis.gmu.reason,
                                       o.basis.gmu.source))
        return
    sp = s.sglang
    settings.mem_fraction_static = sp.mem_fraction_static
    settings.gpu_memory_utilization = None
    plan.decisions.append(Decision(
        "mem_fraction_static", settings.mem_fraction_static,
        f"weights {gib(s.weights)} + pool {gib(s.cache_bytes)} over the {gib(sp.pre_load_bytes)} free before "
        f"loading: {sp.mamba_slots} DeltaNet state slots, {sp.kv_tokens:,} KV tokens, {sp.max_running_requests} "
        f"running requests at most; activations ({gib(s.activation)}), CUDA graphs ({gib(s.cudagraph)})"
        f"{f' and the MTP draft KV ({gib(sp.draft_kv_bytes)})' if sp.draft_kv_bytes else ''} stay outside it" +
        (f"; the budget is {view.pool.reason}" if view.pool else ""),
        "https://github.com/sgl-project/sglang/blob/v0.5.14/python/sglang/srt/model_executor/model_runner_kv_cache_mixin.py (pool = fraction x free before load - weights; mamba/KV split); planner/sglang.py; " + SGLANG_RUNS +
        (f"; {view.pool.source}" if view.pool else "")))


def _context(plan: Plan, o: Option, settings: Settings, view: GpuView, opts: PlanOptions, goal: dict,
             model: Model) -> None:
    c, s, D = o.cand, o.sized, plan.decisions.append
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
    D(Decision("max_model_len", o.context, ctx_reason, f"planner/sglang.py (SGLang's pool split); {SGLANG_RUNS}"
               if c.family == "sglang" else "planner/memory.py (vLLM hybrid paging, checked against real vLLM 0.26.0 runs on an H100 and an H200: benchmarks/gpu/RESULTS.md)"))
    if o.context > model.native_context:
        yarn = model.yarn
        factor = next(f for ctxt, f in sorted((int(k), v) for k, v in yarn["factors"].items()) if o.context <= ctxt)
        settings.hf_overrides = {"text_config": {"rope_parameters": {**yarn["rope_parameters"], "factor": factor}}}
        settings.env.update(yarn["env"].get(o.choice.engine.id, {}))
        plan.warnings.append(f"static YaRN (factor {factor}) for {o.context:,} tokens may lower quality on short texts "
                             f"(model card)")
        D(Decision("rope_scaling", f"yarn factor {factor}", f"{o.context:,} tokens exceed the native "
                   f"{model.native_context:,}: the card's static YaRN override", yarn["source"]))


def _capacity(plan: Plan, o: Option, settings: Settings, view: GpuView, opts: PlanOptions, goal: dict) -> None:
    c, s, D = o.cand, o.sized, plan.decisions.append
    D(Decision("max_num_seqs", o.seqs, _seqs_reason(o, goal, opts), "planner/decide.py; profiles/goals.yaml"))
    default_chunk = o.basis.batched[0]
    D(Decision("max_num_batched_tokens", c.batched_tokens,
               f"prefill chunk; peak activation ~{gib(s.activation)} (the larger of one chunk's forward pass "
               f"and the sampler over {c.max_seqs} sequences{', plus the MTP drafter' if c.spec_tokens else ''})" +
               ("" if c.batched_tokens == default_chunk else
                f" (lowered from vLLM's default {default_chunk} so the cache fits)"),
               _memory_facts(c.family)["activation_source"]))
    if o.choice.engine.id == "vllm-offload":
        cold = _cold_tier(c.variant, plan, c)
        settings.env.update(cold)
        D(Decision("expert_cache_size", c.expert_cache,
                   f"{c.expert_cache} of 256 experts per layer stay on the GPU ({gib(s.expert_cache)}); the rest in "
                   f"{'host RAM' if cold.get('VLLM_MOE_COLD_TIER_MODE') == 'ram' else 'a disk-backed store'}; "
                   f"top-8 routing touches 40-60 experts per prefill, so fewer than 64 overflow often",
                   offload.facts()["slots_source"]))
    else:
        D(Decision("expert_cache_size", None, "all experts on the GPU: no offload needed", "planner/sizing.py"))


def _memory_facts(family: str) -> dict:
    from .catalog import load_profile

    return load_profile("memory.yaml")[family]


def _workarounds(plan: Plan, o: Option, settings: Settings) -> None:
    """The workarounds the search applied (each with its reason and source), then the variant's
    own arguments and environment."""
    for w in o.fixes:
        for k, val in (w.get("set") or {}).items():
            if k != "enforce_eager":   # already in the candidate: it was sized eager
                settings.put(k, val)
        args = [a.format(max_num_seqs=o.seqs) for a in w.get("args") or ()]
        settings.extra_args.extend(args)
        settings.env.update(w.get("env") or {})
        settings.workarounds.append(w["id"])
        plan.decisions.append(Decision(f"workaround:{w['id']}", w.get("set") or w.get("env") or args or True,
                                       w["reason"], w["source"]))
    spec = o.cand.variant.engines.get(o.choice.engine.id) or {}
    settings.extra_args.extend(spec.get("args") or ())
    settings.env.update(spec.get("env") or {})


def _behaviour(plan: Plan, o: Option, settings: Settings, opts: PlanOptions) -> None:
    c, s, v, eng, D = o.cand, o.sized, o.cand.variant, o.choice.engine, plan.decisions.append
    D(Decision("enforce_eager", c.eager, "eager: " + "; ".join([w["reason"] for w in o.fixes
                                                                 if (w.get("set") or {}).get("enforce_eager")]
                                                                + ["pinned by the retry of a failed start"] * opts.eager)
               if c.eager else "CUDA graphs on: faster decoding" + (
                   f" ({gib(s.cudagraph)} for graphs counted inside the budget)" if s.cudagraph_in_budget else
                   f" ({gib(s.cudagraph)} for graphs outside the budget, as this version does not profile them)"),
               "profiles/flags/vllm-*.txt (vllm serve --help: --enforce-eager)"))
    D(Decision("vision", not settings.disable_vision,
               "text only: " + ("the checkpoint has no vision weights" if not v.has_vision else
                                "the vision tower and encoder cache are skipped (pass --vision to serve images)")
               if settings.disable_vision else "images and video served",
               "https://github.com/vllm-project/vllm/pull/34120 (--language-model-only)"))
    D(Decision("parsers", {"reasoning": settings.reasoning_parser, "tool_call": settings.tool_call_parser},
               "the model card's reasoning and tool-call parsers", eng.parser("tool_call_parser")["source"]))
    if opts.host not in ("127.0.0.1", "localhost", "::1"):
        plan.warnings.append(f"serving on {opts.host}: reachable from other machines; set "
                             f"{settings.api_key_env} to require an API key")
    D(Decision("listen", f"{opts.host}:{opts.port}", "loopback only unless --host says otherwise" if opts.host == "127.0.0.1"
               else "--host", "policy: loopback unless --host says otherwise"))


def _memory_model(plan: Plan, o: Option, settings: Settings) -> None:
    c, eng = o.cand, o.choice.engine
    if not o.measured:
        plan.decisions.append(Decision("memory_model", "formula", "no engine report for this combination on this box yet "
                                       "(`qwenplan verify` or `qwenplan auto` records one)", "profiles/memory.yaml"))
        return
    plan.decisions.append(Decision(
        "memory_model", f"measured on this box on {o.measured['date']}",
        f"weights, activation and graph memory as {eng.name} {c.version} reported them for this GPU, variant, "
        f"KV dtype and TP ({o.measured.get('source')}), in place of the formula",
        o.measured.get("file") or "qwenplan calibration list"))
    if eng.arg_spellings("kv_cache_memory_bytes"):
        # With a measured reserve the exact KV bytes are known: let vLLM take exactly those.
        settings.kv_cache_memory_bytes = max(0, o.sized.cache_bytes)


def _speed(plan: Plan, o: Option, alternatives, opts: PlanOptions, goal: dict, predictor: Predictor) -> None:
    one = plan.performance["levels"]["c1"]
    if goal.get("max_tpot_ms") and one["tpot_ms"] > goal["max_tpot_ms"]:
        plan.warnings.append(f"predicted {one['tpot_ms']:.0f} ms per token for one request, slower than the "
                             f"{opts.goal} goal's {goal['max_tpot_ms']} ms: nothing that fits here is faster")
    at_goal = plan.performance["levels"][f"c{plan.performance['goal_concurrency']}"]
    plan.decisions.append(Decision(
        "speed", f"{at_goal['tokens_per_s']:,.0f} tokens/s at {at_goal['concurrency']} concurrent requests",
        _speed_reason(o, alternatives, goal, predictor),
        "planner/speed.py; profiles/speed.yaml (constants, checked against benchmarks/gpu/results)"))
    if o.sized.layout and o.seqs > o.full_length:
        plan.warnings.append(f"{o.seqs} sequences are allowed but the pool holds {o.full_length} full-length "
                             f"({o.context:,}-token) request(s) at once; longer mixes queue")


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
    if p.get("compute_capability") and not any(cc_matches(view.cc, x) for x in p["compute_capability"]):
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
    facts = offload.facts()
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
        budget = o.basis.budget
        gm = GpuMemory(gpu=g.index, name=g.name, total_bytes=total, budget_bytes=budget, weights_bytes=s.weights,
                       expert_cache_bytes=s.expert_cache, activation_bytes=s.activation, non_torch_bytes=s.non_torch,
                       cudagraph_bytes=s.cudagraph, kv_cache_bytes=max(0, s.cache_bytes),
                       headroom_bytes=total - budget - (0 if s.cudagraph_in_budget else s.cudagraph))
        gpus.append({**gm.__dict__, "used_bytes": s.total})
    kv_tokens = s.kv_tokens(o.context)
    return {"per_gpu_budget_bytes": o.basis.budget, "weights_bytes": s.weights,
            "expert_cache_bytes": s.expert_cache, "kv_bytes_per_token": s.kv_per_token,
            "state_bytes_per_seq": s.state_per_seq, "kv_cache_bytes": max(0, s.cache_bytes),
            "reserve_bytes": s.activation + s.non_torch + s.cudagraph,
            "activation_bytes": s.activation, "non_torch_bytes": s.non_torch, "cudagraph_bytes": s.cudagraph,
            "cudagraph_in_budget": s.cudagraph_in_budget,
            "headroom_bytes": view.cuda_total - o.basis.budget,
            "block_size": s.layout.block_size if s.layout else None,
            "kv_cache_tokens": kv_tokens, "max_concurrency_at_max_len": round(s.max_concurrency(o.context), 2),
            "full_length_seqs": o.full_length, "max_len_that_fits": s.max_len(),
            **({"sglang": s.sglang.as_dict()} if s.sglang else {}),
            "source": "planner/sizing.py, planner/memory.py; constants in profiles/memory.yaml",
            "gpus": gpus}
