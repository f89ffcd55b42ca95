#!/usr/bin/env python3
"""Serve each job of a queue with real vLLM or SGLang on dummy weights, record what it reports, run the load.

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

SGLang jobs (`sglang serve ...` or `python -m sglang.launch_server ...`) run as
`python3 -m sglang.launch_server` from the carried site ($SITE, else the job file's "site"); the
changes the carried bundle forces (backends, a processor folder, environment) are not in this
code but in the job file, each with its reason: the queue's "dummy_flags" / "dummy_env", and a
job's own on top. The load uses SGLang's native /generate (load.py --api sglang).
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

# SGLang (0.5.14): what every dummy start needs whatever the bundle carries; the bundle's own
# choices come from the job file. The server's default port (server_args.py: port = 30000).
SGLANG_DUMMY_FLAGS = [
    ("--load-format", "dummy", "random weights of the real shapes: no checkpoint on the machine"),
    ("--skip-tokenizer-init", None, "no tokenizer files: prompts are token ids (load.py --api sglang: /generate with input_ids)"),
]
SGLANG_DEFAULT_PORT = 30000
SGLANG_ENTRY = ["-m", "sglang.launch_server"]
# Spec decoding on random weights accepts no draft token; SGLang 0.5.14 can simulate a mean
# accepted length instead (speculative/spec_utils.py SGLANG_SIMULATE_ACC_LEN, read by
# eagle_utils.py's verify; "match-expected" samples floor/ceil so the mean is the one asked).
SGLANG_SIMULATE = ("SGLANG_SIMULATE_ACC_LEN", "SGLANG_SIMULATE_ACC_METHOD", "match-expected")

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
    # SGLang 0.5.14 (scheduler_components/metrics_reporter.py, model_executor/model_runner.py,
    # model_runner_kv_cache_mixin.py): the last decode batch's acceptance, capture and load times
    "sglang_accept_len": re.compile(r"accept len: ([0-9.]+)"),
    "sglang_gen_throughput": re.compile(r"gen throughput \(token/s\): ([0-9.]+)"),
    "sglang_target_capture_seconds": re.compile(r"Capture target (?:decode|verify) CUDA graph end\. elapsed=([0-9.]+) s"),
    "sglang_weight_load_seconds": re.compile(r"Load weight end\. elapsed=([0-9.]+) s, type=\w+ForConditionalGeneration"),
    "sglang_requests_reduced_to": re.compile(r"max_running_requests was reduced from the requested \d+ to (\d+)"),
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


def engine_of(argv: list[str]) -> str:
    """vllm for `vllm serve`, sglang for `sglang serve` or `python -m sglang.launch_server`."""
    if argv[:2] == ["vllm", "serve"]:
        return "vllm"
    if argv[:2] == ["sglang", "serve"] or (len(argv) > 2 and argv[1:3] == SGLANG_ENTRY and "python" in argv[0]):
        return "sglang"
    raise ValueError(f"neither a vLLM nor an SGLang serve command: {argv[:3]}")


def site_dir(queue: dict | None) -> str | None:
    """The carried engine's folder: $SITE (device.sh sets it), else the job file's "site"."""
    return os.environ.get("SITE") or (queue or {}).get("site")


def installed_version(engine: str, site: str | None) -> str | None:
    """The engine's version from its dist-info (in the site folder, else wherever Python finds it),
    without importing it."""
    from importlib import metadata

    dists = metadata.distributions(name=engine, path=[site]) if site else ()
    for d in dists:
        return d.version
    try:
        return metadata.version(engine)
    except metadata.PackageNotFoundError:
        return None


def engine_version(job: dict, plan: dict | None, engine: str = "vllm", site: str | None = None) -> str:
    """The release the job is served with: the plan's, the job's, the installed one."""
    if plan:
        return plan["engine"]["version"]
    if job.get("engine_version"):
        return job["engine_version"]
    return installed_version(engine, site) or qwenplan_render().get_engine(engine).default_version


def dropped_without_tokenizer(version: str, engine: str = "vllm") -> tuple[list[tuple[str, int]], str]:
    """(flags with how many values each takes, why): profiles/engines.yaml `without_tokenizer`."""
    render = qwenplan_render()
    rule = render.get_engine(engine).without_tokenizer(version)
    return render.tokenizer_flags(engine, version), (rule or {}).get("reason", "")


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
    model = flag_value(argv, "--model-path") or flag_value(argv, "--model") or ""   # SGLang's, or vLLM's flag
    text = json.dumps((plan or {}).get("variant") or {}) + " " + " ".join(argv[:3]) + " " + model
    if re.search(r"fp8", text, re.I):
        return "fp8"
    if plan and (plan.get("variant") or {}).get("format") not in (None, "bf16", "bfloat16"):
        raise ValueError(f"no dummy config for variant format {(plan.get('variant') or {}).get('format')!r}")
    return "bf16"


def _split_entry(argv: list[str], engine: str, changes: list[dict]) -> list[str]:
    """The arguments after the entry point, which the runner replaces with its own interpreter."""
    if engine == "vllm":
        return argv[2:]
    if argv[:2] == ["sglang", "serve"]:
        changes.append({"what": "sglang serve -> python3 -m sglang.launch_server",
                        "why": "the same server: `sglang serve` (sglang/cli/serve.py) runs launch_server's run_server on "
                               "prepare_server_args for a language model, after probing the path for a diffusion "
                               "model; the carried site has no console script"})
        return argv[2:]
    return argv[3:]


def _flag_index(rest: list[str], flag: str) -> int:
    """Where the flag first stands, as `--flag value` or `--flag=value`."""
    return next(i for i, a in enumerate(rest) if a == flag or a.startswith(flag + "="))


def _swap_model(rest: list[str], engine: str, model_dir: str, changes: list[dict]) -> None:
    """Point the command at the dummy config folder: no checkpoint is on the machine."""
    model_flags = ("--model",) if engine == "vllm" else ("--model-path", "--model")
    model_flag = next((f for f in model_flags if has_flag(rest, f)), None)
    if rest and not rest[0].startswith("-") and engine == "vllm":
        changes.append({"what": f"model {rest[0]} -> {model_dir}", "why": "config.json only (dummy weights)"})
        rest[0] = model_dir
    elif model_flag:
        i = _flag_index(rest, model_flag)
        old = flag_value(rest, model_flag)
        if rest[i] == model_flag:
            rest[i + 1] = model_dir
        else:
            rest[i] = f"{model_flag}={model_dir}"
        changes.append({"what": f"model {old} -> {model_dir}", "why": "config.json only (dummy weights)"})


def _drop_tokenizer_flags(rest: list[str], drop: list[tuple[str, int]], why: str, changes: list[dict]) -> None:
    """Remove the flags that need tokenizer files, which dummy serving does not have."""
    for flag, nval in drop:
        while has_flag(rest, flag):
            i = _flag_index(rest, flag)
            n = 1 + (nval if rest[i] == flag else 0)
            changes.append({"what": f"drop {' '.join(rest[i:i + n])}", "why": why})
            del rest[i:i + n]


def _add_dummy_flags(rest: list[str], engine: str, job: dict, queue: dict | None, changes: list[dict]) -> None:
    """Add what dummy serving needs (the engine's, the queue's, the job's) unless already given."""
    base = DUMMY_FLAGS if engine == "vllm" else SGLANG_DUMMY_FLAGS
    for flag, value, why in base + [tuple(x) for x in (queue or {}).get("dummy_flags", []) + job.get("dummy_flags", [])]:
        if has_flag(rest, flag):
            continue
        rest += [flag] + ([value] if value is not None else [])
        changes.append({"what": f"add {flag}{' ' + value if value else ''}", "why": why})


def _synthetic_vllm(rest: list[str], rates: list | None, changes: list[dict]) -> None:
    """Random weights accept no draft token; vLLM's synthetic rejection sampler accepts at
    given per-position rates instead (vllm/config/speculative.py rejection_sample_method)."""
    spec = flag_value(rest, "--speculative-config")
    if not (rates and spec):
        return
    i = rest.index("--speculative-config")
    cfg = {**json.loads(spec), "rejection_sample_method": "synthetic", "synthetic_acceptance_rates": rates}
    rest[i + 1] = json.dumps(cfg, separators=(",", ":"))
    changes.append({"what": f"speculative config + synthetic acceptance {rates}",
                    "why": "dummy weights accept no draft; the synthetic sampler accepts at the plan's assumed rate"})


def _synthetic_sglang(rest: list[str], env: dict[str, str], rates: list | None, changes: list[dict]) -> None:
    """The same per-position rates as for vLLM, as SGLang's one figure: the mean accepted length
    per verify step, bonus token included (1 + r1 + r2 + ...)."""
    if not rates:
        return
    if not has_flag(rest, "--speculative-algorithm"):
        raise ValueError("synthetic_acceptance on an SGLang command without --speculative-algorithm")
    length = round(1 + sum(rates), 4)
    env[SGLANG_SIMULATE[0]], env[SGLANG_SIMULATE[1]] = str(length), SGLANG_SIMULATE[2]
    changes.append({"what": f"env {SGLANG_SIMULATE[0]}={length} {SGLANG_SIMULATE[1]}={SGLANG_SIMULATE[2]}",
                    "why": f"dummy weights accept no draft; SGLang's simulated acceptance accepts {length} tokens a "
                           f"step on average (per-position rates {rates})"})


def _renumber_gpus(env: dict[str, str], changes: list[dict]) -> None:
    """A what-if plan may name GPUs of another box; this machine's GPUs are 0..n-1."""
    if "CUDA_VISIBLE_DEVICES" not in env:
        return
    n = len([x for x in env["CUDA_VISIBLE_DEVICES"].split(",") if x.strip()])
    new = ",".join(str(i) for i in range(n))
    if env["CUDA_VISIBLE_DEVICES"] != new:
        changes.append({"what": f"CUDA_VISIBLE_DEVICES {env['CUDA_VISIBLE_DEVICES']} -> {new}",
                        "why": "the plan is a what-if for this GPU model; this machine's GPUs are 0..n-1"})
        env["CUDA_VISIBLE_DEVICES"] = new


def _vllm_env(env: dict[str, str], changes: list[dict]) -> None:
    """DUMMY_ENV under what the command already sets: no FlashInfer, unbuffered log, no NVLS."""
    for k, v in DUMMY_ENV.items():
        if k not in env:
            env[k] = v
    changes.append({"what": "env VLLM_USE_FLASHINFER_SAMPLER=0", "why": "FlashInfer is not installed"})


def _sglang_env(env: dict[str, str], job: dict, queue: dict | None, changes: list[dict]) -> None:
    """The queue's and the job's dummy_env (each with its reason), then the machines' defaults."""
    for k, (v, why) in {**(queue or {}).get("dummy_env", {}), **job.get("dummy_env", {})}.items():
        if env.get(k) != v:
            env[k] = v
            changes.append({"what": f"env {k}={v}", "why": why})
    for k, v in (("PYTHONUNBUFFERED", "1"), ("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                 ("NVSHMEM_DISABLE_NVLS", "1")):
        env.setdefault(k, v)     # as for vLLM: unbuffered log; the machines' rule for several GPUs


def served_command(job: dict, plan: dict | None, queue: dict | None = None) -> tuple[list[str], dict[str, str], list[dict]]:
    """(argv to exec, env additions, the changes made to the real command and why)."""
    argv = list(plan["command"]["argv"] if plan else job["argv"])
    env = dict((plan["command"].get("env") if plan else job.get("env")) or {})
    changes: list[dict] = []
    engine = engine_of(argv)
    rest = _split_entry(argv, engine, changes)
    _swap_model(rest, engine, str(CONFIGS / model_kind(job, plan, argv)), changes)
    drop, why = dropped_without_tokenizer(engine_version(job, plan, engine, site_dir(queue)), engine)
    _drop_tokenizer_flags(rest, drop, why, changes)
    _add_dummy_flags(rest, engine, job, queue, changes)
    rates = job.get("synthetic_acceptance")
    _synthetic_vllm(rest, rates, changes)
    if engine == "sglang":
        _synthetic_sglang(rest, env, rates, changes)
    _renumber_gpus(env, changes)
    if engine == "vllm":
        _vllm_env(env, changes)
        return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"] + rest, env, changes
    _sglang_env(env, job, queue, changes)
    return [sys.executable] + SGLANG_ENTRY + rest, env, changes


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


def server_info(port: int) -> dict | None:
    """SGLang's /server_info: the arguments as it resolved them (its defaults filled in), its
    version and the scheduler's figures."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=30) as r:
            return json.loads(r.read())
    except Exception:  # noqa: BLE001 - a record, not a reason to fail the run
        return None


def _real_command(job: dict, plan: dict | None) -> tuple[list[str], dict]:
    """The command as the plan or the job gives it, before any dummy-serving change."""
    return (plan["command"]["argv"] if plan else job["argv"]), ((plan["command"].get("env") if plan else job.get("env")) or {})


def _serve_env(env_add: dict[str, str], site: str | None) -> dict[str, str]:
    """The runner's environment with the command's additions, the carried site importable."""
    env = dict(os.environ)
    env.update(env_add)
    if site:
        env["PYTHONPATH"] = site
    return env


def _wait_ready(proc, port: int, limit: float, t0: float) -> float | None:
    """Seconds until /health answers; None if the server exits or the limit passes first."""
    while time.time() - t0 < limit:
        if healthy(port):
            return time.time() - t0
        if proc.poll() is not None:
            return None
        time.sleep(1)
    return None


def _run_load(job: dict, d: Path, port: int, engine: str, res: dict) -> None:
    """load.py against the ready server; its report (or why there is none) goes into res."""
    try:
        lp = subprocess.run([sys.executable, str(HERE / "load.py"), "--port", str(port),
                             "--out", str(d / "load.json")] + (["--quick"] if job.get("quick") else [])
                            + (["--api", "sglang"] if engine == "sglang" else []),
                            capture_output=True, text=True, timeout=float(job.get("load_timeout", 420)))
        (d / "load.out").write_text(lp.stdout + lp.stderr)
        if (d / "load.json").exists():
            res["load"] = json.loads((d / "load.json").read_text())
        else:
            res["load_error"] = (lp.stdout + lp.stderr)[-2000:]
    except subprocess.TimeoutExpired as e:
        res["load_error"] = f"load timed out after {e.timeout} s"


def _record_sglang_info(port: int, d: Path, res: dict) -> None:
    """SGLang's resolved arguments, and the version it reports over the dist-info's."""
    info = server_info(port)
    if info is not None:
        (d / "server_info.json").write_text(json.dumps(info, indent=1, default=str))
        res["engine_version"] = info.get("version") or res.get("engine_version")


def _when_ready(job: dict, d: Path, port: int, engine: str, res: dict) -> None:
    """What a ready server is measured for: memory, SGLang's own record, the load."""
    res["gpu_used_mib_ready"] = gpu_used_mib()
    if engine == "sglang":
        _record_sglang_info(port, d, res)
    if job.get("load", True):
        _run_load(job, d, port, engine, res)
    res["gpu_used_mib_after_load"] = gpu_used_mib()


def _stop(proc, engine: str) -> None:
    """Stop the server's process group, forcibly if it lingers; SGLang's helpers always forcibly."""
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
    if engine == "sglang":
        try:        # SGLang's scheduler and detokenizer processes, should one outlive the server
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _sglang_log_head(logf, res: dict, site: str | None) -> None:
    """SGLang logs neither its version nor the GPU's total (it reads the total from nvidia-smi
    for its defaults): the run's own record heads the log, marked as the runner's."""
    g = (res["gpus"] or [{}])[0]
    logf.write(f"[qwenplan runner] sglang=={res['engine_version']} from {site}; nvidia-smi GPU 0: "
               f"{g.get('name')}, memory.total {g.get('memory_total_mib')} MiB\n")
    logf.flush()


def _parse_log(d: Path, el, res: dict) -> None:
    """What the engine's log tells: memory, the extra figures, the last error lines."""
    lines = (d / "serve.log").read_text(errors="replace").splitlines()
    rep = el.parse_memory(lines)
    res["memory"] = rep.to_dict()
    res["memory_sources"] = rep.sources
    res["extras"] = extras(lines)
    errs = [ln for ln in lines if re.search(r"\b(Error|ERROR|Traceback)\b", ln)]
    res["error_lines"] = errs[-8:]


def run_job(job: dict, results: Path, el, queue: dict | None = None) -> dict:
    name = job["name"]
    d = results / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "started").write_text(str(job.get("attempt", 1)))
    plan = json.loads((REPO / job["plan"]).read_text()) if job.get("plan") else None
    res: dict = {"name": name, "attempt": job.get("attempt", 1), "kind": job.get("kind", "plan" if plan else "baseline"), "plan": job.get("plan"),
                 "note": job.get("note"), "gpus": gpu_info()}
    try:
        cmd, env_add, changes = served_command(job, plan, queue)
        engine = engine_of(_real_command(job, plan)[0])
    except Exception as e:  # noqa: BLE001
        res.update(status="not-run", error=str(e))
        (d / "result.json").write_text(json.dumps(res, indent=1))
        return res
    site = site_dir(queue)
    head = 1 + len(SGLANG_ENTRY) if engine == "sglang" else 4     # python3 -m ... [serve]
    real_argv, real_env = _real_command(job, plan)
    res.update(engine=engine, real_argv=real_argv, real_env=real_env,
               served_argv=cmd[head:], served_env=env_add, changes=changes)
    if engine == "sglang":
        res["engine_version"] = installed_version("sglang", site)
    port = int(flag_value(cmd, "--port") or (SGLANG_DEFAULT_PORT if engine == "sglang" else 8000))
    env = _serve_env(env_add, site)
    wait_gpu_free()
    res["gpu_used_mib_before"] = gpu_used_mib()
    log(f"{name}: {' '.join(cmd[head:])}")
    logf = open(d / "serve.log", "w")
    if engine == "sglang":
        _sglang_log_head(logf, res, site)
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                            start_new_session=True)
    ready = _wait_ready(proc, port, float(job.get("ready_timeout", 720)), t0)
    res["ready_seconds"] = round(ready, 1) if ready is not None else None
    res["status"] = "ready" if ready is not None else ("exited" if proc.poll() is not None else "timeout")
    log(f"{name}: {res['status']} after {time.time() - t0:.0f} s")
    if ready is not None:
        _when_ready(job, d, port, engine, res)
    _stop(proc, engine)
    res["exit_code"] = proc.returncode
    res["wall_seconds"] = round(time.time() - t0, 1)
    logf.close()
    _parse_log(d, el, res)
    (d / "result.json").write_text(json.dumps(res, indent=1))
    return res


def read_queue(jobs_file: Path) -> dict:
    try:
        return json.loads(jobs_file.read_text())
    except Exception as e:  # noqa: BLE001
        log(f"cannot read {jobs_file}: {e}")
        return {"jobs": []}


def pending(jobs_file: Path, results: Path) -> list[dict]:
    jobs = read_queue(jobs_file).get("jobs", [])
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
    ap.add_argument("--quick", action="store_true", help="the small load (load.py --quick) for every job: rehearsals")
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
        res = run_job({**todo[0], "quick": True} if a.quick else todo[0], results, el, read_queue(jobs_file))
        m = res.get("memory", {})
        log(f"{res['name']}: {res.get('status')} ready={res.get('ready_seconds')} kv={m.get('kv_cache_bytes')} "
            f"tokens={m.get('kv_tokens')} load={'yes' if res.get('load') else 'no'}")
        if a.only:
            return 0


if __name__ == "__main__":
    sys.exit(main())
