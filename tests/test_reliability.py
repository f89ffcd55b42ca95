"""Reliability and security (issue 20, and the poisoned-calibration item of issue 17): a squatted
port, extra args that override the plan, hostile hardware documents, poisoned calibration and
profile-cache files. Each test fails on the code before its fix."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qwenplan.launch import calibration, runner
from qwenplan.launch.render import render
from qwenplan.planner import catalog, hardware
from qwenplan.planner.catalog import find_gpu
from qwenplan.planner.decide import PlanOptions, make_plan
from qwenplan.planner.errors import InputError
from qwenplan.planner.whatif import what_if

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "hardware"


def cli(args, env=None, timeout=120, **kw):
    e = {**os.environ, "NO_COLOR": "1", "COLUMNS": "80", **(env or {})}
    return subprocess.run([sys.executable, "-m", "qwenplan.launch.cli", *args], capture_output=True, text=True,
                          env=e, timeout=timeout, check=False, **kw)


def one_line_error(r, code=2):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plan_doc(box="h100-80gb", **opts):
    hw = hardware.load(EXAMPLES / f"{box}.json", lookup=find_gpu)
    return make_plan(hw, PlanOptions(**opts)).to_dict()


# --- item 2: a squatted port never gets the API key --------------------------------------------

def test_a_squatter_on_the_planned_port_gets_no_api_key_and_is_not_called_ready(tmp_path):
    """The engine is still loading (here: never binds); another local process took the port."""
    port = free_port()
    seen = []

    class Squatter(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            body = json.dumps({"data": [{"id": "model"}]}).encode() if self.path == "/v1/models" else b"ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Squatter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    key = "sk-squat-test-0001"
    try:
        eng = runner.launch([sys.executable, "-c", "import time; time.sleep(60)"], {}, log_path=tmp_path / "e.log",
                            host="127.0.0.1", port=port, served_name="model", api_key=key, smoke=False,
                            check=False, ready_timeout_s=20, grace_s=2, forward_signals=False,
                            on_line=lambda s: None, on_status=lambda s: None)
    finally:
        server.shutdown()
        server.server_close()
    res = eng.result
    assert not res.ok and res.failure == "squatted", res
    assert f"port {port}" in res.message and "not the engine" in res.message
    assert all(auth is None for _, auth in seen) and not any(p == "/v1/models" for p, _ in seen)
    assert eng.poll() is not None                      # and the engine was stopped


# --- item 3: --extra-arg cannot override the plan, nor carry a key -----------------------------

@pytest.mark.parametrize("engine,extra,option", [
    ("vllm", ["--host=0.0.0.0"], "--host"),
    ("vllm", ["--host", "0.0.0.0"], "--host"),
    ("vllm", ["--port=9"], "--port"),
    ("vllm", ["--max-model-len=1000"], "--context"),
    ("vllm", ["--max_model_len", "1000"], "--context"),
    ("vllm", ["--gpu-memory-utilization=0.99"], "memory model"),
    ("vllm", ["--device-memory-utilization=0.99"], "memory model"),   # the parser's alias
    ("vllm", ["-tp", "2"], "--gpu-ids"),
    ("vllm", ["--no-enforce-eager"], "memory model"),
    ("vllm", ["--kv-cache-dtype=fp8"], "--kv-dtype"),                 # left at the default, still planned
    ("vllm", ["--served-model-name", "x"], "--served-name"),
    ("sglang", ["--context-length", "1000"], "--context"),
    ("sglang", ["--tensor-parallel-size=2"], "--gpu-ids"),            # SGLang's alias of --tp-size
    ("sglang", ["--mem-fraction-static=0.95"], "memory model"),
    ("sglang", ["--host=0.0.0.0"], "--host"),
])
def test_an_extra_arg_that_sets_a_planned_setting_is_refused_naming_qwenplans_option(engine, extra, option):
    doc = plan_doc(engine=engine)
    with pytest.raises(InputError) as e:
        render(doc, tuple(extra))
    assert option in str(e.value) and extra[0] in str(e.value)


def test_extra_args_the_plan_does_not_set_still_pass():
    doc = plan_doc(engine="vllm")
    argv = render(doc, ("--enable-prefix-caching", "--max-log-len=100"))["argv"]
    assert argv[-2:] == ["--enable-prefix-caching", "--max-log-len=100"]


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
@pytest.mark.parametrize("extra", [["--api-key=sk-in-clear-0042"], ["--api-key", "sk-in-clear-0042"],
                                   ["--api_key=sk-in-clear-0042"]])
def test_an_api_key_in_extra_args_is_refused(engine, extra):
    r = cli(["plan", "--json", "--gpu", "H100", "--engine", engine, *[f"--extra-arg={a}" for a in extra]])
    line = one_line_error(r)
    assert "--api-key" in line and "environment" in line
    assert "sk-in-clear-0042" not in r.stdout + r.stderr


def test_export_refuses_an_api_key_in_extra_args_too():
    r = cli(["export", "systemd", "--gpu", "H100", "--extra-arg=--api-key=sk-in-clear-0042"])
    line = one_line_error(r)
    assert "--api-key" in line and "sk-in-clear-0042" not in r.stdout


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_every_alias_in_the_spellings_is_a_real_flag_of_some_release(engine):
    """An alias no release accepts is a typo in profiles/engines.yaml (aliases come from --help)."""
    from qwenplan.planner.engines import get_engine
    from qwenplan.planner.flags import flag_set, versions_on_file

    known = set().union(*(flag_set(engine, v).flags for v in versions_on_file(engine)))
    aliases = [a for entries in get_engine(engine).raw["args"].values() if isinstance(entries, list)
               for e in entries for a in e.get("aliases") or ()]
    assert aliases and all(a in known for a in aliases), [a for a in aliases if a not in known]


# --- item 5 and the lows: hostile hardware documents -------------------------------------------

BOMB = """schema: qwenplan.hardware/1
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
gpus: []
{where}: *i
"""


@pytest.mark.parametrize("where", ["notes", "extra_field", "driver", "host"])
def test_a_billion_laughs_document_is_refused_at_once(tmp_path, where):
    doc = tmp_path / "bomb.yaml"
    doc.write_text(BOMB.replace("{where}", where))
    t0 = time.monotonic()
    line = one_line_error(cli(["plan", "--hardware", str(doc)], timeout=60))
    assert time.monotonic() - t0 < 20 and "alias" in line


def test_a_bomb_inside_a_gpu_is_refused(tmp_path):
    doc = tmp_path / "bomb.yaml"
    doc.write_text(BOMB.replace("gpus: []\n{where}: *i\n", "gpus:\n  - {name: H100, notes: *i}\n"))
    assert "alias" in one_line_error(cli(["plan", "--hardware", str(doc)], timeout=60))


def test_unknown_fields_are_refused_by_name():
    with pytest.raises(InputError, match=r"gpus\[0\] has an unknown field 'colour'"):
        hardware.from_dict({"gpus": [{"name": "H100", "colour": "green"}]})
    with pytest.raises(InputError, match="host has an unknown field"):
        hardware.from_dict({"gpus": [], "host": {"ram": 1}})
    with pytest.raises(InputError, match="notes must be a list of strings"):
        hardware.from_dict({"gpus": [], "notes": [["nested"]]})


def test_a_probe_document_still_round_trips():
    doc = json.loads((EXAMPLES / "h100-80gb.json").read_text())
    doc["cuda_visible_devices"] = "0"
    hw = hardware.from_dict(doc, lookup=find_gpu)
    assert hardware.from_dict(hw.to_dict(), lookup=find_gpu).to_dict() == hw.to_dict()


def test_a_fifo_dev_zero_and_a_huge_file_are_refused_without_reading_them(tmp_path):
    fifo = tmp_path / "hw.fifo"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.json"
    huge.write_text('{"gpus": [], "notes": ["' + "x" * (2 << 20) + '"]}')
    for path, needle in ((fifo, "not a regular file"), ("/dev/zero", "not a regular file"), (huge, "bytes")):
        t0 = time.monotonic()
        line = one_line_error(cli(["plan", "--hardware", str(path)], timeout=30))
        assert needle in line and time.monotonic() - t0 < 20


def test_deeply_nested_json_is_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200000 + "]" * 200000)
    assert "nests too deeply" in one_line_error(cli(["plan", "--hardware", str(deep)]))


def gpu_doc(tmp_path, **gpu):
    path = tmp_path / "hw.json"
    path.write_text(json.dumps({"schema": "qwenplan.hardware/1", "gpus": [{"index": 0, "name": "H100", **gpu}]}))
    return str(path)


@pytest.mark.parametrize("gpu,needle", [
    ({"memory_total_bytes": float("nan")}, "finite"),
    ({"memory_total_bytes": float("inf")}, "finite"),
    ({"memory_total_bytes": 85 << 30, "memory_free_bytes": float("nan")}, "finite"),
    ({"memory_total_bytes": 85 << 30, "memory_reserved_bytes": 85 << 30}, "leaves nothing"),
    ({"memory_total_bytes": 85 << 30, "memory_reserved_bytes": 90 << 30}, "leaves nothing"),
    ({"memory_total_bytes": 1e30}, "beyond any real hardware"),
    ({"name": "H100\x1b]0;pwned\x07"}, "control characters"),
])
def test_absurd_gpu_memory_is_refused_with_exit_2(tmp_path, gpu, needle):
    line = one_line_error(cli(["plan", "--hardware", gpu_doc(tmp_path, **gpu)]))
    assert needle in line


def test_a_thousand_gpus_are_refused_naming_the_largest_count(tmp_path):
    path = tmp_path / "many.json"
    path.write_text(json.dumps({"gpus": [{"index": i, "name": "H100"} for i in range(1024)]}))
    line = one_line_error(cli(["plan", "--hardware", str(path)]))
    assert f"at most {hardware.MAX_GPUS}" in line and "1024" in line
    line = one_line_error(cli(["plan", "--gpu", "H100", "--gpus", "1024"]))
    assert f"at most {hardware.MAX_GPUS}" in line


# --- items 6, 7 and issue 17 item 3: calibration that cannot be poisoned -----------------------

H100_VLLM = ["--gpu", "H100", "--engine", "vllm", "--engine-version", "0.32.0"]
NVML_H100 = {"PYTHONPATH": f"{ROOT / 'tests' / 'fakes' / 'nvml_here'}{os.pathsep}{ROOT}"}


def h100_doc() -> dict:
    return make_plan(what_if(["H100"]), PlanOptions(engine="vllm", engine_version="0.32.0")).to_dict()


def observation(doc: dict, weights: float | None = None, **reported) -> dict:
    """What `verify` stores for this plan, with the engine having reported `weights`."""
    m = doc["memory"]
    w = m["weights_bytes"] if weights is None else weights
    return {"date": "2026-11-30", "source": "test",
            "gpu": {"name": m["gpus"][0]["name"], "memory_total_bytes": m["gpus"][0]["total_bytes"], "uuids": []},
            "settings": {k: doc["settings"].get(k) for k in ("max_model_len", "max_num_seqs", "max_num_batched_tokens",
                                                             "gpu_memory_utilization", "enforce_eager", "speculative")},
            "predicted": {k: m.get(k) for k in ("weights_bytes", "activation_bytes", "non_torch_bytes",
                                                "cudagraph_bytes", "kv_cache_bytes", "kv_cache_tokens")},
            "reported": {"weights_bytes": w, "activation_bytes": m["activation_bytes"],
                         "non_torch_bytes": m["non_torch_bytes"], **reported}}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty calibration store (the same one the CLI subprocesses use) and the H100 plan's key."""
    monkeypatch.setenv("QWENPLAN_STATE_DIR", str(tmp_path / "state"))
    d = calibration.store_dir()
    d.mkdir(parents=True)
    doc = h100_doc()
    return {"dir": d, "doc": doc, "file": d / f"{calibration.plan_key(doc)}.json",
            "env": {"QWENPLAN_STATE_DIR": str(tmp_path / "state")}}


