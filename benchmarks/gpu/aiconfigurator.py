"""NVIDIA AIConfigurator's predictions for every logged vLLM run, the peer qwenplan's speed model
must beat (issue 14).

For each run under benchmarks/gpu/results/ with a load.json, the served argv and GPU give the
`aiconfigurator cli estimate` arguments: system, TP / attention-DP / MoE-TP / MoE-EP, the served
config folder (benchmarks/gpu/configs/<variant>), KV-cache dtype, ISL 1,024, OSL 256, and the batch
size per load level (the level's concurrency, split over DP ranks, capped at the run's
max_num_seqs). AIConfigurator is an 850 MB environment and never a qwenplan dependency: this
script is standard library only and runs the executable named by $AIC (default `aiconfigurator`):

    python3 -m venv /tmp/aic-venv && /tmp/aic-venv/bin/pip install 'aiconfigurator==0.12.*'
    AIC=/tmp/aic-venv/bin/aiconfigurator python3 benchmarks/gpu/aiconfigurator.py [--all]

It computes only the runs missing from benchmarks/gpu/aiconfigurator.json (--all: every run),
writes the file whole, and prints measured tokens/s beside the prediction.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "results"
CONFIGS = HERE / "configs"
OUT = HERE / "aiconfigurator.json"
GiB = 1 << 30
ISL, OSL = 1024, 256
LEVELS = {"c1": 1, "c32": 32, "c128": 128}      # benchmarks/gpu/load.py's concurrency levels
TEMPLATE = ["{aic}", "cli", "estimate", "--model-path", "benchmarks/gpu/configs/{variant}",
            "--system", "{system}", "--backend", "vllm", "--isl", str(ISL), "--osl", str(OSL),
            "--batch-size", "{batch_per_dp_rank}", "--tp-size", "{tp}", "--attention-dp-size", "{dp}",
            "--moe-tp-size", "{moe_tp}", "--moe-ep-size", "{moe_ep}",
            "--kvcache-quant-mode", "{kv}", "--fmha-quant-mode", "bfloat16"]
# AIConfigurator's system names for the GPUs the runs logged (its systems/*.yaml)
SYSTEMS = (("H200", "h200_sxm"), ("H100 80GB HBM3", "h100_sxm"), ("H100 PCIE", "h100_pcie"))
_TOTAL = re.compile(r"Free memory on device \([0-9.]+/([0-9.]+) GiB\)")
MTP = "as_served_mtp"
_FIELDS = {"tokens_per_s": r"tokens/s:", "tokens_per_s_per_user": r"tokens/s/user:",
           "ttft_ms": r"TTFT:", "tpot_ms": r"TPOT:", "concurrency": r"Concurrency:"}


class Unsupported(Exception):
    """A run AIConfigurator cannot be asked about, with the reason."""


def flag(argv: list[str], name: str, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


def vllm_defaults() -> dict:
    """vLLM's default max_num_seqs rule, read from profiles/memory.yaml (flat `key: value` lines,
    so no YAML parser is needed): 1,024 on GPUs of 70 GiB or more except A100, else 256."""
    text = (ROOT / "profiles" / "memory.yaml").read_text()
    keys = ("large_gpu_bytes", "default_max_num_seqs_large_gpu", "default_max_num_seqs_small_gpu")
    return {k: int(re.search(rf"^\s*{k}:\s*(\d+)", text, re.MULTILINE).group(1)) for k in keys}


def gpu_total_bytes(run: Path, result: dict) -> int:
    """The GPU total vLLM logged (as predict.py uses), else nvidia-smi's from result.json."""
    log = run / "serve.log"
    totals = _TOTAL.findall(log.read_text(errors="replace")) if log.exists() else []
    if totals:
        return int(float(totals[-1]) * GiB)
    return int(result["gpus"][0]["memory_total_mib"]) << 20


