"""What qwenplan's memory model predicts for a command vLLM or SGLang actually served.

The prediction comes from the planner as it is now (planner/sizing.py, planner/sglang.py), for
the settings in the served argv (the engine's defaults where a flag is absent), on the memory
the engine itself logged (vLLM: the CUDA total; SGLang: the free memory when the weights started
loading) — so a run measured once keeps testing every later change to the memory model
(tests/test_gpu_results.py, compare.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from qwenplan.launch.engine_log import parse_memory
from qwenplan.planner import sglang as sgl
from qwenplan.planner import speed
from qwenplan.planner.catalog import find_gpu
from qwenplan.planner.engines import get_engine
from qwenplan.planner.sizing import Candidate, size, vllm_default_batched_tokens, vllm_default_max_num_seqs
from qwenplan.planner.variants import get_variant

GiB = 1 << 30
_TOTAL = re.compile(r"Free memory on device \([0-9.]+/([0-9.]+) GiB\)")


def flag(argv: list[str], name: str, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


def _flags(argv: list[str]) -> list[str]:
    """`--name=value` spelled as `--name value`."""
    out = []
    for a in argv:
        out += a.split("=", 1) if a.startswith("--") and "=" in a else [a]
    return out


def first(argv: list[str], names: tuple[str, ...], default=None):
    for n in names:
        if n in argv:
            return argv[argv.index(n) + 1]
    return default


def engine_of(argv: list[str], log_text: str = "") -> str:
    """sglang for an `sglang serve` / launch_server command or log, else vllm."""
    a = _flags(argv)
    if "--model-path" in a or "--mem-fraction-static" in a or "sglang" in " ".join(argv[:3]):
        return "sglang"
    if "Free memory on device" not in log_text and re.search(r"Load weight begin\. avail mem=", log_text):
        return "sglang"
    return "vllm"


def served_settings(argv: list[str], version: str, cuda_total: int) -> dict:
    """The served argv's settings, with vLLM's own default for every flag left out."""
    engine = get_engine("vllm")
    spec = json.loads(flag(argv, "--speculative-config", "{}")).get("num_speculative_tokens", 0)
    variant = Path(argv[0]).name      # served model folders are benchmarks/gpu/configs/<variant id>
    return {
        "variant": variant,
        "tp": int(flag(argv, "--tensor-parallel-size", flag(argv, "-tp", 1))),
        "dp": int(flag(argv, "--data-parallel-size", flag(argv, "-dp", 1))),
        "kv_dtype": "fp8" if flag(argv, "--kv-cache-dtype", "auto").startswith("fp8") else "auto",
        "spec": spec,
        "eager": "--enforce-eager" in argv,
        "max_model_len": int(flag(argv, "--max-model-len", get_variant(variant).model.native_context)),
        "max_num_seqs": int(flag(argv, "--max-num-seqs", vllm_default_max_num_seqs(cuda_total))),
        "batched_tokens": int(flag(argv, "--max-num-batched-tokens", vllm_default_batched_tokens(cuda_total)[0])),
        "gmu": float(flag(argv, "--gpu-memory-utilization",
                          engine.default("gpu_memory_utilization", version)[0] or 0.9)),
    }


def served_acceptance(argv: list[str]) -> float:
    """Per-token draft acceptance of a dummy-weight run: 0, unless vLLM's synthetic rejection
    sampler was told a rate (the first position's; later ones follow as its powers)."""
    cfg = json.loads(flag(argv, "--speculative-config", "{}"))
    rates = cfg.get("synthetic_acceptance_rates") if cfg.get("rejection_sample_method") == "synthetic" else None
    return float(rates[0]) if rates else 0.0


def predict(argv: list[str], log_text: str, gpu: str | None = None, nvlink: bool = False,
            constants: speed.Constants | None = None, engine: str | None = None,
            gpu_mem_mib: float | None = None) -> dict:
    """Predicted and reported figures for one served command and its log: memory in bytes and,
    when the GPU is named, speed under the harness's load (`tokens_per_s` and `ttft_p50_s`
    keyed c1/c32/c128; dummy weights accept no MTP draft). SGLang commands: predict_sglang."""
    if (engine or engine_of(argv, log_text)) == "sglang":
        return predict_sglang(argv, log_text, gpu=gpu, nvlink=nvlink, constants=constants, gpu_mem_mib=gpu_mem_mib)
    rep = parse_memory(log_text.splitlines())
    totals = _TOTAL.findall(log_text)
    if not totals or not rep.version:
        raise ValueError("the log has no 'Free memory on device' line or no vLLM version")
    cuda_total = int(float(totals[-1]) * GiB)
    st = served_settings(argv, rep.version, cuda_total)
    cand = Candidate(get_variant(st["variant"]), "vllm", rep.version, tp=st["tp"], dp=st["dp"],
                     kv_dtype=st["kv_dtype"], spec_tokens=st["spec"], eager=st["eager"],
                     batched_tokens=st["batched_tokens"], max_seqs=st["max_num_seqs"])
    s = size(cand, int(st["gmu"] * cuda_total), cudagraph_profiled=True)
    n = st["max_model_len"]
    predicted = {
        "weights_bytes": s.weights, "activation_bytes": s.activation, "non_torch_bytes": s.non_torch,
        "cudagraph_bytes": s.cudagraph, "reserve": s.activation + s.non_torch + s.cudagraph,
        "kv_cache_bytes": s.cache_bytes, "kv_tokens": s.kv_tokens(n), "max_concurrency": s.max_concurrency(n),
        "block_size": s.layout.block_size,
    }
    if gpu:
        machine = speed.machine_for(gpu, nvlink=nvlink)
        bursts = speed.predict(cand, machine, acceptance=served_acceptance(argv), constants=constants)
        predicted["tokens_per_s"] = {f"c{c}": b.tokens_per_s for c, b in bursts.items()}
        predicted["ttft_p50_s"] = {f"c{c}": b.ttft_s for c, b in bursts.items()}
        predicted["tpot_s"] = {f"c{c}": b.tpot_s for c, b in bursts.items()}
    reported = rep.to_dict()
    if None not in (rep.activation_bytes, rep.non_torch_bytes, rep.cudagraph_bytes):
        reported["reserve"] = rep.activation_bytes + rep.non_torch_bytes + rep.cudagraph_bytes
    return {"engine": "vllm", "settings": st, "version": rep.version, "cuda_total": cuda_total,
            "predicted": predicted, "reported": reported}


RESULTS = Path(__file__).resolve().parent / "results"


class Run:
    """One served run under results/: its command, log, GPU and measured load."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.result = json.loads((folder / "result.json").read_text())
        self.name = self.result["name"]
        self.argv = self.result.get("served_argv") or []
        self.gpus = self.result["gpus"]
        self.gpu = self.gpus[0]["name"]
        self.gpu_mem_mib = self.gpus[0].get("memory_total_mib")
        self.engine = self.result.get("engine") or engine_of(self.argv)
        load = folder / "load.json"
        levels = json.loads(load.read_text())["levels"] if load.exists() else {}
        # A level whose every request failed measured nothing (SGLang round 3: the load asked for
        # min_new_tokens, which --skip-tokenizer-init refuses): no speed, memory still counts.
        self.load = {k: v for k, v in levels.items() if v.get("completion_tokens")} or None
        # Several GPUs of one machine: NVLink where its probe shows the peers (results/<queue>/*-probe.json).
        probes = [json.loads(p.read_text()) for p in folder.parent.glob("*-probe.json")]
        self.nvlink = len(self.gpus) > 1 and any(g.get("nvlink_peers") for pr in probes for g in pr.get("gpus", []))

    @property
    def log(self) -> str:
        return (self.folder / "serve.log").read_text(errors="replace")

    @property
    def mtp(self) -> bool:
        return "--speculative-config" in self.argv or "--speculative-algorithm" in _flags(self.argv)

    @property
    def first_fp8_start(self) -> bool:
        """The machine's first FP8 start: its load ran while kernels were still being built
        (TTFT at 32 requests doubled in both such runs), so its speed is shown, not gated."""
        return "first FP8 start" in (self.result.get("note") or "")

    def predict(self, constants: speed.Constants | None = None) -> dict:
        return predict(self.argv, self.log, gpu=self.gpu, nvlink=self.nvlink, constants=constants,
                       engine=self.engine, gpu_mem_mib=self.gpu_mem_mib)


def runs(with_load: bool = True) -> list[Run]:
    out = [Run(f.parent) for f in sorted(RESULTS.glob("*/*/result.json"))]
    return [r for r in out if r.argv and (r.load or not with_load)]


# --- SGLang -----------------------------------------------------------------------------------

SGLANG_VERSION = "0.5.14"
_S = {
    "pre_load": re.compile(r"Load weight begin\. avail mem=([0-9.]+) GB"),
    "weights": re.compile(r"Load weight end\..*?mem usage=([0-9.]+) GB"),
    "kv": re.compile(r"KV Cache is allocated\. dtype: \S+, #tokens: (\d+), K size: ([0-9.]+) GB, V size: ([0-9.]+) GB"),
    "mamba": re.compile(r"Mamba Cache is allocated\. max_mamba_cache_size: (\d+), conv_state size: ([0-9.]+)GB, "
                        r"ssm_state size: ([0-9.]+)GB(?: intermediate_ssm_state_cache size: ([0-9.]+)GB "
                        r"intermediate_conv_window_cache size: ([0-9.]+)GB)?"),
    "sched": re.compile(r"max_total_num_tokens=(\d+), chunked_prefill_size=(-?\d+), max_prefill_tokens=(\d+), "
                        r"max_running_requests=(\d+), context_len=(\d+)"),
    "graph": re.compile(r"Capture .*? end\. elapsed=[0-9.]+ s, mem usage=([0-9.]+) GB"),
    "fraction": re.compile(r"server_args=ServerArgs\(.*?\bmem_fraction_static=([0-9.]+)"),
    "version": re.compile(r"sglang(?:==|\s+version\s+|/)v?(\d+\.\d+\.\d+)"),
}


def sglang_log(log_text: str) -> dict:
    """SGLang 0.5.14's memory lines, bytes (GB in its log is GiB: 1 << 30). A minimal reader for
    the gate; launch/engine_log.parse_memory fills the same MemoryReport fields when it knows
    the lines. The first 'KV Cache is allocated' line is the target's (the MTP draft logs its
    one-layer pool after it); the weights are what every 'Load weight end' took (target + draft);
    the graphs, every capture."""
    out: dict = {}
    m = _S["pre_load"].search(log_text)
    if m:
        out["pre_load_bytes"] = int(float(m.group(1)) * GiB)
    loads = [float(x) for x in _S["weights"].findall(log_text)]
    if loads:
        out["weights_bytes"] = int(sum(loads) * GiB)
        out["weights_loads"] = len(loads)
    kv = _S["kv"].findall(log_text)
    if kv:
        out["kv_tokens"] = int(kv[0][0])
        out["kv_cache_bytes"] = int((float(kv[0][1]) + float(kv[0][2])) * GiB)
        if len(kv) > 1:
            out["draft_kv_bytes"] = int(sum(float(a) + float(b) for _, a, b in kv[1:]) * GiB)
    m = _S["mamba"].search(log_text)
    if m:
        out["mamba_cache_size"] = int(m.group(1))
        out["mamba_cache_bytes"] = int((float(m.group(2)) + float(m.group(3))) * GiB)
        if m.group(4):
            out["intermediate_bytes"] = int((float(m.group(4)) + float(m.group(5))) * GiB)
    m = ([None] + list(_S["sched"].finditer(log_text)))[-1]      # the last start's scheduler line
    if m:
        out["kv_tokens"] = int(m.group(1))
        out["max_running_requests"], out["context_len"] = int(m.group(4)), int(m.group(5))
    graphs = [float(x) for x in _S["graph"].findall(log_text)]
    if graphs:
        out["cudagraph_bytes"] = int(sum(graphs) * GiB)
    m = _S["fraction"].search(log_text)
    if m:
        out["mem_fraction_static"] = float(m.group(1))
    m = _S["version"].search(log_text)
    if m:
        out["version"] = m.group(1)
    return out


def gpu_memory_mib(gpu: str | None, mib: float | None = None) -> float | None:
    """nvidia-smi's memory.total (MiB), which SGLang's defaults read: the run's own record, else
    the GPU profile's."""
    if mib:
        return float(mib)
    g = find_gpu(gpu) if gpu else None
    return float(g.memory_mib) if g else None


