"""Exporters: every export is parsed back by its format's own rules and checked by the real validators.

Validators (installed by .ci/run; a missing one skips only the tests that need it, naming the tool):
systemd-analyze (Debian `systemd`), docker-compose (Debian `docker-compose`), kubernetes-validate
(PyPI), bash and shellcheck (Debian `shellcheck`). Two schemas are vendored in tests/fixtures/schemas/
(README.md there gives their sources): the compose-spec JSON schema, and the LeaderWorkerSet CRD's
openAPIV3Schema, which kubernetes-validate does not know.

Regenerate examples/exports/ with: QWENPLAN_REGEN_EXAMPLES=1 pytest tests/test_export.py -k examples
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qwenplan.launch import export as ex
from qwenplan.launch.export import compose as ex_compose
from qwenplan.launch.export import k8s as ex_k8s
from qwenplan.launch.export import systemd as ex_systemd
from qwenplan.launch import render as render_mod
from qwenplan.planner.errors import InfeasibleError, InputError
from qwenplan.planner.flags import flag_set

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLES = ROOT / "examples" / "exports"
SAMPLE = FIXTURES / "plans" / "sample-vllm-h100.json"
K8S_VERSION = "1.37.0"

# Words that break naive quoting in at least one format.
NASTY = ["--chat-template-kwargs", '{"enable_thinking": false, "note": "a b"}',
         "--override-generation-config", "$HOME %h 100% $(id) `id` ${PATH} \\n \\ 'q' \"dq\" * ? ~ # &",
         "--x", ";", "--y", "", "--z", "naïve ünïcode — ok", "--w", "line1\nline2\ttab", "--v", "$$ %% $( $(HF_TOKEN) ${NOT_SECRET} $HF_TOKEN", "--u",
         "a;b|c>d<e", "--t", "1e3", "--s", "0o17", "--r", ".5", "--q", "on", "--p", "+1"]

# YAML 1.2 readers (kubectl, docker compose v2) would read these unquoted as numbers or booleans.
YAML12_TRAPS = ["1e3", "0o17", ".5", "+1", "on", "0x1F", "~", "null", "True", "12", "-3.0e-2", ".inf"]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed (CI installs it: see .ci/run)")
    return path


def load(name: str) -> dict:
    if name == "sample":
        return json.loads(SAMPLE.read_text())
    return json.loads((EXAMPLES / "plans" / f"{name}.json").read_text())


def nasty(plan: dict) -> dict:
    p = copy.deepcopy(plan)
    p["command"]["argv"] = p["command"]["argv"] + NASTY
    return p


PLANS = {
    "vllm": lambda: load("vllm-h100-fp8"),
    "vllm-nasty": lambda: nasty(load("vllm-h100-fp8")),
    "sglang": lambda: load("sglang-2xh200-fp8"),
    "sglang-nasty": lambda: nasty(load("sglang-2xh200-fp8")),
}
MULTI = {"vllm-mn": lambda: load("vllm-2x4-multinode"), "sglang-mn": lambda: load("sglang-2x4-multinode")}


def secret_names(plan: dict) -> set[str]:
    return set(plan["command"].get("secret_env") or []) | {plan["settings"].get("api_key_env")} - {None}


def expected_words(plan: dict, argv: list[str]) -> list:
    """argv with `${SECRET}` words as ('ENV', name, prefix, suffix) markers."""
    out = []
    for w in argv:
        m = re.search(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", w)
        if m and m.group(1) in secret_names(plan):
            out.append(("ENV", m.group(1), w[:m.start()], w[m.end():]))
        else:
            out.append(w)
    return out


def container_argv(plan: dict) -> list[str]:
    argv = list(plan["command"]["argv"])
    argv[0] = "python3" if argv[0].startswith("python") else argv[0].rsplit("/", 1)[-1]
    if plan["engine"]["name"] == "llamacpp":
        argv[0] = "/app/llama-server"        # the llama.cpp images' ENTRYPOINT (not on PATH)
    i = argv.index("--host")
    argv[i + 1] = "0.0.0.0"
    return argv


# --- systemd: parse with systemd's own rules ----------------------------------------------------

_CESC = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"',
         "'": "'", "s": " "}


def sd_split(text: str) -> list[str]:
    """systemd's extract_first_word(EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE): quotes may open mid-word."""
    words, cur, i, quote, inword = [], [], 0, None, False
    while i < len(text):
        c = text[i]
        if quote is None and c in " \t\n" and inword is False:
            i += 1
            continue
        if quote is None and c in " \t\n":
            words.append("".join(cur))
            cur, inword = [], False
            i += 1
            continue
        inword = True
        if c == "\\":
            n = text[i + 1]
            if n == "x":
                cur.append(chr(int(text[i + 2:i + 4], 16)))
                i += 4
            elif n == "u":
                cur.append(chr(int(text[i + 2:i + 6], 16)))
                i += 6
            elif n in "01234567":
                cur.append(chr(int(text[i + 1:i + 4], 8)))
                i += 4
            elif n in _CESC:
                cur.append(_CESC[n])
                i += 2
            else:
                raise ValueError(f"systemd rejects the escape \\{n}")
            continue
        if quote is None and c in "\"'":
            quote = c
        elif c == quote:
            quote = None
        else:
            cur.append(c)
        i += 1
    if quote is not None:
        raise ValueError("unbalanced quoting")
    if inword:
        words.append("".join(cur))
    return words


def sd_specifiers(word: str) -> str:
    """Only %% may appear in what qwenplan writes; any other specifier would be substituted by systemd."""
    out, i = [], 0
    while i < len(word):
        if word[i] == "%":
            if word[i + 1:i + 2] != "%":
                raise ValueError(f"unescaped specifier %{word[i + 1:i + 2]} in {word!r}")
            out.append("%")
            i += 2
        else:
            out.append(word[i])
            i += 1
    return "".join(out)


