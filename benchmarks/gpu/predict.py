"""What qwenplan's memory model predicts for a command vLLM actually served.

The prediction comes from the planner as it is now (planner/sizing.py), for the settings in the
served argv (vLLM's defaults where a flag is absent), on the GPU total vLLM itself logged — so a
run measured once keeps testing every later change to the memory model
(tests/test_gpu_results.py, compare.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from qwenplan.launch.engine_log import parse_memory
from qwenplan.planner import speed
from qwenplan.planner.engines import get_engine
from qwenplan.planner.sizing import Candidate, size, vllm_default_batched_tokens, vllm_default_max_num_seqs
from qwenplan.planner.variants import get_variant

GiB = 1 << 30
_TOTAL = re.compile(r"Free memory on device \([0-9.]+/([0-9.]+) GiB\)")


def flag(argv: list[str], name: str, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


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
            constants: speed.Constants | None = None) -> dict:
    """Predicted and reported figures for one served command and its log: memory in bytes and,
    when the GPU is named, speed under the harness's load (`tokens_per_s` and `ttft_p50_s`
    keyed c1/c32/c128; dummy weights accept no MTP draft)."""
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
    return {"settings": st, "version": rep.version, "cuda_total": cuda_total,
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
        load = folder / "load.json"
        self.load = json.loads(load.read_text())["levels"] if load.exists() else None
        # Several GPUs of one machine: NVLink where its probe shows the peers (results/<queue>/*-probe.json).
        probes = [json.loads(p.read_text()) for p in folder.parent.glob("*-probe.json")]
        self.nvlink = len(self.gpus) > 1 and any(g.get("nvlink_peers") for pr in probes for g in pr.get("gpus", []))

    @property
    def log(self) -> str:
        return (self.folder / "serve.log").read_text(errors="replace")

    @property
    def mtp(self) -> bool:
        return "--speculative-config" in self.argv

    @property
    def first_fp8_start(self) -> bool:
        """The machine's first FP8 start: its load ran while kernels were still being built
        (TTFT at 32 requests doubled in both such runs), so its speed is shown, not gated."""
        return "first FP8 start" in (self.result.get("note") or "")

    def predict(self, constants: speed.Constants | None = None) -> dict:
        return predict(self.argv, self.log, gpu=self.gpu, nvlink=self.nvlink, constants=constants)


def runs(with_load: bool = True) -> list[Run]:
    out = [Run(f.parent) for f in sorted(RESULTS.glob("*/*/result.json"))]
    return [r for r in out if r.argv and (r.load or not with_load)]