def sglang_settings(argv: list[str], gpu_mem_mib: float | None) -> dict:
    """The served SGLang argv's settings, with SGLang 0.5.14's own default for every flag left out."""
    a = _flags(argv)
    model = first(a, ("--model-path", "--model"), next((x for x in a if not x.startswith("-") and "/" in x), ""))
    variant = Path(model).name
    tp = int(first(a, ("--tp-size", "--tp", "--tensor-parallel-size"), 1))
    dp = int(first(a, ("--dp-size", "--dp", "--data-parallel-size"), 1))
    pp = int(first(a, ("--pp-size", "--pipeline-parallel-size"), 1))
    algo = first(a, ("--speculative-algorithm", "--speculative-algo"))
    steps = int(first(a, ("--speculative-num-steps",), 0) or 0) if algo else 0
    topk = int(first(a, ("--speculative-eagle-topk",), 1) or 1)
    draft = int(first(a, ("--speculative-num-draft-tokens",), steps + 1)) if algo else 0
    if algo and topk == 1:
        draft = steps + 1          # speculative_hook: num_draft_tokens = steps + 1 when topk == 1
    chunk = int(first(a, ("--chunked-prefill-size",), 0) or 0) or (sgl.default_chunked_prefill(gpu_mem_mib) if gpu_mem_mib else 8192)
    max_bs = first(a, ("--cuda-graph-max-bs",))
    fraction = first(a, ("--mem-fraction-static",))
    fraction_source = "argv"
    if fraction is None:
        if gpu_mem_mib is None:
            raise ValueError("no --mem-fraction-static and no GPU memory total to derive SGLang's default from")
        fraction = sgl.default_mem_fraction_static(gpu_mem_mib, chunk, int(max_bs) if max_bs else None, tp, pp,
                                                   vision="--language-only" not in a)
        fraction_source = f"SGLang's default for {gpu_mem_mib:,.0f} MiB"
    requests = first(a, ("--max-running-requests",))
    kv = first(a, ("--kv-cache-dtype",), "auto")
    return {
        "engine": "sglang", "variant": variant, "tp": tp, "dp": dp, "pp": pp,
        "kv_dtype": "fp8" if str(kv).startswith("fp8") else "auto",
        "spec": steps, "draft_tokens": draft,
        "eager": "--disable-cuda-graph" in a,
        "max_model_len": int(first(a, ("--context-length",), get_variant(variant).model.native_context)),
        "max_num_seqs": int(requests) if requests is not None else None,
        "batched_tokens": chunk,
        "mem_fraction_static": float(fraction), "mem_fraction_source": fraction_source,
        "strategy": first(a, ("--mamba-radix-cache-strategy", "--mamba-scheduler-strategy"), "auto"),
        "overlap": "--disable-overlap-schedule" not in a,
        "radix_cache": "--disable-radix-cache" not in a,
        "mamba_full_memory_ratio": float(first(a, ("--mamba-full-memory-ratio",), sgl.k()["mamba_full_memory_ratio"])),
        "max_mamba_cache_size": int(x) if (x := first(a, ("--max-mamba-cache-size",))) else None,
        "page_size": int(first(a, ("--page-size",), sgl.k()["page_size"])),
        "max_total_tokens": int(x) if (x := first(a, ("--max-total-tokens",))) else None,
        "ssm_dtype": first(a, ("--mamba-ssm-dtype",)),
    }


