#!/usr/bin/env python3
"""Fit the speed model's constants (profiles/speed.yaml `fitted`) on logged runs, and evaluate.

    python3 benchmarks/gpu/fit_speed.py            # fit on every non-MTP run, print the errors
    python3 benchmarks/gpu/fit_speed.py --write    # ... and write the constants + folds into profiles/speed.yaml

Least squares on log(tokens/s) over the non-MTP runs' c1/c32/c128 cells (MTP runs were served
with dummy weights, which accept no draft: they are predicted at 0 % acceptance and reported,
not fitted). Leave-one-GPU-out: for each GPU model, the constants are fitted on the other GPUs'
runs and that GPU's runs are predicted. Nelder-Mead in log space, standard library only.

SGLang runs (result.json `engine: sglang`) are predicted with the constants the planner uses for
SGLang (profiles/speed.yaml `sglang:`: `same_as: vllm` until SGLang has its own) and shown with
their error; they are fitted and gated only once the `sglang:` block holds its own constants.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from predict import Run, runs, served_acceptance, served_settings  # noqa: E402

from qwenplan.planner import speed  # noqa: E402
from qwenplan.planner.sizing import Candidate  # noqa: E402
from qwenplan.planner.variants import get_variant  # noqa: E402

FITTED = ("step_overhead_s", "bandwidth_efficiency", "quantized_bandwidth_efficiency", "compute_efficiency",
          "request_overhead_s")
LEVELS = ("c1", "c32", "c128")


@dataclass
class Cell:
    run: str
    gpu: str
    level: str
    measured: float
    ttft: float
    mtp: bool
    first_start: bool
    case: tuple          # (step shape, machine, layout, concurrency, acceptance)
    engine: str = "vllm"


def own_constants(engine: str) -> bool:
    """Whether the speed profile holds constants of this engine's own (not `same_as` another's)."""
    block = speed.profile().get(engine) or {}
    return engine == "vllm" or ("fitted" in block and "same_as" not in block)


def gpu_model(run: Run) -> str:
    return "H200" if "H200" in run.gpu else "H100" if "H100" in run.gpu else run.gpu


def cells_of(run: Run) -> list[Cell]:
    import re
    if run.engine == "sglang":
        return sglang_cells_of(run)
    total = re.findall(r"Free memory on device \([0-9.]+/([0-9.]+) GiB\)", run.log)
    version = re.search(r"vLLM API server version ([0-9.]+)", run.log) or re.search(r"\(v([0-9.]+)\)", run.log)
    st = served_settings(run.argv, version.group(1), int(float(total[-1]) * (1 << 30)))
    v = get_variant(st["variant"])
    cand = Candidate(v, "vllm", version.group(1), tp=st["tp"], dp=st["dp"], kv_dtype=st["kv_dtype"],
                     spec_tokens=st["spec"], eager=st["eager"], batched_tokens=st["batched_tokens"],
                     max_seqs=st["max_num_seqs"])
    lay = speed.layout_of(cand)
    sh = speed.step_shape(v.recipe, v.model.shape, v.model.vision_params, lay)
    m = speed.machine_for(run.gpu, nvlink=run.nvlink)
    acc = served_acceptance(run.argv)
    return [Cell(run.name, gpu_model(run), lv, run.load[lv]["tok_per_s"], run.load[lv]["ttft_p50_s"], run.mtp,
                 run.first_fp8_start, (sh, m, lay, int(lv[1:]), acc))
            for lv in LEVELS]


def sglang_cells_of(run: Run) -> list[Cell]:
    """An SGLang run: the served command as predict.py reads it (SGLang's defaults for absent
    flags), at the max running requests SGLang set; dummy weights accept no MTP draft."""
    out = run.predict()
    cand = replace(out["candidate"], max_seqs=max(1, out["reported"].get("max_running_requests")
                                      or out["predicted"]["max_running_requests"]))
    lay = speed.layout_of(cand)
    v = cand.variant
    sh = speed.step_shape(v.recipe, v.model.shape, v.model.vision_params, lay)
    m = speed.machine_for(run.gpu, nvlink=run.nvlink)
    return [Cell(run.name, gpu_model(run), lv, run.load[lv]["tok_per_s"], run.load[lv]["ttft_p50_s"], run.mtp,
                 run.first_fp8_start, (sh, m, lay, int(lv[1:]), 0.0), engine="sglang")
            for lv in LEVELS if lv in run.load]


def constants_for(c: Cell, k: speed.Constants) -> speed.Constants:
    """The constants a cell is predicted with: `k` for vLLM's, the engine's own where it has them."""
    return k if c.engine == "vllm" or not own_constants(c.engine) else speed.Constants.for_engine(c.engine)


def burst_of(c: Cell, k: speed.Constants) -> speed.Burst:
    sh, m, lay, conc, acc = c.case
    return speed.burst(sh, m, constants_for(c, k), lay, conc, acceptance=acc)


def predict_cell(c: Cell, k: speed.Constants) -> float:
    return burst_of(c, k).tokens_per_s


# TTFT weighs in at a quarter: it pins the prefill terms (compute, per-request time) that
# tokens/s alone hardly constrains; tokens/s is what the gate checks.
TTFT_WEIGHT = 0.25


def loss(cells: list[Cell], k: speed.Constants) -> float:
    total = 0.0
    for c in cells:
        b = burst_of(c, k)
        total += math.log(b.tokens_per_s / c.measured) ** 2 + TTFT_WEIGHT * math.log(b.ttft_s / c.ttft) ** 2
    return total


# Efficiencies are fractions of a peak: fitted through a logistic so they stay in (0, 1).
FRACTIONS = {"bandwidth_efficiency", "quantized_bandwidth_efficiency", "compute_efficiency"}


def _to_x(name: str, value: float) -> float:
    return math.log(value / (1 - value)) if name in FRACTIONS else math.log(value)


def _from_x(name: str, x: float) -> float:
    return 1 / (1 + math.exp(-x)) if name in FRACTIONS else math.exp(x)


def _constants(base: speed.Constants, x: list[float]) -> speed.Constants:
    return replace(base, **{n: _from_x(n, v) for n, v in zip(FITTED, x)})


def fit(cells: list[Cell], base: speed.Constants, iters: int = 400) -> speed.Constants:
    """Nelder-Mead over the log of the fitted constants."""
    x0 = [_to_x(n, min(getattr(base, n), 0.95) if n in FRACTIONS else getattr(base, n)) for n in FITTED]
    f = lambda x: loss(cells, _constants(base, x))  # noqa: E731
    simplex = [x0] + [[x0[j] + (0.4 if i == j else 0) for j in range(len(x0))] for i in range(len(x0))]
    vals = [f(x) for x in simplex]
    for _ in range(iters):
        order = sorted(range(len(simplex)), key=vals.__getitem__)
        simplex, vals = [simplex[i] for i in order], [vals[i] for i in order]
        if vals[-1] - vals[0] < 1e-7:
            break
        centroid = [sum(p[j] for p in simplex[:-1]) / (len(simplex) - 1) for j in range(len(x0))]
        worst = simplex[-1]
        refl = [c + (c - w) for c, w in zip(centroid, worst)]
        fr = f(refl)
        if fr < vals[0]:
            exp = [c + 2 * (c - w) for c, w in zip(centroid, worst)]
            fe = f(exp)
            simplex[-1], vals[-1] = (exp, fe) if fe < fr else (refl, fr)
        elif fr < vals[-2]:
            simplex[-1], vals[-1] = refl, fr
        else:
            con = [c + 0.5 * (w - c) for c, w in zip(centroid, worst)]
            fc = f(con)
            if fc < vals[-1]:
                simplex[-1], vals[-1] = con, fc
            else:
                best = simplex[0]
                simplex = [best] + [[b + 0.5 * (p - b) for b, p in zip(best, q)] for q in simplex[1:]]
                vals = [vals[0]] + [f(p) for p in simplex[1:]]
    return _constants(base, simplex[min(range(len(vals)), key=vals.__getitem__)])


def errors(cells: list[Cell], k: speed.Constants) -> list[tuple[Cell, float, float]]:
    return [(c, p, p / c.measured - 1) for c in cells for p in [predict_cell(c, k)]]


def all_cells() -> list[Cell]:
    return [c for r in runs() for c in cells_of(r)]


def evaluate(cells: list[Cell], base: speed.Constants, folds: dict[str, speed.Constants] | None = None) -> dict:
    """In-sample (`base` on every cell) and leave-one-GPU-out (each GPU's cells with its fold's
    constants, fitted on the other GPUs) errors of the non-MTP cells; MTP cells reported."""
    gated = gated_cells(cells)
    ins = errors(gated, base)
    logo = []
    for gpu, k in (folds or {}).items():
        logo += errors([c for c in gated if c.gpu == gpu], k)
    shown = [c for c in cells if c not in gated]
    return {"in_sample": ins, "leave_one_gpu_out": logo, "not_gated": errors(shown, base)}


def sglang_cells(cells: list[Cell]) -> list[Cell]:
    return [c for c in cells if c.engine == "sglang"]


def gated_cells(cells: list[Cell]) -> list[Cell]:
    """The cells the accuracy gate counts: no MTP (dummy weights), no first FP8 start of a machine,
    and vLLM's runs only while SGLang borrows vLLM's constants (its runs are shown, not fitted)."""
    return [c for c in cells if not c.mtp and not c.first_start and c.engine == "vllm"]


def summary(rows) -> str:
    errs = [abs(e) for _, _, e in rows]
    if not errs:
        return "no cells"
    return f"{len(errs)} cells, median |error| {statistics.median(errs) * 100:.1f} %, worst {max(errs) * 100:.1f} %"


def fit_draft(cells: list[Cell], k: speed.Constants) -> speed.Constants:
    """The MTP draft pass's fixed cost, on the MTP runs alone (golden-section search in log space)."""
    mtp = [c for c in cells if c.mtp and not c.first_start and c.engine == "vllm"]
    if not mtp:
        return k
    f = lambda x: sum(math.log(predict_cell(c, replace(k, draft_overhead_s=math.exp(x))) / c.measured) ** 2  # noqa: E731
                      for c in mtp)
    lo, hi = math.log(1e-5), math.log(0.02)
    g = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        lo, hi = (lo, b) if f(a) < f(b) else (a, hi)
    return replace(k, draft_overhead_s=math.exp((lo + hi) / 2))


