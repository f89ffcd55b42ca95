#!/usr/bin/env python3
"""Predicted vs measured speed for every logged run, beside NVIDIA AIConfigurator's prediction.

    python3 benchmarks/gpu/speed_check.py          # the markdown table in RESULTS.md

qwenplan: the speed model as it is now (profiles/speed.yaml), in-sample and with the constants
fitted without the run's GPU (leave-one-GPU-out); AIConfigurator 0.12 as shipped
(aiconfigurator.json, made by aiconfigurator.py). Errors are predicted / measured - 1 of the
generated tokens/s; gated cells are the ones tests/test_speed_results.py checks. SGLang runs are
shown with their error (predicted with vLLM's constants, `same_as: vllm`), not gated.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fit_speed  # noqa: E402

from qwenplan.planner import speed  # noqa: E402


def main() -> int:
    cells = fit_speed.all_cells()
    gated = fit_speed.gated_cells(cells)
    k = speed.Constants.for_engine("vllm")
    folds = {g: replace(k, **v) for g, v in speed.profile()["vllm"]["fitted"]["folds"].items()}
    aic = json.loads((HERE / "aiconfigurator.json").read_text())["runs"]
    print("| run | c | measured tok/s | qwenplan | error | leave-one-GPU-out | AIConfigurator | error | gated |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    errs = {"ours": [], "logo": [], "aic": []}
    for c in cells:
        ours = fit_speed.predict_cell(c, k)
        logo = fit_speed.predict_cell(c, folds.get(c.gpu, k))
        a = ((aic.get(c.run) or {}).get(c.level) or {}).get("tokens_per_s")
        why = ("yes" if c in gated else f"{c.engine} (vLLM's constants)" if c.engine != "vllm"
               else "MTP" if c.mtp else "first FP8 start")
        print(f"| {c.run} | {c.level[1:]} | {c.measured:,.0f} | {ours:,.0f} | {(ours / c.measured - 1) * 100:+.1f} % | "
              f"{(logo / c.measured - 1) * 100:+.1f} % | {f'{a:,.0f}' if a else '—'} | "
              f"{f'{(a / c.measured - 1) * 100:+.1f} %' if a else '—'} | {why} |")
        if c in gated:
            errs["ours"].append(abs(ours / c.measured - 1))
            errs["logo"].append(abs(logo / c.measured - 1))
            if a:
                errs["aic"].append(abs(a / c.measured - 1))
    print()
    sg = [abs(fit_speed.predict_cell(c, k) / c.measured - 1) for c in fit_speed.sglang_cells(cells)]
    for name, label in (("ours", "qwenplan, in-sample"), ("logo", "qwenplan, leave-one-GPU-out"),
                        ("aic", "AIConfigurator 0.12 as shipped")):
        xs = errs[name]
        print(f"- {label}: median |error| {statistics.median(xs) * 100:.1f} %, worst {max(xs) * 100:.1f} % "
              f"over {len(xs)} gated cells")
    if sg:
        print(f"- SGLang runs, vLLM's constants (not gated): median |error| {statistics.median(sg) * 100:.1f} %, "
              f"worst {max(sg) * 100:.1f} % over {len(sg)} cells")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
