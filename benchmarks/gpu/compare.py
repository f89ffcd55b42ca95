#!/usr/bin/env python3
"""Predicted versus measured: the memory model's figures beside what vLLM reported, and the speed.

Reads every benchmarks/gpu/results/<queue>/<job>/result.json (written by runner.py on the GPU
machine) and, for plan jobs, the plan document the job served (its `memory` section holds the
predictions). Prints Markdown tables; exits 1 when a predicted figure misses by more than the
tolerance (5 % by default) on any measured configuration, so it can gate a calibration.

    python3 benchmarks/gpu/compare.py [--results benchmarks/gpu/results] [--tolerance 0.05] [--json]

vLLM prints its memory figures in GiB with two decimals (10 MiB steps), so a small term such as
non-torch memory (~0.23 GiB) carries up to 2 % of rounding by itself; the table shows both values.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
GiB = 1 << 30

# (label, predicted key in the plan's memory.gpus[0] or memory, measured key in result["memory"], unit)
FIGURES = [
    ("weights", "weights_bytes", "weights_bytes", "GiB"),
    ("peak activation", "activation_bytes", "activation_bytes", "GiB"),
    ("non-torch", "non_torch_bytes", "non_torch_bytes", "GiB"),
    ("CUDA graphs (estimate, in the budget)", "cudagraph_bytes", "cudagraph_estimate_bytes", "GiB"),
    ("CUDA graphs (captured, after KV sizing)", None, "cudagraph_bytes", "GiB"),
    ("reserve (act. + non-torch + graph estimate)", "reserve", "reserve", "GiB"),
    ("KV cache memory", "kv_cache_bytes", "kv_cache_bytes", "GiB"),
    ("KV cache tokens", "kv_cache_tokens", "kv_tokens", "tokens"),
    ("max concurrency at max len", "max_concurrency_at_max_len", "max_concurrency", "x"),
    ("attention block size", "block_size", "block_size", "tokens"),
]
SMALL_ABS = {"GiB": 0.02 * GiB}   # misses smaller than this are rounding, whatever the percentage


def load_results(root: Path) -> list[dict]:
    out = []
    for f in sorted(root.glob("*/*/result.json")):
        r = json.loads(f.read_text())
        r["_queue"] = f.parent.parent.name
        r["_dir"] = str(f.parent.relative_to(REPO)) if f.is_relative_to(REPO) else str(f.parent)
        out.append(r)
    return out


def predicted(plan: dict) -> dict:
    mem = plan.get("memory") or {}
    g = (mem.get("gpus") or [{}])[0]
    p = {k: g.get(k, mem.get(k)) for k in ("weights_bytes", "activation_bytes", "non_torch_bytes",
                                            "cudagraph_bytes", "kv_cache_bytes")}
    for k in ("kv_cache_tokens", "max_concurrency_at_max_len", "block_size"):
        p[k] = mem.get(k)
    if None not in (p["activation_bytes"], p["non_torch_bytes"], p["cudagraph_bytes"]):
        p["reserve"] = p["activation_bytes"] + p["non_torch_bytes"] + p["cudagraph_bytes"]
    return p


def measured(res: dict) -> dict:
    """vLLM's figures. The KV budget subtracts the *estimated* CUDA graph memory (profiled before
    the KV cache is sized); what capturing took later is logged apart and reported beside it."""
    m = dict(res.get("memory") or {})
    est = (res.get("extras") or {}).get("cudagraph_estimate_gib")
    log = REPO / res["_dir"] / "serve.log" if res.get("_dir") else None
    if est is None and log is not None and log.exists():
        hits = re.findall(r"Estimated CUDA graph memory: ([0-9.]+) GiB", log.read_text(errors="replace"))
        est = float(hits[-1]) if hits else None
    if est is not None:
        m["cudagraph_estimate_bytes"] = int(est * GiB)
    elif m.get("cudagraph_bytes") == 0:
        m["cudagraph_estimate_bytes"] = 0
    graphs = m.get("cudagraph_estimate_bytes")
    if None not in (m.get("activation_bytes"), m.get("non_torch_bytes"), graphs):
        m["reserve"] = m["activation_bytes"] + m["non_torch_bytes"] + graphs
    return m


def fmt(v, unit: str) -> str:
    if v is None:
        return "—"
    if unit == "GiB":
        return f"{v / GiB:.2f}"
    if unit == "x":
        return f"{v:.2f}"
    return f"{int(v):,}"


def calibration(results: list[dict], tol: float) -> tuple[list[str], list[dict]]:
    lines = []
    misses = []
    for r in results:
        if not r.get("plan") or r.get("status") == "not-run":
            continue
        plan_path = REPO / r["plan"]
        if not plan_path.exists():
            continue
        plan = json.loads(plan_path.read_text())
        p, m = predicted(plan), measured(r)
        s = plan.get("settings") or {}
        lines.append(f"\n**{r['name']}** — plan `{r['plan']}`: {plan['variant']['id']}, "
                     f"{s.get('max_model_len'):,} tokens, {s.get('max_num_seqs')} seqs, KV {s.get('kv_cache_dtype')}, "
                     f"MTP {((s.get('speculative') or {}).get('num_speculative_tokens') or 'off')}, "
                     f"TP {s.get('tensor_parallel')} DP {s.get('data_parallel')}; engine {r.get('status')}"
                     f"{' after ' + str(r.get('ready_seconds')) + ' s' if r.get('ready_seconds') else ''}\n")
        lines.append("| figure | predicted | measured | miss |")
        lines.append("|---|---:|---:|---:|")
        for label, pk, mk, unit in FIGURES:
            pv, mv = (p.get(pk) if pk else None), m.get(mk)
            miss = ""
            if pv is not None and mv not in (None, 0):
                rel = (pv - mv) / mv
                miss = f"{rel * 100:+.1f} %"
                small = unit in SMALL_ABS and abs(pv - mv) < SMALL_ABS[unit]
                if abs(rel) > tol and not small and label != "attention block size":
                    miss += " **MISS**"
                    misses.append({"job": r["name"], "figure": label, "predicted": pv, "measured": mv,
                                   "relative": round(rel, 4)})
                elif label == "attention block size" and pv != mv:
                    miss = "differs **MISS**"
                    misses.append({"job": r["name"], "figure": label, "predicted": pv, "measured": mv,
                                   "relative": round(rel, 4)})
            lines.append(f"| {label} | {fmt(pv, unit)} | {fmt(mv, unit)} | {miss} |")
    return lines, misses


def measured_only(results: list[dict]) -> list[str]:
    """Every run's own figures (baselines have no plan to compare with)."""
    lines = ["| job | max_num_seqs | block | weights | activation | non-torch | graphs est. / captured | KV memory | "
             "KV tokens | max conc. |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r.get("status") in ("not-run", "not-measured"):
            continue
        m = measured(r)
        seqs = "1024 (default)"
        argv = r.get("served_argv") or []
        if "--max-num-seqs" in argv:
            seqs = argv[argv.index("--max-num-seqs") + 1]
        lines.append(f"| {r['name']} | {seqs} | {fmt(m.get('block_size'), 'tokens')} | {fmt(m.get('weights_bytes'), 'GiB')} | "
                     f"{fmt(m.get('activation_bytes'), 'GiB')} | {fmt(m.get('non_torch_bytes'), 'GiB')} | "
                     f"{fmt(m.get('cudagraph_estimate_bytes'), 'GiB')} / {fmt(m.get('cudagraph_bytes'), 'GiB')} | "
                     f"{fmt(m.get('kv_cache_bytes'), 'GiB')} | {fmt(m.get('kv_tokens'), 'tokens')} | "
                     f"{fmt(m.get('max_concurrency'), 'x')} |")
    return lines


def speed(results: list[dict]) -> list[str]:
    lines = ["| GPU | job | kind | ready (s) | KV tokens | c1 tok/s | c32 tok/s | c128 tok/s | "
             "TTFT p50 c1 / c32 / c128 (s) | status |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in results:
        lv = ((r.get("load") or {}).get("levels")) or {}
        gpu = ((r.get("gpus") or [{}])[0]).get("name", r["_queue"])
        n = len(r.get("gpus") or [])
        gpu = f"{n}× {gpu}" if n > 1 else gpu

        def t(k, f):
            return f"{lv[k][f]}" if k in lv and lv[k].get(f) is not None else "—"
        ttft = " / ".join(t(k, "ttft_p50_s") for k in ("c1", "c32", "c128"))
        status = r.get("status", "?")
        if status != "ready" and r.get("error_lines"):
            status += ": " + r["error_lines"][-1].split("] ")[-1][:120].replace("|", "/")
        lines.append(f"| {gpu} | {r['name']} | {r.get('kind')} | {r.get('ready_seconds') or '—'} | "
                     f"{fmt((r.get('memory') or {}).get('kv_tokens'), 'tokens')} | {t('c1', 'tok_per_s')} | "
                     f"{t('c32', 'tok_per_s')} | {t('c128', 'tok_per_s')} | {ttft} | {status} |")
    return lines


def commands(results: list[dict]) -> list[str]:
    lines = []
    for r in results:
        if "real_argv" not in r:
            continue
        env = " ".join(f"{k}={v}" for k, v in (r.get("real_env") or {}).items())
        lines.append(f"- **{r['name']}** ({r.get('status')}): `{(env + ' ') if env else ''}{' '.join(json.dumps(a) if ' ' in a or '{' in a else a for a in r['real_argv'])}`")
        changes = "; ".join(c["what"] for c in r.get("changes", []))
        if changes:
            lines.append(f"  - served with: {changes}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--json", action="store_true", help="print the misses as JSON instead of the tables")
    a = ap.parse_args(argv)
    results = load_results(Path(a.results))
    cal, misses = calibration(results, a.tolerance)
    if a.json:
        print(json.dumps(misses, indent=1))
    else:
        print("### Memory model: predicted vs measured (per GPU)")
        print("\n".join(cal) if cal else "\n(no plan job measured)")
        print("\n### What vLLM reported, every run (GiB; plans and baselines)\n")
        print("\n".join(measured_only(results)))
        print("\n### Speed (generated tokens/s, fixed load: 1024 in / 256 out; c1 = 3 requests one at a time)\n")
        print("\n".join(speed(results)))
        print("\n### Exact commands (the real command, then what dummy serving changed)\n")
        print("\n".join(commands(results)))
        print(f"\n{len(misses)} figure(s) off by more than {a.tolerance:.0%}.")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