def write_record(store, observations=None, raw=None):
    doc = {"schema": calibration.SCHEMA, "key": calibration.plan_key(store["doc"]),
           "observations": observations if observations is not None else [observation(store["doc"])]}
    store["file"].write_text(raw if raw is not None else json.dumps(doc))


def planned(store, *more):
    r = cli(["plan", "--json", *H100_VLLM, *more], env=store["env"])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), r.stderr


@pytest.mark.parametrize("raw", [
    "[]", "null", '{"schema": "qwenplan.calibration/1", "observations": []}',                 # no key
    '{"schema": "qwenplan.calibration/1", "key": "KEY", "observations": [1]}',                # an int observation
    '{"schema": "qwenplan.calibration/1", "key": "KEY", "observations": {}}',
    '{"schema": "qwenplan.calibration/1", "key": "KEY", "observations": [{"date": "d", "reported": []}]}',
])
@pytest.mark.parametrize("command", [["plan", *H100_VLLM], ["explain", *H100_VLLM], ["calibration", "list"]])
def test_a_calibration_file_of_the_wrong_shape_is_set_aside_not_a_crash(store, raw, command):
    write_record(store, raw=raw.replace("KEY", calibration.plan_key(store["doc"])))
    r = cli(command, env=store["env"])
    assert r.returncode == 0, r.stderr
    assert "set aside" in r.stderr and "internal error" not in r.stderr
    assert not store["file"].exists() and list(store["dir"].glob("*.bad-*"))


