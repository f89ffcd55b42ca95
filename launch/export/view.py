"""The plan as every export format sees it: argv words (literal, or read from the environment at
start), env, secrets, host and port, GPUs, image, and what each node of a multi-node plan runs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Union

from qwenplan.launch.export.checks import MAX_ARG_CHARS, no_space, user_str
from qwenplan.launch.render import CONTAINER_HOST, DP_START_VAR, Target, target_launch
from qwenplan.launch.safe_text import printable
from qwenplan.launch.safe_text import SECRET_NAME as _SECRET_LIKE   # the one secret-name pattern
from qwenplan.planner.engines import get_engine
from qwenplan.planner.errors import InfeasibleError, InputError
from qwenplan.planner.flags import flag_set

KINDS = ("systemd", "compose", "k8s", "script")

HEALTH_PATH = "/health"
START_ALLOWANCE_S = 30 * 60          # see the module docstring: download + 138 s load, with margin
HF_CACHE_IN_CONTAINER = "/root/.cache/huggingface"   # both official images run as root
ENV_FILE_NAME = "qwen.env"           # the secrets file compose reads beside compose.yaml, and its template
DEFAULT_SHM = "15Gi"                 # vLLM's LWS example: /dev/shm emptyDir, medium Memory, sizeLimit 15Gi

_SECRET_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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


def cat(prefix: str, word: Word | int, suffix: str = "") -> Word:
    if isinstance(word, EnvRef):
        return word.wrap(prefix, suffix)
    return f"{prefix}{word}{suffix}"


# --- the plan, as the exporters see it ---------------------------------------------------------

@dataclass
class View:
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


def slug(text: str, limit: int = 50) -> str:
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
        out[i] = cat(w.split("=", 1)[0] + "=", value)
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


def _checked_argv(p: dict) -> list[str]:
    engine, argv = p.get("engine") or {}, (p.get("command") or {}).get("argv") or []
    if not argv or not all(isinstance(a, str) for a in argv):
        raise InputError("the plan has no engine command (command.argv)", "export a plan made by `qwenplan plan --json`")
    if not engine.get("name") or not engine.get("version"):
        raise InputError("the plan names no engine and version", "export a plan made by `qwenplan plan --json`")
    long = next((a for a in argv if len(a) > MAX_ARG_CHARS), None)
    if long is not None:
        raise InputError(f"an engine argument is {len(long):,} characters long ({printable(long[:40])}...)",
                         f"keep each argument (a served name, an --extra-arg) under {MAX_ARG_CHARS:,} characters")
    return argv


def _secrets_and_env(command: dict, settings: dict) -> tuple[list[str], dict[str, str]]:
    """The secrets' names (never their values), and the rest of the environment."""
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
    return secrets, env


def _gpus_per_node(parallel: dict, engine_name: str) -> int:
    tensor, pipeline = int(parallel.get("tensor") or 1), int(parallel.get("pipeline") or 1)
    data, nodes = int(parallel.get("data") or 1), int(parallel.get("nodes") or 1)
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
        return tensor * pipeline * data // nodes
    if parallel.get("gpu_ids"):
        return len(parallel["gpu_ids"])
    return 0 if engine_name == "llamacpp" else tensor * pipeline * data   # llama.cpp without GPU ids: the CPU


def plan_view(plan: Any) -> View:
    p = _as_dict(plan)
    if p.get("status", "ok") != "ok":
        reqs = "; ".join(p.get("requirements") or []) or "change the hardware or the pins until `qwenplan plan` finds one"
        raise InfeasibleError("the plan is infeasible, so there is nothing to export", reqs)
    argv = _checked_argv(p)
    engine, settings = p["engine"], p.get("settings") or {}
    parallel, variant = p.get("parallel") or {}, p.get("variant") or {}
    secrets, env = _secrets_and_env(p.get("command") or {}, settings)
    words = _secret_words(argv, secrets)
    port_w = _flag_value(words, ("--port",))
    port = settings.get("port") or (int(port_w) if isinstance(port_w, str) and port_w.isdigit() else 8000)
    host_w = _flag_value(words, ("--host",))
    host = settings.get("host") or (host_w if isinstance(host_w, str) else None) or "127.0.0.1"
    no_space(user_str(host, "--host"), "--host", "an address")
    gpus = _gpus_per_node(parallel, engine.get("name"))
    served = variant.get("served_model_name") or p.get("model") or "qwen3.6-35b-a3b"
    return View(plan=p, engine=str(engine["name"]), version=str(engine["version"]), argv=words, env=env,
                secrets=secrets, host=str(host), port=int(port), slug=slug(served),
                title=f"{variant.get('repo') or served} on {engine['name']} {engine['version']}",
                nodes=int(parallel.get("nodes") or 1), tensor=int(parallel.get("tensor") or 1),
                pipeline=int(parallel.get("pipeline") or 1), data=int(parallel.get("data") or 1), gpus=gpus,
                gpu_ids=list(parallel.get("gpu_ids") or []),
                gpu_uuids=[u for u in (parallel.get("gpu_uuids") or []) if u],
                image=engine.get("image"), install=engine.get("install"))


