"""llama.cpp (llama-server, GGUF): catalog, memory model, planning, flags, and the real server.

The tests marked `server` run a real llama-server (tests/llamacpp/build.sh builds it for the
CPU, pinned at b11312) on a tiny random-weight GGUF of this architecture written at test time
(tests/llamacpp/tiny_gguf.py). They find it through QWENPLAN_LLAMA_SERVER or the build script's
default place; without either they skip, but a QWENPLAN_LLAMA_SERVER that names no server makes that a
failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from qwenplan.launch.engine_log import parse_llamacpp
from qwenplan.launch.render import RenderError, render
from qwenplan.planner import hardware, llamacpp
from qwenplan.planner.catalog import find_gpu
from qwenplan.planner.decide import PlanOptions, make_plan
from qwenplan.planner.flags import flag_set, parse_llama_help
from qwenplan.planner.model import shape_from_config
from qwenplan.planner.variants import variants
from qwenplan.planner.weights import Recipe, disk_bytes

from tests.llamacpp import tiny_gguf

ROOT = Path(__file__).resolve().parent.parent
HW = ROOT / "examples" / "hardware"
TINY = ROOT / "tests" / "llamacpp"
BUILD = "b11312"
GiB = 1 << 30
MiB = 1 << 20


def tiny_config() -> dict:
    return json.loads((TINY / "tiny-config.json").read_text())


def plan_for(name, **opts):
    hw = hardware.load(HW / f"{name}.json", lookup=find_gpu)
    p = make_plan(hw, PlanOptions(**opts))
    if p.status == "ok":
        p.command = render(p.to_dict())
    return p


# --- the catalog: GGUF files sized from their ggml types ---------------------------------------

GGUF = [v for v in variants() if "gguf" in v.tags]


@pytest.mark.parametrize("v", GGUF, ids=lambda v: v.id)
def test_gguf_sizes_are_computed_from_ggml_types_not_copied(v):
    assert v.raw["gguf_file"].endswith(".gguf")
    assert v.disk.total == pytest.approx(v.published_size_bytes, rel=0.03)
    assert v.engines == {"llamacpp": v.engines["llamacpp"]}     # only llama.cpp loads GGUF


def test_q8_0_is_exact_to_the_byte_of_its_tensors():
    """Q8_0 is one type for every matrix: the sum over the model's tensors is the file, less its
    metadata (36,903,140,320 B published, the header and tokenizer are a few MB)."""
    q8 = next(v for v in GGUF if v.id == "gguf-q8_0")
    assert abs(q8.disk.total - q8.published_size_bytes) < 0.001 * q8.published_size_bytes


def test_mtp_variants_carry_the_nextn_head_and_rank_by_published_kl():
    by_id = {v.id: v for v in GGUF}
    assert by_id["gguf-mtp-ud-q4_k_xl"].has_mtp and by_id["gguf-mtp-ud-q6_k"].has_mtp
    assert not by_id["gguf-q8_0"].has_mtp
    # KL to BF16 (APEX table): Q8_0 0.0059 < UD-Q5_K_XL 0.0083 < UD-Q4_K_XL 0.0134 <= UD-Q4_K_M 0.0138
    assert by_id["gguf-q8_0"].quality > by_id["gguf-ud-q5_k_xl"].quality > by_id["gguf-mtp-ud-q4_k_xl"].quality
    assert by_id["gguf-mtp-ud-q4_k_xl"].quality >= by_id["gguf-ud-q4_k_m"].quality


def test_tiny_gguf_holds_exactly_the_bytes_the_planner_computes(tmp_path):
    """The same recipe, two ways: the gguf package quantizes real arrays, the planner sums ggml
    block sizes over the tensors it derives from the config."""
    import gguf

    cfg = tiny_config()
    path = tiny_gguf.write(tmp_path / "tiny.gguf", cfg)
    r = gguf.GGUFReader(str(path))
    arch = r.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "qwen35moe"
    names = [t.name for t in r.tensors]
    assert sum(n.endswith("attn_q.weight") for n in names) == 1          # one full-attention layer
    assert sum(n.endswith("ssm_conv1d.weight") for n in names) == 3      # three Gated DeltaNet layers
    planned = disk_bytes(Recipe.from_dict(tiny_gguf.DEFAULT_RECIPE, "tiny"), shape_from_config(cfg), 0)
    assert sum(int(t.n_bytes) for t in r.tensors) == planned.total


# --- planning -----------------------------------------------------------------------------------

BOXES = {"v100-32gb": "(these GPUs: 7.0)", "t4-16gb": "vllm-project/vllm/issues/35854",
         "rtx3060-12gb-32gb-ram": "weights alone need", "no-gpu": "no usable NVIDIA GPU"}


@pytest.mark.parametrize("name", sorted(BOXES))
def test_the_boxes_vllm_cannot_serve_get_a_llamacpp_plan_with_memory_and_speed(name):
    p = plan_for(name)
    assert p.status == "ok" and p.engine["name"] == "llamacpp" and p.engine["version"] == BUILD
    hw = hardware.load(HW / f"{name}.json", lookup=find_gpu)
    m = p.memory
    assert 0 < m["host_total_bytes"] <= hw.host.usable_ram_bytes
    assert m["decode_tokens_per_s"] > 1
    for g in m["gpus"]:
        assert g["used_bytes"] <= g["budget_bytes"] < g["total_bytes"]
    why = p.decision("engine").reason + " ".join(r.reason for r in p.rejected)
    assert BOXES[name] in why
    assert p.command["argv"][0] == "llama-server"
    assert p.command["flags_checked_against"] == BUILD
    assert p.settings["threads"] == hw.host.cpu_physical_count        # the physical cores
    committed = json.loads((ROOT / "examples" / "plans" / f"{name}.json").read_text())
    assert committed["settings"] == p.to_dict()["settings"]


def test_experts_that_do_not_fit_the_gpu_stay_in_host_ram_and_slow_decoding():
    p = plan_for("rtx3060-12gb-32gb-ram", variant="gguf-ud-q4_k_m")
    m = p.memory
    assert p.settings["n_cpu_moe"] > 0 and m["host_expert_bytes"] > 10 * GiB
    assert m["gpu_total_bytes"] <= m["per_gpu_budget_bytes"]
    assert f"--n-cpu-moe {p.settings['n_cpu_moe']}" in p.command["shell"]
    v100 = plan_for("v100-32gb", variant="gguf-ud-q4_k_m")          # 32 GB holds every expert
    assert v100.settings["n_cpu_moe"] == 0 and v100.memory["host_expert_bytes"] == 0
    assert v100.memory["decode_tokens_per_s"] > 2 * m["decode_tokens_per_s"]


def test_kv_cache_and_state_follow_the_cache_type_and_the_slots():
    from qwenplan.planner.model import get_model

    s = get_model("qwen3.6-35b-a3b").shape
    # 10 attention layers x (K + V) x 2 KV heads x 256: f16 2 B, q8_0 34 B per 32, q4_0 18 B per 32
    assert llamacpp.kv_bytes_per_token(s, "f16", "f16") == 10 * 2 * 512 * 2 == 20480
    assert llamacpp.kv_bytes_per_token(s, "q8_0", "q8_0") == 10 * 2 * 16 * 34
    assert llamacpp.kv_bytes_per_token(s, "q4_0", "q4_0") == 10 * 2 * 16 * 18
    # f32 state: (kernel-1) x 8192 conv channels + 32 x 128 x 128, for 30 DeltaNet layers
    assert llamacpp.state_bytes_per_seq(s) == 30 * (3 * 8192 + 32 * 128 * 128) * 4
    one = plan_for("no-gpu", concurrency=1, context=32768, variant="gguf-ud-q4_k_m")
    four = plan_for("no-gpu", concurrency=4, context=32768, variant="gguf-ud-q4_k_m")
    assert four.settings["ctx_size"] == 4 * 32768 and four.settings["parallel"] == 4
    assert four.memory["kv_cache_bytes"] - one.memory["kv_cache_bytes"] == \
        3 * 32768 * 20480 + 3 * llamacpp.state_bytes_per_seq(s)


def test_engine_llamacpp_and_its_overrides_are_honoured_or_refused():
    p = plan_for("h100-80gb", engine="llamacpp", kv_dtype="q4_0", context=65536)
    assert p.engine["name"] == "llamacpp" and p.settings["cache_type_k"] == "q4_0"
    assert p.settings["max_model_len"] == 65536 and "--cache-type-v" in p.command["argv"]
    r = subprocess.run([sys.executable, "-m", "qwenplan.launch.cli", "plan", "--hardware", str(HW / "t4-16gb.json"),
                        "--engine", "llamacpp", "--kv-dtype", "fp4"], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and "not a llama.cpp cache type" in r.stderr and "Traceback" not in r.stderr


def test_every_flag_llamacpp_is_spelled_with_is_in_the_builds_help():
    import yaml

    fs = flag_set("llamacpp", BUILD)
    assert fs is not None and fs.version == BUILD
    args = yaml.safe_load((ROOT / "profiles" / "engines.yaml").read_text())["engines"]["llamacpp"]["args"]
    for setting, spellings in args.items():
        for sp in spellings:
            for word in sp["argv"]:
                if word.startswith("-"):
                    assert fs.accepts(word), (setting, word)


def test_a_flag_this_build_lacks_is_refused_before_anything_runs():
    p = plan_for("no-gpu").to_dict()
    with pytest.raises(RenderError, match="does not accept --no-mmap"):
        render(p, ("--no-mmap",))            # replaced by --load-mode in this build
    p["settings"]["flash_attn"] = "maybe"
    with pytest.raises(RenderError, match="not one of its choices"):
        render(p)


def test_explain_shows_gpu_and_host_memory_and_speed():
    r = subprocess.run([sys.executable, "-m", "qwenplan.launch.cli", "explain", "--verbose", "--hardware",
                        str(HW / "t4-16gb.json")],
                       capture_output=True, text=True, timeout=120, check=False,
                       env={**os.environ, "NO_COLOR": "1", "COLUMNS": "100"})
    assert r.returncode == 0, r.stderr
    for part in ("tokens/s", "host RAM", "GPU budget", "--n-cpu-moe", "35854"):
        assert part in r.stdout, part


# --- the real llama-server ----------------------------------------------------------------------

def server_binary() -> str:
    path = os.environ.get("QWENPLAN_LLAMA_SERVER") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qwenplan" / f"llama.cpp-{BUILD}" / "bin" / "llama-server")
    if not os.access(path, os.X_OK):
        if os.environ.get("QWENPLAN_LLAMA_SERVER"):    # asked for (the README's test command, CI): must run
            pytest.fail(f"llama-server not found at {path}: run tests/llamacpp/build.sh")
        pytest.skip("llama-server not built (tests/llamacpp/build.sh)")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_gguf.write(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tiny_config())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_dumped_flags_are_this_builds_own_help():
    from qwenplan.launch import llamacpp as tool

    path = server_binary()
    b = tool.version(path)
    assert b is not None and b.build == BUILD
    live = parse_llama_help(subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60, check=True).stdout)
    assert live == flag_set("llamacpp", BUILD).flags
    assert live["--flash-attn"] == ("on", "off", "auto") and "q4_0" in live["--cache-type-k"]


def start_server(path: str, model: Path, *args: str, wait_for: str = "all slots are idle") -> list[str]:
    """Start llama-server, collect its log until `wait_for` (at most 120 s), stop it; the lines. (Its main
    loop must have started: a SIGTERM between "listening on" and the loop is lost.)"""
    import queue
    import threading

    port = free_port()
    proc = subprocess.Popen([path, "--model", str(model), "--host", "127.0.0.1", "--port", str(port), "--verbosity", "4",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    q: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [q.put(x) for x in proc.stdout] and None, daemon=True).start()
    lines: list[str] = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and not any(wait_for in x for x in lines[-1:]):
            try:
                lines.append(q.get(timeout=1).rstrip("\n"))
            except queue.Empty:
                if proc.poll() is not None:
                    break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert any(wait_for in x for x in lines), "\n".join(lines[-30:])
    return lines


@pytest.mark.parametrize("cache,slots,ctx", [("f16", 1, 4096), ("q8_0", 2, 3000)])
def test_memory_model_matches_llama_servers_own_report(tiny, cache, slots, ctx):
    """Weights, KV cache, recurrent state and compute buffer as llama-server reports them, against
    the planner's arithmetic on the same (tiny) shapes."""
    cfg = tiny_config()
    shape = shape_from_config(cfg)
    lines = start_server(server_binary(), tiny, "--ctx-size", str(ctx * slots), "--parallel", str(slots),
                         "--cache-type-k", cache, "--cache-type-v", cache, "--n-gpu-layers", "0",
                         "--load-mode", "none", "--fit", "off", "--threads", "2", "--no-warmup", "--ubatch-size", "512")
    rep = parse_llamacpp(lines)
    weights = disk_bytes(Recipe.from_dict(tiny_gguf.DEFAULT_RECIPE, "tiny"), shape, 0).total
    model = rep.total("model")
    assert abs(model - weights) <= 0.01 * MiB + 64 * len(tiny_gguf.tensors(cfg)), (model, weights)   # per-tensor padding
    assert rep.kv_cells * slots == llamacpp.kv_cells(ctx, slots)            # one padded stream per slot
    assert rep.total("KV") == pytest.approx(llamacpp.kv_cells(ctx, slots) * llamacpp.kv_bytes_per_token(shape, cache, cache),
                                            abs=0.01 * MiB)
    assert rep.total("RS") == pytest.approx(slots * llamacpp.state_bytes_per_seq(shape), abs=0.01 * MiB)
    assert rep.total("compute") == pytest.approx(llamacpp.compute_bytes(shape, 512, ctx), rel=0.03)