@pytest.mark.parametrize("field,value", [
    ("settings.speculative", "on"), ("settings.max_num_seqs", "8"), ("reported.kv_tokens", [1]),
])
def test_a_wrong_type_deep_in_a_record_is_set_aside(store, field, value):
    o = observation(store["doc"])
    part, key = field.split(".")
    o[part][key] = value
    write_record(store, [o])
    _, err = planned(store)
    assert "set aside" in err


@pytest.mark.parametrize("weights", [-5 << 30, True, 1e30, float("nan"), float("inf"), 0, "33GiB"])
def test_absurd_calibration_values_are_set_aside_with_a_warning_and_change_nothing(store, weights):
    formula, _ = planned(store, "--no-calibration")
    write_record(store, [observation(store["doc"], weights=weights)])
    p, err = planned(store)
    assert "set aside" in err and "weights_bytes" in err
    assert p["settings"] == formula["settings"]
    assert p["settings"].get("kv_cache_memory_bytes") is None


def test_a_report_far_off_the_prediction_is_kept_but_changes_no_plan_until_a_second_agrees(store):
    formula, _ = planned(store, "--no-calibration")
    far = int(store["doc"]["memory"]["weights_bytes"] * 0.6)          # 40 % under: another checkpoint?
    write_record(store, [observation(store["doc"], weights=far)])
    p, err = planned(store)
    assert p["settings"] == formula["settings"]
    assert "40% off the predicted weights" in err and "second report agrees" in err
    assert store["file"].exists()                                      # kept as a report
    write_record(store, [observation(store["doc"], weights=far), observation(store["doc"], weights=far + (1 << 20))])
    p, err = planned(store)
    assert p["settings"] != formula["settings"] and "off the predicted" not in err


