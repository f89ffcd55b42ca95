"""launch/diagnose.py: every failure the fake engine can show, through the real runner, and the retry loop."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from qwenplan.launch import diagnose as dg
from qwenplan.launch import runner
from tests.test_runner import engine_pids, fake_argv, fake_env, gone, handed_port

SETTINGS = {"max_model_len": 262144, "max_num_seqs": 256, "kv_cache_dtype": "fp8", "gpu_memory_utilization": 0.9,
            "expert_cache_size": None, "speculative": {"method": "mtp", "num_speculative_tokens": 2},
            "enforce_eager": False, "reasoning_parser": "qwen3", "tool_call_parser": "qwen3_coder"}
PLAN = {"settings": SETTINGS, "memory": {}}
GPU_TRUTH = Path(__file__).parent / "fixtures" / "gpu-truth" / "h100-vllm0.26-bf16-262k-naive-fails.log"


def run_fake(tmp_path, mode, *extra, ready_timeout_s=10.0, env=None):
    port, handoff = handed_port()
    eng = runner.launch(fake_argv(port, *extra), {**fake_env(tmp_path, mode), **handoff, **(env or {})},
                        log_path=tmp_path / f"{mode}.log", host="127.0.0.1", port=port, served_name="model",
                        ready_timeout_s=ready_timeout_s, grace_s=2, forward_signals=False, check=False,
                        on_line=lambda line: None, on_status=lambda s: None)
    return eng.result


def safer(settings: dict, d) -> dict | None:
    """The first alternative of the rule as the changed plan options, or None."""
    return next(iter(dg.safer_options(dg.served_options({"settings": settings}), d)), None)


# mode -> (diagnosis id, the plan options that change in the safer plan, or None when there is none)
FAKE_FAILURES = {
    "kv-too-small": ("kv-too-small", {"context": 168960}),
    "oom-profile": ("oom", {"utilization": 0.87, "concurrency": 128}),
    "no-cache-blocks": ("no-cache-blocks", {"eager": True}),
    "mamba-blocks": ("mamba-blocks", {"concurrency": 135}),
    "mtp-keyerror": ("mtp-keyerror", {"mtp": False}),
    "marlin": ("marlin", {"eager": True}),
    "unsupported-arch": ("unsupported-arch", None),
}


@pytest.mark.parametrize("mode", sorted(FAKE_FAILURES))
def test_each_failure_of_the_fake_engine_is_diagnosed(tmp_path, mode):
    want_id, want_change = FAKE_FAILURES[mode]
    res = run_fake(tmp_path, mode)
    assert not res.ok and res.failure == "exited" and res.exit_code == 1
    assert gone(engine_pids(tmp_path))
    d = dg.diagnose(res.lines)
    assert d is not None and d.id == want_id, (d, res.tail())
    assert "\n" not in d.message and d.fix in d.message and d.line
    assert safer(SETTINGS, d) == want_change


def test_unrecognized_argument_names_the_flag_and_has_no_safer_plan(tmp_path):
    res = run_fake(tmp_path, "ok", "--mamba-scheduler-strategy", "no_buffer")
    d = dg.diagnose(res.lines)
    assert d.id == "unrecognized-args" and d.values["args"] == "--mamba-scheduler-strategy"
    assert safer(SETTINGS, d) is None


def test_crash_and_hang_have_no_signature(tmp_path):
    res = run_fake(tmp_path, "crash")
    assert res.failure == "exited" and dg.diagnose(res.lines) is None
    res = run_fake(tmp_path, "hang", ready_timeout_s=0.8)
    assert res.failure == "timeout" and dg.diagnose(res.lines) is None


def test_the_real_vllm_log_gives_the_length_that_fits():
    lines = GPU_TRUTH.read_text().splitlines()
    d = dg.diagnose(lines)
    assert d.id == "kv-too-small" and d.values["max_model_len"] == 169184 and "169184" in d.explain
    assert safer(SETTINGS, d) == {"context": 165 * 1024}


# One line per signature, as the engines print them (sources in profiles/failures.yaml).
EXAMPLES = {
    "unrecognized-args": ("vllm serve: error: unrecognized arguments: --language-model-only", None),
    "driver-too-old": ("RuntimeError: The NVIDIA driver on your system is too old (found version 11040).", None),
    "unsupported-arch": ("UserWarning: NVIDIA GeForce RTX 5090 with CUDA capability sm_120 is not compatible with the "
                         "current PyTorch installation.", None),
    "hf-access": ("huggingface_hub.errors.GatedRepoError: 403 Client Error. Cannot access gated repo for url", None),
    "parsers-without-tokenizer": ("(APIServer pid=1234) AttributeError: 'NoneType' object has no attribute 'get_vocab'",
                                  {"parsers": False}),
    "sglang-override-replaces-text-config": ("AttributeError: 'PreTrainedConfig' object has no attribute "
                                             "'max_position_embeddings'", None),
    "port-in-use": ("ERROR: [Errno 98] error while attempting to bind on address ('0.0.0.0', 8000): address already "
                    "in use", None),
    "gpu-busy": ("ValueError: Free memory on device cuda:0 (12.18/23.56 GiB) on startup is less than desired GPU "
                 "memory utilization (0.92, 21.67 GiB). Decrease GPU memory utilization.",
                 {"utilization": 0.5}),
    "kv-too-small": ("ValueError: ... Based on the available memory, the estimated maximum model length is 5000.",
                     {"context": 4096}),
    "kv-too-small-tokens": ("ValueError: The model's max seq len (131072) is larger than the maximum number of tokens "
                            "that can be stored in KV cache (24480). Try increasing `gpu_memory_utilization`",
                            {"context": 23552}),
    "mamba-blocks": ("ValueError: max_num_seqs (256) exceeds available Mamba cache blocks (161). Each decode "
                     "sequence requires one Mamba cache block", {"concurrency": 161}),
    "mamba-cudagraph": ("ERROR [core.py:1079]     assert num_cache_lines >= batch", {"eager": True}),
    "no-cache-blocks": ("ValueError: No available memory for the cache blocks. Try increasing "
                        "`gpu_memory_utilization`", {"eager": True}),
    "sglang-no-memory": ("RuntimeError: Not enough memory. Please try to increase --mem-fraction-static.",
                         {"utilization": 0.93}),
    "mtp-keyerror": ("KeyError: 'layers.0.mlp.experts.w2_weight'", {"mtp": False}),
    "marlin": ("RuntimeError: CUDA error: an illegal memory access was encountered (marlin_moe_wna16)",
               {"eager": True}),
    "oom-cudagraph": ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB.",
                      {"eager": True}),
    "oom-weights": ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB.", None),
    "oom": ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
            {"utilization": 0.87, "concurrency": 128}),
}
CONTEXT = {  # earlier lines that tell where in the start-up it failed
    "oom-cudagraph": ["INFO Model loading took 18.09 GiB memory", "Capturing CUDA graphs (mixed prefill-decode): 40%"],
    "oom": ["INFO Model loading took 18.09 GiB memory and 12.5 seconds"],
}


def test_the_real_sglang_log_of_a_yarn_override_is_diagnosed():
    """SGLang 0.5.14 on an H200 with the card's nested YaRN override (benchmarks/gpu/results)."""
    log = Path(__file__).resolve().parent.parent / "benchmarks/gpu/results/h200-sglang-r1-failed/h200-sglang-plan-long/serve.log"
    d = dg.diagnose(log.read_text(errors="replace").splitlines())
    assert d is not None and d.id == "sglang-override-replaces-text-config" and "--context 262144" in d.fix


