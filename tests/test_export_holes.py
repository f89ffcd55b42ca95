"""The export holes of the reliability issue (20: items 4, 9, 10 and the low ones) and the first-try
exports of the first-hour issue (17, item 5). Each test fails on the code before the fix.

The injection test at the end sends every user string an export takes through every format that
takes it: a refusal is one line naming the option (exit 2 from the CLI); anything accepted goes
through the real validators (systemd-analyze, docker-compose, kubernetes-validate, bash -n and
shellcheck) and is parsed back to the value given.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import shlex
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from qwenplan.launch import export as ex
from qwenplan.launch.cli import main
from qwenplan.planner.errors import InputError

from tests.test_export import (
    _flags_in_file,
    _tool,
    compose_config,
    fake_venv,
    k8s_argv,
    k8s_docs,
    load,
    run_script,
    script_checks,
    sd_exec,
    sd_parse,
    sd_specifiers,
    stub_bin,
    systemd_verify,
)

ESC = "\x1b]0;pwned\x07\x1b[31m"


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """The real command line, in this process."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qwenplan: error:"), err
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", err), "a control character reached the terminal"
    for w in words:
        assert w in err, (w, err)


def refused(match: str, fn, *args, **kw) -> str:
    with pytest.raises(InputError, match=match) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg and not ex.CONTROL.search(msg)
    return msg


# --- item 4: the systemd env file, and the script's ---------------------------------------------

@pytest.mark.parametrize("path,why", [("qwen.env", "not an absolute path"), ("-/etc/q.env", "not an absolute"),
                                      ("/etc/q.env\\", "backslash"), ("/etc/q\n.env", "control character")])
def test_systemd_env_file_must_be_absolute_and_plain(capsys, path, why):
    code, out, err = cli(capsys, "export", "systemd", "--gpu", "H100", "--env-file", path)
    one_line_error(code, err, "--env-file", why)
    assert out == ""


def test_systemd_env_file_absolute_is_read(tmp_path):
    unit = ex.render_systemd(load("vllm-h100-fp8"), venv=str(fake_venv(tmp_path)), env_file="/srv/q 100%.env")
    assert sd_specifiers(dict(sd_parse(unit)["Service"])["EnvironmentFile"]) == "/srv/q 100%.env"
    systemd_verify(tmp_path, unit, "q.service")


def test_script_env_file_with_a_quote(tmp_path, capsys):
    home = tmp_path / "home" / "o'brien"
    home.mkdir(parents=True)
    env = home / "q.env"
    code, text, err = cli(capsys, "export", "script", "--gpu", "H100", "--env-file", str(env))
    assert code == 0, err
    script_checks(tmp_path, text)           # bash -n and shellcheck
    env.write_text("VLLM_API_KEY=from-o'brien\n")
    r = run_script(tmp_path, text)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["env"]["VLLM_API_KEY"] == "from-o'brien"
    r = run_script(tmp_path, text, {"QWENPLAN_ENV_FILE": str(tmp_path / "none.env")})   # still overridable
    assert r.returncode == 0 and json.loads(r.stdout)["env"]["VLLM_API_KEY"] is None


# --- item 9: multi-node PP x DP plans export ----------------------------------------------------

def plan_json(capsys, *args: str) -> dict:
    code, out, err = cli(capsys, "plan", "--json", *args)
    assert code == 0, err
    return json.loads(out)


