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
  HEAD:20000` (docs.sglang.io multi_node_deployment). These words are spelled by render (profiles/engines.yaml
  target_args) and checked against the version's flag file (profiles/flags/).
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

import os
import shlex
from pathlib import Path
from typing import Any

from qwenplan.launch import files
from qwenplan.launch.export.compose import render_compose
from qwenplan.launch.export.k8s import render_k8s
from qwenplan.launch.export.script import render_script
from qwenplan.launch.export.systemd import render_systemd, systemd_program
from qwenplan.launch.export.text import comment
from qwenplan.launch.export.view import (ENV_FILE_NAME, KINDS, EnvRef, NodeLaunch, engine_image, node_launch,
                                         plan_view)
from qwenplan.launch.safe_text import CONTROL
from qwenplan.planner.errors import InputError

__all__ = ["CONTROL", "ENV_FILE_NAME", "KINDS", "EnvRef", "NodeLaunch", "default_filename", "engine_image",
           "env_file_template", "file_mode", "node_launch", "render", "render_compose", "render_k8s", "render_script",
           "render_systemd", "systemd_program", "write_atomic", "write_env_file"]


_RENDERERS = {"systemd": render_systemd, "compose": render_compose, "k8s": render_k8s, "script": render_script}


def render(kind: str, plan: Any, **options: Any) -> str:
    """Dispatch to render_<kind>; options are that renderer's keyword arguments (None values dropped)."""
    if kind not in _RENDERERS:
        raise InputError(f"unknown export kind {kind!r}", f"choose one of {', '.join(KINDS)}")
    return _RENDERERS[kind](plan, **{k: val for k, val in options.items() if val is not None})


def default_filename(kind: str, plan: Any) -> str:
    v = plan_view(plan)
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
    v = plan_view(plan)
    lines = comment([f"Secrets for qwenplan: {v.title}",
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
    """Write an export through launch/files.py's atomic writer. An existing file is refused unless
    `force`; the file gets `mode` less the umask; any failure (a full disk, a read-only folder) is
    one InputError with the fix and leaves nothing behind."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{p} is a folder", f"give a file name, e.g. -o {p / 'FILE'}")
    if not p.parent.is_dir():
        raise InputError(f"the folder {p.parent} does not exist",
                         f"create it first (mkdir -p {shlex.quote(str(p.parent))})")
    try:
        return files.write_atomic(p, text, mode & ~_umask() & 0o777, overwrite=force)
    except FileExistsError:
        raise InputError(f"{p} already exists", "pass --force to overwrite it, or choose another -o FILE") from None
    except PermissionError:
        raise InputError(f"cannot write in {p.parent}: permission denied",
                         "choose a folder you can write to, or run with the rights it needs (e.g. sudo)") from None
    except OSError as e:
        raise InputError(f"cannot write {p}: {e.strerror or e}",
                         "free some space or choose a folder you can write to (-o FILE)") from None