# --- flags the exporters add: only ones the target version accepts ------------------------------

def check_flags(v: View, flags: list[str], choices: dict[str, str] | None = None) -> None:
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


def _ensure_parallel(v: View, argv: list[Word], names: tuple[str, ...], value: int) -> list[Word]:
    """The parallel size flag must say `value`; add it when the argv leaves it to the default."""
    current = _flag_value(argv, names)
    if current is None:
        check_flags(v, [names[0]])
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




def dp_start_shell(n: NodeLaunch) -> str:
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
    v = plan_view(plan)
    return node_launch_of(v, node_rank=node_rank, head_addr=head_addr, backend=backend, rank_word=rank_word,
                        argv=container_argv(v, v.argv) if container else v.argv)


def _text(w: Word) -> str:
    """A word as render takes it: an EnvRef is written `${NAME}` (read back by secret_words)."""
    return f"{w.prefix}${{{w.name}}}{w.suffix}" if isinstance(w, EnvRef) else str(w)


def node_launch_of(v: View, *, node_rank: int, head_addr: Word, backend: str, rank_word: Word | None,
                   argv: list[Word]) -> NodeLaunch:
    """The plan's command on one node of a multi-node plan; the words the node adds are render's
    (profiles/engines.yaml target_args), never spelled here."""
    if v.nodes < 2:
        raise InputError("the plan runs on one node", "export it without a node rank")
    if not 0 <= node_rank < v.nodes:
        raise InputError(f"node rank {node_rank} is outside 0..{v.nodes - 1}", f"give a rank from 0 to {v.nodes - 1}")
    if isinstance(head_addr, str) and not head_addr.strip():
        raise InputError("the head node's address is empty", "give the head node's IP address or DNS name")
    rank_ref = rank_word if isinstance(rank_word, EnvRef) else None
    target = Target(nodes=v.nodes, node_rank=node_rank if rank_word is None or rank_ref else int(rank_word),
                    head_addr=_text(head_addr), rank_ref=_text(rank_ref) if rank_ref else None, backend=backend)
    t = target_launch(v.engine, v.version, v.plan.get("parallel") or {}, target)
    refs = [w.name for w in (head_addr, rank_ref) if isinstance(w, EnvRef)] + [DP_START_VAR]
    words = lambda items: _secret_words(list(items), refs)  # noqa: E731
    if t.command is not None:
        return NodeLaunch(target.role, words(t.command), serves_http=False)
    argv = _ensure_parallel(v, list(argv), _PARALLEL_FLAGS[v.engine][0], v.tensor)
    argv = _ensure_parallel(v, argv, _PARALLEL_FLAGS[v.engine][1], v.pipeline if v.engine == "vllm" else v.nodes)
    if v.data > 1:
        argv = _ensure_parallel(v, argv, ("--data-parallel-size", "-dp"), v.data)
    dp_start = (rank_ref.name, v.data // v.nodes) if rank_ref and any(
        isinstance(w, EnvRef) and w.name == DP_START_VAR for w in words(t.args)) else None
    return NodeLaunch(target.role, argv + words(t.args), pre=[words(c) for c in t.pre],
                      wait_for_nodes=t.wait_for_nodes, serves_http=t.serves_http, dp_start=dp_start)


# the plan's parallel sizes, which a multi-node command must state (tensor, pipeline)
_PARALLEL_FLAGS = {"vllm": (("--tensor-parallel-size", "-tp"), ("--pipeline-parallel-size", "-pp")),
                   "sglang": (("--tp-size", "--tensor-parallel-size"), ("--pp-size", "--pipeline-parallel-size"))}