def sd_env_expand(word: str) -> object:
    """ExecStart's variable expansion: $$ is '$', ${NAME} is a variable (kept as a marker)."""
    m = None
    out, i = [], 0
    while i < len(word):
        if word.startswith("$$", i):
            out.append("$")
            i += 2
        elif word.startswith("${", i):
            j = word.index("}", i)
            assert m is None, "at most one variable per word"
            m = (word[i + 2:j], "".join(out))
            out = []
            i = j + 1
        elif word[i] == "$":
            raise ValueError(f"a bare $ in {word!r} would be expanded by systemd")
        else:
            out.append(word[i])
            i += 1
    if m:
        return ("ENV", m[0], m[1], "".join(out))
    return "".join(out)


def sd_parse(unit: str) -> dict[str, list[tuple[str, str]]]:
    """The unit's sections as (key, value) lines, continuation lines joined as systemd does."""
    sections: dict[str, list[tuple[str, str]]] = {}
    cur = None
    lines = unit.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i]
            i += 1
        if line.startswith("["):
            cur = line.strip("[]")
            sections[cur] = []
            continue
        k, _, v = line.partition("=")
        sections[cur].append((k, v))
    return sections


def sd_exec(unit: str, key: str = "ExecStart") -> list:
    vals = [v for k, v in sd_parse(unit)["Service"] if k == key]
    assert len(vals) == 1, f"one {key}= line"
    words = [sd_specifiers(w) for w in sd_split(vals[0])]
    return words[:1] + [sd_env_expand(w) for w in words[1:]]     # the program's path is not expanded


def sd_environment(unit: str) -> dict[str, str]:
    env = {}
    for k, v in sd_parse(unit)["Service"]:
        if k == "Environment":
            for w in sd_split(v):
                name, _, val = sd_specifiers(w).partition("=")
                env[name] = val
    return env


def systemd_verify(tmp_path: Path, unit: str, name: str, user: bool = False) -> None:
    tool = _tool("systemd-analyze")
    path = tmp_path / name
    path.write_text(unit)
    env = dict(os.environ)
    args = [tool, "verify", "--man=no"]
    if user:
        xdg = tmp_path / "xdg"
        xdg.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(xdg)
        args.append("--user")
    r = subprocess.run(args + [str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), f"systemd-analyze verify:\n{r.stdout}{r.stderr}"


def fake_venv(tmp_path: Path) -> Path:
    """A venv whose programs exist (systemd-analyze verify checks ExecStart's executable)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    for prog in ("vllm", "python3", "python", "ray", "llama-server"):
        f = venv / "bin" / prog
        f.write_text("#!/bin/sh\nexit 0\n")
        f.chmod(0o755)
    return venv


@pytest.mark.parametrize("key", list(PLANS))
def test_systemd_argv_survives(tmp_path, key):
    plan = PLANS[key]()
    venv = fake_venv(tmp_path)
    unit = ex.render_systemd(plan, venv=str(venv), run_as_user="qwenplan")
    argv = plan["command"]["argv"]
    want = [str(venv / "bin" / argv[0])] + expected_words(plan, argv[1:])
    assert sd_exec(unit) == want
    systemd_verify(tmp_path, unit, f"qwen-{key}.service")


def test_systemd_unit_contents(tmp_path):
    plan = load("vllm-h100-fp8")
    venv = fake_venv(tmp_path)
    unit = ex.render_systemd(plan, venv=str(venv), run_as_user="qwenplan", env_file="/etc/qwen/100%.env",
                             hf_home="/var/lib/qwen/hf")
    svc = dict(sd_parse(unit)["Service"])
    assert svc["User"] == "qwenplan"
    assert svc["Restart"] == "on-failure" and int(svc["RestartSec"]) >= 10
    assert int(svc["TimeoutStartSec"]) >= 20 * 60
    assert sd_specifiers(svc["EnvironmentFile"]) == "/etc/qwen/100%.env"
    env = sd_environment(unit)
    assert env["CUDA_VISIBLE_DEVICES"] == plan["parallel"]["gpu_uuids"][0]
    assert env["HF_HOME"] == "/var/lib/qwen/hf"
    assert dict(sd_parse(unit)["Unit"])["StartLimitBurst"]
    # the health wait: a python loop on /health, with the venv's python
    post = sd_exec(unit, "ExecStartPost")
    assert post[0] == str(venv / "bin" / "python3") and post[1] == "-c"
    assert "http://127.0.0.1:8000/health" in post[2]
    compile(post[2], "ExecStartPost", "exec")
    assert "# Health:" in unit
    systemd_verify(tmp_path, unit, "qwen.service")


def test_systemd_user_unit(tmp_path):
    plan = load("vllm-h100-fp8")
    venv = fake_venv(tmp_path)
    unit = ex.render_systemd(plan, venv=str(venv), user_unit=True)
    sections = sd_parse(unit)
    assert "User" not in dict(sections["Service"])
    assert dict(sections["Install"])["WantedBy"] == "default.target"
    assert dict(sections["Service"])["EnvironmentFile"] == "%h/.config/qwenplan/qwen.env"
    systemd_verify(tmp_path, unit, "qwen.service", user=True)
    with pytest.raises(InputError):
        ex.render_systemd(plan, venv=str(venv), user_unit=True, run_as_user="qwen")


def test_systemd_default_venv_is_this_one():
    unit = ex.render_systemd(load("vllm-h100-fp8"))
    assert sd_exec(unit)[0] == str(Path(sys.prefix) / "bin" / "vllm")


def test_systemd_multinode_units(tmp_path):
    plan = load("vllm-2x4-multinode")
    venv = fake_venv(tmp_path)
    with pytest.raises(InputError, match="own unit"):
        ex.render_systemd(plan, venv=str(venv))
    head = ex.render_systemd(plan, venv=str(venv), node_rank=0, head_addr="10.0.0.1")
    worker = ex.render_systemd(plan, venv=str(venv), node_rank=1, head_addr="10.0.0.1")
    h, w = sd_exec(head), sd_exec(worker)
    assert h[-8:] == ["--distributed-executor-backend", "mp", "--nnodes", "2", "--node-rank", "0",
                      "--master-addr", "10.0.0.1"]
    assert w[-1] == "--headless" and w[w.index("--node-rank") + 1] == "1"
    assert "ExecStartPost" in head and "ExecStartPost" not in worker
    for i, unit in enumerate((head, worker)):
        systemd_verify(tmp_path, unit, f"qwen-node{i}.service")


# --- docker compose -----------------------------------------------------------------------------

def compose_unescape(obj):
    if isinstance(obj, str):
        return obj.replace("$$", "$")
    if isinstance(obj, list):
        return [compose_unescape(x) for x in obj]
    if isinstance(obj, dict):
        return {k: compose_unescape(v) for k, v in obj.items()}
    return obj


def compose_schema_check(doc: dict) -> None:
    import jsonschema

    schema = json.loads((FIXTURES / "schemas" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(doc)


def compose_config(tmp_path: Path, text: str) -> dict:
    """`docker-compose config`: the real tool's reading of the file (with env_file present)."""
    tool = _tool("docker-compose")
    d = tmp_path / "compose"
    d.mkdir(exist_ok=True)
    (d / "compose.yaml").write_text(text)
    (d / "qwen.env").write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "PATH")} | {"HOME": str(tmp_path),
                                                                              "PATH": os.environ["PATH"]}
    r = subprocess.run([tool, "-f", str(d / "compose.yaml"), "config"], capture_output=True, text=True,
                       cwd=d, env=env, timeout=60)
    assert r.returncode == 0, f"docker-compose config:\n{r.stdout}{r.stderr}"
    assert "variable is not set" not in r.stderr, r.stderr
    return yaml.safe_load(r.stdout)