def fit_all(cells: list[Cell], base: speed.Constants) -> tuple[speed.Constants, dict[str, speed.Constants]]:
    gated = gated_cells(cells)
    k = fit_draft(cells, fit(gated, base))
    folds = {}
    for gpu in sorted({c.gpu for c in gated}):
        train = [c for c in gated if c.gpu != gpu]
        folds[gpu] = fit_draft([c for c in cells if c.gpu != gpu], fit(train, k)) if train else k
    return k, folds


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true", help="write the fitted constants into profiles/speed.yaml")
    a = ap.parse_args()
    cells = all_cells()
    base = speed.Constants.for_engine("vllm")
    k, folds = fit_all(cells, base)
    res = evaluate(cells, k, folds)
    for name in ("in_sample", "leave_one_gpu_out", "not_gated"):
        print(f"{name}: {summary(res[name])}")
        for c, p, e in res[name]:
            print(f"  {c.run:30s} {c.level:5s} measured {c.measured:7.0f} predicted {p:7.0f} ({e * 100:+.1f} %)")
    print("constants:", {n: round(getattr(k, n), 7) for n in FITTED + ("draft_overhead_s",)})
    for gpu, fk in folds.items():
        print(f"fold without {gpu}:", {n: round(getattr(fk, n), 7) for n in FITTED})
    if a.write:
        write(k, folds, sorted({c.run for c in gated_cells(cells)}))
    return 0


def write(k: speed.Constants, folds: dict[str, speed.Constants], fitted_on: list[str]) -> None:
    """Rewrite the `fitted:` block of profiles/speed.yaml (the rest of the file stays as written)."""
    path = HERE.parent.parent / "profiles" / "speed.yaml"
    text = path.read_text()
    start = text.index("  fitted:\n")
    end = text.index("\n  eager_step_overhead_s", start)
    lines = ["  fitted:"]
    lines += [f"    {n}: {getattr(k, n):.6g}" for n in FITTED + ("draft_overhead_s",)]
    lines.append(f"    fitted_on: {json.dumps(fitted_on)}")
    lines.append("    # leave-one-GPU-out: the constants fitted without that GPU's runs")
    lines.append("    folds:")
    for gpu, fk in folds.items():
        lines.append(f"      {gpu}: {{{', '.join(f'{n}: {getattr(fk, n):.6g}' for n in FITTED + ('draft_overhead_s',))}}}")
    path.write_text(text[:start] + "\n".join(lines) + text[end:])


if __name__ == "__main__":
    raise SystemExit(main())
