"""Write profiles/flags/ENGINE-VERSION.txt from an installed engine's own `--help`.

    python -m qwenplan.launch.flagdump vllm --python /path/to/venv/bin/python [--out DIR]
    python -m qwenplan.launch.flagdump sglang --python /path/to/venv/bin/python
    python -m qwenplan.launch.flagdump llamacpp --server /path/to/llama-server

The engine runs in its own Python (where it is installed; never imported here); its version is
read there too, and the help goes through the same parser that reads the committed files
(planner/flags.py parse_help), so a new release takes this one command and its engines.yaml entry.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from qwenplan.planner.flags import parse_help, render_flag_file

HELP = {
    "vllm": ["-m", "vllm.entrypoints.cli.main", "serve", "--help=all"],
    "sglang": ["-m", "sglang.launch_server", "--help"],
}
VERSION = "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))"


def dump(engine: str, python: str, out_dir: Path) -> Path:
    if engine not in HELP:
        raise SystemExit(f"qwenplan flagdump: unknown engine {engine!r}: use one of {', '.join(HELP)}")
    version = subprocess.run([python, "-c", VERSION, engine], capture_output=True, text=True, check=True,
                             timeout=60).stdout.strip()
    r = subprocess.run([python, *HELP[engine]], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "COLUMNS": "200"})
    flags = parse_help(r.stdout)
    if r.returncode != 0 or len(flags) < 20:
        raise SystemExit(f"qwenplan flagdump: {engine} --help gave {len(flags)} flags (exit {r.returncode}): "
                         f"{(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    path = out_dir / f"{engine}-{version}.txt"
    header = (f"{engine} {version}: option strings of the real argparse parser (`{' '.join(HELP[engine])}` in the "
              f"engine's Python), written by `python -m qwenplan.launch.flagdump`; choices in braces.")
    path.write_text(render_flag_file(flags, header))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", choices=sorted(HELP) + ["llamacpp"])
    ap.add_argument("--python", default=sys.executable, help="the Python the engine is installed in")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "profiles" / "flags")
    ap.add_argument("--server", help="llamacpp: the llama-server binary (default: the one on PATH)")
    a = ap.parse_args(argv)
    if a.engine == "llamacpp":       # a binary, not a Python package: its build and help from itself
        from qwenplan.launch.llamacpp import dump as dump_llamacpp

        print(dump_llamacpp(a.server, a.out))
        return 0
    print(dump(a.engine, a.python, a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
