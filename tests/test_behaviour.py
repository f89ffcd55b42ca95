"""What a user would notice, one test per behaviour that a realistic one-line bug once broke
unnoticed (issue 21's table), asserted on the command's output and the documents it writes rather
than on internals, so the tests outlive a refactor of the modules behind them.

Each test names the planted bug it catches; tools/mutants.py replants them (tools/mutants.txt).
Expected figures come from sources independent of the code under test: profiles/*.yaml read here
with yaml, the on-disk tensor layout of a format, the real H100 in tests/fixtures/gpu-truth.
"""

from __future__ import annotations

import json
import math
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from qwenplan.launch import calibration, runner
from qwenplan.launch import diagnose as dg
from qwenplan.launch import export as ex
from qwenplan.launch.cli import main

from tests.conftest import capture, handed_port
from tests.fakes import fake_psutil, fake_pynvml
from tests.test_export import fake_venv, run_script, sd_environment, systemd_verify
from tests.test_runner import engine_pids, fake_argv, fake_env, gone, quiet

ROOT = Path(__file__).resolve().parent.parent
HARDWARE = ROOT / "examples" / "hardware"
MEMORY = yaml.safe_load((ROOT / "profiles" / "memory.yaml").read_text())
MiB, GiB = 1 << 20, 1 << 30
# cudaMemGetInfo's total on the real H100 of tests/fixtures/gpu-truth (torch.cuda.mem_get_info).
H100_CUDA_TOTAL = capture("h100-80gb-hbm3")["torch"]["devices"][0]["mem_get_info"][1]


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    """Each test's own calibration store, never the user's."""
    monkeypatch.setenv("QWENPLAN_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def qwenplan(capsys, *args: str) -> SimpleNamespace:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return SimpleNamespace(code=code, out=out.out, err=out.err)


def plan_json(capsys, *args: str) -> dict:
    r = qwenplan(capsys, "plan", "--json", *args)
    assert r.code == 0, r.err
    return json.loads(r.out)


def refused(capsys, *args: str) -> str:
    """A bad input: exit 2 and one line on stderr, which is returned."""
    r = qwenplan(capsys, *args)
    lines = r.err.strip().splitlines()
    assert r.code == 2 and len(lines) == 1 and "Traceback" not in r.err, (r.code, r.err)
    return lines[0]


def hardware_file(tmp_path: Path, gpus: list[dict], **host) -> Path:
    f = tmp_path / "box.json"
    f.write_text(json.dumps({"schema": "qwenplan.hardware/1", "gpus": gpus, "host": host}))
    return f


def flag_value(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


# --- launch/render.py: the command the plan becomes --------------------------------------------

def test_the_planned_kv_dtype_reaches_the_engine(capsys):
    """Bug: --kv-cache-dtype never rendered (the plan's fp8 KV silently not applied)."""
    for engine in ("vllm", "sglang"):
        doc = plan_json(capsys, "--gpu", "H100", "--engine", engine, "--kv-dtype", "fp8")
        assert doc["settings"]["kv_cache_dtype"] == "fp8"
        assert flag_value(doc["command"]["argv"], "--kv-cache-dtype").startswith("fp8"), engine


def test_picked_gpus_are_the_ones_the_engine_uses(capsys):
    """Bug: CUDA_DEVICE_ORDER dropped (CUDA's default order is fastest-first, not the PCI order
    nvidia-smi and NVML number GPUs by), and --gpu-ids 1 on a document without UUIDs became
    CUDA_VISIBLE_DEVICES=0: the engine ran on the GPU the user kept free."""
    doc = plan_json(capsys, "--hardware", HARDWARE / "2x-h200-nvlink.json", "--gpu-ids", "1")
    env = doc["command"]["env"]
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    compose = yaml.safe_load(ex.render_compose(doc))
    devices = compose["services"]["qwen"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["device_ids"] == ["1"]


def test_hf_token_is_a_secret_in_every_export(capsys):
    """Bug: HF_TOKEN no longer declared a secret env (gated downloads fail in the exports)."""
    doc = plan_json(capsys, "--gpu", "H100")
    assert "HF_TOKEN" in doc["command"]["secret_env"]
    script = ex.render_script(doc)
    assert "HF_TOKEN" in script
    k8s = list(yaml.safe_load_all(ex.render_k8s(doc)))
    dep = next(d for d in k8s if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    refs = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in dep.get("env", [])}
    assert refs.get("HF_TOKEN"), refs


def test_sglang_speculation_drafts_one_token_more_than_its_steps(capsys):
    """SGLang's EAGLE/MTP with top-k 1 verifies num_steps + 1 draft tokens
    (https://docs.sglang.ai/advanced_features/speculative_decoding.html)."""
    doc = plan_json(capsys, "--gpu", "H200", "--engine", "sglang", "--variant", "bf16")
    argv = doc["command"]["argv"]
    steps = int(flag_value(argv, "--speculative-num-steps"))
    assert steps == doc["settings"]["speculative"]["num_speculative_tokens"] == 2
    assert int(flag_value(argv, "--speculative-num-draft-tokens")) == steps + 1


def test_expert_parallel_spans_every_rank_of_the_document(capsys):
    """A plan document that asks SGLang for expert parallelism (edited by hand: qwenplan's own
    plans keep it off) spreads the experts over TP x DP ranks."""
    from qwenplan.launch.render import render

    doc = plan_json(capsys, "--hardware", HARDWARE / "2x-h200-nvlink.json", "--engine", "sglang")
    doc["settings"].update(expert_parallel=True, tensor_parallel=1, data_parallel=2)
    assert flag_value(render(doc)["argv"], "--ep-size") == "2"
    doc["settings"].update(tensor_parallel=2, data_parallel=1)
    assert flag_value(render(doc)["argv"], "--ep-size") == "2"


# --- launch/runner.py: the engine's life, against the fake engine ---------------------------------

def launch(tmp_path, mode="ok", env=None, **kw):
    port, handoff = handed_port()
    opts, lines, _ = quiet(ready_timeout_s=kw.pop("ready_timeout_s", 15), grace_s=kw.pop("grace_s", 3), **kw)
    eng = runner.launch(fake_argv(port), {**fake_env(tmp_path, mode), **handoff, **(env or {})},
                        log_path=tmp_path / "engine.log", host="127.0.0.1", port=port, served_name="model",
                        forward_signals=False, check=False, **opts)
    return eng, lines


def test_secret_values_the_engine_prints_never_reach_the_log(tmp_path, monkeypatch):
    """Bug: secret env values not redacted in the run log. The engine prints its whole
    environment and argv (FAKE_ENGINE_ECHO); the plan's secrets and inherited ones are scrubbed."""
    monkeypatch.setenv("HF_TOKEN", "hf_inheritedTOKENvalue42")
    eng, lines = launch(tmp_path, env={"FAKE_ENGINE_ECHO": "1", "VLLM_API_KEY": "sk-plan-secret-0042",
                                       "TOKENIZERS_PARALLELISM": "false"}, api_key="sk-plan-secret-0042")
    try:
        assert eng.result.ok, eng.result.message
    finally:
        eng.stop()
    log = (tmp_path / "engine.log").read_text()
    shown = "\n".join(lines)
    assert "environ: HF_TOKEN=***" in log and "environ: VLLM_API_KEY=***" in log     # the engine did print them
    assert "environ: TOKENIZERS_PARALLELISM=false" in log                            # and what is no secret stays
    for secret in ("hf_inheritedTOKENvalue42", "sk-plan-secret-0042"):
        assert secret not in log and secret not in shown


def test_a_smoke_test_without_tokens_is_not_ready(tmp_path):
    """Bug: a smoke test that got no tokens counts as ready."""
    eng, _ = launch(tmp_path, env={"FAKE_ENGINE_NO_TOKENS": "1"})
    r = eng.result
    assert not r.ok and r.failure == "smoke" and "no tokens" in r.message
    assert gone(engine_pids(tmp_path))


def test_stop_leaves_no_worker_of_the_engine_behind(tmp_path):
    """Bug: leftover process-group members not killed after stop. The API server exits on
    SIGTERM; its EngineCore ignores it (a stuck worker) and must still be gone."""
    eng, _ = launch(tmp_path, env={"FAKE_ENGINE_CORE_STUCK": "1"})
    assert eng.result.ok, eng.result.message
    pids = engine_pids(tmp_path)
    assert eng.stop(grace_s=0.5) == 0                # the API server itself exited cleanly
    assert gone(pids)


def test_an_engine_that_never_gets_ready_is_given_up_on_time(tmp_path):
    """Bug: readiness timeout 60x too long."""
    t0 = time.monotonic()
    eng, _ = launch(tmp_path, "hang", ready_timeout_s=1.0)
    assert eng.result.failure == "timeout" and not eng.result.ok
    assert time.monotonic() - t0 < 10
    assert gone(engine_pids(tmp_path))


# --- launch/export.py: environment values survive each format's quoting ----------------------------

NASTY_ENV = "0 1;$(touch /tmp/qwenplan-pwned) `id` 'q' \"dq\" $HOME %h 100% \\ ${PATH}"


def nasty_env_plan() -> dict:
    plan = json.loads((ROOT / "examples" / "exports" / "plans" / "vllm-h100-fp8.json").read_text())
    plan["command"]["env"] = {**plan["command"]["env"], "CUDA_VISIBLE_DEVICES": NASTY_ENV}
    return plan


def test_script_env_values_reach_the_engine_unchanged(tmp_path):
    """Bug: script env values not quoted."""
    r = run_script(tmp_path, ex.render_script(nasty_env_plan()), env={"HF_TOKEN": "x"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["env"]["CUDA_VISIBLE_DEVICES"] == NASTY_ENV


def test_systemd_environment_values_reach_the_engine_unchanged(tmp_path):
    """Bug: systemd Environment= values not quoted or escaped (systemd splits on spaces and
    expands % specifiers)."""
    unit = ex.render_systemd(nasty_env_plan(), venv=str(fake_venv(tmp_path)))
    assert sd_environment(unit)["CUDA_VISIBLE_DEVICES"] == NASTY_ENV
    systemd_verify(tmp_path, unit, "qwen-nasty.service")


# --- launch/calibration.py: what the engine reported ---------------------------------------------

def reported(plan: dict, weights: int, **more) -> dict:
    m = plan["memory"]
    return {"weights_bytes": weights, "activation_bytes": m["activation_bytes"], "non_torch_bytes": m["non_torch_bytes"],
            "cudagraph_estimate_bytes": m["cudagraph_bytes"], **more}


H100_VLLM = ("--gpu", "H100", "--engine", "vllm", "--engine-version", "0.32.0")


def test_the_latest_engine_report_is_the_one_plans_use(capsys):
    """Bug: the oldest calibration used, not the latest."""
    formula = plan_json(capsys, *H100_VLLM)
    w = formula["memory"]["weights_bytes"]
    for n in range(20):                              # the store keeps the last 20 reports
        calibration.record(formula, reported(formula, w + (300 + n) * MiB), source=f"older run {n}")
    calibration.record(formula, reported(formula, w + 100 * MiB), source="newer run")
    doc = plan_json(capsys, *H100_VLLM)
    assert doc["memory"]["weights_bytes"] == w + 100 * MiB
    assert "newer run" in next(d["reason"] for d in doc["decisions"] if d["key"] == "memory_model")


def test_a_calibration_file_of_another_kind_is_set_aside(capsys, state):
    formula = plan_json(capsys, *H100_VLLM)
    path = calibration.record(formula, reported(formula, formula["memory"]["weights_bytes"] + GiB), source="run")
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "schema": "somebody-else/1"}))
    r = qwenplan(capsys, "plan", "--json", *H100_VLLM)
    assert r.code == 0 and "set aside" in r.err
    assert json.loads(r.out)["memory"]["weights_bytes"] == formula["memory"]["weights_bytes"]
    assert not path.exists()


def test_graph_and_activation_memory_measured_at_another_shape_are_not_reused(capsys):
    """Bug: measured graph memory reused for a different shape (the sequence cap sizes both)."""
    formula = plan_json(capsys, *H100_VLLM)
    m = formula["memory"]
    other = json.loads(json.dumps(formula))
    other["settings"]["max_num_seqs"] = formula["settings"]["max_num_seqs"] + 100
    calibration.record(other, reported(formula, m["weights_bytes"], cudagraph_estimate_bytes=5 * GiB,
                                       activation_bytes=9 * GiB), source="a run at another shape")
    doc = plan_json(capsys, *H100_VLLM)
    assert any(d["key"] == "memory_model" and "measured" in str(d["value"]) for d in doc["decisions"])
    assert doc["memory"]["cudagraph_bytes"] == m["cudagraph_bytes"]
    assert doc["memory"]["activation_bytes"] == m["activation_bytes"]


def test_a_miss_beyond_ten_percent_is_reported_and_a_small_one_is_not():
    """Bug: the calibration miss threshold 10x looser."""
    gib100 = 100 * GiB
    missed = calibration.compare({"weights_bytes": int(gib100 * 1.15), "kv_cache_bytes": int(gib100 * 0.95)},
                                 {"weights_bytes": gib100, "kv_cache_bytes": gib100})
    assert len(missed) == 1 and missed[0].startswith("weights_bytes") and "+15%" in missed[0]
    assert calibration.compare({"kv_cache_tokens": 89_000}, {"kv_tokens": 100_000}) != []
    assert calibration.compare({"kv_cache_tokens": 95_000}, {"kv_tokens": 100_000}) == []


# --- planner/hardware.py: a hardware document that cannot be true is refused ------------------------

H100 = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_total_bytes": 85520809984}


@pytest.mark.parametrize("gpus, host, field", [
    ([{**H100, "memory_total_bytes": -1}], {}, "memory_total_bytes"),
    ([H100], {"ram_total_bytes": -(64 * GiB)}, "ram_total_bytes"),
    ([{**H100, "memory_free_bytes": 85520809984 + GiB}], {}, "memory_free_bytes"),
    ([{**H100, "nvlink_peers": [0]}], {}, "nvlink_peers"),
    ([{**H100, "nvlink_peers": [1]}, {**H100, "index": 1, "nvlink_peers": [1]}], {}, "nvlink_peers"),
])
def test_impossible_hardware_documents_are_refused(tmp_path, capsys, gpus, host, field):
    """Bugs: negative sizes accepted; a GPU's free memory larger than its total accepted; a GPU
    listed as its own NVLink peer accepted."""
    line = refused(capsys, "plan", "--hardware", hardware_file(tmp_path, gpus, **host))
    assert field in line


def test_an_imagined_h100_has_no_more_memory_than_a_real_one(capsys):
    """Bug: the assumed driver reserve 10 % larger (or smaller). An H100 named with --gpu is
    planned with at most the CUDA total a real H100 reported, and within 64 MiB of it."""
    doc = plan_json(capsys, "--gpu", "H100")
    planned = doc["memory"]["gpus"][0]["total_bytes"]
    assert 0 <= H100_CUDA_TOTAL - planned <= 64 * MiB, (H100_CUDA_TOTAL - planned) / MiB


# --- planner/memory.py, sizing.py, weights.py: the sizes, from independent arithmetic ----------------

def test_the_longest_request_that_fits_counts_its_state_blocks():
    """Bug: max_model_len ignores the DeltaNet state blocks. By definition: a request of the
    longest length fits the cache, one block longer does not."""
    from qwenplan.planner.memory import vllm_layout
    from qwenplan.planner.model import get_model

    shape = get_model("qwen3.6-35b-a3b").shape
    for kv, spec in (("bfloat16", 0), ("fp8", 0), ("bfloat16", 2)):
        lay = vllm_layout(shape, kv, num_spec=spec, extra_attention_layers=1 if spec else 0)
        for kv_bytes in (int(3.26 * GiB), 20 * GiB, 60 * GiB):
            longest = lay.max_model_len(kv_bytes)
            assert lay.bytes_per_request(longest) <= kv_bytes < lay.bytes_per_request(longest + lay.block_size)


def test_pipeline_parallel_halves_the_weights_per_gpu(capsys):
    """Bug: pipeline parallelism does not split the weights. Two stages of 20 of the 40 layers."""
    one = plan_json(capsys, "--gpu", "H100", "--variant", "fp8", "--context", "32768")
    two = plan_json(capsys, "--gpu", "H100", "--variant", "fp8", "--context", "32768", "--nodes", "2")
    assert two["parallel"]["pipeline"] == 2 and one["parallel"]["pipeline"] == 1
    overhead = MEMORY["vllm"]["load_overhead_bytes"]
    w1, w2 = one["memory"]["weights_bytes"] - overhead, two["memory"]["weights_bytes"] - overhead
    assert w2 == int(w1 * 20 / 40)
    assert two["memory"]["kv_bytes_per_token"] == one["memory"]["kv_bytes_per_token"] // 2   # 5 of 10 attention layers


def test_data_parallel_ranks_count_as_multi_gpu_non_torch_memory(capsys):
    """Bug: multi-GPU non-torch memory ignores DP (2x H200 DP 2 measured 0.13 GiB, profiles/memory.yaml).
    Which layout the planner picks for two GPUs moves with the speed model: each one is sized here."""
    from qwenplan.planner.sizing import Candidate, size
    from qwenplan.planner.variants import get_variant

    v = get_variant("fp8")
    for tp, dp in ((1, 2), (2, 1), (1, 1)):
        s = size(Candidate(v, "vllm", "0.32.0", tp=tp, dp=dp), 100 * GiB, True)
        want = MEMORY["vllm"]["non_torch_multi_gpu_bytes" if tp * dp > 1 else "non_torch_bytes"]
        assert s.non_torch == want, (tp, dp)
    single = plan_json(capsys, "--hardware", HARDWARE / "h200.json")
    assert single["memory"]["non_torch_bytes"] == MEMORY["vllm"]["non_torch_bytes"]


def test_sglang_data_parallel_ranks_are_full_replicas():
    """SGLang's DP runs independent replicas (profiles/memory.yaml dp_shards_experts: false):
    each GPU of DP 2 holds all the weights one GPU alone holds, where vLLM's DP shares the experts."""
    from qwenplan.planner.sizing import Candidate, weights_on_gpu
    from qwenplan.planner.variants import get_variant

    assert MEMORY["sglang"]["dp_shards_experts"] is False and MEMORY["vllm"]["dp_shards_experts"] is True
    v = get_variant("fp8")
    for engine, version in (("sglang", "0.5.23"), ("vllm", "0.32.0")):
        one, two = (weights_on_gpu(Candidate(v, engine, version, dp=dp))[0] for dp in (1, 2))
        assert (two == one) == (engine == "sglang"), engine


def test_graphs_outside_the_budget_before_vllm_0_20(capsys):
    """vLLM before 0.20 does not profile CUDA graphs: their memory sits beside the budget, and
    the split still adds up (graphs + budget + headroom = the GPU's CUDA total)."""
    from tests.test_plans import assert_within_budget

    doc = plan_json(capsys, "--gpu", "H100", "--engine", "vllm", "--engine-version", "0.19.1", "--variant", "fp8")
    assert doc["memory"]["cudagraph_in_budget"] is False and not doc["settings"]["enforce_eager"]
    assert doc["memory"]["cudagraph_bytes"] > 0
    assert_within_budget(doc)


def test_long_context_caps_sequences_at_what_the_pool_holds(capsys):
    """The long-context goal caps max_num_seqs at the requests of its typical length that the
    cache holds with their KV and DeltaNet state (vLLM pages more, in whole blocks): on a 4090
    one 131,072-token request, not the goal's cap of 8."""
    goal = yaml.safe_load((ROOT / "profiles" / "goals.yaml").read_text())["goals"]["long-context"]
    seqs = {}
    for gpu in ("4090", "RTX 5090", "A100 40GB"):
        doc = plan_json(capsys, "--gpu", gpu, "--goal", "long-context")
        m, st = doc["memory"], doc["settings"]
        typical = min(st["max_model_len"], goal["typical_tokens"])
        need = st["max_num_seqs"] * (typical * m["kv_bytes_per_token"] + m["state_bytes_per_seq"])
        assert need <= m["kv_cache_bytes"], (gpu, st["max_num_seqs"], need / GiB, m["kv_cache_bytes"] / GiB)
        seqs[gpu] = st["max_num_seqs"]
    assert min(seqs.values()) < goal["max_seqs"], seqs        # the pool, not the cap, decided somewhere


def test_yarn_exactly_beyond_the_native_context(capsys):
    """The card's static YaRN is needed for any context beyond the native 262,144 tokens, and
    only then."""
    longer = plan_json(capsys, "--hardware", HARDWARE / "h200.json", "--context", "393216")
    rope = longer["settings"]["hf_overrides"]["text_config"]["rope_parameters"]
    assert rope["rope_type"] == "yarn" and rope["factor"] == 2.0
    assert longer["command"]["env"]["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] == "1"
    native = plan_json(capsys, "--hardware", HARDWARE / "h200.json", "--context", "262144")
    assert native["settings"]["hf_overrides"] is None


def test_gptq_weight_bytes_are_its_on_disk_tensors():
    """Bug: quantization zero points not counted in weight bytes. GPTQ 4-bit, group 128, stores
    per [out, in] weight: qweight int32 [in/8, out], qzeros int32 [in/128, out/8], scales fp16
    [in/128, out], g_idx int32 [in] (AutoGPTQ's QuantLinear)."""
    from qwenplan.planner.model import Tensor
    from qwenplan.planner.weights import formats

    rows, cols, count = 512, 2048, 3       # an expert's down projection, three of them
    t = Tensor("experts", rows, cols, count)
    on_disk = count * (cols // 8 * rows * 4 + cols // 128 * rows // 8 * 4 + cols // 128 * rows * 2 + cols * 4)
    gptq = [f for f in formats().values() if f.g_idx and f.zero_bits == 4 and f.group == 128]
    assert gptq
    for f in gptq:
        assert f.bytes(t) == on_disk, f.id


# --- planner/decide.py: the choices a user sees -------------------------------------------------------

def test_a_busy_gpu_keeps_the_safety_margin_free(tmp_path, capsys):
    """Bug: the busy-GPU budget ignores its safety margin. Other processes hold 10 GiB of an H100:
    the budget leaves the margin of profiles/memory.yaml free, and is the largest 0.01 step that does."""
    total = 85520809984                                  # NVML's total of an H100 80GB HBM3
    free = total - 10 * GiB
    f = hardware_file(tmp_path, [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                                  "memory_total_bytes": total, "memory_free_bytes": free,
                                  "memory_reserved_bytes": 0}], ram_total_bytes=256 * GiB)
    doc = plan_json(capsys, "--hardware", f, "--engine", "vllm")
    margin = MEMORY["vllm"]["free_margin_bytes"]
    gmu = doc["settings"]["gpu_memory_utilization"]
    assert gmu == math.floor((free - margin) / total * 100) / 100
    assert doc["memory"]["per_gpu_budget_bytes"] <= free - margin


def test_fp8_kv_needs_compute_capability_8(capsys):
    """Bug: fp8 KV accepted below compute capability 8.0 (Turing has no FP8 KV kernels)."""
    line = refused(capsys, "plan", "--gpu", "2080 Ti", "--gpus", "4", "--engine", "sglang", "--kv-dtype", "fp8")
    assert "compute capability 8.0" in line
    planned = []
    for n in ("1", "2", "4", "8"):
        r = qwenplan(capsys, "plan", "--json", "--gpu", "2080 Ti", "--gpus", n, "--engine", "sglang")
        assert r.code in (0, 3), r.err
        if r.code == 0:
            planned.append(json.loads(r.out)["settings"]["kv_cache_dtype"])
    assert planned and set(planned) == {"auto"}, planned


def test_serving_on_a_public_address_warns(capsys):
    """Bug: no warning when serving on a public address."""
    public = plan_json(capsys, "--gpu", "H100", "--host", "0.0.0.0")
    assert any("reachable from other machines" in w and "VLLM_API_KEY" in w for w in public["warnings"])
    local = plan_json(capsys, "--gpu", "H100")
    assert not any("reachable from other machines" in w for w in local["warnings"])


@pytest.mark.parametrize("option, value", [("--context", "512"), ("--concurrency", "0"), ("--nodes", "0")])
def test_numbers_too_small_to_serve_are_refused(capsys, option, value):
    """Bug: a tiny --context accepted (and a concurrency or node count of 0)."""
    assert option in refused(capsys, "plan", "--gpu", "H100", option, value)


def test_tensor_parallel_over_pcie_warns_and_over_nvlink_does_not(tmp_path, capsys):
    """Two RTX 3090s (24 GB each: the model needs both), with and without their NVLink bridge."""
    def two_3090s(bridged: bool) -> Path:
        gpus = [{"index": i, "name": "NVIDIA GeForce RTX 3090", "nvlink_peers": [1 - i] if bridged else []}
                for i in (0, 1)]
        return hardware_file(tmp_path, gpus, ram_total_bytes=128 * GiB)

    pcie = plan_json(capsys, "--hardware", two_3090s(False))
    assert pcie["parallel"]["tensor"] == 2 and any("over PCIe" in w for w in pcie["warnings"])
    nvlink = plan_json(capsys, "--hardware", two_3090s(True))
    assert nvlink["parallel"]["tensor"] == 2 and not any("over PCIe" in w for w in nvlink["warnings"])


# --- planner/flags.py -------------------------------------------------------------------------------

def test_an_unlisted_patch_release_is_checked_against_the_older_one(capsys):
    """Bug: the flag set of a newer patch release used for an older one. vLLM 0.20.1 is not on
    file; 0.20.0 and 0.20.2 are: a flag added in 0.20.2 may not exist in 0.20.1."""
    doc = plan_json(capsys, "--gpu", "H100", "--engine", "vllm", "--engine-version", "0.20.1")
    assert doc["command"]["flags_checked_against"] == "0.20.0"


# --- launch/diagnose.py ------------------------------------------------------------------------------

def test_a_retry_never_repeats_a_plan_already_tried(tmp_path):
    """Bug: a retry may repeat a plan already tried. SGLang at one sequence: 0.85 has too little
    memory for the pool (raise the fraction: 0.88), 0.88 runs out of memory (lower it, and
    max_num_seqs cannot halve below 1): the only safer plan left is the first one, already tried."""
    def launch_stub(argv, env, *, log_path, **kw):
        Path(log_path).write_text("started\n")
        fraction = float(argv[argv.index("--mem-fraction-static") + 1])
        lines = (["RuntimeError: Not enough memory. Please try to increase --mem-fraction-static."]
                 if fraction < 0.87 else ["Load weight end. mem usage=17.9 GB",
                                          "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."])
        res = runner.LaunchResult(ok=False, stage="alive", failure="exited", message="exited", exit_code=1,
                                  timings={}, smoke=None, log_path=Path(log_path), lines=lines)
        return SimpleNamespace(result=res)

    settings = {"max_model_len": 32768, "max_num_seqs": 1, "gpu_memory_utilization": 0.85, "enforce_eager": False,
                "speculative": None, "kv_cache_dtype": "auto", "expert_cache_size": None}
    def replan(options, because):   # a stand-in for the planner: the fraction asked for
        return {"settings": {**settings, "gpu_memory_utilization": options["utilization"]}}

    out = dg.run_with_retries(lambda p: (["sglang", "--mem-fraction-static", str(p["settings"]["gpu_memory_utilization"])],
                                         {}), {"settings": settings}, replan=replan, retries=3, log_dir=tmp_path,
                              launch=launch_stub)
    assert [a.settings["gpu_memory_utilization"] for a in out.attempts] == [0.85, 0.88]
    assert out.last.diagnosis.id == "oom" and out.last.next_settings is None


# --- the commands nobody ran: probe, gpus, --gpu-ids, doctor ------------------------------------------

@pytest.fixture
def box(monkeypatch, tmp_path):
    """This process's NVML and psutil answer as the machine of a capture did (the real probe code runs)."""
    def use(name: str):
        data = capture(name)
        monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml.make(data))
        monkeypatch.setitem(sys.modules, "psutil", fake_psutil.make(data))
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        return data
    return use


def test_probe_on_the_command_line(box, capsys):
    data = box("synthetic-2x-h200-nvlink")
    r = qwenplan(capsys, "probe", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["schema"] == "qwenplan.hardware/1"
    assert [g["uuid"] for g in doc["gpus"]] == [d["uuid"] for d in data["devices"]]
    assert [g["nvlink_peers"] for g in doc["gpus"]] == [[1], [0]]
    table = qwenplan(capsys, "probe")
    assert table.code == 0 and table.out.count("H200") >= 2


def test_probe_json_is_a_hardware_file_elsewhere(box, capsys, tmp_path):
    box("synthetic-2x-h200-nvlink")
    r = qwenplan(capsys, "probe", "--json")
    f = tmp_path / "probed.json"
    f.write_text(r.out)
    doc = plan_json(capsys, "--hardware", f)
    assert doc["parallel"]["data"] * doc["parallel"]["tensor"] == 2


def test_gpu_ids_on_a_probed_box_pick_those_gpus(box, capsys):
    data = box("synthetic-2x-h200-nvlink")
    r = qwenplan(capsys, "probe", "--json", "--gpu-ids", "1")
    (gpu,) = json.loads(r.out)["gpus"]
    assert gpu["uuid"] == data["devices"][1]["uuid"] and gpu["nvlink_peers"] == []
    doc = plan_json(capsys, "--gpu-ids", "1")
    assert doc["command"]["env"]["CUDA_VISIBLE_DEVICES"] == data["devices"][1]["uuid"]
    assert "GPU 2" in refused(capsys, "plan", "--gpu-ids", "2")
    assert "--gpu-ids" in refused(capsys, "plan", "--gpu-ids", "1,1")
    assert "--gpu-ids" in refused(capsys, "plan", "--gpu-ids", "one")


def test_gpus_lists_the_profiles(capsys):
    r = qwenplan(capsys, "gpus", "--json")
    assert r.code == 0
    rows = {g["name"]: g for g in json.loads(r.out)}
    known = yaml.safe_load((ROOT / "profiles" / "gpus.yaml").read_text())
    assert len(rows) == len({g["name"] for g in known["gpus"]})
    assert rows["NVIDIA GeForce RTX 4090"]["compute_capability"] == "8.9"
    table = qwenplan(capsys, "gpus")
    assert table.code == 0 and "RTX 4090" in table.out and "H100" in table.out


def test_doctor_fails_what_is_missing_and_passes_a_ready_box(tmp_path, capsys):
    ready = tmp_path / "ready.json"
    ready.write_text(json.dumps({"schema": "qwenplan.hardware/1", "gpus": [H100],
                                 "host": {"ram_total_bytes": 256 * GiB, "disk_free_bytes": 500 * GiB,
                                          "disk_path": "/hf", "shm_bytes": 64 * GiB},
                                 "driver": {"version": "580.95.05", "cuda": "13.0"},
                                 "engines": {"vllm": "0.32.0"}}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = qwenplan(capsys, "doctor", "--no-parse", "--hardware", ready, "--engine", "vllm", "--port", port)
    assert r.code == 0, r.out + r.err
    checks = {line.split(":")[0].split()[-1]: line.split()[0] for line in r.out.splitlines()}
    assert checks == {"driver": "ok", "engine": "ok", "port": "ok", "disk": "ok"}, r.out
    assert f"127.0.0.1:{port} is free" in r.out and "vLLM 0.32.0" in r.out
    # no engine, an old driver, a taken port: each fails with its fix, exit 1
    bare = json.loads(ready.read_text())
    bare.update(driver={"version": "535.54.03", "cuda": "12.2"}, engines={})
    ready.write_text(json.dumps(bare))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = qwenplan(capsys, "doctor", "--no-parse", "--hardware", ready, "--engine", "vllm", "--port", port)
    assert r.code == 1
    fails = [line for line in r.out.splitlines() if line.startswith("fail")]
    assert any("driver 535.54.03 is older than 580" in x for x in fails)
    assert any("vLLM is not installed" in x and "pip install vllm==0.32.0" in x for x in fails)
    assert any(f"127.0.0.1:{port} is taken" in x and "--port" in x for x in fails)

