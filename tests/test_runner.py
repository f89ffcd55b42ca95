"""launch/runner.py against the fake engine: readiness stages, smoke test, checks, signals, no orphans."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest

from qwenplan.launch import runner
from tests.conftest import handed_port

FAKE = Path(__file__).parent / "fake_engine.py"
ROOT = Path(__file__).parent.parent
API_KEY = "sk-qwenplan-test-key-0042"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_argv(port: int, *extra: str, model: str = "model") -> list[str]:
    return [sys.executable, str(FAKE), "serve", model, "--host", "127.0.0.1", "--port", str(port), *extra]


def fake_env(tmp_path: Path, mode: str = "ok", **more: str) -> dict[str, str]:
    return {"FAKE_ENGINE_MODE": mode, "FAKE_ENGINE_DELAY": "0.1",
            "FAKE_ENGINE_PIDS_FILE": str(tmp_path / "pids.json"), **more}


def engine_pids(tmp_path: Path) -> list[int]:
    return json.loads((tmp_path / "pids.json").read_text())


def running(pid: int) -> bool:
    """Alive and not a zombie (this box's init may leave zombies unreaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def gone(pids, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(running(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def quiet(**kw):
    lines, states = [], []
    return dict(on_line=lines.append, on_status=states.append, **kw), lines, states


def start(tmp_path, mode="ok", *extra, served="model", env=None, **kw):
    port, handoff = handed_port()
    opts, lines, states = quiet(ready_timeout_s=kw.pop("ready_timeout_s", 15), grace_s=kw.pop("grace_s", 3), **kw)
    eng = runner.launch(fake_argv(port, *extra), {**fake_env(tmp_path, mode), **handoff, **(env or {})},
                        log_path=tmp_path / "engine.log", host="127.0.0.1", port=port, served_name=served,
                        forward_signals=False, check=False, **opts)
    return eng, lines, states


def test_ready_smoke_and_stop_leaves_nothing(tmp_path):
    eng, lines, states = start(tmp_path)
    try:
        r = eng.result
        assert r.ok and r.stage == "ready" and r.failure is None
        assert list(r.timings) == ["alive", "health", "models", "smoke", "ready"]
        assert r.timings["alive"] <= r.timings["health"] <= r.timings["ready"]
        assert r.smoke.tokens == 6 and r.smoke.text == "Hello from the fake engine."
        assert r.smoke.ttft_s > 0 and r.smoke.tokens_per_s > 0
        assert "first token in" in r.message and "tokens/s" in r.message
        assert eng.alive()
        assert any("Application startup complete" in x for x in lines)
        assert [s.stage for s in states][-1] == "ready"
    finally:
        code = eng.stop()
    assert code == 0
    assert gone(engine_pids(tmp_path))
    log = (tmp_path / "engine.log").read_text()
    assert "# qwenplan:" in log and "Model loading took" in log and "engine exited with code 0" in log


def test_api_key_is_sent_and_never_shown(tmp_path):
    eng, lines, _ = start(tmp_path, "ok", "--api-key", API_KEY, api_key=API_KEY)
    try:
        assert eng.result.ok, eng.result.message
    finally:
        eng.stop()
    log = (tmp_path / "engine.log").read_text()
    assert API_KEY not in log and API_KEY not in "\n".join(lines)
    assert "--api-key '***'" in log or "--api-key ***" in log
    assert "non-default args" in log                       # the engine's own echo of argv, scrubbed


def test_wrong_api_key_and_wrong_served_name_fail_clearly(tmp_path):
    eng, _, _ = start(tmp_path, "ok", "--api-key", API_KEY, api_key="sk-wrong-key-1234")
    assert eng.result.failure == "unauthorized" and not eng.alive()
    assert gone(engine_pids(tmp_path))
    eng, _, _ = start(tmp_path, "ok", served="qwen3.6")
    assert eng.result.failure == "wrong-model" and "qwen3.6" in eng.result.message
    assert gone(engine_pids(tmp_path))


def test_port_taken_is_refused_before_spawning(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(runner.PortInUseError) as e:
            runner.launch(fake_argv(port), fake_env(tmp_path), log_path=tmp_path / "x.log", host="127.0.0.1",
                          port=port, served_name="model", on_line=print, on_status=print)
    msg = str(e.value)
    assert f"port {port}" in msg and "--port" in msg and "\n" not in msg
    assert not (tmp_path / "pids.json").exists() and not (tmp_path / "x.log").exists()


def test_missing_engine_names_the_install_command(tmp_path):
    with pytest.raises(runner.EngineMissingError) as e:
        runner.check_engine(["vllm-not-installed-here", "serve", "m"], install="pip install 'vllm>=0.21'")
    assert "vllm-not-installed-here" in str(e.value) and "pip install 'vllm>=0.21'" in str(e.value)
    with pytest.raises(runner.EngineMissingError) as e:
        runner.check_engine([sys.executable, "-m", "sglang_not_here.launch_server"], install="pip install sglang")
    assert "sglang_not_here" in str(e.value)
    assert runner.check_engine([sys.executable, "-m", "json.tool"]) == __import__("shutil").which(sys.executable)


def test_hang_times_out_and_is_killed(tmp_path):
    eng, _, _ = start(tmp_path, "hang", ready_timeout_s=1.0)
    r = eng.result
    assert r.failure == "timeout" and r.stage == "alive" and not r.ok
    assert gone(engine_pids(tmp_path))


def test_crash_reports_exit_code(tmp_path):
    eng, _, _ = start(tmp_path, "crash")
    r = eng.result
    assert r.failure == "exited" and r.exit_code == 1 and "code 1" in r.message
    assert any("Segmentation fault" in x for x in r.tail())
    assert gone(engine_pids(tmp_path))


def test_stubborn_engine_is_killed_after_the_grace_period(tmp_path):
    eng, _, _ = start(tmp_path, env={"FAKE_ENGINE_IGNORE_SIGTERM": "1"})
    assert eng.result.ok
    t0 = time.monotonic()
    code = eng.stop(grace_s=0.5)
    assert code == -signal.SIGKILL and time.monotonic() - t0 < 5
    assert gone(engine_pids(tmp_path))
    assert "killing the engine's process group" in (tmp_path / "engine.log").read_text()


DRIVER = r"""
import json, sys
from qwenplan.launch import runner
argv, env, log, port, grace = json.loads(sys.argv[1])
eng = runner.launch(argv, env, log_path=log, host="127.0.0.1", port=port, served_name="model",
                    ready_timeout_s=30, grace_s=grace, check=False, on_line=lambda l: None,
                    on_status=lambda s: print("STAGE", s.stage, flush=True))
print("RESULT", eng.result.ok, eng.result.failure, flush=True)
code = eng.wait() if eng.result.ok else eng.result.exit_code
print("EXIT", code, eng.signalled, flush=True)
"""


def run_driver(tmp_path, mode="ok", grace=3.0, env=None):
    port, handoff = handed_port()
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    args = [fake_argv(port), {**fake_env(tmp_path, mode), **handoff, **(env or {})}, str(tmp_path / "d.log"), port, grace]
    return subprocess.Popen([sys.executable, str(script), json.dumps(args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def read_until(proc, word: str, timeout: float = 15.0) -> list[str]:
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.strip())
        if line.startswith(word):
            return seen
    raise AssertionError(f"no {word!r} from the driver: {seen}")


@pytest.mark.parametrize("sig, env", [(signal.SIGTERM, None), (signal.SIGINT, None),
                                      (signal.SIGTERM, {"FAKE_ENGINE_IGNORE_SIGTERM": "1"})])
def test_signals_are_forwarded_and_no_orphan_remains(tmp_path, sig, env):
    proc = run_driver(tmp_path, grace=0.5, env=env)
    try:
        read_until(proc, "RESULT True")
        pids = engine_pids(tmp_path)
        assert all(running(p) for p in pids) and len(pids) == 2     # API server + EngineCore
        proc.send_signal(sig)
        out = read_until(proc, "EXIT")
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
    assert out[-1].endswith(str(int(sig)))                          # the driver saw the signal itself
    assert gone(pids)


def test_signal_while_loading_stops_the_engine(tmp_path):
    proc = run_driver(tmp_path, mode="hang", grace=0.5)
    try:
        read_until(proc, "STAGE alive")
        deadline = time.monotonic() + 5
        while not (tmp_path / "pids.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = engine_pids(tmp_path)
        proc.send_signal(signal.SIGINT)
        out = read_until(proc, "EXIT")
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
    assert any(x.startswith("RESULT False interrupted") for x in out)
    assert gone(pids)


def test_preflight_checks_engine_port_disk_and_ram(tmp_path, monkeypatch):
    from qwenplan.launch import fetch

    port = free_port()
    done = runner.preflight(fake_argv(port), host="127.0.0.1", port=port,
                            disk=[(tmp_path, 1 << 20, "the checkpoint")], ram_bytes=1 << 20, ram_available=1 << 30)
    assert len(done) == 4 and done[0].startswith("engine: ")
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(fetch.shutil, "disk_usage", lambda p: Usage(1 << 40, 1 << 40, 5 << 30))
    with pytest.raises(fetch.DiskSpaceError) as e:
        runner.preflight(fake_argv(port), host="127.0.0.1", port=port,
                         disk=[(tmp_path, 50 << 30, "the expert store")])
    assert "the expert store" in str(e.value)
    with pytest.raises(runner.HostMemoryError) as e:
        runner.check_ram(64 << 30, 16 << 30)
    assert "64.0 GiB" in str(e.value) and "16.0 GiB" in str(e.value)


def test_plain_display_prints_stage_changes_once():
    from rich.console import Console

    buf = io.StringIO()
    d = runner.ConsoleDisplay(Console(file=buf, force_terminal=False, width=100))
    d.line("INFO [loader] loading [weights]")
    for t in (0.5, 1.0):
        d.status(runner.Status("alive", t, "loading"))
    d.status(runner.Status("ready", 2.0, "ready after 2 s"))
    d.close()
    out = buf.getvalue().splitlines()
    assert out == ["INFO [loader] loading [weights]", "qwenplan: loading (0 s)", "qwenplan: ready after 2 s (2 s)"]


def test_argv_must_be_a_list_never_a_shell_string(tmp_path):
    with pytest.raises(TypeError):
        runner.Engine("vllm serve model", {}, log_path=tmp_path / "x.log")
    src = "\n".join(p.read_text() for p in (ROOT / "launch").glob("*.py"))
    assert "shell=True" not in src


def test_redact_argv():
    argv = ["vllm", "serve", "m", "--api-key", API_KEY, f"--api-key={API_KEY}", "--port", "8000"]
    assert runner.redact_argv(argv) == ["vllm", "serve", "m", "--api-key", "***", "--api-key=***", "--port", "8000"]


def test_secret_environment_values_are_scrubbed_from_the_log(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    eng, lines, _ = start(tmp_path, env={"TOKENIZERS_PARALLELISM": "true", "VLLM_API_KEY": API_KEY},
                          api_key=API_KEY)
    try:
        assert eng.result.ok
    finally:
        eng.stop()
    log = (tmp_path / "engine.log").read_text()
    assert "VLLM_API_KEY=***" in log and "TOKENIZERS_PARALLELISM=true" in log
    assert API_KEY not in log and "hf_abcdefghijklmnop" not in log
    assert runner.secret_env("HF_TOKEN") and runner.secret_env("OPENAI_API_KEY")
    assert not runner.secret_env("TOKENIZERS_PARALLELISM") and not runner.secret_env("KEYBOARD_LAYOUT")


# --- one rule each, shared by every user (issue 18) -----------------------------------------------

SECRET_NAMES = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY", "OPENAI_APIKEY", "AWS_SECRET_ACCESS_KEY",
                "DB_PASSWORD", "PGPASSWD", "MY_SECRET_FILE", "KEY", "GITHUB_PAT_TOKEN"]
PLAIN_NAMES = ["TOKENIZERS_PARALLELISM", "VLLM_MAX_TOKENS", "CUDA_VISIBLE_DEVICES", "HF_HOME", "KEYBOARD",
               "VLLM_USE_V1", "NCCL_P2P_DISABLE"]


def test_logs_and_exports_take_the_same_names_for_secrets():
    """A name the log redacts is a name the export never inlines, and the reverse."""
    from qwenplan.launch.export import view as export   # the package module that checks names

    for name in SECRET_NAMES:
        assert runner.secret_env(name) and export._SECRET_LIKE.search(name), name
    for name in PLAIN_NAMES:
        assert not runner.secret_env(name) and not export._SECRET_LIKE.search(name), name


def test_doctor_and_launch_agree_on_a_port_in_time_wait_and_one_listened_on():
    """The port a run just left (TIME_WAIT) is free to both, as to the engine; a listened port to neither."""
    import socket

    from qwenplan.launch import doctor

    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert not runner.port_free("127.0.0.1", port)
        cli = socket.create_connection(("127.0.0.1", port))
        conn, _ = srv.accept()
    conn.close()                       # the server side closes first: its end waits in TIME_WAIT
    cli.close()
    assert runner.port_free("127.0.0.1", port)
    assert "port_free" not in vars(doctor)   # doctor asks the runner's check, not one of its own


def test_the_hf_cache_is_found_by_one_rule_for_probe_and_fetch(monkeypatch, tmp_path):
    from qwenplan.launch import fetch
    from qwenplan.planner.probe import hf_cache_dir

    cases = [({}, tmp_path / ".cache" / "huggingface" / "hub"),
             ({"XDG_CACHE_HOME": str(tmp_path / "x")}, tmp_path / "x" / "huggingface" / "hub"),
             ({"HF_HOME": "~/h", "XDG_CACHE_HOME": str(tmp_path / "x")}, tmp_path / "h" / "hub"),
             ({"HUGGINGFACE_HUB_CACHE": str(tmp_path / "legacy"), "HF_HOME": "~/h"}, tmp_path / "legacy"),
             ({"HF_HUB_CACHE": "$HOME/c", "HUGGINGFACE_HUB_CACHE": str(tmp_path / "legacy")}, tmp_path / "c")]
    for env, want in cases:
        for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert fetch.hub_cache_dir() == want == hf_cache_dir({**env, "HOME": str(tmp_path)}), env


def test_compute_capability_is_compared_as_numbers_everywhere():
    from qwenplan.planner.capability import parse_cc
    from qwenplan.planner.hardware import GPU

    assert parse_cc("8.9") == (8, 9) and parse_cc("12.0") == (12, 0) and parse_cc("9") == (9, 0)
    assert parse_cc("8.10") > parse_cc("8.9") and parse_cc("sm_90") is None and parse_cc("") is None
    assert GPU(index=0, name="x", memory_total_bytes=1, memory_free_bytes=None, compute_capability="10.3").compute_capability_tuple() == (10, 3)
