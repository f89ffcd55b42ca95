"""Export as a bash script."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from qwenplan.launch.export.checks import user_str
from qwenplan.launch.export.text import comment, probe_host, sc2016, sh_command, sh_path, sh_word
from qwenplan.launch.export.view import (HEALTH_PATH, EnvRef, NodeLaunch, View, dp_start_shell, gpu_summary,
                                         host_env, multinode_summary, node_launch_of, plan_view)
from qwenplan.planner.errors import InputError


def render_script(plan: Any, *, venv: str | None = None, env_file: str | None = None,
                  backend: str = "mp") -> str:
    """A commented bash script (`set -euo pipefail`) that execs the planned command.

    Secrets come from `env_file` (default $QWENPLAN_ENV_FILE or ~/.config/qwenplan/qwen.env) when it
    exists. `venv` puts that virtual environment's bin/ first on PATH. A multi-node plan gives one
    script for every node: QWENPLAN_NODE_RANK (0 = head) and QWENPLAN_HEAD_ADDR choose the role.
    """
    v = plan_view(plan)
    if venv is not None and ":" in user_str(venv, "--venv"):
        raise InputError(f"--venv {venv!r} contains ':', which PATH cannot hold", "give a path without ':'")
    out = ["#!/usr/bin/env bash"]
    head = [f"qwenplan: {v.title}",
            f"GPUs: {gpu_summary(v)}"]
    if v.nodes > 1:
        head += [f"Multi-node: {v.nodes} nodes x {v.gpus} GPUs ({multinode_summary(v)}).",
                 f"Run this same script on every node: QWENPLAN_NODE_RANK=0 on the head, 1..{v.nodes - 1} on the others,",
                 "and QWENPLAN_HEAD_ADDR=<the head node's IP> on all of them."]
    head += [f"Health: curl -fsS http://{probe_host(v.host)}:{v.port}{HEALTH_PATH} answers 200 once the model is loaded",
             "(138 s on an H100 with the weights cached; a first start downloads the checkpoint first).",
             "Secrets (" + ", ".join(v.secrets or ["none"]) + ") are never written here: they are read from the env file",
             "below when it exists: lines of NAME=value, no quotes (the format of systemd's EnvironmentFile=)."]
    out.append(comment(head).rstrip("\n"))
    out.append("set -euo pipefail")
    out.append("")
    # the default is its own assignment: inside "${VAR:-...}" bash still pairs single quotes
    default = sh_path(user_str(env_file, "--env-file")) if env_file else '"$HOME/.config/qwenplan/qwen.env"'
    out.append('QWENPLAN_ENV_FILE="${QWENPLAN_ENV_FILE:-}"')
    out += sc2016([env_file] if env_file else [], "")
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
    env = host_env(v)
    for k, val in env.items():
        out.append(f"export {k}={shlex.quote(val)}")
    if venv:
        out += sc2016([venv], "")
        out.append(f"export PATH={shlex.quote(str(Path(venv) / 'bin'))}:\"$PATH\"")
    if env or venv:
        out.append("")

    if v.nodes == 1:
        out += sc2016(v.argv, "")
        out.append("exec " + sh_command(v.argv))
        return "\n".join(out) + "\n"

    rank_ref = EnvRef("QWENPLAN_NODE_RANK")
    head_ref = EnvRef("QWENPLAN_HEAD_ADDR")
    out += ['QWENPLAN_NODE_RANK="${QWENPLAN_NODE_RANK:-0}"',
            'QWENPLAN_HEAD_ADDR="${QWENPLAN_HEAD_ADDR:?set QWENPLAN_HEAD_ADDR to the head node address}"',
            'case "$QWENPLAN_NODE_RANK" in',
            f"  {'|'.join(str(r) for r in range(v.nodes))}) ;;",
            f'  *) echo "QWENPLAN_NODE_RANK must be 0..{v.nodes - 1}" >&2; exit 2 ;;',
            "esac", ""]
    headl = node_launch_of(v, node_rank=0, head_addr=head_ref, backend=backend, rank_word=None, argv=v.argv)
    workl = node_launch_of(v, node_rank=1, head_addr=head_ref, backend=backend, rank_word=rank_ref, argv=v.argv)
    out.append('if [ "$QWENPLAN_NODE_RANK" = 0 ]; then')
    out += _sh_node(headl, v)
    out.append("else")
    out += _sh_node(workl, v)
    out.append("fi")
    return "\n".join(out) + "\n"


def _sh_node(n: NodeLaunch, v: View) -> list[str]:
    lines = []
    for cmd in n.pre:
        lines.append("  " + " ".join(sh_word(w) for w in cmd))
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
        lines.append("  " + dp_start_shell(n))
    lines += sc2016(n.argv, "  ")
    lines.append("  exec " + sh_command(n.argv, indent="    "))
    return lines