def test_explain_says_up_front_when_a_stored_report_sized_the_plan_and_no_calibration_ignores_it(store):
    w = int(store["doc"]["memory"]["weights_bytes"] * 0.9)
    write_record(store, [observation(store["doc"], weights=w)])
    r = cli(["explain", "--verbose", *H100_VLLM], env=store["env"])
    assert r.returncode == 0, r.stderr
    head = r.stdout.split("Decisions")[0]
    assert "calibrated" in head and str(store["file"]) in head.replace("\n", "")
    plain = cli(["explain", "--verbose", "--no-calibration", *H100_VLLM], env=store["env"])
    assert "calibrated" not in plain.stdout and "memory_model: formula" in plain.stdout


def test_a_report_that_switches_the_checkpoint_is_named_in_the_summary(store):
    """A trusted report (20 % under its prediction) for BF16 makes BF16 the plan instead of FP8."""
    bf16 = make_plan(what_if(["H100"]), PlanOptions(engine="vllm", engine_version="0.32.0", variant="bf16")).to_dict()
    path = store["dir"] / f"{calibration.plan_key(bf16)}.json"
    path.write_text(json.dumps({"schema": calibration.SCHEMA, "key": calibration.plan_key(bf16), "observations": [
        observation(bf16, weights=int(bf16["memory"]["weights_bytes"] * 0.8))]}))
    r = cli(["explain", *H100_VLLM], env=store["env"])
    assert r.returncode == 0, r.stderr
    head = r.stdout.split("Decisions")[0].replace("\n", "")
    assert "Plan (balanced): bf16" in head
    assert "calibrated: engine reports stored on this box changed the plan" in head
    assert "it would be: fp8" in head and str(path) in head


