"""Exporters: the plan as what people deploy — a systemd unit, a docker compose file, Kubernetes
manifests, a bash script.

Each `render_*` is a pure function from a plan document (`qwenplan.plan/1`, a dict or a `Plan`) to
text; `write_atomic` puts text on disk without ever leaving half a file. The quoting of every value
is done by the target format's own rules (systemd's ExecStart unquoting with `%` specifiers and `$`
expansion, YAML through `yaml.safe_dump`, bash through `shlex.quote`), so an argument like
`--speculative-config '{"method": "mtp", ...}'` reaches the engine byte for byte; the test suite
parses every export back and runs the real validators (systemd-analyze, docker-compose,
kubernetes-validate, bash -n, shellcheck).

Decisions, with their sources:
- Secrets (`command.secret_env`, e.g. HF_TOKEN, VLLM_API_KEY) are never written: systemd reads
  them from `EnvironmentFile=`, compose from `env_file:`, Kubernetes from a Secret through
  `secretKeyRef`, the script reads an env file (NAME=value lines, not sourced) when it exists. An
  argv word may name a secret as `${NAME}` (SGLang has no API-key environment variable, only
  `--api-key`): each format expands it from the environment when the server starts. Env keys that
  end like a secret (_TOKEN, _API_KEY, _SECRET, _PASSWORD) are treated as secrets even when the plan
  forgot to list them: their values are dropped.
- In containers the engine listens on 0.0.0.0 (the argv's `--host` is rewritten) while compose
  publishes the port on the plan's host (127.0.0.1 by default) only.
- GPUs: containers get the planned GPUs through the runtime (compose `device_ids`, Kubernetes
  `nvidia.com/gpu`), which renumbers them from 0 inside the container, so CUDA_VISIBLE_DEVICES is
  dropped there; systemd units and scripts keep it.
- Start-up allowance: 30 minutes before a health check may fail. The project's own measurement:
  vLLM on one H100 was ready 138 s after start with the weights already on disk
  (benchmarks/gpu/results/gpu-truth/); a first start also downloads the checkpoint (FP8 ≈ 37.5 GB:
  12.5 min at 50 MB/s). Exported comments give the figure, not the path: users do not have it.
- Health: GET /health answers 200 once the model is loaded, without the API key, on both engines
  (vLLM 0.32 `entrypoints/serve/middleware/authenticate.py` guards only /v1, /v2, /inference,
  /cohere; SGLang 0.5.23 `srt/utils/auth.py` always allows /health for probes). Container checks
  use `python3 -c urllib` rather than curl: both images have python3.
- Images: `vllm/vllm-openai:v{version}` (vLLM's .buildkite/scripts/annotate-release.sh, 0.17–0.32;
  docs.vllm.ai deployment/docker), `lmsysorg/sglang:v{version}` (sgl-project/sglang
  docs/docs/get-started/install.mdx @ 7760d52: CUDA 13 images, `lmsysorg/sglang:v0.5.19-cu129` the
  last CUDA 12 tag); the plan's `engine.image` wins when set. The expert-offload fork has no
  published image: compose and Kubernetes exports of it need `image=` (build one FROM the official
  vLLM image of the fork's base version with the fork installed) and refuse otherwise.
- Multi-node (parallel.nodes > 1): TP within a node, PP across nodes (vLLM
  docs/serving/parallelism_scaling.md, 0.32). vLLM defaults to its multiprocessing backend
  (`--nnodes/--node-rank/--master-addr`, workers `--headless`), the "(default)" variant of vLLM
  0.32's LeaderWorkerSet page (docs/deployment/frameworks/lws.md): Ray has been an optional
  dependency since vLLM 0.19 ("Ray is an optional dependency. Install it explicitly",
  parallelism_scaling.md) and is not in requirements/cuda.txt. `backend="ray"` gives the Ray way
  (`ray start --head` / `ray start --address=HEAD:6379 --block`, `--distributed-executor-backend
  ray`). SGLang: the same argv on every node plus `--nnodes N --node-rank R --dist-init-addr
  HEAD:20000` (docs.sglang.io multi_node_deployment). Every flag added here is checked against the
  target version's flag file (profiles/flags/).
- Multi-node with data parallel (the balanced and throughput plans: PP x DP, DP ranks within a node,
  PP across nodes): vLLM's own multi-node data parallel (docs/serving/data_parallel_deployment.md,
  "DP ranks 0 and 1 on the head node and ranks 2 and 3 on the second node": `--data-parallel-size-local`,
  `--data-parallel-start-rank`, `--data-parallel-address`, `--data-parallel-rpc-port`, workers
  `--headless`). It places whole DP ranks on a node, so each rank's PP x TP stages share a node and the
  expert layers (sharded over all DP x TP ranks) talk across nodes: the same memory per GPU as planned,
  a different network load, said in the export. DP must divide by the node count. SGLang refuses
  multi-node DP without DP attention (python/sglang/srt/server_args.py, check_server_args: "multi-node
  data parallel is not supported unless dp attention!"): such plans are refused with the way out.
- User strings (paths, names, addresses, images) never carry control characters (refused, one line);
  comments show any that reach them from the plan escaped (\\xNN). Kubernetes names follow DNS-1123 and
  sizes the quantity format (k8s.io/apimachinery validation and resource.Quantity), as the API server
  would; a compose HF cache is a folder path (a bare name would be an undeclared named volume) outside
  the system folders; a systemd EnvironmentFile= is an absolute plain path (systemd ignores a relative
  one and reads a leading `-` as "optional").
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml
from qwenplan.launch.safe_text import CONTROL, printable
from qwenplan.launch.safe_text import SECRET_NAME as _SECRET_LIKE   # the one secret-name pattern
from qwenplan.planner.engines import get_engine
from qwenplan.planner.errors import InfeasibleError, InputError
from qwenplan.planner.flags import flag_set

KINDS = ("systemd", "compose", "k8s", "script")

HEALTH_PATH = "/health"
START_ALLOWANCE_S = 30 * 60          # see the module docstring: download + 138 s load, with margin
HF_CACHE_IN_CONTAINER = "/root/.cache/huggingface"   # both official images run as root
SGLANG_DIST_PORT = 20000             # docs.sglang.io multi-node example: --dist-init-addr HOST:20000
RAY_PORT = 6379
ENV_FILE_NAME = "qwen.env"           # the secrets file compose reads beside compose.yaml, and its template
VLLM_DP_RPC_PORT = 13345             # vLLM docs/serving/data_parallel_deployment.md multi-node example
DEFAULT_SHM = "15Gi"                 # vLLM's LWS example: /dev/shm emptyDir, medium Memory, sizeLimit 15Gi

_SECRET_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --- user strings: refused when they cannot be written safely ----------------------------------

MAX_OPTION_CHARS = 1024      # a path, a name, an address, an image reference
MAX_ARG_CHARS = 32 * 1024    # one engine argument; systemd refuses unit lines over 1 MiB (LONG_LINE_MAX)
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_QUANTITY = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")
# host folders an HF cache must not be (or be inside): the container writes there as root
_SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run",
                 "/sbin", "/sys", "/usr")
_SYSTEM_FOLDERS = ("/", "/home", "/media", "/mnt", "/opt", "/root", "/srv", "/tmp", "/var", "/var/lib")


def _user(value: Any, option: str, limit: int = MAX_OPTION_CHARS) -> str:
    """A user-given option value: no control characters, a bounded length."""
    s = str(value)
    m = CONTROL.search(s)
    if m:
        raise InputError(f"{option} contains a control character ({printable(m.group())})",
                         f"give {option} as plain text")
    if len(s) > limit:
        raise InputError(f"{option} is {len(s):,} characters long", f"give at most {limit:,}")
    if not s.strip():
        raise InputError(f"{option} is empty", f"give a value, or leave {option} out")
    return s


def _no_space(value: str, option: str, what: str) -> str:
    if any(c.isspace() for c in value) or value.startswith("-"):
        raise InputError(f"{option} {printable(value)!r} is not {what}",
                         f"give {what} (no spaces, not starting with -)")
    return value


def _dns_subdomain(value: str, option: str) -> str:
    """DNS-1123 subdomain (Secret, PersistentVolumeClaim and StorageClass names)."""
    _user(value, option)
    if len(value) > 253 or not all(_DNS1123_LABEL.fullmatch(p) for p in value.split(".")):
        raise InputError(f"{option} {printable(value)!r} is not a Kubernetes name",
                         "use at most 253 lower-case letters, digits, '-' and '.', starting and ending "
                         "with a letter or digit (DNS-1123), e.g. qwenplan-hf")
    return value


def _dns_label(value: str, option: str) -> str:
    """DNS-1123 label (namespaces)."""
    _user(value, option)
    if len(value) > 63 or not _DNS1123_LABEL.fullmatch(value):
        raise InputError(f"{option} {printable(value)!r} is not a Kubernetes namespace name",
                         "use at most 63 lower-case letters, digits and '-', starting and ending with a "
                         "letter or digit (DNS-1123 label), e.g. llm")
    return value


def _quantity(value: str, option: str) -> str:
    """A positive Kubernetes quantity with a size suffix (Gi, Ti, G, ...) or none (bytes)."""
    _user(value, option)
    if not _QUANTITY.fullmatch(value) or not re.search(r"[1-9]", value.rstrip("KMGTPEik")):
        hint = f"{value[:-1]}i or {value[:-1]}" if re.fullmatch(r"[0-9.]+[KMGTPE]B", value) else "e.g. 200Gi"
        raise InputError(f"{option} {printable(value)!r} is not a Kubernetes size",
                         f"give a positive number with Ki/Mi/Gi/Ti (powers of 1024) or k/M/G/T: {hint}")
    return value


def _host_folder(path: str, option: str) -> str:
    """A host folder to mount: a path (not a bare name), no ':', not a system folder."""
    _user(path, option)
    if ":" in path:
        raise InputError(f"{option} {printable(path)!r} contains ':'",
                         "give one host folder; the container side is chosen by qwenplan")
    if not path.startswith(("/", "~/", "./", "../")) and path != "~":
        raise InputError(f"{option} {path!r} is not a folder path (a bare name would be a named volume)",
                         f"give an absolute path, e.g. {option} /srv/hf, or ./{path}")
    if path.startswith("/"):
        norm = os.path.normpath(path)
        norm = "/" if norm.startswith("//") and norm.strip("/") == "" else norm
        if norm in _SYSTEM_FOLDERS or norm in _SYSTEM_TREES or any(
                norm.startswith(t + "/") for t in _SYSTEM_TREES):
            raise InputError(f"{option} {path} is a system folder: the engine would write into it as root",
                             "give a folder of its own, e.g. /srv/hf or ~/.cache/huggingface")
    return path


def _absolute_plain_path(path: str, option: str) -> str:
    """For systemd's EnvironmentFile=: absolute (a relative one is ignored), no leading `-` (read as
    'optional'), no trailing backslash (a line continuation)."""
    _user(path, option)
    if not path.startswith("/"):
        raise InputError(f"{option} {path!r} is not an absolute path (systemd would ignore it)",
                         "give it as /path/to/qwen.env")
    if "\\" in path:
        raise InputError(f"{option} {path!r} contains a backslash (systemd would read an escape, or at the "
                         "end join the next line)", "give a plain path")
    return path


# --- words: literal strings, or values read from the environment at start ----------------------

@dataclass(frozen=True)
class EnvRef:
    """One argv word whose value is prefix + $name + suffix, expanded when the service starts."""

    name: str
    prefix: str = ""
    suffix: str = ""

    def wrap(self, prefix: str = "", suffix: str = "") -> "EnvRef":
        return EnvRef(self.name, prefix + self.prefix, self.suffix + suffix)


Word = Union[str, EnvRef]


def _cat(prefix: str, word: Word | int, suffix: str = "") -> Word:
    if isinstance(word, EnvRef):
        return word.wrap(prefix, suffix)
    return f"{prefix}{word}{suffix}"


# --- the plan, as the exporters see it ---------------------------------------------------------

@dataclass
class _View:
    plan: dict
    engine: str
    version: str
    argv: list[Word]
    env: dict[str, str]
    secrets: list[str]
    host: str
    port: int
    slug: str
    title: str
    nodes: int
    tensor: int
    pipeline: int
    data: int
    gpus: int                      # per node
    gpu_ids: list
    gpu_uuids: list
    image: str | None
    install: str | None


def _as_dict(plan: Any) -> dict:
    if hasattr(plan, "to_dict"):
        plan = plan.to_dict()
    if not isinstance(plan, dict):
        raise InputError("the plan is not a plan document", "pass the output of `qwenplan plan --json`")
    return plan


def _slug(text: str, limit: int = 50) -> str:
    """A DNS-1035 label (Kubernetes Service names, unit names): a-z, 0-9, '-', starts with a letter."""
    s = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    if not s or not s[0].isalpha():
        s = "q-" + s
    return s[:limit].rstrip("-")


def _flag_index(argv: list[Word], names: tuple[str, ...]) -> int | None:
    for i, w in enumerate(argv):
        if isinstance(w, str) and (w in names or any(w.startswith(n + "=") for n in names)):
            return i
    return None


def _flag_value(argv: list[Word], names: tuple[str, ...]) -> Word | None:
    i = _flag_index(argv, names)
    if i is None:
        return None
    w = argv[i]
    if isinstance(w, str) and "=" in w and w.split("=", 1)[0] in names:
        return w.split("=", 1)[1]
    return argv[i + 1] if i + 1 < len(argv) else None


def _set_flag(argv: list[Word], names: tuple[str, ...], value: Word) -> list[Word]:
    """Replace the flag's value (both `--f v` and `--f=v` forms), or append `names[0] value`."""
    out = list(argv)
    i = _flag_index(out, names)
    if i is None:
        return out + [names[0], value]
    w = out[i]
    if isinstance(w, str) and "=" in w and w.split("=", 1)[0] in names:
        out[i] = _cat(w.split("=", 1)[0] + "=", value)
    elif i + 1 < len(out):
        out[i + 1] = value
    else:
        out.append(value)
    return out