def one_node(v: View, node_rank: int | None, head_addr: str | None, backend: str, fmt: str, what: str,
             argv: list[Word]) -> NodeLaunch | None:
    """The node a unit or compose file is for (one file per node); None for a one-node plan."""
    if head_addr is not None:
        no_space(user_str(head_addr, "--head-addr"), "--head-addr", "an address")
    if v.nodes == 1:
        return None
    if node_rank is None or not head_addr:
        raise InputError(f"the plan spans {v.nodes} nodes: each node needs its own {what}",
                         "give --node-rank N (0 = head) and --head-addr ADDRESS, once per node")
    if backend == "ray":
        raise InputError("a Ray cluster is exported as a script or Kubernetes manifests",
                         f"use backend mp for {fmt}, or export the script")
    return node_launch_of(v, node_rank=node_rank, head_addr=head_addr, backend=backend, rank_word=None, argv=argv)


def multinode_summary(v: View) -> str:
    """How the plan's ranks sit on the nodes, in one sentence for the export's header."""
    if v.data == 1:
        return (f"tensor parallel {v.tensor} within a node, pipeline parallel {v.nodes} across nodes")
    return (f"{v.data} data-parallel ranks, {v.data // v.nodes} on each node (vLLM's multi-node data parallel); "
            f"each rank's pipeline parallel {v.pipeline} x tensor parallel {v.tensor} stays on its node, the "
            f"expert layers are shared by all {v.data} ranks across the nodes (same memory per GPU as planned; "
            "a fast interconnect matters)")


# --- containers ---------------------------------------------------------------------------------

def container_program(prog: Word) -> Word:
    if not isinstance(prog, str):
        return prog
    base = prog.rsplit("/", 1)[-1]
    return "python3" if re.fullmatch(r"python(3(\.\d+)?)?", base) else base


def container_argv(v: View, argv: list[Word]) -> list[Word]:
    """The image's program instead of a host path, and --host 0.0.0.0 inside the container."""
    out = list(argv)
    # llama.cpp's images keep llama-server at /app (their ENTRYPOINT), not on PATH
    out[0] = (get_engine(v.engine).raw.get("image_entrypoint") or [container_program(out[0])])[0]
    fs = flag_set(v.engine, v.version)
    if fs is not None and not fs.accepts("--host"):
        raise InputError(f"{v.engine} {v.version} has no --host flag", "plan for a version that has it")
    return _set_flag(out, ("--host",), CONTAINER_HOST)


def engine_image(plan: Any, image: str | None = None) -> str:
    """The image a container export runs: `image` if given, else the plan's, else the official tag."""
    v = plan_view(plan)
    return image_for(v, image)


# distribution/reference's grammar (github.com/distribution/reference, reference.go): the images
# docker, containerd and the kubelet pull
_IMAGE_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*" \
                r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_IMAGE_REF = re.compile(rf"(?:{_IMAGE_DOMAIN}/)?{_IMAGE_PATH}(?:/{_IMAGE_PATH})*(?::[\w][\w.-]{{0,127}})?"
                        r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?")


def image_for(v: View, image: str | None) -> str:
    if image is not None:
        user_str(image, "--image")
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


def gpu_device_ids(v: View) -> list[str]:
    if v.gpu_uuids and len(v.gpu_uuids) == len(v.gpu_ids or v.gpu_uuids) and all(
            str(u).startswith(("GPU-", "MIG-")) for u in v.gpu_uuids):
        return [str(u) for u in v.gpu_uuids]
    if v.gpu_ids:
        return [str(i) for i in v.gpu_ids]
    return [str(i) for i in range(v.gpus)]


def container_env(v: View) -> dict[str, str]:
    return {k: val for k, val in v.env.items() if k != "CUDA_VISIBLE_DEVICES"}


def host_env(v: View) -> dict[str, str]:
    """The environment on a host (not a container): the planned GPUs by CUDA_VISIBLE_DEVICES."""
    env = dict(v.env)
    if "CUDA_VISIBLE_DEVICES" not in env and (v.gpu_uuids or v.gpu_ids) and v.nodes == 1:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, v.gpu_uuids or v.gpu_ids))
    return env


def gpu_summary(v: View) -> str:
    if v.nodes > 1:
        return f"{v.nodes} nodes x {v.gpus}"
    ids = ",".join(map(str, v.gpu_ids)) if v.gpu_ids else "?"
    return f"{v.gpus} (ids {ids})"
