"""Run an installed engine's own argument parser on a planned argv, in that engine's Python.

The engines are never imported into qwenplan's process (they pin CUDA builds of torch and take
seconds to import); a subprocess in the engine's interpreter builds the real parser and parses
the argv. On a machine without a GPU vLLM's platform is forced to CPU first.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Executed by the engine's Python: prints one JSON line {"ok": bool, "error": str}.
_VLLM = r"""
import sys, json, importlib, io, contextlib
try:
    import vllm.platforms as P
    from vllm.platforms.cpu import CpuPlatform
    if P.current_platform.device_type in ("", None, "empty") or not P.current_platform.is_cuda_alike():
        P._current_platform = CpuPlatform()
except Exception:
    pass
from vllm.utils.argparse_utils import FlexibleArgumentParser
mk = None
for mod in ("vllm.entrypoints.openai.cli_args", "vllm.entrypoints.launchers.cli_args"):
    try:
        mk = importlib.import_module(mod).make_arg_parser
        break
    except Exception:
        pass
p = mk(FlexibleArgumentParser())
err = io.StringIO()
try:
    with contextlib.redirect_stderr(err):
        p.parse_args(json.loads(sys.argv[1]))
    print(json.dumps({"ok": True, "error": ""}))
except SystemExit:
    print(json.dumps({"ok": False, "error": (err.getvalue().strip().splitlines() or ["?"])[-1]}))
"""

_SGLANG = r"""
import sys, json, argparse, io, contextlib
try:
    from transformers import AutoConfig
    _orig = AutoConfig.register
    def _reg(*a, **k):
        k["exist_ok"] = True
        try:
            return _orig(*a, **k)
        except Exception:
            return None
    AutoConfig.register = _reg
except Exception:
    pass
from sglang.srt.server_args import ServerArgs
p = argparse.ArgumentParser()
ServerArgs.add_cli_args(p)
err = io.StringIO()
try:
    with contextlib.redirect_stderr(err):
        p.parse_args(json.loads(sys.argv[1]))
    print(json.dumps({"ok": True, "error": ""}))
except SystemExit:
    print(json.dumps({"ok": False, "error": (err.getvalue().strip().splitlines() or ["?"])[-1]}))
"""


@dataclass
class ParseResult:
    ok: bool
    error: str
    python: str


def engine_python(argv0: str) -> str | None:
    """The interpreter of an engine's console script (its shebang), or this Python for `python -m`."""
    if argv0.startswith("python"):
        return shutil.which(argv0) or sys.executable
    exe = shutil.which(argv0)
    if not exe:
        return None
    try:
        first = Path(exe).read_text(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return None
    return _shebang_python(first) if first.startswith("#!") else None


def _shebang_python(line: str) -> str | None:
    """The Python a `#!` line runs: its path, or for `#!/usr/bin/env [-S] python3` the python3
    that PATH finds (what the engine's console script itself would run)."""
    parts = line[2:].split()
    if parts and Path(parts[0]).name == "env":
        names = [p for p in parts[1:] if not p.startswith("-") and "=" not in p]
        return shutil.which(names[0]) if names and "python" in names[0] else None
    return parts[0] if parts and "python" in Path(parts[0]).name else None


def parser_args(engine: str, argv: list[str]) -> list[str]:
    """The argv the parser sees: after `vllm serve`, `sglang serve` or `-m sglang.launch_server`."""
    if engine == "sglang":
        if argv[:2] == ["sglang", "serve"]:
            return argv[2:]
        return argv[argv.index("sglang.launch_server") + 1:]
    return argv[2:]


def run_parser(engine: str, argv: list[str], python: str | None = None, timeout: float = 120) -> ParseResult | None:
    python = python or engine_python(argv[0])
    if not python:
        return None
    script = _SGLANG if engine == "sglang" else _VLLM
    try:
        out = subprocess.run([python, "-c", script, json.dumps(parser_args(engine, argv))], capture_output=True,
                             text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return ParseResult(False, f"could not run {python}: {e}", python)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            d = json.loads(line)
            return ParseResult(d["ok"], d["error"], python)
    tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
    return ParseResult(False, f"the parser did not run: {tail}", python)