def sh_c_argv(script: str, env: dict[str, str]) -> list[str]:
    """Run a `sh -c` command line with a stub program that prints its argv as JSON."""
    printer = "import json, sys; print(json.dumps(sys.argv[1:]))"
    stub = f"{shlex_quote(sys.executable)} -c {shlex_quote(printer)}"
    script = re.sub(r"^exec (\S+)", lambda m: f"exec {stub} {m.group(1)}", script)
    r = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


@pytest.mark.parametrize("key", list(PLANS))
def test_compose_argv_survives(tmp_path, key):
    plan = PLANS[key]()
    text = ex.render_compose(plan)
    raw = yaml.safe_load(text)
    compose_schema_check(raw)
    svc = compose_unescape(raw["services"]["qwen"])
    want = container_argv(plan)
    if svc["entrypoint"][:2] == ["/bin/sh", "-c"]:
        # a secret word: the container's shell expands it from env_file
        got = sh_c_argv(svc["entrypoint"][2], {"SGLANG_API_KEY": "s3cret value $x", "PATH": os.environ["PATH"]})
        want = [w.replace("${SGLANG_API_KEY}", "s3cret value $x") for w in want]
        assert got == want
    else:
        assert svc["entrypoint"] + svc["command"] == want
    cfg = compose_config(tmp_path, text)
    assert cfg["services"]["qwen"]["command"] == raw["services"]["qwen"]["command"]
    assert cfg["services"]["qwen"]["entrypoint"] == raw["services"]["qwen"]["entrypoint"]


def test_compose_contents(tmp_path):
    plan = load("sglang-2xh200-fp8")
    text = ex.render_compose(plan)
    svc = yaml.safe_load(text)["services"]["qwen"]
    assert svc["image"] == "lmsysorg/sglang:v0.5.23"
    assert svc["ports"] == ["127.0.0.1:30000:30000"]
    assert svc["ipc"] == "host"
    dev = svc["deploy"]["resources"]["reservations"]["devices"][0]
    assert dev["device_ids"] == plan["parallel"]["gpu_uuids"] and dev["capabilities"] == ["gpu"]
    assert svc["env_file"] == ["qwen.env"]
    assert "CUDA_VISIBLE_DEVICES" not in svc.get("environment", {})
    assert svc["environment"]["SGLANG_ENABLE_SPEC_V2"] == "1"
    assert svc["volumes"][0].endswith(":/root/.cache/huggingface")
    hc = svc["healthcheck"]
    assert hc["test"][:3] == ["CMD", "python3", "-c"] and "/health" in hc["test"][3]
    compile(hc["test"][3], "healthcheck", "exec")
    assert re.fullmatch(r"(\d+)m", hc["start_period"]) and int(hc["start_period"][:-1]) >= 20
    assert svc["restart"] in ("unless-stopped", "always", "on-failure")
    cfg = compose_config(tmp_path, text)
    assert cfg["services"]["qwen"]["ports"][0].startswith("127.0.0.1:30000:30000")