def _secret_words(argv: list[str], secrets: list[str]) -> list[Word]:
    """`${NAME}` inside an argv word, for a NAME listed as a secret, becomes an EnvRef."""
    out: list[Word] = []
    for w in argv:
        refs = [m for m in _SECRET_REF.finditer(w) if m.group(1) in secrets]
        if not refs:
            out.append(w)
            continue
        if len(refs) > 1:
            raise InputError(f"the argv word {w!r} names more than one secret", "give each secret its own word")
        m = refs[0]
        out.append(EnvRef(m.group(1), w[:m.start()], w[m.end():]))
    return out


def _view(plan: Any) -> _View:
    p = _as_dict(plan)
    if p.get("status", "ok") != "ok":
        reqs = "; ".join(p.get("requirements") or []) or "change the hardware or the pins until `qwenplan plan` finds one"
        raise InfeasibleError("the plan is infeasible, so there is nothing to export", reqs)
    engine = p.get("engine") or {}
    command = p.get("command") or {}
    settings = p.get("settings") or {}
    parallel = p.get("parallel") or {}
    variant = p.get("variant") or {}
    argv = command.get("argv") or []
    if not argv or not all(isinstance(a, str) for a in argv):
        raise InputError("the plan has no engine command (command.argv)", "export a plan made by `qwenplan plan --json`")
    if not engine.get("name") or not engine.get("version"):
        raise InputError("the plan names no engine and version", "export a plan made by `qwenplan plan --json`")
    long = next((a for a in argv if len(a) > MAX_ARG_CHARS), None)
    if long is not None:
        raise InputError(f"an engine argument is {len(long):,} characters long ({printable(long[:40])}...)",
                         f"keep each argument (a served name, an --extra-arg) under {MAX_ARG_CHARS:,} characters")

    secrets: list[str] = []
    for name in list(command.get("secret_env") or []) + [settings.get("api_key_env")]:
        if name and name not in secrets:
            if not _ENV_NAME.match(str(name)):
                raise InputError(f"secret name {name!r} is not an environment variable name", "use letters, digits and _")
            secrets.append(str(name))
    env: dict[str, str] = {}
    for k, v in (command.get("env") or {}).items():
        k = str(k)
        if not _ENV_NAME.match(k):
            raise InputError(f"environment variable name {k!r} in the plan is not valid", "use letters, digits and _")
        if k in secrets:
            continue
        if _SECRET_LIKE.search(k):      # never inline anything that looks like a credential
            secrets.append(k)
            continue
        env[k] = "" if v is None else str(v)

    words = _secret_words(argv, secrets)
    port_w = _flag_value(words, ("--port",))
    port = settings.get("port") or (int(port_w) if isinstance(port_w, str) and port_w.isdigit() else 8000)
    host_w = _flag_value(words, ("--host",))
    host = settings.get("host") or (host_w if isinstance(host_w, str) else None) or "127.0.0.1"
    _no_space(_user(host, "--host"), "--host", "an address")

    tensor = int(parallel.get("tensor") or 1)
    pipeline = int(parallel.get("pipeline") or 1)
    data = int(parallel.get("data") or 1)
    nodes = int(parallel.get("nodes") or 1)
    gpu_ids = list(parallel.get("gpu_ids") or [])
    gpu_uuids = [u for u in (parallel.get("gpu_uuids") or []) if u]
    gpus = tensor * pipeline * data
    if nodes > 1:
        if data == 1 and pipeline != nodes:
            raise InputError(f"the plan spans {nodes} nodes with pipeline={pipeline}, data={data}",
                             "multi-node exports need tensor parallel within a node and pipeline parallel "
                             "across nodes (pipeline == nodes), or data parallel ranks split over the nodes")
        if data > 1 and data % nodes:
            raise InputError(f"the plan's {data} data-parallel ranks do not split evenly over {nodes} nodes "
                             "(vLLM places whole ranks on a node)",
                             f"plan for a node count that divides {data}, or --goal long-context "
                             "(tensor parallel within a node, pipeline parallel across nodes)")
        gpus = gpus // nodes   # per node
    elif gpu_ids:
        gpus = len(gpu_ids)
    elif engine.get("name") == "llamacpp":
        gpus = 0        # a llama.cpp plan without GPU ids runs on the CPU

    served = variant.get("served_model_name") or p.get("model") or "qwen3.6-35b-a3b"
    title = f"{variant.get('repo') or served} on {engine['name']} {engine['version']}"
    return _View(plan=p, engine=str(engine["name"]), version=str(engine["version"]), argv=words, env=env,
                 secrets=secrets, host=str(host), port=int(port), slug=_slug(served), title=title, nodes=nodes,
                 tensor=tensor, pipeline=pipeline, data=data, gpus=gpus, gpu_ids=gpu_ids, gpu_uuids=gpu_uuids,
                 image=engine.get("image"), install=engine.get("install"))


