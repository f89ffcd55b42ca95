#!/usr/bin/env python3
"""Serve each job of a queue with real vLLM on dummy weights, record what it reports, run the load.

Runs on the GPU machine (Python 3.12, the engine importable through PYTHONPATH), one job at a
time, as a detached process so that it outlives the device tool's calls:

    python3 benchmarks/gpu/runner.py --jobs benchmarks/gpu/jobs/h100.json --results /tmp/gpu-results/h100

The job file is re-read before each job, so jobs can be added or reordered while it runs; a job
whose folder already holds result.json (or `started`, from a runner that died) is not run again.

A job is either a plan (`"plan": "benchmarks/gpu/plans/h100/default.json"`: its command.argv and
command.env, exactly as qwenplan rendered them) or a baseline (`"argv": ["vllm", "serve", ...]`:
the command a user copies). Only what dummy serving needs is changed (DUMMY_FLAGS, DUMMY_ENV,
the model path, and CUDA_VISIBLE_DEVICES where a what-if plan names GPUs of another box); every
change is written to the job's result.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CONFIGS = HERE / "configs"

# What serving random weights of the real shapes, without tokenizer files and without FlashInfer,
# needs on top of a real command (shared/gpu-truth/README.md says why each is there).
DUMMY_FLAGS = [
    ("--load-format", "dummy", "random weights of the real shapes: no checkpoint on the machine"),
    ("--skip-tokenizer-init", None, "no tokenizer files: prompts are token ids"),
    ("--gdn-prefill-backend", "triton", "FlashInfer is not installed (Hopper's default DeltaNet prefill is FlashInfer's)"),
]
# What --skip-tokenizer-init leaves out (the parsers) is profiles/engines.yaml's
# `without_tokenizer`, the rule `qwenplan verify` renders with: see dropped_without_tokenizer.
DUMMY_ENV = {
    "VLLM_USE_FLASHINFER_SAMPLER": "0",   # FlashInfer is not installed
    "PYTHONUNBUFFERED": "1",
    # the device machines' rule for several GPUs: NVLink multicast stays off
    "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
}

EXTRA_RULES = {
    "cudagraph_estimate_gib": re.compile(r"Estimated CUDA graph memory: ([0-9.]+) GiB"),
    "cudagraph_pool_actual_gib": re.compile(r"CUDA graph pool memory: ([0-9.]+) GiB \(actual\)"),
    "init_engine_seconds": re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([0-9.]+) s"),
    "graph_capture_seconds": re.compile(r"Graph capturing finished in ([0-9.]+) secs"),
    "graph_capture_gib": re.compile(r"Graph capturing finished in [0-9.]+ secs, took ([0-9.\-]+) GiB"),
    "torch_compile_seconds": re.compile(r"torch\.compile took ([0-9.]+) s in total"),
    "profile_seconds": re.compile(r"Initial profiling/warmup run took ([0-9.]+) s"),
    "model_load_seconds": re.compile(r"Model loading took [0-9.]+ GiB memory and ([0-9.]+) seconds"),
    "mamba_padding_pct": re.compile(r"Padding mamba page size by ([0-9.]+)%"),
    "max_num_batched_tokens": re.compile(r"max_num_batched_tokens=(\d+)"),
    "free_on_start_gib": re.compile(r"Free memory on device \(([0-9.]+)/"),
    "total_gib": re.compile(r"Free memory on device \([0-9.]+/([0-9.]+) GiB\)"),
    "spec_mean_acceptance_length": re.compile(r"Mean acceptance length: ([0-9.]+)"),
    "spec_draft_acceptance_rate": re.compile(r"Draft acceptance rate: ([0-9.]+)%"),
    "moe_backend": re.compile(r"Using (\S+) (?:Fp8 )?MoE backend"),
    "attention_backend": re.compile(r"Using (\S+) attention backend"),
}


def log(msg: str) -> None:
    print(f"[runner {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def engine_log_module():
    spec = importlib.util.spec_from_file_location("qp_engine_log", REPO / "launch" / "engine_log.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["qp_engine_log"] = mod   # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def qwenplan_render():
    """launch/render.py of this repository, as the package pyproject.toml maps it (qwenplan.planner
    -> planner/, ...), whether or not qwenplan is installed where the runner runs."""
    try:
        from qwenplan.launch import render
    except ImportError:
        import types

        sys.modules["qwenplan"] = pkg = types.ModuleType("qwenplan")
        pkg.__path__ = []
        for sub in ("planner", "profiles", "launch"):
            spec = importlib.util.spec_from_file_location(f"qwenplan.{sub}", REPO / sub / "__init__.py",
                                                          submodule_search_locations=[str(REPO / sub)])
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
        from qwenplan.launch import render
    return render


def engine_version(job: dict, plan: dict | None) -> str:
    """The vLLM release the job is served with: the plan's, the job's, the installed one."""
    if plan:
        return plan["engine"]["version"]
    if job.get("engine_version"):
        return job["engine_version"]
    from importlib import metadata

    try:
        return metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return qwenplan_render().get_engine("vllm").default_version


def dropped_without_tokenizer(version: str) -> tuple[list[tuple[str, int]], str]:
    """(flags with how many values each takes, why): profiles/engines.yaml `without_tokenizer`."""
    render = qwenplan_render()
    rule = render.get_engine("vllm").without_tokenizer(version)
    return render.tokenizer_flags("vllm", version), (rule or {}).get("reason", "")


def flag_value(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def has_flag(argv: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def model_kind(job: dict, plan: dict | None, argv: list[str]) -> str:
    if job.get("model"):
        return job["model"]
    text = json.dumps((plan or {}).get("variant") or {}) + " " + " ".join(argv[:3])
    if re.search(r"fp8", text, re.I):
        return "fp8"
    if plan and (plan.get("variant") or {}).get("format") not in (None, "bf16", "bfloat16"):
        raise ValueError(f"no dummy config for variant format {(plan.get('variant') or {}).get('format')!r}")
    return "bf16"


def served_command(job: dict, plan: dict | None) -> tuple[list[str], dict[str, str], list[dict]]:
    """(argv to exec, env additions, the changes made to the real command and why)."""
    argv = list(plan["command"]["argv"] if plan else job["argv"])
    env = dict((plan["command"].get("env") if plan else job.get("env")) or {})
    changes: list[dict] = []
    if argv[:2] != ["vllm", "serve"]:
        raise ValueError(f"not a vLLM serve command: {argv[:3]}")
    rest = argv[2:]
    kind = model_kind(job, plan, argv)
    model_dir = str(CONFIGS / kind)
    if rest and not rest[0].startswith("-"):
        changes.append({"what": f"model {rest[0]} -> {model_dir}", "why": "config.json only (dummy weights)"})
        rest[0] = model_dir
    elif has_flag(rest, "--model"):
        i = next(i for i, a in enumerate(rest) if a == "--model" or a.startswith("--model="))
        old = flag_value(rest, "--model")
        if rest[i] == "--model":
            rest[i + 1] = model_dir
        else:
            rest[i] = f"--model={model_dir}"
        changes.append({"what": f"model {old} -> {model_dir}", "why": "config.json only (dummy weights)"})
    drop, why = dropped_without_tokenizer(engine_version(job, plan))
    for flag, nval in drop:
        while has_flag(rest, flag):
            i = next(i for i, a in enumerate(rest) if a == flag or a.startswith(flag + "="))
            n = 1 + (nval if rest[i] == flag else 0)
            changes.append({"what": f"drop {' '.join(rest[i:i + n])}", "why": why})
            del rest[i:i + n]
    for flag, value, why in DUMMY_FLAGS + [tuple(x) for x in job.get("dummy_flags", [])]:
        if has_flag(rest, flag):
            continue
        rest += [flag] + ([value] if value is not None else [])
        changes.append({"what": f"add {flag}{' ' + value if value else ''}", "why": why})
    rates = job.get("synthetic_acceptance")
    spec = flag_value(rest, "--speculative-config")
    if rates and spec:
        # Random weights accept no draft token; vLLM's synthetic rejection sampler accepts at
        # given per-position rates instead (vllm/config/speculative.py rejection_sample_method).
        i = rest.index("--speculative-config")
        cfg = {**json.loads(spec), "rejection_sample_method": "synthetic", "synthetic_acceptance_rates": rates}
        rest[i + 1] = json.dumps(cfg, separators=(",", ":"))
        changes.append({"what": f"speculative config + synthetic acceptance {rates}",
                        "why": "dummy weights accept no draft; the synthetic sampler accepts at the plan's assumed rate"})
    if "CUDA_VISIBLE_DEVICES" in env:
        n = len([x for x in env["CUDA_VISIBLE_DEVICES"].split(",") if x.strip()])
        new = ",".join(str(i) for i in range(n))
        if env["CUDA_VISIBLE_DEVICES"] != new:
            changes.append({"what": f"CUDA_VISIBLE_DEVICES {env['CUDA_VISIBLE_DEVICES']} -> {new}",
                            "why": "the plan is a what-if for this GPU model; this machine's GPUs are 0..n-1"})
            env["CUDA_VISIBLE_DEVICES"] = new
    for k, v in DUMMY_ENV.items():
        if k not in env:
            env[k] = v
    changes.append({"what": "env VLLM_USE_FLASHINFER_SAMPLER=0", "why": "FlashInfer is not installed"})
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"] + rest, env, changes


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001
        return False


def gpu_used_mib() -> list[int]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
        return [int(x) for x in out.split()]
    except Exception:  # noqa: BLE001
        return []


def gpu_info() -> list[dict]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20).stdout
        rows = [dict(zip(("index", "name", "memory_total_mib", "driver"), [c.strip() for c in line.split(",")]))
                for line in out.strip().splitlines()]
        return rows
    except Exception:  # noqa: BLE001
        return []


def wait_gpu_free(limit_s: float = 60) -> None:
    t = time.time()
    while time.time() - t < limit_s:
        used = gpu_used_mib()
        if not used or max(used) < 1500:
            return
        time.sleep(2)


def extras(lines: list[str]) -> dict:
    out: dict = {}
    for line in lines:
        for key, rx in EXTRA_RULES.items():
            m = rx.search(line)
            if m:
                v = m.group(1)
                try:
                    out[key] = float(v) if "." in v else int(v)
                except ValueError:
                    out[key] = v
    return out


def run_job(job: dict, results: Path, el) -> dict:
    name = job["name"]
    d = results / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "started").write_text(str(job.get("attempt", 1)))
    plan = json.loads((REPO / job["plan"]).read_text()) if job.get("plan") else None
    res: dict = {"name": name, "attempt": job.get("attempt", 1), "kind": job.get("kind", "plan" if plan else "baseline"), "plan": job.get("plan"),
                 "note": job.get("note"), "gpus": gpu_info()}
    try:
        cmd, env_add, changes = served_command(job, plan)
    except Exception as e:  # noqa: BLE001
        res.update(status="not-run", error=str(e))
        (d / "result.json").write_text(json.dumps(res, indent=1))
        return res
    res.update(real_argv=(plan["command"]["argv"] if plan else job["argv"]),
               real_env=((plan["command"].get("env") if plan else job.get("env")) or {}),
               served_argv=cmd[4:], changes=changes)
    port = int(flag_value(cmd, "--port") or 8000)
    env = dict(os.environ)
    env.update(env_add)
    wait_gpu_free()
    res["gpu_used_mib_before"] = gpu_used_mib()
    log(f"{name}: {' '.join(cmd[4:])}")
    logf = open(d / "serve.log", "w")
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                            start_new_session=True)
    ready = None
    limit = float(job.get("ready_timeout", 720))
    while time.time() - t0 < limit:
        if healthy(port):
            ready = time.time() - t0
            break
        if proc.poll() is not None:
            break
        time.sleep(1)
    res["ready_seconds"] = round(ready, 1) if ready is not None else None
    res["status"] = "ready" if ready is not None else ("exited" if proc.poll() is not None else "timeout")
    log(f"{name}: {res['status']} after {time.time() - t0:.0f} s")
    if ready is not None:
        res["gpu_used_mib_ready"] = gpu_used_mib()
        if job.get("load", True):
            try:
                lp = subprocess.run([sys.executable, str(HERE / "load.py"), "--port", str(port),
                                     "--out", str(d / "load.json")] + (["--quick"] if job.get("quick") else []),
                                    capture_output=True, text=True, timeout=float(job.get("load_timeout", 420)))
                (d / "load.out").write_text(lp.stdout + lp.stderr)
                if (d / "load.json").exists():
                    res["load"] = json.loads((d / "load.json").read_text())
                else:
                    res["load_error"] = (lp.stdout + lp.stderr)[-2000:]
            except subprocess.TimeoutExpired as e:
                res["load_error"] = f"load timed out after {e.timeout} s"
        res["gpu_used_mib_after_load"] = gpu_used_mib()
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    res["exit_code"] = proc.returncode
    res["wall_seconds"] = round(time.time() - t0, 1)
    logf.close()
    lines = (d / "serve.log").read_text(errors="replace").splitlines()
    rep = el.parse_memory(lines)
    res["memory"] = rep.to_dict()
    res["memory_sources"] = rep.sources
    res["extras"] = extras(lines)
    errs = [ln for ln in lines if re.search(r"\b(Error|ERROR|Traceback)\b", ln)]
    res["error_lines"] = errs[-8:]
    (d / "result.json").write_text(json.dumps(res, indent=1))
    return res


def pending(jobs_file: Path, results: Path) -> list[dict]:
    try:
        jobs = json.loads(jobs_file.read_text())["jobs"]
    except Exception as e:  # noqa: BLE001
        log(f"cannot read {jobs_file}: {e}")
        return []
    def tried(j):
        f = results / j["name"] / "started"
        try:
            return int(f.read_text().strip() or 1) if f.exists() else 0
        except ValueError:
            return 1
    return [j for j in jobs if not j.get("skip") and tried(j) < j.get("attempt", 1)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--only", default=None, help="run this job alone")
    a = ap.parse_args()
    results = Path(a.results)
    results.mkdir(parents=True, exist_ok=True)
    el = engine_log_module()
    jobs_file = (REPO / a.jobs) if not Path(a.jobs).is_absolute() else Path(a.jobs)
    while True:
        todo = pending(jobs_file, results)
        if a.only:
            todo = [j for j in todo if j["name"] == a.only]
        if not todo:
            log("no job left")
            return 0
        res = run_job(todo[0], results, el)
        m = res.get("memory", {})
        log(f"{res['name']}: {res.get('status')} ready={res.get('ready_seconds')} kv={m.get('kv_cache_bytes')} "
            f"tokens={m.get('kv_tokens')} load={'yes' if res.get('load') else 'no'}")
        if a.only:
            return 0


if __name__ == "__main__":
    sys.exit(main())