def test_compose_publish_host_and_single_gpu(tmp_path):
    plan = load("vllm-h100-fp8")
    svc = yaml.safe_load(ex.render_compose(plan, publish_host="0.0.0.0"))["services"]["qwen"]
    assert svc["ports"] == ["8000:8000"]
    assert "ipc" not in svc
    assert svc["image"] == "vllm/vllm-openai:v0.32.0"
    plan["parallel"]["gpu_uuids"] = []
    plan["parallel"]["gpu_ids"] = [3]
    svc = yaml.safe_load(ex.render_compose(plan))["services"]["qwen"]
    assert svc["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["3"]


def test_compose_multinode(tmp_path):
    plan = load("sglang-2x4-multinode")
    with pytest.raises(InputError, match="own compose file"):
        ex.render_compose(plan)
    for rank in (0, 1):
        text = ex.render_compose(plan, node_rank=rank, head_addr="10.0.0.1")
        svc = compose_unescape(yaml.safe_load(text)["services"]["qwen"])
        assert svc["network_mode"] == "host" and "ports" not in svc
        script = svc["entrypoint"][2]
        assert f"--node-rank {rank}" in script and "--dist-init-addr 10.0.0.1:20000" in script
        assert ("healthcheck" in svc) == (rank == 0)
        compose_schema_check(yaml.safe_load(text))
        compose_config(tmp_path, text)


def test_yaml_quotes_what_yaml12_would_not_read_as_strings():
    plan = load("vllm-h100-fp8")
    plan["command"]["argv"] += YAML12_TRAPS
    for text in (ex.render_compose(plan), ex.render_k8s(plan)):
        for w in YAML12_TRAPS:
            assert f"- '{w}'\n" in text or f'- "{w}"\n' in text, w


# --- Kubernetes ---------------------------------------------------------------------------------

def k8s_expand(word: str, names: set[str]) -> str:
    """The kubelet's expansion of command/args (k8s.io/kubernetes third_party/forked/golang/expansion):
    `$$` is `$`, `$(NAME)` of a variable the container defines is its value (here `<NAME>`), anything
    else stays as written."""
    out, i = [], 0
    while i < len(word):
        if word[i] == "$" and i + 1 < len(word):
            nxt = word[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                j = word.find(")", i + 2)
                if j != -1:
                    name = word[i + 2:j]
                    out.append(f"<{name}>" if name in names else word[i:j + 1])
                    i = j + 1
                    continue
        out.append(word[i])
        i += 1
    return "".join(out)


def k8s_argv(c: dict, extra: set[str] = frozenset()) -> list[str]:
    names = {e["name"] for e in c.get("env", [])} | set(extra)
    return [k8s_expand(w, names) for w in c["command"] + c.get("args", [])]


def k8s_validate(doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _strict(schema):
    """CRDs prune unknown fields silently: make the LWS schema reject them, so typos fail here."""
    if isinstance(schema, dict):
        s = {k: _strict(v) for k, v in schema.items()}
        if "properties" in s and "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
        return s
    if isinstance(schema, list):
        return [_strict(x) for x in schema]
    return schema


def lws_validate(doc: dict) -> None:
    import jsonschema

    schema = _strict(json.loads((FIXTURES / "schemas" / "leaderworkerset-v1.schema.json").read_text()))
    jsonschema.validate(doc, schema)
    tmpl = doc["spec"]["leaderWorkerTemplate"]
    for role in ("leaderTemplate", "workerTemplate"):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{doc['metadata']['name']}-{role.lower()}",
                                                               **tmpl[role].get("metadata", {})},
               "spec": tmpl[role]["spec"]}
        k8s_validate(pod)


def k8s_docs(text: str) -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(text) if d]
    for d in docs:
        if d["kind"] == "LeaderWorkerSet":
            lws_validate(d)
        else:
            k8s_validate(d)
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("key", list(PLANS))
def test_k8s_argv_survives(key):
    plan = PLANS[key]()
    docs = k8s_docs(ex.render_k8s(plan))
    c = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    want = [w.replace("${SGLANG_API_KEY}", "<SGLANG_API_KEY>") for w in container_argv(plan)]
    assert k8s_argv(c) == want
    env = {e["name"]: e for e in c.get("env", [])}
    for s in secret_names(plan):
        assert env[s]["valueFrom"]["secretKeyRef"]["key"] == s and "value" not in env[s]


