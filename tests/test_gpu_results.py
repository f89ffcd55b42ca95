"""Every run under benchmarks/gpu/results, predicted by the memory model as it is now.

Each run is a command real vLLM served on a real H100 or H200 and the log it wrote; the planner
sizes the same settings on the same CUDA total and must land within 5 % of what vLLM reported
(weights, reserve, KV memory, KV tokens, concurrency) and on its exact block size.
"""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
from predict import predict  # noqa: E402

RUNS = sorted(f.parent for f in (ROOT / "benchmarks" / "gpu" / "results").glob("*/*/result.json")
              if (json.loads(f.read_text()).get("memory") or {}).get("kv_cache_bytes"))
TOLERANCE = 0.05


def test_there_are_runs_on_both_gpus():
    gpus = {json.loads((d / "result.json").read_text())["gpus"][0]["name"] for d in RUNS}
    assert any("H100" in g for g in gpus) and any("H200" in g for g in gpus)


@pytest.mark.parametrize("run", RUNS, ids=[d.name for d in RUNS])
def test_prediction_matches_what_vllm_reported(run):
    r = json.loads((run / "result.json").read_text())
    out = predict(r["served_argv"], (run / "serve.log").read_text(errors="replace"))
    p, m = out["predicted"], out["reported"]
    assert p["block_size"] == m["block_size"]
    for k in ("weights_bytes", "reserve", "kv_cache_bytes", "kv_tokens", "max_concurrency"):
        assert p[k] == pytest.approx(m[k], rel=TOLERANCE), k