def settings(run: Path) -> dict:
    """What the estimate needs from one run's served argv and GPU."""
    result = json.loads((run / "result.json").read_text())
    argv = result.get("served_argv")
    if not argv:
        raise Unsupported("result.json has no served_argv")
    gpu = result["gpus"][0]["name"]
    system = next((s for key, s in SYSTEMS if key.upper() in gpu.upper()), None)
    if system is None:
        raise Unsupported(f"no AIConfigurator system for GPU {gpu!r}")
    variant = Path(argv[0]).name
    if not (CONFIGS / variant / "config.json").exists():
        raise Unsupported(f"served model {argv[0]!r} is not a folder under benchmarks/gpu/configs")
    tp = int(flag(argv, "--tensor-parallel-size", flag(argv, "-tp", 1)))
    dp = int(flag(argv, "--data-parallel-size", flag(argv, "-dp", 1)))
    # vLLM's MoE layers span TP x DP ranks: tensor-parallel across them, or expert-parallel with
    # --enable-expert-parallel (vllm/model_executor/layers/fused_moe/config.py FusedMoEParallelConfig)
    moe = tp * dp
    ep = "--enable-expert-parallel" in argv or "-ep" in argv
    d = vllm_defaults()
    large = (gpu_total_bytes(run, result) >= d["large_gpu_bytes"] and "A100" not in gpu.upper())
    default_seqs = d["default_max_num_seqs_large_gpu" if large else "default_max_num_seqs_small_gpu"]
    spec = json.loads(flag(argv, "--speculative-config", "{}") or "{}")
    return {
        "gpu": gpu, "system": system, "variant": variant, "tp": tp, "dp": dp,
        "moe_tp": 1 if ep else moe, "moe_ep": moe if ep else 1,
        "kv": "fp8" if flag(argv, "--kv-cache-dtype", "auto").startswith("fp8") else "bfloat16",
        "max_num_seqs": int(flag(argv, "--max-num-seqs", default_seqs)),
        "max_num_seqs_source": "--max-num-seqs" if "--max-num-seqs" in argv else "vLLM default",
        "mtp_tokens": int(spec.get("num_speculative_tokens", 0)),
        "mtp_accepted": accepted_drafts(spec),
    }


def accepted_drafts(spec: dict) -> float:
    """Mean draft tokens accepted per verify step as served: vLLM's synthetic rejection sampler
    accepts at the rates the config names (the sum of its per-position unconditional rates, or
    synthetic_acceptance_length - 1); otherwise dummy weights accept none (every logged
    SpecDecoding line reads 0.0 %)."""
    if spec.get("rejection_sample_method") != "synthetic":
        return 0.0
    if spec.get("synthetic_acceptance_rates") is not None:
        return round(sum(spec["synthetic_acceptance_rates"]), 4)
    return round(float(spec["synthetic_acceptance_length"]) - 1, 4)


def command(aic: str, st: dict, concurrency: int, mtp: bool = False) -> tuple[list[str], int]:
    """The estimate's argv for one load level, and the batch per DP rank it asks for; with mtp,
    MTP as the run served it (its draft tokens, and the drafts its sampler accepted)."""
    per_rank = min(-(-concurrency // st["dp"]), st["max_num_seqs"])   # vLLM caps each DP engine
    values = dict(st, aic=aic, batch_per_dp_rank=per_rank)
    cmd = [a.format(**values) for a in TEMPLATE]
    if mtp:
        cmd += ["--nextn", str(st["mtp_tokens"]), "--nextn-accepted", str(st["mtp_accepted"])]
    return cmd, per_rank


def parse(text: str) -> dict:
    """The figures in AIConfigurator's 'Performance Estimate' box."""
    out = {}
    for key, label in _FIELDS.items():
        m = re.search(rf"^\s*{re.escape(label)}\s*([0-9][0-9,.]*)", text, re.MULTILINE)
        if not m:
            raise ValueError(f"no {label!r} line in aiconfigurator's output")
        out[key] = float(m.group(1).replace(",", ""))
    db = re.search(r"^\s*Backend:\s*vllm \(([^)]+)\)", text, re.MULTILINE)
    out["perf_database"] = f"vllm {db.group(1)}" if db else None
    return out


def error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"error|exception|not supported|unsupported", ln, re.IGNORECASE)]
    return (errors or lines or ["no output"])[-1][:400]


_memo: dict[tuple, subprocess.CompletedProcess] = {}     # identical estimates run once a pass


def run_aic(cmd: list[str]) -> subprocess.CompletedProcess:
    if tuple(cmd) not in _memo:
        _memo[tuple(cmd)] = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=900)
    return _memo[tuple(cmd)]


def estimate(aic: str, st: dict, mtp: bool = False) -> dict:
    cells = {}
    for level, c in LEVELS.items():
        cmd, per_rank = command(aic, st, c, mtp)
        proc = run_aic(cmd)
        text = proc.stdout + "\n" + proc.stderr
        if proc.returncode != 0:
            raise RuntimeError(f"{level}: exit {proc.returncode}: {error_line(text)}")
        est = parse(text)
        # AIConfigurator runs `batch` requests on every attention-DP rank; at a level with fewer
        # requests than that (c1 on DP 2) only c of them exist, each at the per-user speed.
        tokens = est["tokens_per_s"]
        if est["concurrency"] > c:
            tokens = est["tokens_per_s_per_user"] * c
        cells[level] = {
            "tokens_per_s": round(tokens, 1), "ttft_s": round(est["ttft_ms"] / 1000, 4),
            "tpot_ms": est["tpot_ms"], "batch_size": per_rank,
            "concurrency_modelled": int(est["concurrency"]), "perf_database": est["perf_database"],
            "cmd": ["aiconfigurator"] + cmd[1:],
        }
    return cells


