"""`import pynvml` in a qwenplan subprocess of the tests: the NVML answers recorded on a real
box (QWENPLAN_TEST_NVML_CAPTURE, default the H100 capture), replayed by tests/fakes/fake_pynvml.
Put this folder and the repository root on PYTHONPATH to make `probe` see that box."""

import json
import os
import sys
from pathlib import Path

from tests.fakes import fake_pynvml

_capture = os.environ.get("QWENPLAN_TEST_NVML_CAPTURE") or str(
    Path(__file__).resolve().parents[2] / "fixtures" / "probes" / "h100-80gb-hbm3.json")
sys.modules[__name__] = fake_pynvml.make(json.loads(Path(_capture).read_text()))