def test_every_signature_has_an_example_and_a_source():
    ids = [s.id for s in dg.signatures()]
    assert len(ids) == len(set(ids)) and set(ids) == set(EXAMPLES)
    for s in dg.signatures():
        assert s.source and s.explain and s.fix
        # a URL or a file of this repository (issue 15: no shared/ or seed file names)
        head = s.source.split(" ", 1)[0].rstrip(";,")
        assert re.match(r"https://", s.source) or list(Path(__file__).resolve().parent.parent.glob(head)), s.id
        for alt in s.adjust:
            assert set(alt) <= set(dg.OPTIONS), s.id


@pytest.mark.parametrize("sig_id", sorted(EXAMPLES))
def test_signature_examples(sig_id):
    line, change = EXAMPLES[sig_id]
    d = dg.diagnose(CONTEXT.get(sig_id, []) + ["INFO something unrelated", line])
    assert d is not None and d.id == sig_id, d
    assert safer(SETTINGS, d) == change


def test_safer_plan_rules():
    d = dg.diagnose(["the estimated maximum model length is 3000."])
    assert safer(SETTINGS, d) is None                                     # below 4096: not worth serving
    d = dg.diagnose(["the estimated maximum model length is 300000."])
    assert safer(SETTINGS, d) is None                                     # not smaller than what failed
    d = dg.diagnose(["assert num_cache_lines >= batch"])
    eager = {**SETTINGS, "enforce_eager": True}
    assert safer(eager, d) == {"concurrency": 128}                        # eager already: the next alternative
    d = dg.diagnose(["Model loading took 1 GiB", "torch.OutOfMemoryError: CUDA out of memory."])
    # no fraction known and no sequence count: nothing to lower (no private default of the engine's)
    assert safer({**SETTINGS, "max_num_seqs": None, "gpu_memory_utilization": None}, d) is None
    # SGLang's plans leave the fraction to the engine: the plan's own budget over the GPU is lowered
    sglang = {"settings": {**SETTINGS, "max_num_seqs": None, "gpu_memory_utilization": None},
              "memory": {"per_gpu_budget_bytes": 72_000, "headroom_bytes": 8_000}}
    assert dg.safer_options(dg.served_options(sglang), d) == [{"utilization": 0.87}]
    d = dg.diagnose(["KeyError: 'experts.w13_weight'"])
    assert safer({**SETTINGS, "speculative": None}, d) is None
    assert dg.describe_change(SETTINGS, {**SETTINGS, "max_model_len": 168960, "speculative": None}) == \
        "max_model_len 262144 -> 168960, speculative {\"method\": \"mtp\", \"num_speculative_tokens\": 2} -> off"
    assert dg.diagnose(["\x1b[31mKeyError: 'experts.w2_weight'\x1b[0m"]).id == "mtp-keyerror"


