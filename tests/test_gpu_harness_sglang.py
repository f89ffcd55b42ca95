"""The GPU harness serving SGLang 0.5.14 (benchmarks/gpu/runner.py, load.py, jobs/h200-sglang.json)
and reading its log (launch/engine_log.py), before any GPU run.

The log excerpts below are built from SGLang 0.5.14's own format strings (the file each comes
from is named beside it; the figures are made up), so what the parser reads is what the real
server prints. SGLang's "GB" is GiB: get_available_gpu_memory divides by 1 << 30 and
memory_pool.py by GB = 1024 * 1024 * 1024.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwenplan.launch.engine_log import parse_memory
from tests.conftest import handed_port

ROOT = Path(__file__).resolve().parent.parent
GPU = ROOT / "benchmarks" / "gpu"
JOBS = GPU / "jobs" / "h200-sglang.json"
GiB = 1 << 30

# An MTP start on one GPU, with a second rank's lines mixed in (TP1: its figures are not the first GPU's).
MTP_LOG = """\
[qwenplan runner] sglang==0.5.14 from /tmp/sgsite; nvidia-smi GPU 0: NVIDIA H200, memory.total 143771 MiB
[2026-12-02 09:00:00] server_args=ServerArgs(model_path='/r/benchmarks/gpu/configs/fp8', load_format='dummy', mem_fraction_static=0.82, max_running_requests=64, mamba_full_memory_ratio=0.9)
[2026-12-02 09:00:01 TP0] Init torch distributed ends. elapsed=0.35 s, mem usage=0.00 GB
[2026-12-02 09:00:02 TP0] Load weight begin. avail mem=139.27 GB
[2026-12-02 09:00:02 TP1] Load weight begin. avail mem=120.00 GB
[2026-12-02 09:00:03 TP0] Load weight end. elapsed=14.02 s, type=Qwen3_5MoeForConditionalGeneration, quant=fp8, avail mem=105.06 GB, mem usage=34.21 GB.
[2026-12-02 09:00:03 TP1] Load weight end. elapsed=14.02 s, type=Qwen3_5MoeForConditionalGeneration, quant=fp8, avail mem=80.00 GB, mem usage=40.00 GB.
[2026-12-02 09:00:04 TP0] Load weight begin. avail mem=105.06 GB
[2026-12-02 09:00:05 TP0] Load weight end. elapsed=1.87 s, type=Qwen3_5ForCausalLMMTP, avail mem=104.24 GB, mem usage=0.82 GB.
[2026-12-02 09:00:06 TP0] Mamba Cache is allocated. max_mamba_cache_size: 391, conv_state size: 0.54GB, ssm_state size: 22.97GB intermediate_ssm_state_cache size: 11.25GB intermediate_conv_window_cache size: 0.14GB
[2026-12-02 09:00:07 TP0] KV Cache is allocated. dtype: torch.bfloat16, #tokens: 2323839, K size: 22.16 GB, V size: 22.16 GB
[2026-12-02 09:00:08 TP0] Memory pool end. avail mem=19.41 GB
[2026-12-02 09:00:09 TP0] KV Cache is allocated. dtype: torch.bfloat16, #tokens: 2323839, K size: 2.22 GB, V size: 2.22 GB
[2026-12-02 09:00:10 TP0] Capture target verify CUDA graph begin. backend=full, num_tokens_per_bs=3, bs=[1, 2, 4, 8], avail mem=11.84 GB
[2026-12-02 09:00:11 TP0] Capture target verify CUDA graph end. elapsed=21.40 s, mem usage=0.61 GB, avail mem=11.23 GB.
[2026-12-02 09:00:11 TP1] Capture target verify CUDA graph end. elapsed=21.40 s, mem usage=9.99 GB, avail mem=1.23 GB.
[2026-12-02 09:00:12 TP0] Capture draft decode CUDA graph end. elapsed=6.20 s, mem usage=0.12 GB, avail mem=11.11 GB.
[2026-12-02 09:00:13 TP0] Capture draft extend CUDA graph end. elapsed=5.10 s, mem usage=0.09 GB, avail mem=11.02 GB.
[2026-12-02 09:00:14 TP0] max_total_num_tokens=2323839, chunked_prefill_size=8192, max_prefill_tokens=16384, max_running_requests=64, context_len=262144, available_gpu_mem=11.02 GB
[2026-12-02 09:00:15] The server is fired up and ready to roll!
"""


def gib(x: float) -> int:
    return int(x * GiB)


def test_sglang_log_gives_every_figure_in_bytes_of_the_first_gpu():
    r = parse_memory(MTP_LOG.splitlines())
    assert (r.engine, r.version) == ("sglang", "0.5.14")
    assert r.pre_load_bytes == gib(139.27)                       # the target's load, not the draft's
    assert r.weights_loads == 2 and r.weights_bytes == gib(34.21 + 0.82)    # target + MTP draft, TP0 only
    assert r.kv_cache_dtype == "bfloat16" and r.kv_tokens == 2323839
    assert r.kv_cache_bytes == gib(22.16 + 22.16)                # K + V of the target's pool
    assert r.draft_kv_bytes == gib(2.22 + 2.22)
    assert r.mamba_cache_size == 391 and r.mamba_cache_bytes == gib(0.54 + 22.97)
    assert r.intermediate_bytes == gib(11.25 + 0.14)
    assert r.cudagraph_bytes == gib(0.61 + 0.12 + 0.09)         # every capture, TP1's left out
    assert r.max_running_requests == 64 and r.context_len == 262144 and r.chunked_prefill_size == 8192
    assert r.mem_fraction_static == 0.82 and r.available_after_start_bytes == gib(11.02)


def test_sglang_fp8_kv_and_a_restart_in_the_same_log():
    """A second start (server_args= again) replaces the first's figures instead of adding to them;
    its fp8 pool and missing MTP leave no draft or intermediate figure behind."""
    second = """\
