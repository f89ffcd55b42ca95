"""The first hour of a new user (issue 17): verify with a real-shaped vLLM, `auto` in the
foreground, a one-screen explain, and every bad input one line with the right exit code."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "fake_engine.py"
CONFIG = ROOT / "profiles" / "configs" / "qwen3.6-35b-a3b.json"


def run(args, env=None, input=None, timeout=120):
    e = {**os.environ, "NO_COLOR": "1", "COLUMNS": "80", **(env or {})}
    return subprocess.run([sys.executable, "-m", "qwenplan.launch.cli", *args], capture_output=True, text=True,
                          env=e, input=input, timeout=timeout, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cache_config(hub: Path, repo: str) -> None:
    """config.json of `repo` in a Hugging Face cache, as huggingface_hub leaves it."""
    base = hub / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(CONFIG.read_text())
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("a" * 40)


@pytest.fixture
def fake_vllm(tmp_path):
    """`vllm` on PATH is the stand-in engine (as vLLM 0.26.0 when asked), a private state folder,
    and an offline HF cache holding only config.json of the checkpoints."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "vllm"
    exe.write_text(f"#!{sys.executable}\nimport runpy, sys\nsys.argv[0]={str(FAKE)!r}\n"
                   f"runpy.run_path({str(FAKE)!r}, run_name='__main__')\n")
    exe.chmod(0o755)
    for repo in ("Qwen/Qwen3.6-35B-A3B-FP8", "Qwen/Qwen3.6-35B-A3B"):
        cache_config(tmp_path / "hub", repo)
    # auto and verify run only on GPUs the probe sees: NVML replays the recorded H100 here
    return {"PATH": f"{bindir}:{os.environ['PATH']}", "QWENPLAN_STATE_DIR": str(tmp_path / "state"),
            "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": f"{ROOT / 'tests' / 'fakes' / 'nvml_here'}{os.pathsep}{ROOT}"}


# --- item 8: verify with dummy weights -------------------------------------------------------


def test_verify_leaves_out_the_parsers_keeps_extra_args_and_takes_the_only_engine_of_a_version(fake_vllm, tmp_path):
    """vLLM 0.26 stops at start when the parsers come with --skip-tokenizer-init (the stand-in
    does too); `--engine-version 0.26.0` alone is vLLM's release, so it plans for vLLM."""
    seen = tmp_path / "argv.json"
    r = run(["verify", "--engine-version", "0.26.0", "--port", str(free_port()),
             "--extra-arg=--gdn-prefill-backend=triton"],
            env={**fake_vllm, "FAKE_ENGINE_VERSION": "0.26.0", "FAKE_ENGINE_ARGV_FILE": str(seen)})
    assert r.returncode == 0, r.stdout + r.stderr
    argv = json.loads(seen.read_text())
    assert "--skip-tokenizer-init" in argv and "--load-format" in argv
    assert not {"--reasoning-parser", "--tool-call-parser", "--enable-auto-tool-choice"} & set(argv)
    assert "--gdn-prefill-backend=triton" in argv
    assert "stored in" in r.stdout


def test_the_plan_itself_keeps_its_parsers():
    r = run(["plan", "--json", "--gpu", "H200", "--engine", "vllm", "--engine-version", "0.26.0"])
    argv = json.loads(r.stdout)["command"]["argv"]
    assert "--reasoning-parser" in argv and "--tool-call-parser" in argv and "--skip-tokenizer-init" not in argv


@pytest.mark.parametrize("version,needle", [("0.19.0", "could be vllm or vllm-offload"),
                                            ("9.9.9", "--engine-version needs --engine")])
def test_an_engine_version_that_several_engines_have_needs_the_engine(version, needle):
    r = run(["verify", "--gpu", "H200", "--engine-version", version])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "--engine vllm" in lines[0]


