"""The command line as users meet it: one-line errors, exit codes, readable output, auto."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "fake_engine.py"


def run(args, env=None, input=None):
    e = {**os.environ, "NO_COLOR": "1", "COLUMNS": "80", **(env or {})}
    return subprocess.run([sys.executable, "-m", "qwenplan.launch.cli", *args], capture_output=True, text=True,
                          env=e, input=input, timeout=120)


def test_explain_without_gpu_plans_llama_cpp_on_the_cpu():
    r = run(["explain", "--hardware", str(ROOT / "examples/hardware/no-gpu.json")])
    assert r.returncode == 0, r.stderr
    assert "llamacpp" in r.stdout and "llama-server" in r.stdout and "host RAM" in r.stdout   # a CPU plan
    assert "\x1b[" not in r.stdout
    assert not any(line != line.rstrip() for line in r.stdout.splitlines())


def test_explain_verbose_shows_decisions_memory_rejected_and_command():
    r = run(["explain", "--verbose", "--gpu", "4090"])
    assert r.returncode == 0, r.stderr
    for part in ("Decisions", "Memory per GPU", "Rejected", "Command", "source:", "vllm serve"):
        assert part in r.stdout
    # Piped: one line per logical line, so a URL is never split.
    assert "https://github.com/vllm-project/recipes/blob/main/models/Qwen/Qwen3.6-35B-A3B.yaml" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["plan", "--gpu", "RTX 9999"], "unknown GPU"),
    (["plan", "--gpu", "4090", "--engine", "tgi"], "unknown engine"),
    (["plan", "--gpu", "4090", "--engine", "vllm", "--engine-version", "0.16.0"], "support starts at 0.17.0"),
    (["plan", "--gpu", "4090", "--variant", "nope"], "unknown variant"),
    (["plan", "--gpu", "4090", "--extra-arg=--swap-space"], "does not accept --swap-space"),
    (["plan", "--gpu", "4090", "--context", "5000000"], "beyond what the model supports"),
    (["plan", "--hardware", "/nonexistent.json"], "nonexistent"),
])
def test_bad_input_is_one_line_with_a_fix(args, needle):
    r = run(args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr


def test_infeasible_plan_exits_3_and_json_is_versioned():
    r = run(["plan", "--json", "--gpu", "3060", "--variant", "bf16"])
    assert r.returncode == 3
    doc = json.loads(r.stdout)
    assert doc["schema"] == "qwenplan.plan/1" and doc["status"] == "infeasible" and doc["requirements"]


def test_variants_lists_every_variant_with_fit_or_reason():
    r = run(["variants", "--json", "--gpu", "H100"])
    rows = json.loads(r.stdout)
    assert sum(r["chosen"] for r in rows) == 1
    nvfp4 = next(r for r in rows if r["id"] == "nvfp4-nvidia")
    assert not nvfp4["fits"] and "compute capability" in nvfp4["summary"]


def test_planning_imports_no_engine_torch_or_hub():
    code = ("import sys; from qwenplan.launch.cli import main; main(['plan','--json','--gpu','4090']); "
            "bad=[m for m in ('vllm','sglang','torch','huggingface_hub') if m in sys.modules]; "
            "sys.stderr.write('IMPORTED:'+','.join(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stderr.strip().endswith("IMPORTED:")


# What planning never needs (issue 18, start-up time): the views (rich), package metadata and
# resources machinery, the launcher's processes and sockets. Counted by module, not by the clock,
# so a busy box cannot make it pass or fail.
NOT_FOR_PLANNING = ("rich", "importlib.metadata", "importlib.resources", "zipfile", "tempfile", "subprocess",
                    "http.client", "socket", "shutil", "qwenplan.launch.runner", "qwenplan.launch.export")


@pytest.mark.parametrize("args,also", [
    (["plan", "--json", "--gpu", "H100", "--gpus", "16"], ("psutil", "pynvml")),   # no probe for a named GPU
    (["plan", "--json", "--hardware", str(ROOT / "examples/hardware/no-gpu.json")], ()),
    (["plan", "--json"], None),           # the probe: psutil and pynvml bring subprocess, socket, tempfile
])
def test_planning_imports_only_what_it_uses(args, also):
    unused = NOT_FOR_PLANNING + also if also is not None else tuple(
        m for m in NOT_FOR_PLANNING if m not in ("subprocess", "socket", "tempfile", "shutil"))
    code = ("import sys, io, contextlib; from qwenplan.launch.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()): main({args!r})\n"
            f"print(','.join(m for m in {unused!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    """A `vllm` on PATH that is the fake engine, and a prepared HF cache with the checkpoint."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "vllm"
    exe.write_text(f"#!{sys.executable}\nimport runpy, sys\nsys.argv[0]={str(FAKE)!r}\nrunpy.run_path({str(FAKE)!r}, run_name='__main__')\n")
    exe.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}", "QWENPLAN_STATE_DIR": str(tmp_path / "state"),
            "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
            # auto and verify run only on GPUs the box has: the probe replays a recorded H100
            "PYTHONPATH": f"{ROOT / 'tests' / 'fakes' / 'nvml_here'}{os.pathsep}{ROOT}"}