[2026-12-02 09:10:00] server_args=ServerArgs(model_path='/r/fp8', kv_cache_dtype='fp8_e4m3', mem_fraction_static=0.8)
[2026-12-02 09:10:02 TP0] Load weight begin. avail mem=139.30 GB
[2026-12-02 09:10:03 TP0] Load weight end. elapsed=14.02 s, type=Qwen3_5MoeForConditionalGeneration, quant=fp8, avail mem=105.09 GB, mem usage=34.21 GB.
[2026-12-02 09:10:06 TP0] Mamba Cache is allocated. max_mamba_cache_size: 400, conv_state size: 0.55GB, ssm_state size: 23.50GB
[2026-12-02 09:10:07 TP0] KV Cache is allocated. dtype: torch.float8_e4m3fn, #tokens: 4800000, K size: 22.89 GB, V size: 22.89 GB
[2026-12-02 09:10:11 TP0] Capture target decode CUDA graph end. elapsed=21.40 s, mem usage=0.70 GB, avail mem=11.23 GB.
[2026-12-02 09:10:14 TP0] max_total_num_tokens=4800000, chunked_prefill_size=-1, max_prefill_tokens=16384, max_running_requests=200, context_len=262144, available_gpu_mem=11.00 GB
"""
    r = parse_memory((MTP_LOG + second).splitlines())
    assert r.weights_loads == 1 and r.weights_bytes == gib(34.21)
    assert r.kv_cache_dtype == "float8_e4m3fn" and r.kv_tokens == 4800000 and r.kv_cache_bytes == gib(45.78)
    assert r.mamba_cache_size == 400 and r.intermediate_bytes is None and r.draft_kv_bytes is None
    assert r.cudagraph_bytes == gib(0.70) and r.mem_fraction_static == 0.8 and r.chunked_prefill_size == -1


def _runner():
    spec = importlib.util.spec_from_file_location("gpu_runner", GPU / "runner.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _flags() -> dict[str, set[str] | None]:
    """SGLang 0.5.14's option strings, with their choices where it has them."""
    out = {}
    for line in (ROOT / "profiles" / "flags" / "sglang-0.5.14.txt").read_text().splitlines():
        if line.startswith("--"):
            name, _, choices = line.partition(" ")
            out[name] = set(choices.strip("{}").split(",")) if choices else None
    return out


def test_every_sglang_job_is_served_with_flags_sglang_0_5_14_accepts():
    """The queue's served commands, as argparse would take them: each flag SGLang's (or its
    unique prefix, as `--tp`), each value among its choices; only dummy-serving changes made."""
    runner, flags = _runner(), _flags()
    queue = json.loads(JOBS.read_text())
    assert queue["engine"] == "sglang" and len(queue["jobs"]) >= 6
    kinds = {j.get("kind", "plan") for j in queue["jobs"]}
    assert kinds == {"plan", "baseline"}
    for job in queue["jobs"]:
        plan = json.loads((ROOT / job["plan"]).read_text()) if job.get("plan") else None
        cmd, env, changes = runner.served_command(job, plan, queue)
        assert cmd[1:3] == ["-m", "sglang.launch_server"], job["name"]
        argv = cmd[3:]
        assert runner.flag_value(argv, "--model-path") in (str(GPU / "configs" / "bf16"), str(GPU / "configs" / "fp8"))
        assert "--reasoning-parser" not in argv and "--tool-call-parser" not in argv
        for i, a in enumerate(argv):
            if not a.startswith("--"):
                continue
            name = a.partition("=")[0]
            whole = [f for f in flags if f == name] or [f for f in flags if f.startswith(name)]
            assert len(whole) == 1, (job["name"], a)
            choices = flags[whole[0]]
            if choices and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                assert argv[i + 1] in choices, (job["name"], a, argv[i + 1])
        assert env["SGLANG_ENABLE_JIT_DEEPGEMM"] == "0"
        assert all(c.get("why") for c in changes)
    names = [j["name"] for j in queue["jobs"]]
    assert names[0] == "h200-sglang-plan-balanced"           # the most valuable first