def test_concurrent_writers_lose_no_report(store):
    code = ("import sys, json; from qwenplan.launch import calibration as c; "
            "doc = json.loads(sys.stdin.read()); c.record(doc, {'weights_bytes': 35 << 30}, sys.argv[1])")
    procs = [subprocess.Popen([sys.executable, "-c", code, f"writer-{i}"], stdin=subprocess.PIPE, text=True,
                              env={**os.environ, **store["env"]}) for i in range(15)]
    payload = json.dumps(store["doc"])
    for p in procs:
        p.stdin.write(payload)
    for p in procs:                  # all released at once, as 15 runs finishing together
        p.stdin.close()
    assert all(p.wait(timeout=120) == 0 for p in procs)
    kept = json.loads(store["file"].read_text())["observations"]
    assert sorted(o["source"] for o in kept) == sorted(f"writer-{i}" for i in range(15))


def test_calibration_clear_with_a_folder_named_json(store):
    (store["dir"] / "trap.json").mkdir()
    write_record(store)
    r = cli(["calibration", "clear"], env=store["env"])
    assert r.returncode == 0, r.stderr
    assert "removed 1 file(s)" in r.stdout and "trap.json is a folder" in r.stderr
    r = cli(["plan", *H100_VLLM], env=store["env"])
    assert r.returncode == 0 and "trap.json is not a regular file; ignored" in r.stderr


