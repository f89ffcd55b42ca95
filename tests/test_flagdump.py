"""The flag-set generator against a stand-in engine whose help is vLLM 0.32.0's real one: the file
it writes lists the same flags as the committed profiles/flags/vllm-0.32.0.txt."""

import subprocess
import sys
from pathlib import Path

from qwenplan.planner.flags import flag_set

ROOT = Path(__file__).resolve().parent.parent
HELP = ROOT / "tests" / "fixtures" / "engines" / "vllm-0.32.0-serve-help-all.txt"


def fake_vllm(site: Path, version: str) -> None:
    cli = site / "vllm" / "entrypoints" / "cli"
    cli.mkdir(parents=True)
    for d in (site / "vllm", site / "vllm" / "entrypoints", cli):
        (d / "__init__.py").write_text("")
    (cli / "main.py").write_text(f"import sys\nsys.stdout.write(open({str(HELP)!r}).read())\n")
    meta = site / f"vllm-{version}.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")


def test_a_release_dump_lists_what_its_parser_accepts(tmp_path):
    site = tmp_path / "site"
    fake_vllm(site, "0.32.0")
    py = tmp_path / "python"
    py.write_text(f"#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} \"$@\"\n")
    py.chmod(0o755)
    out = tmp_path / "flags"
    out.mkdir()
    r = subprocess.run([sys.executable, "-m", "qwenplan.launch.flagdump", "vllm", "--python", str(py), "--out",
                        str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    written = out / "vllm-0.32.0.txt"
    assert r.stdout.strip() == str(written)
    got = {line.split(" ", 1)[0] for line in written.read_text().splitlines() if line and not line.startswith("#")}
    assert got == set(flag_set("vllm", "0.32.0").flags)
    assert "--max-model-len" in got and "--speculative-config" in got