def runs() -> list[Path]:
    return sorted(p.parent for p in RESULTS.glob("*/*/load.json"))


def measured(run: Path) -> dict:
    return json.loads((run / "load.json").read_text())["levels"]


def write(data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=OUT.parent, prefix=".aiconfigurator.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
    os.chmod(tmp, 0o644)        # mkstemp makes it 0600; this is a committed result
    os.replace(tmp, OUT)


def errors(data: dict) -> list[dict]:
    """One row per logged cell: measured against AIConfigurator's prediction(s)."""
    rows = []
    for run in runs():
        rec = data["runs"].get(run.name)
        if not rec:
            continue
        meas = measured(run)
        for level in LEVELS:
            m = meas[level]["tok_per_s"]
            row = {"run": run.name, "c": level, "measured": m, "aic": rec[level]["tokens_per_s"],
                   "ttft_p50_s": meas[level]["ttft_p50_s"], "aic_ttft_s": rec[level]["ttft_s"],
                   "mtp": bool(rec["mtp_tokens"]), "aic_mtp": rec.get(MTP, {}).get(level, {}).get("tokens_per_s")}
            row["error"] = 100 * (row["aic"] - m) / m
            row["error_mtp"] = None if row["aic_mtp"] is None else 100 * (row["aic_mtp"] - m) / m
            rows.append(row)
    return rows


def table(data: dict) -> None:
    rows = errors(data)
    print(f"{'run':36} {'c':>4} {'measured':>9} {'AIC':>9} {'error':>7} {'AIC MTP':>9} {'error':>7}"
          f" {'TTFT p50':>9} {'AIC TTFT':>9}")
    for r in rows:
        mtp = (f"{r['aic_mtp']:9.1f} {r['error_mtp']:+6.1f}%" if r["aic_mtp"] is not None
               else f"{'':9} {'':7}")
        print(f"{r['run'] + (' (MTP)' if r['mtp'] else ''):36} {r['c']:>4} {r['measured']:9.1f} "
              f"{r['aic']:9.1f} {r['error']:+6.1f}% {mtp} {r['ttft_p50_s']:8.3f}s {r['aic_ttft_s']:8.3f}s")

    def med(xs):
        return f"{statistics.median(xs):.1f} % over {len(xs)} cells" if xs else "no cells"
    print("median |error| of AIConfigurator's tokens/s (MTP runs predicted without MTP):")
    print("  all cells:     " + med([abs(r["error"]) for r in rows]))
    print("  non-MTP cells: " + med([abs(r["error"]) for r in rows if not r["mtp"]]))
    print("  MTP cells predicted as served (AIC MTP column): "
          + med([abs(r["error_mtp"]) for r in rows if r["error_mtp"] is not None]))
    for name, why in data["failures"].items():
        print(f"not estimated: {name}: {why}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--all", action="store_true", help="recompute every run, not only new ones")
    args = ap.parse_args()
    aic = os.environ.get("AIC", "aiconfigurator")
    try:
        version = subprocess.run([aic, "version"], check=False, capture_output=True, text=True, timeout=300)
    except OSError as e:
        print(f"error: cannot run AIConfigurator ({aic}): {e}; set AIC to its executable", file=sys.stderr)
        return 2
    data = {"runs": {}, "failures": {}}
    if OUT.exists() and not args.all:
        data = json.loads(OUT.read_text())
    data["version"] = version.stdout.strip() or error_line(version.stderr)
    data["command_template"] = ["aiconfigurator"] + TEMPLATE[1:]
    data["notes"] = (
        "tokens_per_s is AIConfigurator's system tokens/s (all concurrent requests), comparable "
        "to load.json's tok_per_s; batch_size is per attention-DP rank (the level's concurrency "
        "split over DP ranks, capped at max_num_seqs); MTP runs (mtp_tokens > 0) are predicted "
        "without MTP in c1/c32/c128 and, in " + MTP + ", as served: --nextn mtp_tokens "
        "--nextn-accepted mtp_accepted (0 with dummy weights; the synthetic sampler's rates "
        "where the run set them).")
    for run in runs():
        rec = data["runs"].get(run.name)
        if run.name in data["failures"] or (rec and (MTP in rec or not rec["mtp_tokens"])):
            continue
        print(f"estimating {run.name} ...", file=sys.stderr, flush=True)
        try:
            st = settings(run)
            if rec is None:
                rec = dict(st, dir=str(run.relative_to(ROOT)), **estimate(aic, st))
            rec.update(st)      # a record from an older version of this script lacks new fields
            if rec["mtp_tokens"]:
                rec[MTP] = estimate(aic, rec, mtp=True)
            data["runs"][run.name] = rec
        except (Unsupported, RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
            data["failures"][run.name] = str(e)
        write(data)      # after every run, so an interrupted pass keeps what it computed
    write(data)
    table(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