# --- flags the exporters add: only ones the target version accepts ------------------------------

def _check_flags(v: _View, flags: list[str], choices: dict[str, str] | None = None) -> None:
    fs = flag_set(v.engine, v.version)
    if fs is None:
        raise InputError(f"there is no flag list on file for {v.engine} {v.version}, so the flags "
                         f"{', '.join(flags)} cannot be checked",
                         "plan for an engine version in profiles/flags/ (e.g. --engine-version 0.32.0)")
    missing = [f for f in flags if not fs.accepts(f)]
    if missing:
        raise InputError(f"{v.engine} {v.version} does not accept {', '.join(missing)}",
                         "plan for an engine version that has them")
    for flag, value in (choices or {}).items():
        allowed = fs.choices(flag)
        if allowed is not None and value not in allowed:
            raise InputError(f"{v.engine} {v.version} does not accept {flag} {value}",
                             f"its choices are {', '.join(allowed)}")


def _ensure_parallel(v: _View, argv: list[Word], names: tuple[str, ...], value: int) -> list[Word]:
    """The parallel size flag must say `value`; add it when the argv leaves it to the default."""
    current = _flag_value(argv, names)
    if current is None:
        _check_flags(v, [names[0]])
        return _set_flag(argv, names, str(value))
    if str(current) != str(value):
        raise InputError(f"the plan's command has {names[0]} {current} but its parallel section says {value}",
                         "re-run `qwenplan plan`: the command and the plan disagree")
    return argv


# --- multi-node: the engines' own way -----------------------------------------------------------

@dataclass
class NodeLaunch:
    """What one node runs: `pre` commands first (Ray), then `argv` in the foreground."""

    role: str                      # "head" or "worker"
    argv: list[Word]
    pre: list[list[Word]] = field(default_factory=list)
    wait_for_nodes: int = 0        # Ray head: wait until this many nodes joined before argv
    serves_http: bool = True
    # vLLM multi-node DP with the rank in a variable: the shell first sets
    # QWENPLAN_DP_START_RANK=$((variable * ranks_per_node)), which argv reads
    dp_start: tuple[str, int] | None = None


DP_START_VAR = "QWENPLAN_DP_START_RANK"


def _dp_start_shell(n: NodeLaunch) -> str:
    """The shell assignment a NodeLaunch with `dp_start` needs before its argv ('' if none)."""
    if n.dp_start is None:
        return ""
    var, per_node = n.dp_start
    return f"{DP_START_VAR}=$(({var} * {per_node}))"


def node_launch(plan: Any, *, node_rank: int, head_addr: Word, backend: str = "mp",
                rank_word: Word | None = None, container: bool = False) -> NodeLaunch:
    """The command node `node_rank` of a multi-node plan runs (rank 0 is the head).

    `head_addr` is the head's address (a string, or an EnvRef such as LWS_LEADER_ADDRESS);
    `rank_word` is what to write for the rank (default: the number), e.g. EnvRef("LWS_WORKER_INDEX").
    vLLM: backend "mp" (default; --nnodes/--node-rank/--master-addr, workers --headless) or "ray";
    SGLang: its own --nnodes/--node-rank/--dist-init-addr.
    """
    v = _view(plan)
    return _node_launch(v, node_rank=node_rank, head_addr=head_addr, backend=backend, rank_word=rank_word,
                        argv=_container_argv(v, v.argv) if container else v.argv)


def _node_launch(v: _View, *, node_rank: int, head_addr: Word, backend: str, rank_word: Word | None,
                 argv: list[Word]) -> NodeLaunch:
    if v.nodes < 2:
        raise InputError("the plan runs on one node", "export it without a node rank")
    if not 0 <= node_rank < v.nodes:
        raise InputError(f"node rank {node_rank} is outside 0..{v.nodes - 1}", f"give a rank from 0 to {v.nodes - 1}")
    if isinstance(head_addr, str) and not head_addr.strip():
        raise InputError("the head node's address is empty", "give the head node's IP address or DNS name")
    rank: Word = rank_word if rank_word is not None else str(node_rank)
    role = "head" if node_rank == 0 else "worker"
    argv = list(argv)

    if v.engine == "vllm":
        argv = _ensure_parallel(v, argv, ("--tensor-parallel-size", "-tp"), v.tensor)
        argv = _ensure_parallel(v, argv, ("--pipeline-parallel-size", "-pp"), v.pipeline)
        if v.data > 1:
            return _vllm_dp_launch(v, argv, role, node_rank, head_addr, backend, rank_word)
        if backend == "mp":
            flags = ["--distributed-executor-backend", "--nnodes", "--node-rank", "--master-addr"]
            if role == "worker":
                flags.append("--headless")
            _check_flags(v, flags, {"--distributed-executor-backend": "mp"})
            argv = argv + ["--distributed-executor-backend", "mp", "--nnodes", str(v.nodes),
                           "--node-rank", rank, "--master-addr", head_addr]
            if role == "worker":
                return NodeLaunch(role, argv + ["--headless"], serves_http=False)
            return NodeLaunch(role, argv)
        if backend == "ray":
            _check_flags(v, ["--distributed-executor-backend"], {"--distributed-executor-backend": "ray"})
            if role == "worker":
                return NodeLaunch(role, ["ray", "start", _cat("--address=", head_addr, f":{RAY_PORT}"), "--block"],
                                  serves_http=False)
            return NodeLaunch(role, argv + ["--distributed-executor-backend", "ray"],
                              pre=[["ray", "start", "--head", f"--port={RAY_PORT}"]], wait_for_nodes=v.nodes)
        raise InputError(f"unknown multi-node backend {backend!r}", "use mp (vLLM's default) or ray")
    if v.engine == "sglang":
        if v.data > 1:
            raise InputError(f"SGLang refuses data parallel ({v.data} ranks) across nodes without DP attention "
                             "(its check_server_args)",
                             "plan with --engine vllm, or --goal long-context (tensor parallel within a node, "
                             "pipeline parallel across nodes)")
        if backend not in ("mp", "native", None):
            raise InputError(f"SGLang has no {backend} backend", "SGLang spans nodes with its own --nnodes/--dist-init-addr")
        argv = _ensure_parallel(v, argv, ("--tp-size", "--tensor-parallel-size"), v.tensor)
        argv = _ensure_parallel(v, argv, ("--pp-size", "--pipeline-parallel-size"), v.nodes)
        _check_flags(v, ["--nnodes", "--node-rank", "--dist-init-addr"])
        argv = argv + ["--nnodes", str(v.nodes), "--node-rank", rank,
                       "--dist-init-addr", _cat("", head_addr, f":{SGLANG_DIST_PORT}")]
        return NodeLaunch(role, argv, serves_http=role == "head")
    raise InputError(f"{v.engine} has no multi-node launch qwenplan knows", "plan a single node for it")


def _vllm_dp_launch(v: _View, argv: list[Word], role: str, node_rank: int, head_addr: Word, backend: str,
                    rank_word: Word | None) -> NodeLaunch:
    """vLLM's multi-node data parallel: ranks_per_node whole DP ranks on each node (module docstring)."""
    if backend != "mp":
        raise InputError("a multi-node data-parallel plan is exported with vLLM's own DP launcher",
                         "use backend mp")
    argv = _ensure_parallel(v, argv, ("--data-parallel-size", "-dp"), v.data)
    per_node = v.data // v.nodes
    flags = ["--data-parallel-size-local", "--data-parallel-address", "--data-parallel-rpc-port"]
    if role == "worker":
        flags += ["--headless", "--data-parallel-start-rank"]
    _check_flags(v, flags)
    tail: list[Word] = ["--data-parallel-size-local", str(per_node), "--data-parallel-address", head_addr,
                        "--data-parallel-rpc-port", str(VLLM_DP_RPC_PORT)]
    if role == "head":
        return NodeLaunch(role, argv + tail)
    dp_start = None
    if isinstance(rank_word, EnvRef):
        start: Word = EnvRef(DP_START_VAR)
        dp_start = (rank_word.name, per_node)
    else:
        start = str(int(rank_word if rank_word is not None else node_rank) * per_node)
    return NodeLaunch(role, argv + ["--headless"] + tail + ["--data-parallel-start-rank", start],
                      serves_http=False, dp_start=dp_start)