def test_k8s_contents():
    plan = load("sglang-2xh200-fp8")
    docs = k8s_docs(ex.render_k8s(plan, namespace="llm", node_selector={"nvidia.com/gpu.product": "NVIDIA-H200"}))
    dep = docs["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    sp = c["startupProbe"]
    assert sp["periodSeconds"] * sp["failureThreshold"] >= 20 * 60
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
    assert vols["hf-cache"]["persistentVolumeClaim"]["claimName"] == docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/dev/shm", "/root/.cache/huggingface"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    assert dep["metadata"]["namespace"] == "llm"
    svc = docs["Service"]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["ports"][0]["port"] == 30000
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", svc["metadata"]["name"])
    assert "CUDA_VISIBLE_DEVICES" not in {e["name"] for e in c["env"]}
    assert "Secret" not in docs   # values never written; the header says how to create it


def test_k8s_hostpath_cache():
    docs = k8s_docs(ex.render_k8s(load("vllm-h100-fp8"), hf_cache="/data/hf"))
    assert "PersistentVolumeClaim" not in docs
    vols = {v["name"]: v for v in docs["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert vols["hf-cache"]["hostPath"]["path"] == "/data/hf"


def test_k8s_validator_cli(tmp_path):
    """The real command line, as CI runs it, on a single-node and a multi-node file."""
    # installed into this venv by `pip install -e '.[test]'`: found there without activating it
    tool = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or _tool("kubernetes-validate")
    for name in ("vllm-h100-fp8", "vllm-2x4-multinode"):
        f = tmp_path / f"{name}.yaml"
        f.write_text(ex.render_k8s(load(name)))
        r = subprocess.run([tool, "--strict", "-k", K8S_VERSION, str(f)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr


def _flags_in_file(plan: dict, argv: list[str]) -> None:
    fs = flag_set(plan["engine"]["name"], plan["engine"]["version"])
    for w in argv:
        if w.startswith("--"):
            assert fs.accepts(w.split("=", 1)[0]), f"{w} is not a flag of {plan['engine']}"


def test_k8s_multinode_vllm_lws():
    plan = load("vllm-2x4-multinode")
    docs = k8s_docs(ex.render_k8s(plan))
    lws = docs["LeaderWorkerSet"]
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    t = lws["spec"]["leaderWorkerTemplate"]
    assert t["size"] == 2
    lead, work = t["leaderTemplate"]["spec"]["containers"][0], t["workerTemplate"]["spec"]["containers"][0]
    lws_env = {"LWS_LEADER_ADDRESS", "LWS_WORKER_INDEX", "LWS_GROUP_SIZE"}   # injected by the LWS controller
    la, wa = k8s_argv(lead, lws_env), k8s_argv(work, lws_env)
    base = container_argv(plan)
    assert la == base + ["--distributed-executor-backend", "mp", "--nnodes", "2", "--node-rank", "0",
                         "--master-addr", "<LWS_LEADER_ADDRESS>"]
    assert wa == base + ["--distributed-executor-backend", "mp", "--nnodes", "2", "--node-rank",
                         "<LWS_WORKER_INDEX>", "--master-addr", "<LWS_LEADER_ADDRESS>", "--headless"]
    _flags_in_file(plan, la + wa)
    assert "readinessProbe" in lead and "livenessProbe" in lead and "startupProbe" in lead
    assert "readinessProbe" not in work and "ports" not in work
    assert lead["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert docs["Service"]["spec"]["selector"] == {"leaderworkerset.sigs.k8s.io/name": lws["metadata"]["name"],
                                                   "role": "leader"}
    assert t["leaderTemplate"]["metadata"]["labels"]["role"] == "leader"
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_k8s_multinode_vllm_adds_parallel_flags():
    plan = load("vllm-2x4-multinode")
    a = plan["command"]["argv"]
    for flag in ("--tensor-parallel-size", "--pipeline-parallel-size"):
        i = a.index(flag)
        del a[i:i + 2]
    docs = k8s_docs(ex.render_k8s(plan))
    lead = docs["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
    args = lead["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "4"
    assert args[args.index("--pipeline-parallel-size") + 1] == "2"


def test_k8s_multinode_vllm_ray():
    plan = load("vllm-2x4-multinode")
    docs = k8s_docs(ex.render_k8s(plan, backend="ray"))
    t = docs["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]
    lead, work = t["leaderTemplate"]["spec"]["containers"][0], t["workerTemplate"]["spec"]["containers"][0]
    assert lead["command"] == ["/bin/sh"] and lead["args"][0] == "-c"
    script = lead["args"][1]
    assert "multi-node-serving.sh leader --ray_cluster_size=2 && exec vllm serve" in script
    assert script.endswith("--distributed-executor-backend ray")
    assert "ray_address=\"${LWS_LEADER_ADDRESS}\"" in k8s_expand(work["args"][1], set())


def test_k8s_multinode_sglang():
    plan = load("sglang-2x4-multinode")
    docs = k8s_docs(ex.render_k8s(plan))
    t = docs["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]
    lead, work = t["leaderTemplate"]["spec"]["containers"][0], t["workerTemplate"]["spec"]["containers"][0]
    lws_env = {"LWS_LEADER_ADDRESS", "LWS_WORKER_INDEX", "LWS_GROUP_SIZE"}
    la, wa = k8s_argv(lead, lws_env), k8s_argv(work, lws_env)
    for a, rank in ((la, "0"), (wa, "<LWS_WORKER_INDEX>")):
        assert a[a.index("--nnodes") + 1] == "2"
        assert a[a.index("--node-rank") + 1] == rank
        assert a[a.index("--dist-init-addr") + 1] == "<LWS_LEADER_ADDRESS>:20000"
        assert a[a.index("--tp-size") + 1] == "4" and a[a.index("--pp-size") + 1] == "2"
        assert a[a.index("--api-key") + 1] == "<SGLANG_API_KEY>"
        _flags_in_file(plan, a)
    with pytest.raises(InputError, match="SGLang has no ray"):
        ex.render_k8s(plan, backend="ray")


def test_multinode_refuses_inconsistent_or_unknown(monkeypatch):
    plan = load("vllm-2x4-multinode")
    a = plan["command"]["argv"]
    a[a.index("--tensor-parallel-size") + 1] = "8"
    with pytest.raises(InputError, match="disagree"):
        ex.render_k8s(plan)
    plan = load("vllm-2x4-multinode")
    plan["parallel"]["pipeline"] = 1
    with pytest.raises(InputError, match="pipeline parallel"):
        ex.render_k8s(plan)
    plan = load("sglang-2x4-multinode")
    plan["engine"]["version"] = "0.4.0"     # no flag file: the added flags cannot be checked
    with pytest.raises(InputError, match="no flag list"):
        ex.render_k8s(plan)
    real = flag_set("sglang", "0.5.23")
    fake = type(real)(real.engine, real.version, {k: v for k, v in real.flags.items() if k != "--dist-init-addr"})
    monkeypatch.setattr(render_mod, "flag_set", lambda e, v: fake)
    with pytest.raises(InputError, match="does not accept --dist-init-addr"):
        ex.render_k8s(load("sglang-2x4-multinode"))


# --- bash script --------------------------------------------------------------------------------

PRINTER = """#!{python}
import json, os, sys
print(json.dumps({{"argv": sys.argv[1:], "env": {{k: os.environ.get(k) for k in {names!r}}}}}))
"""


def stub_bin(tmp_path: Path, names=("vllm", "python3", "ray", "llama-server")) -> Path:
    """Programs that print their argv (and some env) as JSON instead of serving."""
    d = tmp_path / "stubbin"
    d.mkdir(exist_ok=True)
    watch = ["HF_TOKEN", "VLLM_API_KEY", "SGLANG_API_KEY", "CUDA_VISIBLE_DEVICES", "SGLANG_ENABLE_SPEC_V2"]
    for n in names:
        f = d / n
        f.write_text(PRINTER.format(python=sys.executable, names=watch))
        f.chmod(0o755)
    return d


def run_script(tmp_path: Path, text: str, env: dict | None = None, stubs: Path | None = None) -> subprocess.CompletedProcess:
    path = tmp_path / "serve.sh"
    path.write_text(text)
    path.chmod(0o755)
    stubs = stubs or stub_bin(tmp_path)
    e = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(tmp_path)} | (env or {})
    return subprocess.run(["bash", str(path)], capture_output=True, text=True, env=e, timeout=30)


def script_checks(tmp_path: Path, text: str) -> None:
    path = tmp_path / "check.sh"
    path.write_text(text)
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    sc = _tool("shellcheck")
    r = subprocess.run([sc, "--shell=bash", "--severity=style", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("key", list(PLANS))
def test_script_argv_survives(tmp_path, key):
    plan = PLANS[key]()
    text = ex.render_script(plan)
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    cfg = tmp_path / ".config" / "qwenplan"
    cfg.mkdir(parents=True)
    (cfg / "qwen.env").write_text("HF_TOKEN=hf_from_file\nSGLANG_API_KEY=key with spaces\n")
    r = run_script(tmp_path, text)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    want = [w.replace("${SGLANG_API_KEY}", "key with spaces") for w in plan["command"]["argv"]]
    prog_args = want[1:]
    assert out["argv"] == prog_args
    assert out["env"]["HF_TOKEN"] == "hf_from_file"
    assert out["env"]["CUDA_VISIBLE_DEVICES"] == plan["command"]["env"]["CUDA_VISIBLE_DEVICES"]
    script_checks(tmp_path, text)


def test_script_without_env_file_and_with_venv(tmp_path):
    plan = load("vllm-h100-fp8")
    venv = tmp_path / "my venv"
    (venv / "bin").mkdir(parents=True)
    shutil.copy(stub_bin(tmp_path) / "vllm", venv / "bin" / "vllm")
    text = ex.render_script(plan, venv=str(venv), env_file=str(tmp_path / "a $b}.env"))
    (tmp_path / "a $b}.env").write_text("VLLM_API_KEY=from-file\n")
    r = run_script(tmp_path, text, stubs=tmp_path / "empty")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["env"]["VLLM_API_KEY"] == "from-file"
    (tmp_path / "a $b}.env").unlink()
    r = run_script(tmp_path, text, stubs=tmp_path / "empty")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["env"]["VLLM_API_KEY"] is None
    script_checks(tmp_path, text)


def test_script_secret_must_be_set(tmp_path):
    r = run_script(tmp_path, ex.render_script(load("sglang-2xh200-fp8")))
    assert r.returncode != 0 and "SGLANG_API_KEY is not set" in r.stderr


@pytest.mark.parametrize("name", ["vllm-2x4-multinode", "sglang-2x4-multinode"])
def test_script_multinode(tmp_path, name):
    plan = load(name)
    text = ex.render_script(plan)
    script_checks(tmp_path, text)
    env = {"QWENPLAN_HEAD_ADDR": "10.0.0.1", "SGLANG_API_KEY": "k"}
    outs = []
    for rank in ("0", "1"):
        r = run_script(tmp_path, text, env | {"QWENPLAN_NODE_RANK": rank})
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout)["argv"])
    head, worker = outs
    assert head[head.index("--node-rank") + 1] == "0" and worker[worker.index("--node-rank") + 1] == "1"
    if plan["engine"]["name"] == "vllm":
        assert head[head.index("--master-addr") + 1] == "10.0.0.1"
        assert "--headless" in worker and "--headless" not in head
    else:
        assert head[head.index("--dist-init-addr") + 1] == "10.0.0.1:20000"
    for a in outs:
        _flags_in_file(plan, a)
    r = run_script(tmp_path, text, env | {"QWENPLAN_NODE_RANK": "7"})
    assert r.returncode == 2 and "must be 0..1" in r.stderr
    r = run_script(tmp_path, text, {"QWENPLAN_NODE_RANK": "1"})
    assert r.returncode != 0 and "QWENPLAN_HEAD_ADDR" in r.stderr


def test_script_multinode_ray(tmp_path):
    plan = load("vllm-2x4-multinode")
    text = ex.render_script(plan, backend="ray")
    script_checks(tmp_path, text)
    fake_ray = tmp_path / "pyray"
    (fake_ray / "ray").mkdir(parents=True)
    (fake_ray / "ray" / "__init__.py").write_text(
        "def init(address=None):\n    pass\n\ndef nodes():\n    return [{'Alive': True}, {'Alive': True}]\n")
    stubs = stub_bin(tmp_path, names=("vllm", "ray"))
    r = run_script(tmp_path, text, {"QWENPLAN_HEAD_ADDR": "10.0.0.1", "QWENPLAN_NODE_RANK": "1"}, stubs=stubs)
    assert json.loads(r.stdout)["argv"] == ["start", "--address=10.0.0.1:6379", "--block"]
    r = run_script(tmp_path, text, {"QWENPLAN_HEAD_ADDR": "10.0.0.1", "QWENPLAN_NODE_RANK": "0",
                                    "PYTHONPATH": str(fake_ray)}, stubs=stubs)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines[0]["argv"] == ["start", "--head", "--port=6379"]
    assert lines[-1]["argv"][-2:] == ["--distributed-executor-backend", "ray"]


# --- every plan the planner wrote in examples/plans/, through every exporter and validator ---------

PLANNER_PLANS = sorted(p.stem for p in (ROOT / "examples" / "plans").glob("*.json")
                       if json.loads(p.read_text()).get("status") == "ok")


@pytest.mark.parametrize("name", PLANNER_PLANS)
def test_planner_plans_export_and_validate(tmp_path, name):
    plan = json.loads((ROOT / "examples" / "plans" / f"{name}.json").read_text())
    image = None if plan["engine"].get("image") else "registry.example/qwen-engine:1"   # the fork has none
    venv = fake_venv(tmp_path)
    unit = ex.render_systemd(plan, venv=str(venv))
    assert sd_exec(unit) == [str(venv / "bin" / plan["command"]["argv"][0])] + expected_words(plan, plan["command"]["argv"][1:])
    systemd_verify(tmp_path, unit, "qwen.service")
    compose = ex.render_compose(plan, image=image)
    compose_schema_check(yaml.safe_load(compose))
    svc = compose_unescape(compose_config(tmp_path, compose)["services"]["qwen"])
    assert svc["entrypoint"] + svc["command"] == container_argv(plan)
    docs = k8s_docs(ex.render_k8s(plan, image=image))
    assert k8s_argv(docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]) == container_argv(plan)
    script = ex.render_script(plan)
    script_checks(tmp_path, script)
    r = run_script(tmp_path, script)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["argv"] == plan["command"]["argv"][1:]


# --- secrets, images, refusals ------------------------------------------------------------------

def all_exports(plan: dict, tmp_path: Path) -> dict[str, str]:
    return {"systemd": ex.render_systemd(plan, venv=str(fake_venv(tmp_path))), "compose": ex.render_compose(plan),
            "k8s": ex.render_k8s(plan), "script": ex.render_script(plan)}


def test_secrets_never_inline(tmp_path):
    plan = load("vllm-h100-fp8")
    plan["command"]["env"].update({"HF_TOKEN": "hf_s3cr3t_value", "MY_SERVICE_API_KEY": "apikey_s3cr3t_value",
                                   "TOKENIZERS_PARALLELISM": "false"})
    for kind, text in all_exports(plan, tmp_path).items():
        assert "s3cr3t_value" not in text, kind
        assert "MY_SERVICE_API_KEY" in text, kind     # treated as a secret: named, read from the secret store
    unit = all_exports(plan, tmp_path)["systemd"]
    assert "MY_SERVICE_API_KEY" not in sd_environment(unit)
    assert sd_environment(unit)["TOKENIZERS_PARALLELISM"] == "false"      # not a secret: kept


def test_infeasible_plan_refused():
    plan = load("vllm-h100-fp8")
    plan["status"] = "infeasible"
    plan["requirements"] = ["a GPU with 40 GiB"]
    with pytest.raises(InfeasibleError, match="a GPU with 40 GiB"):
        ex.render("compose", plan)
    with pytest.raises(InputError, match="unknown export kind"):
        ex.render("helm", load("vllm-h100-fp8"))


def test_fork_without_image(tmp_path):
    plan = load("vllm-h100-fp8")
    plan["engine"] = {"name": "vllm-offload", "version": "0.19.0", "base_image": "vllm/vllm-openai:v0.19.1",
                      "install": "pip install git+https://github.com/caiovicentino/vllm-expert-offload.git"
                                 "@feat-ct-moe-wna16-marlin-offload", "image": None}
    for render in (ex.render_compose, ex.render_k8s):
        with pytest.raises(InputError) as e:
            render(plan)
        msg = str(e.value)
        assert "no published container image" in msg and "vllm/vllm-openai:v0.19.1" in msg and "--image" in msg
        assert "\n" not in msg
    text = ex.render_compose(plan, image="registry.example/vllm-offload:0.19.1")
    assert yaml.safe_load(text)["services"]["qwen"]["image"] == "registry.example/vllm-offload:0.19.1"
    k8s_docs(ex.render_k8s(plan, image="registry.example/vllm-offload:0.19.1"))
    systemd_verify(tmp_path, ex.render_systemd(plan, venv=str(fake_venv(tmp_path))), "fork.service")


def test_engine_image_tags():
    plan = load("vllm-h100-fp8")
    plan["engine"]["image"] = None
    assert ex.engine_image(plan) == "vllm/vllm-openai:v0.32.0"
    plan = load("sglang-2xh200-fp8")
    plan["engine"]["image"] = None
    assert ex.engine_image(plan) == "lmsysorg/sglang:v0.5.23"
    assert ex.engine_image(plan, "me/x:1") == "me/x:1"


def test_default_filenames():
    plan = load("vllm-h100-fp8")
    assert ex.default_filename("systemd", plan) == "qwenplan-qwen3-6-35b-a3b.service"
    assert ex.default_filename("script", plan).endswith(".sh") and ex.file_mode("script") & stat.S_IXUSR


# --- the tests have teeth: a broken quoting rule fails them -------------------------------------

def test_broken_systemd_escaping_is_caught(monkeypatch, tmp_path):
    monkeypatch.setattr(ex_systemd, "_sd_pct", lambda s: s)
    plan = nasty(load("vllm-h100-fp8"))
    with pytest.raises(ValueError, match="specifier"):
        sd_exec(ex.render_systemd(plan, venv=str(fake_venv(tmp_path))))


def test_broken_compose_escaping_is_caught(monkeypatch, tmp_path):
    monkeypatch.setattr(ex_compose, "_compose_escape", lambda o: o)
    plan = nasty(load("vllm-h100-fp8"))
    svc = compose_unescape(yaml.safe_load(ex.render_compose(plan))["services"]["qwen"])
    assert svc["entrypoint"] + svc["command"] != container_argv(plan)


def test_broken_k8s_escaping_is_caught(monkeypatch):
    monkeypatch.setattr(ex_k8s, "_k8s_word", lambda w: w if isinstance(w, str) else f"$({w.name})")
    plan = nasty(load("vllm-h100-fp8"))
    c = yaml.safe_load_all(ex.render_k8s(plan))
    dep = next(d for d in c if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert k8s_argv(dep) != container_argv(plan)


def test_broken_bash_quoting_is_caught(monkeypatch, tmp_path):
    monkeypatch.setattr(shlex, "quote", lambda s: s if s else "''")
    plan = nasty(load("vllm-h100-fp8"))
    r = run_script(tmp_path, ex.render_script(plan))
    assert r.returncode != 0 or json.loads(r.stdout)["argv"] != plan["command"]["argv"][1:]


# --- write_atomic -------------------------------------------------------------------------------

def test_write_atomic(tmp_path):
    f = tmp_path / "unit.service"
    assert ex.write_atomic(f, "one\n") == f
    assert f.read_text() == "one\n" and stat.S_IMODE(f.stat().st_mode) == 0o644
    with pytest.raises(InputError) as e:
        ex.write_atomic(f, "two\n")
    assert "already exists" in str(e.value) and "--force" in str(e.value)
    assert f.read_text() == "one\n"
    ex.write_atomic(f, "two\n", force=True, mode=0o755)
    assert f.read_text() == "two\n" and stat.S_IMODE(f.stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unit.service"]


def test_write_atomic_failure_leaves_nothing_half_written(tmp_path, monkeypatch):
    f = tmp_path / "compose.yaml"
    f.write_text("old\n")

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(InputError, match="disk full"):       # one line for the user (issue 20)
        ex.write_atomic(f, "new\n" * 1000, force=True)
    assert f.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compose.yaml"]
    with pytest.raises(InputError):
        ex.write_atomic(tmp_path / "fresh.yaml", "x")
    assert not (tmp_path / "fresh.yaml").exists()


def test_write_atomic_bad_targets(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        ex.write_atomic(tmp_path / "no" / "such" / "f", "x")
    with pytest.raises(InputError, match="is a folder"):
        ex.write_atomic(tmp_path, "x")
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputError, match="already exists"):
        ex.write_atomic(link, "x")


# --- examples/exports: generated by these functions, validated like the rest ---------------------

EXAMPLE_EXPORTS = {
    "vllm-h100-fp8": [("qwen-vllm.service", "systemd", {"venv": "/opt/qwenplan/venv", "run_as_user": "qwenplan"}),
                      ("compose-vllm.yaml", "compose", {}), ("k8s-vllm.yaml", "k8s", {}),
                      ("serve-vllm.sh", "script", {})],
    "sglang-2xh200-fp8": [("qwen-sglang.service", "systemd", {"venv": "/opt/qwenplan/venv", "run_as_user": "qwenplan"}),
                          ("compose-sglang.yaml", "compose", {}), ("k8s-sglang.yaml", "k8s", {}),
                          ("serve-sglang.sh", "script", {})],
    "vllm-2x4-multinode": [("k8s-vllm-2x4-lws.yaml", "k8s", {}), ("serve-vllm-2x4.sh", "script", {}),
                           ("qwen-vllm-2x4-node1.service", "systemd",
                            {"venv": "/opt/qwenplan/venv", "run_as_user": "qwenplan", "node_rank": 1,
                             "head_addr": "10.0.0.1"})],
    "sglang-2x4-multinode": [("k8s-sglang-2x4-lws.yaml", "k8s", {}), ("serve-sglang-2x4.sh", "script", {})],
}


def test_examples_are_current_and_valid(tmp_path):
    """A change detector for examples/exports/ (regenerated from this code, so it guards no
    behaviour on its own), and the validators run over each example."""
    regen = os.environ.get("QWENPLAN_REGEN_EXAMPLES") == "1"
    stale = []
    for plan_name, outputs in EXAMPLE_EXPORTS.items():
        plan = load(plan_name)
        for fname, kind, opts in outputs:
            text = ex.render(kind, plan, **opts)
            path = EXAMPLES / fname
            if regen:
                ex.write_atomic(path, text, force=True, mode=ex.file_mode(kind))
            elif not path.exists() or path.read_text() != text:
                stale.append(fname)
            if kind == "k8s":
                k8s_docs(text)
            elif kind == "compose":
                compose_schema_check(yaml.safe_load(text))
            elif kind == "script":
                script_checks(tmp_path, text)
    assert not stale, f"examples/exports out of date: {stale}; regenerate with QWENPLAN_REGEN_EXAMPLES=1"


def test_the_one_atomic_writer_never_overwrites_when_asked_not_to(tmp_path):
    """launch/files.py: export, calibration and the profile cache write through it."""
    from qwenplan.launch import files
    f = tmp_path / "qwen.env"
    files.write_atomic(f, "A=1\n", 0o600, overwrite=False)
    assert f.read_text() == "A=1\n" and stat.S_IMODE(f.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        files.write_atomic(f, "A=2\n", 0o600, overwrite=False)
    assert f.read_text() == "A=1\n" and sorted(p.name for p in tmp_path.iterdir()) == ["qwen.env"]
    files.write_atomic(f, "A=3\n", 0o644)
    assert f.read_text() == "A=3\n" and stat.S_IMODE(f.stat().st_mode) == 0o644
