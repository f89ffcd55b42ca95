"""The installed llama-server: its build, and its flags read off its own `--help`.

`python -m qwenplan.launch.flagdump llamacpp [--server PATH]` writes profiles/flags/llamacpp-bN.txt
for the build that PATH (default: llama-server on PATH) reports; that file is what every rendered
llama-server argv is checked against, and `qwenplan doctor` checks the argv against the
installed build's own help.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from qwenplan.planner.flags import parse_llama_help, render_flag_file

# 'version: X (build 11312, commit 0c1e570)' in this build, 'version: 11312 (0c1e570)' in older ones
_VERSION = re.compile(r"build (?P<build>\d+), commit (?P<commit>[0-9a-f]+)|version: (?P<old>\d+) \((?P<oldc>[0-9a-f]+)\)")
FLAGS_DIR = Path(__file__).resolve().parent.parent / "profiles" / "flags"


@dataclass(frozen=True)
class Build:
    path: str
    build: str            # "b11312"
    commit: str
    text: str             # what --version printed


def find_server(server: str | None = None) -> str | None:
    return shutil.which(server or "llama-server")


def _run(path: str, *args: str, timeout: float = 30) -> str:
    r = subprocess.run([path, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    return r.stdout + r.stderr


def version(path: str) -> Build | None:
    """`llama-server --version`; None when it names no build number."""
    try:
        text = _run(path, "--version")
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = _VERSION.search(text)
    if not m:
        return None
    return Build(path, f"b{m['build'] or m['old']}", m["commit"] or m["oldc"], text.strip())


def flags(path: str) -> dict[str, tuple[str, ...] | None]:
    """Every option this llama-server accepts, from its own --help."""
    return parse_llama_help(_run(path, "--help"))


def unknown_flags(argv: list[str], accepted: dict) -> list[str]:
    """The options of `argv` (and choice values) that this build's --help does not list."""
    bad = []
    for i, a in enumerate(argv[1:], start=1):
        if not a.startswith("-") or a == "-" or a.lstrip("-").replace(".", "", 1).isdigit():
            continue
        flag = a.partition("=")[0]
        if flag not in accepted:
            bad.append(flag)
            continue
        choices = accepted[flag]
        value = argv[i + 1] if i + 1 < len(argv) else None
        if choices and value is not None and not value.startswith("-") and value not in choices:
            bad.append(f"{flag} {value}")
    return bad


def dump(server: str | None = None, out_dir: Path = FLAGS_DIR) -> Path:
    path = find_server(server)
    if not path:
        raise SystemExit(f"llama-server not found ({server or 'PATH'}); build it with tests/llamacpp/build.sh")
    b = version(path)
    if b is None:
        raise SystemExit(f"{path} --version names no build number")
    target = out_dir / f"llamacpp-{b.build}.txt"
    header = (f"llamacpp {b.build} ({b.commit}): option strings of the real `llama-server --help`, written by "
              f"`python -m qwenplan.launch.flagdump llamacpp`; choices in braces.")
    target.write_text(render_flag_file(flags(path), header), encoding="utf-8")
    return target