def _multinode_summary(v: _View) -> str:
    """How the plan's ranks sit on the nodes, in one sentence for the export's header."""
    if v.data == 1:
        return (f"tensor parallel {v.tensor} within a node, pipeline parallel {v.nodes} across nodes")
    return (f"{v.data} data-parallel ranks, {v.data // v.nodes} on each node (vLLM's multi-node data parallel); "
            f"each rank's pipeline parallel {v.pipeline} x tensor parallel {v.tensor} stays on its node, the "
            f"expert layers are shared by all {v.data} ranks across the nodes (same memory per GPU as planned; "
            "a fast interconnect matters)")


# --- containers ---------------------------------------------------------------------------------

def _container_program(prog: Word) -> Word:
    if not isinstance(prog, str):
        return prog
    base = prog.rsplit("/", 1)[-1]
    return "python3" if re.fullmatch(r"python(3(\.\d+)?)?", base) else base


def _container_argv(v: _View, argv: list[Word]) -> list[Word]:
    """The image's program instead of a host path, and --host 0.0.0.0 inside the container."""
    out = list(argv)
    # llama.cpp's images keep llama-server at /app (their ENTRYPOINT), not on PATH
    out[0] = (get_engine(v.engine).raw.get("image_entrypoint") or [_container_program(out[0])])[0]
    fs = flag_set(v.engine, v.version)
    if fs is not None and not fs.accepts("--host"):
        raise InputError(f"{v.engine} {v.version} has no --host flag", "plan for a version that has it")
    return _set_flag(out, ("--host",), "0.0.0.0")


def engine_image(plan: Any, image: str | None = None) -> str:
    """The image a container export runs: `image` if given, else the plan's, else the official tag."""
    v = _view(plan)
    return _image(v, image)


# distribution/reference's grammar (github.com/distribution/reference, reference.go): the images
# docker, containerd and the kubelet pull
_IMAGE_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*" \
                r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_IMAGE_REF = re.compile(rf"(?:{_IMAGE_DOMAIN}/)?{_IMAGE_PATH}(?:/{_IMAGE_PATH})*(?::[\w][\w.-]{{0,127}})?"
                        r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?")


def _image(v: _View, image: str | None) -> str:
    if image is not None:
        _user(image, "--image")
        if len(image) > 255 or not _IMAGE_REF.fullmatch(image):
            raise InputError(f"--image {printable(image)!r} is not an image reference",
                             "give one like registry.example/team/vllm-offload:0.19.1 (lower-case name, optional tag)")
        return image
    if v.image:
        return v.image
    if v.engine == "vllm":
        return f"vllm/vllm-openai:v{v.version}"
    if v.engine == "sglang":
        return f"lmsysorg/sglang:v{v.version}"
    eng = v.plan.get("engine") or {}
    base_img = eng.get("base_image") or (f"vllm/vllm-openai:v{eng['base_version']}" if eng.get("base_version")
                                         else "the official vllm/vllm-openai image of its base version")
    raise InputError(f"{v.engine} {v.version} has no published container image",
                     f"build one FROM {base_img} that runs `{v.install or 'the engine install command'}`, push it, "
                     "and export with --image NAME:TAG")


def _gpu_device_ids(v: _View) -> list[str]:
    if v.gpu_uuids and len(v.gpu_uuids) == len(v.gpu_ids or v.gpu_uuids) and all(
            str(u).startswith(("GPU-", "MIG-")) for u in v.gpu_uuids):
        return [str(u) for u in v.gpu_uuids]
    if v.gpu_ids:
        return [str(i) for i in v.gpu_ids]
    return [str(i) for i in range(v.gpus)]


def _container_env(v: _View) -> dict[str, str]:
    return {k: val for k, val in v.env.items() if k != "CUDA_VISIBLE_DEVICES"}


