"""llama.cpp plans: GGUF on the boxes vLLM and SGLang cannot serve.

One entry point, `make_plan`. The memory model follows how llama-server places a GGUF:
`--n-gpu-layers all` puts every layer and the output head on the GPU, the token embeddings stay
in host RAM (llama.cpp never offloads the input layer), and `--n-cpu-moe N` keeps the routed
experts of the first N layers in host RAM. KV cache (the 10 full-attention layers, by
`--cache-type-k/-v`), the float32 Gated DeltaNet state of every slot, and the compute buffers
sit with the layers on the GPU. Weights are summed per tensor from the GGUF recipe
(planner/weights.py); constants and policy are in profiles/memory.yaml `llamacpp`.

Without a GPU everything is in host RAM. Host RAM holds the experts kept off the GPU (read
into memory with `--load-mode none`: resident, never paged back in from disk mid-generation),
the context checkpoints of each slot and the prompt cache (`--cache-ram`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from . import speed
from .catalog import load_profile
from .engines import check_version, get_engine
from .errors import InputError
from .hardware import Hardware
from .memory import deltanet_state_per_seq
from .model import Model, Shape
from .plan import Decision, Plan, Rejected, Settings
from .units import MiB, ceil_div, gib
from .variants import Variant, get_variant, variants_of
from .versions import Version
from .weights import _sized_tensors

ENGINE = "llamacpp"
CACHE_TYPES = ("f16", "q8_0", "q4_0")


@lru_cache(maxsize=1)
def facts() -> dict:
    return load_profile("memory.yaml")[ENGINE]


# --- the memory model -----------------------------------------------------------------------

def kv_bytes_per_token(shape: Shape, cache_k: str, cache_v: str, mtp: bool = False) -> int:
    """K and V of every full-attention layer (the MTP layer is one more attention layer)."""
    types = facts()["cache_types"]
    row = shape.kv_heads * shape.head_dim
    layers = shape.full_attention_layers + (shape.mtp_layers if mtp else 0)
    per = sum(ceil_div(row, types[t][0]) * types[t][1] for t in (cache_k, cache_v))
    return layers * per


def state_bytes_per_seq(shape: Shape) -> int:
    """R (the conv window) and S (the recurrent state) of every DeltaNet layer, both float32 in
    llama.cpp (src/llama-memory-recurrent.cpp type_r/type_s)."""
    return deltanet_state_per_seq(shape, conv_dtype="float32", ssm_dtype="float32")


def kv_cells(context: int, slots: int = 1) -> int:
    """Cells of the KV cache: each slot has its own stream of --ctx-size / --parallel cells (the
    cache is not unified when --parallel is given), padded to 256."""
    pad = facts()["kv_pad_cells"]
    return slots * ceil_div(context, pad) * pad


def compute_bytes(shape: Shape, ubatch: int, context: int) -> int:
    """One ubatch's compute buffer (fitted on the tiny model): the attention mask over a slot's
    cells, activations over the widest per-token tensors, the logits of the reserved outputs."""
    f = facts()
    return (ubatch * kv_cells(context) * f["compute_mask_bytes"]
            + ubatch * shape.conv_dim * f["compute_bytes_per_token_per_channel"] + f["compute_outputs"] * shape.vocab * 4)


@dataclass(frozen=True)
class Split:
    """Weights on the GPU and in host RAM for one placement."""

    gpu: int
    host: int
    expert_layer: int       # routed experts of one layer (what each --n-cpu-moe step moves)
    experts_host: int       # routed-expert bytes in host RAM
    experts_gpu: int
    non_expert: int         # everything else that is read per token (not the embeddings)


def split(v: Variant, n_cpu_moe: int, gpu: bool) -> Split:
    m = v.model
    on_gpu = on_host = e_host = e_gpu = layer0 = dense = 0
    for t, size in _sized_tensors(v.recipe, m.shape, m.vision_params):
        if t.part == "vision" or (t.part == "mtp" and not v.recipe.includes_mtp):
            continue
        expert = t.cls == "experts"
        if expert and t.layer == 0:
            layer0 += size
        host = not gpu or t.cls == "embed" or (expert and t.part == "text" and t.layer < n_cpu_moe)
        if host:
            on_host += size
        else:
            on_gpu += size
        if expert:
            e_host, e_gpu = (e_host + size, e_gpu) if host else (e_host, e_gpu + size)
        elif t.cls != "embed":
            dense += size
    return Split(on_gpu, on_host, layer0, e_host, e_gpu, dense)


# --- speed ------------------------------------------------------------------------------------

def decode_tokens_per_s(v: Variant, s: Split, gpu_name: str | None, host_bw_gbs: float, context: int,
                        kv_per_token: int, mtp: bool) -> float:
    """One sequence's decode with the speed model's roofline (planner/speed.py): the GPU reads
    what it holds at its bandwidth; the routed experts kept in host RAM are read there by the CPU
    at host-RAM bandwidth (speed.py's host path, here RAM rather than PCIe). Without a GPU the
    host is the machine (decode on CPUs is bound by memory bandwidth: compute is not costed)."""
    sh = v.model.shape
    lay = speed.Layout(quantized=True, spec_tokens=2 if mtp else 0, max_seqs=1)
    step = replace(speed.step_shape(v.recipe, sh, v.model.vision_params, lay),
                   expert_bytes=s.experts_gpu, paged_expert_bytes=s.experts_host,
                   kv_bytes_per_token=kv_per_token, state_bytes_per_seq=2 * state_bytes_per_seq(sh))
    host = host_bw_gbs * 1e9 * facts()["host_efficiency"]
    if gpu_name is None:
        k = speed.Constants.for_engine(ENGINE)
        m = speed.Machine("CPU", bandwidth=host / k.quantized_bandwidth_efficiency, bf16_flops=float("inf"),
                           link_bandwidth=1.0, link_latency=0.0, host_paging=host)
        step = replace(step, expert_bytes=s.experts_host, paged_expert_bytes=0)
    else:
        m = replace(speed.machine_for(gpu_name), host_paging=host)
    k = speed.Constants.for_engine(ENGINE)
    accepted = speed.acceptance_for(v)[0] if mtp else 0.0
    tokens = 1 + sum(accepted ** i for i in range(1, lay.spec_tokens + 1))
    return tokens / speed.step_time(step, m, k, lay, 1, 0, context)


# --- the search -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    variant: Variant
    context: int              # per slot
    slots: int
    cache_type: str
    n_cpu_moe: int
    split: Split
    kv_bytes: int
    state_bytes: int
    compute_gpu: int
    compute_host: int
    checkpoint_bytes: int
    cache_ram: int
    host_total: int
    gpu_total: int
    tokens_per_s: float
    mtp: bool


def _host_bandwidth(hw: Hardware) -> tuple[float, str]:
    given = hw.host.memory_bandwidth_gbs
    if given:
        return float(given), "the hardware document (host.memory_bandwidth_gbs)"
    return float(facts()["host_bandwidth_gbs"]), facts()["speed_source"]


def _options(v: Variant, *, budget: int | None, host_ram: int | None, contexts, slots: int, cache_types,
             gpu_name: str | None, host_bw: float, mtp: bool) -> list[Option]:
    f = facts()
    sh = v.model.shape
    gpu = budget is not None
    ubatch = load_profile("engines.yaml")["engines"][ENGINE]["defaults"]["n_ubatch"]["value"]
    out = []
    for context in contexts:
        compute = compute_bytes(sh, ubatch, context)
        for ct in cache_types:
            kv_tok = kv_bytes_per_token(sh, ct, ct, mtp and v.has_mtp)
            kv = kv_cells(context, slots) * kv_tok
            rs_seqs = slots * (1 + (2 if mtp and v.has_mtp else 0))   # MTP keeps a state per draft step
            state = rs_seqs * state_bytes_per_seq(sh)
            checkpoints = f["ctx_checkpoints"] * slots * state_bytes_per_seq(sh)
            if gpu:
                if kv + state > f["max_cache_share"] * budget:
                    continue
                base = split(v, sh.layers, True)            # every expert in host RAM
                room = budget - (base.gpu + kv + state + compute)
                if room < 0:
                    continue
                ncm = max(0, sh.layers - room // base.expert_layer) if base.expert_layer else 0
                s = split(v, ncm, True)
                gpu_total = s.gpu + kv + state + compute
                compute_host = 0
            else:
                ncm, s = sh.layers, split(v, sh.layers, False)
                gpu_total, compute_host = 0, compute
                kv_host = kv + state
            host_need = s.host + compute_host + checkpoints + f["host_overhead_bytes"] + (0 if gpu else kv_host)
            if host_ram is not None and host_need > host_ram:
                continue
            spare = (host_ram - host_need) if host_ram is not None else f["cache_ram_max_bytes"]
            cache_ram = max(0, min(f["cache_ram_max_bytes"], spare // 2)) // MiB * MiB
            tps = decode_tokens_per_s(v, s, gpu_name if gpu else None, host_bw, min(context, 16384), kv_tok,
                                       mtp and v.has_mtp)
            out.append(Option(v, context, slots, ct, ncm, s, kv, state, compute if gpu else 0, compute_host,
                               checkpoints, cache_ram, host_need + cache_ram, gpu_total, tps, mtp and v.has_mtp))
            break            # the first (widest) cache type that fits at this context
    return out


def _pick(options: list[Option], goal: str, min_context: int) -> Option:
    """Contexts the model card advises for thinking first (when any fits); then, among options
    predicted within the speed floor of the fastest, the highest quality, then the longest
    context, then MTP, then speed."""
    options = [o for o in options if o.context >= min_context] or options
    floor = facts()["speed_floor"] * max(o.tokens_per_s for o in options)
    fast = [o for o in options if o.tokens_per_s >= floor] or options
    key = (lambda o: (o.context, o.variant.quality, o.mtp, o.tokens_per_s)) if goal == "long-context" else \
          (lambda o: (o.variant.quality, o.context, o.mtp, o.tokens_per_s))
    return max(fast, key=key)


# --- the plan ---------------------------------------------------------------------------------

def _engine_version(eng, opts) -> tuple[str, list[str]]:
    """The llama.cpp version to plan for (--engine-version when it names llama.cpp) and its warnings;
    a --kv-dtype llama.cpp has no cache type for is refused here, before any search."""
    version = opts.engine_version if opts.engine == ENGINE and opts.engine_version else eng.default_version
    warnings = check_version(eng, version)
    if opts.kv_dtype and opts.kv_dtype not in CACHE_TYPES:
        raise InputError(f"--kv-dtype {opts.kv_dtype!r} is not a llama.cpp cache type",
                         f"use one of: {', '.join(CACHE_TYPES)}")
    return version, warnings


def _gpu_budget(view, warnings: list[str]):
    """(the GPU llama.cpp uses or None, its byte budget, its bandwidth in GB/s): the first usable GPU,
    its free memory less llama.cpp's overhead. Assumed machine figures go to `warnings`."""
    gpu = view.gpus[0] if view is not None else None
    budget = None
    gpu_bw = None
    if gpu is not None:
        free = gpu.cuda_free_bytes if gpu.cuda_free_bytes is not None else gpu.cuda_total_bytes
        budget = free - facts()["gpu_overhead_bytes"]
        machine = speed.machine_for(gpu.name)
        gpu_bw = machine.bandwidth / 1e9
        warnings.extend(machine.assumed)
    return gpu, budget, gpu_bw


def _host_ram(hw: Hardware, warnings: list[str]) -> int | None:
    """Usable host RAM; when unknown, a warning that host-resident parts go unchecked."""
    host_ram = hw.host.usable_ram_bytes
    if host_ram is None:
        warnings.append("host RAM unknown: the experts and caches this plan keeps in host RAM are not checked "
                        "against it (give --ram)")
    return host_ram


def _unsupported(v: Variant, version: str) -> str | None:
    """Why llama.cpp `version` cannot load `v` at all (not GGUF, or too old), or None."""
    spec = v.engines.get(ENGINE)
    if spec is None:
        return f"llama.cpp loads GGUF files only ({v.format})"
    if Version(version) < Version(spec["min"]):
        return f"needs llama.cpp {spec['min']} or newer (planning for {version})"
    return None


def _misfit(v: Variant, gpu, budget, host_ram) -> str:
    """Why no option of `v` fits: what must stay in host RAM against the GPU budget, or the weights
    against host RAM without a GPU."""
    s = split(v, v.model.shape.layers, gpu is not None)
    return (f"does not fit: {gib(s.host)} must stay in host RAM "
            f"(usable {gib(host_ram)}) and the GPU budget is {gib(budget)}"
            if gpu is not None else
            f"does not fit: {gib(v.disk.total)} of weights, host RAM usable {gib(host_ram)}")


def _search(pool, version: str, gpu, rejected: list, **search) -> list[Option]:
    """Every option of every variant in `pool`; the variants with none go to `rejected` with the reason.
    `search` carries _options' keywords other than gpu_name."""
    options = []
    for v in pool:
        reason = _unsupported(v, version)
        if reason is not None:
            rejected.append((v.id, reason))
            continue
        found = _options(v, gpu_name=gpu.name if gpu is not None else None, **search)
        if found:
            options.extend(found)
        else:
            rejected.append((v.id, _misfit(v, gpu, search["budget"], search["host_ram"])))
    return options


def _infeasible(plan: Plan, rejected, why: str) -> Plan:
    """The plan when no GGUF variant fits: every rejection as a requirement."""
    plan.status = "infeasible"
    plan.requirements = [f"{vid}: {r}" for vid, r in rejected] or ["no GGUF variant in the catalog"]
    plan.decisions.append(Decision("status", "infeasible", f"no GGUF variant fits this box with llama.cpp ({why})",
                                    "planner/llamacpp.py"))
    return plan


def make_plan(hw: Hardware, opts, model: Model, plan: Plan, view, why: str) -> Plan:
    """The llama.cpp plan for this box (`view`: decide.GpuView or None without a usable GPU).
    `plan` arrives with the model, goal and hardware filled in; `why` says why llama.cpp."""
    eng = get_engine(ENGINE)
    version, warnings = _engine_version(eng, opts)
    goal_facts = load_profile("goals.yaml")["goals"][opts.goal]
    slots = opts.concurrency or facts()["slots"][opts.goal]
    contexts = [opts.context] if opts.context else [c for c in goal_facts["contexts"] if c <= model.native_context]
    gpu, budget, gpu_bw = _gpu_budget(view, warnings)
    host_bw, host_bw_source = _host_bandwidth(hw)
    host_ram = _host_ram(hw, warnings)
    pool = [get_variant(opts.variant)] if opts.variant else [v for v in variants_of(model.id) if ENGINE in v.engines]
    mtp_on = opts.mtp is not False and goal_facts["mtp"]
    rejected = []
    options = _search(pool, version, gpu, rejected, budget=budget, host_ram=host_ram, contexts=contexts, slots=slots,
                      cache_types=[opts.kv_dtype] if opts.kv_dtype else CACHE_TYPES[:2],
                      host_bw=host_bw, mtp=mtp_on)
    plan.warnings.extend(warnings)
    if not options:
        return _infeasible(plan, rejected, why)
    best = _pick(options, opts.goal, 0 if opts.context else model.min_thinking_context)
    return _fill(plan, best, options, rejected, hw, opts, model, eng, version, gpu, budget, gpu_bw, host_bw,
                 host_bw_source, why)


def instead(hw: Hardware, opts, model: Model, plan: Plan, view, offload_found: bool) -> Plan | None:
    """The llama.cpp plan when vLLM and SGLang have none, or only the expert-offload fork (which
    pages experts over PCIe); None when llama.cpp has none either. vLLM's rejections are kept."""
    if opts.variant and ENGINE not in get_variant(opts.variant).engines:
        return None
    why = ("the only vLLM plan here is the expert-offload fork, which pages experts over PCIe; llama.cpp keeps "
           "them in host RAM and reads them there" if offload_found else
           "vLLM and SGLang cannot serve this box (see rejected)")
    fresh = Plan(model=plan.model, goal=plan.goal, status="infeasible", engine={}, variant={}, parallel={},
                 settings={}, memory={}, hardware=plan.hardware, warnings=list(plan.warnings))
    out = make_plan(hw, opts, model, fresh, view, why)
    if out.status != "ok":
        return None
    gguf = {r.variant for r in out.rejected} | {out.variant["id"]} | {a["variant"] for a in out.alternatives}
    out.rejected = [r for r in plan.rejected if r.variant not in gguf] + out.rejected
    return out


def _threads(hw: Hardware) -> tuple[int, str]:
    cores = hw.host.cpu_physical_count
    if cores:
        return int(cores), "the physical cores (llama.cpp's matrix kernels gain nothing from SMT siblings)"
    if hw.host.cpu_count:
        n = max(1, hw.host.cpu_count // 2) if hw.host.cpu_count > 1 else 1
        return n, f"half the {hw.host.cpu_count} logical CPUs (physical cores unknown; SMT assumed)"
    return 4, "4: the hardware document gives no CPU count"


def _fill_engine(plan: Plan, eng, version: str, gpu, why: str) -> None:
    """The engine block: the CUDA image with a GPU, the CPU image without one."""
    runtime = eng.runtime(version) or {}
    plan.engine = {"name": ENGINE, "version": version, "installed": None, "install": eng.install_command(version),
                   "image": eng.image(version) if gpu is not None else eng.image_cpu.format(version=version),
                   "base_image": None, "cuda": runtime.get("cuda") if gpu is not None else None,
                   "min_driver": runtime.get("min_driver") if gpu is not None else None, "branch": None}
    plan.decisions.append(Decision("engine", f"llama.cpp {version}", why, eng.supports_source))


def _fill_variant(plan: Plan, v: Variant, served: str) -> None:
    """The variant block: the GGUF file chosen and why it won."""
    f = facts()
    plan.variant = {"id": v.id, "repo": v.repo, "revision": v.revision, "format": v.format, "name": v.name,
                    "gguf_file": v.raw["gguf_file"], "size_bytes": v.disk.total, "expert_bytes": v.disk.experts,
                    "non_expert_bytes": v.disk.non_expert, "mtp_bytes": v.disk.mtp, "vision_bytes": 0,
                    "has_mtp": v.has_mtp, "has_vision": False, "quality": v.quality, "served_model_name": served}
    plan.decisions.append(Decision(
        "variant", v.id, f"{v.name}, file {v.raw['gguf_file']}: quality rank {v.quality} ({v.quality_note}); "
        f"{gib(v.disk.total)} on disk; the best quality among GGUF plans predicted at least "
        f"{f['speed_floor']:.0%} as fast as the fastest", "; ".join(v.sources[:2])))


def _fill_parallel(plan: Plan, gpu) -> None:
    """One GPU or none: llama.cpp plans never split a model across GPUs."""
    ids = [gpu.index] if gpu is not None else []
    plan.parallel = {"tensor": 1, "pipeline": 1, "data": 1, "expert": False, "nodes": 1, "gpu_ids": ids,
                     "gpu_uuids": [gpu.uuid] if gpu is not None and gpu.uuid else []}
    if gpu is not None and len(plan.hardware.get("gpus") or []) > 1:
        plan.warnings.append("llama.cpp plans use one GPU; the others stay idle")


def _settings(o: Option, opts, eng, gpu, served: str, threads: int) -> Settings:
    """The llama-server settings for option `o`."""
    f = facts()
    v = o.variant
    return Settings.of(model=v.repo, hf_repo=v.repo, hf_file=v.raw["gguf_file"], model_path=None,
                       mmproj=None, served_model_name=served, host=opts.host, port=opts.port,
                       max_model_len=o.context, max_num_seqs=o.slots, ctx_size=o.context * o.slots,
                       parallel=o.slots, n_gpu_layers="all" if gpu is not None else 0, n_cpu_moe=o.n_cpu_moe if gpu else 0,
                       cache_type_k=o.cache_type, cache_type_v=o.cache_type,
                       flash_attn="on" if gpu is not None else "auto", threads=threads, load_mode="none",
                       fit="off", ctx_checkpoints=f["ctx_checkpoints"], cache_ram_mib=o.cache_ram // MiB,
                       speculative={"method": "draft-mtp", "num_speculative_tokens": 2} if o.mtp else None,
                       jinja=True, reasoning_format=eng.parser("reasoning_parser")["value"], log_verbosity=4,
                       kv_cache_dtype=o.cache_type, extra_args=[], env={}, api_key_env=eng.api_key_env,
                       workarounds=[], tensor_parallel=1, data_parallel=1, pipeline_parallel=1)


def _placement_decision(o: Option, gpu) -> Decision:
    """Where the weights go: -ngl all with the first layers' experts in host RAM, or all on the CPU."""
    s, sh = o.split, o.variant.model.shape
    if gpu is not None:
        return Decision("placement", f"-ngl all, --n-cpu-moe {o.n_cpu_moe}",
                        f"every layer and the output head on GPU {gpu.index}; the routed experts of the first "
                        f"{o.n_cpu_moe} of {sh.layers} layers ({gib(s.experts_host)}) stay in host RAM, the other "
                        f"{sh.layers - o.n_cpu_moe} layers' experts ({gib(s.experts_gpu)}) fill the GPU after weights "
                        f"({gib(s.gpu - s.experts_gpu)}), KV cache and state ({gib(o.kv_bytes + o.state_bytes)}) and the "
                        f"compute buffer ({gib(o.compute_gpu)}); each layer's experts are {gib(s.expert_layer)}",
                        "profiles/flags/llamacpp-b11312.txt (--n-cpu-moe: keep the MoE weights of the first N layers in the CPU); "
                        "profiles/memory.yaml llamacpp")
    return Decision("placement", "-ngl 0", "no usable NVIDIA GPU: every weight, the KV cache and the state in host RAM",
                    "profiles/flags/llamacpp-b11312.txt (-ngl)")


def _shape_decisions(o: Option, opts, gpu, kv_tok: int) -> list[Decision]:
    """Where llama-server runs, the context, the slots and the cache type."""
    f = facts()
    sh = o.variant.model.shape
    return [
        Decision("parallel", "one GPU" if gpu is not None else "CPU",
                 f"llama-server on GPU {gpu.index} with the experts it cannot hold in host RAM" if gpu is not None else
                 "llama-server on the CPU", "https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md"),
        Decision("max_model_len", o.context,
                 (f"--context {opts.context}" if opts.context else f"the longest step of the {opts.goal} ladder that fits")
                 + f"; --ctx-size {o.context * o.slots:,} is shared by {o.slots} slot(s) (--parallel)"
                 + (f"; the KV cache may take at most {f['max_cache_share']:.0%} of the GPU so the rest holds experts"
                    if gpu is not None else ""), f["policy_source"]),
        Decision("max_num_seqs", o.slots, (f"--concurrency {opts.concurrency}" if opts.concurrency else
                 f"{o.slots} slot(s) for the {opts.goal} goal: on these boxes decode is bound by reading weights, "
                 f"and every slot holds its own DeltaNet state and checkpoints"), f["policy_source"]),
        Decision("kv_cache_dtype", o.cache_type,
                 f"--cache-type-k/-v {o.cache_type}: {kv_tok:,} B/token over {sh.full_attention_layers} attention layers"
                 + (" (plus the MTP layer)" if o.mtp else "") + ("; f16 would not fit at this context" if o.cache_type != "f16" else ""),
                 "profiles/memory.yaml llamacpp cache_types (ggml block sizes)"),
    ]


def _flag_decisions(o: Option, settings: Settings, gpu, threads: int, threads_reason: str) -> list[Decision]:
    """The llama-server flags the plan sets (or leaves out) and why."""
    v = o.variant
    return [
        Decision("enforce_eager", None, "not a llama.cpp setting (its CUDA backend captures graphs by itself)",
                 "profiles/flags/llamacpp-b11312.txt"),
        Decision("expert_cache_size", None, f"no expert cache: --n-cpu-moe {settings.n_cpu_moe} decides once, at "
                 f"load, which layers' experts live in host RAM (see placement)", "profiles/flags/llamacpp-b11312.txt (--n-cpu-moe)"),
        Decision("flash_attn", settings.flash_attn, "flash attention on the GPU: less compute buffer, quantized V cache allowed"
                 if gpu is not None else "auto: the CPU backend decides", "profiles/flags/llamacpp-b11312.txt (-fa)"),
        Decision("threads", threads, threads_reason, "profiles/flags/llamacpp-b11312.txt (-t, --threads)"),
        Decision("load_mode", "none", "weights are read into memory, not mapped: the experts kept in host RAM stay "
                 "resident (mapped pages can be dropped under memory pressure and re-read from disk mid-generation); "
                 "mlock would pin them too but needs RLIMIT_MEMLOCK raised, which a unit or container may not allow",
                 "profiles/flags/llamacpp-b11312.txt (--load-mode: none|mmap|mlock|mmap+mlock)"),
        Decision("log_verbosity", 4, "llama-server prints its model, KV, recurrent-state and compute buffer sizes "
                 "only from verbosity 4: `qwenplan auto` sets them beside the plan's", "profiles/flags/llamacpp-b11312.txt (-lv, --verbosity)"),
        Decision("fit", "off", "the plan sets every size itself; llama-server's own --fit would change them",
                 "profiles/flags/llamacpp-b11312.txt (--fit)"),
        Decision("speculative", settings.speculative,
                 "MTP on: the GGUF carries the NextN head, 2 draft tokens" if o.mtp else
                 ("MTP off: this GGUF has no NextN head" if not v.has_mtp else "MTP off"),
                 "https://github.com/ggml-org/llama.cpp/pull/22673 (MTP: --spec-type draft-mtp)"),
    ]


def _host_ram_decision(o: Option, gpu) -> Decision:
    """What host RAM holds: the host-resident weights, checkpoints, prompt cache, and without a GPU the caches."""
    f = facts()
    s = o.split
    return Decision("host_ram", gib(o.host_total),
                    f"host-resident weights {gib(s.host)} (token embeddings{', experts' if s.experts_host else ''}), "
                    f"{f['ctx_checkpoints']} context checkpoints per slot ({gib(o.checkpoint_bytes)}), prompt cache "
                    f"--cache-ram {o.cache_ram // MiB} MiB, {gib(f['host_overhead_bytes'])} for the process"
                    + ("" if gpu is not None else f", KV cache and state {gib(o.kv_bytes + o.state_bytes)}"),
                    f["policy_source"])


def _speed_decision(o: Option, gpu, gpu_bw, host_bw: float, host_bw_source: str) -> Decision:
    """The predicted decode speed and the bandwidths it rests on."""
    f = facts()
    v, s, sh = o.variant, o.split, o.variant.model.shape
    return Decision("speed", f"~{o.tokens_per_s:.0f} tokens/s",
                    f"one sequence's decode, predicted by planner/speed.py's step roofline: {gib(s.non_expert)} of "
                    f"non-expert weights and {sh.experts_per_token}/{sh.experts} of the experts read per token"
                    + (f", GPU at {gpu_bw:.0f} GB/s" if gpu is not None else "")
                    + f", the experts in host RAM at {host_bw:.1f} GB/s x {f['host_efficiency']}"
                    + (f"; MTP yields {1 + speed.acceptance_for(v)[0] + speed.acceptance_for(v)[0] ** 2:.2f} tokens a step "
                       f"at an assumed acceptance of {speed.acceptance_for(v)[0]}" if o.mtp else ""),
                    f"{host_bw_source}; profiles/speed.yaml (vLLM's fitted constants: no llama.cpp GPU run yet)")


def _listen(plan: Plan, opts) -> None:
    """The listen address, with a warning when it is not loopback."""
    if opts.host not in ("127.0.0.1", "localhost", "::1"):
        plan.warnings.append(f"serving on {opts.host}: reachable from other machines; set LLAMA_API_KEY to require a key")
    plan.decisions.append(Decision("listen", f"{opts.host}:{opts.port}", "loopback only unless --host says otherwise",
                                   "policy: qwenplan security default"))


def _performance(o: Option, host_bw: float, host_bw_source: str) -> dict:
    """One sequence's predicted decode and the assumptions behind it."""
    f = facts()
    assumptions = [{"what": "one sequence decoding; the experts in host RAM read by the CPU at "
                             f"{host_bw:.1f} GB/s x {f['host_efficiency']}", "source": host_bw_source},
                   {"what": "vLLM's fitted step constants (no llama.cpp run on a GPU yet)", "source": "profiles/speed.yaml"}]
    if o.mtp:
        acc, acc_source = speed.acceptance_for(o.variant)
        assumptions.append({"what": f"MTP draft acceptance {acc:.0%} per token", "source": acc_source})
    return {"levels": {"c1": {"concurrency": 1, "tokens_per_s": round(o.tokens_per_s, 1), "ttft_s": None,
                              "tpot_ms": round(1000 / o.tokens_per_s, 2)}},
            "goal_concurrency": 1, "assumptions": assumptions}


def _alternatives(options, chosen: Variant) -> list[dict]:
    """The other variants that fit, each at its longest context."""
    others = {}
    for a in options:
        if a.variant.id != chosen.id and (a.variant.id not in others or a.context > others[a.variant.id].context):
            others[a.variant.id] = a
    return [{"variant": a.variant.id, "engine": ENGINE, "max_model_len": a.context, "max_num_seqs": a.slots,
             "tensor": 1, "data": 1, "kv_cache_dtype": a.cache_type,
             "tokens_per_s": round(a.tokens_per_s, 1)} for a in others.values()]


def _fill(plan, o: Option, options, rejected, hw, opts, model, eng, version, gpu, budget, gpu_bw, host_bw,
          host_bw_source, why) -> Plan:
    v = o.variant
    plan.status = "ok"
    _fill_engine(plan, eng, version, gpu, why)
    served = opts.served_name or model.id
    _fill_variant(plan, v, served)
    _fill_parallel(plan, gpu)
    threads, threads_reason = _threads(hw)
    settings = _settings(o, opts, eng, gpu, served, threads)
    kv_tok = kv_bytes_per_token(v.model.shape, o.cache_type, o.cache_type, o.mtp)
    plan.decisions.append(_placement_decision(o, gpu))
    plan.decisions.extend(_shape_decisions(o, opts, gpu, kv_tok))
    plan.decisions.extend(_flag_decisions(o, settings, gpu, threads, threads_reason))
    plan.decisions.append(_host_ram_decision(o, gpu))
    plan.decisions.append(_speed_decision(o, gpu, gpu_bw, host_bw, host_bw_source))
    _listen(plan, opts)
    plan.settings = settings.to_dict()
    plan.memory = _memory(o, gpu, budget, kv_tok)
    plan.performance = _performance(o, host_bw, host_bw_source)
    for vid, reason in rejected:
        plan.rejected.append(Rejected(vid, reason, ENGINE))
    plan.alternatives = _alternatives(options, v)
    return plan


def _memory(o: Option, gpu, budget, kv_tok) -> dict:
    s = o.split
    gpus = []
    if gpu is not None:
        gpus.append({"gpu": gpu.index, "name": gpu.name, "total_bytes": gpu.cuda_total_bytes, "budget_bytes": budget,
                     "weights_bytes": s.gpu, "kv_cache_bytes": o.kv_bytes + o.state_bytes,
                     "compute_bytes": o.compute_gpu, "used_bytes": o.gpu_total})
    return {"per_gpu_budget_bytes": budget or 0, "weights_bytes": s.gpu, "expert_cache_bytes": 0,
            "kv_bytes_per_token": kv_tok, "state_bytes_per_seq": state_bytes_per_seq(o.variant.model.shape),
            "kv_cache_bytes": o.kv_bytes + o.state_bytes, "reserve_bytes": o.compute_gpu,
            "activation_bytes": o.compute_gpu, "non_torch_bytes": facts()["gpu_overhead_bytes"] if gpu else 0,
            "cudagraph_bytes": 0, "cudagraph_in_budget": True,
            "headroom_bytes": (budget - o.gpu_total) if budget is not None else 0,
            "block_size": None, "kv_cache_tokens": kv_cells(o.context, o.slots),
            "max_concurrency_at_max_len": float(o.slots), "full_length_seqs": o.slots,
            "max_len_that_fits": o.context,
            "gpu_weights_bytes": s.gpu, "host_weights_bytes": s.host, "host_expert_bytes": s.experts_host,
            "gpu_total_bytes": o.gpu_total, "host_total_bytes": o.host_total, "compute_gpu_bytes": o.compute_gpu,
            "compute_host_bytes": o.compute_host, "recurrent_state_bytes": o.state_bytes,
            "ctx_checkpoint_bytes": o.checkpoint_bytes, "cache_ram_bytes": o.cache_ram,
            "decode_tokens_per_s": round(o.tokens_per_s, 1),
            "source": "planner/llamacpp.py; constants in profiles/memory.yaml llamacpp",
            "gpus": gpus}