def fake_vllm_env(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = ROOT / "tests" / "fake_engine.py"
    exe = bindir / "vllm"
    exe.write_text(f"#!{sys.executable}\nimport runpy, sys\nsys.argv[0]={str(fake)!r}\n"
                   f"runpy.run_path({str(fake)!r}, run_name='__main__')\n")
    exe.chmod(0o755)
    snap = tmp_path / "hub" / "models--Qwen--Qwen3.6-35B-A3B-FP8" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text((ROOT / "profiles/configs/qwen3.6-35b-a3b.json").read_text())
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("a" * 40)
    return {"PATH": f"{bindir}:{os.environ['PATH']}", "QWENPLAN_STATE_DIR": str(tmp_path / "state"),
            "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "FAKE_ENGINE_WEIGHTS_GIB": "33.43",
            **NVML_H100}


def test_a_file_where_the_store_should_be_is_a_warning_after_a_successful_run(tmp_path):
    env = fake_vllm_env(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "calibration").write_text("not a folder")
    r = cli(["verify", *H100_VLLM, "--port", str(free_port())], env=env, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "was not stored" in r.stderr and "internal error" not in r.stderr


def test_a_file_where_the_state_folder_should_be_is_one_line_before_anything_starts(tmp_path):
    env = fake_vllm_env(tmp_path)
    (tmp_path / "state").write_text("not a folder")
    line = one_line_error(cli(["verify", *H100_VLLM, "--port", str(free_port())], env=env, timeout=180))
    assert "cannot create the run log folder" in line and "QWENPLAN_STATE_DIR" in line


@pytest.mark.parametrize("command", [["verify"], ["auto", "--yes"]])
def test_auto_and_verify_refuse_gpus_this_box_does_not_have(tmp_path, command):
    env = fake_vllm_env(tmp_path)                       # the probe sees one H100
    line = one_line_error(cli([*command, "--gpu", "4090", "--port", str(free_port())], env=env, timeout=180))
    assert "this box has NVIDIA H100" in line and "4090" in line
    no_gpu = {k: v for k, v in env.items() if k != "PYTHONPATH"}   # this box as it is: no GPU
    line = one_line_error(cli([*command, *H100_VLLM, "--port", str(free_port())], env=no_gpu, timeout=180))
    assert "this box has no GPU" in line
    assert not (tmp_path / "state" / "calibration").exists()          # nothing stored for GPUs not here


# --- item 8: the profile cache is a cache, never a source of facts -----------------------------

def cached_profiles(cache_home: Path) -> dict[str, Path]:
    """{'gpus' | 'engines' | ...: its cache file}, found by what each holds."""
    out = {}
    for path in (cache_home / "qwenplan" / "profiles").glob("*.json"):
        text = path.read_text()
        data = json.loads(text.split("\n", 1)[-1])
        out[next(iter(k for k in data if k != "schema"), "?")] = path
    return out


def test_an_edited_profile_cache_is_a_miss_not_a_source(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    truth = cli(["plan", "--json", "--gpu", "H100"], env=env)
    assert truth.returncode == 0, truth.stderr
    gpus_file = cached_profiles(tmp_path / "cache")["gpus"]
    head, body = gpus_file.read_text().split("\n", 1)
    data = json.loads(body)
    for g in data["gpus"]:
        g["memory_mib"] = 800_000                   # an "838 GB" H100
    gpus_file.write_text(head + "\n" + json.dumps(data))
    again = cli(["plan", "--json", "--gpu", "H100"], env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["settings"] == json.loads(truth.stdout)["settings"]
    assert json.loads(again.stdout)["variant"]["id"] != "bf16"


@pytest.mark.parametrize("content", ["{}", "null", "[]", '{"key": 1}\n{}', ""])
def test_a_profile_cache_of_the_wrong_shape_is_a_miss(tmp_path, content):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert cli(["plan", "--json", "--gpu", "H100"], env=env).returncode == 0
    for path in cached_profiles(tmp_path / "cache").values():
        path.write_text(content)
    r = cli(["plan", "--json", "--gpu", "H100"], env=env)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_fifo_or_a_link_to_dev_zero_in_the_profile_cache_does_not_hang(tmp_path, kind):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert cli(["plan", "--json", "--gpu", "H100"], env=env).returncode == 0
    for path in cached_profiles(tmp_path / "cache").values():
        path.unlink()
        if kind == "fifo":
            os.mkfifo(path)
        else:
            path.symlink_to("/dev/zero")
    r = cli(["plan", "--json", "--gpu", "H100"], env=env, timeout=60)
    assert r.returncode == 0, r.stderr


# --- the property tests: stores and caches written by anyone ---------------------------------

JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                               st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
PATHS = [("reported", k) for k in ("weights_bytes", "activation_bytes", "non_torch_bytes", "cudagraph_bytes",
                                   "cudagraph_estimate_bytes", "kv_cache_bytes", "kv_tokens", "engine", "extra")] + \
        [("settings", k) for k in ("max_num_seqs", "max_num_batched_tokens", "enforce_eager", "speculative")] + \
        [("predicted", "weights_bytes"), ("gpu", "memory_total_bytes"), ("date", None), ("reported", None),
         ("settings", None), (None, None)]
DOC = h100_doc()
KEY = calibration.plan_key(DOC)


@st.composite
def calibration_files(draw):
    """A record as verify writes it, with some of its values replaced by anything JSON can hold,
    or no record at all."""
    if draw(st.integers(0, 9)) == 0:
        return json.dumps(draw(JSON_VALUES))
    observations = []
    for _ in range(draw(st.integers(1, 3))):
        o = observation(DOC, weights=draw(st.integers(1 << 30, 60 << 30)))
        for _ in range(draw(st.integers(0, 3))):
            part, key = draw(st.sampled_from(PATHS))
            value = draw(JSON_VALUES)
            if part is None:
                o = value
                break
            if key is None:
                o[part] = value
            elif isinstance(o.get(part), dict):
                o[part][key] = value
        observations.append(o)
    return json.dumps({"schema": calibration.SCHEMA, "key": KEY, "observations": observations})


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calibration_files(), st.sampled_from(["balanced", "throughput"]))
def test_no_calibration_file_crashes_a_plan_or_plans_past_memory(text, goal):
    import tempfile

    old = os.environ.get("QWENPLAN_STATE_DIR")
    with tempfile.TemporaryDirectory() as state:
        os.environ["QWENPLAN_STATE_DIR"] = state
        try:
            calibration.store_dir().mkdir(parents=True)
            (calibration.store_dir() / f"{KEY}.json").write_text(text)
            found, problems = calibration.lookup_all()
        finally:
            os.environ.pop("QWENPLAN_STATE_DIR") if old is None else os.environ.update(QWENPLAN_STATE_DIR=old)
    for obs in found.values():                      # what plans may use is physically possible
        w = obs["reported"]["weights_bytes"]
        assert isinstance(w, int) and 0 < w < obs["gpu"]["memory_total_bytes"]
    assert all(isinstance(p, str) and "\n" not in p for p in problems)
    p = make_plan(what_if(["H100"]), PlanOptions(engine="vllm", engine_version="0.32.0", goal=goal, measured=found))
    if p.status == "ok":
        for g in p.memory["gpus"]:
            assert 0 < g["used_bytes"] <= g["budget_bytes"] <= g["total_bytes"]
        kv = p.settings.get("kv_cache_memory_bytes")
        assert kv is None or 0 <= kv <= p.memory["gpus"][0]["budget_bytes"]
        render(p.to_dict())


@st.composite
def cache_files(draw, key: str, body: bytes):
    """Anything in place of a profile's cache file, short of a forgery of its key and hash."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:
        return json.dumps(draw(JSON_VALUES)).encode()
    import hashlib

    other = json.dumps(draw(JSON_VALUES)).encode()
    if kind == 2:                                  # the right key, a body edited after hashing
        head = {"key": key, "sha256": hashlib.sha256(body).hexdigest()}
        return json.dumps(head).encode() + b"\n" + (other if other != body else b"{}")
    head = {"key": draw(st.text(max_size=64)), "sha256": hashlib.sha256(other).hexdigest()}   # another key
    return json.dumps(head).encode() + b"\n" + other


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["gpus.yaml", "engines.yaml", "goals.yaml", "memory.yaml"]), st.data())
def test_a_profile_is_what_its_yaml_says_whatever_the_cache_holds(name, data):
    import tempfile

    text = catalog.profile_text(name)
    truth = catalog._yaml_load(text)
    old = os.environ.get("XDG_CACHE_HOME")
    with tempfile.TemporaryDirectory() as cache_home:
        os.environ["XDG_CACHE_HOME"] = cache_home
        try:
            path, key = catalog._parsed_cache(text)
            path.parent.mkdir(parents=True)
            path.write_bytes(data.draw(cache_files(key, json.dumps(truth).encode())))
            catalog.load_profile.cache_clear()
            assert catalog.load_profile(name) == truth
            catalog.load_profile.cache_clear()
            assert catalog.load_profile(name) == truth      # and the rewritten cache is read back right
        finally:
            catalog.load_profile.cache_clear()
            os.environ.pop("XDG_CACHE_HOME") if old is None else os.environ.update(XDG_CACHE_HOME=old)