def _probe_host(host: str) -> str:
    if host in ("0.0.0.0", "", "*"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _health_python(url: str, loop: bool) -> str:
    if not loop:
        return f"import urllib.request; urllib.request.urlopen({url!r}, timeout=5)"
    return ("import time, urllib.request\n"
            f"url = {url!r}\n"
            "while True:\n"
            "    try:\n"
            "        urllib.request.urlopen(url, timeout=5)\n"
            "        break\n"
            "    except Exception:\n"
            "        time.sleep(5)\n")


def _comment(lines: list[str]) -> str:
    out = []
    for line in lines:
        for part in str(line).split("\n"):
            out.append(("# " + printable(part)).rstrip())
    return "\n".join(out) + "\n"


# Scalars a YAML 1.2 reader (Go's yaml.v3 in kubectl and docker compose v2) takes for something other
# than a string, which PyYAML (YAML 1.1) would write unquoted: 1e3, 0o17, 0x1F, +1, .5, ...
_YAML12_NOT_STR = re.compile(r"""^(?:
    ~|null|Null|NULL|true|True|TRUE|false|False|FALSE
  | [-+]?[0-9]+ | 0o[0-7]+ | 0x[0-9a-fA-F]+
  | [-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
  | [-+]?\.(?:inf|Inf|INF) | \.(?:nan|NaN|NAN)
)$""", re.X)


class _Dumper(yaml.SafeDumper):
    """safe_dump without anchors/aliases (a repeated probe or volume is written out again), quoting
    every string that a YAML 1.1 or 1.2 reader could take for a number, a boolean or null."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    if _YAML12_NOT_STR.match(data):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="'")
    if CONTROL.search(data):       # double quotes escape them all (\e, \x9b, \L, ...): no raw ones
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style='"')
    return yaml.SafeDumper.represent_str(dumper, data)


_Dumper.add_representer(str, _represent_str)


def _yaml(obj: Any, many: bool = False) -> str:
    kw = dict(Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=10**9, allow_unicode=True)
    if many:
        return yaml.dump_all(obj, explicit_start=True, **kw)
    return yaml.dump(obj, **kw)


# --- bash ---------------------------------------------------------------------------------------

def _sh_word(w: Word, *, required: bool = True) -> str:
    if isinstance(w, EnvRef):
        ref = f"${{{w.name}:?{w.name} is not set}}" if required else f"${{{w.name}}}"
        return (shlex.quote(w.prefix) if w.prefix else "") + f'"{ref}"' + (shlex.quote(w.suffix) if w.suffix else "")
    return shlex.quote(w)


def _groups(argv: list[Word]) -> list[list[Word]]:
    """Layout only: the program with its subcommand or module and positional words, then each flag
    with its value. Joining the groups gives back argv unchanged."""
    n = len(argv)
    first = [argv[0]]
    i = 1
    if n > 2 and argv[1] == "-m":
        first += argv[1:3]
        i = 3
    while i < n and not (isinstance(argv[i], str) and argv[i].startswith("-")):
        first.append(argv[i])
        i += 1
    groups = [first]
    while i < n:
        group = [argv[i]]
        if i + 1 < n and not (isinstance(argv[i + 1], str) and argv[i + 1].startswith("-")):
            group.append(argv[i + 1])
        groups.append(group)
        i += len(group)
    return groups


def _sh_command(argv: list[Word], indent: str = "  ") -> str:
    return " \\\n".join((indent if i else "") + " ".join(_sh_word(w) for w in g)
                          for i, g in enumerate(_groups(argv)))


def render_script(plan: Any, *, venv: str | None = None, env_file: str | None = None,
                  backend: str = "mp") -> str:
    """A commented bash script (`set -euo pipefail`) that execs the planned command.

    Secrets come from `env_file` (default $QWENPLAN_ENV_FILE or ~/.config/qwenplan/qwen.env) when it
    exists. `venv` puts that virtual environment's bin/ first on PATH. A multi-node plan gives one
    script for every node: QWENPLAN_NODE_RANK (0 = head) and QWENPLAN_HEAD_ADDR choose the role.
    """
    v = _view(plan)
    if venv is not None and ":" in _user(venv, "--venv"):
        raise InputError(f"--venv {venv!r} contains ':', which PATH cannot hold", "give a path without ':'")
    out = ["#!/usr/bin/env bash"]
    head = [f"qwenplan: {v.title}",
            f"GPUs: {_gpu_summary(v)}"]
    if v.nodes > 1:
        head += [f"Multi-node: {v.nodes} nodes x {v.gpus} GPUs ({_multinode_summary(v)}).",
                 f"Run this same script on every node: QWENPLAN_NODE_RANK=0 on the head, 1..{v.nodes - 1} on the others,",
                 "and QWENPLAN_HEAD_ADDR=<the head node's IP> on all of them."]
    head += [f"Health: curl -fsS http://{_probe_host(v.host)}:{v.port}{HEALTH_PATH} answers 200 once the model is loaded",
             "(138 s on an H100 with the weights cached; a first start downloads the checkpoint first).",
             "Secrets (" + ", ".join(v.secrets or ["none"]) + ") are never written here: they are read from the env file",
             "below when it exists: lines of NAME=value, no quotes (the format of systemd's EnvironmentFile=)."]
    out.append(_comment(head).rstrip("\n"))
    out.append("set -euo pipefail")
    out.append("")
    # the default is its own assignment: inside "${VAR:-...}" bash still pairs single quotes
    default = _sh_path(_user(env_file, "--env-file")) if env_file else '"$HOME/.config/qwenplan/qwen.env"'
    out.append('QWENPLAN_ENV_FILE="${QWENPLAN_ENV_FILE:-}"')
    out += _sc2016([env_file] if env_file else [], "")
    out.append(f'[ -n "$QWENPLAN_ENV_FILE" ] || QWENPLAN_ENV_FILE={default}')
    # read NAME=value lines (the format systemd's EnvironmentFile= and compose's env_file: read too)
    # rather than sourcing the file: a value with spaces or `$` stays data, never code
    out += ['if [ -f "$QWENPLAN_ENV_FILE" ]; then',
            "  while IFS= read -r line || [ -n \"$line\" ]; do",
            "    line=\"${line%$'\\r'}\"",
            "    case \"$line\" in ''|'#'*) continue ;; esac",
            "    name=\"${line%%=*}\"",
            "    if [[ ! \"$name\" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [ \"$name\" = \"$line\" ]; then",
            "      echo \"$QWENPLAN_ENV_FILE: ignoring a line that is not NAME=value\" >&2",
            "      continue",
            "    fi",
            "    export \"$name=${line#*=}\"",
            "  done < \"$QWENPLAN_ENV_FILE\"",
            "fi",
            ""]
    env = dict(v.env)
    if "CUDA_VISIBLE_DEVICES" not in env and (v.gpu_uuids or v.gpu_ids) and v.nodes == 1:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, v.gpu_uuids or v.gpu_ids))
    for k, val in env.items():
        out.append(f"export {k}={shlex.quote(val)}")
    if venv:
        out += _sc2016([venv], "")
        out.append(f"export PATH={shlex.quote(str(Path(venv) / 'bin'))}:\"$PATH\"")
    if env or venv:
        out.append("")

    if v.nodes == 1:
        out += _sc2016(v.argv, "")
        out.append("exec " + _sh_command(v.argv))
        return "\n".join(out) + "\n"

    rank_ref = EnvRef("QWENPLAN_NODE_RANK")
    head_ref = EnvRef("QWENPLAN_HEAD_ADDR")
    out += ['QWENPLAN_NODE_RANK="${QWENPLAN_NODE_RANK:-0}"',
            'QWENPLAN_HEAD_ADDR="${QWENPLAN_HEAD_ADDR:?set QWENPLAN_HEAD_ADDR to the head node address}"',
            'case "$QWENPLAN_NODE_RANK" in',
            f"  {'|'.join(str(r) for r in range(v.nodes))}) ;;",
            f'  *) echo "QWENPLAN_NODE_RANK must be 0..{v.nodes - 1}" >&2; exit 2 ;;',
            "esac", ""]
    headl = _node_launch(v, node_rank=0, head_addr=head_ref, backend=backend, rank_word=None, argv=v.argv)
    workl = _node_launch(v, node_rank=1, head_addr=head_ref, backend=backend, rank_word=rank_ref, argv=v.argv)
    out.append('if [ "$QWENPLAN_NODE_RANK" = 0 ]; then')
    out += _sh_node(headl, v)
    out.append("else")
    out += _sh_node(workl, v)
    out.append("fi")
    return "\n".join(out) + "\n"


def _sh_path(path: str) -> str:
    """A path as one bash word; a leading ~/ is the user's home, the rest is literal."""
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _sh_node(n: NodeLaunch, v: _View) -> list[str]:
    lines = []
    for cmd in n.pre:
        lines.append("  " + " ".join(_sh_word(w) for w in cmd))
    if n.wait_for_nodes:
        lines += [f"  # wait until all {n.wait_for_nodes} nodes joined the Ray cluster",
                  "  python3 - <<'PY'",
                  "import time",
                  "import ray",
                  'ray.init(address="auto")',
                  f"while sum(1 for node in ray.nodes() if node['Alive']) < {n.wait_for_nodes}:",
                  "    time.sleep(5)",
                  "PY"]
    if n.dp_start:
        lines.append("  " + _dp_start_shell(n))
    lines += _sc2016(n.argv, "  ")
    lines.append("  exec " + _sh_command(n.argv, indent="    "))
    return lines


def _sc2016(argv: list[Word], indent: str) -> list[str]:
    """shellcheck flags `$` (SC2016) or a backslash (SC1003) in single quotes as a likely mistake;
    here they are literal text, on purpose."""
    codes = []
    if any(isinstance(w, str) and ("$" in w or "`" in w) for w in argv):
        codes.append("SC2016")
    if any(isinstance(w, str) and "\\" in w for w in argv):
        codes.append("SC1003")
    if codes:
        return [indent + f"# shellcheck disable={','.join(codes)}  # literal $, ` or \\ in single quotes, on purpose"]
    return []


def _gpu_summary(v: _View) -> str:
    if v.nodes > 1:
        return f"{v.nodes} nodes x {v.gpus}"
    ids = ",".join(map(str, v.gpu_ids)) if v.gpu_ids else "?"
    return f"{v.gpus} (ids {ids})"


# --- systemd ------------------------------------------------------------------------------------

_SD_SAFE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


def _sd_quote(s: str) -> str:
    """Quote one already %/$-escaped word for systemd's unquoting (C escapes inside double quotes)."""
    if s and _SD_SAFE.fullmatch(s):
        return s
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        elif CONTROL.match(ch):          # C1 and U+2028/9: systemd's \u escape (cunescape)
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _sd_pct(s: str) -> str:
    return s.replace("%", "%%")


def _sd_exec_word(w: Word) -> str:
    """An ExecStart word: `%` specifiers and `$` expansion escaped, then quoted."""
    if isinstance(w, EnvRef):
        return _sd_quote(_sd_pct(w.prefix).replace("$", "$$") + "${" + w.name + "}"
                         + _sd_pct(w.suffix).replace("$", "$$"))
    return _sd_quote(_sd_pct(w).replace("$", "$$"))


def _sd_exec_line(key: str, argv: list[Word]) -> str:
    """One command; backslash-newline continuations (systemd joins them with a space). The program's
    path gets no `$` expansion from systemd (only the arguments do), so only its `%` is escaped."""
    prog = argv[0]
    first = _sd_quote(_sd_pct(prog)) if isinstance(prog, str) else _sd_exec_word(prog)
    return " \\\n".join(("    " if i else f"{key}=") + " ".join(
        first if i == j == 0 else _sd_exec_word(w) for j, w in enumerate(g)) for i, g in enumerate(_groups(argv)))


def _venv_path(venv: str | None) -> Path:
    venv_path = Path(_user(venv, "--venv") if venv is not None else sys.prefix).expanduser()
    if re.search(r"[\\'\"]", str(venv_path)):      # systemd: "Executable name contains special characters"
        raise InputError(f"the virtual environment {venv!r} has a quote or backslash in its path, which systemd "
                         "refuses in a program's path", "give a plain path")
    if not venv_path.is_absolute():
        raise InputError(f"the virtual environment {venv!r} is not an absolute path", "give it as /path/to/venv")
    return venv_path


def systemd_program(plan: Any, venv: str | None = None) -> str | None:
    """The program a systemd unit's ExecStart= runs (venv/bin/<argv[0]>), None when it is a variable."""
    v = _view(plan)
    prog = v.argv[0]
    if not isinstance(prog, str):
        return None
    return prog if prog.startswith("/") else str(_venv_path(venv) / "bin" / prog)


def render_systemd(plan: Any, *, venv: str | None = None, user_unit: bool = False, run_as_user: str | None = None,
                   env_file: str | None = None, hf_home: str | None = None, node_rank: int | None = None,
                   head_addr: str | None = None, backend: str = "mp") -> str:
    """A service unit running the engine from its virtual environment.

    venv: the engine's virtual environment (default: the one this Python runs in, sys.prefix).
    user_unit: a `systemctl --user` unit (no User=, WantedBy=default.target).
    run_as_user: User= for a system unit (a dedicated account); None leaves a commented example.
    env_file: EnvironmentFile= with the secrets (default /etc/qwenplan/qwen.env, or
      ~/.config/qwenplan/qwen.env for a user unit); the file must exist, and may be empty.
    hf_home: HF_HOME for the service (default: the service user's ~/.cache/huggingface).
    node_rank/head_addr: for a multi-node plan, the unit of one node (vLLM backend mp, or SGLang).
    """
    v = _view(plan)
    if user_unit and run_as_user:
        raise InputError("a user unit runs as the user who starts it", "drop the user option, or export a system unit")
    if run_as_user is not None and not re.fullmatch(r"[a-z_][a-z0-9_-]*[$]?", run_as_user):
        raise InputError(f"{run_as_user!r} is not a user name", "use a name like qwenplan (lower case, digits, - and _)")
    venv_path = _venv_path(venv)
    if hf_home is not None:
        _user(hf_home, "--hf-home")
    if head_addr is not None:
        _no_space(_user(head_addr, "--head-addr"), "--head-addr", "an address")

    launch: NodeLaunch | None = None
    argv = list(v.argv)
    if v.nodes > 1:
        if node_rank is None or not head_addr:
            raise InputError(f"the plan spans {v.nodes} nodes: each node needs its own unit",
                             "give --node-rank N (0 = head) and --head-addr ADDRESS, once per node")
        if backend == "ray":
            raise InputError("a Ray cluster is exported as a script or Kubernetes manifests",
                             "use backend mp for systemd, or export the script")
        launch = _node_launch(v, node_rank=node_rank, head_addr=head_addr, backend=backend, rank_word=None,
                              argv=v.argv)
        argv = launch.argv
    prog = argv[0]
    if isinstance(prog, str) and not prog.startswith("/") and v.engine == "llamacpp" and not venv:
        prog = shutil.which(prog) or f"/usr/local/bin/{prog}"   # a binary, not a Python package
    elif isinstance(prog, str) and not prog.startswith("/"):
        prog = str(venv_path / "bin" / prog)
    argv = [prog] + argv[1:]

    env = dict(v.env)
    if "CUDA_VISIBLE_DEVICES" not in env and (v.gpu_uuids or v.gpu_ids) and v.nodes == 1:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, v.gpu_uuids or v.gpu_ids))
    if hf_home:
        env["HF_HOME"] = hf_home
    if env_file is not None:
        env_file_line = _sd_pct(_absolute_plain_path(env_file, "--env-file"))
    else:
        env_file_line = "%h/.config/qwenplan/qwen.env" if user_unit else "/etc/qwenplan/qwen.env"
    shown_env = env_file or ("~/.config/qwenplan/qwen.env" if user_unit else "/etc/qwenplan/qwen.env")
    name = f"qwenplan-{v.slug}" + (f"-node{node_rank}" if v.nodes > 1 else "")
    serves_http = launch is None or launch.serves_http
    url = f"http://{_probe_host(v.host)}:{v.port}{HEALTH_PATH}"
    ctl = "systemctl --user" if user_unit else "sudo systemctl"
    where = "~/.config/systemd/user/" if user_unit else "/etc/systemd/system/"

    head = [f"qwenplan: {v.title}",
            f"GPUs: {_gpu_summary(v)}" + (f"; node {node_rank} of {v.nodes} ({launch.role})" if launch else ""),
            f"Install: copy to {where}{name}.service, then `{ctl} daemon-reload && {ctl} enable --now {name}`"
            + ("; `loginctl enable-linger $USER` keeps it running after logout" if user_unit else "."),
            f"Secrets ({', '.join(v.secrets) or 'none'}) are read from {shown_env} (EnvironmentFile=), never",
            "written here. The file must exist, mode 600, lines of NAME=value; `qwenplan export -o` writes one",
            "with the names (no values) beside this unit when it is absent. Install it with:",
            (f"  install -D -m 600 {ENV_FILE_NAME} {_sh_path(shown_env)}" if user_unit else
             f"  sudo install -D -m 600 {ENV_FILE_NAME} {_sh_path(shown_env)}")]
    if serves_http:
        head += [f"Health: GET {url} answers 200 once the model is loaded. ExecStartPost= waits for it, so",
                 "`systemctl start` returns (and units ordered After= this one start) only when the server is ready;",
                 f"TimeoutStartSec= allows {START_ALLOWANCE_S // 60} min for that: 138 s on an H100 with the weights cached",
                 "(measured by qwenplan), plus the checkpoint download on a first start. Use --no-block to return at once."]
    else:
        head += ["This node serves no HTTP: the head node's unit answers the health check."]
    if not user_unit and run_as_user is None:
        head += ["Runs as root unless you set User= below (recommended: a dedicated account, e.g.",
                 "  sudo useradd --system --create-home --home-dir /var/lib/qwenplan qwenplan)."]
    lines = [_comment(head).rstrip("\n"),
             "[Unit]",
             f"Description={_sd_pct(printable('Qwen3.6-35B-A3B: ' + v.title))}",
             "After=network-online.target",
             "Wants=network-online.target",
             # at most 3 failed starts in an hour: a crash during loading is not retried forever
             "StartLimitIntervalSec=3600",
             "StartLimitBurst=3",
             "",
             "[Service]",
             "Type=exec"]
    if not user_unit:
        lines.append(f"User={run_as_user}" if run_as_user else "#User=qwenplan")
    for k, val in env.items():
        lines.append("Environment=" + _sd_quote(_sd_pct(f"{k}={val}")))
    lines.append(f"EnvironmentFile={env_file_line}")
    lines.append(_sd_exec_line("ExecStart", argv))
    if serves_http:
        lines.append(_sd_exec_line("ExecStartPost", [str(venv_path / "bin" / "python3"), "-c",
                                                      _health_python(url, loop=True)]))
    lines += ["Restart=on-failure",
              "RestartSec=30",
              f"TimeoutStartSec={START_ALLOWANCE_S}",
              "TimeoutStopSec=120",
              "LimitNOFILE=65536",
              "LimitMEMLOCK=infinity",
              "",
              "[Install]",
              f"WantedBy={'default.target' if user_unit else 'multi-user.target'}"]
    return "\n".join(lines) + "\n"