def predict_sglang(argv: list[str], log_text: str, gpu: str | None = None, nvlink: bool = False,
                   constants: speed.Constants | None = None, gpu_mem_mib: float | None = None) -> dict:
    """predict() for an SGLang command: KV tokens, mamba slots, max running requests, weights,
    KV and mamba GiB by SGLang 0.5.14's rules, on the free memory its log states before loading."""
    seen = sglang_log(log_text)
    rep = parse_memory(log_text.splitlines()).to_dict()
    rep.pop("engine", None)
    # The fallback reader fills what launch/engine_log does not know (yet); the weights are
    # always target + draft, as predicted.
    reported = {**seen, **{k: v for k, v in rep.items() if v is not None and k not in ("weights_bytes", "version")}}
    for key in ("weights_bytes", "kv_tokens", "kv_cache_bytes", "mamba_cache_size", "mamba_cache_bytes"):
        if key in seen:
            reported[key] = seen[key]
    mib = gpu_memory_mib(gpu, gpu_mem_mib)
    st = sglang_settings(argv, mib)
    version = seen.get("version") or SGLANG_VERSION
    cand = Candidate(get_variant(st["variant"]), "sglang", version, tp=st["tp"], pp=st["pp"], dp=st["dp"],
                     kv_dtype=st["kv_dtype"], spec_tokens=st["spec"], eager=st["eager"],
                     batched_tokens=st["batched_tokens"], max_seqs=st["max_num_seqs"] or 0)
    pre = seen.get("pre_load_bytes")
    knobs = sgl.Knobs(mem_fraction_static=st["mem_fraction_static"], pre_load_bytes=pre, context_len=st["max_model_len"],
                      max_running_requests=st["max_num_seqs"], requests_from_candidate=False,
                      strategy=st["strategy"], overlap=st["overlap"], radix_cache=st["radix_cache"],
                      mamba_full_memory_ratio=st["mamba_full_memory_ratio"],
                      max_mamba_cache_size=st["max_mamba_cache_size"], page_size=st["page_size"],
                      max_total_tokens=st["max_total_tokens"], ssm_dtype=st["ssm_dtype"])
    if pre is None and not mib:
        raise ValueError("the SGLang log has no 'Load weight begin. avail mem=' line and the GPU's memory is unknown")
    cuda_total = None if pre is not None else int(mib * (1 << 20))
    s = size(cand, 0, True, cuda_total=cuda_total, knobs=knobs)
    p = s.sglang
    predicted = {
        "weights_bytes": s.weights, "pre_load_bytes": p.pre_load_bytes, "mem_fraction_static": p.mem_fraction_static,
        "pool_bytes": p.pool_bytes, "kv_tokens": p.kv_tokens, "kv_cache_bytes": p.kv_bytes,
        "mamba_cache_size": p.mamba_slots, "mamba_cache_bytes": p.mamba_bytes, "intermediate_bytes": p.intermediate_bytes,
        "draft_kv_bytes": p.draft_kv_bytes, "max_running_requests": p.max_running_requests,
        "context_len": st["max_model_len"], "cudagraph_bytes": s.cudagraph, "slots_per_request": p.slots_per_request,
    }
    if gpu:
        run_cand = Candidate(cand.variant, "sglang", version, tp=st["tp"], pp=st["pp"], dp=st["dp"],
                             kv_dtype=st["kv_dtype"], spec_tokens=st["spec"], eager=st["eager"],
                             batched_tokens=st["batched_tokens"], max_seqs=max(1, p.max_running_requests))
        machine = speed.machine_for(gpu, nvlink=nvlink)
        bursts = speed.predict(run_cand, machine, acceptance=0.0, constants=constants)
        predicted["tokens_per_s"] = {f"c{c}": b.tokens_per_s for c, b in bursts.items()}
        predicted["ttft_p50_s"] = {f"c{c}": b.ttft_s for c, b in bursts.items()}
        predicted["tpot_s"] = {f"c{c}": b.tpot_s for c, b in bursts.items()}
    return {"engine": "sglang", "settings": st, "version": version, "cuda_total": cuda_total, "candidate": cand,
            "predicted": predicted, "reported": reported}
