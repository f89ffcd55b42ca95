import json
import sys
from pathlib import Path

import pytest

from tests.fakes import fake_psutil, fake_pynvml

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLES = Path(__file__).parent.parent / "examples"


def capture(name: str) -> dict:
    return json.loads((FIXTURES / "probes" / f"{name}.json").read_text())


@pytest.fixture
def replay(monkeypatch, tmp_path):
    """Run the real probe against recorded NVML and psutil answers (fake modules, real probe code)."""

    def run(name: str, env: dict | None = None, sysroot: Path | None = None, cap: dict | None = None):
        from qwenplan.planner import probe

        data = cap if cap is not None else capture(name)
        nvml = fake_pynvml.make(data)
        monkeypatch.setitem(sys.modules, "pynvml", nvml)
        monkeypatch.setitem(sys.modules, "psutil", fake_psutil.make(data))
        env = {"HOME": str(tmp_path), **(env or {})}
        hw = probe.probe(env=env, sysroot=sysroot or tmp_path / "no-sysroot")
        hw._nvml_calls = nvml._state["calls"]
        return hw

    return run