# --- docker compose -----------------------------------------------------------------------------

def _compose_escape(obj: Any) -> Any:
    """Compose interpolates `$VAR` in every string: a literal `$` is written `$$`."""
    if isinstance(obj, str):
        return obj.replace("$", "$$")
    if isinstance(obj, list):
        return [_compose_escape(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _compose_escape(x) for k, x in obj.items()}
    return obj


def _publish_address(host: str, option: str) -> str:
    """The address compose publishes the port on: an IP address; `localhost` is 127.0.0.1."""
    if host in ("", "0.0.0.0", "::"):
        return host
    if host.lower() == "localhost":
        return "127.0.0.1"        # the one name that means the same on every host (RFC 6761, 6.3)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is None or getattr(ip, "scope_id", None):
        raise InputError(f"{option} {printable(host)!r} is not an IP address: compose publishes a port on an "
                         "address of this host" + (", and Docker takes no IPv6 zone (%...)" if ip else ""),
                         f"give {option} as an IP address, e.g. 127.0.0.1 (this host only) or 0.0.0.0 (all)")
    return str(ip)


# the container's HF cache from the host's HF_HOME when the compose file is used, else the default
HF_CACHE_DEFAULT = "${HF_HOME:-~/.cache/huggingface}"


def render_compose(plan: Any, *, image: str | None = None, env_file: str = ENV_FILE_NAME,
                   hf_cache: str | None = None, publish_host: str | None = None,
                   service: str = "qwen", node_rank: int | None = None, head_addr: str | None = None,
                   backend: str = "mp") -> str:
    """A compose file: the engine's official image, the planned GPUs, the HF cache as a volume, the port
    published on the plan's host (127.0.0.1 by default), secrets from `env_file` (relative to the compose
    file; it must exist, it may be empty), a healthcheck on /health and a restart policy.

    A multi-node plan gives the file of one node (node_rank, head_addr), on the host network.
    """
    v = _view(plan)
    img = _image(v, image)
    _user(env_file, "--env-file")
    if hf_cache is not None:
        _host_folder(hf_cache, "--hf-cache")
    if head_addr is not None:
        _no_space(_user(head_addr, "--head-addr"), "--head-addr", "an address")
    launch = None
    if v.nodes > 1:
        if node_rank is None or not head_addr:
            raise InputError(f"the plan spans {v.nodes} nodes: each node needs its own compose file",
                             "give --node-rank N (0 = head) and --head-addr ADDRESS, once per node")
        if backend == "ray":
            raise InputError("a Ray cluster is exported as a script or Kubernetes manifests",
                             "use backend mp for compose, or export the script")
        # host networking: the engine keeps the plan's --host; only the program is the image's
        launch = _node_launch(v, node_rank=node_rank, head_addr=head_addr, backend=backend, rank_word=None,
                              argv=[_container_program(v.argv[0])] + v.argv[1:])
        argv = launch.argv
    else:
        argv = _container_argv(v, v.argv)
    serves_http = launch is None or launch.serves_http
    bind = ""
    if launch is None:
        bind = _publish_address(_user(publish_host, "--publish-host"), "--publish-host") \
            if publish_host is not None else _publish_address(v.host, "--host")
    probe = f"http://127.0.0.1:{v.port}{HEALTH_PATH}" if launch is None else \
        f"http://{_probe_host(v.host)}:{v.port}{HEALTH_PATH}"

    svc: dict[str, Any] = {"image": img}
    if any(isinstance(w, EnvRef) for w in argv):
        # a secret in the argv: the container's shell expands it from the env_file's variables
        svc["entrypoint"] = ["/bin/sh", "-c", "exec " + " ".join(_sh_word(w) for w in argv)]
        svc["command"] = []
    else:
        svc["entrypoint"] = [argv[0]]
        svc["command"] = list(argv[1:])
    env = _container_env(v)
    if env:
        svc["environment"] = env
    svc["env_file"] = [env_file]
    if launch is None:
        host_part = f"[{bind}]" if ":" in bind else bind
        svc["ports"] = [f"{host_part}:{v.port}:{v.port}" if bind not in ("0.0.0.0", "") else f"{v.port}:{v.port}"]
    else:
        svc["network_mode"] = "host"
    svc["volumes"] = [f"{hf_cache}:{HF_CACHE_IN_CONTAINER}" if hf_cache else None]   # set after escaping
    if v.gpus > 1 or v.nodes > 1:
        svc["ipc"] = "host"
    if v.engine == "sglang":
        svc["ulimits"] = {"memlock": -1, "stack": 67108864}
    if v.gpus:
        svc["deploy"] = {"resources": {"reservations": {"devices": [
            {"driver": "nvidia", "device_ids": _gpu_device_ids(v) if v.nodes == 1 else [str(i) for i in range(v.gpus)],
             "capabilities": ["gpu"]}]}}}
    if serves_http:
        # llama.cpp's images have curl and no Python (their own HEALTHCHECK uses curl)
        test = (["CMD", "curl", "-fsS", probe] if v.engine == "llamacpp" else
                ["CMD", "python3", "-c", _health_python(probe, loop=False)])
        svc["healthcheck"] = {"test": test,
                              "interval": "30s", "timeout": "10s", "retries": 3,
                              "start_period": f"{START_ALLOWANCE_S // 60}m"}
    svc["restart"] = "unless-stopped"

    head = [f"qwenplan: {v.title}",
            f"GPUs: {_gpu_summary(v)}" + (f"; node {node_rank} of {v.nodes} ({launch.role})" if launch else ""),
            "Start: docker compose up -d    (NVIDIA Container Toolkit required)",
            f"Secrets ({', '.join(v.secrets) or 'none'}) come from {env_file} beside this file (env_file:), never",
            "from here: it must exist, lines of NAME=value; `qwenplan export -o` writes it with the names (no",
            "values, mode 600) when it is absent.",
            f"Image {img}: its `{_container_program(v.argv[0])}` replaces the host command's program.",
            "HF cache: " + (hf_cache if hf_cache else "$HF_HOME when set where compose runs, else ~/.cache/huggingface")
            + f", mounted on {HF_CACHE_IN_CONTAINER}."]
    if launch is None:
        head += [f"The engine listens on 0.0.0.0 inside the container (--host rewritten from {v.host}); the port is",
                 f"published on {bind or '0.0.0.0'} only. CUDA_VISIBLE_DEVICES is not set: device_ids picks the planned GPUs,",
                 "which the container sees as 0..n-1."]
    else:
        head += ["Host networking (the nodes talk NCCL/torch.distributed over many ports); set",
                 "NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME in the env file if the nodes have several interfaces."]
    if serves_http:
        head += [f"Health: {probe} (python3 in the image; no curl needed). start_period allows",
                 f"{START_ALLOWANCE_S // 60} min for the first start: 138 s to load on an H100 with the weights cached",
                 "(measured by qwenplan), plus the download. `restart` acts when the engine exits; compose does not",
                 "restart an unhealthy container by itself."]
    if launch is not None:
        head += [f"Multi-node: {v.nodes} nodes x {v.gpus} GPUs ({_multinode_summary(v)})."]
    out = _compose_escape(svc)
    out["volumes"] = [out["volumes"][0] or f"{HF_CACHE_DEFAULT}:{HF_CACHE_IN_CONTAINER}"]   # interpolated
    doc = {"services": {service: out}}
    return _comment(head) + _yaml(doc)


# --- Kubernetes ---------------------------------------------------------------------------------

def _k8s_word(w: Word) -> str:
    """Kubernetes expands `$(VAR)` in command/args and reads `$$` as `$`: every literal `$` is `$$`."""
    if isinstance(w, EnvRef):
        return w.prefix.replace("$", "$$") + f"$({w.name})" + w.suffix.replace("$", "$$")
    return w.replace("$", "$$")


def _storage_size(v: _View) -> str:
    size = (v.plan.get("variant") or {}).get("size_bytes") or 0
    gib = max(100, math.ceil(size * 1.5 / (1 << 30) / 10) * 10) if size else 200
    return f"{gib}Gi"


def render_k8s(plan: Any, *, image: str | None = None, name: str | None = None, namespace: str | None = None,
               secret_name: str | None = None, hf_cache: str | None = None, storage_size: str | None = None,
               storage_class: str | None = None, node_selector: dict[str, str] | None = None,
               shm_size: str = DEFAULT_SHM, backend: str = "mp") -> str:
    """Kubernetes manifests: a PersistentVolumeClaim for the HF cache (or `hf_cache` as an absolute
    hostPath, or the name of an existing claim), a Deployment (one node) or a LeaderWorkerSet
    (leaderworkerset.x-k8s.io/v1, several nodes), and a Service. GPUs through `nvidia.com/gpu`,
    startup/readiness/liveness probes on /health, /dev/shm as a memory emptyDir, secrets from the
    Secret `secret_name` (default qwenplan-<model>) through secretKeyRef; no Secret object is
    written (it would carry the values).
    """
    v = _view(plan)
    img = _image(v, image)
    nm = _slug(_user(name, "--name")) if name else f"qwenplan-{v.slug}"
    secret = _dns_subdomain(secret_name, "--secret-name") if secret_name is not None else nm
    if namespace is not None:
        _dns_label(namespace, "--namespace")
    if storage_size is not None:
        _quantity(storage_size, "--storage-size")
    if storage_class is not None:
        _dns_subdomain(storage_class, "--storage-class")
    if hf_cache is not None:
        if hf_cache.startswith("/"):
            _host_folder(hf_cache, "--hf-cache")
        else:
            _dns_subdomain(hf_cache, "--hf-cache (a PersistentVolumeClaim name, or an absolute hostPath)")
    if shm_size != DEFAULT_SHM:
        _quantity(shm_size, "--shm-size")
    labels = {"app.kubernetes.io/name": nm, "app.kubernetes.io/managed-by": "qwenplan"}
    meta = {"name": nm, "labels": dict(labels)}
    if namespace:
        meta["namespace"] = namespace
    docs: list[dict] = []

    claim = None
    if hf_cache and hf_cache.startswith("/"):
        cache_vol = {"name": "hf-cache", "hostPath": {"path": hf_cache, "type": "DirectoryOrCreate"}}
    else:
        claim = hf_cache or f"{nm}-hf-cache"
        cache_vol = {"name": "hf-cache", "persistentVolumeClaim": {"claimName": claim}}
        if not hf_cache:
            pvc_spec: dict[str, Any] = {
                "accessModes": ["ReadWriteMany" if v.nodes > 1 else "ReadWriteOnce"],
                "resources": {"requests": {"storage": storage_size or _storage_size(v)}}}
            if storage_class:
                pvc_spec["storageClassName"] = storage_class
            docs.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "metadata": {**meta, "name": claim}, "spec": pvc_spec})
    volumes = [cache_vol, {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}}]

    def container(argv: list[Word], http: bool, cname: str) -> dict:
        env = [{"name": k, "value": val} for k, val in _container_env(v).items()]
        env += [{"name": s, "valueFrom": {"secretKeyRef": {"name": secret, "key": s}}} for s in v.secrets]
        c: dict[str, Any] = {"name": cname, "image": img,
                             "command": [_k8s_word(argv[0])], "args": [_k8s_word(w) for w in argv[1:]]}
        if env:
            c["env"] = env
        if http:
            c["ports"] = [{"name": "http", "containerPort": v.port, "protocol": "TCP"}]
        if v.gpus:
            c["resources"] = {"limits": {"nvidia.com/gpu": v.gpus}}
        c["volumeMounts"] = [{"name": "hf-cache", "mountPath": HF_CACHE_IN_CONTAINER},
                             {"name": "dshm", "mountPath": "/dev/shm"}]
        if http:
            get = {"httpGet": {"path": HEALTH_PATH, "port": "http"}}
            c["startupProbe"] = {**get, "periodSeconds": 10, "timeoutSeconds": 5,
                                 "failureThreshold": START_ALLOWANCE_S // 10}
            c["readinessProbe"] = {**get, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3}
            c["livenessProbe"] = {**get, "periodSeconds": 30, "timeoutSeconds": 10, "failureThreshold": 3}
        return c

    def pod_spec(c: dict) -> dict:
        spec: dict[str, Any] = {"containers": [c], "volumes": volumes, "terminationGracePeriodSeconds": 60}
        if node_selector:
            spec["nodeSelector"] = dict(node_selector)
        return spec

    head = [f"qwenplan: {v.title}",
            f"GPUs: {_gpu_summary(v)}; image {img}",
            "Apply: kubectl apply -f THIS_FILE",
            f"Secrets ({', '.join(v.secrets) or 'none'}) come from the Secret {secret!r}, never from here; create it first",
            f"(values may be empty): kubectl create secret generic {shlex.quote(secret)}"
            + (f" --namespace {shlex.quote(namespace)}" if namespace else "") + " "
            + " ".join(f"--from-literal={s}=..." for s in v.secrets),
            f"The engine listens on 0.0.0.0 in the pod (--host rewritten from {v.host}); the Service is ClusterIP only:",
            f"  kubectl port-forward svc/{nm} {v.port}:{v.port}",
            f"Probes: GET {HEALTH_PATH} (no API key needed). The startupProbe allows {START_ALLOWANCE_S // 60} min before",
            "liveness counts: 138 s to load on an H100 with the weights cached (measured by qwenplan), plus the download.",
            "HF cache: " + (f"hostPath {hf_cache}" if claim is None else f"PersistentVolumeClaim {claim}")
            + ("; shared by all nodes of the group (ReadWriteMany storage, e.g. NFS/CephFS)" if v.nodes > 1 and claim
               else "") + "."]

    if v.nodes == 1:
        argv = _container_argv(v, v.argv)
        sel = {"app.kubernetes.io/name": nm}
        docs.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
                     "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                              "selector": {"matchLabels": sel},
                              "template": {"metadata": {"labels": dict(labels)},
                                           "spec": pod_spec(container(argv, True, "engine"))}}})
        svc_sel = sel
    else:
        leader_addr, worker_idx = EnvRef("LWS_LEADER_ADDRESS"), EnvRef("LWS_WORKER_INDEX")
        base = _container_argv(v, v.argv)
        headl = _node_launch(v, node_rank=0, head_addr=leader_addr, backend=backend, rank_word="0", argv=base)
        workl = _node_launch(v, node_rank=1, head_addr=leader_addr, backend=backend, rank_word=worker_idx,
                             argv=base)
        if backend == "ray" and v.engine == "vllm":
            # vLLM's LWS page, Ray variant: the image's helper starts Ray and waits for the whole group
            helper = "/vllm-workspace/examples/ray_serving/multi-node-serving.sh"
            lead_c = container(["/bin/sh", "-c", f"bash {helper} leader --ray_cluster_size={v.nodes} && exec "
                                + " ".join(_sh_word(w, required=False) for w in headl.argv)], True, "engine")
            work_c = container(["/bin/sh", "-c", f'bash {helper} worker --ray_address="${{LWS_LEADER_ADDRESS}}"'],
                               False, "engine")
            head += ["Ray backend: Ray is an optional dependency since vLLM 0.19; the image needs `ray[cgraph]`."]
        else:
            lead_c = container(headl.argv, True, "engine")
            if workl.dp_start:
                # the worker's first DP rank is arithmetic on LWS_WORKER_INDEX: the pod's shell does it
                work_c = container(["/bin/sh", "-c", _dp_start_shell(workl) + " && exec "
                                    + " ".join(_sh_word(w) for w in workl.argv)], False, "engine")
            else:
                work_c = container(workl.argv, False, "engine")
        head += [f"Multi-node: a LeaderWorkerSet of {v.nodes} pods (needs the LWS controller,",
                 "https://lws.sigs.k8s.io/docs/installation/), as in vLLM's docs/deployment/frameworks/lws.md:",
                 f"{_multinode_summary(v)}; only the leader serves HTTP and has probes."]
        lws_labels = {**labels, "role": "leader"}
        docs.append({"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "metadata": meta,
                     "spec": {"replicas": 1,
                              "leaderWorkerTemplate": {
                                  "size": v.nodes,
                                  "restartPolicy": "RecreateGroupOnPodRestart",
                                  "leaderTemplate": {"metadata": {"labels": lws_labels}, "spec": pod_spec(lead_c)},
                                  "workerTemplate": {"metadata": {"labels": {**labels, "role": "worker"}},
                                                     "spec": pod_spec(work_c)}}}})
        svc_sel = {"leaderworkerset.sigs.k8s.io/name": nm, "role": "leader"}
    docs.append({"apiVersion": "v1", "kind": "Service", "metadata": meta,
                 "spec": {"type": "ClusterIP", "selector": svc_sel,
                          "ports": [{"name": "http", "port": v.port, "targetPort": "http", "protocol": "TCP"}]}})
    return _comment(head) + _yaml(docs, many=True)




