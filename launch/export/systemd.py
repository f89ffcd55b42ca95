"""Export as a systemd service unit."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

from qwenplan.launch.export.checks import absolute_plain_path, user_str
from qwenplan.launch.export.text import comment, groups, health_python, probe_host, sh_path
from qwenplan.launch.export.view import (ENV_FILE_NAME, HEALTH_PATH, START_ALLOWANCE_S, EnvRef, NodeLaunch, View, Word,
                                         host_env,
                                         gpu_summary, one_node, plan_view)
from qwenplan.launch.safe_text import CONTROL, printable
from qwenplan.planner.errors import InputError

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
        first if i == j == 0 else _sd_exec_word(w) for j, w in enumerate(g)) for i, g in enumerate(groups(argv)))


def _venv_path(venv: str | None) -> Path:
    venv_path = Path(user_str(venv, "--venv") if venv is not None else sys.prefix).expanduser()
    if re.search(r"[\\'\"]", str(venv_path)):      # systemd: "Executable name contains special characters"
        raise InputError(f"the virtual environment {venv!r} has a quote or backslash in its path, which systemd "
                         "refuses in a program's path", "give a plain path")
    if not venv_path.is_absolute():
        raise InputError(f"the virtual environment {venv!r} is not an absolute path", "give it as /path/to/venv")
    return venv_path


def systemd_program(plan: Any, venv: str | None = None) -> str | None:
    """The program a systemd unit's ExecStart= runs (venv/bin/<argv[0]>), None when it is a variable."""
    v = plan_view(plan)
    prog = v.argv[0]
    if not isinstance(prog, str):
        return None
    return prog if prog.startswith("/") else str(_venv_path(venv) / "bin" / prog)


def _program(prog: Word, engine: str, venv: str | None, venv_path: Path) -> Word:
    """ExecStart='s program: an absolute path (systemd searches no PATH of the user's)."""
    if isinstance(prog, str) and not prog.startswith("/") and engine == "llamacpp" and not venv:
        return shutil.which(prog) or f"/usr/local/bin/{prog}"   # a binary, not a Python package
    if isinstance(prog, str) and not prog.startswith("/"):
        return str(venv_path / "bin" / prog)
    return prog


def _header(v: View, launch: NodeLaunch | None, node_rank: int | None, user_unit: bool, run_as_user: str | None,
            env_file: str | None, url: str) -> list[str]:
    """The unit's comment: what it runs, how to install it, where its secrets come from."""
    shown_env = env_file or ("~/.config/qwenplan/qwen.env" if user_unit else "/etc/qwenplan/qwen.env")
    serves_http = launch is None or launch.serves_http
    name = f"qwenplan-{v.slug}" + (f"-node{node_rank}" if v.nodes > 1 else "")
    ctl = "systemctl --user" if user_unit else "sudo systemctl"
    where = "~/.config/systemd/user/" if user_unit else "/etc/systemd/system/"

    head = [f"qwenplan: {v.title}",
            f"GPUs: {gpu_summary(v)}" + (f"; node {node_rank} of {v.nodes} ({launch.role})" if launch else ""),
            f"Install: copy to {where}{name}.service, then `{ctl} daemon-reload && {ctl} enable --now {name}`"
            + ("; `loginctl enable-linger $USER` keeps it running after logout" if user_unit else "."),
            f"Secrets ({', '.join(v.secrets) or 'none'}) are read from {shown_env} (EnvironmentFile=), never",
            "written here. The file must exist, mode 600, lines of NAME=value; `qwenplan export -o` writes one",
            "with the names (no values) beside this unit when it is absent. Install it with:",
            (f"  install -D -m 600 {ENV_FILE_NAME} {sh_path(shown_env)}" if user_unit else
             f"  sudo install -D -m 600 {ENV_FILE_NAME} {sh_path(shown_env)}")]
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
    return head


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
    v = plan_view(plan)
    if user_unit and run_as_user:
        raise InputError("a user unit runs as the user who starts it", "drop the user option, or export a system unit")
    if run_as_user is not None and not re.fullmatch(r"[a-z_][a-z0-9_-]*[$]?", run_as_user):
        raise InputError(f"{run_as_user!r} is not a user name", "use a name like qwenplan (lower case, digits, - and _)")
    venv_path = _venv_path(venv)
    if hf_home is not None:
        user_str(hf_home, "--hf-home")
    launch = one_node(v, node_rank, head_addr, backend, "systemd", "unit", v.argv)
    argv = launch.argv if launch else list(v.argv)
    argv = [_program(argv[0], v.engine, venv, venv_path)] + argv[1:]

    env = host_env(v)
    if hf_home:
        env["HF_HOME"] = hf_home
    if env_file is not None:
        env_file_line = _sd_pct(absolute_plain_path(env_file, "--env-file"))
    else:
        env_file_line = "%h/.config/qwenplan/qwen.env" if user_unit else "/etc/qwenplan/qwen.env"
    serves_http = launch is None or launch.serves_http
    url = f"http://{probe_host(v.host)}:{v.port}{HEALTH_PATH}"
    head = _header(v, launch, node_rank, user_unit, run_as_user, env_file, url)
    lines = [comment(head).rstrip("\n"),
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
                                                      health_python(url, loop=True)]))
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
