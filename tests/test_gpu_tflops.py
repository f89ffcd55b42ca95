"""Dense tensor-core peaks in profiles/gpus.yaml: the speed model's prefill terms divide by them."""
import pytest
from qwenplan.planner.catalog import gpus

WITH_TFLOPS = [g for g in gpus() if g.bf16_tflops is not None or g.fp8_tflops is not None]


def test_some_gpus_have_tflops():
    assert len(WITH_TFLOPS) >= 20


@pytest.mark.parametrize("gpu", WITH_TFLOPS, ids=lambda g: g.id)
def test_tflops_are_sourced_positive_and_fp8_at_least_bf16(gpu):
    for value in (gpu.bf16_tflops, gpu.fp8_tflops):
        assert value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0)
    assert gpu.bf16_tflops is not None, "fp8_tflops without bf16_tflops"
    if gpu.fp8_tflops is not None:
        assert gpu.fp8, "fp8_tflops on a GPU without FP8 tensor cores"
        assert gpu.fp8_tflops >= gpu.bf16_tflops
    assert any(s.startswith(("http://", "https://")) for s in gpu.sources)


def test_hopper_sxm_figures():
    by_id = {g.id: g for g in gpus()}
    for gid in ("h100-sxm", "h200"):
        assert (by_id[gid].bf16_tflops, by_id[gid].fp8_tflops) == (989.4, 1978.9)