def test_auto_serves_the_tiny_gguf_end_to_end_and_stops_on_sigterm(tiny, tmp_path):
    import psutil

    server = server_binary()
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(server).parent}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "NO_COLOR": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "qwenplan.launch.cli", "auto", "--engine", "llamacpp",
                             "--hardware", str(HW / "no-gpu.json"), "--model-path", str(tiny), "--context", "4096", "--no-mtp",
                             "--port", str(port), "--yes"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    import queue
    import threading

    q: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [q.put(x) for x in proc.stdout] and None, daemon=True).start()
    out: list[str] = []
    children = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (out and out[-1].startswith("Ctrl-C to stop")):
            try:
                out.append(q.get(timeout=1).rstrip("\n"))
            except queue.Empty:
                if proc.poll() is not None:
                    break
        text = "\n".join(out)
        assert any(x.startswith("ready: first token after") for x in out), text[-3000:]   # the streamed smoke test
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any(c.name() == "llama-server" for c in children), text[-2000:]
        time.sleep(2)
        assert proc.poll() is None                                     # still in the foreground after ready
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM          # stopped by the signal, said as such
    finally:
        if proc.poll() is None:
            proc.kill()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive                                            # nothing left running
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)


def test_doctor_checks_the_installed_build_and_the_argv_against_its_own_help():
    from qwenplan.launch import llamacpp as tool

    server = server_binary()
    live = tool.flags(server)
    assert tool.unknown_flags(["llama-server", "--no-mmap", "--flash-attn", "maybe", "--threads", "4"], live) == \
        ["--no-mmap", "--flash-attn maybe"]
    env = {**os.environ, "PATH": f"{Path(server).parent}:{os.environ['PATH']}", "NO_COLOR": "1"}
    r = subprocess.run([sys.executable, "-m", "qwenplan.launch.cli", "doctor", "--hardware", str(HW / "no-gpu.json"),
                        "--port", str(free_port())], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert f"engine: llama.cpp {BUILD}" in r.stdout, r.stdout + r.stderr
    assert f"parser: every flag of the planned argv is in llama-server {BUILD}'s --help" in r.stdout


def test_small_cards_the_fork_would_serve_get_llama_cpp_and_the_fork_only_when_asked():
    from qwenplan.planner.whatif import what_if

    hw = what_if(["RTX 4060 Ti 16GB"], ram=64 * GiB)
    auto = make_plan(hw, PlanOptions())
    assert auto.engine["name"] == "llamacpp" and "expert-offload fork" in auto.decision("engine").reason
    assert make_plan(hw, PlanOptions(engine="vllm-offload")).engine["name"] == "vllm-offload"