def stand_in_planner(plan: dict = PLAN):
    """A stand-in for the planner (launch/orchestrate.Replanner): the options as settings."""
    def replan(options: dict, because: str) -> dict:
        s = plan["settings"]
        return {"settings": {**s, "max_model_len": options["context"], "max_num_seqs": options["concurrency"],
                             "enforce_eager": options["eager"], "gpu_memory_utilization": options["utilization"],
                             "speculative": s["speculative"] if options["mtp"] else None}, "because": because}
    return replan


def render(settings: dict, port: int) -> list[str]:
    """A stand-in for the renderer: the settings as vLLM flags."""
    argv = fake_argv(port, "--max-model-len", str(settings["max_model_len"]), "--max-num-seqs",
                     str(settings["max_num_seqs"]), "--gpu-memory-utilization", str(settings["gpu_memory_utilization"]))
    if settings["enforce_eager"]:
        argv.append("--enforce-eager")
    if settings["speculative"]:
        argv += ["--speculative-config", json.dumps(settings["speculative"])]
    return argv


def retry(tmp_path, retries, mode="fit", **kw):
    port, handoff = handed_port()
    seen = []
    out = dg.run_with_retries(lambda p: (render(p["settings"], port), {**fake_env(tmp_path, mode), **handoff}),
                              PLAN, replan=stand_in_planner(), retries=retries, check=False,
                              log_dir=tmp_path / "logs", on_attempt=seen.append, host="127.0.0.1", port=port,
                              served_name="model", ready_timeout_s=10, grace_s=2, forward_signals=False,
                              on_line=lambda line: None, on_status=lambda s: None, **kw)
    assert [a.number for a in seen] == [a.number for a in out.attempts]
    return out


def test_retry_uses_the_engines_own_numbers_until_it_serves(tmp_path):
    out = retry(tmp_path, retries=2)
    try:
        assert out.ok and len(out.attempts) == 3 and out.engine.alive()
        a1, a2, a3 = out.attempts
        assert a1.diagnosis.id == "kv-too-small" and a1.next_settings["max_model_len"] == 168960
        assert a2.settings["max_model_len"] == 168960 and a2.diagnosis.id == "mamba-blocks"
        assert a3.settings == {**SETTINGS, "max_model_len": 168960, "max_num_seqs": 135}
    finally:
        out.engine.stop()
    logs = tmp_path / "logs"
    assert [p.name for p in sorted(logs.glob("attempt-*.log"))] == ["attempt-1.log", "attempt-2.log", "attempt-3.log"]
    first = (logs / "attempt-1.log").read_text()
    assert "--max-model-len 262144" in first and "diagnosis kv-too-small" in first
    assert "safer plan: max_model_len 262144 -> 168960" in first
    assert "--max-model-len 168960" in (logs / "attempt-3.log").read_text()
    summary = json.loads((logs / "attempts.json").read_text())
    assert [a["ok"] for a in summary] == [False, False, True]


def test_without_retry_the_safer_plan_is_offered_not_run(tmp_path):
    out = retry(tmp_path, retries=0)
    assert not out.ok and len(out.attempts) == 1 and not out.engine.alive()
    assert out.last.next_settings == {**SETTINGS, "max_model_len": 168960}


def test_retries_are_bounded(tmp_path):
    out = retry(tmp_path, retries=1)
    assert not out.ok and len(out.attempts) == 2
    assert out.last.diagnosis.id == "mamba-blocks" and out.last.next_settings["max_num_seqs"] == 135
    out = retry(tmp_path, retries=99, mode="kv-too-small")   # the same failure whatever the plan
    assert len(out.attempts) == 2                              # 168960 failed too: nothing smaller from the log
    assert out.last.next_settings is None


def test_no_retry_without_a_safer_plan(tmp_path):
    out = retry(tmp_path, retries=3, mode="unsupported-arch")
    assert len(out.attempts) == 1 and out.last.diagnosis.id == "unsupported-arch" and out.last.next_settings is None
    assert "CUDA 12.8" in out.last.diagnosis.fix


def test_relaunches_are_capped_whatever_retries_asks(tmp_path):
    from types import SimpleNamespace

    def launch(argv, env, *, log_path, **kw):   # an engine that always runs out of memory, without processes
        Path(log_path).write_text("started\n")
        lines = ["Model loading took 20 GiB", "torch.OutOfMemoryError: CUDA out of memory."]
        res = runner.LaunchResult(ok=False, stage="alive", failure="exited", message="exited", exit_code=1,
                                  timings={}, smoke=None, log_path=Path(log_path), lines=lines)
        return SimpleNamespace(result=res)

    out = dg.run_with_retries(lambda p: (["engine"], {}), PLAN, replan=stand_in_planner(), retries=99,
                              log_dir=tmp_path, launch=launch)
    assert len(out.attempts) == dg.MAX_RETRIES + 1
    assert [a.settings["max_num_seqs"] for a in out.attempts] == [256, 128, 64, 32, 16]