# The throughput goal plans data-parallel replicas over two nodes (PP x DP); the balanced goal,
# chosen by predicted speed, now prefers TP 4 x PP 2 there.
@pytest.mark.parametrize("goal", ["throughput"])
def test_multinode_data_parallel_plans_export(tmp_path, capsys, goal):
    plan = plan_json(capsys, "--gpu", "H100", "--gpus", "4", "--nodes", "2", "--goal", goal)
    assert plan["parallel"]["data"] == 4 and plan["parallel"]["pipeline"] == 2   # the plan this is about
    # the script: the same file on both nodes; the worker's first rank is 2 (two whole ranks per node)
    text = ex.render_script(plan)
    script_checks(tmp_path, text)
    argvs = []
    for rank in ("0", "1"):
        r = run_script(tmp_path, text, {"QWENPLAN_NODE_RANK": rank, "QWENPLAN_HEAD_ADDR": "10.0.0.1"})
        assert r.returncode == 0, r.stderr
        argvs.append(json.loads(r.stdout)["argv"])
    head, worker = argvs
    for a in argvs:
        assert a[a.index("--data-parallel-size") + 1] == "4" and a[a.index("--data-parallel-size-local") + 1] == "2"
        assert a[a.index("--data-parallel-address") + 1] == "10.0.0.1"
        assert a[a.index("--pipeline-parallel-size") + 1] == "2"
        _flags_in_file(plan, a)
    assert "--headless" in worker and worker[worker.index("--data-parallel-start-rank") + 1] == "2"
    assert "--headless" not in head and "--data-parallel-start-rank" not in head
    # Kubernetes: a LeaderWorkerSet whose worker computes its first rank from LWS_WORKER_INDEX
    docs = k8s_docs(ex.render_k8s(plan))
    t = docs["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]
    work = t["workerTemplate"]["spec"]["containers"][0]
    assert work["resources"]["limits"]["nvidia.com/gpu"] == 4
    sh = k8s_argv(work, {"LWS_LEADER_ADDRESS", "LWS_WORKER_INDEX"})
    assert sh[:2] == ["/bin/sh", "-c"]
    stubs = stub_bin(tmp_path)
    printed = subprocess.run(["/bin/sh", "-c", sh[2]], check=False, capture_output=True, text=True, timeout=30,
                             env={"PATH": f"{stubs}:/usr/bin:/bin", "LWS_WORKER_INDEX": "1",
                                  "LWS_LEADER_ADDRESS": "10.0.0.9"})
    assert printed.returncode == 0, printed.stderr
    got = json.loads(printed.stdout)["argv"]
    assert got[got.index("--data-parallel-start-rank") + 1] == "2" and "--headless" in got
    # systemd and compose: one file per node
    venv = fake_venv(tmp_path)
    for rank in (0, 1):
        unit = ex.render_systemd(plan, venv=str(venv), node_rank=rank, head_addr="10.0.0.1")
        systemd_verify(tmp_path, unit, f"q{rank}.service")
        a = sd_exec(unit)
        assert ("--headless" in a) == (rank == 1)
        compose = ex.render_compose(plan, node_rank=rank, head_addr="10.0.0.1")
        compose_config(tmp_path, compose)
    assert "data-parallel ranks, 2 on each node" in text      # the header says where the ranks sit


def test_multinode_data_parallel_refusals(capsys):
    code, _, err = cli(capsys, "export", "script", "--gpu", "H100", "--gpus", "4", "--nodes", "3", "--goal", "throughput")
    one_line_error(code, err, "4 data-parallel ranks", "3 nodes", "--goal long-context")
    plan = load("sglang-2x4-multinode")          # as the planner wrote it before its speed model: PP x DP
    plan["parallel"].update(tensor=2, data=2)
    a = plan["command"]["argv"]
    a[a.index("--tp-size") + 1] = "2"
    plan["command"]["argv"] = a + ["--dp-size", "2"]
    for kind in ("k8s", "script"):
        refused("SGLang refuses data parallel.*--engine vllm", ex.render, kind, plan)


# --- item 10: compose publishes on an IP address ------------------------------------------------

def test_compose_publish_host_localhost_resolves(tmp_path):
    text = ex.render_compose(load("vllm-h100-fp8"), publish_host="localhost")
    cfg = compose_config(tmp_path, text)
    assert cfg["services"]["qwen"]["ports"][0].startswith("127.0.0.1:8000:8000")


@pytest.mark.parametrize("opt", ["--publish-host", "--host"])
@pytest.mark.parametrize("host", ["myhost.example", "fe80::1%eth0", "not-an-ip"])
def test_compose_host_name_refused(capsys, opt, host):
    code, _, err = cli(capsys, "export", "compose", "--gpu", "H100", opt, host)
    one_line_error(code, err, "not an IP address", "127.0.0.1")


# --- low: HF cache, Kubernetes names and sizes, control characters, lengths ----------------------

@pytest.mark.parametrize("value,why", [("hf", "not a folder path"), ("/srv/hf:/etc", "contains ':'"),
                                       ("/etc", "system folder"), ("/usr/local/hf", "system folder"),
                                       ("/", "system folder")])
def test_compose_hf_cache_must_be_a_folder_of_its_own(capsys, value, why):
    code, _, err = cli(capsys, "export", "compose", "--gpu", "H100", "--hf-cache", value)
    one_line_error(code, err, "--hf-cache", why)


@pytest.mark.parametrize("opt,value", [("--namespace", "a b"), ("--namespace", "Bad_NS!"),
                                       ("--secret-name", "x; touch /tmp/p"), ("--storage-size", "lots"),
                                       ("--storage-size", "-5Gi"), ("--storage-size", "64GB"),
                                       ("--storage-size", "0Gi"), ("--storage-class", "Fast SSD"),
                                       ("--hf-cache", "My_Claim")])
def test_k8s_names_and_sizes(capsys, opt, value):
    code, _, err = cli(capsys, "export", "k8s", "--gpu", "H100", opt, value)
    one_line_error(code, err, opt)
    if value == "64GB":
        assert "64Gi or 64G" in err


def test_k8s_valid_names_pass_and_the_kubectl_line_is_quoted():
    text = ex.render_k8s(load("vllm-h100-fp8"), namespace="llm-1", secret_name="qwen.secrets", storage_size="1.5Ti",
                         storage_class="fast-ssd")
    docs = k8s_docs(text)
    assert docs["PersistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"] == "1.5Ti"
    line = next(x for x in text.splitlines() if "kubectl create secret" in x)
    words = shlex.split(line.split(":", 1)[1])
    assert words[:5] == ["kubectl", "create", "secret", "generic", "qwen.secrets"]
    assert words[5:7] == ["--namespace", "llm-1"]


@pytest.mark.parametrize("kind,opt", [("compose", "--image"), ("k8s", "--image"), ("compose", "--host"),
                                      ("compose", "--hf-cache"), ("k8s", "--secret-name"),
                                      ("systemd", "--env-file"), ("script", "--env-file"),
                                      ("compose", "--env-file"), ("compose", "--publish-host"),
                                      ("systemd", "--host"), ("k8s", "--namespace")])
def test_control_characters_refused(capsys, kind, opt):
    code, out, err = cli(capsys, "export", kind, "--gpu", "H100", opt, f"/srv/x{ESC}y")
    one_line_error(code, err, opt)
    assert out == ""


def test_control_characters_from_the_plan_are_escaped_in_comments(tmp_path):
    plan = load("vllm-h100-fp8")
    plan["variant"]["repo"] = f"Qwen/x{ESC}\ny"
    for kind in ex.KINDS:
        text = ex.render(kind, plan, **({"venv": str(fake_venv(tmp_path))} if kind == "systemd" else {}))
        assert "\x1b" not in text and "\x07" not in text, kind
        if kind in ("compose", "k8s"):
            list(yaml.safe_load_all(text))
    unit = ex.render_systemd(plan, venv=str(fake_venv(tmp_path)))
    assert [k for k, _ in sd_parse(unit)["Unit"]].count("Description") == 1   # the newline made no new line
    systemd_verify(tmp_path, unit, "q.service")


def test_probe_and_explain_escape_control_characters(tmp_path, capsys):
    # A hardware document is refused outright (planner/hardware.py); what NVML itself reports
    # (a GPU name, a note) goes through the console, which shows control characters as \xNN.
    code, out, _ = cli(capsys, "probe", "--gpu", "H100", "--json")
    hw = json.loads(out)
    hw["gpus"][0]["name"] = f"NVIDIA H100 80GB HBM3{ESC}"
    f = tmp_path / "hw.json"
    f.write_text(json.dumps(hw))
    code, out, err = cli(capsys, "explain", "--hardware", str(f))
    assert code == 2 and "control characters" in err and "\x1b" not in err
    from qwenplan.launch import views
    c = views.console()
    with c.capture() as cap:
        c.print(f"NVIDIA H100{ESC}[2J a note \x9b2J\x07", markup=False)
    shown = cap.get()
    assert "\x1b" not in shown and "\x9b" not in shown and "\x07" not in shown
    assert "\\x1b" in shown                 # shown, not hidden


def test_a_huge_served_name_is_refused(capsys):
    plan = load("vllm-h100-fp8")
    i = plan["command"]["argv"].index("--served-model-name")
    plan["command"]["argv"][i + 1] = "n" * 1_500_000
    for kind in ex.KINDS:
        refused("characters long", ex.render, kind, plan)
    code, _, err = cli(capsys, "export", "systemd", "--gpu", "H100", "--served-name", "n" * 100_000)
    one_line_error(code, err, "100,000 characters")


# --- low: -o on a full or read-only filesystem, the umask ----------------------------------------

@pytest.mark.parametrize("where,err_no", [("os.fsync", errno.ENOSPC), ("tempfile.mkstemp", errno.EROFS)])
def test_output_on_a_full_or_read_only_filesystem(tmp_path, capsys, monkeypatch, where, err_no):
    def fail(*a, **k):
        raise OSError(err_no, os.strerror(err_no))

    mod, name = where.split(".")
    monkeypatch.setattr({"os": os, "tempfile": tempfile}[mod], name, fail)
    out = tmp_path / "compose.yaml"
    code, _, err = cli(capsys, "export", "compose", "--gpu", "H100", "-o", str(out))
    one_line_error(code, err, "cannot write", os.strerror(err_no))
    assert list(tmp_path.iterdir()) == []


def test_exports_respect_the_umask(tmp_path, capsys):
    old = os.umask(0o077)
    try:
        for kind, name in (("compose", "compose.yaml"), ("script", "serve.sh"), ("k8s", "q.yaml")):
            code, _, err = cli(capsys, "export", kind, "--gpu", "H100", "-o", str(tmp_path / name))
            assert code == 0, err
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        assert modes == {"compose.yaml": 0o600, "serve.sh": 0o700, "q.yaml": 0o600, "qwen.env": 0o600}
    finally:
        os.umask(old)
    os.umask(0)          # the env file holds secrets: 600 even under umask 000
    try:
        d = tmp_path / "open"
        d.mkdir()
        assert cli(capsys, "export", "compose", "--gpu", "H100", "-o", str(d / "compose.yaml"))[0] == 0
        assert stat.S_IMODE((d / "qwen.env").stat().st_mode) == 0o600
        assert stat.S_IMODE((d / "compose.yaml").stat().st_mode) == 0o666
    finally:
        os.umask(old)


# --- issue 17, item 5: exports that work on the first try ---------------------------------------

def test_compose_env_file_is_written_once_and_compose_accepts_it(tmp_path, capsys):
    out = tmp_path / "compose.yaml"
    code, _, err = cli(capsys, "export", "compose", "--gpu", "H100", "-o", str(out))
    assert code == 0, err
    env = tmp_path / "qwen.env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    body = env.read_text()
    assert "#HF_TOKEN=\n" in body and "#VLLM_API_KEY=\n" in body
    assert not [x for x in body.splitlines() if x and not x.startswith("#")], "names only, no values"
    tool = _tool("docker-compose")
    r = subprocess.run([tool, "-f", str(out), "config"], check=False, capture_output=True, text=True, cwd=tmp_path, timeout=60,
                       env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr           # no manual step: the env file is there
    env.write_text("HF_TOKEN=hf_mine\n")
    code, _, err = cli(capsys, "export", "compose", "--gpu", "H100", "-o", str(out), "--force")
    assert code == 0, err
    assert env.read_text() == "HF_TOKEN=hf_mine\n"       # never overwritten


def test_systemd_env_file_template_beside_the_unit(tmp_path, capsys):
    venv = fake_venv(tmp_path)
    code, _, err = cli(capsys, "export", "systemd", "--gpu", "H100", "--venv", str(venv),
                       "-o", str(tmp_path / "q.service"))
    assert code == 0, err
    assert "#VLLM_API_KEY=" in (tmp_path / "qwen.env").read_text()
    assert "warning" not in err
    unit = (tmp_path / "q.service").read_text()
    assert "install -D -m 600 qwen.env /etc/qwenplan/qwen.env" in unit


def test_compose_volume_honours_hf_home(tmp_path):
    text = ex.render_compose(load("vllm-h100-fp8"))
    tool = _tool("docker-compose")
    (tmp_path / "compose.yaml").write_text(text)
    (tmp_path / "qwen.env").write_text("")
    for hf_home, want in (("/data/hf", "/data/hf"), (None, str(tmp_path / ".cache" / "huggingface"))):
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)} | ({"HF_HOME": hf_home} if hf_home else {})
        r = subprocess.run([tool, "config"], check=False, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        vol = yaml.safe_load(r.stdout)["services"]["qwen"]["volumes"][0]
        assert vol.split(":")[:2] == [want, "/root/.cache/huggingface"], vol


def test_systemd_missing_program_warns(capsys, tmp_path):
    code, out, err = cli(capsys, "export", "systemd", "--gpu", "H100", "--venv", str(tmp_path / "nope"))
    assert code == 0 and out
    assert "warning" in err and str(tmp_path / "nope" / "bin" / "vllm") in err


def test_exported_comments_cite_nothing_outside_the_export(tmp_path):
    for name in ("vllm-h100-fp8", "vllm-2x4-multinode"):
        plan = load(name)
        opts = {"node_rank": 0, "head_addr": "10.0.0.1"} if name.endswith("multinode") else {}
        for kind in ex.KINDS:
            kw = dict(opts) if kind in ("systemd", "compose") else {}
            text = ex.render(kind, plan, **kw)
            assert "shared/" not in text and "gpu-truth" not in text, kind


# --- the injection test: every user string x every format x the real validators -------------------

HOSTILE = ["plain-value", "a b", "x'y", 'x"y', "$HOME", "${PATH}", "$(id)", "`id`", "%h", "100%", "a;b|c",
           "trail\\", "-rf", "#c", "a:b", "*", "ünïcödé", "q\x1b[31m", "l1\nl2", "t\tb", "sep\u2028x", "x" * 5000]

# what each export takes, and where its value is read back from (None: checked by a run)
OPTIONS = {
    "systemd": ["env_file", "venv", "head_addr", "host", "served_name"],
    "compose": ["image", "env_file", "hf_cache", "publish_host", "head_addr", "host", "served_name"],
    "k8s": ["image", "namespace", "secret_name", "storage_size", "storage_class", "hf_cache", "host", "served_name"],
    "script": ["env_file", "venv", "host", "served_name"],
}


def _value_for(opt: str, raw: str, tmp: Path) -> str:
    """Paths get an absolute stem where the option wants one, so the hostile part is what is tested."""
    if opt in ("env_file", "venv"):
        return str(tmp / opt / raw)
    if opt == "hf_cache":
        return "/srv/" + raw
    return raw


def _case(kind: str, opt: str, value: str) -> tuple[dict, dict]:
    multi = opt == "head_addr"
    plan = copy.deepcopy(load("vllm-2x4-multinode" if multi else "vllm-h100-fp8"))
    kw: dict = {"node_rank": 1} if multi else {}
    if opt == "host":
        plan["settings"]["host"] = value
        a = plan["command"]["argv"]
        a[a.index("--host") + 1] = value
    elif opt == "served_name":
        a = plan["command"]["argv"]
        a[a.index("--served-model-name") + 1] = value
        plan["variant"]["served_model_name"] = value
    else:
        kw[opt] = value
    if multi:
        kw.setdefault("head_addr", "10.0.0.1")
    return plan, kw


def _systemd_back(opt: str, text: str) -> str:
    if opt == "env_file":
        return sd_specifiers(dict(sd_parse(text)["Service"])["EnvironmentFile"])
    argv = sd_exec(text)
    if opt == "venv":
        return str(Path(argv[0]).parent.parent)
    flag = {"head_addr": "--master-addr", "host": "--host"}.get(opt, "--served-model-name")
    return argv[argv.index(flag) + 1]


def _compose_back(opt: str, raw: dict, cfg: dict) -> str:
    """One service's value, as written (raw) and as docker-compose read it (cfg)."""
    cfg = json.loads(json.dumps(cfg).replace("$$", "$"))
    argv = [w.replace("$$", "$") for w in raw["command"]]
    if opt == "image":
        return cfg["image"]
    if opt == "env_file":
        return raw["env_file"][0].replace("$$", "$")
    if opt == "hf_cache":
        return cfg["volumes"][0].rsplit(":", 2)[0]
    if opt in ("publish_host", "host"):
        return cfg["ports"][0].split(":")[0]
    flag = "--master-addr" if opt == "head_addr" else "--served-model-name"
    return argv[argv.index(flag) + 1]


def _k8s_back(opt: str, text: str) -> str:
    docs = k8s_docs(text)                       # kubernetes-validate, strict
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    if opt == "host":
        return text             # rewritten to 0.0.0.0 in the pod; only the header names it
    if opt == "image":
        return c["image"]
    if opt == "namespace":
        return docs["Deployment"]["metadata"]["namespace"]
    if opt == "secret_name":
        return next(e for e in c["env"] if "valueFrom" in e)["valueFrom"]["secretKeyRef"]["name"]
    if opt in ("storage_size", "storage_class"):
        spec = docs["PersistentVolumeClaim"]["spec"]
        return spec["resources"]["requests"]["storage"] if opt == "storage_size" else spec["storageClassName"]
    if opt == "hf_cache":
        return next(v for v in pod["volumes"] if v["name"] == "hf-cache")["hostPath"]["path"]
    argv = k8s_argv(c)
    return argv[argv.index("--served-model-name") + 1]


def _fake_programs(venv: Path, stubs: Path | None = None) -> None:
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    for prog in ("vllm", "python3"):
        f = venv / "bin" / prog
        f.write_bytes((stubs / prog).read_bytes() if stubs else b"#!/bin/sh\n")
        f.chmod(0o755)


def test_injection_every_user_string_every_format(tmp_path):
    """Every value either is refused in one line, or validates and comes back unchanged."""
    venv = fake_venv(tmp_path)
    stubs = stub_bin(tmp_path)
    accepted = refusals = 0
    units: list[Path] = []
    scripts: list[Path] = []
    compose: dict[str, tuple[str, str, dict]] = {}     # service name -> (option, value, service as written)
    for kind, opts in OPTIONS.items():
        for opt in opts:
            for raw in HOSTILE:
                value = _value_for(opt, raw, tmp_path)
                plan, kw = _case(kind, opt, value)
                if kind == "systemd" and "venv" not in kw:
                    kw["venv"] = str(venv)
                try:
                    text = ex.render(kind, plan, **kw)
                except InputError as e:
                    msg = str(e)
                    assert "\n" not in msg and not ex.CONTROL.search(msg), (kind, opt, raw)
                    refusals += 1
                    continue
                accepted += 1
                case = tmp_path / f"case{accepted}"
                case.mkdir()
                # raw control characters: none in comments; none at all but newlines outside bash, whose
                # single quotes keep an argument's tab or newline as it is
                checked = [x for x in text.splitlines() if x.startswith("#")] if kind == "script" else [text]
                assert not any(ex.CONTROL.search(x.replace("\n", "")) for x in checked), (kind, opt, raw)
                want = "127.0.0.1" if opt == "publish_host" and value == "localhost" else value
                if kind == "systemd":
                    if opt == "venv":
                        _fake_programs(Path(value))
                    unit = case / f"q{accepted}.service"
                    unit.write_text(text)
                    units.append(unit)
                    assert _systemd_back(opt, text) == want, (opt, raw)
                elif kind == "compose":
                    if opt == "env_file":
                        Path(value).parent.mkdir(parents=True, exist_ok=True)
                        Path(value).write_text("")
                    compose[f"c{accepted}"] = (opt, want, yaml.safe_load(text)["services"]["qwen"])
                elif kind == "k8s":
                    back = _k8s_back(opt, text)
                    assert (want in back) if opt == "host" else (back == want), (opt, raw, back)
                else:
                    f = case / "serve.sh"
                    f.write_text(text)
                    scripts.append(f)
                    r = subprocess.run(["bash", "-n", str(f)], check=False, capture_output=True, text=True)
                    assert r.returncode == 0, (opt, raw, r.stderr)
                    envf = Path(value) if opt == "env_file" else case / "q.env"
                    envf.parent.mkdir(parents=True, exist_ok=True)
                    envf.write_text("VLLM_API_KEY=k\n")
                    extra = {} if opt == "env_file" else {"QWENPLAN_ENV_FILE": str(envf)}
                    if opt == "venv":
                        _fake_programs(Path(value), stubs)
                    r = run_script(case, text, extra, stubs=case / "none" if opt == "venv" else stubs)
                    assert r.returncode == 0, (opt, raw, r.stderr)
                    got = json.loads(r.stdout)
                    assert got["env"]["VLLM_API_KEY"] == "k", (opt, raw)
                    assert got["argv"][got["argv"].index("--served-model-name") + 1] == plan["command"]["argv"][
                        plan["command"]["argv"].index("--served-model-name") + 1]
    # the real validators, batched: systemd-analyze over every unit, shellcheck over every script,
    # docker-compose over one file holding every accepted service
    tool = _tool("systemd-analyze")
    r = subprocess.run([tool, "verify", "--man=no", *map(str, units)], check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and not r.stderr.strip(), r.stdout + r.stderr
    r = subprocess.run([_tool("shellcheck"), "--shell=bash", "--severity=style", *map(str, scripts)],
                       check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout
    d = tmp_path / "compose"
    d.mkdir()
    (d / "compose.yaml").write_text(yaml.safe_dump({"services": {k: svc for k, (_, _, svc) in compose.items()}}))
    (d / "qwen.env").write_text("")
    r = subprocess.run([_tool("docker-compose"), "config"], check=False, capture_output=True, text=True, cwd=d, timeout=120,
                       env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)["services"]
    for name, (opt, want, svc) in compose.items():
        assert _compose_back(opt, svc, cfg[name]) == want, (opt, want)
    # both outcomes happen: the test sees refusals and values that must survive
    assert len(units) > 10 and len(scripts) > 10 and len(compose) > 10 and refusals > 100, \
        (len(units), len(scripts), len(compose), refusals)