# --- the one entry point for the CLI, and writing files -----------------------------------------

_RENDERERS = {"systemd": render_systemd, "compose": render_compose, "k8s": render_k8s, "script": render_script}


def render(kind: str, plan: Any, **options: Any) -> str:
    """Dispatch to render_<kind>; options are that renderer's keyword arguments (None values dropped)."""
    if kind not in _RENDERERS:
        raise InputError(f"unknown export kind {kind!r}", f"choose one of {', '.join(KINDS)}")
    return _RENDERERS[kind](plan, **{k: val for k, val in options.items() if val is not None})


def default_filename(kind: str, plan: Any) -> str:
    v = _view(plan)
    return {"systemd": f"qwenplan-{v.slug}.service", "compose": "compose.yaml",
            "k8s": f"qwenplan-{v.slug}.yaml", "script": f"serve-{v.slug}.sh"}[kind]


def file_mode(kind: str) -> int:
    """The most an export's mode may be; write_atomic takes the umask off."""
    return 0o777 if kind == "script" else 0o666


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)     # no /proc: read it the only other way (briefly sets it)
    os.umask(old)
    return old


def env_file_template(plan: Any) -> str:
    """The secrets file an export reads, with the names and no values (a user fills them in)."""
    v = _view(plan)
    lines = _comment([f"Secrets for qwenplan: {v.title}",
                      "One NAME=value per line, no quotes; uncomment and fill in. Keep this file mode 600.",
                      "Read by systemd's EnvironmentFile=, compose's env_file: and qwenplan's scripts."])
    return lines + "".join(f"#{name}=\n" for name in v.secrets)


