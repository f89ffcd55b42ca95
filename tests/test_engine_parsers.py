"""Optional tier (`pytest -m engine`): the real engines' own parsers on the example matrix.

Runs where vLLM or SGLang is installed (their console script on PATH, or the interpreter named
by QWENPLAN_VLLM_PYTHON / QWENPLAN_SGLANG_PYTHON); skipped otherwise.
"""

import os
from pathlib import Path

import pytest

from qwenplan.launch.engine_parser import engine_python, run_parser
from qwenplan.launch.render import render
from qwenplan.planner import hardware
from qwenplan.planner.catalog import find_gpu
from qwenplan.planner.decide import PlanOptions, make_plan

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "hardware"
pytestmark = pytest.mark.engine


def _python(engine):
    return os.environ.get(f"QWENPLAN_{engine.upper()}_PYTHON") or engine_python(engine)


@pytest.mark.parametrize("engine,version", [("vllm", "0.32.0"), ("sglang", "0.5.23")])
def test_real_parser_accepts_every_example_plan(engine, version):
    python = _python(engine)
    if not python:
        pytest.skip(f"{engine} is not installed here")
    for f in sorted(EXAMPLES.glob("*.json")):
        p = make_plan(hardware.load(f, lookup=find_gpu), PlanOptions(engine=engine, engine_version=version))
        if p.status != "ok":
            continue
        argv = render(p.to_dict())["argv"]
        r = run_parser(engine, argv, python=python, timeout=300)
        assert r.ok, (f.name, r.error, argv)