def test_an_sglang_mtp_job_simulates_the_acceptance_vllm_runs_were_given():
    runner = _runner()
    queue = json.loads(JOBS.read_text())
    job = next(j for j in queue["jobs"] if j.get("synthetic_acceptance"))
    cmd, env, changes = runner.served_command(job, json.loads((ROOT / job["plan"]).read_text()), queue)
    assert env["SGLANG_SIMULATE_ACC_LEN"] == "2.44" and env["SGLANG_SIMULATE_ACC_METHOD"] == "match-expected"
    assert any("SGLANG_SIMULATE_ACC_LEN" in c["what"] for c in changes)
    with pytest.raises(ValueError):      # nothing to accept without speculative decoding
        runner.served_command({"argv": ["python", "-m", "sglang.launch_server", "--model-path", "Qwen/Qwen3.6-35B-A3B"],
                               "synthetic_acceptance": [0.8]}, None, queue)


def test_runner_serves_an_sglang_job_end_to_end_on_the_fake_engine(tmp_path):
    """runner.py -> python3 -m sglang.launch_server (the fake, checking SGLang 0.5.14's flags) ->
    /health -> SGLang's log parsed -> load.py --api sglang (/generate, input_ids) -> stop."""
    site = tmp_path / "site"
    (site / "sglang").mkdir(parents=True)
    (site / "sglang" / "__init__.py").write_text("")
    (site / "sglang" / "launch_server.py").write_text(
        "import os, sys\n"
        f"os.execv(sys.executable, [sys.executable, {str(ROOT / 'tests' / 'fake_engine.py')!r}, "
        "'-m', 'sglang.launch_server'] + sys.argv[1:])\n")
    (site / "sglang-0.5.14.dist-info").mkdir()
    (site / "sglang-0.5.14.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: sglang\nVersion: 0.5.14\n")
    port, handoff = handed_port()
    queue = json.loads(JOBS.read_text())
    queue["jobs"] = [{"name": "mtp", "kind": "baseline", "synthetic_acceptance": [0.8, 0.64], "quick": True,
                      "argv": ["python", "-m", "sglang.launch_server", "--model-path", "Qwen/Qwen3.6-35B-A3B-FP8",
                               "--tp", "1", "--port", str(port), "--speculative-algorithm", "EAGLE",
                               "--speculative-num-steps", "2", "--reasoning-parser", "qwen3"]}]
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps(queue))
    env = {**os.environ, **handoff, "SITE": str(site), "FAKE_ENGINE_VERSION": "0.5.14", "FAKE_ENGINE_DELAY": "0.1"}
    out = subprocess.run([sys.executable, str(GPU / "runner.py"), "--jobs", str(jobs), "--results", str(tmp_path / "r")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    r = json.loads((tmp_path / "r" / "mtp" / "result.json").read_text())
    assert r["status"] == "ready" and r["engine"] == "sglang" and r["engine_version"] == "0.5.14", r
    assert r["served_argv"][:2] == ["--model-path", str(GPU / "configs" / "fp8")]
    assert r["served_env"]["SGLANG_SIMULATE_ACC_LEN"] == "2.44"
    assert r["memory"]["kv_tokens"] > 0 and r["memory"]["weights_loads"] == 2 and r["memory"]["mamba_cache_size"] > 0
    levels = r["load"]["levels"]
    assert r["load"]["api"] == "sglang"
    assert all(lv["completed"] == lv["requests"] and not lv["errors"] for lv in levels.values())
    assert all(lv["completion_tokens"] == lv["requests"] * lv["output_tokens"] for lv in levels.values())
    assert json.loads((tmp_path / "r" / "mtp" / "server_info.json").read_text())["version"] == "0.5.14"