def write_env_file(path: str | os.PathLike, plan: Any) -> bool:
    """Write the env file template at `path` (mode 600) unless a file is there: never overwritten.
    True when written."""
    p = Path(path).expanduser()
    if p.exists() or p.is_symlink():
        return False
    try:
        write_atomic(p, env_file_template(plan), mode=0o600)
    except InputError:
        if p.exists():           # appeared meanwhile: it stays as it is
            return False
        raise
    return True


def write_atomic(path: str | os.PathLike, text: str, force: bool = False, *, mode: int = 0o666) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and a rename, so a reader
    never sees half a file. An existing file is refused unless `force` (InputError with the fix).
    The file gets `mode` less the umask; any failure (a full disk, a read-only folder) is one
    InputError and leaves nothing behind."""
    try:
        return _write_atomic(path, text, force, mode & ~_umask() & 0o777)
    except OSError as e:
        where = Path(path).expanduser()
        raise InputError(f"cannot write {where}: {e.strerror or e}",
                         "free some space or choose a folder you can write to (-o FILE)") from None


def _write_atomic(path: str | os.PathLike, text: str, force: bool, mode: int) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{p} is a folder", f"give a file name, e.g. -o {p / 'FILE'}")
    parent = p.parent
    if not parent.is_dir():
        raise InputError(f"the folder {parent} does not exist", f"create it first (mkdir -p {shlex.quote(str(parent))})")
    if not force and (p.exists() or p.is_symlink()):
        raise InputError(f"{p} already exists", "pass --force to overwrite it, or choose another -o FILE")
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{p.name}.", suffix=".tmp")
    except PermissionError:
        raise InputError(f"cannot write in {parent}: permission denied",
                         "choose a folder you can write to, or run with the rights it needs (e.g. sudo)")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if force:
            os.replace(tmp, p)
        else:
            try:
                os.link(tmp, p)          # atomic and never clobbers a file that appeared meanwhile
            except FileExistsError:
                raise InputError(f"{p} already exists", "pass --force to overwrite it, or choose another -o FILE")
            except OSError:              # a filesystem without hard links
                if p.exists():
                    raise InputError(f"{p} already exists", "pass --force to overwrite it, or choose another -o FILE")
                os.replace(tmp, p)
            else:
                os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return p