def test_auto_dry_run_does_nothing(fake_vllm, tmp_path):
    port = free_port()
    r = run(["auto", "--dry-run", "--gpu", "H100", "--port", str(port)], env=fake_vllm)
    assert r.returncode == 0, r.stderr
    assert "vllm serve" in r.stdout
    assert not (tmp_path / "state").exists()        # no log, no store, no download


def test_auto_refuses_a_taken_port_before_anything(fake_vllm):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run(["auto", "--yes", "--gpu", "H100", "--port", str(port)], env=fake_vllm)
    assert r.returncode != 0 and "already in use" in r.stderr


def cached_config(tmp_path, repo="Qwen/Qwen3.6-35B-A3B-FP8"):
    """The config.json of the variant, as huggingface_hub would have cached it."""
    folder = tmp_path / "hub" / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text((ROOT / "profiles/configs/qwen3.6-35b-a3b.json").read_text())
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("a" * 40)


def test_verify_serves_dummy_weights_reports_and_stores(fake_vllm, tmp_path):
    cached_config(tmp_path)
    port = free_port()
    r = run(["verify", "--gpu", "H100", "--engine", "vllm", "--engine-version", "0.32.0", "--port", str(port)],
            env={**fake_vllm, "FAKE_ENGINE_MODE": "ok", "FAKE_ENGINE_WEIGHTS_GIB": "33.43"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "predicted / reported" in r.stdout
    listed = run(["calibration", "list"], env=fake_vllm)
    assert "--vllm-0.32.0--fp8--kv-auto--tp1: " in listed.stdout, listed.stdout   # GPU, engine, variant, KV, TP
    # a later plan on the same combination uses it, and says so
    explained = run(["explain", "--gpu", "H100", "--engine", "vllm", "--engine-version", "0.32.0"], env=fake_vllm)
    assert "measured on this box on" in explained.stdout
    assert run(["calibration", "clear"], env=fake_vllm).returncode == 0


def test_a_retry_serves_the_planners_safer_plan_and_stores_it_with_its_own_prediction(fake_vllm, tmp_path):
    """The engine runs out of memory at the planned fraction (0.92) and serves at 0.89: the retry
    is a new plan (lower fraction, half the sequences, re-sized), and the stored report sits
    beside that plan's prediction and settings, not the first plan's."""
    from qwenplan.launch.cli import load_hardware
    from qwenplan.launch.diagnose import served_options
    from qwenplan.launch.orchestrate import Replanner, build_plan

    cached_config(tmp_path)
    port = free_port()
    args = ["--gpu", "H100", "--engine", "vllm", "--engine-version", "0.32.0", "--port", str(port)]
    r = run(["verify", "--retry", "1", *args], env={**fake_vllm, "FAKE_ENGINE_MODE": "fit",
                                                    "FAKE_ENGINE_FIT_LEN": "10000000", "FAKE_ENGINE_FIT_UTILIZATION": "0.9"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "attempt 1:" in r.stderr and "served the safer plan: " in r.stdout
    assert "gpu_memory_utilization 0.92 -> 0.89" in r.stdout and "max_num_seqs 128 -> 64" in r.stdout

    # the same plans, made here: the first one, and the planner's safer one
    kw = dict(engine="vllm", engine_version="0.32.0", port=port)
    hw = load_hardware(gpu_names=("H100",))
    first = build_plan(hw, kw)
    safer = Replanner(hw, kw, first)({**served_options(first.to_dict()), "utilization": 0.89, "concurrency": 64},
                                     "the last start failed")
    assert any(d["key"] == "retry" for d in safer["decisions"]) and safer["performance"]
    (path, record), = _records(fake_vllm)
    obs = record["observations"][-1]
    assert obs["settings"]["gpu_memory_utilization"] == 0.89 and obs["settings"]["max_num_seqs"] == 64
    assert obs["predicted"] == {k: safer["memory"].get(k) for k in obs["predicted"]}
    assert obs["predicted"]["kv_cache_bytes"] != first.memory["kv_cache_bytes"]    # not the first plan's


def _records(env):
    """The calibration store's records, read as another process with `env` would."""
    code = "import json; from qwenplan.launch import calibration as c; print(json.dumps([[str(p), d] for p, d in c.records()[0]]))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=60)
    return json.loads(r.stdout)


CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAQWENPLANTEST0001", "DATABASE_URL": "postgres://u:pa55word@db.internal/x",
               "GITHUB_PAT": "ghp_qwenplanTESTtoken42", "HTTPS_PROXY": "http://user:pr0xy-pass@proxy:3128"}


def test_run_logs_hold_no_inherited_values_and_only_the_owner_can_read_them(fake_vllm, tmp_path):
    snap = tmp_path / "hub" / "models--Qwen--Qwen3.6-35B-A3B-FP8" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text((ROOT / "profiles/configs/qwen3.6-35b-a3b.json").read_text())
    (tmp_path / "hub" / "models--Qwen--Qwen3.6-35B-A3B-FP8" / "refs").mkdir()
    (tmp_path / "hub" / "models--Qwen--Qwen3.6-35B-A3B-FP8" / "refs" / "main").write_text("a" * 40)
    seen = tmp_path / "engine-env.json"
    r = run(["verify", "--gpu", "H100", "--engine", "vllm", "--engine-version", "0.32.0", "--port", str(free_port())],
            env={**fake_vllm, "FAKE_ENGINE_MODE": "ok", "FAKE_ENGINE_ENV_FILE": str(seen), **CREDENTIALS})
    assert r.returncode == 0, r.stdout + r.stderr
    logs = list((tmp_path / "state" / "runs").glob("*/attempt-*.log"))
    assert logs
    for log in logs:
        text = log.read_text()
        for name, value in CREDENTIALS.items():
            assert value not in text and name in text      # the name says what the engine inherited
        assert log.stat().st_mode & 0o777 == 0o600
        assert log.parent.stat().st_mode & 0o777 == 0o700
    inherited = json.loads(seen.read_text())             # the engine itself still gets them
    assert all(inherited.get(k) == v for k, v in CREDENTIALS.items())
    for out in (r.stdout, r.stderr):
        assert not any(v in out for v in CREDENTIALS.values())


def test_a_corrupt_calibration_file_is_set_aside(fake_vllm, tmp_path):
    d = tmp_path / "state" / "calibration"
    d.mkdir(parents=True)
    (d / "broken.json").write_text("{not json")
    r = run(["plan", "--gpu", "H100"], env=fake_vllm)
    assert r.returncode == 0
    assert "set aside" in r.stderr
    assert not (d / "broken.json").exists()


def test_multi_node_export_needs_and_takes_the_node_rank_and_head(tmp_path):
    r = run(["export", "systemd", "--gpu", "H100", "--nodes", "2"])
    assert r.returncode == 2 and "--node-rank" in r.stderr and "Traceback" not in r.stderr
    out = tmp_path / "node1.service"
    r = run(["export", "systemd", "--gpu", "H100", "--nodes", "2", "--node-rank", "1", "--head-addr", "10.0.0.5",
             "-o", str(out)])
    assert r.returncode == 0, r.stderr
    unit = out.read_text()
    assert "--node-rank 1" in unit and "10.0.0.5" in unit and "--headless" in unit


def test_k8s_and_compose_options_reach_the_manifest_and_stray_options_are_refused():
    r = run(["export", "k8s", "--gpu", "H100", "--secret-name", "hf-secrets", "--storage-class", "fast-ssd",
             "--storage-size", "120Gi"])
    assert r.returncode == 0, r.stderr
    assert "name: hf-secrets" in r.stdout and "storageClassName: fast-ssd" in r.stdout and "120Gi" in r.stdout
    r = run(["export", "compose", "--gpu", "H100", "--hf-cache", "/data/hf"])
    assert r.returncode == 0 and "/data/hf:" in r.stdout
    r = run(["export", "script", "--gpu", "H100", "--namespace", "x"])
    assert r.returncode == 2 and "--namespace" in r.stderr and "Traceback" not in r.stderr
