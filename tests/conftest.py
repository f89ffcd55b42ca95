import json
import sys
from pathlib import Path

import pytest

from tests.fake_engine import PortHandoff
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


_HANDOFFS: list[PortHandoff] = []


@pytest.fixture(autouse=True)
def _close_handoffs():
    yield
    while _HANDOFFS:
        _HANDOFFS.pop().close()


def handed_port() -> tuple[int, dict[str, str]]:
    """A port already bound and listening, handed to the fake engine (never free in between):
    the port, and the env telling the engine where to take it from. Launch with check=False."""
    h = PortHandoff()
    _HANDOFFS.append(h)
    return h.port, h.env
