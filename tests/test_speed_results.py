"""Every logged GPU run, re-predicted by the speed model as it is now: the accuracy gate.

Each run under benchmarks/gpu/results is a command real vLLM 0.26 served on an H100 or H200 with
the harness's load (1,024 tokens in, 256 out, 1 / 32 / 128 requests at once). The speed model
predicts its generated tokens/s with the constants in profiles/speed.yaml, fitted on these runs
(in-sample), and with each GPU's leave-one-GPU-out constants (fitted without that GPU's runs).
Gated: the runs without MTP (dummy weights accept no draft) that were not a machine's first
FP8 start (its load ran while kernels were still being built). NVIDIA AIConfigurator's
predictions of the same runs (benchmarks/gpu/aiconfigurator.json) are shown beside.
"""

import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
import fit_speed  # noqa: E402

from qwenplan.planner import speed  # noqa: E402

CELLS = fit_speed.all_cells()
GATED = fit_speed.gated_cells(CELLS)
K = speed.Constants.for_engine("vllm")
FOLDS = {gpu: replace(K, **vals) for gpu, vals in speed.profile()["vllm"]["fitted"]["folds"].items()}
AIC = json.loads((ROOT / "benchmarks" / "gpu" / "aiconfigurator.json").read_text())["runs"]
MEDIAN, WORST = 0.10, 0.25

# Known gap (issue 14 stays open on it): BF16 weights on Hopper. The H100 BF16 runs decode about
# 2.2x slower per step than the H200 BF16 run at the same batch, against 1.43x in bandwidth; no
# one bandwidth efficiency fits both, and each GPU's fold has only one side of it. Strict: a cell
# that starts passing fails the suite until it is taken off this list.
BF16_GAP = "BF16 on Hopper: H100 and H200 BF16 runs disagree beyond the roofline (benchmarks/gpu/RESULTS.md)"
OVER_IN_SAMPLE = {("h100-plan-bf16", "c32"), ("h100-r2-plan-fp8kv", "c32"),
                  ("h200-baseline-modelcard-bf16", "c32"), ("h200-baseline-modelcard-bf16", "c128")}
OVER_LEAVE_ONE_OUT = {("h100-plan-bf16", "c32"), ("h100-plan-bf16", "c128"), ("h100-r2-plan-fp8kv", "c32"),
                      ("h100-r2-plan-fp8kv", "c128"), ("h200-baseline-modelcard-bf16", "c32"),
                      ("h200-baseline-modelcard-bf16", "c128")}


def error(cell, k) -> float:
    return fit_speed.predict_cell(cell, k) / cell.measured - 1


def cases(known):
    return [pytest.param(c, id=f"{c.run}-{c.level}",
                         marks=[pytest.mark.xfail(strict=True, reason=BF16_GAP)] if (c.run, c.level) in known else [])
            for c in GATED]


def test_runs_on_both_gpus_with_and_without_mtp():
    assert {c.gpu for c in GATED} == {"H100", "H200"}
    assert len(GATED) >= 30 and any(c.mtp for c in CELLS)
    assert set(FOLDS) == {"H100", "H200"}


def test_median_error_in_sample_and_leave_one_gpu_out():
    ins = [abs(error(c, K)) for c in GATED]
    logo = [abs(error(c, FOLDS[c.gpu])) for c in GATED]
    assert statistics.median(ins) <= MEDIAN, statistics.median(ins)
    assert statistics.median(logo) <= MEDIAN, statistics.median(logo)


@pytest.mark.parametrize("cell", cases(OVER_IN_SAMPLE))
def test_each_cell_in_sample(cell):
    assert abs(error(cell, K)) <= WORST


@pytest.mark.parametrize("cell", cases(OVER_LEAVE_ONE_OUT))
def test_each_cell_leave_one_gpu_out(cell):
    assert abs(error(cell, FOLDS[cell.gpu])) <= WORST


def test_qwenplan_beats_aiconfigurator_on_the_same_cells(capsys):
    """The peer as shipped (0.12, vLLM timing data from 0.24), on every gated cell it predicted."""
    rows = []
    for c in GATED:
        aic = (AIC.get(c.run) or {}).get(c.level)
        if aic:
            rows.append((c, error(c, K), error(c, FOLDS[c.gpu]), aic["tokens_per_s"] / c.measured - 1))
    assert len(rows) >= 30
    with capsys.disabled():
        print(f"\n{'run':32s} {'':4s} {'measured':>8s} {'qwenplan':>9s} {'LOGO':>7s} {'AIC':>7s}")
        for c, e, lo, a in rows:
            print(f"{c.run:32s} {c.level:4s} {c.measured:8.0f} {e * 100:+8.1f}% {lo * 100:+6.1f}% {a * 100:+6.1f}%")
    ours = statistics.median(abs(r[1]) for r in rows)
    logo = statistics.median(abs(r[2]) for r in rows)
    peer = statistics.median(abs(r[3]) for r in rows)
    assert ours < peer and logo < peer, (ours, logo, peer)


def test_mtp_runs_are_predicted_at_the_acceptance_they_were_served_with():
    """Not gated, but bounded: 0 % acceptance for dummy weights, the synthetic rate where vLLM's
    synthetic rejection sampler was told one (h200-r3-plan-bf16-mtp, 80 %)."""
    mtp = [c for c in CELLS if c.mtp]
    synthetic = [c for c in mtp if c.case[4] > 0]
    assert synthetic and all(c.case[4] == pytest.approx(0.8) for c in synthetic)
    errs = [abs(error(c, K)) for c in mtp]
    assert statistics.median(errs) <= 0.15 and max(errs) <= 0.40, errs


def test_speed_prediction_is_fast():
    """Planning predicts a few bursts for each candidate: a candidate costs under 5 ms."""
    import time
    c = GATED[0]
    sh, m, lay, _, acc = c.case
    t = time.perf_counter()
    for _ in range(20):
        for conc in (1, 32, 128):
            speed.burst(sh, m, K, lay, conc, acceptance=acc)
    per_candidate = (time.perf_counter() - t) / 20
    assert per_candidate < 0.005, per_candidate


def test_sglang_runs_are_shown_with_their_error_not_fitted():
    """An SGLang run (here the fixture's log, with a load of its own) is predicted with the
    constants SGLang borrows from vLLM (`same_as: vllm`), shown, and kept out of the fit and gate."""
    from predict import Run
    run = Run(ROOT / "tests" / "fixtures" / "sglang")
    run.load = {"c1": {"tok_per_s": 150.0, "ttft_p50_s": 0.2}, "c32": {"tok_per_s": 1500.0, "ttft_p50_s": 0.9},
                "c128": {"tok_per_s": 2500.0, "ttft_p50_s": 2.4}}
    cells = fit_speed.cells_of(run)
    assert [c.engine for c in cells] == ["sglang"] * 3 and not fit_speed.gated_cells(cells)
    assert not fit_speed.own_constants("sglang")
    # predicted at the 81 running requests SGLang set, at 0 % draft acceptance (dummy weights)
    assert {c.case[2].max_seqs for c in cells} == {81} and {c.case[4] for c in cells} == {0.0}
    assert all(fit_speed.predict_cell(c, K) > 0 for c in cells)
    assert fit_speed.sglang_cells(CELLS + cells) == fit_speed.sglang_cells(CELLS) + cells