def test_an_sglang_release_plans_for_sglang():
    r = run(["plan", "--json", "--gpu", "H200", "--engine-version", "0.5.20"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["engine"]["name"] == "sglang"


def test_the_gpu_harness_drops_what_verify_drops():
    """benchmarks/gpu/runner.py reads the same rule (profiles/engines.yaml without_tokenizer)."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
    try:
        import runner
    finally:
        sys.path.pop(0)
    from qwenplan.launch.render import tokenizer_flags

    plan = json.loads((ROOT / "benchmarks/gpu/plans/h100/default.json").read_text())
    cmd, _, changes = runner.served_command({"name": "x"}, plan)
    assert {"--reasoning-parser", "--tool-call-parser"} <= set(plan["command"]["argv"])
    dropped = {f for f, _ in tokenizer_flags("vllm", plan["engine"]["version"])}
    assert dropped and not dropped & set(cmd)
    assert any("get_vocab" in c["why"] for c in changes)


# --- item 1: auto stays in the foreground ------------------------------------------------------


def cache_weights(hub: Path, repo: str) -> None:
    """A snapshot the cache check takes as complete: config.json and one whole (empty) shard."""
    snap = next((hub / ("models--" + repo.replace("/", "--")) / "snapshots").iterdir())
    header = b"{}"
    (snap / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)


from tests.test_runner import running  # noqa: E402  (alive and not a zombie)


class Auto:
    """`qwenplan auto --yes` with the stand-in engine, its output read as it comes."""

    def __init__(self, fake_vllm, tmp_path, *args, env=None):
        import queue
        import threading

        for repo in ("Qwen/Qwen3.6-35B-A3B-FP8", "Qwen/Qwen3.6-35B-A3B"):
            cache_weights(tmp_path / "hub", repo)
        self.pids_file = tmp_path / "pids.json"
        self.port = free_port()
        e = {**os.environ, "NO_COLOR": "1", **fake_vllm, "FAKE_ENGINE_DELAY": "0.1",
             "FAKE_ENGINE_PIDS_FILE": str(self.pids_file), **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "qwenplan.launch.cli", "auto", "--yes",
                                      "--engine", "vllm", "--port", str(self.port), *args],
                                     env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, keep in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, keep), daemon=True).start()

    def _read(self, stream, keep):
        for line in stream:
            keep.append(line.rstrip("\n"))
            self.lines.put(line)

    def until(self, text: str, timeout: float = 90.0) -> None:
        import queue
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if text in self.lines.get(timeout=max(0.01, deadline - time.monotonic())):
                    return
            except queue.Empty:
                break
        raise AssertionError(f"no {text!r}: {self.out[-20:]} {self.err[-20:]}")

    def engine_pids(self) -> list[int]:
        return json.loads(self.pids_file.read_text())

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.parametrize("sig,code", [(15, 143), (2, 130)])
def test_auto_serves_in_the_foreground_and_a_signal_leaves_nothing(fake_vllm, tmp_path, sig, code):
    auto = Auto(fake_vllm, tmp_path, env={"VLLM_API_KEY": "sk-first-hour-secret-0042"})
    try:
        auto.until("Ctrl-C to stop")
        pids = auto.engine_pids()
        with pytest.raises(subprocess.TimeoutExpired):
            auto.proc.wait(timeout=5)                  # still serving 5 s after ready
        assert all(running(p) for p in pids)
        out = "\n".join(auto.out)
        assert f"http://127.0.0.1:{auto.port}/v1" in out and "qwen3.6-35b-a3b" in out
        assert "curl " in out and "$VLLM_API_KEY" in out and "sk-first-hour-secret-0042" not in out
        auto.proc.send_signal(sig)
        assert auto.proc.wait(timeout=30) == code
    finally:
        auto.close()
    import time

    deadline = time.monotonic() + 5
    while any(running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(running(p) for p in pids)
    assert "interrupted" in "\n".join(auto.err)


def test_auto_says_why_when_the_engine_dies_while_serving(fake_vllm, tmp_path):
    auto = Auto(fake_vllm, tmp_path)
    try:
        auto.until("Ctrl-C to stop")
        _, core = auto.engine_pids()
        os.kill(core, 9)                # the engine loses its EngineCore: the API server exits
        rc = auto.proc.wait(timeout=30)
    finally:
        auto.close()
    assert rc == 1
    assert any("the engine exited with code" in line and "while serving" in line for line in auto.err)


def test_a_signal_during_the_smoke_test_is_an_interruption(fake_vllm, tmp_path):
    auto = Auto(fake_vllm, tmp_path, env={"FAKE_ENGINE_TOKEN_DELAY": "5"})
    try:
        auto.until("smoke test")
        auto.until("POST /v1/chat/completions")     # the request is in flight
        auto.proc.send_signal(15)
        rc = auto.proc.wait(timeout=30)
    finally:
        auto.close()
    err = "\n".join(auto.err)
    assert rc == 143, err
    assert "interrupted by SIGTERM" in err and "no tokens" not in err


# --- item 2: a one-screen explain --------------------------------------------------------------


def screen_rows(text: str, width: int = 80) -> int:
    """Rows the text takes on a terminal `width` columns wide (long lines wrap)."""
    return sum(max(1, -(-len(line) // width)) for line in text.splitlines())


def test_explain_is_a_summary_card_on_one_80x50_screen():
    r = run(["explain", "--gpu", "4090"])
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert screen_rows(out) <= 50, out
    first = out.splitlines()[0]
    assert first.startswith("Plan") and "PP 1" in first
    for part in ("checkpoint:", "engine:", "context:", "per rank x 1 rank", "KV cache:", "full-length",
                 "memory:", "warning:", "vllm serve", "--verbose"):
        assert part in out, part
    assert "Decisions" not in out and "source:" not in out          # those are under --verbose
    assert not any(line != line.rstrip() for line in out.splitlines())


def test_data_parallel_figures_say_per_rank():
    r = run(["explain", "--gpu", "A100", "--gpus", "2", "--engine", "vllm", "--goal", "throughput"])   # a DP 2 plan
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "DP 2" in out.splitlines()[0] and "sequences per rank" in out.splitlines()[0]
    assert "per rank x 2 ranks" in out
    assert "tokens per rank" in out


def test_the_summary_shows_predicted_speed_when_the_plan_has_it(monkeypatch):
    from qwenplan.launch import views
    from qwenplan.launch.orchestrate import build_plan
    from qwenplan.planner.whatif import what_if

    p = build_plan(what_if(["H100"], None, None, None), {})
    perf = p.to_dict().get("performance")
    assert perf and perf["levels"]
    line = next(x for x in views.summary_lines(p) if x.startswith("speed:"))
    for name, lv in perf["levels"].items():
        assert f"{name} {lv['tokens_per_s']:,.0f} tokens/s (TTFT {lv['ttft_s']:.2f} s)" in line
    doc = {k: v for k, v in p.to_dict().items() if k != "performance"}
    monkeypatch.setattr(type(p), "to_dict", lambda self: doc)
    assert not any(x.startswith("speed:") for x in views.summary_lines(p))     # absent: nothing


def test_doctor_json():
    r = run(["doctor", "--json", "--gpu", "4090", "--no-parse"], env={"PATH": "/nonexistent"})
    doc = json.loads(r.stdout)
    assert doc["schema"] == "qwenplan.doctor/1" and doc["checks"]
    engine = next(c for c in doc["checks"] if c["name"] == "engine")
    assert engine["status"] == "fail" and "uv pip install vllm" in engine["fix"]
    assert r.returncode == 1 and doc["ok"] is False


def test_auto_dry_run_prints_the_command_once(fake_vllm):
    r = run(["auto", "--dry-run", "--gpu", "H100", "--port", str(free_port())], env=fake_vllm)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(" serve ") == 1


# --- item 4: every bad input is one line and exit 2; infeasible is exit 3 -----------------------


@pytest.mark.parametrize("args,needle", [
    (["plan", "--gpu", "4090", "--ram", "64"], "--ram '64' has no unit"),
    (["plan", "--gpu", "4090", "--disk", "0.5G"], "less than 1 GiB"),
    (["plan", "--gpu", "4090", "--context", "0"], "not a context length"),
    (["plan", "--gpu", "4090", "--context", "lots"], "not a number of tokens"),
    (["plan", "--gpu", "4090", "--concurrency", "0"], "--concurrency"),
    (["plan", "--gpu", "4090", "--gpu", "4090", "--gpus", "2"], "say the count one way"),
    (["plan", "--gpu", "H100", "--gpus", "1000"], "at most 16"),
    (["plan", "--gpu", "4090", "--host", "not a host"], "not an IP address or a host name"),
    (["plan", "--gpu", "4090", "--gpu-ids", ""], "--gpu-ids '' is empty"),
    (["export", "systemd", "--gpu", "H100", "--node-rank", "1"], "--node-rank is for multi-node plans"),
])
def test_input_holes_are_one_line_and_exit_2(args, needle):
    r = run(args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_units_and_lengths_people_write_are_taken():
    r = run(["plan", "--json", "--gpu", "H100", "--ram", "64Gi", "--disk", "500GB", "--context", "128k"])
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["settings"]["max_model_len"] == 131072
    assert doc["hardware"]["host"]["ram_total_bytes"] == 64 << 30


@pytest.mark.parametrize("command", [["plan"], ["explain"], ["variants"], ["doctor"], ["export", "script"],
                                     ["verify"], ["auto", "--dry-run"]])
def test_nothing_fits_is_exit_3_for_every_command(command):
    r = run([*command, "--gpu", "3060", "--variant", "bf16"])
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    if command[0] in ("verify", "export", "doctor"):
        assert "no plan fits" in r.stderr and "64.69 GiB" in r.stderr   # says why


def test_out_of_memory_hints_name_qwenplans_options():
    from qwenplan.launch.diagnose import diagnose

    d = diagnose(["INFO Model loading took 18.09 GiB memory and 12.5 seconds",
                  "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."])
    assert "--context" in d.fix and "--max-model-len" not in d.fix
    d = diagnose(["ValueError: ... Based on the available memory, the estimated maximum model length is 169184."])
    assert "--context 169184" in d.fix


def test_ctrl_c_at_the_prompt_exits_130(fake_vllm, tmp_path):
    import select
    import time

    for repo in ("Qwen/Qwen3.6-35B-A3B-FP8", "Qwen/Qwen3.6-35B-A3B"):
        cache_weights(tmp_path / "hub", repo)
    # As from a terminal: a job started in the background inherits SIGINT ignored; undo that.
    start = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "sys.argv = ['qwenplan'] + sys.argv[1:]; runpy.run_module('qwenplan.launch.cli', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", start, "auto", "--engine", "vllm",
                             "--port", str(free_port())], env={**os.environ, "NO_COLOR": "1", **fake_vllm},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen, deadline = b"", time.monotonic() + 60
        while b"launch?" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
        assert b"launch?" in seen, seen
        # Ctrl-C once the prompt waits for the answer (a signal between the prompt and the read
        # would be taken before the read blocks: CPython checks for it only between bytecodes)
        while time.monotonic() < deadline and "pipe" not in Path(f"/proc/{proc.pid}/wchan").read_text():
            select.select([], [], [], 0.02)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
        assert b"aborted" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (tmp_path / "state" / "runs").exists()        # nothing was started


# --- item 6: the doctor runs the engine's own Python -------------------------------------------


@pytest.mark.parametrize("shebang", ["#!/usr/bin/env python3", "#!/usr/bin/env -S python3 -u", "#!{python}"])
def test_the_parser_check_runs_the_python_of_the_engine_script(tmp_path, monkeypatch, shebang):
    from qwenplan.launch.engine_parser import engine_python, run_parser

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    exe = bindir / "vllm"
    exe.write_text(shebang.format(python=bindir / "python3") + "\nimport sys\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    assert engine_python("vllm") == str(bindir / "python3")
    r = run_parser("vllm", ["vllm", "serve", "m"])
    assert r.python == str(bindir / "python3")
    assert "env" not in r.error                                 # vLLM is absent here: its import fails, not env
